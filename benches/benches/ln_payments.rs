//! Lightning payments per second between two nodes in this one process, on one regtest
//! bitcoind: ldk-node on its own SQLite store beside anya's `LightningNode` on anya's SQLite
//! store and, with `ANYA_TEST_POSTGRES_URL` set, on PostgreSQL. Also times a channel from
//! `open_channel` to usable on both sides.
//!
//! This is not a criterion bench: a phase of 200 payments takes seconds and needs a funded,
//! open channel, so each phase is timed once with a clock and printed, ending with a markdown
//! table. It needs a regtest `bitcoind` (`BITCOIND_EXE`); without one it prints `skipped: …`
//! and exits.
//!
//! The setups, each a payer and a payee node:
//! - **ldk-node**: a plain `ldk_node::Builder` with its default SQLite store (`build()`), a
//!   random entropy seed, bitcoind's RPC (cookie) as chain source. Payments with
//!   `spontaneous_payment().send` and `bolt11_payment().send`.
//! - **anya, SQLite**: `LightningNode::build` on a `SqliteStore` (WAL, `synchronous=FULL`, group
//!   commit), its seed derived in a software HSM (durable audit, a `FileAnchor`), a
//!   `PolicyEngine` without limits. Payments with `pay_keysend` and `pay_invoice`: each asks the
//!   spending policy first, which writes a reservation and an HSM audit record.
//! - **anya, PostgreSQL**: the same on a `PostgresStore`, each node in a fresh schema.
//!
//! Neither flavour writes a log: anya's node hands ldk-node's records to `tracing`, and this
//! bench installs no subscriber, so the ldk-node baseline gets a logger that drops them too,
//! all but errors, which it prints (`ANYA_LN_LDK_FILE_LOG=1`: ldk-node's default file logger
//! at debug level instead).
//!
//! All setups are built, funded and opened first (one at a time, each open timed), then every
//! phase (mode × payments in flight) runs on each setup back to back, so that the ratios compare
//! runs taken seconds apart on this drifting machine. A phase sends `N` payments of 1,000 sat
//! with `W` in flight: `W` sender threads each take a permit, send, and wait; the payer's event
//! loop gives a permit back on every `PaymentSuccessful` or `PaymentFailed` (a failed payment is
//! sent again), and the phase ends when `N` succeeded. In invoice mode the sender first asks the
//! payee for a fresh BOLT11 invoice (`bolt11_payment().receive`), inside the timed phase. Each
//! payee drains its own events on a thread of its own.
//!
//! At the end, anya's guard is timed alone: `PolicyEngine::approve_payment` (the reservation
//! write and the HSM audit record that `pay_keysend` and `pay_invoice` make before ldk-node
//! sends), on a fresh store and keystore of each anya backend, from 1 and from `W` threads.
//!
//! Then each store is timed alone, as LDK writes to it: `N` durable 1 KiB record writes through
//! `KVStoreSync::write`, from 1 and from `W` threads, on ldk-node's `SqliteStore` (rollback
//! journal, one connection under a mutex) and on anya's `LdkStore` over each anya backend.
//!
//! Knobs: `ANYA_LN_PAYMENTS` (default 200), `ANYA_LN_IN_FLIGHT` (default 8; 1 is always run
//! too, strictly sequential), `ANYA_LN_SETUPS` (`ldk`, `sqlite`, `postgres`, comma-separated;
//! default all), `ANYA_LN_ALONE=0` (skip the guard and store timings).
#![allow(clippy::print_stdout, reason = "the bench reports its timings on stdout")]
#![allow(clippy::print_stderr, reason = "a skipped bench says why on stderr")]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anya_bitcoin::policy::{PaymentSummary, PolicyEngine};
use anya_core_types::SystemClock;
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{HsmProvider, KdfParams, KeyId, KeyPolicy, KeySpec, SecretString, SoftwareHsm, SoftwareOptions, Usage};
use anya_layer2::lightning::ldk_node::io::sqlite_store::SqliteStore as LdkSqliteStore;
use anya_layer2::lightning::ldk_node::lightning::ln::channelmanager::PaymentId;
use anya_layer2::lightning::ldk_node::lightning::ln::msgs::SocketAddress;
use anya_layer2::lightning::ldk_node::lightning::util::persist::KVStoreSync;
use anya_layer2::lightning::ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use anya_layer2::lightning::ldk_node::logger::{LogLevel, LogRecord, LogWriter};
use anya_layer2::lightning::ldk_node::{Builder, Event, Node};
use anya_layer2::lightning::{default_max_fee_msat, BitcoindRpc, LdkStore, LightningNode, NodeOptions};
use anya_storage::{KvStore, Namespace, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::secp256k1::PublicKey;
use bitcoin::Network;
use rand::RngCore;

/// The channel opened payer → payee (raised when the phases need more).
const CHANNEL_SATS: u64 = 2_000_000;
/// Every payment: above the dust limit, so that each HTLC is an output of the commitment
/// transactions and needs its own HTLC signature, as a real payment does.
const PAY_MSAT: u64 = 1_000_000;
/// Payments of each mode sent before the timed phases.
const WARM_UP: usize = 8;
/// How long anything may take before the bench gives up.
const WAIT: Duration = Duration::from_secs(120);
/// LDK's default limit of HTLCs a channel accepts at once.
const MAX_HTLCS: usize = 50;
/// The keystore passphrase of the anya nodes.
const PASS: &str = "ln bench passphrase";

/// Drops ldk-node's log records except errors, which go to stderr (none in a good run).
struct ErrorsOnly(String);

impl LogWriter for ErrorsOnly {
    fn log(&self, record: LogRecord<'_>) {
        if record.level == LogLevel::Error {
            eprintln!("{}: ldk-node error: {}", self.0, record.args);
        }
    }
}

fn free_loopback() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn env_usize(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Which node a [`Peer`] runs.
enum Flavor {
    Ldk(Node),
    Anya(LightningNode),
}

/// One node of a setup, with the directory its files live in.
struct Peer {
    flavor: Flavor,
    listen: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// A plain ldk-node node on its own SQLite store in a fresh directory.
    fn ldk(name: &str, chain: &Bitcoind, file_log: bool) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let cookie = std::fs::read_to_string(chain.cookie_file()).expect("cookie");
        let (user, password) = cookie.trim().split_once(':').expect("cookie is user:password");
        let mut seed = [0u8; 64];
        rand::thread_rng().fill_bytes(&mut seed);
        let listen = free_loopback();
        let mut builder = Builder::new();
        builder
            .set_network(Network::Regtest)
            .set_storage_dir_path(dir.path().to_str().expect("a UTF-8 temp dir").to_owned())
            .set_entropy_seed_bytes(seed)
            .set_chain_source_bitcoind_rpc(
                "127.0.0.1".to_owned(),
                chain.rpc_port(),
                user.to_owned(),
                password.to_owned(),
            );
        if !file_log {
            builder.set_custom_logger(Arc::new(ErrorsOnly(name.to_owned())));
        }
        builder
            .set_listening_addresses(vec![SocketAddress::from(listen)])
            .expect("listening address");
        builder.set_node_alias(name.to_owned()).expect("alias");
        let node = builder.build().expect("build the ldk-node node");
        node.start().expect("start");
        Self {
            flavor: Flavor::Ldk(node),
            listen,
            _dir: dir,
        }
    }

    /// An anya node on `store`: a software HSM on the same store (its anchor in `dir`), a root
    /// that allows node seeds, a policy without limits.
    fn anya(name: &str, chain: &Bitcoind, store: Arc<dyn KvStore>, dir: tempfile::TempDir) -> Self {
        let (hsm, root, policy) = anya_guard(&store, dir.path());
        let rpc = BitcoindRpc::from_cookie("127.0.0.1", chain.rpc_port(), &chain.cookie_file()).expect("cookie");
        let listen = free_loopback();
        let mut options = NodeOptions::new(Network::Regtest, dir.path().join("work"), rpc);
        options.listen = vec![listen];
        options.alias = Some(name.to_owned());
        let ns = Namespace::new("anya/ln/node").expect("namespace");
        let node = LightningNode::build(hsm, &root, store, ns, policy, &options).expect("build the anya node");
        node.start().expect("start");
        Self {
            flavor: Flavor::Anya(node),
            listen,
            _dir: dir,
        }
    }

    fn node(&self) -> &Node {
        match &self.flavor {
            Flavor::Ldk(n) => n,
            Flavor::Anya(n) => n.node(),
        }
    }

    fn keysend(&self, to: PublicKey) -> Result<PaymentId, String> {
        match &self.flavor {
            Flavor::Ldk(n) => n
                .spontaneous_payment()
                .send(PAY_MSAT, to, None)
                .map_err(|e| e.to_string()),
            Flavor::Anya(n) => n.pay_keysend(to, PAY_MSAT, None).map_err(|e| e.to_string()),
        }
    }

    fn pay(&self, invoice: &Bolt11Invoice) -> Result<PaymentId, String> {
        match &self.flavor {
            Flavor::Ldk(n) => n.bolt11_payment().send(invoice, None).map_err(|e| e.to_string()),
            Flavor::Anya(n) => n.pay_invoice(invoice, None, None).map_err(|e| e.to_string()),
        }
    }

    /// The next event, waiting up to `timeout` without polling (ldk-node's event future, on
    /// `rt`); for anya through `LightningNode::next_event`, which releases a failed payment's
    /// policy reservation.
    fn next_event(&self, rt: &tokio::runtime::Runtime, timeout: Duration) -> Option<Event> {
        let event = rt
            .block_on(async { tokio::time::timeout(timeout, self.node().next_event_async()).await })
            .ok()?;
        match &self.flavor {
            Flavor::Ldk(_) => Some(event),
            Flavor::Anya(n) => n.next_event(),
        }
    }

    /// Marks the event [`next_event`](Self::next_event) returned as handled.
    fn handled(&self) {
        match &self.flavor {
            Flavor::Ldk(n) => n.event_handled().expect("event handled"),
            Flavor::Anya(n) => n.event_handled().expect("event handled"),
        }
    }

    /// Handles every event already queued.
    fn drain(&self) {
        loop {
            let event = match &self.flavor {
                Flavor::Ldk(n) => n.next_event(),
                Flavor::Anya(n) => n.next_event(),
            };
            if event.is_none() {
                return;
            }
            self.handled();
        }
    }

    fn stop(&self) {
        self.node().stop().expect("stop");
    }
}

/// A software HSM on `store` (durable audit, its anchor in `dir`) holding a BIP32 root that
/// allows node seeds, and a spending policy without limits on `store`: what an anya node
/// derives its seed from and asks before every payment.
fn anya_guard(store: &Arc<dyn KvStore>, dir: &Path) -> (Arc<dyn HsmProvider>, KeyId, PolicyEngine) {
    let anchor = FileAnchor::open(dir.join("anchor")).expect("anchor");
    // Argon2 runs once, at create; the cheapest parameters keep set-up short and change
    // nothing per payment.
    let options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_anchor(Arc::new(anchor));
    let hsm: Arc<dyn HsmProvider> =
        Arc::new(SoftwareHsm::create(Arc::clone(store), &SecretString::from(PASS), options).expect("keystore"));
    let root = KeyId::new("ln-root").expect("label");
    let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::DeriveNodeSeed);
    hsm.generate_key(&root, KeySpec::Bip32Root, policy).expect("root");
    let policy = PolicyEngine::new(
        Arc::clone(store),
        Namespace::new("anya/ln/policy").expect("namespace"),
        Arc::new(SystemClock),
    );
    (hsm, root, policy)
}

