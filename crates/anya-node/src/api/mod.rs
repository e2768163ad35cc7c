//! The HTTP API: an axum [`Router`] over a [`Node`], to serve as is (the `anya-node` daemon) or
//! to mount in another axum server.
//!
//! Every route but `GET /health/live` needs a bearer token with the route's scope
//! ([`routes()`]); errors are RFC 9457 problem details ([`ApiError`]).
//!
//! Scopes: `read` sees everything and may do what cannot move money or change keys, policies
//! or tokens (addresses, syncs, PSBT inspection); `sign` may also sign and send; `admin` may do
//! everything. A token limited to named keys or wallets sees and uses only those.

mod dlc;
mod ln;
mod ops;
mod oracle;
mod psbt;
mod wallets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use bitcoin::hex::{DisplayHex, FromHex};

use anya_hsm::{AuxRand, KeyInfo, KeyPolicy, KeyRef, KeySpec, Label, PublicKey};
use anya_storage::Namespace;

use crate::auth::{Scope, TokenInfo, TokenLimits, TokenRefusal};
use crate::error::ApiError;
use crate::events::Event;
use crate::node::Node;

/// The OpenAPI document's fixed parts; the paths come from each handler's annotation.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "anya-node",
        description = "The anya node API. Every route but /health/live needs `Authorization: Bearer <token>` with the scope the route names (read < sign < admin). Errors are RFC 9457 problem details with a stable `code`.",
    ),
    modifiers(&BearerScheme),
    components(schemas(crate::error::Problem))
)]
struct ApiDoc;

/// Declares the bearer-token security scheme the routes refer to.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("anya_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Every route with its OpenAPI description, from the handlers' annotations: the one source of
/// both the router and the document.
fn api() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key))
        .routes(routes!(sign))
        .routes(routes!(audit_verify))
        .routes(routes!(audit_records))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(wallets::list, wallets::create))
        .routes(routes!(wallets::show))
        .routes(routes!(wallets::address_route))
        .routes(routes!(wallets::balance))
        .routes(routes!(wallets::sync))
        .routes(routes!(wallets::transactions))
        .routes(routes!(wallets::send))
        .routes(routes!(wallets::bump_fee))
        .routes(routes!(wallets::get_policy, wallets::set_policy))
        .routes(routes!(wallets::build_psbt))
        .routes(routes!(wallets::sign_psbt))
        .routes(routes!(psbt::inspect))
        .routes(routes!(psbt::combine))
        .routes(routes!(psbt::finalize))
        .routes(routes!(ops::chain))
        .routes(routes!(ops::mine))
        .routes(routes!(ops::reload))
        .routes(routes!(ops::events))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(oracle::pubkey))
        .routes(routes!(oracle::list_events))
        .routes(routes!(oracle::announcement))
        .routes(routes!(oracle::attestation))
        .routes(routes!(oracle::create_enum))
        .routes(routes!(oracle::create_numeric))
        .routes(routes!(oracle::sign_enum))
        .routes(routes!(oracle::sign_numeric))
        .routes(routes!(oracle::p2pd_pubkey))
        .routes(routes!(oracle::p2pd_assets))
        .routes(routes!(oracle::p2pd_announcement))
        .routes(routes!(oracle::p2pd_attestation))
        .routes(routes!(oracle::events))
        .routes(routes!(oracle::asset))
        .routes(routes!(oracle::confirm))
        .routes(routes!(oracle::attest_price))
        .routes(routes!(dlc::identity))
        .routes(routes!(dlc::offer))
        .routes(routes!(dlc::message))
        .routes(routes!(dlc::accept))
        .routes(routes!(dlc::contracts))
        .routes(routes!(dlc::contract))
        .routes(routes!(dlc::tick))
        .routes(routes!(ln::info))
        .routes(routes!(ln::address))
        .routes(routes!(ln::connect))
        .routes(routes!(ln::channels, ln::open_channel))
        .routes(routes!(ln::close_channel))
        .routes(routes!(ln::invoice))
        .routes(routes!(ln::offer))
        .routes(routes!(ln::payments, ln::pay))
        .routes(routes!(ln::payment))
        .routes(routes!(ln::decode))
        .routes(routes!(ln::get_policy, ln::set_policy))
}

