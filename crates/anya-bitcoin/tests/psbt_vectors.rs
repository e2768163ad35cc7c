//! BIP174 and BIP371 PSBT test vectors (`psbt/*.json`) through `anya_bitcoin::psbt`.
//!
//! Every valid PSBT decodes from raw bytes, hex text and base64 text, and serializes back to the
//! same bytes and base64. Every invalid one is refused with a typed `PsbtError`, never a panic.
//! The BIP174 workflow (creator, signer, combiner, finalizer, extractor) is replayed with
//! rust-bitcoin's `Psbt` and rust-miniscript's `PsbtExt`, and each step's result must equal the
//! BIP's.

use std::collections::BTreeMap;
use std::str::FromStr;

use anya_bitcoin::psbt::{decode, encode_base64, PsbtError};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hex::DisplayHex;
use bitcoin::psbt::Psbt;
use bitcoin::{
    absolute, transaction, Amount, Denomination, OutPoint, PrivateKey, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Txid, Witness,
};
use miniscript::psbt::PsbtExt;
use secp256k1::Secp256k1;
use serde_json::Value;

mod common;
use common::{hex, str_of};

fn json(file: &str) -> Value {
    common::json(&format!("psbt/{file}"))
}

/// Decodes a case's PSBT from all three spellings; they must agree.
fn decode_all(case: &Value) -> Result<Psbt, PsbtError> {
    let hex_text = str_of(case, "hex");
    let base64 = str_of(case, "base64");
    let from_b64 = decode(base64.as_bytes());
    let from_hex_text = decode(hex_text.as_bytes());
    let from_raw = decode(&hex(hex_text));
    match (&from_b64, &from_hex_text, &from_raw) {
        (Ok(a), Ok(b), Ok(c)) => {
            assert_eq!(a, b, "{}: base64 and hex disagree", str_of(case, "description"));
            assert_eq!(a, c, "{}: base64 and raw disagree", str_of(case, "description"));
        }
        (Err(_), Err(_), Err(_)) => {}
        _ => panic!(
            "{}: spellings disagree: base64 {:?}, hex {:?}, raw {:?}",
            str_of(case, "description"),
            from_b64.as_ref().err(),
            from_hex_text.as_ref().err(),
            from_raw.as_ref().err()
        ),
    }
    from_b64
}

/// Checks a PSBT equals a `{hex, base64}` pair (or `result_hex`/`result_base64`) byte for byte.
fn assert_serializes_to(psbt: &Psbt, hex_text: &str, base64: &str, what: &str) {
    let ours = psbt.serialize().to_lower_hex_string();
    if ours != hex_text {
        let at = ours.bytes().zip(hex_text.bytes()).take_while(|(a, b)| a == b).count();
        let from = at.saturating_sub(40);
        panic!(
            "{what}: bytes differ at hex offset {at}: ours ...{}... theirs ...{}...",
            &ours[from..(at + 80).min(ours.len())],
            &hex_text[from..(at + 80).min(hex_text.len())]
        );
    }
    assert_eq!(encode_base64(psbt), base64, "{what}: base64");
}

/// Whether `psbt` serializes to exactly these bytes and base64.
fn round_trips(psbt: &Psbt, hex_text: &str, base64: &str) -> bool {
    psbt.serialize().to_lower_hex_string() == hex_text && encode_base64(psbt) == base64
}

/// A PSBT whose bytes rust-bitcoin writes in another key order: decoding its re-serialization
/// gives the same PSBT, so only the order of key-value pairs differs.
fn assert_same_up_to_order(psbt: &Psbt, hex_text: &str, what: &str) {
    let ours = psbt.serialize();
    assert_eq!(ours.len(), hex_text.len() / 2, "{what}: same length");
    assert_eq!(&Psbt::deserialize(&ours).expect("re-decodes"), psbt, "{what}");
    let theirs = Psbt::deserialize(&hex(hex_text)).expect("decodes");
    assert_eq!(&theirs, psbt, "{what}: same PSBT");
}

