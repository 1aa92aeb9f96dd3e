//! Login sessions: a password, or a one-time login link (`millrace dev` prints one), answers a
//! session token as text and sets it as an HttpOnly cookie; logout ends the session.

use axum::extract::State;
use axum::http::{header, request::Parts};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{presented_token, ClientIp, JsonBody};
use super::{passwords, users, AppState};
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
    start_session(&state, email).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginCode {
    code: String,
}

/// Log in with a one-time login link's code: it works once, within minutes of being made.
#[utoipa::path(post, path = "/api/auth/login_code", tag = "users", request_body = LoginCode,
    responses((status = 200, description = "the session token; also set as the `token` cookie", body = String),
              (status = 401), (status = 429)))]
pub async fn login_code(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<LoginCode>,
) -> ApiResult<Response> {
    let hash = token::hash(body.code.trim());
    match store::login_codes::redeem(state.pool(), &hash).await? {
        Some(email) => start_session(&state, &email).await,
        // Counted like an invalid token: codes are as unguessable as tokens, and guessing
        // them gets the same limit.
        None => Err(state.token_failed(
            ip,
            ApiError::Unauthorized(
                "this login link was used already or has expired; log in with a token or \
                 password, or restart `millrace dev` for a new link"
                    .into(),
            ),
        )),
    }
}

/// Log out: ends the login session presented (an API token is left alone) and clears the
/// cookie. Answers 200 whatever was presented.
#[utoipa::path(post, path = "/api/auth/logout", tag = "users",
    responses((status = 200, description = "the session ended; the `token` cookie cleared", body = String)))]
pub async fn logout(State(state): State<AppState>, parts: Parts) -> ApiResult<Response> {
    if let Some((secret, _)) = presented_token(&parts) {
        let hash = token::hash(&secret);
        if store::tokens::delete_session(state.pool(), &hash).await? {
            users::revoked(&state, &[hash.to_vec()]).await?;
        }
    }
    let cookie = "token=; HttpOnly; Path=/; SameSite=Lax; Max-Age=0";
    Ok(([(header::SET_COOKIE, cookie)], "logged out").into_response())
}

/// A new login session for `email`: its token as text, and as the `token` cookie.
async fn start_session(state: &AppState, email: &str) -> ApiResult<Response> {
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
