//! BOLT11's own examples (`../shared/vectors/lightning/bolt11_test_vectors.json`): every valid
//! invoice decodes through anya's `parse_invoice` and `InvoiceSummary` to the fields the
//! vectors record (amount, timestamp, every tagged field, the payee), and every invalid one is
//! a typed error. Hostile strings (truncations, flipped characters) are typed errors too.

mod common;

use anya_layer2::lightning::{parse_invoice, InvoiceSummary, LightningError};
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::Network;
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Value {
    let path = format!("{}lightning/bolt11_test_vectors.json", common::VECTORS);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the BOLT11 vectors")).expect("json")
}

fn hex32(v: &Value) -> [u8; 32] {
    <[u8; 32]>::from_hex(v.as_str().expect("hex")).expect("32 bytes")
}

#[test]
fn valid_invoices_decode_to_the_recorded_fields() {
    let v = vectors();
    let valid = v["valid"].as_array().expect("valid");
    assert_eq!(valid.len(), 16);
    for case in valid {
        let what = case["description"].as_str().expect("description");
        let text = case["invoice"].as_str().expect("invoice");
        let invoice = parse_invoice(text).unwrap_or_else(|e| panic!("{what}: {e}"));
        let s = InvoiceSummary::of(&invoice);
        let d = &case["decoded"];
        let network = match d["currency_prefix"].as_str().expect("prefix") {
            "lnbc" => Network::Bitcoin,
            "lntb" => Network::Testnet,
            "lnbcrt" => Network::Regtest,
            "lntbs" => Network::Signet,
            other => panic!("{what}: prefix {other}"),
        };
        assert_eq!(s.network, network, "{what}");
        assert_eq!(s.amount_msat, d["amount_msat"].as_u64(), "{what}");
        assert_eq!(s.timestamp, d["timestamp"].as_u64().expect("timestamp"), "{what}");
        assert_eq!(
            s.payee.to_string(),
            d["recovered_payee_pubkey"].as_str().expect("payee"),
            "{what}"
        );
        // Fields not given take BOLT11's defaults.
        let mut expiry = 3600;
        let mut cltv = 18;
        let mut features: Vec<usize> = Vec::new();
        let mut fallbacks: Vec<String> = Vec::new();
        let mut hints = 0;
        for field in d["tagged_fields"].as_array().expect("fields") {
            // Fields of an unknown type or a non-standard length: a reader skips them, and the
            // fields of the same type that follow are the ones checked.
            if field.get("note").is_some() {
                continue;
            }
            let value = &field["value"];
            match field["type"].as_str().expect("type") {
                "p" => assert_eq!(s.payment_hash, hex32(value), "{what}"),
                "s" => assert_eq!(s.payment_secret, hex32(value), "{what}"),
                "d" => assert_eq!(s.description.as_deref(), value.as_str(), "{what}"),
                "h" => assert_eq!(s.description_hash, Some(hex32(value)), "{what}"),
                "x" => expiry = value.as_u64().expect("expiry"),
                "c" => cltv = value.as_u64().expect("cltv"),
                "9" => {
                    features = value
                        .as_array()
                        .expect("bits")
                        .iter()
                        .map(|b| usize::try_from(b.as_u64().expect("bit")).expect("small"))
                        .collect()
                }
                // A fallback of an unknown version has no address: readers skip it.
                "f" => fallbacks.extend(value.get("address").and_then(Value::as_str).map(str::to_owned)),
                "r" => {
                    let hops = value.as_array().expect("hops");
                    let got = &s.route_hints[hints];
                    assert_eq!(got.len(), hops.len(), "{what}");
                    for (hop, want) in got.iter().zip(hops) {
                        assert_eq!(hop.node_id.to_string(), want["pubkey"].as_str().expect("pubkey"));
                        assert_eq!(
                            hop.short_channel_id.to_be_bytes().to_lower_hex_string(),
                            want["short_channel_id"].as_str().expect("scid")
                        );
                        assert_eq!(
                            u64::from(hop.fee_base_msat),
                            want["fee_base_msat"].as_u64().expect("fee")
                        );
                        assert_eq!(
                            u64::from(hop.fee_proportional_millionths),
                            want["fee_proportional_millionths"].as_u64().expect("ppm")
                        );
                        assert_eq!(
                            u64::from(hop.cltv_expiry_delta),
                            want["cltv_expiry_delta"].as_u64().expect("cltv")
                        );
                    }
                    hints += 1;
                }
                "m" => assert_eq!(
                    s.payment_metadata.as_ref().map(|m| m.to_lower_hex_string()).as_deref(),
                    value.as_str(),
                    "{what}"
                ),
                // The payee field: checked through `payee` above.
                "n" => assert_eq!(value.as_str(), Some(s.payee.to_string().as_str()), "{what}"),
                other => panic!("{what}: field {other} is not checked"),
            }
        }
        assert_eq!(s.expiry_secs, expiry, "{what}");
        assert_eq!(s.min_final_cltv_expiry_delta, cltv, "{what}");
        assert_eq!(s.features, features, "{what}");
        assert_eq!(s.fallback_addresses, fallbacks, "{what}");
        assert_eq!(s.route_hints.len(), hints, "{what}");
        // Whitespace and a URI prefix around it change nothing.
        let wrapped = parse_invoice(&format!("  lightning:{text}\n")).expect("wrapped");
        assert_eq!(wrapped, invoice, "{what}");
    }
}

#[test]
fn invalid_invoices_are_typed_errors() {
    let v = vectors();
    let invalid = v["invalid"].as_array().expect("invalid");
    assert_eq!(invalid.len(), 10);
    for case in invalid {
        let what = case["description"].as_str().expect("description");
        let r = parse_invoice(case["invoice"].as_str().expect("invoice"));
        assert!(matches!(r, Err(LightningError::InvalidInvoice(_))), "{what}: {r:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A valid invoice cut short, or with one character changed (which bech32's checksum
    /// always detects), is the typed error.
    #[test]
    fn damaged_invoices_are_typed_errors(case in 0usize..16, cut in 0usize..400, at in 0usize..400, c in 0u8..32) {
        let v = vectors();
        let text = v["valid"][case]["invoice"].as_str().expect("invoice").to_owned();
        let short = &text[..cut.min(text.len().saturating_sub(1))];
        prop_assert!(matches!(parse_invoice(short), Err(LightningError::InvalidInvoice(_))));
        let mut chars: Vec<char> = text.chars().collect();
        let i = at % chars.len();
        let replacement = char::from(b"qpzry9x8gf2tvdw0s3jn54khce6mua7l"[usize::from(c)]);
        prop_assume!(chars[i] != replacement);
        chars[i] = replacement;
        let damaged: String = chars.into_iter().collect();
        prop_assert!(matches!(parse_invoice(&damaged), Err(LightningError::InvalidInvoice(_))), "{}", damaged);
    }

    /// Arbitrary text, bare or after an invoice's prefix, is the typed error, never a panic.
    #[test]
    fn arbitrary_text_is_a_typed_error(text in ".{0,300}") {
        for candidate in [text.clone(), format!("lnbc1{text}"), format!("lnbcrt25m1{text}")] {
            let r = parse_invoice(&candidate);
            prop_assert!(matches!(r, Err(LightningError::InvalidInvoice(_))), "{:?}: {:?}", candidate, r);
        }
    }
}
