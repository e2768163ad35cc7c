//! Rollback anchors: a copy of the audit chain's head, and of every consumed oracle nonce, kept
//! where a restore of the keystore's store does not reach.
//!
//! A store restored from a backup or a VM snapshot is internally consistent: every record,
//! every MAC and the audit head agree, only they are older. Nothing inside the store can tell.
//! An anchor can: the keystore moves it forward after every audit append (before the result of
//! the operation is returned), so a store whose audit head is behind the anchor, or whose chain
//! at the anchored position is another chain, is refused with [`HsmError::RolledBack`]. A
//! nonce is recorded in the anchor as consumed for its message before its signature is
//! returned, so a nonce the anchor holds never signs another message, even from a store that
//! was rolled back and then accepted by the operator.
//!
//! **The operational rule:** back the anchor up with the store, and never restore the store
//! without the anchor that goes with it (or restore both from the same moment). Restoring only
//! the store makes the keystore refuse to open; restoring only an older anchor weakens it to
//! what the store alone guarantees. [`SoftwareHsm::accept_rollback`](crate::SoftwareHsm::accept_rollback)
//! is the audited override for a restore that was meant.
//!
//! Two anchors come with the crate: [`FileAnchor`], a directory beside the data directory
//! (on another disk or mount than the store's backups reach), and [`StoreAnchor`], any other
//! [`KvStore`] (a PostgreSQL database the keystore's store is not restored with, say).

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anya_storage::{KvStore, Namespace};
use bitcoin::hashes::{sha256, Hash, HashEngine};

use crate::{HsmError, KeyId, Label};

/// A position of the audit chain: the number of records and the hash of the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorPoint {
    /// Records in the chain (the last one's sequence number).
    pub seq: u64,
    /// The last record's hash (all zeros for an empty chain).
    pub hash: [u8; 32],
}

impl AnchorPoint {
    const LEN: usize = 4 + 8 + 32;
    const MAGIC: &'static [u8; 4] = b"AHA\x01";

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(Self::MAGIC);
        out[4..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..].copy_from_slice(&self.hash);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN || &bytes[..4] != Self::MAGIC {
            return None;
        }
        Some(Self {
            seq: u64::from_be_bytes(bytes[4..12].try_into().ok()?),
            hash: bytes[12..].try_into().ok()?,
        })
    }
}

/// What an anchor keeps of a keystore. Implementations must make each write durable before
/// they return, and must never move the head backward (a write of an older point is ignored).
pub trait RollbackAnchor: Send + Sync + fmt::Debug {
    /// The anchored audit head, `None` before the first write.
    fn head(&self) -> Result<Option<AnchorPoint>, HsmError>;

    /// Moves the anchored head to `point` if it is further along than the anchored one.
    fn advance(&self, point: &AnchorPoint) -> Result<(), HsmError>;

    /// Puts the anchored head at `point`, forward or back: the operator's override after a
    /// restore that was meant ([`SoftwareHsm::accept_rollback`](crate::SoftwareHsm::accept_rollback)).
    fn reset(&self, point: &AnchorPoint) -> Result<(), HsmError>;

    /// The message digest nonce `nonce` (see [`nonce_digest`]) was consumed for, if any.
    fn consumed(&self, nonce: &[u8; 32]) -> Result<Option<[u8; 32]>, HsmError>;

    /// Records nonce `nonce` as consumed for `message`, durably. Recording the same message
    /// again is a no-op; another message is [`HsmError::AnchorNonceConflict`].
    fn consume(&self, nonce: &[u8; 32], message: &[u8; 32]) -> Result<(), HsmError>;
}

