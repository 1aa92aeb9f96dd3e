use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The languages a script may be written in; each has a runtime in `worker::runtimes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScriptLang {
    Python3,
    Bash,
    Bun,
    Deno,
}

impl ScriptLang {
    pub const ALL: [ScriptLang; 4] = [Self::Python3, Self::Bash, Self::Bun, Self::Deno];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python3 => "python3",
            Self::Bash => "bash",
            Self::Bun => "bun",
            Self::Deno => "deno",
        }
    }
}

impl fmt::Display for ScriptLang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScriptLang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|lang| lang.as_str() == s)
            .ok_or_else(|| format!("unknown language {s:?}: expected python3, bash, bun or deno"))
    }
}
