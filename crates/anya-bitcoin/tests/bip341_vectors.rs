//! BIP341 wallet test vectors (`bip341/wallet-test-vectors.json`).
//!
//! `scriptPubKey`: each internal key and script tree is built with rust-bitcoin's
//! `TaprootBuilder`; the leaf hashes, merkle root, tweak, output key, scriptPubKey, BIP350
//! address and every control block must equal the file's.
//!
//! `keyPathSpending`: every input's BIP341 signature message and sighash are computed with
//! `SighashCache`, and the signature is made by anya's software HSM from the imported internal
//! private key (tweaked inside the provider). The BIP's signatures were made with all-zero
//! auxiliary randomness, so `AuxRand::Given([0; 32])` must reproduce the witness bytes exactly,
//! and the transaction with our witnesses must serialize to the file's `fullySignedTx`.

use std::str::FromStr;

use anya_hsm::{AuxRand, HsmProvider, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, SecretBytes};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::hex::DisplayHex;
use bitcoin::key::{Keypair, TapTweak, UntweakedPublicKey};
use bitcoin::secp256k1::{Secp256k1, SecretKey, XOnlyPublicKey};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::{LeafVersion, TapLeafHash, TapNodeHash, TaprootBuilder};
use bitcoin::{Address, Amount, Network, ScriptBuf, Transaction, TxOut, Witness};
use serde_json::Value;

mod common;
use common::hex_of as hex;

fn json() -> Value {
    common::json("bip341/wallet-test-vectors.json")
}

fn hex32(v: &Value) -> [u8; 32] {
    hex(v).try_into().expect("32 bytes")
}

fn node_hash(v: &Value) -> Option<TapNodeHash> {
    (!v.is_null()).then(|| TapNodeHash::from_byte_array(hex32(v)))
}

/// Adds the leaves of a BIP341 `scriptTree` (a leaf object, or a two-element array of subtrees)
/// in depth-first order, recording each leaf under its `id`.
fn add_tree(
    builder: TaprootBuilder,
    tree: &Value,
    depth: u8,
    leaves: &mut Vec<(u64, ScriptBuf, LeafVersion)>,
) -> TaprootBuilder {
    match tree {
        Value::Array(children) => {
            assert_eq!(children.len(), 2, "a script tree branch has two children");
            let builder = add_tree(builder, &children[0], depth + 1, leaves);
            add_tree(builder, &children[1], depth + 1, leaves)
        }
        Value::Object(leaf) => {
            let script = ScriptBuf::from_bytes(hex(&leaf["script"]));
            let version = u8::try_from(leaf["leafVersion"].as_u64().expect("leafVersion")).expect("u8 leaf version");
            let version = LeafVersion::from_consensus(version).expect("valid leaf version");
            leaves.push((leaf["id"].as_u64().expect("id"), script.clone(), version));
            builder
                .add_leaf_with_ver(depth, script, version)
                .expect("leaf in DFS order")
        }
        other => panic!("unexpected script tree node {other}"),
    }
}

