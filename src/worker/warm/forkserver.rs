//! The worker's side of the Python fork server (`forkserver.py`): starting it, asking it for a
//! job's process over a `SOCK_SEQPACKET` socket, and learning that process's pid and exit.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::oneshot;

use super::prespawned::{expect, STARTED, STARTED_WITHIN};
use crate::worker::process::Started;
use crate::worker::sandbox::Confinement;

const SERVER: &str = include_str!("forkserver.py");
const WRAPPER: &str = include_str!("../runtimes/wrapper.py");

/// What the server said about one job.
#[derive(Default)]
struct Pending {
    pid: Option<oneshot::Sender<Result<u32, String>>>,
    exit: Option<oneshot::Sender<i32>>,
}

/// A running fork server.
pub struct ForkServer {
    socket: Seqpacket,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Set once its socket closed: it is gone, with every child it had.
    gone: tokio_util::sync::CancellationToken,
    pid: Option<u32>,
}

impl ForkServer {
    /// Starts a server and waits (at most `ready_within`) until it can fork.
    pub async fn start(
        python: &Path,
        preimport: &str,
        files_in: &Path,
        ready_within: Duration,
    ) -> io::Result<Arc<Self>> {
        let files = tempfile::Builder::new()
            .prefix("warm-")
            .tempdir_in(files_in)?;
        std::fs::write(files.path().join("forkserver.py"), SERVER)?;
        std::fs::write(files.path().join("wrapper.py"), WRAPPER)?;
        let (ours, theirs) = seqpacket_pair()?;
        let mut command = tokio::process::Command::new(python);
        command
            // Isolated (no PYTHON* variables, no user site), unbuffered output, no bytecode
            // written; an empty environment.
            .args(["-I", "-u", "-B"])
            .arg(files.path().join("forkserver.py"))
            .arg(files.path().join("wrapper.py"))
            .arg(preimport)
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Not in the worker's group: a Ctrl-C draining the worker must not end its jobs.
            .process_group(0)
            .kill_on_drop(true);
        // It holds the worker's rights: it dies with the worker, and its children with it.
        crate::parent_death::dies_with_parent(command.as_std_mut(), libc::SIGKILL);
        let mut child = command.spawn()?;
        let socket = Seqpacket::new(ours)?;
        let server = Arc::new(Self {
            pid: child.id(),
            socket,
            pending: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            gone: tokio_util::sync::CancellationToken::new(),
        });
        let ready = tokio::time::timeout(ready_within, server.socket.receive()).await;
        // Read once it is ready (or given up): nothing is left behind.
        drop(files);
        match ready {
            Ok(Ok(Some(message))) if message["ready"] == json!(true) => {}
            Ok(Err(e)) => return Err(e),
            Ok(_) => return Err(io::Error::other("it ended before it was ready")),
            Err(_) => return Err(io::Error::other("not ready in time")),
        }
        let listening = server.clone();
        tokio::spawn(async move {
            listening.dispatch().await;
            // Gone: its children died with it (their exits are reported as kills).
            listening.gone.cancel();
            listening.pending.lock().expect("pending lock").clear();
            let _ = child.kill().await;
        });
        Ok(server)
    }

    pub fn is_gone(&self) -> bool {
        self.gone.is_cancelled()
    }

    /// Resolves once the server is gone.
    pub async fn gone(&self) {
        self.gone.cancelled().await
    }

