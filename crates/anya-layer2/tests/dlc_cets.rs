//! `dlc::contracts::cets` on a real contract's data. Three anya oracles announce a 10-digit
//! numeric event. The offer (2 of 3 oracles, difference parameters, a payout curve) is an
//! `OfferDlc`, and ddk-manager turns it into its `NumericalDescriptor` as an accepting party
//! does. ddk-dlc builds the CETs, and ddk-manager the adaptor trie and its own signatures.
//!
//! The trie's digit paths are read through ddk-trie's public `look_up`. anya's signatures along
//! them are checked three ways:
//! - each verifies with ddk-dlc's verifier against the same CET and an adaptor point that
//!   ddk-dlc computes itself;
//! - each equals, byte for byte, the deterministic signature that secp256k1-zkp makes for that
//!   CET and point alone, on any number of threads;
//! - the whole vector passes ddk-manager's trie-based check.
//!
//! Hostile inputs are typed errors, and a bad signature among thousands is reported by its
//! index.

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use anya_layer2::dlc::contracts::cets::{CetAdaptorPoint, CetBatch, CetError, DigitPath, OutcomePoints};
use bitcoin::hashes::Hash as _;
use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, WPubkeyHash};
use ddk_dlc::secp256k1_zkp::EcdsaAdaptorSignature;
use ddk_dlc::{DlcTransactions, OracleInfo, PartyParams, TxInputInfo};
use ddk_manager::contract::contract_info::ContractInfo;
use ddk_manager::contract::offered_contract::OfferedContract;
use ddk_manager::contract::{AdaptorInfo, ContractDescriptor};
use ddk_messages::contract_msgs::{
    ContractDescriptor as SerDescriptor, ContractInfo as SerContractInfo, ContractInfoInner,
    NumericOutcomeContractDescriptor, PayoutCurvePiece, PayoutFunction, PayoutFunctionPiece, PayoutPoint,
    PolynomialPayoutCurvePiece, RoundingInterval, RoundingIntervals, SingleContractInfo,
};
use ddk_messages::oracle_msgs::{
    tagged_attestation_msg, DigitDecompositionEventDescriptor, EnumEventDescriptor, EventDescriptor, MultiOracleInfo,
    OracleAnnouncement, OracleInfo as SerOracleInfo, OracleParams,
};
use ddk_messages::OfferDlc;
use secp256k1::{All, Message, PublicKey, Secp256k1, SecretKey};

const NB_DIGITS: u16 = 10;
const MAX_ERROR_EXP: u16 = 5;
const MIN_SUPPORT_EXP: u16 = 4;
const TOTAL: Amount = Amount::from_sat(200_000_000);

fn threads(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("not 0")
}

fn p2wpkh(tag: u8) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([tag; 20]))
}

/// Three anya oracles (software HSMs, SQLite stores) announcing the same 10-digit event.
fn announcements() -> Vec<OracleAnnouncement> {
    (0..3)
        .map(|_| {
            let fixture = common::Fixture::new(1_700_000_000);
            fixture
                .oracle
                .create_numeric_event(
                    "btc-usd",
                    1_700_000_000,
                    DigitDecompositionEventDescriptor {
                        base: 2,
                        is_signed: false,
                        unit: "usd".to_owned(),
                        precision: 0,
                        nb_digits: NB_DIGITS,
                    },
                )
                .expect("announced")
        })
        .collect()
}

