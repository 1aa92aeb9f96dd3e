//! Sharing one script with a user or group (Windmill's `acls` routes).

use axum::extract::{Path, State};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::folders::check_grantee;
use super::{authorize, AppState};
use crate::domain::{JobKind, RunnablePath};
use crate::store::acl;

#[derive(Deserialize)]
pub struct ItemPath {
    workspace: String,
    kind: String,
    path: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Grant {
    /// `u/<user>` or `g/<group>`.
    owner: String,
    /// true: may change it; false: may read and run it.
    #[serde(default)]
    write: bool,
}

fn kind(raw: &str) -> ApiResult<JobKind> {
    match raw {
        "script" => Ok(JobKind::Script),
        "flow" => Ok(JobKind::Flow),
        other => Err(ApiError::bad_request(format!(
            "cannot share a {other:?}: expected script or flow"
        ))),
    }
}

async fn change(
    state: &AppState,
    authed: &Authed,
    params: &ItemPath,
    grantee: &str,
    grant: Option<bool>,
) -> ApiResult<String> {
    let (ws, access) = state.access(authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    let kind = kind(&params.kind)?;
    let path = RunnablePath::parse(&params.path)?;
    check_grantee(grantee)?;
    authorize::read(state, &ws, &access, kind, path.as_str()).await?;
    authorize::write(state, &ws, &access, kind, path.as_str()).await?;
    let kind = kind.as_str();
    match grant {
        Some(write) => acl::grant(state.pool(), &ws, kind, path.as_str(), grantee, write).await?,
        None => {
            if !acl::revoke(state.pool(), &ws, kind, path.as_str(), grantee).await? {
                return Err(ApiError::not_found(format!(
                    "{path} is not shared with {grantee}"
                )));
            }
        }
    }
    super::users::sharing_changed(state, &ws).await;
    Ok(path.to_string())
}

/// Share an item (writers of the item).
#[utoipa::path(post, path = "/api/w/{workspace}/acls/add/{kind}/{*path}", tag = "sharing",
    params(("workspace" = String, Path), ("kind" = String, Path), ("path" = String, Path)),
    request_body = Grant, responses((status = 200, body = String), (status = 403), (status = 404)))]
pub async fn add(
    State(state): State<AppState>,
    Path(params): Path<ItemPath>,
    authed: Authed,
    JsonBody(body): JsonBody<Grant>,
) -> ApiResult<String> {
    change(&state, &authed, &params, &body.owner, Some(body.write)).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Ungrant {
    owner: String,
}

/// Stop sharing an item.
#[utoipa::path(post, path = "/api/w/{workspace}/acls/remove/{kind}/{*path}", tag = "sharing",
    params(("workspace" = String, Path), ("kind" = String, Path), ("path" = String, Path)),
    request_body = Ungrant, responses((status = 200, body = String), (status = 404)))]
pub async fn remove(
    State(state): State<AppState>,
    Path(params): Path<ItemPath>,
    authed: Authed,
    JsonBody(body): JsonBody<Ungrant>,
) -> ApiResult<String> {
    change(&state, &authed, &params, &body.owner, None).await
}
