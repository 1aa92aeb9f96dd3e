//! Streaming webhooks (SPEC §1, §7 "Sync/SSE"): `run_and_stream` runs a script and streams its
//! progress and output as Server-Sent Events; `getupdate_sse` follows a job that exists already.
//! Frames are `data: <json>` with a `type`; closing the stream does not cancel the job.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::extract::Authed;
use super::job_wait::{completed_in_store, JobWatch, Seen};
use super::jobs::{load, JobPath};
use super::multipart::RunBody;
use super::object_storage::ObjectStorage;
use super::run_async::{
    resolve_flow_path, resolve_flow_version, resolve_hash, resolve_path, ByHash, ByPath, ByVersion,
};
use super::run_sync::{run_request, JOB_ID_HEADER};
use super::submit::Submitted;
use super::{idempotency, submit, AppState};
use crate::domain::{JobId, WorkspaceId};
use crate::queue::bus::JobUpdate;
use crate::store::jobs::JobRecord;

/// A frame is sent at least this often, so proxies and clients know the stream is alive.
const PING_AFTER: Duration = Duration::from_secs(5);

/// Which frames a stream carries beyond the common ones.
#[derive(Clone, Copy)]
struct Flavour {
    /// `new_logs` frames (getupdate_sse).
    logs: bool,
    /// The completed job JSON in the last frame (getupdate_sse).
    job: bool,
}

fn frame(value: Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

fn sse_response(id: JobId, rx: mpsc::Receiver<Value>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|value| (frame(value), rx))
    });
    let mut response = Sse::new(stream).into_response();
    response.headers_mut().insert(
        JOB_ID_HEADER,
        HeaderValue::from_str(&id.to_string()).expect("a UUID is a valid header value"),
    );
    response
}

fn final_frame(success: bool, result: Value, job: Option<&JobRecord>) -> Value {
    let mut last =
        json!({"type": "update", "completed": true, "success": success, "only_result": result});
    if let Some(job) = job {
        last["job"] = serde_json::to_value(job).unwrap_or(Value::Null);
    }
    last
}

/// Forwards the job's life to the client until it completes, the stream times out, or the
/// client goes away (a failed send).
async fn pump<S: Stream<Item = JobUpdate>>(
    state: AppState,
    ws: WorkspaceId,
    id: JobId,
    mut watch: JobWatch<S>,
    tx: mpsc::Sender<Value>,
    flavour: Flavour,
) {
    let _open = crate::metrics::sse_stream();
    let deadline = tokio::time::Instant::now() + state.config().timeout_sse_stream;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            let _ = tx.send(json!({"type": "timeout"})).await;
            return;
        }
        let frame = match watch.next(&state, left.min(PING_AFTER)).await {
            Err(e) => {
                let _ = tx
                    .send(json!({"type": "error", "error": e.to_string()}))
                    .await;
                return;
            }
            Ok(Seen::Started) => json!({"type": "update", "running": true}),
            Ok(Seen::Stream(chunk)) => json!({"type": "update", "new_result_stream": chunk}),
            Ok(Seen::Log(text)) if flavour.logs => json!({"type": "update", "new_logs": text}),
            Ok(Seen::Log(_)) => continue,
            Ok(Seen::Progress(status)) => json!({"type": "update", "flow_status": status}),
            Ok(Seen::EarlyReturn(_)) => continue,
            Ok(Seen::Quiet) if tokio::time::Instant::now() >= deadline => continue,
            Ok(Seen::Quiet) => json!({"type": "ping"}),
            Ok(Seen::Completed(completed)) => {
                let job = if flavour.job {
                    completed_in_store(&state, &ws, id)
                        .await
                        .ok()
                        .flatten()
                        .map(|(_, job)| job)
                } else {
                    None
                };
                let _ = tx
                    .send(final_frame(
                        completed.success,
                        completed.result,
                        job.as_ref(),
                    ))
                    .await;
                return;
            }
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

/// The stream of a job an earlier request started (a repeated `Idempotency-Key`).
async fn follow_existing(state: AppState, ws: WorkspaceId, id: JobId) -> ApiResult<Response> {
    let replies = state.bus().watch_job(id).await?;
    let (tx, rx) = mpsc::channel(64);
    // Subscribed first: a job that ends now is seen live or in the store.
    if let Some((done, _)) = completed_in_store(&state, &ws, id).await? {
        let _ = tx.send(final_frame(done.success, done.result, None)).await;
        return Ok(sse_response(id, rx));
    }
    let watch = JobWatch::new(&ws, id, replies);
    let flavour = Flavour {
        logs: false,
        job: false,
    };
    tokio::spawn(pump(state, ws, id, watch, tx, flavour));
    Ok(sse_response(id, rx))
}

macro_rules! stream_route {
    ($name:ident, $method:ident, $path:literal, $target:literal, $params:ty, $resolve:ident) => {
        #[doc = "Run and stream the job as Server-Sent Events (SPEC §1)."]
        #[utoipa::path($method, path = $path, tag = "run",
            params(("workspace" = String, Path), ($target = String, Path)),
            responses((status = 200, description = "text/event-stream of JSON frames", content_type = "text/event-stream"),
                      (status = 400), (status = 401), (status = 404)))]
        pub async fn $name(
            State(state): State<AppState>,
            Path(params): Path<$params>,
            authed: Authed,
            Extension(storage): Extension<ObjectStorage>,
            body: RunBody,
        ) -> ApiResult<Response> {
            let (ws, access, target) = $resolve(&state, &authed, &params).await?;
            let key = idempotency::from_header(&state, body.headers(), &access, &target)?;
            let (args, mut opts, mut uploads) =
                run_request(&state, &storage, &authed, &ws, body).await?;
            opts.once = key;
            let id = opts.job_id();
            let replies = uploads.kept_if_ok(state.bus().watch_job(id).await)?;
            let watch = JobWatch::new(&ws, id, replies);
            let submitted = submit::submit(&state, &ws, &access, &target, args, &opts).await;
            if let Submitted::Repeat(first) = uploads.kept_if_ok(submitted)? {
                uploads.discard();
                return follow_existing(state, ws, first).await;
            }
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(pump(state, ws, id, watch, tx, Flavour { logs: false, job: false }));
            Ok(sse_response(id, rx))
        }
    };
}

