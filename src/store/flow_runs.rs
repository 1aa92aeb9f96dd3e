//! One flow transition as one transaction: lock the flow job's row, record what happened to its
//! steps, insert the step jobs it enqueues, save the new state (and the end, if it ended), and
//! commit. The row lock serialises transitions of one flow, whichever workers run them.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures::future::{maybe_done, MaybeDone};
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Statement;

use super::connections::Connection;
use super::flows::{self, Flow};
use super::job_inserter::{run_insert, INSERT, INSERT_NEW};
use super::jobs::{run_complete, Completion, COMPLETE, COMPLETE_TYPES};
use super::scripts::{self, Script};
use super::Begun;
use super::{Conn, NewJobRow, StoreError};
use crate::domain::{JobId, JobStatus, RunnablePath, ScriptHash, WorkspaceId};

/// The flow job's row, as a transition needs it.
#[derive(Debug, Clone)]
pub struct FlowJob {
    pub id: JobId,
    pub workspace_id: String,
    pub status: JobStatus,
    pub args: Value,
    pub flow_version: Option<i64>,
    pub path: Option<String>,
    pub created_by: String,
    pub permissioned_as: String,
    pub tag: String,
    pub started_by_token: Option<String>,
    /// The flow's saved state, as JSON text (read without a depth limit by its reader).
    pub state: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
}

/// A step job waiting in the queue, to publish (again).
#[derive(Debug, Clone)]
pub struct QueuedStep {
    pub id: JobId,
    pub script_path: Option<String>,
    pub script_hash: Option<String>,
    pub language: Option<String>,
    pub tag: String,
    pub timeout_s: Option<i32>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub flow_step_id: Option<String>,
}

/// A queued step that a transition or a cancel ended as cancelled.
#[derive(Debug, Clone)]
pub struct CanceledStep {
    pub id: JobId,
    pub script_path: Option<String>,
    pub script_hash: Option<String>,
    /// For its metrics' labels.
    pub tag: String,
    pub language: Option<String>,
}

/// How a flow ended, to record on its row.
#[derive(Debug, Clone)]
pub struct FlowEnd {
    pub status: JobStatus,
    pub result: Value,
    pub canceled_by: Option<String>,
    pub canceled_reason: Option<String>,
}

/// A flow job locked for one transition; ended by [`FlowRun::commit`] or [`FlowRun::rollback`].
/// Dropped without either (a cancelled task, an unexpected error), nothing happened, and the
/// connection is closed rather than lent again with the transaction open.
pub struct FlowRun<'c> {
    tx: Begun<'c>,
    statements: Statements,
    pub flow: FlowJob,
    /// What was read and recorded with the lock ([`With::Ends`]).
    pub opened: Opened,
}

/// What a transition records and reads with its lock: sent together with it, they cost no
/// round trip of their own, and the server runs them after it, so only once the lock is held
/// (a lock not granted fails them too).
#[derive(Debug, Clone, Copy)]
pub enum With<'a> {
    /// The flow alone.
    Nothing,
    /// The end of the step given (`(step, completion)`), then every step end the flow's state
    /// has not taken into account yet; with `start`, the flow marked running on that worker
    /// first if it is still queued (its start).
    Ends {
        ended: Option<(JobId, &'a Completion)>,
        start: Option<&'a str>,
    },
}

/// What [`With::Ends`] found.
#[derive(Debug, Default)]
pub struct Opened {
    /// The flow was queued and is now running: this transition starts it.
    pub started: bool,
    /// The step end given was recorded now (it had not ended before).
    pub recorded: bool,
    /// The ended steps of this flow that its state has not taken into account yet, in the
    /// order they ended: `(id, status, result)`.
    pub ends: Vec<(JobId, JobStatus, Value)>,
}

struct Statements {
    /// The flow's own row, if its INSERT has not landed.
    insert: Statement,
    /// New step rows.
    insert_new: Statement,
    save: Statement,
}

const LOCK: &str = "SELECT id, workspace_id, status, args, flow_version, script_path, created_by,
                           permissioned_as, tag, started_by_token, flow_state::text, started_at
                    FROM jobs WHERE id = $1 AND job_kind = 'flow' FOR UPDATE";
