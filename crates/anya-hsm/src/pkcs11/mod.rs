//! The PKCS#11 provider: keys live on a token (YubiHSM2, CloudHSM, Luna, SoftHSM2) reached
//! through its vendor's module with [`cryptoki`].
//!
//! What a token can do is what this provider offers: secp256k1 ECDSA (`CKM_ECDSA` on the
//! digest, normalised to low-S; the nonce is the token's, not RFC 6979), P-256 ECDSA
//! (`CKM_ECDSA` on a SHA-256 digest computed on the host, `r ‖ s` as the token made it),
//! Ed25519 (`CKM_EDDSA`), AES-256-GCM (`CKM_AES_GCM`) and import/export of plain keys. No token does
//! BIP340 or BIP32, so [`capabilities`](crate::HsmProvider::capabilities) excludes Schnorr,
//! Taproot, BIP32 and oracle nonces; for those use the software provider.
//!
//! Each key is a token object (a private and a public key object for the curves, a secret key
//! object for AES) whose `CKA_LABEL` and `CKA_ID` are the options' label prefix followed by the
//! key id. Keys are `CKA_SENSITIVE` and not `CKA_EXTRACTABLE` unless their policy is
//! exportable, and the token's own `CKA_SIGN`/`CKA_ENCRYPT`/`CKA_DECRYPT` flags follow the
//! policy, so the token enforces it too. The policy, spec and creation time of each key and the
//! hash-chained audit log are kept in a [`KvStore`] beside the token, as the software provider
//! keeps them.

#[cfg(feature = "software")]
pub(crate) mod envelope;
mod provider;
mod token;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anya_core_types::{Clock, Label, SystemClock};
use anya_storage::{KvStore, Namespace};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use ring::rand::SystemRandom;
use secp256k1::{All, Secp256k1};

use crate::audit::{AuditLog, AuditMode, Operation};
use crate::{HsmError, KeyId, SecretString};

/// Options of a [`Pkcs11Hsm`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Pkcs11Options {
    /// Path of the vendor's PKCS#11 module (`libsofthsm2.so`, `libyubihsm_pkcs11.so`, …).
    pub module: PathBuf,
    /// Label of the token to use (`CKA_LABEL` of the token, as `softhsm2-util --show-slots`
    /// prints it).
    pub token_label: String,
    /// The user PIN.
    pub pin: Arc<SecretString>,
    /// Prefix of the `CKA_LABEL`/`CKA_ID` of this provider's objects; default `anya/`. Two
    /// providers can share a token under different prefixes.
    pub label_prefix: String,
    /// Prefix of the store namespaces (`<prefix>.keys`, `.audit`, `.audit-head`); default
    /// `anya.pkcs11`.
    pub namespace_prefix: String,
    /// When audit records become durable; default [`AuditMode::Durable`].
    pub audit: AuditMode,
    /// The actor recorded for operations of this handle; default `anya`.
    pub actor: Label,
    /// The clock of audit records and key creation times.
    pub clock: Arc<dyn Clock>,
    /// Where a copy of the audit head is kept, out of reach of a restore of the store
    /// ([`crate::anchor`]); default none. With one, a store whose audit chain was rolled back
    /// behind it is [`HsmError::RolledBack`] at open and on every
    /// append. (This provider's audit head is not keyed: the anchor is what catches a chain
    /// cut short.)
    pub anchor: Option<Arc<dyn crate::anchor::RollbackAnchor>>,
}

impl Pkcs11Options {
    /// Options for the token labelled `token_label` of `module`, logged in with `pin`.
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin: SecretString) -> Self {
        Self {
            module: module.into(),
            token_label: token_label.into(),
            pin: Arc::new(pin),
            label_prefix: "anya/".to_owned(),
            namespace_prefix: "anya.pkcs11".to_owned(),
            audit: AuditMode::Durable,
            actor: Label::new("anya").expect("a valid label"),
            clock: Arc::new(SystemClock),
            anchor: None,
        }
    }

    /// These options with a rollback anchor.
    #[must_use]
    pub fn with_anchor(mut self, anchor: Arc<dyn crate::anchor::RollbackAnchor>) -> Self {
        self.anchor = Some(anchor);
        self
    }

    /// These options with another object label prefix.
    #[must_use]
    pub fn with_label_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.label_prefix = prefix.into();
        self
    }

    /// These options with another namespace prefix.
    #[must_use]
    pub fn with_namespace_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.namespace_prefix = prefix.into();
        self
    }

    /// These options with another audit mode.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditMode) -> Self {
        self.audit = audit;
        self
    }

    /// These options with another actor.
    #[must_use]
    pub fn with_actor(mut self, actor: Label) -> Self {
        self.actor = actor;
        self
    }

    /// These options with another clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

impl fmt::Debug for Pkcs11Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Options")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("label_prefix", &self.label_prefix)
            .field("namespace_prefix", &self.namespace_prefix)
            .field("audit", &self.audit)
            .field("actor", &self.actor)
            .field("anchor", &self.anchor)
            .finish_non_exhaustive()
    }
}

