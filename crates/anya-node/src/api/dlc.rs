//! DLC contract routes (when `dlc.enabled`): this node's identity, offers, the messages of the
//! protocol, accepting, and the contracts. Messages are the dlcspecs serialization in hex;
//! the application carries them between the parties (any transport), each party naming the
//! other by its identity (`GET /v1/dlc/identity`).
//!
//! The sequence, from `anya-layer2`'s contract service: the offer party `POST`s
//! `/v1/dlc/offers` and sends the message; the other party hands it in with
//! `POST /v1/dlc/messages` (the offer is stored) and accepts it with
//! `POST /v1/dlc/contracts/{id}/accept`; the offer party hands in the accept (the reply is the
//! sign message); the accepting party hands in the sign message, which broadcasts the funding
//! transaction. From then on the node's periodic check (or `POST /v1/dlc/tick`) follows the
//! confirmations, closes the contract by CET once its oracles attested, or refunds it after
//! the refund locktime. Every state change is a `dlc_contract` event.
//!
//! Every route needs an admin token that may use the funding wallet and the contract keys'
//! root (a token limited to other wallets or keys is refused). Bodies are checked before the
//! service is asked: a body that is not a contract this node can offer, or a message that is
//! not a DLC message, is a typed 4xx and changes nothing.

use std::collections::HashSet;
use std::sync::Arc;

use anya_layer2::dlc::contracts::ddk_manager::contract::contract_input::{
    ContractInput, ContractInputInfo, OracleInput,
};
use anya_layer2::dlc::contracts::ddk_manager::contract::enum_descriptor::EnumDescriptor;
use anya_layer2::dlc::contracts::ddk_manager::contract::numerical_descriptor::NumericalDescriptor;
use anya_layer2::dlc::contracts::ddk_manager::contract::ContractDescriptor;
use anya_layer2::dlc::contracts::ddk_manager::error::Error as ManagerError;
use anya_layer2::dlc::contracts::ddk_manager::payout_curve::{
    PayoutFunction, PayoutFunctionPiece, PayoutPoint, PolynomialPayoutCurvePiece, RoundingInterval, RoundingIntervals,
};
use anya_layer2::dlc::contracts::{decode_message, encode_message, outgoing_message, ContractSummary, DlcError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitcoin::secp256k1::{PublicKey, XOnlyPublicKey};
use bitcoin::Amount;
use ddk_dlc::{EnumerationPayout, Payout};
use ddk_messages::Message;
use ddk_trie::OracleNumericInfo;
use serde::{Deserialize, Serialize};

use super::{from_hex, hex, AdminAuth, Auth, Body, Id};
use crate::auth::TokenInfo;
use crate::dlc::{ContractView, Dlc};
use crate::error::ApiError;
use crate::node::Node;

/// The most oracles one contract names.
pub const MAX_ORACLES: usize = 16;
/// The most outcomes of one enum contract.
pub const MAX_OUTCOMES: usize = 1024;
/// The highest fee rate a contract may use, sat/vB (`ddk-dlc`'s limit).
pub const MAX_FEE_RATE: u64 = 25 * 250;

impl From<DlcError> for ApiError {
    fn from(e: DlcError) -> Self {
        match e {
            DlcError::Wire(w) => invalid("invalid_dlc_message", w.to_string()),
            DlcError::NotFound(id) => {
                Self::new(StatusCode::NOT_FOUND, "contract_not_found", format!("no contract {id}"))
            }
            DlcError::Store(s) => s.into(),
            DlcError::Chain(c) => Self::new(StatusCode::BAD_GATEWAY, "chain_unavailable", c.to_string()),
            DlcError::Manager(m) => manager_error(m),
            // What anya refuses before the manager sees it, and what the manager panicked on
            // (nothing stored): the message's doing.
            e @ (DlcError::Disjoint | DlcError::Refused(_) | DlcError::Panicked(_)) => {
                invalid("dlc_refused", e.to_string())
            }
            other => Self::internal(&other),
        }
    }
}

/// The manager's refusals are the counterparty's or the request's doing (4xx); only the
/// store's failures and an unreachable node or oracle are the node's (5xx).
fn manager_error(e: ManagerError) -> ApiError {
    let (status, code) = match &e {
        ManagerError::InvalidState(_) => (StatusCode::CONFLICT, "dlc_invalid_state"),
        ManagerError::InvalidParameters(_)
        | ManagerError::Conversion(_)
        | ManagerError::Deserialize(_)
        | ManagerError::IOError(_)
        | ManagerError::DlcError(_)
        | ManagerError::SecpError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "dlc_refused"),
        ManagerError::WalletError(_) => {
            let ManagerError::WalletError(inner) = e else {
                unreachable!("matched above")
            };
            return match inner.downcast::<anya_bitcoin::wallet::WalletError>() {
                Ok(w) => (*w).into(),
                Err(other) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "dlc_wallet", other.to_string()),
            };
        }
        // `BitcoindBlockchain` reports the node's own answers as "bitcoind returned error
        // <code>": the node refused a transaction (one a counterparty's bad signatures
        // spoil), which is not the node being down.
        ManagerError::BlockchainError(s) if s.contains("bitcoind returned error") => {
            (StatusCode::UNPROCESSABLE_ENTITY, "transaction_rejected")
        }
        ManagerError::BlockchainError(_) => (StatusCode::BAD_GATEWAY, "chain_unavailable"),
        ManagerError::OracleError(_) => (StatusCode::BAD_GATEWAY, "oracle_unavailable"),
        ManagerError::StorageError(_) => return ApiError::internal(&e),
    };
    ApiError::new(status, code, e.to_string())
}

