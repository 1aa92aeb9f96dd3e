//! Delivery keys (`delivery_keys`): the first request with a key claims it for its job; a
//! repeat within the window finds that job instead of starting another. The key lives in
//! PostgreSQL because senders retry for hours, far beyond JetStream's dedup window.
//!
//! A key is claimed by the job inserter (`job_inserter.rs`), in the same statement that
//! records its job: one round trip and one commit for both, shared with the other rows of the
//! batch. This file gives a key back and drops expired ones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Pool, StoreError};
use crate::domain::JobId;

/// Claims between two purges of expired keys (per process).
const PURGE_EVERY: usize = 1000;
static CLAIMS: AtomicUsize = AtomicUsize::new(0);

/// A key a new job claims, in the job's workspace: `scope` says whose it is, so that equal
/// keys of different senders never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub scope: String,
    pub key: String,
    /// How long a repeat answers the first job.
    pub window: Duration,
}

/// Gives a key back when its job could not be created, so that the sender's retry runs.
pub async fn release(
    pool: &Pool,
    workspace: &str,
    key: &DeliveryKey,
    job: JobId,
) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "DELETE FROM delivery_keys
         WHERE workspace_id = $1 AND scope = $2 AND key = $3 AND job_id = $4",
        &[&workspace, &key.scope, &key.key, &job],
    )
    .await?;
    Ok(())
}

/// Counts `claimed` new claims; every [`PURGE_EVERY`] of them, expired keys are dropped in the
/// background.
pub(super) fn note_claims(pool: &Pool, claimed: usize) {
    if claimed == 0 {
        return;
    }
    let before = CLAIMS.fetch_add(claimed, Ordering::Relaxed);
    if before / PURGE_EVERY != (before + claimed) / PURGE_EVERY {
        purge_expired(pool.clone());
    }
}

/// Drops expired keys in the background, a bounded batch at a time.
fn purge_expired(pool: Pool) {
    tokio::spawn(async move {
        let purged = async {
            let conn = pool.get().await?;
            conn.execute(
                "DELETE FROM delivery_keys WHERE ctid IN (
                     SELECT ctid FROM delivery_keys WHERE expires_at < now() LIMIT 10000)",
                &[],
            )
            .await?;
            Ok::<_, StoreError>(())
        };
        if let Err(e) = purged.await {
            tracing::warn!(error = %e, "could not purge expired delivery keys");
        }
    });
}
