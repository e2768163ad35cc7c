//! The `HsmProvider` contract.

use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::NetworkKind;
use bitcoin::TapNodeHash;
use secp256k1::{ecdsa, schnorr, XOnlyPublicKey};

use crate::audit::{AuditRecord, AuditSummary};
use crate::{
    AccountXpub, AuxRand, Capabilities, Ed25519Signature, ExportScope, HsmError, KeyId, KeyInfo, KeyPolicy, KeyRef,
    KeySpec, Label, MnemonicLength, P256Signature, PublicKey, SecretBytes, SecretString,
};

/// Key material handed to [`HsmProvider::import_key`]; it is sealed on arrival.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyMaterial {
    /// A 32-byte secp256k1 secret key.
    Secp256k1(SecretBytes),
    /// A 32-byte Ed25519 seed (RFC 8032 private key).
    Ed25519(SecretBytes),
    /// A 32-byte AES-256 key.
    Aes256(SecretBytes),
    /// A BIP32 seed of 16 to 64 bytes; the root is its master extended private key.
    Bip32Seed(SecretBytes),
    /// A BIP39 mnemonic (English) and its passphrase (empty for none).
    Bip39 {
        /// The mnemonic words.
        mnemonic: SecretString,
        /// The BIP39 passphrase.
        passphrase: SecretString,
    },
    /// A base58 extended private key (`xprv…`/`tprv…`), used as the root as it stands.
    Xpriv(SecretString),
    /// A P-256 key as a PKCS#8 v1 document (RFC 5208 around the RFC 5915 `ECPrivateKey`, with
    /// its public key): what `openssl pkcs8 -topk8 -nocrypt -outform DER` writes and what
    /// [`HsmProvider::export_key`] returns for a P-256 key. A bare scalar is not accepted: its
    /// public key cannot be computed with ring, and the document lets it be checked.
    P256Pkcs8(SecretBytes),
}

impl KeyMaterial {
    /// The spec of the key this material makes.
    pub fn spec(&self) -> KeySpec {
        match self {
            KeyMaterial::Secp256k1(_) => KeySpec::Secp256k1,
            KeyMaterial::Ed25519(_) => KeySpec::Ed25519,
            KeyMaterial::Aes256(_) => KeySpec::Aes256,
            KeyMaterial::P256Pkcs8(_) => KeySpec::P256,
            KeyMaterial::Bip32Seed(_) | KeyMaterial::Bip39 { .. } | KeyMaterial::Xpriv(_) => KeySpec::Bip32Root,
        }
    }
}

/// A hardware or software security module holding keys that never leave it unless their policy
/// says they may.
///
/// # Contract
///
/// - **Capabilities**: [`capabilities`](Self::capabilities) is fixed for the life of the
///   provider. Every method names the [`Capability`](crate::Capability) it needs in its docs; a
///   method outside the set returns [`HsmError::Unsupported`] with that capability and has no
///   other effect.
/// - **Policy**: a key's [`KeyPolicy`] is fixed at creation. A use outside it is
///   [`HsmError::UsageNotAllowed`]; a use its spec cannot serve is [`HsmError::WrongKeyType`].
/// - **Durability**: a key that `generate_key`/`import_key` returned is stored durably; a
///   deleted key is gone once `delete_key` returns.
/// - **Nonces**: a committed oracle nonce signs at most one message, across threads, handles
///   and restarts; asking again with the same message returns the same signature (so a reply
///   lost to a crash or a failed audit append can be asked for again: BIP340 with the same
///   nonce and message is the same signature and leaks nothing), any other message is
///   [`HsmError::NonceAlreadyUsed`]. The signature is recorded in the audit chain before it is
///   returned. A nonce id, once committed, cannot be committed again.
/// - **Rolled-back or rewritten stores** (the software provider): the audit chain is the
///   keystore's history. Every key entry written and deleted, every nonce committed and every
///   signature a nonce made is recorded in it (with the digest of the entry or nonce), and the
///   head is MACed under a key derived from the key-encryption key. So someone who can write
///   the store but does not know the passphrase cannot cut or rewrite the chain
///   ([`HsmError::AuditChainBroken`]), put back an older or deleted key entry
///   ([`HsmError::StaleEntry`]), or put back a nonce record to sign a second message
///   ([`HsmError::NonceAlreadyUsed`]). What the store cannot detect by itself is being
///   replaced *whole* by an older copy (a restored backup or VM snapshot): that takes a
///   [rollback anchor](crate::anchor) kept elsewhere, which makes such a store
///   [`HsmError::RolledBack`]. Back the anchor up with the store and never restore one without
///   the other. The limits: records appended while the keystore is locked are keyed only by
///   the next head written unlocked; a key created before its entry was recorded (an older
///   build) is checked from its first recorded change on; the PKCS#11 provider keeps keys on
///   its token, and its audit head is not keyed.
/// - **Unlocking** (the software provider): Argon2id parameters read from the store are capped
///   by the caller's ceiling ([`SoftwareOptions::kdf_ceiling`](crate::SoftwareOptions)), checked
///   before any memory is allocated.
/// - **Audit**: every call (successful or not) appends one record to the provider's audit chain;
///   how soon that record is durable is the provider's documented audit mode.
/// - **Signatures**: ECDSA is low-S, and RFC 6979 where the provider reports
///   [`Capability::DeterministicEcdsa`](crate::Capability::DeterministicEcdsa); BIP340 follows the BIP with the given
///   auxiliary randomness; messages to the secp256k1 schemes are 32-byte digests. P-256 ECDSA
///   hashes the message with SHA-256 itself and is not normalised to low-S.
pub trait HsmProvider: Send + Sync {
    /// What this provider can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates a new random key. Needs `Generate*` for the spec (and [`Capability::Bip32`]
    /// for a root).
    ///
    /// [`Capability::Bip32`]: crate::Capability::Bip32
    fn generate_key(&self, id: &KeyId, spec: KeySpec, policy: KeyPolicy) -> Result<KeyInfo, HsmError>;