    /// Kills a server that stopped answering: it is replaced, and its children die with it.
    pub fn kill(&self) {
        if let Some(pid) = self.pid {
            // SAFETY: kill(2) on the server's pid, which this worker has not reaped yet (its
            // task waits for it only once the socket closed).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }

    /// Forks a child for a job in its directory, confined and waiting for the job's
    /// environment (see [`Forked::start`]).
    pub async fn fork_job(
        &self,
        confinement: &Confinement,
        cpu_seconds: u64,
    ) -> io::Result<Forked> {
        let (out_read, out_write) = std::io::pipe()?;
        let (err_read, err_write) = std::io::pipe()?;
        let (job_read, job_write) = std::io::pipe()?;
        let forked = self
            .fork(
                confinement,
                cpu_seconds,
                false,
                &[out_write.as_fd(), err_write.as_fd(), job_read.as_fd()],
            )
            .await;
        // The server holds its own copies now: the job's output ends when the job does.
        drop((out_write, err_write, job_read));
        let (pid, exit) = forked?;
        Ok(Forked {
            pid,
            exit,
            stdout: reader(out_read)?,
            stderr: reader(err_read)?,
            job: tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(job_write))?,
        })
    }

    /// Forks a dedicated process for the script in the job's directory (see
    /// `forkserver.py`).
    pub async fn spawn_dedicated(
        &self,
        confinement: &Confinement,
        cpu_seconds: u64,
    ) -> io::Result<DedicatedProcess> {
        let (ours, theirs) = seqpacket_pair()?;
        let forked = self
            .fork(confinement, cpu_seconds, true, &[theirs.as_fd()])
            .await;
        drop(theirs);
        let (pid, exited) = forked?;
        Ok(DedicatedProcess {
            control: Arc::new(Seqpacket::new(ours)?),
            pid,
            exited,
        })
    }

    /// Asks for a child; its pid, and its wait status once it exited.
    async fn fork(
        &self,
        confinement: &Confinement,
        cpu_seconds: u64,
        dedicated: bool,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(u32, oneshot::Receiver<i32>)> {
        if self.is_gone() {
            return Err(io::Error::other("the fork server is gone"));
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let limits = confinement.limits;
        let request = json!({
            "id": id,
            "dir": confinement.dir.path(),
            "dedicated": dedicated,
            "uid": confinement.user.map(|u| u.uid),
            // To empty the user's keyrings (see `users::forget_keys`): Python has no keyctl.
            "keyctl": libc::SYS_keyctl,
            "cgroups": confinement.cgroup.as_ref().map(|c| {
                c.procs_files().map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>()
            }).unwrap_or_default(),
            "limits": {
                "memory": limits.memory,
                "processes": limits.processes,
                "open_files": limits.open_files,
                "file_size": limits.file_size,
                "cpu_seconds": cpu_seconds,
            },
        });
        let (pid_tx, pid_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(
            id,
            Pending {
                pid: Some(pid_tx),
                exit: Some(exit_tx),
            },
        );
        if let Err(e) = self.socket.send(request.to_string().as_bytes(), fds).await {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(e);
        }
        match pid_rx.await {
            Ok(Ok(pid)) => Ok((pid, exit_rx)),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("the fork server is gone")),
        }
    }

    /// Routes the server's answers to the jobs waiting for them, until it is gone.
    async fn dispatch(&self) {
        loop {
            let message = match self.socket.receive().await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => return,
            };
            let Some(id) = message["id"].as_u64() else {
                continue;
            };
            let mut pending = self.pending.lock().expect("pending lock");
            let Some(entry) = pending.get_mut(&id) else {
                continue;
            };
            if let Some(pid) = message["pid"].as_u64() {
                if let Some(tx) = entry.pid.take() {
                    let _ = tx.send(Ok(pid as u32));
                }
            } else if let Some(error) = message["error"].as_str() {
                if let Some(tx) = entry.pid.take() {
                    let _ = tx.send(Err(error.to_owned()));
                }
                pending.remove(&id);
            } else if let Some(status) = message["status"].as_i64() {
                if let Some(tx) = entry.exit.take() {
                    let _ = tx.send(status as i32);
                }
                pending.remove(&id);
            }
        }
    }
}

/// One end of a `SOCK_SEQPACKET` socket: JSON messages, with descriptors attached.
pub struct Seqpacket(AsyncFd<OwnedFd>);

impl Seqpacket {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: an OwnedFd is a valid descriptor that stays open as long as it is owned,
        // here by the AsyncFd.
        Ok(Self(
            unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?,
        ))
    }

    /// One message; `None` once the other end is gone.
    pub async fn receive(&self) -> io::Result<Option<Value>> {
        let mut buf = vec![0u8; 4096];
        loop {
            let mut guard = self.0.readable().await?;
            let fd = self.0.get_ref().as_raw_fd();
            // SAFETY: recv into a buffer of its length, on the descriptor this socket owns.
            let read = guard.try_io(|_| {
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => {
                    return serde_json::from_slice(&buf[..n])
                        .map(Some)
                        .map_err(io::Error::other)
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Sends one message with `fds` attached.
    pub async fn send(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        loop {
            let mut guard = self.0.writable().await?;
            let fd = self.0.get_ref().as_raw_fd();
            match guard.try_io(|_| send_with_fds(fd, payload, fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A child forked for a job, confined (as its job's user, in its directory) and waiting for
/// the job on its job pipe; dropped, it ends without running anything.
pub struct Forked {
    pid: u32,
    /// Its wait status from the server, once it exited (or dropped, the server gone).
    exit: oneshot::Receiver<i32>,
    stdout: Pin<Box<dyn AsyncRead + Send>>,
    stderr: Pin<Box<dyn AsyncRead + Send>>,
    job: tokio::net::unix::pipe::Sender,
}

impl Forked {
    pub fn is_alive(&mut self) -> bool {
        matches!(
            self.exit.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }

    /// Hands the child its job's environment and CPU limit (no more than it has; its files are
    /// in the directory by now): it runs the wrapper. An error means the child is gone, or did
    /// not say it has the job: the job is to start otherwise.
    pub async fn start(
        mut self,
        env: &[(String, String)],
        cpu_seconds: u64,
    ) -> io::Result<Started> {
        if !self.is_alive() {
            return Err(io::Error::other("it is gone"));
        }
        let job = super::job_message(env, cpu_seconds);
        let (mut pipe, stdout) = (self.job, &mut self.stdout);
        let handed = tokio::time::timeout(STARTED_WITHIN, async move {
            pipe.write_all(job.as_bytes()).await?;
            drop(pipe);
            expect(stdout, STARTED, STARTED_WITHIN).await
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::other("it did not take the job in time")));
        if let Err(e) = handed {
            // Stopped, or stuck: it holds the job's environment, and goes now (its user's
            // processes are killed too, where it has a user of its own).
            if self.exit.try_recv() == Err(oneshot::error::TryRecvError::Empty) {
                // SAFETY: kill(2) on the server's child, whose exit the server has not
                // reported: it is not reaped, so its pid is still its own.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            }
            return Err(e);
        }
        let exit_rx = self.exit;
        let exit = async move {
            exit_rx
                .await
                .map(ExitStatus::from_raw)
                .map_err(|_| io::Error::other("the fork server is gone"))
        };
        Ok(Started {
            pid: Some(self.pid),
            stdout: Some(self.stdout),
            stderr: Some(self.stderr),
            exit: Box::pin(exit),
            outlives_job: false,
            // `finish` in forkserver.py.
            marks_exit: true,
        })
    }
}

/// A dedicated process forked by the server: its control socket, and its end.
pub struct DedicatedProcess {
    pub control: Arc<Seqpacket>,
    pub pid: u32,
    /// Its wait status from the server, once it exited (or dropped, the server gone).
    exited: oneshot::Receiver<i32>,
}

impl DedicatedProcess {
    pub fn is_alive(&mut self) -> bool {
        matches!(
            self.exited.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

/// The reading end of a job's output pipe, for the worker's runtime.
pub fn reader(pipe: std::io::PipeReader) -> io::Result<Pin<Box<dyn AsyncRead + Send>>> {
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(pipe))?;
    Ok(Box::pin(receiver))
}

/// A connected pair of non-blocking, close-on-exec `SOCK_SEQPACKET` sockets: messages keep
/// their bounds, and descriptors travel with them.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair fills the two descriptors on success; each is owned once.
    unsafe {
        if libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let ours = OwnedFd::from_raw_fd(fds[0]);
        let theirs = OwnedFd::from_raw_fd(fds[1]);
        if libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((ours, theirs))
    }
}

fn send_with_fds(socket: RawFd, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let fds: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let fds = fds.as_slice();
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr points at `iov` and `control`, which outlive the sendmsg call; the
    // control message is laid out by the CMSG macros within `control`'s length.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        if libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
