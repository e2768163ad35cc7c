//! [`LdkStore`]: LDK's key-value store on anya's [`KvStore`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anya_storage::{KvStore, Namespace, Scan, StoreError};
use ldk_node::lightning::io;
use ldk_node::lightning::util::persist::{
    KVStore, KVStoreSync, KVSTORE_NAMESPACE_KEY_ALPHABET, KVSTORE_NAMESPACE_KEY_MAX_LEN,
};

/// How many entries one page of a [`list`](KVStoreSync::list) scan holds.
const LIST_PAGE: usize = 256;

/// The most bytes of listed values a store keeps for the reads that follow a listing.
pub const READ_AHEAD_BYTES: usize = 64 * 1024 * 1024;

/// A boxed future of an [`LdkStore`] call, as [`KVStore`] returns.
type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, io::Error>> + Send + 'static>>;

/// LDK's key-value store on anya's [`KvStore`]: channel monitors, the channel manager, the
/// network graph, payments and every other record of an LDK (or ldk-node) node in SQLite,
/// RocksDB or PostgreSQL, beside the rest of anya's state.
///
/// [`LdkStore`] implements lightning 0.2's [`KVStoreSync`] and [`KVStore`] (what ldk-node's
/// `Builder::build_with_store` takes). All of one node's records live in one anya namespace;
/// LDK's `(primary_namespace, secondary_namespace, key)` becomes the anya key
/// `primary/secondary/key`, which is unambiguous because LDK's alphabet has no `/`.
///
/// # Contract
///
/// - **Names**: every primary namespace, secondary namespace and key must be at most
///   [`KVSTORE_NAMESPACE_KEY_MAX_LEN`] characters of [`KVSTORE_NAMESPACE_KEY_ALPHABET`]; a key
///   must not be empty; a secondary namespace needs a primary one. Anything else is an
///   [`io::ErrorKind::InvalidInput`] error and touches nothing.
/// - **Durability**: a write or remove returns (its future completes) only after anya's store
///   committed it durably, so a channel monitor update that LDK is told is persisted survives a
///   kill of the process. `lazy` removes are not deferred.
/// - **Ordering**: writes and removes of one key take a version when they are called; one that
///   runs after a later-called one for the same key already ran is dropped, so the store never
///   goes back to an older value, whichever order the futures run in. Different keys run
///   concurrently, and concurrent writes share the backend's group commit.
/// - **Missing** keys read as [`io::ErrorKind::NotFound`]; listing an unknown namespace is empty.
/// - **Read-ahead**: a listing reads the values with the keys, and keeps them (up to
///   [`READ_AHEAD_BYTES`] in all) for the reads that follow it, which then cost no round trip
///   to the store: ldk-node loads its payments, and LDK its monitors, by listing a namespace
///   and reading every key. A kept value is one no write or remove of this store touched since
///   it was listed: a key with a write or remove in flight while the listing ran is not kept,
///   nothing of a listing is kept once any write began during it, a write or remove drops the
///   key's kept value when it is called, and a read takes the value it is served. Records
///   written to the namespace by anything but this store are not seen, as with one node per
///   namespace they never are.
///
/// The async methods run the store on tokio's blocking pool when called inside a tokio runtime
/// (ldk-node's case) and inline otherwise; the sync methods, called from a runtime's worker,
/// move off it for the call.
///
/// Cheap to clone: clones share the store, the write ordering and the read-ahead.
#[derive(Clone)]
pub struct LdkStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn KvStore>,
    ns: Namespace,
    /// The version the next write or remove takes; moved only under `state`'s lock.
    next_version: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per key with a write or remove in flight: the version of the last one applied.
    applied: HashMap<Vec<u8>, Arc<Mutex<u64>>>,
    /// Values listings read, by key, for the reads that follow them.
    read_ahead: HashMap<Vec<u8>, Vec<u8>>,
    /// The bytes of the values in `read_ahead`.
    read_ahead_bytes: usize,
}

impl State {
    fn drop_read_ahead(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let value = self.read_ahead.remove(key)?;
        self.read_ahead_bytes -= value.len();
        Some(value)
    }
}

impl std::fmt::Debug for LdkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdkStore")
            .field("ns", &self.inner.ns)
            .finish_non_exhaustive()
    }
}

