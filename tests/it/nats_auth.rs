//! NATS lets in only Millrace's users (nats/auth.conf), each limited to its role's subjects:
//! what a script — or anything else that reaches the NATS port — could try there without the
//! right credentials, or with the wrong role's.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use tokio::sync::mpsc;

use crate::common::{bin, jobs_have_own_users, tool, TestEnv, WS};

/// A client of `user` and the errors the server sends it (a refused publish or subscription
/// is reported on the connection, not to the caller).
async fn client_as(
    env: &TestEnv,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::with_user_and_password(
        user.into(),
        env.nats.password(user).into(),
    )
    .event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _ = tx.send(e.to_string());
            }
        }
    });
    let options = if user == "events" {
        options
    } else {
        options.custom_inbox_prefix(format!("_INBOX_{user}"))
    };
    let client = options.connect(env.nats.url()).await.unwrap();
    (client, rx)
}

/// Waits for the server to refuse `what` (e.g. `Publish to "millrace.jobs.default"`).
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let error = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("the server did not refuse {what}"))
            .unwrap();
        if error.contains("Permissions Violation") && error.contains(what) {
            return;
        }
    }
}

/// Waits for the server to refuse this client a consumer of its own on `stream`.
async fn no_consumer_on(
    js: &jetstream::Context,
    errors: &mut mpsc::UnboundedReceiver<String>,
    stream: &str,
) {
    let config = jetstream::consumer::pull::Config {
        durable_name: Some("reader".into()),
        ..Default::default()
    };
    let created = js.create_consumer_on_stream(config, stream).await;
    assert!(created.is_err(), "made a consumer on {stream}");
    refused(errors, "$JS.API.CONSUMER.").await;
}

/// The jobs stream's last sequence, as its administrator sees it.
async fn jobs_published(env: &TestEnv) -> u64 {
    let js = jetstream::new(env.nats_as("migrate").await);
    let mut stream = js.get_stream("MILLRACE_JOBS").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

fn forged_envelope() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 3, "id": uuid::Uuid::new_v4(), "workspace": WS, "kind": "script",
        "path": "u/alice/x", "hash": "0000000000000000", "language": "bash",
        "created_by": "mallory", "permissioned_as": "superadmin@millrace.local",
        "scopes": null, "tag": "default", "timeout_s": null, "scheduled_for": null
    }))
    .unwrap()
}

