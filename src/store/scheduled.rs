//! Messages held in job rows until due (`publish_at`): a job scheduled for later, or a sleeping
//! flow's wake-up. The scheduler claims the due ones with `FOR NO KEY UPDATE SKIP LOCKED`, so
//! that of several API replicas exactly one takes each, publishes them while it holds the claim,
//! and settles each in the same transaction: cleared once JetStream stored it, held again later
//! when JetStream refused it, its job failed when it can never be published. A crash in between
//! leaves them held, to be published again by the next claim under the same message id
//! (JetStream drops the copy it remembers).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Transaction;

use super::{Conn, Pool, StoreError};
use crate::domain::{not_queued_result, JobId};

/// A held message whose time has come.
#[derive(Debug)]
pub struct Due {
    pub id: JobId,
    /// The job's `tag` column, which names the subject.
    pub tag: String,
    /// The message as stored (PostgreSQL's text of the JSON, every field kept); `None` when
    /// the row holds none.
    pub message: Option<String>,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// False when the job completed meanwhile (cancelled, or a flow that ended): nothing to
    /// publish, only the claim to clear.
    pub live: bool,
    /// Tries JetStream refused since it was held.
    pub failures: i32,
}

/// What became of the messages of one claim.
#[derive(Debug, Default)]
pub struct Settled {
    /// Stored by JetStream, or nothing left to publish: no longer held.
    pub cleared: Vec<JobId>,
    /// Not stored this time: held again, due after the given delay.
    pub refused: Vec<(JobId, Duration)>,
    /// Can never be published, and why: the job ends as failed (`NotQueued`).
    pub unpublishable: Vec<(JobId, String)>,
}

/// A job ended because its held message could never be published: what its terminal event
/// and `done` reply need.
#[derive(Debug)]
pub struct Unpublished {
    pub id: JobId,
    pub workspace_id: String,
    pub job_kind: String,
    pub script_path: Option<String>,
    pub script_hash: Option<String>,
    pub flow_version: Option<i64>,
    pub parent_job: Option<JobId>,
    pub root_job: Option<JobId>,
    pub created_by: String,
    pub completed_at: DateTime<Utc>,
    /// For its metrics' labels.
    pub tag: String,
    pub language: Option<String>,
    pub result: Value,
}

/// Due messages claimed by one transaction; dropped without [`DueBatch::settle`], they stay
/// held and the next claim takes them.
pub struct DueBatch<'c> {
    tx: Transaction<'c>,
    pub due: Vec<Due>,
}

/// Claims up to `limit` held messages whose time has come (by the database's clock), the
/// earliest first, skipping those another replica (or a flow transition) holds. The lock does
/// not conflict with foreign keys' share locks, only with writers of the rows.
pub async fn claim_due<'c>(conn: &'c mut Conn<'_>, limit: i64) -> Result<DueBatch<'c>, StoreError> {
    let tx = conn.transaction().await?;
    let rows = tx
        .query(
            "SELECT id, tag, publish_envelope::text, COALESCE(publish_msg_id, id::text),
                    status IN ('queued', 'running'), publish_failures
             FROM jobs WHERE publish_at <= now()
             ORDER BY publish_at LIMIT $1
             FOR NO KEY UPDATE SKIP LOCKED",
            &[&limit],
        )
        .await?;
    let due = rows
        .iter()
        .map(|row| Due {
            id: row.get(0),
            tag: row.get(1),
            message: row.get(2),
            msg_id: row.get(3),
            live: row.get(4),
            failures: row.get(5),
        })
        .collect();
    Ok(DueBatch { tx, due })
}

impl DueBatch<'_> {
    /// Records what became of each claimed message and commits; returns the jobs it ended.
    pub async fn settle(self, settled: &Settled) -> Result<Vec<Unpublished>, StoreError> {
        if !settled.cleared.is_empty() {
            self.tx
                .execute(
                    "UPDATE jobs SET publish_at = NULL, publish_envelope = NULL,
                                     publish_msg_id = NULL, publish_failures = 0
                     WHERE id = ANY($1)",
                    &[&settled.cleared],
                )
                .await?;
        }
        if !settled.refused.is_empty() {
            let (ids, delays): (Vec<JobId>, Vec<i64>) = settled
                .refused
                .iter()
                .map(|(id, delay)| (*id, i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)))
                .unzip();
            self.tx
                .execute(
                    "UPDATE jobs SET publish_at = now() + r.delay_ms * interval '1 millisecond',
                                     publish_failures = publish_failures + 1
                     FROM unnest($1::uuid[], $2::int8[]) AS r(id, delay_ms)
                     WHERE jobs.id = r.id",
                    &[&ids, &delays],
                )
                .await?;
        }
        let mut ended = Vec::with_capacity(settled.unpublishable.len());
        for (id, why) in &settled.unpublishable {
            let result = not_queued_result(why);
            let row = self
                .tx
                .query_opt(
                    "UPDATE jobs SET status = 'failure', completed_at = now(), result = $2,
                                     publish_at = NULL, publish_envelope = NULL,
                                     publish_msg_id = NULL, publish_failures = 0
                     WHERE id = $1 AND status IN ('queued', 'running')
                     RETURNING workspace_id, job_kind, script_path, script_hash, flow_version,
                               parent_job, root_job, created_by, completed_at, tag, language",
                    &[id, &result],
                )
                .await?;
            if let Some(row) = row {
                ended.push(Unpublished {
                    id: *id,
                    workspace_id: row.get(0),
                    job_kind: row.get(1),
                    script_path: row.get(2),
                    script_hash: row.get(3),
                    flow_version: row.get(4),
                    parent_job: row.get(5),
                    root_job: row.get(6),
                    created_by: row.get(7),
                    completed_at: row.get(8),
                    tag: row.get(9),
                    language: row.get(10),
                    result,
                });
            }
        }
        self.tx.commit().await?;
        Ok(ended)
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
