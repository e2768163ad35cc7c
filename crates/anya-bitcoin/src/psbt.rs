//! PSBT (BIP174 / BIP370 / BIP371) decoding with typed errors.
//!
//! Outside bytes reach anya as a PSBT in one of three spellings: raw binary (starting with the
//! magic `psbt\xff`), base64 (the form Core's RPC and most wallets use) or hex. [`decode`]
//! accepts any of them and returns a [`bitcoin::Psbt`] or a [`PsbtError`] that says which rule
//! the input broke; it never panics on any input.

use std::str::FromStr;

use bitcoin::psbt::{self, Psbt};

/// The PSBT magic bytes (`psbt` followed by `0xff`).
pub const MAGIC: [u8; 5] = *b"psbt\xff";

/// Largest PSBT accepted, in raw bytes (Core's default `-maxtxfee`-bounded PSBTs are far
/// smaller; this bound keeps a hostile input from allocating without limit).
pub const MAX_PSBT_BYTES: usize = 16 * 1024 * 1024;

/// Why bytes are not a PSBT anya accepts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PsbtError {
    /// The input is longer than [`MAX_PSBT_BYTES`].
    #[error("PSBT of {len} bytes is over the {MAX_PSBT_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Text that is neither base64 nor hex of a PSBT.
    #[error("not a PSBT: the text is neither base64 nor hex")]
    Encoding,
    /// The bytes broke a BIP174/BIP371 rule (bad magic, duplicate key, unsigned transaction with
    /// script data, a key of the wrong length, …).
    #[error("invalid PSBT: {0}")]
    Invalid(#[from] psbt::Error),
}

/// Decodes a PSBT given as raw bytes, base64 or hex (surrounding whitespace ignored).
pub fn decode(input: &[u8]) -> Result<Psbt, PsbtError> {
    if input.len() > MAX_PSBT_BYTES * 2 {
        return Err(PsbtError::TooLarge { len: input.len() });
    }
    if input.starts_with(&MAGIC) {
        return decode_binary(input);
    }
    let text = std::str::from_utf8(input).map_err(|_| PsbtError::Encoding)?.trim();
    if let Ok(bytes) = <Vec<u8> as bitcoin::hex::FromHex>::from_hex(text) {
        return decode_binary(&bytes);
    }
    match Psbt::from_str(text) {
        Ok(psbt) => Ok(psbt),
        Err(psbt::PsbtParseError::PsbtEncoding(e)) => Err(PsbtError::Invalid(e)),
        Err(psbt::PsbtParseError::Base64Encoding(_)) => Err(PsbtError::Encoding),
        Err(_) => Err(PsbtError::Encoding),
    }
}

/// Decodes raw PSBT bytes.
pub fn decode_binary(bytes: &[u8]) -> Result<Psbt, PsbtError> {
    if bytes.len() > MAX_PSBT_BYTES {
        return Err(PsbtError::TooLarge { len: bytes.len() });
    }
    Ok(Psbt::deserialize(bytes)?)
}

/// The base64 form of `psbt`, as Core's RPC prints it.
pub fn encode_base64(psbt: &Psbt) -> String {
    psbt.to_string()
}
