//! Spending-policy replacements and releases, watch-only wallets, birthdays and the typed
//! errors of building and bumping, on real regtest blocks mined in-process.

use std::sync::Arc;

use anya_bitcoin::policy::{PolicyError, SpendPolicy, Violation, RELEASE_OUTCOME};
use anya_bitcoin::wallet::{AnyaWallet, WalletError};
use anya_core_types::Clock;
use anya_hsm::Operation;
use anya_storage::{KvStore, Namespace};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, Transaction, Txid};

mod common;

use common::fixture::{bip84, burn, fixture, label, rate, Fixture};

/// A funded wallet whose velocity limit is `limit`.
fn limited(f: &mut Fixture, name: &str, limit: Amount) -> AnyaWallet {
    let mut w = f.wallet(name, &bip84(0));
    f.fund(&mut [&mut w]);
    w.policy()
        .set_rules(&SpendPolicy {
            max_per_24h: Some(limit),
            ..SpendPolicy::default()
        })
        .expect("rules");
    w
}

fn btc(v: f64) -> Amount {
    Amount::from_btc(v).expect("amount")
}

/// Bumps `txid` to `sat_vb`, signs, finalizes and records the replacement as unconfirmed.
fn bump(w: &mut AnyaWallet, txid: Txid, sat_vb: u64, seen_at: u64) -> Result<Transaction, WalletError> {
    let mut psbt = w.bump_fee(txid, rate(sat_vb))?;
    w.sign(&mut psbt)?;
    let tx = w.finalize(&mut psbt)?;
    w.apply_unconfirmed(vec![tx.clone()], seen_at)?;
    Ok(tx)
}

fn fee(w: &AnyaWallet, tx: &Transaction) -> Amount {
    w.bdk().calculate_fee(tx).expect("fee")
}

#[test]
fn a_fee_bump_takes_its_predecessors_place_in_the_velocity_window() {
    let mut f = fixture();
    let mut w = limited(&mut f, "bumped", btc(1.2));
    let original = w.send(&[(burn(), btc(0.5))], rate(2), 10).expect("sent");
    let first = bump(&mut w, original.compute_txid(), 10, 11).expect("first bump");
    // Counted as one payment: only the replacement's value and fee.
    assert_eq!(
        w.policy().spent_last_24h().expect("history"),
        btc(0.5) + fee(&w, &first)
    );
    let second = bump(&mut w, first.compute_txid(), 20, 12).expect("second bump is not counted on top");
    assert_eq!(
        w.policy().spent_last_24h().expect("history"),
        btc(0.5) + fee(&w, &second)
    );

    // A second, separate payment still counts on top, and the limit still holds.
    let err = w
        .send(&[(burn(), btc(0.7))], rate(2), 13)
        .expect_err("over the velocity limit");
    assert!(
        matches!(&err, WalletError::Policy(PolicyError::Refused(r))
            if matches!(r.violations[..], [Violation::VelocityOverLimit { .. }])),
        "{err:?}"
    );

    // The replacement keeps the original's time: the window ends 24 h after the first
    // approval, not after the last bump.
    f.clock.advance(24 * 60 * 60);
    assert_eq!(w.policy().spent_last_24h().expect("history"), Amount::ZERO);

    // Only the last replacement goes into a block.
    f.mine(&burn(), vec![second], &mut [&mut w]);
}

#[test]
fn a_replacement_keeps_the_earliest_time() {
    let mut f = fixture();
    let mut w = limited(&mut f, "timed", btc(1.2));
    let original = w.send(&[(burn(), btc(0.5))], rate(2), 10).expect("sent");
    f.clock.advance(12 * 60 * 60);
    bump(&mut w, original.compute_txid(), 10, 11).expect("bumped half a day later");
    f.clock.advance(12 * 60 * 60);
    // 24 h after the original: the bump left the window with it.
    assert_eq!(w.policy().spent_last_24h().expect("history"), Amount::ZERO);
}

