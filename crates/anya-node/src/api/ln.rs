//! Lightning routes (when `ln.enabled`): the node's Lightning node (`crate::ln`), its
//! on-chain funding address, peers, channels, BOLT11 invoices, BOLT12 offers, payments and
//! their spending policy, and decoding what a user pastes.
//!
//! Scopes: `read` sees the node, its channels and payments and may ask to be paid (an
//! address, an invoice, an offer: nothing leaves the node); `sign` may connect to peers (the
//! node makes outbound connections to the address given), open and close channels and pay;
//! `admin` may change the payments' own spending policy. A token limited to named keys or
//! wallets must be allowed the node's root (`ln.root`) and, when the payments share a
//! wallet's policy, that wallet.
//!
//! Every payment passes the spending policy before anything is sent: a refusal is 403
//! `policy_refused` naming the rules broken (as for an on-chain spend), recorded in the audit
//! chain. Bodies are checked before the node is asked: an invoice, offer, node id or peer
//! address that does not parse is a typed 400 that changes nothing; a well-formed one the node
//! will not pay (expired, another network, too little) is 422 `unpayable`. Outcomes arrive as
//! `ln_payment_successful` / `ln_payment_failed` events on `/v1/events`.

use std::sync::Arc;

use anya_bitcoin::policy::PolicyError;
use anya_bitcoin::wallet::WalletError;
use anya_layer2::lightning::ldk_node::lightning::ln::channelmanager::PaymentId;
use anya_layer2::lightning::ldk_node::lightning::offers::offer::{Amount as OfferAmount, Offer, Quantity};
use anya_layer2::lightning::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use anya_layer2::lightning::ldk_node::payment::{PaymentDetails, PaymentDirection, PaymentKind, PaymentStatus};
use anya_layer2::lightning::ldk_node::{ChannelDetails, NodeError as LdkError, UserChannelId};
use anya_layer2::lightning::{parse_invoice, parse_offer, parse_peer, InvoiceSummary, LightningError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, Network};
use serde::{Deserialize, Serialize};

use super::wallets::publish_decision;
use super::{blocking, from_hex, hex, AdminAuth, Auth, Body, Id, ReadAuth, SignAuth};
use crate::auth::TokenInfo;
use crate::config::PolicyBody;
use crate::error::ApiError;
use crate::ln::Ln;
use crate::node::Node;

/// The longest expiry of an invoice or offer, in seconds (a year).
pub const MAX_EXPIRY_SECS: u32 = 365 * 24 * 3600;
/// The longest payer note, in bytes.
pub const MAX_PAYER_NOTE: usize = 512;
/// The money supply in millisatoshis: no amount of a request may be above it.
const MAX_MSAT: u64 = 21_000_000 * 100_000_000 * 1000;

impl From<LightningError> for ApiError {
    fn from(e: LightningError) -> Self {
        match e {
            LightningError::Hsm(h) => h.into(),
            LightningError::Policy(PolicyError::PaymentRefused(v)) => {
                Self::new(StatusCode::FORBIDDEN, "policy_refused", v.to_string()).with_rule(v.code())
            }
            LightningError::Policy(PolicyError::Refused(v)) => {
                Self::new(StatusCode::FORBIDDEN, "policy_refused", v.to_string()).with_rule(v.code())
            }
            LightningError::Policy(PolicyError::Contended) => {
                Self::new(StatusCode::CONFLICT, "policy_contended", e.to_string())
            }
            LightningError::Policy(PolicyError::Audit(h)) => h.into(),
            LightningError::InvalidInvoice(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_invoice", e.to_string()),
            LightningError::InvalidOffer(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_offer", e.to_string()),
            LightningError::InvalidPeer(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_peer", e.to_string()),
            LightningError::Unpayable(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unpayable", e.to_string()),
            LightningError::Node(n) => node_error(n),
            other => Self::internal(&other),
        }
    }
}

/// ldk-node's refusals are the request's or the network's doing (4xx, 502); its store failing
/// is the node's (500).
fn node_error(e: LdkError) -> ApiError {
    let (status, code) = match e {
        LdkError::NotRunning | LdkError::AlreadyRunning => (StatusCode::SERVICE_UNAVAILABLE, "ln_not_running"),
        LdkError::ConnectionFailed => (StatusCode::BAD_GATEWAY, "peer_unreachable"),
        LdkError::DuplicatePayment => (StatusCode::CONFLICT, "duplicate_payment"),
        LdkError::InsufficientFunds => (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"),
        LdkError::ChannelCreationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "channel_open_failed"),
        LdkError::ChannelClosingFailed => (StatusCode::CONFLICT, "channel_close_failed"),
        LdkError::PaymentSendingFailed | LdkError::InvoiceRequestCreationFailed => {
            (StatusCode::UNPROCESSABLE_ENTITY, "payment_failed")
        }
        LdkError::InvoiceCreationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "invoice_failed"),
        LdkError::OfferCreationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "offer_failed"),
        LdkError::TxSyncFailed
        | LdkError::TxSyncTimeout
        | LdkError::FeerateEstimationUpdateFailed
        | LdkError::FeerateEstimationUpdateTimeout
        | LdkError::WalletOperationTimeout => (StatusCode::BAD_GATEWAY, "chain_unavailable"),
        LdkError::PersistenceFailed => return ApiError::internal(e),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "ln_refused"),
    };
    ApiError::new(status, code, e.to_string())
}

/// The Lightning node, for a token that may use its root (and its policy's wallet).
fn ln(node: &Node, token: &TokenInfo) -> Result<Arc<Ln>, ApiError> {
    let ln = node.ln().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ln_disabled",
            "this node runs no Lightning node ([ln] enabled = false)",
        )
    })?;
    let wallet_refused = ln.wallet().is_some_and(|w| !token.may_use_wallet(w.as_str()));
    if !token.may_use_key(ln.root().as_str()) || wallet_refused {
        return Err(ApiError::forbidden(format!(
            "the token may not use the Lightning node's root key {}{}",
            ln.root(),
            ln.wallet()
                .map_or_else(String::new, |w| format!(" and its policy's wallet {w}"))
        )));
    }
    Ok(ln)
}

fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, detail)
}

fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

/// A positive amount of millisatoshis within the money supply.
fn msat(field: &str, v: u64) -> Result<u64, ApiError> {
    if v == 0 || v > MAX_MSAT {
        return Err(invalid(
            "invalid_amount",
            format!("{field}: {v} msat is not 1 msat to 21 million BTC"),
        ));
    }
    Ok(v)
}

fn node_id(field: &str, s: &str) -> Result<PublicKey, ApiError> {
    s.trim().parse::<PublicKey>().map_err(|_| {
        bad_request(
            "invalid_node_id",
            format!("{field}: {s:?} is not a node id (a compressed public key, 66 hex characters)"),
        )
    })
}

fn payment_id(s: &str) -> Result<PaymentId, ApiError> {
    let refused = || {
        bad_request(
            "invalid_payment_id",
            format!("{s:?} is not a payment id (64 hex characters)"),
        )
    };
    let bytes = from_hex(s).map_err(|_| refused())?;
    Ok(PaymentId(bytes.try_into().map_err(|_| refused())?))
}

fn user_channel_id(s: &str) -> Result<UserChannelId, ApiError> {
    s.parse::<u128>().map(UserChannelId).map_err(|_| {
        bad_request(
            "invalid_channel_id",
            format!("{s:?} is not a user channel id (a decimal number, as /v1/ln/channels shows it)"),
        )
    })
}

fn expiry(secs: u32) -> Result<u32, ApiError> {
    if !(1..=MAX_EXPIRY_SECS).contains(&secs) {
        return Err(invalid(
            "invalid_expiry",
            format!("expiry_secs: 1 to {MAX_EXPIRY_SECS}"),
        ));
    }
    Ok(secs)
}

/// Publishes the verdict of the payments' policy: a `policy_decision` event when they share a
/// wallet's policy (the metrics count a refusal under that wallet, else under `ln`); the
/// decision itself is in the audit chain either way.
fn decided<T>(node: &Node, ln: &Ln, result: &Result<T, LightningError>) {
    let wallet = ln.wallet().map(|w| w.as_str());
    let label = wallet.unwrap_or("ln");
    match result {
        Ok(_) => publish_decision(node, wallet, label, None),
        Err(LightningError::Policy(PolicyError::PaymentRefused(v))) => {
            publish_decision(node, wallet, label, Some((v.code(), v.to_string())));
        }
        Err(_) => {}
    }
    node.audit_changed();
}

// ---- answers -----------------------------------------------------------------------------------

/// The node's balances.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnBalances {
    /// The on-chain wallet's total (confirmed and unconfirmed).
    pub onchain_total_sat: u64,
    /// What the on-chain wallet can spend (less the reserve anchor channels need).
    pub onchain_spendable_sat: u64,
    /// Kept on chain to bump the fees of anchor channels' closes.
    pub anchor_reserve_sat: u64,
    /// This node's side of its channels (what a close would pay it, before fees).
    pub lightning_sat: u64,
}

/// A block.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnBestBlock {
    /// Its height.
    pub height: u32,
    /// Its hash.
    pub hash: String,
}

/// `GET /v1/ln/info`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnInfo {
    /// The node id (hex public key).
    pub node_id: String,
    /// The chain.
    pub network: String,
    /// The alias it announces, if any.
    pub alias: Option<String>,
    /// Where peers reach it (`host:port`).
    pub listening_addresses: Vec<String>,
    /// The last block its channels and wallet have seen.
    pub best_block: LnBestBlock,
    /// Its balances.
    pub balances: LnBalances,
    /// Its channels.
    pub channels: usize,
    /// Its channels that can carry payments now.
    pub usable_channels: usize,
    /// Its peers connected now.
    pub connected_peers: usize,
    /// The BIP32 root its seed is derived from.
    pub root: String,
    /// The wallet whose spending policy the payments share (none: their own).
    pub policy_wallet: Option<String>,
}

/// A channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnChannel {
    /// The channel id (hex).
    pub channel_id: String,
    /// The node's own id of it (decimal): what `/v1/ln/channels/{id}/close` takes.
    pub user_channel_id: String,
    /// The peer (hex node id).
    pub counterparty_node_id: String,
    /// The funding output (`txid:vout`), once there is one.
    pub funding_txo: Option<String>,
    /// Its short channel id, once confirmed.
    pub short_channel_id: Option<u64>,
    /// Its capacity.
    pub channel_value_sat: u64,
    /// What this node can send now.
    pub outbound_capacity_msat: u64,
    /// What this node can receive now.
    pub inbound_capacity_msat: u64,
    /// The funding's confirmations, when known.
    pub confirmations: Option<u32>,
    /// The confirmations it needs before it is ready.
    pub confirmations_required: Option<u32>,
    /// Whether this node opened it.
    pub is_outbound: bool,
    /// Whether both sides consider it open.
    pub is_channel_ready: bool,
    /// Whether it can carry payments now (ready, and the peer connected).
    pub is_usable: bool,
    /// Whether it is announced to the network.
    pub is_announced: bool,
}

