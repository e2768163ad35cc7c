//! Shared test code: the dlcspecs vectors, the independent check of oracle messages
//! (`anya_testkit::dlc`), and an oracle on a software HSM with an anchor.

#![allow(dead_code, reason = "each test binary uses part of this module")]

/// The vectors directory, with a trailing slash.
pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors/");

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
