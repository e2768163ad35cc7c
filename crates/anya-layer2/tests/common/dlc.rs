//! Two contract parties on a real regtest `bitcoind` (`anya_testkit::Bitcoind`, from
//! `BITCOIND_EXE`; `.ci/run` provides it): each has its own SQLite store, software HSM, anya
//! wallet and contract manager; the oracle is an anya oracle on a third keystore, and one test
//! clock drives the managers, the oracle and (through `setmocktime`) the node.
//!
//! Only the test binaries that run contracts include this file, beside `mod common;`:
//!
//! ```ignore
//! mod common;
//! #[path = "common/dlc.rs"]
//! mod dlc;
//! ```
//!
//! (it is not a submodule of `common`, so the oracle and client tests do not build a node
//! fixture they never use).

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, Label, SystemClock};
use anya_hsm::{HsmProvider, KeyPolicy, KeySpec, Usage};
use anya_layer2::dlc::contracts::{
    AnyOracle, BitcoindBlockchain, ClockTime, DlcError, DlcManager, DlcParts, DlcService, DlcWallet,
    HsmContractSignerProvider, KvDlcStorage, LocalOracle, Resumed, TracingLogger,
};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::{Amount, Network, Transaction};
use ddk_dlc::{EnumerationPayout, Payout};
use ddk_manager::contract::contract_input::{ContractInput, ContractInputInfo, OracleInput};
use ddk_manager::contract::enum_descriptor::EnumDescriptor;
use ddk_manager::contract::{Contract, ContractDescriptor};
use ddk_manager::{ContractId, Storage as _};
use ddk_messages::Message;
use secp256k1::{PublicKey, Secp256k1, SecretKey};

use crate::common::{hsm_options, TestClock, PASS};

/// The namespace of each party's contracts.
pub const DLC_NAMESPACE: &str = "anya/dlc/contracts";

pub fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

pub fn btc(v: f64) -> Amount {
    Amount::from_btc(v).expect("amount")
}

pub fn now() -> u64 {
    SystemClock.now().as_secs()
}

/// One side of a contract.
pub struct Party {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub store: Arc<dyn KvStore>,
    pub hsm: Arc<dyn HsmProvider>,
    pub wallet: Arc<Mutex<AnyaWallet>>,
    /// The identity the other side knows this party by.
    pub id: PublicKey,
    pub manager: DlcManager<LocalOracle>,
}

async fn manager(
    store: &Arc<dyn KvStore>,
    hsm: &Arc<dyn HsmProvider>,
    wallet: &Arc<Mutex<AnyaWallet>>,
    chain: &Arc<BitcoindChain>,
    oracle: &Arc<LocalOracle>,
    clock: &Arc<TestClock>,
) -> DlcManager<LocalOracle> {
    use ddk_manager::Oracle as _;
    let blockchain = Arc::new(BitcoindBlockchain::new(Arc::clone(chain), Network::Regtest).expect("chain"));
    let mut oracles = HashMap::new();
    oracles.insert(oracle.get_public_key(), Arc::clone(oracle));
    DlcManager::new(
        Arc::new(DlcWallet::new(Arc::clone(wallet))),
        Arc::new(HsmContractSignerProvider::new(Arc::clone(hsm), label("root"))),
        Arc::clone(&blockchain),
        Arc::new(KvDlcStorage::new(Arc::clone(store), DLC_NAMESPACE).expect("storage")),
        oracles,
        Arc::new(ClockTime(Arc::clone(clock) as Arc<dyn Clock>)),
        blockchain,
        Arc::new(TracingLogger),
    )
    .await
    .expect("manager")
}

