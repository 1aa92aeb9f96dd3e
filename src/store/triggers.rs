//! Webhook triggers (`webhook_triggers`). Secrets arrive and leave sealed: this module never
//! sees them in clear.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{Pool, StoreError};
use crate::domain::WorkspaceId;

/// One trigger as stored.
#[derive(Debug, Clone)]
pub struct TriggerRow {
    pub path: String,
    /// `script` or `flow`.
    pub runnable_kind: String,
    pub runnable_path: String,
    pub scheme: String,
    pub scheme_options: Option<Value>,
    pub secret: Vec<u8>,
    pub previous_secret: Option<Vec<u8>>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub tolerance_secs: i32,
    pub dedup_window_secs: i32,
    pub delivery_id_header: Option<String>,
    pub event_header: Option<String>,
    pub sync: bool,
    pub enabled: bool,
    pub owner_email: String,
    pub edited_by: String,
    pub edited_at: DateTime<Utc>,
}

impl TriggerRow {
    /// `$1`…`$17` of the statements that write a whole trigger: workspace, path, then every
    /// setting in column order.
    fn params<'a>(&'a self, ws: &'a &'a str) -> [&'a (dyn ToSql + Sync); 17] {
        [
            ws,
            &self.path,
            &self.runnable_kind,
            &self.runnable_path,
            &self.scheme,
            &self.scheme_options,
            &self.secret,
            &self.previous_secret,
            &self.previous_secret_until,
            &self.tolerance_secs,
            &self.dedup_window_secs,
            &self.delivery_id_header,
            &self.event_header,
            &self.sync,
            &self.enabled,
            &self.owner_email,
            &self.edited_by,
        ]
    }
}

const COLUMNS: &str = "path, runnable_kind, runnable_path, scheme, scheme_options, secret,
    previous_secret, previous_secret_until, tolerance_secs, dedup_window_secs,
    delivery_id_header, event_header, sync, enabled, owner_email, edited_by, edited_at";

fn from_row(row: &Row) -> TriggerRow {
    TriggerRow {
        path: row.get(0),
        runnable_kind: row.get(1),
        runnable_path: row.get(2),
        scheme: row.get(3),
        scheme_options: row.get(4),
        secret: row.get(5),
        previous_secret: row.get(6),
        previous_secret_until: row.get(7),
        tolerance_secs: row.get(8),
        dedup_window_secs: row.get(9),
        delivery_id_header: row.get(10),
        event_header: row.get(11),
        sync: row.get(12),
        enabled: row.get(13),
        owner_email: row.get(14),
        edited_by: row.get(15),
        edited_at: row.get(16),
    }
}

pub async fn get(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &str,
) -> Result<Option<TriggerRow>, StoreError> {
    let conn = pool.get().await?;
    let sql =
        format!("SELECT {COLUMNS} FROM webhook_triggers WHERE workspace_id = $1 AND path = $2");
    let row = conn.query_opt(&sql, &[&ws.as_str(), &path]).await?;
    Ok(row.as_ref().map(from_row))
}

/// The trigger, and whether its owner is a superadmin: what a delivery needs, in one round trip.
pub async fn for_delivery(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &str,
) -> Result<Option<(TriggerRow, bool)>, StoreError> {
    let conn = pool.get().await?;
    let sql = format!(
        "SELECT {COLUMNS}, COALESCE(u.super_admin, false)
         FROM webhook_triggers t LEFT JOIN users u ON u.email = t.owner_email
         WHERE t.workspace_id = $1 AND t.path = $2"
    );
    let row = conn.query_opt(&sql, &[&ws.as_str(), &path]).await?;
    Ok(row.map(|row| (from_row(&row), row.get(17))))
}

pub async fn list(pool: &Pool, ws: &WorkspaceId) -> Result<Vec<TriggerRow>, StoreError> {
    let conn = pool.get().await?;
    let sql =
        format!("SELECT {COLUMNS} FROM webhook_triggers WHERE workspace_id = $1 ORDER BY path");
    let rows = conn.query(&sql, &[&ws.as_str()]).await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Creates the trigger; false if one exists at its path.
pub async fn create(pool: &Pool, ws: &WorkspaceId, t: &TriggerRow) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let inserted = conn
        .execute(
            "INSERT INTO webhook_triggers (workspace_id, path, runnable_kind, runnable_path,
                 scheme, scheme_options, secret, previous_secret, previous_secret_until,
                 tolerance_secs, dedup_window_secs, delivery_id_header, event_header, sync,
                 enabled, owner_email, edited_by, edited_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 $17, now())
             ON CONFLICT (workspace_id, path) DO NOTHING",
            &t.params(&ws.as_str()),
        )
        .await?;
    Ok(inserted == 1)
}

/// Replaces every setting of the trigger at `t.path` as it was read at `read_at` (its
/// `edited_at`); false when it is gone or was changed meanwhile.
pub async fn replace(
    pool: &Pool,
    ws: &WorkspaceId,
    t: &TriggerRow,
    read_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let updated = conn
        .execute(
            "UPDATE webhook_triggers SET runnable_kind = $3, runnable_path = $4, scheme = $5,
                 scheme_options = $6, secret = $7, previous_secret = $8,
                 previous_secret_until = $9, tolerance_secs = $10, dedup_window_secs = $11,
                 delivery_id_header = $12, event_header = $13, sync = $14, enabled = $15,
                 owner_email = $16, edited_by = $17, edited_at = now()
             WHERE workspace_id = $1 AND path = $2 AND edited_at = $18",
            &[t.params(&ws.as_str()).as_slice(), &[&read_at]].concat(),
        )
        .await?;
    Ok(updated == 1)
}

/// Deletes the trigger; false if there was none.
pub async fn delete(pool: &Pool, ws: &WorkspaceId, path: &str) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let deleted = conn
        .execute(
            "DELETE FROM webhook_triggers WHERE workspace_id = $1 AND path = $2",
            &[&ws.as_str(), &path],
        )
        .await?;
    Ok(deleted == 1)
}
