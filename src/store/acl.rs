//! Groups, folders and per-item sharing: the data behind `auth::permissions`.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::{Pool, StoreError};
use crate::auth::permissions::{FolderAcl, PathAcl};
use crate::domain::WorkspaceId;

/// The implicit group every member belongs to.
pub const ALL_GROUP: &str = "all";

fn perms_map(value: &Value) -> HashMap<String, bool> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_bool()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The groups of a member, `all` first.
pub async fn groups_of(
    pool: &Pool,
    ws: &WorkspaceId,
    username: &str,
) -> Result<Vec<String>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT group_name FROM group_members WHERE workspace_id = $1 AND username = $2",
            &[&ws.as_str(), &username],
        )
        .await?;
    Ok(std::iter::once(ALL_GROUP.to_owned())
        .chain(rows.iter().map(|r| r.get::<_, String>(0)))
        .collect())
}

/// The sharing of a script or flow path: its folder's (for `f/…`) and its own.
pub async fn path_acl(
    pool: &Pool,
    ws: &WorkspaceId,
    kind: &str,
    path: &str,
) -> Result<PathAcl, StoreError> {
    let conn = pool.get().await?;
    let mut acl = PathAcl::default();
    if let Some(folder) = path
        .strip_prefix("f/")
        .and_then(|rest| rest.split('/').next())
    {
        let row = conn
            .query_opt(
                "SELECT owners, extra_perms FROM folders WHERE workspace_id = $1 AND name = $2",
                &[&ws.as_str(), &folder],
            )
            .await?;
        acl.folder = row.map(|row| FolderAcl {
            owners: row.get(0),
            extra_perms: perms_map(&row.get::<_, Value>(1)),
        });
    }
    let rows = conn
        .query(
            "SELECT grantee, write FROM item_perms WHERE workspace_id = $1 AND kind = $2 AND path = $3",
            &[&ws.as_str(), &kind, &path],
        )
        .await?;
    acl.item = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(acl)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Group {
    pub name: String,
    pub summary: Option<String>,
    pub members: Vec<String>,
}

/// False when the name is taken.
pub async fn create_group(
    pool: &Pool,
    ws: &WorkspaceId,
    name: &str,
    summary: Option<&str>,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let inserted = conn
        .execute(
            "INSERT INTO groups (workspace_id, name, summary) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&ws.as_str(), &name, &summary],
        )
        .await?;
    Ok(inserted == 1)
}

/// False when the group does not exist.
pub async fn add_to_group(
    pool: &Pool,
    ws: &WorkspaceId,
    group: &str,
    username: &str,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let exists = conn
        .query_opt(
            "SELECT 1 FROM groups WHERE workspace_id = $1 AND name = $2",
            &[&ws.as_str(), &group],
        )
        .await?;
    if exists.is_none() {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO group_members (workspace_id, group_name, username) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&ws.as_str(), &group, &username],
    )
    .await?;
    Ok(true)
}

pub async fn list_groups(pool: &Pool, ws: &WorkspaceId) -> Result<Vec<Group>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT g.name, g.summary, COALESCE(array_agg(m.username ORDER BY m.username)
                    FILTER (WHERE m.username IS NOT NULL), '{}')
             FROM groups g LEFT JOIN group_members m
               ON m.workspace_id = g.workspace_id AND m.group_name = g.name
             WHERE g.workspace_id = $1 GROUP BY g.name, g.summary ORDER BY g.name",
            &[&ws.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Group {
            name: r.get(0),
            summary: r.get(1),
            members: r.get(2),
        })
        .collect())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Folder {
    pub name: String,
    pub owners: Vec<String>,
    pub extra_perms: Value,
    pub created_by: String,
}

/// False when the name is taken.
pub async fn create_folder(
    pool: &Pool,
    ws: &WorkspaceId,
    folder: &Folder,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let inserted = conn
        .execute(
            "INSERT INTO folders (workspace_id, name, owners, extra_perms, created_by)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &ws.as_str(),
                &folder.name,
                &folder.owners,
                &folder.extra_perms,
                &folder.created_by,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

pub async fn list_folders(pool: &Pool, ws: &WorkspaceId) -> Result<Vec<Folder>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT name, owners, extra_perms, created_by FROM folders WHERE workspace_id = $1 ORDER BY name",
            &[&ws.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Folder {
            name: r.get(0),
            owners: r.get(1),
            extra_perms: r.get(2),
            created_by: r.get(3),
        })
        .collect())
}

/// Shares (or re-shares) an item with a grantee.
pub async fn grant(
    pool: &Pool,
    ws: &WorkspaceId,
    kind: &str,
    path: &str,
    grantee: &str,
    write: bool,
) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "INSERT INTO item_perms (workspace_id, kind, path, grantee, write) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (workspace_id, kind, path, grantee) DO UPDATE SET write = EXCLUDED.write",
        &[&ws.as_str(), &kind, &path, &grantee, &write],
    )
    .await?;
    Ok(())
}

/// Stops sharing an item with a grantee; false if it was not shared with them.
pub async fn revoke(
    pool: &Pool,
    ws: &WorkspaceId,
    kind: &str,
    path: &str,
    grantee: &str,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let removed = conn
        .execute(
            "DELETE FROM item_perms WHERE workspace_id = $1 AND kind = $2 AND path = $3 AND grantee = $4",
            &[&ws.as_str(), &kind, &path, &grantee],
        )
        .await?;
    Ok(removed == 1)
}
