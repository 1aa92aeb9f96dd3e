//! Who may trigger what (SPEC §4): roles, folders, groups, scoped and webhook-specific tokens,
//! workspace-bound tokens, expiry and revocation, login cookies, brute-force limits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{LocalSmtp, Options, Response, TestEnv, SUPERADMIN, WS};

const ECHO: &str = "def main(x: int = 0):\n    return x\n";

/// The callers of the matrix, each with the user whose `u/<user>/own` script is "theirs".
const ROWS: [(&str, &str); 9] = [
    ("superadmin", "root"),
    ("admin", "alice"),
    ("developer", "bob"),
    ("operator", "carol"),
    ("outsider", "dave"),
    ("webhook", "bob"),
    ("expired", "bob"),
    ("revoked", "bob"),
    ("other_workspace", "bob"),
];

const COLUMNS: [&str; 7] = [
    "run own",
    "run shared",
    "run unshared",
    "create script",
    "read other's job",
    "list jobs",
    "create token",
];

/// Expected statuses, in the order of `COLUMNS`.
fn expected(row: &str) -> [u16; 7] {
    match row {
        "superadmin" | "admin" => [201, 201, 201, 201, 200, 200, 201],
        "developer" => [201, 201, 404, 201, 404, 200, 201],
        "operator" => [201, 201, 404, 403, 404, 200, 201],
        // Not a member of the workspace: nothing in it, but their own account works.
        "outsider" => [401, 401, 401, 401, 401, 401, 201],
        // One run scope: its script, and 403 for everything else.
        "webhook" => [201, 403, 403, 403, 403, 403, 403],
        "expired" | "revoked" => [401; 7],
        // Bound to workspace `other`; what it mints stays bound there.
        "other_workspace" => [403, 403, 403, 403, 403, 403, 201],
        other => panic!("no row {other}"),
    }
}

async fn superadmin_user(env: &TestEnv, email: &str) -> String {
    env.post(
        "/api/users/create",
        SUPERADMIN,
        json!({"email": email, "super_admin": true}),
    )
    .await
    .expect(201);
    impersonate(env, email).await
}

async fn impersonate(env: &TestEnv, email: &str) -> String {
    env.post(
        "/api/users/tokens/impersonate",
        SUPERADMIN,
        json!({"impersonate_email": email}),
    )
    .await
    .expect(201)
    .text
}

async fn new_token(env: &TestEnv, owner: &str, body: Value) -> String {
    env.post("/api/users/tokens/create", owner, body)
        .await
        .expect(201)
        .text
}

