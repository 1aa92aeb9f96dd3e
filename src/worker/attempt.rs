//! One delivery of one job, from "pulled" to "acked": mark it running, run it, record the end,
//! tell the waiting callers, announce the event — and only then ack, so a completed job is
//! never lost and an acked job is never unfinished.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

use super::context::{ScriptCode, WorkerContext};
use super::lease::Held;
use super::outcome::{self, Outcome};
use super::process::{self, Ended, LogBuffer, Output};
use super::runtimes::{self, ScriptError};
use super::sandbox::JobDir;
use super::warm::DedicatedScript;
use crate::auth::job_token::{self, JobClaims};
use crate::domain::{JobKind, JobStatus, TraceParent};
use crate::queue::consume::{Delivery, Unusable};
use crate::queue::envelope::{FlowStep, JobEnvelope};
use crate::queue::events::{JobDone, JobEvent, JobEventKind};
use crate::queue::subjects::JobReply;
use crate::store::jobs::{self, Completion, Start, StartedJob};
use crate::store::{NewJobRow, StoreError};

/// How the attempt ends for the queue.
enum Settle {
    Ack,
    /// Leave it for redelivery (the database refused, outright, to record the end or to run
    /// the flow's transition).
    Abandon,
    /// Hand it back at once, to be delivered again after this long: not started (the database
    /// was unavailable — not retried in place, so that a job the API withdrew meanwhile is not
    /// run once the database is back — or another attempt holds the job), or this attempt
    /// lost the job. The next delivery reads the row again.
    RetryAfter(Duration),
    /// A flow's step ended: its end (`ended`, or already recorded) must be in its flow's state
    /// before the ack (with `republish`, the queued steps its earlier transition enqueued are
    /// published again: the message came back, so its worker may have died before publishing
    /// them). Done without the job's slot.
    AdvanceFlow {
        step: FlowStep,
        republish: bool,
        ended: Option<Box<Completion>>,
    },
}

const START_RETRY: Duration = Duration::from_secs(2);
/// How long an envelope of a newer version waits before it is offered again.
const LEAVE_FOR_NEWER: Duration = Duration::from_secs(30);

/// `slot` is this job's share of `WORKER_SLOTS`; it is given back as soon as the job has ended,
/// before the ack's confirmation comes back, so the next job need not wait for that round trip.
pub async fn handle(ctx: Arc<WorkerContext>, delivery: Delivery, slot: OwnedSemaphorePermit) {
    let envelope = match &delivery.envelope {
        Ok(envelope) => envelope.clone(),
        Err(why @ Unusable::Newer(_)) => {
            tracing::warn!(error = %why, "leaving a job for an upgraded worker");
            let _ = delivery.retry_after(LEAVE_FOR_NEWER).await;
            return;
        }
        Err(why @ Unusable::Unreadable(_)) => {
            tracing::error!(error = %why, "rejecting a message that is not a job");
            let _ = delivery.reject().await;
            return;
        }
    };
    // Jobs due later are held back by the scheduler; what comes early is due within a second
    // (published at once), a clock ahead of this worker's, or a message from an older API.
    if let Some(at) = envelope.scheduled_for {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            let _ = delivery.retry_after(wait).await;
            return;
        }
    }
    let id = envelope.id;
    let busy = crate::metrics::slot_busy();
    // From the first store call to the last: a delivery that is slow to start (the database
    // is down) or to be recorded must not be handed to another worker meanwhile.
    let keepalive = spawn_progress(&delivery, ctx.settings.ack_wait);
    let span = tracing::info_span!("job", job = %id, tag = %envelope.tag);
    let parent = envelope.traceparent.as_deref().and_then(TraceParent::parse);
    let trace = crate::telemetry::trace_of(|| span.clone(), parent.as_ref());
    let (settle, lease) = match envelope.kind {
        JobKind::Flow => {
            let settle = advance_flow(&ctx, &envelope, trace).instrument(span).await;
            (settle, None)
        }
        JobKind::Script => {
            run_delivery(&ctx, &delivery, &envelope, trace)
                .instrument(span)
                .await
        }
    };
    drop(slot);
    drop(busy);
    let settle = match settle {
        Settle::AdvanceFlow {
            step,
            republish,
            ended,
        } => {
            let ended = ended.map(|e| *e);
            advance_after_step(&ctx, &envelope, &step, republish, ended, lease.as_ref()).await
        }
        other => other,
    };
    // Renewed until the end is recorded (a flow step's included), and no longer.
    drop(lease);
    drop(keepalive);
    match settle {
        Settle::Ack => {
            if let Err(e) = delivery.ack().await {
                tracing::warn!(job = %id, error = %e, "ack failed; the job may be delivered again");
            }
        }
        Settle::Abandon => tracing::warn!(job = %id, "left for redelivery"),
        Settle::RetryAfter(delay) => {
            let _ = delivery.retry_after(delay).await;
        }
        Settle::AdvanceFlow { .. } => unreachable!("advanced above"),
    }
}