    /// Creates a BIP32 root from a new random BIP39 mnemonic and `passphrase`, and returns the
    /// mnemonic once, for the operator's backup. Needs `Bip32`.
    fn generate_mnemonic(
        &self,
        id: &KeyId,
        length: MnemonicLength,
        passphrase: &SecretString,
        policy: KeyPolicy,
    ) -> Result<(KeyInfo, SecretString), HsmError>;

    /// Stores existing key material under `id`. Needs `Import` (and `Bip32` for roots).
    fn import_key(&self, id: &KeyId, material: KeyMaterial, policy: KeyPolicy) -> Result<KeyInfo, HsmError>;

    /// The secret of an exportable key: the 32 raw bytes for secp256k1, Ed25519 and AES keys,
    /// the 78-byte BIP32 serialisation for a root, the PKCS#8 document of
    /// [`KeyMaterial::P256Pkcs8`] for a P-256 key. Needs `Export`.
    fn export_key(&self, id: &KeyId) -> Result<SecretBytes, HsmError>;

    /// The public facts about one key.
    fn key_info(&self, id: &KeyId) -> Result<KeyInfo, HsmError>;

    /// Every key, in id order.
    fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError>;

    /// Removes a key; [`HsmError::KeyNotFound`] if there is none.
    fn delete_key(&self, id: &KeyId) -> Result<(), HsmError>;

