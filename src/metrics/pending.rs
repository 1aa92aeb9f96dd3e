//! JetStream's backlog per tag, for a worker's scrapes: read from the consumers' info at most
//! every [`REFRESH_EVERY`] whatever the number of scrapers, every tag at once within one
//! deadline.

use std::time::{Duration, Instant};

use crate::domain::Tag;
use crate::queue::Bus;

const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A scrape waits no longer for NATS, however many tags: a tag not read by then shows its last
/// values.
const READ_WITHIN: Duration = Duration::from_secs(2);

pub struct Backlogs {
    bus: Bus,
    tags: Vec<(Tag, &'static str)>,
    /// When the last read started; one read at a time.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Backlogs {
    pub fn new(bus: Bus, tags: &[Tag]) -> Self {
        Self {
            bus,
            tags: tags
                .iter()
                .map(|tag| (tag.clone(), super::tag_label(tag.as_str())))
                .collect(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads the backlogs again if the last read is old enough.
    pub async fn refresh(&self) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let reads = self.tags.iter().map(|(tag, label)| async move {
            match self.bus.backlog(tag).await {
                Ok((pending, ack_pending)) => super::set_backlog(label, pending, ack_pending),
                Err(e) => tracing::debug!(tag = %tag, error = %e, "consumer info unavailable"),
            }
        });
        if tokio::time::timeout(READ_WITHIN, futures::future::join_all(reads))
            .await
            .is_err()
        {
            tracing::debug!("consumer info timed out");
        }
    }
}