/// Advances the flow of a step that ended (`ended`, recorded by the attempt holding `lease`).
/// Steps ending together share one transition; the slot is free meanwhile, so more steps run
/// while transitions queue.
async fn advance_after_step(
    ctx: &WorkerContext,
    envelope: &JobEnvelope,
    step: &FlowStep,
    republish: bool,
    mut ended: Option<Completion>,
    lease: Option<&Held>,
) -> Settle {
    let id = envelope.id;
    // Whether this delivery recorded the end, across retries of the store call; the lease's
    // renewals stop as soon as it is set.
    let unleased = AtomicBool::new(false);
    let recorded = lease.map_or(&unleased, Held::recorded);
    let advanced = loop {
        let advanced = retry_store(|| async {
            let ended = ended.as_ref().filter(|_| !recorded.load(Ordering::Relaxed));
            ctx.flows
                .on_step_end(step, id, republish, ended, recorded)
                .await
        })
        .await;
        // The database refused the end itself: record the failure that says so instead.
        let instead = match (&advanced, &ended) {
            (Err(e), Some(completion)) if !recorded.load(Ordering::Relaxed) => {
                outcome::instead_of_refused(completion, e)
            }
            _ => None,
        };
        match instead {
            Some(instead) => ended = Some(instead),
            None => break advanced,
        }
    };
    let recorded = recorded.load(Ordering::Relaxed);
    if let (true, Some(completion)) = (recorded, &ended) {
        announce_end(ctx, envelope, completion).await;
    }
    match advanced {
        // Another attempt took the step over: the next delivery sees how it ended.
        Ok(_) if ended.is_some() && !recorded => Settle::RetryAfter(START_RETRY),
        Ok(advanced) => match advanced.unpublished {
            None => Settle::Ack,
            // Committed, but what the flow enqueued was not published: a quick redelivery of
            // this message publishes it again.
            Some(e) => {
                tracing::warn!(job = %id, error = %e, "flow step publish failed");
                Settle::RetryAfter(START_RETRY)
            }
        },
        Err(_) => Settle::Abandon,
    }
}

/// A flow job's message: its first transition, or a wake-up. Nothing runs here; the flow's
/// steps are jobs of their own.
async fn advance_flow(ctx: &WorkerContext, envelope: &JobEnvelope, trace: TraceParent) -> Settle {
    match ctx.flows.on_flow_message(envelope, trace).await {
        Ok(()) => Settle::Ack,
        Err(e) => {
            tracing::warn!(flow = %envelope.id, error = %e, "flow transition failed; retrying");
            Settle::RetryAfter(START_RETRY)
        }
    }
}

/// Runs a script job's delivery; returns how to settle it and the attempt's lease, to hold
/// until its end is recorded.
async fn run_delivery(
    ctx: &Arc<WorkerContext>,
    delivery: &Delivery,
    envelope: &JobEnvelope,
    trace: TraceParent,
) -> (Settle, Option<Held>) {
    let Some(registered) = ctx.register(envelope.id) else {
        tracing::info!(job = %envelope.id, "the job runs on this worker already; handing it back");
        return (Settle::RetryAfter(ctx.settings.lease_timeout), None);
    };
    let row = envelope
        .record
        .as_ref()
        .map(|record| NewJobRow::queued(envelope, record));
    let taken = tokio::time::Instant::now();
    let started = match jobs::start(
        &ctx.pool,
        envelope.id,
        &ctx.settings.worker_name,
        row.as_ref(),
        ctx.settings.lease_timeout,
    )
    .await
    {
        Ok(Start::Started(started)) => started,
        // Completed already: cancelled while queued, or finished by an earlier delivery (whose
        // worker may have died before publishing what its flow enqueued next).
        Ok(Start::Ended) => {
            let settle = match &envelope.flow_step {
                None => Settle::Ack,
                Some(step) => Settle::AdvanceFlow {
                    step: step.clone(),
                    republish: true,
                    ended: None,
                },
            };
            return (settle, None);
        }
        // A live attempt elsewhere: not started, not counted; back when its lease could pass
        // (at the latest after a lease of ours, should the holder's be longer).
        Ok(Start::Held(left)) => {
            tracing::info!(job = %envelope.id, "another attempt holds the job; handing it back");
            let delay = left.min(ctx.settings.lease_timeout) + START_RETRY / 2;
            return (Settle::RetryAfter(delay), None);
        }
        Err(e) => {
            tracing::warn!(job = %envelope.id, error = %e,
                "could not mark the job running; handing it back");
            return (Settle::RetryAfter(START_RETRY), None);
        }
    };
    let attempt = started.attempts;
    let cancel = registered.token.clone();
    let lease = Held::keep(ctx.clone(), envelope.id, attempt, taken, cancel.clone());
    let settle = attempt_job(ctx, delivery, envelope, started, (&cancel, trace), &lease).await;
    drop(registered);
    (settle, Some(lease))
}

