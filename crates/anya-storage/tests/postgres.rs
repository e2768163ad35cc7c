#![cfg(feature = "postgres")]
//! The PostgreSQL backend against a real server at `ANYA_TEST_POSTGRES_URL` (which `.ci/run`
//! starts through `.ci/postgres.sh`). Without the variable the tests are skipped locally and
//! fail in CI.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use anya_storage::{KvStore, Namespace, PostgresOptions, PostgresStore, Scan, StoreError, WriteBatch};

/// The server URL, or `None` (skip) outside CI.
#[allow(clippy::print_stderr, reason = "tells the developer why a test did nothing")]
fn url() -> Option<String> {
    match std::env::var("ANYA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("ANYA_TEST_POSTGRES_URL is unset in CI: .ci/run must source .ci/postgres.sh")
        }
        _ => {
            eprintln!("skipped: ANYA_TEST_POSTGRES_URL unset");
            None
        }
    }
}

/// A schema name no other test (or earlier run) uses.
fn unique_schema() -> String {
    format!("t_{:016x}", rand::random::<u64>())
}

fn options(schema: &str) -> PostgresOptions {
    let mut options = PostgresOptions::default();
    options.schema = schema.to_owned();
    options
}

fn raw_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("raw connection to the test server")
}

/// A store in its own schema, dropped together with the schema at the end of the test.
struct PgFixture {
    store: Option<PostgresStore>,
    url: String,
    schema: String,
}

impl PgFixture {
    fn open(url: &str, schema: &str) -> Self {
        let store = PostgresStore::open(url, options(schema)).expect("open postgres store");
        Self {
            store: Some(store),
            url: url.to_owned(),
            schema: schema.to_owned(),
        }
    }
}

impl Deref for PgFixture {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        self.store.as_ref().expect("the store lives until drop")
    }
}

impl Drop for PgFixture {
    fn drop(&mut self) {
        // Close the pool first so that dropping the schema waits for nobody.
        self.store.take();
        if let Ok(mut client) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema));
        }
    }
}

fn fresh() -> Option<PgFixture> {
    let url = url()?;
    Some(PgFixture::open(&url, &unique_schema()))
}

anya_storage::kv_conformance_suite!(fresh());

fn ns() -> Namespace {
    Namespace::new("t").expect("valid")
}

/// Drops the schema when the test ends, for tests that open stores by hand.
struct DropSchema<'a>(&'a str, &'a str);

impl Drop for DropSchema<'_> {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(self.0, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.1));
        }
    }
}

#[test]
fn reopen_keeps_values_and_versions_grow() {
    let Some(url) = url() else { return };
    let schema = unique_schema();
    let _cleanup = DropSchema(&url, &schema);
    let (v1, v2) = {
        let s = PostgresStore::open(&url, options(&schema)).expect("open");
        let v1 = s.put(&ns(), b"a", b"1").expect("put");
        let v2 = s.put(&ns(), b"b", b"2").expect("put");
        s.delete(&ns(), b"b").expect("delete");
        (v1, v2)
    };
    let s = PostgresStore::open(&url, options(&schema)).expect("reopen");
    let a = s.get(&ns(), b"a").expect("get").expect("present");
    assert_eq!((a.value.as_slice(), a.version), (&b"1"[..], v1));
    assert_eq!(s.get(&ns(), b"b").expect("get"), None);
    let v3 = s.put(&ns(), b"b", b"3").expect("put");
    assert!(
        v3 > v2,
        "a version after reopen ({v3}) is new, even though the newest key was deleted"
    );
}

#[test]
fn two_handles_share_versions_and_data() {
    let Some(url) = url() else { return };
    let schema = unique_schema();
    let _cleanup = DropSchema(&url, &schema);
    let a = PostgresStore::open(&url, options(&schema)).expect("open a");
    let b = PostgresStore::open(&url, options(&schema)).expect("open b");
    let va = a.put(&ns(), b"k", b"from a").expect("put");
    assert_eq!(b.get(&ns(), b"k").expect("get").expect("present").version, va);
    let err = b
        .compare_and_swap(&ns(), b"k", None, Some(b"from b"))
        .expect_err("present");
    assert!(
        matches!(err, StoreError::Conflict { found: Some(f), .. } if f == va),
        "{err:?}"
    );
    let vb = b
        .compare_and_swap(&ns(), b"k", Some(va), Some(b"from b"))
        .expect("swap");
    assert_ne!(va, vb);
    assert_eq!(a.get(&ns(), b"k").expect("get").expect("present").value, b"from b");
}

#[test]
fn concurrent_opens_of_a_new_schema_all_succeed() {
    let Some(url) = url() else { return };
    let schema = unique_schema();
    let _cleanup = DropSchema(&url, &schema);
    let stores: Vec<PostgresStore> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| PostgresStore::open(&url, options(&schema)).expect("concurrent open")))
            .collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect()
    });
    let mut versions: Vec<_> = stores.iter().map(|s| s.put(&ns(), b"k", b"v").expect("put")).collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), stores.len(), "one sequence behind every handle");
}

#[test]
fn absent_key_race_yields_one_winner() {
    // Many writers each try to create the same absent key with a check for absence: exactly
    // one may succeed, all others must see a conflict (never a duplicate-key error).
    let Some(url) = url() else { return };
    let fixture = PgFixture::open(&url, &unique_schema());
    for round in 0..10u8 {
        let key = [round];
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let s: &PostgresStore = &fixture;
                    scope.spawn(move || s.compare_and_swap(&ns(), &key, None, Some(&[i])))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().map_or_else(StoreError::is_conflict, |_| true)),
            "{results:?}"
        );
    }
}

