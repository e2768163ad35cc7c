//! The fuzz harness of the DLC messages anya's contracts and oracle read from outside: the
//! contract messages of `ddk_messages::Message` (offer, accept, sign and the channel messages,
//! chosen by their type prefix as `read_dlc_message` does) and the oracle's announcement and
//! attestation. The target in `fuzz_targets/` is one line calling [`dlc_messages`];
//! `tests/dlc_hostile.rs` replays the committed corpus through it and runs its property tests
//! on the same checks.
//!
//! Each input is decoded with exact-length decoding (bytes left over reject it). What decodes
//! must encode again to the input, with two exceptions that the readers of `ddk-messages`
//! 1.1.2 make and that are checked to be exactly that:
//!
//! - the TLV header (type and length) of an oracle announcement inside a contract's oracle
//!   info, and of the oracle event inside an announcement, is read and ignored
//!   (`read_as_tlv`), as is the length of an event descriptor; the encoding writes the true
//!   ones;
//! - an offer without its protocol version (the format before `protocol_version`: the four
//!   bytes after the type prefix read as anything but 1 to 10) reads as version 1, and encodes
//!   with the version.
//!
//! Anything else that decodes to a message whose encoding differs from the input fails the
//! check, and every decoded message must decode again from its own encoding to an equal value.

use std::fmt::Debug;
use std::ops::Range;

use ddk_messages::contract_msgs::ContractInfo;
use ddk_messages::message_handler::read_dlc_message;
use ddk_messages::oracle_msgs::{EventDescriptor, OracleAnnouncement, OracleAttestation, OracleEvent, OracleInfo};
use ddk_messages::ser_impls::BigSize;
use ddk_messages::{Message, WireMessage};
use lightning::io::Cursor;
use lightning::ln::msgs::DecodeError;
use lightning::ln::wire::Type;
use lightning::util::ser::{Readable, Writeable};

/// What the input was decoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A contract or channel message, by its type prefix.
    Message,
    /// An oracle announcement (no type prefix).
    Announcement,
    /// An oracle attestation (no type prefix).
    Attestation,
}

/// Every [`Kind`].
pub const KINDS: [Kind; 3] = [Kind::Message, Kind::Announcement, Kind::Attestation];

/// What decoding an input as one [`Kind`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not a message of that kind: a typed decode error, or bytes left over.
    Rejected,
    /// A message that encodes to exactly the input.
    Exact,
    /// A message that encodes to other bytes, explained by the ignored TLV headers or the
    /// legacy offer format (see the module documentation).
    Normalized,
}

/// Why exact-length decoding refused the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The reader's own error.
    Decode(DecodeError),
    /// It decoded from a prefix and left this many bytes.
    Trailing(usize),
}

/// Reads a `T` that must use every byte.
pub fn decode_exact<T: Readable>(bytes: &[u8]) -> Result<T, Rejection> {
    let mut cursor = Cursor::new(bytes);
    let value = T::read(&mut cursor).map_err(Rejection::Decode)?;
    let used = usize::try_from(cursor.position()).expect("a cursor position within a slice fits usize");
    match bytes.len() - used {
        0 => Ok(value),
        left => Err(Rejection::Trailing(left)),
    }
}

/// Reads a contract or channel message the way a peer connection does: the first two bytes
/// (big-endian) choose the message type, whose reader reads them again; every byte must be
/// used.
pub fn decode_message(bytes: &[u8]) -> Result<Message, Rejection> {
    let [a, b, ..] = *bytes else {
        return Err(Rejection::Decode(DecodeError::ShortRead));
    };
    let mut cursor = Cursor::new(bytes);
    let message = match read_dlc_message(u16::from_be_bytes([a, b]), &mut cursor).map_err(Rejection::Decode)? {
        Some(WireMessage::Message(m)) => m,
        // Not a type it reads (or segmentation, which it never returns).
        _ => return Err(Rejection::Decode(DecodeError::UnknownRequiredFeature)),
    };
    let used = usize::try_from(cursor.position()).expect("a cursor position within a slice fits usize");
    match bytes.len() - used {
        0 => Ok(message),
        left => Err(Rejection::Trailing(left)),
    }
}

