//! Folders: `f/<folder>/…` paths belong to the folder's owners and are shared through its
//! `extra_perms`.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::{authorize, AppState};
use crate::domain::Username;
use crate::store::acl::{self, Folder};

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateFolder {
    name: String,
    /// `u/<user>` or `g/<group>`; the creator when absent.
    owners: Option<Vec<String>>,
    /// `{"u/<user>" | "g/<group>": write}`.
    #[schema(value_type = Object)]
    extra_perms: Option<HashMap<String, bool>>,
}

pub(super) fn check_grantee(grantee: &str) -> ApiResult<()> {
    let valid = grantee
        .split_once('/')
        .is_some_and(|(kind, name)| matches!(kind, "u" | "g") && Username::parse(name).is_ok());
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid owner {grantee:?}: expected u/<user> or g/<group>"
        )))
    }
}

/// Create a folder (members who are not operators).
#[utoipa::path(post, path = "/api/w/{workspace}/folders/create", tag = "folders",
    params(("workspace" = String, Path)), request_body = CreateFolder,
    responses((status = 201, body = String), (status = 400), (status = 403), (status = 409)))]
pub async fn create(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    JsonBody(body): JsonBody<CreateFolder>,
) -> ApiResult<(StatusCode, String)> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    if access.operator {
        return Err(ApiError::Forbidden(
            "operators cannot create folders".into(),
        ));
    }
    let name = Username::parse(&body.name)
        .map_err(|_| ApiError::bad_request(format!("invalid folder name {:?}", body.name)))?;
    let owners = body
        .owners
        .unwrap_or_else(|| vec![format!("u/{}", access.username)]);
    let extra_perms = body.extra_perms.unwrap_or_default();
    for grantee in owners.iter().chain(extra_perms.keys()) {
        check_grantee(grantee)?;
    }
    let folder = Folder {
        name: name.to_string(),
        owners,
        extra_perms: serde_json::to_value(extra_perms).unwrap_or(Value::Null),
        created_by: access.username.to_string(),
    };
    if !acl::create_folder(state.pool(), &ws, &folder).await? {
        return Err(ApiError::Conflict(format!("folder {name} already exists")));
    }
    // A path in it may be cached as in no folder.
    super::users::sharing_changed(&state, &ws).await;
    Ok((StatusCode::CREATED, name.to_string()))
}

/// Every folder with its owners and sharing.
#[utoipa::path(get, path = "/api/w/{workspace}/folders/list", tag = "folders",
    params(("workspace" = String, Path)), responses((status = 200, body = Vec<Folder>)))]
pub async fn list(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
) -> ApiResult<Json<Vec<Folder>>> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    Ok(Json(acl::list_folders(state.pool(), &ws).await?))
}
