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

use super::users;
use super::{Confinement, FreeUsers, JobCgroup, JobUid, KillStarted, Limits};

const JOB_DIR_PREFIX: &str = "job-";
const WORK_DIR: &str = "work";

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
    /// Its directory was never made: nothing ran as it.
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
    fn clear(&mut self, outer: &Path) {
        let cleared = users::kill_all_now(self.user) && clear_as(self.user.uid, outer);
        self.state = if cleared {
            UserState::Cleared
        } else {
            UserState::Dirty
        };
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
                "a job user whose processes or files could not be removed is retired"
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
        let made = tempfile::Builder::new()
            .prefix(JOB_DIR_PREFIX)
            .tempdir_in(root)?;
        let work = made.path().join(WORK_DIR);
        let make_work = || std::fs::DirBuilder::new().mode(0o700).create(&work);
        match &user {
            Some(user) => {
                let outer = made.path();
                // The worker is in the group (see `join_groups`): no `CAP_CHOWN` needed. The
                // user makes `work` its own while it may write here, then may only pass.
                std::os::unix::fs::chown(outer, None, Some(user.uid()))?;
                std::fs::set_permissions(outer, std::fs::Permissions::from_mode(0o770))?;
                users::as_user(user.uid(), make_work)??;
                std::fs::set_permissions(outer, std::fs::Permissions::from_mode(0o710))?;
            }
            None => make_work()?,
        }
        Ok(Self {
            work: Arc::new(WorkDir::new(work)?),
            outer: made.keep(),
            user,
            cgroup,
            limits,
            kill_started: KillStarted::default(),
        })
    }

    /// Where the job runs. The worker touches what is there only through
    /// [`JobDir::as_owner`].
    pub fn path(&self) -> &Path {
        self.work.path()
    }

    /// Runs `f` on the job's directory with the job user's file-system identity and none of
    /// the worker's groups (see `users::as_user`): the worker reaches there only what the job
    /// could. Blocking: brief file work only.
    pub fn as_owner<T, E: From<io::Error>>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<T, E> {
        match &self.user {
            Some(user) => users::as_user(user.uid(), || f(self.work.path()))?,
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
        let removed = match &mut self.user {
            Some(user) => {
                user.clear(&self.outer);
                std::fs::remove_dir(&self.outer)
            }
            None => std::fs::remove_dir_all(&self.outer),
        };
        if let Err(e) = removed {
            tracing::warn!(dir = %self.outer.display(), error = %e, "could not remove a job directory");
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
        users::remove_shared_leftovers(uid);
        users::empty_dir(dir)
    });
    match cleared {
        Ok(Ok(())) => true,
        Ok(Err(e)) | Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not empty a job directory");
            false
        }
    }
}

/// Removes the job directories a user's jobs left when their worker died (whose processes
/// were killed by then).
pub(super) fn remove_leftovers(root: &Path, uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let job_dir = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(JOB_DIR_PREFIX));
        let users = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.gid() == uid);
        if job_dir && users && clear_as(uid, &path) {
            if let Err(e) = std::fs::remove_dir(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a job directory left behind");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
