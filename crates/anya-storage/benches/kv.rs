//! Each anya store beside the raw library doing the same work, in the same run.
//!
//! `cargo bench -p anya-storage --features rocksdb,postgres --bench kv`
//! (PostgreSQL rows only when `ANYA_TEST_POSTGRES_URL` is set). Ratios: `scripts/bench-ratios`.
#![allow(clippy::print_stderr, reason = "benches say which groups they skipped")]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_storage::{KvStore, Namespace, Scan, SqliteOptions, SqliteStore, WriteBatch};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const KEYS: u32 = 20_000;
const SCAN_KEYS: u32 = 10_000;

/// The benches' namespace, built once as a user would hold it: validating a name is not work
/// the raw side does.
fn ns() -> &'static Namespace {
    static NS: std::sync::OnceLock<Namespace> = std::sync::OnceLock::new();
    NS.get_or_init(|| Namespace::new("bench").expect("valid"))
}

fn key(i: u32) -> Vec<u8> {
    // Two prefixes, "a" and "b", of SCAN_KEYS keys each; scans read all of "a".
    let mut k = vec![if i < SCAN_KEYS { b'a' } else { b'b' }];
    k.extend_from_slice(&i.to_be_bytes());
    k
}

fn value(i: u32) -> Vec<u8> {
    (0..100).map(|j| (i as u8).wrapping_add(j)).collect()
}

/// A value no earlier write stored. SQLite skips writing a row whose new bytes equal the old
/// ones, and a transaction that changed nothing commits without an fsync; anya always writes
/// (every write carries a new version). Timed writes therefore never repeat a value, or the
/// raw side would be timing no-ops.
fn fresh_value(i: u32) -> Vec<u8> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut v = value(i);
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}

fn fill(store: &dyn KvStore) {
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(5_000) {
        let mut batch = WriteBatch::new();
        for &i in chunk {
            batch.put(ns(), key(i), value(i)).expect("op");
        }
        store.write(batch).expect("fill");
    }
}

// ---- raw SQLite: what a developer would write by hand with rusqlite ----

