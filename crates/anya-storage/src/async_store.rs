//! An async face for any [`KvStore`], for callers on a tokio runtime.

use std::sync::Arc;

use crate::{Entry, KvStore, Namespace, Scan, StoreError, Version, Versioned, WriteBatch};

/// Runs the calls of a [`KvStore`] on tokio's blocking pool, so that a durable write (an
/// `fsync`) or a server round trip never stalls the async executor.
///
/// The contract is the store's own: same ordering, atomicity and durability.
#[derive(Debug)]
pub struct AsyncStore<S: ?Sized> {
    inner: Arc<S>,
}

impl<S: ?Sized> Clone for AsyncStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: KvStore + ?Sized + 'static> AsyncStore<S> {
    /// Wraps a shared store.
    pub fn new(inner: Arc<S>) -> Self {
        Self { inner }
    }

    /// The wrapped store, for synchronous use.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend {
                backend: "tokio",
                source: Box::new(e),
            })?
    }

    /// See [`KvStore::get`].
    pub async fn get(&self, ns: Namespace, key: Vec<u8>) -> Result<Option<Versioned>, StoreError> {
        self.run(move |s| s.get(&ns, &key)).await
    }

    /// See [`KvStore::scan`]: keys of `ns` starting with `prefix`, after `start_after`, at most
    /// `limit`.
    pub async fn scan(
        &self,
        ns: Namespace,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.run(move |s| {
            let mut scan = Scan::prefix(&prefix).limit(limit);
            if let Some(after) = &start_after {
                scan = scan.after(after);
            }
            s.scan(&ns, scan)
        })
        .await
    }

    /// See [`KvStore::write`].
    pub async fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        self.run(move |s| s.write(batch)).await
    }

    /// See [`KvStore::put`].
    pub async fn put(&self, ns: Namespace, key: Vec<u8>, value: Vec<u8>) -> Result<Version, StoreError> {
        self.run(move |s| s.put(&ns, &key, &value)).await
    }

    /// See [`KvStore::delete`].
    pub async fn delete(&self, ns: Namespace, key: Vec<u8>) -> Result<(), StoreError> {
        self.run(move |s| s.delete(&ns, &key)).await
    }

    /// See [`KvStore::compare_and_swap`].
    pub async fn compare_and_swap(
        &self,
        ns: Namespace,
        key: Vec<u8>,
        expected: Option<Version>,
        new: Option<Vec<u8>>,
    ) -> Result<Version, StoreError> {
        self.run(move |s| s.compare_and_swap(&ns, &key, expected, new.as_deref()))
            .await
    }
}
