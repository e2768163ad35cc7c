//! The spending policy's guard on a payment, `PolicyEngine::approve_payment`, as the
//! history of the last 24 hours grows to 1,000 and 10,000 reservations.
//!
//! `cargo bench -p anya-bitcoin --bench policy` (PostgreSQL rows too when
//! `ANYA_TEST_POSTGRES_URL` is set). Per store and history size, in the same run:
//! - `engine_copy`: one engine, as a node holds it: it keeps its copy of the history and reads
//!   the head record before each approval.
//! - `reread`: a new engine for every approval, which reads the whole history from the store
//!   first: what every approval cost before engines kept a copy, and what an approval costs
//!   after another process wrote to the namespace.
//! - `raw_write`: the floor, the store alone: one read of a head record and one batch that
//!   checks it and writes the same three records an approval writes.
//!
//! The HSM audits in buffered mode, so its record is not in the figures: they are the policy's
//! own cost. The approvals of each sample are released after it, untimed, so the history
//! stays at its size (plus at most one sample's approvals).
#![allow(clippy::print_stderr, reason = "skipped PostgreSQL rows are reported on stderr")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_bitcoin::policy::{PaymentSummary, PolicyEngine};
use anya_core_types::{Label, SystemClock};
use anya_hsm::{AuditMode, HsmProvider, KdfParams, KeyPolicy, KeySpec, SecretString, SoftwareHsm, SoftwareOptions};
use anya_storage::{KvStore, Namespace, SqliteOptions, SqliteStore, WriteBatch};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const SIZES: [usize; 3] = [0, 1_000, 10_000];

fn payment(destination: PublicKey) -> PaymentSummary {
    PaymentSummary {
        payment_hash: rand::random(),
        amount_msat: 1_000_000,
        max_fee_msat: 10_000,
        destination,
    }
}

/// Times `iters` fresh payments through `approve`, then releases them through `engine`,
/// untimed, so that the history stays at its size.
fn timed(iters: u64, engine: &PolicyEngine, destination: PublicKey, approve: impl Fn(&PaymentSummary)) -> Duration {
    let payments: Vec<_> = (0..iters).map(|_| payment(destination)).collect();
    let start = Instant::now();
    for p in &payments {
        approve(p);
    }
    let elapsed = start.elapsed();
    for p in &payments {
        engine.release_payment(p.payment_hash).expect("released");
    }
    elapsed
}

fn bench_store(c: &mut Criterion, name: &str, store: &Arc<dyn KvStore>) {
    let options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_audit(AuditMode::Buffered { max_pending: 4096 });
    let hsm = SoftwareHsm::create(Arc::clone(store), &SecretString::from("bench"), options).expect("keystore");
    let root = Label::new("root").expect("label");
    hsm.generate_key(&root, KeySpec::Bip32Root, KeyPolicy::default_for(KeySpec::Bip32Root))
        .expect("root");
    let destination = PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[7; 32]).expect("key"));
    let mut group = c.benchmark_group(format!("policy_approve_payment/{name}"));
    group.sample_size(30);
    for size in SIZES {
        let ns = Namespace::new(format!("bench/policy/{size}")).expect("namespace");
        let engine = || PolicyEngine::new(Arc::clone(store), ns.clone(), Arc::new(SystemClock));
        let held = engine();
        for _ in 0..size {
            held.approve_payment(&payment(destination), &hsm, &root)
                .expect("filled");
        }
        group.bench_with_input(BenchmarkId::new("engine_copy", size), &size, |b, _| {
            b.iter_custom(|iters| {
                timed(iters, &held, destination, |p| {
                    held.approve_payment(p, &hsm, &root).expect("approved");
                })
            });
        });
        group.bench_with_input(BenchmarkId::new("reread", size), &size, |b, _| {
            b.iter_custom(|iters| {
                timed(iters, &held, destination, |p| {
                    engine().approve_payment(p, &hsm, &root).expect("approved");
                })
            });
        });
        let floor = Namespace::new(format!("bench/floor/{size}")).expect("namespace");
        group.bench_with_input(BenchmarkId::new("raw_write", size), &size, |b, _| {
            b.iter(|| {
                let head = store.get(&floor, b"head").expect("head").map(|v| v.version);
                let id: [u8; 32] = rand::random();
                let mut batch = WriteBatch::new();
                batch.check(&floor, b"head", head).expect("check");
                batch.put(&floor, b"head", 1u64.to_be_bytes()).expect("put");
                batch
                    .put(&floor, [b"s/".as_slice(), &id].concat(), 1u64.to_be_bytes())
                    .expect("put");
                batch
                    .put(&floor, [b"t/".as_slice(), &id].concat(), [0u8; 42])
                    .expect("put");
                black_box(store.write(batch).expect("written"))
            });
        });
    }
    group.finish();
    hsm.flush_audit().expect("audit flushed");
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let sqlite: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.path().join("bench.db"), SqliteOptions::default()).expect("store"));
    bench_store(c, "sqlite", &sqlite);
    match std::env::var("ANYA_TEST_POSTGRES_URL") {
        Ok(url) => {
            let mut options = anya_storage::PostgresOptions::default();
            options.schema = format!("bench_policy_{}", std::process::id());
            let postgres: Arc<dyn KvStore> =
                Arc::new(anya_storage::PostgresStore::open(&url, options).expect("postgres store"));
            bench_store(c, "postgres", &postgres);
        }
        Err(_) => eprintln!("postgres rows skipped: ANYA_TEST_POSTGRES_URL unset"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