const LOCK_NOWAIT: &str = "SELECT id, workspace_id, status, args, flow_version, script_path,
                                  created_by, permissioned_as, tag, started_by_token,
                                  flow_state::text, started_at
                           FROM jobs WHERE id = $1 AND job_kind = 'flow' FOR UPDATE NOWAIT";
/// Queued → running on worker `$2` (the flow's start); nothing if it is not queued.
const START: &str = "UPDATE jobs SET status = 'running', started_at = now(), worker = $2,
                                     attempts = attempts + 1
                     WHERE id = $1 AND job_kind = 'flow' AND status = 'queued'
                     RETURNING started_at";

/// What locking a flow job found.
pub enum Locked<'c> {
    Run(Box<FlowRun<'c>>),
    /// No such flow job.
    Missing,
    /// Another transaction holds it (only when asked not to wait).
    Busy,
}

/// Locks the flow job `id`, waiting for it or not, and does what `with` says, all in one
/// round trip with the transaction's BEGIN. With `record` (the flow's row as its first message
/// carries it), the row is written first if the API's INSERT has not landed yet (the API
/// publishes small flows while it inserts them); such a flow has no steps yet.
pub async fn lock<'c>(
    conn: &'c mut Conn<'_>,
    id: JobId,
    record: Option<&NewJobRow>,
    wait: bool,
    with: With<'_>,
) -> Result<Locked<'c>, StoreError> {
    let lock = if wait {
        conn.prepared(LOCK, &[Type::UUID]).await?
    } else {
        conn.prepared(LOCK_NOWAIT, &[Type::UUID]).await?
    };
    let complete = conn.prepared(COMPLETE, COMPLETE_TYPES).await?;
    let unapplied = conn.prepared(UNAPPLIED, &[Type::UUID]).await?;
    let mark_started = conn.prepared(START, &[Type::UUID, Type::TEXT]).await?;
    let statements = Statements {
        insert: conn.prepared(INSERT, &[]).await?,
        insert_new: conn.prepared(INSERT_NEW, &[]).await?,
        save: conn.prepared(SAVE, SAVE_TYPES).await?,
    };
    let conn: &'c Connection = conn;
    let (tx, begin) = conn.begin();
    let (ended, starting, reading) = match with {
        With::Nothing => (None, None, false),
        With::Ends { ended, start } => (ended, start, true),
    };
    let by_id: &[&(dyn ToSql + Sync)] = &[&id];
    let mark = |worker: &str| {
        let worker = worker.to_owned();
        let statement = mark_started.clone();
        async move {
            let row = conn.query_opt(&statement, &[&id, &worker]).await?;
            Ok::<_, StoreError>(row.map(|row| row.get::<_, DateTime<Utc>>(0)))
        }
    };
    // Polled in this order, all are sent at once, in this order: usually the API's INSERT
    // landed before the flow's message arrived, so the row is there to lock.
    let (begun, mut found, mut started, recorded, ends) = futures::join!(
        begin,
        conn.query_opt(&lock, by_id),
        async {
            match starting {
                Some(worker) => mark(worker).await,
                None => Ok(None),
            }
        },
        async {
            match ended {
                Some((step, completion)) => {
                    run_complete(conn.client(), &complete, step, completion).await
                }
                None => Ok(false),
            }
        },
        async {
            match reading {
                true => conn.query(&unapplied, by_id).await,
                false => Ok(Vec::new()),
            }
        },
    );
    // From here on, every statement sent has been answered when its await returns: a way out
    // rolls back at once and keeps the connection.
    let looked = async {
        begun?;
        if let (Ok(None), Some(record)) = (&found, record) {
            // Waits for an uncommitted INSERT of the same id (then does nothing), or writes
            // the row.
            let rows = std::slice::from_ref(record);
            run_insert(conn.client(), &statements.insert, rows).await?;
            found = conn.query_opt(&lock, by_id).await;
            // The start sent with the lock may have found the row committed meanwhile (it
            // reads a snapshot of its own): then the flow is started already.
            if let (Ok(Some(_)), Some(worker), Ok(None)) = (&found, starting, &started) {
                started = mark(worker).await;
            }
        }
        // The lock's own outcome first: when it failed, so did what was sent after it.
        let row = match found {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(Err(Locked::Missing)),
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                return Ok(Err(Locked::Busy))
            }
            Err(e) => return Err(StoreError::from(e)),
        };
        let started = started?;
        let opened = Opened {
            started: started.is_some(),
            recorded: recorded?,
            ends: ends?.iter().map(step_end).collect(),
        };
        Ok(Ok((row, started, opened)))
    }
    .await;
    let (row, started, opened) = match looked {
        Ok(Ok(found)) => found,
        Ok(Err(locked)) => {
            tx.rollback();
            return Ok(locked);
        }
        Err(e) => {
            tx.rollback();
            return Err(e);
        }
    };
    let mut flow = FlowJob {
        id: row.get(0),
        workspace_id: row.get(1),
        status: JobStatus::parse(row.get(2)).unwrap_or(JobStatus::Failure),
        args: row.get(3),
        flow_version: row.get(4),
        path: row.get(5),
        created_by: row.get(6),
        permissioned_as: row.get(7),
        tag: row.get(8),
        started_by_token: row.get(9),
        state: row.get(10),
        started_at: row.get(11),
    };
    if let Some(at) = started {
        flow.status = JobStatus::Running;
        flow.started_at = Some(at);
    }
    Ok(Locked::Run(Box::new(FlowRun {
        tx,
        statements,
        flow,
        opened,
    })))
}

