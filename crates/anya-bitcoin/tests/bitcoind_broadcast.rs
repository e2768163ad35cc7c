//! Against a real regtest `bitcoind` (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`): a
//! broadcast the node rejects releases the spending-policy reservation, a wallet of another
//! network is told so before any block is applied, and a birthday keeps a new wallet's first
//! sync from starting at genesis.

use std::sync::Arc;

use anya_bitcoin::policy::SpendPolicy;
use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig, RpcError};
use anya_bitcoin::wallet::AnyaWallet;
use anya_core_types::{Clock, SystemClock};
use anya_testkit::Bitcoind;
use bitcoin::{Amount, FeeRate, Network};

mod common;

use common::fixture::{bip84, fixture, label, Fixture};

fn now() -> u64 {
    SystemClock.now().as_secs()
}

/// A new wallet on `network` whose policy reads the system clock (the node's mempool times
/// are real times).
fn wallet(f: &Fixture, name: &str, network: Network) -> AnyaWallet {
    f.wallet_with(name, &bip84(0), network, Arc::new(SystemClock))
}

fn chain(node: &Bitcoind) -> BitcoindChain {
    BitcoindChain::connect(RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(node.cookie_file()))).expect("connect")
}

#[test]
fn a_rejected_broadcast_releases_its_reservation() {
    let Some(node) = Bitcoind::start() else { return };
    let chain = chain(&node);
    let f = fixture();
    let mut w = wallet(&f, "payer", Network::Regtest);
    let to_wallet = w.next_address().expect("address").address;
    node.mine(1, &to_wallet);
    node.mine(100, &node.new_burn_address());
    chain.sync_wallet(&mut w).expect("synced");
    let funded = w.balance();
    assert_eq!(funded.confirmed, Amount::from_btc(50.0).expect("amount"));
    w.policy()
        .set_rules(&SpendPolicy {
            max_per_24h: Some(Amount::from_btc(1.2).expect("amount")),
            ..SpendPolicy::default()
        })
        .expect("rules");

    // 1 sat/kwu, a fee of a sat or two: under Core's minimum relay fee (0.1 sat/vB since
    // Core 29.1, 1 sat/vB before).
    let payee = node.new_burn_address().script_pubkey();
    let cheap = w
        .send(
            &[(payee.clone(), Amount::from_btc(1.0).expect("amount"))],
            FeeRate::from_sat_per_kwu(1),
            now(),
        )
        .expect("signed under the policy");
    let reserved = w.policy().spent_last_24h().expect("history");
    assert!(reserved > Amount::from_btc(1.0).expect("amount"));

    let err = chain.broadcast_for(&mut w, &cheap).expect_err("below the relay fee");
    let RpcError::Rejected {
        txid,
        code,
        message,
        released,
    } = &err
    else {
        panic!("expected a rejection, got {err:?}")
    };
    assert_eq!(*txid, cheap.compute_txid());
    assert_eq!(*code, -26, "{message}");
    assert!(message.contains("min relay fee not met"), "{message}");
    assert_eq!(*released, Some(reserved));
    let shown = err.to_string();
    assert!(
        shown.contains("min relay fee not met") && shown.contains("was released"),
        "{shown}"
    );

    // Nothing is held back any more: the counter and the balance are as before.
    assert_eq!(w.policy().spent_last_24h().expect("history"), Amount::ZERO);
    assert_eq!(w.balance(), funded);

    // The same payment at a real fee rate goes through and confirms.
    let paid = w
        .send(
            &[(payee, Amount::from_btc(1.0).expect("amount"))],
            FeeRate::from_sat_per_vb(2).expect("fee rate"),
            now(),
        )
        .expect("within the limit again");
    assert_eq!(
        chain.broadcast_for(&mut w, &paid).expect("accepted"),
        paid.compute_txid()
    );
    node.mine(1, &node.new_burn_address());
    chain.sync_wallet(&mut w).expect("synced");
    assert!(w.balance().confirmed < Amount::from_btc(49.0).expect("amount"));

    // Rebroadcasting the confirmed payment is not a rejection and releases nothing.
    let err = chain.broadcast_for(&mut w, &paid).expect_err("already in a block");
    assert!(matches!(err, RpcError::Rpc { code: -27, .. }), "{err:?}");
    assert!(w.policy().spent_last_24h().expect("history") > Amount::from_btc(1.0).expect("amount"));
}

#[test]
fn a_wallet_of_another_network_is_told_the_node_is_not_on_it() {
    let Some(node) = Bitcoind::start() else { return };
    node.mine(3, &node.new_burn_address());
    let chain = chain(&node);
    let f = fixture();
    let mut w = wallet(&f, "signet", Network::Signet);
    let err = chain.sync_wallet(&mut w).expect_err("wrong network");
    let regtest_genesis = bitcoin::constants::genesis_block(Network::Regtest).block_hash();
    assert!(
        matches!(err, RpcError::NetworkMismatch { wallet: Network::Signet, node_genesis } if node_genesis == regtest_genesis),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("the node is not on signet"), "{err}");
    assert_eq!(w.bdk().latest_checkpoint().height(), 0, "nothing applied");

    let mut ok = wallet(&f, "regtest", Network::Regtest);
    assert_eq!(chain.sync_wallet(&mut ok).expect("synced").tip.0, 3);
}

#[test]
fn a_birthday_starts_the_first_sync_there() {
    let Some(node) = Bitcoind::start() else { return };
    node.mine(150, &node.new_burn_address());
    let chain = chain(&node);
    let f = fixture();
    let mut w = wallet(&f, "young", Network::Regtest);
    w.set_birthday(140).expect("birthday");
    let to = w.next_address().expect("address").address;
    node.mine(2, &to);
    let report = chain.sync_wallet(&mut w).expect("synced");
    assert_eq!(report.blocks, 152 - 140 + 1, "blocks 140..=152, not from genesis");
    assert_eq!(report.tip.0, 152);
    // Regtest halves the subsidy every 150 blocks.
    assert_eq!(w.balance().immature, Amount::from_btc(2.0 * 25.0).expect("amount"));

    // Later syncs continue from the tip; a reloaded wallet keeps its birthday.
    node.mine(1, &node.new_burn_address());
    drop(w);
    let mut w = AnyaWallet::load(
        Arc::clone(&f.store),
        Arc::clone(&f.hsm),
        Arc::new(SystemClock),
        label("young"),
    )
    .expect("loads");
    assert_eq!(w.birthday(), Some(140));
    assert_eq!(chain.sync_wallet(&mut w).expect("synced").blocks, 1);

    // A birthday past the node's tip starts at the tip.
    let mut early = wallet(&f, "unborn", Network::Regtest);
    early.set_birthday(10_000).expect("birthday");
    let report = chain.sync_wallet(&mut early).expect("synced");
    assert_eq!((report.blocks, report.tip.0), (1, 153));

    // Without a birthday the scan starts at genesis.
    let mut old = wallet(&f, "old", Network::Regtest);
    assert_eq!(chain.sync_wallet(&mut old).expect("synced").blocks, 153);
}
