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
    #[error("NATS request failed: {0}")]
    Request(String),
    #[error("invalid NATS declaration: {0}")]
    Declaration(String),
}

impl QueueError {
    pub(crate) fn publish(e: impl std::fmt::Display) -> Self {
        Self::Publish(e.to_string())
    }

    pub(crate) fn request(e: impl std::fmt::Display) -> Self {
        Self::Request(e.to_string())
    }
}
