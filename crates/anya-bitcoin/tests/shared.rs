//! Coins reserved for, and inputs signed into, transactions built with another party (a DLC's
//! funding transaction), on real regtest blocks mined in-process: the chain admits a shared
//! transaction only if Bitcoin Core's interpreter accepts every party's signature.

use std::collections::HashSet;
use std::sync::Arc;

use anya_bitcoin::policy::{OutputRole, PolicyError, SpendPolicy, Violation};
use anya_bitcoin::signer::SignError;
use anya_bitcoin::wallet::{AnyaWallet, Template, WalletError};
use anya_hsm::Operation;
use bdk_wallet::{KeychainKind, LocalOutput};
use bitcoin::hashes::Hash;
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{
    absolute, opcodes, transaction, Amount, EcdsaSighashType, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Witness,
};

mod common;

use common::fixture::{bip84, bip86, burn, fixture, label, rate, Fixture};

fn btc(v: u64) -> Amount {
    Amount::from_int_btc(v)
}

fn sat(v: u64) -> Amount {
    Amount::from_sat(v)
}

/// The wallet's confirmed unspent coins in the order `select_coins` takes them: largest first,
/// then by outpoint.
fn confirmed(w: &AnyaWallet) -> Vec<LocalOutput> {
    let mut coins: Vec<LocalOutput> = w
        .bdk()
        .list_unspent()
        .filter(|u| u.chain_position.is_confirmed())
        .collect();
    coins.sort_by(|a, b| b.txout.value.cmp(&a.txout.value).then(a.outpoint.cmp(&b.outpoint)));
    coins
}

fn outpoints(coins: &[LocalOutput]) -> Vec<OutPoint> {
    coins.iter().map(|c| c.outpoint).collect()
}

fn sorted(mut v: Vec<OutPoint>) -> Vec<OutPoint> {
    v.sort();
    v
}

fn total(coins: &[LocalOutput]) -> Amount {
    coins.iter().map(|c| c.txout.value).sum()
}

/// Pays `values` to fresh addresses of `w` itself in one transaction and confirms it.
fn split(f: &mut Fixture, w: &mut AnyaWallet, values: &[Amount], seen_at: u64) {
    let recipients: Vec<(ScriptBuf, Amount)> = values
        .iter()
        .map(|v| (w.next_address().expect("address").script_pubkey(), *v))
        .collect();
    let tx = w.send(&recipients, rate(2), seen_at).expect("split sent");
    f.mine(&burn(), vec![tx], &mut [&mut *w]);
}

/// A funded wallet `name` holding, confirmed, one coin of each of `values` and the change of
/// the split.
fn wallet_with_coins(f: &mut Fixture, name: &str, values: &[Amount]) -> AnyaWallet {
    let mut w = f.wallet(name, &bip84(0));
    f.fund(&mut [&mut w]);
    split(f, &mut w, values, 1);
    w
}

/// Every input `psbt` spends.
fn inputs_of(psbt: &Psbt) -> Vec<OutPoint> {
    psbt.unsigned_tx.input.iter().map(|i| i.previous_output).collect()
}

