//! Flows (SPEC §5): OpenFlow definitions at a path, each create/update an immutable version
//! whose id `/run/fv/{version}` runs. A definition that cannot run is refused here (400 naming
//! the module), never at run time.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::{authorize, AppState};
use crate::auth::{Access, Action};
use crate::domain::{JobKind, RunnablePath, Tag, WorkspaceId};
use crate::flows::FlowDef;
use crate::store::flows::{self, Flow, NewFlowVersion, SaveMode, SaveOutcome};
use crate::store::scripts;

#[derive(Deserialize)]
pub struct FlowPath {
    workspace: String,
    path: String,
}

#[derive(Deserialize)]
pub struct VersionPath {
    workspace: String,
    version: String,
    path: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SaveFlow {
    path: Option<String>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    description: String,
    /// The OpenFlow `value`: `modules`, `failure_module`, `early_return`, …
    #[schema(value_type = Object)]
    value: Value,
    #[schema(value_type = Object)]
    schema: Option<Value>,
    /// The worker tag flow jobs go to (steps may name their own).
    tag: Option<String>,
    deployment_message: Option<String>,
}

async fn reader(state: &AppState, authed: &Authed, ws: &str) -> ApiResult<(WorkspaceId, Access)> {
    let (ws, access) = state.access(authed, ws).await?;
    authorize::scope(&access.principal, Action::ReadFlows)?;
    Ok((ws, access))
}

async fn writer(
    state: &AppState,
    authed: &Authed,
    ws: &str,
    path: &RunnablePath,
) -> ApiResult<(WorkspaceId, Access)> {
    let (ws, access) = state.access(authed, ws).await?;
    authorize::scope(&access.principal, Action::WriteFlows)?;
    authorize::write(state, &ws, &access, JobKind::Flow, path.as_str()).await?;
    Ok((ws, access))
}

/// Checks a definition: it parses, and every script it names exists and can be read by the
/// caller.
async fn check(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    value: &Value,
) -> ApiResult<()> {
    // Compiling every expression is CPU work: off the async threads.
    let owned = value.clone();
    let def = tokio::task::spawn_blocking(move || FlowDef::check(&owned))
        .await
        .map_err(|e| ApiError::Internal {
            context: "checking a flow",
            detail: e.to_string(),
        })?
        .map_err(|e| ApiError::bad_request(e.0))?;
    for script in def.script_refs() {
        let missing = || {
            let which = script.hash.as_ref().map_or_else(
                || script.path.to_string(),
                |h| format!("{} ({h})", script.path),
            );
            ApiError::bad_request(format!(
                "module {}: script {which} not found",
                script.module
            ))
        };
        let found = match &script.hash {
            Some(hash) => scripts::by_hash(state.pool(), ws, hash)
                .await?
                .filter(|s| s.path == script.path),
            None => scripts::latest_by_path(state.pool(), ws, &script.path)
                .await?
                .filter(|s| !s.archived),
        };
        if found.is_none()
            || !authorize::can_read(state, ws, access, JobKind::Script, script.path.as_str())
                .await?
        {
            return Err(missing());
        }
    }
    Ok(())
}

async fn save(
    state: &AppState,
    authed: &Authed,
    ws: &str,
    path: RunnablePath,
    body: SaveFlow,
    mode: SaveMode,
) -> ApiResult<i64> {
    let (ws, access) = writer(state, authed, ws, &path).await?;
    check(state, &ws, &access, &body.value).await?;
    let tag = body.tag.as_deref().map(Tag::parse).transpose()?;
    let version = NewFlowVersion {
        path: path.clone(),
        summary: body.summary,
        description: body.description,
        value: body.value,
        schema: body.schema,
        tag: tag.map(|t| t.to_string()),
        deployment_msg: body.deployment_message,
        created_by: access.username.to_string(),
    };
    match flows::save(state.pool(), &ws, &version, mode).await? {
        SaveOutcome::Saved(id) => Ok(id),
        SaveOutcome::AlreadyExists => Err(ApiError::bad_request(format!(
            "Path conflict: a flow already exists at {path}; use flows/update/{path}"
        ))),
        SaveOutcome::NotFound => Err(ApiError::not_found(format!(
            "flow not found at path {path}"
        ))),
    }
}

/// Create a flow; its first version.
#[utoipa::path(post, path = "/api/w/{workspace}/flows/create", tag = "flows",
    params(("workspace" = String, Path)), request_body = SaveFlow,
    responses((status = 201, description = "the path", body = String), (status = 400), (status = 403)))]
