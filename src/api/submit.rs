//! Turns a resolved target and arguments into a durable job: record it as queued and publish it
//! to JetStream (waiting for the PubAck), then announce the `queued` event. Shared by every run
//! route. A request with a key (`RunOptions::once`) claims it with the row, and is answered the
//! first job's id when the key was claimed already.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::request_args::RunOptions;
use super::run_target::{RunTarget, Runnable};
use super::AppState;
use crate::auth::Access;
use crate::domain::{contains_nul, JobId, Tag, WorkspaceId};
use crate::queue::bus::Published;
use crate::queue::envelope::{self, JobEnvelope, QueuedRecord};
use crate::queue::events::{JobEvent, JobEventKind};
use crate::queue::QueueError;
use crate::store::{self, InsertOutcome, NewJobRow, StoreError};

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The job (`RunOptions::job_id`) is queued.
    Queued,
    /// An earlier request with the same key started this job within the key's window: nothing
    /// was queued.
    Repeat(JobId),
}

pub async fn submit(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    target: &RunTarget,
    args: Map<String, Value>,
    opts: &RunOptions,
) -> ApiResult<Submitted> {
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
        traceparent: Some(queued_trace(id, opts).to_string()),
        record: None,
    };
    // Due later: the envelope waits in the row, for the scheduler to publish when due.
    let held = envelope::held_back(scheduled_for, now);
    // A preset id may be taken already, and a key claimed, which only the INSERT can tell
    // before anything is published: record, then publish, and without the record, so that only
    // the API creates the row. A fresh id with small arguments: publish while inserting.
    let first_record = !held
        && opts.once.is_none()
        && !opts.job_id_preset()
        && envelope::fits_inline(&record.args);
    let mut row = if first_record {
        let row = NewJobRow::queued(&envelope, &record);
        envelope.record = Some(record);
        row
    } else {
        NewJobRow::queued_from(&envelope, record)
    };
    row.once = opts.once.clone();
    if held {
        row.held = Some(serde_json::to_value(&envelope).expect("envelopes serialise"));
    }
    state.served_tags().check(state, &tag).await?;
    let labels = crate::metrics::JobLabels::new(tag.as_str(), language, target.kind(), false);
    let mut event = JobEvent::new(JobEventKind::Queued, &envelope);
    event.at = now;
    // Apart from the request, so that a caller hanging up cannot stop it between the INSERT,
    // the publish and their clean-up.
    // The body's share of the in-flight budget goes with the arguments, into the task.
    let share = super::admission::take();
    let recorded = tokio::spawn({
        let state = state.clone();
        async move {
            let _share = share;
            let submitted = match &envelope.record {
                _ if held => record_only(&state, id, row).await,
                Some(record) => record_while_publishing(&state, &tag, &envelope, record, row).await,
                None => record_then_publish(&state, &tag, &envelope, row).await,
            };
            // Here, not in the request: a caller hanging up does not lose the event.
            if let Ok(Submitted::Queued) = submitted {
                crate::metrics::job_queued(&labels);
                state.bus().announce_queued(event);
            }
            submitted
        }
    });
    // The INSERT and the publish have deadlines of their own (the INSERT's, waiting for its
    // batch included, end within about six of them); past that only a clean-up after a failure
    // can still wait, on a database that stopped answering: the caller is answered 503 then,
    // and the clean-up goes on.
    let bound = state.config().submit_timeout * 8;
    let submitted = tokio::time::timeout(bound, recorded)
        .await
        .map_err(|_| ApiError::Unavailable("database"))?
        .map_err(|e| ApiError::Internal {
            context: "job submission",
            detail: e.to_string(),
        })??;
    Ok(submitted)
}

/// The job's place in its caller's trace (a new trace when the caller sent none).
fn queued_trace(id: JobId, opts: &RunOptions) -> crate::domain::TraceParent {
    let span = || tracing::info_span!("queue job", job = %id);
    crate::telemetry::trace_of(span, opts.trace.as_ref())
}

/// Inserts the row only: 409 when the id is taken; a repeat when its key was claimed.
async fn record_only(state: &AppState, id: JobId, row: NewJobRow) -> ApiResult<Submitted> {
    match state.inserter().enqueue(row)?.outcome().await? {
        InsertOutcome::Inserted => Ok(Submitted::Queued),
        InsertOutcome::Repeat(first) => Ok(Submitted::Repeat(first)),
        InsertOutcome::DuplicateId => Err(ApiError::Conflict(format!(
            "a job with id {id} already exists"
        ))),
    }
}

/// A preset id (or a flow, or large arguments): the row first (409 if the id is taken), then
/// the message. Once a publish was
/// attempted the row is never deleted while its message may be in the stream: the id stays
/// taken, so no second message under it can ever be live beside a first one (two live messages
/// for one job would run it twice at once).
async fn record_then_publish(
    state: &AppState,
    tag: &Tag,
    envelope: &JobEnvelope,
    row: NewJobRow,
) -> ApiResult<Submitted> {
    let id = envelope.id;
    let keyed = row.once.is_some();
    if let repeat @ Submitted::Repeat(_) = record_only(state, id, row).await? {
        return Ok(repeat);
    }
    let queued = match publish(state, tag, envelope).await {
        Ok(Published {
            duplicate: false, ..
        }) => Ok(Submitted::Queued),
        // The row is new, yet JetStream holds a message with this id from the last two
        // minutes, which this request did not publish (ours was dropped as its copy): a job
        // answered 201 could then never run, or run from another envelope. The id is taken.
        Ok(Published {
            duplicate: true, ..
        }) => {
            let why = "another message with this job id was queued moments ago";
            let conflict = ApiError::Conflict(format!("job id {id}: {why}"));
            Box::pin(give_up(state, id, why, conflict)).await
        }
        // Refused for a limit: nothing was stored, nothing can start it.
        Err(e @ QueueError::Full(_)) => {
            Box::pin(forget_unpublished(state, id)).await;
            Err(e.into())
        }
        // The PubAck may be what was lost: the message may be stored.
        Err(e) => Box::pin(give_up(state, id, &e.to_string(), e.into())).await,
    };
    if let (Err(_), true) = (&queued, keyed) {
        // The row claimed its key, and the job is not queued after all: the sender's retry
        // must run. (A row that is gone took its key with it.)
        let released = store::deliveries::release(state.pool(), id);
        if let Err(e) = Box::pin(released).await {
            tracing::warn!(job = %id, error = %e, "could not release an idempotency key");
        }
    }
    queued
}

