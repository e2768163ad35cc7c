//! The hash-chained audit log kept in a [`KvStore`].
//!
//! Each record commits to the hash of the record before it; a head record names the last
//! sequence number and hash. An append is one atomic batch that checks the head's version,
//! writes the new records and moves the head, so two writers (threads, handles or processes)
//! can never fork the chain: the loser re-reads the head and chains after the winner.
//!
//! A record holds the time, the operation, the key id, the actor, the outcome code and the
//! SHA-256 of the operation's input (the message or digest signed, the ciphertext produced or
//! opened) — never a secret, a plaintext or a full message.
//!
//! The chain detects edits, deletions, insertions and reordering by anyone who cannot rewrite
//! every later record and the head. Against someone who can write the store but does not know
//! the keystore's secret, the head is also keyed: while the keystore is unlocked, every head
//! written carries an HMAC-SHA256, under a key derived from the key-encryption key, of the
//! position it names, so a chain cut short or rewritten with its hashes recomputed no longer
//! matches a MAC its writer could make ([`AuditSummary::authenticated`]). Records appended
//! while the keystore is locked (a failed unlock) are chained but keyed only by the next head
//! written unlocked.
//!
//! What no store can detect by itself is being replaced by an older copy of itself (a restored
//! backup): every record, hash and MAC agree. A [rollback anchor](crate::anchor) kept
//! elsewhere is moved forward after every append and catches that.

#![cfg_attr(
    not(any(feature = "software", feature = "pkcs11")),
    allow(
        dead_code,
        reason = "the audit writer and key encodings serve the providers; without one only the public types remain"
    )
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use anya_core_types::{Clock, Label, UnixTime};
use anya_storage::{KvStore, Namespace, Scan, Version, WriteBatch};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use ring::hmac;

use crate::anchor::{AnchorPoint, RollbackAnchor};
use crate::{HsmError, KeyId};

const HEAD_KEY: &[u8] = b"audit-head";
const RECORD_FORMAT: u8 = 1;
/// A record that also carries a subject digest (the nonce or key entry it concerns).
const RECORD_FORMAT_SUBJECT: u8 = 2;
/// A head that also names its last keyed position and that position's MAC.
const HEAD_FORMAT_KEYED: u8 = 2;
const HEAD_MAC_DOMAIN: &[u8] = b"anya-hsm/audit-head/v1";
const HASH_DOMAIN: &[u8] = b"anya-hsm/audit/v1";
const MAX_APPEND_RETRIES: usize = 64;
const VERIFY_PAGE: usize = 1024;
/// The longest encoded record: format, seq, prev hash, time, operation, outcome, two labels of
/// up to 64 bytes with their lengths, and an input hash with its flag.
const MAX_RECORD_LEN: usize = 1 + 8 + 32 + 8 + 4 + 1 + 2 + 65 + 65 + 33 + 32;
/// Most pending events a buffered log allocates room for up front.
const MAX_PREALLOCATED: usize = 4096;

/// The operation an audit record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs, reason = "each variant is the provider method of the same name")]
pub enum Operation {
    Create,
    Unlock,
    Lock,
    GenerateKey,
    GenerateMnemonic,
    ImportKey,
    ExportKey,
    KeyInfo,
    ListKeys,
    DeleteKey,
    PublicKey,
    SignEcdsa,
    SignSchnorr,
    SignTaprootKeySpend,
    SignEd25519,
    Encrypt,
    Decrypt,
    AccountXpub,
    CommitNonce,
    SignWithNonce,
    /// A decision taken outside the provider about a use of a key (for example a spending
    /// policy approving or refusing a transaction before it is signed); see
    /// [`HsmProvider::record_decision`](crate::HsmProvider::record_decision).
    Decision,
    SignP256,
    AcceptRollback,
    /// [`HsmProvider::export_scoped_child`](crate::HsmProvider::export_scoped_child): the key is
    /// the root, the input hash names the child (see the method).
    ExportScopedChild,
    /// [`HsmProvider::derive_node_seed`](crate::HsmProvider::derive_node_seed): the key is the
    /// root, the input hash names the BIP85 path (see the method).
    DeriveNodeSeed,
}

impl Operation {
    const ALL: [Operation; 25] = [
        Operation::Create,
        Operation::Unlock,
        Operation::Lock,
        Operation::GenerateKey,
        Operation::GenerateMnemonic,
        Operation::ImportKey,
        Operation::ExportKey,
        Operation::KeyInfo,
        Operation::ListKeys,
        Operation::DeleteKey,
        Operation::PublicKey,
        Operation::SignEcdsa,
        Operation::SignSchnorr,
        Operation::SignTaprootKeySpend,
        Operation::SignEd25519,
        Operation::Encrypt,
        Operation::Decrypt,
        Operation::AccountXpub,
        Operation::CommitNonce,
        Operation::SignWithNonce,
        Operation::Decision,
        Operation::SignP256,
        Operation::AcceptRollback,
        Operation::ExportScopedChild,
        Operation::DeriveNodeSeed,
    ];

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// When an audit record becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditMode {
    /// Every operation's record is durably in the store before the operation returns; if the
    /// append fails, the operation fails and its result (a signature, a plaintext) is withheld.
    /// Costs one durable store write per operation; operations running concurrently on one
    /// handle share a write (and its `fsync`): each queues its record, and the next writer
    /// writes every queued record in one batch.
    Durable,
    /// Records are queued in memory (a small fixed-size value per operation, no store access
    /// on the calling thread) and a background thread writes them in one batch once
    /// `max_pending / 2` are queued; [`flush_audit`](crate::HsmProvider::flush_audit), lock and
    /// drop write the rest and wait for it. An operation returns before its record is durable:
    /// a crash loses the records not yet written, never more than `max_pending` (an operation
    /// that would make it more writes in the foreground first) and never a partial chain.
    /// A failed background write is retried by the next foreground write, which reports it.
    Buffered {
        /// Records held before a flush is forced (at least 1).
        max_pending: usize,
    },
}

