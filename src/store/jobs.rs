//! The job history: one row per job, written by the API (queued, canceled while queued)
//! and by workers (running — recording the job first if its envelope got there before the
//! API's INSERT — and completed).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::Type;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::domain::{JobId, JobStatus, WorkspaceId};

use super::{NewJobRow, Pool, StoreError};

/// A job as the API shows it (SPEC §2): every field present, null when it does not apply.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: Uuid,
    pub workspace_id: String,
    /// `QueuedJob` until the job completes, then `CompletedJob`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub job_kind: String,
    pub script_path: Option<String>,
    pub script_hash: Option<String>,
    pub flow_version: Option<i64>,
    pub args: Value,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub running: bool,
    pub success: Option<bool>,
    pub canceled: bool,
    pub canceled_by: Option<String>,
    pub canceled_reason: Option<String>,
    pub result: Option<Value>,
    pub logs: Option<String>,
    pub language: Option<String>,
    pub tag: String,
    pub worker: Option<String>,
    pub attempts: i32,
    pub flow_status: Option<Value>,
    /// A flow step's flow, its root flow, and its module id.
    pub parent_job: Option<Uuid>,
    pub root_job: Option<Uuid>,
    pub flow_step_id: Option<String>,
    #[serde(skip)]
    pub status: JobStatus,
    #[serde(skip)]
    pub permissioned_as: String,
    #[serde(skip)]
    pub started_by_token: Option<String>,
}

const COLUMNS: &str = "id, workspace_id, job_kind, script_path, script_hash, flow_version, args, \
    created_by, created_at, scheduled_for, started_at, completed_at, duration_ms, status, \
    canceled_by, canceled_reason, result, logs, language, tag, worker, attempts, flow_status, \
    permissioned_as, started_by_token, parent_job, root_job, flow_step_id";

fn from_row(row: &Row) -> JobRecord {
    let status = JobStatus::parse(row.get(13)).unwrap_or(JobStatus::Failure);
    JobRecord {
        id: row.get(0),
        workspace_id: row.get(1),
        type_: if status.is_completed() {
            "CompletedJob"
        } else {
            "QueuedJob"
        },
        job_kind: row.get(2),
        script_path: row.get(3),
        script_hash: row.get(4),
        flow_version: row.get(5),
        args: row.get(6),
        created_by: row.get(7),
        created_at: row.get(8),
        scheduled_for: row.get(9),
        started_at: row.get(10),
        completed_at: row.get(11),
        duration_ms: row.get(12),
        running: status == JobStatus::Running,
        success: status.success(),
        canceled: status == JobStatus::Canceled,
        canceled_by: row.get(14),
        canceled_reason: row.get(15),
        result: row.get(16),
        logs: row.get(17),
        language: row.get(18),
        tag: row.get(19),
        worker: row.get(20),
        attempts: row.get(21),
        flow_status: row.get(22),
        status,
        permissioned_as: row.get(23),
        started_by_token: row.get(24),
        parent_job: row.get(25),
        root_job: row.get(26),
        flow_step_id: row.get(27),
    }
}

pub async fn get(
    pool: &Pool,
    ws: &WorkspaceId,
    id: JobId,
) -> Result<Option<JobRecord>, StoreError> {
    let conn = pool.get().await?;
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND workspace_id = $2");
    let row = conn.query_opt(&sql, &[&id, &ws.as_str()]).await?;
    Ok(row.as_ref().map(from_row))
}

/// A running flow's `early_return` result, once its module ended.
pub async fn early_result(
    pool: &Pool,
    ws: &WorkspaceId,
    id: JobId,
) -> Result<Option<Value>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT flow_state -> 'early_result' FROM jobs WHERE id = $1 AND workspace_id = $2",
            &[&id, &ws.as_str()],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Filters of the Runs list (SPEC §2), already parsed.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub script_path_exact: Option<String>,
    pub script_hash: Option<String>,
    pub job_kinds: Option<Vec<String>>,
    pub success: Option<bool>,
    pub running: Option<bool>,
    pub created_by: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub include_flow_steps: bool,
    pub per_page: i64,
    pub page: i64,
    /// `None` for admins (every job); otherwise who is asking.
    pub visible_to: Option<Viewer>,
}

