//! The software keystore against someone who can write its store without knowing the
//! passphrase, and against the store being restored from an older copy (issue 12): each attack
//! is run on SQLite, RocksDB and PostgreSQL (at `ANYA_TEST_POSTGRES_URL`, which `.ci/run`
//! starts; skipped locally without it, a failure in CI).
//!
//! - a nonce record put back after it signed cannot sign a second message;
//! - the audit chain cut short, rewritten, or replaced by an older copy of itself is detected;
//! - a key entry put back with an older policy, or after it was deleted, is refused;
//! - a whole store restored behind its rollback anchor opens to `RolledBack`, and after the
//!   operator's audited override its consumed nonces still sign only their own message;
//! - a keystore header asking for more Argon2id work than the ceiling is refused before any.

use std::sync::Arc;

use anya_hsm::anchor::{FileAnchor, RollbackAnchor, StoreAnchor};
use anya_hsm::conformance::{put_back, Snapshot};
use anya_hsm::{
    AuditBreak, HsmError, HsmProvider, KdfParams, KeyMaterial, KeyPolicy, KeySpec, Label, Operation, SecretBytes,
    SecretString, SoftwareHsm, SoftwareOptions,
};
use anya_storage::{
    KvStore, Namespace, PostgresOptions, PostgresStore, RocksDbOptions, RocksDbStore, Scan, SqliteOptions, SqliteStore,
};

const PASS: &str = "rollback passphrase";
const NAMESPACES: [&str; 5] = ["keys", "meta", "nonces", "audit", "audit-head"];

fn label(s: &str) -> Label {
    Label::new(s).expect("valid label")
}

fn options() -> SoftwareOptions {
    SoftwareOptions::default().with_kdf(KdfParams::insecure_for_tests())
}

fn ns(name: &str) -> Namespace {
    Namespace::new(format!("anya.hsm.{name}")).expect("ns")
}

/// One backend's store for one test, in a temporary directory (or schema) of its own.
struct Backend {
    name: &'static str,
    store: Arc<dyn KvStore>,
    _dir: tempfile::TempDir,
}

/// Every backend this run can reach: SQLite and RocksDB always, PostgreSQL when
/// `ANYA_TEST_POSTGRES_URL` is set (required in CI).
fn backends() -> Vec<Backend> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(dir.path().join("hsm.db"), SqliteOptions::default()).expect("sqlite");
    out.push(Backend {
        name: "sqlite",
        store: Arc::new(store),
        _dir: dir,
    });
    let dir = tempfile::tempdir().expect("dir");
    let store = RocksDbStore::open(dir.path().join("hsm"), RocksDbOptions::default()).expect("rocksdb");
    out.push(Backend {
        name: "rocksdb",
        store: Arc::new(store),
        _dir: dir,
    });
    if let Some(url) = anya_testkit::require_env("ANYA_TEST_POSTGRES_URL", ".ci/run starts PostgreSQL") {
        let mut options = PostgresOptions::default();
        options.schema = format!("hsm_rollback_{:016x}", rand_u64());
        out.push(Backend {
            name: "postgres",
            store: Arc::new(PostgresStore::open(&url, options).expect("postgres")),
            _dir: tempfile::tempdir().expect("dir"),
        });
    }
    out
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    u64::from_le_bytes(b)
}

fn create(store: &Arc<dyn KvStore>, options: SoftwareOptions) -> SoftwareHsm {
    SoftwareHsm::create(Arc::clone(store), &SecretString::from(PASS), options).expect("keystore created")
}

fn reopen(store: &Arc<dyn KvStore>, options: SoftwareOptions) -> Result<SoftwareHsm, HsmError> {
    let hsm = SoftwareHsm::open(Arc::clone(store), options)?;
    hsm.unlock(&SecretString::from(PASS))?;
    Ok(hsm)
}

/// Every record of the keystore, as a backup would hold them.
fn snapshot(store: &dyn KvStore) -> Snapshot {
    let all: Vec<Namespace> = NAMESPACES.iter().map(|n| ns(n)).collect();
    anya_hsm::conformance::snapshot(store, &all)
}

