//! The failover provider: the conformance suite over two software providers, and the time from
//! a primary failure to the first good signature from the secondary, with a test-double
//! primary and with a real PKCS#11 token (SoftHSM2, as `.ci/softhsm.sh` sets it up) as primary.
#![allow(
    clippy::print_stderr,
    reason = "the measured failover time is part of the test's report; a skipped test says so"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anya_hsm::audit::{AuditRecord, AuditSummary};
use anya_hsm::conformance::{software_fixture, TempHsm};
use anya_hsm::failover::Active;
use anya_hsm::{
    AccountXpub, AuxRand, Capabilities, Ed25519Signature, ExportScope, FailoverHsm, HsmError, HsmProvider, KeyId,
    KeyInfo, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, MnemonicLength, P256Signature, Pkcs11Hsm, Pkcs11Options,
    PublicKey, SecretBytes, SecretString, SoftwareHsm,
};
use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::{NetworkKind, TapNodeHash};
use secp256k1::{ecdsa, schnorr, Message, Secp256k1, XOnlyPublicKey};

struct Pair {
    failover: FailoverHsm,
    _primary: TempHsm<SoftwareHsm>,
    _secondary: TempHsm<SoftwareHsm>,
}

impl std::ops::Deref for Pair {
    type Target = FailoverHsm;
    fn deref(&self) -> &FailoverHsm {
        &self.failover
    }
}

fn pair() -> Pair {
    let (primary, secondary) = (software_fixture(), software_fixture());
    let failover = FailoverHsm::new(Arc::new(primary.provider.clone()), Arc::new(secondary.provider.clone()));
    Pair {
        failover,
        _primary: primary,
        _secondary: secondary,
    }
}

anya_hsm::hsm_conformance_suite!(Some(pair()));

impl anya_hsm::conformance::StoreBacked for Pair {
    fn provider(&self) -> &dyn HsmProvider {
        &self.failover
    }

    /// The primary's: it serves every call while it is up.
    fn store(&self) -> &dyn anya_storage::KvStore {
        &*self._primary.store
    }

    fn state_namespaces(&self) -> Vec<anya_storage::Namespace> {
        anya_hsm::conformance::software_state_namespaces("anya.hsm")
    }
}

anya_hsm::hsm_rollback_suite!(Some(pair()));

/// A provider whose device can be pulled: while `down`, every call fails as a lost store
/// backend does.
struct Pullable {
    inner: SoftwareHsm,
    down: AtomicBool,
}

impl Pullable {
    fn check(&self) -> Result<(), HsmError> {
        if self.down.load(Ordering::Acquire) {
            let source = std::io::Error::new(std::io::ErrorKind::NotConnected, "device pulled");
            return Err(HsmError::Store {
                source: anya_storage::StoreError::Backend {
                    backend: "test",
                    source: Box::new(source),
                },
            });
        }
        Ok(())
    }
}

