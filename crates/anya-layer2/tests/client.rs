//! The oracle client against hostile servers: whatever a server answers, the client returns a
//! typed error or a message that verifies under the oracle's key for the event asked for —
//! never a panic, never a forged, altered or misdirected message.

mod common;

use std::time::Duration;

use anya_layer2::dlc::client::{ClientError, OracleClient, RouteFamily};
use anya_layer2::dlc::messages::{OracleAnnouncement, OracleAttestation};
use anya_testkit::dlc;
use anya_testkit::http::{HttpServer, Reply};
use common::Fixture;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;

/// A real oracle's messages for one enum event, and a client connected to a server that
/// answers with whatever the test sets.
struct Hostile {
    server: HttpServer,
    client: OracleClient,
    ann: OracleAnnouncement,
    att: OracleAttestation,
    other: OracleAnnouncement,
    _f: Fixture,
}

fn hostile() -> Hostile {
    let f = Fixture::new(NOW);
    let outcomes = vec!["yes".to_owned(), "no".to_owned()];
    let ann = f.oracle.create_enum_event("e", NOW as u32, outcomes.clone()).unwrap();
    let att = f.oracle.attest_enum("e", "yes").unwrap();
    let other = f.oracle.create_enum_event("other", NOW as u32, outcomes).unwrap();
    let server = HttpServer::start(Reply::Body(
        json!({"pubkey": f.oracle.public_key().to_string()}).to_string(),
    ));
    let base = server.url().trim_end_matches("/ticker").to_owned();
    let client = OracleClient::connect(&base, RouteFamily::Kormir, Duration::from_secs(5)).unwrap();
    Hostile {
        server,
        client,
        ann,
        att,
        other,
        _f: f,
    }
}

fn answer(h: &Hostile, body: &Value) {
    h.server.set(Reply::Body(body.to_string()));
}

#[test]
fn forged_altered_and_misdirected_messages_are_refused() {
    let h = hostile();
    let genuine = serde_json::to_value(&h.ann).unwrap();
    answer(&h, &genuine);
    assert_eq!(h.client.announcement("e").unwrap(), h.ann);

    // Another event's genuine announcement, served for "e".
    answer(&h, &serde_json::to_value(&h.other).unwrap());
    assert!(matches!(h.client.announcement("e"), Err(ClientError::Invalid { .. })));
    // A signature that does not verify.
    let mut bad = h.ann.clone();
    bad.announcement_signature = dlc::tampered(&bad.announcement_signature);
    answer(&h, &serde_json::to_value(&bad).unwrap());
    assert!(matches!(h.client.announcement("e"), Err(ClientError::Invalid { .. })));
    // A changed maturity under the original signature.
    let mut moved = h.ann.clone();
    moved.oracle_event.event_maturity_epoch += 1;
    answer(&h, &serde_json::to_value(&moved).unwrap());
    assert!(matches!(h.client.announcement("e"), Err(ClientError::Invalid { .. })));

    // Attestations: genuine, then another outcome's signature, then a short one.
    answer(&h, &serde_json::to_value(&h.att).unwrap());
    assert_eq!(h.client.attestation_for(&h.ann).unwrap(), h.att);
    let mut lie = h.att.clone();
    lie.outcomes = vec!["no".to_owned()];
    answer(&h, &serde_json::to_value(&lie).unwrap());
    assert!(matches!(
        h.client.attestation_for(&h.ann),
        Err(ClientError::Invalid { .. })
    ));
    let mut short = h.att.clone();
    short.signatures.clear();
    short.outcomes.clear();
    answer(&h, &serde_json::to_value(&short).unwrap());
    assert!(matches!(
        h.client.attestation_for(&h.ann),
        Err(ClientError::Invalid { .. })
    ));
    // Another event's attestation.
    let mut elsewhere = h.att.clone();
    elsewhere.event_id = "other".to_owned();
    answer(&h, &serde_json::to_value(&elsewhere).unwrap());
    assert!(matches!(
        h.client.attestation_for(&h.ann),
        Err(ClientError::Invalid { .. })
    ));

    // Not JSON, a status, a body past the limit.
    h.server.set(Reply::Body("<html>".to_owned()));
    assert!(matches!(h.client.announcement("e"), Err(ClientError::Malformed { .. })));
    h.server.set(Reply::Status(404));
    assert!(matches!(
        h.client.announcement("e"),
        Err(ClientError::Status { status: 404, .. })
    ));
    h.server
        .set(Reply::Body(format!("\"{}\"", "a".repeat(5 * 1024 * 1024))));
    assert!(matches!(h.client.announcement("e"), Err(ClientError::Malformed { .. })));
    // An id the routes cannot carry is refused before any request.
    assert!(matches!(h.client.announcement("a/b"), Err(ClientError::EventId { .. })));
}

/// Flips, inserts or deletes characters of a JSON text.
fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(at, kind, byte) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = at % bytes.len();
        match kind % 3 {
            0 => bytes[i] = byte,
            1 => bytes.insert(i, byte),
            _ => {
                bytes.remove(i);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_answers_never_yield_a_different_message() {
    let h = hostile();
    let ann_text = serde_json::to_string(&h.ann).unwrap();
    let att_text = serde_json::to_string(&h.att).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    let edits = prop::collection::vec(
        (
            any::<usize>(),
            any::<u8>(),
            prop::sample::select(b"0123456789abcdef\",:{}[] xyz".to_vec()),
        ),
        1..4,
    );
    runner
        .run(&(edits.clone(), edits), |(a, b)| {
            h.server.set(Reply::Body(mutate(&ann_text, &a)));
            if let Ok(got) = h.client.announcement("e") {
                prop_assert_eq!(&got, &h.ann, "an altered announcement was accepted");
                prop_assert!(dlc::verify_announcement(&got).is_ok());
            }
            h.server.set(Reply::Body(mutate(&att_text, &b)));
            if let Ok(got) = h.client.attestation_for(&h.ann) {
                prop_assert_eq!(&got, &h.att, "an altered attestation was accepted");
                prop_assert!(dlc::verify_attestation(&got, &h.ann).is_ok());
            }
            Ok(())
        })
        .unwrap();
}
