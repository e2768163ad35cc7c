//! Child process of the sync crash test: opens a wallet watch-only (no keys needed to follow
//! the chain) and syncs it from a bitcoind. The test kills it with SIGKILL mid-sync and checks
//! that the wallet reloads and resumes from the last block it stored.
//!
//! Usage: `anya-kill-sync <sqlite path> <wallet> <rpc url> <cookie file>`
//!
//! Lines: `READY` once the wallet is loaded, `DONE <blocks> <height>` when the sync finished.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the progress protocol is stdout"
)]

use std::path::PathBuf;
use std::sync::Arc;

use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::AnyaWallet;
use anya_core_types::{Label, SystemClock};
use anya_storage::{SqliteOptions, SqliteStore};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, name, url, cookie] = args.as_slice() else {
        eprintln!("usage: anya-kill-sync <sqlite path> <wallet> <rpc url> <cookie file>");
        std::process::exit(2);
    };
    let store = Arc::new(SqliteStore::open(path, SqliteOptions::default()).expect("open the store"));
    let name = Label::new(name.as_str()).expect("a wallet name");
    let mut wallet = AnyaWallet::load_watch_only(store, Arc::new(SystemClock), name).expect("load the wallet");
    let chain = BitcoindChain::connect(RpcConfig::new(url.as_str(), RpcAuth::Cookie(PathBuf::from(cookie))))
        .expect("rpc client");
    println!("READY");
    let report = chain.sync_wallet(&mut wallet).expect("sync");
    println!("DONE {} {}", report.blocks, report.tip.0);
}
