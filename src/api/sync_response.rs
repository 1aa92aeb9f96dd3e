//! A sync result → the HTTP response (SPEC §3, §7 "Custom responses"): a result object may
//! choose its status, content type and headers with `wm_*` / `windmill_*` keys. What a script
//! shapes is served on the API's origin, where the login cookie lives, so it is made inert: no
//! content sniffing, a sandboxing Content-Security-Policy whenever the script chose the content
//! type, and no cookies or connection-level headers.

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::error::ApiError;

fn key<'a>(result: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    result
        .get(&format!("wm_{name}"))
        .or_else(|| result.get(&format!("windmill_{name}")))
}

/// True when the result asks for a custom response.
pub fn is_custom(result: &Value) -> bool {
    result.as_object().is_some_and(|map| {
        ["status_code", "content_type", "headers"]
            .iter()
            .any(|name| key(map, name).is_some())
    })
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The response for a completed job's result. `failed_status` is used for a failed job that
/// did not shape its own response.
pub fn respond(
    result: &Value,
    success: bool,
    failed_status: StatusCode,
) -> Result<Response, ApiError> {
    if !is_custom(result) {
        let status = if success {
            StatusCode::OK
        } else {
            failed_status
        };
        return Ok(json_response(status, result));
    }
    let map = result.as_object().expect("custom results are objects");
    let status = match key(map, "status_code") {
        None => StatusCode::OK,
        Some(code) => code
            .as_u64()
            .filter(|c| (200..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c as u16).ok())
            .ok_or_else(|| {
                ApiError::BadScriptResponse(format!(
                    "invalid status code {code}: expected an integer from 200 to 599"
                ))
            })?,
    };
    let content_type = match key(map, "content_type") {
        None => None,
        Some(Value::String(ct)) => Some(
            HeaderValue::from_str(ct)
                .map_err(|_| ApiError::BadScriptResponse(format!("invalid content type {ct:?}")))?,
        ),
        Some(other) => {
            return Err(ApiError::BadScriptResponse(format!(
                "invalid content type {other}: expected a string"
            )))
        }
    };
    let body = match (map.get("result"), &content_type) {
        (None, _) => String::new(),
        (Some(Value::String(text)), Some(_)) => text.clone(),
        (Some(value), _) => value.to_string(),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        content_type
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("application/json")),
    );
    let mut chose_type = content_type.is_some();
    if let Some(extra) = key(map, "headers") {
        let extra = extra.as_object().ok_or_else(|| {
            ApiError::BadScriptResponse("invalid headers: expected an object of strings".into())
        })?;
        for (name, value) in extra {
            let invalid = || ApiError::BadScriptResponse(format!("invalid header {name:?}"));
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            if REFUSED_HEADERS.contains(&name.as_str()) {
                return Err(ApiError::BadScriptResponse(format!(
                    "a script may not set the header {name:?}"
                )));
            }
            let value = value
                .as_str()
                .and_then(|v| HeaderValue::from_str(v).ok())
                .ok_or_else(invalid)?;
            if name == header::CONTENT_TYPE {
                if content_type.is_some() {
                    continue;
                }
                chose_type = true;
            }
            headers.insert(name, value);
        }
    }
    // Last, so that no header of the script's replaces them.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if chose_type {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    Ok(response)
}

