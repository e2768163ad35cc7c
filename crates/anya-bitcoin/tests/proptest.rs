//! Random bytes as a transaction, scripts and witnesses: a typed error or a verdict, never a
//! panic.

use anya_bitcoin::verify::{verify_input, verify_transaction, VerifyFlags};
use bitcoin::consensus::deserialize;
use bitcoin::{absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_transaction_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        spk in proptest::collection::vec(any::<u8>(), 0..80),
        value in any::<u64>(),
        bits in any::<u32>(),
    ) {
        if let Ok(tx) = deserialize::<Transaction>(&bytes) {
            let spent: Vec<TxOut> = tx
                .input
                .iter()
                .map(|_| TxOut { value: Amount::from_sat(value), script_pubkey: ScriptBuf::from_bytes(spk.clone()) })
                .collect();
            let _ = verify_transaction(&tx, &spent, VerifyFlags::from_bits_truncate(bits));
        }
    }

    #[test]
    fn random_scripts_and_witness(
        script_sig in proptest::collection::vec(any::<u8>(), 0..120),
        spk in proptest::collection::vec(any::<u8>(), 0..120),
        witness in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..4),
        value in 0u64..=21_000_000 * 100_000_000,
        bits in any::<u32>(),
    ) {
        let tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: ScriptBuf::from_bytes(script_sig),
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&witness),
            }],
            output: vec![TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new() }],
        };
        let spent = [TxOut { value: Amount::from_sat(value), script_pubkey: ScriptBuf::from_bytes(spk) }];
        let _ = verify_input(&tx, 0, &spent, VerifyFlags::from_bits_truncate(bits));
        let _ = verify_input(&tx, 0, &spent, VerifyFlags::consensus());
    }
}
