//! Output script descriptor test vectors, BIP380 to BIP390 (`descriptors/*.json`), through
//! rust-miniscript 12.
//!
//! Valid descriptors parse (those with private keys through `Descriptor::parse_descriptor`),
//! produce the expected scriptPubKeys (at index `i` for the `i`-th script of a ranged one) and,
//! for BIP389 multipath descriptors, expand into the listed single-path descriptors. Invalid ones
//! are refused. BIP380's checksum cases and key expressions are checked on their own.
//!
//! rust-miniscript does not implement everything Core does; each case where it differs from the
//! BIP is listed by file and index in `DIVERGENT`, so that a change in either is noticed.

use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use miniscript::descriptor::checksum::desc_checksum;
use miniscript::descriptor::{DescriptorPublicKey, DescriptorSecretKey};
use miniscript::Descriptor;
use secp256k1::Secp256k1;
use serde_json::Value;

mod common;
use common::str_of;

fn json(file: &str) -> Value {
    common::json(&format!("descriptors/{file}"))
}

fn parse(s: &str) -> Result<Descriptor<DescriptorPublicKey>, String> {
    let secp = Secp256k1::signing_only();
    Descriptor::parse_descriptor(&secp, s)
        .map(|(desc, _keys)| desc)
        .map_err(|e| e.to_string())
}

/// Parses a valid case and checks its scripts or expansions.
fn check_valid(case: &Value) -> Result<(), String> {
    let desc = parse(str_of(case, "descriptor"))?;
    if let Some(expansions) = case["expansions"].as_array() {
        let singles = desc.into_single_descriptors().map_err(|e| e.to_string())?;
        if singles.len() != expansions.len() {
            return Err(format!("{} expansions, expected {}", singles.len(), expansions.len()));
        }
        for (single, want) in singles.iter().zip(expansions) {
            let want = parse(want.as_str().expect("expansion"))?;
            if *single != want {
                return Err(format!("expansion {single} is not {want}"));
            }
        }
        return Ok(());
    }
    let Some(scripts) = case["scripts"].as_array() else {
        // A case the BIP lists as valid without scripts: parsing is the check.
        return Ok(());
    };
    if !desc.has_wildcard() && scripts.len() != 1 {
        return Err(format!("{} scripts from a non-ranged descriptor", scripts.len()));
    }
    for (index, want) in (0u32..).zip(scripts) {
        let spk = desc
            .at_derivation_index(index)
            .map_err(|e| e.to_string())?
            .script_pubkey();
        let got = bitcoin::hex::DisplayHex::to_lower_hex_string(spk.as_bytes());
        if got != want.as_str().expect("script hex") {
            return Err(format!("script {index}: {got}, expected {want}"));
        }
    }
    Ok(())
}

/// Cases where rust-miniscript 12.3 differs from the BIPs (Core), by file, section and index:
/// - bip382 valid 4, 5; bip383 valid 5; bip387 valid 5: ranged keys with a hardened wildcard
///   below an xprv (`/*h`). `parse_descriptor` accepts them, then `at_derivation_index` panics
///   ("The key should not contain any wildcards at this point") instead of deriving: see `PANICS`;
/// - bip383 valid 2, 4: top-level `sortedmulti()` (bare, outside `sh()`/`wsh()`) is not parsed;
/// - bip384 valid 0-3: `combo()` is Core-only; miniscript has no parser for it;
/// - bip385 valid 0-3: `raw()` and `addr()` are not miniscript descriptors;
/// - bip387 valid 3, 4: `sortedmulti_a()` is not in rust-miniscript 12;
/// - bip389 valid 1: a multipath xprv with a hardened step (`<2147483647h;0>`) is refused
///   ("Can't make an extended private key with multiple paths into a public key");
/// - bip389 invalid 2: multipath specifiers of mismatched lengths are accepted at parse time;
/// - bip390 valid 0-5: `musig()` key expressions (and `rawtr()`) are not in rust-miniscript 12.
const DIVERGENT: &[(&str, &str, usize)] = &[
    ("bip382", "valid", 4),
    ("bip382", "valid", 5),
    ("bip383", "valid", 2),
    ("bip383", "valid", 4),
    ("bip383", "valid", 5),
    ("bip384", "valid", 0),
    ("bip384", "valid", 1),
    ("bip384", "valid", 2),
    ("bip384", "valid", 3),
    ("bip385", "valid", 0),
    ("bip385", "valid", 1),
    ("bip385", "valid", 2),
    ("bip385", "valid", 3),
    ("bip387", "valid", 3),
    ("bip387", "valid", 4),
    ("bip387", "valid", 5),
    ("bip389", "valid", 1),
    ("bip389", "invalid", 2),
    ("bip390", "valid", 0),
    ("bip390", "valid", 1),
    ("bip390", "valid", 2),
    ("bip390", "valid", 3),
    ("bip390", "valid", 4),
    ("bip390", "valid", 5),
];

