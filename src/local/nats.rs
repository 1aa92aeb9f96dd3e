use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::config::{NatsAuth, Secret};

/// The users of nats/auth.conf, one per role.
pub const USERS: [&str; 4] = ["api", "worker", "migrate", "events"];

const AUTH_CONF: &str = include_str!("../../nats/auth.conf");

/// A `nats-server -js` on loopback that lets in only the users of nats/auth.conf.
pub struct LocalNats {
    child: Child,
    port: u16,
    bin: PathBuf,
    store_dir: PathBuf,
    passwords: BTreeMap<String, String>,
}

impl LocalNats {
    /// Starts the server; the users' passwords are made once and kept in the store directory
    /// (readable by this user only), so a restarted `dev` keeps its credentials.
    pub async fn start(bin: &Path, store_dir: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(store_dir)?;
        let passwords = passwords(store_dir)?;
        let mut server = Self {
            child: spawn(bin, store_dir, port, &passwords)?,
            port,
            bin: bin.to_path_buf(),
            store_dir: store_dir.to_path_buf(),
            passwords,
        };
        server.await_ready().await?;
        Ok(server)
    }

    /// Waits for the server's ports file (`--ports_file_dir`), named by its pid, which it
    /// writes once it listens: a port that accepts connections may be another server's (taken
    /// between the port's choice and this start, which then fails), with other users.
    async fn await_ready(&mut self) -> anyhow::Result<()> {
        let name = self.bin.file_name().unwrap_or_default().to_string_lossy();
        let ports_file = self
            .store_dir
            .join(format!("{name}_{}.ports", self.child.id()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if ports_file.exists() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "nats-server exited at start on port {} ({status})",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        anyhow::bail!("nats-server did not start on port {}", self.port)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The password of one of [`USERS`].
    pub fn password(&self, user: &str) -> &str {
        &self.passwords[user]
    }

    /// How a client logs in as one of [`USERS`].
    pub fn auth(&self, user: &str) -> NatsAuth {
        NatsAuth {
            user: Some(user.to_owned()),
            password: Some(Secret::new(self.password(user))),
            ..NatsAuth::default()
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = spawn(&self.bin, &self.store_dir, self.port, &self.passwords)?;
        self.await_ready().await
    }
}

/// The passwords kept in `<store>/users.json`, made when missing.
fn passwords(store_dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let file = store_dir.join("users.json");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let kept: BTreeMap<String, String> =
            serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?;
        if USERS.iter().all(|u| kept.contains_key(*u)) {
            return Ok(kept);
        }
    }
    // A leading letter: nats-server reads a variable that looks like a number as one.
    let made: BTreeMap<String, String> = USERS
        .iter()
        .map(|u| {
            (
                u.to_string(),
                format!("m{}", crate::auth::token::generate()),
            )
        })
        .collect();
    super::write_private(&file, &serde_json::to_string(&made)?)?;
    Ok(made)
}

fn spawn(
    bin: &Path,
    store_dir: &Path,
    port: u16,
    passwords: &BTreeMap<String, String>,
) -> anyhow::Result<Child> {
    // The flags cannot raise max_payload or name users; a config file can (events carry
    // results ≤ 64 KiB).
    std::fs::write(store_dir.join("auth.conf"), AUTH_CONF)?;
    let conf = store_dir.join("local.conf");
    std::fs::write(&conf, "max_payload: 8MB\ninclude ./auth.conf\n")?;
    stop_leftover(bin, store_dir);
    let mut command = Command::new(bin);
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store_dir)
        .arg("-c")
        .arg(&conf)
        .arg("-P")
        .arg(store_dir.join(PID_FILE))
        .arg("--ports_file_dir")
        .arg(store_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::parent_death::dies_with_parent(&mut command, libc::SIGTERM);
    for (user, password) in passwords {
        command.env(password_variable(user), password);
    }
    command
        .spawn()
        .with_context(|| format!("cannot run {} (set NATS_SERVER_BIN)", bin.display()))
}

const PID_FILE: &str = "nats-server.pid";

/// Stops a nats-server still running on this store: one that an earlier `dev`, killed before
/// servers died with it, left holding the port and the store. A pid file naming anything else
/// (the pid reused since) is left to the new server to overwrite. One log line either way.
fn stop_leftover(bin: &Path, store_dir: &Path) {
    let Some(pid) = std::fs::read_to_string(store_dir.join(PID_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<libc::pid_t>().ok())
    else {
        return;
    };
    let bin = resolve(bin);
    let serves = || {
        bin.as_deref()
            .is_some_and(|bin| serves(pid, bin, store_dir))
    };
    if !serves() {
        tracing::warn!(
            pid,
            store = %store_dir.display(),
            "a stale nats-server pid file on this store (its process is gone or is another \
             program); replacing it"
        );
        return;
    }
    tracing::warn!(pid, store = %store_dir.display(), "a nats-server left running on this store; stopping it");
    for (signal, wait) in [(libc::SIGTERM, 100), (libc::SIGKILL, 100)] {
        // SAFETY: kill(2) on a pid checked by `serves` to be a nats-server of this store.
        if unsafe { libc::kill(pid, signal) } != 0 {
            tracing::warn!(
                pid,
                signal,
                error = %std::io::Error::last_os_error(),
                "cannot signal the nats-server left running on this store"
            );
        }
        for _ in 0..wait {
            if !serves() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    tracing::warn!(
        pid,
        store = %store_dir.display(),
        "the nats-server left running on this store is still there after SIGKILL; starting \
         another may fail"
    );
}

/// Whether `pid` is a nats-server of this store: a pid file's pid may have been reused by
/// anything since. It runs `bin` (its first argument, found as exec finds it, or its
/// executable) and names the store. (An exited one not yet reaped has no command line any
/// more.)
fn serves(pid: libc::pid_t, bin: &Path, store_dir: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    std::fs::read(proc.join("cmdline")).is_ok_and(|cmdline| {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let store = store_dir.as_os_str().as_encoded_bytes();
        let program = args
            .first()
            .map(|arg0| Path::new(std::ffi::OsStr::from_bytes(arg0)))
            .and_then(resolve);
        let exe = std::fs::read_link(proc.join("exe")).ok();
        (program.as_deref() == Some(bin) || exe.as_deref() == Some(bin)) && args.contains(&store)
    })
}

/// Where a program is, as exec finds it (a bare name in PATH), without links.
fn resolve(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return std::fs::canonicalize(program).ok();
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .and_then(|path| std::fs::canonicalize(path).ok())
}

/// The variable nats/auth.conf reads a user's password from.
fn password_variable(user: &str) -> String {
    format!("MILLRACE_NATS_{}_PASSWORD", user.to_ascii_uppercase())
}

impl LocalNats {
    /// Kills the server, and removes the pid file it leaves (so that the next start does not
    /// take it for a crash's).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.store_dir.join(PID_FILE));
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.kill();
    }
}
