//! How a worker takes jobs: pull batches from its tag's durable consumer, only as many as it has
//! free slots, so jobs wait in the stream (where any worker can take them) rather than in a
//! busy worker's buffer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::{Stream, StreamExt};

use super::envelope::{JobEnvelope, VERSION};
use super::{subjects, Bus, QueueError};
use crate::domain::Tag;

/// The pull side of one tag's consumer.
pub struct JobFeed {
    consumer: jetstream::consumer::Consumer<pull::Config>,
}

/// One delivery of a job: the envelope plus the handle to settle it with JetStream.
pub struct Delivery {
    message: jetstream::Message,
    pub envelope: Result<JobEnvelope, Unusable>,
    /// 1 for the first delivery, more after a worker died or a scheduled job came due.
    pub delivered: i64,
}

/// Why a delivery cannot be run by this worker.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("not a job envelope: {0}")]
    Unreadable(String),
    /// Written by a newer API: a newer worker can run it.
    #[error("envelope version {0} is newer than this worker's {VERSION}")]
    Newer(u32),
}

impl JobFeed {
    pub async fn open(bus: &Bus, tag: &Tag) -> Result<Self, QueueError> {
        let stream = bus
            .jetstream()
            .get_stream(subjects::JOBS_STREAM)
            .await
            .map_err(QueueError::request)?;
        let consumer = stream
            .get_consumer(&subjects::worker_consumer(tag))
            .await
            .map_err(QueueError::request)?;
        Ok(Self { consumer })
    }

    /// Up to `max` deliveries, each yielded as soon as it arrives; the stream ends when `max`
    /// have come or `wait` has passed.
    pub async fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<impl Stream<Item = Result<Delivery, QueueError>> + Send, QueueError> {
        let batch = self
            .consumer
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(QueueError::request)?;
        Ok(batch.map(|message| message.map(Delivery::new).map_err(QueueError::request)))
    }
}

impl Delivery {
    fn new(message: jetstream::Message) -> Self {
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        let envelope = read_envelope(&message.payload);
        Self {
            message,
            envelope,
            delivered,
        }
    }

    /// Done with it: JetStream removes the job from the work queue.
    pub async fn ack(&self) -> Result<(), QueueError> {
        self.message.double_ack().await.map_err(QueueError::request)
    }

    /// A handle that extends the ack deadline from another task while the job runs.
    pub fn progress_handle(&self) -> ProgressHandle {
        ProgressHandle(self.message.clone())
    }

    /// Not now: redeliver after `delay` (a scheduled job that is not due yet).
    pub async fn retry_after(&self, delay: Duration) -> Result<(), QueueError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(QueueError::request)
    }

    /// Never deliver again (a message no worker can understand).
    pub async fn reject(&self) -> Result<(), QueueError> {
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(QueueError::request)
    }
}

fn read_envelope(payload: &[u8]) -> Result<JobEnvelope, Unusable> {
    /// Enough of any version's envelope to tell which version it is.
    #[derive(serde::Deserialize)]
    struct Versioned {
        v: u32,
    }
    match serde_json::from_slice::<JobEnvelope>(payload) {
        Ok(envelope) if envelope.v > VERSION => Err(Unusable::Newer(envelope.v)),
        Ok(envelope) => Ok(envelope),
        Err(e) => Err(match serde_json::from_slice::<Versioned>(payload) {
            Ok(Versioned { v }) if v > VERSION => Unusable::Newer(v),
            _ => Unusable::Unreadable(e.to_string()),
        }),
    }
}

/// Sends "still working" for one delivery.
pub struct ProgressHandle(jetstream::Message);

impl ProgressHandle {
    pub async fn progress(&self) -> Result<(), QueueError> {
        self.0
            .ack_with(AckKind::Progress)
            .await
            .map_err(QueueError::request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(v: u32) -> serde_json::Value {
        json!({
            "v": v, "id": uuid::Uuid::now_v7(), "workspace": "demo", "kind": "script",
            "path": "u/admin/x", "hash": "abc", "language": "bash", "created_by": "admin",
            "permissioned_as": "admin@example.com", "scopes": null, "tag": "default",
            "timeout_s": null, "scheduled_for": null,
        })
    }

    fn read(value: &serde_json::Value) -> Result<JobEnvelope, Unusable> {
        read_envelope(&serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn older_envelopes_are_read_newer_ones_left_and_garbage_refused() {
        let v1 = read(&envelope(1)).expect("a version 1 envelope (no record) is read");
        assert!(v1.record.is_none());
        assert!(matches!(
            read(&envelope(VERSION + 1)),
            Err(Unusable::Newer(_))
        ));
        let mut changed = envelope(VERSION + 1);
        changed["kind"] = json!(["a", "new", "shape"]);
        assert!(matches!(read(&changed), Err(Unusable::Newer(_))));
        let mut broken = envelope(VERSION);
        broken["kind"] = json!(7);
        assert!(matches!(read(&broken), Err(Unusable::Unreadable(_))));
        assert!(matches!(
            read_envelope(b"not json"),
            Err(Unusable::Unreadable(_))
        ));
    }
}
