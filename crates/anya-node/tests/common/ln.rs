//! A Lightning peer for the daemon's tests: an ldk-node node built in the test process on its
//! own software HSM (a BIP32 root that allows node seeds) and its own SQLite store, chained to
//! the same regtest bitcoind as the daemon.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_bitcoin::policy::PolicyEngine;
use anya_core_types::SystemClock;
use anya_hsm::{HsmProvider, KdfParams, KeyId, KeyPolicy, KeySpec, SecretString, SoftwareHsm, SoftwareOptions, Usage};
use anya_layer2::lightning::ldk_node::Event;
use anya_layer2::lightning::{BitcoindRpc, LightningNode, NodeOptions};
use anya_storage::{KvStore, Namespace, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::Network;

/// How long the peer waits for an event or a state.
pub const WAIT: Duration = Duration::from_secs(60);

/// A free port on the loopback interface.
pub fn free_loopback() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The peer: its node, listening on a loopback port, and the directory its store is in.
pub struct Peer {
    pub node: LightningNode,
    pub listen: SocketAddr,
    // Last: the node's store and working directory live in it.
    _dir: tempfile::TempDir,
}

impl Peer {
    /// A new peer on `chain`, started.
    pub fn start(chain: &Bitcoind) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("peer.db"), SqliteOptions::default()).expect("sqlite"));
        let options = SoftwareOptions::default().with_kdf(KdfParams::insecure_for_tests());
        let hsm: Arc<dyn HsmProvider> = Arc::new(
            SoftwareHsm::create(Arc::clone(&store), &SecretString::from_str_secret("peer"), options).expect("keystore"),
        );
        let root = KeyId::new("peer-root").expect("label");
        let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::DeriveNodeSeed);
        hsm.generate_key(&root, KeySpec::Bip32Root, policy).expect("root");
        let rpc = BitcoindRpc::from_cookie("127.0.0.1", chain.rpc_port(), &chain.cookie_file()).expect("cookie");
        let mut options = NodeOptions::new(Network::Regtest, dir.path().join("work"), rpc);
        let listen = free_loopback();
        options.listen = vec![listen];
        let payments = PolicyEngine::new(
            Arc::clone(&store),
            Namespace::new("anya/ln/policy").expect("namespace"),
            Arc::new(SystemClock),
        );
        let node = LightningNode::build(
            hsm,
            &root,
            store,
            Namespace::new("anya/ln/node").expect("namespace"),
            payments,
            &options,
        )
        .expect("build the peer");
        node.start().expect("start the peer");
        Self {
            node,
            listen,
            _dir: dir,
        }
    }

    /// `<node id>@127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.node.node_id(), self.listen)
    }

    /// Waits for the first event `want` accepts (marking every event seen as handled);
    /// panics after [`WAIT`].
    pub fn wait_event(&self, what: &str, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.node.next_event_timeout(left) else {
                panic!("peer: no {what} within {WAIT:?}");
            };
            self.node.event_handled().expect("event handled");
            if want(&event) {
                return event;
            }
        }
    }

    /// Syncs the peer's wallets and waits until it has seen block `height`.
    pub fn sync_to(&self, height: u32) {
        self.node.node().sync_wallets().expect("sync");
        until("the peer at the tip", || {
            self.node.node().status().current_best_block.height >= height
        });
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.node.stop();
    }
}

/// Polls `cond` until it holds; panics after [`WAIT`].
pub fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not {what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
