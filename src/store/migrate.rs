//! Applies `migrations/*.sql` in order, once each, under an advisory lock so that several
//! processes starting together (API replicas, Helm hooks) never race.

use tokio_postgres::Client;

use super::{Pool, StoreError};

/// The migrations compiled into the binary, in the order they apply.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "foundation",
        include_str!("../../migrations/0001_foundation.sql"),
    ),
    (
        2,
        "object_storage",
        include_str!("../../migrations/0002_object_storage.sql"),
    ),
    (
        3,
        "permissions",
        include_str!("../../migrations/0003_permissions.sql"),
    ),
    (
        4,
        "session_tokens",
        include_str!("../../migrations/0004_session_tokens.sql"),
    ),
    (
        5,
        "job_status_updates",
        include_str!("../../migrations/0005_job_status_updates.sql"),
    ),
    (6, "flows", include_str!("../../migrations/0006_flows.sql")),
    (
        7,
        "webhook_triggers",
        include_str!("../../migrations/0007_webhook_triggers.sql"),
    ),
    (
        8,
        "job_leases",
        include_str!("../../migrations/0008_job_leases.sql"),
    ),
    (
        9,
        "scheduled_jobs",
        include_str!("../../migrations/0009_scheduled_jobs.sql"),
    ),
    (
        10,
        "scheduler_retries",
        include_str!("../../migrations/0010_scheduler_retries.sql"),
    ),
    (
        11,
        "dedicated_workers",
        include_str!("../../migrations/0011_dedicated_workers.sql"),
    ),
    (
        12,
        "login_codes",
        include_str!("../../migrations/0012_login_codes.sql"),
    ),
    (
        13,
        "keys_in_job_rows",
        include_str!("../../migrations/0013_keys_in_job_rows.sql"),
    ),
];

/// An arbitrary constant shared by every Millrace process: the key of the advisory lock.
const LOCK_KEY: i64 = 0x6d69_6c6c_7261_6365;

/// Applies what is missing; returns the versions it applied.
pub async fn run(pool: &Pool) -> Result<Vec<i32>, StoreError> {
    let mut conn = pool.get().await?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let outcome = apply_missing(&mut conn).await;
    // Unlock even when a migration failed, so the next attempt is not stuck behind us.
    let unlocked = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = outcome?;
    unlocked?;
    Ok(applied)
}

async fn apply_missing(conn: &mut Client) -> Result<Vec<i32>, StoreError> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let done: Vec<i32> = conn
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let tx = conn.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
        applied.push(*version);
    }
    Ok(applied)
}

/// The newest schema version this binary knows; `readyz` compares it with the database.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// The newest version applied to the database (0 before any migration).
pub async fn current_version(pool: &Pool) -> Result<i32, StoreError> {
    let conn = pool.get().await?;
    let exists: bool = conn
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = conn
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn migration_files_are_all_compiled_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(
            files.len(),
            super::MIGRATIONS.len(),
            "a migration file is not compiled in"
        );
        for (file, (version, name, _)) in files.iter().zip(super::MIGRATIONS) {
            assert_eq!(file, &format!("{version:04}_{name}.sql"));
        }
    }
}
