//! The software provider: a keystore of sealed entries in a [`KvStore`].
//!
//! Entries are sealed with AES-256-GCM under a key-encryption key (KEK) derived from a
//! passphrase with Argon2id; the parameters and salt live in the keystore header with a sealed
//! known value, so a wrong passphrase is [`HsmError::WrongPassphrase`], never a wrong key. While
//! unlocked, unsealed keys are cached in memory (erased on lock and drop) so that signing does
//! no store read, no unsealing and no derivation beyond a BIP32 path's unhardened tail.
//!
//! With the `pkcs11` feature the KEK can instead be a random key wrapped by an AES-256 key on a
//! PKCS#11 token (`SoftwareHsm::create_enveloped`, `SoftwareHsm::unlock_enveloped`): the
//! keys no token can use (BIP340, Taproot, BIP32) are then protected at rest by the token.

#[cfg(feature = "pkcs11")]
mod envelope;
mod kdf;
mod material;
mod nonce;
mod provider;
pub(crate) mod seal;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use anya_core_types::{Clock, Label, SystemClock};
use anya_storage::{KvStore, Namespace};
use ring::aead::LessSafeKey;
use ring::rand::SystemRandom;
use secp256k1::{All, Secp256k1};

pub use kdf::KdfParams;
pub use nonce::sign_with_k as bip340_sign_with_nonce;

use crate::anchor::{AnchorPoint, RollbackAnchor};
use crate::audit::{input_hash, AuditLog, AuditMode, Operation};
use crate::error::{KekSource, SealedDefect};
use crate::software::material::{Material, UnsealedKey};
use crate::software::seal::{Kek, KekOrigin, Meta, META_KEY};
use crate::{HsmError, KeyId, SecretString};

/// Options of a [`SoftwareHsm`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SoftwareOptions {
    /// Prefix of the store namespaces (`<prefix>.keys`, `.meta`, `.nonces`, `.audit`); default
    /// `anya.hsm`. Two keystores can share a store under different prefixes.
    pub namespace_prefix: String,
    /// Argon2id parameters for a keystore being created (an existing one uses its stored ones).
    pub kdf: KdfParams,
    /// The most Argon2id work an unlock will do: parameters read from a keystore header above
    /// it are [`HsmError::KdfAboveCeiling`] before any memory is allocated (the header is in
    /// the store, which someone without the passphrase may have written). Default
    /// [`KdfParams::default_ceiling`]; creating a keystore with parameters above it is refused
    /// the same way, so that it can be unlocked with the same options.
    pub kdf_ceiling: KdfParams,
    /// When audit records become durable; default [`AuditMode::Durable`].
    pub audit: AuditMode,
    /// The actor recorded for operations of this handle; default `anya`.
    pub actor: Label,
    /// The clock of audit records and key creation times.
    pub clock: Arc<dyn Clock>,
    /// Where a copy of the audit head and of every consumed nonce is kept, out of reach of a
    /// restore of the store ([`crate::anchor`]); default none. With one, a store that was
    /// rolled back or rewritten behind it is [`HsmError::RolledBack`] at create, open and
    /// unlock, on every audit append and before every nonce signature.
    pub anchor: Option<Arc<dyn RollbackAnchor>>,
}

impl Default for SoftwareOptions {
    fn default() -> Self {
        Self {
            namespace_prefix: "anya.hsm".to_owned(),
            kdf: KdfParams::default(),
            kdf_ceiling: KdfParams::default_ceiling(),
            audit: AuditMode::Durable,
            actor: Label::new("anya").expect("a valid label"),
            clock: Arc::new(SystemClock),
            anchor: None,
        }
    }
}

impl fmt::Debug for SoftwareOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareOptions")
            .field("namespace_prefix", &self.namespace_prefix)
            .field("kdf", &self.kdf)
            .field("kdf_ceiling", &self.kdf_ceiling)
            .field("audit", &self.audit)
            .field("actor", &self.actor)
            .field("anchor", &self.anchor)
            .finish_non_exhaustive()
    }
}

impl SoftwareOptions {
    /// These options with other Argon2id parameters.
    #[must_use]
    pub fn with_kdf(mut self, kdf: KdfParams) -> Self {
        self.kdf = kdf;
        self
    }

    /// These options with another ceiling on the Argon2id work an unlock will do.
    #[must_use]
    pub fn with_kdf_ceiling(mut self, ceiling: KdfParams) -> Self {
        self.kdf_ceiling = ceiling;
        self
    }

