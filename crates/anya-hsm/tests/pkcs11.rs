//! The PKCS#11 provider against a real token: SoftHSM2 as `.ci/softhsm.sh` sets it up
//! (`ANYA_TEST_PKCS11_MODULE`, `ANYA_TEST_PKCS11_PIN`, `ANYA_TEST_PKCS11_TOKEN_LABEL`).
//!
//! Tests share the token: each fixture uses its own object label prefix and store, and deletes
//! its keys on drop.
#![cfg(feature = "pkcs11")]
#![allow(clippy::print_stderr, reason = "a skipped test says so on stderr")]

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anya_hsm::{
    Capability, HsmError, HsmProvider, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, Pkcs11Hsm, Pkcs11Options,
    PublicKey, SecretBytes, SecretString, Usage,
};
use secp256k1::{Message, Secp256k1};

/// A provider on the shared token whose keys are deleted on drop.
struct TokenHsm {
    provider: Pkcs11Hsm,
    store: Arc<dyn anya_storage::KvStore>,
    _dir: tempfile::TempDir,
}

impl Deref for TokenHsm {
    type Target = Pkcs11Hsm;
    fn deref(&self) -> &Pkcs11Hsm {
        &self.provider
    }
}

impl Drop for TokenHsm {
    fn drop(&mut self) {
        if let Ok(keys) = self.provider.list_keys() {
            for key in keys {
                let _ = self.provider.delete_key(&key.id);
            }
        }
    }
}

/// Options for the test token with a label prefix of their own; `None` (skip) outside CI when
/// no module is configured.
fn token_options() -> Option<Pkcs11Options> {
    let Ok(module) = std::env::var("ANYA_TEST_PKCS11_MODULE") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ANYA_TEST_PKCS11_MODULE is unset in CI: .ci/run must source .ci/softhsm.sh"
        );
        eprintln!("skipped: ANYA_TEST_PKCS11_MODULE unset");
        return None;
    };
    let pin = std::env::var("ANYA_TEST_PKCS11_PIN").expect("ANYA_TEST_PKCS11_PIN goes with the module");
    let token_label = std::env::var("ANYA_TEST_PKCS11_TOKEN_LABEL").unwrap_or_else(|_| "anya-test".to_owned());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let prefix = format!(
        "t{}-{}-{nanos}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Some(Pkcs11Options::new(module, token_label, SecretString::new(pin)).with_label_prefix(prefix))
}

fn token() -> Option<TokenHsm> {
    let options = token_options()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = anya_storage::SqliteStore::open(dir.path().join("hsm.db"), anya_storage::SqliteOptions::default())
        .expect("sqlite store");
    let store: Arc<dyn anya_storage::KvStore> = Arc::new(store);
    let provider = Pkcs11Hsm::open(Arc::clone(&store), options).expect("token opens and the pin logs in");
    Some(TokenHsm {
        provider,
        store,
        _dir: dir,
    })
}

anya_hsm::hsm_conformance_suite!(token());

impl anya_hsm::conformance::StoreBacked for TokenHsm {
    fn provider(&self) -> &dyn HsmProvider {
        &self.provider
    }

    fn store(&self) -> &dyn anya_storage::KvStore {
        &*self.store
    }

    /// The key records; the keys themselves are objects on the token.
    fn state_namespaces(&self) -> Vec<anya_storage::Namespace> {
        vec![anya_storage::Namespace::new("anya.pkcs11.keys").expect("ns")]
    }
}

anya_hsm::hsm_rollback_suite!(token());

fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

#[test]
fn capabilities_are_what_a_token_does() {
    let Some(hsm) = token() else { return };
    let caps = hsm.capabilities();
    for c in [
        Capability::SignSchnorr,
        Capability::SignTaprootKeySpend,
        Capability::Bip32,
        Capability::OracleNonces,
        Capability::DeterministicEcdsa,
    ] {
        assert!(!caps.contains(c), "{c:?}");
    }
    for c in [
        Capability::SignEcdsa,
        Capability::SignEd25519,
        Capability::Aes256Gcm,
        Capability::GenerateP256,
        Capability::SignP256,
    ] {
        assert!(caps.contains(c), "{c:?}");
    }
}

