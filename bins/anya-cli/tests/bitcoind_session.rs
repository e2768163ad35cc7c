//! The `anya` binary against a real regtest `bitcoind`, used as a new user would: a keystore, a
//! wallet, coins mined to it, sync, a spending policy, payments refused and broadcast, a fee
//! bump, confirmation; and every mistake a user can make with the node (down, wrong
//! credentials, another network, no cookie) failing in one line before anything is signed.
//!
//! The node comes from `anya_testkit` (`BITCOIND_EXE`; skipped outside CI without it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use anya_testkit::Bitcoind;
use bitcoin::{Address, Network, Txid};

mod common;
use common::ok;

const PASS: &str = "correct horse battery staple";
/// 50 BTC: every regtest coinbase below height 150.
const SUBSIDY: u64 = 5_000_000_000;

/// Environment variables of the binary that a developer's shell might set.
const ANYA_VARS: [&str; 8] = [
    "ANYA_DATA_DIR",
    "ANYA_RPC_URL",
    "ANYA_RPC_COOKIE",
    "ANYA_RPC_USER",
    "ANYA_RPC_PASSWORD",
    "ANYA_RPCCONNECT",
    "ANYA_RPCPORT",
    "ANYA_BITCOIN_DATADIR",
];

/// A user's data directory and an empty home (so that no real `~/.bitcoin` is found).
struct User {
    _dir: tempfile::TempDir,
    data: PathBuf,
    home: PathBuf,
}

impl User {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("anya-data");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        Self { _dir: dir, data, home }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_anya"));
        command
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env("HOME", &self.home);
        for var in ANYA_VARS {
            command.env_remove(var);
        }
        command
    }

    /// Runs `anya` with the passphrase in the environment.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .env("ANYA_PASSPHRASE", PASS)
            .output()
            .expect("run anya")
    }

    /// Runs `anya` without a passphrase (and no terminal to ask on): only commands that need
    /// no key can succeed.
    fn run_keyless(&self, args: &[&str]) -> Output {
        self.command(args)
            .env_remove("ANYA_PASSPHRASE")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run anya")
    }

    fn audit_records(&self) -> u64 {
        let summary = ok(&self.run(&["audit", "verify"]));
        summary
            .trim()
            .strip_prefix("audit chain ok: ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("audit summary: {summary}"))
    }

    fn spent_24h(&self, wallet: &str) -> u64 {
        let rules = ok(&self.run_keyless(&["wallet", "policy", wallet]));
        sats(&rules, "spent in the last 24h")
    }
}

/// The error of a failed run, which must be one line on stderr, no panic and no Debug output.
#[track_caller]
fn one_line_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "anya should have failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("fee rate ")).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    let line = lines[0].to_owned();
    assert!(line.starts_with("error: "), "{line}");
    for debug in ["panicked", "backtrace", " { ", "Error {", "Some(", "Os {"] {
        assert!(!line.contains(debug), "{debug:?} in {line}");
    }
    line
}

/// The satoshis on the line of `text` that starts with `label`.
fn sats(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in\n{text}"))
}

fn regtest_address(s: &str) -> Address {
    Address::from_str(s.trim())
        .expect("an address")
        .require_network(Network::Regtest)
        .expect("a regtest address")
}

/// `--datadir` and `--rpcport` of `node`, as a user of bitcoin-cli would pass them.
fn node_args(node: &Bitcoind) -> Vec<String> {
    vec![
        "--datadir".to_owned(),
        node.datadir().display().to_string(),
        "--rpcport".to_owned(),
        node.rpc_port().to_string(),
    ]
}

fn with<'a>(args: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(more.iter().map(String::as_str));
    all
}

fn in_mempool(node: &Bitcoind, txid: &str) -> bool {
    let pool: Vec<String> = node.rpc("getrawmempool", &[]);
    pool.iter().any(|t| t == txid)
}

fn confirmations(node: &Bitcoind, txid: &str) -> u64 {
    let tx: serde_json::Value = node.rpc("getrawtransaction", &[txid.into(), true.into()]);
    tx["confirmations"].as_u64().unwrap_or(0)
}

