//! The flow state machine, pure: `(definition, state, event) → (new state, actions)`. No I/O:
//! the driver loads the state, applies one event, and carries out the actions (enqueue step
//! jobs, cancel jobs, wake the flow later, answer an early return, finish) in the same
//! transaction that saves the new state. Applying an event that was applied already changes
//! nothing, which is what makes redelivered step completions harmless.
//!
//! Each pass walks the running part of the tree from the root: it delivers the event to the
//! step job it concerns, and starts whatever can start now. Expressions are evaluated only when
//! a node starts (or ends), never twice for the same node.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::expr::{self, ExprError};
use super::model::{FlowDef, Module, ModuleKind, Retry, Transform};
use super::state::{
    BranchAllRun, BranchOneRun, End, FailureRun, FlowState, JobRun, Lane, LoopRun, Node, Outcome,
    Run, Seq, Spent,
};
use crate::domain::JobId;

/// Retries never wait longer than this.
const MAX_RETRY_DELAY_S: u64 = 6 * 3600;
/// A loop runs at most this many iterations: each is a job, and the flow's state holds them all.
pub const MAX_ITERATIONS: usize = 10_000;
/// A flow starts at most this many step jobs and loop iterations or branches in all.
pub const MAX_UNITS: u64 = 50_000;
/// One step's arguments, and all of a flow's steps' arguments together, at most.
pub const MAX_STEP_ARGS: usize = 8 * 1024 * 1024;
pub const MAX_FLOW_ARGS: u64 = 256 * 1024 * 1024;
/// All of a flow's steps' results together, at most: the flow's state keeps them until it ends,
/// and every transition rewrites the state.
pub const MAX_FLOW_RESULTS: u64 = 64 * 1024 * 1024;
/// Steps' arguments nest at most this deep (readers of JSON columns take 128 levels).
pub const MAX_ARGS_DEPTH: usize = 100;
/// A `sleep` never lasts longer than this.
pub const MAX_SLEEP_S: u64 = 30 * 24 * 3600;
/// All the expressions of one transition together may run this long: the transition holds its
/// flow's lock meanwhile.
pub const TRANSITION_EXPR_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// What happened to the flow.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The flow job was taken by a worker for the first time.
    Start,
    /// A step job ended.
    StepDone(StepDone),
    /// A sleep may be over.
    Wake,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepDone {
    pub job: JobId,
    pub success: bool,
    pub canceled: bool,
    pub result: Value,
}

/// A step job to create and publish.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStep {
    pub job: JobId,
    /// Unique within the flow: the module's place in the tree and the attempt.
    pub key: String,
    pub module_id: String,
    pub args: Map<String, Value>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub timeout_s: Option<i32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Enqueue(NewStep),
    /// A step that may still be running is no longer needed.
    Cancel(JobId),
    /// Deliver [`Event::Wake`] at this time.
    WakeAt(DateTime<Utc>),
    /// The `early_return` module ended: a sync caller may have this result now.
    EarlyReturn(Value),
    Finish {
        success: bool,
        result: Value,
    },
}

/// Applies one event at `now`; expressions stop at `deadline` (one per transition, however
/// many events it applies). `new_id` names new step jobs (UUIDv7s in production, so ids are
/// never reused; tests pass a counter).
pub fn apply(
    def: &FlowDef,
    state: &mut FlowState,
    flow_input: &Value,
    event: Event,
    (now, deadline): (DateTime<Utc>, std::time::Instant),
    new_id: &mut dyn FnMut() -> JobId,
) -> Vec<Action> {
    if state.ended.is_some() {
        return Vec::new();
    }
    let mut machine = Machine {
        now,
        new_id,
        event: match event {
            Event::StepDone(done) => Some(done),
            Event::Start | Event::Wake => None,
        },
        actions: Vec::new(),
        spent: state.spent,
        deadline,
    };
    let root = Scope::root(flow_input);
    let mut end = None;
    if state.failure.is_none() {
        end = machine.seq(&mut state.root, &def.modules, &root, "");
        machine.early_return(def, state);
        if let (Some(failed), Some(_)) = (&end, &def.failure_module) {
            if failed.failed() {
                state.failure = Some(FailureRun {
                    seq: Seq::default(),
                    failed: failed.result.clone(),
                });
                end = None;
            }
        }
    }
    if let (Some(run), Some(module)) = (&mut state.failure, &def.failure_module) {
        let error = run.failed.get("error").cloned();
        let scope = Scope {
            previous: &run.failed,
            error: error.as_ref(),
            ..Scope::root(flow_input)
        };
        end = machine
            .seq(&mut run.seq, std::slice::from_ref(module), &scope, "")
            // Handled or not, the flow failed: it ends with the failure module's result.
            .map(|e| End::failure(e.result));
    }
    state.spent = machine.spent;
    if let Some(end) = end {
        machine.actions.push(Action::Finish {
            success: !end.failed(),
            result: end.result.clone(),
        });
        state.ended = Some(end);
    }
    machine.actions
}

/// What an expression can see, from the innermost sequence outwards.
#[derive(Clone, Copy)]
struct Scope<'a> {
    parent: Option<&'a Scope<'a>>,
    flow_input: &'a Value,
    /// The innermost loop's iteration: `flow_input.iter = {index, value}`.
    iter: Option<(usize, &'a Value)>,
    /// The ended nodes before the current one in this sequence, and their modules.
    done: &'a [Node],
    modules: &'a [Module],
    previous: &'a Value,
    error: Option<&'a Value>,
}

impl<'a> Scope<'a> {
    fn root(flow_input: &'a Value) -> Self {
        Self {
            parent: None,
            flow_input,
            iter: None,
            done: &[],
            modules: &[],
            // The first step's `previous_result` is the flow's input.
            previous: flow_input,
            error: None,
        }
    }

    fn result_of(&self, id: &str) -> Option<&'a Value> {
        let here = self
            .modules
            .iter()
            .zip(self.done)
            .rev()
            .find(|(m, _)| m.id == id)
            .and_then(|(_, n)| n.end.as_ref())
            .map(|e| &e.result);
        here.or_else(|| self.parent.and_then(|p| p.result_of(id)))
    }

    fn all_results(&self, into: &mut Map<String, Value>) {
        if let Some(parent) = self.parent {
            parent.all_results(into);
        }
        for (module, node) in self.modules.iter().zip(self.done) {
            if let Some(end) = &node.end {
                into.insert(module.id.clone(), end.result.clone());
            }
        }
    }

    /// The variables `source` can use; `extra` adds `result`, `params` and the like.
    fn vars(&self, source: &str, extra: &[(&str, &Value)]) -> Map<String, Value> {
        let mut vars = Map::new();
        if expr::mentions(source, "flow_input") {
            let mut input = self.flow_input.clone();
            if let (Some((index, value)), Value::Object(map)) = (self.iter, &mut input) {
                map.insert("iter".into(), json!({"index": index, "value": value}));
            }
            vars.insert("flow_input".into(), input);
        }
        if expr::mentions(source, "previous_result") {
            vars.insert("previous_result".into(), self.previous.clone());
        }
        if let (true, Some(error)) = (expr::mentions(source, "error"), self.error) {
            vars.insert("error".into(), error.clone());
        }
        if expr::mentions(source, "results") {
            let mut results = Map::new();
            match expr::result_ids(source) {
                Some(ids) => {
                    for id in ids {
                        if let Some(value) = self.result_of(&id) {
                            results.insert(id, value.clone());
                        }
                    }
                }
                None => self.all_results(&mut results),
            }
            vars.insert("results".into(), Value::Object(results));
        }
        for (name, value) in extra {
            if expr::mentions(source, name) {
                vars.insert((*name).into(), (*value).clone());
            }
        }
        vars
    }
}

