//! Declares the streams and worker consumers from the JSON files in `nats/` (NATS's own API
//! format, so the same files serve the `nats` CLI and the Helm chart). Idempotent: creates what
//! is missing and updates what changed.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};

use super::{subjects, Bus, QueueError};
use crate::domain::Tag;

const JOBS_STREAM: &str = include_str!("../../nats/streams/MILLRACE_JOBS.json");
const EVENTS_STREAM: &str = include_str!("../../nats/streams/MILLRACE_EVENTS.json");
const WORKERS_CONSUMER: &str = include_str!("../../nats/consumers/workers.json");

/// Settings that differ between installations.
#[derive(Debug, Clone)]
pub struct QueueLayout {
    pub stream_replicas: usize,
    pub ack_wait: Duration,
}

fn parse<T: serde::de::DeserializeOwned>(name: &str, json: &str) -> Result<T, QueueError> {
    serde_json::from_str(json).map_err(|e| QueueError::Declaration(format!("{name}: {e}")))
}

pub async fn declare_streams(bus: &Bus, layout: &QueueLayout) -> Result<(), QueueError> {
    for (name, json) in [
        (subjects::JOBS_STREAM, JOBS_STREAM),
        (subjects::EVENTS_STREAM, EVENTS_STREAM),
    ] {
        let mut config: stream::Config = parse(name, json)?;
        config.num_replicas = layout.stream_replicas;
        bus.jetstream()
            .create_or_update_stream(config)
            .await
            .map_err(|e| QueueError::Declaration(format!("stream {name}: {e}")))?;
    }
    Ok(())
}

pub async fn declare_worker_consumer(
    bus: &Bus,
    tag: &Tag,
    layout: &QueueLayout,
) -> Result<(), QueueError> {
    let mut config: consumer::pull::Config = parse("workers consumer", WORKERS_CONSUMER)?;
    config.durable_name = Some(subjects::worker_consumer(tag));
    config.filter_subject = subjects::jobs(tag);
    config.ack_wait = layout.ack_wait;
    let stream = bus
        .jetstream()
        .get_stream(subjects::JOBS_STREAM)
        .await
        .map_err(|e| QueueError::Declaration(format!("stream {}: {e}", subjects::JOBS_STREAM)))?;
    stream
        .create_consumer(config)
        .await
        .map_err(|e| QueueError::Declaration(format!("consumer for tag {tag}: {e}")))?;
    Ok(())
}

/// Everything `millrace migrate` declares: both streams and a consumer per configured tag.
pub async fn declare_all(bus: &Bus, tags: &[Tag], layout: &QueueLayout) -> Result<(), QueueError> {
    declare_streams(bus, layout).await?;
    for tag in tags {
        declare_worker_consumer(bus, tag, layout).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_parse() {
        let jobs: stream::Config = parse("jobs", JOBS_STREAM).unwrap();
        assert_eq!(jobs.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(jobs.storage, stream::StorageType::File);
        assert_eq!(jobs.duplicate_window, Duration::from_secs(120));
        let events: stream::Config = parse("events", EVENTS_STREAM).unwrap();
        assert_eq!(events.retention, stream::RetentionPolicy::Limits);
        assert_eq!(events.max_age, Duration::from_secs(7 * 24 * 3600));
        let workers: consumer::pull::Config = parse("workers", WORKERS_CONSUMER).unwrap();
        assert_eq!(workers.ack_policy, consumer::AckPolicy::Explicit);
    }
}
