//! PostgreSQL: the only module that talks to the database. One file per table family;
//! every query lives next to the row type it reads.

pub mod acl;
mod connections;
pub mod deliveries;
pub mod flow_runs;
pub mod flows;
mod job_inserter;
pub mod jobs;
pub mod login_codes;
pub mod migrate;
pub mod object_storage;
pub mod scheduled;
pub mod scripts;
pub mod settings;
pub mod tokens;
pub mod triggers;
pub mod users;
pub mod workspaces;

use crate::config::DatabaseConfig;

pub use connections::Begun;
pub use job_inserter::{Enqueued, InsertOutcome, JobInserter, NewJobRow};

pub type Pool = bb8::Pool<connections::Manager>;
pub type Conn<'a> = bb8::PooledConnection<'a, connections::Manager>;

/// A failure of the database itself. Callers turn it into a 500/503 without showing its text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[from] bb8::RunError<tokio_postgres::Error>),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("invalid database URL: {0}")]
    Config(String),
    /// Too many rows wait to be inserted already: refused before anything was written.
    #[error("the job inserter is busy")]
    Busy,
    /// The database did not answer within the deadline; the statement was cancelled, so
    /// nothing it would have written was (a job INSERT's earlier statements for other rows of
    /// the batch may have committed: those rows are answered their own outcomes).
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A job's key kept changing hands (expiring, let go) while it was being claimed: nothing
    /// was written for it; a retry will find it settled.
    #[error("a key kept changing hands while it was claimed")]
    Contended,
}

impl StoreError {
    /// True for a unique-constraint violation (the caller usually maps it to 409).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Query(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
    }

    /// True when PostgreSQL refused a value's text: U+0000, which no `text` or `jsonb` can
    /// hold. Sending the same value again fails the same way.
    pub fn is_unstorable_text(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, Self::Query(e) if e.code() == Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE)
            || e.code() == Some(&SqlState::UNTRANSLATABLE_CHARACTER))
    }

    /// Whether the same call may succeed later: the database was unreachable, restarting,
    /// overloaded, or picked this transaction as a deadlock or serialization victim. Anything
    /// else the server answered — a value it cannot store (class 22, such as `22P05` for a NUL
    /// character), a program limit (`54000`, too large), a constraint — is refused again every
    /// time, so retrying it only delays the failure.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Busy | Self::Timeout(_) | Self::Contended => true,
            Self::Config(_) => false,
            Self::Query(e) => match e.code() {
                // No answer from the server: the connection failed or closed — unlike an error
                // of the client itself (a value it could not encode or decode), which repeats.
                None => {
                    use std::error::Error as _;
                    e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>())
                }
                Some(state) => {
                    matches!(&state.code()[..2], "08" | "40" | "53" | "57" | "58")
                        || state == &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
                }
            },
        }
    }

    /// The server's SQLSTATE, when it answered with an error.
    pub fn sql_state(&self) -> Option<&str> {
        match self {
            Self::Query(e) => e.code().map(|state| state.code()),
            _ => None,
        }
    }
}

/// The longest a lookup on a request's way to its job (its token, membership, rights, script)
/// waits for the database: past it the request is answered 503 rather than held for as long
/// as the database does not answer (frozen, cut off, overloaded).
pub const LOOKUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// `lookup`, or [`StoreError::Timeout`] once [`LOOKUP_DEADLINE`] has passed. Only for reads:
/// a write given up on may still commit.
pub async fn bounded<T>(
    lookup: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(LOOKUP_DEADLINE, lookup)
        .await
        .map_err(|_| StoreError::Timeout(LOOKUP_DEADLINE))?
}

pub async fn connect(config: &DatabaseConfig) -> Result<Pool, StoreError> {
    let pg_config: tokio_postgres::Config = config
        .url
        .expose()
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
    let pool = bb8::Pool::builder()
        .max_size(config.pool_size)
        .connection_timeout(std::time::Duration::from_secs(10))
        .build(connections::Manager::new(pg_config))
        .await?;
    Ok(pool)
}
