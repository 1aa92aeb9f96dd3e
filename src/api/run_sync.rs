//! Sync webhooks (SPEC §1, §3): run a script and answer with its result — or the response
//! it shaped — once the job ends. The caller waits on `millrace.job.<id>.*`, subscribed before
//! the job is published. Giving up (timeout) or hanging up (client gone) cancels the job.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{Map, Value};

use super::cancel::cancel_job;
use super::error::{ApiError, ApiResult};
use super::extract::Authed;
use super::job_wait::{Completed, JobWatch, Seen};
use super::multipart::{RunBody, Uploads};
use super::object_storage::ObjectStorage;
use super::request_args::RunOptions;
use super::run_async::{
    resolve_flow_path, resolve_flow_version, resolve_hash, resolve_path, ByHash, ByPath, ByVersion,
};
use super::run_target::{RunTarget, Runnable};
use super::submit::Submitted;
use super::{idempotency, submit, sync_response, AppState};
use crate::auth::Access;
use crate::domain::{JobId, WorkspaceId};

pub const JOB_ID_HEADER: &str = "x-millrace-job-id";

/// The arguments and options of a sync or stream request, GET or POST, with the job id already
/// chosen (uploads are named after it), and the files the body uploaded.
pub async fn run_request(
    state: &AppState,
    storage: &ObjectStorage,
    authed: &Authed,
    ws: &WorkspaceId,
    body: RunBody,
) -> ApiResult<(Map<String, Value>, RunOptions, Uploads)> {
    let mut opts = body.options()?.run_now();
    if body.method() == Method::GET {
        authed.refuse_cross_site(body.headers())?;
    }
    let (args, uploads) = body.into_args(state, storage, ws, &mut opts).await?;
    Ok((args, opts, uploads))
}

/// Cancels the job if the request is dropped before it is answered (the client hung up).
struct CancelOnDrop {
    state: AppState,
    ws: WorkspaceId,
    id: JobId,
    by: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (state, ws, id, by) = (
            self.state.clone(),
            self.ws.clone(),
            self.id,
            self.by.clone(),
        );
        tokio::spawn(async move {
            let reason = Some("the caller disconnected".to_owned());
            if let Err(e) = cancel_job(&state, &ws, id, &by, reason).await {
                tracing::warn!(job = %id, error = %e, "could not cancel an abandoned sync job");
            }
        });
    }
}

pub(super) async fn run_and_wait(
    state: &AppState,
    (ws, access, target): (WorkspaceId, Access, RunTarget),
    (args, mut opts, mut uploads): (Map<String, Value>, RunOptions, Uploads),
) -> ApiResult<Response> {
    let id = opts.job_id();
    let replies = uploads.kept_if_ok(state.bus().watch_job(id).await)?;
    let mut watch = JobWatch::new(&ws, id, replies);
    if let Runnable::Flow {
        early_return: true, ..
    } = target.runnable
    {
        watch = watch.with_early_return();
    }
    let submitted = submit::submit(state, &ws, &access, &target, args, &opts).await;
    if let Submitted::Repeat(first) = uploads.kept_if_ok(submitted)? {
        // An earlier request with the same key started the job: its result, whoever waits.
        uploads.discard();
        return wait_for_existing(state, &ws, &access, first).await;
    }
    let guard = CancelOnDrop {
        state: state.clone(),
        ws: ws.clone(),
        id,
        by: access.username.to_string(),
        armed: true,
    };
    let response = match wait_for_result(state, &ws, &access, id, &mut watch, guard).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    Ok(with_job_id(response, id))
}

/// The result of a job that an earlier request started (a repeated delivery): this caller does
/// not own it, so hanging up cancels nothing.
async fn wait_for_existing(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    id: JobId,
) -> ApiResult<Response> {
    // It submits nothing: waiting, it holds no share of the in-flight budget.
    super::admission::release();
    let replies = state.bus().watch_job(id).await?;
    let mut watch = JobWatch::new(ws, id, replies);
    // Subscribed first: a job that ends now is seen live or in the store.
    let answered = match super::job_wait::completed_in_store(state, ws, id).await? {
        Some((done, _)) => {
            sync_response::respond(&done.result, done.success, state.config().sync_error_status)
        }
        None => {
            let guard = CancelOnDrop {
                state: state.clone(),
                ws: ws.clone(),
                id,
                by: access.username.to_string(),
                armed: false,
            };
            wait_for_result(state, ws, access, id, &mut watch, guard).await
        }
    };
    let response = answered.unwrap_or_else(IntoResponse::into_response);
    Ok(with_job_id(response, id))
}

