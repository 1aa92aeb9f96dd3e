//! Users: an email, an optional password hash and the superadmin flag.

use super::{Pool, StoreError};

#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub name: Option<String>,
    pub super_admin: bool,
}

/// Creates the user; false if the email is taken.
pub async fn create(
    pool: &Pool,
    user: &User,
    password_hash: Option<&str>,
) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let inserted = conn
        .execute(
            "INSERT INTO users (email, name, password_hash, super_admin) VALUES ($1, $2, $3, $4)
             ON CONFLICT (email) DO NOTHING",
            &[&user.email, &user.name, &password_hash, &user.super_admin],
        )
        .await?;
    Ok(inserted == 1)
}

pub async fn get(pool: &Pool, email: &str) -> Result<Option<User>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT email, name, super_admin FROM users WHERE email = $1",
            &[&email],
        )
        .await?;
    Ok(row.map(|row| User {
        email: row.get(0),
        name: row.get(1),
        super_admin: row.get(2),
    }))
}

/// The stored password hash, if the user has a password.
pub async fn password_hash(pool: &Pool, email: &str) -> Result<Option<String>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT password_hash FROM users WHERE email = $1",
            &[&email],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// The workspaces a user belongs to.
pub async fn workspaces_of(pool: &Pool, email: &str) -> Result<Vec<String>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT workspace_id FROM workspace_members WHERE email = $1",
            &[&email],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