impl Party {
    /// A new party whose wallet holds one confirmed 50 BTC coinbase.
    pub async fn new(net: &Net, name: &str) -> Self {
        let (node, chain, oracle, clock) = (&net.node, &net.chain, &net.oracle, &net.clock);
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("party.db"), SqliteOptions::default()).expect("sqlite"));
        let hsm: Arc<dyn HsmProvider> = Arc::new(
            anya_hsm::SoftwareHsm::create(
                Arc::clone(&store),
                &anya_hsm::SecretString::from(PASS),
                hsm_options(dir.path()),
            )
            .expect("keystore"),
        );
        let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::ExportDlcChild);
        hsm.generate_key(&label("root"), KeySpec::Bip32Root, policy)
            .expect("root");
        let wallet = AnyaWallet::create(
            Arc::clone(&store),
            Arc::clone(&hsm),
            Arc::new(SystemClock),
            label(name),
            &Template::Bip84 {
                root: label("root"),
                account: 0,
            },
            Network::Regtest,
        )
        .expect("wallet");
        let wallet = Arc::new(Mutex::new(wallet));
        let address = wallet.lock().unwrap().next_address().expect("address").address;
        node.mine(1, &address);
        let id = PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::new(&mut rand::thread_rng()));
        let manager = manager(&store, &hsm, &wallet, chain, oracle, clock).await;
        Self {
            dir,
            name: name.to_owned(),
            store,
            hsm,
            wallet,
            id,
            manager,
        }
    }

    /// The same party after its process stopped: keystore, wallet and manager opened again
    /// from its store.
    pub async fn restart(self, net: &Net) -> Self {
        let Party {
            dir,
            name,
            id,
            manager: old,
            wallet: old_wallet,
            hsm: old_hsm,
            store: old_store,
        } = self;
        drop((old, old_wallet, old_hsm, old_store));
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("party.db"), SqliteOptions::default()).expect("sqlite"));
        let hsm = anya_hsm::SoftwareHsm::open(Arc::clone(&store), hsm_options(dir.path())).expect("keystore");
        hsm.unlock(&anya_hsm::SecretString::from(PASS)).expect("unlocked");
        let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
        let wallet = AnyaWallet::load(
            Arc::clone(&store),
            Arc::clone(&hsm),
            Arc::new(SystemClock),
            label(&name),
        )
        .expect("wallet");
        let wallet = Arc::new(Mutex::new(wallet));
        let manager = manager(&store, &hsm, &wallet, &net.chain, &net.oracle, &net.clock).await;
        Self {
            dir,
            name,
            store,
            hsm,
            wallet,
            id,
            manager,
        }
    }

    pub fn sync(&self, chain: &BitcoindChain) {
        chain.sync_wallet(&mut self.wallet.lock().unwrap()).expect("sync");
    }

    pub fn balance(&self) -> Amount {
        self.wallet.lock().unwrap().balance().total()
    }

    /// What `tx` takes from this wallet: its inputs that are the wallet's minus its outputs
    /// that pay the wallet (negative when it pays the wallet more than it takes).
    pub fn net_out(&self, tx: &Transaction, spent: &[bitcoin::TxOut]) -> i64 {
        let w = self.wallet.lock().unwrap();
        let ins: i64 = spent
            .iter()
            .filter(|o| w.is_mine(&o.script_pubkey))
            .map(|o| o.value.to_sat() as i64)
            .sum();
        let outs: i64 = tx
            .output
            .iter()
            .filter(|o| w.is_mine(&o.script_pubkey))
            .map(|o| o.value.to_sat() as i64)
            .sum();
        ins - outs
    }

    pub async fn contract(&self, id: &ContractId) -> Contract {
        self.manager
            .get_store()
            .get_contract(id)
            .await
            .expect("read")
            .expect("stored")
    }

    /// anya's contract service on this party's store, keystore, root (`root`) and wallet, with
    /// the net's node, oracle and clock: what anya runs in place of the bare manager. It opens
    /// beside [`manager`](Self::manager), on the same records.
    pub async fn service(&self, net: &Net) -> Result<(DlcService, Resumed), DlcError> {
        DlcService::open(DlcParts {
            store: Arc::clone(&self.store),
            hsm: Arc::clone(&self.hsm),
            root: label("root"),
            wallet: Arc::clone(&self.wallet),
            chain: Arc::clone(&net.chain),
            network: Network::Regtest,
            oracles: vec![Arc::clone(&net.oracle) as Arc<AnyOracle>],
            clock: Arc::clone(&net.clock) as Arc<dyn Clock>,
        })
        .await
    }

    /// Runs the manager's periodic work (chain monitor, then contract checks).
    pub async fn tick(&self) {
        self.manager.periodic_chain_monitor().await.expect("chain monitor");
        self.manager.periodic_check(false).await.expect("periodic check");
    }
}

/// The spent outputs of `tx`, from the node.
pub fn spent_outputs(chain: &BitcoindChain, tx: &Transaction) -> Vec<bitcoin::TxOut> {
    tx.input
        .iter()
        .map(|i| {
            let prev = chain.transaction(&i.previous_output.txid).expect("rpc").expect("known");
            prev.output[i.previous_output.vout as usize].clone()
        })
        .collect()
}

pub struct Net {
    pub node: Bitcoind,
    /// The time of the managers, the oracle and (through `setmocktime`) the node.
    pub clock: Arc<TestClock>,
    pub chain: Arc<BitcoindChain>,
    pub oracle_fixture: OracleSide,
    pub oracle: Arc<LocalOracle>,
}

pub struct OracleSide {
    _dir: tempfile::TempDir,
    pub oracle: Arc<Oracle>,
}