#[test]
fn selected_coins_are_reserved_durably_and_kept_from_build() {
    let mut f = fixture();
    let w = wallet_with_coins(&mut f, "reserving", &[btc(9), btc(7), btc(5), btc(3), btc(1)]);
    let coins = confirmed(&w);
    assert_eq!(coins.len(), 6, "five coins and the split's change");
    let change = coins[0].txout.value;
    assert!(change > btc(9), "the change ({change}) is the largest coin");
    assert!(w.reserved().expect("reserved").is_empty());

    // Largest first, and no more coins than the amount needs.
    let wanted = change + sat(1);
    let first = w.select_coins(wanted, true).expect("selected");
    assert_eq!(outpoints(&first), outpoints(&coins[..2]));
    assert!(total(&first) >= wanted);
    assert_eq!(w.reserved().expect("reserved"), sorted(outpoints(&first)));

    // A second selection skips the reserved coins: the next largest are 7 and 5.
    let second = w.select_coins(btc(11), true).expect("selected");
    assert_eq!(outpoints(&second), outpoints(&coins[2..4]));
    let mut all = outpoints(&first);
    all.extend(outpoints(&second));
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 4, "no coin twice");
    assert_eq!(w.reserved().expect("reserved"), sorted(all.clone()));

    // A restarted process sees the same reservations.
    drop(w);
    let mut w = f.reload("reserving");
    assert_eq!(w.reserved().expect("reserved"), sorted(all.clone()));

    // Unreserved: 3 + 1 BTC. A payment needing more than that fails rather than touch a
    // reserved coin; one that fits uses only unreserved coins.
    let err = w
        .build(&[(burn(), btc(5))], rate(2))
        .expect_err("needs a reserved coin");
    assert!(matches!(err, WalletError::Build(_)), "{err:?}");
    let psbt = w
        .build(&[(burn(), sat(350_000_000))], rate(2))
        .expect("fits in 3 + 1 BTC");
    let spent = inputs_of(&psbt);
    assert!(
        spent.iter().all(|o| !all.contains(o)),
        "{spent:?} spends a reserved coin"
    );
    assert_eq!(sorted(spent), sorted(outpoints(&coins[4..])));
    // And a selection asking for more than the unreserved coins hold names what they hold.
    let err = w.select_coins(btc(5), true).expect_err("too much");
    assert!(
        matches!(err, WalletError::InsufficientFunds { needed, available }
            if needed == btc(5) && available == btc(4)),
        "{err:?}"
    );
    assert_eq!(
        w.reserved().expect("reserved"),
        sorted(all.clone()),
        "nothing more reserved"
    );

    // Released coins are chosen again; a selection without `reserve` reserves nothing.
    w.unreserve(&outpoints(&first)).expect("released");
    assert_eq!(w.reserved().expect("reserved"), sorted(outpoints(&second)));
    let peek = w.select_coins(wanted, false).expect("selected");
    assert_eq!(outpoints(&peek), outpoints(&first));
    assert_eq!(w.reserved().expect("reserved"), sorted(outpoints(&second)));
    // Unreserving what is not reserved is no error.
    w.unreserve(&outpoints(&first)).expect("nothing to release");
    w.unreserve(&outpoints(&second)).expect("released");
    assert!(w.reserved().expect("reserved").is_empty());

    // Too much for every coin: the typed error with what the coins hold, and nothing reserved.
    let held = total(&coins);
    let err = w.select_coins(held + sat(1), true).expect_err("too much");
    assert!(
        matches!(err, WalletError::InsufficientFunds { needed, available }
            if needed == held + sat(1) && available == held),
        "{err:?}"
    );
    assert!(w.reserved().expect("reserved").is_empty());
    assert_eq!(
        err.to_string(),
        format!("need {}, but the confirmed unreserved coins hold {held}", held + sat(1))
    );
    let all_of_them = w.select_coins(held, true).expect("exactly everything");
    assert_eq!(outpoints(&all_of_them), outpoints(&coins));
}

#[test]
fn unconfirmed_coins_are_never_chosen() {
    let mut f = fixture();
    let mut w = wallet_with_coins(&mut f, "pending", &[btc(2), btc(1)]);
    let coins = confirmed(&w);
    // A payment to itself, seen but not mined: it spends one confirmed coin and makes
    // unconfirmed ones.
    let to = w.next_address().expect("address").script_pubkey();
    let tx = w.send(&[(to, btc(1))], rate(2), 5).expect("sent");
    let unconfirmed: HashSet<OutPoint> = (0..tx.output.len() as u32)
        .map(|vout| OutPoint::new(tx.compute_txid(), vout))
        .collect();
    let pending: HashSet<OutPoint> = w
        .bdk()
        .list_unspent()
        .filter(|u| !u.chain_position.is_confirmed())
        .map(|u| u.outpoint)
        .collect();
    assert_eq!(
        pending, unconfirmed,
        "the wallet holds the payment's outputs, unconfirmed"
    );
    let still: Vec<LocalOutput> = confirmed(&w);
    assert_eq!(still.len(), coins.len() - tx.input.len());
    let held = total(&still);

    let everything = w.select_coins(held, false).expect("all confirmed coins");
    assert_eq!(outpoints(&everything), outpoints(&still));
    assert!(everything.iter().all(|c| !unconfirmed.contains(&c.outpoint)));
    let err = w
        .select_coins(held + sat(1), true)
        .expect_err("the pending coins do not count");
    assert!(
        matches!(err, WalletError::InsufficientFunds { available, .. } if available == held),
        "{err:?}"
    );
    assert!(w.reserved().expect("reserved").is_empty());

    // Once mined they are chosen like any other.
    f.mine(&burn(), vec![tx], &mut [&mut w]);
    let now = w.select_coins(held + sat(1), true).expect("confirmed now");
    assert!(now.iter().any(|c| unconfirmed.contains(&c.outpoint)));
}

