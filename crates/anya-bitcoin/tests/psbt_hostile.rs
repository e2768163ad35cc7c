//! PSBTs from a coordinator the signer does not trust: a real wallet's PSBT on the in-process
//! regtest chain, mutated the ways an attacker would, must meet a typed error from every entry
//! point (`decode`, `try_inspect`, `finalize`, `combine`, the HSM signer, the wallet's policy
//! summary) — never a panic, never the forged amounts.

use anya_bitcoin::psbt::{
    self, checked_total, decode, inspect, try_inspect, validate, AmountAt, AmountSide, PsbtError,
};
use anya_bitcoin::signer::SignError;
use anya_bitcoin::wallet::{AnyaWallet, WalletError};
use bitcoin::{Amount, Network, Psbt};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

mod common;

use common::fixture::{bip84, burn, fixture, rate, Fixture};

/// A funded BIP84 wallet and an unsigned PSBT of it paying 1 BTC to a burn address. BDK puts
/// both `witness_utxo` and `non_witness_utxo` in its segwit v0 inputs.
fn wallet_psbt() -> (Fixture, AnyaWallet, Psbt) {
    let mut f = fixture();
    let mut w = f.wallet("hostile", &bip84(0));
    f.fund(&mut [&mut w]);
    let psbt = w
        .build(&[(burn(), Amount::from_sat(100_000_000))], rate(2))
        .expect("built");
    assert!(
        psbt.inputs[0].non_witness_utxo.is_some(),
        "BDK adds the previous transaction"
    );
    assert!(psbt.inputs[0].witness_utxo.is_some());
    assert_eq!(psbt.unsigned_tx.output.len(), 2, "payment and change");
    (f, w, psbt)
}

/// Input 0 spends an output index past the end of its `non_witness_utxo` (the `witness_utxo`
/// removed so that upstream code reads the previous transaction).
fn vout_past_end(mut psbt: Psbt) -> (Psbt, u32, usize) {
    let outputs = psbt.inputs[0].non_witness_utxo.as_ref().expect("prev tx").output.len();
    let vout = u32::try_from(outputs).expect("few outputs") + 3;
    psbt.inputs[0].witness_utxo = None;
    psbt.unsigned_tx.input[0].previous_output.vout = vout;
    (psbt, vout, outputs)
}

fn is_out_of_range(e: &PsbtError, vout: u32, outputs: usize) -> bool {
    matches!(e, PsbtError::PrevoutIndexOutOfRange { index: 0, vout: v, outputs: o } if *v == vout && *o == outputs)
}

#[test]
fn vout_past_end_is_refused_by_decode_and_inspect() {
    let (_f, _w, psbt) = wallet_psbt();
    let (bad, vout, outputs) = vout_past_end(psbt);
    let err = decode(&bad.serialize()).expect_err("decode refuses it");
    assert!(is_out_of_range(&err, vout, outputs), "{err}");
    assert!(err.to_string().contains("input 0"), "{err}");
    let err = try_inspect(&bad, Network::Regtest).expect_err("inspect refuses it");
    assert!(is_out_of_range(&err, vout, outputs), "{err}");
}

#[test]
fn vout_past_end_is_an_error_from_finalize_not_a_panic() {
    let (_f, _w, psbt) = wallet_psbt();
    let (mut bad, vout, outputs) = vout_past_end(psbt);
    let err = psbt::finalize(&mut bad).expect_err("finalize refuses it");
    assert!(is_out_of_range(&err, vout, outputs), "{err}");
    let err = psbt::extract_verified(&bad).expect_err("extract refuses it");
    assert!(
        matches!(err, PsbtError::NotFinalized { .. }) || is_out_of_range(&err, vout, outputs),
        "{err}"
    );
}