pub async fn create(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    JsonBody(body): JsonBody<SaveFlow>,
) -> ApiResult<(StatusCode, String)> {
    let raw = body
        .path
        .clone()
        .ok_or_else(|| ApiError::bad_request("path is required"))?;
    let path = RunnablePath::parse(&raw)?;
    save(
        &state,
        &authed,
        &params.workspace,
        path.clone(),
        body,
        SaveMode::Create,
    )
    .await?;
    Ok((StatusCode::CREATED, path.to_string()))
}

/// Add a new version to a flow.
#[utoipa::path(post, path = "/api/w/{workspace}/flows/update/{*path}", tag = "flows",
    params(("workspace" = String, Path), ("path" = String, Path)), request_body = SaveFlow,
    responses((status = 200, description = "the path", body = String), (status = 400), (status = 404)))]
pub async fn update(
    State(state): State<AppState>,
    Path(params): Path<FlowPath>,
    authed: Authed,
    JsonBody(body): JsonBody<SaveFlow>,
) -> ApiResult<String> {
    let path = RunnablePath::parse(&params.path)?;
    if let Some(other) = body.path.as_deref().filter(|p| *p != path.as_str()) {
        return Err(ApiError::bad_request(format!(
            "the body's path {other:?} differs from the route's; flows cannot be renamed"
        )));
    }
    save(
        &state,
        &authed,
        &params.workspace,
        path.clone(),
        body,
        SaveMode::Update,
    )
    .await?;
    Ok(path.to_string())
}

async fn readable(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    path: &RunnablePath,
) -> ApiResult<()> {
    authorize::read(state, ws, access, JobKind::Flow, path.as_str()).await
}

/// The latest version of a flow, with its `version_id`.
#[utoipa::path(get, path = "/api/w/{workspace}/flows/get/{*path}", tag = "flows",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = Flow), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    Path(params): Path<FlowPath>,
    authed: Authed,
) -> ApiResult<Json<Flow>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let path = RunnablePath::parse(&params.path)?;
    readable(&state, &ws, &access, &path).await?;
    flows::latest(state.pool(), &ws, &path)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("flow not found at path {path}")))
}

/// One version of a flow.
#[utoipa::path(get, path = "/api/w/{workspace}/flows/get/v/{version}/p/{*path}", tag = "flows",
    params(("workspace" = String, Path), ("version" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = Flow), (status = 404)))]
