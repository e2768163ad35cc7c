//! The seed of a Lightning node, derived from a BIP32 root by BIP85.
//!
//! LDK (and ldk-node's `set_entropy_seed_bytes`) takes 64 bytes of entropy from which it derives
//! every node key itself. anya derives those bytes inside the provider with BIP85's HEX
//! application: the child at `m / 83696968' / 128169' / 64' / index'`, then the first 64 bytes
//! of HMAC-SHA512 keyed with `"bip-entropy-from-k"` over the child's 32-byte secret key. The
//! same root and index always give the same seed, so a node is recovered from the root (or its
//! BIP39 mnemonic, with any BIP85 tool) and its store; no other branch of the root, and no
//! xpub, reaches it.

use bitcoin::bip32::{ChildNumber, DerivationPath};
use ring::hmac;
use zeroize::Zeroizing;

use crate::{HsmError, SecretBytes};

/// BIP85's purpose: the hardened first step of every BIP85 path.
pub const BIP85_PURPOSE: u32 = 83_696_968;
/// BIP85's HEX application: the second step; the third is the entropy length in bytes.
pub const BIP85_HEX_APPLICATION: u32 = 128_169;
/// Bytes in a node seed (ldk-node's `WALLET_KEYS_SEED_LEN`).
pub const NODE_SEED_LEN: usize = 64;

/// The key BIP85 uses for the HMAC over the child's secret key.
#[cfg_attr(
    not(any(feature = "software", feature = "pkcs11")),
    allow(dead_code, reason = "used by the providers, none of which is built")
)]
const BIP85_HMAC_KEY: &[u8] = b"bip-entropy-from-k";

/// The BIP85 path of node `index`'s seed: `83696968' / 128169' / 64' / index'`. An index at or
/// above 2^31 cannot be hardened: [`HsmError::InvalidNodeSeedIndex`].
pub fn node_seed_path(index: u32) -> Result<DerivationPath, HsmError> {
    let last = ChildNumber::from_hardened_idx(index).map_err(|_| HsmError::InvalidNodeSeedIndex { index })?;
    let len = u32::try_from(NODE_SEED_LEN).expect("64 fits u32");
    let steps = [BIP85_PURPOSE, BIP85_HEX_APPLICATION, len].map(|i| ChildNumber::Hardened { index: i });
    Ok(steps.into_iter().chain(std::iter::once(last)).collect())
}

/// What a [`DeriveNodeSeed`](crate::Operation::DeriveNodeSeed) audit record holds as its input
/// hash: SHA-256 of the four BIP32 indices of the path (hardened bit set), 4 big-endian bytes
/// each. For an invalid index the last step is the index as given.
#[cfg_attr(
    not(any(feature = "software", feature = "pkcs11")),
    allow(dead_code, reason = "used by the providers, none of which is built")
)]
pub(crate) fn audit_input_hash(index: u32) -> [u8; 32] {
    let len = u32::try_from(NODE_SEED_LEN).expect("64 fits u32");
    let bytes: Vec<u8> = [BIP85_PURPOSE, BIP85_HEX_APPLICATION, len]
        .map(|i| u32::from(ChildNumber::Hardened { index: i }))
        .into_iter()
        .chain(std::iter::once(index | (1 << 31)))
        .flat_map(u32::to_be_bytes)
        .collect();
    crate::audit::input_hash(&bytes)
}

/// BIP85's entropy from the child's secret key `k`: HMAC-SHA512("bip-entropy-from-k", k), all
/// 64 bytes of which make the node seed.
#[cfg_attr(
    not(any(feature = "software", feature = "pkcs11")),
    allow(dead_code, reason = "used by the providers, none of which is built")
)]
pub(crate) fn entropy_from_k(k: &[u8; 32]) -> SecretBytes {
    let key = hmac::Key::new(hmac::HMAC_SHA512, BIP85_HMAC_KEY);
    let tag = hmac::sign(&key, k);
    let bytes = Zeroizing::new(tag.as_ref().to_vec());
    debug_assert_eq!(bytes.len(), NODE_SEED_LEN);
    SecretBytes::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_the_bip85_hex_path() {
        let path = node_seed_path(7).expect("valid");
        assert_eq!(path.to_string(), "83696968'/128169'/64'/7'");
        assert!(matches!(
            node_seed_path(1 << 31),
            Err(HsmError::InvalidNodeSeedIndex { index }) if index == 1 << 31
        ));
    }

    #[test]
    fn audit_hash_names_the_path() {
        assert_ne!(audit_input_hash(0), audit_input_hash(1));
        let path = node_seed_path(3).expect("valid");
        let bytes: Vec<u8> = path.into_iter().flat_map(|c| u32::from(*c).to_be_bytes()).collect();
        assert_eq!(audit_input_hash(3), crate::audit::input_hash(&bytes));
    }
}
