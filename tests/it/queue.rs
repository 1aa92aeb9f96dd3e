//! How a job travels between the API and the workers: the worker records a job whose envelope
//! outran the API's INSERT, leaves envelopes of a newer version for upgraded workers, and a job
//! whose row could not be written is taken back rather than run.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};

use crate::common::{TestEnv, WS};

const JOBS_STREAM: &str = "MILLRACE_JOBS";

/// The jobs stream as the API publishes to it, and as its administrator sees it.
pub(crate) struct Jobs {
    api: jetstream::Context,
    admin: jetstream::Context,
}

pub(crate) async fn jetstream(env: &TestEnv) -> Jobs {
    Jobs {
        api: jetstream::new(env.nats_as("api").await),
        admin: jetstream::new(env.nats_as("migrate").await),
    }
}

async fn stream_state(js: &Jobs) -> jetstream::stream::State {
    let mut stream = js.admin.get_stream(JOBS_STREAM).await.unwrap();
    stream.info().await.unwrap().state.clone()
}

/// Messages in the jobs stream: published and not yet acked (or taken back).
pub(crate) async fn queued_messages(js: &Jobs) -> u64 {
    stream_state(js).await.messages
}

/// A version-2 envelope for a bash script, as the API would publish it while its INSERT is
/// still under way.
pub(crate) fn envelope(id: uuid::Uuid, hash: &str, args: Value) -> Value {
    json!({
        "v": 2,
        "id": id,
        "workspace": WS,
        "kind": "script",
        "path": "u/admin/greet",
        "hash": hash,
        "language": "bash",
        "created_by": "admin",
        "permissioned_as": "admin@millrace.local",
        "scopes": null,
        "tag": "default",
        "timeout_s": null,
        "scheduled_for": null,
        "record": {
            "args": args,
            "created_at": "2026-11-30T12:00:00Z",
            "parent_job": null,
            "started_by_token": "feedc0de",
        },
    })
}

