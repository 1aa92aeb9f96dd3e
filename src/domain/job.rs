use serde::{Deserialize, Serialize};

/// What a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Script,
    Flow,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Script => "script",
            Self::Flow => "flow",
        }
    }
}

/// The one state column of a job. Transitions: queued → running → success | failure | canceled,
/// and queued → canceled; a running job whose worker died goes running → running again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Success,
    Failure,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Success,
            Self::Failure,
            Self::Canceled,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    pub fn is_completed(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Canceled)
    }

    /// `success` of the job JSON: unknown until the job completes.
    pub fn success(self) -> Option<bool> {
        match self {
            Self::Queued | Self::Running => None,
            Self::Success => Some(true),
            Self::Failure | Self::Canceled => Some(false),
        }
    }
}

/// The result every cancelled job completes with (SPEC §2).
pub fn canceled_result(reason: Option<&str>, by: &str) -> serde_json::Value {
    let reason = reason.unwrap_or("no reason given");
    serde_json::json!({"error": {"name": "Canceled", "message": format!("Job canceled: {reason} by {by}")}})
}

/// The result of a job ended because its message could not be queued (`NotQueued`).
pub fn not_queued_result(why: &str) -> serde_json::Value {
    serde_json::json!({"error": {"name": "NotQueued", "message": format!("the job could not be queued: {why}")}})
}

/// Whether a JSON value holds the character U+0000 anywhere (keys included), which PostgreSQL
/// cannot store in `jsonb`.
pub fn contains_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}
