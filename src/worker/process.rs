//! One job's child process: its own process group, a cleared environment, a wall-clock limit,
//! capped output, a kill of the whole group on timeout or cancel, and death with the worker.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::sandbox::{self, Confinement};
use super::spawn::{JobChild, Spawn, Stdin};

/// Everything needed to start the process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Output kept so far, shared with the code that publishes progress.
#[derive(Debug, Default)]
pub struct LogBuffer {
    text: String,
    limit: usize,
    truncated: bool,
}

impl LogBuffer {
    pub fn new(limit: usize) -> Self {
        Self {
            text: String::new(),
            limit,
            truncated: false,
        }
    }

    fn push(&mut self, chunk: &str) {
        if self.truncated {
            return;
        }
        let room = self.limit.saturating_sub(self.text.len());
        if chunk.len() <= room {
            self.text.push_str(chunk);
        } else {
            let mut cut = room;
            while !chunk.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&chunk[..cut]);
            self.text
                .push_str(&format!("\n[logs truncated at {} bytes]\n", self.limit));
            self.truncated = true;
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Why the process is no longer running.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    TimedOut(Duration),
    Canceled,
    /// It printed more than this many bytes and was killed.
    OutputTooLarge(u64),
}

/// A line longer than this is handed over in pieces: output without a newline is never held
/// (or scanned) whole.
const MAX_LINE: usize = 64 * 1024;

/// Live output waiting to be published, at most; a script printing faster than it is published
/// waits for it.
pub const LIVE_OUTPUT_QUEUE: usize = 256;

pub type SharedLogs = Arc<Mutex<LogBuffer>>;

/// What a script printed: ordinary output, or a chunk of a streamed result (a line the
/// wrappers mark with [`STREAM_MARKER`] and a JSON string).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Log(String),
    Stream(String),
}

pub const STREAM_MARKER: &str = "\u{1e}MILLRACE_STREAM";

/// What a wrapper that [`Started::marks_exit`] prints last, with its exit code, on stdout and
/// on stderr, as its process begins to exit: the job's output is then complete on both pipes
/// (each keeps its order) and its result written, so its end need not wait for the runtime's
/// teardown and the kernel's (deno's take ~10 ms after its last line). Whatever of the job
/// still runs is killed then, beside the answer, as after any job that ended by itself.
pub const EXIT_MARKER: &str = "\u{1e}MILLRACE_EXIT ";

/// How a job's process is run: its time, where its output goes, how it is confined.
pub struct Run<'a> {
    pub timeout: Duration,
    pub cancel: &'a CancellationToken,
    pub logs: &'a SharedLogs,
    /// Output is also sent here as it comes.
    pub lines: Option<mpsc::Sender<Output>>,
    /// Past this many bytes of output the job is killed.
    pub max_output: u64,
    pub confinement: Confinement,
}

/// A job's process once started, cold or warm: what it prints, and its end.
pub struct Started {
    /// Its process group (the job's process leads one of its own).
    pub pid: Option<u32>,
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Resolves when the process has exited (and been reaped); dropping it before kills a
    /// process the worker started itself.
    pub exit: BoxFuture<'static, std::io::Result<ExitStatus>>,
    /// The process lives on after the job (a dedicated process): only a job stopped by the
    /// worker (timeout, cancel, output cap) has its user's processes killed.
    pub outlives_job: bool,
    /// Its wrapper prints the [`EXIT_MARKER`]; in others' output it is just text.
    pub marks_exit: bool,
}

/// Runs the process until it exits, its timeout passes, its cancel fires or it prints more
/// than its output allows. Output lines are appended to the logs and sent on. Nothing is
/// started when the cancel fired already (the attempt lost its job while preparing it).
#[cfg(test)]
pub async fn run(spec: &ProcessSpec, how: Run<'_>) -> std::io::Result<Ended> {
    if how.cancel.is_cancelled() {
        return Ok(Ended::Canceled);
    }
    let mut started = spawn(spec, &how.confinement, cpu_seconds(how.timeout))?;
    // As a job of a wrapper that prints it.
    started.marks_exit = true;
    Ok(supervise(started, how).await)
}