impl OracleSide {
    /// An anya oracle on its own keystore, reading `clock`.
    pub fn new(clock: &Arc<TestClock>) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("oracle.db"), SqliteOptions::default()).expect("sqlite"));
        let hsm = Arc::new(
            anya_hsm::SoftwareHsm::create(
                Arc::clone(&store),
                &anya_hsm::SecretString::from(PASS),
                hsm_options(dir.path()),
            )
            .expect("keystore"),
        );
        let oracle = Arc::new(
            Oracle::open(
                hsm as Arc<dyn HsmProvider>,
                store,
                Arc::clone(clock) as Arc<dyn Clock>,
                OracleOptions::default(),
            )
            .expect("oracle"),
        );
        Self { _dir: dir, oracle }
    }
}

/// A regtest node and an oracle; `None` outside CI when `BITCOIND_EXE` is not set.
pub fn net() -> Option<Net> {
    let node = Bitcoind::start()?;
    let chain = Arc::new(
        BitcoindChain::connect(RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(node.cookie_file()))).expect("rpc"),
    );
    let clock = TestClock::at(now());
    let oracle_fixture = OracleSide::new(&clock);
    Some(Net {
        node,
        clock,
        chain,
        oracle: Arc::new(LocalOracle::new(Arc::clone(&oracle_fixture.oracle))),
        oracle_fixture,
    })
}

impl Net {
    pub fn mine(&self, n: u32) {
        self.node.mine(n, &self.node.new_burn_address());
    }

    pub fn now(&self) -> u64 {
        self.clock.now().as_secs()
    }

    /// Moves every clock to `t` and mines 11 blocks there, so that the chain's median time
    /// passes every time lock before `t`.
    pub fn advance_to(&self, t: u64) {
        self.clock.set(t);
        let _: serde_json::Value = self.node.rpc("setmocktime", &[t.into()]);
        self.mine(11);
    }
}

pub fn enum_input(oracle: &Oracle, event_id: &str, payouts: &[(&str, Amount, Amount)]) -> ContractInput {
    let offer = payouts[0].1 + payouts[0].2;
    ContractInput {
        offer_collateral: btc(1.0),
        accept_collateral: offer - btc(1.0),
        fee_rate: 2,
        contract_infos: vec![ContractInputInfo {
            contract_descriptor: ContractDescriptor::Enum(EnumDescriptor {
                outcome_payouts: payouts
                    .iter()
                    .map(|(outcome, o, a)| EnumerationPayout {
                        outcome: (*outcome).to_owned(),
                        payout: Payout { offer: *o, accept: *a },
                    })
                    .collect(),
            }),
            oracles: OracleInput {
                public_keys: vec![oracle.public_key()],
                event_id: event_id.to_owned(),
                threshold: 1,
            },
        }],
        contract_flags: 0,
    }
}

/// Offer, accept, sign and broadcast: returns the contract id once both sides hold it signed.
pub async fn open(alice: &Party, bob: &Party, input: &ContractInput) -> ContractId {
    let offer = alice.manager.send_offer(input, bob.id).await.expect("offer");
    let temp_id = offer.temporary_contract_id;
    bob.manager
        .on_dlc_message(&Message::Offer(offer), alice.id)
        .await
        .expect("offer received");
    let (contract_id, _, accept) = bob.manager.accept_contract_offer(&temp_id).await.expect("accepted");
    let sign = alice
        .manager
        .on_dlc_message(&Message::Accept(accept), bob.id)
        .await
        .expect("accept received")
        .expect("a sign message");
    bob.manager
        .on_dlc_message(&sign, alice.id)
        .await
        .expect("sign received (funding broadcast)");
    contract_id
}

/// Two parties with one confirmed, mature 50 BTC coin each, synced.
pub async fn parties(net: &Net) -> (Party, Party) {
    let alice = Party::new(net, "alice").await;
    let bob = Party::new(net, "bob").await;
    net.mine(100);
    alice.sync(&net.chain);
    bob.sync(&net.chain);
    assert_eq!(alice.balance(), btc(50.0));
    assert_eq!(bob.balance(), btc(50.0));
    (alice, bob)
}

/// The payouts (offer, accept) of the coin events, in BTC.
pub const PAYOUTS: [(&str, f64, f64); 2] = [("heads", 1.6, 0.4), ("tails", 0.3, 1.7)];

/// Announces the enum event `id` (heads or tails) at `maturity` and returns the contract on
/// it: 1 BTC from each side, paid out as [`PAYOUTS`].
pub fn coin_event(net: &Net, id: &str, maturity: u32) -> ContractInput {
    let oracle = &net.oracle_fixture.oracle;
    oracle
        .create_enum_event(id, maturity, vec!["heads".to_owned(), "tails".to_owned()])
        .expect("event");
    let payouts: Vec<(&str, Amount, Amount)> = PAYOUTS.iter().map(|(o, a, b)| (*o, btc(*a), btc(*b))).collect();
    enum_input(oracle, id, &payouts)
}
