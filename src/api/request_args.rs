//! A webhook request → the job's arguments and run options (SPEC §1 "Body → arguments",
//! "Query args", §7 "Bodies"). Pure functions of headers, query and body: no I/O.

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use crate::domain::Tag;
use crate::store::deliveries::DeliveryKey;

/// Options of a run route, parsed from its query string.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub job_id: Option<Uuid>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub tag: Option<Tag>,
    pub parent_job: Option<Uuid>,
    /// The caller's W3C `traceparent` header, when valid.
    pub trace: Option<crate::domain::TraceParent>,
    /// The request's `Idempotency-Key` or delivery id: a repeat within its window answers the
    /// job that claimed it (`idempotency.rs`).
    pub once: Option<DeliveryKey>,
    /// The caller named the id (`job_id=`), rather than the route making one.
    id_preset: bool,
    raw: bool,
    wrap_body: bool,
    include_header: Vec<String>,
    include_query: Vec<String>,
    /// GET sync/stream routes: the arguments, base64-encoded JSON.
    payload: Option<String>,
    /// Every query pair, for `include_query`.
    query: Vec<(String, String)>,
}

/// The caller's `traceparent`; an invalid one is ignored, as W3C Trace Context asks.
pub fn traceparent(headers: &axum::http::HeaderMap) -> Option<crate::domain::TraceParent> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    crate::domain::TraceParent::parse(value)
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "query arg {name}={value:?} is not a boolean"
        ))),
    }
}

fn comma_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl RunOptions {
    pub fn parse(query: Vec<(String, String)>, now: DateTime<Utc>) -> Result<Self, ApiError> {
        let mut opts = RunOptions::default();
        for (name, value) in &query {
            match name.as_str() {
                "job_id" => {
                    opts.job_id = Some(Uuid::parse_str(value).map_err(|e| {
                        ApiError::bad_request(format!("query arg job_id is not a UUID: {e}"))
                    })?);
                    opts.id_preset = true;
                }
                "scheduled_for" => {
                    let at = DateTime::parse_from_rfc3339(value).map_err(|e| {
                        ApiError::bad_request(format!(
                            "query arg scheduled_for is not an RFC 3339 time: {e}"
                        ))
                    })?;
                    opts.scheduled_for = Some(at.with_timezone(&Utc));
                }
                "scheduled_in_secs" => {
                    let secs: i64 = value.parse().map_err(|e| {
                        ApiError::bad_request(format!(
                            "query arg scheduled_in_secs is not a whole number: {e}"
                        ))
                    })?;
                    let at = chrono::Duration::try_seconds(secs)
                        .filter(|d| *d >= chrono::Duration::zero())
                        .and_then(|delay| now.checked_add_signed(delay))
                        .ok_or_else(|| {
                            ApiError::bad_request("query arg scheduled_in_secs is out of range")
                        })?;
                    opts.scheduled_for = Some(at);
                }
                "tag" => opts.tag = Some(Tag::parse(value)?),
                "raw" => opts.raw = parse_bool(name, value)?,
                "wrap_body" => opts.wrap_body = parse_bool(name, value)?,
                "include_header" => opts.include_header.extend(comma_list(value)),
                "include_query" => opts.include_query.extend(comma_list(value)),
                "payload" => opts.payload = Some(value.clone()),
                // Windmill's client sends these; a job started by a script records its parent.
                "parent_job" => opts.parent_job = Uuid::parse_str(value).ok(),
                _ => {}
            }
        }
        opts.query = query;
        Ok(opts)
    }
}

impl RunOptions {
    /// The job's id, made now unless the caller preset one: uploads are named after it before
    /// the job exists.
    pub fn job_id(&mut self) -> Uuid {
        *self.job_id.get_or_insert_with(Uuid::now_v7)
    }

    pub fn job_id_preset(&self) -> bool {
        self.id_preset
    }

    /// Sync and stream routes run at once, whatever the request says.
    pub fn run_now(mut self) -> Self {
        self.scheduled_for = None;
        self
    }
}

/// `payload` of a GET run route: base64 (standard or URL-safe, padded or not) of JSON.
fn decode_payload(payload: &str) -> Result<String, ApiError> {
    use base64::alphabet::{STANDARD, URL_SAFE};
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let bytes = GeneralPurpose::new(&STANDARD, config)
        .decode(payload)
        .or_else(|_| GeneralPurpose::new(&URL_SAFE, config).decode(payload))
        .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| ApiError::bad_request("payload is not UTF-8 JSON"))
}

/// The arguments of a GET sync/stream route, from its `payload` query arg.
pub fn build_get_args(
    headers: &HeaderMap,
    opts: &RunOptions,
    instance_headers: &[String],
) -> Result<Map<String, Value>, ApiError> {
    let (parsed, text) = match &opts.payload {
        None => (Value::Object(Map::new()), String::new()),
        Some(payload) => {
            let text = decode_payload(payload)?;
            let value = serde_json::from_str(&text)
                .map_err(|e| ApiError::bad_request(format!("payload is not JSON: {e}")))?;
            (value, text)
        }
    };
    let mut args = if opts.wrap_body {
        Map::from_iter([("body".to_owned(), parsed)])
    } else {
        json_to_args(parsed)
    };
    if opts.raw {
        args.insert("raw_string".into(), Value::String(text));
    }
    add_header_and_query_args(&mut args, headers, opts, instance_headers);
    Ok(args)
}