#[test]
fn token_ecdsa_is_low_s_and_verifies_with_bare_secp256k1() {
    let Some(hsm) = token() else { return };
    let id = label("low-s");
    let secret = [0x5au8; 32];
    hsm.import_key(
        &id,
        KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret)),
        KeyPolicy::only(&[Usage::SignEcdsa]),
    )
    .expect("import");
    let secp = Secp256k1::new();
    let pk = secp256k1::SecretKey::from_slice(&secret)
        .expect("valid")
        .public_key(&secp);
    // With random nonces about half of the raw token signatures are high-S: 64 signatures all
    // come out low-S only if the provider normalises them.
    for i in 0..64u8 {
        let digest = [i; 32];
        let sig = hsm.sign_ecdsa(KeyRef::Key(&id), &digest).expect("sign");
        let mut low = sig;
        low.normalize_s();
        assert_eq!(low, sig);
        secp.verify_ecdsa(&Message::from_digest(digest), &sig, &pk)
            .expect("verifies");
    }
}

#[test]
fn token_p256_signatures_verify_with_ring_and_keep_the_tokens_s() {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    // n / 2 of P-256, big-endian: an s above it is "high".
    const HALF_N: [u8; 32] = [
        0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73,
        0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
    ];
    let Some(hsm) = token() else { return };
    let id = label("p256-token");
    hsm.generate_key(&id, KeySpec::P256, KeyPolicy::default_for(KeySpec::P256))
        .expect("generate on the token");
    assert!(matches!(hsm.export_key(&id), Err(HsmError::NotExportable { .. })));
    let Ok(PublicKey::P256(pk)) = hsm.public_key(KeyRef::Key(&id)) else {
        panic!("p-256 key")
    };
    // The token's nonces are random, so about half of its signatures are high-S; they are
    // returned as the token made them (P-256 verifiers take both).
    let mut high = 0;
    for i in 0..64u8 {
        let sig = hsm.sign_p256(&id, &[i; 100]).expect("sign");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pk)
            .verify(&[i; 100], &sig.0)
            .expect("verifies with ring");
        high += usize::from(sig.s() > &HALF_N);
    }
    assert!(
        high > 0,
        "64 token signatures and none high-S: are they being normalised?"
    );
}

#[test]
fn non_exportable_keys_stay_on_the_token_and_deleted_keys_leave_it() {
    let Some(hsm) = token() else { return };
    let id = label("kept");
    hsm.generate_key(&id, KeySpec::Ed25519, KeyPolicy::default_for(KeySpec::Ed25519))
        .expect("generate");
    assert!(matches!(hsm.export_key(&id), Err(HsmError::NotExportable { .. })));
    let Ok(PublicKey::Ed25519(pk)) = hsm.public_key(KeyRef::Key(&id)) else {
        panic!("ed25519 key")
    };
    let sig = hsm.sign_ed25519(&id, b"token").expect("sign");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
        .verify(b"token", &sig.0)
        .expect("verifies with ring");
    hsm.delete_key(&id).expect("delete");
    assert!(matches!(hsm.sign_ed25519(&id, b"x"), Err(HsmError::KeyNotFound { .. })));
    // The id is free again: no object with its label is left on the token.
    hsm.generate_key(&id, KeySpec::Ed25519, KeyPolicy::default_for(KeySpec::Ed25519))
        .expect("generate again");
}

#[test]
fn aes_keys_exported_only_when_exportable() {
    let Some(hsm) = token() else { return };
    let id = label("aes-export");
    let key = [0x33u8; 32];
    hsm.import_key(
        &id,
        KeyMaterial::Aes256(SecretBytes::from_slice(&key)),
        KeyPolicy::default_for(KeySpec::Aes256).exportable(),
    )
    .expect("import");
    assert_eq!(hsm.export_key(&id).expect("export").expose(), &key);
    let sealed = hsm.encrypt(&id, b"data", b"aad").expect("encrypt");
    // Same layout as the software provider: iv ‖ ciphertext ‖ tag, readable with ring.
    let ring_key =
        ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).expect("aes key"));
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(&sealed[..12]).expect("12-byte iv");
    let mut body = sealed[12..].to_vec();
    let plain = ring_key
        .open_in_place(nonce, ring::aead::Aad::from(b"aad"), &mut body)
        .expect("ring opens the token's ciphertext");
    assert_eq!(plain, b"data");
}

