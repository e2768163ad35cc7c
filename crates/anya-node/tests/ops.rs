//! Operating the real daemon: hot reload on SIGHUP and on `POST /v1/admin/reload` (new policy
//! and rate limits apply, open connections stay, a bad file is refused and the old config keeps
//! running), rate limits answer 429 with Retry-After, and no secret reaches the log.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{get, post, put, request, start_with, token, Events, Options, PASS};
use serde_json::json;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

/// Polls `check` for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not happen within 10 s");
}

#[test]
fn sighup_and_the_reload_route_apply_a_new_config_and_refuse_a_bad_one() {
    let dir = tempfile::tempdir().expect("dir");
    let (d, config) = common::start_configured(dir.path(), "[policy.alice]\nmax_per_tx_sat = 1000\n");
    let admin = d.admin.clone().expect("admin");
    let (status, w) = post(
        d.addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "alice", "template": "bip86", "root": "root"}),
    );
    assert_eq!(status, 201, "{w}");
    assert_eq!(w["policy_from_config"], true);
    let (_, p) = get(d.addr, "/v1/wallets/alice/policy", &admin);
    assert_eq!(p["policy"]["max_per_tx_sat"], 1000, "{p}");
    let (status, refused) = put(
        d.addr,
        "/v1/wallets/alice/policy",
        &admin,
        &json!({"max_per_tx_sat": 9}),
    );
    assert_eq!((status, refused["code"].as_str()), (409, Some("policy_from_config")));
    // A subscriber connected before the reloads stays connected through them.
    let (mut events, _) = Events::connect(d.addr, &admin).expect("events");

    // SIGHUP applies a new policy.
    write(&config, "[policy.alice]\nmax_per_tx_sat = 5000\n");
    d.signal("-HUP");
    eventually("the new policy", || {
        get(d.addr, "/v1/wallets/alice/policy", &admin).1["policy"]["max_per_tx_sat"] == 5000
    });
    events.until("config_reloaded", |_| true);

    // A bad file is refused, with the reason, by the route and by SIGHUP; the old one runs.
    write(&config, "[policy.alice]\nmax_per_tx_sat = 5000\nmax_per_tx = 1\n");
    let (status, bad) = post(d.addr, "/v1/admin/reload", &admin, &json!({}));
    assert_eq!((status, bad["code"].as_str()), (422, Some("invalid_config")), "{bad}");
    assert!(bad["detail"].as_str().expect("detail").contains("max_per_tx"), "{bad}");
    d.signal("-HUP");
    eventually("the refusal in the log", || d.log_text().contains("reload refused"));
    let (_, p) = get(d.addr, "/v1/wallets/alice/policy", &admin);
    assert_eq!(p["policy"]["max_per_tx_sat"], 5000, "{p}");
    write(
        &config,
        "[api]\nbody_limit = 2048\n[policy.alice]\nmax_per_tx_sat = 5000\n",
    );
    let (status, restart) = post(d.addr, "/v1/admin/reload", &admin, &json!({}));
    assert_eq!(
        (status, restart["code"].as_str()),
        (409, Some("needs_restart")),
        "{restart}"
    );

    // New rate limits apply to the next request: the third in a burst of two is refused.
    write(
        &config,
        "[policy.alice]\nmax_per_tx_sat = 5000\n[rate_limit]\nper_token_per_sec = 1\nper_token_burst = 2\n",
    );
    let (status, ok) = post(d.addr, "/v1/admin/reload", &admin, &json!({}));
    assert_eq!(status, 200, "{ok}");
    events.until("config_reloaded", |_| true);
    let reader = token(d.addr, &admin, json!({"name": "r", "scopes": ["read"]}));
    let statuses: Vec<u16> = (0..3).map(|_| get(d.addr, "/v1/keys", &reader).0).collect();
    assert_eq!(statuses, [200, 200, 429]);
    let (status, _, body) = request(d.addr, "GET", "/v1/keys", Some(&reader), None);
    assert_eq!(status, 429);
    let problem = common::json_of(&body);
    assert_eq!(problem["code"], "rate_limited");
    assert!(problem["retry_after"].as_u64().is_some_and(|s| s >= 1), "{problem}");
    let (_, _, raw) = raw_head(d.addr, &reader);
    assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");
    // The WebSocket opened before every reload is still delivering.
    let (status, _) = post(d.addr, "/v1/keys", &admin, &json!({"id": "after", "spec": "ed25519"}));
    assert_eq!(status, 201);
    events.until("key_created", |e| e["id"] == "after");
}

