//! The conformance suite every [`HsmProvider`] implementation runs unchanged.
//!
//! Each case is a function taking a fresh, unlocked provider with no keys. A case that needs a
//! capability the provider does not report checks that the operation fails with
//! [`HsmError::Unsupported`] naming it, and stops there: a provider may skip exactly what its
//! [`capabilities`](HsmProvider::capabilities) exclude. [`hsm_conformance_suite!`] turns the
//! whole list into `#[test]` functions:
//!
//! ```ignore
//! anya_hsm::hsm_conformance_suite!(Some(anya_hsm::conformance::software_fixture()));
//! ```
//!
//! The expression is evaluated once per test and must give an `Option` of something that
//! dereferences to an `HsmProvider`; `None` skips (for providers that need a server or token
//! outside CI).
//!
//! [`hsm_conformance_suite!`]: crate::hsm_conformance_suite

use std::ops::Deref;

use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::key::TapTweak;
use bitcoin::{NetworkKind, TapNodeHash};
use secp256k1::{Message, Secp256k1};

use crate::{
    AuditRecord, AuxRand, Capability, ExportScope, HsmError, HsmProvider, KeyMaterial, KeyPolicy, KeyRef, KeySpec,
    Label, MnemonicLength, Operation, PublicKey, ScopedPathDefect, SecretBytes, SecretString, Usage,
};

/// A provider whose backing files live in a temporary directory removed on drop.
pub struct TempHsm<P> {
    /// The provider (dropped before the directory).
    pub provider: P,
    /// The store holding its state.
    pub store: std::sync::Arc<dyn anya_storage::KvStore>,
    /// The directory holding its store.
    pub dir: tempfile::TempDir,
}

impl<P: std::fmt::Debug> std::fmt::Debug for TempHsm<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempHsm")
            .field("provider", &self.provider)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "software")]
impl StoreBacked for TempHsm<crate::SoftwareHsm> {
    fn provider(&self) -> &dyn HsmProvider {
        &self.provider
    }

    fn store(&self) -> &dyn anya_storage::KvStore {
        &*self.store
    }

    fn state_namespaces(&self) -> Vec<anya_storage::Namespace> {
        software_state_namespaces("anya.hsm")
    }
}

/// The namespaces of a software keystore's state under `prefix`, without its audit chain.
pub fn software_state_namespaces(prefix: &str) -> Vec<anya_storage::Namespace> {
    ["keys", "meta", "nonces"]
        .iter()
        .map(|n| anya_storage::Namespace::new(format!("{prefix}.{n}")).expect("valid namespace"))
        .collect()
}

impl<P> Deref for TempHsm<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.provider
    }
}

/// A fresh, unlocked [`SoftwareHsm`](crate::SoftwareHsm) on a SQLite store in a temporary
/// directory, with cheap Argon2id parameters and durable audit.
#[cfg(feature = "software")]
pub fn software_fixture() -> TempHsm<crate::SoftwareHsm> {
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("temp dir for the fixture");
    let store = anya_storage::SqliteStore::open(dir.path().join("hsm.db"), anya_storage::SqliteOptions::default())
        .expect("fresh sqlite store");
    let store: Arc<dyn anya_storage::KvStore> = Arc::new(store);
    let provider = software_on(Arc::clone(&store));
    TempHsm { provider, store, dir }
}

/// A fresh, unlocked [`SoftwareHsm`](crate::SoftwareHsm) in `store` (which it may share with
/// other state, as a wallet's does), with cheap Argon2id parameters, durable audit and the
/// passphrase [`FIXTURE_PASSPHRASE`].
#[cfg(feature = "software")]
pub fn software_on(store: std::sync::Arc<dyn anya_storage::KvStore>) -> crate::SoftwareHsm {
    let options = crate::SoftwareOptions::default().with_kdf(crate::KdfParams::insecure_for_tests());
    crate::SoftwareHsm::create(store, &SecretString::from(FIXTURE_PASSPHRASE), options).expect("fresh keystore")
}

/// The passphrase of the keystores [`software_on`] and [`software_fixture`] create.
pub const FIXTURE_PASSPHRASE: &str = "conformance";

/// Generates a BIP32 root `id` in `hsm` from a fresh 12-word mnemonic with an empty BIP39
/// passphrase and the default root policy: the wallet tests' signing root.
pub fn generate_test_root(hsm: &dyn HsmProvider, id: &Label) {
    hsm.generate_mnemonic(
        id,
        MnemonicLength::Words12,
        &SecretString::from(""),
        KeyPolicy::default_for(KeySpec::Bip32Root),
    )
    .expect("a fresh BIP32 root");
}

/// Generates one `#[test]` per conformance case for the provider built by `$make`.
#[macro_export]
macro_rules! hsm_conformance_suite {
    ($make:expr) => {
        $crate::hsm_conformance_suite!(@cases $make;
            keys_of_every_spec, duplicate_id_is_key_exists, list_and_delete,
            ecdsa_is_low_s_and_verifies, schnorr_verifies, taproot_key_spend_verifies,
            ed25519_verifies, aes_gcm_round_trip_and_aad_binding, policy_is_enforced,
            import_export_round_trip, bip32_sign_at_path_matches_xpub, nonce_signs_once,
            nonce_race_8_threads, audit_records_every_call, decisions_join_the_chain,
            p256_verifies, p256_policy_and_key_type, p256_import_export_round_trip,
            scoped_export_is_the_independently_derived_child, scoped_export_needs_the_usage,
            scoped_export_refuses_bad_paths_and_non_roots, scoped_export_is_audited,
            node_seed_is_bip85_of_the_independent_child, node_seed_needs_the_usage,
            node_seed_refuses_bad_index_and_non_roots, node_seed_is_audited);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(fixture) = $make {
                    $crate::conformance::$case(&*fixture);
                }
            }
        )*
    };
}

/// Generates one `#[test]` per rollback case for the store-backed provider built by `$make`
/// (an `Option` of something implementing [`StoreBacked`]; `None` skips).
#[macro_export]
macro_rules! hsm_rollback_suite {
    ($make:expr) => {
        $crate::hsm_rollback_suite!(@cases $make;
            nonce_record_put_back_signs_no_other_message, key_entry_put_back_does_not_export,
            deleted_key_put_back_stays_deleted);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(fixture) = $make {
                    $crate::conformance::$case(&fixture);
                }
            }
        )*
    };
}

/// A provider and the store its state lives in: the rollback cases put records of that
/// store back as an attacker who can write it (but does not know its secrets) would.
pub trait StoreBacked {
    /// The provider.
    fn provider(&self) -> &dyn HsmProvider;
    /// The store holding its state (for a failover pair, the active provider's).
    fn store(&self) -> &dyn anya_storage::KvStore;
    /// The namespaces of its state, without its audit chain.
    fn state_namespaces(&self) -> Vec<anya_storage::Namespace>;
}

