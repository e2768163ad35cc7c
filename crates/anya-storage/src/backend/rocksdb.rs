//! The embedded RocksDB backend, with `fsync`ed group commit.
//!
//! # On-disk format (schema 1)
//!
//! Everything lives in the default column family.
//!
//! - A record is stored at `namespace ++ 0x00 ++ key` with value
//!   `version (8 bytes, big-endian) ++ value`. Namespaces never contain NUL, so no namespace is
//!   a byte prefix of another one's keys, and byte order inside a namespace is the key order.
//! - Meta records start with `0x00`, which no namespace does: `0x00 "anya/schema"` holds the
//!   schema version (`u32`, big-endian) and `0x00 "anya/last-version"` the last version handed
//!   out (`u64`, big-endian), advanced in the same RocksDB write batch as the records it versions.
//!
//! Only the group committer writes, so it keeps the counter in memory after open. RocksDB
//! locks its directory, so one store handle at a time owns a database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, DBRecoveryMode, ErrorKind, Options, ReadOptions, WriteOptions, DB,
    DEFAULT_COLUMN_FAMILY_NAME,
};

use crate::batch::Op;
use crate::group_commit::{GroupCommit, GroupWriter};
use crate::namespace::check_key;
use crate::{
    Entry, KvStore, Namespace, Scan, StoreError, Version, Versioned, WriteBatch, MAX_KEY_LEN, MAX_NAMESPACE_LEN,
};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

const BACKEND: &str = "rocksdb";
const META_SCHEMA: &[u8] = b"\x00anya/schema";
const META_LAST_VERSION: &[u8] = b"\x00anya/last-version";
/// Longest physical key: namespace, separator, key.
const MAX_PHYSICAL_KEY: usize = MAX_NAMESPACE_LEN + 1 + MAX_KEY_LEN;

/// Options for [`RocksDbStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RocksDbOptions {
    /// Create the database if the directory holds none (default `true`).
    pub create_if_missing: bool,
    /// Size of the block cache shared by all reads, in bytes (default 32 MiB).
    pub cache_size_bytes: usize,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        Self {
            create_if_missing: true,
            cache_size_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A [`KvStore`] in a RocksDB database directory.
pub struct RocksDbStore {
    path: PathBuf,
    db: Arc<DB>,
    writer: GroupCommit<RocksDbWriter>,
}

impl std::fmt::Debug for RocksDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Our own finding that stored bytes do not follow the format.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Malformed(&'static str);

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt {
        source: Box::new(Malformed(what)),
    }
}

fn map_err(err: rocksdb::Error) -> StoreError {
    match err.kind() {
        ErrorKind::Corruption => StoreError::Corrupt { source: Box::new(err) },
        _ => StoreError::Backend {
            backend: BACKEND,
            source: Box::new(err),
        },
    }
}

/// The stored record of `value` written at `version` (what [`decode`] reads), into a reused
/// buffer.
fn encode_into(out: &mut Vec<u8>, version: Version, value: &[u8]) {
    out.clear();
    out.extend_from_slice(&version.get().to_be_bytes());
    out.extend_from_slice(value);
}

/// [`physical_key`] into a reused buffer.
fn physical_key_into(out: &mut Vec<u8>, ns: &Namespace, key: &[u8]) {
    out.clear();
    out.extend_from_slice(ns.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(key);
}

fn physical_key(ns: &Namespace, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ns.as_str().len() + 1 + key.len());
    physical_key_into(&mut out, ns, key);
    out
}

/// Runs `f` on the physical key, built on the stack when it fits (it always does for valid
/// keys), so that point reads do not allocate for it.
fn with_physical_key<T>(namespace: &Namespace, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    let ns = namespace.as_str().as_bytes();
    let len = ns.len() + 1 + key.len();
    let mut stack = [0u8; MAX_PHYSICAL_KEY];
    match stack.get_mut(..len) {
        Some(buf) => {
            let (head, tail) = buf.split_at_mut(ns.len());
            head.copy_from_slice(ns);
            // `tail` is the separator (left as 0) followed by the key.
            if let Some((_, rest)) = tail.split_first_mut() {
                rest.copy_from_slice(key);
            }
            f(buf)
        }
        None => f(&physical_key(namespace, key)),
    }
}

/// Splits a stored value into its version and user bytes.
fn decode(raw: &[u8]) -> Result<(Version, &[u8]), StoreError> {
    let (head, value) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("record shorter than its version"))?;
    let version = Version::new(u64::from_be_bytes(*head)).ok_or_else(|| corrupt("record has version 0"))?;
    Ok((version, value))
}

