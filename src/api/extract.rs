//! Extractors: the caller's token, JSON bodies with SPEC's 400/413 answers.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::{AuthError, Principal};

/// Where a credential came from: a cookie is sent by browsers on their own, so cookie-only
/// requests get the cross-site guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Bearer,
    Cookie,
    Query,
}

/// The first credential present: `Authorization: Bearer`, the `token` cookie, then `?token=`.
/// An invalid one is refused without trying the next.
pub fn presented_token(parts: &Parts) -> Option<(String, Credential)> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or_default();
        return Some((token.trim().to_owned(), Credential::Bearer));
    }
    if let Some(token) = cookie_token(&parts.headers) {
        return Some((token, Credential::Cookie));
    }
    let query = parts.uri.query()?;
    form_urlencoded_pairs(query)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| (v, Credential::Query))
}

/// The `token` cookie's value, if one was sent.
pub fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|cookies| cookies.to_str().unwrap_or_default().split(';'))
        .find_map(|pair| pair.trim().strip_prefix("token=").map(str::to_owned))
}

/// The client's address (rate limits are per client address): the connection's peer, or with
/// `TRUSTED_PROXY_HOPS` = n, the n-th `X-Forwarded-For` entry from the right — the address the
/// outermost trusted proxy saw. Entries further left are the client's own claims.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let hops = state.config().trusted_proxy_hops;
        if hops == 0 {
            return Ok(Self(peer));
        }
        let forwarded: Vec<IpAddr> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|entry| entry.trim().parse().ok())
            .collect();
        let ip = forwarded
            .len()
            .checked_sub(hops)
            .map_or(peer, |i| forwarded[i]);
        Ok(Self(ip))
    }
}

/// Decoded `key=value` pairs of a query string.
pub fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// An authenticated caller. 401 when no credential or an invalid one is presented; 429 for an
/// invalid one when the client address failed too often (a valid one is always served).
pub struct Authed(pub Principal, pub Credential);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        let (token, source) =
            presented_token(parts).ok_or_else(|| ApiError::Unauthorized("missing token".into()))?;
        match state.auth().authenticate(&token).await {
            Ok(principal) => Ok(Self(principal, source)),
            Err(e @ AuthError::InvalidToken) => Err(state.token_failed(ip, e.into())),
            Err(e) => Err(e.into()),
        }
    }
}

impl Authed {
    /// Refuses a cookie-only request that a browser sent from another site (CSRF on GET
    /// webhooks that run code).
    pub fn refuse_cross_site(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.1 != Credential::Cookie {
            return Ok(());
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let host = header("host").unwrap_or_default();
        let foreign = |url: &str| {
            let authority = url.split("://").nth(1).unwrap_or(url);
            authority.split('/').next().unwrap_or_default() != host
        };
        let cross = header("sec-fetch-site") == Some("cross-site")
            || header("origin").is_some_and(|o| o != "null" && foreign(o))
            || header("referer").is_some_and(foreign);
        if cross {
            Err(ApiError::Forbidden(
                "cross-site requests cannot run scripts with a cookie; send a bearer token".into(),
            ))
        } else {
            Ok(())
        }
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
