//! Turns a resolved target and arguments into a durable job: record it as queued and publish it
//! to JetStream (waiting for the PubAck), then announce the `queued` event. Shared by every run
//! route.

use chrono::Utc;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::request_args::RunOptions;
use super::run_target::{RunTarget, Runnable};
use super::AppState;
use crate::auth::Access;
use crate::domain::{contains_nul, JobId, Tag, WorkspaceId};
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
    check_storable(&args)?;
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
    let (hash, language, timeout_s, flow_version) = match &target.runnable {
        Runnable::Script {
            hash,
            language,
            timeout_s,
        } => (Some(hash.to_string()), Some(*language), *timeout_s, None),
        Runnable::Flow { version, .. } => (None, None, None, Some(*version)),
    };
    let mut envelope = JobEnvelope {
        v: envelope::VERSION,
        id,
        workspace: ws.to_string(),
        kind: target.kind(),
        path: Some(target.path.to_string()),
        hash,
        language,
        created_by: access.username.to_string(),
        permissioned_as: access.principal.email.clone(),
        scopes: access
            .principal
            .scopes
            .as_ref()
            .map(|scopes| scopes.iter().map(ToString::to_string).collect()),
        tag: tag.to_string(),
        timeout_s,
        scheduled_for,
        flow_version,
        flow_step: None,
        record: None,
    };
    let mut row = NewJobRow::queued(&envelope, &record);
    // Due later: the envelope waits in the row, for the scheduler to publish when due.
    let held = envelope::held_back(scheduled_for, now);
    if held {
        row.held = Some(serde_json::to_value(&envelope).expect("envelopes serialise"));
    } else if !opts.job_id_preset() && envelope::fits_inline(&record.args) {
        // A preset id may be taken already, which only the INSERT can tell before anything is
        // published: record, then publish, and without the record, so that only the API
        // creates the row. A fresh id with small arguments: publish while inserting.
        envelope.record = Some(record);
    }
    let mut event = JobEvent::new(JobEventKind::Queued, &envelope);
    event.at = now;
    // Apart from the request, so that a caller hanging up cannot stop it between the INSERT,
    // the publish and their clean-up.
    let recorded = tokio::spawn({
        let state = state.clone();
        async move {
            match &envelope.record {
                _ if held => record_only(&state, id, row).await,
                Some(record) => record_while_publishing(&state, &tag, &envelope, record, row).await,
                None => record_then_publish(&state, &tag, &envelope, row).await,
            }
        }
    });
    recorded.await.map_err(|e| ApiError::Internal {
        context: "job submission",
        detail: e.to_string(),
    })??;
    state.bus().publish_event_unconfirmed(&event).await;
    Ok(id)
}

/// Inserts the row only: 409 when the id is taken.
async fn record_only(state: &AppState, id: JobId, row: NewJobRow) -> ApiResult<()> {
    match state.inserter().insert(row).await? {
        InsertOutcome::Inserted => Ok(()),
        InsertOutcome::DuplicateId => Err(ApiError::Conflict(format!(
            "a job with id {id} already exists"
        ))),
    }
}

async fn record_then_publish(
    state: &AppState,
    tag: &Tag,
    envelope: &JobEnvelope,
    row: NewJobRow,
) -> ApiResult<()> {
    let id = envelope.id;
    record_only(state, id, row).await?;
    if let Err(e) = state.bus().publish_job(tag, envelope).await {
        forget_unpublished(state, id).await;
        return Err(e.into());
    }
    Ok(())
}

/// The INSERT and the publish at once: the job is answered when both are done, but a worker
/// may start it as soon as it is published. Its id is freshly generated, so a row that exists
/// already was written by the worker that took it.
async fn record_while_publishing(
    state: &AppState,
    tag: &Tag,
    envelope: &JobEnvelope,
    record: &QueuedRecord,
    row: NewJobRow,
) -> ApiResult<()> {
    let id = envelope.id;
    let (inserted, published) = tokio::join!(
        state.inserter().insert(row),
        state.bus().publish_job(tag, envelope)
    );
    let inserted = match inserted {
        Ok(outcome) => Ok(outcome),
        // The shared INSERT may have failed for another row or a lost connection.
        Err(_) => store::insert_one(state.pool(), &NewJobRow::queued(envelope, record)).await,
    };
    match (inserted, published) {
        (Ok(_), Ok(_)) | (Ok(InsertOutcome::DuplicateId), Err(_)) => Ok(()),
        (Ok(InsertOutcome::Inserted), Err(e)) => {
            // JetStream may have stored it even so: end the row, so that a late delivery
            // finds nothing to start. A worker that started it already has it queued after all.
            match store::jobs::abandon_unpublished(state.pool(), id, &e.to_string()).await {
                Ok(false) => Ok(()),
                Ok(true) => Err(e.into()),
                Err(cleanup) => {
                    tracing::error!(job = %id, error = %cleanup,
                        "could not end a job whose publish failed; a worker may still run it");
                    Err(e.into())
                }
            }
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

/// A job may be scheduled at most `MAX_SCHEDULE_AHEAD` ahead: checked before the body is read
/// (and its files uploaded).
pub fn check_schedule(state: &AppState, opts: &RunOptions) -> ApiResult<()> {
    let Some(at) = opts.scheduled_for else {
        return Ok(());
    };
    let limit = state.config().max_schedule_ahead;
    let latest = chrono::Duration::from_std(limit)
        .ok()
        .and_then(|ahead| Utc::now().checked_add_signed(ahead));
    if latest.is_some_and(|latest| at > latest) {
        return Err(ApiError::bad_request(format!(
            "scheduled_for {} is too far ahead: a job may be scheduled at most {} s from now \
             (MAX_SCHEDULE_AHEAD)",
            at.to_rfc3339(),
            limit.as_secs()
        )));
    }
    Ok(())
}

/// PostgreSQL cannot store U+0000 in JSON: refused here, not by an INSERT other requests' jobs
/// may share.
fn check_storable(args: &Map<String, Value>) -> ApiResult<()> {
    if args
        .iter()
        .any(|(k, v)| k.contains('\0') || contains_nul(v))
    {
        return Err(ApiError::bad_request(
            "the arguments contain the character U+0000, which cannot be stored",
        ));
    }
    Ok(())
}

/// Not queued after all: remove the row so no job is left "queued" forever.
async fn forget_unpublished(state: &AppState, id: JobId) {
    if let Err(cleanup) = store::jobs::forget_unpublished(state.pool(), id).await {
        tracing::error!(job = %id, error = %cleanup, "could not remove an unpublished job");
    }
}
