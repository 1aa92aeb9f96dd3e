//! Streaming webhooks, parsed by a real SSE client.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{Options, TestEnv, WS};

/// Every frame of an SSE response, with when it arrived.
pub(crate) async fn read_frames(res: reqwest::Response) -> Vec<(Instant, Value)> {
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(res.headers().contains_key("x-millrace-job-id"));
    let mut events = res.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.expect("a well-formed SSE frame");
        assert_eq!(event.event, "message", "no event: line is sent");
        out.push((Instant::now(), serde_json::from_str(&event.data).unwrap()));
    }
    out
}

#[tokio::test]
async fn a_python_generator_streams_before_it_ends() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/gen",
        "python3",
        "import time\ndef main(n: int = 3):\n    for i in range(n):\n        yield f'chunk{i} '\n        time.sleep(0.7)\n",
    )
    .await;
    let res = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run_and_stream/p/u/alice/gen")))
        .bearer_auth(&env.token)
        .json(&json!({"n": 3}))
        .send()
        .await
        .unwrap();
    let frames = read_frames(res).await;
    let types: Vec<_> = frames
        .iter()
        .map(|(_, f)| f["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        types.iter().all(|t| t == "update" || t == "ping"),
        "{types:?}"
    );
    let chunks: Vec<_> = frames
        .iter()
        .filter_map(|(_, f)| f["new_result_stream"].as_str())
        .collect();
    assert_eq!(chunks, vec!["chunk0 ", "chunk1 ", "chunk2 "]);
    assert!(frames.iter().any(|(_, f)| f["running"] == json!(true)));
    let (end, last) = frames.last().unwrap();
    assert_eq!(
        last,
        &json!({"type": "update", "completed": true, "success": true, "only_result": "chunk0 chunk1 chunk2 "})
    );
    let (first_chunk_at, _) = frames
        .iter()
        .find(|(_, f)| f.get("new_result_stream").is_some())
        .unwrap();
    assert!(
        end.duration_since(*first_chunk_at) > Duration::from_millis(1000),
        "the first chunk arrived only at the end"
    );
}

#[tokio::test]
async fn typescript_async_iterables_stream_too() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/tsgen",
        "bun",
        "export async function main() {\n  return (async function* () { yield 'a'; yield 'b'; })();\n}\n",
    )
    .await;
    let res = env
        .http
        .get(env.url(&format!("/api/w/{WS}/jobs/run_and_stream/p/u/alice/tsgen")))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap();
    let frames = read_frames(res).await;
    let chunks: Vec<_> = frames
        .iter()
        .filter_map(|(_, f)| f["new_result_stream"].as_str())
        .collect();
    assert_eq!(chunks, vec!["a", "b"]);
    assert_eq!(frames.last().unwrap().1["only_result"], json!("ab"));
}

#[tokio::test]
async fn failures_pings_and_timeouts() {
    let env = TestEnv::with(Options {
        api_env: vec![("TIMEOUT_SSE_STREAM".into(), "7".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script(
        "u/alice/fail",
        "python3",
        "def main():\n    raise RuntimeError('x')\n",
    )
    .await;
    let res = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run_and_stream/p/u/alice/fail")))
        .bearer_auth(&env.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let last = read_frames(res).await.pop().unwrap().1;
    assert_eq!(last["completed"], json!(true));
    assert_eq!(last["success"], json!(false));
    assert_eq!(last["only_result"]["error"]["name"], json!("RuntimeError"));

    env.script("u/alice/slow", "bash", "sleep 20").await;
    let res = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run_and_stream/p/u/alice/slow")))
        .bearer_auth(&env.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let frames = read_frames(res).await;
    let types: Vec<_> = frames
        .iter()
        .map(|(_, f)| f["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(types.contains(&"ping".to_owned()), "{types:?}");
    assert_eq!(types.last().unwrap(), "timeout");
    // Closing the stream does not cancel the job.
    let job = env.job(&id).await;
    assert_eq!(job["canceled"], json!(false));
    assert_eq!(job["running"], json!(true));
}

#[tokio::test]
async fn getupdate_sse_follows_running_and_finished_jobs() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/talk",
        "bash",
        "echo one\nsleep 1\necho two\nsleep 0.5\necho done",
    )
    .await;
    let id = env.run("u/alice/talk", json!({})).await;
    let res = env
        .http
        .get(env.url(&format!("/api/w/{WS}/jobs_u/getupdate_sse/{id}")))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap();
    let frames = read_frames(res).await;
    let logs: String = frames
        .iter()
        .filter_map(|(_, f)| f["new_logs"].as_str())
        .collect();
    assert!(logs.contains("one") && logs.contains("two"), "{logs:?}");
    let last = &frames.last().unwrap().1;
    assert_eq!(last["completed"], json!(true));
    assert_eq!(last["only_result"], json!("done"));
    assert_eq!(last["job"]["id"], json!(id));

    // Already finished: one final frame.
    let res = env
        .http
        .get(env.url(&format!("/api/w/{WS}/jobs_u/getupdate_sse/{id}")))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap();
    let frames = read_frames(res).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1["success"], json!(true));
    assert_eq!(frames[0].1["job"]["type"], json!("CompletedJob"));
    // Unknown job: 404 before any stream.
    env.get(
        &format!("/api/w/{WS}/jobs_u/getupdate_sse/{}", uuid::Uuid::new_v4()),
        &env.token,
    )
    .await
    .expect(404);
    env.get(
        &format!("/api/w/{WS}/jobs/run_and_stream/p/u/alice/missing"),
        &env.token,
    )
    .await
    .expect(404);
}
