//! Inputs verified per second on one core: anya's `TransactionVerifier::verify_input` beside a
//! direct `bitcoinkernel::verify` call on the same loaded inputs (the ratio is anya's overhead),
//! plus the one-shot `verify_input` that loads the transaction each time.

use anya_bitcoin::verify::{verify_input, TransactionVerifier, VerifyFlags};
use bitcoin::consensus::encode;
use bitcoin::hashes::Hash;
use bitcoin::key::TapTweak;
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{
    absolute, transaction, Amount, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use secp256k1::{Keypair, Message, Secp256k1, SecretKey, XOnlyPublicKey};
use std::hint::black_box;

/// Input 0: P2WPKH (ECDSA); input 1: Taproot key path (BIP 340).
fn fixture() -> (Transaction, Vec<TxOut>) {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[0x44; 32]).expect("constant in the curve order");
    let pk = CompressedPublicKey(sk.public_key(&secp));
    let kp = Keypair::from_secret_key(&secp, &SecretKey::from_slice(&[0x55; 32]).expect("valid"));
    let (x, _) = XOnlyPublicKey::from_keypair(&kp);
    let spent = vec![
        TxOut {
            value: Amount::from_sat(80_000),
            script_pubkey: ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()),
        },
        TxOut {
            value: Amount::from_sat(20_000),
            script_pubkey: ScriptBuf::new_p2tr(&secp, x, None),
        },
    ];
    let input = |vout| TxIn {
        previous_output: OutPoint {
            txid: Txid::from_byte_array([9; 32]),
            vout,
        },
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness: Witness::new(),
    };
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![input(0), input(1)],
        output: vec![TxOut {
            value: Amount::from_sat(99_000),
            script_pubkey: ScriptBuf::new(),
        }],
    };
    let mut cache = SighashCache::new(&tx);
    let h0 = cache
        .p2wpkh_signature_hash(0, &spent[0].script_pubkey, spent[0].value, EcdsaSighashType::All)
        .expect("p2wpkh input");
    let h1 = cache
        .taproot_key_spend_signature_hash(1, &Prevouts::All(&spent), TapSighashType::Default)
        .expect("taproot input");
    let ecdsa = secp.sign_ecdsa(&Message::from_digest(h0.to_byte_array()), &sk);
    let mut der = ecdsa.serialize_der().to_vec();
    der.push(EcdsaSighashType::All as u8);
    let schnorr = secp.sign_schnorr_no_aux_rand(
        &Message::from_digest(h1.to_byte_array()),
        &kp.tap_tweak(&secp, None).to_keypair(),
    );
    tx.input[0].witness = Witness::from_slice(&[der, pk.to_bytes().to_vec()]);
    tx.input[1].witness = Witness::from_slice(&[schnorr.as_ref().to_vec()]);
    (tx, spent)
}

fn bench(c: &mut Criterion) {
    let (tx, spent) = fixture();
    let flags = VerifyFlags::consensus();
    let anya = TransactionVerifier::new(&tx, &spent).expect("fixture loads");
    anya.verify_all(flags).expect("fixture is valid");

    let k_tx = bitcoinkernel::Transaction::new(&encode::serialize(&tx)).expect("kernel reads tx");
    let k_scripts: Vec<_> = spent
        .iter()
        .map(|o| bitcoinkernel::ScriptPubkey::new(o.script_pubkey.as_bytes()).expect("script"))
        .collect();
    let k_amounts: Vec<i64> = spent.iter().map(|o| o.value.to_sat() as i64).collect();
    let k_outs: Vec<_> = k_scripts
        .iter()
        .zip(&k_amounts)
        .map(|(s, a)| bitcoinkernel::TxOut::new(s, *a))
        .collect();
    let k_pre = bitcoinkernel::PrecomputedTransactionData::new(&k_tx, &k_outs).expect("precompute");

    for (index, name) in [(0usize, "p2wpkh"), (1, "taproot_key_path")] {
        let mut group = c.benchmark_group(format!("verify_input/{name}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("anya_TransactionVerifier", |b| {
            b.iter(|| anya.verify_input(black_box(index), flags).expect("valid"))
        });
        group.bench_function("bitcoinkernel_verify", |b| {
            b.iter(|| {
                bitcoinkernel::verify(
                    &k_scripts[index],
                    Some(k_amounts[index]),
                    &k_tx,
                    black_box(index),
                    Some(bitcoinkernel::VERIFY_ALL),
                    &k_pre,
                )
                .expect("valid")
            })
        });
        group.bench_function("anya_verify_input_oneshot", |b| {
            b.iter(|| verify_input(&tx, black_box(index), &spent, flags).expect("valid"))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
