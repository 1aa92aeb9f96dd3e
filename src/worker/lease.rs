//! A running attempt's lease on its job. The attempt renews it in PostgreSQL a few times per
//! lease, and each renewal brings back the job's cancel flag (so a cancel whose broadcast was
//! lost still stops the job). The attempt lets the job go — kills its process and records
//! nothing more — when another attempt took the job over, or when its lease could pass
//! unrenewed (the database is unreachable): another delivery may then take the job over, and
//! two runs of one job must never overlap.
//!
//! The timing rule: a lease runs until the database's `now()` at the renewal plus
//! `JOB_LEASE_TIMEOUT`, and that `now()` is read after the worker sent the renewal. So, counted
//! on the worker's monotonic clock from when it sent its last successful renewal, the lease
//! lasts at least `JOB_LEASE_TIMEOUT`; the worker stops the job one renewal interval before
//! that, which leaves the interval to kill the process and absorbs a small step of the
//! database's clock. Takeovers compare the lease with the same database's `now()`, so the
//! workers' own clocks never matter.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::context::WorkerContext;
use crate::domain::JobId;
use crate::queue::control::CancelJob;
use crate::store::jobs::{self, Lease};

/// The lease of one attempt, renewed until dropped.
pub struct Held {
    task: JoinHandle<()>,
    lost: CancellationToken,
}

impl Held {
    /// Renews the lease of `attempt` on job `id`, taken by a statement sent at `taken`.
    /// `stop` kills the job's process: it is cancelled when the job is cancelled or the lease
    /// is lost.
    pub fn keep(
        ctx: Arc<WorkerContext>,
        id: JobId,
        attempt: i32,
        taken: Instant,
        stop: CancellationToken,
    ) -> Self {
        let lost = CancellationToken::new();
        let task = tokio::spawn(renew(ctx, id, attempt, taken, stop, lost.clone()));
        Self { task, lost }
    }

    /// Whether the attempt let its job go: it must write nothing more about it.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn renew(
    ctx: Arc<WorkerContext>,
    id: JobId,
    attempt: i32,
    taken: Instant,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let lease = ctx.settings.lease_timeout;
    let every = ctx.settings.lease_renewal();
    // `every` is at most a third of the lease, so this leaves at least two renewals.
    let mut stop_at = taken + lease.saturating_sub(every);
    let mut tick = tokio::time::interval_at(taken + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(stop_at) => break "its lease could not be renewed in time",
        }
        let sent = Instant::now();
        let renewed = tokio::select! {
            renewed = jobs::renew_lease(&ctx.pool, id, attempt, lease) => renewed,
            _ = sleep_until(stop_at) => break "its lease could not be renewed in time",
        };
        match renewed {
            Ok(Lease::Held(cancel)) => {
                stop_at = sent + lease.saturating_sub(every);
                if let (Some(request), false) = (cancel, stop.is_cancelled()) {
                    // The broadcast did not reach this worker (or came before the job did).
                    ctx.cancel(CancelJob {
                        id,
                        canceled_by: request.by.unwrap_or_default(),
                        reason: request.reason,
                    });
                }
            }
            Ok(Lease::Lost) => break "another attempt took it over, or it ended",
            Err(e) => tracing::warn!(job = %id, attempt, error = %e, "lease renewal failed"),
        }
    };
    tracing::warn!(job = %id, attempt, "{why}: stopping the job and recording nothing");
    lost.cancel();
    stop.cancel();
}
