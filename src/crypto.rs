//! Secrets at rest: AES-256-GCM under the instance key (`ENCRYPTION_KEY`), so that a database
//! dump or backup alone reveals no webhook trigger secret. Each value gets a fresh random nonce;
//! the stored form is `version ‖ nonce ‖ ciphertext+tag`. The additional data names the row a
//! value belongs to, so a ciphertext copied into another row does not decrypt there.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;

/// The layout of a sealed value, so that another algorithm or key can be told apart later.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ENCRYPTION_KEY must be 32 bytes, written as 64 hex digits or in base64")]
    BadKey,
    #[error("a stored secret cannot be decrypted: another ENCRYPTION_KEY, or altered data")]
    Undecryptable,
}

/// Seals and opens secrets with the instance key. Cheap to clone.
#[derive(Clone)]
pub struct SecretBox(Aes256Gcm);

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    /// The key as `ENCRYPTION_KEY` gives it: 32 bytes in hex (`openssl rand -hex 32`) or
    /// base64 (`openssl rand -base64 32`).
    pub fn from_key(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| CryptoError::BadKey)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| CryptoError::BadKey)?
        };
        Aes256Gcm::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| CryptoError::BadKey)
    }

    /// `plaintext` encrypted for the row named by `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        let ciphertext = self
            .0
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("AES-GCM encrypts any message of a sane size");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// The plaintext of a value sealed for the row named by `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        let (&version, rest) = sealed.split_first().ok_or(CryptoError::Undecryptable)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(CryptoError::Undecryptable);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        self.0
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn seals_and_opens_for_the_same_row_only() {
        let sealed_box = SecretBox::from_key(KEY).unwrap();
        let sealed = sealed_box.seal(b"s3cret", "row-a");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_ne!(sealed, sealed_box.seal(b"s3cret", "row-a"), "fresh nonce");
        assert_eq!(sealed_box.open(&sealed, "row-a").unwrap(), b"s3cret");
        assert_eq!(
            sealed_box.open(&sealed, "row-b"),
            Err(CryptoError::Undecryptable)
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(sealed_box.open(&altered, "row-a").is_err());
        let other = SecretBox::from_key(&"ab".repeat(32)).unwrap();
        assert!(other.open(&sealed, "row-a").is_err());
    }

    #[test]
    fn keys_are_32_bytes_in_hex_or_base64() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretBox::from_key(&b64).is_ok());
        assert!(SecretBox::from_key(&format!("{KEY}\n")).is_ok());
        for bad in ["", "short", &KEY[..62], &"zz".repeat(32)] {
            assert_eq!(
                SecretBox::from_key(bad).unwrap_err(),
                CryptoError::BadKey,
                "{bad}"
            );
        }
    }
}
