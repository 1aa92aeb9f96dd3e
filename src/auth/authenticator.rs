//! Turns a presented token into a [`Principal`], and a principal plus a workspace into an
//! [`Access`]; reads who a path is shared with. The answers are cached for a few seconds so the
//! database stays off the hot path, and dropped at once when a broadcast says they changed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use subtle::ConstantTimeEq;

use super::job_token::{self, JobClaims};
use super::permissions::PathAcl;
use super::principal::JOB_TOKEN_ID_PREFIX;
use super::{token, Access, Principal, Scope};
use crate::domain::{Username, WorkspaceId};
use crate::store::{self, workspaces::Membership, Pool, StoreError};

/// How long a membership or a path's sharing is reused before the store is asked again.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// Tokens are re-read more often: even if a revocation broadcast is lost, a deleted token
/// stops working within this.
const TOKEN_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX: usize = 10_000;

/// The email of the principal that `SUPERADMIN_SECRET` authenticates.
pub const SUPERADMIN_EMAIL: &str = "superadmin@millrace.local";
const SUPERADMIN_USERNAME: &str = "superadmin";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("token is not valid in workspace {0}")]
    WrongWorkspace(String),
    #[error("you are not a member of workspace {0}")]
    NotMember(String),
    #[error("workspace {0} not found")]
    UnknownWorkspace(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    ttl: Duration,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= CACHE_MAX {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        entries.insert(key, (value, Instant::now()));
    }

    fn remove(&self, key: &K) {
        self.entries.lock().expect("cache lock").remove(key);
    }

    fn clear(&self) {
        self.entries.lock().expect("cache lock").clear();
    }
}

/// A member's role and groups, or `None` for a non-member.
type MemberEntry = Option<(Membership, Vec<String>)>;

pub struct Authenticator {
    pool: Pool,
    superadmin_hash: Option<[u8; 32]>,
    job_key: Vec<u8>,
    tokens: TtlCache<[u8; 32], (Principal, Option<chrono::DateTime<Utc>>)>,
    members: TtlCache<(String, String), MemberEntry>,
    workspaces: TtlCache<String, ()>,
    /// (workspace, kind, path) → the sharing of that item and of its folder.
    acls: TtlCache<(String, &'static str, String), PathAcl>,
    /// Tokens used since the last `last_used_at` flush.
    used: Mutex<HashSet<[u8; 32]>>,
}

impl Authenticator {
    pub fn new(pool: Pool, superadmin_secret: Option<&str>, job_key: Vec<u8>) -> Self {
        Self {
            pool,
            superadmin_hash: superadmin_secret.map(token::hash),
            job_key,
            tokens: TtlCache::new(TOKEN_TTL),
            members: TtlCache::new(CACHE_TTL),
            workspaces: TtlCache::new(CACHE_TTL),
            acls: TtlCache::new(CACHE_TTL),
            used: Mutex::new(HashSet::new()),
        }
    }

