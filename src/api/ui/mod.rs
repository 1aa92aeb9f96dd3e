//! The Runs page: plain HTML, CSS and JavaScript compiled into the binary and served at `/`.
//! It only calls the API, with the caller's token or login cookie, so it can do exactly what
//! the API lets that caller do. Assets are served under names that carry a hash of their
//! content, cached for a year; the page that names them is revalidated (ETag) on every load,
//! so a new binary's assets are picked up at once.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// No inline script or style, nothing from elsewhere, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    /// Its name in `index.html`, under `/ui/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("favicon.svg"),
    },
];

const INDEX: &str = include_str!("index.html");

/// The page with the hashed asset names, its ETag, and the assets by hashed name.
struct Site {
    index: String,
    index_etag: String,
    assets: HashMap<String, &'static Asset>,
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// `app.js` → `app.<hash>.js`.
fn hashed_name(asset: &Asset) -> String {
    let hash = digest(asset.body);
    match asset.name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{}.{hash}", asset.name),
    }
}

static SITE: LazyLock<Site> = LazyLock::new(|| {
    let mut index = INDEX.to_owned();
    let mut assets = HashMap::new();
    for asset in ASSETS {
        let hashed = hashed_name(asset);
        index = index.replace(
            &format!("\"/ui/{}\"", asset.name),
            &format!("\"/ui/{hashed}\""),
        );
        assets.insert(hashed, asset);
    }
    Site {
        index_etag: format!("\"{}\"", digest(index.as_bytes())),
        index,
        assets,
    }
});

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // A one-time login link's code is in the page's URL: never sent on to anyone.
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// The Runs page.
#[utoipa::path(get, path = "/", tag = "ui",
    responses((status = 200, description = "the Runs page", content_type = "text/html"),
              (status = 304, description = "unchanged since the ETag given in If-None-Match")))]
pub async fn index(headers: HeaderMap) -> Response {
    let site = &*SITE;
    let etag = HeaderValue::from_str(&site.index_etag).expect("hex in quotes");
    let response = if matches_etag(&headers, &site.index_etag) {
        (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response()
    } else {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (header::ETAG, etag),
            ],
            site.index.clone(),
        )
            .into_response()
    };
    secured(response)
}

/// A script, style sheet or image of the Runs page, by its hashed name: immutable.
#[utoipa::path(get, path = "/ui/{file}", tag = "ui",
    params(("file" = String, Path, description = "a hashed asset name, as the page names it")),
    responses((status = 200, description = "the asset"), (status = 404)))]
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = SITE
        .assets
        .get(&file)
        .ok_or_else(|| ApiError::not_found(format!("no asset {file}")))?;
    Ok(secured(
        (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.body,
        )
            .into_response(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_hashed_name() {
        let site = &*SITE;
        assert_eq!(site.assets.len(), ASSETS.len());
        for name in site.assets.keys() {
            assert!(
                site.index.contains(&format!("\"/ui/{name}\"")),
                "{name} is not named by index.html"
            );
        }
        for asset in ASSETS {
            assert!(
                !site.index.contains(&format!("\"/ui/{}\"", asset.name)),
                "{} is still named without its hash",
                asset.name
            );
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        // The policy would block them; this says which one at build time.
        assert!(!INDEX.contains("<script>") && !INDEX.contains(" style="));
        assert!(!INDEX.contains("<style"));
    }
}
