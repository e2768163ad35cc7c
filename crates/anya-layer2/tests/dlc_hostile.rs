//! Hostile DLC messages.
//!
//! Decoding (no node needed): the committed seed corpus of the `dlc_messages` fuzz target
//! (`fuzz/corpus/dlc_messages/`: an offer, an accept and a sign message of a real contract, and
//! anya oracle announcements and attestations, enum and numeric) is replayed through the fuzz
//! harness (`fuzz/src/lib.rs`), every single-site mutation of the seeds is decoded, and
//! property tests decode arbitrary bytes and random mutations. Each is an error or a message
//! whose encoding is the input, up to what the harness documents that `ddk-messages` ignores
//! (TLV headers of announcements and events, the legacy offer without a protocol version);
//! those normalisations are pinned by their own tests.
//!
//! Contract manager (a real regtest `bitcoind`, `common/dlc.rs`): offers, accepts and sign
//! messages with one thing wrong go to `on_dlc_message`. Every record of the receiving party's
//! store (each namespace listed from the SQLite file, read through `KvStore::scan`) is compared
//! before and after. Where `ddk-manager` 1.1.2 does not refuse cleanly, the test asserts what it
//! does and the safe property that remains, marked `FINDING`.
//!
//! anya's contract service (`DlcService`, opened on the same party's store, keystore, wallet and
//! node): the same messages, as bytes through `DlcService::receive`. Each is refused with a
//! typed error and no panic; what anya refuses before the manager changes nothing, and what the
//! manager marks failed leaves no coin reserved. The genuine messages still go through.
//!
//! `ANYA_WRITE_DLC_SEEDS=1` makes `a_real_contract_gives_the_seed_messages` (re)write the seed
//! files from a real contract.

mod common;
#[path = "common/dlc.rs"]
mod dlc;
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use anya_layer2::dlc::contracts;
use anya_layer2::dlc::contracts::storage::decode_contract;
use anya_layer2::dlc::contracts::{BitcoindBlockchain, DlcError, DlcService, DlcWallet, KvDlcStorage, Pending};
use anya_storage::{Namespace, Scan};
use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::serialize;
use bitcoin::{Amount, Network, OutPoint, ScriptBuf, Transaction, TxIn, TxOut};
use ddk_manager::contract::contract_input::ContractInput;
use ddk_manager::contract::Contract;
use ddk_manager::error::Error;
use ddk_messages::contract_msgs::{
    ContractDescriptor as SerDescriptor, ContractInfo, ContractInfoInner, ContractOutcome, DisjointContractInfo,
    NumericOutcomeContractDescriptor, PayoutFunction, PayoutPoint, RoundingInterval, RoundingIntervals,
};
use ddk_messages::oracle_msgs::{
    DigitDecompositionEventDescriptor, MultiOracleInfo, OracleAnnouncement, OracleAttestation, OracleInfo,
};
use ddk_messages::{types, AcceptDlc, FundingInput, Message, OfferDlc, SignDlc};
use dlc::{btc, coin_event, net, Net, OracleSide, Party, DLC_NAMESPACE};
use harness::{check, decode_exact, decode_message, Kind, Outcome};
use lightning::util::ser::Writeable;
use proptest::prelude::*;
use secp256k1::{PublicKey, Secp256k1, SecretKey};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/dlc_messages");

/// The named seeds of the corpus and the kind each is.
const SEEDS: [(&str, Kind); 7] = [
    ("offer", Kind::Message),
    ("accept", Kind::Message),
    ("sign", Kind::Message),
    ("announcement-enum", Kind::Announcement),
    ("announcement-numeric", Kind::Announcement),
    ("attestation-enum", Kind::Attestation),
    ("attestation-numeric", Kind::Attestation),
];

fn seeds() -> &'static [(&'static str, Kind, Vec<u8>)] {
    static SEED_BYTES: OnceLock<Vec<(&'static str, Kind, Vec<u8>)>> = OnceLock::new();
    SEED_BYTES.get_or_init(|| {
        SEEDS
            .iter()
            .map(|(name, kind)| {
                let path = Path::new(CORPUS).join(name);
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (*name, *kind, bytes)
            })
            .collect()
    })
}

fn seed(name: &str) -> &'static [u8] {
    &seeds().iter().find(|(n, ..)| *n == name).expect("a named seed").2
}

fn offer_seed() -> OfferDlc {
    match decode_message(seed("offer")).expect("the offer seed decodes") {
        Message::Offer(o) => o,
        other => panic!("the offer seed is a {other:?}"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn the_committed_corpus_replays() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= SEEDS.len(), "the dlc_messages corpus is missing");
    for path in &files {
        let bytes = std::fs::read(path).expect("corpus file");
        let replayed = std::panic::catch_unwind(|| harness::dlc_messages(&bytes));
        assert!(replayed.is_ok(), "corpus input {} fails the harness", path.display());
    }
    for (name, kind, bytes) in seeds() {
        assert_eq!(check(*kind, bytes), Outcome::Exact, "seed {name} re-encodes to itself");
        assert!(bytes.len() <= 4096, "seed {name} is small");
    }
}

/// Every single-site change of `bytes`: each bit flipped, each byte set to 0x00 and 0xff and
/// moved by ±1 (as a change of a one-byte length or count field), each byte deleted, a byte
/// inserted before each, every truncation, and extensions by 1 to 3 bytes.
fn single_site_mutations(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut m = bytes.to_vec();
            m[at] ^= 1 << bit;
            out.push(m);
        }
        for value in [0x00, 0xff, bytes[at].wrapping_add(1), bytes[at].wrapping_sub(1)] {
            let mut m = bytes.to_vec();
            m[at] = value;
            out.push(m);
        }
        let mut deleted = bytes.to_vec();
        deleted.remove(at);
        out.push(deleted);
        let mut inserted = bytes.to_vec();
        inserted.insert(at, 0x00);
        out.push(inserted);
        out.push(bytes[..at].to_vec());
    }
    for tail in [&[0x00][..], &[0xff, 0xff], &[0x01, 0x02, 0x03]] {
        out.push([bytes, tail].concat());
    }
    out
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    rejected: usize,
    exact: usize,
    normalized: usize,
}

fn tally(kind: Kind, inputs: &[Vec<u8>]) -> Tally {
    let mut t = Tally::default();
    for input in inputs {
        match check(kind, input) {
            Outcome::Rejected => t.rejected += 1,
            Outcome::Exact => t.exact += 1,
            Outcome::Normalized => t.normalized += 1,
        }
    }
    t
}

#[test]
#[allow(clippy::print_stderr, reason = "the figures of the mutation run, for the report")]
fn every_single_site_mutation_of_the_seeds_is_an_error_or_reencodes() {
    for (name, kind, bytes) in seeds() {
        let mutations = single_site_mutations(bytes);
        let t = tally(*kind, &mutations);
        eprintln!("{name}: {} mutations: {t:?}", mutations.len());
        match *name {
            // FINDING (ddk-messages 1.1.2): what decodes from a changed offer or announcement
            // may encode to other bytes, in the TLV headers its readers skip (the harness
            // checks that nothing else differs). Accepts, signs and attestations have no such
            // field: every mutation that decodes is its own encoding.
            "offer" | "announcement-enum" | "announcement-numeric" => assert!(t.normalized > 0, "{name}: {t:?}"),
            _ => assert_eq!(t.normalized, 0, "{name}: {t:?}"),
        }
    }
}

#[test]
fn an_offer_without_its_protocol_version_reads_as_a_version_1_offer() {
    // FINDING: `OfferDlc::read` takes the format before `protocol_version` too: the four bytes
    // after the type, when they are not 1 to 10 as a big-endian u32, are the contract flags and
    // the start of the chain hash. Such bytes decode to the same offer as its encoding with
    // the version, so one offer has two encodings.
    let bytes = seed("offer");
    let offer = offer_seed();
    assert_eq!(offer.protocol_version, 1);
    let legacy = [&bytes[..2], &bytes[6..]].concat();
    let Message::Offer(read) = decode_message(&legacy).expect("the legacy form decodes") else {
        panic!("an offer")
    };
    assert_eq!(read, offer);
    assert_eq!(read.encode(), bytes);
    assert_eq!(check(Kind::Message, &legacy), Outcome::Normalized);
    // anya's entry point for message bytes accepts only the canonical encoding.
    assert_eq!(
        contracts::decode_message(&legacy).expect_err("anya refuses the legacy form"),
        contracts::WireError::NonCanonical(u16::from_be_bytes([bytes[0], bytes[1]]))
    );
    assert!(contracts::decode_message(bytes).is_ok());
}

#[test]
fn the_tlv_headers_of_an_announcement_inside_an_offer_are_not_read() {
    // FINDING: `read_as_tlv` reads the type and length of the announcement (55332) inside an
    // offer's oracle info, and of the event (55330) inside it, and ignores both.
    let bytes = seed("offer");
    let offer = offer_seed();
    for header in [[0xfd, 0xd8, 0x24], [0xfd, 0xd8, 0x22]] {
        let at = find(bytes, &header).expect("the TLV header is in the offer");
        let len_at = at + header.len();
        let mut other_type = bytes.to_vec();
        other_type[at + 1] = 0x01; // 0x01d8: still a canonical three-byte BigSize
        let mut other_length = bytes.to_vec();
        if other_length[len_at] < 0xfd {
            other_length[len_at] = (other_length[len_at] + 7) % 0xfd;
        } else {
            other_length[len_at + 2] ^= 0x01;
        }
        let variants = [
            ("a one-byte type", [&bytes[..at], &[0x2a], &bytes[len_at..]].concat()),
            ("another type", other_type),
            ("another length", other_length),
        ];
        for (what, m) in variants {
            let Message::Offer(read) = decode_message(&m).expect("the changed header is not read") else {
                panic!("an offer")
            };
            assert_eq!(read, offer, "header {header:02x?}: {what}");
            assert_eq!(check(Kind::Message, &m), Outcome::Normalized);
            assert!(
                matches!(
                    contracts::decode_message(&m),
                    Err(contracts::WireError::NonCanonical(_))
                ),
                "anya refuses it: {what}"
            );
        }
    }
}