impl LdkStore {
    /// LDK's store in namespace `ns` of `store`. Give each node its own namespace: two nodes
    /// on one namespace would overwrite each other's channel state.
    pub fn new(store: Arc<dyn KvStore>, ns: Namespace) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                ns,
                next_version: AtomicU64::new(1),
                state: Mutex::default(),
            }),
        }
    }

    /// The anya namespace the records live in.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.ns
    }

    /// The anya store underneath.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.inner.store
    }

    /// Runs `op` on tokio's blocking pool when called inside a runtime, inline otherwise.
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Inner) -> Result<T, io::Error> + Send + 'static,
    ) -> StoreFuture<T> {
        let inner = Arc::clone(&self.inner);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let task = handle.spawn_blocking(move || op(&inner));
                Box::pin(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(io::Error::new(io::ErrorKind::Other, format!("store task failed: {e}")))
                    })
                })
            }
            Err(_) => Box::pin(std::future::ready(op(&inner))),
        }
    }
}

/// Runs a blocking store call from a synchronous LDK method. LDK and ldk-node call the sync
/// methods from their runtime's worker threads too: there the call moves off the worker
/// (`block_in_place`), so that the other tasks go on and a backend that drives its own runtime
/// (the PostgreSQL client) may block; on a current-thread runtime it runs on a thread of its
/// own.
fn blocking<T: Send>(op: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => op(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(op),
        Ok(_) => std::thread::scope(|scope| match scope.spawn(op).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// Checks LDK's naming rules for a namespace pair (and `key`, when given).
fn check_names(primary: &str, secondary: &str, key: Option<&str>) -> Result<(), io::Error> {
    let bad = |what: &str, detail: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid {what}: {detail}"),
        ))
    };
    let names = [("primary namespace", primary), ("secondary namespace", secondary)]
        .into_iter()
        .chain(key.map(|k| ("key", k)));
    for (what, name) in names {
        if name.len() > KVSTORE_NAMESPACE_KEY_MAX_LEN {
            return bad(
                what,
                &format!("{} characters, more than {KVSTORE_NAMESPACE_KEY_MAX_LEN}", name.len()),
            );
        }
        if let Some(c) = name.chars().find(|c| !KVSTORE_NAMESPACE_KEY_ALPHABET.contains(*c)) {
            return bad(what, &format!("character {c:?} is outside LDK's alphabet"));
        }
    }
    if primary.is_empty() && !secondary.is_empty() {
        return bad("secondary namespace", "given without a primary namespace");
    }
    if key.is_some_and(str::is_empty) {
        return bad("key", "empty");
    }
    Ok(())
}

/// The anya key of an LDK record, once its names pass LDK's rules.
fn record_key(primary: &str, secondary: &str, key: &str) -> Result<Vec<u8>, io::Error> {
    check_names(primary, secondary, Some(key))?;
    Ok(format!("{primary}/{secondary}/{key}").into_bytes())
}

/// The prefix of every anya key of an LDK namespace pair, once its names pass LDK's rules.
fn namespace_prefix(primary: &str, secondary: &str) -> Result<Vec<u8>, io::Error> {
    check_names(primary, secondary, None)?;
    Ok(format!("{primary}/{secondary}/").into_bytes())
}

/// The keys of `map` that start with `prefix`.
fn keys_under<V>(map: &HashMap<Vec<u8>, V>, prefix: &[u8]) -> Vec<Vec<u8>> {
    map.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
}

/// A future that fails at once.
fn failed<T: Send + 'static>(e: io::Error) -> StoreFuture<T> {
    Box::pin(std::future::ready(Err(e)))
}

