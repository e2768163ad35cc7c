//! Wallet sync through [`BitcoindChain`] against a real regtest `bitcoind`
//! (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`): coinbase and wallet-to-wallet receives,
//! spends and confirmations, a reorg that takes a confirmed receive and spend away, mempool
//! replacement and eviction, and a sync that resumes from its stored checkpoint.

use std::collections::BTreeSet;
use std::sync::Arc;

use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, Label, SystemClock};
use anya_hsm::HsmProvider;
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::{Address, Amount, FeeRate, Network, Transaction, Txid};
use serde_json::json;

/// A wallet in a store of its own (with its own software HSM), reloadable from that store.
struct Party {
    _dir: tempfile::TempDir,
    name: Label,
    store: Arc<dyn KvStore>,
    hsm: Arc<dyn HsmProvider>,
    wallet: AnyaWallet,
}

fn label(s: &str) -> Label {
    Label::new(s).expect("valid label")
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn now() -> u64 {
    SystemClock.now().as_secs()
}

impl Party {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("anya.db"), SqliteOptions::default()).expect("store"));
        let hsm = anya_hsm::conformance::software_on(Arc::clone(&store));
        anya_hsm::conformance::generate_test_root(&hsm, &label("root"));
        let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
        let template = Template::Bip86 {
            root: label("root"),
            account: 0,
        };
        let name = label(name);
        let wallet = AnyaWallet::create(
            Arc::clone(&store),
            Arc::clone(&hsm),
            clock(),
            name.clone(),
            &template,
            Network::Regtest,
        )
        .expect("wallet created");
        Self {
            _dir: dir,
            name,
            store,
            hsm,
            wallet,
        }
    }

    /// Drops the wallet in memory and loads it again from the store, as a restarted process
    /// would.
    fn reload(&mut self) {
        self.wallet = AnyaWallet::load(
            Arc::clone(&self.store),
            Arc::clone(&self.hsm),
            clock(),
            self.name.clone(),
        )
        .expect("wallet reloads");
    }

    fn address(&mut self) -> Address {
        self.wallet.next_address().expect("address").address
    }

    fn pay(&mut self, to: &Address, amount: Amount) -> Transaction {
        self.wallet
            .send(&[(to.script_pubkey(), amount)], rate(2), now())
            .expect("payment built, approved, signed and verified")
    }

    /// The txids the wallet holds as part of its history (canonical: confirmed, or pending
    /// and not replaced or evicted).
    fn history(&self) -> BTreeSet<Txid> {
        self.wallet.bdk().transactions().map(|t| t.tx_node.txid).collect()
    }

    fn confirmed(&self, txid: Txid) -> bool {
        self.wallet
            .bdk()
            .get_tx(txid)
            .is_some_and(|t| t.chain_position.is_confirmed())
    }
}

fn rate(sat_vb: u64) -> FeeRate {
    FeeRate::from_sat_per_vb(sat_vb).expect("fee rate")
}

fn chain(node: &Bitcoind) -> BitcoindChain {
    BitcoindChain::connect(RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(node.cookie_file()))).expect("client")
}

fn btc(n: u64) -> Amount {
    Amount::from_int_btc(n)
}

