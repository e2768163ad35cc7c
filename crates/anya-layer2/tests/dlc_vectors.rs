//! The dlcspecs cryptographic vectors against the DLC crates anya builds on: `secp256k1-zkp`
//! (as `ddk_dlc` re-exports it), `ddk-dlc` and `ddk-manager`.
//!
//! * `ecdsa_adaptor.json`: ECDSA adaptor signatures (verification, decryption, recovery and
//!   serialization vectors, valid and invalid).
//! * `contract_id_test.json`: the `contract_id` derivation of `Protocol.md`.
//! * `test_vectors/*.json`: full offer/accept/sign flows. The vectors hold no expected
//!   transactions, so the funding, refund and contract execution transactions are rebuilt with
//!   ddk-dlc (`create_dlc_transactions`, and `create_cets` for a disjoint contract's later
//!   contract infos) from the offer and accept as ddk-messages and ddk-manager read them, and
//!   the signatures the vectors do carry are checked against them: the offerer's funding
//!   witnesses (also by Bitcoin Core's script interpreter through `anya_bitcoin::verify`), both
//!   refund signatures (and the fully signed refund, again by the interpreter), every CET
//!   adaptor signature of both parties, and the `contract_id` of the sign message. A wrong byte
//!   in a rebuilt transaction makes the signatures over it fail.
//!
//! The flow vectors predate two dlcspecs changes, which the tests bridge openly:
//! * the enumerated payout field was then called `localPayout` (ddk-messages reads
//!   `offerPayout`); the JSON key is renamed before the message is deserialized;
//! * oracles then signed `SHA256(outcome)` (no `DLC/oracle/attestation/v0` tagged hash), so the
//!   adaptor points are built from those untagged messages, and the tests check that the tagged
//!   points ddk-manager uses now are refused, so that the difference stays visible (the same
//!   holds for the announcements, see `tests/vectors.rs`).
//!
//! They also carry, for disjoint contracts, the CET construction of the rust-dlc code that
//! generated them and that ddk-manager still has, which departs from `Transactions.md` and
//! leaves the parties' signatures on different CETs: see
//! `flow_vector_cet_adaptor_signatures_verify`.

mod common;

use std::path::PathBuf;
use std::str::FromStr;

use anya_bitcoin::verify::{verify_input, VerifyFlags};
use bitcoin::consensus::encode::deserialize;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::FromHex;
use bitcoin::{Amount, CompressedPublicKey, OutPoint, ScriptBuf, Transaction, TxOut, Txid, Witness};
use ddk_dlc::secp256k1_zkp::ecdsa::Signature;
use ddk_dlc::secp256k1_zkp::{All, EcdsaAdaptorSignature, Message, PublicKey, Secp256k1, SecretKey};
use ddk_dlc::{DlcTransactions, OracleInfo, PartyParams, Payout, TxInputInfo};
use ddk_manager::contract::accepted_contract::AcceptedContract;
use ddk_manager::contract::contract_info::ContractInfo;
use ddk_manager::contract::offered_contract::OfferedContract;
use ddk_manager::contract::{AdaptorInfo, ContractDescriptor};
use ddk_messages::oracle_msgs::EventDescriptor;
use ddk_messages::{AcceptDlc, FundingInput, OfferDlc, SignDlc};
use serde_json::Value;

/// The number of flow vectors dlcspecs ships in `test/test_vectors`.
const FLOW_FILES: usize = 14;

fn read_json(relative: &str) -> Value {
    let path = format!("{}{relative}", common::VECTORS);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no hex string `{key}` in {v}"));
    Vec::<u8>::from_hex(s).unwrap_or_else(|e| panic!("`{key}`: {e}"))
}

fn hex32(v: &Value, key: &str) -> [u8; 32] {
    hex_field(v, key)
        .try_into()
        .unwrap_or_else(|b: Vec<u8>| panic!("`{key}` is {} bytes, not 32", b.len()))
}

/// `error` absent or null: the vector is a success case.
fn expects_success(v: &Value) -> bool {
    v.get("error").is_none_or(Value::is_null)
}

// ---------------------------------------------------------------------------------------------
// ecdsa_adaptor.json
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct AdaptorCounts {
    verification_valid: usize,
    verification_invalid: usize,
    recovery_valid: usize,
    recovery_invalid: usize,
    serialization_valid: usize,
    serialization_invalid: usize,
}

impl AdaptorCounts {
    fn total(&self) -> usize {
        self.verification_valid
            + self.verification_invalid
            + self.recovery_valid
            + self.recovery_invalid
            + self.serialization_valid
            + self.serialization_invalid
    }
}