/// The CPU-time limit of a job's process: a backstop only, the wall-clock timeout ends the job
/// first.
pub fn cpu_seconds(timeout: Duration) -> u64 {
    timeout.as_secs().saturating_add(60)
}

/// Starts a job's process the cold way: a new interpreter, confined between fork and exec.
///
/// Spawn from a task of the worker's runtime, never from a blocking-pool thread: the job dies
/// with the thread that spawned it (see below), and only the runtime's worker threads live as
/// long as the worker.
pub fn spawn(
    spec: &ProcessSpec,
    confinement: &Confinement,
    cpu_seconds: u64,
) -> std::io::Result<Started> {
    let child = Spawn {
        spec,
        confinement,
        cpu_seconds,
        stdin: Stdin::Null,
        nice: None,
    }
    .start()?;
    Ok(started_child(child))
}

/// A spawned child as a [`Started`] job process (its stdin, if piped, is left to the caller).
pub fn started_child(mut child: JobChild) -> Started {
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>);
    Started {
        pid: Some(child.id()),
        stdout,
        stderr,
        exit: Box::pin(async move { child.wait().await }),
        outlives_job: false,
        marks_exit: false,
    }
}

/// Follows a started job's process to its end (see [`run`]), then kills whatever of the job is
/// left.
pub async fn supervise(started: Started, how: Run<'_>) -> Ended {
    let Run {
        timeout,
        cancel,
        logs,
        lines,
        max_output,
        confinement,
    } = how;
    let Started {
        pid,
        stdout,
        stderr,
        mut exit,
        outlives_job,
        marks_exit,
    } = started;
    let budget = OutputBudget {
        left: Arc::new(AtomicU64::new(max_output)),
        exceeded: CancellationToken::new(),
    };
    let (out_marked, err_marked) = (oneshot::channel(), oneshot::channel());
    let (out_marked_tx, err_marked_tx) = (
        marks_exit.then_some(out_marked.0),
        marks_exit.then_some(err_marked.0),
    );
    let marked = async {
        match (out_marked.1.await, err_marked.1.await) {
            (Ok(out), Ok(err)) if out == err => out,
            // Not both, or not the same: the process's own exit tells.
            _ => std::future::pending().await,
        }
    };
    let stdout = stdout.map(|s| {
        read_into(
            s,
            logs.clone(),
            lines.clone(),
            budget.clone(),
            out_marked_tx,
        )
    });
    let stderr = stderr.map(|s| read_into(s, logs.clone(), lines, budget.clone(), err_marked_tx));

    let mut marked_exit = false;
    let ended = tokio::select! {
        // In this order when several are ready: a job that printed too much often dies of
        // the closed pipe (SIGPIPE) at once, and is still one that printed too much.
        biased;
        _ = budget.exceeded.cancelled() => Ended::OutputTooLarge(max_output),
        status = &mut exit => match status {
            Ok(status) => Ended::Exited(status),
            // Its exit could not be learned (a warm runtime gone with it): as if killed.
            Err(_) => Ended::Exited(std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL)),
        },
        code = marked => {
            marked_exit = true;
            Ended::Exited(std::os::unix::process::ExitStatusExt::from_raw((code & 0xFF) << 8))
        }
        _ = cancel.cancelled() => Ended::Canceled,
        _ = tokio::time::sleep(timeout) => Ended::TimedOut(timeout),
    };
    if marked_exit {
        // Its output is in, and it is on its way out: the readers stop here (the process
        // holds the pipes until its teardown ends), and the kill of what is left of the job
        // and the reaping go on beside the job's answer, as after any job that ended by
        // itself (the directory's removal awaits the kill).
        if confinement.user.is_none() {
            kill_group(pid);
        }
        for reader in [&stdout, &stderr].into_iter().flatten() {
            reader.abort();
        }
        confinement.kill_beside(exit);
        return ended;
    }
    // Readers end once every holder of the pipes is gone.
    let mut readers = futures::future::join_all([stdout, stderr].into_iter().flatten());
    let exited = matches!(ended, Ended::Exited(_));
    // The whole job goes, also children the script left behind when it exited: with a user of
    // its own, every process of that user (those that left the group with `setsid` too; the
    // worker may lack `CAP_KILL`, so it signals as that user); else its process group.
    let output_closed = match confinement.user {
        _ if outlives_job && exited => false,
        // Ended by itself with its output closed at once: the kill goes on beside the job's
        // answer rather than before it (whatever still runs dies as it would have, a moment
        // later; the directory's removal awaits it and kills once more before the user serves
        // another job).
        Some(_)
            if exited
                && tokio::time::timeout(OUTPUT_CLOSES, &mut readers)
                    .await
                    .is_ok() =>
        {
            confinement.kill_beside(std::future::ready(()));
            true
        }
        Some(user) => {
            // One that fails is tried again, and the user retired, when the job's user is freed.
            sandbox::kill_user(user).await;
            false
        }
        None => {
            kill_group(pid);
            false
        }
    };
    if !exited {
        let _ = exit.await;
    }
    if !output_closed {
        // Bounded: a reader of a process that outlives the job ends with its job's output.
        let _ = tokio::time::timeout(Duration::from_secs(2), readers).await;
    }
    ended
}

