//! Child process of the durability test: writes to a store forever from several threads and
//! prints a line for each write only after the store acknowledged it. The test kills it with
//! SIGKILL at a random moment and checks that every acknowledged write survived.
//!
//! Usage: `anya-kill-writer <sqlite|rocksdb> <path> <run-id>`
//!
//! Lines: `P <key-hex>` after a put returned Ok, `B <batch-id>` after a 10-key batch returned Ok.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the acknowledgement protocol is stdout"
)]

use std::io::Write;
use std::sync::Arc;

use anya_storage::{KvStore, Namespace, WriteBatch};

/// Keys a batch writes; the test checks that a batch is all there or not there at all.
const BATCH_KEYS: u32 = 10;
const THREADS: u32 = 4;

fn open(backend: &str, path: &str) -> Arc<dyn KvStore> {
    match backend {
        "sqlite" => Arc::new(
            anya_storage::SqliteStore::open(path, anya_storage::SqliteOptions::default()).expect("open sqlite"),
        ),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Arc::new(
            anya_storage::RocksDbStore::open(path, anya_storage::RocksDbOptions::default()).expect("open rocksdb"),
        ),
        other => panic!("unknown backend {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, backend, path, run] = args.as_slice() else {
        eprintln!("usage: anya-kill-writer <sqlite|rocksdb> <path> <run-id>");
        std::process::exit(2);
    };
    let store = open(backend, path);
    let puts = Namespace::new("kill/puts").expect("valid namespace");
    let batches = Namespace::new("kill/batches").expect("valid namespace");
    println!("READY");
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, puts, batches, run) = (Arc::clone(&store), puts.clone(), batches.clone(), run.clone());
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let id = format!("{run}.{t}.{i:08}");
                    if i % 2 == 0 {
                        let value = format!("value of {id}").repeat(1 + (i % 7) as usize);
                        store.put(&puts, id.as_bytes(), value.as_bytes()).expect("put");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "P {id}").expect("stdout");
                        out.flush().expect("stdout");
                    } else {
                        let mut batch = WriteBatch::new();
                        for j in 0..BATCH_KEYS {
                            batch.put(&batches, format!("{id}/{j}"), id.as_bytes()).expect("op");
                        }
                        store.write(batch).expect("batch");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "B {id}").expect("stdout");
                        out.flush().expect("stdout");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
}
