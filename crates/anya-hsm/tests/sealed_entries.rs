//! Property tests: whatever bytes sit in the store where sealed records belong, the provider
//! answers with a typed error and never panics, signs or decrypts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use anya_hsm::{HsmError, HsmProvider, KeyPolicy, KeyRef, KeySpec, Label, SealedDefect};
use anya_storage::{KvStore, Namespace};
use proptest::prelude::*;

static FIXTURE: OnceLock<common::Fixture> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn f() -> &'static common::Fixture {
    FIXTURE.get_or_init(common::fixture)
}

fn fresh(prefix: &str) -> Label {
    Label::new(format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::Relaxed))).expect("label")
}

fn keys_ns() -> Namespace {
    Namespace::new("anya.hsm.keys").expect("ns")
}

fn sealed_entry_of(spec: KeySpec) -> (Label, Vec<u8>) {
    let id = fresh("real");
    f().hsm
        .generate_key(&id, spec, KeyPolicy::default_for(spec))
        .expect("generate");
    let bytes = f()
        .store
        .get(&keys_ns(), id.as_str().as_bytes())
        .expect("get")
        .expect("entry")
        .value;
    (id, bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_bytes_as_a_key_entry(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let id = fresh("rand");
        f().store.put(&keys_ns(), id.as_str().as_bytes(), &bytes).expect("put");
        let r = f().hsm.sign_ecdsa(KeyRef::Key(&id), &[1; 32]);
        prop_assert!(matches!(r, Err(HsmError::SealedEntry { .. })), "{:?}", r);
    }

    #[test]
    fn truncated_entries(cut in 0usize..100) {
        let (_, entry) = sealed_entry_of(KeySpec::Secp256k1);
        let cut = cut.min(entry.len() - 1);
        let id = fresh("cut");
        f().store.put(&keys_ns(), id.as_str().as_bytes(), &entry[..cut]).expect("put");
        let r = f().hsm.public_key(KeyRef::Key(&id));
        prop_assert!(matches!(r, Err(HsmError::SealedEntry { .. })), "{:?}", r);
    }

    #[test]
    fn flipped_bit_in_an_entry(pos in 0usize..200, bit in 0u8..8) {
        let (_, mut entry) = sealed_entry_of(KeySpec::Ed25519);
        let pos = pos % entry.len();
        entry[pos] ^= 1 << bit;
        let id = fresh("flip");
        f().store.put(&keys_ns(), id.as_str().as_bytes(), &entry).expect("put");
        let r = f().hsm.sign_ed25519(&id, b"m");
        prop_assert!(matches!(r, Err(HsmError::SealedEntry { .. })), "{:?}", r);
    }

    #[test]
    fn aes_with_wrong_aad_or_random_ciphertext(
        aad in proptest::collection::vec(any::<u8>(), 0..40),
        junk in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let id = fresh("aes");
        f().hsm.generate_key(&id, KeySpec::Aes256, KeyPolicy::default_for(KeySpec::Aes256)).expect("generate");
        let ct = f().hsm.encrypt(&id, b"payload", b"right").expect("encrypt");
        if aad != b"right" {
            prop_assert!(matches!(f().hsm.decrypt(&id, &ct, &aad), Err(HsmError::DecryptionFailed)));
        }
        prop_assert!(matches!(f().hsm.decrypt(&id, &junk, b"right"), Err(HsmError::DecryptionFailed)));
    }

    #[test]
    fn random_bytes_as_a_nonce_record(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let (key, _) = sealed_entry_of(KeySpec::Secp256k1);
        let nonce = fresh("nonce");
        let mut store_key = key.as_str().as_bytes().to_vec();
        store_key.push(0);
        store_key.extend_from_slice(nonce.as_str().as_bytes());
        f().store.put(&Namespace::new("anya.hsm.nonces").expect("ns"), &store_key, &bytes).expect("put");
        let r = f().hsm.sign_with_nonce(&key, &nonce, &[1; 32]);
        prop_assert!(
            matches!(r, Err(HsmError::SealedEntry { .. } | HsmError::NonceAlreadyUsed { .. })),
            "{:?}", r
        );
    }
}

#[test]
fn swapped_entries_fail_authentication() {
    let (a, entry_a) = sealed_entry_of(KeySpec::Secp256k1);
    let (b, entry_b) = sealed_entry_of(KeySpec::Secp256k1);
    let (x, y) = (fresh("swap"), fresh("swap"));
    f().store.put(&keys_ns(), x.as_str().as_bytes(), &entry_a).expect("put");
    f().store.put(&keys_ns(), y.as_str().as_bytes(), &entry_b).expect("put");
    for id in [&x, &y] {
        let r = f().hsm.sign_ecdsa(KeyRef::Key(id), &[1; 32]);
        assert!(
            matches!(
                r,
                Err(HsmError::SealedEntry {
                    defect: SealedDefect::AuthenticationFailed,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    // The originals still work.
    f().hsm.sign_ecdsa(KeyRef::Key(&a), &[1; 32]).expect("a");
    f().hsm.sign_ecdsa(KeyRef::Key(&b), &[1; 32]).expect("b");
}

#[test]
fn random_keystore_header_is_typed() {
    let dir = tempfile::tempdir().expect("dir");
    let store = common::open_store(&dir);
    let meta = Namespace::new("anya.hsm.meta").expect("ns");
    for bytes in [&b""[..], b"AHS", b"AHS\x01short", &[0u8; 92], &[0xffu8; 92]] {
        store.put(&meta, b"keystore", bytes).expect("put");
        let hsm =
            anya_hsm::SoftwareHsm::open(store.clone() as std::sync::Arc<dyn KvStore>, common::options()).expect("open");
        let r = hsm.unlock(&anya_hsm::SecretString::from("x"));
        assert!(
            matches!(
                r,
                Err(HsmError::KeystoreCorrupt { .. } | HsmError::WrongPassphrase | HsmError::InvalidKdfParams { .. })
            ),
            "{r:?}"
        );
    }
}