stream_route!(
    post_by_path,
    post,
    "/api/w/{workspace}/jobs/run_and_stream/p/{*path}",
    "path",
    ByPath,
    resolve_path
);
stream_route!(
    get_by_path,
    get,
    "/api/w/{workspace}/jobs/run_and_stream/p/{*path}",
    "path",
    ByPath,
    resolve_path
);
stream_route!(
    post_flow_by_path,
    post,
    "/api/w/{workspace}/jobs/run_and_stream/f/{*path}",
    "path",
    ByPath,
    resolve_flow_path
);
stream_route!(
    get_flow_by_path,
    get,
    "/api/w/{workspace}/jobs/run_and_stream/f/{*path}",
    "path",
    ByPath,
    resolve_flow_path
);
stream_route!(
    post_flow_by_version,
    post,
    "/api/w/{workspace}/jobs/run_and_stream/fv/{version}",
    "version",
    ByVersion,
    resolve_flow_version
);
stream_route!(
    get_flow_by_version,
    get,
    "/api/w/{workspace}/jobs/run_and_stream/fv/{version}",
    "version",
    ByVersion,
    resolve_flow_version
);
stream_route!(
    post_by_hash,
    post,
    "/api/w/{workspace}/jobs/run_and_stream/h/{hash}",
    "hash",
    ByHash,
    resolve_hash
);
stream_route!(
    get_by_hash,
    get,
    "/api/w/{workspace}/jobs/run_and_stream/h/{hash}",
    "hash",
    ByHash,
    resolve_hash
);

/// Follow an existing job: its progress, logs and completion (also when it already ended).
#[utoipa::path(get, path = "/api/w/{workspace}/jobs_u/getupdate_sse/{id}", tag = "jobs",
    params(("workspace" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of JSON frames", content_type = "text/event-stream"),
              (status = 404)))]
pub async fn getupdate_sse(
    State(state): State<AppState>,
    Path(params): Path<JobPath>,
    authed: Authed,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(&params.id)
        .map_err(|e| ApiError::bad_request(format!("invalid job id {:?}: {e}", params.id)))?;
    // Listen first, then read: a completion between the two is seen one way or the other.
    let replies = state.bus().watch_job(id).await?;
    let (ws, _, job) = load(&state, &authed, &params).await?;
    let (tx, rx) = mpsc::channel(64);
    if job.status.is_completed() {
        let last = final_frame(
            job.status.success().unwrap_or(false),
            job.result.clone().unwrap_or(Value::Null),
            Some(&job),
        );
        let _ = tx.send(last).await;
        return Ok(sse_response(id, rx));
    }
    if job.running {
        let _ = tx.send(json!({"type": "update", "running": true})).await;
    }
    if let Some(logs) = job.logs.filter(|l| !l.is_empty()) {
        let _ = tx.send(json!({"type": "update", "new_logs": logs})).await;
    }
    let watch = JobWatch::new(&ws, id, replies);
    tokio::spawn(pump(
        state,
        ws,
        id,
        watch,
        tx,
        Flavour {
            logs: true,
            job: true,
        },
    ));
    Ok(sse_response(id, rx))
}
