//! JetStream's backlog per tag, for a worker's scrapes: read from the consumers' info at most
//! every [`REFRESH_EVERY`] whatever the number of scrapers, each read bounded in time.

use std::time::{Duration, Instant};

use crate::domain::Tag;
use crate::queue::Bus;

const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A scrape waits no longer for NATS: it then shows the last values.
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
        for (tag, label) in &self.tags {
            match tokio::time::timeout(READ_WITHIN, self.bus.backlog(tag)).await {
                Ok(Ok((pending, ack_pending))) => super::set_backlog(label, pending, ack_pending),
                Ok(Err(e)) => tracing::debug!(tag = %tag, error = %e, "consumer info unavailable"),
                Err(_) => tracing::debug!(tag = %tag, "consumer info timed out"),
            }
        }
    }
}
