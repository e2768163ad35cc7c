//! The one error type of the HSM contract.

use anya_core_types::{Label, LabelError};
use anya_storage::StoreError;

use crate::audit::AuditBreak;
use crate::capability::Capability;
use crate::key::{KeyId, KeySpec, Usage};

/// Why a sealed record could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealedDefect {
    /// The record is shorter than its fixed header and tag.
    Truncated,
    /// The record does not start with the expected magic and format version.
    UnknownFormat,
    /// A header field holds a value this build does not know.
    BadHeader,
    /// Authenticated decryption failed: the bytes were altered, or the record belongs to another
    /// key id (the id is bound as associated data).
    AuthenticationFailed,
    /// The decrypted key material is not valid for its key spec.
    BadKeyMaterial,
}

impl std::fmt::Display for SealedDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealedDefect::Truncated => "truncated",
            SealedDefect::UnknownFormat => "unknown format",
            SealedDefect::BadHeader => "bad header",
            SealedDefect::AuthenticationFailed => "authentication failed",
            SealedDefect::BadKeyMaterial => "bad key material",
        })
    }
}

/// Where a software keystore's key-encryption key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KekSource {
    /// Argon2id over a passphrase.
    Passphrase,
    /// A random KEK wrapped by an AES-256 key on a PKCS#11 token (envelope mode).
    Pkcs11Token,
}

impl std::fmt::Display for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KekSource::Passphrase => "a passphrase",
            KekSource::Pkcs11Token => "a pkcs#11 token key",
        })
    }
}

