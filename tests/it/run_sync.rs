//! Sync webhooks: results of every JSON type, failures, GET payloads, custom responses,
//! timeouts, disconnects and many concurrent callers.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{Options, TestEnv, WS};

fn b64(value: &Value, engine: &base64::engine::GeneralPurpose) -> String {
    engine.encode(value.to_string())
}

#[tokio::test]
async fn results_of_every_json_type() {
    let env = TestEnv::start().await;
    let t = &env.token;
    for (source, expected) in [
        ("None", json!(null)),
        ("'text'", json!("text")),
        ("[1, 'two', None]", json!([1, "two", null])),
        ("{'a': {'b': 1}}", json!({"a": {"b": 1}})),
        ("3.5", json!(3.5)),
        ("True", json!(true)),
    ] {
        env.script(
            "u/alice/value",
            "python3",
            &format!("def main():\n    return {source}\n"),
        )
        .await;
        let res = env
            .post(
                &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/value"),
                t,
                json!({}),
            )
            .await
            .expect(200);
        assert_eq!(res.headers["content-type"], "application/json");
        assert_eq!(res.json(), expected, "{source}");
        let id = res.headers["x-millrace-job-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(env.job(&id).await["result"], expected);
    }
    // By hash, with arguments.
    let hash = env
        .script(
            "u/alice/add",
            "python3",
            "def main(a, b):\n    return a + b\n",
        )
        .await;
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/h/{hash}"),
            t,
            json!({"a": 2, "b": 3}),
        )
        .await
        .expect(200);
    assert_eq!(res.json(), json!(5));
}

#[tokio::test]
async fn failures_in_every_language_answer_the_error() {
    let env = TestEnv::start().await;
    let t = &env.token;
    for (lang, source, name) in [
        (
            "python3",
            "def main():\n    raise KeyError('k')\n",
            "KeyError",
        ),
        ("bash", "echo oops\nexit 2", "ExecutionErr"),
        (
            "bun",
            "export async function main() { throw new RangeError('r') }",
            "RangeError",
        ),
        (
            "deno",
            "export async function main() { throw new SyntaxError('s') }",
            "SyntaxError",
        ),
    ] {
        let path = format!("u/alice/fail_{lang}");
        env.script(&path, lang, source).await;
        let res = env
            .post(
                &format!("/api/w/{WS}/jobs/run_wait_result/p/{path}"),
                t,
                json!({}),
            )
            .await
            .expect(200);
        assert_eq!(
            res.json()["error"]["name"],
            json!(name),
            "{lang}: {}",
            res.text
        );
    }
}

