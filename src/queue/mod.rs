//! NATS and JetStream: the only module that imports `async_nats`. It knows every subject and
//! stream name (`subjects`), the wire formats (`envelope`, `events`, `control`), how streams and
//! consumers are declared (`setup`) and how workers pull jobs (`consume`).

pub mod bus;
pub mod consume;
pub mod control;
pub mod envelope;
pub mod events;
pub mod setup;
pub mod subjects;

pub use bus::{Bus, Role};

/// A NATS failure. Every kind is "the broker is unavailable or refused" from the caller's view:
/// the API answers 503, a worker retries.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("JetStream did not accept the message: {0}")]
    Publish(String),
    /// The stream is at one of its limits (in all, or for this subject) and refuses new
    /// messages until consumers take some: not stored, so safe to retry later.
    #[error("the queue is full: {0}")]
    Full(String),
    #[error("NATS request failed: {0}")]
    Request(String),
    #[error("invalid NATS declaration: {0}")]
    Declaration(String),
}

impl QueueError {
    pub(crate) fn publish(e: impl std::fmt::Display) -> Self {
        Self::Publish(e.to_string())
    }

    /// A failed publish: `Full` when JetStream refused it for a limit (a store failure such as
    /// "maximum messages exceeded", or no room left on its volume), `Publish` otherwise.
    pub(crate) fn refused(e: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::ErrorCode;
        let code = std::error::Error::source(&e)
            .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
            .map(|api| api.error_code());
        match code {
            Some(ErrorCode::STREAM_STORE_FAILED | ErrorCode::INSUFFICIENT_RESOURCES) => {
                Self::Full(e.to_string())
            }
            _ => Self::Publish(e.to_string()),
        }
    }

    pub(crate) fn request(e: impl std::fmt::Display) -> Self {
        Self::Request(e.to_string())
    }
}
