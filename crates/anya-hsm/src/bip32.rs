//! Strict parsing of BIP32 extended keys.
//!
//! rust-bitcoin 0.32 decodes some keys that BIP32's test vector 5 lists as invalid (a private
//! key without its `0x00` prefix byte, a depth-0 key with a parent fingerprint or child
//! number). These functions add the missing checks, so an invalid key never becomes a root.

use std::str::FromStr;

use bitcoin::bip32::{Xpriv, Xpub};

use crate::HsmError;

/// What is wrong with an extended key that decodes but breaks BIP32's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtendedKeyDefect {
    /// A private key's key data does not start with `0x00`.
    PrivateKeyPrefix,
    /// A depth-0 (master) key names a parent fingerprint.
    MasterWithParentFingerprint,
    /// A depth-0 (master) key has a non-zero child number.
    MasterWithChildNumber,
}

fn check_master_fields(data: &[u8]) -> Result<(), HsmError> {
    if data.len() == 78 && data[4] == 0 {
        if data[5..9] != [0; 4] {
            return Err(HsmError::InvalidExtendedKey {
                defect: ExtendedKeyDefect::MasterWithParentFingerprint,
            });
        }
        if data[9..13] != [0; 4] {
            return Err(HsmError::InvalidExtendedKey {
                defect: ExtendedKeyDefect::MasterWithChildNumber,
            });
        }
    }
    Ok(())
}

fn decode_check(s: &str) -> Result<Vec<u8>, HsmError> {
    bitcoin::base58::decode_check(s).map_err(|e| HsmError::Bip32 {
        source: bitcoin::bip32::Error::Base58(e),
    })
}

/// Parses a base58 extended private key (`xprv…`/`tprv…`) with every BIP32 validity rule.
pub fn parse_xpriv(s: &str) -> Result<Xpriv, HsmError> {
    let data = zeroize::Zeroizing::new(decode_check(s)?);
    if data.len() == 78 && data[45] != 0 {
        return Err(HsmError::InvalidExtendedKey {
            defect: ExtendedKeyDefect::PrivateKeyPrefix,
        });
    }
    check_master_fields(&data)?;
    Ok(Xpriv::decode(&data)?)
}

/// Parses a base58 extended public key (`xpub…`/`tpub…`) with every BIP32 validity rule.
pub fn parse_xpub(s: &str) -> Result<Xpub, HsmError> {
    let data = decode_check(s)?;
    check_master_fields(&data)?;
    let xpub = Xpub::decode(&data)?;
    // Round-trip through rust-bitcoin's own parser as well, so both agree.
    Ok(Xpub::from_str(s).map(|_| xpub)?)
}
