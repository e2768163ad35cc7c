//! Load benchmark of the anya-node API, on loopback, stopping by itself.
//!
//! `cargo bench -p anya-node --bench load [-- rate|max|http|ws]` (`http` is `rate` and `max`;
//! no name runs everything, about 90 s on 2 cores). Environment:
//! - `ANYA_LOAD_QUICK=1`: a short smoke run (2 s rate runs, 1 s throughput runs, 1,000
//!   WebSocket clients);
//! - `ANYA_LOAD_WS_CLIENTS=N`: hold N WebSocket clients instead of 10,000;
//! - `ANYA_LOAD_ANCHOR=none`: run the keystore without its rollback anchor (`[hsm] anchor_dir =
//!   "none"`), to see what the anchor's fsyncs cost the sign route.
//!
//! Each process needs a descriptor per connection: with 10,000 clients, `ulimit -n` must be at
//! least 10,200. The bench reads the limit and holds fewer clients, saying so, when it is lower.
//!
//! - **HTTP.** A node ([`Node::open`] on a temporary directory, regtest chain, rate limits off)
//!   served by [`anya_node::serve`], and beside it a bare axum server whose two handlers do the
//!   same wallet and HSM work on the same node with none of the API's layers (token check,
//!   metrics, per-IP limit, problem details). A keep-alive HTTP/1.1 client (hand-written:
//!   hyper's client feature needs the `want` crate, which is not in `Cargo.lock`) drives each
//!   route at a fixed 1,000 requests/s, open loop, latency taken from the scheduled send time so
//!   that a stall is not hidden (no coordinated omission), then closed loop for the maximum
//!   sustained rate. Client and server share this process and the machine's cores.
//! - **WebSocket.** 10,000 authenticated `/v1/events` subscribers, held by a child process (this
//!   binary again) so that the node's resident memory per connection is measured apart from the
//!   client's (and so that neither process needs 20,000 descriptors); one event published, and
//!   the time until every subscriber had it.
//!
//! The figures go to stdout as markdown tables; progress goes to stderr.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a bench binary reports its figures"
)]

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anya_bitcoin::wallet::Template;
use anya_hsm::{KeyPolicy, KeyRef, KeySpec, Label, SecretString};
use anya_node::auth::{Scope, TokenLimits};
use anya_node::events::{Event, Events};
use anya_node::wallets::{lock, WalletHandle};
use anya_node::{Node, NodeConfig};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bitcoin::hex::{DisplayHex, FromHex};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// The argument that makes this binary the WebSocket client process.
const CHILD: &str = "__anya_load_ws_clients";
const WALLET: &str = "bench";
const KEY: &str = "k1";
/// Requests in flight at most: the client's keep-alive connections per run.
const CONNECTIONS: usize = 32;
/// The fixed rate of the latency runs.
const RATE: u64 = 1_000;
/// WebSocket handshakes in flight at most (below the listener's backlog of 1,024).
const WS_CONNECTING: usize = 256;
/// Descriptors each process keeps beside its sockets (store, runtime, pipes).
const SPARE_FDS: u64 = 200;

// ---- settings -----------------------------------------------------------------------------------

struct Settings {
    quick: bool,
    /// Run the fixed-rate latency runs.
    rate: bool,
    /// Run the closed-loop throughput runs.
    max: bool,
    ws: bool,
    /// Whether the keystore runs without its rollback anchor.
    no_anchor: bool,
    /// Length of each fixed-rate run.
    fixed: Duration,
    /// Length of each closed-loop run.
    closed: Duration,
    /// Closed-loop warm-up before each route's first run.
    warmup: Duration,
    ws_clients: usize,
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var("ANYA_LOAD_QUICK").is_ok_and(|v| v == "1");
        // `cargo bench` adds `--bench`; anything else that is not a scenario name is ignored.
        let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
        let named = |s: &str| args.iter().any(|a| a == s);
        let any = ["rate", "max", "http", "ws"].into_iter().any(named);
        let ws_clients = std::env::var("ANYA_LOAD_WS_CLIENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1_000 } else { 10_000 });
        Self {
            quick,
            rate: !any || named("rate") || named("http"),
            max: !any || named("max") || named("http"),
            ws: !any || named("ws"),
            no_anchor: std::env::var("ANYA_LOAD_ANCHOR").is_ok_and(|v| v == "none"),
            fixed: Duration::from_secs(if quick { 2 } else { 10 }),
            closed: Duration::from_secs(if quick { 1 } else { 5 }),
            warmup: Duration::from_millis(if quick { 300 } else { 1_000 }),
            ws_clients,
        }
    }
}

