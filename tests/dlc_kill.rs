//! A DLC under SIGKILL, against a real regtest bitcoind: two parties, each a process
//! (`anya-kill-dlc`) on its own store and keystore, take every step of an enum contract (offer,
//! accept, sign, funding broadcast, confirmation, attestation seen, CET broadcast, close) while
//! the test kills them at random moments inside each step. After a kill the party runs
//! `resume` (anya's recovery: orphan reservations released, a pending funding transaction
//! broadcast, the last message rebuilt from the store) and carries on. The contract must still
//! close with the right payouts, to the satoshi, and a rebuilt message must be byte for byte
//! the one the killed run would have sent.
#![allow(clippy::print_stderr, reason = "the test reports where each kill landed")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anya_bitcoin::wallet::AnyaWallet;
use anya_core_types::{Clock, Label, SystemClock, UnixTime};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{HsmProvider, KdfParams, SecretString, SoftwareHsm, SoftwareOptions};
use anya_layer2::dlc::contracts::{decode_message, KvDlcStorage};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use anya_tests::dlc::{COLLATERAL, PAYOUTS};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::{Amount, Transaction};
use ddk_manager::contract::Contract;
use ddk_manager::Storage as _;
use ddk_messages::Message;
use rand::Rng;
use secp256k1::{PublicKey, Secp256k1, SecretKey};

const PASS: &str = "kill-dlc";
/// Killed attempts at most per step before a run is let finish.
const ATTEMPTS: usize = 4;
/// Contracts run one after the other on one node.
const ROUNDS: usize = 2;

#[derive(Debug)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(self.0.load(Ordering::SeqCst))
    }
}

struct Party {
    dir: tempfile::TempDir,
    name: &'static str,
    /// How the other side knows this party.
    id: PublicKey,
}