pub async fn get_version(
    State(state): State<AppState>,
    Path(at): Path<VersionPath>,
    authed: Authed,
) -> ApiResult<Json<Flow>> {
    let (ws, access) = reader(&state, &authed, &at.workspace).await?;
    let path = RunnablePath::parse(&at.path)?;
    let not_found = || {
        ApiError::not_found(format!(
            "flow version {} not found at path {path}",
            at.version
        ))
    };
    let version: i64 = at.version.parse().map_err(|_| not_found())?;
    readable(&state, &ws, &access, &path).await?;
    flows::version(state.pool(), &ws, version)
        .await?
        .filter(|f| f.path == path.as_str())
        .map(Json)
        .ok_or_else(not_found)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LatestVersion {
    id: i64,
    created_at: DateTime<Utc>,
}

/// The id of a flow's latest version.
#[utoipa::path(get, path = "/api/w/{workspace}/flows/get_latest_version/{*path}", tag = "flows",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = LatestVersion), (status = 404)))]
pub async fn latest_version(
    State(state): State<AppState>,
    Path(params): Path<FlowPath>,
    authed: Authed,
) -> ApiResult<Json<LatestVersion>> {
    let Json(flow) = get(State(state), Path(params), authed).await?;
    Ok(Json(LatestVersion {
        id: flow.version_id,
        created_at: flow.edited_at,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryItem {
    id: i64,
    created_at: DateTime<Utc>,
    deployment_msg: Option<String>,
}

/// Every version of a flow, newest first.
#[utoipa::path(get, path = "/api/w/{workspace}/flows/history/p/{*path}", tag = "flows",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = Vec<HistoryItem>), (status = 404)))]
pub async fn history(
    State(state): State<AppState>,
    Path(params): Path<FlowPath>,
    authed: Authed,
) -> ApiResult<Json<Vec<HistoryItem>>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let path = RunnablePath::parse(&params.path)?;
    readable(&state, &ws, &access, &path).await?;
    let versions = flows::history(state.pool(), &ws, &path).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!(
            "flow not found at path {path}"
        )));
    }
    Ok(Json(
        versions
            .into_iter()
            .map(|(id, created_at, deployment_msg)| HistoryItem {
                id,
                created_at,
                deployment_msg,
            })
            .collect(),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only paths starting with this.
    path_start: Option<String>,
    /// Include archived flows.
    show_archived: Option<bool>,
}

/// The latest version of every flow the caller can read.
#[utoipa::path(get, path = "/api/w/{workspace}/flows/list", tag = "flows",
    params(("workspace" = String, Path), ListQuery),
    responses((status = 200, body = Vec<Flow>)))]
pub async fn list(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<Flow>>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let start = query.path_start.unwrap_or_default();
    let all = flows::list(
        state.pool(),
        &ws,
        &start,
        query.show_archived.unwrap_or(false),
    )
    .await?;
    let mut visible = Vec::new();
    for flow in all {
        if authorize::can_read(&state, &ws, &access, JobKind::Flow, &flow.path).await? {
            visible.push(flow);
        }
    }
    Ok(Json(visible))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct ArchiveBody {
    /// false revives an archived flow; default true.
    archived: Option<bool>,
}

/// Archive a flow (its versions keep running by id), or revive it.
#[utoipa::path(post, path = "/api/w/{workspace}/flows/archive/{*path}", tag = "flows",
    params(("workspace" = String, Path), ("path" = String, Path)), request_body = ArchiveBody,
    responses((status = 200), (status = 404)))]
pub async fn archive(
    State(state): State<AppState>,
    Path(params): Path<FlowPath>,
    authed: Authed,
    body: Option<Json<ArchiveBody>>,
) -> ApiResult<String> {
    let path = RunnablePath::parse(&params.path)?;
    let archived = body.and_then(|Json(b)| b.archived).unwrap_or(true);
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::scope(&access.principal, Action::WriteFlows)?;
    readable(&state, &ws, &access, &path).await?;
    authorize::write(&state, &ws, &access, JobKind::Flow, path.as_str()).await?;
    if !flows::set_archived(state.pool(), &ws, &path, archived).await? {
        return Err(ApiError::not_found(format!(
            "flow not found at path {path}"
        )));
    }
    Ok(path.to_string())
}

/// Delete a flow and every version of it.
#[utoipa::path(delete, path = "/api/w/{workspace}/flows/delete/{*path}", tag = "flows",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(params): Path<FlowPath>,
    authed: Authed,
) -> ApiResult<String> {
    let path = RunnablePath::parse(&params.path)?;
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::scope(&access.principal, Action::WriteFlows)?;
    readable(&state, &ws, &access, &path).await?;
    authorize::write(&state, &ws, &access, JobKind::Flow, path.as_str()).await?;
    if !flows::delete(state.pool(), &ws, &path).await? {
        return Err(ApiError::not_found(format!(
            "flow not found at path {path}"
        )));
    }
    Ok(path.to_string())
}
