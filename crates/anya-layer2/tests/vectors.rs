//! Every oracle announcement in the dlcspecs test vectors parses, re-serializes byte for byte
//! (as it sits inside the vector's serialized offer) and verifies.
//!
//! The vectors were generated before dlcspecs signed oracle messages over BIP340 tagged hashes
//! (`DLC/oracle/announcement/v0`): their announcement signatures are over SHA256 of the
//! serialized `oracle_event`, so they are verified that way here, with secp256k1 alone, and the
//! test checks that the tagged-hash verification (what ddk-messages and anya's oracle use now)
//! refuses them, so that the difference stays visible. anya's own announcements and
//! attestations are checked with the tagged hashes in `tests/oracle.rs`.

mod common;

use anya_testkit::dlc;

use anya_layer2::dlc::messages::OracleAnnouncement;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::FromHex;
use lightning::util::ser::{Readable, Writeable};
use secp256k1::{Message, Secp256k1};
use serde_json::Value;

fn announcements<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("oracleAnnouncement", _) => out.push(child),
                    ("oracleAnnouncements", Value::Array(items)) => out.extend(items.iter()),
                    _ => announcements(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| announcements(i, out)),
        _ => {}
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn every_vector_announcement_round_trips_and_verifies() {
    let dir = format!("{}dlc/test_vectors", common::VECTORS);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 14, "the dlcspecs test vector files");
    let secp = Secp256k1::verification_only();
    let mut checked = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let offer = Vec::<u8>::from_hex(v["offer_message"]["serialized"].as_str().unwrap()).unwrap();
        let mut found = Vec::new();
        announcements(&v["offer_message"]["message"], &mut found);
        assert!(!found.is_empty(), "{path:?} has no announcement");
        for json in found {
            let ann: OracleAnnouncement =
                serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let bytes = ann.encode();
            // As the offer carries it: an oracle_announcement TLV (type 55332).
            let tlv = dlc::tlv(55332, &bytes);
            assert!(
                contains(&offer, &tlv),
                "{path:?}: {} is not byte for byte in the offer",
                ann.oracle_event.event_id
            );
            let reread = OracleAnnouncement::read(&mut lightning::io::Cursor::new(&bytes)).unwrap();
            assert_eq!(reread, ann);
            assert_eq!(reread.encode(), bytes);
            ann.oracle_event
                .validate()
                .unwrap_or_else(|e| panic!("{path:?}: nonce count: {e:?}"));
            let digest = Message::from_digest(sha256::Hash::hash(&ann.oracle_event.encode()).to_byte_array());
            secp.verify_schnorr(&ann.announcement_signature, &digest, &ann.oracle_public_key)
                .unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let tampered = dlc::tampered(&ann.announcement_signature);
            assert!(secp.verify_schnorr(&tampered, &digest, &ann.oracle_public_key).is_err());
            // The pre-tagging signature is not a tagged-hash signature.
            assert!(dlc::verify_announcement(&ann).is_err());
            assert!(ann.validate(&secp).is_err());
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} announcements");
}