/// A non-admin caller of the Runs list: their own jobs and the jobs of what they can read.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub username: String,
    /// `u/<me>` and `g/<group>` of each of the caller's groups.
    pub grantees: Vec<String>,
}

pub async fn list(
    pool: &Pool,
    ws: &WorkspaceId,
    filter: &ListFilter,
) -> Result<Vec<JobRecord>, StoreError> {
    let conn = pool.get().await?;
    // Each optional filter is a `$n IS NULL OR …` clause, so one prepared statement serves all.
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs WHERE workspace_id = $1
           AND ($2::text IS NULL OR script_path = $2)
           AND ($3::text IS NULL OR script_hash = $3)
           AND ($4::text[] IS NULL OR job_kind = ANY($4))
           AND ($5::bool IS NULL OR (CASE WHEN $5 THEN status = 'success'
                                          ELSE status IN ('failure', 'canceled') END))
           AND ($6::bool IS NULL OR ((status = 'running') = $6))
           AND ($7::text IS NULL OR created_by = $7)
           AND ($8::timestamptz IS NULL OR created_at > $8)
           AND ($9::timestamptz IS NULL OR created_at < $9)
           AND ($10 OR parent_job IS NULL
                OR NOT EXISTS (SELECT 1 FROM jobs p WHERE p.id = jobs.parent_job
                                                      AND p.job_kind = 'flow'))
           AND ($13::text IS NULL
                OR created_by = $13
                OR EXISTS (
                    -- What the job runs, for permissions: a flow's step counts as its flow.
                    SELECT 1 FROM (SELECT
                        CASE WHEN jobs.flow_step_id IS NULL THEN jobs.script_path
                             ELSE (SELECT r.script_path FROM jobs r WHERE r.id = jobs.root_job)
                        END AS path,
                        CASE WHEN jobs.job_kind = 'flow' OR jobs.flow_step_id IS NOT NULL
                             THEN 'flow' ELSE 'script' END AS kind) v
                    WHERE starts_with(v.path, 'u/' || $13 || '/')
                       OR EXISTS (SELECT 1 FROM item_perms p
                                  WHERE p.workspace_id = jobs.workspace_id AND p.kind = v.kind
                                    AND p.path = v.path AND p.grantee = ANY($14))
                       OR (starts_with(v.path, 'f/') AND EXISTS (
                               SELECT 1 FROM folders f
                               WHERE f.workspace_id = jobs.workspace_id
                                 AND f.name = split_part(v.path, '/', 2)
                                 AND (f.owners && $14 OR f.extra_perms ?| $14)))))
         ORDER BY created_at DESC, id DESC
         LIMIT $11 OFFSET $12"
    );
    let offset = (filter.page - 1).saturating_mul(filter.per_page);
    let viewer = filter.visible_to.as_ref().map(|v| v.username.as_str());
    let grantees: Vec<String> = filter
        .visible_to
        .as_ref()
        .map(|v| v.grantees.clone())
        .unwrap_or_default();
    let rows = conn
        .query(
            &sql,
            &[
                &ws.as_str(),
                &filter.script_path_exact,
                &filter.script_hash,
                &filter.job_kinds,
                &filter.success,
                &filter.running,
                &filter.created_by,
                &filter.created_after,
                &filter.created_before,
                &filter.include_flow_steps,
                &filter.per_page,
                &offset,
                &viewer,
                &grantees,
            ],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// What a worker needs to run a job it has just marked running.
#[derive(Debug, Clone)]
pub struct StartedJob {
    pub args: Value,
    /// This attempt's number: it fences every later write of the attempt.
    pub attempts: i32,
    /// Set when a cancel was requested while an earlier attempt ran it.
    pub cancel: Option<CancelRequest>,
    /// When the job could start: its creation as the API recorded it, or its due time.
    pub due_at: DateTime<Utc>,
}

/// Who asked to cancel a running job, and why.
#[derive(Debug, Clone, Default)]
pub struct CancelRequest {
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// What marking a job running found.
#[derive(Debug)]
pub enum Start {
    Started(StartedJob),
    /// Completed already (cancelled while queued, or finished by an earlier delivery), or no
    /// such row (the API took it back): skip it.
    Ended,
    /// Another attempt runs it and its lease has not passed: offer it again after this long.
    Held(Duration),
}

/// Until when the attempt running a job holds it, given `$lease` (the parameter holding
/// `JOB_LEASE_TIMEOUT` in seconds). A running row without a lease was started by a worker from
/// before leases, which never renews one: it counts as leased for one lease from its start, so
/// that a redelivery during a rolling upgrade does not run a live job a second time at once;
/// one without even a start time (none is written so) may be taken.
macro_rules! lease_end {
    ($lease:literal) => {
        concat!(
            "COALESCE(jobs.lease_until, jobs.started_at + make_interval(secs => ",
            $lease,
            "), '-infinity'::timestamptz)"
        )
    };
}

/// The rows a delivery may take: queued, or running under a lease that has passed (its worker
/// died, or lost the database and stopped the job).
macro_rules! takeable {
    ($lease:literal) => {
        concat!(
            "(jobs.status = 'queued' OR (jobs.status = 'running' AND ",
            lease_end!($lease),
            " < now()))"
        )
    };
}

/// Marks the job running on `worker` as a new attempt holding it for `lease`, counting the
/// attempt. With `row` (the job as its envelope describes it), the row is written here if the
/// API's INSERT has not landed yet: the API publishes small jobs while it inserts them.
pub async fn start(
    pool: &Pool,
    id: JobId,
    worker: &str,
    row: Option<&NewJobRow>,
    lease: Duration,
) -> Result<Start, StoreError> {
    let mut conn = pool.get().await?;
    let lease = lease.as_secs_f64();
    let found = match row {
        None => {
            let statement = conn
                .prepared(
                    concat!(
                        "UPDATE jobs SET status = 'running', started_at = now(), worker = $2,
                                         attempts = attempts + 1,
                                         lease_until = now() + make_interval(secs => $3)
                         WHERE id = $1 AND ",
                        takeable!("$3"),
                        " RETURNING args, attempts, cancel_requested, canceled_by, canceled_reason,
                                   GREATEST(created_at, scheduled_for)"
                    ),
                    &[Type::UUID, Type::TEXT, Type::FLOAT8],
                )
                .await?;
            conn.query_opt(&statement, &[&id, &worker, &lease]).await?
        }
        Some(row) => {
            // An INSERT that is still uncommitted makes this one wait for it, then update.
            let statement = conn
                .prepared(
                    concat!(
                        "INSERT INTO jobs (id, workspace_id, job_kind, script_path, script_hash,
                                           args, created_by, permissioned_as, created_at,
                                           scheduled_for, language, tag, timeout_s, parent_job,
                                           started_by_token, status, started_at, worker, attempts,
                                           lease_until)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                                 'running', now(), $16, 1, now() + make_interval(secs => $17))
                         ON CONFLICT (id) DO UPDATE
                             SET status = 'running', started_at = now(), worker = EXCLUDED.worker,
                                 attempts = jobs.attempts + 1, lease_until = EXCLUDED.lease_until
                             WHERE ",
                        takeable!("$17"),
                        " RETURNING args, attempts, cancel_requested, canceled_by, canceled_reason,
                                   GREATEST(created_at, scheduled_for)"
                    ),
                    &[
                        Type::UUID,
                        Type::TEXT,
                        Type::TEXT,
                        Type::TEXT,
                        Type::TEXT,
                        Type::JSONB,
                        Type::TEXT,
                        Type::TEXT,
                        Type::TIMESTAMPTZ,
                        Type::TIMESTAMPTZ,
                        Type::TEXT,
                        Type::TEXT,
                        Type::INT4,
                        Type::UUID,
                        Type::TEXT,
                        Type::TEXT,
                        Type::FLOAT8,
                    ],
                )
                .await?;
            conn.query_opt(
                &statement,
                &[
                    &id,
                    &row.workspace_id,
                    &row.job_kind,
                    &row.script_path,
                    &row.script_hash,
                    &row.args,
                    &row.created_by,
                    &row.permissioned_as,
                    &row.created_at,
                    &row.scheduled_for,
                    &row.language,
                    &row.tag,
                    &row.timeout_s,
                    &row.parent_job,
                    &row.started_by_token,
                    &worker,
                    &lease,
                ],
            )
            .await?
        }
    };
    if let Some(row) = found {
        return Ok(Start::Started(StartedJob {
            args: row.get(0),
            attempts: row.get(1),
            cancel: cancel_of(&row, 2),
            due_at: row.get(5),
        }));
    }
    // Not taken: ended, or held by a live attempt (whose lease may pass in the meantime; the
    // next delivery then takes it).
    let held = conn
        .query_opt(
            concat!(
                "SELECT GREATEST(EXTRACT(EPOCH FROM ",
                lease_end!("$2"),
                " - now()), 0)::float8 FROM jobs WHERE id = $1 AND status = 'running'"
            ),
            &[&id, &lease],
        )
        .await?;
    Ok(match held {
        None => Start::Ended,
        Some(row) => Start::Held(Duration::from_secs_f64(
            row.get::<_, Option<f64>>(0).unwrap_or(0.0),
        )),
    })
}

