//! BIP143 examples (`sighash/bip143_examples.json`): segwit v0 signature hashes and signatures.
//!
//! For every sighash case the input is found by the outpoint its preimage commits to, the script
//! code is derived from the input's own scripts (P2WPKH program, or the witness script and, for
//! `OP_CODESEPARATOR`, the part after an executed separator), and `SighashCache` must produce both
//! the file's preimage byte for byte and its sighash. The file's signature must verify under its
//! public key against the computed sighash, and where the private key is given anya's software HSM
//! signs the same sighash: its low-S RFC 6979 signature verifies with bare `secp256k1`, and is
//! compared byte for byte with the file's where the BIP's signer produced the same one.

use anya_hsm::{HsmProvider, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, PublicKey, SecretBytes};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::opcodes::all::OP_CODESEPARATOR;
use bitcoin::script::Instruction;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, Denomination, Script, ScriptBuf, Transaction};
use secp256k1::{ecdsa, Message, Secp256k1};
use serde_json::Value;

mod common;
use common::hex_of as hex;

fn json() -> Value {
    common::json("sighash/bip143_examples.json")
}

/// The script codes a P2WSH input can sign: the whole witness script, and what follows each
/// `OP_CODESEPARATOR` (the one last executed before the `CHECKSIG` decides which applies).
fn script_codes(witness_script: &Script) -> Vec<ScriptBuf> {
    let mut codes = vec![witness_script.to_owned()];
    for item in witness_script.instruction_indices() {
        let (at, instruction) = item.expect("witness script parses");
        if instruction == Instruction::Op(OP_CODESEPARATOR) {
            codes.push(ScriptBuf::from_bytes(witness_script.as_bytes()[at + 1..].to_vec()));
        }
    }
    codes
}

