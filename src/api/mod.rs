//! The HTTP API (axum). Only this module knows about HTTP; each file serves one resource and
//! `router` assembles them. Errors map to statuses in `error` and nowhere else.

mod acls;
mod admission;
mod authorize;
mod cancel;
mod error;
mod extract;
mod flows;
mod folders;
mod groups;
mod health;
mod hooks;
mod idempotency;
mod job_helpers;
mod job_wait;
mod jobs;
mod login;
mod multipart;
mod object_storage;
mod observe;
mod openapi;
mod passwords;
mod paths;
mod probe;
mod rate_limit;
mod request_args;
mod run_async;
mod run_stream;
mod run_sync;
mod run_target;
mod scripts;
mod state;
mod streamed_body;
mod submit;
mod sync_response;
mod trigger_cache;
mod ui;
mod users;
mod webhook_triggers;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Request, Uri};
use axum::Router;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use object_storage::ObjectStorage;
pub use observe::router as metrics_router;
pub use run_sync::sync_error_status;
pub use state::{apply_invalidation, ApiSettings, AppState};

/// Every route, registered with its OpenAPI description.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(ui::index))
        .routes(routes!(ui::asset))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(observe::serve))
        .routes(routes!(users::create_workspace))
        .routes(routes!(users::create_user))
        .routes(routes!(users::add_user))
        .routes(routes!(users::create_token))
        .routes(routes!(users::impersonate))
        .routes(routes!(users::whoami))
        .routes(routes!(users::list_tokens))
        .routes(routes!(users::delete_token))
        .routes(routes!(login::login))
        .routes(routes!(login::login_code))
        .routes(routes!(login::logout))
        .routes(routes!(users::list_workspaces))
        .routes(routes!(groups::create))
        .routes(routes!(groups::add_user))
        .routes(routes!(groups::list))
        .routes(routes!(folders::create))
        .routes(routes!(folders::list))
        .routes(routes!(acls::add))
        .routes(routes!(acls::remove))
        .routes(routes!(users::workspace_whoami))
        .routes(routes!(scripts::create))
        .routes(routes!(scripts::get_by_path))
        .routes(routes!(scripts::get_by_hash))
        .routes(routes!(scripts::exists))
        .routes(routes!(scripts::history))
        .routes(routes!(scripts::list))
        .routes(routes!(scripts::archive))
        .routes(routes!(scripts::delete))
        .routes(routes!(flows::create))
        .routes(routes!(flows::update))
        .routes(routes!(flows::get))
        .routes(routes!(flows::get_version))
        .routes(routes!(flows::latest_version))
        .routes(routes!(flows::history))
        .routes(routes!(flows::list))
        .routes(routes!(flows::archive))
        .routes(routes!(flows::delete))
        .routes(routes!(run_async::run_by_path, probe::run_by_path))
        .routes(routes!(run_async::run_by_hash, probe::run_by_hash))
        .routes(routes!(
            run_sync::post_by_path,
            run_sync::get_by_path,
            probe::wait_by_path
        ))
        .routes(routes!(
            run_sync::post_by_hash,
            run_sync::get_by_hash,
            probe::wait_by_hash
        ))
        .routes(routes!(
            run_stream::post_by_path,
            run_stream::get_by_path,
            probe::stream_by_path
        ))
        .routes(routes!(
            run_stream::post_by_hash,
            run_stream::get_by_hash,
            probe::stream_by_hash
        ))
        .routes(routes!(
            run_async::run_flow_by_path,
            probe::run_flow_by_path
        ))
        .routes(routes!(
            run_async::run_flow_by_version,
            probe::run_flow_by_version
        ))
        .routes(routes!(
            run_sync::post_flow_by_path,
            run_sync::get_flow_by_path,
            probe::wait_flow_by_path
        ))
        .routes(routes!(
            run_sync::post_flow_by_version,
            run_sync::get_flow_by_version,
            probe::wait_flow_by_version
        ))
        .routes(routes!(
            run_stream::post_flow_by_path,
            run_stream::get_flow_by_path,
            probe::stream_flow_by_path
        ))
        .routes(routes!(
            run_stream::post_flow_by_version,
            run_stream::get_flow_by_version,
            probe::stream_flow_by_version
        ))
        .routes(routes!(run_stream::getupdate_sse))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::get_completed))
        .routes(routes!(jobs::get_result))
        .routes(routes!(jobs::get_result_maybe))
        .routes(routes!(jobs::get_logs))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::list))
        .routes(routes!(
            object_storage::get_settings,
            object_storage::set_settings
        ))
        .routes(routes!(job_helpers::download_s3_file))
        .routes(routes!(job_helpers::upload_s3_file))
        .routes(routes!(job_helpers::delete_s3_file))
        .routes(routes!(webhook_triggers::create))
        .routes(routes!(webhook_triggers::list))
        .routes(routes!(webhook_triggers::get))
        .routes(routes!(webhook_triggers::update))
        .routes(routes!(webhook_triggers::set_enabled))
        .routes(routes!(webhook_triggers::delete))
        .routes(routes!(hooks::receive))
}

/// The OpenAPI document of every route.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, doc) = documented_routes().split_for_parts();
    let mut doc = openapi::normalise(doc);
    doc.info.title = "Millrace".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not served on {}", uri.path()))
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config().max_body_size;
    let (router, _) = documented_routes().split_for_parts();
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::limit,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(observe::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    // The route's template and the path, never the query: it may hold a
                    // job's arguments or a credential, and spans may leave for an OTLP collector.
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or(observe::UNMATCHED, |matched| matched.as_str());
                    let span = tracing::info_span!("http", method = %req.method(), route, path = req.uri().path());
                    if crate::telemetry::exporting() {
                        let parent = request_args::traceparent(req.headers());
                        crate::telemetry::continue_trace(&span, parent.as_ref());
                    }
                    span
                })
                .on_response(
                    |res: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                        tracing::debug!(target: "millrace::access", status = res.status().as_u16(), latency_ms = latency.as_millis() as u64, "response");
                    },
                ),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_only_registered_with_their_documentation() {
        // `OpenApiRouter::route` would add an undocumented route: it must never be used.
        for (name, source) in [
            ("mod.rs", include_str!("mod.rs")),
            ("run_async.rs", include_str!("run_async.rs")),
        ] {
            let needle = concat!(".", "route(");
            assert!(
                !source.contains(needle),
                "{name} registers a route without documentation"
            );
        }
        let doc = openapi_document();
        for path in [
            "/api/w/{workspace}/jobs/run/p/{path}",
            "/api/openapi.json",
            "/healthz",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path} missing");
        }
    }
}
