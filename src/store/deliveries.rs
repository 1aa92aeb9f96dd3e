//! Delivery keys: the first request with a key claims it for its job; a repeat within the
//! window finds that job instead of starting another. The key lives in PostgreSQL because
//! senders retry for hours, far beyond JetStream's dedup window.
//!
//! A key is held by the row of the job it started (`jobs.once_key`, unique while set, and
//! `once_until`), so the job inserter (`job_inserter.rs`) claims it with the row's own INSERT:
//! one tuple, one statement and one commit, shared with the other rows of the batch. This file
//! finds who holds keys a batch could not claim, takes expired keys back, and gives a key back.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Pool, StoreError};
use crate::domain::JobId;

/// A key a new job claims, in the job's workspace: `scope` says whose it is, so that equal
/// keys of different senders never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub scope: String,
    pub key: String,
    /// How long a repeat answers the first job.
    pub window: Duration,
}

impl DeliveryKey {
    /// What `jobs.once_key` holds for this key in `workspace`: the SHA-256 of workspace, NUL,
    /// scope, NUL, key — as the SQL function `once_key` computes it (migration 0013). Neither
    /// workspace nor scope can hold a NUL (PostgreSQL text cannot), so no two keys share it.
    pub fn digest(&self, workspace: &str) -> Vec<u8> {
        let mut hash = Sha256::new();
        hash.update(workspace.as_bytes());
        hash.update([0]);
        hash.update(self.scope.as_bytes());
        hash.update([0]);
        hash.update(self.key.as_bytes());
        hash.finalize().to_vec()
    }
}

/// The job holding a key, and whether its claim is still within its window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Holder {
    pub job: Uuid,
    pub live: bool,
}

/// Who holds each of `keys` (digests), and which of `ids` are taken: what a batch needs to
/// know about the rows it could not write. One statement, by index.
pub(super) async fn holders(
    client: &impl tokio_postgres::GenericClient,
    keys: &[&[u8]],
    ids: &[Uuid],
) -> Result<(HashMap<Vec<u8>, Holder>, HashSet<Uuid>), tokio_postgres::Error> {
    let found = client
        .query(
            "SELECT id, once_key, once_until > now() FROM jobs
             WHERE once_key = ANY($1) OR id = ANY($2)",
            &[&keys, &ids],
        )
        .await?;
    let mut holders = HashMap::new();
    let mut taken = HashSet::new();
    for row in found {
        let job: Uuid = row.get(0);
        if ids.contains(&job) {
            taken.insert(job);
        }
        if let Some(key) = row.get::<_, Option<Vec<u8>>>(1) {
            if keys.contains(&key.as_slice()) {
                let live = row.get(2);
                holders.insert(key, Holder { job, live });
            }
        }
    }
    Ok((holders, taken))
}

/// Takes `keys` back from the rows that hold them past their window, so that a new job can
/// claim them. Nothing is lost if this commits and the new claim does not: an expired key
/// answers nothing.
pub(super) async fn take_back_expired(
    client: &impl tokio_postgres::GenericClient,
    keys: &[&[u8]],
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE jobs SET once_key = NULL, once_until = NULL
             WHERE once_key = ANY($1) AND once_until <= now()",
            &[&keys],
        )
        .await?;
    Ok(())
}

/// Gives the key `job` claimed back when the job could not be created, so that the sender's
/// retry runs.
pub async fn release(pool: &Pool, job: JobId) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "UPDATE jobs SET once_key = NULL, once_until = NULL WHERE id = $1",
        &[&job],
    )
    .await?;
    Ok(())
}
