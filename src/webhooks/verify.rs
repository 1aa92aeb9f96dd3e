//! Signature checks, each exactly as its sender documents it, on the raw body and before
//! anything parses it. Comparisons are constant-time (`Mac::verify_slice`); any one of several
//! signatures (a sender rotating its secret sends two) matched by any one of the trigger's keys
//! (its secret, and the previous one during a rotation overlap) is enough.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::scheme::{CustomHmac, Encoding, Scheme};
use super::Headers;

type HmacSha256 = Hmac<Sha256>;

/// Why a request is refused (answered 401; the text names no secret and echoes no body).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("missing {0} header")]
    Missing(String),
    #[error("invalid webhook signature")]
    Invalid,
    #[error("webhook timestamp outside the tolerance")]
    Stale,
}

/// What a check needs besides the request: the keys to try and the clock.
pub struct Keys<'a> {
    pub keys: &'a [Vec<u8>],
    pub tolerance_secs: i64,
    pub now: i64,
}

impl Scheme {
    /// Ok when the request carries a valid signature of its body by one of `keys`.
    pub fn verify(
        &self,
        headers: &dyn Headers,
        body: &[u8],
        keys: &Keys<'_>,
    ) -> Result<(), Rejected> {
        match self {
            Self::Standard => standard(headers, body, keys),
            Self::Github => {
                let value = required(headers, "x-hub-signature-256")?;
                let sig = value.strip_prefix("sha256=").ok_or(Rejected::Invalid)?;
                matches(keys, &[body], &[hex_decode(sig)?])
            }
            Self::Stripe => stripe(headers, body, keys),
            Self::Slack => {
                let ts = required(headers, "x-slack-request-timestamp")?;
                let value = required(headers, "x-slack-signature")?;
                fresh(ts, keys)?;
                let sig = value.strip_prefix("v0=").ok_or(Rejected::Invalid)?;
                let signed: [&[u8]; 4] = [b"v0:", ts.as_bytes(), b":", body];
                matches(keys, &signed, &[hex_decode(sig)?])
            }
            Self::Shopify => {
                let sig = required(headers, "x-shopify-hmac-sha256")?;
                matches(keys, &[body], &[base64_decode(sig)?])
            }
            Self::HmacSha256(custom) => generic(custom, headers, body, keys),
        }
    }
}

/// Standard Webhooks (https://www.standardwebhooks.com, "Verifying webhook authenticity"):
/// base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` is a
/// space-separated list of `v1,<signature>` (other versions are skipped).
fn standard(headers: &dyn Headers, body: &[u8], keys: &Keys<'_>) -> Result<(), Rejected> {
    let id = required(headers, "webhook-id")?;
    let ts = required(headers, "webhook-timestamp")?;
    let list = required(headers, "webhook-signature")?;
    fresh(ts, keys)?;
    let candidates: Vec<Vec<u8>> = list
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| base64_decode(sig).ok())
        .collect();
    let signed: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
    matches(keys, &signed, &candidates)
}

/// Stripe (https://docs.stripe.com/webhooks#verify-manually): `Stripe-Signature` is
/// `t=<unix time>,v1=<hex>[,v1=<hex>…][,v0=…]`, each `v1` the HMAC-SHA256 of `{t}.{body}`.
fn stripe(headers: &dyn Headers, body: &[u8], keys: &Keys<'_>) -> Result<(), Rejected> {
    let value = required(headers, "stripe-signature")?;
    let mut ts = None;
    let mut candidates = Vec::new();
    for pair in value.split(',') {
        match pair.trim().split_once('=') {
            Some(("t", t)) => ts = Some(t),
            Some(("v1", sig)) => candidates.extend(hex_decode(sig).ok()),
            _ => {}
        }
    }
    let ts = ts.ok_or(Rejected::Invalid)?;
    fresh(ts, keys)?;
    let signed: [&[u8]; 3] = [ts.as_bytes(), b".", body];
    matches(keys, &signed, &candidates)
}

fn generic(
    custom: &CustomHmac,
    headers: &dyn Headers,
    body: &[u8],
    keys: &Keys<'_>,
) -> Result<(), Rejected> {
    let value = required(headers, &custom.header)?;
    let sig = value
        .strip_prefix(custom.prefix.as_str())
        .ok_or(Rejected::Invalid)?;
    let decoded = match custom.encoding {
        Encoding::Hex => hex_decode(sig)?,
        Encoding::Base64 => base64_decode(sig)?,
    };
    matches(keys, &[body], &[decoded])
}

fn required<'h>(headers: &'h dyn Headers, name: &str) -> Result<&'h str, Rejected> {
    headers
        .get(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Rejected::Missing(name.to_owned()))
}

/// A signed timestamp (Unix seconds) within the tolerance of now, either way: an old one is a
/// replay, one from the future a clock to distrust.
fn fresh(ts: &str, keys: &Keys<'_>) -> Result<(), Rejected> {
    let ts: i64 = ts.parse().map_err(|_| Rejected::Invalid)?;
    if keys.now.abs_diff(ts) > keys.tolerance_secs.unsigned_abs() {
        return Err(Rejected::Stale);
    }
    Ok(())
}