fn dlc(node: &Node) -> Result<Arc<Dlc>, ApiError> {
    node.dlc().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "dlc_disabled",
            "this node does not run DLC contracts ([dlc] enabled = false)",
        )
    })
}

/// The DLC party, for a token that may use its wallet and root.
fn party(node: &Node, token: &TokenInfo) -> Result<Arc<Dlc>, ApiError> {
    let d = dlc(node)?;
    if !token.may_use_wallet(d.wallet().as_str()) || !token.may_use_key(d.root().as_str()) {
        return Err(ApiError::forbidden(format!(
            "the token may not use the DLC wallet {} and its root key {}",
            d.wallet(),
            d.root()
        )));
    }
    Ok(d)
}

fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

fn public_key(field: &str, s: &str) -> Result<PublicKey, ApiError> {
    s.parse::<PublicKey>().map_err(|_| {
        invalid(
            "invalid_public_key",
            format!("{field}: {s:?} is not a compressed public key in hex (66 characters)"),
        )
    })
}

fn contract_id(s: &str) -> Result<[u8; 32], ApiError> {
    let bytes = from_hex(s).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_contract_id",
            format!("{s:?} is not a contract id (64 hex characters)"),
        )
    })?;
    bytes.try_into().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_contract_id",
            format!("{s:?} is not a contract id (64 hex characters)"),
        )
    })
}

// ---- bodies ------------------------------------------------------------------------------------

/// `POST /v1/dlc/offers`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferRequest {
    /// The counterparty's DLC identity (hex compressed public key, from its
    /// `GET /v1/dlc/identity`).
    pub counterparty: String,
    /// The contract.
    pub contract: ContractBody,
}

/// A contract to offer, by kind.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContractBody {
    /// Settles on one enumerated outcome of an oracle event (`"kind": "enum"`).
    Enum(EnumContract),
    /// Settles on the value of a numeric (digit decomposition) oracle event along a payout
    /// curve (`"kind": "numeric"`).
    Numeric(NumericContract),
}

/// An enum contract: each outcome of the event pays the two parties a fixed split of the
/// collateral.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnumContract {
    /// The oracle event (announced by every oracle named).
    pub event_id: String,
    /// The oracles' x-only public keys (hex), each one this node lists in `[[dlc.oracles]]`.
    pub oracles: Vec<String>,
    /// How many of them must attest the same outcome (default 1).
    #[serde(default = "one")]
    pub threshold: u16,
    /// What each outcome pays: every outcome of the event, each paying the whole collateral.
    pub outcomes: Vec<EnumOutcome>,
    /// What this node puts in.
    pub offer_collateral_sat: u64,
    /// What the counterparty puts in.
    pub accept_collateral_sat: u64,
    /// The fee rate of the funding, closing and refund transactions, sat/vB (1 to 6250).
    pub fee_rate_sat_per_vb: u64,
}

fn one() -> u16 {
    1
}

/// One outcome of an enum contract and its payouts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnumOutcome {
    /// The outcome, as the oracle's announcement names it.
    pub outcome: String,
    /// What it pays the offering party (this node).
    pub offer_payout_sat: u64,
    /// What it pays the accepting party.
    pub accept_payout_sat: u64,
}

/// A numeric contract: the value the oracles attest (`nb_digits` digits in `base`) pays the
/// offering party along a piecewise linear curve through `payout_points`, and the accepting
/// party the rest of the collateral. Payouts are rounded to a multiple of `rounding_mod_sat`
/// (a coarser rounding makes fewer CETs).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NumericContract {
    /// The oracle event (announced by every oracle named, with these digits).
    pub event_id: String,
    /// The oracles' x-only public keys (hex), each one this node lists in `[[dlc.oracles]]`.
    pub oracles: Vec<String>,
    /// How many of them must attest the same value (default 1).
    #[serde(default = "one")]
    pub threshold: u16,
    /// The digit base of the event (default 2).
    #[serde(default = "two")]
    pub base: u16,
    /// How many digits the event has; the values run from 0 to `base^nb_digits - 1`, at most
    /// 2^20 - 1.
    pub nb_digits: u16,
    /// The curve's points, by ascending outcome: the first at 0, the last at the highest
    /// value; linear between two points.
    pub payout_points: Vec<NumericPoint>,
    /// Payouts are rounded to a multiple of this (default 1 sat).
    #[serde(default = "one_sat")]
    pub rounding_mod_sat: u64,
    /// What this node puts in.
    pub offer_collateral_sat: u64,
    /// What the counterparty puts in.
    pub accept_collateral_sat: u64,
    /// The fee rate of the funding, closing and refund transactions, sat/vB (1 to 6250).
    pub fee_rate_sat_per_vb: u64,
}

fn two() -> u16 {
    2
}

fn one_sat() -> u64 {
    1
}

/// One point of a numeric contract's payout curve.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NumericPoint {
    /// The attested value.
    pub outcome: u64,
    /// What it pays the offering party (the accepting party gets the rest).
    pub offer_payout_sat: u64,
}

/// The highest value a numeric contract may range over: the manager evaluates the curve at
/// every value, so the domain is bounded (2^20 values: a 20-digit binary price event).
pub const MAX_NUMERIC_VALUE: u64 = (1 << 20) - 1;
/// The most distinct payouts (ranges of values) of a numeric contract: each needs CETs.
pub const MAX_PAYOUT_RANGES: usize = 4096;
/// The most points of a payout curve.
pub const MAX_POINTS: usize = 64;

