//! JavaScript input transforms and predicates, evaluated in an embedded QuickJS (rquickjs): a
//! fresh runtime per evaluation with a memory cap, a stack cap and an interrupt deadline, and
//! no I/O at all (plain QuickJS has none). The variables an expression sees are JSON values; its
//! result is turned back into JSON, `undefined` becoming `null`. A plain lookup such as
//! `flow_input.x` or `results.a[0]` is answered without starting the engine.

use std::time::{Duration, Instant};

use rquickjs::{CaughtError, Context, Runtime};
use serde_json::{Map, Value};

/// One evaluation may run this long; a transition holds its flow's row lock meanwhile.
pub const DEADLINE: Duration = Duration::from_secs(1);
const MEMORY_LIMIT: usize = 32 * 1024 * 1024;
const STACK_LIMIT: usize = 1024 * 1024;

/// Why an expression gave no value; the message is shown in the failed step's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// Whether each source compiles, as an expression or as a function body (`return`
/// included), in one engine; nothing is run. The error names the first that does not.
pub fn check_all(sources: &[&str]) -> Result<(), (usize, String)> {
    let outcome = with_engine(Instant::now() + DEADLINE * 5, |ctx| {
        for (i, source) in sources.iter().enumerate() {
            // A module is only compiled when declared, never run: whatever the source does to
            // the text around it, none of it executes here.
            let declare = |name: String, code: String| {
                rquickjs::Module::declare(ctx.clone(), name, code).map(drop)
            };
            declare(
                format!("e{i}"),
                format!("export function f() {{ return (\n{source}\n); }}"),
            )
            .or_else(|first| {
                let _ = ctx.catch();
                declare(
                    format!("b{i}"),
                    format!("export function f() {{\n{source}\n}}"),
                )
                .map_err(|_| first)
            })
            .map_err(|e| (i, describe(&ctx, e)))?;
        }
        Ok(())
    });
    outcome.map_err(|e| (0, e.0))?
}

/// Evaluates `source` with `vars` as its global variables, within [`DEADLINE`].
pub fn eval(source: &str, vars: &Map<String, Value>) -> Result<Value, ExprError> {
    eval_by(source, vars, Instant::now() + DEADLINE)
}

/// Evaluates `source` with `vars` as its global variables, stopping it at `deadline`.
pub fn eval_by(
    source: &str,
    vars: &Map<String, Value>,
    deadline: Instant,
) -> Result<Value, ExprError> {
    if let Some(found) = plain_lookup(source, vars) {
        return Ok(found.clone());
    }
    let value = with_engine(deadline, |ctx| {
        let globals = ctx.globals();
        for (name, value) in vars {
            let js = ctx
                .json_parse(value.to_string())
                .map_err(|e| ExprError(format!("cannot pass {name}: {e}")))?;
            globals
                .set(name.as_str(), js)
                .map_err(|e| ExprError(format!("cannot pass {name}: {e}")))?;
        }
        let function = compile(&ctx, source).map_err(|e| ExprError(describe(&ctx, e)))?;
        let json: Option<String> = function
            .call::<_, rquickjs::Value>(())
            .and_then(|value| {
                if value.is_undefined() {
                    Ok(None)
                } else {
                    ctx.json_stringify(value)
                        .and_then(|s| s.map(|s| s.to_string()).transpose())
                }
            })
            .map_err(|e| ExprError(describe(&ctx, e)))?;
        match json {
            None => Ok(Value::Null),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| ExprError(format!("the value is not JSON: {e}"))),
        }
    })??;
    if crate::domain::contains_nul(&value) {
        return Err(ExprError(
            "the value contains the character U+0000, which cannot be stored".into(),
        ));
    }
    Ok(value)
}

/// `Boolean(expr)`, as Windmill evaluates predicates.
pub fn eval_bool(source: &str, vars: &Map<String, Value>) -> Result<bool, ExprError> {
    Ok(truthy(&eval(source, vars)?))
}