/// The API's OpenAPI 3.1 document.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| api().into_openapi())
}

/// Every route: method, path (axum syntax) and the scope it needs (`None`: no token), read
/// from the OpenAPI document.
pub fn routes() -> Vec<(String, String, Option<Scope>)> {
    let doc = openapi();
    let mut out = Vec::new();
    // The document lists paths in its own order; keep it stable for tests and people.
    for (path, item) in &doc.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let scope = operation.security.as_ref().and_then(|reqs| {
                let json = serde_json::to_value(reqs).ok()?;
                let scopes = json.as_array()?.first()?.get("bearer")?.as_array()?.clone();
                serde_json::from_value::<Scope>(scopes.first()?.clone()).ok()
            });
            out.push((method.to_owned(), path.clone(), scope));
        }
    }
    out
}

/// The API's routes over `node`, with its body limit.
pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config().api.body_limit;
    let (mut routes, _) = api().split_for_parts();
    if node.config().oracle.only {
        routes = routes.route_layer(middleware::from_fn(oracle_only));
    }
    routes
        .route_layer(middleware::from_fn_with_state(Arc::clone(&node), track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(node)
}

/// The routes an oracle-only node (`oracle.only`, `anya-oracle`) serves: the oracle's, and
/// health, the document, tokens, audit, metrics, events and reload.
fn oracle_routes() -> &'static std::collections::HashSet<String> {
    static PATHS: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        const TAGS: [&str; 7] = ["oracle", "health", "meta", "audit", "tokens", "metrics", "events"];
        let doc = serde_json::to_value(openapi()).unwrap_or_default();
        let mut paths = std::collections::HashSet::from(["/v1/admin/reload".to_owned()]);
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let tagged = item.as_object().into_iter().flatten().any(|(_, op)| {
                op["tags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().any(|t| TAGS.contains(&t.as_str().unwrap_or_default())))
            });
            if tagged {
                paths.insert(path.clone());
            }
        }
        paths
    })
}

/// On an oracle-only node, every other route answers 404.
async fn oracle_only(request: Request, next: Next) -> Response {
    let served = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| oracle_routes().contains(p.as_str()));
    if served {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_served",
            "this node serves the DLC oracle alone (oracle.only)",
        )
        .into_response()
    }
}

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "this document")), security(("bearer" = ["read"])))]
async fn openapi_json(_: ReadAuth) -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// Per-IP rate limit (when the server gives the peer's address) and request metrics, on every
/// matched route.
async fn track(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let response = match peer.map(|ip| node.limits().check_ip(ip)) {
        Some(Err(wait)) => {
            node.metrics().rate_limited("ip");
            ApiError::too_many_requests("per-address", wait).into_response()
        }
        _ => next.run(request).await,
    };
    let status = response.status().as_u16();
    node.metrics().request(&method, &route, status, started);
    tracing::debug!(
        %method,
        %route,
        status,
        micros = started.elapsed().as_micros() as u64,
        peer = ?peer,
        "request"
    );
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this route"),
    )
}

/// Runs blocking store or HSM work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

// ---- extractors ---------------------------------------------------------------------------------

/// A request authorized with a token holding scope `S` (0 read, 1 sign, 2 admin).
#[derive(Debug)]
pub struct Auth<const S: u8>(pub TokenInfo);

/// [`Auth`] for `read`.
pub type ReadAuth = Auth<0>;
/// [`Auth`] for `sign`.
pub type SignAuth = Auth<1>;
/// [`Auth`] for `admin`.
pub type AdminAuth = Auth<2>;

const fn scope_of(s: u8) -> Scope {
    match s {
        0 => Scope::Read,
        1 => Scope::Sign,
        _ => Scope::Admin,
    }
}

