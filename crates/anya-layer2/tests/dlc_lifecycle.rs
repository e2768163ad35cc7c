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
use anya_hsm::{HsmProvider, KeyPolicy, KeySpec, Operation, Usage};
use anya_layer2::dlc::contracts::{
    BitcoindBlockchain, ClockTime, DlcManager, DlcWallet, HsmContractSignerProvider, KvDlcStorage, LocalOracle,
    TracingLogger,
};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::hashes::Hash as _;
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
    dir: tempfile::TempDir,
    name: String,
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
    async fn restart(self, net: &Net) -> Self {
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

/// Two parties with one confirmed, mature 50 BTC coin each, synced.
async fn parties(net: &Net) -> (Party, Party) {
    let alice = Party::new(net, "alice").await;
    let bob = Party::new(net, "bob").await;
    net.mine(100);
    alice.sync(&net.chain);
    bob.sync(&net.chain);
    assert_eq!(alice.balance(), btc(50.0));
    assert_eq!(bob.balance(), btc(50.0));
    (alice, bob)
}

/// What `tx` pays `party`'s wallet.
fn pays(party: &Party, tx: &Transaction) -> Amount {
    let w = party.wallet.lock().unwrap();
    tx.output
        .iter()
        .filter(|o| w.is_mine(&o.script_pubkey))
        .map(|o| o.value)
        .sum()
}

/// After `fund` and `close` confirmed: each party's balance is its start, minus what it put
/// into the funding transaction, plus `payout`; `close` pays it exactly `payout`; and what it
/// put in is its collateral plus at most its share of the fees at 2 sat/vB.
fn assert_settled(net: &Net, fund: &Transaction, close: &Transaction, sides: &[(&Party, Amount, Amount)]) {
    let fund_spent = spent_outputs(&net.chain, fund);
    for (party, collateral, payout) in sides {
        party.sync(&net.chain);
        assert_eq!(pays(party, close), *payout, "{} is paid its payout", party.name);
        let put_in = party.net_out(fund, &fund_spent);
        let put_in = u64::try_from(put_in).expect("each side puts money in");
        assert!(
            put_in > collateral.to_sat() && put_in < collateral.to_sat() + 2_000,
            "{} put in {put_in} sat for a collateral of {collateral}",
            party.name
        );
        assert_eq!(
            party.balance(),
            btc(50.0) - Amount::from_sat(put_in) + *payout,
            "{}'s balance to the satoshi",
            party.name
        );
        // The funding coins are spent: no reservation is left once the wallet selects again.
        let _ = party.wallet.lock().unwrap().select_coins(Amount::from_sat(1), false);
    }
    assert_eq!(
        net.chain
            .confirmations(&close.compute_txid())
            .expect("rpc")
            .map(|c| c >= 3),
        Some(true)
    );
}

/// The funding transaction of a signed contract.
async fn funding(party: &Party, id: &ContractId) -> Transaction {
    match party.contract(id).await {
        Contract::Signed(c) | Contract::Confirmed(c) | Contract::Refunded(c) => {
            c.accepted_contract.dlc_transactions.fund
        }
        Contract::PreClosed(c) => c.signed_contract.accepted_contract.dlc_transactions.fund,
        Contract::Closed(c) => c.signed_contract.accepted_contract.dlc_transactions.fund,
        other => panic!("{} has no funding transaction in state {other:?}", party.name),
    }
}

const PAYOUTS: [(&str, f64, f64); 2] = [("heads", 1.6, 0.4), ("tails", 0.3, 1.7)];

fn coin_event(net: &Net, id: &str, maturity: u32) -> ContractInput {
    let oracle = &net.oracle_fixture.oracle;
    oracle
        .create_enum_event(id, maturity, vec!["heads".to_owned(), "tails".to_owned()])
        .expect("event");
    let payouts: Vec<(&str, Amount, Amount)> = PAYOUTS.iter().map(|(o, a, b)| (*o, btc(*a), btc(*b))).collect();
    enum_input(oracle, id, &payouts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_contract_closes_by_cet_with_the_payouts_to_the_satoshi() {
    let Some(net) = net() else { return };
    let (alice, bob) = parties(&net).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let id = open(&alice, &bob, &input).await;

    assert!(matches!(alice.contract(&id).await, Contract::Signed(_)));
    assert!(matches!(bob.contract(&id).await, Contract::Signed(_)));
    let fund = funding(&alice, &id).await;
    assert_eq!(fund, funding(&bob, &id).await);
    // The funding coins are reserved in the store until they are spent.
    let reserved = alice.wallet.lock().unwrap().reserved().expect("reserved");
    assert!(!reserved.is_empty());
    assert!(reserved
        .iter()
        .all(|o| fund.input.iter().any(|i| i.previous_output == *o)));

    net.mine(3);
    alice.tick().await;
    bob.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Confirmed(_)));
    assert!(matches!(bob.contract(&id).await, Contract::Confirmed(_)));

    net.advance_to(u64::from(maturity) + 60);
    net.oracle_fixture
        .oracle
        .attest_enum("coin", "tails")
        .expect("attested");
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

    assert_settled(
        &net,
        &fund,
        &cet,
        &[(&alice, btc(1.0), btc(0.3)), (&bob, btc(1.0), btc(1.7))],
    );

    // The funding was approved by each wallet's spending policy, and each contract key that
    // left the HSM left through the audited DLC export.
    for party in [&alice, &bob] {
        let records = party.hsm.audit_records(0, 10_000).expect("audit");
        let fund_subject = fund.compute_txid().to_byte_array();
        assert!(records
            .iter()
            .any(|r| r.operation == Operation::Decision && r.input_hash == Some(fund_subject) && r.outcome == 0));
        let exports = records
            .iter()
            .filter(|r| r.operation == Operation::ExportScopedChild)
            .count();
        assert!(
            exports >= 1,
            "{} exported its contract key through the audited scope",
            party.name
        );
        assert!(records.iter().all(|r| r.operation != Operation::ExportKey));
        party.hsm.verify_audit_chain().expect("chain verifies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unattested_contract_is_refunded_after_its_refund_locktime() {
    let Some(net) = net() else { return };
    let (alice, bob) = parties(&net).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "never", maturity);
    let id = open(&alice, &bob, &input).await;
    let fund = funding(&alice, &id).await;
    net.mine(3);
    alice.tick().await;
    bob.tick().await;
    let Contract::Confirmed(c) = alice.contract(&id).await else {
        panic!("confirmed")
    };
    let refund_locktime = u64::from(c.accepted_contract.dlc_transactions.refund.lock_time.to_consensus_u32());
    assert_eq!(
        refund_locktime,
        u64::from(maturity) + u64::from(ddk_manager::manager::REFUND_DELAY)
    );

    // Past maturity but before the refund locktime, with no attestation: nothing happens.
    net.advance_to(u64::from(maturity) + 3600);
    alice.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Confirmed(_)));

    net.advance_to(refund_locktime + 60);
    alice.tick().await;
    let Contract::Refunded(r) = alice.contract(&id).await else {
        panic!("alice broadcast the refund")
    };
    let refund = r.accepted_contract.dlc_transactions.refund.clone();
    net.mine(3);
    bob.tick().await;
    assert!(
        !matches!(bob.contract(&id).await, Contract::Confirmed(_)),
        "bob saw the refund"
    );
    // The refund transaction as the chain has it (signed), paying each side its collateral.
    let refund = net
        .chain
        .transaction(&refund.compute_txid())
        .expect("rpc")
        .expect("on chain");
    assert_settled(
        &net,
        &fund,
        &refund,
        &[(&alice, btc(1.0), btc(1.0)), (&bob, btc(1.0), btc(1.0))],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_offline_after_signing_finds_its_payout_when_it_returns() {
    let Some(net) = net() else { return };
    let (alice, bob) = parties(&net).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "away", maturity);
    let id = open(&alice, &bob, &input).await;
    let fund = funding(&bob, &id).await;

    // Alice's process stops once the contract is signed; Bob carries on alone.
    let alice_dir_kept = alice;
    net.mine(3);
    bob.tick().await;
    net.advance_to(u64::from(maturity) + 60);
    net.oracle_fixture
        .oracle
        .attest_enum("away", "heads")
        .expect("attested");
    bob.tick().await;
    let Contract::PreClosed(pre) = bob.contract(&id).await else {
        panic!("bob broadcast the CET")
    };
    let cet = pre.signed_cet.clone();
    net.mine(3);
    bob.tick().await;
    assert!(matches!(bob.contract(&id).await, Contract::Closed(_)));

    // Alice comes back on the same store: her manager finds the contract and the CET.
    let alice = alice_dir_kept.restart(&net).await;
    alice.tick().await;
    assert!(
        matches!(alice.contract(&id).await, Contract::Closed(_) | Contract::PreClosed(_)),
        "alice's manager saw the CET"
    );
    alice.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Closed(_)));
    assert_settled(
        &net,
        &fund,
        &cet,
        &[(&alice, btc(1.0), btc(1.6)), (&bob, btc(1.0), btc(0.4))],
    );
}
