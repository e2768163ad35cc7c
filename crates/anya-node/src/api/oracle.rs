//! The DLC oracle's routes (when `oracle.enabled`): kormir's and the p2pderivatives oracle's
//! route families, so that existing DLC clients work unchanged, beside anya's own under
//! `/v1/oracle`. Reads are public; creating and attesting need an admin token (one limited to
//! keys must name the oracle's key). Messages are ddk-messages' JSON (camelCase), as both
//! families serve them.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use anya_layer2::dlc::client::{parse_rfc3339, split_p2pd_event_id};
use anya_layer2::dlc::messages::DigitDecompositionEventDescriptor;
use anya_layer2::dlc::price::PriceError;
use anya_layer2::dlc::schedule::event_id;
use anya_layer2::dlc::{Oracle, OracleError};

use super::{blocking, check_key_access, AdminAuth, Auth, Body, Id, ReadAuth};
use crate::auth::TokenInfo;
use crate::error::ApiError;
use crate::events::Event;
use crate::node::Node;

impl From<OracleError> for ApiError {
    fn from(e: OracleError) -> Self {
        use OracleError as E;
        let (status, code) = match &e {
            E::Hsm(_) | E::Store(_) => {
                return match e {
                    E::Hsm(h) => h.into(),
                    E::Store(s) => s.into(),
                    _ => unreachable!("matched above"),
                }
            }
            E::EventNotFound { .. } => (StatusCode::NOT_FOUND, "event_not_found"),
            E::EventExists { .. } => (StatusCode::CONFLICT, "event_exists"),
            E::AlreadyAttested { .. } => (StatusCode::CONFLICT, "already_attested"),
            E::NotMature { .. } => (StatusCode::CONFLICT, "not_mature"),
            E::InvalidEventId { .. } => (StatusCode::BAD_REQUEST, "invalid_event_id"),
            E::InvalidEvent { .. } | E::Digits(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_event"),
            E::UnknownOutcome { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_outcome"),
            E::WrongEventKind { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_event_kind"),
            E::Price { source, .. } => match source {
                PriceError::CircuitBreaker { .. } => (StatusCode::CONFLICT, "circuit_breaker"),
                PriceError::Spread { .. } => (StatusCode::SERVICE_UNAVAILABLE, "price_spread"),
                PriceError::NotEnoughSources { .. } => (StatusCode::SERVICE_UNAVAILABLE, "price_sources"),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "price_rules"),
            },
            E::Halted { .. } => (StatusCode::CONFLICT, "price_halted"),
            E::NoSources { .. } => (StatusCode::NOT_FOUND, "no_price_sources"),
            _ => return Self::internal(&e),
        };
        Self::new(status, code, e.to_string())
    }
}

fn oracle(node: &Node) -> Result<Arc<Oracle>, ApiError> {
    node.oracle().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "oracle_disabled",
            "this node does not serve an oracle (oracle.enabled = false)",
        )
    })
}

/// Runs `f` on the oracle off the async workers.
async fn with_oracle<T: Send + 'static>(
    node: Arc<Node>,
    f: impl FnOnce(&Node, &Oracle) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let o = oracle(&node)?;
    blocking(move || f(&node, &o)).await
}

/// An admin token that may use the oracle's key.
fn check_oracle_key(token: &TokenInfo, node: &Node) -> Result<(), ApiError> {
    let o = oracle(node)?;
    check_key_access(token, o.key_id().as_str())
}

fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    Ok(Json(serde_json::to_value(value).map_err(ApiError::internal)?).into_response())
}

// ---- kormir ------------------------------------------------------------------------------------

/// `GET /pubkey`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KormirPubkey {
    /// The oracle's BIP340 public key (hex).
    pub pubkey: String,
}

#[utoipa::path(get, path = "/pubkey", tag = "oracle", responses((status = 200, description = "the oracle's public key", body = KormirPubkey), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
pub async fn pubkey(State(node): State<Arc<Node>>) -> Result<Json<KormirPubkey>, ApiError> {
    let o = oracle(&node)?;
    Ok(Json(KormirPubkey {
        pubkey: o.public_key().to_string(),
    }))
}

