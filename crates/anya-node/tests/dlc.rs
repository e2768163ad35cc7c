//! Two `anya-node` daemons as the two parties of a DLC contract, on one real regtest `bitcoind`
//! (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`; skipped outside CI without it), driven only
//! through the API: Alice is also the oracle (`[oracle] enabled`, her own oracle as
//! `local = true`); Bob reads Alice's oracle over HTTP (`kind = "kormir"`, its key pinned).
//!
//! Offer, receive, accept, sign and the funding broadcast through `/v1/dlc/…`, for an enum and
//! a numeric contract; the fundings confirm; the oracle attests; `POST /v1/dlc/tick` closes
//! both by CET on both sides, each wallet paid its payouts to the satoshi; every step is a
//! `dlc_contract` event. On the
//! way: a restart of Bob after accepting publishes the accept again as a `dlc_resend` event;
//! tokens limited to other keys or wallets are refused; hostile bodies and messages are typed
//! 4xx answers that change no contract; a node whose wallet root lacks the DLC opt-in does not
//! start.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anya_testkit::Bitcoind;
use common::{get, post, request, start_configured, token, Daemon, Events, PASS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// 50 BTC: the coinbase each wallet is funded with.
const COINBASE: u64 = 5_000_000_000;
const COLLATERAL: u64 = 100_000_000;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()
}

/// The chain, and a body limit that takes a numeric contract's accept (one adaptor signature
/// per CET).
fn chain_section(b: &Bitcoind) -> String {
    format!(
        "chain = \"bitcoind\"\n[api]\nbody_limit = 1048576\n[bitcoind]\nurl = {:?}\ncookie_file = {:?}\nnetwork = \"regtest\"\npoll_secs = 1\n",
        b.rpc_url(),
        b.cookie_file().display().to_string()
    )
}

/// The `[dlc]` section: manual ticks only (the loop's first tick runs at start).
fn dlc_section(wallet: &str, oracles: &str) -> String {
    format!("[dlc]\nenabled = true\nwallet = {wallet:?}\ntick_secs = 3600\n{oracles}")
}

/// One party: its directory (configuration and data), its daemon and its admin token.
struct Party {
    dir: tempfile::TempDir,
    daemon: Option<Daemon>,
    admin: String,
    name: &'static str,
}

impl Party {
    fn start(name: &'static str, toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let (daemon, _) = start_configured(dir.path(), toml);
        let admin = daemon.admin.clone().expect("the first start prints an admin token");
        Self {
            dir,
            daemon: Some(daemon),
            admin,
            name,
        }
    }

    fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.d().addr
    }

    /// Stops the daemon (SIGKILL) and starts it again with `toml`.
    fn restart(&mut self, toml: &str) {
        drop(self.daemon.take());
        let (daemon, _) = start_configured(self.dir.path(), toml);
        self.daemon = Some(daemon);
    }

    /// Stops the daemon and runs it with `toml` to its exit; its stderr.
    fn start_failing(&mut self, toml: &str) -> String {
        drop(self.daemon.take());
        let config = self.dir.path().join("anya.toml");
        std::fs::write(&config, toml).expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_anya-node"))
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env("ANYA_PASSPHRASE", PASS)
            .env_remove("ANYA_DATA_DIR")
            .env_remove("ANYA_LISTEN")
            .output()
            .expect("run anya-node");
        assert!(!out.status.success(), "{} started: {out:?}", self.name);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn get(&self, path: &str) -> Value {
        let (status, v) = get(self.addr(), path, &self.admin);
        assert_eq!(status, 200, "{} GET {path}: {v}", self.name);
        v
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post(self.addr(), path, &self.admin, body)
    }

    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert!(
            (200..300).contains(&status),
            "{} POST {path} {body}: {status} {v}",
            self.name
        );
        v
    }

    fn tick(&self) -> Vec<Value> {
        let (status, _, body) = request(self.addr(), "POST", "/v1/dlc/tick", Some(&self.admin), None);
        let v = common::json_of(&body);
        assert_eq!(status, 200, "{} tick: {v}", self.name);
        v.as_array().expect("an array").clone()
    }

    fn contracts(&self) -> Vec<Value> {
        self.get("/v1/dlc/contracts").as_array().expect("an array").clone()
    }

    fn contract(&self, id: &str) -> Value {
        self.get(&format!("/v1/dlc/contracts/{id}"))
    }

    fn sync(&self) {
        self.ok(&format!("/v1/wallets/{}/sync", self.name), &json!({}));
    }

    fn balance(&self) -> u64 {
        self.sync();
        let b = self.get(&format!("/v1/wallets/{}/balance", self.name));
        [
            "confirmed_sat",
            "trusted_pending_sat",
            "untrusted_pending_sat",
            "immature_sat",
        ]
        .iter()
        .map(|k| b[k].as_u64().expect("sats"))
        .sum()
    }

    /// What the wallet's transaction `txid` sent from it and paid to it.
    fn tx(&self, txid: &str) -> (u64, u64) {
        let txs = self.get(&format!("/v1/wallets/{}/transactions", self.name));
        let tx = txs
            .as_array()
            .expect("array")
            .iter()
            .find(|t| t["txid"] == txid)
            .unwrap_or_else(|| panic!("{} has no transaction {txid}: {txs}", self.name));
        (
            tx["sent_sat"].as_u64().expect("sent"),
            tx["received_sat"].as_u64().expect("received"),
        )
    }
}