    /// The public key of a stored key or of a BIP32 child.
    fn public_key(&self, key: KeyRef<'_>) -> Result<PublicKey, HsmError>;

    /// A low-S ECDSA signature of a 32-byte digest (RFC 6979 with `DeterministicEcdsa`). Needs
    /// `SignEcdsa`.
    fn sign_ecdsa(&self, key: KeyRef<'_>, digest: &[u8; 32]) -> Result<ecdsa::Signature, HsmError>;

    /// A BIP340 signature of a 32-byte message with the untweaked key. Needs `SignSchnorr`.
    fn sign_schnorr(
        &self,
        key: KeyRef<'_>,
        message: &[u8; 32],
        aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError>;

    /// A BIP341 key-path signature: the key is tweaked inside the provider with
    /// `merkle_root` (`None` for a key-path-only output, as in BIP86). Needs
    /// `SignTaprootKeySpend`.
    fn sign_taproot_key_spend(
        &self,
        key: KeyRef<'_>,
        sighash: &[u8; 32],
        merkle_root: Option<TapNodeHash>,
        aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError>;

    /// An Ed25519 signature of `message`. Needs `SignEd25519`.
    fn sign_ed25519(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature, HsmError>;

    /// An ECDSA P-256 signature of SHA-256(`message`) (`ES256`), as `r ‖ s`; not normalised
    /// to low-S, and with a nonce from the provider's random source. Needs `SignP256`.
    fn sign_p256(&self, id: &KeyId, message: &[u8]) -> Result<P256Signature, HsmError>;

    /// AES-256-GCM encryption with a fresh random nonce; returns `nonce ‖ ciphertext ‖ tag`.
    /// Needs `Aes256Gcm`.
    fn encrypt(&self, id: &KeyId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// Opens what [`encrypt`](Self::encrypt) produced; [`HsmError::DecryptionFailed`] if the
    /// key, `aad` or bytes do not match. Needs `Aes256Gcm`.
    fn decrypt(&self, id: &KeyId, sealed: &[u8], aad: &[u8]) -> Result<SecretBytes, HsmError>;

    /// The extended public key at `path` below a BIP32 root, with its origin. Needs `Bip32`.
    fn account_xpub(&self, root: &KeyId, path: &DerivationPath, network: NetworkKind) -> Result<AccountXpub, HsmError>;

    /// The secret of the child of the BIP32 root `root` at `scope`'s own hardened branch
    /// followed by `path` (`root / scope.branch() / path…`): its 32-byte secp256k1 secret key.
    ///
    /// This is the one way a secret derived from a root leaves the provider, for callers that
    /// must hold a raw key (ddk-manager's `ContractSigner::get_secret_key` for per-contract DLC
    /// funding keys). Only children of the scope's branch leave, and only from a root whose
    /// policy allows [`scope.usage()`](ExportScope::usage) (opt-in: not in
    /// [`KeyPolicy::default_for`]); the root's `exportable` flag is not consulted, and the root
    /// itself, the branch key and every other branch stay inside.
    ///
    /// `path` must be 1 to [`ExportScope::MAX_PATH_LEN`] steps, every one hardened
    /// ([`HsmError::InvalidScopedPath`] otherwise); a root whose policy lacks the usage is
    /// [`HsmError::UsageNotAllowed`]; a key that is not a root is [`HsmError::WrongKeyType`].
    /// The child's public key is [`public_key`](Self::public_key) of
    /// [`KeyRef::Derived`] at [`scope.child_path(path)`](ExportScope::child_path).
    ///
    /// Every call, refused or not, is audited as [`Operation::ExportScopedChild`] with `root`
    /// as its key and, as its input hash, SHA-256 of the BIP32 indices (hardened bit set) of
    /// the branch and then of each step of `path`, 4 big-endian bytes each: the chain shows
    /// which child left. Needs `Bip32` and `Export` (a provider missing both names `Bip32`).
    ///
    /// [`Operation::ExportScopedChild`]: crate::Operation::ExportScopedChild
    fn export_scoped_child(
        &self,
        root: &KeyId,
        scope: ExportScope,
        path: &[ChildNumber],
    ) -> Result<SecretBytes, HsmError>;

    /// Derives the 64-byte seed of Lightning node `index` from the BIP32 root `root` with BIP85
    /// ([`node_seed`](crate::node_seed): the HEX application at
    /// `83696968' / 128169' / 64' / index'`), for a node implementation that derives its keys
    /// from a seed it must hold (ldk-node's `set_entropy_seed_bytes`).
    ///
    /// Only from a root whose policy allows [`Usage::DeriveNodeSeed`](crate::Usage::DeriveNodeSeed)
    /// (opt-in: not in [`KeyPolicy::default_for`]) is anything derived; the root's `exportable`
    /// flag is not consulted. `index` at or above 2^31 is [`HsmError::InvalidNodeSeedIndex`]; a
    /// key that is not a root is [`HsmError::WrongKeyType`].
    ///
    /// Every call, refused or not, is audited as [`Operation::DeriveNodeSeed`] with `root` as its
    /// key and, as its input hash, SHA-256 of the four BIP32 indices of the path (hardened bit
    /// set), 4 big-endian bytes each: the chain shows which node's seed left. Needs `Bip32` and
    /// `Export` (a provider missing both names `Bip32`).
    ///
    /// [`Operation::DeriveNodeSeed`]: crate::Operation::DeriveNodeSeed
    fn derive_node_seed(&self, root: &KeyId, index: u32) -> Result<SecretBytes, HsmError>;

    /// Commits a one-time BIP340 nonce for `key` under `nonce`; returns its public point R
    /// (x-only, even y), to be announced. Needs `OracleNonces`.
    fn commit_nonce(&self, key: &KeyId, nonce: &Label) -> Result<XOnlyPublicKey, HsmError>;

    /// Signs `message` with `key` using the committed nonce, consuming it for this message:
    /// the signature's R is the announced point. The same message again returns the same
    /// signature; another message is [`HsmError::NonceAlreadyUsed`]. Needs `OracleNonces`.
    fn sign_with_nonce(&self, key: &KeyId, nonce: &Label, message: &[u8; 32]) -> Result<schnorr::Signature, HsmError>;

    /// Appends to the audit chain a decision taken outside the provider about a use of `key`,
    /// so that it sits in the same tamper-evident chain as the operations it governs: a
    /// spending policy approving (`outcome` 0) or refusing (a nonzero, caller-defined code)
    /// a transaction before asking for its signatures. `subject` is a 32-byte digest of what
    /// was decided on (a txid, a PSBT hash), stored as the record's input hash; it must not be
    /// a secret. Durable on return under [`AuditMode::Durable`](crate::AuditMode::Durable).
    /// Needs `AuditLog`.
    fn record_decision(&self, key: Option<&KeyId>, subject: &[u8; 32], outcome: u16) -> Result<(), HsmError>;

    /// Makes every audit record appended so far durable. Needs `AuditLog`.
    fn flush_audit(&self) -> Result<(), HsmError>;

    /// Up to `limit` audit records with sequence numbers above `after`. Needs `AuditLog`.
    fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, HsmError>;

    /// Checks the whole audit chain as stored (flushing first). Needs `AuditLog`.
    fn verify_audit_chain(&self) -> Result<AuditSummary, HsmError>;
}