#[test]
fn segwit_v0_sighashes_and_signatures_match() {
    let secp = Secp256k1::new();
    let hsm = anya_hsm::conformance::software_fixture();
    let examples = json()["examples"].as_array().expect("examples").clone();
    let (mut cases, mut p2wpkh, mut after_separator, mut variants) = (0, 0, 0, 0);
    let (mut file_sigs_verified, mut hsm_signed, mut hsm_byte_equal) = (0, 0, 0);
    for (e, example) in examples.iter().enumerate() {
        let section = example["section"].as_str().expect("section");
        let tx: Transaction = deserialize(&hex(&example["unsigned_tx"])).expect("unsigned tx");
        let inputs = example["inputs"].as_array().expect("inputs");
        let spent = example["spent_outputs"].as_array().expect("spent_outputs");
        assert_eq!(inputs.len(), tx.input.len(), "{section}: one entry per input");
        assert_eq!(spent.len(), tx.input.len(), "{section}: one spent output per input");

        for case in example["sighash_cases"].as_array().expect("sighash_cases") {
            let preimage = hex(&case["preimage"]);
            let want_sighash = hex(&case["sighash"]);
            assert_eq!(
                sha256d::Hash::hash(&preimage).to_byte_array().as_slice(),
                want_sighash.as_slice(),
                "{section}: preimage hashes to the sighash"
            );
            // A case may belong to a variant transaction (the FindAndDelete example): its
            // sighash is over that transaction, which spends an output of the same value.
            let signed_key = case["applies_to"].as_str().unwrap_or("signed_tx");
            let signed: Transaction = deserialize(&hex(&example[signed_key])).expect("signed tx");
            let case_tx = if signed_key == "signed_tx" {
                tx.clone()
            } else {
                signed.clone()
            };
            // The input is the one whose outpoint the preimage commits to (after nVersion and
            // the two 32-byte hashes).
            let outpoint = &preimage[68..104];
            let index = case_tx
                .input
                .iter()
                .position(|txin| serialize(&txin.previous_output) == outpoint)
                .unwrap_or_else(|| panic!("{section}: preimage outpoint is not an input"));
            let input = &inputs[index];
            let hash_type = u32::try_from(case["nHashType"].as_u64().expect("nHashType")).expect("u32");
            let sighash_type = EcdsaSighashType::from_standard(hash_type).expect("standard sighash type");
            let value = Amount::from_str_in(
                spent[index]["value_btc"].as_str().expect("value_btc"),
                Denomination::Bitcoin,
            )
            .expect("amount");
            let spk = ScriptBuf::from_bytes(hex(&input["scriptPubKey"]));
            assert_eq!(spk.as_bytes(), hex(&spent[index]["scriptPubKey"]).as_slice());
            // The witness program: the scriptPubKey, or the redeemScript of a P2SH-wrapped one.
            let program = match input.get("redeemScript") {
                Some(redeem) => {
                    let redeem = ScriptBuf::from_bytes(hex(redeem));
                    assert_eq!(
                        ScriptBuf::new_p2sh(&redeem.script_hash()),
                        spk,
                        "{section}: redeemScript"
                    );
                    redeem
                }
                None => spk.clone(),
            };

            let mut cache = SighashCache::new(&case_tx);
            let script_code = if program.is_p2wpkh() {
                let sighash = cache
                    .p2wpkh_signature_hash(index, &program, value, sighash_type)
                    .expect("p2wpkh sighash");
                assert_eq!(sighash.to_byte_array().as_slice(), want_sighash.as_slice(), "{section}");
                p2wpkh += 1;
                program.p2wpkh_script_code().expect("p2wpkh program")
            } else {
                assert!(program.is_p2wsh(), "{section}: input {index} is segwit v0");
                // The witness script: the last witness element of the signed transaction, which
                // is the one given with the input where there is one.
                let witness_script =
                    ScriptBuf::from_bytes(signed.input[index].witness.last().expect("witness script").to_vec());
                if signed_key == "signed_tx" {
                    if let Some(given) = input.get("witnessScript") {
                        assert_eq!(hex(given), witness_script.as_bytes(), "{section}: witnessScript");
                    }
                    assert_eq!(
                        ScriptBuf::new_p2wsh(&witness_script.wscript_hash()),
                        program,
                        "{section}"
                    );
                } else {
                    variants += 1;
                }
                let matching: Vec<(usize, ScriptBuf)> = script_codes(&witness_script)
                    .into_iter()
                    .enumerate()
                    .filter(|(_, code)| {
                        cache
                            .p2wsh_signature_hash(index, code, value, sighash_type)
                            .expect("p2wsh sighash")
                            .to_byte_array()
                            .as_slice()
                            == want_sighash.as_slice()
                    })
                    .collect();
                assert_eq!(
                    matching.len(),
                    1,
                    "{section}: exactly one script code gives the sighash"
                );
                let (position, code) = matching.into_iter().next().expect("one match");
                if position > 0 {
                    after_separator += 1;
                }
                code
            };
            // The file's signature is in the signed transaction's witness for this input.
            if let Some(sig) = case.get("signature") {
                assert!(
                    signed.input[index]
                        .witness
                        .iter()
                        .any(|item| item == hex(sig).as_slice()),
                    "{section}: signature is in the signed witness"
                );
            }
            // The whole preimage, byte for byte.
            let mut encoded = Vec::new();
            cache
                .segwit_v0_encode_signing_data_to(&mut encoded, index, &script_code, value, sighash_type)
                .expect("signing data");
            assert_eq!(
                encoded.to_lower_hex_string(),
                preimage.to_lower_hex_string(),
                "{section}: preimage"
            );

            let digest: [u8; 32] = want_sighash.clone().try_into().expect("32-byte sighash");
            let msg = Message::from_digest(digest);
            let pubkey_hex = case.get("pubkey").or_else(|| input.get("public_key"));
            let pubkey = pubkey_hex.map(|p| secp256k1::PublicKey::from_slice(&hex(p)).expect("public key"));

            // The file's signature verifies against the computed sighash.
            let file_sig = case.get("signature").map(|s| {
                let bytes = hex(s);
                let (hash_byte, der) = bytes.split_last().expect("non-empty signature");
                assert_eq!(u32::from(*hash_byte), hash_type, "{section}: signature's sighash byte");
                ecdsa::Signature::from_der(der).expect("DER signature")
            });
            if let Some(sig) = &file_sig {
                let pk = pubkey.expect("a signature comes with its public key");
                let mut normalized = *sig;
                normalized.normalize_s();
                secp.verify_ecdsa(&msg, &normalized, &pk)
                    .unwrap_or_else(|e| panic!("{section}: file signature: {e}"));
                file_sigs_verified += 1;
            }

            // Where the private key is given, anya's HSM signs the same sighash.
            if let Some(privkey) = case.get("privkey").or_else(|| input.get("private_key")) {
                let id = Label::new(format!("bip143-{e}-{cases}")).expect("label");
                hsm.import_key(
                    &id,
                    KeyMaterial::Secp256k1(SecretBytes::new(hex(privkey))),
                    KeyPolicy::default_for(KeySpec::Secp256k1),
                )
                .expect("import key");
                let PublicKey::Secp256k1(hsm_pk) = hsm.public_key(KeyRef::Key(&id)).expect("public key") else {
                    panic!("secp256k1 key")
                };
                if let Some(pk) = pubkey {
                    assert_eq!(hsm_pk, pk, "{section}: private key matches the public key");
                }
                let sig = hsm.sign_ecdsa(KeyRef::Key(&id), &digest).expect("sign");
                secp.verify_ecdsa(&msg, &sig, &hsm_pk)
                    .unwrap_or_else(|e| panic!("{section}: HSM signature: {e}"));
                if file_sig == Some(sig) {
                    hsm_byte_equal += 1;
                }
                hsm_signed += 1;
            }
            cases += 1;
        }
    }
    assert_eq!((examples.len(), cases), (6, 14), "examples and sighash cases processed");
    assert_eq!(
        (p2wpkh, after_separator, variants),
        (2, 2, 1),
        "P2WPKH cases, script codes after OP_CODESEPARATOR, variant-transaction cases"
    );
    assert_eq!(file_sigs_verified, 13, "file signatures verified");
    assert_eq!(hsm_signed, 12, "cases signed by the HSM");
    // The BIP's example signatures are RFC 6979 except where noted by this count changing.
    assert_eq!(hsm_byte_equal, 12, "HSM signatures equal to the file's byte for byte");
    hsm.verify_audit_chain().expect("audit chain");
}
