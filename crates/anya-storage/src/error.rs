//! The storage error.

use crate::{Namespace, Version};

/// A boxed error from a backend library, kept as the `source()` of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of every [`KvStore`](crate::KvStore) operation.
///
/// Backends map their libraries' errors onto these variants; callers never need to name
/// rusqlite, rocksdb or postgres types. Every error leaves the store as it was: a failed write
/// applied nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A namespace is empty, too long or has a forbidden character.
    #[error("invalid namespace ({len} bytes): 1 to 128 bytes of [A-Za-z0-9_-./:] required")]
    InvalidNamespace {
        /// Its length in bytes.
        len: usize,
    },
    /// A key is longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    #[error("key is {len} bytes, longer than {max}")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is larger than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN).
    #[error("value is {len} bytes, larger than {max}")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A precondition of a batch failed: the key's version is not the one expected.
    #[error("version conflict on {ns}/{key_hex}: expected {expected:?}, found {found:?}")]
    Conflict {
        /// Namespace of the key.
        ns: Namespace,
        /// The key, hex-encoded (keys may be binary).
        key_hex: String,
        /// The version the batch required (`None`: absent).
        expected: Option<Version>,
        /// The version the key has (`None`: absent).
        found: Option<Version>,
    },
    /// The database was written by a newer anya schema than this build understands; it was
    /// left untouched.
    #[error("database schema version {found} is newer than the {supported} this build supports")]
    SchemaTooNew {
        /// The version recorded in the database.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The path holds something that is not an anya store (another application's database, or
    /// not a database at all); it was left untouched.
    #[error("not an anya store: {detail}")]
    NotAnAnyaStore {
        /// What was found instead.
        detail: String,
    },
    /// The database is damaged (truncated, overwritten, failed checksum).
    #[error("database is corrupt")]
    Corrupt {
        /// The backend's report.
        #[source]
        source: BoxError,
    },
    /// The backend failed for another reason (I/O, connection, server error).
    #[error("{backend} backend error")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The library's error.
        #[source]
        source: BoxError,
    },
    /// A thread holding a store lock panicked; the store refuses further use from this handle.
    #[error("store lock poisoned by a panic in another thread")]
    Poisoned,
}

impl StoreError {
    /// The [`StoreError::Conflict`] for `key`, for backends outside this crate.
    pub fn conflict(ns: &Namespace, key: &[u8], expected: Option<Version>, found: Option<Version>) -> Self {
        StoreError::Conflict {
            ns: ns.clone(),
            key_hex: hex(key),
            expected,
            found,
        }
    }

    /// Whether this is a [`StoreError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