pub(crate) async fn wait_for_log(env: &TestEnv, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.logs().contains(line) {
        assert!(
            Instant::now() < deadline,
            "never logged {line:?}:\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn publish(js: &Jobs, message: &Value) {
    js.api
        .publish(
            "millrace.jobs.default",
            serde_json::to_vec(message).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_worker_records_a_job_whose_envelope_outran_the_insert() {
    let env = TestEnv::start().await;
    let hash = env
        .script(
            "u/admin/greet",
            "bash",
            "name=\"$1\"\necho \"hello $name\"\n",
        )
        .await;
    let js = jetstream(&env).await;
    let id = uuid::Uuid::now_v7();

    // No row exists for this job: only its envelope, as if the API's INSERT were late.
    publish(&js, &envelope(id, &hash, json!({"name": "ada"}))).await;

    // Until a worker takes it, the job is unknown.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let maybe = env
            .get(
                &format!("/api/w/{WS}/jobs_u/completed/get_result_maybe/{id}"),
                &env.token,
            )
            .await;
        if maybe.status == 200 && maybe.json()["completed"] == json!(true) {
            break maybe.json();
        }
        assert!(
            [200, 404].contains(&maybe.status) && Instant::now() < deadline,
            "job {id} not completed: {} {}",
            maybe.status,
            maybe.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(done["result"], json!("hello ada"));
    let job = env.job(&id.to_string()).await;
    assert_eq!(job["args"], json!({"name": "ada"}));
    assert_eq!(job["created_by"], json!("admin"));
    assert_eq!(job["created_at"], json!("2026-11-30T12:00:00Z"));
    assert_eq!(job["script_path"], json!("u/admin/greet"));
    assert_eq!(job["script_hash"], json!(hash));
    assert_eq!(job["attempts"], json!(1));
    let row = env
        .sql()
        .await
        .query_one(
            "SELECT started_by_token, permissioned_as FROM jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("feedc0de"));
    assert_eq!(row.get::<_, String>(1), "admin@millrace.local");
    // The ack follows the completion (after `done` and the terminal event).
    let deadline = Instant::now() + Duration::from_secs(10);
    while queued_messages(&js).await > 0 {
        assert!(Instant::now() < deadline, "the job was never acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_job_cancelled_while_queued_is_not_run_from_its_envelope() {
    let env = TestEnv::start().await;
    let hash = env.script("u/admin/greet", "bash", "echo ran\n").await;
    let js = jetstream(&env).await;
    let id = uuid::Uuid::now_v7();
    // The row exists and is already completed as cancelled; the envelope must not revive it.
    env.sql()
        .await
        .execute(
            "INSERT INTO jobs (id, workspace_id, job_kind, script_path, script_hash, args,
                               created_by, permissioned_as, tag, status, created_at,
                               completed_at, canceled_by, result)
             VALUES ($1, $2, 'script', 'u/admin/greet', $3, '{}', 'admin',
                     'admin@millrace.local', 'default', 'canceled', now(), now(), 'admin',
                     '{\"error\": {\"name\": \"Canceled\", \"message\": \"canceled\"}}')",
            &[&id, &WS, &hash],
        )
        .await
        .unwrap();

    publish(&js, &envelope(id, &hash, json!({}))).await;

    let deadline = Instant::now() + Duration::from_secs(15);
    while queued_messages(&js).await > 0 {
        assert!(Instant::now() < deadline, "the envelope was never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = env.job(&id.to_string()).await;
    assert_eq!(job["canceled"], json!(true), "{job}");
    assert_eq!(job["attempts"], json!(0), "the job was started: {job}");
    assert_eq!(job["started_at"], Value::Null);
}

#[tokio::test]
async fn an_envelope_of_a_newer_version_is_left_for_an_upgraded_worker() {
    let env = TestEnv::start().await;
    let hash = env.script("u/admin/greet", "bash", "echo ran\n").await;
    let js = jetstream(&env).await;
    let id = uuid::Uuid::now_v7();
    let mut future = envelope(id, &hash, json!({}));
    future["v"] = json!(4);
    // A future version may change fields too; the version alone must be enough to tell.
    future["kind"] = json!({"something": "new"});

    publish(&js, &future).await;

    wait_for_log(&env, "leaving a job for an upgraded worker").await;
    // Time for a settlement to land: a terminated envelope would be gone from the stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        queued_messages(&js).await,
        1,
        "the envelope was dropped instead of being left in the queue"
    );
    let rows = env
        .sql()
        .await
        .query("SELECT 1 FROM jobs WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert!(rows.is_empty(), "a worker ran an envelope it cannot read");
}

#[tokio::test]
async fn a_job_whose_row_cannot_be_written_is_taken_back_not_run() {
    let env = TestEnv::start().await;
    let marker = env.scratch().join("ran");
    env.script("u/admin/touch", "bash", "path=\"$1\"\ntouch \"$path\"\n")
        .await;
    let path = marker.display().to_string();
    let js = jetstream(&env).await;
    // The API keeps a token for one second; on a busy machine that can pass before the call
    // below, which then fails at authentication, before anything is published. Try again.
    let mut tries = 0;
    loop {
        tries += 1;
        // The test cluster runs without synchronous commits and stops like a crash: write out
        // what is committed so far (the token, the script), or it may be lost.
        env.sql().await.batch_execute("CHECKPOINT").await.unwrap();
        // Once with the database up, so the token and the script are in the API's caches.
        env.run_ok("u/admin/touch", json!({"path": format!("{path}.warmup")}))
            .await;
        let before = stream_state(&js).await;
        assert_eq!(before.messages, 0);
        env.pg.stop();
        let answer = env
            .post(
                &format!("/api/w/{WS}/jobs/run/p/u/admin/touch"),
                &env.token,
                json!({"path": path}),
            )
            .await;
        assert_eq!(answer.status, 503, "{}", answer.text);
        assert!(answer.text.contains("database"), "{}", answer.text);
        let after = stream_state(&js).await;
        if after.last_sequence == before.last_sequence && tries < 3 {
            env.pg.restart().unwrap();
            continue;
        }
        assert_eq!(
            after.last_sequence,
            before.last_sequence + 1,
            "the job was never published, so nothing here was taken back"
        );
        assert_eq!(
            after.messages, 0,
            "the job answered as failed is still queued"
        );
        break;
    }

    // The worker that took the job could not record it either, and hands it back. (Were the
    // database back before that, the worker would run the job: the one window left.)
    wait_for_log(&env, "could not mark the job running; handing it back").await;
    env.pg.restart().unwrap();
    // Longer than the hand-back delay: a redelivered job would have run by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !marker.exists(),
        "the job answered as failed ran:\n{}",
        env.logs()
    );
    let rows = env
        .sql()
        .await
        .query("SELECT status FROM jobs WHERE args->>'path' = $1", &[&path])
        .await
        .unwrap();
    assert!(rows.is_empty(), "the job answered as failed was recorded");
    assert_eq!(queued_messages(&js).await, 0);
    // And the service is whole again.
    env.run_ok("u/admin/touch", json!({"path": format!("{path}.after")}))
        .await;
}