#[test]
fn immature_coinbase_coins_are_never_chosen() {
    let mut f = fixture();
    let mut w = f.wallet("miner", &bip84(0));
    f.fund(&mut [&mut w]);
    let mature = confirmed(&w);
    assert_eq!(mature.len(), 1);
    // A second coinbase to the wallet: confirmed, but not spendable for 100 blocks.
    let to = w.next_address().expect("address").script_pubkey();
    f.mine(&to, Vec::new(), &mut [&mut w]);
    let coinbase = OutPoint::new(f.chain.tip().txdata[0].compute_txid(), 0);
    assert!(w
        .bdk()
        .get_utxo(coinbase)
        .is_some_and(|u| u.chain_position.is_confirmed()));

    let err = w.select_coins(btc(60), true).expect_err("the new coinbase is immature");
    assert!(
        matches!(err, WalletError::InsufficientFunds { available, .. } if available == btc(50)),
        "{err:?}"
    );
    assert!(w.reserved().expect("reserved").is_empty());

    // Spendable in the block 100 after its own: chosen once the tip is 99 blocks past it.
    for _ in 0..98 {
        f.mine(&burn(), Vec::new(), &mut [&mut w]);
    }
    assert!(w.select_coins(btc(60), false).is_err(), "still immature");
    f.mine(&burn(), Vec::new(), &mut [&mut w]);
    let both = w.select_coins(btc(60), true).expect("mature now");
    assert!(outpoints(&both).contains(&coinbase));
}

#[test]
fn a_handle_that_has_not_seen_a_coin_keeps_its_reservation() {
    // Two processes on one wallet, one synced further than the other: the one behind must not
    // take the coins it does not know yet for spent and drop their reservations.
    let mut f = fixture();
    let mut ahead = f.wallet("two-views", &bip84(0));
    let mut payer = f.wallet("payer", &bip84(1));
    f.fund(&mut [&mut ahead, &mut payer]);
    f.fund(&mut [&mut payer, &mut ahead]);
    let to = ahead.next_address().expect("address").script_pubkey();
    let tx = ahead.send(&[(to, btc(1))], rate(2), 1).expect("split");
    f.mine(&burn(), vec![tx], &mut [&mut ahead, &mut payer]);
    drop(ahead);
    // Loading compacts the wallet's records, so the handle that writes is loaded after it.
    let behind = f.reload("two-views");
    let mut ahead = f.reload("two-views");
    let coins = confirmed(&ahead);
    assert_eq!(coins.len(), 2, "the change and 1 BTC");
    let first = ahead.select_coins(sat(1), true).expect("the change");
    assert_eq!(outpoints(&first), outpoints(&coins[..1]));

    // A payment only `ahead` has seen.
    let to = ahead.next_address().expect("address").script_pubkey();
    let pay = payer.send(&[(to, btc(10))], rate(2), 2).expect("paid");
    f.mine(&burn(), vec![pay.clone()], &mut [&mut ahead, &mut payer]);
    let new = ahead.select_coins(sat(1), true).expect("the new coin");
    assert_eq!(new[0].outpoint.txid, pay.compute_txid());
    assert!(
        behind.bdk().get_utxo(new[0].outpoint).is_none(),
        "behind has not seen it"
    );

    // `behind` selects the last coin it knows; the new coin stays reserved.
    let last = behind.select_coins(sat(1), true).expect("the 1 BTC coin");
    assert_eq!(outpoints(&last), outpoints(&coins[1..]));
    let reserved = ahead.reserved().expect("reserved");
    assert!(reserved.contains(&new[0].outpoint), "{reserved:?}");
    assert_eq!(reserved.len(), 3);
    let err = ahead.select_coins(sat(1), true).expect_err("every coin is reserved");
    assert!(matches!(err, WalletError::InsufficientFunds { .. }), "{err:?}");
}

/// A wallet with twenty small coins (and the change of making them).
fn many_coins(f: &mut Fixture, name: &str) -> AnyaWallet {
    let values: Vec<Amount> = (1..=20).map(|i| sat(1_000_000 + i * 1_000)).collect();
    wallet_with_coins(f, name, &values)
}

/// Two threads at once, one on `a` and one on `b` (two handles, or one handle twice), each
/// reserving `per_thread` times 0.005 BTC (one coin each); returns every coin they got.
fn race(a: &AnyaWallet, b: &AnyaWallet, per_thread: usize) -> Vec<OutPoint> {
    let pick = |w: &AnyaWallet| -> Vec<OutPoint> {
        (0..per_thread)
            .flat_map(|_| outpoints(&w.select_coins(sat(500_000), true).expect("a coin is left")))
            .collect()
    };
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| pick(a));
        let y = s.spawn(|| pick(b));
        (x.join().expect("thread"), y.join().expect("thread"))
    });
    let mut all = x;
    all.extend(y);
    all
}

