//! Bootstrapping identity: the superadmin secret, users, workspaces, members, tokens.

use serde_json::json;

use crate::common::{TestEnv, SUPERADMIN, WS};

#[tokio::test]
async fn bootstrap_with_the_superadmin_secret() {
    let env = TestEnv::with(Default::default()).await;
    let me = env
        .get("/api/users/whoami", SUPERADMIN)
        .await
        .expect(200)
        .json();
    assert_eq!(me["super_admin"], json!(true));

    // Only a superadmin creates users and impersonates.
    let alice = &env.token;
    env.post(
        "/api/users/create",
        alice,
        json!({"email": "bob@example.com"}),
    )
    .await
    .expect(403);
    env.post(
        "/api/users/tokens/impersonate",
        alice,
        json!({"impersonate_email": "alice@example.com"}),
    )
    .await
    .expect(403);
    env.post(
        "/api/users/create",
        SUPERADMIN,
        json!({"email": "alice@example.com"}),
    )
    .await
    .expect(409);
    env.post(
        "/api/users/create",
        SUPERADMIN,
        json!({"email": "not-an-email"}),
    )
    .await
    .expect(400);

    // Workspaces: ids are checked and unique.
    env.post(
        "/api/workspaces/create",
        SUPERADMIN,
        json!({"id": WS, "name": "again"}),
    )
    .await
    .expect(409);
    env.post(
        "/api/workspaces/create",
        SUPERADMIN,
        json!({"id": "Bad Id", "name": "x"}),
    )
    .await
    .expect(400);
    env.post(
        "/api/workspaces/create",
        alice,
        json!({"id": "alices", "name": "Alice's"}),
    )
    .await
    .expect(201);
    let mine = env
        .get("/api/w/alices/users/whoami", alice)
        .await
        .expect(200)
        .json();
    assert_eq!(
        mine["is_admin"],
        json!(true),
        "the creator administers the workspace"
    );

    // whoami in a workspace.
    let who = env
        .get(&format!("/api/w/{WS}/users/whoami"), alice)
        .await
        .expect(200)
        .json();
    assert_eq!(
        who,
        json!({"email": "alice@example.com", "username": "alice", "is_admin": true, "operator": false})
    );
    let global = env.get("/api/users/whoami", alice).await.expect(200).json();
    assert_eq!(global["email"], json!("alice@example.com"));
    assert_eq!(global["super_admin"], json!(false));

    // Only admins add members.
    let dev = env.user_token("dev@example.com", "dev", false, false).await;
    env.post(
        &format!("/api/w/{WS}/workspaces/add_user"),
        &dev,
        json!({"email": "bob@example.com", "username": "bob"}),
    )
    .await
    .expect(403);
    env.post(
        &format!("/api/w/{WS}/workspaces/add_user"),
        alice,
        json!({"email": "nobody@example.com", "username": "nobody"}),
    )
    .await
    .expect(404);
    env.post(
        &format!("/api/w/{WS}/workspaces/add_user"),
        alice,
        json!({"email": "dev@example.com", "username": "dev2"}),
    )
    .await
    .expect(409);
}

#[tokio::test]
async fn tokens_are_random_hashed_and_expire() {
    let env = TestEnv::start().await;
    let alice = &env.token;
    let a = env
        .post("/api/users/tokens/create", alice, json!({"label": "ci"}))
        .await
        .expect(201)
        .text;
    let b = env
        .post("/api/users/tokens/create", alice, json!({}))
        .await
        .expect(201)
        .text;
    assert!(a.len() >= 32 && b.len() >= 32);
    assert_ne!(a, b);
    env.get("/api/users/whoami", &a).await.expect(200);

    // Only a hash is stored.
    let db = env.sql().await;
    let dump: Vec<String> = db
        .query("SELECT t::text FROM tokens t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(dump.len() >= 3);
    for row in &dump {
        assert!(
            !row.contains(&a) && !row.contains(&b),
            "a token is stored in clear: {row}"
        );
    }

    // Expiry: valid until its instant, refused after.
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let short = env
        .post(
            "/api/users/tokens/create",
            alice,
            json!({"expiration": at.to_rfc3339()}),
        )
        .await
        .expect(201)
        .text;
    env.get("/api/users/whoami", &short).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    env.get("/api/users/whoami", &short).await.expect(401);
    let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    env.post(
        "/api/users/tokens/create",
        alice,
        json!({"expiration": past}),
    )
    .await
    .expect(400);

    // A token made for one workspace is refused in another.
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
        json!({"email": "alice@example.com", "username": "alice"}),
    )
    .await
    .expect(201);
    let only_test = env
        .post(
            "/api/users/tokens/create",
            alice,
            json!({"workspace_id": WS}),
        )
        .await
        .expect(201)
        .text;
    env.get(&format!("/api/w/{WS}/users/whoami"), &only_test)
        .await
        .expect(200);
    env.get("/api/w/other/users/whoami", &only_test)
        .await
        .expect(403);
    env.get("/api/w/other/users/whoami", alice)
        .await
        .expect(200);
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let env = TestEnv::start().await;
    env.script("u/alice/ok", "bash", "echo ok").await;
    let id = env
        .request(
            reqwest::Method::POST,
            &format!("/api/w/{WS}/jobs/run/p/u/alice/ok?token={}", env.token),
            None,
            Some(json!({})),
        )
        .await
        .expect(201)
        .text;
    env.wait(&id, std::time::Duration::from_secs(20)).await;
    let logs = env.logs();
    // The access log names the route and the path, never the query (nor the token in it).
    assert!(
        logs.contains("/api/w/{workspace}/jobs/run/p/{*path}")
            && logs.contains("/api/w/test/jobs/run/p/u/alice/ok"),
        "the access log should show the route and the path"
    );
    assert!(!logs.contains("?token="), "a query reached the logs");
    assert!(!logs.contains(&env.token), "a token reached the logs");
    assert!(
        !logs.contains(SUPERADMIN),
        "the superadmin secret reached the logs"
    );
    let job = env.job(&id).await.to_string();
    assert!(!job.contains(&env.token));
}
