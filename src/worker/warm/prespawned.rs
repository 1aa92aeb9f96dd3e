//! bun and deno processes started ahead of their jobs: each is a job's process in all but its
//! job — its own user (from the sandbox's pool), directory, limits and cgroup, started with the
//! wrapper loaded and waiting on its standard input. A job takes one ready process with its
//! directory, and the process runs that job only; a replacement is started in the background.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::domain::ScriptLang;
use crate::worker::process::{self, ProcessSpec, Started};
use crate::worker::runtimes::{self, Runtimes};
use crate::worker::sandbox::{JobDir, Sandbox};

/// What a warm process prints when its wrapper is loaded, and when its job arrived.
const READY: &[u8] = b"\x1eMILLRACE_READY\n";
const STARTED: &[u8] = b"\x1eMILLRACE_STARTED\n";
/// How long a process that got its job may take to say so.
const STARTED_WITHIN: Duration = Duration::from_secs(5);

/// The nice value of a process while it starts and waits, where the worker may give it back
/// its priority when its job comes (`CAP_SYS_NICE`): each job starts a replacement, and the
/// job's own process comes first when the CPU is short (a deno start takes ~20 ms of CPU).
const WAITING_NICE: libc::c_int = 10;
const CAP_SYS_NICE: u32 = 23;

/// A process waiting for its job, in the job's directory.
pub struct WarmProcess {
    pub waiting: Waiting,
    pub dir: JobDir,
}

/// The process itself.
pub struct Waiting {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// It waits at [`WAITING_NICE`].
    niced: bool,
}

impl Waiting {
    /// Hands the job (its environment; its files are in the directory by now) to the process.
    /// An error means the process is gone (or did not take the job): the job is to start cold.
    pub async fn start(self, env: &[(String, String)]) -> io::Result<Started> {
        let Waiting {
            child,
            mut stdin,
            mut stdout,
            niced,
        } = self;
        if let (true, Some(pid)) = (niced, child.id()) {
            // Every thread of it, as it leads its own process group; a job never runs below
            // normal priority (one that cannot get it starts cold).
            // SAFETY: setpriority(2) on a process group; no memory is passed.
            if unsafe { libc::setpriority(libc::PRIO_PGRP as _, pid as libc::id_t, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let env: serde_json::Map<String, serde_json::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let job = serde_json::json!({ "env": env }).to_string();
        stdin.write_all(job.as_bytes()).await?;
        stdin.shutdown().await?;
        drop(stdin);
        // Killed just before, it may have looked alive: only its word says it has the job.
        expect(&mut stdout, STARTED, STARTED_WITHIN).await?;
        let mut started = process::started_child(child);
        started.stdout = Some(Box::pin(stdout));
        Ok(started)
    }
}

/// The ready processes of one language, and how many to keep.
pub struct Pool {
    lang: ScriptLang,
    runtimes: Runtimes,
    sandbox: Arc<Sandbox>,
    cpu_seconds: u64,
    ready: Mutex<Vec<WarmProcess>>,
    /// Processes ready or starting.
    live: AtomicUsize,
    /// How many to keep: one more each time a job found none, up to `max`.
    target: AtomicUsize,
    max: usize,
    /// After a failed start, none is tried before this.
    pause_until: Mutex<Option<Instant>>,
    /// Its processes wait at [`WAITING_NICE`].
    nice: bool,
}

/// How long a process may take to load its wrapper before it is given up.
const READY_WITHIN: Duration = Duration::from_secs(20);

impl Pool {
    pub fn new(
        lang: ScriptLang,
        runtimes: Runtimes,
        sandbox: Arc<Sandbox>,
        cpu_seconds: u64,
        max: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            lang,
            runtimes,
            sandbox,
            cpu_seconds,
            ready: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            max,
            pause_until: Mutex::new(None),
            nice: crate::worker::sandbox::holds_capabilities(&[CAP_SYS_NICE]),
        })
    }

    /// A ready process for a job that may use `cpu_seconds` of CPU, if one is there; a process
    /// found dead is dropped. Starts replacements either way.
    pub fn take(self: &Arc<Self>, cpu_seconds: u64) -> Option<WarmProcess> {
        if cpu_seconds > self.cpu_seconds {
            return None;
        }
        let taken = loop {
            let Some(mut warm) = self.ready.lock().expect("ready lock").pop() else {
                break None;
            };
            self.live.fetch_sub(1, Ordering::Relaxed);
            if matches!(warm.waiting.child.try_wait(), Ok(None)) {
                break Some(warm);
            }
            tracing::info!(lang = %self.lang, "a warm process died while waiting: replaced");
            tokio::spawn(discard(warm));
        };
        if taken.is_none() {
            let _ = self
                .target
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < self.max).then_some(t + 1)
                });
        }
        self.refill();
        taken
    }

    /// Starts processes in the background until `target` are ready or starting.
    fn refill(self: &Arc<Self>) {
        if let Some(until) = *self.pause_until.lock().expect("pause lock") {
            if Instant::now() < until {
                return;
            }
        }
        loop {
            let live = self.live.load(Ordering::Relaxed);
            if live >= self.target.load(Ordering::Relaxed) {
                return;
            }
            if self
                .live
                .compare_exchange(live, live + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let pool = self.clone();
            tokio::spawn(async move {
                match pool.spawn_one().await {
                    Ok(Some(warm)) => pool.ready.lock().expect("ready lock").push(warm),
                    Ok(None) => {
                        pool.live.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        pool.live.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(lang = %pool.lang, error = %e,
                            "cannot start a warm process: jobs start cold meanwhile");
                        *pool.pause_until.lock().expect("pause lock") =
                            Some(Instant::now() + Duration::from_secs(5));
                    }
                }
            });
        }
    }

    /// One process, ready; `None` when no user is free now (the jobs' users come first).
    async fn spawn_one(&self) -> io::Result<Option<WarmProcess>> {
        let Some(dir) = self.sandbox.job_dir_now() else {
            return Ok(None);
        };
        let dir = dir?;
        let env = runtimes::base_env(dir.path());
        let spec = match self.runtimes.prepare_warm(self.lang, &dir, env) {
            Ok(spec) => spec,
            Err(e) => {
                dir.remove().await;
                return Err(io::Error::other(e.message));
            }
        };
        match start(&spec, &dir, self.cpu_seconds, self.nice).await {
            Ok((child, stdin, stdout)) => Ok(Some(WarmProcess {
                waiting: Waiting {
                    child,
                    stdin,
                    stdout,
                    niced: self.nice,
                },
                dir,
            })),
            Err(e) => {
                dir.remove().await;
                Err(e)
            }
        }
    }
}

