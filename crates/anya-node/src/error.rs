//! Every error the API returns has one shape: RFC 9457 problem details
//! (`application/problem+json`) with a stable `code`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use anya_hsm::HsmError;

/// An API error: an HTTP status, a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code (`unauthorized`, `key_not_found`, …): the problem type's last segment.
    pub code: &'static str,
    /// What happened, for people.
    pub detail: String,
    /// Seconds to wait before trying again (a `Retry-After` header), for `429`.
    pub retry_after: Option<u64>,
    /// The spending-policy rule code a `policy_refused` broke.
    pub rule: Option<u16>,
}

/// The problem-details body (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// `https://anya.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: &'a str,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for people.
    pub detail: &'a str,
    /// A stable machine-readable code.
    pub code: &'a str,
    /// The spending-policy rule a `policy_refused` broke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u16>,
    /// Seconds to wait, for `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            rule: None,
        }
    }

    /// This error with the policy rule it is about.
    pub fn with_rule(mut self, rule: u16) -> Self {
        self.rule = Some(rule);
        self
    }

    /// 429 `rate_limited`, to retry after `wait` (rounded up to whole seconds).
    pub fn too_many_requests(limit: &str, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("the {limit} rate limit is reached; retry after {secs} s"),
        );
        e.retry_after = Some(secs.max(1));
        e
    }

    /// 400 `bad_request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 500 `internal`: the detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the node's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("error");
        let body = Problem {
            kind: format!("https://anya.dev/problems/{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            rule: self.rule,
            retry_after: self.retry_after,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/problem+json")], json).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"anya\""),
            );
        }
        response
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}

impl From<crate::auth::TokenError> for ApiError {
    fn from(e: crate::auth::TokenError) -> Self {
        Self::internal(e)
    }
}

impl From<anya_storage::StoreError> for ApiError {
    fn from(e: anya_storage::StoreError) -> Self {
        Self::internal(e)
    }
}

impl From<HsmError> for ApiError {
    fn from(e: HsmError) -> Self {
        use HsmError as E;
        let (status, code) = match &e {
            E::KeyNotFound { .. } => (StatusCode::NOT_FOUND, "key_not_found"),
            E::KeyExists { .. } => (StatusCode::CONFLICT, "key_exists"),
            E::WrongKeyType { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_key_type"),
            E::UsageNotAllowed { .. } => (StatusCode::FORBIDDEN, "usage_not_allowed"),
            E::NotExportable { .. } => (StatusCode::FORBIDDEN, "not_exportable"),
            E::Label { .. } => (StatusCode::BAD_REQUEST, "invalid_label"),
            E::Unsupported { .. } => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
            E::NonceAlreadyUsed { .. } => (StatusCode::CONFLICT, "nonce_already_used"),
            E::Locked => (StatusCode::SERVICE_UNAVAILABLE, "hsm_locked"),
            E::RolledBack { .. } | E::StaleEntry { .. } | E::AuditChainBroken { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_tampered")
            }
            _ => return Self::internal(&e),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<anya_bitcoin::psbt::PsbtError> for ApiError {
    fn from(e: anya_bitcoin::psbt::PsbtError) -> Self {
        use anya_bitcoin::psbt::PsbtError as E;
        let (status, code) = match &e {
            E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "psbt_too_large"),
            E::NotFinalized { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "psbt_not_finalized"),
            E::Verify(_) | E::Check(_) | E::Extract(_) => (StatusCode::UNPROCESSABLE_ENTITY, "transaction_invalid"),
            E::DifferentTransactions { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "psbt_mismatch"),
            _ => (StatusCode::BAD_REQUEST, "invalid_psbt"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<anya_bitcoin::wallet::WalletError> for ApiError {
    fn from(e: anya_bitcoin::wallet::WalletError) -> Self {
        use anya_bitcoin::policy::PolicyError;
        use anya_bitcoin::signer::SignError;
        use anya_bitcoin::wallet::WalletError as E;
        let e = match e {
            E::Hsm(h) | E::Sign(SignError::Hsm(h)) => return h.into(),
            E::InvalidPsbt(p) | E::Sign(SignError::Psbt(p)) => return p.into(),
            E::Store(s) => return s.into(),
            E::Policy(PolicyError::Refused(v)) => {
                return Self::new(StatusCode::FORBIDDEN, "policy_refused", v.to_string()).with_rule(v.code())
            }
            other => other,
        };
        let (status, code) = match &e {
            E::Policy(PolicyError::Contended) => (StatusCode::CONFLICT, "policy_contended"),
            E::AlreadyExists { .. } => (StatusCode::CONFLICT, "wallet_exists"),
            E::NotFound { .. } => (StatusCode::NOT_FOUND, "wallet_not_found"),
            E::Descriptor(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_descriptor"),
            E::Build(_) => (StatusCode::UNPROCESSABLE_ENTITY, "cannot_build"),
            E::BelowDust { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "below_dust"),
            E::Sign(_) | E::Psbt(_) => (StatusCode::UNPROCESSABLE_ENTITY, "cannot_sign"),
            E::NotFinalized { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "psbt_not_finalized"),
            E::Verify(_) => (StatusCode::UNPROCESSABLE_ENTITY, "transaction_invalid"),
            E::UnknownTransaction { .. } => (StatusCode::NOT_FOUND, "transaction_not_found"),
            E::AlreadyReplaced { .. } => (StatusCode::CONFLICT, "already_replaced"),
            E::AlreadyConfirmed { .. } => (StatusCode::CONFLICT, "already_confirmed"),
            E::NotInMempool { .. } => (StatusCode::CONFLICT, "not_in_mempool"),
            E::ParentFeeUnknown { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "parent_fee_unknown"),
            E::InsufficientFunds { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"),
            E::WatchOnly { .. } => (StatusCode::CONFLICT, "watch_only"),
            E::Chain(_) => (StatusCode::CONFLICT, "chain_mismatch"),
            _ => return Self::internal(&e),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<crate::chain::ChainError> for ApiError {
    fn from(e: crate::chain::ChainError) -> Self {
        use crate::chain::ChainError as E;
        match e {
            E::Wallet(w) => w.into(),
            E::Store(s) => s.into(),
            E::Rejected { .. } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "transaction_rejected", e.to_string()),
            E::NotRegtest(_) => Self::new(StatusCode::CONFLICT, "not_regtest", e.to_string()),
            E::ForeignTip { .. } => Self::new(StatusCode::CONFLICT, "chain_mismatch", e.to_string()),
            E::Rpc(_) => Self::new(StatusCode::BAD_GATEWAY, "chain_unavailable", e.to_string()),
            E::Corrupt(_) => Self::internal(e),
        }
    }
}
