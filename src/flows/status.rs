//! The `flow_status` a flow job shows (SPEC §7, Windmill's shape): the current top-level step,
//! one entry per top-level module with its job(s) and status, and the failure module's entry.
//! Derived from the machine's state after every transition.

use serde_json::{json, Map, Value};

use super::model::FlowDef;
use super::state::{FlowState, Lane, Node, Outcome, Run};

pub fn flow_status(def: &FlowDef, state: &FlowState) -> Value {
    let modules: Vec<Value> = def
        .modules
        .iter()
        .enumerate()
        .map(|(i, m)| module_status(&m.id, state.root.nodes.get(i)))
        .collect();
    let step = if state.failure.is_some() {
        def.modules.len()
    } else {
        state.root.pos
    };
    let mut status = json!({"step": step, "modules": modules});
    let failure = def.failure_module.as_ref().map_or_else(
        || json!({"id": "failure", "type": "WaitingForPriorSteps"}),
        |m| {
            let node = state.failure.as_ref().and_then(|f| f.seq.nodes.first());
            module_status(&m.id, node)
        },
    );
    status["failure_module"] = failure;
    if state.ended.as_ref().is_some_and(|e| e.skipped) {
        status["skipped"] = json!(true);
    }
    status
}

fn module_status(id: &str, node: Option<&Node>) -> Value {
    let Some(node) = node else {
        return json!({"id": id, "type": "WaitingForPriorSteps"});
    };
    let kind = match (&node.run, &node.end) {
        (Run::Pending, _) => "WaitingForPriorSteps",
        (Run::Skipped, _) => "Skipped",
        (_, None) => "InProgress",
        (_, Some(end)) if end.outcome == Outcome::Success => "Success",
        (_, Some(_)) => "Failure",
    };
    let mut entry = Map::new();
    entry.insert("id".into(), json!(id));
    entry.insert("type".into(), json!(kind));
    entry.insert("job".into(), json!(node.last_job()));
    match &node.run {
        Run::Job(run) if !run.failed.is_empty() => {
            entry.insert("failed_retries".into(), json!(run.failed));
        }
        Run::Loop(run) => {
            lanes(&mut entry, &run.lanes);
            entry.insert(
                "iterator".into(),
                json!({"index": run.lanes.len().saturating_sub(1), "itered_len": run.items.len()}),
            );
        }
        Run::BranchAll(run) => {
            lanes(&mut entry, &run.lanes);
            entry.insert(
                "branchall".into(),
                json!({"branch": run.lanes.len().saturating_sub(1), "len": run.lanes.len()}),
            );
        }
        Run::BranchOne(run) => {
            let chosen = match run.chosen {
                Some(branch) => json!({"type": "branch", "branch": branch}),
                None => json!({"type": "default"}),
            };
            entry.insert("branch_chosen".into(), chosen);
        }
        _ => {}
    }
    entry.insert("skipped".into(), json!(matches!(node.run, Run::Skipped)));
    Value::Object(entry)
}

/// `flow_jobs` (one per iteration or branch: the job of its last step) and their success.
fn lanes(entry: &mut Map<String, Value>, lanes: &[Lane]) {
    let jobs: Vec<Value> = lanes.iter().map(|l| json!(l.seq.last_job())).collect();
    let success: Vec<Value> = lanes
        .iter()
        .map(|l| json!(l.end.as_ref().map(|e| e.outcome == Outcome::Success)))
        .collect();
    entry.insert("flow_jobs".into(), Value::Array(jobs));
    entry.insert("flow_jobs_success".into(), Value::Array(success));
}
