//! Child processes that die with the process that started them, however it ends (SIGKILL and
//! abort included): `PR_SET_PDEATHSIG`. Used for the servers `millrace dev` starts and for the
//! workers' jobs.

use std::os::unix::process::CommandExt;

/// Makes `command`'s process receive `signal` when its parent dies. A start whose parent is
/// already gone fails rather than leave an orphan.
///
/// Two rules of the kernel's: it watches the spawning *thread*, not the process, so spawn from
/// one that lives as long as the child should (the main thread or a runtime's worker, not a
/// blocking-pool thread, which ends when idle); and a change of the child's user or group
/// clears the setting, so call this after registering any `pre_exec` that changes them (they
/// run in the order registered).
pub fn dies_with_parent(command: &mut std::process::Command, signal: libc::c_int) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: `arm` is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(move || arm(signal, parent));
    }
}

/// In a child between fork (or clone) and exec: `signal` when the spawning thread of `parent`
/// ends; an error if `parent` is gone already. Only a `prctl` and a `getppid`, and an error
/// that allocates nothing.
pub fn arm(signal: libc::c_int, parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid on the calling process; no memory is passed.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            // ESRCH ("no such process"): an error that allocates nothing, unlike a message.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}
