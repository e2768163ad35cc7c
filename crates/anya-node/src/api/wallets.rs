//! Wallet routes: create, list, show, addresses, balance, sync, history, send, bump-fee,
//! policy, and PSBTs built and signed through the wallet's policy.

use std::sync::Arc;

use anya_bitcoin::policy::PolicyError;
use anya_bitcoin::wallet::{AnyaWallet, Template, WalletError};
use anya_core_types::Label;
use anya_hsm::KeySpec;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitcoin::{Address, Amount, FeeRate, Network, ScriptBuf, Txid};
use serde::{Deserialize, Serialize};

use super::{blocking, label, AdminAuth, Auth, Body, ReadAuth, SignAuth};
use crate::auth::TokenInfo;
use crate::config::PolicyBody;
use crate::error::ApiError;
use crate::events::Event;
use crate::node::Node;
use crate::wallets::{confirmed_height, lock, WalletHandle};

/// The `{name}` of a wallet route, checked against the token.
#[derive(Debug)]
pub struct WalletName(pub Label);

impl axum::extract::FromRequestParts<Arc<Node>> for WalletName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &Arc<Node>) -> Result<Self, ApiError> {
        let axum::extract::Path(name) = axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Ok(WalletName(label(&name)?))
    }
}

fn check_wallet(token: &TokenInfo, name: &Label) -> Result<(), ApiError> {
    if token.may_use_wallet(name.as_str()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("the token may not use wallet {name}")))
    }
}

fn open(node: &Node, name: &Label) -> Result<WalletHandle, ApiError> {
    Ok(node.wallets().get(name)?)
}

/// Runs `f` on the wallet `name`, which the token must be allowed to use, on the blocking pool
/// and under the wallet's lock.
async fn with_wallet<T: Send + 'static>(
    node: Arc<Node>,
    token: &TokenInfo,
    name: Label,
    f: impl FnOnce(&Node, &mut AnyaWallet) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    check_wallet(token, &name)?;
    blocking(move || {
        let handle = open(&node, &name)?;
        let mut wallet = lock(&handle);
        f(&node, &mut wallet)
    })
    .await
}

/// A fee rate in sat/vB.
fn fee_rate(sat_vb: u64) -> Result<FeeRate, ApiError> {
    FeeRate::from_sat_per_vb(sat_vb)
        .filter(|_| (1..=100_000).contains(&sat_vb))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_fee_rate",
                format!("fee_rate_sat_vb {sat_vb}: 1 to 100000"),
            )
        })
}

fn parse_address(s: &str, network: Network) -> Result<ScriptBuf, ApiError> {
    s.parse::<Address<_>>()
        .and_then(|a| a.require_network(network))
        .map(|a| a.script_pubkey())
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_address",
                format!("{s}: {e} (this node serves {network})"),
            )
        })
}

fn amount(sat: u64) -> Result<Amount, ApiError> {
    let a = Amount::from_sat(sat);
    if sat == 0 || a > Amount::MAX_MONEY {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            format!("{sat} sat: 1 sat to 21 million BTC"),
        ));
    }
    Ok(a)
}

/// A wallet's balance in satoshis.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceView {
    /// Confirmed and mature.
    pub confirmed_sat: u64,
    /// Unconfirmed from the wallet itself (change).
    pub trusted_pending_sat: u64,
    /// Unconfirmed from others.
    pub untrusted_pending_sat: u64,
    /// Coinbase outputs not yet mature.
    pub immature_sat: u64,
    /// What can be spent now (confirmed plus trusted pending).
    pub spendable_sat: u64,
}

fn balance_view(node: &Node, wallet: &AnyaWallet) -> BalanceView {
    let b = wallet.balance();
    node.metrics()
        .wallet(wallet.name().as_str(), &b, wallet.bdk().latest_checkpoint().height());
    BalanceView {
        confirmed_sat: b.confirmed.to_sat(),
        trusted_pending_sat: b.trusted_pending.to_sat(),
        untrusted_pending_sat: b.untrusted_pending.to_sat(),
        immature_sat: b.immature.to_sat(),
        spendable_sat: b.trusted_spendable().to_sat(),
    }
}

/// A wallet as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WalletView {
    /// Its name.
    pub name: String,
    /// Its network.
    pub network: String,
    /// The receive descriptor (public keys only).
    pub descriptor: String,
    /// The height of the last block it synced.
    pub synced_height: u32,
    /// Its balance.
    pub balance: BalanceView,
    /// Whether its policy comes from the configuration file.
    pub policy_from_config: bool,
}

