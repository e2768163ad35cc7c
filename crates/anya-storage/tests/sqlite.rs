#![cfg(feature = "sqlite")]

use std::fs;
use std::path::Path;

use anya_storage::conformance::TempStore;
use anya_storage::{KvStore, Namespace, Scan, SqliteOptions, SqliteStore, StoreError, WriteBatch};
use proptest::prelude::*;

fn fresh() -> TempStore<SqliteStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("kv.db"), SqliteOptions::default()).expect("open");
    TempStore { store, dir }
}

anya_storage::kv_conformance_suite!(Some(fresh()));

fn ns() -> Namespace {
    Namespace::new("t").expect("valid")
}

fn open(path: &Path) -> Result<SqliteStore, StoreError> {
    SqliteStore::open(path, SqliteOptions::default())
}

fn populate(path: &Path, n: u32) {
    let store = open(path).expect("open");
    let mut batch = WriteBatch::new();
    for i in 0..n {
        batch.put(&ns(), i.to_be_bytes(), vec![i as u8; 700]).expect("op");
    }
    store.write(batch).expect("write");
}

#[test]
fn reopen_keeps_values_and_versions_grow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.db");
    let (v1, v2) = {
        let s = open(&path).expect("open");
        let v1 = s.put(&ns(), b"a", b"1").expect("put");
        let v2 = s.put(&ns(), b"b", b"2").expect("put");
        s.delete(&ns(), b"b").expect("delete");
        (v1, v2)
    };
    let s = open(&path).expect("reopen");
    assert_eq!(s.get(&ns(), b"a").expect("get").expect("present").version, v1);
    let v3 = s.put(&ns(), b"b", b"3").expect("put");
    assert!(
        v3 > v2,
        "a version after reopen ({v3}) is new, even though the newest key was deleted"
    );
    s.check_integrity().expect("healthy database");
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.db");
    populate(&path, 10);
    {
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", 99).expect("bump schema");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("leave WAL so the file is all there is");
    }
    let before = fs::read(&path).expect("read");
    let err = open(&path).expect_err("newer schema");
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: anya_storage::backend::sqlite::SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        fs::read(&path).expect("read"),
        before,
        "refused database is left byte-identical"
    );
}

#[test]
fn foreign_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.execute_batch(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER); INSERT INTO accounts VALUES (1, 100);",
        )
        .expect("foreign schema");
    }
    let before = fs::read(&path).expect("read");
    let err = open(&path).expect_err("foreign database");
    assert!(matches!(err, StoreError::NotAnAnyaStore { .. }), "{err:?}");
    assert_eq!(fs::read(&path).expect("read"), before);
}

#[test]
fn file_of_another_format_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in [
        ("json.db", &b"{\"not\": \"a database\"}"[..]),
        ("short.db", b"SQLite"),
        ("zeros.db", &[0u8; 4096]),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, content).expect("write");
        let err = open(&path).expect_err("not sqlite");
        assert!(matches!(err, StoreError::NotAnAnyaStore { .. }), "{name}: {err:?}");
        assert_eq!(fs::read(&path).expect("read"), content, "{name} untouched");
        assert!(
            !dir.path().join(format!("{name}-wal")).exists(),
            "no WAL created beside {name}"
        );
    }
    let err = open(dir.path()).expect_err("a directory");
    assert!(matches!(err, StoreError::NotAnAnyaStore { .. }), "{err:?}");
}

