//! LDK's `KVStoreSync` and `KVStore` on anya's stores ([`LdkStore`]): the cases LDK's own store
//! tests cover (read, write, remove, list; the key and namespace rules) plus anya's (write
//! ordering of concurrent async writes, durability across a reopen, namespaces that never see
//! each other, reads served from a listing), on SQLite, RocksDB and PostgreSQL (`ANYA_TEST_POSTGRES_URL`, required in CI).

mod common;

use ldk_node::lightning::io::{Error as IoError, ErrorKind};
use std::sync::Arc;

use anya_layer2::lightning::LdkStore;
use anya_storage::{KvStore, Namespace, Scan};
use ldk_node::lightning::util::persist::{
    KVStore, KVStoreSync, KVSTORE_NAMESPACE_KEY_ALPHABET, KVSTORE_NAMESPACE_KEY_MAX_LEN,
};

fn ldk(store: &Arc<dyn KvStore>, ns: &str) -> LdkStore {
    LdkStore::new(Arc::clone(store), Namespace::new(ns).unwrap())
}

/// Everything in the anya namespace, for "nothing changed" checks.
fn snapshot(store: &Arc<dyn KvStore>, ns: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let ns = Namespace::new(ns).unwrap();
    store
        .scan(&ns, Scan::all())
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// LDK's read-write-remove-list case, through the sync trait.
fn read_write_remove_list(name: &str, store: &LdkStore) {
    let data = vec![42u8; 32];
    let long = "A".repeat(KVSTORE_NAMESPACE_KEY_MAX_LEN);
    let pairs = [
        ("testspace", "testsubspace"),
        ("testspace", ""),
        ("", ""),
        (long.as_str(), long.as_str()),
    ];
    for (primary, secondary) in pairs {
        KVStoreSync::write(store, primary, secondary, "testkey", data.clone()).unwrap();
        // Idempotent and overwriting.
        KVStoreSync::write(store, primary, secondary, "testkey", data.clone()).unwrap();
        assert_eq!(
            KVStoreSync::read(store, primary, secondary, "testkey").unwrap(),
            data,
            "{name}"
        );
        assert_eq!(
            KVStoreSync::list(store, primary, secondary).unwrap(),
            vec!["testkey".to_owned()],
            "{name}: ({primary:?}, {secondary:?})"
        );
        KVStoreSync::remove(store, primary, secondary, "testkey", false).unwrap();
        // Removing what is gone succeeds, lazily or not.
        KVStoreSync::remove(store, primary, secondary, "testkey", true).unwrap();
        let err = KVStoreSync::read(store, primary, secondary, "testkey").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{name}");
        assert!(
            KVStoreSync::list(store, primary, secondary).unwrap().is_empty(),
            "{name}"
        );
    }
    // The longest key and every character of the alphabet.
    let key = long.clone();
    KVStoreSync::write(store, "ns", "", &key, vec![1]).unwrap();
    KVStoreSync::write(store, "ns", "", KVSTORE_NAMESPACE_KEY_ALPHABET, vec![2]).unwrap();
    assert_eq!(KVStoreSync::read(store, "ns", "", &key).unwrap(), vec![1]);
    assert_eq!(
        sorted(KVStoreSync::list(store, "ns", "").unwrap()),
        sorted(vec![key, KVSTORE_NAMESPACE_KEY_ALPHABET.to_owned()]),
        "{name}"
    );
}

/// A namespace pair lists only its own keys: not its secondary namespaces', not another
/// primary's that shares a prefix, not the empty pair's.
fn namespaces_are_disjoint(name: &str, store: &LdkStore) {
    let writes = [
        ("mon", "", "a"),
        ("mon", "", "b"),
        ("mon", "sub", "c"),
        ("mon", "sub2", "d"),
        ("monitors", "", "e"),
        ("", "", "f"),
        ("mo", "n", "g"),
    ];
    for (p, s, k) in writes {
        KVStoreSync::write(store, p, s, k, k.as_bytes().to_vec()).unwrap();
    }
    let list = |p: &str, s: &str| sorted(KVStoreSync::list(store, p, s).unwrap());
    assert_eq!(list("mon", ""), vec!["a", "b"], "{name}");
    assert_eq!(list("mon", "sub"), vec!["c"], "{name}");
    assert_eq!(list("mon", "sub2"), vec!["d"], "{name}");
    assert_eq!(list("monitors", ""), vec!["e"], "{name}");
    assert_eq!(list("", ""), vec!["f"], "{name}");
    assert_eq!(list("mo", "n"), vec!["g"], "{name}");
    assert!(list("mo", "").is_empty(), "{name}");
    assert!(list("unknown", "").is_empty(), "{name}");
    for (p, s, k) in writes {
        assert_eq!(KVStoreSync::read(store, p, s, k).unwrap(), k.as_bytes(), "{name}");
        assert_eq!(
            KVStoreSync::read(store, p, s, "zz").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}

/// Names outside LDK's rules are `InvalidInput` for every method, and nothing is written.
fn names_outside_the_rules(name: &str, store: &LdkStore, raw: &Arc<dyn KvStore>, ns: &str) {
    let too_long = "a".repeat(KVSTORE_NAMESPACE_KEY_MAX_LEN + 1);
    let bad: Vec<(&str, &str, &str)> = vec![
        ("p", "s", ""),
        ("", "s", "k"),
        (&too_long, "", "k"),
        ("p", &too_long, "k"),
        ("p", "s", &too_long),
        ("p/q", "", "k"),
        ("p", "s/t", "k"),
        ("p", "s", "k/l"),
        ("p", "s", "k.l"),
        ("p", "s", "k l"),
        ("pé", "", "k"),
        ("p", "", "k\0"),
    ];
    let before = snapshot(raw, ns);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for (p, s, k) in bad {
        let case = format!("{name}: ({p:?}, {s:?}, {k:?})");
        let kind = |r: Result<(), IoError>| r.unwrap_err().kind();
        assert_eq!(
            kind(KVStoreSync::write(store, p, s, k, vec![1])),
            ErrorKind::InvalidInput,
            "{case}"
        );
        assert_eq!(
            kind(KVStoreSync::remove(store, p, s, k, false)),
            ErrorKind::InvalidInput,
            "{case}"
        );
        assert_eq!(
            KVStoreSync::read(store, p, s, k).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{case}"
        );
        assert_eq!(
            kind(rt.block_on(KVStore::write(store, p, s, k, vec![1]))),
            ErrorKind::InvalidInput,
            "{case}"
        );
        assert_eq!(
            kind(rt.block_on(KVStore::remove(store, p, s, k, true))),
            ErrorKind::InvalidInput,
            "{case}"
        );
        assert_eq!(
            rt.block_on(KVStore::read(store, p, s, k)).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{case}"
        );
    }
    for (p, s) in [("", "s"), (too_long.as_str(), ""), ("p", "s/t"), ("p.q", "")] {
        let err = KVStoreSync::list(store, p, s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}: ({p:?}, {s:?})");
        let err = rt.block_on(KVStore::list(store, p, s)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}: ({p:?}, {s:?})");
    }
    assert_eq!(snapshot(raw, ns), before, "{name}: nothing changed");
}

/// The async trait inside a multi-threaded runtime: many writes to one key run on the
/// blocking pool in whatever order; once all have completed, the key holds the last one
/// called. A remove called after them wins over all of them.
fn async_writes_keep_call_order(name: &str, store: &LdkStore) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..20u32 {
            let futures: Vec<_> = (0..32u32)
                .map(|i| {
                    KVStore::write(
                        store,
                        "order",
                        "",
                        "key",
                        [round.to_be_bytes(), i.to_be_bytes()].concat(),
                    )
                })
                .collect();
            // Completed in reverse order of their calls.
            for f in futures.into_iter().rev() {
                f.await.unwrap();
            }
            let got = KVStore::read(store, "order", "", "key").await.unwrap();
            assert_eq!(
                got,
                [round.to_be_bytes(), 31u32.to_be_bytes()].concat(),
                "{name}: round {round}"
            );
        }
        let write = KVStore::write(store, "order", "", "gone", vec![1]);
        let remove = KVStore::remove(store, "order", "", "gone", false);
        remove.await.unwrap();
        write.await.unwrap();
        let err = KVStore::read(store, "order", "", "gone").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{name}: the remove was called last");
        let listed = KVStore::list(store, "order", "").await.unwrap();
        assert_eq!(listed, vec!["key".to_owned()], "{name}");
    });
}