#[test]
fn script_pub_key_section_matches() {
    let secp = Secp256k1::verification_only();
    let cases = json()["scriptPubKey"].as_array().expect("scriptPubKey").clone();
    let (mut outputs, mut control_blocks) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let given = &case["given"];
        let inter = &case["intermediary"];
        let expected = &case["expected"];
        let internal = XOnlyPublicKey::from_slice(&hex(&given["internalPubkey"])).expect("internal key");

        let mut leaves = Vec::new();
        let info = if given["scriptTree"].is_null() {
            bitcoin::taproot::TaprootSpendInfo::new_key_spend(&secp, internal, None)
        } else {
            let builder = add_tree(TaprootBuilder::new(), &given["scriptTree"], 0, &mut leaves);
            builder.finalize(&secp, internal).expect("complete tree")
        };

        // Leaf hashes, indexed by the file's leaf ids.
        leaves.sort_by_key(|(id, ..)| *id);
        if let Some(hashes) = inter["leafHashes"].as_array() {
            assert_eq!(hashes.len(), leaves.len(), "case {i}: leaf count");
            for ((_, script, version), want) in leaves.iter().zip(hashes) {
                let got = TapLeafHash::from_script(script, *version);
                assert_eq!(got.to_byte_array(), hex32(want), "case {i}: leaf hash");
            }
        }
        assert_eq!(
            info.merkle_root(),
            node_hash(&inter["merkleRoot"]),
            "case {i}: merkle root"
        );
        assert_eq!(
            info.tap_tweak().to_byte_array(),
            hex32(&inter["tweak"]),
            "case {i}: tweak"
        );
        let output_key = info.output_key();
        assert_eq!(
            output_key.to_x_only_public_key().serialize(),
            hex32(&inter["tweakedPubkey"]),
            "case {i}: tweaked key"
        );
        // The same output key through the key-level API anya's HSM uses.
        let (tweaked, _) = UntweakedPublicKey::tap_tweak(internal, &secp, info.merkle_root());
        assert_eq!(tweaked, output_key, "case {i}");

        let spk = ScriptBuf::new_p2tr_tweaked(output_key);
        assert_eq!(
            spk.as_bytes(),
            hex(&expected["scriptPubKey"]).as_slice(),
            "case {i}: scriptPubKey"
        );
        let address = Address::p2tr_tweaked(output_key, bitcoin::KnownHrp::Mainnet);
        assert_eq!(
            address.to_string(),
            expected["bip350Address"].as_str().expect("address"),
            "case {i}: address"
        );
        let parsed = Address::from_str(expected["bip350Address"].as_str().expect("address"))
            .expect("address parses")
            .require_network(Network::Bitcoin)
            .expect("mainnet");
        assert_eq!(parsed.script_pubkey(), spk, "case {i}: address round trip");

        if let Some(blocks) = expected["scriptPathControlBlocks"].as_array() {
            assert_eq!(blocks.len(), leaves.len(), "case {i}: control block count");
            for ((id, script, version), want) in leaves.iter().zip(blocks) {
                let block = info
                    .control_block(&(script.clone(), *version))
                    .unwrap_or_else(|| panic!("case {i} leaf {id}: no control block"));
                assert_eq!(block.serialize(), hex(want), "case {i} leaf {id}: control block");
                assert!(
                    block.verify_taproot_commitment(&secp, output_key.to_x_only_public_key(), script),
                    "case {i} leaf {id}: control block commits"
                );
                control_blocks += 1;
            }
        } else {
            assert!(leaves.is_empty(), "case {i}: leaves without control blocks");
        }
        outputs += 1;
    }
    assert_eq!(
        (outputs, control_blocks),
        (7, 12),
        "scriptPubKey cases and control blocks processed"
    );
}

