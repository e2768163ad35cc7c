//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::PathBuf;
use std::sync::Arc;

use anya_hsm::{AuditMode, KdfParams, SecretString, SoftwareHsm, SoftwareOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};

/// The shared test-vector directory.
pub fn vectors() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors"))
}

pub fn read_vector(rel: &str) -> String {
    let path = vectors().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn hex(s: &str) -> Vec<u8> {
    use bitcoin::hex::FromHex;
    Vec::<u8>::from_hex(s).unwrap_or_else(|e| panic!("hex {s}: {e}"))
}

pub const PASS: &str = "test passphrase";

pub fn options() -> SoftwareOptions {
    SoftwareOptions::default().with_kdf(KdfParams::insecure_for_tests())
}

pub fn buffered_options() -> SoftwareOptions {
    options().with_audit(AuditMode::Buffered { max_pending: 1024 })
}

#[derive(Debug)]
pub struct Fixture {
    pub hsm: SoftwareHsm,
    pub store: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
}

pub fn open_store(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(dir.path().join("hsm.db"), SqliteOptions::default()).expect("sqlite store"))
}

pub fn fixture_with(options: SoftwareOptions) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&dir);
    let hsm = SoftwareHsm::create(
        Arc::clone(&store) as Arc<dyn KvStore>,
        &SecretString::from(PASS),
        options,
    )
    .expect("create keystore");
    Fixture { hsm, store, dir }
}

pub fn fixture() -> Fixture {
    fixture_with(options())
}
