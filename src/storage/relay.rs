//! How a workspace's own store reaches its endpoint. The `minio` crate (0.4) builds its own
//! HTTP client, which follows redirects and resolves names itself, and accepts no other; so a
//! request hook points that client at a relay on loopback, one per store, which sends each
//! request on unchanged (still signed for the real host: the hook runs after `Host` is set)
//! through [`CheckedEndpoint::client`]: every address checked as a connection resolves it, no
//! redirect followed. The relay only ever connects on the endpoint's scheme and port, where
//! the guard allows, so a local process using it directly gains nothing it lacks.

use std::error::Error as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use minio::s3::client::hooks::{Extensions, RequestHooks};
use minio::s3::error::Error as MinioError;
use minio::s3::http::Url as MinioUrl;
use minio::s3::multimap_ext::Multimap;
use minio::s3::segmented_bytes::SegmentedBytes;
use minio::s3::types::{BucketName, ObjectKey};
use reqwest::Url;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::endpoint_guard::{literal_address, CheckedEndpoint, EndpointError};
use super::StorageError;

/// S3 error codes of the relay's own answers, which `StorageError::from_minio` reads back.
pub(super) const BLOCKED: &str = "MillraceEndpointBlocked";
pub(super) const UNREACHABLE: &str = "MillraceEndpointUnreachable";

/// A running relay; dropping it (with the last clone of its store) stops it.
pub(super) struct Relay {
    port: u16,
    _stop: DropGuard,
}

impl Relay {
    pub(super) async fn start(endpoint: CheckedEndpoint) -> Result<Self, StorageError> {
        let client = endpoint
            .client()
            .map_err(|e| StorageError::Other(format!("object storage client: {e}")))?;
        let relay_error =
            |e: std::io::Error| StorageError::Other(format!("object storage relay: {e}"));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(relay_error)?;
        let port = listener.local_addr().map_err(relay_error)?.port();
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::new(Upstream { endpoint, client }));
        let stop = CancellationToken::new();
        // Small S3 requests and answers would otherwise wait on delayed ACKs.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "object storage relay stopped");
            }
        });
        Ok(Self {
            port,
            _stop: stop.drop_guard(),
        })
    }

    /// The hook that sends a minio client's requests to this relay.
    pub(super) fn hook(&self) -> Arc<dyn RequestHooks + Send + Sync> {
        Arc::new(ToRelay { port: self.port })
    }
}

#[derive(Debug)]
struct ToRelay {
    port: u16,
}

#[async_trait::async_trait]
impl RequestHooks for ToRelay {
    fn name(&self) -> &'static str {
        "millrace-relay"
    }

    async fn before_signing_mut(
        &self,
        _method: &Method,
        url: &mut MinioUrl,
        _region: &str,
        _headers: &mut Multimap,
        _query_params: &Multimap,
        _bucket: Option<&BucketName>,
        _object: Option<&ObjectKey>,
        _body: Option<&SegmentedBytes>,
        _extensions: &mut Extensions,
    ) -> Result<(), MinioError> {
        url.https = false;
        url.host = Ipv4Addr::LOCALHOST.to_string();
        url.port = self.port;
        Ok(())
    }
}

struct Upstream {
    endpoint: CheckedEndpoint,
    client: reqwest::Client,
}