enum BodyKind {
    Json { explicit: bool },
    Form,
    Multipart,
    Other,
}

fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return BodyKind::Json { explicit: false };
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        BodyKind::Json { explicit: true }
    } else if essence == "application/x-www-form-urlencoded" {
        BodyKind::Form
    } else if essence == "multipart/form-data" {
        BodyKind::Multipart
    } else {
        BodyKind::Other
    }
}

/// Whether the body is `multipart/form-data`, which `multipart::RunBody` streams instead of
/// buffering.
pub fn is_multipart(headers: &HeaderMap) -> bool {
    matches!(body_kind(headers), BodyKind::Multipart)
}

/// The arguments of a multipart body from its fields (text → strings, files → S3 objects, read
/// by `multipart`). `raw` does not apply: the body was streamed, not kept.
pub fn build_multipart_args(
    fields: Map<String, Value>,
    headers: &HeaderMap,
    opts: &RunOptions,
    instance_headers: &[String],
) -> Map<String, Value> {
    let mut args = if opts.wrap_body {
        Map::from_iter([("body".to_owned(), Value::Object(fields))])
    } else {
        fields
    };
    add_header_and_query_args(&mut args, headers, opts, instance_headers);
    args
}

/// A parsed JSON value as arguments: an object's keys, anything else under `body`.
fn json_to_args(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("body".to_owned(), other)]),
    }
}

