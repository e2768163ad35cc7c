//! anya's PSBT verdict against a real regtest bitcoind's (issue 10): a PSBT built by an anya
//! wallet, then mutated (wrong prevout txid, index out of range, mismatched witness and
//! non-witness UTXO, duplicate keys, truncated bytes, PSBTv2 fields in a v0 PSBT, amounts over
//! the money limit). anya's verdict is [`psbt::decode`] then [`psbt::validate`]; Core's is
//! `decodepsbt` then the `error` field of `analyzepsbt`. Each case states that both accept or
//! both refuse (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`; skipped without it).
//!
//! Written first, this test found four PSBTs anya accepted and Core refused; each is a case
//! below now that anya refuses it too: bytes after the last output map, PSBTv2-only fields in
//! a v0 PSBT (rust-bitcoin keeps them as unknown keys), and an input spending an `OP_RETURN`
//! output.

use anya_bitcoin::psbt;
use anya_testkit::Bitcoind;
use bitcoin::base64::engine::general_purpose::STANDARD;
use bitcoin::base64::Engine;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, ScriptBuf};
use bitcoincore_rpc::RpcApi;
use serde_json::{json, Value};

mod common;

use common::fixture::{bip84, burn, fixture, rate};

/// Calls `method`; a refusal is an answer here, so Core's error comes back as `Err`.
fn call(node: &Bitcoind, method: &str, params: Value) -> Result<Value, String> {
    let params = params.as_array().cloned().unwrap_or_default();
    node.client().call::<Value>(method, &params).map_err(|e| e.to_string())
}

/// Core's verdict on `bytes`: `Err` with its reason if `decodepsbt` or `analyzepsbt` refuses.
fn core_verdict(node: &Bitcoind, bytes: &[u8]) -> Result<(), String> {
    let b64 = STANDARD.encode(bytes);
    call(node, "decodepsbt", json!([b64])).map_err(|e| format!("decodepsbt: {e}"))?;
    let analysis = call(node, "analyzepsbt", json!([b64])).map_err(|e| format!("analyzepsbt: {e}"))?;
    match analysis.get("error") {
        Some(error) => Err(format!("analyzepsbt: {error}")),
        None => Ok(()),
    }
}

/// anya's verdict on `bytes`: `Err` with its reason if [`psbt::decode`] or [`psbt::validate`]
/// refuses.
fn anya_verdict(bytes: &[u8]) -> Result<(), String> {
    let decoded = psbt::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    psbt::validate(&decoded).map_err(|e| format!("validate: {e}"))
}

/// What both sides should say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    BothAccept,
    BothRefuse,
    /// anya refuses what Core accepts: anya is stricter, which is safe.
    OnlyAnyaRefuses,
}

fn check(node: &Bitcoind, name: &str, bytes: &[u8], expect: Expect) {
    let core = core_verdict(node, bytes);
    let anya = anya_verdict(bytes);
    match expect {
        Expect::BothAccept | Expect::BothRefuse => {
            assert_eq!(
                core.is_ok(),
                anya.is_ok(),
                "{name}: core says {core:?}, anya says {anya:?}"
            );
            assert_eq!(
                anya.is_ok(),
                expect == Expect::BothAccept,
                "{name}: expected {expect:?}, both say {anya:?} / {core:?}"
            );
        }
        Expect::OnlyAnyaRefuses => {
            assert!(core.is_ok(), "{name}: expected core to accept, it says {core:?}");
            assert!(anya.is_err(), "{name}: expected anya to refuse, it accepts");
        }
    }
}

/// A PSBT's maps as raw key-value pairs (each pair's bytes, framing included): the global map,
/// then the input maps, then the output maps (BIP174: `<keylen><key><valuelen><value>`, a map
/// ends with a zero key length).
fn maps(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut at = psbt::MAGIC.len();
    assert_eq!(&bytes[..at], &psbt::MAGIC, "the PSBT starts with the magic");
    let mut maps = Vec::new();
    let mut map = Vec::new();
    while at < bytes.len() {
        let start = at;
        let key_len = compact_size(bytes, &mut at);
        if key_len == 0 {
            maps.push(std::mem::take(&mut map));
            continue;
        }
        at += key_len;
        let value_len = compact_size(bytes, &mut at);
        at += value_len;
        map.push(bytes[start..at].to_vec());
    }
    assert!(map.is_empty(), "the last map is closed");
    maps
}

/// Reads a compact size at `at` and moves past it.
fn compact_size(bytes: &[u8], at: &mut usize) -> usize {
    let width = match bytes[*at] {
        0xfd => 2,
        0xfe => 4,
        0xff => 8,
        n => {
            *at += 1;
            return usize::from(n);
        }
    };
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(&bytes[*at + 1..*at + 1 + width]);
    *at += 1 + width;
    usize::try_from(u64::from_le_bytes(le)).expect("a test PSBT's lengths fit in usize")
}

