//! Records new jobs as `queued` in batches: concurrent webhook calls share one INSERT, so
//! ingestion is not bound by one round trip and one commit per request. Each caller still
//! waits for its own row to be committed, so a job id is never answered before it is readable.

use std::collections::HashSet;
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
    /// new (or its claim expired), in the same statement as the claim.
    pub once: Option<DeliveryKey>,
    /// The caller chose the id (`job_id`), so a job may have it already; a fresh id cannot.
    pub id_preset: bool,
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
            id_preset: false,
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
        let outcomes = insert_batch(pool, std::slice::from_ref(row), now, self.deadline).await?;
        Ok(outcomes[0])
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
                Ok(outcomes) => {
                    for (outcome, reply) in outcomes.into_iter().zip(replies) {
                        let _ = reply.send(Ok(outcome));
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

/// The whole batch, each row answered in order. Rows without keys go in one statement (a
/// statement each connection prepares once). Rows with keys claim them in the same statement
/// (`insert_claiming!`), in key order, so that concurrent batches lock shared keys in the same
/// order and cannot deadlock. Of rows sharing a key (or a preset id) only the first goes in the
/// statement, which could not claim one key twice: a later copy takes the first copy's
/// outcome, except after a `DuplicateId`, when it goes in a further statement of the same
/// transaction (so that the batch commits whole or not at all).
///
/// A connection is waited for until `deadline` after `oldest` (when the batch's first row was
/// queued). Past `deadline` the statement is cancelled on the server and its end awaited, so
/// that the outcome is known: committed in time, or not at all — for one more `deadline` at most: a
/// server that does not answer even that (frozen, or cut off) leaves the outcome unknown, and
/// the rows are answered `Timeout` too. (Such a row may then commit later, `queued` with no
/// message; the caller was answered 503.)
async fn insert_batch(
    pool: &Pool,
    rows: &[NewJobRow],
    oldest: tokio::time::Instant,
    deadline: Duration,
) -> Result<Vec<InsertOutcome>, StoreError> {
    let mut conn = tokio::time::timeout_at(oldest + deadline, connection(pool))
        .await
        .map_err(|_| StoreError::Timeout(deadline))??;
    let keyed = rows.iter().any(|row| row.once.is_some());
    let preset_keyed = rows.iter().any(|row| row.once.is_some() && row.id_preset);
    let statement = async {
        match (keyed, preset_keyed) {
            (false, _) => conn.prepared(INSERT, &[]).await,
            (true, false) => conn.prepared(INSERT_CLAIMING, &[]).await,
            // Prepared anew: its first executions get plans made for the tables as they are
            // now, where a plan cached on the connection may date from when they were tiny,
            // and read them whole (see the statement). Preset ids with keys are rare.
            (true, true) => conn.client().prepare(INSERT_CLAIMING_PRESET).await,
        }
    };
    let statement = tokio::time::timeout(deadline, statement)
        .await
        .map_err(|_| StoreError::Timeout(deadline))??;
    let cancel = conn.cancel_token();
    let query = async {
        if !keyed {
            let inserted: HashSet<Uuid> = run_insert(&**conn, &statement, rows)
                .await?
                .into_iter()
                .collect();
            // Two rows of the batch with one preset id: the first is the one written.
            let mut answered = HashSet::new();
            return Ok(rows
                .iter()
                .map(
                    |row| match inserted.contains(&row.id) && answered.insert(row.id) {
                        true => InsertOutcome::Inserted,
                        false => InsertOutcome::DuplicateId,
                    },
                )
                .collect());
        }
        let mut settle = Settle::new(rows);
        let mut round = settle.first_round();
        if !settle.may_need_more_rounds() {
            let written = claim_round(&**conn, &statement, rows, &round).await?;
            settle.record(&round, &written);
        } else {
            let tx = conn.transaction().await?;
            while !round.is_empty() {
                let written = claim_round(&tx, &statement, rows, &round).await?;
                round = settle.record(&round, &written);
            }
            tx.commit().await?;
        }
        deliveries::note_claims(pool, settle.claims());
        Ok::<_, tokio_postgres::Error>(settle.outcomes())
    };
    tokio::pin!(query);
    tokio::select! {
        done = &mut query => Ok(done?),
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
                Ok(Ok(written)) => Ok(written),
                Ok(Err(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
                {
                    Err(StoreError::Timeout(deadline))
                }
                Ok(Err(e)) => Err(e.into()),
            }
        }
    }
}

/// The outcomes of a batch with keys, settled round by round: rows sharing a key or an id
/// wait for the first of them.
struct Settle<'a> {
    rows: &'a [NewJobRow],
    outcomes: Vec<Option<InsertOutcome>>,
    /// Per row, the row before it that shares its key or id, if any.
    follows: Vec<Option<usize>>,
    claims: usize,
}

impl<'a> Settle<'a> {
    fn new(rows: &'a [NewJobRow]) -> Self {
        let mut by_key = std::collections::HashMap::new();
        let mut by_id = std::collections::HashMap::new();
        let follows = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let same_key = row
                    .once
                    .as_ref()
                    .and_then(|k| by_key.insert((&row.workspace_id, &k.scope, &k.key), i));
                let same_id = by_id.insert(row.id, i);
                same_key.max(same_id)
            })
            .collect();
        Self {
            rows,
            outcomes: vec![None; rows.len()],
            follows,
            claims: 0,
        }
    }

    /// Whether a row waits for another: only then can a second statement be needed.
    fn may_need_more_rounds(&self) -> bool {
        self.follows.iter().any(Option::is_some)
    }

    fn first_round(&self) -> Vec<usize> {
        let ready = (0..self.rows.len()).filter(|&i| self.follows[i].is_none());
        self.sorted(ready.collect())
    }

    /// In key order (rows without a key first): see [`insert_batch`].
    fn sorted(&self, mut round: Vec<usize>) -> Vec<usize> {
        round.sort_by(|&a, &b| {
            let key = |i: usize| {
                let row = &self.rows[i];
                row.once
                    .as_ref()
                    .map(|k| (&row.workspace_id, &k.scope, &k.key))
            };
            key(a).cmp(&key(b))
        });
        round
    }

    /// Takes a round's answers; settles the rows that waited for its rows, and returns those
    /// that need another statement.
    fn record(&mut self, round: &[usize], written: &Written) -> Vec<usize> {
        for &i in round {
            let row = &self.rows[i];
            let outcome = written
                .get(&row.id)
                .copied()
                .unwrap_or(InsertOutcome::DuplicateId);
            if outcome == InsertOutcome::Inserted && row.once.is_some() {
                self.claims += 1;
            }
            self.outcomes[i] = Some(outcome);
        }
        let mut next = Vec::new();
        // Followers come after the rows they follow: one pass settles chains.
        for i in 0..self.rows.len() {
            if self.outcomes[i].is_some() || next.contains(&i) {
                continue;
            }
            let Some(before) = self.follows[i] else {
                continue;
            };
            match self.outcomes[before] {
                None => {}
                Some(InsertOutcome::DuplicateId) => next.push(i),
                Some(InsertOutcome::Inserted) => {
                    self.outcomes[i] = Some(self.follower_of(i, before, self.rows[before].id));
                }
                Some(InsertOutcome::Repeat(first)) => {
                    self.outcomes[i] = Some(self.follower_of(i, before, first));
                }
            }
        }
        self.sorted(next)
    }

    /// A row after `before`, whose job is `job`: a repeat if they share the key, else (only
    /// the id is shared) its id is taken.
    fn follower_of(&self, i: usize, before: usize, job: Uuid) -> InsertOutcome {
        let key = |r: &NewJobRow| r.once.as_ref().map(|k| (r.workspace_id.clone(), k.clone()));
        match key(&self.rows[i]) {
            Some(k) if Some(&k) == key(&self.rows[before]).as_ref() => InsertOutcome::Repeat(job),
            _ => InsertOutcome::DuplicateId,
        }
    }

    fn claims(&self) -> usize {
        self.claims
    }

    fn outcomes(self) -> Vec<InsertOutcome> {
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or(InsertOutcome::DuplicateId))
            .collect()
    }
}

