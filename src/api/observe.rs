//! What the API tells Prometheus: every request by route template and status, run requests
//! (webhooks) accepted or refused, and `/metrics` itself.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ErrorReason;
use super::run_sync::JOB_ID_HEADER;
use super::AppState;
use crate::metrics::{self, HttpLabels};

/// The `route` of a request no route matched: its path is the caller's, not a label.
pub(super) const UNMATCHED: &str = "unmatched";

/// Counts and times each request, and each webhook's fate.
pub async fn track(request: Request, next: Next) -> Response {
    let began = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |matched| metrics::route_label(matched.as_str()));
    let method = method_label(request.method());
    let webhook = webhook_mode(request.method(), route);
    let response = next.run(request).await;
    let status = response.status();
    let labels = HttpLabels {
        method,
        route,
        status: status.as_u16(),
    };
    metrics::http_request(&labels, began.elapsed());
    if let Some(mode) = webhook {
        // A sync call whose job failed or timed out still ran it: it carries the job's id.
        if status.as_u16() < 400 || response.headers().contains_key(JOB_ID_HEADER) {
            metrics::webhook_accepted(mode);
        } else {
            let reason = response
                .extensions()
                .get::<ErrorReason>()
                .map_or_else(|| status_reason(status), |reason| reason.0);
            metrics::webhook_refused(mode, reason);
        }
    }
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Which webhook a route is (`HEAD` only probes it).
fn webhook_mode(method: &Method, route: &str) -> Option<&'static str> {
    if method == Method::HEAD {
        return None;
    }
    let rest = route.strip_prefix("/api/w/{workspace}/")?;
    [
        ("jobs/run/", "async"),
        ("jobs/run_wait_result/", "sync"),
        ("jobs/run_and_stream/", "stream"),
        ("hooks/", "trigger"),
    ]
    .into_iter()
    .find_map(|(prefix, mode)| rest.starts_with(prefix).then_some(mode))
}

/// A refusal that did not come from [`super::ApiError`] (axum's own extractors, say).
fn status_reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "client_error",
        _ => "internal",
    }
}

/// The text `/metrics` answers.
pub fn scrape(state: &AppState) -> Response {
    let text = metrics::render(metrics::Role::Api, state.pool());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// Prometheus metrics of this API process (docs/metrics.md); not authenticated. 404 when
/// `METRICS_BIND_ADDR` serves them elsewhere, or not at all.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
              (status = 404, description = "served on METRICS_BIND_ADDR instead, or off")))]
pub async fn serve(State(state): State<AppState>) -> Response {
    if !state.config().metrics_on_api {
        return super::ApiError::not_found("/metrics is not served on this address")
            .into_response();
    }
    scrape(&state)
}

/// `/metrics` alone, for a listener of its own (`METRICS_BIND_ADDR`).
pub fn router(state: AppState) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(|State(state): State<AppState>| async move { scrape(&state) }),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_are_told_by_their_route() {
        let run = "/api/w/{workspace}/jobs/run/p/{*path}";
        assert_eq!(webhook_mode(&Method::POST, run), Some("async"));
        assert_eq!(webhook_mode(&Method::HEAD, run), None);
        assert_eq!(
            webhook_mode(
                &Method::GET,
                "/api/w/{workspace}/jobs/run_wait_result/h/{hash}"
            ),
            Some("sync")
        );
        assert_eq!(
            webhook_mode(&Method::POST, "/api/w/{workspace}/hooks/{*path}"),
            Some("trigger")
        );
        assert_eq!(
            webhook_mode(&Method::GET, "/api/w/{workspace}/jobs_u/get/{id}"),
            None
        );
        assert_eq!(webhook_mode(&Method::GET, UNMATCHED), None);
    }
}