#[test]
fn concurrent_selections_never_share_a_coin() {
    let mut f = fixture();
    let w = many_coins(&mut f, "contended");
    let coins = confirmed(&w);
    assert_eq!(coins.len(), 21);
    drop(w);
    // Two processes' worth of handles on one store.
    let (a, b) = (f.reload("contended"), f.reload("contended"));
    for round in 0..4 {
        let all = race(&a, &b, 10);
        let unique: HashSet<OutPoint> = all.iter().copied().collect();
        assert_eq!(
            unique.len(),
            all.len(),
            "round {round}: a coin was given twice: {all:?}"
        );
        assert_eq!(all.len(), 20);
        assert_eq!(a.reserved().expect("reserved"), sorted(all.clone()));
        assert_eq!(b.reserved().expect("reserved"), sorted(all.clone()));
        // One coin is left, and both handles agree on which.
        let last = a.select_coins(sat(1), false).expect("one left");
        assert_eq!(
            outpoints(&last),
            outpoints(&b.select_coins(sat(1), false).expect("one left"))
        );
        assert!(!unique.contains(&last[0].outpoint));
        a.unreserve(&all).expect("released");
    }
}

#[test]
fn one_handle_shared_by_threads_never_gives_a_coin_twice() {
    let mut f = fixture();
    let w = Arc::new(many_coins(&mut f, "shared-handle"));
    for round in 0..3 {
        let all = race(&w, &w, 10);
        let unique: HashSet<OutPoint> = all.iter().copied().collect();
        assert_eq!(unique.len(), 20, "round {round}: a coin was given twice: {all:?}");
        assert_eq!(w.reserved().expect("reserved"), sorted(all.clone()));
        w.unreserve(&all).expect("released");
    }
}

/// Two wallets funded on one chain, and a DLC-style funding transaction between them.
struct Shared {
    f: Fixture,
    a: AnyaWallet,
    b: AnyaWallet,
    /// A's and B's coins, and their positions among the inputs.
    a_coin: LocalOutput,
    b_coin: LocalOutput,
    a_index: usize,
    b_index: usize,
    a_change: TxOut,
    funding: TxOut,
    psbt: Psbt,
}

const A_COLLATERAL: u64 = 20;
const B_COLLATERAL: u64 = 30;
/// Each party's share of the fee.
const FEE_SHARE: u64 = 1_000;

/// A 2-of-2 P2WSH output as a DLC's funding output.
fn funding_script() -> ScriptBuf {
    let secp = Secp256k1::signing_only();
    let key = |b: u8| {
        let sk = SecretKey::from_slice(&[b; 32]).expect("a valid secret key");
        bitcoin::PublicKey::new(sk.public_key(&secp))
    };
    let witness_script = Builder::new()
        .push_opcode(opcodes::all::OP_PUSHNUM_2)
        .push_key(&key(1))
        .push_key(&key(2))
        .push_opcode(opcodes::all::OP_PUSHNUM_2)
        .push_opcode(opcodes::all::OP_CHECKMULTISIG)
        .into_script();
    ScriptBuf::new_p2wsh(&witness_script.wscript_hash())
}

fn shared() -> Shared {
    shared_with(&bip84(0))
}

