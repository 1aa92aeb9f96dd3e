//! Bootstrapping identity: workspaces, users, members and tokens (SPEC §4).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::{authorize, passwords, AppState};
use crate::auth::{scope, token, Principal};
use crate::domain::{Username, WorkspaceId};
use crate::queue::control::Invalidate;
use crate::store::tokens::NewToken;
use crate::store::tokens::TokenListing;
use crate::store::workspaces::{AddMember, Membership, WorkspaceListing};
use crate::store::{self, users::User};

fn require_superadmin(principal: &Principal) -> ApiResult<()> {
    if principal.super_admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only a superadmin may do this".into()))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateWorkspace {
    id: String,
    name: String,
}

/// Create a workspace; its creator becomes its first admin.
#[utoipa::path(post, path = "/api/workspaces/create", tag = "workspaces", request_body = CreateWorkspace,
    responses((status = 201, body = String), (status = 400), (status = 409)))]
pub async fn create_workspace(
    State(state): State<AppState>,
    Authed(principal, _): Authed,
    JsonBody(body): JsonBody<CreateWorkspace>,
) -> ApiResult<(StatusCode, String)> {
    authorize::unscoped(&principal)?;
    let id = WorkspaceId::parse(&body.id)?;
    // The superadmin secret is nobody in particular: it creates workspaces without joining them.
    let creator = store::users::get(state.pool(), &principal.email).await?;
    let username = Username::from_email(&principal.email);
    let admin = creator.as_ref().map(|u| (u.email.as_str(), &username));
    if !store::workspaces::create(state.pool(), &id, &body.name, &principal.email, admin).await? {
        return Err(ApiError::Conflict(format!("workspace {id} already exists")));
    }
    Ok((StatusCode::CREATED, id.to_string()))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateUser {
    email: String,
    password: Option<String>,
    #[serde(default)]
    super_admin: bool,
    name: Option<String>,
}

/// Create a user (superadmin only).
#[utoipa::path(post, path = "/api/users/create", tag = "users", request_body = CreateUser,
    responses((status = 201, body = String), (status = 403), (status = 409)))]
pub async fn create_user(
    State(state): State<AppState>,
    Authed(principal, _): Authed,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, String)> {
    authorize::unscoped(&principal)?;
    require_superadmin(&principal)?;
    let email = body.email.trim().to_owned();
    if !email.contains('@') || email.len() > 255 {
        return Err(ApiError::bad_request(format!("invalid email {email:?}")));
    }
    let password_hash = match body.password {
        Some(password) => Some(passwords::hash(&state, password).await?),
        None => None,
    };
    let user = User {
        email: email.clone(),
        name: body.name,
        super_admin: body.super_admin,
    };
    if !store::users::create(state.pool(), &user, password_hash.as_deref()).await? {
        return Err(ApiError::Conflict(format!("user {email} already exists")));
    }
    Ok((StatusCode::CREATED, email))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AddUser {
    email: String,
    username: String,
    #[serde(default)]
    is_admin: bool,
    #[serde(default)]
    operator: bool,
}

/// Add an existing user to the workspace (workspace admins).
#[utoipa::path(post, path = "/api/w/{workspace}/workspaces/add_user", tag = "workspaces",
    params(("workspace" = String, Path)), request_body = AddUser,
    responses((status = 201, body = String), (status = 403), (status = 404), (status = 409)))]
pub async fn add_user(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    JsonBody(body): JsonBody<AddUser>,
) -> ApiResult<(StatusCode, String)> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    if !access.is_admin {
        return Err(ApiError::Forbidden(
            "only workspace admins may add users".into(),
        ));
    }
    let member = Membership {
        username: Username::parse(&body.username)?,
        is_admin: body.is_admin,
        operator: body.operator && !body.is_admin,
    };
    match store::workspaces::add_member(state.pool(), &ws, &body.email, &member).await {
        Ok(AddMember::Added) => {}
        Ok(AddMember::UnknownUser) => {
            return Err(ApiError::not_found(format!(
                "user {} not found",
                body.email
            )))
        }
        Ok(AddMember::AlreadyMember) => {
            return Err(ApiError::Conflict(format!(
                "{} is already a member of {ws}",
                body.email
            )))
        }
        Err(e) if e.is_unique_violation() => {
            return Err(ApiError::Conflict(format!(
                "username {} is taken in {ws}",
                member.username
            )))
        }
        Err(e) => return Err(e.into()),
    }
    members_changed(&state, &ws).await;
    Ok((StatusCode::CREATED, member.username.to_string()))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateToken {
    label: Option<String>,
    expiration: Option<DateTime<Utc>>,
    scopes: Option<Vec<String>>,
    workspace_id: Option<String>,
    /// Only for `impersonate`: whose token to make.
    impersonate_email: Option<String>,
}