#[test]
fn an_announcement_with_another_event_length_decodes_and_still_verifies() {
    // FINDING: the event's TLV length inside an announcement is ignored and the signature is
    // over the event's own encoding, so a signed announcement has many byte forms that all
    // verify. Anything that keys, hashes or deduplicates announcements by their bytes must
    // re-encode them first.
    for name in ["announcement-enum", "announcement-numeric"] {
        let bytes = seed(name);
        let original: OracleAnnouncement = decode_exact(bytes).expect("the seed decodes");
        let at = find(bytes, &[0xfd, 0xd8, 0x22]).expect("the event TLV") + 3;
        let mut m = bytes.to_vec();
        if m[at] == 0xfd {
            m[at + 2] ^= 0x01; // a three-byte length stays canonical
        } else {
            m[at] = 0x00;
        }
        let read: OracleAnnouncement = decode_exact(&m).expect("the event length is ignored");
        assert_eq!(read, original);
        anya_testkit::dlc::verify_announcement(&read).expect("it still verifies");
        assert_ne!(m, read.encode());
    }
}

/// One change of a byte string, positions chosen relative to its length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    /// ±delta, as on a length or count field.
    Nudge(prop::sample::Index, i8),
    Truncate(prop::sample::Index),
    Extend(Vec<u8>),
    Splice(prop::sample::Index, u8, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>();
    prop_oneof![
        (index.clone(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (index.clone(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        (index.clone(), -3i8..=3).prop_map(|(i, d)| Mutation::Nudge(i, d)),
        index.clone().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (index, 0u8..16, prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(i, n, b)| Mutation::Splice(i, n, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Extend(b) | Mutation::Splice(_, _, b) = m {
            bytes.extend_from_slice(b);
        }
        return;
    }
    match m {
        Mutation::Flip(i, bit) => {
            let at = i.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::Set(i, v) => {
            let at = i.index(bytes.len());
            bytes[at] = *v;
        }
        Mutation::Nudge(i, d) => {
            let at = i.index(bytes.len());
            bytes[at] = bytes[at].wrapping_add_signed(*d);
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Extend(b) => bytes.extend_from_slice(b),
        Mutation::Splice(i, n, b) => {
            let at = i.index(bytes.len());
            let end = (at + usize::from(*n)).min(bytes.len());
            bytes.splice(at..end, b.iter().copied());
        }
    }
}

/// The type prefix of every message of `ddk-messages` (`read_dlc_message` reads all but the
/// close and renew-revoke messages).
const TYPES: [u16; 18] = [
    types::OFFER_TYPE,
    types::ACCEPT_TYPE,
    types::SIGN_TYPE,
    types::CLOSE_TYPE,
    types::OFFER_CHANNEL_TYPE,
    types::ACCEPT_CHANNEL_TYPE,
    types::SIGN_CHANNEL_TYPE,
    types::SETTLE_CHANNEL_OFFER_TYPE,
    types::SETTLE_CHANNEL_ACCEPT_TYPE,
    types::SETTLE_CHANNEL_CONFIRM_TYPE,
    types::SETTLE_CHANNEL_FINALIZE_TYPE,
    types::RENEW_CHANNEL_OFFER_TYPE,
    types::RENEW_CHANNEL_ACCEPT_TYPE,
    types::RENEW_CHANNEL_CONFIRM_TYPE,
    types::RENEW_CHANNEL_FINALIZE_TYPE,
    types::RENEW_CHANNEL_REVOKE_TYPE,
    types::COLLABORATIVE_CLOSE_OFFER_TYPE,
    types::REJECT,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_are_errors_or_reencode(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        harness::dlc_messages(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_each_message_type_are_errors_or_reencode(
        ty in prop::sample::select(TYPES.to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let bytes = [ty.to_be_bytes().as_slice(), &body].concat();
        harness::dlc_messages(&bytes);
    }

    #[test]
    fn mutated_seeds_are_errors_or_reencode(
        which in 0..SEEDS.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let (_, kind, bytes) = &seeds()[which];
        let mut m = bytes.clone();
        for mutation in &mutations {
            apply(&mut m, mutation);
        }
        check(*kind, &m);
        harness::dlc_messages(&m);
    }
}

// ---------------------------------------------------------------------------------------------
// The contract manager
// ---------------------------------------------------------------------------------------------

/// Every record of a store: (namespace, key) → (version, value).
type Snapshot = BTreeMap<(String, Vec<u8>), (u64, Vec<u8>)>;

/// Every record of `party`'s store. The namespaces are listed from the SQLite file (the
/// `KvStore` trait has no listing); each is read through `KvStore::scan`.
fn snapshot(party: &Party) -> Snapshot {
    party.hsm.flush_audit().expect("audit flushed");
    let db = party.dir.path().join("party.db");
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the store's file, read-only");
    let names: Vec<String> = conn
        .prepare("SELECT name FROM anya_ns ORDER BY name")
        .expect("namespaces")
        .query_map([], |r| r.get(0))
        .expect("namespaces")
        .collect::<Result<_, _>>()
        .expect("namespaces");
    let mut records = Snapshot::new();
    for name in names {
        let ns = Namespace::new(name.clone()).expect("a stored namespace");
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut scan = Scan::all().limit(256);
            if let Some(a) = &after {
                scan = scan.after(a);
            }
            let page = party.store.scan(&ns, scan).expect("scan");
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for e in page {
                records.insert((name.clone(), e.key), (e.version.get(), e.value));
            }
        }
    }
    records
}

fn state(c: &Contract) -> &'static str {
    match c {
        Contract::Offered(_) => "Offered",
        Contract::Accepted(_) => "Accepted",
        Contract::Signed(_) => "Signed",
        Contract::Confirmed(_) => "Confirmed",
        Contract::PreClosed(_) => "PreClosed",
        Contract::Closed(_) => "Closed",
        Contract::Refunded(_) => "Refunded",
        Contract::FailedAccept(_) => "FailedAccept",
        Contract::FailedSign(_) => "FailedSign",
        Contract::Rejected(_) => "Rejected",
    }
}

/// One record that differs between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    ns: String,
    /// The key, as [`show_key`] writes it.
    key: String,
    /// `None`: absent; for a contract record, its state.
    before: Option<String>,
    after: Option<String>,
}

fn describe(ns: &str, value: Option<&(u64, Vec<u8>)>) -> Option<String> {
    value.map(|(version, bytes)| {
        if ns == DLC_NAMESPACE {
            match decode_contract(bytes) {
                Ok(c) => state(&c).to_owned(),
                Err(e) => format!("undecodable ({e})"),
            }
        } else {
            format!("v{version}, {} bytes", bytes.len())
        }
    })
}

fn changes(before: &Snapshot, after: &Snapshot) -> Vec<Change> {
    let keys: BTreeSet<_> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|(ns, key)| Change {
            ns: ns.clone(),
            key: show_key(key),
            before: describe(ns, before.get(&(ns.clone(), key.clone()))),
            after: describe(ns, after.get(&(ns.clone(), key.clone()))),
        })
        .collect()
}

/// A key as text: a printable prefix up to its first `/` as it is, the rest in hex unless it
/// is printable too.
fn show_key(key: &[u8]) -> String {
    let printable = |b: &[u8]| b.iter().all(u8::is_ascii_graphic);
    let (prefix, rest) = match key.iter().position(|&b| b == b'/') {
        Some(at) if printable(&key[..at]) => key.split_at(at + 1),
        _ => (&[][..], key),
    };
    let rest = if printable(rest) {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        rest.iter().map(|b| format!("{b:02x}")).collect()
    };
    format!("{}{rest}", String::from_utf8_lossy(prefix))
}

fn contract_key(id: &[u8; 32]) -> String {
    show_key(&[b"c/".as_slice(), id].concat())
}

/// `fut`, with a panic inside it returned as `Err(its message)`.
async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, String> {
    let mut fut = Box::pin(fut);
    std::future::poll_fn(
        move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default())),
        },
    )
    .await
}

type Handled = Result<Option<Message>, Error>;

/// The audit chain's namespaces, reported as the operations audited rather than as records.
const AUDIT_NAMESPACES: [&str; 2] = ["anya.hsm.audit", "anya.hsm.audit-head"];

/// A party's store at one moment, and its HSM audit chain's length.
struct Mark {
    records: Snapshot,
    audit_seq: u64,
}

fn mark(party: &Party) -> Mark {
    let records = snapshot(party);
    let audit_seq = party
        .hsm
        .audit_records(0, 1_000_000)
        .expect("audit records")
        .last()
        .map_or(0, |r| r.seq);
    Mark { records, audit_seq }
}

/// What changed in `party`'s store since `before`: each record outside the audit chain, and
/// one entry (namespace `anya.hsm.audit`, empty key) listing the operations the HSM audited.
fn since(party: &Party, before: &Mark) -> Vec<Change> {
    let after = snapshot(party);
    let all = changes(&before.records, &after);
    let audit_changed = all.iter().any(|c| AUDIT_NAMESPACES.contains(&c.ns.as_str()));
    let mut changed: Vec<Change> = all
        .into_iter()
        .filter(|c| !AUDIT_NAMESPACES.contains(&c.ns.as_str()))
        .collect();
    let audited: Vec<String> = party
        .hsm
        .audit_records(before.audit_seq, 1_000_000)
        .expect("audit records")
        .iter()
        .map(|r| format!("{:?}", r.operation))
        .collect();
    assert_eq!(
        audit_changed,
        !audited.is_empty(),
        "the audit chain grows by its records"
    );
    if !audited.is_empty() {
        changed.push(audited_ops(&audited.join(", ")));
    }
    changed
}

/// The entry of [`since`] for these audited operations.
fn audited_ops(ops: &str) -> Change {
    Change {
        ns: AUDIT_NAMESPACES[0].to_owned(),
        key: String::new(),
        before: None,
        after: Some(ops.to_owned()),
    }
}

/// `message` from `from` to `party`, with a panic caught, and what it changed in the store.
async fn deliver(party: &Party, message: &Message, from: PublicKey) -> (Result<Handled, String>, Vec<Change>) {
    let before = mark(party);
    let handled = catch_panic(party.manager.on_dlc_message(message, from)).await;
    (handled, since(party, &before))
}

/// Delivers `message` and requires a typed error and an unchanged store; returns the error.
async fn refused(party: &Party, message: &Message, from: PublicKey, what: &str) -> Error {
    let (handled, changed) = deliver(party, message, from).await;
    let err = match handled {
        Ok(Err(e)) => e,
        Ok(Ok(reply)) => panic!("{what}: taken (reply {reply:?})"),
        Err(panic) => panic!("{what}: the manager panicked: {panic}"),
    };
    assert_eq!(changed, [], "{what}: refused ({err}) but the store changed");
    err
}

/// The name of `e`'s variant.
fn variant(e: &Error) -> &'static str {
    match e {
        Error::Conversion(_) => "Conversion",
        Error::IOError(_) => "IOError",
        Error::Deserialize(_) => "Deserialize",
        Error::InvalidParameters(_) => "InvalidParameters",
        Error::InvalidState(_) => "InvalidState",
        Error::WalletError(_) => "WalletError",
        Error::BlockchainError(_) => "BlockchainError",
        Error::StorageError(_) => "StorageError",
        Error::OracleError(_) => "OracleError",
        Error::DlcError(_) => "DlcError",
        Error::SecpError(_) => "SecpError",
    }
}

/// `changed` is one new contract record, an Offered one, and nothing else.
fn assert_one_new_offer(changed: &[Change]) {
    assert!(
        matches!(changed, [Change { ns, before: None, after: Some(state), .. }] if ns == DLC_NAMESPACE && state == "Offered"),
        "{changed:?}"
    );
}

fn stranger() -> PublicKey {
    PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::new(&mut rand::thread_rng()))
}

fn random_id() -> [u8; 32] {
    rand::random()
}

/// Two parties with `coins` confirmed, mature 50 BTC coins each, synced.
async fn funded_parties(net: &Net, coins: u32) -> (Party, Party) {
    let alice = Party::new(net, "alice").await;
    let bob = Party::new(net, "bob").await;
    for party in [&alice, &bob] {
        if coins > 1 {
            let address = party.wallet.lock().unwrap().next_address().expect("address").address;
            net.node.mine(coins - 1, &address);
        }
    }
    net.mine(100);
    for party in [&alice, &bob] {
        party.sync(&net.chain);
        assert_eq!(party.balance(), btc(50.0) * u64::from(coins));
    }
    (alice, bob)
}

fn inner(o: &mut OfferDlc) -> &mut ContractInfoInner {
    match &mut o.contract_info {
        ContractInfo::SingleContractInfo(s) => &mut s.contract_info,
        ContractInfo::DisjointContractInfo(_) => panic!("a single-event offer"),
    }
}

fn announcement(o: &mut OfferDlc) -> &mut OracleAnnouncement {
    match &mut inner(o).oracle_info {
        OracleInfo::Single(s) => &mut s.oracle_announcement,
        OracleInfo::Multi(_) => panic!("a single-oracle offer"),
    }
}

fn payouts(o: &mut OfferDlc) -> &mut Vec<ContractOutcome> {
    match &mut inner(o).contract_descriptor {
        SerDescriptor::EnumeratedContractDescriptor(e) => &mut e.payouts,
        SerDescriptor::NumericOutcomeContractDescriptor(_) => panic!("an enum offer"),
    }
}

fn set_total(o: &mut OfferDlc, total: Amount) {
    match &mut o.contract_info {
        ContractInfo::SingleContractInfo(s) => s.total_collateral = total,
        ContractInfo::DisjointContractInfo(d) => d.total_collateral = total,
    }
}

fn offer_with(o: &OfferDlc, change: impl FnOnce(&mut OfferDlc)) -> Message {
    let mut o = o.clone();
    change(&mut o);
    Message::Offer(o)
}

/// Funding inputs whose previous outputs are each worth `u64::MAX` satoshis (a transaction
/// decodes with any output value): their sum overflows.
fn overflowing_inputs(first_serial: u64) -> Vec<FundingInput> {
    let prev = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(u64::MAX),
            script_pubkey: ScriptBuf::new(),
        }],
    };
    (0..2)
        .map(|i| FundingInput {
            input_serial_id: first_serial + i,
            prev_tx: serialize(&prev),
            prev_tx_vout: 0,
            sequence: 0xffff_fffe,
            max_witness_len: 108,
            redeem_script: ScriptBuf::new(),
            dlc_input: None,
        })
        .collect()
}

