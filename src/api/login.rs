//! Login sessions: a password, or a one-time login link (`millrace dev` prints one), answers a
//! session token as text and sets it as an HttpOnly cookie (`Secure` when the caller came over
//! https); logout ends the session.

use axum::extract::State;
use axum::http::{header, request::Parts, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{cookie_token, presented_token, ClientIp, JsonBody};
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
    headers: HeaderMap,
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
    start_session(&state, email, over_https(&state, &headers)).await
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
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoginCode>,
) -> ApiResult<Response> {
    let hash = token::hash(body.code.trim());
    match store::login_codes::redeem(state.pool(), &hash).await? {
        Some(email) => start_session(&state, &email, over_https(&state, &headers)).await,
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

/// Log out: ends the login session of the `token` cookie (what a browser logs out of), or
/// without a cookie the session presented otherwise (an API token is left alone), and clears
/// the cookie. Answers 200 whatever was presented.
#[utoipa::path(post, path = "/api/auth/logout", tag = "users",
    responses((status = 200, description = "the session ended; the `token` cookie cleared", body = String)))]
pub async fn logout(State(state): State<AppState>, parts: Parts) -> ApiResult<Response> {
    let session = cookie_token(&parts.headers).or_else(|| presented_token(&parts).map(|(t, _)| t));
    if let Some(secret) = session {
        let hash = token::hash(&secret);
        if store::tokens::delete_session(state.pool(), &hash).await? {
            users::revoked(&state, &[hash.to_vec()]).await?;
        }
    }
    let cookie = session_cookie("", 0, over_https(&state, &parts.headers));
    Ok(([(header::SET_COOKIE, cookie)], "logged out").into_response())
}

/// The `token` cookie: HttpOnly, and `Secure` when the caller came over https, so that a
/// browser never sends it in clear.
fn session_cookie(secret: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("token={secret}; HttpOnly; Path=/; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// Whether the caller reached the API over https: `BASE_URL` is https, or (with
/// `TRUSTED_PROXY_HOPS`) the trusted proxy says so in `X-Forwarded-Proto`; the entry it wrote
/// is found as `ClientIp` finds its address, and a client's own claim counts for nothing.
fn over_https(state: &AppState, headers: &HeaderMap) -> bool {
    let config = state.config();
    if config.base_url.starts_with("https://") {
        return true;
    }
    let hops = config.trusted_proxy_hops;
    if hops == 0 {
        return false;
    }
    let protos: Vec<&str> = headers
        .get_all("x-forwarded-proto")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // A proxy that set the header rather than appending to it left a single entry.
    let at = protos.len().saturating_sub(hops);
    protos
        .get(at)
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// A new login session for `email`: its token as text, and as the `token` cookie.
async fn start_session(state: &AppState, email: &str, secure: bool) -> ApiResult<Response> {
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
    let cookie = session_cookie(&secret, SESSION_DAYS * 24 * 3600, secure);
    Ok(([(header::SET_COOKIE, cookie)], secret).into_response())
}