/// Every vector of `ecdsa_adaptor.json`, by kind:
///
/// * `verification`: `EcdsaAdaptorSignature::verify` succeeds exactly for the valid vectors; for
///   those, `decrypt` with the decryption key gives the vector's signature (a valid ECDSA
///   signature of the message under the signing key), and `recover` gives the decryption key
///   back (negated where the vector says so: that is its expected value).
/// * `recovery`: `recover` gives the vector's decryption key, or fails where the vector has none
///   (the signature's R does not match the adaptor signature's); where a key is given,
///   decrypting with it gives the vector's signature up to the sign of s.
/// * `serialization`: `EcdsaAdaptorSignature::from_slice` checks the length only (it is an
///   unchecked wrapper), so the encoding is checked where the library parses it: R and R_a as
///   points (`PublicKey::from_slice`, the same parser the C code uses), and r and s_a by
///   `decrypt`, whose deserializer refuses a zero or overflowing s_a.
#[test]
fn ecdsa_adaptor_vectors_verify_decrypt_and_recover() {
    let vectors = read_json("dlc/ecdsa_adaptor.json");
    let vectors = vectors.as_array().expect("ecdsa_adaptor.json is an array");
    let secp = Secp256k1::new();
    let mut counts = AdaptorCounts::default();

    for (i, v) in vectors.iter().enumerate() {
        let kind = v["kind"].as_str().unwrap_or_else(|| panic!("vector {i}: no kind"));
        let ok = expects_success(v);
        let adaptor_bytes = hex_field(v, "adaptor_sig");
        let adaptor = EcdsaAdaptorSignature::from_slice(&adaptor_bytes)
            .unwrap_or_else(|e| panic!("vector {i}: 162-byte adaptor signature: {e}"));
        match kind {
            "verification" => {
                let msg = Message::from_digest(hex32(v, "message_hash"));
                let pubkey = PublicKey::from_slice(&hex_field(v, "public_signing_key")).expect("signing key");
                let enc = PublicKey::from_slice(&hex_field(v, "encryption_key")).expect("encryption key");
                let verified = adaptor.verify(&secp, &msg, &pubkey, &enc);
                assert_eq!(verified.is_ok(), ok, "vector {i} ({kind}): verify gave {verified:?}");
                if ok {
                    let dec = SecretKey::from_slice(&hex_field(v, "decryption_key")).expect("decryption key");
                    let expected = Signature::from_compact(&hex_field(v, "signature")).expect("signature");
                    let decrypted = adaptor
                        .decrypt(&dec)
                        .unwrap_or_else(|e| panic!("vector {i}: decrypt: {e}"));
                    assert_eq!(decrypted, expected, "vector {i}: decrypted signature");
                    secp.verify_ecdsa(&msg, &decrypted, &pubkey)
                        .unwrap_or_else(|e| panic!("vector {i}: decrypted signature does not verify: {e}"));
                    let recovered = adaptor
                        .recover(&secp, &expected, &enc)
                        .unwrap_or_else(|e| panic!("vector {i}: recover: {e}"));
                    assert_eq!(recovered, dec, "vector {i}: recovered decryption key");
                    counts.verification_valid += 1;
                } else {
                    counts.verification_invalid += 1;
                }
            }
            "recovery" => {
                let enc = PublicKey::from_slice(&hex_field(v, "encryption_key")).expect("encryption key");
                let sig = Signature::from_compact(&hex_field(v, "signature")).expect("signature");
                let recovered = adaptor.recover(&secp, &sig, &enc);
                match v["decryption_key"].as_str() {
                    Some(_) => {
                        assert!(ok, "vector {i}: a decryption key and an error");
                        let dec = SecretKey::from_slice(&hex_field(v, "decryption_key")).expect("decryption key");
                        let recovered = recovered.unwrap_or_else(|e| panic!("vector {i}: recover: {e}"));
                        assert_eq!(recovered, dec, "vector {i}: recovered decryption key");
                        // `decrypt` always yields low s; the vector's signature may be high s.
                        let mut decrypted = adaptor.decrypt(&dec).expect("decrypt");
                        let mut expected = sig;
                        decrypted.normalize_s();
                        expected.normalize_s();
                        assert_eq!(decrypted, expected, "vector {i}: decrypted signature");
                        counts.recovery_valid += 1;
                    }
                    None => {
                        assert!(!ok, "vector {i}: no decryption key but no error");
                        assert!(
                            recovered.is_err(),
                            "vector {i}: recover should fail, gave {recovered:?}"
                        );
                        counts.recovery_invalid += 1;
                    }
                }
            }
            "serialization" => {
                let r = PublicKey::from_slice(&adaptor_bytes[..33]);
                let r_a = PublicKey::from_slice(&adaptor_bytes[33..66]);
                // Any valid scalar will do: only the deserialization of r and s_a can fail.
                let key = SecretKey::from_slice(&[1; 32]).expect("valid scalar");
                let decrypted = adaptor.decrypt(&key);
                let parsed = r.is_ok() && r_a.is_ok() && decrypted.is_ok();
                assert_eq!(
                    parsed,
                    ok,
                    "vector {i} ({kind}, {}): R {r:?}, R_a {r_a:?}, decrypt {decrypted:?}",
                    v["comment"].as_str().or(v["error"].as_str()).unwrap_or("")
                );
                if ok {
                    counts.serialization_valid += 1;
                } else {
                    // The invalid ones are invalid for their s_a alone: the points parse.
                    assert!(r.is_ok() && r_a.is_ok(), "vector {i}: the points should parse");
                    counts.serialization_invalid += 1;
                }
            }
            other => panic!("vector {i}: unknown kind {other}"),
        }
    }

    assert_eq!(counts.total(), vectors.len(), "a vector was skipped: {counts:?}");
    assert!(
        counts.verification_valid > 0
            && counts.verification_invalid > 0
            && counts.recovery_valid > 0
            && counts.recovery_invalid > 0
            && counts.serialization_valid > 0
            && counts.serialization_invalid > 0,
        "every kind, valid and invalid, is exercised: {counts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// contract_id_test.json
// ---------------------------------------------------------------------------------------------

/// `contract_id` as `Protocol.md` defines it: the funding txid XOR the temporary contract id,
/// with the funding output index XORed big-endian into the last two bytes.
///
/// The txid is taken in its displayed byte order (the order of `Txid`'s `Display`/`FromStr`,
/// i.e. Bitcoin Core's RPC order, the reverse of the order inside the transaction). That is the
/// order the hex `fundTxId` of `contract_id_test.json` is written in (XORing the reversed bytes
/// matches none of its four vectors) and the order ddk-manager's private `compute_id` reads
/// (`fund_tx_id[31 - i]`); the flow vectors confirm it on real funding transactions
/// (`flow_vector_contract_ids_match_ddk_manager`).
fn spec_contract_id(fund_txid: Txid, fund_output_index: u16, temporary_id: &[u8; 32]) -> [u8; 32] {
    let mut txid = fund_txid.to_byte_array();
    txid.reverse();
    let mut id = [0; 32];
    for ((out, t), tmp) in id.iter_mut().zip(txid).zip(temporary_id) {
        *out = t ^ tmp;
    }
    let [hi, lo] = fund_output_index.to_be_bytes();
    id[30] ^= hi;
    id[31] ^= lo;
    id
}

/// Every case of `contract_id_test.json`.
///
/// ddk-manager's own derivation (`utils::compute_id`) is `pub(crate)`: its only public door is
/// `AcceptedContract::get_contract_id`, which takes the txid from a funding transaction, so it
/// cannot be fed a bare txid. These vectors are therefore checked against the dlcspecs
/// definition above, and `flow_vector_contract_ids_match_ddk_manager` shows on 14 real funding
/// transactions that ddk-manager's `get_contract_id` equals that same definition.
#[test]
fn contract_id_vectors_match_the_dlcspecs_definition() {
    let vectors = read_json("dlc/contract_id_test.json");
    let vectors = vectors.as_array().expect("contract_id_test.json is an array");
    assert!(!vectors.is_empty());
    let mut checked = 0;
    for (i, v) in vectors.iter().enumerate() {
        let txid = Txid::from_str(v["fundTxId"].as_str().expect("fundTxId")).expect("txid hex");
        let index = u16::try_from(v["fundOutputIndex"].as_u64().expect("fundOutputIndex")).expect("u16 index");
        let temporary = hex32(v, "temporaryContractId");
        let expected = hex32(v, "contractId");
        assert_eq!(spec_contract_id(txid, index, &temporary), expected, "vector {i}");
        // The other byte order gives another id: the order is what the vector pins.
        let mut reversed = txid.to_byte_array();
        reversed.reverse();
        let other = spec_contract_id(Txid::from_byte_array(reversed), index, &temporary);
        assert_ne!(other, expected, "vector {i}: byte order not pinned");
        checked += 1;
    }
    assert_eq!(checked, vectors.len());
}

// ---------------------------------------------------------------------------------------------
// test_vectors/*.json: full offer / accept / sign flows
// ---------------------------------------------------------------------------------------------

/// One flow vector, parsed with ddk-messages and rebuilt with ddk-dlc.
struct Flow {
    name: String,
    offer: OfferDlc,
    accept: AcceptDlc,
    sign: SignDlc,
    /// The offer as ddk-manager reads it (contract infos, descriptors, announcements).
    offered: OfferedContract,
    offer_params: PartyParams,
    accept_params: PartyParams,
    /// The payouts of each contract info, in order; their CETs follow one another.
    payouts: Vec<Vec<Payout>>,
    txs: DlcTransactions,
    /// The outputs every funding input spends.
    prevouts: Vec<(OutPoint, TxOut)>,
}

fn flow_files() -> Vec<PathBuf> {
    let dir = format!("{}dlc/test_vectors", common::VECTORS);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), FLOW_FILES, "the dlcspecs flow vector files in {dir}");
    files
}

