//! The body of a run route (SPEC §1 "Body → arguments", §7 "Bodies"). Every content type but
//! `multipart/form-data` is buffered, up to `MAX_BODY_SIZE` (413 above it). A multipart body is
//! read part by part as it arrives: text fields become string arguments (counted toward
//! `MAX_BODY_SIZE`); each file part streams straight into the workspace's object storage under
//! `webhook_uploads/<job id>/<field>/<filename>` (counted toward `MAX_UPLOAD_SIZE`), so a file
//! of any size costs the API one S3 part of memory, never the whole file.
//!
//! The body is only read once the caller is authorised and the target resolved: nothing is
//! uploaded for a request that would be refused.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, Method, Uri};
use chrono::Utc;
use futures::{Stream, StreamExt};
use multer::{Constraints, Field, Multipart, SizeLimit};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::extract::form_urlencoded_pairs;
use super::object_storage::ObjectStorage;
use super::request_args::{
    build_args, build_get_args, build_multipart_args, is_multipart, RunOptions,
};
use super::streamed_body::{upload_stream, SharedBody};
use super::AppState;
use crate::domain::{JobId, WorkspaceId};
use crate::storage::{keys, ObjectStore};

/// A run route's request: method, query and headers at hand, the body not read yet.
pub struct RunBody {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    /// `Some` for `multipart/form-data`.
    boundary: Option<String>,
}

impl FromRequest<AppState> for RunBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let boundary = if is_multipart(&parts.headers) {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            Some(multer::parse_boundary(content_type).map_err(|e| {
                ApiError::bad_request(format!("malformed multipart content type: {e}"))
            })?)
        } else {
            None
        };
        // The raw body: axum's DefaultBodyLimit does not apply to it, the limits below do.
        Ok(Self {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            boundary,
        })
    }
}

/// What a body's arguments are built for.
struct BodyTarget<'a> {
    state: &'a AppState,
    storage: &'a ObjectStorage,
    ws: &'a WorkspaceId,
    /// The job's id: it names the uploads' keys.
    job: JobId,
    opts: &'a RunOptions,
}

/// Files stored while reading a body, removed again if the job is not created after all.
#[derive(Default)]
pub struct Uploads {
    store: Option<ObjectStore>,
    keys: Vec<String>,
}

impl Uploads {
    /// Deletes the files in the background (best effort: an orphan only costs storage).
    pub fn discard(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        let Some(store) = self.store.clone().filter(|_| !keys.is_empty()) else {
            return;
        };
        tokio::spawn(async move {
            for key in keys {
                if let Err(e) = store.delete(&key).await {
                    tracing::warn!(key, error = %e, "could not remove an upload of a refused job");
                }
            }
        });
    }

    /// Passes `result` on, removing the files first if it failed (the job was not created).
    pub fn kept_if_ok<T, E>(&mut self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.discard();
        }
        result
    }
}

impl RunBody {
    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The route's options, from its query string.
    pub fn options(&self) -> ApiResult<RunOptions> {
        let query = self
            .uri
            .query()
            .map(|q| form_urlencoded_pairs(q).collect())
            .unwrap_or_default();
        let mut opts = RunOptions::parse(query, Utc::now())?;
        opts.trace = super::request_args::traceparent(&self.headers);
        Ok(opts)
    }

    /// The job's arguments, and the files uploaded to make them. The job id is chosen here
    /// (unless preset): the uploads are named after it.
    pub async fn into_args(
        self,
        state: &AppState,
        storage: &ObjectStorage,
        ws: &WorkspaceId,
        opts: &mut RunOptions,
    ) -> ApiResult<(Map<String, Value>, Uploads)> {
        let job = opts.job_id();
        let include = &state.config().include_headers;
        if self.method == Method::GET {
            let args = build_get_args(&self.headers, opts, include)?;
            return Ok((args, Uploads::default()));
        }
        let Some(boundary) = self.boundary else {
            let bytes = read_limited(self.body, state.config().max_body_size).await?;
            super::admission::reserve_parsing(state, &bytes)?;
            let args = build_args(&self.headers, &bytes, opts, include)?;
            return Ok((args, Uploads::default()));
        };
        let to = BodyTarget {
            state,
            storage,
            ws,
            job,
            opts,
        };
        // Boxed: the streaming uploads' state would otherwise be part of every run request's
        // future, moved and copied with it, multipart or not.
        let (fields, uploads) = Box::pin(multipart_fields(self.body, boundary, &to)).await?;
        let args = build_multipart_args(fields, &self.headers, opts, include);
        Ok((args, uploads))
    }
}

/// The fields of a multipart body, its files uploaded (and removed again on an error).
async fn multipart_fields(
    body: Body,
    boundary: String,
    to: &BodyTarget<'_>,
) -> ApiResult<(Map<String, Value>, Uploads)> {
    let body = SharedBody::new(body);
    let mut reader = MultipartReader::new(body.stream(), boundary, to);
    let fields = reader.read_fields().await;
    let mut uploads = reader.uploads;
    // The parser lets go of the body, which a refused client may still be sending.
    drop(reader.multipart);
    if fields.is_err() {
        body.drain().await;
    }
    let fields = uploads.kept_if_ok(fields)?;
    Ok((fields, uploads))
}

fn too_large(limit: impl std::fmt::Display) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the body is larger than MAX_BODY_SIZE ({limit} bytes)"
    ))
}