/// Errors of every [`HsmProvider`](crate::HsmProvider) operation.
///
/// Each variant is a typed answer a caller can act on; none carries secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The provider does not offer this capability; [`capabilities`](crate::HsmProvider::capabilities)
    /// said so in advance.
    #[error("provider does not support {capability:?}")]
    Unsupported {
        /// The missing capability.
        capability: Capability,
    },
    /// The keystore is locked: unlock it with its passphrase first.
    #[error("keystore is locked")]
    Locked,
    /// The passphrase does not open this keystore.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The keystore's KEK is protected by another source than the one offered (a passphrase
    /// for an enveloped keystore, or a token for a passphrase keystore).
    #[error("keystore kek is protected by {keystore}, not by what was offered")]
    KekSourceMismatch {
        /// Where the keystore's KEK comes from.
        keystore: KekSource,
    },
    /// The token holds no AES-256 key with the label recorded in the enveloped keystore's
    /// header: another token, or the key was deleted.
    #[error("no kek-wrapping key labelled {label:?} on the token")]
    TokenKekNotFound {
        /// The recorded `CKA_LABEL` (lossily decoded as UTF-8).
        label: String,
    },
    /// The token did not decrypt the wrapped KEK: its key is not the one that wrapped it, or
    /// the wrapped KEK or its header were altered.
    #[cfg(feature = "pkcs11")]
    #[error("the token did not unwrap the keystore kek")]
    KekUnwrapFailed {
        /// cryptoki's report of the failed `C_Decrypt`.
        #[source]
        source: cryptoki::error::Error,
    },
    /// No keystore exists in this store yet.
    #[error("no keystore in this store")]
    KeystoreMissing,
    /// A keystore already exists in this store.
    #[error("a keystore already exists in this store")]
    KeystoreExists,
    /// The keystore header is damaged or was written by an unknown format.
    #[error("keystore header is corrupt ({defect})")]
    KeystoreCorrupt {
        /// What is wrong with it.
        defect: SealedDefect,
    },
    /// Key-derivation parameters are outside the accepted range.
    #[error("argon2id parameters rejected: {memory_kib} KiB, {iterations} passes, {parallelism} lanes")]
    InvalidKdfParams {
        /// Memory in KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
    },
    /// The keystore header asks for more Argon2id work than the caller's ceiling allows
    /// (`SoftwareOptions::kdf_ceiling`): refused before any memory is allocated, so that a
    /// tampered header cannot stall or exhaust the host.
    #[error(
        "the keystore asks for argon2id with {} KiB, {} passes, {} lanes: above the ceiling of {} KiB, {} passes, {} lanes",
        stored.memory_kib(), stored.iterations(), stored.parallelism(),
        ceiling.memory_kib(), ceiling.iterations(), ceiling.parallelism()
    )]
    #[cfg(feature = "software")]
    KdfAboveCeiling {
        /// The parameters in the keystore header.
        stored: crate::KdfParams,
        /// The ceiling.
        ceiling: crate::KdfParams,
    },
    /// The key-derivation function failed.
    #[cfg(feature = "software")]
    #[error("argon2id key derivation failed")]
    Kdf {
        /// Argon2's report.
        #[source]
        source: argon2::Error,
    },
    /// No key with this id.
    #[error("no key {id}")]
    KeyNotFound {
        /// The id asked for.
        id: KeyId,
    },
    /// A key with this id already exists.
    #[error("key {id} already exists")]
    KeyExists {
        /// The id.
        id: KeyId,
    },
    /// The key's spec does not support this use.
    #[error("key {id} is {spec:?}, which cannot be used for {usage:?}")]
    WrongKeyType {
        /// The key.
        id: KeyId,
        /// Its spec.
        spec: KeySpec,
        /// The use asked for.
        usage: Usage,
    },
    /// The key's policy does not allow this use.
    #[error("policy of key {id} does not allow {usage:?}")]
    UsageNotAllowed {
        /// The key.
        id: KeyId,
        /// The use asked for.
        usage: Usage,
    },
    /// The key's policy forbids export.
    #[error("key {id} is not exportable")]
    NotExportable {
        /// The key.
        id: KeyId,
    },
    /// Imported key material has the wrong length or is not a valid key.
    #[error("invalid key material for {spec:?}")]
    InvalidKeyMaterial {
        /// The spec it was imported as.
        spec: KeySpec,
    },
    /// A stored sealed record could not be opened.
    #[error("sealed entry {id} cannot be opened ({defect})")]
    SealedEntry {
        /// The key (or nonce) id of the record.
        id: Label,
        /// What is wrong with it.
        defect: SealedDefect,
    },
    /// AES-256-GCM decryption failed: wrong key, wrong associated data or altered ciphertext.
    #[error("decryption failed: ciphertext or associated data do not authenticate")]
    DecryptionFailed,
    /// A BIP32 derivation or extended-key operation failed.
    #[error("bip32 error")]
    Bip32 {
        /// rust-bitcoin's report.
        #[source]
        source: bitcoin::bip32::Error,
    },
    /// The path given to [`export_scoped_child`](crate::HsmProvider::export_scoped_child) is
    /// not 1 to 8 hardened steps; nothing was exported.
    #[error("invalid path below the export scope's branch: {defect}")]
    InvalidScopedPath {
        /// What is wrong with it.
        defect: crate::key::ScopedPathDefect,
    },
    /// The node index given to [`derive_node_seed`](crate::HsmProvider::derive_node_seed) is not
    /// below 2^31, so it cannot be a hardened step; nothing was derived.
    #[error("node seed index {index} is not below 2^31")]
    InvalidNodeSeedIndex {
        /// The index given.
        index: u32,
    },
    /// An extended key decodes but breaks a BIP32 rule.
    #[error("invalid extended key: {defect:?}")]
    InvalidExtendedKey {
        /// The rule it breaks.
        defect: crate::bip32::ExtendedKeyDefect,
    },
    /// A BIP39 mnemonic is invalid (word, checksum, length).
    #[error("invalid bip39 mnemonic")]
    Mnemonic {
        /// The bip39 crate's report.
        #[source]
        source: bip39::Error,
    },
    /// An oracle nonce with this id was already committed.
    #[error("nonce {nonce} of key {key} was already committed")]
    NonceExists {
        /// The key.
        key: KeyId,
        /// The nonce id.
        nonce: Label,
    },
    /// No committed nonce with this id.
    #[error("no committed nonce {nonce} for key {key}")]
    NonceNotFound {
        /// The key.
        key: KeyId,
        /// The nonce id.
        nonce: Label,
    },
    /// The nonce has already signed once; signing again would leak the key.
    #[error("nonce {nonce} of key {key} was already used")]
    NonceAlreadyUsed {
        /// The key.
        key: KeyId,
        /// The nonce id.
        nonce: Label,
    },
    /// The audit chain failed verification at record `seq`.
    #[error("audit chain broken at record {seq}: {reason:?}")]
    AuditChainBroken {
        /// Sequence number of the first bad record (or of the head).
        seq: u64,
        /// What is wrong.
        reason: AuditBreak,
    },
    /// The store was restored or rewritten behind the keystore's back: its audit chain ends
    /// before the position the rollback anchor holds, or holds another chain at that position
    /// (`diverged`). Nothing is read from or written to such a store until an operator accepts
    /// it ([`SoftwareHsm::accept_rollback`](crate::SoftwareHsm::accept_rollback)).
    #[error(
        "the store was rolled back or rewritten: its audit chain has {store} records, the rollback anchor holds record {anchor}{}",
        if *diverged { " and the store's chain there is another chain" } else { "" }
    )]
    RolledBack {
        /// Records in the store's audit chain.
        store: u64,
        /// The anchored record.
        anchor: u64,
        /// Whether the store's chain reaches the anchored record but is another chain there.
        diverged: bool,
    },
    /// The stored entry of key `id` is not the one the audit chain last recorded: an older
    /// entry (with another policy) or a deleted one was put back in the store.
    #[error("the stored entry of key {id} is not the one the audit chain recorded: it was rolled back or resurrected")]
    StaleEntry {
        /// The key.
        id: KeyId,
    },
    /// The rollback anchor could not be read or written.
    #[error("rollback anchor: {reason}")]
    Anchor {
        /// What failed.
        reason: String,
    },
    /// The rollback anchor already holds this nonce as consumed for another message.
    #[error("the rollback anchor holds this nonce as consumed for another message")]
    AnchorNonceConflict,
    /// Other writers kept moving the audit head; the operation's record was not written.
    #[error("audit append lost {attempts} races for the chain head")]
    AuditContention {
        /// Attempts made.
        attempts: usize,
    },
    /// A label (key id, nonce id, actor) is invalid.
    #[error("invalid label")]
    Label {
        /// The label error.
        #[source]
        source: LabelError,
    },
    /// The system random source failed.
    #[error("system random source failed")]
    Random,
    /// A cryptographic primitive rejected its input in a way that has negligible probability
    /// for honest inputs (a zero scalar, a point at infinity).
    #[error("cryptographic operation failed: {what}")]
    Crypto {
        /// Which step.
        what: &'static str,
    },
    /// The underlying store failed.
    #[error("store error")]
    Store {
        /// The store's report.
        #[source]
        source: StoreError,
    },
    /// A thread holding a provider lock panicked; the provider refuses further use.
    #[error("provider lock poisoned by a panic in another thread")]
    Poisoned,
    /// The PKCS#11 module or token failed.
    #[cfg(feature = "pkcs11")]
    #[error("pkcs#11 error")]
    Pkcs11 {
        /// cryptoki's report (the module's `CKR_*` value and the function that returned it).
        #[source]
        source: cryptoki::error::Error,
    },
    /// No slot of the PKCS#11 module holds an initialised token with this label.
    #[error("no pkcs#11 token labelled {label:?}")]
    TokenNotFound {
        /// The label asked for.
        label: String,
    },
    /// Every provider behind a [`FailoverHsm`](crate::FailoverHsm) is unavailable.
    #[error("every provider of the failover set is unavailable")]
    AllProvidersUnavailable {
        /// The last provider's report.
        #[source]
        source: Box<HsmError>,
    },
}

