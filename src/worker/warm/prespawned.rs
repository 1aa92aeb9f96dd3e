//! Processes started ahead of their jobs: each is a job's process in all but its job — its own
//! user (from the sandbox's pool), directory, limits and cgroup, waiting for its job: bun and
//! deno spawned with the wrapper loaded, waiting on their standard input; `python3` forked from
//! a fork server, waiting on its job pipe. A job takes one ready process with its directory,
//! and the process runs that job only; a replacement is started in the background.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::domain::ScriptLang;
use crate::worker::process::{self, ProcessSpec, Started};
use crate::worker::runtimes::{self, Runtimes};
use crate::worker::sandbox::{JobDir, Sandbox};
use crate::worker::spawn::{JobChild, Spawn, Stdin};

use super::forkserver::Forked;
use super::python::{Python, Server};

/// What a warm process prints when its wrapper is loaded, and when its job arrived.
const READY: &[u8] = b"\x1eMILLRACE_READY\n";
pub(super) const STARTED: &[u8] = b"\x1eMILLRACE_STARTED\n";
/// How long a process that got its job may take to say so.
pub(super) const STARTED_WITHIN: Duration = Duration::from_secs(5);

/// How much lower than the worker's a process started ahead waits, where the worker may put it
/// back when its job comes: each job starts a replacement, and the job's own process comes
/// first when the CPU is short (a deno start takes ~20 ms of CPU). Under heavy load a start
/// takes longer, up to its readiness limit.
const WAITING_LOWER_BY: libc::c_int = 10;

/// The nice values of processes started ahead: they wait at `waiting` and are put back to
/// `normal`, the worker's own, when their job comes.
#[derive(Debug, Clone, Copy)]
pub struct Priorities {
    normal: libc::c_int,
    waiting: libc::c_int,
}

impl Priorities {
    /// Those of this worker, if it may put a process back (`CAP_SYS_NICE` where it counts):
    /// tried on a thread of its own, as inside a user namespace the capability set shows
    /// `CAP_SYS_NICE` where the kernel refuses.
    pub fn probe() -> Option<Self> {
        // SAFETY: getpriority(2) on the calling thread; no memory is passed.
        let normal = unsafe { libc::getpriority(libc::PRIO_PROCESS as _, 0) };
        let waiting = (normal + WAITING_LOWER_BY).min(19);
        // SAFETY: setpriority(2) on the calling thread, a thread made for this.
        let restores = std::thread::spawn(move || unsafe {
            libc::setpriority(libc::PRIO_PROCESS as _, 0, waiting) == 0
                && libc::setpriority(libc::PRIO_PROCESS as _, 0, normal) == 0
        });
        (waiting > normal && restores.join().unwrap_or(false)).then_some(Self { normal, waiting })
    }

    /// Puts every thread of process `pid`, which leads its own group, back to `normal`.
    fn restore(&self, pid: u32) -> io::Result<()> {
        // A thread being made as the group is set may be missed: checked, and tried again.
        for _ in 0..3 {
            // SAFETY: setpriority(2) on a process group; no memory is passed.
            if unsafe { libc::setpriority(libc::PRIO_PGRP as _, pid as libc::id_t, self.normal) }
                != 0
            {
                let e = io::Error::last_os_error();
                return Err(io::Error::other(format!(
                    "cannot put it back to its priority: {e}"
                )));
            }
            if thread_nices(pid)?.iter().all(|nice| *nice == self.normal) {
                return Ok(());
            }
        }
        Err(io::Error::other(
            "a thread of it stayed at a lower priority",
        ))
    }
}

/// The nice value of every thread of process `pid`.
fn thread_nices(pid: u32) -> io::Result<Vec<libc::c_int>> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // `tid (comm) state …`: the nice value is the 17th field after the command's name.
        let nice = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(16))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other("an unreadable thread status"))?;
        nices.push(nice);
    }
    Ok(nices)
}

/// A process waiting for its job, in the job's directory.
pub struct WarmProcess {
    pub waiting: Waiting,
    pub dir: JobDir,
}

/// The process itself.
pub enum Waiting {
    Spawned(Spawned),
    Forked(Forked),
}

impl Waiting {
    fn is_alive(&mut self) -> bool {
        match self {
            Self::Spawned(spawned) => matches!(spawned.child.try_wait(), Ok(None)),
            Self::Forked(forked) => forked.is_alive(),
        }
    }