/// The prefix `tokens/list` shows for the token with this label.
async fn prefix_of(env: &TestEnv, owner: &str, label: &str) -> String {
    let list = env
        .get("/api/users/tokens/list", owner)
        .await
        .expect(200)
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == json!(label))
        .unwrap_or_else(|| panic!("no token labelled {label}: {list}"))["token_prefix"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn revoke(env: &TestEnv, owner: &str, label: &str) {
    let prefix = prefix_of(env, owner, label).await;
    env.request(
        reqwest::Method::DELETE,
        &format!("/api/users/tokens/delete/{prefix}"),
        Some(owner),
        None,
    )
    .await
    .expect(200);
}

async fn login(env: &TestEnv, email: &str, password: &str) -> Response {
    env.request(
        reqwest::Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

fn ids(list: &Response) -> Vec<String> {
    list.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_role_gets_exactly_its_rights() {
    let env = TestEnv::with(Options {
        workers: 1,
        // The matrix presents dead tokens on purpose.
        api_env: vec![("AUTH_FAILURES_PER_MINUTE".into(), "1000".into())],
        ..Default::default()
    })
    .await;
    let alice = env.token.clone();
    let root = superadmin_user(&env, "root@example.com").await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    let carol = env
        .user_token("carol@example.com", "carol", false, true)
        .await;
    let erin = env
        .user_token("erin@example.com", "erin", false, false)
        .await;
    env.post(
        "/api/users/create",
        SUPERADMIN,
        json!({"email": "dave@example.com"}),
    )
    .await
    .expect(201);
    let dave = impersonate(&env, "dave@example.com").await;

    // An admin may write anywhere: everyone's own script, a folder shared with all members,
    // and erin's private script.
    for user in ["root", "alice", "bob", "carol", "dave"] {
        env.script(&format!("u/{user}/own"), "python3", ECHO).await;
    }
    env.post(
        &format!("/api/w/{WS}/folders/create"),
        &alice,
        json!({"name": "team", "extra_perms": {"g/all": false}}),
    )
    .await
    .expect(201);
    env.script("f/team/shared", "python3", ECHO).await;
    env.script("u/erin/private", "python3", ECHO).await;
    let erin_job = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/erin/private"),
            &erin,
            json!({"x": 7}),
        )
        .await
        .expect(201)
        .text;
    env.wait(&erin_job, Duration::from_secs(30)).await;

    let webhook = new_token(
        &env,
        &bob,
        json!({"label": "stripe", "scopes": ["jobs:run:scripts:u/bob/own"]}),
    )
    .await;
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let expired = new_token(&env, &bob, json!({"expiration": expires_at.to_rfc3339()})).await;
    let revoked = new_token(&env, &bob, json!({"label": "old"})).await;
    env.post(
        "/api/workspaces/create",
        SUPERADMIN,
        json!({"id": "other", "name": "Other"}),
    )
    .await
    .expect(201);
    env.post(
        "/api/w/other/workspaces/add_user",
        SUPERADMIN,
        json!({"email": "bob@example.com", "username": "bob"}),
    )
    .await
    .expect(201);
    let other_ws = new_token(&env, &bob, json!({"workspace_id": "other"})).await;

    // The dead tokens worked while alive.
    for token in [&expired, &revoked] {
        env.get(&format!("/api/w/{WS}/users/whoami"), token)
            .await
            .expect(200);
    }
    revoke(&env, &bob, "old").await;
    let left = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(200)).await;

    let tokens: BTreeMap<&str, &str> = [
        ("superadmin", root.as_str()),
        ("admin", &alice),
        ("developer", &bob),
        ("operator", &carol),
        ("outsider", &dave),
        ("webhook", &webhook),
        ("expired", &expired),
        ("revoked", &revoked),
        ("other_workspace", &other_ws),
    ]
    .into_iter()
    .collect();

    let mut mismatches = Vec::new();
    let mut minted = BTreeMap::new();
    for (row, user) in ROWS {
        let token = tokens[row];
        let env = &env;
        let run = |path: String| async move {
            env.post(
                &format!("/api/w/{WS}/jobs/run/p/{path}"),
                token,
                json!({"x": 1}),
            )
            .await
        };
        let new_script = json!({"path": format!("u/{user}/new_{row}"), "language": "bash",
                                "content": "echo new"});
        let list = env.get(&format!("/api/w/{WS}/jobs/list"), token).await;
        if list.status == 200 {
            let seen = ids(&list);
            let sees_erins = seen.contains(&erin_job);
            let should = matches!(row, "superadmin" | "admin");
            if sees_erins != should {
                mismatches.push(format!("{row}: jobs/list shows erin's job: {sees_erins}"));
            }
        }
        let minted_token = env
            .post(
                "/api/users/tokens/create",
                token,
                json!({"label": format!("minted by {row}")}),
            )
            .await;
        let got = [
            run(format!("u/{user}/own")).await.status,
            run("f/team/shared".into()).await.status,
            run("u/erin/private".into()).await.status,
            env.post(&format!("/api/w/{WS}/scripts/create"), token, new_script)
                .await
                .status,
            env.get(&format!("/api/w/{WS}/jobs_u/get/{erin_job}"), token)
                .await
                .status,
            list.status,
            minted_token.status,
        ];
        if minted_token.status == 201 {
            minted.insert(row, minted_token.text);
        }
        for ((column, want), got) in COLUMNS.iter().zip(expected(row)).zip(got) {
            if want != got {
                mismatches.push(format!("{row} × {column}: expected {want}, got {got}"));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "the permission matrix differs:\n{}",
        mismatches.join("\n")
    );

    // A token minted by a workspace-bound token is bound to the same workspace.
    let minted_other = &minted["other_workspace"];
    env.get("/api/w/other/users/whoami", minted_other)
        .await
        .expect(200);
    env.get(&format!("/api/w/{WS}/users/whoami"), minted_other)
        .await
        .expect(403);

    // No token, in any form, reached the logs.
    let logs = env.logs();
    for token in tokens
        .values()
        .copied()
        .chain(minted.values().map(String::as_str))
    {
        assert!(!logs.contains(token), "a token reached the logs");
    }
}

#[tokio::test]
async fn a_webhook_token_triggers_its_one_script_everywhere_and_polls_its_jobs() {
    let env = TestEnv::start().await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    env.script("u/bob/hook", "python3", ECHO).await;
    env.script("u/bob/other", "python3", ECHO).await;
    // Uses the job's own WM_TOKEN to start another script and reports the status it got.
    env.script(
        "u/bob/chain",
        "python3",
        r#"import os, urllib.request, urllib.error

def main():
    url = os.environ["BASE_INTERNAL_URL"] + "/api/w/" + os.environ["WM_WORKSPACE"] + "/jobs/run/p/u/bob/other"
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={
        "Authorization": "Bearer " + os.environ["WM_TOKEN"], "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code
"#,
    )
    .await;
    let hook = new_token(
        &env,
        &bob,
        json!({"label": "slack", "scopes": ["jobs:run:scripts:u/bob/hook"]}),
    )
    .await;

    // Async, then polling the job it started.
    let id = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/bob/hook"),
            &hook,
            json!({"x": 3}),
        )
        .await
        .expect(201)
        .text;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = env
            .get(
                &format!("/api/w/{WS}/jobs_u/completed/get_result_maybe/{id}"),
                &hook,
            )
            .await
            .expect(200)
            .json();
        if res["completed"] == json!(true) {
            assert_eq!(res["result"], json!(3));
            break;
        }
        assert!(Instant::now() < deadline, "the job did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.get(&format!("/api/w/{WS}/jobs_u/get/{id}"), &hook)
        .await
        .expect(200);

    // It may not send its script to another worker group; naming the script's own tag is fine,
    // and bob himself may route it anywhere.
    let routed = |token: String, tag: &'static str| {
        let env = &env;
        async move {
            env.post(
                &format!("/api/w/{WS}/jobs/run/p/u/bob/hook?tag={tag}"),
                &token,
                json!({"x": 1}),
            )
            .await
        }
    };
    // A tag is only accepted once it has a worker consumer.
    let declared = env
        .command(
            "migrate",
            &[("WORKER_TAGS".to_owned(), "default,privileged".to_owned())],
        )
        .status()
        .unwrap();
    assert!(declared.success());
    let res = routed(hook.clone(), "privileged").await.expect(403);
    assert!(res.text.contains("worker tag"), "{}", res.text);
    routed(hook.clone(), "default").await.expect(201);
    routed(bob.clone(), "privileged").await.expect(201);

    // Sync, by POST and by GET with a payload, and SSE.
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/bob/hook"),
            &hook,
            json!({"x": 4}),
        )
        .await
        .expect(200);
    assert_eq!(res.json(), json!(4));
    let payload = base64_json(&json!({"x": 5}));
    let res = env
        .get(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/bob/hook?payload={payload}"),
            &hook,
        )
        .await
        .expect(200);
    assert_eq!(res.json(), json!(5));
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run_and_stream/p/u/bob/hook"),
            &hook,
            json!({"x": 6}),
        )
        .await
        .expect(200);
    assert!(
        res.text.contains("\"only_result\":6") || res.text.contains("\"only_result\": 6"),
        "{}",
        res.text
    );

    // Everything else: 403.
    let bobs_job = env.run("u/bob/other", json!({})).await;
    env.wait(&bobs_job, Duration::from_secs(30)).await;
    for res in [
        env.post(
            &format!("/api/w/{WS}/jobs/run/p/u/bob/other"),
            &hook,
            json!({}),
        )
        .await,
        env.post(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/bob/other"),
            &hook,
            json!({}),
        )
        .await,
        env.get(&format!("/api/w/{WS}/jobs_u/get/{bobs_job}"), &hook)
            .await,
        env.get(&format!("/api/w/{WS}/jobs/list"), &hook).await,
        env.get(&format!("/api/w/{WS}/scripts/get/p/u/bob/hook"), &hook)
            .await,
        env.get(&format!("/api/w/{WS}/scripts/list"), &hook).await,
        env.get("/api/users/tokens/list", &hook).await,
        env.post("/api/users/tokens/create", &hook, json!({})).await,
    ] {
        assert_eq!(res.status, 403, "{}", res.text);
    }

    // A job started with a scoped token gets a WM_TOKEN confined the same way; bob's own
    // token gives the job bob's rights.
    let chain = new_token(
        &env,
        &bob,
        json!({"scopes": ["jobs:run:scripts:u/bob/chain"]}),
    )
    .await;
    let confined = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/bob/chain"),
            &chain,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(confined.json(), json!(403));
    let full = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/p/u/bob/chain"),
            &bob,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(full.json(), json!(201));
}

fn base64_json(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn revocation_reaches_another_api_replica_within_a_second() {
    let mut env = TestEnv::start().await;
    let second = env.add_api().await;
    env.script("u/alice/ok", "bash", "echo ok").await;
    let token = new_token(&env, &env.token, json!({"label": "ci"})).await;
    let whoami = format!("{second}/api/w/{WS}/users/whoami");
    let status = |url: String, token: String| {
        let http = env.http.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The second replica has the token cached.
    assert_eq!(status(whoami.clone(), token.clone()).await, 200);

    let list = env
        .get("/api/users/tokens/list", &env.token)
        .await
        .expect(200);
    assert!(
        !list.text.contains(&token),
        "tokens/list showed a token: {}",
        list.text
    );
    revoke(&env, &env.token, "ci").await;
    let revoked_at = Instant::now();
    loop {
        if status(whoami.clone(), token.clone()).await == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the second replica still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    // Another user's token cannot be deleted, nor an unknown prefix.
    let keep = new_token(&env, &env.token, json!({"label": "keep"})).await;
    let keep_prefix = prefix_of(&env, &env.token, "keep").await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    for prefix in [keep_prefix.as_str(), "nosuchprefix"] {
        env.request(
            reqwest::Method::DELETE,
            &format!("/api/users/tokens/delete/{prefix}"),
            Some(&bob),
            None,
        )
        .await
        .expect(404);
    }
    assert_eq!(status(whoami, keep).await, 200);
}

#[tokio::test]
async fn sharing_changes_reach_another_api_replica_within_a_second() {
    let mut env = TestEnv::start().await;
    let second = env.add_api().await;
    let erin = env
        .user_token("erin@example.com", "erin", false, false)
        .await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    env.post(
        &format!("/api/w/{WS}/scripts/create"),
        &erin,
        json!({"path": "u/erin/report", "language": "bash", "content": "echo ok"}),
    )
    .await
    .expect(201);
    let run_on_second = || {
        let http = env.http.clone();
        let url = format!("{second}/api/w/{WS}/jobs/run/p/u/erin/report");
        let bob = bob.clone();
        async move {
            let response = http.post(url).bearer_auth(bob).json(&json!({})).send();
            response.await.unwrap().status().as_u16()
        }
    };
    let eventually = |expected: u16, what: &'static str| {
        let run = run_on_second;
        async move {
            let changed = Instant::now();
            while run().await != expected {
                assert!(
                    changed.elapsed() < Duration::from_secs(1),
                    "the second replica {what} after a second"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The second replica now holds "not shared with bob" in its cache (kept 5 s).
    assert_eq!(run_on_second().await, 404);
    let share = |action: &str| format!("/api/w/{WS}/acls/{action}/script/u/erin/report");
    let bob_grant = json!({"owner": "u/bob"});
    env.post(&share("add"), &erin, bob_grant.clone())
        .await
        .expect(200);
    eventually(201, "still refuses a script shared with the caller").await;
    env.post(&share("remove"), &erin, bob_grant)
        .await
        .expect(200);
    eventually(404, "still runs a script no longer shared with the caller").await;
}

#[tokio::test]
async fn tokens_list_shows_metadata_and_last_use_without_the_token() {
    let env = TestEnv::with(Options {
        workers: 0,
        api_env: vec![("TOKEN_SWEEP_INTERVAL".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let expiration = chrono::Utc::now() + chrono::Duration::days(20);
    let token = new_token(
        &env,
        &env.token,
        json!({"label": "stripe", "expiration": expiration.to_rfc3339(),
               "scopes": ["jobs:run:scripts:u/alice/*"], "workspace_id": WS}),
    )
    .await;
    let find = || async {
        let list = env
            .get("/api/users/tokens/list", &env.token)
            .await
            .expect(200);
        assert!(!list.text.contains(&token));
        list.json()
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == json!("stripe"))
            .cloned()
            .unwrap()
    };
    let listed = find().await;
    assert_eq!(listed["scopes"], json!(["jobs:run:scripts:u/alice/*"]));
    assert_eq!(listed["workspace_id"], json!(WS));
    assert!(token.starts_with(listed["token_prefix"].as_str().unwrap()));
    let shown =
        chrono::DateTime::parse_from_rfc3339(listed["expiration"].as_str().unwrap()).unwrap();
    assert!((shown.timestamp() - expiration.timestamp()).abs() <= 1);
    assert_eq!(listed["last_used_at"], Value::Null);

    // Uses are recorded by the sweeper, not per request.
    env.get(&format!("/api/w/{WS}/users/whoami"), &token)
        .await
        .expect(200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while find().await["last_used_at"].is_null() {
        assert!(Instant::now() < deadline, "last_used_at never recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `millrace.events.<ws>.token.>` from the events stream.
async fn token_events(env: &TestEnv) -> Vec<(String, Option<String>, Value)> {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt;
    let js = jetstream::new(env.nats_as("events").await);
    let stream = js.get_stream("MILLRACE_EVENTS").await.unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: format!("millrace.events.{WS}.token.>"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(msg)) = batch.next().await {
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string());
        out.push((
            msg.subject.to_string(),
            id,
            serde_json::from_slice(&msg.payload).unwrap(),
        ));
    }
    out
}

#[tokio::test]
async fn expiring_and_expired_tokens_are_announced_and_mailed_once() {
    let mail_dir = tempfile::tempdir().unwrap();
    let smtp = LocalSmtp::start(mail_dir.path()).await;
    let mut api_env = smtp.env();
    api_env.push(("TOKEN_SWEEP_INTERVAL".into(), "1".into()));
    let env = TestEnv::with(Options {
        workers: 0,
        api_env,
        ..Default::default()
    })
    .await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    let expiration = chrono::Utc::now() + chrono::Duration::seconds(3);
    let short = new_token(
        &env,
        &bob,
        json!({"label": "short", "expiration": expiration.to_rfc3339()}),
    )
    .await;
    let prefix = prefix_of(&env, &bob, "short").await;
    // A login session expiring at the same instant is neither announced nor mailed.
    let session = login(&env, "bob@example.com", "pw").await.expect(200).text;
    let changed = env
        .sql()
        .await
        .execute(
            "UPDATE tokens SET expiration = $1 WHERE session",
            &[&expiration],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    // A token far from its expiration is not announced.
    new_token(
        &env,
        &bob,
        json!({"label": "long", "expiration": (chrono::Utc::now() + chrono::Duration::days(60)).to_rfc3339()}),
    )
    .await;

    // Expiring within seven days: announced at the next sweep.
    let deadline = Instant::now() + Duration::from_secs(10);
    while token_events(&env).await.is_empty() {
        assert!(Instant::now() < deadline, "no token.expiring event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.get("/api/users/whoami", &short).await.expect(200);
    // Purged after its instant, and refused from then on.
    let deadline = Instant::now() + Duration::from_secs(15);
    while token_events(&env).await.len() < 2 {
        assert!(Instant::now() < deadline, "no token.expired event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.get("/api/users/whoami", &short).await.expect(401);
    env.get("/api/users/whoami", &session).await.expect(401);
    // Three more sweeps: nothing is sent twice.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let events = token_events(&env).await;
    let subjects: Vec<&str> = events.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            format!("millrace.events.{WS}.token.expiring"),
            format!("millrace.events.{WS}.token.expired")
        ],
        "{events:?}"
    );
    for ((_, msg_id, body), kind) in events.iter().zip(["expiring", "expired"]) {
        assert_eq!(body["kind"], json!(kind), "{body}");
        assert_eq!(body["workspace"], json!(WS));
        assert_eq!(body["token_prefix"], json!(prefix));
        assert_eq!(body["label"], json!("short"));
        assert_eq!(body["owner"], json!("bob@example.com"));
        assert!(
            msg_id.as_deref().is_some_and(|id| id.contains(kind)),
            "{msg_id:?}"
        );
        assert!(
            !body.to_string().contains(&short),
            "an event holds the token"
        );
    }

    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(
        mails.iter().all(|m| m.contains("To: bob@example.com")),
        "{mails:#?}"
    );
    assert!(mails[0].contains("expires soon"), "{}", mails[0]);
    assert!(mails[1].contains("has expired"), "{}", mails[1]);
    assert!(mails.iter().all(|m| !m.contains(&short)));
    assert!(!env.logs().contains(&short), "a token reached the logs");
}

#[tokio::test]
async fn login_sets_an_http_only_cookie_that_cross_site_get_runs_refuse() {
    let env = TestEnv::with(Options {
        workers: 1,
        api_env: vec![("AUTH_FAILURES_PER_MINUTE".into(), "1000".into())],
        ..Default::default()
    })
    .await;
    env.user_token("bob@example.com", "bob", false, false).await;
    env.script("u/bob/hook", "python3", ECHO).await;

    let wrong = login(&env, "bob@example.com", "nope").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    // Pasted with stray spaces: trimmed as at user creation.
    let login = login(&env, " bob@example.com ", "pw").await.expect(200);
    let token = login.text.clone();
    let cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with(&format!("token={token};")), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let me = env
        .get("/api/users/whoami", &token)
        .await
        .expect(200)
        .json();
    assert_eq!(me["email"], json!("bob@example.com"));

    let url = env.url(&format!(
        "/api/w/{WS}/jobs/run_wait_result/p/u/bob/hook?payload={}",
        base64_json(&json!({"x": 2}))
    ));
    let get = |headers: Vec<(&'static str, String)>| {
        let mut req = env.http.get(&url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let with_cookie = ("cookie", format!("token={token}"));
    // Same site, or no site information at all: the cookie works.
    assert_eq!(get(vec![with_cookie.clone()]).await, (200, "2".into()));
    assert_eq!(
        get(vec![
            with_cookie.clone(),
            ("sec-fetch-site", "same-origin".into())
        ])
        .await
        .0,
        200
    );
    // Cross-site with only the cookie: refused before anything runs.
    for cross in [
        ("sec-fetch-site", "cross-site".to_owned()),
        ("origin", "https://evil.example".to_owned()),
        ("referer", "https://evil.example/page".to_owned()),
    ] {
        let (status, text) = get(vec![with_cookie.clone(), cross.clone()]).await;
        assert_eq!(status, 403, "{cross:?}: {text}");
    }
    // A bearer token is not sent by browsers on their own: no guard.
    let (status, _) = get(vec![
        ("authorization", format!("Bearer {token}")),
        ("sec-fetch-site", "cross-site".into()),
    ])
    .await;
    assert_eq!(status, 200);

    // Bearer first, then the cookie, then ?token=.
    let bad = "not-a-real-token-0123456789012345";
    let (status, _) = get(vec![
        ("authorization", format!("Bearer {bad}")),
        with_cookie.clone(),
    ])
    .await;
    assert_eq!(status, 401, "the bearer token comes first");
    let res = env
        .http
        .get(env.url(&format!("/api/users/whoami?token={bad}")))
        .header("cookie", format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the cookie comes before ?token=");
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_per_address() {
    // Behind one proxy (an ingress): the client is the last X-Forwarded-For entry.
    let env = TestEnv::with(Options {
        workers: 0,
        api_env: vec![
            ("AUTH_FAILURES_PER_MINUTE".into(), "3".into()),
            ("TRUSTED_PROXY_HOPS".into(), "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let bad = "not-a-real-token-0123456789012345";
    let call = |token: &str, from: &str| {
        env.http
            .get(env.url("/api/users/whoami"))
            .bearer_auth(token)
            .header("x-forwarded-for", from)
            .send()
    };
    let login = |password: &str, from: &str| {
        env.http
            .post(env.url("/api/auth/login"))
            .header("x-forwarded-for", from)
            .json(&json!({"email": "alice@example.com", "password": password}))
            .send()
    };
    let attacker = "203.0.113.7";
    for _ in 0..3 {
        assert_eq!(call(bad, attacker).await.unwrap().status(), 401);
    }
    // Invalid tokens from that address get 429 until the minute is over — also when it forges
    // an earlier X-Forwarded-For entry.
    for from in [attacker.to_owned(), format!("198.51.100.1, {attacker}")] {
        let res = call(bad, &from).await.unwrap();
        assert_eq!(res.status(), 429, "{from}");
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
    }
    // A valid token is always served, even from that address (one broken client behind a
    // shared address locks out nobody), and so are other clients.
    assert_eq!(call(&env.token, attacker).await.unwrap().status(), 200);
    assert_eq!(
        call(&env.token, "198.51.100.1").await.unwrap().status(),
        200
    );

    // Logins: per account and address.
    for _ in 0..3 {
        assert_eq!(login("wrong", attacker).await.unwrap().status(), 401);
    }
    assert_eq!(
        login("pw", attacker).await.unwrap().status(),
        429,
        "alice from there is locked"
    );
    assert_eq!(
        login("pw", "198.51.100.1").await.unwrap().status(),
        200,
        "alice elsewhere is not"
    );
    env.user_token("bob@example.com", "bob", false, false).await;
    let bob = env
        .http
        .post(env.url("/api/auth/login"))
        .header("x-forwarded-for", attacker)
        .json(&json!({"email": "bob@example.com", "password": "pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bob.status(),
        200,
        "another account from the same address is not"
    );
    // Guessing across accounts from one address: five times the limit in all, then 429 for
    // every account from there, and still none elsewhere.
    let spray = |email: String| {
        env.http
            .post(env.url("/api/auth/login"))
            .header("x-forwarded-for", "192.0.2.9")
            .json(&json!({"email": email, "password": "guess"}))
            .send()
    };
    for i in 0..15 {
        let res = spray(format!("user{i}@example.com")).await.unwrap();
        assert_eq!(res.status(), 401, "attempt {i}");
    }
    let res = spray("someone-else@example.com".into()).await.unwrap();
    assert_eq!(
        res.status(),
        429,
        "the address is limited over all accounts"
    );
    assert_eq!(login("pw", "198.51.100.1").await.unwrap().status(), 200);
}

#[tokio::test]
async fn folders_groups_and_sharing_decide_who_reads_and_writes() {
    let env = TestEnv::start().await;
    let alice = env.token.clone();
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    let carol = env
        .user_token("carol@example.com", "carol", false, true)
        .await;
    let erin = env
        .user_token("erin@example.com", "erin", false, false)
        .await;
    let ws = |rest: &str| format!("/api/w/{WS}/{rest}");
    let create =
        |path: &str| json!({"path": path, "language": "python3", "content": ECHO, "summary": path});

    // A user writes under u/<me>/ only.
    env.post(&ws("scripts/create"), &erin, create("u/erin/report"))
        .await
        .expect(201);
    env.post(&ws("scripts/create"), &erin, create("u/bob/planted"))
        .await
        .expect(403);
    env.get(&ws("scripts/get/p/u/erin/report"), &bob)
        .await
        .expect(404);

    // Groups: only admins make them; sharing with a group lets its members read and run.
    env.post(&ws("groups/create"), &bob, json!({"name": "ops"}))
        .await
        .expect(403);
    env.post(&ws("groups/create"), &alice, json!({"name": "ops"}))
        .await
        .expect(201);
    env.post(
        &ws("groups/adduser/ops"),
        &alice,
        json!({"username": "carol"}),
    )
    .await
    .expect(200);
    let groups = env.get(&ws("groups/list"), &carol).await.expect(200);
    assert!(groups.text.contains("ops"), "{}", groups.text);
    // Only a writer of the item shares it.
    env.post(
        &ws("acls/add/script/u/erin/report"),
        &bob,
        json!({"owner": "g/ops"}),
    )
    .await
    .expect(404);
    env.post(
        &ws("acls/add/script/u/erin/report"),
        &erin,
        json!({"owner": "g/ops"}),
    )
    .await
    .expect(200);
    env.post(&ws("jobs/run/p/u/erin/report"), &carol, json!({}))
        .await
        .expect(201);
    env.get(&ws("scripts/get/p/u/erin/report"), &carol)
        .await
        .expect(200);
    env.post(&ws("jobs/run/p/u/erin/report"), &bob, json!({}))
        .await
        .expect(404);
    let listed = env.get(&ws("scripts/list"), &carol).await.expect(200);
    assert!(listed.text.contains("u/erin/report"), "{}", listed.text);
    let listed = env.get(&ws("scripts/list"), &bob).await.expect(200);
    assert!(!listed.text.contains("u/erin/report"), "{}", listed.text);
    // Read-only sharing does not let the reader change it; write sharing does (operators
    // never write).
    let mut update = create("u/erin/report");
    update["parent_hash"] = env
        .get(&ws("scripts/get/p/u/erin/report"), &erin)
        .await
        .json()["hash"]
        .clone();
    env.post(&ws("scripts/create"), &carol, update.clone())
        .await
        .expect(403);
    env.post(
        &ws("acls/add/script/u/erin/report"),
        &erin,
        json!({"owner": "u/bob", "write": true}),
    )
    .await
    .expect(200);
    env.post(&ws("scripts/create"), &bob, update)
        .await
        .expect(201);
    // Unsharing takes effect at once.
    env.post(
        &ws("acls/remove/script/u/erin/report"),
        &erin,
        json!({"owner": "g/ops"}),
    )
    .await
    .expect(200);
    env.post(&ws("jobs/run/p/u/erin/report"), &carol, json!({}))
        .await
        .expect(404);

    // Folders: owners write, extra_perms readers read, operators never create.
    env.post(&ws("folders/create"), &carol, json!({"name": "cfold"}))
        .await
        .expect(403);
    env.post(
        &ws("folders/create"),
        &bob,
        json!({"name": "billing", "extra_perms": {"u/erin": false, "g/ops": true}}),
    )
    .await
    .expect(201);
    env.post(&ws("scripts/create"), &bob, create("f/billing/charge"))
        .await
        .expect(201);
    env.post(&ws("scripts/create"), &erin, create("f/billing/erins"))
        .await
        .expect(403);
    env.post(&ws("scripts/create"), &carol, create("f/billing/carols"))
        .await
        .expect(403);
    env.post(&ws("jobs/run/p/f/billing/charge"), &erin, json!({}))
        .await
        .expect(201);
    env.post(&ws("jobs/run/p/f/billing/charge"), &carol, json!({}))
        .await
        .expect(201);
    let folders = env.get(&ws("folders/list"), &erin).await.expect(200);
    assert!(folders.text.contains("billing"), "{}", folders.text);
    // A folder that does not exist cannot be written to by a non-admin.
    env.post(&ws("scripts/create"), &bob, create("f/nowhere/x"))
        .await
        .expect(403);
}

#[tokio::test]
async fn scopes_allow_exactly_what_they_name() {
    let env = TestEnv::start().await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    for path in ["u/bob/a", "u/bob/hooks/b", "u/bob/c"] {
        env.post(
            &format!("/api/w/{WS}/scripts/create"),
            &bob,
            json!({"path": path, "language": "python3", "content": ECHO}),
        )
        .await
        .expect(201);
    }
    let scoped = |scopes: Value| {
        let env = &env;
        let bob = bob.clone();
        async move { new_token(env, &bob, json!({ "scopes": scopes })).await }
    };
    let run = |token: String, path: &'static str| {
        let env = &env;
        async move {
            env.post(&format!("/api/w/{WS}/jobs/run/p/{path}"), &token, json!({}))
                .await
                .status
        }
    };

    let wildcard = scoped(json!(["jobs:run:scripts:u/bob/hooks/*"])).await;
    assert_eq!(run(wildcard.clone(), "u/bob/hooks/b").await, 201);
    assert_eq!(run(wildcard.clone(), "u/bob/a").await, 403);
    let legacy = scoped(json!(["run:script/u/bob/a"])).await;
    assert_eq!(run(legacy.clone(), "u/bob/a").await, 201);
    assert_eq!(run(legacy, "u/bob/c").await, 403);
    let any_run = scoped(json!(["jobs:run"])).await;
    assert_eq!(run(any_run.clone(), "u/bob/c").await, 201);
    env.get(&format!("/api/w/{WS}/jobs/list"), &any_run)
        .await
        .expect(403);

    let reader = scoped(json!(["scripts:read", "jobs:read"])).await;
    assert_eq!(run(reader.clone(), "u/bob/a").await, 403);
    env.get(&format!("/api/w/{WS}/scripts/get/p/u/bob/a"), &reader)
        .await
        .expect(200);
    env.get(&format!("/api/w/{WS}/jobs/list"), &reader)
        .await
        .expect(200);
    let create = json!({"path": "u/bob/d", "language": "bash", "content": "echo d"});
    env.post(
        &format!("/api/w/{WS}/scripts/create"),
        &reader,
        create.clone(),
    )
    .await
    .expect(403);
    let writer = scoped(json!(["scripts:write"])).await;
    env.post(&format!("/api/w/{WS}/scripts/create"), &writer, create)
        .await
        .expect(201);

    // Unknown scopes are refused when the token is made.
    env.post(
        "/api/users/tokens/create",
        &bob,
        json!({"scopes": ["jobs:explode"]}),
    )
    .await
    .expect(400);
}
