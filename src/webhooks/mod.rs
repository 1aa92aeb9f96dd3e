//! Webhooks from senders that sign instead of presenting a token (GitHub, Stripe, Slack,
//! Shopify, Standard Webhooks, any HMAC-SHA256 signer): each sender's signature scheme, checked
//! on the raw body before anything parses it, and where each scheme puts its delivery id and
//! event name. Pure functions, no I/O: `api/hooks.rs` serves them.

pub mod delivery;
pub mod scheme;
pub mod verify;

pub use delivery::Delivery;
pub use scheme::{CustomHmac, Encoding, InvalidScheme, Scheme};
pub use verify::Rejected;

/// The request headers a check reads, by lowercase name; the API adapts its header map.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}
