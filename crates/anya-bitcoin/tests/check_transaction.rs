//! `check_transaction` (Bitcoin Core's context-free `CheckTransaction`): each rule broken once,
//! the holes `RegtestChain::mine` had (issue 10), and a differential test of
//! `check_transaction` + `verify_transaction` against a real regtest bitcoind's
//! `testmempoolaccept` (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`).

use anya_bitcoin::psbt::{extract_verified, PsbtError};
use anya_bitcoin::regtest::{RegtestChain, RegtestError};
use anya_bitcoin::verify::{
    check_transaction, check_tx_inputs, verify_transaction, CheckError, VerifyError, VerifyFlags,
};
use anya_bitcoin::wallet::WalletError;
use anya_testkit::Bitcoind;

mod common;

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Address, Amount, Block, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};
use common::fixture::{bip84, burn, fixture, rate};

fn input(n: u8) -> TxIn {
    TxIn {
        previous_output: OutPoint::new(Txid::from_byte_array([n; 32]), 0),
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness: Witness::new(),
    }
}

fn output(sat: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sat),
        script_pubkey: ScriptBuf::new(),
    }
}

fn tx(input: Vec<TxIn>, output: Vec<TxOut>) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input,
        output,
    }
}

fn coinbase(script_sig_len: usize) -> Transaction {
    let mut cb = input(0);
    cb.previous_output = OutPoint::null();
    cb.script_sig = ScriptBuf::from_bytes(vec![0x51; script_sig_len]);
    tx(vec![cb], vec![output(1)])
}

// ---- each rule, once -------------------------------------------------------------------------

#[test]
fn a_plain_transaction_passes() {
    assert_eq!(
        check_transaction(&tx(vec![input(1), input(2)], vec![output(5)])),
        Ok(())
    );
}

#[test]
fn no_inputs_is_vin_empty() {
    let err = check_transaction(&tx(vec![], vec![output(1)])).unwrap_err();
    assert_eq!(err, CheckError::NoInputs);
    assert_eq!(err.reject_reason(), "bad-txns-vin-empty");
}

#[test]
fn no_outputs_is_vout_empty() {
    let err = check_transaction(&tx(vec![input(1)], vec![])).unwrap_err();
    assert_eq!(err, CheckError::NoOutputs);
    assert_eq!(err.reject_reason(), "bad-txns-vout-empty");
}

#[test]
fn over_a_block_without_witness_is_oversize() {
    let mut big = output(0);
    big.script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 1_000_000]);
    let err = check_transaction(&tx(vec![input(1)], vec![big])).unwrap_err();
    assert!(
        matches!(err, CheckError::Oversize { stripped_size } if stripped_size > 1_000_000),
        "{err}"
    );
    assert_eq!(err.reject_reason(), "bad-txns-oversize");
}

#[test]
fn a_large_witness_is_not_oversize() {
    // Core counts the size without witness: witness limits are the block's business.
    let mut spend = input(1);
    spend.witness.push(vec![0u8; 1_100_000]);
    assert_eq!(check_transaction(&tx(vec![spend], vec![output(1)])), Ok(()));
}

#[test]
fn a_value_core_reads_as_negative_is_vout_negative() {
    let err = check_transaction(&tx(vec![input(1)], vec![output(1), output(1 << 63)])).unwrap_err();
    assert_eq!(
        err,
        CheckError::OutputNegative {
            index: 1,
            value_sat: 1 << 63
        }
    );
    assert_eq!(err.reject_reason(), "bad-txns-vout-negative");
}

#[test]
fn more_than_the_money_supply_is_vout_toolarge() {
    let over = Amount::MAX_MONEY.to_sat() + 1;
    let err = check_transaction(&tx(vec![input(1)], vec![output(over)])).unwrap_err();
    assert_eq!(
        err,
        CheckError::OutputTooLarge {
            index: 0,
            value: Amount::from_sat(over)
        }
    );
    assert_eq!(err.reject_reason(), "bad-txns-vout-toolarge");
}

