//! Loading a namespace the way ldk-node loads its payments at start (list the namespace, then
//! read every key through `KVStoreSync`), 10,000 records of 400 bytes.
//!
//! `cargo bench -p anya-layer2 --features lightning --bench ldk_store` (PostgreSQL rows too
//! when `ANYA_TEST_POSTGRES_URL` is set). In the same run:
//! - `ldk_node_sqlite`: ldk-node's own `SqliteStore`, the store `Builder::build` gives a node.
//! - `anya_<backend>`: anya's `LdkStore`, whose listing keeps the values for the reads that
//!   follow it.
//! - `anya_<backend>_no_read_ahead`: the same records read through a second `LdkStore` on the
//!   namespace after the first one listed it, so that every read goes to the store: what a load
//!   cost before the read-ahead.
#![allow(clippy::print_stderr, reason = "skipped PostgreSQL rows are reported on stderr")]

use std::hint::black_box;
use std::sync::Arc;

use anya_layer2::lightning::ldk_node::io::sqlite_store::SqliteStore as LdkSqliteStore;
use anya_layer2::lightning::ldk_node::lightning::util::persist::KVStoreSync;
use anya_layer2::lightning::LdkStore;
use anya_storage::{KvStore, Namespace, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const RECORDS: usize = 10_000;
const VALUE: usize = 400;
const NS: &str = "payments";

fn fill(store: &dyn KVStoreSync) {
    for i in 0..RECORDS {
        store
            .write(NS, "", &format!("{i:064x}"), vec![0x5a; VALUE])
            .expect("write");
    }
}

/// ldk-node's `read_payments`: list, then read every key.
fn load(lister: &dyn KVStoreSync, reader: &dyn KVStoreSync) -> usize {
    let mut bytes = 0;
    for key in lister.list(NS, "").expect("list") {
        bytes += reader.read(NS, "", &key).expect("read").len();
    }
    assert_eq!(bytes, RECORDS * VALUE);
    bytes
}

fn anya_rows(c: &mut Criterion, name: &str, store: Arc<dyn KvStore>) {
    let ns = Namespace::new("anya/bench/ln").expect("namespace");
    let first = LdkStore::new(Arc::clone(&store), ns.clone());
    fill(&first);
    let second = LdkStore::new(store, ns);
    let mut group = c.benchmark_group("ldk_store_load_10k");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.bench_function(format!("anya_{name}"), |b| b.iter(|| black_box(load(&first, &first))));
    group.bench_function(format!("anya_{name}_no_read_ahead"), |b| {
        b.iter(|| black_box(load(&first, &second)))
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let ldk = LdkSqliteStore::new(dir.path().join("ldk"), None, None).expect("ldk-node sqlite");
    fill(&ldk);
    let mut group = c.benchmark_group("ldk_store_load_10k");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.bench_function("ldk_node_sqlite", |b| b.iter(|| black_box(load(&ldk, &ldk))));
    group.finish();

    let sqlite = SqliteStore::open(dir.path().join("anya.db"), SqliteOptions::default()).expect("sqlite");
    anya_rows(c, "sqlite", Arc::new(sqlite));
    match std::env::var("ANYA_TEST_POSTGRES_URL") {
        Ok(url) => {
            let mut options = PostgresOptions::default();
            options.schema = format!("bench_ldk_store_{}", std::process::id());
            let postgres = PostgresStore::open(&url, options).expect("postgres");
            anya_rows(c, "postgres", Arc::new(postgres));
        }
        Err(_) => eprintln!("postgres rows skipped: ANYA_TEST_POSTGRES_URL unset"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
