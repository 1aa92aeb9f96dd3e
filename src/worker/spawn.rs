//! Starting a job's process without copying the worker. `std::process::Command` forks once a
//! step must run between fork and exec (the job's confinement is one): the kernel copies the
//! worker's page tables, and both sides then take copy-on-write faults until the child execs —
//! measured at ~1 ms of a trivial `bash` job's path, and more CPU beside it. Here the child
//! shares the worker's memory and the spawning thread waits until it has exec'd (`clone` with
//! `CLONE_VM | CLONE_VFORK`, as `posix_spawn` does), so it makes only raw system calls on its
//! way: no allocation, no lock, nothing of glibc that acts on the whole process (its `setuid`
//! would signal the worker's threads). Its end is learned from a pidfd.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::process::ProcessSpec;
use super::sandbox::Confinement;

/// What the process reads on its standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    Null,
    /// A pipe, whose writing end is [`JobChild::stdin`].
    Piped,
}

/// How to start one job's process.
pub struct Spawn<'a> {
    pub spec: &'a ProcessSpec,
    pub confinement: &'a Confinement,
    pub cpu_seconds: u64,
    pub stdin: Stdin,
    /// A nice value the process starts at (before it takes the job's user).
    pub nice: Option<libc::c_int>,
}

/// A job's process: its own process group, output piped, confined, dying with the worker's
/// spawning thread. Dropped before its end was read, it is killed (and reaped).
pub struct JobChild {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// The child's steps, as an error names the one that failed.
const STEPS: [&str; 6] = [
    "signals",
    "standard streams",
    "priority",
    "confinement",
    "death with the worker",
    "exec",
];

/// What the child reads: everything made by the parent before the clone.
struct Plan<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    stdio: [RawFd; 3],
    confinement: &'a Confinement,
    cpu_seconds: u64,
    nice: Option<libc::c_int>,
    parent: libc::pid_t,
    /// Set by a child that gives up: the failed step (an index of [`STEPS`]) and its errno.
    failed_step: AtomicI32,
    errno: AtomicI32,
}

impl Spawn<'_> {
    pub fn start(self) -> io::Result<JobChild> {
        let program = c_string(std::path::absolute(&self.spec.program)?.as_os_str())?;
        let args: Vec<CString> = std::iter::once(self.spec.program.as_os_str())
            .chain(self.spec.args.iter().map(OsStr::new))
            .map(c_string)
            .collect::<io::Result<_>>()?;
        let env: Vec<CString> = self
            .spec
            .env
            .iter()
            .map(|(k, v)| c_string(OsStr::new(&format!("{k}={v}"))))
            .collect::<io::Result<_>>()?;
        let argv = null_terminated(&args);
        let envp = null_terminated(&env);

        // The worker's ends are registered before the clone: nothing can fail between the
        // child's exec and its `JobChild`, which kills it if dropped.
        let stdin = match self.stdin {
            Stdin::Null => (open_null()?, None),
            Stdin::Piped => {
                let (read, write) = pipe_pair()?;
                (read, Some(pipe::Sender::from_owned_fd(write)?))
            }
        };
        let (out_read, out_write) = pipe_pair()?;
        let (err_read, err_write) = pipe_pair()?;
        let stdout = pipe::Receiver::from_owned_fd(out_read)?;
        let stderr = pipe::Receiver::from_owned_fd(err_read)?;
        let plan = Plan {
            program: &program,
            argv: &argv,
            envp: &envp,
            stdio: [
                stdin.0.as_raw_fd(),
                out_write.as_raw_fd(),
                err_write.as_raw_fd(),
            ],
            confinement: self.confinement,
            cpu_seconds: self.cpu_seconds,
            nice: self.nice,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            failed_step: AtomicI32::new(-1),
            errno: AtomicI32::new(0),
        };
        // SAFETY: `plan` outlives the child's use of it; `child_main` makes only calls that
        // act on the child alone.
        let pid = unsafe { clone_vfork(child_main, &plan as *const Plan as *mut libc::c_void)? };
        // The child holds its own copies, or is gone.
        drop((stdin.0, out_write, err_write));
        let step = plan.failed_step.load(Ordering::Acquire);
        if step >= 0 {
            let errno = plan.errno.load(Ordering::Acquire);
            let mut status = 0;
            // SAFETY: waitpid on our own child, which has exited.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let e = io::Error::from_raw_os_error(errno);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{} ({}): {e}",
                    STEPS[step as usize],
                    self.spec.program.display()
                ),
            ));
        }
        let mut child = JobChild {
            pid: pid as u32,
            pidfd: None,
            status: None,
            stdin: stdin.1,
            stdout: Some(stdout),
            stderr: Some(stderr),
        };
        // SAFETY: pidfd_open on our own child, which nothing else reaps: its pid cannot be
        // reused before this process waits for it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned here alone, then by the AsyncFd.
        let pidfd = unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd as RawFd)) }
            .map_err(io::Error::from)?;
        child.pidfd = Some(pidfd);
        Ok(child)
    }
}