impl Upstream {
    /// Where minio meant the request to go: the host it signed for — the endpoint's own, or a
    /// bucket or region host that it derives from an AWS or Alibaba endpoint — on the endpoint's
    /// scheme and port.
    fn target(&self, parts: &Parts) -> Result<Url, String> {
        let authority: Authority = parts
            .headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse().ok())
            .ok_or("a request without a valid Host header")?;
        let url = self.endpoint.url();
        let default_port = if url.scheme() == "https" { 443 } else { 80 };
        if authority.port_u16().unwrap_or(default_port) != self.endpoint.port() {
            return Err("a request for another port than the endpoint's".into());
        }
        let mut target = url.clone();
        target
            .set_host(Some(authority.host()))
            .map_err(|_| "a request for an invalid host")?;
        // A client connects to an address without resolving it: no resolver check then. The
        // host as the URL reads it, where `2130706433` is already 127.0.0.1.
        let host = target.host_str().unwrap_or_default();
        if let Some(address) = literal_address(host) {
            self.endpoint
                .guard()
                .check_address(host, address, self.endpoint.port())
                .map_err(|e| e.to_string())?;
        }
        target.set_path(parts.uri.path());
        target.set_query(parts.uri.query());
        Ok(target)
    }
}

async fn forward(State(upstream): State<Arc<Upstream>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let target = match upstream.target(&parts) {
        Ok(target) => target,
        Err(e) => return s3_error(StatusCode::FORBIDDEN, BLOCKED, &e),
    };
    let mut headers = parts.headers;
    remove_hop_by_hop(&mut headers);
    let mut outgoing = upstream
        .client
        .request(parts.method, target)
        .headers(headers);
    // A streamed empty body would go out chunked, which some stores refuse on a GET.
    if !body.is_end_stream() {
        outgoing = outgoing.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    match outgoing.send().await {
        // 304 Not Modified answers a conditional request and goes back as it is.
        Ok(response)
            if response.status().is_redirection()
                && response.status() != StatusCode::NOT_MODIFIED =>
        {
            s3_error(
                StatusCode::FORBIDDEN,
                BLOCKED,
                &format!(
                    "the object storage answered {} (a redirect), which is not followed",
                    response.status()
                ),
            )
        }
        Ok(response) => {
            let mut response = axum::http::Response::from(response).map(Body::new);
            remove_hop_by_hop(response.headers_mut());
            response
        }
        Err(e) => match guard_error(&e) {
            Some(refused @ EndpointError::Refused { .. }) => {
                s3_error(StatusCode::FORBIDDEN, BLOCKED, &refused.to_string())
            }
            _ => s3_error(StatusCode::BAD_GATEWAY, UNREACHABLE, &with_sources(&e)),
        },
    }
}

/// The guard's answer, when it is why the client could not connect.
fn guard_error(error: &reqwest::Error) -> Option<&EndpointError> {
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<EndpointError>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

/// reqwest's own message hides the cause ("error sending request").
fn with_sources(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Headers of one connection, not of the request: the relay's own connections set theirs.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// An answer as an S3 server words its errors, so that minio reports its code and message.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let message = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::endpoint_guard::EndpointGuard;

    async fn ask(port: u16, host: &str) -> reqwest::Result<(u16, String)> {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(format!("http://127.0.0.1:{port}/bucket/key"))
            .header(header::HOST, host)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    #[tokio::test]
    async fn the_relay_connects_only_where_the_guard_allows_and_stops_with_its_store() {
        let endpoint = EndpointGuard::default()
            .check("https://8.8.8.8")
            .await
            .unwrap();
        let relay = Relay::start(endpoint).await.unwrap();
        // `localhost` goes through the client's resolver, the literals through `target`.
        for host in [
            "localhost:443",
            "LocalHost.",
            "127.0.0.1",
            "2130706433",
            "0x7f.1:443",
            "[::1]:443",
            "169.254.169.254",
        ] {
            let (status, body) = ask(relay.port, host).await.unwrap();
            assert_eq!(status, 403, "{host}: {body}");
            assert!(body.contains(BLOCKED), "{host}: {body}");
            assert!(body.contains("not a public address"), "{host}: {body}");
        }
        let (status, body) = ask(relay.port, "8.8.8.8:80").await.unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("another port"), "{body}");

        let port = relay.port;
        drop(relay);
        let mut stopped = false;
        for _ in 0..50 {
            if ask(port, "8.8.8.8").await.is_err() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(stopped, "the relay still answers");
    }
}
