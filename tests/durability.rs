//! Durability under SIGKILL: every write a store acknowledged survives the process being
//! killed at a random moment, and no batch is ever half applied.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "the test reports its counts")]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anya_storage::{KvStore, Namespace, Scan};
use rand::Rng;

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
fn run_and_kill(backend: &str, path: &Path, run: u32, delay: Duration) -> (Vec<String>, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anya-kill-writer"))
        .args([backend, path.to_str().expect("utf-8 temp path"), &format!("r{run:03}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut all = Vec::new();
        // The first line is READY, printed once the store is open (after crash recovery,
        // which can take a while on a loaded machine); the kill timer starts there.
        stdout.read_until(b'\n', &mut all).expect("read child stdout");
        let _ = ready_tx.send(());
        stdout.read_to_end(&mut all).expect("read child stdout");
        all
    });
    // Either READY arrived or the writer died first (the assertions below say which).
    let _ = ready_rx.recv_timeout(Duration::from_secs(60));
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL the writer");
    let status = child.wait().expect("reap writer");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let out = reader.join().expect("reader thread");
    assert!(!status.success(), "writer must have been killed, not exit: {stderr}");
    assert!(out.starts_with(b"READY\n"), "writer failed to start: {stderr}");
    let (mut puts, mut batches) = (Vec::new(), Vec::new());
    // Only complete lines count: a line cut by the kill was not yet an acknowledgement.
    for line in out.lines_complete() {
        if let Some(id) = line.strip_prefix("P ") {
            puts.push(id.to_owned());
        } else if let Some(id) = line.strip_prefix("B ") {
            batches.push(id.to_owned());
        }
    }
    (puts, batches)
}

trait CompleteLines {
    fn lines_complete(&self) -> Vec<String>;
}

impl CompleteLines for Vec<u8> {
    fn lines_complete(&self) -> Vec<String> {
        let end = self.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        BufReader::new(&self[..end])
            .lines()
            .map(|l| l.expect("utf-8 line"))
            .collect()
    }
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
        let (puts, batches) = run_and_kill(backend, &path, run, delay);
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
