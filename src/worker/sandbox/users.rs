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

/// A user a job runs as, with its partner: a user that never runs a process, which the worker
/// takes as its real and saved user when it acts on the job user's processes (see
/// [`kill_all_now`]), so that those processes may not signal it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobUid {
    pub uid: u32,
    partner: u32,
}

/// As the reaper's command line carries it: `uid:partner`.
impl std::fmt::Display for JobUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.partner)
    }
}

impl std::str::FromStr for JobUid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected UID:PARTNER");
        let (uid, partner) = s.split_once(':').ok_or_else(bad)?;
        let (uid, partner): (u32, u32) = (
            uid.parse().map_err(|_| bad())?,
            partner.parse().map_err(|_| bad())?,
        );
        // Never root or a system user, never "unchanged" (-1) for setresuid, never the same.
        let valid = |id: u32| (1000..u32::MAX).contains(&id);
        if !(valid(uid) && valid(partner) && uid != partner) {
            return Err(format!("{s:?}: two different users from 1000 up"));
        }
        Ok(Self { uid, partner })
    }
}

/// `JOB_UID_RANGE`: its lower half are the users jobs run as, each paired with the user as
/// far into the upper half, which never runs a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    first: u32,
    half: u32,
}

impl UidRange {
    /// `first-last`, or `none`.
    pub fn parse(raw: &str) -> anyhow::Result<Option<Self>> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("none") || raw.is_empty() {
            return Ok(None);
        }
        let bad = || {
            anyhow::anyhow!("JOB_UID_RANGE {raw:?}: expected FIRST-LAST (e.g. 61000-61999) or none")
        };
        let (first, last) = raw.split_once('-').ok_or_else(bad)?;
        let (first, last): (u32, u32) = (
            first.trim().parse().map_err(|_| bad())?,
            last.trim().parse().map_err(|_| bad())?,
        );
        anyhow::ensure!(
            first >= 1000 && first < last && last < u32::MAX,
            "JOB_UID_RANGE {raw:?}: users from 1000 up, at least two (FIRST < LAST): half of \
             them run jobs, each paired with one of the other half"
        );
        let count = last - first + 1;
        Ok(Some(Self {
            first,
            half: count / 2,
        }))
    }

    fn contains(&self, id: u32) -> bool {
        (self.first..self.first + 2 * self.half).contains(&id)
    }

    fn job_users(&self) -> impl Iterator<Item = JobUid> + '_ {
        (self.first..self.first + self.half).map(|uid| JobUid {
            uid,
            partner: uid + self.half,
        })
    }
}

/// Claims `count` job users of `range`, each with its partner, for this worker alone. Workers
/// sharing a host (a laptop, the test suite, pods on one node without user namespaces) must
/// never hand the same user to two jobs, nor run jobs as another worker's partner (even with
/// ranges that differ): each uid is claimed with an exclusive `flock` on `<locks>/<uid>`, and
/// the kernel drops the lock when the worker dies, however it dies.
pub fn claim(
    locks: &Path,
    range: UidRange,
    slots: usize,
    warm: usize,
) -> anyhow::Result<(Vec<JobUid>, Vec<File>)> {
    let count = slots + warm;
    let mine = own_ids()?;
    anyhow::ensure!(
        !mine.iter().any(|id| range.contains(*id)),
        "JOB_UID_RANGE includes one of this worker's own users or groups ({mine:?}): jobs \
         would act as the worker"
    );
    let mut users = Vec::with_capacity(count);
    let mut held = Vec::with_capacity(2 * count);
    for user in range.job_users() {
        if users.len() == count {
            break;
        }
        let Some(both) = lock_pair(locks, user)? else {
            continue;
        };
        users.push(user);
        held.extend(both);
    }
    let warm = match warm {
        0 => String::new(),
        n => format!(" and {n} processes waiting for jobs (WORKER_WARM)"),
    };
    anyhow::ensure!(
        users.len() == count,
        "JOB_UID_RANGE: only {} of its {} job users are free on this host for {slots} \
         WORKER_SLOTS{warm} (other workers hold the rest; half of the range are partners that \
         run nothing); widen the range",
        users.len(),
        range.half
    );
    Ok((users, held))
}

/// The real, effective and saved user and group of this process.
fn own_ids() -> std::io::Result<[u32; 6]> {
    let (mut ruid, mut euid, mut suid) = (0, 0, 0);
    let (mut rgid, mut egid, mut sgid) = (0, 0, 0);
    // SAFETY: each call fills the three integers it is given.
    let done = unsafe {
        libc::getresuid(&mut ruid, &mut euid, &mut suid) == 0
            && libc::getresgid(&mut rgid, &mut egid, &mut sgid) == 0
    };
    if !done {
        return Err(std::io::Error::last_os_error());
    }
    Ok([ruid, euid, suid, rgid, egid, sgid])
}