#[test]
fn key_path_spending_sighashes_and_hsm_signatures_match() {
    let secp = Secp256k1::new();
    let hsm = anya_hsm::conformance::software_fixture();
    let sections = json()["keyPathSpending"].as_array().expect("keyPathSpending").clone();
    let mut inputs = 0;
    for section in &sections {
        let given = &section["given"];
        let tx: Transaction = deserialize(&hex(&given["rawUnsignedTx"])).expect("unsigned tx");
        let utxos: Vec<TxOut> = given["utxosSpent"]
            .as_array()
            .expect("utxosSpent")
            .iter()
            .map(|u| TxOut {
                value: Amount::from_sat(u["amountSats"].as_u64().expect("amountSats")),
                script_pubkey: ScriptBuf::from_bytes(hex(&u["scriptPubKey"])),
            })
            .collect();
        assert_eq!(utxos.len(), tx.input.len());

        let mut witnesses: Vec<(usize, Witness)> = Vec::new();
        {
            let mut cache = SighashCache::new(&tx);
            for spend in section["inputSpending"].as_array().expect("inputSpending") {
                let g = &spend["given"];
                let im = &spend["intermediary"];
                let index = usize::try_from(g["txinIndex"].as_u64().expect("txinIndex")).expect("index");
                let hash_type = u8::try_from(g["hashType"].as_u64().expect("hashType")).expect("u8");
                let sighash_type = TapSighashType::from_consensus_u8(hash_type).expect("valid hash type");
                let merkle_root = node_hash(&g["merkleRoot"]);

                // Key facts, with rust-bitcoin.
                let secret = SecretKey::from_slice(&hex(&g["internalPrivkey"])).expect("secret key");
                let keypair = Keypair::from_secret_key(&secp, &secret);
                let (internal, _) = keypair.x_only_public_key();
                assert_eq!(internal.serialize(), hex32(&im["internalPubkey"]), "input {index}");
                let tweaked = keypair.tap_tweak(&secp, merkle_root).to_keypair();
                assert_eq!(tweaked.secret_bytes(), hex32(&im["tweakedPrivkey"]), "input {index}");

                // Signature message and sighash.
                let mut sig_msg = Vec::new();
                cache
                    .taproot_encode_signing_data_to(
                        &mut sig_msg,
                        index,
                        &Prevouts::All(&utxos),
                        None,
                        None,
                        sighash_type,
                    )
                    .expect("signing data");
                assert_eq!(
                    sig_msg.to_lower_hex_string(),
                    hex(&im["sigMsg"]).to_lower_hex_string(),
                    "input {index}"
                );
                let sighash = cache
                    .taproot_key_spend_signature_hash(index, &Prevouts::All(&utxos), sighash_type)
                    .expect("sighash");
                assert_eq!(sighash.to_byte_array(), hex32(&im["sigHash"]), "input {index}: sighash");

                // Signature, from the HSM.
                let id = Label::new(format!("bip341-{inputs}")).expect("label");
                hsm.import_key(
                    &id,
                    KeyMaterial::Secp256k1(SecretBytes::new(hex(&g["internalPrivkey"]))),
                    KeyPolicy::default_for(KeySpec::Secp256k1),
                )
                .expect("import key");
                let sig = hsm
                    .sign_taproot_key_spend(
                        KeyRef::Key(&id),
                        &sighash.to_byte_array(),
                        merkle_root,
                        AuxRand::Given([0; 32]),
                    )
                    .expect("sign");
                let mut witness_sig = sig.serialize().to_vec();
                if sighash_type != TapSighashType::Default {
                    witness_sig.push(hash_type);
                }
                let expected = spend["expected"]["witness"].as_array().expect("witness");
                assert_eq!(expected.len(), 1, "a key-path witness has one element");
                assert_eq!(
                    witness_sig.to_lower_hex_string(),
                    hex(&expected[0]).to_lower_hex_string(),
                    "input {index}: signature with zero aux rand"
                );
                witnesses.push((index, Witness::from_slice(&[witness_sig])));
                inputs += 1;
            }
        }
        // The fully signed transaction carries our witnesses on the key-path inputs (its other
        // inputs, P2PKH and P2WPKH, are signed outside this section) and is otherwise the
        // unsigned one.
        let mut full: Transaction = deserialize(&hex(&section["auxiliary"]["fullySignedTx"])).expect("signed tx");
        for (index, witness) in &witnesses {
            assert_eq!(
                &full.input[*index].witness, witness,
                "input {index}: witness in fullySignedTx"
            );
        }
        for txin in &mut full.input {
            txin.script_sig = ScriptBuf::new();
            txin.witness = Witness::new();
        }
        assert_eq!(
            serialize(&full),
            serialize(&tx),
            "fullySignedTx spends the unsigned transaction"
        );
    }
    assert_eq!(
        (sections.len(), inputs),
        (1, 7),
        "keyPathSpending sections and inputs processed"
    );
    hsm.verify_audit_chain().expect("audit chain");
}
