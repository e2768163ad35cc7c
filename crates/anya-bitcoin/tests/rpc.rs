//! The bitcoind chain source. Retries, timeouts, authentication and reply handling are checked
//! against a real HTTP server in the test that answers from a script, then against a real
//! regtest `bitcoind` (`anya_testkit::Bitcoind`; `BITCOIND_EXE`, which `.ci/run` sets). Wallet
//! sync against the real node is in `bitcoind_sync.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anya_bitcoin::rpc::{BitcoindChain, FeeSource, RpcAuth, RpcConfig, RpcError};
use anya_hsm::SecretString;
use anya_testkit::{Bitcoind, BitcoindOptions};
use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use bitcoin::hex::DisplayHex;
use bitcoin::{absolute, transaction, BlockHash, FeeRate, Transaction};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// A scripted HTTP server: connection n gets `script[n]` (the last entry once the script runs out).

#[derive(Clone, Debug)]
enum Reply {
    /// Read the request, then close without answering.
    Close,
    /// Read the request and never answer.
    Hang,
    /// An HTTP status with a plain-text body, as Core's HTTP server sends for 401 and 503.
    Status(u16, &'static str),
    /// A JSON-RPC result.
    Result(Value),
    /// A JSON-RPC error, sent as Core does: HTTP 500 with a JSON body.
    Error(i32, &'static str),
}

struct Server {
    url: String,
    connections: Arc<AtomicUsize>,
    authorization: Arc<Mutex<Vec<Option<String>>>>,
}

impl Server {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP request; returns its JSON-RPC id and Authorization header.
fn read_request(stream: &TcpStream) -> Option<(Value, Option<String>)> {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let request: Value = serde_json::from_slice(&body).ok()?;
    Some((request["id"].clone(), authorization))
}

fn respond(mut stream: TcpStream, status: u16, reason: &str, body: &str) {
    let head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

fn serve(script: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let authorization = Arc::new(Mutex::new(Vec::new()));
    let (count, auth) = (Arc::clone(&connections), Arc::clone(&authorization));
    std::thread::spawn(move || {
        let mut hung = Vec::new();
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let reply = script.get(n).or(script.last()).cloned().expect("non-empty script");
            let Some((id, authorization)) = read_request(&stream) else {
                continue;
            };
            auth.lock().expect("lock").push(authorization);
            match reply {
                Reply::Close => drop(stream),
                Reply::Hang => hung.push(stream),
                Reply::Status(status, body) => respond(stream, status, "Status", body),
                Reply::Result(result) => {
                    let body = json!({ "result": result, "error": null, "id": id }).to_string();
                    respond(stream, 200, "OK", &body);
                }
                Reply::Error(code, message) => {
                    let body = json!({ "result": null, "error": { "code": code, "message": message }, "id": id });
                    respond(stream, 500, "Internal Server Error", &body.to_string());
                }
            }
        }
    });
    Server {
        url,
        connections,
        authorization,
    }
}

fn user_pass() -> RpcAuth {
    RpcAuth::UserPass {
        user: "anya".into(),
        pass: SecretString::from("hunter2"),
    }
}

fn config(server: &Server) -> RpcConfig {
    let mut config = RpcConfig::new(server.url.clone(), user_pass());
    config.timeout = Duration::from_secs(5);
    config
}

fn chain(config: RpcConfig) -> BitcoindChain {
    BitcoindChain::connect(config).expect("client set up")
}

fn empty_tx() -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: Vec::new(),
        output: Vec::new(),
    }
}

const HASH: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";

#[test]
fn http_503_is_retried_with_backoff() {
    let server = serve(vec![
        Reply::Status(503, "Work queue depth exceeded"),
        Reply::Status(503, "Work queue depth exceeded"),
        Reply::Result(json!(42)),
    ]);
    let started = Instant::now();
    assert_eq!(chain(config(&server)).height().expect("third attempt answers"), 42);
    assert_eq!(server.connections(), 3);
    // 100 ms, then 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn closed_connections_are_retried() {
    let server = serve(vec![Reply::Close, Reply::Close, Reply::Result(json!(7))]);
    assert_eq!(chain(config(&server)).height().expect("answers after the closes"), 7);
    assert_eq!(server.connections(), 3);
}

#[test]
fn gives_up_after_max_retries() {
    let server = serve(vec![Reply::Status(503, "Work queue depth exceeded")]);
    let started = Instant::now();
    let err = chain(config(&server)).height().expect_err("never answers");
    assert!(matches!(err, RpcError::Transport { attempts: 4, .. }), "{err:?}");
    assert_eq!(server.connections(), 4, "one attempt and three retries");
    // 100 + 200 + 400 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn rejected_transactions_are_not_retried() {
    let server = serve(vec![
        Reply::Error(-26, "txn-mempool-conflict"),
        Reply::Result(json!(HASH)),
    ]);
    let err = chain(config(&server)).broadcast(&empty_tx()).expect_err("rejected");
    match err {
        RpcError::Rpc { code, message } => {
            assert_eq!(code, -26);
            assert_eq!(message, "txn-mempool-conflict");
        }
        other => panic!("expected an rpc error, got {other:?}"),
    }
    assert_eq!(server.connections(), 1);
}

#[test]
fn warmup_is_retried() {
    let server = serve(vec![
        Reply::Error(-28, "Loading block index…"),
        Reply::Result(json!(HASH)),
    ]);
    let hash = chain(config(&server)).block_hash(0).expect("answers after warmup");
    assert_eq!(hash, BlockHash::from_str(HASH).expect("hash"));
    assert_eq!(server.connections(), 2);
}

#[test]
fn timeout_fires_when_the_server_never_answers() {
    let server = serve(vec![Reply::Hang]);
    let mut config = config(&server);
    config.timeout = Duration::from_millis(200);
    config.max_retries = 1;
    config.backoff_base = Duration::from_millis(10);
    let started = Instant::now();
    let err = chain(config).height().expect_err("times out");
    assert!(matches!(err, RpcError::Transport { attempts: 2, .. }), "{err:?}");
    // Two attempts, each at most two reads of 200 ms (simple_http re-sends once).
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn auth_failure_is_typed_and_not_retried() {
    let server = serve(vec![Reply::Status(401, ""), Reply::Result(json!(1))]);
    let err = chain(config(&server)).height().expect_err("unauthorized");
    assert!(matches!(err, RpcError::Auth { status: 401 }), "{err:?}");
    assert_eq!(server.connections(), 1);
}

#[test]
fn cookie_file_is_read_and_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "__cookie__:secret").expect("cookie written");
    let server = serve(vec![Reply::Result(json!(1))]);
    let chain = chain(RpcConfig::new(server.url.clone(), RpcAuth::Cookie(cookie)));
    assert_eq!(chain.height().expect("answers"), 1);
    let sent = server.authorization.lock().expect("lock").clone();
    assert_eq!(sent, [Some("Basic X19jb29raWVfXzpzZWNyZXQ=".to_owned())]);