/// Exclusive holds on a job user and its partner, if no other worker (or reaper) has either.
pub fn lock_pair(locks: &Path, user: JobUid) -> std::io::Result<Option<[File; 2]>> {
    let Some(mine) = lock(locks, user.uid)? else {
        return Ok(None);
    };
    Ok(lock(locks, user.partner)?.map(|partner| [mine, partner]))
}

/// An exclusive hold on `<locks>/<uid>`, if no other worker has it.
fn lock(locks: &Path, uid: u32) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(locks.join(uid.to_string()))?;
    // SAFETY: flock on a descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(locked.then_some(file))
}

/// Adds the groups of `gids` to this process's supplementary groups, so that it may give a job
/// directory to a job's group without `CAP_CHOWN`. Jobs never inherit them: a child that takes
/// a job's user drops every supplementary group. Once, before any job: it sets every thread's
/// groups, and a thread inside [`as_user`] would have them taken back.
pub fn join_groups(gids: &[u32]) -> std::io::Result<()> {
    let mut groups = thread_groups()?;
    groups.extend(gids.iter().map(|g| *g as libc::gid_t));
    // SAFETY: a valid buffer of `len` gids; glibc applies it to every thread of the process.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with this thread's file-system identity set to the job user `uid`, without the
/// worker's supplementary groups (which hold every job user's group, and in a pod the group
/// its secrets are readable by): what `f` may touch is what the job could. Blocking; call it
/// from a blocking thread or for brief file work only.
pub fn as_user<T>(uid: u32, f: impl FnOnce() -> T) -> std::io::Result<T> {
    struct Restore {
        fsuid: libc::uid_t,
        fsgid: libc::gid_t,
        groups: Vec<libc::gid_t>,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: setfsuid/setfsgid and the raw setgroups system call change only this
            // thread's credentials (glibc's setgroups would change every thread's).
            let restored = unsafe {
                libc::setfsuid(self.fsuid);
                libc::setfsgid(self.fsgid);
                libc::syscall(SETGROUPS, self.groups.len(), self.groups.as_ptr())
            };
            if restored != 0 {
                // A runtime thread left without the worker's groups would fail its later work
                // in ways no one could explain: better to stop, and be restarted.
                tracing::error!(
                    error = %std::io::Error::last_os_error(),
                    "could not give a thread its groups back"
                );
                std::process::abort();
            }
        }
    }
    let failed = |what: &str, e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot act as job user {uid}: {what}: {e}"),
        )
    };
    let groups = thread_groups().map_err(|e| failed("getgroups", e))?;
    // SAFETY: as above; clearing needs CAP_SETGID and changes nothing when refused.
    if unsafe { libc::syscall(SETGROUPS, 0, std::ptr::null::<libc::gid_t>()) } != 0 {
        return Err(failed("setgroups", std::io::Error::last_os_error()));
    }
    // SAFETY: as above; setfsuid/setfsgid return the previous value, and -1 changes nothing
    // (a query).
    let restore = unsafe {
        let fsgid = libc::setfsgid(uid);
        let restore = Restore {
            fsuid: libc::setfsuid(uid) as libc::uid_t,
            fsgid: fsgid as libc::gid_t,
            groups,
        };
        let now = (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX));
        if now != (uid as i32, uid as i32) {
            drop(restore);
            return Err(failed(
                "setfsuid/setfsgid (no CAP_SETUID/CAP_SETGID?)",
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ));
        }
        restore
    };
    let out = f();
    drop(restore);
    Ok(out)
}

/// The credential system calls with 32-bit ids (separate calls where the original ones take
/// 16-bit ids).
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
mod calls {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
    pub const SETGID: libc::c_long = libc::SYS_setgid32;
    pub const SETUID: libc::c_long = libc::SYS_setuid32;
    pub const SETRESUID: libc::c_long = libc::SYS_setresuid32;
}
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
mod calls {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;
    pub const SETGID: libc::c_long = libc::SYS_setgid;
    pub const SETUID: libc::c_long = libc::SYS_setuid;
    pub const SETRESUID: libc::c_long = libc::SYS_setresuid;
}
use calls::{SETGID, SETGROUPS, SETRESUID, SETUID};

