//! A provider that fails over from a primary to a secondary holding the same keys.
//!
//! Every call goes to the active provider. If it fails with an error that
//! [`indicates_unavailable`](HsmError::indicates_unavailable) (device, session, store, lock),
//! the call is retried once on the other provider, which becomes the active one, so that the
//! next calls go straight to it. [`health_check`](FailoverHsm::health_check) probes the primary
//! and switches back once it answers again. Answers about the request itself (unknown key,
//! policy, failed decryption) are returned as they are: the secondary would give the same.
//!
//! Both providers must hold the same keys under the same ids (for example a software keystore
//! and its replica, or two tokens of one HSM cluster). Keys generated through the failover go
//! to the active provider only; a caller that needs them on both imports them into each.
//! Capabilities are those both providers share, so a call never succeeds or fails depending on
//! which provider is active.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::{NetworkKind, TapNodeHash};
use secp256k1::{ecdsa, schnorr, XOnlyPublicKey};

use crate::audit::{AuditRecord, AuditSummary};
use crate::{
    AccountXpub, AuxRand, Capabilities, Capability, Ed25519Signature, ExportScope, HsmError, HsmProvider, KeyId,
    KeyInfo, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, MnemonicLength, P256Signature, PublicKey, SecretBytes,
    SecretString,
};

/// Which provider of a [`FailoverHsm`] answers calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    /// The primary.
    Primary,
    /// The secondary, after the primary was found unavailable.
    Secondary,
}

/// A primary and a secondary [`HsmProvider`] holding the same keys; see the [module
/// docs](self).
#[derive(Clone)]
pub struct FailoverHsm {
    primary: Arc<dyn HsmProvider>,
    secondary: Arc<dyn HsmProvider>,
    on_secondary: Arc<AtomicBool>,
}

