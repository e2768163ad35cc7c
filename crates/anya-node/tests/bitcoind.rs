//! The daemon on a real regtest `bitcoind` (`chain = "bitcoind"`): readiness reports the
//! node's blocks and headers, coins mined through the admin route reach the wallets (the route
//! syncs them), a payment through the policy is accepted by bitcoind's mempool, and its
//! confirmation in a block mined elsewhere is found by the node's poll and published. (A payment bitcoind refuses releases its reservation: `anya-bitcoin`'s
//! `bitcoind_broadcast` tests prove that on the same `broadcast_for` the node calls.)

mod common;

use common::{get, post};
use serde_json::json;

#[test]
fn wallets_on_bitcoind_receive_send_and_confirm() {
    let Some(bitcoind) = anya_testkit::Bitcoind::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let (d, _) = common::start_configured(
        dir.path(),
        &format!(
            "chain = \"bitcoind\"\n[bitcoind]\nurl = {:?}\ncookie_file = {:?}\nnetwork = \"regtest\"\npoll_secs = 1\n",
            bitcoind.rpc_url(),
            bitcoind.cookie_file().display().to_string()
        ),
    );
    let admin = d.admin.clone().expect("admin");
    let (status, ready) = get(d.addr, "/health/ready", &admin);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["chain"]["source"], "bitcoind (regtest)", "{ready}");
    assert_eq!(ready["checks"]["chain"]["serving"], true, "{ready}");
    assert!(ready["checks"]["chain"]["tip_age_secs"].is_u64(), "{ready}");

    let (status, w) = post(
        d.addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "hot", "template": "bip84", "root": "root"}),
    );
    assert_eq!(status, 201, "{w}");
    let (_, a) = post(d.addr, "/v1/wallets/hot/address", &admin, &json!({}));
    let address = a["address"].as_str().expect("address").to_owned();
    let (status, mined) = post(
        d.addr,
        "/v1/admin/mine",
        &admin,
        &json!({"blocks": 101, "address": address}),
    );
    assert_eq!(status, 200, "{mined}");
    assert_eq!(bitcoind.height(), 101);
    let (_, balance) = get(d.addr, "/v1/wallets/hot/balance", &admin);
    // The coinbases of blocks 1 and 2 may be spent in block 102 (as in the in-process chain).
    assert_eq!(balance["confirmed_sat"], 2 * 50 * 100_000_000u64, "{balance}");

    let burn = bitcoind.new_burn_address();
    let (status, sent) = post(
        d.addr,
        "/v1/wallets/hot/send",
        &admin,
        &json!({"recipients": [{"address": burn.to_string(), "amount_sat": 10_000_000}], "fee_rate_sat_vb": 5}),
    );
    assert_eq!(status, 200, "{sent}");
    let txid = sent["txid"].as_str().expect("txid").to_owned();
    let entry: serde_json::Value = bitcoind.rpc("getmempoolentry", &[json!(txid)]);
    assert!(entry["vsize"].as_u64().is_some(), "bitcoind holds the payment: {entry}");
    // A block mined by someone else: the node's poll syncs the wallet and says so.
    let (mut events, _) = common::Events::connect(d.addr, &admin).expect("events");
    bitcoind.mine(1, &burn);
    events.until("tx_confirmed", |e| {
        e["wallet"] == "hot" && e["txid"] == txid.as_str() && e["height"] == 102
    });
    let (_, txs) = get(d.addr, "/v1/wallets/hot/transactions", &admin);
    assert!(
        txs.as_array()
            .expect("array")
            .iter()
            .any(|t| t["txid"] == txid.as_str() && t["confirmed_height"] == 102),
        "{txs}"
    );
}
