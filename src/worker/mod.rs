//! `millrace worker`: pulls jobs of its tags from JetStream and runs each in a child process,
//! `WORKER_SLOTS` at a time. On SIGTERM it stops pulling, hands back what it pulled but did not
//! start, and finishes the jobs it is running.

mod attempt;
mod context;
mod lease;
mod outcome;
mod process;
mod runtimes;
mod sandbox;
mod spawn;
mod warm;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use context::ExecSettings;
use context::WorkerContext;
pub use runtimes::Runtimes;
pub use sandbox::{reaper, JobUid, Sandbox};
pub use spawn::check_support as check_process_support;
pub use warm::reserved_users;

use crate::domain::Tag;
use crate::queue::consume::JobFeed;
use crate::queue::setup::{self, QueueLayout};
use crate::queue::Bus;
use crate::store::Pool;

/// How long one pull request waits on an empty queue before it is renewed.
const PULL_WAIT: Duration = Duration::from_secs(5);

pub struct Worker {
    ctx: Arc<WorkerContext>,
    tags: Vec<Tag>,
    slots: usize,
}

impl Worker {
    pub fn new(
        settings: ExecSettings,
        pool: Pool,
        bus: Bus,
        (runtimes, sandbox): (Runtimes, Sandbox),
        job_key: Vec<u8>,
        tags: Vec<Tag>,
        slots: usize,
    ) -> Self {
        Self {
            ctx: Arc::new(WorkerContext::new(
                settings,
                pool,
                bus,
                runtimes,
                sandbox,
                job_key,
                slots.max(1),
            )),
            tags,
            slots: slots.max(1),
        }
    }

    /// Runs until `shutdown` fires, then drains.
    pub async fn run(
        self,
        layout: &QueueLayout,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        for tag in &self.tags {
            setup::declare_worker_consumer(&self.ctx.bus, tag, layout)
                .await
                .map_err(|e| anyhow::anyhow!("{e} (has `millrace migrate` run?)"))?;
        }
        self.ctx.warm.boot();
        let cancels = self.ctx.bus.cancels().await?;
        let ctx = self.ctx.clone();
        let cancel_listener = tokio::spawn(async move {
            futures::pin_mut!(cancels);
            while let Some(request) = cancels.next().await {
                ctx.cancel(request);
            }
        });
        crate::metrics::set_worker_slots(self.slots);
        let slots = Arc::new(Semaphore::new(self.slots));
        let jobs = TaskTracker::new();
        let mut pullers = Vec::new();
        for tag in &self.tags {
            let feed = JobFeed::open(&self.ctx.bus, tag).await?;
            pullers.push(tokio::spawn(pull_loop(
                self.ctx.clone(),
                feed,
                slots.clone(),
                jobs.clone(),
                shutdown.clone(),
            )));
        }
        tracing::info!(
            worker = %self.ctx.settings.worker_name,
            tags = ?self.tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
            slots = self.slots,
            "worker started"
        );
        shutdown.cancelled().await;
        for puller in pullers {
            let _ = puller.await;
        }
        jobs.close();
        tracing::info!(
            running = self.ctx.running_count(),
            "draining: finishing running jobs"
        );
        jobs.wait().await;
        cancel_listener.abort();
        tracing::info!("worker stopped");
        Ok(())
    }
}

async fn pull_loop(
    ctx: Arc<WorkerContext>,
    feed: JobFeed,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let want = 1 + slots.available_permits();
        let deliveries = match feed.pull(want, PULL_WAIT).await {
            Ok(deliveries) => deliveries,
            Err(e) => {
                tracing::warn!(error = %e, "pull failed; retrying");
                drop(first);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        futures::pin_mut!(deliveries);
        let mut first = Some(first);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => None,
                next = deliveries.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pull request ended");
                    break;
                }
                None if shutdown.is_cancelled() => {
                    // Pulled but not started: hand them straight back to other workers.
                    while let Some(Ok(delivery)) = deliveries.next().await {
                        let _ = delivery.retry_after(Duration::ZERO).await;
                    }
                    return;
                }
                None => break,
            };
            let permit = match first.take() {
                Some(permit) => permit,
                None => match slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let ctx = ctx.clone();
            jobs.spawn(attempt::handle(ctx, delivery, permit));
        }
    }
}