/// Whether this kernel has the calls a job's start needs (`pidfd_open`, Linux 5.3;
/// `close_range`, 5.9) and no seccomp profile refuses them: a worker without says so at
/// start rather than fail every job.
pub fn check_support() -> io::Result<()> {
    let refused = |call: &str| {
        let e = io::Error::last_os_error();
        io::Error::new(
            e.kind(),
            format!("{call} (Linux 5.9 or later, not refused by a seccomp profile): {e}"),
        )
    };
    // SAFETY: pidfd_open on this process, its descriptor owned at once; close_range on a
    // range of no descriptor.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
        if fd < 0 {
            return Err(refused("pidfd_open"));
        }
        drop(OwnedFd::from_raw_fd(fd as RawFd));
        if libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX,
            libc::c_uint::MAX,
            0,
        ) != 0
        {
            return Err(refused("close_range"));
        }
    }
    Ok(())
}

impl JobChild {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Its exit status, if it has ended (then it is reaped).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: waitpid on our own child, not reaped yet.
            match unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) } {
                0 => {}
                n if n < 0 => return Err(io::Error::last_os_error()),
                _ => self.status = Some(ExitStatus::from_raw(status)),
            }
        }
        Ok(self.status)
    }

    /// Waits for its end.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let pidfd = self
                .pidfd
                .as_ref()
                .expect("a child not reaped has its pidfd");
            // Readable once the process has ended.
            pidfd.readable().await?.clear_ready();
        }
    }

    /// Sends it SIGKILL, unless it was reaped already.
    pub fn kill(&self) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own child, not reaped yet: its pid is still its own.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for JobChild {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        self.kill();
        let (pid, pidfd) = (self.pid, self.pidfd.take());
        // Reaped once it is gone: no zombie is left behind.
        let reap = move || {
            // SAFETY: waitpid on our own child.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
        };
        match (tokio::runtime::Handle::try_current(), pidfd) {
            (Ok(runtime), Some(pidfd)) => {
                runtime.spawn(async move {
                    let _ = pidfd.readable().await;
                    reap();
                });
            }
            _ => {
                std::thread::spawn(reap);
            }
        }
    }
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in a program, argument or environment variable",
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both descriptors on success; each is owned once.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

fn open_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::options()
        .read(true)
        .open("/dev/null")?
        .into())
}

/// The kernel's signal set, as `rt_sigprocmask` takes it: 64 signals.
const SIGSET_SIZE: libc::size_t = 8;

/// Room for a child's calls: it runs on a stack of its own in the worker's memory, below a
/// guard page (an overflow faults rather than writes over the worker's heap).
const CHILD_STACK: usize = 256 * 1024;

/// Clones a child that shares the worker's memory and runs `child(arg)`, and returns once it
/// exec'd or exited (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does).
///
/// # Safety
/// `arg` must be valid for `child` until this returns, and `child` may make only system
/// calls that act on the child alone: no allocation, no lock, nothing of glibc's that acts on
/// the whole process.
pub unsafe fn clone_vfork(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let length = CHILD_STACK + page;
    // SAFETY: a fresh private mapping, unmapped below once the child is done with it; its
    // lowest page made inaccessible.
    let stack = unsafe {
        let stack = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if libc::mprotect(stack, page, libc::PROT_NONE) != 0 {
            let e = io::Error::last_os_error();
            libc::munmap(stack, length);
            return Err(e);
        }
        stack
    };
    // Every signal blocked around the clone, glibc's own included (its `sigprocmask` would
    // leave those), so that no handler of the worker runs on the child's stack before the
    // child resets them; the child empties the mask before exec.
    let all: u64 = !0;
    let mut before: u64 = 0;
    // SAFETY: rt_sigprocmask on this thread with 8-byte sets; clone with a stack top inside
    // the mapping above (16-byte aligned: the mapping is page aligned); `arg` per the caller.
    let (pid, e) = unsafe {
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all,
            &mut before,
            SIGSET_SIZE,
        ) != 0
        {
            let e = io::Error::last_os_error();
            libc::munmap(stack, length);
            return Err(e);
        }
        let top = stack.cast::<u8>().add(length).cast::<libc::c_void>();
        let pid = libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        );
        let e = io::Error::last_os_error();
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &before,
            std::ptr::null_mut::<u64>(),
            SIGSET_SIZE,
        );
        libc::munmap(stack, length);
        (pid, e)
    };
    if pid < 0 {
        return Err(e);
    }
    Ok(pid)
}

/// Records why the child gives up, and ends it.
fn fail(plan: &Plan<'_>, step: usize, e: io::Error) -> ! {
    plan.errno
        .store(e.raw_os_error().unwrap_or(libc::EINVAL), Ordering::Release);
    plan.failed_step.store(step as i32, Ordering::Release);
    // SAFETY: ends this task alone (the worker's threads are another thread group).
    unsafe { libc::syscall(libc::SYS_exit, 127) };
    unreachable!("exit returned")
}

