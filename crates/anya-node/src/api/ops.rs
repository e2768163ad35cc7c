//! Operations routes: the chain, regtest mining, reload, the event stream and metrics.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitcoin::Address;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{blocking, AdminAuth, Auth, Body, ReadAuth};
use crate::auth::TokenInfo;
use crate::error::ApiError;
use crate::events::{Event, Events, Numbered};
use crate::node::{Node, ReloadError};

/// `GET /v1/chain`: the chain source and its tip.
#[utoipa::path(get, path = "/v1/chain", tag = "chain", responses((status = 200, description = "the chain source, network, height and tip"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn chain(_: ReadAuth, State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let (height, hash) = node.chain().tip()?;
        Ok(Json(serde_json::json!({
            "source": node.chain().describe(),
            "network": node.chain().network().to_string(),
            "height": height,
            "tip": hash.to_string(),
        })))
    })
    .await
}

/// `POST /v1/admin/mine`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MineRequest {
    /// How many blocks (1 to 1000).
    pub blocks: u32,
    /// The regtest address the coinbases pay.
    pub address: String,
}

/// `POST /v1/admin/mine` (regtest only): mines blocks, the first holding the mempool, then
/// syncs every wallet so that their confirmations are published.
#[utoipa::path(post, path = "/v1/admin/mine", tag = "admin", request_body = MineRequest, responses((status = 200, description = "the new height and block hashes"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn mine(
    _: AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<MineRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !(1..=1000).contains(&req.blocks) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_blocks",
            "1 to 1000 blocks",
        ));
    }
    let network = node.chain().network();
    let to = req
        .address
        .parse::<Address<_>>()
        .and_then(|a| a.require_network(network))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_address", e.to_string()))?;
    blocking(move || {
        let hashes = node.chain().mine(req.blocks, &to)?;
        let (height, _) = node.chain().tip()?;
        node.events().publish(Event::BlocksMined {
            height,
            count: req.blocks,
        });
        node.sync_all();
        Ok(Json(serde_json::json!({
            "height": height,
            "hashes": hashes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })))
    })
    .await
}

/// `POST /v1/admin/reload`: the same as SIGHUP.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin", responses((status = 200, description = "reloaded (409 needs_restart or 422 invalid_config otherwise, the running configuration unchanged)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
pub async fn reload(_: AdminAuth, State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || match node.reload() {
        Ok(()) => Ok(Json(serde_json::json!({ "reloaded": true }))),
        Err(e @ ReloadError::NoSource) => Err(ApiError::new(StatusCode::CONFLICT, "no_config_source", e.to_string())),
        Err(e @ ReloadError::NeedsRestart(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "needs_restart", e.to_string()))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )),
    })
    .await
}

