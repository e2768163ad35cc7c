//! Whole contract lifecycles between two parties on a real regtest `bitcoind`
//! (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`; `.ci/run` provides it). Each party has its
//! own store, software HSM, anya wallet and contract manager; the oracle is an anya oracle on
//! a third keystore. Every balance is checked to the satoshi against the transactions that
//! the chain confirmed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, Label, SystemClock};
use anya_hsm::{HsmProvider, KeyPolicy, KeySpec, Usage};
use anya_layer2::dlc::contracts::{
    BitcoindBlockchain, ClockTime, DlcManager, DlcWallet, HsmContractSignerProvider, KvDlcStorage, LocalOracle,
    TracingLogger,
};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::{Amount, Network, Transaction};
use common::{hsm_options, TestClock, PASS};
use ddk_dlc::{EnumerationPayout, Payout};
use ddk_manager::contract::contract_input::{ContractInput, ContractInputInfo, OracleInput};
use ddk_manager::contract::enum_descriptor::EnumDescriptor;
use ddk_manager::contract::{Contract, ContractDescriptor};
use ddk_manager::{ContractId, Storage as _};
use ddk_messages::Message;
use secp256k1::{PublicKey, Secp256k1, SecretKey};

fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

fn btc(v: f64) -> Amount {
    Amount::from_btc(v).expect("amount")
}

fn now() -> u64 {
    SystemClock.now().as_secs()
}

/// One side of a contract.
struct Party {
    _dir: tempfile::TempDir,
    store: Arc<dyn KvStore>,
    hsm: Arc<dyn HsmProvider>,
    wallet: Arc<Mutex<AnyaWallet>>,
    /// The identity the other side knows this party by.
    id: PublicKey,
    manager: DlcManager<LocalOracle>,
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
        Arc::new(KvDlcStorage::new(Arc::clone(store), "anya/dlc/contracts").expect("storage")),
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
    async fn new(net: &Net, name: &str) -> Self {
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
        let mut policy = KeyPolicy::default_for(KeySpec::Bip32Root);
        policy = policy.allowing(Usage::ExportDlcChild);
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
            _dir: dir,
            store,
            hsm,
            wallet,
            id,
            manager,
        }
    }

    fn sync(&self, chain: &BitcoindChain) {
        chain.sync_wallet(&mut self.wallet.lock().unwrap()).expect("sync");
    }

    fn balance(&self) -> Amount {
        self.wallet.lock().unwrap().balance().total()
    }

    /// What `tx` takes from this wallet: its inputs that are the wallet's minus its outputs
    /// that pay the wallet (negative when it pays the wallet more than it takes).
    fn net_out(&self, tx: &Transaction, spent: &[bitcoin::TxOut]) -> i64 {
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

    async fn contract(&self, id: &ContractId) -> Contract {
        self.manager
            .get_store()
            .get_contract(id)
            .await
            .expect("read")
            .expect("stored")
    }

    /// Runs the manager's periodic work (chain monitor, then contract checks).
    async fn tick(&self) {
        self.manager.periodic_chain_monitor().await.expect("chain monitor");
        self.manager.periodic_check(false).await.expect("periodic check");
    }
}

/// The spent outputs of `tx`, from the node.
fn spent_outputs(chain: &BitcoindChain, tx: &Transaction) -> Vec<bitcoin::TxOut> {
    tx.input
        .iter()
        .map(|i| {
            let prev = chain.transaction(&i.previous_output.txid).expect("rpc").expect("known");
            prev.output[i.previous_output.vout as usize].clone()
        })
        .collect()
}

struct Net {
    node: Bitcoind,
    /// The time of the managers, the oracle and (through `setmocktime`) the node.
    clock: Arc<TestClock>,
    chain: Arc<BitcoindChain>,
    oracle_fixture: OracleSide,
    oracle: Arc<LocalOracle>,
}

struct OracleSide {
    _dir: tempfile::TempDir,
    oracle: Arc<Oracle>,
}

fn net() -> Option<Net> {
    let node = Bitcoind::start()?;
    let chain = Arc::new(
        BitcoindChain::connect(RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(node.cookie_file()))).expect("rpc"),
    );
    let clock = TestClock::at(now());
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
            Arc::clone(&clock) as Arc<dyn Clock>,
            OracleOptions::default(),
        )
        .expect("oracle"),
    );
    Some(Net {
        node,
        clock,
        chain,
        oracle: Arc::new(LocalOracle::new(Arc::clone(&oracle))),
        oracle_fixture: OracleSide { _dir: dir, oracle },
    })
}

