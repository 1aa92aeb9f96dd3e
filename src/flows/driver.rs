//! The impure half of flows: runs one transition of the state machine as one PostgreSQL
//! transaction, then publishes what it decided. Any worker runs transitions, for any flow:
//! - a flow job's message starts the flow (or, redelivered or sent again later, wakes it);
//! - a step's end is recorded by the worker that ran it, as any job's; that worker then runs a
//!   transition, which applies every recorded end the flow has not taken into account yet, and
//!   acks the step's JetStream message only after that transition committed, so a worker dying
//!   in between leaves the message to be redelivered;
//! - a redelivered message finds its step completed (or its flow started): it runs the
//!   transition (a no-op if its end is applied) and publishes again the still queued steps that
//!   its earlier run enqueued (the step jobs are rows before they are messages: the rows are
//!   the outbox).
//!
//! Step jobs are inserted with a key unique per flow (module path, iteration, attempt), so a
//! transition can never enqueue the same step twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::machine::{self, json_depth, Action, Event, NewStep, StepDone};
use super::model::{FlowDef, ModuleKind};
use super::state::FlowState;
use super::status::flow_status;
use crate::domain::{
    canceled_result, JobId, JobKind, JobStatus, ScriptLang, Tag, TraceParent, WorkspaceId,
};
use crate::queue::envelope::{self, FlowStep, JobEnvelope};
use crate::queue::events::{JobDone, JobEvent, JobEventKind};
use crate::queue::subjects::JobReply;
use crate::queue::{Bus, QueueError};
use crate::store::flow_runs::{
    self, CanceledStep, FlowEnd, FlowJob, FlowRun, Locked, QueuedStep, Saving,
};
use crate::store::jobs::Completion;
use crate::store::{self, NewJobRow, Pool, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Nothing was committed: the trigger must be delivered again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transition committed, but publishing what it enqueued failed: a redelivery of the
    /// trigger publishes it again.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Whether a transition waits for the flow's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

/// What a transition did, once it committed.
#[derive(Debug, Default)]
pub struct Transitioned {
    /// The step end it was given was recorded by it (not by another delivery before).
    pub recorded: bool,
    /// Publishing what it decided failed: its trigger must come back soon, to publish again.
    pub unpublished: Option<DriverError>,
}

/// What a transition decided, to write before it commits.
#[derive(Default)]
struct Decided {
    effects: Effects,
    /// The state to save (`None`: leave it as it is).
    state: Option<Value>,
    /// Step jobs to insert, and steps to cancel once they are in.
    new_steps: Vec<NewJobRow>,
    cancels: Vec<JobId>,
}

/// What the driver keeps in the flow job's `flow_state`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    machine: FlowState,
    #[serde(flatten)]
    inherited: Inherited,
}

/// What every step's envelope takes from its flow's start.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Inherited {
    /// The triggering token's scopes: every step's own token may do no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
    /// The `traceparent` of the span that started the flow job: every step's span is its
    /// child, so that a flow run is one trace. Flows started before it was kept have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

/// An immutable flow version, as transitions need it.
struct Version {
    def: FlowDef,
    schema: Option<Value>,
}

pub struct FlowDriver {
    pool: Pool,
    bus: Bus,
    worker: String,
    versions: Mutex<HashMap<(String, i64), Arc<Version>>>,
    /// Per flow, whose turn it is to run a transition in this process.
    turns: Mutex<HashMap<JobId, Arc<tokio::sync::Mutex<()>>>>,
}

/// What started the transition.
enum Trigger<'a> {
    /// The flow job's own message: a start, or a wake-up (`due`: its `scheduled_for`). The
    /// row travels in a start's message, for the worker to write if it got there first.
    Message {
        inherited: Inherited,
        due: Option<chrono::DateTime<Utc>>,
        record: Option<Box<NewJobRow>>,
    },
    /// A step of the flow ended; its end is recorded, or `ended` says it (recorded in the
    /// transition).
    StepEnded {
        step: JobId,
        ended: Option<&'a Completion>,
    },
}

impl Trigger<'_> {
    /// Names the trigger on the step rows its transition enqueues, so that when the trigger
    /// comes back it publishes again just those.
    fn id(&self) -> String {
        match self {
            Self::Message { due, .. } => {
                format!("flow:{}", due.map_or(0, |t| t.timestamp_millis()))
            }
            Self::StepEnded { step, .. } => step.to_string(),
        }
    }
}

/// Everything a transition decided, to publish once it committed.
#[derive(Default)]
struct Effects {
    started: bool,
    /// New steps to publish now, and those held for the scheduler (due later).
    steps: Vec<QueuedStep>,
    held_steps: Vec<QueuedStep>,
    /// Queued steps that ended as cancelled, and running ones to kill.
    canceled_now: Vec<CanceledStep>,
    to_kill: Vec<JobId>,
    cancel_by: String,
    cancel_reason: Option<String>,
    cancel_result: Value,
    wake_at: Option<chrono::DateTime<Utc>>,
    early_return: Option<Value>,
    end: Option<FlowEnd>,
    status: Value,
    /// What its steps' envelopes carry from the flow.
    inherited: Inherited,
}

