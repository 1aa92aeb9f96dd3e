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
    /// Made by a password login: never announced as expiring or expired.
    pub session: bool,
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
        "INSERT INTO tokens (hash, prefix, email, label, scopes, workspace_id, expiration,
                             session)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &token.hash,
            &token.prefix,
            &token.email,
            &token.label,
            &token.scopes,
            &token.workspace_id,
            &token.expiration,
            &token.session,
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

/// A token as its owner sees it in a listing: never the token itself.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TokenListing {
    pub token_prefix: String,
    pub label: Option<String>,
    pub expiration: Option<DateTime<Utc>>,
    pub scopes: Option<Vec<String>>,
    pub workspace_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

pub async fn list(pool: &Pool, email: &str) -> Result<Vec<TokenListing>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT prefix, label, expiration, scopes, workspace_id, created_at, last_used_at
             FROM tokens WHERE email = $1 ORDER BY created_at DESC",
            &[&email],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TokenListing {
            token_prefix: r.get(0),
            label: r.get(1),
            expiration: r.get(2),
            scopes: r.get(3),
            workspace_id: r.get(4),
            created_at: r.get(5),
            last_used_at: r.get(6),
        })
        .collect())
}

/// Deletes the owner's tokens with this prefix; returns their hashes.
pub async fn delete_by_prefix(
    pool: &Pool,
    email: &str,
    prefix: &str,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "DELETE FROM tokens WHERE email = $1 AND prefix = $2 RETURNING hash",
            &[&email, &prefix],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// One UPDATE for every token used since the last call.
pub async fn touch(pool: &Pool, hashes: &[Vec<u8>]) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute(
        "UPDATE tokens SET last_used_at = now() WHERE hash = ANY($1)",
        &[&hashes],
    )
    .await?;
    Ok(())
}

/// A token reaching the end of its life, for notices.
#[derive(Debug, Clone)]
pub struct ExpiringToken {
    pub prefix: String,
    pub label: Option<String>,
    pub email: String,
    pub expiration: DateTime<Utc>,
    pub workspace_id: Option<String>,
}

fn expiring(row: &tokio_postgres::Row) -> ExpiringToken {
    ExpiringToken {
        prefix: row.get(0),
        label: row.get(1),
        email: row.get(2),
        expiration: row.get(3),
        workspace_id: row.get(4),
    }
}

/// Claims the tokens that expire before `horizon` and were not announced yet. The claim is one
/// UPDATE, so of several replicas sweeping at once exactly one announces each token.
pub async fn claim_expiring(
    pool: &Pool,
    horizon: DateTime<Utc>,
) -> Result<Vec<ExpiringToken>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "UPDATE tokens SET expiring_notified_at = now()
             WHERE expiration IS NOT NULL AND expiration <= $1 AND expiration > now()
               AND expiring_notified_at IS NULL AND NOT session
             RETURNING prefix, label, email, expiration, workspace_id",
            &[&horizon],
        )
        .await?;
    Ok(rows.iter().map(expiring).collect())
}

/// Deletes expired tokens and returns those to announce, login sessions left out (one replica
/// gets each).
pub async fn purge_expired(pool: &Pool) -> Result<Vec<ExpiringToken>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "WITH gone AS (
                 DELETE FROM tokens WHERE expiration IS NOT NULL AND expiration <= now()
                 RETURNING prefix, label, email, expiration, workspace_id, session)
             SELECT prefix, label, email, expiration, workspace_id FROM gone WHERE NOT session",
            &[],
        )
        .await?;
    Ok(rows.iter().map(expiring).collect())
}

/// Deletes a login session by its hash (never an API token); whether there was one.
pub async fn delete_session(pool: &Pool, hash: &[u8]) -> Result<bool, StoreError> {
    let conn = pool.get().await?;
    let deleted = conn
        .execute("DELETE FROM tokens WHERE hash = $1 AND session", &[&hash])
        .await?;
    Ok(deleted > 0)
}