struct Machine<'m> {
    now: DateTime<Utc>,
    new_id: &'m mut dyn FnMut() -> JobId,
    /// Consumed by the node it concerns.
    event: Option<StepDone>,
    actions: Vec<Action>,
    /// What the flow has started so far, against [`MAX_UNITS`] and [`MAX_FLOW_ARGS`].
    spent: Spent,
    /// When this transition's expressions must have ended.
    deadline: std::time::Instant,
}

/// The error result of a step that failed before or without running.
fn error_result(name: &str, message: String, module: &Module) -> Value {
    json!({"error": {"name": name, "message": message, "step_id": module.id}})
}

/// The flow would start more than it may.
fn too_big(module: &Module) -> End {
    End::failure(error_result(
        "FlowTooLarge",
        format!(
            "module {}: the flow would start more than {MAX_UNITS} steps and iterations, or \
             hold more than {MAX_FLOW_ARGS} bytes of step arguments or {MAX_FLOW_RESULTS} bytes \
             of step results",
            module.id
        ),
        module,
    ))
}

fn expr_failure(module: &Module, what: &str, source: &str, e: ExprError) -> End {
    End::failure(error_result(
        "ExpressionError",
        format!("module {}: {what} {source:?} failed: {e}", module.id),
        module,
    ))
}

