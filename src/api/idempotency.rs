//! Running once: a key that names a request, claimed in PostgreSQL for the job it starts, so
//! that a repeat within the window answers that job instead of starting another. Two sources:
//! the `Idempotency-Key` header of run routes (SPEC §1, §7: scoped to workspace, token owner
//! and target, `IDEMPOTENCY_WINDOW`), and the delivery ids of webhook triggers (scoped to the
//! trigger, its own window). The claim travels with the job's row (`RunOptions::once`): the job
//! inserter claims the key and writes the row in one statement (`store/job_inserter.rs`), and
//! `submit` gives the key back when the job could not be queued.

use std::time::Duration;

use axum::http::HeaderMap;

use super::error::{ApiError, ApiResult};
use super::run_target::RunTarget;
use super::AppState;
use crate::auth::Access;
use crate::store::deliveries::DeliveryKey;

pub const HEADER: &str = "idempotency-key";
const MAX_LEN: usize = 255;

/// The `Idempotency-Key` of a run request, if any; 400 when it is empty, not text, or longer
/// than 255 characters.
pub fn from_header(
    state: &AppState,
    headers: &HeaderMap,
    access: &Access,
    target: &RunTarget,
) -> ApiResult<Option<DeliveryKey>> {
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
    Ok(Some(DeliveryKey {
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
pub fn delivery(trigger: &str, id: &str, window: Duration) -> DeliveryKey {
    DeliveryKey {
        scope: format!("trigger:{trigger}"),
        key: id.to_owned(),
        window,
    }
}
