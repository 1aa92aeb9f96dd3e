//! How a job ended, before it is recorded; and what is recorded instead when PostgreSQL
//! refuses that end as such, so that such a job fails once, clearly, instead of running again.

use serde_json::Value;

use super::runtimes::ScriptError;
use crate::domain::{canceled_result, contains_nul, JobStatus};
use crate::store::jobs::Completion;
use crate::store::StoreError;

/// The error of a job whose end PostgreSQL cannot store.
const NOT_STORABLE: &str = "ResultNotStorable";

/// How a job ended, before it is recorded.
pub struct Outcome {
    status: JobStatus,
    result: Value,
    canceled_by: Option<String>,
    canceled_reason: Option<String>,
}

impl Outcome {
    fn succeeded(result: Value) -> Self {
        Self {
            status: JobStatus::Success,
            result,
            canceled_by: None,
            canceled_reason: None,
        }
    }

    /// A returned value; `wm_failure` in it marks the job failed but keeps the value, so a
    /// sync caller still gets the response the script shaped (SPEC §3).
    pub fn from_result(mut result: Value) -> Self {
        if contains_nul(&result) {
            return Self::failed(ScriptError::new(
                NOT_STORABLE,
                "the result contains the character U+0000 (NUL), which cannot be stored; \
                 remove it, or return such data encoded (base64, say)",
            ));
        }
        let failure = result
            .get("wm_failure")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (failure, result.as_object_mut()) {
            (Some(message), Some(map)) => {
                let error = ScriptError::new("Failure", message).to_result();
                map.insert("error".into(), error["error"].clone());
                Self {
                    status: JobStatus::Failure,
                    ..Self::succeeded(result)
                }
            }
            _ => Self::succeeded(result),
        }
    }

    /// An error, whose text is for people: a NUL in it is replaced, as in logs.
    pub fn failed(mut error: ScriptError) -> Self {
        let texts = [&mut error.name, &mut error.message]
            .into_iter()
            .chain(error.stack.as_mut());
        for text in texts {
            if text.contains('\0') {
                *text = text.replace('\0', "\u{FFFD}");
            }
        }
        Self {
            status: JobStatus::Failure,
            result: error.to_result(),
            canceled_by: None,
            canceled_reason: None,
        }
    }

    pub fn canceled(by: String, reason: Option<String>) -> Self {
        Self {
            status: JobStatus::Canceled,
            result: canceled_result(reason.as_deref(), &by),
            canceled_by: Some(by),
            canceled_reason: reason,
        }
    }

    /// The end to record, by `attempt`.
    pub fn into_completion(
        self,
        attempt: i32,
        logs: String,
        duration_ms: Option<i64>,
    ) -> Completion {
        Completion {
            attempt,
            status: self.status,
            result: self.result,
            logs,
            duration_ms,
            canceled_by: self.canceled_by,
            canceled_reason: self.canceled_reason,
        }
    }
}

/// What to record when PostgreSQL refused `completion` with `error`: the job failed with
/// `ResultNotStorable`, with its logs, then without them. `None` when the error may pass
/// (the database was unavailable), or when nothing smaller is left to try.
pub fn instead_of_refused(completion: &Completion, error: &StoreError) -> Option<Completion> {
    // Only a value the server cannot take (class 22: data exceptions such as NUL; 54: too
    // large) is the result's fault. Anything else (a read-only server during a failover, a
    // permission) is no reason to throw a good result away.
    if error.is_transient()
        || !error
            .sql_state()
            .is_some_and(|s| s.starts_with("22") || s.starts_with("54"))
    {
        return None;
    }
    if completion.result["error"]["name"] == NOT_STORABLE {
        // Refused again: only the logs are left to leave out.
        return (!completion.logs.is_empty()).then(|| Completion {
            logs: String::new(),
            ..completion.clone()
        });
    }
    let state = error.sql_state().unwrap_or("none");
    let message = format!(
        "the database refused to store the job's end (SQLSTATE {state}): its result is too \
         large or holds a value PostgreSQL cannot store"
    );
    Some(
        Outcome::failed(ScriptError::new(NOT_STORABLE, message)).into_completion(
            completion.attempt,
            completion.logs.clone(),
            completion.duration_ms,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_result_holding_nul_fails_clearly() {
        for result in [
            json!("a\u{0}b"),
            json!({"k\u{0}": 1}),
            json!([{"x": ["\u{0}"]}]),
        ] {
            let outcome = Outcome::from_result(result);
            assert_eq!(outcome.status, JobStatus::Failure);
            assert_eq!(outcome.result["error"]["name"], json!(NOT_STORABLE));
            assert!(!contains_nul(&outcome.result));
        }
        let kept = Outcome::from_result(json!({"a": "b"}));
        assert_eq!(kept.status, JobStatus::Success);
    }

    #[test]
    fn an_error_holding_nul_keeps_its_text() {
        let mut error = ScriptError::new("Boom\u{0}", "a\u{0}b");
        error.stack = Some("at\u{0}x".into());
        let outcome = Outcome::failed(error);
        assert_eq!(
            outcome.result,
            json!({"error": {"name": "Boom\u{FFFD}", "message": "a\u{FFFD}b", "stack": "at\u{FFFD}x"}})
        );
    }
}
