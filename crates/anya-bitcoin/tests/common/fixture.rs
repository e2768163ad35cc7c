//! The wallet tests' fixture: a fresh SQLite store holding a software HSM with a BIP32 root
//! `root`, a clock the test moves by hand, and a regtest chain mined in-process.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anya_bitcoin::regtest::RegtestChain;
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, Label, UnixTime};
use anya_hsm::HsmProvider;
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bitcoin::{Address, FeeRate, Network, ScriptBuf, Transaction};

/// A clock the test moves by hand.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Moves the clock `secs` seconds on.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(self.0.load(Ordering::SeqCst))
    }
}

/// One store, its keystore, a manual clock and an in-process chain.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub store: Arc<dyn KvStore>,
    pub hsm: Arc<dyn HsmProvider>,
    pub clock: Arc<ManualClock>,
    pub chain: RegtestChain,
}

pub fn label(s: &str) -> Label {
    Label::new(s).expect("valid label")
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.path().join("anya.db"), SqliteOptions::default()).expect("store"));
    let hsm = anya_hsm::conformance::software_on(Arc::clone(&store));
    anya_hsm::conformance::generate_test_root(&hsm, &label("root"));
    Fixture {
        _dir: dir,
        store,
        hsm: Arc::new(hsm),
        clock: Arc::new(ManualClock(AtomicU64::new(1_700_000_000))),
        chain: RegtestChain::new(),
    }
}

impl Fixture {
    /// A new regtest wallet `name` on the fixture's clock.
    pub fn wallet(&self, name: &str, template: &Template) -> AnyaWallet {
        self.wallet_with(name, template, Network::Regtest, self.clock.clone())
    }

    /// A new wallet `name` on `network` whose policy reads `clock`.
    pub fn wallet_with(&self, name: &str, template: &Template, network: Network, clock: Arc<dyn Clock>) -> AnyaWallet {
        AnyaWallet::create(
            Arc::clone(&self.store),
            Arc::clone(&self.hsm),
            clock,
            label(name),
            template,
            network,
        )
        .expect("wallet created")
    }

    /// The wallet `name` loaded again from the store, as a restarted process would.
    pub fn reload(&self, name: &str) -> AnyaWallet {
        AnyaWallet::load(
            Arc::clone(&self.store),
            Arc::clone(&self.hsm),
            self.clock.clone(),
            label(name),
        )
        .expect("wallet loads")
    }

    /// Mines a block with `txs` paying the coinbase to `to` and applies it to `wallets`.
    pub fn mine(&mut self, to: &ScriptBuf, txs: Vec<Transaction>, wallets: &mut [&mut AnyaWallet]) {
        self.chain.mine(to, txs).expect("block accepted");
        let height = self.chain.height();
        let block = self.chain.tip().clone();
        for w in wallets.iter_mut() {
            w.apply_block(&block, height).expect("block connects");
        }
    }

    /// One coinbase (50 BTC) to the first of `wallets`, then 100 blocks so that it matures.
    pub fn fund(&mut self, wallets: &mut [&mut AnyaWallet]) {
        let to = wallets[0].next_address().expect("address").script_pubkey();
        self.mine(&to, Vec::new(), wallets);
        let burn = burn();
        for _ in 0..100 {
            self.mine(&burn, Vec::new(), wallets);
        }
    }
}

/// An output nobody in the test owns.
pub fn burn() -> ScriptBuf {
    Address::from_str("bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2")
        .expect("address")
        .require_network(Network::Regtest)
        .expect("regtest")
        .script_pubkey()
}

pub fn bip84(account: u32) -> Template {
    Template::Bip84 {
        root: label("root"),
        account,
    }
}

pub fn bip86(account: u32) -> Template {
    Template::Bip86 {
        root: label("root"),
        account,
    }
}

pub fn rate(sat_vb: u64) -> FeeRate {
    FeeRate::from_sat_per_vb(sat_vb).expect("fee rate")
}