/// Valid cases: decode and round-trip. Returns the number of cases and the indices that decode
/// to the same PSBT but re-serialize in another key order.
fn check_valid(file: &str, section: &str) -> (usize, Vec<usize>) {
    let v = json(file);
    let cases = v[section].as_array().expect("cases");
    let mut reordered = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let what = format!("{file} {section} {i}: {}", str_of(case, "description"));
        let psbt = decode_all(case).unwrap_or_else(|e| panic!("{what}: {e}"));
        if !round_trips(&psbt, str_of(case, "hex"), str_of(case, "base64")) {
            assert_same_up_to_order(&psbt, str_of(case, "hex"), &what);
            reordered.push(i);
        }
    }
    (cases.len(), reordered)
}

/// Invalid cases: every spelling is refused with `PsbtError::Invalid` (the bytes are well-formed
/// base64/hex, so the refusal is a BIP174/BIP371 rule, not the encoding). Returns the number of
/// cases refused, and the indices of those accepted.
fn check_invalid(file: &str) -> (usize, Vec<usize>) {
    let v = json(file);
    let mut refused = 0;
    let mut accepted = Vec::new();
    for (i, case) in v["invalid"].as_array().expect("invalid").iter().enumerate() {
        let what = format!("{file} invalid {i}: {}", str_of(case, "description"));
        match decode_all(case) {
            Err(PsbtError::Invalid(_)) => refused += 1,
            Err(other) => panic!("{what}: refused for the wrong reason: {other}"),
            Ok(_) => accepted.push(i),
        }
    }
    (refused, accepted)
}

#[test]
fn bip174_valid_psbts_round_trip() {
    let (cases, reordered) = check_valid("bip174_test_vectors.json", "valid");
    assert_eq!((cases, reordered), (10, vec![]), "BIP174 valid cases, re-ordered ones");
    // These are well-formed PSBTs that a signer must refuse to sign; as serializations they are
    // valid and must round-trip.
    let (cases, reordered) = check_valid("bip174_test_vectors.json", "fails_signer_checks");
    assert_eq!(
        (cases, reordered),
        (4, vec![]),
        "BIP174 fails-signer-checks cases, re-ordered ones"
    );
}

/// BIP371 valid case 4 lists its `PSBT_OUT_TAP_TREE` leaves (two at depth 2) in another order
/// than rust-bitcoin, which rebuilds the tree with `TaprootBuilder` and writes the leaves in its
/// own depth-first order; the decoded PSBTs are equal.
const BIP371_REORDERED: [usize; 1] = [4];

#[test]
fn bip371_valid_psbts_round_trip() {
    let (cases, reordered) = check_valid("bip371_test_vectors.json", "valid");
    assert_eq!(cases, 6, "BIP371 valid cases");
    assert_eq!(
        reordered, BIP371_REORDERED,
        "BIP371 valid cases re-serialized in another order"
    );
}

#[test]
fn bip174_invalid_psbts_are_refused() {
    let (refused, accepted) = check_invalid("bip174_test_vectors.json");
    assert_eq!(accepted, Vec::<usize>::new(), "BIP174 invalid cases accepted");
    assert_eq!(refused, 20, "BIP174 invalid cases refused");
}

#[test]
fn bip371_invalid_psbts_are_refused() {
    let (refused, accepted) = check_invalid("bip371_test_vectors.json");
    assert_eq!(accepted, Vec::<usize>::new(), "BIP371 invalid cases accepted");
    assert_eq!(refused, 11, "BIP371 invalid cases refused");
}

/// A workflow step's expected result.
fn result_of(workflow: &Value, step: &str) -> (String, String) {
    let step = step.strip_suffix(".result").unwrap_or(step);
    (
        str_of(&workflow[step], "result_hex").to_owned(),
        str_of(&workflow[step], "result_base64").to_owned(),
    )
}

fn psbt_of(workflow: &Value, step: &str) -> Psbt {
    let (_, base64) = result_of(workflow, step);
    decode(base64.as_bytes()).unwrap_or_else(|e| panic!("{step}: {e}"))
}

fn assert_step(psbt: &Psbt, workflow: &Value, step: &str) {
    let (hex_text, base64) = result_of(workflow, step);
    assert_serializes_to(psbt, &hex_text, &base64, step);
}