/// LDK calls the sync trait from its runtime's tasks: on a multi-threaded runtime's worker
/// and inside a current-thread runtime's `block_on`, every backend answers (the PostgreSQL
/// client, which drives a runtime of its own, included).
fn sync_calls_from_inside_runtimes(name: &str, store: &LdkStore) {
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let s = store.clone();
    let got = multi
        .block_on(async move {
            tokio::spawn(async move {
                KVStoreSync::write(&s, "rt", "", "multi", vec![1]).unwrap();
                KVStoreSync::read(&s, "rt", "", "multi").unwrap()
            })
            .await
        })
        .unwrap();
    assert_eq!(got, vec![1], "{name}");
    let current = tokio::runtime::Builder::new_current_thread().build().unwrap();
    current.block_on(async {
        KVStoreSync::write(store, "rt", "", "current", vec![2]).unwrap();
        assert_eq!(
            KVStoreSync::read(store, "rt", "", "current").unwrap(),
            vec![2],
            "{name}"
        );
        assert_eq!(
            sorted(KVStoreSync::list(store, "rt", "").unwrap()),
            vec!["current", "multi"],
            "{name}"
        );
        KVStoreSync::remove(store, "rt", "", "multi", false).unwrap();
    });
    assert_eq!(KVStoreSync::list(store, "rt", "").unwrap(), vec!["current"], "{name}");
}

