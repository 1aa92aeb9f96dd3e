//! Readiness shared by the API and the worker: the dependencies answer and the database schema
//! is the one this binary was built for (so a new version never serves on an old schema).

use crate::queue::Bus;
use crate::store::{self, Pool};

pub async fn readiness(pool: &Pool, bus: &Bus) -> Result<(), String> {
    let version = store::migrate::current_version(pool)
        .await
        .map_err(|_| "database unreachable".to_owned())?;
    let needed = store::migrate::latest_version();
    if version < needed {
        return Err(format!(
            "database schema is at version {version}, this binary needs {needed}"
        ));
    }
    bus.ping().await.map_err(|_| "NATS unreachable".to_owned())
}