/// Runs the attempt that holds the job (`lease`), and records its end unless it lost the job.
async fn attempt_job(
    ctx: &WorkerContext,
    delivery: &Delivery,
    envelope: &JobEnvelope,
    started: StartedJob,
    (cancel, trace): (&tokio_util::sync::CancellationToken, TraceParent),
    lease: &Held,
) -> Settle {
    let attempt = started.attempts;
    if attempt > ctx.settings.max_attempts {
        let error = ScriptError::new(
            "MaxAttemptsExceeded",
            format!(
                "the job was started {} times and no run recorded its end (its worker died, \
                 or lost the database long enough to lose the job, while the job ran); \
                 giving up",
                attempt - 1
            ),
        );
        let outcome = Outcome::failed(error);
        return finish(ctx, envelope, lease, attempt, outcome, String::new(), None).await;
    }
    if let Some(request) = started.cancel {
        let outcome = Outcome::canceled(request.by.unwrap_or_default(), request.reason);
        return finish(ctx, envelope, lease, attempt, outcome, String::new(), None).await;
    }
    if delivery.delivered > 1 {
        tracing::info!(job = %envelope.id, attempt, "running a redelivered job");
    }
    announce_start(ctx, envelope).await;
    // Counted once per job, by its first attempt: a redelivery is not a second start.
    if attempt == 1 {
        let waited = (Utc::now() - started.due_at).to_std().ok();
        crate::metrics::job_started(&job_labels(envelope), waited);
    }

    let logs = Arc::new(Mutex::new(LogBuffer::new(ctx.settings.max_log_size)));
    let began = Instant::now();
    let mut dir = None;
    let run = Run {
        attempt,
        args: &started.args,
        cancel,
        lease,
        logs: &logs,
        trace,
    };
    let ended = execute(ctx, envelope, run, &mut dir).await;
    // Stopped by the worker (cancel, lost lease): a script's own error named `Canceled` is
    // just a failure.
    let stopped = |error: &ScriptError| error.name == "Canceled" && cancel.is_cancelled();
    let duration_ms = (began.elapsed().as_secs_f64() * 1000.0).round() as i64;
    let logs = logs.lock().expect("log lock").text().to_owned();
    // A process that ended by itself (or by its timeout or output cap) is recorded even when
    // the lease was lost meanwhile: the write is fenced by the attempt, so it lands only if no
    // other attempt took the job over.
    let let_go = lease.is_lost()
        && match &ended {
            Err(_) => true,
            Ok(Err(error)) => stopped(error),
            Ok(Ok(_)) => false,
        };
    let settled = if let_go {
        // Killed, or never started, because another attempt may run it now: that one records
        // the end.
        Settle::RetryAfter(START_RETRY)
    } else {
        let outcome = match ended {
            Err(error) => Outcome::failed(error),
            Ok(Err(error)) if stopped(&error) => {
                let request = ctx.cancel_request(envelope.id);
                let by = request
                    .as_ref()
                    .map(|r| r.canceled_by.clone())
                    .unwrap_or_default();
                Outcome::canceled(by, request.and_then(|r| r.reason))
            }
            Ok(Err(error)) => Outcome::failed(error),
            Ok(Ok(result)) => Outcome::from_result(result),
        };
        finish(
            ctx,
            envelope,
            lease,
            attempt,
            outcome,
            logs,
            Some(duration_ms),
        )
        .await
    };
    // Only now, with the result out: emptying the directory and the user's leftovers walks
    // file systems, which the caller need not wait for nor compete with. The user is free for
    // the slot's next job once it is done.
    if let Some(dir) = dir {
        tokio::spawn(dir.remove());
    }
    settled
}

