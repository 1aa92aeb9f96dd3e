//! Webhook triggers: a public URL `/api/w/{ws}/hooks/{path}` per trigger that a signing sender
//! (GitHub, Stripe, Slack, Shopify, Standard Webhooks, any HMAC-SHA256) calls without a token,
//! running its script or flow as the trigger's owner (`hooks.rs` serves it). Here: the routes
//! that manage them, for workspace admins and writers of the runnable. Secrets are sealed with
//! `ENCRYPTION_KEY` before they reach the store and are never returned.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::extract::{Authed, JsonBody};
use super::paths::WorkspacePath;
use super::{authorize, run_target, AppState};
use crate::auth::Access;
use crate::crypto::SecretBox;
use crate::domain::{JobKind, RunnablePath, WorkspaceId};
use crate::store::triggers::{self, TriggerRow};
use crate::webhooks::{CustomHmac, Encoding, Scheme};

const DEFAULT_TOLERANCE_SECS: i32 = 300;
const MAX_TOLERANCE_SECS: i32 = 86_400;
const DEFAULT_DEDUP_WINDOW_SECS: i32 = 86_400;
const MAX_DEDUP_WINDOW_SECS: i32 = 30 * 86_400;
/// How long the previous secret stays valid after a rotation, unless the update says.
const DEFAULT_OVERLAP_SECS: i64 = 86_400;

#[derive(Deserialize)]
pub struct TriggerPath {
    workspace: String,
    path: String,
}

/// A new trigger. Exactly one of `script_path` and `flow_path`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTrigger {
    path: String,
    script_path: Option<String>,
    flow_path: Option<String>,
    /// `standard`, `github`, `stripe`, `slack`, `shopify` or `hmac_sha256`.
    scheme: String,
    /// The shared secret (`whsec_…` for `standard`). Stored encrypted, never returned.
    secret: String,
    #[serde(flatten)]
    settings: Settings,
}

/// Changes to a trigger; what is absent stays. A new `secret` rotates: the previous one stays
/// valid for `secret_overlap_secs` (default 86400; 0 drops it at once).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerChanges {
    script_path: Option<String>,
    flow_path: Option<String>,
    scheme: Option<String>,
    secret: Option<String>,
    secret_overlap_secs: Option<i64>,
    #[serde(flatten)]
    settings: Settings,
}

/// The settings shared by creation and changes.
#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct Settings {
    /// `hmac_sha256`: the header holding the signature.
    signature_header: Option<String>,
    /// `hmac_sha256`: `hex` (default) or `base64`.
    signature_encoding: Option<String>,
    /// `hmac_sha256`: text before the signature, e.g. `sha256=`.
    signature_prefix: Option<String>,
    /// A header naming the delivery, instead of the scheme's own.
    delivery_id_header: Option<String>,
    /// A header naming the event (e.g. for `hmac_sha256`).
    event_header: Option<String>,
    /// Accepted age of a signed timestamp (standard, stripe, slack); default 300.
    tolerance_secs: Option<i32>,
    /// How long a delivery id is remembered; default 86400.
    dedup_window_secs: Option<i32>,
    /// Answer with the result (like `run_wait_result`) instead of 202 + job id.
    sync: Option<bool>,
    enabled: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SetEnabled {
    enabled: bool,
}

/// A trigger as the API shows it: never its secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TriggerView {
    path: String,
    /// The public URL senders call.
    url: String,
    script_path: Option<String>,
    flow_path: Option<String>,
    scheme: String,
    signature_header: Option<String>,
    signature_encoding: Option<String>,
    signature_prefix: Option<String>,
    delivery_id_header: Option<String>,
    event_header: Option<String>,
    tolerance_secs: i32,
    dedup_window_secs: i32,
    sync: bool,
    enabled: bool,
    /// The user the trigger runs as: whoever created or last changed it.
    owner: String,
    edited_by: String,
    edited_at: DateTime<Utc>,
    /// Until when the secret before the last rotation is still accepted.
    previous_secret_valid_until: Option<DateTime<Utc>>,
}

/// The checked settings of a trigger, secrets apart.
pub(super) struct Spec {
    pub kind: JobKind,
    pub runnable: RunnablePath,
    pub scheme: Scheme,
    pub tolerance_secs: i32,
    pub dedup_window_secs: i32,
    pub delivery_id_header: Option<String>,
    pub event_header: Option<String>,
    pub sync: bool,
    pub enabled: bool,
}

