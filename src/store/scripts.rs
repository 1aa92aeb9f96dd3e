//! Script versions. A version is immutable; "the script at a path" is its newest version.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use crate::domain::{RunnablePath, ScriptHash, ScriptLang, WorkspaceId};

use super::{Pool, StoreError};

/// One stored version, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Script {
    #[schema(value_type = String)]
    pub hash: ScriptHash,
    #[schema(value_type = String)]
    pub path: RunnablePath,
    pub parent_hashes: Vec<String>,
    pub content: String,
    pub language: ScriptLang,
    pub summary: String,
    pub description: String,
    pub schema: Option<serde_json::Value>,
    pub tag: Option<String>,
    pub timeout: Option<i32>,
    /// Its jobs run in a dedicated process that keeps the imported script between jobs.
    pub dedicated_worker: bool,
    pub kind: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub archived: bool,
    pub workspace_id: String,
}

/// A version about to be stored.
#[derive(Debug, Clone)]
pub struct NewScript {
    pub hash: ScriptHash,
    pub path: RunnablePath,
    pub parent_hash: Option<ScriptHash>,
    pub content: String,
    pub language: ScriptLang,
    pub summary: String,
    pub description: String,
    pub schema: Option<serde_json::Value>,
    pub tag: Option<String>,
    pub timeout: Option<i32>,
    pub dedicated_worker: bool,
    pub kind: String,
    pub created_by: String,
}

#[derive(Debug)]
pub enum CreateOutcome {
    Created,
    /// The path has a live version and `parent_hash` does not name it.
    PathConflict {
        live: ScriptHash,
    },
    /// `parent_hash` names a version that is not the live one at this path.
    BadParent,
}

const COLUMNS: &str = "hash, path, parent_hashes, content, language, summary, description, \
                       schema, tag, timeout_s, kind, created_by, created_at, archived, workspace_id, \
                       dedicated_worker";

fn from_row(row: &Row) -> Option<Script> {
    Some(Script {
        hash: ScriptHash::parse(row.get(0)).ok()?,
        path: RunnablePath::parse(row.get(1)).ok()?,
        parent_hashes: row.get(2),
        content: row.get(3),
        language: row.get::<_, &str>(4).parse().ok()?,
        summary: row.get(5),
        description: row.get(6),
        schema: row.get(7),
        tag: row.get(8),
        timeout: row.get(9),
        kind: row.get(10),
        created_by: row.get(11),
        created_at: row.get(12),
        archived: row.get(13),
        workspace_id: row.get(14),
        dedicated_worker: row.get(15),
    })
}

/// Stores a new version, archiving its parent, in one transaction that locks the path.
pub async fn create(
    pool: &Pool,
    ws: &WorkspaceId,
    script: &NewScript,
) -> Result<CreateOutcome, StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    // Serialise creators of the same path: two racing creates must not both become "live".
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))",
        &[&ws.as_str(), &script.path.as_str()],
    )
    .await?;
    let live = tx
        .query_opt(
            "SELECT hash FROM scripts WHERE workspace_id = $1 AND path = $2 AND NOT archived
             ORDER BY created_at DESC LIMIT 1",
            &[&ws.as_str(), &script.path.as_str()],
        )
        .await?
        .and_then(|row| ScriptHash::parse(row.get(0)).ok());
    match (&live, &script.parent_hash) {
        (Some(live), None) => return Ok(CreateOutcome::PathConflict { live: live.clone() }),
        (Some(live), Some(parent)) if live != parent => {
            return Ok(CreateOutcome::PathConflict { live: live.clone() })
        }
        (None, Some(_)) => return Ok(CreateOutcome::BadParent),
        _ => {}
    }
    if let Some(live) = &live {
        tx.execute(
            "UPDATE scripts SET archived = true WHERE workspace_id = $1 AND hash = $2",
            &[&ws.as_str(), &live.as_str()],
        )
        .await?;
    }
    let parents: Vec<String> = live.iter().map(|h| h.to_string()).collect();
    tx.execute(
        "INSERT INTO scripts (workspace_id, hash, path, parent_hashes, content, language, summary,
                              description, schema, tag, timeout_s, kind, created_by,
                              dedicated_worker)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &ws.as_str(),
            &script.hash.as_str(),
            &script.path.as_str(),
            &parents,
            &script.content,
            &script.language.as_str(),
            &script.summary,
            &script.description,
            &script.schema,
            &script.tag,
            &script.timeout,
            &script.kind,
            &script.created_by,
            &script.dedicated_worker,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(CreateOutcome::Created)
}

/// The newest version at a path, archived or not.
pub async fn latest_by_path(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<Option<Script>, StoreError> {
    latest_by_path_on(&**pool.get().await?, ws, path).await
}

/// [`latest_by_path`] on a given connection or transaction.
pub(super) async fn latest_by_path_on(
    conn: &impl GenericClient,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<Option<Script>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM scripts WHERE workspace_id = $1 AND path = $2
         ORDER BY archived, created_at DESC LIMIT 1"
    );
    let row = conn
        .query_opt(&sql, &[&ws.as_str(), &path.as_str()])
        .await?;
    Ok(row.as_ref().and_then(from_row))
}

pub async fn by_hash(
    pool: &Pool,
    ws: &WorkspaceId,
    hash: &ScriptHash,
) -> Result<Option<Script>, StoreError> {
    by_hash_on(&**pool.get().await?, ws, hash).await
}

/// [`by_hash`] on a given connection or transaction.
pub(super) async fn by_hash_on(
    conn: &impl GenericClient,
    ws: &WorkspaceId,
    hash: &ScriptHash,
) -> Result<Option<Script>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM scripts WHERE workspace_id = $1 AND hash = $2");
    let row = conn
        .query_opt(&sql, &[&ws.as_str(), &hash.as_str()])
        .await?;
    Ok(row.as_ref().and_then(from_row))
}

/// Every version at a path, newest first: `(hash, created_at)`.
pub async fn history(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT hash, created_at FROM scripts WHERE workspace_id = $1 AND path = $2
             ORDER BY created_at DESC",
            &[&ws.as_str(), &path.as_str()],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The live version of every path starting with `path_start`, by path.
pub async fn list_live(
    pool: &Pool,
    ws: &WorkspaceId,
    path_start: &str,
) -> Result<Vec<Script>, StoreError> {
    let conn = pool.get().await?;
    let sql = format!(
        "SELECT DISTINCT ON (path) {COLUMNS} FROM scripts
         WHERE workspace_id = $1 AND NOT archived AND starts_with(path, $2)
         ORDER BY path, created_at DESC"
    );
    let rows = conn.query(&sql, &[&ws.as_str(), &path_start]).await?;
    Ok(rows.iter().filter_map(from_row).collect())
}

/// Archives every version at a path; returns how many rows it touched (0 = unknown path).
pub async fn archive_path(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<u64, StoreError> {
    let conn = pool.get().await?;
    Ok(conn
        .execute(
            "UPDATE scripts SET archived = true WHERE workspace_id = $1 AND path = $2",
            &[&ws.as_str(), &path.as_str()],
        )
        .await?)
}

/// Deletes every version at a path; returns how many it deleted.
pub async fn delete_path(
    pool: &Pool,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> Result<u64, StoreError> {
    let conn = pool.get().await?;
    Ok(conn
        .execute(
            "DELETE FROM scripts WHERE workspace_id = $1 AND path = $2",
            &[&ws.as_str(), &path.as_str()],
        )
        .await?)
}
