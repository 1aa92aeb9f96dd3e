//! How a worker takes jobs: pull batches from its tag's durable consumer, only as many as it has
//! free slots, so jobs wait in the stream (where any worker can take them) rather than in a
//! busy worker's buffer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::{Stream, StreamExt};

use super::envelope::JobEnvelope;
use super::{subjects, Bus, QueueError};
use crate::domain::Tag;

/// The pull side of one tag's consumer.
pub struct JobFeed {
    consumer: jetstream::consumer::Consumer<pull::Config>,
}

/// One delivery of a job: the envelope plus the handle to settle it with JetStream.
pub struct Delivery {
    message: jetstream::Message,
    /// An error when the payload is not a job envelope this worker understands.
    pub envelope: Result<JobEnvelope, String>,
    /// 1 for the first delivery, more after a worker died or a scheduled job came due.
    pub delivered: i64,
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
        let envelope = serde_json::from_slice::<JobEnvelope>(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|env| {
                if env.v == super::envelope::VERSION {
                    Ok(env)
                } else {
                    Err(format!("unsupported envelope version {}", env.v))
                }
            });
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
