//! Keeping a job away from the worker and from other jobs. When the worker may change users
//! (root, or just `CAP_SETUID` and `CAP_SETGID`), each slot's jobs run as a user of their own
//! from `JOB_UID_RANGE` (its group alike, no supplementary groups), in a job directory of that
//! user's own (`0700`); the worker itself is not dumpable, so its `/proc/<pid>/environ`
//! and `mem` stay closed to every job. Every job gets resource limits, and when it ends every
//! process of its user is killed — also those that left its process group with `setsid` — and
//! again before its user serves another job.
//! Without the right to change users the worker says so once, loudly, and runs jobs as itself.

mod cgroups;
mod job_dir;
mod limits;
pub mod reaper;
mod users;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use cgroups::JobCgroup;
use job_dir::JobUser;
pub use job_dir::{write_new, JobDir, NotOwner, WorkDir};
pub use limits::Limits;
pub use users::{kill_all as kill_user, JobUid};

use crate::config::{JobCgroups, WorkerConfig};

/// The users jobs run as, where their directories live, and their limits.
pub struct Sandbox {
    /// `<temp dir>/millrace-<worker uid>`: only its owner may list or change it.
    root: PathBuf,
    /// Free users; `None` when jobs run as the worker's own user.
    users: Option<Arc<FreeUsers>>,
    /// Locks on this worker's users, held while it lives (see [`users::claim`]).
    _claims: Vec<std::fs::File>,
    /// Held while the worker lives: its end tells the reaper to kill what the jobs left.
    _reaper: Option<std::io::PipeWriter>,
    /// Each user's cgroup, where the worker may make them.
    cgroups: HashMap<u32, Arc<JobCgroup>>,
    limits: Limits,
}

/// The users no job holds, and a signal for whoever waits for one.
#[derive(Default)]
struct FreeUsers {
    uids: Mutex<Vec<JobUid>>,
    returned: tokio::sync::Notify,
}

impl FreeUsers {
    /// Takes `user` back and wakes a slot that waits for one.
    fn give_back(&self, user: JobUid) {
        self.uids.lock().expect("users lock").push(user);
        self.returned.notify_one();
    }
}

/// How one job's processes are confined.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// The job's directory: its process starts there, once it is the job's user (who alone
    /// may enter it).
    pub dir: Arc<WorkDir>,
    /// The job's own user, if it has one.
    pub user: Option<JobUid>,
    /// Its user's cgroup, if the worker may make cgroups.
    pub cgroup: Option<Arc<JobCgroup>>,
    pub limits: Limits,
    /// A kill of the user's processes started beside the job's answer, which the directory's
    /// removal awaits: the user must not serve another job before it is done.
    pub(crate) kill_started: KillStarted,
}

/// See [`Confinement::kill_started`].
pub(crate) type KillStarted = Arc<Mutex<Option<tokio::task::JoinHandle<bool>>>>;

impl Confinement {
    /// No user, no cgroup, generous limits, in `dir`: a process of the worker's own user.
    #[cfg(test)]
    pub fn unconfined_for_tests(dir: &Path) -> Self {
        Self {
            dir: Arc::new(WorkDir::new(dir.to_path_buf()).unwrap()),
            user: None,
            cgroup: None,
            kill_started: Default::default(),
            limits: Limits {
                memory: 1 << 32,
                processes: 1 << 20,
                open_files: 1024,
                file_size: 1 << 32,
            },
        }
    }

    /// Kills the job user's processes without waiting for it (see [`JobDir::remove`]), then
    /// waits for `exit`, the end of the job's own process, so that the user serves no other job
    /// while that process is still being torn down.
    pub fn kill_beside(&self, exit: impl std::future::Future + Send + 'static) {
        match self.user {
            Some(user) => {
                let kill = tokio::spawn(async move {
                    let killed = users::kill_all(user).await;
                    exit.await;
                    killed
                });
                *self.kill_started.lock().expect("kill lock") = Some(kill);
            }
            None => {
                tokio::spawn(async move {
                    exit.await;
                });
            }
        }
    }
}