/// Whether any key's HMAC of the concatenated `parts` equals any candidate, compared in
/// constant time.
fn matches(keys: &Keys<'_>, parts: &[&[u8]], candidates: &[Vec<u8>]) -> Result<(), Rejected> {
    let found = keys.keys.iter().any(|key| {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        candidates
            .iter()
            .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    });
    if found {
        Ok(())
    } else {
        Err(Rejected::Invalid)
    }
}

fn hex_decode(text: &str) -> Result<Vec<u8>, Rejected> {
    hex::decode(text.trim()).map_err(|_| Rejected::Invalid)
}

fn base64_decode(text: &str) -> Result<Vec<u8>, Rejected> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| Rejected::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, String>);

    impl Headers for Map {
        fn get(&self, name: &str) -> Option<&str> {
            self.0.get(name).map(String::as_str)
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> Map {
        Map(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    /// The example of the Standard Webhooks reference libraries' tests.
    #[test]
    fn standard_webhooks_reference_vector() {
        let key = Scheme::Standard
            .signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let keys = [key];
        let at = |now| Keys {
            keys: &keys,
            tolerance_secs: 300,
            now,
        };
        let h = |sig: &str| {
            headers(&[
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
                ("webhook-timestamp", "1614265330"),
                ("webhook-signature", sig),
            ])
        };
        let ok = Scheme::Standard.verify(&h(sig), body, &at(1614265330));
        assert_eq!(ok, Ok(()));
        let several = format!("v1a,xyz v1,AAAA {sig}");
        assert_eq!(
            Scheme::Standard.verify(&h(&several), body, &at(1614265330)),
            Ok(())
        );
        assert_eq!(
            Scheme::Standard.verify(&h(sig), b"{\"test\": 2432232315}", &at(1614265330)),
            Err(Rejected::Invalid)
        );
        assert_eq!(
            Scheme::Standard.verify(&h(sig), body, &at(1614265330 + 301)),
            Err(Rejected::Stale)
        );
        assert_eq!(
            Scheme::Standard.verify(&headers(&[]), body, &at(1614265330)),
            Err(Rejected::Missing("webhook-id".into()))
        );
    }

    /// Headers made by the senders' own code: standardwebhooks 1.3.0 `Webhook.sign`,
    /// slack_sdk 3.48.0 `SignatureVerifier.generate_signature`, stripe 16.1.0
    /// `WebhookSignature._compute_signature` (accepted by its `verify_header`), and the example
    /// of GitHub's "Validating webhook deliveries" page.
    #[test]
    fn signatures_made_by_the_senders_sdks() {
        let body = br#"{"id":"evt_1","type":"invoice.paid","event_id":"Ev1"}"#;
        let ts = "1700000000";
        let check = |scheme: Scheme, secret: &str, pairs: &[(&'static str, &str)], body: &[u8]| {
            let keys = [scheme.signing_key(secret).unwrap()];
            let keys = Keys {
                keys: &keys,
                tolerance_secs: 300,
                now: 1_700_000_100,
            };
            scheme.verify(&headers(pairs), body, &keys)
        };
        let standard = [
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", ts),
            (
                "webhook-signature",
                "v1,PSeRxuaXDn3CHxs9HWVDS25Ziw828F/ijJ7dA4nWSPI=",
            ),
        ];
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(check(Scheme::Standard, secret, &standard, body), Ok(()));
        let slack = [
            ("x-slack-request-timestamp", ts),
            (
                "x-slack-signature",
                "v0=a7fa1e74fcbb71ffab320960064fc3ccbd8a355d3f1428a228341eea8124b4ba",
            ),
        ];
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        assert_eq!(check(Scheme::Slack, secret, &slack, body), Ok(()));
        let stripe = [(
            "stripe-signature",
            "t=1700000000,v1=121b809bf4ed57dc8f2afa97672a322c42d2ad0dd8ecbe28f330865a6c2a75f0",
        )];
        assert_eq!(
            check(Scheme::Stripe, "whsec_test_secret", &stripe, body),
            Ok(())
        );
        let github = [(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )];
        let secret = "It's a Secret to Everybody";
        assert_eq!(
            check(Scheme::Github, secret, &github, b"Hello, World!"),
            Ok(())
        );
    }

    #[test]
    fn prefixes_and_encodings() {
        let keys = [b"k".to_vec()];
        let now = Keys {
            keys: &keys,
            tolerance_secs: 300,
            now: 0,
        };
        let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
        mac.update(b"body");
        let digest = mac.finalize().into_bytes();
        let github = format!("sha256={}", hex::encode(digest));
        let h = headers(&[("x-hub-signature-256", &github)]);
        assert_eq!(Scheme::Github.verify(&h, b"body", &now), Ok(()));
        let bare = headers(&[("x-hub-signature-256", &hex::encode(digest))]);
        assert_eq!(
            Scheme::Github.verify(&bare, b"body", &now),
            Err(Rejected::Invalid)
        );
        let custom = Scheme::HmacSha256(CustomHmac {
            header: "x-sig".into(),
            encoding: Encoding::Base64,
            prefix: String::new(),
        });
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        assert_eq!(
            custom.verify(&headers(&[("x-sig", &b64)]), b"body", &now),
            Ok(())
        );
        assert_eq!(
            Scheme::Shopify.verify(&headers(&[("x-shopify-hmac-sha256", &b64)]), b"body", &now),
            Ok(())
        );
    }
}