fn store_error(err: StoreError) -> io::Error {
    io::Error::new(io::ErrorKind::Other, err)
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self, key: &[u8]) -> Result<Vec<u8>, io::Error> {
        if let Some(value) = self.state().drop_read_ahead(key) {
            return Ok(value);
        }
        match self.store.get(&self.ns, key).map_err(store_error)? {
            Some(v) => Ok(v.value),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such LDK record")),
        }
    }

    /// The keys under `prefix`, their values kept for the reads that follow (see [`LdkStore`]).
    fn list(&self, prefix: &[u8]) -> Result<Vec<String>, io::Error> {
        // What was in flight when the listing began: those keys may change under the scan.
        let (start, in_flight) = {
            let mut state = self.state();
            for key in keys_under(&state.read_ahead, prefix) {
                state.drop_read_ahead(&key);
            }
            let in_flight = keys_under(&state.applied, prefix);
            (self.next_version.load(Ordering::SeqCst), in_flight)
        };
        let mut keys = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        loop {
            let mut scan = Scan::prefix(prefix).limit(LIST_PAGE);
            if let Some(after) = &last {
                scan = scan.after(after);
            }
            let page = self.store.scan(&self.ns, scan).map_err(store_error)?;
            let full = page.len() == LIST_PAGE;
            let mut state = self.state();
            // A write that began since the listing did would go unseen.
            let keep = self.next_version.load(Ordering::SeqCst) == start;
            for entry in page {
                let name = std::str::from_utf8(&entry.key[prefix.len()..])
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "an LDK key is not UTF-8"))?;
                keys.push(name.to_owned());
                if keep
                    && !in_flight.contains(&entry.key)
                    && state.read_ahead_bytes + entry.value.len() <= READ_AHEAD_BYTES
                {
                    state.read_ahead_bytes += entry.value.len();
                    if let Some(old) = state.read_ahead.insert(entry.key.clone(), entry.value) {
                        state.read_ahead_bytes -= old.len();
                    }
                }
                last = Some(entry.key);
            }
            if !full {
                return Ok(keys);
            }
        }
    }

    /// Takes the next version for a write or remove of `key` (at call time, which fixes the
    /// order) and the slot that records the last version applied to it.
    /// Also drops the value a listing kept for `key`.
    fn begin(&self, key: &[u8]) -> (Arc<Mutex<u64>>, u64) {
        let mut state = self.state();
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        state.drop_read_ahead(key);
        let slot = Arc::clone(state.applied.entry(key.to_vec()).or_default());
        (slot, version)
    }

    /// Applies a write (`Some`) or remove (`None`) of `key` unless a later-called one already
    /// ran; then forgets the key's slot if nothing else is in flight for it.
    fn apply(&self, slot: Arc<Mutex<u64>>, version: u64, key: &[u8], value: Option<Vec<u8>>) -> Result<(), io::Error> {
        let result = {
            let mut last = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if version < *last {
                Ok(())
            } else {
                let done = match value {
                    Some(value) => self.store.put(&self.ns, key, &value).map(drop),
                    None => self.store.delete(&self.ns, key),
                };
                if done.is_ok() {
                    *last = version;
                }
                done.map_err(store_error)
            }
        };
        let mut state = self.state();
        // The map's reference and ours: no other call holds the slot, and a later one makes a
        // new slot whose version is above every version applied so far.
        if Arc::strong_count(&slot) == 2 {
            state.applied.remove(key);
        }
        result
    }
}

impl KVStoreSync for LdkStore {
    fn read(&self, primary_namespace: &str, secondary_namespace: &str, key: &str) -> Result<Vec<u8>, io::Error> {
        let key = record_key(primary_namespace, secondary_namespace, key)?;
        blocking(|| self.inner.read(&key))
    }

    fn write(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> Result<(), io::Error> {
        let key = record_key(primary_namespace, secondary_namespace, key)?;
        let (slot, version) = self.inner.begin(&key);
        blocking(|| self.inner.apply(slot, version, &key, Some(buf)))
    }

    fn remove(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        _lazy: bool,
    ) -> Result<(), io::Error> {
        let key = record_key(primary_namespace, secondary_namespace, key)?;
        let (slot, version) = self.inner.begin(&key);
        blocking(|| self.inner.apply(slot, version, &key, None))
    }

    fn list(&self, primary_namespace: &str, secondary_namespace: &str) -> Result<Vec<String>, io::Error> {
        let prefix = namespace_prefix(primary_namespace, secondary_namespace)?;
        blocking(|| self.inner.list(&prefix))
    }
}

impl KVStore for LdkStore {
    fn read(&self, primary_namespace: &str, secondary_namespace: &str, key: &str) -> StoreFuture<Vec<u8>> {
        let key = match record_key(primary_namespace, secondary_namespace, key) {
            Ok(key) => key,
            Err(e) => return failed(e),
        };
        self.run(move |inner| inner.read(&key))
    }

    fn write(&self, primary_namespace: &str, secondary_namespace: &str, key: &str, buf: Vec<u8>) -> StoreFuture<()> {
        let key = match record_key(primary_namespace, secondary_namespace, key) {
            Ok(key) => key,
            Err(e) => return failed(e),
        };
        let (slot, version) = self.inner.begin(&key);
        self.run(move |inner| inner.apply(slot, version, &key, Some(buf)))
    }

    fn remove(&self, primary_namespace: &str, secondary_namespace: &str, key: &str, _lazy: bool) -> StoreFuture<()> {
        let key = match record_key(primary_namespace, secondary_namespace, key) {
            Ok(key) => key,
            Err(e) => return failed(e),
        };
        let (slot, version) = self.inner.begin(&key);
        self.run(move |inner| inner.apply(slot, version, &key, None))
    }

    fn list(&self, primary_namespace: &str, secondary_namespace: &str) -> StoreFuture<Vec<String>> {
        let prefix = match namespace_prefix(primary_namespace, secondary_namespace) {
            Ok(prefix) => prefix,
            Err(e) => return failed(e),
        };
        self.run(move |inner| inner.list(&prefix))
    }
}
