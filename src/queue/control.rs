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

/// Sent on `millrace.control.invalidate` when something cached changes, so every API replica
/// forgets its copy at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidate {
    /// A script path got a new version, or was archived or deleted.
    Script { workspace: String, path: String },
    /// A token was revoked (its SHA-256, hex): it must stop working everywhere.
    Token { hash: String },
    /// Members or groups of a workspace changed.
    Members { workspace: String },
    /// An item of a workspace was shared or unshared, or a folder created.
    Sharing { workspace: String },
}