/// What every contract kind shares, checked.
struct Common {
    keys: Vec<XOnlyPublicKey>,
    offer: Amount,
    accept: Amount,
    total: Amount,
}

fn sat(what: &str, v: u64) -> Result<Amount, ApiError> {
    let a = Amount::from_sat(v);
    if a > Amount::MAX_MONEY {
        Err(invalid(
            "invalid_contract",
            format!("{what}: {v} sat is past the money supply"),
        ))
    } else {
        Ok(a)
    }
}

/// Checks the event id, the oracles and threshold, the collaterals and the fee rate.
fn common(
    event_id: &str,
    oracles: &[String],
    threshold: u16,
    offer_collateral_sat: u64,
    accept_collateral_sat: u64,
    fee_rate_sat_per_vb: u64,
) -> Result<Common, ApiError> {
    let bad = |detail: String| invalid("invalid_contract", detail);
    if !event_id_ok(event_id) {
        return Err(bad("event_id: 1 to 256 bytes, no control characters".to_owned()));
    }
    if oracles.is_empty() || oracles.len() > MAX_ORACLES {
        return Err(bad(format!("oracles: 1 to {MAX_ORACLES}")));
    }
    let mut keys = Vec::with_capacity(oracles.len());
    for o in oracles {
        let key = o.parse::<XOnlyPublicKey>().map_err(|_| {
            bad(format!(
                "oracles: {o:?} is not an x-only public key in hex (64 characters)"
            ))
        })?;
        if keys.contains(&key) {
            return Err(bad(format!("oracles: {o} is listed twice")));
        }
        keys.push(key);
    }
    if threshold == 0 || usize::from(threshold) > keys.len() {
        return Err(bad(format!("threshold: 1 to the {} oracles named", keys.len())));
    }
    let offer = sat("offer_collateral_sat", offer_collateral_sat)?;
    let accept = sat("accept_collateral_sat", accept_collateral_sat)?;
    let total = offer
        .checked_add(accept)
        .filter(|t| *t <= Amount::MAX_MONEY)
        .ok_or_else(|| bad("the collaterals together are past the money supply".to_owned()))?;
    let dust = Amount::from_sat(1000);
    if total < dust || (offer > Amount::ZERO && offer < dust) || (accept > Amount::ZERO && accept < dust) {
        return Err(bad(
            "collateral: at least 1000 sat in all, and each side 0 or at least 1000 sat".to_owned(),
        ));
    }
    if !(1..=MAX_FEE_RATE).contains(&fee_rate_sat_per_vb) {
        return Err(bad(format!("fee_rate_sat_per_vb: 1 to {MAX_FEE_RATE}")));
    }
    Ok(Common {
        keys,
        offer,
        accept,
        total,
    })
}

fn contract_input(
    c: Common,
    descriptor: ContractDescriptor,
    event_id: &str,
    threshold: u16,
    fee_rate: u64,
) -> ContractInput {
    ContractInput {
        offer_collateral: c.offer,
        accept_collateral: c.accept,
        fee_rate,
        contract_flags: 0,
        contract_infos: vec![ContractInputInfo {
            contract_descriptor: descriptor,
            oracles: OracleInput {
                public_keys: c.keys,
                event_id: event_id.to_owned(),
                threshold,
            },
        }],
    }
}

fn event_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)
}

impl EnumContract {
    /// The contract input, once every field is checked: the event id, distinct oracles and a
    /// threshold they can meet, distinct outcomes each paying exactly the whole collateral,
    /// amounts within the money supply, a fee rate the manager takes.
    pub fn to_input(&self) -> Result<ContractInput, ApiError> {
        let bad = |detail: String| invalid("invalid_contract", detail);
        let c = common(
            &self.event_id,
            &self.oracles,
            self.threshold,
            self.offer_collateral_sat,
            self.accept_collateral_sat,
            self.fee_rate_sat_per_vb,
        )?;
        if self.outcomes.is_empty() || self.outcomes.len() > MAX_OUTCOMES {
            return Err(bad(format!("outcomes: 1 to {MAX_OUTCOMES}")));
        }
        let mut seen = HashSet::new();
        let mut payouts = Vec::with_capacity(self.outcomes.len());
        for o in &self.outcomes {
            if o.outcome.is_empty() || o.outcome.len() > 256 {
                return Err(bad("outcomes: each outcome is 1 to 256 bytes".to_owned()));
            }
            if !seen.insert(o.outcome.as_str()) {
                return Err(bad(format!("outcomes: {:?} is listed twice", o.outcome)));
            }
            let to_offer = sat("offer_payout_sat", o.offer_payout_sat)?;
            let to_accept = sat("accept_payout_sat", o.accept_payout_sat)?;
            if to_offer.checked_add(to_accept) != Some(c.total) {
                return Err(bad(format!(
                    "outcome {:?} pays {} + {} sat; every outcome pays the whole collateral, {} sat",
                    o.outcome,
                    o.offer_payout_sat,
                    o.accept_payout_sat,
                    c.total.to_sat()
                )));
            }
            payouts.push(EnumerationPayout {
                outcome: o.outcome.clone(),
                payout: Payout {
                    offer: to_offer,
                    accept: to_accept,
                },
            });
        }
        let descriptor = ContractDescriptor::Enum(EnumDescriptor {
            outcome_payouts: payouts,
        });
        Ok(contract_input(
            c,
            descriptor,
            &self.event_id,
            self.threshold,
            self.fee_rate_sat_per_vb,
        ))
    }
}

