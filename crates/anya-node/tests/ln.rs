//! The daemon as a Lightning node (`[ln]`) on a real regtest `bitcoind` (`anya_testkit::Bitcoind`,
//! from `BITCOIND_EXE`; skipped outside CI without it), driven only through the API, with a peer
//! built in the test process (`tests/common/ln.rs`).
//!
//! A root without the Lightning opt-in stops the start with that reason. Then: `/v1/ln/info`;
//! the node's on-chain wallet funded through `/v1/ln/address`; a channel opened to the peer
//! with a push (a payment the shared wallet policy approves), `ln_channel_pending` and
//! `ln_channel_ready` on `/v1/events`; the peer's BOLT11 invoice paid (`ln_payment_successful`);
//! an invoice of the node paid by the peer (`ln_payment_received`), and decoded; the push and
//! the payment counted in the 24-hour spend of the wallet whose policy the payments share; a
//! payment over that wallet's per-transaction limit refused with 403 and nothing sent; hostile
//! bodies refused with typed 4xx answers that change nothing; a cooperative close
//! (`ln_channel_closed`); SIGTERM stops it cleanly, and a restart is the same node with its
//! payments. A second test, without bitcoind, checks decoding against BOLT11's
//! examples and the answers of a node that runs no Lightning node.

mod common;
#[path = "common/ln.rs"]
mod peer;

use std::sync::Arc;
use std::time::Instant;

use anya_layer2::lightning::ldk_node::Event as LdkEvent;
use anya_layer2::lightning::parse_invoice;
use anya_testkit::Bitcoind;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{get, post, put, start_configured, token, Events, PASS};
use peer::{free_loopback, until, Peer};
use serde_json::{json, Value};
use tower::ServiceExt;

const CHANNEL_SAT: u64 = 1_000_000;
const PUSH_MSAT: u64 = 50_000_000;
const PAY_MSAT: u64 = 10_000_000;
const RECEIVE_MSAT: u64 = 5_000_000;

fn chain_section(b: &Bitcoind) -> String {
    format!(
        "chain = \"bitcoind\"\n[bitcoind]\nurl = {:?}\ncookie_file = {:?}\nnetwork = \"regtest\"\npoll_secs = 1\n",
        b.rpc_url(),
        b.cookie_file().display().to_string()
    )
}

/// A problem answer: its status and code.
#[track_caller]
fn problem(answer: (u16, Value)) -> (u16, String) {
    let (status, v) = answer;
    let code = v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no problem code: {status} {v}"));
    (status, code.to_owned())
}

/// The BOLT11 examples (`../shared/vectors`).
fn bolt11_vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/vectors/lightning/bolt11_test_vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("the BOLT11 vectors")).expect("JSON")
}

