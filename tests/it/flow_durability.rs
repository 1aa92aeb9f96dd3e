//! Flows survive their workers: a worker SIGKILLed while a flow runs (mid-step, or at random
//! moments, transitions included) loses no flow, and no step is recorded as completed twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Options, TestEnv, WS};
use crate::flows::{assert_failed_with, bash, js};

fn options(workers: usize) -> Options {
    Options {
        workers,
        worker_env: vec![("JOB_MAX_ATTEMPTS".into(), "20".into())],
        ..Default::default()
    }
}

/// Every step job of `flow`, straight from the database: (module, key, status, attempts).
async fn step_rows(env: &TestEnv, flow: &str) -> Vec<(String, String, String, i32)> {
    let sql = env.sql().await;
    let rows = sql
        .query(
            "SELECT flow_step_id, flow_step_key, status, attempts FROM jobs
             WHERE parent_job = $1::text::uuid ORDER BY created_at",
            &[&flow],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Each step (module + iteration) succeeded exactly once; returns how many there were.
async fn assert_each_step_completed_once(env: &TestEnv, flow: &str) -> usize {
    let rows = step_rows(env, flow).await;
    let mut successes: HashMap<String, usize> = HashMap::new();
    for (_, key, status, _) in &rows {
        // The key is `<path>#<attempt>`: the step is the path.
        let step = key
            .rsplit_once('#')
            .map_or(key.as_str(), |(p, _)| p)
            .to_owned();
        if status == "success" {
            *successes.entry(step).or_default() += 1;
        }
    }
    let twice: Vec<_> = successes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "steps completed twice: {twice:?}");
    successes.len()
}

async fn wait_for_step(env: &TestEnv, flow: &str, module: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = step_rows(env, flow).await;
        if rows.iter().any(|(m, _, s, _)| m == module && s == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "step {module} never {status}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_in_the_middle_of_a_20_step_flow() {
    let mut env = TestEnv::with(options(1)).await;
    let modules: Vec<Value> = (0..20)
        .map(|i| {
            let input = if i == 0 {
                js("flow_input.start")
            } else {
                js("Number(previous_result)")
            };
            bash(
                &format!("s{i}"),
                "x=\"$1\"\nsleep 0.2\necho $((x + 1))",
                json!({"x": input}),
            )
        })
        .collect();
    env.flow("u/alice/twenty", json!({"modules": modules}))
        .await;
    let id = env.run_flow("u/alice/twenty", json!({"start": 100})).await;
    wait_for_step(&env, &id, "s7", "running").await;
    env.kill_worker(0);
    env.add_worker(&[]);
    let done = env.wait(&id, Duration::from_secs(90)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(done["result"], json!("120"));
    assert_eq!(assert_each_step_completed_once(&env, &id).await, 20);
    let rows = step_rows(&env, &id).await;
    let s7: Vec<_> = rows.iter().filter(|(m, ..)| m == "s7").collect();
    assert_eq!(s7.len(), 1, "{rows:?}");
    assert_eq!(
        s7[0].3, 2,
        "the interrupted step ran again on the new worker"
    );
    let job = env.job(&id).await;
    assert!(job["flow_status"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["type"] == json!("Success")));
}

#[tokio::test]
async fn a_worker_killed_during_a_parallel_50_iteration_loop() {
    let mut env = TestEnv::with(options(2)).await;
    env.flow(
        "u/alice/fifty",
        json!({"modules": [
            {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[...Array(50).keys()]"), "parallel": true,
              "modules": [bash("work", "x=\"$1\"\nsleep 0.5\necho $((x * x))", json!({"x": js("flow_input.iter.value")}))]}},
        ]}),
    )
    .await;
    let id = env.run_flow("u/alice/fifty", json!({})).await;
    // Some iterations are done and others running on both workers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = step_rows(&env, &id).await;
        if rows.iter().filter(|r| r.2 == "success").count() >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.kill_worker(0);
    let done = env.wait(&id, Duration::from_secs(120)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    let expected: Vec<Value> = (0..50).map(|i: i64| json!((i * i).to_string())).collect();
    assert_eq!(done["result"], json!(expected), "every iteration, in order");
    assert_eq!(assert_each_step_completed_once(&env, &id).await, 50);
    let rerun = step_rows(&env, &id)
        .await
        .iter()
        .filter(|r| r.3 > 1)
        .count();
    assert!(
        rerun > 0,
        "the killed worker's iterations ran again elsewhere"
    );
}

#[tokio::test]
async fn workers_killed_at_random_moments_lose_no_flow() {
    let mut env = TestEnv::with(options(2)).await;
    // Short steps: most of the time goes to transitions, so kills land in them too.
    env.flow(
        "u/alice/chaos",
        json!({"modules": [
            bash("a", "echo 1", json!({})),
            {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[...Array(12).keys()]"), "parallel": true,
              "modules": [
                  bash("i1", "x=\"$1\"\necho $((x + 1))", json!({"x": js("flow_input.iter.value")})),
                  bash("i2", "x=\"$1\"\necho $((x * 2))", json!({"x": js("Number(previous_result)")})),
              ]}},
            {"id": "all", "value": {"type": "branchall", "branches": [
                {"modules": [bash("b1", "echo left", json!({}))]},
                {"modules": [bash("b2", "echo right", json!({}))]},
            ]}},
            bash("z", "x=\"$1\"\necho \"$x\"", json!({"x": js("JSON.stringify([results.loop, results.all])")})),
        ]}),
    )
    .await;
    let ids = [
        env.run_flow("u/alice/chaos", json!({})).await,
        env.run_flow("u/alice/chaos", json!({})).await,
        env.run_flow("u/alice/chaos", json!({})).await,
    ];
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut alive = vec![0usize, 1];
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(150 + next() % 400)).await;
        let victim = alive.remove((next() % alive.len() as u64) as usize);
        env.kill_worker(victim);
        alive.push(env.add_worker(&[]));
        let _ = round;
    }
    let expected: Vec<Value> = (0..12)
        .map(|i: i64| json!(((i + 1) * 2).to_string()))
        .collect();
    for id in &ids {
        let done = env.wait(id, Duration::from_secs(120)).await;
        assert_eq!(done["success"], json!(true), "{done}");
        let out: Value = serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
        assert_eq!(out, json!([expected, ["left", "right"]]));
        assert_eq!(
            assert_each_step_completed_once(&env, id).await,
            1 + 24 + 2 + 1
        );
    }
    let _ = WS;
}