impl NumericContract {
    /// The contract input, once every field is checked: what [`EnumContract::to_input`]
    /// checks of the oracles, collaterals and fee rate; a domain of at most
    /// [`MAX_NUMERIC_VALUE`] + 1 values; ascending points from 0 to the highest value, none
    /// paying more than the collateral; a rounding within the collateral; at most
    /// [`MAX_PAYOUT_RANGES`] distinct payouts.
    pub fn to_input(&self) -> Result<ContractInput, ApiError> {
        let bad = |detail: String| invalid("invalid_contract", detail);
        let c = common(
            &self.event_id,
            &self.oracles,
            self.threshold,
            self.offer_collateral_sat,
            self.accept_collateral_sat,
            self.fee_rate_sat_per_vb,
        )?;
        if !(2..=16).contains(&self.base) {
            return Err(bad("base: 2 to 16".to_owned()));
        }
        let max_value = u64::from(self.base)
            .checked_pow(u32::from(self.nb_digits))
            .map(|n| n - 1)
            .filter(|m| (1..=MAX_NUMERIC_VALUE).contains(m))
            .ok_or_else(|| bad(format!("nb_digits: base^nb_digits - 1 is 1 to {MAX_NUMERIC_VALUE}")))?;
        if !(2..=MAX_POINTS).contains(&self.payout_points.len()) {
            return Err(bad(format!("payout_points: 2 to {MAX_POINTS}")));
        }
        let (first, last) = (
            &self.payout_points[0],
            &self.payout_points[self.payout_points.len() - 1],
        );
        if first.outcome != 0 || last.outcome != max_value {
            return Err(bad(format!("payout_points: from outcome 0 to outcome {max_value}")));
        }
        let mut points = Vec::with_capacity(self.payout_points.len());
        for (i, p) in self.payout_points.iter().enumerate() {
            if i > 0 && p.outcome <= self.payout_points[i - 1].outcome {
                return Err(bad("payout_points: outcomes must ascend".to_owned()));
            }
            let payout = sat("offer_payout_sat", p.offer_payout_sat)?;
            if payout > c.total {
                return Err(bad(format!(
                    "payout_points: outcome {} pays {} sat, more than the collateral, {} sat",
                    p.outcome,
                    p.offer_payout_sat,
                    c.total.to_sat()
                )));
            }
            points.push(PayoutPoint {
                event_outcome: p.outcome,
                outcome_payout: payout,
                extra_precision: 0,
            });
        }
        if self.rounding_mod_sat == 0 || self.rounding_mod_sat > c.total.to_sat() {
            return Err(bad("rounding_mod_sat: 1 sat to the whole collateral".to_owned()));
        }
        let manager = |e: ManagerError| bad(e.to_string());
        let pieces = points
            .windows(2)
            .map(|pair| {
                PolynomialPayoutCurvePiece::new(pair.to_vec()).map(PayoutFunctionPiece::PolynomialPayoutCurvePiece)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(manager)?;
        let descriptor = NumericalDescriptor {
            payout_function: PayoutFunction::new(pieces).map_err(manager)?,
            rounding_intervals: RoundingIntervals {
                intervals: vec![RoundingInterval {
                    begin_interval: 0,
                    rounding_mod: self.rounding_mod_sat,
                }],
            },
            difference_params: None,
            oracle_numeric_infos: OracleNumericInfo {
                base: usize::from(self.base),
                nb_digits: vec![usize::from(self.nb_digits); c.keys.len()],
            },
        };
        descriptor.validate(max_value).map_err(manager)?;
        let ranges = descriptor.get_range_payouts(c.total).map_err(manager)?.len();
        if ranges > MAX_PAYOUT_RANGES {
            return Err(bad(format!(
                "the curve makes {ranges} distinct payouts, more than {MAX_PAYOUT_RANGES}: round coarser (rounding_mod_sat)"
            )));
        }
        let descriptor = ContractDescriptor::Numerical(descriptor);
        Ok(contract_input(
            c,
            descriptor,
            &self.event_id,
            self.threshold,
            self.fee_rate_sat_per_vb,
        ))
    }
}

impl ContractBody {
    /// The contract input (see [`EnumContract::to_input`]).
    pub fn to_input(&self) -> Result<ContractInput, ApiError> {
        match self {
            ContractBody::Enum(c) => c.to_input(),
            ContractBody::Numeric(c) => c.to_input(),
        }
    }
}

/// `POST /v1/dlc/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// The sender's DLC identity (hex compressed public key).
    pub from: String,
    /// The message: an offer, accept or sign (hex of its dlcspecs serialization).
    pub message: String,
}

// ---- answers -----------------------------------------------------------------------------------

/// `GET /v1/dlc/identity`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IdentityView {
    /// This node's DLC identity (hex compressed public key): what the counterparty names it by.
    pub public_key: String,
    /// The wallet that funds contracts.
    pub wallet: String,
    /// The oracles contracts may settle on (x-only public keys, hex).
    pub oracles: Vec<String>,
}

/// An offer made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OfferView {
    /// The contract's temporary id (hex), until it is accepted.
    pub temporary_id: String,
    /// The offer message to send to the counterparty (hex).
    pub message: String,
    /// The contract.
    pub contract: ContractView,
}