/// The whole body, refused with 413 as soon as it passes `limit`.
async fn read_limited(body: Body, limit: usize) -> ApiResult<Bytes> {
    let body = SharedBody::new(body);
    let mut stream = body.stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if buffer.len() + chunk.len() > limit {
            drop(stream);
            body.drain().await;
            return Err(too_large(limit));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { limit }
        | multer::Error::FieldSizeExceeded { limit, .. } => {
            ApiError::PayloadTooLarge(format!("the multipart body is larger than {limit} bytes"))
        }
        multer::Error::StreamReadFailed(e) => {
            ApiError::bad_request(format!("cannot read the body: {e}"))
        }
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    }
}

struct MultipartReader<'a> {
    multipart: Multipart<'static>,
    to: &'a BodyTarget<'a>,
    uploads: Uploads,
    /// Bytes of text fields so far (toward `MAX_BODY_SIZE`).
    text_bytes: usize,
    /// Bytes of file parts so far (toward `MAX_UPLOAD_SIZE`), shared with the upload streams.
    file_bytes: Arc<AtomicU64>,
    used_keys: HashSet<String>,
}

impl<'a> MultipartReader<'a> {
    fn new(
        body: impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
        boundary: String,
        to: &'a BodyTarget<'a>,
    ) -> Self {
        let max_body = to.state.config().max_body_size as u64;
        // Part headers and boundaries ride on top of both budgets; multer bounds the total.
        let whole = max_body
            .saturating_add(to.storage.max_upload_size())
            .saturating_add(64 * 1024);
        let constraints = Constraints::new().size_limit(SizeLimit::new().whole_stream(whole));
        Self {
            multipart: Multipart::with_constraints(body, boundary, constraints),
            to,
            uploads: Uploads::default(),
            text_bytes: 0,
            file_bytes: Arc::default(),
            used_keys: HashSet::new(),
        }
    }

    /// Text fields as strings, file fields as arrays of `{"s3", "filename"}`; a name used by
    /// both is the array.
    async fn read_fields(&mut self) -> ApiResult<Map<String, Value>> {
        let mut fields = Map::new();
        while let Some(field) = self.multipart.next_field().await.map_err(multipart_error)? {
            let name = field
                .name()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request("malformed multipart body: a part has no name")
                })?
                .to_owned();
            match field.file_name().map(str::to_owned) {
                // A form's file input left empty: nothing to store, nothing to pass on.
                Some(filename) if filename.is_empty() => {
                    self.read_text(field).await?;
                }
                Some(filename) => {
                    let object = self.upload(field, &name, &filename).await?;
                    match fields.get_mut(&name) {
                        Some(Value::Array(files)) => files.push(object),
                        _ => {
                            fields.insert(name, Value::Array(vec![object]));
                        }
                    }
                }
                None => {
                    let text = self.read_text(field).await?;
                    if !matches!(fields.get(&name), Some(Value::Array(_))) {
                        fields.insert(name, Value::String(text));
                    }
                }
            }
        }
        Ok(fields)
    }

    async fn read_text(&mut self, mut field: Field<'static>) -> ApiResult<String> {
        let limit = self.to.state.config().max_body_size;
        let name = field.name().unwrap_or_default().to_owned();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            self.text_bytes += chunk.len();
            if self.text_bytes > limit {
                return Err(too_large(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        String::from_utf8(bytes).map_err(|_| {
            ApiError::bad_request(format!("multipart field {name:?} is not UTF-8 text"))
        })
    }

    /// The workspace's storage, looked up at the first file (text-only bodies need none).
    async fn store(&mut self) -> ApiResult<ObjectStore> {
        if let Some(store) = &self.uploads.store {
            return Ok(store.clone());
        }
        let to = self.to;
        let store = to.storage.require(to.state, to.ws).await?;
        // A preset id already taken would have its files overwritten: refuse before storing.
        if to.opts.job_id_preset()
            && crate::store::jobs::get(to.state.pool(), to.ws, to.job)
                .await?
                .is_some()
        {
            return Err(ApiError::Conflict(format!(
                "a job with id {} already exists",
                to.job
            )));
        }
        self.uploads.store = Some(store.clone());
        Ok(store)
    }

    /// A unique key for this body's file `filename` in field `field`.
    fn key_for(&mut self, field: &str, filename: &str) -> String {
        let name = keys::sanitize_name(filename);
        let key = (0..)
            .map(|n| keys::webhook_upload_key(self.to.job, field, &keys::numbered(&name, n)))
            .find(|key| !self.used_keys.contains(key))
            .expect("an unused number exists");
        self.used_keys.insert(key.clone());
        key
    }

    async fn upload(
        &mut self,
        field: Field<'static>,
        name: &str,
        filename: &str,
    ) -> ApiResult<Value> {
        let store = self.store().await?;
        let key = self.key_for(name, filename);
        let content_type = field.content_type().map(ToString::to_string);
        let (stream, stopped) = upload_stream(
            field,
            self.file_bytes.clone(),
            self.to.storage.max_upload_size(),
            multipart_error,
        );
        let stored = store
            .put_stream(&key, stream, content_type.as_deref())
            .await;
        if let Some(error) = stopped.take() {
            return Err(error);
        }
        stored?;
        self.uploads.keys.push(key.clone());
        Ok(json!({"s3": key, "filename": keys::sanitize_name(filename)}))
    }
}