#[cfg(feature = "pkcs11")]
impl From<cryptoki::error::Error> for HsmError {
    fn from(source: cryptoki::error::Error) -> Self {
        HsmError::Pkcs11 { source }
    }
}

impl From<StoreError> for HsmError {
    fn from(source: StoreError) -> Self {
        HsmError::Store { source }
    }
}

impl From<LabelError> for HsmError {
    fn from(source: LabelError) -> Self {
        HsmError::Label { source }
    }
}

impl From<bitcoin::bip32::Error> for HsmError {
    fn from(source: bitcoin::bip32::Error) -> Self {
        HsmError::Bip32 { source }
    }
}

impl From<bip39::Error> for HsmError {
    fn from(source: bip39::Error) -> Self {
        HsmError::Mnemonic { source }
    }
}

impl HsmError {
    /// A stable numeric code for this kind of error, recorded in the audit log (0 is success).
    pub fn audit_code(&self) -> u16 {
        match self {
            HsmError::Unsupported { .. } => 1,
            HsmError::Locked => 2,
            HsmError::WrongPassphrase => 3,
            HsmError::KeystoreMissing => 4,
            HsmError::KeystoreExists => 5,
            HsmError::KeystoreCorrupt { .. } => 6,
            HsmError::InvalidKdfParams { .. } => 7,
            #[cfg(feature = "software")]
            HsmError::Kdf { .. } => 8,
            HsmError::KeyNotFound { .. } => 9,
            HsmError::KeyExists { .. } => 10,
            HsmError::WrongKeyType { .. } => 11,
            HsmError::UsageNotAllowed { .. } => 12,
            HsmError::NotExportable { .. } => 13,
            HsmError::InvalidKeyMaterial { .. } => 14,
            HsmError::SealedEntry { .. } => 15,
            HsmError::DecryptionFailed => 16,
            HsmError::Bip32 { .. } => 17,
            HsmError::Mnemonic { .. } => 18,
            HsmError::NonceExists { .. } => 19,
            HsmError::NonceNotFound { .. } => 20,
            HsmError::NonceAlreadyUsed { .. } => 21,
            HsmError::AuditChainBroken { .. } => 22,
            HsmError::Label { .. } => 23,
            HsmError::Random => 24,
            HsmError::Crypto { .. } => 25,
            HsmError::Store { .. } => 26,
            HsmError::Poisoned => 27,
            HsmError::AuditContention { .. } => 28,
            HsmError::InvalidExtendedKey { .. } => 29,
            #[cfg(feature = "pkcs11")]
            HsmError::Pkcs11 { .. } => 30,
            HsmError::TokenNotFound { .. } => 31,
            HsmError::AllProvidersUnavailable { .. } => 32,
            HsmError::KekSourceMismatch { .. } => 33,
            HsmError::TokenKekNotFound { .. } => 34,
            #[cfg(feature = "pkcs11")]
            HsmError::KekUnwrapFailed { .. } => 35,
            #[cfg(feature = "software")]
            HsmError::KdfAboveCeiling { .. } => 36,
            HsmError::RolledBack { .. } => 37,
            HsmError::Anchor { .. } => 38,
            HsmError::AnchorNonceConflict => 39,
            HsmError::StaleEntry { .. } => 40,
            HsmError::InvalidScopedPath { .. } => 41,
            HsmError::InvalidNodeSeedIndex { .. } => 42,
        }
    }

