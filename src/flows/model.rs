//! OpenFlow definitions (Windmill's flow JSON), checked once into a form the state machine can
//! run without surprises: every module has a unique id, a known type and language, and every
//! JavaScript expression parses. What cannot run is refused here, naming the module.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::expr;
use crate::domain::{RunnablePath, ScriptHash, ScriptLang, Tag};

/// A checked flow: the `value` of a flow version.
#[derive(Debug, Clone)]
pub struct FlowDef {
    pub modules: Vec<Module>,
    pub failure_module: Option<Module>,
    /// A top-level module whose result answers a sync call while the flow goes on.
    pub early_return: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Module {
    pub id: String,
    pub kind: ModuleKind,
    pub retry: Option<Retry>,
    pub stop_after_if: Option<StopIf>,
    /// Loops only: evaluated once every iteration ended, with `result` = all their results.
    pub stop_after_all_iters_if: Option<StopIf>,
    pub skip_if: Option<String>,
    /// Seconds.
    pub timeout: Option<Transform>,
    /// Seconds to wait after the module, before the next one.
    pub sleep: Option<Transform>,
    pub continue_on_error: bool,
}

#[derive(Debug, Clone)]
pub enum ModuleKind {
    RawScript {
        language: ScriptLang,
        content: String,
        inputs: Inputs,
        tag: Option<Tag>,
    },
    Script {
        path: RunnablePath,
        hash: Option<ScriptHash>,
        inputs: Inputs,
        tag: Option<Tag>,
    },
    ForLoop {
        iterator: Transform,
        body: Vec<Module>,
        parallel: bool,
        parallelism: Option<Transform>,
        skip_failures: bool,
    },
    BranchOne {
        branches: Vec<(String, Vec<Module>)>,
        default: Vec<Module>,
    },
    BranchAll {
        branches: Vec<(Vec<Module>, bool)>,
        parallel: bool,
    },
    Identity,
}

impl ModuleKind {
    /// Whether the module runs as one step job.
    pub fn is_job(&self) -> bool {
        matches!(self, Self::RawScript { .. } | Self::Script { .. })
    }
}

/// Input transforms in their declared order.
pub type Inputs = Vec<(String, Transform)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Static(Value),
    Js(String),
}

impl Transform {
    /// The expression, or the static value, as text for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Static(value) => value.to_string(),
            Self::Js(source) => source.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StopIf {
    pub expr: String,
    pub skip_if_stopped: bool,
}

/// Windmill's retry: constant attempts first, then exponential ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retry {
    pub constant_attempts: u32,
    pub constant_seconds: u64,
    pub exponential_attempts: u32,
    pub multiplier: u64,
    pub seconds: u64,
    pub random_factor: u8,
}

/// A definition that cannot run, with the module it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidFlow(pub String);

/// How much a definition may hold: each module may start jobs and loops of its own, and each
/// expression is compiled when the definition is saved.
pub const MAX_MODULES: usize = 1_000;
/// Loops and branches inside loops and branches, at most this deep.
pub const MAX_NESTING: usize = 16;
pub const MAX_EXPR_LEN: usize = 64 * 1024;

/// What parsing has seen so far across the whole definition.
#[derive(Default)]
struct Parsing {
    ids: HashSet<String>,
    depth: usize,
}

/// A script module's target, for the caller to check that it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptRef {
    pub module: String,
    pub path: RunnablePath,
    pub hash: Option<ScriptHash>,
}

impl FlowDef {
    /// Parses and checks a flow `value` as it is saved: its structure, and that every
    /// JavaScript expression compiles (nothing is run).
    pub fn check(value: &Value) -> Result<Self, InvalidFlow> {
        let def = Self::parse(value)?;
        let expressions = def.expressions();
        let sources: Vec<&str> = expressions.iter().map(|(_, s)| s.as_str()).collect();
        if let Err((i, why)) = expr::check_all(&sources) {
            let (at, source) = &expressions[i];
            return Err(InvalidFlow(format!(
                "{at} {source:?} does not parse: {why}"
            )));
        }
        Ok(def)
    }

