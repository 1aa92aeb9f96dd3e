//! Records new jobs as `queued` in batches: concurrent webhook calls share one INSERT, so
//! ingestion is not bound by one round trip and one commit per request. Each caller still
//! waits for its own row to be committed, so a job id is never answered before it is readable.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use super::{Pool, StoreError};
use crate::queue::envelope::{JobEnvelope, QueuedRecord};

/// A job about to be recorded.
#[derive(Debug, Clone)]
pub struct NewJobRow {
    pub id: Uuid,
    pub workspace_id: String,
    pub job_kind: String,
    pub script_path: Option<String>,
    pub script_hash: Option<String>,
    pub args: Value,
    pub created_by: String,
    pub permissioned_as: String,
    pub created_at: DateTime<Utc>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub language: Option<String>,
    pub tag: String,
    pub timeout_s: Option<i32>,
    pub parent_job: Option<Uuid>,
    pub started_by_token: Option<String>,
    pub flow_version: Option<i64>,
    /// For a flow's step: its root flow, module id and unique place in the run.
    pub root_job: Option<Uuid>,
    pub flow_step_id: Option<String>,
    pub flow_step_key: Option<String>,
    /// What triggered the flow transition that enqueued this step.
    pub flow_enqueued_by: Option<String>,
    /// The job's envelope, when it is held for the scheduler until `scheduled_for` rather than
    /// published now.
    pub held: Option<Value>,
}

impl NewJobRow {
    /// The row of a job about to be published, from its envelope and the rest of its record.
    pub fn queued(envelope: &JobEnvelope, record: &QueuedRecord) -> Self {
        Self {
            id: envelope.id,
            workspace_id: envelope.workspace.clone(),
            job_kind: envelope.kind.as_str().to_owned(),
            script_path: envelope.path.clone(),
            script_hash: envelope.hash.clone(),
            args: Value::Object(record.args.clone()),
            created_by: envelope.created_by.clone(),
            permissioned_as: envelope.permissioned_as.clone(),
            created_at: record.created_at,
            scheduled_for: envelope.scheduled_for,
            language: envelope.language.map(|l| l.as_str().to_owned()),
            tag: envelope.tag.clone(),
            timeout_s: envelope.timeout_s,
            parent_job: record.parent_job,
            started_by_token: record.started_by_token.clone(),
            flow_version: envelope.flow_version,
            root_job: None,
            flow_step_id: None,
            flow_step_key: None,
            flow_enqueued_by: None,
            held: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// A job with this id exists already (a preset `job_id` reused).
    DuplicateId,
}

type Reply = oneshot::Sender<Result<InsertOutcome, Arc<StoreError>>>;

/// Handle to the batching task; cheap to clone.
#[derive(Clone)]
pub struct JobInserter {
    tx: mpsc::Sender<(NewJobRow, Reply)>,
}

/// Rows per INSERT: large enough to amortise a commit, small enough to keep latency low.
const MAX_BATCH: usize = 256;
/// INSERTs in flight at once; while they run, the next batch fills up.
const MAX_IN_FLIGHT: usize = 4;

impl JobInserter {
    pub fn spawn(pool: Pool) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * MAX_IN_FLIGHT * 4);
        tokio::spawn(run(pool, rx));
        Self { tx }
    }

    pub async fn insert(&self, row: NewJobRow) -> Result<InsertOutcome, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        let closed = || Arc::new(StoreError::Config("job inserter stopped".into()));
        self.tx.send((row, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<(NewJobRow, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Take whatever else is waiting (arrived while the previous batch was in flight).
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let (rows, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match insert_batch(&pool, &rows).await {
                Ok(inserted) => {
                    for (row, reply) in rows.iter().zip(replies) {
                        let _ = reply.send(Ok(outcome(&inserted, row)));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// One job, alone: a retry after its batch failed.
pub async fn insert_one(pool: &Pool, row: &NewJobRow) -> Result<InsertOutcome, StoreError> {
    let inserted = insert_batch(pool, std::slice::from_ref(row)).await?;
    Ok(outcome(&inserted, row))
}

fn outcome(inserted: &[Uuid], row: &NewJobRow) -> InsertOutcome {
    if inserted.contains(&row.id) {
        InsertOutcome::Inserted
    } else {
        InsertOutcome::DuplicateId
    }
}

/// One INSERT for the whole batch (a statement each connection prepares once); returns the ids
/// actually inserted.
async fn insert_batch(pool: &Pool, rows: &[NewJobRow]) -> Result<Vec<Uuid>, StoreError> {
    let mut conn = pool.get().await?;
    let statement = conn.prepared(INSERT, &[]).await?;
    Ok(run_insert(&**conn, &statement, rows).await?)
}

pub(super) const INSERT: &str =
    "INSERT INTO jobs (id, workspace_id, job_kind, script_path, script_hash, args, created_by,
                       permissioned_as, created_at, scheduled_for, language, tag, timeout_s,
                       parent_job, started_by_token, flow_version, root_job, flow_step_id,
                       flow_step_key, flow_enqueued_by, publish_envelope, publish_at, status)
     SELECT *, 'queued' FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                    $6::jsonb[], $7::text[], $8::text[], $9::timestamptz[],
                                    $10::timestamptz[], $11::text[], $12::text[], $13::int4[],
                                    $14::uuid[], $15::text[], $16::int8[], $17::uuid[],
                                    $18::text[], $19::text[], $20::text[], $21::jsonb[],
                                    $22::timestamptz[])
     ON CONFLICT DO NOTHING
     RETURNING id";

/// Runs [`INSERT`] for `rows` on a client or inside a transaction.
pub(super) async fn run_insert(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    rows: &[NewJobRow],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    fn col<'a, T>(rows: &'a [NewJobRow], f: impl Fn(&'a NewJobRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let inserted = client
        .query(
            statement,
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| &r.workspace_id),
                &col(rows, |r| &r.job_kind),
                &col(rows, |r| &r.script_path),
                &col(rows, |r| &r.script_hash),
                &col(rows, |r| &r.args),
                &col(rows, |r| &r.created_by),
                &col(rows, |r| &r.permissioned_as),
                &col(rows, |r| r.created_at),
                &col(rows, |r| r.scheduled_for),
                &col(rows, |r| &r.language),
                &col(rows, |r| &r.tag),
                &col(rows, |r| r.timeout_s),
                &col(rows, |r| r.parent_job),
                &col(rows, |r| &r.started_by_token),
                &col(rows, |r| r.flow_version),
                &col(rows, |r| r.root_job),
                &col(rows, |r| &r.flow_step_id),
                &col(rows, |r| &r.flow_step_key),
                &col(rows, |r| &r.flow_enqueued_by),
                &col(rows, |r| &r.held),
                &col(rows, |r| r.held.as_ref().and(r.scheduled_for)),
            ],
        )
        .await?;
    Ok(inserted.iter().map(|row| row.get(0)).collect())
}