impl RocksDbStore {
    /// Opens the store in directory `path`, creating it if `options` allow.
    ///
    /// Fails with [`StoreError::NotAnAnyaStore`] when `path` is not a directory or holds a
    /// RocksDB database that anya did not create, and with [`StoreError::SchemaTooNew`] when a
    /// newer anya wrote it; in both cases nothing is written to it.
    pub fn open(path: impl AsRef<Path>, options: RocksDbOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(StoreError::NotAnAnyaStore {
                    detail: format!("{} is not a directory", path.display()),
                })
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(StoreError::Backend {
                    backend: BACKEND,
                    source: Box::new(err),
                })
            }
        }
        let opts = db_options(&options);
        if path.join("CURRENT").is_file() {
            // Opening a database without naming all its column families fails; one with
            // several is someone else's.
            let families = DB::list_cf(&opts, path).map_err(map_err)?;
            if let Some(other) = families.iter().find(|cf| *cf != DEFAULT_COLUMN_FAMILY_NAME) {
                return Err(StoreError::NotAnAnyaStore {
                    detail: format!("RocksDB database with column family {other:?}"),
                });
            }
        }
        let db = Arc::new(DB::open(&opts, path).map_err(map_err)?);
        let last_version = read_or_init_meta(&db)?;
        tracing::debug!(path = %path.display(), last_version, "opened rocksdb store");
        let writer = GroupCommit::new(RocksDbWriter {
            db: Arc::clone(&db),
            last_version,
        });
        Ok(Self {
            path: path.to_path_buf(),
            db,
            writer,
        })
    }
}

fn db_options(options: &RocksDbOptions) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(options.create_if_missing);
    opts.set_paranoid_checks(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    // Every acknowledged write was fsynced, so only an unacknowledged tail may be torn; any
    // other WAL damage must stop the open rather than silently roll acknowledged writes back
    // (the default point-in-time mode would).
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(options.cache_size_bytes));
    opts.set_block_based_table_factory(&table);
    opts
}

/// Checks the schema and returns the last version handed out; writes the meta records to an
/// empty database only.
fn read_or_init_meta(db: &DB) -> Result<u64, StoreError> {
    if let Some(raw) = db.get_pinned(META_SCHEMA).map_err(map_err)? {
        let bytes = raw
            .as_ref()
            .try_into()
            .map_err(|_| corrupt("schema version is not 4 bytes"))?;
        let found = u32::from_be_bytes(bytes);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found == 0 {
            return Err(corrupt("schema version 0"));
        }
        let raw = db
            .get_pinned(META_LAST_VERSION)
            .map_err(map_err)?
            .ok_or_else(|| corrupt("schema version without a version counter"))?;
        let bytes = raw
            .as_ref()
            .try_into()
            .map_err(|_| corrupt("version counter is not 8 bytes"))?;
        return Ok(u64::from_be_bytes(bytes));
    }
    let mut iter = db.raw_iterator();
    iter.seek_to_first();
    if iter.valid() {
        return Err(StoreError::NotAnAnyaStore {
            detail: "RocksDB database holding records but no anya schema version".into(),
        });
    }
    iter.status().map_err(map_err)?;
    drop(iter);
    let mut batch = rocksdb::WriteBatch::default();
    batch.put(META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
    batch.put(META_LAST_VERSION, 0u64.to_be_bytes());
    db.write_opt(batch, &sync_write()).map_err(map_err)?;
    Ok(0)
}

fn sync_write() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl KvStore for RocksDbStore {
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let raw = with_physical_key(ns, key, |pk| self.db.get_pinned(pk)).map_err(map_err)?;
        match raw {
            None => Ok(None),
            Some(raw) => {
                let (version, value) = decode(&raw)?;
                Ok(Some(Versioned {
                    value: value.to_vec(),
                    version,
                }))
            }
        }
    }

    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError> {
        scan.validate()?;
        if scan.limit == 0 {
            return Ok(Vec::new());
        }
        let (lower, exclusive, upper) = scan.bounds();
        let mut start = physical_key(ns, &lower);
        if exclusive {
            // The smallest key strictly greater than `lower`.
            start.push(0);
        }
        let end = match upper {
            Some(successor) => physical_key(ns, &successor),
            // Past every key of the namespace: the separator 0x00 plus one.
            None => {
                let mut end = ns.as_str().as_bytes().to_vec();
                end.push(1);
                end
            }
        };
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end);
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek(&start);
        let header = ns.as_str().len() + 1;
        let mut out = Vec::new();
        while out.len() < scan.limit {
            let Some((pk, raw)) = iter.item() else { break };
            let key = pk.get(header..).ok_or_else(|| corrupt("key outside its namespace"))?;
            let (version, value) = decode(raw)?;
            out.push(Entry {
                key: key.to_vec(),
                value: value.to_vec(),
                version,
            });
            iter.next();
        }
        iter.status().map_err(map_err)?;
        Ok(out)
    }

    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        self.writer.write(batch)
    }
}