fn wallet_view(node: &Node, wallet: &AnyaWallet) -> WalletView {
    WalletView {
        name: wallet.name().as_str().to_owned(),
        network: wallet.network().to_string(),
        descriptor: wallet
            .bdk()
            .public_descriptor(bdk_wallet::KeychainKind::External)
            .to_string(),
        synced_height: wallet.bdk().latest_checkpoint().height(),
        balance: balance_view(node, wallet),
        policy_from_config: node.policy_from_config(wallet.name().as_str()),
    }
}

/// `GET /v1/wallets`.
#[utoipa::path(get, path = "/v1/wallets", tag = "wallets", responses((status = 200, description = "success", body = Vec<String>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn list(Auth(token): ReadAuth, State(node): State<Arc<Node>>) -> Result<Json<Vec<String>>, ApiError> {
    blocking(move || {
        Ok(Json(
            node.wallets()
                .list()?
                .into_iter()
                .filter(|w| token.may_use_wallet(w.as_str()))
                .map(|w| w.as_str().to_owned())
                .collect(),
        ))
    })
    .await
}

/// `POST /v1/wallets`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWallet {
    /// Its name (a label).
    pub name: String,
    /// `bip84` (P2WPKH) or `bip86` (Taproot key path).
    pub template: String,
    /// The BIP32 root key in the HSM (created as a `bip32` key if it does not exist).
    pub root: String,
    /// The account number (default 0).
    #[serde(default)]
    pub account: u32,
    /// The wallet funds DLC contracts (`[dlc] wallet`): its root must allow DLC contract keys.
    /// A root made now is made so (the usage `ExportDlcChild`, see
    /// docs/adr/0006-dlc-contract-keys.md); an existing root without it is refused (409
    /// `root_not_dlc`: a key's usages are fixed when it is made). Default no.
    #[serde(default)]
    pub dlc: bool,
    /// The wallet's root also seeds the Lightning node (`[ln] root`): a root made now allows
    /// Lightning node seeds (the usage `DeriveNodeSeed`, a BIP85 derivation apart from the
    /// wallet's keys); an existing root without it is refused (409 `root_not_ln`). Default no.
    #[serde(default)]
    pub ln: bool,
}

/// `POST /v1/wallets`.
#[utoipa::path(post, path = "/v1/wallets", tag = "wallets", request_body = CreateWallet, responses((status = 201, description = "success", body = WalletView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn create(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<CreateWallet>,
) -> Result<Response, ApiError> {
    let name = label(&req.name)?;
    let root = label(&req.root)?;
    check_wallet(&token, &name)?;
    if !token.may_use_key(root.as_str()) {
        return Err(ApiError::forbidden(format!("the token may not use key {root}")));
    }
    if req.account >= 1 << 31 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_account",
            "account must be below 2^31",
        ));
    }
    let template = match req.template.as_str() {
        "bip84" => Template::Bip84 {
            root: root.clone(),
            account: req.account,
        },
        "bip86" => Template::Bip86 {
            root: root.clone(),
            account: req.account,
        },
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_template",
                format!("unknown template {other:?}: bip84 or bip86"),
            ))
        }
    };
    blocking(move || {
        // Refuse a taken name before making its root key: a refused request leaves no key behind.
        if node.wallets().list()?.contains(&name) {
            return Err(WalletError::AlreadyExists { name }.into());
        }
        match node.hsm().key_info(&root) {
            Ok(info) if req.dlc && !info.policy.allowed.contains(anya_hsm::Usage::ExportDlcChild) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "root_not_dlc",
                    format!(
                        "the root key {root} was made without DLC contract keys (a key's usages are fixed when it is made): name a new root"
                    ),
                ));
            }
            Ok(info) if req.ln && !info.policy.allowed.contains(anya_hsm::Usage::DeriveNodeSeed) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "root_not_ln",
                    format!(
                        "the root key {root} was made without Lightning node seeds (a key's usages are fixed when it is made): name a new root"
                    ),
                ));
            }
            _ => {}
        }
        if let Err(anya_hsm::HsmError::KeyNotFound { .. }) = node.hsm().key_info(&root) {
            let policy = super::root_policy(req.dlc, req.ln);
            node.metrics().hsm("generate_key", || {
                node.hsm().generate_key(&root, KeySpec::Bip32Root, policy)
            })?;
            node.events().publish(Event::KeyCreated {
                id: root.as_str().to_owned(),
                spec: "bip32".to_owned(),
            });
        }
        let handle = node.wallets().create(name.clone(), &template)?;
        tracing::info!(wallet = %name, template = %req.template, root = %root, "wallet created");
        node.on_wallet_created(&name)?;
        node.audit_changed();
        let mut wallet = lock(&handle);
        node.wallets().sync(&mut wallet)?;
        Ok((StatusCode::CREATED, Json(wallet_view(&node, &wallet))).into_response())
    })
    .await
}

