//! Unsealed key material held in memory while the keystore is unlocked.
//!
//! secp256k1 0.29 and rust-bitcoin key types are `Copy`, so temporaries inside those libraries
//! cannot be wiped; the values this provider keeps are erased when they drop (see the `Drop`
//! impls), and byte buffers are `Zeroizing`. ring's key pairs (`Ed25519KeyPair`,
//! `EcdsaKeyPair`) and the PKCS#8 document ring generates a P-256 key in do not wipe
//! themselves and give no mutable access; their copies are left to the allocator, the rest is
//! erased.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint, Xpriv};
use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use secp256k1::{All, Keypair, Secp256k1, SecretKey};
use zeroize::Zeroizing;

use crate::key::{KeyId, KeySpec};
use crate::software::seal::EntryHeader;
use crate::HsmError;

/// Most cached account-level keys per BIP32 root.
const MAX_CACHED_ACCOUNTS: usize = 4096;

/// A secp256k1 key pair that is erased when dropped.
pub(crate) struct SecretKeypair(pub(crate) Keypair);

impl Drop for SecretKeypair {
    fn drop(&mut self) {
        self.0.non_secure_erase();
    }
}

/// An extended private key that is overwritten when dropped.
pub(crate) struct SecretXpriv(pub(crate) Xpriv);

impl Drop for SecretXpriv {
    fn drop(&mut self) {
        self.0.private_key = SecretKey::from_slice(&secp256k1::constants::ONE).expect("one is a valid secret key");
        self.0.chain_code = ChainCode::from([0u8; 32]);
        std::hint::black_box(&self.0);
    }
}

/// A BIP32 root with its cache of account-level (last hardened step) keys.
pub(crate) struct HdRoot {
    pub(crate) root: SecretXpriv,
    pub(crate) fingerprint: Fingerprint,
    accounts: RwLock<HashMap<Vec<ChildNumber>, Arc<SecretXpriv>>>,
}

impl HdRoot {
    pub(crate) fn new(root: SecretXpriv, fingerprint: Fingerprint) -> Self {
        Self {
            root,
            fingerprint,
            accounts: RwLock::new(HashMap::new()),
        }
    }

    /// The key pair at `path` below the root. The part of the path up to its last hardened step
    /// is derived once and cached; only the unhardened tail (BIP86's `0/i`) is derived per call.
    pub(crate) fn derive(&self, secp: &Secp256k1<All>, path: &[ChildNumber]) -> Result<SecretKeypair, HsmError> {
        let split = path.iter().rposition(ChildNumber::is_hardened).map_or(0, |i| i + 1);
        let (prefix, tail) = path.split_at(split);
        let child = if prefix.is_empty() {
            SecretXpriv(self.root.0.derive_priv(secp, &tail)?)
        } else {
            let account = self.account(secp, prefix)?;
            SecretXpriv(account.0.derive_priv(secp, &tail)?)
        };
        Ok(SecretKeypair(child.0.to_keypair(secp)))
    }

    /// The extended private key at `path` (for xpub export), using the account cache.
    pub(crate) fn derive_xpriv(&self, secp: &Secp256k1<All>, path: &[ChildNumber]) -> Result<SecretXpriv, HsmError> {
        let split = path.iter().rposition(ChildNumber::is_hardened).map_or(0, |i| i + 1);
        let (prefix, tail) = path.split_at(split);
        if prefix.is_empty() {
            return Ok(SecretXpriv(self.root.0.derive_priv(secp, &tail)?));
        }
        let account = self.account(secp, prefix)?;
        Ok(SecretXpriv(account.0.derive_priv(secp, &tail)?))
    }

    fn account(&self, secp: &Secp256k1<All>, prefix: &[ChildNumber]) -> Result<Arc<SecretXpriv>, HsmError> {
        if let Some(hit) = self.accounts.read().map_err(|_| HsmError::Poisoned)?.get(prefix) {
            return Ok(Arc::clone(hit));
        }
        let derived = Arc::new(SecretXpriv(self.root.0.derive_priv(secp, &prefix)?));
        let mut cache = self.accounts.write().map_err(|_| HsmError::Poisoned)?;
        if cache.len() < MAX_CACHED_ACCOUNTS {
            cache.insert(prefix.to_vec(), Arc::clone(&derived));
        }
        Ok(derived)
    }
}