/// The status, and the raw response head, of a GET with `token`.
fn raw_head(addr: std::net::SocketAddr, token: &str) -> (u16, (), String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /v1/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    (status, (), raw)
}

#[test]
fn no_secret_reaches_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let d = start_with(
        &data,
        &Options {
            config: None,
            args: &["--log-level", "trace", "--log-format", "json"],
            ..Options::default()
        },
    );
    let admin = d.admin.clone().expect("admin");
    let cookie = std::fs::read_to_string(data.join(".cookie")).expect("cookie");
    let minted = token(d.addr, &admin, json!({"name": "minted", "scopes": ["sign"]}));
    let (status, _) = post(d.addr, "/v1/keys", &minted, &json!({"id": "nope", "spec": "ed25519"}));
    assert_eq!(status, 403);
    let (status, _) = post(
        d.addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "w", "template": "bip84", "root": "root"}),
    );
    assert_eq!(status, 201);
    let (status, k) = post(
        d.addr,
        "/v1/keys",
        &cookie,
        &json!({"id": "x", "spec": "secp256k1", "exportable": true}),
    );
    assert_eq!(status, 201, "{k}");
    let (status, _) = post(
        d.addr,
        "/v1/keys/x/sign",
        &minted,
        &json!({"scheme": "ecdsa", "message_hex": "11".repeat(32)}),
    );
    assert_eq!(status, 200);
    // A wrong token, and one that is almost right.
    // (The last character changed to another one: a token ending in '0' gets a '1'.)
    let swap = if admin.ends_with('0') { '1' } else { '0' };
    let almost = format!("{}{swap}", &admin[..admin.len() - 1]);
    assert_eq!(get(d.addr, "/v1/keys", &almost).0, 401);
    d.signal("-TERM");
    let mut d = d;
    d.child.wait().expect("wait");
    let log = d.log_text();
    assert!(log.lines().count() > 10, "trace logging wrote little:\n{log}");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    let secret_of = |t: &str| t.rsplit('_').next().expect("secret").to_owned();
    for (what, secret) in [
        ("the passphrase", PASS.to_owned()),
        ("the admin token", secret_of(&admin)),
        ("the cookie token", secret_of(&cookie)),
        ("a minted token", secret_of(&minted)),
        ("a presented wrong token", secret_of(&almost)),
    ] {
        assert!(!log.contains(&secret), "{what} is in the log");
    }
    assert!(
        !log.to_ascii_lowercase().contains("bearer "),
        "an Authorization header is in the log"
    );
}

/// Runs `anya-node --data-dir DATA <args>`; its stdout.
fn cli(data: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anya-node"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("ANYA_PASSPHRASE")
        .output()
        .expect("run anya-node");
    assert!(
        out.status.success(),
        "anya-node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn tokens_from_the_command_line_work_on_the_running_daemon_and_revoking_one_ends_its_streams() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let d = common::start(&data);
    let made = cli(
        &data,
        &["token", "new", "--name", "shop", "--scope", "read", "--wallet", "w"],
    );
    let shop = made.trim().to_owned();
    assert!(shop.starts_with("anya_"), "{made}");
    assert_eq!(get(d.addr, "/v1/wallets", &shop).0, 200);
    assert_eq!(
        post(d.addr, "/v1/keys", &shop, &json!({"id": "x", "spec": "ed25519"})).0,
        403,
        "a read token cannot make keys"
    );
    let listed = cli(&data, &["token", "list"]);
    let id = shop
        .trim_start_matches("anya_")
        .split('_')
        .next()
        .expect("id")
        .to_owned();
    let line = listed
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {listed}"));
    let info: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(info["wallets"], json!(["w"]));
    assert!(
        !listed.contains(shop.rsplit('_').next().expect("secret")),
        "no secret is listed"
    );

    let (mut events, _) = Events::connect(d.addr, &shop).expect("events");
    let started = Instant::now();
    cli(&data, &["token", "revoke", &id]);
    let reason = events
        .close_reason()
        .expect("the stream is closed after the revocation");
    assert!(reason.contains("revoked"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(get(d.addr, "/v1/wallets", &shop).0, 401);
}
