//! Shared test code: the dlcspecs vectors and an independent check of oracle messages.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use anya_layer2::dlc::messages::{OracleAnnouncement, OracleAttestation, OracleEvent};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use lightning::util::ser::Writeable;
use secp256k1::{schnorr, Message, Secp256k1, XOnlyPublicKey};

/// The vectors directory, with a trailing slash.
pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors/");

/// SHA256(SHA256(tag) ‖ SHA256(tag) ‖ data), the BIP340 tagged hash the spec signs, written here
/// from the spec rather than taken from ddk-messages.
pub fn tagged(tag: &str, data: &[u8]) -> Message {
    let t = sha256::Hash::hash(tag.as_bytes());
    let mut e = sha256::Hash::engine();
    e.input(t.as_ref());
    e.input(t.as_ref());
    e.input(data);
    Message::from_digest(sha256::Hash::from_engine(e).to_byte_array())
}

/// The BigSize encoding (BOLT 1) of `n`.
pub fn bigsize(n: u64) -> Vec<u8> {
    match n {
        0..=0xfc => vec![n as u8],
        0xfd..=0xffff => [&[0xfd][..], &(n as u16).to_be_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0xfe][..], &(n as u32).to_be_bytes()].concat(),
        _ => [&[0xff][..], &n.to_be_bytes()].concat(),
    }
}

/// `type ‖ length ‖ value`, as the spec's TLV streams write a message.
pub fn tlv(ty: u64, value: &[u8]) -> Vec<u8> {
    [bigsize(ty), bigsize(value.len() as u64), value.to_vec()].concat()
}

/// The spec's `oracle_event` TLV (type 55330) of `event`.
pub fn event_tlv(event: &OracleEvent) -> Vec<u8> {
    tlv(55330, &event.encode())
}

/// Verifies an announcement with secp256k1 alone: its signature over the tagged hash of its
/// event TLV, and its nonce count.
pub fn verify_announcement(a: &OracleAnnouncement) -> Result<(), String> {
    let secp = Secp256k1::verification_only();
    let msg = tagged("DLC/oracle/announcement/v0", &event_tlv(&a.oracle_event));
    secp.verify_schnorr(&a.announcement_signature, &msg, &a.oracle_public_key)
        .map_err(|e| format!("announcement signature: {e}"))
}

/// Verifies an attestation with secp256k1 alone against its announcement: one signature per
/// nonce, each over the tagged hash of its outcome, each with the announced nonce as R.
pub fn verify_attestation(a: &OracleAttestation, ann: &OracleAnnouncement) -> Result<(), String> {
    let secp = Secp256k1::verification_only();
    let nonces = &ann.oracle_event.oracle_nonces;
    if a.signatures.len() != nonces.len() || a.outcomes.len() != nonces.len() {
        return Err(format!(
            "{} signatures, {} outcomes for {} nonces",
            a.signatures.len(),
            a.outcomes.len(),
            nonces.len()
        ));
    }
    if a.oracle_public_key != ann.oracle_public_key || a.event_id != ann.oracle_event.event_id {
        return Err("not this announcement's oracle or event".into());
    }
    for (i, ((sig, outcome), nonce)) in a.signatures.iter().zip(&a.outcomes).zip(nonces).enumerate() {
        let msg = tagged("DLC/oracle/attestation/v0", outcome.as_bytes());
        secp.verify_schnorr(sig, &msg, &a.oracle_public_key)
            .map_err(|e| format!("signature {i}: {e}"))?;
        let r = XOnlyPublicKey::from_slice(&sig.as_ref()[..32]).map_err(|e| format!("R {i}: {e}"))?;
        if r != *nonce {
            return Err(format!("signature {i} does not use nonce {i}"));
        }
    }
    Ok(())
}

/// A signature with one bit of `s` flipped.
pub fn tampered(sig: &schnorr::Signature) -> schnorr::Signature {
    let mut b = *sig.as_ref();
    b[63] ^= 1;
    schnorr::Signature::from_slice(&b).expect("64 bytes")
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anya_core_types::{Clock, UnixTime};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{HsmProvider, KdfParams, SecretString, SoftwareHsm, SoftwareOptions};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};

/// The keystore passphrase of the tests.
pub const PASS: &str = "oracle test passphrase";

/// A clock the test sets.
#[derive(Debug, Default)]
pub struct TestClock(AtomicU64);

impl TestClock {
    /// A clock at `secs`.
    pub fn at(secs: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(secs)))
    }
    /// Moves it to `secs`.
    pub fn set(&self, secs: u64) {
        self.0.store(secs, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(self.0.load(Ordering::SeqCst))
    }
}

/// Software-HSM options with a rollback anchor in `dir` and test-speed Argon2.
pub fn hsm_options(dir: &std::path::Path) -> SoftwareOptions {
    let anchor = FileAnchor::open(dir.join("anchor")).expect("anchor");
    SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_anchor(Arc::new(anchor))
}

/// A SQLite store, a software HSM with an anchor, and an oracle on them, in a temp directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn KvStore>,
    pub hsm: Arc<SoftwareHsm>,
    pub clock: Arc<TestClock>,
    pub oracle: Oracle,
}

impl Fixture {
    /// A new one, the clock at `now`.
    pub fn new(now: u64) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("oracle.db"), SqliteOptions::default()).expect("sqlite"));
        let hsm = Arc::new(
            SoftwareHsm::create(Arc::clone(&store), &SecretString::from(PASS), hsm_options(dir.path()))
                .expect("keystore"),
        );
        let clock = TestClock::at(now);
        let oracle = Oracle::open(
            Arc::clone(&hsm) as Arc<dyn HsmProvider>,
            Arc::clone(&store),
            Arc::clone(&clock) as Arc<dyn Clock>,
            OracleOptions::default(),
        )
        .expect("oracle");
        Self {
            dir,
            store,
            hsm,
            clock,
            oracle,
        }
    }

    /// The oracle again, on a freshly opened and unlocked HSM (as after a restart).
    pub fn reopen(&self) -> Result<Oracle, anya_layer2::dlc::OracleError> {
        let hsm = SoftwareHsm::open(Arc::clone(&self.store), hsm_options(self.dir.path()))?;
        hsm.unlock(&SecretString::from(PASS))?;
        Oracle::open(
            Arc::new(hsm),
            Arc::clone(&self.store),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
            OracleOptions::default(),
        )
    }
}