impl Machine<'_> {
    fn eval(&self, source: &str, vars: &Map<String, Value>) -> Result<Value, ExprError> {
        let deadline = self
            .deadline
            .min(std::time::Instant::now() + expr::DEADLINE);
        expr::eval_by(source, vars, deadline)
    }

    fn eval_bool(&self, source: &str, vars: &Map<String, Value>) -> Result<bool, ExprError> {
        Ok(expr::truthy(&self.eval(source, vars)?))
    }

    /// Counts a step's result; `false` when the flow would exceed [`MAX_FLOW_RESULTS`].
    fn charge_results(&mut self, bytes: u64) -> bool {
        let total = self.spent.result_bytes.saturating_add(bytes);
        if total > MAX_FLOW_RESULTS {
            return false;
        }
        self.spent.result_bytes = total;
        true
    }

    /// Counts `units` more jobs or lanes; `false` when the flow would exceed [`MAX_UNITS`].
    fn charge(&mut self, units: u64, arg_bytes: u64) -> bool {
        let units = self.spent.units + units;
        let bytes = self.spent.arg_bytes + arg_bytes;
        if units > MAX_UNITS || bytes > MAX_FLOW_ARGS {
            return false;
        }
        self.spent.units = units;
        self.spent.arg_bytes = bytes;
        true
    }

    /// Runs a sequence as far as it can go; `Some` once it has ended.
    fn seq(
        &mut self,
        seq: &mut Seq,
        modules: &[Module],
        scope: &Scope<'_>,
        prefix: &str,
    ) -> Option<End> {
        loop {
            if seq.pos >= modules.len() {
                let last = seq.nodes.last().and_then(|n| n.end.as_ref());
                let result = last.map_or_else(|| scope.previous.clone(), |e| e.result.clone());
                return Some(End::success(result));
            }
            if let Some(until) = seq.sleep_until {
                if until > self.now {
                    self.actions.push(Action::WakeAt(until));
                    return None;
                }
                seq.sleep_until = None;
            }
            if seq.nodes.len() <= seq.pos {
                seq.nodes.push(Node::pending());
            }
            let module = &modules[seq.pos];
            let (done, rest) = seq.nodes.split_at_mut(seq.pos);
            let node = &mut rest[0];
            let here = Scope {
                parent: Some(scope),
                done,
                modules: &modules[..done.len()],
                previous: done
                    .last()
                    .and_then(|n| n.end.as_ref())
                    .map_or(scope.previous, |e| &e.result),
                ..*scope
            };
            let key = format!("{prefix}{}", module.id);
            self.node(node, module, &here, &key);
            let end = node.end.as_ref()?;
            if end.failed() || end.stopped {
                return Some(end.clone());
            }
            if let Some(sleep) = &module.sleep {
                match self.seconds(sleep, &here, &[("result", &end.result)]) {
                    Ok(Some(secs)) => {
                        let secs = secs.min(MAX_SLEEP_S) as i64;
                        seq.sleep_until = Some(self.now + chrono::Duration::seconds(secs))
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let failed = expr_failure(module, "sleep", &sleep.describe(), e);
                        node.end = Some(failed.clone());
                        return Some(failed);
                    }
                }
            }
            seq.pos += 1;
        }
    }

    /// Starts or advances one node; sets `node.end` when it ends.
    fn node(&mut self, node: &mut Node, module: &Module, scope: &Scope<'_>, key: &str) {
        if node.end.is_some() {
            return;
        }
        let end = if let Run::Pending = node.run {
            match self.start(module, scope, key) {
                Ok(run) => {
                    node.run = run;
                    self.progress(&mut node.run, module, scope, key)
                }
                Err((run, end)) => {
                    node.run = run;
                    Some(end)
                }
            }
        } else {
            self.progress(&mut node.run, module, scope, key)
        };
        let Some(mut end) = end else {
            return;
        };
        if end.outcome == Outcome::Success && node.run != Run::Skipped {
            let stop = match &module.kind {
                ModuleKind::ForLoop { .. } => &module.stop_after_all_iters_if,
                _ => &module.stop_after_if,
            };
            if let Some(stop) = stop {
                let vars = scope.vars(&stop.expr, &[("result", &end.result)]);
                match self.eval_bool(&stop.expr, &vars) {
                    Ok(true) => {
                        end.stopped = true;
                        end.skipped = stop.skip_if_stopped;
                    }
                    Ok(false) => {}
                    Err(e) => end = expr_failure(module, "stop_after_if", &stop.expr, e),
                }
            }
        }
        if end.failed() && module.continue_on_error {
            end.outcome = Outcome::Continued;
        }
        node.end = Some(end);
    }

    /// The run a pending node starts, or how it ended at once.
    fn start(&mut self, module: &Module, scope: &Scope<'_>, key: &str) -> Result<Run, (Run, End)> {
        let immediate = |end| Err((Run::Immediate, end));
        if let Some(source) = &module.skip_if {
            match self.eval_bool(source, &scope.vars(source, &[])) {
                Ok(true) => return Err((Run::Skipped, End::success(scope.previous.clone()))),
                Ok(false) => {}
                Err(e) => return immediate(expr_failure(module, "skip_if", source, e)),
            }
        }
        match &module.kind {
            ModuleKind::Identity => immediate(End::success(scope.previous.clone())),
            ModuleKind::RawScript { .. } | ModuleKind::Script { .. } => {
                match self.enqueue(module, scope, key, 1, None) {
                    Ok(job) => Ok(Run::Job(JobRun {
                        job,
                        attempt: 1,
                        failed: Vec::new(),
                    })),
                    Err(end) => immediate(end),
                }
            }
            ModuleKind::ForLoop {
                iterator,
                parallel,
                parallelism,
                ..
            } => {
                let items = match self.transform(iterator, scope, &[("result", scope.previous)]) {
                    Ok(Value::Array(items)) if items.len() > MAX_ITERATIONS => {
                        return immediate(End::failure(error_result(
                            "IteratorError",
                            format!(
                                "module {}: the iterator has {} items; a loop runs at most {MAX_ITERATIONS}",
                                module.id,
                                items.len()
                            ),
                            module,
                        )))
                    }
                    Ok(Value::Array(items)) => items,
                    Ok(other) => {
                        return immediate(End::failure(error_result(
                            "IteratorError",
                            format!(
                                "module {}: expected an array value, found: {other}",
                                module.id
                            ),
                            module,
                        )))
                    }
                    Err(e) => {
                        return immediate(expr_failure(
                            module,
                            "iterator",
                            &iterator.describe(),
                            e,
                        ))
                    }
                };
                let limit = if !parallel {
                    1
                } else {
                    match parallelism.as_ref().map(|p| self.seconds(p, scope, &[])) {
                        None | Some(Ok(None)) => items.len(),
                        Some(Ok(Some(n))) => n as usize,
                        Some(Err(e)) => {
                            let source = parallelism.as_ref().map(Transform::describe);
                            return immediate(expr_failure(
                                module,
                                "parallelism",
                                &source.unwrap_or_default(),
                                e,
                            ));
                        }
                    }
                };
                Ok(Run::Loop(LoopRun {
                    items,
                    lanes: Vec::new(),
                    limit: limit.max(1),
                }))
            }
            ModuleKind::BranchOne { branches, .. } => {
                let mut chosen = None;
                for (i, (source, _)) in branches.iter().enumerate() {
                    match self.eval_bool(source, &scope.vars(source, &[])) {
                        Ok(true) => {
                            chosen = Some(i);
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => return immediate(expr_failure(module, "branch expr", source, e)),
                    }
                }
                Ok(Run::BranchOne(BranchOneRun {
                    chosen,
                    body: Seq::default(),
                }))
            }
            ModuleKind::BranchAll { branches, parallel } => Ok(Run::BranchAll(BranchAllRun {
                lanes: Vec::new(),
                limit: if *parallel { branches.len().max(1) } else { 1 },
            })),
        }
    }

    /// Advances a started node; `Some` once it ended.
    fn progress(
        &mut self,
        run: &mut Run,
        module: &Module,
        scope: &Scope<'_>,
        key: &str,
    ) -> Option<End> {
        match (run, &module.kind) {
            (Run::Job(job), _) => self.job(job, module, scope, key),
            (
                Run::Loop(run),
                ModuleKind::ForLoop {
                    body,
                    skip_failures,
                    ..
                },
            ) => {
                let total = run.items.len();
                let items = &run.items;
                let break_if = module.stop_after_if.as_ref();
                self.lanes(
                    &mut run.lanes,
                    run.limit,
                    total,
                    module,
                    scope,
                    key,
                    |i| (body.as_slice(), *skip_failures, Some((i, &items[i]))),
                    break_if.map(|s| s.expr.as_str()),
                )
            }
            (Run::BranchAll(run), ModuleKind::BranchAll { branches, .. }) => self.lanes(
                &mut run.lanes,
                run.limit,
                branches.len(),
                module,
                scope,
                key,
                |i| (branches[i].0.as_slice(), branches[i].1, scope.iter),
                None,
            ),
            (Run::BranchOne(run), ModuleKind::BranchOne { branches, default }) => {
                let (modules, prefix) = match run.chosen {
                    Some(i) => (&branches[i].1, format!("{key}/{i}/")),
                    None => (default, format!("{key}/default/")),
                };
                self.seq(&mut run.body, modules, scope, &prefix)
            }
            _ => None,
        }
    }

    /// A step job's node: takes the event if it concerns the job.
    fn job(
        &mut self,
        run: &mut JobRun,
        module: &Module,
        scope: &Scope<'_>,
        key: &str,
    ) -> Option<End> {
        if self.event.as_ref()?.job != run.job {
            return None;
        }
        let done = self.event.take()?;
        let size = serde_json::to_vec(&done.result).map_or(u64::MAX, |v| v.len() as u64);
        if !self.charge_results(size) {
            return Some(too_big(module));
        }
        if done.success {
            return Some(End::success(done.result));
        }
        let mut result = done.result;
        if let Some(error) = result.get_mut("error").and_then(Value::as_object_mut) {
            error
                .entry("step_id")
                .or_insert_with(|| Value::String(module.id.clone()));
        }
        let delay = module
            .retry
            .as_ref()
            .filter(|_| !done.canceled)
            .and_then(|retry| retry_delay(retry, run.attempt, run.job));
        let Some(delay) = delay else {
            return Some(End::failure(result));
        };
        let at = self.now + chrono::Duration::seconds(delay as i64);
        let scheduled = (delay > 0).then_some(at);
        match self.enqueue(module, scope, key, run.attempt + 1, scheduled) {
            Ok(job) => {
                run.failed.push(run.job);
                run.job = job;
                run.attempt += 1;
                None
            }
            Err(end) => Some(end),
        }
    }

    /// Loop iterations or branches: starts lanes up to `limit` at a time, collects their ends in
    /// order. `lane(i)` gives lane i's modules, whether its failure is skipped, and its `iter`.
    #[allow(clippy::too_many_arguments)]
    fn lanes<'s>(
        &mut self,
        lanes: &mut Vec<Lane>,
        limit: usize,
        total: usize,
        module: &Module,
        scope: &Scope<'s>,
        key: &str,
        lane: impl Fn(usize) -> (&'s [Module], bool, Option<(usize, &'s Value)>),
        break_if: Option<&str>,
    ) -> Option<End> {
        loop {
            let mut stop: Option<End> = None;
            for (i, l) in lanes.iter_mut().enumerate() {
                if l.end.is_some() {
                    continue;
                }
                let (modules, skip_failure, iter) = lane(i);
                let here = Scope {
                    parent: Some(scope),
                    iter: iter.or(scope.iter),
                    done: &[],
                    modules: &[],
                    ..*scope
                };
                let Some(mut end) = self.seq(&mut l.seq, modules, &here, &format!("{key}/{i}/"))
                else {
                    continue;
                };
                // A flow that outgrew its budget fails whatever the loop skips.
                let too_big = end.result["error"]["name"] == "FlowTooLarge";
                if end.failed() && skip_failure && !too_big {
                    end.outcome = Outcome::Continued;
                }
                if end.failed() {
                    stop = Some(End::failure(end.result.clone()));
                } else if let (Some(source), false) = (break_if, end.stopped) {
                    let vars = here.vars(source, &[("result", &end.result)]);
                    match self.eval_bool(source, &vars) {
                        Ok(true) => end.stopped = true,
                        Ok(false) => {}
                        Err(e) => stop = Some(expr_failure(module, "stop_after_if", source, e)),
                    }
                }
                let stopped = end.stopped;
                l.end = Some(end);
                if stop.is_some() || stopped {
                    break;
                }
            }
            let stopped = lanes
                .iter()
                .any(|l| l.end.as_ref().is_some_and(|e| e.stopped));
            if stop.is_some() || stopped {
                for l in lanes.iter().filter(|l| l.end.is_none()) {
                    let mut jobs = Vec::new();
                    l.seq.running_jobs(&mut jobs);
                    self.actions.extend(jobs.into_iter().map(Action::Cancel));
                }
                if let Some(failed) = stop {
                    return Some(failed);
                }
                let results = lane_results(lanes);
                // A loop breaks and the flow goes on; a stop in a branch stops the flow.
                let stops_flow = !matches!(module.kind, ModuleKind::ForLoop { .. });
                let skipped = lanes
                    .iter()
                    .any(|l| l.end.as_ref().is_some_and(|e| e.skipped));
                return Some(End {
                    stopped: stops_flow,
                    skipped: stops_flow && skipped,
                    ..End::success(results)
                });
            }
            let running = lanes.iter().filter(|l| l.end.is_none()).count();
            if lanes.len() < total && running < limit {
                let new = (limit - running).min(total - lanes.len());
                if !self.charge(new as u64, 0) {
                    let mut jobs = Vec::new();
                    for l in lanes.iter().filter(|l| l.end.is_none()) {
                        l.seq.running_jobs(&mut jobs);
                    }
                    self.actions.extend(jobs.into_iter().map(Action::Cancel));
                    return Some(too_big(module));
                }
                // Started lanes are advanced by the next round of this loop.
                lanes.extend((0..new).map(|_| Lane::default()));
                continue;
            }
            if lanes.len() == total && running == 0 {
                return Some(End::success(lane_results(lanes)));
            }
            return None;
        }
    }

    /// Evaluates a step's inputs and enqueues attempt `attempt` of it.
    fn enqueue(
        &mut self,
        module: &Module,
        scope: &Scope<'_>,
        key: &str,
        attempt: u32,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> Result<JobId, End> {
        let inputs = match &module.kind {
            ModuleKind::RawScript { inputs, .. } | ModuleKind::Script { inputs, .. } => inputs,
            _ => unreachable!("only step modules are enqueued"),
        };
        // Statics first, so JavaScript inputs can read them as `params`.
        let mut args = Map::new();
        for (name, transform) in inputs {
            if let Transform::Static(value) = transform {
                args.insert(name.clone(), value.clone());
            }
        }
        for (name, transform) in inputs {
            if let Transform::Js(source) = transform {
                let params = Value::Object(args.clone());
                let vars = scope.vars(source, &[("params", &params)]);
                let value = self
                    .eval(source, &vars)
                    .map_err(|e| expr_failure(module, &format!("input {name}"), source, e))?;
                args.insert(name.clone(), value);
            }
        }
        let timeout_s = match &module.timeout {
            None => None,
            Some(t) => self
                .seconds(t, scope, &[])
                .map_err(|e| expr_failure(module, "timeout", &t.describe(), e))?
                .map(|s| s.min(i32::MAX as u64) as i32),
        };
        let size = serde_json::to_vec(&args).map_or(usize::MAX, |v| v.len());
        let depth = json_depth(&Value::Object(args.clone()));
        if depth > MAX_ARGS_DEPTH {
            return Err(End::failure(error_result(
                "ArgumentsTooDeep",
                format!(
                    "module {}: its arguments nest {depth} levels deep; at most {MAX_ARGS_DEPTH}",
                    module.id
                ),
                module,
            )));
        }
        if size > MAX_STEP_ARGS {
            return Err(End::failure(error_result(
                "ArgumentsTooLarge",
                format!(
                    "module {}: its arguments take {size} bytes; a step takes at most {MAX_STEP_ARGS}",
                    module.id
                ),
                module,
            )));
        }
        if !self.charge(1, size as u64) {
            return Err(too_big(module));
        }
        let job = (self.new_id)();
        self.actions.push(Action::Enqueue(NewStep {
            job,
            key: format!("{key}#{attempt}"),
            module_id: module.id.clone(),
            args,
            scheduled_for,
            timeout_s,
        }));
        Ok(job)
    }

    fn transform(
        &self,
        transform: &Transform,
        scope: &Scope<'_>,
        extra: &[(&str, &Value)],
    ) -> Result<Value, ExprError> {
        match transform {
            Transform::Static(value) => Ok(value.clone()),
            Transform::Js(source) => self.eval(source, &scope.vars(source, extra)),
        }
    }

    /// A whole number of seconds (or a count), `None` for null or zero.
    fn seconds(
        &self,
        transform: &Transform,
        scope: &Scope<'_>,
        extra: &[(&str, &Value)],
    ) -> Result<Option<u64>, ExprError> {
        match self.transform(transform, scope, extra)? {
            Value::Null => Ok(None),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f >= 0.0 && f.is_finite() => {
                    Ok(Some(f.ceil() as u64).filter(|s| *s > 0))
                }
                _ => Err(ExprError(format!(
                    "expected a non-negative number, got {n}"
                ))),
            },
            other => Err(ExprError(format!("expected a number, got {other}"))),
        }
    }

    fn early_return(&mut self, def: &FlowDef, state: &mut FlowState) {
        let Some(id) = &def.early_return else {
            return;
        };
        if state.early_result.is_some() {
            return;
        }
        let ended = def
            .modules
            .iter()
            .zip(&state.root.nodes)
            .find(|(m, _)| &m.id == id)
            .and_then(|(_, n)| n.end.as_ref())
            .filter(|e| !e.failed());
        if let Some(end) = ended {
            state.early_result = Some(end.result.clone());
            self.actions.push(Action::EarlyReturn(end.result.clone()));
        }
    }
}

