use crate::domain::Username;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub email: String,
    pub super_admin: bool,
    /// `None`: the owner's full rights. Otherwise only what these scopes allow.
    pub scopes: Option<Vec<String>>,
    /// A token made for one workspace works only there.
    pub workspace: Option<String>,
}

/// The caller's role in one workspace.
#[derive(Debug, Clone)]
pub struct Access {
    pub principal: Principal,
    pub username: Username,
    pub is_admin: bool,
    pub operator: bool,
}