impl From<&ChannelDetails> for LnChannel {
    fn from(c: &ChannelDetails) -> Self {
        Self {
            channel_id: hex(&c.channel_id.0),
            user_channel_id: c.user_channel_id.0.to_string(),
            counterparty_node_id: c.counterparty_node_id.to_string(),
            funding_txo: c.funding_txo.map(|o| o.to_string()),
            short_channel_id: c.short_channel_id,
            channel_value_sat: c.channel_value_sats,
            outbound_capacity_msat: c.outbound_capacity_msat,
            inbound_capacity_msat: c.inbound_capacity_msat,
            confirmations: c.confirmations,
            confirmations_required: c.confirmations_required,
            is_outbound: c.is_outbound,
            is_channel_ready: c.is_channel_ready,
            is_usable: c.is_usable,
            is_announced: c.is_announced,
        }
    }
}

/// A payment, in either direction.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnPayment {
    /// Its id (hex): for BOLT11 and keysend payments, the payment hash.
    pub id: String,
    /// `bolt11`, `bolt11_jit`, `bolt12_offer`, `bolt12_refund`, `spontaneous` (keysend) or
    /// `onchain`.
    pub kind: &'static str,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `pending`, `succeeded` or `failed`.
    pub status: &'static str,
    /// The amount, in millisatoshis, when known.
    pub amount_msat: Option<u64>,
    /// The routing fee paid (outbound), in millisatoshis, when known.
    pub fee_paid_msat: Option<u64>,
    /// The payment hash (hex), when known.
    pub payment_hash: Option<String>,
    /// The preimage (hex), once the payment succeeded: the proof of payment.
    pub preimage: Option<String>,
    /// The transaction, for an on-chain payment.
    pub txid: Option<String>,
    /// When it last changed (unix seconds).
    pub updated: u64,
}

impl From<&PaymentDetails> for LnPayment {
    fn from(p: &PaymentDetails) -> Self {
        let (kind, hash, preimage, txid) = match &p.kind {
            PaymentKind::Onchain { txid, .. } => ("onchain", None, None, Some(txid.to_string())),
            PaymentKind::Bolt11 { hash, preimage, .. } => ("bolt11", Some(hash.0), preimage.map(|p| p.0), None),
            PaymentKind::Bolt11Jit { hash, preimage, .. } => ("bolt11_jit", Some(hash.0), preimage.map(|p| p.0), None),
            PaymentKind::Bolt12Offer { hash, preimage, .. } => {
                ("bolt12_offer", hash.map(|h| h.0), preimage.map(|p| p.0), None)
            }
            PaymentKind::Bolt12Refund { hash, preimage, .. } => {
                ("bolt12_refund", hash.map(|h| h.0), preimage.map(|p| p.0), None)
            }
            PaymentKind::Spontaneous { hash, preimage } => ("spontaneous", Some(hash.0), preimage.map(|p| p.0), None),
        };
        let status = match p.status {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
        };
        Self {
            id: hex(&p.id.0),
            kind,
            direction: match p.direction {
                PaymentDirection::Inbound => "inbound",
                PaymentDirection::Outbound => "outbound",
            },
            status,
            amount_msat: p.amount_msat,
            fee_paid_msat: p.fee_paid_msat,
            payment_hash: hash.map(|h| hex(&h)),
            // Before it succeeded, an inbound payment's preimage is what claims it.
            preimage: preimage
                .filter(|_| p.status == PaymentStatus::Succeeded)
                .map(|p| hex(&p)),
            txid,
            updated: p.latest_update_timestamp,
        }
    }
}

/// A payment handed to the node.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnPaymentSent {
    /// Its id (hex): `GET /v1/ln/payments/{id}`, and the `payment_id` of its events.
    pub payment_id: String,
    /// The payment as the node holds it now (usually `pending`), when it holds it yet.
    pub payment: Option<LnPayment>,
}

/// A BOLT11 invoice made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnInvoiceMade {
    /// The invoice (`lnbc…`, `lnbcrt…`).
    pub invoice: String,
    /// Its payment hash (hex): the id of the payment that pays it.
    pub payment_hash: String,
    /// The amount it asks, in millisatoshis (none: the payer chooses).
    pub amount_msat: Option<u64>,
    /// When it expires (unix seconds).
    pub expires_at: u64,
}

/// A BOLT12 offer made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnOfferMade {
    /// The offer (`lno1…`).
    pub offer: String,
    /// Its id (hex).
    pub offer_id: String,
}

/// A route hint hop of a decoded invoice.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnHintHop {
    /// The hop's node (hex).
    pub node_id: String,
    /// The channel to the next hop.
    pub short_channel_id: u64,
    /// Base fee, in millisatoshis.
    pub fee_base_msat: u32,
    /// Proportional fee, in millionths.
    pub fee_proportional_millionths: u32,
    /// CLTV delta.
    pub cltv_expiry_delta: u16,
}

/// A decoded BOLT11 invoice, field by field.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnDecodedInvoice {
    /// The network its prefix names.
    pub network: String,
    /// The amount asked, in millisatoshis, if any.
    pub amount_msat: Option<u64>,
    /// When it was made (unix seconds).
    pub timestamp: u64,
    /// Seconds after `timestamp` that it expires.
    pub expiry_secs: u64,
    /// The payment hash (hex).
    pub payment_hash: String,
    /// The description, if given directly.
    pub description: Option<String>,
    /// The description's hash (hex), if given instead.
    pub description_hash: Option<String>,
    /// The minimum final CLTV delta.
    pub min_final_cltv_expiry_delta: u64,
    /// The payee (hex node id).
    pub payee: String,
    /// On-chain fallback addresses.
    pub fallback_addresses: Vec<String>,
    /// Route hints, each a path of hops.
    pub route_hints: Vec<Vec<LnHintHop>>,
    /// The feature bits set.
    pub features: Vec<usize>,
}