/// Key material by spec.
#[allow(
    clippy::large_enum_variant,
    reason = "one value per key, held once behind an Arc; boxing would add a pointer chase when signing"
)]
pub(crate) enum Material {
    Secp256k1(SecretKeypair),
    Ed25519 {
        seed: Zeroizing<[u8; 32]>,
        pair: Ed25519KeyPair,
    },
    Aes256 {
        raw: Zeroizing<[u8; 32]>,
        key: LessSafeKey,
    },
    Bip32(Box<HdRoot>),
    P256 {
        /// The canonical PKCS#8 document (ring's layout), sealed and exported as it is.
        pkcs8: Zeroizing<Vec<u8>>,
        pair: EcdsaKeyPair,
    },
}

/// An unsealed key: its id, public header and material.
pub(crate) struct UnsealedKey {
    pub(crate) id: Arc<KeyId>,
    pub(crate) header: EntryHeader,
    pub(crate) material: Material,
}

impl std::fmt::Debug for UnsealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsealedKey")
            .field("id", &self.id)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

fn array32(bytes: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(Zeroizing::new(arr))
}

impl Material {
    /// Material of `spec` from its stored secret bytes; `None` if they are not valid for it.
    pub(crate) fn from_secret(secp: &Secp256k1<All>, spec: KeySpec, secret: &[u8]) -> Option<Self> {
        Some(match spec {
            KeySpec::Secp256k1 => {
                if secret.len() != 32 {
                    return None;
                }
                Material::Secp256k1(SecretKeypair(Keypair::from_seckey_slice(secp, secret).ok()?))
            }
            KeySpec::Ed25519 => {
                let seed = array32(secret)?;
                let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).ok()?;
                Material::Ed25519 { seed, pair }
            }
            KeySpec::Aes256 => {
                let raw = array32(secret)?;
                let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw.as_ref()).ok()?);
                Material::Aes256 { raw, key }
            }
            KeySpec::Bip32Root => {
                let root = SecretXpriv(Xpriv::decode(secret).ok()?);
                let fingerprint = root.0.fingerprint(secp);
                Material::Bip32(Box::new(HdRoot::new(root, fingerprint)))
            }
            KeySpec::P256 => Self::p256(secret)?,
        })
    }

    /// P-256 material from a PKCS#8 document, kept in ring's layout whatever layout it came in
    /// (OpenSSL may add the curve inside the `ECPrivateKey`), so that export is canonical.
    fn p256(pkcs8: &[u8]) -> Option<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng).ok()?;
        let scalar = crate::p256::pkcs8_scalar(pkcs8)?;
        let point: &[u8; 65] = pair.public_key().as_ref().try_into().ok()?;
        let pkcs8 = crate::p256::pkcs8_from_parts(scalar, point);
        Some(Material::P256 { pkcs8, pair })
    }

    /// A new random P-256 key.
    pub(crate) fn generate_p256(rng: &dyn ring::rand::SecureRandom) -> Result<Self, HsmError> {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng).map_err(|_| HsmError::Random)?;
        Self::p256(doc.as_ref()).ok_or(HsmError::Crypto {
            what: "ring generated a p-256 key it cannot load",
        })
    }

    /// The bytes that are sealed in the store (and exported when the policy allows).
    pub(crate) fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self {
            Material::Secp256k1(kp) => kp.0.secret_bytes().to_vec(),
            Material::Ed25519 { seed, .. } => seed.to_vec(),
            Material::Aes256 { raw, .. } => raw.to_vec(),
            Material::Bip32(hd) => hd.root.0.encode().to_vec(),
            Material::P256 { pkcs8, .. } => pkcs8.to_vec(),
        })
    }
}