impl Spec {
    /// A stored trigger's settings (checked when they were stored).
    pub fn of(row: &TriggerRow) -> ApiResult<Self> {
        let stored = |what: &str| ApiError::Internal {
            context: "a stored webhook trigger is invalid",
            detail: format!("{}: {what}", row.path),
        };
        let kind = match row.runnable_kind.as_str() {
            "flow" => JobKind::Flow,
            _ => JobKind::Script,
        };
        let custom = row
            .scheme_options
            .clone()
            .map(serde_json::from_value::<CustomHmac>)
            .transpose()
            .map_err(|e| stored(&e.to_string()))?;
        Ok(Self {
            kind,
            runnable: RunnablePath::parse(&row.runnable_path)
                .map_err(|e| stored(&e.to_string()))?,
            scheme: Scheme::parse(&row.scheme, custom).map_err(|e| stored(&e.to_string()))?,
            tolerance_secs: row.tolerance_secs,
            dedup_window_secs: row.dedup_window_secs,
            delivery_id_header: row.delivery_id_header.clone(),
            event_header: row.event_header.clone(),
            sync: row.sync,
            enabled: row.enabled,
        })
    }
}

/// What the sealed secrets of a trigger are bound to: its workspace and path.
pub(super) fn seal_context(ws: &WorkspaceId, path: &str) -> String {
    format!("webhook_trigger:{ws}:{path}")
}

/// The instance key, or a clear error when the operator set none.
pub(super) fn secret_box(state: &AppState) -> ApiResult<&SecretBox> {
    state
        .config()
        .secret_box
        .as_ref()
        // The operator's to fix, not the caller's, and no fault of the server's code: 503.
        .ok_or(ApiError::Unavailable(
            "webhook triggers need ENCRYPTION_KEY, which this instance does not set",
        ))
}

fn header_name(what: &str, raw: Option<String>) -> ApiResult<Option<String>> {
    let Some(raw) = raw else { return Ok(None) };
    let name = raw.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(Some(name))
    } else {
        Err(ApiError::bad_request(format!("invalid {what} {raw:?}")))
    }
}

fn in_range(what: &str, value: i32, max: i32) -> ApiResult<i32> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be from 1 to {max}"
        )))
    }
}

/// The runnable named by `script_path` or `flow_path` (exactly one).
fn runnable(script: Option<String>, flow: Option<String>) -> ApiResult<(JobKind, RunnablePath)> {
    match (script, flow) {
        (Some(path), None) => Ok((JobKind::Script, RunnablePath::parse(&path)?)),
        (None, Some(path)) => Ok((JobKind::Flow, RunnablePath::parse(&path)?)),
        _ => Err(ApiError::bad_request(
            "give exactly one of script_path and flow_path",
        )),
    }
}

/// The scheme named `name` with the generic HMAC settings, when given.
fn scheme(name: &str, settings: &Settings) -> ApiResult<Scheme> {
    let custom = match (&settings.signature_header, name) {
        (Some(header), _) => Some(CustomHmac {
            header: header.clone(),
            encoding: match settings.signature_encoding.as_deref() {
                None | Some("hex") => Encoding::Hex,
                Some("base64") => Encoding::Base64,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "invalid signature_encoding {other:?}: expected hex or base64"
                    )))
                }
            },
            prefix: settings.signature_prefix.clone().unwrap_or_default(),
        }),
        (None, _)
            if settings.signature_encoding.is_some() || settings.signature_prefix.is_some() =>
        {
            return Err(ApiError::bad_request(
                "signature_encoding and signature_prefix need signature_header",
            ))
        }
        (None, _) => None,
    };
    Scheme::parse(name, custom).map_err(|e| ApiError::bad_request(e.0))
}

impl Spec {
    /// Applies `settings` (all but the scheme's own, which `scheme` read).
    fn apply(&mut self, settings: Settings) -> ApiResult<()> {
        if let Some(name) = settings.delivery_id_header {
            self.delivery_id_header = header_name("delivery_id_header", Some(name))?;
        }
        if let Some(name) = settings.event_header {
            self.event_header = header_name("event_header", Some(name))?;
        }
        if let Some(secs) = settings.tolerance_secs {
            self.tolerance_secs = in_range("tolerance_secs", secs, MAX_TOLERANCE_SECS)?;
        }
        if let Some(secs) = settings.dedup_window_secs {
            self.dedup_window_secs = in_range("dedup_window_secs", secs, MAX_DEDUP_WINDOW_SECS)?;
        }
        if let Some(sync) = settings.sync {
            self.sync = sync;
        }
        if let Some(enabled) = settings.enabled {
            self.enabled = enabled;
        }
        Ok(())
    }
}