/// Why the audit chain failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditBreak {
    /// A sequence number is missing (a record was deleted).
    Gap,
    /// A record's stored sequence number differs from its position (records were moved).
    SequenceMismatch,
    /// A record does not commit to the hash of the record before it (one was edited, inserted
    /// or reordered).
    PrevHashMismatch,
    /// A record cannot be decoded.
    Undecodable,
    /// The head names another last record or hash than the chain ends with (the tail was
    /// edited, deleted or extended).
    HeadMismatch,
    /// Records exist but the head is missing, or the head is undecodable.
    BadHead,
    /// The head's MAC does not match the position it names: someone without the keystore's
    /// secret wrote it.
    BadMac,
    /// The head's keyed position is past the end of the chain: records were cut off.
    Truncated,
    /// The chain at the head's keyed position is not the chain the MAC was made for: records
    /// up to it were rewritten.
    Rewritten,
    /// The keystore is unlocked and records exist, but the head carries no MAC (it was
    /// replaced by an unkeyed one).
    Unauthenticated,
}

/// One record of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Hash of the previous record (all zero for the first).
    pub prev_hash: [u8; 32],
    /// When the operation ran, from the provider's [`Clock`].
    pub time: UnixTime,
    /// What ran.
    pub operation: Operation,
    /// The key it concerned, if any.
    pub key_id: Option<KeyId>,
    /// Who asked.
    pub actor: Label,
    /// SHA-256 of the operation's input, if it had one.
    pub input_hash: Option<[u8; 32]>,
    /// 0 for success, else [`HsmError::audit_code`].
    pub outcome: u16,
    /// What the operation changed, for the operations whose effect the keystore must be able
    /// to prove later: the nonce's digest ([`nonce_digest`](crate::anchor::nonce_digest)) for
    /// `CommitNonce` and `SignWithNonce`, the SHA-256 of the sealed entry written for
    /// `GenerateKey`, `GenerateMnemonic` and `ImportKey`, and [`DELETED`] for `DeleteKey`.
    pub subject: Option<[u8; 32]>,
}

/// The subject of a `DeleteKey` record: the id is tombstoned.
pub const DELETED: [u8; 32] = [0xff; 32];

/// The result of a successful [`verify_audit_chain`](crate::HsmProvider::verify_audit_chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSummary {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record (all zero for an empty chain).
    pub head: [u8; 32],
    /// How many records, from the first, the head's MAC vouches for (checked with the
    /// keystore's key). 0 when the provider keeps no keyed head or is locked; below
    /// `records` when the last records were appended while it was locked.
    pub authenticated: u64,
}

impl AuditRecord {
    fn encode(&self) -> Vec<u8> {
        encode_record(
            self.seq,
            &self.prev_hash,
            self.time,
            self.operation,
            self.outcome,
            self.key_id.as_ref().map(Label::as_str),
            self.actor.as_str(),
            self.input_hash.as_ref(),
            self.subject.as_ref(),
        )
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let format = r.u8()?;
        if format != RECORD_FORMAT && format != RECORD_FORMAT_SUBJECT {
            return None;
        }
        let seq = u64::from_be_bytes(r.array()?);
        let prev_hash = r.array()?;
        let secs = u64::from_be_bytes(r.array()?);
        let nanos = u32::from_be_bytes(r.array()?);
        if nanos >= 1_000_000_000 {
            return None;
        }
        let operation = Operation::from_code(r.u8()?)?;
        let outcome = u16::from_be_bytes(r.array()?);
        let key_id = r.label()?;
        let actor = r.label()??;
        let input_hash = match r.u8()? {
            0 => None,
            1 => Some(r.array()?),
            _ => return None,
        };
        let subject = match format {
            RECORD_FORMAT_SUBJECT => Some(r.array()?),
            _ => None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(Self {
            seq,
            prev_hash,
            time: UnixTime::from_duration(std::time::Duration::new(secs, nanos)),
            operation,
            key_id,
            actor,
            input_hash,
            outcome,
            subject,
        })
    }

    /// The hash the next record commits to.
    pub fn hash(&self) -> [u8; 32] {
        hash_encoded(&self.encode())
    }
}

/// The stored bytes of one record: format 1, or 2 when it has a subject.
#[allow(
    clippy::too_many_arguments,
    reason = "the fields of one record, in their stored order"
)]
fn encode_record(
    seq: u64,
    prev_hash: &[u8; 32],
    time: UnixTime,
    operation: Operation,
    outcome: u16,
    key_id: Option<&str>,
    actor: &str,
    input_hash: Option<&[u8; 32]>,
    subject: Option<&[u8; 32]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_RECORD_LEN);
    out.push(if subject.is_some() {
        RECORD_FORMAT_SUBJECT
    } else {
        RECORD_FORMAT
    });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(prev_hash);
    let d = time.as_duration();
    out.extend_from_slice(&d.as_secs().to_be_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_be_bytes());
    out.push(operation.code());
    out.extend_from_slice(&outcome.to_be_bytes());
    push_label(&mut out, key_id);
    push_label(&mut out, Some(actor));
    match input_hash {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(h);
        }
        None => out.push(0),
    }
    if let Some(subject) = subject {
        out.extend_from_slice(subject);
    }
    out
}

