//! The oracle on a software HSM with a rollback anchor: its messages pass ddk-messages'
//! validation and an independent BIP340 check; an event is attested for one outcome only,
//! across restarts and rewritten or restored stores.

mod common;

use anya_testkit::dlc;

use anya_hsm::conformance::{put_back, snapshot};
use anya_hsm::{HsmError, HsmProvider};
use anya_layer2::dlc::messages::{DigitDecompositionEventDescriptor, OracleAttestation};
use anya_layer2::dlc::{digits::Digits, EventKind, OracleError};
use anya_storage::Namespace;
use common::Fixture;
use secp256k1::Secp256k1;

const NOW: u64 = 1_800_000_000;

fn outcomes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn digits(base: u16, nb_digits: u16, is_signed: bool) -> DigitDecompositionEventDescriptor {
    DigitDecompositionEventDescriptor {
        base,
        is_signed,
        unit: "usd/btc".to_owned(),
        precision: 0,
        nb_digits,
    }
}

fn all_namespaces() -> Vec<Namespace> {
    ["keys", "meta", "nonces", "audit", "audit-head"]
        .iter()
        .map(|n| Namespace::new(format!("anya.hsm.{n}")).unwrap())
        .chain([Namespace::new("dlc.oracle").unwrap()])
        .collect()
}

fn check(att: &OracleAttestation, f: &Fixture, event_id: &str) {
    let ann = f.oracle.announcement(event_id).unwrap();
    att.validate(&Secp256k1::verification_only(), &ann)
        .expect("ddk-messages accepts the attestation");
    dlc::verify_attestation(att, &ann).expect("independent BIP340 check");
}

#[test]
fn enum_event_announced_attested_and_verified() {
    let f = Fixture::new(NOW);
    let ann = f
        .oracle
        .create_enum_event("election", NOW as u32 + 60, outcomes(&["alice", "bob", "carol"]))
        .unwrap();
    ann.validate(&Secp256k1::verification_only())
        .expect("ddk-messages accepts the announcement");
    dlc::verify_announcement(&ann).expect("independent BIP340 check");
    assert_eq!(ann.oracle_public_key, f.oracle.public_key());
    assert_eq!(f.oracle.announcement("election").unwrap(), ann);

    // Before maturity: refused, nothing fixed.
    assert!(matches!(
        f.oracle.attest_enum("election", "bob"),
        Err(OracleError::NotMature { .. })
    ));
    assert_eq!(f.oracle.attestation("election").unwrap(), None);
    f.clock.set(NOW + 60);
    assert!(matches!(
        f.oracle.attest_enum("election", "dave"),
        Err(OracleError::UnknownOutcome { .. })
    ));
    assert!(matches!(
        f.oracle.attest_numeric("election", 3),
        Err(OracleError::WrongEventKind { kind: "enum", .. })
    ));

    let att = f.oracle.attest_enum("election", "bob").unwrap();
    check(&att, &f, "election");
    assert_eq!(att.outcomes, ["bob"]);
    let mut forged = att.clone();
    forged.signatures[0] = dlc::tampered(&forged.signatures[0]);
    assert!(dlc::verify_attestation(&forged, &ann).is_err());

    // Again: the same attestation; another outcome: refused, nothing signed.
    assert_eq!(f.oracle.attest_enum("election", "bob").unwrap(), att);
    match f.oracle.attest_enum("election", "alice") {
        Err(OracleError::AlreadyAttested {
            attested, requested, ..
        }) => {
            assert_eq!(attested, ["bob"]);
            assert_eq!(requested, ["alice"]);
        }
        other => panic!("expected AlreadyAttested, got {other:?}"),
    }
    assert_eq!(f.oracle.attestation("election").unwrap(), Some(att.clone()));

    // One id, one announcement.
    assert!(matches!(
        f.oracle.create_enum_event("election", NOW as u32, outcomes(&["x"])),
        Err(OracleError::EventExists { .. })
    ));
    // After a restart: the same, and still one outcome.
    let reopened = f.reopen().unwrap();
    assert_eq!(reopened.attestation("election").unwrap(), Some(att.clone()));
    assert_eq!(reopened.attest_enum("election", "bob").unwrap(), att);
    assert!(matches!(
        reopened.attest_enum("election", "carol"),
        Err(OracleError::AlreadyAttested { .. })
    ));
    let listed = reopened.events(None, 10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kind, EventKind::Enum);
    assert_eq!(listed[0].outcomes.as_deref(), Some(&outcomes(&["bob"])[..]));
}

