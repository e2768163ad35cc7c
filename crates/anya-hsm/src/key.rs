//! Key ids, specs, usage policies and the public facts about a key.

#![cfg_attr(
    not(any(feature = "software", feature = "pkcs11")),
    allow(
        dead_code,
        reason = "the audit writer and key encodings serve the providers; without one only the public types remain"
    )
)]

use std::fmt;

use anya_core_types::{Label, UnixTime};
use bitcoin::bip32::{ChildNumber, DerivationPath};

use crate::HsmError;

/// The name of a key inside a provider.
pub type KeyId = Label;

/// What kind of key an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeySpec {
    /// A secp256k1 private key (ECDSA, BIP340, Taproot, oracle nonces).
    Secp256k1,
    /// An Ed25519 private key (stored as its 32-byte seed).
    Ed25519,
    /// An AES-256 key for AES-256-GCM.
    Aes256,
    /// A BIP32 root: an extended private key made from a BIP39 mnemonic, a seed or an xprv.
    Bip32Root,
    /// A NIST P-256 (secp256r1, prime256v1) private key for ECDSA with SHA-256 (JOSE `ES256`,
    /// WebAuthn, TLS, X.509).
    P256,
}

impl KeySpec {
    pub(crate) fn code(self) -> u8 {
        match self {
            KeySpec::Secp256k1 => 1,
            KeySpec::Ed25519 => 2,
            KeySpec::Aes256 => 3,
            KeySpec::Bip32Root => 4,
            KeySpec::P256 => 5,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => KeySpec::Secp256k1,
            2 => KeySpec::Ed25519,
            3 => KeySpec::Aes256,
            4 => KeySpec::Bip32Root,
            5 => KeySpec::P256,
            _ => return None,
        })
    }

    /// The uses a key of this spec can serve at all.
    pub fn possible_usages(self) -> UsageSet {
        match self {
            KeySpec::Secp256k1 => UsageSet::of(&[
                Usage::SignEcdsa,
                Usage::SignSchnorr,
                Usage::SignTaprootKeySpend,
                Usage::OracleNonce,
            ]),
            KeySpec::Ed25519 => UsageSet::of(&[Usage::SignEd25519]),
            KeySpec::Aes256 => UsageSet::of(&[Usage::Encrypt, Usage::Decrypt]),
            KeySpec::Bip32Root => UsageSet::of(&[
                Usage::SignEcdsa,
                Usage::SignSchnorr,
                Usage::SignTaprootKeySpend,
                Usage::DeriveXpub,
                Usage::ExportDlcChild,
                Usage::DeriveNodeSeed,
            ]),
            KeySpec::P256 => UsageSet::of(&[Usage::SignP256]),
        }
    }
}

/// One use of a key that a [`KeyPolicy`] can allow or forbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Usage {
    /// ECDSA signing.
    SignEcdsa,
    /// BIP340 signing with the untweaked key.
    SignSchnorr,
    /// BIP341 key-path signing with the tweaked key.
    SignTaprootKeySpend,
    /// Ed25519 signing.
    SignEd25519,
    /// AES-256-GCM encryption.
    Encrypt,
    /// AES-256-GCM decryption.
    Decrypt,
    /// Exporting extended public keys of a BIP32 root.
    DeriveXpub,
    /// Committing and using one-time oracle nonces.
    OracleNonce,
    /// ECDSA signing over P-256 with SHA-256.
    // Appended: a usage's bit is its position, and stored policies keep their bits.
    SignP256,
    /// Exporting the secret of a child at the DLC branch of a BIP32 root through
    /// [`HsmProvider::export_scoped_child`](crate::HsmProvider::export_scoped_child) with
    /// [`ExportScope::Dlc`]. Opt-in: [`KeyPolicy::default_for`] leaves it out.
    ExportDlcChild,
    /// Deriving the 64-byte seed of a Lightning node from a BIP32 root through
    /// [`HsmProvider::derive_node_seed`](crate::HsmProvider::derive_node_seed). Opt-in:
    /// [`KeyPolicy::default_for`] leaves it out.
    DeriveNodeSeed,
}

impl Usage {
    const ALL: [Usage; 11] = [
        Usage::SignEcdsa,
        Usage::SignSchnorr,
        Usage::SignTaprootKeySpend,
        Usage::SignEd25519,
        Usage::Encrypt,
        Usage::Decrypt,
        Usage::DeriveXpub,
        Usage::OracleNonce,
        Usage::SignP256,
        Usage::ExportDlcChild,
        Usage::DeriveNodeSeed,
    ];

