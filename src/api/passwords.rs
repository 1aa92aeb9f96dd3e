//! Passwords (Argon2): slow on purpose, so hashing and checking run on blocking threads, a few
//! at a time per process — a burst of logins waits its turn instead of stalling every request
//! on the async threads.

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::error::{ApiError, ApiResult};
use super::AppState;

/// Argon2 computations one API process runs at once.
const PARALLEL: usize = 2;

/// How long a password waits for its turn: a flood of logins that keeps every turn busy gets
/// 503s, so the queue of waiters is bounded by the callers' patience, not by memory.
const WAIT: Duration = Duration::from_secs(10);

/// The process's turns at Argon2: at most [`PARALLEL`] computations at once, each on a
/// blocking thread.
pub struct Turns {
    free: Arc<Semaphore>,
    wait: Duration,
}

impl Default for Turns {
    fn default() -> Self {
        Self::new(PARALLEL, WAIT)
    }
}

impl Turns {
    fn new(parallel: usize, wait: Duration) -> Self {
        Self {
            free: Arc::new(Semaphore::new(parallel)),
            wait,
        }
    }

    /// Runs `work` on a blocking thread once a turn is free. The turn goes with the work, not
    /// with the caller: a client that hangs up stops waiting, but its computation runs on to
    /// its end, and until then no other may take its turn.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let turn = match tokio::time::timeout(self.wait, self.free.clone().acquire_owned()).await {
            Ok(turn) => turn.expect("the Argon2 semaphore is never closed"),
            Err(_) => return Err(ApiError::Unavailable("password hashing")),
        };
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work()
        })
        .await
        .map_err(|e| ApiError::Internal {
            context: "password hashing failed",
            detail: e.to_string(),
        })
    }
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
    state.argon2().run(move || hash_now(&password)).await?
}

/// Whether `password` matches `stored`. Without a stored hash (an unknown user) a dummy one is
/// checked, so the time taken does not tell who exists.
pub async fn verify(state: &AppState, password: String, stored: Option<String>) -> ApiResult<bool> {
    state
        .argon2()
        .run(move || {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn argon2_runs_a_bounded_number_at_once_and_waiters_give_up() {
        let turns = Arc::new(Turns::new(2, Duration::from_secs(10)));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let (turns, running, most) = (turns.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    turns
                        .run(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            running.fetch_sub(1, Ordering::SeqCst);
                            i
                        })
                        .await
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), i);
        }
        assert!(most.load(Ordering::SeqCst) <= 2);

        // A waiter whose turn does not come in time is refused, not queued for ever.
        let turns = Arc::new(Turns::new(1, Duration::from_millis(100)));
        let busy = {
            let turns = turns.clone();
            tokio::spawn(async move {
                turns
                    .run(|| std::thread::sleep(Duration::from_millis(600)))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(
            turns.run(|| ()).await,
            Err(ApiError::Unavailable("password hashing"))
        ));
        busy.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_caller_that_hangs_up_keeps_its_turn_until_its_work_ends() {
        let turns = Arc::new(Turns::new(1, Duration::from_secs(10)));
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let gone = {
            let turns = turns.clone();
            tokio::spawn(async move {
                turns
                    .run(move || {
                        started_tx.send(()).unwrap();
                        released.recv().unwrap();
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        gone.abort();
        let next = {
            let turns = turns.clone();
            tokio::spawn(async move { turns.run(|| ()).await })
        };
        // Time enough for the next one to run, were the turn free.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !next.is_finished(),
            "a second computation ran beside the first"
        );
        release.send(()).unwrap();
        next.await.unwrap().unwrap();
    }
}