#[tokio::test]
async fn nats_refuses_clients_without_credentials() {
    let env = TestEnv::start().await;
    for options in [
        async_nats::ConnectOptions::new(),
        async_nats::ConnectOptions::with_user_and_password("worker".into(), "guess".into()),
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin".into()),
    ] {
        let error = options
            .connect(env.nats.url())
            .await
            .expect_err("NATS let in a client without valid credentials");
        assert!(
            error.to_string().to_lowercase().contains("authorization"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn only_the_api_and_workers_may_publish_jobs() {
    let env = TestEnv::start().await;
    let before = jobs_published(&env).await;
    let (events, mut errors) = client_as(&env, "events").await;
    events
        .publish("millrace.jobs.default", forged_envelope().into())
        .await
        .unwrap();
    events.flush().await.unwrap();
    refused(&mut errors, "Publish to \"millrace.jobs.default\"").await;
    // Not through JetStream's API either: no direct-get or consumer could write a job.
    let mut js = jetstream::new(events.clone());
    js.set_timeout(Duration::from_secs(2));
    assert!(js.get_stream("MILLRACE_JOBS").await.is_err());
    refused(&mut errors, "MILLRACE_JOBS").await;
    assert_eq!(jobs_published(&env).await, before, "a forged job is queued");
}

#[tokio::test]
async fn a_forged_done_does_not_answer_a_waiting_caller() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/slow",
        "bash",
        "sleep 2\necho '\"real\"' > result.json\n",
    )
    .await;
    let id = uuid::Uuid::new_v4();
    let url = format!(
        "{}/api/w/{WS}/jobs/run_wait_result/p/u/alice/slow?job_id={id}",
        env.api_url
    );
    let call = env
        .http
        .post(url)
        .bearer_auth(&env.token)
        .json(&json!({}))
        .send();
    let call = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (events, mut errors) = client_as(&env, "events").await;
    let forged = json!({"id": id, "success": true, "canceled": false, "result": "forged"});
    events
        .publish(
            format!("millrace.job.{id}.done"),
            serde_json::to_vec(&forged).unwrap().into(),
        )
        .await
        .unwrap();
    events.flush().await.unwrap();
    refused(
        &mut errors,
        &format!("Publish to \"millrace.job.{id}.done\""),
    )
    .await;
    // Nor may the events user listen to the job's live subjects (its logs and result).
    let _sub = events
        .subscribe(format!("millrace.job.{id}.*"))
        .await
        .unwrap();
    refused(&mut errors, "Subscription to \"millrace.job.").await;
    let answer = call.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "\"real\"");
}

#[tokio::test]
async fn streams_are_administered_by_the_migrate_user_alone() {
    let env = TestEnv::start().await;
    for user in ["worker", "api", "events"] {
        let (client, mut errors) = client_as(&env, user).await;
        let mut js = jetstream::new(client);
        // A refused request is never answered: do not wait long for it.
        js.set_timeout(Duration::from_secs(2));
        for stream in ["MILLRACE_JOBS", "MILLRACE_EVENTS"] {
            assert!(
                js.delete_stream(stream).await.is_err(),
                "{user} deleted {stream}"
            );
            refused(
                &mut errors,
                &format!("Publish to \"$JS.API.STREAM.DELETE.{stream}\""),
            )
            .await;
        }
        // Nor empty the queue.
        let jobs = js.get_stream_no_info("MILLRACE_JOBS").await.unwrap();
        assert!(jobs.purge().await.is_err(), "{user} purged the jobs stream");
        refused(
            &mut errors,
            "Publish to \"$JS.API.STREAM.PURGE.MILLRACE_JOBS\"",
        )
        .await;
    }
    // Both streams are whole, and the instance still runs jobs.
    let js = jetstream::new(env.nats_as("migrate").await);
    for stream in ["MILLRACE_JOBS", "MILLRACE_EVENTS"] {
        js.get_stream(stream).await.unwrap();
    }
    env.script("u/alice/ok", "bash", "echo '1' > result.json\n")
        .await;
    assert_eq!(env.run_ok("u/alice/ok", json!({})).await, json!(1));
}

#[tokio::test]
async fn the_events_user_reads_events_but_not_jobs() {
    let env = TestEnv::start().await;
    let (events, mut errors) = client_as(&env, "events").await;
    let mut feed = events
        .subscribe(format!("millrace.events.{WS}.job.>"))
        .await
        .unwrap();
    let _jobs = events.subscribe("millrace.jobs.>").await.unwrap();
    refused(&mut errors, "Subscription to \"millrace.jobs.>\"").await;
    // A consumer of its own on the jobs stream would take (and ack) other tenants' jobs.
    let mut js = jetstream::new(events.clone());
    js.set_timeout(Duration::from_secs(2));
    no_consumer_on(&js, &mut errors, "MILLRACE_JOBS").await;
    env.script("u/alice/hi", "bash", "echo '\"hi\"' > result.json\n")
        .await;
    env.run_ok("u/alice/hi", json!({})).await;
    let event = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut feed))
        .await
        .expect("no job event reached the events user")
        .unwrap();
    assert!(event
        .subject
        .starts_with(&format!("millrace.events.{WS}.job.")));
}

#[tokio::test]
async fn the_events_user_cannot_deliver_events_into_a_jobs_subjects() {
    let env = TestEnv::start().await;
    env.script("u/alice/hi", "bash", "echo '\"hi\"' > result.json\n")
        .await;
    env.run_ok("u/alice/hi", json!({})).await;
    let events = env.nats_as("events").await;
    let mut js = jetstream::new(events.clone());
    js.set_timeout(Duration::from_secs(2));
    let watcher = env.nats_as("api").await;
    let id = uuid::Uuid::new_v4();
    // A push consumer's messages are sent by the server, not by its creator: were any deliver
    // subject allowed, stored events (results that scripts shape) would land where sync
    // callers read results. The control: an inbox of the events user's own gets them.
    let inbox = events.new_inbox();
    for (deliver_to, delivers) in [(format!("millrace.job.{id}.done"), false), (inbox, true)] {
        let mut heard = if delivers {
            events.subscribe(deliver_to.clone()).await.unwrap()
        } else {
            watcher
                .subscribe(format!("millrace.job.{id}.*"))
                .await
                .unwrap()
        };
        // The creation itself may be accepted: what matters is that nothing arrives.
        let _ = js
            .create_consumer_on_stream(
                jetstream::consumer::push::Config {
                    deliver_subject: deliver_to.clone(),
                    ..Default::default()
                },
                "MILLRACE_EVENTS",
            )
            .await;
        let got =
            tokio::time::timeout(Duration::from_secs(3), futures::StreamExt::next(&mut heard))
                .await;
        assert_eq!(got.is_ok(), delivers, "delivered to {deliver_to}");
    }
}

