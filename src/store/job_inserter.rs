//! Records new jobs as `queued` in batches: concurrent webhook calls share one INSERT, so
//! ingestion is not bound by one round trip and one commit per request. Each caller still
//! waits for its own row to be committed, so a job id is never answered before it is readable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::connections::Manager;
use super::deliveries::{self, DeliveryKey};
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
    /// A delivery or idempotency key the job claims: the row is written only if the key is
    /// free (or its claim expired), and then holds it.
    pub once: Option<DeliveryKey>,
}

impl NewJobRow {
    /// The row of a job about to be published, from its envelope and the rest of its record.
    pub fn queued(envelope: &JobEnvelope, record: &QueuedRecord) -> Self {
        Self::queued_from(envelope, record.clone())
    }

    /// [`NewJobRow::queued`], taking the record's arguments instead of copying them (they may
    /// be as large as a request body).
    pub fn queued_from(envelope: &JobEnvelope, record: QueuedRecord) -> Self {
        Self {
            id: envelope.id,
            workspace_id: envelope.workspace.clone(),
            job_kind: envelope.kind.as_str().to_owned(),
            script_path: envelope.path.clone(),
            script_hash: envelope.hash.clone(),
            args: Value::Object(record.args),
            created_by: envelope.created_by.clone(),
            permissioned_as: envelope.permissioned_as.clone(),
            created_at: record.created_at,
            scheduled_for: envelope.scheduled_for,
            language: envelope.language.map(|l| l.as_str().to_owned()),
            tag: envelope.tag.clone(),
            timeout_s: envelope.timeout_s,
            parent_job: record.parent_job,
            started_by_token: record.started_by_token,
            flow_version: envelope.flow_version,
            root_job: None,
            flow_step_id: None,
            flow_step_key: None,
            flow_enqueued_by: None,
            held: None,
            once: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// A job with this id exists already (a preset `job_id` reused).
    DuplicateId,
    /// The row's key was claimed within its window by that job: nothing was written.
    Repeat(Uuid),
}

type Reply = oneshot::Sender<Result<InsertOutcome, Arc<StoreError>>>;

/// A row waiting for its batch, with the size of its arguments.
struct Pending {
    row: NewJobRow,
    bytes: usize,
    reply: Reply,
    /// When it was queued: a row that waited past the deadline for its batch is refused
    /// (`Timeout`) unwritten, its caller answered 503 already or about to be.
    since: tokio::time::Instant,
}

/// Handle to the batching task; cheap to clone.
#[derive(Clone)]
pub struct JobInserter {
    tx: mpsc::Sender<Pending>,
    deadline: Duration,
}

/// Rows per INSERT: large enough to amortise a commit, small enough to keep latency low.
const MAX_BATCH: usize = 256;
/// Bytes of arguments per INSERT: a statement's parameters travel in one PostgreSQL message,
/// which may not exceed 1 GiB, and a batch is held in memory twice while it is sent. A row
/// larger than this goes alone.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// INSERTs in flight at once; while they run, the next batch fills up.
const MAX_IN_FLIGHT: usize = 4;
/// Rows that may wait for a batch; one more is refused at once (`Busy`) rather than queued.
const MAX_WAITING: usize = MAX_BATCH * MAX_IN_FLIGHT * 4;

impl JobInserter {
    /// `deadline`: the longest one INSERT may take before it is cancelled.
    pub fn spawn(pool: Pool, deadline: Duration) -> Self {
        let (tx, rx) = mpsc::channel(MAX_WAITING);
        tokio::spawn(run(pool, rx, deadline));
        Self { tx, deadline }
    }

    /// Queues `row` for the next batch, or refuses it at once (`Busy`) when too many rows
    /// wait already: nothing is written then.
    pub fn enqueue(&self, row: NewJobRow) -> Result<Enqueued, StoreError> {
        let (reply, answer) = oneshot::channel();
        let bytes = json_size(&row.args);
        self.tx
            .try_send(Pending {
                row,
                bytes,
                reply,
                since: tokio::time::Instant::now(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                mpsc::error::TrySendError::Closed(_) => stopped(),
            })?;
        Ok(Enqueued(answer))
    }

    /// One job, alone: a retry after its batch failed.
    pub async fn insert_one(
        &self,
        pool: &Pool,
        row: &NewJobRow,
    ) -> Result<InsertOutcome, StoreError> {
        let now = tokio::time::Instant::now();
        match insert_batch(pool, std::slice::from_ref(row), now, self.deadline).await {
            BatchOutcome::Done(outcomes) => Ok(outcomes[0]),
            BatchOutcome::Failed(e, _) => Err(e),
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Config("job inserter stopped".into())
}

/// A row waiting for its batch.
pub struct Enqueued(oneshot::Receiver<Result<InsertOutcome, Arc<StoreError>>>);

impl Enqueued {
    /// Once its batch is committed (or failed).
    pub async fn outcome(self) -> Result<InsertOutcome, Arc<StoreError>> {
        self.0.await.map_err(|_| Arc::new(stopped()))?
    }
}

/// Bytes of `value` as JSON, without keeping them.
fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<Pending>, deadline: Duration) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A row that did not fit in the previous batch's byte budget starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match rx.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Take whatever else is waiting (arrived while the previous batch was in flight).
        let batch;
        (batch, carried) = take_batch(first, &mut rx, |p| p.bytes);
        let (batch, stale): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|p| p.since.elapsed() < deadline);
        for pending in stale {
            let _ = pending
                .reply
                .send(Err(Arc::new(StoreError::Timeout(deadline))));
        }
        if batch.is_empty() {
            continue;
        }
        let pool = pool.clone();
        let oldest = batch
            .iter()
            .map(|p| p.since)
            .min()
            .expect("a batch is not empty");
        tokio::spawn(async move {
            let (rows, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.row, p.reply)).unzip();
            match insert_batch(&pool, &rows, oldest, deadline).await {
                BatchOutcome::Done(outcomes) => {
                    for (outcome, reply) in outcomes.into_iter().zip(replies) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                BatchOutcome::Failed(e, settled) => {
                    let e = Arc::new(e);
                    for (settled, reply) in settled.into_iter().zip(replies) {
                        let _ = reply.send(settled.ok_or_else(|| e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// `first` and what waits after it, up to [`MAX_BATCH`] rows and [`MAX_BATCH_BYTES`] (`first`
/// alone may be larger); the row that did not fit is handed back for the next batch.
fn take_batch<T>(
    first: T,
    rx: &mut mpsc::Receiver<T>,
    size: impl Fn(&T) -> usize,
) -> (Vec<T>, Option<T>) {
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(next) if bytes + size(&next) > MAX_BATCH_BYTES => return (batch, Some(next)),
            Ok(next) => {
                bytes += size(&next);
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    (batch, None)
}

/// A connection from the pool, however long it takes: the pool gives up on its own after its
/// connection timeout, which must not cut a longer `SUBMIT_TIMEOUT` short. (bb8 reports
/// nothing else as `TimedOut`, and only after that timeout, 10 s: this does not spin.)
async fn connection(pool: &Pool) -> Result<bb8::PooledConnection<'_, Manager>, StoreError> {
    loop {
        match pool.get().await {
            Err(bb8::RunError::TimedOut) => continue,
            got => return Ok(got?),
        }
    }
}

/// What became of a batch.
enum BatchOutcome {
    /// Every row's outcome, in order.
    Done(Vec<InsertOutcome>),
    /// Stopped by a failure: the rows settled before it keep their outcomes (their statements
    /// committed); the others fail with it.
    Failed(StoreError, Vec<Option<InsertOutcome>>),
}

/// The whole batch, each row answered in order: one [`INSERT`] (a statement each connection
/// prepares once) writes every row whose id and key are free — a key is claimed by the row
/// that holds it, so claim and job are one tuple. Rows it did not write are then looked up by
/// index, and only those: a live key answers its holder's job, a taken id is a conflict, and
/// a row whose key had expired (or was let go meanwhile) goes in a further statement once the
/// key is taken back. Rows sharing a key or an id wait for the first of them (see [`Settle`]).
///
/// A connection is waited for until `deadline` after `oldest` (when the batch's first row was
/// queued). Past `deadline` the running statement is cancelled on the server and its end
/// awaited, so that the outcome is known: each row committed in time (by this statement or an
/// earlier one), or not at all — for one more `deadline` at most: a server that does not answer
/// even that (frozen, or cut off) leaves the outcome of the rows not settled yet unknown, and
/// they are answered `Timeout` too. (Such a row may then commit later, `queued` with no
/// message; the caller was answered 503.)
async fn insert_batch(
    pool: &Pool,
    rows: &[NewJobRow],
    oldest: tokio::time::Instant,
    deadline: Duration,
) -> BatchOutcome {
    let mut settle = Settle::new(rows);
    match settle_in_time(pool, &mut settle, oldest, deadline).await {
        Ok(()) => BatchOutcome::Done(settle.outcomes()),
        Err(e) => BatchOutcome::Failed(e, settle.outcomes),
    }
}

async fn settle_in_time(
    pool: &Pool,
    settle: &mut Settle<'_>,
    oldest: tokio::time::Instant,
    deadline: Duration,
) -> Result<(), StoreError> {
    let mut conn = tokio::time::timeout_at(oldest + deadline, connection(pool))
        .await
        .map_err(|_| StoreError::Timeout(deadline))??;
    let statement = tokio::time::timeout(deadline, conn.prepared(INSERT, &[]))
        .await
        .map_err(|_| StoreError::Timeout(deadline))??;
    let cancel = conn.cancel_token();
    let query = settle_rounds(&**conn, &statement, settle);
    tokio::pin!(query);
    tokio::select! {
        done = &mut query => done,
        () = tokio::time::sleep(deadline) => {
            let cancelled = async {
                if let Err(e) = cancel.cancel_query(tokio_postgres::NoTls).await {
                    tracing::warn!(error = %e, "could not cancel a slow job INSERT");
                }
                query.await
            };
            match tokio::time::timeout(deadline, cancelled).await {
                Err(_) => {
                    tracing::warn!("a cancelled job INSERT did not end; its outcome is unknown");
                    Err(StoreError::Timeout(deadline))
                }
                Ok(Err(StoreError::Query(e)))
                    if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
                {
                    Err(StoreError::Timeout(deadline))
                }
                Ok(done) => done,
            }
        }
    }
}

/// Rounds in which a row may have to try again (its key expired, or its holder let go between
/// the INSERT and the lookup) before the batch gives up: each needs another request to act on
/// the same key in between.
const MAX_RETRIES: usize = 8;

/// Runs [`INSERT`] round by round until every row of `settle` has its outcome.
async fn settle_rounds(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    settle: &mut Settle<'_>,
) -> Result<(), StoreError> {
    let rows = settle.rows;
    let mut round = settle.first_round();
    let mut retries = 0;
    while !round.is_empty() {
        let picked: Vec<&NewJobRow> = round.iter().map(|&i| &rows[i]).collect();
        let columns = columns(&picked);
        let written: HashSet<Uuid> = insert_columns(client, statement, &columns)
            .await?
            .into_iter()
            .collect();
        // The keys of the rows not written, and their ids: what they met.
        let (mut keys, mut ids) = (Vec::new(), Vec::new());
        for (row, key) in picked.iter().zip(&columns.keys) {
            if let (false, Some(key)) = (written.contains(&row.id), key) {
                keys.push(key.as_slice());
                ids.push(row.id);
            }
        }
        // What the INSERT settled: rows written, and rows without a key that were not (their
        // id is taken). Committed already: noted before anything else can fail or be cancelled.
        let by_insert = |n: usize| match (written.contains(&picked[n].id), &columns.keys[n]) {
            (true, _) => Some(InsertOutcome::Inserted),
            (false, None) => Some(InsertOutcome::DuplicateId),
            (false, Some(_)) => None,
        };
        settle.note(&round, by_insert);
        let (holders, taken) = met(client, &keys, &ids).await?;
        settle.note(&round, |n| {
            let key = columns.keys[n].as_ref()?;
            match holders.get(key) {
                Some(holder) if holder.live => Some(InsertOutcome::Repeat(holder.job)),
                // Expired, and taken back just now: the row tries again.
                Some(_) => None,
                None if taken.contains(&picked[n].id) => Some(InsertOutcome::DuplicateId),
                // Its holder let go between the INSERT and the lookup.
                None => None,
            }
        });
        let again;
        (round, again) = settle.next_round(&round);
        if again {
            retries += 1;
            if retries > MAX_RETRIES {
                return Err(StoreError::Contended);
            }
        }
    }
    Ok(())
}

/// Who holds `keys` (of rows with `ids` that were not written) and which of `ids` are taken;
/// expired keys among them are taken back, so that their rows can try again.
async fn met(
    client: &impl tokio_postgres::GenericClient,
    keys: &[&[u8]],
    ids: &[Uuid],
) -> Result<(HashMap<Vec<u8>, deliveries::Holder>, HashSet<Uuid>), tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let (holders, taken) = deliveries::holders(client, keys, ids).await?;
    let expired: Vec<&[u8]> = keys
        .iter()
        .copied()
        .filter(|key| holders.get(*key).is_some_and(|h| !h.live))
        .collect();
    if !expired.is_empty() {
        deliveries::take_back_expired(client, &expired).await?;
    }
    Ok((holders, taken))
}

/// A row's key, whole: the workspace, whose key it is, and the key.
fn once_of(row: &NewJobRow) -> Option<(&str, &str, &str)> {
    let once = row.once.as_ref()?;
    Some((&row.workspace_id, &once.scope, &once.key))
}

/// The outcomes of a batch, settled round by round: rows sharing a key or an id wait for the
/// first of them, since one statement cannot write both.
struct Settle<'a> {
    rows: &'a [NewJobRow],
    outcomes: Vec<Option<InsertOutcome>>,
    /// Per row, the row before it that shares its key or id, if any.
    follows: Vec<Option<usize>>,
}

impl<'a> Settle<'a> {
    fn new(rows: &'a [NewJobRow]) -> Self {
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        let follows = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let same_key = once_of(row).and_then(|k| by_key.insert(k, i));
                let same_id = by_id.insert(row.id, i);
                same_key.max(same_id)
            })
            .collect();
        Self {
            rows,
            outcomes: vec![None; rows.len()],
            follows,
        }
    }

    fn first_round(&self) -> Vec<usize> {
        let ready = (0..self.rows.len()).filter(|&i| self.follows[i].is_none());
        self.sorted(ready.collect())
    }

    /// In the order of their keys and ids (rows without a key first), so that concurrent
    /// batches wait for each other's keys in one order and cannot deadlock.
    fn sorted(&self, mut round: Vec<usize>) -> Vec<usize> {
        round.sort_by(|&a, &b| {
            let key = |i: usize| (once_of(&self.rows[i]), self.rows[i].id);
            key(a).cmp(&key(b))
        });
        round
    }

    /// Takes answers for rows of `round` (by place in `round`; `None`: not known yet).
    fn note(&mut self, round: &[usize], answer: impl Fn(usize) -> Option<InsertOutcome>) {
        for (n, &i) in round.iter().enumerate() {
            if self.outcomes[i].is_none() {
                self.outcomes[i] = answer(n);
            }
        }
    }

    /// Once `round` is answered: settles the rows that waited for its rows, and returns those
    /// that need another statement, and whether a row of `round` is among them (it tries
    /// again).
    fn next_round(&mut self, round: &[usize]) -> (Vec<usize>, bool) {
        let mut next: Vec<usize> = round
            .iter()
            .copied()
            .filter(|&i| self.outcomes[i].is_none())
            .collect();
        let again = !next.is_empty();
        // Followers come after the rows they follow: one pass settles chains.
        for i in 0..self.rows.len() {
            if self.outcomes[i].is_some() || next.contains(&i) {
                continue;
            }
            let Some(before) = self.follows[i] else {
                continue;
            };
            let key = once_of(&self.rows[i]);
            let same_key = key.is_some() && key == once_of(&self.rows[before]);
            match self.outcomes[before] {
                None => {}
                Some(InsertOutcome::Inserted) if same_key => {
                    self.outcomes[i] = Some(InsertOutcome::Repeat(self.rows[before].id));
                }
                // Only the id is shared, and the row before took it.
                Some(InsertOutcome::Inserted) => {
                    self.outcomes[i] = Some(InsertOutcome::DuplicateId);
                }
                Some(InsertOutcome::Repeat(first)) if same_key => {
                    self.outcomes[i] = Some(InsertOutcome::Repeat(first));
                }
                // The row before wrote nothing: this one's id may be free, or taken.
                Some(_) => next.push(i),
            }
        }
        (self.sorted(next), again)
    }

    fn outcomes(self) -> Vec<InsertOutcome> {
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or(InsertOutcome::DuplicateId))
            .collect()
    }
}

/// The columns of `jobs` a new row sets, in the order of [`INSERT`]'s parameters.
macro_rules! job_columns {
    () => {
        "id, workspace_id, job_kind, script_path, script_hash, args, created_by, \
         permissioned_as, created_at, scheduled_for, language, tag, timeout_s, parent_job, \
         started_by_token, flow_version, root_job, flow_step_id, flow_step_key, \
         flow_enqueued_by, publish_envelope, publish_at"
    };
}

/// `INSERT INTO jobs` of the rows given as one array per column ([`Columns`]): those of
/// [`job_columns`], then the key's digest and its window in seconds, which become
/// `once_key` and `once_until`; then `$tail`.
macro_rules! insert_rows {
    ($tail:literal) => {
        concat!(
            "INSERT INTO jobs (",
            job_columns!(),
            ", once_key, once_until, status) SELECT ",
            job_columns!(),
            ", once_key, now() + make_interval(secs => once_secs), 'queued' FROM \
             unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], \
             $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], \
             $12::text[], $13::int4[], $14::uuid[], $15::text[], $16::int8[], $17::uuid[], \
             $18::text[], $19::text[], $20::text[], $21::jsonb[], $22::timestamptz[], \
             $23::bytea[], $24::float8[]) AS i(",
            job_columns!(),
            ", once_key, once_secs)",
            $tail
        )
    };
}

/// The rows whose id and key are free are written; answers their ids. (With no conflict
/// target, both the id's and the key's unique index are arbiters.)
pub(super) const INSERT: &str = insert_rows!(" ON CONFLICT DO NOTHING RETURNING id");

/// [`INSERT`] of rows that must all be new (a flow's steps, each under a key unique per flow):
/// a row that exists already fails the statement, and with it the transaction.
pub(super) const INSERT_NEW: &str = insert_rows!(" RETURNING id");

type Column<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// [`INSERT`]'s parameters for some rows, one array per column.
struct Columns<'a> {
    /// Those of [`job_columns`].
    jobs: Vec<Column<'a>>,
    /// Each row's key, as `once_key` holds it.
    keys: Vec<Option<Vec<u8>>>,
    /// Each key's window in seconds.
    windows: Vec<Option<f64>>,
}

fn columns<'a>(rows: &[&'a NewJobRow]) -> Columns<'a> {
    fn col<'a, T: ToSql + Sync + Send + 'a>(
        rows: &[&'a NewJobRow],
        f: impl Fn(&'a NewJobRow) -> T,
    ) -> Column<'a> {
        Box::new(rows.iter().map(|r| f(r)).collect::<Vec<T>>())
    }
    let jobs = vec![
        col(rows, |r| r.id),
        col(rows, |r| &r.workspace_id),
        col(rows, |r| &r.job_kind),
        col(rows, |r| &r.script_path),
        col(rows, |r| &r.script_hash),
        col(rows, |r| &r.args),
        col(rows, |r| &r.created_by),
        col(rows, |r| &r.permissioned_as),
        col(rows, |r| r.created_at),
        col(rows, |r| r.scheduled_for),
        col(rows, |r| &r.language),
        col(rows, |r| &r.tag),
        col(rows, |r| r.timeout_s),
        col(rows, |r| r.parent_job),
        col(rows, |r| &r.started_by_token),
        col(rows, |r| r.flow_version),
        col(rows, |r| r.root_job),
        col(rows, |r| &r.flow_step_id),
        col(rows, |r| &r.flow_step_key),
        col(rows, |r| &r.flow_enqueued_by),
        col(rows, |r| &r.held),
        col(rows, |r| r.held.as_ref().and(r.scheduled_for)),
    ];
    let (keys, windows) = rows
        .iter()
        .map(|r| match &r.once {
            Some(key) => (
                Some(key.digest(&r.workspace_id)),
                Some(key.window.as_secs_f64()),
            ),
            None => (None, None),
        })
        .unzip();
    Columns {
        jobs,
        keys,
        windows,
    }
}

/// Runs [`INSERT`] or [`INSERT_NEW`] for `rows` on a client or inside a transaction; returns
/// the ids written.
pub(super) async fn run_insert(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    rows: &[NewJobRow],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows: Vec<&NewJobRow> = rows.iter().collect();
    insert_columns(client, statement, &columns(&rows)).await
}

/// Runs [`INSERT`] or [`INSERT_NEW`] with `columns`; returns the ids written.
async fn insert_columns(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    columns: &Columns<'_>,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let jobs = columns.jobs.iter().map(|c| &**c as &(dyn ToSql + Sync));
    let once: [&(dyn ToSql + Sync); 2] = [&columns.keys, &columns.windows];
    let parameters: Vec<_> = jobs.chain(once).collect();
    let inserted = client.query(statement, &parameters).await?;
    Ok(inserted.iter().map(|row| row.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_keep_to_their_byte_budget() {
        const MIB: usize = 1024 * 1024;
        let (tx, mut rx) = mpsc::channel(1024);
        // 64 bodies of 16 MiB: one statement would be a 1 GiB message, past PostgreSQL's limit.
        for _ in 0..63 {
            tx.try_send(16 * MIB).unwrap();
        }
        let mut first = 16 * MIB;
        let mut statements = Vec::new();
        loop {
            let (batch, carried) = take_batch(first, &mut rx, |b| *b);
            assert!(batch.iter().sum::<usize>() <= MAX_BATCH_BYTES);
            statements.push(batch.len());
            match carried.or_else(|| rx.try_recv().ok()) {
                Some(next) => first = next,
                None => break,
            }
        }
        assert_eq!(statements, vec![2; 32]);
        // A row over the budget goes alone; small rows still share statements by the hundred.
        tx.try_send(1).unwrap();
        let (batch, carried) = take_batch(40 * MIB, &mut rx, |b| *b);
        assert_eq!((batch, carried), (vec![40 * MIB], Some(1)));
        for _ in 0..300 {
            tx.try_send(1000).unwrap();
        }
        let (batch, _) = take_batch(1, &mut rx, |b| *b);
        assert_eq!(batch.len(), MAX_BATCH);
    }
}