/// anya's guard alone: `PolicyEngine::approve_payment` as `pay_keysend` runs it before
/// ldk-node sends (the reservation written, an audit record appended and anchored), on a fresh
/// store and HSM like a node's, `approvals` of them from `threads` threads at once. Returns
/// the wall time per approval.
fn guard_cost(store: &Arc<dyn KvStore>, dir: &Path, approvals: usize, threads: usize) -> Duration {
    let (hsm, root, policy) = anya_guard(store, dir);
    let destination = PublicKey::from_secret_key(
        &secp256k1::Secp256k1::new(),
        &secp256k1::SecretKey::new(&mut rand::thread_rng()),
    );
    let approve = || {
        let summary = PaymentSummary {
            payment_hash: rand::random(),
            amount_msat: PAY_MSAT,
            max_fee_msat: default_max_fee_msat(PAY_MSAT),
            destination,
        };
        policy.approve_payment(&summary, &*hsm, &root).expect("approved");
    };
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let approve = &approve;
            scope.spawn(move || {
                for _ in (t..approvals).step_by(threads) {
                    approve();
                }
            });
        }
    });
    start.elapsed() / u32::try_from(approvals).expect("a bench-sized count")
}

fn waiter() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime to wait on events with")
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not {what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Syncs every node's wallets and waits until each has seen bitcoind's tip.
fn sync_to_tip(chain: &Bitcoind, peers: &[&Peer]) {
    let height = chain.height();
    for peer in peers {
        peer.node().sync_wallets().expect("sync");
        wait_until("synced to the tip", || {
            peer.node().status().current_best_block.height >= height
        });
    }
}

/// The name of the ldk-node setup, which the ratios divide by.
const BASELINE: &str = "ldk-node, its SQLite store";

/// A payer and a payee, and what was measured on them.
struct Setup {
    name: &'static str,
    payer: Peer,
    payee: Peer,
    open: Option<Duration>,
    phases: Vec<Phase>,
}

impl Setup {
    fn new(name: &'static str, payer: Peer, payee: Peer) -> Self {
        Self {
            name,
            payer,
            payee,
            open: None,
            phases: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Keysend,
    Invoice,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Keysend => "keysend",
            Mode::Invoice => "fresh invoice",
        }
    }
}

/// One timed phase.
struct Phase {
    mode: Mode,
    in_flight: usize,
    payments: usize,
    elapsed: Duration,
    failed: usize,
    send_errors: usize,
    /// Time between one success and the next (the first from the start), sorted.
    gaps: Vec<Duration>,
}

impl Phase {
    /// The `q` quantile of [`gaps`](Self::gaps).
    fn gap(&self, q: f64) -> Duration {
        let last = self.gaps.len().saturating_sub(1);
        let i = ((last as f64) * q).round() as usize;
        self.gaps.get(i.min(last)).copied().unwrap_or_default()
    }

    fn per_second(&self) -> f64 {
        self.payments as f64 / self.elapsed.as_secs_f64()
    }
}

/// The permits and counts a phase's senders and its event loop share.
#[derive(Default)]
struct FlowState {
    /// Payments that may be sent now.
    permits: usize,
    /// Payments still to be sent (a failed one is queued again).
    queued: usize,
    succeeded: usize,
    failed: usize,
    send_errors: usize,
    last_error: Option<String>,
    done: bool,
}

#[derive(Default)]
struct Flow {
    state: Mutex<FlowState>,
    wake: Condvar,
}

impl Flow {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlowState> {
        self.state.lock().expect("no sender panicked")
    }
}

/// Opens the setup's channel and times it from `open_channel` until both sides report it
/// usable: the funding is mined (6 blocks) as soon as it is in bitcoind's mempool.
fn open_channel(chain: &Bitcoind, setup: &Setup, channel_sats: u64) -> Duration {
    let (payer, payee) = (&setup.payer, &setup.payee);
    payer.drain();
    payee.drain();
    let start = Instant::now();
    payer
        .node()
        .open_channel(
            payee.node().node_id(),
            SocketAddress::from(payee.listen),
            channel_sats,
            None,
            None,
        )
        .expect("open");
    // ldk-node broadcasts the funding from a background task once the peer signed.
    let deadline = Instant::now() + WAIT;
    loop {
        payer.drain();
        payee.drain();
        let funding = payer.node().list_channels().iter().find_map(|c| c.funding_txo);
        if let Some(outpoint) = funding {
            let mempool: Vec<String> = chain.rpc("getrawmempool", &[]);
            if mempool.contains(&outpoint.txid.to_string()) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "{}: funding not broadcast", setup.name);
        std::thread::sleep(Duration::from_millis(10));
    }
    chain.mine(6, &chain.new_burn_address());
    sync_to_tip(chain, &[payer, payee]);
    let deadline = Instant::now() + WAIT;
    while !(payer.node().list_channels().iter().any(|c| c.is_usable)
        && payee.node().list_channels().iter().any(|c| c.is_usable))
    {
        payer.drain();
        payee.drain();
        assert!(Instant::now() < deadline, "{}: channel not usable", setup.name);
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed();
    payer.drain();
    payee.drain();
    elapsed
}

/// Sends `payments` payments of `mode` from the setup's payer to its payee, `in_flight` at
/// once, and returns once all of them succeeded.
fn run_phase(setup: &Setup, rt: &tokio::runtime::Runtime, mode: Mode, payments: usize, in_flight: usize) -> Phase {
    let (payer, payee) = (&setup.payer, &setup.payee);
    let payee_id = payee.node().node_id();
    let description = Bolt11InvoiceDescription::Direct(Description::new("anya bench".to_owned()).expect("description"));
    let flow = Flow::default();
    let send = || -> Result<PaymentId, String> {
        match mode {
            Mode::Keysend => payer.keysend(payee_id),
            Mode::Invoice => {
                let invoice = payee
                    .node()
                    .bolt11_payment()
                    .receive(PAY_MSAT, &description, 3600)
                    .map_err(|e| format!("invoice: {e}"))?;
                payer.pay(&invoice)
            }
        }
    };
    let sender = || loop {
        {
            let mut s = flow.lock();
            while !s.done && (s.permits == 0 || s.queued == 0) {
                s = flow.wake.wait(s).expect("no sender panicked");
            }
            if s.done {
                return;
            }
            s.permits -= 1;
            s.queued -= 1;
        }
        if let Err(e) = send() {
            // Back off, so that a send refused until a payment completes does not spin.
            std::thread::sleep(Duration::from_millis(20));
            let mut s = flow.lock();
            s.permits += 1;
            s.queued += 1;
            s.send_errors += 1;
            s.last_error = Some(e);
            // A send that fails every time would loop forever.
            if s.send_errors > payments {
                s.done = true;
            }
            flow.wake.notify_all();
        }
    };
    let mut successes = Vec::with_capacity(payments);
    let start = Instant::now();
    {
        let mut s = flow.lock();
        s.permits = in_flight;
        s.queued = payments;
    }
    std::thread::scope(|scope| {
        for _ in 0..in_flight {
            scope.spawn(sender);
        }
        let mut last_event = Instant::now();
        loop {
            let Some(event) = payer.next_event(rt, Duration::from_secs(1)) else {
                let mut s = flow.lock();
                let given_up = s.done && s.succeeded < payments;
                if given_up || last_event.elapsed() > WAIT {
                    s.done = true;
                    flow.wake.notify_all();
                    panic!(
                        "{}: {} ({} of {payments} payments succeeded, {} sends failed, the last with {:?})",
                        setup.name,
                        if given_up {
                            "too many sends failed"
                        } else {
                            "no payer event for 2 minutes"
                        },
                        s.succeeded,
                        s.send_errors,
                        s.last_error
                    );
                }
                continue;
            };
            last_event = Instant::now();
            let mut s = flow.lock();
            match event {
                Event::PaymentSuccessful { .. } => {
                    successes.push(Instant::now());
                    s.succeeded += 1;
                    s.permits += 1;
                    s.done = s.succeeded == payments;
                }
                Event::PaymentFailed { .. } => {
                    s.failed += 1;
                    s.permits += 1;
                    s.queued += 1;
                }
                _ => {}
            }
            let done = s.done;
            drop(s);
            flow.wake.notify_all();
            payer.handled();
            if done {
                break;
            }
        }
    });
    let elapsed = start.elapsed();
    let mut gaps: Vec<Duration> = std::iter::once(start)
        .chain(successes.iter().copied())
        .zip(successes.iter())
        .map(|(a, b)| b.duration_since(a))
        .collect();
    gaps.sort();
    let s = flow.lock();
    assert!(
        s.succeeded == payments,
        "{}: {} sends failed, the last with {:?}",
        setup.name,
        s.send_errors,
        s.last_error
    );
    Phase {
        mode,
        in_flight,
        payments,
        elapsed,
        failed: s.failed,
        send_errors: s.send_errors,
        gaps,
    }
}

/// Drains a payee's events on a thread of its own until `stop`.
fn drain_until(peer: &Peer, stop: &AtomicBool) {
    let rt = waiter();
    while !stop.load(Ordering::Relaxed) {
        if peer.next_event(&rt, Duration::from_millis(100)).is_some() {
            peer.handled();
        }
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn postgres_store(url: &str, tag: &str) -> Arc<dyn KvStore> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .subsec_nanos();
    let mut options = PostgresOptions::default();
    options.schema = format!("ln_bench_{tag}_{}_{nanos}", std::process::id());
    Arc::new(PostgresStore::open(url, options).expect("postgres"))
}

fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn KvStore> {
    Arc::new(SqliteStore::open(dir.path().join("node.db"), SqliteOptions::default()).expect("sqlite"))
}

fn main() {
    let Some(chain) = Bitcoind::start() else {
        // `Bitcoind::start` printed `skipped: BITCOIND_EXE unset (…)`.
        return;
    };
    let payments = env_usize("ANYA_LN_PAYMENTS", 200).max(1);
    let in_flight = env_usize("ANYA_LN_IN_FLIGHT", 8).max(1);
    assert!(
        in_flight <= MAX_HTLCS,
        "ANYA_LN_IN_FLIGHT={in_flight}: LDK accepts at most {MAX_HTLCS} HTLCs at once"
    );
    let file_log = std::env::var_os("ANYA_LN_LDK_FILE_LOG").is_some();
    let widths: Vec<usize> = if in_flight == 1 { vec![1] } else { vec![in_flight, 1] };
    // Every payment moves PAY_MSAT to the payee; keep a fifth of the channel spare for the
    // reserve and fees, and the in-flight value under LDK's 10 % of the channel.
    let total_msat = (2 * (WARM_UP + payments) * widths.len()) as u64 * PAY_MSAT;
    let channel_sats = CHANNEL_SATS
        .max(total_msat / 1000 * 5 / 4)
        .max(in_flight as u64 * PAY_MSAT / 1000 * 11);

    // `ANYA_LN_SETUPS` picks setups (`ldk`, `sqlite`, `postgres`, comma-separated), to look
    // at one alone (under strace, say); default all.
    let wanted = std::env::var("ANYA_LN_SETUPS").unwrap_or_else(|_| "ldk,sqlite,postgres".to_owned());
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
    let mut setups = Vec::new();
    if wanted.contains(&"ldk") {
        setups.push(Setup::new(
            BASELINE,
            Peer::ldk("ldk-payer", &chain, file_log),
            Peer::ldk("ldk-payee", &chain, file_log),
        ));
    }
    if wanted.contains(&"sqlite") {
        let (a, b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let (sa, sb) = (sqlite_store(&a), sqlite_store(&b));
        setups.push(Setup::new(
            "anya, SQLite",
            Peer::anya("anya-payer", &chain, sa, a),
            Peer::anya("anya-payee", &chain, sb, b),
        ));
    }
    if wanted.contains(&"postgres") {
        match std::env::var("ANYA_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => setups.push(Setup::new(
                "anya, PostgreSQL",
                Peer::anya(
                    "pg-payer",
                    &chain,
                    postgres_store(&url, "payer"),
                    tempfile::tempdir().expect("dir"),
                ),
                Peer::anya(
                    "pg-payee",
                    &chain,
                    postgres_store(&url, "payee"),
                    tempfile::tempdir().expect("dir"),
                ),
            )),
            _ => eprintln!("ln_payments: ANYA_TEST_POSTGRES_URL unset (source .ci/postgres.sh); PostgreSQL skipped"),
        }
    }
    println!(
        "ln_payments: {} setups, {payments} payments of {} sat per phase, {in_flight} in flight (and 1), channel {channel_sats} sat{}",
        setups.len(),
        PAY_MSAT / 1000,
        if file_log { ", ldk-node logging to its file" } else { "" }
    );

    // Fund every node with a coinbase, then mature them: the payer funds the channel; the
    // payee needs ldk-node's on-chain reserve (25,000 sat) to accept an anchor channel, without
    // which the open falls back to a legacy channel, whose 1,000-sat HTLCs LDK counts as dust
    // and caps at a few in flight.
    let all: Vec<&Peer> = setups.iter().flat_map(|s| [&s.payer, &s.payee]).collect();
    for peer in &all {
        let address = peer.node().onchain_payment().new_address().expect("address");
        chain.mine(1, &address);
    }
    chain.mine(100, &chain.new_burn_address());
    sync_to_tip(&chain, &all);
    for peer in &all {
        wait_until("funded", || {
            peer.node().list_balances().spendable_onchain_balance_sats > channel_sats
        });
    }
    for setup in &mut setups {
        let open = open_channel(&chain, setup, channel_sats);
        println!("{}: open to usable {:.2} s", setup.name, open.as_secs_f64());
        setup.open = Some(open);
    }

    let stop = AtomicBool::new(false);
    let rt = waiter();
    let mut results: Vec<(usize, Phase)> = Vec::new();
    std::thread::scope(|scope| {
        // Stops the payee threads also when a phase panics, so that the scope can end.
        let _stop = StopOnDrop(&stop);
        for setup in &setups {
            let stop = &stop;
            scope.spawn(move || drain_until(&setup.payee, stop));
        }
        for setup in &setups {
            for mode in [Mode::Keysend, Mode::Invoice] {
                run_phase(setup, &rt, mode, WARM_UP, in_flight);
            }
        }
        for &width in &widths {
            for mode in [Mode::Keysend, Mode::Invoice] {
                for (i, setup) in setups.iter().enumerate() {
                    let phase = run_phase(setup, &rt, mode, payments, width);
                    println!(
                        "{}: {}, {} in flight: {} payments in {:.2} s, {:.1}/s; between successes median {:.1} ms, 90th percentile {:.1} ms, longest {:.1} ms ({} failed and sent again, {} send errors)",
                        setup.name,
                        mode.name(),
                        width,
                        payments,
                        phase.elapsed.as_secs_f64(),
                        phase.per_second(),
                        phase.gap(0.5).as_secs_f64() * 1000.0,
                        phase.gap(0.9).as_secs_f64() * 1000.0,
                        phase.gap(1.0).as_secs_f64() * 1000.0,
                        phase.failed,
                        phase.send_errors
                    );
                    results.push((i, phase));
                }
            }
        }
    });
    for setup in &setups {
        setup.payer.stop();
        setup.payee.stop();
    }
    for (i, phase) in results {
        setups[i].phases.push(phase);
    }
    report(&setups, &widths);
    // `ANYA_LN_ALONE=0` skips the guard and store timings (to count a run's syscalls per
    // payment, say).
    if std::env::var("ANYA_LN_ALONE").as_deref() != Ok("0") {
        guard_report(&setups, payments, in_flight);
        store_report(&setups, payments, in_flight);
    }
}

/// `writes` LDK record writes of 1 KiB (fresh bytes each, under distinct keys) through
/// `KVStoreSync::write`, the call LDK makes, from `threads` threads at once. Returns the wall
/// time per write.
fn store_cost(store: &(dyn KVStoreSync + Sync), writes: usize, threads: usize) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for i in (t..writes).step_by(threads) {
                    let mut value = vec![0u8; 1024];
                    rand::thread_rng().fill_bytes(&mut value);
                    store.write("bench", "", &format!("k{t}x{i}"), value).expect("write");
                }
            });
        }
    });
    start.elapsed() / u32::try_from(writes).expect("a bench-sized count")
}

