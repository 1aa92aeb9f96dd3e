//! How each language is run: the files a job's directory gets, the command line, and how the
//! process's end becomes a result or an error (SPEC §5's result/log/error contract).

mod bash;

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::process::{Ended, ProcessSpec};
use super::sandbox::{write_new, JobDir, NotOwner};
use crate::config::WorkerConfig;
use crate::domain::ScriptLang;

const PYTHON_WRAPPER: &str = include_str!("wrapper.py");
const TS_WRAPPER: &str = include_str!("wrapper.ts");
/// Written by the wrappers; distinct from `result.json`, which bash scripts own.
pub const RESULT_FILE: &str = ".millrace_result.json";
pub const ERROR_FILE: &str = ".millrace_error.json";

/// A script failure, as SPEC §5 shapes it: `{"error": {name, message, stack?}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptError {
    pub name: String,
    pub message: String,
    pub stack: Option<String>,
}

/// The worker's own failure to act on a job's files as the job's user.
impl From<NotOwner> for ScriptError {
    fn from(e: NotOwner) -> Self {
        Self::new("WorkerError", e.to_string())
    }
}

impl ScriptError {
    pub fn new(name: &str, message: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            message: message.into(),
            stack: None,
        }
    }

    pub fn to_result(&self) -> Value {
        let mut error = json!({"name": self.name, "message": self.message});
        if let Some(stack) = &self.stack {
            error["stack"] = json!(stack);
        }
        json!({ "error": error })
    }
}

/// The interpreters this worker was configured with.
#[derive(Debug, Clone)]
pub struct Runtimes {
    python: PathBuf,
    bash: PathBuf,
    bun: PathBuf,
    deno: PathBuf,
    /// `MAX_RESULT_SIZE`.
    max_result: u64,
    /// `WORKER_WARM`.
    pub warm: bool,
    /// `WORKER_PYTHON_PREIMPORT`.
    pub python_preimport: String,
}

