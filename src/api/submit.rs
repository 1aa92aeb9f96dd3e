//! Turns a resolved target and arguments into a durable job: record it as queued and publish it
//! to JetStream (waiting for the PubAck), then announce the `queued` event. Shared by every run
//! route.

use chrono::Utc;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::request_args::RunOptions;
use super::run_target::RunTarget;
use super::AppState;
use crate::auth::Access;
use crate::domain::{JobId, JobKind, Tag, WorkspaceId};
use crate::queue::envelope::{self, JobEnvelope, QueuedRecord};
use crate::queue::events::{JobEvent, JobEventKind};
use crate::store::{self, InsertOutcome, NewJobRow};

pub async fn submit(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    target: &RunTarget,
    args: Map<String, Value>,
    opts: &RunOptions,
) -> ApiResult<JobId> {
    let id = opts.job_id.unwrap_or_else(uuid::Uuid::now_v7);
    let own_tag = match &target.tag {
        Some(tag) => Tag::parse(tag)?,
        None => Tag::default_tag(),
    };
    let tag = match &opts.tag {
        // A token confined to one runnable must not pick another worker group for it (one
        // with more privileges or secrets): only the unscoped caller may route elsewhere.
        Some(tag) if *tag != own_tag && access.principal.is_scoped() => {
            return Err(ApiError::Forbidden(format!(
                "this token's scopes do not allow running on worker tag {tag:?}"
            )))
        }
        Some(tag) => tag.clone(),
        None => own_tag,
    };
    let now = Utc::now();
    let scheduled_for = opts.scheduled_for.filter(|at| *at > now);
    let record = QueuedRecord {
        args,
        created_at: now,
        parent_job: opts.parent_job,
        started_by_token: access.principal.token_id.clone(),
    };
    let mut envelope = JobEnvelope {
        v: envelope::VERSION,
        id,
        workspace: ws.to_string(),
        kind: JobKind::Script,
        path: Some(target.path.to_string()),
        hash: Some(target.hash.to_string()),
        language: Some(target.language),
        created_by: access.username.to_string(),
        permissioned_as: access.principal.email.clone(),
        scopes: access
            .principal
            .scopes
            .as_ref()
            .map(|scopes| scopes.iter().map(ToString::to_string).collect()),
        tag: tag.to_string(),
        timeout_s: target.timeout_s,
        scheduled_for,
        record: None,
    };
    if envelope::fits_inline(&record.args) {
        envelope.record = Some(record.clone());
    }
    let row = NewJobRow::queued(&envelope, record);
    // A preset id may be taken already, which only the INSERT can tell, before anything is
    // published. Otherwise a job that carries its record is published while it is inserted.
    if envelope.record.is_some() && !opts.job_id_preset() {
        record_while_publishing(state, &tag, &envelope, row).await?;
    } else {
        record_then_publish(state, &tag, &envelope, row).await?;
    }
    let mut event = JobEvent::new(JobEventKind::Queued, &envelope);
    event.at = now;
    state.bus().publish_event_unconfirmed(&event).await;
    Ok(id)
}

async fn record_then_publish(
    state: &AppState,
    tag: &Tag,
    envelope: &JobEnvelope,
    row: NewJobRow,
) -> ApiResult<()> {
    let id = envelope.id;
    match state.inserter().insert(row).await? {
        InsertOutcome::Inserted => {}
        InsertOutcome::DuplicateId => {
            return Err(ApiError::Conflict(format!(
                "a job with id {id} already exists"
            )))
        }
    }
    if let Err(e) = state.bus().publish_job(tag, envelope).await {
        forget_unpublished(state, id).await;
        return Err(e.into());
    }
    Ok(())
}

/// The INSERT and the publish at once: the job is answered when both are done, but a worker
/// may start it as soon as it is published. Its id is freshly generated, so a row that exists
/// already was written by that worker.
async fn record_while_publishing(
    state: &AppState,
    tag: &Tag,
    envelope: &JobEnvelope,
    row: NewJobRow,
) -> ApiResult<()> {
    let id = envelope.id;
    let (inserted, published) = tokio::join!(
        state.inserter().insert(row),
        state.bus().publish_job(tag, envelope)
    );
    match (inserted, published) {
        (Ok(_), Ok(_)) => Ok(()),
        (Ok(_), Err(e)) => {
            forget_unpublished(state, id).await;
            Err(e.into())
        }
        (Err(e), Ok(sequence)) => {
            // Answered as failed, so it must not run: a worker that already took it cannot
            // record it either (the database failed) and hands it back, to find it gone.
            if let Err(withdraw) = state.bus().withdraw_job(sequence).await {
                tracing::error!(job = %id, error = %withdraw,
                    "could not take back a job whose row was not written; a worker may run it");
            }
            Err(e.into())
        }
        (Err(e), Err(_)) => Err(e.into()),
    }
}

/// Not queued after all: remove the row so no job is left "queued" forever.
async fn forget_unpublished(state: &AppState, id: JobId) {
    if let Err(cleanup) = store::jobs::forget_unpublished(state.pool(), id).await {
        tracing::error!(job = %id, error = %cleanup, "could not remove an unpublished job");
    }
}