/// JavaScript's truthiness of a JSON value.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A fresh runtime and context with the limits set, interrupted at `deadline`; `run` gets the
/// context.
fn with_engine<T>(
    deadline: Instant,
    run: impl FnOnce(rquickjs::Ctx<'_>) -> T,
) -> Result<T, ExprError> {
    if Instant::now() >= deadline {
        return Err(ExprError("no time was left to evaluate it".into()));
    }
    let engine = |e: rquickjs::Error| ExprError(format!("cannot start the expression engine: {e}"));
    let runtime = Runtime::new().map_err(engine)?;
    runtime.set_memory_limit(MEMORY_LIMIT);
    runtime.set_max_stack_size(STACK_LIMIT);
    runtime.set_interrupt_handler(Some(Box::new(move || Instant::now() > deadline)));
    let context = Context::full(&runtime).map_err(engine)?;
    Ok(context.with(run))
}

/// The expression as a function: `return (<source>)` when it is an expression, else the
/// source itself as the body (so `let x = 1; return x` works too). Evaluating the function
/// expression runs nothing of the source; calling it does.
fn compile<'js>(
    ctx: &rquickjs::Ctx<'js>,
    source: &str,
) -> rquickjs::Result<rquickjs::Function<'js>> {
    ctx.eval::<rquickjs::Function, _>(format!("(function () {{ return (\n{source}\n); }})"))
        .or_else(|_| {
            // The first attempt's exception is pending: clear it before the second.
            let _ = ctx.catch();
            ctx.eval::<rquickjs::Function, _>(format!("(function () {{\n{source}\n}})"))
        })
}

fn describe(ctx: &rquickjs::Ctx<'_>, error: rquickjs::Error) -> String {
    let caught = CaughtError::from_error(ctx, error);
    let text = match &caught {
        CaughtError::Exception(e) => e.message().unwrap_or_else(|| e.to_string()),
        CaughtError::Value(v) => format!("{v:?}"),
        CaughtError::Error(e) => e.to_string(),
    };
    if text.contains("interrupted") {
        format!("took longer than {}s", DEADLINE.as_secs())
    } else {
        text
    }
}

/// `name(.key | [index] | ["key"])*` resolved in `vars` when every step exists; `None` means
/// "let the engine decide" (a missing key, `.length`, or anything that is not a plain path).
fn plain_lookup<'a>(source: &str, vars: &'a Map<String, Value>) -> Option<&'a Value> {
    let mut rest = source.trim();
    let ident_len = |s: &str| {
        s.char_indices()
            .take_while(|(i, c)| {
                c.is_ascii_alphabetic() || *c == '_' || *c == '$' || (*i > 0 && c.is_ascii_digit())
            })
            .count()
    };
    let n = ident_len(rest);
    if n == 0 {
        return None;
    }
    let mut current = vars.get(&rest[..n])?;
    rest = &rest[n..];
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let n = ident_len(after);
            if n == 0 {
                return None;
            }
            current = current.as_object()?.get(&after[..n])?;
            rest = &after[n..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']')?;
            let inside = after[..close].trim();
            current = if let Ok(index) = inside.parse::<usize>() {
                current.as_array()?.get(index)?
            } else {
                let key = inside
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .or_else(|| inside.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))?;
                if key.contains(['\\', '"', '\'']) {
                    return None;
                }
                current.as_object()?.get(key)?
            };
            rest = &after[close + 1..];
        } else {
            return None;
        }
    }
    Some(current)
}

/// Whether `source` may read the variable `name` (a conservative textual check, used to pass
/// only the variables an expression can use).
pub fn mentions(source: &str, name: &str) -> bool {
    source.match_indices(name).any(|(at, _)| {
        let before = source[..at].chars().next_back();
        let after = source[at + name.len()..].chars().next();
        let ident =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        !ident(before) && !ident(after)
    })
}