#[test]
fn truncated_database_gives_typed_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.db");
    populate(&path, 2000);
    {
        // Fold the WAL into the main file so that truncating the file truncates the data.
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "journal_mode", "DELETE").expect("checkpoint");
    }
    let full = fs::read(&path).expect("read");
    for cut in [full.len() / 2, full.len() / 4, 4096 + 100, 100, 17] {
        fs::write(&path, &full[..cut]).expect("truncate");
        let outcome = open(&path).and_then(|s| {
            s.scan(&ns(), Scan::all())?;
            s.check_integrity()
        });
        let err = outcome.expect_err("truncated database must not read as healthy");
        assert!(
            matches!(err, StoreError::Corrupt { .. } | StoreError::NotAnAnyaStore { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn invalid_namespaces_are_typed_errors() {
    assert!(matches!(
        Namespace::new(""),
        Err(StoreError::InvalidNamespace { len: 0 })
    ));
    assert!(matches!(
        Namespace::new("x".repeat(129)),
        Err(StoreError::InvalidNamespace { len: 129 })
    ));
    assert!(matches!(
        Namespace::new("a\u{0}b"),
        Err(StoreError::InvalidNamespace { .. })
    ));
}

#[test]
fn two_handles_on_one_file_share_versions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.db");
    let a = open(&path).expect("open a");
    let b = open(&path).expect("open b");
    let va = a.put(&ns(), b"k", b"a").expect("put a");
    let vb = b.put(&ns(), b"k", b"b").expect("put b");
    assert!(vb > va);
    assert!(a
        .compare_and_swap(&ns(), b"k", Some(va), Some(b"stale"))
        .expect_err("stale")
        .is_conflict());
    assert_eq!(a.get(&ns(), b"k").expect("get").expect("present").value, b"b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_adapter_round_trips() {
    let fixture = fresh();
    let store = anya_storage::AsyncStore::new(std::sync::Arc::new(fixture.store));
    let v = store.put(ns(), b"k".to_vec(), b"v".to_vec()).await.expect("put");
    let got = store.get(ns(), b"k".to_vec()).await.expect("get").expect("present");
    assert_eq!((got.value, got.version), (b"v".to_vec(), v));
    assert_eq!(store.scan(ns(), Vec::new(), None, 10).await.expect("scan").len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes where a database should be: a typed error or an empty-looking store,
    /// never a panic, and the bytes stay as they were.
    #[test]
    fn random_bytes_as_database(bytes in proptest::collection::vec(any::<u8>(), 1..8192), magic in any::<bool>()) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fuzz.db");
        let mut content = bytes;
        if magic {
            // Give SQLite's parser a real header to get past, so the fuzzing reaches deeper.
            let n = content.len().min(16);
            content[..n].copy_from_slice(&b"SQLite format 3\0"[..n]);
        }
        fs::write(&path, &content).expect("write");
        if let Ok(store) = open(&path) {
            let _ = store.scan(&ns(), Scan::all());
        } else {
            prop_assert_eq!(fs::read(&path).expect("read"), content);
        }
    }

    /// A batch either applies entirely or not at all, compared against a model map.
    #[test]
    fn batches_match_a_model(ops in proptest::collection::vec((0u8..6, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..4)), 1..40)) {
        let fixture = fresh();
        let mut model = std::collections::BTreeMap::new();
        for chunk in ops.chunks(4) {
            let mut batch = WriteBatch::new();
            let mut next = model.clone();
            for (k, is_put, v) in chunk {
                if *is_put {
                    batch.put(&ns(), vec![*k], v.clone()).expect("op");
                    next.insert(vec![*k], v.clone());
                } else {
                    batch.delete(&ns(), vec![*k]).expect("op");
                    next.remove(&vec![*k]);
                }
            }
            fixture.write(batch).expect("write");
            model = next;
        }
        let got: std::collections::BTreeMap<_, _> = fixture.scan(&ns(), Scan::all()).expect("scan").into_iter().map(|e| (e.key, e.value)).collect();
        prop_assert_eq!(got, model);
    }
}

/// A schema-1 database, written the way the first release wrote it, opens as schema 2 with
/// every record, version and namespace intact, and keeps counting versions from where it was.
#[test]
fn schema_1_database_is_migrated_forward() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v1.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("raw");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE anya_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO anya_meta (name, value) VALUES ('last_version', 40);
             CREATE TABLE anya_kv (
                 ns TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, version INTEGER NOT NULL,
                 PRIMARY KEY (ns, key)
             ) WITHOUT ROWID;
             PRAGMA application_id = 1634629985;
             PRAGMA user_version = 1;",
        )
        .expect("schema 1");
        for (i, ns) in ["wallet/a", "hsm.keys", "t"].iter().enumerate() {
            for k in 0..10u8 {
                conn.execute(
                    "INSERT INTO anya_kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![ns, vec![k, 0xff], vec![k; 3 + i], 1 + i as i64 * 10 + i64::from(k)],
                )
                .expect("row");
            }
        }
    }
    let store = open(&path).expect("migrated");
    for (i, name) in ["wallet/a", "hsm.keys", "t"].iter().enumerate() {
        let ns = Namespace::new(*name).expect("ns");
        let entries = store.scan(&ns, Scan::all()).expect("scan");
        assert_eq!(entries.len(), 10, "{name}");
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(e.key, vec![k as u8, 0xff]);
            assert_eq!(e.value, vec![k as u8; 3 + i]);
            assert_eq!(e.version.get(), 1 + i as u64 * 10 + k as u64);
        }
        let got = store.get(&ns, &[4, 0xff]).expect("get").expect("present");
        assert_eq!(got.version.get(), 5 + i as u64 * 10);
    }
    assert!(store.put(&ns(), b"new", b"x").expect("put").get() > 40);
    store.check_integrity().expect("healthy");
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("raw");
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("pragma");
    assert_eq!(version, anya_storage::backend::sqlite::SCHEMA_VERSION);
}

/// Namespaces whose names are prefixes of each other, or that sort next to each other, never
/// see each other's keys, at the edges of the key space too.
#[test]
fn neighbouring_namespaces_stay_apart() {
    let s = fresh();
    let names = ["a", "a.b", "a/", "b", "a.a"];
    for name in names {
        let ns = Namespace::new(name).expect("ns");
        s.put(&ns, &[0xff, 0xff], name.as_bytes()).expect("put");
        s.put(&ns, &[], name.as_bytes()).expect("put");
        s.put(&ns, &[0x00], name.as_bytes()).expect("put");
    }
    for name in names {
        let ns = Namespace::new(name).expect("ns");
        let entries = s.scan(&ns, Scan::all()).expect("scan");
        assert_eq!(entries.len(), 3, "{name}");
        assert!(entries.iter().all(|e| e.value == name.as_bytes()));
        assert_eq!(s.scan(&ns, Scan::prefix(&[0xff])).expect("scan").len(), 1);
    }
    let never = Namespace::new("never-written").expect("ns");
    assert!(s.scan(&never, Scan::all()).expect("scan").is_empty());
    assert!(s.get(&never, b"").expect("get").is_none());
}

/// Two handles on one file reserve disjoint version ranges: interleaved writes across several
/// ranges never share a version, and a reopened file hands out versions above all of them.
#[test]
fn interleaved_handles_never_share_a_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.db");
    let mut seen = std::collections::BTreeSet::new();
    {
        let a = open(&path).expect("open a");
        let b = open(&path).expect("open b");
        for i in 0u32..2_500 {
            let store = if i % 3 == 0 { &b } else { &a };
            let v = store.put(&ns(), &i.to_be_bytes(), b"x").expect("put");
            assert!(seen.insert(v.get()), "version {v} handed out twice");
        }
    }
    let c = open(&path).expect("reopen");
    let v = c.put(&ns(), b"after", b"x").expect("put");
    assert!(v.get() > *seen.last().expect("versions"), "{v} after reopen");
    let entries = c.scan(&ns(), Scan::all()).expect("scan");
    assert_eq!(entries.len(), 2_501);
}
