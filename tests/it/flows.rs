//! Flows end to end (SPEC §5 "Flows", §7): definitions and versions, every module type and
//! option, webhooks in every mode, permissions, events and cancellation.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, Options, TestEnv, WS};
use crate::events::{kinds, Event, Events};
use crate::run_stream::read_frames;

pub fn bash(id: &str, content: &str, inputs: Value) -> Value {
    json!({"id": id, "value": {"type": "rawscript", "language": "bash", "content": content, "input_transforms": inputs}})
}

fn python(id: &str, content: &str, inputs: Value) -> Value {
    json!({"id": id, "value": {"type": "rawscript", "language": "python3", "content": content, "input_transforms": inputs}})
}

/// Asserts that a flow (or job) failed with the error `name`.
pub fn assert_failed_with(done: &Value, name: &str) {
    assert_eq!(done["success"], json!(false), "{done}");
    assert_eq!(done["result"]["error"]["name"], json!(name), "{done}");
}

pub fn js(expr: &str) -> Value {
    json!({"type": "javascript", "expr": expr})
}

fn fixed(value: Value) -> Value {
    json!({"type": "static", "value": value})
}

/// A python step returning `x`.
fn echo(id: &str, x: Value) -> Value {
    python(id, "def main(x=None):\n    return x\n", json!({"x": x}))
}

pub async fn steps_of(env: &TestEnv, flow: &str) -> Vec<Value> {
    let list = env
        .get(
            &format!("/api/w/{WS}/jobs/list?include_flow_steps=true&per_page=1000"),
            &env.token,
        )
        .await
        .expect(200)
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|j| j["parent_job"] == json!(flow))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_flow_of_steps_in_every_language_passes_results_along() {
    let env = TestEnv::start().await;
    let ts = "export async function main(x: number) { return x * 3; }";
    env.flow(
        "u/alice/chain",
        json!({"modules": [
            python("a", "def main(n):\n    return n + 1\n", json!({"n": js("flow_input.n")})),
            bash("b", "x=\"$1\"\necho $((x * 10))", json!({"x": js("previous_result")})),
            {"id": "c", "value": {"type": "rawscript", "language": "bun", "content": ts,
              "input_transforms": {"x": js("Number(results.b)")}}},
            {"id": "d", "value": {"type": "rawscript", "language": "deno", "content": ts,
              "input_transforms": {"x": js("previous_result")}}},
            python("e", "import os\ndef main(a, b, d):\n    return {'a': a, 'b': b, 'd': d, 'env': [os.environ[k] for k in ('WM_FLOW_PATH', 'WM_FLOW_STEP_ID', 'WM_FLOW_JOB_ID', 'WM_ROOT_FLOW_JOB_ID', 'WM_JOB_PATH')]}\n",
                   json!({"a": js("results.a"), "b": js("results.b"), "d": js("results.d")})),
        ]}),
    )
    .await;
    let id = env.run_flow("u/alice/chain", json!({"n": 1})).await;
    let done = env.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["success"], json!(true), "{done}");
    let result = &done["result"];
    assert_eq!(result["a"], json!(2));
    assert_eq!(result["b"], json!("20"));
    assert_eq!(result["d"], json!(180));
    assert_eq!(
        result["env"],
        json!(["u/alice/chain", "e", id, id, "u/alice/chain/e"])
    );

    let job = env.job(&id).await;
    assert_eq!(job["job_kind"], json!("flow"));
    assert_eq!(job["script_path"], json!("u/alice/chain"));
    assert!(job["flow_version"].as_i64().unwrap() > 0);
    let status = &job["flow_status"];
    assert_eq!(status["step"], json!(5));
    let modules = status["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 5);
    assert!(
        modules.iter().all(|m| m["type"] == json!("Success")),
        "{status}"
    );

    // Each step is a job of its own, hidden from the Runs list unless asked for.
    let steps = steps_of(&env, &id).await;
    assert_eq!(steps.len(), 5);
    for step in &steps {
        assert_eq!(step["root_job"], json!(id));
        assert_eq!(step["job_kind"], json!("script"));
        let module = step["flow_step_id"].as_str().unwrap();
        let listed = modules.iter().find(|m| m["id"] == json!(module)).unwrap();
        assert_eq!(
            listed["job"], step["id"],
            "flow_status names each step's job"
        );
    }
    let plain = env
        .get(&format!("/api/w/{WS}/jobs/list"), &env.token)
        .await
        .expect(200)
        .json();
    let ids: Vec<&Value> = plain.as_array().unwrap().iter().map(|j| &j["id"]).collect();
    assert_eq!(
        ids,
        vec![&json!(id)],
        "only the flow is listed without include_flow_steps"
    );
}

