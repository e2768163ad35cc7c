#![cfg(feature = "rocksdb")]
//! The RocksDB backend: the shared conformance suite, reopening, and what it does with files it
//! did not write or that were damaged.

use std::path::{Path, PathBuf};

use anya_storage::conformance::TempStore;
use anya_storage::{KvStore, Namespace, RocksDbOptions, RocksDbStore, Scan, StoreError, WriteBatch};

/// Meta key of the schema version, as the on-disk format in `backend/rocksdb.rs` documents it.
const META_SCHEMA: &[u8] = b"\x00anya/schema";

fn fresh() -> TempStore<RocksDbStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RocksDbStore::open(dir.path().join("db"), RocksDbOptions::default()).expect("open store");
    TempStore { store, dir }
}

anya_storage::kv_conformance_suite!(Some(fresh()));

fn ns(name: &str) -> Namespace {
    Namespace::new(name).expect("valid namespace")
}

fn open(path: &Path) -> Result<RocksDbStore, StoreError> {
    RocksDbStore::open(path, RocksDbOptions::default())
}

/// Every record of a raw RocksDB database, in key order.
fn raw_contents(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = rocksdb::DB::open_default(path).expect("raw open");
    let out = db
        .iterator(rocksdb::IteratorMode::Start)
        .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<Vec<_>, _>>()
        .expect("raw iteration");
    out
}

#[test]
fn reopen_keeps_values_versions_and_counter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let t = ns("t");
    let (v_a, v_b, v_last);
    {
        let store = open(&path).expect("open");
        v_a = store.put(&t, b"a", b"alpha").expect("put");
        v_b = store.put(&ns("other"), b"b", b"beta").expect("put");
        store.put(&t, b"gone", b"x").expect("put");
        let mut batch = WriteBatch::new();
        batch.delete(&t, b"gone").expect("op");
        v_last = store.write(batch).expect("delete batch");
    }
    let store = open(&path).expect("reopen");
    let a = store.get(&t, b"a").expect("get").expect("present");
    assert_eq!((a.value.as_slice(), a.version), (&b"alpha"[..], v_a));
    let b = store.get(&ns("other"), b"b").expect("get").expect("present");
    assert_eq!((b.value.as_slice(), b.version), (&b"beta"[..], v_b));
    assert_eq!(store.get(&t, b"gone").expect("get"), None);
    assert_eq!(store.scan(&t, Scan::all()).expect("scan").len(), 1);
    let v_new = store.put(&t, b"c", b"gamma").expect("put after reopen");
    assert!(
        v_new > v_last && v_last > v_b && v_b > v_a,
        "{v_a} {v_b} {v_last} {v_new}"
    );
    // Versions from before the restart still name exactly one write.
    let err = store
        .compare_and_swap(&t, b"a", Some(v_b), None)
        .expect_err("not a's version");
    assert!(err.is_conflict());
}

#[test]
fn missing_directory_without_create_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = RocksDbOptions::default();
    options.create_if_missing = false;
    let err = RocksDbStore::open(dir.path().join("absent"), options).expect_err("no database");
    assert!(matches!(err, StoreError::Backend { backend: "rocksdb", .. }), "{err:?}");
}

#[test]
fn second_handle_on_one_directory_is_refused() {
    let fixture = fresh();
    let err = open(&fixture.dir.path().join("db")).expect_err("directory is locked");
    assert!(matches!(err, StoreError::Backend { backend: "rocksdb", .. }), "{err:?}");
}

#[test]
fn regular_file_is_not_an_anya_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("file");
    std::fs::write(&path, b"just some bytes").expect("write file");
    let err = open(&path).expect_err("a file is not a store");
    assert!(matches!(err, StoreError::NotAnAnyaStore { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).expect("read file"), b"just some bytes");
}

#[test]
fn foreign_rocksdb_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    {
        let db = rocksdb::DB::open_default(&path).expect("raw open");
        db.put(b"their-key", b"their-value").expect("raw put");
        db.put(b"t\x00k", b"looks like ours").expect("raw put");
    }
    let before = raw_contents(&path);
    let err = open(&path).expect_err("foreign database");
    assert!(matches!(err, StoreError::NotAnAnyaStore { .. }), "{err:?}");
    assert_eq!(raw_contents(&path), before);
    assert_eq!(before.len(), 2);
}