impl From<&InvoiceSummary> for LnDecodedInvoice {
    fn from(s: &InvoiceSummary) -> Self {
        Self {
            network: s.network.to_string(),
            amount_msat: s.amount_msat,
            timestamp: s.timestamp,
            expiry_secs: s.expiry_secs,
            payment_hash: hex(&s.payment_hash),
            description: s.description.clone(),
            description_hash: s.description_hash.map(|h| hex(&h)),
            min_final_cltv_expiry_delta: s.min_final_cltv_expiry_delta,
            payee: s.payee.to_string(),
            fallback_addresses: s.fallback_addresses.clone(),
            route_hints: s
                .route_hints
                .iter()
                .map(|path| {
                    path.iter()
                        .map(|h| LnHintHop {
                            node_id: h.node_id.to_string(),
                            short_channel_id: h.short_channel_id,
                            fee_base_msat: h.fee_base_msat,
                            fee_proportional_millionths: h.fee_proportional_millionths,
                            cltv_expiry_delta: h.cltv_expiry_delta,
                        })
                        .collect()
                })
                .collect(),
            features: s.features.clone(),
        }
    }
}

/// A decoded BOLT12 offer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LnDecodedOffer {
    /// Its id (hex).
    pub offer_id: String,
    /// The chains it may be paid on.
    pub networks: Vec<String>,
    /// What it asks per item, in millisatoshis (none: the payer chooses).
    pub amount_msat: Option<u64>,
    /// The amount when priced in a currency (ISO 4217 code and minor units), which this node
    /// does not pay.
    pub currency_amount: Option<String>,
    /// Its description.
    pub description: Option<String>,
    /// Who issues it.
    pub issuer: Option<String>,
    /// The key that signs its invoices (hex), if it names one.
    pub issuer_signing_pubkey: Option<String>,
    /// When it expires (unix seconds), if it does.
    pub absolute_expiry: Option<u64>,
    /// How many blinded paths reach its issuer.
    pub paths: usize,
    /// How many items one payment may buy: `1`, a bound, or `unbounded`.
    pub quantity: String,
}

impl From<&Offer> for LnDecodedOffer {
    fn from(o: &Offer) -> Self {
        let (amount_msat, currency_amount) = match o.amount() {
            None => (None, None),
            Some(OfferAmount::Bitcoin { amount_msats }) => (Some(amount_msats), None),
            Some(OfferAmount::Currency { iso4217_code, amount }) => (None, Some(format!("{amount} {iso4217_code}"))),
        };
        Self {
            offer_id: hex(&o.id().0),
            networks: o
                .chains()
                .iter()
                .map(|c| Network::from_chain_hash(*c).map_or_else(|| c.to_string(), |n| n.to_string()))
                .collect(),
            amount_msat,
            currency_amount,
            description: o.description().map(|d| d.to_string()),
            issuer: o.issuer().map(|i| i.to_string()),
            issuer_signing_pubkey: o.issuer_signing_pubkey().map(|k| k.to_string()),
            absolute_expiry: o.absolute_expiry().map(|d| d.as_secs()),
            paths: o.paths().len(),
            quantity: match o.supported_quantity() {
                Quantity::One => "1".to_owned(),
                Quantity::Bounded(n) => n.to_string(),
                Quantity::Unbounded => "unbounded".to_owned(),
            },
        }
    }
}

/// What `POST /v1/ln/decode` found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LnDecoded {
    /// A BOLT11 invoice (`"kind": "bolt11"`).
    Bolt11(LnDecodedInvoice),
    /// A BOLT12 offer (`"kind": "bolt12_offer"`).
    Bolt12Offer(LnDecodedOffer),
}

// ---- bodies ------------------------------------------------------------------------------------

/// `POST /v1/ln/peers`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LnConnectRequest {
    /// `<node id>@<host>:<port>`.
    pub peer: String,
    /// Reconnect to it after a restart (default true).
    #[serde(default = "yes")]
    pub persist: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/ln/channels`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LnOpenRequest {
    /// `<node id>@<host>:<port>`.
    pub peer: String,
    /// The channel's capacity, funded from the node's on-chain wallet (`POST /v1/ln/address`).
    pub amount_sat: u64,
    /// Given to the peer when the channel opens, in millisatoshis: a payment to it, which the
    /// spending policy approves first.
    #[serde(default)]
    pub push_msat: Option<u64>,
    /// Announce the channel to the network (needs `ln.listen` and `ln.alias`; default false).
    #[serde(default)]
    pub announce: bool,
}

/// `POST /v1/ln/channels/{id}/close`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LnCloseRequest {
    /// Close without the peer (broadcast this node's commitment transaction; its funds come
    /// back after a delay). Default false: a cooperative close.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/ln/invoices`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LnInvoiceRequest {
    /// The amount to ask, in millisatoshis (none: the payer chooses).
    #[serde(default)]
    pub amount_msat: Option<u64>,
    /// The description (at most 639 bytes; default empty).
    #[serde(default)]
    pub description: String,
    /// Seconds until it expires (default 3600, at most a year).
    #[serde(default = "hour")]
    pub expiry_secs: u32,
}

fn hour() -> u32 {
    3600
}

/// `POST /v1/ln/offers`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LnOfferRequest {
    /// The amount to ask per payment, in millisatoshis (none: the payer chooses).
    #[serde(default)]
    pub amount_msat: Option<u64>,
    /// The description.
    #[serde(default)]
    pub description: String,
    /// Seconds until it expires (none: never).
    #[serde(default)]
    pub expiry_secs: Option<u32>,
}