    /// Parses a flow `value` that was checked when it was saved.
    pub fn parse(value: &Value) -> Result<Self, InvalidFlow> {
        let object = value
            .as_object()
            .ok_or_else(|| InvalidFlow("the flow value must be a JSON object".into()))?;
        let mut parsing = Parsing::default();
        let modules = match object.get("modules") {
            Some(modules) => parse_modules(modules, "value.modules", &mut parsing)?,
            None => return Err(InvalidFlow("the flow value has no `modules`".into())),
        };
        let failure_module = match object.get("failure_module") {
            None | Some(Value::Null) => None,
            Some(raw) => Some(parse_module(raw, "value.failure_module", &mut parsing)?),
        };
        if parsing.ids.len() > MAX_MODULES {
            return Err(InvalidFlow(format!(
                "the flow has {} modules; at most {MAX_MODULES}",
                parsing.ids.len()
            )));
        }
        let early_return = match object.get("early_return") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if modules.iter().any(|m| &m.id == id) => Some(id.clone()),
            Some(other) => {
                return Err(InvalidFlow(format!(
                    "early_return {other} does not name a top-level module"
                )))
            }
        };
        Ok(Self {
            modules,
            failure_module,
            early_return,
        })
    }

    /// Every JavaScript expression, with where it is (`module a: input x`).
    pub fn expressions(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for module in self.modules.iter().chain(self.failure_module.iter()) {
            collect_expressions(module, &mut found);
        }
        found
    }

    /// Every `script` module, nested ones included.
    pub fn script_refs(&self) -> Vec<ScriptRef> {
        let mut refs = Vec::new();
        let all = self.modules.iter().chain(self.failure_module.iter());
        for module in all {
            collect_refs(module, &mut refs);
        }
        refs
    }

    /// The module with this id, anywhere in the flow.
    pub fn find(&self, id: &str) -> Option<&Module> {
        fn find_in<'a>(modules: &'a [Module], id: &str) -> Option<&'a Module> {
            modules.iter().find_map(|m| {
                if m.id == id {
                    return Some(m);
                }
                match &m.kind {
                    ModuleKind::ForLoop { body, .. } => find_in(body, id),
                    ModuleKind::BranchOne { branches, default } => branches
                        .iter()
                        .find_map(|(_, b)| find_in(b, id))
                        .or_else(|| find_in(default, id)),
                    ModuleKind::BranchAll { branches, .. } => {
                        branches.iter().find_map(|(b, _)| find_in(b, id))
                    }
                    _ => None,
                }
            })
        }
        find_in(&self.modules, id).or_else(|| {
            self.failure_module
                .as_ref()
                .and_then(|m| find_in(std::slice::from_ref(m), id))
        })
    }
}

fn collect_expressions(module: &Module, found: &mut Vec<(String, String)>) {
    let at = |what: &str| format!("module {}: {what}", module.id);
    let mut transform = |what: &str, t: &Transform| {
        if let Transform::Js(source) = t {
            found.push((at(what), source.clone()));
        }
    };
    if let Some(t) = &module.timeout {
        transform("timeout", t);
    }
    if let Some(t) = &module.sleep {
        transform("sleep", t);
    }
    match &module.kind {
        ModuleKind::RawScript { inputs, .. } | ModuleKind::Script { inputs, .. } => {
            for (name, t) in inputs {
                transform(&format!("input {name}"), t);
            }
        }
        ModuleKind::ForLoop {
            iterator,
            parallelism,
            ..
        } => {
            transform("iterator", iterator);
            if let Some(t) = parallelism {
                transform("parallelism", t);
            }
        }
        _ => {}
    }
    for (what, stop) in [
        ("stop_after_if", &module.stop_after_if),
        ("stop_after_all_iters_if", &module.stop_after_all_iters_if),
    ] {
        if let Some(stop) = stop {
            found.push((at(what), stop.expr.clone()));
        }
    }
    if let Some(source) = &module.skip_if {
        found.push((at("skip_if"), source.clone()));
    }
    match &module.kind {
        ModuleKind::ForLoop { body, .. } => {
            body.iter().for_each(|m| collect_expressions(m, found));
        }
        ModuleKind::BranchOne { branches, default } => {
            for (source, modules) in branches {
                found.push((at("branch expr"), source.clone()));
                modules.iter().for_each(|m| collect_expressions(m, found));
            }
            default.iter().for_each(|m| collect_expressions(m, found));
        }
        ModuleKind::BranchAll { branches, .. } => branches
            .iter()
            .flat_map(|(b, _)| b)
            .for_each(|m| collect_expressions(m, found)),
        ModuleKind::RawScript { .. } | ModuleKind::Script { .. } | ModuleKind::Identity => {}
    }
}