/// The contract info an accepting party's ddk-manager takes from the offer: nothing up to
/// 250, rising to everything at 750, 2 of the 3 oracles within 2^4..2^5 of each other.
fn contract_info(announcements: Vec<OracleAnnouncement>) -> ContractInfo {
    let point = |event_outcome, outcome_payout| PayoutPoint {
        event_outcome,
        outcome_payout,
        extra_precision: 0,
    };
    let line = |left| PayoutFunctionPiece {
        end_point: left,
        payout_curve_piece: PayoutCurvePiece::PolynomialPayoutCurvePiece(PolynomialPayoutCurvePiece {
            payout_points: vec![],
        }),
    };
    let contract_info = SerContractInfo::SingleContractInfo(SingleContractInfo {
        total_collateral: TOTAL,
        contract_info: ContractInfoInner {
            contract_descriptor: SerDescriptor::NumericOutcomeContractDescriptor(NumericOutcomeContractDescriptor {
                num_digits: NB_DIGITS,
                payout_function: PayoutFunction {
                    payout_function_pieces: vec![
                        line(point(0, Amount::ZERO)),
                        line(point(250, Amount::ZERO)),
                        line(point(750, TOTAL)),
                    ],
                    last_endpoint: point((1 << NB_DIGITS) - 1, TOTAL),
                },
                rounding_intervals: RoundingIntervals {
                    intervals: vec![RoundingInterval {
                        begin_interval: 0,
                        rounding_mod: 1,
                    }],
                },
            }),
            oracle_info: SerOracleInfo::Multi(MultiOracleInfo {
                threshold: 2,
                oracle_announcements: announcements,
                oracle_params: Some(OracleParams {
                    max_error_exp: MAX_ERROR_EXP,
                    min_fail_exp: MIN_SUPPORT_EXP,
                    maximize_coverage: false,
                }),
            }),
        },
    });
    let secp = Secp256k1::new();
    let offer = OfferDlc {
        protocol_version: 1,
        contract_flags: 0,
        chain_hash: [0; 32],
        temporary_contract_id: [7; 32],
        contract_info,
        funding_pubkey: PublicKey::from_secret_key(&secp, &offer_sk()),
        payout_spk: p2wpkh(2),
        payout_serial_id: 1,
        offer_collateral: Amount::from_sat(100_000_000),
        funding_inputs: vec![],
        change_spk: p2wpkh(1),
        change_serial_id: 4,
        fund_output_serial_id: 3,
        fee_rate_per_vb: 2,
        cet_locktime: 1000,
        refund_locktime: 1000,
    };
    let offered = OfferedContract::try_from_offer_dlc(&offer, PublicKey::from_secret_key(&secp, &accept_sk()), [0; 32])
        .expect("a valid offer");
    let mut infos = offered.contract_info;
    assert_eq!(infos.len(), 1);
    let info = infos.remove(0);
    info.validate().expect("valid");
    assert!(matches!(
        &info.contract_descriptor,
        ContractDescriptor::Numerical(n) if n.difference_params.is_some()
    ));
    info
}

fn offer_sk() -> SecretKey {
    SecretKey::from_slice(&[0xc3; 32]).expect("a scalar")
}

fn accept_sk() -> SecretKey {
    SecretKey::from_slice(&[0xc0; 32]).expect("a scalar")
}

/// The contract's funding, refund and CETs (placeholder funding inputs: the CETs spend only
/// the funding output).
fn transactions(info: &ContractInfo) -> DlcTransactions {
    let secp = Secp256k1::new();
    let party = |sk: &SecretKey, tag: u8| PartyParams {
        fund_pubkey: PublicKey::from_secret_key(&secp, sk),
        change_script_pubkey: p2wpkh(tag),
        change_serial_id: 4,
        payout_script_pubkey: p2wpkh(tag + 1),
        payout_serial_id: 1,
        inputs: vec![TxInputInfo {
            outpoint: OutPoint::default(),
            redeem_script: ScriptBuf::new(),
            max_witness_len: 108,
            serial_id: 2,
        }],
        dlc_inputs: vec![],
        input_amount: Amount::from_sat(300_000_000),
        collateral: Amount::from_sat(100_000_000),
    };
    ddk_dlc::create_dlc_transactions(
        &party(&offer_sk(), 1),
        &party(&accept_sk(), 3),
        &info.get_payouts(TOTAL).expect("payouts"),
        1000,
        2,
        0,
        1000,
        3,
        0,
    )
    .expect("transactions")
}

fn digits(value: u64) -> Vec<usize> {
    (0..NB_DIGITS)
        .rev()
        .map(|i| usize::from((value >> i) & 1 == 1))
        .collect()
}