    /// Uses that let a secret leave the provider: a policy has them only when asked for by
    /// name, never through [`KeyPolicy::default_for`].
    const OPT_IN: [Usage; 2] = [Usage::ExportDlcChild, Usage::DeriveNodeSeed];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of [`Usage`] values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UsageSet(u16);

impl UsageSet {
    /// The set of the given usages.
    pub fn of(usages: &[Usage]) -> Self {
        Self(usages.iter().fold(0, |acc, u| acc | u.bit()))
    }

    /// Whether `usage` is in the set.
    pub fn contains(self, usage: Usage) -> bool {
        self.0 & usage.bit() != 0
    }

    /// The usages in the set.
    pub fn iter(self) -> impl Iterator<Item = Usage> {
        Usage::ALL.into_iter().filter(move |u| self.contains(*u))
    }

    /// Intersection.
    #[must_use]
    pub fn intersect(self, other: UsageSet) -> Self {
        Self(self.0 & other.0)
    }

    /// This set plus `usage`.
    #[must_use]
    pub fn with(self, usage: Usage) -> Self {
        Self(self.0 | usage.bit())
    }

    /// This set without `usage`.
    #[must_use]
    pub fn without(self, usage: Usage) -> Self {
        Self(self.0 & !usage.bit())
    }

    pub(crate) fn bits(self) -> u16 {
        self.0
    }

    pub(crate) fn from_bits(bits: u16) -> Option<Self> {
        let known = Usage::ALL.iter().fold(0u16, |acc, u| acc | u.bit());
        (bits & !known == 0).then_some(Self(bits))
    }
}

impl fmt::Debug for UsageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// What a key may be used for, fixed when the key is created and sealed with it (the policy is
/// part of the associated data, so it cannot be changed in the store without breaking the seal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPolicy {
    /// The allowed uses (intersected with what the key spec can do).
    pub allowed: UsageSet,
    /// Whether the secret may ever leave the provider through `export_key`.
    pub exportable: bool,
}

impl KeyPolicy {
    /// Every use the spec supports except those that let a secret leave the provider
    /// ([`Usage::ExportDlcChild`] and [`Usage::DeriveNodeSeed`], which a root has only when
    /// asked for with [`allowing`](Self::allowing)); not exportable.
    pub fn default_for(spec: KeySpec) -> Self {
        Self {
            allowed: Usage::OPT_IN
                .into_iter()
                .fold(spec.possible_usages(), UsageSet::without),
            exportable: false,
        }
    }

    /// Only the given uses; not exportable.
    pub fn only(usages: &[Usage]) -> Self {
        Self {
            allowed: UsageSet::of(usages),
            exportable: false,
        }
    }

    /// The same policy, exportable.
    #[must_use]
    pub fn exportable(mut self) -> Self {
        self.exportable = true;
        self
    }

    /// The same policy, also allowing `usage` (for an opt-in use such as
    /// [`Usage::ExportDlcChild`]).
    #[must_use]
    pub fn allowing(mut self, usage: Usage) -> Self {
        self.allowed = self.allowed.with(usage);
        self
    }
}

/// Which kind of derived child [`HsmProvider::export_scoped_child`] may export: each scope is
/// a dedicated hardened branch below a BIP32 root, allowed by a usage of its own, so the root
/// itself and every other branch (wallet accounts, identity keys) never leave the provider.
///
/// [`HsmProvider::export_scoped_child`]: crate::HsmProvider::export_scoped_child
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExportScope {
    /// Per-contract DLC funding keys, which ddk-manager's `ContractSigner::get_secret_key`
    /// needs raw. Branch [`DLC_BRANCH_INDEX`](Self::DLC_BRANCH_INDEX)', usage
    /// [`Usage::ExportDlcChild`].
    Dlc,
}

impl ExportScope {
    /// The hardened index of the DLC branch: the ASCII bytes `"DLC"` read as a big-endian
    /// integer (`0x444C43`, 4 475 971). Far from every BIP43 purpose in use, so no wallet
    /// account shares its subtree.
    pub const DLC_BRANCH_INDEX: u32 = u32::from_be_bytes([0, b'D', b'L', b'C']);

    /// The most steps of the path below the branch.
    pub const MAX_PATH_LEN: usize = 8;

    /// The hardened first step below the root that every child of this scope sits under.
    pub fn branch(self) -> ChildNumber {
        let index = match self {
            ExportScope::Dlc => Self::DLC_BRANCH_INDEX,
        };
        ChildNumber::Hardened { index }
    }

    /// The usage a root's policy must allow for children of this scope to be exported.
    pub fn usage(self) -> Usage {
        match self {
            ExportScope::Dlc => Usage::ExportDlcChild,
        }
    }

