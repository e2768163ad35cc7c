#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod anchor;
pub mod audit;
pub mod bip32;
mod capability;
mod error;
mod key;
pub mod node_seed;
mod p256;
pub mod passphrase;
mod provider;
mod secret;

#[cfg(feature = "software")]
pub mod software;

#[cfg(feature = "pkcs11")]
pub mod pkcs11;

pub mod failover;

#[cfg(feature = "test-utils")]
pub mod conformance;

pub use anchor::{AnchorPoint, FileAnchor, RollbackAnchor, StoreAnchor};
pub use anya_core_types::Label;
pub use audit::{AuditBreak, AuditMode, AuditRecord, AuditSummary, Operation};
pub use capability::{Capabilities, Capability};
pub use error::{HsmError, KekSource, SealedDefect};
pub use failover::FailoverHsm;
pub use key::{
    AccountXpub, AuxRand, Ed25519Signature, ExportScope, KeyId, KeyInfo, KeyPolicy, KeyRef, KeySpec, MnemonicLength,
    PublicKey, ScopedPathDefect, Usage, UsageSet,
};
pub use p256::P256Signature;
pub use provider::{HsmProvider, KeyMaterial};
pub use secret::{SecretBytes, SecretString};

#[cfg(feature = "software")]
pub use software::{KdfParams, SoftwareHsm, SoftwareOptions};

#[cfg(feature = "pkcs11")]
pub use pkcs11::{Pkcs11Hsm, Pkcs11Options};
