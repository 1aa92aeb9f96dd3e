//! A job's directory and the user it is lent to: made for the job, touched by the worker only
//! with the job user's identity, and cleared — the user's processes first, then its files —
//! before the user serves another job.
//!
//! Job directories are `<root>/job-…/work`. The outer one is the worker's, group-owned by the
//! job's group, which may only pass through it (`0710`); `work` is the job user's own, `0700`,
//! made by that user while the outer one lets it (the worker has no `CAP_CHOWN`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::users;
use super::{Confinement, FreeUsers, JobCgroup, JobUid, KillStarted, Limits};

const JOB_DIR_PREFIX: &str = "job-";
const WORK_DIR: &str = "work";

/// Pauses before the next tries at clearing what a job left but could not be removed at once
/// (a process that took a moment to die, a file system that was busy); the user is lent again
/// after the first that succeeds, and retired after the last that fails.
const CLEAR_RETRIES: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

/// The worker could not take the job user's identity to act in its directory.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NotOwner(io::Error);

impl From<NotOwner> for io::Error {
    fn from(e: NotOwner) -> Self {
        e.0
    }
}

/// Where a job runs, also as a C string: its child enters it between fork and exec, where
/// nothing may allocate.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    c_path: CString,
}

impl WorkDir {
    pub fn new(path: PathBuf) -> io::Result<Self> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Self { path, c_path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn c_path(&self) -> &CStr {
        &self.c_path
    }
}

/// A job's user while a directory holds it.
pub(super) struct JobUser {
    user: JobUid,
    free: Arc<FreeUsers>,
    state: UserState,
}

/// What a job may have left as its user, which decides whether the user is lent again.
enum UserState {
    /// No directory was made for it: nothing ran as it.
    Unused,
    /// Its processes were killed and its files removed.
    Cleared,
    /// Something of its job may be left (a kill or the clearing failed).
    Dirty,
}

impl JobUser {
    pub(super) fn new(user: JobUid, free: Arc<FreeUsers>) -> Self {
        Self {
            user,
            free,
            state: UserState::Unused,
        }
    }

    pub(super) fn uid(&self) -> u32 {
        self.user.uid
    }

    /// Kills the user's processes, then — only then, so that nothing writes new files — removes
    /// its files: the job directory `outer`'s and those in the shared temporary directories.
    /// Whether all went.
    fn clear(&mut self, outer: &Path) -> bool {
        // Until it is known: a panic on the way must not lend the user again.
        self.state = UserState::Dirty;
        let cleared = users::kill_all_now(self.user) && clear_as(self.user.uid, outer);
        if cleared {
            self.state = UserState::Cleared;
        }
        cleared
    }
}

/// Tries again, on a thread of its own, to clear what `user`'s job left in `outer`, and
/// removes `outer` once it could; the user is lent again then, or retired after the last try.
fn clear_later(mut user: JobUser, outer: PathBuf) {
    let retry = move || {
        for pause in CLEAR_RETRIES {
            std::thread::sleep(pause);
            if user.clear(&outer) {
                remove_outer(&outer, std::fs::remove_dir(&outer));
                return;
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("clear-job-user".into())
        .spawn(retry)
    {
        tracing::error!(error = %e, "cannot try again to clear a job user's files");
    }
}

fn remove_outer(outer: &Path, removed: io::Result<()>) {
    if let Err(e) = removed {
        tracing::warn!(dir = %outer.display(), error = %e, "could not remove a job directory");
    }
}

impl Drop for JobUser {
    fn drop(&mut self) {
        let free = match self.state {
            UserState::Cleared => true,
            // Nothing should run as it; should something, it must not meet the next job.
            UserState::Unused => users::kill_all_now(self.user),
            UserState::Dirty => false,
        };
        if free {
            self.free.give_back(self.user);
        } else {
            // The next job, maybe another tenant's, must not meet what is left. The slot waits
            // for a user that is never given back, and its jobs fail.
            tracing::error!(
                uid = self.user.uid,
                "a job user whose processes or files could not be removed is retired: its \
                 slot runs no more jobs until the worker restarts"
            );
        }
    }
}

/// A job's directory and user. [`JobDir::remove`] it when the job is over: a plain drop does
/// the same, but blocks (killing processes, removing files) wherever it happens.
pub struct JobDir {
    /// `job-…`, holding `work`.
    outer: PathBuf,
    work: Arc<WorkDir>,
    user: Option<JobUser>,
    cgroup: Option<Arc<JobCgroup>>,
    limits: Limits,
    kill_started: KillStarted,
}

impl JobDir {
    /// A new directory in `root` for a job of `user` (the worker's own when `None`).
    pub(super) fn create(
        root: &Path,
        user: Option<JobUser>,
        cgroup: Option<Arc<JobCgroup>>,
        limits: Limits,
    ) -> io::Result<Self> {
        let outer = tempfile::Builder::new()
            .prefix(JOB_DIR_PREFIX)
            .tempdir_in(root)?
            .keep();
        let work = match WorkDir::new(outer.join(WORK_DIR)) {
            Ok(work) => Arc::new(work),
            Err(e) => {
                let _ = std::fs::remove_dir(&outer);
                return Err(e);
            }
        };
        // From here on, a failure is cleared up as any job's directory is.
        let dir = Self {
            outer,
            work,
            user,
            cgroup,
            limits,
            kill_started: KillStarted::default(),
        };
        dir.make_work()?;
        Ok(dir)
    }

    fn make_work(&self) -> io::Result<()> {
        let make = || {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(self.work.path())
        };
        let Some(user) = &self.user else {
            return make();
        };
        // The worker is in the group (see `join_groups`): no `CAP_CHOWN` needed. The user
        // makes `work` its own while it may write here, then may only pass.
        std::os::unix::fs::chown(&self.outer, None, Some(user.uid()))?;
        std::fs::set_permissions(&self.outer, std::fs::Permissions::from_mode(0o770))?;
        users::as_user(user.uid(), make)??;
        std::fs::set_permissions(&self.outer, std::fs::Permissions::from_mode(0o710))
    }

    /// Where the job runs. The worker touches what is there only through
    /// [`JobDir::as_owner`].
    pub fn path(&self) -> &Path {
        self.work.path()
    }

    /// Runs `f` on the job's directory with the job user's file-system identity and none of
    /// the worker's groups (see `users::as_user`): the worker reaches there only what the job
    /// could. Blocking: brief file work only.
    pub fn as_owner<T, E: From<NotOwner>>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<T, E> {
        match &self.user {
            Some(user) => users::as_user(user.uid(), || f(self.work.path())).map_err(NotOwner)?,
            None => f(self.work.path()),
        }
    }

    pub fn confinement(&self) -> Confinement {
        Confinement {
            dir: self.work.clone(),
            user: self.user.as_ref().map(|u| u.user),
            cgroup: self.cgroup.clone(),
            limits: self.limits,
            kill_started: self.kill_started.clone(),
        }
    }

    /// Kills whatever still runs as the directory's user (a process given up before or after
    /// its job, or what a job that ended by itself left running), then removes the directory
    /// — its contents as the job's user, whose they are — on a blocking thread; then the user
    /// is free again.
    pub async fn remove(self) {
        let started = self.kill_started.lock().expect("kill lock").take();
        if let Some(kill) = started {
            let _ = kill.await;
        }
        if let Err(e) = tokio::task::spawn_blocking(move || drop(self)).await {
            tracing::warn!(error = %e, "job directory removal panicked");
        }
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        let Some(mut user) = self.user.take() else {
            remove_outer(&self.outer, std::fs::remove_dir_all(&self.outer));
            return;
        };
        if user.clear(&self.outer) {
            remove_outer(&self.outer, std::fs::remove_dir(&self.outer));
        } else {
            clear_later(user, std::mem::take(&mut self.outer));
        }
    }
}

/// Writes a new file at `path` in a job's directory, whose entries the job may replace (a
/// link, a FIFO): whatever is there goes first, and the file is created only if nothing took
/// its place meanwhile, without following a link.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .write_all(bytes)
}

/// Empties the outer job directory `dir` as the user `uid` (so `work` and all in it go, or the
/// files of a directory from before `work`), and removes what the user left in the shared
/// temporary directories; whether that all went. Only while none of the user's processes
/// runs: for this while, the user may write in `dir` again.
fn clear_as(uid: u32, dir: &Path) -> bool {
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o770)) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not open a job directory to its user");
        return false;
    }
    let cleared = users::as_user(uid, || {
        let shared = users::remove_shared_leftovers(uid);
        users::empty_dir(dir).map(|()| shared)
    });
    match cleared {
        Ok(Ok(shared)) => shared,
        Ok(Err(e)) | Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not empty a job directory");
            false
        }
    }
}