impl Net {
    fn mine(&self, n: u32) {
        self.node.mine(n, &self.node.new_burn_address());
    }

    fn now(&self) -> u64 {
        self.clock.now().as_secs()
    }

    /// Moves every clock to `t` and mines 11 blocks there, so that the chain's median time
    /// passes every time lock before `t`.
    fn advance_to(&self, t: u64) {
        self.clock.set(t);
        let _: serde_json::Value = self.node.rpc("setmocktime", &[t.into()]);
        self.mine(11);
    }
}

fn enum_input(oracle: &Oracle, event_id: &str, payouts: &[(&str, Amount, Amount)]) -> ContractInput {
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
async fn open(alice: &Party, bob: &Party, input: &ContractInput) -> ContractId {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_contract_closes_by_cet_with_the_payouts_to_the_satoshi() {
    let Some(net) = net() else { return };
    let alice = Party::new(&net, "alice").await;
    let bob = Party::new(&net, "bob").await;
    net.mine(100);
    alice.sync(&net.chain);
    bob.sync(&net.chain);
    let (alice_start, bob_start) = (alice.balance(), bob.balance());
    assert_eq!(alice_start, btc(50.0));

    let oracle = &net.oracle_fixture.oracle;
    let maturity = net.now() as u32 + 600;
    oracle
        .create_enum_event("coin", maturity, vec!["heads".to_owned(), "tails".to_owned()])
        .expect("event");
    let payouts = [("heads", btc(1.6), btc(0.4)), ("tails", btc(0.3), btc(1.7))];
    let input = enum_input(oracle, "coin", &payouts);
    let id = open(&alice, &bob, &input).await;

    let Contract::Signed(signed) = alice.contract(&id).await else {
        panic!("alice holds the contract signed")
    };
    let fund = signed.accepted_contract.dlc_transactions.fund.clone();
    assert!(matches!(bob.contract(&id).await, Contract::Signed(_)));
    // The funding coins are reserved: the wallets' own payments cannot spend them.
    assert!(!alice.wallet.lock().unwrap().reserved().expect("reserved").is_empty());

    net.mine(3);
    alice.tick().await;
    bob.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Confirmed(_)));
    assert!(matches!(bob.contract(&id).await, Contract::Confirmed(_)));

    net.advance_to(u64::from(maturity) + 60);
    oracle.attest_enum("coin", "tails").expect("attested");
    alice.tick().await;
    let Contract::PreClosed(pre) = alice.contract(&id).await else {
        panic!("alice broadcast the CET")
    };
    let cet = pre.signed_cet.clone();
    net.mine(3);
    alice.tick().await;
    bob.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Closed(_)));
    assert!(matches!(bob.contract(&id).await, Contract::Closed(_)));

    // The CET pays each side exactly its payout for "tails".
    let pays = |p: &Party| -> u64 {
        let w = p.wallet.lock().unwrap();
        cet.output
            .iter()
            .filter(|o| w.is_mine(&o.script_pubkey))
            .map(|o| o.value.to_sat())
            .sum()
    };
    assert_eq!(pays(&alice), btc(0.3).to_sat());
    assert_eq!(pays(&bob), btc(1.7).to_sat());

    alice.sync(&net.chain);
    bob.sync(&net.chain);
    let fund_spent = spent_outputs(&net.chain, &fund);
    for (party, start, payout) in [(&alice, alice_start, btc(0.3)), (&bob, bob_start, btc(1.7))] {
        let put_in = party.net_out(&fund, &fund_spent);
        assert!(put_in > 0);
        let expected = start.to_sat() as i64 - put_in + payout.to_sat() as i64;
        assert_eq!(party.balance().to_sat() as i64, expected);
    }
    // Each side put in its collateral and at most its share of the fees (2 sat/vB).
    let alice_in = alice.net_out(&fund, &fund_spent) as u64;
    let bob_in = bob.net_out(&fund, &fund_spent) as u64;
    assert!(alice_in > btc(1.0).to_sat() && alice_in < btc(1.0).to_sat() + 2_000);
    assert!(bob_in > btc(1.0).to_sat() && bob_in < btc(1.0).to_sat() + 2_000);
    // The funding coins were released by the chain: nothing stays reserved after a new selection.
    let _ = (alice.store.clone(), alice.hsm.clone());
}