/// Times each store of the run alone, as LDK writes to it: ldk-node's `SqliteStore` (what
/// `Builder::build` makes) and anya's `LdkStore` on each anya backend.
fn store_report(setups: &[Setup], writes: usize, in_flight: usize) {
    let mut lines = Vec::new();
    for setup in setups {
        // A fresh store for each count of callers.
        let cost = |threads: usize| {
            let dir = tempfile::tempdir().expect("dir");
            let ns = || Namespace::new("anya/ln/node").expect("namespace");
            match setup.name {
                BASELINE => {
                    let store = LdkSqliteStore::new(dir.path().to_owned(), None, None).expect("ldk-node sqlite");
                    store_cost(&store, writes, threads)
                }
                "anya, SQLite" => store_cost(&LdkStore::new(sqlite_store(&dir), ns()), writes, threads),
                _ => {
                    let url = std::env::var("ANYA_TEST_POSTGRES_URL").expect("a PostgreSQL setup ran");
                    store_cost(&LdkStore::new(postgres_store(&url, "store"), ns()), writes, threads)
                }
            }
        };
        lines.push(alone_row(setup.name, cost(1), cost(in_flight)));
    }
    println!();
    println!("the stores alone: wall time per durable 1 KiB LDK record write, {writes} writes");
    println!();
    println!("| store | 1 writer | {in_flight} writers |");
    println!("|---|---|---|");
    for line in lines {
        println!("{line}");
    }
}

