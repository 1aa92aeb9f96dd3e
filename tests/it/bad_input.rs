//! Bad input gets a clear 4xx with a message — never a 500, a hang or a lost job.

use serde_json::json;

use crate::common::{raw_status, Options, TestEnv, WS};

#[tokio::test]
async fn malformed_unknown_and_invalid_requests() {
    let env = TestEnv::with(Options {
        api_env: vec![("MAX_BODY_SIZE".into(), "1024".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    let t = &env.token;
    let hash = env.script("u/alice/ok", "bash", "echo ok").await;
    let run = format!("/api/w/{WS}/jobs/run/p/u/alice/ok");

    // Malformed JSON under a JSON content type.
    let res = env
        .http
        .post(env.url(&run))
        .bearer_auth(t)
        .header("content-type", "application/json")
        .body("{\"a\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res
        .text()
        .await
        .unwrap()
        .starts_with("Bad request: invalid JSON body"));

    // Unknown workspace, path, hash.
    let unknown = [
        "/api/w/nowhere/jobs/run/p/u/alice/ok".to_owned(),
        format!("/api/w/{WS}/jobs/run/p/u/alice/missing"),
        format!("/api/w/{WS}/jobs/run/h/0123456789abcdef"),
    ];
    for path in unknown {
        let res = env.post(&path, crate::common::SUPERADMIN, json!({})).await;
        assert_eq!(res.status, 404, "{path}: {}", res.text);
        assert!(res.text.starts_with("Not found: "), "{}", res.text);
    }

    // Invalid paths and hashes, including ones an HTTP client would normalise away.
    for path in ["u//ok", "u/alice/o%20k", "x/alice/ok", "u/alice/ok!"] {
        let res = env
            .post(&format!("/api/w/{WS}/jobs/run/p/{path}"), t, json!({}))
            .await;
        assert_eq!(res.status, 400, "{path}: {}", res.text);
    }
    env.post(&format!("/api/w/{WS}/jobs/run/h/XYZ"), t, json!({}))
        .await
        .expect(400);
    env.post("/api/w/Bad_WS!/jobs/run/p/u/alice/ok", t, json!({}))
        .await
        .expect(400);
    let addr = env.api_url.clone();
    for path in ["u/alice/../ok", "u/../alice/ok", "u/alice/./ok"] {
        let request = format!(
            "POST /api/w/{WS}/jobs/run/p/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        assert_eq!(raw_status(&addr, &request).await, 400, "{path}");
    }

    // Too large.
    let big = format!("{{\"a\": \"{}\"}}", "x".repeat(4096));
    let res = env
        .http
        .post(env.url(&run))
        .bearer_auth(t)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);

    // Bad query args.
    for query in [
        "scheduled_in_secs=soon",
        "scheduled_for=yesterday",
        "tag=a%20b",
        "raw=perhaps",
    ] {
        env.post(&format!("{run}?{query}"), t, json!({}))
            .await
            .expect(400);
    }

    // Credentials.
    let res = env
        .request(reqwest::Method::POST, &run, None, Some(json!({})))
        .await;
    assert_eq!(res.status, 401);
    assert!(res.text.starts_with("Not authorized: "));
    env.post(&run, "not-a-real-token-0123456789012345", json!({}))
        .await
        .expect(401);

    // Unknown routes, wrong methods and job ids.
    env.get("/api/nothing/here", t).await.expect(404);
    let res = env
        .request(reqwest::Method::DELETE, &run, Some(t), None)
        .await;
    assert_eq!(res.status, 405);
    assert!(
        res.text.starts_with("Method not allowed: DELETE"),
        "{}",
        res.text
    );
    env.get(&format!("/api/w/{WS}/jobs_u/get/not-a-uuid"), t)
        .await
        .expect(400);
    env.get(
        &format!("/api/w/{WS}/jobs_u/get/{}", uuid::Uuid::new_v4()),
        t,
    )
    .await
    .expect(404);
    env.post(
        &format!("/api/w/{WS}/jobs_u/queue/cancel/{}", uuid::Uuid::new_v4()),
        t,
        json!({}),
    )
    .await
    .expect(404);
    env.get(&format!("/api/w/{WS}/jobs/list?per_page=many"), t)
        .await
        .expect(400);
    // PostgreSQL cannot store U+0000 in JSON, in a value or a key, however deep.
    for args in [
        json!({"a": "x\u{0}y"}),
        json!({"a": [{"b": "\u{0}"}]}),
        json!({"k\u{0}": 1}),
    ] {
        let refused = env
            .post(&format!("/api/w/{WS}/jobs/run/h/{hash}"), t, args)
            .await
            .expect(400);
        assert!(refused.text.contains("U+0000"), "{}", refused.text);
    }
    // Nor in a filter or a name, wherever a request carries text (found by the fuzzer).
    let refused = env
        .get(&format!("/api/w/{WS}/jobs/list?script_path_exact=x%00y"), t)
        .await
        .expect(400);
    assert!(refused.text.contains("U+0000"), "{}", refused.text);
    env.post(
        &format!("/api/w/{WS}/groups/create"),
        t,
        json!({"name": "g", "summary": "a\u{0}b"}),
    )
    .await
    .expect(400);
    // A page far beyond the end is empty, not an overflow.
    let far = env
        .get(
            &format!("/api/w/{WS}/jobs/list?page=9223372036854775807&per_page=1000"),
            t,
        )
        .await
        .expect(200);
    assert_eq!(far.json(), json!([]));

    // The good request still works, and nothing above answered 500.
    let id = env
        .post(&format!("/api/w/{WS}/jobs/run/h/{hash}"), t, json!({}))
        .await
        .expect(201)
        .text;
    env.wait(&id, std::time::Duration::from_secs(20)).await;
    assert!(
        !env.logs().contains("internal error"),
        "a request produced a 500"
    );
}

#[tokio::test]
async fn outsiders_see_nothing() {
    let env = TestEnv::start().await;
    env.script("u/alice/ok", "bash", "echo ok").await;
    let id = env.run("u/alice/ok", json!({})).await;
    // A user of the instance who is not a member of the workspace.
    env.post(
        "/api/users/create",
        crate::common::SUPERADMIN,
        json!({"email": "eve@example.com"}),
    )
    .await
    .expect(201);
    let eve = env
        .post(
            "/api/users/tokens/impersonate",
            crate::common::SUPERADMIN,
            json!({"impersonate_email": "eve@example.com"}),
        )
        .await
        .expect(201)
        .text;
    env.post(
        &format!("/api/w/{WS}/jobs/run/p/u/alice/ok"),
        &eve,
        json!({}),
    )
    .await
    .expect(401);
    env.get(&format!("/api/w/{WS}/jobs_u/get/{id}"), &eve)
        .await
        .expect(401);
    env.get(&format!("/api/w/{WS}/scripts/list"), &eve)
        .await
        .expect(401);
    env.get(&format!("/api/w/{WS}/jobs/list"), &eve)
        .await
        .expect(401);
}