fn with_job_id(mut response: Response, id: JobId) -> Response {
    response.headers_mut().insert(
        JOB_ID_HEADER,
        HeaderValue::from_str(&id.to_string()).expect("a UUID is a valid header value"),
    );
    response
}

async fn wait_for_result<S: futures::Stream<Item = crate::queue::bus::JobUpdate>>(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    id: JobId,
    watch: &mut JobWatch<S>,
    mut guard: CancelOnDrop,
) -> ApiResult<Response> {
    let _waiting = crate::metrics::sync_waiter();
    let limit = state.config().timeout_wait_result;
    let deadline = tokio::time::Instant::now() + limit;
    let completed = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watch.next(state, left).await? {
            Seen::Completed(completed) => break completed,
            // The flow goes on; the caller has its answer.
            Seen::EarlyReturn(result) => {
                break Completed {
                    success: true,
                    result,
                }
            }
            Seen::Quiet if tokio::time::Instant::now() >= deadline => {
                guard.armed = false;
                let secs = limit.as_secs();
                let reason = Some(format!("timeout after {secs}s"));
                cancel_job(state, ws, id, access.username.as_str(), reason).await?;
                return Err(ApiError::SyncTimeout(secs));
            }
            _ => {}
        }
    };
    guard.armed = false;
    sync_response::respond(
        &completed.result,
        completed.success,
        state.config().sync_error_status,
    )
}

macro_rules! sync_route {
    ($name:ident, $method:ident, $path:literal, $target:literal, $params:ty, $resolve:ident) => {
        #[doc = "Run and wait for the result (SPEC §1, §3)."]
        #[utoipa::path($method, path = $path, tag = "run",
            params(("workspace" = String, Path), ($target = String, Path)),
            responses((status = 200, description = "the result, or the response the script shaped"),
                      (status = 400), (status = 401), (status = 404),
                      (status = 500, description = "timeout after {N}s, or an invalid custom response")))]
        pub async fn $name(
            State(state): State<AppState>,
            Path(params): Path<$params>,
            authed: Authed,
            Extension(storage): Extension<ObjectStorage>,
            body: RunBody,
        ) -> ApiResult<Response> {
            let resolved = $resolve(&state, &authed, &params).await?;
            let key = idempotency::from_header(&state, body.headers(), &resolved.1, &resolved.2)?;
            let (args, mut opts, uploads) =
                run_request(&state, &storage, &authed, &resolved.0, body).await?;
            opts.once = key;
            run_and_wait(&state, resolved, (args, opts, uploads)).await
        }
    };
}

sync_route!(
    post_by_path,
    post,
    "/api/w/{workspace}/jobs/run_wait_result/p/{*path}",
    "path",
    ByPath,
    resolve_path
);
sync_route!(
    get_by_path,
    get,
    "/api/w/{workspace}/jobs/run_wait_result/p/{*path}",
    "path",
    ByPath,
    resolve_path
);
sync_route!(
    post_flow_by_path,
    post,
    "/api/w/{workspace}/jobs/run_wait_result/f/{*path}",
    "path",
    ByPath,
    resolve_flow_path
);
sync_route!(
    get_flow_by_path,
    get,
    "/api/w/{workspace}/jobs/run_wait_result/f/{*path}",
    "path",
    ByPath,
    resolve_flow_path
);
sync_route!(
    post_flow_by_version,
    post,
    "/api/w/{workspace}/jobs/run_wait_result/fv/{version}",
    "version",
    ByVersion,
    resolve_flow_version
);
sync_route!(
    get_flow_by_version,
    get,
    "/api/w/{workspace}/jobs/run_wait_result/fv/{version}",
    "version",
    ByVersion,
    resolve_flow_version
);
sync_route!(
    post_by_hash,
    post,
    "/api/w/{workspace}/jobs/run_wait_result/h/{hash}",
    "hash",
    ByHash,
    resolve_hash
);
sync_route!(
    get_by_hash,
    get,
    "/api/w/{workspace}/jobs/run_wait_result/h/{hash}",
    "hash",
    ByHash,
    resolve_hash
);

/// The configured status of failed sync jobs, checked once at startup.
pub fn sync_error_status(code: u16) -> anyhow::Result<StatusCode> {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| {
            anyhow::anyhow!("SYNC_ERROR_STATUS={code} is not an HTTP status from 200 to 599")
        })
}
