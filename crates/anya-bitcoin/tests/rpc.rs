//! The bitcoind chain source. Retries, timeouts, authentication and reply handling are checked
//! against a real HTTP server in the test that answers from a script; the chain operations run
//! against a real `bitcoind` on regtest when `BITCOIND_EXE` names one.
#![allow(clippy::print_stderr, reason = "a skipped test says so on stderr")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anya_bitcoin::rpc::{BitcoindChain, FeeSource, RpcAuth, RpcConfig, RpcError};
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Label, SystemClock};
use anya_hsm::{HsmProvider, SecretString};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bitcoin::{absolute, transaction, Address, Amount, BlockHash, FeeRate, Network, Transaction};
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
// A real bitcoind, when BITCOIND_EXE names one.

/// Kills the process when dropped, also when the test panics.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Bitcoind {
    // Fields drop in order: the process stops before its data directory is removed.
    _process: Process,
    _dir: tempfile::TempDir,
    url: String,
    chain: BitcoindChain,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Starts `$BITCOIND_EXE` on regtest in a temp dir on loopback ports, or says the test is skipped.
fn bitcoind() -> Option<Bitcoind> {
    let Some(exe) = std::env::var_os("BITCOIND_EXE") else {
        eprintln!("skipped: BITCOIND_EXE unset");
        return None;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let rpc_port = free_port();
    let mut process = Process(
        Command::new(PathBuf::from(exe))
            .arg("-regtest")
            .arg(format!("-datadir={}", dir.path().display()))
            .arg(format!("-rpcport={rpc_port}"))
            .arg(format!("-port={}", free_port()))
            .args([
                "-listen=0",
                "-fallbackfee=0.0002",
                "-txindex=1",
                "-server=1",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                "-printtoconsole=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bitcoind starts"),
    );
    let url = format!("http://127.0.0.1:{rpc_port}");
    let cookie = dir.path().join("regtest").join(".cookie");
    let deadline = Instant::now() + Duration::from_secs(60);
    let chain = loop {
        assert!(Instant::now() < deadline, "bitcoind did not come up");
        if cookie.exists() {
            if let Ok(chain) = BitcoindChain::connect(RpcConfig::new(url.clone(), RpcAuth::Cookie(cookie.clone()))) {
                // The retries cover RPC_IN_WARMUP; loop on in case warmup outlasts them.
                if chain.height().is_ok() {
                    break chain;
                }
            }
        }
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("bitcoind exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Some(Bitcoind {
        _process: process,
        _dir: dir,
        url,
        chain,
    })
}

fn label(s: &str) -> Label {
    Label::new(s).expect("valid label")
}

fn wallet(dir: &tempfile::TempDir) -> AnyaWallet {
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.path().join("anya.db"), SqliteOptions::default()).expect("store"));
    let hsm = anya_hsm::conformance::software_on(Arc::clone(&store));
    anya_hsm::conformance::generate_test_root(&hsm, &label("root"));
    let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
    let template = Template::Bip86 {
        root: label("root"),
        account: 0,
    };
    AnyaWallet::create(
        store,
        hsm,
        Arc::new(SystemClock),
        label("rpc"),
        &template,
        Network::Regtest,
    )
    .expect("wallet created")
}

fn burn() -> Address {
    Address::from_str("bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2")
        .expect("address")
        .require_network(Network::Regtest)
        .expect("regtest")
}

fn mine(chain: &BitcoindChain, blocks: u32, to: &Address) -> Vec<BlockHash> {
    chain
        .call("generatetoaddress", &[blocks.into(), to.to_string().into()])
        .expect("blocks mined")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[test]
fn bitcoind_wallet_syncs_sends_and_survives_a_reorg() {
    let Some(node) = bitcoind() else { return };
    let chain = &node.chain;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut w = wallet(&dir);

    let to = w.next_address().expect("address").address;
    mine(chain, 101, &to);
    let report = chain.sync_wallet(&mut w).expect("synced");
    assert_eq!(report.blocks, 101);
    assert_eq!(report.tip, chain.tip().expect("tip"));
    assert_eq!(chain.block(report.tip.0).expect("block").block_hash(), report.tip.1);
    assert_eq!(w.balance().confirmed, Amount::from_int_btc(50), "one mature coinbase");

    // A fresh regtest chain has no fee estimates.
    let fee = chain.estimate_fee(6).expect("estimate");
    assert_eq!(fee.source, FeeSource::Fallback);

    let tx = w
        .send(
            &[(burn().script_pubkey(), Amount::from_int_btc(1))],
            fee.fee_rate,
            now(),
        )
        .expect("sent");
    let txid = chain.broadcast(&tx).expect("accepted");
    assert_eq!(txid, tx.compute_txid());
    assert_eq!(chain.broadcast(&tx).expect("rebroadcast is harmless"), txid);
    assert_eq!(chain.confirmations(&txid).expect("known"), Some(0));
    let report = chain.sync_wallet(&mut w).expect("synced");
    assert_eq!(report.blocks, 0);
    assert!(report.mempool_txs >= 1);

    let mined = mine(chain, 1, &burn());
    let report = chain.sync_wallet(&mut w).expect("synced");
    assert_eq!(report.blocks, 1);
    assert_eq!(chain.confirmations(&txid).expect("known"), Some(1));
    assert_eq!(chain.confirmations_in(&txid, &mined[0]).expect("known"), Some(1));

    // Replace the tip: the transaction returns to the mempool and is mined again.
    chain
        .call::<Value>("invalidateblock", &[json!(mined[0])])
        .expect("invalidated");
    mine(chain, 2, &burn());
    let report = chain.sync_wallet(&mut w).expect("synced across the reorg");
    assert_eq!(report.tip, chain.tip().expect("tip"));
    assert_eq!(w.bdk().latest_checkpoint().hash(), report.tip.1);
    assert_eq!(chain.confirmations(&txid).expect("known"), Some(2));
    let confirmed = w.bdk().get_tx(txid).expect("wallet tx").chain_position.is_confirmed();
    assert!(confirmed);

    let unknown = empty_tx().compute_txid();
    assert_eq!(chain.confirmations(&unknown).expect("answer"), None);
}

#[test]
fn bitcoind_rejections_are_typed() {
    let Some(node) = bitcoind() else { return };
    let chain = &node.chain;
    mine(chain, 1, &burn());
    // Core cannot even decode a transaction without inputs.
    let err = chain.broadcast(&empty_tx()).expect_err("rejected");
    assert!(matches!(err, RpcError::Rpc { .. }), "{err:?}");
    let err = chain.block_hash(1_000).expect_err("above the tip");
    assert!(matches!(err, RpcError::Rpc { code: -8, .. }), "{err:?}");

    let (_, tip) = chain.tip().expect("tip");
    let wrong = BitcoindChain::connect(RpcConfig::new(
        node.url.clone(),
        RpcAuth::UserPass {
            user: "nobody".into(),
            pass: SecretString::from("wrong"),
        },
    ))
    .expect("set up");
    let err = wrong.block_by_hash(&tip).expect_err("refused");
    assert!(matches!(err, RpcError::Auth { status: 401 }), "{err:?}");
}