/// Every record of some namespaces of a store, as a backup would hold them.
pub type Snapshot = Vec<(anya_storage::Namespace, std::collections::BTreeMap<Vec<u8>, Vec<u8>>)>;

/// The records of `namespaces` in `store`.
pub fn snapshot(store: &dyn anya_storage::KvStore, namespaces: &[anya_storage::Namespace]) -> Snapshot {
    namespaces
        .iter()
        .map(|ns| {
            let records = store
                .scan(ns, anya_storage::Scan::all())
                .expect("scan")
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect();
            (ns.clone(), records)
        })
        .collect()
}

/// Puts the namespaces of `snapshot` back as it holds them, as restoring a backup would: each
/// record that changed since, or disappeared, is written back; records made since are removed.
pub fn put_back(store: &dyn anya_storage::KvStore, snapshot: &Snapshot) {
    for (ns, records) in snapshot {
        for e in store.scan(ns, anya_storage::Scan::all()).expect("scan") {
            if !records.contains_key(&e.key) {
                store.delete(ns, &e.key).expect("delete");
            }
        }
        for (k, v) in records {
            store.put(ns, k, v).expect("put back");
        }
    }
}

fn state_snapshot(f: &dyn StoreBacked) -> Snapshot {
    snapshot(f.store(), &f.state_namespaces())
}

/// A nonce whose committed record is put back after it signed signs no other message, and
/// still signs its own.
pub fn nonce_record_put_back_signs_no_other_message(f: &dyn StoreBacked) {
    let p = f.provider();
    let Some(id) = secp_key(p, "oracle-rb") else { return };
    let n = label("event-rb");
    if needs(p, Capability::OracleNonces, || p.commit_nonce(&id, &n)).is_none() {
        return;
    }
    p.commit_nonce(&id, &n).expect("commit");
    let before = state_snapshot(f);
    let first = p.sign_with_nonce(&id, &n, &[1; 32]).expect("first message");
    put_back(f.store(), &before);
    let second = p.sign_with_nonce(&id, &n, &[2; 32]);
    assert!(matches!(second, Err(HsmError::NonceAlreadyUsed { .. })), "{second:?}");
    assert_eq!(p.sign_with_nonce(&id, &n, &[1; 32]).expect("its own message"), first);
}

/// A key's entry put back from when it was exportable, after it was deleted and imported
/// again non-exportable, does not export.
pub fn key_entry_put_back_does_not_export(f: &dyn StoreBacked) {
    let p = f.provider();
    let id = label("imported-rb");
    let secret = [0x21u8; 32];
    let material = || KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret));
    let exportable = KeyPolicy {
        exportable: true,
        ..KeyPolicy::default_for(KeySpec::Secp256k1)
    };
    if needs(p, Capability::Import, || p.import_key(&id, material(), exportable)).is_none() {
        return;
    }
    p.import_key(&id, material(), exportable).expect("import exportable");
    let before = state_snapshot(f);
    p.delete_key(&id).expect("delete");
    p.import_key(&id, material(), KeyPolicy::default_for(KeySpec::Secp256k1))
        .expect("import again, non-exportable");
    put_back(f.store(), &before);
    let export = p.export_key(&id);
    assert!(export.is_err(), "the old entry exported the secret");
}

/// A deleted key whose entry is put back stays deleted: it signs nothing.
pub fn deleted_key_put_back_stays_deleted(f: &dyn StoreBacked) {
    let p = f.provider();
    let Some(id) = secp_key(p, "deleted-rb") else { return };
    let before = state_snapshot(f);
    p.delete_key(&id).expect("delete");
    put_back(f.store(), &before);
    let sign = p.sign_ecdsa(KeyRef::Key(&id), &[1; 32]);
    assert!(sign.is_err(), "a deleted key signed again: {sign:?}");
}

fn label(s: &str) -> Label {
    Label::new(s).expect("conformance labels are valid")
}

/// `Some(())` if the provider has `capability`; otherwise checks that `op` is refused with the
/// predicted error and returns `None`.
fn needs<T: std::fmt::Debug>(
    p: &dyn HsmProvider,
    capability: Capability,
    op: impl FnOnce() -> Result<T, HsmError>,
) -> Option<()> {
    if p.capabilities().contains(capability) {
        return Some(());
    }
    match op() {
        Err(HsmError::Unsupported { capability: c }) if c == capability => None,
        other => panic!("{capability:?} is not in capabilities() but the operation gave {other:?}"),
    }
}

fn secp_key(p: &dyn HsmProvider, name: &str) -> Option<Label> {
    let id = label(name);
    needs(p, Capability::GenerateSecp256k1, || {
        p.generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
    })?;
    p.generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
        .expect("generate secp256k1");
    Some(id)
}

fn secp_public(p: &dyn HsmProvider, key: KeyRef<'_>) -> secp256k1::PublicKey {
    match p.public_key(key).expect("public key") {
        PublicKey::Secp256k1(pk) => pk,
        other => panic!("expected a secp256k1 key, got {other:?}"),
    }
}

/// Keys of each spec can be generated; their public keys have the right kind.
pub fn keys_of_every_spec(p: &dyn HsmProvider) {
    if let Some(id) = secp_key(p, "k-secp") {
        assert!(matches!(p.public_key(KeyRef::Key(&id)), Ok(PublicKey::Secp256k1(_))));
        assert_eq!(p.key_info(&id).expect("info").spec, KeySpec::Secp256k1);
    }
    let ed = label("k-ed");
    let policy = KeyPolicy::default_for(KeySpec::Ed25519);
    if needs(p, Capability::GenerateEd25519, || {
        p.generate_key(&ed, KeySpec::Ed25519, policy)
    })
    .is_some()
    {
        p.generate_key(&ed, KeySpec::Ed25519, policy).expect("generate ed25519");
        assert!(matches!(p.public_key(KeyRef::Key(&ed)), Ok(PublicKey::Ed25519(_))));
    }
    let aes = label("k-aes");
    let policy = KeyPolicy::default_for(KeySpec::Aes256);
    if needs(p, Capability::GenerateAes256, || {
        p.generate_key(&aes, KeySpec::Aes256, policy)
    })
    .is_some()
    {
        p.generate_key(&aes, KeySpec::Aes256, policy).expect("generate aes");
        assert!(matches!(
            p.public_key(KeyRef::Key(&aes)),
            Err(HsmError::WrongKeyType { .. })
        ));
    }
}