fn step_end(row: &tokio_postgres::Row) -> (JobId, JobStatus, Value) {
    let status = JobStatus::parse(row.get(1)).unwrap_or(JobStatus::Failure);
    let result: Option<Value> = row.get(2);
    (row.get(0), status, result.unwrap_or(Value::Null))
}

const UNAPPLIED: &str = "SELECT id, status, result FROM jobs
                         WHERE parent_job = $1 AND flow_step_key IS NOT NULL
                           AND NOT flow_step_applied
                           AND status IN ('success', 'failure', 'canceled')
                         ORDER BY completed_at, id";

impl FlowRun<'_> {
    /// A script version, read in this transaction: the live one at `path`, or `hash` if it is
    /// a version of `path`.
    pub async fn script(
        &self,
        ws: &WorkspaceId,
        path: &RunnablePath,
        hash: Option<&ScriptHash>,
    ) -> Result<Option<Script>, StoreError> {
        Ok(match hash {
            Some(hash) => scripts::by_hash_on(self.tx.client(), ws, hash)
                .await?
                .filter(|s| &s.path == path),
            None => scripts::latest_by_path_on(self.tx.client(), ws, path)
                .await?
                .filter(|s| !s.archived),
        })
    }

    /// A flow version, read in this transaction.
    pub async fn version(&self, ws: &WorkspaceId, id: i64) -> Result<Option<Flow>, StoreError> {
        flows::version_on(self.tx.client(), ws, id).await
    }

    /// Cancels steps: queued ones end now (returned first), running ones are flagged for their
    /// worker to kill (returned second).
    pub async fn cancel_steps(
        &self,
        ids: &[JobId],
        by: &str,
        reason: Option<&str>,
        result: &Value,
    ) -> Result<(Vec<CanceledStep>, Vec<JobId>), StoreError> {
        if ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let queued = self
            .tx
            .query(
                "UPDATE jobs SET status = 'canceled', canceled_by = $2, canceled_reason = $3,
                                 result = $4, completed_at = now(), logs = ''
                 WHERE id = ANY($1) AND status = 'queued'
                 RETURNING id, script_path, script_hash, tag, language",
                &[&ids, &by, &reason, result],
            )
            .await?;
        let queued = queued
            .iter()
            .map(|r| CanceledStep {
                id: r.get(0),
                script_path: r.get(1),
                script_hash: r.get(2),
                tag: r.get(3),
                language: r.get(4),
            })
            .collect();
        let running = self
            .tx
            .query(
                "UPDATE jobs SET cancel_requested = true, canceled_by = $2, canceled_reason = $3
                 WHERE id = ANY($1) AND status = 'running' RETURNING id",
                &[&ids, &by, &reason],
            )
            .await?;
        Ok((queued, running.iter().map(|r| r.get(0)).collect()))
    }

    /// Every step of this flow that is still queued or running.
    pub async fn unfinished_steps(&self) -> Result<Vec<JobId>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT id FROM jobs WHERE parent_job = $1 AND flow_step_key IS NOT NULL
                                       AND status IN ('queued', 'running')",
                &[&self.flow.id],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Holds the flow's wake-up at `at` on its row, for the scheduler to publish then, unless
    /// an earlier one is held already (whose transition will ask for this one again).
    pub async fn hold_wake(
        &self,
        at: DateTime<Utc>,
        envelope: &Value,
        msg_id: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE jobs SET publish_at = $2, publish_envelope = $3, publish_msg_id = $4
                 WHERE id = $1 AND (publish_at IS NULL OR publish_at > $2)",
                &[&self.flow.id, &at, envelope, &msg_id],
            )
            .await?;
        Ok(())
    }

    /// Inserts the new step jobs, marks the step ends applied, saves the state and, when the
    /// flow ended, its end: sent together, one round trip. Nothing is committed yet. A step row
    /// that exists already (a bug: keys are unique per flow, and a state never enqueues one
    /// twice) fails it with a unique violation.
    pub async fn save(&self, saving: Saving<'_>) -> Result<(), StoreError> {
        let (insert, save) = self.send_save(saving).await?;
        let (inserted, saved) = futures::join!(answer(insert), answer(save));
        inserted?;
        saved?;
        Ok(())
    }

    /// [`FlowRun::save`], with the COMMIT sent along: one round trip less, for a transition
    /// that has nothing to do between the two. `Ok` once committed.
    pub async fn save_and_commit(self, saving: Saving<'_>) -> Result<(), StoreError> {
        let (insert, save) = self.send_save(saving).await?;
        // If one of them fails on the server, the COMMIT rolls back instead (and answers
        // without an error): their own answers say so.
        let (inserted, saved, committed) =
            futures::join!(answer(insert), answer(save), self.tx.commit());
        inserted?;
        saved?;
        committed?;
        Ok(())
    }

    /// Sends the statements of [`FlowRun::save`] without awaiting their answers; fails, and
    /// sends nothing more, if one of them could not be sent at all.
    async fn send_save<'a>(
        &'a self,
        saving: Saving<'a>,
    ) -> Result<(Sent<'a>, Sent<'a>), StoreError> {
        let Saving {
            new_steps,
            applied,
            state,
            status,
            end,
        } = saving;
        let insert = send(async move {
            if !new_steps.is_empty() {
                run_insert(self.tx.client(), &self.statements.insert_new, new_steps).await?;
            }
            Ok(())
        })
        .await?;
        let ended = (
            end.map(|e| e.status.as_str()),
            end.map(|e| &e.result),
            end.and_then(|e| e.canceled_by.as_deref()),
            end.and_then(|e| e.canceled_reason.as_deref()),
        );
        let save = send(async move {
            let params: [&(dyn ToSql + Sync); 8] = [
                &self.flow.id,
                &state,
                &status,
                &ended.0,
                &ended.1,
                &ended.2,
                &ended.3,
                &applied,
            ];
            self.tx.execute(&self.statements.save, &params).await?;
            Ok(())
        })
        .await;
        let save = match save {
            Ok(save) => save,
            Err(e) => {
                // Answered before going: the caller may roll back and keep the connection.
                let _ = answer(insert).await;
                return Err(e);
            }
        };
        Ok((insert, save))
    }

    /// Commits the transition.
    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }

    /// Gives the transition up once every statement it sent has been answered (after an
    /// error): nothing happened, and the connection can serve again at once.
    pub fn rollback(self) {
        self.tx.rollback();
    }
}

