//! Named path parameters shared by several route files.

use serde::Deserialize;

#[derive(Deserialize)]
pub struct WorkspacePath {
    pub workspace: String,
}