fn collect_refs(module: &Module, refs: &mut Vec<ScriptRef>) {
    match &module.kind {
        ModuleKind::Script { path, hash, .. } => refs.push(ScriptRef {
            module: module.id.clone(),
            path: path.clone(),
            hash: hash.clone(),
        }),
        ModuleKind::ForLoop { body, .. } => body.iter().for_each(|m| collect_refs(m, refs)),
        ModuleKind::BranchOne { branches, default } => branches
            .iter()
            .flat_map(|(_, b)| b)
            .chain(default)
            .for_each(|m| collect_refs(m, refs)),
        ModuleKind::BranchAll { branches, .. } => branches
            .iter()
            .flat_map(|(b, _)| b)
            .for_each(|m| collect_refs(m, refs)),
        ModuleKind::RawScript { .. } | ModuleKind::Identity => {}
    }
}

fn parse_modules(raw: &Value, at: &str, parsing: &mut Parsing) -> Result<Vec<Module>, InvalidFlow> {
    let items = raw
        .as_array()
        .ok_or_else(|| InvalidFlow(format!("{at} must be an array of modules")))?;
    if parsing.depth > MAX_NESTING {
        return Err(InvalidFlow(format!(
            "{at}: loops and branches are nested more than {MAX_NESTING} deep"
        )));
    }
    parsing.depth += 1;
    let modules = items
        .iter()
        .enumerate()
        .map(|(i, m)| parse_module(m, &format!("{at}[{i}]"), parsing))
        .collect();
    parsing.depth -= 1;
    modules
}

/// Reads one field of a module, naming the module when it has the wrong type.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    module: &'a str,
}

