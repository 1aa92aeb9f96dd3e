//! Job events on NATS (SPEC §6, §7 "Events"): every state change of a job lands on the JetStream
//! stream `MILLRACE_EVENTS` as `millrace.events.<ws>.job.<kind>`, with `Nats-Msg-Id` =
//! `<job id>:<kind>`, and any NATS client can read them with a durable consumer.

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, FixedOffset};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{TestEnv, WS};

const STREAM: &str = "MILLRACE_EVENTS";
const ADD: &str = "def main(a: int, b: int):\n    return a + b\n";
const TERMINAL: [&str; 3] = ["completed", "failed", "canceled"];
/// Keys only a terminal event may carry.
const TERMINAL_KEYS: [&str; 5] = [
    "success",
    "duration_ms",
    "result",
    "result_truncated",
    "error",
];

/// One message of the stream, as a consumer sees it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub subject: String,
    pub msg_id: Option<String>,
    pub seq: u64,
    pub body: Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.body["kind"].as_str().unwrap_or_default()
    }

    fn at(&self) -> DateTime<FixedOffset> {
        let at = self.body["at"]
            .as_str()
            .unwrap_or_else(|| panic!("no `at`: {}", self.body));
        DateTime::parse_from_rfc3339(at)
            .unwrap_or_else(|e| panic!("`at` is not RFC 3339 ({e}): {at}"))
    }
}

async fn jetstream(env: &TestEnv) -> jetstream::Context {
    jetstream::new(env.nats_as("events").await)
}

/// A durable pull consumer on every job event of workspace `test`, from the stream's start.
pub(crate) struct Events {
    consumer: consumer::PullConsumer,
    seen: Vec<Event>,
}

impl Events {
    pub async fn open(env: &TestEnv, durable: &str) -> Self {
        let js = jetstream(env).await;
        let stream = js
            .get_stream(STREAM)
            .await
            .expect("the MILLRACE_EVENTS stream exists");
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subject: format!("millrace.events.{WS}.job.>"),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("create a durable consumer");
        Self {
            consumer,
            seen: Vec::new(),
        }
    }

    /// Takes everything available now.
    async fn drain(&mut self) {
        loop {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(200)
                .messages()
                .await
                .expect("fetch from the events consumer");
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.expect("an event message");
                let body: Value = serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
                    panic!("event payload is not JSON ({e}): {:?}", message.payload)
                });
                let msg_id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned());
                let seq = message.info().expect("JetStream metadata").stream_sequence;
                self.seen.push(Event {
                    subject: message.subject.to_string(),
                    msg_id,
                    seq,
                    body,
                });
                message.ack().await.expect("ack an event");
                got += 1;
            }
            if got == 0 {
                return;
            }
        }
    }

    fn of(&self, id: &str) -> Vec<Event> {
        self.seen
            .iter()
            .filter(|e| e.body["id"] == json!(id))
            .cloned()
            .collect()
    }

    /// The events of job `id` once `kinds` have all arrived, plus whatever follows within a
    /// grace period (so that "exactly" assertions also catch late duplicates).
    pub async fn of_job(&mut self, id: &str, kinds: &[&str], timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain().await;
            let events = self.of(id);
            if kinds.iter().all(|k| events.iter().any(|e| e.kind() == *k)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: expected events {kinds:?} within {timeout:?}, got {:?}",
                events
                    .iter()
                    .map(|e| e.kind().to_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.drain().await;
        self.of(id)
    }
}

pub(crate) fn kinds(events: &[Event]) -> Vec<String> {
    let mut kinds: Vec<String> = events.iter().map(|e| e.kind().to_owned()).collect();
    kinds.sort_by_key(|k| {
        ["queued", "started", "completed", "failed", "canceled"]
            .iter()
            .position(|x| x == k)
    });
    kinds
}

fn one<'a>(events: &'a [Event], kind: &str) -> &'a Event {
    let found: Vec<&Event> = events.iter().filter(|e| e.kind() == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} event: {events:#?}"
    );
    found[0]
}

