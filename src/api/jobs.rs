//! Inspecting and controlling jobs (SPEC §2).

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::authorize;
use super::cancel::{self, Canceled};
use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::AppState;
use crate::auth::permissions::grantees;
use crate::auth::{Access, Action};
use crate::domain::{JobId, WorkspaceId};
use crate::store::jobs::{self, JobRecord, ListFilter, Viewer};

#[derive(Deserialize)]
pub struct JobPath {
    pub workspace: String,
    pub id: String,
}

fn parse_id(raw: &str) -> ApiResult<JobId> {
    Uuid::parse_str(raw).map_err(|e| ApiError::bad_request(format!("invalid job id {raw:?}: {e}")))
}

fn not_found(id: JobId) -> ApiError {
    ApiError::not_found(format!("job {id} not found"))
}

/// The job, if the caller may see it (404 otherwise, as for an unknown id).
pub async fn load(
    state: &AppState,
    authed: &Authed,
    params: &JobPath,
) -> ApiResult<(WorkspaceId, Access, JobRecord)> {
    let (ws, access) = state.access(authed, &params.workspace).await?;
    let id = parse_id(&params.id)?;
    let job = jobs::get(state.pool(), &ws, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    authorize::see_job(state, &ws, &access, &job).await?;
    Ok((ws, access, job))
}

/// A job, queued or completed.
#[utoipa::path(get, path = "/api/w/{workspace}/jobs_u/get/{id}", tag = "jobs",
    params(("workspace" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = JobRecord), (status = 404)))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(params): Path<JobPath>,
    authed: Authed,
) -> ApiResult<Json<JobRecord>> {
    let (_, _, job) = load(&state, &authed, &params).await?;
    Ok(Json(job))
}

/// A completed job; 404 while it is not completed.
#[utoipa::path(get, path = "/api/w/{workspace}/jobs_u/completed/get/{id}", tag = "jobs",
    params(("workspace" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = JobRecord), (status = 404)))]
pub async fn get_completed(
    State(state): State<AppState>,
    Path(params): Path<JobPath>,
    authed: Authed,
) -> ApiResult<Json<JobRecord>> {
    let (_, _, job) = load(&state, &authed, &params).await?;
    if !job.status.is_completed() {
        return Err(ApiError::not_found(format!(
            "job {} is not completed",
            job.id
        )));
    }
    Ok(Json(job))
}

/// The result of a completed job; 404 while it is not completed.
#[utoipa::path(get, path = "/api/w/{workspace}/jobs_u/completed/get_result/{id}", tag = "jobs",
    params(("workspace" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "the result JSON"), (status = 404)))]
pub async fn get_result(
    State(state): State<AppState>,
    Path(params): Path<JobPath>,
    authed: Authed,
) -> ApiResult<Json<Value>> {
    let Json(job) = get_completed(State(state), Path(params), authed).await?;
    Ok(Json(job.result.unwrap_or(Value::Null)))
}

/// Always `{completed, result, success, started}`.
#[utoipa::path(get, path = "/api/w/{workspace}/jobs_u/completed/get_result_maybe/{id}", tag = "jobs",
    params(("workspace" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "{completed, result, success, started}"), (status = 404)))]
pub async fn get_result_maybe(
    State(state): State<AppState>,
    Path(params): Path<JobPath>,
    authed: Authed,
) -> ApiResult<Json<Value>> {
    let (_, _, job) = load(&state, &authed, &params).await?;
    let completed = job.status.is_completed();
    Ok(Json(json!({
        "completed": completed,
        "result": if completed { job.result.clone() } else { None },
        "success": job.success,
        "started": job.started_at.is_some(),
    })))
}

/// The job's output so far, as text.
#[utoipa::path(get, path = "/api/w/{workspace}/jobs_u/get_logs/{id}", tag = "jobs",
    params(("workspace" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "logs", content_type = "text/plain"), (status = 404)))]
pub async fn get_logs(
    State(state): State<AppState>,
    Path(params): Path<JobPath>,
    authed: Authed,
) -> ApiResult<impl IntoResponse> {
    let (_, _, job) = load(&state, &authed, &params).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        job.logs.unwrap_or_default(),
    ))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct CancelBody {
    reason: Option<String>,
}

/// Cancel a job: a queued one never starts, a running one is killed with its process group.
#[utoipa::path(post, path = "/api/w/{workspace}/jobs_u/queue/cancel/{id}", tag = "jobs",
    params(("workspace" = String, Path), ("id" = String, Path)),
    request_body = CancelBody,
    responses((status = 200, description = "the job id, or that it is already completed"), (status = 404)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(params): Path<JobPath>,
    authed: Authed,
    JsonBody(body): JsonBody<CancelBody>,
) -> ApiResult<String> {
    let (ws, access, job) = load(&state, &authed, &params).await?;
    let may_cancel = access.is_admin
        || job.created_by == access.username.as_str()
        || match authorize::runnable_of(&state, &ws, &job).await? {
            Some((kind, path)) => authorize::write(&state, &ws, &access, kind, &path)
                .await
                .is_ok(),
            None => false,
        };
    if !may_cancel {
        return Err(ApiError::Forbidden(
            "only the job's creator, workspace admins and writers of its script may cancel it"
                .into(),
        ));
    }
    let id = job.id;
    let reason = body.reason.filter(|r| !r.is_empty());
    Ok(
        match cancel::cancel_job(&state, &ws, id, access.username.as_str(), reason).await? {
            Canceled::Now | Canceled::Requested => id.to_string(),
            Canceled::AlreadyCompleted => format!("queued job id {id} is already completed"),
        },
    )
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    script_path_exact: Option<String>,
    script_hash: Option<String>,
    /// Comma-separated: `script,flow`.
    job_kinds: Option<String>,
    success: Option<bool>,
    running: Option<bool>,
    created_by: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
    include_flow_steps: Option<bool>,
    /// At most 1000 (larger values are clamped).
    per_page: Option<i64>,
    /// Starts at 1.
    page: Option<i64>,
}

/// The Runs list, newest first.
#[utoipa::path(get, path = "/api/w/{workspace}/jobs/list", tag = "jobs",
    params(("workspace" = String, Path), ListQuery),
    responses((status = 200, body = Vec<JobRecord>)))]
pub async fn list(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<JobRecord>>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::scope(&access.principal, Action::ReadJobs)?;
    let visible_to = (!access.is_admin).then(|| Viewer {
        username: access.username.to_string(),
        grantees: grantees(&access),
    });
    let filter = ListFilter {
        visible_to,
        script_path_exact: query.script_path_exact,
        script_hash: query.script_hash,
        job_kinds: query
            .job_kinds
            .map(|k| k.split(',').map(|s| s.trim().to_owned()).collect()),
        success: query.success,
        running: query.running,
        created_by: query.created_by,
        created_after: query.created_after,
        created_before: query.created_before,
        include_flow_steps: query.include_flow_steps.unwrap_or(false),
        per_page: query.per_page.unwrap_or(30).clamp(1, 1000),
        page: query.page.unwrap_or(1).max(1),
    };
    Ok(Json(jobs::list(state.pool(), &ws, &filter).await?))
}