/// This thread's supplementary groups.
fn thread_groups() -> std::io::Result<Vec<libc::gid_t>> {
    // SAFETY: getgroups with a null buffer returns the count; then fills a buffer that large.
    unsafe {
        let count = libc::getgroups(0, std::ptr::null_mut());
        if count < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let filled = libc::getgroups(count, groups.as_mut_ptr());
        if filled < 0 {
            return Err(std::io::Error::last_os_error());
        }
        groups.truncate(filled as usize);
        Ok(groups)
    }
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
const SHARED_DIRS: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];

/// Removes what `uid` owns at the top of [`SHARED_DIRS`]; whether all of it went. Call it as
/// that user.
pub fn remove_shared_leftovers(uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut all = true;
    for dir in SHARED_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == uid) {
                if let Err(e) = remove_tree(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a job's file");
                    all = false;
                }
            }
        }
    }
    all
}

/// Removes a file or a whole directory tree of the calling (file-system) user, also
/// directories it made unreadable to itself (`chmod 000`): as their owner it may open them up.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    // The standard library's walk goes relative to open directories, so a tree nested deeper
    // than a path may be long goes too; one with directories made unreadable is opened up.
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    empty_dir(path)?;
    std::fs::remove_dir(path)
}

/// Takes the job's user and group, with no supplementary groups, in a job's child between fork
/// and exec (async-signal-safe calls only).
pub fn become_user(uid: u32) -> std::io::Result<()> {
    // SAFETY: raw system calls, on this task's credentials alone: glibc's wrappers would make
    // every thread of the process change too, and a job's child shares the worker's memory
    // (see `worker::spawn`).
    let done = unsafe {
        libc::syscall(SETGROUPS, 0, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(SETGID, uid) == 0
            && libc::syscall(SETUID, uid) == 0
    };
    if done {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Kills every process of a job's user (those that escaped its process group with `setsid`
/// too); false if that could not be done.
pub async fn kill_all(user: JobUid) -> bool {
    match tokio::task::spawn_blocking(move || kill_all_now(user)).await {
        Ok(killed) => killed,
        Err(e) => {
            tracing::warn!(uid = user.uid, error = %e, "killing a job user's processes panicked");
            false
        }
    }
}

/// Gives the calling process a session keyring of its own and empties its uid's user,
/// user-session and persistent keyrings (`@u`, `@us`, the persistent one): since Linux 5.3
/// they belong to the uid, not to its processes, so the slot's previous job — maybe another
/// tenant's — could have left keys there. Run by a job's child once it is the job's user, between fork and exec:
/// raw system calls only. Refused ones (a seccomp profile without `keyctl`) leave nothing to
/// empty either.
pub fn forget_keys() {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    const KEYCTL_CLEAR: libc::c_long = 7;
    const KEYCTL_LINK: libc::c_long = 8;
    const KEYCTL_GET_PERSISTENT: libc::c_long = 22;
    const PROCESS_KEYRING: libc::c_long = -2;
    const USER_KEYRING: libc::c_long = -4;
    const USER_SESSION_KEYRING: libc::c_long = -5;
    // SAFETY: keyctl on the caller's own keyrings; no memory is passed (a null name).
    unsafe {
        // A session keyring of its own: the worker's (a systemd service has one) would be
        // shared by every job.
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            0 as libc::c_long,
        );
        libc::syscall(libc::SYS_keyctl, KEYCTL_CLEAR, USER_KEYRING);
        libc::syscall(libc::SYS_keyctl, KEYCTL_CLEAR, USER_SESSION_KEYRING);
        // As the kernel made it: the user-session keyring holds the user keyring.
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_LINK,
            USER_KEYRING,
            USER_SESSION_KEYRING,
        );
        // The uid's persistent keyring lasts days; possessed through the process keyring
        // (gone at exec), it may be emptied.
        let persistent = libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_PERSISTENT,
            -1 as libc::c_long,
            PROCESS_KEYRING,
        );
        if persistent > 0 {
            libc::syscall(libc::SYS_keyctl, KEYCTL_CLEAR, persistent);
        }
    }
}

/// A System V IPC object: shared memory, a message queue, a semaphore set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ipc {
    Shm(libc::c_int),
    Msg(libc::c_int),
    Sem(libc::c_int),
}

/// A file of `/proc/sysvipc`, listing objects of one kind: the columns of the id, the owner and
/// the creator.
struct IpcTable {
    file: &'static str,
    kind: fn(libc::c_int) -> Ipc,
    columns: [usize; 3],
}

const IPC_TABLES: [IpcTable; 3] = [
    IpcTable {
        file: "shm",
        kind: Ipc::Shm,
        columns: [1, 7, 9],
    },
    IpcTable {
        file: "msg",
        kind: Ipc::Msg,
        columns: [1, 7, 9],
    },
    IpcTable {
        file: "sem",
        kind: Ipc::Sem,
        columns: [1, 4, 6],
    },
];

