//! Wallets over the real daemon on its in-process regtest chain: create, mine, receive, send
//! through the policy, bump the fee, PSBTs built, signed and finalized, events on the
//! WebSocket, metrics, and a restart that keeps the chain and the mempool.

mod common;

use common::{get, post, put, start, token, Events};
use serde_json::{json, Value};

fn sat(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn wallets_receive_send_bump_and_sign_psbts_through_the_policy() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let d = start(&data);
    let admin = d.admin.clone().expect("admin token");
    let addr = d.addr;
    let (mut events, _) = Events::connect(addr, &admin).expect("events");

    let (status, alice) = post(
        addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "alice", "template": "bip84", "root": "root"}),
    );
    assert_eq!(status, 201, "{alice}");
    assert!(alice["descriptor"].as_str().expect("descriptor").starts_with("wpkh(["));
    let (status, bob) = post(
        addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "bob", "template": "bip86", "root": "root", "account": 1}),
    );
    assert_eq!(status, 201, "{bob}");
    let (status, again) = post(
        addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "bob", "template": "bip86", "root": "root"}),
    );
    assert_eq!((status, again["code"].as_str()), (409, Some("wallet_exists")));

    // Coins: 101 blocks to alice. The next block may spend the coinbases of blocks 1 and 2
    // (Core's CheckTxInputs: spend height - coin height >= 100), and BDK counts both.
    let (_, a) = post(addr, "/v1/wallets/alice/address", &admin, &json!({}));
    let alice_addr = a["address"].as_str().expect("address").to_owned();
    assert!(alice_addr.starts_with("bcrt1q"), "{a}");
    let (status, mined) = post(
        addr,
        "/v1/admin/mine",
        &admin,
        &json!({"blocks": 101, "address": alice_addr}),
    );
    assert_eq!(status, 200, "{mined}");
    assert_eq!(mined["height"], 101);
    let (_, balance) = get(addr, "/v1/wallets/alice/balance", &admin);
    assert_eq!(sat(&balance, "confirmed_sat"), 2 * 50 * 100_000_000, "{balance}");
    assert_eq!(sat(&balance, "immature_sat"), 99 * 50 * 100_000_000, "{balance}");
    events.until("blocks_mined", |e| e["height"] == 101);
    events.until("tx_seen", |e| e["wallet"] == "alice" && e["confirmed"] == true);

    // Pay bob 1 BTC; bump it; mine it.
    let (_, b) = post(addr, "/v1/wallets/bob/address", &admin, &json!({}));
    let bob_addr = b["address"].as_str().expect("address").to_owned();
    assert!(bob_addr.starts_with("bcrt1p"), "{b}");
    let (status, sent) = post(
        addr,
        "/v1/wallets/alice/send",
        &admin,
        &json!({"recipients": [{"address": bob_addr, "amount_sat": 100_000_000}], "fee_rate_sat_vb": 2}),
    );
    assert_eq!(status, 200, "{sent}");
    let first = sent["txid"].as_str().expect("txid").to_owned();
    events.until("policy_decision", |e| e["wallet"] == "alice" && e["approved"] == true);
    events.until("tx_seen", |e| e["wallet"] == "alice" && e["txid"] == first.as_str());
    let (_, synced) = post(addr, "/v1/wallets/bob/sync", &admin, &json!({}));
    assert_eq!(
        sat(&synced["balance"], "untrusted_pending_sat"),
        100_000_000,
        "{synced}"
    );
    let (status, bumped) = post(
        addr,
        "/v1/wallets/alice/bump-fee",
        &admin,
        &json!({"txid": first, "fee_rate_sat_vb": 10}),
    );
    assert_eq!(status, 200, "{bumped}");
    assert!(sat(&bumped, "fee_sat") > sat(&sent, "fee_sat"), "{bumped} vs {sent}");
    let second = bumped["txid"].as_str().expect("txid").to_owned();
    // The first payment is gone from the mempool: bumping it again is refused.
    let (status, refused) = post(
        addr,
        "/v1/wallets/alice/bump-fee",
        &admin,
        &json!({"txid": first, "fee_rate_sat_vb": 20}),
    );
    assert!(status == 409 || status == 422, "{status} {refused}");
    let (status, _) = post(
        addr,
        "/v1/admin/mine",
        &admin,
        &json!({"blocks": 1, "address": alice_addr}),
    );
    assert_eq!(status, 200);
    events.until("tx_confirmed", |e| {
        e["wallet"] == "alice" && e["txid"] == second.as_str()
    });
    let (_, balance) = get(addr, "/v1/wallets/bob/balance", &admin);
    assert_eq!(sat(&balance, "confirmed_sat"), 100_000_000, "{balance}");
    let (_, txs) = get(addr, "/v1/wallets/alice/transactions", &admin);
    let txs = txs.as_array().expect("array");
    assert!(txs
        .iter()
        .any(|t| t["txid"] == second.as_str() && t["confirmed_height"] == 102));

    // The policy refuses a payment over its limit, with the rule's code.
    let (status, policy) = put(
        addr,
        "/v1/wallets/alice/policy",
        &admin,
        &json!({"max_per_tx_sat": 50_000}),
    );
    assert_eq!(status, 200, "{policy}");
    let (status, refused) = post(
        addr,
        "/v1/wallets/alice/send",
        &admin,
        &json!({"recipients": [{"address": bob_addr, "amount_sat": 60_000}], "fee_rate_sat_vb": 2}),
    );
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("policy_refused")),
        "{refused}"
    );
    assert!(refused["rule"].is_u64(), "{refused}");
    events.until("policy_decision", |e| e["wallet"] == "alice" && e["approved"] == false);
    let (_, p) = get(addr, "/v1/wallets/alice/policy", &admin);
    assert_eq!(p["policy"]["max_per_tx_sat"], 50_000, "{p}");

    // A PSBT: built, inspected, signed through the policy, finalized with Core's verification.
    let (status, built) = post(
        addr,
        "/v1/wallets/alice/psbt",
        &admin,
        &json!({"recipients": [{"address": bob_addr, "amount_sat": 20_000}], "fee_rate_sat_vb": 3}),
    );
    assert_eq!(status, 200, "{built}");
    let (status, info) = post(addr, "/v1/psbt/inspect", &admin, &json!({"psbt": built["psbt"]}));
    assert_eq!(status, 200, "{info}");
    assert!(info["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .any(|o| o["address"] == bob_addr.as_str() && o["value_sat"] == 20_000));
    let (status, unsigned) = post(addr, "/v1/psbt/finalize", &admin, &json!({"psbt": built["psbt"]}));
    assert_eq!(
        (status, unsigned["code"].as_str()),
        (422, Some("psbt_not_finalized")),
        "{unsigned}"
    );
    let (status, signed) = post(
        addr,
        "/v1/wallets/alice/psbt/sign",
        &admin,
        &json!({"psbt": built["psbt"]}),
    );
    assert_eq!(status, 200, "{signed}");
    assert!(sat(&signed, "signatures_added") >= 1);
    let (status, combined) = post(
        addr,
        "/v1/psbt/combine",
        &admin,
        &json!({"psbts": [built["psbt"], signed["psbt"]]}),
    );
    assert_eq!(status, 200, "{combined}");
    let (status, fin) = post(addr, "/v1/psbt/finalize", &admin, &json!({"psbt": combined["psbt"]}));
    assert_eq!(status, 200, "{fin}");
    assert_eq!(fin["txid"], built["txid"]);
    let (status, bad) = post(addr, "/v1/psbt/inspect", &admin, &json!({"psbt": "cHNidP8B"}));
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_psbt")), "{bad}");

    // A token limited to bob sees bob only.
    let bob_only = token(
        addr,
        &admin,
        json!({"name": "bob only", "scopes": ["sign"], "wallets": ["bob"]}),
    );
    let (_, list) = get(addr, "/v1/wallets", &bob_only);
    assert_eq!(list, json!(["bob"]));
    let (status, _) = get(addr, "/v1/wallets/alice/balance", &bob_only);
    assert_eq!(status, 403);

    // Audit appends are events; metrics count requests and hold balances.
    events.until("audit_appended", |e| e["operation"] == "SignEcdsa");
    let (status, _, metrics) = common::request(addr, "GET", "/metrics", Some(&admin), None);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).expect("utf-8");
    for needle in [
        "anya_http_requests_total{method=\"POST\",route=\"/v1/wallets/{name}/send\",status=\"200\"}",
        "anya_wallet_balance_sat{wallet=\"bob\",kind=\"confirmed\"} 100000000",
        "anya_policy_refusals_total{wallet=\"alice\"",
        "anya_hsm_operation_duration_seconds_count{operation=\"sign_transaction\"}",
        "anya_store_operation_duration_seconds_count{operation=\"write\"}",
        "anya_events_subscribers 1",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }

    // A payment left in the mempool survives a restart, and so does the chain.
    let (status, pending) = post(
        addr,
        "/v1/wallets/alice/send",
        &admin,
        &json!({"recipients": [{"address": bob_addr, "amount_sat": 30_000}], "fee_rate_sat_vb": 2}),
    );
    assert_eq!(status, 200, "{pending}");
    drop(events);
    drop(d);
    let d = start(&data);
    let cookie = std::fs::read_to_string(data.join(".cookie")).expect("cookie");
    let (_, chain) = get(d.addr, "/v1/chain", &cookie);
    assert_eq!(chain["height"], 102, "{chain}");
    let (status, _) = post(
        d.addr,
        "/v1/admin/mine",
        &cookie,
        &json!({"blocks": 1, "address": alice_addr}),
    );
    assert_eq!(status, 200);
    let (_, balance) = get(d.addr, "/v1/wallets/bob/balance", &cookie);
    assert_eq!(sat(&balance, "confirmed_sat"), 100_030_000, "{balance}");
}