/// A problem answer: 4xx, problem+json with a code; the code.
#[track_caller]
fn refused(answer: (u16, Value)) -> String {
    let (status, v) = answer;
    assert!((400..500).contains(&status), "{status} {v}");
    v["code"].as_str().unwrap_or_else(|| panic!("no code: {v}")).to_owned()
}

/// Hostile messages: none is a message for this party to act on.
#[derive(Debug, Clone)]
enum Hostile {
    Bytes(Vec<u8>),
    /// The real offer with bytes after it.
    Trailing(Vec<u8>),
    /// The first bytes of the real offer only (never a whole message).
    Prefix(usize),
    /// The real offer's body under another message type.
    OtherType(u16),
    /// Not hex.
    NotHex(String),
    /// A sender that is not a public key.
    From(String),
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512).prop_map(Hostile::Bytes),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Hostile::Trailing),
        (0usize..48).prop_map(Hostile::Prefix),
        any::<u16>()
            .prop_filter("not a contract message type", |t| ![42778, 42780, 42782, 42784]
                .contains(t))
            .prop_map(Hostile::OtherType),
        "[0-9a-f]{0,7}[g-z ]{1,3}[0-9a-f]{0,8}".prop_map(Hostile::NotHex),
        "[0-9a-f]{0,70}".prop_map(Hostile::From),
    ]
}

