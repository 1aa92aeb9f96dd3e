//! Which signature scheme a trigger checks, and the signing key its secret stands for.

use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidScheme(pub String);

/// How a sender signs its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks (also Svix, Clerk, Resend…): `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature: v1,<base64>…`, `whsec_` secrets.
    Standard,
    /// `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// `Stripe-Signature: t=<ts>,v1=<hex>[,v1=…]`.
    Stripe,
    /// `X-Slack-Signature: v0=<hex>` over `v0:<ts>:<body>`.
    Slack,
    /// `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// HMAC-SHA256 of the body in a header of the trigger's choosing.
    HmacSha256(CustomHmac),
}

/// The header, encoding and prefix of a generic HMAC-SHA256 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomHmac {
    /// Lowercase header name.
    pub header: String,
    pub encoding: Encoding,
    /// Text before the signature, e.g. `sha256=`; empty for none.
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

const WHSEC_PREFIX: &str = "whsec_";
/// Secrets longer than this are certainly a mistake (a whole file pasted).
const MAX_SECRET_LEN: usize = 1024;

impl Scheme {
    /// The scheme named by the API (`custom` is required for, and only for, `hmac_sha256`).
    pub fn parse(name: &str, custom: Option<CustomHmac>) -> Result<Self, InvalidScheme> {
        let scheme = match name {
            "standard" => Self::Standard,
            "github" => Self::Github,
            "stripe" => Self::Stripe,
            "slack" => Self::Slack,
            "shopify" => Self::Shopify,
            "hmac_sha256" => {
                let custom = custom.ok_or_else(|| {
                    InvalidScheme("scheme hmac_sha256 needs signature_header".into())
                })?;
                let header = custom.header.trim().to_ascii_lowercase();
                if header.is_empty()
                    || !header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(InvalidScheme(format!(
                        "invalid signature_header {:?}",
                        custom.header
                    )));
                }
                return Ok(Self::HmacSha256(CustomHmac { header, ..custom }));
            }
            other => {
                return Err(InvalidScheme(format!(
                    "unknown scheme {other:?}: expected standard, github, stripe, slack, \
                     shopify or hmac_sha256"
                )))
            }
        };
        if custom.is_some() {
            return Err(InvalidScheme(format!(
                "signature_header, signature_encoding and signature_prefix only apply to \
                 hmac_sha256, not {name}"
            )));
        }
        Ok(scheme)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::Slack => "slack",
            Self::Shopify => "shopify",
            Self::HmacSha256(_) => "hmac_sha256",
        }
    }

    pub fn custom(&self) -> Option<&CustomHmac> {
        match self {
            Self::HmacSha256(custom) => Some(custom),
            _ => None,
        }
    }

    /// Whether the scheme signs a timestamp, which the trigger's tolerance then bounds.
    pub fn is_timed(&self) -> bool {
        matches!(self, Self::Standard | Self::Stripe | Self::Slack)
    }

    /// The HMAC key a secret stands for: Standard Webhooks secrets are `whsec_<base64 key>`,
    /// every other sender uses the secret's bytes as they are.
    pub fn signing_key(&self, secret: &str) -> Result<Vec<u8>, InvalidScheme> {
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(InvalidScheme(format!(
                "the secret must have 1 to {MAX_SECRET_LEN} characters"
            )));
        }
        match self {
            Self::Standard => {
                let encoded = secret.strip_prefix(WHSEC_PREFIX).ok_or_else(|| {
                    InvalidScheme("a Standard Webhooks secret starts with whsec_".into())
                })?;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
                    .filter(|key| !key.is_empty())
                    .ok_or_else(|| {
                        InvalidScheme("a Standard Webhooks secret is whsec_<base64>".into())
                    })
            }
            _ => Ok(secret.as_bytes().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_secrets() {
        assert_eq!(Scheme::parse("github", None).unwrap(), Scheme::Github);
        assert!(Scheme::parse("gitlab", None).is_err());
        assert!(Scheme::parse("hmac_sha256", None).is_err());
        let custom = CustomHmac {
            header: "X-Signature".into(),
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
        };
        let parsed = Scheme::parse("hmac_sha256", Some(custom.clone())).unwrap();
        assert_eq!(parsed.custom().unwrap().header, "x-signature");
        assert!(Scheme::parse("github", Some(custom)).is_err());
        assert_eq!(
            Scheme::Standard.signing_key("whsec_AAEC").unwrap(),
            vec![0, 1, 2]
        );
        assert!(Scheme::Standard.signing_key("AAEC").is_err());
        assert!(Scheme::Standard.signing_key("whsec_!!").is_err());
        assert_eq!(Scheme::Github.signing_key("abc").unwrap(), b"abc");
        assert!(Scheme::Github.signing_key("").is_err());
    }
}
