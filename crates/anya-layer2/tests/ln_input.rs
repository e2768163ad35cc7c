//! Offers and peer addresses from users: `parse_offer` reads back what LDK writes and gives
//! `InvalidOffer` for anything else (truncated, damaged, arbitrary text), `parse_peer` reads
//! `<node id>@<host>:<port>` and gives `InvalidPeer` for anything else; neither panics. A
//! bitcoind cookie file that is missing or not `user:password` is a `Cookie` error.

use anya_layer2::lightning::ldk_node::lightning::ln::msgs::SocketAddress;
use anya_layer2::lightning::ldk_node::lightning::offers::offer::OfferBuilder;
use anya_layer2::lightning::{parse_offer, parse_peer, BitcoindRpc, LightningError};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::Network;
use proptest::prelude::*;

fn key(byte: u8) -> PublicKey {
    PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[byte; 32]).expect("key"))
}

/// An offer as LDK writes it (`lno1…`): 21,000 sat on regtest, signed by `key(7)`.
fn offer_text() -> String {
    OfferBuilder::new(key(7))
        .chain(Network::Regtest)
        .amount_msats(21_000_000)
        .description("anya test".into())
        .build()
        .expect("offer")
        .to_string()
}

#[test]
fn offers_read_back_and_malformed_ones_are_typed_errors() {
    let text = offer_text();
    let offer = parse_offer(&text).expect("an offer LDK wrote");
    assert_eq!(offer.issuer_signing_pubkey(), Some(key(7)));
    assert_eq!(offer.to_string(), text);
    assert_eq!(
        parse_offer(&format!("  lightning:{text}\n"))
            .expect("with a scheme")
            .to_string(),
        text
    );
    for bad in [
        "",
        "lno1",
        "lno1qqqq",
        "lnbc1",
        "not an offer",
        &text[..text.len() / 2],
        &text.replace("lno1", "lni1"),
        &format!("{text}+"),
    ] {
        assert!(
            matches!(parse_offer(bad), Err(LightningError::InvalidOffer(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn unreadable_or_malformed_cookies_are_typed_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("missing");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "no colon here").expect("write");
    for path in [&missing, &bad] {
        match BitcoindRpc::from_cookie("127.0.0.1", 18443, path) {
            Err(LightningError::Cookie { path: p, .. }) => assert_eq!(&p, path),
            other => panic!("expected a cookie error for {}, got {other:?}", path.display()),
        }
    }
    let good = dir.path().join("good");
    std::fs::write(&good, "__cookie__:secret\n").expect("write");
    let rpc = BitcoindRpc::from_cookie("127.0.0.1", 18443, &good).expect("a cookie bitcoind writes");
    assert!(!format!("{rpc:?}").contains("secret"), "the password is not printed");
}

#[test]
fn peers_parse_and_malformed_ones_are_typed_errors() {
    let id = key(3);
    let (got, address) = parse_peer(&format!(" {id}@127.0.0.1:9735 ")).expect("IPv4");
    assert_eq!(got, id);
    assert_eq!(
        address,
        SocketAddress::TcpIpV4 {
            addr: [127, 0, 0, 1],
            port: 9735
        }
    );
    assert!(matches!(
        parse_peer(&format!("{id}@[::1]:9735")).expect("IPv6").1,
        SocketAddress::TcpIpV6 { port: 9735, .. }
    ));
    assert!(matches!(
        parse_peer(&format!("{id}@node.example:9735")).expect("host name").1,
        SocketAddress::Hostname { port: 9735, .. }
    ));
    for bad in [
        String::new(),
        format!("{id}"),
        format!("{id}@"),
        format!("{id}@127.0.0.1"),
        format!("{id}@127.0.0.1:99999"),
        format!("{id}@127.0.0.1:port"),
        "02abc@127.0.0.1:9735".to_owned(),
        format!("{}@127.0.0.1:9735", &id.to_string()[2..]),
        "@127.0.0.1:9735".to_owned(),
    ] {
        assert!(
            matches!(parse_peer(&bad), Err(LightningError::InvalidPeer(_))),
            "{bad:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// An offer cut short or with a character changed reads as an offer (BOLT12's bech32 has
    /// no checksum, so a changed character may still be a well-formed offer) or is the typed
    /// error; never a panic.
    #[test]
    fn damaged_offers_never_panic(cut in 0usize..400, at in 0usize..400, c in 0u8..32) {
        let text = offer_text();
        let short = &text[..cut.min(text.len().saturating_sub(1))];
        prop_assert!(matches!(parse_offer(short), Err(LightningError::InvalidOffer(_))));
        let mut chars: Vec<char> = text.chars().collect();
        let i = at % chars.len();
        chars[i] = char::from(b"qpzry9x8gf2tvdw0s3jn54khce6mua7l"[usize::from(c)]);
        let damaged: String = chars.into_iter().collect();
        prop_assert!(matches!(parse_offer(&damaged), Ok(_) | Err(LightningError::InvalidOffer(_))));
    }

    /// Arbitrary text is the typed error for both parsers, never a panic.
    #[test]
    fn arbitrary_text_is_a_typed_error(text in ".{0,200}") {
        for candidate in [text.clone(), format!("lno1{text}")] {
            let r = parse_offer(&candidate);
            prop_assert!(matches!(r, Err(LightningError::InvalidOffer(_))), "{:?}: {:?}", candidate, r);
        }
        let peer = format!("{}@{text}", key(3));
        prop_assert!(matches!(parse_peer(&peer), Ok(_) | Err(LightningError::InvalidPeer(_))));
        prop_assert!(matches!(parse_peer(&text), Err(LightningError::InvalidPeer(_))));
    }
}
