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

fn token() -> Option<TokenHsm> {
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
    let dir = tempfile::tempdir().expect("temp dir");
    let store = anya_storage::SqliteStore::open(dir.path().join("hsm.db"), anya_storage::SqliteOptions::default())
        .expect("sqlite store");
    let options = Pkcs11Options::new(module, token_label, SecretString::new(pin)).with_label_prefix(prefix);
    let provider = Pkcs11Hsm::open(Arc::new(store), options).expect("token opens and the pin logs in");
    Some(TokenHsm { provider, _dir: dir })
}

anya_hsm::hsm_conformance_suite!(token());

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
    for c in [Capability::SignEcdsa, Capability::SignEd25519, Capability::Aes256Gcm] {
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