#[test]
fn vout_past_end_is_an_error_from_the_hsm_signer_not_a_panic() {
    let (_f, w, psbt) = wallet_psbt();
    let (mut bad, vout, outputs) = vout_past_end(psbt);
    let before = bad.clone();
    let err = w.signers()[0].sign(&mut bad).expect_err("the signer refuses it");
    assert!(
        matches!(&err, SignError::Psbt(e) if is_out_of_range(e, vout, outputs)),
        "{err}"
    );
    assert_eq!(bad, before, "nothing signed");
}

#[test]
fn vout_past_end_is_refused_by_the_wallet_before_its_policy() {
    let (_f, w, psbt) = wallet_psbt();
    let (mut bad, vout, outputs) = vout_past_end(psbt);
    let err = w.summarize(&bad).expect_err("summary refuses it");
    assert!(
        matches!(&err, WalletError::InvalidPsbt(e) if is_out_of_range(e, vout, outputs)),
        "{err}"
    );
    let err = w.sign(&mut bad).expect_err("the wallet refuses it");
    assert!(matches!(&err, WalletError::InvalidPsbt(_)), "{err}");
}

/// Input 0 carries a forged previous transaction: the spent output is worth 5 BTC more than
/// the real one, and the `witness_utxo` tells the same lie. Its txid is not the one spent.
fn lying_prev_tx(mut psbt: Psbt) -> (Psbt, bitcoin::Txid, bitcoin::Txid) {
    let vout = psbt.unsigned_tx.input[0].previous_output.vout as usize;
    let mut forged = psbt.inputs[0].non_witness_utxo.clone().expect("prev tx");
    forged.output[vout].value += Amount::from_sat(500_000_000);
    psbt.inputs[0].witness_utxo = Some(forged.output[vout].clone());
    let expected = psbt.unsigned_tx.input[0].previous_output.txid;
    let found = forged.compute_txid();
    psbt.inputs[0].non_witness_utxo = Some(forged);
    (psbt, expected, found)
}

#[test]
fn lying_non_witness_utxo_is_refused_by_decode_and_inspect() {
    let (_f, _w, psbt) = wallet_psbt();
    let (bad, expected, found) = lying_prev_tx(psbt);
    let is_lie = |e: &PsbtError| matches!(e, PsbtError::NonWitnessUtxoMismatch { index: 0, expected: x, found: y } if *x == expected && *y == found);
    let err = decode(&bad.serialize()).expect_err("decode refuses it");
    assert!(is_lie(&err), "{err}");
    let err = decode(psbt::encode_base64(&bad).as_bytes()).expect_err("base64 too");
    assert!(is_lie(&err), "{err}");
    let err = try_inspect(&bad, Network::Regtest).expect_err("inspect refuses it");
    assert!(is_lie(&err), "{err}");
    // The infallible report shows the input's value as unknown rather than the forged one.
    let info = inspect(&bad, Network::Regtest);
    assert_eq!(info.inputs[0].prevout, None);
    assert_eq!((info.input_value, info.fee), (None, None));
}

#[test]
fn lying_non_witness_utxo_is_refused_by_the_signer_and_the_wallet() {
    let (_f, w, psbt) = wallet_psbt();
    let (mut bad, _, _) = lying_prev_tx(psbt);
    let before = bad.clone();
    let err = w.signers()[0].sign(&mut bad).expect_err("the signer refuses it");
    assert!(
        matches!(
            &err,
            SignError::Psbt(PsbtError::NonWitnessUtxoMismatch { index: 0, .. })
        ),
        "{err}"
    );
    assert_eq!(bad, before, "nothing signed");
    let err = w.summarize(&bad).expect_err("the policy never sees the forged amounts");
    assert!(
        matches!(
            &err,
            WalletError::InvalidPsbt(PsbtError::NonWitnessUtxoMismatch { index: 0, .. })
        ),
        "{err}"
    );
}

