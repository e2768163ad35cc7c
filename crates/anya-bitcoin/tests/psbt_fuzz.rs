//! Property tests for `anya_bitcoin::psbt::decode` on untrusted input: arbitrary bytes,
//! arbitrary text and mutations of the valid BIP174 vectors (read from `shared/vectors`) either
//! decode or return a typed `PsbtError`, never panic; and whatever decodes re-serializes to
//! bytes that decode to an equal PSBT (in binary and in base64).

use std::sync::OnceLock;

use anya_bitcoin::psbt::{decode, encode_base64, inspect, PsbtError};
use bitcoin::hex::FromHex;
use bitcoin::Network;
use proptest::prelude::*;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/psbt/bip174_test_vectors.json"
);

/// The raw bytes of every valid BIP174 vector.
fn valid() -> &'static [Vec<u8>] {
    static VALID: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    VALID.get_or_init(|| {
        let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| panic!("reading {VECTORS}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&text).expect("vector file is JSON");
        json["valid"]
            .as_array()
            .expect("valid cases")
            .iter()
            .map(|c| Vec::from_hex(c["hex"].as_str().expect("hex")).expect("hex decodes"))
            .collect()
    })
}

/// Decodes `input`; on success checks the round trip and that inspecting it does not panic.
fn check(input: &[u8]) -> Result<(), TestCaseError> {
    match decode(input) {
        Ok(psbt) => {
            let again = decode(&psbt.serialize()).map_err(|e| TestCaseError::fail(format!("re-decode: {e}")))?;
            prop_assert_eq!(&again, &psbt);
            let text = encode_base64(&psbt);
            let again = decode(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("base64: {e}")))?;
            prop_assert_eq!(&again, &psbt);
            let _ = inspect(&psbt, Network::Regtest).to_string();
        }
        Err(e) => {
            // Typed and printable.
            let _ = e.to_string();
            // Parse errors, or a parsed PSBT that `validate` refuses (a mutated previous
            // transaction no longer hashes to the txid its input spends, …).
            let typed = matches!(
                e,
                PsbtError::Empty
                    | PsbtError::Encoding
                    | PsbtError::Invalid(_)
                    | PsbtError::TooLarge { .. }
                    | PsbtError::NonWitnessUtxoMismatch { .. }
                    | PsbtError::PrevoutIndexOutOfRange { .. }
                    | PsbtError::WitnessUtxoMismatch { .. }
                    | PsbtError::AmountOutOfRange { .. }
                    | PsbtError::AmountOverflow { .. }
                    | PsbtError::TrailingBytes { .. }
                    | PsbtError::V2FieldInV0 { .. }
                    | PsbtError::UnspendablePrevout { .. }
            );
            prop_assert!(typed, "unexpected error kind: {}", e);
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len().max(1);
    match m {
        Mutation::Flip { at, bit } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b ^= 1 << bit;
            }
        }
        Mutation::Set { at, byte } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b = *byte;
            }
        }
        Mutation::Truncate { at } => bytes.truncate(at % n),
        Mutation::Insert { at, bytes: new } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Remove { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn bytes_behind_the_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"psbt\xff".to_vec();
        bytes.extend(tail);
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_strings_never_panic(text in ".{0,256}") {
        check(text.as_bytes())?;
    }

    #[test]
    fn base64_and_hex_looking_text_never_panics(text in "(cHNidP8[A-Za-z0-9+/=]{0,300}|70736274ff[0-9a-f]{0,300})") {
        check(text.as_bytes())?;
    }

    #[test]
    fn mutated_vectors_never_panic_and_round_trip(
        case in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let vectors = valid();
        let mut bytes = vectors[case.index(vectors.len())].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check(&bytes)?;
        // The same mutation seen as hex and base64 text.
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        check(hex.as_bytes())?;
        if let Ok(psbt) = bitcoin::psbt::Psbt::deserialize(&bytes) {
            check(encode_base64(&psbt).as_bytes())?;
        }
    }
}

#[test]
fn every_valid_vector_round_trips() {
    for bytes in valid() {
        check(bytes).expect("valid vector round trips");
        decode(bytes).expect("valid vector decodes");
    }
}