/// The cancel request in columns `at` (`cancel_requested`), `at + 1` and `at + 2` (who, why).
fn cancel_of(row: &Row, at: usize) -> Option<CancelRequest> {
    row.get::<_, bool>(at).then(|| CancelRequest {
        by: row.get(at + 1),
        reason: row.get(at + 2),
    })
}

/// What renewing an attempt's lease found.
#[derive(Debug)]
pub enum Lease {
    /// Still this attempt's, now until `lease` from now; with the cancel request, if any.
    Held(Option<CancelRequest>),
    /// Another attempt took the job over, or it ended: this attempt must write nothing more.
    Lost,
}

/// Extends the lease of `attempt` on its running job by `lease`, from the database's now.
pub async fn renew_lease(
    pool: &Pool,
    id: JobId,
    attempt: i32,
    lease: Duration,
) -> Result<Lease, StoreError> {
    let mut conn = pool.get().await?;
    let statement = conn
        .prepared(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND attempts = $2 AND status = 'running'
             RETURNING cancel_requested, canceled_by, canceled_reason",
            &[Type::UUID, Type::INT4, Type::FLOAT8],
        )
        .await?;
    let row = conn
        .query_opt(&statement, &[&id, &attempt, &lease.as_secs_f64()])
        .await?;
    Ok(match row {
        Some(row) => Lease::Held(cancel_of(&row, 0)),
        None => Lease::Lost,
    })
}

