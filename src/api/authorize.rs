//! The permission rules of SPEC §4 as the routes apply them: a token's scopes first (403),
//! then the caller's rights on the item (404 for what they cannot see, 403 for what they can
//! see but not change).

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::auth::permissions::{self, PathAcl};
use crate::auth::{Access, Action, Principal};
use crate::domain::{JobKind, WorkspaceId};
use crate::store::jobs::JobRecord;

/// The token's scopes allow the action.
pub fn scope(principal: &Principal, action: Action<'_>) -> ApiResult<()> {
    if principal.allows(action) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "this token's scopes do not allow it".into(),
        ))
    }
}

/// Only a person's unscoped credential may do this (managing users, tokens, workspaces): a
/// running script's `WM_TOKEN` may not mint credentials that outlive its job.
pub fn unscoped(principal: &Principal) -> ApiResult<()> {
    if principal.is_scoped() {
        Err(ApiError::Forbidden("a scoped token cannot do this".into()))
    } else if principal.is_job_token() {
        Err(ApiError::Forbidden("a job's token cannot do this".into()))
    } else {
        Ok(())
    }
}

async fn acl(state: &AppState, ws: &WorkspaceId, kind: JobKind, path: &str) -> ApiResult<PathAcl> {
    Ok(state.auth().path_acl(ws, kind.as_str(), path).await?)
}

pub async fn can_read(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    kind: JobKind,
    path: &str,
) -> ApiResult<bool> {
    if access.is_admin || path.starts_with(&format!("u/{}/", access.username)) {
        return Ok(true);
    }
    Ok(permissions::can_read(
        access,
        path,
        &acl(state, ws, kind, path).await?,
    ))
}

/// Read access, or 404 as if the item did not exist.
pub async fn read(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    kind: JobKind,
    path: &str,
) -> ApiResult<()> {
    if can_read(state, ws, access, kind, path).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "{} not found at path {path}",
            kind.as_str()
        )))
    }
}

/// Write access to a path: 403 otherwise.
pub async fn write(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    kind: JobKind,
    path: &str,
) -> ApiResult<()> {
    if access.operator {
        return Err(ApiError::Forbidden(format!(
            "operators cannot create or change {}s",
            kind.as_str()
        )));
    }
    if access.is_admin || permissions::can_write(access, path, &acl(state, ws, kind, path).await?) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("you cannot write to {path}")))
    }
}

/// Running needs a run scope for the path and read access to it.
pub async fn run(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    kind: JobKind,
    path: &str,
) -> ApiResult<()> {
    let action = match kind {
        JobKind::Script => Action::RunScript(path),
        JobKind::Flow => Action::RunFlow(path),
    };
    scope(&access.principal, action)?;
    read(state, ws, access, kind, path).await
}

/// A job is visible to its creator, to whoever can read its runnable (a flow step's: its flow),
/// and to admins. A scoped token needs `jobs:read` (403 without it), except for the jobs it
/// started itself.
pub async fn see_job(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    job: &JobRecord,
) -> ApiResult<()> {
    let principal = &access.principal;
    let started_it = principal.token_id.is_some() && principal.token_id == job.started_by_token;
    if started_it && principal.can_run_something() {
        return Ok(());
    }
    scope(principal, Action::ReadJobs)?;
    let visible = access.is_admin
        || job.created_by == access.username.as_str()
        || match runnable_of(state, ws, job).await? {
            Some((kind, path)) => can_read(state, ws, access, kind, &path).await?,
            None => false,
        };
    if visible {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("job {} not found", job.id)))
    }
}

/// What a job runs, for permissions: a flow step counts as its root flow.
pub async fn runnable_of(
    state: &AppState,
    ws: &WorkspaceId,
    job: &JobRecord,
) -> ApiResult<Option<(JobKind, String)>> {
    if let Some(root) = job.root_job.filter(|_| job.flow_step_id.is_some()) {
        let flow = crate::store::jobs::get(state.pool(), ws, root).await?;
        return Ok(flow.and_then(|f| f.script_path).map(|p| (JobKind::Flow, p)));
    }
    let kind = if job.job_kind == JobKind::Flow.as_str() {
        JobKind::Flow
    } else {
        JobKind::Script
    };
    Ok(job.script_path.clone().map(|p| (kind, p)))
}
