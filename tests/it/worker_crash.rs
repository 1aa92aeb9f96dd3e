//! Workers die; jobs do not get lost or stay "running".

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Options, TestEnv, WS};

pub(crate) async fn wait_running(env: &TestEnv, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let job = env.job(id).await;
        if job["running"] == json!(true) {
            return job;
        }
        assert!(Instant::now() < deadline, "job never started: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_workers_job_completes_on_another_worker() {
    let mut env = TestEnv::start().await;
    env.script("u/alice/slow", "bash", "sleep 2\necho done")
        .await;
    let id = env.run("u/alice/slow", json!({})).await;
    let job = wait_running(&env, &id).await;
    assert_eq!(job["worker"], json!("worker-0"));
    env.kill_worker(0);
    env.add_worker(&[]);
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(done["result"], json!("done"));
    let job = env.job(&id).await;
    assert_eq!(job["worker"], json!("worker-1"));
    assert_eq!(job["attempts"], json!(2));
}

#[tokio::test]
async fn a_job_that_keeps_losing_its_worker_fails_clearly() {
    let mut env = TestEnv::with(Options {
        worker_env: vec![("JOB_MAX_ATTEMPTS".into(), "1".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.script("u/alice/slow", "bash", "sleep 5\necho done")
        .await;
    let id = env.run("u/alice/slow", json!({})).await;
    wait_running(&env, &id).await;
    env.kill_worker(0);
    env.add_worker(&[]);
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(false));
    assert_eq!(
        done["result"]["error"]["name"],
        json!("MaxAttemptsExceeded"),
        "{done}"
    );
    assert_eq!(env.job(&id).await["running"], json!(false));
}

#[tokio::test]
async fn sigterm_drains_running_jobs_before_exit() {
    let mut env = TestEnv::start().await;
    env.script("u/alice/slow", "bash", "sleep 1.5\necho drained")
        .await;
    let id = env.run("u/alice/slow", json!({})).await;
    wait_running(&env, &id).await;
    let status = env.terminate_worker(0);
    assert!(status.success(), "worker exit: {status}");
    // It finished the job before exiting; no other worker exists.
    let job = env.job(&id).await;
    assert_eq!(job["result"], json!("drained"), "{job}");
    // New jobs wait for a worker and are not lost.
    let later = env.run("u/alice/slow", json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.job(&later).await["started_at"], json!(null));
    env.add_worker(&[]);
    assert_eq!(
        env.wait(&later, Duration::from_secs(20)).await["result"],
        json!("drained")
    );
    let _ = WS;
}
