//! Async webhooks (SPEC §1): answer 201 with the job id once the job is durably queued. Also
//! how every run route resolves and authorises what it names: a script by path or hash, a flow
//! by path or version.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Extension;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::Authed;
use super::multipart::RunBody;
use super::object_storage::ObjectStorage;
use super::run_target::{self, RunTarget};
use super::{authorize, submit, AppState};
use crate::auth::Access;
use crate::auth::Action;
use crate::domain::{JobKind, RunnablePath, ScriptHash, WorkspaceId};

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

#[derive(Deserialize)]
pub struct ByVersion {
    workspace: String,
    version: String,
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
    authorize::scope(&access.principal, Action::RunScript(path.as_str()))?;
    let target = run_target::by_path(state, &ws, &path).await?;
    authorize::read(state, &ws, &access, JobKind::Script, path.as_str()).await?;
    Ok((ws, access, target))
}

/// Authorises the caller in the workspace and resolves the flow named by a path.
pub async fn resolve_flow_path(
    state: &AppState,
    authed: &Authed,
    params: &ByPath,
) -> ApiResult<(WorkspaceId, Access, RunTarget)> {
    let ws = WorkspaceId::parse(&params.workspace)?;
    let path = RunnablePath::parse(&params.path)?;
    let access = state.auth().access(&authed.0, &ws).await?;
    authorize::scope(&access.principal, Action::RunFlow(path.as_str()))?;
    authorize::read(state, &ws, &access, JobKind::Flow, path.as_str()).await?;
    let target = run_target::flow_by_path(state, &ws, &path).await?;
    Ok((ws, access, target))
}

/// Authorises the caller in the workspace and resolves the flow version named by its id.
pub async fn resolve_flow_version(
    state: &AppState,
    authed: &Authed,
    params: &ByVersion,
) -> ApiResult<(WorkspaceId, Access, RunTarget)> {
    let ws = WorkspaceId::parse(&params.workspace)?;
    let version = params
        .version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid flow version {:?}: expected a positive integer",
                params.version
            ))
        })?;
    let access = state.auth().access(&authed.0, &ws).await?;
    let target = run_target::flow_by_version(state, &ws, version).await?;
    authorize::run(state, &ws, &access, JobKind::Flow, target.path.as_str())
        .await
        .map_err(|e| match e {
            // Do not reveal that a version exists at a path the caller cannot read.
            ApiError::NotFound(_) => {
                ApiError::not_found(format!("flow version {version} not found"))
            }
            other => other,
        })?;
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
    authorize::run(state, &ws, &access, JobKind::Script, target.path.as_str()).await?;
    Ok((ws, access, target))
}

async fn run_async(
    state: &AppState,
    storage: &ObjectStorage,
    (ws, access, target): (WorkspaceId, Access, RunTarget),
    body: RunBody,
) -> ApiResult<impl IntoResponse> {
    let mut opts = body.options()?;
    let (args, mut uploads) = body.into_args(state, storage, &ws, &mut opts).await?;
    let id = uploads.kept_if_ok(submit::submit(state, &ws, &access, &target, args, &opts).await)?;
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
    Extension(storage): Extension<ObjectStorage>,
    body: RunBody,
) -> ApiResult<impl IntoResponse> {
    let resolved = resolve_path(&state, &authed, &params).await?;
    run_async(&state, &storage, resolved, body).await
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
    Extension(storage): Extension<ObjectStorage>,
    body: RunBody,
) -> ApiResult<impl IntoResponse> {
    let resolved = resolve_hash(&state, &authed, &params).await?;
    run_async(&state, &storage, resolved, body).await
}

/// Run the latest version of the flow at a path.
#[utoipa::path(post, path = "/api/w/{workspace}/jobs/run/f/{*path}", tag = "run",
    params(("workspace" = String, Path), ("path" = String, Path, description = "u/<user>/<name> or f/<folder>/<name>")),
    request_body(content = Object, description = "the flow's arguments (SPEC §1)"),
    responses((status = 201, description = "the job id", body = String),
              (status = 400), (status = 401), (status = 404), (status = 409), (status = 413)))]
pub async fn run_flow_by_path(
    State(state): State<AppState>,
    Path(params): Path<ByPath>,
    authed: Authed,
    Extension(storage): Extension<ObjectStorage>,
    body: RunBody,
) -> ApiResult<impl IntoResponse> {
    let resolved = resolve_flow_path(&state, &authed, &params).await?;
    run_async(&state, &storage, resolved, body).await
}

/// Run exactly one version of a flow, even after later updates or archiving.
#[utoipa::path(post, path = "/api/w/{workspace}/jobs/run/fv/{version}", tag = "run",
    params(("workspace" = String, Path), ("version" = String, Path)),
    request_body(content = Object, description = "the flow's arguments (SPEC §1)"),
    responses((status = 201, description = "the job id", body = String),
              (status = 400), (status = 401), (status = 404), (status = 409), (status = 413)))]
pub async fn run_flow_by_version(
    State(state): State<AppState>,
    Path(params): Path<ByVersion>,
    authed: Authed,
    Extension(storage): Extension<ObjectStorage>,
    body: RunBody,
) -> ApiResult<impl IntoResponse> {
    let resolved = resolve_flow_version(&state, &authed, &params).await?;
    run_async(&state, &storage, resolved, body).await
}