/// The software provider in envelope mode: its KEK wrapped by an AES-256 key on the token.
mod enveloped {
    use std::ops::Deref;
    use std::path::Path;
    use std::sync::Arc;

    use anya_hsm::{
        AuxRand, HsmError, HsmProvider, KdfParams, KekSource, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Pkcs11Options,
        SecretBytes, SecretString, SoftwareHsm, SoftwareOptions,
    };
    use anya_storage::{KvStore, Namespace, SqliteOptions, SqliteStore};
    use bitcoin::bip32::DerivationPath;
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

    use super::{label, token_options};

    /// An enveloped keystore on a SQLite store in a temporary directory.
    pub(super) struct Enveloped {
        pub(super) hsm: SoftwareHsm,
        pub(super) store: Arc<SqliteStore>,
        pub(super) token: Pkcs11Options,
        pub(super) dir: tempfile::TempDir,
    }

    impl Deref for Enveloped {
        type Target = SoftwareHsm;
        fn deref(&self) -> &SoftwareHsm {
            &self.hsm
        }
    }

    impl Enveloped {
        /// The keystore opened anew from the store, locked.
        fn reopen(&self) -> SoftwareHsm {
            SoftwareHsm::open(Arc::clone(&self.store) as Arc<dyn KvStore>, SoftwareOptions::default()).expect("open")
        }

        fn header(&self) -> Vec<u8> {
            self.store
                .get(&meta_ns(), b"keystore")
                .expect("get")
                .expect("a keystore header")
                .value
        }

        fn set_header(&self, bytes: &[u8]) {
            self.store.put(&meta_ns(), b"keystore", bytes).expect("put");
        }
    }

    fn meta_ns() -> Namespace {
        Namespace::new("anya.hsm.meta").expect("ns")
    }