/// A statement sent, its answer (success or its error) to await with [`answer`].
type Sent<'a> = Pin<Box<MaybeDone<Pending<'a>>>>;
type Pending<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Sends a statement without awaiting its answer. tokio-postgres sends a statement when its
/// future is first polled, and fails it right there, before anything is sent, when it cannot
/// be sent at all (a value it cannot encode, a message too large): that error is returned at
/// once, so that nothing meant to follow the statement (a COMMIT) is sent after it.
async fn send<'a>(
    statement: impl Future<Output = Result<(), StoreError>> + Send + 'a,
) -> Result<Sent<'a>, StoreError> {
    let boxed: Pending<'a> = Box::pin(statement);
    let mut sent = Box::pin(maybe_done(boxed));
    let _ = futures::poll!(sent.as_mut());
    if let Some(Err(_)) = sent.as_mut().output_mut() {
        if let Some(Err(e)) = sent.as_mut().take_output() {
            return Err(e);
        }
    }
    Ok(sent)
}

/// The answer to a statement [`send`] sent.
async fn answer(mut sent: Sent<'_>) -> Result<(), StoreError> {
    sent.as_mut().await;
    sent.as_mut()
        .take_output()
        .expect("a statement's answer is taken once")
}

/// What [`FlowRun::save`] writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Saving<'a> {
    /// Step jobs the transition enqueues.
    pub new_steps: &'a [NewJobRow],
    /// Step ends the transition applied.
    pub applied: &'a [JobId],
    /// The new state (`None`: as it was).
    pub state: Option<&'a Value>,
    pub status: Option<&'a Value>,
    /// How the flow ended, if it did.
    pub end: Option<&'a FlowEnd>,
}