    /// These options with another audit mode.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditMode) -> Self {
        self.audit = audit;
        self
    }

    /// These options with another clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// These options with another namespace prefix.
    #[must_use]
    pub fn with_namespace_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.namespace_prefix = prefix.into();
        self
    }

    /// These options with a rollback anchor.
    #[must_use]
    pub fn with_anchor(mut self, anchor: Arc<dyn RollbackAnchor>) -> Self {
        self.anchor = Some(anchor);
        self
    }

    /// These options with another actor.
    #[must_use]
    pub fn with_actor(mut self, actor: Label) -> Self {
        self.actor = actor;
        self
    }
}

struct Unlocked {
    kek: LessSafeKey,
    keys: HashMap<KeyId, Arc<UnsealedKey>>,
}

pub(crate) struct Inner {
    store: Arc<dyn KvStore>,
    keys_ns: Namespace,
    meta_ns: Namespace,
    nonces_ns: Namespace,
    secp: Secp256k1<All>,
    rng: SystemRandom,
    audit: AuditLog,
    kdf_ceiling: KdfParams,
    state: RwLock<Option<Unlocked>>,
}

/// The software [`HsmProvider`](crate::HsmProvider).
///
/// Cheap to clone: clones share the keystore, the unlocked state and the audit chain.
/// Keys cached by one handle are not invalidated by another `SoftwareHsm` opened separately on
/// the same store; share one handle (clone it) per process.
#[derive(Clone)]
pub struct SoftwareHsm {
    inner: Arc<Inner>,
    actor: Arc<Label>,
}

impl fmt::Debug for SoftwareHsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareHsm")
            .field("keys_ns", &self.inner.keys_ns)
            .field("unlocked", &self.is_unlocked())
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

fn namespaces(prefix: &str) -> Result<[Namespace; 5], HsmError> {
    Ok([
        Namespace::new(format!("{prefix}.keys"))?,
        Namespace::new(format!("{prefix}.meta"))?,
        Namespace::new(format!("{prefix}.nonces"))?,
        Namespace::new(format!("{prefix}.audit"))?,
        Namespace::new(format!("{prefix}.audit-head"))?,
    ])
}

