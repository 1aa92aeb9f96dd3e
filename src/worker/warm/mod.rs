//! Warm runtimes (`WORKER_WARM`): no interpreter starts on a job's way. Jobs take a process
//! started ahead of them (`prespawned.rs`): for `python3`, forked from a fork server that has
//! imported the wrapper's modules once (`forkserver.rs`; one of two, by what the script
//! imports: `python.rs`), confined and waiting for its job (a job that finds none is forked
//! then); for `bun` and `deno`, spawned with the wrapper loaded. Every job still runs in a
//! process of its own, confined as a cold one — except a script version's opting into
//! dedicated processes (`dedicated.rs`), whose jobs run one after another in a process that
//! keeps the imported script. Whatever is not ready — no server, no ready process, one that
//! broke — means a cold start: a job never waits for a warm runtime.

mod dedicated;
mod forkserver;
mod prespawned;
mod python;

use std::sync::Arc;
use std::time::Duration;

use dedicated::{Idle, Lent};
use prespawned::{Pool, Share, Source, Waiting};
use python::{Python, Server};

use super::process::{self, ProcessSpec, Started};
use super::runtimes::Runtimes;
use super::sandbox::{JobDir, Sandbox};
use crate::domain::ScriptLang;

/// Languages whose jobs take a process spawned ahead.
const PRESPAWNED: [ScriptLang; 2] = [ScriptLang::Bun, ScriptLang::Deno];

/// How long a fork server may take to answer for one job.
const SERVER_ANSWERS_WITHIN: Duration = Duration::from_secs(5);

/// The users to claim, besides one per slot, for processes waiting for jobs: one per slot for
/// each language installed (python3's two fork servers' pools share theirs), and for python3's
/// dedicated processes.
pub fn reserved_users(runtimes: &Runtimes, slots: usize) -> usize {
    if !runtimes.warm {
        return 0;
    }
    let installed = PRESPAWNED
        .iter()
        .chain([&ScriptLang::Python3, &ScriptLang::Python3])
        .filter(|lang| runtimes.program(**lang).is_ok())
        .count();
    installed * slots
}

/// The warm runtimes of one worker.
pub struct Warm {
    python: Option<Arc<Python>>,
    pools: Vec<(Runtime, Arc<Pool>)>,
    idle_dedicated: Idle,
    runtimes: Runtimes,
    sandbox: Arc<Sandbox>,
}

/// What a pool keeps processes of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Spawned(ScriptLang),
    /// `python3`, from this fork server.
    Forked(Server),
}

impl Runtime {
    fn lang(self) -> ScriptLang {
        match self {
            Self::Spawned(lang) => lang,
            Self::Forked(_) => ScriptLang::Python3,
        }
    }
}

/// How a job's process is to start, and (`python3`) which fork server forks it if that fails.
pub struct Launch {
    ready: Ready,
    fork_from: Option<Server>,
}

enum Ready {
    /// Cold, or forked from its fork server now.
    Fresh,
    /// A process started ahead, waiting in the job's directory.
    Waiting(Box<Waiting>),
    /// A dedicated process of the script version, in its own directory.
    Dedicated(Lent),
}

/// The script version a job of a `dedicated_worker` script runs.
pub struct DedicatedScript<'a> {
    pub workspace: &'a str,
    pub hash: &'a str,
}

