//! The chaos run: real processes — two API replicas, two workers, nats-server with its file
//! store, PostgreSQL with `fsync` on — under a steady load of async webhooks while, in turn, a
//! worker is SIGKILLed mid-job, an API replica is SIGKILLed, nats-server and PostgreSQL are
//! restarted, PostgreSQL is frozen (SIGSTOP) and the jobs stream is filled to its limit. Every
//! job appends `start <id> <pid>` and `end <id> <pid>` to one ledger file, so that a job run
//! twice, or twice at once, is seen whatever the database says.
//!
//! CI runs a short version; `scripts/chaos.sh` the long one (≥ 5,000 jobs, a 45 s freeze), with
//! the sizes below taken from the environment. The table it prints is in docs/reliability.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{postmaster_pid, signal_tree, Options, TestEnv, WS};

/// The run's sizes: `CHAOS_JOBS` accepted jobs at least, offered at `CHAOS_RATE` per second,
/// PostgreSQL frozen for `CHAOS_FREEZE_SECS`, `CHAOS_GAP_SECS` of calm after each fault, and a
/// jobs stream of `CHAOS_STREAM_MSGS` messages at most.
struct Sizes {
    jobs: usize,
    rate: u64,
    freeze: Duration,
    gap: Duration,
    stream_msgs: u64,
}

impl Sizes {
    fn from_env() -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            jobs: var("CHAOS_JOBS", 300) as usize,
            rate: var("CHAOS_RATE", 40),
            freeze: Duration::from_secs(var("CHAOS_FREEZE_SECS", 5)),
            gap: Duration::from_secs(var("CHAOS_GAP_SECS", 2)),
            stream_msgs: var("CHAOS_STREAM_MSGS", 150),
        }
    }
}

/// What the callers saw.
#[derive(Default)]
struct Answers {
    accepted: Vec<String>,
    /// 429/503 with `Retry-After`: the API said when to come back.
    refused: usize,
    /// Any other 4xx (none expected: every request is valid).
    client_errors: Vec<String>,
    /// 5xx without `Retry-After`.
    unexplained: Vec<String>,
    /// Of `refused`, those for a full job queue.
    queue_full: usize,
    /// No answer: the replica was down (connection refused or cut).
    unanswered: usize,
    /// No answer within the client's 30 s: a hang.
    timed_out: usize,
}

/// The ledger's view of one job: its attempts, by process id, with the worker that ran each one
/// to its end, and whether one started while another held the job's lock (a run twice at the
/// same time).
#[derive(Default)]
struct Runs {
    /// (pid, the pid of its worker once it wrote its end)
    attempts: Vec<(u32, Option<u32>)>,
    overlapped: bool,
}

impl Runs {
    fn completed(&self) -> usize {
        self.attempts.iter().filter(|a| a.1.is_some()).count()
    }

    /// Completed more than once, though every completion but the last ran on a worker that
    /// was not killed: the case requirement 1 rules out. (A worker SIGKILLed after its script
    /// ended but before recording the end leaves the job to run again: at-least-once.)
    fn completed_twice_alive(&self, killed_workers: &[u32]) -> bool {
        let ends: Vec<u32> = self.attempts.iter().filter_map(|a| a.1).collect();
        ends.len() > 1
            && ends[..ends.len() - 1]
                .iter()
                .any(|worker| !killed_workers.contains(worker))
    }
}

fn read_ledger(path: &std::path::Path) -> HashMap<String, Runs> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs: HashMap<String, Runs> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let (what, id, pid) = match parts[..] {
            [what, id, pid, ..] => (what, id, pid),
            _ => continue,
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let entry = runs.entry(id.to_string()).or_default();
        match what {
            "start" => entry.attempts.push((pid, None)),
            "end" => {
                let worker = parts.get(3).and_then(|w| w.parse().ok()).unwrap_or(0);
                if let Some(a) = entry.attempts.iter_mut().find(|a| a.0 == pid) {
                    a.1 = Some(worker);
                }
            }
            "overlap" => entry.overlapped = true,
            _ => {}
        }
    }
    runs
}

