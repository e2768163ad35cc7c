//! Records the wallet and the policy engine read back from the store are outside bytes too (a
//! damaged disk, another program, an older build): random bytes in their place give a typed
//! error, never a panic, and nothing is written in the attempt.

use std::sync::Arc;

use anya_bitcoin::policy::{PolicyEngine, PolicyError};
use anya_bitcoin::wallet::{AnyaWallet, PersistError, Template, WalletError};
use anya_core_types::SystemClock;
use anya_storage::{KvStore, Namespace, Scan};
use bitcoin::Network;
use proptest::prelude::*;

mod common;

use common::fixture::{fixture, label};

fn snapshot(store: &dyn KvStore, ns: &Namespace) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .scan(ns, Scan::all())
        .expect("scan")
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A wallet change-set record replaced by random bytes: loading is a typed `Persist` error.
    #[test]
    fn corrupt_wallet_record_is_a_typed_error(junk in proptest::collection::vec(any::<u8>(), 0..300)) {
        let f = fixture();
        let template = Template::Bip86 { root: label("root"), account: 0 };
        let mut w = AnyaWallet::create(
            Arc::clone(&f.store), Arc::clone(&f.hsm), Arc::new(SystemClock), label("w"), &template, Network::Regtest,
        ).expect("created");
        w.next_address().expect("address");
        drop(w);
        let ns = Namespace::new("anya/wallet/w").expect("ns");
        let records = snapshot(&*f.store, &ns);
        prop_assert!(records.len() >= 2);
        // Overwrite the last record with junk (a format byte of 1 makes it look like JSON).
        let mut bad = vec![1u8];
        bad.extend_from_slice(&junk);
        f.store.put(&ns, &records[records.len() - 1].0, &bad).expect("damage");
        let before = snapshot(&*f.store, &ns);
        let err = AnyaWallet::load(Arc::clone(&f.store), Arc::clone(&f.hsm), Arc::new(SystemClock), label("w"))
            .expect_err("refused");
        prop_assert!(matches!(err, WalletError::Persist(PersistError::Corrupt { .. })), "{err:?}");
        prop_assert_eq!(snapshot(&*f.store, &ns), before, "nothing written");
    }

    /// Random bytes as the stored rules or as a spend record: typed `Corrupt` errors.
    #[test]
    fn corrupt_policy_records_are_typed_errors(
        junk in proptest::collection::vec(any::<u8>(), 0..200),
        key_tail in proptest::collection::vec(any::<u8>(), 0..60),
    ) {
        let f = fixture();
        let ns = Namespace::new("anya/wallet/p/policy").expect("ns");
        let engine = PolicyEngine::new(Arc::clone(&f.store), ns.clone(), Arc::new(SystemClock));
        f.store.put(&ns, b"rules", &junk).expect("damage rules");
        match engine.rules() {
            Err(PolicyError::Corrupt { .. }) => {}
            // Junk that happens to be a valid rules document is fine.
            Ok(_) => prop_assert!(serde_json::from_slice::<serde_json::Value>(&junk).is_ok()),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
        f.store.delete(&ns, b"rules").expect("clear");
        let mut key = b"s/".to_vec();
        key.extend_from_slice(&key_tail);
        f.store.put(&ns, &key, &junk).expect("damage history");
        match engine.spent_last_24h() {
            Err(PolicyError::Corrupt { .. }) => {}
            Ok(_) => prop_assert!(key_tail.len() == 40 && junk.len() == 8, "only a well-formed record reads"),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
