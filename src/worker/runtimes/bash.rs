//! Bash: `x="$1"` lines name the positional arguments; the result is `./result.json` if the
//! script wrote it, else the last line of its output.

use std::process::ExitStatus;

use serde_json::{Map, Value};

use super::{last_line_hint, ScriptError};

/// Positions bash can name: `$1`…`$9`, or `${10}` and up with braces (`$10` is `${1}0`).
const MAX_POSITION: usize = 1000;

/// Argument names in positional order, from lines like `name="$1"` (or `name=$1`,
/// `name="${12}"`); a position past [`MAX_POSITION`] fails the job, naming the cap.
fn declared_names(content: &str) -> Result<Vec<(usize, String)>, ScriptError> {
    let mut names = Vec::new();
    for line in content.lines() {
        let line = line.trim();
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        let Some(reference) = value.strip_prefix('$') else {
            continue;
        };
        let digits = match reference
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
        {
            Some(inside) => inside,
            None if reference.len() == 1 => reference,
            None => continue,
        };
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match digits.parse::<usize>() {
            Ok(position) if (1..=MAX_POSITION).contains(&position) => {
                names.push((position, name.to_owned()))
            }
            Ok(0) => {}
            // Past the cap, or too large to count: the argument vector would be that long.
            _ => {
                return Err(ScriptError::new(
                    "TooManyArguments",
                    format!(
                        "`{line}` names positional argument {digits}: a bash script may \
                         name at most {MAX_POSITION}"
                    ),
                ))
            }
        }
    }
    Ok(names)
}

/// The positional arguments: strings as they are, other JSON values as JSON text.
pub fn positional_args(
    content: &str,
    args: &Map<String, Value>,
) -> Result<Vec<String>, ScriptError> {
    let names = declared_names(content)?;
    let count = names.iter().map(|(p, _)| *p).max().unwrap_or(0);
    let mut positional = vec![String::new(); count];
    for (position, name) in names {
        positional[position - 1] = match args.get(&name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
    }
    Ok(positional)
}

/// `result_json`: the `result.json` the script wrote, if any.
pub fn outcome(
    status: ExitStatus,
    result_json: Option<String>,
    logs: &str,
) -> Result<Value, ScriptError> {
    if !status.success() {
        return Err(ScriptError::new(
            "ExecutionErr",
            format!("bash exited with {status}{}", last_line_hint(logs)),
        ));
    }
    if let Some(text) = result_json {
        return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
    }
    let last = logs.lines().rev().find(|l| !l.trim().is_empty());
    Ok(last.map_or(Value::Null, |l| Value::String(l.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn positional_arguments_follow_declarations() {
        let script = "name=\"$1\"\ncount=$2\necho hi\n";
        let args = json!({"name": "ada", "count": 3, "ignored": true});
        let args = args.as_object().unwrap();
        let positional =
            |content: &str, args: &Map<String, Value>| positional_args(content, args).unwrap();
        assert_eq!(positional(script, args), vec!["ada", "3"]);
        assert_eq!(positional("echo no args", args), Vec::<String>::new());
        // `$100000000000` is `${1}00000000000` to bash: no ten-billion-slot vector.
        assert_eq!(
            positional("x=\"$100000000000\"", args),
            Vec::<String>::new()
        );
        let x = json!({"x": "c"});
        assert_eq!(
            positional("x=\"${3}\"", x.as_object().unwrap()),
            vec!["", "", "c"]
        );
        assert_eq!(
            positional("x=\"${1000}\"", x.as_object().unwrap()).len(),
            1000
        );
    }

    #[test]
    fn a_position_past_the_cap_fails_naming_it() {
        let args = Map::new();
        for script in ["x=\"${1001}\"", "x=${100000000000000000000000}"] {
            let error = positional_args(script, &args).unwrap_err();
            assert_eq!(error.name, "TooManyArguments");
            assert!(error.message.contains("at most 1000"), "{}", error.message);
        }
    }
}
