//! Files for scripts (Windmill's `job_helpers`): what `wmill.load_s3_file`,
//! `wmill.write_s3_file` and `wmill.delete_s3_object` call. Each route reaches only the
//! object storage of the workspace in its path, and a script's `WM_TOKEN` works only in its
//! own workspace, so a script reaches its own workspace's files and no other's. Bytes stream
//! through in both directions; a file is never held whole in memory.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use super::extract::{form_urlencoded_pairs, Authed};
use super::object_storage::ObjectStorage;
use super::paths::WorkspacePath;
use super::streamed_body::{upload_stream, SharedBody};
use super::AppState;
use crate::auth::Access;
use crate::domain::WorkspaceId;
use crate::storage::{keys, ObjectStore, StorageError};

/// The query of every route here (unknown args are ignored, as on run routes).
#[derive(Default)]
struct FileQuery {
    file_key: Option<String>,
    file_extension: Option<String>,
    content_type: Option<String>,
}

fn parse_query(uri: &Uri) -> ApiResult<FileQuery> {
    let mut query = FileQuery::default();
    for (name, value) in uri.query().map(form_urlencoded_pairs).into_iter().flatten() {
        match name.as_str() {
            "file_key" => query.file_key = Some(value),
            "file_extension" => query.file_extension = Some(value),
            "content_type" if !value.is_empty() => {
                // It is sent to the store as a header: only a well-formed media type.
                if axum::http::HeaderValue::from_str(&value).is_err() || !value.contains('/') {
                    return Err(ApiError::bad_request(format!(
                        "content_type {value:?} is not a media type such as text/plain"
                    )));
                }
                query.content_type = Some(value);
            }
            // Windmill's named storages and S3 resources: Millrace has one storage per
            // workspace and no resources.
            "storage" if !value.is_empty() && value != "_default_" => {
                return Err(ApiError::bad_request(format!(
                    "unknown storage {value:?}: only the workspace's object storage exists"
                )))
            }
            "s3_resource_path" if !value.is_empty() => return Err(ApiError::bad_request(
                "s3_resource_path is not supported: files live in the workspace's object storage",
            )),
            _ => {}
        }
    }
    Ok(query)
}

impl FileQuery {
    fn key(&self) -> ApiResult<String> {
        let raw = self
            .file_key
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("query arg file_key is required"))?;
        keys::check_key(raw).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// Members of the workspace with an unscoped token, and running scripts (their job token,
/// whatever its scopes): a token made only to trigger a webhook cannot read the files.
fn may_use_files(access: &Access) -> ApiResult<()> {
    let principal = &access.principal;
    if principal.is_scoped() && !principal.is_job_token() {
        return Err(ApiError::Forbidden(
            "a scoped token cannot read or write the workspace's files".into(),
        ));
    }
    Ok(())
}

async fn workspace_store(
    state: &AppState,
    storage: &ObjectStorage,
    authed: &Authed,
    ws: &str,
) -> ApiResult<(WorkspaceId, ObjectStore)> {
    let (ws, access) = state.access(authed, ws).await?;
    may_use_files(&access)?;
    let store = storage.require(state, &ws).await?;
    Ok((ws, store))
}

fn not_found(key: &str) -> impl FnOnce(StorageError) -> ApiError + '_ {
    move |e| match e {
        StorageError::NotFound(_) => ApiError::not_found(format!("no file {key}")),
        other => other.into(),
    }
}

/// Download a file of the workspace's object storage (`wmill.load_s3_file`), streamed.
#[utoipa::path(get, path = "/api/w/{workspace}/job_helpers/download_s3_file", tag = "job_helpers",
    params(("workspace" = String, Path),
           ("file_key" = String, Query, description = "the file's key, e.g. webhook_uploads/<job>/<field>/<name>")),
    responses((status = 200, description = "the file's bytes", content_type = "application/octet-stream"),
              (status = 400), (status = 401), (status = 404)))]
pub async fn download_s3_file(
    State(state): State<AppState>,
    Extension(storage): Extension<ObjectStorage>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    uri: Uri,
) -> ApiResult<Response> {
    let key = parse_query(&uri)?.key()?;
    let (_, store) = workspace_store(&state, &storage, &authed, &params.workspace).await?;
    let download = store.get(&key).await.map_err(not_found(&key))?;
    let mut response = Body::from_stream(download.bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileKey {
    file_key: String,
}

/// Store the request body as a file of the workspace's object storage (`wmill.write_s3_file`);
/// without `file_key`, a key `windmill_uploads/<uuid>[.<file_extension>]` is made.
#[utoipa::path(post, path = "/api/w/{workspace}/job_helpers/upload_s3_file", tag = "job_helpers",
    params(("workspace" = String, Path),
           ("file_key" = Option<String>, Query), ("file_extension" = Option<String>, Query),
           ("content_type" = Option<String>, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileKey), (status = 400), (status = 401), (status = 413)))]
pub async fn upload_s3_file(
    State(state): State<AppState>,
    Extension(storage): Extension<ObjectStorage>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    uri: Uri,
    body: Body,
) -> ApiResult<Json<FileKey>> {
    let query = parse_query(&uri)?;
    let key = match query.file_key.as_deref().filter(|k| !k.is_empty()) {
        Some(_) => query.key()?,
        None => keys::generated_key(query.file_extension.as_deref()),
    };
    let (_, store) = workspace_store(&state, &storage, &authed, &params.workspace).await?;
    let body = SharedBody::new(body);
    let (stream, stopped) = upload_stream(
        body.stream(),
        Arc::default(),
        storage.max_upload_size(),
        |e| ApiError::bad_request(format!("cannot read the body: {e}")),
    );
    let stored = store
        .put_stream(&key, stream, query.content_type.as_deref())
        .await;
    if let Some(error) = stopped.take() {
        body.drain().await;
        return Err(error);
    }
    stored?;
    Ok(Json(FileKey { file_key: key }))
}

/// Delete a file of the workspace's object storage (`wmill.delete_s3_object`).
#[utoipa::path(delete, path = "/api/w/{workspace}/job_helpers/delete_s3_file", tag = "job_helpers",
    params(("workspace" = String, Path), ("file_key" = String, Query)),
    responses((status = 200, body = FileKey), (status = 400), (status = 401)))]
pub async fn delete_s3_file(
    State(state): State<AppState>,
    Extension(storage): Extension<ObjectStorage>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    uri: Uri,
) -> ApiResult<Json<FileKey>> {
    let key = parse_query(&uri)?.key()?;
    let (_, store) = workspace_store(&state, &storage, &authed, &params.workspace).await?;
    store.delete(&key).await?;
    Ok(Json(FileKey { file_key: key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> ApiResult<FileQuery> {
        parse_query(&format!("/x?{q}").parse().unwrap())
    }

    #[test]
    fn queries_name_one_safe_key_in_the_workspace_storage() {
        assert_eq!(
            query("file_key=/a/b.txt").unwrap().key().unwrap(),
            "a/b.txt"
        );
        assert_eq!(
            query("file_key=a.txt&storage=_default_&s3_resource_path=")
                .unwrap()
                .key()
                .unwrap(),
            "a.txt"
        );
        assert!(query("file_key=../etc").unwrap().key().is_err());
        assert!(query("").unwrap().key().is_err());
        assert!(query("file_key=a&storage=other").is_err());
        assert!(query("file_key=a&s3_resource_path=f/x/y").is_err());
    }
}