/// How deeply a JSON value nests (a scalar: 0).
pub fn json_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Each ended lane's result, in order.
fn lane_results(lanes: &[Lane]) -> Value {
    Value::Array(
        lanes
            .iter()
            .filter_map(|l| l.end.as_ref().map(|e| e.result.clone()))
            .collect(),
    )
}

/// Seconds before the next attempt after attempt `attempt` failed, or `None` when none is left.
/// Constant attempts come first, then exponential ones (`multiplier * seconds^attempt`, ± up to
/// `random_factor` % of jitter, derived from the failed job's id so a replay computes the same).
/// The exponent counts the constant attempts too, as Windmill's does: the same `retry` waits
/// the same there and here.
pub fn retry_delay(retry: &Retry, attempt: u32, failed_job: JobId) -> Option<u64> {
    let retries_done = attempt.saturating_sub(1);
    if retries_done < retry.constant_attempts {
        return Some(retry.constant_seconds.min(MAX_RETRY_DELAY_S));
    }
    if retries_done - retry.constant_attempts >= retry.exponential_attempts {
        return None;
    }
    let base = retry
        .seconds
        .checked_pow(attempt)
        .and_then(|p| p.checked_mul(retry.multiplier))
        .unwrap_or(MAX_RETRY_DELAY_S)
        .min(MAX_RETRY_DELAY_S);
    let jitter = if retry.random_factor > 0 {
        let spread = base as f64 * f64::from(retry.random_factor) / 100.0;
        let unit = f64::from(failed_job.as_bytes()[15]) / 255.0 * 2.0 - 1.0;
        (spread * unit).round() as i64
    } else {
        0
    };
    Some((base as i64 + jitter).clamp(0, MAX_RETRY_DELAY_S as i64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::status::flow_status;
    use serde_json::json;

    /// Runs a flow to its end in memory: every enqueued step is "run" by `step`, in the order
    /// `pick` chooses among the pending ones; returns the finish and every action seen.
    struct Sim {
        def: FlowDef,
        state: FlowState,
        input: Value,
        next: u128,
        now: DateTime<Utc>,
        pending: Vec<NewStep>,
        actions: Vec<Action>,
        finished: Option<(bool, Value)>,
    }

    impl Sim {
        fn new(def: Value, input: Value) -> Self {
            Self {
                def: FlowDef::parse(&def).unwrap(),
                state: FlowState::default(),
                input,
                next: 0,
                now: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                    .unwrap()
                    .into(),
                pending: Vec::new(),
                actions: Vec::new(),
                finished: None,
            }
        }

        fn apply(&mut self, event: Event) -> Vec<Action> {
            let mut next = self.next;
            let mut ids = || {
                next += 1;
                JobId::from_u128(next)
            };
            let deadline = std::time::Instant::now() + TRANSITION_EXPR_TIME;
            let actions = apply(
                &self.def,
                &mut self.state,
                &self.input,
                event,
                (self.now, deadline),
                &mut ids,
            );
            self.next = next;
            for action in &actions {
                match action {
                    Action::Enqueue(step) => self.pending.push(step.clone()),
                    Action::Cancel(job) => self.pending.retain(|s| s.job != *job),
                    Action::Finish { success, result } => {
                        assert!(self.finished.is_none(), "finished twice");
                        self.finished = Some((*success, result.clone()));
                    }
                    _ => {}
                }
            }
            self.actions.extend(actions.clone());
            actions
        }

        /// Runs steps until the flow ends; `step(module, args)` gives (success, result).
        fn run(
            &mut self,
            step: impl Fn(&str, &Map<String, Value>) -> (bool, Value),
            lifo: bool,
        ) -> (bool, Value) {
            self.apply(Event::Start);
            let mut guard = 0;
            while self.finished.is_none() {
                guard += 1;
                assert!(guard < 10_000, "no end");
                if self.pending.is_empty() {
                    // Only a sleep or a scheduled retry can be waiting: let time pass.
                    self.now += chrono::Duration::hours(7);
                    self.apply(Event::Wake);
                    continue;
                }
                let s = if lifo {
                    self.pending.pop().unwrap()
                } else {
                    self.pending.remove(0)
                };
                if let Some(at) = s.scheduled_for {
                    self.now = self.now.max(at);
                }
                let (success, result) = step(&s.module_id, &s.args);
                let done = StepDone {
                    job: s.job,
                    success,
                    canceled: false,
                    result,
                };
                self.apply(Event::StepDone(done.clone()));
                // A redelivered completion changes nothing.
                let before = self.state.clone();
                assert!(self.apply(Event::StepDone(done)).is_empty());
                assert_eq!(before, self.state);
            }
            self.finished.clone().unwrap()
        }

        fn enqueued(&self, module: &str) -> usize {
            self.actions
                .iter()
                .filter(|a| matches!(a, Action::Enqueue(s) if s.module_id == module))
                .count()
        }
    }

    fn raw(id: &str, inputs: Value) -> Value {
        json!({"id": id, "value": {"type": "rawscript", "language": "bash", "content": "", "input_transforms": inputs}})
    }

    fn js(expr: &str) -> Value {
        json!({"type": "javascript", "expr": expr})
    }

    fn err(message: &str) -> Value {
        json!({"error": {"name": "Error", "message": message}})
    }

    /// Steps that return their `x` argument (or fail when `fail` is true).
    fn echo(_: &str, args: &Map<String, Value>) -> (bool, Value) {
        if args.get("fail") == Some(&json!(true)) {
            (false, err("asked to fail"))
        } else {
            (true, args.get("x").cloned().unwrap_or(Value::Null))
        }
    }

    #[test]
    fn steps_see_flow_input_previous_result_and_results() {
        let mut sim = Sim::new(
            json!({"modules": [
                raw("a", json!({"x": js("flow_input.n + 1")})),
                raw("b", json!({"x": js("previous_result * 10")})),
                raw("c", json!({"x": js("[results.a, results.b, params.k]"), "k": {"type": "static", "value": "s"}})),
            ]}),
            json!({"n": 1}),
        );
        assert_eq!(sim.run(echo, false), (true, json!([2, 20, "s"])));
        let status = flow_status(&sim.def, &sim.state);
        assert_eq!(status["step"], json!(3));
        assert_eq!(status["modules"][2]["type"], json!("Success"));
        assert_eq!(status["modules"][0]["job"], json!(JobId::from_u128(1)));
    }

    #[test]
    fn loops_collect_results_in_order_whatever_the_completion_order() {
        for (parallel, lifo) in [(false, false), (true, false), (true, true)] {
            let mut sim = Sim::new(
                json!({"modules": [
                    raw("a", json!({"x": {"type": "static", "value": [1, 2, 3]}})),
                    {"id": "loop", "value": {"type": "forloopflow", "iterator": js("result"), "parallel": parallel,
                      "modules": [raw("double", json!({"x": js("flow_input.iter.value * 2 + flow_input.iter.index * 0")}))]}},
                ]}),
                json!({}),
            );
            assert_eq!(
                sim.run(echo, lifo),
                (true, json!([2, 4, 6])),
                "parallel {parallel}"
            );
            let status = flow_status(&sim.def, &sim.state);
            assert_eq!(
                status["modules"][1]["flow_jobs"].as_array().unwrap().len(),
                3
            );
            assert_eq!(status["modules"][1]["iterator"]["itered_len"], json!(3));
        }
    }

    #[test]
    fn parallelism_bounds_the_iterations_in_flight() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[1,2,3,4,5]"), "parallel": true, "parallelism": 2,
                  "modules": [raw("s", json!({"x": js("flow_input.iter.value")}))]}},
            ]}),
            json!({}),
        );
        sim.apply(Event::Start);
        assert_eq!(sim.pending.len(), 2);
        assert_eq!(sim.run(echo, false), (true, json!([1, 2, 3, 4, 5])));
    }

    #[test]
    fn an_empty_loop_gives_an_empty_array_and_a_non_array_fails() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[]"), "modules": [raw("s", json!({}))]}},
            ]}),
            json!({}),
        );
        assert_eq!(sim.run(echo, false), (true, json!([])));
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "loop", "value": {"type": "forloopflow", "iterator": js("42"), "modules": [raw("s", json!({}))]}},
            ]}),
            json!({}),
        );
        let (ok, result) = sim.run(echo, false);
        assert!(!ok);
        assert!(
            result["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expected an array"),
            "{result}"
        );
    }

    #[test]
    fn skip_failures_keeps_the_error_and_without_it_the_loop_fails() {
        let def = |skip: bool| {
            json!({"modules": [
                {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[1, 2, 3]"), "skip_failures": skip,
                  "modules": [raw("s", json!({"x": js("flow_input.iter.value"), "fail": js("flow_input.iter.value == 2")}))]}},
            ]})
        };
        let mut sim = Sim::new(def(true), json!({}));
        let (ok, result) = sim.run(echo, false);
        assert!(ok);
        assert_eq!(result[0], json!(1));
        assert_eq!(result[1]["error"]["message"], json!("asked to fail"));
        assert_eq!(result[2], json!(3));
        let mut sim = Sim::new(def(false), json!({}));
        let (ok, result) = sim.run(echo, false);
        assert!(!ok);
        assert_eq!(result["error"]["step_id"], json!("s"));
        assert_eq!(sim.enqueued("s"), 2, "the loop stops at the failure");
    }

    #[test]
    fn nested_branchall_reads_outer_results() {
        // Windmill's test_flow_result_by_id: [[42]].
        let mut sim = Sim::new(
            json!({"modules": [
                raw("a", json!({"x": {"type": "static", "value": 42}})),
                {"id": "outer", "value": {"type": "branchall", "branches": [{"modules": [
                    {"id": "inner", "value": {"type": "branchall", "branches": [{"modules": [
                        raw("d", json!({"x": js("results.a")})),
                    ]}]}},
                ]}]}},
            ]}),
            json!({}),
        );
        assert_eq!(sim.run(echo, false), (true, json!([[42]])));
    }

    #[test]
    fn nested_loops_see_the_innermost_iteration() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "outer", "value": {"type": "forloopflow", "iterator": js("[[1, 2], [3]]"), "parallel": true, "modules": [
                    {"id": "inner", "value": {"type": "forloopflow", "iterator": js("flow_input.iter.value"), "modules": [
                        raw("s", json!({"x": js("flow_input.iter.value * 10")})),
                    ]}},
                ]}},
            ]}),
            json!({}),
        );
        assert_eq!(sim.run(echo, true), (true, json!([[10, 20], [30]])));
    }

    #[test]
    fn stop_after_if_ends_the_flow_with_the_steps_result() {
        // Windmill's test_stop_after_if.
        let def = json!({"modules": [
            {"id": "a", "value": {"type": "rawscript", "language": "bash", "content": "",
              "input_transforms": {"x": js("flow_input.n")}}, "stop_after_if": {"expr": "result < 0"}},
            raw("b", json!({"x": js("`last step saw ${previous_result}`")})),
        ]});
        let mut sim = Sim::new(def.clone(), json!({"n": -123}));
        assert_eq!(sim.run(echo, false), (true, json!(-123)));
        assert_eq!(sim.enqueued("b"), 0);
        let mut sim = Sim::new(def, json!({"n": 123}));
        assert_eq!(sim.run(echo, false), (true, json!("last step saw 123")));
    }

    #[test]
    fn a_stop_in_a_branch_stops_the_flow_and_in_a_loop_breaks_it() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "all", "value": {"type": "branchall", "branches": [{"modules": [
                    {"id": "a", "value": {"type": "rawscript", "language": "bash", "content": "",
                      "input_transforms": {"x": js("flow_input.n")}}, "stop_after_if": {"expr": "result < 0"}},
                ]}]}},
                raw("after", json!({"x": {"type": "static", "value": "ran"}})),
            ]}),
            json!({"n": -123}),
        );
        assert_eq!(sim.run(echo, false), (true, json!([-123])));
        assert_eq!(sim.enqueued("after"), 0);

        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[1, 2, 3, 4]"), "modules": [
                    {"id": "s", "value": {"type": "rawscript", "language": "bash", "content": "",
                      "input_transforms": {"x": js("flow_input.iter.value")}}, "stop_after_if": {"expr": "result >= 2"}},
                ]}},
                raw("after", json!({"x": js("previous_result")})),
            ]}),
            json!({}),
        );
        assert_eq!(sim.run(echo, false), (true, json!([1, 2])));
        assert_eq!(sim.enqueued("s"), 2);
    }

    #[test]
    fn branchone_takes_the_first_true_branch_or_the_default() {
        let def = json!({"modules": [
            {"id": "pick", "value": {"type": "branchone", "branches": [
                {"expr": "flow_input.n > 10", "modules": [raw("big", json!({"x": {"type": "static", "value": "big"}}))]},
                {"expr": "flow_input.n > 5", "modules": [raw("mid", json!({"x": {"type": "static", "value": "mid"}}))]},
            ], "default": [raw("small", json!({"x": {"type": "static", "value": "small"}}))]}},
        ]});
        for (n, expected, branch) in [
            (20, "big", json!({"type": "branch", "branch": 0})),
            (7, "mid", json!({"type": "branch", "branch": 1})),
            (1, "small", json!({"type": "default"})),
        ] {
            let mut sim = Sim::new(def.clone(), json!({"n": n}));
            assert_eq!(sim.run(echo, false), (true, json!(expected)));
            assert_eq!(
                flow_status(&sim.def, &sim.state)["modules"][0]["branch_chosen"],
                branch
            );
        }
    }

    #[test]
    fn retries_are_counted_and_scheduled() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "a", "value": {"type": "rawscript", "language": "bash", "content": "", "input_transforms": {}},
                 "retry": {"constant": {"attempts": 2, "seconds": 5}}},
            ]}),
            json!({}),
        );
        let attempts = std::cell::Cell::new(0);
        let (ok, result) = sim.run(
            |_, _| {
                attempts.set(attempts.get() + 1);
                if attempts.get() < 3 {
                    (false, err("flaky"))
                } else {
                    (true, json!("finally"))
                }
            },
            false,
        );
        assert_eq!((ok, result), (true, json!("finally")));
        assert_eq!(sim.enqueued("a"), 3);
        let scheduled: Vec<_> = sim
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Enqueue(s) => Some((s.key.clone(), s.scheduled_for.is_some())),
                _ => None,
            })
            .collect();
        assert_eq!(
            scheduled,
            vec![
                ("a#1".into(), false),
                ("a#2".into(), true),
                ("a#3".into(), true)
            ]
        );
        let status = flow_status(&sim.def, &sim.state);
        assert_eq!(
            status["modules"][0]["failed_retries"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        // Attempts exhausted: the flow fails with the last error.
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "a", "value": {"type": "rawscript", "language": "bash", "content": ""},
                 "retry": {"constant": {"attempts": 1, "seconds": 0}}},
            ]}),
            json!({}),
        );
        let (ok, result) = sim.run(|_, _| (false, err("always")), false);
        assert!(!ok);
        assert_eq!(result["error"]["message"], json!("always"));
        assert_eq!(sim.enqueued("a"), 2);
    }

    #[test]
    fn exponential_delays_grow_and_are_capped() {
        let retry = Retry {
            exponential_attempts: 5,
            multiplier: 2,
            seconds: 3,
            ..Default::default()
        };
        let id = JobId::from_u128(1);
        let delays: Vec<_> = (1..=6).map(|a| retry_delay(&retry, a, id)).collect();
        assert_eq!(
            delays,
            vec![Some(6), Some(18), Some(54), Some(162), Some(486), None]
        );
        let huge = Retry {
            exponential_attempts: 1,
            multiplier: 1000,
            seconds: 1000,
            ..Default::default()
        };
        assert_eq!(retry_delay(&huge, 1, id), Some(MAX_RETRY_DELAY_S));
        let jittered = Retry {
            random_factor: 50,
            ..retry
        };
        let d = retry_delay(&jittered, 1, JobId::from_u128(u128::MAX)).unwrap();
        assert!((3..=9).contains(&d), "{d}");
    }

    #[test]
    fn constant_retries_come_first_then_exponential_ones_counting_them() {
        let retry = Retry {
            constant_attempts: 2,
            constant_seconds: 5,
            exponential_attempts: 2,
            multiplier: 2,
            seconds: 3,
            random_factor: 0,
        };
        let id = JobId::from_u128(7);
        let delays: Vec<_> = (1..=5).map(|a| retry_delay(&retry, a, id)).collect();
        // As Windmill: after the third failure 2 × 3³, after the fourth 2 × 3⁴, then none.
        assert_eq!(delays, vec![Some(5), Some(5), Some(54), Some(162), None]);
        let only_constant = Retry {
            exponential_attempts: 0,
            ..retry.clone()
        };
        assert_eq!(retry_delay(&only_constant, 3, id), None);
    }

    #[test]
    fn the_failure_module_sees_the_error_and_the_flow_fails_with_its_result() {
        let mut sim = Sim::new(
            json!({"modules": [
            raw("a", json!({"fail": {"type": "static", "value": true}})),
            raw("never", json!({})),
        ], "failure_module": raw("failure", json!({"x": js("({seen: error.message, step: error.step_id})")}))}),
            json!({}),
        );
        let (ok, result) = sim.run(echo, false);
        assert!(!ok);
        assert_eq!(result, json!({"seen": "asked to fail", "step": "a"}));
        assert_eq!(sim.enqueued("never"), 0);
        let status = flow_status(&sim.def, &sim.state);
        assert_eq!(status["failure_module"]["type"], json!("Success"));
        assert_eq!(status["modules"][0]["type"], json!("Failure"));
        assert_eq!(status["step"], json!(2));
    }

    #[test]
    fn skip_if_continue_on_error_and_identity() {
        let mut sim = Sim::new(
            json!({"modules": [
                raw("a", json!({"x": {"type": "static", "value": 1}})),
                {"id": "skipped", "value": {"type": "rawscript", "language": "bash", "content": ""}, "skip_if": {"expr": "previous_result == 1"}},
                {"id": "broken", "value": {"type": "rawscript", "language": "bash", "content": "",
                  "input_transforms": {"fail": {"type": "static", "value": true}}}, "continue_on_error": true},
                {"id": "same", "value": {"type": "identity"}},
                raw("last", json!({"x": js("[results.skipped, previous_result.error.message]")})),
            ]}),
            json!({}),
        );
        assert_eq!(sim.run(echo, false), (true, json!([1, "asked to fail"])));
        assert_eq!(sim.enqueued("skipped"), 0);
        let status = flow_status(&sim.def, &sim.state);
        assert_eq!(status["modules"][1]["type"], json!("Skipped"));
        assert_eq!(status["modules"][1]["skipped"], json!(true));
    }

    #[test]
    fn expression_failures_fail_the_step_naming_module_and_expression() {
        let mut sim = Sim::new(
            json!({"modules": [
                raw("a", json!({"x": js("flow_input.nothing.deeper")})),
            ]}),
            json!({}),
        );
        let (ok, result) = sim.run(echo, false);
        assert!(!ok);
        let message = result["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("module a") && message.contains("flow_input.nothing.deeper"),
            "{message}"
        );
        assert_eq!(result["error"]["name"], json!("ExpressionError"));
    }

    #[test]
    fn sleep_waits_and_early_return_answers_first() {
        let mut sim = Sim::new(
            json!({"modules": [
            {"id": "a", "value": {"type": "rawscript", "language": "bash", "content": "",
              "input_transforms": {"x": {"type": "static", "value": "early"}}}, "sleep": {"type": "static", "value": 30}},
            raw("b", json!({"x": {"type": "static", "value": "late"}})),
        ], "early_return": "a"}),
            json!({}),
        );
        sim.apply(Event::Start);
        let a = sim.pending.remove(0);
        let actions = sim.apply(Event::StepDone(StepDone {
            job: a.job,
            success: true,
            canceled: false,
            result: json!("early"),
        }));
        assert!(
            actions.contains(&Action::EarlyReturn(json!("early"))),
            "{actions:?}"
        );
        assert!(actions.iter().any(|a| matches!(a, Action::WakeAt(_))));
        assert!(sim.pending.is_empty(), "b waits for the sleep");
        assert!(
            !sim.apply(Event::Wake)
                .iter()
                .any(|a| matches!(a, Action::Enqueue(_))),
            "too early"
        );
        sim.now += chrono::Duration::seconds(31);
        assert!(sim
            .apply(Event::Wake)
            .iter()
            .any(|a| matches!(a, Action::Enqueue(s) if s.module_id == "b")));
        let b = sim.pending.remove(0);
        sim.apply(Event::StepDone(StepDone {
            job: b.job,
            success: true,
            canceled: false,
            result: json!("late"),
        }));
        assert_eq!(sim.finished, Some((true, json!("late"))));
        assert!(
            sim.apply(Event::Wake).is_empty(),
            "an ended flow ignores events"
        );
    }

    #[test]
    fn a_failing_parallel_branch_cancels_its_siblings() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "all", "value": {"type": "branchall", "branches": [
                    {"modules": [raw("slow", json!({}))]},
                    {"modules": [raw("bad", json!({"fail": {"type": "static", "value": true}}))], "skip_failure": false},
                ]}},
            ]}),
            json!({}),
        );
        sim.apply(Event::Start);
        assert_eq!(sim.pending.len(), 2);
        let bad = sim.pending.pop().unwrap();
        let actions = sim.apply(Event::StepDone(StepDone {
            job: bad.job,
            success: false,
            canceled: false,
            result: err("no"),
        }));
        let slow = sim.pending.first().map(|s| s.job);
        assert!(slow.is_none(), "the sibling was cancelled");
        assert!(actions.iter().any(|a| matches!(a, Action::Cancel(_))));
        assert_eq!(sim.finished.as_ref().map(|f| f.0), Some(false));
    }

    #[test]
    fn budgets_bound_what_one_flow_starts() {
        // 200 × 300 nested iterations exceed the flow's budget: the loop fails, nothing more starts.
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "outer", "value": {"type": "forloopflow", "iterator": js("[...Array(200).keys()]"), "parallel": true, "modules": [
                    {"id": "inner", "value": {"type": "forloopflow", "iterator": js("[...Array(300).keys()]"), "parallel": true,
                      "modules": [{"id": "same", "value": {"type": "identity"}}]}},
                ]}},
            ]}),
            json!({}),
        );
        let (ok, result) = sim.run(echo, false);
        assert!(
            !ok,
            "{}",
            &result.to_string()[..200.min(result.to_string().len())]
        );
        assert_eq!(result["error"]["name"], json!("FlowTooLarge"), "{result}");
        assert!(sim.state.spent.units <= MAX_UNITS);
        // One step's arguments are bounded too.
        let mut sim = Sim::new(
            json!({"modules": [raw("big", json!({"x": js("'x'.repeat(9 * 1024 * 1024)")}))]}),
            json!({}),
        );
        let (ok, result) = sim.run(echo, false);
        assert!(!ok);
        assert_eq!(result["error"]["name"], json!("ArgumentsTooLarge"));
    }

    #[test]
    fn a_huge_sleep_is_capped_not_a_panic() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "a", "value": {"type": "identity"}, "sleep": js("1e15")},
                {"id": "b", "value": {"type": "identity"}},
            ]}),
            json!({}),
        );
        let actions = sim.apply(Event::Start);
        let wake = actions
            .iter()
            .find_map(|a| match a {
                Action::WakeAt(at) => Some(*at),
                _ => None,
            })
            .unwrap();
        assert_eq!((wake - sim.now).num_seconds(), MAX_SLEEP_S as i64);
    }

    #[test]
    fn sequential_branchall_skips_failures_and_a_skipped_stop_marks_the_flow() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "all", "value": {"type": "branchall", "parallel": false, "branches": [
                    {"modules": [raw("bad", json!({"fail": {"type": "static", "value": true}}))]},
                    {"modules": [raw("good", json!({"x": {"type": "static", "value": 2}}))]},
                ]}},
                {"id": "stop", "value": {"type": "identity"}, "stop_after_if": {"expr": "true", "skip_if_stopped": true}},
                raw("never", json!({})),
            ]}),
            json!({}),
        );
        sim.apply(Event::Start);
        assert_eq!(sim.pending.len(), 1, "one branch at a time");
        let (ok, result) = sim.run(echo, false);
        assert!(ok);
        assert_eq!(
            result[0]["error"]["message"],
            json!("asked to fail"),
            "skip_failure defaults to true"
        );
        assert_eq!(result[1], json!(2));
        assert_eq!(sim.enqueued("never"), 0);
        assert_eq!(flow_status(&sim.def, &sim.state)["skipped"], json!(true));
    }

    #[test]
    fn a_timeout_may_be_computed() {
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "a", "value": {"type": "rawscript", "language": "bash", "content": ""},
                 "timeout": js("flow_input.limit * 2")},
            ]}),
            json!({"limit": 21}),
        );
        sim.apply(Event::Start);
        assert_eq!(sim.pending[0].timeout_s, Some(42));
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "a", "value": {"type": "rawscript", "language": "bash", "content": ""},
                 "timeout": js("'soon'")},
            ]}),
            json!({}),
        );
        let (ok, result) = sim.run(echo, false);
        assert!(!ok);
        assert!(
            result["error"]["message"]
                .as_str()
                .unwrap()
                .contains("module a: timeout \"'soon'\""),
            "{result}"
        );
    }

    #[test]
    fn deep_arguments_and_too_many_results_fail_the_step() {
        let mut sim = Sim::new(
            json!({"modules": [
                raw("deep", json!({"x": js("JSON.parse('['.repeat(120) + ']'.repeat(120))")})),
            ]}),
            json!({}),
        );
        let (ok, result) = sim.run(echo, false);
        assert!(!ok);
        assert_eq!(
            result["error"]["name"],
            json!("ArgumentsTooDeep"),
            "{result}"
        );
        let mut sim = Sim::new(
            json!({"modules": [
                {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[...Array(10).keys()]"), "skip_failures": false,
                  "modules": [raw("big", json!({}))]}},
            ]}),
            json!({}),
        );
        let huge = json!("x".repeat(8 * 1024 * 1024));
        let (ok, result) = sim.run(|_, _| (true, huge.clone()), false);
        assert!(!ok);
        assert_eq!(result["error"]["name"], json!("FlowTooLarge"));
    }

    #[test]
    fn an_empty_flow_returns_its_input() {
        let mut sim = Sim::new(json!({"modules": []}), json!({"a": 1}));
        assert_eq!(sim.run(echo, false), (true, json!({"a": 1})));
    }
}