/// The vectors name the offerer's enumerated payout `localPayout`; ddk-messages (like dlcspecs
/// today) calls it `offerPayout`.
fn rename_local_payout(v: &mut Value) -> usize {
    match v {
        Value::Object(map) => {
            let mut renamed = 0;
            if let Some(p) = map.remove("localPayout") {
                map.insert("offerPayout".to_owned(), p);
                renamed += 1;
            }
            renamed + map.values_mut().map(rename_local_payout).sum::<usize>()
        }
        Value::Array(items) => items.iter_mut().map(rename_local_payout).sum(),
        _ => 0,
    }
}

fn prev_tx(input: &FundingInput) -> Transaction {
    deserialize(&input.prev_tx).expect("funding input prevTx")
}

/// A party's parameters as dlcspecs defines them, from its message fields. Unlike ddk-manager's
/// conversion (which sets every non-DLC input's `max_witness_len` to 108), this keeps the
/// message's `max_witness_len`, which enters the fee computation.
#[allow(clippy::too_many_arguments, reason = "mirrors the fields of PartyParams")]
fn party_params(
    fund_pubkey: PublicKey,
    change_script_pubkey: &ScriptBuf,
    change_serial_id: u64,
    payout_script_pubkey: &ScriptBuf,
    payout_serial_id: u64,
    funding_inputs: &[FundingInput],
    collateral: Amount,
) -> PartyParams {
    let mut inputs = Vec::new();
    let mut input_amount = Amount::ZERO;
    for input in funding_inputs {
        assert!(input.dlc_input.is_none(), "the vectors have no DLC inputs");
        let tx = prev_tx(input);
        let out = tx
            .output
            .get(usize::try_from(input.prev_tx_vout).expect("vout fits usize"))
            .expect("prevTxVout is an output of prevTx");
        input_amount = input_amount.checked_add(out.value).expect("input amounts sum");
        inputs.push(TxInputInfo {
            outpoint: OutPoint {
                txid: tx.compute_txid(),
                vout: input.prev_tx_vout,
            },
            max_witness_len: usize::from(input.max_witness_len),
            redeem_script: input.redeem_script.clone(),
            serial_id: input.input_serial_id,
        });
    }
    PartyParams {
        fund_pubkey,
        change_script_pubkey: change_script_pubkey.clone(),
        change_serial_id,
        payout_script_pubkey: payout_script_pubkey.clone(),
        payout_serial_id,
        inputs,
        dlc_inputs: Vec::new(),
        input_amount,
        collateral,
    }
}

