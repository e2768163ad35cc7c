//! The fuzz targets' corpus replayed on every test run: each input `cargo fuzz` kept in
//! `fuzz/corpus/<target>/` (the seeds `make-seeds` wrote from the BIP vectors and the harness's
//! own wallets, and what the recorded fuzzing runs added) goes through the same harness the
//! fuzz targets call (`fuzz/src/lib.rs`), with its checks: no panic, decoded PSBTs stay valid
//! through signing, transactions re-encode, a failed wallet load writes nothing.
//!
//! The fuzzing itself needs nightly and libFuzzer; see `fuzz/README.md`.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let inputs: Vec<_> = files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    assert!(inputs.len() >= 3, "the {target} corpus is missing");
    inputs
}

fn replay(target: &str, harness: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let result = std::panic::catch_unwind(|| harness(&bytes));
        assert!(result.is_ok(), "{target} input {} fails", path.display());
    }
}

#[test]
fn psbt_corpus() {
    replay("psbt", harness::psbt);
}

#[test]
fn transaction_corpus() {
    replay("transaction", harness::transaction);
}

#[test]
fn wallet_records_corpus() {
    replay("wallet_records", harness::wallet_records);
}