/// `a` with one bit changed in its first CET adaptor signature (the re-encoded message must
/// still decode: the change goes into a scalar).
fn bad_adaptor_signature(a: &AcceptDlc) -> AcceptDlc {
    let bytes = a.encode();
    let sig = a.cet_adaptor_signatures.ecdsa_adaptor_signatures[0].signature;
    let sig_bytes: &[u8] = sig.as_ref();
    let at = find(&bytes, sig_bytes).expect("the signature is in the message");
    for offset in (66..98).rev() {
        let mut m = bytes.clone();
        m[at + offset] ^= 0x01;
        if let Ok(changed) = decode_exact::<AcceptDlc>(&m) {
            return changed;
        }
    }
    panic!("no one-bit change of the adaptor signature decodes")
}

fn flip_ecdsa(sig: &secp256k1::ecdsa::Signature) -> secp256k1::ecdsa::Signature {
    let mut compact = sig.serialize_compact();
    compact[63] ^= 0x01;
    secp256k1::ecdsa::Signature::from_compact(&compact).expect("still a scalar below the order")
}

/// Alice offers `input` to Bob, who takes the offer in.
async fn offered(alice: &Party, bob: &Party, input: &ContractInput) -> OfferDlc {
    let offer = alice.manager.send_offer(input, bob.id).await.expect("offer");
    bob.manager
        .on_dlc_message(&Message::Offer(offer.clone()), alice.id)
        .await
        .expect("offer received");
    offer
}

/// ... and Bob accepts it.
async fn accepted(alice: &Party, bob: &Party, input: &ContractInput) -> (OfferDlc, AcceptDlc) {
    let offer = offered(alice, bob, input).await;
    let (_, _, accept) = bob
        .manager
        .accept_contract_offer(&offer.temporary_contract_id)
        .await
        .expect("accepted");
    (offer, accept)
}

