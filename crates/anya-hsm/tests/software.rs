//! Software-provider behaviour: lock states, persistence, nonces across restarts and handles,
//! the audit chain under direct tampering, and sealing.

mod common;

use std::sync::Arc;

use anya_hsm::{
    AuditBreak, AuxRand, HsmError, HsmProvider, KdfParams, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, SecretBytes,
    SecretString, SoftwareHsm,
};
use anya_storage::{KvStore, Namespace};
use common::{fixture, open_store, options, PASS};
use secp256k1::{Message, Secp256k1};

fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

fn secp_key(hsm: &SoftwareHsm, name: &str) -> Label {
    let id = label(name);
    hsm.generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
        .expect("generate");
    id
}

fn reopen(store: &Arc<anya_storage::SqliteStore>) -> SoftwareHsm {
    let hsm = SoftwareHsm::open(Arc::clone(store) as Arc<dyn KvStore>, options()).expect("open");
    hsm.unlock(&SecretString::from(PASS)).expect("unlock");
    hsm
}

#[test]
fn lock_unlock_and_wrong_passphrase() {
    let f = fixture();
    let id = secp_key(&f.hsm, "k");
    f.hsm.lock().expect("lock");
    assert!(!f.hsm.is_unlocked());
    assert!(matches!(
        f.hsm.sign_ecdsa(KeyRef::Key(&id), &[1; 32]),
        Err(HsmError::Locked)
    ));
    assert!(matches!(
        f.hsm.unlock(&SecretString::from("wrong")),
        Err(HsmError::WrongPassphrase)
    ));
    assert!(!f.hsm.is_unlocked());
    f.hsm.unlock(&SecretString::from(PASS)).expect("unlock");
    f.hsm.sign_ecdsa(KeyRef::Key(&id), &[1; 32]).expect("sign after unlock");
    f.hsm.verify_audit_chain().expect("chain");
}

#[test]
fn keystore_exists_and_missing_are_typed() {
    let f = fixture();
    let again = SoftwareHsm::create(
        Arc::clone(&f.store) as Arc<dyn KvStore>,
        &SecretString::from("x"),
        options(),
    );
    assert!(matches!(again, Err(HsmError::KeystoreExists)));
    let dir = tempfile::tempdir().expect("dir");
    let empty = open_store(&dir);
    assert!(matches!(
        SoftwareHsm::open(empty as Arc<dyn KvStore>, options()),
        Err(HsmError::KeystoreMissing)
    ));
}

#[test]
fn kdf_parameters_are_stored_and_default_is_64_mib() {
    let f = fixture();
    assert_eq!(f.hsm.kdf_params().expect("params"), KdfParams::insecure_for_tests());
    let d = KdfParams::default();
    assert_eq!((d.memory_kib(), d.iterations(), d.parallelism()), (65536, 3, 1));
    assert!(matches!(
        KdfParams::new(1, 1, 1),
        Err(HsmError::InvalidKdfParams { .. })
    ));
}

#[test]
fn keys_survive_restart_and_secret_is_not_in_the_store() {
    let f = fixture();
    let id = label("imported");
    let secret = [0x5au8; 32];
    f.hsm
        .import_key(
            &id,
            KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret)),
            KeyPolicy::default_for(KeySpec::Secp256k1),
        )
        .expect("import");
    let pk = f.hsm.public_key(KeyRef::Key(&id)).expect("pk");
    drop(f.hsm);
    for ns in ["anya.hsm.keys", "anya.hsm.meta", "anya.hsm.audit"] {
        let ns = Namespace::new(ns).expect("ns");
        for e in f.store.scan(&ns, anya_storage::Scan::all()).expect("scan") {
            assert!(
                !e.value.windows(32).any(|w| w == secret),
                "plaintext secret found in {ns}"
            );
        }
    }
    let hsm = reopen(&f.store);
    assert_eq!(hsm.public_key(KeyRef::Key(&id)).expect("pk"), pk);
    hsm.verify_audit_chain().expect("chain");
}