/// A second key under an id in use is refused and leaves the first key intact.
pub fn duplicate_id_is_key_exists(p: &dyn HsmProvider) {
    let Some(id) = secp_key(p, "dup") else { return };
    let before = secp_public(p, KeyRef::Key(&id));
    let again = p.generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1));
    assert!(matches!(again, Err(HsmError::KeyExists { .. })), "{again:?}");
    assert_eq!(secp_public(p, KeyRef::Key(&id)), before);
}

/// `list_keys` is in id order; a deleted key is gone and deleting it again is `KeyNotFound`.
pub fn list_and_delete(p: &dyn HsmProvider) {
    let (Some(b), Some(a)) = (secp_key(p, "b-key"), secp_key(p, "a-key")) else {
        return;
    };
    let ids: Vec<_> = p.list_keys().expect("list").into_iter().map(|k| k.id).collect();
    assert_eq!(ids, vec![a.clone(), b.clone()]);
    p.delete_key(&a).expect("delete");
    assert!(matches!(
        p.public_key(KeyRef::Key(&a)),
        Err(HsmError::KeyNotFound { .. })
    ));
    assert!(matches!(p.delete_key(&a), Err(HsmError::KeyNotFound { .. })));
    assert_eq!(p.list_keys().expect("list").len(), 1);
}

/// ECDSA signatures verify with bare secp256k1, are low-S and round-trip DER and compact.
pub fn ecdsa_is_low_s_and_verifies(p: &dyn HsmProvider) {
    let Some(id) = secp_key(p, "ecdsa") else { return };
    if needs(p, Capability::SignEcdsa, || p.sign_ecdsa(KeyRef::Key(&id), &[1; 32])).is_none() {
        return;
    }
    let secp = Secp256k1::verification_only();
    let pk = secp_public(p, KeyRef::Key(&id));
    for i in 0..32u8 {
        let digest = sha256::Hash::hash(&[i]).to_byte_array();
        let sig = p.sign_ecdsa(KeyRef::Key(&id), &digest).expect("sign");
        let mut normalized = sig;
        normalized.normalize_s();
        assert_eq!(normalized, sig, "signature is not low-S");
        secp.verify_ecdsa(&Message::from_digest(digest), &sig, &pk)
            .expect("verifies");
        let der = sig.serialize_der();
        assert_eq!(secp256k1::ecdsa::Signature::from_der(&der).expect("der"), sig);
        let compact = sig.serialize_compact();
        assert_eq!(
            secp256k1::ecdsa::Signature::from_compact(&compact).expect("compact"),
            sig
        );
        if p.capabilities().contains(Capability::DeterministicEcdsa) {
            // RFC 6979: the same digest gives the same signature.
            assert_eq!(p.sign_ecdsa(KeyRef::Key(&id), &digest).expect("sign"), sig);
        }
    }
}

/// BIP340 signatures verify with bare secp256k1 against the x-only key.
pub fn schnorr_verifies(p: &dyn HsmProvider) {
    let Some(id) = secp_key(p, "schnorr") else { return };
    if needs(p, Capability::SignSchnorr, || {
        p.sign_schnorr(KeyRef::Key(&id), &[1; 32], AuxRand::Fresh)
    })
    .is_none()
    {
        return;
    }
    let secp = Secp256k1::verification_only();
    let (xonly, _) = secp_public(p, KeyRef::Key(&id)).x_only_public_key();
    for aux in [AuxRand::Fresh, AuxRand::Given([9; 32])] {
        let sig = p.sign_schnorr(KeyRef::Key(&id), &[5; 32], aux).expect("sign");
        secp.verify_schnorr(&sig, &Message::from_digest([5; 32]), &xonly)
            .expect("verifies");
    }
}

/// BIP341 key-path signatures verify against the output key tweaked outside the provider,
/// with and without a merkle root.
pub fn taproot_key_spend_verifies(p: &dyn HsmProvider) {
    let Some(id) = secp_key(p, "taproot") else { return };
    if needs(p, Capability::SignTaprootKeySpend, || {
        p.sign_taproot_key_spend(KeyRef::Key(&id), &[1; 32], None, AuxRand::Fresh)
    })
    .is_none()
    {
        return;
    }
    let secp = Secp256k1::new();
    let (internal, _) = secp_public(p, KeyRef::Key(&id)).x_only_public_key();
    let root = TapNodeHash::from_byte_array([0x42; 32]);
    for merkle_root in [None, Some(root)] {
        let (output, _) = internal.tap_tweak(&secp, merkle_root);
        let sig = p
            .sign_taproot_key_spend(KeyRef::Key(&id), &[6; 32], merkle_root, AuxRand::Fresh)
            .expect("sign");
        secp.verify_schnorr(&sig, &Message::from_digest([6; 32]), &output.to_x_only_public_key())
            .expect("verifies");
        assert!(secp
            .verify_schnorr(&sig, &Message::from_digest([6; 32]), &internal)
            .is_err());
    }
}

/// Ed25519 signatures verify with ring.
pub fn ed25519_verifies(p: &dyn HsmProvider) {
    let id = label("ed");
    let policy = KeyPolicy::default_for(KeySpec::Ed25519);
    if needs(p, Capability::GenerateEd25519, || {
        p.generate_key(&id, KeySpec::Ed25519, policy)
    })
    .is_none()
    {
        return;
    }
    p.generate_key(&id, KeySpec::Ed25519, policy).expect("generate");
    if needs(p, Capability::SignEd25519, || p.sign_ed25519(&id, b"x")).is_none() {
        return;
    }
    let Ok(PublicKey::Ed25519(pk)) = p.public_key(KeyRef::Key(&id)) else {
        panic!("ed25519 public key")
    };
    for msg in [&b""[..], b"hello", &[7u8; 1000]] {
        let sig = p.sign_ed25519(&id, msg).expect("sign");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
            .verify(msg, &sig.0)
            .expect("verifies");
    }
}