#[test]
fn a_daemon_opens_pays_receives_and_closes_through_the_api() {
    let Some(chain) = Bitcoind::start() else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("dir");
    let base = chain_section(&chain);

    // Without [ln]: the node's root (with the Lightning opt-in) and the wallet whose policy
    // the payments share.
    let (d, config) = start_configured(dir.path(), &base);
    let admin = d.admin.clone().expect("the first start prints an admin token");
    let (status, key) = post(
        d.addr,
        "/v1/keys",
        &admin,
        &json!({"id": "ln-root", "spec": "bip32", "ln": true}),
    );
    assert_eq!((status, &key["ln"]), (201, &json!(true)), "{key}");
    let (status, w) = post(
        d.addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "hot", "template": "bip84", "root": "root"}),
    );
    assert_eq!(status, 201, "{w}");
    let read = token(d.addr, &admin, json!({"name": "reader", "scopes": ["read"]}));
    drop(d);

    // A root without the opt-in: the node does not start, and says why.
    let refused = format!("{base}[ln]\nenabled = true\nroot = \"root\"\n");
    std::fs::write(&config, &refused).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anya-node"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("ANYA_PASSPHRASE", PASS)
        .env_remove("ANYA_DATA_DIR")
        .env_remove("ANYA_LISTEN")
        .output()
        .expect("run anya-node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not allow Lightning node seeds"),
        "{out:?}"
    );

    let listen = free_loopback();
    let ln_config = format!(
        "{base}[ln]\nenabled = true\nroot = \"ln-root\"\nwallet = \"hot\"\nlisten = [\"{listen}\"]\nalias = \"anya-test\"\n"
    );
    let (d, _) = start_configured(dir.path(), &ln_config);
    let (mut events, _) = Events::connect(d.addr, &admin).expect("events");
    let (status, info) = get(d.addr, "/v1/ln/info", &read);
    assert_eq!(status, 200, "{info}");
    let node_id = info["node_id"].as_str().expect("node id").to_owned();
    assert_eq!(info["listening_addresses"], json!([listen.to_string()]), "{info}");
    assert_eq!(
        (&info["alias"], &info["root"], &info["policy_wallet"], &info["network"]),
        (&json!("anya-test"), &json!("ln-root"), &json!("hot"), &json!("regtest")),
        "{info}"
    );
    // A read token sees, and may not pay.
    let (status, v) = post(
        d.addr,
        "/v1/ln/payments",
        &read,
        &json!({"keysend": node_id, "amount_msat": 1000}),
    );
    assert_eq!(status, 403, "{v}");

    // Hostile bodies: typed refusals before the node is asked.
    let vectors = bolt11_vectors();
    let mainnet = vectors["valid"][0]["invoice"].as_str().expect("an invoice");
    let peer = Peer::start(&chain);
    for (body, status, code) in [
        (json!({"invoice": "lnbcrt1notaninvoice"}), 400, "invalid_invoice"),
        (json!({"offer": "lno1notanoffer"}), 400, "invalid_offer"),
        (json!({"invoice": mainnet, "offer": "lno1x"}), 400, "invalid_payment"),
        (json!({"keysend": "02zz", "amount_msat": 1000}), 400, "invalid_node_id"),
        (json!({"keysend": node_id}), 400, "invalid_payment"),
        (json!({"invoice": mainnet, "extra": 1}), 422, "invalid_body"),
        // Well-formed, for another network: nothing is sent.
        (json!({"invoice": mainnet}), 422, "unpayable"),
    ] {
        let answer = problem(post(d.addr, "/v1/ln/payments", &admin, &body));
        assert_eq!(answer, (status, code.to_owned()), "{body}");
    }
    for (path, body, status, code) in [
        ("/v1/ln/peers", json!({"peer": "nobody"}), 400, "invalid_peer"),
        (
            "/v1/ln/channels",
            json!({"peer": format!("{node_id}@127.0.0.1:1"), "amount_sat": 1}),
            400,
            "invalid_peer",
        ),
        (
            "/v1/ln/channels",
            json!({"peer": peer.address(), "amount_sat": 1000, "push_msat": 1_000_001}),
            422,
            "invalid_amount",
        ),
        ("/v1/ln/channels/42/close", json!({}), 404, "channel_not_found"),
        ("/v1/ln/channels/x/close", json!({}), 400, "invalid_channel_id"),
        ("/v1/ln/invoices", json!({"amount_msat": 0}), 422, "invalid_amount"),
        ("/v1/ln/decode", json!({"request": "lno1zzzz"}), 400, "invalid_offer"),
    ] {
        let answer = problem(post(d.addr, path, &admin, &body));
        assert_eq!(answer, (status, code.to_owned()), "{path} {body}");
    }
    let (_, payments) = get(d.addr, "/v1/ln/payments", &admin);
    assert_eq!(payments, json!([]), "the refusals sent nothing");

    // Fund the node's on-chain wallet.
    let (status, a) = post(d.addr, "/v1/ln/address", &read, &json!({}));
    assert_eq!(status, 200, "{a}");
    let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> =
        a["address"].as_str().expect("address").parse().expect("an address");
    chain.mine(1, &address.assume_checked());
    chain.mine(100, &chain.new_burn_address());
    let tip = chain.height();
    peer.sync_to(tip);
    until("the node funded", || {
        let (_, info) = get(d.addr, "/v1/ln/info", &admin);
        info["best_block"]["height"] == tip && info["balances"]["onchain_spendable_sat"].as_u64() > Some(CHANNEL_SAT)
    });

    // Open a channel to the peer, pushing it some: a payment the wallet's policy approves.
    let (status, opened) = post(
        d.addr,
        "/v1/ln/channels",
        &admin,
        &json!({"peer": peer.address(), "amount_sat": CHANNEL_SAT, "push_msat": PUSH_MSAT}),
    );
    assert_eq!(status, 201, "{opened}");
    let user_channel_id = opened["user_channel_id"].as_str().expect("id").to_owned();
    events.until("policy_decision", |e| e["wallet"] == "hot" && e["approved"] == true);
    let pending = events.until("ln_channel_pending", |e| {
        e["user_channel_id"] == user_channel_id.as_str()
    });
    assert_eq!(
        pending["counterparty_node_id"],
        peer.node.node_id().to_string(),
        "{pending}"
    );
    assert_eq!(pending["root"], "ln-root", "{pending}");
    peer.wait_event("ChannelPending", |e| matches!(e, LdkEvent::ChannelPending { .. }));
    // ldk-node broadcasts the funding from a background task: mine once bitcoind has it.
    let funding = pending["funding_txo"]
        .as_str()
        .expect("funding")
        .split(':')
        .next()
        .expect("txid")
        .to_owned();
    until("the funding in the mempool", || {
        chain.rpc::<Vec<String>>("getrawmempool", &[]).contains(&funding)
    });
    chain.mine(6, &chain.new_burn_address());
    peer.sync_to(chain.height());
    events.until("ln_channel_ready", |e| e["user_channel_id"] == user_channel_id.as_str());
    peer.wait_event("ChannelReady", |e| matches!(e, LdkEvent::ChannelReady { .. }));
    until("the channel usable", || {
        let (_, channels) = get(d.addr, "/v1/ln/channels", &read);
        channels[0]["is_usable"] == true
    });
    let (_, channels) = get(d.addr, "/v1/ln/channels", &read);
    assert_eq!(
        (&channels[0]["channel_value_sat"], &channels[0]["is_outbound"]),
        (&json!(CHANNEL_SAT), &json!(true)),
        "{channels}"
    );

    // Pay the peer's invoice.
    let description = anya_layer2::lightning::ldk_node::lightning_invoice::Bolt11InvoiceDescription::Direct(
        anya_layer2::lightning::ldk_node::lightning_invoice::Description::new("coffee".to_owned())
            .expect("description"),
    );
    let invoice = peer
        .node
        .node()
        .bolt11_payment()
        .receive(PAY_MSAT, &description, 3600)
        .expect("the peer's invoice");
    let (status, sent) = post(
        d.addr,
        "/v1/ln/payments",
        &admin,
        &json!({"invoice": invoice.to_string()}),
    );
    assert_eq!(status, 202, "{sent}");
    let payment_id = sent["payment_id"].as_str().expect("id").to_owned();
    let paid = events.until("ln_payment_successful", |e| e["payment_id"] == payment_id.as_str());
    assert_eq!(paid["amount_msat"], PAY_MSAT, "{paid}");
    peer.wait_event("PaymentReceived", |e| matches!(e, LdkEvent::PaymentReceived { .. }));
    let (_, payment) = get(d.addr, &format!("/v1/ln/payments/{payment_id}"), &read);
    assert_eq!(
        (&payment["status"], &payment["direction"], &payment["kind"]),
        (&json!("succeeded"), &json!("outbound"), &json!("bolt11")),
        "{payment}"
    );
    assert!(payment["preimage"].is_string(), "{payment}");

    // Receive: the peer pays an invoice of the node.
    let (status, made) = post(
        d.addr,
        "/v1/ln/invoices",
        &read,
        &json!({"amount_msat": RECEIVE_MSAT, "description": "refund"}),
    );
    assert_eq!(status, 201, "{made}");
    let text = made["invoice"].as_str().expect("invoice").to_owned();
    let (status, decoded) = post(d.addr, "/v1/ln/decode", &read, &json!({"request": text}));
    assert_eq!(status, 200, "{decoded}");
    assert_eq!(
        (
            &decoded["kind"],
            &decoded["payee"],
            &decoded["amount_msat"],
            &decoded["payment_hash"]
        ),
        (
            &json!("bolt11"),
            &json!(node_id),
            &json!(RECEIVE_MSAT),
            &made["payment_hash"]
        ),
        "{decoded}"
    );
    peer.node
        .pay_invoice(&parse_invoice(&text).expect("the node's invoice"), None, None)
        .expect("the peer pays");
    let received = events.until("ln_payment_received", |e| e["payment_hash"] == made["payment_hash"]);
    assert_eq!(received["amount_msat"], RECEIVE_MSAT, "{received}");

    // The push and the payment count in the 24 hours of the wallet whose policy they share
    // (the payment with its fee limit: 1% plus 50 sat).
    let counted = PUSH_MSAT / 1000 + (PAY_MSAT + PAY_MSAT / 100 + 50_000) / 1000;
    let (_, policy) = get(d.addr, "/v1/ln/policy", &read);
    assert_eq!(
        (&policy["wallet"], &policy["spent_last_24h_sat"]),
        (&json!("hot"), &json!(counted)),
        "{policy}"
    );
    let (_, wallet_policy) = get(d.addr, "/v1/wallets/hot/policy", &read);
    assert_eq!(wallet_policy["spent_last_24h_sat"], counted, "{wallet_policy}");

    // Over the wallet's per-transaction limit: 403, nothing sent.
    let (status, v) = put(
        d.addr,
        "/v1/wallets/hot/policy",
        &admin,
        &json!({"max_per_tx_sat": 1000}),
    );
    assert_eq!(status, 200, "{v}");
    let big = peer
        .node
        .node()
        .bolt11_payment()
        .receive(PAY_MSAT, &description, 3600)
        .expect("another invoice");
    let (status, v) = post(d.addr, "/v1/ln/payments", &admin, &json!({"invoice": big.to_string()}));
    assert_eq!(
        (status, &v["code"], &v["rule"]),
        (403, &json!("policy_refused"), &json!(1)),
        "{v}"
    );
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("per-transaction limit")),
        "{v}"
    );
    events.until("policy_decision", |e| e["wallet"] == "hot" && e["approved"] == false);
    let big_hash = big.payment_hash().to_string();
    let (status, _) = get(d.addr, &format!("/v1/ln/payments/{big_hash}"), &read);
    assert_eq!(status, 404, "the refused payment was not made");
    let (_, policy) = get(d.addr, "/v1/ln/policy", &read);
    assert_eq!(
        policy["spent_last_24h_sat"], counted,
        "a refusal counts nothing: {policy}"
    );

    // Close cooperatively.
    let (status, v) = post(
        d.addr,
        &format!("/v1/ln/channels/{user_channel_id}/close"),
        &admin,
        &json!({}),
    );
    assert_eq!(status, 202, "{v}");
    events.until("ln_channel_closed", |e| {
        e["user_channel_id"] == user_channel_id.as_str()
    });
    peer.wait_event("ChannelClosed", |e| matches!(e, LdkEvent::ChannelClosed { .. }));
    until("no channel left", || {
        let (_, channels) = get(d.addr, "/v1/ln/channels", &read);
        channels == json!([])
    });
    // SIGTERM stops the Lightning node with the rest; a restart on the same root and store is
    // the same node, with its payments.
    let mut d = d;
    d.signal("-TERM");
    let exit = d.child.wait().expect("wait");
    assert!(
        exit.success(),
        "anya-node exits cleanly on SIGTERM: {exit:?}\n{}",
        d.log_text()
    );
    drop(d);
    let (d, _) = start_configured(dir.path(), &ln_config);
    let (_, info) = get(d.addr, "/v1/ln/info", &read);
    assert_eq!(info["node_id"], node_id.as_str(), "{info}");
    let (status, payment) = get(d.addr, &format!("/v1/ln/payments/{payment_id}"), &read);
    assert_eq!((status, &payment["status"]), (200, &json!("succeeded")), "{payment}");
    drop(d);
    #[allow(clippy::print_stderr, reason = "how long the test ran, for people")]
    {
        eprintln!("ln daemon test: {:?}", started.elapsed());
    }
}

