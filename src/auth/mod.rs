//! Who is calling and what they may do: tokens (random, stored hashed), job tokens (signed,
//! for scripts calling back), the superadmin secret, scopes, workspace roles and path
//! permissions.

mod authenticator;
pub mod job_token;
pub mod permissions;
mod principal;
pub mod scope;
pub mod token;

pub use authenticator::{AuthError, Authenticator, SUPERADMIN_EMAIL};
pub use principal::{Access, Principal};
pub use scope::{Action, Scope};