/// A listing's values serve the reads that follow it, once each; a write or remove after the
/// listing is what a read then sees; and a reader that lists and reads beside a writer never
/// goes back behind what the writer had finished.
fn reads_after_a_listing(name: &str, store: &LdkStore, raw: &Arc<dyn KvStore>, ns: &str) {
    let keys: Vec<String> = (0..300).map(|i| format!("payment_{i:03}")).collect();
    for key in &keys {
        KVStoreSync::write(store, "payments", "", key, key.as_bytes().to_vec()).unwrap();
    }
    assert_eq!(
        sorted(KVStoreSync::list(store, "payments", "").unwrap()),
        keys,
        "{name}"
    );
    // Changed behind the store's back (which one node per namespace never does): the first
    // read is served from the listing, the second from the store.
    let record = b"payments//payment_000";
    raw.put(&Namespace::new(ns).unwrap(), record, b"behind").unwrap();
    assert_eq!(
        KVStoreSync::read(store, "payments", "", "payment_000").unwrap(),
        b"payment_000",
        "{name}"
    );
    assert_eq!(
        KVStoreSync::read(store, "payments", "", "payment_000").unwrap(),
        b"behind",
        "{name}"
    );
    // A write or remove through the store after the listing is what a read sees.
    KVStoreSync::write(store, "payments", "", "payment_001", b"new".to_vec()).unwrap();
    KVStoreSync::remove(store, "payments", "", "payment_002", false).unwrap();
    assert_eq!(
        KVStoreSync::read(store, "payments", "", "payment_001").unwrap(),
        b"new",
        "{name}"
    );
    assert_eq!(
        KVStoreSync::read(store, "payments", "", "payment_002")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound,
        "{name}"
    );
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(
        rt.block_on(KVStore::read(store, "payments", "", "payment_003"))
            .unwrap(),
        b"payment_003",
        "{name}: the async read is served too"
    );

    // A writer rewrites every key, round after round; a reader lists them while it writes,
    // waits for the writer to finish one more round, and reads them all, again and again.
    // Every value read is at least the round the writer had finished when the read began: a
    // value kept from the listing would be a round behind.
    let rounds = 12u32;
    let done = std::sync::atomic::AtomicU32::new(0);
    let keys = &keys[..64];
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 1..=rounds {
                for key in keys {
                    KVStoreSync::write(store, "rounds", "", key, round.to_be_bytes().to_vec()).unwrap();
                }
                done.store(round, std::sync::atomic::Ordering::SeqCst);
            }
        });
        while done.load(std::sync::atomic::Ordering::SeqCst) < rounds {
            let listed_at = done.load(std::sync::atomic::Ordering::SeqCst);
            KVStoreSync::list(store, "rounds", "").unwrap();
            while done.load(std::sync::atomic::Ordering::SeqCst) == listed_at {
                std::thread::yield_now();
            }
            for key in keys {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let value = match KVStoreSync::read(store, "rounds", "", key) {
                    Ok(v) => u32::from_be_bytes(v.try_into().unwrap()),
                    Err(e) if e.kind() == ErrorKind::NotFound => 0,
                    Err(e) => panic!("{name}: {e}"),
                };
                assert!(
                    value >= finished,
                    "{name}: {key} read as round {value} after round {finished}"
                );
            }
        }
    });
}

