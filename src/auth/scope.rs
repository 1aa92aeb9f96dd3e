//! Token scopes (SPEC §4): what a token may do beyond "whatever its owner may".

use std::fmt;

/// Something a request wants to do, as far as scopes are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    RunScript(&'a str),
    RunFlow(&'a str),
    ReadJobs,
    ReadScripts,
    WriteScripts,
    ReadFlows,
    WriteFlows,
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    RunAll,
    RunScripts(String),
    RunFlows(String),
    ReadJobs,
    ReadScripts,
    WriteScripts,
    ReadFlows,
    WriteFlows,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown scope {0:?}")]
pub struct UnknownScope(String);

impl Scope {
    pub fn parse(raw: &str) -> Result<Self, UnknownScope> {
        let scope = match raw {
            "jobs:run" => Self::RunAll,
            "jobs:read" => Self::ReadJobs,
            "scripts:read" => Self::ReadScripts,
            "scripts:write" => Self::WriteScripts,
            "flows:read" => Self::ReadFlows,
            "flows:write" => Self::WriteFlows,
            _ => {
                if let Some(p) = raw
                    .strip_prefix("jobs:run:scripts:")
                    .or_else(|| raw.strip_prefix("run:script/"))
                {
                    Self::RunScripts(p.to_owned())
                } else if let Some(p) = raw
                    .strip_prefix("jobs:run:flows:")
                    .or_else(|| raw.strip_prefix("run:flow/"))
                {
                    Self::RunFlows(p.to_owned())
                } else {
                    return Err(UnknownScope(raw.to_owned()));
                }
            }
        };
        if let Self::RunScripts(p) | Self::RunFlows(p) = &scope {
            if p.is_empty() {
                return Err(UnknownScope(raw.to_owned()));
            }
        }
        Ok(scope)
    }

    pub fn allows(&self, action: Action<'_>) -> bool {
        match (self, action) {
            (Self::RunAll, Action::RunScript(_) | Action::RunFlow(_)) => true,
            (Self::RunScripts(pattern), Action::RunScript(path)) => matches(pattern, path),
            (Self::RunFlows(pattern), Action::RunFlow(path)) => matches(pattern, path),
            (Self::ReadJobs, Action::ReadJobs) => true,
            (Self::ReadScripts | Self::WriteScripts, Action::ReadScripts) => true,
            (Self::WriteScripts, Action::WriteScripts) => true,
            (Self::ReadFlows | Self::WriteFlows, Action::ReadFlows) => true,
            (Self::WriteFlows, Action::WriteFlows) => true,
            _ => false,
        }
    }

    /// A scope that lets its token start jobs (and so poll the jobs it started).
    pub fn runs(&self) -> bool {
        matches!(self, Self::RunAll | Self::RunScripts(_) | Self::RunFlows(_))
    }
}

/// `*` at the end matches any remainder, `/` included; otherwise the path must be equal.
fn matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RunAll => f.write_str("jobs:run"),
            Self::RunScripts(p) => write!(f, "jobs:run:scripts:{p}"),
            Self::RunFlows(p) => write!(f, "jobs:run:flows:{p}"),
            Self::ReadJobs => f.write_str("jobs:read"),
            Self::ReadScripts => f.write_str("scripts:read"),
            Self::WriteScripts => f.write_str("scripts:write"),
            Self::ReadFlows => f.write_str("flows:read"),
            Self::WriteFlows => f.write_str("flows:write"),
        }
    }
}

/// Parses a token's stored scopes; `None` means unrestricted.
pub fn parse_all(raw: &[String]) -> Result<Vec<Scope>, UnknownScope> {
    raw.iter().map(|s| Scope::parse(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_scopes_match_paths_and_wildcards() {
        let one = Scope::parse("jobs:run:scripts:f/billing/charge").unwrap();
        assert!(one.allows(Action::RunScript("f/billing/charge")));
        assert!(!one.allows(Action::RunScript("f/billing/charge2")));
        assert!(!one.allows(Action::RunFlow("f/billing/charge")));
        assert!(!one.allows(Action::ReadJobs));
        let wild = Scope::parse("jobs:run:scripts:f/billing/*").unwrap();
        assert!(wild.allows(Action::RunScript("f/billing/deep/x")));
        assert!(!wild.allows(Action::RunScript("f/other/x")));
        let legacy = Scope::parse("run:flow/u/a/f").unwrap();
        assert_eq!(legacy, Scope::RunFlows("u/a/f".into()));
        assert!(Scope::parse("jobs:run")
            .unwrap()
            .allows(Action::RunFlow("x")));
        assert!(Scope::parse("scripts:write")
            .unwrap()
            .allows(Action::ReadScripts));
        assert!(!Scope::parse("scripts:read")
            .unwrap()
            .allows(Action::WriteScripts));
        assert!(Scope::parse("admin").is_err());
        assert!(Scope::parse("jobs:run:scripts:").is_err());
        assert_eq!(one.to_string(), "jobs:run:scripts:f/billing/charge");
    }
}
