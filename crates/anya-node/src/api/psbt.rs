//! PSBT routes that need no wallet: inspect, combine, finalize (with Core's verification).

use std::sync::Arc;

use anya_bitcoin::psbt::{self as p, KeyOrigin, PsbtInfo};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bitcoin::Amount;
use serde::Deserialize;

use super::wallets::PsbtBody;
use super::{blocking, Body, ReadAuth};
use crate::error::ApiError;
use crate::node::Node;

fn origins(keys: &[KeyOrigin]) -> Vec<String> {
    keys.iter().map(ToString::to_string).collect()
}

fn info_json(info: &PsbtInfo) -> serde_json::Value {
    let sat = |a: Option<Amount>| a.map(Amount::to_sat);
    serde_json::json!({
        "txid": info.txid.to_string(),
        "version": info.version,
        "lock_time": info.lock_time.to_consensus_u32(),
        "inputs": info.inputs.iter().map(|i| serde_json::json!({
            "outpoint": i.outpoint.to_string(),
            "value_sat": i.prevout.as_ref().map(|o| o.value.to_sat()),
            "address": i.address.as_ref().map(ToString::to_string),
            "script_type": i.script_type.to_string(),
            "sequence": i.sequence.to_consensus_u32(),
            "rbf": i.rbf,
            "finalized": i.finalized,
            "keys": origins(&i.keys),
            "partial_sigs": i.partial_sigs,
            "tap_key_sig": i.tap_key_sig,
            "tap_script_sigs": i.tap_script_sigs,
        })).collect::<Vec<_>>(),
        "outputs": info.outputs.iter().map(|o| serde_json::json!({
            "value_sat": o.value.to_sat(),
            "address": o.address.as_ref().map(ToString::to_string),
            "script_type": o.script_type.to_string(),
            "keys": origins(&o.keys),
            "looks_like_change": o.looks_like_change(),
        })).collect::<Vec<_>>(),
        "input_value_sat": sat(info.input_value),
        "output_value_sat": info.output_value.to_sat(),
        "fee_sat": sat(info.fee),
        "unsigned_vsize": info.unsigned_vsize,
        "fee_rate_sat_vb_at_most": info.fee_rate.map(|r| r.to_sat_per_vb_ceil()),
        "finalized": info.is_finalized(),
    })
}

/// `POST /v1/psbt/inspect`: what a PSBT does, after every hostile-input check.
#[utoipa::path(post, path = "/v1/psbt/inspect", tag = "psbt", request_body = PsbtBody, responses((status = 200, description = "inputs, outputs, amounts, fee and key origins"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn inspect(
    _: ReadAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<PsbtBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let network = node.chain().network();
    blocking(move || {
        let psbt = p::decode(req.psbt.as_bytes())?;
        let info = p::try_inspect(&psbt, network)?;
        Ok(Json(info_json(&info)))
    })
    .await
}

/// `POST /v1/psbt/combine`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CombineBody {
    /// Two to sixteen PSBTs of one unsigned transaction, base64 or hex.
    pub psbts: Vec<String>,
}

/// `POST /v1/psbt/combine`: the BIP174 combiner.
#[utoipa::path(post, path = "/v1/psbt/combine", tag = "psbt", request_body = CombineBody, responses((status = 200, description = "the combined PSBT"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn combine(_: ReadAuth, Body(req): Body<CombineBody>) -> Result<Json<serde_json::Value>, ApiError> {
    if !(2..=16).contains(&req.psbts.len()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_psbts",
            "combine takes 2 to 16 PSBTs",
        ));
    }
    blocking(move || {
        let mut psbts = req.psbts.iter().map(|s| p::decode(s.as_bytes()));
        let first = psbts.next().ok_or_else(|| ApiError::bad_request("no PSBT"))??;
        let combined = psbts.try_fold(first, |acc, next| p::combine(acc, next?))?;
        Ok(Json(serde_json::json!({ "psbt": p::encode_base64(&combined) })))
    })
    .await
}

/// `POST /v1/psbt/finalize`: the BIP174 finalizer and extractor; the transaction is returned
/// only after Core's script interpreter verified every input.
#[utoipa::path(post, path = "/v1/psbt/finalize", tag = "psbt", request_body = PsbtBody, responses((status = 200, description = "the finalized PSBT and the verified transaction"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn finalize(_: ReadAuth, Body(req): Body<PsbtBody>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let mut psbt = p::decode(req.psbt.as_bytes())?;
        p::finalize(&mut psbt)?;
        let tx = p::extract_verified(&psbt)?;
        Ok(Json(serde_json::json!({
            "psbt": p::encode_base64(&psbt),
            "txid": tx.compute_txid().to_string(),
            "tx_hex": bitcoin::consensus::encode::serialize_hex(&tx),
        })))
    })
    .await
}
