//! SIGKILL during a stream of payments (`BITCOIND_EXE`, required in CI).
//!
//! Bob opens a channel to Alice on a real regtest bitcoind; then a separate process runs Bob's
//! node on the same store and keystore and streams keysend payments to Alice until this test
//! kills it with SIGKILL, mid-stream. Bob is then rebuilt on the same store and:
//!
//! - the channel is either open and usable on both sides, or force-closed by LDK for the one
//!   reason ldk-node 0.7 leaves open (a channel manager older than a monitor:
//!   `ClosureReason::OutdatedChannelManager`, ADR 0007); any other closure fails;
//! - every payment Bob's store knows is completed or failed, except one LDK never heard of
//!   (ldk-node's record written, LDK's manager record lost with the kill): it has no HTLC in
//!   the channel and Alice never saw it;
//! - Bob counts as completed only what Alice received, and Alice received nothing Bob counts
//!   as failed (whose policy reservation was given back);
//! - with the channel open: exactly what Alice received, both sides' balances moved by it to
//!   the satoshi, and the channel carries a new payment;
//! - force-closed: the commitment Bob's monitor broadcast pays Alice what she received (settled
//!   in her output, or still in an HTLC output), and once it confirms each node counts its own
//!   output as its own.
//!
//! Bob's store is SQLite, then PostgreSQL (`ANYA_TEST_POSTGRES_URL`, required in CI; the
//! killed process's connection dies with it). The test binary is its own child: run with
//! `LN_KILL_CHILD` set, it is Bob's payer process. (`harness = false`: `main` is the test.)

