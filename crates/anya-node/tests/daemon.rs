//! The real `anya-node` process on a temporary data directory: every route refuses a missing,
//! wrong, expired or under-scoped token; bodies that are malformed, mistyped, unknown or too
//! large get problem details; and SIGTERM during a burst of writes loses no acknowledged
//! request and leaves none half applied.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{json_of, post, rand_suffix, request, start, token};
use serde_json::json;

#[test]
fn every_route_refuses_missing_wrong_expired_and_underscoped_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let d = start(&dir.path().join("data"));
    let admin = d.admin.clone().expect("the first start prints an admin token");
    let cookie = std::fs::read_to_string(dir.path().join("data/.cookie")).expect("cookie");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data/.cookie"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the cookie is the owner's only");
    }
    let read = token(d.addr, &admin, json!({"name": "reader", "scopes": ["read"]}));
    let signer = token(d.addr, &admin, json!({"name": "signer", "scopes": ["sign"]}));
    let expired = token(
        d.addr,
        &cookie,
        json!({"name": "old", "scopes": ["admin"], "expires_in_secs": 0}),
    );
    let (status, _) = post(d.addr, "/v1/keys", &admin, &json!({"id": "k1", "spec": "secp256k1"}));
    assert_eq!(status, 201);
    let wrong = "anya_0123456789abcdef_00";
    let routes = anya_node::api::routes();
    assert!(routes.len() >= 33, "{routes:?}");
    for (method, path, scope) in &routes {
        let method = method.as_str();
        let path = path
            .replace("{id}", "k1")
            .replace("{name}", "w1")
            .replace("{asset}", "btcusd")
            .replace("{time}", "2021-06-29T05:10:00Z");
        let body: Option<(&str, &[u8])> =
            matches!(method, "POST" | "PUT").then_some(("application/json", b"{}".as_slice()));
        let (status, ctype, _) = request(d.addr, method, &path, None, body);
        let Some(scope) = scope else {
            // Public: the health check, and the oracle's reads (404 oracle_disabled here).
            assert!(
                status == 200 || status == 404,
                "{method} {path} needs no token: {status}"
            );
            continue;
        };
        assert_eq!(status, 401, "{method} {path} without a token");
        assert_eq!(ctype, "application/problem+json");
        for t in [wrong, expired.as_str(), "Basic xyz"] {
            let (status, _, _) = request(d.addr, method, &path, Some(t), body);
            assert_eq!(status, 401, "{method} {path} with {t}");
        }
        let under: &[&str] = match scope {
            anya_node::auth::Scope::Read => &[],
            anya_node::auth::Scope::Sign => &[read.as_str()],
            anya_node::auth::Scope::Admin => &[read.as_str(), signer.as_str()],
        };
        for t in under {
            let (status, _, _) = request(d.addr, method, &path, Some(t), body);
            assert_eq!(status, 403, "{method} {path} with a token below {scope:?}");
        }
        // The right token gets past authorization (the empty body may then be refused).
        let (status, _, _) = request(d.addr, method, &path, Some(&admin), body);
        assert!(
            status != 401 && status != 403,
            "{method} {path} with an admin token: {status}"
        );
    }
    let (status, ctype, _) = request(d.addr, "GET", "/v1/nothing", Some(&admin), None);
    assert_eq!((status, ctype.as_str()), (404, "application/problem+json"));
    // The document served is the one the route table came from.
    let (status, _, doc) = request(d.addr, "GET", "/v1/openapi.json", Some(&read), None);
    assert_eq!(status, 200);
    let doc = json_of(&doc);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."), "{doc}");
    let served = doc["paths"].as_object().expect("paths");
    for (method, path, _) in &routes {
        assert!(
            served[path.as_str()][method.to_lowercase()].is_object(),
            "{method} {path} is not in the served document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["SendRequest"].is_object());
}

#[test]
fn bad_bodies_get_problem_details_and_signatures_verify() {
    let dir = tempfile::tempdir().expect("dir");
    let d = start(&dir.path().join("data"));
    let admin = d.admin.clone().expect("admin token");
    let key = |body: &[u8], ctype: &str| request(d.addr, "POST", "/v1/keys", Some(&admin), Some((ctype, body)));
    let cases: [(&[u8], &str, u16, &str); 8] = [
        // An array would fill the fields by position: refused.
        (br#"["a", "secp256k1"]"#, "application/json", 422, "invalid_body"),
        // Well-formed JSON of the wrong shape is 422, whatever serde calls the mismatch.
        (
            br#"{"id": ["a"], "spec": "secp256k1"}"#,
            "application/json",
            422,
            "invalid_body",
        ),
        (
            br#"{"id": "a", "spec": "secp256k1"} x"#,
            "application/json",
            400,
            "malformed_json",
        ),
        (b"{not json", "application/json", 400, "malformed_json"),
        (
            br#"{"id": 7, "spec": "secp256k1"}"#,
            "application/json",
            422,
            "invalid_body",
        ),
        (
            br#"{"id": "a", "spec": "secp256k1", "extra": 1}"#,
            "application/json",
            422,
            "invalid_body",
        ),
        (
            br#"{"id": "a", "spec": "secp256k1"}"#,
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            br#"{"id": "a b", "spec": "secp256k1"}"#,
            "application/json",
            400,
            "invalid_label",
        ),
    ];
    for (body, ctype, status, code) in cases {
        let (got, ct, out) = key(body, ctype);
        assert_eq!(got, status, "{}", String::from_utf8_lossy(body));
        assert_eq!(ct, "application/problem+json");
        let problem = json_of(&out);
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status);
    }
    let big = vec![b' '; 70 * 1024];
    let (status, _, out) = key(&big, "application/json");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&out));

    let (status, k) = post(d.addr, "/v1/keys", &admin, &json!({"id": "s1", "spec": "secp256k1"}));
    assert_eq!(status, 201, "{k}");
    let (status, sig) = post(
        d.addr,
        "/v1/keys/s1/sign",
        &admin,
        &json!({"scheme": "schnorr", "message_hex": "01".repeat(32)}),
    );
    assert_eq!(status, 200, "{sig}");
    assert_eq!(sig["signature_hex"].as_str().expect("hex").len(), 128);
    let (status, bad) = post(
        d.addr,
        "/v1/keys/s1/sign",
        &admin,
        &json!({"scheme": "schnorr", "message_hex": "0102"}),
    );
    assert_eq!((status, bad["code"].as_str()), (422, Some("invalid_digest")));
    let (status, _, out) = request(d.addr, "GET", "/v1/audit/verify", Some(&admin), None);
    assert_eq!(status, 200);
    let audit = json_of(&out);
    assert_eq!(audit["records"], audit["authenticated"], "{audit}");
    let (status, _, out) = request(d.addr, "GET", "/health/ready", Some(&admin), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
}

