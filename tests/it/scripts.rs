//! Scripts: immutable versions, parent_hash rules, path and hash addressing.

use serde_json::json;

use crate::common::{TestEnv, WS};

#[tokio::test]
async fn versions_are_immutable_and_addressable_by_path_and_hash() {
    let env = TestEnv::start().await;
    let t = &env.token;
    let v1 = env.script("u/alice/greet", "bash", "echo v1").await;
    assert_eq!(v1.len(), 16);
    assert!(v1
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));

    // A second create without parent_hash conflicts.
    let conflict = env
        .post(
            &format!("/api/w/{WS}/scripts/create"),
            t,
            json!({"path": "u/alice/greet", "language": "bash", "content": "echo v2"}),
        )
        .await
        .expect(400);
    assert!(
        conflict.text.starts_with("Bad request: Path conflict"),
        "{}",
        conflict.text
    );
    // A wrong parent conflicts too.
    env.post(
        &format!("/api/w/{WS}/scripts/create"),
        t,
        json!({"path": "u/alice/greet", "language": "bash", "content": "echo v2", "parent_hash": "0000000000000000"}),
    )
    .await
    .expect(400);

    let v2 = env.script("u/alice/greet", "bash", "echo v2").await;
    assert_ne!(v1, v2);
    let latest = env
        .get(&format!("/api/w/{WS}/scripts/get/p/u/alice/greet"), t)
        .await
        .expect(200)
        .json();
    assert_eq!(latest["hash"], json!(v2));
    assert_eq!(latest["content"], json!("echo v2"));
    assert_eq!(latest["parent_hashes"], json!([v1]));
    assert_eq!(latest["archived"], json!(false));
    for key in [
        "path",
        "language",
        "schema",
        "summary",
        "created_by",
        "created_at",
    ] {
        assert!(latest.get(key).is_some(), "missing {key}");
    }
    let old = env
        .get(&format!("/api/w/{WS}/scripts/get/h/{v1}"), t)
        .await
        .expect(200)
        .json();
    assert_eq!(old["archived"], json!(true));
    assert_eq!(old["content"], json!("echo v1"));

    // The path runs the new code, the old hash keeps running the old code.
    assert_eq!(env.run_ok("u/alice/greet", json!({})).await, json!("v2"));
    let id = env
        .post(&format!("/api/w/{WS}/jobs/run/h/{v1}"), t, json!({}))
        .await
        .expect(201)
        .text;
    let done = env.wait(&id, std::time::Duration::from_secs(20)).await;
    assert_eq!(done["result"], json!("v1"));

    let history = env
        .get(&format!("/api/w/{WS}/scripts/history/p/u/alice/greet"), t)
        .await
        .expect(200)
        .json();
    let hashes: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["script_hash"].clone())
        .collect();
    assert_eq!(hashes, vec![json!(v2), json!(v1)]);

    assert_eq!(
        env.get(&format!("/api/w/{WS}/scripts/exists/p/u/alice/greet"), t)
            .await
            .expect(200)
            .json(),
        json!(true)
    );
    assert_eq!(
        env.get(&format!("/api/w/{WS}/scripts/exists/p/u/alice/nope"), t)
            .await
            .expect(200)
            .json(),
        json!(false)
    );
}

#[tokio::test]
async fn list_archive_and_delete() {
    let env = TestEnv::start().await;
    let t = &env.token;
    env.script("u/alice/a", "bash", "echo a").await;
    env.script("f/ops/b", "python3", "def main():\n    return 1\n")
        .await;
    env.script("f/ops/deep/c", "bash", "echo c").await;
    let all = env
        .get(&format!("/api/w/{WS}/scripts/list"), t)
        .await
        .expect(200)
        .json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let ops = env
        .get(&format!("/api/w/{WS}/scripts/list?path_start=f/ops/"), t)
        .await
        .expect(200)
        .json();
    let paths: Vec<_> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, vec!["f/ops/b", "f/ops/deep/c"]);

    let hash = env
        .get(&format!("/api/w/{WS}/scripts/get/p/u/alice/a"), t)
        .await
        .json()["hash"]
        .clone();
    env.post(
        &format!("/api/w/{WS}/scripts/archive/p/u/alice/a"),
        t,
        json!({}),
    )
    .await
    .expect(200);
    // Archived: no longer runnable by path, still by hash.
    env.post(&format!("/api/w/{WS}/jobs/run/p/u/alice/a"), t, json!({}))
        .await
        .expect(404);
    env.post(
        &format!("/api/w/{WS}/jobs/run/h/{}", hash.as_str().unwrap()),
        t,
        json!({}),
    )
    .await
    .expect(201);
    assert_eq!(
        env.get(&format!("/api/w/{WS}/scripts/list"), t)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    env.post(
        &format!("/api/w/{WS}/scripts/delete/p/f/ops/b"),
        t,
        json!({}),
    )
    .await
    .expect(200);
    env.get(&format!("/api/w/{WS}/scripts/get/p/f/ops/b"), t)
        .await
        .expect(404);
    env.post(
        &format!("/api/w/{WS}/scripts/delete/p/f/ops/b"),
        t,
        json!({}),
    )
    .await
    .expect(404);
}

#[tokio::test]
async fn bad_script_definitions_are_refused() {
    let env = TestEnv::start().await;
    let t = &env.token;
    for (body, why) in [
        (
            json!({"path": "u/alice/x", "language": "cobol", "content": ""}),
            "unknown language",
        ),
        (
            json!({"path": "u/alice/../x", "language": "bash", "content": ""}),
            "invalid path",
        ),
        (
            json!({"path": "x/alice/y", "language": "bash", "content": ""}),
            "invalid path",
        ),
        (
            json!({"path": "u/alice/x", "language": "bash", "content": "", "timeout": 0}),
            "timeout",
        ),
        (
            json!({"path": "u/alice/x", "language": "bash"}),
            "missing field",
        ),
    ] {
        let res = env
            .post(&format!("/api/w/{WS}/scripts/create"), t, body.clone())
            .await;
        assert_eq!(res.status, 400, "{body}: {}", res.text);
        assert!(res.text.contains(why), "{body}: {}", res.text);
    }
    let operator = env.user_token("op@example.com", "op", false, true).await;
    env.post(
        &format!("/api/w/{WS}/scripts/create"),
        &operator,
        json!({"path": "u/op/x", "language": "bash", "content": "echo"}),
    )
    .await
    .expect(403);
}
