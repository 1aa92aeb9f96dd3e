use super::scope::{Action, Scope};
use crate::domain::Username;

/// Marks the `token_id` of a job's own `WM_TOKEN`.
pub const JOB_TOKEN_ID_PREFIX: &str = "job:";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub email: String,
    pub super_admin: bool,
    /// `None`: the owner's full rights. Otherwise only what these scopes allow.
    pub scopes: Option<Vec<Scope>>,
    /// A token made for one workspace works only there.
    pub workspace: Option<String>,
    /// Names the credential, so a job records which token started it.
    pub token_id: Option<String>,
}

impl Principal {
    /// A user's unrestricted credential.
    pub fn user(email: String, super_admin: bool) -> Self {
        Self {
            email,
            super_admin,
            scopes: None,
            workspace: None,
            token_id: None,
        }
    }

    /// Whether the token's scopes allow the action (the owner's rights are checked apart).
    pub fn allows(&self, action: Action<'_>) -> bool {
        match &self.scopes {
            None => true,
            Some(scopes) => scopes.iter().any(|s| s.allows(action)),
        }
    }

    /// A scoped token may do only what its scopes name; anything else is an unscoped action.
    pub fn is_scoped(&self) -> bool {
        self.scopes.is_some()
    }

    /// The credential a running job received as `WM_TOKEN`.
    pub fn is_job_token(&self) -> bool {
        self.token_id
            .as_deref()
            .is_some_and(|id| id.starts_with(JOB_TOKEN_ID_PREFIX))
    }

    /// Whether the token may start jobs at all (and so poll the jobs it started).
    pub fn can_run_something(&self) -> bool {
        match &self.scopes {
            None => true,
            Some(scopes) => scopes.iter().any(Scope::runs),
        }
    }
}

/// The caller's role in one workspace.
#[derive(Debug, Clone)]
pub struct Access {
    pub principal: Principal,
    pub username: Username,
    pub is_admin: bool,
    pub operator: bool,
    /// The caller's groups in this workspace (`all` included).
    pub groups: Vec<String>,
}