// ---- process figures ----------------------------------------------------------------------------

/// This process's resident set, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The soft limit on open files (`/proc/self/limits`), if it can be read.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// CPU time of this whole process, threads that ended included (`/proc/self/stat` `utime` and
/// `stime`, in USER_HZ = 100 ticks a second), in nanoseconds.
fn process_cpu_nanos() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces: state is the
    // first, utime the 12th, stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (next() + next()) * 10_000_000
}

/// CPU time this process's live threads have run, in nanoseconds (`/proc/self/task/*/schedstat`).
fn cpu_nanos() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The median time of a 4 KiB write and `fsync` in `dir`, over 20 (the sign route's floor:
/// every signature waits for a durable audit write). In microseconds.
fn fsync_probe(dir: &std::path::Path) -> std::io::Result<u64> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5a_u8; 4096];
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_all()?;
        times.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    std::fs::remove_file(path)?;
    Ok(Samples::new(times).pct(50.0))
}

/// Wall-clock time in nanoseconds since the epoch: the one clock both processes of the
/// WebSocket run read.
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ---- latency figures ----------------------------------------------------------------------------

/// Sorted samples, in microseconds.
struct Samples(Vec<u64>);

impl Samples {
    fn new(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    /// The `p`-th percentile (nearest rank).
    fn pct(&self, p: f64) -> u64 {
        let n = self.0.len();
        if n == 0 {
            return 0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank below the sample count"
        )]
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.0.get(rank.clamp(1, n) - 1).copied().unwrap_or(0)
    }

    fn max(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }
}

fn ms(us: u64) -> String {
    #[allow(clippy::cast_precision_loss, reason = "microseconds shown to three decimals of a ms")]
    let v = us as f64 / 1000.0;
    format!("{v:.2} ms")
}

// ---- the node and the bare server ---------------------------------------------------------------

