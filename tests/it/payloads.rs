//! Webhook payloads as real senders post them (SPEC §1 "Body → arguments", "Query args"):
//! every content type, `raw`, `wrap_body`, headers and query args, Slack's signed form posts
//! and GitHub's signed JSON, each verified inside a Python script.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::{Options, Response, TestEnv, WS};

const ECHO: &str = "def main(**kwargs):\n    return kwargs\n";

/// POSTs `body` to the sync webhook of `u/alice/<script>` and returns the answer.
async fn call(
    env: &TestEnv,
    script: &str,
    query: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Response {
    let url = env.url(&format!(
        "/api/w/{WS}/jobs/run_wait_result/p/u/alice/{script}?{query}"
    ));
    let mut req = env.http.post(url).bearer_auth(&env.token).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.unwrap();
    Response {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        text: res.text().await.unwrap(),
    }
}

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn no_500(env: &TestEnv) {
    assert!(
        !env.logs().contains("internal error"),
        "a request answered 500"
    );
}

#[tokio::test]
async fn every_content_type_becomes_arguments() {
    let env = TestEnv::with(Options {
        workers: 1,
        api_env: vec![("INCLUDE_HEADERS".into(), "X-Request-Id".into())],
        ..Default::default()
    })
    .await;
    env.script("u/alice/echo", "python3", ECHO).await;
    let cases: Vec<(Option<&str>, &str, Value)> = vec![
        (Some("application/json"), r#"{"a": 1}"#, json!({"a": 1})),
        (
            Some("application/json; charset=utf-8"),
            "[1, 2]",
            json!({"body": [1, 2]}),
        ),
        (
            Some("application/vnd.github+json"),
            r#"{"b": [true]}"#,
            json!({"b": [true]}),
        ),
        (None, r#"{"n": null}"#, json!({"n": null})),
        (Some("application/json"), "42", json!({"body": 42})),
        (
            Some("application/x-www-form-urlencoded"),
            "a=1&b=x+y&c=%C3%A9",
            json!({"a": "1", "b": "x y", "c": "é"}),
        ),
        (
            Some("text/plain"),
            "hello there",
            json!({"raw_string": "hello there"}),
        ),
        (
            Some("application/xml"),
            "<a><b>1</b></a>",
            json!({"raw_string": "<a><b>1</b></a>"}),
        ),
        (
            Some("text/xml; charset=utf-8"),
            "<?xml version=\"1.0\"?><x/>",
            json!({"raw_string": "<?xml version=\"1.0\"?><x/>"}),
        ),
        (
            Some("application/x-custom"),
            r#"{"k": "v"}"#,
            json!({"k": "v", "raw_string": r#"{"k": "v"}"#}),
        ),
        (None, "not json", json!({"raw_string": "not json"})),
        (Some("text/plain"), "", json!({})),
    ];
    for (content_type, body, expected) in cases {
        let res = call(&env, "echo", "", content_type, &[], body.to_owned()).await;
        assert_eq!(res.status, 200, "{content_type:?} {body}: {}", res.text);
        assert_eq!(res.json(), expected, "{content_type:?} {body}");
    }

    // Invalid JSON under a JSON content type: 400 with the reason.
    for ct in ["application/json", "application/cloudevents+json"] {
        let res = call(&env, "echo", "", Some(ct), &[], "{\"a\": tru").await;
        assert_eq!(res.status, 400, "{ct}");
        assert!(
            res.text.starts_with("Bad request: invalid JSON body") && res.text.contains("line 1"),
            "{}",
            res.text
        );
    }

    // wrap_body, for objects and other values alike.
    let res = call(
        &env,
        "echo",
        "wrap_body=true",
        Some("application/json"),
        &[],
        r#"{"a": 1}"#,
    )
    .await
    .expect(200);
    assert_eq!(res.json(), json!({"body": {"a": 1}}));
    let res = call(
        &env,
        "echo",
        "wrap_body=true",
        Some("application/x-www-form-urlencoded"),
        &[],
        "a=1",
    )
    .await
    .expect(200);
    assert_eq!(res.json(), json!({"body": {"a": "1"}}));

    // include_header, INCLUDE_HEADERS and include_query win over body keys of the same name.
    let body = json!({"x_sign": "body", "x_request_id": "body", "q": "body", "keep": 1});
    let res = call(
        &env,
        "echo",
        "include_header=X-Sign,Missing-Header&include_query=q,absent&q=from-query&other=ignored",
        Some("application/json"),
        &[("X-Sign", "from-header"), ("X-Request-Id", "req-7")],
        body.to_string(),
    )
    .await
    .expect(200);
    assert_eq!(
        res.json(),
        json!({"x_sign": "from-header", "x_request_id": "req-7", "q": "from-query", "keep": 1})
    );
    // The same on a form body and on the async route.
    let res = call(
        &env,
        "echo",
        "include_query=q&q=query",
        Some("application/x-www-form-urlencoded"),
        &[],
        "q=form&r=2",
    )
    .await
    .expect(200);
    assert_eq!(res.json(), json!({"q": "query", "r": "2"}));
    let id = env
        .http
        .post(env.url(&format!(
            "/api/w/{WS}/jobs/run/p/u/alice/echo?include_header=x-sign"
        )))
        .bearer_auth(&env.token)
        .header("x-sign", "async")
        .json(&json!({"x_sign": "body"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let done = env.wait(&id, std::time::Duration::from_secs(20)).await;
    assert_eq!(done["result"], json!({"x_sign": "async"}));
    no_500(&env);
}

#[tokio::test]
async fn raw_string_is_the_body_byte_for_byte() {
    let env = TestEnv::start().await;
    env.script("u/alice/echo", "python3", ECHO).await;
    let odd = "{ \"a\" :\t1 ,\r\n  \"é\": \"ü 😀 \\u00e9\"\n,\"sp\":\"  \"}   \n\n";
    let res = call(&env, "echo", "raw=true", Some("application/json"), &[], odd)
        .await
        .expect(200);
    assert_eq!(
        res.json(),
        json!({"a": 1, "é": "ü 😀 é", "sp": "  ", "raw_string": odd})
    );
    // Other content types keep their text too; raw=true on a form adds it to the fields.
    let form = "a=%20x&b=caf%C3%A9&&c";
    let res = call(
        &env,
        "echo",
        "raw=true",
        Some("application/x-www-form-urlencoded"),
        &[],
        form,
    )
    .await
    .expect(200);
    assert_eq!(
        res.json(),
        json!({"a": " x", "b": "café", "c": "", "raw_string": form})
    );
    let text = "  line one\r\n\tline two ☃  ";
    let res = call(
        &env,
        "echo",
        "raw=true",
        Some("text/plain; charset=utf-8"),
        &[],
        text,
    )
    .await
    .expect(200);
    assert_eq!(res.json(), json!({"raw_string": text}));
    // raw and wrap_body together.
    let res = call(
        &env,
        "echo",
        "raw=true&wrap_body=true",
        Some("application/json"),
        &[],
        "[1,\n2]",
    )
    .await
    .expect(200);
    assert_eq!(res.json(), json!({"body": [1, 2], "raw_string": "[1,\n2]"}));
    no_500(&env);
}

const SLACK_VERIFY: &str = r#"import hashlib, hmac, json

SECRET = b"slack-signing-secret"

def main(raw_string: str, x_slack_signature: str, x_slack_request_timestamp: str,
         payload: str, team_id: str, **kwargs):
    base = f"v0:{x_slack_request_timestamp}:{raw_string}".encode("utf-8")
    expected = "v0=" + hmac.new(SECRET, base, hashlib.sha256).hexdigest()
    action = json.loads(payload)["actions"][0]
    return {
        "valid": hmac.compare_digest(expected, x_slack_signature),
        "team_id": team_id,
        "value": action["value"],
        "user": json.loads(payload)["user"]["name"],
    }
"#;

#[tokio::test]
async fn a_slack_style_form_post_is_verified_by_the_script() {
    let env = TestEnv::start().await;
    env.script("u/alice/slack", "python3", SLACK_VERIFY).await;
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U1", "name": "zoë"},
        "actions": [{"action_id": "approve", "value": "order 42 ✓"}],
    })
    .to_string();
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload)
        .append_pair("team_id", "T0001")
        .append_pair("token", "legacy-verification-token")
        .finish();
    let timestamp = "1700000000";
    let signature = format!(
        "v0={}",
        hmac_hex(
            b"slack-signing-secret",
            format!("v0:{timestamp}:{body}").as_bytes()
        )
    );
    let query = "raw=true&include_header=X-Slack-Signature,X-Slack-Request-Timestamp";
    let headers = [
        ("X-Slack-Signature", signature.as_str()),
        ("X-Slack-Request-Timestamp", timestamp),
    ];
    let res = call(
        &env,
        "slack",
        query,
        Some("application/x-www-form-urlencoded"),
        &headers,
        body.clone(),
    )
    .await
    .expect(200);
    assert_eq!(
        res.json(),
        json!({"valid": true, "team_id": "T0001", "value": "order 42 ✓", "user": "zoë"})
    );
    // A forged signature is caught by the same script.
    let forged = [
        ("X-Slack-Signature", "v0=00"),
        ("X-Slack-Request-Timestamp", timestamp),
    ];
    let res = call(
        &env,
        "slack",
        query,
        Some("application/x-www-form-urlencoded"),
        &forged,
        body,
    )
    .await
    .expect(200);
    assert_eq!(res.json()["valid"], json!(false));
    no_500(&env);
}

const GITHUB_VERIFY: &str = r#"import hashlib, hmac

SECRET = b"github-webhook-secret"

def main(raw_string: str, x_hub_signature_256: str, x_github_event: str, action: str,
         repository: dict, **kwargs):
    digest = hmac.new(SECRET, raw_string.encode("utf-8"), hashlib.sha256).hexdigest()
    return {
        "valid": hmac.compare_digest("sha256=" + digest, x_hub_signature_256),
        "event": x_github_event,
        "action": action,
        "repo": repository["full_name"],
    }
"#;

#[tokio::test]
async fn a_github_style_signed_json_is_verified_by_the_script() {
    let env = TestEnv::start().await;
    env.script("u/alice/github", "python3", GITHUB_VERIFY).await;
    // Pretty-printed, with non-ASCII text and an escaped character, as GitHub sends it: the
    // signature only matches the exact bytes.
    let body = "{\n  \"action\": \"opened\",\n  \"repository\": {\n    \"full_name\": \"octö/répo\"\n  },\n  \"issue\": {\"title\": \"Crash \\u2603 on résumé\\t\"}\n}";
    let signature = format!(
        "sha256={}",
        hmac_hex(b"github-webhook-secret", body.as_bytes())
    );
    let query = "raw=true&include_header=X-Hub-Signature-256,X-GitHub-Event";
    let headers = [
        ("X-Hub-Signature-256", signature.as_str()),
        ("X-GitHub-Event", "issues"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("User-Agent", "GitHub-Hookshot/044aadd"),
    ];
    let res = call(
        &env,
        "github",
        query,
        Some("application/json"),
        &headers,
        body,
    )
    .await
    .expect(200);
    assert_eq!(
        res.json(),
        json!({"valid": true, "event": "issues", "action": "opened", "repo": "octö/répo"})
    );
    // One changed byte and the script says no.
    let tampered = body.replace("opened", "closed");
    let res = call(
        &env,
        "github",
        query,
        Some("application/json"),
        &headers,
        tampered,
    )
    .await
    .expect(200);
    assert_eq!(res.json()["valid"], json!(false));
    assert_eq!(res.json()["action"], json!("closed"));
    no_500(&env);
}
