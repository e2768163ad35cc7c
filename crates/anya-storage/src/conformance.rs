//! The conformance suite every [`KvStore`] implementation runs unchanged.
//!
//! Each case is a function taking a fresh, empty store. `kv_conformance_suite!` turns the
//! whole list into `#[test]` functions for one backend:
//!
//! ```ignore
//! anya_storage::kv_conformance_suite!(Some(my_fresh_store()));
//! ```
//!
//! The expression is evaluated once per test and must give an `Option` of something that
//! dereferences to a `KvStore`; `None` skips (for server backends outside CI only).
//!

use std::collections::BTreeMap;
use std::ops::Deref;

use crate::{KvStore, Namespace, Scan, StoreError, Version, WriteBatch, MAX_KEY_LEN, MAX_VALUE_LEN};

/// A store living in a temporary directory that is removed when the fixture drops.
#[derive(Debug)]
pub struct TempStore<S> {
    /// The store (dropped before the directory).
    pub store: S,
    /// The directory holding it.
    pub dir: tempfile::TempDir,
}

impl<S> Deref for TempStore<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.store
    }
}

/// Generates one `#[test]` per conformance case for the store built by `$make`.
#[macro_export]
macro_rules! kv_conformance_suite {
    ($make:expr) => {
        $crate::kv_conformance_suite!(@cases $make;
            get_missing, put_get_roundtrip, overwrite_gets_new_version, delete_removes,
            delete_missing_is_ok, empty_value, large_value_1mib, unicode_and_binary_keys,
            scan_is_in_byte_order, scan_prefix_and_pages, namespaces_are_disjoint,
            batch_is_atomic_on_conflict, batch_checks_see_earlier_ops, cas_absent_and_present,
            versions_are_never_reused, limits_are_typed_errors, cas_contention_8_threads,
            concurrent_writers_all_visible);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(fixture) = $make {
                    $crate::conformance::$case(&*fixture);
                }
            }
        )*
    };
}

fn ns(name: &str) -> Namespace {
    Namespace::new(name).expect("conformance namespaces are valid")
}

/// `get` of a key never written is `Ok(None)`.
pub fn get_missing(s: &dyn KvStore) {
    assert_eq!(s.get(&ns("t"), b"nope").expect("get"), None);
}

/// A put is read back with the version it returned.
pub fn put_get_roundtrip(s: &dyn KvStore) {
    let v = s.put(&ns("t"), b"k", b"value").expect("put");
    let got = s.get(&ns("t"), b"k").expect("get").expect("present");
    assert_eq!(got.value, b"value");
    assert_eq!(got.version, v);
}

/// Overwriting replaces the value and gives a new, different version.
pub fn overwrite_gets_new_version(s: &dyn KvStore) {
    let v1 = s.put(&ns("t"), b"k", b"one").expect("put");
    let v2 = s.put(&ns("t"), b"k", b"two").expect("put");
    assert_ne!(v1, v2);
    let got = s.get(&ns("t"), b"k").expect("get").expect("present");
    assert_eq!((got.value.as_slice(), got.version), (&b"two"[..], v2));
}

/// A deleted key reads as absent and disappears from scans.
pub fn delete_removes(s: &dyn KvStore) {
    s.put(&ns("t"), b"a", b"1").expect("put");
    s.put(&ns("t"), b"b", b"2").expect("put");
    s.delete(&ns("t"), b"a").expect("delete");
    assert_eq!(s.get(&ns("t"), b"a").expect("get"), None);
    let keys: Vec<_> = s
        .scan(&ns("t"), Scan::all())
        .expect("scan")
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, vec![b"b".to_vec()]);
}

/// Deleting a missing key succeeds and changes nothing.
pub fn delete_missing_is_ok(s: &dyn KvStore) {
    s.delete(&ns("t"), b"never").expect("delete of a missing key");
    assert!(s.scan(&ns("t"), Scan::all()).expect("scan").is_empty());
}

/// Empty values are stored and distinct from absence.
pub fn empty_value(s: &dyn KvStore) {
    s.put(&ns("t"), b"e", b"").expect("put");
    let got = s.get(&ns("t"), b"e").expect("get").expect("empty value is present");
    assert!(got.value.is_empty());
}