impl std::fmt::Debug for FailoverHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverHsm")
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl FailoverHsm {
    /// Calls go to `primary` until it is unavailable, then to `secondary`.
    pub fn new(primary: Arc<dyn HsmProvider>, secondary: Arc<dyn HsmProvider>) -> Self {
        Self {
            primary,
            secondary,
            on_secondary: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The provider answering calls now.
    pub fn active(&self) -> Active {
        if self.on_secondary.load(Ordering::Acquire) {
            Active::Secondary
        } else {
            Active::Primary
        }
    }

    /// Probes the primary with a cheap call (`list_keys`). If it answers, it becomes the active
    /// provider again and this returns [`Active::Primary`]; if it is unavailable, the secondary
    /// becomes active and this returns [`Active::Secondary`]. Another error of the probe is
    /// returned as it is.
    pub fn health_check(&self) -> Result<Active, HsmError> {
        match self.primary.list_keys() {
            Ok(_) => {
                self.on_secondary.store(false, Ordering::Release);
                Ok(Active::Primary)
            }
            Err(e) if e.indicates_unavailable() => {
                self.on_secondary.store(true, Ordering::Release);
                Ok(Active::Secondary)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on the active provider, and on the other one if the active one is unavailable.
    fn call<T>(&self, f: impl Fn(&dyn HsmProvider) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let on_secondary = self.on_secondary.load(Ordering::Acquire);
        let (first, second) = if on_secondary {
            (&self.secondary, &self.primary)
        } else {
            (&self.primary, &self.secondary)
        };
        match f(first.as_ref()) {
            Err(e) if e.indicates_unavailable() => match f(second.as_ref()) {
                Ok(v) => {
                    self.on_secondary.store(!on_secondary, Ordering::Release);
                    Ok(v)
                }
                Err(e) if e.indicates_unavailable() => Err(HsmError::AllProvidersUnavailable { source: Box::new(e) }),
                Err(e) => Err(e),
            },
            other => other,
        }
    }
}

impl HsmProvider for FailoverHsm {
    /// The capabilities both providers have.
    fn capabilities(&self) -> Capabilities {
        let (a, b) = (self.primary.capabilities(), self.secondary.capabilities());
        Capability::ALL
            .into_iter()
            .filter(|c| a.contains(*c) && b.contains(*c))
            .fold(Capabilities::empty(), Capabilities::with)
    }

    fn generate_key(&self, id: &KeyId, spec: KeySpec, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        self.call(|p| p.generate_key(id, spec, policy))
    }

    fn generate_mnemonic(
        &self,
        id: &KeyId,
        length: MnemonicLength,
        passphrase: &SecretString,
        policy: KeyPolicy,
    ) -> Result<(KeyInfo, SecretString), HsmError> {
        self.call(|p| p.generate_mnemonic(id, length, passphrase, policy))
    }

    fn import_key(&self, id: &KeyId, material: KeyMaterial, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        // Material is consumed by the call: no retry on the other provider.
        let provider = match self.active() {
            Active::Primary => &self.primary,
            Active::Secondary => &self.secondary,
        };
        provider.import_key(id, material, policy)
    }

    fn export_key(&self, id: &KeyId) -> Result<SecretBytes, HsmError> {
        self.call(|p| p.export_key(id))
    }

    fn key_info(&self, id: &KeyId) -> Result<KeyInfo, HsmError> {
        self.call(|p| p.key_info(id))
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError> {
        self.call(|p| p.list_keys())
    }

    fn delete_key(&self, id: &KeyId) -> Result<(), HsmError> {
        self.call(|p| p.delete_key(id))
    }

    fn public_key(&self, key: KeyRef<'_>) -> Result<PublicKey, HsmError> {
        self.call(|p| p.public_key(key))
    }

    fn sign_ecdsa(&self, key: KeyRef<'_>, digest: &[u8; 32]) -> Result<ecdsa::Signature, HsmError> {
        self.call(|p| p.sign_ecdsa(key, digest))
    }

    fn sign_schnorr(
        &self,
        key: KeyRef<'_>,
        message: &[u8; 32],
        aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError> {
        self.call(|p| p.sign_schnorr(key, message, aux_rand))
    }

    fn sign_taproot_key_spend(
        &self,
        key: KeyRef<'_>,
        sighash: &[u8; 32],
        merkle_root: Option<TapNodeHash>,
        aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError> {
        self.call(|p| p.sign_taproot_key_spend(key, sighash, merkle_root, aux_rand))
    }

    fn sign_ed25519(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature, HsmError> {
        self.call(|p| p.sign_ed25519(id, message))
    }

    fn sign_p256(&self, id: &KeyId, message: &[u8]) -> Result<P256Signature, HsmError> {
        self.call(|p| p.sign_p256(id, message))
    }

    fn encrypt(&self, id: &KeyId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.call(|p| p.encrypt(id, plaintext, aad))
    }

    fn decrypt(&self, id: &KeyId, sealed: &[u8], aad: &[u8]) -> Result<SecretBytes, HsmError> {
        self.call(|p| p.decrypt(id, sealed, aad))
    }

    fn account_xpub(&self, root: &KeyId, path: &DerivationPath, network: NetworkKind) -> Result<AccountXpub, HsmError> {
        self.call(|p| p.account_xpub(root, path, network))
    }

    fn export_scoped_child(
        &self,
        root: &KeyId,
        scope: ExportScope,
        path: &[ChildNumber],
    ) -> Result<SecretBytes, HsmError> {
        self.call(|p| p.export_scoped_child(root, scope, path))
    }

    fn derive_node_seed(&self, root: &KeyId, index: u32) -> Result<SecretBytes, HsmError> {
        self.call(|p| p.derive_node_seed(root, index))
    }

    /// Nonces are committed on the active provider only: a nonce committed on one provider
    /// cannot be used on the other, which is what keeps it single-use.
    fn commit_nonce(&self, key: &KeyId, nonce: &Label) -> Result<XOnlyPublicKey, HsmError> {
        self.call(|p| p.commit_nonce(key, nonce))
    }

    fn sign_with_nonce(&self, key: &KeyId, nonce: &Label, message: &[u8; 32]) -> Result<schnorr::Signature, HsmError> {
        self.call(|p| p.sign_with_nonce(key, nonce, message))
    }

    fn record_decision(&self, key: Option<&KeyId>, subject: &[u8; 32], outcome: u16) -> Result<(), HsmError> {
        self.call(|p| p.record_decision(key, subject, outcome))
    }

    fn flush_audit(&self) -> Result<(), HsmError> {
        self.call(|p| p.flush_audit())
    }

    fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, HsmError> {
        self.call(|p| p.audit_records(after, limit))
    }

    fn verify_audit_chain(&self) -> Result<AuditSummary, HsmError> {
        self.call(|p| p.verify_audit_chain())
    }
}