    /// The full path from the root of the child exported for `path`: [`branch`](Self::branch)
    /// followed by `path`, which must have 1 to [`MAX_PATH_LEN`](Self::MAX_PATH_LEN) steps,
    /// every one hardened (so that no xpub, however obtained, derives these keys).
    pub fn child_path(self, path: &[ChildNumber]) -> Result<DerivationPath, HsmError> {
        let defect = if path.is_empty() {
            Some(ScopedPathDefect::Empty)
        } else if path.len() > Self::MAX_PATH_LEN {
            Some(ScopedPathDefect::TooLong { len: path.len() })
        } else {
            path.iter()
                .position(ChildNumber::is_normal)
                .map(|position| ScopedPathDefect::Unhardened { position })
        };
        if let Some(defect) = defect {
            return Err(HsmError::InvalidScopedPath { defect });
        }
        Ok(std::iter::once(self.branch()).chain(path.iter().copied()).collect())
    }

    /// What an [`ExportScopedChild`](crate::Operation::ExportScopedChild) audit record holds as
    /// its input hash: SHA-256 of the BIP32 indices (hardened bit set) of the branch and then
    /// of `path`, each as 4 big-endian bytes, whether or not the path is valid.
    pub(crate) fn audit_input_hash(self, path: &[ChildNumber]) -> [u8; 32] {
        let bytes: Vec<u8> = std::iter::once(self.branch())
            .chain(path.iter().copied())
            .flat_map(|c| u32::from(c).to_be_bytes())
            .collect();
        crate::audit::input_hash(&bytes)
    }
}

/// What is wrong with the path given to
/// [`HsmProvider::export_scoped_child`](crate::HsmProvider::export_scoped_child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopedPathDefect {
    /// No step below the branch: the branch key itself is never exported.
    Empty,
    /// More than [`ExportScope::MAX_PATH_LEN`] steps.
    TooLong {
        /// Steps given.
        len: usize,
    },
    /// A step is not hardened.
    Unhardened {
        /// Its position in the path (0 is the first step below the branch).
        position: usize,
    },
}

impl fmt::Display for ScopedPathDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopedPathDefect::Empty => f.write_str("no step below the branch"),
            ScopedPathDefect::TooLong { len } => {
                write!(f, "{len} steps, more than {}", ExportScope::MAX_PATH_LEN)
            }
            ScopedPathDefect::Unhardened { position } => write!(f, "step {position} is not hardened"),
        }
    }
}

/// The public facts about a stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Its id.
    pub id: KeyId,
    /// Its spec.
    pub spec: KeySpec,
    /// Its policy.
    pub policy: KeyPolicy,
    /// When it was generated or imported.
    pub created: UnixTime,
}

/// A public key, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// A secp256k1 public key (its x-only form is the BIP340 key).
    Secp256k1(secp256k1::PublicKey),
    /// An Ed25519 public key.
    Ed25519([u8; 32]),
    /// A P-256 public key, uncompressed SEC1 (`0x04 ‖ x ‖ y`), as
    /// `ring::signature::UnparsedPublicKey` with `ECDSA_P256_SHA256_FIXED` takes it.
    P256([u8; 65]),
}

/// Which key an operation uses: a stored key, or a BIP32 child of a stored root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// A stored key.
    Key(&'a KeyId),
    /// The key at `path` below the BIP32 root `root`; its private key never leaves the provider.
    Derived {
        /// The stored BIP32 root.
        root: &'a KeyId,
        /// The path from the root.
        path: &'a [ChildNumber],
    },
}

impl<'a> KeyRef<'a> {
    /// A child of `root` at `path`.
    pub fn derived(root: &'a KeyId, path: &'a DerivationPath) -> Self {
        KeyRef::Derived {
            root,
            path: path.as_ref(),
        }
    }

    /// The stored key this reference starts from.
    pub fn id(&self) -> &'a KeyId {
        match self {
            KeyRef::Key(id) | KeyRef::Derived { root: id, .. } => id,
        }
    }
}

impl<'a> From<&'a KeyId> for KeyRef<'a> {
    fn from(id: &'a KeyId) -> Self {
        KeyRef::Key(id)
    }
}

/// The auxiliary randomness of a BIP340 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AuxRand {
    /// 32 fresh bytes drawn by the provider (the BIP340 recommendation).
    Fresh,
    /// These bytes (for test vectors, or a caller with its own entropy source).
    Given([u8; 32]),
}

impl fmt::Debug for AuxRand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuxRand::Fresh => f.write_str("Fresh"),
            AuxRand::Given(_) => f.write_str("Given(<32 bytes>)"),
        }
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ed25519Signature(pub [u8; 64]);

