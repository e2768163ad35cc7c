//! The oracle service of a started `anya-node`, over HTTP: kormir's and the p2pderivatives
//! oracle's routes answered to the library's verifying client, admin-only creation and
//! signing, one outcome per event, and price events decided from real HTTP price servers.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anya_layer2::dlc::client::{OracleClient, RouteFamily};
use anya_layer2::dlc::contracts::ddk_manager::Oracle as _;
use anya_layer2::dlc::contracts::HttpOracle;
use anya_layer2::dlc::digits::Digits;
use anya_layer2::dlc::messages::{OracleAnnouncement, OracleAttestation};
use anya_testkit::http::{refused_url, HttpServer, Reply};
use common::{get, post, request, start_configured, token, Daemon, Events};
use secp256k1::Secp256k1;
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()
}

fn base(d: &Daemon) -> String {
    format!("http://{}", d.addr)
}

fn public(d: &Daemon, path: &str) -> (u16, Value) {
    let (status, _, body) = request(d.addr, "GET", path, None, None);
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn announcement(v: &Value) -> OracleAnnouncement {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn attestation(v: &Value) -> OracleAttestation {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

const ORACLE: &str = "[oracle]\nenabled = true\n";

#[test]
fn both_route_families_serve_verified_messages_and_one_outcome_per_event() {
    let dir = tempfile::tempdir().expect("dir");
    let (d, _) = start_configured(dir.path(), ORACLE);
    let admin = d.admin.clone().expect("admin token");
    let read = token(d.addr, &admin, json!({"name": "reader", "scopes": ["read"]}));
    let secp = Secp256k1::verification_only();

    let kormir = OracleClient::connect(&base(&d), RouteFamily::Kormir, Duration::from_secs(5)).expect("kormir");
    let p2pd = OracleClient::connect(&base(&d), RouteFamily::P2pDerivatives, Duration::from_secs(5)).expect("p2pd");
    assert_eq!(kormir.public_key(), p2pd.public_key());
    let (status, pk) = public(&d, "/pubkey");
    assert_eq!(
        (status, pk["pubkey"].as_str()),
        (200, Some(&*kormir.public_key().to_string()))
    );

    // Creating needs an admin token.
    let maturity = now() as u32 - 10;
    let body = json!({"event_id": "match-1", "outcomes": ["home", "draw", "away"], "event_maturity_epoch": maturity});
    let (status, _, _) = request(
        d.addr,
        "POST",
        "/create-enum",
        None,
        Some(("application/json", body.to_string().as_bytes())),
    );
    assert_eq!(status, 401);
    assert_eq!(post(d.addr, "/create-enum", &read, &body).0, 403);
    let (status, ann) = post(d.addr, "/create-enum", &admin, &body);
    assert_eq!(status, 200, "{ann}");
    let ann = announcement(&ann);
    ann.validate(&secp).expect("ddk-messages accepts it");
    assert_eq!(
        post(d.addr, "/create-enum", &admin, &body).0,
        409,
        "one announcement per id"
    );
    assert_eq!(kormir.announcement("match-1").expect("verified by the client"), ann);
    assert_eq!(public(&d, "/attestation/match-1").0, 404, "not attested yet");
    assert_eq!(public(&d, "/announcement/nothing").0, 404);

    // Signing: admin only; the same outcome again is the same attestation; another is 409.
    let sign = json!({"event_id": "match-1", "outcome": "draw"});
    assert_eq!(post(d.addr, "/sign-enum", &read, &sign).0, 403);
    let (status, att) = post(d.addr, "/sign-enum", &admin, &sign);
    assert_eq!(status, 200, "{att}");
    let att = attestation(&att);
    att.validate(&secp, &ann).expect("ddk-messages accepts it");
    assert_eq!(attestation(&post(d.addr, "/sign-enum", &admin, &sign).1), att);
    let (status, refused) = post(
        d.addr,
        "/sign-enum",
        &admin,
        &json!({"event_id": "match-1", "outcome": "home"}),
    );
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("already_attested")),
        "{refused}"
    );
    let (status, refused) = post(
        d.addr,
        "/sign-enum",
        &admin,
        &json!({"event_id": "match-1", "outcome": "rain"}),
    );
    assert_eq!((status, refused["code"].as_str()), (422, Some("unknown_outcome")));
    assert_eq!(kormir.attestation("match-1").expect("verified by the client"), att);

    // A numeric event in the p2pderivatives id form, read through both families.
    let id = format!("btcusd{maturity}");
    let (status, ann) = post(
        d.addr,
        "/create-numeric",
        &admin,
        &json!({"event_id": id, "num_digits": 20, "unit": "usd/btc", "event_maturity_epoch": maturity}),
    );
    assert_eq!(status, 200, "{ann}");
    let ann = announcement(&ann);
    assert_eq!(ann.oracle_event.oracle_nonces.len(), 20);
    let (status, att) = post(
        d.addr,
        "/sign-numeric",
        &admin,
        &json!({"event_id": id, "outcome": 43_210}),
    );
    assert_eq!(status, 200, "{att}");
    let att = attestation(&att);
    assert_eq!(
        Digits::new(2, 20, false)
            .expect("layout")
            .compose(&att.outcomes)
            .expect("digits"),
        43_210
    );
    assert_eq!(p2pd.announcement(&id).expect("p2pd announcement"), ann);
    assert_eq!(
        p2pd.attestation(&id)
            .expect("p2pd attestation, verified digit by digit"),
        att
    );
    assert_eq!(kormir.attestation(&id).expect("kormir attestation"), att);
    // The contract manager's oracle trait over both families.
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    for family in [RouteFamily::Kormir, RouteFamily::P2pDerivatives] {
        let client = OracleClient::connect(&base(&d), family, Duration::from_secs(5)).expect("client");
        let oracle = HttpOracle::new(client);
        assert_eq!(oracle.get_public_key(), ann.oracle_public_key);
        assert_eq!(rt.block_on(oracle.get_announcement(&id)).expect("announcement"), ann);
        assert_eq!(rt.block_on(oracle.get_attestation(&id)).expect("attestation"), att);
    }
    let (status, _) = public(&d, "/asset/btcusd/announcement/yesterday");
    assert_eq!(status, 400);

    let (status, list) = public(&d, "/list-events");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let (status, listed) = get(d.addr, "/v1/oracle/events", &read);
    assert_eq!(status, 200);
    assert_eq!(listed[1]["event_id"], "match-1", "{listed}");
    assert_eq!(listed[1]["outcomes"], json!(["draw"]), "{listed}");

    // Every signature is in the HSM's audit chain, which still verifies.
    let (status, audit) = get(d.addr, "/v1/audit/verify", &read);
    assert_eq!(status, 200, "{audit}");
}

fn quote(price: f64) -> Reply {
    Reply::Body(format!(r#"{{"data":{{"amount":"{price}"}},"ts":{}}}"#, now()))
}

fn asset_config(servers: &[&HttpServer], extra_url: &str) -> String {
    let mut toml = format!(
        "{ORACLE}\n[oracle.assets.btcusd]\nnb_digits = 20\n[oracle.assets.btcusd.rules]\nmin_sources = 2\nmax_age_secs = 60\nmax_deviation_bps = 100\nmax_move_bps = 1000\ntimeout_ms = 1000\n"
    );
    for (i, s) in servers.iter().enumerate() {
        toml.push_str(&format!(
            "[[oracle.assets.btcusd.sources]]\nname = \"s{i}\"\nurl = \"{}\"\nprice_pointer = \"/data/amount\"\ntime_pointer = \"/ts\"\n",
            s.url()
        ));
    }
    toml.push_str(&format!(
        "[[oracle.assets.btcusd.sources]]\nname = \"down\"\nurl = \"{extra_url}\"\nprice_pointer = \"/data/amount\"\n"
    ));
    toml
}

#[test]
fn price_events_follow_the_sources_rules_and_the_circuit_breaker() {
    let a = HttpServer::start(quote(50_000.0));
    let b = HttpServer::start(quote(50_100.0));
    let dir = tempfile::tempdir().expect("dir");
    // One event a second, three announced ahead, attested at maturity.
    let toml = asset_config(&[&a, &b], &refused_url())
        .replace(
            "[oracle.assets.btcusd]\n",
            "[oracle.assets.btcusd]\ninterval_secs = 1\nahead = 3\ncatch_up = 3\n",
        )
        .replace(ORACLE, "[oracle]\nenabled = true\ntick_secs = 1\n");
    let (d, _) = start_configured(dir.path(), &toml);
    let admin = d.admin.clone().expect("admin token");
    let (mut events, _) = Events::connect(d.addr, &admin).expect("events");
    let layout = Digits::new(2, 20, false).expect("layout");
    let value_of = |e: &Value| {
        let outcomes: Vec<String> = serde_json::from_value(e["outcomes"].clone()).expect("outcomes");
        layout.compose(&outcomes).expect("digits")
    };

    // Two of three sources answer (one is down): the median of 50 000 and 50 100.
    let first = events.until("oracle_attested", |_| true);
    assert_eq!(value_of(&first), 50_050, "{first}");
    let id = first["event_id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("btcusd"), "{id}");
    let p2pd = OracleClient::connect(&base(&d), RouteFamily::P2pDerivatives, Duration::from_secs(5)).expect("p2pd");
    let att = p2pd.attestation(&id).expect("verified by the p2pderivatives client");
    assert_eq!(layout.compose(&att.outcomes).expect("digits"), 50_050);

    // The sources disagree beyond 1 %: refused.
    b.set(quote(60_000.0));
    let refusal = events.until("oracle_refused", |e| e["code"] == "price_spread");
    assert!(
        refusal["detail"].as_str().is_some_and(|d| d.contains("s1")),
        "{refusal}"
    );

    // They agree again, 20 % higher: the circuit breaker halts the asset until an admin confirms.
    a.set(quote(60_000.0));
    b.set(quote(60_000.0));
    events.until("oracle_refused", |e| e["code"] == "circuit_breaker");
    events.until("oracle_refused", |e| e["code"] == "price_halted");
    let (status, asset) = get(d.addr, "/v1/oracle/assets/btcusd", &admin);
    assert_eq!((status, asset["halted_at"].as_f64()), (200, Some(60_000.0)), "{asset}");
    let (status, asset) = post(
        d.addr,
        "/v1/oracle/assets/btcusd/confirm",
        &admin,
        &json!({"value": 60_000.0}),
    );
    assert_eq!((status, &asset["halted_at"]), (200, &Value::Null), "{asset}");
    let resumed = events.until("oracle_attested", |_| true);
    assert_eq!(value_of(&resumed), 60_000, "{resumed}");

    // Stale quotes: too few fresh sources.
    let stale = format!(r#"{{"data":{{"amount":"60000"}},"ts":{}}}"#, now() - 3600);
    a.set(Reply::Body(stale.clone()));
    b.set(Reply::Body(stale));
    let refusal = events.until("oracle_refused", |e| e["code"] == "price_sources");
    assert!(
        refusal["detail"].as_str().is_some_and(|d| d.contains("stale")),
        "{refusal}"
    );

    // Every refusal and the confirmation are decisions on the oracle key in the audit chain.
    let mut decisions: Vec<u64> = Vec::new();
    let mut after = 0;
    loop {
        let (status, records) = get(d.addr, &format!("/v1/audit/records?after={after}&limit=1000"), &admin);
        assert_eq!(status, 200);
        let records = records.as_array().expect("records").clone();
        let Some(last) = records.last() else { break };
        after = last["seq"].as_u64().expect("seq");
        decisions.extend(
            records
                .iter()
                .filter(|r| r["operation"] == "Decision" && r["key_id"] == "oracle")
                .filter_map(|r| r["outcome"].as_u64()),
        );
    }
    for code in [0x0D02, 0x0D03, 0x0D04, 0, 0x0D01] {
        assert!(decisions.contains(&code), "no decision {code:#x} in {decisions:?}");
    }
    // A numeric event made through the kormir route has no asset: no price attestation.
    let m = now() as u32 - 5;
    let (status, _) = post(
        d.addr,
        "/create-numeric",
        &admin,
        &json!({"event_id": "plain", "num_digits": 20, "unit": "usd/btc", "event_maturity_epoch": m}),
    );
    assert_eq!(status, 200);
    let (status, body) = post(d.addr, "/v1/oracle/events/plain/attest-price", &admin, &json!({}));
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_event")), "{body}");
    // Scheduled events are announced ahead.
    let (_, listed) = get(d.addr, "/v1/oracle/events?limit=1000", &admin);
    assert!(
        listed
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["maturity"].as_u64().is_some_and(|m| m > now())),
        "{listed}"
    );
}

#[test]
fn anya_oracle_serves_the_oracle_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let d = common::start_with(
        &dir.path().join("data"),
        &common::Options {
            oracle_only: true,
            ..common::Options::default()
        },
    );
    let admin = d.admin.clone().expect("admin token");
    let client = OracleClient::connect(&base(&d), RouteFamily::Kormir, Duration::from_secs(5)).expect("kormir");
    let (status, ann) = post(
        d.addr,
        "/create-enum",
        &admin,
        &json!({"event_id": "e", "outcomes": ["x", "y"], "event_maturity_epoch": now() as u32}),
    );
    assert_eq!(status, 200, "{ann}");
    assert_eq!(client.announcement("e").expect("verified"), announcement(&ann));
    for (path, status) in [
        ("/health/ready", 200),
        ("/v1/audit/verify", 200),
        ("/v1/oracle/events", 200),
    ] {
        assert_eq!(get(d.addr, path, &admin).0, status, "{path}");
    }
    for path in ["/v1/keys", "/v1/wallets", "/v1/chain"] {
        let (status, body) = get(d.addr, path, &admin);
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_served")),
            "{path}: {body}"
        );
    }
    let (status, _) = post(d.addr, "/v1/keys", &admin, &json!({"id": "k", "spec": "secp256k1"}));
    assert_eq!(status, 404);
}