const SAVE: &str = "WITH applied AS (
         UPDATE jobs SET flow_step_applied = true WHERE id = ANY($8))
     UPDATE jobs SET flow_state = COALESCE($2, flow_state),
                     flow_status = COALESCE($3, flow_status),
                     status = COALESCE($4, status),
                     result = CASE WHEN $4 IS NULL THEN result ELSE $5 END,
                     completed_at = CASE WHEN $4 IS NULL THEN completed_at ELSE now() END,
                     duration_ms = CASE WHEN $4 IS NULL THEN duration_ms ELSE
                         (EXTRACT(EPOCH FROM now() - COALESCE(started_at, now())) * 1000)::bigint
                     END,
                     canceled_by = COALESCE($6, canceled_by),
                     canceled_reason = COALESCE($7, canceled_reason)
     WHERE id = $1";
const SAVE_TYPES: &[Type] = &[
    Type::UUID,
    Type::JSONB,
    Type::JSONB,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
    Type::TEXT,
    Type::UUID_ARRAY,
];

/// The steps of a flow that `trigger` enqueued and that are still waiting in the queue: when
/// the trigger comes back they are published again (JetStream drops the copies it remembers).
/// Steps held for the scheduler (a retry due later) are its to publish.
pub async fn queued_steps(
    conn: &Conn<'_>,
    flow: JobId,
    trigger: &str,
) -> Result<Vec<QueuedStep>, StoreError> {
    let rows = conn
        .query(
            "SELECT id, script_path, script_hash, language, tag, timeout_s, scheduled_for,
                    flow_step_id
             FROM jobs WHERE parent_job = $1 AND flow_step_key IS NOT NULL AND status = 'queued'
                         AND flow_enqueued_by = $2 AND publish_at IS NULL",
            &[&flow, &trigger],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| QueuedStep {
            id: row.get(0),
            script_path: row.get(1),
            script_hash: row.get(2),
            language: row.get(3),
            tag: row.get(4),
            timeout_s: row.get(5),
            scheduled_for: row.get(6),
            flow_step_id: row.get(7),
        })
        .collect())
}

/// Whether a step's end has been taken into account by its flow.
pub async fn step_applied(conn: &Conn<'_>, step: JobId) -> Result<bool, StoreError> {
    let row = conn
        .query_opt("SELECT flow_step_applied FROM jobs WHERE id = $1", &[&step])
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}