    /// Hands the job (its environment and CPU limit, at most the pool's; its files are in the
    /// directory by now) to the process.
    /// An error means the process is gone (or did not take the job): the job is to start
    /// otherwise.
    pub async fn start(self, env: &[(String, String)], cpu_seconds: u64) -> io::Result<Started> {
        match self {
            Self::Spawned(spawned) => spawned.start(env, cpu_seconds).await,
            Self::Forked(forked) => forked.start(env, cpu_seconds).await,
        }
    }
}

/// A process spawned ahead, its wrapper loaded.
pub struct Spawned {
    child: JobChild,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    /// It waits at a lower priority.
    priorities: Option<Priorities>,
}

impl Spawned {
    async fn start(self, env: &[(String, String)], cpu_seconds: u64) -> io::Result<Started> {
        let Spawned {
            child,
            mut stdin,
            mut stdout,
            priorities,
        } = self;
        if let Some(priorities) = priorities {
            // A job never runs below the worker's priority: one that cannot have it starts cold.
            priorities.restore(child.id())?;
        }
        let job = super::job_message(env, cpu_seconds);
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

/// Where a pool's processes come from.
pub enum Source {
    /// Spawned with the language's wrapper, waiting at `priorities`' lower one if any.
    Spawned {
        runtimes: Runtimes,
        priorities: Option<Priorities>,
    },
    /// Forked from this fork server, while it runs.
    Forked(Arc<Python>, Server),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Spawned { .. } => "spawned",
            Self::Forked(_, server) => server.name(),
        }
    }
}

/// The ready processes of one language, and how many to keep.
pub struct Pool {
    lang: ScriptLang,
    source: Source,
    sandbox: Arc<Sandbox>,
    cpu_seconds: u64,
    ready: Mutex<Vec<WarmProcess>>,
    /// Processes ready or starting.
    live: AtomicUsize,
    /// How many to keep: one more each time a job found none, up to the share's.
    target: AtomicUsize,
    share: Arc<Share>,
    /// After a failed start, none is tried before this.
    pause_until: Mutex<Option<Instant>>,
}

/// The job users that processes started ahead may hold (`reserved_users` counts one per slot
/// and language), shared by the pools of one language: the two python3 fork servers' pools
/// hold one per slot between them. A pool whose jobs found none while the share is held takes
/// a waiting process of another pool's and its place in that pool's target: the share follows
/// the scripts that come.
pub struct Share {
    held: AtomicUsize,
    max: usize,
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl Share {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            max,
            pools: Mutex::new(Vec::new()),
        })
    }

    fn claim(&self) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held < self.max).then_some(held + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    /// A waiting process of a pool other than `taker`, given up with one of its pool's target.
    fn give_up_other_than(&self, taker: &Pool) -> Option<WarmProcess> {
        let pools = self.pools.lock().expect("pools lock").clone();
        pools
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|pool| !std::ptr::eq(pool.as_ref(), taker))
            .find_map(|pool| pool.give_up_one())
    }
}

/// How long a process may take to load its wrapper before it is given up.
const READY_WITHIN: Duration = Duration::from_secs(20);