impl HsmProvider for Pullable {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn generate_key(&self, id: &KeyId, spec: KeySpec, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        self.check()?;
        self.inner.generate_key(id, spec, policy)
    }
    fn generate_mnemonic(
        &self,
        id: &KeyId,
        length: MnemonicLength,
        passphrase: &SecretString,
        policy: KeyPolicy,
    ) -> Result<(KeyInfo, SecretString), HsmError> {
        self.check()?;
        self.inner.generate_mnemonic(id, length, passphrase, policy)
    }
    fn import_key(&self, id: &KeyId, material: KeyMaterial, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        self.check()?;
        self.inner.import_key(id, material, policy)
    }
    fn export_key(&self, id: &KeyId) -> Result<SecretBytes, HsmError> {
        self.check()?;
        self.inner.export_key(id)
    }
    fn key_info(&self, id: &KeyId) -> Result<KeyInfo, HsmError> {
        self.check()?;
        self.inner.key_info(id)
    }
    fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError> {
        self.check()?;
        self.inner.list_keys()
    }
    fn delete_key(&self, id: &KeyId) -> Result<(), HsmError> {
        self.check()?;
        self.inner.delete_key(id)
    }
    fn public_key(&self, key: KeyRef<'_>) -> Result<PublicKey, HsmError> {
        self.check()?;
        self.inner.public_key(key)
    }
    fn sign_ecdsa(&self, key: KeyRef<'_>, digest: &[u8; 32]) -> Result<ecdsa::Signature, HsmError> {
        self.check()?;
        self.inner.sign_ecdsa(key, digest)
    }
    fn sign_schnorr(&self, key: KeyRef<'_>, message: &[u8; 32], aux: AuxRand) -> Result<schnorr::Signature, HsmError> {
        self.check()?;
        self.inner.sign_schnorr(key, message, aux)
    }
    fn sign_taproot_key_spend(
        &self,
        key: KeyRef<'_>,
        sighash: &[u8; 32],
        merkle_root: Option<TapNodeHash>,
        aux: AuxRand,
    ) -> Result<schnorr::Signature, HsmError> {
        self.check()?;
        self.inner.sign_taproot_key_spend(key, sighash, merkle_root, aux)
    }
    fn sign_ed25519(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature, HsmError> {
        self.check()?;
        self.inner.sign_ed25519(id, message)
    }
    fn sign_p256(&self, id: &KeyId, message: &[u8]) -> Result<P256Signature, HsmError> {
        self.check()?;
        self.inner.sign_p256(id, message)
    }
    fn encrypt(&self, id: &KeyId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.check()?;
        self.inner.encrypt(id, plaintext, aad)
    }
    fn decrypt(&self, id: &KeyId, sealed: &[u8], aad: &[u8]) -> Result<SecretBytes, HsmError> {
        self.check()?;
        self.inner.decrypt(id, sealed, aad)
    }
    fn account_xpub(&self, root: &KeyId, path: &DerivationPath, network: NetworkKind) -> Result<AccountXpub, HsmError> {
        self.check()?;
        self.inner.account_xpub(root, path, network)
    }
    fn export_scoped_child(
        &self,
        root: &KeyId,
        scope: ExportScope,
        path: &[ChildNumber],
    ) -> Result<SecretBytes, HsmError> {
        self.check()?;
        self.inner.export_scoped_child(root, scope, path)
    }
    fn derive_node_seed(&self, root: &KeyId, index: u32) -> Result<SecretBytes, HsmError> {
        self.check()?;
        self.inner.derive_node_seed(root, index)
    }
    fn commit_nonce(&self, key: &KeyId, nonce: &Label) -> Result<XOnlyPublicKey, HsmError> {
        self.check()?;
        self.inner.commit_nonce(key, nonce)
    }
    fn sign_with_nonce(&self, key: &KeyId, nonce: &Label, message: &[u8; 32]) -> Result<schnorr::Signature, HsmError> {
        self.check()?;
        self.inner.sign_with_nonce(key, nonce, message)
    }
    fn record_decision(&self, key: Option<&KeyId>, subject: &[u8; 32], outcome: u16) -> Result<(), HsmError> {
        self.check()?;
        self.inner.record_decision(key, subject, outcome)
    }
    fn flush_audit(&self) -> Result<(), HsmError> {
        self.check()?;
        self.inner.flush_audit()
    }
    fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, HsmError> {
        self.check()?;
        self.inner.audit_records(after, limit)
    }
    fn verify_audit_chain(&self) -> Result<AuditSummary, HsmError> {
        self.check()?;
        self.inner.verify_audit_chain()
    }
}

#[test]
fn failover_to_the_secondary_within_50_ms() {
    let (a, b) = (software_fixture(), software_fixture());
    let primary = Arc::new(Pullable {
        inner: a.provider.clone(),
        down: AtomicBool::new(false),
    });
    let secondary = b.provider.clone();
    let id = Label::new("shared").expect("label");
    let secret = [0x42u8; 32];
    for p in [&primary.inner, &secondary] {
        p.import_key(
            &id,
            KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret)),
            KeyPolicy::default_for(KeySpec::Secp256k1),
        )
        .expect("same key on both");
    }
    let hsm = FailoverHsm::new(primary.clone(), Arc::new(secondary));
    let secp = Secp256k1::new();
    let pk = secp256k1::SecretKey::from_slice(&secret)
        .expect("valid")
        .public_key(&secp);
    hsm.sign_ecdsa(KeyRef::Key(&id), &[1; 32]).expect("primary signs");
    assert_eq!(hsm.active(), Active::Primary);

    primary.down.store(true, Ordering::Release);
    let started = Instant::now();
    let sig = hsm.sign_ecdsa(KeyRef::Key(&id), &[2; 32]).expect("secondary signs");
    let elapsed = started.elapsed();
    secp.verify_ecdsa(&Message::from_digest([2; 32]), &sig, &pk)
        .expect("the secondary's signature verifies");
    eprintln!("failover: primary failure to first good secondary signature in {elapsed:?}");
    assert_eq!(hsm.active(), Active::Secondary);
    assert_eq!(hsm.health_check().expect("probe"), Active::Secondary);

    // Request errors are not failures of the provider: no switch.
    let missing = hsm.sign_ecdsa(KeyRef::Key(&Label::new("missing").expect("label")), &[0; 32]);
    assert!(matches!(missing, Err(HsmError::KeyNotFound { .. })), "{missing:?}");
    assert_eq!(hsm.active(), Active::Secondary);

    primary.down.store(false, Ordering::Release);
    assert_eq!(hsm.health_check().expect("probe"), Active::Primary);
    hsm.sign_ecdsa(KeyRef::Key(&id), &[3; 32]).expect("primary signs again");
}

