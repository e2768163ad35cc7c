//! Two Lightning nodes, a channel and a payment, on a regtest bitcoind that the example starts
//! from `BITCOIND_EXE` (build one with `export BITCOIND_EXE=$(scripts/bitcoind)`).
//!
//! Each node is ldk-node on anya: its seed derived inside its own software HSM keystore (an
//! audited BIP85 derivation the root opted in to), every record of its channels and wallet in
//! its own SQLite store, its payments asked of anya's spending policy first. Alice funds her
//! on-chain wallet from coinbases, opens a channel to Bob, pays his BOLT11 invoice, and a
//! payment over her policy's per-payment limit is refused without anything being sent.
//!
//! `cargo run --release -p anya-examples --features lightning --example lightning`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_bitcoin::policy::{PolicyEngine, SpendPolicy};
use anya_core_types::{Label, SystemClock};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{
    HsmProvider, KdfParams, KeyPolicy, KeySpec, Operation, SecretString, SoftwareHsm, SoftwareOptions, Usage,
};
use anya_layer2::lightning::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use anya_layer2::lightning::ldk_node::Event;
use anya_layer2::lightning::{parse_invoice, BitcoindRpc, InvoiceSummary, LightningError, LightningNode, NodeOptions};
use anya_storage::{KvStore, Namespace, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::{Amount, Network};

type Error = Box<dyn std::error::Error>;

const WAIT: Duration = Duration::from_secs(60);

/// One party: a keystore, a store and a node on them.
struct Party {
    name: &'static str,
    hsm: Arc<dyn HsmProvider>,
    node: LightningNode,
    listen: std::net::SocketAddr,
}

fn party(name: &'static str, dir: &std::path::Path, chain: &Bitcoind) -> Result<Party, Error> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let store: Arc<dyn KvStore> = Arc::new(SqliteStore::open(dir.join("anya.db"), SqliteOptions::default())?);
    let options = SoftwareOptions::default()
        // Fast key stretching for a demo keystore; use the default for real ones.
        .with_kdf(KdfParams::insecure_for_tests())
        .with_anchor(Arc::new(FileAnchor::open(dir.join("anchor"))?));
    let hsm: Arc<dyn HsmProvider> = Arc::new(SoftwareHsm::create(
        Arc::clone(&store),
        &SecretString::from("an example passphrase"),
        options,
    )?);
    let root = Label::new("ln-root")?;
    hsm.generate_key(
        &root,
        KeySpec::Bip32Root,
        KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::DeriveNodeSeed),
    )?;
    let policy = PolicyEngine::new(
        Arc::clone(&store),
        Namespace::new("anya/ln/policy")?,
        Arc::new(SystemClock),
    );
    let listen = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let rpc = BitcoindRpc::from_cookie("127.0.0.1", chain.rpc_port(), &chain.cookie_file())?;
    let mut node_options = NodeOptions::new(Network::Regtest, dir.join("ldk"), rpc);
    node_options.listen = vec![listen];
    let node = LightningNode::build(
        Arc::clone(&hsm),
        &root,
        store,
        Namespace::new("anya/ln/node")?,
        policy,
        &node_options,
    )?;
    node.start()?;
    println!("{name}: node {} on {listen}", node.node_id());
    Ok(Party {
        name,
        hsm,
        node,
        listen,
    })
}