/// A 1 MiB value round-trips byte for byte.
pub fn large_value_1mib(s: &dyn KvStore) {
    let value: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    s.put(&ns("t"), b"big", &value).expect("put 1 MiB");
    assert_eq!(s.get(&ns("t"), b"big").expect("get").expect("present").value, value);
}

/// Keys are bytes: UTF-8 text, NUL, 0xff, invalid UTF-8 and the empty key all work.
pub fn unicode_and_binary_keys(s: &dyn KvStore) {
    let keys: Vec<Vec<u8>> = vec![
        "clé-🔑-ключ".as_bytes().to_vec(),
        vec![0],
        vec![0, 0, 1],
        vec![0xff, 0xfe, 0x00],
        vec![0xc3, 0x28],
        Vec::new(),
    ];
    for (i, k) in keys.iter().enumerate() {
        s.put(&ns("t"), k, &[i as u8]).expect("put");
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(s.get(&ns("t"), k).expect("get").expect("present").value, vec![i as u8]);
    }
    assert_eq!(s.scan(&ns("t"), Scan::all()).expect("scan").len(), keys.len());
}

/// Scans return keys in unsigned byte order whatever the insertion order.
pub fn scan_is_in_byte_order(s: &dyn KvStore) {
    let mut expected = BTreeMap::new();
    let mut x: u32 = 0x1234_5678;
    for i in 0..300u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let len = (x % 5) as usize;
        let key: Vec<u8> = x.to_be_bytes()[..len].iter().copied().chain([i as u8]).collect();
        s.put(&ns("t"), &key, &i.to_le_bytes()).expect("put");
        expected.insert(key, i.to_le_bytes().to_vec());
    }
    let got: Vec<_> = s
        .scan(&ns("t"), Scan::all())
        .expect("scan")
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    let want: Vec<_> = expected.into_iter().collect();
    assert_eq!(got, want);
}

/// Prefix scans select exactly the prefix (including `0xff` edges) and page with
/// `start_after` and `limit`.
pub fn scan_prefix_and_pages(s: &dyn KvStore) {
    let t = ns("t");
    for k in [
        &b"a"[..],
        b"ab",
        b"ab\x00",
        b"ab\xff",
        b"ab\xff\xff",
        b"abc",
        b"ac",
        b"b",
        b"\xff",
        b"\xff\xff",
    ] {
        s.put(&t, k, k).expect("put");
    }
    let keys =
        |scan: Scan<'_>| -> Vec<Vec<u8>> { s.scan(&t, scan).expect("scan").into_iter().map(|e| e.key).collect() };
    assert_eq!(
        keys(Scan::prefix(b"ab")),
        vec![
            b"ab".to_vec(),
            b"ab\x00".to_vec(),
            b"abc".to_vec(),
            b"ab\xff".to_vec(),
            b"ab\xff\xff".to_vec()
        ]
    );
    assert_eq!(
        keys(Scan::prefix(b"ab\xff")),
        vec![b"ab\xff".to_vec(), b"ab\xff\xff".to_vec()]
    );
    assert_eq!(
        keys(Scan::prefix(b"\xff")),
        vec![b"\xff".to_vec(), b"\xff\xff".to_vec()]
    );
    assert_eq!(keys(Scan::prefix(b"zz")), Vec::<Vec<u8>>::new());
    assert_eq!(
        keys(Scan::prefix(b"ab").limit(2)),
        vec![b"ab".to_vec(), b"ab\x00".to_vec()]
    );
    assert_eq!(
        keys(Scan::prefix(b"ab").after(b"ab\x00").limit(2)),
        vec![b"abc".to_vec(), b"ab\xff".to_vec()]
    );
    assert_eq!(keys(Scan::prefix(b"ab").after(b"ab\xff\xff")), Vec::<Vec<u8>>::new());
    assert_eq!(keys(Scan::prefix(b"ab").after(b"a")).len(), 5);
    assert_eq!(
        keys(Scan::all().after(b"b")),
        vec![b"\xff".to_vec(), b"\xff\xff".to_vec()]
    );
    assert_eq!(keys(Scan::all().limit(0)), Vec::<Vec<u8>>::new());
    // Paging through everything two at a time visits each key once, in order.
    let mut seen = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    loop {
        let page = match &last {
            Some(k) => keys(Scan::all().after(k).limit(2)),
            None => keys(Scan::all().limit(2)),
        };
        if page.is_empty() {
            break;
        }
        last = page.last().cloned();
        seen.extend(page);
    }
    assert_eq!(seen, keys(Scan::all()));
    assert_eq!(seen.len(), 10);
}