/// How a job ended, as the worker (or a cancel) records it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The attempt that ran the job: only it may record the end.
    pub attempt: i32,
    pub status: JobStatus,
    pub result: Value,
    pub logs: String,
    pub duration_ms: Option<i64>,
    pub canceled_by: Option<String>,
    pub canceled_reason: Option<String>,
}

/// Records the end of a running job by the attempt that holds it. False if the job was
/// completed already, or another attempt took it over.
pub async fn complete(pool: &Pool, id: JobId, completion: &Completion) -> Result<bool, StoreError> {
    let mut conn = pool.get().await?;
    let statement = conn.prepared(COMPLETE, COMPLETE_TYPES).await?;
    if run_complete(&**conn, &statement, id, completion).await? {
        return Ok(true);
    }
    // A retry whose first try committed but lost its answer finds the row ended already — by
    // this attempt, which alone ends a running row under its number.
    let row = conn
        .query_opt(
            "SELECT 1 FROM jobs WHERE id = $1 AND attempts = $2
                                AND status NOT IN ('queued', 'running')",
            &[&id, &completion.attempt],
        )
        .await?;
    Ok(row.is_some())
}

/// Runs [`COMPLETE`] on a connection or inside a transaction; false if the job had ended or
/// is another attempt's.
pub(super) async fn run_complete(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    id: JobId,
    completion: &Completion,
) -> Result<bool, StoreError> {
    let updated = client
        .execute(
            statement,
            &[
                &id,
                &completion.status.as_str(),
                &completion.result,
                &completion.logs,
                &completion.duration_ms,
                &completion.canceled_by,
                &completion.canceled_reason,
                &completion.attempt,
            ],
        )
        .await?;
    Ok(updated == 1)
}

