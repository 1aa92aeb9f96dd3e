//! `GET /api/openapi.json`: the OpenAPI document built from the same annotations that register
//! the routes (utoipa-axum), so a route cannot exist without being documented.

use axum::extract::State;
use axum::Json;
use utoipa::openapi::OpenApi;

use super::AppState;

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_json(State(state): State<AppState>) -> Json<OpenApi> {
    Json(state.openapi().clone())
}

/// Axum's catch-all `{*name}` is OpenAPI's plain `{name}`.
pub fn normalise(mut doc: OpenApi) -> OpenApi {
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    doc
}
