//! Control broadcasts on core NATS: cancel a running job, drop cached definitions.

use serde::{Deserialize, Serialize};

use crate::domain::JobId;

/// Sent on `millrace.control.cancel.<id>`; the worker running the job kills it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelJob {
    pub id: JobId,
    pub canceled_by: String,
    pub reason: Option<String>,
}

/// Sent on `millrace.control.invalidate` when a definition changes, so every API replica
/// forgets its cached copy at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invalidate {
    pub workspace: String,
    pub path: String,
}