    pub(super) fn enveloped() -> Option<Enveloped> {
        let token = token_options()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteStore::open(dir.path().join("hsm.db"), SqliteOptions::default()).expect("sqlite"));
        let hsm = SoftwareHsm::create_enveloped(
            Arc::clone(&store) as Arc<dyn KvStore>,
            &token,
            SoftwareOptions::default(),
        )
        .expect("enveloped keystore on the token");
        Some(Enveloped { hsm, store, token, dir })
    }

    anya_hsm::hsm_conformance_suite!(enveloped());

    impl anya_hsm::conformance::StoreBacked for Enveloped {
        fn provider(&self) -> &dyn HsmProvider {
            &self.hsm
        }

        fn store(&self) -> &dyn KvStore {
            &*self.store
        }

        fn state_namespaces(&self) -> Vec<Namespace> {
            anya_hsm::conformance::software_state_namespaces("anya.hsm")
        }
    }

    anya_hsm::hsm_rollback_suite!(enveloped());

    /// Offset of the wrapped KEK in a version 2 header: magic, source, mechanism, label length,
    /// label, wrapped length.
    fn wrapped_offset(header: &[u8]) -> usize {
        assert_eq!(&header[..4], b"AHS\x02");
        assert_eq!(header[4], 2, "kek source tag: pkcs#11 token");
        assert_eq!(header[5], 1, "mechanism: CKM_AES_GCM");
        8 + usize::from(header[6])
    }

    #[test]
    fn header_records_the_token_key_and_mechanism() {
        let Some(f) = enveloped() else { return };
        let header = f.header();
        let label_len = usize::from(header[6]);
        let key_label = format!("{}keystore-kek", f.token.label_prefix);
        assert_eq!(&header[7..7 + label_len], key_label.as_bytes());
        assert_eq!(usize::from(header[7 + label_len]), 12 + 32 + 16);
        assert_eq!(header.len(), wrapped_offset(&header) + 60 + 60);
        assert_eq!(f.kek_source().expect("source"), KekSource::Pkcs11Token);
    }

    #[test]
    fn restart_unlocks_through_the_token_and_keys_sign_identically() {
        let Some(f) = enveloped() else { return };
        let k = label("schnorr");
        let root = label("root");
        f.generate_key(&k, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
            .expect("generate");
        f.generate_key(&root, KeySpec::Bip32Root, KeyPolicy::default_for(KeySpec::Bip32Root))
            .expect("generate root");
        let path: DerivationPath = "m/86'/0'/0'/0/7".parse().expect("path");
        let aux = AuxRand::Given([9; 32]);
        let msg = [0x42u8; 32];
        let schnorr = f.sign_schnorr(KeyRef::Key(&k), &msg, aux).expect("schnorr");
        let taproot = f
            .sign_taproot_key_spend(KeyRef::derived(&root, &path), &msg, None, aux)
            .expect("taproot");
        let ecdsa = f.sign_ecdsa(KeyRef::Key(&k), &msg).expect("ecdsa");
        let public = f.public_key(KeyRef::derived(&root, &path)).expect("public");

        let Enveloped {
            hsm,
            store,
            token,
            dir: _dir,
        } = f;
        drop(hsm);
        let hsm = SoftwareHsm::open(Arc::clone(&store) as Arc<dyn KvStore>, SoftwareOptions::default()).expect("open");
        assert!(matches!(
            hsm.sign_schnorr(KeyRef::Key(&k), &msg, aux),
            Err(HsmError::Locked)
        ));
        hsm.unlock_enveloped(&token).expect("unlock through the token");
        assert_eq!(hsm.sign_schnorr(KeyRef::Key(&k), &msg, aux).expect("schnorr"), schnorr);
        assert_eq!(
            hsm.sign_taproot_key_spend(KeyRef::derived(&root, &path), &msg, None, aux)
                .expect("taproot"),
            taproot
        );
        assert_eq!(hsm.sign_ecdsa(KeyRef::Key(&k), &msg).expect("ecdsa"), ecdsa);
        assert_eq!(hsm.public_key(KeyRef::derived(&root, &path)).expect("public"), public);
        hsm.verify_audit_chain().expect("audit chain intact across the restart");
    }

    /// Every 32-byte window of every file under `dir` that, used as an AES-256-GCM key, opens
    /// the sealed entry `entry` of key `id`.
    fn keys_in_files(dir: &Path, id: &str, entry: &[u8]) -> usize {
        let (head, sealed) = entry.split_at(20);
        let mut aad = b"anya-hsm/key/v1".to_vec();
        aad.push(u8::try_from(id.len()).expect("short id"));
        aad.extend_from_slice(id.as_bytes());
        aad.extend_from_slice(head);
        let (nonce, body) = sealed.split_at(12);
        let mut found = 0;
        for file in std::fs::read_dir(dir).expect("read dir") {
            let bytes = std::fs::read(file.expect("entry").path()).expect("read file");
            for window in bytes.windows(32) {
                let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, window).expect("32-byte key"));
                let nonce = Nonce::try_assume_unique_for_key(nonce).expect("12-byte nonce");
                let mut buf = body.to_vec();
                if key.open_in_place(nonce, Aad::from(&aad), &mut buf).is_ok() {
                    found += 1;
                }
            }
        }
        found
    }

    #[test]
    fn the_store_holds_no_plaintext_kek() {
        let Some(f) = enveloped() else { return };
        let id = label("probe");
        let secret = [0x6bu8; 32];
        f.import_key(
            &id,
            KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret)),
            KeyPolicy::default_for(KeySpec::Secp256k1),
        )
        .expect("import");
        f.flush_audit().expect("flush");
        let entry = f
            .store
            .get(&Namespace::new("anya.hsm.keys").expect("ns"), b"probe")
            .expect("get")
            .expect("sealed entry")
            .value;
        // No window of the database files is the KEK that opens the entry, and the imported
        // key itself is nowhere in plaintext.
        assert_eq!(keys_in_files(f.dir.path(), "probe", &entry), 0);
        for file in std::fs::read_dir(f.dir.path()).expect("read dir") {
            let bytes = std::fs::read(file.expect("entry").path()).expect("read file");
            assert!(!bytes.windows(32).any(|w| w == secret));
        }
        // The search does find a KEK that is there: a file holding one is caught.
        let control = tempfile::tempdir().expect("dir");
        let kek = [0x17u8; 32];
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &kek).expect("aes key"));
        let mut head = entry[..20].to_vec();
        let mut aad = b"anya-hsm/key/v1".to_vec();
        aad.push(5);
        aad.extend_from_slice(b"probe");
        aad.extend_from_slice(&head);
        let nonce = [3u8; 12];
        let mut body = secret.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut body)
            .expect("seal");
        head.extend_from_slice(&nonce);
        head.extend_from_slice(&body);
        let mut file = vec![0u8; 100];
        file.extend_from_slice(&kek);
        file.extend_from_slice(&[0u8; 100]);
        std::fs::write(control.path().join("kek"), file).expect("write");
        assert_eq!(keys_in_files(control.path(), "probe", &head), 1);
    }

    #[test]
    fn tampered_wrapped_kek_is_a_typed_error() {
        let Some(f) = enveloped() else { return };
        let id = label("k");
        f.generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
            .expect("generate");
        let original = f.header();
        let at = wrapped_offset(&original);
        // The IV, the encrypted KEK and the tag.
        for i in [at, at + 20, at + 59] {
            let mut bytes = original.clone();
            bytes[i] ^= 1;
            f.set_header(&bytes);
            let hsm = f.reopen();
            let r = hsm.unlock_enveloped(&f.token);
            assert!(matches!(r, Err(HsmError::KekUnwrapFailed { .. })), "byte {i}: {r:?}");
            assert!(!hsm.is_unlocked());
        }
        // An altered verifier: the token unwraps, the KEK does not open the verifier.
        let mut bytes = original.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        f.set_header(&bytes);
        let r = f.reopen().unlock_enveloped(&f.token);
        assert!(
            matches!(
                r,
                Err(HsmError::KeystoreCorrupt {
                    defect: anya_hsm::SealedDefect::AuthenticationFailed
                })
            ),
            "{r:?}"
        );
        // Another label: the token holds no such key.
        let mut bytes = original.clone();
        bytes[7] ^= 1;
        f.set_header(&bytes);
        let r = f.reopen().unlock_enveloped(&f.token);
        assert!(matches!(r, Err(HsmError::TokenKekNotFound { .. })), "{r:?}");
        // Truncated.
        f.set_header(&original[..original.len() - 1]);
        let r = f.reopen().unlock_enveloped(&f.token);
        assert!(matches!(r, Err(HsmError::KeystoreCorrupt { .. })), "{r:?}");
        // The original still opens and signs.
        f.set_header(&original);
        let hsm = f.reopen();
        hsm.unlock_enveloped(&f.token).expect("unlock");
        hsm.sign_ecdsa(KeyRef::Key(&id), &[1; 32]).expect("sign");
    }

    #[test]
    fn another_tokens_key_is_a_typed_error() {
        let Some(a) = enveloped() else { return };
        let Some(b) = enveloped() else { return };
        // b's header names b's token key; a's wrapped KEK under b's label does not authenticate.
        let ha = a.header();
        let hb = b.header();
        let (wa, wb) = (wrapped_offset(&ha), wrapped_offset(&hb));
        let mut forged = hb[..wb].to_vec();
        forged.extend_from_slice(&ha[wa..]);
        b.set_header(&forged);
        let r = b.reopen().unlock_enveloped(&b.token);
        assert!(matches!(r, Err(HsmError::KekUnwrapFailed { .. })), "{r:?}");
        // A token that is not there.
        let mut missing = b.token.clone();
        missing.token_label = "no-such-token".to_owned();
        let r = a.reopen().unlock_enveloped(&missing);
        assert!(matches!(r, Err(HsmError::TokenNotFound { .. })), "{r:?}");
    }

    #[test]
    fn passphrase_and_token_keystores_do_not_cross() {
        let Some(f) = enveloped() else { return };
        // An enveloped keystore refuses a passphrase, and has no Argon2id parameters.
        let hsm = f.reopen();
        let r = hsm.unlock(&SecretString::from("anything"));
        assert!(
            matches!(
                r,
                Err(HsmError::KekSourceMismatch {
                    keystore: KekSource::Pkcs11Token
                })
            ),
            "{r:?}"
        );
        assert!(!hsm.is_unlocked());
        assert!(matches!(hsm.kdf_params(), Err(HsmError::KekSourceMismatch { .. })));
        // A passphrase keystore refuses the token.
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("p.db"), SqliteOptions::default()).expect("sqlite"));
        let options = SoftwareOptions::default().with_kdf(KdfParams::insecure_for_tests());
        SoftwareHsm::create(Arc::clone(&store), &SecretString::from("pass"), options.clone()).expect("create");
        let hsm = SoftwareHsm::open(Arc::clone(&store), options.clone()).expect("open");
        let r = hsm.unlock_enveloped(&f.token);
        assert!(
            matches!(
                r,
                Err(HsmError::KekSourceMismatch {
                    keystore: KekSource::Passphrase
                })
            ),
            "{r:?}"
        );
        assert!(!hsm.is_unlocked());
        assert_eq!(hsm.kek_source().expect("source"), KekSource::Passphrase);
        hsm.unlock(&SecretString::from("pass"))
            .expect("the passphrase still opens it");
        // Creating an enveloped keystore over an existing one is refused.
        let r = SoftwareHsm::create_enveloped(store, &f.token, options);
        assert!(matches!(r, Err(HsmError::KeystoreExists)), "{r:?}");
    }
}