fn message<T: serde::de::DeserializeOwned>(v: &Value, which: &str, name: &str) -> T {
    serde_json::from_value(v[which]["message"].clone()).unwrap_or_else(|e| panic!("{name}: {which}: {e}"))
}

/// The nLockTime of the CETs of a disjoint contract's second and later contract infos.
///
/// `Transactions.md` gives every CET `cet_locktime`, but the accepter's signatures in the vectors
/// are over later-info CETs with nLockTime 0, which is also what ddk-manager builds
/// (`contract_updater`: `ddk_dlc::create_cets(.., 0)` for `contract_info.iter().skip(1)`).
/// `flow_vector_cet_adaptor_signatures_verify` checks that the spec's locktime is refused.
const LATER_CET_LOCKTIME: u32 = 0;

/// The CETs of the second and later contract infos, on the first CET's input (as ddk-manager
/// builds them), with `lock_time`.
fn later_cets(
    txs: &DlcTransactions,
    offer: &PartyParams,
    accept: &PartyParams,
    payouts: &[Vec<Payout>],
    lock_time: u32,
) -> Vec<Transaction> {
    let cet_input = &txs.cets[0].input[0];
    payouts[1..]
        .iter()
        .flat_map(|p| {
            ddk_dlc::create_cets(
                cet_input,
                &offer.payout_script_pubkey,
                offer.payout_serial_id,
                &accept.payout_script_pubkey,
                accept.payout_serial_id,
                p,
                lock_time,
            )
        })
        .collect()
}