pub(super) const COMPLETE_TYPES: &[Type] = &[
    Type::UUID,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
];

pub(super) const COMPLETE: &str =
    "UPDATE jobs SET status = $2, result = $3, logs = $4, duration_ms = $5, completed_at = now(),
                     canceled_by = COALESCE($6, canceled_by),
                     canceled_reason = COALESCE($7, canceled_reason)
     WHERE id = $1 AND status = 'running' AND attempts = $8";

/// What a cancel request found.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was queued: it is now completed as cancelled and will never start.
    CanceledQueued(Box<JobRecord>),
    /// The job is running: the flag is set and the worker holding it must kill it.
    Requested,
    AlreadyCompleted,
    NotFound,
}

pub async fn cancel(
    pool: &Pool,
    ws: &WorkspaceId,
    id: JobId,
    canceled_by: &str,
    reason: Option<&str>,
    result: &Value,
) -> Result<CancelOutcome, StoreError> {
    let conn = pool.get().await?;
    let sql = format!(
        "UPDATE jobs SET status = 'canceled', canceled_by = $3, canceled_reason = $4,
                         result = $5, completed_at = now(), logs = '',
                         publish_at = NULL, publish_envelope = NULL, publish_msg_id = NULL
         WHERE id = $1 AND workspace_id = $2 AND status = 'queued'
         RETURNING {COLUMNS}"
    );
    if let Some(row) = conn
        .query_opt(&sql, &[&id, &ws.as_str(), &canceled_by, &reason, result])
        .await?
    {
        return Ok(CancelOutcome::CanceledQueued(Box::new(from_row(&row))));
    }
    let requested = conn
        .execute(
            "UPDATE jobs SET cancel_requested = true, canceled_by = $3, canceled_reason = $4
             WHERE id = $1 AND workspace_id = $2 AND status = 'running'",
            &[&id, &ws.as_str(), &canceled_by, &reason],
        )
        .await?;
    if requested == 1 {
        return Ok(CancelOutcome::Requested);
    }
    let exists = conn
        .query_opt(
            "SELECT 1 FROM jobs WHERE id = $1 AND workspace_id = $2",
            &[&id, &ws.as_str()],
        )
        .await?;
    Ok(if exists.is_some() {
        CancelOutcome::AlreadyCompleted
    } else {
        CancelOutcome::NotFound
    })
}

/// Saves the output so far of a running job, so `get_logs` shows progress; only while
/// `attempt` holds it.
pub async fn save_logs(pool: &Pool, id: JobId, attempt: i32, logs: &str) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "UPDATE jobs SET logs = $2 WHERE id = $1 AND status = 'running' AND attempts = $3",
        &[&id, &logs, &attempt],
    )
    .await?;
    Ok(())
}

/// Ends, as failed, a job whose publish failed although JetStream may have stored it: a late
/// delivery then finds nothing to start. False when a worker has started it already.
pub async fn abandon_unpublished(pool: &Pool, id: JobId, why: &str) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let result = crate::domain::not_queued_result(why);
    let ended = conn
        .execute(
            "UPDATE jobs SET status = 'failure', completed_at = now(), result = $2
             WHERE id = $1 AND status = 'queued'",
            &[&id, &result],
        )
        .await?;
    Ok(ended == 1)
}

/// Removes a job that was recorded but could not be published, so it is not left queued.
pub async fn forget_unpublished(pool: &Pool, id: JobId) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "DELETE FROM jobs WHERE id = $1 AND status = 'queued'",
        &[&id],
    )
    .await?;
    Ok(())
}
