//! Delivery keys (`delivery_keys`): the first request with a key claims it for its job; a
//! repeat within the window finds that job instead of starting another. The key lives in
//! PostgreSQL because senders retry for hours, far beyond JetStream's dedup window.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{Pool, StoreError};
use crate::domain::{JobId, WorkspaceId};

/// Claims per process between two purges of expired keys.
const PURGE_EVERY: u32 = 1000;
static CLAIMS: AtomicU32 = AtomicU32::new(0);

/// Who a key belongs to, so that equal keys of different senders never meet.
pub struct KeyScope<'a> {
    pub ws: &'a WorkspaceId,
    pub scope: &'a str,
    pub key: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: start the job.
    New,
    /// A request with this key started that job already.
    Seen(JobId),
}

/// Claims `key` for `job` for `window`; an expired claim is taken over. Two concurrent claims
/// of one key: the second waits for the first's row, then sees it.
pub async fn claim(
    pool: &Pool,
    key: &KeyScope<'_>,
    job: JobId,
    window: Duration,
) -> Result<Claim, StoreError> {
    let conn = pool.get().await?;
    let secs = window.as_secs_f64();
    let claimed = conn
        .query_opt(
            "INSERT INTO delivery_keys (workspace_id, scope, key, job_id, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             ON CONFLICT (workspace_id, scope, key) DO UPDATE
                 SET job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at
                 WHERE delivery_keys.expires_at <= now()
             RETURNING job_id",
            &[&key.ws.as_str(), &key.scope, &key.key, &job, &secs],
        )
        .await?;
    if claimed.is_some() {
        if CLAIMS.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1 {
            purge_expired(pool.clone());
        }
        return Ok(Claim::New);
    }
    let row = conn
        .query_one(
            "SELECT job_id FROM delivery_keys WHERE workspace_id = $1 AND scope = $2 AND key = $3",
            &[&key.ws.as_str(), &key.scope, &key.key],
        )
        .await?;
    Ok(Claim::Seen(row.get(0)))
}

/// Gives a key back when its job could not be created, so that the sender's retry runs.
pub async fn release(pool: &Pool, key: &KeyScope<'_>, job: JobId) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "DELETE FROM delivery_keys
         WHERE workspace_id = $1 AND scope = $2 AND key = $3 AND job_id = $4",
        &[&key.ws.as_str(), &key.scope, &key.key, &job],
    )
    .await?;
    Ok(())
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