impl Party {
    fn new(name: &'static str) -> Self {
        let secret = SecretKey::from_slice(&sha256::Hash::hash(name.as_bytes()).to_byte_array()).expect("key");
        Self {
            dir: tempfile::tempdir().expect("dir"),
            name,
            id: PublicKey::from_secret_key(&Secp256k1::new(), &secret),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

struct Net {
    node: Bitcoind,
    oracle_dir: tempfile::TempDir,
    now: u64,
    kills: Vec<String>,
    /// What each resume did besides rebuilding messages.
    resumed: Vec<String>,
    rng: rand::rngs::ThreadRng,
}

enum Run {
    Done(Vec<String>),
    Refused(String),
    Killed,
}

impl Net {
    /// Runs `args` as `party`; when `kill` is set, kills it at a random moment after it
    /// opened its store, keystore and manager (`READY`).
    fn run(&mut self, party: &Party, args: &[&str], kill: bool) -> Run {
        self.run_dying(party, args, kill, None)
    }

    /// [`run`](Self::run), the child told to kill itself around its first broadcast
    /// (`before-broadcast`, `after-broadcast`).
    fn run_dying(&mut self, party: &Party, args: &[&str], kill: bool, die: Option<&str>) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_anya-kill-dlc"));
        if let Some(die) = die {
            command.env("ANYA_KILL_DLC_DIE", die);
        }
        let mut child = command
            .arg(party.dir.path())
            .arg(party.name)
            .arg(self.node.rpc_url())
            .arg(self.node.cookie_file())
            .arg(self.oracle_dir.path())
            .arg(self.now.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the party");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        if kill {
            let delay = Duration::from_micros(self.rng.gen_range(0..40_000));
            // Wait for READY (or the end), then for the delay.
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
                let ready = line == "READY";
                lines.push(line);
                if ready {
                    break;
                }
            }
            std::thread::sleep(delay);
            if child.try_wait().expect("wait").is_none() {
                child.kill().expect("kill");
                child.wait().expect("reaped");
                self.kills.push(format!("{} {} after {delay:?}", party.name, args[0]));
                return Run::Killed;
            }
        }
        let status = child.wait().expect("wait");
        lines.extend(rx.iter());
        if std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            self.kills
                .push(format!("{} {} killed itself ({die:?})", party.name, args[0]));
            return Run::Killed;
        }
        match lines.last().map(String::as_str) {
            Some("OK") => Run::Done(lines),
            _ => match lines.iter().find(|l| l.starts_with("ERR ")) {
                Some(err) => Run::Refused(err.clone()),
                None => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    panic!("{} {args:?} exited with {status}: {lines:?} {stderr}", party.name)
                }
            },
        }
    }

    /// `args` until it finishes: each attempt is killed at random (all but the last).
    fn finish(&mut self, party: &Party, args: &[&str]) -> Run {
        for attempt in 0..=ATTEMPTS {
            let kill = attempt < ATTEMPTS && self.rng.gen_bool(0.9);
            match self.run(party, args, kill) {
                Run::Killed => continue,
                done => return done,
            }
        }
        unreachable!("the last attempt is not killed")
    }

    /// `resume` for `party` (never killed): the messages it would send again.
    fn resume(&mut self, party: &Party) -> Vec<Vec<u8>> {
        let prefix = party.file("resend");
        let Run::Done(lines) = self.run(party, &["resume", prefix.to_str().expect("path")], false) else {
            panic!("{} could not resume", party.name)
        };
        for (what, count) in lines.iter().filter_map(|l| l.split_once(' ')) {
            if (what == "RELEASED" || what == "BROADCAST") && count != "0" {
                self.resumed.push(format!("{} {what} {count}", party.name));
            }
        }
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("SEND "))
            .map(|path| std::fs::read(path).expect("message"))
            .collect()
    }

    fn states(&mut self, party: &Party) -> Vec<String> {
        let Run::Done(lines) = self.run(party, &["state"], false) else {
            panic!("state")
        };
        lines
            .iter()
            .filter(|l| *l != "READY" && *l != "OK")
            .filter_map(|l| l.split_once(' ').map(|(_, s)| s.to_owned()))
            .collect()
    }

    fn state(&mut self, party: &Party) -> String {
        let states = self.states(party);
        assert!(states.len() <= 1, "{}: {states:?}", party.name);
        states.into_iter().next().unwrap_or_default()
    }

    /// One protocol step that sends a message: runs `args` (writing its message to `out`)
    /// under kills; after a kill, `resume` may give the message instead (the step's state was
    /// stored before the kill). Returns the message.
    fn step_with_message(&mut self, party: &Party, args: &[&str], out: &Path, kind: fn(&Message) -> bool) -> Vec<u8> {
        for attempt in 0..=ATTEMPTS {
            let kill = attempt < ATTEMPTS && self.rng.gen_bool(0.9);
            match self.run(party, args, kill) {
                Run::Done(_) => {
                    let message = std::fs::read(out).expect("the step wrote its message");
                    // Once stored, the same message comes back from the store.
                    let again = self.resume(party);
                    if let Some(resent) = again.iter().find(|m| kind(&decode_message(m).expect("decodes"))) {
                        assert_eq!(resent, &message, "the rebuilt message is the one sent");
                    }
                    return message;
                }
                Run::Killed => {
                    let again = self.resume(party);
                    if let Some(m) = again.into_iter().find(|m| kind(&decode_message(m).expect("decodes"))) {
                        return m;
                    }
                }
                Run::Refused(e) => panic!("{} {args:?}: {e}", party.name),
            }
        }
        unreachable!("the last attempt is not killed")
    }

    fn mine(&self, n: u32) {
        self.node.mine(n, &self.node.new_burn_address());
    }

    fn advance_to(&mut self, t: u64) {
        self.now = t;
        let _: serde_json::Value = self.node.rpc("setmocktime", &[t.into()]);
        self.mine(11);
    }

    /// Ticks `party` under kills until its contract is in one of `states`.
    fn tick_until(&mut self, party: &Party, states: &[&str]) {
        for _ in 0..12 {
            if states.contains(&self.state(party).as_str()) {
                return;
            }
            if let Run::Refused(e) = self.finish(party, &["tick"]) {
                eprintln!("{} tick: {e}", party.name);
            }
        }
        panic!("{} never reached {states:?}: {}", party.name, self.state(party));
    }
}

fn open_oracle(dir: &Path, clock: Arc<dyn Clock>) -> Oracle {
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.join("oracle.db"), SqliteOptions::default()).expect("store"));
    let options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_anchor(Arc::new(FileAnchor::open(dir.join("anchor")).expect("anchor")));
    let hsm = SoftwareHsm::create(Arc::clone(&store), &SecretString::from(PASS), options).expect("keystore");
    Oracle::open(
        Arc::new(hsm) as Arc<dyn HsmProvider>,
        store,
        clock,
        OracleOptions::default(),
    )
    .expect("oracle")
}

fn is_offer(m: &Message) -> bool {
    matches!(m, Message::Offer(_))
}
fn is_accept(m: &Message) -> bool {
    matches!(m, Message::Accept(_))
}
fn is_sign(m: &Message) -> bool {
    matches!(m, Message::Sign(_))
}

/// The party's contract as its store holds it.
fn stored_contract(party: &Party) -> Contract {
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(party.file("party.db"), SqliteOptions::default()).expect("store"));
    let storage = KvDlcStorage::new(store, "anya/dlc/contracts").expect("storage");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut contracts = runtime.block_on(storage.get_contracts()).expect("contracts");
    assert_eq!(contracts.len(), 1, "{} holds one contract", party.name);
    contracts.remove(0)
}