/// AES-256-GCM round-trips; another AAD, another key or a flipped bit is `DecryptionFailed`.
pub fn aes_gcm_round_trip_and_aad_binding(p: &dyn HsmProvider) {
    let (a, b) = (label("aes-a"), label("aes-b"));
    let policy = KeyPolicy::default_for(KeySpec::Aes256);
    if needs(p, Capability::GenerateAes256, || {
        p.generate_key(&a, KeySpec::Aes256, policy)
    })
    .is_none()
    {
        return;
    }
    p.generate_key(&a, KeySpec::Aes256, policy).expect("generate");
    p.generate_key(&b, KeySpec::Aes256, policy).expect("generate");
    if needs(p, Capability::Aes256Gcm, || p.encrypt(&a, b"x", b"")).is_none() {
        return;
    }
    let ct = p.encrypt(&a, b"attack at dawn", b"header").expect("encrypt");
    assert_ne!(
        p.encrypt(&a, b"attack at dawn", b"header").expect("encrypt"),
        ct,
        "nonces must be fresh"
    );
    assert_eq!(
        p.decrypt(&a, &ct, b"header").expect("decrypt").expose(),
        b"attack at dawn"
    );
    let other_aad = p.decrypt(&a, &ct, b"other");
    assert!(matches!(other_aad, Err(HsmError::DecryptionFailed)), "{other_aad:?}");
    assert!(matches!(p.decrypt(&b, &ct, b"header"), Err(HsmError::DecryptionFailed)));
    let mut flipped = ct.clone();
    flipped[15] ^= 1;
    assert!(matches!(
        p.decrypt(&a, &flipped, b"header"),
        Err(HsmError::DecryptionFailed)
    ));
    assert!(matches!(
        p.decrypt(&a, &ct[..10], b"header"),
        Err(HsmError::DecryptionFailed)
    ));
}

