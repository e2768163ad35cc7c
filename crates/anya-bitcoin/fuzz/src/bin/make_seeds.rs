//! Writes the seed corpus of each fuzz target into `corpus/<target>/` (run from this crate's
//! directory: `cargo +nightly run --bin make-seeds`):
//! - `psbt`: the BIP174, BIP370 and BIP371 vectors (hex and base64, from `shared/vectors`), and
//!   PSBTs the harness's own wallets build, sign and finalize, so that mutations reach the
//!   signer;
//! - `transaction`: the wallets' signed transactions and the BIP341 key-path vector, each
//!   followed by the outputs it spends;
//! - `wallet_records`: every record of the harness's wallet, behind the byte that selects it.

use std::path::{Path, PathBuf};

use anya_bitcoin::policy::SpendPolicy;
use anya_bitcoin::psbt;
use anya_bitcoin::regtest::RegtestChain;
use anya_bitcoin_fuzz::Harness;
use anya_storage::{Namespace, Scan};
use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::FromHex;
use bitcoin::{Address, Amount, FeeRate, Network, ScriptBuf, Transaction, TxOut};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../../shared/vectors");

fn write(target: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let name = sha256::Hash::hash(bytes).to_string();
    std::fs::write(dir.join(&name[..16]), bytes).expect("seed written");
}

fn json(path: &str) -> serde_json::Value {
    let path = Path::new(VECTORS).join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vector JSON")
}

fn burn() -> ScriptBuf {
    "bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2"
        .parse::<Address<_>>()
        .expect("address")
        .require_network(Network::Regtest)
        .expect("regtest")
        .script_pubkey()
}

fn main() {
    for file in ["bip174", "bip370", "bip371"] {
        let v = json(&format!("psbt/{file}_test_vectors.json"));
        for (_, cases) in v.as_object().expect("object").iter().filter(|(_, c)| c.is_array()) {
            for case in cases.as_array().expect("array").iter().filter(|c| c.is_object()) {
                if let Some(hex) = case["hex"].as_str() {
                    write("psbt", &Vec::from_hex(hex).expect("hex"));
                }
                if let Some(b64) = case["base64"].as_str() {
                    write("psbt", b64.as_bytes());
                }
            }
        }
    }
    let v = json("bip341/wallet-test-vectors.json");
    for case in v["keyPathSpending"].as_array().expect("array") {
        let mut bytes = Vec::from_hex(case["given"]["rawUnsignedTx"].as_str().expect("tx")).expect("hex");
        for utxo in case["given"]["utxosSpent"].as_array().expect("utxos") {
            let out = TxOut {
                value: Amount::from_sat(utxo["amountSats"].as_u64().expect("amount")),
                script_pubkey: ScriptBuf::from_hex(utxo["scriptPubKey"].as_str().expect("spk")).expect("hex"),
            };
            bytes.extend(serialize(&out));
        }
        write("transaction", &bytes);
    }

    let mut h = Harness::new();
    let mut chain = RegtestChain::new();
    let burn = burn();
    let rate = FeeRate::from_sat_per_vb(3).expect("rate");
    for i in 0..h.wallets.len() {
        let to = h.wallets[i].next_address().expect("address").script_pubkey();
        for n in 0..101 {
            let pay = if n == 0 { &to } else { &burn };
            chain.mine(pay, Vec::new()).expect("block");
            let (block, height) = (chain.tip().clone(), chain.height());
            for w in &mut h.wallets {
                w.apply_block(&block, height).expect("block applies");
            }
        }
        let w = &mut h.wallets[i];
        let mut p = w
            .build(&[(burn.clone(), Amount::from_sat(1_000_000))], rate)
            .expect("built");
        write("psbt", &p.serialize());
        write("psbt", psbt::encode_base64(&p).as_bytes());
        w.policy()
            .set_rules(&SpendPolicy {
                max_per_tx: Some(Amount::from_sat(5_000_000)),
                max_fee_rate: Some(FeeRate::from_sat_per_vb(100).expect("rate")),
                ..SpendPolicy::default()
            })
            .expect("rules");
        // Through the policy, so that its records exist for the wallet_records seeds.
        w.sign(&mut p).expect("signed");
        write("psbt", &p.serialize());
        psbt::finalize(&mut p).expect("finalized");
        write("psbt", &p.serialize());
        let tx: Transaction = psbt::extract_verified(&p).expect("extracted");
        let mut bytes = serialize(&tx);
        for input in &p.inputs {
            bytes.extend(serialize(input.witness_utxo.as_ref().expect("a witness utxo")));
        }
        write("transaction", &bytes);
    }

    let records = |ns: &str| {
        let ns = Namespace::new(ns).expect("ns");
        h.store.scan(&ns, Scan::all()).expect("scan")
    };
    for e in records("anya/wallets").iter().filter(|e| e.key == b"w84") {
        write("wallet_records", &[&[0u8][..], &e.value].concat());
    }
    write("wallet_records", &[1, 0, 0, 0, 100]);
    for e in records("anya/wallet/w84/policy") {
        let select = if e.key == b"rules" {
            2u8
        } else if e.key.starts_with(b"s/") {
            3
        } else if e.key.starts_with(b"t/") {
            4
        } else {
            continue;
        };
        write("wallet_records", &[&[select][..], &e.value].concat());
    }
    for (n, e) in records("anya/wallet/w84")
        .iter()
        .filter(|e| e.key.starts_with(b"cs/"))
        .enumerate()
    {
        let select = 5u8.saturating_add(u8::try_from(n).unwrap_or(u8::MAX - 5));
        write("wallet_records", &[&[select][..], &e.value].concat());
    }
}