/// The only writer of the database.
struct RocksDbWriter {
    db: Arc<DB>,
    /// The last version handed out, as stored in `META_LAST_VERSION`.
    last_version: u64,
}

/// A write staged by earlier batches of the group: `Some(version)` put, `None` deleted.
type Overlay = HashMap<Vec<u8>, Option<Version>>;

impl RocksDbWriter {
    /// The version `pk` has after the writes staged so far.
    fn current(&self, pk: &[u8], local: &Overlay, group: &Overlay) -> Result<Option<Version>, StoreError> {
        if let Some(staged) = local.get(pk).or_else(|| group.get(pk)) {
            return Ok(*staged);
        }
        match self.db.get_pinned(pk).map_err(map_err)? {
            None => Ok(None),
            Some(raw) => Ok(Some(decode(&raw)?.0)),
        }
    }

    /// Evaluates one batch against the database and `group`; on success appends it to `out`
    /// and records its writes in `group`. On failure nothing is staged.
    fn stage(
        &self,
        ops: Vec<Op>,
        version: Version,
        group: &mut Overlay,
        track: bool,
        out: &mut rocksdb::WriteBatch,
    ) -> Result<(), StoreError> {
        if !ops.iter().any(|op| matches!(op, Op::Check { .. })) {
            return self.stage_unchecked(ops, version, track.then_some(group), out);
        }
        let mut local = Overlay::new();
        let mut staged: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { ns, key, value } => {
                    let pk = physical_key(&ns, &key);
                    local.insert(pk.clone(), Some(version));
                    staged.push((pk, Some(value)));
                }
                Op::Delete { ns, key } => {
                    let pk = physical_key(&ns, &key);
                    local.insert(pk.clone(), None);
                    staged.push((pk, None));
                }
                Op::Check { ns, key, expected } => {
                    let found = self.current(&physical_key(&ns, &key), &local, group)?;
                    if found != expected {
                        return Err(StoreError::conflict(&ns, &key, expected, found));
                    }
                }
            }
        }
        let mut record = Vec::new();
        for (pk, value) in staged {
            match value {
                Some(value) => {
                    encode_into(&mut record, version, &value);
                    out.put(&pk, &record);
                }
                None => out.delete(&pk),
            }
        }
        group.extend(local);
        Ok(())
    }

    /// Stages a batch without checks, which cannot fail: straight into `out`, with no staging
    /// list. `group` records the writes only when a later batch of the group checks keys.
    fn stage_unchecked(
        &self,
        ops: Vec<Op>,
        version: Version,
        mut group: Option<&mut Overlay>,
        out: &mut rocksdb::WriteBatch,
    ) -> Result<(), StoreError> {
        let mut pk = Vec::new();
        let mut record = Vec::new();
        for op in ops {
            match op {
                Op::Put { ns, key, value } => {
                    physical_key_into(&mut pk, &ns, &key);
                    encode_into(&mut record, version, &value);
                    out.put(&pk, &record);
                    if let Some(group) = group.as_deref_mut() {
                        group.insert(pk.clone(), Some(version));
                    }
                }
                Op::Delete { ns, key } => {
                    physical_key_into(&mut pk, &ns, &key);
                    out.delete(&pk);
                    if let Some(group) = group.as_deref_mut() {
                        group.insert(pk.clone(), None);
                    }
                }
                Op::Check { .. } => unreachable!("stage_unchecked is only called for batches without checks"),
            }
        }
        Ok(())
    }
}