/// [`shared`] with A's wallet made from `a_template`.
fn shared_with(a_template: &Template) -> Shared {
    let mut f = fixture();
    // B's keys are another account of the same root: none of its scripts are A's.
    let mut a = f.wallet("alice", a_template);
    let mut b = f.wallet("bob", &bip84(1));
    f.fund(&mut [&mut a, &mut b]);
    f.fund(&mut [&mut b, &mut a]);
    let a_coin = a.select_coins(btc(A_COLLATERAL), true).expect("A's coin").remove(0);
    let b_coin = b.select_coins(btc(B_COLLATERAL), true).expect("B's coin").remove(0);
    assert!(a.bdk().get_utxo(b_coin.outpoint).is_none() && b.bdk().get_utxo(a_coin.outpoint).is_none());

    let a_change = TxOut {
        value: a_coin.txout.value - btc(A_COLLATERAL) - sat(FEE_SHARE),
        script_pubkey: a.next_change_address().expect("address").script_pubkey(),
    };
    let b_change = TxOut {
        value: b_coin.txout.value - btc(B_COLLATERAL) - sat(FEE_SHARE),
        script_pubkey: b.next_change_address().expect("address").script_pubkey(),
    };
    let funding = TxOut {
        value: btc(A_COLLATERAL + B_COLLATERAL),
        script_pubkey: funding_script(),
    };
    // B's input first, so that A's index is not 0.
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: [b_coin.outpoint, a_coin.outpoint]
            .into_iter()
            .map(|previous_output| TxIn {
                previous_output,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_LOCKTIME_NO_RBF,
                witness: Witness::new(),
            })
            .collect(),
        output: vec![funding.clone(), b_change, a_change.clone()],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).expect("unsigned");
    // As ddk-manager fills them: every spent output, and an empty redeem script.
    for (input, coin) in psbt.inputs.iter_mut().zip([&b_coin, &a_coin]) {
        input.witness_utxo = Some(coin.txout.clone());
        input.redeem_script = Some(ScriptBuf::new());
    }
    Shared {
        f,
        a,
        b,
        a_coin,
        b_coin,
        a_index: 1,
        b_index: 0,
        a_change,
        funding,
        psbt,
    }
}

/// The transaction with every input's final witness.
fn extract(psbt: &Psbt) -> Transaction {
    let mut tx = psbt.unsigned_tx.clone();
    for (txin, input) in tx.input.iter_mut().zip(&psbt.inputs) {
        txin.witness = input.final_script_witness.clone().expect("input finalized");
        txin.script_sig = input.final_script_sig.clone().unwrap_or_default();
    }
    tx
}

/// Mines `tx` after checking that the chain admits it with the two fee shares.
fn mine_shared(s: &mut Shared, tx: Transaction) {
    assert_eq!(
        s.f.chain.accepts(std::slice::from_ref(&tx)).expect("admitted"),
        sat(2 * FEE_SHARE)
    );
    s.f.mine(&burn(), vec![tx], &mut [&mut s.a, &mut s.b]);
}

#[test]
fn both_parties_sign_a_funding_transaction_the_chain_admits() {
    let mut s = shared();
    let a_value = s.a_coin.txout.value;

    // What A's policy judges: A's coin in, A's change back, the rest leaving on the funding
    // output.
    let summary = s.a.summarize_shared(&s.psbt).expect("summary");
    assert_eq!(summary.txid, s.psbt.unsigned_tx.compute_txid());
    assert_eq!(summary.input_value, a_value);
    assert_eq!(summary.inputs, vec![s.a_coin.outpoint]);
    let ours: Vec<_> = summary
        .outputs
        .iter()
        .filter(|o| o.role == OutputRole::Wallet)
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(
        (&ours[0].script_pubkey, ours[0].value),
        (&s.a_change.script_pubkey, s.a_change.value)
    );
    let external: Vec<_> = summary
        .outputs
        .iter()
        .filter(|o| o.role == OutputRole::External)
        .collect();
    assert_eq!(external.len(), 1);
    assert_eq!(external[0].script_pubkey, s.funding.script_pubkey);
    assert_eq!(summary.fee, sat(2 * FEE_SHARE), "the whole fee, as the PSBT tells it");
    assert_eq!(summary.spent(), a_value - s.a_change.value);
    assert_eq!(summary.spent(), btc(A_COLLATERAL) + sat(FEE_SHARE));

    let (a_index, b_index) = (s.a_index, s.b_index);
    s.a.sign_shared_input(&mut s.psbt, a_index).expect("A signs");
    assert!(s.psbt.inputs[a_index].final_script_witness.is_some());
    assert!(
        s.psbt.inputs[b_index].final_script_witness.is_none() && s.psbt.inputs[b_index].partial_sigs.is_empty(),
        "A signs only its own input"
    );
    assert_eq!(
        s.psbt.inputs[a_index].redeem_script, None,
        "P2WPKH has no redeem script"
    );
    s.b.sign_shared_input(&mut s.psbt, b_index).expect("B signs");
    assert_eq!(
        s.a.policy().spent_last_24h().expect("history"),
        btc(A_COLLATERAL) + sat(FEE_SHARE)
    );
    assert_eq!(
        s.b.policy().spent_last_24h().expect("history"),
        btc(B_COLLATERAL) + sat(FEE_SHARE)
    );

    let tx = extract(&s.psbt);
    let txid = tx.compute_txid();
    mine_shared(&mut s, tx);
    assert!(s.f.chain.utxo(&OutPoint::new(txid, 0)).is_some_and(|o| *o == s.funding));
    assert_eq!(s.a.balance().confirmed, s.a_change.value);

    // The spent coin's reservation goes with the next selection, which takes the change.
    assert_eq!(s.a.reserved().expect("reserved"), vec![s.a_coin.outpoint]);
    let next = s.a.select_coins(btc(1), true).expect("the change");
    assert_eq!(outpoints(&next), vec![OutPoint::new(txid, 2)]);
    assert_eq!(s.a.reserved().expect("reserved"), vec![OutPoint::new(txid, 2)]);
}

