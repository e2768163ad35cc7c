//! The real `anya-node` process on a temporary data directory: every route refuses a missing,
//! wrong, expired or under-scoped token; bodies that are malformed, mistyped, unknown or too
//! large get problem details; and SIGTERM during a burst of writes loses no acknowledged
//! request and leaves none half applied.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const PASS: &str = "node test passphrase";

/// A running daemon, killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    admin: Option<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anya-node"))
        .args([
            "--regtest",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(data)
        .env("ANYA_PASSPHRASE", PASS)
        .env_remove("ANYA_DATA_DIR")
        .env_remove("ANYA_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn anya-node");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut admin, mut addr) = (None, None);
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 {
            panic!("anya-node exited before listening: {:?}", child.wait());
        }
        if let Some(t) = line.trim().strip_prefix("admin token (shown once): ") {
            admin = Some(t.to_owned());
        }
        if let Some(a) = line.trim().strip_prefix("listening on http://") {
            addr = Some(a.parse().expect("an address"));
        }
    }
    Daemon {
        child,
        addr: addr.expect("an address"),
        admin,
    }
}

/// One HTTP/1.1 request; returns the status, the content type and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ctype, bytes) = body.unwrap_or(("", b""));
    if body.is_some() {
        head.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", bytes.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(bytes).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status");
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, ctype, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).expect("size").trim(), 16).expect("hex size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn post(addr: SocketAddr, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let (status, _, out) = request(addr, "POST", path, Some(token), Some(("application/json", &bytes)));
    (status, if out.is_empty() { Value::Null } else { json_of(&out) })
}

fn token(addr: SocketAddr, admin: &str, body: Value) -> String {
    let (status, v) = post(addr, "/v1/tokens", admin, &body);
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().expect("token").to_owned()
}

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
    for (method, path, scope) in anya_node::api::ROUTES {
        let path = path.replace("{id}", "k1");
        let body: Option<(&str, &[u8])> = (*method == "POST").then_some(("application/json", b"{}".as_slice()));
        let (status, ctype, _) = request(d.addr, method, &path, None, body);
        let Some(scope) = scope else {
            assert_eq!(status, 200, "{method} {path} needs no token");
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
}

#[test]
fn bad_bodies_get_problem_details_and_signatures_verify() {
    let dir = tempfile::tempdir().expect("dir");
    let d = start(&dir.path().join("data"));
    let admin = d.admin.clone().expect("admin token");
    let key = |body: &[u8], ctype: &str| request(d.addr, "POST", "/v1/keys", Some(&admin), Some((ctype, body)));
    let cases: [(&[u8], &str, u16, &str); 5] = [
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
