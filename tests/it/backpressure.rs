//! Limits and honest refusals: a full job queue (in all or for one tag) answers 503 with
//! `Retry-After` and leaves no refused job queued; too many requests or body bytes at once are
//! shed at once; a preset `job_id` is never answered 201 for a job that cannot run; a tag no
//! worker serves is refused; many large bodies at once are all recorded.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::common::{eventually, signal_tree, Options, Response, TestEnv, WS};

fn declare(env: &TestEnv, extra: &[(&str, &str)]) {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let status = env.command("migrate", &extra).status().unwrap();
    assert!(status.success(), "millrace migrate failed");
}

/// A 503 that says when to come back.
fn assert_shed(res: &Response, reason: &str) {
    assert_eq!(res.status, 503, "{}", res.text);
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert!(res.text.contains(reason), "{}", res.text);
}

/// `POST path` with `{}` as the test's user, in a task of its own: (status, body).
fn post_empty_aside(env: &TestEnv, path: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let (http, url, token) = (env.http.clone(), env.url(path), env.token.clone());
    tokio::spawn(async move {
        let res = http.post(url).bearer_auth(token).json(&json!({})).send();
        let res = res.await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    })
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    env.sql().await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn run_tagged(env: &TestEnv, tag: &str) -> Response {
    env.post(
        &format!("/api/w/{WS}/jobs/run/p/u/alice/quick?tag={tag}"),
        &env.token,
        json!({}),
    )
    .await
}

#[tokio::test]
async fn a_full_queue_refuses_jobs_until_workers_take_some() {
    let env = TestEnv::with(Options::default()).await;
    // Three jobs per tag, four in all; a second tag with a consumer.
    declare(
        &env,
        &[
            ("WORKER_TAGS", "default,other"),
            ("JOBS_STREAM_MAX_MSGS", "4"),
            ("JOBS_STREAM_MAX_MSGS_PER_SUBJECT", "3"),
        ],
    );
    env.script("u/alice/quick", "bash", "echo ok\n").await;
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(run_tagged(&env, "default").await.expect(201).text);
    }
    let started = Instant::now();
    // The tag's share is full…
    assert_shed(&run_tagged(&env, "default").await, "queue is full");
    // …not the other tag's, until the stream as a whole is.
    accepted.push(run_tagged(&env, "other").await.expect(201).text);
    assert_shed(&run_tagged(&env, "other").await, "queue is full");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusals took {:?}",
        started.elapsed()
    );
    // Refused jobs leave no row behind; the accepted ones are queued.
    assert_eq!(count(&env, "SELECT count(*) FROM jobs").await, 4);
    assert_eq!(
        count(&env, "SELECT count(*) FROM jobs WHERE status = 'queued'").await,
        4
    );
    // Lower limits than what the stream holds are refused: NATS would delete queued jobs.
    for (name, value) in [
        ("JOBS_STREAM_MAX_MSGS", "2"),
        ("JOBS_STREAM_MAX_MSGS_PER_SUBJECT", "2"),
    ] {
        let out = env
            .command("migrate", &[(name.to_string(), value.to_string())])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} was applied");
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("drain"), "{said}");
    }
    assert_eq!(
        count(&env, "SELECT count(*) FROM jobs WHERE status = 'queued'").await,
        4
    );

    // Workers take the jobs: there is room again.
    let mut env = env;
    env.add_worker(&[("WORKER_TAGS", "default,other")]);
    for id in &accepted {
        assert_eq!(
            env.wait(id, Duration::from_secs(60)).await["success"],
            json!(true)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let res = run_tagged(&env, "default").await;
        if res.status == 201 {
            break res.text;
        }
        assert_shed(&res, "queue is full");
        assert!(Instant::now() < deadline, "still refused after the drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        env.wait(&id, Duration::from_secs(60)).await["success"],
        json!(true)
    );
}

/// A request whose body never finishes arriving: it holds its share until the connection closes.
/// One that is answered at once was refused (a request that just ended may not have given its
/// share back yet): it is sent again.
async fn slow_request(env: &TestEnv, content_length: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    let addr = env.api_url.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/w/{WS}/jobs/run/p/u/alice/quick HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {content_length}\r\n\r\n{{",
            env.token
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = [0u8; 256];
        let answered = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut answer));
        match answered.await {
            Err(_) => return stream,
            Ok(read) => {
                let n = read.unwrap_or(0);
                let text = String::from_utf8_lossy(&answer[..n]);
                assert!(
                    text.contains(" 503 "),
                    "a slow request was answered: {text}"
                );
                assert!(
                    Instant::now() < deadline,
                    "slow requests keep being refused"
                );
            }
        }
    }
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limits_are_shed_at_once() {
    let env = TestEnv::with(Options {
        api_env: vec![
            ("MAX_INFLIGHT_REQUESTS".into(), "2".into()),
            ("MAX_INFLIGHT_BODY_BYTES".into(), "1000".into()),
        ],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script("u/alice/quick", "bash", "echo ok\n").await;
    let url = format!("/api/w/{WS}/jobs/run/p/u/alice/quick");
    let body_of = |bytes: usize| json!({ "pad": "x".repeat(bytes.saturating_sub(10)) });

    // 800 of the 1000 body bytes are held by a body still arriving.
    let slow_big = slow_request(&env, 800).await;
    eventually(
        Duration::from_secs(30),
        "a 300-byte body is refused for want of body budget",
        async || {
            let res = env.post(&url, &env.token, body_of(300)).await;
            res.status == 503
        },
    )
    .await;
    let started = Instant::now();
    let res = env.post(&url, &env.token, body_of(300)).await;
    assert_shed(&res, "too many requests in progress");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A small one fits beside it.
    env.post(&url, &env.token, json!({})).await.expect(201);

    // Both request slots taken: anything more is refused, whatever its size.
    let slow_small = slow_request(&env, 10).await;
    eventually(
        Duration::from_secs(30),
        "a third request is refused",
        async || env.post(&url, &env.token, json!({})).await.status == 503,
    )
    .await;
    assert_shed(
        &env.post(&url, &env.token, json!({})).await,
        "too many requests in progress",
    );
    // Health and reads are not run routes.
    env.get("/healthz", "").await.expect(200);

    // The slow callers go away: their shares come back.
    drop((slow_big, slow_small));
    eventually(
        Duration::from_secs(30),
        "requests are served again",
        async || env.post(&url, &env.token, json!({})).await.status == 201,
    )
    .await;
    // A sync call waiting for its result holds no share once its job is queued.
    env.script("u/alice/sleepy", "bash", "sleep 5\necho done\n")
        .await;
    let sync_url = format!("/api/w/{WS}/jobs/run_wait_result/p/u/alice/sleepy");
    // Three of them, one after the other: the first two still wait when the third comes.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(post_empty_aside(&env, &sync_url));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for call in waiting {
        let (status, text) = call.await.unwrap();
        assert_eq!((status, text.trim()), (200, "\"done\""));
    }
}

async fn run_as(env: &TestEnv, id: uuid::Uuid) -> Response {
    env.post(
        &format!("/api/w/{WS}/jobs/run/p/u/alice/quick?job_id={id}"),
        &env.token,
        json!({}),
    )
    .await
}

#[tokio::test]
async fn a_preset_job_id_is_never_answered_201_for_a_job_that_cannot_run() {
    let mut env = TestEnv::with(Options::default()).await;
    env.script("u/alice/quick", "bash", "echo ok\n").await;
    // Taken by an earlier job: 409, as before.
    let taken = uuid::Uuid::now_v7();
    run_as(&env, taken).await.expect(201);
    let res = run_as(&env, taken).await.expect(409);
    assert!(res.text.contains("already exists"), "{}", res.text);

    // A message with this id is in the stream already (published by someone else within the
    // deduplication window, as a retry after a lost PubAck would find its own): JetStream drops
    // the new one as a duplicate. The caller must not get 201 for a job no message will start.
    let id = uuid::Uuid::now_v7();
    let hash = env.job(&taken.to_string()).await["script_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = async_nats::jetstream::new(env.nats_as("api").await);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    let foreign = json!({
        "v": 3, "id": id, "workspace": WS, "kind": "script", "path": "u/alice/quick",
        "hash": hash, "language": "bash", "created_by": "alice",
        "permissioned_as": "alice@example.com", "scopes": null, "tag": "default",
        "timeout_s": null, "scheduled_for": null,
    });
    api.publish_with_headers(
        "millrace.jobs.default",
        headers,
        serde_json::to_vec(&foreign).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let res = run_as(&env, id).await.expect(409);
    assert!(res.text.contains("queued moments ago"), "{}", res.text);
    let job = env.job(&id.to_string()).await;
    assert_eq!(job["success"], json!(false), "{job}");
    assert!(
        job["result"]["error"]["name"] == json!("NotQueued"),
        "{job}"
    );
    // Its id stays taken…
    run_as(&env, id).await.expect(409);
    // …and the foreign message, delivered now, starts nothing.
    env.add_worker(&[]);
    let marker = run_as(&env, uuid::Uuid::now_v7()).await.expect(201).text;
    env.wait(&marker, Duration::from_secs(60)).await;
    let row = env
        .sql()
        .await
        .query_one(
            "SELECT status, started_at IS NULL FROM jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("failure".to_owned(), true)
    );
}

#[tokio::test]
async fn a_tag_no_worker_serves_is_refused() {
    let env = TestEnv::with(Options::default()).await;
    env.script("u/alice/quick", "bash", "echo ok\n").await;
    let res = run_tagged(&env, "nobody").await.expect(400);
    assert!(res.text.contains("no worker serves tag"), "{}", res.text);
    // Scripts that name such a tag are refused the same way, nothing is recorded.
    assert_eq!(
        count(&env, "SELECT count(*) FROM jobs WHERE tag = 'nobody'").await,
        0
    );
    // Once a consumer exists (its workers started, or `migrate` declared it), it is accepted
    // within seconds.
    declare(&env, &[("WORKER_TAGS", "default,nobody")]);
    eventually(
        Duration::from_secs(30),
        "the new tag is accepted",
        async || run_tagged(&env, "nobody").await.status == 201,
    )
    .await;
}

#[tokio::test]
async fn many_large_bodies_at_once_are_all_recorded() {
    let env = TestEnv::with(Options {
        // Statements of 32 MiB from a debug build on a shared machine take seconds: this test
        // is about their size, not about deadlines.
        api_env: vec![("SUBMIT_TIMEOUT".into(), "60".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script(
        "u/alice/size",
        "python3",
        "def main(pad='', n=0):\n    return [len(pad), n]\n",
    )
    .await;
    let url = env.url(&format!("/api/w/{WS}/jobs/run/p/u/alice/size"));
    // 12 bodies of 6 MiB (more than two statements' byte budgets together) and small ones
    // between them, all at once. (Twice as many made a busy 2-core machine take more than
    // the 5 s a request's lookups may wait for the database.)
    let calls: Vec<_> = (0..24)
        .map(|n| {
            let http = env.http.clone();
            let (url, token) = (url.clone(), env.token.clone());
            let pad = if n % 2 == 0 { 6 * 1024 * 1024 } else { 10 };
            tokio::spawn(async move {
                let body = json!({"pad": "p".repeat(pad), "n": n});
                let res = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (n, pad, res.status().as_u16(), res.text().await.unwrap())
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for call in calls {
        let (n, pad, status, text) = call.await.unwrap();
        // The default body budget (256 MiB) holds them all.
        if status != 201 {
            let logs = env.logs();
            let why: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("database") || l.contains("WARN") || l.contains("ERROR"))
                .take(10)
                .collect();
            panic!("job {n}: {status} {text}\n{}", why.join("\n"));
        }
        accepted.push((n, pad, text));
    }
    for (n, pad, id) in accepted {
        let job = env.wait(&id, Duration::from_secs(120)).await;
        let result: Value = job["result"].clone();
        assert_eq!(result, json!([pad, n]), "job {n}");
    }
}

#[tokio::test]
async fn a_submission_waits_for_its_puback_as_long_as_submit_timeout_allows() {
    let env = TestEnv::with(Options {
        api_env: vec![("SUBMIT_TIMEOUT".into(), "30".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script("u/alice/quick", "bash", "echo ok\n").await;
    let run = format!("/api/w/{WS}/jobs/run/p/u/alice/quick");
    assert_eq!(env.post(&run, &env.token, json!({})).await.status, 201);

    // NATS stops answering for longer than the client's own wait for a PubAck (5 s), well
    // within SUBMIT_TIMEOUT: the call is answered once NATS is back, not refused at 5 s.
    let nats = env.nats.pid() as i32;
    signal_tree(nats, libc::SIGSTOP);
    let sent = Instant::now();
    let call = post_empty_aside(&env, &run);
    tokio::time::sleep(Duration::from_secs(7)).await;
    signal_tree(nats, libc::SIGCONT);
    let (status, id) = call.await.unwrap();
    assert_eq!(status, 201, "{id}");
    assert!(
        sent.elapsed() >= Duration::from_secs(7),
        "answered during the freeze"
    );
    let job = env.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(job["result"], json!("ok"), "{job}");
}

#[tokio::test]
async fn a_body_of_many_small_values_is_refused_before_it_is_parsed() {
    let env = TestEnv::with(Options {
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script("u/alice/sum", "bash", "echo ok\n").await;
    let run = format!("/api/w/{WS}/jobs/run/p/u/alice/sum");
    let before = crate::common::rss_kib(env.api_pid());
    // 14 MiB of `1,`: 7 million values, ~450 MiB once parsed — more than the whole default
    // budget of bodies in memory (256 MiB), so it could never be admitted: 413, not 503.
    let body = format!("[{}1]", "1,".repeat(7 * 1024 * 1024));
    let res = env
        .http
        .post(env.url(&run))
        .bearer_auth(&env.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(res.text().await.unwrap().contains("JSON values"));
    let grown = crate::common::rss_kib(env.api_pid()).saturating_sub(before);
    assert!(
        grown < 100 * 1024,
        "the API grew by {grown} KiB for a refused body"
    );
    // A body as large made of a few long strings is taken.
    let body = json!({"text": "x".repeat(14 * 1024 * 1024)});
    let res = env.post(&run, &env.token, body).await;
    assert_eq!(res.status, 201, "{}", res.text);
}