#[test]
fn policy_judges_what_leaves_the_wallet_and_counts_it_once() {
    let mut s = shared();
    let a_index = s.a_index;
    let contribution = btc(A_COLLATERAL) + sat(FEE_SHARE);
    s.a.policy()
        .set_rules(&SpendPolicy {
            max_per_tx: Some(btc(A_COLLATERAL)),
            ..SpendPolicy::default()
        })
        .expect("rules");
    let err = s.a.sign_shared_input(&mut s.psbt, a_index).expect_err("over the limit");
    let WalletError::Policy(PolicyError::Refused(refusal)) = &err else {
        panic!("expected a policy refusal, got {err:?}")
    };
    assert_eq!(
        refusal.violations,
        vec![Violation::AmountOverLimit {
            amount: contribution,
            limit: btc(A_COLLATERAL)
        }]
    );
    let input = &s.psbt.inputs[a_index];
    assert!(input.partial_sigs.is_empty() && input.final_script_witness.is_none() && input.final_script_sig.is_none());
    assert_eq!(s.a.policy().spent_last_24h().expect("history"), Amount::ZERO);

    // The refusal is in the audit chain, under the transaction's id, and no signature follows.
    let txid = s.psbt.unsigned_tx.compute_txid();
    s.f.hsm.verify_audit_chain().expect("chain verifies");
    let records = s.f.hsm.audit_records(0, 100_000).expect("records");
    let last = records.last().expect("records");
    assert_eq!((last.operation, last.outcome), (Operation::Decision, refusal.code()));
    assert_eq!(last.input_hash, Some(txid.to_byte_array()));
    let seen = records.len();

    // Above the contribution: signed, and counted once however often the input is signed.
    s.a.policy()
        .set_rules(&SpendPolicy {
            max_per_tx: Some(contribution),
            max_per_24h: Some(contribution),
            ..SpendPolicy::default()
        })
        .expect("rules");
    let unsigned = s.psbt.clone();
    s.a.sign_shared_input(&mut s.psbt, a_index).expect("within the limit");
    assert_eq!(s.a.policy().spent_last_24h().expect("history"), contribution);
    let records = s.f.hsm.audit_records(0, 100_000).expect("records");
    let approval = records[seen..]
        .iter()
        .find(|r| r.operation == Operation::Decision)
        .expect("an approval");
    assert_eq!((approval.outcome, approval.input_hash), (0, Some(txid.to_byte_array())));
    assert!(records[seen..].iter().any(|r| r.operation == Operation::SignEcdsa));

    // Again on the signed PSBT, and on a fresh copy (a restart before the first was kept):
    // the velocity limit, which the contribution fills, does not see a second spend.
    s.a.sign_shared_input(&mut s.psbt, a_index).expect("signed again");
    let mut fresh = unsigned;
    s.a.sign_shared_input(&mut fresh, a_index).expect("signed afresh");
    assert_eq!(s.a.policy().spent_last_24h().expect("history"), contribution);
    assert_eq!(
        fresh.inputs[a_index].final_script_witness, s.psbt.inputs[a_index].final_script_witness,
        "RFC 6979 signatures over the same transaction"
    );

    let b_index = s.b_index;
    s.b.sign_shared_input(&mut s.psbt, b_index).expect("B signs");
    let tx = extract(&s.psbt);
    mine_shared(&mut s, tx);
}

/// A change a hostile PSBT makes to the wallet's input.
type Tamper<'a> = Box<dyn Fn(&mut bitcoin::psbt::Input) + 'a>;

/// The sighash flag of input `index`'s ECDSA signature (the last byte of the witness's first
/// element).
fn sighash_flag(psbt: &Psbt, index: usize) -> u8 {
    let witness = psbt.inputs[index].final_script_witness.as_ref().expect("finalized");
    *witness.nth(0).expect("a signature").last().expect("not empty")
}