/// `GET /v1/wallets/{name}`.
#[utoipa::path(get, path = "/v1/wallets/{name}", tag = "wallets", params(("name" = String, Path, description = "the wallet name")), responses((status = 200, description = "success", body = WalletView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn show(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
) -> Result<Json<WalletView>, ApiError> {
    with_wallet(node, &token, name, |node, wallet| Ok(Json(wallet_view(node, wallet)))).await
}

/// `POST /v1/wallets/{name}/address`: the next unused receive address.
#[utoipa::path(post, path = "/v1/wallets/{name}/address", tag = "wallets", params(("name" = String, Path, description = "the wallet name")), responses((status = 200, description = "the next unused receive address and its index"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn address_route(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
) -> Result<Json<serde_json::Value>, ApiError> {
    with_wallet(node, &token, name, |_, wallet| {
        let info = wallet.next_address()?;
        Ok(Json(serde_json::json!({
            "address": info.address.to_string(),
            "index": info.index,
        })))
    })
    .await
}

/// `GET /v1/wallets/{name}/balance`.
#[utoipa::path(get, path = "/v1/wallets/{name}/balance", tag = "wallets", params(("name" = String, Path, description = "the wallet name")), responses((status = 200, description = "success", body = BalanceView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn balance(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
) -> Result<Json<BalanceView>, ApiError> {
    with_wallet(node, &token, name, |node, wallet| Ok(Json(balance_view(node, wallet)))).await
}

/// `POST /v1/wallets/{name}/sync`.
#[utoipa::path(post, path = "/v1/wallets/{name}/sync", tag = "wallets", params(("name" = String, Path, description = "the wallet name")), responses((status = 200, description = "blocks applied, the height, mempool transactions and the balance"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn sync(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
) -> Result<Json<serde_json::Value>, ApiError> {
    with_wallet(node, &token, name, |node, wallet| {
        let synced = node.wallets().sync(wallet)?;
        Ok(Json(serde_json::json!({
            "blocks": synced.blocks,
            "height": synced.height,
            "mempool_txs": synced.mempool_txs,
            "balance": balance_view(node, wallet),
        })))
    })
    .await
}

/// One transaction of a wallet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TxView {
    /// Its id.
    pub txid: String,
    /// The block height it confirmed at; none while unconfirmed.
    pub confirmed_height: Option<u32>,
    /// What it sent from the wallet (satoshis).
    pub sent_sat: u64,
    /// What it paid to the wallet (satoshis).
    pub received_sat: u64,
    /// Its fee, when the wallet knows every output it spends.
    pub fee_sat: Option<u64>,
}

/// `GET /v1/wallets/{name}/transactions`: newest first.
#[utoipa::path(get, path = "/v1/wallets/{name}/transactions", tag = "wallets", params(("name" = String, Path, description = "the wallet name")), responses((status = 200, description = "success", body = Vec<TxView>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn transactions(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
) -> Result<Json<Vec<TxView>>, ApiError> {
    with_wallet(node, &token, name, |_, wallet| {
        let bdk = wallet.bdk();
        let mut txs: Vec<TxView> = bdk
            .transactions()
            .map(|tx| {
                let (sent, received) = bdk.sent_and_received(&tx.tx_node.tx);
                TxView {
                    txid: tx.tx_node.txid.to_string(),
                    confirmed_height: confirmed_height(&tx.chain_position),
                    sent_sat: sent.to_sat(),
                    received_sat: received.to_sat(),
                    fee_sat: bdk.calculate_fee(&tx.tx_node.tx).ok().map(Amount::to_sat),
                }
            })
            .collect();
        txs.sort_by_key(|t| std::cmp::Reverse(t.confirmed_height.unwrap_or(u32::MAX)));
        Ok(Json(txs))
    })
    .await
}

/// A payment.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// Its address, on the node's network.
    pub address: String,
    /// How much, in satoshis.
    pub amount_sat: u64,
}

/// `POST /v1/wallets/{name}/send` and `POST /v1/wallets/{name}/psbt`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Who to pay (1 to 1000).
    pub recipients: Vec<Recipient>,
    /// The fee rate, sat/vB.
    pub fee_rate_sat_vb: u64,
}