#[test]
fn outputs_summing_past_the_money_supply_is_txouttotal_toolarge() {
    let max = Amount::MAX_MONEY.to_sat();
    let err = check_transaction(&tx(vec![input(1)], vec![output(max), output(0), output(1)])).unwrap_err();
    assert_eq!(err, CheckError::OutputTotalTooLarge { index: 2 });
    assert_eq!(err.reject_reason(), "bad-txns-txouttotal-toolarge");
}

#[test]
fn spending_one_output_twice_is_inputs_duplicate() {
    let err = check_transaction(&tx(vec![input(1), input(2), input(1)], vec![output(1)])).unwrap_err();
    assert_eq!(
        err,
        CheckError::DuplicateInput {
            index: 2,
            outpoint: input(1).previous_output
        }
    );
    assert_eq!(err.reject_reason(), "bad-txns-inputs-duplicate");
}

#[test]
fn a_coinbase_script_sig_is_two_to_a_hundred_bytes() {
    for len in [0, 1, 101] {
        let err = check_transaction(&coinbase(len)).unwrap_err();
        assert_eq!(err, CheckError::CoinbaseLength { len });
        assert_eq!(err.reject_reason(), "bad-cb-length");
    }
    for len in [2, 100] {
        assert_eq!(check_transaction(&coinbase(len)), Ok(()), "{len}");
    }
}

#[test]
fn a_null_prevout_outside_a_coinbase_is_prevout_null() {
    let mut null = input(0);
    null.previous_output = OutPoint::null();
    let err = check_transaction(&tx(vec![input(1), null], vec![output(1)])).unwrap_err();
    assert_eq!(err, CheckError::NullPrevout { index: 1 });
    assert_eq!(err.reject_reason(), "bad-txns-prevout-null");
}

// ---- RegtestChain ----------------------------------------------------------------------------

/// `OP_TRUE` behind P2WSH: anyone can spend it with the script as its witness, so these tests
/// need no keys.
fn op_true() -> ScriptBuf {
    ScriptBuf::from_bytes(vec![0x51])
}

fn anyone() -> ScriptBuf {
    ScriptBuf::new_p2wsh(&op_true().wscript_hash())
}

fn spend(outpoint: OutPoint) -> TxIn {
    let mut witness = Witness::new();
    witness.push(op_true().as_bytes());
    TxIn {
        previous_output: outpoint,
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness,
    }
}

fn pay(sat: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sat),
        script_pubkey: anyone(),
    }
}

/// A chain with mature 50 BTC coinbase outputs to [`anyone`]; returns the first two.
fn funded() -> (RegtestChain, OutPoint, OutPoint) {
    let mut chain = RegtestChain::new();
    chain.mine_empty(102, &anyone());
    let coin = |h: u32| {
        let block = chain.block(h).expect("mined");
        OutPoint::new(block.txdata[0].compute_txid(), 0)
    };
    let (a, b) = (coin(1), coin(2));
    (chain, a, b)
}

const COIN: u64 = 5_000_000_000;

#[test]
fn regtest_accepts_a_plain_spend() {
    let (mut chain, a, _) = funded();
    let t = tx(vec![spend(a)], vec![pay(COIN - 1_000)]);
    chain.mine(&anyone(), vec![t]).expect("valid spend");
}