#[test]
fn foreign_rocksdb_with_column_families_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, &path, ["theirs"]).expect("raw open");
        let cf = db.cf_handle("theirs").expect("column family just created");
        db.put_cf(&cf, b"k", b"v").expect("raw put");
    }
    let err = open(&path).expect_err("foreign database");
    assert!(matches!(err, StoreError::NotAnAnyaStore { .. }), "{err:?}");
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    open(&path).expect("create").put(&ns("t"), b"k", b"v").expect("put");
    {
        let db = rocksdb::DB::open_default(&path).expect("raw open");
        db.put(META_SCHEMA, 999u32.to_be_bytes()).expect("raw put");
    }
    let before = raw_contents(&path);
    let err = open(&path).expect_err("schema too new");
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 999,
                supported: 1
            }
        ),
        "{err:?}"
    );
    assert_eq!(raw_contents(&path), before);
}

#[test]
fn malformed_record_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    open(&path).expect("create").put(&ns("t"), b"ok", b"fine").expect("put");
    {
        let db = rocksdb::DB::open_default(&path).expect("raw open");
        db.put(b"t\x00short", b"abc").expect("raw put");
        db.put(b"t\x00zero", [0u8; 8]).expect("raw put");
    }
    let store = open(&path).expect("open");
    for key in [&b"short"[..], b"zero"] {
        let err = store.get(&ns("t"), key).expect_err("malformed record");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }
    let err = store.scan(&ns("t"), Scan::all()).expect_err("malformed record");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    // A check against the damaged record fails that write alone; other writes go on.
    let err = store
        .compare_and_swap(&ns("t"), b"short", None, Some(b"x"))
        .expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    store.put(&ns("t"), b"new", b"v").expect("unrelated write");
}

/// A store with enough incompressible data to fill real SST files, flushed out of the WAL.
fn store_with_sst(path: &Path) {
    let store = open(path).expect("create");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in 0..20u32 {
        let mut batch = WriteBatch::new();
        for i in 0..100u32 {
            let value: Vec<u8> = (0..256)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            batch.put(&ns("t"), (chunk * 100 + i).to_be_bytes(), value).expect("op");
        }
        store.write(batch).expect("write");
    }
    drop(store);
    let db = rocksdb::DB::open_default(path).expect("raw open");
    db.flush().expect("flush memtable to an SST file");
}

fn files_named(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    out.sort();
    out
}

/// Overwrites the middle half of `file` with garbage.
fn scribble(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read");
    let len = bytes.len();
    for (i, b) in bytes[len / 4..3 * len / 4].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151) ^ 0xa5;
    }
    std::fs::write(file, bytes).expect("write");
}

/// Opening and reading everything must fail somewhere, with a typed error and no panic.
fn assert_typed_failure(path: &Path) {
    let is_typed = |e: &StoreError| matches!(e, StoreError::Corrupt { .. } | StoreError::Backend { .. });
    let store = match open(path) {
        Err(err) => {
            assert!(is_typed(&err), "{err:?}");
            return;
        }
        Ok(store) => store,
    };
    let mut errors = Vec::new();
    if let Err(err) = store.scan(&ns("t"), Scan::all()) {
        errors.push(err);
    }
    for i in 0..2000u32 {
        if let Err(err) = store.get(&ns("t"), &i.to_be_bytes()) {
            errors.push(err);
        }
    }
    assert!(!errors.is_empty(), "damage went unnoticed");
    assert!(errors.iter().all(is_typed), "{errors:?}");
}

#[test]
fn scribbled_sst_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    store_with_sst(&path);
    let ssts = files_named(&path, |n| n.ends_with(".sst"));
    assert!(!ssts.is_empty(), "flush wrote no SST file");
    for sst in &ssts {
        scribble(sst);
    }
    assert_typed_failure(&path);
}

#[test]
fn truncated_sst_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    store_with_sst(&path);
    for sst in files_named(&path, |n| n.ends_with(".sst")) {
        let len = std::fs::metadata(&sst).expect("metadata").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&sst)
            .and_then(|f| f.set_len(len / 2))
            .expect("truncate");
    }
    assert_typed_failure(&path);
}

#[test]
fn scribbled_manifest_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    store_with_sst(&path);
    let manifests = files_named(&path, |n| n.starts_with("MANIFEST-"));
    assert!(!manifests.is_empty(), "no MANIFEST file");
    for manifest in &manifests {
        scribble(manifest);
    }
    assert_typed_failure(&path);
}
