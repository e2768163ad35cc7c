//! BIP84, BIP86 and BIP49 test vectors (`derivation/*.json`) through anya's software HSM.
//!
//! The mnemonic is imported as `KeyMaterial::Bip39` into an exportable root. The root's extended
//! private key (exported) and public key, every account xpub (from `HsmProvider::account_xpub`),
//! every address-level public key (from `HsmProvider::public_key` on a derived reference), and
//! the WIF private keys, Taproot output keys, scriptPubKeys and addresses built from them must
//! equal the file's. BIP84 and BIP49 write extended keys with SLIP-132 versions (`zprv`/`zpub`,
//! `uprv`/`upub`), which rust-bitcoin does not parse: those are compared on the 74 bytes after
//! the version (depth, parent fingerprint, child number, chain code, key) and on the version
//! bytes SLIP-132 assigns.

use std::str::FromStr;

use anya_hsm::conformance::TempHsm;
use anya_hsm::{HsmProvider, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, PublicKey, SecretString, SoftwareHsm};
use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::{hash160, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::key::TapTweak;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::{Address, CompressedPublicKey, KnownHrp, Network, NetworkKind, PrivateKey, ScriptBuf};
use serde_json::Value;

mod common;
use common::str_of;

/// SLIP-132 version bytes of the extended keys the BIPs print.
const ZPRV: [u8; 4] = [0x04, 0xb2, 0x43, 0x0c];
const ZPUB: [u8; 4] = [0x04, 0xb2, 0x47, 0x46];
const UPRV: [u8; 4] = [0x04, 0x4a, 0x4e, 0x28];
const UPUB: [u8; 4] = [0x04, 0x4a, 0x52, 0x62];

fn json(file: &str) -> Value {
    common::json(&format!("derivation/{file}"))
}

/// Hex with or without the BIP text's `0x` prefix.
fn hex(s: &str) -> Vec<u8> {
    common::hex(s.strip_prefix("0x").unwrap_or(s))
}

/// Compares a 78-byte BIP32 serialisation with an extended key string in any version.
/// `version` is the SLIP-132 version the string must carry, or `None` for `xprv`/`xpub`/`tprv`/
/// `tpub`, which are compared as strings by the caller.
fn assert_extended(ours: [u8; 78], want: &str, version: Option<[u8; 4]>, what: &str) {
    let theirs = bitcoin::base58::decode_check(want).unwrap_or_else(|e| panic!("{what}: {want}: {e}"));
    assert_eq!(theirs.len(), 78, "{what}: length");
    assert_eq!(
        ours[4..].to_lower_hex_string(),
        theirs[4..].to_lower_hex_string(),
        "{what}: key data"
    );
    if let Some(version) = version {
        assert_eq!(theirs[..4], version, "{what}: SLIP-132 version");
    }
}

/// One mnemonic imported into a fresh HSM, with its root exported for the xprv comparisons.
struct Run {
    hsm: TempHsm<SoftwareHsm>,
    root: Label,
    root_xpriv: Xpriv,
    secp: Secp256k1<secp256k1::All>,
}

impl Run {
    fn import(mnemonic: &str, network: NetworkKind) -> Self {
        let hsm = anya_hsm::conformance::software_fixture();
        let root = Label::new("root").expect("label");
        hsm.import_key(
            &root,
            KeyMaterial::Bip39 {
                mnemonic: SecretString::from(mnemonic),
                passphrase: SecretString::from(""),
            },
            KeyPolicy::default_for(KeySpec::Bip32Root).exportable(),
        )
        .expect("import mnemonic");
        let exported = hsm.export_key(&root).expect("export root");
        let mut root_xpriv = Xpriv::decode(exported.expose()).expect("78-byte root");
        root_xpriv.network = network;
        Run {
            hsm,
            root,
            root_xpriv,
            secp: Secp256k1::new(),
        }
    }

    fn xpriv_at(&self, path: &DerivationPath) -> Xpriv {
        self.root_xpriv.derive_priv(&self.secp, path).expect("derive")
    }

    /// The account xpub from the HSM, checked against the key derived from the exported root and
    /// carrying the root's fingerprint as its origin.
    fn account_xpub(&self, path: &DerivationPath, network: NetworkKind) -> Xpub {
        let account = self.hsm.account_xpub(&self.root, path, network).expect("account xpub");
        assert_eq!(
            account.origin.0,
            self.root_xpriv.fingerprint(&self.secp),
            "{path}: origin"
        );
        assert_eq!(&account.origin.1, path);
        assert_eq!(
            account.xpub,
            Xpub::from_priv(&self.secp, &self.xpriv_at(path)),
            "{path}"
        );
        account.xpub
    }

    /// The public key at `path` from the HSM; an HSM signature there verifies under it.
    fn public_key(&self, path: &DerivationPath) -> secp256k1::PublicKey {
        let key = KeyRef::derived(&self.root, path);
        let PublicKey::Secp256k1(pk) = self.hsm.public_key(key).expect("public key") else {
            panic!("secp256k1 key")
        };
        let digest = [0x84; 32];
        let sig = self.hsm.sign_ecdsa(key, &digest).expect("sign");
        self.secp
            .verify_ecdsa(&Message::from_digest(digest), &sig, &pk)
            .expect("HSM signature verifies");
        pk
    }
}

#[test]
fn bip84_native_segwit() {
    let v = json("bip84_test_vectors.json");
    let run = Run::import(str_of(&v, "mnemonic"), NetworkKind::Main);
    let mut compared = 0;
    assert_extended(run.root_xpriv.encode(), str_of(&v, "rootpriv"), Some(ZPRV), "rootpriv");
    let root_xpub = run.account_xpub(&DerivationPath::master(), NetworkKind::Main);
    assert_extended(root_xpub.encode(), str_of(&v, "rootpub"), Some(ZPUB), "rootpub");
    compared += 2;
    for d in v["derivations"].as_array().expect("derivations") {
        let path = DerivationPath::from_str(str_of(d, "path")).expect("path");
        if let Some(xpub) = d["xpub"].as_str() {
            assert_extended(run.xpriv_at(&path).encode(), str_of(d, "xpriv"), Some(ZPRV), "xpriv");
            let account = run.account_xpub(&path, NetworkKind::Main);
            assert_extended(account.encode(), xpub, Some(ZPUB), "xpub");
            compared += 2;
        } else {
            let pk = run.public_key(&path);
            assert_eq!(pk.serialize().to_vec(), hex(str_of(d, "pubkey")), "{path}: pubkey");
            let wif = PrivateKey::new(run.xpriv_at(&path).private_key, Network::Bitcoin).to_wif();
            assert_eq!(wif, str_of(d, "privkey"), "{path}: privkey");
            let address = Address::p2wpkh(&CompressedPublicKey(pk), KnownHrp::Mainnet);
            assert_eq!(address.to_string(), str_of(d, "address"), "{path}: address");
            compared += 3;
        }
    }
    assert_eq!(compared, 13, "BIP84 values compared");
}

#[test]
fn bip86_taproot() {
    let v = json("bip86_test_vectors.json");
    let run = Run::import(str_of(&v, "mnemonic"), NetworkKind::Main);
    let mut compared = 0;
    assert_eq!(run.root_xpriv.to_string(), str_of(&v, "rootpriv"), "rootpriv");
    let root_xpub = run.account_xpub(&DerivationPath::master(), NetworkKind::Main);
    assert_eq!(root_xpub.to_string(), str_of(&v, "rootpub"), "rootpub");
    compared += 2;
    for d in v["derivations"].as_array().expect("derivations") {
        let path = DerivationPath::from_str(str_of(d, "path")).expect("path");
        assert_eq!(run.xpriv_at(&path).to_string(), str_of(d, "xprv"), "{path}: xprv");
        assert_eq!(
            run.account_xpub(&path, NetworkKind::Main).to_string(),
            str_of(d, "xpub"),
            "{path}: xpub"
        );
        compared += 2;
        if d.get("internal_key").is_some() {
            let (internal, _) = run.public_key(&path).x_only_public_key();
            assert_eq!(internal.serialize().to_vec(), hex(str_of(d, "internal_key")), "{path}");
            let (output, _) = internal.tap_tweak(&run.secp, None);
            assert_eq!(
                output.to_x_only_public_key().serialize().to_vec(),
                hex(str_of(d, "output_key")),
                "{path}: output key"
            );
            let address = Address::p2tr(&run.secp, internal, None, KnownHrp::Mainnet);
            assert_eq!(
                address.script_pubkey().as_bytes(),
                hex(str_of(d, "scriptPubKey")).as_slice(),
                "{path}"
            );
            assert_eq!(address.to_string(), str_of(d, "address"), "{path}: address");
            compared += 4;
        }
    }
    assert_eq!(compared, 22, "BIP86 values compared");
}

#[test]
fn bip49_nested_segwit_testnet() {
    let v = json("bip49_test_vectors.json");
    let run = Run::import(str_of(&v, "masterseedWords"), NetworkKind::Test);
    let mut compared = 0;
    assert_extended(
        run.root_xpriv.encode(),
        str_of(&v, "masterseed"),
        Some(UPRV),
        "masterseed",
    );
    compared += 1;
    for d in v["derivations"].as_array().expect("derivations") {
        let path = DerivationPath::from_str(str_of(d, "path")).expect("path");
        if let Some(xpub) = d["account0Xpub"].as_str() {
            assert_extended(
                run.xpriv_at(&path).encode(),
                str_of(d, "account0Xpriv"),
                Some(UPRV),
                "account0Xpriv",
            );
            let account = run.account_xpub(&path, NetworkKind::Test);
            assert_extended(account.encode(), xpub, Some(UPUB), "account0Xpub");
            compared += 2;
        } else {
            let secret = run.xpriv_at(&path).private_key;
            assert_eq!(
                secret.secret_bytes().to_vec(),
                hex(str_of(d, "account0recvPrivateKeyHex")),
                "{path}"
            );
            assert_eq!(
                PrivateKey::new(secret, Network::Testnet).to_wif(),
                str_of(d, "account0recvPrivateKey"),
                "{path}: WIF"
            );
            let pk = run.public_key(&path);
            assert_eq!(
                pk.serialize().to_vec(),
                hex(str_of(d, "account0recvPublicKeyHex")),
                "{path}"
            );
            let keyhash = hash160::Hash::hash(&pk.serialize());
            assert_eq!(
                keyhash.to_byte_array().to_vec(),
                hex(str_of(d, "keyhash")),
                "{path}: keyhash"
            );
            let redeem = ScriptBuf::new_p2wpkh(&CompressedPublicKey(pk).wpubkey_hash());
            assert_eq!(
                redeem.as_bytes(),
                hex(str_of(d, "scriptSig")).as_slice(),
                "{path}: redeem script"
            );
            assert_eq!(
                redeem.script_hash().to_byte_array().to_vec(),
                hex(str_of(d, "addressBytes")),
                "{path}: script hash"
            );
            let address = Address::p2shwpkh(&CompressedPublicKey(pk), NetworkKind::Test);
            assert_eq!(address.to_string(), str_of(d, "address"), "{path}: address");
            compared += 7;
        }
    }
    assert_eq!(compared, 10, "BIP49 values compared");
}