/// `GET /metrics`: Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "metrics", responses((status = 200, description = "Prometheus text exposition"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn metrics(_: ReadAuth, State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let text = node
        .metrics()
        .render(node.events().subscribers())
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /v1/events`: a WebSocket of JSON events (`{"seq":…,"type":…,…}`). It starts with
/// `{"type":"hello","seq":N}` (N: the last event before this subscriber joined); a subscriber
/// that falls more than `events.queue` events behind gets `{"type":"lagged","missed":M}` and
/// continues with the oldest event still held. A token limited to some wallets or keys gets
/// only their events.
#[utoipa::path(get, path = "/v1/events", tag = "events", responses((status = 101, description = "a WebSocket of JSON events"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
pub async fn events(Auth(token): ReadAuth, State(node): State<Arc<Node>>, ws: WebSocketUpgrade) -> Response {
    let rx = node.events().subscribe();
    let catch_up = Arc::clone(&node);
    // Audit records appended while nobody listened are not replayed; from now on they are.
    let _ = tokio::task::spawn_blocking(move || catch_up.audit_catch_up()).await;
    let hello = serde_json::json!({ "type": "hello", "seq": node.events().last_seq() }).to_string();
    // What the DLC party's start left to deliver again goes to the first subscriber that may
    // see it (after its hello: it is published once this one listens).
    if let Some(dlc) = node.dlc().filter(|d| token.may_use_wallet(d.wallet().as_str())) {
        for event in dlc.take_resend() {
            node.events().publish(event);
        }
    }
    // Subscribers only listen: small buffers keep 10,000 of them cheap (tungstenite's default
    // read buffer is 128 KiB per connection, zeroed before each read).
    ws.read_buffer_size(4 * 1024)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| stream(socket, rx, token, hello, node))
}

fn visible(token: &TokenInfo, event: &Numbered) -> bool {
    match Events::scope_of(&event.event) {
        (Some(wallet), _) => token.may_use_wallet(wallet),
        (None, Some(key)) => token.may_use_key(key),
        (None, None) => true,
    }
}

/// The next message for a subscriber holding `token`: the next event it may see, or a
/// `lagged` notice when it fell behind by more than the queue; `None` once the bus is gone.
pub(crate) async fn next_message(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<Numbered>>,
    token: &TokenInfo,
) -> Option<String> {
    loop {
        match rx.recv().await {
            Ok(event) if visible(token, &event) => return Some(event.json.clone()),
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                return Some(serde_json::json!({ "type": "lagged", "missed": missed }).to_string())
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// How often an open stream checks that its token still stands.
const TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

async fn stream(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<Arc<Numbered>>,
    token: TokenInfo,
    hello: String,
    node: Arc<Node>,
) {
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    let mut recheck = tokio::time::interval(TOKEN_RECHECK);
    recheck.tick().await;
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                let (tokens, id) = (Arc::clone(&node), token.id.clone());
                let valid = tokio::task::spawn_blocking(move || tokens.tokens().still_valid(&id)).await;
                if !matches!(valid, Ok(Ok(true))) {
                    // Revoked or expired (or unknowable): the stream ends, with the reason.
                    let _ = socket
                        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                            code: 1008,
                            reason: "the token was revoked or expired".into(),
                        })))
                        .await;
                    break;
                }
            }
            next = next_message(&mut rx, &token) => {
                let Some(text) = next else { break };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    fn token(wallets: Option<Vec<String>>) -> TokenInfo {
        TokenInfo {
            id: "t".to_owned(),
            name: "t".to_owned(),
            scopes: vec![crate::auth::Scope::Read],
            keys: None,
            wallets,
            expires: None,
            created: 0,
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_many_events_it_missed() {
        let events = Events::new(4);
        let mut rx = events.subscribe();
        for height in 1..=10 {
            events.publish(Event::BlocksMined { height, count: 1 });
        }
        let t = token(None);
        let lagged: serde_json::Value =
            serde_json::from_str(&next_message(&mut rx, &t).await.expect("a message")).expect("json");
        assert_eq!(lagged, serde_json::json!({"type": "lagged", "missed": 6}));
        // It continues with the oldest event still held, in order, none skipped after that.
        for seq in 7..=10 {
            let v: serde_json::Value =
                serde_json::from_str(&next_message(&mut rx, &t).await.expect("a message")).expect("json");
            assert_eq!(
                (v["seq"].as_u64(), v["type"].as_str()),
                (Some(seq), Some("blocks_mined"))
            );
        }
    }

    #[tokio::test]
    async fn a_token_limited_to_a_wallet_sees_only_its_events() {
        let events = Events::new(16);
        let mut rx = events.subscribe();
        for wallet in ["alice", "bob"] {
            events.publish(Event::WalletCreated {
                wallet: wallet.to_owned(),
            });
        }
        events.publish(Event::ConfigReloaded);
        let t = token(Some(vec!["bob".to_owned()]));
        let first: serde_json::Value =
            serde_json::from_str(&next_message(&mut rx, &t).await.expect("a message")).expect("json");
        assert_eq!(first["wallet"], "bob");
        let second: serde_json::Value =
            serde_json::from_str(&next_message(&mut rx, &t).await.expect("a message")).expect("json");
        assert_eq!(second["type"], "config_reloaded");
    }
}
