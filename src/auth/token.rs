//! User tokens: 32 random alphanumeric characters, known to their owner only; the store keeps
//! their SHA-256.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

pub const TOKEN_LEN: usize = 32;
/// Characters of a token shown in listings and used to delete it.
pub const PREFIX_LEN: usize = 10;

pub fn generate() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), TOKEN_LEN)
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn prefix(token: &str) -> &str {
    &token[..PREFIX_LEN.min(token.len())]
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = super::generate();
        let b = super::generate();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert_ne!(super::hash(&a), super::hash(&b));
        assert_eq!(super::prefix(&a).len(), 10);
    }
}