mod common;
#[path = "common/ln.rs"]
mod ln;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_layer2::lightning::ldk_node::lightning::events::ClosureReason;
use anya_layer2::lightning::ldk_node::lightning::ln::channelmanager::PaymentId;
use anya_layer2::lightning::ldk_node::payment::{PaymentDirection, PaymentKind, PaymentStatus};
use anya_layer2::lightning::ldk_node::{Event, LightningBalance};
use anya_storage::{KvStore, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::PublicKey;
use ln::LnParty;

const CHANNEL_SATS: u64 = 1_000_000;
/// Each payment: small enough that many fit in flight at once.
const PAYMENT_MSAT: u64 = 1_000_000;
/// The child is killed once it has sent this many payments.
const KILL_AFTER: usize = 40;
/// What the child is told to send at most (it is killed long before).
const STREAM: usize = 10_000;

fn sqlite(dir: &Path) -> Arc<dyn KvStore> {
    Arc::new(SqliteStore::open(dir.join("node.db"), SqliteOptions::default()).expect("sqlite"))
}

/// Where Bob's store is: a SQLite file in his directory, or a PostgreSQL schema.
#[derive(Debug, Clone)]
enum BobStore {
    Sqlite,
    Postgres { url: String, schema: String },
}

impl BobStore {
    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// A new handle on the store (a new connection for PostgreSQL).
    fn open(&self, dir: &Path) -> Arc<dyn KvStore> {
        match self {
            Self::Sqlite => sqlite(dir),
            Self::Postgres { url, schema } => {
                let mut options = PostgresOptions::default();
                options.schema = schema.clone();
                Arc::new(PostgresStore::open(url, options).expect("postgres"))
            }
        }
    }

    /// One line for the child: `sqlite`, or `postgres <schema> <url>`.
    fn line(&self) -> String {
        match self {
            Self::Sqlite => "sqlite".into(),
            Self::Postgres { url, schema } => format!("postgres {schema} {url}"),
        }
    }

    fn parse(line: &str) -> Self {
        match line.split_once(' ') {
            None => Self::Sqlite,
            Some((_, rest)) => {
                let (schema, url) = rest.split_once(' ').expect("postgres <schema> <url>");
                Self::Postgres {
                    url: url.into(),
                    schema: schema.into(),
                }
            }
        }
    }
}

fn main() {
    if let Some(dir) = std::env::var_os("LN_KILL_CHILD") {
        child(PathBuf::from(dir));
        return;
    }
    let Some(chain) = Bitcoind::start() else {
        return;
    };
    let mut stores = vec![BobStore::Sqlite];
    if let Some(url) = anya_testkit::require_env("ANYA_TEST_POSTGRES_URL", ".ci/run starts PostgreSQL") {
        let schema = format!("ln_kill_{}", std::process::id());
        stores.push(BobStore::Postgres { url, schema });
    }
    for store in &stores {
        killed_mid_stream_loses_nothing(&chain, store);
        #[allow(clippy::print_stdout, reason = "the result line of a harness-less test")]
        {
            println!("test killed_mid_stream_loses_nothing::{} ... ok", store.name());
        }
    }
}

/// Bob's payer process: opens the party in `dir` (its store, keystore and the peer written
/// there by the parent), then sends keysend payments to the peer, printing `sent <id>` after
/// each send returns and `done <id>`/`failed <id>` as outcomes arrive, until killed.
fn child(dir: PathBuf) {
    let chain = ChildChain::read(&dir);
    let store = chain.store.open(&dir);
    let bob = LnParty::reopen("bob", &chain.rpc, dir.join("party"), store, chain.listen);
    bob.node
        .node()
        .connect(chain.peer, chain.peer_address.into(), true)
        .expect("connect");
    bob.wait_until("usable", |n| n.channels().iter().any(|c| c.is_usable));
    let mut out = std::io::stdout().lock();
    let mut report = |line: String| {
        writeln!(out, "{line}").expect("stdout");
        out.flush().expect("stdout");
    };
    report("ready".into());
    for _ in 0..STREAM {
        match bob.node.pay_keysend(chain.peer, PAYMENT_MSAT, None) {
            Ok(id) => report(format!("sent {}", id.0.to_lower_hex_string())),
            Err(e) => report(format!("refused {e}")),
        }
        while let Some(event) = bob.node.next_event() {
            match event {
                Event::PaymentSuccessful { payment_id, .. } => {
                    report(format!(
                        "done {}",
                        payment_id.map(|p| p.0.to_lower_hex_string()).unwrap_or_default()
                    ));
                }
                Event::PaymentFailed { payment_id, .. } => {
                    report(format!(
                        "failed {}",
                        payment_id.map(|p| p.0.to_lower_hex_string()).unwrap_or_default()
                    ));
                }
                _ => {}
            }
            bob.node.event_handled().expect("handled");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the child needs to know, written by the parent into the party's directory.
struct ChildChain {
    rpc: ln::ChainRpc,
    listen: std::net::SocketAddr,
    peer: PublicKey,
    peer_address: std::net::SocketAddr,
    store: BobStore,
}

impl ChildChain {
    fn write(dir: &Path, chain: &Bitcoind, listen: std::net::SocketAddr, peer: &LnParty, store: &BobStore) {
        let text = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n",
            chain.rpc_port(),
            chain.cookie_file().display(),
            listen,
            peer.node.node_id(),
            peer.address(),
            store.line()
        );
        std::fs::write(dir.join("child.txt"), text).expect("write");
    }

    fn read(dir: &Path) -> Self {
        let text = std::fs::read_to_string(dir.join("child.txt")).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        Self {
            rpc: ln::ChainRpc {
                port: lines[0].parse().expect("port"),
                cookie: PathBuf::from(lines[1]),
            },
            listen: lines[2].parse().expect("listen"),
            peer: lines[3].parse().expect("peer"),
            peer_address: lines[4].parse().expect("peer address"),
            store: BobStore::parse(lines[5]),
        }
    }
}

fn killed_mid_stream_loses_nothing(chain: &Bitcoind, store: &BobStore) {
    let alice_dir = tempfile::tempdir().expect("dir");
    let alice_store = sqlite(alice_dir.path());
    let alice = LnParty::new("alice", chain, alice_dir, alice_store);
    // Bob's directory outlives his party: the payer process and the restart open it again.
    let bob_dir = tempfile::tempdir().expect("dir");
    let party_dir = bob_dir.path().join("party");
    std::fs::create_dir(&party_dir).expect("dir");
    let bob = LnParty::new_at("bob", chain, party_dir.clone(), store.open(bob_dir.path()));
    let bob_listen = bob.address();
    // Bob funds a channel to Alice, which is usable on both sides.
    let address = bob.node.node().onchain_payment().new_address().expect("address");
    chain.mine(1, &address);
    LnParty::mine_and_sync(chain, 100, &[&alice, &bob]);
    bob.wait_until("funded", |n| {
        n.node().list_balances().spendable_onchain_balance_sats > CHANNEL_SATS
    });
    bob.node
        .node()
        .open_channel(alice.node.node_id(), alice.address().into(), CHANNEL_SATS, None, None)
        .expect("open");
    bob.wait_event("ChannelPending", |e| matches!(e, Event::ChannelPending { .. }));
    alice.wait_event("ChannelPending", |e| matches!(e, Event::ChannelPending { .. }));
    bob.wait_funding_broadcast(chain);
    LnParty::mine_and_sync(chain, 6, &[&alice, &bob]);
    bob.wait_event("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }));
    alice.wait_event("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }));
    let bob_before = bob.node.node().list_balances().total_lightning_balance_sats;
    let funding = bob.node.channels()[0].funding_txo.expect("funded");
    let root = bob.root.clone();
    // Bob's node moves to the child process: this one lets go of the store.
    bob.close();
    ChildChain::write(bob_dir.path(), chain, bob_listen, &alice, store);

    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .env("LN_KILL_CHILD", bob_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the payer");
    let lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut sent = BTreeSet::new();
    let mut outcomes_seen = 0;
    let deadline = Instant::now() + ln::WAIT * 2;
    for line in lines.lines() {
        let line = line.expect("child output");
        if let Some(id) = line.strip_prefix("sent ") {
            sent.insert(id.to_owned());
        } else if line.starts_with("done ") || line.starts_with("failed ") {
            outcomes_seen += 1;
        }
        // Killed while payments are in flight: some sent, some settled, more under way.
        if sent.len() >= KILL_AFTER && outcomes_seen > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the payer stalled: {line}");
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(sent.len() >= KILL_AFTER, "the payer stopped early: {} sent", sent.len());

    // Bob again, on the same store and keystore.
    let bob = LnParty::reopen(
        "bob",
        &ln::ChainRpc::of(chain),
        party_dir,
        store.open(bob_dir.path()),
        bob_listen,
    );
    assert_eq!(bob.root, root);
    bob.node
        .node()
        .connect(alice.node.node_id(), alice.address().into(), true)
        .expect("reconnect");
    // LDK persists a channel monitor update before the message that depends on it leaves,
    // and the channel manager afterwards, from ldk-node's background task. A kill between
    // the two leaves the manager behind the monitor; LDK then force-closes the channel from
    // the monitor's state on restart (ClosureReason::OutdatedChannelManager: no funds lost,
    // the channel is). Any other closure fails the test.
    let deadline = Instant::now() + ln::WAIT;
    let closed = loop {
        if let Some(event) = bob.node.next_event_timeout(Duration::from_millis(100)) {
            bob.node.event_handled().expect("handled");
            if let Event::ChannelClosed { reason, .. } = event {
                assert_eq!(
                    reason,
                    Some(ClosureReason::OutdatedChannelManager),
                    "closed, and not for a stale manager"
                );
                break true;
            }
        }
        if bob.node.channels().iter().any(|c| c.is_usable) {
            break false;
        }
        assert!(Instant::now() < deadline, "Bob's channel is neither usable nor closed");
    };
    // Every payment Bob's store knows settles, unless a force close left its HTLC to the
    // chain, or LDK never heard of it: ldk-node records a payment as pending once LDK took
    // it, but LDK's own record of it is in the channel manager, written later; killed in
    // between, the restarted LDK knows nothing of a payment that never left (no HTLC, no
    // monitor update), and ldk-node's record stays pending. Those are told apart by waiting
    // out LDK's retry timeout (10 s): a payment LDK knows has an HTLC in the channel or has
    // settled by then.
    let restarted = Instant::now();
    let deadline = restarted + ln::WAIT;
    let in_channel = |hash: &[u8; 32]| {
        bob.node
            .node()
            .list_balances()
            .lightning_balances
            .iter()
            .any(|b| match b {
                LightningBalance::MaybeTimeoutClaimableHTLC { payment_hash, .. }
                | LightningBalance::MaybePreimageClaimableHTLC { payment_hash, .. }
                | LightningBalance::ContentiousClaimable { payment_hash, .. } => payment_hash.0 == *hash,
                _ => false,
            })
    };
    let (outbound, orphaned) = loop {
        while bob.node.next_event_timeout(Duration::from_millis(50)).is_some() {
            bob.node.event_handled().expect("handled");
        }
        let outbound = bob.node.node().list_payments_with_filter(|p| {
            // ldk-node lists on-chain transactions too (the channel's funding).
            p.direction == PaymentDirection::Outbound && !matches!(p.kind, PaymentKind::Onchain { .. })
        });
        let pending: Vec<_> = outbound.iter().filter(|p| p.status == PaymentStatus::Pending).collect();
        let orphaned: BTreeSet<[u8; 32]> = pending
            .iter()
            .filter(|p| !in_channel(&p.id.0) && alice.node.node().payment(&p.id).is_none())
            .map(|p| p.id.0)
            .collect();
        let waited = restarted.elapsed() > Duration::from_secs(12);
        if closed || (waited && orphaned.len() == pending.len()) {
            break (outbound, orphaned);
        }
        assert!(Instant::now() < deadline, "payments still pending: {pending:?}");
    };
    for id in &sent {
        assert!(
            outbound.iter().any(|p| p.id.0.to_lower_hex_string() == *id),
            "payment {id} was sent but Bob's store does not know it"
        );
    }
    let with_status = |status: PaymentStatus| -> BTreeSet<[u8; 32]> {
        outbound.iter().filter(|p| p.status == status).map(|p| p.id.0).collect()
    };
    let (completed, failed) = (
        with_status(PaymentStatus::Succeeded),
        with_status(PaymentStatus::Failed),
    );
    let received = || -> BTreeSet<[u8; 32]> {
        alice
            .node
            .node()
            .list_payments_with_filter(|p| {
                p.direction == PaymentDirection::Inbound && p.status == PaymentStatus::Succeeded
            })
            .iter()
            .map(|p| p.id.0)
            .collect()
    };
    assert!(!completed.is_empty(), "no payment completed");
    // Alice records a payment as received once her claim is durable, which may come after
    // Bob learnt the preimage.
    let deadline = Instant::now() + ln::WAIT;
    while !completed.is_subset(&received()) {
        let missing: Vec<_> = completed
            .difference(&received())
            .map(|id| {
                (
                    id.to_lower_hex_string(),
                    alice.node.node().payment(&PaymentId(*id)),
                    bob.node.node().payment(&PaymentId(*id)),
                )
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "completed for Bob, not received by Alice: {missing:?} (closed: {closed}; Bob completed {}, Alice received {}, Alice's inbound {:?})",
            completed.len(),
            received().len(),
            alice.node.node().list_payments().iter().map(|p| (p.status, p.direction)).collect::<Vec<_>>().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let received_now = received();
    assert!(
        failed.is_disjoint(&received_now),
        "Alice received a payment Bob counts as failed (its policy reservation was given back)"
    );
    if !closed {
        assert_eq!(
            completed, received_now,
            "what Bob counts as paid is what Alice received"
        );
        // Still one open channel on each side, and the balances moved by exactly what was
        // paid.
        assert_eq!(bob.node.channels().len(), 1);
        assert_eq!(alice.node.channels().len(), 1);
        for p in [&alice, &bob] {
            p.wait_until("no HTLC left", |n| {
                n.node().list_balances().lightning_balances.iter().all(|b| {
                    matches!(
                        b,
                        LightningBalance::ClaimableOnChannelClose {
                            outbound_payment_htlc_rounded_msat: 0,
                            inbound_htlc_rounded_msat: 0,
                            ..
                        }
                    )
                })
            });
        }
        let paid_sats = completed.len() as u64 * PAYMENT_MSAT / 1000;
        assert_eq!(
            alice.node.node().list_balances().total_lightning_balance_sats,
            paid_sats,
            "Alice holds what she received"
        );
        assert_eq!(
            bob_before - bob.node.node().list_balances().total_lightning_balance_sats,
            paid_sats,
            "Bob's side went down by what he paid"
        );
        // And the channel still carries payments after the crash.
        let id = bob
            .node
            .pay_keysend(alice.node.node_id(), PAYMENT_MSAT, None)
            .expect("send");
        bob.wait_event(
            "PaymentSuccessful",
            |e| matches!(e, Event::PaymentSuccessful { payment_id: Some(p), .. } if *p == id),
        );
    } else {
        // Force-closed from Bob's monitor, with the funds where the channel had them. Bob's
        // commitment pays Alice, in one output, what she received and was settled; a payment
        // she received whose HTLC was still in the channel is an HTLC output, hers with the
        // preimage. Bob's delayed output (the largest), the commitment's fee and, on an
        // anchor channel, two 330-sat anchors make up the rest.
        let commitment = ln::mempool_spender(chain, funding);
        let outputs = ln::output_sats(&commitment);
        let htlc_sats = PAYMENT_MSAT / 1000;
        let to_local = *outputs.iter().max().expect("outputs");
        let htlcs: u64 = outputs.iter().filter(|v| **v == htlc_sats).sum();
        let to_remote: u64 = outputs
            .iter()
            .filter(|v| ![330, htlc_sats, to_local].contains(*v))
            .sum();
        let anchors = outputs.iter().filter(|v| **v == 330).count();
        assert!(anchors == 0 || anchors == 2, "anchors: {outputs:?}");
        let deadline = Instant::now() + ln::WAIT;
        loop {
            // Alice records a claim a little after it settles.
            let received_sats = received().len() as u64 * htlc_sats;
            assert!(
                received_sats <= to_remote + htlcs,
                "Alice received {received_sats} sat, more than the commitment {outputs:?} gives her"
            );
            if to_remote <= received_sats {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the commitment {outputs:?} pays Alice more than the {received_sats} sat she received"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Once it confirms, Bob's restarted node counts its delayed output as his, and Alice's
        // node her output as hers.
        LnParty::mine_and_sync(chain, 1, &[&alice, &bob]);
        for (party, sats) in [(&bob, to_local), (&alice, to_remote)] {
            if sats == 0 {
                continue;
            }
            let deadline = Instant::now() + ln::WAIT;
            loop {
                let balances = party.node.node().list_balances().lightning_balances;
                if balances.iter().any(|b| {
                    matches!(b, LightningBalance::ClaimableAwaitingConfirmations { amount_satoshis, .. }
                        if *amount_satoshis == sats)
                }) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: its {sats} sat of the commitment {outputs:?} not counted: {balances:?}",
                    party.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    #[allow(clippy::print_stderr, reason = "what the kill caught, for the CI log")]
    {
        let pending = outbound.len() - completed.len() - failed.len();
        let (pending_note, channel) = if closed {
            (
                "their HTLCs left to the chain".to_owned(),
                "force-closed by LDK (stale channel manager)",
            )
        } else {
            (format!("{} never reached LDK's manager", orphaned.len()), "open")
        };
        eprintln!(
            "ln_kill ({}): {} sent before the kill, {} known to Bob: {} completed, {} failed, {pending} pending ({pending_note}); channel {channel}",
            store.name(),
            sent.len(),
            outbound.len(),
            completed.len(),
            failed.len(),
        );
    }
    bob.node.stop().expect("stop");
    alice.node.stop().expect("stop");
}
