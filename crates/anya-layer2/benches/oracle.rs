//! The DLC oracle against bare secp256k1 making the same signatures, in the same run.
//!
//! `oracle/anya/*` is [`Oracle`] as deployed: a `SoftwareHsm` with durable audit and a
//! `FileAnchor`, on a `SqliteStore` (WAL, `synchronous=FULL`), both in a temporary directory on
//! the machine's disk. Every iteration announces a new event or attests a fresh one (an event is
//! announced once and attested once), so every timed call does all its durable writes.
//!
//! `oracle/raw/*` is secp256k1 alone, nothing stored:
//! - an announcement draws its nonces (`k` from the OS, `R = kG` with even y, as the HSM does)
//!   and signs `tagged_announcement_msg` of the same event with BIP340;
//! - an attestation signs `tagged_attestation_msg(outcome)` with BIP340 and a *given* nonce `k`,
//!   computed as the HSM does (`s = k + e·d` with secp256k1's scalar API, since secp256k1 0.29
//!   has no custom-nonce Schnorr call), for 1 and for 20 outcomes.
//!
//! Where the time goes:
//! - `oracle_tmpfs/*` is the same four anya operations with the SQLite file and the anchor on
//!   tmpfs (`/dev/shm`), where `fsync` costs nothing: what is left is CPU and system calls;
//! - `oracle_parts/{disk,tmpfs}/*` times, on each, the pieces the operations are built from:
//!   the HSM's `commit_nonce`, `sign_with_nonce` and (the announcement's) `sign_schnorr`, one
//!   durable audit record alone (`record_decision`), one store compare-and-swap, one
//!   `FileAnchor` nonce record and one anchor head move; and one BIP340 verification (the HSM
//!   and the oracle each check every signature they make).
#![allow(clippy::print_stderr, reason = "a skipped bench group says so on stderr")]

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anya_core_types::{Clock, SystemClock};
use anya_hsm::anchor::{AnchorPoint, FileAnchor, RollbackAnchor};
use anya_hsm::software::bip340_sign_with_nonce;
use anya_hsm::{AuxRand, HsmProvider, KdfParams, KeyId, KeyRef, Label, SecretString, SoftwareHsm, SoftwareOptions};
use anya_layer2::dlc::digits::Digits;
use anya_layer2::dlc::messages::{
    tagged_announcement_msg, tagged_attestation_msg, DigitDecompositionEventDescriptor, EnumEventDescriptor,
    EventDescriptor, OracleAnnouncement, OracleAttestation, OracleEvent,
};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, Namespace, SqliteOptions, SqliteStore};
use bitcoin::hashes::{sha256, Hash};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::OsRng;
use rand::RngCore;
use secp256k1::{schnorr, All, Keypair, Parity, Secp256k1, SecretKey, XOnlyPublicKey};

/// A maturity in the past (2023-11-14), so every event may be attested at once.
const MATURITY: u32 = 1_700_000_000;
/// The numeric events' digits: base 2, unsigned, 20 digits (values up to 1,048,575).
const NB_DIGITS: u16 = 20;
/// The value numeric events are attested for (its 20 binary digits are the outcomes).
const VALUE: i64 = 43_210;
/// The enum events' outcomes; `yes` is attested.
const OUTCOMES: [&str; 3] = ["yes", "no", "void"];

fn outcomes() -> Vec<String> {
    OUTCOMES.iter().map(|o| (*o).to_owned()).collect()
}

fn numeric_descriptor() -> DigitDecompositionEventDescriptor {
    DigitDecompositionEventDescriptor {
        base: 2,
        is_signed: false,
        unit: "usd".to_owned(),
        precision: 0,
        nb_digits: NB_DIGITS,
    }
}

fn digits() -> Vec<String> {
    Digits::new(2, NB_DIGITS, false)
        .expect("20 unsigned binary digits are a valid layout")
        .decompose(VALUE)
}

fn label(s: String) -> Label {
    Label::new(s).expect("bench labels are short and printable")
}

