//! Jobs scheduled for later wait in their rows, not in the work queue: the scheduler of any API
//! replica publishes each once when due, across restarts, and they never stand in the way of
//! jobs to run now. Far-future schedules are refused.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::common::{Options, TestEnv, WS};

/// Appends the job's id to the file `path`: how often a job ran, whoever ran it.
const MARK: &str = "path=\"$1\"\necho \"$WM_JOB_ID\" >> \"$path\"\n";

/// The jobs stream as its administrator sees it.
async fn jobs_stream(env: &TestEnv) -> jetstream::stream::State {
    let js = jetstream::new(env.nats_as("migrate").await);
    let mut stream = js.get_stream("MILLRACE_JOBS").await.unwrap();
    stream.info().await.unwrap().state.clone()
}

fn time(job: &Value, field: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(
        job[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {job}")),
    )
    .unwrap()
    .with_timezone(&Utc)
}

async fn schedule(env: &TestEnv, path: &str, query: &str, args: Value) -> String {
    env.post(
        &format!("/api/w/{WS}/jobs/run/p/{path}?{query}"),
        &env.token,
        args,
    )
    .await
    .expect(201)
    .text
}

/// Held messages of jobs of `kind` due more than half a second from now (by the database's
/// clock): closer ones may be in the stream already while their rows still hold them, being
/// published.
async fn held_later(db: &tokio_postgres::Client, kind: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM jobs
         WHERE job_kind = $1 AND publish_at > now() + interval '500 milliseconds'",
        &[&kind],
    )
    .await
    .unwrap()
    .get(0)
}