/// The load: `callers` tasks sharing `rate` requests per second over the live replicas, until
/// `stop` is set.
fn spawn_load(
    env: &TestEnv,
    urls: Arc<RwLock<Vec<String>>>,
    answers: Arc<Mutex<Answers>>,
    stop: Arc<AtomicBool>,
    rate: u64,
    ledger: String,
) -> Vec<tokio::task::JoinHandle<()>> {
    const CALLERS: u64 = 8;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    (0..CALLERS)
        .map(|caller| {
            let (http, urls, answers, stop) =
                (http.clone(), urls.clone(), answers.clone(), stop.clone());
            let token = env.token.clone();
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let period = Duration::from_micros(1_000_000 * CALLERS / rate.max(1));
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = caller as usize;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let url = {
                        let urls = urls.read().unwrap();
                        urls[n % urls.len()].clone()
                    };
                    let res = http
                        .post(format!("{url}/api/w/{WS}/jobs/run/p/u/alice/ledger"))
                        .bearer_auth(&token)
                        .json(&json!({"ledger": ledger}))
                        .send()
                        .await;
                    let answer = match res {
                        Err(e) if e.is_timeout() => {
                            answers.lock().unwrap().timed_out += 1;
                            continue;
                        }
                        Err(_) => None,
                        Ok(res) => {
                            let status = res.status().as_u16();
                            let retry_after = res.headers().contains_key("retry-after");
                            Some((status, retry_after, res.text().await.unwrap_or_default()))
                        }
                    };
                    let mut a = answers.lock().unwrap();
                    match answer {
                        None => a.unanswered += 1,
                        Some((201, _, id)) => a.accepted.push(id),
                        Some((429 | 503, true, body)) => {
                            a.refused += 1;
                            a.queue_full += usize::from(body.contains("queue is full"));
                        }
                        Some((status @ 500.., _, body)) => {
                            a.unexplained.push(format!("{status} {body}"))
                        }
                        Some((status, _, body)) => a.client_errors.push(format!("{status} {body}")),
                    }
                }
            })
        })
        .collect()
}

