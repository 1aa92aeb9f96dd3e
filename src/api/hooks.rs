//! The public URL of a webhook trigger, `/api/w/{ws}/hooks/{path}`: no token, a signature
//! instead. The signature is checked on the raw body before anything parses it; a refusal is
//! 401 with no job, no echo of the body, and counts toward the client's failed-authentication
//! limit like a bad token. A verified delivery runs the trigger's target as its owner, once:
//! a repeat of a delivery id within the trigger's window answers the first job.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{ClientIp, RawBody};
use super::multipart::Uploads;
use super::request_args::{build_args, RunOptions};
use super::run_sync::{self, JOB_ID_HEADER};
use super::run_target::{self, RunTarget};
use super::submit::Submitted;
use super::webhook_triggers::{seal_context, secret_box, Spec};
use super::{authorize, idempotency, submit, AppState};
use crate::auth::{Access, AuthError, Principal, SUPERADMIN_EMAIL};
use crate::domain::{JobId, JobKind, WorkspaceId};
use crate::store::triggers::{self, TriggerRow};
use crate::webhooks::verify::Keys;
use crate::webhooks::{delivery, Delivery, Headers, Scheme};

/// The arguments that carry the sender's event name and delivery id (documented names).
pub const EVENT_ARG: &str = "webhook_event";
pub const DELIVERY_ARG: &str = "webhook_delivery_id";

#[derive(Deserialize)]
pub struct HookPath {
    workspace: String,
    path: String,
}

struct RequestHeaders<'a>(&'a HeaderMap);

impl Headers for RequestHeaders<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Call a webhook trigger, signed as its scheme says (no token).
#[utoipa::path(post, path = "/api/w/{workspace}/hooks/{*path}", tag = "webhook_triggers",
    params(("workspace" = String, Path), ("path" = String, Path)),
    request_body(content = Object, description = "the sender's payload, signed"),
    responses((status = 202, description = "the job id (a repeated delivery: the first job's)", body = String),
              (status = 200, description = "sync triggers: the result; Slack: the challenge"),
              (status = 401, description = "missing or invalid signature, or a stale timestamp"),
              (status = 403, description = "the trigger's owner can no longer run its target"),
              (status = 404), (status = 429)))]
pub async fn receive(
    State(state): State<AppState>,
    Path(params): Path<HookPath>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let ws = WorkspaceId::parse(&params.workspace)?;
    let cached = match state.triggers().get(&ws, &params.path) {
        Some(cached) => cached,
        None => {
            let read = triggers::for_delivery(state.pool(), &ws, &params.path).await?;
            state.triggers().put(&ws, &params.path, read.clone());
            read
        }
    };
    let (row, owner_is_superadmin) = cached.filter(|(row, _)| row.enabled).ok_or_else(|| {
        ApiError::not_found(format!("webhook trigger not found at {}", params.path))
    })?;
    let spec = Spec::of(&row)?;
    let view = RequestHeaders(&headers);
    let now = Utc::now();
    let keys = signing_keys(&state, &ws, &row, &spec.scheme, now)?;
    let keys = Keys {
        keys: &keys,
        tolerance_secs: i64::from(row.tolerance_secs),
        now: now.timestamp(),
    };
    if let Err(rejected) = spec.scheme.verify(&view, &body, &keys) {
        tracing::info!(workspace = %ws, trigger = %row.path, reason = %rejected,
            "webhook delivery refused");
        return Err(state.token_failed(ip, ApiError::Unauthorized(rejected.to_string())));
    }
    if spec.scheme == Scheme::Slack {
        if let Some(challenge) = delivery::slack_challenge(&body) {
            return Ok(Json(json!({ "challenge": challenge })).into_response());
        }
    }
    let access = owner_access(&state, &ws, (&row, owner_is_superadmin), &spec).await?;
    let target = match spec.kind {
        JobKind::Script => run_target::by_path(&state, &ws, &spec.runnable).await?,
        JobKind::Flow => run_target::flow_by_path(&state, &ws, &spec.runnable).await?,
    };
    let delivery = delivery::identify(
        &spec.scheme,
        &view,
        &body,
        spec.delivery_id_header.as_deref(),
        spec.event_header.as_deref(),
    );
    let mut opts = RunOptions::parse(Vec::new(), Utc::now())?;
    opts.trace = super::request_args::traceparent(&headers);
    super::admission::reserve_parsing(&state, &body)?;
    let mut args = build_args(&headers, &body, &opts, &state.config().include_headers)?;
    add_delivery_args(&mut args, &delivery);
    opts.once = delivery.id.as_deref().map(|delivery_id| {
        let window = Duration::from_secs(u64::try_from(spec.dedup_window_secs).unwrap_or(0));
        idempotency::delivery(&row.path, delivery_id, window)
    });
    start(&state, &ws, (access, target, spec.sync), args, opts).await
}