/// A file every job may append to (each job may run as a user of its own).
fn marks_file(env: &TestEnv) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = env.scratch().join("marks");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `SELECT count(*) …` on `db`.
async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_scheduled_job_waits_outside_the_queue_and_runs_once_when_due() {
    let mut env = TestEnv::start().await;
    env.add_api().await;
    env.script("u/alice/mark", "bash", MARK).await;
    let marks = marks_file(&env);
    let args = json!({"path": marks.display().to_string()});
    let db = env.sql().await;

    let ids: Vec<String> = futures::future::join_all(
        (0..20).map(|_| schedule(&env, "u/alice/mark", "scheduled_in_secs=4", args.clone())),
    )
    .await;
    let first = env.job(&ids[0]).await;
    assert_eq!(first["type"], json!("QueuedJob"), "{first}");
    // Until they are due, the stream holds none of them.
    let mut looked = 0;
    while held_later(&db, "script").await == 20 {
        assert_eq!(
            jobs_stream(&env).await.messages,
            0,
            "a job due later is in the work queue"
        );
        looked += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(looked > 0, "the jobs were never seen waiting in their rows");

    for id in &ids {
        let done = env.wait(id, Duration::from_secs(30)).await;
        assert_eq!(done["success"], json!(true), "{done}");
        let job = env.job(id).await;
        assert!(
            time(&job, "started_at") >= time(&job, "scheduled_for"),
            "started before it was due: {job}"
        );
        assert_eq!(job["attempts"], json!(1), "{job}");
    }
    // Two replicas' schedulers, one message and one run per job.
    let mut ran = lines(&marks);
    ran.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(ran, expected, "each job ran exactly once");
    assert_eq!(
        jobs_stream(&env).await.last_sequence,
        20,
        "one message per job"
    );
    let still_held = count(
        &db,
        "SELECT count(*) FROM jobs WHERE publish_at IS NOT NULL",
    )
    .await;
    assert_eq!(still_held, 0);
}

#[tokio::test]
async fn scheduled_jobs_survive_a_restart_of_every_api_and_a_cancel_holds() {
    let mut env = TestEnv::start().await;
    env.script("u/alice/mark", "bash", MARK).await;
    let marks = marks_file(&env);
    let args = json!({"path": marks.display().to_string()});
    let kept = schedule(&env, "u/alice/mark", "scheduled_in_secs=3", args.clone()).await;
    let canceled = schedule(&env, "u/alice/mark", "scheduled_in_secs=3", args).await;
    env.post(
        &format!("/api/w/{WS}/jobs_u/queue/cancel/{canceled}"),
        &env.token,
        json!({"reason": "not needed"}),
    )
    .await
    .expect(200);

    // No API runs when the jobs come due.
    env.kill_api(0);
    let db = env.sql().await;
    let due: DateTime<Utc> = db
        .query_one(
            "SELECT scheduled_for FROM jobs WHERE id = $1",
            &[&uuid::Uuid::parse_str(&kept).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    while Utc::now() < due + chrono::Duration::seconds(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = |id: &str| {
        let id = uuid::Uuid::parse_str(id).unwrap();
        let db = &db;
        async move {
            db.query_one("SELECT status FROM jobs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(status(&kept).await, "queued", "nobody published it yet");
    assert_eq!(jobs_stream(&env).await.messages, 0);

    env.api_url = env.add_api().await;
    let done = env.wait(&kept, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(lines(&marks), vec![kept], "the cancelled job never ran");
    assert_eq!(status(&canceled).await, "canceled");
    let job = env.job(&canceled).await;
    assert_eq!(job["started_at"], Value::Null, "{job}");
    let held = count(
        &db,
        "SELECT count(*) FROM jobs WHERE publish_at IS NOT NULL",
    )
    .await;
    assert_eq!(held, 0, "nothing is left held");
}

#[tokio::test]
async fn schedules_too_far_ahead_or_malformed_are_refused() {
    let env = TestEnv::with(Options {
        workers: 1,
        api_env: vec![("MAX_SCHEDULE_AHEAD".into(), "3600".into())],
        ..Default::default()
    })
    .await;
    env.script("u/alice/mark", "bash", MARK).await;
    let env = &env;
    let run = |query: String| async move {
        env.post(
            &format!("/api/w/{WS}/jobs/run/p/u/alice/mark?{query}"),
            &env.token,
            json!({"path": "/dev/null"}),
        )
        .await
    };
    let far = (Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let far: String = form_urlencoded::byte_serialize(far.as_bytes()).collect();
    for query in [
        "scheduled_in_secs=3700".to_owned(),
        format!("scheduled_for={far}"),
        "scheduled_for=9999-12-31T23:59:59Z".to_owned(),
    ] {
        let res = run(query.clone()).await.expect(400);
        assert!(
            res.text.contains("too far ahead") && res.text.contains("MAX_SCHEDULE_AHEAD"),
            "{query}: {}",
            res.text
        );
    }
    for query in [
        "scheduled_in_secs=-5",
        "scheduled_in_secs=NaN",
        "scheduled_in_secs=1e30",
        "scheduled_in_secs=9000000000000",
        "scheduled_in_secs=99999999999999999999999",
        "scheduled_for=next%20week",
    ] {
        let res = run(query.to_owned()).await.expect(400);
        assert!(res.text.contains("scheduled_"), "{query}: {}", res.text);
    }
    let count: i64 = env
        .sql()
        .await
        .query_one("SELECT count(*) FROM jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "a refused schedule records no job");
    // Within the limit.
    let id = run("scheduled_in_secs=3500".to_owned())
        .await
        .expect(201)
        .text;
    assert_eq!(env.job(&id).await["type"], json!("QueuedJob"));
}

#[tokio::test]
async fn many_jobs_scheduled_later_do_not_delay_a_job_to_run_now() {
    let env = TestEnv::with(Options {
        workers: 1,
        worker_env: vec![("WORKER_SLOTS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    env.script("u/alice/mark", "bash", MARK).await;
    let args = json!({"path": "/dev/null"});
    let later: Vec<String> = {
        use futures::StreamExt;
        futures::stream::iter(0..300)
            .map(|_| schedule(&env, "u/alice/mark", "scheduled_in_secs=120", args.clone()))
            .buffer_unordered(16)
            .collect()
            .await
    };
    assert_eq!(later.len(), 300);
    let began = Instant::now();
    let now = env.run("u/alice/mark", args.clone()).await;
    let done = env.wait(&now, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the immediate job waited {:?}",
        began.elapsed()
    );
    let state = jobs_stream(&env).await;
    assert_eq!(
        state.last_sequence, 1,
        "only the immediate job went through the queue"
    );
    let waiting: i64 = env
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND publish_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 300, "the scheduled jobs still wait, in their rows");
}

#[tokio::test]
async fn a_flow_s_retry_delay_and_sleep_wait_outside_the_queue() {
    let env = TestEnv::start().await;
    let marker = env.scratch().join("flaky").display().to_string();
    // Fails once, then succeeds; retried after 3 s, then the flow sleeps 3 s before its last step.
    let flaky = "import os\ndef main(marker):\n    n = int(open(marker).read()) if os.path.exists(marker) else 0\n    open(marker, 'w').write(str(n + 1))\n    if n < 1:\n        raise RuntimeError('first attempt')\n    return n + 1\n";
    env.flow(
        "u/alice/patient",
        json!({"modules": [
            {"id": "flaky", "value": {"type": "rawscript", "language": "python3", "content": flaky,
              "input_transforms": {"marker": {"type": "static", "value": marker}}},
             "retry": {"constant": {"attempts": 2, "seconds": 3}}},
            {"id": "napping", "value": {"type": "identity"},
             "sleep": {"type": "static", "value": 3}},
            {"id": "after", "value": {"type": "identity"}},
        ]}),
    )
    .await;
    let db = env.sql().await;
    let id = env.run_flow("u/alice/patient", json!({})).await;
    let (mut saw_retry, mut saw_sleep) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let maybe = env
            .get(
                &format!("/api/w/{WS}/jobs_u/completed/get_result_maybe/{id}"),
                &env.token,
            )
            .await
            .expect(200)
            .json();
        if maybe["completed"] == json!(true) {
            assert_eq!(maybe["success"], json!(true), "{maybe}");
            assert_eq!(maybe["result"], json!(2), "{maybe}");
            break;
        }
        let retry = held_later(&db, "script").await > 0;
        let sleep = held_later(&db, "flow").await > 0;
        if retry || sleep {
            assert_eq!(
                jobs_stream(&env).await.messages,
                0,
                "a flow's retry or wake-up is in the work queue before it is due"
            );
        }
        saw_retry |= retry;
        saw_sleep |= sleep;
        assert!(Instant::now() < deadline, "flow {id} not done: {maybe}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_retry && saw_sleep,
        "retry held: {saw_retry}, wake-up held: {saw_sleep}"
    );
}

/// Declares the worker consumers of `tags` as `millrace migrate` does for `WORKER_TAGS`: jobs
/// of such a tag are accepted even while no worker runs for it, and wait in the queue.
fn declare_tags(env: &TestEnv, tags: &str) {
    let status = env
        .command("migrate", &[("WORKER_TAGS".into(), tags.into())])
        .status()
        .unwrap();
    assert!(status.success(), "millrace migrate failed");
}

fn uuid(id: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(id).unwrap()
}

#[tokio::test]
async fn a_held_message_jetstream_refuses_holds_back_no_other() {
    // Three messages per tag; `stuck` has a consumer and, for now, no worker.
    let mut env = TestEnv::with(Options {
        workers: 1,
        shared_env: vec![("JOBS_STREAM_MAX_MSGS_PER_SUBJECT".into(), "3".into())],
        ..Default::default()
    })
    .await;
    declare_tags(&env, "default,stuck");
    env.script("u/alice/mark", "bash", MARK).await;
    let marks = marks_file(&env);
    let args = json!({"path": marks.display().to_string()});
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(schedule(&env, "u/alice/mark", "tag=stuck", args.clone()).await);
    }
    let full = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/alice/mark?tag=stuck"),
            &env.token,
            args.clone(),
        )
        .await;
    assert_eq!(
        full.status, 503,
        "the stuck tag's queue is full: {}",
        full.text
    );

    // Held; the one JetStream will refuse comes due first, so it is at the head of every claim.
    let stuck = schedule(
        &env,
        "u/alice/mark",
        "tag=stuck&scheduled_in_secs=2",
        args.clone(),
    )
    .await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(schedule(&env, "u/alice/mark", "scheduled_in_secs=3", args.clone()).await);
    }
    for id in &others {
        let done = env.wait(id, Duration::from_secs(30)).await;
        assert_eq!(done["success"], json!(true), "{done}");
        let job = env.job(id).await;
        let late = time(&job, "started_at") - time(&job, "scheduled_for");
        assert!(
            late >= chrono::Duration::zero() && late < chrono::Duration::seconds(10),
            "started {late} after it was due: {job}"
        );
    }
    // Cleared when their PubAcks came, in the commit a worker waits for before starting them.
    let db = env.sql().await;
    let ids: Vec<uuid::Uuid> = others.iter().map(|id| uuid(id)).collect();
    let held: i64 = db
        .query_one(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND publish_at IS NOT NULL",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "published jobs are still held, to be sent again");

    // The refused one stays held, tried again later each time, and the API says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = db
            .query_one(
                "SELECT status, publish_failures,
                        publish_at >= scheduled_for + interval '3 seconds'
                 FROM jobs WHERE id = $1",
                &[&uuid(&stuck)],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "queued");
        if row.get::<_, i32>(1) >= 2 {
            assert_eq!(
                row.get::<_, Option<bool>>(2),
                Some(true),
                "held again 1 s, then 2 s later"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused message was not retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let js = jetstream::new(env.nats_as("migrate").await);
    let pending = js
        .get_stream("MILLRACE_JOBS")
        .await
        .unwrap()
        .consumer_info("workers-stuck")
        .await
        .unwrap()
        .num_pending;
    assert_eq!(
        pending, 3,
        "only the jobs queued at once wait for the stuck tag"
    );
    let logs = env.logs();
    assert!(
        logs.lines()
            .any(|line| line.contains(&stuck) && line.contains("held again")),
        "no warning names the refused job"
    );

    // A worker for the tag makes room: the held job goes out and runs, once.
    env.add_worker(&[("WORKER_TAGS", "stuck")]);
    for id in waiting.iter().chain([&stuck]) {
        let done = env.wait(id, Duration::from_secs(120)).await;
        assert_eq!(done["success"], json!(true), "{done}");
    }
    assert_eq!(env.job(&stuck).await["attempts"], json!(1));
    let mut ran = lines(&marks);
    ran.sort();
    let mut expected: Vec<String> = waiting.iter().chain(&others).cloned().collect();
    expected.push(stuck.clone());
    expected.sort();
    assert_eq!(ran, expected, "each job ran exactly once");
    let row = db
        .query_one(
            "SELECT publish_at IS NULL, publish_failures FROM jobs WHERE id = $1",
            &[&uuid(&stuck)],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "still held after it ran");
    assert_eq!(
        row.get::<_, i32>(1),
        0,
        "failures counted after it went out"
    );
}

#[tokio::test]
async fn a_held_message_goes_out_as_stored_and_one_with_no_queue_fails_its_job() {
    let mut env = TestEnv::start().await;
    declare_tags(&env, "default,later");
    env.script("u/alice/mark", "bash", MARK).await;
    let marks = marks_file(&env);
    let args = json!({"path": marks.display().to_string()});
    let kept = schedule(
        &env,
        "u/alice/mark",
        "tag=later&scheduled_in_secs=4",
        args.clone(),
    )
    .await;
    let lost = schedule(&env, "u/alice/mark", "tag=later&scheduled_in_secs=4", args).await;
    let db = env.sql().await;
    // As a newer API may write them: a field this binary does not know; a tag it cannot use.
    let changed = db
        .execute(
            "UPDATE jobs SET publish_envelope = publish_envelope
                             || '{\"from_a_newer_api\": {\"keep\": [1, 2.5, \"x\"]}}'
             WHERE id = $1 AND publish_at > now() + interval '1 second'",
            &[&uuid(&kept)],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1, "the job was no longer held");
    let changed = db
        .execute(
            "UPDATE jobs SET tag = 'no such/tag'
             WHERE id = $1 AND publish_at > now() + interval '1 second'",
            &[&uuid(&lost)],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1, "the job was no longer held");
    let stored: Value = db
        .query_one(
            "SELECT publish_envelope FROM jobs WHERE id = $1",
            &[&uuid(&kept)],
        )
        .await
        .unwrap()
        .get(0);

    let js = jetstream::new(env.nats_as("migrate").await);
    let jobs = js.get_stream("MILLRACE_JOBS").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        if let Ok(message) = jobs
            .get_last_raw_message_by_subject("millrace.jobs.later")
            .await
        {
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "the held job was never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let published: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(published, stored, "published otherwise than stored");
    assert_eq!(
        published["from_a_newer_api"],
        json!({"keep": [1, 2.5, "x"]})
    );
    assert_eq!(
        message.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(kept.as_str())
    );

    // The one whose tag names no queue ends as failed, saying so, and is announced.
    let done = env.wait(&lost, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(false), "{done}");
    let error = &done["result"]["error"];
    assert_eq!(error["name"], json!("NotQueued"), "{done}");
    let why = error["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("no such/tag") && why.contains("names no queue"),
        "{why}"
    );
    let events = js.get_stream("MILLRACE_EVENTS").await.unwrap();
    let failed = events
        .get_last_raw_message_by_subject(&format!("millrace.events.{WS}.job.failed"))
        .await
        .expect("a failed event");
    let failed: Value = serde_json::from_slice(&failed.payload).unwrap();
    assert_eq!(failed["id"], json!(lost), "{failed}");
    assert_eq!(failed["error"]["name"], json!("NotQueued"), "{failed}");
    assert_eq!(
        jobs_stream(&env).await.last_sequence,
        1,
        "only the job with a queue was published"
    );
    let held = count(
        &db,
        "SELECT count(*) FROM jobs WHERE publish_at IS NOT NULL",
    )
    .await;
    assert_eq!(held, 0);

    // A worker of this version runs it, leaving the field it does not know alone.
    env.add_worker(&[("WORKER_TAGS", "later")]);
    let done = env.wait(&kept, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(lines(&marks), vec![kept], "the failed job never ran");
}
