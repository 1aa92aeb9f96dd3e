//! Turns a resolved target and arguments into a durable job: record it as queued, publish it to
//! JetStream (waiting for the PubAck), announce the `queued` event. Shared by every run route.

use chrono::Utc;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::request_args::RunOptions;
use super::run_target::RunTarget;
use super::AppState;
use crate::auth::Access;
use crate::domain::{JobId, JobKind, Tag, WorkspaceId};
use crate::queue::envelope::{self, JobEnvelope};
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
    let row = NewJobRow {
        id,
        workspace_id: ws.to_string(),
        job_kind: JobKind::Script.as_str().to_owned(),
        script_path: Some(target.path.to_string()),
        script_hash: Some(target.hash.to_string()),
        args: Value::Object(args),
        created_by: access.username.to_string(),
        permissioned_as: access.principal.email.clone(),
        created_at: now,
        scheduled_for,
        language: Some(target.language.as_str().to_owned()),
        tag: tag.to_string(),
        timeout_s: target.timeout_s,
        parent_job: opts.parent_job,
        started_by_token: access.principal.token_id.clone(),
    };
    match state.inserter().insert(row).await? {
        InsertOutcome::Inserted => {}
        InsertOutcome::DuplicateId => {
            return Err(ApiError::Conflict(format!(
                "a job with id {id} already exists"
            )))
        }
    }
    let envelope = JobEnvelope {
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
    };
    if let Err(e) = state.bus().publish_job(&tag, &envelope).await {
        // Not queued after all: remove the row so no job is left "queued" forever.
        if let Err(cleanup) = store::jobs::forget_unpublished(state.pool(), id).await {
            tracing::error!(job = %id, error = %cleanup, "could not remove an unpublished job");
        }
        return Err(e.into());
    }
    let mut event = JobEvent::new(JobEventKind::Queued, &envelope);
    event.at = now;
    state.bus().publish_event_unconfirmed(&event).await;
    Ok(id)
}