impl FlowDriver {
    pub fn new(pool: Pool, bus: Bus, worker: String) -> Self {
        Self {
            pool,
            bus,
            worker,
            versions: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// A flow job's message: starts the flow the first time, wakes it later. Ack when `Ok`.
    /// `trace` is the span handling the message: a start's becomes the parent of every step.
    pub async fn on_flow_message(
        &self,
        envelope: &JobEnvelope,
        trace: TraceParent,
    ) -> Result<(), DriverError> {
        let trigger = Trigger::Message {
            inherited: Inherited {
                scopes: envelope.scopes.clone(),
                traceparent: Some(trace.to_string()),
            },
            due: envelope.scheduled_for,
            record: envelope
                .record
                .as_ref()
                .map(|record| Box::new(NewJobRow::queued(envelope, record))),
        };
        // A redelivered start may follow a commit whose steps were never published.
        let done = self
            .transition(envelope.id, trigger, true, Wait::Yes)
            .await?;
        match done.and_then(|d| d.unpublished) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A step of this flow ended: advances the flow, applying this end and every other one the
    /// flow has not taken into account yet (steps ending together share one transition).
    /// `ended`, when given, is recorded too — inside the transition when the flow is free at
    /// once, alone otherwise (before waiting, so that the transition running meanwhile can
    /// apply it, and so that it is never left uncommitted behind another one). `recorded` is
    /// set as soon as this call has recorded it (not another delivery). With `republish`, also
    /// publishes again what this step's earlier transition enqueued.
    pub async fn on_step_end(
        &self,
        step: &FlowStep,
        id: JobId,
        republish: bool,
        ended: Option<&Completion>,
        recorded: &AtomicBool,
    ) -> Result<Transitioned, StoreError> {
        // One transition per flow at a time in this process: the others wait here, holding no
        // database connection, and most find their end applied by the one before.
        let turn = self.turn(step.flow_job);
        let flow = step.flow_job;
        let outcome = async {
            if let Ok(_guard) = turn.clone().try_lock_owned() {
                if let Some(completion) = ended {
                    let trigger = Trigger::StepEnded { step: id, ended };
                    match self.transition(flow, trigger, republish, Wait::No).await {
                        Ok(Some(done)) => {
                            recorded.fetch_or(done.recorded, Ordering::Relaxed);
                            return Ok(done);
                        }
                        // The flow's row is another process's for now: record alone, then wait.
                        Ok(None) => self.record_alone(id, completion, recorded).await?,
                        Err(e) => {
                            // Keep the end whatever becomes of the transition.
                            self.record_alone(id, completion, recorded).await?;
                            return Err(e);
                        }
                    }
                }
                return self.advance(flow, id, republish).await;
            }
            if let Some(completion) = ended {
                self.record_alone(id, completion, recorded).await?;
            }
            let _guard = turn.clone().lock_owned().await;
            // Whoever had the turn before may have applied this end already.
            let applied = flow_runs::step_applied(&self.pool.get().await?, id).await?;
            if applied && !republish {
                return Ok(Transitioned::default());
            }
            self.advance(flow, id, republish).await
        }
        .await;
        self.release_turn(flow, turn);
        outcome
    }

    /// Records a step's end in a transaction of its own.
    async fn record_alone(
        &self,
        id: JobId,
        completion: &Completion,
        recorded: &AtomicBool,
    ) -> Result<(), StoreError> {
        let now = store::jobs::complete(&self.pool, id, completion).await?;
        recorded.fetch_or(now, Ordering::Relaxed);
        Ok(())
    }

    /// A transition for a step whose end is recorded.
    async fn advance(
        &self,
        flow: JobId,
        id: JobId,
        republish: bool,
    ) -> Result<Transitioned, StoreError> {
        let trigger = Trigger::StepEnded {
            step: id,
            ended: None,
        };
        Ok(self
            .transition(flow, trigger, republish, Wait::Yes)
            .await?
            .unwrap_or_default())
    }

    fn turn(&self, flow: JobId) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().expect("turns lock");
        turns.entry(flow).or_default().clone()
    }

    /// Forgets a flow's turn once nobody else holds or waits for it.
    fn release_turn(&self, flow: JobId, turn: Arc<tokio::sync::Mutex<()>>) {
        let mut turns = self.turns.lock().expect("turns lock");
        // The map's copy and ours: nobody else (a waiter holds a clone while it waits).
        if Arc::strong_count(&turn) == 2 {
            turns.remove(&flow);
        }
    }

    /// Runs one transition and publishes what it decided; with `republish` (the trigger came
    /// back: its earlier run may have committed without publishing), also the queued steps
    /// that this trigger enqueued, and a wake-up if the flow sleeps. `None` when `wait` is
    /// `No` and another transaction holds the flow.
    async fn transition(
        &self,
        flow: JobId,
        trigger: Trigger<'_>,
        republish: bool,
        wait: Wait,
    ) -> Result<Option<Transitioned>, StoreError> {
        let began = std::time::Instant::now();
        let mut conn = self.pool.get().await?;
        let record = match &trigger {
            Trigger::Message { record, .. } => record.as_deref(),
            Trigger::StepEnded { .. } => None,
        };
        let ended = match &trigger {
            Trigger::StepEnded {
                step,
                ended: Some(completion),
            } => Some((*step, *completion)),
            _ => None,
        };
        // A flow's message starts it if it is still queued.
        let start = match &trigger {
            Trigger::Message { .. } => Some(self.worker.as_str()),
            Trigger::StepEnded { .. } => None,
        };
        let with = flow_runs::With::Ends { ended, start };
        let mut run =
            match flow_runs::lock(&mut conn, flow, record, wait == Wait::Yes, with).await? {
                Locked::Run(run) => *run,
                Locked::Busy => return Ok(None),
                Locked::Missing => {
                    tracing::warn!(flow = %flow, "no such flow job; dropping the message");
                    // What was recorded with the lock was rolled back with it.
                    let recorded = match ended {
                        Some((step, completion)) => {
                            store::jobs::complete(&self.pool, step, completion).await?
                        }
                        None => false,
                    };
                    return Ok(Some(Transitioned {
                        recorded,
                        unpublished: None,
                    }));
                }
            };
        let locked = began.elapsed();
        let mut recorded = run.opened.recorded;
        let mut events = Vec::new();
        let mut inherited = None;
        if let Trigger::Message {
            inherited: given, ..
        } = &trigger
        {
            if run.opened.started {
                events.push(Event::Start);
                inherited = Some(given.clone());
            } else {
                events.push(Event::Wake);
            }
        } else if republish {
            // The earlier run may have died before publishing a wake-up: a sleeping flow
            // announces it again (its message id makes a copy harmless).
            events.push(Event::Wake);
        }
        let ends = std::mem::take(&mut run.opened.ends);
        let applied: Vec<JobId> = ends.iter().map(|(id, ..)| *id).collect();
        events.extend(ends.into_iter().map(|(job, status, result)| {
            Event::StepDone(StepDone {
                job,
                success: status == JobStatus::Success,
                canceled: status == JobStatus::Canceled,
                result,
            })
        }));
        let flow_job = run.flow.clone();
        let trigger_id = trigger.id();
        let effects = if events.is_empty() || flow_job.status.is_completed() {
            // Nothing new, or the flow ended already (cancelled, say).
            run.commit().await?;
            Effects {
                inherited: read_state(flow_job.state.as_deref())
                    .map(|s| s.inherited)
                    .unwrap_or_default(),
                ..Effects::default()
            }
        } else {
            let Decided {
                mut effects,
                state,
                new_steps,
                cancels,
            } = self.apply(&mut run, events, inherited, &trigger_id).await?;
            // A wake-up due later waits on the flow's row, committed with the transition.
            let now = Utc::now();
            if let Some(at) = effects
                .wake_at
                .filter(|at| effects.end.is_none() && envelope::held_back(Some(*at), now))
            {
                let wake = flow_envelope(&flow_job, Some(at), &effects.inherited);
                let wake = serde_json::to_value(wake).expect("envelopes serialise");
                run.hold_wake(at, &wake, &wake_msg_id(flow_job.id, at))
                    .await?;
                effects.wake_at = None;
            }
            let applied_at = began.elapsed();
            // An empty status: the flow ended before its state could change (keep the last).
            let status = (!effects.status.is_null()).then_some(&effects.status);
            let saved = Saving {
                new_steps: &new_steps,
                applied: &applied,
                state: state.as_ref(),
                status,
                end: effects.end.as_ref(),
            };
            let committed = if cancels.is_empty() {
                run.save_and_commit(saved).await
            } else {
                // After the insert: a step enqueued by one of the events may be cancelled by
                // a later one.
                let by = &flow_job.created_by;
                let canceled = match run.save(saved).await {
                    Ok(()) => {
                        self.cancel(&run, &cancels, by, NOT_NEEDED, &mut effects)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match canceled {
                    Ok(()) => run.commit().await,
                    Err(e) => {
                        run.rollback();
                        Err(e)
                    }
                }
            };
            match committed {
                Ok(()) => {}
                // Keys are unique per flow and a state never enqueues one twice: this is a bug.
                // Nothing of this transition was committed.
                Err(e) if e.is_unique_violation() => {
                    let why = format!(
                        "a step among the {} new ones was enqueued already",
                        new_steps.len()
                    );
                    let bug = (with, record);
                    (effects, recorded) = self.end_after_bug(&mut conn, flow, bug, why).await?;
                }
                Err(e) => return Err(e),
            }
            tracing::debug!(flow = %flow, ends = applied.len(), new_steps = effects.steps.len(),
                locked_ms = locked.as_secs_f64() * 1e3, applied_ms = applied_at.as_secs_f64() * 1e3,
                committed_ms = began.elapsed().as_secs_f64() * 1e3, "flow transition");
            effects
        };
        drop(conn);
        let inherited = effects.inherited.clone();
        let mut published = self.publish(&flow_job, effects).await;
        if republish && published.is_ok() {
            published = self
                .republish_queued(&flow_job, &inherited, &trigger_id)
                .await;
        }
        Ok(Some(Transitioned {
            recorded,
            unpublished: published.err(),
        }))
    }

    /// Applies `events` (and what resolving their new steps gives back): what to write and
    /// publish.
    async fn apply(
        &self,
        run: &mut FlowRun<'_>,
        events: Vec<Event>,
        started_with: Option<Inherited>,
        trigger_id: &str,
    ) -> Result<Decided, StoreError> {
        // One budget of expression time for the whole transition, however many events.
        let deadline = std::time::Instant::now() + machine::TRANSITION_EXPR_TIME;
        let flow = run.flow.clone();
        let mut effects = Effects {
            started: events.first() == Some(&Event::Start),
            ..Effects::default()
        };
        let mut saved = match read_state(flow.state.as_deref()) {
            Ok(saved) => saved,
            Err(e) => {
                let why = format!("the flow's state cannot be read: {e}");
                return self.end_now(run, effects, "InternalError", why).await;
            }
        };
        if let Some(inherited) = started_with.filter(|_| effects.started) {
            saved.inherited = inherited;
        }
        // A flow started before traces were kept: its remaining steps still share one trace.
        if saved.inherited.traceparent.is_none() {
            saved.inherited.traceparent = Some(TraceParent::root().to_string());
        }
        effects.inherited = saved.inherited.clone();
        let ws = WorkspaceId::parse(&flow.workspace_id)
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let Some(version) = self.version(&ws, flow.flow_version, Some(run)).await? else {
            let why = "the flow version no longer exists".to_owned();
            return self.end_now(run, effects, "NotFound", why).await;
        };
        if effects.started {
            if let Some(missing) = missing_arguments(version.schema.as_ref(), &flow.args) {
                let why = format!("missing required argument(s): {}", missing.join(", "));
                return self.end_now(run, effects, "MissingArguments", why).await;
            }
        }
        let mut rows = Vec::new();
        let mut cancels = Vec::new();
        let mut events = events;
        while !events.is_empty() {
            let batch = std::mem::take(&mut events);
            let actions =
                match apply_blocking(&version, &mut saved.machine, &flow.args, batch, deadline)
                    .await
                {
                    Ok(actions) => actions,
                    Err(why) => return self.end_now(run, effects, "InternalError", why).await,
                };
            for action in actions {
                match action {
                    Action::Enqueue(step) => {
                        match step_row(run, &flow, &version.def, &step, trigger_id).await? {
                            Ok(row) => rows.push(row),
                            // The script is gone: the step fails without running.
                            Err(result) => events.push(Event::StepDone(StepDone {
                                job: step.job,
                                success: false,
                                canceled: false,
                                result,
                            })),
                        }
                    }
                    Action::Cancel(job) => cancels.push(job),
                    Action::WakeAt(at) => {
                        effects.wake_at = Some(effects.wake_at.map_or(at, |w| w.min(at)))
                    }
                    Action::EarlyReturn(result) => effects.early_return = Some(result),
                    Action::Finish { success, result } => {
                        effects.end = Some(flow_end(success, result))
                    }
                }
            }
        }
        // A step due later (a retry's delay) waits in its row for the scheduler.
        let now = Utc::now();
        for row in &mut rows {
            if envelope::held_back(row.scheduled_for, now) {
                let held = self.step_envelope(&flow, &effects.inherited, &queued_step(row));
                row.held = Some(serde_json::to_value(held).expect("envelopes serialise"));
            }
        }
        let (held, now): (Vec<_>, Vec<_>) = rows.iter().partition(|row| row.held.is_some());
        effects.steps = now.into_iter().map(queued_step).collect();
        effects.held_steps = held.into_iter().map(queued_step).collect();
        effects.status = flow_status(&version.def, &saved.machine);
        let state = serde_json::to_value(&saved).expect("the flow state serialises");
        Ok(Decided {
            effects,
            state: Some(state),
            new_steps: rows,
            cancels,
        })
    }

    /// Cancels steps of the flow: queued ones end now, running ones are killed.
    async fn cancel(
        &self,
        run: &FlowRun<'_>,
        steps: &[JobId],
        by: &str,
        reason: &str,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        // Nothing to cancel: what an earlier cancel of this transition decided stays (an early
        // end cancels before the transition's own cancels, which are then none).
        if steps.is_empty() {
            return Ok(());
        }
        let result = canceled_result(Some(reason), by);
        let (now, kill) = run.cancel_steps(steps, by, Some(reason), &result).await?;
        effects.canceled_now = now;
        effects.to_kill = kill;
        effects.cancel_by = by.to_owned();
        effects.cancel_reason = Some(reason.to_owned());
        effects.cancel_result = result;
        Ok(())
    }

    /// Ends the flow as failed, cancelling whatever of it still runs; its state stays as it was.
    async fn end_now(
        &self,
        run: &FlowRun<'_>,
        mut effects: Effects,
        name: &str,
        message: String,
    ) -> Result<Decided, StoreError> {
        tracing::warn!(flow = %run.flow.id, error = %message, "ending a flow: {name}");
        let unfinished = run.unfinished_steps().await?;
        let by = run.flow.created_by.clone();
        self.cancel(run, &unfinished, &by, "its flow failed", &mut effects)
            .await?;
        effects.end = Some(FlowEnd {
            status: JobStatus::Failure,
            result: json!({"error": {"name": name, "message": message}}),
            canceled_by: None,
            canceled_reason: None,
        });
        Ok(Decided {
            effects,
            ..Decided::default()
        })
    }

    /// Ends a flow as failed after its transition hit a bug (and rolled back), in a transaction
    /// of its own that does what the failed one did with its lock (`with` and `record`: the
    /// step's end recorded, the flow written and started), and cancels whatever of the flow
    /// still runs. Also says whether it recorded the step's end.
    async fn end_after_bug(
        &self,
        conn: &mut store::Conn<'_>,
        flow: JobId,
        (with, record): (flow_runs::With<'_>, Option<&NewJobRow>),
        why: String,
    ) -> Result<(Effects, bool), StoreError> {
        let run = match flow_runs::lock(conn, flow, record, true, with).await? {
            Locked::Run(run) => *run,
            Locked::Missing | Locked::Busy => return Ok((Effects::default(), false)),
        };
        let recorded = run.opened.recorded;
        let effects = Effects {
            started: run.opened.started,
            inherited: read_state(run.flow.state.as_deref())
                .map(|s| s.inherited)
                .unwrap_or_default(),
            ..Effects::default()
        };
        if run.flow.status.is_completed() {
            run.commit().await?;
            return Ok((effects, recorded));
        }
        let effects = self
            .end_now(&run, effects, "InternalError", why)
            .await?
            .effects;
        let end = Saving {
            end: effects.end.as_ref(),
            ..Saving::default()
        };
        run.save_and_commit(end).await?;
        Ok((effects, recorded))
    }

    /// The language and code of a `rawscript` step.
    pub async fn step_code(
        &self,
        ws: &str,
        step: &FlowStep,
    ) -> Result<Option<(ScriptLang, String)>, StoreError> {
        let Ok(ws) = WorkspaceId::parse(ws) else {
            return Ok(None);
        };
        let Some(version) = self.version(&ws, Some(step.flow_version), None).await? else {
            return Ok(None);
        };
        Ok(match version.def.find(&step.step_id).map(|m| &m.kind) {
            Some(ModuleKind::RawScript {
                language, content, ..
            }) => Some((*language, content.clone())),
            _ => None,
        })
    }

    /// A flow version, from the cache (versions never change) or the store (in `run`'s
    /// transaction when there is one, so a transition never waits for a second connection).
    async fn version(
        &self,
        ws: &WorkspaceId,
        id: Option<i64>,
        run: Option<&FlowRun<'_>>,
    ) -> Result<Option<Arc<Version>>, StoreError> {
        let Some(id) = id else {
            return Ok(None);
        };
        let key = (ws.to_string(), id);
        if let Some(version) = self.versions.lock().expect("versions lock").get(&key) {
            return Ok(Some(version.clone()));
        }
        let stored = match run {
            Some(run) => run.version(ws, id).await?,
            None => store::flows::version(&self.pool, ws, id).await?,
        };
        let Some(flow) = stored else {
            return Ok(None);
        };
        let Ok(def) = FlowDef::parse(&flow.value) else {
            // Checked when saved; a version that no longer parses cannot run.
            return Ok(None);
        };
        let version = Arc::new(Version {
            def,
            schema: flow.schema,
        });
        self.versions
            .lock()
            .expect("versions lock")
            .insert(key, version.clone());
        Ok(Some(version))
    }

    /// Publishes what a committed transition decided.
    async fn publish(&self, flow: &FlowJob, effects: Effects) -> Result<(), DriverError> {
        count(flow, &effects, effects.end.as_ref());
        let template = flow_envelope(flow, None, &effects.inherited);
        if effects.started {
            let _ = self
                .bus
                .publish_reply(flow.id, JobReply::Started, "{}".into())
                .await;
            self.bus
                .publish_event_unconfirmed(&JobEvent::new(JobEventKind::Started, &template))
                .await;
        }
        let jobs: Vec<(Tag, JobEnvelope)> = effects
            .steps
            .iter()
            .map(|step| {
                (
                    tag_of(&step.tag),
                    self.step_envelope(flow, &effects.inherited, step),
                )
            })
            .collect();
        self.bus.publish_jobs(&jobs).await?;
        let held: Vec<JobEnvelope> = effects
            .held_steps
            .iter()
            .map(|step| self.step_envelope(flow, &effects.inherited, step))
            .collect();
        for envelope in jobs.iter().map(|(_, e)| e).chain(&held) {
            let mut event = JobEvent::new(JobEventKind::Queued, envelope);
            event.at = Utc::now();
            self.bus.publish_event_unconfirmed(&event).await;
        }
        announce_canceled(&self.bus, flow, &effects).await;
        if !effects.status.is_null() {
            let progress = serde_json::to_vec(&effects.status).unwrap_or_default();
            let _ = self
                .bus
                .publish_reply(flow.id, JobReply::Progress, progress.into())
                .await;
        }
        if let Some(result) = &effects.early_return {
            let payload = serde_json::to_vec(result).unwrap_or_default();
            let _ = self
                .bus
                .publish_reply(flow.id, JobReply::EarlyReturn, payload.into())
                .await;
        }
        if let Some(at) = effects.wake_at {
            let wake = flow_envelope(flow, Some(at), &effects.inherited);
            self.bus
                .publish_job_as(&tag_of(&flow.tag), &wake, &wake_msg_id(flow.id, at))
                .await?;
        }
        if let Some(end) = &effects.end {
            announce_end(&self.bus, &template, end).await;
        }
        Ok(())
    }

    /// Publishes the flow's queued steps again (after a crash between commit and publish).
    async fn republish_queued(
        &self,
        flow: &FlowJob,
        inherited: &Inherited,
        trigger_id: &str,
    ) -> Result<(), DriverError> {
        let conn = self.pool.get().await.map_err(StoreError::from)?;
        let queued = flow_runs::queued_steps(&conn, flow.id, trigger_id).await?;
        drop(conn);
        let jobs: Vec<(Tag, JobEnvelope)> = queued
            .iter()
            .map(|step| (tag_of(&step.tag), self.step_envelope(flow, inherited, step)))
            .collect();
        Ok(self.bus.publish_jobs(&jobs).await?)
    }
}

/// A wake-up's message id: not a duplicate of the flow's first message, nor of another wake-up.
fn wake_msg_id(flow: JobId, at: chrono::DateTime<Utc>) -> String {
    format!("{flow}:wake:{}", at.timestamp_millis())
}

/// The flow job's own envelope (a wake-up when `scheduled_for` is set, whose span joins the
/// flow's trace).
fn flow_envelope(
    flow: &FlowJob,
    scheduled_for: Option<chrono::DateTime<Utc>>,
    inherited: &Inherited,
) -> JobEnvelope {
    JobEnvelope {
        v: envelope::VERSION,
        id: flow.id,
        workspace: flow.workspace_id.clone(),
        kind: JobKind::Flow,
        path: flow.path.clone(),
        hash: None,
        language: None,
        created_by: flow.created_by.clone(),
        permissioned_as: flow.permissioned_as.clone(),
        scopes: None,
        tag: flow.tag.clone(),
        timeout_s: None,
        scheduled_for,
        flow_version: flow.flow_version,
        flow_step: None,
        traceparent: inherited.traceparent.clone(),
        record: None,
    }
}

impl FlowDriver {
    fn step_envelope(
        &self,
        flow: &FlowJob,
        inherited: &Inherited,
        step: &QueuedStep,
    ) -> JobEnvelope {
        JobEnvelope {
            v: envelope::VERSION,
            id: step.id,
            workspace: flow.workspace_id.clone(),
            kind: JobKind::Script,
            path: step.script_path.clone(),
            hash: step.script_hash.clone(),
            language: step.language.as_deref().and_then(|l| l.parse().ok()),
            created_by: flow.created_by.clone(),
            permissioned_as: flow.permissioned_as.clone(),
            scopes: inherited.scopes.clone(),
            tag: step.tag.clone(),
            timeout_s: step.timeout_s,
            scheduled_for: step.scheduled_for,
            flow_version: None,
            flow_step: Some(FlowStep {
                flow_job: flow.id,
                root_job: flow.id,
                flow_path: flow.path.clone().unwrap_or_default(),
                flow_version: flow.flow_version.unwrap_or_default(),
                step_id: step.flow_step_id.clone().unwrap_or_default(),
            }),
            traceparent: inherited.traceparent.clone(),
            record: None,
        }
    }
}

/// Why a transition cancels a step.
const NOT_NEEDED: &str = "no longer needed by its flow";

/// What a cancel request did to a flow.
#[derive(Debug, PartialEq, Eq)]
pub enum FlowCancel {
    Canceled,
    AlreadyCompleted,
    NotFound,
}

/// Cancels a flow: it ends as cancelled now, its queued steps never start, its running steps
/// are killed, and later step ends change nothing.
pub async fn cancel_flow(
    pool: &Pool,
    bus: &Bus,
    id: JobId,
    by: &str,
    reason: Option<&str>,
) -> Result<FlowCancel, DriverError> {
    let mut conn = pool.get().await.map_err(StoreError::from)?;
    let run = match flow_runs::lock(&mut conn, id, None, true, flow_runs::With::Nothing).await? {
        Locked::Run(run) => *run,
        Locked::Missing | Locked::Busy => return Ok(FlowCancel::NotFound),
    };
    if run.flow.status.is_completed() {
        run.commit().await?;
        return Ok(FlowCancel::AlreadyCompleted);
    }
    let flow = run.flow.clone();
    let result = canceled_result(reason, by);
    let unfinished = run.unfinished_steps().await?;
    let (now, kill) = run.cancel_steps(&unfinished, by, reason, &result).await?;
    let end = FlowEnd {
        status: JobStatus::Canceled,
        result: result.clone(),
        canceled_by: Some(by.to_owned()),
        canceled_reason: reason.map(str::to_owned),
    };
    let saving = Saving {
        end: Some(&end),
        ..Saving::default()
    };
    run.save(saving).await?;
    run.commit().await?;
    drop(conn);
    let effects = Effects {
        canceled_now: now,
        to_kill: kill,
        cancel_by: by.to_owned(),
        cancel_reason: reason.map(str::to_owned),
        cancel_result: result,
        ..Effects::default()
    };
    count(&flow, &effects, Some(&end));
    announce_canceled(bus, &flow, &effects).await;
    announce_end(
        bus,
        &flow_envelope(&flow, None, &Inherited::default()),
        &end,
    )
    .await;
    Ok(FlowCancel::Canceled)
}

/// Counts in this process's metrics what a committed transition (or a cancel) did: the flow's
/// start and end, its steps queued and those cancelled while queued (a worker counts the rest).
fn count(flow: &FlowJob, effects: &Effects, end: Option<&FlowEnd>) {
    use crate::metrics::{self, JobEnd, JobLabels};
    let step = |tag: &str, language: Option<&str>| JobLabels::of_row(tag, language, "script", true);
    if effects.started {
        metrics::flow_started(&flow.tag);
    }
    for queued in effects.steps.iter().chain(&effects.held_steps) {
        metrics::job_queued(&step(&queued.tag, queued.language.as_deref()));
    }
    for canceled in &effects.canceled_now {
        let labels = step(&canceled.tag, canceled.language.as_deref());
        metrics::job_ended(&labels, JobEnd::Canceled, None);
    }
    if let Some(end) = end {
        let labels = JobLabels::new(&flow.tag, None, JobKind::Flow, false);
        let ran = flow
            .started_at
            .and_then(|at| (Utc::now() - at).to_std().ok());
        metrics::job_ended(&labels, JobEnd::of(end.status), ran);
    }
}

/// Tells the waiters of steps cancelled while queued, and the workers of running ones.
async fn announce_canceled(bus: &Bus, flow: &FlowJob, effects: &Effects) {
    for step in &effects.canceled_now {
        let done = JobDone::new(step.id, false, true, &effects.cancel_result);
        let _ = bus.publish_done(&done).await;
        let mut event = JobEvent::new(
            JobEventKind::Canceled,
            &flow_envelope(flow, None, &Inherited::default()),
        );
        event.id = step.id;
        event.job_kind = JobKind::Script.as_str().to_owned();
        event.path = step.script_path.clone();
        event.hash = step.script_hash.clone();
        event.flow_version = None;
        event.parent_job = Some(flow.id);
        event.root_job = Some(flow.id);
        event.success = Some(false);
        event.error = effects.cancel_result.get("error").cloned();
        bus.publish_event_unconfirmed(&event.with_result(&effects.cancel_result))
            .await;
    }
    for id in &effects.to_kill {
        let request = crate::queue::control::CancelJob {
            id: *id,
            canceled_by: effects.cancel_by.clone(),
            reason: effects.cancel_reason.clone(),
        };
        let _ = bus.publish_cancel(&request).await;
    }
}

/// The row of a new step job, or the error result of a step whose script is gone.
async fn step_row(
    run: &FlowRun<'_>,
    flow: &FlowJob,
    def: &FlowDef,
    step: &NewStep,
    trigger_id: &str,
) -> Result<Result<NewJobRow, Value>, StoreError> {
    let module = def
        .find(&step.module_id)
        .expect("the machine names modules of its flow");
    let ws =
        WorkspaceId::parse(&flow.workspace_id).map_err(|e| StoreError::Config(e.to_string()))?;
    let flow_path = flow.path.clone().unwrap_or_default();
    let (path, hash, language, tag, timeout) = match &module.kind {
        ModuleKind::RawScript { language, tag, .. } => (
            format!("{flow_path}/{}", module.id),
            None,
            *language,
            tag.as_ref().map(Tag::to_string),
            None,
        ),
        ModuleKind::Script {
            path, hash, tag, ..
        } => {
            let Some(script) = run.script(&ws, path, hash.as_ref()).await? else {
                let which = hash
                    .as_ref()
                    .map_or_else(|| path.to_string(), |h| format!("{path} ({h})"));
                return Ok(Err(json!({"error": {
                    "name": "NotFound",
                    "message": format!("module {}: script {which} not found", module.id),
                    "step_id": module.id,
                }})));
            };
            (
                path.to_string(),
                Some(script.hash.to_string()),
                script.language,
                tag.as_ref().map(Tag::to_string).or(script.tag),
                script.timeout,
            )
        }
        _ => unreachable!("only step modules are enqueued"),
    };
    Ok(Ok(NewJobRow {
        id: step.job,
        workspace_id: flow.workspace_id.clone(),
        job_kind: JobKind::Script.as_str().to_owned(),
        script_path: Some(path),
        script_hash: hash,
        args: Value::Object(step.args.clone()),
        created_by: flow.created_by.clone(),
        permissioned_as: flow.permissioned_as.clone(),
        created_at: Utc::now(),
        scheduled_for: step.scheduled_for,
        language: Some(language.as_str().to_owned()),
        tag: tag.unwrap_or_else(|| flow.tag.clone()),
        timeout_s: step.timeout_s.or(timeout),
        parent_job: Some(flow.id),
        started_by_token: flow.started_by_token.clone(),
        flow_version: None,
        root_job: Some(flow.id),
        flow_step_id: Some(module.id.clone()),
        flow_step_key: Some(step.key.clone()),
        flow_enqueued_by: Some(trigger_id.to_owned()),
        held: None,
        once: None,
    }))
}

/// How the machine's `Finish` is recorded. A result nested deeper than PostgreSQL's readers
/// take (serde_json's limit of 128 levels) fails the flow instead.
fn flow_end(success: bool, result: Value) -> FlowEnd {
    let (status, result) = if json_depth(&result) > MAX_RESULT_DEPTH {
        let message = format!("the flow's result is nested deeper than {MAX_RESULT_DEPTH} levels");
        (
            JobStatus::Failure,
            json!({"error": {"name": "ResultError", "message": message}}),
        )
    } else if success {
        (JobStatus::Success, result)
    } else {
        (JobStatus::Failure, result)
    };
    FlowEnd {
        status,
        result,
        canceled_by: None,
        canceled_reason: None,
    }
}

const MAX_RESULT_DEPTH: usize = 120;

/// The saved state: read without serde_json's depth limit, since step results (up to that
/// limit themselves) sit deep inside it.
fn read_state(text: Option<&str>) -> Result<Saved, serde_json::Error> {
    let Some(text) = text else {
        return Ok(Saved::default());
    };
    let mut reader = serde_json::Deserializer::from_str(text);
    reader.disable_recursion_limit();
    let saved = Saved::deserialize(&mut reader)?;
    reader.end()?;
    Ok(saved)
}

/// Publishes a flow's `done` and terminal event.
pub async fn announce_end(bus: &Bus, flow: &JobEnvelope, end: &FlowEnd) {
    let done = JobDone::new(
        flow.id,
        end.status == JobStatus::Success,
        end.status == JobStatus::Canceled,
        &end.result,
    );
    if let Err(e) = bus.publish_done(&done).await {
        tracing::warn!(flow = %flow.id, error = %e, "done reply not published");
    }
    let kind = match end.status {
        JobStatus::Success => JobEventKind::Completed,
        JobStatus::Canceled => JobEventKind::Canceled,
        _ => JobEventKind::Failed,
    };
    let mut event = JobEvent::new(kind, flow).with_result(&end.result);
    event.success = Some(done.success);
    if !done.success {
        event.error = end.result.get("error").cloned();
    }
    if let Err(e) = bus.publish_event(&event).await {
        tracing::warn!(flow = %flow.id, error = %e, "terminal event not published");
    }
}

fn tag_of(raw: &str) -> Tag {
    Tag::parse(raw).unwrap_or_else(|_| Tag::default_tag())
}

fn queued_step(row: &NewJobRow) -> QueuedStep {
    QueuedStep {
        id: row.id,
        script_path: row.script_path.clone(),
        script_hash: row.script_hash.clone(),
        language: row.language.clone(),
        tag: row.tag.clone(),
        timeout_s: row.timeout_s,
        scheduled_for: row.scheduled_for,
        flow_step_id: row.flow_step_id.clone(),
    }
}

/// The names the schema requires and the arguments lack.
fn missing_arguments(schema: Option<&Value>, args: &Value) -> Option<Vec<String>> {
    let required = schema?.get("required")?.as_array()?;
    let args = args.as_object();
    let missing: Vec<String> = required
        .iter()
        .filter_map(Value::as_str)
        .filter(|name| !args.is_some_and(|a| a.contains_key(*name)))
        .map(str::to_owned)
        .collect();
    (!missing.is_empty()).then_some(missing)
}

/// Runs the machine off the async threads (expressions may take up to their deadline),
/// applying `events` in order.
async fn apply_blocking(
    version: &Arc<Version>,
    state: &mut FlowState,
    args: &Value,
    events: Vec<Event>,
    deadline: std::time::Instant,
) -> Result<Vec<Action>, String> {
    let version = version.clone();
    let mut owned = std::mem::take(state);
    let input = match args {
        Value::Object(_) => args.clone(),
        _ => Value::Object(Map::new()),
    };
    let (owned, actions) = tokio::task::spawn_blocking(move || {
        let mut actions = Vec::new();
        for event in events {
            actions.extend(machine::apply(
                &version.def,
                &mut owned,
                &input,
                event,
                (Utc::now(), deadline),
                &mut uuid::Uuid::now_v7,
            ));
        }
        (owned, actions)
    })
    .await
    .map_err(|e| format!("the flow's state machine failed: {e}"))?;
    *state = owned;
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_saved_before_traces_were_kept_still_reads() {
        let mut saved = Saved::default();
        saved.inherited.scopes = Some(vec!["jobs:run".into()]);
        let old = serde_json::to_string(&saved).unwrap();
        assert!(!old.contains("traceparent"), "{old}");
        let read = read_state(Some(&old)).unwrap();
        assert_eq!(read.inherited.scopes, saved.inherited.scopes);
        assert_eq!(read.inherited.traceparent, None);

        let trace = TraceParent::root().to_string();
        saved.inherited.traceparent = Some(trace.clone());
        let new = serde_json::to_string(&saved).unwrap();
        let read = read_state(Some(&new)).unwrap();
        assert_eq!(read.inherited.traceparent, Some(trace));
    }
}
