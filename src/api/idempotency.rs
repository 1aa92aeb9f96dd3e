//! Running once: a key that names a request, claimed in PostgreSQL (`store/deliveries.rs`) for
//! the job it starts, so that a repeat within the window answers that job instead of starting
//! another. Two sources: the `Idempotency-Key` header of run routes (SPEC §1, §7: scoped to
//! workspace, token owner and target, `IDEMPOTENCY_WINDOW`), and the delivery ids of webhook
//! triggers (scoped to the trigger, its own window).

use std::future::Future;
use std::time::Duration;

use axum::http::HeaderMap;

use super::error::{ApiError, ApiResult};
use super::run_target::RunTarget;
use super::AppState;
use crate::auth::Access;
use crate::domain::{JobId, WorkspaceId};
use crate::store::deliveries::{self, Claim, KeyScope};

pub const HEADER: &str = "idempotency-key";
const MAX_LEN: usize = 255;

/// A request's key, in its scope, with how long it is kept.
pub struct OnceKey {
    scope: String,
    key: String,
    window: Duration,
}

/// What running once did.
pub enum Once<T> {
    /// The key was new (or there was none): the request ran.
    Started(T),
    /// An earlier request with the key started this job.
    Repeat(JobId),
}

impl OnceKey {
    /// The `Idempotency-Key` of a run request, if any; 400 when it is empty, not text, or
    /// longer than 255 characters.
    pub fn from_header(
        state: &AppState,
        headers: &HeaderMap,
        access: &Access,
        target: &RunTarget,
    ) -> ApiResult<Option<Self>> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::bad_request("Idempotency-Key must be non-empty text"))?;
        if key.chars().count() > MAX_LEN {
            return Err(ApiError::bad_request(format!(
                "Idempotency-Key is longer than {MAX_LEN} characters"
            )));
        }
        Ok(Some(Self {
            scope: format!(
                "key:{}:{}:{}",
                access.principal.email,
                target.kind().as_str(),
                target.path
            ),
            key: key.to_owned(),
            window: state.config().idempotency_window,
        }))
    }

    /// A webhook trigger's delivery id.
    pub fn delivery(trigger: &str, id: &str, window: Duration) -> Self {
        Self {
            scope: format!("trigger:{trigger}"),
            key: id.to_owned(),
            window,
        }
    }
}

/// Runs `start` (which starts job `id`) unless `key` was claimed within its window; a start
/// that fails gives the key back, so that a retry runs.
pub async fn run_once<T>(
    state: &AppState,
    ws: &WorkspaceId,
    key: Option<&OnceKey>,
    id: JobId,
    start: impl Future<Output = ApiResult<T>>,
) -> ApiResult<Once<T>> {
    let Some(key) = key else {
        return start.await.map(Once::Started);
    };
    let scope = KeyScope {
        ws,
        scope: &key.scope,
        key: &key.key,
    };
    match deliveries::claim(state.pool(), &scope, id, key.window).await? {
        Claim::Seen(first) => Ok(Once::Repeat(first)),
        Claim::New => {
            let started = start.await;
            if started.is_err() {
                if let Err(e) = deliveries::release(state.pool(), &scope, id).await {
                    tracing::warn!(job = %id, error = %e, "could not release an idempotency key");
                }
            }
            started.map(Once::Started)
        }
    }
}