impl<const S: u8> FromRequestParts<Arc<Node>> for Auth<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .ok_or_else(|| ApiError::unauthorized("a bearer token is needed (Authorization: Bearer anya_…)"))?;
        // Most requests find their token's record in memory; the others read it on the
        // blocking pool.
        let verdict = match node.tokens().verify_cached(&presented) {
            Ok(verdict) => verdict,
            Err(_) => {
                let verifier = Arc::clone(node);
                blocking(move || Ok(verifier.tokens().verify(&presented)?)).await?
            }
        };
        let info = match verdict {
            Ok(info) => info,
            Err(TokenRefusal::Expired) => return Err(ApiError::unauthorized("the token has expired")),
            Err(TokenRefusal::Malformed | TokenRefusal::Unknown) => {
                return Err(ApiError::unauthorized("the token is not valid"))
            }
        };
        if let Err(wait) = node.limits().check_token(&info.id) {
            node.metrics().rate_limited("token");
            return Err(ApiError::too_many_requests("per-token", wait));
        }
        let scope = scope_of(S);
        if !info.allows(scope) {
            return Err(ApiError::forbidden(format!(
                "the token does not have the {} scope",
                format!("{scope:?}").to_lowercase()
            )));
        }
        Ok(Auth(info))
    }
}

/// A JSON body, refused with a problem-details error (malformed, wrong type, unknown field,
/// too large, not JSON).
#[derive(Debug)]
pub struct Body<T>(pub T);

/// Whether `headers` say the body is JSON (`application/json` or `application/…+json`).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", r.body_text())
            } else {
                ApiError::bad_request(r.body_text())
            }
        })?;
        // Every body is a JSON object: an array would fill the fields by position.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            let valid_json = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            return Err(if valid_json {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    "the body must be a JSON object",
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", "the body is not JSON")
            });
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(value) => match de.end() {
                Ok(()) => Ok(Body(value)),
                Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())),
            },
            Err(e) => {
                // Well-formed JSON of the wrong shape is 422 even where serde_json calls the
                // mismatch a syntax error; only bytes that are not JSON are 400.
                let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
                let (status, code) = if well_formed {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
                } else {
                    (StatusCode::BAD_REQUEST, "malformed_json")
                };
                let path = e.path().to_string();
                let detail = if path == "." {
                    e.inner().to_string()
                } else {
                    format!("{path}: {}", e.inner())
                };
                Err(ApiError::new(status, code, detail))
            }
        }
    }
}

/// The `{id}` of a path.
#[derive(Debug)]
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Id(id))
    }
}