/// How long an exited job's output may take to close for its user's processes to be killed
/// beside its answer; one whose output stays open (a child holding it) is killed first.
const OUTPUT_CLOSES: Duration = Duration::from_millis(2);

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

/// What a job may still print, shared by its stdout and stderr readers.
#[derive(Clone)]
struct OutputBudget {
    left: Arc<AtomicU64>,
    exceeded: CancellationToken,
}

impl OutputBudget {
    /// Takes `n` bytes; false (and the job is to be killed) once the budget is spent.
    fn take(&self, n: usize) -> bool {
        let n = n as u64;
        let before = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left.saturating_sub(n))
            })
            .unwrap_or(0);
        if before < n {
            self.exceeded.cancel();
            return false;
        }
        true
    }
}

/// Reads a job's output into its logs (and `lines`) until the pipe closes; with `exit_marked`,
/// the code of the first [`EXIT_MARKER`] goes there.
fn read_into(
    mut stream: Pin<Box<dyn AsyncRead + Send>>,
    logs: SharedLogs,
    lines: Option<mpsc::Sender<Output>>,
    budget: OutputBudget,
    mut exit_marked: Option<oneshot::Sender<i32>>,
) -> tokio::task::JoinHandle<()> {
    let marks = exit_marked.is_some();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        let mut pending = Vec::new();
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !budget.take(n) {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            // Hand over whole lines only, so a multi-byte character is never split; a line
            // that grows past MAX_LINE goes in pieces, cut between characters.
            let cut = match pending.iter().rposition(|b| *b == b'\n') {
                Some(last_newline) => last_newline + 1,
                None if pending.len() >= MAX_LINE => char_boundary(&pending),
                None => continue,
            };
            let rest = pending.split_off(cut);
            let chunk = text_of(&pending);
            pending = rest;
            if let Some(code) = deliver(&logs, &lines, chunk, marks).await {
                if let Some(marked) = exit_marked.take() {
                    let _ = marked.send(code);
                }
            }
        }
        if !pending.is_empty() {
            deliver(&logs, &lines, text_of(&pending), marks).await;
        }
    })
}

/// Output as text: bytes that are not UTF-8, and NUL characters (which PostgreSQL cannot store
/// in text), become U+FFFD; the rest is kept as printed.
fn text_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

