//! `WM_TOKEN` for a running script: a signed, self-contained token that lets the script call the
//! API with the rights of the job (its owner, narrowed by the triggering token's scopes), and
//! expires shortly after the job's timeout. Stateless, so starting a job costs no token INSERT.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::JobId;

const PREFIX: &str = "wmj_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobClaims {
    pub job: JobId,
    pub workspace: String,
    pub email: String,
    pub super_admin: bool,
    pub scopes: Option<Vec<String>>,
    pub exp: DateTime<Utc>,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

pub fn is_job_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

pub fn sign(key: &[u8], claims: &JobClaims) -> String {
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let mut mac = mac(key);
    mac.update(body.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{PREFIX}{body}.{signature}")
}

/// The claims of a token this instance signed and that has not expired.
pub fn verify(key: &[u8], token: &str, now: DateTime<Utc>) -> Option<JobClaims> {
    let rest = token.strip_prefix(PREFIX)?;
    let (body, signature) = rest.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut mac = mac(key);
    mac.update(body.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&signature).ok()?;
    let claims: JobClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
    (claims.exp > now).then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: DateTime<Utc>) -> JobClaims {
        JobClaims {
            job: uuid::Uuid::now_v7(),
            workspace: "w".into(),
            email: "a@b.c".into(),
            super_admin: false,
            scopes: None,
            exp,
        }
    }

    #[test]
    fn signed_tokens_verify_until_they_expire() {
        let now = Utc::now();
        let c = claims(now + chrono::Duration::seconds(60));
        let token = sign(b"key", &c);
        assert!(is_job_token(&token));
        assert_eq!(verify(b"key", &token, now), Some(c.clone()));
        assert_eq!(verify(b"other", &token, now), None);
        assert_eq!(
            verify(b"key", &token, now + chrono::Duration::seconds(61)),
            None
        );
        let tampered = token.replacen("wmj_e", "wmj_f", 1);
        assert_eq!(verify(b"key", &tampered, now), None);
    }
}
