//! API tokens, stored by SHA-256 hash only.

use chrono::{DateTime, Utc};

use super::{Pool, StoreError};

#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub hash: &'a [u8],
    pub prefix: &'a str,
    pub email: &'a str,
    pub label: Option<&'a str>,
    pub scopes: Option<&'a [String]>,
    pub workspace_id: Option<&'a str>,
    pub expiration: Option<DateTime<Utc>>,
}

/// What a token hash resolves to.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub email: String,
    pub super_admin: bool,
    pub scopes: Option<Vec<String>>,
    pub workspace_id: Option<String>,
    pub expiration: Option<DateTime<Utc>>,
}

pub async fn insert(pool: &Pool, token: &NewToken<'_>) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "INSERT INTO tokens (hash, prefix, email, label, scopes, workspace_id, expiration)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &token.hash,
            &token.prefix,
            &token.email,
            &token.label,
            &token.scopes,
            &token.workspace_id,
            &token.expiration,
        ],
    )
    .await?;
    Ok(())
}

pub async fn find(pool: &Pool, hash: &[u8]) -> Result<Option<TokenOwner>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT t.email, u.super_admin, t.scopes, t.workspace_id, t.expiration
             FROM tokens t JOIN users u ON u.email = t.email
             WHERE t.hash = $1",
            &[&hash],
        )
        .await?;
    Ok(row.map(|row| TokenOwner {
        email: row.get(0),
        super_admin: row.get(1),
        scopes: row.get(2),
        workspace_id: row.get(3),
        expiration: row.get(4),
    }))
}
