//! Messages held in job rows until due (`publish_at`): a job scheduled for later, or a sleeping
//! flow's wake-up. The scheduler claims the due ones with `FOR UPDATE SKIP LOCKED`, so that of
//! several API replicas exactly one takes each, publishes them while it holds the claim, and
//! clears them in the same transaction. A crash in between leaves them held, to be published
//! again by the next claim under the same message id (JetStream drops the copy it remembers).

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Transaction;

use super::{Conn, Pool, StoreError};
use crate::domain::JobId;

/// A held message whose time has come.
#[derive(Debug)]
pub struct Due {
    pub id: JobId,
    pub envelope: Value,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// False when the job completed meanwhile (cancelled, or a flow that ended): nothing to
    /// publish, only the claim to clear.
    pub live: bool,
}

/// Due messages claimed by one transaction; dropped without [`DueBatch::dispatched`], they
/// stay held and the next claim takes them.
pub struct DueBatch<'c> {
    tx: Transaction<'c>,
    pub due: Vec<Due>,
}

/// Claims up to `limit` held messages whose time has come (by the database's clock), the
/// earliest first, skipping those another replica (or a flow transition) holds.
pub async fn claim_due<'c>(conn: &'c mut Conn<'_>, limit: i64) -> Result<DueBatch<'c>, StoreError> {
    let tx = conn.transaction().await?;
    let rows = tx
        .query(
            "SELECT id, publish_envelope, COALESCE(publish_msg_id, id::text),
                    status IN ('queued', 'running')
             FROM jobs WHERE publish_at <= now()
             ORDER BY publish_at LIMIT $1
             FOR UPDATE SKIP LOCKED",
            &[&limit],
        )
        .await?;
    let due = rows
        .iter()
        .map(|row| Due {
            id: row.get(0),
            envelope: row.get::<_, Option<Value>>(1).unwrap_or(Value::Null),
            msg_id: row.get(2),
            live: row.get(3),
        })
        .collect();
    Ok(DueBatch { tx, due })
}

impl DueBatch<'_> {
    /// The claimed messages were published (or had nothing to publish): no longer held.
    pub async fn dispatched(self) -> Result<(), StoreError> {
        let ids: Vec<JobId> = self.due.iter().map(|d| d.id).collect();
        self.tx
            .execute(
                "UPDATE jobs SET publish_at = NULL, publish_envelope = NULL, publish_msg_id = NULL
                 WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// How long until the earliest held message is due (zero if it is already), by the database's
/// clock; `None` when nothing is held.
pub async fn next_due(pool: &Pool) -> Result<Option<Duration>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_one(
            "SELECT EXTRACT(EPOCH FROM min(publish_at) - now())::float8
             FROM jobs WHERE publish_at IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row
        .get::<_, Option<f64>>(0)
        .and_then(|secs| Duration::try_from_secs_f64(secs.max(0.0)).ok()))
}