/// Managing a trigger takes what changing its runnable takes: an unscoped credential and
/// write access (admins, the owner, folder owners, writers it is shared with).
async fn may_manage(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    kind: JobKind,
    path: &RunnablePath,
) -> ApiResult<()> {
    authorize::unscoped(&access.principal)?;
    authorize::write(state, ws, access, kind, path.as_str()).await
}

/// The runnable exists, and the caller may manage triggers of it and write at the trigger's
/// own path (a trigger at `u/<someone else>/…` would squat their namespace).
async fn check_target(
    state: &AppState,
    ws: &WorkspaceId,
    access: &Access,
    spec: &Spec,
    trigger_path: &RunnablePath,
) -> ApiResult<()> {
    may_manage(state, ws, access, spec.kind, &spec.runnable).await?;
    authorize::write(state, ws, access, JobKind::Script, trigger_path.as_str()).await?;
    match spec.kind {
        JobKind::Script => run_target::by_path(state, ws, &spec.runnable).await?,
        JobKind::Flow => run_target::flow_by_path(state, ws, &spec.runnable).await?,
    };
    Ok(())
}

/// A trigger's sealed secrets: the current one, and the one before a rotation with the end of
/// its overlap.
struct Sealed {
    secret: Vec<u8>,
    previous: Option<(Vec<u8>, DateTime<Utc>)>,
}

fn row_of(path: &RunnablePath, spec: &Spec, sealed: Sealed, access: &Access) -> TriggerRow {
    let Sealed { secret, previous } = sealed;
    let (previous_secret, previous_secret_until) = previous.unzip();
    TriggerRow {
        path: path.to_string(),
        runnable_kind: spec.kind.as_str().to_owned(),
        runnable_path: spec.runnable.to_string(),
        scheme: spec.scheme.name().to_owned(),
        scheme_options: spec
            .scheme
            .custom()
            .map(|c| serde_json::to_value(c).expect("plain settings serialize")),
        secret,
        previous_secret,
        previous_secret_until,
        tolerance_secs: spec.tolerance_secs,
        dedup_window_secs: spec.dedup_window_secs,
        delivery_id_header: spec.delivery_id_header.clone(),
        event_header: spec.event_header.clone(),
        sync: spec.sync,
        enabled: spec.enabled,
        owner_email: access.principal.email.clone(),
        edited_by: access.username.to_string(),
        edited_at: Utc::now(),
    }
}

fn view(state: &AppState, ws: &WorkspaceId, row: &TriggerRow) -> ApiResult<TriggerView> {
    let spec = Spec::of(row)?;
    let custom = spec.scheme.custom();
    let (script_path, flow_path) = match spec.kind {
        JobKind::Script => (Some(row.runnable_path.clone()), None),
        JobKind::Flow => (None, Some(row.runnable_path.clone())),
    };
    Ok(TriggerView {
        url: format!(
            "{}/api/w/{ws}/hooks/{}",
            state.config().base_url.trim_end_matches('/'),
            row.path
        ),
        path: row.path.clone(),
        script_path,
        flow_path,
        scheme: row.scheme.clone(),
        signature_header: custom.map(|c| c.header.clone()),
        signature_encoding: custom.map(|c| match c.encoding {
            Encoding::Hex => "hex".to_owned(),
            Encoding::Base64 => "base64".to_owned(),
        }),
        signature_prefix: custom.map(|c| c.prefix.clone()),
        delivery_id_header: row.delivery_id_header.clone(),
        event_header: row.event_header.clone(),
        tolerance_secs: row.tolerance_secs,
        dedup_window_secs: row.dedup_window_secs,
        sync: row.sync,
        enabled: row.enabled,
        owner: row.owner_email.clone(),
        edited_by: row.edited_by.clone(),
        edited_at: row.edited_at,
        previous_secret_valid_until: row.previous_secret_until.filter(|at| *at > Utc::now()),
    })
}

/// A sealed secret, once it was checked to be a valid one for `scheme`.
fn seal(
    state: &AppState,
    ws: &WorkspaceId,
    path: &RunnablePath,
    scheme: &Scheme,
    secret: &str,
) -> ApiResult<Vec<u8>> {
    scheme
        .signing_key(secret)
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok(secret_box(state)?.seal(secret.as_bytes(), &seal_context(ws, path.as_str())))
}

/// Create a webhook trigger (workspace admins and writers of the runnable).
#[utoipa::path(post, path = "/api/w/{workspace}/webhook_triggers/create", tag = "webhook_triggers",
    params(("workspace" = String, Path)), request_body = NewTrigger,
    responses((status = 201, body = String), (status = 400), (status = 403), (status = 404),
              (status = 409)))]