#[tokio::test]
async fn loops_branches_and_their_options() {
    let env = TestEnv::start().await;
    let double = python(
        "double",
        "import time, random\ndef main(x):\n    time.sleep(random.random() / 5)\n    return x * 2\n",
        json!({"x": js("flow_input.iter.value")}),
    );
    env.flow(
        "u/alice/loops",
        json!({"modules": [
            echo("items", js("flow_input.items")),
            {"id": "par", "value": {"type": "forloopflow", "iterator": js("results.items"),
              "parallel": true, "parallelism": 3, "modules": [double]}},
            {"id": "seq", "value": {"type": "forloopflow", "iterator": js("[[1, 2], [3]]"), "modules": [
                {"id": "inner", "value": {"type": "forloopflow", "iterator": js("flow_input.iter.value"),
                  "modules": [echo("leaf", js("flow_input.iter.value * 100 + flow_input.iter.index"))]}},
            ]}},
            {"id": "skipping", "value": {"type": "forloopflow", "iterator": js("[1, 2, 3]"),
              "modules": [python("maybe", "def main(x):\n    if x == 2:\n        raise ValueError('two')\n    return x\n",
                                 json!({"x": js("flow_input.iter.value")}))]}},
            {"id": "pick", "value": {"type": "branchone", "branches": [
                {"expr": "flow_input.items.length > 100", "modules": [echo("many", fixed(json!("many")))]},
                {"expr": "flow_input.items.length > 2", "modules": [echo("some", fixed(json!("some")))]},
            ], "default": [echo("few", fixed(json!("few")))]}},
            {"id": "all", "value": {"type": "branchall", "branches": [
                {"modules": [echo("left", fixed(json!("L")))]},
                {"modules": [{"id": "same", "value": {"type": "identity"}}]},
                {"modules": [echo("right", js("results.pick"))]},
            ]}},
            echo("out", js("({par: results.par, seq: results.seq, skipping: results.skipping, all: results.all})")),
        ]}),
    )
    .await;
    let done = env
        .run_flow_done("u/alice/loops", json!({"items": [1, 2, 3, 4, 5, 6, 7]}))
        .await;
    assert_eq!(done["success"], json!(true), "{done}");
    let out = &done["result"];
    assert_eq!(
        out["par"],
        json!([2, 4, 6, 8, 10, 12, 14]),
        "parallel results in order"
    );
    assert_eq!(out["seq"], json!([[100, 201], [300]]));
    let skipping = out["skipping"].as_array().unwrap();
    assert_eq!(skipping[0], json!(1));
    assert_eq!(
        skipping[1]["error"]["name"],
        json!("ValueError"),
        "skip_failures keeps the error"
    );
    assert_eq!(skipping[2], json!(3));
    // The identity branch passes on the previous result: branchone's "some".
    assert_eq!(out["all"], json!(["L", "some", "some"]));

    let id = done_id(&env, "u/alice/loops").await;
    let status = env.job(&id).await["flow_status"].clone();
    let par = &status["modules"][1];
    assert_eq!(par["flow_jobs"].as_array().unwrap().len(), 7);
    assert_eq!(
        par["flow_jobs_success"],
        json!([true, true, true, true, true, true, true])
    );
    assert_eq!(par["iterator"]["itered_len"], json!(7));
    assert_eq!(
        status["modules"][4]["branch_chosen"],
        json!({"type": "branch", "branch": 1})
    );
    // With parallelism 3, never more than three iterations ran at once.
    let steps = steps_of(&env, &id).await;
    // Compared as times, not as text: a whole second or millisecond is written without its
    // zero digits, and "…:30Z" sorts after "…:30.005374Z".
    let at = |value: &Value| chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap();
    let mut doubles: Vec<_> = steps
        .iter()
        .filter(|s| s["flow_step_id"] == json!("double"))
        .map(|s| (at(&s["started_at"]), at(&s["completed_at"])))
        .collect();
    assert_eq!(doubles.len(), 7);
    doubles.sort();
    for (start, _) in &doubles {
        let overlapping = doubles
            .iter()
            .filter(|(s, e)| s <= start && e > start)
            .count();
        assert!(
            overlapping <= 3,
            "{overlapping} iterations at once: {doubles:?}"
        );
    }
}