struct Fixture {
    node: Arc<Node>,
    token: Arc<str>,
    anya: SocketAddr,
    bare: SocketAddr,
    balance: bdk_wallet::Balance,
    transactions: usize,
    /// Median 4 KiB write + fsync in the data directory's file system, µs.
    fsync_us: u64,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Opens a node on a temporary directory with a token, the key `k1` and the wallet `bench`
/// holding the coinbases of 101 regtest blocks.
fn open_node(no_anchor: bool) -> Result<(Arc<Node>, String, WalletHandle, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::default();
    config.data_dir = dir.path().join("data");
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.rate_limit.per_token_per_sec = 0;
    config.rate_limit.per_ip_per_sec = 0;
    config.api.shutdown_grace_secs = 2;
    if no_anchor {
        config.hsm.anchor_dir = Some("none".into());
    }
    let (node, _) = Node::open(config, &SecretString::new("anya load bench".to_owned()))?;
    let (_, token) = node
        .tokens()
        .create("load bench", vec![Scope::Admin], TokenLimits::default(), None)?;
    let hsm = node.hsm();
    hsm.generate_key(
        &Label::new(KEY)?,
        KeySpec::Secp256k1,
        KeyPolicy::default_for(KeySpec::Secp256k1),
    )?;
    let root = Label::new("root")?;
    hsm.generate_key(&root, KeySpec::Bip32Root, KeyPolicy::default_for(KeySpec::Bip32Root))?;
    let handle = node
        .wallets()
        .create(Label::new(WALLET)?, &Template::Bip84 { root, account: 0 })?;
    let address = lock(&handle).next_address()?.address;
    node.chain().mine(101, &address)?;
    node.wallets().sync(&mut lock(&handle))?;
    Ok((Arc::new(node), token, handle, dir))
}

/// What the bare handlers share: the same node, wallet handle and key.
#[derive(Clone)]
struct Bare {
    node: Arc<Node>,
    wallet: WalletHandle,
    key: Label,
}

/// `GET /balance`: the wallet's balance, as the API's balance route computes it, without the
/// API's token check, wallet lookup, metrics and per-IP limit.
async fn bare_balance(State(bare): State<Bare>) -> Result<Json<serde_json::Value>, StatusCode> {
    tokio::task::spawn_blocking(move || {
        let b = lock(&bare.wallet).balance();
        Json(serde_json::json!({
            "confirmed_sat": b.confirmed.to_sat(),
            "trusted_pending_sat": b.trusted_pending.to_sat(),
            "untrusted_pending_sat": b.untrusted_pending.to_sat(),
            "immature_sat": b.immature.to_sat(),
            "spendable_sat": b.trusted_spendable().to_sat(),
        }))
    })
    .await
    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

#[derive(serde::Deserialize)]
struct SignBody {
    scheme: String,
    message_hex: String,
}

/// `POST /sign`: an ECDSA signature by `k1` over the body's digest, the same HSM call the API's
/// sign route makes, without its token check, metrics, audit-event wake-up and per-IP limit.
async fn bare_sign(
    State(bare): State<Bare>,
    Json(body): Json<SignBody>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let digest = <[u8; 32]>::from_hex(&body.message_hex).map_err(|_| StatusCode::BAD_REQUEST)?;
    let signature = tokio::task::spawn_blocking(move || bare.node.hsm().sign_ecdsa(KeyRef::Key(&bare.key), &digest))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(serde_json::json!({
        "scheme": body.scheme,
        "signature_hex": signature.serialize_der().to_lower_hex_string(),
    })))
}

async fn start_servers(
    node: Arc<Node>,
    wallet: WalletHandle,
) -> Result<(
    Vec<SocketAddr>,
    Vec<tokio::sync::oneshot::Sender<()>>,
    Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
)> {
    let anya = TcpListener::bind("127.0.0.1:0").await?;
    let bare = TcpListener::bind("127.0.0.1:0").await?;
    let addrs = vec![anya.local_addr()?, bare.local_addr()?];
    let (stop_anya, anya_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_bare, bare_rx) = tokio::sync::oneshot::channel::<()>();
    let anya_task = tokio::spawn(anya_node::serve(Arc::clone(&node), anya, async {
        let _ = anya_rx.await;
    }));
    let app = Router::new()
        .route("/balance", get(bare_balance))
        .route("/sign", post(bare_sign))
        .with_state(Bare {
            node,
            wallet,
            key: Label::new(KEY)?,
        });
    let bare_task = tokio::spawn(async move {
        axum::serve(bare, app)
            .with_graceful_shutdown(async {
                let _ = bare_rx.await;
            })
            .await
    });
    Ok((addrs, vec![stop_anya, stop_bare], vec![anya_task, bare_task]))
}

// ---- a keep-alive HTTP/1.1 client ---------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    AnyaBalance,
    BareBalance,
    AnyaSign,
    BareSign,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Self::AnyaBalance => "anya `GET /v1/wallets/bench/balance`",
            Self::BareBalance => "bare `GET /balance`",
            Self::AnyaSign => "anya `POST /v1/keys/k1/sign` (ECDSA)",
            Self::BareSign => "bare `POST /sign` (ECDSA)",
        }
    }

    fn is_anya(self) -> bool {
        matches!(self, Self::AnyaBalance | Self::AnyaSign)
    }

    /// Request `n`'s bytes. Each signature is over a different digest (`n`, big-endian).
    fn request(self, token: &str, n: u64) -> Vec<u8> {
        let head = |method: &str, path: &str| {
            format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n")
        };
        match self {
            Self::AnyaBalance => format!("{}\r\n", head("GET", &format!("/v1/wallets/{WALLET}/balance"))),
            Self::BareBalance => format!("{}\r\n", head("GET", "/balance")),
            Self::AnyaSign | Self::BareSign => {
                let path = if self == Self::AnyaSign {
                    format!("/v1/keys/{KEY}/sign")
                } else {
                    "/sign".to_owned()
                };
                let body = format!(r#"{{"scheme":"ecdsa","message_hex":"{n:064x}"}}"#);
                format!(
                    "{}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    head("POST", &path),
                    body.len()
                )
            }
        }
        .into_bytes()
    }
}

