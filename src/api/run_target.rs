//! Resolves what a run route names (a script path or hash, a flow path or version) into the
//! version a job will run. Script path lookups are cached; every replica drops an entry when
//! `millrace.control.invalidate` says the path changed, so a new version is what `/run/p` runs
//! right after `create` answers. Flow lookups read the store each time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::domain::{JobKind, RunnablePath, ScriptHash, ScriptLang, WorkspaceId};
use crate::queue::control::Invalidate;
use crate::store;

/// A safety net for a lost invalidation: entries are also refreshed after this long.
const TTL: Duration = Duration::from_secs(30);

/// The version a job will run.
#[derive(Debug, Clone)]
pub struct RunTarget {
    pub path: RunnablePath,
    pub tag: Option<String>,
    pub runnable: Runnable,
}

#[derive(Debug, Clone)]
pub enum Runnable {
    Script {
        hash: ScriptHash,
        language: ScriptLang,
        timeout_s: Option<i32>,
    },
    Flow {
        version: i64,
        /// The flow answers sync calls early, with that module's result.
        early_return: bool,
    },
}

impl RunTarget {
    pub fn kind(&self) -> JobKind {
        match self.runnable {
            Runnable::Script { .. } => JobKind::Script,
            Runnable::Flow { .. } => JobKind::Flow,
        }
    }
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
        tag: script.tag,
        runnable: Runnable::Script {
            hash: script.hash,
            language: script.language,
            timeout_s: script.timeout,
        },
    }
}

fn flow_target(flow: store::flows::Flow) -> ApiResult<RunTarget> {
    Ok(RunTarget {
        path: RunnablePath::parse(&flow.path)?,
        tag: flow.tag,
        runnable: Runnable::Flow {
            version: flow.version_id,
            early_return: flow
                .value
                .get("early_return")
                .is_some_and(|v| v.is_string()),
        },
    })
}

/// The live version of the flow at `path`; 404 when there is none (unknown, archived, deleted).
pub async fn flow_by_path(
    state: &AppState,
    ws: &WorkspaceId,
    path: &RunnablePath,
) -> ApiResult<RunTarget> {
    let flow = store::bounded(store::flows::latest(state.pool(), ws, path))
        .await?
        .filter(|f| !f.archived)
        .ok_or_else(|| ApiError::not_found(format!("flow not found at path {path}")))?;
    flow_target(flow)
}

/// Exactly that flow version, archived or not.
pub async fn flow_by_version(
    state: &AppState,
    ws: &WorkspaceId,
    version: i64,
) -> ApiResult<RunTarget> {
    let flow = store::bounded(store::flows::version(state.pool(), ws, version))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("flow version {version} not found")))?;
    flow_target(flow)
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
    // Boxed: the lookup's state would otherwise weigh on every cached call's future.
    let script = Box::pin(store::bounded(store::scripts::latest_by_path(
        state.pool(),
        ws,
        path,
    )))
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
    let script = store::bounded(store::scripts::by_hash(state.pool(), ws, hash))
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
