//! Async webhooks (SPEC §1): answer 201 with the job id once the job is durably queued.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use chrono::Utc;
use serde::Deserialize;

use super::error::ApiResult;
use super::extract::{form_urlencoded_pairs, Authed, RawBody};
use super::request_args::{build_args, RunOptions};
use super::run_target::{self, RunTarget};
use super::{submit, AppState};
use crate::auth::Access;
use crate::domain::{JobId, RunnablePath, ScriptHash, WorkspaceId};

#[derive(Deserialize)]
pub struct ByPath {
    workspace: String,
    path: String,
}

#[derive(Deserialize)]
pub struct ByHash {
    workspace: String,
    hash: String,
}

/// Authorises the caller in the workspace and resolves the target named by a path.
pub async fn resolve_path(
    state: &AppState,
    authed: &Authed,
    params: &ByPath,
) -> ApiResult<(WorkspaceId, Access, RunTarget)> {
    let ws = WorkspaceId::parse(&params.workspace)?;
    let path = RunnablePath::parse(&params.path)?;
    let access = state.auth().access(&authed.0, &ws).await?;
    let target = run_target::by_path(state, &ws, &path).await?;
    Ok((ws, access, target))
}

/// Authorises the caller in the workspace and resolves the target named by a hash.
pub async fn resolve_hash(
    state: &AppState,
    authed: &Authed,
    params: &ByHash,
) -> ApiResult<(WorkspaceId, Access, RunTarget)> {
    let ws = WorkspaceId::parse(&params.workspace)?;
    let hash = ScriptHash::parse(&params.hash)?;
    let access = state.auth().access(&authed.0, &ws).await?;
    let target = run_target::by_hash(state, &ws, &hash).await?;
    Ok((ws, access, target))
}

async fn run_async(
    state: &AppState,
    (ws, access, target): (WorkspaceId, Access, RunTarget),
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<impl IntoResponse> {
    let query = uri
        .query()
        .map(|q| form_urlencoded_pairs(q).collect())
        .unwrap_or_default();
    let opts = RunOptions::parse(query, Utc::now())?;
    let args = build_args(headers, body, &opts, &state.config().include_headers)?;
    let id: JobId = submit::submit(state, &ws, &access, &target, args, &opts).await?;
    Ok((StatusCode::CREATED, id.to_string()))
}

/// Run the live version of the script at a path.
#[utoipa::path(post, path = "/api/w/{workspace}/jobs/run/p/{*path}", tag = "run",
    params(("workspace" = String, Path), ("path" = String, Path, description = "u/<user>/<name> or f/<folder>/<name>")),
    request_body(content = Object, description = "the job's arguments (SPEC §1)"),
    responses((status = 201, description = "the job id", body = String),
              (status = 400), (status = 401), (status = 404), (status = 409), (status = 413)))]
pub async fn run_by_path(
    State(state): State<AppState>,
    Path(params): Path<ByPath>,
    authed: Authed,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<impl IntoResponse> {
    let resolved = resolve_path(&state, &authed, &params).await?;
    run_async(&state, resolved, &uri, &headers, &body).await
}

/// Run exactly one version of a script, even after it was replaced.
#[utoipa::path(post, path = "/api/w/{workspace}/jobs/run/h/{hash}", tag = "run",
    params(("workspace" = String, Path), ("hash" = String, Path)),
    request_body(content = Object, description = "the job's arguments (SPEC §1)"),
    responses((status = 201, description = "the job id", body = String),
              (status = 400), (status = 401), (status = 404), (status = 409), (status = 413)))]
pub async fn run_by_hash(
    State(state): State<AppState>,
    Path(params): Path<ByHash>,
    authed: Authed,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<impl IntoResponse> {
    let resolved = resolve_hash(&state, &authed, &params).await?;
    run_async(&state, resolved, &uri, &headers, &body).await
}

/// Webhook providers probe URLs with HEAD: 200, no token needed, no job created.
#[utoipa::path(head, path = "/api/w/{workspace}/jobs/run/p/{*path}", tag = "run",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200)))]
pub async fn probe_by_path() -> StatusCode {
    StatusCode::OK
}

#[utoipa::path(head, path = "/api/w/{workspace}/jobs/run/h/{hash}", tag = "run",
    params(("workspace" = String, Path), ("hash" = String, Path)),
    responses((status = 200)))]
pub async fn probe_by_hash() -> StatusCode {
    StatusCode::OK
}