/// A table row of the timings alone: the setup, then the time per operation with one caller and
/// with several.
fn alone_row(name: &str, one: Duration, many: Duration) -> String {
    format!(
        "| {name} | {:.2} ms | {:.2} ms |",
        one.as_secs_f64() * 1000.0,
        many.as_secs_f64() * 1000.0
    )
}

/// Times anya's guard alone on each anya backend of the run, sequentially and with
/// `in_flight` callers, and prints it beside the payment times.
fn guard_report(setups: &[Setup], payments: usize, in_flight: usize) {
    let mut lines = Vec::new();
    for setup in setups.iter().filter(|s| s.name != BASELINE) {
        // A fresh store and keystore for each count of callers.
        let cost = |threads: usize| {
            let dir = tempfile::tempdir().expect("dir");
            let store = match setup.name {
                "anya, SQLite" => sqlite_store(&dir),
                _ => postgres_store(
                    &std::env::var("ANYA_TEST_POSTGRES_URL").expect("a PostgreSQL setup ran"),
                    "guard",
                ),
            };
            guard_cost(&store, dir.path(), payments, threads)
        };
        lines.push(alone_row(setup.name, cost(1), cost(in_flight)));
    }
    if lines.is_empty() {
        return;
    }
    println!();
    println!("anya's guard alone (policy reservation + audit record), wall time per payment, {payments} approvals");
    println!();
    println!("| setup | 1 caller | {in_flight} callers |");
    println!("|---|---|---|");
    for line in lines {
        println!("{line}");
    }
}

