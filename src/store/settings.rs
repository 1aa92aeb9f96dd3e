//! Instance-wide values kept in the database so every process shares them.

use rand::RngCore;

use super::{Pool, StoreError};

/// The key that signs job tokens (`WM_TOKEN`). Made once, on first use, by whichever process
/// gets there first; every API and worker process then reads the same value.
pub async fn job_token_key(pool: &Pool) -> Result<Vec<u8>, StoreError> {
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    let conn = pool.get().await?;
    conn.execute(
        "INSERT INTO instance_settings (key, value) VALUES ('job_token_key', $1)
         ON CONFLICT (key) DO NOTHING",
        &[&hex::encode(fresh)],
    )
    .await?;
    let row = conn
        .query_one(
            "SELECT value FROM instance_settings WHERE key = 'job_token_key'",
            &[],
        )
        .await?;
    let value: String = row.get(0);
    hex::decode(value).map_err(|e| StoreError::Config(format!("corrupt job token key: {e}")))
}