#[test]
fn hostile_psbts_get_a_typed_error_or_a_correct_signature() {
    let mut s = shared();
    let (a_index, b_index) = (s.a_index, s.b_index);
    let original = s.psbt.clone();

    // No such input.
    let err = s.a.sign_shared_input(&mut s.psbt, 2).expect_err("out of range");
    assert!(
        matches!(&err, WalletError::Psbt(m) if m.contains("no input 2")),
        "{err:?}"
    );
    let err =
        s.a.sign_shared_input(&mut s.psbt, usize::MAX)
            .expect_err("out of range");
    assert!(matches!(err, WalletError::Psbt(_)), "{err:?}");
    // B's coin given to A.
    let err = s.a.sign_shared_input(&mut s.psbt, b_index).expect_err("not A's coin");
    assert!(
        matches!(&err, WalletError::Psbt(m) if m.contains("not an unspent coin of the wallet")),
        "{err:?}"
    );
    assert_eq!(s.psbt, original, "refused before anything changed");
    // Input maps that do not match the inputs.
    let mut short = original.clone();
    short.inputs.pop();
    let err = s.a.sign_shared_input(&mut short, 0).expect_err("maps missing");
    assert!(matches!(err, WalletError::Psbt(_)), "{err:?}");
    // No spent output for B's input: A cannot check its own signature against the whole
    // transaction, and says so before its policy counts anything.
    let counted = s.a.policy().spent_last_24h().expect("history");
    let mut blind = original.clone();
    blind.inputs[b_index].witness_utxo = None;
    let err =
        s.a.sign_shared_input(&mut blind, a_index)
            .expect_err("B's prevout missing");
    assert!(
        matches!(err, WalletError::Sign(SignError::MissingPrevout { index }) if index == b_index),
        "{err:?}"
    );
    assert_eq!(
        s.a.policy().spent_last_24h().expect("history"),
        counted,
        "nothing counted"
    );
    // A watch-only copy of A cannot sign.
    let watch =
        AnyaWallet::load_watch_only(Arc::clone(&s.f.store), s.f.clock.clone(), label("alice")).expect("watch-only");
    let err = watch.sign_shared_input(&mut s.psbt, a_index).expect_err("no HSM");
    assert!(matches!(err, WalletError::WatchOnly { .. }), "{err:?}");
    assert_eq!(s.psbt, original);
    // Loading compacted A's records under the open handle: A's next write would conflict.
    drop(watch);
    s.a = s.f.reload("alice");

    // Each way the PSBT misdescribes A's input: A signs with its own record of the coin and
    // SIGHASH_ALL, and the chain admits the result.
    let a_txout = s.a_coin.txout.clone();
    let forged_parent = |value: Amount| Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: Vec::new(),
        output: vec![TxOut {
            value,
            script_pubkey: a_txout.script_pubkey.clone(),
        }],
    };
    let tampered: Vec<(&str, Tamper<'_>)> = vec![
        (
            "an amount too small",
            Box::new(|i| i.witness_utxo.as_mut().expect("set").value = sat(1)),
        ),
        (
            "an amount too large",
            Box::new(|i| i.witness_utxo.as_mut().expect("set").value = a_txout.value + btc(1)),
        ),
        (
            "a forged parent",
            Box::new(|i| i.non_witness_utxo = Some(forged_parent(btc(1)))),
        ),
        ("no spent output", Box::new(|i| i.witness_utxo = None)),
        (
            "SIGHASH_NONE|ANYONECANPAY",
            Box::new(|i| i.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::NonePlusAnyoneCanPay))),
        ),
        (
            "SIGHASH_SINGLE",
            Box::new(|i| i.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::Single))),
        ),
        (
            "a junk final witness",
            Box::new(|i| i.final_script_witness = Some(Witness::from_slice(&[vec![0u8; 71], vec![2u8; 33]]))),
        ),
        (
            "a junk final script_sig",
            Box::new(|i| i.final_script_sig = Some(ScriptBuf::from_bytes(vec![0x51]))),
        ),
    ];
    for (case, tamper) in &tampered {
        let mut psbt = original.clone();
        tamper(&mut psbt.inputs[a_index]);
        s.a.sign_shared_input(&mut psbt, a_index)
            .unwrap_or_else(|e| panic!("{case}: {e:?}"));
        assert_eq!(
            psbt.inputs[a_index].witness_utxo.as_ref(),
            Some(&s.a_coin.txout),
            "{case}"
        );
        assert_eq!(psbt.inputs[a_index].non_witness_utxo, None, "{case}");
        assert_eq!(psbt.inputs[a_index].final_script_sig, None, "{case}");
        assert_eq!(sighash_flag(&psbt, a_index), EcdsaSighashType::All as u8, "{case}");
        s.b.sign_shared_input(&mut psbt, b_index).expect("B signs");
        let tx = extract(&psbt);
        assert_eq!(
            s.f.chain.accepts(&[tx]).unwrap_or_else(|e| panic!("{case}: {e:?}")),
            sat(2 * FEE_SHARE),
            "{case}"
        );
    }
    let mut psbt = original;
    s.a.sign_shared_input(&mut psbt, a_index).expect("A signs");
    s.b.sign_shared_input(&mut psbt, b_index).expect("B signs");
    mine_shared(&mut s, extract(&psbt));
    let b_coin = s.b_coin.outpoint;
    assert!(s.f.chain.utxo(&b_coin).is_none(), "spent");
}