#[tokio::test]
async fn sync_error_status_is_configurable() {
    let env = TestEnv::with(Options {
        api_env: vec![("SYNC_ERROR_STATUS".into(), "422".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script("u/alice/fail", "bash", "exit 1").await;
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/fail"),
            &env.token,
            json!({}),
        )
        .await;
    assert_eq!(res.status, 422);
    assert!(res.json()["error"].is_object());
}

#[tokio::test]
async fn get_takes_base64_payloads_in_both_alphabets() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/echo",
        "python3",
        "def main(**kw):\n    return kw\n",
    )
    .await;
    let args = json!({"q": "a?b>c~", "n": [1, 2]});
    let std = base64::engine::general_purpose::STANDARD;
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for encoded in [b64(&args, &std), b64(&args, &url_safe)] {
        let quoted: String = form_urlencoded::byte_serialize(encoded.as_bytes()).collect();
        let res = env
            .get(
                &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/echo?payload={quoted}"),
                &env.token,
            )
            .await
            .expect(200);
        assert_eq!(res.json(), args, "{encoded}");
    }
    let res = env
        .get(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/echo"),
            &env.token,
        )
        .await
        .expect(200);
    assert_eq!(res.json(), json!({}));
    env.get(
        &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/echo?payload=%%%"),
        &env.token,
    )
    .await
    .expect(400);
    // Query args apply to sync routes too.
    let res = env
        .get(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/echo?include_query=x&x=1"),
            &env.token,
        )
        .await
        .expect(200);
    assert_eq!(res.json(), json!({"x": "1"}));
}

#[tokio::test]
async fn custom_responses() {
    let env = TestEnv::start().await;
    let t = &env.token;
    let run = |source: &'static str| {
        let env = &env;
        async move {
            env.script("u/alice/custom", "python3", source).await;
            env.post(
                &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/custom"),
                t,
                json!({}),
            )
            .await
        }
    };
    let res =
        run("def main():\n    return {'wm_status_code': 201, 'result': {'Hello': 'World'}}\n")
            .await;
    assert_eq!(
        (res.status, res.text.as_str()),
        (201, r#"{"Hello":"World"}"#)
    );
    let res = run(
        "def main():\n    return {'windmill_content_type': 'text/csv', 'result': 'Hello;World'}\n",
    )
    .await;
    assert_eq!((res.status, res.text.as_str()), (200, "Hello;World"));
    assert_eq!(res.headers["content-type"], "text/csv");
    // Script-shaped HTML is inert on the API's origin; a script may not set cookies.
    let res = run("def main():\n    return {'wm_content_type': 'text/html', 'wm_headers': {'Content-Security-Policy': 'default-src *'}, 'result': '<script>alert(document.cookie)</script>'}\n").await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.headers["content-type"], "text/html");
    assert_eq!(res.headers["content-security-policy"], "sandbox");
    assert_eq!(res.headers["x-content-type-options"], "nosniff");
    let res =
        run("def main():\n    return {'wm_headers': {'Set-Cookie': 'session=stolen'}}\n").await;
    assert_eq!(res.status, 500);
    assert!(res.headers.get("set-cookie").is_none());
    assert!(res.text.contains("may not set the header"), "{}", res.text);
    let res =
        run("def main():\n    return {'wm_headers': {'X-Custom': 'yes'}, 'wm_status_code': 202}\n")
            .await;
    assert_eq!((res.status, res.text.as_str()), (202, ""));
    assert_eq!(res.headers["x-custom"], "yes");
    let res = run("def main():\n    return {'wm_status_code': 1000}\n").await;
    assert_eq!(res.status, 500);
    assert!(
        res.text.starts_with("Internal: invalid status code"),
        "{}",
        res.text
    );
    let res = run("def main():\n    return {'wm_status_code': 402, 'wm_failure': 'pay first', 'result': 'no'}\n").await;
    assert_eq!(res.status, 402);
    let id = res.headers["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let job = env.job(&id).await;
    assert_eq!(
        job["success"],
        json!(false),
        "wm_failure marks the job failed"
    );
    assert_eq!(
        job["result"]["error"],
        json!({"name": "Failure", "message": "pay first"})
    );
}

#[tokio::test]
async fn a_timeout_answers_500_and_cancels_the_job() {
    let env = TestEnv::with(Options {
        api_env: vec![("TIMEOUT_WAIT_RESULT".into(), "1".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script("u/alice/slow", "bash", "sleep 30").await;
    let started = Instant::now();
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/slow"),
            &env.token,
            json!({}),
        )
        .await;
    assert_eq!((res.status, res.text.as_str()), (500, "timeout after 1s"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let id = res.headers["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let done = env.wait(&id, Duration::from_secs(10)).await;
    assert_eq!(done["result"]["error"]["name"], json!("Canceled"), "{done}");
}

#[tokio::test]
async fn a_caller_that_hangs_up_cancels_the_job() {
    let env = TestEnv::start().await;
    env.script("u/alice/slow", "bash", "sleep 30").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let err = client
        .post(env.url(&format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/slow")))
        .bearer_auth(&env.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let jobs = env
        .get(&format!("/api/w/{WS}/jobs/list"), &env.token)
        .await
        .json();
    let id = jobs[0]["id"].as_str().unwrap().to_owned();
    let done = env.wait(&id, Duration::from_secs(10)).await;
    assert_eq!(done["result"]["error"]["name"], json!("Canceled"), "{done}");
    assert!(done["result"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("disconnected"));
}

#[tokio::test]
async fn two_hundred_concurrent_callers_get_their_own_results() {
    let env = TestEnv::with(Options {
        worker_env: vec![("WORKER_SLOTS".into(), "16".into())],
        workers: 2,
        ..Default::default()
    })
    .await;
    env.script("u/alice/double", "bash", "n=\"$1\"\necho $((n * 2))")
        .await;
    let calls = (0..200).map(|n| {
        let env = &env;
        async move {
            let res = env
                .post(
                    &format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/double"),
                    &env.token,
                    json!({"n": n}),
                )
                .await
                .expect(200);
            (n, res.json())
        }
    });
    for (n, result) in futures::future::join_all(calls).await {
        assert_eq!(result, json!((n * 2).to_string()));
    }
}

#[tokio::test]
async fn a_nats_restart_while_waiting_does_not_hang_the_caller() {
    let mut env = TestEnv::start().await;
    env.script("u/alice/slow", "bash", "sleep 2\necho survived")
        .await;
    let call = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/slow")))
        .bearer_auth(&env.token)
        .json(&json!({}))
        .send();
    let pending = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.nats.restart().await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the sync call hung after NATS restarted")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!("survived"));
}
