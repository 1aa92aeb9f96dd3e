//! Declares the streams and worker consumers from the JSON files in `nats/` (NATS's own API
//! format, so the same files serve the `nats` CLI and the Helm chart). Idempotent: creates what
//! is missing and updates what changed.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};

use super::{subjects, Bus, QueueError};
use crate::config::StreamLimits;
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

/// The streams as `nats/` declares them, with the installation's replicas and limits.
fn stream_configs(
    layout: &QueueLayout,
    limits: &StreamLimits,
) -> Result<[stream::Config; 2], QueueError> {
    let mut jobs: stream::Config = parse(subjects::JOBS_STREAM, JOBS_STREAM)?;
    // `discard: new` in the file: a full queue refuses a job (its caller gets 503) rather than
    // dropping one that was answered 201; per subject too, so one tag cannot fill it for all.
    jobs.max_bytes = limits.jobs_max_bytes;
    jobs.max_messages = limits.jobs_max_msgs;
    jobs.max_messages_per_subject = limits.jobs_max_msgs_per_subject;
    jobs.discard_new_per_subject = limits.jobs_max_msgs_per_subject > 0;
    let mut events: stream::Config = parse(subjects::EVENTS_STREAM, EVENTS_STREAM)?;
    // `discard: old` in the file: events are history, the oldest make room.
    events.max_bytes = limits.events_max_bytes;
    for config in [&mut jobs, &mut events] {
        config.num_replicas = layout.stream_replicas;
    }
    Ok([jobs, events])
}

/// Refuses limits that the jobs stream already exceeds: NATS would make room by deleting the
/// oldest messages — jobs answered 201 — whatever the discard policy.
async fn check_jobs_fit(bus: &Bus, jobs: &stream::Config) -> Result<(), QueueError> {
    use futures::TryStreamExt;
    let Ok(mut stream) = bus.jetstream().get_stream(&jobs.name).await else {
        return Ok(()); // not there yet
    };
    let refuse = |what: &str, held: i64, limit: i64| {
        QueueError::Declaration(format!(
            "the jobs stream holds {held} {what}, more than the new limit {limit}: raise the \
             limit or let the workers drain it first (NATS would delete the oldest jobs)"
        ))
    };
    let state = stream
        .info()
        .await
        .map_err(|e| QueueError::Declaration(format!("stream {}: {e}", jobs.name)))?
        .state
        .clone();
    let messages = i64::try_from(state.messages).unwrap_or(i64::MAX);
    let bytes = i64::try_from(state.bytes).unwrap_or(i64::MAX);
    if jobs.max_messages > 0 && messages > jobs.max_messages {
        return Err(refuse("messages", messages, jobs.max_messages));
    }
    if jobs.max_bytes > 0 && bytes > jobs.max_bytes {
        return Err(refuse("bytes", bytes, jobs.max_bytes));
    }
    if jobs.max_messages_per_subject > 0 && messages > jobs.max_messages_per_subject {
        let per_subject: Vec<(String, usize)> = stream
            .info_with_subjects(subjects::JOBS_ALL)
            .await
            .map_err(|e| QueueError::Declaration(format!("stream {}: {e}", jobs.name)))?
            .try_collect()
            .await
            .map_err(|e| QueueError::Declaration(format!("stream {}: {e}", jobs.name)))?;
        if let Some((subject, held)) = per_subject
            .into_iter()
            .find(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX) > jobs.max_messages_per_subject)
        {
            let held = i64::try_from(held).unwrap_or(i64::MAX);
            return Err(refuse(
                &format!("messages on {subject}"),
                held,
                jobs.max_messages_per_subject,
            ));
        }
    }
    Ok(())
}

pub async fn declare_streams(
    bus: &Bus,
    layout: &QueueLayout,
    limits: &StreamLimits,
) -> Result<(), QueueError> {
    let configs = stream_configs(layout, limits)?;
    check_jobs_fit(bus, &configs[0]).await?;
    for config in configs {
        let name = config.name.clone();
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
pub async fn declare_all(
    bus: &Bus,
    tags: &[Tag],
    layout: &QueueLayout,
    limits: &StreamLimits,
) -> Result<(), QueueError> {
    declare_streams(bus, layout, limits).await?;
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

    #[test]
    fn limits_are_applied() {
        let layout = QueueLayout {
            stream_replicas: 3,
            ack_wait: Duration::from_secs(30),
        };
        let limits = StreamLimits {
            jobs_max_bytes: 1000,
            jobs_max_msgs: 10,
            jobs_max_msgs_per_subject: 5,
            events_max_bytes: 2000,
        };
        let [jobs, events] = stream_configs(&layout, &limits).unwrap();
        assert_eq!(
            (
                jobs.max_bytes,
                jobs.max_messages,
                jobs.max_messages_per_subject
            ),
            (1000, 10, 5)
        );
        assert_eq!(jobs.discard, stream::DiscardPolicy::New);
        assert!(jobs.discard_new_per_subject);
        assert_eq!((events.max_bytes, events.num_replicas), (2000, 3));
        assert_eq!(events.discard, stream::DiscardPolicy::Old);
        let unlimited = StreamLimits {
            jobs_max_msgs_per_subject: -1,
            ..limits
        };
        let [jobs, _] = stream_configs(&layout, &unlimited).unwrap();
        assert!(!jobs.discard_new_per_subject);
    }
}
