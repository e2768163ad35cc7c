//! A BDK [`WalletPersister`] over any [`KvStore`].
//!
//! Each [`ChangeSet`] BDK stages is appended as one record (`cs/` + big-endian sequence number)
//! in the wallet's namespace, so a persist is one small durable write however large the wallet
//! has grown. Loading merges the records in order. When more than [`COMPACT_AFTER`] records
//! have piled up, loading folds them into one in a single atomic batch (the merged record is
//! written and the old ones deleted together), so a crash mid-compaction loses nothing.

use std::sync::Arc;

use anya_storage::{KvStore, Namespace, Scan, StoreError, WriteBatch};
use bdk_wallet::chain::Merge;
use bdk_wallet::{ChangeSet, WalletPersister};

/// Records loaded before they are folded into one.
pub const COMPACT_AFTER: u64 = 64;

const PREFIX: &[u8] = b"cs/";
/// Format byte in front of every record: 1 = `ChangeSet` as JSON.
const FORMAT_JSON: u8 = 1;
const PAGE: usize = 256;

/// Why the wallet's records could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// The store failed.
    #[error("wallet store: {0}")]
    Store(#[from] StoreError),
    /// A record is not a change set this version can read.
    #[error("wallet record {key} is unreadable: {reason}")]
    Corrupt {
        /// The record's key, printable.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// Stores a BDK wallet's change sets in one namespace of a [`KvStore`].
#[derive(Clone)]
pub struct KvPersister {
    store: Arc<dyn KvStore>,
    ns: Namespace,
    next_seq: u64,
}

impl std::fmt::Debug for KvPersister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPersister")
            .field("ns", &self.ns)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl KvPersister {
    /// A persister for the wallet whose records live in `ns`.
    pub fn new(store: Arc<dyn KvStore>, ns: Namespace) -> Self {
        Self { store, ns, next_seq: 0 }
    }

    /// The namespace the records live in.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Whether any record exists (a wallet was created here).
    pub fn exists(&self) -> Result<bool, PersistError> {
        Ok(!self.store.scan(&self.ns, Scan::prefix(PREFIX).limit(1))?.is_empty())
    }

    fn key(seq: u64) -> Vec<u8> {
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    fn encode(changeset: &ChangeSet) -> Result<Vec<u8>, PersistError> {
        let mut out = vec![FORMAT_JSON];
        serde_json::to_writer(&mut out, changeset).map_err(|e| PersistError::Corrupt {
            key: "(new record)".to_owned(),
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<ChangeSet, PersistError> {
        let corrupt = |reason: String| PersistError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        match value.split_first() {
            Some((&FORMAT_JSON, json)) => serde_json::from_slice(json).map_err(|e| corrupt(e.to_string())),
            Some((format, _)) => Err(corrupt(format!("unknown record format {format}"))),
            None => Err(corrupt("empty record".to_owned())),
        }
    }

    /// Reads and merges every record; compacts when there are many.
    fn load(&mut self) -> Result<ChangeSet, PersistError> {
        let mut merged = ChangeSet::default();
        let mut keys = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        loop {
            let mut scan = Scan::prefix(PREFIX).limit(PAGE);
            if let Some(after) = last.as_deref() {
                scan = scan.after(after);
            }
            let page = self.store.scan(&self.ns, scan)?;
            let done = page.len() < PAGE;
            for entry in page {
                let seq_bytes: [u8; 8] = entry.key[PREFIX.len()..]
                    .try_into()
                    .map_err(|_| PersistError::Corrupt {
                        key: String::from_utf8_lossy(&entry.key).into_owned(),
                        reason: "key is not a sequence number".to_owned(),
                    })?;
                merged.merge(Self::decode(&entry.key, &entry.value)?);
                self.next_seq = u64::from_be_bytes(seq_bytes) + 1;
                last = Some(entry.key.clone());
                keys.push(entry.key);
            }
            if done {
                break;
            }
        }
        if keys.len() as u64 > COMPACT_AFTER {
            let mut batch = WriteBatch::new();
            for key in &keys {
                batch.delete(&self.ns, key.clone())?;
            }
            batch.put(&self.ns, Self::key(self.next_seq), Self::encode(&merged)?)?;
            self.store.write(batch)?;
            self.next_seq += 1;
        }
        Ok(merged)
    }
}

impl WalletPersister for KvPersister {
    type Error = PersistError;

    fn initialize(persister: &mut Self) -> Result<ChangeSet, Self::Error> {
        persister.load()
    }

    fn persist(persister: &mut Self, changeset: &ChangeSet) -> Result<(), Self::Error> {
        if changeset.is_empty() {
            return Ok(());
        }
        // The check makes a second handle on the same wallet fail with a conflict instead of
        // overwriting this handle's record.
        let key = Self::key(persister.next_seq);
        let mut batch = WriteBatch::new();
        batch.check(&persister.ns, key.clone(), None)?;
        batch.put(&persister.ns, key, Self::encode(changeset)?)?;
        persister.store.write(batch)?;
        persister.next_seq += 1;
        Ok(())
    }
}