/// One in-process request to the router; the status and JSON body.
async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(v) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(serde_json::to_vec(&v).expect("JSON"))
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).expect("a request"))
        .await
        .expect("an answer");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("the body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[test]
fn invoices_decode_as_bolt11_says_and_a_node_without_lightning_says_so() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = anya_node::NodeConfig::default();
    config.data_dir = dir.path().join("data");
    let (node, started) =
        anya_node::Node::open(config, &anya_hsm::SecretString::from_str_secret(PASS)).expect("a node");
    let admin = started.admin_token.expect("an admin token");
    let router = anya_node::router(Arc::new(node));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let vectors = bolt11_vectors();
        let decode = |v: &Value| {
            call(
                &router,
                "POST",
                "/v1/ln/decode",
                &admin,
                Some(json!({"request": v["invoice"]})),
            )
        };
        for v in vectors["valid"].as_array().expect("valid vectors") {
            let (status, d) = decode(v).await;
            assert_eq!(status, StatusCode::OK, "{} {d}", v["invoice"]);
            assert_eq!(d["kind"], "bolt11", "{d}");
            let want = &v["decoded"];
            // The last payment hash field of the standard length (readers skip the others).
            let hash = want["tagged_fields"]
                .as_array()
                .expect("fields")
                .iter()
                .rfind(|f| f["type"] == "p" && f.get("note").is_none())
                .map(|f| f["value"].clone());
            assert_eq!(Some(d["payment_hash"].clone()), hash, "{d} vs {want}");
            assert_eq!(d["amount_msat"], want["amount_msat"], "{d} vs {want}");
            assert_eq!(d["timestamp"], want["timestamp"], "{d} vs {want}");
            assert_eq!(d["payee"], want["recovered_payee_pubkey"], "{d} vs {want}");
        }
        for v in vectors["invalid"].as_array().expect("invalid vectors") {
            let (status, d) = decode(v).await;
            assert_eq!(
                (status, &d["code"]),
                (StatusCode::BAD_REQUEST, &json!("invalid_invoice")),
                "{} {d}",
                v["invoice"]
            );
        }
        // Every route that needs the Lightning node says there is none (after checking the
        // body).
        for (method, path, body) in [
            ("GET", "/v1/ln/info", None),
            ("GET", "/v1/ln/channels", None),
            ("GET", "/v1/ln/payments", None),
            ("POST", "/v1/ln/address", None),
            ("POST", "/v1/ln/invoices", Some(json!({"amount_msat": 1000}))),
        ] {
            let (status, d) = call(&router, method, path, &admin, body).await;
            assert_eq!(
                (status, &d["code"]),
                (StatusCode::NOT_FOUND, &json!("ln_disabled")),
                "{path} {d}"
            );
        }
        let (status, d) = call(
            &router,
            "POST",
            "/v1/ln/payments",
            &admin,
            Some(json!({"invoice": vectors["valid"][0]["invoice"], "offer": "lno1x"})),
        )
        .await;
        assert_eq!(
            (status, &d["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_payment")),
            "{d}"
        );
    });
}