/// Where to cut `bytes` without splitting a UTF-8 character (bytes that are not UTF-8 at all
/// are cut anywhere: they are replaced anyway).
fn char_boundary(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

/// Keeps a chunk of whole lines as logs and streamed chunks. With `marks`, an
/// [`EXIT_MARKER`] (which may end a line the job left unfinished) is left out and the first
/// one's exit code returned.
async fn deliver(
    logs: &SharedLogs,
    lines: &Option<mpsc::Sender<Output>>,
    chunk: String,
    marks: bool,
) -> Option<i32> {
    let mut plain = String::new();
    let mut streamed = Vec::new();
    let mut exit_code = None;
    for line in chunk.split_inclusive('\n') {
        if let Some((before, code)) = line.split_once(EXIT_MARKER).filter(|_| marks) {
            plain.push_str(before);
            exit_code = exit_code.or(code.trim_end().parse().ok());
            continue;
        }
        let Some(encoded) = line.strip_prefix(STREAM_MARKER) else {
            plain.push_str(line);
            continue;
        };
        if let Ok(text) = serde_json::from_str::<String>(encoded.trim_end()) {
            streamed.push(text);
        }
    }
    if !plain.is_empty() {
        logs.lock().expect("log lock").push(&plain);
    }
    if let Some(lines) = lines {
        for text in streamed {
            let _ = lines.send(Output::Stream(text)).await;
        }
        if !plain.is_empty() {
            let _ = lines.send(Output::Log(plain)).await;
        }
    }
    exit_code
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn how<'a>(
        dir: &Path,
        timeout: Duration,
        cancel: &'a CancellationToken,
        logs: &'a SharedLogs,
        lines: Option<mpsc::Sender<Output>>,
        max_output: u64,
    ) -> Run<'a> {
        Run {
            timeout,
            cancel,
            logs,
            lines,
            max_output,
            confinement: Confinement::unconfined_for_tests(dir),
        }
    }

    fn bash(script: &str) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/bash".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        }
    }

    #[tokio::test]
    async fn output_is_captured_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(Mutex::new(LogBuffer::new(16)));
        let ended = run(
            &bash("echo hello; echo world-and-more-text >&2; exit 3"),
            how(
                dir.path(),
                Duration::from_secs(5),
                &CancellationToken::new(),
                &logs,
                None,
                u64::MAX,
            ),
        )
        .await
        .unwrap();
        assert!(matches!(ended, Ended::Exited(s) if s.code() == Some(3)));
        let text = logs.lock().unwrap().text().to_owned();
        assert!(text.starts_with("hello\n"), "{text}");
        assert!(text.contains("[logs truncated at 16 bytes]"), "{text}");
    }

    /// Runs a short bash `script` to its end; returns its logs and what went out live.
    async fn logs_and_live_output(script: &str) -> (String, Vec<Output>) {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(Mutex::new(LogBuffer::new(1024)));
        let (tx, mut rx) = mpsc::channel(LIVE_OUTPUT_QUEUE);
        run(
            &bash(script),
            how(
                dir.path(),
                Duration::from_secs(5),
                &CancellationToken::new(),
                &logs,
                Some(tx),
                u64::MAX,
            ),
        )
        .await
        .unwrap();
        let mut outputs = Vec::new();
        while let Ok(output) = rx.try_recv() {
            outputs.push(output);
        }
        let text = logs.lock().unwrap().text().to_owned();
        (text, outputs)
    }

    #[tokio::test]
    async fn streamed_chunks_are_kept_out_of_the_logs() {
        let script = "echo before; printf '\\036MILLRACE_STREAM\"chunk \\\\u00e9\"\\n'; echo after";
        let (logs, outputs) = logs_and_live_output(script).await;
        assert_eq!(logs, "before\nafter\n");
        assert!(
            outputs.contains(&Output::Stream("chunk \u{e9}".into())),
            "{outputs:?}"
        );
    }

    #[tokio::test]
    async fn the_exit_marker_on_both_pipes_ends_the_job_before_its_process_exits() {
        /// Runs a bash `script` in `dir`: how it ended, and its logs.
        async fn ended_and_logs(dir: &Path, script: &str) -> (Ended, String) {
            let logs = Arc::new(Mutex::new(LogBuffer::new(1024)));
            let cancel = CancellationToken::new();
            let how = how(dir, Duration::from_secs(60), &cancel, &logs, None, u64::MAX);
            let ended = run(&bash(script), how).await.unwrap();
            let text = logs.lock().unwrap().text().to_owned();
            (ended, text)
        }
        let dir = tempfile::tempdir().unwrap();
        let survived = dir.path().join("survived");
        let started = std::time::Instant::now();
        let marked = format!(
            "printf 'out\\nunfinished'; echo err >&2; \
             printf '\\036MILLRACE_EXIT 3\\n'; printf '\\036MILLRACE_EXIT 3\\n' >&2; \
             sleep 1; touch {}; sleep 30",
            survived.display()
        );
        let (ended, text) = ended_and_logs(dir.path(), &marked).await;
        assert!(
            matches!(ended, Ended::Exited(s) if s.code() == Some(3)),
            "{ended:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            ["out\n", "unfinished", "err\n"]
                .iter()
                .all(|t| text.contains(t)),
            "{text:?}"
        );
        assert!(!text.contains("MILLRACE_EXIT"), "{text:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!survived.exists(), "the job ran on after its end");

        // On one pipe only, or two different codes: the process's exit tells, and what it
        // prints after the marker is kept.
        for half in [
            "printf '\\036MILLRACE_EXIT 0\\n'; sleep 0.3; echo after; exit 4",
            "printf '\\036MILLRACE_EXIT 0\\n'; printf '\\036MILLRACE_EXIT 1\\n' >&2; \
             sleep 0.3; echo after; exit 4",
        ] {
            let (ended, text) = ended_and_logs(dir.path(), half).await;
            assert!(
                matches!(ended, Ended::Exited(s) if s.code() == Some(4)),
                "{ended:?}"
            );
            assert_eq!(text, "after\n");
        }
    }

    #[tokio::test]
    async fn endless_output_is_cut_into_lines_and_stopped_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(Mutex::new(LogBuffer::new(1024)));
        let started = std::time::Instant::now();
        // One "line" of 3 GB: never held whole, and the job is stopped at 8 MiB.
        let ended = run(
            &bash("head -c 3000000000 /dev/zero | tr '\\0' a"),
            how(
                dir.path(),
                Duration::from_secs(60),
                &CancellationToken::new(),
                &logs,
                None,
                8 * 1024 * 1024,
            ),
        )
        .await
        .unwrap();
        assert!(
            matches!(ended, Ended::OutputTooLarge(n) if n == 8 * 1024 * 1024),
            "{ended:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(logs
            .lock()
            .unwrap()
            .text()
            .contains("[logs truncated at 1024 bytes]"));
        assert_eq!(char_boundary("ab\u{e9}".as_bytes()), 4);
        assert_eq!(char_boundary(&"ab\u{e9}".as_bytes()[..3]), 2);
    }

    #[tokio::test]
    async fn nul_characters_are_replaced_and_the_rest_kept() {
        let (logs, outputs) = logs_and_live_output("printf 'a\\0b\\n\\377c\\n'").await;
        assert_eq!(logs, "a\u{FFFD}b\n\u{FFFD}c\n");
        let live: String = outputs
            .into_iter()
            .map_while(|output| match output {
                Output::Log(chunk) => Some(chunk),
                _ => None,
            })
            .collect();
        assert_eq!(live, "a\u{FFFD}b\n\u{FFFD}c\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(Mutex::new(LogBuffer::new(1024)));
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let ended = run(
            &bash(&script),
            how(
                dir.path(),
                Duration::from_millis(300),
                &CancellationToken::new(),
                &logs,
                None,
                u64::MAX,
            ),
        )
        .await
        .unwrap();
        assert!(matches!(ended, Ended::TimedOut(_)));
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a grandchild outlived the job");
    }
}
