//! Where a workspace's files live (SPEC §7 "Object storage settings"): its own bucket when a
//! workspace admin set one, else the instance default (`S3_*`) with each workspace under its
//! own `<workspace>/` prefix, so that no workspace reaches another's files. Also the routes
//! that read and change the settings; none of them ever returns the secret key. A workspace's
//! own endpoint must pass the endpoint guard (`OBJECT_STORAGE_ALLOWED_HOSTS`) when it is saved
//! and on every connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::{authorize, AppState};
use crate::auth::Access;
use crate::config::{S3Config, Secret};
use crate::domain::WorkspaceId;
use crate::storage::endpoint_guard::EndpointGuard;
use crate::storage::{ObjectStore, S3Settings, StorageError};
use crate::store::object_storage::{self as settings_store, ObjectStorageRow};

/// The object storage of every workspace, as the API reaches it. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStorage(Arc<Inner>);

struct Inner {
    instance: Option<(S3Settings, ObjectStore)>,
    max_upload_size: u64,
    guard: EndpointGuard,
    /// Clients of workspaces' own settings, reused while those settings are unchanged (a
    /// client owns a connection pool).
    own: Mutex<HashMap<String, (ObjectStorageRow, ObjectStore)>>,
}

impl ObjectStorage {
    pub fn from_config(config: &S3Config) -> anyhow::Result<Self> {
        let instance = match S3Settings::from_config(config)? {
            Some(settings) => {
                let store = ObjectStore::trusted(&settings, "", config.max_upload_size)?;
                tracing::info!(endpoint = %settings.endpoint, bucket = %settings.bucket,
                    "default object storage configured");
                Some((settings, store))
            }
            None => None,
        };
        Ok(Self(Arc::new(Inner {
            instance,
            max_upload_size: config.max_upload_size,
            guard: EndpointGuard::parse(&config.allowed_hosts).map_err(anyhow::Error::msg)?,
            own: Mutex::default(),
        })))
    }

    /// No instance default; workspaces may still set their own.
    pub fn unconfigured() -> Self {
        Self(Arc::new(Inner {
            instance: None,
            max_upload_size: 1024 * 1024 * 1024,
            guard: EndpointGuard::default(),
            own: Mutex::default(),
        }))
    }

    /// `MAX_UPLOAD_SIZE`.
    pub fn max_upload_size(&self) -> u64 {
        self.0.max_upload_size
    }

    /// The workspace's storage: its own settings, else the instance default, else none.
    pub async fn for_workspace(
        &self,
        state: &AppState,
        ws: &WorkspaceId,
    ) -> ApiResult<Option<ObjectStore>> {
        let sealer = state.config().secret_box.as_ref();
        let Some(row) = settings_store::get(state.pool(), ws, sealer).await? else {
            return Ok(self
                .0
                .instance
                .as_ref()
                .map(|(_, store)| store.with_prefix(&format!("{ws}/"))));
        };
        if let Some((cached, store)) = self.cached(ws) {
            if cached == row {
                return Ok(Some(store));
            }
        }
        let store =
            ObjectStore::guarded(&to_settings(&row), &self.0.guard, self.0.max_upload_size).await?;
        self.0
            .own
            .lock()
            .expect("object storage cache lock")
            .insert(ws.to_string(), (row, store.clone()));
        Ok(Some(store))
    }

    fn cached(&self, ws: &WorkspaceId) -> Option<(ObjectStorageRow, ObjectStore)> {
        let own = self.0.own.lock().expect("object storage cache lock");
        own.get(ws.as_str()).cloned()
    }

    /// The workspace's storage, or 400 saying that there is none.
    pub async fn require(&self, state: &AppState, ws: &WorkspaceId) -> ApiResult<ObjectStore> {
        self.for_workspace(state, ws)
            .await?
            .ok_or_else(|| no_storage(ws))
    }
}

pub fn no_storage(ws: &WorkspaceId) -> ApiError {
    ApiError::bad_request(format!(
        "no object storage is configured for workspace {ws}: files need one \
         (S3_* settings of the instance, or POST /api/w/{ws}/workspaces/object_storage)"
    ))
}

fn to_settings(row: &ObjectStorageRow) -> S3Settings {
    S3Settings {
        endpoint: row.endpoint.clone(),
        bucket: row.bucket.clone(),
        region: row.region.clone(),
        access_key: row.access_key.clone(),
        secret_key: row.secret_key.clone(),
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(_) => ApiError::not_found("no such file"),
            StorageError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "object storage unreachable");
                ApiError::Unavailable("object storage")
            }
            StorageError::Interrupted => ApiError::bad_request("the upload was interrupted"),
            StorageError::Blocked(detail) => {
                tracing::warn!(error = %detail, "workspace object storage blocked");
                ApiError::bad_request(format!(
                    "the workspace's object storage cannot be used: {detail}"
                ))
            }
            StorageError::Refused(detail) => ApiError::Internal {
                context:
                    "the object storage refused the request (check its bucket and credentials)",
                detail,
            },
            StorageError::Settings(detail) => ApiError::Internal {
                context: "invalid object storage settings",
                detail,
            },
            StorageError::Other(detail) => ApiError::Internal {
                context: "object storage error",
                detail,
            },
        }
    }
}

