//! What a provider can do, reported before anything is attempted.

use std::fmt;

/// One thing a provider may or may not be able to do.
///
/// Every operation of [`HsmProvider`](crate::HsmProvider) names the capability it needs; a
/// provider answers an operation outside its [`Capabilities`] with
/// [`HsmError::Unsupported`](crate::HsmError::Unsupported) naming that capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Capability {
    /// Generate secp256k1 keys.
    GenerateSecp256k1,
    /// Generate Ed25519 keys.
    GenerateEd25519,
    /// Generate AES-256 keys.
    GenerateAes256,
    /// Import existing key material (sealed on arrival).
    Import,
    /// Export the secret of a key whose policy allows it.
    Export,
    /// ECDSA over secp256k1, low-S (RFC 6979 too with `DeterministicEcdsa`).
    SignEcdsa,
    /// BIP340 Schnorr signatures.
    SignSchnorr,
    /// BIP341 key-path signatures with the Taproot tweak applied inside the provider.
    SignTaprootKeySpend,
    /// Ed25519 signatures.
    SignEd25519,
    /// AES-256-GCM encryption and decryption with associated data.
    Aes256Gcm,
    /// BIP32 roots (from BIP39 mnemonics, seeds or xprv), account xpubs and signing at a path.
    Bip32,
    /// One-time oracle nonces: commit, then sign exactly once.
    OracleNonces,
    /// A hash-chained audit log of every operation.
    AuditLog,
    /// ECDSA nonces are RFC 6979 (the same digest and key give the same signature). A provider
    /// without it still signs ECDSA (low-S) if it has [`SignEcdsa`](Capability::SignEcdsa), with
    /// a nonce from its own random source (as PKCS#11 tokens do).
    DeterministicEcdsa,
    /// Generate P-256 keys.
    GenerateP256,
    /// ECDSA over P-256 with SHA-256 (`ES256`).
    SignP256,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 16] = [
        Capability::GenerateSecp256k1,
        Capability::GenerateEd25519,
        Capability::GenerateAes256,
        Capability::Import,
        Capability::Export,
        Capability::SignEcdsa,
        Capability::SignSchnorr,
        Capability::SignTaprootKeySpend,
        Capability::SignEd25519,
        Capability::Aes256Gcm,
        Capability::Bip32,
        Capability::OracleNonces,
        Capability::AuditLog,
        Capability::DeterministicEcdsa,
        Capability::GenerateP256,
        Capability::SignP256,
    ];

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of [`Capability`] values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u32);

impl Capabilities {
    /// No capability.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Every capability this build knows.
    pub fn all() -> Self {
        Capability::ALL.iter().fold(Self::empty(), |s, c| s.with(*c))
    }

    /// This set plus `capability`.
    #[must_use]
    pub fn with(self, capability: Capability) -> Self {
        Self(self.0 | capability.bit())
    }

    /// This set without `capability`.
    #[must_use]
    pub fn without(self, capability: Capability) -> Self {
        Self(self.0 & !capability.bit())
    }

    /// Whether `capability` is in the set.
    pub fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// `Ok` if `capability` is in the set, else the [`Unsupported`](crate::HsmError::Unsupported)
    /// error a provider returns for it.
    pub fn require(self, capability: Capability) -> Result<(), crate::HsmError> {
        if self.contains(capability) {
            Ok(())
        } else {
            Err(crate::HsmError::Unsupported { capability })
        }
    }

    /// The capabilities in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}