/// One context per module path for the whole process: `C_Initialize` is process-wide, and a
/// second context finalizing the module would pull it from under the first.
pub(crate) fn context(module: &Path) -> Result<Pkcs11, HsmError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| HsmError::Poisoned)?;
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(e.into()),
    }
    contexts.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

/// The process's one logged-in read-write session on the token labelled `label`, shared by
/// every provider on that token.
///
/// Calls are serialised on it: modules differ in how well they take concurrent object creation
/// from one process (SoftHSM2 answers `CKR_GENERAL_ERROR` to parallel key generation), and
/// login state is per process and token anyway.
pub(crate) fn shared_session(
    ctx: &Pkcs11,
    module: &Path,
    label: &str,
    pin: &SecretString,
) -> Result<Arc<Mutex<Session>>, HsmError> {
    type Sessions = HashMap<(PathBuf, String), Arc<Mutex<Session>>>;
    static SESSIONS: OnceLock<Mutex<Sessions>> = OnceLock::new();
    let mut sessions = SESSIONS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| HsmError::Poisoned)?;
    let key = (module.to_owned(), label.to_owned());
    if let Some(session) = sessions.get(&key) {
        // The PIN of every handle is checked, not only the first one's.
        let guard = session.lock().map_err(|_| HsmError::Poisoned)?;
        login(&guard, pin)?;
        drop(guard);
        return Ok(Arc::clone(session));
    }
    let session = Arc::new(Mutex::new(open_session(ctx, label, pin)?));
    sessions.insert(key, Arc::clone(&session));
    Ok(session)
}

fn login(session: &Session, pin: &SecretString) -> Result<(), HsmError> {
    let pin = cryptoki::types::AuthPin::new(pin.expose().into());
    match session.login(UserType::User, Some(&pin)) {
        // Login is per application and token: another session of this process logged in.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A logged-in read-write session on the token labelled `label`.
fn open_session(ctx: &Pkcs11, label: &str, pin: &SecretString) -> Result<Session, HsmError> {
    let slot = find_slot(ctx, label)?;
    let session = ctx.open_rw_session(slot)?;
    login(&session, pin)?;
    Ok(session)
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    for slot in ctx.get_slots_with_initialized_token()? {
        if ctx.get_token_info(slot)?.label().trim_end() == label {
            return Ok(slot);
        }
    }
    Err(HsmError::TokenNotFound {
        label: label.to_owned(),
    })
}

pub(crate) struct Inner {
    // Declared before `ctx` so the session closes before the context can go.
    session: Arc<Mutex<Session>>,
    #[allow(dead_code, reason = "keeps the module's context alive as long as the session")]
    ctx: Pkcs11,
    store: Arc<dyn KvStore>,
    keys_ns: Namespace,
    label_prefix: String,
    secp: Secp256k1<All>,
    rng: SystemRandom,
    audit: AuditLog,
    clock: Arc<dyn Clock>,
}

/// The PKCS#11 [`HsmProvider`](crate::HsmProvider): keys on a hardware (or SoftHSM2) token.
///
/// Cheap to clone: clones share the audit chain, and every provider of the process on one
/// token shares one logged-in session, on which calls are serialised.
#[derive(Clone)]
pub struct Pkcs11Hsm {
    inner: Arc<Inner>,
    actor: Arc<Label>,
}

impl fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Hsm")
            .field("label_prefix", &self.inner.label_prefix)
            .field("keys_ns", &self.inner.keys_ns)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token by label, opens a session and logs in with the user
    /// PIN. Key records and the audit log live in `store`.
    pub fn open(store: Arc<dyn KvStore>, options: Pkcs11Options) -> Result<Self, HsmError> {
        let prefix = &options.namespace_prefix;
        let keys_ns = Namespace::new(format!("{prefix}.keys"))?;
        let audit_ns = Namespace::new(format!("{prefix}.audit"))?;
        let head_ns = Namespace::new(format!("{prefix}.audit-head"))?;
        let ctx = context(&options.module)?;
        let session = shared_session(&ctx, &options.module, &options.token_label, &options.pin)?;
        let audit = AuditLog::new(
            Arc::clone(&store),
            audit_ns,
            head_ns,
            options.audit,
            Arc::clone(&options.clock),
            options.anchor.clone(),
        );
        audit.check_anchor()?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                ctx,
                store,
                keys_ns,
                label_prefix: options.label_prefix,
                secp: Secp256k1::new(),
                rng: SystemRandom::new(),
                audit,
                clock: options.clock,
            }),
            actor: Arc::new(options.actor),
        })
    }

    /// A handle sharing this provider that records `actor` in the audit log.
    #[must_use]
    pub fn as_actor(&self, actor: Label) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            actor: Arc::new(actor),
        }
    }

    fn record<T>(
        &self,
        operation: Operation,
        key: Option<&KeyId>,
        input_hash: Option<[u8; 32]>,
        result: &Result<T, HsmError>,
    ) -> Result<(), HsmError> {
        self.inner.audit.record(&self.actor, operation, key, input_hash, result)
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
}