fn balance(party: &Party) -> Amount {
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(party.file("party.db"), SqliteOptions::default()).expect("store"));
    let wallet = AnyaWallet::load_watch_only(store, Arc::new(SystemClock), Label::new(party.name).expect("label"))
        .expect("wallet");
    wallet.balance().total()
}

/// What `tx` takes from `party`'s wallet: its inputs there minus its outputs there.
fn put_in(party: &Party, node: &Bitcoind, tx: &Transaction) -> Amount {
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(party.file("party.db"), SqliteOptions::default()).expect("store"));
    let wallet = AnyaWallet::load_watch_only(store, Arc::new(SystemClock), Label::new(party.name).expect("label"))
        .expect("wallet");
    let mut ins = Amount::ZERO;
    for input in &tx.input {
        let hex: String = node.rpc(
            "getrawtransaction",
            &[input.previous_output.txid.to_string().into(), false.into()],
        );
        let prev: Transaction = bitcoin::consensus::encode::deserialize_hex(&hex).expect("tx");
        let out = &prev.output[input.previous_output.vout as usize];
        if wallet.is_mine(&out.script_pubkey) {
            ins += out.value;
        }
    }
    let outs: Amount = tx
        .output
        .iter()
        .filter(|o| wallet.is_mine(&o.script_pubkey))
        .map(|o| o.value)
        .sum();
    ins - outs
}

#[test]
fn a_contract_whose_parties_are_killed_at_every_step_still_closes_with_the_right_payouts() {
    let Some(node) = Bitcoind::start() else { return };
    let start = SystemClock.now().as_secs();
    let _: serde_json::Value = node.rpc("setmocktime", &[start.into()]);
    let mut net = Net {
        node,
        oracle_dir: tempfile::tempdir().expect("dir"),
        now: start,
        kills: Vec::new(),
        resumed: Vec::new(),
        rng: rand::thread_rng(),
    };
    let clock = Arc::new(TestClock(AtomicU64::new(start)));
    let oracle = open_oracle(net.oracle_dir.path(), Arc::clone(&clock) as Arc<dyn Clock>);
    for round in 0..ROUNDS {
        contract_round(&mut net, &oracle, &clock, round);
    }
    eprintln!("{} kills: {:?}; resumes: {:?}", net.kills.len(), net.kills, net.resumed);
    assert!(net.resumed.iter().any(|r| r == "bob BROADCAST 1"), "{:?}", net.resumed);
    assert!(!net.kills.is_empty(), "no run was killed");
}

/// What `tx` pays `party`'s wallet.
fn paid_to(party: &Party, tx: &Transaction) -> Amount {
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(party.file("party.db"), SqliteOptions::default()).expect("store"));
    let wallet = AnyaWallet::load_watch_only(store, Arc::new(SystemClock), Label::new(party.name).expect("label"))
        .expect("wallet");
    tx.output
        .iter()
        .filter(|o| wallet.is_mine(&o.script_pubkey))
        .map(|o| o.value)
        .sum()
}