/// A port on which nothing listens.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A keystore with a root key and a regtest wallet `w` born at the node's tip, paid 101
/// coinbases and synced; returns the user.
fn funded_user(node: &Bitcoind, conn: &[String]) -> User {
    let user = User::new();
    ok(&user.run(&["hsm", "init"]));
    ok(&user.run(&["key", "new", "root", "--type", "bip32"]));
    let birthday = node.height().to_string();
    ok(&user.run(&["wallet", "new", "w", "--root", "root", "--birthday", &birthday]));
    let address = regtest_address(&ok(&user.run_keyless(&["wallet", "address", "w"])));
    node.mine(101, &address);
    ok(&user.run_keyless(&with(&["wallet", "sync", "w"], conn)));
    user
}

#[test]
fn new_user_session_against_bitcoind() {
    let Some(node) = Bitcoind::start() else { return };
    let conn = node_args(&node);
    let burn = node.new_burn_address();
    let burn_text = burn.to_string();
    // Blocks before the wallet exists: its birthday skips them.
    node.mine(20, &node.new_burn_address());

    let user = User::new();
    assert!(ok(&user.run(&["hsm", "init"])).contains("created keystore"));
    ok(&user.run(&["key", "new", "root", "--type", "bip32"]));
    let out = user.run(&["wallet", "new", "w", "--root", "root", "--birthday", "20"]);
    assert!(ok(&out).starts_with("tr(["));
    assert!(String::from_utf8_lossy(&out.stderr).contains("birthday: block 20"));

    // Receiving needs no passphrase.
    let address = regtest_address(&ok(&user.run_keyless(&["wallet", "address", "w"])));
    node.mine(101, &address);

    let synced = ok(&user.run_keyless(&with(&["wallet", "sync", "w"], &conn)));
    let blocks: u32 = synced
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("block count in {synced}"));
    assert!(blocks <= 102, "sync started at the birthday, not genesis: {synced}");
    assert!(synced.starts_with("synced to height 121 "), "{synced}");
    let spendable = sats(&synced, "spendable");
    let immature = sats(&synced, "immature");
    assert!(spendable >= SUBSIDY && spendable.is_multiple_of(SUBSIDY), "{synced}");
    assert!(immature > 0, "young coinbases are immature, not spendable: {synced}");
    assert_eq!(spendable + immature, 101 * SUBSIDY, "{synced}");

    let balance = ok(&user.run_keyless(&["wallet", "balance", "w"]));
    assert_eq!(sats(&balance, "spendable"), spendable, "{balance}");
    assert_eq!(sats(&balance, "immature"), immature, "{balance}");
    assert!(ok(&user.run_keyless(&["wallet", "list"])).starts_with("w\tregtest\ttr("));

    // Changing the policy needs the passphrase; showing it does not.
    let err = one_line_error(&user.run_keyless(&["wallet", "policy", "w", "--max-per-tx", "1btc"]));
    assert!(err.contains("passphrase"), "{err}");
    ok(&user.run(&[
        "wallet",
        "policy",
        "w",
        "--max-per-tx",
        "1btc",
        "--max-per-24h",
        "1.2btc",
    ]));
    let rules = ok(&user.run_keyless(&["wallet", "policy", "w"]));
    assert!(rules.contains("max per transaction    100000000 sat"), "{rules}");
    assert_eq!(sats(&rules, "spent in the last 24h"), 0);

    // Refused by the policy: nothing signed, nothing spent.
    let err = one_line_error(&user.run(&with(
        &["wallet", "send", "w", "--to", &burn_text, "--amount", "2btc"],
        &conn,
    )));
    assert!(err.contains("spending policy refused"), "{err}");
    assert_eq!(user.spent_24h("w"), 0);

    // Approved and broadcast, at the fee rate bitcoind gives (its fallback on regtest).
    let out = user.run(&with(
        &["wallet", "send", "w", "--to", &burn_text, "--amount", "0.5btc"],
        &conn,
    ));
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fee rate 20.00 sat/vB") && stderr.contains("fallback"),
        "{stderr}"
    );
    assert!(stderr.contains("broadcast through bitcoind"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the txid: {stdout}");
    let first = lines[0].to_owned();
    Txid::from_str(&first).expect("a txid");
    assert!(in_mempool(&node, &first));
    let spent_once = user.spent_24h("w");
    assert!((50_000_000..51_000_000).contains(&spent_once), "{spent_once}");

    // Bump: the replacement takes the original's place in the mempool and in the policy.
    let bumped = ok(&user.run(&with(
        &["wallet", "bump-fee", "w", "--txid", &first, "--fee-rate", "30"],
        &conn,
    )));
    let bumped = bumped.trim().to_owned();
    assert_ne!(bumped, first);
    assert!(in_mempool(&node, &bumped) && !in_mempool(&node, &first));
    let spent_bumped = user.spent_24h("w");
    assert!(
        spent_bumped > spent_once && spent_bumped < 51_000_000,
        "the replacement is counted instead of the original: {spent_once} then {spent_bumped}"
    );

    // Bumping the replaced transaction again is one clear line.
    let err = one_line_error(&user.run(&with(
        &["wallet", "bump-fee", "w", "--txid", &first, "--fee-rate", "40"],
        &conn,
    )));
    assert!(err.contains(&first), "{err}");

    // Mined: the sync sees the confirmation.
    node.mine(1, &burn);
    let synced = ok(&user.run_keyless(&with(&["wallet", "sync", "w"], &conn)));
    assert!(synced.starts_with("synced to height 122 "), "{synced}");
    assert_eq!(confirmations(&node, &bumped), 1);
    let balance = ok(&user.run_keyless(&["wallet", "balance", "w"]));
    assert_eq!(sats(&balance, "pending (own)"), 0, "{balance}");

    // A transaction bitcoind rejects (below its minimum relay fee, 0.1 sat/vB) is not counted.
    let err = one_line_error(&user.run(&with(
        &[
            "wallet",
            "send",
            "w",
            "--to",
            &burn_text,
            "--amount",
            "0.1btc",
            "--fee-rate",
            "0.05",
        ],
        &conn,
    )));
    assert!(err.contains("rejected") && err.contains("released"), "{err}");
    assert_eq!(user.spent_24h("w"), spent_bumped);

    // The other spellings of the connection: --rpc-url with --rpc-cookie, and a password.
    let cookie = node.cookie_file().display().to_string();
    ok(&user.run_keyless(&[
        "wallet",
        "sync",
        "w",
        "--rpc-url",
        &node.rpc_url(),
        "--rpc-cookie",
        &cookie,
    ]));
    let text = std::fs::read_to_string(node.cookie_file()).expect("cookie");
    let (cookie_user, cookie_pass) = text.trim().split_once(':').expect("user:password");
    let out = user
        .command(&with(&["wallet", "sync", "w", "--rpcuser", cookie_user], &conn))
        .env("ANYA_RPC_PASSWORD", cookie_pass)
        .output()
        .expect("run anya");
    ok(&out);
}

#[test]
fn node_mistakes_fail_in_one_line_before_signing() {
    let Some(node) = Bitcoind::start() else { return };
    let conn = node_args(&node);
    let burn = node.new_burn_address().to_string();
    let user = funded_user(&node, &conn);
    let cookie = node.cookie_file().display().to_string();
    let port = node.rpc_port().to_string();
    let send = [
        "wallet",
        "send",
        "w",
        "--to",
        &burn,
        "--amount",
        "10000",
        "--fee-rate",
        "2",
    ];

    let records = user.audit_records();
    let unsigned = |user: &User| {
        assert_eq!(user.audit_records(), records, "no HSM operation");
        assert_eq!(user.spent_24h("w"), 0, "nothing counted");
        let pool: Vec<String> = node.rpc("getrawmempool", &[]);
        assert!(pool.is_empty(), "nothing broadcast: {pool:?}");
    };

    // No cookie where bitcoind's datadir is said to be.
    let missing = user.home.join("no-bitcoin");
    let missing = missing.display().to_string();
    let err = one_line_error(&user.run(&with(
        &send,
        &[
            "--datadir".to_owned(),
            missing.clone(),
            "--rpcport".to_owned(),
            port.clone(),
        ],
    )));
    assert!(
        err.contains("no bitcoind cookie file") && err.contains(&missing),
        "{err}"
    );
    unsigned(&user);
    // Nor in the default ~/.bitcoin (the empty home).
    let err = one_line_error(&user.run(&send));
    assert!(err.contains(".bitcoin/regtest/.cookie"), "{err}");
    unsigned(&user);

    // Node down: a port nothing listens on.
    let dead = dead_port().to_string();
    let err = one_line_error(&user.run(&with(
        &send,
        &[
            "--rpccookiefile".to_owned(),
            cookie.clone(),
            "--rpcport".to_owned(),
            dead.clone(),
        ],
    )));
    assert!(
        err.contains("cannot reach bitcoind at http://127.0.0.1:") && err.contains(&dead),
        "{err}"
    );
    unsigned(&user);

    // Wrong cookie, wrong password.
    let stale = user.home.join("stale.cookie");
    std::fs::write(&stale, "__cookie__:0000").expect("write cookie");
    let stale = stale.display().to_string();
    let err = one_line_error(&user.run(&with(
        &send,
        &[
            "--rpccookiefile".to_owned(),
            stale,
            "--rpcport".to_owned(),
            port.clone(),
        ],
    )));
    assert!(err.contains("refused the credentials"), "{err}");
    unsigned(&user);
    let out = user
        .command(&with(
            &send,
            &[
                "--rpcuser".to_owned(),
                "alice".to_owned(),
                "--rpcport".to_owned(),
                port.clone(),
            ],
        ))
        .env("ANYA_PASSPHRASE", PASS)
        .env("ANYA_RPC_PASSWORD", "not-the-password")
        .output()
        .expect("run anya");
    let err = one_line_error(&out);
    assert!(
        err.contains("refused the credentials") && err.contains("alice"),
        "{err}"
    );
    unsigned(&user);
    let err = one_line_error(&user.run(&with(&send, &["--rpcuser".to_owned(), "alice".to_owned()])));
    assert!(err.contains("ANYA_RPC_PASSWORD"), "{err}");

    // A dust amount is refused while building, before the passphrase is needed.
    let err = one_line_error(&user.run_keyless(&with(
        &["wallet", "send", "w", "--to", &burn, "--amount", "100sat"],
        &conn,
    )));
    assert!(err.contains("dust"), "{err}");
    unsigned(&user);

    // An unknown wallet.
    let err = one_line_error(&user.run_keyless(&with(&["wallet", "sync", "nosuch"], &conn)));
    assert_eq!(err, "error: no wallet named nosuch");
    let err = one_line_error(&user.run_keyless(&["wallet", "balance", "nosuch"]));
    assert_eq!(err, "error: no wallet named nosuch");

    // A wallet of another network against this regtest node.
    ok(&user.run(&["wallet", "new", "t", "--root", "root", "--network", "testnet"]));
    let err =
        one_line_error(&user.run_keyless(&["wallet", "sync", "t", "--rpccookiefile", &cookie, "--rpcport", &port]));
    assert!(
        err.contains("is on regtest") && err.contains("wallet is on test"),
        "{err}"
    );
    // For testnet the cookie is looked for in testnet3/.
    let err = one_line_error(&user.run_keyless(&with(&["wallet", "sync", "t"], &conn)));
    assert!(err.contains("testnet3"), "{err}");

    // Offline signing is explicit, and says it did not broadcast.
    let out = user.run(&with(&send, &["--no-broadcast".to_owned()]));
    let stdout = ok(&out);
    assert_eq!(stdout.lines().count(), 2, "txid and hex: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT broadcast"));
    let pool: Vec<String> = node.rpc("getrawmempool", &[]);
    assert!(pool.is_empty());
    assert!(
        user.spent_24h("w") > 0,
        "an offline spend counts until it is known to have failed"
    );
}