/// A worker pulls jobs and reports their ends, so its credentials can do what a worker does
/// (the boundary is that no job ever holds them: `a_job_gets_no_nats_credentials`). They reach
/// no further: no one else's live subjects or events, no cache invalidation, no other stream.
#[tokio::test]
async fn a_workers_credentials_reach_no_further_than_a_worker() {
    let env = TestEnv::start().await;
    let (worker, mut errors) = client_as(&env, "worker").await;
    let id = uuid::Uuid::new_v4();
    for subject in [
        format!("millrace.job.{id}.*"),
        "millrace.job.>".to_string(),
        "millrace.jobs.>".to_string(),
        "millrace.events.>".to_string(),
        "_INBOX_api.>".to_string(),
    ] {
        let _sub = worker.subscribe(subject.clone()).await.unwrap();
        refused(&mut errors, &format!("Subscription to \"{subject}\"")).await;
    }
    worker
        .publish("millrace.control.invalidate", "{}".into())
        .await
        .unwrap();
    worker.flush().await.unwrap();
    refused(&mut errors, "Publish to \"millrace.control.invalidate\"").await;
    let mut js = jetstream::new(worker);
    js.set_timeout(Duration::from_secs(2));
    assert!(js.get_stream("MILLRACE_EVENTS").await.is_err());
    refused(&mut errors, "MILLRACE_EVENTS").await;
    no_consumer_on(&js, &mut errors, "MILLRACE_EVENTS").await;
}

#[tokio::test]
async fn a_job_gets_no_nats_credentials() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::start().await;
    // The harness gives the worker its password as a 0400 file, as the chart does; the job
    // runs as a user of its own, in a clean environment.
    let file = env.nats_password_file("worker");
    env.scratch();
    env.script(
        "u/alice/creds",
        "bash",
        "path=\"$1\"\ncat \"$path\" 2>&1 | head -c 300\necho\nenv | grep NATS_ || echo 'no NATS variable'\n",
    )
    .await;
    let id = env.run("u/alice/creds", json!({"path": file})).await;
    env.wait(&id, Duration::from_secs(60)).await;
    let logs = env.job_logs(&id).await;
    assert!(logs.contains("Permission denied"), "{logs}");
    assert!(logs.contains("no NATS variable"), "{logs}");
    assert!(!logs.contains(env.nats.password("worker")), "{logs}");
}

/// A nats-server of its own with JetStream and `auth` as its authorization settings, for the
/// logins nats/auth.conf does not use: nkeys, and credentials files (operator mode).
struct OtherNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OtherNats {
    async fn start(auth: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = millrace::local::free_port().unwrap();
        let conf = dir.path().join("server.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{auth}\n",
                store.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(tool("NATS_SERVER_BIN", "nats-server"))
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .unwrap();
        assert!(
            millrace::local::wait_until_listening(child.id(), port, Duration::from_secs(10)).await,
            "nats-server did not start: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OtherNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `millrace migrate` against `url`, logged in with `login` instead of the harness's user.
fn migrate_with(env: &TestEnv, url: &str, login: (&str, &str)) -> std::process::Output {
    let harness = env.command("migrate", &[]);
    let mut command = std::process::Command::new(bin());
    command.arg("migrate").env_clear();
    for (key, value) in harness.get_envs() {
        let nats = key.to_str().is_some_and(|k| k.starts_with("NATS_"));
        if let (false, Some(value)) = (nats, value) {
            command.env(key, value);
        }
    }
    command
        .env("NATS_URL", url)
        .env(login.0, login.1)
        .output()
        .unwrap()
}

/// The streams `millrace migrate` declared, as `client` sees them.
async fn assert_streams_declared(client: async_nats::Client) {
    let js = jetstream::new(client);
    for stream in ["MILLRACE_JOBS", "MILLRACE_EVENTS"] {
        js.get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("{stream}: {e}"));
    }
}

#[tokio::test]
async fn millrace_logs_in_to_an_external_nats_with_an_nkey() {
    let env = TestEnv::start().await;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let nats = OtherNats::start(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}",
        user.public_key()
    ))
    .await;
    let out = migrate_with(&env, &nats.url(), ("NATS_NKEY", &seed));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(&seed), "the seed was logged: {printed}");
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .connect(nats.url())
        .await
        .unwrap();
    assert_streams_declared(client).await;
}

/// A JWT as NATS's own tools make them: `claims` signed by `issuer`, about `subject`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::engine::{general_purpose::URL_SAFE_NO_PAD, Engine};
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": "millrace-test",
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = issuer
        .sign(format!("{header}.{claims}").as_bytes())
        .unwrap();
    format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn millrace_logs_in_to_an_external_nats_with_a_credentials_file() {
    let env = TestEnv::start().await;
    // An operator, an account with JetStream and a user of it: NATS's decentralized auth.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        json!({"type": "user", "version": 2, "pub": {}, "sub": {},
               "subs": -1, "data": -1, "payload": -1}),
    );
    // JetStream needs the server's own account too.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        json!({"type": "account", "version": 2}),
    );
    let nats = OtherNats::start(&format!(
        "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n\
         resolver_preload: {{ {system}: {system_jwt}, {account}: {account_jwt} }}",
        system = system.public_key(),
        account = account.public_key(),
    ))
    .await;
    let seed = user.seed().unwrap();
    let creds = env.dir.path().join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let out = migrate_with(&env, &nats.url(), ("NATS_CREDS", creds.to_str().unwrap()));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(&seed), "the seed was logged: {printed}");
    let client = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap()
        .connect(nats.url())
        .await
        .unwrap();
    assert_streams_declared(client).await;
}
