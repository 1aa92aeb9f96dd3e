//! What every handler can reach. Cheap to clone: one `Arc`.

use std::sync::Arc;

use super::run_target::ScriptCache;
use crate::auth::Authenticator;
use crate::queue::Bus;
use crate::store::{JobInserter, Pool};

/// The API's settings, resolved from the configuration once.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub max_body_size: usize,
    /// `INCLUDE_HEADERS`, lowercased.
    pub include_headers: Vec<String>,
    pub base_url: String,
    /// `TIMEOUT_WAIT_RESULT`.
    pub timeout_wait_result: std::time::Duration,
    /// `TIMEOUT_SSE_STREAM`.
    pub timeout_sse_stream: std::time::Duration,
    /// `SYNC_ERROR_STATUS`.
    pub sync_error_status: axum::http::StatusCode,
    /// `AUTH_FAILURES_PER_MINUTE`.
    pub auth_failures_per_minute: u32,
    /// `TRUSTED_PROXY_HOPS`.
    pub trusted_proxy_hops: usize,
    /// `IDEMPOTENCY_WINDOW`.
    pub idempotency_window: std::time::Duration,
    /// `MAX_SCHEDULE_AHEAD`.
    pub max_schedule_ahead: std::time::Duration,
    /// `SUBMIT_TIMEOUT`: the longest a submission waits for the INSERT, and for the PubAck.
    pub submit_timeout: std::time::Duration,
    /// `MAX_INFLIGHT_REQUESTS` and `MAX_INFLIGHT_BODY_BYTES`.
    pub max_inflight_requests: usize,
    pub max_inflight_body_bytes: usize,
    /// `/metrics` is served beside the API (`METRICS_BIND_ADDR` empty).
    pub metrics_on_api: bool,
    /// `ENCRYPTION_KEY`, for secrets at rest.
    pub secret_box: Option<crate::crypto::SecretBox>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    settings: ApiSettings,
    pool: Pool,
    bus: Bus,
    inserter: JobInserter,
    /// Run requests and body bytes in flight.
    admission: super::admission::Admission,
    /// Which worker tags have a consumer, looked up briefly.
    served_tags: super::submit::ServedTags,
    auth: Arc<Authenticator>,
    scripts: ScriptCache,
    triggers: super::trigger_cache::TriggerCache,
    openapi: utoipa::openapi::OpenApi,
    /// Invalid tokens, per client address.
    token_failures: super::rate_limit::FailureLimiter<std::net::IpAddr>,
    /// Password hashing and checking, a few at a time.
    argon2: super::passwords::Turns,
    /// Failed logins per account (a digest: a key of bounded size) and address…
    login_failures: super::rate_limit::FailureLimiter<([u8; 32], std::net::IpAddr)>,
    /// …and per address over every account, looser, against guessing across accounts.
    address_login_failures: super::rate_limit::FailureLimiter<std::net::IpAddr>,
}

/// Failed logins one address may make over all accounts, as a multiple of the per-account limit:
/// a shared address (an office NAT) has many users who mistype.
const ADDRESS_LOGIN_FACTOR: u32 = 5;

/// An account's key in the login limiter: a digest of the address as typed, case aside.
fn login_key(email: &str) -> [u8; 32] {
    crate::auth::token::hash(&email.to_lowercase())
}

impl AppState {
    pub fn new(settings: ApiSettings, pool: Pool, bus: Bus, auth: Arc<Authenticator>) -> Self {
        let limit = settings.auth_failures_per_minute;
        let token_failures = super::rate_limit::FailureLimiter::new(limit);
        let login_failures = super::rate_limit::FailureLimiter::new(limit);
        let address_login_failures =
            super::rate_limit::FailureLimiter::new(limit.saturating_mul(ADDRESS_LOGIN_FACTOR));
        let admission = super::admission::Admission::new(
            settings.max_inflight_requests,
            settings.max_inflight_body_bytes,
        );
        Self(Arc::new(Inner {
            inserter: JobInserter::spawn(pool.clone(), settings.submit_timeout),
            settings,
            admission,
            served_tags: Default::default(),
            scripts: ScriptCache::new(),
            triggers: Default::default(),
            openapi: super::openapi_document(),
            token_failures,
            login_failures,
            address_login_failures,
            argon2: super::passwords::Turns::default(),
            pool,
            bus,
            auth,
        }))
    }

    pub fn config(&self) -> &ApiSettings {
        &self.0.settings
    }

    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    pub fn bus(&self) -> &Bus {
        &self.0.bus
    }

    pub fn inserter(&self) -> &JobInserter {
        &self.0.inserter
    }

    pub fn admission(&self) -> &super::admission::Admission {
        &self.0.admission
    }

    pub fn served_tags(&self) -> &super::submit::ServedTags {
        &self.0.served_tags
    }

    pub fn auth(&self) -> &Authenticator {
        &self.0.auth
    }

    pub fn shared_auth(&self) -> Arc<Authenticator> {
        self.0.auth.clone()
    }

    pub fn scripts(&self) -> &ScriptCache {
        &self.0.scripts
    }

    pub fn triggers(&self) -> &super::trigger_cache::TriggerCache {
        &self.0.triggers
    }

    pub fn openapi(&self) -> &utoipa::openapi::OpenApi {
        &self.0.openapi
    }

    pub fn argon2(&self) -> &super::passwords::Turns {
        &self.0.argon2
    }

    /// An invalid token from `ip`: 429 once the address failed too often, else `rejection`.
    pub fn token_failed(
        &self,
        ip: std::net::IpAddr,
        rejection: super::error::ApiError,
    ) -> super::error::ApiError {
        let blocked = self.0.token_failures.blocked(&ip);
        self.0.token_failures.record_failure(ip);
        match blocked {
            Some(wait) => super::error::ApiError::TooManyRequests(wait),
            None => rejection,
        }
    }

    /// 429 while this account is locked out for failed logins from this address.
    pub fn check_login_rate(
        &self,
        email: &str,
        ip: std::net::IpAddr,
    ) -> super::error::ApiResult<()> {
        let blocked = self
            .0
            .login_failures
            .blocked(&(login_key(email), ip))
            .or_else(|| self.0.address_login_failures.blocked(&ip));
        match blocked {
            Some(wait) => Err(super::error::ApiError::TooManyRequests(wait)),
            None => Ok(()),
        }
    }

    pub fn record_login_failure(&self, email: &str, ip: std::net::IpAddr) {
        self.0.login_failures.record_failure((login_key(email), ip));
        self.0.address_login_failures.record_failure(ip);
    }
}

impl AppState {
    /// The caller's role in the workspace named by a route: 404 if it does not exist,
    /// 401 if the caller is not a member.
    pub async fn access(
        &self,
        authed: &super::extract::Authed,
        ws: &str,
    ) -> super::error::ApiResult<(crate::domain::WorkspaceId, crate::auth::Access)> {
        let ws = crate::domain::WorkspaceId::parse(ws)?;
        let access = self.auth().access(&authed.0, &ws).await?;
        Ok((ws, access))
    }
}

/// Applies a broadcast from any replica (this one included) to this replica's caches.
pub fn apply_invalidation(state: &AppState, message: &crate::queue::control::Invalidate) {
    use crate::queue::control::Invalidate;
    match message {
        Invalidate::Script { workspace, path } => state.scripts().forget(workspace, path),
        Invalidate::Token { hash } => {
            if let Ok(hash) = hex::decode(hash) {
                state.auth().forget_token(&hash);
            }
        }
        Invalidate::Members { .. } => state.auth().forget_memberships(),
        Invalidate::Sharing { .. } => state.auth().forget_sharing(),
    }
}
