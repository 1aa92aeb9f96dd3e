//! Brute-force protection: whoever fails authentication too often in a minute gets 429 with
//! `Retry-After` until the minute is over — for invalid tokens, the client address (a valid
//! token is always served, so one broken client behind a shared address locks out nobody
//! else); for logins, the account and address together, and the address over all accounts.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

pub struct FailureLimiter<K> {
    max_failures: u32,
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq> FailureLimiter<K> {
    pub fn new(max_failures: u32) -> Self {
        Self {
            max_failures,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds to wait)` when the address is locked out.
    pub fn blocked(&self, key: &K) -> Option<u64> {
        let windows = self.windows.lock().expect("limiter lock");
        let (start, failures) = windows.get(key)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*failures >= self.max_failures).then(|| left.as_secs().max(1))
    }

    pub fn record_failure(&self, key: K) {
        let mut windows = self.windows.lock().expect("limiter lock");
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = windows.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn locks_out_after_the_limit() {
        let limiter = FailureLimiter::new(3);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.blocked(&ip), None);
            limiter.record_failure(ip);
        }
        let wait = limiter.blocked(&ip).expect("locked out");
        assert!((1..=60).contains(&wait));
        assert_eq!(limiter.blocked(&other), None);
    }
}
