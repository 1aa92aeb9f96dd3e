//! The message a webhook publishes and a worker consumes. Arguments are not in it: they are
//! in the job's row, which the worker reads when it marks the job running, so envelopes stay
//! small whatever the payload size.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{JobId, JobKind, ScriptLang};

/// Bumped when a field changes meaning, so old and new workers can share a queue in a rollout.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub v: u32,
    pub id: JobId,
    pub workspace: String,
    pub kind: JobKind,
    pub path: Option<String>,
    pub hash: Option<String>,
    pub language: Option<ScriptLang>,
    pub created_by: String,
    /// The email whose rights the job runs with.
    pub permissioned_as: String,
    /// The triggering token's scopes: the job's own token may do no more.
    pub scopes: Option<Vec<String>>,
    pub tag: String,
    pub timeout_s: Option<i32>,
    pub scheduled_for: Option<DateTime<Utc>>,
}
