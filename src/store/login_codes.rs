//! One-time login codes, stored by SHA-256 hash only: redeeming one deletes it.

use chrono::{DateTime, Utc};

use super::{Pool, StoreError};

/// Stores a code for `email`, valid until `expires_at`; purges the codes that expired.
pub async fn insert(
    pool: &Pool,
    hash: &[u8],
    email: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let conn = pool.get().await?;
    conn.execute("DELETE FROM login_codes WHERE expires_at <= now()", &[])
        .await?;
    conn.execute(
        "INSERT INTO login_codes (hash, email, expires_at) VALUES ($1, $2, $3)",
        &[&hash, &email, &expires_at],
    )
    .await?;
    Ok(())
}

/// Takes the code: the owner's email if it existed and had not expired. Either way it is
/// gone afterwards, so of two concurrent redemptions at most one gets the email.
pub async fn redeem(pool: &Pool, hash: &[u8]) -> Result<Option<String>, StoreError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "DELETE FROM login_codes WHERE hash = $1 RETURNING email, expires_at > now()",
            &[&hash],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, bool>(1).then(|| r.get(0))))
}
