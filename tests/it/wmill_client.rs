//! Windmill's own Python client (`wmill` from PyPI, unchanged) works against Millrace: from the
//! outside with an explicit base URL and token, and from inside a Millrace job with the
//! `WM_TOKEN` / `BASE_INTERNAL_URL` the worker gives it.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{TestEnv, WS};

const ADD: &str = "def main(a: int, b: int):\n    return a + b\n";

/// The test client's Python (a venv with `wmill==1.850.0`); CI always sets it.
fn wmill_python() -> String {
    std::env::var("WMILL_PYTHON").unwrap_or_else(|_| {
        panic!(
            "WMILL_PYTHON is not set: it must name a Python with wmill==1.850.0 \
             (run `eval \"$(bash scripts/tools.sh)\"` first)"
        )
    })
}

/// Drives `wmill.Windmill` the way a user's program would; prints one JSON object.
/// argv: API base URL, token, workspace.
const CLIENT_PROGRAM: &str = r#"
import json, sys, time
import wmill

api, token, workspace = sys.argv[1], sys.argv[2], sys.argv[3]
c = wmill.Windmill(base_url=api, token=token, workspace=workspace)
out = {}

# Synchronous: posts to /jobs/run/p/..., then polls get_result_maybe.
out["sync"] = c.run_script_by_path("u/alice/add", args={"a": 1, "b": 2})

# Asynchronous: an id, then status and result by id.
job_id = c.run_script_by_path_async("u/alice/add", args={"a": 20, "b": 22})
out["async_id"] = job_id
statuses = []
deadline = time.time() + 60
while True:
    status = c.get_job_status(job_id)
    if not statuses or statuses[-1] != status:
        statuses.append(status)
    if status == "COMPLETED" or time.time() > deadline:
        break
    time.sleep(0.1)
out["statuses"] = statuses
out["async_result"] = c.get_result(job_id)
out["job"] = c.get_job(job_id)

# Scheduled 30 s ahead: waiting.
scheduled = c.run_script_by_path_async("u/alice/add", args={"a": 0, "b": 0}, scheduled_in_secs=30)
out["scheduled_id"] = scheduled
out["scheduled_status"] = c.get_job_status(scheduled)
out["cancel"] = c.cancel_job(scheduled, reason="done with it")
out["scheduled_after_cancel"] = c.get_job_status(scheduled)

# A failing script surfaces as an exception naming the error.
try:
    c.run_script_by_path("u/alice/fail", args={})
    out["failure"] = None
except Exception as e:
    out["failure"] = str(e)

print(json.dumps(out))
"#;

