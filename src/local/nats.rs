use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A `nats-server -js` on loopback.
pub struct LocalNats {
    child: Child,
    port: u16,
    bin: PathBuf,
    store_dir: PathBuf,
}

impl LocalNats {
    pub async fn start(bin: &Path, store_dir: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(store_dir)?;
        let child = spawn(bin, store_dir, port)?;
        let mut server = Self {
            child,
            port,
            bin: bin.to_path_buf(),
            store_dir: store_dir.to_path_buf(),
        };
        server.await_ready().await?;
        Ok(server)
    }

    fn spawn_again(&mut self) -> anyhow::Result<()> {
        self.child = spawn(&self.bin, &self.store_dir, self.port)?;
        Ok(())
    }

    async fn await_ready(&mut self) -> anyhow::Result<()> {
        if super::wait_for_port(self.port, Duration::from_secs(10)).await {
            return Ok(());
        }
        let _ = self.child.kill();
        anyhow::bail!("nats-server did not start on port {}", self.port)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.spawn_again()?;
        self.await_ready().await
    }
}

fn spawn(bin: &Path, store_dir: &Path, port: u16) -> anyhow::Result<Child> {
    // The flags cannot raise max_payload; a config file can (events carry results ≤ 64 KiB).
    let conf = store_dir.join("local.conf");
    std::fs::write(&conf, "max_payload: 8MB\n")?;
    Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store_dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {} (set NATS_SERVER_BIN)", bin.display()))
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