/// The ids `results.<id>` / `results["id"]` names, or `None` when `results` is used in any
/// other way (then every result must be passed).
pub fn result_ids(source: &str) -> Option<Vec<String>> {
    let mut ids = Vec::new();
    for (at, _) in source.match_indices("results") {
        let before = source[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.') {
            continue;
        }
        let rest = &source[at + "results".len()..];
        if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let id: String = if let Some(after) = rest.strip_prefix('.') {
            after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$')
                .collect()
        } else if let Some(after) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix("['")) {
            after
                .chars()
                .take_while(|c| *c != '"' && *c != '\'')
                .collect()
        } else {
            return None;
        };
        if id.is_empty() {
            return None;
        }
        ids.push(id);
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn expressions_and_bodies_evaluate_to_json() {
        let v =
            vars(json!({"flow_input": {"x": 2, "items": [1, 2, 3]}, "results": {"a": {"n": 5}}}));
        assert_eq!(eval("flow_input.x * 21", &v).unwrap(), json!(42));
        assert_eq!(
            eval("flow_input.items.map(i => i * 2)", &v).unwrap(),
            json!([2, 4, 6])
        );
        assert_eq!(
            eval(
                "let s = 0; for (const i of flow_input.items) s += i; return s",
                &v
            )
            .unwrap(),
            json!(6)
        );
        assert_eq!(eval("flow_input.missing", &v).unwrap(), json!(null));
        assert_eq!(eval("undefined", &v).unwrap(), json!(null));
        assert_eq!(eval("({a: [1, 'b']})", &v).unwrap(), json!({"a": [1, "b"]}));
        assert_eq!(eval("flow_input.items.length", &v).unwrap(), json!(3));
        assert_eq!(eval("`n=${results.a.n}`", &v).unwrap(), json!("n=5"));
        assert!(eval_bool("flow_input.x > 1", &v).unwrap());
        assert!(!eval_bool("''", &v).unwrap());
    }

    #[test]
    fn plain_lookups_skip_the_engine_but_agree_with_it() {
        let v = vars(json!({"flow_input": {"a": {"b": [10, {"c": "d"}]}}, "results": {"x-y": 1}}));
        for source in [
            "flow_input.a.b[1].c",
            "flow_input['a'][\"b\"][0]",
            "results[\"x-y\"]",
        ] {
            assert!(plain_lookup(source, &v).is_some(), "{source}");
        }
        assert_eq!(eval("flow_input.a.b[1].c", &v).unwrap(), json!("d"));
        assert!(plain_lookup("flow_input.a.b.length", &v).is_none());
        assert!(plain_lookup("flow_input.nope", &v).is_none());
        assert_eq!(eval("flow_input.a.b.length", &v).unwrap(), json!(2));
    }

    #[test]
    fn errors_limits_and_syntax() {
        let v = Map::new();
        let err = eval("missing_variable + 1", &v).unwrap_err();
        assert!(err.0.contains("missing_variable"), "{err}");
        let err = eval("flow_input.a.b", &vars(json!({"flow_input": {}}))).unwrap_err();
        assert!(!err.0.is_empty());
        let started = Instant::now();
        let err = eval("while (true) {}", &v).unwrap_err();
        assert!(err.0.contains("took longer"), "{err}");
        assert!(started.elapsed() < DEADLINE * 3);
        // The memory cap stops a growing value, not the deadline: with a minute to go, the
        // engine still refuses it, well before even the usual deadline.
        let started = Instant::now();
        let err = eval_by(
            "let a = []; while (true) a.push('x'.repeat(1000))",
            &v,
            started + Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(err.0.contains("out of memory"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "{err}");
        let err = eval("let a = []; while (true) a.push('x'.repeat(1000))", &v).unwrap_err();
        assert!(err.0.contains("out of memory"), "{err}");
        assert!(
            check_all(&["flow_input.x", "flow_input.x +"])
                .unwrap_err()
                .0
                == 1
        );
        assert!(check_all(&["return 1", "flow_input.x", "let a = 1; return a"]).is_ok());
        let err = eval("'a\\u0000b'", &v).unwrap_err();
        assert!(err.0.contains("U+0000"), "{err}");
        // Nothing outside the engine is reachable.
        assert_eq!(
            eval("typeof require + typeof process + typeof fetch", &v).unwrap(),
            json!("undefinedundefinedundefined")
        );
    }

    #[test]
    fn mentioned_variables_and_result_ids() {
        assert!(mentions("flow_input.x", "flow_input"));
        assert!(!mentions("my_flow_input.x", "flow_input"));
        assert_eq!(
            result_ids("results.a + results['b c']"),
            Some(vec!["a".into(), "b c".into()])
        );
        assert_eq!(result_ids("Object.keys(results)"), None);
        assert_eq!(result_ids("flow_input.x"), Some(vec![]));
        assert_eq!(result_ids("myresults.a"), Some(vec![]));
    }
}