/// `psbt finalize` checks the node before it finalizes, and broadcasts through it.
#[test]
fn psbt_finalize_broadcasts_through_the_node() {
    let Some(node) = Bitcoind::start() else { return };
    let conn = node_args(&node);
    let burn = node.new_burn_address().to_string();
    let user = funded_user(&node, &conn);
    let dir = tempfile::tempdir().expect("temp dir");
    let unsigned = dir.path().join("unsigned.psbt");
    let signed = dir.path().join("signed.psbt");
    let path = |p: &Path| p.display().to_string();
    ok(&user.run(&[
        "wallet",
        "send",
        "w",
        "--to",
        &burn,
        "--amount",
        "0.01btc",
        "--fee-rate",
        "3",
        "--psbt-out",
        &path(&unsigned),
    ]));
    ok(&user.run(&["psbt", "sign", &path(&unsigned), "--wallet", "w", "-o", &path(&signed)]));
    let signed = path(&signed);
    let err = one_line_error(&user.run_keyless(&[
        "psbt",
        "finalize",
        &signed,
        "--wallet",
        "w",
        "--rpcport",
        &dead_port().to_string(),
        "--rpccookiefile",
        &node.cookie_file().display().to_string(),
    ]));
    assert!(err.contains("cannot reach bitcoind"), "{err}");
    let txid = ok(&user.run(&with(&["psbt", "finalize", &signed, "--wallet", "w"], &conn)));
    assert!(in_mempool(&node, txid.trim()), "{txid}");
}
