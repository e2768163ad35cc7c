//! Lightning test nodes: an ldk-node node per party on its own software HSM (a BIP32 root that
//! allows node seeds) and its own anya store, chained to one regtest bitcoind.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_bitcoin::policy::PolicyEngine;
use anya_core_types::SystemClock;
use anya_hsm::{HsmProvider, KeyId, KeyPolicy, KeySpec, SecretString, SoftwareHsm, Usage};
use anya_layer2::lightning::ldk_node::Event;
use anya_layer2::lightning::{BitcoindRpc, LightningNode, NodeOptions};
use anya_storage::{KvStore, Namespace};
use anya_testkit::Bitcoind;
use bitcoin::Network;

use crate::common::{hsm_options, PASS};

/// How long a test waits for an event or a state.
pub const WAIT: Duration = Duration::from_secs(60);

/// The anya namespace of every test node's records.
pub const LN_NS: &str = "anya/ln/node";
/// The namespace of every test node's spending policy.
pub const POLICY_NS: &str = "anya/ln/policy";

/// A party: its HSM and store (which outlive its node, so that a node can be rebuilt on them)
/// and its running node.
pub struct LnParty {
    pub name: &'static str,
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn KvStore>,
    pub hsm: Arc<dyn HsmProvider>,
    pub root: KeyId,
    pub options: NodeOptions,
    pub node: LightningNode,
}

fn free_loopback() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The node options of a party on `chain`, listening on a free loopback port.
pub fn options(chain: &Bitcoind, work_dir: std::path::PathBuf) -> NodeOptions {
    let rpc = BitcoindRpc::from_cookie("127.0.0.1", chain.rpc_port(), &chain.cookie_file()).expect("cookie");
    let mut options = NodeOptions::new(Network::Regtest, work_dir, rpc);
    options.listen = vec![free_loopback()];
    options
}

impl LnParty {
    /// A new party with a fresh keystore on `store` (kept in `dir`), its node built and started.
    pub fn new(name: &'static str, chain: &Bitcoind, dir: tempfile::TempDir, store: Arc<dyn KvStore>) -> Self {
        let hsm: Arc<dyn HsmProvider> = Arc::new(
            SoftwareHsm::create(Arc::clone(&store), &SecretString::from(PASS), hsm_options(dir.path()))
                .expect("keystore"),
        );
        let root = KeyId::new("ln-root").expect("label");
        let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::DeriveNodeSeed);
        hsm.generate_key(&root, KeySpec::Bip32Root, policy).expect("root");
        let options = options(chain, dir.path().join("work"));
        let node = Self::build(&hsm, &root, &store, &options);
        node.start().expect("start");
        Self {
            name,
            dir,
            store,
            hsm,
            root,
            options,
            node,
        }
    }

    fn build(
        hsm: &Arc<dyn HsmProvider>,
        root: &KeyId,
        store: &Arc<dyn KvStore>,
        options: &NodeOptions,
    ) -> LightningNode {
        let ns = Namespace::new(LN_NS).expect("namespace");
        let policy = PolicyEngine::new(
            Arc::clone(store),
            Namespace::new(POLICY_NS).expect("namespace"),
            Arc::new(SystemClock),
        );
        LightningNode::build(Arc::clone(hsm), root, Arc::clone(store), ns, policy, options).expect("build the node")
    }

    /// Stops the node and builds and starts it again on the same HSM root and store.
    pub fn restart(&mut self) {
        self.node.stop().expect("stop");
        self.node = Self::build(&self.hsm, &self.root, &self.store, &self.options);
        self.node.start().expect("start again");
    }

    /// Where peers reach the node.
    pub fn address(&self) -> SocketAddr {
        self.options.listen[0]
    }

    /// Waits for the first event `want` accepts (marking every event seen as handled);
    /// panics after [`WAIT`]. With `LN_TEST_EVENTS` set, every event is printed.
    pub fn wait_event(&self, what: &str, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.node.next_event_timeout(left) else {
                panic!("{}: no {what} within {WAIT:?}", self.name);
            };
            self.node.event_handled().expect("event handled");
            if std::env::var_os("LN_TEST_EVENTS").is_some() {
                #[allow(clippy::print_stderr, reason = "events shown on request, to debug a test")]
                {
                    eprintln!("{}: {event:?}", self.name);
                }
            }
            if want(&event) {
                return event;
            }
        }
    }

    /// Waits until `cond` holds for the node; panics after [`WAIT`].
    pub fn wait_until(&self, what: &str, cond: impl Fn(&LightningNode) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.node) {
            assert!(Instant::now() < deadline, "{}: not {what} within {WAIT:?}", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until bitcoind's mempool holds the funding transaction of every channel of the
    /// node that has no confirmation yet: ldk-node broadcasts from a background task, so a block mined
    /// right after `ChannelPending` may miss it.
    pub fn wait_funding_broadcast(&self, chain: &Bitcoind) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mempool: Vec<String> = chain.rpc("getrawmempool", &[]);
            let missing: Vec<String> = self
                .node
                .channels()
                .iter()
                .filter(|c| !c.is_channel_ready && c.confirmations.unwrap_or(0) == 0)
                .filter_map(|c| c.funding_txo)
                .map(|o| o.txid.to_string())
                .filter(|txid| !mempool.contains(txid))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: funding {missing:?} not broadcast",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Mines `blocks` on `chain` (to a burn address) and waits until the node's wallets have
    /// synced past them.
    pub fn mine_and_sync(chain: &Bitcoind, blocks: u32, parties: &[&LnParty]) {
        chain.mine(blocks, &chain.new_burn_address());
        let height = chain.height();
        for party in parties {
            party.node.node().sync_wallets().expect("sync");
            party.wait_until("synced to the tip", |n| {
                n.node().status().current_best_block.height >= height
            });
        }
    }
}
