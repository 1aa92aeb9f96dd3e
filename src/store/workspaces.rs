//! Workspaces and their members.

use crate::domain::{Username, WorkspaceId};

use super::{Pool, StoreError};

/// A user's place in a workspace.
#[derive(Debug, Clone)]
pub struct Membership {
    pub username: Username,
    pub is_admin: bool,
    pub operator: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AddMember {
    Added,
    UnknownUser,
    AlreadyMember,
}

/// Creates the workspace, with `admin` as its first admin when given; false if the id is taken.
pub async fn create(
    pool: &Pool,
    id: &WorkspaceId,
    name: &str,
    created_by: &str,
    admin: Option<(&str, &Username)>,
) -> Result<bool, StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO workspaces (id, name, created_by) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
            &[&id.as_str(), &name, &created_by],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    if let Some((email, username)) = admin {
        tx.execute(
            "INSERT INTO workspace_members (workspace_id, email, username, is_admin)
             VALUES ($1, $2, $3, true)",
            &[&id.as_str(), &email, &username.as_str()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub async fn exists(pool: &Pool, id: &WorkspaceId) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt("SELECT 1 FROM workspaces WHERE id = $1", &[&id.as_str()])
        .await?;
    Ok(row.is_some())
}

pub async fn add_member(
    pool: &Pool,
    id: &WorkspaceId,
    email: &str,
    member: &Membership,
) -> Result<AddMember, StoreError> {
    let conn = pool.get().await?;
    let user = conn
        .query_opt("SELECT 1 FROM users WHERE email = $1", &[&email])
        .await?;
    if user.is_none() {
        return Ok(AddMember::UnknownUser);
    }
    let inserted = conn
        .execute(
            "INSERT INTO workspace_members (workspace_id, email, username, is_admin, operator)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &id.as_str(),
                &email,
                &member.username.as_str(),
                &member.is_admin,
                &member.operator,
            ],
        )
        .await?;
    Ok(if inserted == 1 {
        AddMember::Added
    } else {
        AddMember::AlreadyMember
    })
}

pub async fn membership(
    pool: &Pool,
    id: &WorkspaceId,
    email: &str,
) -> Result<Option<Membership>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT username, is_admin, operator FROM workspace_members
             WHERE workspace_id = $1 AND email = $2",
            &[&id.as_str(), &email],
        )
        .await?;
    Ok(row.and_then(|row| {
        Some(Membership {
            username: Username::parse(row.get(0)).ok()?,
            is_admin: row.get(1),
            operator: row.get(2),
        })
    }))
}

/// A workspace as the caller sees it in the list of theirs.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WorkspaceListing {
    pub id: String,
    pub name: String,
    pub username: String,
    pub is_admin: bool,
    pub operator: bool,
}

/// The workspaces `email` is a member of, by id.
pub async fn list_for(pool: &Pool, email: &str) -> Result<Vec<WorkspaceListing>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT w.id, w.name, m.username, m.is_admin, m.operator
             FROM workspace_members m JOIN workspaces w ON w.id = m.workspace_id
             WHERE m.email = $1 ORDER BY w.id",
            &[&email],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WorkspaceListing {
            id: r.get(0),
            name: r.get(1),
            username: r.get(2),
            is_admin: r.get(3),
            operator: r.get(4),
        })
        .collect())
}

/// Every workspace (id, name), by id.
pub async fn list_all(pool: &Pool) -> Result<Vec<(String, String)>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query("SELECT id, name FROM workspaces ORDER BY id", &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