/// Every replica forgets its cached memberships and groups of the workspace.
pub async fn members_changed(state: &AppState, ws: &WorkspaceId) {
    state.auth().forget_memberships();
    broadcast(
        state,
        Invalidate::Members {
            workspace: ws.to_string(),
        },
    )
    .await
}

/// Every replica forgets its cached sharing of the workspace's items.
pub async fn sharing_changed(state: &AppState, ws: &WorkspaceId) {
    state.auth().forget_sharing();
    broadcast(
        state,
        Invalidate::Sharing {
            workspace: ws.to_string(),
        },
    )
    .await
}

/// The change itself is done: a lost broadcast only leaves other replicas on their cached copy
/// until it expires (5 s), so it is logged rather than answered as a failure.
async fn broadcast(state: &AppState, message: Invalidate) {
    if let Err(e) = state.bus().publish_invalidate(&message).await {
        tracing::warn!(error = %e, ?message, "cache invalidation not broadcast");
    }
}

async fn issue_token(
    state: &AppState,
    email: &str,
    body: &CreateToken,
) -> ApiResult<(StatusCode, String)> {
    if let Some(scopes) = &body.scopes {
        scope::parse_all(scopes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    if let Some(at) = body.expiration {
        if at <= Utc::now() {
            return Err(ApiError::bad_request("expiration is in the past"));
        }
    }
    let workspace = body
        .workspace_id
        .as_deref()
        .map(WorkspaceId::parse)
        .transpose()?;
    if let Some(ws) = &workspace {
        if !store::workspaces::exists(state.pool(), ws).await? {
            return Err(ApiError::not_found(format!("workspace {ws} not found")));
        }
    }
    let secret = token::generate();
    let hash = token::hash(&secret);
    store::tokens::insert(
        state.pool(),
        &NewToken {
            hash: &hash,
            prefix: token::prefix(&secret),
            email,
            label: body.label.as_deref(),
            scopes: body.scopes.as_deref(),
            workspace_id: workspace.as_ref().map(WorkspaceId::as_str),
            expiration: body.expiration,
            session: false,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, secret))
}

/// Create a token for the caller; it is shown once.
#[utoipa::path(post, path = "/api/users/tokens/create", tag = "tokens", request_body = CreateToken,
    responses((status = 201, description = "the token", body = String), (status = 400)))]
pub async fn create_token(
    State(state): State<AppState>,
    Authed(principal, _): Authed,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<(StatusCode, String)> {
    authorize::unscoped(&principal)?;
    if store::users::get(state.pool(), &principal.email)
        .await?
        .is_none()
    {
        return Err(ApiError::bad_request(
            "this credential belongs to no user; create a user and impersonate it",
        ));
    }
    // A workspace-bound token cannot mint a token that works elsewhere.
    let mut body = body;
    if let Some(bound) = &principal.workspace {
        match &body.workspace_id {
            Some(asked) if asked != bound => {
                return Err(ApiError::Forbidden(format!(
                    "this token works only in workspace {bound}"
                )))
            }
            _ => body.workspace_id = Some(bound.clone()),
        }
    }
    issue_token(&state, &principal.email, &body).await
}

/// Create a token for another user (superadmin only).
#[utoipa::path(post, path = "/api/users/tokens/impersonate", tag = "tokens", request_body = CreateToken,
    responses((status = 201, description = "the token", body = String), (status = 403), (status = 404)))]
pub async fn impersonate(
    State(state): State<AppState>,
    Authed(principal, _): Authed,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<(StatusCode, String)> {
    authorize::unscoped(&principal)?;
    require_superadmin(&principal)?;
    let email = body
        .impersonate_email
        .clone()
        .ok_or_else(|| ApiError::bad_request("impersonate_email is required"))?;
    if store::users::get(state.pool(), &email).await?.is_none() {
        return Err(ApiError::not_found(format!("user {email} not found")));
    }
    issue_token(&state, &email, &body).await
}

/// The caller.
#[utoipa::path(get, path = "/api/users/whoami", tag = "users",
    responses((status = 200, description = "{email, username, super_admin}")))]
