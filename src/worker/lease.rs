//! A running attempt's lease on its job. The attempt renews it in PostgreSQL a few times per
//! lease, and each renewal brings back the job's cancel flag (so a cancel whose broadcast was
//! lost still stops the job). While the job's process runs, the attempt lets the job go —
//! kills its process and records nothing more — when another attempt took the job over, or
//! when its lease could pass unrenewed (the database is unreachable): another delivery may
//! then take the job over, and two runs of one job must never overlap.
//!
//! Once the process has ended there is nothing left to stop, and the end is worth keeping: the
//! lease is then renewed for as long as the attempt tries to record the end, however long the
//! database is away, so that no other delivery takes the job over meanwhile. The end's write
//! is fenced by the attempt's number; it fails if another attempt took the job over after all.
//! Renewals stop as soon as the end is recorded.
//!
//! The timing rule: a lease runs until the database's `now()` at the renewal plus
//! `JOB_LEASE_TIMEOUT`, and that `now()` is read after the worker sent the renewal. So, counted
//! on the worker's monotonic clock from when it sent its last successful renewal, the lease
//! lasts at least `JOB_LEASE_TIMEOUT`; the worker stops the job one renewal interval before
//! that, which leaves the interval to kill the process and absorbs a small step of the
//! database's clock. Takeovers compare the lease with the same database's `now()`, so the
//! workers' own clocks never matter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::context::WorkerContext;
use crate::domain::JobId;
use crate::queue::control::CancelJob;
use crate::store::jobs::{self, Lease};

/// The lease of one attempt, renewed until its end is recorded or it is dropped.
pub struct Held {
    task: JoinHandle<()>,
    lost: CancellationToken,
    process_ended: CancellationToken,
    recorded: Arc<AtomicBool>,
}

impl Held {
    /// Renews the lease of `attempt` on job `id`, taken by a statement sent at `taken`.
    /// `stop` kills the job's process: it is cancelled when the job is cancelled or the lease
    /// is lost while the process runs.
    pub fn keep(
        ctx: Arc<WorkerContext>,
        id: JobId,
        attempt: i32,
        taken: Instant,
        stop: CancellationToken,
    ) -> Self {
        let lost = CancellationToken::new();
        let process_ended = CancellationToken::new();
        let recorded = Arc::new(AtomicBool::new(false));
        let renewal = Renewal {
            ctx,
            id,
            attempt,
            stop,
            lost: lost.clone(),
            process_ended: process_ended.clone(),
            recorded: recorded.clone(),
        };
        Self {
            task: tokio::spawn(renewal.run(taken)),
            lost,
            process_ended,
            recorded,
        }
    }

    /// Whether the attempt let its job go while its process ran: what the process did then
    /// must not be recorded.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The job's process is over (or never started): from now on the lease is renewed without
    /// a deadline, until the end is recorded.
    pub fn process_ended(&self) {
        self.process_ended.cancel();
    }

    /// Set once this attempt's end is recorded (by whoever records it): renewals stop.
    pub fn recorded(&self) -> &AtomicBool {
        &self.recorded
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the renewal task works with.
struct Renewal {
    ctx: Arc<WorkerContext>,
    id: JobId,
    attempt: i32,
    stop: CancellationToken,
    lost: CancellationToken,
    process_ended: CancellationToken,
    recorded: Arc<AtomicBool>,
}

impl Renewal {
    async fn run(self, taken: Instant) {
        let (ctx, id, attempt) = (&self.ctx, self.id, self.attempt);
        let lease = ctx.settings.lease_timeout;
        let every = ctx.settings.lease_renewal();
        // `every` is at most a third of the lease, so this leaves at least two renewals.
        let mut stop_at = taken + lease.saturating_sub(every);
        let mut tick = tokio::time::interval_at(taken + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.deadline(stop_at) => break "its lease could not be renewed in time",
            }
            if self.recorded.load(Ordering::Relaxed) {
                return;
            }
            let sent = Instant::now();
            let renewed = tokio::select! {
                renewed = jobs::renew_lease(&ctx.pool, id, attempt, lease) => renewed,
                _ = self.deadline(stop_at) => break "its lease could not be renewed in time",
            };
            match renewed {
                Ok(Lease::Held(cancel)) => {
                    stop_at = sent + lease.saturating_sub(every);
                    let running = !self.process_ended.is_cancelled() && !self.stop.is_cancelled();
                    if let (Some(request), true) = (cancel, running) {
                        // The broadcast did not reach this worker (or came before the job did).
                        ctx.cancel(CancelJob {
                            id,
                            canceled_by: request.by.unwrap_or_default(),
                            reason: request.reason,
                        });
                    }
                }
                // Recorded meanwhile (by this attempt, or by another that took the job over):
                // the fenced write of the end tells which; there is nothing to stop.
                Ok(Lease::Lost) if self.process_ended.is_cancelled() => return,
                Ok(Lease::Lost) => break "another attempt took it over, or it ended",
                Err(e) => tracing::warn!(job = %id, attempt, error = %e, "lease renewal failed"),
            }
        };
        tracing::warn!(job = %id, attempt, "{why}: stopping the job");
        self.lost.cancel();
        self.stop.cancel();
    }

    /// When the attempt must let the job go, unless renewed before: `stop_at` while the
    /// process runs, never once it has ended.
    async fn deadline(&self, stop_at: Instant) {
        tokio::select! {
            biased;
            _ = self.process_ended.cancelled() => std::future::pending().await,
            _ = sleep_until(stop_at) => {}
        }
    }
}