/// What every job event of a script run carries (SPEC §6, §7).
fn assert_identifies(event: &Event, id: &str, kind: &str, path: &str, hash: &str) {
    assert_eq!(
        event.subject,
        format!("millrace.events.{WS}.job.{kind}"),
        "{event:?}"
    );
    assert_eq!(
        event.msg_id.as_deref(),
        Some(format!("{id}:{kind}").as_str()),
        "Nats-Msg-Id of {event:?}"
    );
    let body = &event.body;
    assert_eq!(body["id"], json!(id), "{body}");
    assert_eq!(body["workspace"], json!(WS), "{body}");
    assert_eq!(body["kind"], json!(kind), "{body}");
    assert_eq!(body["job_kind"], json!("script"), "{body}");
    assert_eq!(body["path"], json!(path), "{body}");
    assert_eq!(body["hash"], json!(hash), "{body}");
    assert_eq!(body["created_by"], json!("alice"), "{body}");
    assert!(
        body.get("flow_version").is_none(),
        "a script event names no flow version: {body}"
    );
    let at = event.at();
    assert!(
        at.offset().local_minus_utc() == 0,
        "`at` should be UTC: {body}"
    );
    if !TERMINAL.contains(&kind) {
        for key in TERMINAL_KEYS {
            assert!(
                body.get(key).is_none(),
                "a {kind} event carries `{key}`: {body}"
            );
        }
    }
}

fn assert_in_order(events: &[Event]) {
    let order = ["queued", "started", "completed", "failed", "canceled"];
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| order.iter().position(|k| *k == e.kind()));
    for pair in sorted.windows(2) {
        assert!(
            pair[0].at() <= pair[1].at(),
            "`at` goes backwards: {:?} then {:?}",
            pair[0].body,
            pair[1].body
        );
    }
}

