//! Durability under SIGKILL: every write a store acknowledged survives the process being
//! killed at a random moment, and no batch is ever half applied.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "the test reports its counts")]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anya_storage::{KvStore, Namespace, Scan};
use rand::Rng;

mod common;

const KILLS: u32 = 24;
const BATCH_KEYS: usize = 10;

#[derive(Debug, Default)]
struct Tally {
    kills: u32,
    acked_puts: usize,
    acked_batches: usize,
    unacked_batches_present: usize,
}

/// Runs the writer once, kills it `delay` after it reported that its store is open, and
/// returns the acknowledged puts and batches.
fn run_writer(backend: &str, path: &Path, run: u32, delay: Duration) -> (Vec<String>, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_anya-kill-writer"));
    cmd.args([backend, path.to_str().expect("utf-8 temp path"), &format!("r{run:03}")]);
    let (mut puts, mut batches) = (Vec::new(), Vec::new());
    for line in common::run_and_kill(cmd, delay) {
        if let Some(id) = line.strip_prefix("P ") {
            puts.push(id.to_owned());
        } else if let Some(id) = line.strip_prefix("B ") {
            batches.push(id.to_owned());
        }
    }
    (puts, batches)
}

fn check(store: &dyn KvStore, acked_puts: &[String], acked_batches: &HashSet<String>, tally: &mut Tally) {
    let puts = Namespace::new("kill/puts").expect("valid");
    let batches = Namespace::new("kill/batches").expect("valid");
    for id in acked_puts {
        let got = store
            .get(&puts, id.as_bytes())
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged put {id} lost"));
        let i: u64 = id
            .rsplit('.')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("sequence number");
        assert_eq!(
            got.value,
            format!("value of {id}").repeat(1 + (i % 7) as usize).into_bytes(),
            "put {id} damaged"
        );
    }
    let mut by_batch: BTreeMap<String, usize> = BTreeMap::new();
    for entry in store.scan(&batches, Scan::all()).expect("scan") {
        let key = String::from_utf8(entry.key).expect("utf-8 key");
        let (id, _) = key.rsplit_once('/').expect("batch key");
        assert_eq!(entry.value, id.as_bytes(), "batch {id} damaged");
        *by_batch.entry(id.to_owned()).or_default() += 1;
    }
    for (id, n) in &by_batch {
        assert_eq!(*n, BATCH_KEYS, "batch {id} half applied: {n} of {BATCH_KEYS} keys");
    }
    for id in acked_batches {
        assert!(by_batch.contains_key(id), "acknowledged batch {id} lost");
    }
    tally.unacked_batches_present = by_batch.len() - acked_batches.len();
}

fn kill_loop(backend: &str, open: impl Fn(&Path) -> Box<dyn KvStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{backend}.store"));
    let mut rng = rand::thread_rng();
    let mut tally = Tally::default();
    let (mut all_puts, mut all_batches) = (Vec::new(), HashSet::new());
    for run in 0..KILLS {
        let delay = Duration::from_millis(rng.gen_range(150..600));
        let (puts, batches) = run_writer(backend, &path, run, delay);
        tally.kills += 1;
        tally.acked_puts += puts.len();
        tally.acked_batches += batches.len();
        all_puts.extend(puts);
        all_batches.extend(batches);
        // Reopen after every kill, as a restarted service would, and check everything so far.
        let store = open(&path);
        check(&*store, &all_puts, &all_batches, &mut tally);
    }
    println!(
        "{backend}: {} SIGKILLs, {} acknowledged puts and {} acknowledged batches all present, \
         {} unacknowledged batches complete, 0 half-applied",
        tally.kills, tally.acked_puts, tally.acked_batches, tally.unacked_batches_present
    );
    assert!(
        tally.acked_puts > 0 && tally.acked_batches > 0,
        "the writer must have made progress: {tally:?}"
    );
}

#[test]
fn sqlite_survives_sigkill() {
    kill_loop("sqlite", |p| {
        Box::new(anya_storage::SqliteStore::open(p, anya_storage::SqliteOptions::default()).expect("reopen"))
    });
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_survives_sigkill() {
    kill_loop("rocksdb", |p| {
        Box::new(anya_storage::RocksDbStore::open(p, anya_storage::RocksDbOptions::default()).expect("reopen"))
    });
}