/// A message handed in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceivedView {
    /// The message to send back (hex): the sign message in answer to an accept; none otherwise.
    pub reply: Option<String>,
    /// The contract the message is about, in its new state.
    pub contract: ContractView,
}

/// An offer accepted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptView {
    /// The contract's id (hex).
    pub contract_id: String,
    /// The accept message to send to the offer party (hex).
    pub message: String,
    /// The contract.
    pub contract: ContractView,
}

/// One contract, with the message it waits on an answer to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContractDetail {
    /// The contract.
    #[serde(flatten)]
    pub contract: ContractView,
    /// The last message this node sent while the counterparty has not answered it yet (its
    /// offer, accept or sign, hex): what to deliver again when it may have been lost.
    pub message: Option<String>,
}

fn summary(contract: &anya_layer2::dlc::contracts::ddk_manager::contract::Contract) -> ContractSummary {
    ContractSummary::of(contract)
}

/// The id a message is about (the temporary id of an offer or accept).
fn message_contract(message: &Message) -> Option<[u8; 32]> {
    match message {
        Message::Offer(m) => Some(m.temporary_contract_id),
        Message::Accept(m) => Some(m.temporary_contract_id),
        Message::Sign(m) => Some(m.contract_id),
        Message::Close(m) => Some(m.contract_id),
        _ => None,
    }
}

/// Checks the contract against the announcements of the oracles it names (which must be
/// this node's): an enum contract pays exactly the event's outcomes, a numeric one has the
/// event's base and digits. `ddk-manager` checks the outcomes only after it reserved the
/// offer's coins, and the digits not at all: a contract on the wrong digits could never close
/// by CET.
async fn check_announcements(d: &Dlc, body: &ContractBody, input: &ContractInput) -> Result<(), ApiError> {
    use anya_layer2::dlc::messages::EventDescriptor;
    for info in &input.contract_infos {
        let event = &info.oracles.event_id;
        for key in &info.oracles.public_keys {
            let oracle = d.oracle(key).ok_or_else(|| {
                invalid(
                    "unknown_oracle",
                    format!("oracle {key} is not one of this node's [[dlc.oracles]]"),
                )
            })?;
            let announcement = oracle.get_announcement(event).await.map_err(|e| {
                invalid(
                    "announcement_unavailable",
                    format!("oracle {key} has no announcement of {event:?} to give: {e}"),
                )
            })?;
            let mismatch = |what: String| invalid("invalid_contract", format!("oracle {key}'s event {event:?} {what}"));
            match (&announcement.oracle_event.event_descriptor, body) {
                (EventDescriptor::EnumEvent(e), ContractBody::Enum(c)) => {
                    let theirs: HashSet<&str> = e.outcomes.iter().map(String::as_str).collect();
                    let ours: HashSet<&str> = c.outcomes.iter().map(|o| o.outcome.as_str()).collect();
                    if theirs != ours || e.outcomes.len() != theirs.len() {
                        return Err(mismatch(format!(
                            "has the outcomes {:?}: the contract pays each exactly once",
                            e.outcomes
                        )));
                    }
                }
                (EventDescriptor::DigitDecompositionEvent(e), ContractBody::Numeric(c)) => {
                    if e.is_signed {
                        return Err(mismatch(
                            "is signed: numeric contracts settle on unsigned values".to_owned(),
                        ));
                    }
                    if (e.base, e.nb_digits) != (c.base, c.nb_digits) {
                        return Err(mismatch(format!(
                            "has {} digits in base {}, not {} in base {}",
                            e.nb_digits, e.base, c.nb_digits, c.base
                        )));
                    }
                }
                (EventDescriptor::EnumEvent(_), _) => return Err(mismatch("is an enum event".to_owned())),
                (EventDescriptor::DigitDecompositionEvent(_), _) => {
                    return Err(mismatch("is a numeric event".to_owned()))
                }
            }
        }
    }
    Ok(())
}

/// Brings the funding wallet up to the chain before coins are chosen for a contract.
async fn sync_wallet(node: &Arc<Node>, d: &Dlc) -> Result<(), ApiError> {
    let (node, wallet) = (Arc::clone(node), d.wallet().clone());
    super::blocking(move || {
        let handle = node.wallets().get(&wallet)?;
        node.wallets().sync(&mut crate::wallets::lock(&handle))?;
        Ok(())
    })
    .await
}

/// Refuses a numeric offer whose payout curve spans values past [`MAX_NUMERIC_VALUE`]:
/// `ddk-manager` evaluates the curve at every value of its domain when it takes an offer in,
/// so a counterparty's offer over 2^64 values would hold the contract service forever.
fn bounded(message: &Message) -> Result<(), ApiError> {
    use ddk_messages::contract_msgs::{ContractDescriptor as Descriptor, ContractInfo, PayoutCurvePiece};
    let Message::Offer(offer) = message else { return Ok(()) };
    let infos: Vec<_> = match &offer.contract_info {
        ContractInfo::SingleContractInfo(s) => vec![&s.contract_info],
        ContractInfo::DisjointContractInfo(d) => d.contract_infos.iter().collect(),
    };
    for info in infos {
        let Descriptor::NumericOutcomeContractDescriptor(n) = &info.contract_descriptor else {
            continue;
        };
        let f = &n.payout_function;
        let mut outcomes = vec![f.last_endpoint.event_outcome];
        for piece in &f.payout_function_pieces {
            outcomes.push(piece.end_point.event_outcome);
            if let PayoutCurvePiece::PolynomialPayoutCurvePiece(p) = &piece.payout_curve_piece {
                outcomes.extend(p.payout_points.iter().map(|p| p.event_outcome));
            }
        }
        if outcomes.iter().any(|o| *o > MAX_NUMERIC_VALUE) {
            return Err(invalid(
                "dlc_refused",
                format!(
                    "a numeric offer over more than {} values is refused",
                    MAX_NUMERIC_VALUE + 1
                ),
            ));
        }
    }
    Ok(())
}