#[test]
fn secrets_do_not_print() {
    let s = SecretBytes::from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(format!("{s:?}"), "SecretBytes(<4 bytes redacted>)");
    assert!(!format!("{:?}", SecretString::from("hunter2")).contains("hunter2"));
    assert!(!format!("{:?}", AuxRand::Given([0xab; 32])).contains("ab"));
}

#[test]
fn nonce_stays_used_after_restart() {
    let f = fixture();
    let id = secp_key(&f.hsm, "oracle");
    let (used, fresh) = (label("used"), label("fresh"));
    f.hsm.commit_nonce(&id, &used).expect("commit");
    let r_fresh = f.hsm.commit_nonce(&id, &fresh).expect("commit");
    f.hsm.sign_with_nonce(&id, &used, &[1; 32]).expect("first use");
    drop(f.hsm);
    let hsm = reopen(&f.store);
    assert!(matches!(
        hsm.sign_with_nonce(&id, &used, &[2; 32]),
        Err(HsmError::NonceAlreadyUsed { .. })
    ));
    let sig = hsm
        .sign_with_nonce(&id, &fresh, &[3; 32])
        .expect("committed before restart, unused");
    assert_eq!(&sig.as_ref()[..32], &r_fresh.serialize());
    assert_eq!(
        hsm.sign_with_nonce(&id, &fresh, &[3; 32])
            .expect("the same message again"),
        sig,
        "a retry returns the same signature"
    );
    assert!(matches!(
        hsm.sign_with_nonce(&id, &fresh, &[4; 32]),
        Err(HsmError::NonceAlreadyUsed { .. })
    ));
}