impl Confinement {
    /// Everything a job's child does between fork and exec (only async-signal-safe calls):
    /// into the job's cgroup while it may still move itself, then the job's user and group with
    /// no supplementary groups, into its directory, then the limits.
    pub fn enter(&self, cpu_seconds: u64) -> std::io::Result<()> {
        first_to_go_out_of_memory()?;
        if let Some(cgroup) = &self.cgroup {
            cgroup.join()?;
        }
        if let Some(user) = self.user {
            users::become_user(user.uid)?;
            users::forget_keys();
        }
        // SAFETY: chdir on a NUL-terminated path.
        if unsafe { libc::chdir(self.dir.c_path().as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A worker given CAP_SETUID/CAP_SETGID as ambient capabilities would pass them on
        // through exec, and set-user-ID programs would raise the job again: neither.
        // SAFETY: prctl only changes flags of this process.
        unsafe {
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        limits::apply(&self.limits, self.user.is_some(), cpu_seconds)
    }
}

impl Sandbox {
    /// Decides how jobs run; fails only on settings that cannot work. Besides one user per slot
    /// it claims `warm_users` more for the processes that wait for jobs (see `worker::warm`).
    pub fn new(config: &WorkerConfig, slots: usize, warm_users: usize) -> anyhow::Result<Self> {
        let limits = Limits {
            memory: config.job_memory_limit,
            processes: config.job_max_processes,
            open_files: config.job_max_open_files,
            file_size: config.job_max_file_size,
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let temp = std::env::temp_dir();
        sticky(&temp)?;
        let root = temp.join(format!("millrace-{me}"));
        private_dir(&root, 0o711)?;
        let mut claims = Vec::new();
        let mut reaper = None;
        let mut cgroups = HashMap::new();
        let users = match users::UidRange::parse(&config.job_uid_range)? {
            None => {
                tracing::warn!(
                    "JOB_UID_RANGE=none: jobs run as the worker's own user and can read its \
                     environment and each other"
                );
                None
            }
            Some(_) if !users::can_switch() => {
                tracing::warn!(
                    "this worker may not change users (it needs root, or CAP_SETUID and \
                     CAP_SETGID): jobs run as its own user and can read its environment \
                     (DATABASE_URL…) and each other's files; do not run untrusted code here"
                );
                None
            }
            Some(range) => {
                let locks = root.join("users");
                private_dir(&locks, 0o700)?;
                let (mut job_users, held) = users::claim(&locks, range, slots, warm_users)?;
                claims = held;
                // A worker that died before may have left processes and job directories of
                // these users behind; the next job of the user must not find them.
                for user in &job_users {
                    anyhow::ensure!(
                        users::kill_all_now(*user),
                        "cannot kill what job user {} left running",
                        user.uid
                    );
                    anyhow::ensure!(
                        job_dir::remove_leftovers(&root, user.uid),
                        "cannot remove the job directories job user {} left",
                        user.uid
                    );
                }
                reaper = match reaper::start(&locks, &job_users) {
                    Ok(pipe) => Some(pipe),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the reaper: should this worker \
                            die, its jobs' processes live on until their users are claimed again");
                        None
                    }
                };
                // After the reaper's start: it is not to share the job users' groups.
                let uids: Vec<u32> = job_users.iter().map(|u| u.uid).collect();
                users::join_groups(&uids)
                    .map_err(|e| anyhow::anyhow!("cannot join the job users' groups: {e}"))?;
                forbid_inspection();
                tracing::info!(users = ?uids, "jobs run as users of their own");
                cgroups = job_cgroups(config.job_cgroups, &uids, &limits);
                job_users.reverse();
                Some(Arc::new(FreeUsers {
                    uids: Mutex::new(job_users),
                    returned: tokio::sync::Notify::new(),
                }))
            }
        };
        Ok(Self {
            root,
            users,
            _claims: claims,
            _reaper: reaper,
            cgroups,
            limits,
        })
    }

    /// A new job directory, given to a free user (there is one per slot): that user's own,
    /// `0700` (the worker's, when jobs run as the worker).
    pub async fn job_dir(&self) -> std::io::Result<JobDir> {
        let user = match &self.users {
            None => None,
            Some(free) => Some(JobUser::new(take_user(free).await?, free.clone())),
        };
        self.dir_for(user)
    }

    /// A new job directory if a user is free now (for a process that waits for a job: it must
    /// never keep a job from a user).
    pub fn job_dir_now(&self) -> Option<std::io::Result<JobDir>> {
        let user = match &self.users {
            None => None,
            Some(free) => Some(JobUser::new(
                free.uids.lock().expect("users lock").pop()?,
                free.clone(),
            )),
        };
        Some(self.dir_for(user))
    }

    /// Where the worker keeps what only it may read.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_for(&self, user: Option<JobUser>) -> std::io::Result<JobDir> {
        let cgroup = user
            .as_ref()
            .and_then(|u| self.cgroups.get(&u.uid()).cloned());
        JobDir::create(&self.root, user, cgroup, self.limits)
    }
}

/// Makes the calling process (a job's child, between fork and exec) the kernel's first choice
/// when memory runs out: a job over its memory dies, not the worker with every job it runs —
/// whose jobs would then be redelivered, the culprit too. Async-signal-safe calls only.
fn first_to_go_out_of_memory() -> std::io::Result<()> {
    // SAFETY: open, write and close on a NUL-terminated literal path.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"1000".as_ptr().cast(), 4);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 4 {
            return Err(error);
        }
    }
    Ok(())
}

