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

/// One store backend of [`backends`], in a place of its own.
pub struct Backend {
    /// `sqlite`, `rocksdb` or `postgres`.
    pub name: &'static str,
    /// The open store.
    pub store: Arc<dyn KvStore>,
    /// Where the embedded backends keep their files.
    pub dir: tempfile::TempDir,
    /// The PostgreSQL schema, for reopening.
    schema: Option<(String, anya_storage::PostgresOptions)>,
}

impl Backend {
    /// Closes the store and opens the same database again. Every other handle on the store
    /// must be dropped first (RocksDB locks its directory).
    pub fn reopen(self) -> Self {
        let Backend {
            name,
            store,
            dir,
            schema,
        } = self;
        drop(store);
        let store = open_backend(name, dir.path(), schema.as_ref());
        Backend {
            name,
            store,
            dir,
            schema,
        }
    }

    /// For PostgreSQL, a second, independent connection to the same database (what a node
    /// moved to another machine opens); `None` for the embedded backends, whose files only
    /// one handle opens at a time.
    pub fn connect_again(&self) -> Option<Arc<dyn KvStore>> {
        self.schema
            .as_ref()
            .map(|schema| open_backend(self.name, self.dir.path(), Some(schema)))
    }
}

fn open_backend(
    name: &str,
    dir: &std::path::Path,
    schema: Option<&(String, anya_storage::PostgresOptions)>,
) -> Arc<dyn KvStore> {
    match (name, schema) {
        ("sqlite", _) => Arc::new(SqliteStore::open(dir.join("store.db"), SqliteOptions::default()).unwrap()),
        ("rocksdb", _) => Arc::new(
            anya_storage::RocksDbStore::open(dir.join("store"), anya_storage::RocksDbOptions::default()).unwrap(),
        ),
        (_, Some((url, options))) => Arc::new(anya_storage::PostgresStore::open(url, options.clone()).unwrap()),
        _ => unreachable!("a backend of this module"),
    }
}

/// SQLite, RocksDB and, when `ANYA_TEST_POSTGRES_URL` is set (required in CI), PostgreSQL in
/// a fresh schema named after `tag`: each a new, empty store. Open (and drop) them outside any
/// tokio runtime: the PostgreSQL client runs one of its own.
pub fn backends(tag: &str) -> Vec<Backend> {
    let mut out = Vec::new();
    for name in ["sqlite", "rocksdb"] {
        let dir = tempfile::tempdir().unwrap();
        let store = open_backend(name, dir.path(), None);
        out.push(Backend {
            name,
            store,
            dir,
            schema: None,
        });
    }
    if let Some(url) = anya_testkit::require_env("ANYA_TEST_POSTGRES_URL", ".ci/run starts PostgreSQL") {
        let mut options = anya_storage::PostgresOptions::default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        options.schema = format!("{tag}_{}_{nanos}", std::process::id());
        let schema = (url, options);
        let dir = tempfile::tempdir().unwrap();
        let store = open_backend("postgres", dir.path(), Some(&schema));
        out.push(Backend {
            name: "postgres",
            store,
            dir,
            schema: Some(schema),
        });
    }
    out
}