#[tokio::test]
async fn an_api_killed_while_its_sync_caller_waits_loses_no_flow() {
    let mut env = TestEnv::with(options(1)).await;
    env.flow(
        "u/alice/slowflow",
        json!({"modules": [
            bash("a", "sleep 1\necho one", json!({})),
            bash("b", "x=\"$1\"\nsleep 1\necho \"$x two\"", json!({"x": js("previous_result")})),
        ]}),
    )
    .await;
    let second = env.add_api().await;
    // A sync call on the second replica, which dies while the flow runs.
    let http = env.http.clone();
    let token = env.token.clone();
    let call = tokio::spawn(async move {
        http.post(format!(
            "{second}/api/w/{WS}/jobs/run_wait_result/f/u/alice/slowflow"
        ))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let list = env
            .get(
                &format!("/api/w/{WS}/jobs/list?script_path_exact=u/alice/slowflow"),
                &env.token,
            )
            .await
            .expect(200)
            .json();
        if let Some(id) = list[0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "the flow was never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for_step(&env, &id, "a", "running").await;
    env.kill_api(1);
    assert!(
        call.await.unwrap().is_err(),
        "the killed replica's caller lost its connection"
    );
    // The caller is gone, but nobody cancelled the flow: it ends on its own, read on replica 0.
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(done["result"], json!("one two"));
    assert_eq!(assert_each_step_completed_once(&env, &id).await, 2);
}

/// A flow transition begins its transaction without waiting for BEGIN's answer, so it ends it
/// by hand: one that committed, or rolled back once its statements were answered (a busy flow,
/// a refused end), leaves its connection to be lent again, outside any transaction, its locks
/// free; one dropped halfway (a cancelled task) is closed with its connection rather than lent
/// again holding its flow's row lock.
#[tokio::test]
async fn a_transaction_left_halfway_never_outlives_its_turn_with_the_connection() {
    let env = TestEnv::with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    let config = millrace::config::DatabaseConfig {
        url: millrace::config::Secret::new(env.database_url()),
        pool_size: 1,
    };
    let pool = millrace::store::connect(&config).await.unwrap();
    let sql = env.sql().await;
    sql.batch_execute(
        "CREATE TABLE left_halfway (id int PRIMARY KEY); INSERT INTO left_halfway VALUES (1)",
    )
    .await
    .unwrap();

    // Committed: the same connection is lent again, the lock free.
    let conn = pool.get().await.unwrap();
    let first = backend(&conn).await;
    let tx = lock_the_row(&conn).await;
    tx.commit().await.unwrap();
    let (conn, next) = give_back_and_borrow(&pool, conn).await;
    assert_eq!(next, first, "a committed connection was not reused");
    row_lock_is_free(&sql).await;

    // Rolled back: the same connection lent again, outside any transaction.
    let tx = lock_the_row(&conn).await;
    tx.rollback();
    let (conn, next) = give_back_and_borrow(&pool, conn).await;
    assert_eq!(next, first, "a rolled back connection was not reused");
    let inside: Option<i64> = conn
        .query_one("SELECT txid_current_if_assigned()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        inside, None,
        "the connection lent is inside the rolled back transaction"
    );
    row_lock_is_free(&sql).await;

    // Dropped halfway, never ended: closed, not lent again.
    let _ = lock_the_row(&conn).await;
    let (_conn, next) = give_back_and_borrow(&pool, conn).await;
    assert_ne!(
        next, first,
        "a connection inside a transaction was lent again"
    );
    // The server ended the transaction with its connection.
    row_lock_is_free(&sql).await;
}

/// Gives `conn` back to the pool (of one connection) and borrows the pool's connection again:
/// with the process id of its server backend, which tells whether it is the same.
async fn give_back_and_borrow<'p>(
    pool: &'p millrace::store::Pool,
    conn: millrace::store::Conn<'p>,
) -> (millrace::store::Conn<'p>, i32) {
    drop(conn);
    let conn = pool.get().await.unwrap();
    let pid = backend(&conn).await;
    (conn, pid)
}

async fn backend(conn: &millrace::store::Conn<'_>) -> i32 {
    let row = conn.query_one("SELECT pg_backend_pid()", &[]).await;
    row.unwrap().get(0)
}

/// Begins a transaction on `conn` (BEGIN not awaited alone, as a flow transition does) and
/// locks the test's row in it.
async fn lock_the_row<'c>(conn: &'c millrace::store::Conn<'_>) -> millrace::store::Begun<'c> {
    let (tx, begin) = conn.begin();
    let (begun, locked) = futures::join!(
        begin,
        tx.query("SELECT id FROM left_halfway FOR UPDATE", &[])
    );
    begun.unwrap();
    assert_eq!(locked.unwrap().len(), 1);
    tx
}

/// Waits (up to 10 s: a closed connection's backend ends on its own time) until another
/// connection can lock the test's row.
async fn row_lock_is_free(sql: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sql
            .query("SELECT id FROM left_halfway FOR UPDATE NOWAIT", &[])
            .await
        {
            Ok(rows) => break assert_eq!(rows.len(), 1),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("a transaction left halfway still holds its lock: {e}"),
        }
    }
}

/// A step enqueued twice is a bug (keys are unique per flow): the transition that tries fails
/// and rolls back whole, and the flow ends as failed in a transaction of its own, with the
/// step's end that triggered it recorded once and what it left queued cancelled.
#[tokio::test]
async fn a_step_enqueued_twice_fails_its_flow_and_loses_no_end() {
    let env = TestEnv::with(options(1)).await;
    let modules = json!([
        bash("a", "sleep 1\necho one", json!({})),
        bash("b", "echo two", json!({})),
    ]);
    env.flow("u/alice/twice", json!({"modules": modules})).await;
    // A clean run, for the key its step `b` gets (keys are relative to their flow).
    let clean = env.run_flow("u/alice/twice", json!({})).await;
    let done = env.wait(&clean, Duration::from_secs(30)).await;
    assert_eq!(done["result"], json!("two"), "{done}");
    let sql = env.sql().await;
    let key_of_b: String = sql
        .query_one(
            "SELECT flow_step_key FROM jobs WHERE parent_job = $1::text::uuid AND flow_step_id = 'b'",
            &[&clean],
        )
        .await
        .unwrap()
        .get(0);

    // While `a` runs, a row with `b`'s key appears under the flow: when `a` ends, its
    // transition's INSERT of `b` finds it.
    let id = env.run_flow("u/alice/twice", json!({})).await;
    wait_for_step(&env, &id, "a", "running").await;
    sql.execute(
        "INSERT INTO jobs (id, workspace_id, job_kind, args, created_by, permissioned_as,
                           created_at, status, tag, parent_job, flow_step_key, flow_step_id)
         SELECT gen_random_uuid(), workspace_id, job_kind, args, created_by, permissioned_as,
                now(), 'queued', tag, parent_job, $2, 'b'
         FROM jobs WHERE parent_job = $1::text::uuid AND flow_step_id = 'a'",
        &[&id, &key_of_b],
    )
    .await
    .unwrap();
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_failed_with(&done, "InternalError");
    let message = done["result"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("enqueued already"), "{done}");
    let rows = step_rows(&env, &id).await;
    let statuses: Vec<(&str, &str)> = rows
        .iter()
        .map(|(module, _, status, _)| (module.as_str(), status.as_str()))
        .collect();
    // `a` ended once, as it ran; the stray `b` never ran.
    assert_eq!(statuses, [("a", "success"), ("b", "canceled")], "{rows:?}");
    assert_eq!(rows[0].3, 1, "step a ran more than once: {rows:?}");
}