/// An executable by absolute path, or looked up on the worker's own PATH.
fn resolve(program: &Path) -> Option<PathBuf> {
    let is_file = |p: &Path| p.is_file();
    if program.components().count() > 1 {
        return is_file(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| is_file(candidate))
}

impl Runtimes {
    pub fn new(config: &WorkerConfig) -> Self {
        Self {
            python: config.python.clone(),
            bash: config.bash.clone(),
            bun: config.bun.clone(),
            deno: config.deno.clone(),
            max_result: config.max_result_size,
            warm: config.warm,
            python_preimport: config.python_preimport.clone(),
        }
    }

    fn configured(&self, lang: ScriptLang) -> (&Path, &'static str) {
        match lang {
            ScriptLang::Python3 => (&self.python, "WORKER_PYTHON"),
            ScriptLang::Bash => (&self.bash, "WORKER_BASH"),
            ScriptLang::Bun => (&self.bun, "WORKER_BUN"),
            ScriptLang::Deno => (&self.deno, "WORKER_DENO"),
        }
    }

    /// The interpreter of `lang`, or why there is none.
    pub fn program(&self, lang: ScriptLang) -> Result<PathBuf, ScriptError> {
        let (configured, variable) = self.configured(lang);
        resolve(configured).ok_or_else(|| {
            ScriptError::new(
                "RuntimeNotInstalled",
                format!(
                    "the {lang} runtime is not installed on this worker ({variable}={})",
                    configured.display()
                ),
            )
        })
    }

    /// Writes the job's files into `dir` and returns the command that runs it.
    pub fn prepare(
        &self,
        lang: ScriptLang,
        content: &str,
        args: &Map<String, Value>,
        dir: &JobDir,
    ) -> Result<ProcessSpec, ScriptError> {
        let program = self.program(lang)?;
        let args_json = Value::Object(args.clone()).to_string();
        let files: &[(&str, &str)] = match lang {
            ScriptLang::Python3 => &[
                ("main.py", content),
                ("wrapper.py", PYTHON_WRAPPER),
                ("args.json", &args_json),
            ],
            ScriptLang::Bash => &[("main.sh", content)],
            ScriptLang::Bun | ScriptLang::Deno => &[
                ("main.ts", content),
                ("wrapper.ts", TS_WRAPPER),
                ("args.json", &args_json),
            ],
        };
        write_files(dir, files)?;
        let (mut program_args, env) = command_line(lang, dir.path());
        if lang == ScriptLang::Bash {
            program_args.extend(bash::positional_args(content, args)?);
        }
        Ok(ProcessSpec {
            program,
            args: program_args,
            env,
        })
    }

    /// The command of a TypeScript process started ahead of its job in `dir`: the wrapper,
    /// loaded, waits for the job (see `worker::warm`); `base_env` is its environment until then.
    pub fn prepare_warm(
        &self,
        lang: ScriptLang,
        dir: &JobDir,
        base_env: Vec<(String, String)>,
    ) -> Result<ProcessSpec, ScriptError> {
        let program = self.program(lang)?;
        write_files(dir, &[("wrapper.ts", TS_WRAPPER)])?;
        let (args, mut env) = command_line(lang, dir.path());
        env.extend(base_env);
        env.push(("MILLRACE_WARM".into(), "1".into()));
        Ok(ProcessSpec { program, args, env })
    }

    /// The job's result once its process has ended.
    pub fn outcome(
        &self,
        lang: ScriptLang,
        ended: &Ended,
        dir: &JobDir,
        logs: &str,
    ) -> Result<Value, ScriptError> {
        let status = match ended {
            Ended::TimedOut(after) => {
                return Err(ScriptError::new(
                    "Timeout",
                    format!("job timed out after {}s", after.as_secs()),
                ))
            }
            Ended::Canceled => return Err(ScriptError::new("Canceled", "job canceled")),
            Ended::OutputTooLarge(max) => {
                return Err(ScriptError::new(
                    "OutputTooLarge",
                    format!(
                        "the job printed more than {max} bytes (MAX_OUTPUT_SIZE) and was stopped"
                    ),
                ))
            }
            Ended::Exited(status) => status,
        };
        let read = |name: &str| dir.as_owner(|path| read_capped(&path.join(name), self.max_result));
        if lang == ScriptLang::Bash {
            return bash::outcome(*status, read("result.json")?, logs);
        }
        if let Some(text) = read(ERROR_FILE)? {
            let error: Value = serde_json::from_str(&text).unwrap_or_default();
            let field = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
            return Err(ScriptError {
                name: field("name").unwrap_or_else(|| "Error".into()),
                message: field("message").unwrap_or_default(),
                stack: field("stack"),
            });
        }
        match read(RESULT_FILE)? {
            Some(text) if status.success() => serde_json::from_str(&text).map_err(|e| {
                ScriptError::new("ResultError", format!("the result is not JSON: {e}"))
            }),
            _ => Err(ScriptError::new(
                "ExecutionErr",
                format!(
                    "{lang} exited with {status} before returning a result{}",
                    last_line_hint(logs)
                ),
            )),
        }
    }
}

/// The environment every job starts from, in `dir` (its own variables come on top).
pub fn base_env(dir: &Path) -> Vec<(String, String)> {
    let home = dir.display().to_string();
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), home.clone()),
        ("TMPDIR".into(), home),
        // Without it bash looks its user up (0.5 ms: job users are in no passwd file, so glibc
        // tries every source in nsswitch.conf).
        ("SHELL".into(), "/bin/sh".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// Writes `(name, text)` files into the job's directory, as its owner.
fn write_files(dir: &JobDir, files: &[(&str, &str)]) -> Result<(), ScriptError> {
    let failed = |name: &str, e: std::io::Error| {
        ScriptError::new("WorkerError", format!("cannot write {name}: {e}"))
    };
    dir.as_owner(|path| {
        for (name, text) in files {
            write_new(&path.join(name), text.as_bytes()).map_err(|e| failed(name, e))?;
        }
        Ok(())
    })
}

/// The interpreter's arguments and the language's own environment for a job in `dir`.
fn command_line(lang: ScriptLang, dir: &Path) -> (Vec<String>, Vec<(String, String)>) {
    match lang {
        ScriptLang::Python3 => (
            vec!["-u".into(), "wrapper.py".into()],
            vec![("PYTHONDONTWRITEBYTECODE".into(), "1".into())],
        ),
        ScriptLang::Bash => (vec!["main.sh".into()], vec![]),
        ScriptLang::Bun => (
            vec!["run".into(), "wrapper.ts".into()],
            vec![("BUN_RUNTIME_TRANSPILER_CACHE_PATH".into(), "0".into())],
        ),
        ScriptLang::Deno => (
            vec![
                "run".into(),
                "--allow-all".into(),
                "--no-prompt".into(),
                "--quiet".into(),
                // The cache lives in the job's directory and dies with it: making V8's code
                // cache for the next run would only cost each process ~5 ms of CPU.
                "--no-code-cache".into(),
                "wrapper.ts".into(),
            ],
            vec![
                ("DENO_NO_UPDATE_CHECK".into(), "1".into()),
                ("DENO_DIR".into(), dir.join(".deno").display().to_string()),
            ],
        ),
    }
}

/// A file the script wrote, if it did, refused past `max` bytes without reading more. Only a
/// plain file is taken: a link in place of the file (to a secret of the worker's, where jobs run
/// as the worker), a device (`/dev/zero`) or a FIFO would be read on the job's behalf, without
/// end, or block.
fn read_capped(path: &Path, max: u64) -> Result<Option<String>, ScriptError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let refused = |why: String| ScriptError::new("ResultError", format!("{name}: {why}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused("a symbolic link, not a file".into()))
        }
        Err(e) => return Err(refused(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| refused(e.to_string()))?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(refused("not a plain file of the job's own".into()));
    }
    let too_large = |size: u64| {
        ScriptError::new(
            "ResultTooLarge",
            format!("the result is {size} bytes; at most {max} (MAX_RESULT_SIZE)"),
        )
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn last_line_hint(logs: &str) -> String {
    logs.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}