#[test]
fn sigterm_during_a_burst_of_writes_loses_no_acknowledged_request() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let mut d = start(&data);
    let admin = d.admin.clone().expect("admin token");
    let addr = d.addr;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let admin = admin.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    let id = format!("w{w}-{i}");
                    let bytes = serde_json::to_vec(&json!({"id": id, "spec": "ed25519"})).expect("json");
                    let Ok(mut s) = TcpStream::connect(addr) else { break };
                    let head = format!(
                        "POST /v1/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        bytes.len()
                    );
                    if s.write_all(head.as_bytes()).and_then(|()| s.write_all(&bytes)).is_err() {
                        break;
                    }
                    let mut raw = Vec::new();
                    if s.read_to_end(&mut raw).is_err() || raw.is_empty() {
                        break;
                    }
                    if raw.starts_with(b"HTTP/1.1 201") {
                        acked.push(id);
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let pid = d.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let exit = d.child.wait().expect("wait");
    assert!(exit.success(), "anya-node exits cleanly on SIGTERM: {exit:?}");
    let acked: Vec<String> = writers.into_iter().flat_map(|w| w.join().expect("writer")).collect();
    assert!(!acked.is_empty(), "no write was acknowledged before SIGTERM");
    drop(d);

    let d = start(&data);
    let cookie = std::fs::read_to_string(data.join(".cookie")).expect("cookie");
    let (status, _, out) = request(d.addr, "GET", "/v1/keys", Some(&cookie), None);
    assert_eq!(status, 200);
    let keys = json_of(&out);
    let listed: Vec<&str> = keys
        .as_array()
        .expect("array")
        .iter()
        .map(|k| k["id"].as_str().expect("id"))
        .collect();
    for id in &acked {
        assert!(listed.contains(&id.as_str()), "acknowledged key {id} is gone");
    }
    // Nothing half made: every key listed has its public key.
    assert!(keys
        .as_array()
        .expect("array")
        .iter()
        .all(|k| k["public_key"].is_string()));
    let (status, _, out) = request(d.addr, "GET", "/v1/audit/verify", Some(&cookie), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
}

#[test]
fn the_daemon_keeps_everything_in_postgres_when_told_to() {
    // A database of its own, so that this node's keystore meets no other test's.
    let Some(db) = common::postgres_database("anya_node") else {
        return;
    };
    let store = db.url.clone();
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let options = common::Options {
        config: None,
        args: &["--store", &store],
        ..common::Options::default()
    };
    let d = common::start_with(&data, &options);
    let admin = d.admin.clone().expect("a new keystore in the new database");
    let (status, _) = post(d.addr, "/v1/keys", &admin, &json!({"id": "pg1", "spec": "secp256k1"}));
    assert_eq!(status, 201);
    let (status, w) = post(
        d.addr,
        "/v1/wallets",
        &admin,
        &json!({"name": "pgw", "template": "bip84", "root": "pgroot"}),
    );
    assert_eq!(status, 201, "{w}");
    assert!(
        !data.join("anya.db").exists(),
        "no SQLite file beside a PostgreSQL store"
    );
    drop(d);
    let d = common::start_with(&data, &options);
    assert!(d.admin.is_none(), "the keystore was found again");
    let cookie = std::fs::read_to_string(data.join(".cookie")).expect("cookie");
    let (status, _, out) = request(d.addr, "GET", "/v1/keys/pg1", Some(&cookie), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let (status, _, out) = request(d.addr, "GET", "/v1/wallets", Some(&cookie), None);
    assert_eq!((status, json_of(&out)), (200, json!(["pgw"])));
    drop(d);
}

/// The SoftHSM2 token `.ci/run` makes: module, label, PIN.
fn softhsm() -> Option<(String, String, String)> {
    let module = anya_testkit::require_env("ANYA_TEST_PKCS11_MODULE", ".ci/run sources .ci/softhsm.sh")?;
    let label = std::env::var("ANYA_TEST_PKCS11_TOKEN_LABEL").unwrap_or_else(|_| "anya-test".to_owned());
    let pin = std::env::var("ANYA_TEST_PKCS11_PIN").expect("ANYA_TEST_PKCS11_PIN goes with the module");
    Some((module, label, pin))
}

#[test]
fn the_daemon_signs_on_a_pkcs11_token_and_unlocks_an_enveloped_keystore_without_a_passphrase() {
    let Some((module, label, pin)) = softhsm() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{pin}\n")).expect("pin file");
    let prefix = format!("node-{}-{}/", std::process::id(), rand_suffix());
    for provider in ["pkcs11", "envelope"] {
        let config = dir.path().join(format!("{provider}.toml"));
        std::fs::write(
            &config,
            format!(
                "[hsm]\nprovider = \"{provider}\"\n[hsm.pkcs11]\nmodule = {module:?}\ntoken_label = {label:?}\npin_file = {:?}\nlabel_prefix = \"{prefix}{provider}/\"\n{}",
                pin_file.display().to_string(),
                // The enveloped keystore holds the oracle's key and nonces too (a token alone
                // cannot: no PKCS#11 mechanism does BIP340).
                if provider == "envelope" { "[oracle]\nenabled = true\n" } else { "" }
            ),
        )
        .expect("config");
        let data = dir.path().join(provider);
        let options = common::Options {
            config: Some(&config),
            args: &[],
            ..common::Options::default()
        };
        let d = common::start_with(&data, &options);
        let admin = d.admin.clone().expect("an admin token on the first start");
        let (status, _, out) = request(d.addr, "GET", "/health/ready", Some(&admin), None);
        assert_eq!(status, 200, "{provider}: {}", String::from_utf8_lossy(&out));
        let (status, key) = post(d.addr, "/v1/keys", &admin, &json!({"id": "t1", "spec": "secp256k1"}));
        assert_eq!(status, 201, "{provider}: {key}");
        let (status, sig) = post(
            d.addr,
            "/v1/keys/t1/sign",
            &admin,
            &json!({"scheme": "ecdsa", "message_hex": "22".repeat(32)}),
        );
        assert_eq!(status, 200, "{provider}: {sig}");
        if provider == "envelope" {
            let (status, ann) = post(
                d.addr,
                "/create-enum",
                &admin,
                &json!({"event_id": "env", "outcomes": ["x", "y"], "event_maturity_epoch": 1}),
            );
            assert_eq!(status, 200, "{ann}");
            let (status, att) = post(
                d.addr,
                "/sign-enum",
                &admin,
                &json!({"event_id": "env", "outcome": "y"}),
            );
            assert_eq!(status, 200, "{att}");
            let ann: anya_layer2::dlc::messages::OracleAnnouncement =
                serde_json::from_value(ann).expect("announcement");
            let att: anya_layer2::dlc::messages::OracleAttestation = serde_json::from_value(att).expect("attestation");
            att.validate(&secp256k1::Secp256k1::verification_only(), &ann)
                .expect("an attestation from the enveloped keystore verifies");
        }
        drop(d);
        // The second start needs no passphrase: the token holds what unlocks the keys.
        let mut child = Command::new(env!("CARGO_BIN_EXE_anya-node"))
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("ANYA_PASSPHRASE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut out, &mut line).expect("read");
            assert!(n > 0, "{provider}: anya-node exited: {:?}", child.wait());
            if let Some(a) = line.trim().strip_prefix("listening on http://") {
                break a.parse::<std::net::SocketAddr>().expect("address");
            }
        };
        let cookie = std::fs::read_to_string(data.join(".cookie")).expect("cookie");
        let (status, sig) = post(
            addr,
            "/v1/keys/t1/sign",
            &cookie,
            &json!({"scheme": "ecdsa", "message_hex": "33".repeat(32)}),
        );
        assert_eq!(status, 200, "{provider} after a restart: {sig}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_token_primary_with_a_software_secondary_is_ready_and_signs() {
    let Some((module, label, pin)) = softhsm() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{pin}\n")).expect("pin file");
    let config = dir.path().join("failover.toml");
    std::fs::write(
        &config,
        format!(
            "[hsm]\nprovider = \"pkcs11\"\nfailover = \"software\"\n[hsm.pkcs11]\nmodule = {module:?}\ntoken_label = {label:?}\npin_file = {:?}\nlabel_prefix = \"node-failover-{}-{}/\"\n",
            pin_file.display().to_string(),
            std::process::id(),
            rand_suffix()
        ),
    )
    .expect("config");
    let d = common::start_with(
        &dir.path().join("data"),
        &common::Options {
            config: Some(&config),
            args: &[],
            ..common::Options::default()
        },
    );
    let admin = d.admin.clone().expect("admin");
    let (status, _, out) = request(d.addr, "GET", "/health/ready", Some(&admin), None);
    let ready = json_of(&out);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["hsm"], "primary answering", "{ready}");
    let (status, key) = post(d.addr, "/v1/keys", &admin, &json!({"id": "f1", "spec": "secp256k1"}));
    assert_eq!(status, 201, "{key}");
    let (status, sig) = post(
        d.addr,
        "/v1/keys/f1/sign",
        &admin,
        &json!({"scheme": "ecdsa", "message_hex": "44".repeat(32)}),
    );
    assert_eq!(status, 200, "{sig}");
    // A secondary needs a primary to back.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[hsm]\nfailover = \"software\"\n").expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_anya-node"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hsm.failover"));
}