/// The child, from clone to exec. Never returns to the worker's code: it execs, or records
/// the failed step and exits.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Plan`, which outlives this child's run (CLONE_VFORK).
    let plan = unsafe { &*(arg as *const Plan) };
    let fail = |step: usize, e: io::Error| fail(plan, step, e);
    // SAFETY (the block): system calls on this child's own signal dispositions, descriptors,
    // process group, priority and parent-death signal, with pointers into `plan`.
    unsafe {
        // No handler of the worker's may run here, nor reach the program: every caught signal
        // back to its default (glibc's own included, which its wrapper would refuse), SIGPIPE
        // too (the worker ignores it; an exec'd program would inherit that), as
        // `std::process::Command` does. The mask, all blocked by the parent, is emptied just
        // before exec. The kernel's `struct sigaction` with every field zero is SIG_DFL with
        // no flags on every architecture; its handler comes first.
        for signal in 1..=64 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old = [0u64; 4];
            if libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                std::ptr::null::<u64>(),
                old.as_mut_ptr(),
                8,
            ) != 0
            {
                continue;
            }
            let handler = old[0] as libc::sighandler_t;
            if handler != libc::SIG_DFL && (handler != libc::SIG_IGN || signal == libc::SIGPIPE) {
                let default = [0u64; 4];
                if libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8,
                ) != 0
                {
                    fail(0, io::Error::last_os_error());
                }
            }
        }
        // Its own group, so that a kill reaches every process the script started.
        if libc::setpgid(0, 0) != 0 {
            fail(1, io::Error::last_os_error());
        }
        for (target, fd) in plan.stdio.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                fail(1, io::Error::last_os_error());
            }
        }
        // Nothing else of the worker's: what it inherited without close-on-exec (from
        // whatever started it) would reach the job too.
        if libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0) != 0 {
            fail(1, io::Error::last_os_error());
        }
        if let Some(nice) = plan.nice {
            if libc::setpriority(libc::PRIO_PROCESS as _, 0, nice) != 0 {
                fail(2, io::Error::last_os_error());
            }
        }
    }
    if let Err(e) = plan.confinement.enter(plan.cpu_seconds) {
        fail(3, e);
    }
    // The job dies with the worker's spawning thread. After `enter`: taking the job's user
    // clears the setting.
    if let Err(e) = crate::parent_death::arm(libc::SIGKILL, plan.parent) {
        fail(4, e);
    }
    // SAFETY (the block): sigprocmask and execve on this child, with NUL-terminated strings
    // and null-terminated arrays from `plan`.
    unsafe {
        let none: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none,
            std::ptr::null_mut::<u64>(),
            SIGSET_SIZE,
        );
        libc::syscall(
            libc::SYS_execve,
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
    }
    fail(5, io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, script: &str) -> ProcessSpec {
        ProcessSpec {
            program: program.into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
        }
    }

    #[tokio::test]
    async fn a_child_gets_its_environment_pipes_group_and_default_signals() {
        let dir = tempfile::tempdir().unwrap();
        let confinement = Confinement::unconfined_for_tests(dir.path());
        let spec = spec(
            "/bin/sh",
            "echo \"$GREETING $(ps -o pgid= -p $$ | tr -d ' ') $$\"; \
             grep -E '^Sig(Ign|Blk)' /proc/self/status >&2; read line; echo \"got $line\"; exit 3",
        );
        let mut child = Spawn {
            spec: &spec,
            confinement: &confinement,
            cpu_seconds: 10,
            stdin: Stdin::Piped,
            nice: None,
        }
        .start()
        .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"input\n").await.unwrap();
        drop(stdin);
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        let pid = child.id();
        // Its own process group, the environment given; nothing blocked, and nothing ignored
        // that the test did not ignore already, but for SIGPIPE, which Rust ignores.
        assert_eq!(out, format!("hello {pid} {pid}\ngot input\n"));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .unwrap();
        let ignored = u64::from_str_radix(ignored, 16).unwrap() & !(1 << (libc::SIGPIPE - 1));
        assert_eq!(
            err,
            format!("SigBlk:\t0000000000000000\nSigIgn:\t{ignored:016x}\n")
        );
    }

    #[tokio::test]
    async fn a_failed_step_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let confinement = Confinement::unconfined_for_tests(dir.path());
        let spec = spec("/nonexistent/program", "");
        let e = Spawn {
            spec: &spec,
            confinement: &confinement,
            cpu_seconds: 10,
            stdin: Stdin::Null,
            nice: None,
        }
        .start()
        .err()
        .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(
            e.to_string().starts_with("exec (/nonexistent/program)"),
            "{e}"
        );
    }
}