/// `GET /list-events`: every event with its announcement and attestation.
#[utoipa::path(get, path = "/list-events", tag = "oracle", responses((status = 200, description = "[{announcement, attestation}] (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
pub async fn list_events(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    with_oracle(node, |_, o| {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = o.events(after.as_deref(), 500)?;
            let Some(last) = page.last() else { break };
            after = Some(last.event_id.clone());
            for e in &page {
                out.push(serde_json::json!({
                    "announcement": o.announcement(&e.event_id)?,
                    "attestation": o.attestation(&e.event_id)?,
                }));
            }
        }
        json(&out)
    })
    .await
}

#[utoipa::path(get, path = "/announcement/{id}", tag = "oracle", params(("id" = String, Path, description = "the event id")), responses((status = 200, description = "the oracle_announcement (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
pub async fn announcement(State(node): State<Arc<Node>>, Id(id): Id) -> Result<Response, ApiError> {
    with_oracle(node, move |_, o| json(&o.announcement(&id)?)).await
}

fn not_attested(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_attested",
        format!("event {id:?} is not attested yet"),
    )
}

#[utoipa::path(get, path = "/attestation/{id}", tag = "oracle", params(("id" = String, Path, description = "the event id")), responses((status = 200, description = "the oracle_attestation (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json); 404 not_attested before it is", body = crate::error::Problem)))]
pub async fn attestation(State(node): State<Arc<Node>>, Id(id): Id) -> Result<Response, ApiError> {
    with_oracle(node, move |_, o| match o.attestation(&id)? {
        Some(a) => json(&a),
        None => Err(not_attested(&id)),
    })
    .await
}

/// `POST /create-enum`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnum {
    /// The event id (1 to 256 bytes, printable, no `/`).
    pub event_id: String,
    /// The outcomes.
    pub outcomes: Vec<String>,
    /// When it matures (unix seconds).
    pub event_maturity_epoch: u32,
}

#[utoipa::path(post, path = "/create-enum", tag = "oracle", request_body = CreateEnum, responses((status = 200, description = "the oracle_announcement (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn create_enum(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<CreateEnum>,
) -> Result<Response, ApiError> {
    check_oracle_key(&token, &node)?;
    with_oracle(node, move |node, o| {
        let ann = o.create_enum_event(&req.event_id, req.event_maturity_epoch, req.outcomes)?;
        announced(node, &ann.oracle_event.event_id, req.event_maturity_epoch);
        json(&ann)
    })
    .await
}

/// `POST /create-numeric` (kormir's defaults: base 2, 18 digits, unsigned, precision 0).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNumeric {
    /// The event id.
    pub event_id: String,
    /// Number of digits (default 18).
    #[serde(default)]
    pub num_digits: Option<u16>,
    /// Whether the value has a sign (default false).
    #[serde(default)]
    pub is_signed: Option<bool>,
    /// Power of ten of one unit (default 0).
    #[serde(default)]
    pub precision: Option<i32>,
    /// The unit.
    pub unit: String,
    /// When it matures (unix seconds).
    pub event_maturity_epoch: u32,
    /// The digit base (an anya extension; default 2).
    #[serde(default)]
    pub base: Option<u16>,
}

#[utoipa::path(post, path = "/create-numeric", tag = "oracle", request_body = CreateNumeric, responses((status = 200, description = "the oracle_announcement (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn create_numeric(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<CreateNumeric>,
) -> Result<Response, ApiError> {
    check_oracle_key(&token, &node)?;
    with_oracle(node, move |node, o| {
        let descriptor = DigitDecompositionEventDescriptor {
            base: req.base.unwrap_or(2),
            is_signed: req.is_signed.unwrap_or(false),
            unit: req.unit,
            precision: req.precision.unwrap_or(0),
            nb_digits: req.num_digits.unwrap_or(18),
        };
        let ann = o.create_numeric_event(&req.event_id, req.event_maturity_epoch, descriptor)?;
        announced(node, &req.event_id, req.event_maturity_epoch);
        json(&ann)
    })
    .await
}

/// `POST /sign-enum`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignEnum {
    /// The event id.
    pub event_id: String,
    /// The outcome.
    pub outcome: String,
}