/// The digit path and CET of every adaptor signature of `info`, in adaptor order, read
/// through ddk-trie's public `look_up`. Every pair of attested values within the largest
/// supported difference of each other is looked up, for each pair of oracles. A path's
/// outcomes always include such a pair (it exists to cover one), so every path is found.
/// The caller checks that as many were found as ddk-manager signs.
fn trie_paths(info: &AdaptorInfo) -> Vec<DigitPath> {
    let AdaptorInfo::NumericalWithDifference(trie) = info else {
        panic!("a trie with difference parameters")
    };
    let max = (1i64 << NB_DIGITS) - 1;
    let band = 1i64 << MAX_ERROR_EXP;
    let mut found: BTreeMap<usize, DigitPath> = BTreeMap::new();
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        for va in 0..=max {
            for vb in (va - band).max(0)..=(va + band).min(max) {
                let outcomes = [(a, digits(va as u64)), (b, digits(vb as u64))];
                if let Some((range, path)) = trie.multi_trie.look_up(&outcomes) {
                    found.entry(range.adaptor_index).or_insert_with(|| DigitPath {
                        cet_index: range.cet_index,
                        oracles: path,
                    });
                }
            }
        }
    }
    let paths: Vec<DigitPath> = found.into_values().collect();
    paths
}

/// ddk-dlc's own adaptor point of a path: its `get_adaptor_point_from_oracle_info` over the
/// path's oracles and the tagged attestation messages of their digits.
fn ddk_adaptor_point(secp: &Secp256k1<All>, infos: &[OracleInfo], path: &DigitPath) -> PublicKey {
    let oracles: Vec<OracleInfo> = path.oracles.iter().map(|(i, _)| infos[*i].clone()).collect();
    let msgs: Vec<Vec<Message>> = path
        .oracles
        .iter()
        .map(|(_, d)| d.iter().map(|v| tagged_attestation_msg(&v.to_string())).collect())
        .collect();
    ddk_dlc::get_adaptor_point_from_oracle_info(secp, &oracles, &msgs).expect("a point")
}

/// A real contract, with anya's adaptor points and signatures.
struct Case {
    info: ContractInfo,
    txs: DlcTransactions,
    fund_value: Amount,
    adaptor_info: AdaptorInfo,
    ddk_sigs: Vec<EcdsaAdaptorSignature>,
    paths: Vec<DigitPath>,
    batch: CetBatch,
    points: Vec<CetAdaptorPoint>,
    sigs: Vec<EcdsaAdaptorSignature>,
}

/// The case both tests read, built once (ddk-manager's serial signing of it takes seconds in a
/// debug build).
fn case() -> &'static Case {
    static CASE: std::sync::OnceLock<Case> = std::sync::OnceLock::new();
    CASE.get_or_init(build_case)
}

fn build_case() -> Case {
    let secp = Secp256k1::new();
    let info = contract_info(announcements());
    let txs = transactions(&info);
    let fund_value = txs.get_fund_output().value;
    let (adaptor_info, ddk_sigs) = info
        .get_adaptor_info(
            &secp,
            TOTAL,
            &accept_sk(),
            &txs.funding_script_pubkey,
            fund_value,
            &txs.cets,
            0,
        )
        .expect("ddk-manager signs");
    let paths = trie_paths(&adaptor_info);
    assert_eq!(paths.len(), ddk_sigs.len(), "every adaptor index has a path");
    assert!(paths.len() >= 2_000, "thousands of signatures: {}", paths.len());
    let batch =
        CetBatch::with_threads(&txs.cets, &txs.funding_script_pubkey, fund_value, threads(2)).expect("sighashes");
    let table = OutcomePoints::from_announcements(&secp, &info.oracle_announcements).expect("table");
    let points = table.adaptor_points(&paths, threads(2)).expect("points");
    let sigs = batch.sign(&secp, &points, &accept_sk()).expect("signed");
    Case {
        info,
        txs,
        fund_value,
        adaptor_info,
        ddk_sigs,
        paths,
        batch,
        points,
        sigs,
    }
}