/// What one attempt runs with.
struct Run<'a> {
    attempt: i32,
    args: &'a Value,
    cancel: &'a tokio_util::sync::CancellationToken,
    lease: &'a Held,
    logs: &'a process::SharedLogs,
    /// The job's span, for `TRACEPARENT`.
    trace: TraceParent,
}

/// Runs the script in a job directory it leaves in `dir_out`, for the caller to remove once the
/// result is out; the outer error is a failure before the process could start.
async fn execute(
    ctx: &WorkerContext,
    envelope: &JobEnvelope,
    run: Run<'_>,
    dir_out: &mut Option<JobDir>,
) -> Result<Result<Value, ScriptError>, ScriptError> {
    let Run {
        attempt,
        args,
        cancel,
        lease,
        logs,
        trace,
    } = run;
    let code = code_of(ctx, envelope).await?;
    let timeout = envelope
        .timeout_s
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64))
        .unwrap_or(ctx.settings.default_timeout);
    let cpu_seconds = process::cpu_seconds(timeout);
    let dedicated = match (code.dedicated, envelope.hash.as_deref()) {
        (true, Some(hash)) => Some(DedicatedScript {
            workspace: &envelope.workspace,
            hash,
        }),
        _ => None,
    };
    let (dir, launch) = ctx
        .warm
        .take(code.language, &code.content, dedicated, cpu_seconds)
        .await;
    let dir = match dir {
        Some(dir) => dir,
        None => ctx.sandbox.job_dir().await.map_err(|e| {
            ScriptError::new(
                "WorkerError",
                format!("cannot create the job directory: {e}"),
            )
        })?,
    };
    let dir = dir_out.insert(dir);
    let empty = Map::new();
    let args = args.as_object().unwrap_or(&empty);
    let mut spec = ctx
        .runtimes
        .prepare(code.language, &code.content, args, dir)?;
    spec.env.extend(job_env(ctx, envelope, dir.path()));
    spec.env.push(("TRACEPARENT".into(), trace.to_string()));
    if cancel.is_cancelled() {
        // The attempt lost its job while preparing it: nothing is started.
        lease.process_ended();
        return Ok(Err(ScriptError::new("Canceled", "job canceled")));
    }
    let (lines_tx, lines_rx) = mpsc::channel(process::LIVE_OUTPUT_QUEUE);
    let forwarder = spawn_log_forwarder(ctx, envelope.id, attempt, lines_rx);
    let how = process::Run {
        timeout,
        cancel,
        logs,
        lines: Some(lines_tx),
        max_output: ctx.settings.max_output_size,
        confinement: dir.confinement(),
    };
    let (started, lent) = ctx
        .warm
        .launch(code.language, &spec, dir, launch, cpu_seconds)
        .await;
    let ended = match started {
        Ok(started) => Ok(process::supervise(started, how).await),
        Err(e) => {
            drop(how);
            Err(ScriptError::new(
                "WorkerError",
                format!("cannot start {}: {e}", spec.program.display()),
            ))
        }
    };
    // From here on there is nothing to stop, even while the last output is still being saved
    // (that waits for the database).
    lease.process_ended();
    let _ = forwarder.await;
    let text = logs.lock().expect("log lock").text().to_owned();
    let outcome = ended
        .as_ref()
        .map_err(Clone::clone)
        .map(|ended| match ended {
            Ended::Canceled => Err(ScriptError::new("Canceled", "job canceled")),
            other => ctx.runtimes.outcome(code.language, other, dir, &text),
        });
    // A dedicated process goes back with its directory, unless the worker stopped its job.
    // Any other job's directory stays for the caller to remove (its user's leftovers too).
    if let Some(lent) = lent {
        if let Some(dir) = dir_out.take() {
            let reusable = matches!(ended, Ok(Ended::Exited(_)));
            ctx.warm.give_back(lent, dir, reusable);
        }
    }
    outcome
}

