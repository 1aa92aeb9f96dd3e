//! Every subject and stream name Millrace uses (DESIGN.md, "NATS layout").

use crate::domain::{JobId, Tag};

pub const JOBS_STREAM: &str = "MILLRACE_JOBS";
pub const EVENTS_STREAM: &str = "MILLRACE_EVENTS";

/// Every tag's jobs.
pub const JOBS_ALL: &str = "millrace.jobs.>";

/// Where jobs for workers of `tag` are published.
pub fn jobs(tag: &Tag) -> String {
    format!("millrace.jobs.{tag}")
}

/// The durable consumer shared by every worker of `tag`.
pub fn worker_consumer(tag: &Tag) -> String {
    format!("workers-{tag}")
}

/// Live, per-job subjects the sync and SSE endpoints listen on.
#[derive(Debug, Clone, Copy)]
pub enum JobReply {
    Started,
    Log,
    Stream,
    /// A flow's `flow_status` after a transition.
    Progress,
    /// A flow's `early_return` result, before the flow ends.
    EarlyReturn,
    Done,
}

pub fn job_reply(id: JobId, reply: JobReply) -> String {
    let suffix = match reply {
        JobReply::Started => "started",
        JobReply::Log => "log",
        JobReply::Stream => "stream",
        JobReply::Progress => "progress",
        JobReply::EarlyReturn => "early_return",
        JobReply::Done => "done",
    };
    format!("millrace.job.{id}.{suffix}")
}

/// Every live subject of one job.
pub fn job_replies(id: JobId) -> String {
    format!("millrace.job.{id}.*")
}

/// `millrace.events.<ws>.job.<kind>`.
pub fn job_event(workspace: &str, kind: &str) -> String {
    format!("millrace.events.{workspace}.job.{kind}")
}

/// `millrace.events.<ws>.token.<kind>`.
pub fn token_event(workspace: &str, kind: &str) -> String {
    format!("millrace.events.{workspace}.token.{kind}")
}

pub const CANCEL_ALL: &str = "millrace.control.cancel.*";

pub fn cancel(id: JobId) -> String {
    format!("millrace.control.cancel.{id}")
}

pub const INVALIDATE: &str = "millrace.control.invalidate";