#[test]
fn every_signature_matches_ddk_and_the_serial_deterministic_one() {
    let secp = Secp256k1::new();
    let c = case();
    let pk = PublicKey::from_secret_key(&secp, &accept_sk());
    let oracle_infos: Vec<OracleInfo> = c
        .info
        .oracle_announcements
        .iter()
        .map(|a| OracleInfo {
            public_key: a.oracle_public_key,
            nonces: a.oracle_event.oracle_nonces.clone(),
        })
        .collect();
    for (i, ((path, point), sig)) in c.paths.iter().zip(&c.points).zip(&c.sigs).enumerate() {
        let cet = &c.txs.cets[path.cet_index];
        assert_eq!(point.cet_index, path.cet_index);
        // ddk-dlc's point from scratch costs a scalar multiplication per digit: checked for
        // one path in 8 here. ddk-manager's trie check below covers every point, since a
        // signature verifies only against the point it was encrypted to.
        if i % 8 == 0 || i + 1 == c.paths.len() {
            let ddk_point = ddk_adaptor_point(&secp, &oracle_infos, path);
            assert_eq!(point.adaptor_point, ddk_point, "adaptor point {i}");
        }
        ddk_dlc::verify_cet_adaptor_sig_from_point(
            &secp,
            sig,
            cet,
            &point.adaptor_point,
            &pk,
            &c.txs.funding_script_pubkey,
            c.fund_value,
        )
        .unwrap_or_else(|e| panic!("signature {i} fails ddk-dlc's verifier: {e}"));
        let sighash =
            ddk_dlc::util::get_sig_hash_msg(cet, 0, &c.txs.funding_script_pubkey, c.fund_value).expect("sighash");
        let serial = EcdsaAdaptorSignature::encrypt_no_aux_rand(&secp, &sighash, &accept_sk(), &point.adaptor_point);
        assert_eq!(sig.as_ref(), serial.as_ref(), "signature {i} byte for byte");
    }

    // ddk-manager's own check, by its trie, accepts anya's signatures at their indexes ...
    let n = c
        .info
        .verify_adaptor_info(
            &secp,
            &pk,
            &c.txs.funding_script_pubkey,
            c.fund_value,
            &c.txs.cets,
            &c.sigs,
            0,
            &c.adaptor_info,
        )
        .expect("ddk-manager accepts them");
    assert_eq!(n, c.sigs.len());
    // ... and anya's check accepts ddk-manager's signatures (drawn with auxiliary randomness).
    c.batch
        .verify(&secp, &c.points, &c.ddk_sigs, &pk)
        .expect("anya accepts ddk's");

    // The same bytes on one thread and on five (chunks split differently), for the first 500.
    for n in [1, 5] {
        let batch = CetBatch::with_threads(&c.txs.cets, &c.txs.funding_script_pubkey, c.fund_value, threads(n))
            .expect("sighashes");
        let sigs = batch.sign(&secp, &c.points[..500], &accept_sk()).expect("signed");
        assert_eq!(sigs, c.sigs[..500], "{n} threads");
    }
}