/// An oracle on a software HSM (durable audit, `FileAnchor`) and a SQLite store in one
/// temporary directory.
struct Fixture {
    oracle: Oracle,
    hsm: Arc<SoftwareHsm>,
    store: Arc<dyn KvStore>,
    key: KeyId,
    next: AtomicU64,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(dir: tempfile::TempDir) -> Self {
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("oracle.db"), SqliteOptions::default()).expect("sqlite store"));
        let anchor = FileAnchor::open(dir.path().join("anchor")).expect("file anchor");
        let options = SoftwareOptions::default()
            .with_kdf(KdfParams::insecure_for_tests())
            .with_anchor(Arc::new(anchor));
        let hsm =
            Arc::new(SoftwareHsm::create(Arc::clone(&store), &SecretString::from("bench"), options).expect("keystore"));
        let oracle = Oracle::open(
            Arc::clone(&hsm) as Arc<dyn HsmProvider>,
            Arc::clone(&store),
            Arc::new(SystemClock) as Arc<dyn Clock>,
            OracleOptions::default(),
        )
        .expect("oracle");
        let key = oracle.key_id().clone();
        Self {
            oracle,
            hsm,
            store,
            key,
            next: AtomicU64::new(0),
            dir,
        }
    }

    /// A fixture on the disk (the system temporary directory).
    fn on_disk() -> Self {
        Self::new(tempfile::tempdir().expect("temp dir"))
    }

    /// A fixture on tmpfs, if the machine has `/dev/shm`.
    fn on_tmpfs() -> Option<Self> {
        let shm = Path::new("/dev/shm");
        shm.is_dir()
            .then(|| Self::new(tempfile::tempdir_in(shm).expect("temp dir in /dev/shm")))
    }

    /// A number no earlier call returned: event ids and nonce labels are used once.
    fn unique(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn event_id(&self) -> String {
        format!("bench{}", self.unique())
    }

    fn announce_enum(&self) -> String {
        let id = self.event_id();
        self.oracle
            .create_enum_event(&id, MATURITY, outcomes())
            .expect("announce enum event");
        id
    }

    fn announce_numeric(&self) -> String {
        let id = self.event_id();
        self.oracle
            .create_numeric_event(&id, MATURITY, numeric_descriptor())
            .expect("announce numeric event");
        id
    }
}