    let missing = BitcoindChain::connect(RpcConfig::new(
        server.url.clone(),
        RpcAuth::Cookie(dir.path().join("absent")),
    ));
    assert!(matches!(missing, Err(RpcError::Cookie { .. })), "{missing:?}");
    let garbled = dir.path().join("garbled");
    std::fs::write(&garbled, "no colon here").expect("written");
    let garbled = BitcoindChain::connect(RpcConfig::new(server.url.clone(), RpcAuth::Cookie(garbled)));
    assert!(matches!(garbled, Err(RpcError::InvalidCookie { .. })), "{garbled:?}");
}

#[test]
fn password_is_not_debug_printed() {
    let config = RpcConfig::new("http://127.0.0.1:18443", user_pass());
    let printed = format!("{config:?}");
    assert!(printed.contains("anya"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[test]
fn fee_estimate_and_fallback() {
    let none = serve(vec![Reply::Result(
        json!({ "errors": ["Insufficient data or no feerate found"], "blocks": 0 }),
    )]);
    let mut fallback = config(&none);
    fallback.fallback_fee_rate = FeeRate::from_sat_per_vb(7).expect("rate");
    let estimate = chain(fallback).estimate_fee(6).expect("falls back");
    assert_eq!(estimate.source, FeeSource::Fallback);
    assert_eq!(estimate.fee_rate, FeeRate::from_sat_per_vb(7).expect("rate"));

    let some = serve(vec![Reply::Result(json!({ "feerate": 0.00012, "blocks": 2 }))]);
    let estimate = chain(config(&some)).estimate_fee(6).expect("estimated");
    assert_eq!(estimate.source, FeeSource::Estimated { blocks: 2 });
    assert_eq!(estimate.fee_rate, FeeRate::from_sat_per_vb(12).expect("rate"));

    // An out-of-range target is the caller's error, not a reason to fall back.
    let bad = serve(vec![Reply::Error(-8, "Invalid conf_target")]);
    let err = chain(config(&bad)).estimate_fee_rate(0).expect_err("invalid target");
    assert!(matches!(err, RpcError::Rpc { code: -8, .. }), "{err:?}");
}

#[test]
fn confirmations_from_getrawtransaction() {
    let txid = empty_tx().compute_txid();
    let unknown = serve(vec![Reply::Error(-5, "No such mempool or blockchain transaction")]);
    assert_eq!(chain(config(&unknown)).confirmations(&txid).expect("answer"), None);
    let mined = serve(vec![Reply::Result(json!({ "txid": txid, "confirmations": 3 }))]);
    assert_eq!(chain(config(&mined)).confirmations(&txid).expect("answer"), Some(3));
    let pending = serve(vec![Reply::Result(json!({ "txid": txid }))]);
    assert_eq!(chain(config(&pending)).confirmations(&txid).expect("answer"), Some(0));
}

// ---------------------------------------------------------------------------------------------
// The same client against a real regtest bitcoind.

fn cookie_chain(node: &Bitcoind) -> BitcoindChain {
    chain(RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(node.cookie_file())))
}

/// An `-rpcauth=user:salt$hmac` entry for `password`, as Core's `share/rpcauth/rpcauth.py`
/// computes it (HMAC-SHA256 keyed with the salt's text).
fn rpcauth(user: &str, password: &str) -> String {
    let salt = "a6c1e0f2b3d4c5e6f708192a3b4c5d6e";
    let mut engine = hmac::HmacEngine::<sha256::Hash>::new(salt.as_bytes());
    engine.input(password.as_bytes());
    let mac = hmac::Hmac::<sha256::Hash>::from_engine(engine);
    format!("-rpcauth={user}:{salt}${}", mac.to_byte_array().to_lower_hex_string())
}

#[test]
fn bitcoind_cookie_and_password_auth() {
    let options = BitcoindOptions {
        args: vec![rpcauth("anya", "hunter2")],
    };
    let Some(node) = Bitcoind::start_with(options) else {
        return;
    };
    let burn = node.new_burn_address();
    node.mine(3, &burn);

    assert_eq!(cookie_chain(&node).height().expect("cookie accepted"), 3);
    let password = chain(RpcConfig::new(node.rpc_url(), user_pass()));
    assert_eq!(password.height().expect("rpcauth user accepted"), 3);
    let (height, hash) = password.tip().expect("tip");
    assert_eq!(height, 3);
    assert_eq!(password.block(3).expect("block").block_hash(), hash);

    let wrong = chain(RpcConfig::new(
        node.rpc_url(),
        RpcAuth::UserPass {
            user: "anya".into(),
            pass: SecretString::from("wrong"),
        },
    ));
    let started = Instant::now();
    let err = wrong.block_by_hash(&hash).expect_err("refused");
    assert!(matches!(err, RpcError::Auth { status: 401 }), "{err:?}");
    // Not retried: Core also delays each failed login by 250 ms, so four attempts would show.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A cookie of an earlier run of the node holds an old password.
    let dir = tempfile::tempdir().expect("temp dir");
    let stale = dir.path().join(".cookie");
    std::fs::write(&stale, "__cookie__:0123456789abcdef").expect("written");
    let err = chain(RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(stale)))
        .height()
        .expect_err("stale cookie");
    assert!(matches!(err, RpcError::Auth { status: 401 }), "{err:?}");
}

#[test]
fn bitcoind_down_is_retried_then_a_transport_error() {
    let Some(node) = Bitcoind::start() else { return };
    let mut config = RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(node.cookie_file()));
    config.backoff_base = Duration::from_millis(20);
    let client = chain(config);
    assert_eq!(client.height().expect("up"), 0);
    drop(node);
    let started = Instant::now();
    let err = client.height().expect_err("node stopped");
    assert!(matches!(err, RpcError::Transport { attempts: 4, .. }), "{err:?}");
    // 20 + 40 + 80 ms of backoff between the four attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bitcoind_broadcast_confirmations_and_fee_fallback() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = cookie_chain(&node);
    let miner = node.new_burn_address();
    node.mine(1, &miner);
    // A fresh regtest chain has no fee estimates: the fallback, said as such.
    let fee = chain.estimate_fee(6).expect("estimate");
    assert_eq!(fee.source, FeeSource::Fallback);
    assert_eq!(fee.fee_rate, RpcConfig::DEFAULT_FALLBACK_FEE_RATE);
    // Out-of-range targets are Core's -8, not a fallback.
    let err = chain.estimate_fee(0).expect_err("target 0");
    assert!(matches!(err, RpcError::Rpc { code: -8, .. }), "{err:?}");

    // Core cannot even decode a transaction without inputs.
    let err = chain.broadcast(&empty_tx()).expect_err("rejected");
    assert!(matches!(err, RpcError::Rpc { code: -22, .. }), "{err:?}");
    let err = chain.block_hash(1_000).expect_err("above the tip");
    assert!(matches!(err, RpcError::Rpc { code: -8, .. }), "{err:?}");
    let unknown = empty_tx().compute_txid();
    assert_eq!(chain.confirmations(&unknown).expect("answer"), None);

    // The coinbase of block 1 is confirmed once, then twice; `confirmations_in` finds it
    // without -txindex by its block.
    let tip = chain.tip().expect("tip");
    let coinbase = chain.block_by_hash(&tip.1).expect("block").txdata[0].compute_txid();
    assert_eq!(chain.confirmations(&coinbase).expect("known"), Some(1));
    node.mine(1, &miner);
    assert_eq!(chain.confirmations_in(&coinbase, &tip.1).expect("known"), Some(2));
    assert_eq!(chain.confirmations_in(&unknown, &tip.1).expect("answer"), None);
}
