//! The anya tour on embedded defaults: a durable SQLite store, atomic batches, and
//! compare-and-swap that loses no update under contention.
//!
//! `cargo run --release --example quickstart [DATA_DIR]` (a temporary directory by default).
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::sync::Arc;
use std::time::Instant;

use anya_core_types::{Clock, SystemClock};
use anya_storage::{KvStore, Namespace, Scan, SqliteOptions, SqliteStore, StoreError, WriteBatch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("anya.db");
    println!("anya quickstart — store at {}", path.display());

    let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default())?);
    let events = Namespace::new("quickstart/events")?;
    let counters = Namespace::new("quickstart/counters")?;

    // 1. An atomic batch: ten events and a counter land together or not at all.
    let now = SystemClock.now().as_secs();
    let mut batch = WriteBatch::new();
    for i in 0..10u32 {
        batch.put(&events, format!("{now}-{i:02}"), format!("event {i}"))?;
    }
    batch.put(&counters, "events", 10u64.to_le_bytes())?;
    let v = store.write(batch)?;
    println!("1. wrote a batch of 11 records atomically at version {v}");

    // 2. Compare-and-swap from 8 threads: 8 × 100 increments, none lost.
    let started = Instant::now();
    let conflicts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| -> Result<(), StoreError> {
                for _ in 0..100 {
                    loop {
                        let cur = store.get(&counters, b"events")?.expect("written in step 1");
                        let n = u64::from_le_bytes(cur.value.as_slice().try_into().expect("8-byte counter"));
                        match store.compare_and_swap(
                            &counters,
                            b"events",
                            Some(cur.version),
                            Some(&(n + 1).to_le_bytes()),
                        ) {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => {
                                conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            });
        }
    });
    let counter = store.get(&counters, b"events")?.expect("counter");
    let n = u64::from_le_bytes(counter.value.as_slice().try_into().expect("8-byte counter"));
    println!(
        "2. 8 threads × 100 CAS increments: counter = {n} (expected 810), {} retries after conflicts, {:.0?}",
        conflicts.into_inner(),
        started.elapsed()
    );
    assert_eq!(n, 810, "compare-and-swap lost an update");

    // 3. Durability: reopen and read everything back in key order.
    drop(store);
    let store = SqliteStore::open(&path, SqliteOptions::default())?;
    let entries = store.scan(&events, Scan::all())?;
    println!(
        "3. reopened: {} events in key order, first {:?}",
        entries.len(),
        String::from_utf8_lossy(&entries[0].key)
    );

    // 4. Bad input is a typed error, and the store is untouched.
    let foreign = dir.join("not-a-database.db");
    std::fs::write(&foreign, b"{\"hello\": \"world\"}")?;
    match SqliteStore::open(&foreign, SqliteOptions::default()) {
        Err(e @ StoreError::NotAnAnyaStore { .. }) => println!("4. refused a JSON file: {e}"),
        other => return Err(format!("expected NotAnAnyaStore, got {other:?}").into()),
    }
    store.check_integrity()?;
    println!("done: integrity check passed");
    Ok(())
}
