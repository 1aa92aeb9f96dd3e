//! NATS and PostgreSQL servers started on this machine, for `millrace dev` and the tests.
//! Each owns its process: dropping the handle stops the server.

mod dir_lock;
mod nats;
mod postgres;

pub use dir_lock::DirLock;
pub use nats::LocalNats;
pub use postgres::{Durability, LocalPostgres};

use std::net::TcpListener;

/// Writes a secret to `file`, readable and writable by this process's user alone (mode 0600
/// from its creation: never readable by others, not even for a moment).
pub(crate) fn write_private(file: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = open_plain(
        file,
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o600),
    )?;
    out.set_len(0)?;
    out.write_all(contents.as_bytes())?;
    out.sync_all()?;
    Ok(())
}

/// Opens `path` without following a link at its end, and only if it is a plain file with no
/// other name (truncate it after, never with `options`: that would happen before the check).
/// `dev` as root writes into directories PostgreSQL's user owns: a link (or a FIFO) planted
/// there would otherwise make it write, truncate or read what the link names.
pub(crate) fn open_plain(
    path: &std::path::Path,
    options: &mut std::fs::OpenOptions,
) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("{} (a link there is refused)", path.display()))?;
    let meta = file.metadata()?;
    anyhow::ensure!(
        meta.file_type().is_file() && meta.nlink() == 1,
        "{} is not a plain file of its own (another name, or not a file): remove it",
        path.display()
    );
    Ok(file)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until process `pid` itself listens on loopback port `port`. A port chosen free may be
/// taken by another program before `pid` binds it (which then fails): that one would accept
/// connections all the same.
pub async fn wait_until_listening(pid: u32, port: u16, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if listens(pid, port) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// Whether a socket of process `pid` listens on 127.0.0.1:`port` (`/proc/net/tcp`: its local
/// address in hex, state `0A`, and the socket's inode among the process's descriptors).
fn listens(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A");
            let inode = fields.get(9).filter(|_| listening)?;
            Some(format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_counts_only_for_its_own_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens(std::process::id(), port));
        // The parent (the test runner's shell or cargo) does not hold it.
        assert!(!listens(std::os::unix::process::parent_id(), port));
        drop(listener);
        assert!(!listens(std::process::id(), port));
    }

    #[test]
    fn only_plain_files_of_their_own_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "kept").unwrap();
        let write = || {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true);
            options
        };
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let hard = dir.path().join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        let fifo = dir.path().join("fifo");
        let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        for refused in [&link, &hard, &fifo] {
            assert!(open_plain(refused, &mut write()).is_err(), "{refused:?}");
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
        let plain = dir.path().join("plain");
        write_private(&plain, "mine").unwrap();
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "mine");
        assert!(open_plain(&plain, &mut write()).is_ok());
    }
}