/// Publishes `summary` and returns its view.
fn publish(node: &Node, d: &Dlc, summary: &ContractSummary) -> ContractView {
    node.events().publish(d.event(summary));
    node.audit_changed();
    ContractView::from(summary)
}

// ---- routes ------------------------------------------------------------------------------------

/// `GET /v1/dlc/identity`.
#[utoipa::path(get, path = "/v1/dlc/identity", tag = "dlc", responses((status = 200, description = "this node's DLC identity, funding wallet and oracles", body = IdentityView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn identity(Auth(token): AdminAuth, State(node): State<Arc<Node>>) -> Result<Json<IdentityView>, ApiError> {
    let d = party(&node, &token)?;
    Ok(Json(IdentityView {
        public_key: hex(&d.identity().serialize()),
        wallet: d.wallet().as_str().to_owned(),
        oracles: d.oracles().iter().map(ToString::to_string).collect(),
    }))
}

/// `POST /v1/dlc/offers`: offers a contract to a counterparty.
#[utoipa::path(post, path = "/v1/dlc/offers", tag = "dlc", request_body = OfferRequest, responses((status = 201, description = "the offer, stored (its coins reserved) before it is returned", body = OfferView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn offer(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<OfferRequest>,
) -> Result<Response, ApiError> {
    let counterparty = public_key("counterparty", &req.counterparty)?;
    let input = req.contract.to_input()?;
    let d = party(&node, &token)?;
    check_announcements(&d, &req.contract, &input).await?;
    if counterparty == d.identity() {
        return Err(invalid(
            "invalid_public_key",
            "counterparty: that is this node's own identity",
        ));
    }
    sync_wallet(&node, &d).await?;
    let (temporary_id, message) = d.service().offer(&input, counterparty).await?;
    let contract = d.service().contract(&temporary_id).await?;
    let view = publish(&node, &d, &summary(&contract));
    tracing::info!(contract = %view.id, counterparty = %counterparty, "DLC contract offered");
    Ok((
        StatusCode::CREATED,
        Json(OfferView {
            temporary_id: hex(&temporary_id),
            message: hex(&message),
            contract: view,
        }),
    )
        .into_response())
}

/// `POST /v1/dlc/messages`: hands in a message from the counterparty.
#[utoipa::path(post, path = "/v1/dlc/messages", tag = "dlc", request_body = MessageRequest, responses((status = 200, description = "an offer is stored (accept it with /v1/dlc/contracts/{id}/accept); an accept is answered with the sign message (reply); a sign makes this node broadcast the funding transaction", body = ReceivedView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn message(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<MessageRequest>,
) -> Result<Json<ReceivedView>, ApiError> {
    let from = public_key("from", &req.from)?;
    let bytes = from_hex(&req.message)?;
    let decoded = decode_message(&bytes).map_err(|e| invalid("invalid_dlc_message", e.to_string()))?;
    let id = message_contract(&decoded).ok_or_else(|| {
        invalid(
            "invalid_dlc_message",
            "not a contract offer, accept, sign or close message",
        )
    })?;
    bounded(&decoded)?;
    let d = party(&node, &token)?;
    let reply = d.service().receive(&bytes, from).await?;
    let contract = d.service().contract(&id).await?;
    let view = publish(&node, &d, &summary(&contract));
    tracing::info!(contract = %view.id, state = %view.state, from = %from, "DLC message received");
    Ok(Json(ReceivedView {
        reply: reply.as_deref().map(hex),
        contract: view,
    }))
}

/// `POST /v1/dlc/contracts/{id}/accept`: accepts an offer received.
#[utoipa::path(post, path = "/v1/dlc/contracts/{id}/accept", tag = "dlc", params(("id" = String, Path, description = "the offer's temporary contract id (hex)")), responses((status = 200, description = "the accept message, stored (its coins reserved) before it is returned", body = AcceptView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn accept(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Id(id): Id,
) -> Result<Json<AcceptView>, ApiError> {
    let temporary_id = contract_id(&id)?;
    let d = party(&node, &token)?;
    // The contract must exist (404 before the manager's own refusal).
    d.service().contract(&temporary_id).await?;
    sync_wallet(&node, &d).await?;
    let (id, message) = d.service().accept(&temporary_id).await?;
    let contract = d.service().contract(&id).await?;
    let view = publish(&node, &d, &summary(&contract));
    tracing::info!(contract = %view.id, "DLC contract accepted");
    Ok(Json(AcceptView {
        contract_id: hex(&id),
        message: hex(&message),
        contract: view,
    }))
}

/// `GET /v1/dlc/contracts`.
#[utoipa::path(get, path = "/v1/dlc/contracts", tag = "dlc", responses((status = 200, description = "every contract", body = Vec<ContractView>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn contracts(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
) -> Result<Json<Vec<ContractView>>, ApiError> {
    let d = party(&node, &token)?;
    let all = d.service().contracts().await?;
    Ok(Json(all.iter().map(ContractView::from).collect()))
}