/// `POST /v1/ln/payments`: exactly one of `invoice`, `offer` or `keysend`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LnPayRequest {
    /// A BOLT11 invoice to pay.
    #[serde(default)]
    pub invoice: Option<String>,
    /// A BOLT12 offer to pay.
    #[serde(default)]
    pub offer: Option<String>,
    /// A node id to pay by keysend (needs `amount_msat`).
    #[serde(default)]
    pub keysend: Option<String>,
    /// The amount, in millisatoshis: for an invoice or offer without one, for keysend, or
    /// more than an invoice or offer asks.
    #[serde(default)]
    pub amount_msat: Option<u64>,
    /// The most routing fee to pay, in millisatoshis (default 1% plus 50 sat). The policy
    /// counts the amount plus this.
    #[serde(default)]
    pub max_fee_msat: Option<u64>,
    /// For an offer: how many items.
    #[serde(default)]
    pub quantity: Option<u64>,
    /// For an offer: a note to its issuer (at most 512 bytes).
    #[serde(default)]
    pub payer_note: Option<String>,
}

/// `POST /v1/ln/decode`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LnDecodeRequest {
    /// A BOLT11 invoice or a BOLT12 offer (a `lightning:` prefix is allowed).
    pub request: String,
}

/// What a payment request asks, checked.
enum Target {
    Invoice(Box<anya_layer2::lightning::ldk_node::lightning_invoice::Bolt11Invoice>),
    Offer(Box<Offer>),
    Keysend(PublicKey, u64),
}

impl LnPayRequest {
    /// The target, refusing a body that names none or several, or options that do not go
    /// with it (400), and amounts out of range (422).
    fn target(&self) -> Result<Target, ApiError> {
        let bad = |detail: &str| bad_request("invalid_payment", detail);
        if let Some(a) = self.amount_msat {
            msat("amount_msat", a)?;
        }
        if let Some(f) = self.max_fee_msat {
            if f > MAX_MSAT {
                return Err(invalid("invalid_amount", "max_fee_msat: past the money supply"));
            }
        }
        let offer_only = self.quantity.is_some() || self.payer_note.is_some();
        match (&self.invoice, &self.offer, &self.keysend) {
            (Some(invoice), None, None) => {
                if offer_only {
                    return Err(bad("quantity and payer_note are for an offer"));
                }
                Ok(Target::Invoice(Box::new(parse_invoice(invoice)?)))
            }
            (None, Some(offer), None) => {
                if self.quantity == Some(0) {
                    return Err(invalid("invalid_quantity", "quantity: at least 1"));
                }
                if self.payer_note.as_ref().is_some_and(|n| n.len() > MAX_PAYER_NOTE) {
                    return Err(invalid(
                        "invalid_payer_note",
                        format!("payer_note: at most {MAX_PAYER_NOTE} bytes"),
                    ));
                }
                Ok(Target::Offer(Box::new(parse_offer(offer)?)))
            }
            (None, None, Some(id)) => {
                if offer_only {
                    return Err(bad("quantity and payer_note are for an offer"));
                }
                let amount = self.amount_msat.ok_or_else(|| bad("keysend needs amount_msat"))?;
                Ok(Target::Keysend(node_id("keysend", id)?, amount))
            }
            (None, None, None) => Err(bad("give one of invoice, offer or keysend")),
            _ => Err(bad("give exactly one of invoice, offer or keysend")),
        }
    }
}

// ---- routes ------------------------------------------------------------------------------------

/// `GET /v1/ln/info`.
#[utoipa::path(get, path = "/v1/ln/info", tag = "ln", responses((status = 200, description = "the node id, addresses, best block and balances", body = LnInfo), (status = "4XX", description = "problem details (application/problem+json); 404 ln_disabled", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn info(Auth(token): ReadAuth, State(node): State<Arc<Node>>) -> Result<Json<LnInfo>, ApiError> {
    let ln = ln(&node, &token)?;
    blocking(move || {
        let ldk = ln.node().node();
        let status = ldk.status();
        let balances = ldk.list_balances();
        let channels = ldk.list_channels();
        Ok(Json(LnInfo {
            node_id: ln.node().node_id().to_string(),
            network: node.chain().network().to_string(),
            alias: ldk.node_alias().map(|a| a.to_string()),
            listening_addresses: ldk
                .listening_addresses()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect(),
            best_block: LnBestBlock {
                height: status.current_best_block.height,
                hash: status.current_best_block.block_hash.to_string(),
            },
            balances: LnBalances {
                onchain_total_sat: balances.total_onchain_balance_sats,
                onchain_spendable_sat: balances.spendable_onchain_balance_sats,
                anchor_reserve_sat: balances.total_anchor_channels_reserve_sats,
                lightning_sat: balances.total_lightning_balance_sats,
            },
            channels: channels.len(),
            usable_channels: channels.iter().filter(|c| c.is_usable).count(),
            connected_peers: ldk.list_peers().iter().filter(|p| p.is_connected).count(),
            root: ln.root().as_str().to_owned(),
            policy_wallet: ln.wallet().map(|w| w.as_str().to_owned()),
        }))
    })
    .await
}

/// `POST /v1/ln/address`: a new address of the node's on-chain wallet, to fund channels.
#[utoipa::path(post, path = "/v1/ln/address", tag = "ln", responses((status = 200, description = "a new on-chain address of the Lightning node's wallet"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn address(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ln = ln(&node, &token)?;
    blocking(move || {
        let address = ln
            .node()
            .node()
            .onchain_payment()
            .new_address()
            .map_err(LightningError::from)?;
        Ok(Json(serde_json::json!({ "address": address.to_string() })))
    })
    .await
}

/// `POST /v1/ln/peers`: connects to a peer.
#[utoipa::path(post, path = "/v1/ln/peers", tag = "ln", request_body = LnConnectRequest, responses((status = 200, description = "connected"), (status = "4XX", description = "problem details (application/problem+json); 400 invalid_peer", body = crate::error::Problem), (status = 502, description = "peer_unreachable", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn connect(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<LnConnectRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, address) = parse_peer(&req.peer)?;
    let ln = ln(&node, &token)?;
    if id == ln.node().node_id() {
        return Err(bad_request("invalid_peer", "that is this node's own id"));
    }
    blocking(move || {
        ln.node()
            .node()
            .connect(id, address.clone(), req.persist)
            .map_err(LightningError::from)?;
        tracing::info!(peer = %id, %address, "Lightning peer connected");
        Ok(Json(serde_json::json!({
            "node_id": id.to_string(),
            "address": address.to_string(),
            "persist": req.persist,
        })))
    })
    .await
}