#[test]
fn release_returns_the_reservation_and_the_pending_balance() {
    let mut f = fixture();
    let mut w = limited(&mut f, "released", btc(1.2));
    let before = w.balance();
    let tx = w.send(&[(burn(), btc(1.0))], rate(2), 10).expect("sent");
    let txid = tx.compute_txid();
    let reserved = w.policy().spent_last_24h().expect("history");
    assert_eq!(reserved, btc(1.0) + fee(&w, &tx));
    assert_ne!(w.balance(), before, "the spend is pending");

    // The node refused it: what it reserved comes back, and it stops being pending.
    assert_eq!(w.release(txid).expect("released"), Some(reserved));
    assert_eq!(w.policy().spent_last_24h().expect("history"), Amount::ZERO);
    assert_eq!(w.balance(), before);
    assert!(w.bdk().get_tx(txid).is_none(), "no longer in the wallet's view");
    assert_eq!(w.release(txid).expect("second release"), None);

    // The release is in the HSM's audit chain, under the txid.
    let records = f.hsm.audit_records(0, 10_000).expect("records");
    let last = records
        .iter()
        .rev()
        .find(|r| r.operation == Operation::Decision)
        .expect("a decision");
    assert_eq!(last.outcome, RELEASE_OUTCOME);
    assert_eq!(last.input_hash, Some(txid.to_byte_array()));

    // The limit is free again for a payment that does reach the chain, from the same coins.
    let again = w.send(&[(burn(), btc(1.0))], rate(3), 20).expect("sent again");
    f.mine(&burn(), vec![again.clone()], &mut [&mut w]);
    let err = w.release(again.compute_txid()).expect_err("confirmed");
    assert!(matches!(err, WalletError::AlreadyConfirmed { .. }), "{err:?}");
}

#[test]
fn releasing_a_rejected_bump_puts_the_original_back() {
    let mut f = fixture();
    let mut w = limited(&mut f, "rebump", btc(1.2));
    let original = w.send(&[(burn(), btc(0.5))], rate(2), 10).expect("sent");
    let counted = w.policy().spent_last_24h().expect("history");
    let bumped = bump(&mut w, original.compute_txid(), 10, 11).expect("bumped");
    // The node refused the bump; the original may still be in mempools, so it counts again.
    let released = w.release(bumped.compute_txid()).expect("released");
    assert_eq!(released, Some(btc(0.5) + fee(&w, &bumped)));
    assert_eq!(w.policy().spent_last_24h().expect("history"), counted);
    // And a payment on top of it is judged with it.
    let err = w.send(&[(burn(), btc(0.7))], rate(2), 12).expect_err("over the limit");
    assert!(matches!(err, WalletError::Policy(PolicyError::Refused(_))), "{err:?}");
}

#[test]
fn spend_records_written_before_inputs_were_kept_still_count() {
    let f = fixture();
    let ns = Namespace::new("anya/wallet/old/policy").expect("ns");
    let engine = anya_bitcoin::policy::PolicyEngine::new(Arc::clone(&f.store), ns.clone(), f.clock.clone());
    // The first record format: `s/` + time + txid -> sats, `t/` + txid -> time.
    let now = f.clock.now().as_secs();
    let txid = Txid::from_byte_array([7; 32]);
    let mut key = b"s/".to_vec();
    key.extend_from_slice(&now.to_be_bytes());
    key.extend_from_slice(&txid.to_byte_array());
    f.store.put(&ns, &key, &40_000u64.to_be_bytes()).expect("spend");
    let mut key = b"t/".to_vec();
    key.extend_from_slice(&txid.to_byte_array());
    f.store.put(&ns, &key, &now.to_be_bytes()).expect("txid");
    assert_eq!(engine.spent_last_24h().expect("history"), Amount::from_sat(40_000));
    assert_eq!(engine.release(txid).expect("released"), Some(Amount::from_sat(40_000)));
    assert_eq!(engine.spent_last_24h().expect("history"), Amount::ZERO);
}