    /// The store lookups behind a cache miss are boxed here and below: inline, their state would
    /// make every request's future larger, and it is moved and copied as a whole.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        if job_token::is_job_token(presented) {
            let claims = job_token::verify(&self.job_key, presented, Utc::now())
                .ok_or(AuthError::InvalidToken)?;
            return Ok(Principal {
                email: claims.email,
                super_admin: claims.super_admin,
                scopes: claims.scopes.as_deref().map(parse_scopes),
                workspace: Some(claims.workspace),
                token_id: Some(format!("{JOB_TOKEN_ID_PREFIX}{}", claims.job)),
            });
        }
        let hash = token::hash(presented);
        if let Some(expected) = &self.superadmin_hash {
            if bool::from(expected.ct_eq(&hash)) {
                return Ok(superadmin());
            }
        }
        let (principal, expiration) = match self.tokens.get(&hash) {
            Some(cached) => cached,
            None => {
                let owner = Box::pin(store::bounded(store::tokens::find(&self.pool, &hash)))
                    .await?
                    .ok_or(AuthError::InvalidToken)?;
                let principal = Principal {
                    email: owner.email,
                    super_admin: owner.super_admin,
                    scopes: owner.scopes.as_deref().map(parse_scopes),
                    workspace: owner.workspace_id,
                    token_id: Some(hex::encode(&hash[..12])),
                };
                self.tokens.put(hash, (principal.clone(), owner.expiration));
                (principal, owner.expiration)
            }
        };
        if expiration.is_some_and(|at| at <= Utc::now()) {
            return Err(AuthError::InvalidToken);
        }
        self.used.lock().expect("used lock").insert(hash);
        Ok(principal)
    }

    /// Forgets a revoked token at once (called here and on every replica's broadcast).
    pub fn forget_token(&self, hash: &[u8]) {
        if let Ok(hash) = <[u8; 32]>::try_from(hash) {
            self.tokens.remove(&hash);
        }
    }

    /// Forgets every cached membership and group list (a group or member changed).
    pub fn forget_memberships(&self) {
        self.members.clear();
    }

    /// Who the item at `path` is shared with, directly or through its folder.
    pub async fn path_acl(
        &self,
        ws: &WorkspaceId,
        kind: &'static str,
        path: &str,
    ) -> Result<PathAcl, StoreError> {
        let key = (ws.to_string(), kind, path.to_owned());
        if let Some(acl) = self.acls.get(&key) {
            return Ok(acl);
        }
        let acl = Box::pin(store::bounded(store::acl::path_acl(
            &self.pool, ws, kind, path,
        )))
        .await?;
        self.acls.put(key, acl.clone());
        Ok(acl)
    }

    /// Forgets every cached sharing (an item was shared or unshared, or a folder created).
    pub fn forget_sharing(&self) {
        self.acls.clear();
    }

    /// The tokens used since the last call, for one batched `last_used_at` update.
    pub fn take_used(&self) -> Vec<Vec<u8>> {
        let mut used = self.used.lock().expect("used lock");
        used.drain().map(|h| h.to_vec()).collect()
    }

    /// The caller's role in `ws`: 404 for an unknown workspace, 401 for a non-member.
    pub async fn access(
        &self,
        principal: &Principal,
        ws: &WorkspaceId,
    ) -> Result<Access, AuthError> {
        if let Some(only) = &principal.workspace {
            if only != ws.as_str() {
                return Err(AuthError::WrongWorkspace(ws.to_string()));
            }
        }
        self.ensure_workspace(ws).await?;
        let key = (ws.to_string(), principal.email.clone());
        let membership = match self.members.get(&key) {
            Some(m) => m,
            None => {
                let m = match Box::pin(store::bounded(store::workspaces::membership(
                    &self.pool,
                    ws,
                    &principal.email,
                )))
                .await?
                {
                    Some(m) => {
                        let groups = Box::pin(store::bounded(store::acl::groups_of(
                            &self.pool,
                            ws,
                            m.username.as_str(),
                        )))
                        .await?;
                        Some((m, groups))
                    }
                    None => None,
                };
                self.members.put(key, m.clone());
                m
            }
        };
        match membership {
            Some((m, groups)) => Ok(Access {
                principal: principal.clone(),
                username: m.username,
                is_admin: m.is_admin || principal.super_admin,
                operator: m.operator && !principal.super_admin,
                groups,
            }),
            None if principal.super_admin => Ok(Access {
                principal: principal.clone(),
                username: if principal.email == SUPERADMIN_EMAIL {
                    Username::parse(SUPERADMIN_USERNAME).expect("valid username")
                } else {
                    Username::from_email(&principal.email)
                },
                is_admin: true,
                operator: false,
                groups: vec![store::acl::ALL_GROUP.to_owned()],
            }),
            None => Err(AuthError::NotMember(ws.to_string())),
        }
    }

    async fn ensure_workspace(&self, ws: &WorkspaceId) -> Result<(), AuthError> {
        if self.workspaces.get(&ws.to_string()).is_some() {
            return Ok(());
        }
        if Box::pin(store::bounded(store::workspaces::exists(&self.pool, ws))).await? {
            self.workspaces.put(ws.to_string(), ());
            Ok(())
        } else {
            Err(AuthError::UnknownWorkspace(ws.to_string()))
        }
    }

    pub fn sign_job_token(&self, claims: &JobClaims) -> String {
        job_token::sign(&self.job_key, claims)
    }
}

fn superadmin() -> Principal {
    Principal::user(SUPERADMIN_EMAIL.to_owned(), true)
}

/// Stored scopes were checked when the token was made; one that no longer parses grants
/// nothing rather than everything.
fn parse_scopes(raw: &[String]) -> Vec<Scope> {
    raw.iter().filter_map(|s| Scope::parse(s).ok()).collect()
}