#[test]
fn bip174_workflow_roles() {
    let secp = Secp256k1::new();
    let w = json("bip174_test_vectors.json")["workflow"].clone();
    let mut steps = 0;

    // Every step's result is itself a valid PSBT that round-trips.
    for step in [
        "creator",
        "updater",
        "updater_sighash_all",
        "signer_1",
        "signer_2",
        "finalizer",
        "combiner_unknown_keys_lexicographic",
    ] {
        assert_step(&psbt_of(&w, step), &w, step);
    }

    // Creator: version 2, locktime 0, final sequences.
    let creator = &w["creator"];
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: creator["inputs"]
            .as_array()
            .expect("inputs")
            .iter()
            .map(|i| TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_str(str_of(i, "txid")).expect("txid"),
                    vout: u32::try_from(i["vout"].as_u64().expect("vout")).expect("u32"),
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            })
            .collect(),
        output: creator["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .map(|o| TxOut {
                value: Amount::from_str_in(str_of(o, "amount_btc"), Denomination::Bitcoin).expect("amount"),
                script_pubkey: ScriptBuf::from_bytes(hex(str_of(o, "scriptPubKey"))),
            })
            .collect(),
    };
    assert_step(&Psbt::from_unsigned_tx(tx).expect("unsigned tx"), &w, "creator");
    steps += 1;

    // Updater: the previous transactions are the inputs' UTXOs, and the redeem/witness scripts and
    // key paths are those the BIP lists.
    let updated = psbt_of(&w, "updater");
    let previous: Vec<Transaction> = w["updater"]["previous_transactions"]
        .as_array()
        .expect("previous_transactions")
        .iter()
        .map(|t| deserialize(&hex(t.as_str().expect("hex"))).expect("previous tx"))
        .collect();
    for (input, txin) in updated.inputs.iter().zip(&updated.unsigned_tx.input) {
        let prev = previous
            .iter()
            .find(|t| t.compute_txid() == txin.previous_output.txid)
            .expect("previous transaction of the input");
        let spent = &prev.output[txin.previous_output.vout as usize];
        let utxo = input.witness_utxo.clone().or_else(|| {
            input
                .non_witness_utxo
                .as_ref()
                .map(|t| t.output[txin.previous_output.vout as usize].clone())
        });
        assert_eq!(utxo.as_ref(), Some(spent), "updater: input UTXO");
    }
    let scripts_in_psbt: Vec<Vec<u8>> = updated
        .inputs
        .iter()
        .flat_map(|i| i.redeem_script.iter().chain(i.witness_script.iter()))
        .map(|s| s.to_bytes())
        .collect();
    for key in ["redeem_scripts", "witness_scripts"] {
        for s in w["updater"][key].as_array().expect("scripts") {
            assert!(
                scripts_in_psbt.contains(&hex(s.as_str().expect("hex"))),
                "updater: {key}"
            );
        }
    }
    let paths: BTreeMap<String, String> = updated
        .inputs
        .iter()
        .flat_map(|i| i.bip32_derivation.iter())
        .chain(updated.outputs.iter().flat_map(|o| o.bip32_derivation.iter()))
        .map(|(pk, (_, path))| (pk.serialize().to_lower_hex_string(), format!("m/{path}")))
        .collect();
    for k in w["updater"]["public_keys"].as_array().expect("public_keys") {
        let want = str_of(k, "path").replace('\'', "h");
        let got = paths.get(str_of(k, "pubkey")).expect("key path in the PSBT");
        assert_eq!(got.replace('\'', "h"), want, "updater: key path");
    }
    steps += 1;

    // Signers: each signs the updated PSBT with its two keys (RFC 6979, SIGHASH_ALL).
    for signer in ["signer_1", "signer_2"] {
        let mut psbt = psbt_of(&w, str_of(&w[signer], "input"));
        let keys: BTreeMap<bitcoin::PublicKey, PrivateKey> = w[signer]["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| {
                let sk = PrivateKey::from_wif(str_of(k, "wif")).expect("wif");
                (sk.public_key(&secp), sk)
            })
            .collect();
        let used = psbt
            .sign(&keys, &secp)
            .unwrap_or_else(|(_, e)| panic!("{signer}: {e:?}"));
        assert_eq!(used.len(), 2, "{signer}: both inputs signed");
        assert_step(&psbt, &w, signer);
        steps += 1;
    }

    // Combiner.
    let inputs = w["combiner"]["inputs"].as_array().expect("inputs");
    let mut combined = psbt_of(&w, inputs[0].as_str().expect("step"));
    combined
        .combine(psbt_of(&w, inputs[1].as_str().expect("step")))
        .expect("combine");
    // Core keeps partial signatures in a map keyed by HASH160 of the public key; rust-bitcoin
    // keys them by the public key itself, so the combined PSBT is the BIP's, with the two
    // signatures of each input written in the other order.
    let (hex_text, base64) = result_of(&w, "combiner");
    assert!(
        !round_trips(&combined, &hex_text, &base64),
        "combiner: byte order now matches Core"
    );
    assert_same_up_to_order(&combined, &hex_text, "combiner");
    assert!(
        combined.inputs.iter().all(|i| i.partial_sigs.len() == 2),
        "combiner: two signatures per input"
    );
    steps += 1;

    // Finalizer (rust-miniscript).
    let mut finalized = psbt_of(&w, str_of(&w["finalizer"], "input"));
    finalized
        .finalize_mut(&secp)
        .unwrap_or_else(|e| panic!("finalize: {e:?}"));
    assert_step(&finalized, &w, "finalizer");
    steps += 1;

    // Extractor.
    let tx = psbt_of(&w, str_of(&w["extractor"], "input"))
        .extract_tx()
        .expect("extract");
    assert_eq!(
        serialize(&tx).to_lower_hex_string(),
        str_of(&w["extractor"], "result_tx_hex"),
        "extractor"
    );
    steps += 1;

    // Combiner with unknown keys: the union, in lexicographic key order.
    let pair = w["combiner_unknown_keys_lexicographic"]["inputs"]
        .as_array()
        .expect("inputs");
    let mut a = decode_all(&pair[0]).expect("first");
    a.combine(decode_all(&pair[1]).expect("second")).expect("combine");
    assert_step(&a, &w, "combiner_unknown_keys_lexicographic");
    steps += 1;

    assert_eq!(steps, 8, "workflow roles replayed");
}

