//! Bitcoin Core's `key_io_valid.json` / `key_io_invalid.json` through rust-bitcoin's address and
//! WIF parsers, as anya uses them.
//!
//! Mirrors `key_io_valid_parse` / `key_io_invalid` in Core's `src/test/key_io_tests.cpp`: a valid
//! address decodes on its chain to the expected scriptPubKey (also with every letter's case
//! flipped where the file says `tryCaseFlip`), a valid WIF decodes to the expected secret and
//! compression flag, and every invalid string is neither an address on any chain nor a WIF.

use std::str::FromStr;

use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::{Address, Network, NetworkKind, PrivateKey};
use serde_json::Value;

const VALID: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/bitcoin-core/key_io_valid.json"
);
const INVALID: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/bitcoin-core/key_io_invalid.json"
);

/// Chains Core's file names, as rust-bitcoin networks.
const NETWORKS: [Network; 5] = [
    Network::Bitcoin,
    Network::Testnet,
    Network::Testnet4,
    Network::Signet,
    Network::Regtest,
];

fn read(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let json: Value = serde_json::from_str(&text).expect("vector file is JSON");
    json.as_array().expect("top-level array").clone()
}

fn network(chain: &str) -> Network {
    match chain {
        "main" => Network::Bitcoin,
        "test" => Network::Testnet,
        "testnet4" => Network::Testnet4,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => panic!("unknown chain {other:?} in key_io_valid.json"),
    }
}

fn parse_address(s: &str, network: Network) -> Option<Address> {
    Address::from_str(s).ok()?.require_network(network).ok()
}

fn flip_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_uppercase() {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

#[test]
fn valid_addresses_and_wifs_decode_to_the_expected_bytes() {
    let (mut addresses, mut wifs, mut case_flips) = (0, 0, 0);
    for case in read(VALID) {
        let encoded = case[0].as_str().expect("encoded string");
        let payload = Vec::<u8>::from_hex(case[1].as_str().expect("payload hex")).expect("payload hex");
        let meta = &case[2];
        let net = network(meta["chain"].as_str().expect("chain"));
        if meta["isPrivkey"].as_bool().expect("isPrivkey") {
            let key = PrivateKey::from_wif(encoded).unwrap_or_else(|e| panic!("{encoded}: {e}"));
            assert_eq!(key.inner.secret_bytes().as_slice(), payload.as_slice(), "{encoded}");
            assert_eq!(
                key.compressed,
                meta["isCompressed"].as_bool().expect("isCompressed"),
                "{encoded}"
            );
            assert_eq!(key.network, NetworkKind::from(net), "{encoded}");
            // Round trip: the same WIF comes back.
            assert_eq!(key.to_wif(), encoded);
            // A WIF is never an address.
            assert!(Address::from_str(encoded).is_err(), "{encoded} parsed as an address");
            wifs += 1;
        } else {
            let address = parse_address(encoded, net).unwrap_or_else(|| panic!("{encoded} on {net}"));
            assert_eq!(
                address.script_pubkey().as_bytes().to_lower_hex_string(),
                payload.to_lower_hex_string(),
                "{encoded}"
            );
            assert!(PrivateKey::from_wif(encoded).is_err(), "{encoded} parsed as a WIF");
            if meta["tryCaseFlip"].as_bool().unwrap_or(false) {
                let flipped = flip_case(encoded);
                let again = parse_address(&flipped, net).unwrap_or_else(|| panic!("{flipped} on {net}"));
                assert_eq!(again.script_pubkey().as_bytes(), payload.as_slice(), "{flipped}");
                case_flips += 1;
            }
            addresses += 1;
        }
    }
    assert_eq!((addresses, wifs), (54, 16), "valid cases processed (addresses, WIFs)");
    assert_eq!(case_flips, 32, "tryCaseFlip cases processed");
}

/// Indices in `key_io_invalid.json` that rust-bitcoin 0.32's `PrivateKey::from_wif` accepts: a
/// 34-byte WIF payload whose compression byte is not `0x01`. Core's `DecodeSecret` requires
/// `0x01`; rust-bitcoin only looks at the length. Each is checked below to be exactly that case,
/// so a change in either the file or rust-bitcoin is noticed.
const WIF_BAD_COMPRESSION_FLAG: [usize; 3] = [6, 7, 9];

#[test]
fn invalid_strings_are_neither_addresses_nor_wifs() {
    let cases = read(INVALID);
    let mut checked = 0;
    let mut accepted_as_wif = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let encoded = case[0].as_str().expect("encoded string");
        for net in NETWORKS {
            assert!(parse_address(encoded, net).is_none(), "{encoded:?} accepted on {net}");
        }
        if PrivateKey::from_wif(encoded).is_ok() {
            let payload = bitcoin::base58::decode_check(encoded).expect("base58check");
            assert_eq!(payload.len(), 34, "{encoded}: compressed-key WIF length");
            assert_ne!(payload[33], 0x01, "{encoded}: compression flag");
            accepted_as_wif.push(i);
        }
        checked += 1;
    }
    assert_eq!(checked, 70, "invalid cases processed");
    assert_eq!(
        accepted_as_wif, WIF_BAD_COMPRESSION_FLAG,
        "invalid WIFs rust-bitcoin accepts (known divergence from Core)"
    );
}