/// `POST /v1/ln/channels`: opens a channel.
#[utoipa::path(post, path = "/v1/ln/channels", tag = "ln", request_body = LnOpenRequest, responses((status = 201, description = "the open is under way: ln_channel_pending once the funding transaction is made, ln_channel_ready once it confirmed"), (status = "4XX", description = "problem details (application/problem+json); 403 policy_refused for a push the policy refuses", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn open_channel(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<LnOpenRequest>,
) -> Result<Response, ApiError> {
    let (id, address) = parse_peer(&req.peer)?;
    let amount = Amount::from_sat(req.amount_sat);
    if req.amount_sat == 0 || amount > Amount::MAX_MONEY {
        return Err(invalid("invalid_amount", "amount_sat: 1 sat to 21 million BTC"));
    }
    if let Some(push) = req.push_msat {
        if req.amount_sat.checked_mul(1000).is_none_or(|cap| push > cap) {
            return Err(invalid("invalid_amount", "push_msat: at most the channel's capacity"));
        }
    }
    let ln = ln(&node, &token)?;
    if id == ln.node().node_id() {
        return Err(bad_request("invalid_peer", "that is this node's own id"));
    }
    if req.announce && !ln.may_announce() {
        return Err(invalid(
            "cannot_announce",
            "an announced channel needs the node to listen (ln.listen) and have an alias (ln.alias)",
        ));
    }
    blocking(move || {
        let opened = ln
            .node()
            .open_channel(id, address.clone(), req.amount_sat, req.push_msat, req.announce);
        if req.push_msat.is_some_and(|p| p > 0) {
            decided(&node, &ln, &opened);
        }
        let user_channel_id = opened?;
        tracing::info!(peer = %id, %address, amount_sat = req.amount_sat, "Lightning channel opening");
        Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({
                "user_channel_id": user_channel_id.0.to_string(),
                "counterparty_node_id": id.to_string(),
                "amount_sat": req.amount_sat,
                "push_msat": req.push_msat.unwrap_or(0),
                "announce": req.announce,
            })),
        )
            .into_response())
    })
    .await
}

/// `GET /v1/ln/channels`.
#[utoipa::path(get, path = "/v1/ln/channels", tag = "ln", responses((status = 200, description = "every channel", body = Vec<LnChannel>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn channels(Auth(token): ReadAuth, State(node): State<Arc<Node>>) -> Result<Json<Vec<LnChannel>>, ApiError> {
    let ln = ln(&node, &token)?;
    Ok(Json(ln.node().channels().iter().map(LnChannel::from).collect()))
}

/// `POST /v1/ln/channels/{id}/close`.
#[utoipa::path(post, path = "/v1/ln/channels/{id}/close", tag = "ln", params(("id" = String, Path, description = "the channel's user channel id (decimal, from GET /v1/ln/channels)")), request_body = LnCloseRequest, responses((status = 202, description = "the close is under way: ln_channel_closed follows"), (status = "4XX", description = "problem details (application/problem+json); 404 channel_not_found", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn close_channel(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    Id(id): Id,
    Body(req): Body<LnCloseRequest>,
) -> Result<Response, ApiError> {
    let id = user_channel_id(&id)?;
    let ln = ln(&node, &token)?;
    blocking(move || {
        let ldk = ln.node().node();
        let channel = ldk
            .list_channels()
            .into_iter()
            .find(|c| c.user_channel_id == id)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "channel_not_found",
                    format!("no channel {}", id.0),
                )
            })?;
        let peer = channel.counterparty_node_id;
        if req.force {
            ldk.force_close_channel(&id, peer, None)
        } else {
            ldk.close_channel(&id, peer)
        }
        .map_err(LightningError::from)?;
        tracing::info!(channel = %id.0, peer = %peer, force = req.force, "Lightning channel closing");
        Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "user_channel_id": id.0.to_string(),
                "channel_id": hex(&channel.channel_id.0),
                "counterparty_node_id": peer.to_string(),
                "force": req.force,
            })),
        )
            .into_response())
    })
    .await
}

/// `POST /v1/ln/invoices`: a BOLT11 invoice to be paid to this node.
#[utoipa::path(post, path = "/v1/ln/invoices", tag = "ln", request_body = LnInvoiceRequest, responses((status = 201, description = "the invoice; ln_payment_received once paid", body = LnInvoiceMade), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn invoice(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<LnInvoiceRequest>,
) -> Result<Response, ApiError> {
    if let Some(a) = req.amount_msat {
        msat("amount_msat", a)?;
    }
    let expiry_secs = expiry(req.expiry_secs)?;
    let description =
        Description::new(req.description).map_err(|e| invalid("invalid_description", format!("description: {e}")))?;
    let description = Bolt11InvoiceDescription::Direct(description);
    let ln = ln(&node, &token)?;
    blocking(move || {
        let payments = ln.node().node().bolt11_payment();
        let invoice = match req.amount_msat {
            Some(amount) => payments.receive(amount, &description, expiry_secs),
            None => payments.receive_variable_amount(&description, expiry_secs),
        }
        .map_err(LightningError::from)?;
        let expires_at = invoice
            .duration_since_epoch()
            .as_secs()
            .saturating_add(invoice.expiry_time().as_secs());
        Ok((
            StatusCode::CREATED,
            Json(LnInvoiceMade {
                invoice: invoice.to_string(),
                payment_hash: hex(&invoice.payment_hash().to_byte_array()),
                amount_msat: invoice.amount_milli_satoshis(),
                expires_at,
            }),
        )
            .into_response())
    })
    .await
}