/// anya reads version 0 PSBTs only: every BIP370 vector is refused, the valid PSBTv2s and
/// those declaring version 2 with the typed `UnsupportedVersion`, never a panic or a decode
/// that would let a signer read a version 2 PSBT as if it were version 0.
#[test]
fn bip370_psbtv2_vectors_are_refused_as_unsupported() {
    let v = json("bip370_test_vectors.json");
    let mut unsupported = 0;
    for section in ["valid", "timelock"] {
        for (i, case) in v[section].as_array().expect(section).iter().enumerate() {
            let what = format!("BIP370 {section} {i}: {}", str_of(case, "description"));
            match decode_all(case) {
                Err(PsbtError::UnsupportedVersion { version: 2 }) => unsupported += 1,
                other => panic!("{what}: expected UnsupportedVersion(2), got {other:?}"),
            }
        }
    }
    assert_eq!(unsupported, 14 + 9, "every valid and timelock PSBTv2");
    let mut refused = 0;
    for (i, case) in v["invalid"].as_array().expect("invalid").iter().enumerate() {
        let what = format!("BIP370 invalid {i}: {}", str_of(case, "description"));
        match decode_all(case) {
            Err(PsbtError::UnsupportedVersion { .. } | PsbtError::Invalid(_) | PsbtError::V2FieldInV0 { .. }) => {
                refused += 1
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(refused, 24);
}

/// Bytes after the last map are refused in every spelling (rust-bitcoin's own parser ignores
/// them; Core refuses "extra data after PSBT").
#[test]
fn trailing_bytes_are_refused_in_every_spelling() {
    use bitcoin::base64::Engine;
    let v = json("bip174_test_vectors.json");
    let case = &v["valid"][0];
    let mut raw = hex(str_of(case, "hex"));
    assert!(decode(&raw).is_ok(), "the vector itself decodes");
    raw.push(0x00);
    let base64 = bitcoin::base64::engine::general_purpose::STANDARD.encode(&raw);
    for (spelling, input) in [
        ("raw", raw.clone()),
        ("hex", raw.to_lower_hex_string().into_bytes()),
        ("base64", base64.into_bytes()),
    ] {
        assert!(
            matches!(decode(&input), Err(PsbtError::TrailingBytes { len: 1 })),
            "{spelling}: {:?}",
            decode(&input)
        );
    }
}
