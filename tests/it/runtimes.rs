//! Every language's result/log/error contract (SPEC §5), the job environment and limits —
//! each test twice: with warm runtimes (the default) and with `WORKER_WARM=0`.

use std::time::Duration;

use serde_json::json;

use crate::common::{Options, TestEnv, WS};

/// Runs each named test (an `async fn(warm: bool)`) as `<name>::warm` and `<name>::cold`.
macro_rules! warm_and_cold {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn warm() {
                super::$name(true).await
            }
            #[tokio::test]
            async fn cold() {
                super::$name(false).await
            }
        }
    )*};
}

warm_and_cold!(
    python_results_errors_and_arguments,
    bash_results_and_errors,
    python_signatures_of_every_shape,
    typescript_on_bun_and_deno,
    a_missing_runtime_is_a_clear_job_error,
    jobs_get_their_environment_a_timeout_and_a_clean_directory,
    output_and_results_past_their_caps_fail_the_job_and_the_worker_goes_on,
    live_logs_stop_at_max_log_size,
    every_language_times_out_and_is_canceled,
);

/// `options` with warm runtimes on or off.
pub fn mode(warm: bool, mut options: Options) -> Options {
    let value = if warm { "1" } else { "0" };
    options
        .worker_env
        .push(("WORKER_WARM".into(), value.into()));
    options
}

/// One worker, warm or cold.
pub async fn env_in(warm: bool) -> TestEnv {
    TestEnv::with(mode(
        warm,
        Options {
            workers: 1,
            ..Default::default()
        },
    ))
    .await
}

