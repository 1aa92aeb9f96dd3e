//! Who is calling: tokens (random, stored hashed), job tokens (signed, for scripts calling
//! back), the superadmin secret, and the workspace role of the caller.

mod authenticator;
pub mod job_token;
mod principal;
pub mod token;

pub use authenticator::SUPERADMIN_EMAIL;
pub use authenticator::{AuthError, Authenticator};
pub use principal::{Access, Principal};
