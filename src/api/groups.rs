//! Groups of users (`g/<name>`), which folders and items are shared with.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::users::members_changed;
use super::{authorize, AppState};
use crate::domain::Username;
use crate::store::acl::{self, Group};

#[derive(Deserialize)]
pub struct GroupPath {
    workspace: String,
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateGroup {
    name: String,
    summary: Option<String>,
}

/// Create a group (workspace admins).
#[utoipa::path(post, path = "/api/w/{workspace}/groups/create", tag = "groups",
    params(("workspace" = String, Path)), request_body = CreateGroup,
    responses((status = 201, body = String), (status = 403), (status = 409)))]
pub async fn create(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    JsonBody(body): JsonBody<CreateGroup>,
) -> ApiResult<(StatusCode, String)> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    if !access.is_admin {
        return Err(ApiError::Forbidden(
            "only workspace admins may create groups".into(),
        ));
    }
    let name = Username::parse(&body.name)
        .map_err(|_| ApiError::bad_request(format!("invalid group name {:?}", body.name)))?;
    if name.as_str() == acl::ALL_GROUP {
        return Err(ApiError::Conflict(
            "group all exists: every member is in it".into(),
        ));
    }
    if !acl::create_group(state.pool(), &ws, name.as_str(), body.summary.as_deref()).await? {
        return Err(ApiError::Conflict(format!("group {name} already exists")));
    }
    Ok((StatusCode::CREATED, name.to_string()))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AddToGroup {
    username: String,
}

/// Add a member to a group (workspace admins).
#[utoipa::path(post, path = "/api/w/{workspace}/groups/adduser/{name}", tag = "groups",
    params(("workspace" = String, Path), ("name" = String, Path)), request_body = AddToGroup,
    responses((status = 200, body = String), (status = 403), (status = 404)))]
pub async fn add_user(
    State(state): State<AppState>,
    Path(params): Path<GroupPath>,
    authed: Authed,
    JsonBody(body): JsonBody<AddToGroup>,
) -> ApiResult<String> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    if !access.is_admin {
        return Err(ApiError::Forbidden(
            "only workspace admins may change groups".into(),
        ));
    }
    let username = Username::parse(&body.username)?;
    if !acl::add_to_group(state.pool(), &ws, &params.name, username.as_str()).await? {
        return Err(ApiError::not_found(format!(
            "group {} not found",
            params.name
        )));
    }
    members_changed(&state, &ws).await;
    Ok(format!("added {username} to group {}", params.name))
}

/// Every group with its members.
#[utoipa::path(get, path = "/api/w/{workspace}/groups/list", tag = "groups",
    params(("workspace" = String, Path)), responses((status = 200, body = Vec<Group>)))]
pub async fn list(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
) -> ApiResult<Json<Vec<Group>>> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    Ok(Json(acl::list_groups(state.pool(), &ws).await?))
}