#[utoipa::path(post, path = "/sign-enum", tag = "oracle", request_body = SignEnum, responses((status = 200, description = "the oracle_attestation (ddk-messages JSON); the same again for the same outcome"), (status = "4XX", description = "problem details (application/problem+json); 409 already_attested for another outcome", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn sign_enum(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<SignEnum>,
) -> Result<Response, ApiError> {
    check_oracle_key(&token, &node)?;
    with_oracle(node, move |node, o| {
        let att = o.attest_enum(&req.event_id, &req.outcome);
        attested(node, &req.event_id, att)
    })
    .await
}

/// `POST /sign-numeric`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignNumeric {
    /// The event id.
    pub event_id: String,
    /// The value (clamped to what the digits hold).
    pub outcome: i64,
}

#[utoipa::path(post, path = "/sign-numeric", tag = "oracle", request_body = SignNumeric, responses((status = 200, description = "the oracle_attestation (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json); 409 already_attested for another value", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn sign_numeric(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<SignNumeric>,
) -> Result<Response, ApiError> {
    check_oracle_key(&token, &node)?;
    with_oracle(node, move |node, o| {
        let att = o.attest_numeric(&req.event_id, req.outcome);
        attested(node, &req.event_id, att)
    })
    .await
}

fn announced(node: &Node, event_id: &str, maturity: u32) {
    node.audit_changed();
    node.events().publish(Event::OracleAnnounced {
        event_id: event_id.to_owned(),
        maturity,
    });
}

fn attested(
    node: &Node,
    event_id: &str,
    result: Result<anya_layer2::dlc::messages::OracleAttestation, OracleError>,
) -> Result<Response, ApiError> {
    node.audit_changed();
    match result {
        Ok(att) => {
            let body = json(&att);
            node.publish_attested(att);
            body
        }
        Err(e) => {
            node.publish_refused(event_id, &e);
            Err(e.into())
        }
    }
}

// ---- p2pderivatives ----------------------------------------------------------------------------

/// `GET /oracle/publickey`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct P2pdPubkey {
    /// The oracle's BIP340 public key (hex).
    pub public_key: String,
}

#[utoipa::path(get, path = "/oracle/publickey", tag = "oracle", responses((status = 200, description = "the oracle's public key", body = P2pdPubkey), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
pub async fn p2pd_pubkey(State(node): State<Arc<Node>>) -> Result<Json<P2pdPubkey>, ApiError> {
    let o = oracle(&node)?;
    Ok(Json(P2pdPubkey {
        public_key: o.public_key().to_string(),
    }))
}

#[utoipa::path(get, path = "/asset", tag = "oracle", responses((status = 200, description = "the configured price assets", body = Vec<String>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
pub async fn p2pd_assets(State(node): State<Arc<Node>>) -> Result<Json<Vec<String>>, ApiError> {
    oracle(&node)?;
    Ok(Json(node.config().oracle.assets.keys().cloned().collect()))
}

/// The event id of `/asset/{asset}/…/{time}`: the asset followed by the unix time.
fn p2pd_id(asset: &str, time: &str) -> Result<String, ApiError> {
    let secs = parse_rfc3339(time)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| ApiError::bad_request(format!("{time:?} is not an RFC 3339 time (2021-06-29T05:10:00Z)")))?;
    let id = event_id(asset, secs);
    // The id must split back into this asset (an asset ending in digits would not).
    match split_p2pd_event_id(&id) {
        Ok((a, _)) if a == asset => Ok(id),
        _ => Err(ApiError::bad_request(format!("{asset:?} is not an asset name"))),
    }
}

#[utoipa::path(get, path = "/asset/{asset}/announcement/{time}", tag = "oracle", params(("asset" = String, Path, description = "the asset"), ("time" = String, Path, description = "the maturity, RFC 3339")), responses((status = 200, description = "the oracle_announcement (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
pub async fn p2pd_announcement(
    State(node): State<Arc<Node>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((asset, time)) = path?;
    let id = p2pd_id(&asset, &time)?;
    with_oracle(node, move |_, o| json(&o.announcement(&id)?)).await
}

