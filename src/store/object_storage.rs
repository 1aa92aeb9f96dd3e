//! Workspaces' own object storage settings (`workspace_object_storage`). The secret key is
//! sealed with `ENCRYPTION_KEY` when the instance has one (`secret_key_sealed`), in clear
//! otherwise (`secret_key`); an API that starts with the key seals the clear ones.

use crate::config::Secret;
use crate::crypto::SecretBox;
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

/// What a sealed secret key is bound to: its workspace.
fn context(ws: &str) -> String {
    format!("workspace_object_storage:{ws}")
}

/// The workspace's own settings, if it has any.
pub async fn get(
    pool: &Pool,
    ws: &WorkspaceId,
    sealer: Option<&SecretBox>,
) -> Result<Option<ObjectStorageRow>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT endpoint, bucket, region, access_key, secret_key, secret_key_sealed
             FROM workspace_object_storage WHERE workspace_id = $1",
            &[&ws.as_str()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let secret_key = match (
        row.get::<_, Option<String>>(4),
        row.get::<_, Option<Vec<u8>>>(5),
    ) {
        (Some(clear), _) => clear,
        (None, Some(sealed)) => {
            let sealer = sealer.ok_or_else(|| {
                StoreError::Config(format!(
                    "the object storage secret key of workspace {ws} is encrypted: set ENCRYPTION_KEY"
                ))
            })?;
            let clear = sealer
                .open(&sealed, &context(ws.as_str()))
                .map_err(|e| StoreError::Config(format!("workspace {ws}: {e}")))?;
            String::from_utf8(clear).map_err(|_| {
                StoreError::Config(format!("workspace {ws}: the secret key is not text"))
            })?
        }
        (None, None) => String::new(),
    };
    Ok(Some(ObjectStorageRow {
        endpoint: row.get(0),
        bucket: row.get(1),
        region: row.get(2),
        access_key: row.get(3),
        secret_key: Secret::new(secret_key),
    }))
}

/// Sets (or replaces) the workspace's settings, the secret key sealed when there is a key.
pub async fn put(
    pool: &Pool,
    ws: &WorkspaceId,
    settings: &ObjectStorageRow,
    updated_by: &str,
    sealer: Option<&SecretBox>,
) -> Result<(), StoreError> {
    let secret = settings.secret_key.expose();
    let (clear, sealed) = match sealer {
        Some(sealer) => (
            None,
            Some(sealer.seal(secret.as_bytes(), &context(ws.as_str()))),
        ),
        None => (Some(secret), None),
    };
    let conn = pool.get().await?;
    conn.execute(
        "INSERT INTO workspace_object_storage (workspace_id, endpoint, bucket, region,
             access_key, secret_key, secret_key_sealed, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (workspace_id) DO UPDATE SET
             endpoint = EXCLUDED.endpoint, bucket = EXCLUDED.bucket, region = EXCLUDED.region,
             access_key = EXCLUDED.access_key, secret_key = EXCLUDED.secret_key,
             secret_key_sealed = EXCLUDED.secret_key_sealed,
             updated_by = EXCLUDED.updated_by, updated_at = now()",
        &[
            &ws.as_str(),
            &settings.endpoint,
            &settings.bucket,
            &settings.region,
            &settings.access_key,
            &clear,
            &sealed,
            &updated_by,
        ],
    )
    .await?;
    Ok(())
}

/// Seals every secret key still stored in clear (written before `ENCRYPTION_KEY` was set, or
/// before the migration); returns how many. Safe to run from several processes at once: a
/// row is only changed while it still holds the value that was sealed.
pub async fn seal_clear_keys(pool: &Pool, sealer: &SecretBox) -> Result<u64, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT workspace_id, secret_key FROM workspace_object_storage
             WHERE secret_key IS NOT NULL",
            &[],
        )
        .await?;
    let mut sealed = 0;
    for row in rows {
        let (ws, clear): (String, String) = (row.get(0), row.get(1));
        sealed += conn
            .execute(
                "UPDATE workspace_object_storage SET secret_key = NULL, secret_key_sealed = $3
                 WHERE workspace_id = $1 AND secret_key = $2",
                &[&ws, &clear, &sealer.seal(clear.as_bytes(), &context(&ws))],
            )
            .await?;
    }
    Ok(sealed)
}