fn hash_encoded(encoded: &[u8]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(HASH_DOMAIN);
    engine.input(encoded);
    sha256::Hash::from_engine(engine).to_byte_array()
}

fn push_label(out: &mut Vec<u8>, label: Option<&str>) {
    match label {
        Some(s) => {
            // Labels are at most 64 bytes, so the length fits a byte.
            out.push(u8::try_from(s.len()).expect("labels are at most 64 bytes"));
            out.extend_from_slice(s.as_bytes());
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.0.len() < N {
            return None;
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().ok()
    }

    /// `None`: undecodable; `Some(None)`: absent label.
    fn label(&mut self) -> Option<Option<Label>> {
        let len = usize::from(self.u8()?);
        if len == 0 {
            return Some(None);
        }
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        let s = std::str::from_utf8(head).ok()?;
        Some(Some(Label::new(s).ok()?))
    }
}

/// A key id copied without allocating (labels are at most 64 bytes), so that recording an
/// operation on the signing path does not touch the heap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InlineLabel {
    len: u8,
    bytes: [u8; 64],
}

impl InlineLabel {
    pub(crate) fn new(label: &Label) -> Self {
        let s = label.as_str().as_bytes();
        let mut bytes = [0u8; 64];
        bytes[..s.len()].copy_from_slice(s);
        Self {
            len: u8::try_from(s.len()).expect("labels are at most 64 bytes"),
            bytes,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("copied from a valid label")
    }
}

/// One operation to record: a small fixed-size value (no heap) that is chained — given a
/// sequence number and the previous hash, encoded and hashed — only when it is written.
#[derive(Debug)]
pub(crate) struct AuditEvent {
    pub(crate) time: UnixTime,
    pub(crate) operation: Operation,
    pub(crate) key_id: Option<InlineLabel>,
    pub(crate) actor: Arc<Label>,
    pub(crate) input_hash: Option<[u8; 32]>,
    pub(crate) outcome: u16,
    pub(crate) subject: Option<[u8; 32]>,
}

impl AuditEvent {
    /// The stored bytes of this event as record `seq` after `prev_hash`.
    fn encode(&self, seq: u64, prev_hash: &[u8; 32]) -> Vec<u8> {
        encode_record(
            seq,
            prev_hash,
            self.time,
            self.operation,
            self.outcome,
            self.key_id.as_ref().map(InlineLabel::as_str),
            self.actor.as_str(),
            self.input_hash.as_ref(),
            self.subject.as_ref(),
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Head {
    seq: u64,
    hash: [u8; 32],
    version: Option<Version>,
    keyed: Option<Keyed>,
}

/// The last position a head was written with the key, and its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keyed {
    seq: u64,
    hash: [u8; 32],
    mac: [u8; 32],
}

fn head_mac(key: &hmac::Key, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(HEAD_MAC_DOMAIN);
    ctx.update(&seq.to_be_bytes());
    ctx.update(hash);
    ctx.sign().as_ref().try_into().expect("HMAC-SHA256 tags are 32 bytes")
}

/// Events appended by this handle and not yet written.
///
/// Every appended event gets a ticket (1, 2, …); `pending` holds tickets `durable + 1 ..=
/// appended`, in order.
#[derive(Debug, Default)]
struct Queue {
    pending: Vec<AuditEvent>,
    /// An empty vector with capacity, swapped in for `pending` when a write takes it, so that
    /// appending does not grow a fresh vector after every write.
    spare: Vec<AuditEvent>,
    appended: u64,
    durable: u64,
    /// The background flusher has been asked to write.
    flusher_woken: bool,
    /// The flusher's last write failed: it waits until a foreground write succeeds.
    flusher_failed: bool,
    shutdown: bool,
}

/// The part of the log shared with the background flusher.
struct Shared {
    store: Arc<dyn KvStore>,
    records_ns: Namespace,
    head_ns: Namespace,
    queue: Mutex<Queue>,
    /// Wakes the flusher (new work, failure cleared, shutdown).
    wake: Condvar,
    /// Held across one store write, so that this handle's writes leave in chain order; holds
    /// the head as last read or written (`None`: read it from the store).
    ///
    /// Why not one store write per record through the store's own group commit: a record's
    /// batch also moves the head, guarded by the head's version, and versions are only known
    /// once a write commits, so concurrent per-record writes would conflict with each other or
    /// could land out of order. Instead concurrent appenders queue their events without
    /// waiting for a write, and whoever holds this lock next writes every queued event in one
    /// batch: N concurrent durable signers share one store write and one `fsync`.
    writer: Mutex<Option<Head>>,
    /// The head key, while the keystore is unlocked.
    mac_key: std::sync::RwLock<Option<hmac::Key>>,
    anchor: Option<Arc<dyn RollbackAnchor>>,
    /// The furthest position this handle has anchored or checked against the anchor.
    anchored: Mutex<Option<AnchorPoint>>,
}

impl Shared {
    fn queue(&self) -> Result<MutexGuard<'_, Queue>, HsmError> {
        self.queue.lock().map_err(|_| HsmError::Poisoned)
    }

    fn load_head(&self) -> Result<Head, HsmError> {
        match self.store.get(&self.head_ns, HEAD_KEY)? {
            None => Ok(Head {
                seq: 0,
                hash: [0; 32],
                version: None,
                keyed: None,
            }),
            Some(v) => {
                let (seq, hash, keyed) = decode_head(&v.value).ok_or(HsmError::AuditChainBroken {
                    seq: 0,
                    reason: AuditBreak::BadHead,
                })?;
                Ok(Head {
                    seq,
                    hash,
                    version: Some(v.version),
                    keyed,
                })
            }
        }
    }

    /// The store's head, checked against the anchored position: [`HsmError::RolledBack`] when
    /// the store's chain ends before it, or is another chain there.
    fn load_checked_head(&self) -> Result<Head, HsmError> {
        let head = self.load_head()?;
        let anchored = *self.anchored.lock().map_err(|_| HsmError::Poisoned)?;
        if let Some(point) = anchored {
            self.check_reaches(&head, &point)?;
        }
        Ok(head)
    }

    /// Whether the chain ending at `head` passes through `point`.
    fn check_reaches(&self, head: &Head, point: &AnchorPoint) -> Result<(), HsmError> {
        let rolled_back = |diverged| HsmError::RolledBack {
            store: head.seq,
            anchor: point.seq,
            diverged,
        };
        if head.seq < point.seq {
            return Err(rolled_back(false));
        }
        let hash = if head.seq == point.seq {
            head.hash
        } else if point.seq == 0 {
            [0; 32]
        } else {
            match self.store.get(&self.records_ns, &point.seq.to_be_bytes())? {
                Some(v) => hash_encoded(&v.value),
                None => return Err(rolled_back(true)),
            }
        };
        if hash == point.hash {
            Ok(())
        } else {
            Err(rolled_back(true))
        }
    }

    /// Walks the records after position `from` (records, hash), checking that each is where it
    /// should be and chains on; stops after record `until` when given. `each` sees every record
    /// with the chain's hash after it. Returns the position reached.
    fn walk(
        &self,
        from: (u64, [u8; 32]),
        until: Option<u64>,
        mut each: impl FnMut(u64, &[u8; 32], AuditRecord),
    ) -> Result<(u64, [u8; 32]), HsmError> {
        let (mut seq, mut hash) = from;
        loop {
            if until.is_some_and(|u| seq >= u) {
                break;
            }
            // From the start, every key is read (a stray one is undecodable, not skipped).
            let after = seq.to_be_bytes();
            let scan = if seq == 0 {
                Scan::all()
            } else {
                Scan::all().after(&after)
            };
            let page = self.store.scan(&self.records_ns, scan.limit(VERIFY_PAGE))?;
            if page.is_empty() {
                break;
            }
            for entry in &page {
                let expected = seq + 1;
                if until.is_some_and(|u| expected > u) {
                    break;
                }
                let broken = |reason| HsmError::AuditChainBroken { seq: expected, reason };
                let at = key_seq(&entry.key).ok_or(broken(AuditBreak::Undecodable))?;
                if at != expected {
                    return Err(broken(AuditBreak::Gap));
                }
                let record = AuditRecord::decode(&entry.value).ok_or(broken(AuditBreak::Undecodable))?;
                if record.seq != expected {
                    return Err(broken(AuditBreak::SequenceMismatch));
                }
                if record.prev_hash != hash {
                    return Err(broken(AuditBreak::PrevHashMismatch));
                }
                hash = hash_encoded(&entry.value);
                seq = expected;
                each(seq, &hash, record);
            }
        }
        Ok((seq, hash))
    }

    /// How many records the head's keyed position vouches for, checked with the key when the
    /// keystore is unlocked (0 when locked): its MAC, that it is not past the end of the chain
    /// (`records`), and that the chain there hashes to what it names (`keyed_hash`; a keyed
    /// position below `read_before` was checked by an earlier read and is not read again).
    fn check_keyed(
        &self,
        keyed: Option<Keyed>,
        records: u64,
        keyed_hash: Option<[u8; 32]>,
        read_before: u64,
    ) -> Result<u64, HsmError> {
        let key = self.mac_key.read().map_err(|_| HsmError::Poisoned)?;
        let Some(key) = key.as_ref() else { return Ok(0) };
        let broken = |reason| HsmError::AuditChainBroken { seq: records, reason };
        match keyed {
            None if records == 0 => Ok(0),
            None => Err(broken(AuditBreak::Unauthenticated)),
            Some(k) => {
                if head_mac(key, k.seq, &k.hash) != k.mac {
                    return Err(broken(AuditBreak::BadMac));
                }
                if k.seq > records {
                    return Err(broken(AuditBreak::Truncated));
                }
                if k.seq >= read_before && keyed_hash != Some(k.hash) {
                    return Err(broken(AuditBreak::Rewritten));
                }
                Ok(k.seq)
            }
        }
    }

    /// Moves the anchor (if any) to `point`.
    fn advance_anchor(&self, point: AnchorPoint) -> Result<(), HsmError> {
        let Some(anchor) = &self.anchor else { return Ok(()) };
        anchor.advance(&point)?;
        let mut anchored = self.anchored.lock().map_err(|_| HsmError::Poisoned)?;
        if anchored.is_none_or(|a| a.seq < point.seq) {
            *anchored = Some(point);
        }
        Ok(())
    }

    /// Makes every event up to `ticket` durable. Waits for a write in progress; if that did not
    /// cover `ticket`, writes every pending event itself in one batch.
    fn make_durable(&self, ticket: u64) -> Result<(), HsmError> {
        let mut head = self.writer.lock().map_err(|_| HsmError::Poisoned)?;
        let (mut events, through) = {
            let mut q = self.queue()?;
            if q.durable >= ticket || q.pending.is_empty() {
                return Ok(());
            }
            let spare = std::mem::take(&mut q.spare);
            (std::mem::replace(&mut q.pending, spare), q.appended)
        };
        let result = self.write_events(&mut head, &events);
        let mut q = self.queue()?;
        match result {
            Ok(point) => {
                q.durable = through;
                let cleared = q.flusher_failed;
                q.flusher_failed = false;
                events.clear();
                if q.spare.capacity() < events.capacity() {
                    q.spare = events;
                }
                drop(q);
                if cleared {
                    self.wake.notify_all();
                }
                // The records are durable whatever the anchor says; a failed anchor write is
                // reported, and the next append moves it.
                self.advance_anchor(point)
            }
            Err(e) => {
                // Nothing was written: the events go back in front of those appended since.
                events.append(&mut q.pending);
                q.pending = events;
                Err(e)
            }
        }
    }

    /// Chains `events` after the head and writes them with the new head in one atomic batch,
    /// re-reading the head when another writer moved it.
    fn write_events(&self, cached: &mut Option<Head>, events: &[AuditEvent]) -> Result<AnchorPoint, HsmError> {
        for _ in 0..MAX_APPEND_RETRIES {
            let head = match *cached {
                Some(h) => h,
                None => self.load_checked_head()?,
            };
            let mut batch = WriteBatch::new();
            batch.check(&self.head_ns, HEAD_KEY, head.version)?;
            let (mut seq, mut hash) = (head.seq, head.hash);
            for event in events {
                seq += 1;
                let encoded = event.encode(seq, &hash);
                hash = hash_encoded(&encoded);
                batch.put(&self.records_ns, seq.to_be_bytes(), encoded)?;
            }
            let keyed = match self.mac_key.read().map_err(|_| HsmError::Poisoned)?.as_ref() {
                Some(key) => Some(Keyed {
                    seq,
                    hash,
                    mac: head_mac(key, seq, &hash),
                }),
                // Locked: the head keeps the last keyed position it had.
                None => head.keyed,
            };
            batch.put(&self.head_ns, HEAD_KEY, encode_head(seq, &hash, keyed.as_ref()))?;
            match self.store.write(batch) {
                Ok(version) => {
                    *cached = Some(Head {
                        seq,
                        hash,
                        version: Some(version),
                        keyed,
                    });
                    return Ok(AnchorPoint { seq, hash });
                }
                Err(e) if e.is_conflict() => {
                    // Another writer appended: chain after it.
                    *cached = None;
                }
                Err(e) => {
                    *cached = None;
                    return Err(e.into());
                }
            }
        }
        Err(HsmError::AuditContention {
            attempts: MAX_APPEND_RETRIES,
        })
    }
}

/// The background flusher of [`AuditMode::Buffered`]: writes the pending events when woken,
/// so that the store write (and its `fsync`) never runs on a signing thread.
fn run_flusher(shared: &Shared) {
    loop {
        let ticket = {
            let Ok(mut q) = shared.queue() else { return };
            while !q.shutdown && (!q.flusher_woken || q.flusher_failed) {
                q = match shared.wake.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            if q.shutdown {
                return;
            }
            q.flusher_woken = false;
            q.appended
        };
        if shared.make_durable(ticket).is_err() {
            // The events stay pending; a signer that reaches `max_pending` unwritten events,
            // `flush_audit` or `lock` writes them in the foreground and gets the error.
            match shared.queue() {
                Ok(mut q) => q.flusher_failed = true,
                Err(_) => return,
            }
        }
    }
}

/// The audit chain of one provider, in two namespaces of a store.
/// What the chain says about nonces and key entries: read once, then kept up to date by
/// reading only the records appended since.
#[derive(Debug, Default)]
struct ChainIndex {
    /// Records read and checked.
    through: u64,
    /// The chain's hash after them.
    hash: [u8; 32],
    /// Digests of the nonces committed.
    committed: HashSet<[u8; 32]>,
    /// Nonce digest → SHA-256 of the message it signed.
    signed: HashMap<[u8; 32], [u8; 32]>,
    /// Key id → digest of its current sealed entry, or [`DELETED`].
    keys: HashMap<String, [u8; 32]>,
}

impl ChainIndex {
    fn learn(&mut self, record: &AuditRecord) {
        let (0, Some(subject)) = (record.outcome, record.subject) else {
            return;
        };
        match record.operation {
            Operation::CommitNonce => {
                self.committed.insert(subject);
            }
            Operation::SignWithNonce => {
                if let Some(message) = record.input_hash {
                    self.signed.entry(subject).or_insert(message);
                }
            }
            Operation::GenerateKey | Operation::GenerateMnemonic | Operation::ImportKey | Operation::DeleteKey => {
                if let Some(id) = &record.key_id {
                    self.keys.insert(id.as_str().to_owned(), subject);
                }
            }
            _ => {}
        }
    }
}

/// What the audit chain last recorded of a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NonceHistory {
    /// Whether it was committed.
    pub(crate) committed: bool,
    /// SHA-256 of the message it signed, if it signed one.
    pub(crate) signed: Option<[u8; 32]>,
}

pub(crate) struct AuditLog {
    index: Mutex<ChainIndex>,
    shared: Arc<Shared>,
    mode: AuditMode,
    /// Pending events at which a write starts: the flusher is woken at half of
    /// `max_pending`, so that it usually finishes before signers reach the bound.
    threshold: usize,
    clock: Arc<dyn Clock>,
    flusher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("records_ns", &self.shared.records_ns)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    pub(crate) fn new(
        store: Arc<dyn KvStore>,
        records_ns: Namespace,
        head_ns: Namespace,
        mode: AuditMode,
        clock: Arc<dyn Clock>,
        anchor: Option<Arc<dyn RollbackAnchor>>,
    ) -> Self {
        let mode = match mode {
            AuditMode::Buffered { max_pending } => AuditMode::Buffered {
                max_pending: max_pending.max(1),
            },
            m => m,
        };
        let capacity = match mode {
            AuditMode::Buffered { max_pending } => max_pending.min(MAX_PREALLOCATED),
            AuditMode::Durable => 0,
        };
        let shared = Arc::new(Shared {
            store,
            records_ns,
            head_ns,
            queue: Mutex::new(Queue {
                pending: Vec::with_capacity(capacity),
                spare: Vec::with_capacity(capacity),
                ..Queue::default()
            }),
            wake: Condvar::new(),
            writer: Mutex::new(None),
            mac_key: std::sync::RwLock::new(None),
            anchor,
            anchored: Mutex::new(None),
        });
        let (flusher, threshold) = match mode {
            AuditMode::Durable => (None, 1),
            AuditMode::Buffered { max_pending } => {
                let for_thread = Arc::clone(&shared);
                match std::thread::Builder::new()
                    .name("anya-hsm-audit".to_owned())
                    .spawn(move || run_flusher(&for_thread))
                {
                    Ok(handle) => (Some(handle), max_pending.div_ceil(2)),
                    // No thread to be had: write on the signing thread at `max_pending`.
                    Err(_) => (None, max_pending),
                }
            }
        };
        Self {
            index: Mutex::new(ChainIndex::default()),
            shared,
            mode,
            threshold,
            clock,
            flusher,
        }
    }

    pub(crate) fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// What the chain records of nonce `digest`.
    pub(crate) fn nonce_history(&self, digest: &[u8; 32]) -> Result<NonceHistory, HsmError> {
        let index = self.index()?;
        Ok(NonceHistory {
            committed: index.committed.contains(digest) || index.signed.contains_key(digest),
            signed: index.signed.get(digest).copied(),
        })
    }

    /// The digest of the sealed entry the chain last recorded for key `id` ([`DELETED`] once
    /// deleted), or `None` if the chain never recorded one (a key from before entries were
    /// recorded, or whose record was never written).
    pub(crate) fn key_entry(&self, id: &str) -> Result<Option<[u8; 32]>, HsmError> {
        Ok(self.index()?.keys.get(id).copied())
    }

    /// The index, brought up to the store's head: every record since the last read is checked
    /// to chain on (and, with the key, the head's MAC to vouch for it) before it is believed.
    fn index(&self) -> Result<MutexGuard<'_, ChainIndex>, HsmError> {
        self.flush()?;
        let mut index = self.index.lock().map_err(|_| HsmError::Poisoned)?;
        let shared = &self.shared;
        let head = shared.load_head()?;
        if head.seq < index.through {
            return Err(HsmError::RolledBack {
                store: head.seq,
                anchor: index.through,
                diverged: false,
            });
        }
        let keyed = head.keyed;
        let mut keyed_hash = keyed.filter(|k| k.seq == index.through).map(|_| index.hash);
        let mut learned = Vec::new();
        let (seq, hash) = shared.walk((index.through, index.hash), Some(head.seq), |seq, hash, record| {
            if keyed.is_some_and(|k| k.seq == seq) {
                keyed_hash = Some(*hash);
            }
            learned.push(record);
        })?;
        if seq != head.seq || hash != head.hash {
            return Err(HsmError::AuditChainBroken {
                seq,
                reason: AuditBreak::HeadMismatch,
            });
        }
        // A keyed position already read is vouched for by the earlier read.
        shared.check_keyed(keyed, seq, keyed_hash, index.through)?;
        for record in &learned {
            index.learn(record);
        }
        index.through = seq;
        index.hash = hash;
        Ok(index)
    }

    /// Sets (on unlock) or clears (on lock) the key heads are MACed with.
    pub(crate) fn set_mac_key(&self, key: Option<hmac::Key>) -> Result<(), HsmError> {
        *self.shared.mac_key.write().map_err(|_| HsmError::Poisoned)? = key;
        Ok(())
    }

    /// The rollback anchor, if one is configured.
    pub(crate) fn anchor(&self) -> Option<&Arc<dyn RollbackAnchor>> {
        self.shared.anchor.as_ref()
    }

    /// The store's audit head as a position.
    pub(crate) fn store_point(&self) -> Result<AnchorPoint, HsmError> {
        let head = self.shared.load_head()?;
        Ok(AnchorPoint {
            seq: head.seq,
            hash: head.hash,
        })
    }

    /// Checks the store against the anchor: [`HsmError::RolledBack`] if its chain ends before
    /// the anchored position or is another chain there. An anchor that holds nothing yet is
    /// set to the store's head (the first use). Without an anchor, nothing to check.
    pub(crate) fn check_anchor(&self) -> Result<(), HsmError> {
        let Some(anchor) = &self.shared.anchor else {
            return Ok(());
        };
        // The anchor first: it only moves after the store holds what it names, so a store read
        // after it reaches it, even while another process appends. (Read the other way round,
        // an append between the two reads would look like a rollback.)
        let anchored = anchor.head()?;
        let head = self.shared.load_head()?;
        let point = match anchored {
            Some(point) => {
                self.shared.check_reaches(&head, &point)?;
                point
            }
            None => {
                let point = AnchorPoint {
                    seq: head.seq,
                    hash: head.hash,
                };
                anchor.advance(&point)?;
                point
            }
        };
        let mut anchored = self.shared.anchored.lock().map_err(|_| HsmError::Poisoned)?;
        if anchored.is_none_or(|a| a.seq < point.seq) {
            *anchored = Some(point);
        }
        Ok(())
    }

    /// Puts the anchor at the store's head (the operator's override after a restore) and
    /// returns the anchored position it replaced.
    pub(crate) fn reset_anchor(&self) -> Result<Option<AnchorPoint>, HsmError> {
        let Some(anchor) = &self.shared.anchor else {
            return Ok(None);
        };
        let old = anchor.head()?;
        let point = self.store_point()?;
        anchor.reset(&point)?;
        *self.shared.anchored.lock().map_err(|_| HsmError::Poisoned)? = Some(point);
        // The cached head may be the one the restore replaced.
        *self.shared.writer.lock().map_err(|_| HsmError::Poisoned)? = None;
        Ok(old)
    }

    /// Records one operation; in [`AuditMode::Durable`] the record is durable when this returns.
    /// Appends the record of one provider operation: its outcome is `0` for success or the
    /// error's audit code.
    pub(crate) fn record<T>(
        &self,
        actor: &Arc<Label>,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        result: &Result<T, HsmError>,
    ) -> Result<(), HsmError> {
        self.record_subject(actor, operation, key, input_hash, None, result)
    }

    /// [`record`](Self::record) with the record's subject.
    pub(crate) fn record_subject<T>(
        &self,
        actor: &Arc<Label>,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        subject: Option<[u8; 32]>,
        result: &Result<T, HsmError>,
    ) -> Result<(), HsmError> {
        let outcome = match result {
            Ok(_) => 0,
            Err(e) => e.audit_code(),
        };
        self.append(AuditEvent {
            time: self.now(),
            operation,
            key_id: key.map(InlineLabel::new),
            actor: Arc::clone(actor),
            input_hash,
            outcome,
            subject,
        })
    }

    /// Appends the record of a decision taken outside the provider: `subject` is stored as the
    /// record's input hash and `outcome` as its outcome.
    pub(crate) fn record_decision(
        &self,
        actor: &Arc<Label>,
        key: Option<&KeyId>,
        subject: &[u8; 32],
        outcome: u16,
    ) -> Result<(), HsmError> {
        self.append(AuditEvent {
            time: self.now(),
            operation: Operation::Decision,
            key_id: key.map(InlineLabel::new),
            actor: Arc::clone(actor),
            input_hash: Some(*subject),
            outcome,
            subject: None,
        })
    }

    /// Runs a provider operation and records it; the result is withheld if the record cannot
    /// be appended.
    pub(crate) fn audited<T>(
        &self,
        actor: &Arc<Label>,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        f: impl FnOnce() -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let result = f();
        self.record(actor, operation, key, input_hash, &result)?;
        result
    }

    /// [`audited`](Self::audited) for an operation that reports its subject with its result
    /// (a failure records none).
    pub(crate) fn audited_subject<T>(
        &self,
        actor: &Arc<Label>,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        f: impl FnOnce() -> Result<(T, [u8; 32]), HsmError>,
    ) -> Result<T, HsmError> {
        let result = f();
        let subject = result.as_ref().ok().map(|(_, s)| *s);
        self.record_subject(actor, operation, key, input_hash, subject, &result)?;
        result.map(|(value, _)| value)
    }

    pub(crate) fn append(&self, event: AuditEvent) -> Result<(), HsmError> {
        let mut q = self.shared.queue()?;
        q.pending.push(event);
        q.appended += 1;
        let ticket = q.appended;
        match self.mode {
            AuditMode::Durable => {
                drop(q);
                self.shared.make_durable(ticket)
            }
            AuditMode::Buffered { max_pending } => {
                let unwritten = ticket - q.durable;
                if unwritten >= max_pending as u64 || self.flusher.is_none() && q.pending.len() >= self.threshold {
                    // The loss bound is reached (the flusher is behind or failing): write now.
                    drop(q);
                    return self.shared.make_durable(ticket);
                }
                if q.pending.len() >= self.threshold && !q.flusher_woken {
                    q.flusher_woken = true;
                    drop(q);
                    self.shared.wake.notify_all();
                }
                Ok(())
            }
        }
    }

    /// Makes every record appended so far durable (waiting for a background write in progress).
    pub(crate) fn flush(&self) -> Result<(), HsmError> {
        let ticket = self.shared.queue()?.appended;
        self.shared.make_durable(ticket)
    }

    /// Up to `limit` stored records with sequence numbers above `after`.
    pub(crate) fn records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, HsmError> {
        let start = after.to_be_bytes();
        let entries = self
            .shared
            .store
            .scan(&self.shared.records_ns, Scan::all().after(&start).limit(limit))?;
        entries
            .iter()
            .map(|e| {
                let seq = key_seq(&e.key).unwrap_or(0);
                AuditRecord::decode(&e.value).ok_or(HsmError::AuditChainBroken {
                    seq,
                    reason: AuditBreak::Undecodable,
                })
            })
            .collect()
    }

    /// Flushes, then checks every stored record and the head.
    pub(crate) fn verify(&self) -> Result<AuditSummary, HsmError> {
        self.flush()?;
        let store = &self.shared.store;
        // Read first: the keyed and anchored positions are checked during the walk. The anchor
        // before the head (it only moves after the store holds what it names), so that another
        // process appending meanwhile is never taken for a rollback.
        let anchored = match &self.shared.anchor {
            Some(anchor) => anchor.head()?,
            None => None,
        };
        let head = match store.get(&self.shared.head_ns, HEAD_KEY)? {
            None => None,
            Some(v) => Some(decode_head(&v.value).ok_or(HsmError::AuditChainBroken {
                seq: 0,
                reason: AuditBreak::BadHead,
            })?),
        };
        let keyed = head.and_then(|(_, _, keyed)| keyed);
        // The chain's hash after `seq` records, where the head, keyed and anchored positions are.
        let (mut head_hash_found, mut keyed_hash, mut anchor_hash) = (None, None, None);
        let mut note = |seq: u64, hash: &[u8; 32]| {
            if head.is_some_and(|(s, _, _)| s == seq) {
                head_hash_found = Some(*hash);
            }
            if keyed.is_some_and(|k| k.seq == seq) {
                keyed_hash = Some(*hash);
            }
            if anchored.is_some_and(|a| a.seq == seq) {
                anchor_hash = Some(*hash);
            }
        };
        note(0, &[0; 32]);
        let (records, hash) = self.shared.walk((0, [0; 32]), None, |seq, hash, _| note(seq, hash))?;
        let head_mismatch = || HsmError::AuditChainBroken {
            seq: records,
            reason: AuditBreak::HeadMismatch,
        };
        match head {
            None if records == 0 => {}
            None => {
                return Err(HsmError::AuditChainBroken {
                    seq: records,
                    reason: AuditBreak::BadHead,
                })
            }
            Some((seq, head_hash, _)) => {
                if records < seq || head_hash_found != Some(head_hash) {
                    return Err(head_mismatch());
                }
                // Records past the head read were appended since (each append writes its
                // records and the head in one batch), so the head now covers them; records no
                // head covers were put there by something else.
                if records > seq && self.shared.load_head()?.seq < records {
                    return Err(head_mismatch());
                }
            }
        }
        let authenticated = self.shared.check_keyed(keyed, records, keyed_hash, 0)?;
        if let Some(point) = anchored {
            if records < point.seq || anchor_hash != Some(point.hash) {
                return Err(HsmError::RolledBack {
                    store: records,
                    anchor: point.seq,
                    diverged: records >= point.seq,
                });
            }
        }
        Ok(AuditSummary {
            records,
            head: hash,
            authenticated,
        })
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Some(handle) = self.flusher.take() {
            if let Ok(mut q) = self.shared.queue() {
                q.shutdown = true;
            }
            self.shared.wake.notify_all();
            let _ = handle.join();
        }
        // Best effort: a failure here cannot be reported; the records are lost, as the
        // Buffered mode's documentation says a crash would lose them.
        let _ = self.flush();
    }
}

fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn encode_head(seq: u64, hash: &[u8; 32], keyed: Option<&Keyed>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 40 + 72);
    out.push(if keyed.is_some() {
        HEAD_FORMAT_KEYED
    } else {
        RECORD_FORMAT
    });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(hash);
    if let Some(k) = keyed {
        out.extend_from_slice(&k.seq.to_be_bytes());
        out.extend_from_slice(&k.hash);
        out.extend_from_slice(&k.mac);
    }
    out
}

fn decode_head(bytes: &[u8]) -> Option<(u64, [u8; 32], Option<Keyed>)> {
    let mut r = Reader(bytes);
    let format = r.u8()?;
    let seq = u64::from_be_bytes(r.array()?);
    let hash = r.array()?;
    let keyed = match format {
        RECORD_FORMAT => None,
        HEAD_FORMAT_KEYED => Some(Keyed {
            seq: u64::from_be_bytes(r.array()?),
            hash: r.array()?,
            mac: r.array()?,
        }),
        _ => return None,
    };
    r.0.is_empty().then_some((seq, hash, keyed))
}

/// SHA-256 of an operation's input, as recorded.
pub(crate) fn input_hash(bytes: &[u8]) -> [u8; 32] {
    sha256::Hash::hash(bytes).to_byte_array()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_codes_are_stable() {
        // Stored records carry these codes: new operations go at the end.
        assert_eq!(Operation::Create.code(), 1);
        assert_eq!(Operation::SignWithNonce.code(), 20);
        assert_eq!(Operation::Decision.code(), 21);
        assert_eq!(Operation::SignP256.code(), 22);
        assert_eq!(Operation::AcceptRollback.code(), 23);
        assert_eq!(Operation::ExportScopedChild.code(), 24);
        assert_eq!(Operation::DeriveNodeSeed.code(), 25);
        assert_eq!(Operation::from_code(26), None);
    }

    #[test]
    fn record_round_trips() {
        let r = AuditRecord {
            seq: 7,
            prev_hash: [9; 32],
            time: UnixTime::from_duration(std::time::Duration::new(1_700_000_000, 123)),
            operation: Operation::SignSchnorr,
            key_id: Some(Label::new("k1").expect("valid")),
            actor: Label::new("ops").expect("valid"),
            input_hash: Some([1; 32]),
            outcome: 0,
            subject: None,
        };
        assert_eq!(AuditRecord::decode(&r.encode()), Some(r.clone()));
        let r2 = AuditRecord {
            key_id: None,
            input_hash: None,
            outcome: 12,
            ..r.clone()
        };
        assert_eq!(AuditRecord::decode(&r2.encode()), Some(r2));
        let r3 = AuditRecord {
            subject: Some([5; 32]),
            ..r
        };
        assert_eq!(r3.encode()[0], RECORD_FORMAT_SUBJECT);
        assert_eq!(AuditRecord::decode(&r3.encode()), Some(r3));
    }

    #[test]
    fn operation_codes_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_code(op.code()), Some(op));
        }
        assert_eq!(Operation::from_code(0), None);
        assert_eq!(Operation::from_code(200), None);
    }
}
