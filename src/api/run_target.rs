//! Resolves what a run route names (a path or a hash) into a runnable script version. Path
//! lookups are cached; every replica drops an entry when `millrace.control.invalidate` says the
//! path changed, so a new version is what `/run/p` runs right after `create` answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::domain::{RunnablePath, ScriptHash, ScriptLang, WorkspaceId};
use crate::queue::control::Invalidate;
use crate::store;

/// A safety net for a lost invalidation: entries are also refreshed after this long.
const TTL: Duration = Duration::from_secs(30);

/// The script version a job will run.
#[derive(Debug, Clone)]
pub struct RunTarget {
    pub path: RunnablePath,
    pub hash: ScriptHash,
    pub language: ScriptLang,
    pub tag: Option<String>,
    pub timeout_s: Option<i32>,
}

#[derive(Default)]
pub struct ScriptCache {
    live: Mutex<HashMap<(String, String), (RunTarget, Instant)>>,
}

impl ScriptCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, ws: &WorkspaceId, path: &RunnablePath) -> Option<RunTarget> {
        let live = self.live.lock().expect("cache lock");
        live.get(&(ws.to_string(), path.to_string()))
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(target, _)| target.clone())
    }

    fn put(&self, ws: &WorkspaceId, target: RunTarget) {
        let mut live = self.live.lock().expect("cache lock");
        live.insert(
            (ws.to_string(), target.path.to_string()),
            (target, Instant::now()),
        );
    }

    pub fn forget(&self, workspace: &str, path: &str) {
        let mut live = self.live.lock().expect("cache lock");
        live.remove(&(workspace.to_owned(), path.to_owned()));
    }
}

fn target_of(script: store::scripts::Script) -> RunTarget {
    RunTarget {
        path: script.path,
        hash: script.hash,
        language: script.language,
        tag: script.tag,
        timeout_s: script.timeout,
    }
}

/// The live version at `path`; 404 when there is none (unknown, archived or deleted).
pub async fn by_path(
    state: &AppState,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> ApiResult<RunTarget> {
    if let Some(target) = state.scripts().get(ws, path) {
        return Ok(target);
    }
    let script = store::scripts::latest_by_path(state.pool(), ws, path)
        .await?
        .filter(|s| !s.archived)
        .ok_or_else(|| ApiError::not_found(format!("script not found at path {path}")))?;
    let target = target_of(script);
    state.scripts().put(ws, target.clone());
    Ok(target)
}

/// Exactly that version, archived or not.
pub async fn by_hash(
    state: &AppState,
    ws: &WorkspaceId,
    hash: &ScriptHash,
) -> ApiResult<RunTarget> {
    let script = store::scripts::by_hash(state.pool(), ws, hash)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("script not found with hash {hash}")))?;
    Ok(target_of(script))
}

/// Drops the cached entry here and on every other replica.
pub async fn invalidate(state: &AppState, ws: &WorkspaceId, path: &RunnablePath) -> ApiResult<()> {
    state.scripts().forget(ws.as_str(), path.as_str());
    let message = Invalidate::Script {
        workspace: ws.to_string(),
        path: path.to_string(),
    };
    state.bus().publish_invalidate(&message).await?;
    Ok(())
}
