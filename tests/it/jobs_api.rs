//! Inspecting and controlling jobs (SPEC §2): results, logs, cancel, the Runs list.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TestEnv, WS};

#[tokio::test]
async fn results_and_logs_while_running_and_after() {
    let env = TestEnv::start().await;
    let t = &env.token;
    env.script(
        "u/alice/slow",
        "bash",
        "echo started\nsleep 2\necho finished",
    )
    .await;
    let id = env.run("u/alice/slow", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = env.job(&id).await;
        if job["running"] == json!(true) {
            assert_eq!(job["type"], json!("QueuedJob"));
            break;
        }
        assert!(Instant::now() < deadline, "never seen running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let maybe = env
        .get(
            &format!("/api/w/{WS}/jobs_u/completed/get_result_maybe/{id}"),
            t,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(
        maybe,
        json!({"completed": false, "result": null, "success": null, "started": true})
    );
    env.get(&format!("/api/w/{WS}/jobs_u/completed/get/{id}"), t)
        .await
        .expect(404);
    env.get(&format!("/api/w/{WS}/jobs_u/completed/get_result/{id}"), t)
        .await
        .expect(404);
    // Logs are saved while the job runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let partial = env
        .get(&format!("/api/w/{WS}/jobs_u/get_logs/{id}"), t)
        .await
        .expect(200);
    assert!(
        partial.text.contains("started"),
        "logs so far: {:?}",
        partial.text
    );

    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(done["completed"], json!(true));
    assert_eq!(done["result"], json!("finished"));
    let logs = env
        .get(&format!("/api/w/{WS}/jobs_u/get_logs/{id}"), t)
        .await
        .expect(200);
    assert_eq!(logs.text, "started\nfinished\n");
    assert!(logs.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let completed = env
        .get(&format!("/api/w/{WS}/jobs_u/completed/get/{id}"), t)
        .await
        .expect(200)
        .json();
    assert_eq!(completed["type"], json!("CompletedJob"));
    assert_eq!(completed["success"], json!(true));
    let result = env
        .get(&format!("/api/w/{WS}/jobs_u/completed/get_result/{id}"), t)
        .await
        .expect(200)
        .json();
    assert_eq!(result, json!("finished"));
}

#[tokio::test]
async fn cancel_queued_running_and_completed_jobs() {
    let env = TestEnv::start().await;
    let t = &env.token;
    // Queued (scheduled later): never starts.
    env.script("u/alice/mark", "bash", "touch \"$1\"\necho ran")
        .await;
    let marker = env.scratch().join("queued-ran");
    let marker_arg = json!({"path": marker.display().to_string()});
    env.script(
        "u/alice/mark",
        "bash",
        "path=\"$1\"\ntouch \"$path\"\necho ran",
    )
    .await;
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run/p/u/alice/mark?scheduled_in_secs=2"),
            t,
            marker_arg,
        )
        .await
        .expect(201);
    let queued = res.text;
    let answer = env
        .post(
            &format!("/api/w/{WS}/jobs_u/queue/cancel/{queued}"),
            t,
            json!({"reason": "changed my mind"}),
        )
        .await
        .expect(200);
    assert_eq!(answer.text, queued);
    let job = env.job(&queued).await;
    assert_eq!(job["type"], json!("CompletedJob"));
    assert_eq!(job["canceled"], json!(true));
    assert_eq!(job["success"], json!(false));
    assert_eq!(job["canceled_by"], json!("alice"));
    assert_eq!(job["canceled_reason"], json!("changed my mind"));
    assert_eq!(
        job["result"],
        json!({"error": {"name": "Canceled", "message": "Job canceled: changed my mind by alice"}})
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(!marker.exists(), "a cancelled queued job ran");
    assert_eq!(env.job(&queued).await["started_at"], json!(null));

    // Running: killed with its process group, quickly.
    let grandchild = env.scratch().join("grandchild-survived");
    let script = format!("(sleep 3; touch {}) &\nsleep 60", grandchild.display());
    env.script("u/alice/long", "bash", &script).await;
    let running = env.run("u/alice/long", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.job(&running).await["running"] != json!(true) {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    env.post(
        &format!("/api/w/{WS}/jobs_u/queue/cancel/{running}"),
        t,
        json!({}),
    )
    .await
    .expect(200);
    let done = env.wait(&running, Duration::from_secs(10)).await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(done["success"], json!(false));
    assert_eq!(
        done["result"],
        json!({"error": {"name": "Canceled", "message": "Job canceled: no reason given by alice"}})
    );
    let job = env.job(&running).await;
    assert_eq!(job["canceled"], json!(true));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !grandchild.exists(),
        "the script's own child survived the cancel"
    );

    // Completed: 200 with a message.
    let answer = env
        .post(
            &format!("/api/w/{WS}/jobs_u/queue/cancel/{running}"),
            t,
            json!({"reason": null}),
        )
        .await
        .expect(200);
    assert_eq!(
        answer.text,
        format!("queued job id {running} is already completed")
    );
}

#[tokio::test]
async fn the_runs_list_filters_and_pages() {
    let env = TestEnv::start().await;
    let t = &env.token;
    let a = env.script("u/alice/a", "bash", "echo a").await;
    env.script("u/alice/fail", "bash", "exit 3").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(env.run("u/alice/a", json!({})).await);
    }
    let failed = env.run("u/alice/fail", json!({})).await;
    for id in ids.iter().chain([&failed]) {
        env.wait(id, Duration::from_secs(20)).await;
    }
    let env = &env;
    let list = |query: &str| {
        let path = format!("/api/w/{WS}/jobs/list{query}");
        async move { env.get_list(&path, t).await }
    };
    let all = list("").await;
    assert_eq!(all.len(), 6);
    assert_eq!(all[0]["id"], json!(failed), "newest first");
    assert_eq!(list("?script_path_exact=u/alice/a").await.len(), 5);
    assert_eq!(list(&format!("?script_hash={a}")).await.len(), 5);
    assert_eq!(list("?success=false").await.len(), 1);
    assert_eq!(list("?success=true").await.len(), 5);
    assert_eq!(list("?running=true").await.len(), 0);
    assert_eq!(list("?created_by=alice").await.len(), 6);
    assert_eq!(list("?created_by=bob").await.len(), 0);
    assert_eq!(list("?job_kinds=flow").await.len(), 0);
    assert_eq!(list("?job_kinds=script,flow").await.len(), 6);
    let page1 = list("?per_page=4&page=1").await;
    let page2 = list("?per_page=4&page=2").await;
    assert_eq!((page1.len(), page2.len()), (4, 2));
    assert_ne!(page1[0]["id"], page2[0]["id"]);
    assert_eq!(
        list("?per_page=5000").await.len(),
        6,
        "per_page is clamped, not refused"
    );
    let after = all[2]["created_at"].as_str().unwrap();
    let encoded: String = form_urlencoded::byte_serialize(after.as_bytes()).collect();
    assert_eq!(list(&format!("?created_after={encoded}")).await.len(), 2);
    assert_eq!(list(&format!("?created_before={encoded}")).await.len(), 3);
}

#[tokio::test]
async fn a_script_cannot_record_itself_as_canceled() {
    let env = TestEnv::start().await;
    env.script(
        "u/alice/fake_cancel",
        "python3",
        "class Canceled(Exception):\n    pass\n\ndef main():\n    raise Canceled(\"not really\")\n",
    )
    .await;
    let id = env.run("u/alice/fake_cancel", json!({})).await;
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(false), "{done}");
    let job = env.job(&id).await;
    assert_eq!(job["canceled"], json!(false), "{job}");
    assert_eq!(job["type"], json!("CompletedJob"), "{job}");
}
