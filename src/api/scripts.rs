//! Scripts (SPEC §5): immutable versions addressed by path (the live one) or by hash.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::AppState;
use super::{authorize, run_target};
use crate::auth::{Access, Action};
use crate::domain::{JobKind, RunnablePath, ScriptHash, ScriptLang, Tag, WorkspaceId};
use crate::store::scripts::{self, CreateOutcome, NewScript, Script};

#[derive(Deserialize)]
pub struct ScriptPath {
    workspace: String,
    path: String,
}

#[derive(Deserialize)]
pub struct HashPath {
    workspace: String,
    hash: String,
}

/// A caller allowed to read scripts in the workspace (item rights are checked per path).
async fn reader(state: &AppState, authed: &Authed, ws: &str) -> ApiResult<(WorkspaceId, Access)> {
    let (ws, access) = state.access(authed, ws).await?;
    authorize::scope(&access.principal, Action::ReadScripts)?;
    Ok((ws, access))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateScript {
    path: String,
    content: String,
    language: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    description: String,
    schema: Option<serde_json::Value>,
    parent_hash: Option<String>,
    tag: Option<String>,
    /// Seconds; the job is killed past it.
    timeout: Option<i32>,
    /// Run its jobs in a dedicated process per worker slot that imports the script once and
    /// calls `main` for job after job: module state persists between jobs (python3 only).
    #[serde(default)]
    dedicated_worker: bool,
    kind: Option<String>,
}

fn new_version_hash(ws: &WorkspaceId, body: &CreateScript) -> ScriptHash {
    let mut digest = Sha256::new();
    for part in [ws.as_str(), &body.path, &body.language, &body.content] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    // Saving the same content twice still makes two versions, so mix in the moment and entropy.
    digest.update(
        Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_le_bytes(),
    );
    digest.update(rand::random::<[u8; 8]>());
    ScriptHash::from_digest(&digest.finalize())
}

/// Create a new version; `parent_hash` must name the live version if there is one.
#[utoipa::path(post, path = "/api/w/{workspace}/scripts/create", tag = "scripts",
    params(("workspace" = String, Path)), request_body = CreateScript,
    responses((status = 201, description = "the new version's hash", body = String), (status = 400)))]
pub async fn create(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    JsonBody(body): JsonBody<CreateScript>,
) -> ApiResult<(StatusCode, String)> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::scope(&access.principal, Action::WriteScripts)?;
    let path = RunnablePath::parse(&body.path)?;
    authorize::write(&state, &ws, &access, JobKind::Script, path.as_str()).await?;
    let language: ScriptLang = body.language.parse().map_err(ApiError::BadRequest)?;
    let parent_hash = body
        .parent_hash
        .as_deref()
        .map(ScriptHash::parse)
        .transpose()?;
    let tag = body.tag.as_deref().map(Tag::parse).transpose()?;
    if let Some(timeout) = body.timeout {
        if timeout <= 0 {
            return Err(ApiError::bad_request(
                "timeout must be a positive number of seconds",
            ));
        }
    }
    let hash = new_version_hash(&ws, &body);
    let script = NewScript {
        hash: hash.clone(),
        path: path.clone(),
        parent_hash,
        content: body.content,
        language,
        summary: body.summary,
        description: body.description,
        schema: body.schema,
        tag: tag.map(|t| t.to_string()),
        timeout: body.timeout,
        dedicated_worker: body.dedicated_worker,
        kind: body.kind.unwrap_or_else(|| "script".into()),
        created_by: access.username.to_string(),
    };
    match scripts::create(state.pool(), &ws, &script).await? {
        CreateOutcome::Created => {}
        CreateOutcome::PathConflict { live } => {
            return Err(ApiError::bad_request(format!(
                "Path conflict for {path}: a live version {live} exists; send its hash as parent_hash to replace it"
            )))
        }
        CreateOutcome::BadParent => {
            return Err(ApiError::bad_request(format!(
                "parent_hash does not name the live version at {path}"
            )))
        }
    }
    run_target::invalidate(&state, &ws, &path).await?;
    Ok((StatusCode::CREATED, hash.to_string()))
}

/// The live version at a path (or the newest archived one).
#[utoipa::path(get, path = "/api/w/{workspace}/scripts/get/p/{*path}", tag = "scripts",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = Script), (status = 404)))]
pub async fn get_by_path(
    State(state): State<AppState>,
    Path(params): Path<ScriptPath>,
    authed: Authed,
) -> ApiResult<Json<Script>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let path = RunnablePath::parse(&params.path)?;
    authorize::read(&state, &ws, &access, JobKind::Script, path.as_str()).await?;
    scripts::latest_by_path(state.pool(), &ws, &path)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("script not found at path {path}")))
}

/// One version.
#[utoipa::path(get, path = "/api/w/{workspace}/scripts/get/h/{hash}", tag = "scripts",
    params(("workspace" = String, Path), ("hash" = String, Path)),
    responses((status = 200, body = Script), (status = 404)))]