#[test]
fn nonce_race_between_two_handles_on_one_store() {
    let f = fixture();
    let id = secp_key(&f.hsm, "oracle");
    let other = reopen(&f.store);
    for round in 0..8 {
        let n = label(&format!("n{round}"));
        f.hsm.commit_nonce(&id, &n).expect("commit");
        let (a, b) = std::thread::scope(|s| {
            let ha = s.spawn(|| f.hsm.sign_with_nonce(&id, &n, &[1; 32]));
            let hb = s.spawn(|| other.sign_with_nonce(&id, &n, &[2; 32]));
            (ha.join().expect("thread"), hb.join().expect("thread"))
        });
        assert!(a.is_ok() ^ b.is_ok(), "exactly one handle signs: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert!(matches!(loser, Err(HsmError::NonceAlreadyUsed { .. })));
    }
    f.hsm.verify_audit_chain().expect("two writers, one chain");
}

#[test]
fn concurrent_appends_from_two_handles_do_not_fork_the_chain() {
    let f = fixture();
    let id = secp_key(&f.hsm, "k");
    let other = reopen(&f.store);
    let before = f.hsm.verify_audit_chain().expect("chain").records;
    std::thread::scope(|s| {
        for h in [&f.hsm, &other, &f.hsm, &other] {
            let id = &id;
            s.spawn(move || {
                for i in 0..10u8 {
                    h.sign_schnorr(KeyRef::Key(id), &[i; 32], AuxRand::Fresh).expect("sign");
                }
            });
        }
    });
    assert_eq!(f.hsm.verify_audit_chain().expect("chain").records, before + 40);
}

/// A store with a chain of `n` sign records, and the audit namespaces.
fn chain(n: usize) -> (common::Fixture, Namespace, Namespace, u64) {
    let f = fixture();
    let id = secp_key(&f.hsm, "k");
    for i in 0..n {
        f.hsm.sign_ecdsa(KeyRef::Key(&id), &[i as u8; 32]).expect("sign");
    }
    let records = f.hsm.verify_audit_chain().expect("chain").records;
    (
        f,
        Namespace::new("anya.hsm.audit").expect("ns"),
        Namespace::new("anya.hsm.audit-head").expect("ns"),
        records,
    )
}

fn broken(f: &common::Fixture) -> (u64, AuditBreak) {
    match f.hsm.verify_audit_chain() {
        Err(HsmError::AuditChainBroken { seq, reason }) => (seq, reason),
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[test]
fn audit_detects_an_edited_record() {
    let (f, ns, _, _) = chain(5);
    let mut rec = f
        .store
        .get(&ns, &3u64.to_be_bytes())
        .expect("get")
        .expect("record 3")
        .value;
    rec[45] ^= 1; // a byte of the timestamp
    f.store.put(&ns, &3u64.to_be_bytes(), &rec).expect("put");
    assert_eq!(broken(&f), (4, AuditBreak::PrevHashMismatch));
}

#[test]
fn audit_detects_an_edited_last_record() {
    let (f, ns, _, n) = chain(5);
    let mut rec = f.store.get(&ns, &n.to_be_bytes()).expect("get").expect("last").value;
    let len = rec.len();
    rec[len - 1] ^= 1; // a byte of the input hash
    f.store.put(&ns, &n.to_be_bytes(), &rec).expect("put");
    assert_eq!(broken(&f), (n, AuditBreak::HeadMismatch));
}

#[test]
fn audit_detects_a_deleted_record() {
    let (f, ns, _, n) = chain(5);
    f.store.delete(&ns, &3u64.to_be_bytes()).expect("delete");
    assert_eq!(broken(&f), (3, AuditBreak::Gap));
    let (f, ns, _, _) = chain(5);
    f.store.delete(&ns, &n.to_be_bytes()).expect("delete tail");
    assert_eq!(broken(&f).1, AuditBreak::HeadMismatch);
}

#[test]
fn audit_detects_an_inserted_record() {
    // Appended past the head.
    let (f, ns, _, n) = chain(5);
    let last = f.store.get(&ns, &n.to_be_bytes()).expect("get").expect("last").value;
    f.store.put(&ns, &(n + 1).to_be_bytes(), &last).expect("put");
    assert_eq!(broken(&f), (n + 1, AuditBreak::SequenceMismatch));
    // Inserted in the middle, later records renumbered.
    let (f, ns, _, n) = chain(5);
    for seq in (3..=n).rev() {
        let v = f
            .store
            .get(&ns, &seq.to_be_bytes())
            .expect("get")
            .expect("record")
            .value;
        f.store.put(&ns, &(seq + 1).to_be_bytes(), &v).expect("shift");
    }
    let two = f
        .store
        .get(&ns, &2u64.to_be_bytes())
        .expect("get")
        .expect("record 2")
        .value;
    f.store.put(&ns, &3u64.to_be_bytes(), &two).expect("insert");
    assert!(matches!(broken(&f), (3, AuditBreak::SequenceMismatch)));
}

#[test]
fn audit_detects_reordered_records() {
    let (f, ns, _, _) = chain(5);
    let two = f.store.get(&ns, &2u64.to_be_bytes()).expect("get").expect("2").value;
    let three = f.store.get(&ns, &3u64.to_be_bytes()).expect("get").expect("3").value;
    f.store.put(&ns, &2u64.to_be_bytes(), &three).expect("put");
    f.store.put(&ns, &3u64.to_be_bytes(), &two).expect("put");
    assert_eq!(broken(&f), (2, AuditBreak::SequenceMismatch));
}

#[test]
fn audit_detects_a_damaged_head() {
    let (f, _, head_ns, _) = chain(2);
    f.store.delete(&head_ns, b"audit-head").expect("delete head");
    assert_eq!(broken(&f).1, AuditBreak::BadHead);
}

#[test]
fn buffered_audit_is_durable_only_after_flush() {
    let f = common::fixture_with(common::buffered_options());
    let id = secp_key(&f.hsm, "k");
    for i in 0..10u8 {
        f.hsm
            .sign_schnorr(KeyRef::Key(&id), &[i; 32], AuxRand::Fresh)
            .expect("sign");
    }
    // Nothing flushed yet: the store holds no record (create, generate and 10 signs pending).
    assert_eq!(f.hsm.audit_records(0, 100).expect("records").len(), 0);
    f.hsm.flush_audit().expect("flush");
    assert_eq!(f.hsm.audit_records(0, 100).expect("records").len(), 12);
    f.hsm
        .sign_schnorr(KeyRef::Key(&id), &[0; 32], AuxRand::Fresh)
        .expect("sign");
    drop(f.hsm); // drop flushes
    let hsm = reopen(&f.store);
    // 12 + 1 sign, then this handle's unlock.
    assert_eq!(hsm.verify_audit_chain().expect("chain").records, 14);
}

#[test]
fn policy_survives_restart_and_is_sealed() {
    let f = fixture();
    let id = label("nonexport");
    f.hsm
        .generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
        .expect("generate");
    drop(f.hsm);
    // Flip the exportable byte of the stored header.
    let ns = Namespace::new("anya.hsm.keys").expect("ns");
    let mut entry = f.store.get(&ns, b"nonexport").expect("get").expect("entry").value;
    entry[7] = 1;
    f.store.put(&ns, b"nonexport", &entry).expect("put");
    let hsm = reopen(&f.store);
    let r = hsm.export_key(&id);
    // The audit chain recorded the entry's digest, so the edit is caught before unsealing
    // (AES-GCM's tag over the header would catch it next: tests/sealed_entries.rs).
    assert!(matches!(r, Err(HsmError::StaleEntry { .. })), "{r:?}");
}

#[test]
fn actor_is_recorded() {
    let f = fixture();
    let ops = f.hsm.as_actor(label("treasury-ops"));
    let id = secp_key(&ops, "k");
    let secp = Secp256k1::verification_only();
    let sig = ops.sign_ecdsa(KeyRef::Key(&id), &[1; 32]).expect("sign");
    let anya_hsm::PublicKey::Secp256k1(pk) = ops.public_key(KeyRef::Key(&id)).expect("pk") else {
        panic!()
    };
    secp.verify_ecdsa(&Message::from_digest([1; 32]), &sig, &pk)
        .expect("verifies");
    let records = f.hsm.audit_records(0, 100).expect("records");
    assert_eq!(records[0].actor.as_str(), "anya");
    assert!(records[1..].iter().all(|r| r.actor.as_str() == "treasury-ops"));
}

#[test]
fn p256_keys_survive_a_restart_and_import_in_canonical_form() {
    use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    let f = fixture();
    let generated = label("p256-gen");
    f.hsm
        .generate_key(&generated, KeySpec::P256, KeyPolicy::default_for(KeySpec::P256))
        .expect("generate");
    let Ok(anya_hsm::PublicKey::P256(pk)) = f.hsm.public_key(KeyRef::Key(&generated)) else {
        panic!("p-256 key")
    };

    // The same key, unsealed from the store by a fresh handle, signs for the same public key.
    let again = reopen(&f.store);
    let sig = again.sign_p256(&generated, b"after restart").expect("sign");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pk)
        .verify(b"after restart", &sig.0)
        .expect("verifies");

    // RFC 5915 lets the curve sit inside the ECPrivateKey too ([0] parameters); such a
    // document imports and exports in ring's layout.
    let rng = ring::rand::SystemRandom::new();
    let canonical =
        EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ring generates");
    let canonical = canonical.as_ref();
    let (scalar, point) = (&canonical[36..68], &canonical[73..]);
    let mut with_params = vec![0x30, 0x81, 0x93];
    with_params.extend_from_slice(&canonical[3..27]); // version and algorithm
    with_params.extend_from_slice(&[0x04, 0x79, 0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    with_params.extend_from_slice(scalar);
    with_params.extend_from_slice(&[0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
    with_params.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    with_params.extend_from_slice(point);
    let pair = EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &with_params, &rng)
        .expect("ring takes the variant");
    assert_eq!(pair.public_key().as_ref(), point);
    let imported = label("p256-openssl");
    f.hsm
        .import_key(
            &imported,
            KeyMaterial::P256Pkcs8(SecretBytes::new(with_params)),
            KeyPolicy::default_for(KeySpec::P256).exportable(),
        )
        .expect("import");
    assert_eq!(f.hsm.export_key(&imported).expect("export").expose(), canonical);
}