/// Spawns the process (at [`WAITING_NICE`] with `nice`) and waits until its wrapper is loaded.
async fn start(
    spec: &ProcessSpec,
    dir: &JobDir,
    cpu_seconds: u64,
    nice: bool,
) -> io::Result<(Child, ChildStdin, ChildStdout)> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped());
    if nice {
        // SAFETY: setpriority(2), async-signal-safe, on the child itself.
        unsafe {
            command.pre_exec(|| {
                if libc::setpriority(libc::PRIO_PROCESS as _, 0, WAITING_NICE) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = process::spawn_child(command, &dir.confinement(), cpu_seconds)?;
    let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("no pipes to the process"));
    };
    expect(&mut stdout, READY, READY_WITHIN).await?;
    Ok((child, stdin, stdout))
}

/// Reads `marker` from the process's output within `within`.
async fn expect(stdout: &mut ChildStdout, marker: &[u8], within: Duration) -> io::Result<()> {
    // Byte by byte: nothing past the marker may be taken from the job's output.
    let read = tokio::time::timeout(within, async {
        for expected in marker {
            if stdout.read_u8().await? != *expected {
                return Err(io::Error::other("it printed something else first"));
            }
        }
        Ok(())
    })
    .await;
    match read {
        Ok(result) => result,
        Err(_) => Err(io::Error::other(format!(
            "no word within {}s",
            within.as_secs()
        ))),
    }
}

/// Kills what is left of a process that will run no job, and frees its user and directory.
async fn discard(warm: WarmProcess) {
    let WarmProcess { waiting, dir } = warm;
    let mut child = waiting.child;
    let _ = child.kill().await;
    dir.remove().await;
}
