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
use super::submit::Submitted;
use super::{authorize, idempotency, submit, AppState};
use crate::auth::Access;
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
    resolve_named(state, authed, params, JobKind::Script).await
}

/// Authorises the caller in the workspace and resolves the flow named by a path.
pub async fn resolve_flow_path(
    state: &AppState,
    authed: &Authed,
    params: &ByPath,
) -> ApiResult<(WorkspaceId, Access, RunTarget)> {
    resolve_named(state, authed, params, JobKind::Flow).await
}

/// The run scope and read access first (404 for what the caller may not see), then the live
/// version of the script or flow at the path.
async fn resolve_named(
    state: &AppState,
    authed: &Authed,
    params: &ByPath,
    kind: JobKind,
) -> ApiResult<(WorkspaceId, Access, RunTarget)> {
    let ws = WorkspaceId::parse(&params.workspace)?;
    let path = RunnablePath::parse(&params.path)?;
    let access = state.auth().access(&authed.0, &ws).await?;
    authorize::run(state, &ws, &access, kind, path.as_str()).await?;
    let target = match kind {
        JobKind::Script => run_target::by_path(state, &ws, &path).await?,
        JobKind::Flow => run_target::flow_by_path(state, &ws, &path).await?,
    };
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
    submit::check_schedule(state, &opts)?;
    opts.once = idempotency::from_header(state, body.headers(), &access, &target)?;
    let (args, mut uploads) = body.into_args(state, storage, &ws, &mut opts).await?;
    let id = opts.job_id();
    let submitted = submit::submit(state, &ws, &access, &target, args, &opts).await;
    let id = match uploads.kept_if_ok(submitted)? {
        Submitted::Queued => id,
        Submitted::Repeat(first) => {
            uploads.discard();
            first
        }
    };
    Ok((StatusCode::CREATED, id.to_string()))
}

macro_rules! async_route {
    ($name:ident, $path:literal, $target:literal, $params:ty, $resolve:ident, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "run",
            params(("workspace" = String, Path), ($target = String, Path)),
            request_body(content = Object, description = "the job's arguments (SPEC §1)"),
            responses((status = 201, description = "the job id", body = String),
                      (status = 400), (status = 401), (status = 404), (status = 409), (status = 413)))]
        pub async fn $name(
            State(state): State<AppState>,
            Path(params): Path<$params>,
            authed: Authed,
            Extension(storage): Extension<ObjectStorage>,
            body: RunBody,
        ) -> ApiResult<impl IntoResponse> {
            let resolved = $resolve(&state, &authed, &params).await?;
            run_async(&state, &storage, resolved, body).await
        }
    };
}

async_route!(
    run_by_path,
    "/api/w/{workspace}/jobs/run/p/{*path}",
    "path",
    ByPath,
    resolve_path,
    "Run the live version of the script at a path (u/<user>/<name> or f/<folder>/<name>)."
);
async_route!(
    run_by_hash,
    "/api/w/{workspace}/jobs/run/h/{hash}",
    "hash",
    ByHash,
    resolve_hash,
    "Run exactly one version of a script, even after it was replaced."
);
async_route!(
    run_flow_by_path,
    "/api/w/{workspace}/jobs/run/f/{*path}",
    "path",
    ByPath,
    resolve_flow_path,
    "Run the latest version of the flow at a path."
);
async_route!(
    run_flow_by_version,
    "/api/w/{workspace}/jobs/run/fv/{version}",
    "version",
    ByVersion,
    resolve_flow_version,
    "Run exactly one version of a flow, even after later updates or archiving."
);
