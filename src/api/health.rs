//! Probes for orchestrators: liveness says the process serves; readiness says its
//! dependencies answer and the schema is current.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// PostgreSQL and NATS answer, and the database schema is the one this binary expects.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = String), (status = 503, body = String)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match crate::health::readiness(state.pool(), state.bus()).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("not ready: {why}"),
        )
            .into_response(),
    }
}
