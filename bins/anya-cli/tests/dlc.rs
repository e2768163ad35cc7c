//! `anya dlc`: two data directories as the two parties of an enum contract on a real regtest
//! `bitcoind` (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`; skipped outside CI without it),
//! with the real binary: offer → accept → sign → receive (the funding broadcast) → confirmations
//! → attestation → close by CET on both sides, messages carried as files. Alice is also the
//! oracle (`--local-oracle`); Bob gets the attestation as a file (`--attestation`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anya_testkit::Bitcoind;
use bitcoin::{Address, Network};

mod common;
use common::ok;

const PASS: &str = "correct horse battery staple";
const COINBASE: u64 = 5_000_000_000;
const COLLATERAL: u64 = 100_000_000;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()
}

/// One party: a data directory, an anchor directory, a home without `~/.bitcoin`.
struct Party {
    _dir: tempfile::TempDir,
    data: PathBuf,
    anchor: PathBuf,
    home: PathBuf,
    files: PathBuf,
    conn: Vec<String>,
}

impl Party {
    fn new(node: &Bitcoind) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let files = dir.path().join("files");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::create_dir_all(&files).expect("files");
        Self {
            data: dir.path().join("data"),
            anchor: dir.path().join("anchor"),
            home,
            files,
            conn: vec![
                "--datadir".to_owned(),
                node.datadir().display().to_string(),
                "--rpcport".to_owned(),
                node.rpc_port().to_string(),
            ],
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_anya"));
        command
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--anchor-dir")
            .arg(&self.anchor)
            .args(args)
            .env("HOME", &self.home)
            .env("ANYA_PASSPHRASE", PASS);
        for var in [
            "ANYA_DATA_DIR",
            "ANYA_ANCHOR_DIR",
            "ANYA_RPC_URL",
            "ANYA_RPCPORT",
            "ANYA_BITCOIN_DATADIR",
        ] {
            command.env_remove(var);
        }
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run anya")
    }