/// Runs a client program (argv: API base URL, token, workspace); returns the JSON it prints.
async fn run_client(python: &str, env: &TestEnv, program: &str) -> Value {
    let mut command = Command::new(python);
    command
        .arg("-c")
        .arg(program)
        .arg(&env.api_url)
        .arg(&env.token)
        .arg(WS)
        // Only the explicit arguments may point the client at the API.
        .env_remove("BASE_INTERNAL_URL")
        .env_remove("WM_BASE_URL")
        .env_remove("WM_TOKEN")
        .env_remove("WM_WORKSPACE")
        .env_remove("WM_JOB_ID")
        .env_remove("WM_JOB_PATH");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the wmill client program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the wmill program failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn the_windmill_python_client_runs_scripts_and_reads_jobs() {
    let python = wmill_python();
    let env = TestEnv::start().await;
    env.script("u/alice/add", "python3", ADD).await;
    env.script(
        "u/alice/fail",
        "python3",
        "def main():\n    raise KeyError('missing thing')\n",
    )
    .await;

    let got = run_client(&python, &env, CLIENT_PROGRAM).await;

    assert_eq!(got["sync"], json!(3), "{got}");

    let async_id = got["async_id"].as_str().unwrap_or_else(|| panic!("{got}"));
    uuid::Uuid::parse_str(async_id).expect("run_script_by_path_async returns the plain job id");
    assert_eq!(got["async_result"], json!(42), "{got}");
    let statuses = got["statuses"].as_array().unwrap();
    assert_eq!(statuses.last(), Some(&json!("COMPLETED")), "{got}");
    for status in statuses {
        assert!(
            ["WAITING", "RUNNING", "COMPLETED"].contains(&status.as_str().unwrap()),
            "{status}"
        );
    }
    assert_eq!(got["job"]["id"], json!(async_id));
    assert_eq!(got["job"]["type"], json!("CompletedJob"));
    // The client's view agrees with the API's.
    let job = env.job(async_id).await;
    assert_eq!(job["result"], json!(42));
    assert_eq!(job["args"], json!({"a": 20, "b": 22}));
    assert_eq!(job["created_by"], json!("alice"));

    assert_eq!(got["scheduled_status"], json!("WAITING"), "{got}");
    let scheduled = got["scheduled_id"].as_str().unwrap();
    assert_eq!(got["cancel"], json!(scheduled), "cancel answers the job id");
    assert_eq!(got["scheduled_after_cancel"], json!("COMPLETED"), "{got}");
    let job = env.job(scheduled).await;
    assert_eq!(job["canceled"], json!(true), "{job}");
    assert_eq!(job["canceled_reason"], json!("done with it"), "{job}");

    let failure = got["failure"]
        .as_str()
        .unwrap_or_else(|| panic!("a failing script did not raise: {got}"));
    assert!(failure.contains("was not successful"), "{failure}");
    assert!(failure.contains("KeyError"), "{failure}");
}

#[tokio::test]
async fn a_job_calls_back_with_wmill_and_its_own_token() {
    // The worker's own Python must have wmill; the test client's must too (CI sets both).
    let _ = wmill_python();
    let env = TestEnv::start().await;
    env.script("u/alice/add", "python3", ADD).await;
    env.script(
        "u/alice/caller",
        "python3",
        "import os\nimport wmill\n\n\
         def main():\n\
         \x20   assert os.environ['WM_TOKEN'] and os.environ['BASE_INTERNAL_URL']\n\
         \x20   return wmill.run_script_by_path(\"u/alice/add\", args={\"a\": 2, \"b\": 3})\n",
    )
    .await;

    let outer = env.run("u/alice/caller", json!({})).await;
    let done = env.wait(&outer, Duration::from_secs(90)).await;
    assert_eq!(
        done["success"],
        json!(true),
        "the calling job failed: {done}\n{}",
        env.job(&outer).await["logs"]
    );
    assert_eq!(done["result"], json!(5), "{done}");

    // The inner job was a real job, run as alice, and it finished before the outer one. (wmill
    // sends `parent_job`; only steps of a flow are hidden from the list by default.)
    let list = env
        .get(
            &format!("/api/w/{WS}/jobs/list?script_path_exact=u/alice/add"),
            &env.token,
        )
        .await
        .expect(200)
        .json();
    let inner = list.as_array().unwrap();
    assert_eq!(inner.len(), 1, "{list}");
    assert_eq!(inner[0]["result"], json!(5));
    assert_eq!(inner[0]["success"], json!(true));
    assert_eq!(inner[0]["created_by"], json!("alice"));
    let outer_job = env.job(&outer).await;
    let at = |job: &Value| {
        let text = job["completed_at"]
            .as_str()
            .unwrap_or_else(|| panic!("no completed_at: {job}"));
        chrono::DateTime::parse_from_rfc3339(text).unwrap()
    };
    assert!(
        at(&inner[0]) <= at(&outer_job),
        "the inner job ended after the outer one"
    );
}

/// Runs a flow the way a user's program does with `wmill`: an id from `run_flow_async`, then
/// `wait_job` polling until the result; a failing flow raises.
const FLOW_PROGRAM: &str = r#"
import json, sys
import wmill

api, token, workspace = sys.argv[1], sys.argv[2], sys.argv[3]
c = wmill.Windmill(base_url=api, token=token, workspace=workspace)
out = {}
job_id = c.run_flow_async("u/alice/double_all", args={"items": [1, 2, 3]})
out["id"] = job_id
out["result"] = c.wait_job(job_id, timeout=60, cleanup=False)
out["status"] = c.get_job_status(job_id)
out["job"] = c.get_job(job_id)
try:
    c.wait_job(c.run_flow_async("u/alice/failing_flow", args={}), timeout=60, cleanup=False)
    out["failure"] = None
except Exception as e:
    out["failure"] = str(e)
print(json.dumps(out))
"#;

#[tokio::test]
async fn the_windmill_python_client_runs_flows() {
    let python = wmill_python();
    let env = TestEnv::start().await;
    env.flow(
        "u/alice/double_all",
        json!({"modules": [{"id": "loop", "value": {"type": "forloopflow",
            "iterator": {"type": "javascript", "expr": "flow_input.items"}, "parallel": true,
            "modules": [{"id": "d", "value": {"type": "rawscript", "language": "python3",
                "content": "def main(x):\n    return x * 2\n",
                "input_transforms": {"x": {"type": "javascript", "expr": "flow_input.iter.value"}}}}]}}]}),
    )
    .await;
    env.flow(
        "u/alice/failing_flow",
        json!({"modules": [{"id": "f", "value": {"type": "rawscript", "language": "python3",
            "content": "def main():\n    raise ValueError('flow step broke')\n"}}]}),
    )
    .await;
    let got = run_client(&python, &env, FLOW_PROGRAM).await;
    assert_eq!(got["result"], json!([2, 4, 6]), "{got}");
    assert_eq!(got["status"], json!("COMPLETED"));
    assert_eq!(got["job"]["job_kind"], json!("flow"));
    assert_eq!(got["job"]["id"], got["id"]);
    let failure = got["failure"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(failure.contains("flow step broke"), "{failure}");
}