/// `POST /v1/ln/offers`: a BOLT12 offer to be paid to this node (any number of times).
#[utoipa::path(post, path = "/v1/ln/offers", tag = "ln", request_body = LnOfferRequest, responses((status = 201, description = "the offer; ln_payment_received for each payment", body = LnOfferMade), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn offer(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<LnOfferRequest>,
) -> Result<Response, ApiError> {
    if let Some(a) = req.amount_msat {
        msat("amount_msat", a)?;
    }
    if let Some(e) = req.expiry_secs {
        expiry(e)?;
    }
    if req.description.len() > 639 || req.description.chars().any(char::is_control) {
        return Err(invalid(
            "invalid_description",
            "description: at most 639 bytes, no control characters",
        ));
    }
    let ln = ln(&node, &token)?;
    blocking(move || {
        let payments = ln.node().node().bolt12_payment();
        let offer = match req.amount_msat {
            Some(amount) => payments.receive(amount, &req.description, req.expiry_secs, None),
            None => payments.receive_variable_amount(&req.description, req.expiry_secs),
        }
        .map_err(LightningError::from)?;
        Ok((
            StatusCode::CREATED,
            Json(LnOfferMade {
                offer: offer.to_string(),
                offer_id: hex(&offer.id().0),
            }),
        )
            .into_response())
    })
    .await
}

/// `POST /v1/ln/payments`: pays an invoice, an offer, or a node by keysend, after the
/// spending policy approved.
#[utoipa::path(post, path = "/v1/ln/payments", tag = "ln", request_body = LnPayRequest, responses((status = 202, description = "the payment is under way: ln_payment_successful or ln_payment_failed follows", body = LnPaymentSent), (status = "4XX", description = "problem details (application/problem+json); 400 invalid_invoice, invalid_offer, invalid_node_id or invalid_payment (nothing sent); 403 policy_refused (nothing sent, the decision audited); 422 unpayable (nothing sent)", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn pay(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<LnPayRequest>,
) -> Result<Response, ApiError> {
    let target = req.target()?;
    let ln = ln(&node, &token)?;
    blocking(move || {
        let paid = match target {
            Target::Invoice(invoice) => ln.node().pay_invoice(&invoice, req.amount_msat, req.max_fee_msat),
            Target::Offer(offer) => {
                ln.node()
                    .pay_offer(&offer, req.amount_msat, req.quantity, req.payer_note, req.max_fee_msat)
            }
            Target::Keysend(to, amount) => ln.node().pay_keysend(to, amount, req.max_fee_msat),
        };
        decided(&node, &ln, &paid);
        let id = paid?;
        tracing::info!(payment = %hex(&id.0), "Lightning payment sent");
        Ok((
            StatusCode::ACCEPTED,
            Json(LnPaymentSent {
                payment_id: hex(&id.0),
                payment: ln.node().node().payment(&id).as_ref().map(LnPayment::from),
            }),
        )
            .into_response())
    })
    .await
}

/// `GET /v1/ln/payments`.
#[utoipa::path(get, path = "/v1/ln/payments", tag = "ln", responses((status = 200, description = "every payment, the latest changed first", body = Vec<LnPayment>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn payments(Auth(token): ReadAuth, State(node): State<Arc<Node>>) -> Result<Json<Vec<LnPayment>>, ApiError> {
    let ln = ln(&node, &token)?;
    let mut all: Vec<LnPayment> = ln.node().node().list_payments().iter().map(LnPayment::from).collect();
    all.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| a.id.cmp(&b.id)));
    Ok(Json(all))
}

/// `GET /v1/ln/payments/{id}`.
#[utoipa::path(get, path = "/v1/ln/payments/{id}", tag = "ln", params(("id" = String, Path, description = "the payment id (hex)")), responses((status = 200, description = "the payment", body = LnPayment), (status = "4XX", description = "problem details (application/problem+json); 404 payment_not_found", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn payment(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    Id(id): Id,
) -> Result<Json<LnPayment>, ApiError> {
    let id = payment_id(&id)?;
    let ln = ln(&node, &token)?;
    let found = ln.node().node().payment(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "payment_not_found",
            format!("no payment {}", hex(&id.0)),
        )
    })?;
    Ok(Json(LnPayment::from(&found)))
}

/// `POST /v1/ln/decode`: what an invoice or offer asks, field by field (nothing is paid; the
/// Lightning node need not run).
#[utoipa::path(post, path = "/v1/ln/decode", tag = "ln", request_body = LnDecodeRequest, responses((status = 200, description = "the invoice's or offer's fields", body = LnDecoded), (status = "4XX", description = "problem details (application/problem+json); 400 invalid_invoice or invalid_offer", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn decode(_: ReadAuth, Body(req): Body<LnDecodeRequest>) -> Result<Json<LnDecoded>, ApiError> {
    let text = req.request.trim();
    let bare = text
        .get(..10)
        .filter(|p| p.eq_ignore_ascii_case("lightning:"))
        .map_or(text, |_| &text[10..]);
    let is_offer = bare.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("lno1"));
    Ok(Json(if is_offer {
        LnDecoded::Bolt12Offer(LnDecodedOffer::from(&parse_offer(text)?))
    } else {
        LnDecoded::Bolt11(LnDecodedInvoice::from(&InvoiceSummary::of(&parse_invoice(text)?)))
    }))
}