fn label(id: &str) -> Result<Label, ApiError> {
    Label::new(id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_label", e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.to_lower_hex_string()
}

fn from_hex(s: &str) -> Result<Vec<u8>, ApiError> {
    Vec::<u8>::from_hex(s).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_hex", e.to_string()))
}

// ---- health -------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, description = "the process is up"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)))]
async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

#[utoipa::path(get, path = "/health/ready", tag = "health", responses((status = 200, description = "store writable, HSM unlocked, chain serving blocks (503 otherwise; each check in the body)"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
async fn ready(_: ReadAuth, State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    blocking(move || {
        let store = Namespace::new("anya/node/health")
            .map_err(ApiError::internal)
            .and_then(|ns| {
                node.store().put(&ns, b"probe", b"1")?;
                node.store().delete(&ns, b"probe")?;
                Ok(())
            });
        let hsm = node.hsm_ready();
        let chain = node.chain().health();
        let ready = store.is_ok() && hsm.is_ok() && chain.serving;
        let body = serde_json::json!({
            "ready": ready,
            "checks": {
                "store": if store.is_ok() { "writable" } else { "failing" },
                "hsm": match &hsm { Ok(state) => (*state).to_owned(), Err(e) => format!("failing: {e}") },
                "chain": chain,
            }
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Ok((status, Json(body)).into_response())
    })
    .await
}

// ---- keys ---------------------------------------------------------------------------------------

/// A key as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Its id.
    pub id: String,
    /// `secp256k1`, `ed25519`, `p256`, `aes256` or `bip32`.
    pub spec: &'static str,
    /// Whether it may be exported.
    pub exportable: bool,
    /// Whether it is a BIP32 root that DLC contract keys may be derived from and exported
    /// (the opt-in usage `ExportDlcChild`, fixed when the key was made).
    pub dlc: bool,
    /// Whether it is a BIP32 root that Lightning node seeds may be derived from (the opt-in
    /// usage `DeriveNodeSeed`, fixed when the key was made).
    pub ln: bool,
    /// Its public key in hex (compressed secp256k1, raw Ed25519, uncompressed P-256); none for
    /// AES keys.
    pub public_key: Option<String>,
    /// When it was made (unix seconds).
    pub created: u64,
}

fn spec_name(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Secp256k1 => "secp256k1",
        KeySpec::Ed25519 => "ed25519",
        KeySpec::P256 => "p256",
        KeySpec::Aes256 => "aes256",
        KeySpec::Bip32Root => "bip32",
        _ => "other",
    }
}

fn view(node: &Node, info: &KeyInfo) -> Result<KeyView, ApiError> {
    let public_key = match info.spec {
        KeySpec::Aes256 => None,
        _ => Some(match node.hsm().public_key(KeyRef::Key(&info.id))? {
            PublicKey::Secp256k1(pk) => hex(&pk.serialize()),
            PublicKey::Ed25519(pk) => hex(&pk),
            PublicKey::P256(pk) => hex(&pk),
            _ => return Err(ApiError::internal("a public key of an unknown kind")),
        }),
    };
    Ok(KeyView {
        id: info.id.as_str().to_owned(),
        spec: spec_name(info.spec),
        exportable: info.policy.exportable,
        dlc: info.policy.allowed.contains(anya_hsm::Usage::ExportDlcChild),
        ln: info.policy.allowed.contains(anya_hsm::Usage::DeriveNodeSeed),
        public_key,
        created: info.created.as_secs(),
    })
}

/// The policy of a new BIP32 root, with the opt-in usages asked for: DLC contract keys
/// (`ExportDlcChild`) and Lightning node seeds (`DeriveNodeSeed`).
fn root_policy(dlc: bool, ln: bool) -> KeyPolicy {
    let mut policy = KeyPolicy::default_for(KeySpec::Bip32Root);
    if dlc {
        policy = policy.allowing(anya_hsm::Usage::ExportDlcChild);
    }
    if ln {
        policy = policy.allowing(anya_hsm::Usage::DeriveNodeSeed);
    }
    policy
}

fn check_key_access(token: &TokenInfo, id: &str) -> Result<(), ApiError> {
    if token.may_use_key(id) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("the token may not use key {id}")))
    }
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", responses((status = 200, description = "success", body = Vec<KeyView>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
async fn list_keys(Auth(token): ReadAuth, State(node): State<Arc<Node>>) -> Result<Json<Vec<KeyView>>, ApiError> {
    blocking(move || {
        let keys = node.hsm().list_keys()?;
        keys.iter()
            .filter(|k| token.may_use_key(k.id.as_str()))
            .map(|k| view(&node, k))
            .collect::<Result<Vec<_>, _>>()
            .map(Json)
    })
    .await
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The new key's id (a label: 1 to 64 of `A-Za-z0-9._-`).
    pub id: String,
    /// `secp256k1`, `ed25519`, `p256`, `aes256` or `bip32`.
    pub spec: String,
    /// Whether it may be exported (default no).
    #[serde(default)]
    pub exportable: bool,
    /// For a `bip32` root: allow DLC contract keys below it (the usage `ExportDlcChild`: the
    /// per-contract keys of its DLC branch may leave the HSM, audited, and nothing else; see
    /// docs/adr/0006-dlc-contract-keys.md). Default no; fixed at creation.
    #[serde(default)]
    pub dlc: bool,
    /// For a `bip32` root: allow Lightning node seeds below it (the usage `DeriveNodeSeed`: a
    /// 64-byte seed derived by BIP85 for `[ln] root`, audited; no key leaves the HSM). Default
    /// no; fixed at creation.
    #[serde(default)]
    pub ln: bool,
}

