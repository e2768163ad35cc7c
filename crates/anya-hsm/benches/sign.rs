//! SoftwareHsm signing against the bare libraries it wraps, in the same run.
//!
//! `anya/*` uses an unlocked key with audit records buffered (`max_pending` 1024, written by the
//! background flusher); `bip340_durable_audit` shows the cost of one durable audit record per
//! signature, alone and with 8 signing threads, beside one bare durable store write.
//! `raw/*` calls secp256k1 or ring directly with the same key (for `p256`: ring's
//! `EcdsaKeyPair` with `ECDSA_P256_SHA256_FIXED_SIGNING`, loaded from the PKCS#8 document
//! imported into the provider).
//!
//! `rollback_anchor/*` is BIP340 signing with the keyed audit head and a rollback anchor moved
//! after every write (a `FileAnchor` directory, or a `StoreAnchor` in a second SQLite store), in
//! both audit modes, and one-time-nonce signing with and without the anchor, beside the same
//! signing without an anchor.
//!
//! `pkcs11/*` signs on a PKCS#11 token (SoftHSM2 as `.ci/softhsm.sh` sets it up:
//! `ANYA_TEST_PKCS11_MODULE`, `ANYA_TEST_PKCS11_PIN`, `ANYA_TEST_PKCS11_TOKEN_LABEL`) beside the
//! software provider with the same keys and the same audit mode; without a module it is skipped.
#![allow(clippy::print_stderr, reason = "a skipped bench group says so on stderr")]

use std::sync::{Arc, OnceLock};

use anya_hsm::anchor::{FileAnchor, RollbackAnchor, StoreAnchor};
use anya_hsm::{
    AuditMode, AuxRand, HsmProvider, KdfParams, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, Pkcs11Hsm,
    Pkcs11Options, SecretBytes, SecretString, SoftwareHsm, SoftwareOptions,
};
use anya_storage::{KvStore, Namespace, SqliteOptions, SqliteStore};
use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv};
use bitcoin::key::TapTweak;
use bitcoin::NetworkKind;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use secp256k1::{Keypair, Message, Secp256k1};

const SECRET: [u8; 32] = [0x42; 32];
const SEED: [u8; 32] = [0x17; 32];

/// One P-256 key for the whole run, as the PKCS#8 document every provider imports.
fn p256_pkcs8() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("ring generates a p-256 key")
            .as_ref()
            .to_vec()
    })
}

struct Bench {
    hsm: SoftwareHsm,
    _dir: tempfile::TempDir,
}

fn hsm(audit: AuditMode) -> Bench {
    hsm_with(audit, None)
}

fn hsm_with(audit: AuditMode, anchor: Option<Arc<dyn RollbackAnchor>>) -> Bench {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("hsm.db"), SqliteOptions::default()).expect("store");
    let mut options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_audit(audit);
    if let Some(anchor) = anchor {
        options = options.with_anchor(anchor);
    }
    let hsm = SoftwareHsm::create(Arc::new(store), &SecretString::from("bench"), options).expect("create");
    let policy = KeyPolicy::default_for(KeySpec::Secp256k1);
    hsm.import_key(
        &label("secp"),
        KeyMaterial::Secp256k1(SecretBytes::from_slice(&SECRET)),
        policy,
    )
    .expect("import");
    hsm.import_key(
        &label("ed"),
        KeyMaterial::Ed25519(SecretBytes::from_slice(&SECRET)),
        KeyPolicy::default_for(KeySpec::Ed25519),
    )
    .expect("import");
    hsm.import_key(
        &label("hd"),
        KeyMaterial::Bip32Seed(SecretBytes::from_slice(&SEED)),
        KeyPolicy::default_for(KeySpec::Bip32Root),
    )
    .expect("import");
    hsm.import_key(
        &label("p256"),
        KeyMaterial::P256Pkcs8(SecretBytes::from_slice(p256_pkcs8())),
        KeyPolicy::default_for(KeySpec::P256),
    )
    .expect("import");
    Bench { hsm, _dir: dir }
}

fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