#[test]
fn coinbase_and_wallet_payments_sync_spend_and_confirm() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = chain(&node);
    let (mut alice, mut bob) = (Party::new("alice"), Party::new("bob"));

    let to_alice = alice.address();
    node.mine(101, &to_alice);
    let report = chain.sync_wallet(&mut alice.wallet).expect("synced");
    assert_eq!(report.blocks, 101);
    assert_eq!(report.tip, chain.tip().expect("tip"));
    let balance = alice.wallet.balance();
    // Coinbase maturity is 100 blocks: at tip 101 the coinbases of heights 1 and 2 may be
    // spent in the next block (Core's rule, and BDK's), the other 99 are immature.
    assert_eq!(balance.confirmed, btc(100), "two mature coinbases");
    assert_eq!(balance.immature, btc(50 * 99));

    // Alice pays Bob from her mature coins; both see it pending, then confirmed.
    let to_bob = bob.address();
    let payment = alice.pay(&to_bob, btc(60));
    let txid = chain.broadcast(&payment).expect("accepted by bitcoind");
    assert_eq!(chain.confirmations(&txid).expect("in the mempool"), Some(0));
    let report = chain.sync_wallet(&mut bob.wallet).expect("bob synced");
    assert_eq!(report.blocks, 101);
    assert_eq!(bob.wallet.balance().untrusted_pending, btc(60));
    assert!(bob.history().contains(&txid));
    chain.sync_wallet(&mut alice.wallet).expect("alice synced");
    let fee = alice.wallet.bdk().calculate_fee(&payment).expect("fee");
    assert_eq!(alice.wallet.balance().trusted_pending, btc(40) - fee, "alice's change");

    node.mine(1, &node.new_burn_address());
    let report = chain.sync_wallet(&mut bob.wallet).expect("bob synced");
    assert_eq!(report.blocks, 1);
    assert_eq!(bob.wallet.balance().confirmed, btc(60));
    assert!(bob.confirmed(txid));
    chain.sync_wallet(&mut alice.wallet).expect("alice synced");
    assert!(alice.confirmed(txid));
    assert_eq!(chain.confirmations(&txid).expect("mined"), Some(1));

    // Bob spends what he received; the spend confirms and both balances follow it.
    let spend = bob.pay(&node.new_burn_address(), btc(25));
    let spend_txid = chain.broadcast(&spend).expect("accepted");
    node.mine(1, &node.new_burn_address());
    chain.sync_wallet(&mut bob.wallet).expect("bob synced");
    let spend_fee = bob.wallet.bdk().calculate_fee(&spend).expect("fee");
    assert_eq!(bob.wallet.balance().confirmed, btc(35) - spend_fee);
    assert_eq!(bob.wallet.balance().trusted_pending, Amount::ZERO);
    assert!(bob.confirmed(spend_txid));
    assert_eq!(bob.history(), BTreeSet::from([txid, spend_txid]));

    // What the wallet has stored survives a restart of the process.
    bob.reload();
    assert_eq!(bob.wallet.balance().confirmed, btc(35) - spend_fee);
    assert_eq!(bob.wallet.bdk().latest_checkpoint().height(), 103);
}

#[test]
fn reorg_takes_a_confirmed_receive_and_spend_away() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = chain(&node);
    let (mut alice, mut bob) = (Party::new("alice"), Party::new("bob"));

    // One coinbase to Alice at height 1, buried under 100 blocks so that it is mature.
    let to_alice = alice.address();
    let fork_point = node.mine(1, &to_alice)[0];
    node.mine(100, &node.new_burn_address());
    chain.sync_wallet(&mut alice.wallet).expect("synced");
    assert_eq!(alice.wallet.balance().confirmed, btc(50));

    // Alice pays Bob; it confirms at height 102 and both wallets see it confirmed.
    let to_bob = bob.address();
    let payment = alice.pay(&to_bob, btc(10));
    let txid = chain.broadcast(&payment).expect("accepted");
    node.mine(1, &node.new_burn_address());
    chain.sync_wallet(&mut alice.wallet).expect("synced");
    chain.sync_wallet(&mut bob.wallet).expect("synced");
    assert!(alice.confirmed(txid) && bob.confirmed(txid));
    assert_eq!(bob.wallet.balance().confirmed, btc(10));
    assert_eq!(alice.history().len(), 2, "the coinbase and the payment");

    // A longer chain without block 1 replaces everything: Alice's coinbase never existed, so
    // her payment is invalid (Core drops it from the mempool) and Bob's receive is gone. The
    // replacement blocks pay a new address: re-mining to the old one would rebuild the
    // invalidated block, which Core refuses.
    node.rpc::<serde_json::Value>("invalidateblock", &[json!(fork_point)]);
    node.mine(103, &node.new_burn_address());
    let tip = chain.tip().expect("tip");
    assert_eq!(tip.0, 103);
    assert_eq!(chain.confirmations(&txid).expect("answer"), None, "gone from the node");

    let report = chain.sync_wallet(&mut alice.wallet).expect("alice follows the reorg");
    assert_eq!(report.tip, tip);
    assert_eq!(report.blocks, 103, "every replacement block is applied");
    assert_eq!(alice.wallet.balance().total(), Amount::ZERO);
    assert!(alice.history().is_empty(), "{:?}", alice.history());

    let report = chain.sync_wallet(&mut bob.wallet).expect("bob follows the reorg");
    assert_eq!(report.tip, tip);
    assert!(
        report.evicted.contains(&txid),
        "the payment left the chain and the mempool: {report:?}"
    );
    assert_eq!(bob.wallet.balance().total(), Amount::ZERO);
    assert!(bob.history().is_empty(), "{:?}", bob.history());

    // The stored state agrees after a restart.
    bob.reload();
    assert_eq!(bob.wallet.balance().total(), Amount::ZERO);
    assert_eq!(bob.wallet.bdk().latest_checkpoint().hash(), tip.1);
}