#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey, responses((status = 201, description = "success", body = KeyView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
async fn create_key(
    Auth(token): AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<CreateKey>,
) -> Result<Response, ApiError> {
    let id = label(&req.id)?;
    check_key_access(&token, id.as_str())?;
    let spec = match req.spec.as_str() {
        "secp256k1" => KeySpec::Secp256k1,
        "ed25519" => KeySpec::Ed25519,
        "p256" => KeySpec::P256,
        "aes256" => KeySpec::Aes256,
        "bip32" => KeySpec::Bip32Root,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_spec",
                format!("unknown key spec {other:?}: secp256k1, ed25519, p256, aes256 or bip32"),
            ))
        }
    };
    if (req.dlc || req.ln) && spec != KeySpec::Bip32Root {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            "\"dlc\": true and \"ln\": true are for a bip32 root",
        ));
    }
    blocking(move || {
        let policy = if spec == KeySpec::Bip32Root {
            KeyPolicy {
                exportable: req.exportable,
                ..root_policy(req.dlc, req.ln)
            }
        } else {
            KeyPolicy {
                exportable: req.exportable,
                ..KeyPolicy::default_for(spec)
            }
        };
        let info = node
            .metrics()
            .hsm("generate_key", || node.hsm().generate_key(&id, spec, policy))?;
        node.audit_changed();
        tracing::info!(id = %info.id, spec = spec_name(info.spec), "key created");
        node.events().publish(Event::KeyCreated {
            id: info.id.as_str().to_owned(),
            spec: spec_name(info.spec).to_owned(),
        });
        Ok((StatusCode::CREATED, Json(view(&node, &info)?)).into_response())
    })
    .await
}

#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "the key or token id")), responses((status = 200, description = "success", body = KeyView), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
async fn get_key(Auth(token): ReadAuth, State(node): State<Arc<Node>>, Id(id): Id) -> Result<Json<KeyView>, ApiError> {
    let id = label(&id)?;
    check_key_access(&token, id.as_str())?;
    blocking(move || {
        let info = node.hsm().key_info(&id)?;
        view(&node, &info).map(Json)
    })
    .await
}

/// `POST /v1/keys/{id}/sign`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// `ecdsa` or `schnorr` (BIP340) over a 32-byte digest; `ed25519` or `p256` over a
    /// message of any length.
    pub scheme: String,
    /// The digest or message, in hex.
    pub message_hex: String,
}

/// A signature.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Signature {
    /// The scheme it was made with.
    pub scheme: String,
    /// DER for `ecdsa` and `p256`, 64 bytes for `schnorr` and `ed25519`; hex.
    pub signature_hex: String,
}

#[utoipa::path(post, path = "/v1/keys/{id}/sign", tag = "keys", params(("id" = String, Path, description = "the key or token id")), request_body = SignRequest, responses((status = 200, description = "success", body = Signature), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["sign"])))]
async fn sign(
    Auth(token): SignAuth,
    State(node): State<Arc<Node>>,
    Id(id): Id,
    Body(req): Body<SignRequest>,
) -> Result<Json<Signature>, ApiError> {
    let id = label(&id)?;
    check_key_access(&token, id.as_str())?;
    let message = from_hex(&req.message_hex)?;
    let digest = || -> Result<[u8; 32], ApiError> {
        message.as_slice().try_into().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_digest",
                format!("{} signs a 32-byte digest, not {} bytes", req.scheme, message.len()),
            )
        })
    };
    let scheme = req.scheme.clone();
    enum Job {
        Ecdsa([u8; 32]),
        Schnorr([u8; 32]),
        Ed25519(Vec<u8>),
        P256(Vec<u8>),
    }
    let job = match req.scheme.as_str() {
        "ecdsa" => Job::Ecdsa(digest()?),
        "schnorr" => Job::Schnorr(digest()?),
        "ed25519" => Job::Ed25519(message),
        "p256" => Job::P256(message),
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_scheme",
                format!("unknown scheme {other:?}: ecdsa, schnorr, ed25519 or p256"),
            ))
        }
    };
    let signature = blocking(move || {
        let hsm = node.hsm();
        let m = node.metrics();
        let signature = match job {
            Job::Ecdsa(d) => m
                .hsm("sign_ecdsa", || hsm.sign_ecdsa(KeyRef::Key(&id), &d))?
                .serialize_der()
                .to_vec(),
            Job::Schnorr(d) => m
                .hsm("sign_schnorr", || {
                    hsm.sign_schnorr(KeyRef::Key(&id), &d, AuxRand::Fresh)
                })?
                .as_ref()
                .to_vec(),
            Job::Ed25519(msg) => m.hsm("sign_ed25519", || hsm.sign_ed25519(&id, &msg))?.0.to_vec(),
            Job::P256(msg) => m.hsm("sign_p256", || hsm.sign_p256(&id, &msg))?.to_der(),
        };
        node.audit_changed();
        Ok(signature)
    })
    .await?;
    Ok(Json(Signature {
        scheme,
        signature_hex: hex(&signature),
    }))
}

