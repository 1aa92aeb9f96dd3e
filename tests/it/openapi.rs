//! `GET /api/openapi.json`: an OpenAPI 3 document whose every operation is really routed, and
//! which documents every route of SPEC §1, §2, §4, §5 and §7 that Millrace serves today.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Response, TestEnv, WS};

/// The router's catch-all answers 404 with this prefix (src/api/mod.rs, `no_route`).
const FALLBACK: &str = "Not found: no route for";

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Routes of the SPEC that this codebase serves (src/api/mod.rs, `documented_routes`), plus the
/// document itself and the health probes.
const SERVED: &[(&str, &str)] = &[
    // §1 running
    ("post", "/api/w/{workspace}/jobs/run/p/{path}"),
    ("head", "/api/w/{workspace}/jobs/run/p/{path}"),
    ("post", "/api/w/{workspace}/jobs/run/h/{hash}"),
    ("head", "/api/w/{workspace}/jobs/run/h/{hash}"),
    ("post", "/api/w/{workspace}/jobs/run_wait_result/p/{path}"),
    ("get", "/api/w/{workspace}/jobs/run_wait_result/p/{path}"),
    ("post", "/api/w/{workspace}/jobs/run_wait_result/h/{hash}"),
    ("get", "/api/w/{workspace}/jobs/run_wait_result/h/{hash}"),
    ("post", "/api/w/{workspace}/jobs/run_and_stream/p/{path}"),
    ("get", "/api/w/{workspace}/jobs/run_and_stream/p/{path}"),
    ("post", "/api/w/{workspace}/jobs/run_and_stream/h/{hash}"),
    ("get", "/api/w/{workspace}/jobs/run_and_stream/h/{hash}"),
    // §2 jobs
    ("get", "/api/w/{workspace}/jobs_u/get/{id}"),
    ("get", "/api/w/{workspace}/jobs_u/completed/get/{id}"),
    ("get", "/api/w/{workspace}/jobs_u/completed/get_result/{id}"),
    (
        "get",
        "/api/w/{workspace}/jobs_u/completed/get_result_maybe/{id}",
    ),
    ("get", "/api/w/{workspace}/jobs_u/get_logs/{id}"),
    ("get", "/api/w/{workspace}/jobs_u/getupdate_sse/{id}"),
    ("post", "/api/w/{workspace}/jobs_u/queue/cancel/{id}"),
    ("get", "/api/w/{workspace}/jobs/list"),
    // §4 and §7 identity
    ("post", "/api/users/tokens/create"),
    ("post", "/api/users/tokens/impersonate"),
    ("get", "/api/users/whoami"),
    ("post", "/api/users/create"),
    ("post", "/api/workspaces/create"),
    ("post", "/api/w/{workspace}/workspaces/add_user"),
    ("get", "/api/w/{workspace}/users/whoami"),
    // §5 scripts
    ("post", "/api/w/{workspace}/scripts/create"),
    ("get", "/api/w/{workspace}/scripts/get/p/{path}"),
    ("get", "/api/w/{workspace}/scripts/get/h/{hash}"),
    ("get", "/api/w/{workspace}/scripts/exists/p/{path}"),
    ("get", "/api/w/{workspace}/scripts/history/p/{path}"),
    ("get", "/api/w/{workspace}/scripts/list"),
    ("post", "/api/w/{workspace}/scripts/archive/p/{path}"),
    ("post", "/api/w/{workspace}/scripts/delete/p/{path}"),
    // meta
    ("get", "/api/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
];

/// `/a/{x}/b` → `/a/{}/b`: compares routes whatever their parameters are called.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('{');
            }
            '}' => {
                in_param = false;
                out.push('}');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// A concrete URL for a templated path.
fn concrete(path: &str, id: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|i| open + i)
            .unwrap_or_else(|| panic!("unbalanced {path}"));
        let name = rest[open + 1..close].trim_start_matches('*');
        out.push_str(match name {
            "workspace" | "ws" | "workspace_id" => WS,
            "path" => "u/alice/x",
            "hash" => "0123456789abcdef",
            "id" | "job_id" => id,
            "version" => "1",
            "token_prefix" => "abcdefghij",
            "name" => "x",
            "kind" => "script",
            "file" => "favicon.svg",
            other => panic!("no value for path parameter {{{other}}} in {path}"),
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

async fn send(env: &TestEnv, method: &str, path: &str) -> Response {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let body = [Method::POST, Method::PUT, Method::PATCH]
        .contains(&method)
        .then(|| json!({}));
    env.request(method, path, Some(&env.token), body).await
}

/// Why the answer shows that the request reached no handler, or that a handler crashed.
fn routing_problem(method: &str, url: &str, res: &Response) -> Option<String> {
    let what = format!(
        "{} {url} → {} {:?}",
        method.to_uppercase(),
        res.status,
        res.text
    );
    if res.status == 404 && res.text.starts_with(FALLBACK) {
        Some(format!("not routed: {what}"))
    } else if res.status == 405 {
        Some(format!("method not routed: {what}"))
    } else if res.status >= 500 {
        Some(format!("server error: {what}"))
    } else if method == "head" && res.status != 200 {
        // A HEAD answer has no body to tell the fallback's 404 apart; run routes answer 200.
        Some(format!("HEAD not answered 200: {what}"))
    } else {
        None
    }
}

async fn document(env: &TestEnv) -> Value {
    let res = env.get("/api/openapi.json", &env.token).await.expect(200);
    let content_type = res
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    res.json()
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("no `paths` object: {doc}"));
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("path item of {path} is not an object"));
        for method in METHODS {
            if item.contains_key(method) {
                ops.insert((method.to_owned(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn the_document_is_openapi_3() {
    let env = TestEnv::start().await;
    let doc = document(&env).await;
    let version = doc["openapi"]
        .as_str()
        .unwrap_or_else(|| panic!("no `openapi` version: {doc}"));
    assert!(version.starts_with("3."), "openapi = {version}");
    assert_eq!(doc["info"]["title"], json!("Millrace"));
    assert!(
        doc["info"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{}",
        doc["info"]
    );
    let ops = operations(&doc);
    assert!(
        ops.len() >= SERVED.len(),
        "only {} operations: {ops:?}",
        ops.len()
    );
    let mut problems = Vec::new();
    for (method, path) in &ops {
        let op = &doc["paths"][path][method];
        if !path.starts_with('/') || path.contains("{*") {
            problems.push(format!("{path}: not an OpenAPI path template"));
        }
        if op["responses"].as_object().is_none_or(|r| r.is_empty()) {
            problems.push(format!("{method} {path}: documents no responses"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn path_parameters_are_declared_as_openapi_3_requires() {
    let env = TestEnv::start().await;
    let doc = document(&env).await;
    let ops = operations(&doc);
    assert!(!ops.is_empty());
    let mut problems = Vec::new();
    for (method, path) in &ops {
        let op = &doc["paths"][path][method];
        // OpenAPI 3: every `{param}` of the template MUST be declared as a path parameter,
        // which MUST be required, and a path parameter MUST occur in the template.
        let path_params: Vec<&Value> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                doc["paths"][path]["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .filter(|p| p["in"] == json!("path"))
            .collect();
        let declared: BTreeSet<&str> = path_params
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        let template: BTreeSet<&str> = path
            .split('/')
            .filter(|s| s.starts_with('{'))
            .map(|s| s.trim_matches(|c| c == '{' || c == '}'))
            .collect();
        if declared != template {
            problems.push(format!(
                "{method} {path}: path parameters declared {declared:?}, template has {template:?}"
            ));
        }
        for param in path_params.iter().filter(|p| p["required"] != json!(true)) {
            problems.push(format!(
                "{method} {path}: path parameter {} is not required",
                param["name"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the OpenAPI document is invalid:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let env = TestEnv::start().await;
    // The detector itself: an unknown route does reach the fallback, and a known path with an
    // undocumented method is a 405.
    let res = env
        .get(&format!("/api/w/{WS}/no/such/route"), &env.token)
        .await
        .expect(404);
    assert!(res.text.starts_with(FALLBACK), "{}", res.text);
    let res = env
        .request(Method::DELETE, "/api/openapi.json", Some(&env.token), None)
        .await;
    assert!(
        res.status == 405 || (res.status == 404 && res.text.starts_with(FALLBACK)),
        "{} {}",
        res.status,
        res.text
    );

    let doc = document(&env).await;
    let ops = operations(&doc);
    assert!(!ops.is_empty());
    let id = uuid::Uuid::new_v4().to_string();
    let mut problems = Vec::new();
    for (method, path) in &ops {
        let url = concrete(path, &id);
        let res = send(&env, method, &url).await;
        problems.extend(routing_problem(method, &url, &res));
    }
    assert!(
        problems.is_empty(),
        "documented but not served:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn every_served_spec_route_is_documented() {
    let env = TestEnv::start().await;
    let doc = document(&env).await;
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path)| (method, shape(&path)))
        .collect();
    let missing: Vec<String> = SERVED
        .iter()
        .filter(|(method, path)| !documented.contains(&(method.to_string(), shape(path))))
        .map(|(method, path)| format!("{} {path}", method.to_uppercase()))
        .collect();
    assert!(
        missing.is_empty(),
        "served but not in /api/openapi.json: {missing:#?}"
    );

    // And each of them answers through its handler, never through the fallback or with a 500.
    let id = uuid::Uuid::new_v4().to_string();
    let mut problems = Vec::new();
    for (method, path) in SERVED {
        let url = concrete(path, &id);
        let res = send(&env, method, &url).await;
        problems.extend(routing_problem(method, &url, &res));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // A few answers that show the handler, not some other route, took the request.
    let res = env
        .get(&format!("/api/w/{WS}/jobs_u/get/{id}"), &env.token)
        .await
        .expect(404);
    assert!(res.text.contains(&id), "{}", res.text);
    env.get(
        &format!("/api/w/{WS}/scripts/exists/p/u/alice/x"),
        &env.token,
    )
    .await
    .expect(200);
    let res = env.get("/api/users/whoami", &env.token).await.expect(200);
    assert_eq!(res.json()["username"], json!("alice"));
}
