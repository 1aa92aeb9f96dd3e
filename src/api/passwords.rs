//! Passwords (Argon2): slow on purpose, so hashing and checking run on blocking threads, a few
//! at a time per process — a burst of logins waits its turn instead of stalling every request
//! on the async threads.

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};

use super::error::{ApiError, ApiResult};
use super::AppState;

/// Argon2 computations one API process runs at once.
pub const PARALLEL: usize = 2;

/// Runs `work` on a blocking thread once one of the process's Argon2 turns is free.
async fn in_turn<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let _turn = state.argon2_turn().await?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal {
            context: "password hashing failed",
            detail: e.to_string(),
        })
}

fn hash_now(password: &str) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal {
            context: "password hashing failed",
            detail: e.to_string(),
        })
}

pub async fn hash(state: &AppState, password: String) -> ApiResult<String> {
    in_turn(state, move || hash_now(&password)).await?
}

/// Whether `password` matches `stored`. Without a stored hash (an unknown user) a dummy one is
/// checked, so the time taken does not tell who exists.
pub async fn verify(state: &AppState, password: String, stored: Option<String>) -> ApiResult<bool> {
    in_turn(state, move || {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = DUMMY.get_or_init(|| hash_now("not a password").unwrap_or_default());
        let checked = stored.as_deref().unwrap_or(dummy);
        let matches = PasswordHash::new(checked)
            .map(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false);
        matches && stored.is_some()
    })
    .await
}