async fn python_results_errors_and_arguments(warm: bool) {
    let env = env_in(warm).await;
    env.script(
        "u/alice/py",
        "python3",
        "def main(a: int, b: int = 10, c=None):\n    print('adding', a, b)\n    return {'sum': a + b, 'c': c}\n",
    )
    .await;
    let id = env
        .run("u/alice/py", json!({"a": 1, "ignored": true}))
        .await;
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(done["result"], json!({"sum": 11, "c": null}));
    assert_eq!(env.job(&id).await["logs"], json!("adding 1 10\n"));

    let missing = env.run("u/alice/py", json!({"b": 1})).await;
    let done = env.wait(&missing, Duration::from_secs(20)).await;
    assert_eq!(done["success"], json!(false));
    assert!(
        done["result"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a"),
        "{done}"
    );

    env.script(
        "u/alice/boom",
        "python3",
        "def main():\n    raise ValueError('bad value')\n",
    )
    .await;
    let id = env.run("u/alice/boom", json!({})).await;
    let error = &env.wait(&id, Duration::from_secs(20)).await["result"]["error"];
    assert_eq!(error["name"], json!("ValueError"));
    assert_eq!(error["message"], json!("bad value"));
    assert!(error["stack"].as_str().unwrap().contains("Traceback"));

    // What runs after main — threads, exit handlers — is the job's too: its output, and an
    // exit status it changes.
    env.script(
        "u/alice/after",
        "python3",
        "import atexit, sys, threading, time\n\
         def late():\n    time.sleep(0.05)\n    print('a thread after main', flush=True)\n\
         def main(code: int = 0):\n    atexit.register(print, 'exit handler ran')\n\
         \x20   threading.Thread(target=late).start()\n    if code:\n        sys.exit(code)\n\
         \x20   return 'done'\n",
    )
    .await;
    let id = env.run("u/alice/after", json!({})).await;
    assert_eq!(
        env.wait(&id, Duration::from_secs(20)).await["result"],
        json!("done")
    );
    let logs = env.job(&id).await["logs"].as_str().unwrap().to_owned();
    assert!(
        logs.contains("a thread after main\n") && logs.contains("exit handler ran\n"),
        "{logs:?}"
    );
    let id = env.run("u/alice/after", json!({"code": 3})).await;
    exited_with_3(&env.wait(&id, Duration::from_secs(20)).await, "python3");
    // A process the script forks ends in its own time; the job ends with the script's.
    env.script(
        "u/alice/forks",
        "python3",
        "import os, time\n\
         def main():\n    if os.fork() == 0:\n        print('a forked child', flush=True)\n\
         \x20       return 'from the child'\n    time.sleep(0.3)\n    return 'from the parent'\n",
    )
    .await;
    let id = env.run("u/alice/forks", json!({})).await;
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(done["result"], json!("from the parent"), "{done}");

    for (value, source) in [
        (json!(null), "None"),
        (json!("s"), "'s'"),
        (json!([1, "x"]), "[1, 'x']"),
    ] {
        env.script(
            "u/alice/value",
            "python3",
            &format!("def main():\n    return {source}\n"),
        )
        .await;
        assert_eq!(env.run_ok("u/alice/value", json!({})).await, value);
    }
}

/// A job whose process exited with status 3 after its script returned.
fn exited_with_3(done: &serde_json::Value, lang: &str) {
    assert_eq!(done["success"], json!(false), "{lang}: {done}");
    let message = done["result"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("exited with exit status: 3"),
        "{lang}: {done}"
    );
}

async fn bash_results_and_errors(warm: bool) {
    let env = env_in(warm).await;
    env.script(
        "u/alice/sh",
        "bash",
        "name=\"$1\"\ncount=\"$2\"\necho \"hello $name\"\necho \"count $count\"",
    )
    .await;
    assert_eq!(
        env.run_ok("u/alice/sh", json!({"name": "ada", "count": 3}))
            .await,
        json!("count 3")
    );
    env.script(
        "u/alice/json",
        "bash",
        "echo '{\"ok\": [1, 2]}' > result.json\necho printed",
    )
    .await;
    assert_eq!(
        env.run_ok("u/alice/json", json!({})).await,
        json!({"ok": [1, 2]})
    );
    env.script("u/alice/fail", "bash", "echo 'about to fail'\nexit 7")
        .await;
    let id = env.run("u/alice/fail", json!({})).await;
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(done["success"], json!(false));
    let message = done["result"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains('7') && message.contains("about to fail"),
        "{message}"
    );
}

/// Keyword-only parameters, positional-only ones, and a decorated `main` get their arguments as
/// Python itself would name them.
async fn python_signatures_of_every_shape(warm: bool) {
    let env = env_in(warm).await;
    env.script(
        "u/alice/shapes",
        "python3",
        "def main(a, /, b, *rest, k, m=5):\n    return [b, k, m, list(rest)]\n",
    )
    .await;
    // `a` is positional-only: no argument can name it, so the call itself fails in `main`.
    let id = env.run("u/alice/shapes", json!({"b": 1, "k": 2})).await;
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(
        done["result"]["error"]["name"],
        json!("TypeError"),
        "{done}"
    );

    env.script(
        "u/alice/kwonly",
        "python3",
        "def main(b, *, k, m=5):\n    return [b, k, m]\n",
    )
    .await;
    assert_eq!(
        env.run_ok("u/alice/kwonly", json!({"b": 1, "k": 2, "x": 0}))
            .await,
        json!([1, 2, 5])
    );
    let id = env.run("u/alice/kwonly", json!({"b": 1})).await;
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(done["result"]["error"]["name"], json!("MissingArguments"));
    assert_eq!(
        done["result"]["error"]["message"],
        json!("missing required argument(s): k")
    );

    env.script(
        "u/alice/decorated",
        "python3",
        "import functools\n\
         def logged(f):\n    @functools.wraps(f)\n    def inner(*a, **k):\n        print('called')\n        return f(*a, **k)\n    return inner\n\
         @logged\n\
         def main(x, y=2):\n    return x * y\n",
    )
    .await;
    // The wrapper's own `*a, **k` would take every argument; the signature it wraps decides.
    assert_eq!(
        env.run_ok("u/alice/decorated", json!({"x": 4, "z": 1}))
            .await,
        json!(8)
    );
}

async fn typescript_on_bun_and_deno(warm: bool) {
    let env = env_in(warm).await;
    for lang in ["bun", "deno"] {
        let path = format!("u/alice/ts_{lang}");
        env.script(
            &path,
            lang,
            "export async function main(x: number, y = 2) {\n  console.log('x is', x);\n  return { total: x + y };\n}\n",
        )
        .await;
        let id = env.run(&path, json!({"x": 40})).await;
        let done = env.wait(&id, Duration::from_secs(60)).await;
        assert_eq!(done["result"], json!({"total": 42}), "{lang}: {done}");
        assert!(
            env.job(&id).await["logs"]
                .as_str()
                .unwrap()
                .contains("x is 40"),
            "{lang}"
        );

        let failing = format!("u/alice/ts_fail_{lang}");
        env.script(
            &failing,
            lang,
            "process.on('exit', (code) => console.log('exit handler ran with', code));\n\
             export async function main() {\n  throw new TypeError('nope');\n}\n",
        )
        .await;
        let id = env.run(&failing, json!({})).await;
        let done = env.wait(&id, Duration::from_secs(60)).await;
        assert_eq!(
            done["result"]["error"]["name"],
            json!("TypeError"),
            "{lang}: {done}"
        );
        assert_eq!(done["result"]["error"]["message"], json!("nope"), "{lang}");
        // The script's exit handlers run when its job fails, as under Node.
        let logs = env.job(&id).await["logs"].as_str().unwrap().to_owned();
        assert!(logs.contains("exit handler ran with 1"), "{lang}: {logs}");

        // What runs after main is the job's too: its output, and an exit code it sets (under
        // deno through deno's own API, without the Node layer, and through `process`).
        let after = format!("u/alice/ts_after_{lang}");
        let set_code = match lang {
            "deno" => "Deno.exitCode = code",
            _ => "(globalThis as any).process.exitCode = code",
        };
        let unload = match lang {
            "deno" => {
                "globalThis.addEventListener('unload', () => console.log('unload listener ran'));"
            }
            _ => "",
        };
        env.script(
            &after,
            lang,
            &format!(
                "export function main(code = 0) {{\n  {unload}\n  setTimeout(() => {{\n    \
                 console.log('a timer after main');\n    if (code) {set_code};\n  }}, 50);\n  \
                 return 'done';\n}}\n"
            ),
        )
        .await;
        let id = env.run(&after, json!({})).await;
        let done = env.wait(&id, Duration::from_secs(60)).await;
        assert_eq!(done["result"], json!("done"), "{lang}: {done}");
        let logs = env.job(&id).await["logs"].as_str().unwrap().to_owned();
        assert!(logs.contains("a timer after main\n"), "{lang}: {logs:?}");
        if lang == "deno" {
            assert!(logs.contains("unload listener ran\n"), "{logs:?}");
        }
        let id = env.run(&after, json!({"code": 3})).await;
        exited_with_3(&env.wait(&id, Duration::from_secs(60)).await, lang);

        let id = env.run(&path, json!({})).await;
        let done = env.wait(&id, Duration::from_secs(60)).await;
        assert_eq!(
            done["result"]["error"]["name"],
            json!("MissingArguments"),
            "{lang}: {done}"
        );

        // A rest parameter receives the arguments main does not name, like **kwargs.
        let rest = format!("u/alice/ts_rest_{lang}");
        env.script(
            &rest,
            lang,
            "export function main(a: number, ...more: any[]) {\n  return { a, more };\n}\n",
        )
        .await;
        let id = env.run(&rest, json!({"a": 1, "b": 2, "c": "x"})).await;
        let done = env.wait(&id, Duration::from_secs(60)).await;
        assert_eq!(
            done["result"],
            json!({"a": 1, "more": [{"b": 2, "c": "x"}]}),
            "{lang}: {done}"
        );
    }
}

async fn a_missing_runtime_is_a_clear_job_error(warm: bool) {
    let env = TestEnv::with(mode(
        warm,
        Options {
            worker_env: vec![("WORKER_DENO".into(), "/nonexistent/deno".into())],
            workers: 1,
            ..Default::default()
        },
    ))
    .await;
    env.script("u/alice/d", "deno", "export function main() { return 1 }")
        .await;
    let id = env.run("u/alice/d", json!({})).await;
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(done["success"], json!(false));
    assert_eq!(
        done["result"]["error"]["name"],
        json!("RuntimeNotInstalled")
    );
    assert!(done["result"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("WORKER_DENO"));
}

async fn jobs_get_their_environment_a_timeout_and_a_clean_directory(warm: bool) {
    let env = env_in(warm).await;
    env.script(
        "u/alice/env",
        "python3",
        "import os\ndef main():\n    return {k: os.environ.get(k) for k in ['WM_WORKSPACE', 'WM_JOB_ID', 'WM_JOB_PATH', 'BASE_INTERNAL_URL', 'WM_BASE_URL', 'DATABASE_URL', 'SUPERADMIN_SECRET', 'NATS_URL']} | {'token': len(os.environ.get('WM_TOKEN', '')), 'cwd': os.getcwd()}\n",
    )
    .await;
    let id = env.run("u/alice/env", json!({})).await;
    let result = env.wait(&id, Duration::from_secs(20)).await["result"].clone();
    assert_eq!(result["WM_WORKSPACE"], json!(WS));
    assert_eq!(result["WM_JOB_ID"], json!(id));
    assert_eq!(result["WM_JOB_PATH"], json!("u/alice/env"));
    assert_eq!(result["BASE_INTERNAL_URL"], json!(env.api_url));
    assert_eq!(result["WM_BASE_URL"], json!(env.api_url));
    for secret in ["DATABASE_URL", "SUPERADMIN_SECRET", "NATS_URL"] {
        assert_eq!(result[secret], json!(null), "{secret} leaked into the job");
    }
    assert!(result["token"].as_u64().unwrap() >= 32);
    // The directory is cleared just after the result is announced.
    let cwd = std::path::Path::new(result["cwd"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cwd.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!cwd.exists(), "the job directory {cwd:?} was left behind");

    env.script_with("u/alice/slow", "bash", "sleep 30", json!({"timeout": 1}))
        .await;
    let id = env.run("u/alice/slow", json!({})).await;
    let started = std::time::Instant::now();
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(done["result"]["error"]["name"], json!("Timeout"), "{done}");
}

async fn output_and_results_past_their_caps_fail_the_job_and_the_worker_goes_on(warm: bool) {
    let env = crate::common::TestEnv::with(mode(
        warm,
        crate::common::Options {
            workers: 1,
            worker_env: vec![
                ("MAX_OUTPUT_SIZE".into(), "8388608".into()),
                ("MAX_RESULT_SIZE".into(), "1048576".into()),
            ],
            ..Default::default()
        },
    ))
    .await;
    // A job first, so that the worker's memory is what it holds once at work.
    env.script("u/alice/warm", "bash", "echo warm\n").await;
    env.run_ok("u/alice/warm", json!({})).await;
    let baseline = env.worker_rss_kib(0);
    // One 3 GB line: the job is stopped at the cap, within seconds.
    env.script(
        "u/alice/flood",
        "bash",
        "head -c 3000000000 /dev/zero | tr '\\0' a\n",
    )
    .await;
    let started = std::time::Instant::now();
    let id = env.run("u/alice/flood", serde_json::json!({})).await;
    let done = env.wait(&id, std::time::Duration::from_secs(30)).await;
    assert_eq!(done["success"], serde_json::json!(false));
    assert_eq!(
        done["result"]["error"]["name"],
        serde_json::json!("OutputTooLarge"),
        "{done}"
    );
    assert!(done["result"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("MAX_OUTPUT_SIZE"));
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // And the worker is back to idle: no CPU spent on it, no memory kept.
    env.assert_worker_idle(0, baseline).await;
    // A result file over MAX_RESULT_SIZE is refused.
    env.script(
        "u/alice/huge",
        "bash",
        "head -c 2000000 /dev/zero | tr '\\0' a > result.json\n",
    )
    .await;
    let id = env.run("u/alice/huge", serde_json::json!({})).await;
    let done = env.wait(&id, std::time::Duration::from_secs(30)).await;
    assert_eq!(
        done["result"]["error"]["name"],
        serde_json::json!("ResultTooLarge"),
        "{done}"
    );
    // Failing the same way every time, it is not run again.
    assert_eq!(attempts_of(&env, &id).await, 1);
    // An argument vector past its cap: the job fails naming it, and is not run again either.
    env.script("u/alice/far", "bash", "x=\"${1001}\"\necho \"[$x]\"\n")
        .await;
    let id = env.run("u/alice/far", serde_json::json!({})).await;
    let done = env.wait(&id, std::time::Duration::from_secs(30)).await;
    assert_eq!(
        done["result"]["error"]["name"],
        serde_json::json!("TooManyArguments"),
        "{done}"
    );
    let message = done["result"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("at most 1000"), "{done}");
    assert_eq!(attempts_of(&env, &id).await, 1);
    // The one-line script that used to abort the worker, then a normal job on the same worker.
    env.script(
        "u/alice/args",
        "bash",
        "x=\"$100000000000\"\necho \"[$x]\"\n",
    )
    .await;
    assert_eq!(
        env.run_ok("u/alice/args", serde_json::json!({})).await,
        serde_json::json!("[00000000000]")
    );
    env.script("u/alice/after", "bash", "echo fine\n").await;
    assert_eq!(
        env.run_ok("u/alice/after", serde_json::json!({})).await,
        serde_json::json!("fine")
    );
}

async fn live_logs_stop_at_max_log_size(warm: bool) {
    use futures::StreamExt;
    let env = TestEnv::with(mode(
        warm,
        Options {
            workers: 1,
            worker_env: vec![("MAX_LOG_SIZE".into(), "4096".into())],
            ..Default::default()
        },
    ))
    .await;
    // About 1 MB of output, well under MAX_OUTPUT_SIZE.
    env.script(
        "u/alice/chatty",
        "bash",
        "for i in $(seq 1 20000); do echo \"line $i of a job that talks a lot\"; done\n",
    )
    .await;
    let id = uuid::Uuid::new_v4();
    let live = env.nats_as("api").await;
    let mut logs = live
        .subscribe(format!("millrace.job.{id}.log"))
        .await
        .unwrap();
    env.post(
        &format!("/api/w/{WS}/jobs/run/p/u/alice/chatty?job_id={id}"),
        &env.token,
        json!({}),
    )
    .await
    .expect(201);
    env.wait(&id.to_string(), Duration::from_secs(60)).await;
    let mut received = 0;
    let mut last = String::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), logs.next()).await {
        received += msg.payload.len();
        last = String::from_utf8_lossy(&msg.payload).into_owned();
    }
    assert!(received >= 4096, "only {received} bytes of live logs");
    assert!(
        received < 4096 + 64 * 1024 + 100,
        "{received} bytes of live logs past the cap"
    );
    assert!(last.contains("live logs end at 4096 bytes"), "{last}");
}

/// A job of every language stops at its timeout and at a cancel, and leaves nothing running.
async fn every_language_times_out_and_is_canceled(warm: bool) {
    let env = env_in(warm).await;
    let sleeping = [
        ("python3", "import time\ndef main():\n    time.sleep(60)\n"),
        (
            "bun",
            "export async function main() {\n  await new Promise((r) => setTimeout(r, 60000));\n}\n",
        ),
        (
            "deno",
            "export async function main() {\n  await new Promise((r) => setTimeout(r, 60000));\n}\n",
        ),
        ("bash", "sleep 60\n"),
    ];
    for (lang, code) in sleeping {
        let path = format!("u/alice/sleep_{lang}");
        env.script_with(&path, lang, code, json!({"timeout": 2}))
            .await;
        let id = env.run(&path, json!({})).await;
        let done = env.wait(&id, Duration::from_secs(30)).await;
        assert_eq!(
            done["result"]["error"]["name"],
            json!("Timeout"),
            "{lang}: {done}"
        );

        let id = env.run(&path, json!({})).await;
        crate::common::eventually(Duration::from_secs(30), "the job runs", async || {
            env.job(&id).await["running"] == json!(true)
        })
        .await;
        env.cancel(&id).await;
        let done = env.wait(&id, Duration::from_secs(30)).await;
        assert_eq!(done["success"], json!(false), "{lang}: {done}");
        assert_eq!(
            env.job(&id).await["canceled"],
            json!(true),
            "{lang}: {done}"
        );
    }
}

/// How many times a job was started, from the database.
async fn attempts_of(env: &TestEnv, id: &str) -> i32 {
    let sql = env.sql().await;
    let row = sql
        .query_one(
            "SELECT attempts FROM jobs WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    row.get(0)
}