/// Builds the arguments of a job from a request (not multipart: see `multipart`).
pub fn build_args(
    headers: &HeaderMap,
    body: &[u8],
    opts: &RunOptions,
    instance_headers: &[String],
) -> Result<Map<String, Value>, ApiError> {
    let kind = body_kind(headers);
    if matches!(kind, BodyKind::Multipart) {
        // `multipart::RunBody` reads these as a stream and never buffers them.
        return Err(ApiError::bad_request(
            "a multipart/form-data body cannot be read here",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::UnsupportedMediaType("the body is not valid UTF-8 text".into()))?;
    let (parsed, raw_kept) = if body.is_empty() {
        (Value::Object(Map::new()), false)
    } else {
        match kind {
            BodyKind::Json { explicit } => match serde_json::from_str::<Value>(text) {
                Ok(value) => (value, false),
                Err(e) if explicit => {
                    return Err(ApiError::bad_request(format!("invalid JSON body: {e}")))
                }
                Err(_) => (raw_string_args(text), true),
            },
            BodyKind::Form => {
                let fields = form_urlencoded::parse(body)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect();
                (Value::Object(fields), false)
            }
            BodyKind::Other | BodyKind::Multipart => (raw_string_args(text), true),
        }
    };
    let mut args = if opts.wrap_body {
        Map::from_iter([("body".to_owned(), parsed)])
    } else if raw_kept {
        // Already `{raw_string, …keys of a JSON object}`.
        match parsed {
            Value::Object(map) => map,
            _ => unreachable!("raw_string_args builds an object"),
        }
    } else {
        json_to_args(parsed)
    };
    if opts.raw {
        args.insert("raw_string".into(), Value::String(text.to_owned()));
    }
    add_header_and_query_args(&mut args, headers, opts, instance_headers);
    Ok(args)
}

/// "Any other type": `raw_string` plus the keys of the body if it parses as a JSON object.
fn raw_string_args(text: &str) -> Value {
    let mut args = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    args.insert("raw_string".into(), Value::String(text.to_owned()));
    Value::Object(args)
}

/// `include_header`, `INCLUDE_HEADERS` and `include_query`: these win over body keys.
fn add_header_and_query_args(
    args: &mut Map<String, Value>,
    headers: &HeaderMap,
    opts: &RunOptions,
    instance_headers: &[String],
) {
    for name in instance_headers.iter().chain(&opts.include_header) {
        if let Some(value) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
            let arg = name.to_ascii_lowercase().replace('-', "_");
            args.insert(arg, Value::String(value.to_owned()));
        }
    }
    for name in &opts.include_query {
        if let Some((_, value)) = opts.query.iter().find(|(k, _)| k == name) {
            args.insert(name.clone(), Value::String(value.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(content_type: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        h
    }

    fn opts(query: &[(&str, &str)]) -> RunOptions {
        let pairs = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RunOptions::parse(pairs, Utc::now()).unwrap()
    }

    fn args(ct: Option<&str>, body: &str, query: &[(&str, &str)]) -> Value {
        Value::Object(build_args(&headers(ct), body.as_bytes(), &opts(query), &[]).unwrap())
    }

    #[test]
    fn json_bodies() {
        assert_eq!(args(None, r#"{"a":1}"#, &[]), json!({"a": 1}));
        assert_eq!(
            args(Some("application/json"), "[1,2]", &[]),
            json!({"body": [1, 2]})
        );
        assert_eq!(
            args(Some("application/vnd.x+json"), "null", &[]),
            json!({"body": null})
        );
        assert_eq!(args(Some("application/json"), "", &[]), json!({}));
        assert_eq!(args(None, "  {\"a\":1}", &[]), json!({"a": 1}));
        let bad = build_args(&headers(Some("application/json")), b"{", &opts(&[]), &[]);
        assert!(matches!(bad, Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn other_bodies() {
        assert_eq!(
            args(Some("application/x-www-form-urlencoded"), "a=1&b=x+y", &[]),
            json!({"a": "1", "b": "x y"})
        );
        assert_eq!(
            args(Some("text/plain"), "hi", &[]),
            json!({"raw_string": "hi"})
        );
        assert_eq!(
            args(Some("text/plain"), r#"{"k":true}"#, &[]),
            json!({"k": true, "raw_string": "{\"k\":true}"})
        );
        assert_eq!(
            args(None, "not json", &[]),
            json!({"raw_string": "not json"})
        );
        let binary = build_args(&headers(Some("text/plain")), &[0xff, 0xfe], &opts(&[]), &[]);
        assert!(matches!(binary, Err(ApiError::UnsupportedMediaType(_))));
    }

    #[test]
    fn multipart_fields_take_query_options() {
        let fields = Map::from_iter([
            ("a".to_owned(), json!("1")),
            ("q".to_owned(), json!("body")),
        ]);
        let o = opts(&[("include_query", "q"), ("q", "query")]);
        let got = build_multipart_args(fields.clone(), &HeaderMap::new(), &o, &[]);
        assert_eq!(Value::Object(got), json!({"a": "1", "q": "query"}));
        let wrapped = opts(&[("wrap_body", "true"), ("raw", "true")]);
        let got = build_multipart_args(fields, &HeaderMap::new(), &wrapped, &[]);
        assert_eq!(Value::Object(got), json!({"body": {"a": "1", "q": "body"}}));
        assert!(is_multipart(&headers(Some(
            "multipart/form-data; boundary=x"
        ))));
        assert!(!is_multipart(&headers(Some("text/plain"))));
    }

    #[test]
    fn query_options() {
        assert_eq!(
            args(None, r#"{"a":1}"#, &[("raw", "true")]),
            json!({"a": 1, "raw_string": "{\"a\":1}"})
        );
        assert_eq!(
            args(None, r#"{"a":1}"#, &[("wrap_body", "true")]),
            json!({"body": {"a": 1}})
        );
        assert_eq!(
            args(
                None,
                r#"{"a":1,"q":"body"}"#,
                &[("include_query", "q"), ("q", "query")]
            ),
            json!({"a": 1, "q": "query"})
        );
        let mut h = headers(None);
        h.insert("x-sign", HeaderValue::from_static("abc"));
        let got = build_args(
            &h,
            br#"{"x_sign":"body"}"#,
            &opts(&[("include_header", "X-Sign")]),
            &[],
        )
        .unwrap();
        assert_eq!(Value::Object(got), json!({"x_sign": "abc"}));
        let get = |payload: &str| {
            let o = opts(&[("payload", payload)]);
            build_get_args(&HeaderMap::new(), &o, &[]).map(Value::Object)
        };
        // {"a":"é?"} in every base64 flavour.
        for payload in [
            "eyJhIjoiw6k/In0=",
            "eyJhIjoiw6k/In0",
            "eyJhIjoiw6k_In0=",
            "eyJhIjoiw6k_In0",
        ] {
            assert_eq!(get(payload).unwrap(), json!({"a": "é?"}), "{payload}");
        }
        assert_eq!(get("WzFd").unwrap(), json!({"body": [1]}));
        assert!(matches!(get("not base64!"), Err(ApiError::BadRequest(_))));
        assert!(matches!(get("bm90IGpzb24"), Err(ApiError::BadRequest(_))));
        let raw = opts(&[("payload", "eyJhIjoxfQ"), ("raw", "true")]);
        assert_eq!(
            Value::Object(build_get_args(&HeaderMap::new(), &raw, &[]).unwrap()),
            json!({"a": 1, "raw_string": "{\"a\":1}"})
        );
        for bad in [
            ("job_id", "nope"),
            ("scheduled_for", "tomorrow"),
            ("scheduled_in_secs", "x"),
            ("scheduled_in_secs", "-1"),
            ("scheduled_in_secs", "NaN"),
            ("scheduled_in_secs", "1.5"),
            ("scheduled_in_secs", "9000000000000"),
            ("scheduled_in_secs", "99999999999999999999"),
            ("tag", "a b"),
            ("raw", "maybe"),
        ] {
            let pairs = vec![(bad.0.to_string(), bad.1.to_string())];
            assert!(RunOptions::parse(pairs, Utc::now()).is_err(), "{bad:?}");
        }
    }
}