impl SoftwareHsm {
    fn build(store: Arc<dyn KvStore>, options: &SoftwareOptions) -> Result<Self, HsmError> {
        let [keys_ns, meta_ns, nonces_ns, audit_ns, head_ns] = namespaces(&options.namespace_prefix)?;
        let audit = AuditLog::new(
            Arc::clone(&store),
            audit_ns,
            head_ns,
            options.audit,
            Arc::clone(&options.clock),
            options.anchor.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                keys_ns,
                meta_ns,
                nonces_ns,
                secp: Secp256k1::new(),
                rng: SystemRandom::new(),
                audit,
                kdf_ceiling: options.kdf_ceiling,
                state: RwLock::new(None),
            }),
            actor: Arc::new(options.actor.clone()),
        })
    }

    /// Creates a new, empty keystore in `store` sealed under `passphrase`, and returns it
    /// unlocked. [`HsmError::KeystoreExists`] if the namespaces already hold one.
    pub fn create(
        store: Arc<dyn KvStore>,
        passphrase: &SecretString,
        options: SoftwareOptions,
    ) -> Result<Self, HsmError> {
        let hsm = Self::build(store, &options)?;
        // A store wiped behind an anchor that has seen records is a rollback too.
        hsm.inner.audit.check_anchor()?;
        let result = hsm.create_keystore(passphrase, options.kdf);
        hsm.record(Operation::Create, None, None, &result)?;
        result.map(|()| hsm)
    }

    fn create_keystore(&self, passphrase: &SecretString, params: KdfParams) -> Result<(), HsmError> {
        let inner = &self.inner;
        self.ensure_no_keystore()?;
        params.check_ceiling(&inner.kdf_ceiling)?;
        let salt = seal::random::<16>(&inner.rng)?;
        let kek = params.derive_kek(passphrase.expose().as_bytes(), &salt)?;
        let meta = Meta::new(&kek.aead, &inner.rng, KekOrigin::Passphrase { params, salt })?;
        self.install(&meta, kek)
    }

    /// [`HsmError::KeystoreExists`] if the store already holds a keystore header.
    fn ensure_no_keystore(&self) -> Result<(), HsmError> {
        let inner = &self.inner;
        if inner.store.get(&inner.meta_ns, META_KEY)?.is_some() {
            return Err(HsmError::KeystoreExists);
        }
        Ok(())
    }

    /// Writes the header of a new keystore (unless another writer got there first) and
    /// unlocks it with `kek`.
    fn install(&self, meta: &Meta, kek: Kek) -> Result<(), HsmError> {
        let inner = &self.inner;
        match inner
            .store
            .compare_and_swap(&inner.meta_ns, META_KEY, None, Some(&meta.encode()))
        {
            Ok(_) => {}
            Err(e) if e.is_conflict() => return Err(HsmError::KeystoreExists),
            Err(e) => return Err(e.into()),
        }
        self.set_unlocked(kek)
    }

    fn set_unlocked(&self, kek: Kek) -> Result<(), HsmError> {
        *self.inner.state.write().map_err(|_| HsmError::Poisoned)? = Some(Unlocked {
            kek: kek.aead,
            keys: HashMap::new(),
        });
        self.inner.audit.set_mac_key(Some(kek.audit))
    }

    /// The stored keystore header.
    fn meta(&self) -> Result<Meta, HsmError> {
        let inner = &self.inner;
        let stored = inner
            .store
            .get(&inner.meta_ns, META_KEY)?
            .ok_or(HsmError::KeystoreMissing)?;
        Meta::decode(&stored.value).map_err(|defect| HsmError::KeystoreCorrupt { defect })
    }

    /// Opens the existing keystore in `store`, locked. [`HsmError::KeystoreMissing`] if there is
    /// none.
    pub fn open(store: Arc<dyn KvStore>, options: SoftwareOptions) -> Result<Self, HsmError> {
        let hsm = Self::build(store, &options)?;
        if hsm.inner.store.get(&hsm.inner.meta_ns, META_KEY)?.is_none() {
            return Err(HsmError::KeystoreMissing);
        }
        hsm.inner.audit.check_anchor()?;
        Ok(hsm)
    }

    /// The operator's override after a restore of the store that was meant (the anchor says
    /// [`HsmError::RolledBack`]): opens the keystore, unlocks it with `passphrase`, moves the
    /// anchor to the store's audit head and records the override in the audit chain (its input
    /// hash commits to both positions). Returns the unlocked keystore and the positions: the
    /// anchored one it replaced and the store's.
    ///
    /// Nonces the anchor holds as consumed stay consumed: after the override, each still signs
    /// only the message it signed before, though the restored store may say it is unused.
    pub fn accept_rollback(
        store: Arc<dyn KvStore>,
        passphrase: &SecretString,
        options: SoftwareOptions,
    ) -> Result<(Self, Option<AnchorPoint>, AnchorPoint), HsmError> {
        let hsm = Self::build(store, &options)?;
        if hsm.inner.store.get(&hsm.inner.meta_ns, META_KEY)?.is_none() {
            return Err(HsmError::KeystoreMissing);
        }
        // The passphrase first: only someone who can unlock the keystore may accept its store.
        hsm.unlock_key_only(passphrase)?;
        let old = hsm.inner.audit.reset_anchor()?;
        let new = hsm.inner.audit.store_point()?;
        let mut subject = Vec::with_capacity(2 * 40);
        for p in old.iter().chain(std::iter::once(&new)) {
            subject.extend_from_slice(&p.seq.to_be_bytes());
            subject.extend_from_slice(&p.hash);
        }
        hsm.record(Operation::AcceptRollback, None, Some(input_hash(&subject)), &Ok(()))?;
        hsm.record(Operation::Unlock, None, None, &Ok(()))?;
        Ok((hsm, old, new))
    }

    /// Derives the KEK from `passphrase` with the stored parameters and unlocks the keystore.
    /// [`HsmError::WrongPassphrase`] leaves it locked.
    pub fn unlock(&self, passphrase: &SecretString) -> Result<(), HsmError> {
        let result = self.unlock_inner(passphrase);
        self.record(Operation::Unlock, None, None, &result)?;
        result
    }

    fn unlock_inner(&self, passphrase: &SecretString) -> Result<(), HsmError> {
        self.inner.audit.check_anchor()?;
        self.unlock_key_only(passphrase)
    }

    /// Derives the KEK and unlocks, without checking the anchor.
    fn unlock_key_only(&self, passphrase: &SecretString) -> Result<(), HsmError> {
        let meta = self.meta()?;
        let KekOrigin::Passphrase { params, salt } = &meta.origin else {
            return Err(HsmError::KekSourceMismatch {
                keystore: meta.origin.kind(),
            });
        };
        params.check_ceiling(&self.inner.kdf_ceiling)?;
        let kek = params.derive_kek(passphrase.expose().as_bytes(), salt)?;
        if !meta.check(&kek.aead) {
            return Err(HsmError::WrongPassphrase);
        }
        self.set_unlocked(kek)
    }

    /// Flushes the audit log and drops the KEK and every unsealed key (erasing them).
    pub fn lock(&self) -> Result<(), HsmError> {
        // Recorded and written while the head key is still there, so that the lock is keyed.
        let recorded = self
            .record(Operation::Lock, None, None, &Ok(()))
            .and_then(|()| self.inner.audit.flush());
        *self.inner.state.write().map_err(|_| HsmError::Poisoned)? = None;
        self.inner.audit.set_mac_key(None)?;
        recorded
    }

    /// Whether the keystore is unlocked.
    pub fn is_unlocked(&self) -> bool {
        self.inner.state.read().map(|s| s.is_some()).unwrap_or(false)
    }

    /// A handle sharing this keystore that records `actor` in the audit log.
    #[must_use]
    pub fn as_actor(&self, actor: Label) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            actor: Arc::new(actor),
        }
    }

    /// The Argon2id parameters the keystore was created with;
    /// [`HsmError::KekSourceMismatch`] for an enveloped keystore, which has none.
    pub fn kdf_params(&self) -> Result<KdfParams, HsmError> {
        match self.meta()?.origin {
            KekOrigin::Passphrase { params, .. } => Ok(params),
            other => Err(HsmError::KekSourceMismatch { keystore: other.kind() }),
        }
    }

    /// Where the keystore's key-encryption key comes from.
    pub fn kek_source(&self) -> Result<KekSource, HsmError> {
        Ok(self.meta()?.origin.kind())
    }

    /// Appends the audit record of one operation.
    fn record<T>(
        &self,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        result: &Result<T, HsmError>,
    ) -> Result<(), HsmError> {
        self.inner.audit.record(&self.actor, operation, key, input_hash, result)
    }

    /// [`audited`](Self::audited) for an operation that reports its record's subject.
    fn audited_subject<T>(
        &self,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        f: impl FnOnce() -> Result<(T, [u8; 32]), HsmError>,
    ) -> Result<T, HsmError> {
        self.inner
            .audit
            .audited_subject(&self.actor, operation, key, input_hash, f)
    }

    /// Runs `f` and records it; the result is withheld if the record cannot be appended.
    fn audited<T>(
        &self,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        f: impl FnOnce() -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.inner.audit.audited(&self.actor, operation, key, input_hash, f)
    }

    /// The unsealed key `id`, from the cache or unsealed from the store.
    fn key(&self, id: &KeyId) -> Result<Arc<UnsealedKey>, HsmError> {
        let inner = &self.inner;
        {
            let state = inner.state.read().map_err(|_| HsmError::Poisoned)?;
            let unlocked = state.as_ref().ok_or(HsmError::Locked)?;
            if let Some(key) = unlocked.keys.get(id) {
                return Ok(Arc::clone(key));
            }
        }
        let stored = inner
            .store
            .get(&inner.keys_ns, id.as_str().as_bytes())?
            .ok_or_else(|| HsmError::KeyNotFound { id: id.clone() })?;
        // The entry must be the one the audit chain last recorded for this id: an older entry
        // put back (another policy) or a deleted one is refused.
        match inner.audit.key_entry(id.as_str())? {
            Some(recorded) if recorded != seal::entry_digest(&stored.value) => {
                return Err(HsmError::StaleEntry { id: id.clone() })
            }
            _ => {}
        }
        let mut state = inner.state.write().map_err(|_| HsmError::Poisoned)?;
        let unlocked = state.as_mut().ok_or(HsmError::Locked)?;
        let (header, secret) = seal::open_entry(&unlocked.kek, id.as_str(), &stored.value)
            .map_err(|defect| HsmError::SealedEntry { id: id.clone(), defect })?;
        let material =
            Material::from_secret(&inner.secp, header.spec, &secret).ok_or_else(|| HsmError::SealedEntry {
                id: id.clone(),
                defect: SealedDefect::BadKeyMaterial,
            })?;
        let key = Arc::new(UnsealedKey {
            id: Arc::new(id.clone()),
            header,
            material,
        });
        unlocked.keys.insert(id.clone(), Arc::clone(&key));
        Ok(key)
    }

    /// Runs `f` with the KEK.
    fn with_kek<T>(&self, f: impl FnOnce(&LessSafeKey) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let state = self.inner.state.read().map_err(|_| HsmError::Poisoned)?;
        let unlocked = state.as_ref().ok_or(HsmError::Locked)?;
        f(&unlocked.kek)
    }

    fn forget(&self, id: &KeyId) -> Result<(), HsmError> {
        if let Some(unlocked) = self.inner.state.write().map_err(|_| HsmError::Poisoned)?.as_mut() {
            unlocked.keys.remove(id);
        }
        Ok(())
    }

    fn remember(&self, key: Arc<UnsealedKey>) -> Result<(), HsmError> {
        if let Some(unlocked) = self.inner.state.write().map_err(|_| HsmError::Poisoned)?.as_mut() {
            unlocked.keys.insert((*key.id).clone(), key);
        }
        Ok(())
    }
}