/// A workspace's object storage as an admin sees it: everything but the secret key.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ObjectStorageView {
    /// Whether files can be stored at all.
    configured: bool,
    /// `workspace` (its own settings), `instance` (the default), or null.
    source: Option<&'static str>,
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    /// The workspace's own access key (the instance's is not shown).
    access_key: Option<String>,
    secret_key_set: bool,
}

impl ObjectStorageView {
    fn of(row: Option<&ObjectStorageRow>, instance: Option<&S3Settings>) -> Self {
        match (row, instance) {
            (Some(row), _) => Self {
                configured: true,
                source: Some("workspace"),
                endpoint: Some(row.endpoint.clone()),
                bucket: Some(row.bucket.clone()),
                region: row.region.clone(),
                access_key: Some(row.access_key.clone()),
                secret_key_set: !row.secret_key.expose().is_empty(),
            },
            (None, Some(instance)) => Self {
                configured: true,
                source: Some("instance"),
                endpoint: Some(instance.endpoint.clone()),
                bucket: Some(instance.bucket.clone()),
                region: instance.region.clone(),
                access_key: None,
                secret_key_set: true,
            },
            (None, None) => Self {
                configured: false,
                source: None,
                endpoint: None,
                bucket: None,
                region: None,
                access_key: None,
                secret_key_set: false,
            },
        }
    }
}

/// New settings. `secret_key` may be left out to keep the one already stored.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SetObjectStorage {
    endpoint: String,
    bucket: String,
    region: Option<String>,
    access_key: String,
    secret_key: Option<String>,
}

async fn admin(state: &AppState, authed: &Authed, ws: &str) -> ApiResult<(WorkspaceId, Access)> {
    let (ws, access) = state.access(authed, ws).await?;
    authorize::unscoped(&access.principal)?;
    if !access.is_admin {
        return Err(ApiError::Forbidden(
            "only workspace admins may see or change the object storage".into(),
        ));
    }
    Ok((ws, access))
}

/// The workspace's object storage settings (workspace admins); never the secret key.
#[utoipa::path(get, path = "/api/w/{workspace}/workspaces/object_storage", tag = "workspaces",
    params(("workspace" = String, Path)),
    responses((status = 200, body = ObjectStorageView), (status = 401), (status = 403)))]
pub async fn get_settings(
    State(state): State<AppState>,
    Extension(storage): Extension<ObjectStorage>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
) -> ApiResult<Json<ObjectStorageView>> {
    let (ws, _) = admin(&state, &authed, &params.workspace).await?;
    let sealer = state.config().secret_box.as_ref();
    let row = settings_store::get(state.pool(), &ws, sealer).await?;
    let instance = storage.0.instance.as_ref().map(|(settings, _)| settings);
    Ok(Json(ObjectStorageView::of(row.as_ref(), instance)))
}

/// Set the workspace's own object storage (workspace admins); it replaces the instance default
/// for this workspace.
#[utoipa::path(post, path = "/api/w/{workspace}/workspaces/object_storage", tag = "workspaces",
    params(("workspace" = String, Path)), request_body = SetObjectStorage,
    responses((status = 200, body = ObjectStorageView), (status = 400), (status = 401),
              (status = 403)))]
pub async fn set_settings(
    State(state): State<AppState>,
    Extension(storage): Extension<ObjectStorage>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Json<ObjectStorageView>> {
    let (ws, access) = admin(&state, &authed, &params.workspace).await?;
    // Read after the caller is known to be an admin: others learn nothing about the fields.
    let body: SetObjectStorage = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid settings: {e}")))?;
    let sealer = state.config().secret_box.as_ref();
    let secret_key = match body.secret_key.filter(|s| !s.is_empty()) {
        Some(secret) => Secret::new(secret),
        None => settings_store::get(state.pool(), &ws, sealer)
            .await?
            .map(|row| row.secret_key)
            .ok_or_else(|| ApiError::bad_request("secret_key is required"))?,
    };
    let row = ObjectStorageRow {
        endpoint: body.endpoint.trim().to_owned(),
        bucket: body.bucket.trim().to_owned(),
        region: body
            .region
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty()),
        access_key: body.access_key,
        secret_key,
    };
    to_settings(&row)
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    storage
        .0
        .guard
        .check(&row.endpoint)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    settings_store::put(state.pool(), &ws, &row, access.username.as_str(), sealer).await?;
    tracing::info!(workspace = %ws, by = %access.username, "object storage settings changed");
    let instance = storage.0.instance.as_ref().map(|(settings, _)| settings);
    Ok(Json(ObjectStorageView::of(Some(&row), instance)))
}