/// The script version the job names, or its flow step's inline code.
async fn code_of(
    ctx: &WorkerContext,
    envelope: &JobEnvelope,
) -> Result<Arc<ScriptCode>, ScriptError> {
    let cannot_load = |e: crate::store::StoreError| {
        ScriptError::new("WorkerError", format!("cannot load the script: {e}"))
    };
    if let Some(hash) = envelope.hash.as_deref() {
        return ctx
            .script(&envelope.workspace, hash)
            .await
            .map_err(cannot_load)?
            .ok_or_else(|| {
                ScriptError::new(
                    "NotFound",
                    format!("script version {hash} no longer exists"),
                )
            });
    }
    let Some(step) = &envelope.flow_step else {
        return Err(ScriptError::new(
            "WorkerError",
            "the job names no script version",
        ));
    };
    let (language, content) = ctx
        .flows
        .step_code(&envelope.workspace, step)
        .await
        .map_err(cannot_load)?
        .ok_or_else(|| {
            ScriptError::new(
                "NotFound",
                format!(
                    "module {} of flow version {} no longer exists",
                    step.step_id, step.flow_version
                ),
            )
        })?;
    // A flow's inline step has no version to keep a dedicated process for.
    Ok(Arc::new(ScriptCode {
        language,
        content,
        dedicated: false,
    }))
}

/// The documented environment of a job (SPEC §5); nothing of the worker's own leaks in.
fn job_env(
    ctx: &WorkerContext,
    envelope: &JobEnvelope,
    dir: &std::path::Path,
) -> Vec<(String, String)> {
    let exp = Utc::now()
        + chrono::Duration::seconds(envelope.timeout_s.unwrap_or(0) as i64)
        + chrono::Duration::from_std(ctx.settings.default_timeout).unwrap_or_default()
        + chrono::Duration::minutes(5);
    let token = job_token::sign(
        &ctx.job_key,
        &JobClaims {
            job: envelope.id,
            workspace: envelope.workspace.clone(),
            email: envelope.permissioned_as.clone(),
            super_admin: envelope.permissioned_as == crate::auth::SUPERADMIN_EMAIL,
            scopes: envelope.scopes.clone(),
            exp,
        },
    );
    let mut env = runtimes::base_env(dir);
    env.extend([
        ("WM_WORKSPACE".into(), envelope.workspace.clone()),
        ("WM_JOB_ID".into(), envelope.id.to_string()),
        (
            "WM_JOB_PATH".into(),
            envelope.path.clone().unwrap_or_default(),
        ),
        ("WM_TOKEN".into(), token),
        ("WM_USERNAME".into(), envelope.created_by.clone()),
        ("WM_EMAIL".into(), envelope.permissioned_as.clone()),
        (
            "BASE_INTERNAL_URL".into(),
            ctx.settings.base_internal_url.clone(),
        ),
        ("WM_BASE_URL".into(), ctx.settings.base_url.clone()),
    ]);
    if let Some(step) = &envelope.flow_step {
        env.extend([
            ("WM_FLOW_JOB_ID".into(), step.flow_job.to_string()),
            ("WM_ROOT_FLOW_JOB_ID".into(), step.root_job.to_string()),
            ("WM_FLOW_PATH".into(), step.flow_path.clone()),
            ("WM_FLOW_STEP_ID".into(), step.step_id.clone()),
        ]);
    }
    env
}

/// Keeps JetStream from redelivering a job that is still running.
fn spawn_progress(delivery: &Delivery, ack_wait: Duration) -> impl Drop {
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let every = (ack_wait / 3).max(Duration::from_millis(200));
    let handle = delivery.progress_handle();
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = handle.progress().await {
                tracing::warn!(error = %e, "progress ack failed");
            }
        }
    }))
}

/// Publishes output and streamed chunks live, and saves the output to the store at most once
/// a second.
fn spawn_log_forwarder(
    ctx: &WorkerContext,
    id: crate::domain::JobId,
    attempt: i32,
    mut lines: mpsc::Receiver<Output>,
) -> tokio::task::JoinHandle<()> {
    let bus = ctx.bus.clone();
    let pool = ctx.pool.clone();
    let limit = ctx.settings.max_log_size;
    tokio::spawn(async move {
        let mut so_far = String::new();
        let mut unsaved = false;
        // The first save a second in, not at once: most jobs end before it.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                output = lines.recv() => match output {
                    None => break,
                    Some(Output::Stream(chunk)) => {
                        let _ = bus.publish_reply(id, JobReply::Stream, chunk.into()).await;
                    }
                    // Live subscribers get what the stored logs keep (MAX_LOG_SIZE), not every
                    // byte a flooding job prints before MAX_OUTPUT_SIZE stops it.
                    Some(Output::Log(chunk)) if so_far.len() < limit => {
                        let _ = bus.publish_reply(id, JobReply::Log, chunk.clone().into()).await;
                        so_far.push_str(&chunk);
                        unsaved = true;
                        if so_far.len() >= limit {
                            let note = format!("\n[live logs end at {limit} bytes]\n");
                            let _ = bus.publish_reply(id, JobReply::Log, note.into()).await;
                        }
                    }
                    Some(Output::Log(_)) => {}
                },
                _ = tick.tick() => {
                    if unsaved {
                        unsaved = false;
                        let _ = jobs::save_logs(&pool, id, attempt, &so_far).await;
                    }
                }
            }
        }
    })
}