/// Uses outside the policy are `UsageNotAllowed`, outside the spec `WrongKeyType`; a key that
/// is not exportable is `NotExportable`.
pub fn policy_is_enforced(p: &dyn HsmProvider) {
    let id = label("ecdsa-only");
    let policy = KeyPolicy::only(&[Usage::SignEcdsa]);
    if needs(p, Capability::GenerateSecp256k1, || {
        p.generate_key(&id, KeySpec::Secp256k1, policy)
    })
    .is_none()
    {
        return;
    }
    p.generate_key(&id, KeySpec::Secp256k1, policy).expect("generate");
    if p.capabilities().contains(Capability::SignSchnorr) {
        let r = p.sign_schnorr(KeyRef::Key(&id), &[1; 32], AuxRand::Fresh);
        assert!(
            matches!(
                r,
                Err(HsmError::UsageNotAllowed {
                    usage: Usage::SignSchnorr,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    if p.capabilities().contains(Capability::SignEd25519) {
        let r = p.sign_ed25519(&id, b"x");
        assert!(matches!(r, Err(HsmError::WrongKeyType { .. })), "{r:?}");
    }
    if p.capabilities().contains(Capability::Export) {
        assert!(matches!(p.export_key(&id), Err(HsmError::NotExportable { .. })));
    }
    if p.capabilities().contains(Capability::SignEcdsa) {
        p.sign_ecdsa(KeyRef::Key(&id), &[1; 32]).expect("allowed use");
    }
}

/// An imported exportable key exports the same bytes and signs as the imported key.
pub fn import_export_round_trip(p: &dyn HsmProvider) {
    let id = label("imported");
    let secret = [0x11u8; 32];
    let material = || KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret));
    let policy = KeyPolicy::default_for(KeySpec::Secp256k1).exportable();
    if needs(p, Capability::Import, || p.import_key(&id, material(), policy)).is_none() {
        return;
    }
    p.import_key(&id, material(), policy).expect("import");
    let secp = Secp256k1::new();
    let sk = secp256k1::SecretKey::from_slice(&secret).expect("valid secret");
    assert_eq!(secp_public(p, KeyRef::Key(&id)), sk.public_key(&secp));
    if needs(p, Capability::Export, || p.export_key(&id)).is_some() {
        assert_eq!(p.export_key(&id).expect("export").expose(), &secret);
    }
    let bad = p.import_key(
        &label("bad"),
        KeyMaterial::Secp256k1(SecretBytes::from_slice(&[0; 32])),
        policy,
    );
    assert!(matches!(bad, Err(HsmError::InvalidKeyMaterial { .. })), "{bad:?}");
}

/// A key signed at a BIP86 path inside the provider is the one derived publicly from the
/// exported account xpub.
pub fn bip32_sign_at_path_matches_xpub(p: &dyn HsmProvider) {
    let root = label("hd");
    let policy = KeyPolicy::default_for(KeySpec::Bip32Root);
    let pass = SecretString::from("");
    if needs(p, Capability::Bip32, || {
        p.generate_mnemonic(&root, MnemonicLength::Words12, &pass, policy)
    })
    .is_none()
    {
        return;
    }
    let (_, mnemonic) = p
        .generate_mnemonic(&root, MnemonicLength::Words24, &pass, policy)
        .expect("generate");
    assert_eq!(mnemonic.expose().split(' ').count(), 24);
    let secp = Secp256k1::new();
    let account: DerivationPath = "m/86'/1'/0'".parse().expect("path");
    let xpub = p.account_xpub(&root, &account, NetworkKind::Test).expect("xpub");
    assert_eq!(xpub.origin.1, account);
    assert!(xpub.xpub.to_string().starts_with("tpub"));
    for i in 0..4u32 {
        let tail: DerivationPath = format!("m/0/{i}").parse().expect("path");
        let full: DerivationPath = format!("m/86'/1'/0'/0/{i}").parse().expect("path");
        let child: Xpub = xpub.xpub.derive_pub(&secp, &tail).expect("public derivation");
        assert_eq!(secp_public(p, KeyRef::derived(&root, &full)), child.public_key);
        let (output, _) = child.to_x_only_pub().tap_tweak(&secp, None);
        let sig = p
            .sign_taproot_key_spend(KeyRef::derived(&root, &full), &[i as u8; 32], None, AuxRand::Fresh)
            .expect("sign");
        secp.verify_schnorr(
            &sig,
            &Message::from_digest([i as u8; 32]),
            &output.to_x_only_public_key(),
        )
        .expect("verifies");
        let ecdsa = p
            .sign_ecdsa(KeyRef::derived(&root, &full), &[i as u8; 32])
            .expect("sign");
        secp.verify_ecdsa(&Message::from_digest([i as u8; 32]), &ecdsa, &child.public_key)
            .expect("verifies");
    }
    // A plain secp256k1 key has no children.
    if let Some(plain) = secp_key(p, "plain") {
        let r = p.sign_ecdsa(KeyRef::derived(&plain, &account), &[0; 32]);
        assert!(matches!(r, Err(HsmError::WrongKeyType { .. })), "{r:?}");
    }
}

/// A committed nonce signs one message, with the announced R; the same message again gets the
/// same signature, another message is `NonceAlreadyUsed`.
pub fn nonce_signs_once(p: &dyn HsmProvider) {
    let Some(id) = secp_key(p, "oracle") else { return };
    let n = label("event-1");
    if needs(p, Capability::OracleNonces, || p.commit_nonce(&id, &n)).is_none() {
        return;
    }
    let r = p.commit_nonce(&id, &n).expect("commit");
    assert!(matches!(p.commit_nonce(&id, &n), Err(HsmError::NonceExists { .. })));
    let secp = Secp256k1::verification_only();
    let (xonly, _) = secp_public(p, KeyRef::Key(&id)).x_only_public_key();
    let sig = p.sign_with_nonce(&id, &n, &[8; 32]).expect("first use");
    assert_eq!(
        &sig.as_ref()[..32],
        &r.serialize(),
        "signature R is the announced nonce"
    );
    secp.verify_schnorr(&sig, &Message::from_digest([8; 32]), &xonly)
        .expect("verifies");
    // The same message again is the same signature (a retry after a lost reply); any other
    // message is refused.
    let again = p.sign_with_nonce(&id, &n, &[8; 32]).expect("same message again");
    assert_eq!(again, sig, "a retry returns the same signature");
    let other = p.sign_with_nonce(&id, &n, &[9; 32]);
    assert!(matches!(other, Err(HsmError::NonceAlreadyUsed { .. })), "{other:?}");
    assert!(matches!(p.commit_nonce(&id, &n), Err(HsmError::NonceExists { .. })));
    let missing = p.sign_with_nonce(&id, &label("never"), &[8; 32]);
    assert!(matches!(missing, Err(HsmError::NonceNotFound { .. })), "{missing:?}");
}

/// Eight threads racing to use one nonce with different messages: exactly one signs.
pub fn nonce_race_8_threads(p: &dyn HsmProvider) {
    let Some(id) = secp_key(p, "racer") else { return };
    let n = label("race");
    if needs(p, Capability::OracleNonces, || p.commit_nonce(&id, &n)).is_none() {
        return;
    }
    for round in 0..4 {
        let n = label(&format!("race-{round}"));
        p.commit_nonce(&id, &n).expect("commit");
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|t| {
                    let (id, n) = (&id, &n);
                    s.spawn(move || p.sign_with_nonce(id, n, &[t; 32]))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let used = results
            .iter()
            .filter(|r| matches!(r, Err(HsmError::NonceAlreadyUsed { .. })))
            .count();
        assert_eq!((ok, used), (1, 7), "{results:?}");
    }
}

/// Every call, failed ones included, appends a record with the input's hash and no message.
pub fn audit_records_every_call(p: &dyn HsmProvider) {
    if needs(p, Capability::AuditLog, || p.verify_audit_chain()).is_none() {
        return;
    }
    let before = p.verify_audit_chain().expect("chain verifies").records;
    let Some(id) = secp_key(p, "audited") else { return };
    let msg = [0xabu8; 32];
    let _ = p.sign_ecdsa(KeyRef::Key(&id), &msg);
    let _ = p.sign_ecdsa(KeyRef::Key(&label("missing")), &msg);
    let summary = p.verify_audit_chain().expect("chain verifies");
    assert_eq!(summary.records, before + 3);
    let records = p.audit_records(before, 10).expect("records");
    assert_eq!(records.len(), 3);
    let sign = &records[1];
    assert_eq!(sign.key_id.as_ref(), Some(&id));
    assert_eq!(sign.outcome, 0);
    assert_eq!(sign.input_hash, Some(sha256::Hash::hash(&msg).to_byte_array()));
    let failed = &records[2];
    assert_eq!(failed.outcome, HsmError::KeyNotFound { id: id.clone() }.audit_code());
    assert_eq!(failed.prev_hash, sign.hash());
}

/// A decision recorded by a caller lands in the chain with its subject and outcome.
pub fn decisions_join_the_chain(p: &dyn HsmProvider) {
    let subject = [0x5au8; 32];
    let key = label("policy-subject");
    if needs(p, Capability::AuditLog, || p.record_decision(Some(&key), &subject, 0)).is_none() {
        return;
    }
    p.record_decision(Some(&key), &subject, 0).expect("approval recorded");
    p.record_decision(None, &subject, 0b101).expect("refusal recorded");
    let summary = p.verify_audit_chain().expect("chain verifies");
    let records = p.audit_records(summary.records - 2, 10).expect("records");
    assert_eq!(records.len(), 2);
    let (approved, refused) = (&records[0], &records[1]);
    assert_eq!(approved.operation, Operation::Decision);
    assert_eq!(approved.key_id.as_ref(), Some(&key));
    assert_eq!((approved.outcome, approved.input_hash), (0, Some(subject)));
    assert_eq!((refused.key_id.as_ref(), refused.outcome), (None, 0b101));
    assert_eq!(refused.prev_hash, approved.hash());
}

fn p256_key(p: &dyn HsmProvider, name: &str, policy: KeyPolicy) -> Option<Label> {
    let id = label(name);
    needs(p, Capability::GenerateP256, || {
        p.generate_key(&id, KeySpec::P256, policy)
    })?;
    p.generate_key(&id, KeySpec::P256, policy).expect("generate p-256");
    Some(id)
}

fn p256_public(p: &dyn HsmProvider, id: &Label) -> [u8; 65] {
    match p.public_key(KeyRef::Key(id)).expect("public key") {
        PublicKey::P256(pk) => pk,
        other => panic!("expected a p-256 key, got {other:?}"),
    }
}

/// P-256 signatures of SHA-256(message) verify with bare ring in the fixed and the DER form,
/// not against another message; the call is in the audit chain under `SignP256`.
pub fn p256_verifies(p: &dyn HsmProvider) {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED};
    let Some(id) = p256_key(p, "p256", KeyPolicy::default_for(KeySpec::P256)) else {
        return;
    };
    assert_eq!(p.key_info(&id).expect("info").spec, KeySpec::P256);
    if needs(p, Capability::SignP256, || p.sign_p256(&id, b"x")).is_none() {
        return;
    }
    let pk = p256_public(p, &id);
    assert_eq!(pk[0], 0x04, "uncompressed SEC1 point");
    for msg in [&b""[..], b"hello", &[7u8; 1000]] {
        let sig = p.sign_p256(&id, msg).expect("sign");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pk)
            .verify(msg, &sig.0)
            .expect("verifies");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pk)
            .verify(msg, &sig.to_der())
            .expect("der form verifies");
        assert!(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pk)
            .verify(b"another message", &sig.0)
            .is_err());
    }
    if p.capabilities().contains(Capability::AuditLog) {
        let summary = p.verify_audit_chain().expect("chain verifies");
        let last = p.audit_records(summary.records - 1, 1).expect("records");
        assert_eq!(last[0].operation, Operation::SignP256);
        assert_eq!(last[0].key_id.as_ref(), Some(&id));
        assert_eq!(
            last[0].input_hash,
            Some(sha256::Hash::hash(&[7u8; 1000]).to_byte_array())
        );
    }
}