/// The id of the newest flow job at `path`.
async fn done_id(env: &TestEnv, path: &str) -> String {
    let list = env
        .get(
            &format!("/api/w/{WS}/jobs/list?script_path_exact={path}"),
            &env.token,
        )
        .await
        .expect(200)
        .json();
    list[0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn without_skip_failures_a_loop_fails_and_the_failure_module_sees_the_error() {
    let env = TestEnv::start().await;
    env.flow(
        "u/alice/failing",
        json!({
            "modules": [
                {"id": "loop", "value": {"type": "forloopflow", "iterator": js("[1, 2, 3]"), "skip_failures": false,
                  "modules": [python("boom", "def main(x):\n    if x == 2:\n        raise KeyError('no two')\n    return x\n",
                                     json!({"x": js("flow_input.iter.value")}))]}},
                echo("never", fixed(json!("ran"))),
            ],
            "failure_module": echo("failure", js("({caught: error.name, step: error.step_id, input: flow_input.tag})")),
        }),
    )
    .await;
    let done = env
        .run_flow_done("u/alice/failing", json!({"tag": "t1"}))
        .await;
    assert_eq!(done["success"], json!(false), "{done}");
    assert_eq!(
        done["result"],
        json!({"caught": "KeyError", "step": "boom", "input": "t1"})
    );
    let id = done_id(&env, "u/alice/failing").await;
    let job = env.job(&id).await;
    assert_eq!(
        job["flow_status"]["failure_module"]["type"],
        json!("Success")
    );
    assert_eq!(job["flow_status"]["modules"][0]["type"], json!("Failure"));
    assert_eq!(
        job["flow_status"]["modules"][1]["type"],
        json!("WaitingForPriorSteps")
    );
    assert!(steps_of(&env, &id)
        .await
        .iter()
        .all(|s| s["flow_step_id"] != json!("never")));

    // Without a failure module, the flow fails with the step's error.
    env.flow(
        "u/alice/plain",
        json!({"modules": [bash("bad", "exit 3", json!({}))]}),
    )
    .await;
    let done = env.run_flow_done("u/alice/plain", json!({})).await;
    assert_eq!(done["success"], json!(false));
    assert_eq!(done["result"]["error"]["step_id"], json!("bad"), "{done}");
}

#[tokio::test]
async fn retries_stop_after_if_skip_if_sleep_timeout_and_continue_on_error() {
    let env = TestEnv::start().await;
    // Fails twice (counting files it leaves in the test's scratch dir: its attempts may run as
    // different job users, and one may not write another's file), then succeeds.
    let flaky = "import glob, uuid\ndef main(marker):\n    n = len(glob.glob(marker + '-*'))\n    open(f'{marker}-{uuid.uuid4().hex}', 'w').close()\n    if n < 2:\n        raise RuntimeError(f'attempt {n + 1}')\n    return n + 1\n";
    let marker = env.scratch().join("flaky").display().to_string();
    env.flow(
        "u/alice/options",
        json!({"modules": [
            {"id": "flaky", "value": {"type": "rawscript", "language": "python3", "content": flaky,
              "input_transforms": {"marker": fixed(json!(marker))}},
             "retry": {"constant": {"attempts": 3, "seconds": 1}}},
            {"id": "skipped", "value": {"type": "rawscript", "language": "bash", "content": "echo nope"},
             "skip_if": {"expr": "previous_result == 3"}},
            {"id": "slow", "value": {"type": "rawscript", "language": "bash", "content": "sleep 30"},
             "timeout": 1, "continue_on_error": true},
            {"id": "napping", "value": {"type": "identity"}, "sleep": fixed(json!(2))},
            {"id": "stop", "value": {"type": "rawscript", "language": "bash", "content": "echo 7",
              "input_transforms": {}}, "stop_after_if": {"expr": "result == '7'"}},
            echo("never", fixed(json!("ran"))),
        ]}),
    )
    .await;
    let started = std::time::Instant::now();
    let done = env.run_flow_done("u/alice/options", json!({})).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(
        done["result"],
        json!("7"),
        "stop_after_if ends the flow with the step's result"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "retries waited 2x1 s and the sleep 2 s"
    );
    let id = done_id(&env, "u/alice/options").await;
    let job = env.job(&id).await;
    let modules = &job["flow_status"]["modules"];
    assert_eq!(
        modules[0]["failed_retries"].as_array().unwrap().len(),
        2,
        "{modules}"
    );
    assert_eq!(modules[1]["type"], json!("Skipped"));
    assert_eq!(
        modules[2]["type"],
        json!("Failure"),
        "the timed-out step failed…"
    );
    assert_eq!(modules[5]["type"], json!("WaitingForPriorSteps"));
    let steps = steps_of(&env, &id).await;
    let flaky_runs: Vec<&Value> = steps
        .iter()
        .filter(|s| s["flow_step_id"] == json!("flaky"))
        .collect();
    assert_eq!(flaky_runs.len(), 3, "retries counted: three attempts");
    let slow = steps
        .iter()
        .find(|s| s["flow_step_id"] == json!("slow"))
        .unwrap();
    assert_eq!(
        slow["result"]["error"]["name"],
        json!("Timeout"),
        "…after its 1 s timeout"
    );
    assert!(steps
        .iter()
        .all(|s| s["flow_step_id"] != json!("skipped") && s["flow_step_id"] != json!("never")));
}

#[tokio::test]
async fn script_modules_run_the_live_or_the_pinned_version() {
    let env = TestEnv::start().await;
    let v1 = env
        .script(
            "u/alice/add",
            "python3",
            "def main(a, b):\n    return a + b\n",
        )
        .await;
    let flow = |hash: Option<&str>| {
        let mut value = json!({"type": "script", "path": "u/alice/add",
            "input_transforms": {"a": js("flow_input.a"), "b": fixed(json!(10))}});
        if let Some(hash) = hash {
            value["hash"] = json!(hash);
        }
        json!({"modules": [{"id": "s", "value": value}]})
    };
    env.flow("u/alice/live", flow(None)).await;
    env.flow("u/alice/pinned", flow(Some(&v1))).await;
    env.script(
        "u/alice/add",
        "python3",
        "def main(a, b):\n    return a * b\n",
    )
    .await;
    assert_eq!(
        env.run_flow_done("u/alice/live", json!({"a": 3})).await["result"],
        json!(30)
    );
    assert_eq!(
        env.run_flow_done("u/alice/pinned", json!({"a": 3})).await["result"],
        json!(13)
    );
    let id = done_id(&env, "u/alice/pinned").await;
    let step = &steps_of(&env, &id).await[0];
    assert_eq!(step["script_hash"], json!(v1));
    assert_eq!(step["script_path"], json!("u/alice/add"));
}

#[tokio::test]
async fn versions_are_immutable_and_fv_pins_one_across_update_and_archive() {
    let env = TestEnv::start().await;
    let v1 = env
        .flow(
            "u/alice/pin",
            json!({"modules": [echo("a", fixed(json!("one")))]}),
        )
        .await;
    let v2 = env
        .flow(
            "u/alice/pin",
            json!({"modules": [echo("a", fixed(json!("two")))]}),
        )
        .await;
    assert!(v2 > v1);
    let run_fv = |v: i64| {
        let env = &env;
        async move {
            env.post(
                &format!("/api/w/{WS}/jobs/run_wait_result/fv/{v}"),
                &env.token,
                json!({}),
            )
            .await
        }
    };
    assert_eq!(run_fv(v1).await.expect(200).json(), json!("one"));
    assert_eq!(run_fv(v2).await.expect(200).json(), json!("two"));
    let sync = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/f/u/alice/pin"),
            &env.token,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(sync.json(), json!("two"));
    assert!(sync.headers.contains_key("x-millrace-job-id"));

    let history = env
        .get(
            &format!("/api/w/{WS}/flows/history/p/u/alice/pin"),
            &env.token,
        )
        .await
        .expect(200)
        .json();
    let ids: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![v2, v1]);
    let old = env
        .get(
            &format!("/api/w/{WS}/flows/get/v/{v1}/p/u/alice/pin"),
            &env.token,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(
        old["value"]["modules"][0]["value"]["input_transforms"]["x"]["value"],
        json!("one")
    );
    assert_eq!(old["version_id"], json!(v1));
    let latest = env
        .get(&format!("/api/w/{WS}/flows/get/u/alice/pin"), &env.token)
        .await
        .expect(200)
        .json();
    assert_eq!(latest["version_id"], json!(v2));
    assert_eq!(latest["path"], json!("u/alice/pin"));

    env.post(
        &format!("/api/w/{WS}/flows/archive/u/alice/pin"),
        &env.token,
        json!({}),
    )
    .await
    .expect(200);
    env.post(
        &format!("/api/w/{WS}/jobs/run/f/u/alice/pin"),
        &env.token,
        json!({}),
    )
    .await
    .expect(404);
    assert_eq!(
        run_fv(v1).await.expect(200).json(),
        json!("one"),
        "fv runs after archive"
    );
    let listed = env
        .get(&format!("/api/w/{WS}/flows/list"), &env.token)
        .await
        .expect(200)
        .json();
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");

    env.request(
        reqwest::Method::DELETE,
        &format!("/api/w/{WS}/flows/delete/u/alice/pin"),
        Some(&env.token),
        None,
    )
    .await
    .expect(200);
    run_fv(v1).await.expect(404);
    env.get(&format!("/api/w/{WS}/flows/get/u/alice/pin"), &env.token)
        .await
        .expect(404);
    // Unknown versions and malformed ones.
    run_fv(999_999).await.expect(404);
    env.post(
        &format!("/api/w/{WS}/jobs/run/fv/abc"),
        &env.token,
        json!({}),
    )
    .await
    .expect(400);
}

#[tokio::test]
async fn bad_definitions_are_refused_naming_the_module() {
    let env = TestEnv::start().await;
    // Scripts that exist, so that only the pinned hash can be what is missing.
    env.script("u/alice/x", "bash", "echo x").await;
    let other = env.script("u/alice/y", "bash", "echo y").await;
    let other_refused = format!("module p: script u/alice/x ({other}) not found");
    let cases = [
        (
            json!({"modules": [{"id": "w", "value": {"type": "whileloopflow", "modules": []}}]}),
            "module w: unknown module type",
        ),
        (
            json!({"modules": [echo("a", fixed(json!(1))), echo("a", fixed(json!(2)))]}),
            "duplicate module id \"a\"",
        ),
        (
            json!({"modules": [{"id": "s", "value": {"type": "script", "path": "u/alice/nothing"}}]}),
            "module s: script u/alice/nothing not found",
        ),
        (
            json!({"modules": [{"id": "s", "value": {"type": "script", "path": "u/alice/x", "hash": "0123456789abcdef"}}]}),
            "module s: script u/alice/x (0123456789abcdef) not found",
        ),
        (
            // A hash that exists, but of another path.
            json!({"modules": [{"id": "p", "value": {"type": "script", "path": "u/alice/x", "hash": other}}]}),
            other_refused.as_str(),
        ),
        (
            json!({"modules": [{"id": "r", "value": {"type": "rawscript", "language": "go", "content": ""}}]}),
            "module r: unknown language",
        ),
        (
            json!({"modules": [echo("e", js("flow_input.(x"))]}),
            "module e: input x",
        ),
        (
            json!({"modules": [{"id": "b", "value": {"type": "branchone", "branches": [{"expr": "a ==", "modules": []}], "default": []}}]}),
            "module b: branch expr",
        ),
        (json!({"modules": "nope"}), "must be an array"),
    ];
    for (value, expected) in cases {
        let res = env
            .post(
                &format!("/api/w/{WS}/flows/create"),
                &env.token,
                json!({"path": "u/alice/bad", "value": value}),
            )
            .await
            .expect(400);
        assert!(res.text.contains(expected), "{value}: {}", res.text);
        assert!(res.text.starts_with("Bad request: "), "{}", res.text);
    }
    env.get(&format!("/api/w/{WS}/flows/get/u/alice/bad"), &env.token)
        .await
        .expect(404);
    // A good one, then a second create at the same path, and an update of an unknown path.
    env.flow("u/alice/good", json!({"modules": []})).await;
    env.post(
        &format!("/api/w/{WS}/flows/create"),
        &env.token,
        json!({"path": "u/alice/good", "value": {"modules": []}}),
    )
    .await
    .expect(400);
    env.post(
        &format!("/api/w/{WS}/flows/update/u/alice/none"),
        &env.token,
        json!({"value": {"modules": []}}),
    )
    .await
    .expect(404);

    // An update that cannot run is refused the same way and adds no version.
    let latest = || {
        let env = &env;
        async move {
            env.get(&format!("/api/w/{WS}/flows/get/u/alice/good"), &env.token)
                .await
                .expect(200)
                .json()
        }
    };
    let before = latest().await;
    let res = env
        .post(
            &format!("/api/w/{WS}/flows/update/u/alice/good"),
            &env.token,
            json!({"value": {"modules": [echo("ok", fixed(json!(1))),
                {"id": "broken", "value": {"type": "script", "path": "u/alice/x", "hash": "0123456789abcdef"}}]}}),
        )
        .await
        .expect(400);
    assert!(
        res.text
            .contains("module broken: script u/alice/x (0123456789abcdef) not found"),
        "{}",
        res.text
    );
    let res = env
        .post(
            &format!("/api/w/{WS}/flows/update/u/alice/good"),
            &env.token,
            json!({"value": {"modules": [echo("e", js("flow_input.(x"))]}}),
        )
        .await
        .expect(400);
    assert!(res.text.contains("module e: input x"), "{}", res.text);
    let after = latest().await;
    assert_eq!(after["version_id"], before["version_id"]);
    assert_eq!(after["value"], json!({"modules": []}));
    let history = env
        .get(
            &format!("/api/w/{WS}/flows/history/p/u/alice/good"),
            &env.token,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
}

#[tokio::test]
async fn flows_list_shows_what_the_caller_may_read() {
    let env = TestEnv::start().await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    env.flow_with(
        "u/alice/one",
        json!({"summary": "the first", "description": "one step",
               "value": {"modules": [echo("a", fixed(json!(1)))]}}),
    )
    .await;
    env.flow(
        "u/alice/two",
        json!({"modules": [echo("a", fixed(json!(1)))]}),
    )
    .await;
    let two = env
        .flow(
            "u/alice/two",
            json!({"modules": [echo("a", fixed(json!(2)))]}),
        )
        .await;
    env.post(
        &format!("/api/w/{WS}/flows/create"),
        &bob,
        json!({"path": "u/bob/his", "value": {"modules": []}}),
    )
    .await
    .expect(201);
    let list = |token: &str, query: &str| {
        let env = &env;
        let token = token.to_owned();
        let query = query.to_owned();
        async move {
            env.get_list(&format!("/api/w/{WS}/flows/list{query}"), &token)
                .await
        }
    };
    let paths = |flows: &[Value]| -> Vec<String> {
        flows
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_owned())
            .collect()
    };

    // Alice, an admin, sees every flow, one entry each (the latest version), by path.
    let all = list(&env.token, "").await;
    assert_eq!(paths(&all), ["u/alice/one", "u/alice/two", "u/bob/his"]);
    let one = &all[0];
    assert_eq!(one["workspace_id"], json!(WS));
    assert_eq!(one["summary"], json!("the first"));
    assert_eq!(one["description"], json!("one step"));
    assert_eq!(one["edited_by"], json!("alice"));
    assert!(
        chrono::DateTime::parse_from_rfc3339(one["edited_at"].as_str().unwrap()).is_ok(),
        "{one}"
    );
    assert_eq!(one["archived"], json!(false));
    assert_eq!(one["value"]["modules"][0]["id"], json!("a"));
    assert_eq!(all[1]["version_id"], json!(two));
    assert_eq!(
        all[1]["value"]["modules"][0]["value"]["input_transforms"]["x"]["value"],
        json!(2)
    );
    assert_eq!(all[2]["edited_by"], json!("bob"));
    assert_eq!(
        paths(&list(&env.token, "?path_start=u/alice/").await),
        ["u/alice/one", "u/alice/two"]
    );

    // Bob, a member, sees his own flow and none of alice's private ones.
    assert_eq!(paths(&list(&bob, "").await), ["u/bob/his"]);
    // Shared with him, one of them appears.
    env.post(
        &format!("/api/w/{WS}/acls/add/flow/u/alice/one"),
        &env.token,
        json!({"owner": "u/bob"}),
    )
    .await
    .expect(200);
    crate::common::eventually(Duration::from_secs(15), "the share is seen", async || {
        paths(&list(&bob, "").await) == ["u/alice/one", "u/bob/his"]
    })
    .await;

    // Archived flows are listed only when asked for.
    env.post(
        &format!("/api/w/{WS}/flows/archive/u/alice/two"),
        &env.token,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(
        paths(&list(&env.token, "").await),
        ["u/alice/one", "u/bob/his"]
    );
    let archived = list(&env.token, "?show_archived=true").await;
    assert_eq!(
        paths(&archived),
        ["u/alice/one", "u/alice/two", "u/bob/his"]
    );
    assert_eq!(archived[1]["archived"], json!(true));
}

#[tokio::test]
async fn webhooks_in_every_mode_early_return_and_sse_progress() {
    let env = TestEnv::start().await;
    env.flow_with(
        "u/alice/hook",
        json!({
            "value": {"modules": [
                echo("first", js("({got: flow_input.x, header: flow_input.x_sign ?? null})")),
                bash("later", "sleep 1\necho later", json!({})),
            ], "early_return": "first"},
            "schema": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        }),
    )
    .await;
    // Sync with early_return: answered before the flow ends, which goes on.
    let started = std::time::Instant::now();
    let res = env
        .http
        .post(env.url(&format!(
            "/api/w/{WS}/jobs/run_wait_result/f/u/alice/hook?include_header=X-Sign"
        )))
        .bearer_auth(&env.token)
        .header("X-Sign", "abc")
        .json(&json!({"x": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"got": 5, "header": "abc"})
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered before the 1 s step"
    );
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(
        done["result"],
        json!("later"),
        "the flow went on after the early answer"
    );

    // GET with a base64 payload; a missing required argument fails the flow, naming it.
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"y":1}"#);
    let res = env
        .get(
            &format!("/api/w/{WS}/jobs/run_wait_result/f/u/alice/hook?payload={payload}"),
            &env.token,
        )
        .await
        .expect(200);
    assert_eq!(
        res.json()["error"]["name"],
        json!("MissingArguments"),
        "{}",
        res.text
    );
    assert!(res.text.contains("x"));

    // HEAD probes need no token and run nothing.
    for route in [
        "run/f/u/alice/hook",
        "run_wait_result/f/u/alice/hook",
        "run_and_stream/f/u/alice/hook",
        "run/fv/1",
    ] {
        let res = env
            .request(
                reqwest::Method::HEAD,
                &format!("/api/w/{WS}/jobs/{route}"),
                None,
                None,
            )
            .await;
        assert_eq!(res.status, 200, "{route}");
    }
    // Unknown flows are 404 before anything starts, in every mode.
    for route in [
        "run/f/u/alice/none",
        "run_wait_result/f/u/alice/none",
        "run_and_stream/f/u/alice/none",
    ] {
        env.post(&format!("/api/w/{WS}/jobs/{route}"), &env.token, json!({}))
            .await
            .expect(404);
    }

    // SSE: a running frame, flow_status progress frames, then the result.
    let res = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run_and_stream/f/u/alice/hook")))
        .bearer_auth(&env.token)
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    let frames: Vec<Value> = read_frames(res).await.into_iter().map(|(_, f)| f).collect();
    assert!(
        frames.iter().any(|f| f["running"] == json!(true)),
        "{frames:?}"
    );
    let progress: Vec<&Value> = frames
        .iter()
        .filter(|f| f.get("flow_status").is_some())
        .collect();
    assert!(progress.len() >= 2, "{frames:?}");
    assert_eq!(
        progress[0]["flow_status"]["modules"][0]["id"],
        json!("first")
    );
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type": "update", "completed": true, "success": true, "only_result": "later"})
    );

    // Async with a preset job_id; the id is readable at once; reusing it is a conflict.
    let preset = uuid::Uuid::new_v4().to_string();
    let id = env
        .post(
            &format!("/api/w/{WS}/jobs/run/f/u/alice/hook?job_id={preset}"),
            &env.token,
            json!({"x": 2}),
        )
        .await
        .expect(201)
        .text;
    assert_eq!(id, preset);
    env.job(&id).await;
    env.post(
        &format!("/api/w/{WS}/jobs/run/f/u/alice/hook?job_id={preset}"),
        &env.token,
        json!({"x": 2}),
    )
    .await
    .expect(409);
    assert_eq!(
        env.wait(&id, Duration::from_secs(30)).await["result"],
        json!("later")
    );

    // Every sync and SSE route by version, POST and GET, runs the pinned version with its
    // arguments; by path, the latest.
    let x_times = |n: i64| {
        json!({"modules": [python("m", &format!("def main(x):\n    return x * {n}\n"),
            json!({"x": js("flow_input.x")}))]})
    };
    let v1 = env.flow("u/alice/times", x_times(2)).await;
    env.flow("u/alice/times", x_times(3)).await;
    let payload =
        |args: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(args.to_string());
    let stream_result = |res: reqwest::Response| async move {
        let frames: Vec<Value> = read_frames(res).await.into_iter().map(|(_, f)| f).collect();
        let last = frames.last().cloned().unwrap_or_default();
        assert_eq!(last["completed"], json!(true), "{frames:?}");
        assert_eq!(last["success"], json!(true), "{frames:?}");
        last["only_result"].clone()
    };
    let post_stream = env
        .http
        .post(env.url(&format!("/api/w/{WS}/jobs/run_and_stream/fv/{v1}")))
        .bearer_auth(&env.token)
        .json(&json!({"x": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream_result(post_stream).await, json!(10));
    for (route, x, expected) in [
        (format!("run_and_stream/fv/{v1}"), 6, 12),
        ("run_and_stream/f/u/alice/times".to_owned(), 6, 18),
    ] {
        let res = env
            .http
            .get(env.url(&format!(
                "/api/w/{WS}/jobs/{route}?payload={}",
                payload(json!({"x": x}))
            )))
            .bearer_auth(&env.token)
            .send()
            .await
            .unwrap();
        assert_eq!(stream_result(res).await, json!(expected), "{route}");
    }
    let res = env
        .get(
            &format!(
                "/api/w/{WS}/jobs/run_wait_result/fv/{v1}?payload={}",
                payload(json!({"x": 7}))
            ),
            &env.token,
        )
        .await
        .expect(200);
    assert_eq!(res.json(), json!(14));
    let sync_id = res.headers["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(env.job(&sync_id).await["flow_version"], json!(v1));

    // HEAD probes on the version routes answer 200 and start nothing.
    let count = || {
        let env = &env;
        async move {
            env.get(&format!("/api/w/{WS}/jobs/list?per_page=1000"), &env.token)
                .await
                .expect(200)
                .json()
                .as_array()
                .unwrap()
                .len()
        }
    };
    let before = count().await;
    for route in [
        format!("run_wait_result/fv/{v1}"),
        format!("run_and_stream/fv/{v1}"),
    ] {
        let res = env
            .request(
                reqwest::Method::HEAD,
                &format!("/api/w/{WS}/jobs/{route}"),
                None,
                None,
            )
            .await;
        assert_eq!(res.status, 200, "{route}");
        assert!(res.text.is_empty(), "{route}: {}", res.text);
    }
    assert_eq!(count().await, before, "a HEAD probe started a job");
}

#[tokio::test]
async fn a_flow_that_cannot_go_on_kills_its_running_steps_at_once() {
    // Renewals every 100 s: a running step learns that it must stop from its flow's
    // transition, not from its lease.
    let env = TestEnv::with(Options {
        worker_env: vec![("JOB_ACK_WAIT".into(), "300".into())],
        workers: 1,
        ..Default::default()
    })
    .await;
    env.flow(
        "u/alice/broken",
        json!({"modules": [{"id": "both", "value": {"type": "branchall", "parallel": true, "branches": [
            {"modules": [bash("long", "sleep 120", json!({}))]},
            {"modules": [bash("short", "sleep 2", json!({}))]},
        ]}}]}),
    )
    .await;
    let id = env.run_flow("u/alice/broken", json!({})).await;
    let mut long = None;
    eventually(Duration::from_secs(20), "both steps running", async || {
        let steps = steps_of(&env, &id).await;
        let running = steps.iter().filter(|s| s["running"] == json!(true)).count();
        long = steps
            .into_iter()
            .find(|s| s["flow_step_id"] == json!("long"));
        running == 2 && long.is_some()
    })
    .await;
    let long = long.unwrap();
    // The flow's state becomes unreadable: the short step's end finds it so and ends the flow,
    // which must stop the long one.
    let flow: uuid::Uuid = id.parse().unwrap();
    env.sql()
        .await
        .execute(
            "UPDATE jobs SET flow_state = '\"unreadable\"' WHERE id = $1",
            &[&flow],
        )
        .await
        .unwrap();
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_failed_with(&done, "InternalError");
    let ended = std::time::Instant::now();
    let long_done = env
        .wait(long["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(
        long_done["result"]["error"]["name"],
        json!("Canceled"),
        "{long_done}"
    );
    assert!(
        ended.elapsed() < Duration::from_secs(10),
        "the long step ran on for {:?} after its flow ended",
        ended.elapsed()
    );
}

#[tokio::test]
async fn cancelling_a_flow_kills_its_running_step_and_starts_no_new_one() {
    let env = TestEnv::start().await;
    env.flow(
        "u/alice/long",
        json!({"modules": [
            bash("first", "sleep 60", json!({})),
            echo("second", fixed(json!("never"))),
        ]}),
    )
    .await;
    let id = env.run_flow("u/alice/long", json!({})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let step = loop {
        if let Some(step) = steps_of(&env, &id)
            .await
            .into_iter()
            .find(|s| s["running"] == json!(true))
        {
            break step;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first step never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // While the first step runs, flow_status says so and names its job.
    let status = env.job(&id).await["flow_status"].clone();
    assert_eq!(status["step"], json!(0), "{status}");
    assert_eq!(status["modules"][0]["id"], json!("first"), "{status}");
    assert_eq!(
        status["modules"][0]["type"],
        json!("InProgress"),
        "{status}"
    );
    assert_eq!(status["modules"][0]["job"], step["id"], "{status}");
    assert_eq!(status["modules"][1]["id"], json!("second"), "{status}");
    assert_eq!(
        status["modules"][1]["type"],
        json!("WaitingForPriorSteps"),
        "{status}"
    );
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs_u/queue/cancel/{id}"),
            &env.token,
            json!({"reason": "enough"}),
        )
        .await
        .expect(200);
    assert_eq!(res.text, id);
    let done = env.wait(&id, Duration::from_secs(10)).await;
    assert_eq!(done["success"], json!(false));
    assert_eq!(done["result"]["error"]["name"], json!("Canceled"));
    assert_eq!(
        done["result"]["error"]["message"],
        json!("Job canceled: enough by alice")
    );
    let step_id = step["id"].as_str().unwrap();
    let step_done = env.wait(step_id, Duration::from_secs(10)).await;
    assert_eq!(
        step_done["result"]["error"]["name"],
        json!("Canceled"),
        "the running step was killed"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        steps_of(&env, &id).await.len(),
        1,
        "no step started after the cancel"
    );
    let job = env.job(&id).await;
    assert_eq!(job["canceled"], json!(true));
    assert_eq!(job["canceled_by"], json!("alice"));
    let again = env
        .post(
            &format!("/api/w/{WS}/jobs_u/queue/cancel/{id}"),
            &env.token,
            json!({}),
        )
        .await
        .expect(200);
    assert!(again.text.contains("already completed"));
}

#[tokio::test]
async fn a_running_parallel_loop_lists_its_started_iterations() {
    let env = TestEnv::start().await;
    env.flow(
        "u/alice/fanout",
        json!({"modules": [
            {"id": "l", "value": {"type": "forloopflow", "iterator": js("[1, 2, 3, 4]"),
              "parallel": true, "parallelism": 2,
              "modules": [bash("s", "n=\"$1\"\nsleep 2\necho $((n * 10))", json!({"n": js("flow_input.iter.value")}))]}},
        ]}),
    )
    .await;
    let id = env.run_flow("u/alice/fanout", json!({})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let job = env.job(&id).await;
        let module = job["flow_status"]["modules"][0].clone();
        let jobs = module["flow_jobs"].as_array().cloned().unwrap_or_default();
        let success = module["flow_jobs_success"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(jobs.len(), success.len(), "{module}");
        let running = success.iter().filter(|s| s.is_null()).count();
        assert!(running <= 2, "parallelism 2 exceeded: {module}");
        if (1..4).contains(&jobs.len()) && running > 0 {
            assert_eq!(module["type"], json!("InProgress"), "{module}");
            break jobs;
        }
        assert!(
            job["success"].is_null() && std::time::Instant::now() < deadline,
            "never saw the loop partly started: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = env.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["result"], json!(["10", "20", "30", "40"]), "{done}");
    let module = env.job(&id).await["flow_status"]["modules"][0].clone();
    assert_eq!(module["type"], json!("Success"), "{module}");
    let all = module["flow_jobs"].as_array().unwrap();
    assert_eq!(all.len(), 4, "{module}");
    assert_eq!(module["flow_jobs_success"], json!([true, true, true, true]));
    assert_eq!(
        &all[..partial.len()],
        &partial[..],
        "listed iterations keep their place"
    );
    let mut steps: Vec<Value> = steps_of(&env, &id)
        .await
        .into_iter()
        .map(|s| s["id"].clone())
        .collect();
    let mut listed = all.clone();
    steps.sort_by_key(|v| v.to_string());
    listed.sort_by_key(|v| v.to_string());
    assert_eq!(steps, listed, "flow_jobs are the iterations' step jobs");
}

/// The events of top-level flow `id` once it has ended with `terminal`: exactly queued, started
/// and `terminal`, each naming the flow (kind, path, version, no parent) and deduplicated by
/// `<id>:<kind>`.
async fn assert_flow_events(
    events: &mut Events,
    id: &str,
    path: &str,
    version: i64,
    terminal: &str,
) -> Vec<Event> {
    let flow_events = events
        .of_job(
            id,
            &["queued", "started", terminal],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(kinds(&flow_events), vec!["queued", "started", terminal]);
    for event in &flow_events {
        assert_eq!(event.body["job_kind"], json!("flow"), "{}", event.body);
        assert_eq!(event.body["flow_version"], json!(version), "{}", event.body);
        assert_eq!(event.body["path"], json!(path), "{}", event.body);
        assert!(event.body.get("parent_job").is_none(), "{}", event.body);
        assert_eq!(
            event.msg_id.as_deref(),
            Some(format!("{id}:{}", event.kind()).as_str())
        );
    }
    flow_events
}

/// The events of step `step` of top-level flow `flow` once it has ended with `terminal`: exactly
/// queued, started and `terminal`, each a script naming the flow as parent and root.
async fn assert_step_events(events: &mut Events, step: &str, flow: &str, terminal: &str) {
    let step_events = events
        .of_job(
            step,
            &["queued", "started", terminal],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(kinds(&step_events), vec!["queued", "started", terminal]);
    for event in &step_events {
        assert_eq!(event.body["job_kind"], json!("script"), "{}", event.body);
        assert_eq!(event.body["parent_job"], json!(flow), "{}", event.body);
        assert_eq!(event.body["root_job"], json!(flow), "{}", event.body);
    }
}

#[tokio::test]
async fn flows_and_their_steps_publish_events_naming_their_flow() {
    let env = TestEnv::start().await;
    let mut events = Events::open(&env, "flow-events").await;
    let version = env
        .flow(
            "u/alice/evented",
            json!({"modules": [echo("a", fixed(json!(1))), echo("b", fixed(json!(2)))]}),
        )
        .await;
    let id = env.run_flow("u/alice/evented", json!({})).await;
    let flow_events =
        assert_flow_events(&mut events, &id, "u/alice/evented", version, "completed").await;
    let completed = flow_events
        .iter()
        .find(|e| e.kind() == "completed")
        .unwrap();
    assert_eq!(completed.body["result"], json!(2));
    let steps = steps_of(&env, &id).await;
    assert_eq!(steps.len(), 2, "{steps:?}");
    for step in steps {
        assert_step_events(&mut events, step["id"].as_str().unwrap(), &id, "completed").await;
    }

    // A failing flow: queued, started, then exactly one `failed`, for the flow and its step.
    let version = env
        .flow(
            "u/alice/failing",
            json!({"modules": [bash("boom", "echo no >&2\nexit 3", json!({}))]}),
        )
        .await;
    let failing = env.run_flow("u/alice/failing", json!({})).await;
    let flow_events =
        assert_flow_events(&mut events, &failing, "u/alice/failing", version, "failed").await;
    let failed = flow_events.iter().find(|e| e.kind() == "failed").unwrap();
    assert_eq!(failed.body["success"], json!(false), "{}", failed.body);
    assert!(failed.body.get("error").is_some(), "{}", failed.body);
    let step = &steps_of(&env, &failing).await[0];
    assert_step_events(
        &mut events,
        step["id"].as_str().unwrap(),
        &failing,
        "failed",
    )
    .await;

    // A cancelled flow: exactly one `canceled` for it, and one for its killed step.
    let version = env
        .flow(
            "u/alice/stopped",
            json!({"modules": [bash("nap", "sleep 60", json!({})), echo("never", fixed(json!(1)))]}),
        )
        .await;
    let stopped = env.run_flow("u/alice/stopped", json!({})).await;
    let flow_started = events
        .of_job(&stopped, &["started"], Duration::from_secs(30))
        .await;
    assert!(flow_started
        .iter()
        .all(|e| e.body["job_kind"] == json!("flow")));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let nap = loop {
        if let Some(step) = steps_of(&env, &stopped)
            .await
            .into_iter()
            .find(|s| s["running"] == json!(true))
        {
            break step["id"].as_str().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    env.cancel(&stopped).await;
    assert_flow_events(
        &mut events,
        &stopped,
        "u/alice/stopped",
        version,
        "canceled",
    )
    .await;
    assert_step_events(&mut events, &nap, &stopped, "canceled").await;
    assert_eq!(
        steps_of(&env, &stopped).await.len(),
        1,
        "no step after the cancel"
    );
}

#[tokio::test]
async fn flow_permissions_scopes_sharing_and_webhook_tokens() {
    let env = TestEnv::start().await;
    env.flow(
        "u/alice/private",
        json!({"modules": [echo("a", fixed(json!("ok")))]}),
    )
    .await;
    let bob = env.user_token("bob@example.com", "bob", false, false).await;
    // Bob cannot see or run alice's flow, nor write it.
    env.get(&format!("/api/w/{WS}/flows/get/u/alice/private"), &bob)
        .await
        .expect(404);
    env.post(
        &format!("/api/w/{WS}/jobs/run/f/u/alice/private"),
        &bob,
        json!({}),
    )
    .await
    .expect(404);
    env.post(
        &format!("/api/w/{WS}/flows/create"),
        &bob,
        json!({"path": "u/alice/mine", "value": {"modules": []}}),
    )
    .await
    .expect(403);
    // Shared for reading: bob may run it but not update it.
    env.post(
        &format!("/api/w/{WS}/acls/add/flow/u/alice/private"),
        &env.token,
        json!({"owner": "u/bob"}),
    )
    .await
    .expect(200);
    let id = env
        .post(
            &format!("/api/w/{WS}/jobs/run/f/u/alice/private"),
            &bob,
            json!({}),
        )
        .await
        .expect(201)
        .text;
    assert_eq!(
        env.wait(&id, Duration::from_secs(30)).await["result"],
        json!("ok")
    );
    env.post(
        &format!("/api/w/{WS}/flows/update/u/alice/private"),
        &bob,
        json!({"value": {"modules": []}}),
    )
    .await
    .expect(403);

    // A webhook-specific token runs that one flow and nothing else.
    let create = |scopes: Value| {
        let env = &env;
        async move {
            env.post(
                "/api/users/tokens/create",
                &env.token,
                json!({"scopes": scopes}),
            )
            .await
            .expect(201)
            .text
        }
    };
    let hook = create(json!(["jobs:run:flows:u/alice/private"])).await;
    let id = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/f/u/alice/private"),
            &hook,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(id.json(), json!("ok"));
    env.flow("u/alice/other", json!({"modules": []})).await;
    env.post(
        &format!("/api/w/{WS}/jobs/run/f/u/alice/other"),
        &hook,
        json!({}),
    )
    .await
    .expect(403);
    env.get(&format!("/api/w/{WS}/flows/get/u/alice/private"), &hook)
        .await
        .expect(403);
    // flows:read reads but does not write; flows:write writes.
    let reader = create(json!(["flows:read"])).await;
    env.get(&format!("/api/w/{WS}/flows/get/u/alice/private"), &reader)
        .await
        .expect(200);
    env.post(
        &format!("/api/w/{WS}/flows/update/u/alice/private"),
        &reader,
        json!({"value": {"modules": []}}),
    )
    .await
    .expect(403);
    env.post(
        &format!("/api/w/{WS}/jobs/run/f/u/alice/private"),
        &reader,
        json!({}),
    )
    .await
    .expect(403);
    let writer = create(json!(["flows:write"])).await;
    env.post(
        &format!("/api/w/{WS}/flows/update/u/alice/other"),
        &writer,
        json!({"value": {"modules": []}}),
    )
    .await
    .expect(200);
    // Steps of a flow bob cannot read stay hidden from him, even when they run his script.
    env.script(
        "u/bob/helper",
        "python3",
        "def main():\n    return 'secret result'\n",
    )
    .await;
    env.post(
        &format!("/api/w/{WS}/acls/add/script/u/bob/helper"),
        &env.token,
        json!({"owner": "u/alice"}),
    )
    .await
    .expect(200);
    env.flow(
        "u/alice/uses_bobs",
        json!({"modules": [{"id": "h", "value": {"type": "script", "path": "u/bob/helper"}}]}),
    )
    .await;
    let flow_id = env.run_flow("u/alice/uses_bobs", json!({})).await;
    assert_eq!(
        env.wait(&flow_id, Duration::from_secs(30)).await["result"],
        json!("secret result")
    );
    let seen = env
        .get(
            &format!("/api/w/{WS}/jobs/list?include_flow_steps=true&per_page=1000"),
            &bob,
        )
        .await
        .expect(200)
        .json();
    let leaked: Vec<&Value> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["parent_job"] == json!(flow_id) || j["id"] == json!(flow_id))
        .collect();
    assert!(
        leaked.is_empty(),
        "bob sees alice's flow or its steps: {leaked:?}"
    );
    // A flow in a folder: the folder's owners write it.
    env.post(
        &format!("/api/w/{WS}/folders/create"),
        &env.token,
        json!({"name": "ops", "owners": ["u/bob"]}),
    )
    .await
    .expect(201);
    env.post(
        &format!("/api/w/{WS}/flows/create"),
        &bob,
        json!({"path": "f/ops/deploy", "value": {"modules": []}}),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn a_result_nested_too_deep_fails_the_flow_clearly() {
    let env = TestEnv::start().await;
    // 118 levels from the step, more from the loops around it: past what readers take.
    let deep = "def main():\n    v = 1\n    for _ in range(118):\n        v = [v]\n    return v\n";
    env.flow(
        "u/alice/deep",
        json!({"modules": [
            {"id": "l1", "value": {"type": "forloopflow", "iterator": js("[1]"), "modules": [
                {"id": "l2", "value": {"type": "forloopflow", "iterator": js("[1]"), "modules": [
                    {"id": "l3", "value": {"type": "forloopflow", "iterator": js("[1]"), "modules": [
                        python("d", deep, json!({})),
                    ]}},
                ]}},
            ]}},
        ]}),
    )
    .await;
    let done = env.run_flow_done("u/alice/deep", json!({})).await;
    assert_eq!(done["success"], json!(false), "{done}");
    assert_eq!(done["result"]["error"]["name"], json!("ResultError"));
    let id = done_id(&env, "u/alice/deep").await;
    // The job, its steps and the list all still read fine.
    env.job(&id).await;
    assert_eq!(steps_of(&env, &id).await.len(), 1);
}

#[tokio::test]
async fn scheduled_flows_wait_and_a_sync_timeout_cancels_the_flow() {
    let env = TestEnv::with(crate::common::Options {
        workers: 1,
        api_env: vec![("TIMEOUT_WAIT_RESULT".into(), "1".into())],
        ..Default::default()
    })
    .await;
    env.flow(
        "u/alice/quick",
        json!({"modules": [echo("a", fixed(json!("on time")))]}),
    )
    .await;
    let id = env
        .post(
            &format!("/api/w/{WS}/jobs/run/f/u/alice/quick?scheduled_in_secs=2"),
            &env.token,
            json!({}),
        )
        .await
        .expect(201)
        .text;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let job = env.job(&id).await;
    assert_eq!(
        job["started_at"],
        json!(null),
        "a scheduled flow waits: {job}"
    );
    assert!(job["scheduled_for"].is_string());
    let done = env.wait(&id, Duration::from_secs(20)).await;
    assert_eq!(done["result"], json!("on time"));

    env.flow(
        "u/alice/slow",
        json!({"modules": [bash("nap", "sleep 20", json!({}))]}),
    )
    .await;
    let res = env
        .post(
            &format!("/api/w/{WS}/jobs/run_wait_result/f/u/alice/slow"),
            &env.token,
            json!({}),
        )
        .await
        .expect(500);
    assert_eq!(res.text, "timeout after 1s");
    let id = res.headers["x-millrace-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let done = env.wait(&id, Duration::from_secs(10)).await;
    assert_eq!(done["result"]["error"]["name"], json!("Canceled"), "{done}");
    assert_eq!(
        env.job(&id).await["canceled_reason"],
        json!("timeout after 1s")
    );
}
