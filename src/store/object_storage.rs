//! Workspaces' own object storage settings (`workspace_object_storage`).

use crate::config::Secret;
use crate::domain::WorkspaceId;

use super::{Pool, StoreError};

/// One workspace's bucket and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStorageRow {
    pub endpoint: String,
    pub bucket: String,
    pub region: Option<String>,
    pub access_key: String,
    pub secret_key: Secret,
}

/// The workspace's own settings, if it has any.
pub async fn get(pool: &Pool, ws: &WorkspaceId) -> Result<Option<ObjectStorageRow>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT endpoint, bucket, region, access_key, secret_key
             FROM workspace_object_storage WHERE workspace_id = $1",
            &[&ws.as_str()],
        )
        .await?;
    Ok(row.map(|row| ObjectStorageRow {
        endpoint: row.get(0),
        bucket: row.get(1),
        region: row.get(2),
        access_key: row.get(3),
        secret_key: Secret::new(row.get::<_, String>(4)),
    }))
}

/// Sets (or replaces) the workspace's settings.
pub async fn put(
    pool: &Pool,
    ws: &WorkspaceId,
    settings: &ObjectStorageRow,
    updated_by: &str,
) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "INSERT INTO workspace_object_storage
             (workspace_id, endpoint, bucket, region, access_key, secret_key, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (workspace_id) DO UPDATE SET
             endpoint = EXCLUDED.endpoint, bucket = EXCLUDED.bucket, region = EXCLUDED.region,
             access_key = EXCLUDED.access_key, secret_key = EXCLUDED.secret_key,
             updated_by = EXCLUDED.updated_by, updated_at = now()",
        &[
            &ws.as_str(),
            &settings.endpoint,
            &settings.bucket,
            &settings.region,
            &settings.access_key,
            &settings.secret_key.expose(),
            &updated_by,
        ],
    )
    .await?;
    Ok(())
}
