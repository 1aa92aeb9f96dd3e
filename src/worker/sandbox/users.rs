//! The Unix users jobs run as: claiming them, acting on their files, killing their processes.
//! Everything here works with only `CAP_SETUID` and `CAP_SETGID` (what the Helm chart grants):
//! the worker never needs to read or change a job's files as root.

use std::fs::File;
use std::path::Path;

/// Whether this process holds `CAP_SETUID` and `CAP_SETGID` (root normally does).
pub fn can_switch() -> bool {
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    effective & (1 << CAP_SETUID) != 0 && effective & (1 << CAP_SETGID) != 0
}

/// Claims `count` users of `first..=last` for this worker alone. Workers sharing a host (a
/// laptop, the test suite, pods on one node without user namespaces) must never hand the same
/// user to two jobs: each user is claimed with an exclusive `flock` on `<locks>/<uid>`, and the
/// kernel drops the lock when the worker dies, however it dies.
pub fn claim(
    locks: &Path,
    first: u32,
    last: u32,
    slots: usize,
    warm: usize,
) -> anyhow::Result<(Vec<u32>, Vec<File>)> {
    let count = slots + warm;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let mut uids = Vec::with_capacity(count);
    let mut held = Vec::with_capacity(count);
    for uid in first..=last {
        if uids.len() == count {
            break;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(locks.join(uid.to_string()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            uids.push(uid);
            held.push(file);
        }
    }
    let warm = match warm {
        0 => String::new(),
        n => format!(" and {n} processes waiting for jobs (WORKER_WARM)"),
    };
    anyhow::ensure!(
        uids.len() == count,
        "JOB_UID_RANGE {first}-{last}: only {} users are free on this host for {slots} \
         WORKER_SLOTS{warm} (other workers hold the rest); widen the range",
        uids.len()
    );
    Ok((uids, held))
}

/// Adds the groups of `gids` to this process's supplementary groups, so that it may give a job
/// directory to a job's group without `CAP_CHOWN`. Jobs never inherit them: a child that takes
/// a job's user drops every supplementary group.
pub fn join_groups(gids: &[u32]) -> std::io::Result<()> {
    // SAFETY: getgroups with a null buffer returns the count; then fills a buffer that large.
    let mut groups = unsafe {
        let count = libc::getgroups(0, std::ptr::null_mut());
        if count < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut groups = vec![0 as libc::gid_t; count as usize];
        if libc::getgroups(count, groups.as_mut_ptr()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        groups
    };
    groups.extend(gids.iter().map(|g| *g as libc::gid_t));
    // SAFETY: a valid buffer of `len` gids; glibc applies it to every thread of the process.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with this thread's file-system identity set to the job user `uid`: what `f` may
/// touch is what the job could. Blocking; call it from a blocking thread.
pub fn as_user<T>(uid: u32, f: impl FnOnce() -> T) -> std::io::Result<T> {
    struct Restore(libc::uid_t, libc::gid_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: setfsuid/setfsgid only change this thread's file-system credentials.
            unsafe {
                libc::setfsuid(self.0);
                libc::setfsgid(self.1);
            }
        }
    }
    // SAFETY: as above; each returns the previous value, and -1 changes nothing (a query).
    let restore = unsafe {
        let gid = libc::setfsgid(uid);
        Restore(libc::setfsuid(uid) as libc::uid_t, gid as libc::gid_t)
    };
    // SAFETY: a query, see above.
    let now = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
    if now != (uid as i32, uid as i32) {
        drop(restore);
        return Err(std::io::Error::other(format!(
            "cannot act as user {uid} (no CAP_SETUID/CAP_SETGID?)"
        )));
    }
    let out = f();
    drop(restore);
    Ok(out)
}

/// Removes everything inside `dir` (not `dir` itself). Call it as the user who wrote it.
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    let mut first_error = Ok(());
    for entry in std::fs::read_dir(dir)? {
        let removed = entry.and_then(|e| remove_tree(&e.path()));
        if first_error.is_ok() {
            first_error = removed;
        }
    }
    first_error
}

/// Where any user may leave files that outlive a job: what a job user left there is removed
/// with its job, so the slot's next job (another tenant's) does not find it.
const SHARED_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// Removes what `uid` owns at the top of [`SHARED_DIRS`]. Call it as that user.
pub fn remove_shared_leftovers(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    for dir in SHARED_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == uid) {
                if let Err(e) = remove_tree(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a job's file");
                }
            }
        }
    }
}

/// Removes a file or a whole directory tree of the calling (file-system) user, also
/// directories it made unreadable to itself (`chmod 000`): as their owner it may open them up.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    empty_dir(path)?;
    std::fs::remove_dir(path)
}

/// Takes the job's user and group, with no supplementary groups, in a job's child between fork
/// and exec (async-signal-safe calls only).
pub fn become_user(uid: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls on this (single-threaded, forked) process.
    let done = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(uid) == 0
            && libc::setuid(uid) == 0
    };
    if done {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Kills every process of a job's user (those that escaped its process group with `setsid`
/// too).
pub async fn kill_all(uid: u32) {
    match tokio::task::spawn_blocking(move || kill_all_now(uid)).await {
        Ok(()) => {}
        Err(e) => tracing::warn!(uid, error = %e, "killing a job user's processes panicked"),
    }
}

/// The same, blocking. A child takes the user and signals everything that user may signal
/// (`kill(-1)` spares only the caller): the worker itself may lack `CAP_KILL`. The child shares
/// the worker's memory and the worker's thread waits for it (`CLONE_VM | CLONE_VFORK`, as
/// `posix_spawn` does) and it makes only raw system calls: no copy of the worker's page tables,
/// no program to start — this runs after every job.
pub fn kill_all_now(uid: u32) {
    extern "C" fn take_user_and_kill(arg: *mut libc::c_void) -> libc::c_int {
        let id = arg as usize as libc::c_long;
        // SAFETY: raw system calls only; setresuid changes this task's credentials alone.
        unsafe {
            if libc::syscall(libc::SYS_setresuid, id, id, id) != 0 {
                return 1;
            }
            libc::kill(-1, libc::SIGKILL);
        }
        0
    }
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the stack outlives the child (CLONE_VFORK: this thread waits until it exits);
    // every signal is blocked around the clone so that no handler of the worker runs on the
    // child's stack; the child's function makes only system calls.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len() - 64);
        let top = top.sub(top as usize % 16) as *mut libc::c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        let pid = libc::clone(
            take_user_and_kill,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            uid as usize as *mut libc::c_void,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        pid
    };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(uid, error = %e, "could not kill a job user's processes");
        return;
    }
    let mut status = 0;
    // SAFETY: waits for the child cloned above.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        tracing::warn!(uid, "could not take a job user to kill its processes");
    }
}