#[test]
fn witness_utxo_that_disagrees_with_non_witness_utxo_is_refused() {
    let (_f, w, mut psbt) = wallet_psbt();
    let good = psbt.clone();
    let utxo = psbt.inputs[0].witness_utxo.as_mut().expect("witness utxo");
    utxo.value += Amount::from_sat(1);
    let err = decode(&psbt.serialize()).expect_err("decode refuses it");
    assert!(matches!(err, PsbtError::WitnessUtxoMismatch { index: 0 }), "{err}");
    let err = w.signers()[0]
        .sign(&mut psbt.clone())
        .expect_err("the signer refuses it");
    assert!(
        matches!(&err, SignError::Psbt(PsbtError::WitnessUtxoMismatch { index: 0 })),
        "{err}"
    );
    // The combiner checks what it merged: a valid PSBT given a disagreeing witness_utxo by
    // its partner is refused too.
    let err = psbt::combine(good, psbt).expect_err("combine refuses it");
    assert!(matches!(err, PsbtError::WitnessUtxoMismatch { index: 0 }), "{err}");
}

#[test]
fn amounts_past_the_money_limit_are_refused() {
    let (_f, w, psbt) = wallet_psbt();

    let mut one = psbt.clone();
    one.unsigned_tx.output[0].value = Amount::MAX_MONEY + Amount::from_sat(1);
    let err = decode(&one.serialize()).expect_err("decode refuses it");
    assert!(
        matches!(
            err,
            PsbtError::AmountOutOfRange {
                at: AmountAt::Output { index: 0 },
                ..
            }
        ),
        "{err}"
    );

    let mut two = psbt.clone();
    two.unsigned_tx.output[0].value = Amount::MAX_MONEY;
    two.unsigned_tx.output[1].value = Amount::from_sat(1);
    let err = decode(&two.serialize()).expect_err("decode refuses it");
    assert!(
        matches!(
            err,
            PsbtError::AmountOverflow {
                side: AmountSide::Outputs
            }
        ),
        "{err}"
    );

    // Values whose u64 sum overflows: an unchecked `Amount` sum panics on them.
    let mut wrap = psbt;
    let half = Amount::from_sat(u64::MAX / 2 + 1);
    wrap.unsigned_tx.output[0].value = half;
    wrap.unsigned_tx.output[1].value = half;
    let err = w.summarize(&wrap).expect_err("summary refuses it");
    assert!(
        matches!(err, WalletError::InvalidPsbt(PsbtError::AmountOutOfRange { .. })),
        "{err}"
    );
    let err = w.signers()[0]
        .sign(&mut wrap.clone())
        .expect_err("the signer refuses it");
    assert!(
        matches!(err, SignError::Psbt(PsbtError::AmountOutOfRange { .. })),
        "{err}"
    );
}

#[test]
fn input_and_output_map_counts_must_match_the_transaction() {
    let (_f, w, psbt) = wallet_psbt();
    let mut short = psbt.clone();
    short.inputs.pop();
    let err = validate(&short).expect_err("one input map missing");
    assert!(
        matches!(err, PsbtError::InputCountMismatch { maps: 0, inputs: 1 }),
        "{err}"
    );
    let err = w.signers()[0].sign(&mut short).expect_err("the signer refuses it");
    assert!(
        matches!(err, SignError::Psbt(PsbtError::InputCountMismatch { .. })),
        "{err}"
    );
    let mut short = psbt;
    short.outputs.pop();
    let err = w.summarize(&short).expect_err("one output map missing");
    assert!(
        matches!(
            err,
            WalletError::InvalidPsbt(PsbtError::OutputCountMismatch { maps: 1, outputs: 2 })
        ),
        "{err}"
    );
}

/// An amount near the money limit, or anywhere in `u64`.
fn near_limit() -> impl Strategy<Value = u64> {
    let max = Amount::MAX_MONEY.to_sat();
    prop_oneof![
        0..=1_000u64,
        max - 1_000..=max + 1_000,
        max / 2 - 1_000..=max / 2 + 1_000,
        any::<u64>(),
    ]
}

