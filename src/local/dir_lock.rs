//! One `millrace dev` per directory. A second one on the same data would take the first one's
//! live servers for what a crash left and stop them; so each holds an exclusive `flock` on a
//! file in its directories for its whole life, released by the kernel when it dies, however.
//! Leftovers are cleared only under it.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

const LOCK_FILE: &str = "dev.lock";

/// Held while it lives (the file opened close-on-exec: no server inherits it).
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` without waiting; fails naming the holder when another process
    /// has it. The file keeps the holder's pid.
    pub fn take(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = super::open_plain(
            &path,
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
        )?;
        // SAFETY: flock(2) on a descriptor this File owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            anyhow::ensure!(
                error.raw_os_error() != Some(libc::EWOULDBLOCK),
                "another millrace dev{} is running on {}: stop it, or give this one another \
                 MILLRACE_DATA_DIR",
                holder(&path).map_or(String::new(), |pid| format!(" (pid {pid})")),
                dir.display()
            );
            let unsupported = [libc::ENOLCK, libc::EOPNOTSUPP, libc::ENOSYS];
            anyhow::ensure!(
                !error
                    .raw_os_error()
                    .is_some_and(|e| unsupported.contains(&e)),
                "{} is on a file system without locks: give dev a data directory on a local \
                 disk (MILLRACE_DATA_DIR)",
                dir.display()
            );
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}

/// The pid the lock's holder wrote (it may not have yet: it writes right after taking it).
fn holder(path: &Path) -> Option<u32> {
    for _ in 0..20 {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}
