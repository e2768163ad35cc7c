//! A numeric DLC on anya oracles, as ddk-manager builds it.

use std::sync::Arc;

use anya_core_types::{Clock, SystemClock};
use anya_hsm::{HsmProvider, KdfParams, SecretString, SoftwareHsm, SoftwareOptions};
use anya_layer2::dlc::contracts::cets::{CetBatch, DigitPath, OutcomePoints};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bitcoin::hashes::Hash as _;
use bitcoin::{Amount, OutPoint, Script, ScriptBuf, WPubkeyHash};
use ddk_dlc::{DlcTransactions, PartyParams, TxInputInfo};
use ddk_manager::contract::contract_info::ContractInfo;
use ddk_manager::contract::numerical_descriptor::{DifferenceParams, NumericalDescriptor};
use ddk_manager::contract::{AdaptorInfo, ContractDescriptor};
use ddk_manager::payout_curve::{
    PayoutFunction, PayoutFunctionPiece, PayoutPoint, PolynomialPayoutCurvePiece, RoundingInterval, RoundingIntervals,
};
use ddk_messages::oracle_msgs::{DigitDecompositionEventDescriptor, OracleAnnouncement};
use ddk_trie::multi_oracle_trie_with_diff::MultiOracleTrieWithDiff;
use ddk_trie::{DlcTrie as _, OracleNumericInfo};
use secp256k1::{PublicKey, Secp256k1, SecretKey};

/// The shape of a numeric contract: its oracles' events and its payout curve. The payout is 0
/// up to `floor`, rises linearly to the whole collateral at `cap`, and stays there. Rounding is
/// 1 sat, so every outcome between `floor` and `cap` has a CET of its own.
#[derive(Debug, Clone, Copy)]
pub struct NumericParams {
    /// Binary digits of each oracle's event.
    pub nb_digits: u16,
    /// Oracles.
    pub nb_oracles: usize,
    /// Oracles that must attest compatible outcomes.
    pub threshold: usize,
    /// The outcome up to which the offer party gets nothing.
    pub floor: u64,
    /// The outcome from which the offer party gets everything.
    pub cap: u64,
    /// `DifferenceParams::min_support_exp`.
    pub min_support_exp: usize,
    /// `DifferenceParams::max_error_exp`.
    pub max_error_exp: usize,
    /// Both parties' collateral together.
    pub total_collateral: Amount,
}

impl NumericParams {
    /// The large case of the issue: ddk-manager 1.1.2's own benchmark (`benches/benchmarks.rs`):
    /// 17 binary digits, 3 oracles of which 2 must agree, difference parameters 2^7 / 2^8, the
    /// payout rising from 45,000 to 55,000.
    pub const LARGE: Self = Self {
        nb_digits: 17,
        nb_oracles: 3,
        threshold: 2,
        floor: 45_000,
        cap: 55_000,
        min_support_exp: 7,
        max_error_exp: 8,
        total_collateral: Amount::from_sat(200_000_000),
    };

    /// A small one for tests: 10 digits, 2 of 3 oracles, difference 2^4 / 2^5.
    pub const SMALL: Self = Self {
        nb_digits: 10,
        nb_oracles: 3,
        threshold: 2,
        floor: 400,
        cap: 600,
        min_support_exp: 4,
        max_error_exp: 5,
        total_collateral: Amount::from_sat(200_000_000),
    };

    /// The largest outcome.
    pub fn max_value(&self) -> u64 {
        (1u64 << self.nb_digits) - 1
    }

    /// The oracles' event descriptor.
    pub fn event_descriptor(&self) -> DigitDecompositionEventDescriptor {
        DigitDecompositionEventDescriptor {
            base: 2,
            is_signed: false,
            unit: "sats/sec".to_owned(),
            precision: 0,
            nb_digits: self.nb_digits,
        }
    }

    /// ddk-manager's numerical descriptor of this contract.
    pub fn descriptor(&self) -> ContractDescriptor {
        let point = |event_outcome, outcome_payout| PayoutPoint {
            event_outcome,
            outcome_payout,
            extra_precision: 0,
        };
        let piece = |a: PayoutPoint, b: PayoutPoint| {
            PayoutFunctionPiece::PolynomialPayoutCurvePiece(
                PolynomialPayoutCurvePiece::new(vec![a, b]).expect("a two-point line"),
            )
        };
        let all = self.total_collateral;
        ContractDescriptor::Numerical(NumericalDescriptor {
            payout_function: PayoutFunction::new(vec![
                piece(point(0, Amount::ZERO), point(self.floor, Amount::ZERO)),
                piece(point(self.floor, Amount::ZERO), point(self.cap, all)),
                piece(point(self.cap, all), point(self.max_value(), all)),
            ])
            .expect("contiguous pieces"),
            rounding_intervals: RoundingIntervals {
                intervals: vec![RoundingInterval {
                    begin_interval: 0,
                    rounding_mod: 1,
                }],
            },
            oracle_numeric_infos: OracleNumericInfo {
                base: 2,
                nb_digits: vec![usize::from(self.nb_digits); self.nb_oracles],
            },
            difference_params: Some(DifferenceParams {
                max_error_exp: self.max_error_exp,
                min_support_exp: self.min_support_exp,
                maximize_coverage: false,
            }),
        })
    }
}

/// The passphrase of the oracles' keystores.
const PASS: &str = "bench oracle passphrase";