fn recipients(req: &SendRequest, network: Network) -> Result<Vec<(ScriptBuf, Amount)>, ApiError> {
    if req.recipients.is_empty() || req.recipients.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_recipients",
            "1 to 1000 recipients",
        ));
    }
    req.recipients
        .iter()
        .map(|r| Ok((parse_address(&r.address, network)?, amount(r.amount_sat)?)))
        .collect()
}

/// A sent transaction.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sent {
    /// Its id.
    pub txid: String,
    /// Its fee in satoshis.
    pub fee_sat: u64,
    /// The raw transaction, hex.
    pub tx_hex: String,
}

/// Publishes a spending policy's verdict: approved, or refused with the rules' code and the
/// reason (counted in the metrics under `label`); a `policy_decision` event when the policy is
/// `wallet`'s.
pub(super) fn publish_decision(node: &Node, wallet: Option<&str>, label: &str, refusal: Option<(u16, String)>) {
    if let Some((code, _)) = &refusal {
        node.metrics().refusal(label, *code);
    }
    let Some(wallet) = wallet else { return };
    node.events().publish(match refusal {
        None => Event::PolicyDecision {
            wallet: wallet.to_owned(),
            approved: true,
            violations: Vec::new(),
            detail: "approved".to_owned(),
        },
        Some((code, detail)) => Event::PolicyDecision {
            wallet: wallet.to_owned(),
            approved: false,
            violations: vec![code],
            detail,
        },
    });
}

/// Publishes the policy's verdict on a signing attempt and passes its result on.
fn decided<T>(node: &Node, wallet: &str, result: Result<T, WalletError>) -> Result<T, ApiError> {
    match &result {
        Ok(_) => publish_decision(node, Some(wallet), wallet, None),
        Err(WalletError::Policy(PolicyError::Refused(v))) => {
            publish_decision(node, Some(wallet), wallet, Some((v.code(), v.to_string())));
        }
        Err(_) => {}
    }
    node.audit_changed();
    Ok(result?)
}

/// Signs `psbt` through the wallet's policy, finalizes it with Core's verification and
/// broadcasts it: the transaction, its id and its fee in satoshis.
fn sign_and_broadcast(
    node: &Node,
    wallet: &mut AnyaWallet,
    psbt: &mut bitcoin::Psbt,
) -> Result<(bitcoin::Transaction, Txid, u64), ApiError> {
    let signed = node.metrics().hsm("sign_transaction", || wallet.sign(psbt));
    decided(node, wallet.name().as_str(), signed)?;
    let tx = wallet.finalize(psbt)?;
    let fee = wallet.bdk().calculate_fee(&tx).map_or(0, Amount::to_sat);
    let txid = node.wallets().broadcast(wallet, &tx)?;
    Ok((tx, txid, fee))
}

/// `POST /v1/wallets/{name}/send`: builds, checks against the policy, signs, verifies with
/// Core's interpreter and broadcasts. A refused broadcast releases the policy's reservation.
#[utoipa::path(post, path = "/v1/wallets/{name}/send", tag = "wallets", params(("name" = String, Path, description = "the wallet name")), request_body = SendRequest, responses((status = 200, description = "success", body = Sent), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn send(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
    Body(req): Body<SendRequest>,
) -> Result<Json<Sent>, ApiError> {
    let rate = fee_rate(req.fee_rate_sat_vb)?;
    let to = recipients(&req, node.chain().network())?;
    with_wallet(node, &token, name, move |node, wallet| {
        let mut psbt = wallet.build(&to, rate)?;
        let (tx, txid, fee) = sign_and_broadcast(node, wallet, &mut psbt)?;
        tracing::info!(wallet = %wallet.name(), %txid, fee_sat = fee, "sent");
        Ok(Json(Sent {
            txid: txid.to_string(),
            fee_sat: fee,
            tx_hex: bitcoin::consensus::encode::serialize_hex(&tx),
        }))
    })
    .await
}

/// `POST /v1/wallets/{name}/bump-fee`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BumpRequest {
    /// The unconfirmed transaction to replace.
    pub txid: String,
    /// The new fee rate, sat/vB.
    pub fee_rate_sat_vb: u64,
}