    /// Whether this error says the provider itself cannot serve requests now (its device,
    /// session, store or locks failed), rather than that this request was wrong.
    ///
    /// These are the errors on which a [`FailoverHsm`](crate::FailoverHsm) switches to its
    /// secondary: a PKCS#11 device, session, token or module failure, a store backend or
    /// corruption failure, a poisoned lock, a locked keystore and a missing token. Every answer
    /// about the request (unknown key, policy, wrong type, failed decryption, used nonce) is
    /// not: the secondary would give the same answer.
    pub fn indicates_unavailable(&self) -> bool {
        match self {
            HsmError::Locked | HsmError::Poisoned | HsmError::TokenNotFound { .. } => true,
            HsmError::AllProvidersUnavailable { .. } => true,
            // The anchor's disk or database failed; the keystore itself may be fine.
            HsmError::Anchor { .. } => true,
            HsmError::Store { source } => matches!(
                source,
                StoreError::Backend { .. } | StoreError::Corrupt { .. } | StoreError::Poisoned
            ),
            #[cfg(feature = "pkcs11")]
            HsmError::Pkcs11 { source } => pkcs11_unavailable(source),
            _ => false,
        }
    }
}

#[cfg(feature = "pkcs11")]
fn pkcs11_unavailable(e: &cryptoki::error::Error) -> bool {
    use cryptoki::error::{Error, RvError};
    match e {
        Error::LibraryLoading(_) | Error::NullFunctionPointer | Error::MissingSymbol(_) => true,
        Error::Pkcs11(rv, _) => matches!(
            rv,
            RvError::GeneralError
                | RvError::HostMemory
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::SessionCount
                | RvError::SlotIdInvalid
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
        ),
        _ => false,
    }
}