/// The PSBT bytes of `maps`.
fn unmaps(maps: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut bytes = psbt::MAGIC.to_vec();
    for map in maps {
        for pair in map {
            bytes.extend_from_slice(pair);
        }
        bytes.push(0x00);
    }
    bytes
}

/// `bytes` with `pair` added at the end of map `index` (0 is the global map).
fn with_pair(bytes: &[u8], index: usize, pair: Vec<u8>) -> Vec<u8> {
    let mut maps = maps(bytes);
    maps[index].push(pair);
    unmaps(&maps)
}

/// `bytes` with the first pair of map `index` whose key type is `key_type` written twice.
fn with_duplicate(bytes: &[u8], index: usize, key_type: u8) -> Vec<u8> {
    let mut maps = maps(bytes);
    // Key lengths in the test PSBT are below 0xfd, so the key type is the pair's second byte.
    let pair = maps[index]
        .iter()
        .find(|p| p[1] == key_type)
        .unwrap_or_else(|| panic!("map {index} has a key of type {key_type:#04x}"))
        .clone();
    maps[index].push(pair);
    unmaps(&maps)
}

#[test]
fn psbt_verdicts_agree_with_decodepsbt_and_analyzepsbt() {
    let Some(node) = Bitcoind::start() else { return };
    let mut f = fixture();
    let mut wallet = f.wallet("differential", &bip84(0));
    f.fund(&mut [&mut wallet]);
    let built = wallet
        .build(&[(burn(), Amount::from_sat(100_000_000))], rate(2))
        .expect("a funded wallet builds a payment");
    assert_eq!(built.inputs.len(), 1, "one coinbase funds the payment");
    let input = &built.inputs[0];
    let prev_tx = input
        .non_witness_utxo
        .clone()
        .expect("BDK adds non_witness_utxo to a P2WPKH input");
    assert!(input.witness_utxo.is_some(), "BDK adds witness_utxo to a P2WPKH input");
    let vout = built.unsigned_tx.input[0].previous_output.vout;
    let spent_index = usize::try_from(vout).expect("a small output index");
    let mutated = |change: &dyn Fn(&mut Psbt)| {
        let mut p = built.clone();
        change(&mut p);
        p.serialize()
    };
    let bytes = built.serialize();
    let check = |name: &str, bytes: &[u8], expect: Expect| check(&node, name, bytes, expect);

    check("as built", &bytes, Expect::BothAccept);
    check(
        "only witness_utxo",
        &mutated(&|p| p.inputs[0].non_witness_utxo = None),
        Expect::BothAccept,
    );
    check(
        "only non_witness_utxo",
        &mutated(&|p| p.inputs[0].witness_utxo = None),
        Expect::BothAccept,
    );
    check(
        "no utxo at all (a creator's PSBT)",
        &mutated(&|p| {
            p.inputs[0].witness_utxo = None;
            p.inputs[0].non_witness_utxo = None;
        }),
        Expect::BothAccept,
    );

    // The spent output's amount changed by one satoshi: the non_witness_utxo's txid is no
    // longer the prevout's.
    let mut other_tx = prev_tx.clone();
    other_tx.output[spent_index].value += Amount::from_sat(1);
    assert_ne!(other_tx.compute_txid(), prev_tx.compute_txid());
    check(
        "non_witness_utxo with the wrong txid",
        &mutated(&|p| p.inputs[0].non_witness_utxo = Some(other_tx.clone())),
        Expect::BothRefuse,
    );
    check(
        "non_witness_utxo with the wrong txid, witness_utxo removed",
        &mutated(&|p| {
            p.inputs[0].non_witness_utxo = Some(other_tx.clone());
            p.inputs[0].witness_utxo = None;
        }),
        Expect::BothRefuse,
    );

    let outputs = u32::try_from(prev_tx.output.len()).expect("a coinbase has few outputs");
    check(
        "prevout index one past the non_witness_utxo's outputs",
        &mutated(&|p| p.unsigned_tx.input[0].previous_output.vout = outputs),
        Expect::BothRefuse,
    );
    check(
        "prevout index u32::MAX",
        &mutated(&|p| p.unsigned_tx.input[0].previous_output.vout = u32::MAX),
        Expect::BothRefuse,
    );

    // differs from Core: Core reads the spent output from non_witness_utxo and ignores a
    // witness_utxo that disagrees with it; anya refuses the PSBT (WitnessUtxoMismatch), since a
    // signer reading witness_utxo would be told a wrong amount. anya is stricter.
    check(
        "witness_utxo one satoshi off the non_witness_utxo's output",
        &mutated(&|p| {
            if let Some(w) = p.inputs[0].witness_utxo.as_mut() {
                w.value += Amount::from_sat(1);
            }
        }),
        Expect::OnlyAnyaRefuses,
    );

    let over = Amount::MAX_MONEY + Amount::from_sat(1);
    check(
        "witness_utxo over the money limit",
        &mutated(&|p| {
            p.inputs[0].non_witness_utxo = None;
            if let Some(w) = p.inputs[0].witness_utxo.as_mut() {
                w.value = over;
            }
        }),
        Expect::BothRefuse,
    );
    check(
        "output over the money limit",
        &mutated(&|p| p.unsigned_tx.output[0].value = over),
        Expect::BothRefuse,
    );

    // Byte-level mutations: rust-bitcoin will not serialize these, so the pairs are written
    // by hand (map 0 is the global map, map 1 the first input's).
    check(
        "duplicate PSBT_GLOBAL_UNSIGNED_TX",
        &with_duplicate(&bytes, 0, 0x00),
        Expect::BothRefuse,
    );
    check(
        "duplicate PSBT_IN_NON_WITNESS_UTXO",
        &with_duplicate(&bytes, 1, 0x00),
        Expect::BothRefuse,
    );
    check(
        "duplicate PSBT_IN_WITNESS_UTXO",
        &with_duplicate(&bytes, 1, 0x01),
        Expect::BothRefuse,
    );
    check(
        "duplicate PSBT_IN_BIP32_DERIVATION",
        &with_duplicate(&bytes, 1, 0x06),
        Expect::BothRefuse,
    );
    check(
        "duplicate unknown input key",
        &with_pair(
            &with_pair(&bytes, 1, vec![2, 0xee, 0x01, 1, 0x01]),
            1,
            vec![2, 0xee, 0x01, 1, 0x02],
        ),
        Expect::BothRefuse,
    );
    check(
        "one unknown input key",
        &with_pair(&bytes, 1, vec![2, 0xee, 0x01, 1, 0x01]),
        Expect::BothAccept,
    );

    check("the last byte cut", &bytes[..bytes.len() - 1], Expect::BothRefuse);
    check("cut in half", &bytes[..bytes.len() / 2], Expect::BothRefuse);
    check("only the magic", &psbt::MAGIC, Expect::BothRefuse);
    let mut trailing = bytes.clone();
    trailing.push(0x00);
    check("a byte after the last map", &trailing, Expect::BothRefuse);

    check(
        "spends an OP_RETURN output",
        &mutated(&|p| {
            p.inputs[0].non_witness_utxo = None;
            if let Some(w) = p.inputs[0].witness_utxo.as_mut() {
                w.script_pubkey = ScriptBuf::new_op_return([0x61; 4]);
            }
        }),
        Expect::BothRefuse,
    );

    // PSBTv2 (BIP370) in a PSBT that carries a v0 unsigned transaction.
    check(
        "PSBT_GLOBAL_VERSION 2 beside PSBT_GLOBAL_UNSIGNED_TX",
        &with_pair(&bytes, 0, vec![1, 0xfb, 4, 2, 0, 0, 0]),
        Expect::BothRefuse,
    );
    check(
        "PSBT_GLOBAL_VERSION 1",
        &with_pair(&bytes, 0, vec![1, 0xfb, 4, 1, 0, 0, 0]),
        Expect::BothRefuse,
    );
    check(
        "PSBT_GLOBAL_TX_VERSION (v2 only) in a v0 PSBT",
        &with_pair(&bytes, 0, vec![1, 0x02, 4, 2, 0, 0, 0]),
        Expect::BothRefuse,
    );
    check(
        "PSBT_IN_PREVIOUS_TXID (v2 only) in a v0 PSBT",
        &with_pair(&bytes, 1, {
            let mut pair = vec![1, 0x0e, 32];
            pair.extend_from_slice(&[0x11; 32]);
            pair
        }),
        Expect::BothRefuse,
    );
    check(
        "PSBT_OUT_AMOUNT (v2 only) in a v0 PSBT",
        &with_pair(&bytes, 1 + built.inputs.len(), vec![1, 0x03, 8, 1, 0, 0, 0, 0, 0, 0, 0]),
        Expect::BothRefuse,
    );
    check(
        "PSBT_GLOBAL_VERSION 0",
        &with_pair(&bytes, 0, vec![1, 0xfb, 4, 0, 0, 0, 0]),
        Expect::BothAccept,
    );
}