/// The digest under which an anchor records nonce `nonce` of key `key`.
pub fn nonce_digest(key: &KeyId, nonce: &Label) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(b"anya-hsm/anchor/nonce/v1");
    for part in [key.as_str(), nonce.as_str()] {
        engine.input(&[u8::try_from(part.len()).expect("labels are at most 64 bytes")]);
        engine.input(part.as_bytes());
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

fn anchor_error(what: &str, e: impl fmt::Display) -> HsmError {
    HsmError::Anchor {
        reason: format!("{what}: {e}"),
    }
}

/// An anchor in a directory: `head` (rewritten through a temporary file, `fsync`ed and renamed)
/// and `nonces` (an append-only log of 64-byte entries, `fsync`ed per append). Processes
/// sharing the directory serialize on an advisory lock of `lock`.
pub struct FileAnchor {
    dir: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    lock: File,
    nonces: File,
    /// Bytes of `nonces` read into `consumed`.
    read: u64,
    consumed: HashMap<[u8; 32], [u8; 32]>,
}

impl fmt::Debug for FileAnchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileAnchor")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const NONCE_ENTRY: usize = 64;

impl FileAnchor {
    /// Opens (creating if needed) the anchor in directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, HsmError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| anchor_error("creating the anchor directory", e))?;
        let open = |name: &str, append: bool| {
            OpenOptions::new()
                .read(true)
                .create(true)
                .append(append)
                .write(!append)
                .truncate(false)
                .open(dir.join(name))
                .map_err(|e| anchor_error(&format!("opening {name}"), e))
        };
        let lock = open("lock", false)?;
        let nonces = open("nonces", true)?;
        let anchor = Self {
            dir,
            state: Mutex::new(FileState {
                lock,
                nonces,
                read: 0,
                consumed: HashMap::new(),
            }),
        };
        anchor.with_lock(Self::catch_up)?;
        Ok(anchor)
    }

    /// Runs `f` holding the in-process mutex and the cross-process file lock.
    fn with_lock<T>(&self, f: impl FnOnce(&mut FileState) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let mut state = self.state.lock().map_err(|_| HsmError::Poisoned)?;
        state.lock.lock().map_err(|e| anchor_error("locking the anchor", e))?;
        let result = f(&mut state);
        let unlocked = state.lock.unlock().map_err(|e| anchor_error("unlocking the anchor", e));
        let value = result?;
        unlocked?;
        Ok(value)
    }

    /// Reads the entries other processes appended since the last read.
    fn catch_up(state: &mut FileState) -> Result<(), HsmError> {
        let len = state
            .nonces
            .metadata()
            .map_err(|e| anchor_error("reading the nonce log", e))?
            .len();
        if len <= state.read {
            return Ok(());
        }
        let mut buf = Vec::new();
        state
            .nonces
            .seek(SeekFrom::Start(state.read))
            .and_then(|_| (&state.nonces).take(len - state.read).read_to_end(&mut buf))
            .map_err(|e| anchor_error("reading the nonce log", e))?;
        // A torn last entry (a crash mid-append) is ignored: its consume never returned.
        let whole = buf.len() - buf.len() % NONCE_ENTRY;
        for entry in buf[..whole].chunks_exact(NONCE_ENTRY) {
            let nonce: [u8; 32] = entry[..32].try_into().expect("32-byte half");
            let message: [u8; 32] = entry[32..].try_into().expect("32-byte half");
            // The first entry for a nonce wins; a later one for another message cannot have
            // been written by `consume`, which checks under the lock.
            state.consumed.entry(nonce).or_insert(message);
        }
        state.read += whole as u64;
        Ok(())
    }

    fn read_head(&self) -> Result<Option<AnchorPoint>, HsmError> {
        match std::fs::read(self.dir.join("head")) {
            Ok(bytes) => AnchorPoint::decode(&bytes)
                .map(Some)
                .ok_or_else(|| anchor_error("the anchor head", "not an anchor point")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anchor_error("reading the anchor head", e)),
        }
    }

    fn write_head(&self, point: &AnchorPoint) -> Result<(), HsmError> {
        let tmp = self.dir.join("head.tmp");
        let io = |e| anchor_error("writing the anchor head", e);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&point.encode()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, self.dir.join("head")).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

impl RollbackAnchor for FileAnchor {
    fn head(&self) -> Result<Option<AnchorPoint>, HsmError> {
        self.with_lock(|_| self.read_head())
    }

    fn advance(&self, point: &AnchorPoint) -> Result<(), HsmError> {
        self.with_lock(|_| match self.read_head()? {
            Some(current) if current.seq >= point.seq => Ok(()),
            _ => self.write_head(point),
        })
    }

    fn reset(&self, point: &AnchorPoint) -> Result<(), HsmError> {
        self.with_lock(|_| self.write_head(point))
    }

    fn consumed(&self, nonce: &[u8; 32]) -> Result<Option<[u8; 32]>, HsmError> {
        self.with_lock(|s| {
            Self::catch_up(s)?;
            Ok(s.consumed.get(nonce).copied())
        })
    }

    fn consume(&self, nonce: &[u8; 32], message: &[u8; 32]) -> Result<(), HsmError> {
        self.with_lock(|s| {
            Self::catch_up(s)?;
            match s.consumed.get(nonce) {
                Some(m) if m == message => return Ok(()),
                Some(_) => return Err(HsmError::AnchorNonceConflict),
                None => {}
            }
            let mut entry = [0u8; NONCE_ENTRY];
            entry[..32].copy_from_slice(nonce);
            entry[32..].copy_from_slice(message);
            let io = |e| anchor_error("appending to the nonce log", e);
            // Drop a torn tail first, so this entry starts on an entry boundary.
            s.nonces.set_len(s.read).map_err(io)?;
            s.nonces.write_all(&entry).map_err(io)?;
            s.nonces.sync_data().map_err(io)?;
            s.read += NONCE_ENTRY as u64;
            s.consumed.insert(*nonce, *message);
            Ok(())
        })
    }
}

/// An anchor in another [`KvStore`] (PostgreSQL, RocksDB, SQLite), under namespace `ns`: one
/// `head` record moved forward by compare-and-swap, and one record per consumed nonce.
pub struct StoreAnchor {
    store: Arc<dyn KvStore>,
    ns: Namespace,
}

impl fmt::Debug for StoreAnchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreAnchor")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

const HEAD_KEY: &[u8] = b"head";
const NONCE_PREFIX: &[u8] = b"n/";
const MAX_CAS_ATTEMPTS: usize = 64;

impl StoreAnchor {
    /// An anchor in `store` under namespace `ns` (e.g. `anya.hsm.anchor`). `store` must not be
    /// the keystore's own store, nor restored with it.
    pub fn new(store: Arc<dyn KvStore>, ns: Namespace) -> Self {
        Self { store, ns }
    }

    fn nonce_key(nonce: &[u8; 32]) -> Vec<u8> {
        [NONCE_PREFIX, nonce.as_slice()].concat()
    }

    fn put_head(&self, point: &AnchorPoint, forward_only: bool) -> Result<(), HsmError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self.store.get(&self.ns, HEAD_KEY)?;
            if let Some(v) = &current {
                let stored = AnchorPoint::decode(&v.value)
                    .ok_or_else(|| anchor_error("the anchor head", "not an anchor point"))?;
                if forward_only && stored.seq >= point.seq {
                    return Ok(());
                }
            }
            match self
                .store
                .compare_and_swap(&self.ns, HEAD_KEY, current.map(|v| v.version), Some(&point.encode()))
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(anchor_error("moving the anchor head", "lost every race"))
    }
}

