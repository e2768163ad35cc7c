//! Lightning test nodes: an ldk-node node per party on its own software HSM (a BIP32 root that
//! allows node seeds) and its own anya store, chained to one regtest bitcoind.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_bitcoin::policy::PolicyEngine;
use anya_core_types::SystemClock;
use anya_hsm::{HsmProvider, KeyId, KeyPolicy, KeySpec, SecretString, SoftwareHsm, Usage};
use anya_layer2::lightning::ldk_node::lightning::routing::gossip::NodeId;
use anya_layer2::lightning::ldk_node::Event;
use anya_layer2::lightning::{BitcoindRpc, LightningNode, NodeOptions};
use anya_storage::{KvStore, Namespace};
use anya_testkit::Bitcoind;
use bitcoin::{Amount, Network, OutPoint};
use serde_json::Value;

use crate::common::{hsm_options, PASS};

/// How long a test waits for an event or a state.
pub const WAIT: Duration = Duration::from_secs(60);

/// How long [`LnParty::wait_channel_update`] waits for gossip before it asks for it again.
pub const GOSSIP_WAIT: Duration = Duration::from_secs(10);

/// The anya namespace of every test node's records.
pub const LN_NS: &str = "anya/ln/node";
/// The namespace of every test node's spending policy.
pub const POLICY_NS: &str = "anya/ln/policy";
/// The key id of every test node's HSM root.
const ROOT: &str = "ln-root";

/// A party: its HSM and store (which outlive its node, so that a node can be rebuilt on them)
/// and its running node.
pub struct LnParty {
    pub name: &'static str,
    /// Where its HSM anchor and working directories are.
    pub dir: PathBuf,
    /// Removes `dir` when the party is dropped, when the party owns it.
    _tmp: Option<tempfile::TempDir>,
    pub store: Arc<dyn KvStore>,
    pub hsm: Arc<dyn HsmProvider>,
    pub root: KeyId,
    pub options: NodeOptions,
    pub node: LightningNode,
    /// How many times the node was moved to a fresh working directory.
    moves: u32,
}

fn free_loopback() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Where a node reaches a regtest bitcoind on this machine: what another process needs.
#[derive(Debug, Clone)]
pub struct ChainRpc {
    pub port: u16,
    pub cookie: PathBuf,
}

impl ChainRpc {
    pub fn of(chain: &Bitcoind) -> Self {
        Self {
            port: chain.rpc_port(),
            cookie: chain.cookie_file(),
        }
    }
}

/// The node options of party `name` on `chain`, working in `work_dir`, listening on `listen`
/// with its name as alias: an alias and a listening address let a node announce channels,
/// which it must do to forward payments (ldk-node leaves LDK's
/// `accept_forwards_to_priv_channels` off).
pub fn options(name: &str, chain: &ChainRpc, work_dir: PathBuf, listen: SocketAddr) -> NodeOptions {
    let rpc = BitcoindRpc::from_cookie("127.0.0.1", chain.port, &chain.cookie).expect("cookie");
    let mut options = NodeOptions::new(Network::Regtest, work_dir, rpc);
    options.listen = vec![listen];
    options.alias = Some(name.to_owned());
    options
}