impl GroupWriter for RocksDbWriter {
    fn commit_group(&mut self, batches: Vec<WriteBatch>) -> Result<Vec<Result<Version, StoreError>>, StoreError> {
        let mut out = rocksdb::WriteBatch::default();
        let mut group = Overlay::new();
        let mut last = self.last_version;
        let mut results = Vec::with_capacity(batches.len());
        // Staged writes need tracking only for the checks of later batches in the group.
        let last_checked = batches.iter().rposition(WriteBatch::has_checks);
        for (i, batch) in batches.into_iter().enumerate() {
            let track = last_checked.is_some_and(|last| i < last);
            let version = last
                .checked_add(1)
                .and_then(Version::new)
                .ok_or_else(|| corrupt("version counter exhausted"))?;
            // A failed batch (conflict, unreadable record) fails alone and stages nothing.
            let result = self.stage(batch.into_ops(), version, &mut group, track, &mut out);
            if result.is_ok() {
                last = version.get();
            }
            results.push(result.map(|()| version));
        }
        if last != self.last_version {
            out.put(META_LAST_VERSION, last.to_be_bytes());
            self.db.write_opt(out, &sync_write()).map_err(map_err)?;
            self.last_version = last;
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One group mixing batches with and without checks: a check sees the writes of the batches
    /// before it in the group, whether or not those batches had checks of their own, and a
    /// failed check leaves out its whole batch and consumes no version.
    #[test]
    fn checks_in_a_group_see_earlier_unchecked_batches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RocksDbStore::open(dir.path().join("db"), RocksDbOptions::default()).expect("open");
        let ns = Namespace::new("group").expect("ns");
        // "k" exists before the group, so only the group's own writes can satisfy its checks.
        store.put(&ns, b"k", b"old").expect("put");
        let base = read_or_init_meta(&store.db).expect("meta");
        let mut writer = RocksDbWriter {
            db: Arc::clone(&store.db),
            last_version: base,
        };
        let v = |n: u64| Version::new(base + n).expect("nonzero");
        let batch = |f: &dyn Fn(&mut WriteBatch) -> Result<&mut WriteBatch, StoreError>| {
            let mut b = WriteBatch::new();
            f(&mut b).expect("op");
            b
        };
        let results = writer
            .commit_group(vec![
                batch(&|b| b.put(&ns, "k", "a")),
                batch(&|b| b.check(&ns, "k", Some(v(1)))?.put(&ns, "k", "b")),
                batch(&|b| b.check(&ns, "k", None)?.put(&ns, "x", "never")),
                batch(&|b| b.delete(&ns, "k")),
                batch(&|b| b.check(&ns, "k", None)?.put(&ns, "y", "1")),
                batch(&|b| b.put(&ns, "z", "tail")),
            ])
            .expect("group committed");
        let versions: Vec<_> = results.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(
            versions,
            [Some(v(1)), Some(v(2)), None, Some(v(3)), Some(v(4)), Some(v(5))]
        );
        assert!(
            matches!(results[2], Err(StoreError::Conflict { .. })),
            "{:?}",
            results[2]
        );
        assert_eq!(store.get(&ns, b"k").expect("get"), None);
        assert_eq!(store.get(&ns, b"x").expect("get"), None);
        let y = store.get(&ns, b"y").expect("get").expect("y written");
        assert_eq!((y.value.as_slice(), y.version), (&b"1"[..], v(4)));
        let z = store.get(&ns, b"z").expect("get").expect("z written");
        assert_eq!((z.value.as_slice(), z.version), (&b"tail"[..], v(5)));
        assert_eq!(read_or_init_meta(&store.db).expect("meta"), base + 5);
    }
}