#[test]
fn hostile_inputs_are_typed_errors_and_a_bad_signature_is_found_by_index() {
    let secp = Secp256k1::new();
    let c = case();
    let pk = PublicKey::from_secret_key(&secp, &accept_sk());
    let n = c.sigs.len();

    // One signature swapped for another (valid, but for a different CET or point) deep in
    // the batch: reported at its index, with its CET.
    let bad = n - 17;
    let mut sigs = c.sigs.clone();
    sigs[bad] = c.sigs[3];
    match c.batch.verify(&secp, &c.points, &sigs, &pk) {
        Err(CetError::InvalidSignature { index, cet_index }) => {
            assert_eq!(index, bad);
            assert_eq!(cet_index, c.points[bad].cet_index);
        }
        other => panic!("{other:?}"),
    }
    // Two bad ones: the first is reported, whatever the threads did.
    sigs[1_234] = c.sigs[1_235];
    for t in [1, 2, 3] {
        let batch = CetBatch::with_threads(&c.txs.cets, &c.txs.funding_script_pubkey, c.fund_value, threads(t))
            .expect("sighashes");
        assert!(matches!(
            batch.verify(&secp, &c.points, &sigs, &pk),
            Err(CetError::InvalidSignature { index: 1_234, .. })
        ));
    }
    // A flipped byte in the DLEQ proof.
    let mut bytes = c.sigs[500].as_ref().to_vec();
    bytes[140] ^= 1;
    let mut sigs = c.sigs.clone();
    sigs[500] = EcdsaAdaptorSignature::from_slice(&bytes).expect("162 bytes");
    assert!(matches!(
        c.batch.verify(&secp, &c.points, &sigs, &pk),
        Err(CetError::InvalidSignature { index: 500, .. })
    ));
    // Another funding key: the first signature fails.
    assert!(matches!(
        c.batch.verify(
            &secp,
            &c.points,
            &c.sigs,
            &PublicKey::from_secret_key(&secp, &offer_sk())
        ),
        Err(CetError::InvalidSignature { index: 0, .. })
    ));

    // Lengths that do not match.
    assert!(matches!(
        c.batch.verify(&secp, &c.points, &c.sigs[..n - 1], &pk),
        Err(CetError::LengthMismatch { points, signatures }) if points == n && signatures == n - 1
    ));
    // A CET index past the CETs, in signing and in verifying.
    let mut points = c.points.clone();
    points[42].cet_index = c.txs.cets.len();
    assert!(matches!(
        c.batch.sign(&secp, &points, &accept_sk()),
        Err(CetError::CetIndexOutOfRange { index: 42, .. })
    ));
    assert!(matches!(
        c.batch.verify(&secp, &points, &c.sigs, &pk),
        Err(CetError::CetIndexOutOfRange { index: 42, .. })
    ));
    // A CET without inputs has no sighash.
    let mut cets = c.txs.cets.clone();
    cets[9].input.clear();
    assert!(matches!(
        CetBatch::new(&cets, &c.txs.funding_script_pubkey, c.fund_value),
        Err(CetError::Sighash { cet_index: 9, .. })
    ));
    let empty: &[Transaction] = &[];
    assert!(CetBatch::new(empty, &c.txs.funding_script_pubkey, c.fund_value)
        .expect("no cets")
        .is_empty());

    // Digit paths that do not fit the oracles.
    let table = OutcomePoints::from_announcements(&secp, &c.info.oracle_announcements).expect("table");
    let hostile = |edit: &dyn Fn(&mut DigitPath)| {
        let mut paths = c.paths.clone();
        edit(&mut paths[77]);
        table.adaptor_points(&paths, threads(2)).expect_err("refused")
    };
    assert!(matches!(
        hostile(&|p| p.oracles.clear()),
        CetError::EmptyPath { index: 77 }
    ));
    assert!(matches!(
        hostile(&|p| p.oracles[0].0 = 3),
        CetError::OracleIndexOutOfRange {
            index: 77,
            oracle: 3,
            oracles: 3
        }
    ));
    assert!(matches!(
        hostile(&|p| p.oracles[0].1 = vec![0; usize::from(NB_DIGITS) + 1]),
        CetError::InvalidDigits { index: 77, .. }
    ));
    assert!(matches!(
        hostile(&|p| p.oracles[0].1[0] = 2),
        CetError::InvalidDigits { index: 77, .. }
    ));
    assert!(matches!(
        hostile(&|p| p.oracles[1].1.clear()),
        CetError::InvalidDigits { index: 77, .. }
    ));

    // Announcements that are not numeric events of one base.
    let mut anns = c.info.oracle_announcements.clone();
    anns[1].oracle_event.event_descriptor = EventDescriptor::EnumEvent(EnumEventDescriptor {
        outcomes: vec!["a".to_owned()],
    });
    assert!(matches!(
        OutcomePoints::from_announcements(&secp, &anns),
        Err(CetError::UnsupportedEvent { oracle: 1, .. })
    ));
    let mut anns = c.info.oracle_announcements.clone();
    if let EventDescriptor::DigitDecompositionEvent(d) = &mut anns[2].oracle_event.event_descriptor {
        d.base = 10;
    }
    assert!(matches!(
        OutcomePoints::from_announcements(&secp, &anns),
        Err(CetError::MixedBases {
            oracle: 2,
            expected: 2,
            found: 10
        })
    ));
    let mut anns = c.info.oracle_announcements.clone();
    anns[0].oracle_event.oracle_nonces.pop();
    assert!(matches!(
        OutcomePoints::from_announcements(&secp, &anns),
        Err(CetError::UnsupportedEvent { oracle: 0, .. })
    ));
    assert!(matches!(
        OutcomePoints::from_announcements(&secp, &[]),
        Err(CetError::NoOracle)
    ));
    assert!(matches!(
        OutcomePoints::from_oracle_infos(&secp, &[], 2),
        Err(CetError::NoOracle)
    ));
    assert!(matches!(
        OutcomePoints::from_oracle_infos(&secp, &[], 1),
        Err(CetError::InvalidBase { base: 1 })
    ));
}