/// With `LN_TEST_LOG` set (an env-filter such as `anya::ldk=debug`), ldk-node's log lines go
/// to stderr, to debug a test.
pub fn log_on_request() {
    if let Ok(filter) = std::env::var("LN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

impl LnParty {
    /// A new party with a fresh keystore on `store` (its anchor in `dir`, which the party
    /// removes when dropped), its node built and started.
    pub fn new(name: &'static str, chain: &Bitcoind, dir: tempfile::TempDir, store: Arc<dyn KvStore>) -> Self {
        let mut party = Self::new_at(name, chain, dir.path().to_owned(), store);
        party._tmp = Some(dir);
        party
    }

    /// [`new`](Self::new) in `dir`, which outlives the party (another process may open the
    /// party again there: [`reopen`](Self::reopen)).
    pub fn new_at(name: &'static str, chain: &Bitcoind, dir: PathBuf, store: Arc<dyn KvStore>) -> Self {
        log_on_request();
        let hsm: Arc<dyn HsmProvider> = Arc::new(
            SoftwareHsm::create(Arc::clone(&store), &SecretString::from(PASS), hsm_options(&dir)).expect("keystore"),
        );
        let root = KeyId::new(ROOT).expect("label");
        let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::DeriveNodeSeed);
        hsm.generate_key(&root, KeySpec::Bip32Root, policy).expect("root");
        let options = options(name, &ChainRpc::of(chain), dir.join("work"), free_loopback());
        Self::started(name, dir, hsm, root, store, options)
    }

    /// The party made in `dir` on `store` before (by this process or another), its keystore
    /// opened and unlocked, its node built in a fresh working directory and started,
    /// listening on `listen`.
    pub fn reopen(
        name: &'static str,
        chain: &ChainRpc,
        dir: PathBuf,
        store: Arc<dyn KvStore>,
        listen: SocketAddr,
    ) -> Self {
        log_on_request();
        let hsm = SoftwareHsm::open(Arc::clone(&store), hsm_options(&dir)).expect("keystore");
        hsm.unlock(&SecretString::from(PASS)).expect("unlock");
        let work = tempfile::TempDir::new_in(&dir).expect("work dir").keep();
        let options = options(name, chain, work, listen);
        let root = KeyId::new(ROOT).expect("label");
        Self::started(name, dir, Arc::new(hsm), root, store, options)
    }

    fn started(
        name: &'static str,
        dir: PathBuf,
        hsm: Arc<dyn HsmProvider>,
        root: KeyId,
        store: Arc<dyn KvStore>,
        options: NodeOptions,
    ) -> Self {
        let node = Self::build(&hsm, &root, &store, &options);
        node.start().expect("start");
        Self {
            name,
            dir,
            _tmp: None,
            store,
            hsm,
            root,
            options,
            node,
            moves: 0,
        }
    }

    /// Stops the node and lets go of the store and keystore (left in [`dir`](Self::dir) and
    /// the store for [`reopen`](Self::reopen)).
    pub fn close(self) {
        self.node.stop().expect("stop");
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

    /// Stops the node and builds and starts it again on the same HSM root and store, as a
    /// node moved to a new machine would be: a fresh, empty working directory, the keystore
    /// opened again from the store (a new HSM instance, unlocked with the passphrase), and,
    /// when given, `store` (a new connection to the same database) in place of the old one.
    pub fn restart(&mut self, store: Option<Arc<dyn KvStore>>) {
        self.node.stop().expect("stop");
        if let Some(store) = store {
            self.store = store;
        }
        let hsm = SoftwareHsm::open(Arc::clone(&self.store), hsm_options(&self.dir)).expect("keystore");
        hsm.unlock(&SecretString::from(PASS)).expect("unlock");
        self.hsm = Arc::new(hsm);
        self.moves += 1;
        self.options.work_dir = self.dir.join(format!("work-{}", self.moves));
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

    /// Waits until this node's graph holds `from`'s update of its channel to `to`, which this
    /// node needs to route a payment over that channel.
    ///
    /// Gossip between three nodes has no second source: LDK sometimes loses a channel update
    /// on the way (a few percent of runs here, some direction in nearly half), and nothing sends
    /// it again. If the update has not come after [`GOSSIP_WAIT`], this node reconnects to its
    /// peers: each answers the `gossip_timestamp_filter` LDK sends on connecting with its whole
    /// graph. It then waits for its channels to be usable again.
    #[allow(clippy::print_stderr, reason = "says in the test's output that it had to ask again")]
    pub fn wait_channel_update(&self, from: &LnParty, to: &LnParty) {
        let (from_id, to_id) = (
            NodeId::from_pubkey(&from.node.node_id()),
            NodeId::from_pubkey(&to.node.node_id()),
        );
        let known = |n: &LightningNode| {
            let graph = n.node().network_graph();
            graph.list_channels().into_iter().any(|scid| {
                graph.channel(scid).is_some_and(|c| {
                    if (c.node_one, c.node_two) == (from_id, to_id) {
                        c.one_to_two.is_some()
                    } else if (c.node_one, c.node_two) == (to_id, from_id) {
                        c.two_to_one.is_some()
                    } else {
                        false
                    }
                })
            })
        };
        let what = format!("told of {}'s update towards {}", from.name, to.name);
        let deadline = Instant::now() + GOSSIP_WAIT;
        while !known(&self.node) {
            if Instant::now() >= deadline {
                eprintln!("{}: {what} after {GOSSIP_WAIT:?}: reconnecting to its peers", self.name);
                let node = self.node.node();
                for peer in node.list_peers() {
                    node.disconnect(peer.node_id).expect("disconnect");
                    node.connect(peer.node_id, peer.address, peer.is_persisted)
                        .expect("reconnect");
                }
                self.wait_until(&what, known);
                self.wait_until("usable again", |n| n.channels().iter().all(|c| c.is_usable));
                return;
            }
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

/// The mempool transaction spending `outpoint`, waited for.
pub fn mempool_spender(chain: &Bitcoind, outpoint: OutPoint) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let txids: Vec<String> = chain.rpc("getrawmempool", &[]);
        for txid in txids {
            let tx: Value = chain.rpc("getrawtransaction", &[txid.clone().into(), true.into()]);
            let spends = tx["vin"].as_array().expect("vin").iter().any(|i| {
                i["txid"].as_str() == Some(&outpoint.txid.to_string())
                    && i["vout"].as_u64() == Some(u64::from(outpoint.vout))
            });
            if spends {
                return tx;
            }
        }
        assert!(Instant::now() < deadline, "nothing spends {outpoint}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn sats(v: &Value) -> u64 {
    Amount::from_btc(v.as_f64().expect("btc")).expect("amount").to_sat()
}

/// The value of each output of a decoded transaction, in satoshis.
pub fn output_sats(tx: &Value) -> Vec<u64> {
    tx["vout"]
        .as_array()
        .expect("vout")
        .iter()
        .map(|o| sats(&o["value"]))
        .collect()
}