/// The fuzz target: `data` as every [`Kind`].
pub fn dlc_messages(data: &[u8]) {
    for kind in KINDS {
        check(kind, data);
    }
}

/// Decodes `data` as `kind` and, when it decodes, checks the encoding (panics on a violation).
pub fn check(kind: Kind, data: &[u8]) -> Outcome {
    match kind {
        Kind::Message => match decode_message(data) {
            Err(_) => Outcome::Rejected,
            Ok(message) => check_message(data, &message),
        },
        Kind::Announcement => match decode_exact::<OracleAnnouncement>(data) {
            Err(_) => Outcome::Rejected,
            Ok(a) => typed("announcement", data, &a, |c| {
                vec![tlv_skips(c, &[], &[&a.oracle_event])]
            }),
        },
        Kind::Attestation => match decode_exact::<OracleAttestation>(data) {
            Err(_) => Outcome::Rejected,
            Ok(a) => typed("attestation", data, &a, |_| vec![Vec::new()]),
        },
    }
}

fn check_message(data: &[u8], message: &Message) -> Outcome {
    match message {
        Message::Offer(o) => typed("offer", data, o, |c| {
            let skips = tlv_skips(c, &announcements(&o.contract_info), &[]);
            let mut layouts = vec![skips.clone()];
            if o.protocol_version == 1 {
                // The legacy format: the same bytes without the protocol version.
                let mut legacy = vec![(2..6, Skip::Absent)];
                legacy.extend(skips);
                layouts.push(legacy);
            }
            layouts
        }),
        Message::Accept(a) => typed("accept", data, a, |_| vec![Vec::new()]),
        Message::Sign(s) => typed("sign", data, s, |_| vec![Vec::new()]),
        other => {
            // The channel messages have no `PartialEq`: their encoding must be a fixed point.
            let c = other.encode();
            if data == c {
                return Outcome::Exact;
            }
            let again = decode_message(&c).unwrap_or_else(|e| {
                panic!(
                    "a {} message's own encoding does not decode: {e:?}\n{}",
                    other.type_id(),
                    hex(&c)
                )
            });
            assert_eq!(
                again.encode(),
                c,
                "message type {}: decode(encode(m)) encodes differently",
                other.type_id()
            );
            let anns = match other {
                Message::OfferChannel(o) => announcements(&o.contract_info),
                Message::RenewOffer(r) => announcements(&r.contract_info),
                _ => Vec::new(),
            };
            verdict(
                &format!("message type {}", other.type_id()),
                data,
                &c,
                &[tlv_skips(&c, &anns, &[])],
            )
        }
    }
}

/// Checks a decoded `value`: its encoding is the input; or else it decodes to an equal value
/// which encodes the same, and it is the input read through one of `layouts(encoding)`.
fn typed<T>(
    what: &str,
    data: &[u8],
    value: &T,
    layouts: impl FnOnce(&[u8]) -> Vec<Vec<(Range<usize>, Skip)>>,
) -> Outcome
where
    T: Readable + Writeable + PartialEq + Debug,
{
    let c = value.encode();
    if data == c {
        // Decoding is deterministic: these bytes decode to `value` again.
        return Outcome::Exact;
    }
    let again: T =
        decode_exact(&c).unwrap_or_else(|e| panic!("{what}: its own encoding does not decode: {e:?}\n{}", hex(&c)));
    assert_eq!(&again, value, "{what}: decode(encode(m)) != m");
    assert_eq!(again.encode(), c, "{what}: decode(encode(m)) encodes differently");
    verdict(what, data, &c, &layouts(&c))
}