pub async fn get_by_hash(
    State(state): State<AppState>,
    Path(params): Path<HashPath>,
    authed: Authed,
) -> ApiResult<Json<Script>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let hash = ScriptHash::parse(&params.hash)?;
    let not_found = || ApiError::not_found(format!("script not found with hash {hash}"));
    let script = scripts::by_hash(state.pool(), &ws, &hash)
        .await?
        .ok_or_else(not_found)?;
    authorize::read(&state, &ws, &access, JobKind::Script, script.path.as_str())
        .await
        .map_err(|_| not_found())?;
    Ok(Json(script))
}

/// Whether a live version exists at the path.
#[utoipa::path(get, path = "/api/w/{workspace}/scripts/exists/p/{*path}", tag = "scripts",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = bool)))]
pub async fn exists(
    State(state): State<AppState>,
    Path(params): Path<ScriptPath>,
    authed: Authed,
) -> ApiResult<Json<bool>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let path = RunnablePath::parse(&params.path)?;
    if !authorize::can_read(&state, &ws, &access, JobKind::Script, path.as_str()).await? {
        return Ok(Json(false));
    }
    let script = scripts::latest_by_path(state.pool(), &ws, &path).await?;
    Ok(Json(script.is_some_and(|s| !s.archived)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryItem {
    script_hash: String,
    created_at: DateTime<Utc>,
    deployment_msg: Option<String>,
}

/// Every version at a path, newest first.
#[utoipa::path(get, path = "/api/w/{workspace}/scripts/history/p/{*path}", tag = "scripts",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = Vec<HistoryItem>), (status = 404)))]
pub async fn history(
    State(state): State<AppState>,
    Path(params): Path<ScriptPath>,
    authed: Authed,
) -> ApiResult<Json<Vec<HistoryItem>>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let path = RunnablePath::parse(&params.path)?;
    authorize::read(&state, &ws, &access, JobKind::Script, path.as_str()).await?;
    let versions = scripts::history(state.pool(), &ws, &path).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!(
            "script not found at path {path}"
        )));
    }
    Ok(Json(
        versions
            .into_iter()
            .map(|(script_hash, created_at)| HistoryItem {
                script_hash,
                created_at,
                deployment_msg: None,
            })
            .collect(),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only paths starting with this.
    path_start: Option<String>,
}

/// The live version of every script.
#[utoipa::path(get, path = "/api/w/{workspace}/scripts/list", tag = "scripts",
    params(("workspace" = String, Path), ListQuery),
    responses((status = 200, body = Vec<Script>)))]
pub async fn list(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<Script>>> {
    let (ws, access) = reader(&state, &authed, &params.workspace).await?;
    let start = query.path_start.unwrap_or_default();
    let mut visible = Vec::new();
    for script in scripts::list_live(state.pool(), &ws, &start).await? {
        if authorize::can_read(&state, &ws, &access, JobKind::Script, script.path.as_str()).await? {
            visible.push(script);
        }
    }
    Ok(Json(visible))
}

async fn change_path(
    state: &AppState,
    authed: &Authed,
    params: &ScriptPath,
    change: ScriptChange,
) -> ApiResult<String> {
    let (ws, access) = state.access(authed, &params.workspace).await?;
    authorize::scope(&access.principal, Action::WriteScripts)?;
    let path = RunnablePath::parse(&params.path)?;
    authorize::read(state, &ws, &access, JobKind::Script, path.as_str()).await?;
    authorize::write(state, &ws, &access, JobKind::Script, path.as_str()).await?;
    let touched = match change {
        ScriptChange::Archive => scripts::archive_path(state.pool(), &ws, &path).await?,
        ScriptChange::Delete => scripts::delete_path(state.pool(), &ws, &path).await?,
    };
    if touched == 0 {
        return Err(ApiError::not_found(format!(
            "script not found at path {path}"
        )));
    }
    run_target::invalidate(state, &ws, &path).await?;
    Ok(path.to_string())
}

enum ScriptChange {
    Archive,
    Delete,
}

/// Archive every version at a path; hash links keep working.
#[utoipa::path(post, path = "/api/w/{workspace}/scripts/archive/p/{*path}", tag = "scripts",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200), (status = 404)))]
pub async fn archive(
    State(state): State<AppState>,
    Path(params): Path<ScriptPath>,
    authed: Authed,
) -> ApiResult<String> {
    change_path(&state, &authed, &params, ScriptChange::Archive).await
}

/// Delete every version at a path.
#[utoipa::path(post, path = "/api/w/{workspace}/scripts/delete/p/{*path}", tag = "scripts",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(params): Path<ScriptPath>,
    authed: Authed,
) -> ApiResult<String> {
    change_path(&state, &authed, &params, ScriptChange::Delete).await
}
