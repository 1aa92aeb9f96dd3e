//! A running flow's state, as the machine keeps it in the flow job's row (`flow_state`). It
//! mirrors the definition: a sequence of nodes per list of modules, created lazily as the flow
//! gets to them, each node ending with an [`End`]. Results of ended nodes live here, so the next
//! transition can evaluate expressions without reading other rows.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::JobId;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    pub root: Seq,
    /// The failure module's run, once the flow failed and the definition has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureRun>,
    /// The `early_return` module's result, once it ended (what a sync caller is answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_result: Option<Value>,
    /// Set when the flow has ended; later events change nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<End>,
    #[serde(default)]
    pub spent: Spent,
}

/// What a flow has started so far: step jobs plus loop iterations and branches, and the bytes
/// of its steps' arguments and results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub units: u64,
    pub arg_bytes: u64,
    #[serde(default)]
    pub result_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRun {
    pub seq: Seq,
    /// The failed step's result (`{"error": …}`), the failure module's `previous_result`.
    pub failed: Value,
}

/// The run of one list of modules: `nodes[i]` exists once the sequence reached module `i`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Seq {
    pub nodes: Vec<Node>,
    pub pos: usize,
    /// A module's `sleep` before the next one starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_until: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub run: Run,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<End>,
}

impl Node {
    pub fn pending() -> Self {
        Self {
            run: Run::Pending,
            end: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Run {
    Pending,
    /// `skip_if` held: the node passed its input through.
    Skipped,
    /// Ended without a job: an identity, or an expression that failed before anything ran.
    Immediate,
    Job(JobRun),
    Loop(LoopRun),
    BranchOne(BranchOneRun),
    BranchAll(BranchAllRun),
}

/// A step job and the attempts before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    pub job: JobId,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<JobId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopRun {
    pub items: Vec<Value>,
    /// Started iterations, in order.
    pub lanes: Vec<Lane>,
    /// How many iterations may run at once.
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchOneRun {
    /// `None`: the default branch.
    pub chosen: Option<usize>,
    pub body: Seq,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchAllRun {
    /// Started branches, in order.
    pub lanes: Vec<Lane>,
    pub limit: usize,
}

/// One loop iteration or one branch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lane {
    pub seq: Seq,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<End>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Failed, but `continue_on_error` (or a skipped failure) lets the flow go on.
    Continued,
}

/// How a node, a sequence or the flow ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub outcome: Outcome,
    pub result: Value,
    /// A `stop_after_if` held: enclosing sequences end here too (a loop only breaks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// The stop's `skip_if_stopped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl End {
    pub fn success(result: Value) -> Self {
        Self {
            outcome: Outcome::Success,
            result,
            stopped: false,
            skipped: false,
        }
    }

    pub fn failure(result: Value) -> Self {
        Self {
            outcome: Outcome::Failure,
            ..Self::success(result)
        }
    }

    pub fn failed(&self) -> bool {
        self.outcome == Outcome::Failure
    }
}

impl Seq {
    /// Every step job of this sequence that has not ended, nested ones included.
    pub fn running_jobs(&self, out: &mut Vec<JobId>) {
        for node in &self.nodes {
            if node.end.is_some() {
                continue;
            }
            match &node.run {
                Run::Job(run) => out.push(run.job),
                Run::Loop(LoopRun { lanes, .. }) | Run::BranchAll(BranchAllRun { lanes, .. }) => {
                    for lane in lanes.iter().filter(|l| l.end.is_none()) {
                        lane.seq.running_jobs(out);
                    }
                }
                Run::BranchOne(run) => run.body.running_jobs(out),
                Run::Pending | Run::Skipped | Run::Immediate => {}
            }
        }
    }

    /// The job of the last step that ran in this sequence (what a loop lists per iteration).
    pub fn last_job(&self) -> Option<JobId> {
        self.nodes.iter().rev().find_map(Node::last_job)
    }
}

impl Node {
    pub fn last_job(&self) -> Option<JobId> {
        match &self.run {
            Run::Job(run) => Some(run.job),
            Run::Loop(LoopRun { lanes, .. }) | Run::BranchAll(BranchAllRun { lanes, .. }) => {
                lanes.iter().rev().find_map(|l| l.seq.last_job())
            }
            Run::BranchOne(run) => run.body.last_job(),
            Run::Pending | Run::Skipped | Run::Immediate => None,
        }
    }
}
