//! One job, one live run: each attempt owns its job through a lease in its row. A delivery of a
//! job whose attempt is alive is handed back, not run; an attempt that lost its job stops it and
//! records nothing; values PostgreSQL cannot store fail a job once instead of running it again;
//! a cancel whose broadcast was lost is still seen by the running worker.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Options, TestEnv};
use crate::queue::{envelope, jetstream, publish, queued_messages, wait_for_log};
use crate::worker_crash::wait_running;

/// The lines a job appended to its ledger, one per run.
fn ledger(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `check` holds, or panics with `what` after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn row(env: &TestEnv, id: &str) -> tokio_postgres::Row {
    let id: uuid::Uuid = id.parse().unwrap();
    env.sql()
        .await
        .query_one(
            "SELECT status, attempts, result, completed_at IS NOT NULL FROM jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_second_delivery_of_a_running_job_is_handed_back_not_run() {
    // One slot each: the running job fills the first worker, so the copy goes to the second.
    let mut env = TestEnv::with(Options {
        worker_env: vec![("WORKER_SLOTS".into(), "1".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    let runs = env.scratch().join("runs");
    let hash = env
        .script(
            "u/admin/slow",
            "bash",
            "ledger=\"$1\"\necho run >> \"$ledger\"\nsleep 8\necho done\n",
        )
        .await;
    let args = json!({"ledger": runs.display().to_string()});
    let id = env.run("u/admin/slow", args.clone()).await;
    wait_running(&env, &id).await;
    env.add_worker(&[]);
    let js = jetstream(&env).await;

    // The job's envelope again, as a NATS outage longer than JOB_ACK_WAIT would redeliver it
    // (without the record, so the worker takes the job by its row alone).
    let mut copy = envelope(id.parse().unwrap(), &hash, args);
    copy["path"] = json!("u/admin/slow");
    copy.as_object_mut().unwrap().remove("record");
    publish(&js, &copy).await;

    wait_for_log(&env, "another attempt holds the job; handing it back").await;
    let second = std::fs::read_to_string(env.dir.path().join("worker-1.log")).unwrap();
    assert!(
        second.contains("another attempt holds the job"),
        "the copy did not reach the idle worker:\n{}",
        env.logs()
    );
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["result"], json!("done"), "{done}");
    // The copy comes back once the run has ended, finds it ended, and is acked.
    eventually(
        Duration::from_secs(30),
        "the copy was never acked",
        async || queued_messages(&js).await == 0,
    )
    .await;
    assert_eq!(ledger(&runs), ["run"], "the job ran twice");
    let job = env.job(&id).await;
    assert_eq!(job["attempts"], json!(1), "{job}");
    assert_eq!(job["worker"], json!("worker-0"), "{job}");
}

#[tokio::test]
async fn an_attempt_that_lost_its_job_is_stopped_and_records_nothing() {
    let env = TestEnv::start().await;
    let runs = env.scratch().join("runs");
    env.script(
        "u/admin/steps",
        "bash",
        "ledger=\"$1\"\necho start >> \"$ledger\"\nsleep 5\necho end >> \"$ledger\"\necho late\n",
    )
    .await;
    let id = env
        .run(
            "u/admin/steps",
            json!({"ledger": runs.display().to_string()}),
        )
        .await;
    wait_running(&env, &id).await;
    eventually(
        Duration::from_secs(15),
        "the job never started",
        async || ledger(&runs) == ["start"],
    )
    .await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    // Another attempt takes the job over (as after a lease that passed), and keeps it.
    let bumped = env
        .sql()
        .await
        .execute(
            "UPDATE jobs SET attempts = attempts + 1, lease_until = now() + interval '1 hour'
             WHERE id = $1 AND status = 'running'",
            &[&uuid],
        )
        .await
        .unwrap();
    assert_eq!(bumped, 1);
    let taken = Instant::now();

    wait_for_log(&env, "another attempt took it over, or it ended").await;
    // Well past the end the first run would have reached.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(taken.elapsed())).await;
    assert_eq!(ledger(&runs), ["start"], "the first run was not stopped");
    let found = row(&env, &id).await;
    assert_eq!(found.get::<_, String>(0), "running");
    assert_eq!(found.get::<_, i32>(1), 2);
    assert_eq!(
        found.get::<_, Option<Value>>(2),
        None,
        "a late result was recorded"
    );
    assert!(!found.get::<_, bool>(3));

    // The other attempt dies: its lease passes, and the job runs again, to its end.
    env.sql()
        .await
        .execute(
            "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1",
            &[&uuid],
        )
        .await
        .unwrap();
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["result"], json!("late"), "{done}");
    assert_eq!(ledger(&runs), ["start", "start", "end"]);
    assert_eq!(env.job(&id).await["attempts"], json!(3));
}

#[tokio::test]
async fn nul_characters_in_logs_are_replaced_and_in_results_fail_once() {
    let env = TestEnv::start().await;
    let runs = env.scratch().join("runs");
    env.script(
        "u/admin/nul_logs",
        "bash",
        "ledger=\"$1\"\necho bash >> \"$ledger\"\nprintf 'a\\0b\\n'\n",
    )
    .await;
    env.script(
        "u/admin/nul_result",
        "python3",
        "def main(ledger: str):\n    with open(ledger, 'a') as f:\n        f.write('python\\n')\n    print('before')\n    return 'a\\x00b'\n",
    )
    .await;
    let args = json!({"ledger": runs.display().to_string()});

    let logs_job = env.run("u/admin/nul_logs", args.clone()).await;
    let done = env.wait(&logs_job, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(done["result"], json!("a\u{FFFD}b"));
    assert!(
        env.job_logs(&logs_job).await.contains("a\u{FFFD}b\n"),
        "{}",
        env.job_logs(&logs_job).await
    );
    assert_eq!(env.job(&logs_job).await["attempts"], json!(1));

    let result_job = env.run("u/admin/nul_result", args).await;
    let done = env.wait(&result_job, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(false), "{done}");
    let error = &done["result"]["error"];
    assert_eq!(error["name"], json!("ResultNotStorable"), "{done}");
    assert!(
        error["message"].as_str().unwrap().contains("U+0000"),
        "{done}"
    );
    assert!(env.job_logs(&result_job).await.contains("before"));
    // Longer than a hand-back and a lease: a job sent back for another run would have run.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(ledger(&runs), ["bash", "python"], "a job ran again");
    assert_eq!(env.job(&result_job).await["attempts"], json!(1));
}

#[tokio::test]
async fn a_cancel_whose_broadcast_was_lost_still_stops_the_running_job() {
    let env = TestEnv::start().await;
    env.script("u/admin/long", "bash", "sleep 60\necho finished\n")
        .await;
    let id = env.run("u/admin/long", json!({})).await;
    wait_running(&env, &id).await;
    let asked = Instant::now();
    // What the API records for a running job, without the NATS message.
    env.sql()
        .await
        .execute(
            "UPDATE jobs SET cancel_requested = true, canceled_by = 'alice',
                             canceled_reason = 'no broadcast'
             WHERE id = $1 AND status = 'running'",
            &[&id.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap();
    let done = env.wait(&id, Duration::from_secs(20)).await;
    // A few lease renewals (each a second with the tests' JOB_ACK_WAIT of 3), not the job's
    // minute.
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(done["success"], json!(false), "{done}");
    let job = env.job(&id).await;
    assert_eq!(job["canceled"], json!(true), "{job}");
    assert_eq!(job["canceled_by"], json!("alice"));
    assert_eq!(job["canceled_reason"], json!("no broadcast"));
    assert_eq!(job["attempts"], json!(1));
}
