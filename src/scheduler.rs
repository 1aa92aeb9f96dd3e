//! Publishes held messages when they come due, in every API process: jobs scheduled for later
//! and sleeping flows' wake-ups wait in their rows (`store/scheduled.rs`), not ack-pending in
//! the work queue. Replicas claim due rows with `SKIP LOCKED`, so each message is published by
//! one of them; it goes out under its usual `Nats-Msg-Id` (the job id, or the wake-up's), so a
//! replica dying between the publish and its commit leaves a copy JetStream drops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Tag;
use crate::queue::envelope::JobEnvelope;
use crate::queue::Bus;
use crate::store::{self, Pool};

/// Messages claimed and published per transaction.
const BATCH: i64 = 256;
/// The shortest pause after a look that left nothing due but rows another transaction holds.
const MIN_PAUSE: Duration = Duration::from_millis(20);

pub struct Scheduler {
    pub pool: Pool,
    pub bus: Bus,
    /// `SCHEDULER_INTERVAL`: the longest sleep between two looks at the held rows.
    pub interval: Duration,
}

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) {
        // At least a little: a zero interval must not spin on an idle database.
        let interval = self.interval.max(Duration::from_millis(100));
        loop {
            let pause = match self.dispatch_due().await {
                // More may be due already.
                Ok(claimed) if claimed == BATCH as usize => Duration::ZERO,
                // Whatever is due and was not claimed is locked (by a flow's transition, say):
                // look again a little later, not at once.
                Ok(_) => match store::scheduled::next_due(&self.pool).await {
                    Ok(next) => next.map_or(interval, |next| next.clamp(MIN_PAUSE, interval)),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the next scheduled time");
                        interval
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "scheduled jobs not published; retrying");
                    interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes one batch of due messages; returns how many rows it claimed.
    async fn dispatch_due(&self) -> anyhow::Result<usize> {
        let mut conn = self.pool.get().await?;
        let batch = store::scheduled::claim_due(&mut conn, BATCH).await?;
        let claimed = batch.due.len();
        if claimed == 0 {
            return Ok(0);
        }
        let messages: Vec<(Tag, JobEnvelope, String)> = batch
            .due
            .iter()
            .filter(|due| due.live)
            .filter_map(|due| {
                let envelope: JobEnvelope = serde_json::from_value(due.envelope.clone())
                    .map_err(|e| {
                        tracing::error!(job = %due.id, error = %e,
                            "dropping a held message that is not a job envelope");
                    })
                    .ok()?;
                let tag = Tag::parse(&envelope.tag).unwrap_or_else(|_| Tag::default_tag());
                Some((tag, envelope, due.msg_id.clone()))
            })
            .collect();
        self.bus.publish_jobs_as(&messages).await?;
        batch.dispatched().await?;
        tracing::debug!(
            claimed,
            published = messages.len(),
            "published scheduled messages"
        );
        Ok(claimed)
    }
}