/// `GET /v1/ln/policy`.
#[utoipa::path(get, path = "/v1/ln/policy", tag = "ln", responses((status = 200, description = "the rules the payments pass, what counted in the last 24 hours, and the wallet whose policy it is (none: the payments' own)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn get_policy(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ln = ln(&node, &token)?;
    blocking(move || {
        let policy = ln.node().policy();
        let rules = policy.rules().map_err(WalletError::from)?;
        let spent = policy.spent_last_24h().map_err(WalletError::from)?;
        let wallet = ln.wallet().map(|w| w.as_str().to_owned());
        Ok(Json(serde_json::json!({
            "policy": PolicyBody::from_policy(&rules, node.chain().network()),
            "spent_last_24h_sat": spent.to_sat(),
            "wallet": wallet,
            "from_config": wallet.as_deref().is_some_and(|w| node.policy_from_config(w)),
        })))
    })
    .await
}

/// `PUT /v1/ln/policy`: sets the rules the payments pass (those of `ln.wallet` when the
/// payments share its policy: refused with 409 when the configuration file sets them).
#[utoipa::path(put, path = "/v1/ln/policy", tag = "ln", request_body = PolicyBody, responses((status = 200, description = "success", body = PolicyBody), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn set_policy(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(body): Body<PolicyBody>,
) -> Result<Json<PolicyBody>, ApiError> {
    let rules = body
        .to_policy(node.chain().network())
        .map_err(|e| invalid("invalid_policy", e))?;
    let ln = ln(&node, &token)?;
    if let Some(wallet) = ln.wallet().filter(|w| node.policy_from_config(w.as_str())) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_from_config",
            format!("the payments pass the policy of {wallet}, which the configuration file sets; change it there and reload"),
        ));
    }
    blocking(move || {
        ln.node().policy().set_rules(&rules).map_err(WalletError::from)?;
        tracing::info!(wallet = ln.wallet().map(|w| w.as_str()), "Lightning payment policy set");
        Ok(Json(PolicyBody::from_policy(&rules, node.chain().network())))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay(v: serde_json::Value) -> Result<Target, ApiError> {
        serde_json::from_value::<LnPayRequest>(v).expect("parses").target()
    }

    fn code(r: Result<Target, ApiError>) -> (StatusCode, &'static str) {
        let e = r.err().expect("refused");
        (e.status, e.code)
    }

    #[test]
    fn a_payment_names_exactly_one_target() {
        let key = format!(
            "02{}",
            "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
        );
        assert!(matches!(
            pay(serde_json::json!({"keysend": key, "amount_msat": 1000})),
            Ok(Target::Keysend(_, 1000))
        ));
        let bad = (StatusCode::BAD_REQUEST, "invalid_payment");
        assert_eq!(code(pay(serde_json::json!({}))), bad);
        assert_eq!(code(pay(serde_json::json!({"invoice": "lnbc1", "offer": "lno1"}))), bad);
        assert_eq!(code(pay(serde_json::json!({"invoice": "x", "keysend": key}))), bad);
        assert_eq!(code(pay(serde_json::json!({"keysend": key}))), bad);
        assert_eq!(
            code(pay(
                serde_json::json!({"keysend": key, "amount_msat": 1, "quantity": 2})
            )),
            bad
        );
        assert_eq!(
            code(pay(serde_json::json!({"invoice": "lnbc1qqqq"}))),
            (StatusCode::BAD_REQUEST, "invalid_invoice")
        );
        assert_eq!(
            code(pay(serde_json::json!({"offer": "lno1qqqq"}))),
            (StatusCode::BAD_REQUEST, "invalid_offer")
        );
        assert_eq!(
            code(pay(serde_json::json!({"keysend": "02zz", "amount_msat": 1}))),
            (StatusCode::BAD_REQUEST, "invalid_node_id")
        );
        assert_eq!(
            code(pay(serde_json::json!({"keysend": key, "amount_msat": 0}))),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount")
        );
        assert_eq!(
            code(pay(serde_json::json!({"keysend": key, "amount_msat": u64::MAX}))),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount")
        );
        assert!(serde_json::from_value::<LnPayRequest>(serde_json::json!({"invoice": "x", "extra": 1})).is_err());
    }

    #[test]
    fn path_ids_are_checked() {
        assert_eq!(user_channel_id("42").expect("decimal").0, 42);
        assert_eq!(
            user_channel_id(&u128::MAX.to_string()).expect("the largest").0,
            u128::MAX
        );
        for bad in ["", "-1", "0x2a", "k1", "340282366920938463463374607431768211456"] {
            assert_eq!(user_channel_id(bad).expect_err(bad).code, "invalid_channel_id");
        }
        assert_eq!(payment_id(&"ab".repeat(32)).expect("hex").0, [0xab; 32]);
        for bad in ["", "ab", &"ab".repeat(33), &"zz".repeat(32)] {
            assert_eq!(payment_id(bad).expect_err(bad).code, "invalid_payment_id");
        }
    }

    #[test]
    fn a_policy_refusal_is_403_with_its_rules() {
        use anya_bitcoin::policy::{PaymentViolation, Violation};
        let refusal = PaymentViolation {
            payment_hash: [7; 32],
            violations: vec![Violation::AmountOverLimit {
                amount: Amount::from_sat(2000),
                limit: Amount::from_sat(1000),
            }],
        };
        let e = ApiError::from(LightningError::Policy(PolicyError::PaymentRefused(refusal.clone())));
        assert_eq!(
            (e.status, e.code, e.rule),
            (StatusCode::FORBIDDEN, "policy_refused", Some(refusal.code()))
        );
        assert!(e.detail.contains("per-transaction limit"), "{}", e.detail);
        let e = ApiError::from(LightningError::Unpayable("expired".into()));
        assert_eq!((e.status, e.code), (StatusCode::UNPROCESSABLE_ENTITY, "unpayable"));
        let e = ApiError::from(LightningError::Node(LdkError::DuplicatePayment));
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "duplicate_payment"));
    }
}