/// One keep-alive connection; responses must carry `content-length` (axum's JSON and problem
/// responses do).
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// How long one exchange may take before the run gives up on that connection.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// The status and the length of the first complete response in `buf`, if there is one.
fn parse_response(buf: &[u8]) -> std::io::Result<Option<(u16, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = buf
        .get(..end)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| invalid("a response without content-length"))?;
    let total = end + 4 + length;
    Ok((buf.len() >= total).then_some((status, total)))
}

impl Client {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` and reads its response; returns the status.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        let work = async {
            self.stream.write_all(request).await?;
            loop {
                if let Some((status, total)) = parse_response(&self.buf)? {
                    self.buf.drain(..total);
                    return Ok(status);
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, work)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }
}

/// What a run measured.
struct Run {
    route: Route,
    /// Completed requests (any status).
    done: u64,
    /// Responses that were not 200, and connections that failed.
    errors: u64,
    elapsed: Duration,
    /// CPU time of the whole process (client and node) over the run.
    cpu: Duration,
    latency: Samples,
}

impl Run {
    #[allow(clippy::cast_precision_loss, reason = "request counts far below 2^52")]
    fn per_sec(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }

    /// Process CPU time per completed request, in microseconds.
    #[allow(clippy::cast_precision_loss, reason = "request counts far below 2^52")]
    fn cpu_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.done.max(1) as f64
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// `RATE` requests a second, open loop, for this long.
    Fixed(Duration),
    /// As fast as `CONNECTIONS` connections go, for this long.
    Closed(Duration),
}

/// Waits until the node has stopped publishing events (its background task publishes the audit
/// records that signatures appended), at most 5 s.
async fn quiesce(events: &Events) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = events.last_seq();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = events.last_seq();
        if now == last {
            return;
        }
        last = now;
    }
}

/// One run of `route`. Its CPU time runs until the node has finished the work the run left it
/// (see [`quiesce`]), so that work is charged to the run that caused it.
async fn run(addr: SocketAddr, route: Route, token: Arc<str>, events: Events, mode: Mode) -> Result<Run> {
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(addr).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let cpu = process_cpu_nanos();
    let start = Instant::now() + Duration::from_millis(20);
    let (total, end) = match mode {
        Mode::Fixed(d) => (RATE * d.as_secs(), None),
        Mode::Closed(d) => (u64::MAX, Some(start + d)),
    };
    let mut workers = Vec::with_capacity(CONNECTIONS);
    for mut client in clients {
        let (next, token) = (Arc::clone(&next), Arc::clone(&token));
        workers.push(tokio::spawn(async move {
            let (mut latency, mut done, mut errors) = (Vec::new(), 0u64, 0u64);
            tokio::time::sleep_until(start.into()).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || end.is_some_and(|e| Instant::now() >= e) {
                    break;
                }
                let sent = match mode {
                    Mode::Fixed(_) => {
                        let due = start + Duration::from_nanos(i * 1_000_000_000 / RATE);
                        if Instant::now() < due {
                            // Early: what the timer adds past `due` (tokio's timer has a
                            // 1 ms grain) is the client's, not the server's.
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            // Late: every connection was busy, so the request waited for
                            // the server; that wait counts.
                            due
                        }
                    }
                    Mode::Closed(_) => Instant::now(),
                };
                let request = route.request(&token, i);
                match client.exchange(&request).await {
                    Ok(status) => {
                        done += 1;
                        if status != 200 {
                            errors += 1;
                        }
                        latency.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    Err(e) => {
                        eprintln!("  {}: connection failed: {e}", route.name());
                        errors += 1;
                        break;
                    }
                }
            }
            (latency, done, errors)
        }));
    }
    let (mut latency, mut done, mut errors) = (Vec::new(), 0, 0);
    for w in workers {
        let (l, d, e) = w.await?;
        latency.extend(l);
        done += d;
        errors += e;
    }
    let elapsed = start.elapsed();
    quiesce(&events).await;
    Ok(Run {
        route,
        done,
        errors,
        elapsed,
        cpu: Duration::from_nanos(process_cpu_nanos().saturating_sub(cpu)),
        latency: Samples::new(latency),
    })
}

struct HttpFigures {
    fixed: Vec<Run>,
    closed: Vec<Run>,
}

async fn http(f: &Fixture, s: &Settings) -> Result<HttpFigures> {
    let addr = |r: Route| if r.is_anya() { f.anya } else { f.bare };
    let go = |r: Route, mode: Mode| run(addr(r), r, Arc::clone(&f.token), f.node.events().clone(), mode);
    let (mut fixed, mut closed) = (Vec::new(), Vec::new());
    // One route pair at a time, so that what the sign route leaves the node to do (publishing
    // its audit records as events) never runs during the balance runs.
    for pair in [
        [Route::AnyaBalance, Route::BareBalance],
        [Route::AnyaSign, Route::BareSign],
    ] {
        for r in pair {
            eprintln!("warming up {}", r.name());
            let w = go(r, Mode::Closed(s.warmup)).await?;
            if w.errors > 0 {
                return Err(format!("{}: {} errors while warming up", r.name(), w.errors).into());
            }
        }
        for r in pair.into_iter().filter(|_| s.rate) {
            eprintln!("{} at {RATE} requests/s for {:?}", r.name(), s.fixed);
            fixed.push(go(r, Mode::Fixed(s.fixed)).await?);
        }
        if !s.max {
            continue;
        }
        // The closed-loop time is split in halves run anya, bare, anya, bare, so that a slow
        // phase of the machine or the disk (the sign route fsyncs) falls on both sides.
        let mut halves = Vec::new();
        for _ in 0..2 {
            for r in pair {
                eprintln!(
                    "{} closed loop, {CONNECTIONS} connections, {:?}",
                    r.name(),
                    s.closed / 2
                );
                halves.push(go(r, Mode::Closed(s.closed / 2)).await?);
            }
        }
        for r in pair {
            let mine: Vec<Run> = halves.extract_if(.., |h| h.route == r).collect();
            closed.push(Run {
                route: r,
                done: mine.iter().map(|h| h.done).sum(),
                errors: mine.iter().map(|h| h.errors).sum(),
                elapsed: mine.iter().map(|h| h.elapsed).sum(),
                cpu: mine.iter().map(|h| h.cpu).sum(),
                latency: Samples::new(mine.into_iter().flat_map(|h| h.latency.0).collect()),
            });
        }
    }
    Ok(HttpFigures { fixed, closed })
}

fn print_http(h: &HttpFigures) {
    if !h.fixed.is_empty() {
        print_fixed(&h.fixed);
    }
    if !h.closed.is_empty() {
        print_closed(&h.closed);
    }
}

fn print_fixed(runs: &[Run]) {
    println!("### Latency at a fixed {RATE} requests/s (open loop, {CONNECTIONS} keep-alive connections)\n");
    println!("| route | requests | achieved rate | p50 | p90 | p99 | max | errors | goal p99 < 10 ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let p99 = r.latency.pct(99.0);
        let goal = if !r.route.is_anya() {
            ""
        } else if p99 < 10_000 && r.errors == 0 {
            "met"
        } else {
            "**not met**"
        };
        println!(
            "| {} | {} | {:.0}/s | {} | {} | {} | {} | {} | {goal} |",
            r.route.name(),
            r.done,
            r.per_sec(),
            ms(r.latency.pct(50.0)),
            ms(r.latency.pct(90.0)),
            ms(p99),
            ms(r.latency.max()),
            r.errors
        );
    }
    println!();
}

fn print_closed(runs: &[Run]) {
    println!("### Maximum sustained rate (closed loop, {CONNECTIONS} keep-alive connections)\n");
    println!(
        "| route | anya requests/s | bare requests/s | anya/bare | goal >= 0.8x | CPU per request, anya / bare (client and node) | anya p50 / p99 | bare p50 / p99 | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for pair in runs.chunks(2) {
        let [anya, bare] = pair else { continue };
        let ratio = anya.per_sec() / bare.per_sec();
        let what = if anya.route == Route::AnyaBalance {
            "wallet balance"
        } else {
            "ECDSA sign"
        };
        println!(
            "| {what} | {:.0} | {:.0} | {ratio:.2}x | {} | {:.0} / {:.0} µs ({:.2}x) | {} / {} | {} / {} | {} |",
            anya.per_sec(),
            bare.per_sec(),
            if ratio >= 0.8 { "met" } else { "**not met**" },
            anya.cpu_per_request(),
            bare.cpu_per_request(),
            anya.cpu_per_request() / bare.cpu_per_request(),
            ms(anya.latency.pct(50.0)),
            ms(anya.latency.pct(99.0)),
            ms(bare.latency.pct(50.0)),
            ms(bare.latency.pct(99.0)),
            anya.errors + bare.errors,
        );
    }
    println!();
}

// ---- WebSocket fan-out: the node's side ---------------------------------------------------------

struct WsFigures {
    asked: usize,
    clients: usize,
    failed: usize,
    connect_ms: u64,
    subscribers: usize,
    server_rss_before: u64,
    server_rss_held: u64,
    server_rss_after: u64,
    client_rss_before: u64,
    client_rss_held: u64,
    received: usize,
    /// Publish to receipt: p50, p99, max (µs).
    fanout: [u64; 3],
    /// CPU time from the publish until every receipt: the node's, the clients' (ns).
    cpu: [u64; 2],
}

fn next_line(out: &mut impl BufRead, expect: &str) -> Result<Vec<u64>> {
    let mut line = String::new();
    if out.read_line(&mut line)? == 0 {
        return Err(format!("the client process ended before `{expect}`").into());
    }
    let mut words = line.split_whitespace();
    if words.next() != Some(expect) {
        return Err(format!("the client process said {line:?}, not `{expect}`").into());
    }
    Ok(words.filter_map(|w| w.parse().ok()).collect())
}

fn ws(f: &Fixture, s: &Settings) -> Result<WsFigures> {
    let asked = s.ws_clients;
    let limit = open_files_limit().unwrap_or(1024);
    let usable = usize::try_from(limit.saturating_sub(SPARE_FDS)).unwrap_or(usize::MAX);
    let clients = asked.min(usable);
    if clients < asked {
        eprintln!(
            "note: the open-files limit is {limit}; holding {clients} WebSocket clients instead of {asked} \
             (raise it with `ulimit -n {}`)",
            asked as u64 + SPARE_FDS
        );
    }
    let server_rss_before = rss_kib();
    eprintln!("connecting {clients} WebSocket subscribers from a child process");
    let mut child = Command::new(std::env::current_exe()?)
        .arg(CHILD)
        .env("ANYA_LOAD_WS_ADDR", f.anya.to_string())
        .env("ANYA_LOAD_WS_TOKEN", &*f.token)
        .env("ANYA_LOAD_WS_CLIENTS", clients.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let result = (|| -> Result<WsFigures> {
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout pipe")?);
        let mut input = child.stdin.take().ok_or("no stdin pipe")?;
        let c = next_line(&mut out, "connected")?;
        let [ok, failed, client_rss_before, client_rss_held, connect_ms] = c[..] else {
            return Err(format!("malformed `connected` line: {c:?}").into());
        };
        // Let the server's tasks finish their hello writes before reading its memory.
        std::thread::sleep(Duration::from_millis(500));
        let subscribers = f.node.events().subscribers();
        let server_rss_held = rss_kib();
        eprintln!("publishing one event to {subscribers} subscribers");
        let cpu = cpu_nanos();
        let published = unix_nanos();
        f.node.events().publish(Event::ConfigReloaded);
        writeln!(input, "published {published}")?;
        let r = next_line(&mut out, "fanout")?;
        let server_cpu = cpu_nanos().saturating_sub(cpu);
        let [received, p50, p99, max, client_cpu] = r[..] else {
            return Err(format!("malformed `fanout` line: {r:?}").into());
        };
        writeln!(input, "close")?;
        next_line(&mut out, "closed")?;
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(WsFigures {
            asked,
            clients: to_usize(ok),
            failed: to_usize(failed),
            connect_ms,
            subscribers,
            server_rss_before,
            server_rss_held,
            server_rss_after: 0,
            client_rss_before,
            client_rss_held,
            received: to_usize(received),
            fanout: [p50, p99, max],
            cpu: [server_cpu, client_cpu],
        })
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let mut figures = result?;
    if !status.success() {
        return Err(format!("the client process exited with {status}").into());
    }
    std::thread::sleep(Duration::from_millis(500));
    figures.server_rss_after = rss_kib();
    Ok(figures)
}

fn print_ws(w: &WsFigures) {
    let per = |before: u64, held: u64| {
        #[allow(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
        let kib = held.saturating_sub(before) as f64 / w.clients.max(1) as f64;
        format!("{kib:.1} KiB")
    };
    let [p50, p99, max] = w.fanout;
    #[allow(clippy::cast_precision_loss, reason = "microsecond counts far below 2^52")]
    let per_sub = |us: u64| us as f64 / w.clients.max(1) as f64;
    let [server_cpu, client_cpu] = w.cpu.map(|ns| ns / 1000);
    println!("### WebSocket fan-out (`/v1/events`, one event to every subscriber)\n");
    println!("| figure | value |");
    println!("|---|---|");
    if w.clients < w.asked {
        println!("| subscribers asked for | {} (fewer held: open-files limit) |", w.asked);
    }
    println!(
        "| subscribers held (node's count) | {} ({}; {} failed to connect) |",
        w.clients, w.subscribers, w.failed
    );
    println!(
        "| time to connect them all | {} ms, {} handshakes in flight at most |",
        w.connect_ms, WS_CONNECTING
    );
    println!(
        "| node process resident memory | {} MiB before, {} MiB held, {} MiB after closing |",
        w.server_rss_before / 1024,
        w.server_rss_held / 1024,
        w.server_rss_after / 1024
    );
    println!(
        "| **node memory per connection** | **{}** |",
        per(w.server_rss_before, w.server_rss_held)
    );
    println!(
        "| client memory per connection (tokio-tungstenite, 4 KiB read buffer; separate process) | {} |",
        per(w.client_rss_before, w.client_rss_held)
    );
    println!(
        "| subscribers that received the event | {} of {} |",
        w.received, w.clients
    );
    println!(
        "| publish to receipt, p50 / p99 / max | {} / {} / {} |",
        ms(p50),
        ms(p99),
        ms(max)
    );
    if w.received == w.clients {
        println!("| **time to fan one event out to all** | **{}** |", ms(max));
    } else {
        println!("| **time to fan one event out to all** | **not all received it within 30 s** |");
    }
    println!(
        "| CPU time from the publish to the last receipt: node / clients | {} / {} ({:.1} / {:.1} µs per subscriber) |",
        ms(server_cpu),
        ms(client_cpu),
        per_sub(server_cpu),
        per_sub(client_cpu)
    );
    println!();
}

// ---- WebSocket fan-out: the client process ------------------------------------------------------

/// One subscriber: connects, waits for `hello`, reports, then reports the time it received the
/// `config_reloaded` event and holds the connection until told to close.
async fn subscriber(
    addr: SocketAddr,
    token: Arc<str>,
    gate: Arc<tokio::sync::Semaphore>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    receipts: tokio::sync::mpsc::UnboundedSender<u64>,
    mut close: tokio::sync::watch::Receiver<bool>,
) {
    let connect = async {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut request = format!("ws://{addr}/v1/events")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().map_err(|_| "a header value")?,
        );
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (mut socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""type":"hello""#) => Ok(socket),
            other => Err(format!("no hello: {other:?}")),
        }
    };
    let mut socket = match connect.await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"config_reloaded""#) => {
                    let _ = receipts.send(unix_nanos());
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
            _ = close.changed() => return,
        }
    }
}

fn child() -> Result<()> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let addr: SocketAddr = var("ANYA_LOAD_WS_ADDR")?.parse()?;
    let token: Arc<str> = var("ANYA_LOAD_WS_TOKEN")?.into();
    let n: usize = var("ANYA_LOAD_WS_CLIENTS")?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let before = rss_kib();
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(WS_CONNECTING));
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let (receipt_tx, mut receipts) = tokio::sync::mpsc::unbounded_channel();
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        tasks.push(rt.spawn(subscriber(
            addr,
            Arc::clone(&token),
            Arc::clone(&gate),
            ready_tx.clone(),
            receipt_tx.clone(),
            close_rx.clone(),
        )));
    }
    drop((ready_tx, receipt_tx));
    let (ok, failed) = rt.block_on(async {
        let (mut ok, mut failed) = (0usize, 0usize);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while ok + failed < n {
            match tokio::time::timeout_at(deadline, ready.recv()).await {
                Ok(Some(Ok(()))) => ok += 1,
                Ok(Some(Err(e))) => {
                    if failed == 0 {
                        eprintln!("  a subscriber failed: {e}");
                    }
                    failed += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        (ok, failed)
    });
    let connect_ms = started.elapsed().as_millis();
    // Let the last handshakes' buffers go before reading the memory.
    std::thread::sleep(Duration::from_millis(300));
    println!("connected {ok} {failed} {before} {} {connect_ms}", rss_kib());
    std::io::stdout().flush()?;
    // The clients are idle until the node publishes, so this counts only the fan-out.
    let cpu = cpu_nanos();

    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let published: u64 = line
        .strip_prefix("published ")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("expected `published <ns>`, got {line:?}"))?;
    let times = rt.block_on(async {
        let mut times = Vec::with_capacity(ok);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while times.len() < ok {
            match tokio::time::timeout_at(deadline, receipts.recv()).await {
                Ok(Some(t)) => times.push(t),
                Ok(None) | Err(_) => break,
            }
        }
        times
    });
    let cpu = cpu_nanos().saturating_sub(cpu);
    let latency = Samples::new(times.iter().map(|t| t.saturating_sub(published) / 1000).collect());
    println!(
        "fanout {} {} {} {} {cpu}",
        times.len(),
        latency.pct(50.0),
        latency.pct(99.0),
        latency.max(),
    );
    std::io::stdout().flush()?;

    line.clear();
    stdin.read_line(&mut line)?;
    let _ = close_tx.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    println!("closed");
    std::io::stdout().flush()?;
    Ok(())
}

// ---- main ---------------------------------------------------------------------------------------

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some(CHILD) {
        return child();
    }
    let s = Settings::from_env();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    eprintln!("anya-node load bench: {cores} cores; opening a node and mining 101 regtest blocks");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (node, token, wallet, dir) = open_node(s.no_anchor)?;
    let fsync_us = fsync_probe(dir.path())?;
    let (balance, transactions) = {
        let w = lock(&wallet);
        (w.balance(), w.bdk().transactions().count())
    };
    let (addrs, stop, servers) = rt.block_on(start_servers(Arc::clone(&node), wallet))?;
    let [anya, bare] = addrs[..] else {
        return Err("two servers".into());
    };
    let f = Fixture {
        node,
        token: token.into(),
        anya,
        bare,
        balance,
        transactions,
        fsync_us,
        stop,
        servers,
        _dir: dir,
    };

    let http_figures = if s.rate || s.max {
        Some(rt.block_on(http(&f, &s))?)
    } else {
        None
    };
    let ws_figures = if s.ws { Some(ws(&f, &s)?) } else { None };

    for tx in f.stop {
        let _ = tx.send(());
    }
    rt.block_on(async {
        for server in f.servers {
            match tokio::time::timeout(Duration::from_secs(10), server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("a server stopped with an error: {e}"),
                Ok(Err(e)) => eprintln!("a server task failed: {e}"),
                Err(_) => eprintln!("a server did not stop within 10 s"),
            }
        }
    });

    println!(
        "## anya-node load{}: {cores} cores, loopback, client and node in one process (WebSocket clients in a second)\n",
        if s.quick { " (quick mode)" } else { "" }
    );
    println!(
        "Wallet `{WALLET}` (BIP84): {} transactions, {} sat confirmed, {} sat immature. Rate limits off.\n",
        f.transactions,
        f.balance.confirmed.to_sat(),
        f.balance.immature.to_sat()
    );
    println!(
        "Keystore: software, durable audit (one fsynced audit write per signature), rollback anchor {}. \
         A 4 KiB write and fsync in the data directory took {} (median of 20) at the start.\n",
        if s.no_anchor {
            "off (`ANYA_LOAD_ANCHOR=none`)"
        } else {
            "on (a `FileAnchor` beside the data directory, the default)"
        },
        ms(f.fsync_us)
    );
    if let Some(h) = &http_figures {
        print_http(h);
    }
    if let Some(w) = &ws_figures {
        print_ws(w);
    }
    Ok(())
}
