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
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("{}", file.display()))?;
    out.write_all(contents.as_bytes())?;
    out.sync_all()?;
    Ok(())
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