impl Warm {
    /// `max_cpu_seconds`: the CPU limit of prespawned processes (that of a job with the
    /// default timeout); a job allowed more starts cold.
    pub fn new(
        runtimes: &Runtimes,
        sandbox: &Arc<Sandbox>,
        max_cpu_seconds: u64,
        slots: usize,
    ) -> Self {
        let (python, pools) = if runtimes.warm {
            let python = runtimes.program(ScriptLang::Python3).ok().map(|program| {
                let files_in = sandbox.root().to_path_buf();
                Arc::new(Python::new(program, &runtimes.python_preimport, files_in))
            });
            // Probed once for the pools.
            let priorities = prespawned::Priorities::probe();
            let spawned = PRESPAWNED
                .into_iter()
                .filter(|lang| runtimes.program(*lang).is_ok())
                .map(|lang| {
                    let source = Source::Spawned {
                        runtimes: runtimes.clone(),
                        priorities,
                    };
                    (Runtime::Spawned(lang), source, Share::new(slots))
                });
            // The fork servers' pools share python3's users.
            let python_share = Share::new(slots);
            let forked = python.iter().flat_map(|python| {
                python.servers().iter().map(|&server| {
                    let source = Source::Forked(python.clone(), server);
                    (Runtime::Forked(server), source, python_share.clone())
                })
            });
            let pools = spawned
                .chain(forked)
                .map(|(runtime, source, share)| {
                    let lang = runtime.lang();
                    let pool = Pool::new(lang, source, sandbox.clone(), max_cpu_seconds, share);
                    (runtime, pool)
                })
                .collect();
            (python, pools)
        } else {
            (None, Vec::new())
        };
        Self {
            python,
            pools,
            idle_dedicated: Idle::new(slots),
            runtimes: runtimes.clone(),
            sandbox: sandbox.clone(),
        }
    }

    /// Starts the fork servers, and keeps them running.
    pub fn boot(&self) {
        if let Some(python) = &self.python {
            python.boot();
        }
    }

    /// What is ready for a job of `lang` that may use `cpu_seconds` of CPU: with the directory
    /// it must run in, if it comes with one (else the job gets a fresh one).
    pub async fn take(
        &self,
        lang: ScriptLang,
        content: &str,
        dedicated: Option<DedicatedScript<'_>>,
        cpu_seconds: u64,
    ) -> (Option<JobDir>, Launch) {
        let fork_from = match (&self.python, lang) {
            (Some(python), ScriptLang::Python3) => Some(python.server_for(content)),
            _ => None,
        };
        let launch = |ready| Launch { ready, fork_from };
        if let (Some(script), Some(server)) = (dedicated, fork_from) {
            if let Some((lent, dir)) = self.dedicated(script, content, server, cpu_seconds).await {
                return (Some(dir), launch(Ready::Dedicated(lent)));
            }
        }
        let runtime = fork_from.map_or(Runtime::Spawned(lang), Runtime::Forked);
        let Some((_, pool)) = self.pools.iter().find(|(r, _)| *r == runtime) else {
            return (None, launch(Ready::Fresh));
        };
        match pool.take(cpu_seconds) {
            Some(warm) => (
                Some(warm.dir),
                launch(Ready::Waiting(Box::new(warm.waiting))),
            ),
            None => (None, launch(Ready::Fresh)),
        }
    }

    /// Starts the job's process in `dir`, where its files are: as `launch` says, else a fork of
    /// the fork server, else cold. A dedicated process comes back with it, to be given back
    /// once the job's result is read.
    pub async fn launch(
        &self,
        lang: ScriptLang,
        spec: &ProcessSpec,
        dir: &JobDir,
        launch: Launch,
        cpu_seconds: u64,
    ) -> (std::io::Result<Started>, Option<Lent>) {
        let confinement = dir.confinement();
        // Whether a warm start was tried and failed: what it may have left of the job runs as
        // the job's user, and is killed before the cold start.
        let mut failed = match launch.ready {
            Ready::Dedicated(lent) => match lent.start(dir, &spec.env, cpu_seconds).await {
                Ok(started) => return (Ok(started), Some(lent)),
                Err(e) => {
                    tracing::info!(error = %e, "a dedicated process was gone: starting cold");
                    true
                }
            },
            Ready::Waiting(waiting) => match waiting.start(&spec.env, cpu_seconds).await {
                Ok(started) => return (Ok(marking_exit(lang, started)), None),
                Err(e) => {
                    tracing::info!(%lang, error = %e, "a warm process was gone: starting cold");
                    true
                }
            },
            Ready::Fresh => false,
        };
        // What a failed warm start may have left of the job (a process stopped as it took
        // the job holds its environment) runs as the job's user: killed before another start.
        let user = confinement.user;
        let kill_left = |failed: bool| async move {
            if let (true, Some(user)) = (failed, user) {
                super::sandbox::kill_user(user).await;
            }
        };
        let python = self.python.as_ref();
        if let Some((from, server)) = launch.fork_from.and_then(|w| python?.running(w)) {
            kill_left(failed).await;
            if let Some(started) = Self::fork(from, &server, spec, dir, cpu_seconds).await {
                return (Ok(started), None);
            }
            failed = true;
        }
        kill_left(failed).await;
        let started = process::spawn(spec, &confinement, cpu_seconds);
        (started.map(|started| marking_exit(lang, started)), None)
    }

