//! Wallet sync under SIGKILL, against a real regtest bitcoind: a sync killed at any moment
//! leaves a wallet that loads, holds a prefix of the chain, and resumes from the last block it
//! stored instead of from genesis; the finished wallet matches the chain.
#![allow(clippy::print_stderr, reason = "the test reports where each kill landed")]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Label, SystemClock};
use anya_hsm::HsmProvider;
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::{Address, Amount, Network};

/// Blocks paying the wallet (regtest halves the subsidy at 150, so all pay 50 BTC).
const PAID: u32 = 140;
/// Blocks on top paying elsewhere, so that a sync takes long enough to be killed in.
const MORE: u32 = 1_200;

fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

fn store(path: &Path) -> Arc<dyn KvStore> {
    Arc::new(SqliteStore::open(path, SqliteOptions::default()).expect("store"))
}

fn checkpoint(path: &Path) -> u32 {
    let wallet = AnyaWallet::load_watch_only(store(path), Arc::new(SystemClock), label("w"))
        .expect("the wallet loads after the kill");
    wallet.bdk().latest_checkpoint().height()
}

enum Outcome {
    Killed,
    Done { blocks: u32, height: u32 },
}

/// What the finished child wrote on stderr.
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
}

/// Runs a sync in a child process and kills it `delay` after it loaded the wallet.
fn run(node: &Bitcoind, path: &Path, delay: Option<Duration>) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anya-kill-sync"))
        .arg(path)
        .arg("w")
        .arg(node.rpc_url())
        .arg(node.cookie_file())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the sync");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    if line != "READY\n" {
        let _ = child.wait();
        panic!("the sync child failed to start: {}", stderr_of(&mut child));
    }
    if let Some(delay) = delay {
        std::thread::sleep(delay);
        let _ = child.kill();
    }
    let status = child.wait().expect("reap");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    if let Some(done) = rest.lines().find_map(|l| l.strip_prefix("DONE ")) {
        let mut numbers = done.split(' ').map(|n| n.parse::<u32>().expect("a number"));
        let blocks = numbers.next().expect("blocks");
        let height = numbers.next().expect("height");
        return Outcome::Done { blocks, height };
    }
    assert!(
        delay.is_some() && !status.success(),
        "the sync failed: {}",
        stderr_of(&mut child)
    );
    Outcome::Killed
}

/// Creates the wallet `w` with a keystore of its own in a new store at `path`; returns its
/// first receive address.
fn create_wallet(path: &Path) -> Address {
    let store = store(path);
    let hsm = anya_hsm::conformance::software_on(Arc::clone(&store));
    anya_hsm::conformance::generate_test_root(&hsm, &label("root"));
    let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
    let template = Template::Bip86 {
        root: label("root"),
        account: 0,
    };
    let mut wallet = AnyaWallet::create(
        store,
        hsm,
        Arc::new(SystemClock),
        label("w"),
        &template,
        Network::Regtest,
    )
    .expect("wallet");
    wallet.next_address().expect("address").address
}

#[test]
fn a_killed_sync_resumes_from_its_last_stored_block() {
    let Some(node) = Bitcoind::start() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("anya.db");
    let to = create_wallet(&path);
    node.mine(PAID, &to);
    node.mine(MORE, &node.new_burn_address());
    let tip = node.height();

    // How long a whole sync takes here, measured on a wallet of its own.
    let probe = dir.path().join("probe.db");
    create_wallet(&probe);
    let started = Instant::now();
    assert!(matches!(run(&node, &probe, None), Outcome::Done { height, .. } if height == tip));
    let whole = started.elapsed();

    // Kill it a fifth of the way in, four times: each run stores more blocks and starts from
    // what the one before it stored.
    let mut stored = Vec::new();
    let mut finished = None;
    for _ in 0..4 {
        match run(&node, &path, Some(whole / 5)) {
            Outcome::Killed => stored.push(checkpoint(&path)),
            Outcome::Done { blocks, height } => {
                finished = Some((blocks, height));
                break;
            }
        }
    }
    eprintln!("whole sync {whole:?}; checkpoints after each kill: {stored:?} of {tip}");
    assert!(
        stored.windows(2).all(|w| w[0] <= w[1]),
        "a later run lost blocks an earlier one stored: {stored:?}"
    );
    let mid = stored.iter().filter(|&&h| h > 0 && h < tip).count();
    assert!(mid > 0, "no kill landed mid-sync (whole sync {whole:?}): {stored:?}");

    // The last run resumes from the last stored block.
    let last = stored.last().copied().unwrap_or(0);
    let (blocks, height) = match finished {
        Some(done) => done,
        None => match run(&node, &path, None) {
            Outcome::Done { blocks, height } => (blocks, height),
            Outcome::Killed => unreachable!("not killed"),
        },
    };
    assert_eq!(height, tip);
    if finished.is_none() {
        assert_eq!(blocks, tip - last, "resumed at {last}, not from genesis");
    }
    let wallet = AnyaWallet::load_watch_only(store(&path), Arc::new(SystemClock), label("w")).expect("load");
    assert_eq!(wallet.balance().total(), Amount::from_int_btc(50) * u64::from(PAID));
    assert_eq!(wallet.bdk().latest_checkpoint().height(), tip);
}
