//! BIP39 English vectors (trezor/python-mnemonic vectors.json, passphrase "TREZOR").

mod common;

use anya_hsm::{HsmProvider, KeyMaterial, KeyPolicy, KeySpec, Label, SecretString};
use bitcoin::bip32::Xpriv;

#[test]
fn english_vectors_seed_and_xprv() {
    let json: serde_json::Value = serde_json::from_str(&common::read_vector("bip39/vectors.json")).expect("json");
    let f = common::fixture();
    let policy = KeyPolicy::default_for(KeySpec::Bip32Root).exportable();
    let english = json["english"].as_array().expect("english");
    assert_eq!(english.len(), 24);
    for (i, v) in english.iter().enumerate() {
        let [entropy, words, seed, xprv] = [0, 1, 2, 3].map(|j| v[j].as_str().expect("vector field").to_owned());
        let mnemonic = bip39::Mnemonic::from_entropy(&common::hex(&entropy)).expect("entropy");
        assert_eq!(mnemonic.to_string(), words, "vector {i} mnemonic");
        assert_eq!(
            mnemonic.to_seed("TREZOR").to_vec(),
            common::hex(&seed),
            "vector {i} seed"
        );
        let id = Label::new(format!("bip39-{i}")).expect("label");
        let material = KeyMaterial::Bip39 {
            mnemonic: SecretString::from(words.as_str()),
            passphrase: SecretString::from("TREZOR"),
        };
        f.hsm.import_key(&id, material, policy).expect("import mnemonic");
        let exported = f.hsm.export_key(&id).expect("export");
        assert_eq!(
            Xpriv::decode(exported.expose()).expect("xpriv").to_string(),
            xprv,
            "vector {i} xprv"
        );
    }
}

#[test]
fn bad_mnemonic_is_typed() {
    let f = common::fixture();
    let material = KeyMaterial::Bip39 {
        mnemonic: SecretString::from(
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon",
        ),
        passphrase: SecretString::from(""),
    };
    let r = f.hsm.import_key(
        &Label::new("bad").expect("label"),
        material,
        KeyPolicy::default_for(KeySpec::Bip32Root),
    );
    assert!(matches!(r, Err(anya_hsm::HsmError::Mnemonic { .. })), "{r:?}");
}