/// ... and Alice signs it.
async fn signed(alice: &Party, bob: &Party, input: &ContractInput) -> (OfferDlc, AcceptDlc, SignDlc) {
    let (offer, accept) = accepted(alice, bob, input).await;
    let sign = alice
        .manager
        .on_dlc_message(&Message::Accept(accept.clone()), bob.id)
        .await
        .expect("accept received")
        .expect("a sign message");
    let Message::Sign(sign) = sign else {
        panic!("a sign message")
    };
    (offer, accept, sign)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_with_a_bad_field_are_refused_and_change_nothing() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 2).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let offer = alice.manager.send_offer(&input, bob.id).await.expect("offer");

    let wrong_key = secp256k1::Keypair::new(&Secp256k1::new(), &mut rand::thread_rng())
        .x_only_public_key()
        .0;
    let cases: Vec<(&str, &str, Message)> = vec![
        (
            "another oracle key than the one that signed the announcement",
            "DlcError",
            offer_with(&offer, |o| announcement(o).oracle_public_key = wrong_key),
        ),
        (
            "no outcomes",
            "InvalidParameters",
            offer_with(&offer, |o| payouts(o).clear()),
        ),
        (
            "an outcome twice",
            "InvalidParameters",
            offer_with(&offer, |o| {
                let first = payouts(o)[0].clone();
                payouts(o).push(first);
            }),
        ),
        (
            "an outcome the oracle does not announce",
            "InvalidParameters",
            offer_with(&offer, |o| payouts(o)[0].outcome = "edge".to_owned()),
        ),
        (
            "a refund locktime before maturity",
            "DlcError",
            offer_with(&offer, |o| o.refund_locktime = maturity - 1),
        ),
        (
            "a CET locktime after maturity",
            "DlcError",
            offer_with(&offer, |o| o.cet_locktime = maturity + 1),
        ),
        (
            "a fee rate above the limit (6250 sat/vB)",
            "InvalidParameters",
            offer_with(&offer, |o| o.fee_rate_per_vb = 6251),
        ),
        (
            "a fee rate of u64::MAX",
            "InvalidParameters",
            offer_with(&offer, |o| o.fee_rate_per_vb = u64::MAX),
        ),
        (
            "a funding input whose previous transaction has no such output",
            "Conversion",
            offer_with(&offer, |o| o.funding_inputs[0].prev_tx_vout = 7),
        ),
        (
            "a funding input whose previous transaction does not decode",
            "Conversion",
            offer_with(&offer, |o| o.funding_inputs[0].prev_tx.truncate(10)),
        ),
    ];
    for (what, expected, message) in &cases {
        let err = refused(&bob, message, alice.id, what).await;
        assert_eq!(variant(&err), *expected, "{what}: {err:?}");
    }

    // The offer itself is taken; the same temporary id again is refused.
    let (handled, changed) = deliver(&bob, &Message::Offer(offer.clone()), alice.id).await;
    assert!(matches!(handled, Ok(Ok(None))), "{handled:?}");
    assert_eq!(
        changed,
        [Change {
            ns: DLC_NAMESPACE.to_owned(),
            key: contract_key(&offer.temporary_contract_id),
            before: None,
            after: Some("Offered".to_owned()),
        }]
    );
    let err = refused(
        &bob,
        &Message::Offer(offer.clone()),
        alice.id,
        "a duplicate temporary id",
    )
    .await;
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");
    // Even from someone else, and with other terms.
    let err = refused(
        &bob,
        &offer_with(&offer, |o| o.fee_rate_per_vb = 3),
        stranger(),
        "a duplicate temporary id from another peer",
    )
    .await;
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_the_manager_takes_or_panics_on() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 2).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let offer = alice.manager.send_offer(&input, bob.id).await.expect("offer");
    let fresh = |change: fn(&mut OfferDlc)| {
        offer_with(&offer, |o| {
            o.temporary_contract_id = random_id();
            change(o);
        })
    };

    // FINDING (panic, remote): an offer whose total collateral is below one outcome's offer
    // payout panics in `OfferedContract::try_from_offer_dlc` (`total - payout`, bitcoin's
    // `Amount` subtraction panics on underflow). Nothing was written.
    let (handled, changed) = deliver(&bob, &fresh(|o| set_total(o, Amount::from_sat(1))), alice.id).await;
    let panic = handled.expect_err("the manager panics");
    assert!(panic.contains("Amount subtraction error"), "{panic}");
    assert_eq!(changed, []);

    // FINDING (panic, remote): funding inputs whose previous outputs sum past u64::MAX panic in
    // `get_tx_input_infos` (`Amount` addition). Nothing was written.
    let (handled, changed) = deliver(&bob, &fresh(|o| o.funding_inputs = overflowing_inputs(1)), alice.id).await;
    let panic = handled.expect_err("the manager panics");
    assert!(panic.contains("Amount addition error"), "{panic}");
    assert_eq!(changed, []);

    // FINDING (panic, remote): a multi-oracle info with no announcement panics in
    // `OfferDlc::validate` (`get_closest_maturity_date`: "to have at least one event").
    let (handled, changed) = deliver(
        &bob,
        &fresh(|o| {
            inner(o).oracle_info = OracleInfo::Multi(MultiOracleInfo {
                threshold: 1,
                oracle_announcements: Vec::new(),
                oracle_params: None,
            })
        }),
        alice.id,
    )
    .await;
    let panic = handled.expect_err("the manager panics");
    assert!(panic.contains("at least one event"), "{panic}");
    assert_eq!(changed, []);

    // FINDING: an offer whose offer collateral exceeds the total collateral (so the accepting
    // side's collateral is negative) is taken and stored as Offered...
    let too_much = fresh(|o| o.offer_collateral = o.get_total_collateral() + Amount::from_sat(1));
    let Message::Offer(too_much_offer) = &too_much else {
        unreachable!()
    };
    let (handled, changed) = deliver(&bob, &too_much, alice.id).await;
    assert!(matches!(handled, Ok(Ok(None))), "{handled:?}");
    assert_one_new_offer(&changed);
    // ...and accepting it panics (`total - offer collateral` in `accept_contract`) before any
    // coin is chosen: the safe property is that nothing is reserved or signed.
    let before = mark(&bob);
    let accepting = catch_panic(bob.manager.accept_contract_offer(&too_much_offer.temporary_contract_id)).await;
    let panic = accepting.expect_err("accepting panics");
    assert!(panic.contains("Amount subtraction error"), "{panic}");
    // Only the contract key's public key was read.
    assert_eq!(since(&bob, &before), [audited_ops("PublicKey")]);
    assert!(bob.wallet.lock().unwrap().reserved().expect("reserved").is_empty());

    // FINDING: a fee rate of 0 is taken (only rates above 6250 sat/vB are refused); the
    // funding transaction of such a contract would not relay.
    let (handled, changed) = deliver(&bob, &fresh(|o| o.fee_rate_per_vb = 0), alice.id).await;
    assert!(matches!(handled, Ok(Ok(None))), "{handled:?}");
    assert_one_new_offer(&changed);

    // FINDING: the offer's oracle need not be one of the manager's oracles: an announcement
    // signed by an oracle this manager does not know is taken. (The application must check
    // the oracle before it accepts; the manager could never close such a contract by CET.)
    let other_oracle = OracleSide::new(&net.clock);
    let foreign = other_oracle
        .oracle
        .create_enum_event("coin", maturity, vec!["heads".to_owned(), "tails".to_owned()])
        .expect("event");
    let message = offer_with(&offer, |o| {
        o.temporary_contract_id = random_id();
        *announcement(o) = foreign;
    });
    let (handled, changed) = deliver(&bob, &message, alice.id).await;
    assert!(matches!(handled, Ok(Ok(None))), "{handled:?}");
    assert_one_new_offer(&changed);

    // FINDING: once an offer is accepted, its record moves from the temporary id to the
    // contract id, and the same offer sent again is taken as a new Offered contract (the
    // duplicate check reads only the temporary id).
    let (handled, _) = deliver(&bob, &Message::Offer(offer.clone()), alice.id).await;
    assert!(matches!(handled, Ok(Ok(None))), "{handled:?}");
    let (contract_id, _, _) = bob
        .manager
        .accept_contract_offer(&offer.temporary_contract_id)
        .await
        .expect("accepted");
    let (handled, changed) = deliver(&bob, &Message::Offer(offer.clone()), alice.id).await;
    assert!(matches!(handled, Ok(Ok(None))), "{handled:?}");
    assert_eq!(
        changed,
        [Change {
            ns: DLC_NAMESPACE.to_owned(),
            key: contract_key(&offer.temporary_contract_id),
            before: None,
            after: Some("Offered".to_owned()),
        }]
    );
    assert!(matches!(bob.contract(&contract_id).await, Contract::Accepted(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_with_a_bad_field_are_refused() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 3).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let (offer, accept) = accepted(&alice, &bob, &input).await;
    // What the snapshots cover: every namespace the store holds, among them these.
    let namespaces: BTreeSet<String> = snapshot(&alice).into_keys().map(|(ns, _)| ns).collect();
    for ns in [
        DLC_NAMESPACE,
        "anya/wallet/alice/reserved",
        "anya/wallet/alice",
        "anya/wallets",
        "anya.hsm.keys",
        "anya.hsm.audit",
    ] {
        assert!(namespaces.contains(ns), "{ns} in {namespaces:?}");
    }

    let unknown = AcceptDlc {
        temporary_contract_id: random_id(),
        ..accept.clone()
    };
    let err = refused(
        &alice,
        &Message::Accept(unknown),
        bob.id,
        "an accept for an unknown contract",
    )
    .await;
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");
    let err = refused(
        &alice,
        &Message::Accept(accept.clone()),
        stranger(),
        "an accept from another peer",
    )
    .await;
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");
    let err = refused(
        &alice,
        &Message::Offer(offer.clone()),
        bob.id,
        "Alice's own offer sent back to her under its id",
    )
    .await;
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");

    // FINDING (panic, remote): funding inputs whose previous outputs sum past u64::MAX panic
    // in `verify_accepted_and_sign_contract` (`get_tx_input_infos`), before the contract is
    // marked failed: nothing is written and the offer can still be accepted.
    let overflowing = AcceptDlc {
        funding_inputs: overflowing_inputs(1),
        ..accept.clone()
    };
    let (handled, changed) = deliver(&alice, &Message::Accept(overflowing), bob.id).await;
    let panic = handled.expect_err("the manager panics");
    assert!(panic.contains("Amount addition error"), "{panic}");
    assert_eq!(changed, []);

    // The real accept is still taken.
    let (handled, _) = deliver(&alice, &Message::Accept(accept.clone()), bob.id).await;
    assert!(matches!(handled, Ok(Ok(Some(Message::Sign(_))))), "{handled:?}");
    let err = refused(
        &alice,
        &Message::Accept(accept.clone()),
        bob.id,
        "the accept again (the contract is signed)",
    )
    .await;
    // Unknown: the contract left its temporary id when it was signed.
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");

    // A second contract: its accept carries one flipped bit in a CET adaptor signature.
    // FINDING: refused with an error, but the contract is stored as FailedAccept (in place of
    // Offered, under the temporary id), with the counterparty's accept message and the error.
    // Safe: nothing else changes: the HSM audited one read of the contract key's public key
    // (`CachedContractSignerProvider` never fills its cache, so each derivation asks the HSM)
    // and nothing else, so no signature was made and no key exported. The coin Alice's offer
    // reserved stays reserved: ddk-manager never releases it (anya's `contracts::resume` does
    // at the next start, as no live contract funds with it).
    let (offer2, accept2) = accepted(&alice, &bob, &input).await;
    let reserved = alice.wallet.lock().unwrap().reserved().expect("reserved");
    let bad = bad_adaptor_signature(&accept2);
    let (handled, changed) = deliver(&alice, &Message::Accept(bad), bob.id).await;
    let err = handled.expect("no panic").expect_err("refused");
    assert_eq!(variant(&err), "DlcError", "{err:?}");
    assert_eq!(
        changed,
        [
            Change {
                ns: DLC_NAMESPACE.to_owned(),
                key: contract_key(&offer2.temporary_contract_id),
                before: Some("Offered".to_owned()),
                after: Some("FailedAccept".to_owned()),
            },
            audited_ops("PublicKey")
        ],
        "{err}"
    );
    assert_eq!(alice.wallet.lock().unwrap().reserved().expect("reserved"), reserved);
    // The good accept can no longer be taken.
    let err = refused(
        &alice,
        &Message::Accept(accept2),
        bob.id,
        "the good accept after a bad one",
    )
    .await;
    assert_eq!(variant(&err), "InvalidState", "{err:?}");
    alice.hsm.verify_audit_chain().expect("audit chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_messages_with_a_bad_field_are_refused() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 4).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let (_, _, sign) = signed(&alice, &bob, &input).await;
    // An offer Bob holds but has not accepted.
    let pending = offered(&alice, &bob, &input).await;

    let err = refused(
        &bob,
        &Message::Sign(sign.clone()),
        stranger(),
        "a sign message from another peer",
    )
    .await;
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");
    let unknown = SignDlc {
        contract_id: random_id(),
        ..sign.clone()
    };
    let err = refused(
        &bob,
        &Message::Sign(unknown),
        alice.id,
        "a sign message for an unknown contract",
    )
    .await;
    assert_eq!(variant(&err), "InvalidParameters", "{err:?}");
    let wrong_state = SignDlc {
        contract_id: pending.temporary_contract_id,
        ..sign.clone()
    };
    let err = refused(
        &bob,
        &Message::Sign(wrong_state),
        alice.id,
        "a sign message for a contract still offered",
    )
    .await;
    assert_eq!(variant(&err), "InvalidState", "{err:?}");

    let (handled, _) = deliver(&bob, &Message::Sign(sign.clone()), alice.id).await;
    assert!(matches!(handled, Ok(Ok(None))), "{handled:?}");
    let err = refused(
        &bob,
        &Message::Sign(sign.clone()),
        alice.id,
        "the sign message again (the contract is signed)",
    )
    .await;
    assert_eq!(variant(&err), "InvalidState", "{err:?}");

    // A second contract: its sign message has one flipped bit in the refund signature.
    // FINDING: refused, and the contract is stored as FailedSign (in place of Accepted), with
    // Alice's sign message and the error. Safe: no HSM operation (Bob's funding input is not
    // signed); Bob's funding coin stays reserved until `contracts::resume` at the next start.
    let (_, accept2, sign2) = signed(&alice, &bob, &input).await;
    let contract2 = bob_contract_id(&bob, &accept2).await;
    let reserved = bob.wallet.lock().unwrap().reserved().expect("reserved");
    let bad_refund = SignDlc {
        refund_signature: flip_ecdsa(&sign2.refund_signature),
        ..sign2.clone()
    };
    let (handled, changed) = deliver(&bob, &Message::Sign(bad_refund), alice.id).await;
    let err = handled.expect("no panic").expect_err("refused");
    assert_eq!(variant(&err), "DlcError", "{err:?}");
    assert_eq!(
        changed,
        [Change {
            ns: DLC_NAMESPACE.to_owned(),
            key: contract_key(&contract2),
            before: Some("Accepted".to_owned()),
            after: Some("FailedSign".to_owned()),
        }],
        "{err}"
    );
    assert_eq!(bob.wallet.lock().unwrap().reserved().expect("reserved"), reserved);

    // A third contract: the sign message's funding witness for Alice's input is bad.
    // FINDING: the manager does not check the other side's funding signatures. Bob's wallet
    // signs his funding input (the HSM's audit chain grows), the contract is stored as Signed,
    // and only then does the broadcast fail: the call returns a BlockchainError with the
    // contract left Signed on a funding transaction that can never confirm as it is. Safe:
    // Bob's signature (SIGHASH_ALL, on the agreed funding transaction) reached only his own
    // node, which refused the transaction; Bob holds Alice's verified refund and CET adaptor
    // signatures, so if the funding ever confirmed the contract would be sound. Bob's coin
    // stays reserved, and `contracts::resume` (which broadcasts a Signed contract's funding
    // transaction again) would retry this one at every start.
    let (_, accept3, sign3) = signed(&alice, &bob, &input).await;
    let contract3 = bob_contract_id(&bob, &accept3).await;
    let mut bad_funding = sign3.clone();
    let witness = &mut bad_funding.funding_signatures.funding_signatures[0].witness_elements[0].witness;
    let last = witness.len() - 2; // the DER signature's last byte, before the sighash flag
    witness[last] ^= 0x01;
    let (handled, changed) = deliver(&bob, &Message::Sign(bad_funding), alice.id).await;
    let err = handled.expect("no panic").expect_err("refused");
    assert_eq!(variant(&err), "BlockchainError", "{err:?}");
    let in_ns = |ns: &str| changed.iter().filter(|c| c.ns == ns).cloned().collect::<Vec<_>>();
    assert_eq!(
        in_ns(DLC_NAMESPACE),
        [Change {
            ns: DLC_NAMESPACE.to_owned(),
            key: contract_key(&contract3),
            before: Some("Accepted".to_owned()),
            after: Some("Signed".to_owned()),
        }],
        "{err}"
    );
    // The spending policy approved Bob's share and recorded it in its window (a spend that
    // never happened counts against his limits), then the HSM signed.
    assert!(!in_ns("anya/wallet/bob/policy").is_empty(), "{changed:?}");
    assert_eq!(in_ns(AUDIT_NAMESPACES[0]), [audited_ops("Decision, SignEcdsa")]);
    assert!(
        changed
            .iter()
            .all(|c| [DLC_NAMESPACE, "anya/wallet/bob/policy", AUDIT_NAMESPACES[0]].contains(&c.ns.as_str())),
        "{changed:?}"
    );
    let Contract::Signed(stored) = bob.contract(&contract3).await else {
        panic!("signed")
    };
    let fund = stored.accepted_contract.dlc_transactions.fund.compute_txid();
    assert_eq!(
        net.chain.confirmations(&fund).expect("rpc"),
        None,
        "the node refused it"
    );

    // What anya's start-up recovery makes of it: `contracts::resume` takes the contract for a
    // funding transaction stored but never broadcast, has the HSM sign Bob's input again and
    // broadcasts. FINDING: the node refuses it and the broadcast's error ends `resume` (today
    // `Err(BlockchainError)`, after it released the coin of the FailedSign contract above and
    // audited Decision, SignEcdsa): every start fails the same way while this contract is
    // stored, and the contracts after it are not resumed. Safe: a typed error, no panic, the
    // contract still Signed and its funding still not on chain.
    let storage = Arc::new(KvDlcStorage::new(Arc::clone(&bob.store), DLC_NAMESPACE).expect("storage"));
    let blockchain = Arc::new(BitcoindBlockchain::new(Arc::clone(&net.chain), Network::Regtest).expect("chain"));
    let wallet = DlcWallet::new(Arc::clone(&bob.wallet));
    let resumed = catch_panic(contracts::resume(&storage, &wallet, &blockchain))
        .await
        .expect("resume does not panic");
    if let Err(e) = &resumed {
        assert_eq!(variant(e), "BlockchainError", "{e:?}");
    }
    assert!(matches!(bob.contract(&contract3).await, Contract::Signed(_)));
    assert_eq!(net.chain.confirmations(&fund).expect("rpc"), None);
    bob.hsm.verify_audit_chain().expect("audit chain");
}

/// The contract id Bob's accept gave a contract.
async fn bob_contract_id(bob: &Party, accept: &AcceptDlc) -> [u8; 32] {
    use ddk_manager::Storage as _;
    bob.manager
        .get_store()
        .get_contracts()
        .await
        .expect("contracts")
        .into_iter()
        .find(|c| c.get_temporary_id() == accept.temporary_contract_id)
        .expect("Bob's contract")
        .get_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_contract_gives_the_seed_messages() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 1).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let (offer, accept, sign) = signed(&alice, &bob, &input).await;
    bob.manager
        .on_dlc_message(&Message::Sign(sign.clone()), alice.id)
        .await
        .expect("signed and broadcast");

    let oracle = &net.oracle_fixture.oracle;
    let numeric = DigitDecompositionEventDescriptor {
        base: 2,
        is_signed: true,
        unit: "usd".to_owned(),
        precision: 0,
        nb_digits: 8,
    };
    let enum_announcement = oracle.announcement("coin").expect("announcement");
    let numeric_announcement = oracle
        .create_numeric_event("price", maturity, numeric)
        .expect("numeric event");
    net.clock.set(u64::from(maturity) + 60);
    let enum_attestation: OracleAttestation = oracle.attest_enum("coin", "tails").expect("attested");
    let numeric_attestation = oracle.attest_numeric("price", -97).expect("attested");

    let messages: [(&str, Kind, Vec<u8>); 7] = [
        ("offer", Kind::Message, Message::Offer(offer).encode()),
        ("accept", Kind::Message, Message::Accept(accept).encode()),
        ("sign", Kind::Message, Message::Sign(sign).encode()),
        ("announcement-enum", Kind::Announcement, enum_announcement.encode()),
        (
            "announcement-numeric",
            Kind::Announcement,
            numeric_announcement.encode(),
        ),
        ("attestation-enum", Kind::Attestation, enum_attestation.encode()),
        ("attestation-numeric", Kind::Attestation, numeric_attestation.encode()),
    ];
    for ((name, kind, bytes), (seed_name, seed_kind)) in messages.iter().zip(SEEDS) {
        assert_eq!((*name, *kind), (seed_name, seed_kind));
        assert_eq!(check(*kind, bytes), Outcome::Exact, "{name} re-encodes to itself");
        assert!(bytes.len() <= 4096, "{name}: {} bytes", bytes.len());
        harness::dlc_messages(bytes);
    }
    if std::env::var_os("ANYA_WRITE_DLC_SEEDS").is_some() {
        std::fs::create_dir_all(CORPUS).expect("corpus directory");
        for (name, _, bytes) in &messages {
            std::fs::write(Path::new(CORPUS).join(name), bytes).expect("seed written");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The same messages through anya's contract service
// ---------------------------------------------------------------------------------------------

type Received = Result<Option<Vec<u8>>, DlcError>;

/// `message`'s bytes from `from` to `party`'s service, a panic caught, and what it changed in
/// the store.
async fn hand(
    service: &DlcService,
    party: &Party,
    message: &Message,
    from: PublicKey,
) -> (Result<Received, String>, Vec<Change>) {
    hand_bytes(service, party, &contracts::encode_message(message), from).await
}

async fn hand_bytes(
    service: &DlcService,
    party: &Party,
    bytes: &[u8],
    from: PublicKey,
) -> (Result<Received, String>, Vec<Change>) {
    let before = mark(party);
    let received = catch_panic(service.receive(bytes, from)).await;
    (received, since(party, &before))
}

/// The service's error for `received`, which must not have panicked.
fn service_error(received: Result<Received, String>, what: &str) -> DlcError {
    match received {
        Ok(Err(e)) => e,
        Ok(Ok(reply)) => panic!("{what}: taken (reply {reply:?})"),
        Err(panic) => panic!("{what}: a panic left the service: {panic}"),
    }
}

/// Hands `bytes` to the service and requires an error and an unchanged store; returns the
/// error.
async fn refused_by_service(
    service: &DlcService,
    party: &Party,
    bytes: &[u8],
    from: PublicKey,
    what: &str,
) -> DlcError {
    let (received, changed) = hand_bytes(service, party, bytes, from).await;
    let err = service_error(received, what);
    assert_eq!(changed, [], "{what}: refused ({err}) but the store changed");
    err
}

/// The service error's variant, with the manager's error's variant inside `Manager`.
fn service_variant(e: &DlcError) -> String {
    match e {
        DlcError::Wire(_) => "Wire".to_owned(),
        DlcError::Manager(m) => format!("Manager({})", variant(m)),
        DlcError::NotFound(_) => "NotFound".to_owned(),
        DlcError::Store(_) => "Store".to_owned(),
        DlcError::Chain(_) => "Chain".to_owned(),
        DlcError::Disjoint => "Disjoint".to_owned(),
        DlcError::Refused(_) => "Refused".to_owned(),
        DlcError::Panicked(_) => "Panicked".to_owned(),
        _ => format!("another variant: {e:?}"),
    }
}

/// `changes` with the records outside the contracts and the audit chain shown as `present`
/// (their versions depend on every write before them).
fn unversioned(changes: &[Change]) -> Vec<Change> {
    let present = |v: &Option<String>| v.as_ref().map(|_| "present".to_owned());
    changes
        .iter()
        .map(|c| match c.ns.as_str() {
            DLC_NAMESPACE | "anya.hsm.audit" => c.clone(),
            _ => Change {
                before: present(&c.before),
                after: present(&c.after),
                ..c.clone()
            },
        })
        .collect()
}

/// The [`unversioned`] changes of `party`'s wallet releasing `coins`.
fn released(party: &Party, coins: &[OutPoint]) -> Vec<Change> {
    coins
        .iter()
        .map(|c| Change {
            ns: format!("anya/wallet/{}/reserved", party.name),
            key: show_key(&serialize(c)),
            before: Some("present".to_owned()),
            after: None,
        })
        .collect()
}

/// The coins `inputs` spend.
fn coins_of(inputs: &[FundingInput]) -> Vec<OutPoint> {
    inputs
        .iter()
        .map(|i| {
            let prev: Transaction = bitcoin::consensus::deserialize(&i.prev_tx).expect("a funding input's transaction");
            OutPoint::new(prev.compute_txid(), i.prev_tx_vout)
        })
        .collect()
}

fn reserved(party: &Party) -> Vec<OutPoint> {
    party.wallet.lock().unwrap().reserved().expect("reserved")
}

fn decoded(bytes: &[u8]) -> Message {
    contracts::decode_message(bytes).expect("the service's message decodes")
}

/// Alice's service offers `input` to Bob: the offer, decoded.
async fn service_offer(alice: &DlcService, bob: &Party, input: &ContractInput) -> OfferDlc {
    let (_, bytes) = alice.offer(input, bob.id).await.expect("offer");
    match decoded(&bytes) {
        Message::Offer(o) => o,
        other => panic!("an offer: {other:?}"),
    }
}

/// ... which Bob's service takes in and accepts: Bob's contract id and the accept.
async fn service_accepted(
    (alice, alice_service): (&Party, &DlcService),
    (bob, bob_service): (&Party, &DlcService),
    input: &ContractInput,
) -> (OfferDlc, [u8; 32], AcceptDlc) {
    let offer = service_offer(alice_service, bob, input).await;
    let reply = bob_service
        .receive(&contracts::encode_message(&Message::Offer(offer.clone())), alice.id)
        .await
        .expect("offer received");
    assert_eq!(reply, None);
    let (id, bytes) = bob_service
        .accept(&offer.temporary_contract_id)
        .await
        .expect("accepted");
    let Message::Accept(accept) = decoded(&bytes) else {
        panic!("an accept")
    };
    (offer, id, accept)
}

/// ... and Alice's service answers the accept: the sign message.
async fn service_signed(
    alice: (&Party, &DlcService),
    bob: (&Party, &DlcService),
    input: &ContractInput,
) -> (OfferDlc, [u8; 32], AcceptDlc, SignDlc) {
    let (offer, id, accept) = service_accepted(alice, bob, input).await;
    let reply = alice
        .1
        .receive(&contracts::encode_message(&Message::Accept(accept.clone())), bob.0.id)
        .await
        .expect("accept received")
        .expect("a sign message");
    let Message::Sign(sign) = decoded(&reply) else {
        panic!("a sign message")
    };
    (offer, id, accept, sign)
}

/// Whether the node's mempool holds `txid`.
fn in_mempool(net: &Net, txid: &bitcoin::Txid) -> bool {
    net.chain.mempool_fee(txid).expect("rpc").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_hostile_offers_and_changes_nothing() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 2).await;
    let (alice_service, _) = alice.service(&net).await.expect("Alice's service");
    let (bob_service, resumed) = bob.service(&net).await.expect("Bob's service");
    assert!(resumed.failed.is_empty() && resumed.messages.is_empty(), "{resumed:?}");
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let offer = service_offer(&alice_service, &bob, &input).await;

    // The offer is taken; the same offer again is refused before the manager, from Alice or
    // anyone.
    let (received, changed) = hand(&bob_service, &bob, &Message::Offer(offer.clone()), alice.id).await;
    assert!(matches!(received, Ok(Ok(None))), "{received:?}");
    assert_one_new_offer(&changed);
    for (from, what) in [
        (alice.id, "the same offer again"),
        (stranger(), "the same offer from another peer"),
    ] {
        let err = refused_by_service(&bob_service, &bob, &Message::Offer(offer.clone()).encode(), from, what).await;
        assert_eq!(service_variant(&err), "Refused", "{what}: {err:?}");
    }
    // Bob accepts it: his coin is reserved for a live contract, which no refusal below may
    // release, and the offer is still refused once its record has the contract id.
    let (contract_id, _) = bob_service
        .accept(&offer.temporary_contract_id)
        .await
        .expect("accepted");
    assert!(matches!(bob.contract(&contract_id).await, Contract::Accepted(_)));
    assert!(!reserved(&bob).is_empty());
    let err = refused_by_service(
        &bob_service,
        &bob,
        &Message::Offer(offer.clone()).encode(),
        alice.id,
        "the offer again once accepted",
    )
    .await;
    assert_eq!(service_variant(&err), "Refused", "{err:?}");

    let fresh = |change: &dyn Fn(&mut OfferDlc)| {
        offer_with(&offer, |o| {
            o.temporary_contract_id = random_id();
            change(o);
        })
    };
    let other_oracle = OracleSide::new(&net.clock);
    let foreign = other_oracle
        .oracle
        .create_enum_event("coin", maturity, vec!["heads".to_owned(), "tails".to_owned()])
        .expect("event");
    let digits = DigitDecompositionEventDescriptor {
        base: 2,
        is_signed: false,
        unit: "usd".to_owned(),
        precision: 0,
        nb_digits: 8,
    };
    let numeric = net
        .oracle_fixture
        .oracle
        .create_numeric_event("price", maturity, digits)
        .expect("numeric event");
    let total = offer.get_total_collateral();
    let wrong_key = secp256k1::Keypair::new(&Secp256k1::new(), &mut rand::thread_rng())
        .x_only_public_key()
        .0;
    let cases: Vec<(&str, &str, Message)> = vec![
        // What ddk-manager 1.1.2 panics on or takes (`offers_the_manager_takes_or_panics_on`):
        // refused before it.
        (
            "payouts above the total collateral (and an offer collateral above it)",
            "Refused",
            fresh(&|o| set_total(o, Amount::from_sat(1))),
        ),
        (
            "a payout above the total collateral",
            "Refused",
            fresh(&|o| set_total(o, btc(1.5))),
        ),
        (
            "funding inputs worth more than u64::MAX",
            "Refused",
            fresh(&|o| o.funding_inputs = overflowing_inputs(1)),
        ),
        (
            "a multi-oracle info with no announcement",
            "Refused",
            fresh(&|o| {
                inner(o).oracle_info = OracleInfo::Multi(MultiOracleInfo {
                    threshold: 1,
                    oracle_announcements: Vec::new(),
                    oracle_params: None,
                })
            }),
        ),
        (
            "an offer collateral above the total collateral",
            "Refused",
            fresh(&|o| o.offer_collateral = total + Amount::from_sat(1)),
        ),
        ("a fee rate of 0", "Refused", fresh(&|o| o.fee_rate_per_vb = 0)),
        (
            "an announcement of an oracle this party does not use",
            "Refused",
            fresh(&|o| *announcement(o) = foreign.clone()),
        ),
        (
            "another oracle key than the one that signed the announcement",
            "Refused",
            fresh(&|o| announcement(o).oracle_public_key = wrong_key),
        ),
        (
            "a funding input whose previous transaction has no such output",
            "Refused",
            fresh(&|o| o.funding_inputs[0].prev_tx_vout = 7),
        ),
        (
            "a funding input whose previous transaction does not decode",
            "Refused",
            fresh(&|o| o.funding_inputs[0].prev_tx.truncate(10)),
        ),
        (
            "two contract infos (a disjoint contract)",
            "Disjoint",
            fresh(&|o| {
                let info = inner(o).clone();
                o.contract_info = ContractInfo::DisjointContractInfo(DisjointContractInfo {
                    total_collateral: total,
                    contract_infos: vec![info.clone(), info],
                })
            }),
        ),
        // What the manager refuses itself.
        (
            "no outcomes",
            "Manager(InvalidParameters)",
            fresh(&|o| payouts(o).clear()),
        ),
        (
            "an outcome the oracle does not announce",
            "Manager(InvalidParameters)",
            fresh(&|o| payouts(o)[0].outcome = "edge".to_owned()),
        ),
        (
            "a refund locktime before maturity",
            "Manager(DlcError)",
            fresh(&|o| o.refund_locktime = maturity - 1),
        ),
        (
            "a fee rate above the limit (6250 sat/vB)",
            "Manager(InvalidParameters)",
            fresh(&|o| o.fee_rate_per_vb = 6251),
        ),
        // A numeric offer on this party's oracle whose payout function has no piece panics in
        // ddk-manager's `PayoutFunction::validate` ("to have at least one piece"); the service
        // refuses it before the manager sees it.
        (
            "a numeric payout function without pieces",
            "Refused",
            fresh(&|o| {
                *announcement(o) = numeric.clone();
                inner(o).contract_descriptor =
                    SerDescriptor::NumericOutcomeContractDescriptor(NumericOutcomeContractDescriptor {
                        num_digits: 8,
                        payout_function: PayoutFunction {
                            payout_function_pieces: Vec::new(),
                            last_endpoint: PayoutPoint {
                                event_outcome: 255,
                                outcome_payout: total,
                                extra_precision: 0,
                            },
                        },
                        rounding_intervals: RoundingIntervals {
                            intervals: vec![RoundingInterval {
                                begin_interval: 0,
                                rounding_mod: 1,
                            }],
                        },
                    });
            }),
        ),
    ];
    for (what, expected, message) in &cases {
        let err = refused_by_service(&bob_service, &bob, &message.encode(), alice.id, what).await;
        assert_eq!(service_variant(&err), *expected, "{what}: {err:?}");
        if let DlcError::Panicked(panic) = &err {
            assert!(panic.contains("at least one piece"), "{what}: {panic}");
        }
    }

    // Bytes that are not one canonical contract message.
    let bytes = Message::Offer(offer.clone()).encode();
    let legacy = [&bytes[..2], &bytes[6..]].concat();
    let mut close = bytes.clone();
    close[..2].copy_from_slice(&types::CLOSE_TYPE.to_be_bytes());
    let byte_cases: [(&str, Vec<u8>); 5] = [
        ("no bytes", Vec::new()),
        ("the offer without its protocol version", legacy),
        ("a close message's type", close),
        ("a truncated offer", bytes[..bytes.len() - 1].to_vec()),
        ("a byte after the offer", [&bytes[..], &[0]].concat()),
    ];
    for (what, b) in &byte_cases {
        let err = refused_by_service(&bob_service, &bob, b, alice.id, what).await;
        assert_eq!(service_variant(&err), "Wire", "{what}: {err:?}");
    }

    // After all of them (a panic among them), a new offer is still taken and accepted.
    let second = service_offer(&alice_service, &bob, &input).await;
    let (received, changed) = hand(&bob_service, &bob, &Message::Offer(second.clone()), alice.id).await;
    assert!(matches!(received, Ok(Ok(None))), "{received:?}");
    assert_one_new_offer(&changed);
    let (second_id, _) = bob_service
        .accept(&second.temporary_contract_id)
        .await
        .expect("the second offer accepted");
    assert!(matches!(bob.contract(&second_id).await, Contract::Accepted(_)));
    bob.hsm.verify_audit_chain().expect("audit chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_hostile_accepts_and_releases_their_coins() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 3).await;
    let (alice_service, _) = alice.service(&net).await.expect("Alice's service");
    let (bob_service, _) = bob.service(&net).await.expect("Bob's service");
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let a = (&alice, &alice_service);
    let b = (&bob, &bob_service);

    let (_, contract_id, accept) = service_accepted(a, b, &input).await;
    // Funding inputs that overflow are refused before the manager (which panics on them).
    let overflowing = AcceptDlc {
        funding_inputs: overflowing_inputs(1),
        ..accept.clone()
    };
    let err = refused_by_service(
        &alice_service,
        &alice,
        &Message::Accept(overflowing).encode(),
        bob.id,
        "funding inputs worth more than u64::MAX",
    )
    .await;
    assert_eq!(service_variant(&err), "Refused", "{err:?}");
    // One CET adaptor signature short (ddk-manager indexes past the end of the list) or one
    // too many: refused before the manager, nothing changed.
    for (what, change) in [
        ("one adaptor signature short", false),
        ("one adaptor signature extra", true),
    ] {
        let mut miscounted = accept.clone();
        let sigs = &mut miscounted.cet_adaptor_signatures.ecdsa_adaptor_signatures;
        if change {
            sigs.push(sigs[0].clone());
        } else {
            sigs.pop();
        }
        let err = refused_by_service(
            &alice_service,
            &alice,
            &Message::Accept(miscounted).encode(),
            bob.id,
            what,
        )
        .await;
        assert_eq!(service_variant(&err), "Refused", "{what}: {err:?}");
        assert!(err.to_string().contains("adaptor points"), "{what}: {err}");
    }
    // The manager's own refusals stay refusals, with nothing changed.
    let unknown = AcceptDlc {
        temporary_contract_id: random_id(),
        ..accept.clone()
    };
    let err = refused_by_service(
        &alice_service,
        &alice,
        &Message::Accept(unknown).encode(),
        bob.id,
        "an accept for an unknown contract",
    )
    .await;
    assert_eq!(service_variant(&err), "Manager(InvalidParameters)", "{err:?}");
    let err = refused_by_service(
        &alice_service,
        &alice,
        &Message::Accept(accept.clone()).encode(),
        stranger(),
        "an accept from another peer",
    )
    .await;
    assert_eq!(service_variant(&err), "Manager(InvalidParameters)", "{err:?}");

    // The real accept is taken, and the sign message it gives makes Bob broadcast.
    let (received, _) = hand(&alice_service, &alice, &Message::Accept(accept.clone()), bob.id).await;
    let Ok(Ok(Some(sign))) = received else {
        panic!("a sign message: {received:?}")
    };
    let (received, _) = hand_bytes(&bob_service, &bob, &sign, alice.id).await;
    assert!(matches!(received, Ok(Ok(None))), "{received:?}");
    let Contract::Signed(signed) = bob.contract(&contract_id).await else {
        panic!("signed")
    };
    assert!(in_mempool(
        &net,
        &signed.accepted_contract.dlc_transactions.fund.compute_txid()
    ));

    // A second contract: one flipped bit in a CET adaptor signature. The manager stores it as
    // FailedAccept; the service then releases the coin Alice's offer reserved.
    let (offer2, _, accept2) = service_accepted(a, b, &input).await;
    let coins = coins_of(&offer2.funding_inputs);
    assert!(
        coins.iter().all(|c| reserved(&alice).contains(c)),
        "reserved for the offer"
    );
    let (received, changed) = hand(
        &alice_service,
        &alice,
        &Message::Accept(bad_adaptor_signature(&accept2)),
        bob.id,
    )
    .await;
    let err = service_error(received, "a bad adaptor signature");
    assert_eq!(service_variant(&err), "Manager(DlcError)", "{err:?}");
    let mut expected = vec![Change {
        ns: DLC_NAMESPACE.to_owned(),
        key: contract_key(&offer2.temporary_contract_id),
        before: Some("Offered".to_owned()),
        after: Some("FailedAccept".to_owned()),
    }];
    expected.extend(released(&alice, &coins));
    expected.push(audited_ops("PublicKey"));
    assert_eq!(unversioned(&changed), expected, "{err}");
    let now_reserved = reserved(&alice);
    assert!(coins.iter().all(|c| !now_reserved.contains(c)), "{now_reserved:?}");
    // The good accept can no longer be taken, and nothing changes.
    let err = refused_by_service(
        &alice_service,
        &alice,
        &Message::Accept(accept2).encode(),
        bob.id,
        "the good accept after a bad one",
    )
    .await;
    assert_eq!(service_variant(&err), "Manager(InvalidState)", "{err:?}");
    alice.hsm.verify_audit_chain().expect("audit chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_hostile_sign_messages_before_signing() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 3).await;
    let (alice_service, _) = alice.service(&net).await.expect("Alice's service");
    let (bob_service, _) = bob.service(&net).await.expect("Bob's service");
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let a = (&alice, &alice_service);
    let b = (&bob, &bob_service);

    // A bad refund signature: the manager stores the contract as FailedSign; the service then
    // releases Bob's funding coin.
    let (_, contract1, accept1, sign1) = service_signed(a, b, &input).await;
    // First: a sign message one CET adaptor signature short, refused before the manager.
    let mut short = sign1.clone();
    short.cet_adaptor_signatures.ecdsa_adaptor_signatures.pop();
    let what = "a sign message one adaptor signature short";
    let err = refused_by_service(&bob_service, &bob, &Message::Sign(short).encode(), alice.id, what).await;
    assert_eq!(service_variant(&err), "Refused", "{err:?}");
    let coins = coins_of(&accept1.funding_inputs);
    assert!(
        coins.iter().all(|c| reserved(&bob).contains(c)),
        "reserved for the accept"
    );
    let bad_refund = SignDlc {
        refund_signature: flip_ecdsa(&sign1.refund_signature),
        ..sign1.clone()
    };
    let (received, changed) = hand(&bob_service, &bob, &Message::Sign(bad_refund), alice.id).await;
    let err = service_error(received, "a bad refund signature");
    assert_eq!(service_variant(&err), "Manager(DlcError)", "{err:?}");
    let mut expected = vec![Change {
        ns: DLC_NAMESPACE.to_owned(),
        key: contract_key(&contract1),
        before: Some("Accepted".to_owned()),
        after: Some("FailedSign".to_owned()),
    }];
    expected.extend(released(&bob, &coins));
    assert_eq!(unversioned(&changed), expected, "{err}");
    let now_reserved = reserved(&bob);
    assert!(coins.iter().all(|c| !now_reserved.contains(c)), "{now_reserved:?}");

    // A bad funding witness for Alice's input: refused before the manager, so the policy is
    // not asked, the HSM signs nothing, and the contract stays Accepted.
    let (_, contract2, _, sign2) = service_signed(a, b, &input).await;
    let mut bad_funding = sign2.clone();
    let witness = &mut bad_funding.funding_signatures.funding_signatures[0].witness_elements[0].witness;
    let last = witness.len() - 2; // the DER signature's last byte, before the sighash flag
    witness[last] ^= 0x01;
    let audit_before = mark(&bob).audit_seq;
    let err = refused_by_service(
        &bob_service,
        &bob,
        &Message::Sign(bad_funding).encode(),
        alice.id,
        "a bad funding witness",
    )
    .await;
    assert_eq!(service_variant(&err), "Refused", "{err:?}");
    assert!(matches!(bob.contract(&contract2).await, Contract::Accepted(_)));
    let audited = bob.hsm.audit_records(audit_before, 1_000_000).expect("audit records");
    assert!(
        audited
            .iter()
            .all(|r| !format!("{:?}", r.operation).contains("SignEcdsa")),
        "{audited:?}"
    );
    // The manager's own refusals stay refusals, with nothing changed.
    let err = refused_by_service(
        &bob_service,
        &bob,
        &Message::Sign(sign2.clone()).encode(),
        stranger(),
        "a sign message from another peer",
    )
    .await;
    assert_eq!(service_variant(&err), "Manager(InvalidParameters)", "{err:?}");
    let unknown = SignDlc {
        contract_id: random_id(),
        ..sign2.clone()
    };
    let err = refused_by_service(
        &bob_service,
        &bob,
        &Message::Sign(unknown).encode(),
        alice.id,
        "a sign message for an unknown contract",
    )
    .await;
    assert_eq!(service_variant(&err), "Manager(InvalidParameters)", "{err:?}");

    // The genuine sign message after the bad one: signed, and the funding reaches the node.
    let (received, changed) = hand(&bob_service, &bob, &Message::Sign(sign2.clone()), alice.id).await;
    assert!(matches!(received, Ok(Ok(None))), "{received:?}");
    assert!(
        changed
            .iter()
            .any(|c| c.key == contract_key(&contract2) && c.after.as_deref() == Some("Signed")),
        "{changed:?}"
    );
    let Contract::Signed(signed) = bob.contract(&contract2).await else {
        panic!("signed")
    };
    assert!(in_mempool(
        &net,
        &signed.accepted_contract.dlc_transactions.fund.compute_txid()
    ));
    // And again: the contract has left Accepted.
    let err = refused_by_service(
        &bob_service,
        &bob,
        &Message::Sign(sign2).encode(),
        alice.id,
        "the sign message again",
    )
    .await;
    assert_eq!(service_variant(&err), "Manager(InvalidState)", "{err:?}");
    bob.hsm.verify_audit_chain().expect("audit chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_opens_over_contracts_it_cannot_resume() {
    let Some(net) = net() else { return };
    let (alice, bob) = funded_parties(&net, 3).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    // Through the bare manager, as `sign_messages_with_a_bad_field_are_refused` does: one
    // contract FailedSign (its coin still reserved), one Signed on a funding transaction with
    // a bad witness of Alice's, which the node refused.
    let (_, accept1, sign1) = signed(&alice, &bob, &input).await;
    let contract1 = bob_contract_id(&bob, &accept1).await;
    let bad_refund = SignDlc {
        refund_signature: flip_ecdsa(&sign1.refund_signature),
        ..sign1
    };
    let (handled, _) = deliver(&bob, &Message::Sign(bad_refund), alice.id).await;
    assert!(matches!(handled, Ok(Err(_))), "{handled:?}");
    assert!(matches!(bob.contract(&contract1).await, Contract::FailedSign(_)));
    let (_, accept2, sign2) = signed(&alice, &bob, &input).await;
    let contract2 = bob_contract_id(&bob, &accept2).await;
    let mut bad_funding = sign2;
    let witness = &mut bad_funding.funding_signatures.funding_signatures[0].witness_elements[0].witness;
    let last = witness.len() - 2;
    witness[last] ^= 0x01;
    let (handled, _) = deliver(&bob, &Message::Sign(bad_funding), alice.id).await;
    assert!(
        matches!(&handled, Ok(Err(e)) if variant(e) == "BlockchainError"),
        "{handled:?}"
    );
    let Contract::Signed(stored) = bob.contract(&contract2).await else {
        panic!("signed")
    };
    let fund = stored.accepted_contract.dlc_transactions.fund.compute_txid();
    let failed_coins = coins_of(&accept1.funding_inputs);
    assert!(failed_coins.iter().all(|c| reserved(&bob).contains(c)));

    // The service opens: the failed contract's coin is released, the one it cannot resume is
    // reported, and nothing panics.
    let before = mark(&bob);
    let opened = catch_panic(bob.service(&net)).await.expect("opening does not panic");
    let (service, resumed) = opened.expect("the service opens");
    let changed = unversioned(&since(&bob, &before));
    assert_eq!(resumed.broadcast, []);
    assert!(
        matches!(resumed.failed.as_slice(), [Pending::Failed { contract, .. }] if *contract == contract2),
        "{resumed:?}"
    );
    assert_eq!(resumed.released, failed_coins, "{resumed:?}");
    assert!(matches!(bob.contract(&contract2).await, Contract::Signed(_)));
    assert_eq!(net.chain.confirmations(&fund).expect("rpc"), None);
    // `resume` checks Alice's witness before completing the funding transaction (as `receive`
    // does before the manager signs): no policy approval, no HSM signature, no broadcast. The
    // contract stays Signed and, as a live contract, keeps Bob's coin reserved; nothing else
    // changes and no contract record is written.
    let expected = released(&bob, &failed_coins);
    assert_eq!(changed, expected);
    assert!(coins_of(&accept2.funding_inputs)
        .iter()
        .all(|c| reserved(&bob).contains(c)));
    // The service works: it lists both contracts in their states.
    let states: BTreeMap<String, &str> = service
        .contracts()
        .await
        .expect("contracts")
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect();
    let hex = |id: &[u8; 32]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(states.get(&hex(&contract1)), Some(&"failed-sign"), "{states:?}");
    assert_eq!(states.get(&hex(&contract2)), Some(&"signed"), "{states:?}");
    bob.hsm.verify_audit_chain().expect("audit chain");
}
