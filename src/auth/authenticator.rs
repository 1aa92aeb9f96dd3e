//! Turns a presented token into a [`Principal`], and a principal plus a workspace into an
//! [`Access`]. Both answers are cached for a few seconds so the database stays off the hot path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use subtle::ConstantTimeEq;

use super::job_token::{self, JobClaims};
use super::{token, Access, Principal};
use crate::domain::{Username, WorkspaceId};
use crate::store::{self, workspaces::Membership, Pool, StoreError};

/// How long a positive answer is reused before the store is asked again.
const CACHE_TTL: Duration = Duration::from_secs(5);
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
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(key, (value, Instant::now()));
    }
}

pub struct Authenticator {
    pool: Pool,
    superadmin_hash: Option<[u8; 32]>,
    job_key: Vec<u8>,
    tokens: TtlCache<[u8; 32], (Principal, Option<chrono::DateTime<Utc>>)>,
    members: TtlCache<(String, String), Option<Membership>>,
    workspaces: TtlCache<String, ()>,
}

impl Authenticator {
    pub fn new(pool: Pool, superadmin_secret: Option<&str>, job_key: Vec<u8>) -> Self {
        Self {
            pool,
            superadmin_hash: superadmin_secret.map(token::hash),
            job_key,
            tokens: TtlCache::new(),
            members: TtlCache::new(),
            workspaces: TtlCache::new(),
        }
    }

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
                scopes: claims.scopes,
                workspace: Some(claims.workspace),
            });
        }
        let hash = token::hash(presented);
        if let Some(expected) = &self.superadmin_hash {
            if bool::from(expected.ct_eq(&hash)) {
                return Ok(superadmin());
            }
        }
        if let Some((principal, expiration)) = self.tokens.get(&hash) {
            return match expiration {
                Some(at) if at <= Utc::now() => Err(AuthError::InvalidToken),
                _ => Ok(principal),
            };
        }
        let owner = store::tokens::find(&self.pool, &hash)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let principal = Principal {
            email: owner.email,
            super_admin: owner.super_admin,
            scopes: owner.scopes,
            workspace: owner.workspace_id,
        };
        self.tokens.put(hash, (principal.clone(), owner.expiration));
        match owner.expiration {
            Some(at) if at <= Utc::now() => Err(AuthError::InvalidToken),
            _ => Ok(principal),
        }
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
                let m = store::workspaces::membership(&self.pool, ws, &principal.email).await?;
                self.members.put(key, m.clone());
                m
            }
        };
        match membership {
            Some(m) => Ok(Access {
                principal: principal.clone(),
                username: m.username,
                is_admin: m.is_admin || principal.super_admin,
                operator: m.operator && !principal.super_admin,
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
            }),
            None => Err(AuthError::NotMember(ws.to_string())),
        }
    }

    async fn ensure_workspace(&self, ws: &WorkspaceId) -> Result<(), AuthError> {
        if self.workspaces.get(&ws.to_string()).is_some() {
            return Ok(());
        }
        if store::workspaces::exists(&self.pool, ws).await? {
            self.workspaces.put(ws.to_string(), ());
            Ok(())
        } else {
            Err(AuthError::UnknownWorkspace(ws.to_string()))
        }
    }

    /// Forgets a cached membership (after `add_user`), so the change is seen at once here.
    pub fn forget_member(&self, ws: &WorkspaceId, email: &str) {
        let mut entries = self.members.entries.lock().expect("cache lock");
        entries.remove(&(ws.to_string(), email.to_owned()));
    }

    pub fn sign_job_token(&self, claims: &JobClaims) -> String {
        job_token::sign(&self.job_key, claims)
    }
}

fn superadmin() -> Principal {
    Principal {
        email: SUPERADMIN_EMAIL.to_owned(),
        super_admin: true,
        scopes: None,
        workspace: None,
    }
}