/// anya oracles, each on its own software HSM and SQLite store in a temporary directory.
pub struct AnyaOracles {
    _dirs: Vec<tempfile::TempDir>,
    /// The oracles.
    pub oracles: Vec<Arc<Oracle>>,
}

impl std::fmt::Debug for AnyaOracles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyaOracles")
            .field("oracles", &self.oracles.len())
            .finish()
    }
}

impl AnyaOracles {
    /// `n` new oracles (test-speed Argon2 for their keystores).
    pub fn new(n: usize) -> Self {
        let mut dirs = Vec::with_capacity(n);
        let mut oracles = Vec::with_capacity(n);
        for _ in 0..n {
            let dir = tempfile::tempdir().expect("temp dir");
            let store: Arc<dyn KvStore> =
                Arc::new(SqliteStore::open(dir.path().join("oracle.db"), SqliteOptions::default()).expect("sqlite"));
            let hsm = SoftwareHsm::create(
                Arc::clone(&store),
                &SecretString::from(PASS),
                SoftwareOptions::default().with_kdf(KdfParams::insecure_for_tests()),
            )
            .expect("keystore");
            let oracle = Oracle::open(
                Arc::new(hsm) as Arc<dyn HsmProvider>,
                store,
                Arc::new(SystemClock) as Arc<dyn Clock>,
                OracleOptions::default(),
            )
            .expect("oracle");
            dirs.push(dir);
            oracles.push(Arc::new(oracle));
        }
        Self { _dirs: dirs, oracles }
    }

    /// Each oracle announces the numeric event `event_id` of `params`.
    pub fn announce(&self, event_id: &str, maturity: u32, params: &NumericParams) -> Vec<OracleAnnouncement> {
        self.oracles
            .iter()
            .map(|o| {
                o.create_numeric_event(event_id, maturity, params.event_descriptor())
                    .expect("announced")
            })
            .collect()
    }
}

/// The offer party's funding key (ddk-manager's benchmark key).
pub fn offer_secret_key() -> SecretKey {
    SecretKey::from_slice(&[0xc3; 32]).expect("a valid scalar")
}

/// The accept party's funding key.
pub fn accept_secret_key() -> SecretKey {
    SecretKey::from_slice(&[0xc0; 32]).expect("a valid scalar")
}

fn p2wpkh(tag: u8) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([tag; 20]))
}

/// A numeric contract's CETs and adaptor trie, built as ddk-manager builds them when it
/// accepts an offer. The funding inputs are placeholders: CETs spend only the funding output.
pub struct CetCase {
    /// Its shape.
    pub params: NumericParams,
    /// The contract info: descriptor, announcements, threshold.
    pub contract_info: ContractInfo,
    /// The funding, refund and CETs, from ddk-dlc.
    pub txs: DlcTransactions,
    /// The funding output's value.
    pub fund_output_value: Amount,
    /// ddk-trie's adaptor trie of the contract (as `ContractInfo::get_adaptor_info` builds it).
    pub adaptor_info: AdaptorInfo,
    /// The digit path and CET of each adaptor signature, in adaptor-signature order.
    pub paths: Vec<DigitPath>,
}

impl std::fmt::Debug for CetCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CetCase")
            .field("params", &self.params)
            .field("cets", &self.txs.cets.len())
            .field("adaptor_signatures", &self.paths.len())
            .finish()
    }
}

impl CetCase {
    /// The contract of `params` on `announcements`.
    pub fn new(params: NumericParams, announcements: Vec<OracleAnnouncement>) -> Self {
        let secp = Secp256k1::new();
        let contract_info = ContractInfo {
            contract_descriptor: params.descriptor(),
            oracle_announcements: announcements,
            threshold: params.threshold,
        };
        contract_info.validate().expect("a valid contract info");
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
        let payouts = contract_info.get_payouts(params.total_collateral).expect("payouts");
        let txs = ddk_dlc::create_dlc_transactions(
            &party(&offer_secret_key(), 1),
            &party(&accept_secret_key(), 3),
            &payouts,
            1000,
            2,
            0,
            1000,
            3,
            0,
        )
        .expect("dlc transactions");
        let fund_output_value = txs.get_fund_output().value;
        let ContractDescriptor::Numerical(n) = &contract_info.contract_descriptor else {
            unreachable!("built numerical above")
        };
        let mut trie = MultiOracleTrieWithDiff::new(
            &n.oracle_numeric_infos,
            params.threshold,
            params.min_support_exp,
            params.max_error_exp,
        )
        .expect("trie parameters");
        trie.generate(0, &n.get_range_payouts(params.total_collateral).expect("range payouts"))
            .expect("trie");
        let adaptor_info = AdaptorInfo::NumericalWithDifference(trie);
        let paths = crate::trie::digit_paths(&adaptor_info, 0).expect("the trie's paths");
        Self {
            params,
            contract_info,
            txs,
            fund_output_value,
            adaptor_info,
            paths,
        }
    }

    /// The 2-of-2 funding script the CETs spend.
    pub fn funding_script(&self) -> &Script {
        &self.txs.funding_script_pubkey
    }

    /// anya's outcome point table of the contract's oracles.
    pub fn outcome_points(&self) -> OutcomePoints {
        OutcomePoints::from_announcements(
            &Secp256k1::verification_only(),
            &self.contract_info.oracle_announcements,
        )
        .expect("numeric announcements")
    }

    /// anya's batch of the contract's CETs.
    pub fn batch(&self) -> CetBatch {
        CetBatch::new(&self.txs.cets, self.funding_script(), self.fund_output_value).expect("cets with an input")
    }
}
