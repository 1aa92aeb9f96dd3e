//! The reaper: a small process each worker with job users starts once, which kills every
//! process of those users when the worker is gone, however it goes (SIGKILL, the OOM killer).
//! `PR_SET_PDEATHSIG` cannot do this alone: the kernel sends the signal with the dying worker's
//! rights, and a worker without `CAP_KILL` (as the Helm chart runs it) may not signal another
//! user's process, so a job would outlive its worker and overlap the run that takes it over.
//!
//! The reaper is this binary again (a hidden subcommand, started before the worker takes any
//! job), in a process group of its own so that a terminal's Ctrl-C does not end it first. It
//! reads a pipe whose writing end only the worker holds (close-on-exec: no job inherits it), so
//! the read ends exactly when the worker is gone. It then kills the processes of each user no
//! other worker has claimed since (one that did killed them when it claimed the user), and
//! exits. It keeps only `CAP_SETUID` (to take each user in turn) of the worker's rights, and is started
//! before the worker joins the job users' groups.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::users::{self, JobUid};

/// How long the reaper waits for the claims of a worker that is gone to be released.
const CLAIMS_RELEASED: Duration = Duration::from_secs(5);

/// The hidden subcommand that runs the reaper.
pub const SUBCOMMAND: &str = "reap-job-users";

/// Starts the reaper of `users`, whose claims are under `locks`, and waits until it is ready
/// (its rights dropped). The worker holds the returned pipe for as long as it lives.
pub fn start(locks: &Path, users: &[JobUid]) -> std::io::Result<std::io::PipeWriter> {
    let (alive, watched) = std::io::pipe()?;
    // `/proc/self/exe`, not the path: it still runs if the file was replaced since (upgrades).
    let mut reaper = std::process::Command::new("/proc/self/exe")
        .arg(SUBCOMMAND)
        .arg(locks)
        .args(users.iter().map(JobUid::to_string))
        .env_clear()
        .stdin(alive)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()?;
    let mut ready = [0u8; 1];
    let said = reaper.stdout.take().map(|mut out| out.read(&mut ready));
    if !matches!(said, Some(Ok(1))) {
        let status = reaper.wait()?;
        return Err(std::io::Error::other(format!(
            "the reaper ended as it started ({status})"
        )));
    }
    Ok(watched)
}

/// The reaper itself: waits until its standard input ends (the worker is gone), then kills
/// every process of each of `users` as soon as the worker's claim on it is released.
pub fn run(locks: &Path, users: &[JobUid]) -> std::io::Result<()> {
    keep_only_setuid()?;
    // Ready: the worker waits for this before it takes any job.
    std::io::stdout().write_all(b"+")?;
    std::io::stdout().flush()?;
    let mut stdin = std::io::stdin().lock();
    let mut sink = [0u8; 64];
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // The worker's claims go with it, but not necessarily before the pipe's end: wait for
    // them a little. A claim still held then is another worker's, which killed what it found
    // when it claimed the user.
    let mut left = users.to_vec();
    let deadline = Instant::now() + CLAIMS_RELEASED;
    while !left.is_empty() && Instant::now() < deadline {
        let mut still_held = Vec::new();
        for user in left {
            // Held while killing, so that no worker claims the user or its partner meanwhile.
            if users::lock_pair(locks, user)?.is_some() {
                users::kill_all_now(user);
            } else {
                still_held.push(user);
            }
        }
        left = still_held;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Drops every capability but `CAP_SETUID`, which taking each job user needs: the reaper
/// outlives the worker and acts on what jobs left, so it holds no more than that.
fn keep_only_setuid() -> std::io::Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    let only: CapsHashSet = caps::read(None, CapSet::Permitted)
        .map_err(std::io::Error::other)?
        .into_iter()
        .filter(|c| *c == Capability::CAP_SETUID)
        .collect();
    // The bounding set needs CAP_SETPCAP to shrink; the permitted set alone is what counts
    // for this process, which starts nothing.
    let _ = caps::clear(None, CapSet::Ambient);
    caps::set(None, CapSet::Effective, &only).map_err(std::io::Error::other)?;
    caps::set(None, CapSet::Permitted, &only).map_err(std::io::Error::other)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(std::io::Error::other)
}