/// What `validate` must say of a transaction with these two output values.
fn expected_outputs(a: u64, b: u64) -> Result<(), PsbtError> {
    let max = Amount::MAX_MONEY.to_sat();
    for (index, v) in [a, b].into_iter().enumerate() {
        if v > max {
            return Err(PsbtError::AmountOutOfRange {
                at: AmountAt::Output { index },
                value: Amount::from_sat(v),
            });
        }
    }
    if u128::from(a) + u128::from(b) > u128::from(max) {
        return Err(PsbtError::AmountOverflow {
            side: AmountSide::Outputs,
        });
    }
    Ok(())
}

fn same_verdict(got: &Result<(), PsbtError>, want: &Result<(), PsbtError>) -> bool {
    match (got, want) {
        (Ok(()), Ok(())) => true,
        (
            Err(PsbtError::AmountOutOfRange { at: a, value: x }),
            Err(PsbtError::AmountOutOfRange { at: b, value: y }),
        ) => a == b && x == y,
        (Err(PsbtError::AmountOverflow { side: a }), Err(PsbtError::AmountOverflow { side: b })) => a == b,
        _ => false,
    }
}

#[test]
fn output_amounts_near_the_money_limit() {
    let (_f, w, psbt) = wallet_psbt();
    let input_value = w.summarize(&psbt).expect("valid").input_value;
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(256)
    });
    runner
        .run(&(near_limit(), near_limit()), |(a, b)| {
            let mut p = psbt.clone();
            p.unsigned_tx.output[0].value = Amount::from_sat(a);
            p.unsigned_tx.output[1].value = Amount::from_sat(b);
            let want = expected_outputs(a, b);
            let got = validate(&p);
            prop_assert!(same_verdict(&got, &want), "{got:?} for {a} + {b}, want {want:?}");
            match (w.summarize(&p), want) {
                (Err(WalletError::InvalidPsbt(e)), Err(want)) => {
                    prop_assert!(same_verdict(&Err(e), &Err(want)));
                }
                (Ok(summary), Ok(())) => {
                    prop_assert_eq!(summary.fee.to_sat() + a + b, input_value.to_sat());
                }
                // Valid amounts, but more out than in.
                (Err(WalletError::Psbt(_)), Ok(())) => {
                    prop_assert!(u128::from(a) + u128::from(b) > u128::from(input_value.to_sat()));
                }
                (other, want) => prop_assert!(false, "{other:?} for {a} + {b}, want {want:?}"),
            }
            Ok(())
        })
        .expect("property holds");
}

#[test]
fn spent_amounts_near_the_money_limit() {
    let (_f, _w, psbt) = wallet_psbt();
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(256)
    });
    runner
        .run(&near_limit(), |v| {
            // Only a witness_utxo: its value is the one the signer would commit to.
            let mut p = psbt.clone();
            p.inputs[0].non_witness_utxo = None;
            p.inputs[0].witness_utxo.as_mut().expect("witness utxo").value = Amount::from_sat(v);
            let got = validate(&p);
            if v > Amount::MAX_MONEY.to_sat() {
                prop_assert!(
                    matches!(
                        got,
                        Err(PsbtError::AmountOutOfRange {
                            at: AmountAt::WitnessUtxo { index: 0 },
                            ..
                        })
                    ),
                    "{got:?}"
                );
            } else {
                prop_assert!(got.is_ok(), "{got:?}");
            }
            Ok(())
        })
        .expect("property holds");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn checked_total_is_the_exact_sum_or_an_overflow(values in proptest::collection::vec(near_limit(), 0..6)) {
        let exact: u128 = values.iter().map(|v| u128::from(*v)).sum();
        let got = checked_total(values.iter().map(|v| Amount::from_sat(*v)), AmountSide::Inputs);
        if exact <= u128::from(Amount::MAX_MONEY.to_sat()) {
            prop_assert_eq!(got.map(|a| u128::from(a.to_sat())).ok(), Some(exact));
        } else {
            let overflow = matches!(got, Err(PsbtError::AmountOverflow { side: AmountSide::Inputs }));
            prop_assert!(overflow, "{:?}", got);
        }
    }
}
