//! Dedicated processes (a script version's `dedicated_worker`): a python3 process forked from
//! its script's fork server as a job user, which imports the script with its first job and then
//! runs job after job of that version, one at a time — module state persists between them, as
//! in Windmill's dedicated workers. Idle ones wait per script version, with their directory and
//! user; each job's output goes to pipes of its own.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Mutex;

use super::forkserver::{reader, DedicatedProcess};
use crate::worker::process::Started;
use crate::worker::runtimes::{ERROR_FILE, RESULT_FILE};
use crate::worker::sandbox::JobDir;

/// A script version of a workspace.
pub type Key = (String, String);

/// A dedicated process lent to one job; its directory travels with the job.
pub struct Lent {
    process: DedicatedProcess,
    key: Key,
}

impl Lent {
    pub fn new(process: DedicatedProcess, key: Key) -> Self {
        Self { process, key }
    }

    /// Sends the job (its arguments are in `dir` by now) with its environment and output pipes.
    pub async fn start(
        &self,
        dir: &JobDir,
        env: &[(String, String)],
        cpu_seconds: u64,
    ) -> io::Result<Started> {
        dir.as_owner(|path| {
            for name in [RESULT_FILE, ERROR_FILE] {
                match std::fs::remove_file(path.join(name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        let job = super::job_message(env, cpu_seconds);
        let (out_read, out_write) = std::io::pipe()?;
        let (err_read, err_write) = std::io::pipe()?;
        let control = self.process.control.clone();
        control
            .send(job.as_bytes(), &[out_write.as_fd(), err_write.as_fd()])
            .await?;
        drop((out_write, err_write));
        let exit = async move {
            match control.receive().await {
                Ok(Some(done)) => done["status"]
                    .as_i64()
                    .map(|status| ExitStatus::from_raw(status as i32))
                    .ok_or_else(|| io::Error::other("no status")),
                _ => Err(io::Error::other("the dedicated process is gone")),
            }
        };
        Ok(Started {
            pid: Some(self.process.pid),
            stdout: Some(reader(out_read)?),
            stderr: Some(reader(err_read)?),
            exit: Box::pin(exit),
            outlives_job: true,
            marks_exit: false,
        })
    }
}

/// The idle dedicated processes of one worker: at most `max` (where no user pool bounds
/// them, jobs running as the worker's user).
pub struct Idle {
    by_version: Mutex<HashMap<Key, Vec<(Lent, JobDir)>>>,
    max: usize,
}

impl Idle {
    pub fn new(max: usize) -> Self {
        Self {
            by_version: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// An idle process of `key` that still lives.
    pub fn take(&self, key: &Key) -> Option<(Lent, JobDir)> {
        loop {
            let popped = self
                .by_version
                .lock()
                .expect("idle lock")
                .get_mut(key)?
                .pop();
            let (mut lent, dir) = popped?;
            if lent.process.is_alive() {
                return Some((lent, dir));
            }
            tokio::spawn(dir.remove());
        }
    }

    pub fn put(&self, lent: Lent, dir: JobDir) {
        let count = || -> usize {
            let idle = self.by_version.lock().expect("idle lock");
            idle.values().map(Vec::len).sum()
        };
        if count() >= self.max {
            self.evict_other_than(&lent.key);
        }
        if count() >= self.max {
            drop(lent);
            tokio::spawn(dir.remove());
            return;
        }
        self.by_version
            .lock()
            .expect("idle lock")
            .entry(lent.key.clone())
            .or_default()
            .push((lent, dir));
    }

    /// Ends one idle process of another version than `key`, so that its user serves the
    /// next dedicated process: no user is kept forever by a version no longer run.
    pub fn evict_other_than(&self, key: &Key) {
        let mut idle = self.by_version.lock().expect("idle lock");
        let victim = idle
            .iter_mut()
            .find(|(k, v)| *k != key && !v.is_empty())
            .and_then(|(_, v)| v.pop());
        idle.retain(|_, v| !v.is_empty());
        drop(idle);
        if let Some((lent, dir)) = victim {
            drop(lent);
            tokio::spawn(dir.remove());
        }
    }
}
