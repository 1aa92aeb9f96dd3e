//! The API's one error type and its one mapping to HTTP (SPEC: plain-text bodies whose first
//! words say the kind). Infrastructure details are logged here and never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::domain::InvalidId;
use crate::queue::QueueError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Bad request: {0}")]
    BadRequest(String),
    #[error("Not authorized: {0}")]
    Unauthorized(String),
    #[error("Permission denied: {0}")]
    Forbidden(String),
    #[error("Not found: {0}")]
    NotFound(String),
    #[error("Method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("Conflict: {0}")]
    Conflict(String),
    #[error("Payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("Unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// Too many failed authentications from one address; the value is Retry-After seconds.
    #[error("Too many requests: too many failed authentications; retry in {0}s")]
    TooManyRequests(u64),
    #[error("Service unavailable: {0}")]
    Unavailable(&'static str),
    /// At a limit (the job queue is full, too many requests at once): nothing was done, the
    /// caller should try again after the given seconds (`Retry-After`).
    #[error("Service unavailable: {0}; retry later")]
    Overloaded(&'static str, u64),
    /// A sync script shaped an invalid HTTP response; the message says what is wrong.
    #[error("Internal: {0}")]
    BadScriptResponse(String),
    /// A sync call waited `TIMEOUT_WAIT_RESULT` seconds (SPEC: exactly this body).
    #[error("timeout after {0}s")]
    SyncTimeout(u64),
    /// The detail is logged, the caller sees only "Internal: <context>".
    #[error("Internal: {context}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Overloaded(..) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } | Self::BadScriptResponse(_) | Self::SyncTimeout(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// Why a request was refused, in a word fit for a metric's label; set on every error response.
#[derive(Debug, Clone, Copy)]
pub struct ErrorReason(pub &'static str);

impl ApiError {
    fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TooManyRequests(_) => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Overloaded(..) => "overloaded",
            Self::BadScriptResponse(_) => "bad_script_response",
            Self::SyncTimeout(_) => "timeout",
            Self::Internal { .. } => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal { context, detail } => {
                tracing::error!(context, detail = %detail, "internal error");
            }
            Self::Unavailable(what) => tracing::warn!(what, "dependency unavailable"),
            Self::Overloaded(what, _) => tracing::warn!(what, "request refused: overloaded"),
            _ => {}
        }
        let status = self.status();
        let reason = ErrorReason(self.reason());
        let mut response = (status, self.to_string()).into_response();
        response.extensions_mut().insert(reason);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let retry_after = match self {
            Self::TooManyRequests(wait) | Self::Overloaded(_, wait) => Some(wait),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(wait) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        response
    }
}

impl From<InvalidId> for ApiError {
    fn from(e: InvalidId) -> Self {
        Self::BadRequest(e.to_string())
    }
}

/// What a caller is told when the database cannot store the text it sent.
const NUL_REFUSED: &str = "text must not contain the NUL character (U+0000)";

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from(&e)
    }
}

impl From<std::sync::Arc<StoreError>> for ApiError {
    fn from(e: std::sync::Arc<StoreError>) -> Self {
        Self::from(&*e)
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Timeout(_) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::Unavailable("database")
            }
            StoreError::Busy => Self::Overloaded("too many jobs are being recorded", 1),
            StoreError::Contended => Self::Overloaded("the key is being claimed concurrently", 1),
            other if other.is_unstorable_text() => Self::BadRequest(NUL_REFUSED.into()),
            // A connection lost mid-query, a server restarting or overloaded: worth a retry.
            other if other.is_transient() => {
                tracing::warn!(error = %other, "database unavailable");
                Self::Unavailable("database")
            }
            other => Self::Internal {
                context: "database error",
                detail: other.to_string(),
            },
        }
    }
}

/// Seconds a caller refused for a full job queue waits: workers need time to take jobs.
const QUEUE_FULL_RETRY_AFTER: u64 = 5;

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        if let QueueError::Full(_) = e {
            tracing::warn!(error = %e, "job queue full");
            return Self::Overloaded("the job queue is full", QUEUE_FULL_RETRY_AFTER);
        }
        tracing::warn!(error = %e, "NATS unavailable");
        Self::Unavailable("message broker")
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::InvalidToken => Self::Unauthorized(e.to_string()),
            // A valid token without the right: it was made for another workspace.
            AuthError::WrongWorkspace(_) => Self::Forbidden(e.to_string()),
            AuthError::NotMember(_) => Self::Unauthorized(e.to_string()),
            AuthError::UnknownWorkspace(_) => Self::NotFound(e.to_string()),
            AuthError::Store(e) => e.into(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