pub async fn create(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
    JsonBody(body): JsonBody<NewTrigger>,
) -> ApiResult<(StatusCode, String)> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    let path = RunnablePath::parse(&body.path)?;
    let (kind, target) = runnable(body.script_path, body.flow_path)?;
    let scheme = scheme(&body.scheme, &body.settings)?;
    let mut spec = Spec {
        kind,
        runnable: target,
        scheme,
        tolerance_secs: DEFAULT_TOLERANCE_SECS,
        dedup_window_secs: DEFAULT_DEDUP_WINDOW_SECS,
        delivery_id_header: None,
        event_header: None,
        sync: false,
        enabled: true,
    };
    spec.apply(body.settings)?;
    check_target(&state, &ws, &access, &spec, &path).await?;
    let secret = seal(&state, &ws, &path, &spec.scheme, &body.secret)?;
    let row = row_of(
        &path,
        &spec,
        Sealed {
            secret,
            previous: None,
        },
        &access,
    );
    if !triggers::create(state.pool(), &ws, &row).await? {
        return Err(ApiError::Conflict(format!(
            "a webhook trigger exists at {path}"
        )));
    }
    state.triggers().forget(&ws, path.as_str());
    Ok((StatusCode::CREATED, path.to_string()))
}

/// The trigger at a path, if the caller may manage it (404 otherwise, as if it did not exist).
async fn managed(
    state: &AppState,
    authed: &Authed,
    params: &TriggerPath,
) -> ApiResult<(WorkspaceId, Access, TriggerRow)> {
    let (ws, access) = state.access(authed, &params.workspace).await?;
    let missing = || ApiError::not_found(format!("webhook trigger not found at {}", params.path));
    let row = triggers::get(state.pool(), &ws, &params.path)
        .await?
        .ok_or_else(missing)?;
    let spec = Spec::of(&row)?;
    authorize::unscoped(&access.principal)?;
    if !authorize::can_read(state, &ws, &access, spec.kind, spec.runnable.as_str()).await? {
        return Err(missing());
    }
    may_manage(state, &ws, &access, spec.kind, &spec.runnable).await?;
    Ok((ws, access, row))
}

/// One trigger (never its secret).
#[utoipa::path(get, path = "/api/w/{workspace}/webhook_triggers/get/{*path}", tag = "webhook_triggers",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = TriggerView), (status = 403), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    Path(params): Path<TriggerPath>,
    authed: Authed,
) -> ApiResult<Json<TriggerView>> {
    let (ws, _, row) = managed(&state, &authed, &params).await?;
    Ok(Json(view(&state, &ws, &row)?))
}

/// The triggers the caller may manage.
#[utoipa::path(get, path = "/api/w/{workspace}/webhook_triggers/list", tag = "webhook_triggers",
    params(("workspace" = String, Path)), responses((status = 200, body = Vec<TriggerView>)))]
pub async fn list(
    State(state): State<AppState>,
    Path(params): Path<WorkspacePath>,
    authed: Authed,
) -> ApiResult<Json<Vec<TriggerView>>> {
    let (ws, access) = state.access(&authed, &params.workspace).await?;
    authorize::unscoped(&access.principal)?;
    let mut views = Vec::new();
    for row in triggers::list(state.pool(), &ws).await? {
        let spec = Spec::of(&row)?;
        let writable = authorize::write(&state, &ws, &access, spec.kind, spec.runnable.as_str())
            .await
            .is_ok();
        if writable {
            views.push(view(&state, &ws, &row)?);
        }
    }
    Ok(Json(views))
}

/// Change a trigger; it then runs as the caller. A new `secret` rotates the old one out after
/// `secret_overlap_secs`.
#[utoipa::path(post, path = "/api/w/{workspace}/webhook_triggers/update/{*path}", tag = "webhook_triggers",
    params(("workspace" = String, Path), ("path" = String, Path)), request_body = TriggerChanges,
    responses((status = 200, body = String), (status = 400), (status = 403), (status = 404),
              (status = 409)))]