impl<'a> Fields<'a> {
    fn bad(&self, why: impl std::fmt::Display) -> InvalidFlow {
        InvalidFlow(format!("module {}: {why}", self.module))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, InvalidFlow> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(format!("`{key}` must be a string"))),
        }
    }

    fn required_string(&self, key: &str) -> Result<&'a str, InvalidFlow> {
        self.string(key)?
            .ok_or_else(|| self.bad(format!("`{key}` is required")))
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, InvalidFlow> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.bad(format!("`{key}` must be true or false"))),
        }
    }

    /// An expression's source; whether it compiles is checked with all the others.
    fn expr(&self, key: &str, source: &str) -> Result<String, InvalidFlow> {
        if source.len() > MAX_EXPR_LEN {
            return Err(self.bad(format!("{key} is longer than {MAX_EXPR_LEN} bytes")));
        }
        Ok(source.to_owned())
    }

    /// A number of seconds (or a count): a non-negative number, null, or an expression.
    fn amount(&self, key: &str) -> Result<Option<Transform>, InvalidFlow> {
        let transform = self.optional_transform(key)?;
        if let Some(Transform::Static(value)) = &transform {
            let ok = value.is_null() || value.as_f64().is_some_and(|n| n >= 0.0);
            if !ok {
                return Err(self.bad(format!("{key} must be a non-negative number, got {value}")));
            }
        }
        Ok(transform)
    }

    fn transform(&self, key: &str, raw: &Value) -> Result<Transform, InvalidFlow> {
        if let Value::Number(_) = raw {
            // `timeout` and `parallelism` may be bare numbers.
            return Ok(Transform::Static(raw.clone()));
        }
        let map = raw
            .as_object()
            .ok_or_else(|| self.bad(format!("{key} must be an input transform object")))?;
        match map.get("type").and_then(Value::as_str) {
            Some("static") => Ok(Transform::Static(
                map.get("value").cloned().unwrap_or(Value::Null),
            )),
            Some("javascript") => {
                let source = map.get("expr").and_then(Value::as_str).unwrap_or_default();
                Ok(Transform::Js(self.expr(key, source)?))
            }
            other => Err(self.bad(format!(
                "{key} has type {}: expected static or javascript",
                other.map_or("(none)".to_owned(), |t| format!("{t:?}"))
            ))),
        }
    }

    fn optional_transform(&self, key: &str) -> Result<Option<Transform>, InvalidFlow> {
        self.get(key)
            .map(|raw| self.transform(key, raw))
            .transpose()
    }

    fn inputs(&self) -> Result<Inputs, InvalidFlow> {
        let raw = self
            .get("input_transforms")
            .or_else(|| self.get("input_transform"));
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        let map = raw
            .as_object()
            .ok_or_else(|| self.bad("input_transforms must be an object"))?;
        map.iter()
            .map(|(name, t)| Ok((name.clone(), self.transform(&format!("input {name}"), t)?)))
            .collect()
    }

    fn tag(&self, key: &str) -> Result<Option<Tag>, InvalidFlow> {
        self.string(key)?
            .filter(|t| !t.is_empty())
            .map(|t| Tag::parse(t).map_err(|e| self.bad(e)))
            .transpose()
    }

    fn stop_if(&self, key: &str) -> Result<Option<StopIf>, InvalidFlow> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        let map = raw
            .as_object()
            .ok_or_else(|| self.bad(format!("{key} must be an object with `expr`")))?;
        let source = map
            .get("expr")
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad(format!("{key}.expr is required")))?;
        Ok(Some(StopIf {
            expr: self.expr(key, source)?,
            // Windmill's backend requires the key; a missing one means false.
            skip_if_stopped: map
                .get("skip_if_stopped")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }))
    }

    fn retry(&self) -> Result<Option<Retry>, InvalidFlow> {
        let Some(raw) = self.get("retry") else {
            return Ok(None);
        };
        let number = |v: Option<&Value>, what: &str| -> Result<u64, InvalidFlow> {
            match v {
                None | Some(Value::Null) => Ok(0),
                Some(v) => v.as_u64().ok_or_else(|| {
                    self.bad(format!("retry {what} must be a non-negative integer"))
                }),
            }
        };
        let constant = raw.get("constant");
        let exponential = raw.get("exponential");
        fn field<'v>(part: Option<&'v Value>, key: &str) -> Option<&'v Value> {
            part.and_then(|p| p.get(key))
        }
        let retry = Retry {
            constant_attempts: number(field(constant, "attempts"), "attempts")?.min(1000) as u32,
            constant_seconds: number(field(constant, "seconds"), "seconds")?,
            exponential_attempts: number(field(exponential, "attempts"), "attempts")?.min(1000)
                as u32,
            multiplier: match field(exponential, "multiplier") {
                None | Some(Value::Null) => 1,
                v => number(v, "multiplier")?,
            },
            seconds: number(field(exponential, "seconds"), "seconds")?,
            random_factor: number(field(exponential, "random_factor"), "random_factor")?.min(100)
                as u8,
        };
        if retry.exponential_attempts > 0 && retry.seconds == 0 {
            return Err(self.bad("exponential retry needs `seconds` of at least 1"));
        }
        Ok(Some(retry))
    }
}

