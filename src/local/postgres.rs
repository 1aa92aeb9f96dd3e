use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

/// A PostgreSQL cluster of its own on loopback. Refuses root, so as root it runs as `postgres`.
pub struct LocalPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn pg_command(bin_dir: &Path, tool: &str) -> Command {
    let program = bin_dir.join(tool);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what} (set PG_BIN_DIR)"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl LocalPostgres {
    /// Initialises `data_dir` if it is empty, then starts the server on `port`.
    pub fn start(bin_dir: &Path, data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let cluster = data_dir.join("data");
        if !cluster.join("PG_VERSION").exists() {
            std::fs::create_dir_all(data_dir)?;
            if is_root() {
                run(
                    {
                        let mut c = Command::new("chown");
                        c.args(["-R", "postgres:postgres"]).arg(data_dir);
                        c
                    },
                    "chown",
                )?;
            }
            let mut initdb = pg_command(bin_dir, "initdb");
            initdb.arg("-D").arg(&cluster).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]);
            run(initdb, "initdb")?;
        }
        let server = Self {
            bin_dir: bin_dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            port,
        };
        server.launch()?;
        Ok(server)
    }

    /// Starts the server again after `stop`, on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.launch()
    }

    fn launch(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.data_dir.display()
        );
        let mut start = pg_command(&self.bin_dir, "pg_ctl");
        start
            .arg("-D")
            .arg(self.data_dir.join("data"))
            .args(["-w", "-l"])
            .arg(self.data_dir.join("postgres.log"))
            .args(["-o", &options, "start"]);
        if let Err(e) = run(start, "pg_ctl start") {
            // pg_ctl only says "examine the log": bring its end along.
            let log =
                std::fs::read_to_string(self.data_dir.join("postgres.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            anyhow::bail!("{e:#}; the end of postgres.log:\n{tail}");
        }
        Ok(())
    }

    /// The URL of a database on this server (not created: see `create_database`).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await?;
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop(&self) {
        let mut stop = pg_command(&self.bin_dir, "pg_ctl");
        stop.arg("-D")
            .arg(self.data_dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