#[test]
fn numeric_events_sign_every_digit_and_clamp() {
    let f = Fixture::new(NOW);
    let cases = [
        ("btc-20", digits(2, 20, false), 43_210, 43_210),
        ("signed-10", digits(10, 6, true), -1_234, -1_234),
        ("clamped-high", digits(10, 3, false), 123_456, 999),
        ("clamped-low", digits(2, 8, false), -5, 0),
        ("clamped-signed", digits(16, 2, true), -100_000, -255),
    ];
    for (id, d, value, expected) in cases {
        let layout = Digits::new(d.base, d.nb_digits, d.is_signed).unwrap();
        let ann = f.oracle.create_numeric_event(id, NOW as u32, d).unwrap();
        assert_eq!(ann.oracle_event.oracle_nonces.len(), layout.nonce_count());
        ann.validate(&Secp256k1::verification_only()).unwrap();
        dlc::verify_announcement(&ann).unwrap();
        let att = f.oracle.attest_numeric(id, value).unwrap();
        check(&att, &f, id);
        assert_eq!(att.signatures.len(), layout.nonce_count(), "{id}");
        assert_eq!(layout.compose(&att.outcomes).unwrap(), expected, "{id}");
        // The same value again is the same attestation; another value is refused.
        assert_eq!(f.oracle.attest_numeric(id, value).unwrap(), att);
        let other = if layout.clamp(expected + 1) != expected {
            expected + 1
        } else {
            expected - 1
        };
        assert!(matches!(
            f.oracle.attest_numeric(id, other),
            Err(OracleError::AlreadyAttested { .. })
        ));
    }
    // A value that clamps to the attested one is the same outcome.
    assert!(f.oracle.attest_numeric("clamped-high", 5_000).is_ok());
    assert!(matches!(
        f.oracle.create_numeric_event("base-1", NOW as u32, digits(1, 4, false)),
        Err(OracleError::Digits(_))
    ));
}

#[test]
fn hostile_event_descriptions_are_refused_before_any_nonce() {
    let f = Fixture::new(NOW);
    let before = f.hsm.audit_records(0, 10_000).unwrap().len();
    let bad_ids = ["", "a/b", "with space", &"x".repeat(300)];
    for id in bad_ids {
        assert!(matches!(
            f.oracle.create_enum_event(id, 0, outcomes(&["a"])),
            Err(OracleError::InvalidEventId { .. })
        ));
    }
    for list in [
        vec![],
        outcomes(&["a", "a"]),
        outcomes(&["a\u{0}"]),
        vec!["y".repeat(300)],
    ] {
        assert!(matches!(
            f.oracle.create_enum_event("e", 0, list),
            Err(OracleError::InvalidEvent { .. })
        ));
    }
    for d in [digits(2, 0, false), digits(2, 500, true), digits(0, 3, false)] {
        assert!(matches!(
            f.oracle.create_numeric_event("n", 0, d),
            Err(OracleError::Digits(_))
        ));
    }
    assert!(matches!(
        f.oracle.attest_enum("missing", "a"),
        Err(OracleError::EventNotFound { .. })
    ));
    assert_eq!(
        f.hsm.audit_records(0, 10_000).unwrap().len(),
        before,
        "no HSM operation ran"
    );
    assert!(f.oracle.events(None, 10).unwrap().is_empty());
}

#[test]
fn a_rewritten_outcome_record_cannot_get_a_second_outcome_signed() {
    let f = Fixture::new(NOW);
    f.oracle
        .create_enum_event("e1", NOW as u32, outcomes(&["yes", "no"]))
        .unwrap();
    let att = f.oracle.attest_enum("e1", "yes").unwrap();
    // Someone with write access to the store deletes the outcome and the attestation.
    let ns = Namespace::new("dlc.oracle").unwrap();
    f.store.delete(&ns, b"o/e1").unwrap();
    f.store.delete(&ns, b"a/e1").unwrap();
    match f.oracle.attest_enum("e1", "no") {
        Err(OracleError::Hsm(HsmError::NonceAlreadyUsed { .. })) => {}
        other => panic!("expected the HSM to refuse the nonce, got {other:?}"),
    }
    // The outcome the store now claims is "no", but only "yes" was ever signed: the honest
    // retry still gets its own attestation back.
    f.store.delete(&ns, b"o/e1").unwrap();
    assert_eq!(f.oracle.attest_enum("e1", "yes").unwrap(), att);
}

#[test]
fn a_restored_older_store_is_refused_before_any_signature() {
    let f = Fixture::new(NOW);
    f.oracle
        .create_enum_event("e1", NOW as u32, outcomes(&["up", "down"]))
        .unwrap();
    let backup = snapshot(f.store.as_ref(), &all_namespaces());
    let att = f.oracle.attest_enum("e1", "up").unwrap();
    // The store goes back to the backup (the anchor, kept elsewhere, does not).
    put_back(f.store.as_ref(), &backup);
    match f.oracle.attest_enum("e1", "down") {
        Err(OracleError::Hsm(HsmError::RolledBack { .. })) => {}
        other => panic!("the running oracle must refuse, got {other:?}"),
    }
    match f.reopen() {
        Err(OracleError::Hsm(HsmError::RolledBack { .. })) => {}
        other => panic!("reopening must refuse, got {:?}", other.map(|_| ())),
    }
    // The signature made before the restore is still the only one for its nonce.
    dlc::verify_attestation(&att, &f.oracle.announcement("e1").unwrap()).unwrap();
}