impl fmt::Debug for Ed25519Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Signature(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Number of words of a generated BIP39 mnemonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MnemonicLength {
    /// 12 words (128 bits of entropy).
    Words12,
    /// 24 words (256 bits of entropy).
    Words24,
}

impl MnemonicLength {
    /// Bytes of BIP39 entropy; only the software provider generates mnemonics.
    #[cfg(feature = "software")]
    pub(crate) fn entropy_bytes(self) -> usize {
        match self {
            MnemonicLength::Words12 => 16,
            MnemonicLength::Words24 => 32,
        }
    }
}

/// An account-level extended public key with its key origin, ready for a descriptor
/// (`[fingerprint/path]xpub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountXpub {
    /// The extended public key.
    pub xpub: bitcoin::bip32::Xpub,
    /// Fingerprint of the root and the path from it.
    pub origin: bitcoin::bip32::KeySource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_codes_are_stable() {
        // Sealed entries and PKCS#11 records carry these: new values go at the end.
        assert_eq!(UsageSet::of(&[Usage::OracleNonce]).bits(), 1 << 7);
        assert_eq!(UsageSet::of(&[Usage::SignP256]).bits(), 1 << 8);
        assert_eq!(UsageSet::of(&[Usage::ExportDlcChild]).bits(), 1 << 9);
        assert_eq!(UsageSet::of(&[Usage::DeriveNodeSeed]).bits(), 1 << 10);
        assert_eq!(UsageSet::from_bits(0x7ff), Some(UsageSet(0x7ff)));
        assert_eq!(UsageSet::from_bits(0x800), None);
        assert_eq!(KeySpec::P256.code(), 5);
        for code in 1..=5 {
            assert_eq!(KeySpec::from_code(code).map(KeySpec::code), Some(code));
        }
        assert_eq!(KeySpec::from_code(6), None);
        assert_eq!(KeySpec::P256.possible_usages(), UsageSet::of(&[Usage::SignP256]));
    }

    #[test]
    fn default_policies_leave_out_only_the_opt_in_usages() {
        for spec in [
            KeySpec::Secp256k1,
            KeySpec::Ed25519,
            KeySpec::Aes256,
            KeySpec::Bip32Root,
            KeySpec::P256,
        ] {
            let default = KeyPolicy::default_for(spec);
            assert_eq!(
                default.allowed,
                spec.possible_usages()
                    .without(Usage::ExportDlcChild)
                    .without(Usage::DeriveNodeSeed),
                "{spec:?}"
            );
            assert!(!default.exportable);
        }
        for usage in [Usage::ExportDlcChild, Usage::DeriveNodeSeed] {
            assert!(KeySpec::Bip32Root.possible_usages().contains(usage));
        }
        let opted_in = KeyPolicy::default_for(KeySpec::Bip32Root)
            .allowing(Usage::ExportDlcChild)
            .allowing(Usage::DeriveNodeSeed);
        assert_eq!(opted_in.allowed, KeySpec::Bip32Root.possible_usages());
        assert!(!opted_in.exportable);
    }

    #[test]
    fn the_dlc_branch_is_dlc_in_ascii_hardened() {
        assert_eq!(ExportScope::DLC_BRANCH_INDEX, 0x0044_4C43);
        assert_eq!(ExportScope::DLC_BRANCH_INDEX, 4_475_971);
        assert_eq!(&ExportScope::DLC_BRANCH_INDEX.to_be_bytes()[1..], b"DLC");
        assert_eq!(ExportScope::Dlc.branch(), ChildNumber::Hardened { index: 4_475_971 });
        assert_eq!(ExportScope::Dlc.usage(), Usage::ExportDlcChild);
        let path: DerivationPath = "m/4475971'/7'/42'".parse().expect("path");
        let steps = [ChildNumber::Hardened { index: 7 }, ChildNumber::Hardened { index: 42 }];
        assert_eq!(ExportScope::Dlc.child_path(&steps).expect("valid"), path);
    }

    #[test]
    fn scoped_paths_are_one_to_eight_hardened_steps() {
        let h = |index| ChildNumber::Hardened { index };
        let defect = |path: &[ChildNumber]| match ExportScope::Dlc.child_path(path) {
            Err(HsmError::InvalidScopedPath { defect }) => Some(defect),
            Ok(_) => None,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(defect(&[]), Some(ScopedPathDefect::Empty));
        assert_eq!(defect(&[h(0); 8]), None);
        assert_eq!(defect(&[h(0); 9]), Some(ScopedPathDefect::TooLong { len: 9 }));
        assert_eq!(
            defect(&[h(0), ChildNumber::Normal { index: 0 }]),
            Some(ScopedPathDefect::Unhardened { position: 1 })
        );
    }
}
