//! Every error the API returns has one shape: RFC 9457 problem details
//! (`application/problem+json`) with a stable `code`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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
}

/// The problem-details body.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
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
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/problem+json")], json).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"anya\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "malformed_json",
        };
        Self::new(r.status(), code, r.body_text())
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
