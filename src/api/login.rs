//! Password login: answers a session token as text and sets it as an HttpOnly cookie.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ClientIp, JsonBody};
use super::{passwords, AppState};
use crate::auth::token;
use crate::store::{self, tokens::NewToken};

/// How long a login session lasts.
const SESSION_DAYS: i64 = 30;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Login {
    email: String,
    password: String,
}

/// Log in with a password.
#[utoipa::path(post, path = "/api/auth/login", tag = "users", request_body = Login,
    responses((status = 200, description = "the session token; also set as the `token` cookie", body = String),
              (status = 401), (status = 429)))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<Login>,
) -> ApiResult<Response> {
    // Trimmed as at user creation, so a pasted address with a stray space still matches.
    let email = body.email.trim();
    state.check_login_rate(email, ip)?;
    let stored = store::users::password_hash(state.pool(), email).await?;
    if !passwords::verify(&state, body.password, stored).await? {
        state.record_login_failure(email, ip);
        return Err(ApiError::Unauthorized("invalid email or password".into()));
    }
    let secret = token::generate();
    let hash = token::hash(&secret);
    let expiration = Utc::now() + chrono::Duration::days(SESSION_DAYS);
    store::tokens::insert(
        state.pool(),
        &NewToken {
            hash: &hash,
            prefix: token::prefix(&secret),
            email,
            label: Some("session"),
            scopes: None,
            workspace_id: None,
            expiration: Some(expiration),
            session: true,
        },
    )
    .await?;
    let cookie = format!(
        "token={secret}; HttpOnly; Path=/; SameSite=Lax; Max-Age={}",
        SESSION_DAYS * 24 * 3600
    );
    Ok(([(header::SET_COOKIE, cookie)], secret).into_response())
}
