use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused; the message is safe to show to the caller.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(String);

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

macro_rules! string_id {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

/// `[a-z0-9_-]{1,50}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkspaceId(String);
string_id!(WorkspaceId);

impl WorkspaceId {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let ok = (1..=50).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId(format!(
                "invalid workspace id {raw:?}: expected 1 to 50 of [a-z0-9_-]"
            )))
        }
    }
}

/// A username inside a workspace: one path segment, so that `u/<username>/…` is a valid path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);
string_id!(Username);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if !raw.is_empty() && raw.len() <= 50 && raw.chars().all(is_segment_char) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId(format!(
                "invalid username {raw:?}: expected 1 to 50 of [A-Za-z0-9_-]"
            )))
        }
    }

    /// A username derived from an email's local part, for creators who never chose one.
    pub fn from_email(email: &str) -> Self {
        let local = email.split('@').next().unwrap_or_default();
        let cleaned: String = local
            .chars()
            .map(|c| if is_segment_char(c) { c } else { '_' })
            .take(50)
            .collect();
        if cleaned.is_empty() {
            Self("user".to_owned())
        } else {
            Self(cleaned)
        }
    }
}

/// `u/<user>/<name…>` or `f/<folder>/<name…>`; every segment `[A-Za-z0-9_-]+`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunnablePath(String);
string_id!(RunnablePath);

impl RunnablePath {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let bad = |why: &str| Err(InvalidId(format!("invalid path {raw:?}: {why}")));
        if raw.len() > Self::MAX_LEN {
            return bad("longer than 255 characters");
        }
        let segments: Vec<&str> = raw.split('/').collect();
        if segments.len() < 3 {
            return bad("expected u/<user>/<name> or f/<folder>/<name>");
        }
        if segments[0] != "u" && segments[0] != "f" {
            return bad("must start with u/ or f/");
        }
        for segment in &segments[1..] {
            if segment.is_empty() {
                return bad("empty segment");
            }
            if !segment.chars().all(is_segment_char) {
                return bad("segments may only contain [A-Za-z0-9_-]");
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// The user or folder that owns the path: `("u", "alice")` for `u/alice/x`.
    pub fn owner(&self) -> (&str, &str) {
        let mut parts = self.0.splitn(3, '/');
        let kind = parts.next().unwrap_or_default();
        let name = parts.next().unwrap_or_default();
        (kind, name)
    }
}

/// A script version: 16 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScriptHash(String);
string_id!(ScriptHash);

impl ScriptHash {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if raw.len() == 16 && raw.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId(format!(
                "invalid script hash {raw:?}: expected 16 lowercase hex characters"
            )))
        }
    }

    /// The first 8 bytes of a digest, as hex.
    pub fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(&digest[..8]))
    }
}

/// A job id: a UUID (v7 when Millrace makes it, so ids sort by creation time).
pub type JobId = uuid::Uuid;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(RunnablePath::parse("u/alice/hello").is_ok());
        assert!(RunnablePath::parse("f/billing/deep/er/path_1-x").is_ok());
        for bad in [
            "u/alice",
            "x/alice/a",
            "u//a",
            "u/alice/../x",
            "u/alice/a b",
            "u/alice/a/",
            "",
        ] {
            assert!(RunnablePath::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            RunnablePath::parse("f/ops/x").unwrap().owner(),
            ("f", "ops")
        );
    }

    #[test]
    fn workspaces_and_hashes() {
        assert!(WorkspaceId::parse("acme-1_x").is_ok());
        assert!(WorkspaceId::parse("Acme").is_err());
        assert!(WorkspaceId::parse(&"a".repeat(51)).is_err());
        assert!(ScriptHash::parse("0123456789abcdef").is_ok());
        assert!(ScriptHash::parse("0123456789ABCDEF").is_err());
        assert!(ScriptHash::parse("0123").is_err());
    }

    #[test]
    fn usernames_from_email() {
        assert_eq!(Username::from_email("a.b+c@x.io").as_str(), "a_b_c");
        assert_eq!(Username::from_email("@x.io").as_str(), "user");
    }
}

/// A worker tag: one NATS subject token, `[A-Za-z0-9_-]{1,50}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);
string_id!(Tag);

impl Tag {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if !raw.is_empty() && raw.len() <= 50 && raw.chars().all(is_segment_char) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId(format!(
                "invalid tag {raw:?}: expected 1 to 50 of [A-Za-z0-9_-]"
            )))
        }
    }

    pub fn default_tag() -> Self {
        Self("default".to_owned())
    }
}