fn parse_module(raw: &Value, at: &str, parsing: &mut Parsing) -> Result<Module, InvalidFlow> {
    let map = raw
        .as_object()
        .ok_or_else(|| InvalidFlow(format!("{at} must be an object")))?;
    let id = match map.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(InvalidFlow(format!("{at} has no `id`"))),
    };
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || id.len() > 64
    {
        return Err(InvalidFlow(format!(
            "module id {id:?} must be 1 to 64 of [A-Za-z0-9_-]"
        )));
    }
    if !parsing.ids.insert(id.clone()) {
        return Err(InvalidFlow(format!("duplicate module id {id:?}")));
    }
    let fields = Fields { map, module: &id };
    let value = map
        .get("value")
        .and_then(Value::as_object)
        .ok_or_else(|| fields.bad("`value` must be an object"))?;
    let v = Fields {
        map: value,
        module: &id,
    };
    let kind = match value.get("type").and_then(Value::as_str) {
        Some("rawscript") => {
            let language = v.required_string("language")?;
            let language: ScriptLang = language.parse().map_err(|e| v.bad(e))?;
            ModuleKind::RawScript {
                language,
                content: v.required_string("content")?.to_owned(),
                inputs: v.inputs()?,
                tag: v.tag("tag")?,
            }
        }
        Some("script") => ModuleKind::Script {
            path: RunnablePath::parse(v.required_string("path")?).map_err(|e| v.bad(e))?,
            hash: v
                .string("hash")?
                .map(ScriptHash::parse)
                .transpose()
                .map_err(|e| v.bad(e))?,
            inputs: v.inputs()?,
            tag: v.tag("tag_override")?,
        },
        Some("forloopflow") => ModuleKind::ForLoop {
            iterator: match v.get("iterator") {
                Some(raw) => v.transform("iterator", raw)?,
                None => return Err(v.bad("`iterator` is required")),
            },
            body: parse_modules(
                v.get("modules").unwrap_or(&Value::Array(vec![])),
                &format!("module {id}: modules"),
                parsing,
            )?,
            parallel: v.boolean("parallel", false)?,
            parallelism: v.amount("parallelism")?,
            skip_failures: v.boolean("skip_failures", true)?,
        },
        Some("branchone") => {
            let branches = branch_list(&v, &id, parsing, |b, modules| {
                let expr = b.string("expr")?.unwrap_or_default();
                let expr = if expr.trim().is_empty() {
                    "false".to_owned()
                } else {
                    b.expr("branch expr", expr)?
                };
                Ok((expr, modules))
            })?;
            let default = match v.get("default") {
                Some(raw) => parse_modules(raw, &format!("module {id}: default"), parsing)?,
                None => Vec::new(),
            };
            ModuleKind::BranchOne { branches, default }
        }
        Some("branchall") => ModuleKind::BranchAll {
            branches: branch_list(&v, &id, parsing, |b, modules| {
                Ok((modules, b.boolean("skip_failure", true)?))
            })?,
            parallel: v.boolean("parallel", true)?,
        },
        Some("identity") => ModuleKind::Identity,
        Some(other) => {
            return Err(v.bad(format!(
                "unknown module type {other:?}: expected rawscript, script, forloopflow, \
                 branchone, branchall or identity"
            )))
        }
        None => return Err(v.bad("`value.type` is required")),
    };
    let skip_if = match fields.get("skip_if") {
        None => None,
        Some(raw) => {
            let source = raw
                .get("expr")
                .and_then(Value::as_str)
                .ok_or_else(|| fields.bad("skip_if.expr is required"))?;
            Some(fields.expr("skip_if", source)?)
        }
    };
    Ok(Module {
        kind,
        retry: fields.retry()?,
        stop_after_if: fields.stop_if("stop_after_if")?,
        stop_after_all_iters_if: fields.stop_if("stop_after_all_iters_if")?,
        skip_if,
        timeout: fields.amount("timeout")?,
        sleep: fields.amount("sleep")?,
        continue_on_error: fields.boolean("continue_on_error", false)?,
        id,
    })
}

