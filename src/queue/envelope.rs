//! The message a webhook publishes and a worker consumes. Small arguments travel in it, so the
//! API can publish a job while its INSERT is still under way (the worker records the job itself
//! if it gets there first); large ones stay in the job's row only, which the worker reads when
//! it marks the job running, so a message never nears NATS' payload limit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{JobId, JobKind, ScriptLang};

/// Bumped when a field changes meaning. A worker takes envelopes up to its own version and
/// leaves newer ones in the queue for an upgraded worker, so workers are upgraded first.
/// Version 2 added `record`; version 3 flows (`flow_version`, `flow_step`).
pub const VERSION: u32 = 3;

/// Serialized arguments up to this size travel in the envelope.
pub const INLINE_ARGS_MAX: usize = 64 * 1024;

/// A job due further ahead than this is not published yet: its envelope waits in its row for
/// the scheduler, instead of waiting ack-pending in the work queue. Closer ones are published
/// at once and a worker hands them back until due (as it does with a clock a little ahead).
pub const HOLD_BEYOND: chrono::Duration = chrono::Duration::seconds(1);

/// Whether a message due at `at` is held back for the scheduler rather than published now.
pub fn held_back(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    at.is_some_and(|at| at > now + HOLD_BEYOND)
}

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
    /// The version a flow job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<i64>,
    /// Set on a flow's step job: which flow and module it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_step: Option<FlowStep>,
    /// The W3C `traceparent` of the span that queued the job (its caller's trace continued,
    /// or a new one): the worker's span for the job is its child. Older envelopes have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The rest of the job's row, when its arguments are small enough to travel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<QueuedRecord>,
}

/// A step job's place in its flow. The step's code is the module `step_id` of the flow version
/// (a `rawscript`), or the script version in `hash`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowStep {
    pub flow_job: JobId,
    pub root_job: JobId,
    pub flow_path: String,
    pub flow_version: i64,
    pub step_id: String,
}

/// What, besides the fields above, a worker needs to write the job's row itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedRecord {
    pub args: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub parent_job: Option<JobId>,
    /// The id (not the secret) of the token that started the job.
    pub started_by_token: Option<String>,
}

/// Whether `args` serialize to at most [`INLINE_ARGS_MAX`] bytes; stops counting past it.
pub fn fits_inline(args: &Map<String, Value>) -> bool {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > INLINE_ARGS_MAX {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter(0), args).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_small_arguments_travel_inline() {
        let small = json!({"a": "x".repeat(INLINE_ARGS_MAX - 100)});
        let large = json!({"a": "x".repeat(INLINE_ARGS_MAX)});
        assert!(fits_inline(small.as_object().unwrap()));
        assert!(!fits_inline(large.as_object().unwrap()));
    }
}