/// The token provider with a rollback anchor: its store restored to an older copy (the keys
/// are on the token, the audit chain in the store) is refused at open.
#[test]
fn token_store_restored_behind_its_anchor_is_refused() {
    let Some(options) = token_options() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let anchor: Arc<dyn anya_hsm::anchor::RollbackAnchor> =
        Arc::new(anya_hsm::anchor::FileAnchor::open(dir.path().join("anchor")).expect("anchor"));
    let store: Arc<dyn anya_storage::KvStore> = Arc::new(
        anya_storage::SqliteStore::open(dir.path().join("hsm.db"), anya_storage::SqliteOptions::default())
            .expect("sqlite store"),
    );
    let options = options.with_anchor(anchor);
    let provider = Pkcs11Hsm::open(Arc::clone(&store), options.clone()).expect("open");
    let id = label("anchored");
    provider
        .generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
        .expect("generate");
    let token = TokenHsm {
        provider,
        store: Arc::clone(&store),
        _dir: tempfile::tempdir().expect("temp dir"),
    };
    let audit = [
        anya_storage::Namespace::new("anya.pkcs11.audit").expect("ns"),
        anya_storage::Namespace::new("anya.pkcs11.audit-head").expect("ns"),
    ];
    let snapshot: Vec<Vec<(Vec<u8>, Vec<u8>)>> = audit
        .iter()
        .map(|ns| {
            store
                .scan(ns, anya_storage::Scan::all())
                .expect("scan")
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect()
        })
        .collect();
    token.sign_ecdsa(KeyRef::Key(&id), &[1; 32]).expect("sign");
    for (ns, records) in audit.iter().zip(&snapshot) {
        for e in store.scan(ns, anya_storage::Scan::all()).expect("scan") {
            store.delete(ns, &e.key).expect("delete");
        }
        for (k, v) in records {
            store.put(ns, k, v).expect("restore");
        }
    }
    let reopened = Pkcs11Hsm::open(Arc::clone(&store), options);
    assert!(
        matches!(reopened, Err(HsmError::RolledBack { .. })),
        "{:?}",
        reopened.err()
    );
}