#[tokio::test]
async fn a_successful_job_publishes_queued_started_completed() {
    let env = TestEnv::start().await;
    let hash = env.script("u/alice/add", "python3", ADD).await;
    let mut events = Events::open(&env, "it-success").await;
    let id = env.run("u/alice/add", json!({"a": 1, "b": 2})).await;
    env.wait(&id, Duration::from_secs(30)).await;
    let job = env.job(&id).await;
    assert_eq!(job["success"], json!(true), "{job}");

    let got = events
        .of_job(
            &id,
            &["queued", "started", "completed"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(kinds(&got), ["queued", "started", "completed"], "{got:#?}");
    for event in &got {
        assert_identifies(event, &id, event.kind(), "u/alice/add", &hash);
    }
    assert_in_order(&got);
    let done = one(&got, "completed");
    assert_eq!(done.body["success"], json!(true), "{}", done.body);
    assert_eq!(done.body["result"], json!(3), "{}", done.body);
    assert!(done.body.get("result_truncated").is_none(), "{}", done.body);
    assert!(
        done.body.get("error").is_none(),
        "a success carries no error: {}",
        done.body
    );
    let duration = done.body["duration_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("duration_ms: {}", done.body));
    assert!(duration >= 0);
    assert_eq!(
        json!(duration),
        job["duration_ms"],
        "event and job disagree on the duration"
    );
    // Events are stored in the order they happened.
    assert!(one(&got, "started").seq < done.seq);
}

#[tokio::test]
async fn a_failing_job_publishes_failed_with_its_error() {
    let env = TestEnv::start().await;
    let hash = env
        .script(
            "u/alice/boom",
            "python3",
            "def main():\n    raise ValueError(\"boom\")\n",
        )
        .await;
    let mut events = Events::open(&env, "it-failure").await;
    let id = env.run("u/alice/boom", json!({})).await;
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(false), "{done}");

    let got = events
        .of_job(
            &id,
            &["queued", "started", "failed"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(kinds(&got), ["queued", "started", "failed"], "{got:#?}");
    for event in &got {
        assert_identifies(event, &id, event.kind(), "u/alice/boom", &hash);
    }
    assert_in_order(&got);
    let failed = one(&got, "failed");
    assert_eq!(failed.body["success"], json!(false), "{}", failed.body);
    assert_eq!(
        failed.body["error"]["name"],
        json!("ValueError"),
        "{}",
        failed.body
    );
    let message = failed.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("boom"), "{}", failed.body);
    assert_eq!(
        failed.body["error"], done["result"]["error"],
        "event and job disagree on the error"
    );
    assert!(failed.body["duration_ms"].is_i64(), "{}", failed.body);
}

#[tokio::test]
async fn a_job_canceled_while_queued_publishes_one_canceled_event() {
    let env = TestEnv::start().await;
    let hash = env.script("u/alice/add", "python3", ADD).await;
    let mut events = Events::open(&env, "it-cancel").await;
    // Scheduled a few seconds ahead so it is still queued when the cancel arrives, yet close
    // enough that the worker meets the cancelled job within the test and must stay silent.
    let id = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/alice/add?scheduled_in_secs=5"),
            &env.token,
            json!({"a": 1, "b": 2}),
        )
        .await
        .expect(201)
        .text;
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs_u/queue/cancel/{id}"),
            &env.token,
            json!({"reason": "r"}),
        )
        .await
        .expect(200);
    assert_eq!(res.text, id);
    let job = env.job(&id).await;
    assert_eq!(job["type"], json!("CompletedJob"), "{job}");
    assert_eq!(job["canceled"], json!(true), "{job}");
    assert_eq!(
        job["started_at"],
        Value::Null,
        "cancelled while queued: {job}"
    );

    let got = events
        .of_job(&id, &["queued", "canceled"], Duration::from_secs(20))
        .await;
    // Past the scheduled time: the worker has pulled the job and must not have run it or
    // announced a second end.
    tokio::time::sleep(Duration::from_secs(6)).await;
    events.drain().await;
    let got_later = events.of(&id);
    assert_eq!(
        got.len(),
        got_later.len(),
        "events after the scheduled time: {got_later:#?}"
    );
    assert_eq!(kinds(&got_later), ["queued", "canceled"], "{got_later:#?}");
    let terminal = got_later
        .iter()
        .filter(|e| TERMINAL.contains(&e.kind()))
        .count();
    assert_eq!(terminal, 1, "exactly one terminal event: {got_later:#?}");
    for event in &got_later {
        assert_identifies(event, &id, event.kind(), "u/alice/add", &hash);
    }
    let canceled = one(&got_later, "canceled");
    assert_eq!(canceled.body["success"], json!(false), "{}", canceled.body);
    assert_eq!(
        canceled.body["error"]["name"],
        json!("Canceled"),
        "{}",
        canceled.body
    );
    assert_eq!(
        canceled.body["error"]["message"],
        json!("Job canceled: r by alice"),
        "{}",
        canceled.body
    );
    let job = env.job(&id).await;
    assert_eq!(
        job["started_at"],
        Value::Null,
        "the worker started a cancelled job: {job}"
    );
    assert_eq!(job["attempts"], json!(0), "{job}");
}

#[tokio::test]
async fn results_over_64_kib_are_left_out_of_events() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/big",
        "python3",
        "def main(n: int):\n    return 'x' * n\n",
    )
    .await;
    let mut events = Events::open(&env, "it-big").await;

    // 70 000 characters: 70 002 bytes of JSON, over the 65 536 limit.
    let big = env.run("u/alice/big", json!({"n": 70_000})).await;
    // 65 000 characters: 65 002 bytes of JSON, within it.
    let small = env.run("u/alice/big", json!({"n": 65_000})).await;
    for id in [&big, &small] {
        let done = env.wait(id, Duration::from_secs(30)).await;
        assert_eq!(done["success"], json!(true), "{done}");
    }
    let result = env
        .get(
            &format!("/api/w/{WS}/jobs_u/completed/get_result/{big}"),
            &env.token,
        )
        .await
        .expect(200);
    assert_eq!(
        result.json().as_str().map(str::len),
        Some(70_000),
        "the job keeps its whole result"
    );

    let got = events
        .of_job(
            &big,
            &["queued", "started", "completed"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(kinds(&got), ["queued", "started", "completed"]);
    let done = one(&got, "completed");
    let keys: Vec<&String> = done.body.as_object().unwrap().keys().collect();
    assert_eq!(
        done.body["result_truncated"],
        json!(true),
        "event keys: {keys:?}"
    );
    assert!(
        done.body.get("result").is_none(),
        "an oversized result travelled in the event"
    );
    assert_eq!(done.body["success"], json!(true));
    assert!(done.body["duration_ms"].is_i64());

    let got = events
        .of_job(&small, &["completed"], Duration::from_secs(20))
        .await;
    let done = one(&got, "completed");
    assert_eq!(
        done.body["result"].as_str().map(str::len),
        Some(65_000),
        "a result within 64 KiB is kept"
    );
    assert!(
        done.body.get("result_truncated").is_none(),
        "{:?}",
        done.body.get("result_truncated")
    );
}

#[tokio::test]
async fn a_replayed_event_is_not_stored_twice() {
    let env = TestEnv::start().await;
    env.script("u/alice/add", "python3", ADD).await;
    let mut events = Events::open(&env, "it-replay").await;
    let id = env.run("u/alice/add", json!({"a": 2, "b": 2})).await;
    env.wait(&id, Duration::from_secs(30)).await;
    let got = events
        .of_job(
            &id,
            &["queued", "started", "completed"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(kinds(&got), ["queued", "started", "completed"]);
    let original = one(&got, "completed").clone();

    let js = jetstream(&env).await;
    let stream = js.get_stream(STREAM).await.unwrap();
    let count = || async { stream.get_info().await.unwrap().state.messages };
    let before = count().await;

    // The same event again, as a worker retrying its publish would send it.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{id}:completed").as_str());
    let payload = serde_json::to_vec(&original.body).unwrap();
    // As the worker it comes from.
    let worker = jetstream::new(env.nats_as("worker").await);
    let ack = worker
        .publish_with_headers(original.subject.clone(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        ack.duplicate,
        "JetStream did not see the replay as a duplicate: {ack:?}"
    );
    assert_eq!(
        ack.sequence, original.seq,
        "a duplicate's ack names the original message"
    );
    assert_eq!(count().await, before, "the replay was stored");

    // Control: the same bytes under a new id are stored, so the count above can move.
    let fresh = uuid::Uuid::new_v4();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{fresh}:completed").as_str());
    let mut body = original.body.clone();
    body["id"] = json!(fresh.to_string());
    let ack = worker
        .publish_with_headers(
            original.subject.clone(),
            headers,
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate);
    assert_eq!(count().await, before + 1);

    tokio::time::sleep(Duration::from_millis(500)).await;
    events.drain().await;
    let completed = events
        .of(&id)
        .into_iter()
        .filter(|e| e.kind() == "completed")
        .count();
    assert_eq!(completed, 1, "a consumer saw the replayed event twice");
}

/// A program for the independent Python client (nats-py): reads job events with a durable pull
/// consumer and prints `[{"seq", "subject", "msg_id", "id", "kind"}]`.
///
/// argv: NATS URL, durable name, how many events to wait for, and optionally a stream sequence
/// to start from (otherwise from the beginning, or where the durable consumer left off).
const NATS_PY_READER: &str = r#"
import asyncio, json, sys
import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy

async def main(url, durable, want, start_seq):
    nc = await nats.connect(url)
    js = nc.jetstream()
    config = None
    if start_seq is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    sub = await js.pull_subscribe("millrace.events.test.job.>", durable=durable,
                                  stream="MILLRACE_EVENTS", config=config)
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while loop.time() < deadline:
        try:
            msgs = await sub.fetch(batch=50, timeout=1)
        except (NatsTimeout, asyncio.TimeoutError):
            # nats-py raises either, depending on where the wait ran out.
            if len(got) >= want:
                break
            continue
        for m in msgs:
            body = json.loads(m.data)
            got.append({
                "seq": m.metadata.sequence.stream,
                "subject": m.subject,
                "msg_id": (m.headers or {}).get("Nats-Msg-Id"),
                "id": body["id"],
                "kind": body["kind"],
            })
            await m.ack()
    await nc.close()
    print(json.dumps(got))

start = int(sys.argv[4]) if len(sys.argv) > 4 else None
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), start))
"#;

async fn nats_py(
    python: &str,
    env: &TestEnv,
    durable: &str,
    want: usize,
    start_seq: Option<u64>,
) -> Vec<Value> {
    let mut command = Command::new(python);
    command
        .arg("-c")
        .arg(NATS_PY_READER)
        .arg(env.nats_url_as("events"))
        .arg(durable)
        .arg(want.to_string());
    if let Some(seq) = start_seq {
        command.arg(seq.to_string());
    }
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the nats-py reader");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nats-py reader failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    parsed.as_array().cloned().unwrap_or_default()
}

fn py_kinds(events: &[Value], id: &str) -> Vec<String> {
    let mut kinds: Vec<String> = events
        .iter()
        .filter(|e| e["id"] == json!(id))
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort_by_key(|k| {
        ["queued", "started", "completed", "failed", "canceled"]
            .iter()
            .position(|x| x == k)
    });
    kinds
}

#[tokio::test]
async fn another_nats_client_reads_events_with_a_durable_consumer() {
    let Some(python) = std::env::var_os("WMILL_PYTHON") else {
        eprintln!(
            "SKIPPED another_nats_client_reads_events_with_a_durable_consumer: WMILL_PYTHON is not set \
             (a Python with nats-py; `eval \"$(bash scripts/tools.sh)\"` sets it)"
        );
        return;
    };
    let python = python.to_string_lossy().into_owned();
    let env = TestEnv::start().await;
    env.script("u/alice/add", "python3", ADD).await;
    env.script(
        "u/alice/boom",
        "python3",
        "def main():\n    raise RuntimeError('no')\n",
    )
    .await;
    let mut events = Events::open(&env, "it-rust-side").await;

    let first = env.run("u/alice/add", json!({"a": 1, "b": 1})).await;
    env.wait(&first, Duration::from_secs(30)).await;
    events
        .of_job(
            &first,
            &["queued", "started", "completed"],
            Duration::from_secs(20),
        )
        .await;

    let got = nats_py(&python, &env, "py-audit", 3, None).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        py_kinds(&got, &first),
        ["queued", "started", "completed"],
        "{got:#?}"
    );
    for event in &got {
        let kind = event["kind"].as_str().unwrap();
        assert_eq!(
            event["subject"],
            json!(format!("millrace.events.{WS}.job.{kind}"))
        );
        assert_eq!(event["msg_id"], json!(format!("{first}:{kind}")));
    }

    // The durable consumer remembers where it stopped: a second session gets only what is new.
    let second = env.run("u/alice/boom", json!({})).await;
    env.wait(&second, Duration::from_secs(30)).await;
    let rust_side = events
        .of_job(
            &second,
            &["queued", "started", "failed"],
            Duration::from_secs(20),
        )
        .await;
    let got = nats_py(&python, &env, "py-audit", 3, None).await;
    assert_eq!(
        got.len(),
        3,
        "the durable consumer replayed old events: {got:#?}"
    );
    assert_eq!(
        py_kinds(&got, &second),
        ["queued", "started", "failed"],
        "{got:#?}"
    );

    // And a consumer can replay from any point of the stream.
    let from = rust_side.iter().map(|e| e.seq).min().unwrap();
    let got = nats_py(&python, &env, "py-replay", 3, Some(from)).await;
    assert_eq!(
        py_kinds(&got, &second),
        ["queued", "started", "failed"],
        "{got:#?}"
    );
    assert!(
        py_kinds(&got, &first).is_empty(),
        "replayed from before the start point: {got:#?}"
    );
}

#[tokio::test]
async fn every_queued_event_of_a_burst_is_stored() {
    // No worker: the jobs stay queued, and the burst's events are all `queued` ones, published
    // by the API in shared batches.
    let env = TestEnv::with(crate::common::Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    env.script("u/alice/add", "python3", ADD).await;
    let mut events = Events::open(&env, "it-burst").await;
    let ids: Vec<String> = futures::stream::iter(0..300)
        .map(|i| env.run("u/alice/add", json!({"a": i, "b": 1})))
        .buffer_unordered(100)
        .collect()
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        events.drain().await;
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !events.of(id).iter().any(|e| e.kind() == "queued"))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        missing,
        0,
        "of {} jobs, {missing} have no queued event",
        ids.len()
    );
    for id in &ids {
        let got = events.of(id);
        assert_eq!(kinds(&got), ["queued"], "{got:#?}");
        assert_eq!(got[0].msg_id.as_deref(), Some(&*format!("{id}:queued")));
    }
}