impl RollbackAnchor for StoreAnchor {
    fn head(&self) -> Result<Option<AnchorPoint>, HsmError> {
        self.store
            .get(&self.ns, HEAD_KEY)?
            .map(|v| {
                AnchorPoint::decode(&v.value).ok_or_else(|| anchor_error("the anchor head", "not an anchor point"))
            })
            .transpose()
    }

    fn advance(&self, point: &AnchorPoint) -> Result<(), HsmError> {
        self.put_head(point, true)
    }

    fn reset(&self, point: &AnchorPoint) -> Result<(), HsmError> {
        self.put_head(point, false)
    }

    fn consumed(&self, nonce: &[u8; 32]) -> Result<Option<[u8; 32]>, HsmError> {
        self.store
            .get(&self.ns, &Self::nonce_key(nonce))?
            .map(|v| {
                v.value
                    .as_slice()
                    .try_into()
                    .map_err(|_| anchor_error("a nonce record", "not a 32-byte message digest"))
            })
            .transpose()
    }

    fn consume(&self, nonce: &[u8; 32], message: &[u8; 32]) -> Result<(), HsmError> {
        let key = Self::nonce_key(nonce);
        match self.store.compare_and_swap(&self.ns, &key, None, Some(message)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => match self.consumed(nonce)? {
                Some(m) if m == *message => Ok(()),
                _ => Err(HsmError::AnchorNonceConflict),
            },
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seq: u64) -> AnchorPoint {
        AnchorPoint {
            seq,
            hash: [seq as u8; 32],
        }
    }

    #[test]
    fn file_anchor_moves_forward_only_and_keeps_nonces_across_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let a = FileAnchor::open(dir.path()).expect("anchor");
        assert_eq!(a.head().expect("head"), None);
        a.advance(&point(5)).expect("advance");
        a.advance(&point(3)).expect("older is ignored");
        assert_eq!(a.head().expect("head"), Some(point(5)));
        a.reset(&point(2)).expect("reset");
        assert_eq!(a.head().expect("head"), Some(point(2)));
        a.consume(&[1; 32], &[9; 32]).expect("consume");
        a.consume(&[1; 32], &[9; 32]).expect("same message again");
        assert!(matches!(
            a.consume(&[1; 32], &[8; 32]),
            Err(HsmError::AnchorNonceConflict)
        ));
        drop(a);
        let b = FileAnchor::open(dir.path()).expect("reopen");
        assert_eq!(b.consumed(&[1; 32]).expect("read"), Some([9; 32]));
        assert_eq!(b.consumed(&[2; 32]).expect("read"), None);
        assert_eq!(b.head().expect("head"), Some(point(2)));
    }

    #[test]
    fn file_anchor_sees_another_handles_appends_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().expect("dir");
        let a = FileAnchor::open(dir.path()).expect("anchor");
        let b = FileAnchor::open(dir.path()).expect("second handle");
        a.consume(&[1; 32], &[9; 32]).expect("consume");
        assert_eq!(b.consumed(&[1; 32]).expect("read"), Some([9; 32]));
        assert!(matches!(
            b.consume(&[1; 32], &[7; 32]),
            Err(HsmError::AnchorNonceConflict)
        ));
        // A crash mid-append leaves part of an entry: ignored, then overwritten.
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join("nonces"))
            .expect("log");
        log.write_all(&[3; 40]).expect("torn write");
        drop(log);
        let c = FileAnchor::open(dir.path()).expect("reopen");
        assert_eq!(c.consumed(&[3; 32]).expect("read"), None);
        c.consume(&[4; 32], &[4; 32]).expect("append after the torn tail");
        let d = FileAnchor::open(dir.path()).expect("reopen");
        assert_eq!(d.consumed(&[4; 32]).expect("read"), Some([4; 32]));
        assert_eq!(d.consumed(&[1; 32]).expect("read"), Some([9; 32]));
    }
}