#[test]
fn change_addresses_come_from_the_internal_keychain() {
    let f = fixture();
    let mut w = f.wallet("change", &bip84(0));
    let change = w.next_change_address().expect("change address");
    let receive = w.next_address().expect("receive address");
    assert_eq!(change.keychain, KeychainKind::Internal);
    assert_eq!(receive.keychain, KeychainKind::External);
    assert_ne!(change.address, receive.address);
    let spk = change.address.script_pubkey();
    assert!(w.is_mine(&spk));
    assert_eq!(
        w.bdk().derivation_of_spk(spk),
        Some((KeychainKind::Internal, change.index))
    );
    let second = w.next_change_address().expect("change address");
    assert_eq!(second.index, change.index + 1);
    assert_ne!(second.address, change.address);

    // Revealed durably: a restarted process hands out the next one.
    drop(w);
    let mut w = f.reload("change");
    assert_eq!(w.next_change_address().expect("change address").index, second.index + 1);
    // Another account of the same root does not claim it.
    let other = f.wallet("other", &bip84(1));
    assert!(!other.is_mine(&change.address.script_pubkey()));
}

#[test]
fn a_signature_commits_to_every_output_whatever_the_psbt_asks() {
    // B asks A for SIGHASH_NONE|ANYONECANPAY: were A to sign so, B could move A's input into a
    // transaction of B's own making and pay A's coin wherever B likes.
    let s = shared();
    let a_index = s.a_index;
    let mut psbt = s.psbt.clone();
    psbt.inputs[a_index].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::NonePlusAnyoneCanPay));
    s.a.sign_shared_input(&mut psbt, a_index).expect("signed");
    let witness = psbt.inputs[a_index].final_script_witness.clone().expect("finalized");
    let theft = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: s.a_coin.outpoint,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_LOCKTIME_NO_RBF,
            witness,
        }],
        output: vec![TxOut {
            value: s.a_coin.txout.value - sat(FEE_SHARE),
            script_pubkey: burn(),
        }],
    };
    let err =
        s.f.chain
            .accepts(&[theft])
            .expect_err("A's signature does not fit B's transaction");
    assert!(
        matches!(err, anya_bitcoin::regtest::RegtestError::Script { .. }),
        "{err:?}"
    );
}

#[test]
fn a_taproot_wallet_signs_its_input_of_a_shared_transaction() {
    let mut s = shared_with(&bip86(0));
    assert!(s.a_coin.txout.script_pubkey.is_p2tr() && s.b_coin.txout.script_pubkey.is_p2wpkh());
    let (a_index, b_index) = (s.a_index, s.b_index);
    let summary = s.a.summarize_shared(&s.psbt).expect("summary");
    assert_eq!(summary.spent(), btc(A_COLLATERAL) + sat(FEE_SHARE));
    // Asked for SIGHASH_NONE, A still signs with SIGHASH_DEFAULT (a 64-byte signature).
    s.psbt.inputs[a_index].sighash_type = Some(PsbtSighashType::from(bitcoin::TapSighashType::None));
    s.a.sign_shared_input(&mut s.psbt, a_index).expect("A signs");
    let witness = s.psbt.inputs[a_index].final_script_witness.as_ref().expect("finalized");
    assert_eq!(witness.len(), 1, "a key-path spend");
    assert_eq!(witness.nth(0).map(<[u8]>::len), Some(64));
    assert!(s.psbt.inputs[a_index].redeem_script.is_none());
    s.b.sign_shared_input(&mut s.psbt, b_index).expect("B signs");
    let tx = extract(&s.psbt);
    mine_shared(&mut s, tx);
    assert_eq!(s.a.balance().confirmed, s.a_change.value);
}