/// Valid cases on which rust-miniscript 12.3 panics (in `DescriptorPublicKey::at_derivation_index`)
/// instead of returning an error: hardened wildcards below an xprv.
const PANICS: &[(&str, &str, usize)] = &[
    ("bip382", "valid", 4),
    ("bip382", "valid", 5),
    ("bip383", "valid", 5),
    ("bip387", "valid", 5),
];

const FILES: [&str; 10] = [
    "bip380_test_vectors.json",
    "bip381_test_vectors.json",
    "bip382_test_vectors.json",
    "bip383_test_vectors.json",
    "bip384_test_vectors.json",
    "bip385_test_vectors.json",
    "bip386_test_vectors.json",
    "bip387_test_vectors.json",
    "bip389_test_vectors.json",
    "bip390_test_vectors.json",
];

#[test]
fn descriptor_vectors_parse_derive_and_reject() {
    let mut divergent: Vec<(&str, &str, usize)> = Vec::new();
    let mut panics: Vec<(&str, &str, usize)> = Vec::new();
    let (mut valid, mut invalid) = (0, 0);
    for file in &FILES[1..] {
        let v = json(file);
        let name = &file[..6];
        for (i, case) in v["valid"].as_array().expect("valid").iter().enumerate() {
            // rust-miniscript panics on some inputs (see `PANICS`); those count as divergent.
            match std::panic::catch_unwind(AssertUnwindSafe(|| check_valid(case))) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => divergent.push((name, "valid", i)),
                Err(_) => {
                    panics.push((name, "valid", i));
                    divergent.push((name, "valid", i));
                }
            }
            valid += 1;
        }
        for (i, case) in v["invalid"].as_array().expect("invalid").iter().enumerate() {
            if parse(str_of(case, "descriptor")).is_ok() {
                divergent.push((name, "invalid", i));
            }
            invalid += 1;
        }
    }
    assert_eq!((valid, invalid), (70, 61), "valid and invalid descriptors processed");
    assert_eq!(
        divergent, DIVERGENT,
        "cases where rust-miniscript differs from the BIPs"
    );
    assert_eq!(panics, PANICS, "cases where rust-miniscript panics");
}

/// BIP380's checksum cases, with rust-miniscript's checksum function (its parser has no `raw()`,
/// the descriptor these cases use), then a checksum on a descriptor miniscript parses: accepted
/// as computed, refused with one character changed.
#[test]
fn bip380_checksums() {
    let v = json("bip380_test_vectors.json");
    let cases = v["checksum"].as_array().expect("checksum");
    let mut with_checksum = 0;
    for case in cases {
        let expression = str_of(case, "expression");
        let expected = case["expected_valid"].as_bool().expect("expected_valid");
        let valid = match expression.split_once('#') {
            None => desc_checksum(expression).is_ok(),
            Some((payload, checksum)) => {
                with_checksum += 1;
                desc_checksum(payload).is_ok_and(|c| c == checksum)
            }
        };
        assert_eq!(valid, expected, "{}: {expression}", str_of(case, "description"));
    }
    assert_eq!(
        (cases.len(), with_checksum),
        (8, 7),
        "checksum cases, cases with a checksum"
    );

    // On a descriptor miniscript parses (the first BIP381 public-key one).
    let bip381 = json("bip381_test_vectors.json");
    let plain = str_of(&bip381["valid"][1], "descriptor");
    let checksum = desc_checksum(plain).expect("checksum");
    let good = format!("{plain}#{checksum}");
    let desc = Descriptor::<DescriptorPublicKey>::from_str(&good).expect("valid checksum accepted");
    assert_eq!(desc.to_string(), good, "printed with the same checksum");
    let first = checksum.chars().next().expect("8 characters");
    let other = if first == 'q' { 'p' } else { 'q' };
    let bad = format!("{plain}#{other}{}", &checksum[1..]);
    assert!(
        Descriptor::<DescriptorPublicKey>::from_str(&bad).is_err(),
        "wrong checksum refused"
    );
}

#[test]
fn bip380_key_expressions() {
    let v = json("bip380_test_vectors.json");
    let is_key = |s: &str| DescriptorPublicKey::from_str(s).is_ok() || DescriptorSecretKey::from_str(s).is_ok();
    let mut divergent = Vec::new();
    let valid = v["valid_key_expressions"].as_array().expect("valid keys");
    for (i, case) in valid.iter().enumerate() {
        if !is_key(str_of(case, "expression")) {
            divergent.push(("valid", i));
        }
    }
    let invalid = v["invalid_key_expressions"].as_array().expect("invalid keys");
    for (i, case) in invalid.iter().enumerate() {
        if is_key(str_of(case, "expression")) {
            divergent.push(("invalid", i));
        }
    }
    assert_eq!((valid.len(), invalid.len()), (21, 16), "key expressions processed");
    assert_eq!(
        divergent,
        Vec::<(&str, usize)>::new(),
        "key expressions where miniscript differs"
    );
}