/// `GET /asset/{asset}/attestation/{time}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct P2pdAttestation {
    /// The event id.
    pub event_id: String,
    /// The signatures (hex), one per nonce.
    pub signatures: Vec<String>,
    /// The outcomes signed.
    pub values: Vec<String>,
}

#[utoipa::path(get, path = "/asset/{asset}/attestation/{time}", tag = "oracle", params(("asset" = String, Path, description = "the asset"), ("time" = String, Path, description = "the maturity, RFC 3339")), responses((status = 200, description = "the attestation", body = P2pdAttestation), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
pub async fn p2pd_attestation(
    State(node): State<Arc<Node>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<P2pdAttestation>, ApiError> {
    let Path((asset, time)) = path?;
    let id = p2pd_id(&asset, &time)?;
    with_oracle(node, move |_, o| match o.attestation(&id)? {
        Some(a) => Ok(Json(P2pdAttestation {
            event_id: a.event_id,
            signatures: a.signatures.iter().map(ToString::to_string).collect(),
            values: a.outcomes,
        })),
        None => Err(not_attested(&id)),
    })
    .await
}

// ---- anya --------------------------------------------------------------------------------------

/// `GET /v1/oracle/events` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events with ids after this one.
    #[serde(default)]
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/oracle/events", tag = "oracle", params(EventsQuery), responses((status = 200, description = "events in id order: id, maturity, kind, asset, attested outcomes"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn events(
    _: ReadAuth,
    State(node): State<Arc<Node>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    with_oracle(node, move |_, o| json(&o.events(q.after.as_deref(), limit)?)).await
}

/// `GET /v1/oracle/assets/{asset}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssetView {
    /// The asset.
    pub asset: String,
    /// The value that tripped the circuit breaker, while attestation is halted.
    pub halted_at: Option<f64>,
}

#[utoipa::path(get, path = "/v1/oracle/assets/{asset}", tag = "oracle", params(("asset" = String, Path, description = "the asset")), responses((status = 200, description = "whether the circuit breaker halted it", body = AssetView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn asset(_: ReadAuth, State(node): State<Arc<Node>>, Id(asset): Id) -> Result<Json<AssetView>, ApiError> {
    if !node.config().oracle.assets.contains_key(&asset) {
        return Err(ApiError::not_found(format!("no asset {asset:?}")));
    }
    with_oracle(node, move |_, o| {
        Ok(Json(AssetView {
            halted_at: o.halted(&asset)?,
            asset,
        }))
    })
    .await
}

/// `POST /v1/oracle/assets/{asset}/confirm`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmPrice {
    /// The price the admin confirms; the next move is measured from it.
    pub value: f64,
}

#[utoipa::path(post, path = "/v1/oracle/assets/{asset}/confirm", tag = "oracle", params(("asset" = String, Path, description = "the asset")), request_body = ConfirmPrice, responses((status = 200, description = "attestation resumes", body = AssetView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn confirm(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Id(asset): Id,
    Body(req): Body<ConfirmPrice>,
) -> Result<Json<AssetView>, ApiError> {
    check_oracle_key(&token, &node)?;
    if !node.config().oracle.assets.contains_key(&asset) {
        return Err(ApiError::not_found(format!("no asset {asset:?}")));
    }
    with_oracle(node, move |node, o| {
        o.confirm_price(&asset, req.value)?;
        node.audit_changed();
        tracing::warn!(%asset, value = req.value, "circuit breaker: price confirmed by an admin");
        Ok(Json(AssetView {
            halted_at: o.halted(&asset)?,
            asset,
        }))
    })
    .await
}

#[utoipa::path(post, path = "/v1/oracle/events/{id}/attest-price", tag = "oracle", params(("id" = String, Path, description = "the price event id")), responses((status = 200, description = "the oracle_attestation (ddk-messages JSON)"), (status = "4XX", description = "problem details (application/problem+json): price_sources, price_spread, circuit_breaker, price_halted, not_mature", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn attest_price(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    check_oracle_key(&token, &node)?;
    with_oracle(node, move |node, o| {
        let att = o.attest_price(&id);
        attested(node, &id, att)
    })
    .await
}
