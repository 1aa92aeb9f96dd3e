//! Async webhooks: 201 + id once durable, readable at once, arguments, presets, schedules.

use std::time::Duration;

use chrono::DateTime;
use serde_json::{json, Value};

use crate::common::{TestEnv, WS};

const ECHO: &str = "def main(**kwargs):\n    return kwargs\n";

#[tokio::test]
async fn answers_a_job_id_that_is_readable_at_once() {
    let env = TestEnv::start().await;
    env.script("u/alice/echo", "python3", ECHO).await;
    for _ in 0..20 {
        let res = env
            .post(
                &format!("/api/w/{WS}/jobs/run/p/u/alice/echo"),
                &env.token,
                json!({"a": 1}),
            )
            .await
            .expect(201);
        let id = uuid::Uuid::parse_str(&res.text).expect("a plain hyphenated UUID");
        assert_eq!(res.text, id.hyphenated().to_string());
        // Never a 404 for an id that was answered.
        let job = env.job(&res.text).await;
        assert_eq!(job["id"], json!(res.text));
        assert!(job["type"] == json!("QueuedJob") || job["type"] == json!("CompletedJob"));
    }
    let id = env.run("u/alice/echo", json!({"x": [1, 2]})).await;
    env.wait(&id, Duration::from_secs(20)).await;
    let job = env.job(&id).await;
    assert_eq!(job["type"], json!("CompletedJob"));
    assert_eq!(job["result"], json!({"x": [1, 2]}));
    assert_eq!(job["args"], json!({"x": [1, 2]}));
    assert_eq!(job["created_by"], json!("alice"));
    assert_eq!(job["job_kind"], json!("script"));
    assert_eq!(job["language"], json!("python3"));
    assert_eq!(job["attempts"], json!(1));
    for key in [
        "workspace_id",
        "script_path",
        "script_hash",
        "flow_version",
        "created_at",
        "scheduled_for",
        "started_at",
        "completed_at",
        "duration_ms",
        "running",
        "success",
        "canceled",
        "canceled_by",
        "canceled_reason",
        "logs",
        "tag",
        "worker",
        "flow_status",
    ] {
        assert!(job.get(key).is_some(), "job JSON lacks {key}");
    }
}

#[tokio::test]
async fn bodies_become_arguments() {
    let env = TestEnv::start().await;
    env.script("u/alice/echo", "python3", ECHO).await;
    let url = env.url(&format!("/api/w/{WS}/jobs/run/p/u/alice/echo"));
    let cases: Vec<(Option<&str>, &str, Value)> = vec![
        (
            Some("application/json"),
            r#"{"a": 1, "b": "x"}"#,
            json!({"a": 1, "b": "x"}),
        ),
        (Some("application/json"), "[1, 2]", json!({"body": [1, 2]})),
        (
            Some("application/json"),
            "\"text\"",
            json!({"body": "text"}),
        ),
        (Some("application/json"), "null", json!({"body": null})),
        (Some("application/json"), "", json!({})),
        (None, r#"{"n": 5}"#, json!({"n": 5})),
    ];
    for (content_type, body, expected) in cases {
        let mut req = env
            .http
            .post(&url)
            .bearer_auth(&env.token)
            .body(body.to_owned());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 201, "{body}");
        let id = res.text().await.unwrap();
        let done = env.wait(&id, Duration::from_secs(20)).await;
        assert_eq!(done["result"], expected, "{body}");
    }
}

#[tokio::test]
async fn preset_ids_are_used_once() {
    let env = TestEnv::start().await;
    env.script("u/alice/echo", "python3", ECHO).await;
    let id = uuid::Uuid::new_v4().to_string();
    let path = format!("/api/w/{WS}/jobs/run/p/u/alice/echo?job_id={id}");
    let res = env.post(&path, &env.token, json!({})).await.expect(201);
    assert_eq!(res.text, id);
    let again = env.post(&path, &env.token, json!({})).await.expect(409);
    assert!(again.text.contains(&id));
    env.post(
        &format!("/api/w/{WS}/jobs/run/p/u/alice/echo?job_id=nope"),
        &env.token,
        json!({}),
    )
    .await
    .expect(400);
}

#[tokio::test]
async fn scheduled_jobs_wait_for_their_time() {
    let env = TestEnv::start().await;
    env.script("u/alice/echo", "python3", ECHO).await;
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/alice/echo?scheduled_in_secs=2"),
            &env.token,
            json!({}),
        )
        .await
        .expect(201);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let maybe = env
        .get(
            &format!("/api/w/{WS}/jobs_u/completed/get_result_maybe/{}", res.text),
            &env.token,
        )
        .await
        .json();
    assert_eq!(
        maybe["started"],
        json!(false),
        "a job scheduled in 2s started after 1s"
    );
    env.wait(&res.text, Duration::from_secs(20)).await;
    let job = env.job(&res.text).await;
    let created = DateTime::parse_from_rfc3339(job["created_at"].as_str().unwrap()).unwrap();
    let started = DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap();
    let waited = (started - created).num_milliseconds();
    assert!(waited >= 1900, "started {waited} ms after creation");
    assert!(job["scheduled_for"].is_string());

    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let encoded: String = form_urlencoded::byte_serialize(at.as_bytes()).collect();
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/alice/echo?scheduled_for={encoded}"),
            &env.token,
            json!({}),
        )
        .await
        .expect(201);
    env.wait(&res.text, Duration::from_secs(20)).await;
    let job = env.job(&res.text).await;
    let started = DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap();
    let due = DateTime::parse_from_rfc3339(&at).unwrap();
    assert!(
        started >= due - chrono::Duration::milliseconds(50),
        "started before it was due"
    );
}

#[tokio::test]
async fn head_probes_need_no_token_and_create_no_job() {
    let env = TestEnv::start().await;
    let hash = env.script("u/alice/echo", "python3", ECHO).await;
    // The sync and SSE routes too: their GET handlers must not answer HEAD by running the job.
    let mut paths = Vec::new();
    for route in ["run", "run_wait_result", "run_and_stream"] {
        paths.push(format!("/api/w/{WS}/jobs/{route}/p/u/alice/echo"));
        paths.push(format!("/api/w/{WS}/jobs/{route}/h/{hash}"));
    }
    for path in paths {
        let res = env.http.head(env.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "HEAD {path}");
    }
    let jobs = env
        .get(&format!("/api/w/{WS}/jobs/list"), &env.token)
        .await
        .expect(200)
        .json();
    assert_eq!(jobs.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn two_workers_share_two_hundred_jobs_exactly_once() {
    let mut env = TestEnv::start().await;
    env.add_worker(&[]);
    env.script("u/alice/n", "bash", "n=\"$1\"\nsleep 0.05\necho $n")
        .await;
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(env.run("u/alice/n", json!({"n": n})).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let done = env.wait(id, Duration::from_secs(120)).await;
        assert_eq!(done["result"], json!(n.to_string()));
    }
    let db = env.sql().await;
    let rows = db
        .query("SELECT worker, attempts, status FROM jobs", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 200);
    let workers = crate::common::tally(rows.iter().map(|r| r.get::<_, String>(0)));
    assert_eq!(
        workers.len(),
        2,
        "both workers should have taken jobs: {workers:?}"
    );
    for row in &rows {
        assert_eq!(row.get::<_, i32>(1), 1, "a job ran more than once");
        assert_eq!(row.get::<_, &str>(2), "success");
    }
}
