//! Publishes held messages when they come due, in every API process: jobs scheduled for later
//! and sleeping flows' wake-ups wait in their rows (`store/scheduled.rs`), not ack-pending in
//! the work queue. Replicas claim due rows with `SKIP LOCKED`, so each message is published by
//! one of them; it goes out as it was stored, under its usual `Nats-Msg-Id` (the job id, or the
//! wake-up's), so a replica dying between the publish and its commit leaves a copy JetStream
//! drops. Each message stands alone: one JetStream refuses is held again a little later, and the
//! others go on.

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::domain::{JobId, Tag};
use crate::queue::events::{JobDone, JobEvent, JobEventKind};
use crate::queue::Bus;
use crate::store::scheduled::{Due, Settled, Unpublished};
use crate::store::{self, Pool};

/// Messages claimed and published per transaction.
const BATCH: i64 = 256;
/// The pause after a look that left due rows unclaimed: another transaction holds them (another
/// replica's claim, a flow's transition), which will be done with them shortly.
const LOCKED_PAUSE: Duration = Duration::from_millis(250);
/// How long a message JetStream refused is held again, doubled after each further refusal…
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// …up to this: under JetStream's 2-minute deduplication window, so that a message whose PubAck
/// was lost (stored after all) is recognised as a copy when it is sent again.
const MAX_RETRY: Duration = Duration::from_secs(60);

pub struct Scheduler {
    pub pool: Pool,
    pub bus: Bus,
    /// `SCHEDULER_INTERVAL`: the longest sleep between two looks at the held rows.
    pub interval: Duration,
    /// `SUBMIT_TIMEOUT`: the longest one look may hold its claimed rows (publishing them and
    /// committing), so that cancels and workers never wait long on them, even while NATS is
    /// unreachable.
    pub deadline: Duration,
}

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) {
        // At least a little: a zero interval must not spin on an idle database, and a zero
        // deadline would never let a look finish.
        let interval = self.interval.max(Duration::from_millis(100));
        let deadline = self.deadline.max(Duration::from_secs(1));
        loop {
            // Stopping in the middle of a look leaves its rows held: the next claim (here or
            // in another replica) publishes them again under the same message ids.
            let looked = tokio::select! {
                _ = shutdown.cancelled() => break,
                looked = tokio::time::timeout(deadline, self.dispatch_due()) => looked,
            };
            let pause = match looked {
                // More may be due already.
                Ok(Ok(claimed)) if claimed == BATCH as usize => Duration::ZERO,
                Ok(Ok(_)) => self.pause_until_next_due(interval).await,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "scheduled messages not published; retrying");
                    interval
                }
                Err(_) => {
                    tracing::warn!(
                        deadline_secs = deadline.as_secs_f32(),
                        "scheduled messages not published within SUBMIT_TIMEOUT; they stay \
                         held, retrying"
                    );
                    interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Until the earliest held message is due, at most `interval`.
    async fn pause_until_next_due(&self, interval: Duration) -> Duration {
        match store::scheduled::next_due(&self.pool).await {
            // Due, yet not claimed: locked by another transaction for now.
            Ok(Some(Duration::ZERO)) => LOCKED_PAUSE.min(interval),
            Ok(Some(next)) => next.min(interval),
            Ok(None) => interval,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the next scheduled time");
                interval
            }
        }
    }

    /// Publishes one batch of due messages; returns how many rows it claimed.
    async fn dispatch_due(&self) -> anyhow::Result<usize> {
        let mut conn = self.pool.get().await?;
        let mut batch = store::scheduled::claim_due(&mut conn, BATCH).await?;
        let claimed = batch.due.len();
        if claimed == 0 {
            return Ok(0);
        }
        let mut settled = Settled::default();
        let mut sent: Vec<(JobId, i32)> = Vec::new();
        let mut messages = Vec::new();
        for due in &mut batch.due {
            if !due.live {
                settled.cleared.push(due.id);
                continue;
            }
            match message_of(due) {
                Ok((tag, payload)) => {
                    sent.push((due.id, due.failures));
                    messages.push((tag, due.msg_id.clone(), payload));
                }
                Err(why) => {
                    tracing::error!(job = %due.id, why,
                        "a held message can never be published: its job fails");
                    settled.unpublishable.push((due.id, why));
                }
            }
        }
        let answers = self.bus.publish_stored_jobs(messages).await;
        for ((id, failures), answer) in sent.into_iter().zip(answers) {
            match answer {
                // A duplicate is a copy of one published before, whose rows were not cleared.
                Ok(_) => settled.cleared.push(id),
                Err(e) => {
                    let delay = retry_delay(failures);
                    tracing::warn!(job = %id, error = %e, failures = failures + 1,
                        retry_in_secs = delay.as_secs(), "scheduled message not published; held again");
                    settled.refused.push((id, delay));
                }
            }
        }
        let ended = batch.settle(&settled).await?;
        drop(conn);
        tracing::debug!(
            claimed,
            cleared = settled.cleared.len(),
            refused = settled.refused.len(),
            failed = ended.len(),
            "scheduled messages settled"
        );
        for job in ended {
            let labels = crate::metrics::JobLabels::of_row(
                &job.tag,
                job.language.as_deref(),
                &job.job_kind,
                job.parent_job.is_some(),
            );
            crate::metrics::job_ended(&labels, crate::metrics::JobEnd::Failure, None);
            self.announce(job).await;
        }
        Ok(claimed)
    }

    /// Tells the waiters of a job that ended here, and publishes its terminal event: no worker
    /// will.
    async fn announce(&self, job: Unpublished) {
        let done = JobDone::new(job.id, false, false, &job.result);
        if let Err(e) = self.bus.publish_done(&done).await {
            tracing::warn!(job = %job.id, error = %e, "done reply not published");
        }
        let event = JobEvent {
            id: job.id,
            workspace: job.workspace_id,
            kind: JobEventKind::Failed,
            job_kind: job.job_kind,
            path: job.script_path,
            hash: job.script_hash,
            flow_version: job.flow_version,
            parent_job: job.parent_job,
            root_job: job.root_job,
            created_by: job.created_by,
            at: job.completed_at,
            success: Some(false),
            duration_ms: None,
            result: None,
            result_truncated: None,
            error: job.result.get("error").cloned(),
        };
        self.bus
            .publish_event_unconfirmed(&event.with_result(&job.result))
            .await;
    }
}

/// The subject's tag and the bytes to publish, as stored: the tag from the job's column (a
/// newer API may have written an envelope this binary cannot read, which is the worker's to
/// read), or why the message can never be published.
fn message_of(due: &mut Due) -> Result<(Tag, Bytes), String> {
    let tag = Tag::parse(&due.tag).map_err(|e| format!("{e}, which names no queue"))?;
    let message = due
        .message
        .take()
        .ok_or("its row holds no message to publish")?;
    Ok((tag, Bytes::from(message)))
}

/// How long a message is held again after its `failures + 1`-th refusal.
fn retry_delay(failures: i32) -> Duration {
    let doublings = failures.clamp(0, 16) as u32;
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_messages_wait_longer_each_time_up_to_a_minute() {
        let delays: Vec<u64> = (0..9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(i32::MAX), MAX_RETRY);
        assert_eq!(retry_delay(-1), FIRST_RETRY);
        assert!(
            MAX_RETRY < Duration::from_secs(120),
            "within the dedup window"
        );
    }
}