fn signing(c: &mut Criterion) {
    let b = hsm(AuditMode::Buffered { max_pending: 1024 });
    let secp = Secp256k1::new();
    let keypair = Keypair::from_seckey_slice(&secp, &SECRET).expect("key");
    let secp_id = label("secp");
    let msg = [7u8; 32];
    let aux = [9u8; 32];

    let mut g = c.benchmark_group("bip340");
    g.bench_function("anya", |bn| {
        bn.iter(|| {
            b.hsm
                .sign_schnorr(KeyRef::Key(&secp_id), black_box(&msg), AuxRand::Given(aux))
                .expect("sign")
        })
    });
    g.bench_function("raw", |bn| {
        bn.iter(|| secp.sign_schnorr_with_aux_rand(&Message::from_digest(*black_box(&msg)), &keypair, &aux))
    });
    g.finish();

    let mut g = c.benchmark_group("ecdsa");
    let sk = keypair.secret_key();
    g.bench_function("anya", |bn| {
        bn.iter(|| b.hsm.sign_ecdsa(KeyRef::Key(&secp_id), black_box(&msg)).expect("sign"))
    });
    g.bench_function("raw", |bn| {
        bn.iter(|| secp.sign_ecdsa(&Message::from_digest(*black_box(&msg)), &sk))
    });
    g.finish();

    let mut g = c.benchmark_group("ed25519");
    let ed = ring::signature::Ed25519KeyPair::from_seed_unchecked(&SECRET).expect("ed25519");
    let ed_id = label("ed");
    g.bench_function("anya", |bn| {
        bn.iter(|| b.hsm.sign_ed25519(&ed_id, black_box(&msg)).expect("sign"))
    });
    g.bench_function("raw", |bn| bn.iter(|| ed.sign(black_box(&msg))));
    g.finish();

    let mut g = c.benchmark_group("p256");
    let rng = ring::rand::SystemRandom::new();
    let p256 = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        p256_pkcs8(),
        &rng,
    )
    .expect("p-256");
    let p256_id = label("p256");
    g.bench_function("anya", |bn| {
        bn.iter(|| b.hsm.sign_p256(&p256_id, black_box(&msg)).expect("sign"))
    });
    g.bench_function("raw", |bn| bn.iter(|| p256.sign(&rng, black_box(&msg)).expect("sign")));
    g.finish();

    let mut g = c.benchmark_group("bip86_derive_and_sign");
    let hd_id = label("hd");
    let account_path: DerivationPath = "m/86'/0'/0'".parse().expect("path");
    let account = Xpriv::new_master(NetworkKind::Main, &SEED)
        .expect("master")
        .derive_priv(&secp, &account_path)
        .expect("account");
    let full: Vec<DerivationPath> = (0..64u32)
        .map(|i| format!("m/86'/0'/0'/0/{i}").parse().expect("path"))
        .collect();
    let mut i = 0usize;
    g.bench_function("anya", |bn| {
        bn.iter(|| {
            i = (i + 1) % full.len();
            b.hsm
                .sign_taproot_key_spend(
                    KeyRef::derived(&hd_id, &full[i]),
                    black_box(&msg),
                    None,
                    AuxRand::Given(aux),
                )
                .expect("sign")
        })
    });
    let mut j = 0u32;
    g.bench_function("raw", |bn| {
        bn.iter(|| {
            j = (j + 1) % 64;
            let tail = [ChildNumber::Normal { index: 0 }, ChildNumber::Normal { index: j }];
            let child = account.derive_priv(&secp, &tail).expect("derive");
            let tweaked = child.to_keypair(&secp).tap_tweak(&secp, None).to_keypair();
            secp.sign_schnorr_with_aux_rand(&Message::from_digest(*black_box(&msg)), &tweaked, &aux)
        })
    });
    g.finish();
    b.hsm.flush_audit().expect("flush");
}