/// Sends every kind of hostile message to `to` (as if from `from`), and checks each is a
/// typed 4xx that leaves `to`'s contracts as they were.
fn hostile_messages(to: &Party, from: &str, offer: &[u8]) {
    let before = to.contracts();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let result = runner.run(&hostile(), |h| {
        let (sender, message) = match &h {
            Hostile::Bytes(b) => (from.to_owned(), hex(b)),
            Hostile::Trailing(extra) => (from.to_owned(), hex(&[offer, extra].concat())),
            Hostile::Prefix(n) => (from.to_owned(), hex(&offer[..*n.min(&offer.len())])),
            Hostile::OtherType(t) => (from.to_owned(), hex(&[&t.to_be_bytes()[..], &offer[2..]].concat())),
            Hostile::NotHex(s) => (from.to_owned(), s.clone()),
            Hostile::From(s) => (s.clone(), hex(offer)),
        };
        let (status, v) = to.post("/v1/dlc/messages", &json!({"from": sender, "message": message}));
        prop_assert!((400..500).contains(&status), "{:?}: {} {}", h, status, v);
        prop_assert!(v["code"].is_string(), "{:?}: {}", h, v);
        let now = to.contracts();
        prop_assert_eq!(&now, &before, "{:?} changed the contracts", h);
        Ok::<(), TestCaseError>(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Bodies that are not what the route reads.
    for body in [
        json!({"from": from, "message": hex(offer), "extra": 1}),
        json!({"from": from}),
        json!({"from": 7, "message": hex(offer)}),
        json!({"from": from, "message": ["a7"]}),
        json!([from, hex(offer)]),
    ] {
        let code = refused(to.post("/v1/dlc/messages", &body));
        assert_eq!(code, "invalid_body", "{body}");
    }
    assert_eq!(to.contracts(), before);
}

fn wait_until(t: u64) {
    while now() < t {
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_nodes_offer_accept_sign_and_close_a_contract_by_cet_through_the_api() {
    let Some(bitcoind) = Bitcoind::start() else {
        return;
    };
    let burn = bitcoind.new_burn_address();
    let chain = chain_section(&bitcoind);
    let alice_base = format!("{chain}[oracle]\nenabled = true\n");
    let mut alice = Party::start("alice", &alice_base);
    let mut bob = Party::start("bob", &chain);

    // Wallets whose roots allow DLC contract keys, one coinbase each; and one that does not.
    for (party, root) in [(&alice, "alice-root"), (&bob, "bob-root")] {
        let (status, w) = party.post(
            "/v1/wallets",
            &json!({"name": party.name, "template": "bip84", "root": root, "dlc": true}),
        );
        assert_eq!(status, 201, "{w}");
        assert_eq!(party.get(&format!("/v1/keys/{root}"))["dlc"], true);
        let a = party.ok(&format!("/v1/wallets/{}/address", party.name), &json!({}));
        let address: bitcoin::Address<_> = a["address"].as_str().expect("address").parse().expect("an address");
        bitcoind.mine(1, &address.assume_checked());
    }
    let (status, plain) = bob.post(
        "/v1/wallets",
        &json!({"name": "plain", "template": "bip84", "root": "plain-root"}),
    );
    assert_eq!(status, 201, "{plain}");
    assert_eq!(bob.get("/v1/keys/plain-root")["dlc"], false);
    // An existing root without the opt-in cannot become a DLC root.
    let code = refused(bob.post(
        "/v1/wallets",
        &json!({"name": "plain2", "template": "bip86", "root": "plain-root", "dlc": true}),
    ));
    assert_eq!(code, "root_not_dlc");
    bitcoind.mine(100, &burn);
    assert_eq!(alice.balance(), COINBASE);
    assert_eq!(bob.balance(), COINBASE);

    // DLC on a wallet whose root lacks the opt-in: the node does not start.
    let no_opt_in = format!(
        "{chain}{}",
        dlc_section("plain", "[[dlc.oracles]]\nurl = \"http://127.0.0.1:9\"\n")
    );
    let err = bob.start_failing(&no_opt_in);
    assert!(err.contains("does not allow DLC contract keys"), "{err}");
    // On regtest's in-process chain it is a configuration error.
    let err = bob.start_failing(&dlc_section("bob", "[[dlc.oracles]]\nurl = \"http://127.0.0.1:9\"\n"));
    assert!(err.contains("dlc.enabled"), "{err}");

    alice.restart(&format!(
        "{alice_base}{}",
        dlc_section("alice", "[[dlc.oracles]]\nlocal = true\n")
    ));
    let oracle_key = {
        let (status, _, body) = request(alice.addr(), "GET", "/pubkey", None, None);
        assert_eq!(status, 200);
        common::json_of(&body)["pubkey"].as_str().expect("key").to_owned()
    };
    let bob_toml = format!(
        "{chain}{}",
        dlc_section(
            "bob",
            &format!(
                "[[dlc.oracles]]\nurl = \"http://{}\"\nkind = \"kormir\"\npublic_key = {oracle_key:?}\n",
                alice.addr()
            )
        )
    );
    bob.restart(&bob_toml);

    let alice_id = alice.get("/v1/dlc/identity");
    let bob_id = bob.get("/v1/dlc/identity");
    assert_eq!(alice_id["oracles"], json!([oracle_key]));
    assert_eq!(bob_id["oracles"], json!([oracle_key]));
    assert_eq!(bob_id["wallet"], "bob");
    let (alice_id, bob_id) = (
        alice_id["public_key"].as_str().expect("key").to_owned(),
        bob_id["public_key"].as_str().expect("key").to_owned(),
    );
    assert_ne!(alice_id, bob_id);
    assert_eq!(alice.get("/v1/dlc/identity")["public_key"], alice_id.as_str(), "stable");

    // Every DLC route is admin-only, and refused to tokens limited to other keys or wallets.
    for body in [
        json!({"name": "keys", "scopes": ["admin"], "keys": ["k1"]}),
        json!({"name": "wallets", "scopes": ["admin"], "wallets": ["other"]}),
        json!({"name": "reader", "scopes": ["read"]}),
    ] {
        let t = token(alice.addr(), &alice.admin, body.clone());
        let (status, v) = get(alice.addr(), "/v1/dlc/identity", &t);
        assert_eq!(status, 403, "{body}: {v}");
        let (status, v) = get(alice.addr(), "/v1/dlc/contracts", &t);
        assert_eq!(status, 403, "{body}: {v}");
    }
    let allowed = token(
        alice.addr(),
        &alice.admin,
        json!({"name": "dlc", "scopes": ["admin"], "keys": ["alice-root"], "wallets": ["alice"]}),
    );
    assert_eq!(get(alice.addr(), "/v1/dlc/identity", &allowed).0, 200);

    let (mut alice_events, _) = Events::connect(alice.addr(), &alice.admin).expect("events");

    // The oracle's event, maturing in a few seconds.
    let maturity = now() + 12;
    alice.ok(
        "/create-enum",
        &json!({"event_id": "coin", "outcomes": ["heads", "tails"], "event_maturity_epoch": maturity}),
    );
    let contract = |outcomes: Value| {
        json!({
            "kind": "enum",
            "event_id": "coin",
            "oracles": [oracle_key],
            "threshold": 1,
            "outcomes": outcomes,
            "offer_collateral_sat": COLLATERAL,
            "accept_collateral_sat": COLLATERAL,
            "fee_rate_sat_per_vb": 2
        })
    };
    let payouts = json!([
        {"outcome": "heads", "offer_payout_sat": 160_000_000u64, "accept_payout_sat": 40_000_000u64},
        {"outcome": "tails", "offer_payout_sat": 30_000_000u64, "accept_payout_sat": 170_000_000u64}
    ]);

    // Offers the API refuses before the manager sees them.
    let mut unknown = contract(payouts.clone());
    unknown["oracles"] = json!(["79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"]);
    let mut no_event = contract(payouts.clone());
    no_event["event_id"] = json!("no-such-event");
    for (body, code) in [
        (json!({"counterparty": bob_id, "contract": unknown}), "unknown_oracle"),
        (
            json!({"counterparty": bob_id, "contract": no_event}),
            "announcement_unavailable",
        ),
        (
            json!({"counterparty": alice_id, "contract": contract(payouts.clone())}),
            "invalid_public_key",
        ),
        (
            json!({"counterparty": "02", "contract": contract(payouts.clone())}),
            "invalid_public_key",
        ),
        (
            json!({"counterparty": bob_id, "contract": contract(json!([{"outcome": "heads", "offer_payout_sat": 1, "accept_payout_sat": 1}]))}),
            "invalid_contract",
        ),
        (
            json!({"counterparty": bob_id, "contract": contract(payouts.clone()), "note": "x"}),
            "invalid_body",
        ),
        (
            json!({"counterparty": bob_id, "contract": contract(json!([
                {"outcome": "heads", "offer_payout_sat": 160_000_000u64, "accept_payout_sat": 40_000_000u64},
                {"outcome": "edge", "offer_payout_sat": 30_000_000u64, "accept_payout_sat": 170_000_000u64}
            ]))}),
            "invalid_contract",
        ),
    ] {
        assert_eq!(refused(alice.post("/v1/dlc/offers", &body)), code, "{body}");
    }
    assert!(alice.contracts().is_empty());

    // Offer.
    let (status, offer) = alice.post(
        "/v1/dlc/offers",
        &json!({"counterparty": bob_id, "contract": contract(payouts.clone())}),
    );
    assert_eq!(status, 201, "{offer}");
    let temporary_id = offer["temporary_id"].as_str().expect("id").to_owned();
    let offer_hex = offer["message"].as_str().expect("message").to_owned();
    assert_eq!(offer["contract"]["state"], "offered");
    assert_eq!(offer["contract"]["is_offer_party"], true);
    assert_eq!(offer["contract"]["counterparty"], bob_id.as_str());
    assert_eq!(offer["contract"]["events"], json!(["coin"]));
    alice_events.until("dlc_contract", |e| {
        e["wallet"] == "alice" && e["contract"]["state"] == "offered" && e["contract"]["id"] == temporary_id.as_str()
    });
    assert_eq!(
        alice.contract(&temporary_id)["message"],
        offer_hex.as_str(),
        "the offer waits on Bob"
    );

    // Bob receives it.
    let received = bob.ok("/v1/dlc/messages", &json!({"from": alice_id, "message": offer_hex}));
    assert_eq!(received["reply"], Value::Null);
    assert_eq!(received["contract"]["state"], "offered");
    assert_eq!(received["contract"]["is_offer_party"], false);
    assert_eq!(received["contract"]["counterparty"], alice_id.as_str());
    let offer_bytes: Vec<u8> = (0..offer_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&offer_hex[i..i + 2], 16).expect("hex"))
        .collect();
    hostile_messages(&bob, &alice_id, &offer_bytes);

    // Bob accepts.
    assert_eq!(
        refused(bob.post(&format!("/v1/dlc/contracts/{}/accept", "00".repeat(32)), &json!({}))),
        "contract_not_found"
    );
    assert_eq!(
        refused(bob.post("/v1/dlc/contracts/zz/accept", &json!({}))),
        "invalid_contract_id"
    );
    let accepted = bob.ok(&format!("/v1/dlc/contracts/{temporary_id}/accept"), &json!({}));
    let contract_id = accepted["contract_id"].as_str().expect("id").to_owned();
    let accept_hex = accepted["message"].as_str().expect("message").to_owned();
    assert_eq!(accepted["contract"]["state"], "accepted");
    assert_eq!(accepted["contract"]["id"], contract_id.as_str());
    assert_eq!(bob.contract(&contract_id)["message"], accept_hex.as_str());
    assert_eq!(
        bob.contract(&temporary_id)["id"],
        contract_id.as_str(),
        "found by its temporary id"
    );

    // Bob's process stops after accepting: started again, it publishes the accept to deliver
    // again, to the first subscriber.
    bob.restart(&bob_toml);
    let (mut bob_events, _) = Events::connect(bob.addr(), &bob.admin).expect("events");
    let resend = bob_events.until("dlc_resend", |_| true);
    assert_eq!(resend["message"], accept_hex.as_str(), "the same bytes: {resend}");
    assert_eq!(resend["to"], alice_id.as_str());
    assert_eq!(resend["contract"], contract_id.as_str());
    assert_eq!(resend["wallet"], "bob");

    // Alice receives the accept (from the wrong party it is refused); her reply is the sign.
    let code = refused(alice.post("/v1/dlc/messages", &json!({"from": alice_id, "message": accept_hex})));
    assert!(code.starts_with("dlc_"), "{code}");
    let signed = alice.ok("/v1/dlc/messages", &json!({"from": bob_id, "message": accept_hex}));
    let sign_hex = signed["reply"].as_str().expect("a sign message").to_owned();
    assert_eq!(signed["contract"]["state"], "signed");
    assert_eq!(signed["contract"]["id"], contract_id.as_str());
    // The same accept again: the contract has left that state.
    let before = alice.contracts();
    refused(alice.post("/v1/dlc/messages", &json!({"from": bob_id, "message": accept_hex})));
    assert_eq!(alice.contracts(), before);

    // Bob receives the sign: he broadcasts the funding transaction.
    let funded = bob.ok("/v1/dlc/messages", &json!({"from": alice_id, "message": sign_hex}));
    assert_eq!(funded["reply"], Value::Null);
    assert_eq!(funded["contract"]["state"], "signed");
    let funding_txid = funded["contract"]["funding_txid"]
        .as_str()
        .expect("a funding txid")
        .to_owned();
    let entry: Value = bitcoind.rpc("getmempoolentry", &[json!(funding_txid)]);
    assert!(
        entry["vsize"].is_u64(),
        "bitcoind holds the funding transaction: {entry}"
    );
    assert_eq!(alice.contract(&contract_id)["funding_txid"], funding_txid.as_str());
    bob_events.until("dlc_contract", |e| e["contract"]["state"] == "signed");

    // Confirmed.
    bitcoind.mine(3, &burn);
    for party in [&alice, &bob] {
        let changed = party.tick();
        assert_eq!(changed.len(), 1, "{}: {changed:?}", party.name);
        assert_eq!(changed[0]["state"], "confirmed", "{}: {changed:?}", party.name);
        assert_eq!(party.contract(&contract_id)["message"], Value::Null);
    }
    assert!(alice.tick().is_empty(), "nothing changes twice");

    // A numeric contract on a 10-digit event, opened the same way (its funding spends the
    // change of the first): the offer party's payout rises linearly with the value, to
    // multiples of 0.1 BTC.
    alice.ok(
        "/create-numeric",
        &json!({"event_id": "price", "num_digits": 10, "is_signed": false, "precision": 0, "unit": "usd",
                "event_maturity_epoch": maturity, "base": 2}),
    );
    let numeric = json!({
        "kind": "numeric",
        "event_id": "price",
        "oracles": [oracle_key],
        "nb_digits": 10,
        "payout_points": [
            {"outcome": 0, "offer_payout_sat": 0},
            {"outcome": 1023, "offer_payout_sat": 2 * COLLATERAL}
        ],
        "rounding_mod_sat": 10_000_000,
        "offer_collateral_sat": COLLATERAL,
        "accept_collateral_sat": COLLATERAL,
        "fee_rate_sat_per_vb": 2
    });
    let mut wrong_digits = numeric.clone();
    wrong_digits["nb_digits"] = json!(12);
    wrong_digits["payout_points"][1]["outcome"] = json!(4095);
    let before = alice.contracts();
    for (contract, why) in [
        (wrong_digits, "10 digits"),
        (contract(payouts.clone()), "a numeric event"),
    ] {
        let mut body = json!({"counterparty": bob_id, "contract": contract});
        body["contract"]["event_id"] = json!("price");
        let (status, v) = alice.post("/v1/dlc/offers", &body);
        assert_eq!((status, v["code"].as_str()), (422, Some("invalid_contract")), "{v}");
        assert!(v["detail"].as_str().is_some_and(|d| d.contains(why)), "{v}");
    }
    assert_eq!(alice.contracts(), before);
    let (status, offer2) = alice.post("/v1/dlc/offers", &json!({"counterparty": bob_id, "contract": numeric}));
    assert_eq!(status, 201, "{offer2}");
    let temporary2 = offer2["temporary_id"].as_str().expect("id").to_owned();
    // The same offer over 2^40 values would have Bob's manager evaluate the curve at each:
    // refused before it sees it.
    let hex_bytes = |h: &str| -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let mut wide = anya_layer2::dlc::contracts::decode_message(&hex_bytes(offer2["message"].as_str().expect("hex")))
        .expect("the offer decodes");
    if let ddk_messages::Message::Offer(o) = &mut wide {
        if let ddk_messages::contract_msgs::ContractInfo::SingleContractInfo(s) = &mut o.contract_info {
            if let ddk_messages::contract_msgs::ContractDescriptor::NumericOutcomeContractDescriptor(n) =
                &mut s.contract_info.contract_descriptor
            {
                n.payout_function.last_endpoint.event_outcome = 1 << 40;
            }
        }
    }
    let wide: String = anya_layer2::dlc::contracts::encode_message(&wide)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_ne!(wide, offer2["message"].as_str().expect("hex"));
    let before = bob.contracts();
    let (status, v) = bob.post("/v1/dlc/messages", &json!({"from": alice_id, "message": wide}));
    assert_eq!((status, v["code"].as_str()), (422, Some("dlc_refused")), "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("more than 1048576 values")),
        "{v}"
    );
    assert_eq!(bob.contracts(), before);
    let got = bob.ok(
        "/v1/dlc/messages",
        &json!({"from": alice_id, "message": offer2["message"]}),
    );
    assert_eq!(got["contract"]["state"], "offered");
    let accepted2 = bob.ok(&format!("/v1/dlc/contracts/{temporary2}/accept"), &json!({}));
    let numeric_id = accepted2["contract_id"].as_str().expect("id").to_owned();
    let signed2 = alice.ok(
        "/v1/dlc/messages",
        &json!({"from": bob_id, "message": accepted2["message"]}),
    );
    let funded2 = bob.ok(
        "/v1/dlc/messages",
        &json!({"from": alice_id, "message": signed2["reply"]}),
    );
    assert_eq!(funded2["contract"]["state"], "signed");
    let numeric_funding = funded2["contract"]["funding_txid"]
        .as_str()
        .expect("funding")
        .to_owned();
    bitcoind.mine(3, &burn);
    for party in [&alice, &bob] {
        let changed = party.tick();
        assert_eq!(changed.len(), 1, "{}: {changed:?}", party.name);
        assert_eq!(changed[0]["id"], numeric_id.as_str(), "{}: {changed:?}", party.name);
        assert_eq!(changed[0]["state"], "confirmed", "{}: {changed:?}", party.name);
    }

    // Matured, attested: Alice closes both by CET.
    wait_until(maturity + 2);
    bitcoind.mine(11, &burn);
    alice.ok("/sign-enum", &json!({"event_id": "coin", "outcome": "heads"}));
    alice.ok("/sign-numeric", &json!({"event_id": "price", "outcome": 512}));
    let changed = alice.tick();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed.iter().all(|c| c["state"] == "preclosed"), "{changed:?}");
    let closing = |changed: &[Value], id: &str| -> String {
        changed
            .iter()
            .find(|c| c["id"] == id)
            .and_then(|c| c["closing_txid"].as_str())
            .unwrap_or_else(|| panic!("{id} closed in {changed:?}"))
            .to_owned()
    };
    let cet = closing(&changed, &contract_id);
    let numeric_cet = closing(&changed, &numeric_id);
    bitcoind.mine(3, &burn);
    for party in [&alice, &bob] {
        let changed = party.tick();
        assert_eq!(changed.len(), 2, "{}: {changed:?}", party.name);
        assert!(
            changed.iter().all(|c| c["state"] == "closed"),
            "{}: {changed:?}",
            party.name
        );
        assert_eq!(closing(&changed, &contract_id), cet, "{}", party.name);
        assert_eq!(closing(&changed, &numeric_id), numeric_cet, "{}", party.name);
    }
    alice_events.until("dlc_contract", |e| e["contract"]["state"] == "closed");
    bob_events.until("dlc_contract", |e| e["contract"]["state"] == "closed");

    // The payouts, to the satoshi: heads pays Alice 1.6 BTC and Bob 0.4 BTC; 512 of 1023 pays
    // Alice 2 BTC × 512/1023, rounded to 1 BTC, and Bob the other 1 BTC.
    for (party, payout, numeric_payout) in [
        (&alice, 160_000_000u64, 100_000_000u64),
        (&bob, 40_000_000, 100_000_000),
    ] {
        let balance = party.balance();
        let mut expected = COINBASE;
        for (id, funding, cet, payout) in [
            (&contract_id, &funding_txid, &cet, payout),
            (&numeric_id, &numeric_funding, &numeric_cet, numeric_payout),
        ] {
            let view = party.contract(id);
            assert_eq!(view["state"], "closed");
            assert_eq!(
                view["pnl_sat"],
                payout as i64 - COLLATERAL as i64,
                "{}: {view}",
                party.name
            );
            let (fund_sent, fund_back) = party.tx(funding);
            let put_in = fund_sent - fund_back;
            assert!(
                put_in > COLLATERAL && put_in < COLLATERAL + 2_000,
                "{} put in {put_in} sat for a collateral of {COLLATERAL}",
                party.name
            );
            assert_eq!(party.tx(cet), (0, payout), "{}: the CET pays the payout", party.name);
            expected = expected - put_in + payout;
            let cet_tx: Value = bitcoind.rpc("getrawtransaction", &[json!(cet), json!(true)]);
            assert!(cet_tx["confirmations"].as_u64().is_some_and(|c| c >= 3), "{cet_tx}");
        }
        assert_eq!(balance, expected, "{}'s balance to the satoshi", party.name);
        let all = party.contracts();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all.iter().all(|c| c["state"] == "closed"), "{all:?}");
    }

    // After the close, hostile messages still change nothing.
    hostile_messages(&alice, &bob_id, &offer_bytes);
}