fn oracle_key(hsm: &SoftwareHsm) -> Label {
    let id = label("oracle");
    hsm.generate_key(&id, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
        .expect("oracle key");
    id
}

fn nonce_key(key: &Label, nonce: &Label) -> Vec<u8> {
    [key.as_str().as_bytes(), &[0], nonce.as_str().as_bytes()].concat()
}

#[test]
fn a_nonce_record_put_back_cannot_sign_a_second_message() {
    for b in backends() {
        let hsm = create(&b.store, options());
        let id = oracle_key(&hsm);
        let n = label("event-1");
        hsm.commit_nonce(&id, &n).expect("commit");
        let saved = b
            .store
            .get(&ns("nonces"), &nonce_key(&id, &n))
            .expect("get")
            .expect("record");
        let first = hsm.sign_with_nonce(&id, &n, &[1; 32]).expect("first message");
        b.store
            .put(&ns("nonces"), &nonce_key(&id, &n), &saved.value)
            .expect("put the committed record back");
        let second = hsm.sign_with_nonce(&id, &n, &[2; 32]);
        assert!(
            matches!(second, Err(HsmError::NonceAlreadyUsed { .. })),
            "{}: {second:?}",
            b.name
        );
        // A restarted process reads the same history from the chain.
        drop(hsm);
        let hsm = reopen(&b.store, options()).expect("reopen");
        let second = hsm.sign_with_nonce(&id, &n, &[2; 32]);
        assert!(
            matches!(second, Err(HsmError::NonceAlreadyUsed { .. })),
            "{}: {second:?}",
            b.name
        );
        // The message it signed still gets its signature (the nonce is alive for it).
        assert_eq!(
            hsm.sign_with_nonce(&id, &n, &[1; 32]).expect("same message"),
            first,
            "{}",
            b.name
        );
        // And a committed id never comes back, even with its record removed.
        b.store.delete(&ns("nonces"), &nonce_key(&id, &n)).expect("remove");
        let again = hsm.commit_nonce(&id, &n);
        assert!(
            matches!(again, Err(HsmError::NonceExists { .. })),
            "{}: {again:?}",
            b.name
        );
    }
}

/// The audit records from `from` on, with their stored bytes.
fn records(store: &dyn KvStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .scan(&ns("audit"), Scan::all())
        .expect("scan")
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

/// The hash a record's successor commits to (`anya-hsm/audit/v1` ‖ bytes).
fn record_hash(bytes: &[u8]) -> [u8; 32] {
    use bitcoin::hashes::{sha256, Hash, HashEngine};
    let mut e = sha256::Hash::engine();
    e.input(b"anya-hsm/audit/v1");
    e.input(bytes);
    sha256::Hash::from_engine(e).to_byte_array()
}

/// A format-1 (unkeyed) head naming `seq` and `hash`, as the chain's writer would.
fn unkeyed_head(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    [&[1u8][..], &seq.to_be_bytes(), hash].concat()
}

fn broken(r: Result<anya_hsm::AuditSummary, HsmError>) -> AuditBreak {
    match r {
        Err(HsmError::AuditChainBroken { reason, .. }) => reason,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

/// A keystore with some history: keys made and used.
fn busy(store: &Arc<dyn KvStore>, options: SoftwareOptions) -> SoftwareHsm {
    let hsm = create(store, options);
    let id = oracle_key(&hsm);
    for i in 0..5u8 {
        hsm.sign_schnorr(anya_hsm::KeyRef::Key(&id), &[i; 32], anya_hsm::AuxRand::Given([0; 32]))
            .expect("sign");
    }
    hsm
}

#[test]
fn an_audit_chain_cut_short_is_detected() {
    for b in backends() {
        let hsm = busy(&b.store, options());
        let summary = hsm.verify_audit_chain().expect("intact");
        assert_eq!(
            summary.authenticated, summary.records,
            "{}: the whole chain is keyed",
            b.name
        );
        let saved_head = b
            .store
            .get(&ns("audit-head"), b"audit-head")
            .expect("get")
            .expect("head");
        let all = records(&*b.store);
        // Delete the last three records and point the head at the new last one.
        for (k, _) in &all[all.len() - 3..] {
            b.store.delete(&ns("audit"), k).expect("delete");
        }
        let (_, last) = &all[all.len() - 4];
        let new_seq = (all.len() - 3) as u64;
        b.store
            .put(
                &ns("audit-head"),
                b"audit-head",
                &unkeyed_head(new_seq, &record_hash(last)),
            )
            .expect("unkeyed head");
        assert_eq!(
            broken(hsm.verify_audit_chain()),
            AuditBreak::Unauthenticated,
            "{}",
            b.name
        );
        // Keeping the old head's keyed position and MAC does not help: it is past the end.
        let mut keyed = saved_head.value.clone();
        keyed[1..9].copy_from_slice(&new_seq.to_be_bytes());
        keyed[9..41].copy_from_slice(&record_hash(last));
        b.store.put(&ns("audit-head"), b"audit-head", &keyed).expect("head");
        assert_eq!(broken(hsm.verify_audit_chain()), AuditBreak::Truncated, "{}", b.name);
        // Nor does a MAC made up for the new position.
        let mut forged = keyed.clone();
        forged[41..49].copy_from_slice(&new_seq.to_be_bytes());
        forged[49..81].copy_from_slice(&record_hash(last));
        b.store.put(&ns("audit-head"), b"audit-head", &forged).expect("head");
        assert_eq!(broken(hsm.verify_audit_chain()), AuditBreak::BadMac, "{}", b.name);
    }
}

#[test]
fn an_audit_chain_rewritten_with_its_hashes_recomputed_is_detected() {
    for b in backends() {
        let hsm = busy(&b.store, options());
        let saved_head = b
            .store
            .get(&ns("audit-head"), b"audit-head")
            .expect("get")
            .expect("head");
        let all = records(&*b.store);
        // Edit record 3's outcome, then re-chain every record after it and the head.
        let mut prev = [0u8; 32];
        for (i, (k, v)) in all.iter().enumerate() {
            let mut v = v.clone();
            v[9..41].copy_from_slice(&prev);
            if i == 2 {
                // outcome: after format, seq, prev, secs, nanos and the operation code.
                let at = 1 + 8 + 32 + 8 + 4 + 1;
                v[at..at + 2].copy_from_slice(&9u16.to_be_bytes());
            }
            b.store.put(&ns("audit"), k, &v).expect("rewrite");
            prev = record_hash(&v);
        }
        let n = all.len() as u64;
        // With the head's old keyed position and MAC: the chain there is another chain.
        let mut head = saved_head.value.clone();
        head[9..41].copy_from_slice(&prev);
        b.store.put(&ns("audit-head"), b"audit-head", &head).expect("head");
        assert_eq!(broken(hsm.verify_audit_chain()), AuditBreak::Rewritten, "{}", b.name);
        // With an unkeyed head: refused while unlocked.
        b.store
            .put(&ns("audit-head"), b"audit-head", &unkeyed_head(n, &prev))
            .expect("head");
        assert_eq!(
            broken(hsm.verify_audit_chain()),
            AuditBreak::Unauthenticated,
            "{}",
            b.name
        );
    }
}

#[test]
fn a_key_entry_put_back_with_an_older_policy_is_refused() {
    for b in backends() {
        let hsm = create(&b.store, options());
        let id = label("imported");
        let secret = [0x11u8; 32];
        let exportable = KeyPolicy {
            exportable: true,
            ..KeyPolicy::default_for(KeySpec::Secp256k1)
        };
        hsm.import_key(
            &id,
            KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret)),
            exportable,
        )
        .expect("import exportable");
        let saved = b
            .store
            .get(&ns("keys"), id.as_str().as_bytes())
            .expect("get")
            .expect("entry");
        hsm.delete_key(&id).expect("delete");
        hsm.import_key(
            &id,
            KeyMaterial::Secp256k1(SecretBytes::from_slice(&secret)),
            KeyPolicy::default_for(KeySpec::Secp256k1),
        )
        .expect("import non-exportable");
        b.store
            .put(&ns("keys"), id.as_str().as_bytes(), &saved.value)
            .expect("put the old entry back");
        drop(hsm);
        let hsm = reopen(&b.store, options()).expect("reopen");
        let export = hsm.export_key(&id);
        assert!(
            matches!(export, Err(HsmError::StaleEntry { .. })),
            "{}: {export:?}",
            b.name
        );
    }
}

#[test]
fn a_deleted_key_cannot_be_resurrected() {
    for b in backends() {
        let hsm = create(&b.store, options());
        let id = oracle_key(&hsm);
        let saved = b
            .store
            .get(&ns("keys"), id.as_str().as_bytes())
            .expect("get")
            .expect("entry");
        hsm.delete_key(&id).expect("delete");
        b.store
            .put(&ns("keys"), id.as_str().as_bytes(), &saved.value)
            .expect("put it back");
        drop(hsm);
        let hsm = reopen(&b.store, options()).expect("reopen");
        let sign = hsm.sign_schnorr(anya_hsm::KeyRef::Key(&id), &[1; 32], anya_hsm::AuxRand::Given([0; 32]));
        assert!(matches!(sign, Err(HsmError::StaleEntry { .. })), "{}: {sign:?}", b.name);
    }
}

/// Both anchors: a directory, and another store (SQLite here; any `KvStore`).
fn anchors() -> Vec<(&'static str, Arc<dyn RollbackAnchor>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("dir");
    let file: Arc<dyn RollbackAnchor> = Arc::new(FileAnchor::open(dir.path().join("anchor")).expect("file anchor"));
    let other = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(other.path().join("anchor.db"), SqliteOptions::default()).expect("anchor store");
    let kv: Arc<dyn RollbackAnchor> = Arc::new(StoreAnchor::new(
        Arc::new(store),
        Namespace::new("anya.hsm.anchor").expect("ns"),
    ));
    vec![("file", file, dir), ("store", kv, other)]
}

#[test]
fn a_store_restored_behind_its_anchor_is_refused_and_its_nonces_stay_spent() {
    for b in backends() {
        for (anchor_name, anchor, _dir) in anchors() {
            // A fresh keystore per anchor, in its own namespace prefix of the backend.
            let _ = anchor_name;
            let opts = || options().with_anchor(Arc::clone(&anchor));
            for n in NAMESPACES {
                for e in b.store.scan(&ns(n), Scan::all()).expect("scan") {
                    b.store.delete(&ns(n), &e.key).expect("clear");
                }
            }
            let hsm = create(&b.store, opts());
            let id = oracle_key(&hsm);
            let (n1, n2) = (label("event-1"), label("event-2"));
            hsm.commit_nonce(&id, &n1).expect("commit");
            hsm.commit_nonce(&id, &n2).expect("commit");
            let backup = snapshot(&*b.store);
            let first = hsm.sign_with_nonce(&id, &n1, &[1; 32]).expect("signs");

            // Restored under the running process: nothing signs from it.
            put_back(&*b.store, &backup);
            let r = hsm.sign_with_nonce(&id, &n2, &[2; 32]);
            assert!(
                matches!(r, Err(HsmError::RolledBack { .. })),
                "{}/{anchor_name}: {r:?}",
                b.name
            );
            drop(hsm);

            // Restored, then opened: refused, naming both positions.
            put_back(&*b.store, &backup);
            match SoftwareHsm::open(Arc::clone(&b.store), opts()) {
                Err(HsmError::RolledBack { store, anchor, .. }) => {
                    assert!(store < anchor, "{}/{anchor_name}: {store} < {anchor}", b.name)
                }
                other => panic!("{}/{anchor_name}: {other:?}", b.name),
            }

            // The operator accepts the restore: audited, and the anchor's nonces stay spent.
            let (hsm, old, new) = SoftwareHsm::accept_rollback(Arc::clone(&b.store), &SecretString::from(PASS), opts())
                .expect("override");
            assert!(
                old.expect("an anchored position").seq > new.seq,
                "{}/{anchor_name}",
                b.name
            );
            let last = hsm.audit_records(0, 10_000).expect("records");
            assert!(
                last.iter().any(|r| r.operation == Operation::AcceptRollback),
                "{}/{anchor_name}: the override is in the chain",
                b.name
            );
            let again = hsm.sign_with_nonce(&id, &n1, &[9; 32]);
            assert!(
                matches!(again, Err(HsmError::NonceAlreadyUsed { .. })),
                "{}/{anchor_name}: {again:?}",
                b.name
            );
            assert_eq!(
                hsm.sign_with_nonce(&id, &n1, &[1; 32]).expect("its own message"),
                first,
                "{}/{anchor_name}",
                b.name
            );
            hsm.sign_with_nonce(&id, &n2, &[2; 32]).expect("an unspent nonce signs");
            hsm.verify_audit_chain().expect("the accepted chain verifies");
        }
    }
}

#[test]
fn an_older_audit_head_put_back_is_caught_by_the_anchor() {
    for b in backends() {
        let dir = tempfile::tempdir().expect("dir");
        let anchor: Arc<dyn RollbackAnchor> = Arc::new(FileAnchor::open(dir.path()).expect("anchor"));
        let hsm = busy(&b.store, options().with_anchor(Arc::clone(&anchor)));
        let old_head = b
            .store
            .get(&ns("audit-head"), b"audit-head")
            .expect("get")
            .expect("head");
        let old_len = records(&*b.store).len();
        let id = label("oracle");
        for i in 0..3u8 {
            hsm.sign_schnorr(anya_hsm::KeyRef::Key(&id), &[i; 32], anya_hsm::AuxRand::Given([0; 32]))
                .expect("sign");
        }
        // A consistent older chain: the later records gone, the old keyed head back.
        for (k, _) in &records(&*b.store)[old_len..] {
            b.store.delete(&ns("audit"), k).expect("delete");
        }
        b.store
            .put(&ns("audit-head"), b"audit-head", &old_head.value)
            .expect("old head");
        let r = hsm.verify_audit_chain();
        assert!(matches!(r, Err(HsmError::RolledBack { .. })), "{}: {r:?}", b.name);
        drop(hsm);
        let r = SoftwareHsm::open(Arc::clone(&b.store), options().with_anchor(anchor));
        assert!(matches!(r, Err(HsmError::RolledBack { .. })), "{}: {r:?}", b.name);
    }
}

#[test]
fn a_keystore_header_asking_for_too_much_work_is_refused_before_it() {
    let b = backends().remove(0);
    drop(create(&b.store, options()));
    let mut meta = b
        .store
        .get(&ns("meta"), b"keystore")
        .expect("get")
        .expect("header")
        .value;
    // 4 GiB and 64 passes: what a writer of the store could ask of an unlock.
    meta[4..8].copy_from_slice(&(4u32 * 1024 * 1024).to_be_bytes());
    meta[8..12].copy_from_slice(&64u32.to_be_bytes());
    b.store.put(&ns("meta"), b"keystore", &meta).expect("tamper");
    let hsm = SoftwareHsm::open(Arc::clone(&b.store), options()).expect("open");
    let r = hsm.unlock(&SecretString::from(PASS));
    match r {
        Err(HsmError::KdfAboveCeiling { stored, ceiling }) => {
            assert_eq!(stored.memory_kib(), 4 * 1024 * 1024);
            assert_eq!(ceiling, KdfParams::default_ceiling());
        }
        other => panic!("{other:?}"),
    }
    // The ceiling is the caller's: creating above it is refused the same way.
    let other = tempfile::tempdir().expect("dir");
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(other.path().join("k.db"), SqliteOptions::default()).expect("store"));
    let big = KdfParams::new(8 * 1024, 2, 1).expect("params");
    let low = KdfParams::new(1024, 1, 1).expect("params");
    let r = SoftwareHsm::create(
        Arc::clone(&store),
        &SecretString::from(PASS),
        options().with_kdf(big).with_kdf_ceiling(low),
    );
    assert!(matches!(r, Err(HsmError::KdfAboveCeiling { .. })), "{r:?}");
}

/// Two handles on one store and one anchor directory (two processes, in effect): one appends
/// without pause while the other opens, unlocks and verifies again and again. An append between
/// reading the store and reading the anchor once looked like a rollback; none may.
#[test]
fn a_handle_opening_while_another_appends_sees_no_rollback() {
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.path().join("hsm.db"), SqliteOptions::default()).expect("sqlite"));
    let anchored = || options().with_anchor(Arc::new(FileAnchor::open(dir.path().join("anchor")).expect("anchor")));
    let writer = create(&store, anchored());
    let id = oracle_key(&writer);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..400u32 {
                let mut m = [0u8; 32];
                m[..4].copy_from_slice(&i.to_be_bytes());
                writer
                    .sign_schnorr(anya_hsm::KeyRef::Key(&id), &m, anya_hsm::AuxRand::Fresh)
                    .expect("sign");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut opened = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let reader = reopen(&store, anchored()).expect("no rollback while another handle appends");
            reader
                .verify_audit_chain()
                .expect("the chain verifies while another handle appends");
            opened += 1;
        }
        assert!(opened > 3, "only {opened} opens during the appends");
    });
}