/// What one statement of `insert_claiming!` did to each of its rows (ids are distinct in a
/// round); a row it does not mention was not written: its id is taken.
type Written = std::collections::HashMap<Uuid, InsertOutcome>;

/// Runs `statement` (an `insert_claiming!`) for the rows `round` of `rows`. A claim it made
/// for a row it then could not write (its id was taken in the meantime) is given back at once.
async fn claim_round(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    rows: &[NewJobRow],
    round: &[usize],
) -> Result<Written, tokio_postgres::Error> {
    let round: Vec<&NewJobRow> = round.iter().map(|&i| &rows[i]).collect();
    let columns = columns(&round);
    let mut params = parameters(&columns);
    let scopes: Vec<Option<&str>> = round
        .iter()
        .map(|r| r.once.as_ref().map(|k| k.scope.as_str()))
        .collect();
    let keys: Vec<Option<&str>> = round
        .iter()
        .map(|r| r.once.as_ref().map(|k| k.key.as_str()))
        .collect();
    let windows: Vec<Option<f64>> = round
        .iter()
        .map(|r| r.once.as_ref().map(|k| k.window.as_secs_f64()))
        .collect();
    let preset: Vec<bool> = round.iter().map(|r| r.id_preset).collect();
    let claims: [&(dyn ToSql + Sync); 4] = [&scopes, &keys, &windows, &preset];
    params.extend(claims);
    let mut written = Written::new();
    let mut stray = Vec::new();
    for answer in client.query(statement, &params).await? {
        let id: Uuid = answer.get(0);
        let outcome = match (answer.get::<_, Option<Uuid>>(1), answer.get::<_, bool>(2)) {
            (None, _) => InsertOutcome::Inserted,
            (Some(_), true) => {
                stray.push(id);
                InsertOutcome::DuplicateId
            }
            (Some(first), false) => InsertOutcome::Repeat(first),
        };
        written.insert(id, outcome);
    }
    for id in stray {
        let row = round
            .iter()
            .find(|r| r.id == id)
            .expect("answered rows are the round's");
        let key = row.once.as_ref().expect("claims are made by keyed rows");
        client
            .execute(
                "DELETE FROM delivery_keys
                 WHERE workspace_id = $1 AND scope = $2 AND key = $3 AND job_id = $4",
                &[&row.workspace_id, &key.scope, &key.key, &id],
            )
            .await?;
    }
    Ok(written)
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

/// One array per column of [`job_columns`], from the rows' parameters.
macro_rules! unnest_columns {
    () => {
        "unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], \
         $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], \
         $12::text[], $13::int4[], $14::uuid[], $15::text[], $16::int8[], $17::uuid[], \
         $18::text[], $19::text[], $20::text[], $21::jsonb[], $22::timestamptz[]"
    };
}

pub(super) const INSERT: &str = concat!(
    "INSERT INTO jobs (",
    job_columns!(),
    ", status) SELECT *, 'queued' FROM ",
    unnest_columns!(),
    ") ON CONFLICT DO NOTHING RETURNING id"
);

/// [`INSERT`] of rows that must all be new (a flow's steps, each under a key unique per flow):
/// a row that exists already fails the statement, and with it the transaction.
pub(super) const INSERT_NEW: &str = concat!(
    "INSERT INTO jobs (",
    job_columns!(),
    ", status) SELECT *, 'queued' FROM ",
    unnest_columns!(),
    ") RETURNING id"
);

/// [`INSERT`] for rows of which some claim a key ($23 scope, $24 key, $25 window in seconds,
/// $26 whether the caller preset the row's id), all in one statement, hence one transaction: a
/// row is written if it has no key or claimed its key — new, or whose claim expired. A live
/// claim is answered with its job (the update that leaves it unchanged also waits for a claim
/// another statement has not committed yet, and then reads it). Answers `(id, NULL, _)` for
/// each row written, `(id, first job, false)` for each repeat, and `(id, id, true)` for a row
/// that made a claim (fresh, `xmax = 0`) but whose id was taken after all (by a statement that
/// committed meanwhile): that claim must be given back. A key in no row twice, an id in no row
/// twice: the caller sees to it.
///
/// Only the keys (with their rows' ids) are materialized, in `keys`; the rows themselves are
/// read from the parameters once, by the INSERT, so that their arguments are not copied through
/// a tuplestore on the way. `$taken` says which rows' ids exist already
/// ([`INSERT_CLAIMING_PRESET`]); such a row claims nothing, and `$taken_rows` answers it.
macro_rules! insert_claiming {
    ($taken:literal, $taken_rows:literal) => {
        concat!(
            "WITH keys AS MATERIALIZED (SELECT k.*, ",
            $taken,
            " AS taken FROM unnest($1::uuid[], $2::text[], $23::text[], $24::text[], \
             $25::float8[], $26::bool[]) AS k(id, workspace_id, key_scope, key, key_secs, \
             id_preset) WHERE k.key IS NOT NULL),
    claims AS (
        INSERT INTO delivery_keys AS d (workspace_id, scope, key, job_id, expires_at)
        SELECT workspace_id, key_scope, key, id, now() + make_interval(secs => key_secs)
        FROM keys WHERE NOT taken
        ON CONFLICT (workspace_id, scope, key) DO UPDATE SET
            job_id = CASE WHEN d.expires_at <= now() THEN EXCLUDED.job_id ELSE d.job_id END,
            expires_at = CASE WHEN d.expires_at <= now() THEN EXCLUDED.expires_at
                              ELSE d.expires_at END
        RETURNING d.workspace_id, d.scope, d.key, d.job_id, d.xmax = 0 AS fresh),
    written AS (
        INSERT INTO jobs (",
            job_columns!(),
            ", status) SELECT ",
            job_columns!(),
            ", 'queued' FROM ",
            unnest_columns!(),
            ", $23::text[], $24::text[]) AS i(",
            job_columns!(),
            ", key_scope, key)
        WHERE i.key IS NULL OR EXISTS (
            SELECT 1 FROM claims c WHERE c.workspace_id = i.workspace_id
                AND c.scope = i.key_scope AND c.key = i.key AND c.job_id = i.id)
        ON CONFLICT DO NOTHING
        RETURNING id)
    SELECT id, NULL::uuid, false FROM written
    UNION ALL
    SELECT k.id, c.job_id, c.fresh FROM keys k JOIN claims c ON c.workspace_id = k.workspace_id
        AND c.scope = k.key_scope AND c.key = k.key
        WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.id = k.id)",
            $taken_rows
        )
    };
}

/// `insert_claiming!` for rows whose ids were made here, fresh: none can be taken, so the
/// statement never touches `jobs` or `delivery_keys` beyond its own rows (it is prepared once
/// per connection, and even an unexecuted lookup of another row costs its setup every time).
const INSERT_CLAIMING: &str = insert_claiming!("false", "");

/// `insert_claiming!` when a keyed row's id was preset by the caller: a row whose id is taken
/// claims nothing, and is answered the job of its key's live claim, if any — the retry of a
/// request with a preset id, answered the job its first try started. `jobs` and
/// `delivery_keys` are looked up only for preset ids, each by a subquery per row (a scalar one,
/// which PostgreSQL never turns into a hash of the whole table, and a `LATERAL` it cannot turn
/// into a join), and the statement is prepared for each batch, so that its plans fit the
/// tables as they are: a plan kept from when they were small would scan them whole, every
/// batch, as they grow.
const INSERT_CLAIMING_PRESET: &str = insert_claiming!(
    "CASE WHEN k.id_preset
        THEN COALESCE((SELECT true FROM jobs j WHERE j.id = k.id), false) ELSE false END",
    "
    UNION ALL
    SELECT k.id, live.job_id, false FROM keys k CROSS JOIN LATERAL (
        SELECT d.job_id FROM delivery_keys d WHERE d.workspace_id = k.workspace_id
            AND d.scope = k.key_scope AND d.key = k.key AND d.expires_at > now()
        OFFSET 0) live
        WHERE k.taken"
);

type Column<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// The parameters of [`INSERT`] for `rows`, one array per column.
fn columns<'a>(rows: &[&'a NewJobRow]) -> Vec<Column<'a>> {
    fn col<'a, T: ToSql + Sync + Send + 'a>(
        rows: &[&'a NewJobRow],
        f: impl Fn(&'a NewJobRow) -> T,
    ) -> Column<'a> {
        Box::new(rows.iter().map(|r| f(r)).collect::<Vec<T>>())
    }
    vec![
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
    ]
}

fn parameters<'a>(columns: &'a [Column<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    columns
        .iter()
        .map(|c| &**c as &(dyn ToSql + Sync))
        .collect()
}

/// Runs [`INSERT`] for `rows` (none with a key) on a client or inside a transaction; returns
/// the ids written.
pub(super) async fn run_insert(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    rows: &[NewJobRow],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows: Vec<&NewJobRow> = rows.iter().collect();
    let columns = columns(&rows);
    let inserted = client.query(statement, &parameters(&columns)).await?;
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