async fn announce_start(ctx: &WorkerContext, envelope: &JobEnvelope) {
    let _ = ctx
        .bus
        .publish_reply(envelope.id, JobReply::Started, "{}".into())
        .await;
    // The script need not wait for JetStream's acknowledgement; the terminal event, published
    // later on the same connection, still comes after this one.
    ctx.bus
        .publish_event_unconfirmed(&JobEvent::new(JobEventKind::Started, envelope))
        .await;
}

/// Records how the attempt holding the job (`lease`) ended it, once the process (if any) is
/// over.
async fn finish(
    ctx: &WorkerContext,
    envelope: &JobEnvelope,
    lease: &Held,
    attempt: i32,
    outcome: Outcome,
    logs: String,
    duration_ms: Option<i64>,
) -> Settle {
    lease.process_ended();
    let mut completion = outcome.into_completion(attempt, logs, duration_ms);
    // A flow's step: its end is recorded with its flow's transition, and the message acked
    // after it.
    if let Some(step) = &envelope.flow_step {
        return Settle::AdvanceFlow {
            step: step.clone(),
            republish: false,
            ended: Some(Box::new(completion)),
        };
    }
    let recorded = loop {
        match retry_store(|| jobs::complete(&ctx.pool, envelope.id, &completion)).await {
            Ok(recorded) => break recorded,
            Err(e) => match outcome::instead_of_refused(&completion, &e) {
                Some(instead) => completion = instead,
                None => return Settle::Abandon,
            },
        }
    };
    if !recorded {
        // Another attempt took the job over (and may have ended it): the next delivery sees.
        return Settle::RetryAfter(START_RETRY);
    }
    lease.recorded().store(true, Ordering::Relaxed);
    announce_end(ctx, envelope, &completion).await;
    Settle::Ack
}

fn job_labels(envelope: &JobEnvelope) -> crate::metrics::JobLabels {
    crate::metrics::JobLabels::new(
        &envelope.tag,
        envelope.language,
        envelope.kind,
        envelope.flow_step.is_some(),
    )
}

/// Tells the job's waiters it ended (recorded by this attempt), and publishes its terminal
/// event.
async fn announce_end(ctx: &WorkerContext, envelope: &JobEnvelope, completion: &Completion) {
    let end = crate::metrics::JobEnd::of(completion.status);
    let ran = completion
        .duration_ms
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    crate::metrics::job_ended(&job_labels(envelope), end, ran);
    let done = JobDone::new(
        envelope.id,
        completion.status == JobStatus::Success,
        completion.status == JobStatus::Canceled,
        &completion.result,
    );
    if let Err(e) = ctx.bus.publish_done(&done).await {
        tracing::warn!(job = %envelope.id, error = %e, "done reply not published");
    }
    let kind = match completion.status {
        JobStatus::Success => JobEventKind::Completed,
        JobStatus::Canceled => JobEventKind::Canceled,
        _ => JobEventKind::Failed,
    };
    let mut event = JobEvent::new(kind, envelope).with_result(&completion.result);
    event.success = Some(done.success);
    event.duration_ms = completion.duration_ms;
    if !done.success {
        event.error = completion.result.get("error").cloned();
    }
    if envelope.flow_step.is_some() {
        // Its flow's next step waits for nothing but the transition; the event's storage is
        // confirmed in the background (a failure is logged either way).
        ctx.bus.publish_event_unconfirmed(&event).await;
    } else if let Err(e) = ctx.bus.publish_event(&event).await {
        tracing::warn!(job = %envelope.id, error = %e, "terminal event not published");
    }
}

/// Retries a store call for as long as the database is unavailable: it records a job's end,
/// which must not be lost, and whose write is fenced by its attempt (it fails once another
/// attempt took the job over). An error that would come back every time (a value PostgreSQL
/// cannot store) is returned at once.
async fn retry_store<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match call().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(failures, "store call succeeded after retries");
                }
                return Ok(value);
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                // Once, then about once a minute: an outage may last.
                if failures % 30 == 1 {
                    tracing::warn!(error = %e, failures, "store call failed; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, "the database refused the call");
                return Err(e);
            }
        }
    }
}