fn durable(c: &mut Criterion) {
    let b = hsm(AuditMode::Durable);
    let secp_id = label("secp");
    let mut g = c.benchmark_group("bip340_durable_audit");
    g.sample_size(10);
    g.bench_function("anya", |bn| {
        bn.iter(|| {
            b.hsm
                .sign_schnorr(KeyRef::Key(&secp_id), black_box(&[7u8; 32]), AuxRand::Given([9; 32]))
                .expect("sign")
        })
    });
    // Time per signature with 8 threads signing at once on one handle: their records share
    // store writes (and fsyncs).
    g.bench_function("anya_8_threads", |bn| {
        bn.iter_custom(|iters| {
            let per_thread = iters.div_ceil(8);
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        for _ in 0..per_thread {
                            b.hsm
                                .sign_schnorr(KeyRef::Key(&secp_id), black_box(&[7u8; 32]), AuxRand::Given([9; 32]))
                                .expect("sign");
                        }
                    });
                }
            });
            start.elapsed().mul_f64(iters as f64 / (per_thread * 8) as f64)
        })
    });
    // The floor: one durable write of a record-sized value to a bare SqliteStore.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("raw.db"), SqliteOptions::default()).expect("store");
    let ns = Namespace::new("raw").expect("namespace");
    let mut n = 0u64;
    g.bench_function("raw_store_put", |bn| {
        bn.iter(|| {
            n += 1;
            store.put(&ns, &n.to_be_bytes(), &[0x5a; 150]).expect("put")
        })
    });
    g.finish();
}