// Several threads: the faults block (waiting for PostgreSQL to restart, a worker to drain)
// while the load goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_loses_no_job_and_runs_none_twice_at_once() {
    let sizes = Sizes::from_env();
    let stream_limit = sizes.stream_msgs.to_string();
    let mut env = TestEnv::with(Options {
        workers: 2,
        durable_postgres: true,
        shared_env: vec![("JOBS_STREAM_MAX_MSGS".into(), stream_limit)],
        ..Default::default()
    })
    .await;
    let second = env.add_api().await;
    env.script(
        "u/alice/ledger",
        "bash",
        // The lock is held for as long as any process of the run lives: a second run of the
        // job that starts meanwhile cannot take it. (The first run's user created the file;
        // another user may only read it, which is enough for a lock.)
        "ledger=\"$1\"\nlock=\"$ledger.locks/$WM_JOB_ID\"\n: >> \"$lock\" 2>/dev/null\n\
         exec 9<\"$lock\"\nflock -n 9 || echo \"overlap $WM_JOB_ID $$\" >> \"$ledger\"\n\
         echo \"start $WM_JOB_ID $$\" >> \"$ledger\"\nsleep 0.2\n\
         echo \"end $WM_JOB_ID $$ $PPID\" >> \"$ledger\"\n",
    )
    .await;
    let ledger = env.scratch().join("ledger");
    std::fs::write(&ledger, "").unwrap();
    let locks = env.scratch().join("ledger.locks");
    std::fs::create_dir(&locks).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o777)).unwrap();
    }

    let urls = Arc::new(RwLock::new(vec![env.api_url.clone(), second]));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load = spawn_load(
        &env,
        urls.clone(),
        answers.clone(),
        stop.clone(),
        sizes.rate,
        ledger.display().to_string(),
    );
    let mut faults: Vec<(String, Duration)> = Vec::new();
    let mut note = |what: &str, since: Instant| {
        faults.push((what.to_string(), since.elapsed()));
    };
    let calm = || tokio::time::sleep(sizes.gap);
    calm().await;

    // A worker SIGKILLed mid-job, and a new one in its place.
    let t = Instant::now();
    let killed_workers = vec![env.worker_pid(0)];
    env.kill_worker(0);
    env.add_worker(&[]);
    note("SIGKILL a worker mid-job", t);
    calm().await;

    // An API replica SIGKILLed; its callers see refused connections until a new one is up.
    let t = Instant::now();
    env.kill_api(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let third = env.add_api().await;
    urls.write().unwrap()[1] = third;
    note("SIGKILL an API replica (back after 1 s)", t);
    calm().await;

    let t = Instant::now();
    env.nats.restart().await.unwrap();
    note("restart nats-server (SIGKILL)", t);
    calm().await;

    let t = Instant::now();
    env.pg.stop();
    env.pg.restart().unwrap();
    note("restart PostgreSQL (immediate stop)", t);
    calm().await;

    let t = Instant::now();
    let postmaster = postmaster_pid(&env);
    signal_tree(postmaster, libc::SIGSTOP);
    tokio::time::sleep(sizes.freeze).await;
    signal_tree(postmaster, libc::SIGCONT);
    note(
        &format!("freeze PostgreSQL {} s (SIGSTOP)", sizes.freeze.as_secs()),
        t,
    );
    calm().await;

    // Fill the jobs stream: the workers drain and stop (SIGTERM), the load goes on until the
    // API refuses for a full queue, then new workers start.
    let t = Instant::now();
    let full_before = answers.lock().unwrap().queue_full;
    let workers = env.worker_count();
    for index in 0..workers {
        if env.worker_alive(index) {
            env.terminate_worker(index);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while answers.lock().unwrap().queue_full == full_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let filled = answers.lock().unwrap().queue_full > full_before;
    env.add_worker(&[]);
    env.add_worker(&[]);
    note(
        if filled {
            "fill the jobs stream to its limit (workers stopped)"
        } else {
            "fill the jobs stream: NOT REFUSED within 120 s"
        },
        t,
    );
    calm().await;

    // The load goes on until enough jobs were accepted.
    let deadline = Instant::now() + Duration::from_secs(600);
    while answers.lock().unwrap().accepted.len() < sizes.jobs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let load_time = started.elapsed();

    // Every accepted job must end; wait for them.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let ids: Vec<uuid::Uuid> = answers
        .accepted
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    let sql = env.sql().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (succeeded, failed) = loop {
        let rows = sql
            .query(
                "SELECT id, status, result::text FROM jobs WHERE id = ANY($1) \
                 AND status IN ('success', 'failure', 'canceled')",
                &[&ids],
            )
            .await
            .unwrap();
        if rows.len() == ids.len() || Instant::now() > deadline {
            let succeeded = rows
                .iter()
                .filter(|r| r.get::<_, &str>(1) == "success")
                .count();
            let failed: Vec<String> = rows
                .iter()
                .filter(|r| r.get::<_, &str>(1) != "success")
                .map(|r| {
                    format!(
                        "{}: {:?}",
                        r.get::<_, uuid::Uuid>(0),
                        r.get::<_, Option<&str>>(2)
                    )
                })
                .collect();
            break (succeeded, failed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let drain_time = started.elapsed() - load_time;
    let runs = read_ledger(&ledger);
    let lost = ids.len() - succeeded - failed.len();
    let never_ran = answers
        .accepted
        .iter()
        .filter(|id| runs.get(*id).is_none_or(|r| r.completed() == 0))
        .count();
    let concurrent: Vec<&String> = runs
        .iter()
        .filter(|(_, r)| r.overlapped)
        .map(|(id, _)| id)
        .collect();
    let twice: Vec<&String> = runs
        .iter()
        .filter(|(_, r)| r.completed_twice_alive(&killed_workers))
        .map(|(id, _)| id)
        .collect();
    let twice_after_death = runs
        .values()
        .filter(|r| r.completed() > 1 && !r.completed_twice_alive(&killed_workers))
        .count();
    let restarted: usize = runs.values().filter(|r| r.attempts.len() > 1).count();

    let mut table = String::new();
    table.push_str("| fault | took |\n|---|---|\n");
    for (what, took) in &faults {
        table.push_str(&format!("| {what} | {:.1} s |\n", took.as_secs_f64()));
    }
    table.push_str(&format!(
        "\n| outcome | count |\n|---|---|\n\
         | accepted (201) | {} |\n\
         | refused with Retry-After (429/503) | {} |\n\
         | of which for a full jobs queue | {} |\n\
         | unanswered (replica down) | {} |\n\
         | **no answer within 30 s** | **{}** |\n\
         | other 4xx | {} |\n\
         | completed (success) | {succeeded} |\n\
         | failed or canceled | {} |\n\
         | **lost** (accepted, never completed) | **{lost}** |\n\
         | accepted, no finished run in the ledger | {never_ran} |\n\
         | started again after a fault (worker died) | {restarted} |\n\
         | **run twice concurrently** | **{}** |\n\
         | **completed twice** (its first worker alive) | **{}** |\n\
         | completed twice, its first worker SIGKILLed after the script's end | {twice_after_death} |\n\
         | **5xx without Retry-After** | **{}** |\n\
         \nload {:.0} s at {} requests/s offered, drain {:.0} s\n",
        answers.accepted.len(),
        answers.refused,
        answers.queue_full,
        answers.unanswered,
        answers.timed_out,
        answers.client_errors.len(),
        failed.len(),
        concurrent.len(),
        twice.len(),
        answers.unexplained.len(),
        load_time.as_secs_f64(),
        sizes.rate,
        drain_time.as_secs_f64(),
    ));
    println!("\nchaos run\n\n{table}");

    assert!(filled, "the full jobs stream was never refused\n{table}");
    assert!(answers.accepted.len() >= sizes.jobs, "{table}");
    assert_eq!(lost, 0, "jobs lost\n{table}");
    assert!(failed.is_empty(), "jobs failed: {failed:?}\n{table}");
    assert_eq!(never_ran, 0, "accepted jobs that never ran\n{table}");
    assert!(
        concurrent.is_empty(),
        "run concurrently: {concurrent:?}\n{table}"
    );
    assert!(twice.is_empty(), "completed twice: {twice:?}\n{table}");
    assert!(
        answers.unexplained.is_empty(),
        "5xx without Retry-After: {:?}\n{table}",
        answers.unexplained
    );
    assert_eq!(answers.timed_out, 0, "requests hung\n{table}");
    assert!(
        answers.client_errors.is_empty(),
        "4xx: {:?}\n{table}",
        answers.client_errors
    );
}
