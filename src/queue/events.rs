//! Job events on the `MILLRACE_EVENTS` stream (SPEC §6, `docs/events.md`), and the live
//! `done` reply that sync callers wait for.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::envelope::JobEnvelope;
use crate::domain::JobId;

/// Results larger than this are left out of events (`result_truncated: true`).
pub const MAX_EVENT_RESULT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobEventKind {
    Queued,
    Started,
    Completed,
    Failed,
    Canceled,
}

impl JobEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Started => "started",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEvent {
    pub id: JobId,
    pub workspace: String,
    pub kind: JobEventKind,
    pub job_kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<i64>,
    /// A flow step's flow and root flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_job: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_job: Option<JobId>,
    pub created_by: String,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl JobEvent {
    /// An event with only the identifying fields; `at` is now.
    pub fn new(kind: JobEventKind, envelope: &JobEnvelope) -> Self {
        Self {
            id: envelope.id,
            workspace: envelope.workspace.clone(),
            kind,
            job_kind: envelope.kind.as_str().to_owned(),
            path: envelope.path.clone(),
            hash: envelope.hash.clone(),
            flow_version: envelope.flow_version,
            parent_job: envelope.flow_step.as_ref().map(|s| s.flow_job),
            root_job: envelope.flow_step.as_ref().map(|s| s.root_job),
            created_by: envelope.created_by.clone(),
            at: Utc::now(),
            success: None,
            duration_ms: None,
            result: None,
            result_truncated: None,
            error: None,
        }
    }

    /// Attaches a result, or marks it truncated when it is too large to travel in an event.
    pub fn with_result(mut self, result: &Value) -> Self {
        let size = serde_json::to_vec(result)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size <= MAX_EVENT_RESULT {
            self.result = Some(result.clone());
        } else {
            self.result_truncated = Some(true);
        }
        self
    }

    /// `<job id>:<kind>`: JetStream drops a second publish of the same event.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.id, self.kind.as_str())
    }
}

/// Results larger than this are not sent on `done`: waiters read them from the job store.
pub const MAX_DONE_RESULT: usize = 1024 * 1024;

/// Published on `millrace.job.<id>.done` when a job completes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDone {
    pub id: JobId,
    pub success: bool,
    pub canceled: bool,
    /// `None` when the result was too large to send: read it from the job store.
    pub result: Option<Value>,
}

impl JobDone {
    pub fn new(id: JobId, success: bool, canceled: bool, result: &Value) -> Self {
        let size = serde_json::to_vec(result)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        Self {
            id,
            success,
            canceled,
            result: (size <= MAX_DONE_RESULT).then(|| result.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenEventKind {
    /// Published once, seven days before the token's expiration.
    Expiring,
    /// Published when the expired token is purged.
    Expired,
}

impl TokenEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expiring => "expiring",
            Self::Expired => "expired",
        }
    }
}

/// On `millrace.events.<ws>.token.<kind>` (SPEC §7 "Events").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEvent {
    pub workspace: String,
    pub kind: TokenEventKind,
    pub token_prefix: String,
    pub label: Option<String>,
    pub owner: String,
    pub expiration: DateTime<Utc>,
    pub at: DateTime<Utc>,
}