#[test]
fn both_unavailable_is_a_typed_error() {
    let (a, b) = (software_fixture(), software_fixture());
    let pull = |p: &SoftwareHsm| {
        Arc::new(Pullable {
            inner: p.clone(),
            down: AtomicBool::new(true),
        })
    };
    let hsm = FailoverHsm::new(pull(&a.provider), pull(&b.provider));
    let r = hsm.list_keys();
    assert!(matches!(r, Err(HsmError::AllProvidersUnavailable { .. })), "{r:?}");
}

/// A token primary and a software secondary holding the same imported secp256k1 key. The
/// primary fails for real: `C_Finalize` on its module ends every session this process has with
/// the token, as a crashed module or a pulled token leaves them. No other test of this binary
/// uses the token, so finalizing it here pulls it from under this test only.
#[test]
fn failover_from_a_token_to_software_within_50_ms() {
    let Ok(module) = std::env::var("ANYA_TEST_PKCS11_MODULE") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ANYA_TEST_PKCS11_MODULE is unset in CI: .ci/run must source .ci/softhsm.sh"
        );
        eprintln!("skipped: ANYA_TEST_PKCS11_MODULE unset");
        return;
    };
    let pin = std::env::var("ANYA_TEST_PKCS11_PIN").expect("ANYA_TEST_PKCS11_PIN goes with the module");
    let token_label = std::env::var("ANYA_TEST_PKCS11_TOKEN_LABEL").unwrap_or_else(|_| "anya-test".to_owned());
    let prefix = format!("failover-{}/", std::process::id());
    let dir = tempfile::tempdir().expect("temp dir");
    let store = anya_storage::SqliteStore::open(dir.path().join("token.db"), anya_storage::SqliteOptions::default())
        .expect("sqlite store");
    let options = Pkcs11Options::new(&module, &token_label, SecretString::new(pin.clone())).with_label_prefix(&prefix);
    let token = Pkcs11Hsm::open(Arc::new(store), options).expect("token opens and the pin logs in");
    let software = software_fixture();

    let id = Label::new("shared").expect("label");
    let secret = [0x24u8; 32];
    let material = || KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret));
    let policy = KeyPolicy::default_for(KeySpec::Secp256k1);
    assert!(!policy.exportable, "the token key stays on the token");
    token.import_key(&id, material(), policy).expect("import on the token");
    software
        .provider
        .import_key(&id, material(), policy)
        .expect("import in software");
    let hsm = FailoverHsm::new(Arc::new(token.clone()), Arc::new(software.provider.clone()));
    let secp = Secp256k1::new();
    let pk = secp256k1::SecretKey::from_slice(&secret)
        .expect("valid")
        .public_key(&secp);
    let sig = hsm.sign_ecdsa(KeyRef::Key(&id), &[1; 32]).expect("the token signs");
    secp.verify_ecdsa(&Message::from_digest([1; 32]), &sig, &pk)
        .expect("the token's signature verifies");
    assert_eq!(hsm.active(), Active::Primary);
    assert_eq!(hsm.health_check().expect("probe"), Active::Primary);

    // Pull the token: finalize the module the provider's session belongs to.
    let ctx = cryptoki::context::Pkcs11::new(&module).expect("module loads");
    ctx.finalize().expect("C_Finalize");
    let started = Instant::now();
    let sig = hsm.sign_ecdsa(KeyRef::Key(&id), &[2; 32]).expect("the secondary signs");
    let elapsed = started.elapsed();
    secp.verify_ecdsa(&Message::from_digest([2; 32]), &sig, &pk)
        .expect("the secondary's signature verifies");
    eprintln!("failover (pkcs11 token pulled): primary failure to first good secondary signature in {elapsed:?}");
    assert_eq!(hsm.active(), Active::Secondary);
    // The dead token is not taken for healthy, though its key records are still in the store.
    let probe = token.list_keys();
    assert!(matches!(&probe, Err(e) if e.indicates_unavailable()), "{probe:?}");
    assert_eq!(hsm.health_check().expect("probe"), Active::Secondary);
    hsm.sign_ecdsa(KeyRef::Key(&id), &[3; 32])
        .expect("the secondary keeps signing");

    // Clean up the token objects with a session of the module initialised anew.
    let ctx = cryptoki::context::Pkcs11::new(&module).expect("module loads");
    ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ))
    .expect("C_Initialize");
    let slot = ctx
        .get_slots_with_initialized_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == token_label)
        })
        .expect("the token is still there");
    let session = ctx.open_rw_session(slot).expect("session");
    session
        .login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::new(pin.into())),
        )
        .expect("login");
    let objects = session
        .find_objects(&[cryptoki::object::Attribute::Label(
            format!("{prefix}shared").into_bytes(),
        )])
        .expect("find");
    assert_eq!(objects.len(), 2, "the private and the public key object");
    for object in objects {
        session.destroy_object(object).expect("destroy");
    }
}