fn raw_sqlite(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
    conn.pragma_update(None, "synchronous", "FULL").expect("full");
    conn.busy_timeout(Duration::from_secs(30)).expect("busy timeout");
    conn.execute_batch("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
        .expect("table");
    conn
}

fn raw_sqlite_fill(conn: &mut rusqlite::Connection) {
    let tx = conn.transaction().expect("tx");
    for i in 0..KEYS {
        tx.execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
            (key(i), value(i)),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

fn sqlite_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let anya = SqliteStore::open(dir.path().join("anya.db"), SqliteOptions::default()).expect("open");
    fill(&anya);
    let mut raw = raw_sqlite(&dir.path().join("raw.db"));
    raw_sqlite_fill(&mut raw);

    let mut g = c.benchmark_group("sqlite/point_get");
    let mut i = 0u32;
    g.bench_function("anya", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(anya.get(ns(), &key(i)).expect("get"))
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let mut stmt = raw
                .prepare_cached("SELECT value FROM kv WHERE key = ?1")
                .expect("prepare");
            black_box(stmt.query_row([key(i)], |r| r.get::<_, Vec<u8>>(0)).expect("get"))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("sqlite/prefix_scan_10k");
    g.throughput(Throughput::Elements(u64::from(SCAN_KEYS)));
    g.sample_size(20);
    g.bench_function("anya", |b| {
        b.iter(|| {
            let entries = anya.scan(ns(), Scan::prefix(b"a")).expect("scan");
            assert_eq!(entries.len(), SCAN_KEYS as usize);
            black_box(entries)
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            let mut stmt = raw
                .prepare_cached("SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
                .expect("prepare");
            let rows: Vec<(Vec<u8>, Vec<u8>)> = stmt
                .query_map([&b"a"[..], &b"b"[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            assert_eq!(rows.len(), SCAN_KEYS as usize);
            black_box(rows)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("sqlite/durable_put");
    g.sample_size(30);
    let mut n = 0u32;
    g.bench_function("anya", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            anya.put(ns(), &n.to_be_bytes(), &fresh_value(n)).expect("put")
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            raw.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
                .expect("prepare")
                .execute((n.to_be_bytes(), fresh_value(n)))
                .expect("insert")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("sqlite/batch_1000_puts");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("anya", |b| {
        b.iter(|| {
            let mut batch = WriteBatch::new();
            for i in 0..1000u32 {
                batch.put(ns(), key(i), fresh_value(i)).expect("op");
            }
            anya.write(batch).expect("batch")
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            let tx = raw.transaction().expect("tx");
            {
                let mut stmt = tx
                    .prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
                    .expect("prepare");
                for i in 0..1000u32 {
                    stmt.execute((key(i), fresh_value(i))).expect("insert");
                }
            }
            tx.commit().expect("commit")
        })
    });
    g.finish();

    group_commit(c, dir.path());
}

/// Eight threads doing durable puts, 50 each per iteration: anya's group commit against eight raw connections each
/// autocommitting with `synchronous=FULL`, and against one raw connection shared under a mutex.
fn group_commit(c: &mut Criterion, dir: &Path) {
    const THREADS: u32 = 8;
    const PUTS_PER_THREAD: u32 = 50;
    let anya = Arc::new(SqliteStore::open(dir.join("gc-anya.db"), SqliteOptions::default()).expect("open"));
    let raw_path = dir.join("gc-raw.db");
    drop(raw_sqlite(&raw_path));
    let raw_conns: Vec<_> = (0..THREADS)
        .map(|_| std::sync::Mutex::new(raw_sqlite(&raw_path)))
        .collect();
    let shared = std::sync::Mutex::new(raw_sqlite(&dir.join("gc-shared.db")));

    let mut g = c.benchmark_group("sqlite/8_threads_durable_put");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(THREADS * PUTS_PER_THREAD)));
    // Eight long-lived writer threads, as in a server; each iteration releases them together
    // and waits for all of them to finish. Creating threads is not part of the timed work.
    let run = |f: &(dyn Fn(u32, u32) + Sync), iters: u64| {
        let barrier = std::sync::Barrier::new(THREADS as usize + 1);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let barrier = &barrier;
                s.spawn(move || {
                    for it in 0..iters {
                        barrier.wait();
                        for i in 0..PUTS_PER_THREAD {
                            f(t, (it as u32).wrapping_mul(1_000_000) + i);
                        }
                        barrier.wait();
                    }
                });
            }
            let start = Instant::now();
            for _ in 0..iters {
                barrier.wait();
                barrier.wait();
            }
            start.elapsed()
        })
    };
    g.bench_function("anya_group_commit", |b| {
        b.iter_custom(|iters| {
            run(
                &|t, i| {
                    anya.put(ns(), &[t.to_be_bytes(), i.to_be_bytes()].concat(), &fresh_value(i))
                        .expect("put");
                },
                iters,
            )
        })
    });
    g.bench_function("raw_8_connections_autocommit", |b| {
        b.iter_custom(|iters| {
            run(
                &|t, i| {
                    let conn = raw_conns[t as usize].lock().expect("own connection");
                    conn.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
                        .expect("prepare")
                        .execute(([t.to_be_bytes(), i.to_be_bytes()].concat(), fresh_value(i)))
                        .expect("insert");
                },
                iters,
            )
        })
    });
    g.bench_function("raw_1_connection_mutex", |b| {
        b.iter_custom(|iters| {
            run(
                &|t, i| {
                    let conn = shared.lock().expect("shared connection");
                    conn.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
                        .expect("prepare")
                        .execute(([t.to_be_bytes(), i.to_be_bytes()].concat(), fresh_value(i)))
                        .expect("insert");
                },
                iters,
            )
        })
    });
    g.finish();
}

#[cfg(feature = "rocksdb")]
fn rocksdb_benches(c: &mut Criterion) {
    use anya_storage::{RocksDbOptions, RocksDbStore};
    let dir = tempfile::tempdir().expect("temp dir");
    let anya = RocksDbStore::open(dir.path().join("anya"), RocksDbOptions::default()).expect("open");
    fill(&anya);
    let raw = rocksdb::DB::open_default(dir.path().join("raw")).expect("open raw");
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    let mut wb = rocksdb::WriteBatch::default();
    for i in 0..KEYS {
        wb.put(key(i), value(i));
    }
    raw.write_opt(wb, &sync).expect("fill raw");

    let mut g = c.benchmark_group("rocksdb/point_get");
    let mut i = 0u32;
    g.bench_function("anya", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(anya.get(ns(), &key(i)).expect("get"))
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(raw.get(key(i)).expect("get"))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rocksdb/prefix_scan_10k");
    g.throughput(Throughput::Elements(u64::from(SCAN_KEYS)));
    g.sample_size(20);
    g.bench_function("anya", |b| {
        b.iter(|| {
            let entries = anya.scan(ns(), Scan::prefix(b"a")).expect("scan");
            assert_eq!(entries.len(), SCAN_KEYS as usize);
            black_box(entries)
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            let mut opts = rocksdb::ReadOptions::default();
            opts.set_iterate_upper_bound(b"b".to_vec());
            let rows: Vec<(Vec<u8>, Vec<u8>)> = raw
                .iterator_opt(rocksdb::IteratorMode::From(b"a", rocksdb::Direction::Forward), opts)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()
                .expect("iterate");
            assert_eq!(rows.len(), SCAN_KEYS as usize);
            black_box(rows)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rocksdb/durable_put");
    g.sample_size(30);
    let mut n = 0u32;
    g.bench_function("anya", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            anya.put(ns(), &n.to_be_bytes(), &fresh_value(n)).expect("put")
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            raw.put_opt(n.to_be_bytes(), fresh_value(n), &sync).expect("put")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rocksdb/batch_1000_puts");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("anya", |b| {
        b.iter(|| {
            let mut batch = WriteBatch::new();
            for i in 0..1000u32 {
                batch.put(ns(), key(i), fresh_value(i)).expect("op");
            }
            anya.write(batch).expect("batch")
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            let mut wb = rocksdb::WriteBatch::default();
            for i in 0..1000u32 {
                wb.put(key(i), fresh_value(i));
            }
            raw.write_opt(wb, &sync).expect("batch")
        })
    });
    g.finish();
}

#[cfg(not(feature = "rocksdb"))]
fn rocksdb_benches(_: &mut Criterion) {
    eprintln!("rocksdb benches skipped: build with --features rocksdb");
}

#[cfg(feature = "postgres")]
fn postgres_benches(c: &mut Criterion) {
    use anya_storage::{PostgresOptions, PostgresStore};
    let Ok(url) = std::env::var("ANYA_TEST_POSTGRES_URL") else {
        eprintln!("postgres benches skipped: ANYA_TEST_POSTGRES_URL unset");
        return;
    };
    let schema = format!("bench_{}", std::process::id());
    let mut options = PostgresOptions::default();
    options.schema = schema.clone();
    let anya = PostgresStore::open(&url, options).expect("open");
    fill(&anya);
    let mut raw = postgres::Client::connect(&url, postgres::NoTls).expect("connect raw");
    raw.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}_raw (key BYTEA PRIMARY KEY, value BYTEA NOT NULL)"
    ))
    .expect("raw table");
    let insert = raw
        .prepare(&format!("INSERT INTO {schema}_raw (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"))
        .expect("prepare");
    for i in 0..KEYS {
        raw.execute(&insert, &[&key(i), &value(i)]).expect("fill raw");
    }
    let get = raw
        .prepare(&format!("SELECT value FROM {schema}_raw WHERE key = $1"))
        .expect("prepare");
    let scan = raw
        .prepare(&format!(
            "SELECT key, value FROM {schema}_raw WHERE key >= $1 AND key < $2 ORDER BY key"
        ))
        .expect("prepare");

    let mut g = c.benchmark_group("postgres/point_get");
    let mut i = 0u32;
    g.bench_function("anya", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(anya.get(ns(), &key(i)).expect("get"))
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(raw.query_opt(&get, &[&key(i)]).expect("get"))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("postgres/prefix_scan_10k");
    g.sample_size(10);
    g.bench_function("anya", |b| {
        b.iter(|| {
            let entries = anya.scan(ns(), Scan::prefix(b"a")).expect("scan");
            assert_eq!(entries.len(), SCAN_KEYS as usize);
            black_box(entries)
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            // Owned keys and values, as from the SQLite and RocksDB raw scans and from anya.
            let rows: Vec<(Vec<u8>, Vec<u8>)> = raw
                .query(&scan, &[&&b"a"[..], &&b"b"[..]])
                .expect("scan")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(rows.len(), SCAN_KEYS as usize);
            black_box(rows)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("postgres/durable_put");
    g.sample_size(20);
    let mut n = 0u32;
    g.bench_function("anya", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            anya.put(ns(), &n.to_be_bytes(), &fresh_value(n)).expect("put")
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            raw.execute(&insert, &[&n.to_be_bytes().to_vec(), &fresh_value(n)])
                .expect("put")
        })
    });
    g.finish();
}

#[cfg(not(feature = "postgres"))]
fn postgres_benches(_: &mut Criterion) {
    eprintln!("postgres benches skipped: build with --features postgres");
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = sqlite_benches, rocksdb_benches, postgres_benches
}
criterion_main!(benches);
