//! Taproot key-path and script-path spends built with rust-bitcoin and bare `secp256k1`,
//! verified by Core's interpreter; one flipped signature byte is reported with its input index.

use anya_bitcoin::verify::{
    verify_input, verify_transaction, ScriptFailure, TransactionVerifier, VerifyError, VerifyFlags,
};
use bitcoin::hashes::Hash;
use bitcoin::key::TapTweak;
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::{LeafVersion, TapLeafHash, TaprootBuilder};
use bitcoin::{
    absolute, opcodes, script, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use secp256k1::{Keypair, Message, Secp256k1, SecretKey, XOnlyPublicKey};

fn keypair(secp: &Secp256k1<secp256k1::All>, byte: u8) -> Keypair {
    let sk = SecretKey::from_slice(&[byte; 32]).expect("constant in the curve order");
    Keypair::from_secret_key(secp, &sk)
}

/// Input 0 spends a key-path output, input 1 a script-path output (`<key> OP_CHECKSIG` leaf).
fn signed_pair() -> (Transaction, Vec<TxOut>) {
    let secp = Secp256k1::new();
    let key_owner = keypair(&secp, 0x11);
    let internal = keypair(&secp, 0x22);
    let leaf_owner = keypair(&secp, 0x33);
    let (internal_x, _) = XOnlyPublicKey::from_keypair(&internal);
    let (key_owner_x, _) = XOnlyPublicKey::from_keypair(&key_owner);
    let (leaf_x, _) = XOnlyPublicKey::from_keypair(&leaf_owner);

    let leaf = script::Builder::new()
        .push_x_only_key(&leaf_x)
        .push_opcode(opcodes::all::OP_CHECKSIG)
        .into_script();
    let info = TaprootBuilder::new()
        .add_leaf(0, leaf.clone())
        .expect("depth 0")
        .finalize(&secp, internal_x)
        .expect("complete tree");

    let spent = vec![
        TxOut {
            value: Amount::from_sat(70_000),
            script_pubkey: ScriptBuf::new_p2tr(&secp, key_owner_x, None),
        },
        TxOut {
            value: Amount::from_sat(30_000),
            script_pubkey: ScriptBuf::new_p2tr(&secp, internal_x, info.merkle_root()),
        },
    ];
    let input = |vout| TxIn {
        previous_output: OutPoint {
            txid: Txid::from_byte_array([7; 32]),
            vout,
        },
        script_sig: ScriptBuf::new(),
        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
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

    let prevouts = Prevouts::All(&spent);
    let mut cache = SighashCache::new(&tx);
    let key_hash = cache
        .taproot_key_spend_signature_hash(0, &prevouts, TapSighashType::Default)
        .expect("input 0 exists");
    let leaf_hash = TapLeafHash::from_script(&leaf, LeafVersion::TapScript);
    let script_hash = cache
        .taproot_script_spend_signature_hash(1, &prevouts, leaf_hash, TapSighashType::Default)
        .expect("input 1 exists");

    let tweaked = key_owner.tap_tweak(&secp, None).to_keypair();
    let key_sig = secp.sign_schnorr_no_aux_rand(&Message::from_digest(key_hash.to_byte_array()), &tweaked);
    let leaf_sig = secp.sign_schnorr_no_aux_rand(&Message::from_digest(script_hash.to_byte_array()), &leaf_owner);
    let control = info
        .control_block(&(leaf.clone(), LeafVersion::TapScript))
        .expect("leaf is in the tree");

    tx.input[0].witness = Witness::from_slice(&[key_sig.as_ref().to_vec()]);
    tx.input[1].witness = Witness::from_slice(&[leaf_sig.as_ref().to_vec(), leaf.to_bytes(), control.serialize()]);
    (tx, spent)
}

fn flip_signature_byte(tx: &mut Transaction, input: usize) {
    let mut elements: Vec<Vec<u8>> = tx.input[input].witness.iter().map(<[u8]>::to_vec).collect();
    elements[0][10] ^= 0x01;
    tx.input[input].witness = Witness::from_slice(&elements);
}

#[test]
fn valid_key_and_script_path_spends_pass() -> Result<(), VerifyError> {
    let (tx, spent) = signed_pair();
    verify_transaction(&tx, &spent, VerifyFlags::consensus())?;
    verify_input(&tx, 0, &spent, VerifyFlags::consensus())?;
    verify_input(&tx, 1, &spent, VerifyFlags::consensus())?;
    Ok(())
}

#[test]
fn flipped_key_path_signature_fails_at_input_0() {
    let (mut tx, spent) = signed_pair();
    flip_signature_byte(&mut tx, 0);
    let err = verify_transaction(&tx, &spent, VerifyFlags::consensus()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Script {
                index: 0,
                reason: ScriptFailure::Invalid
            }
        ),
        "{err:?}"
    );
}

#[test]
fn flipped_script_path_signature_fails_at_input_1() {
    let (mut tx, spent) = signed_pair();
    flip_signature_byte(&mut tx, 1);
    let err = verify_transaction(&tx, &spent, VerifyFlags::consensus()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Script {
                index: 1,
                reason: ScriptFailure::Invalid
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "input 1 failed verification: script evaluation failed");
    // Input 0 is untouched and still verifies on its own.
    verify_input(&tx, 0, &spent, VerifyFlags::consensus()).expect("input 0 is valid");
}

#[test]
fn without_taproot_rule_the_bad_signature_is_not_checked() {
    // Before BIP 341 a v1 witness program is anyone-can-spend: the flag really reaches the kernel.
    let (mut tx, spent) = signed_pair();
    flip_signature_byte(&mut tx, 1);
    verify_transaction(&tx, &spent, VerifyFlags::pre_taproot()).expect("v1 unencumbered");
}

#[test]
fn argument_errors_are_typed() {
    let (tx, spent) = signed_pair();
    assert!(matches!(
        verify_transaction(&tx, &spent[..1], VerifyFlags::consensus()),
        Err(VerifyError::SpentOutputsMismatch {
            inputs: 2,
            spent_outputs: 1
        })
    ));
    let verifier = TransactionVerifier::new(&tx, &spent).expect("loads");
    assert!(matches!(
        verifier.verify_input(2, VerifyFlags::consensus()),
        Err(VerifyError::InputIndexOutOfRange { index: 2, inputs: 2 })
    ));
    assert!(matches!(
        verifier.verify_input(0, VerifyFlags::WITNESS),
        Err(VerifyError::InvalidFlags { .. })
    ));
}