async fn publish(
    state: &AppState,
    tag: &Tag,
    envelope: &JobEnvelope,
) -> Result<Published, QueueError> {
    let deadline = state.config().submit_timeout;
    state.bus().publish_job(tag, envelope, deadline).await
}

/// Ends a recorded job as failed (`NotQueued`) because it must not run, unless a worker started
/// it already: then it was queued after all, and the call is answered with its id.
async fn give_up(state: &AppState, id: JobId, why: &str, error: ApiError) -> ApiResult<Submitted> {
    match store::jobs::abandon_unpublished(state.pool(), id, why).await {
        Ok(false) => Ok(Submitted::Queued),
        Ok(true) => Err(error),
        Err(cleanup) => {
            tracing::error!(job = %id, error = %cleanup,
                "could not end a job whose publish failed; a worker may still run it");
            Err(error)
        }
    }
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
) -> ApiResult<Submitted> {
    let id = envelope.id;
    // Refused before anything is published when too many rows wait already.
    let enqueued = state.inserter().enqueue(row)?;
    let (inserted, published) = tokio::join!(enqueued.outcome(), publish(state, tag, envelope));
    let inserted = match inserted {
        Ok(outcome) => Ok(outcome),
        // Cancelled at its deadline, or refused: nothing was written, and a second try would
        // only wait as long again.
        Err(e) if matches!(*e, StoreError::Timeout(_) | StoreError::Busy) => Err(e.into()),
        // The shared INSERT may have failed for another row or a lost connection.
        Err(_) => Box::pin(
            state
                .inserter()
                .insert_one(state.pool(), &NewJobRow::queued(envelope, record)),
        )
        .await
        .map_err(ApiError::from),
    };
    match (inserted, published) {
        (Ok(_), Ok(_)) => Ok(Submitted::Queued),
        // Refused for a limit: no worker can have it, the row goes. (A row already there was
        // ours too: the shared INSERT committed before its answer was lost.)
        (Ok(_), Err(e @ QueueError::Full(_))) => {
            Box::pin(forget_unpublished(state, id)).await;
            Err(e.into())
        }
        // JetStream may have stored it even so: end the row, so that a late delivery finds
        // nothing to start — unless a worker started it already (then it was queued after all).
        (Ok(_), Err(e)) => Box::pin(give_up(state, id, &e.to_string(), e.into())).await,
        (Err(e), Ok(published)) => {
            // Answered as failed, so it must not run: a worker that already took it cannot
            // record it either (the database failed) and hands it back, to find it gone.
            if let Err(withdraw) = Box::pin(state.bus().withdraw_job(published.sequence)).await {
                tracing::error!(job = %id, error = %withdraw,
                    "could not take back a job whose row was not written; a worker may run it");
            }
            Err(e)
        }
        (Err(e), Err(_)) => Err(e),
    }
}

/// Which worker tags have a consumer (`workers-<tag>`, declared by `millrace migrate` and by
/// the tag's workers at start). A job for a tag no worker serves would wait in the stream
/// forever, so it is refused. A consumer seen is trusted for a while; a missing one is asked
/// for again soon, so a new tag's first worker is found within seconds.
#[derive(Default)]
pub struct ServedTags(Mutex<HashMap<Tag, (bool, Instant)>>);

const SERVED_TTL: Duration = Duration::from_secs(30);
const UNSERVED_TTL: Duration = Duration::from_secs(2);
/// Tags remembered at most (callers name tags): past it the memory starts over.
const MAX_REMEMBERED_TAGS: usize = 1024;

impl ServedTags {
    async fn check(&self, state: &AppState, tag: &Tag) -> ApiResult<()> {
        let now = Instant::now();
        let cached = self.0.lock().expect("tag cache").get(tag).copied();
        let served = match cached {
            Some((served, at))
                if now.duration_since(at) < if served { SERVED_TTL } else { UNSERVED_TTL } =>
            {
                served
            }
            _ => {
                let deadline = state.config().submit_timeout;
                let asked = Box::pin(state.bus().tag_is_served(tag));
                let served = tokio::time::timeout(deadline, asked)
                    .await
                    .map_err(|_| ApiError::Unavailable("message broker"))??;
                let mut tags = self.0.lock().expect("tag cache");
                if tags.len() >= MAX_REMEMBERED_TAGS {
                    tags.clear();
                }
                tags.insert(tag.clone(), (served, now));
                served
            }
        };
        if served {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "no worker serves tag {:?}: start workers with it in WORKER_TAGS (or declare its \
                 consumer with `millrace migrate`) before sending jobs to it",
                tag.as_str()
            )))
        }
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