impl Flow {
    fn load(path: &PathBuf) -> Self {
        let name = path.file_name().expect("file name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let renamed = rename_local_payout(&mut v["offer_message"]["message"]);
        let offer: OfferDlc = message(&v, "offer_message", &name);
        let accept: AcceptDlc = message(&v, "accept_message", &name);
        let sign: SignDlc = message(&v, "sign_message", &name);
        assert_eq!(accept.temporary_contract_id, offer.temporary_contract_id, "{name}");

        let offered = OfferedContract::try_from_offer_dlc(&offer, accept.funding_pubkey, [0; 32])
            .unwrap_or_else(|e| panic!("{name}: ddk-manager reads the offer: {e}"));
        let enum_outcomes: usize = offered
            .contract_info
            .iter()
            .map(|info| match &info.contract_descriptor {
                ContractDescriptor::Enum(e) => e.outcome_payouts.len(),
                ContractDescriptor::Numerical(_) => 0,
            })
            .sum();
        assert_eq!(renamed, enum_outcomes, "{name}: every enumerated payout was renamed");
        let total_collateral = offer.contract_info.get_total_collateral();
        assert_eq!(
            offer.offer_collateral.checked_add(accept.accept_collateral),
            Some(total_collateral),
            "{name}: the collaterals add up"
        );
        let offer_params = party_params(
            offer.funding_pubkey,
            &offer.change_spk,
            offer.change_serial_id,
            &offer.payout_spk,
            offer.payout_serial_id,
            &offer.funding_inputs,
            offer.offer_collateral,
        );
        let accept_params = party_params(
            accept.funding_pubkey,
            &accept.change_spk,
            accept.change_serial_id,
            &accept.payout_spk,
            accept.payout_serial_id,
            &accept.funding_inputs,
            accept.accept_collateral,
        );
        let payouts: Vec<Vec<Payout>> = offered
            .contract_info
            .iter()
            .map(|info| {
                info.get_payouts(total_collateral)
                    .unwrap_or_else(|e| panic!("{name}: payouts: {e}"))
            })
            .collect();
        // The first contract info's CETs come with the funding and refund transactions.
        let mut txs = ddk_dlc::create_dlc_transactions(
            &offer_params,
            &accept_params,
            &payouts[0],
            offer.refund_locktime,
            offer.fee_rate_per_vb,
            0,
            offer.cet_locktime,
            offer.fund_output_serial_id,
            offer.contract_flags,
        )
        .unwrap_or_else(|e| panic!("{name}: create_dlc_transactions: {e}"));
        txs.cets.extend(later_cets(
            &txs,
            &offer_params,
            &accept_params,
            &payouts,
            LATER_CET_LOCKTIME,
        ));

        let prevouts = offer
            .funding_inputs
            .iter()
            .chain(&accept.funding_inputs)
            .map(|input| {
                let tx = prev_tx(input);
                let vout = usize::try_from(input.prev_tx_vout).expect("vout fits usize");
                let outpoint = OutPoint {
                    txid: tx.compute_txid(),
                    vout: input.prev_tx_vout,
                };
                (outpoint, tx.output[vout].clone())
            })
            .collect();

        Self {
            name,
            offer,
            accept,
            sign,
            offered,
            offer_params,
            accept_params,
            payouts,
            txs,
            prevouts,
        }
    }

    fn fund_output_value(&self) -> Amount {
        self.txs.get_fund_output().value
    }

    fn total_collateral(&self) -> Amount {
        self.offered.total_collateral
    }

    fn spent_by_fund(&self) -> Vec<TxOut> {
        self.txs
            .fund
            .input
            .iter()
            .map(|i| {
                self.prevouts
                    .iter()
                    .find(|(op, _)| *op == i.previous_output)
                    .map(|(_, out)| out.clone())
                    .unwrap_or_else(|| panic!("{}: fund input {} is no funding input", self.name, i.previous_output))
            })
            .collect()
    }
}

fn load_flows() -> Vec<Flow> {
    flow_files().iter().map(Flow::load).collect()
}

/// The funding transaction rebuilt from each flow's offer and accept is the one the offerer
/// signed: every funding witness of the sign message verifies over it, with ddk-dlc's
/// `verify_tx_input_sig` and, as a whole input, by Bitcoin Core's script interpreter.
#[test]
fn flow_vector_funding_transactions_rebuild_and_verify() {
    let secp = Secp256k1::verification_only();
    let mut witnesses = 0;
    let mut offer_inputs = 0;
    for flow in load_flows() {
        let name = &flow.name;
        let fund = &flow.txs.fund;
        assert_eq!(fund.lock_time.to_consensus_u32(), 0, "{name}");
        // ddk-manager's own reading of the offer (which sets a P2WPKH input's max_witness_len to
        // 108 where the message says 107) gives the same funding transaction: the fee rounds
        // up to whole vbytes either way.
        let (via_manager, _) = ddk_dlc::create_fund_transaction_with_fees(
            &flow.offered.offer_params,
            &flow.accept_params,
            flow.offer.fee_rate_per_vb,
            0,
            flow.offer.fund_output_serial_id,
            Amount::ZERO,
        )
        .expect("fund tx from ddk-manager's offer params");
        assert_eq!(via_manager, *fund, "{name}: ddk-manager's offer params");
        offer_inputs += flow.offer.funding_inputs.len();
        let sigs = &flow.sign.funding_signatures.funding_signatures;
        assert_eq!(
            sigs.len(),
            flow.offer.funding_inputs.len(),
            "{name}: one witness per offer input"
        );
        let spent = flow.spent_by_fund();
        let mut signed = fund.clone();
        for (input, witness) in flow.offer.funding_inputs.iter().zip(sigs) {
            let tx = prev_tx(input);
            let outpoint = OutPoint {
                txid: tx.compute_txid(),
                vout: input.prev_tx_vout,
            };
            let index = fund
                .input
                .iter()
                .position(|i| i.previous_output == outpoint)
                .unwrap_or_else(|| panic!("{name}: {outpoint} is not spent by the rebuilt fund tx"));
            assert_eq!(fund.input[index].sequence.0, input.sequence, "{name}: input sequence");
            let elements: Vec<&[u8]> = witness.witness_elements.iter().map(|w| w.witness.as_slice()).collect();
            let [sig, pubkey] = elements[..] else {
                panic!("{name}: a P2WPKH witness has two elements, not {}", elements.len())
            };
            let pubkey = CompressedPublicKey::from_slice(pubkey).expect("compressed pubkey");
            assert_eq!(
                spent[index].script_pubkey,
                ScriptBuf::new_p2wpkh(&pubkey.wpubkey_hash()),
                "{name}: the input is P2WPKH of the witness key"
            );
            let (hash_type, der) = sig.split_last().expect("non-empty signature");
            assert_eq!(*hash_type, 0x01, "{name}: SIGHASH_ALL");
            let sig = Signature::from_der(der).expect("DER signature");
            // BIP 143: a P2WPKH input signs with the P2PKH script of its key as script code.
            ddk_dlc::verify_tx_input_sig(
                &secp,
                &sig,
                fund,
                index,
                &ScriptBuf::new_p2pkh(&pubkey.pubkey_hash()),
                spent[index].value,
                &pubkey.0,
            )
            .unwrap_or_else(|e| panic!("{name}: funding signature over the rebuilt fund tx: {e}"));
            signed.input[index].witness = Witness::from_slice(&elements);
            verify_input(&signed, index, &spent, VerifyFlags::consensus())
                .unwrap_or_else(|e| panic!("{name}: Core's interpreter on fund input {index}: {e}"));
            witnesses += 1;
        }
    }
    assert_eq!(witnesses, offer_inputs, "every funding witness was checked");
    assert!(witnesses >= FLOW_FILES);
}

/// Each flow's rebuilt refund transaction carries both refund signatures (the accepter's from
/// the accept message, the offerer's from the sign message), and, fully signed with them,
/// spends the rebuilt funding output under Bitcoin Core's script interpreter.
#[test]
fn flow_vector_refund_transactions_rebuild_and_verify() {
    let secp = Secp256k1::verification_only();
    let mut refunds = 0;
    for flow in load_flows() {
        let name = &flow.name;
        let refund = &flow.txs.refund;
        let script = &flow.txs.funding_script_pubkey;
        let value = flow.fund_output_value();
        assert_eq!(
            refund.lock_time.to_consensus_u32(),
            flow.offer.refund_locktime,
            "{name}"
        );
        assert_eq!(refund.input[0].previous_output, flow.txs.get_fund_outpoint(), "{name}");
        let outputs: Vec<_> = refund
            .output
            .iter()
            .map(|o| (o.script_pubkey.clone(), o.value))
            .collect();
        assert_eq!(
            outputs,
            [
                (flow.offer.payout_spk.clone(), flow.offer.offer_collateral),
                (flow.accept.payout_spk.clone(), flow.accept.accept_collateral)
            ],
            "{name}: the refund returns each collateral"
        );
        let accept_sig = flow.accept.refund_signature;
        let offer_sig = flow.sign.refund_signature;
        ddk_dlc::verify_tx_input_sig(
            &secp,
            &accept_sig,
            refund,
            0,
            script,
            value,
            &flow.accept.funding_pubkey,
        )
        .unwrap_or_else(|e| panic!("{name}: accepter's refund signature: {e}"));
        ddk_dlc::verify_tx_input_sig(&secp, &offer_sig, refund, 0, script, value, &flow.offer.funding_pubkey)
            .unwrap_or_else(|e| panic!("{name}: offerer's refund signature: {e}"));
        // Swapped keys must fail, or the checks above prove nothing.
        assert!(
            ddk_dlc::verify_tx_input_sig(&secp, &accept_sig, refund, 0, script, value, &flow.offer.funding_pubkey)
                .is_err(),
            "{name}"
        );

        // 2-of-2 in the key order of the funding script (lexicographic, as BIP 67).
        let mut keyed = [
            (flow.offer.funding_pubkey, offer_sig),
            (flow.accept.funding_pubkey, accept_sig),
        ];
        keyed.sort_by_key(|(pk, _)| pk.serialize());
        let finalize = |sig: &Signature| ddk_dlc::util::finalize_sig(sig, bitcoin::EcdsaSighashType::All);
        let mut signed = refund.clone();
        signed.input[0].witness = Witness::from_slice(&[
            Vec::new(),
            finalize(&keyed[0].1),
            finalize(&keyed[1].1),
            script.to_bytes(),
        ]);
        verify_input(
            &signed,
            0,
            &[flow.txs.get_fund_output().clone()],
            VerifyFlags::consensus(),
        )
        .unwrap_or_else(|e| panic!("{name}: Core's interpreter on the signed refund: {e}"));
        refunds += 1;
    }
    assert_eq!(refunds, FLOW_FILES);
}

/// The untagged oracle message of the vectors' era: `SHA256(outcome)`.
fn untagged_attestation_msg(outcome: &str) -> Message {
    Message::from_digest(sha256::Hash::hash(outcome.as_bytes()).to_byte_array())
}

/// The digit signature points of each oracle of a numerical contract info, for the untagged
/// messages: `points[oracle][digit position][digit value]`, as ddk-manager precomputes them with
/// tagged messages (`ContractInfo::precompute_points`).
fn untagged_digit_points(secp: &Secp256k1<All>, info: &ContractInfo) -> Vec<Vec<Vec<PublicKey>>> {
    info.oracle_announcements
        .iter()
        .map(|ann| {
            let EventDescriptor::DigitDecompositionEvent(d) = &ann.oracle_event.event_descriptor else {
                panic!("a numerical contract info with a non-digit event")
            };
            assert_eq!(usize::from(d.nb_digits), ann.oracle_event.oracle_nonces.len());
            ann.oracle_event
                .oracle_nonces
                .iter()
                .map(|nonce| {
                    (0..d.base)
                        .map(|digit| {
                            let msg = untagged_attestation_msg(&digit.to_string());
                            ddk_dlc::secp_utils::schnorrsig_compute_sig_point(secp, &ann.oracle_public_key, nonce, &msg)
                                .expect("signature point")
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The `threshold`-of-`n` oracle selections in ddk-trie's `CombinationIterator` order
/// (lexicographic), the order of the adaptor signatures of an enumerated contract.
fn combinations(n: usize, threshold: usize) -> Vec<Vec<usize>> {
    if threshold == 0 {
        return vec![Vec::new()];
    }
    (0..n)
        .flat_map(|first| {
            combinations(n - first - 1, threshold - 1).into_iter().map(move |rest| {
                std::iter::once(first)
                    .chain(rest.into_iter().map(|r| r + first + 1))
                    .collect()
            })
        })
        .collect()
}

/// Where a contract info's CETs start in the CET list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CetIndexing {
    /// After the previous contract info's CETs.
    Consecutive,
    /// At the start of the list, for every contract info.
    FromStart,
}

/// Verifies one party's CET adaptor signatures (all contract infos, in order) against `cets`
/// and the untagged oracle points. Returns how many verified and the adaptor infos, or the
/// first failure.
fn verify_party_adaptor_sigs(
    secp: &Secp256k1<All>,
    flow: &Flow,
    cets: &[Transaction],
    indexing: CetIndexing,
    fund_pubkey: &PublicKey,
    sigs: &[EcdsaAdaptorSignature],
) -> Result<(usize, Vec<AdaptorInfo>), String> {
    let script = &flow.txs.funding_script_pubkey;
    let value = flow.fund_output_value();
    let mut next_sig = 0;
    let mut cet_start = 0;
    let mut infos = Vec::new();
    for (k, (info, payouts)) in flow.offered.contract_info.iter().zip(&flow.payouts).enumerate() {
        let start = match indexing {
            CetIndexing::Consecutive => cet_start,
            CetIndexing::FromStart => 0,
        };
        let info_cets = cets
            .get(start..start + payouts.len())
            .ok_or_else(|| format!("info {k}: too few CETs"))?;
        match &info.contract_descriptor {
            ContractDescriptor::Enum(e) => {
                let oracles: Vec<OracleInfo> = info.get_oracle_infos();
                let selections = combinations(oracles.len(), info.threshold);
                for (cet, outcome) in info_cets.iter().zip(&e.outcome_payouts) {
                    let msgs = vec![vec![untagged_attestation_msg(&outcome.outcome)]; info.threshold];
                    for selection in &selections {
                        let chosen: Vec<OracleInfo> = selection.iter().map(|&i| oracles[i].clone()).collect();
                        let point = ddk_dlc::get_adaptor_point_from_oracle_info(secp, &chosen, &msgs)
                            .map_err(|e| format!("adaptor point: {e}"))?;
                        let sig = sigs.get(next_sig).ok_or("too few adaptor signatures")?;
                        ddk_dlc::verify_cet_adaptor_sig_from_point(secp, sig, cet, &point, fund_pubkey, script, value)
                            .map_err(|e| {
                                format!("info {k}, outcome {}, oracles {selection:?}: {e}", outcome.outcome)
                            })?;
                        next_sig += 1;
                    }
                }
                infos.push(AdaptorInfo::Enum);
            }
            ContractDescriptor::Numerical(n) => {
                let points = untagged_digit_points(secp, info);
                let (adaptor_info, end) = n
                    .verify_and_get_adaptor_info(
                        secp,
                        flow.total_collateral(),
                        fund_pubkey,
                        script,
                        value,
                        info.threshold,
                        &points,
                        info_cets,
                        sigs,
                        next_sig,
                    )
                    .map_err(|e| format!("info {k}: numerical adaptor signatures: {e}"))?;
                next_sig = end;
                infos.push(adaptor_info);
            }
        }
        cet_start += payouts.len();
    }
    if cet_start != cets.len() {
        return Err(format!("{} CETs for {cet_start} payouts", cets.len()));
    }
    if next_sig != sigs.len() {
        return Err(format!("{next_sig} of {} adaptor signatures checked", sigs.len()));
    }
    Ok((next_sig, infos))
}

fn adaptor_sigs(sigs: &ddk_messages::CetAdaptorSignatures) -> Vec<EcdsaAdaptorSignature> {
    sigs.ecdsa_adaptor_signatures.iter().map(|s| s.signature).collect()
}

/// Every CET adaptor signature of both parties verifies over the rebuilt CETs: enumerated
/// outcomes with ddk-dlc's `verify_cet_adaptor_sig_from_point` over each threshold selection
/// of oracles, numerical outcomes with ddk-manager's `NumericalDescriptor` tries (with and
/// without allowed oracle differences), on the untagged oracle points of the vectors' era.
///
/// In the four disjoint flows (two contract infos) the parties signed different CETs for the
/// second contract info's outcomes, and the test pins both:
/// * the accepter signed the second info's own CETs, which follow the first info's
///   ([`CetIndexing::Consecutive`]), at nLockTime 0 ([`LATER_CET_LOCKTIME`]);
/// * the offerer signed, for the second info's outcome `i`, the `i`-th CET of the whole list
///   ([`CetIndexing::FromStart`]), i.e. mostly the *first* info's CETs. ddk-manager 1.1.2 does
///   the same: `verify_accepted_and_sign_contract_internal` and `verify_signed_contract_internal`
///   hand every contract info the whole CET list although its adaptor info indexes that info's
///   own CETs from 0.
///
/// No CET of a second-info outcome therefore carries both parties' signatures: such a contract
/// can only close on the first info's outcomes or by refund. The contrasts keep this visible:
/// each party's signatures fail under the other layout, a second info's CETs at the
/// `cet_locktime` of `Transactions.md` are refused, and the tagged oracle points ddk-manager
/// derives today refuse the pre-tagging signatures.
#[test]
fn flow_vector_cet_adaptor_signatures_verify() {
    let secp = Secp256k1::new();
    let mut verified = 0;
    let mut expected = 0;
    let mut disjoint = 0;
    for flow in load_flows() {
        let name = &flow.name;
        let first = flow.payouts[0].len();
        for (i, cet) in flow.txs.cets.iter().enumerate() {
            let lock_time = if i < first {
                flow.offer.cet_locktime
            } else {
                LATER_CET_LOCKTIME
            };
            assert_eq!(cet.lock_time.to_consensus_u32(), lock_time, "{name}: CET {i}");
            assert_eq!(cet.input[0].previous_output, flow.txs.get_fund_outpoint(), "{name}");
        }
        let accept_sigs = adaptor_sigs(&flow.accept.cet_adaptor_signatures);
        let offer_sigs = adaptor_sigs(&flow.sign.cet_adaptor_signatures);
        assert_eq!(accept_sigs.len(), offer_sigs.len(), "{name}");
        expected += accept_sigs.len() + offer_sigs.len();
        let accepter = |cets: &[Transaction], indexing| {
            verify_party_adaptor_sigs(&secp, &flow, cets, indexing, &flow.accept.funding_pubkey, &accept_sigs)
        };
        let offerer = |cets: &[Transaction], indexing| {
            verify_party_adaptor_sigs(&secp, &flow, cets, indexing, &flow.offer.funding_pubkey, &offer_sigs)
        };
        let cets = &flow.txs.cets;
        verified += accepter(cets, CetIndexing::Consecutive)
            .unwrap_or_else(|e| panic!("{name}: accepter: {e}"))
            .0;
        // With one contract info both layouts are the same.
        verified += offerer(cets, CetIndexing::FromStart)
            .unwrap_or_else(|e| panic!("{name}: offerer: {e}"))
            .0;

        // ddk-manager's own verification hashes outcomes with the tagged hash of today's spec.
        let tagged = flow.offered.contract_info[0].verify_and_get_adaptor_info(
            &secp,
            flow.total_collateral(),
            &flow.accept.funding_pubkey,
            &flow.txs.funding_script_pubkey,
            flow.fund_output_value(),
            &cets[..first],
            &accept_sigs,
            0,
        );
        assert!(
            tagged.is_err(),
            "{name}: tagged oracle points accepted the pre-tagging signatures"
        );

        if flow.payouts.len() > 1 {
            let at_second_info =
                |r: Result<(usize, Vec<AdaptorInfo>), String>| matches!(r, Err(e) if e.starts_with("info 1"));
            assert!(
                at_second_info(offerer(cets, CetIndexing::Consecutive)),
                "{name}: offerer"
            );
            assert!(
                at_second_info(accepter(cets, CetIndexing::FromStart)),
                "{name}: accepter"
            );
            let mut spec_cets = cets[..first].to_vec();
            spec_cets.extend(later_cets(
                &flow.txs,
                &flow.offer_params,
                &flow.accept_params,
                &flow.payouts,
                flow.offer.cet_locktime,
            ));
            assert!(
                at_second_info(accepter(&spec_cets, CetIndexing::Consecutive)),
                "{name}: cet_locktime"
            );
            disjoint += 1;
        }
    }
    assert_eq!(verified, expected);
    assert!(verified > 0);
    assert_eq!(disjoint, 4, "the disjoint (enum and numerical) flows");
}

/// The sign message's `contract_id` is what ddk-manager's `AcceptedContract::get_contract_id`
/// derives from the rebuilt funding transaction and the temporary id, and equals the dlcspecs
/// definition used for `contract_id_test.json`.
#[test]
fn flow_vector_contract_ids_match_ddk_manager() {
    let secp = Secp256k1::new();
    let mut checked = 0;
    for flow in load_flows() {
        let name = flow.name.clone();
        let accept_sigs = adaptor_sigs(&flow.accept.cet_adaptor_signatures);
        let (_, adaptor_infos) = verify_party_adaptor_sigs(
            &secp,
            &flow,
            &flow.txs.cets,
            CetIndexing::Consecutive,
            &flow.accept.funding_pubkey,
            &accept_sigs,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let fund_txid = flow.txs.fund.compute_txid();
        let fund_vout = u16::try_from(flow.txs.get_fund_output_index()).expect("u16 output index");
        let expected = flow.sign.contract_id;
        assert_eq!(
            spec_contract_id(fund_txid, fund_vout, &flow.offer.temporary_contract_id),
            expected,
            "{name}: dlcspecs definition"
        );
        let accepted = AcceptedContract {
            offered_contract: flow.offered,
            accept_params: flow.accept_params,
            funding_inputs: flow.accept.funding_inputs,
            adaptor_infos,
            adaptor_signatures: accept_sigs,
            accept_refund_signature: flow.accept.refund_signature,
            dlc_transactions: flow.txs,
        };
        assert_eq!(accepted.get_contract_id(), expected, "{name}: ddk-manager");
        checked += 1;
    }
    assert_eq!(checked, FLOW_FILES);
}