/// Namespaces never see each other's keys, even when one name is a prefix of another.
pub fn namespaces_are_disjoint(s: &dyn KvStore) {
    s.put(&ns("a"), b"k", b"in a").expect("put");
    s.put(&ns("a.b"), b"k", b"in a.b").expect("put");
    s.put(&ns("ab"), b"", b"in ab").expect("put");
    assert_eq!(s.get(&ns("a"), b"k").expect("get").expect("present").value, b"in a");
    assert_eq!(s.get(&ns("a.b"), b"k").expect("get").expect("present").value, b"in a.b");
    assert_eq!(s.get(&ns("a"), b"").expect("get"), None);
    for name in ["a", "a.b", "ab"] {
        assert_eq!(
            s.scan(&ns(name), Scan::all()).expect("scan").len(),
            1,
            "namespace {name}"
        );
    }
    s.delete(&ns("a"), b"k").expect("delete");
    assert!(s.get(&ns("a.b"), b"k").expect("get").is_some());
}

/// A batch whose last check fails applies none of its earlier puts and deletes.
pub fn batch_is_atomic_on_conflict(s: &dyn KvStore) {
    let t = ns("t");
    let v = s.put(&t, b"keep", b"old").expect("put");
    let mut batch = WriteBatch::new();
    batch.put(&t, b"new", b"x").expect("op");
    batch.delete(&t, b"keep").expect("op");
    batch.check(&t, b"guard", Some(v)).expect("op");
    let err = s.write(batch).expect_err("check must fail");
    assert!(
        matches!(err, StoreError::Conflict { expected: Some(e), found: None, .. } if e == v),
        "{err:?}"
    );
    assert_eq!(s.get(&t, b"new").expect("get"), None);
    assert_eq!(s.get(&t, b"keep").expect("get").expect("present").value, b"old");

    let t2 = ns("t2");
    let mut batch = WriteBatch::new();
    for i in 0..100u32 {
        batch.put(&t2, i.to_be_bytes(), i.to_le_bytes()).expect("op");
    }
    let v = s.write(batch).expect("batch");
    let entries = s.scan(&t2, Scan::all()).expect("scan");
    assert_eq!(entries.len(), 100);
    assert!(entries.iter().all(|e| e.version == v), "one version per batch");
}

/// Checks see the effect of earlier operations in the same batch.
pub fn batch_checks_see_earlier_ops(s: &dyn KvStore) {
    let t = ns("t");
    let v = s.put(&t, b"k", b"1").expect("put");
    let mut batch = WriteBatch::new();
    batch.check(&t, b"k", Some(v)).expect("op");
    batch.delete(&t, b"k").expect("op");
    batch.check(&t, b"k", None).expect("op");
    batch.put(&t, b"k2", b"2").expect("op");
    s.write(batch).expect("checks hold in order");
    assert_eq!(s.get(&t, b"k").expect("get"), None);
    assert!(s.get(&t, b"k2").expect("get").is_some());
}

