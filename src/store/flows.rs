//! Flow definitions: a path (live or archived) and its immutable versions. The live version of
//! a path is its newest.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{GenericClient, Row};

use crate::domain::{RunnablePath, WorkspaceId};

use super::{Pool, StoreError};

/// One version of a flow, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Flow {
    pub workspace_id: String,
    pub path: String,
    pub summary: String,
    pub description: String,
    pub value: Value,
    pub schema: Option<Value>,
    pub tag: Option<String>,
    /// Who created the path, and when.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Who made this version, and when.
    pub edited_by: String,
    pub edited_at: DateTime<Utc>,
    pub archived: bool,
    pub version_id: i64,
}

/// A version about to be stored.
#[derive(Debug, Clone)]
pub struct NewFlowVersion {
    pub path: RunnablePath,
    pub summary: String,
    pub description: String,
    pub value: Value,
    pub schema: Option<Value>,
    pub tag: Option<String>,
    pub deployment_msg: Option<String>,
    pub created_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveMode {
    /// The path must be new (or only archived versions exist: they are revived).
    Create,
    /// The path must exist.
    Update,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    Saved(i64),
    AlreadyExists,
    NotFound,
}

const COLUMNS: &str = "v.workspace_id, v.path, v.summary, v.description, v.value, v.schema, \
    v.tag, f.created_by, f.created_at, v.created_by, v.created_at, f.archived, v.id";
const FROM: &str = "flow_versions v JOIN flows f USING (workspace_id, path)";

fn from_row(row: &Row) -> Flow {
    Flow {
        workspace_id: row.get(0),
        path: row.get(1),
        summary: row.get(2),
        description: row.get(3),
        value: row.get(4),
        schema: row.get(5),
        tag: row.get(6),
        created_by: row.get(7),
        created_at: row.get(8),
        edited_by: row.get(9),
        edited_at: row.get(10),
        archived: row.get(11),
        version_id: row.get(12),
    }
}

/// Stores a new version (creating the path, or requiring it, as `mode` says); returns its id.
pub async fn save(
    pool: &Pool,
    ws: &WorkspaceId,
    flow: &NewFlowVersion,
    mode: SaveMode,
) -> Result<SaveOutcome, StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let existing = tx
        .query_opt(
            "SELECT archived FROM flows WHERE workspace_id = $1 AND path = $2 FOR UPDATE",
            &[&ws.as_str(), &flow.path.as_str()],
        )
        .await?
        .map(|row| row.get::<_, bool>(0));
    match (mode, existing) {
        (SaveMode::Create, Some(false)) => return Ok(SaveOutcome::AlreadyExists),
        (SaveMode::Update, None) => return Ok(SaveOutcome::NotFound),
        (SaveMode::Create, None) => {
            tx.execute(
                "INSERT INTO flows (workspace_id, path, created_by) VALUES ($1, $2, $3)",
                &[&ws.as_str(), &flow.path.as_str(), &flow.created_by],
            )
            .await?;
        }
        // A new version of an archived flow makes it live again.
        _ => {
            tx.execute(
                "UPDATE flows SET archived = false WHERE workspace_id = $1 AND path = $2",
                &[&ws.as_str(), &flow.path.as_str()],
            )
            .await?;
        }
    }
    let row = tx
        .query_one(
            "INSERT INTO flow_versions (workspace_id, path, summary, description, value, schema,
                                        tag, created_by, deployment_msg)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            &[
                &ws.as_str(),
                &flow.path.as_str(),
                &flow.summary,
                &flow.description,
                &flow.value,
                &flow.schema,
                &flow.tag,
                &flow.created_by,
                &flow.deployment_msg,
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(SaveOutcome::Saved(row.get(0)))
}

/// The newest version at a path, archived or not.
pub async fn latest(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<Option<Flow>, StoreError> {
    let conn = pool.get().await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE v.workspace_id = $1 AND v.path = $2
         ORDER BY v.id DESC LIMIT 1"
    );
    let row = conn
        .query_opt(&sql, &[&ws.as_str(), &path.as_str()])
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// One version, by id.
pub async fn version(pool: &Pool, ws: &WorkspaceId, id: i64) -> Result<Option<Flow>, StoreError> {
    version_on(&**pool.get().await?, ws, id).await
}

/// [`version`] on a given connection or transaction.
pub(super) async fn version_on(
    conn: &impl GenericClient,
    ws: &WorkspaceId,
    id: i64,
) -> Result<Option<Flow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE v.workspace_id = $1 AND v.id = $2");
    let row = conn.query_opt(&sql, &[&ws.as_str(), &id]).await?;
    Ok(row.as_ref().map(from_row))
}

/// Every version at a path, newest first: `(id, created_at, deployment_msg)`.
pub async fn history(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<Vec<(i64, DateTime<Utc>, Option<String>)>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT id, created_at, deployment_msg FROM flow_versions
             WHERE workspace_id = $1 AND path = $2 ORDER BY id DESC",
            &[&ws.as_str(), &path.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// The newest version of every path starting with `path_start`, by path.
pub async fn list(
    pool: &Pool,
    ws: &WorkspaceId,
    path_start: &str,
    show_archived: bool,
) -> Result<Vec<Flow>, StoreError> {
    let conn = pool.get().await?;
    let sql = format!(
        "SELECT DISTINCT ON (v.path) {COLUMNS} FROM {FROM}
         WHERE v.workspace_id = $1 AND starts_with(v.path, $2) AND ($3 OR NOT f.archived)
         ORDER BY v.path, v.id DESC"
    );
    let rows = conn
        .query(&sql, &[&ws.as_str(), &path_start, &show_archived])
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Archives (or revives) a path; false for an unknown path.
pub async fn set_archived(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
    archived: bool,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let updated = conn
        .execute(
            "UPDATE flows SET archived = $3 WHERE workspace_id = $1 AND path = $2",
            &[&ws.as_str(), &path.as_str(), &archived],
        )
        .await?;
    Ok(updated == 1)
}

/// Deletes a path and all its versions; false for an unknown path.
pub async fn delete(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let deleted = conn
        .execute(
            "DELETE FROM flows WHERE workspace_id = $1 AND path = $2",
            &[&ws.as_str(), &path.as_str()],
        )
        .await?;
    Ok(deleted == 1)
}