#[test]
fn reorg_that_keeps_a_spend_returns_it_to_pending_then_confirms_it_again() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = chain(&node);
    let mut alice = Party::new("alice");
    let to_alice = alice.address();
    node.mine(101, &to_alice);
    chain.sync_wallet(&mut alice.wallet).expect("synced");

    let spend = alice.pay(&node.new_burn_address(), btc(1));
    let txid = chain.broadcast(&spend).expect("accepted");
    assert_eq!(chain.broadcast(&spend).expect("rebroadcast is harmless"), txid);
    let mined = node.mine(1, &node.new_burn_address())[0];
    chain.sync_wallet(&mut alice.wallet).expect("synced");
    assert!(alice.confirmed(txid));
    assert_eq!(chain.confirmations_in(&txid, &mined).expect("known"), Some(1));

    // A competing block without the spend replaces the tip (Core puts the spend back in its
    // mempool): the wallet shows it pending again, not dropped and not confirmed.
    node.rpc::<serde_json::Value>("invalidateblock", &[json!(mined)]);
    let competing = node.mine_with(&node.new_burn_address(), &[]);
    let report = chain.sync_wallet(&mut alice.wallet).expect("synced");
    assert_eq!(report.tip, (102, competing));
    assert!(!alice.confirmed(txid));
    assert!(alice.history().contains(&txid), "pending, not dropped");
    assert_eq!(chain.confirmations(&txid).expect("in the mempool"), Some(0));
    assert_eq!(chain.confirmations_in(&txid, &mined).expect("stale block"), Some(0));

    // The next block confirms it again.
    node.mine(1, &node.new_burn_address());
    let report = chain.sync_wallet(&mut alice.wallet).expect("synced across the reorg");
    assert_eq!(report.tip, chain.tip().expect("tip"));
    assert!(alice.confirmed(txid));
    assert_eq!(chain.confirmations(&txid).expect("mined"), Some(1));
}

#[test]
fn replaced_and_evicted_mempool_transactions_are_reflected() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = chain(&node);
    let (mut alice, mut bob) = (Party::new("alice"), Party::new("bob"));
    let to_alice = alice.address();
    node.mine(101, &to_alice);
    chain.sync_wallet(&mut alice.wallet).expect("synced");

    // Alice pays Bob at 2 sat/vB, then replaces it at 10 sat/vB (BIP125).
    let to_bob = bob.address();
    let first = alice.pay(&to_bob, btc(5));
    let first_txid = chain.broadcast(&first).expect("accepted");
    chain.sync_wallet(&mut bob.wallet).expect("synced");
    assert_eq!(bob.wallet.balance().untrusted_pending, btc(5));

    let mut psbt = alice.wallet.bump_fee(first_txid, rate(10)).expect("replacement built");
    alice.wallet.sign(&mut psbt).expect("signed");
    let second = alice.wallet.finalize(&mut psbt).expect("finalized");
    let second_txid = chain.broadcast(&second).expect("replacement accepted");
    assert_eq!(
        chain.confirmations(&first_txid).expect("answer"),
        None,
        "replaced in Core"
    );

    // Bob counts the payment once: the replacement is pending, the original is gone.
    let report = chain.sync_wallet(&mut bob.wallet).expect("synced");
    assert!(report.evicted.contains(&first_txid), "{report:?}");
    assert_eq!(bob.wallet.balance().untrusted_pending, btc(5));
    assert_eq!(bob.history(), BTreeSet::from([second_txid]));
    chain.sync_wallet(&mut alice.wallet).expect("synced");
    assert!(!alice.history().contains(&first_txid));
    assert!(alice.history().contains(&second_txid));

    // A transaction the wallet holds but the node never saw (signed, never broadcast) is
    // evicted on the next sync and stops counting as pending.
    let before = alice.wallet.balance();
    let unsent = alice.pay(&node.new_burn_address(), btc(1));
    let unsent_txid = unsent.compute_txid();
    assert!(alice.history().contains(&unsent_txid));
    let report = chain.sync_wallet(&mut alice.wallet).expect("synced");
    assert!(report.evicted.contains(&unsent_txid), "{report:?}");
    assert!(!alice.history().contains(&unsent_txid));
    assert_eq!(alice.wallet.balance(), before);

    node.mine(1, &node.new_burn_address());
    chain.sync_wallet(&mut bob.wallet).expect("synced");
    assert_eq!(bob.wallet.balance().confirmed, btc(5));
    assert!(bob.confirmed(second_txid));
}