pub async fn whoami(Authed(principal, _): Authed) -> Json<Value> {
    Json(json!({
        "email": principal.email,
        "username": Username::from_email(&principal.email),
        "super_admin": principal.super_admin,
    }))
}

/// The workspaces the caller may use: those it is a member of (a token made for one workspace:
/// that one only); for a superadmin, every workspace. A scoped token reads this only with a
/// scope that reads something in a workspace: one that may only run (a webhook's) is refused,
/// as for any other read. A job's token is bound to its workspace and lists that one.
#[utoipa::path(get, path = "/api/workspaces/list", tag = "workspaces",
    responses((status = 200, body = Vec<WorkspaceListing>)))]
pub async fn list_workspaces(
    State(state): State<AppState>,
    Authed(principal, _): Authed,
) -> ApiResult<Json<Vec<WorkspaceListing>>> {
    let reads = [
        scope::Action::ReadJobs,
        scope::Action::ReadScripts,
        scope::Action::ReadFlows,
    ];
    if !principal.is_job_token() && !reads.into_iter().any(|a| principal.allows(a)) {
        return Err(ApiError::Forbidden(
            "this token's scopes do not allow it: listing workspaces needs a read scope \
             (jobs:read, scripts:read or flows:read)"
                .into(),
        ));
    }
    let mut listing = store::workspaces::list_for(state.pool(), &principal.email).await?;
    if principal.super_admin {
        let username = Username::from_email(&principal.email).to_string();
        for (id, name) in store::workspaces::list_all(state.pool()).await? {
            if !listing.iter().any(|w| w.id == id) {
                listing.push(WorkspaceListing {
                    id,
                    name,
                    username: username.clone(),
                    is_admin: true,
                    operator: false,
                });
            }
        }
        listing.sort_by(|a, b| a.id.cmp(&b.id));
    }
    if let Some(bound) = &principal.workspace {
        listing.retain(|w| &w.id == bound);
    }
    Ok(Json(listing))
}

/// The caller in a workspace.
#[utoipa::path(get, path = "/api/w/{workspace}/users/whoami", tag = "users",
    params(("workspace" = String, Path)),
    responses((status = 200, description = "{email, username, is_admin, operator}")))]
pub async fn workspace_whoami(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
) -> ApiResult<Json<Value>> {
    let (_, access) = state.access(&authed, &params.workspace).await?;
    Ok(Json(json!({
        "email": access.principal.email,
        "username": access.username,
        "is_admin": access.is_admin,
        "operator": access.operator,
    })))
}

/// The caller's tokens: prefixes only, never a token.
#[utoipa::path(get, path = "/api/users/tokens/list", tag = "tokens",
    responses((status = 200, body = Vec<TokenListing>)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Authed(principal, _): Authed,
) -> ApiResult<Json<Vec<TokenListing>>> {
    authorize::unscoped(&principal)?;
    Ok(Json(
        store::tokens::list(state.pool(), &principal.email).await?,
    ))
}

#[derive(Deserialize)]
pub struct PrefixPath {
    token_prefix: String,
}

/// Revoke a token: it stops working on every replica within a second.
#[utoipa::path(delete, path = "/api/users/tokens/delete/{token_prefix}", tag = "tokens",
    params(("token_prefix" = String, Path)),
    responses((status = 200, body = String), (status = 404)))]
pub async fn delete_token(
    State(state): State<AppState>,
    Path(params): Path<PrefixPath>,
    Authed(principal, _): Authed,
) -> ApiResult<String> {
    authorize::unscoped(&principal)?;
    let hashes =
        store::tokens::delete_by_prefix(state.pool(), &principal.email, &params.token_prefix)
            .await?;
    if hashes.is_empty() {
        return Err(ApiError::not_found(format!(
            "no token with prefix {}",
            params.token_prefix
        )));
    }
    revoked(&state, &hashes).await?;
    Ok(format!("deleted token {}", params.token_prefix))
}

/// Tokens just deleted stop working here at once and on every replica within a second.
pub async fn revoked(state: &AppState, hashes: &[Vec<u8>]) -> ApiResult<()> {
    for hash in hashes {
        state.auth().forget_token(hash);
        let message = Invalidate::Token {
            hash: hex::encode(hash),
        };
        state.bus().publish_invalidate(&message).await?;
    }
    state.bus().flush().await?;
    Ok(())
}
