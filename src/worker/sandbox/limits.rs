//! Resource limits of a job's processes (`setrlimit`), set in the child between fork and exec.

/// What one job's processes may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `RLIMIT_DATA`: heap and data, in bytes (not the address space, which V8 reserves).
    pub memory: u64,
    /// `RLIMIT_NPROC`: processes of the job's user (only when it has a user of its own).
    pub processes: u64,
    pub open_files: u64,
    pub file_size: u64,
}

/// Applies the limits in a job's child process, just before it becomes the job (after it took
/// the job's user). Runs between fork and exec: only async-signal-safe calls. A limit above
/// what the worker itself may have is lowered to that: raising it needs `CAP_SYS_RESOURCE`,
/// which a worker in a pod with only `CAP_SETUID`/`CAP_SETGID` lacks.
pub(super) fn apply(limits: &Limits, own_user: bool, cpu_seconds: u64) -> std::io::Result<()> {
    let set = |resource, value: u64| {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit with valid rlimit structs; both are plain syscalls.
        unsafe {
            if libc::getrlimit(resource, &mut current) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let value = (value as libc::rlim_t).min(current.rlim_max);
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    set(libc::RLIMIT_CORE, 0)?;
    // POSIX message queues outlive their processes, and the slot's next job may be another
    // tenant's: a job may make none.
    set(libc::RLIMIT_MSGQUEUE, 0)?;
    set(libc::RLIMIT_DATA, limits.memory)?;
    set(libc::RLIMIT_NOFILE, limits.open_files)?;
    set(libc::RLIMIT_FSIZE, limits.file_size)?;
    set(libc::RLIMIT_CPU, cpu_seconds)?;
    if own_user {
        // Counted per user: only meaningful when the user is the job's alone.
        set(libc::RLIMIT_NPROC, limits.processes)?;
    }
    Ok(())
}