#[test]
fn ldk_store_cases_on_every_backend() {
    let backends = common::backends("ln_store");
    for backend in &backends {
        let name = backend.name;
        read_write_remove_list(name, &ldk(&backend.store, "ln.rwrl"));
        namespaces_are_disjoint(name, &ldk(&backend.store, "ln.disjoint"));
        names_outside_the_rules(name, &ldk(&backend.store, "ln.rules"), &backend.store, "ln.rules");
        async_writes_keep_call_order(name, &ldk(&backend.store, "ln.order"));
        sync_calls_from_inside_runtimes(name, &ldk(&backend.store, "ln.runtimes"));
        reads_after_a_listing(
            name,
            &ldk(&backend.store, "ln.readahead"),
            &backend.store,
            "ln.readahead",
        );
        // Two nodes on one store never see each other's records.
        let a = ldk(&backend.store, "ln.node-a");
        let b = ldk(&backend.store, "ln.node-b");
        KVStoreSync::write(&a, "manager", "", "manager", vec![0xa]).unwrap();
        assert_eq!(
            KVStoreSync::read(&b, "manager", "", "manager").unwrap_err().kind(),
            ErrorKind::NotFound,
            "{name}"
        );
        assert!(KVStoreSync::list(&b, "manager", "").unwrap().is_empty(), "{name}");
    }
}

/// What a write returned is in the database: a store opened again on it reads it, through
/// either trait, and a list that spans several scan pages returns every key once.
#[test]
fn writes_survive_a_reopen_on_every_backend() {
    let backends = common::backends("ln_reopen");
    let keys: Vec<String> = (0..600).map(|i| format!("monitor_{i:04}")).collect();
    for backend in backends {
        let name = backend.name;
        {
            let store = ldk(&backend.store, "ln.reopen");
            for key in &keys {
                KVStoreSync::write(&store, "monitors", "", key, key.as_bytes().to_vec()).unwrap();
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(KVStore::write(&store, "manager", "", "manager", vec![7; 100_000]))
                .unwrap();
            KVStoreSync::remove(&store, "monitors", "", "monitor_0000", true).unwrap();
        }
        let backend = backend.reopen();
        let store = ldk(&backend.store, "ln.reopen");
        let listed = sorted(KVStoreSync::list(&store, "monitors", "").unwrap());
        assert_eq!(listed, keys[1..].to_vec(), "{name}");
        assert_eq!(
            KVStoreSync::read(&store, "manager", "", "manager").unwrap(),
            vec![7; 100_000]
        );
    }
}