fn verdict(what: &str, data: &[u8], c: &[u8], layouts: &[Vec<(Range<usize>, Skip)>]) -> Outcome {
    if data == c {
        return Outcome::Exact;
    }
    assert!(
        layouts.iter().any(|skips| explains(data, c, skips)),
        "{what}: decoded to a message whose encoding differs in more than the ignored TLV headers\n\
         input:     {}\nencoding:  {}",
        hex(data),
        hex(c)
    );
    Outcome::Normalized
}

/// What the input may have in place of a range of the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Nothing: the input lacks these bytes.
    Absent,
    /// This many BigSize values, any (canonical) ones.
    BigSizes(usize),
}

/// The oracle announcements of a contract info, in order.
fn announcements(info: &ContractInfo) -> Vec<&OracleAnnouncement> {
    let inners = match info {
        ContractInfo::SingleContractInfo(s) => vec![&s.contract_info],
        ContractInfo::DisjointContractInfo(d) => d.contract_infos.iter().collect(),
    };
    inners
        .into_iter()
        .flat_map(|inner| match &inner.oracle_info {
            OracleInfo::Single(s) => vec![&s.oracle_announcement],
            OracleInfo::Multi(m) => m.oracle_announcements.iter().collect(),
        })
        .collect()
}

/// The ranges of encoding `c` that the readers ignore: the TLV header of each announcement in
/// `anns` and of each event (theirs and `events`), and the length of each event descriptor.
fn tlv_skips(c: &[u8], anns: &[&OracleAnnouncement], events: &[&OracleEvent]) -> Vec<(Range<usize>, Skip)> {
    let mut skips = Vec::new();
    let events = anns.iter().map(|a| &a.oracle_event).chain(events.iter().copied());
    for a in anns {
        tlv_headers(&mut skips, c, a.type_id(), &a.encode(), 0);
    }
    for e in events {
        tlv_headers(&mut skips, c, e.type_id(), &e.encode(), 0);
        let (ty, body) = match &e.event_descriptor {
            EventDescriptor::EnumEvent(d) => (55302, d.encode()),
            EventDescriptor::DigitDecompositionEvent(d) => (55306, d.encode()),
        };
        // The type chooses the variant and must stay: only the length is free.
        tlv_headers(&mut skips, c, ty, &body, BigSize(u64::from(ty)).encode().len());
    }
    skips.sort_by_key(|(r, _)| (r.start, r.end));
    skips.dedup();
    skips
}

/// Adds, for every place `c` holds the TLV `ty`/`body`, its header after the first `keep`
/// bytes.
fn tlv_headers(skips: &mut Vec<(Range<usize>, Skip)>, c: &[u8], ty: u16, body: &[u8], keep: usize) {
    let header = [BigSize(u64::from(ty)).encode(), BigSize(body.len() as u64).encode()].concat();
    let tlv = [header.as_slice(), body].concat();
    let fields = if keep == 0 { 2 } else { 1 };
    for at in find_all(c, &tlv) {
        skips.push((at + keep..at + header.len(), Skip::BigSizes(fields)));
    }
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if hay[i..i + needle.len()] == *needle {
            found.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

/// Whether `input` is `c` with each range of `skips` (sorted, disjoint) replaced as it says.
fn explains(input: &[u8], c: &[u8], skips: &[(Range<usize>, Skip)]) -> bool {
    let (mut i, mut j) = (0, 0);
    for (range, skip) in skips {
        let Some(same) = c.get(i..range.start) else {
            return false;
        };
        if input.get(j..j + same.len()) != Some(same) {
            return false;
        }
        j += same.len();
        if let Skip::BigSizes(n) = skip {
            for _ in 0..*n {
                let mut cursor = Cursor::new(input.get(j..).unwrap_or_default());
                if BigSize::read(&mut cursor).is_err() {
                    return false;
                }
                j += usize::try_from(cursor.position()).expect("a cursor position within a slice fits usize");
            }
        }
        i = range.end;
    }
    input.get(j..) == c.get(i..)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