/// A named anchor (or none) and the directory it lives in.
type NamedAnchor = (&'static str, Option<Arc<dyn RollbackAnchor>>, tempfile::TempDir);

/// The anchors the `rollback_anchor` group compares, each in a fresh temporary directory.
fn anchors() -> Vec<NamedAnchor> {
    let file_dir = tempfile::tempdir().expect("temp dir");
    let file: Arc<dyn RollbackAnchor> = Arc::new(FileAnchor::open(file_dir.path()).expect("file anchor"));
    let store_dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(store_dir.path().join("anchor.db"), SqliteOptions::default()).expect("store");
    let kv: Arc<dyn RollbackAnchor> = Arc::new(StoreAnchor::new(
        Arc::new(store),
        Namespace::new("anchor").expect("namespace"),
    ));
    vec![
        ("none", None, tempfile::tempdir().expect("temp dir")),
        ("file_anchor", Some(file), file_dir),
        ("store_anchor", Some(kv), store_dir),
    ]
}

fn rollback_anchor(c: &mut Criterion) {
    let secp_id = label("secp");
    let mut g = c.benchmark_group("rollback_anchor");
    g.sample_size(10);
    for (mode_name, mode) in [
        ("durable", AuditMode::Durable),
        ("buffered", AuditMode::Buffered { max_pending: 1024 }),
    ] {
        for (anchor_name, anchor, _dir) in anchors() {
            let b = hsm_with(mode, anchor);
            g.bench_function(format!("bip340_{mode_name}_{anchor_name}"), |bn| {
                bn.iter(|| {
                    b.hsm
                        .sign_schnorr(KeyRef::Key(&secp_id), black_box(&[7u8; 32]), AuxRand::Given([9; 32]))
                        .expect("sign")
                })
            });
        }
    }
    // One-time nonces: each iteration signs with a nonce committed beforehand (not timed).
    for (anchor_name, anchor, _dir) in anchors() {
        let b = hsm_with(AuditMode::Durable, anchor);
        let oracle = label("oracle");
        b.hsm
            .generate_key(&oracle, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
            .expect("oracle key");
        let mut next = 0u64;
        g.bench_function(format!("sign_with_nonce_durable_{anchor_name}"), |bn| {
            bn.iter_batched(
                || {
                    next += 1;
                    let nonce = label(&format!("n{next}"));
                    b.hsm.commit_nonce(&oracle, &nonce).expect("commit");
                    nonce
                },
                |nonce| {
                    b.hsm
                        .sign_with_nonce(&oracle, &nonce, black_box(&[7u8; 32]))
                        .expect("sign")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn unlock(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.path().join("hsm.db"), SqliteOptions::default()).expect("store"));
    let pass = SecretString::from("bench");
    // Default parameters: 64 MiB, 3 passes.
    let hsm = SoftwareHsm::create(Arc::clone(&store), &pass, SoftwareOptions::default()).expect("create");
    let mut g = c.benchmark_group("unlock");
    g.sample_size(10);
    g.bench_function("argon2id_64mib_3_passes", |bn| {
        bn.iter(|| hsm.unlock(&pass).expect("unlock"))
    });
    g.finish();
}

/// The token's keys, deleted when the group is done.
struct Token {
    hsm: Pkcs11Hsm,
    _dir: tempfile::TempDir,
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Ok(keys) = self.hsm.list_keys() {
            for key in keys {
                let _ = self.hsm.delete_key(&key.id);
            }
        }
    }
}

/// A provider on the configured token holding `SECRET` as secp256k1 (`secp`) and Ed25519 (`ed`)
/// keys and the run's P-256 key (`p256`), audit buffered as in `hsm`; `None` when no module is configured.
fn token() -> Option<Token> {
    let (Ok(module), Ok(pin)) = (
        std::env::var("ANYA_TEST_PKCS11_MODULE"),
        std::env::var("ANYA_TEST_PKCS11_PIN"),
    ) else {
        return None;
    };
    let token_label = std::env::var("ANYA_TEST_PKCS11_TOKEN_LABEL").unwrap_or_else(|_| "anya-test".to_owned());
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("token.db"), SqliteOptions::default()).expect("store");
    let options = Pkcs11Options::new(module, token_label, SecretString::new(pin))
        .with_label_prefix(format!("bench-{}/", std::process::id()))
        .with_audit(AuditMode::Buffered { max_pending: 1024 });
    let hsm = Pkcs11Hsm::open(Arc::new(store), options).expect("token opens and the pin logs in");
    let token = Token { hsm, _dir: dir };
    token
        .hsm
        .import_key(
            &label("secp"),
            KeyMaterial::Secp256k1(SecretBytes::from_slice(&SECRET)),
            KeyPolicy::default_for(KeySpec::Secp256k1),
        )
        .expect("import on the token");
    token
        .hsm
        .import_key(
            &label("ed"),
            KeyMaterial::Ed25519(SecretBytes::from_slice(&SECRET)),
            KeyPolicy::default_for(KeySpec::Ed25519),
        )
        .expect("import on the token");
    token
        .hsm
        .import_key(
            &label("p256"),
            KeyMaterial::P256Pkcs8(SecretBytes::from_slice(p256_pkcs8())),
            KeyPolicy::default_for(KeySpec::P256),
        )
        .expect("import on the token");
    Some(token)
}

fn pkcs11(c: &mut Criterion) {
    let Some(token) = token() else {
        eprintln!(
            "pkcs11: skipped, ANYA_TEST_PKCS11_MODULE and ANYA_TEST_PKCS11_PIN are unset (source .ci/softhsm.sh)"
        );
        return;
    };
    let b = hsm(AuditMode::Buffered { max_pending: 1024 });
    let (secp_id, ed_id) = (label("secp"), label("ed"));
    let msg = [7u8; 32];
    let mut g = c.benchmark_group("pkcs11");
    g.bench_function("ecdsa_token", |bn| {
        bn.iter(|| {
            token
                .hsm
                .sign_ecdsa(KeyRef::Key(&secp_id), black_box(&msg))
                .expect("sign")
        })
    });
    g.bench_function("ecdsa_software", |bn| {
        bn.iter(|| b.hsm.sign_ecdsa(KeyRef::Key(&secp_id), black_box(&msg)).expect("sign"))
    });
    g.bench_function("ed25519_token", |bn| {
        bn.iter(|| token.hsm.sign_ed25519(&ed_id, black_box(&msg)).expect("sign"))
    });
    g.bench_function("ed25519_software", |bn| {
        bn.iter(|| b.hsm.sign_ed25519(&ed_id, black_box(&msg)).expect("sign"))
    });
    let p256_id = label("p256");
    g.bench_function("p256_token", |bn| {
        bn.iter(|| token.hsm.sign_p256(&p256_id, black_box(&msg)).expect("sign"))
    });
    g.bench_function("p256_software", |bn| {
        bn.iter(|| b.hsm.sign_p256(&p256_id, black_box(&msg)).expect("sign"))
    });
    g.finish();
    token.hsm.flush_audit().expect("flush");
    b.hsm.flush_audit().expect("flush");
}

criterion_group!(benches, signing, durable, rollback_anchor, unlock, pkcs11);
criterion_main!(benches);