// ---- audit --------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", responses((status = 200, description = "the chain's record count, head and how many records the keyed head authenticates"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
async fn audit_verify(_: ReadAuth, State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let s = node.hsm().verify_audit_chain()?;
        Ok(Json(serde_json::json!({
            "records": s.records,
            "head": hex(&s.head),
            "authenticated": s.authenticated,
        })))
    })
    .await
}

/// `GET /v1/audit/records?after=N&limit=M`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// Records after this sequence number (default 0: from the first).
    #[serde(default)]
    pub after: u64,
    /// At most this many (default 100, at most 1000).
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

#[utoipa::path(get, path = "/v1/audit/records", tag = "audit", params(RecordsQuery), responses((status = 200, description = "success"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["read"])))]
async fn audit_records(
    _: ReadAuth,
    State(node): State<Arc<Node>>,
    query: Result<Query<RecordsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.min(1000);
    blocking(move || {
        let records = node.hsm().audit_records(q.after, limit)?;
        Ok(Json(
            records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "seq": r.seq,
                        "time": r.time.as_secs(),
                        "operation": format!("{:?}", r.operation),
                        "key_id": r.key_id.as_ref().map(Label::as_str),
                        "actor": r.actor.as_str(),
                        "outcome": r.outcome,
                        "input_hash": r.input_hash.as_ref().map(|h| hex(h)),
                    })
                })
                .collect(),
        ))
    })
    .await
}

// ---- tokens -------------------------------------------------------------------------------------

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A name for people.
    pub name: String,
    /// `read`, `sign`, `admin`.
    pub scopes: Vec<Scope>,
    /// The only keys it may use.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// The only wallets it may use.
    #[serde(default)]
    pub wallets: Option<Vec<String>>,
    /// Seconds until it expires (none: never).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateToken, responses((status = 201, description = "the token (shown once) and what is stored"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
async fn create_token(
    _: AdminAuth,
    State(node): State<Arc<Node>>,
    Body(req): Body<CreateToken>,
) -> Result<Response, ApiError> {
    if req.scopes.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_scopes",
            "a token needs at least one scope",
        ));
    }
    blocking(move || {
        let expires = req
            .expires_in_secs
            .map(|s| node.clock().now().as_secs().saturating_add(s));
        let limits = TokenLimits {
            keys: req.keys,
            wallets: req.wallets,
        };
        let (info, token) = node.tokens().create(&req.name, req.scopes, limits, expires)?;
        tracing::info!(id = %info.id, name = %info.name, scopes = ?info.scopes, "token created");
        Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "token": token, "info": info })),
        )
            .into_response())
    })
    .await
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, description = "success", body = Vec<TokenInfo>), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
async fn list_tokens(_: AdminAuth, State(node): State<Arc<Node>>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    blocking(move || Ok(Json(node.tokens().list()?))).await
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "the key or token id")), responses((status = 204, description = "revoked"), (status = "4XX", description = "problem details (application/problem+json)", body = crate::error::Problem)), security(("bearer" = ["admin"])))]
async fn revoke_token(_: AdminAuth, State(node): State<Arc<Node>>, Id(id): Id) -> Result<StatusCode, ApiError> {
    blocking(move || {
        if node.tokens().revoke(&id)? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!("no token {id}")))
        }
    })
    .await
}