/// The System V IPC objects `uid` owns or made, as `/proc/sysvipc` lists them (those of the
/// worker's IPC namespace, which its jobs share).
///
/// Each comes with whether the user's job made it and it still lives: only those must be gone
/// before the user serves another job. Others may give objects to the user, or keep one it made
/// attached after its removal, and must not be able to keep the user from its next job.
fn ipc_objects_of(uid: u32) -> std::io::Result<Vec<(Ipc, bool)>> {
    /// The `perms` bit of a shared memory segment removed while still attached (`SHM_DEST`).
    const REMOVED: u32 = 0o1000;
    let mut found = Vec::new();
    for IpcTable {
        file,
        kind,
        columns: [id, owner, creator],
    } in IPC_TABLES
    {
        let text = match std::fs::read_to_string(format!("/proc/sysvipc/{file}")) {
            Ok(text) => text,
            // A kernel without System V IPC.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines().skip(1) {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let is_user =
                |c: usize| columns.get(c).and_then(|v| v.parse::<u32>().ok()) == Some(uid);
            let id = columns.get(id).and_then(|v| v.parse().ok());
            let removed = columns
                .get(2)
                .and_then(|v| u32::from_str_radix(v, 8).ok())
                .is_some_and(|perms| file == "shm" && perms & REMOVED != 0);
            if let (Some(id), true) = (id, is_user(owner) || is_user(creator)) {
                found.push((kind(id), is_user(creator) && !removed));
            }
        }
    }
    Ok(found)
}

/// The same, blocking. A child takes the user as its effective user and signals everything
/// that user may signal (`kill(-1)` spares only the caller and init): the worker itself may
/// lack `CAP_KILL`. Its real and saved user are the job user's partner, which never runs a
/// process: a process may signal another only when its real or effective user is the other's
/// real or saved user (or, for `SIGCONT` alone, within one session), so the job's processes
/// cannot stop the child (with `SIGSTOP`, looping, the worker would wait for it forever) nor
/// may anything but this child signal the partner. It drops every capability first: a worker
/// that is not root keeps them through `setresuid`, and `CAP_KILL` would reach every process.
/// The child shares the worker's memory and the worker's thread waits for it
/// (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does) and it makes only raw system calls: no copy
/// of the worker's page tables, no program to start — this runs after every job. Once the
/// processes are gone, the System V IPC objects the user made or owns are removed the same way
/// (like files in `/tmp` they outlive their processes, and the slot's next job may be another
/// tenant's); whether all of it went.
pub fn kill_all_now(user: JobUid) -> bool {
    if !as_user_in_child(user, &[]) {
        return false;
    }
    // Listed once no process of the user is left to make another meanwhile.
    let left = || {
        ipc_objects_of(user.uid).inspect_err(
            |e| tracing::warn!(uid = user.uid, error = %e, "cannot list a job user's IPC objects"),
        )
    };
    match left() {
        Ok(ipc) if ipc.is_empty() => true,
        Ok(ipc) => {
            let objects: Vec<Ipc> = ipc.iter().map(|(object, _)| *object).collect();
            let removed = as_user_in_child(user, &objects)
                && left().is_ok_and(|l| l.iter().all(|(_, its_own)| !its_own));
            if !removed {
                tracing::warn!(uid = user.uid, "could not remove a job user's IPC objects");
            }
            removed
        }
        Err(_) => false,
    }
}