    /// Takes back a dedicated process and its directory after its job: kept for the next job
    /// of its script version if the job ended by itself, else ended.
    pub fn give_back(&self, lent: Lent, dir: JobDir, reusable: bool) {
        if reusable {
            self.idle_dedicated.put(lent, dir);
        } else {
            drop(lent);
            tokio::spawn(dir.remove());
        }
    }

    /// An idle dedicated process of the script version, or a new one; none when there is no
    /// fork server or no user free now (the job then runs as any other).
    async fn dedicated(
        &self,
        script: DedicatedScript<'_>,
        content: &str,
        from: Server,
        cpu_seconds: u64,
    ) -> Option<(Lent, JobDir)> {
        let key = (script.workspace.to_owned(), script.hash.to_owned());
        if let Some(idle) = self.idle_dedicated.take(&key) {
            return Some(idle);
        }
        let server = self.fork_server(from)?;
        let Some(dir) = self.sandbox.job_dir_now() else {
            self.idle_dedicated.evict_other_than(&key);
            return None;
        };
        let dir = match dir {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a dedicated process's directory");
                return None;
            }
        };
        let none = serde_json::Map::new();
        if let Err(e) = self
            .runtimes
            .prepare(ScriptLang::Python3, content, &none, &dir)
        {
            tracing::warn!(error = %e.message, "cannot prepare a dedicated process");
            dir.remove().await;
            return None;
        }
        let forked = tokio::time::timeout(
            SERVER_ANSWERS_WITHIN,
            server.spawn_dedicated(&dir.confinement(), cpu_seconds),
        )
        .await;
        match forked {
            Ok(Ok(process)) => Some((Lent::new(process, key), dir)),
            failed => {
                tracing::warn!(failed = ?failed.err(), "cannot start a dedicated process");
                dir.remove().await;
                None
            }
        }
    }

    /// The fork server `which`, while it runs.
    fn fork_server(&self, which: Server) -> Option<Arc<forkserver::ForkServer>> {
        self.python.as_ref()?.server(which)
    }

    /// The job's process forked from `server`, if it answers.
    async fn fork(
        from: Server,
        server: &forkserver::ForkServer,
        spec: &ProcessSpec,
        dir: &JobDir,
        cpu_seconds: u64,
    ) -> Option<Started> {
        let confinement = dir.confinement();
        let forked = tokio::time::timeout(
            SERVER_ANSWERS_WITHIN,
            server.fork_job(&confinement, cpu_seconds),
        )
        .await;
        // The child's own slowness is its own (`Forked::start`), not the server's.
        let why = match forked {
            Ok(Ok(forked)) => match forked.start(&spec.env, cpu_seconds).await {
                Ok(started) => return Some(started),
                Err(e) => e.to_string(),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                // Alive but silent: it is replaced; its children die with it.
                server.kill();
                format!("no answer within {}s", SERVER_ANSWERS_WITHIN.as_secs())
            }
        };
        tracing::warn!(server = from.name(), error = %why,
            "a python3 fork server failed a job: starting it cold");
        None
    }
}

/// What a process waiting for its job is sent: the job's environment, and its CPU limit (which
/// a forked or dedicated python3 process lowers its own to; a spawned one keeps the limit it was
/// started with).
fn job_message(env: &[(String, String)], cpu_seconds: u64) -> String {
    let env: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({ "env": env, "cpu_seconds": cpu_seconds }).to_string()
}

/// A process started for a job, cold or ahead: of those spawned, only deno's wrapper prints
/// the exit marker (see `tellExit` in wrapper.ts); forked ones always do.
fn marking_exit(lang: ScriptLang, mut started: Started) -> Started {
    started.marks_exit |= lang == ScriptLang::Deno;
    started
}