/// A P-256 key signs nothing its policy forbids (`UsageNotAllowed`) and serves no secp256k1
/// or Ed25519 scheme (`WrongKeyType`); a secp256k1 key does not sign P-256.
pub fn p256_policy_and_key_type(p: &dyn HsmProvider) {
    let Some(id) = p256_key(p, "p256-locked", KeyPolicy::only(&[])) else {
        return;
    };
    if needs(p, Capability::SignP256, || p.sign_p256(&id, b"x")).is_none() {
        return;
    }
    let r = p.sign_p256(&id, b"x");
    assert!(
        matches!(
            r,
            Err(HsmError::UsageNotAllowed {
                usage: Usage::SignP256,
                ..
            })
        ),
        "{r:?}"
    );
    if p.capabilities().contains(Capability::Export) {
        assert!(matches!(p.export_key(&id), Err(HsmError::NotExportable { .. })));
    }
    if p.capabilities().contains(Capability::SignEcdsa) {
        let r = p.sign_ecdsa(KeyRef::Key(&id), &[1; 32]);
        assert!(matches!(r, Err(HsmError::WrongKeyType { .. })), "{r:?}");
    }
    if p.capabilities().contains(Capability::SignEd25519) {
        let r = p.sign_ed25519(&id, b"x");
        assert!(matches!(r, Err(HsmError::WrongKeyType { .. })), "{r:?}");
    }
    if let Some(secp) = secp_key(p, "secp-not-p256") {
        let r = p.sign_p256(&secp, b"x");
        assert!(
            matches!(
                r,
                Err(HsmError::WrongKeyType {
                    usage: Usage::SignP256,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

/// A P-256 PKCS#8 document made by ring imports, signs as that key and exports as the same
/// document; a document of another curve or no document at all is `InvalidKeyMaterial`.
pub fn p256_import_export_round_trip(p: &dyn HsmProvider) {
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
        ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    if !p.capabilities().contains(Capability::SignP256) {
        return;
    }
    let rng = ring::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ring generates");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).expect("ring loads");
    let id = label("p256-imported");
    let material = || KeyMaterial::P256Pkcs8(SecretBytes::from_slice(doc.as_ref()));
    let policy = KeyPolicy::default_for(KeySpec::P256).exportable();
    if needs(p, Capability::Import, || p.import_key(&id, material(), policy)).is_none() {
        return;
    }
    p.import_key(&id, material(), policy).expect("import");
    let pk = p256_public(p, &id);
    assert_eq!(&pk[..], pair.public_key().as_ref());
    let sig = p.sign_p256(&id, b"imported").expect("sign");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pk)
        .verify(b"imported", &sig.0)
        .expect("verifies");
    if needs(p, Capability::Export, || p.export_key(&id)).is_some() {
        assert_eq!(p.export_key(&id).expect("export").expose(), doc.as_ref());
    }
    let p384 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).expect("ring generates");
    for bad in [p384.as_ref(), &[0x11u8; 32][..], &doc.as_ref()[..100]] {
        let r = p.import_key(
            &label("p256-bad"),
            KeyMaterial::P256Pkcs8(SecretBytes::from_slice(bad)),
            policy,
        );
        assert!(
            matches!(r, Err(HsmError::InvalidKeyMaterial { spec: KeySpec::P256 })),
            "{r:?}"
        );
    }
}

/// The seed of the scoped-export cases' roots. Any 16 to 64 bytes would do: the cases compare
/// the provider with rust-bitcoin's own derivation, not with a published vector.
const SCOPED_SEED: [u8; 32] = [0x5c; 32];

fn hardened(indices: &[u32]) -> Vec<ChildNumber> {
    indices.iter().map(|&index| ChildNumber::Hardened { index }).collect()
}

/// A root policy that opts in to DLC child export.
fn dlc_export_policy() -> KeyPolicy {
    KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::ExportDlcChild)
}

/// A root imported from [`SCOPED_SEED`] with `policy`, if the provider exports scoped children
/// and imports roots; otherwise checks that it refuses them and gives `None`.
fn scoped_root(p: &dyn HsmProvider, name: &str, policy: KeyPolicy) -> Option<Label> {
    let id = label(name);
    let path = hardened(&[0]);
    needs(p, Capability::Bip32, || {
        p.export_scoped_child(&id, ExportScope::Dlc, &path)
    })?;
    needs(p, Capability::Export, || {
        p.export_scoped_child(&id, ExportScope::Dlc, &path)
    })?;
    let seed = || KeyMaterial::Bip32Seed(SecretBytes::from_slice(&SCOPED_SEED));
    needs(p, Capability::Import, || p.import_key(&id, seed(), policy))?;
    p.import_key(&id, seed(), policy).expect("import the root");
    Some(id)
}

/// The input hash the documented encoding gives: SHA-256 of the DLC branch index
/// (`"DLC"` = `0x444C43`, hardened) and of each step of `path`, 4 big-endian bytes each.
fn dlc_input_hash(path: &[ChildNumber]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(&(0x8000_0000u32 | 0x0044_4C43).to_be_bytes());
    for step in path {
        engine.input(&u32::from(*step).to_be_bytes());
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// The audit records appended by `op`, which must be exactly one.
fn one_record<T>(p: &dyn HsmProvider, op: impl FnOnce() -> T) -> (T, AuditRecord) {
    let before = p.verify_audit_chain().expect("chain verifies").records;
    let value = op();
    assert_eq!(p.verify_audit_chain().expect("chain verifies").records, before + 1);
    let mut records = p.audit_records(before, 10).expect("records");
    assert_eq!(records.len(), 1);
    (value, records.remove(0))
}

/// `refuse` (a use of `root` needing `usage`, which its policy lacks) is `UsageNotAllowed`
/// for that usage and nothing else: one `operation` audit record with a refusal outcome, the
/// key as it was.
fn refused_for_usage(
    p: &dyn HsmProvider,
    root: &Label,
    usage: Usage,
    operation: Operation,
    refuse: impl FnOnce() -> Result<(), HsmError>,
) {
    let info = p.key_info(root).expect("info");
    let r = if p.capabilities().contains(Capability::AuditLog) {
        let (r, record) = one_record(p, refuse);
        assert_eq!(record.operation, operation);
        assert_ne!(record.outcome, 0);
        r
    } else {
        refuse()
    };
    assert!(
        matches!(r, Err(HsmError::UsageNotAllowed { usage: u, .. }) if u == usage),
        "{root}: {r:?}"
    );
    assert_eq!(p.key_info(root).expect("info"), info);
}

/// A child exported from a root that allows [`Usage::ExportDlcChild`] is the child rust-bitcoin
/// derives at `root / 0x444C43' / path` (not at `root / path`), and its public key is
/// `public_key` of the same derived reference; the root itself still does not export.
pub fn scoped_export_is_the_independently_derived_child(p: &dyn HsmProvider) {
    let Some(root) = scoped_root(p, "dlc-root", dlc_export_policy()) else {
        return;
    };
    let info = p.key_info(&root).expect("info");
    assert!(info.policy.allowed.contains(Usage::ExportDlcChild));
    assert!(!info.policy.exportable);
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(NetworkKind::Main, &SCOPED_SEED).expect("valid seed");
    let paths = [
        hardened(&[0]),
        hardened(&[1]),
        hardened(&[7, 42]),
        hardened(&[0x7fff_ffff]),
        hardened(&[1, 2, 3, 4, 5, 6, 7, 8]),
    ];
    let mut secrets = Vec::new();
    for path in &paths {
        let full = ExportScope::Dlc.child_path(path).expect("valid path");
        assert_eq!(full[0], ChildNumber::Hardened { index: 0x0044_4C43 });
        assert_eq!(&full[1..], &path[..]);
        let expected = master.derive_priv(&secp, &full).expect("derive").private_key;
        let exported = p.export_scoped_child(&root, ExportScope::Dlc, path).expect("export");
        assert_eq!(exported.expose(), &expected.secret_bytes()[..], "{full}");
        let again = p
            .export_scoped_child(&root, ExportScope::Dlc, path)
            .expect("export again");
        assert_eq!(again.expose(), exported.expose());
        let derived = KeyRef::Derived {
            root: &root,
            path: full.as_ref(),
        };
        assert_eq!(secp_public(p, derived), expected.public_key(&secp));
        let without_branch = master.derive_priv(&secp, path).expect("derive").private_key;
        assert_ne!(exported.expose(), &without_branch.secret_bytes()[..]);
        secrets.push(expected.secret_bytes());
    }
    secrets.sort_unstable();
    secrets.dedup();
    assert_eq!(secrets.len(), paths.len(), "each path is its own key");
    let whole = p.export_key(&root);
    assert!(matches!(whole, Err(HsmError::NotExportable { .. })), "{whole:?}");
}

/// A root whose policy does not allow [`Usage::ExportDlcChild`] (the default, or exportable
/// without it) refuses with `UsageNotAllowed` and nothing else: one audit record, the key as
/// it was.
pub fn scoped_export_needs_the_usage(p: &dyn HsmProvider) {
    let default = KeyPolicy::default_for(KeySpec::Bip32Root);
    assert!(!default.allowed.contains(Usage::ExportDlcChild), "export is opt-in");
    assert!(KeySpec::Bip32Root.possible_usages().contains(Usage::ExportDlcChild));
    for (name, policy) in [("dlc-default", default), ("dlc-exportable", default.exportable())] {
        let Some(root) = scoped_root(p, name, policy) else {
            return;
        };
        refused_for_usage(p, &root, Usage::ExportDlcChild, Operation::ExportScopedChild, || {
            p.export_scoped_child(&root, ExportScope::Dlc, &hardened(&[0]))
                .map(drop)
        });
    }
}

/// An empty path, a path of more than 8 steps or one with an unhardened step is
/// `InvalidScopedPath`; a key that is not a BIP32 root is `WrongKeyType`; a missing root is
/// `KeyNotFound`. None of them exports anything.
pub fn scoped_export_refuses_bad_paths_and_non_roots(p: &dyn HsmProvider) {
    let Some(root) = scoped_root(p, "dlc-paths", dlc_export_policy()) else {
        return;
    };
    let mut unhardened = hardened(&[0, 1]);
    unhardened[1] = ChildNumber::Normal { index: 1 };
    let cases = [
        (Vec::new(), ScopedPathDefect::Empty),
        (hardened(&[0; 9]), ScopedPathDefect::TooLong { len: 9 }),
        (unhardened, ScopedPathDefect::Unhardened { position: 1 }),
        (
            vec![ChildNumber::Normal { index: 0 }],
            ScopedPathDefect::Unhardened { position: 0 },
        ),
    ];
    for (path, defect) in cases {
        let r = p.export_scoped_child(&root, ExportScope::Dlc, &path);
        assert!(
            matches!(r, Err(HsmError::InvalidScopedPath { defect: d }) if d == defect),
            "{path:?}: {r:?}"
        );
    }
    if let Some(plain) = secp_key(p, "dlc-not-a-root") {
        let r = p.export_scoped_child(&plain, ExportScope::Dlc, &hardened(&[0]));
        assert!(
            matches!(
                r,
                Err(HsmError::WrongKeyType {
                    spec: KeySpec::Secp256k1,
                    usage: Usage::ExportDlcChild,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    let r = p.export_scoped_child(&label("dlc-missing"), ExportScope::Dlc, &hardened(&[0]));
    assert!(matches!(r, Err(HsmError::KeyNotFound { .. })), "{r:?}");
}

/// Every call, refused or not (`Unsupported` included), appends one `ExportScopedChild` record
/// with the root as its key and the hash of the branch and path as its input hash.
pub fn scoped_export_is_audited(p: &dyn HsmProvider) {
    if needs(p, Capability::AuditLog, || p.verify_audit_chain()).is_none() {
        return;
    }
    let opted_in = scoped_root(p, "dlc-audited", dlc_export_policy());
    let root = opted_in.clone().unwrap_or_else(|| label("dlc-audited"));
    let mut unhardened = hardened(&[5]);
    unhardened.push(ChildNumber::Normal { index: 6 });
    for path in [hardened(&[3, 4]), Vec::new(), unhardened, hardened(&[9])] {
        let (r, record) = one_record(p, || p.export_scoped_child(&root, ExportScope::Dlc, &path));
        assert_eq!(record.operation, Operation::ExportScopedChild);
        assert_eq!(record.key_id.as_ref(), Some(&root));
        assert_eq!(record.input_hash, Some(dlc_input_hash(&path)), "{path:?}");
        assert_eq!(record.outcome, r.as_ref().map_or_else(HsmError::audit_code, |_| 0));
        if opted_in.is_some() {
            let valid = ExportScope::Dlc.child_path(&path).is_ok();
            assert_eq!(r.is_ok(), valid, "{path:?}: {r:?}");
        }
    }
    assert_ne!(dlc_input_hash(&hardened(&[3, 4])), dlc_input_hash(&hardened(&[3])));
}

/// A root policy that opts in to node seed derivation.
fn node_seed_policy() -> KeyPolicy {
    KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::DeriveNodeSeed)
}

/// A root imported from [`SCOPED_SEED`] with `policy`, if the provider derives node seeds and
/// imports roots; otherwise checks that it refuses them and gives `None`.
fn node_seed_root(p: &dyn HsmProvider, name: &str, policy: KeyPolicy) -> Option<Label> {
    let id = label(name);
    needs(p, Capability::Bip32, || p.derive_node_seed(&id, 0))?;
    needs(p, Capability::Export, || p.derive_node_seed(&id, 0))?;
    let seed = || KeyMaterial::Bip32Seed(SecretBytes::from_slice(&SCOPED_SEED));
    needs(p, Capability::Import, || p.import_key(&id, seed(), policy))?;
    p.import_key(&id, seed(), policy).expect("import the root");
    Some(id)
}

/// BIP85's HEX application computed here with rust-bitcoin's BIP32 and HMAC (not the
/// provider's code): HMAC-SHA512("bip-entropy-from-k", k) of the child at
/// `83696968' / 128169' / 64' / index'`.
fn bip85_hex64(master: &Xpriv, index: u32) -> [u8; 64] {
    use bitcoin::hashes::{hmac, sha512};
    let secp = Secp256k1::new();
    let path = hardened(&[83_696_968, 128_169, 64, index]);
    let k = master.derive_priv(&secp, &path).expect("derive").private_key;
    let mut engine = hmac::HmacEngine::<sha512::Hash>::new(b"bip-entropy-from-k");
    engine.input(&k.secret_bytes());
    hmac::Hmac::<sha512::Hash>::from_engine(engine).to_byte_array()
}

/// A root that allows [`Usage::DeriveNodeSeed`] gives, for each index, the 64 bytes BIP85's HEX
/// application derives independently; the same index gives the same seed, other indices
/// other seeds; the root itself still does not export, and DLC children stay refused.
pub fn node_seed_is_bip85_of_the_independent_child(p: &dyn HsmProvider) {
    let Some(root) = node_seed_root(p, "ln-root", node_seed_policy()) else {
        return;
    };
    let master = Xpriv::new_master(NetworkKind::Main, &SCOPED_SEED).expect("valid seed");
    let mut seeds = Vec::new();
    for index in [0, 1, 2, 0x7fff_ffff] {
        let seed = p.derive_node_seed(&root, index).expect("derive");
        assert_eq!(seed.len(), crate::node_seed::NODE_SEED_LEN);
        assert_eq!(seed.expose(), &bip85_hex64(&master, index)[..], "index {index}");
        let again = p.derive_node_seed(&root, index).expect("derive again");
        assert_eq!(again.expose(), seed.expose());
        seeds.push(seed.expose().to_vec());
    }
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 4, "each index is its own seed");
    let whole = p.export_key(&root);
    assert!(matches!(whole, Err(HsmError::NotExportable { .. })), "{whole:?}");
    let dlc = p.export_scoped_child(&root, ExportScope::Dlc, &hardened(&[0]));
    assert!(
        matches!(
            dlc,
            Err(HsmError::UsageNotAllowed {
                usage: Usage::ExportDlcChild,
                ..
            })
        ),
        "{dlc:?}"
    );
}

/// A root whose policy does not allow [`Usage::DeriveNodeSeed`] (the default, exportable, or
/// opted in to DLC children only) refuses with `UsageNotAllowed`: one audit record, the key as
/// it was.
pub fn node_seed_needs_the_usage(p: &dyn HsmProvider) {
    let default = KeyPolicy::default_for(KeySpec::Bip32Root);
    assert!(
        !default.allowed.contains(Usage::DeriveNodeSeed),
        "node seeds are opt-in"
    );
    assert!(KeySpec::Bip32Root.possible_usages().contains(Usage::DeriveNodeSeed));
    let policies = [
        ("ln-default", default),
        ("ln-exportable", default.exportable()),
        ("ln-dlc-only", dlc_export_policy()),
    ];
    for (name, policy) in policies {
        let Some(root) = node_seed_root(p, name, policy) else {
            return;
        };
        refused_for_usage(p, &root, Usage::DeriveNodeSeed, Operation::DeriveNodeSeed, || {
            p.derive_node_seed(&root, 0).map(drop)
        });
    }
}

/// An index at or above 2^31 is `InvalidNodeSeedIndex`; a key that is not a BIP32 root is
/// `WrongKeyType`; a missing root is `KeyNotFound`. None of them derives anything.
pub fn node_seed_refuses_bad_index_and_non_roots(p: &dyn HsmProvider) {
    let Some(root) = node_seed_root(p, "ln-index", node_seed_policy()) else {
        return;
    };
    for index in [1 << 31, u32::MAX] {
        let r = p.derive_node_seed(&root, index);
        assert!(
            matches!(r, Err(HsmError::InvalidNodeSeedIndex { index: i }) if i == index),
            "{index}: {r:?}"
        );
    }
    if let Some(plain) = secp_key(p, "ln-not-a-root") {
        let r = p.derive_node_seed(&plain, 0);
        assert!(
            matches!(
                r,
                Err(HsmError::WrongKeyType {
                    spec: KeySpec::Secp256k1,
                    usage: Usage::DeriveNodeSeed,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    let r = p.derive_node_seed(&label("ln-missing"), 0);
    assert!(matches!(r, Err(HsmError::KeyNotFound { .. })), "{r:?}");
}

/// Every call, refused or not (`Unsupported` included), appends one `DeriveNodeSeed` record
/// with the root as its key and, as its input hash, SHA-256 of the BIP85 path's indices.
pub fn node_seed_is_audited(p: &dyn HsmProvider) {
    if needs(p, Capability::AuditLog, || p.verify_audit_chain()).is_none() {
        return;
    }
    let opted_in = node_seed_root(p, "ln-audited", node_seed_policy());
    let root = opted_in.clone().unwrap_or_else(|| label("ln-audited"));
    for index in [0, 5, 1 << 31] {
        let (r, record) = one_record(p, || p.derive_node_seed(&root, index));
        assert_eq!(record.operation, Operation::DeriveNodeSeed);
        assert_eq!(record.key_id.as_ref(), Some(&root));
        let mut engine = sha256::Hash::engine();
        for step in [83_696_968u32, 128_169, 64, index] {
            engine.input(&(0x8000_0000 | step).to_be_bytes());
        }
        let expected = sha256::Hash::from_engine(engine).to_byte_array();
        assert_eq!(record.input_hash, Some(expected), "{index}");
        assert_eq!(record.outcome, r.as_ref().map_or_else(HsmError::audit_code, |_| 0));
        if opted_in.is_some() {
            assert_eq!(r.is_ok(), index < 1 << 31, "{index}: {r:?}");
        }
    }
}