/// Makes sure no job can rename or replace what the worker keeps in `dir`: a directory that
/// others may write to must have the sticky bit (a Kubernetes `emptyDir` is `0777` without
/// it), which the worker sets when the directory is its own.
fn sticky(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir)?;
    let mode = meta.mode();
    if mode & 0o002 == 0 || mode & 0o1000 != 0 {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        meta.uid() == unsafe { libc::geteuid() },
        "{} may be written by anyone and has no sticky bit: jobs could replace the worker's \
         directories there (set TMPDIR to a directory of the worker's)",
        dir.display()
    );
    std::fs::set_permissions(
        dir,
        std::fs::Permissions::from_mode((mode & 0o7777) | 0o1000),
    )?;
    tracing::info!(dir = %dir.display(), "set the sticky bit of the temporary directory");
    Ok(())
}

/// Creates `dir` (or takes the one there) as a directory of this process's user with `mode`.
/// One someone else made, or a link, could let a job squat on users or directories: refused.
fn private_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!("cannot create {}: {e}", dir.display()),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    anyhow::ensure!(
        meta.is_dir() && meta.uid() == me,
        "{} must be a directory of this worker's user",
        dir.display()
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A free user: one per slot besides those processes waiting for jobs may hold, so one is
/// free or about to be — the previous job of the slot may still be clearing its directory,
/// which it does after its result has gone out. None
/// within seconds is a bug, and running the job as the worker instead would hand it the
/// worker's rights.
async fn take_user(free: &FreeUsers) -> std::io::Result<JobUid> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let returned = free.returned.notified();
        if let Some(uid) = free.uids.lock().expect("users lock").pop() {
            return Ok(uid);
        }
        if tokio::time::timeout_at(deadline, returned).await.is_err() {
            return Err(std::io::Error::other(
                "no job user is free (more jobs than slots, or the slot's user was retired: \
                 see the worker's log)",
            ));
        }
    }
}

/// A cgroup per job user with the jobs' memory and process limits, where this worker may make
/// them; none (said once) where it may not.
fn job_cgroups(mode: JobCgroups, uids: &[u32], limits: &Limits) -> HashMap<u32, Arc<JobCgroup>> {
    if mode == JobCgroups::Off {
        return HashMap::new();
    }
    let cgroups = match cgroups::Cgroups::detect(mode == JobCgroups::Auto) {
        Ok(cgroups) => cgroups,
        Err(why) => {
            let said = "no cgroups for jobs: a job's memory and processes are limited per \
                        process and per user (rlimits) only";
            // Asked for: a warning. Left out on purpose (`auto`): a fact.
            if mode == JobCgroups::On {
                tracing::warn!(why, "{said}");
            } else {
                tracing::info!(why, "{said}");
            }
            return HashMap::new();
        }
    };
    let mut made = HashMap::new();
    for uid in uids {
        match cgroups.prepare(*uid, limits.memory, limits.processes) {
            Ok(cgroup) => {
                made.insert(*uid, Arc::new(cgroup));
            }
            Err(e) => {
                tracing::warn!(?cgroups, error = %e, "cannot make cgroups for jobs: rlimits only");
                return HashMap::new();
            }
        }
    }
    tracing::info!(
        ?cgroups,
        "jobs run in cgroups of their own (memory and processes)"
    );
    made
}

/// Makes this process non-dumpable: its `/proc/<pid>` files (environ, mem) belong to root and
/// no other user may trace it.
fn forbid_inspection() {
    // SAFETY: prctl(PR_SET_DUMPABLE) only changes a flag of this process.
    let done = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if done != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not make the worker non-dumpable");
    }
}
