//! Flows end to end: definitions, every module type and option, webhooks in every mode, and
//! durability when workers die.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Options, TestEnv, WS};

fn bash(id: &str, content: &str, inputs: Value) -> Value {
    json!({"id": id, "value": {"type": "rawscript", "language": "bash", "content": content, "input_transforms": inputs}})
}

fn python(id: &str, content: &str, inputs: Value) -> Value {
    json!({"id": id, "value": {"type": "rawscript", "language": "python3", "content": content, "input_transforms": inputs}})
}

fn js(expr: &str) -> Value {
    json!({"type": "javascript", "expr": expr})
}

fn two_workers() -> Options {
    Options {
        workers: 2,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_flow_of_steps_passes_results_along() {
    let env = TestEnv::start().await;
    env.flow(
        "u/alice/chain",
        json!({"modules": [
            python("a", "def main(n):\n    return n + 1\n", json!({"n": js("flow_input.n")})),
            bash("b", "x=\"$1\"\necho $((x * 10))", json!({"x": js("previous_result")})),
            python("c", "def main(a, b):\n    return {'a': a, 'b': b}\n", json!({"a": js("results.a"), "b": js("results.b")})),
        ]}),
    )
    .await;
    let done = env.run_flow_done("u/alice/chain", json!({"n": 1})).await;
    assert_eq!(done["success"], json!(true), "{done}");
    assert_eq!(done["result"], json!({"a": 2, "b": "20"}));
}
