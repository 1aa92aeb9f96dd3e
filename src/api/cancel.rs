//! Cancelling a job, for the cancel route and for sync callers that give up (timeout, client
//! gone): a queued job is completed as cancelled at once; a running one is flagged and its
//! worker told to kill it. A flow ends as cancelled at once, with its steps.

use chrono::Utc;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::domain::{canceled_result, JobId, JobKind, WorkspaceId};
use crate::flows::driver::{self, DriverError, FlowCancel};
use crate::queue::control::CancelJob;
use crate::queue::events::{JobDone, JobEvent, JobEventKind};
use crate::store::jobs::{self, CancelOutcome, JobRecord};

#[derive(Debug, PartialEq, Eq)]
pub enum Canceled {
    /// It was queued and will never start.
    Now,
    /// It is running; its worker kills it.
    Requested,
    AlreadyCompleted,
}

pub async fn cancel_job(
    state: &AppState,
    ws: &WorkspaceId,
    id: JobId,
    by: &str,
    reason: Option<String>,
) -> ApiResult<Canceled> {
    let is_flow = jobs::get(state.pool(), ws, id)
        .await?
        .is_some_and(|job| job.job_kind == JobKind::Flow.as_str());
    if is_flow {
        let canceled =
            driver::cancel_flow(state.pool(), state.bus(), id, by, reason.as_deref()).await;
        return match canceled.map_err(|e| match e {
            DriverError::Store(e) => ApiError::from(e),
            DriverError::Queue(e) => ApiError::from(e),
        })? {
            FlowCancel::Canceled => Ok(Canceled::Now),
            FlowCancel::AlreadyCompleted => Ok(Canceled::AlreadyCompleted),
            FlowCancel::NotFound => Err(ApiError::not_found(format!("job {id} not found"))),
        };
    }
    let result = canceled_result(reason.as_deref(), by);
    match jobs::cancel(state.pool(), ws, id, by, reason.as_deref(), &result).await? {
        CancelOutcome::CanceledQueued(job) => {
            let labels = crate::metrics::JobLabels::of_row(
                &job.tag,
                job.language.as_deref(),
                &job.job_kind,
                job.parent_job.is_some(),
            );
            crate::metrics::job_ended(&labels, crate::metrics::JobEnd::Canceled, None);
            announce(state, &job, &result).await;
            Ok(Canceled::Now)
        }
        CancelOutcome::Requested => {
            let request = CancelJob {
                id,
                canceled_by: by.to_owned(),
                reason,
            };
            state.bus().publish_cancel(&request).await?;
            Ok(Canceled::Requested)
        }
        CancelOutcome::AlreadyCompleted => Ok(Canceled::AlreadyCompleted),
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("job {id} not found"))),
    }
}

/// A job cancelled while queued never reaches a worker, so the API tells its waiters and
/// publishes its terminal event.
async fn announce(state: &AppState, job: &JobRecord, result: &serde_json::Value) {
    let done = JobDone::new(job.id, false, true, result);
    if let Err(e) = state.bus().publish_done(&done).await {
        tracing::warn!(job = %job.id, error = %e, "done reply not published");
    }
    // The same shape as the worker's `canceled` event for a running job.
    let event = JobEvent {
        id: job.id,
        workspace: job.workspace_id.clone(),
        kind: JobEventKind::Canceled,
        job_kind: job.job_kind.clone(),
        path: job.script_path.clone(),
        hash: job.script_hash.clone(),
        flow_version: job.flow_version,
        parent_job: job.parent_job,
        root_job: job.root_job,
        created_by: job.created_by.clone(),
        at: job.completed_at.unwrap_or_else(Utc::now),
        success: Some(false),
        duration_ms: None,
        result: None,
        result_truncated: None,
        error: result.get("error").cloned(),
    };
    state
        .bus()
        .publish_event_unconfirmed(&event.with_result(result))
        .await;
}