/// Compare-and-swap on absence and on a version; a stale version is a conflict that names
/// the version found.
pub fn cas_absent_and_present(s: &dyn KvStore) {
    let t = ns("t");
    let v1 = s
        .compare_and_swap(&t, b"c", None, Some(b"1"))
        .expect("create if absent");
    let err = s
        .compare_and_swap(&t, b"c", None, Some(b"x"))
        .expect_err("already present");
    assert!(
        matches!(err, StoreError::Conflict { found: Some(f), .. } if f == v1),
        "{err:?}"
    );
    let v2 = s.compare_and_swap(&t, b"c", Some(v1), Some(b"2")).expect("swap");
    let err = s.compare_and_swap(&t, b"c", Some(v1), Some(b"3")).expect_err("stale");
    assert!(err.is_conflict());
    assert_eq!(s.get(&t, b"c").expect("get").expect("present").value, b"2");
    s.compare_and_swap(&t, b"c", Some(v2), None).expect("delete by cas");
    assert_eq!(s.get(&t, b"c").expect("get"), None);
}

/// Deleting and re-creating a key never brings back an old version (no ABA).
pub fn versions_are_never_reused(s: &dyn KvStore) {
    let t = ns("t");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let v = s.put(&t, b"k", b"x").expect("put");
        assert!(seen.insert(v), "version {v} handed out twice");
        s.delete(&t, b"k").expect("delete");
    }
    let v = s.put(&t, b"k", b"x").expect("put");
    let stale = *seen.iter().next().expect("twenty versions");
    assert!(s
        .compare_and_swap(&t, b"k", Some(stale), Some(b"y"))
        .expect_err("stale")
        .is_conflict());
    assert!(!seen.contains(&v));
}

/// Over-long keys and values are typed errors and write nothing.
pub fn limits_are_typed_errors(s: &dyn KvStore) {
    let t = ns("t");
    let long_key = vec![7u8; MAX_KEY_LEN + 1];
    assert!(matches!(s.put(&t, &long_key, b"v"), Err(StoreError::KeyTooLong { .. })));
    assert!(matches!(s.get(&t, &long_key), Err(StoreError::KeyTooLong { .. })));
    assert!(matches!(
        s.scan(&t, Scan::prefix(&long_key)),
        Err(StoreError::KeyTooLong { .. })
    ));
    let big = vec![0u8; MAX_VALUE_LEN + 1];
    assert!(matches!(s.put(&t, b"k", &big), Err(StoreError::ValueTooLarge { .. })));
    s.put(&t, &vec![1u8; MAX_KEY_LEN], b"max key is fine")
        .expect("put at the key limit");
    assert_eq!(s.scan(&t, Scan::all()).expect("scan").len(), 1);
}

/// Eight threads incrementing one counter by read-then-CAS lose no update.
pub fn cas_contention_8_threads(s: &dyn KvStore) {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 25;
    let t = ns("t");
    s.put(&t, b"counter", &0u64.to_le_bytes()).expect("init");
    let conflicts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..PER_THREAD {
                    loop {
                        let cur = s.get(&t, b"counter").expect("get").expect("present");
                        let n = u64::from_le_bytes(cur.value.as_slice().try_into().expect("8 bytes"));
                        match s.compare_and_swap(&t, b"counter", Some(cur.version), Some(&(n + 1).to_le_bytes())) {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => {
                                conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => panic!("cas failed: {e}"),
                        }
                    }
                }
            });
        }
    });
    let got = s.get(&t, b"counter").expect("get").expect("present");
    assert_eq!(
        u64::from_le_bytes(got.value.as_slice().try_into().expect("8 bytes")),
        THREADS * PER_THREAD
    );
}

/// Eight threads writing distinct keys: every acknowledged write is visible afterwards, and
/// each got its own version.
pub fn concurrent_writers_all_visible(s: &dyn KvStore) {
    let t = ns("t");
    let versions = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for th in 0..8u8 {
            let (t, versions) = (&t, &versions);
            scope.spawn(move || {
                for i in 0..40u8 {
                    let v = s.put(t, &[th, i], &[i, th]).expect("put");
                    versions.lock().expect("no panic").push(v);
                }
            });
        }
    });
    let entries = s.scan(&t, Scan::all()).expect("scan");
    assert_eq!(entries.len(), 320);
    assert!(entries.iter().all(|e| e.value == [e.key[1], e.key[0]]));
    let mut v: Vec<Version> = versions.into_inner().expect("no panic");
    v.sort();
    v.dedup();
    assert_eq!(v.len(), 320, "every write has its own version");
}
