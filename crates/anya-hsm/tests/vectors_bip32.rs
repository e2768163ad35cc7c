//! BIP32 test vectors 1-5 (valid derivations and every invalid key).

mod common;

use std::str::FromStr;

use anya_hsm::{
    HsmError, HsmProvider, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, PublicKey, SecretBytes, SecretString,
};
use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::NetworkKind;
use secp256k1::{Message, Secp256k1};

fn json() -> serde_json::Value {
    serde_json::from_str(&common::read_vector("bip32/bip32_test_vectors.json")).expect("json")
}

#[test]
fn valid_vectors_derive_inside_the_provider() {
    let f = common::fixture();
    let secp = Secp256k1::new();
    let policy = KeyPolicy::default_for(KeySpec::Bip32Root).exportable();
    let mut chains = 0;
    for v in json()["valid"].as_array().expect("valid") {
        let n = v["vector"].as_u64().expect("vector");
        let root = Label::new(format!("bip32-{n}")).expect("label");
        let seed = common::hex(v["seed"].as_str().expect("seed"));
        f.hsm
            .import_key(&root, KeyMaterial::Bip32Seed(SecretBytes::new(seed)), policy)
            .expect("import seed");
        for (i, chain) in v["chains"].as_array().expect("chains").iter().enumerate() {
            let path = DerivationPath::from_str(chain["path"].as_str().expect("path")).expect("path");
            let want_xpub = chain["xpub"].as_str().expect("xpub");
            let want_xprv = chain["xprv"].as_str().expect("xprv");
            let got = f.hsm.account_xpub(&root, &path, NetworkKind::Main).expect("xpub");
            assert_eq!(got.xpub.to_string(), want_xpub, "vector {n} {path}");
            assert_eq!(got.origin.1, path);
            // Sign at the path; the signature verifies under the vector's public key.
            let PublicKey::Secp256k1(pk) = f.hsm.public_key(KeyRef::derived(&root, &path)).expect("pk") else {
                panic!("secp256k1 key")
            };
            assert_eq!(pk, Xpub::from_str(want_xpub).expect("xpub").public_key);
            let sig = f
                .hsm
                .sign_ecdsa(KeyRef::derived(&root, &path), &[n as u8; 32])
                .expect("sign");
            secp.verify_ecdsa(&Message::from_digest([n as u8; 32]), &sig, &pk)
                .expect("verifies");
            // The vector's xprv, imported as a root, exports the same 78 bytes and has the xpub.
            let id = Label::new(format!("bip32-{n}-{i}")).expect("label");
            f.hsm
                .import_key(&id, KeyMaterial::Xpriv(SecretString::from(want_xprv)), policy)
                .expect("import xprv");
            let exported = f.hsm.export_key(&id).expect("export");
            assert_eq!(Xpriv::decode(exported.expose()).expect("decode").to_string(), want_xprv);
            let m = DerivationPath::master();
            assert_eq!(
                f.hsm
                    .account_xpub(&id, &m, NetworkKind::Main)
                    .expect("xpub")
                    .xpub
                    .to_string(),
                want_xpub
            );
            chains += 1;
        }
    }
    assert_eq!(chains, 17);
    f.hsm.verify_audit_chain().expect("audit chain");
}

#[test]
fn every_invalid_key_is_rejected() {
    let f = common::fixture();
    let policy = KeyPolicy::default_for(KeySpec::Bip32Root);
    let invalid = json()["invalid"].as_array().expect("invalid").clone();
    assert_eq!(invalid.len(), 16);
    for (i, case) in invalid.iter().enumerate() {
        let key = case["key"].as_str().expect("key");
        let reason = case["reason"].as_str().expect("reason");
        let id = Label::new(format!("invalid-{i}")).expect("label");
        let r = f
            .hsm
            .import_key(&id, KeyMaterial::Xpriv(SecretString::from(key)), policy);
        assert!(
            matches!(r, Err(HsmError::Bip32 { .. } | HsmError::InvalidExtendedKey { .. })),
            "provider accepted invalid key ({reason}): {r:?}"
        );
        assert!(
            anya_hsm::bip32::parse_xpub(key).is_err(),
            "parse_xpub accepted invalid key ({reason})"
        );
    }
    assert!(f.hsm.list_keys().expect("list").is_empty());
}