/// The `branches` of a branch module; `read` turns one branch and its modules into an item.
fn branch_list<T>(
    v: &Fields<'_>,
    id: &str,
    parsing: &mut Parsing,
    read: impl Fn(&Fields<'_>, Vec<Module>) -> Result<T, InvalidFlow>,
) -> Result<Vec<T>, InvalidFlow> {
    let Some(raw) = v.get("branches") else {
        return Err(v.bad("`branches` is required"));
    };
    let list = raw
        .as_array()
        .ok_or_else(|| v.bad("`branches` must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, branch)| {
            let map = branch
                .as_object()
                .ok_or_else(|| v.bad(format!("branch {i} must be an object")))?;
            let fields = Fields { map, module: id };
            let modules = parse_modules(
                map.get("modules").unwrap_or(&Value::Array(vec![])),
                &format!("module {id}: branch {i}"),
                parsing,
            )?;
            read(&fields, modules)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(id: &str, content: &str) -> Value {
        json!({"id": id, "value": {"type": "rawscript", "language": "bash", "content": content}})
    }

    #[test]
    fn a_full_definition_parses() {
        let def = FlowDef::check(&json!({
            "modules": [
                raw("a", "echo 1"),
                {"id": "loop", "value": {"type": "forloopflow",
                    "iterator": {"type": "javascript", "expr": "results.a"},
                    "modules": [raw("b", "echo 2")], "parallel": true, "parallelism": 4}},
                {"id": "pick", "value": {"type": "branchone",
                    "branches": [{"expr": "flow_input.x > 1", "modules": [raw("c", "echo")]}],
                    "default": [{"id": "d", "value": {"type": "identity"}}]}},
                {"id": "all", "value": {"type": "branchall",
                    "branches": [{"modules": [raw("e", "echo")], "skip_failure": false}]},
                 "retry": {"constant": {"attempts": 2, "seconds": 1}},
                 "stop_after_if": {"expr": "result == 1"}, "timeout": 30,
                 "sleep": {"type": "static", "value": 1}},
                {"id": "s", "value": {"type": "script", "path": "f/x/y", "hash": "0123456789abcdef",
                    "input_transforms": {"n": {"type": "static", "value": 3}}}},
            ],
            "failure_module": raw("failure", "echo failed"),
            "early_return": "a",
        }))
        .unwrap();
        assert_eq!(def.modules.len(), 5);
        assert!(matches!(
            def.modules[1].kind,
            ModuleKind::ForLoop {
                parallel: true,
                skip_failures: true,
                ..
            }
        ));
        assert!(
            matches!(&def.modules[3].kind, ModuleKind::BranchAll { parallel: true, branches } if !branches[0].1)
        );
        assert_eq!(def.modules[3].retry.as_ref().unwrap().constant_attempts, 2);
        assert!(
            !def.modules[3]
                .stop_after_if
                .as_ref()
                .unwrap()
                .skip_if_stopped
        );
        assert_eq!(def.modules[3].timeout, Some(Transform::Static(json!(30))));
        assert_eq!(def.script_refs().len(), 1);
        assert_eq!(def.find("e").unwrap().id, "e");
        assert_eq!(def.early_return.as_deref(), Some("a"));
    }

    #[test]
    fn a_retry_with_constant_and_exponential_parts_parses() {
        let def = FlowDef::check(&json!({"modules": [
            {"id": "a", "value": {"type": "identity"}, "retry": {
                "constant": {"attempts": 1, "seconds": 2},
                "exponential": {"attempts": 3, "multiplier": 4, "seconds": 5, "random_factor": 20}}},
            {"id": "b", "value": {"type": "identity"}, "retry": {
                "exponential": {"attempts": 2, "seconds": 3, "random_factor": 250}}},
        ]}))
        .unwrap();
        assert_eq!(
            def.modules[0].retry,
            Some(Retry {
                constant_attempts: 1,
                constant_seconds: 2,
                exponential_attempts: 3,
                multiplier: 4,
                seconds: 5,
                random_factor: 20,
            })
        );
        // The multiplier defaults to 1 and the jitter is at most the whole delay.
        assert_eq!(
            def.modules[1].retry,
            Some(Retry {
                exponential_attempts: 2,
                multiplier: 1,
                seconds: 3,
                random_factor: 100,
                ..Default::default()
            })
        );
        let err = FlowDef::check(
            &json!({"modules": [{"id": "c", "value": {"type": "identity"},
            "retry": {"exponential": {"attempts": 2, "seconds": 1, "multiplier": -2}}}]}),
        )
        .unwrap_err();
        assert!(err.0.contains("module c: retry multiplier"), "{err}");
    }

    fn nested(depth: usize) -> Value {
        let mut inner = json!([]);
        for i in 0..depth {
            inner = json!([{"id": format!("l{i}"), "value": {"type": "forloopflow",
                "iterator": {"type": "javascript", "expr": "[]"}, "modules": inner}}]);
        }
        json!({"modules": inner})
    }

    #[test]
    fn expressions_are_compiled_not_run() {
        // Breaking out of the wrapper must not run anything: it does not even parse.
        let escape = "0); })(), (()=>{while(true){}})(), (function () { return (0";
        let started = std::time::Instant::now();
        let err = FlowDef::check(
            &json!({"modules": [{"id": "a", "value": {"type": "identity"},
            "skip_if": {"expr": escape}}]}),
        )
        .unwrap_err();
        assert!(err.0.contains("module a: skip_if"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "nothing ran until the deadline"
        );
        assert!(FlowDef::check(&nested(MAX_NESTING)).is_ok());
    }

    #[test]
    fn bad_definitions_name_the_module() {
        let cases = [
            (
                json!({"modules": [{"id": "a", "value": {"type": "whileloopflow"}}]}),
                "module a: unknown module type",
            ),
            (
                json!({"modules": [raw("a", "x"), raw("a", "y")]}),
                "duplicate module id \"a\"",
            ),
            (
                json!({"modules": [{"id": "a", "value": {"type": "rawscript", "language": "cobol", "content": ""}}]}),
                "module a: unknown language",
            ),
            (
                json!({"modules": [{"id": "a", "value": {"type": "rawscript", "language": "bash", "content": "",
                "input_transforms": {"x": {"type": "javascript", "expr": "flow_input.("}}}}]}),
                "module a: input x",
            ),
            (
                json!({"modules": [{"id": "b", "value": {"type": "branchone", "branches": [{"expr": "1 +", "modules": []}]}}]}),
                "module b: branch expr",
            ),
            (
                json!({"modules": [{"id": "s", "value": {"type": "script", "path": "nope"}}]}),
                "module s: invalid path",
            ),
            (json!({"modules": []}), ""),
            (
                json!({"modules": [raw("a", "x")], "early_return": "zz"}),
                "early_return",
            ),
            (json!({"nothing": 1}), "no `modules`"),
            (
                json!({"modules": [{"id": "l", "value": {"type": "forloopflow", "modules": [raw("a", "x")]}}]}),
                "module l: `iterator` is required",
            ),
            (
                json!({"modules": [{"id": "l", "value": {"type": "forloopflow", "iterator": {"type": "javascript", "expr": "[1]"},
                "modules": [raw("l", "x")]}}]}),
                "duplicate module id \"l\"",
            ),
            (
                json!({"modules": [{"id": "a", "value": {"type": "identity"}, "retry": {"exponential": {"attempts": 2}}}]}),
                "module a: exponential retry",
            ),
        ];
        for (value, expected) in cases {
            match FlowDef::check(&value) {
                Ok(_) if expected.is_empty() => {}
                Ok(_) => panic!("accepted {value}"),
                Err(e) => assert!(e.0.contains(expected), "{value}: {e}"),
            }
        }
    }
}