/// `POST /v1/wallets/{name}/bump-fee`: a BIP125 replacement, through the policy.
#[utoipa::path(post, path = "/v1/wallets/{name}/bump-fee", tag = "wallets", params(("name" = String, Path, description = "the wallet name")), request_body = BumpRequest, responses((status = 200, description = "the replacement's txid, fee and raw transaction"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn bump_fee(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
    Body(req): Body<BumpRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rate = fee_rate(req.fee_rate_sat_vb)?;
    let txid: Txid = req
        .txid
        .parse()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_txid", format!("{e}")))?;
    with_wallet(node, &token, name, move |node, wallet| {
        let mut psbt = wallet.bump_fee(txid, rate)?;
        let (tx, new, fee) = sign_and_broadcast(node, wallet, &mut psbt)?;
        tracing::info!(wallet = %wallet.name(), txid = %new, replaces = %txid, fee_sat = fee, "fee bumped");
        Ok(Json(serde_json::json!({
            "txid": new.to_string(),
            "replaces": txid.to_string(),
            "fee_sat": fee,
            "tx_hex": bitcoin::consensus::encode::serialize_hex(&tx),
        })))
    })
    .await
}

/// `GET /v1/wallets/{name}/policy`.
#[utoipa::path(get, path = "/v1/wallets/{name}/policy", tag = "policy", params(("name" = String, Path, description = "the wallet name")), responses((status = 200, description = "the rules, what counted in the last 24 hours, and whether the config file sets them"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn get_policy(
    Auth(token): ReadAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
) -> Result<Json<serde_json::Value>, ApiError> {
    with_wallet(node, &token, name, |node, wallet| {
        let rules = wallet.policy().rules().map_err(WalletError::from)?;
        let spent = wallet.policy().spent_last_24h().map_err(WalletError::from)?;
        Ok(Json(serde_json::json!({
            "policy": PolicyBody::from_policy(&rules, wallet.network()),
            "spent_last_24h_sat": spent.to_sat(),
            "from_config": node.policy_from_config(wallet.name().as_str()),
        })))
    })
    .await
}

/// `PUT /v1/wallets/{name}/policy`: refused (409) for a wallet whose policy the
/// configuration file sets.
#[utoipa::path(put, path = "/v1/wallets/{name}/policy", tag = "policy", params(("name" = String, Path, description = "the wallet name")), request_body = PolicyBody, responses((status = 200, description = "success", body = PolicyBody), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn set_policy(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
    Body(body): Body<PolicyBody>,
) -> Result<Json<PolicyBody>, ApiError> {
    check_wallet(&token, &name)?;
    if node.policy_from_config(name.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_from_config",
            format!("the policy of {name} is set by the configuration file; change it there and reload"),
        ));
    }
    let rules = body
        .to_policy(node.chain().network())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy", e))?;
    with_wallet(node, &token, name, move |_, wallet| {
        wallet.policy().set_rules(&rules).map_err(WalletError::from)?;
        Ok(Json(PolicyBody::from_policy(&rules, wallet.network())))
    })
    .await
}

/// `POST /v1/wallets/{name}/psbt`: an unsigned PSBT paying the recipients.
#[utoipa::path(post, path = "/v1/wallets/{name}/psbt", tag = "psbt", params(("name" = String, Path, description = "the wallet name")), request_body = SendRequest, responses((status = 200, description = "an unsigned PSBT (base64) and its txid"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn build_psbt(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
    Body(req): Body<SendRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rate = fee_rate(req.fee_rate_sat_vb)?;
    let to = recipients(&req, node.chain().network())?;
    with_wallet(node, &token, name, move |_, wallet| {
        let psbt = wallet.build(&to, rate)?;
        Ok(Json(serde_json::json!({
            "psbt": anya_bitcoin::psbt::encode_base64(&psbt),
            "txid": psbt.unsigned_tx.compute_txid().to_string(),
        })))
    })
    .await
}

/// A PSBT in base64 (or hex).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PsbtBody {
    /// The PSBT, base64 or hex.
    pub psbt: String,
}

/// `POST /v1/wallets/{name}/psbt/sign`: signs what the wallet's keys sign, after the policy
/// approved the spend.
#[utoipa::path(post, path = "/v1/wallets/{name}/psbt/sign", tag = "psbt", params(("name" = String, Path, description = "the wallet name")), request_body = PsbtBody, responses((status = 200, description = "the PSBT with the wallet's signatures, after the policy approved"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
pub async fn sign_psbt(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    WalletName(name): WalletName,
    Body(req): Body<PsbtBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut psbt = anya_bitcoin::psbt::decode(req.psbt.as_bytes())?;
    with_wallet(node, &token, name, move |node, wallet| {
        let signed = node.metrics().hsm("sign_transaction", || wallet.sign(&mut psbt));
        let report = decided(node, wallet.name().as_str(), signed)?;
        Ok(Json(serde_json::json!({
            "psbt": anya_bitcoin::psbt::encode_base64(&psbt),
            "signatures_added": report.total(),
        })))
    })
    .await
}