/// `GET /v1/dlc/contracts/{id}`.
#[utoipa::path(get, path = "/v1/dlc/contracts/{id}", tag = "dlc", params(("id" = String, Path, description = "the contract id, or its temporary id (hex)")), responses((status = 200, description = "the contract", body = ContractDetail), (status = "4XX", description = "problem details (application/problem+json); 404 contract_not_found", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn contract(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Id(id): Id,
) -> Result<Json<ContractDetail>, ApiError> {
    let id = contract_id(&id)?;
    let d = party(&node, &token)?;
    let contract = d.service().contract(&id).await?;
    Ok(Json(ContractDetail {
        contract: ContractView::from(&summary(&contract)),
        message: outgoing_message(&contract).map(|m| hex(&encode_message(&m))),
    }))
}

/// `POST /v1/dlc/tick`: runs the periodic contract check now.
#[utoipa::path(post, path = "/v1/dlc/tick", tag = "dlc", responses((status = 200, description = "the contracts whose state changed, in their new state (each also a dlc_contract event)", body = Vec<ContractView>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn tick(Auth(token): AdminAuth, State(node): State<Arc<Node>>) -> Result<Json<Vec<ContractView>>, ApiError> {
    party(&node, &token)?;
    let changed = node.dlc_tick().await?;
    Ok(Json(changed.iter().map(ContractView::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORACLE: &str = "4a1a0d7b0ad4e5d39b8dc0b6f8b22a1f6cb9e3bda2f7f4a78b6c66b4a4b9f0b1";

    fn body(patch: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let mut v = serde_json::json!({
            "counterparty": format!("02{}", "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
            "contract": {
                "kind": "enum",
                "event_id": "coin",
                "oracles": [ORACLE],
                "outcomes": [
                    {"outcome": "heads", "offer_payout_sat": 160_000_000u64, "accept_payout_sat": 40_000_000u64},
                    {"outcome": "tails", "offer_payout_sat": 30_000_000u64, "accept_payout_sat": 170_000_000u64}
                ],
                "offer_collateral_sat": 100_000_000u64,
                "accept_collateral_sat": 100_000_000u64,
                "fee_rate_sat_per_vb": 2
            }
        });
        patch(&mut v);
        v
    }

    fn parse(v: serde_json::Value) -> Result<OfferRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn oracle() -> String {
        // Any valid x-only key: the generator's.
        "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".to_owned()
    }

    fn valid() -> serde_json::Value {
        body(|v| v["contract"]["oracles"] = serde_json::json!([oracle()]))
    }

    #[test]
    fn an_enum_contract_becomes_the_managers_input() {
        let req = parse(valid()).expect("parses");
        let input = req.contract.to_input().expect("valid");
        assert_eq!(input.offer_collateral, Amount::from_sat(100_000_000));
        assert_eq!(input.accept_collateral, Amount::from_sat(100_000_000));
        assert_eq!(input.fee_rate, 2);
        let info = &input.contract_infos[0];
        assert_eq!(info.oracles.threshold, 1);
        assert_eq!(info.oracles.event_id, "coin");
        let ContractDescriptor::Enum(e) = &info.contract_descriptor else {
            panic!("an enum descriptor")
        };
        assert_eq!(e.outcome_payouts.len(), 2);
        assert_eq!(e.outcome_payouts[0].payout.offer, Amount::from_sat(160_000_000));
        input.validate().expect("the manager's own checks pass");
    }

    #[test]
    fn unknown_fields_and_kinds_do_not_parse() {
        assert!(parse(body(|v| v["contract"]["extra"] = serde_json::json!(1))).is_err());
        assert!(parse(body(|v| v["contract"]["outcomes"][0]["extra"] = serde_json::json!(1))).is_err());
        assert!(parse(body(|v| v["contract"]["kind"] = serde_json::json!("numeric"))).is_err());
        assert!(parse(body(|v| {
            v["contract"].as_object_mut().expect("object").remove("kind");
        }))
        .is_err());
        assert!(parse(body(|v| v["extra"] = serde_json::json!(1))).is_err());
    }

    #[test]
    fn inconsistent_contracts_are_refused_with_a_reason() {
        let refused = |patch: &dyn Fn(&mut serde_json::Value)| {
            let mut v = valid();
            patch(&mut v);
            let err = parse(v).expect("parses").contract.to_input().expect_err("refused");
            assert_eq!(
                (err.status, err.code),
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_contract")
            );
            err.detail
        };
        let d = refused(&|v| v["contract"]["outcomes"][0]["accept_payout_sat"] = serde_json::json!(40_000_001));
        assert!(d.contains("whole collateral"), "{d}");
        refused(&|v| v["contract"]["threshold"] = serde_json::json!(2));
        refused(&|v| v["contract"]["threshold"] = serde_json::json!(0));
        refused(&|v| v["contract"]["oracles"] = serde_json::json!([]));
        refused(&|v| v["contract"]["oracles"] = serde_json::json!([oracle(), oracle()]));
        refused(&|v| v["contract"]["oracles"] = serde_json::json!(["zz"]));
        refused(&|v| v["contract"]["outcomes"] = serde_json::json!([]));
        refused(&|v| v["contract"]["outcomes"][1]["outcome"] = serde_json::json!("heads"));
        refused(&|v| v["contract"]["event_id"] = serde_json::json!(""));
        refused(&|v| v["contract"]["event_id"] = serde_json::json!("a\nb"));
        refused(&|v| v["contract"]["fee_rate_sat_per_vb"] = serde_json::json!(0));
        refused(&|v| v["contract"]["fee_rate_sat_per_vb"] = serde_json::json!(MAX_FEE_RATE + 1));
        refused(&|v| v["contract"]["offer_collateral_sat"] = serde_json::json!(u64::MAX));
        refused(&|v| v["contract"]["offer_collateral_sat"] = serde_json::json!(999));
        let d = refused(&|v| {
            v["contract"]["offer_collateral_sat"] = serde_json::json!(2_000_000_000_000_000u64);
            v["contract"]["accept_collateral_sat"] = serde_json::json!(2_000_000_000_000_000u64);
        });
        assert!(d.contains("money supply"), "{d}");
    }

    #[test]
    fn ids_and_keys_are_checked() {
        assert_eq!(contract_id(&"ab".repeat(32)).expect("an id"), [0xab; 32]);
        for bad in ["", "ab", &"ab".repeat(33), &"zz".repeat(32)] {
            assert_eq!(contract_id(bad).expect_err("refused").code, "invalid_contract_id");
        }
        assert!(public_key("from", ORACLE).is_err(), "an x-only key is not an identity");
        assert!(public_key("from", &format!("02{}", oracle())).is_ok());
    }

    fn numeric(patch: impl FnOnce(&mut serde_json::Value)) -> Result<ContractInput, ApiError> {
        let mut v = serde_json::json!({
            "counterparty": format!("02{}", oracle()),
            "contract": {
                "kind": "numeric",
                "event_id": "price",
                "oracles": [oracle()],
                "nb_digits": 10,
                "payout_points": [
                    {"outcome": 0, "offer_payout_sat": 0},
                    {"outcome": 512, "offer_payout_sat": 100_000_000u64},
                    {"outcome": 1023, "offer_payout_sat": 200_000_000u64}
                ],
                "rounding_mod_sat": 10_000_000u64,
                "offer_collateral_sat": 100_000_000u64,
                "accept_collateral_sat": 100_000_000u64,
                "fee_rate_sat_per_vb": 2
            }
        });
        patch(&mut v);
        parse(v).expect("parses").contract.to_input()
    }

    #[test]
    fn a_numeric_contract_becomes_a_payout_curve_over_the_events_digits() {
        let input = numeric(|_| {}).expect("valid");
        input.validate().expect("the manager's own checks pass");
        let ContractDescriptor::Numerical(n) = &input.contract_infos[0].contract_descriptor else {
            panic!("a numerical descriptor")
        };
        assert_eq!(
            (n.oracle_numeric_infos.base, n.oracle_numeric_infos.nb_digits.clone()),
            (2, vec![10])
        );
        let ranges = n.get_range_payouts(Amount::from_sat(200_000_000)).expect("ranges");
        assert_eq!(ranges.first().map(|r| r.payout.offer), Some(Amount::ZERO));
        assert_eq!(
            ranges.last().map(|r| r.payout.offer),
            Some(Amount::from_sat(200_000_000))
        );
        assert!(
            ranges.iter().all(|r| r.payout.offer.to_sat() % 10_000_000 == 0),
            "{ranges:?}"
        );
        assert_eq!(
            ranges.iter().map(|r| r.count).sum::<usize>(),
            1024,
            "every value is paid"
        );
    }

    #[test]
    fn numeric_contracts_outside_what_can_close_are_refused() {
        let refused = |patch: &dyn Fn(&mut serde_json::Value)| {
            let err = numeric(patch).expect_err("refused");
            assert_eq!(
                (err.status, err.code),
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_contract")
            );
            err.detail
        };
        // The domain is 0..=1023: the curve must span it exactly.
        refused(&|v| v["contract"]["payout_points"][2]["outcome"] = serde_json::json!(1022));
        refused(&|v| v["contract"]["payout_points"][0]["outcome"] = serde_json::json!(1));
        refused(&|v| v["contract"]["payout_points"][1]["outcome"] = serde_json::json!(0));
        refused(&|v| v["contract"]["payout_points"] = serde_json::json!([{"outcome": 0, "offer_payout_sat": 0}]));
        refused(&|v| v["contract"]["payout_points"][1]["offer_payout_sat"] = serde_json::json!(200_000_001u64));
        refused(&|v| v["contract"]["rounding_mod_sat"] = serde_json::json!(0));
        refused(&|v| v["contract"]["base"] = serde_json::json!(1));
        refused(&|v| v["contract"]["nb_digits"] = serde_json::json!(0));
        refused(&|v| v["contract"]["nb_digits"] = serde_json::json!(64));
        let d = refused(&|v| v["contract"]["nb_digits"] = serde_json::json!(21));
        assert!(d.contains("nb_digits"), "{d}");
        // Rounded to the satoshi, a 2^20-value curve has far too many distinct payouts.
        let d = refused(&|v| {
            v["contract"]["nb_digits"] = serde_json::json!(20);
            v["contract"]["payout_points"] = serde_json::json!([
                {"outcome": 0, "offer_payout_sat": 0},
                {"outcome": MAX_NUMERIC_VALUE, "offer_payout_sat": 200_000_000u64}
            ]);
            v["contract"]["rounding_mod_sat"] = serde_json::json!(1);
        });
        assert!(d.contains("distinct payouts"), "{d}");
        assert!(parse({
            let mut v = valid();
            v["contract"]["kind"] = serde_json::json!("numeric");
            v
        })
        .is_err());
    }
}