#[test]
fn interrupted_sync_resumes_from_the_stored_checkpoint() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = chain(&node);
    let mut alice = Party::new("alice");
    let to_alice = alice.address();
    // 140 blocks: regtest halves the subsidy at height 150.
    node.mine(140, &to_alice);

    // A process that stopped after 60 blocks: each block was stored as it was applied.
    for height in 1..=60 {
        let block = chain.block(height).expect("block");
        alice.wallet.apply_block(&block, height).expect("applied");
    }
    alice.reload();
    assert_eq!(alice.wallet.bdk().latest_checkpoint().height(), 60);
    let report = chain.sync_wallet(&mut alice.wallet).expect("resumed");
    assert_eq!(report.blocks, 80, "blocks 61 to 140, not from genesis");
    assert_eq!(report.tip, chain.tip().expect("tip"));
    assert_eq!(alice.wallet.balance().total(), btc(50 * 140));

    // Nothing new: nothing applied. A restarted process starts from the same place.
    alice.reload();
    assert_eq!(chain.sync_wallet(&mut alice.wallet).expect("synced").blocks, 0);
}

/// The package fee rate Core computes for `txid` and its unconfirmed ancestors, in sat/vB.
fn ancestor_rate(node: &Bitcoind, txid: Txid) -> f64 {
    let entry: serde_json::Value = node.rpc("getmempoolentry", &[json!(txid)]);
    let fee = Amount::from_btc(entry["fees"]["ancestor"].as_f64().expect("ancestor fee")).expect("amount");
    let vsize = entry["ancestorsize"].as_u64().expect("ancestor size");
    fee.to_sat() as f64 / vsize as f64
}

#[test]
fn cpfp_lifts_a_stuck_payment_to_the_package_rate_core_computes() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = chain(&node);
    let (mut alice, mut bob) = (Party::new("alice"), Party::new("bob"));
    let to_alice = alice.address();
    node.mine(1, &to_alice);
    node.mine(100, &node.new_burn_address());
    chain.sync_wallet(&mut alice.wallet).expect("synced");

    // Alice pays Bob at 1 sat/vB: stuck behind anything paying more.
    let to_bob = bob.address();
    let payment = alice
        .wallet
        .send(&[(to_bob.script_pubkey(), btc(10))], rate(1), now())
        .expect("payment");
    let parent = chain.broadcast(&payment).expect("accepted");
    chain.sync_wallet(&mut bob.wallet).expect("bob synced");
    chain.sync_wallet(&mut alice.wallet).expect("alice synced");

    // Bob did not send it, so his wallet cannot know its fee; the node's mempool does, and it
    // agrees with the fee Alice's wallet computes from the outputs she spent.
    let err = bob.wallet.cpfp(parent, rate(20)).unwrap_err();
    assert!(
        matches!(err, anya_bitcoin::wallet::WalletError::ParentFeeUnknown { txid } if txid == parent),
        "{err}"
    );
    let fee = chain.mempool_fee(&parent).expect("rpc").expect("in the mempool");
    assert_eq!(fee, alice.wallet.bdk().calculate_fee(&payment).expect("alice's fee"));

    // Bob's child brings parent and child to 20 sat/vB as Core counts the package.
    let mut psbt = bob
        .wallet
        .cpfp_with_parent_fee(parent, fee, rate(20))
        .expect("child built");
    let child = bob.wallet.complete(&mut psbt, now()).expect("child signed");
    let child_txid = chain.broadcast(&child).expect("child accepted");
    let package = ancestor_rate(&node, child_txid);
    assert!((20.0..21.0).contains(&package), "bob's package pays {package} sat/vB");

    // Alice's own child, from her change, sized from the fee her wallet computes: 30 sat/vB.
    let mut psbt = alice.wallet.cpfp(parent, rate(30)).expect("alice's child");
    let child = alice.wallet.complete(&mut psbt, now()).expect("signed");
    let child_txid = chain.broadcast(&child).expect("accepted");
    let package = ancestor_rate(&node, child_txid);
    assert!((30.0..31.0).contains(&package), "alice's package pays {package} sat/vB");

    // Once it confirms, there is nothing to bump.
    node.mine(1, &node.new_burn_address());
    chain.sync_wallet(&mut alice.wallet).expect("synced");
    assert!(alice.confirmed(parent));
    let err = alice.wallet.cpfp(parent, rate(40)).unwrap_err();
    assert!(
        matches!(err, anya_bitcoin::wallet::WalletError::AlreadyConfirmed { .. }),
        "{err}"
    );
    assert_eq!(chain.mempool_fee(&parent).expect("rpc"), None);
}
