//! The `KvStore` contract.

use crate::namespace::check_key;
use crate::{Namespace, StoreError, Version, WriteBatch};

/// A value with the version of the write that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The version of the write that stored them.
    pub version: Version,
}

/// One record returned by [`KvStore::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, without its namespace.
    pub key: Vec<u8>,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The version of the write that stored them.
    pub version: Version,
}

/// What a [`KvStore::scan`] returns: the keys of one namespace that start with `prefix`,
/// in ascending byte order, optionally only those after a key and at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Only keys starting with these bytes (empty: every key of the namespace).
    pub prefix: &'a [u8],
    /// Only keys strictly greater than this one: pass the last key of the previous page.
    pub start_after: Option<&'a [u8]>,
    /// At most this many entries.
    pub limit: usize,
}

impl<'a> Scan<'a> {
    /// Every key of the namespace.
    pub fn all() -> Self {
        Self {
            prefix: &[],
            start_after: None,
            limit: usize::MAX,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &'a [u8]) -> Self {
        Self {
            prefix,
            start_after: None,
            limit: usize::MAX,
        }
    }

    /// Only keys strictly after `key`.
    pub fn after(mut self, key: &'a [u8]) -> Self {
        self.start_after = Some(key);
        self
    }

    /// At most `limit` entries.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Checks the prefix and `start_after` against the key limits (every backend calls this
    /// before touching its storage).
    pub fn validate(&self) -> Result<(), StoreError> {
        check_key(self.prefix)?;
        if let Some(k) = self.start_after {
            check_key(k)?;
        }
        Ok(())
    }

    /// The key range this scan selects, for backends: `(lower, lower_is_exclusive, upper)`,
    /// where keys must be `>= lower` (or `> lower` when `lower_is_exclusive`) and `< upper`
    /// (no upper bound when `None`). `limit` is not included.
    pub fn bounds(&self) -> (Vec<u8>, bool, Option<Vec<u8>>) {
        let upper = crate::namespace::prefix_successor(self.prefix);
        match self.start_after {
            Some(after) if after >= self.prefix => (after.to_vec(), true, upper),
            _ => (self.prefix.to_vec(), false, upper),
        }
    }
}

/// The one storage contract of anya: namespaced, versioned, durable key-value records.
///
/// # Contract
///
/// - **Keys** are byte strings of at most [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes (empty is
///   allowed) inside a [`Namespace`]; values are byte strings of at most
///   [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN) bytes (empty is allowed). Namespaces are disjoint.
/// - **Ordering**: [`scan`](Self::scan) returns keys in ascending unsigned-byte order
///   (`memcmp`), whatever the backend.
/// - **Atomicity**: a [`WriteBatch`] applies entirely or not at all, and no reader ever sees
///   part of one. Its operations apply in order.
/// - **Versions**: every successful write gets a [`Version`] that the store never hands out
///   again; every value it puts carries it. [`WriteBatch::check`] and
///   [`compare_and_swap`](Self::compare_and_swap) make a write conditional on a version, which
///   gives lost-update-free read-modify-write for any number of threads or processes.
/// - **Durability**: when a write returns `Ok`, it is on stable storage: it survives a kill of
///   the process and (for the embedded backends, which `fsync`) of the machine. A write that
///   returns an error applied nothing.
/// - **Not found** is not an error: [`get`](Self::get) returns `Ok(None)` and deleting a
///   missing key succeeds.
/// - **Consistency**: a read started after a write returned sees that write (read-your-writes
///   across all threads sharing the store).
pub trait KvStore: Send + Sync {
    /// The value at `key` with its version, or `None` if there is none.
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError>;

    /// Entries of `ns` selected by `scan`, in ascending key order.
    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError>;

    /// Applies `batch` atomically and durably; returns the version given to its puts.
    ///
    /// Fails with [`StoreError::Conflict`] and applies nothing if a check does not hold.
    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError>;

    /// Durably sets `key` to `value`; returns the new version.
    fn put(&self, ns: &Namespace, key: &[u8], value: &[u8]) -> Result<Version, StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(ns, key, value)?;
        self.write(batch)
    }

    /// Durably removes `key`; succeeds if it was already absent.
    fn delete(&self, ns: &Namespace, key: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.delete(ns, key)?;
        self.write(batch).map(|_| ())
    }

    /// Replaces the value at `key` only if its version is `expected` (`None`: only if absent).
    ///
    /// `new = None` deletes. Returns the version of this write, or [`StoreError::Conflict`]
    /// naming the version found.
    fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &[u8],
        expected: Option<Version>,
        new: Option<&[u8]>,
    ) -> Result<Version, StoreError> {
        let mut batch = WriteBatch::new();
        batch.check(ns, key, expected)?;
        match new {
            Some(value) => batch.put(ns, key, value)?,
            None => batch.delete(ns, key)?,
        };
        self.write(batch)
    }
}

impl<S: KvStore + ?Sized> KvStore for std::sync::Arc<S> {
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        (**self).get(ns, key)
    }
    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError> {
        (**self).scan(ns, scan)
    }
    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        (**self).write(batch)
    }
}

impl<S: KvStore + ?Sized> KvStore for Box<S> {
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        (**self).get(ns, key)
    }
    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError> {
        (**self).scan(ns, scan)
    }
    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        (**self).write(batch)
    }
}