pub async fn update(
    State(state): State<AppState>,
    Path(params): Path<TriggerPath>,
    authed: Authed,
    JsonBody(body): JsonBody<TriggerChanges>,
) -> ApiResult<String> {
    let (ws, access, row) = managed(&state, &authed, &params).await?;
    let path = RunnablePath::parse(&row.path)?;
    let mut spec = Spec::of(&row)?;
    if body.script_path.is_some() || body.flow_path.is_some() {
        (spec.kind, spec.runnable) = runnable(body.script_path, body.flow_path)?;
    }
    let scheme_changed = body.scheme.is_some() || body.settings.signature_header.is_some();
    if scheme_changed {
        let name = body.scheme.as_deref().unwrap_or(spec.scheme.name());
        spec.scheme = scheme(name, &body.settings)?;
    }
    spec.apply(body.settings)?;
    check_target(&state, &ws, &access, &spec, &path).await?;
    let secrets = match body.secret {
        Some(secret) => {
            let sealed = seal(&state, &ws, &path, &spec.scheme, &secret)?;
            let overlap = body.secret_overlap_secs.unwrap_or(DEFAULT_OVERLAP_SECS);
            if !(0..=i64::from(MAX_DEDUP_WINDOW_SECS)).contains(&overlap) {
                return Err(ApiError::bad_request(format!(
                    "secret_overlap_secs must be from 0 to {MAX_DEDUP_WINDOW_SECS}"
                )));
            }
            // Another scheme reads secrets differently: the old one means nothing to it.
            let previous = (overlap > 0 && !scheme_changed).then(|| {
                (
                    row.secret.clone(),
                    Utc::now() + chrono::Duration::seconds(overlap),
                )
            });
            Sealed {
                secret: sealed,
                previous,
            }
        }
        None if scheme_changed => {
            return Err(ApiError::bad_request(
                "changing the scheme needs a new secret",
            ))
        }
        None => {
            let previous = row.previous_secret.clone().zip(row.previous_secret_until);
            Sealed {
                secret: row.secret.clone(),
                previous,
            }
        }
    };
    let changed = row_of(&path, &spec, secrets, &access);
    if !triggers::replace(state.pool(), &ws, &changed, row.edited_at).await? {
        return Err(ApiError::Conflict(format!(
            "webhook trigger {path} changed meanwhile; read it again"
        )));
    }
    state.triggers().forget(&ws, path.as_str());
    Ok(path.to_string())
}

/// Enable or disable a trigger (a disabled one answers 404).
#[utoipa::path(post, path = "/api/w/{workspace}/webhook_triggers/setenabled/{*path}", tag = "webhook_triggers",
    params(("workspace" = String, Path), ("path" = String, Path)), request_body = SetEnabled,
    responses((status = 200, body = String), (status = 403), (status = 404)))]
pub async fn set_enabled(
    State(state): State<AppState>,
    Path(params): Path<TriggerPath>,
    authed: Authed,
    JsonBody(body): JsonBody<SetEnabled>,
) -> ApiResult<String> {
    let (ws, access, row) = managed(&state, &authed, &params).await?;
    let changed = TriggerRow {
        enabled: body.enabled,
        owner_email: access.principal.email.clone(),
        edited_by: access.username.to_string(),
        ..row.clone()
    };
    if !triggers::replace(state.pool(), &ws, &changed, row.edited_at).await? {
        return Err(ApiError::Conflict(format!(
            "webhook trigger {} changed meanwhile",
            row.path
        )));
    }
    state.triggers().forget(&ws, &row.path);
    Ok(format!(
        "{} {}",
        row.path,
        if body.enabled { "enabled" } else { "disabled" }
    ))
}

/// Delete a trigger: its URL answers 404 from now on.
#[utoipa::path(delete, path = "/api/w/{workspace}/webhook_triggers/delete/{*path}", tag = "webhook_triggers",
    params(("workspace" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = String), (status = 403), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(params): Path<TriggerPath>,
    authed: Authed,
) -> ApiResult<String> {
    let (ws, _, row) = managed(&state, &authed, &params).await?;
    if !triggers::delete(state.pool(), &ws, &row.path).await? {
        return Err(ApiError::not_found(format!(
            "webhook trigger not found at {}",
            row.path
        )));
    }
    state.triggers().forget(&ws, &row.path);
    Ok(row.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_refuse_unknown_fields() {
        let ok: Result<NewTrigger, _> = serde_json::from_value(serde_json::json!({
            "path": "u/a/h", "script_path": "u/a/s", "scheme": "github", "secret": "s",
            "tolerance_secs": 60, "sync": true
        }));
        let ok = ok.unwrap();
        assert_eq!(ok.settings.tolerance_secs, Some(60));
        let typo: Result<NewTrigger, _> = serde_json::from_value(serde_json::json!({
            "path": "u/a/h", "script_path": "u/a/s", "scheme": "github", "secret": "s",
            "tolerance_sec": 60
        }));
        assert!(typo.is_err());
    }
}