impl Party {
    /// Waits for the event `want` picks, handling the ones before it.
    fn wait(&self, what: &str, want: impl Fn(&Event) -> bool) -> Result<Event, Error> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .node
                .next_event_timeout(left)
                .ok_or_else(|| format!("{}: no {what} within {WAIT:?}", self.name))?;
            self.node.event_handled()?;
            if want(&event) {
                return Ok(event);
            }
        }
    }

    fn sync_to(&self, height: u32) -> Result<(), Error> {
        let deadline = Instant::now() + WAIT;
        self.node.node().sync_wallets()?;
        while self.node.node().status().current_best_block.height < height {
            if Instant::now() > deadline {
                return Err(format!("{}: not synced to {height}", self.name).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

fn mine(chain: &Bitcoind, blocks: u32, parties: &[&Party]) -> Result<(), Error> {
    chain.mine(blocks, &chain.new_burn_address());
    for p in parties {
        p.sync_to(chain.height())?;
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let Some(chain) = Bitcoind::start() else {
        return Err("set BITCOIND_EXE to a bitcoind binary (`export BITCOIND_EXE=$(scripts/bitcoind)`)".into());
    };
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let alice = party("alice", dir.path(), &chain)?;
    let bob = party("bob", dir.path(), &chain)?;

    // Alice's on-chain wallet (ldk-node's, on her seed and store) receives a coinbase.
    chain.mine(1, &alice.node.node().onchain_payment().new_address()?);
    mine(&chain, 100, &[&alice, &bob])?;
    let onchain = alice.node.node().list_balances().spendable_onchain_balance_sats;
    println!("alice: {} spendable on chain", Amount::from_sat(onchain));

    alice
        .node
        .node()
        .open_channel(bob.node.node_id(), bob.listen.into(), 1_000_000, None, None)?;
    alice.wait("ChannelPending", |e| matches!(e, Event::ChannelPending { .. }))?;
    // ldk-node broadcasts the funding transaction from a background task: mine once it is in
    // bitcoind's mempool.
    let deadline = Instant::now() + WAIT;
    while chain.rpc::<serde_json::Value>("getmempoolinfo", &[])["size"].as_u64() == Some(0) {
        if Instant::now() > deadline {
            return Err("the funding transaction never reached the mempool".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    mine(&chain, 6, &[&alice, &bob])?;
    alice.wait("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }))?;
    bob.wait("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }))?;
    println!("channel alice -> bob: 1,000,000 sat, ready after 6 blocks");

    let description = Bolt11InvoiceDescription::Direct(Description::new("coffee".into())?);
    let text = bob
        .node
        .node()
        .bolt11_payment()
        .receive(21_000_000, &description, 3600)?
        .to_string();
    // What a user would paste: parsed and checked before anything else.
    let invoice = parse_invoice(&text)?;
    let summary = InvoiceSummary::of(&invoice);
    println!(
        "bob's invoice: {} msat to {}",
        summary.amount_msat.unwrap_or(0),
        summary.payee
    );

    alice.node.policy().set_rules(&SpendPolicy {
        max_per_tx: Some(Amount::from_sat(10_000)),
        ..SpendPolicy::default()
    })?;
    match alice.node.pay_invoice(&invoice, None, None) {
        Err(LightningError::Policy(refusal)) => println!("refused by alice's policy, nothing sent: {refusal}"),
        other => return Err(format!("the policy should have refused: {other:?}").into()),
    }
    alice.node.policy().set_rules(&SpendPolicy {
        max_per_tx: Some(Amount::from_sat(50_000)),
        ..SpendPolicy::default()
    })?;
    let id = alice.node.pay_invoice(&invoice, None, None)?;
    alice.wait(
        "PaymentSuccessful",
        |e| matches!(e, Event::PaymentSuccessful { payment_id: Some(p), .. } if *p == id),
    )?;
    bob.wait("PaymentReceived", |e| matches!(e, Event::PaymentReceived { .. }))?;
    let received = bob.node.node().list_balances().total_lightning_balance_sats;
    println!("paid: bob holds {} in the channel", Amount::from_sat(received));
    if received != 21_000 {
        return Err(format!("bob should hold 21,000 sat, holds {received}").into());
    }

    for p in [&alice, &bob] {
        let records = p.hsm.audit_records(0, 10_000)?;
        let seeds = records
            .iter()
            .filter(|r| r.operation == Operation::DeriveNodeSeed)
            .count();
        let decisions = records.iter().filter(|r| r.operation == Operation::Decision).count();
        println!(
            "{}: audit chain holds {seeds} node seed derivation(s) and {decisions} policy decision(s)",
            p.name
        );
        p.node.stop()?;
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
