//! `/metrics` of the API and of a worker after a known sequence of jobs, read with Prometheus'
//! own Python text parser; traces: a caller's `traceparent` reaches the script (a flow's steps
//! included) and the OTLP exporter.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{eventually, tool, Options, TestEnv, WS};

/// One parsed family: its type and samples (name, labels, value).
#[derive(Debug)]
struct Family {
    kind: String,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

/// Parses exposition text with `prometheus_client.parser`, as Prometheus reads it.
fn parse(text: &str) -> HashMap<String, Family> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {"type": family.type,
                        "samples": [[s.name, s.labels, s.value] for s in family.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new(tool("WMILL_PYTHON", "python3"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test-client Python (WMILL_PYTHON) runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: HashMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(name, family)| {
            let samples = family["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = serde_json::from_value(s[1].clone()).unwrap();
                    (
                        s[0].as_str().unwrap().to_owned(),
                        labels,
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect();
            let kind = family["type"].as_str().unwrap().to_owned();
            (name, Family { kind, samples })
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none).
fn value(
    families: &HashMap<String, Family>,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let family = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    family
        .samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(.., v)| v)
        .sum()
}

async fn scrape(env: &TestEnv, url: &str) -> (String, HashMap<String, Family>) {
    let res = env.http.get(url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "{url}");
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = res.text().await.unwrap();
    let parsed = parse(&text);
    (text, parsed)
}

type Scraped = HashMap<String, Family>;
type Labels<'a> = &'a [(&'a str, &'a str)];

const JOB: [(&str, &str); 3] = [("tag", "default"), ("language", "bash"), ("kind", "script")];

#[tokio::test]
async fn counters_are_exact_after_a_known_sequence_of_jobs() {
    let env = TestEnv::with(Options {
        workers: 1,
        worker_env: vec![("WORKER_SLOTS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    env.script("u/alice/ok", "bash", "echo fine").await;
    env.script("u/alice/bad", "bash", "echo no >&2\nexit 3")
        .await;
    env.script("u/alice/long", "bash", "sleep 60").await;
    for _ in 0..3 {
        env.run_ok("u/alice/ok", json!({})).await;
    }
    let failed = env.run("u/alice/bad", json!({})).await;
    assert_eq!(
        env.wait(&failed, Duration::from_secs(30)).await["success"],
        json!(false)
    );
    let long = env.run("u/alice/long", json!({})).await;
    eventually(Duration::from_secs(30), "the long job runs", async || {
        env.job(&long).await["running"] == json!(true)
    })
    .await;
    env.post(
        &format!("/api/w/{WS}/jobs_u/queue/cancel/{long}"),
        &env.token,
        json!({"reason": "test"}),
    )
    .await
    .expect(200);
    env.wait(&long, Duration::from_secs(30)).await;
    assert_eq!(env.job(&long).await["canceled"], json!(true));
    // Two refused webhooks: a bad token, and a path that does not exist.
    let run = format!("/api/w/{WS}/jobs/run/p/u/alice/ok");
    env.post(&run, "not-a-token", json!({})).await.expect(401);
    env.post(
        &format!("/api/w/{WS}/jobs/run/p/u/alice/missing"),
        &env.token,
        json!({}),
    )
    .await
    .expect(404);

    let (api_text, api) = scrape(&env, &env.url("/metrics")).await;
    assert_eq!(api["millrace_jobs_queued"].kind, "counter");
    assert_eq!(
        value(
            &api,
            "millrace_jobs_queued",
            "millrace_jobs_queued_total",
            &JOB
        ),
        5.0
    );
    let accepted = "millrace_webhooks_accepted_total";
    assert_eq!(
        value(
            &api,
            "millrace_webhooks_accepted",
            accepted,
            &[("mode", "async")]
        ),
        5.0
    );
    let refused = "millrace_webhooks_refused_total";
    for reason in ["unauthorized", "not_found"] {
        let labels = [("mode", "async"), ("reason", reason)];
        assert_eq!(
            value(&api, "millrace_webhooks_refused", refused, &labels),
            1.0,
            "{reason}"
        );
    }
    let route = "/api/w/{workspace}/jobs/run/p/{*path}";
    let requests = "millrace_http_requests_total";
    let created = [("method", "POST"), ("route", route), ("status", "201")];
    assert_eq!(
        value(&api, "millrace_http_requests", requests, &created),
        5.0
    );
    let durations = &api["millrace_http_request_duration_seconds"];
    assert_eq!(durations.kind, "histogram");
    let run_route = [("method", "POST"), ("route", route)];
    let count = "millrace_http_request_duration_seconds_count";
    assert_eq!(
        value(
            &api,
            "millrace_http_request_duration_seconds",
            count,
            &run_route
        ),
        7.0
    );
    // No label holds a workspace, a path or an id: only templates and bounded words.
    for needle in ["u/alice", &long, "/api/w/test/"] {
        assert!(
            !api_text.contains(needle),
            "{needle} in a label:\n{api_text}"
        );
    }
    assert_eq!(api["millrace_sync_waiters"].kind, "gauge");
    assert_eq!(
        value(&api, "millrace_sync_waiters", "millrace_sync_waiters", &[]),
        0.0
    );
    assert_eq!(
        value(&api, "millrace_sse_streams", "millrace_sse_streams", &[]),
        0.0
    );
    let pool = "millrace_db_pool_connections";
    assert!(
        value(&api, pool, pool, &[("state", "idle")])
            + value(&api, pool, pool, &[("state", "in_use")])
            >= 1.0
    );
    assert_eq!(api["millrace_db_pool_waiting"].kind, "gauge");

    let (_, worker) = scrape(&env, &env.worker_health_url(0, "/metrics")).await;
    for (family, expected) in [
        ("millrace_jobs_started", 5.0),
        ("millrace_jobs_completed", 3.0),
        ("millrace_jobs_failed", 1.0),
        ("millrace_jobs_canceled", 1.0),
    ] {
        assert_eq!(worker[family].kind, "counter", "{family}");
        let total = format!("{family}_total");
        assert_eq!(value(&worker, family, &total, &JOB), expected, "{family}");
    }
    let duration = "millrace_job_duration_seconds";
    assert_eq!(worker[duration].kind, "histogram");
    for (status, expected) in [("success", 3.0), ("failure", 1.0), ("canceled", 1.0)] {
        let labels = [JOB[0], JOB[1], JOB[2], ("status", status)];
        let count = format!("{duration}_count");
        assert_eq!(
            value(&worker, duration, &count, &labels),
            expected,
            "{status}"
        );
    }
    // Every wait falls in a bucket, the last one (`+Inf`) counting them all.
    let wait = "millrace_job_queue_wait_seconds";
    assert_eq!(value(&worker, wait, &format!("{wait}_count"), &JOB), 5.0);
    assert_eq!(
        value(&worker, wait, &format!("{wait}_bucket"), &[("le", "+Inf")]),
        5.0
    );
    assert_eq!(
        value(
            &worker,
            "millrace_worker_slots",
            "millrace_worker_slots",
            &[]
        ),
        2.0
    );
    let busy = "millrace_worker_slots_busy";
    assert_eq!(value(&worker, busy, busy, &[]), 0.0);
    let pending = "millrace_jetstream_pending_messages";
    assert_eq!(worker[pending].kind, "gauge");
    let default = [("tag", "default")];
    assert_eq!(worker[pending].samples.len(), 1, "{:?}", worker[pending]);
    assert_eq!(value(&worker, pending, pending, &default), 0.0);
    assert_eq!(worker["millrace_db_pool_connections"].kind, "gauge");
    dashboard_uses_only_exported_names(&[&api, &worker]);
}

/// Every metric the chart's Grafana dashboard queries is a series the binary exports.
fn dashboard_uses_only_exported_names(scraped: &[&HashMap<String, Family>]) {
    let exported: std::collections::HashSet<&str> = scraped
        .iter()
        .flat_map(|families| families.values())
        .flat_map(|family| family.samples.iter().map(|(name, ..)| name.as_str()))
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/millrace/dashboards/millrace.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("millrace_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    exported.contains(name.as_str()),
                    "the dashboard queries {name}, which is not exported: {expr}"
                );
                queried += 1;
                rest = &rest[at + name.len()..];
            }
        }
    }
    assert!(queried >= 20, "the dashboard queries {queried} series");
}

#[tokio::test]
async fn metrics_can_move_to_an_address_of_their_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = TestEnv::with(Options {
        workers: 0,
        api_env: vec![("METRICS_BIND_ADDR".into(), format!("127.0.0.1:{port}"))],
        ..Default::default()
    })
    .await;
    let res = env.http.get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let (_, api) = scrape(&env, &format!("http://127.0.0.1:{port}/metrics")).await;
    // The request to BIND_ADDR's `/metrics` was counted, under its template.
    let requests = "millrace_http_requests_total";
    let labels = [("route", "/metrics"), ("status", "404")];
    assert_eq!(
        value(&api, "millrace_http_requests", requests, &labels),
        1.0
    );
}

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Runs `u/alice/trace` synchronously with the caller's `traceparent`; returns the script's.
async fn traced_run(env: &TestEnv) -> String {
    let res = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/trace")))
        .bearer_auth(&env.token)
        .header("traceparent", CALLER)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.json::<Value>()
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn fields(traceparent: &str) -> Vec<String> {
    let fields: Vec<String> = traceparent.split('-').map(str::to_owned).collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00");
    fields
}

#[tokio::test]
async fn a_callers_trace_reaches_the_script() {
    let env = TestEnv::start().await;
    env.script("u/alice/trace", "bash", "echo \"$TRACEPARENT\"")
        .await;
    let seen = fields(&traced_run(&env).await);
    assert_eq!(seen[1], CALLER_TRACE);
    assert_eq!(seen[2].len(), 16);
    assert_ne!(seen[2], "00f067aa0ba902b7", "the job is a span of its own");
    // Without a header (or with an invalid one), each job starts a trace of its own.
    let mut traces = Vec::new();
    for header in [None, Some("00-zz-00f067aa0ba902b7-01")] {
        let mut req = env
            .http
            .post(env.url(&format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/trace")))
            .bearer_auth(&env.token)
            .json(&json!({}));
        if let Some(header) = header {
            req = req.header("traceparent", header);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let tp = res
            .json::<Value>()
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        traces.push(fields(&tp)[1].clone());
    }
    assert_ne!(traces[0], traces[1]);
    assert!(!traces.contains(&CALLER_TRACE.to_owned()));
}

/// Runs `u/alice/traced_flow` (with the caller's `traceparent` when given) to its end;
/// returns the `traceparent` it keeps for its steps and each step's `TRACEPARENT`, by module.
async fn traced_flow(
    env: &TestEnv,
    header: Option<&str>,
) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let mut req = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run/f/u/alice/traced_flow")))
        .bearer_auth(&env.token)
        .json(&json!({}));
    if let Some(header) = header {
        req = req.header("traceparent", header);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let id = res.text().await.unwrap();
    let done = env.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    let kept: String = env
        .sql()
        .await
        .query_one(
            "SELECT flow_state->>'traceparent' FROM jobs WHERE id = $1",
            &[&id.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    let mut steps = Vec::new();
    for step in crate::flows::steps_of(env, &id).await {
        let job = env.job(step["id"].as_str().unwrap()).await;
        let seen = job["result"].as_str().unwrap_or_default();
        let module = step["flow_step_id"].as_str().unwrap().to_owned();
        steps.push((module, fields(seen)));
    }
    steps.sort();
    (fields(&kept), steps)
}

#[tokio::test]
async fn a_flow_run_is_one_trace_across_its_steps() {
    use crate::flows::{bash, js};
    let env = TestEnv::start().await;
    let echo = "echo \"$TRACEPARENT\"";
    env.flow(
        "u/alice/traced_flow",
        json!({"modules": [
            bash("a", echo, json!({})),
            bash("b", echo, json!({})),
            {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[1, 2]"),
              "modules": [bash("each", echo, json!({}))]}},
        ]}),
    )
    .await;
    let modules = |steps: &[(String, Vec<String>)]| -> Vec<String> {
        steps.iter().map(|(m, _)| m.clone()).collect()
    };
    let (kept, steps) = traced_flow(&env, Some(CALLER)).await;
    assert_eq!(modules(&steps), ["a", "b", "each", "each"]);
    // The flow job's span is the parent of every step: the caller's trace, a span of its own.
    assert_eq!(kept[1], CALLER_TRACE);
    assert_ne!(kept[2], "00f067aa0ba902b7");
    for (module, seen) in &steps {
        assert_eq!(seen[1], CALLER_TRACE, "{module}: {seen:?}");
        assert_ne!(seen[2], kept[2], "{module}: each step is a span of its own");
    }
    let mut spans: Vec<&String> = steps.iter().map(|(_, seen)| &seen[2]).collect();
    spans.sort();
    spans.dedup();
    assert_eq!(spans.len(), steps.len(), "{steps:?}");

    // Without a header, the flow starts one trace, which all its steps share; another run
    // starts another.
    let mut traces = Vec::new();
    for _ in 0..2 {
        let (kept, steps) = traced_flow(&env, None).await;
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert_ne!(kept[1], CALLER_TRACE);
        for (module, seen) in &steps {
            assert_eq!(seen[1], kept[1], "{module}: {seen:?}");
        }
        traces.push(kept[1].clone());
    }
    assert_ne!(traces[0], traces[1]);
}

/// A tiny OTLP/HTTP receiver: keeps the bodies POSTed to it.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    // One request at a time on a kept-alive connection.
                    let head_end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buffer.len() < head_end + length {
                        let mut chunk = [0u8; 8192];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buffer[head_end..head_end + length].to_vec();
                    buffer.drain(..head_end + length);
                    if head.starts_with("post /v1/traces ") {
                        kept.lock().unwrap().push(body);
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn spans_of_a_traced_job_are_exported_by_otlp() {
    let (url, bodies) = otlp_receiver().await;
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), url),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
    ];
    let env = TestEnv::with(Options {
        workers: 1,
        api_env: otel.clone(),
        worker_env: otel,
        ..Default::default()
    })
    .await;
    env.script("u/alice/trace", "bash", "echo \"$TRACEPARENT\"")
        .await;
    let seen = fields(&traced_run(&env).await);
    assert_eq!(seen[1], CALLER_TRACE);
    // OTLP carries ids as raw bytes: the trace's 16 bytes and the job span's 8 are in a body.
    let trace = hex::decode(CALLER_TRACE).unwrap();
    let job_span = hex::decode(&seen[2]).unwrap();
    let has = |body: &[u8], id: &[u8]| body.windows(id.len()).any(|w| w == id);
    eventually(
        Duration::from_secs(30),
        "the job's span is exported",
        async || {
            bodies
                .lock()
                .unwrap()
                .iter()
                .any(|body| has(body, &trace) && has(body, &job_span))
        },
    )
    .await;
}

#[tokio::test]
async fn a_job_canceled_while_queued_and_a_flow_are_counted_once_each() {
    let env = TestEnv::with(Options {
        workers: 1,
        worker_env: vec![("WORKER_SLOTS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    env.script("u/alice/sleepy", "bash", "sleep 60").await;
    // The one slot is busy: a second job stays queued until it is canceled.
    let busy = env.run("u/alice/sleepy", json!({})).await;
    eventually(Duration::from_secs(30), "the slot is busy", async || {
        env.job(&busy).await["running"] == json!(true)
    })
    .await;
    let queued = env.run("u/alice/sleepy", json!({})).await;
    let cancel = |id: String| {
        let env = &env;
        async move {
            env.post(
                &format!("/api/w/{WS}/jobs_u/queue/cancel/{id}"),
                &env.token,
                json!({"reason": "test"}),
            )
            .await
            .expect(200);
            env.wait(&id, Duration::from_secs(30)).await;
            env.job(&id).await
        }
    };
    let never_ran = cancel(queued.clone()).await;
    assert_eq!(never_ran["canceled"], json!(true));
    assert_eq!(never_ran["started_at"], Value::Null, "{never_ran}");
    assert_eq!(cancel(busy).await["canceled"], json!(true));
    // A flow of two bash steps.
    let step = |id: &str| json!({"id": id, "value": {"type": "rawscript", "language": "bash", "content": "echo 1", "input_transforms": {}}});
    env.flow("u/alice/two", json!({"modules": [step("a"), step("b")]}))
        .await;
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run/f/u/alice/two"),
            &env.token,
            json!({}),
        )
        .await
        .expect(201);
    let flow = env.wait(res.text.trim(), Duration::from_secs(60)).await;
    assert_eq!(flow["success"], json!(true), "{flow}");

    let bash = |kind: &'static str| [("tag", "default"), ("language", "bash"), ("kind", kind)];
    let flow_labels = [("tag", "default"), ("language", "none"), ("kind", "flow")];
    // A family with no series yet is not in the text at all.
    let total = |families: &Scraped, family: &str, labels: Labels| {
        if families.contains_key(family) {
            value(families, family, &format!("{family}_total"), labels)
        } else {
            0.0
        }
    };
    let (_, api) = scrape(&env, &env.url("/metrics")).await;
    let (_, worker) = scrape(&env, &env.worker_health_url(0, "/metrics")).await;
    // What each process did: the API queued both scripts and the flow, and canceled the
    // queued script; the worker started the running one, the flow and its steps, queued the
    // steps, and ended them.
    let expected: [(&Scraped, &str, Labels, f64); 14] = [
        (&api, "millrace_jobs_queued", &bash("script"), 2.0),
        (&api, "millrace_jobs_queued", &flow_labels, 1.0),
        (&api, "millrace_jobs_canceled", &bash("script"), 1.0),
        (&api, "millrace_jobs_started", &bash("script"), 0.0),
        (&worker, "millrace_jobs_started", &bash("script"), 1.0),
        (&worker, "millrace_jobs_canceled", &bash("script"), 1.0),
        (&worker, "millrace_jobs_queued", &bash("script"), 0.0),
        (&worker, "millrace_jobs_started", &flow_labels, 1.0),
        (&worker, "millrace_jobs_completed", &flow_labels, 1.0),
        (&worker, "millrace_jobs_queued", &bash("flow_step"), 2.0),
        (&worker, "millrace_jobs_started", &bash("flow_step"), 2.0),
        (&worker, "millrace_jobs_completed", &bash("flow_step"), 2.0),
        (&worker, "millrace_jobs_failed", &bash("flow_step"), 0.0),
        (&api, "millrace_jobs_failed", &flow_labels, 0.0),
    ];
    for (families, family, labels, count) in expected {
        assert_eq!(
            total(families, family, labels),
            count,
            "{family} {labels:?}"
        );
    }
    // Summed over the processes, nothing is left in flight.
    let sum = |family: &str| total(&api, family, &[]) + total(&worker, family, &[]);
    let ended = sum("millrace_jobs_completed")
        + sum("millrace_jobs_failed")
        + sum("millrace_jobs_canceled");
    assert_eq!(sum("millrace_jobs_queued"), ended);
    assert_eq!(sum("millrace_jobs_queued"), 5.0);
}

#[tokio::test]
async fn a_signed_hooks_trace_reaches_the_script() {
    use hmac::{Hmac, Mac};
    let env = TestEnv::with(Options {
        workers: 1,
        api_env: vec![(
            "ENCRYPTION_KEY".into(),
            "5f1c6d0e9a8b7c6d5e4f30211203f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b".into(),
        )],
        ..Default::default()
    })
    .await;
    env.script(
        "u/alice/traced",
        "python3",
        "import os\ndef main(**kwargs):\n    return os.environ['TRACEPARENT']\n",
    )
    .await;
    env.post(
        &format!("/api/w/{WS}/webhook_triggers/create"),
        &env.token,
        json!({"path": "u/alice/gh", "script_path": "u/alice/traced", "scheme": "github",
               "secret": "gh-secret"}),
    )
    .await
    .expect(201);
    let body = json!({"action": "opened"}).to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"gh-secret").unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let res = env
        .http
        .post(env.url(&format!("/api/w/{WS}/hooks/u/alice/gh")))
        .header("content-type", "application/json")
        .header("X-Hub-Signature-256", signature)
        .header("X-GitHub-Delivery", "traced-delivery")
        .header("X-GitHub-Event", "push")
        .header("traceparent", CALLER)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let id = res.text().await.unwrap();
    let done = env.wait(id.trim(), Duration::from_secs(60)).await;
    let seen = fields(done["result"].as_str().unwrap_or_else(|| panic!("{done}")));
    assert_eq!(seen[1], CALLER_TRACE);
    assert_ne!(seen[2], "00f067aa0ba902b7", "the job is a span of its own");
}