/// The keys of the trigger's secret, and of the previous one during a rotation overlap.
fn signing_keys(
    state: &AppState,
    ws: &WorkspaceId,
    row: &TriggerRow,
    scheme: &Scheme,
    now: chrono::DateTime<Utc>,
) -> ApiResult<Vec<Vec<u8>>> {
    let sealer = secret_box(state)?;
    let context = seal_context(ws, &row.path);
    let previous = row
        .previous_secret
        .as_ref()
        .filter(|_| row.previous_secret_until.is_some_and(|until| until > now));
    std::iter::once(&row.secret)
        .chain(previous)
        .map(|sealed| {
            let secret = sealer
                .open(sealed, &context)
                .map_err(|e| ApiError::Internal {
                    context: "a webhook trigger's secret cannot be decrypted",
                    detail: e.to_string(),
                })?;
            let secret = String::from_utf8(secret).unwrap_or_default();
            scheme.signing_key(&secret).map_err(|e| ApiError::Internal {
                context: "a webhook trigger's secret is invalid",
                detail: e.0,
            })
        })
        .collect()
}

/// The owner's rights in the workspace, as if they called the run route themselves; a clear
/// 403 when they can no longer run the target (left the workspace, lost its sharing).
async fn owner_access(
    state: &AppState,
    ws: &WorkspaceId,
    (row, owner_is_superadmin): (&TriggerRow, bool),
    spec: &Spec,
) -> ApiResult<Access> {
    let email = &row.owner_email;
    let super_admin = owner_is_superadmin || email == SUPERADMIN_EMAIL;
    let principal = Principal::user(email.clone(), super_admin);
    let lost = || {
        ApiError::Forbidden(format!(
            "the owner of webhook trigger {} ({email}) can no longer run {} {}",
            row.path,
            spec.kind.as_str(),
            spec.runnable
        ))
    };
    let access = match state.auth().access(&principal, ws).await {
        Ok(access) => access,
        Err(AuthError::NotMember(_)) => return Err(lost()),
        Err(e) => return Err(e.into()),
    };
    match authorize::run(state, ws, &access, spec.kind, spec.runnable.as_str()).await {
        Ok(()) => Ok(access),
        Err(ApiError::NotFound(_)) => Err(lost()),
        Err(e) => Err(e),
    }
}

fn add_delivery_args(args: &mut Map<String, Value>, delivery: &Delivery) {
    if let Some(event) = &delivery.event {
        args.insert(EVENT_ARG.into(), Value::String(event.clone()));
    }
    if let Some(id) = &delivery.id {
        args.insert(DELIVERY_ARG.into(), Value::String(id.clone()));
    }
}

/// Starts the job: 202 + its id, or for a sync trigger its result (a repeated delivery: the
/// first job's).
async fn start(
    state: &AppState,
    ws: &WorkspaceId,
    (access, target, sync): (Access, RunTarget, bool),
    args: Map<String, Value>,
    mut opts: RunOptions,
) -> ApiResult<Response> {
    if sync {
        let resolved = (ws.clone(), access, target);
        return run_sync::run_and_wait(state, resolved, (args, opts, Uploads::default())).await;
    }
    let id = opts.job_id();
    match submit::submit(state, ws, &access, &target, args, &opts).await? {
        Submitted::Queued => Ok(accepted(id)),
        Submitted::Repeat(first) => Ok(accepted(first)),
    }
}

fn accepted(id: JobId) -> Response {
    let mut response = (StatusCode::ACCEPTED, id.to_string()).into_response();
    response.headers_mut().insert(
        JOB_ID_HEADER,
        HeaderValue::from_str(&id.to_string()).expect("a UUID is a valid header value"),
    );
    response
}
