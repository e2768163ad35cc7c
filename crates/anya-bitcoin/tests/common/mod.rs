//! Shared test code: the official test vectors in `../shared/vectors` (from the repository root),
//! and the wallet fixture ([`fixture`]).

#![allow(dead_code, reason = "each test binary uses part of this module")]

pub mod fixture;

use bitcoin::hex::FromHex;
use serde_json::Value;

/// The vectors directory, with a trailing slash.
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors/");

/// The JSON file at `path` inside the vectors directory.
pub fn json(path: &str) -> Value {
    let path = format!("{VECTORS}{path}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The string field `key` of `v`.
pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The bytes of hex string `s`.
pub fn hex(s: &str) -> Vec<u8> {
    Vec::from_hex(s).unwrap_or_else(|e| panic!("hex {s}: {e}"))
}

/// The bytes of `v`, a JSON hex string.
pub fn hex_of(v: &Value) -> Vec<u8> {
    hex(v.as_str().unwrap_or_else(|| panic!("expected a hex string, got {v}")))
}