/// The four oracle operations on `f`, named `{prefix}/<operation>`.
fn anya_ops(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, prefix: &str, f: &Fixture) {
    g.bench_function(format!("{prefix}/announce_enum"), |b| {
        b.iter(|| black_box(f.announce_enum()));
    });
    g.bench_function(format!("{prefix}/attest_enum"), |b| {
        b.iter_batched(
            || f.announce_enum(),
            |id| f.oracle.attest_enum(&id, "yes").expect("attest enum event"),
            BatchSize::SmallInput,
        );
    });
    g.bench_function(format!("{prefix}/announce_numeric20"), |b| {
        b.iter(|| black_box(f.announce_numeric()));
    });
    g.bench_function(format!("{prefix}/attest_numeric20"), |b| {
        b.iter_batched(
            || f.announce_numeric(),
            |id| f.oracle.attest_numeric(&id, VALUE).expect("attest numeric event"),
            BatchSize::SmallInput,
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Bare secp256k1.

/// A fresh nonce from the OS: `k` with `R = kG` of even y, and `R`.
fn raw_nonce(secp: &Secp256k1<All>) -> (SecretKey, XOnlyPublicKey) {
    loop {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let Ok(k) = SecretKey::from_slice(&bytes) else {
            continue;
        };
        let (r, parity) = k.x_only_public_key(secp);
        return (if parity == Parity::Odd { k.negate() } else { k }, r);
    }
}

/// The raw announcement: `count` fresh nonces and the BIP340 signature of the event.
fn raw_announce(
    secp: &Secp256k1<All>,
    keypair: &Keypair,
    event_id: &str,
    descriptor: EventDescriptor,
    count: usize,
) -> (OracleAnnouncement, Vec<SecretKey>) {
    let (ks, nonces): (Vec<_>, Vec<_>) = (0..count).map(|_| raw_nonce(secp)).unzip();
    let oracle_event = OracleEvent {
        oracle_nonces: nonces,
        event_maturity_epoch: MATURITY,
        event_descriptor: descriptor,
        event_id: event_id.to_owned(),
    };
    let msg = tagged_announcement_msg(&oracle_event);
    let mut aux = [0u8; 32];
    OsRng.fill_bytes(&mut aux);
    let announcement = OracleAnnouncement {
        announcement_signature: secp.sign_schnorr_with_aux_rand(&msg, keypair, &aux),
        oracle_public_key: keypair.x_only_public_key().0,
        oracle_event,
    };
    (announcement, ks)
}

/// The raw attestation: one signature per outcome with its nonce.
fn raw_attest(
    secp: &Secp256k1<All>,
    keypair: &Keypair,
    ks: &[SecretKey],
    outcomes: &[String],
) -> Vec<schnorr::Signature> {
    ks.iter()
        .zip(outcomes)
        .map(|(k, outcome)| {
            // The same arithmetic the software provider uses, without its store or audit.
            bip340_sign_with_nonce(
                secp,
                keypair,
                &k.secret_bytes(),
                tagged_attestation_msg(outcome).as_ref(),
            )
            .expect("a BIP340 signature")
        })
        .collect()
}

fn enum_descriptor() -> EventDescriptor {
    EventDescriptor::EnumEvent(EnumEventDescriptor { outcomes: outcomes() })
}

/// Proves the raw path right once, outside the timing: its announcements and attestations pass
/// the same dlcspecs checks the oracle's do, and each signature uses its announced nonce.
fn check_raw(secp: &Secp256k1<All>, keypair: &Keypair) {
    let cases = [
        (enum_descriptor(), 1, vec!["yes".to_owned()]),
        (
            EventDescriptor::DigitDecompositionEvent(numeric_descriptor()),
            20,
            digits(),
        ),
    ];
    for (descriptor, count, outcomes) in cases {
        let (announcement, ks) = raw_announce(secp, keypair, "check", descriptor, count);
        announcement.validate(secp).expect("raw announcement verifies");
        let signatures = raw_attest(secp, keypair, &ks, &outcomes);
        for ((sig, outcome), nonce) in signatures
            .iter()
            .zip(&outcomes)
            .zip(&announcement.oracle_event.oracle_nonces)
        {
            secp.verify_schnorr(sig, &tagged_attestation_msg(outcome), &announcement.oracle_public_key)
                .expect("raw attestation signature verifies");
            assert_eq!(
                &sig.as_ref()[..32],
                &nonce.serialize(),
                "signature uses its announced nonce"
            );
        }
        let attestation = OracleAttestation {
            event_id: "check".to_owned(),
            oracle_public_key: announcement.oracle_public_key,
            signatures,
            outcomes,
        };
        attestation
            .validate(secp, &announcement)
            .expect("raw attestation passes dlcspecs validation");
    }
}

// ---------------------------------------------------------------------------------------------
// Groups.

fn oracle(c: &mut Criterion) {
    let secp = Secp256k1::new();
    let keypair = Keypair::from_seckey_slice(&secp, &[0x42; 32]).expect("a valid secret key");
    check_raw(&secp, &keypair);
    let disk = Fixture::on_disk();

    let mut g = c.benchmark_group("oracle");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    anya_ops(&mut g, "anya", &disk);

    g.bench_function("raw/announce_enum", |b| {
        b.iter(|| raw_announce(&secp, &keypair, "bench", enum_descriptor(), 1));
    });
    let one_k = vec![raw_nonce(&secp).0];
    let yes = vec!["yes".to_owned()];
    g.bench_function("raw/attest_enum", |b| {
        b.iter(|| raw_attest(&secp, &keypair, black_box(&one_k), black_box(&yes)));
    });
    g.bench_function("raw/announce_numeric20", |b| {
        b.iter(|| {
            raw_announce(
                &secp,
                &keypair,
                "bench",
                EventDescriptor::DigitDecompositionEvent(numeric_descriptor()),
                usize::from(NB_DIGITS),
            )
        });
    });
    let ks: Vec<SecretKey> = (0..NB_DIGITS).map(|_| raw_nonce(&secp).0).collect();
    let digit_outcomes = digits();
    g.bench_function("raw/attest_numeric20", |b| {
        b.iter(|| raw_attest(&secp, &keypair, black_box(&ks), black_box(&digit_outcomes)));
    });
    g.finish();
}

fn oracle_tmpfs(c: &mut Criterion) {
    let Some(tmpfs) = Fixture::on_tmpfs() else {
        eprintln!("oracle_tmpfs skipped: no /dev/shm");
        return;
    };
    let mut g = c.benchmark_group("oracle_tmpfs");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    anya_ops(&mut g, "anya", &tmpfs);
    g.finish();
}

/// The pieces of the oracle's operations, on `f`'s HSM, store and a `FileAnchor` beside them.
fn parts(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, prefix: &str, f: &Fixture) {
    g.bench_function(format!("{prefix}/hsm_commit_nonce"), |b| {
        b.iter(|| {
            f.hsm
                .commit_nonce(&f.key, &label(format!("c{}", f.unique())))
                .expect("commit nonce")
        });
    });
    let message = *tagged_attestation_msg("yes").as_ref();
    g.bench_function(format!("{prefix}/hsm_sign_with_nonce"), |b| {
        b.iter_batched(
            || {
                let nonce = label(format!("s{}", f.unique()));
                f.hsm.commit_nonce(&f.key, &nonce).expect("commit nonce");
                nonce
            },
            |nonce| {
                f.hsm
                    .sign_with_nonce(&f.key, &nonce, black_box(&message))
                    .expect("sign with nonce")
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function(format!("{prefix}/hsm_sign_schnorr"), |b| {
        b.iter(|| {
            f.hsm
                .sign_schnorr(KeyRef::Key(&f.key), black_box(&message), AuxRand::Fresh)
                .expect("sign schnorr")
        });
    });
    g.bench_function(format!("{prefix}/hsm_audit_record"), |b| {
        b.iter(|| {
            f.hsm
                .record_decision(Some(&f.key), black_box(&message), 0)
                .expect("durable audit record")
        });
    });
    // The compare-and-swap "only if absent" the oracle does for an outcome and an attestation,
    // with an outcome record's size, on the same store.
    let ns = Namespace::new("bench.cas").expect("a valid namespace");
    let value = [0x5a_u8; 64];
    g.bench_function(format!("{prefix}/store_cas_insert"), |b| {
        b.iter(|| {
            let key = format!("o/{}", f.unique());
            f.store
                .compare_and_swap(&ns, key.as_bytes(), None, Some(&value))
                .expect("compare and swap")
        });
    });
    // A second anchor in the same file system, apart from the HSM's.
    let anchor = FileAnchor::open(f.dir.path().join("bench-anchor")).expect("file anchor");
    g.bench_function(format!("{prefix}/file_anchor_consume"), |b| {
        b.iter(|| {
            let nonce = sha256::Hash::hash(&f.unique().to_be_bytes()).to_byte_array();
            anchor.consume(&nonce, &message).expect("anchor consume");
        });
    });
    g.bench_function(format!("{prefix}/file_anchor_advance"), |b| {
        b.iter(|| {
            let seq = f.unique() + 1;
            anchor
                .advance(&AnchorPoint { seq, hash: message })
                .expect("anchor advance");
        });
    });
}

fn oracle_parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("oracle_parts");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    parts(&mut g, "disk", &Fixture::on_disk());
    match Fixture::on_tmpfs() {
        Some(tmpfs) => parts(&mut g, "tmpfs", &tmpfs),
        None => eprintln!("oracle_parts/tmpfs skipped: no /dev/shm"),
    }

    let secp = Secp256k1::new();
    let keypair = Keypair::from_seckey_slice(&secp, &[0x42; 32]).expect("a valid secret key");
    let (pk, _) = keypair.x_only_public_key();
    let msg = tagged_attestation_msg("yes");
    let sig =
        bip340_sign_with_nonce(&secp, &keypair, &raw_nonce(&secp).0.secret_bytes(), msg.as_ref()).expect("a signature");
    g.bench_function("verify_schnorr", |b| {
        b.iter(|| {
            secp.verify_schnorr(black_box(&sig), black_box(&msg), &pk)
                .expect("verifies")
        });
    });
    g.finish();
}

/// No plots: drawing them took longer than the measurements on two cores.
fn config() -> Criterion {
    Criterion::default().without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = oracle, oracle_tmpfs, oracle_parts
}
criterion_main!(benches);