#[test]
fn regtest_refuses_one_transaction_spending_a_coin_twice() {
    let (mut chain, a, _) = funded();
    // Before: both inputs found the coin, so the block paid out 100 BTC from a 50 BTC coin.
    let t = tx(vec![spend(a), spend(a)], vec![pay(2 * COIN - 1_000)]);
    let err = chain.mine(&anyone(), vec![t]).unwrap_err();
    assert!(
        matches!(
            err,
            RegtestError::Check {
                source: CheckError::DuplicateInput { index: 1, .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(chain.height(), 102, "nothing changes on an error");
}

#[test]
fn regtest_refuses_two_transactions_of_a_block_spending_one_coin() {
    let (mut chain, a, _) = funded();
    let first = tx(vec![spend(a)], vec![pay(COIN - 1_000)]);
    let second = tx(vec![spend(a)], vec![pay(COIN - 2_000)]);
    let err = chain.mine(&anyone(), vec![first, second]).unwrap_err();
    assert!(
        matches!(err, RegtestError::DoubleSpend { index: 0, outpoint, .. } if outpoint == a),
        "{err}"
    );
    assert_eq!(chain.height(), 102);
}

#[test]
fn regtest_refuses_spending_an_output_of_the_block_twice() {
    let (mut chain, a, _) = funded();
    let first = tx(vec![spend(a)], vec![pay(COIN - 1_000)]);
    let mid = OutPoint::new(first.compute_txid(), 0);
    let second = tx(vec![spend(mid)], vec![pay(COIN - 2_000)]);
    let third = tx(vec![spend(mid)], vec![pay(COIN - 3_000)]);
    let err = chain.mine(&anyone(), vec![first, second, third]).unwrap_err();
    assert!(
        matches!(err, RegtestError::DoubleSpend { index: 0, outpoint, .. } if outpoint == mid),
        "{err}"
    );
}

#[test]
fn regtest_refuses_an_already_spent_coin() {
    let (mut chain, a, _) = funded();
    chain
        .mine(&anyone(), vec![tx(vec![spend(a)], vec![pay(COIN - 1_000)])])
        .expect("first spend");
    let again = tx(vec![spend(a)], vec![pay(COIN - 2_000)]);
    let err = chain.mine(&anyone(), vec![again]).unwrap_err();
    assert!(
        matches!(err, RegtestError::MissingInput { index: 0, outpoint, .. } if outpoint == a),
        "{err}"
    );
    assert!(chain.utxo(&a).is_none());
}

#[test]
fn regtest_refuses_a_transaction_without_outputs() {
    let (mut chain, a, _) = funded();
    // Before: accepted, the whole coin went to fees.
    let err = chain.mine(&anyone(), vec![tx(vec![spend(a)], vec![])]).unwrap_err();
    assert!(
        matches!(
            err,
            RegtestError::Check {
                source: CheckError::NoOutputs,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn regtest_refuses_outputs_whose_sum_overflows_without_panicking() {
    let (mut chain, a, _) = funded();
    // Before: the unchecked Amount sum panicked (and would wrap in release).
    let half = u64::MAX / 2 + 1;
    let t = tx(vec![spend(a)], vec![pay(half), pay(half)]);
    let err = chain.mine(&anyone(), vec![t]).unwrap_err();
    assert!(
        matches!(
            err,
            RegtestError::Check {
                source: CheckError::OutputNegative { index: 0, .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn regtest_refuses_outputs_worth_more_than_the_inputs() {
    let (mut chain, a, b) = funded();
    let t = tx(vec![spend(a), spend(b)], vec![pay(COIN), pay(COIN), pay(1)]);
    let err = chain.mine(&anyone(), vec![t]).unwrap_err();
    assert!(matches!(err, RegtestError::ValueCreated { .. }), "{err}");
}

#[test]
fn regtest_refuses_a_null_prevout() {
    let (mut chain, a, _) = funded();
    let mut null = spend(a);
    null.previous_output = OutPoint::null();
    let t = tx(vec![spend(a), null], vec![pay(COIN - 1_000)]);
    let err = chain.mine(&anyone(), vec![t]).unwrap_err();
    assert!(
        matches!(
            err,
            RegtestError::Check {
                source: CheckError::NullPrevout { index: 1 },
                ..
            }
        ),
        "{err}"
    );
}

// ---- the PSBT extractor and the wallet -------------------------------------------------------

/// A finalized PSBT spending `outpoints` (each an [`anyone`] coin worth `value`) to `outputs`.
fn finalized(outpoints: &[OutPoint], value: u64, outputs: Vec<TxOut>) -> Psbt {
    let unsigned = tx(
        outpoints
            .iter()
            .map(|o| {
                let mut i = spend(*o);
                i.witness = Witness::new();
                i
            })
            .collect(),
        outputs,
    );
    let mut psbt = Psbt::from_unsigned_tx(unsigned).expect("no scripts in an unsigned transaction");
    for input in &mut psbt.inputs {
        input.witness_utxo = Some(pay(value));
        input.final_script_witness = Some(Witness::from_slice(&[op_true().as_bytes()]));
    }
    psbt
}

#[test]
fn extract_verified_refuses_duplicate_inputs() {
    let (_, a, _) = funded();
    // Before: both inputs' scripts pass, so the extractor handed out a transaction no node takes.
    let psbt = finalized(&[a, a], COIN, vec![pay(2 * COIN - 1_000)]);
    let err = extract_verified(&psbt).unwrap_err();
    assert!(
        matches!(err, PsbtError::Check(CheckError::DuplicateInput { index: 1, .. })),
        "{err}"
    );
    // The same PSBT without the duplicate extracts.
    let psbt = finalized(&[a], COIN, vec![pay(COIN - 1_000)]);
    extract_verified(&psbt).expect("a valid spend");
}

#[test]
fn extract_verified_refuses_a_transaction_without_outputs() {
    let (_, a, _) = funded();
    let psbt = finalized(&[a], 1_000, vec![]);
    let err = extract_verified(&psbt).unwrap_err();
    assert!(matches!(err, PsbtError::Check(CheckError::NoOutputs)), "{err}");
}

#[test]
fn the_wallet_refuses_to_finalize_a_psbt_with_duplicate_inputs() {
    let mut f = fixture();
    let mut w = f.wallet("dup", &bip84(0));
    f.fund(&mut [&mut w]);
    let mut psbt = w
        .build(&[(burn(), Amount::from_sat(5_000_000))], rate(2))
        .expect("built");
    w.sign(&mut psbt).expect("signed");
    // A coordinator's copy with the signed input repeated: the maps stay consistent, so
    // validate() passes it; before, it reached BDK's finalizer and Core's interpreter.
    let first = psbt.unsigned_tx.input.first().expect("an input").clone();
    psbt.unsigned_tx.input.push(first);
    let map = psbt.inputs.first().expect("an input map").clone();
    psbt.inputs.push(map);
    let err = w.finalize(&mut psbt).unwrap_err();
    assert!(
        matches!(
            err,
            WalletError::InvalidPsbt(PsbtError::Check(CheckError::DuplicateInput { index: 1, .. }))
        ),
        "{err}"
    );
}

// ---- differential, against bitcoind ----------------------------------------------------------

#[derive(Debug, serde::Deserialize)]
struct Accept {
    allowed: bool,
    #[serde(rename = "reject-reason")]
    reject_reason: Option<String>,
}

/// Version 2, zero inputs, a zero flag byte (Core then reads no outputs), lock time 0.
const EMPTY_TX_HEX: &str = concat!("02000000", "00", "00", "00000000");

/// What anya's script failure is called in Core's reject reason (`mandatory-…` before Core
/// 30, `mempool-…` since).
const SCRIPT_FAILED: &str = "script-verify-flag-failed";

fn core_verdict(node: &Bitcoind, hex: &str) -> Accept {
    let mut answers: Vec<Accept> = node.rpc("testmempoolaccept", &[serde_json::json!([hex])]);
    answers.pop().expect("one answer per transaction")
}

/// anya's verdict in Core's words: the `CheckTransaction` reason, or a script failure, or
/// `None` for a transaction both checks accept.
fn anya_verdict(tx: &Transaction, spent: &[TxOut]) -> Option<String> {
    if let Err(e) = check_transaction(tx) {
        return Some(e.reject_reason().to_owned());
    }
    match verify_transaction(tx, spent, VerifyFlags::consensus()) {
        Ok(()) => None,
        Err(VerifyError::Script { .. }) => Some(SCRIPT_FAILED.to_owned()),
        Err(e) => Some(format!("anya: {e}")),
    }
}

fn same_verdict(node: &Bitcoind, name: &str, tx: &Transaction, core_hex: &str, spent: &[TxOut]) {
    let core = core_verdict(node, core_hex);
    let anya = anya_verdict(tx, spent);
    match &anya {
        None => assert!(core.allowed, "{name}: anya accepts, core says {:?}", core.reject_reason),
        Some(reason) => {
            assert!(!core.allowed, "{name}: core accepts, anya says {reason}");
            let theirs = core.reject_reason.as_deref().unwrap_or_default();
            let agree = if reason == SCRIPT_FAILED {
                theirs.contains(SCRIPT_FAILED)
            } else {
                theirs == reason
            };
            assert!(agree, "{name}: anya says {reason}, core says {theirs}");
        }
    }
}

fn sign(tx: &mut Transaction, key: &SecretKey, prevout: &TxOut) {
    let secp = Secp256k1::new();
    let sighash = SighashCache::new(&*tx)
        .p2wpkh_signature_hash(0, &prevout.script_pubkey, prevout.value, EcdsaSighashType::All)
        .expect("input 0 exists and the script is P2WPKH");
    let signature = bitcoin::ecdsa::Signature {
        signature: secp.sign_ecdsa(&Message::from(sighash), key),
        sighash_type: EcdsaSighashType::All,
    };
    let pk = key.public_key(&secp);
    if let Some(first) = tx.input.first_mut() {
        first.witness = Witness::p2wpkh(&signature, &pk);
    }
}

#[test]
fn check_and_verify_agree_with_testmempoolaccept() {
    let Some(node) = Bitcoind::start() else { return };
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[7u8; 32]).expect("a valid secret key");
    let pk = CompressedPublicKey(key.public_key(&secp));
    let ours = Address::p2wpkh(&pk, Network::Regtest);
    let hashes = node.mine(1, &ours);
    node.mine(100, &node.new_burn_address());
    let hash = hashes.first().expect("one block mined");
    let raw: String = node.rpc("getblock", &[hash.to_string().into(), 0.into()]);
    let block: Block = deserialize_hex(&raw).expect("core's block");
    let cb = block.txdata.first().expect("a coinbase");
    let prevout = cb.output.first().expect("coinbase output 0").clone();
    assert_eq!(prevout.script_pubkey, ours.script_pubkey());
    let spent = [prevout.clone()];
    let burn = node.new_burn_address().script_pubkey();

    let mut valid = tx(
        vec![TxIn {
            previous_output: OutPoint::new(cb.compute_txid(), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        vec![TxOut {
            value: prevout.value - Amount::from_sat(10_000),
            script_pubkey: burn.clone(),
        }],
    );
    sign(&mut valid, &key, &prevout);
    let check = |name: &str, t: &Transaction, spent: &[TxOut]| same_verdict(&node, name, t, &serialize_hex(t), spent);
    check("valid", &valid, &spent);

    // A bad signature: past CheckTransaction, refused by the script interpreter.
    let mut forged = valid.clone();
    forged.output[0].value -= Amount::from_sat(1);
    check("signature over other outputs", &forged, &spent);

    // Core reads "no inputs" as the segwit marker, so the only input-less transaction it decodes
    // is the empty one (see EMPTY_TX_HEX); rust-bitcoin cannot decode that, so it is built here.
    let empty = tx(vec![], vec![]);
    same_verdict(&node, "vin-empty", &empty, EMPTY_TX_HEX, &[]);

    let mut t = valid.clone();
    t.output.clear();
    sign(&mut t, &key, &prevout);
    check("vout-empty", &t, &spent);

    let mut t = valid.clone();
    t.output.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: ScriptBuf::from_bytes(vec![0x6a; 1_000_000]),
    });
    sign(&mut t, &key, &prevout);
    check("oversize", &t, &spent);

    for (name, values) in [
        ("vout-negative", vec![1u64 << 63]),
        ("vout-toolarge", vec![Amount::MAX_MONEY.to_sat() + 1]),
        ("txouttotal-toolarge", vec![Amount::MAX_MONEY.to_sat(), 1]),
    ] {
        let mut t = valid.clone();
        t.output = values
            .into_iter()
            .map(|v| TxOut {
                value: Amount::from_sat(v),
                script_pubkey: burn.clone(),
            })
            .collect();
        sign(&mut t, &key, &prevout);
        check(name, &t, &spent);
    }

    let mut t = valid.clone();
    t.input.push(t.input[0].clone());
    sign(&mut t, &key, &prevout);
    check("inputs-duplicate", &t, &[prevout.clone(), prevout.clone()]);

    let mut t = valid.clone();
    let mut null = t.input[0].clone();
    null.previous_output = OutPoint::null();
    t.input.push(null);
    sign(&mut t, &key, &prevout);
    check("prevout-null", &t, &[prevout.clone(), prevout.clone()]);

    for len in [1, 101] {
        let t = coinbase(len);
        check("cb-length", &t, &[output(0)]);
    }
    // A well-formed coinbase passes CheckTransaction; Core's mempool then refuses any coinbase
    // (a contextual rule, not CheckTransaction's).
    let t = coinbase(2);
    assert_eq!(check_transaction(&t), Ok(()));
    let core = core_verdict(&node, &serialize_hex(&t));
    assert_eq!(core.reject_reason.as_deref(), Some("coinbase"));
}

// ---- randomized differential -------------------------------------------------------------------

/// What an output of a generated transaction is worth.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// An even share of what the inputs leave after the fee.
    Share,
    /// The top bit set: negative as Core reads it.
    Negative,
    /// One satoshi past the money supply.
    TooLarge,
    /// Exactly the money supply.
    MaxMoney,
}

/// How the inputs are signed.
#[derive(Debug, Clone, Copy)]
enum Sig {
    Correct,
    /// Signed, then output 0 changed by a satoshi.
    OutputChangedAfter,
    /// Signed by a key the output does not pay.
    WrongKey,
    /// No witness at all.
    Missing,
}

#[derive(Debug, Clone)]
struct Plan {
    coins: Vec<usize>,
    duplicate: bool,
    null: bool,
    outputs: Vec<Value>,
    fee: i64,
    sig: Sig,
    version: i32,
    oversize: bool,
}

fn plans() -> impl proptest::strategy::Strategy<Value = Plan> {
    use proptest::prelude::*;
    let value = prop_oneof![
        12 => Just(Value::Share),
        1 => Just(Value::Negative),
        1 => Just(Value::TooLarge),
        1 => Just(Value::MaxMoney),
    ];
    let sig = prop_oneof![
        6 => Just(Sig::Correct),
        1 => Just(Sig::OutputChangedAfter),
        1 => Just(Sig::WrongKey),
        1 => Just(Sig::Missing),
    ];
    (
        proptest::sample::subsequence((0..COINS).collect::<Vec<_>>(), 1..=3),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.1),
        // No outputs now and then; one to three mostly.
        (proptest::bool::weighted(0.06), proptest::collection::vec(value, 1..=3)).prop_map(|(none, outputs)| {
            if none {
                Vec::new()
            } else {
                outputs
            }
        }),
        prop_oneof![4 => 1_000i64..100_000, 1 => -100_000i64..0],
        sig,
        1i32..=2,
        proptest::bool::weighted(0.04),
    )
        .prop_map(|(coins, duplicate, null, outputs, fee, sig, version, oversize)| Plan {
            coins,
            duplicate,
            null,
            outputs,
            fee,
            sig,
            version,
            oversize,
        })
}

/// Coinbase outputs paying the test's key, mature, that generated transactions spend.
const COINS: usize = 4;

/// Builds the transaction `plan` describes from `coins` (and the outputs it spends, in input
/// order).
fn build(plan: &Plan, coins: &[(OutPoint, TxOut)], key: &SecretKey, burn: &ScriptBuf) -> (Transaction, Vec<TxOut>) {
    let secp = Secp256k1::new();
    let mut spent: Vec<TxOut> = plan.coins.iter().map(|&i| coins[i].1.clone()).collect();
    let mut input: Vec<TxIn> = plan
        .coins
        .iter()
        .map(|&i| TxIn {
            previous_output: coins[i].0,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        })
        .collect();
    let in_sat: i64 = spent.iter().map(|o| o.value.to_sat() as i64).sum();
    if plan.duplicate {
        input.push(input[0].clone());
        spent.push(spent[0].clone());
    }
    if plan.null {
        let mut null = input[0].clone();
        null.previous_output = OutPoint::null();
        input.push(null);
        spent.push(spent[0].clone());
    }
    let shares = plan.outputs.iter().filter(|v| matches!(v, Value::Share)).count().max(1) as i64;
    let out_sat = in_sat - plan.fee;
    let mut output: Vec<TxOut> = plan
        .outputs
        .iter()
        .map(|v| TxOut {
            value: Amount::from_sat(match v {
                Value::Share => (out_sat / shares) as u64,
                Value::Negative => (1u64 << 63) | 5_000,
                Value::TooLarge => Amount::MAX_MONEY.to_sat() + 1,
                Value::MaxMoney => Amount::MAX_MONEY.to_sat(),
            }),
            script_pubkey: burn.clone(),
        })
        .collect();
    if plan.oversize {
        output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(vec![0x6a; 1_000_000]),
        });
    }
    let mut t = Transaction {
        version: transaction::Version(plan.version),
        lock_time: absolute::LockTime::ZERO,
        input,
        output,
    };
    let other = SecretKey::from_slice(&[9u8; 32]).expect("a valid secret key");
    let signing_key = if matches!(plan.sig, Sig::WrongKey) { &other } else { key };
    if !matches!(plan.sig, Sig::Missing) {
        let witnesses: Vec<Witness> = (0..t.input.len())
            .map(|i| {
                let sighash = SighashCache::new(&t)
                    .p2wpkh_signature_hash(i, &spent[i].script_pubkey, spent[i].value, EcdsaSighashType::All)
                    .expect("a P2WPKH input");
                let signature = bitcoin::ecdsa::Signature {
                    signature: secp.sign_ecdsa(&Message::from(sighash), signing_key),
                    sighash_type: EcdsaSighashType::All,
                };
                Witness::p2wpkh(&signature, &signing_key.public_key(&secp))
            })
            .collect();
        for (i, w) in t.input.iter_mut().zip(witnesses) {
            i.witness = w;
        }
    }
    if matches!(plan.sig, Sig::OutputChangedAfter) {
        if let Some(first) = t.output.first_mut() {
            first.value = Amount::from_sat(first.value.to_sat() ^ 1);
        }
    }
    (t, spent)
}

/// anya's verdict on `tx` (a reject reason in Core's words, `None` when accepted) and Core's.
fn verdicts(node: &Bitcoind, tx: &Transaction, spent: &[TxOut]) -> (Option<String>, Accept) {
    let anya = check_transaction(tx)
        .and_then(|()| check_tx_inputs(tx, spent))
        .map_err(|e| e.reject_reason().to_owned())
        .err()
        .or_else(|| match verify_transaction(tx, spent, VerifyFlags::consensus()) {
            Ok(()) => None,
            Err(VerifyError::Script { .. }) => Some(SCRIPT_FAILED.to_owned()),
            Err(e) => Some(format!("anya: {e}")),
        });
    (anya, core_verdict(node, &serialize_hex(tx)))
}

/// Hundreds of transactions built from random plans (inputs, duplicates, null prevouts, output
/// values in and out of range, fees positive and negative, good and bad signatures, oversize):
/// anya's `check_transaction` + `check_tx_inputs` + `verify_transaction` reach the verdict
/// Core's `testmempoolaccept` reaches, with the same reason. `ANYA_DIFF_SEED` (a number)
/// replays a run; each run prints its seed.
#[test]
#[allow(
    clippy::print_stderr,
    reason = "the seed and the verdicts seen say how to replay a run"
)]
fn random_transactions_agree_with_testmempoolaccept() {
    use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    let Some(node) = Bitcoind::start() else { return };
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[7u8; 32]).expect("a valid secret key");
    let ours = Address::p2wpkh(&CompressedPublicKey(key.public_key(&secp)), Network::Regtest);
    let hashes = node.mine(COINS as u32, &ours);
    node.mine(100, &node.new_burn_address());
    let coins: Vec<(OutPoint, TxOut)> = hashes
        .iter()
        .map(|hash| {
            let raw: String = node.rpc("getblock", &[hash.to_string().into(), 0.into()]);
            let block: Block = deserialize_hex(&raw).expect("core's block");
            let cb = block.txdata.first().expect("a coinbase");
            (OutPoint::new(cb.compute_txid(), 0), cb.output[0].clone())
        })
        .collect();
    let burn = node.new_burn_address().script_pubkey();

    let seed: u64 = std::env::var("ANYA_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("random_transactions_agree_with_testmempoolaccept: ANYA_DIFF_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let seen = Mutex::new(BTreeMap::<String, usize>::new());
    let result = runner.run(&plans(), |plan| {
        let (tx, spent) = build(&plan, &coins, &key, &burn);
        let (anya, core) = verdicts(&node, &tx, &spent);
        let theirs = core.reject_reason.clone().unwrap_or_default();
        let agree = match &anya {
            None => core.allowed,
            Some(reason) if reason == SCRIPT_FAILED => !core.allowed && theirs.contains(SCRIPT_FAILED),
            Some(reason) => !core.allowed && &theirs == reason,
        };
        if !agree {
            return Err(TestCaseError::fail(format!("anya says {anya:?}, core says {core:?}")));
        }
        *seen
            .lock()
            .expect("not poisoned")
            .entry(anya.unwrap_or_else(|| "accepted".into()))
            .or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("ANYA_DIFF_SEED={seed}: {e}");
    }
    let seen = seen.into_inner().expect("not poisoned");
    eprintln!("verdicts: {seen:?}");
    // Every class of verdict was reached, so the agreement above is about each of them.
    for reason in [
        "accepted",
        SCRIPT_FAILED,
        "bad-txns-vout-empty",
        "bad-txns-oversize",
        "bad-txns-vout-negative",
        "bad-txns-vout-toolarge",
        "bad-txns-txouttotal-toolarge",
        "bad-txns-inputs-duplicate",
        "bad-txns-prevout-null",
        "bad-txns-in-belowout",
    ] {
        assert!(
            seen.contains_key(reason),
            "no generated transaction got {reason}: {seen:?}"
        );
    }
}

// ---- amounts at the money limit -----------------------------------------------------------------

/// Values that cluster around the money limit and `u64`'s edge, where sums go wrong.
fn money_edge() -> impl proptest::strategy::Strategy<Value = u64> {
    use proptest::prelude::*;
    let max = Amount::MAX_MONEY.to_sat();
    prop_oneof![
        0..=1_000u64,
        (max - 1_000)..=(max + 1_000),
        (max / 2 - 10)..=(max / 2 + 10),
        (u64::MAX - 10)..=u64::MAX,
        any::<u64>(),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

    /// `check_tx_inputs` is the exact fee when every sum is in the money range, and otherwise
    /// the error of the first sum that leaves it; it never wraps or panics.
    #[test]
    fn check_tx_inputs_is_exact_at_the_money_limit(
        ins in proptest::collection::vec(money_edge(), 1..5),
        outs in proptest::collection::vec(money_edge(), 1..5),
    ) {
        let max = u128::from(Amount::MAX_MONEY.to_sat());
        let spent: Vec<TxOut> = ins.iter().map(|v| output(*v)).collect();
        let t = tx((0..ins.len()).map(|i| input(i as u8 + 1)).collect(), outs.iter().map(|v| output(*v)).collect());
        let prefix_ok = |values: &[u64]| {
            values.iter().try_fold(0u128, |sum, v| Some(sum + u128::from(*v)).filter(|s| *s <= max))
        };
        let got = check_tx_inputs(&t, &spent);
        match (prefix_ok(&ins), prefix_ok(&outs)) {
            (None, _) => proptest::prop_assert!(matches!(got, Err(CheckError::InputValuesOutOfRange { .. })), "{:?}", got),
            (Some(_), None) => proptest::prop_assert!(matches!(got, Err(CheckError::OutputTotalTooLarge { .. })), "{:?}", got),
            (Some(i), Some(o)) if i < o => proptest::prop_assert!(matches!(got, Err(CheckError::InputsBelowOutputs { .. })), "{:?}", got),
            (Some(i), Some(o)) => proptest::prop_assert_eq!(got.map(|f| u128::from(f.to_sat())).ok(), Some(i - o)),
        }
    }
}
