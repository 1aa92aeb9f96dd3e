//! Extractors: the caller's token, JSON bodies with SPEC's 400/413 answers.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;

/// The first credential present: `Authorization: Bearer`, the `token` cookie, then `?token=`.
/// An invalid one is refused without trying the next.
pub fn presented_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or_default();
        return Some(token.trim().to_owned());
    }
    for cookies in parts.headers.get_all(header::COOKIE) {
        for pair in cookies.to_str().unwrap_or_default().split(';') {
            if let Some(token) = pair.trim().strip_prefix("token=") {
                return Some(token.to_owned());
            }
        }
    }
    let query = parts.uri.query()?;
    form_urlencoded_pairs(query)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// Decoded `key=value` pairs of a query string.
pub fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// An authenticated caller. 401 when no credential or an invalid one is presented.
pub struct Authed(pub Principal);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            presented_token(parts).ok_or_else(|| ApiError::Unauthorized("missing token".into()))?;
        Ok(Self(state.auth().authenticate(&token).await?))
    }
}

/// The raw body, with the size limit answered as SPEC's 413.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config().max_body_size;
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(format!(
                        "the body is larger than MAX_BODY_SIZE ({limit} bytes)"
                    ))
                } else {
                    ApiError::bad_request(format!("cannot read the body: {rejection}"))
                }
            })
    }
}

/// A JSON body deserialised into `T`; anything else is a 400 saying why.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}