    /// `args` followed by the node connection.
    fn run_rpc(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.conn.iter().map(String::as_str));
        self.run(&all)
    }

    /// `args` with the passphrase absent: only what needs no key works.
    fn run_keyless(&self, args: &[&str]) -> Output {
        self.command(args)
            .env_remove("ANYA_PASSPHRASE")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run anya")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.files.join(name)
    }

    fn balance(&self, wallet: &str) -> u64 {
        ok(&self.run_rpc(&["wallet", "sync", wallet]));
        let text = ok(&self.run_keyless(&["wallet", "balance", wallet]));
        text.lines()
            .find_map(|l| l.strip_prefix("total"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no total in {text}"))
    }

    /// `anya dlc show ID`'s value on the line `key`.
    fn show(&self, id: &str, key: &str) -> String {
        let text = ok(&self.run_keyless(&["dlc", "show", id]));
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// One line on stderr starting with `error: `.
#[track_caller]
fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(line.starts_with("error: "), "{stderr}");
    line
}

#[test]
fn two_data_directories_offer_accept_sign_fund_and_close_a_contract() {
    let Some(node) = Bitcoind::start() else { return };
    let burn = node.new_burn_address();
    let alice = Party::new(&node);
    let bob = Party::new(&node);
    for (party, wallet) in [(&alice, "alice"), (&bob, "bob")] {
        ok(&party.run(&["hsm", "init"]));
        ok(&party.run(&["key", "new", "root", "--type", "bip32", "--dlc"]));
        ok(&party.run(&["key", "new", "plain", "--type", "bip32"]));
        let birthday = node.height().to_string();
        for (name, root) in [(wallet, "root"), ("plain", "plain")] {
            ok(&party.run(&[
                "wallet",
                "new",
                name,
                "--root",
                root,
                "--kind",
                "bip84",
                "--birthday",
                &birthday,
            ]));
        }
        let address = ok(&party.run_keyless(&["wallet", "address", wallet]));
        let address = address
            .trim()
            .parse::<Address<_>>()
            .expect("address")
            .require_network(Network::Regtest)
            .expect("regtest");
        node.mine(1, &address);
    }
    node.mine(100, &burn);
    assert_eq!(alice.balance("alice"), COINBASE);
    assert_eq!(bob.balance("bob"), COINBASE);

    // --dlc is for roots; a wallet on a root without it cannot fund contracts.
    let line = error_line(&alice.run(&["key", "new", "k", "--type", "secp256k1", "--dlc"]));
    assert!(line.contains("bip32"), "{line}");
    let line = error_line(&bob.run(&["dlc", "identity", "--wallet", "plain"]));
    assert!(line.contains("does not allow DLC contract keys"), "{line}");

    let oracle_key = ok(&alice.run(&["oracle", "init"])).trim().to_owned();
    let alice_id = ok(&alice.run(&["dlc", "identity", "--wallet", "alice"]))
        .trim()
        .to_owned();
    let bob_id = ok(&bob.run(&["dlc", "identity", "--wallet", "bob"])).trim().to_owned();
    assert_eq!(alice_id.len(), 66, "{alice_id}");
    assert_ne!(alice_id, bob_id);
    // The first DLC command recorded the wallet: later ones may leave it out, not change it.
    assert_eq!(ok(&alice.run(&["dlc", "identity"])).trim(), alice_id);
    let line = error_line(&alice.run(&["dlc", "identity", "--wallet", "plain"]));
    assert!(line.contains("funded by wallet alice"), "{line}");

    let maturity = now() + 15;
    let announcement = ok(&alice.run(&[
        "oracle",
        "event",
        "create-enum",
        "coin",
        "--maturity",
        &maturity.to_string(),
        "--outcome",
        "heads",
        "--outcome",
        "tails",
        "--hex",
    ]));
    // Carried to Bob: he names the oracle too (an offer on an oracle he does not use is refused).
    std::fs::write(bob.file("coin.ann"), &announcement).expect("carry the announcement");

    // Offer (Alice reads her own oracle).
    let offer = alice.file("offer.msg");
    let temporary_id = ok(&alice.run_rpc(&[
        "dlc",
        "offer",
        "--counterparty",
        &bob_id,
        "--event",
        "coin",
        "--oracle",
        &oracle_key,
        "--outcome",
        "heads:160000000:40000000",
        "--outcome",
        "tails:30000000:170000000",
        "--offer-collateral",
        &COLLATERAL.to_string(),
        "--local-oracle",
        "--out",
        path(&offer),
    ]))
    .trim()
    .to_owned();
    assert_eq!(temporary_id.len(), 64, "{temporary_id}");
    assert_eq!(alice.show(&temporary_id, "state"), "offered");
    // Its offer can be written again while Bob has not answered.
    let again = alice.file("offer-again.msg");
    ok(&alice.run_keyless(&["dlc", "show", &temporary_id, "--message", path(&again)]));
    assert_eq!(
        std::fs::read_to_string(&again).expect("read"),
        std::fs::read_to_string(&offer).expect("read")
    );

    // Bob takes the offer in and accepts it; without the oracle it is refused.
    let accept = bob.file("accept.msg");
    std::fs::copy(&offer, bob.file("offer.msg")).expect("carry the offer");
    let line = error_line(&bob.run_rpc(&["dlc", "accept", path(&bob.file("offer.msg")), "--from", &alice_id]));
    assert!(line.contains("not one this party uses"), "{line}");
    assert!(ok(&bob.run_keyless(&["dlc", "list"])).is_empty(), "nothing stored");
    let contract_id = ok(&bob.run_rpc(&[
        "dlc",
        "accept",
        path(&bob.file("offer.msg")),
        "--from",
        &alice_id,
        "--announcement",
        path(&bob.file("coin.ann")),
        "--out",
        path(&accept),
    ]))
    .trim()
    .to_owned();
    assert_eq!(contract_id.len(), 64, "{contract_id}");
    assert_eq!(bob.show(&contract_id, "state"), "accepted");
    // A message that is not an accept is not signed.
    let line = error_line(&alice.run_rpc(&["dlc", "sign", path(&offer), "--from", &bob_id, "--local-oracle"]));
    assert!(line.contains("not an accept"), "{line}");

    // Alice takes the accept in: her reply is the sign message.
    let sign = alice.file("sign.msg");
    std::fs::copy(&accept, alice.file("accept.msg")).expect("carry the accept");
    let signed = ok(&alice.run_rpc(&[
        "dlc",
        "sign",
        path(&alice.file("accept.msg")),
        "--from",
        &bob_id,
        "--local-oracle",
        "--out",
        path(&sign),
    ]));
    assert_eq!(signed.trim(), contract_id);
    assert_eq!(alice.show(&contract_id, "state"), "signed");

    // Bob takes the sign message in, from standard input: he broadcasts the funding.
    let mut receive = bob.command(&["dlc", "receive", "-", "--from", &alice_id]);
    receive
        .args(&bob.conn)
        .stdin(std::fs::File::open(&sign).expect("the sign message"));
    let out = receive.output().expect("run anya");
    let line = ok(&out);
    assert!(line.contains(&contract_id) && line.contains("signed"), "{line}");
    let funding = bob.show(&contract_id, "funding");
    let pool: Vec<String> = node.rpc("getrawmempool", &[]);
    assert!(pool.contains(&funding), "the funding {funding} is in the mempool");

    node.mine(3, &burn);
    let shown = ok(&alice.run_rpc(&["dlc", "close", &contract_id, "--local-oracle"]));
    assert!(shown.contains("state         confirmed"), "{shown}");
    // Bob names no oracle: nothing to close with yet, and nothing needed to follow the funding.
    let shown = ok(&bob.run_rpc(&["dlc", "close", &contract_id]));
    assert!(shown.contains("state         confirmed"), "{shown}");

    // Matured and attested: Alice closes by CET.
    while now() < maturity + 2 {
        std::thread::sleep(Duration::from_millis(200));
    }
    node.mine(11, &burn);
    let attestation = ok(&alice.run(&["oracle", "attest", "coin", "--outcome", "heads", "--hex"]));
    std::fs::write(bob.file("attestation.hex"), &attestation).expect("carry the attestation");
    let shown = ok(&alice.run_rpc(&["dlc", "close", &contract_id, "--local-oracle"]));
    assert!(shown.contains("preclosed"), "{shown}");
    let cet = alice.show(&contract_id, "closing");
    node.mine(3, &burn);
    let shown = ok(&alice.run_rpc(&["dlc", "close", &contract_id, "--local-oracle"]));
    assert!(shown.contains("state         closed"), "{shown}");
    let shown = ok(&bob.run_rpc(&[
        "dlc",
        "close",
        &contract_id,
        "--attestation",
        path(&bob.file("attestation.hex")),
    ]));
    assert!(shown.contains("state         closed"), "{shown}");
    assert_eq!(bob.show(&contract_id, "closing"), cet);

    // Heads: Alice is paid 1.6 BTC for her 1 BTC, Bob 0.4 BTC for his.
    for (party, wallet, payout) in [(&alice, "alice", 160_000_000u64), (&bob, "bob", 40_000_000u64)] {
        let list = ok(&party.run_keyless(&["dlc", "list"]));
        assert_eq!(list.lines().count(), 1, "{list}");
        assert!(list.contains(&contract_id) && list.contains("\tclosed\t"), "{list}");
        let pnl: i64 = party
            .show(&contract_id, "pnl")
            .trim_end_matches(" sat")
            .parse()
            .expect("pnl");
        assert_eq!(pnl, payout as i64 - COLLATERAL as i64);
        let balance = party.balance(wallet);
        // What it put into the funding beyond its collateral is its share of the fee.
        let least = COINBASE - COLLATERAL - 2_000 + payout;
        let most = COINBASE - COLLATERAL + payout;
        assert!((least..most).contains(&balance), "{wallet}: {balance}");
    }
    let tx: serde_json::Value = node.rpc("getrawtransaction", &[cet.clone().into(), true.into()]);
    assert!(tx["confirmations"].as_u64().is_some_and(|c| c >= 3), "{tx}");
}
