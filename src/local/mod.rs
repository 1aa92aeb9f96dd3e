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

/// Waits until something accepts connections on the port.
pub async fn wait_for_port(port: u16, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

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