fn report(setups: &[Setup], widths: &[usize]) {
    let columns: Vec<(Mode, usize)> = widths
        .iter()
        .flat_map(|&w| [(Mode::Keysend, w), (Mode::Invoice, w)])
        .collect();
    let rate = |setup: &Setup, (mode, w): (Mode, usize)| {
        setup
            .phases
            .iter()
            .find(|p| p.mode == mode && p.in_flight == w)
            .map(Phase::per_second)
    };
    let mut header = String::from("| setup | open to usable |");
    let mut rule = String::from("|---|---|");
    for (mode, w) in &columns {
        header.push_str(&format!(" {}, {w} in flight |", mode.name()));
        rule.push_str("---|");
    }
    println!();
    println!("payments per second");
    println!();
    println!("{header}");
    println!("{rule}");
    for setup in setups {
        let mut line = format!(
            "| {} | {:.2} s |",
            setup.name,
            setup.open.map_or(f64::NAN, |d| d.as_secs_f64())
        );
        for &column in &columns {
            match rate(setup, column) {
                Some(r) => line.push_str(&format!(" {r:.1}/s ({:.1} ms) |", 1000.0 / r)),
                None => line.push_str(" – |"),
            }
        }
        println!("{line}");
    }
    let Some(base) = setups.iter().find(|s| s.name == BASELINE) else {
        return;
    };
    println!();
    println!("anya / ldk-node, payments per second (goal >= 1.0)");
    println!();
    println!("{header}");
    println!("{rule}");
    for setup in setups.iter().filter(|s| s.name != BASELINE) {
        let open = match (setup.open, base.open) {
            (Some(a), Some(b)) => format!("{:.2}x (time)", a.as_secs_f64() / b.as_secs_f64()),
            _ => "–".to_owned(),
        };
        let mut line = format!("| {} / {} | {open} |", setup.name, base.name);
        for &column in &columns {
            match (rate(setup, column), rate(base, column)) {
                (Some(a), Some(b)) => line.push_str(&format!(" **{:.2}x** |", a / b)),
                _ => line.push_str(" – |"),
            }
        }
        println!("{line}");
    }
}
