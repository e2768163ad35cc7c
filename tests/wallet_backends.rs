//! The same wallet, written and reloaded on each storage backend: SQLite, RocksDB, and
//! PostgreSQL at `ANYA_TEST_POSTGRES_URL` (started by `.ci/run`; without it the PostgreSQL
//! case is skipped locally and fails in CI). Blocks come from the in-process regtest chain.

use std::str::FromStr;
use std::sync::Arc;

use anya_bitcoin::regtest::RegtestChain;
use anya_bitcoin::wallet::{AnyaWallet, Template, WalletError};
use anya_core_types::{Label, SystemClock};
use anya_hsm::conformance::{software_on, FIXTURE_PASSPHRASE};
use anya_hsm::{HsmProvider, KdfParams, SecretString, SoftwareHsm, SoftwareOptions};
use anya_storage::{KvStore, PostgresOptions, PostgresStore, RocksDbOptions, RocksDbStore, SqliteOptions, SqliteStore};
use bitcoin::{Address, Amount, FeeRate, Network, ScriptBuf};

fn label(s: &str) -> Label {
    Label::new(s).expect("valid label")
}

fn burn() -> ScriptBuf {
    Address::from_str("bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2")
        .expect("address")
        .require_network(Network::Regtest)
        .expect("regtest")
        .script_pubkey()
}

fn open_hsm(store: Arc<dyn KvStore>) -> Arc<dyn HsmProvider> {
    let options = SoftwareOptions::default().with_kdf(KdfParams::insecure_for_tests());
    let hsm = SoftwareHsm::open(store, options).expect("keystore opens");
    hsm.unlock(&SecretString::from(FIXTURE_PASSPHRASE)).expect("unlocks");
    Arc::new(hsm)
}

/// Creates, funds and spends from a wallet in the store `open` gives, reopens the store and
/// checks the wallet comes back identical and keeps working.
fn round_trip(open: &dyn Fn() -> Arc<dyn KvStore>) {
    let store = open();
    let hsm = software_on(Arc::clone(&store));
    anya_hsm::conformance::generate_test_root(&hsm, &label("root"));
    let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
    let template = Template::Bip86 {
        root: label("root"),
        account: 0,
    };
    let mut w = AnyaWallet::create(
        Arc::clone(&store),
        Arc::clone(&hsm),
        Arc::new(SystemClock),
        label("main"),
        &template,
        Network::Regtest,
    )
    .expect("created");
    let mut chain = RegtestChain::new();
    chain
        .mine(&w.next_address().expect("address").script_pubkey(), Vec::new())
        .expect("block");
    chain.mine_empty(100, &burn());
    for height in 1..=chain.height() {
        w.apply_block(chain.block(height).expect("block"), height)
            .expect("connects");
    }
    let rate = FeeRate::from_sat_per_vb(3).expect("rate");
    let tx = w
        .send(&[(burn(), Amount::from_sat(70_000_000))], rate, 5)
        .expect("sent");
    chain.mine(&burn(), vec![tx]).expect("mined");
    w.apply_block(chain.tip(), chain.height()).expect("connects");
    let balance = w.balance();
    let txs = w.bdk().transactions().count();
    let tip = w.bdk().latest_checkpoint().block_id();
    assert_eq!(txs, 2, "the coinbase and the spend");
    drop((w, hsm, store));

    // Reopen everything: more than 64 change sets were written, so loading also compacts.
    let store = open();
    let hsm = open_hsm(Arc::clone(&store));
    let mut w = AnyaWallet::load(
        Arc::clone(&store),
        Arc::clone(&hsm),
        Arc::new(SystemClock),
        label("main"),
    )
    .expect("loads");
    assert_eq!(w.balance(), balance);
    assert_eq!(w.bdk().transactions().count(), txs);
    assert_eq!(w.bdk().latest_checkpoint().block_id(), tip);
    let tx = w
        .send(&[(burn(), Amount::from_sat(10_000_000))], rate, 6)
        .expect("spends after reload");
    chain.mine(&burn(), vec![tx]).expect("mined");
    w.apply_block(chain.tip(), chain.height()).expect("connects");
    drop((w, hsm, store));

    // And once more after the compaction.
    let store = open();
    let hsm = open_hsm(Arc::clone(&store));
    let w = AnyaWallet::load(
        Arc::clone(&store),
        Arc::clone(&hsm),
        Arc::new(SystemClock),
        label("main"),
    )
    .expect("loads after compaction");
    assert_eq!(w.bdk().transactions().count(), 3);
    assert!(matches!(
        AnyaWallet::load(store, hsm, Arc::new(SystemClock), label("absent")),
        Err(WalletError::NotFound { .. })
    ));
}

#[test]
fn sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("anya.db");
    round_trip(&|| Arc::new(SqliteStore::open(&path, SqliteOptions::default()).expect("sqlite")));
}

#[test]
fn rocksdb() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("rocks");
    round_trip(&|| Arc::new(RocksDbStore::open(&path, RocksDbOptions::default()).expect("rocksdb")));
}

#[test]
#[allow(clippy::print_stderr, reason = "tells the developer why the test did nothing")]
fn postgres() {
    let url = match std::env::var("ANYA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("ANYA_TEST_POSTGRES_URL is unset in CI: .ci/run must source .ci/postgres.sh")
        }
        _ => {
            eprintln!("skipped: ANYA_TEST_POSTGRES_URL unset");
            return;
        }
    };
    let schema = format!("w_{:016x}", rand::random::<u64>());
    let mut options = PostgresOptions::default();
    options.schema = schema.clone();
    round_trip(&|| Arc::new(PostgresStore::open(&url, options.clone()).expect("postgres")));
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("raw client");
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .expect("drop the test schema");
}