/// Kills every process `user` may signal, then removes the IPC objects `ipc`, in a child that
/// takes the user as described at [`kill_all_now`]; whether the child could take the user.
fn as_user_in_child(user: JobUid, ipc: &[Ipc]) -> bool {
    struct Task<'a> {
        user: JobUid,
        ipc: &'a [Ipc],
    }
    extern "C" fn take_user_and_kill(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Task` of the caller, which waits until this child exits.
        let task = unsafe { &*(arg as *const Task) };
        let user = task.user;
        let (uid, partner) = (user.uid as libc::c_long, user.partner as libc::c_long);
        // Version 3 of the capability sets, with empty sets (`struct __user_cap_header_struct`
        // and two `struct __user_cap_data_struct`).
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let header: [u32; 2] = [LINUX_CAPABILITY_VERSION_3, 0];
        let none = [0u32; 6];
        // SAFETY: raw system calls only; setresuid and capset change this task's credentials
        // alone, and capset reads the two buffers above.
        unsafe {
            if libc::syscall(SETRESUID, partner, uid, partner) != 0
                || libc::syscall(libc::SYS_capset, header.as_ptr(), none.as_ptr()) != 0
            {
                return 1;
            }
            libc::kill(-1, libc::SIGKILL);
            // The effective user is the job's: it may remove what the job made.
            for object in task.ipc {
                match *object {
                    Ipc::Shm(id) => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    Ipc::Msg(id) => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    Ipc::Sem(id) => libc::semctl(id, 0, libc::IPC_RMID),
                };
            }
        }
        0
    }
    let task = Task { user, ipc };
    let arg = &task as *const Task as *mut libc::c_void;
    // SAFETY: `task` outlives the child (this returns once it exited); the child's function
    // makes only system calls.
    let pid = unsafe { crate::worker::spawn::clone_vfork(take_user_and_kill, arg) };
    let uid = user.uid;
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!(uid, error = %e, "could not kill a job user's processes");
            return false;
        }
    };
    let mut status = 0;
    // SAFETY: waits for the child cloned above.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
    let killed = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !killed {
        tracing::warn!(uid, "could not take a job user to kill its processes");
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's `Uid:`, `Gid:` and `Groups:` lines, as the kernel reports them.
    fn credentials() -> String {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .filter(|l| ["Uid:", "Gid:", "Groups:"].iter().any(|p| l.starts_with(p)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn acting_as_a_user_takes_its_identity_alone_and_gives_it_back() {
        // On a thread of its own: the test changes its groups.
        std::thread::spawn(|| {
            if !can_switch() {
                eprintln!("skipped: needs CAP_SETUID and CAP_SETGID");
                return;
            }
            // SAFETY: the raw system call changes only this thread's groups.
            let set = unsafe { libc::syscall(libc::SYS_setgroups, 2, [4242u32, 4343].as_ptr()) };
            assert_eq!(set, 0);
            // Another thread, with groups of its own that must not change meanwhile.
            let (tid_tx, tid) = std::sync::mpsc::channel();
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let other = std::thread::spawn(move || {
                // SAFETY: as above; gettid has no preconditions.
                unsafe { libc::syscall(libc::SYS_setgroups, 1, [4545u32].as_ptr()) };
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                wait.recv().unwrap();
            });
            let other_groups = format!("/proc/self/task/{}/status", tid.recv().unwrap());
            let groups_of = |status: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .map(|g| g.trim().to_owned())
            };
            let before = credentials();
            let (during, other_during) = as_user(65000, || {
                let other = std::fs::read_to_string(&other_groups).unwrap();
                (credentials(), groups_of(&other))
            })
            .unwrap();
            done.send(()).unwrap();
            other.join().unwrap();
            assert_eq!(other_during.as_deref(), Some("4545"));
            let fs = |text: &str, line: &str| {
                text.lines()
                    .find(|l| l.starts_with(line))
                    .and_then(|l| l.split_whitespace().last())
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(fs(&during, "Uid:"), "65000", "{during}");
            assert_eq!(fs(&during, "Gid:"), "65000", "{during}");
            assert_eq!(groups_of(&during).as_deref(), Some(""), "{during}");
            assert_eq!(credentials(), before);
            let panicked = std::panic::catch_unwind(|| as_user(65000, || panic!("in f")));
            assert!(panicked.is_err());
            assert_eq!(credentials(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn uid_ranges_pair_each_job_user_with_one_of_the_upper_half() {
        let range = UidRange::parse("61000-61999").unwrap().unwrap();
        let users: Vec<JobUid> = range.job_users().collect();
        assert_eq!(users.len(), 500);
        assert_eq!(users[0].to_string(), "61000:61500");
        assert_eq!(users[499].to_string(), "61499:61999");
        assert_eq!("61000:61500".parse::<JobUid>(), Ok(users[0]));
        for bad in [
            "0:61500",
            "61000:0",
            "61000:4294967295",
            "61000:61000",
            "61000",
        ] {
            assert!(bad.parse::<JobUid>().is_err(), "{bad}");
        }
        assert!(range.contains(61999) && !range.contains(62000) && !range.contains(60999));
        let odd = UidRange::parse("62000-62002").unwrap().unwrap();
        assert_eq!(
            odd.job_users().map(|u| u.to_string()).collect::<Vec<_>>(),
            ["62000:62001"]
        );
        assert_eq!(UidRange::parse("none").unwrap(), None);
        assert!(UidRange::parse("0-10").is_err(), "no system users");
        assert!(UidRange::parse("62000-62000").is_err(), "no partner");
        assert!(UidRange::parse("62000-61000").is_err());
        assert!(UidRange::parse("61000").is_err());
    }
}