/// Headers a script may not set: cookies (the API's origin holds the login cookie) and
/// connection-level headers (the server frames the response). Lowercase, as `HeaderName`s are.
const REFUSED_HEADERS: [&str; 11] = [
    "set-cookie",
    "set-cookie2",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn parts(result: Value) -> (u16, String, String, axum::http::HeaderMap) {
        let res = respond(&result, true, StatusCode::OK).unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let ct = headers[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            ct,
            String::from_utf8(body.to_vec()).unwrap(),
            headers,
        )
    }

    #[tokio::test]
    async fn plain_results_are_json() {
        let (status, ct, body, _) = parts(json!({"a": 1})).await;
        assert_eq!(
            (status, ct.as_str(), body.as_str()),
            (200, "application/json", r#"{"a":1}"#)
        );
        let (_, _, body, _) = parts(json!(null)).await;
        assert_eq!(body, "null");
    }

    #[tokio::test]
    async fn custom_status_type_and_headers() {
        let (status, _, body, _) =
            parts(json!({"wm_status_code": 201, "result": {"Hello": "World"}})).await;
        assert_eq!((status, body.as_str()), (201, r#"{"Hello":"World"}"#));
        let (status, ct, body, _) =
            parts(json!({"windmill_content_type": "text/csv", "result": "Hello;World"})).await;
        assert_eq!(
            (status, ct.as_str(), body.as_str()),
            (200, "text/csv", "Hello;World")
        );
        let (_, ct, body, headers) = parts(json!({
            "wm_headers": {"X-A": "1", "Content-Type": "text/plain"}, "result": "x"
        }))
        .await;
        assert_eq!((ct.as_str(), body.as_str()), ("text/plain", "\"x\""));
        assert_eq!(headers["x-a"], "1");
        let (_, ct, _, _) = parts(json!({
            "wm_content_type": "text/html", "wm_headers": {"content-type": "text/plain"}
        }))
        .await;
        assert_eq!(
            ct, "text/html",
            "wm_content_type wins over a Content-Type header"
        );
        let (status, _, body, _) = parts(json!({"wm_status_code": 204})).await;
        assert_eq!((status, body.as_str()), (204, ""));
    }

    #[tokio::test]
    async fn script_shaped_responses_are_inert() {
        let (_, ct, _, headers) = parts(json!({"wm_content_type": "text/html",
            "wm_headers": {"Content-Security-Policy": "default-src *", "X-Content-Type-Options": "sniff"},
            "result": "<script>alert(document.cookie)</script>"}))
        .await;
        assert_eq!(ct, "text/html");
        assert_eq!(headers["content-security-policy"], "sandbox");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let (_, _, _, headers) =
            parts(json!({"wm_headers": {"content-type": "image/svg+xml"}})).await;
        assert_eq!(
            headers["content-security-policy"], "sandbox",
            "a type chosen by header too"
        );
        let (_, _, _, headers) = parts(json!({"wm_status_code": 201})).await;
        assert!(
            headers.get("content-security-policy").is_none(),
            "JSON needs no sandbox"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }

    #[test]
    fn invalid_custom_responses_are_500_with_a_message() {
        for bad in [
            json!({"wm_status_code": 1000}),
            json!({"wm_status_code": 100}),
            json!({"wm_status_code": "201"}),
            json!({"wm_status_code": 201.5}),
            json!({"wm_headers": {"bad header": "x"}}),
            json!({"wm_headers": {"x": 1}}),
            json!({"wm_headers": "x"}),
            json!({"wm_content_type": 5}),
            json!({"wm_headers": {"Set-Cookie": "token=stolen; Path=/"}}),
            json!({"wm_headers": {"transfer-encoding": "chunked"}}),
            json!({"wm_headers": {"Connection": "close"}}),
        ] {
            let err = respond(&bad, true, StatusCode::OK).unwrap_err();
            assert!(matches!(err, ApiError::BadScriptResponse(_)), "{bad}");
            assert!(err.to_string().starts_with("Internal: "));
        }
    }

    #[test]
    fn failures_use_the_configured_status_unless_shaped() {
        let error = json!({"error": {"name": "E", "message": "m"}});
        let res = respond(&error, false, StatusCode::UNPROCESSABLE_ENTITY).unwrap();
        assert_eq!(res.status(), 422);
        let shaped = json!({"wm_status_code": 402, "wm_failure": "no", "error": {}});
        assert_eq!(
            respond(&shaped, false, StatusCode::OK).unwrap().status(),
            402
        );
    }
}