impl Pool {
    pub fn new(
        lang: ScriptLang,
        source: Source,
        sandbox: Arc<Sandbox>,
        cpu_seconds: u64,
        share: Arc<Share>,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            lang,
            source,
            sandbox,
            cpu_seconds,
            ready: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            share,
            pause_until: Mutex::new(None),
        });
        let sharing = &pool.share.pools;
        sharing
            .lock()
            .expect("pools lock")
            .push(Arc::downgrade(&pool));
        pool
    }

    /// A ready process given up for another pool of the share, and one place of the target
    /// with it (this pool's jobs raise it again if they find none).
    fn give_up_one(&self) -> Option<WarmProcess> {
        let warm = self.ready.lock().expect("ready lock").pop()?;
        self.live.fetch_sub(1, Ordering::Relaxed);
        let _ = self
            .target
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1));
        Some(warm)
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
            if warm.waiting.is_alive() {
                // Its user is the job's now.
                self.share.release();
                break Some(warm);
            }
            tracing::info!(lang = %self.lang, source = self.source.name(),
                "a warm process died while waiting: replaced");
            tokio::spawn(discard(warm, self.share.clone()));
        };
        if taken.is_none() {
            let _ = self
                .target
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < self.share.max).then_some(t + 1)
                });
        }
        self.refill();
        taken
    }

    /// One process less, starting: it failed to start, and holds no user.
    fn forget_one(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.share.release();
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
            if !self.share.claim() {
                self.live.fetch_sub(1, Ordering::Relaxed);
                // Another pool's waiting process makes room, once its user is free again.
                if let Some(warm) = self.share.give_up_other_than(self) {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        discard(warm, pool.share.clone()).await;
                        pool.refill();
                    });
                }
                return;
            }
            let pool = self.clone();
            tokio::spawn(async move {
                match pool.spawn_one().await {
                    Ok(Some(warm)) => pool.ready.lock().expect("ready lock").push(warm),
                    Ok(None) => pool.forget_one(),
                    Err(e) => {
                        pool.forget_one();
                        tracing::warn!(lang = %pool.lang, source = pool.source.name(), error = %e,
                            "cannot start a warm process: jobs start cold meanwhile");
                        *pool.pause_until.lock().expect("pause lock") =
                            Some(Instant::now() + Duration::from_secs(5));
                    }
                }
            });
        }
    }

    /// One process, ready; `None` when no user is free now (the jobs' users come first), or
    /// no fork server runs.
    async fn spawn_one(&self) -> io::Result<Option<WarmProcess>> {
        if let Source::Forked(python, which) = &self.source {
            if python.server(*which).is_none() {
                return Ok(None);
            }
        }
        let Some(dir) = self.sandbox.job_dir_now() else {
            return Ok(None);
        };
        let dir = dir?;
        let waiting = match &self.source {
            Source::Forked(python, which) => match python.server(*which) {
                Some(server) => {
                    let confinement = dir.confinement();
                    let forked = server.fork_job(&confinement, self.cpu_seconds);
                    match tokio::time::timeout(READY_WITHIN, forked).await {
                        Ok(forked) => forked.map(Waiting::Forked),
                        Err(_) => {
                            // Stuck, with a child that may still take the user given back
                            // below: the server goes, and its children with it.
                            server.kill();
                            Err(io::Error::other(format!(
                                "not forked within {}s",
                                READY_WITHIN.as_secs()
                            )))
                        }
                    }
                }
                None => {
                    dir.remove().await;
                    return Ok(None);
                }
            },
            Source::Spawned {
                runtimes,
                priorities,
            } => self.spawn(runtimes, *priorities, &dir).await,
        };
        match waiting {
            Ok(waiting) => Ok(Some(WarmProcess { waiting, dir })),
            Err(e) => {
                dir.remove().await;
                Err(e)
            }
        }
    }

    async fn spawn(
        &self,
        runtimes: &Runtimes,
        priorities: Option<Priorities>,
        dir: &JobDir,
    ) -> io::Result<Waiting> {
        let env = runtimes::base_env(dir.path());
        let spec = runtimes
            .prepare_warm(self.lang, dir, env)
            .map_err(|e| io::Error::other(e.message))?;
        let (child, stdin, stdout) = start(&spec, dir, self.cpu_seconds, priorities).await?;
        Ok(Waiting::Spawned(Spawned {
            child,
            stdin,
            stdout,
            priorities,
        }))
    }
}

/// Spawns the process (at the waiting priority of `priorities`) and waits until its wrapper is
/// loaded.
async fn start(
    spec: &ProcessSpec,
    dir: &JobDir,
    cpu_seconds: u64,
    priorities: Option<Priorities>,
) -> io::Result<(JobChild, pipe::Sender, pipe::Receiver)> {
    let mut child = Spawn {
        spec,
        confinement: &dir.confinement(),
        cpu_seconds,
        stdin: Stdin::Piped,
        nice: priorities.map(|p| p.waiting),
    }
    .start()?;
    let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("no pipes to the process"));
    };
    expect(&mut stdout, READY, READY_WITHIN).await?;
    Ok((child, stdin, stdout))
}

/// Reads `marker` from the process's output within `within`.
pub(super) async fn expect(
    stdout: &mut (impl AsyncRead + Unpin),
    marker: &[u8],
    within: Duration,
) -> io::Result<()> {
    // Exactly its length: nothing past the marker may be taken from the job's output.
    let read = tokio::time::timeout(within, async {
        let mut got = vec![0; marker.len()];
        stdout.read_exact(&mut got).await?;
        if got != marker {
            return Err(io::Error::other("it printed something else first"));
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

/// Kills what is left of a process that will run no job, frees its user and directory, and
/// only then its place in the share.
async fn discard(warm: WarmProcess, share: Arc<Share>) {
    let WarmProcess { waiting, dir } = warm;
    if let Waiting::Spawned(Spawned { mut child, .. }) = waiting {
        child.kill();
        let _ = child.wait().await;
    }
    // A forked one ends once its job pipe closes; the directory's removal kills whatever runs
    // as its user either way.
    dir.remove().await;
    share.release();
}
