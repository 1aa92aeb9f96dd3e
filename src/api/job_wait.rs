//! Waiting for a job on its live NATS subjects, with the job store as the fallback whenever
//! live messages may have been missed (a reconnect, an oversized result) — never polling the
//! database on the happy path.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;

use super::error::ApiResult;
use super::AppState;
use crate::domain::{JobId, WorkspaceId};
use crate::queue::bus::{JobReplies, JobUpdate};
use crate::store::jobs::{self, JobRecord};

/// A safety net in case a `done` message is lost without any reconnect.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(10);

/// What a waiter sees.
#[derive(Debug)]
pub enum Seen {
    Started,
    Log(String),
    Stream(String),
    /// A flow's `flow_status` after a step.
    Progress(Value),
    /// A flow's `early_return` result (the flow goes on).
    EarlyReturn(Value),
    Completed(Completed),
    /// Nothing happened for this long (SSE sends a ping).
    Quiet,
}

#[derive(Debug, Clone)]
pub struct Completed {
    pub success: bool,
    pub result: Value,
}

/// The job's completion from the store, if it has completed.
pub async fn completed_in_store(
    state: &AppState,
    ws: &WorkspaceId,
    id: JobId,
) -> ApiResult<Option<(Completed, JobRecord)>> {
    let job = jobs::get(state.pool(), ws, id).await?;
    Ok(job.filter(|j| j.status.is_completed()).map(|job| {
        let completed = Completed {
            success: job.status.success().unwrap_or(false),
            result: job.result.clone().unwrap_or(Value::Null),
        };
        (completed, job)
    }))
}

/// Follows one job; created before the job is published.
pub struct JobWatch<S> {
    updates: Pin<Box<S>>,
    reconnected: tokio::sync::watch::Receiver<u64>,
    ws: WorkspaceId,
    id: JobId,
    /// Also look for a flow's early result in the store.
    early: bool,
}

impl<S: Stream<Item = JobUpdate>> JobWatch<S> {
    pub fn new(ws: &WorkspaceId, id: JobId, replies: JobReplies<S>) -> Self {
        Self {
            updates: Box::pin(replies.updates),
            reconnected: replies.reconnected,
            ws: ws.clone(),
            id,
            early: false,
        }
    }

    /// Waits for a flow's `early_return` result too (which the store fallback must then find).
    pub fn with_early_return(mut self) -> Self {
        self.early = true;
        self
    }

    /// What the store says, when live messages may have been missed.
    async fn seen_in_store(&self, state: &AppState) -> ApiResult<Option<Seen>> {
        if let Some((completed, _)) = completed_in_store(state, &self.ws, self.id).await? {
            return Ok(Some(Seen::Completed(completed)));
        }
        if self.early {
            if let Some(result) = jobs::early_result(state.pool(), &self.ws, self.id).await? {
                return Ok(Some(Seen::EarlyReturn(result)));
            }
        }
        Ok(None)
    }

    /// The next thing that happens, or `Quiet` after `quiet` of silence.
    pub async fn next(&mut self, state: &AppState, quiet: Duration) -> ApiResult<Seen> {
        let deadline = tokio::time::Instant::now() + quiet;
        let mut check = tokio::time::interval(STORE_CHECK_EVERY);
        check.tick().await;
        loop {
            tokio::select! {
                update = self.updates.next() => match update {
                    Some(JobUpdate::Started) => return Ok(Seen::Started),
                    Some(JobUpdate::Log(text)) => return Ok(Seen::Log(text)),
                    Some(JobUpdate::Stream(text)) => return Ok(Seen::Stream(text)),
                    Some(JobUpdate::Progress(status)) => return Ok(Seen::Progress(status)),
                    Some(JobUpdate::EarlyReturn(result)) => return Ok(Seen::EarlyReturn(result)),
                    Some(JobUpdate::Done(done)) => {
                        if let Some(result) = done.result {
                            return Ok(Seen::Completed(Completed { success: done.success, result }));
                        }
                        if let Some(seen) = self.seen_in_store(state).await? {
                            return Ok(seen);
                        }
                    }
                    // The subscription ended (connection closed): rely on the store from now on.
                    None => {
                        if let Some(seen) = self.seen_in_store(state).await? {
                            return Ok(seen);
                        }
                        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_secs(1))).await;
                        if tokio::time::Instant::now() >= deadline {
                            return Ok(Seen::Quiet);
                        }
                    }
                },
                changed = self.reconnected.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    if let Some(seen) = self.seen_in_store(state).await? {
                        return Ok(seen);
                    }
                }
                _ = check.tick() => {
                    if let Some(seen) = self.seen_in_store(state).await? {
                        return Ok(seen);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(Seen::Quiet),
            }
        }
    }
}