#[test]
fn watch_only_wallet_reads_without_the_hsm_and_refuses_to_sign() {
    let mut f = fixture();
    let mut w = f.wallet("watched", &bip84(0));
    f.fund(&mut [&mut w]);
    let balance = w.balance();
    let next = w.next_address().expect("address");
    drop(w);

    let mut watch = AnyaWallet::load_watch_only(Arc::clone(&f.store), f.clock.clone(), label("watched"))
        .expect("opens without an HSM");
    assert!(watch.is_watch_only());
    assert_eq!(watch.balance(), balance);
    assert_eq!(watch.next_address().expect("address").index, next.index + 1);
    let block = f.chain.tip().clone();
    f.chain.mine(&burn(), Vec::new()).expect("block");
    let _ = block;
    let (height, tip) = (f.chain.height(), f.chain.tip().clone());
    watch.apply_block(&tip, height).expect("syncs");

    let mut psbt = watch
        .build(&[(burn(), btc(1.0))], rate(2))
        .expect("unsigned PSBTs build");
    for err in [
        watch.sign(&mut psbt).expect_err("no HSM"),
        watch.send(&[(burn(), btc(1.0))], rate(2), 1).expect_err("no HSM"),
        watch.release(psbt.unsigned_tx.compute_txid()).expect_err("no HSM"),
    ] {
        assert!(
            matches!(&err, WalletError::WatchOnly { name } if name.as_str() == "watched"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "wallet watched is open watch-only; load it with its HSM to sign"
        );
    }
    assert_eq!(
        watch.policy().spent_last_24h().expect("history"),
        Amount::ZERO,
        "nothing approved"
    );

    let err = AnyaWallet::load_watch_only(Arc::clone(&f.store), f.clock.clone(), label("nobody")).expect_err("none");
    assert!(matches!(err, WalletError::NotFound { .. }), "{err:?}");
}

#[test]
fn birthday_is_stored_beside_the_wallet() {
    let f = fixture();
    let mut w = f.wallet("born", &bip84(0));
    assert_eq!(w.birthday(), None);
    w.set_birthday(840_000).expect("stored");
    assert_eq!(w.birthday(), Some(840_000));
    drop(w);
    let w = AnyaWallet::load(Arc::clone(&f.store), Arc::clone(&f.hsm), f.clock.clone(), label("born")).expect("loads");
    assert_eq!(w.birthday(), Some(840_000));
    let watch = AnyaWallet::load_watch_only(Arc::clone(&f.store), f.clock.clone(), label("born")).expect("loads");
    assert_eq!(watch.birthday(), Some(840_000));
}

#[test]
fn dust_payment_names_its_value_and_the_limit() {
    let mut f = fixture();
    let mut w = f.wallet("dusty", &bip84(0));
    f.fund(&mut [&mut w]);
    let err = w.build(&[(burn(), Amount::from_sat(100))], rate(2)).expect_err("dust");
    assert!(
        matches!(err, WalletError::BelowDust { index: 0, value, min }
            if value == Amount::from_sat(100) && min == Amount::from_sat(294)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "output 0 pays 100 sat, below the dust limit of 294 sat for its script"
    );
}

#[test]
fn bumping_what_cannot_be_bumped_says_why() {
    let mut f = fixture();
    let mut w = f.wallet("bumps", &bip84(0));
    f.fund(&mut [&mut w]);
    let original = w.send(&[(burn(), btc(0.5))], rate(2), 10).expect("sent");
    let replacement = bump(&mut w, original.compute_txid(), 10, 11).expect("bumped");

    let err = w.bump_fee(original.compute_txid(), rate(20)).expect_err("replaced");
    assert!(
        matches!(err, WalletError::AlreadyReplaced { txid } if txid == original.compute_txid()),
        "{err:?}"
    );
    assert!(err.to_string().contains("already replaced"), "{err}");

    let unknown = Txid::from_byte_array([9; 32]);
    let err = w.bump_fee(unknown, rate(20)).expect_err("unknown");
    assert!(
        matches!(err, WalletError::UnknownTransaction { txid } if txid == unknown),
        "{err:?}"
    );

    f.mine(&burn(), vec![replacement.clone()], &mut [&mut w]);
    let err = w.bump_fee(replacement.compute_txid(), rate(20)).expect_err("confirmed");
    assert!(matches!(err, WalletError::AlreadyConfirmed { .. }), "{err:?}");
    assert!(err.to_string().contains("already confirmed"), "{err}");

    // Released (the node refused it): not in the mempool, nothing to bump.
    let refused = w.send(&[(burn(), btc(0.1))], rate(2), 20).expect("sent");
    w.release(refused.compute_txid()).expect("released");
    let err = w.bump_fee(refused.compute_txid(), rate(20)).expect_err("evicted");
    assert!(matches!(err, WalletError::NotInMempool { .. }), "{err:?}");
}

#[test]
fn a_replacement_made_in_the_second_its_original_was_seen_takes_its_place() {
    // BDK chooses between conflicting unconfirmed transactions by their seen-at seconds; a
    // replacement recorded in the same second as its original must still replace it (before
    // the fix, each case here was a tie that txid order decided).
    let mut f = fixture();
    let mut w = f.wallet("ties", &bip84(0));
    f.fund(&mut [&mut w]);
    for i in 0..8u64 {
        let at = 100 + i;
        let original = w.send(&[(burn(), btc(0.01))], rate(2), at).expect("sent");
        bump(&mut w, original.compute_txid(), 10, at).expect("bumped");
        let err = w.bump_fee(original.compute_txid(), rate(20)).expect_err("replaced");
        assert!(matches!(err, WalletError::AlreadyReplaced { .. }), "case {i}: {err:?}");
    }
}