/// One contract, from offer to close, under kills.
fn contract_round(net: &mut Net, oracle: &Oracle, clock: &TestClock, round: usize) {
    let maturity = net.now as u32 + 600;
    let event = format!("kill{round}");
    oracle
        .create_enum_event(&event, maturity, PAYOUTS.iter().map(|p| p.0.to_owned()).collect())
        .expect("event");

    let (alice, bob) = (Party::new("alice"), Party::new("bob"));
    for party in [&alice, &bob] {
        let Run::Done(lines) = net.run(party, &["address"], false) else {
            panic!("address")
        };
        let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> = lines[0].parse().expect("address");
        net.node.mine(1, &address.assume_checked());
    }
    net.mine(100);
    for party in [&alice, &bob] {
        assert!(matches!(net.run(party, &["sync"], false), Run::Done(_)));
    }
    let (alice_hex, bob_hex) = (
        alice.id.serialize().to_lower_hex_string(),
        bob.id.serialize().to_lower_hex_string(),
    );
    let path = |p: &Path| p.to_str().expect("path").to_owned();

    // Offer.
    let offer_path = alice.file("offer.msg");
    let offer = net.step_with_message(
        &alice,
        &["offer", &event, &bob_hex, &path(&offer_path)],
        &offer_path,
        is_offer,
    );
    std::fs::write(&offer_path, &offer).expect("write");
    let Message::Offer(offer_msg) = decode_message(&offer).expect("offer") else {
        panic!("an offer")
    };
    let temp_id = offer_msg.temporary_contract_id.to_lower_hex_string();

    // Bob receives it (a second delivery of a stored offer is refused as a duplicate).
    let unused = path(&bob.file("unused.msg"));
    match net.finish(&bob, &["receive", &path(&offer_path), &alice_hex, &unused]) {
        Run::Done(_) => {}
        Run::Refused(e) => assert!(e.contains("identical id"), "{e}"),
        Run::Killed => unreachable!("the last attempt is not killed"),
    }
    assert_eq!(net.state(&bob), "offered");

    // Accept.
    let accept_path = bob.file("accept.msg");
    let accept = net.step_with_message(
        &bob,
        &["accept", &temp_id, &path(&accept_path)],
        &accept_path,
        is_accept,
    );
    std::fs::write(&accept_path, &accept).expect("write");
    assert_eq!(net.state(&bob), "accepted");

    // Alice verifies the accept and signs.
    let sign_path = alice.file("sign.msg");
    let sign = net.step_with_message(
        &alice,
        &["receive", &path(&accept_path), &bob_hex, &path(&sign_path)],
        &sign_path,
        is_sign,
    );
    std::fs::write(&sign_path, &sign).expect("write");
    assert_eq!(net.state(&alice), "signed");

    // Bob verifies the sign message and broadcasts the funding transaction. His first run dies
    // between storing the signed contract and the broadcast (the funding transaction never
    // leaves); a restarted Bob finds the signed contract whose funding transaction the node
    // does not know, completes it with his stored counterparty signatures and his own, and
    // sends it.
    let sign_file = path(&sign_path);
    let args = ["receive", sign_file.as_str(), alice_hex.as_str(), unused.as_str()];
    assert!(matches!(
        net.run_dying(&bob, &args, false, Some("before-broadcast")),
        Run::Killed
    ));
    assert_eq!(net.state(&bob), "signed");
    let in_mempool: Vec<String> = net.node.rpc("getrawmempool", &[]);
    assert!(in_mempool.is_empty(), "the funding transaction never left");
    assert!(net.resume(&bob).is_empty(), "bob has no message to send again");
    assert_eq!(net.state(&bob), "signed");
    let Contract::Signed(signed) = stored_contract(&bob) else {
        panic!("signed")
    };
    let fund = signed.accepted_contract.dlc_transactions.fund.clone();
    let in_mempool: Vec<String> = net.node.rpc("getrawmempool", &[]);
    assert!(
        in_mempool.contains(&fund.compute_txid().to_string()),
        "the funding transaction reached the node"
    );

    // Confirmation.
    net.mine(3);
    net.tick_until(&alice, &["confirmed"]);
    net.tick_until(&bob, &["confirmed"]);

    // Maturity, attestation, CET. Alice's first close dies right after the CET broadcast,
    // before she stores it; her next tick closes again.
    net.advance_to(u64::from(maturity) + 60);
    clock.0.store(net.now, Ordering::SeqCst);
    let (outcome, alice_payout, bob_payout) = PAYOUTS[round % 2];
    oracle.attest_enum(&event, outcome).expect("attested");
    assert!(matches!(
        net.run_dying(&alice, &["tick"], false, Some("after-broadcast")),
        Run::Killed
    ));
    assert_eq!(net.state(&alice), "confirmed");
    let in_mempool: Vec<String> = net.node.rpc("getrawmempool", &[]);
    assert_eq!(in_mempool.len(), 1, "the CET left");
    net.tick_until(&alice, &["preclosed", "closed"]);
    net.mine(3);
    net.tick_until(&alice, &["closed"]);
    net.tick_until(&bob, &["closed"]);

    // Payouts, to the satoshi.
    let Contract::Closed(closed) = stored_contract(&alice) else {
        panic!("closed")
    };
    let cet = closed.signed_cet.expect("closed by a CET");
    for party in [&alice, &bob] {
        assert!(matches!(net.run(party, &["sync"], false), Run::Done(_)));
    }
    let fund_on_chain: String = net.node.rpc(
        "getrawtransaction",
        &[fund.compute_txid().to_string().into(), false.into()],
    );
    let fund: Transaction = bitcoin::consensus::encode::deserialize_hex(&fund_on_chain).expect("tx");
    for (party, payout) in [(&alice, alice_payout), (&bob, bob_payout)] {
        let put_in = put_in(party, &net.node, &fund);
        assert!(
            put_in > COLLATERAL && put_in < COLLATERAL + Amount::from_sat(2_000),
            "{}: {put_in}",
            party.name
        );
        assert_eq!(
            paid_to(party, &cet),
            payout,
            "{} is paid its payout by the CET",
            party.name
        );
        assert_eq!(
            balance(party),
            Amount::from_sat(50 * 100_000_000) - put_in + payout,
            "{}'s balance",
            party.name
        );
    }
}