#[test]
fn newer_schema_is_refused_untouched() {
    let Some(url) = url() else { return };
    let schema = unique_schema();
    let _cleanup = DropSchema(&url, &schema);
    {
        let s = PostgresStore::open(&url, options(&schema)).expect("open");
        s.put(&ns(), b"k", b"v").expect("put");
    }
    let mut raw = raw_client(&url);
    raw.batch_execute(&format!(
        "UPDATE \"{schema}\".anya_meta SET value = 999 WHERE name = 'schema_version'"
    ))
    .expect("bump schema");
    let err = PostgresStore::open(&url, options(&schema)).expect_err("newer schema");
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
    let meta: Vec<(String, i64)> = raw
        .query(
            &format!("SELECT name, value FROM \"{schema}\".anya_meta ORDER BY name"),
            &[],
        )
        .expect("read meta")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(meta, vec![("schema_version".to_owned(), 999)], "meta left as it was");
    let rows: i64 = raw
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".anya_kv"), &[])
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "records left as they were");
}

#[test]
fn foreign_anya_kv_table_is_refused_untouched() {
    let Some(url) = url() else { return };
    let schema = unique_schema();
    let _cleanup = DropSchema(&url, &schema);
    let mut raw = raw_client(&url);
    raw.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".anya_kv (id INT PRIMARY KEY, note TEXT); \
         INSERT INTO \"{schema}\".anya_kv VALUES (1, 'not ours');"
    ))
    .expect("foreign table");
    let err = PostgresStore::open(&url, options(&schema)).expect_err("foreign schema");
    assert!(matches!(err, StoreError::NotAnAnyaStore { .. }), "{err:?}");
    let tables: Vec<String> = raw
        .query(
            "SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = $1 ORDER BY 1",
            &[&schema],
        )
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        vec!["anya_kv".to_owned()],
        "nothing created beside the foreign table"
    );
    let note: String = raw
        .query_one(&format!("SELECT note FROM \"{schema}\".anya_kv WHERE id = 1"), &[])
        .expect("row")
        .get(0);
    assert_eq!(note, "not ours");
}

#[test]
fn batch_with_many_keys_is_one_version() {
    let Some(url) = url() else { return };
    let fixture = PgFixture::open(&url, &unique_schema());
    let mut batch = WriteBatch::new();
    for i in 0..500u32 {
        batch.put(&ns(), i.to_be_bytes(), i.to_le_bytes()).expect("op");
    }
    let v = fixture.write(batch).expect("write");
    let entries = fixture.scan(&ns(), Scan::all()).expect("scan");
    assert_eq!(entries.len(), 500);
    assert!(entries.iter().all(|e| e.version == v));
}

#[test]
fn scans_match_a_byte_ordered_model() {
    // Postgres orders bytea by memcmp then length, like `Vec<u8>`; check prefix scans and
    // paging against a `BTreeMap` on keys made of the bytes where orders usually go wrong.
    let Some(url) = url() else { return };
    let fixture = PgFixture::open(&url, &unique_schema());
    let alphabet = [0x00u8, 0x01, b'a', b'b', 0x7f, 0x80, 0xfe, 0xff];
    let mut model = BTreeMap::new();
    let mut batch = WriteBatch::new();
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let key: Vec<u8> = (0..x % 5)
            .map(|i| alphabet[((x >> (3 * i + 4)) & 7) as usize])
            .collect();
        batch.put(&ns(), key.clone(), x.to_le_bytes()).expect("op");
        model.insert(key, x.to_le_bytes().to_vec());
    }
    fixture.write(batch).expect("write");
    let prefixes: Vec<Vec<u8>> = vec![
        vec![],
        vec![b'a'],
        vec![0xff],
        vec![0xff, 0xff],
        vec![0x00],
        vec![0x7f, 0x80],
    ];
    for prefix in &prefixes {
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let got: Vec<(Vec<u8>, Vec<u8>)> = fixture
            .scan(&ns(), Scan::prefix(prefix))
            .expect("scan")
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(got, want, "prefix {prefix:02x?}");
        // Pages of three, each starting after the last key of the one before.
        let mut paged = Vec::new();
        loop {
            let last = paged.last().map(|(k, _): &(Vec<u8>, Vec<u8>)| k.clone());
            let scan = Scan::prefix(prefix).limit(3);
            let page = match &last {
                Some(k) => fixture.scan(&ns(), scan.after(k)).expect("scan"),
                None => fixture.scan(&ns(), scan).expect("scan"),
            };
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            paged.extend(page.into_iter().map(|e| (e.key, e.value)));
        }
        assert_eq!(paged, want, "paged prefix {prefix:02x?}");
    }
}

#[test]
fn invalid_options_are_refused() {
    // No server needed: options are checked before connecting.
    for schema in ["", "Anya", "1x", "a;drop", "pg_x"] {
        let err = PostgresStore::open("postgres://127.0.0.1:1/x", options(schema)).expect_err("invalid schema");
        assert!(
            matches!(
                err,
                StoreError::Backend {
                    backend: "postgres",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("postgres"), "{err}");
    }
    let mut zero_pool = PostgresOptions::default();
    zero_pool.pool_size = 0;
    assert!(PostgresStore::open("postgres://127.0.0.1:1/x", zero_pool).is_err());
}

#[test]
fn unreachable_server_is_a_backend_error() {
    // No server needed: nothing listens on port 1.
    let mut opts = PostgresOptions::default();
    opts.connect_timeout = Duration::from_secs(2);
    let err = PostgresStore::open("postgres://postgres@127.0.0.1:1/anya_test", opts).expect_err("no server");
    assert!(
        matches!(
            err,
            StoreError::Backend {
                backend: "postgres",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the postgres error is kept as source"
    );
}