/// Removes the job directories a user's jobs left when their worker died (whose processes
/// were killed by then); whether all went.
pub(super) fn remove_leftovers(root: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(root) else {
        return true;
    };
    let mut all = true;
    for entry in entries.flatten() {
        let path = entry.path();
        let job_dir = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(JOB_DIR_PREFIX));
        let users = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.gid() == uid);
        if !(job_dir && users) {
            continue;
        }
        let removed = clear_as(uid, &path) && std::fs::remove_dir(&path).is_ok();
        if !removed {
            tracing::warn!(path = %path.display(), "could not remove a job directory left behind");
            all = false;
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_user_is_lent_again_only_once_what_its_job_left_is_gone() {
        if !users::can_switch() {
            eprintln!("skipped: needs CAP_SETUID and CAP_SETGID");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let free = Arc::new(FreeUsers::default());
        let uid: JobUid = "65010:65011".parse().unwrap();
        let lent_again = |free: &FreeUsers| free.uids.lock().unwrap().contains(&uid);
        let limits = Limits {
            memory: 1 << 30,
            processes: 100,
            open_files: 100,
            file_size: 1 << 20,
        };
        let new_dir = || {
            let user = JobUser::new(uid, free.clone());
            JobDir::create(root.path(), Some(user), None, limits).unwrap()
        };
        // Dropped without `remove` (a panic): cleared all the same.
        let dir = new_dir();
        dir.as_owner(|path| std::fs::write(path.join("left.txt"), "x"))
            .unwrap();
        let outer = dir.outer.clone();
        drop(dir);
        assert!(!outer.exists());
        assert!(lent_again(&free));
        free.uids.lock().unwrap().clear();

        // Something the user may not remove: not lent again until that is gone.
        let dir = new_dir();
        let outer = dir.outer.clone();
        let blocker = outer.join("roots");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("file"), "x").unwrap();
        drop(dir);
        assert!(!lent_again(&free));
        assert!(outer.exists());
        std::fs::remove_dir_all(&blocker).unwrap();
        let deadline = std::time::Instant::now() + CLEAR_RETRIES[0] * 5;
        while !lent_again(&free) {
            assert!(std::time::Instant::now() < deadline, "never lent again");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!outer.exists());
    }

    #[test]
    fn a_new_file_replaces_what_the_job_put_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "the worker's").unwrap();
        let link = dir.path().join("main.sh");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_new(&link, b"echo job").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the worker's");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "echo job");
        // A FIFO would block the writer for ever.
        let fifo = dir.path().join("args.json");
        let c_fifo = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        write_new(&fifo, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&fifo).unwrap(), "{}");
    }
}
