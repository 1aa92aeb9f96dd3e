use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

/// A PostgreSQL cluster of its own on loopback that lets in only its superuser `postgres`, with
/// a password. The server refuses to run as root, so as root it runs as the `postgres` user.
///
/// `data_dir` (mode 0700; owned by `postgres` when we are root) holds:
/// - `data/`: the cluster;
/// - `postgres.password`: the superuser's password (0600), made once and kept, so that a
///   restarted `dev` logs in again;
/// - `postgres.log`;
/// - the server's Unix socket, reachable by nobody else through this private directory.
///
/// Jobs run on the same machine as other users: with `trust` authentication any of them could
/// log in as the superuser over TCP (read the signing key, `COPY … TO PROGRAM`). So every
/// connection, TCP or socket, needs the password (SCRAM), and a cluster made before that (by
/// `initdb -A trust`) is switched over when started.
pub struct LocalPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    password: String,
    durability: Durability,
    /// The postmaster, a child of this process (not daemonised by pg_ctl) so that it dies with
    /// it: a killed `dev` leaves no server behind.
    server: std::sync::Mutex<Option<std::process::Child>>,
}

/// Whether a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`, synchronous commits and full-page writes off: a crash of the machine may lose
    /// the last commits or the cluster. For a laptop and the tests.
    Fast,
    /// PostgreSQL's defaults: what a committed row survives is what a production server's does.
    Durable,
}

/// The whole of the cluster's pg_hba.conf: the password on every connection.
const PG_HBA: &str = "\
# Written by Millrace (src/local/postgres.rs), and again whenever it differs: the superuser's
# password (SCRAM) on every connection. Jobs run on this machine as other users.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
";

const PASSWORD_FILE: &str = "postgres.password";

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

/// The `postgres` user's uid and gid.
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    // SAFETY: getpwnam with a NUL-terminated name; the entry is read at once, before another
    // call could reuse its buffer.
    unsafe {
        let entry = libc::getpwnam(c"postgres".as_ptr());
        anyhow::ensure!(
            !entry.is_null(),
            "there is no `postgres` user to run PostgreSQL as"
        );
        Ok(((*entry).pw_uid, (*entry).pw_gid))
    }
}

/// Gives `path` (and with `recursive` all under it) to the `postgres` user.
fn chown_to_postgres(path: &Path, recursive: bool) -> anyhow::Result<()> {
    let mut chown = Command::new("chown");
    if recursive {
        chown.arg("-R");
    }
    chown.arg("postgres:postgres").arg(path);
    run(chown, "chown")
}

/// The password kept in `<data_dir>/postgres.password`, made (0600) when missing or empty; and
/// whether it was just made.
fn password(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let file = data_dir.join(PASSWORD_FILE);
    if file.symlink_metadata().is_ok() {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut super::open_plain(&file, std::fs::OpenOptions::new().read(true))?,
            &mut text,
        )?;
        if !text.trim().is_empty() {
            return Ok((text.trim().to_owned(), false));
        }
    }
    let made = crate::auth::token::generate();
    // A first line, as `initdb --pwfile` reads it.
    super::write_private(&file, &format!("{made}\n"))?;
    Ok((made, true))
}

/// Sets the superuser's password in a stopped cluster, in single-user mode: no connection, so
/// no moment in which a server lets anybody in without it.
fn set_password_offline(bin_dir: &Path, cluster: &Path, password: &str) -> anyhow::Result<()> {
    let mut single = pg_command(bin_dir, "postgres");
    single.arg("--single").arg("-D").arg(cluster).args([
        "-c",
        "password_encryption=scram-sha-256",
        // A failed statement stops the backend (a non-zero exit) and is not echoed (it holds
        // the password).
        "-c",
        "exit_on_error=on",
        "-c",
        "log_min_error_statement=panic",
        "postgres",
    ]);
    let mut child = single
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run postgres --single (set PG_BIN_DIR)")?;
    let statement = format!(
        "ALTER ROLE postgres WITH PASSWORD '{}';\n",
        password.replace('\'', "''")
    );
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(statement.as_bytes());
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        written.is_ok() && output.status.success(),
        "setting the password of the PostgreSQL cluster in {} failed (is a server still running \
         on it? stop it, or remove the directory to start afresh): {}",
        cluster.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Clears what a server of this cluster left when its `dev` died before it could stop it: a
/// postmaster still running (its socket and port would refuse the new one, and its password
/// cannot be set under it) is stopped. Of the lock files, only those PostgreSQL would refuse
/// wrongly are removed: one naming a live process that is not a server of this cluster (its pid
/// reused since) or an exited one nobody reaped, or one empty or torn (a start that crashed while writing it; PostgreSQL
/// refuses those too, and the caller's [`super::DirLock`] rules out a start in progress). A
/// pid that is gone is left to PostgreSQL, which takes such a file for stale after checking
/// the old server's shared memory. One log line each; the data stays.
fn clear_leftovers(cluster: &Path, socket_dir: &Path) -> anyhow::Result<()> {
    let pid_file = cluster.join("postmaster.pid");
    if let Ok(Some(pid)) = lock_file_pid(&pid_file) {
        if process_of(pid, cluster) == Process::Server {
            tracing::warn!(
                pid,
                cluster = %cluster.display(),
                "a PostgreSQL server left running on this cluster; stopping it"
            );
            stop_postmaster(pid, cluster)?;
        }
    }
    let sockets = std::fs::read_dir(socket_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(".s.PGSQL.") && name.ends_with(".lock"))
        });
    let mut removed = Vec::new();
    for file in std::iter::once(pid_file).chain(sockets) {
        let stale = match lock_file_pid(&file) {
            Ok(None) => false,
            Err(Torn) => true,
            Ok(Some(pid)) => match process_of(pid, cluster) {
                Process::Gone | Process::Server => false,
                Process::Other | Process::Exited => true,
                Process::Unknown => anyhow::bail!(
                    "{} names process {pid}, which may be a server of this cluster but cannot \
                     be told apart from one (see `ps -o user,args -p {pid}`): stop it if it is \
                     one of {}, else remove the file; then start again",
                    file.display(),
                    cluster.display()
                ),
            },
        };
        if !stale {
            continue;
        }
        std::fs::remove_file(&file).with_context(|| format!("{}", file.display()))?;
        removed.push(file.display().to_string());
    }
    if !removed.is_empty() {
        tracing::warn!(
            files = ?removed,
            "removed lock files an earlier PostgreSQL server left (another program has their \
             pid now, or they are torn)"
        );
    }
    Ok(())
}

/// A lock file whose first line is no pid.
struct Torn;

/// The pid on the first line of one of PostgreSQL's lock files (`None`: no file). Negative when
/// written by a single-user backend (`postgres --single`, see [`set_password_offline`]).
fn lock_file_pid(file: &Path) -> Result<Option<libc::pid_t>, Torn> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(Torn),
    };
    let pid = text
        .lines()
        .next()
        .and_then(|line| line.trim().parse::<libc::pid_t>().ok())
        .and_then(libc::pid_t::checked_abs)
        .filter(|pid| *pid > 0)
        .ok_or(Torn)?;
    Ok(Some(pid))
}

/// What a pid from one of the cluster's lock files is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Process {
    /// No process.
    Gone,
    /// One that has exited and waits to be reaped (a zombie): PostgreSQL takes its pid for
    /// alive and would refuse to start, where a container's init does not reap orphans.
    Exited,
    /// A server of this cluster: its user's, and its `-D` or working directory is the cluster.
    Server,
    /// Anything else: the pid was reused.
    Other,
    /// Perhaps a server of this cluster, perhaps not: neither signalled nor its file removed.
    Unknown,
}

/// Tells what `pid` is from what any user may read of it in /proc (its owner, command line and
/// state), and its working directory where this process may look: that of another user's
/// process needs CAP_SYS_PTRACE, which containers usually lack. Never from its program's name
/// (nix's `.postgres-wrapped`, valgrind). A postmaster keeps its command line.
fn process_of(pid: libc::pid_t, cluster: &Path) -> Process {
    use std::os::unix::fs::MetadataExt;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let (Ok(meta), Ok(stat), Ok(cmdline)) = (
        std::fs::metadata(&proc),
        std::fs::read_to_string(proc.join("stat")),
        std::fs::read(proc.join("cmdline")),
    ) else {
        return Process::Gone;
    };
    // The state follows the command's name, which may hold anything but ends with ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim().chars().next());
    if matches!(state, Some('Z' | 'X')) {
        return Process::Exited;
    }
    let Ok(cluster) = std::fs::canonicalize(cluster) else {
        return Process::Unknown;
    };
    let cwd = std::fs::read_link(proc.join("cwd"));
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let data_dir = args.iter().enumerate().find_map(|(at, arg)| match *arg {
        b"-D" => args.get(at + 1).copied(),
        arg => arg.strip_prefix(b"-D").filter(|dir| !dir.is_empty()),
    });
    let names_cluster = data_dir.is_some_and(|dir| {
        let dir = Path::new(std::ffi::OsStr::from_bytes(dir));
        let dir = match &cwd {
            Ok(cwd) if dir.is_relative() => cwd.join(dir),
            _ => dir.to_path_buf(),
        };
        std::fs::canonicalize(dir).is_ok_and(|dir| dir == cluster)
    });
    let in_cluster = cwd.as_ref().is_ok_and(|cwd| *cwd == cluster);
    let clusters_user = std::fs::metadata(&cluster).is_ok_and(|c| c.uid() == meta.uid());
    if clusters_user && (names_cluster || in_cluster) {
        return Process::Server;
    }
    // Another user's, working in the cluster; or the cluster's user's, in a place hidden from
    // this process, started as a PostgreSQL (its data directory perhaps in PGDATA) — but not
    // a server's child, which retitles itself `postgres: …` (a postmaster never does).
    let may_be_postgres = args.first().is_some_and(|arg0| {
        arg0.windows(8).any(|w| w == b"postgres") && !arg0.starts_with(b"postgres:")
    });
    if in_cluster || (clusters_user && cwd.is_err() && may_be_postgres) {
        return Process::Unknown;
    }
    Process::Other
}

/// Stops a postmaster of `cluster`: a fast shutdown (clients cut off, the data written out),
/// then an immediate one (the next start recovers) if it lingers.
fn stop_postmaster(pid: libc::pid_t, cluster: &Path) -> anyhow::Result<()> {
    for (signal, wait) in [(libc::SIGINT, 30), (libc::SIGQUIT, 10)] {
        // SAFETY: kill(2) on a pid just checked to be a postmaster of this cluster.
        unsafe { libc::kill(pid, signal) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
        while std::time::Instant::now() < deadline {
            if process_of(pid, cluster) != Process::Server {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    anyhow::bail!(
        "the PostgreSQL server (pid {pid}) left running on {} does not stop: stop it and start \
         again",
        cluster.display()
    )
}

/// `text` as it may stand in a URL's user information (RFC 3986 unreserved characters as they
/// are, every other byte percent-encoded).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The programs of `bin_dir` that [`LocalPostgres`] runs.
const PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_isready"];

impl LocalPostgres {
    /// Fails, saying what to do, when `bin_dir` lacks one of PostgreSQL's programs: checked
    /// before anything is started, so that a missing PostgreSQL leaves nothing running.
    pub fn check_programs(bin_dir: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for program in PROGRAMS {
            let path = bin_dir.join(program);
            let runnable = std::fs::metadata(&path)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
            anyhow::ensure!(
                runnable,
                "PostgreSQL's `{program}` is not in PG_BIN_DIR={}: install PostgreSQL (e.g. \
                 `apt-get install postgresql-15`; scripts/dev.sh does) and set PG_BIN_DIR to the \
                 directory of its programs (e.g. /usr/lib/postgresql/15/bin), or set DATABASE_URL \
                 to a PostgreSQL of yours",
                bin_dir.display()
            );
        }
        Ok(())
    }

    /// Initialises `data_dir` if it is empty, then starts the server on `port`. A cluster made
    /// by an older Millrace with `trust` authentication gets a password and pg_hba.conf first.
    pub fn start(
        bin_dir: &Path,
        data_dir: &Path,
        port: u16,
        durability: Durability,
    ) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        Self::check_programs(bin_dir)?;
        let cluster = data_dir.join("data");
        let fresh = !cluster.join("PG_VERSION").exists();
        std::fs::create_dir_all(data_dir)?;
        // The socket is in there too: private before anything else.
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{}", data_dir.display()))?;
        let (password, made) = password(data_dir)?;
        if is_root() {
            if fresh {
                chown_to_postgres(data_dir, true)?;
            } else {
                chown_to_postgres(data_dir, false)?;
                chown_to_postgres(&data_dir.join(PASSWORD_FILE), false)?;
            }
        }
        if fresh {
            let mut initdb = pg_command(bin_dir, "initdb");
            initdb
                .arg("-D")
                .arg(&cluster)
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ])
                .arg(format!(
                    "--pwfile={}",
                    data_dir.join(PASSWORD_FILE).display()
                ));
            run(initdb, "initdb")?;
        }
        if !fresh {
            clear_leftovers(&cluster, data_dir)?;
        }
        let hba = cluster.join("pg_hba.conf");
        let hba_current = std::fs::read_to_string(&hba).is_ok_and(|text| text == PG_HBA);
        if !fresh && (made || !hba_current) {
            // Made with `trust` (or its password file lost): give the superuser the password
            // before any server runs with the new rules.
            set_password_offline(bin_dir, &cluster, &password)?;
        }
        if !hba_current {
            // Truncating the existing file keeps its owner (`postgres`) and mode (0600).
            use std::io::Write;
            let mut file =
                super::open_plain(&hba, std::fs::OpenOptions::new().write(true).create(true))?;
            file.set_len(0)?;
            file.write_all(PG_HBA.as_bytes())
                .with_context(|| format!("{}", hba.display()))?;
            if is_root() {
                let (uid, gid) = postgres_ids()?;
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        let server = Self {
            bin_dir: bin_dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            port,
            password,
            durability,
            server: std::sync::Mutex::new(None),
        };
        server.launch()?;
        Ok(server)
    }

    /// Starts the server again after `stop`, on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.launch()
    }

    fn launch(&self) -> anyhow::Result<()> {
        let log_path = self.data_dir.join("postgres.log");
        let log = super::open_plain(
            &log_path,
            std::fs::OpenOptions::new().create(true).append(true),
        )?;
        let mut postgres = Command::new(self.bin_dir.join("postgres"));
        if is_root() {
            let (uid, gid) = postgres_ids()?;
            postgres.uid(uid).gid(gid);
        }
        postgres
            .arg("-D")
            .arg(self.data_dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(&self.data_dir)
            .args([
                "-c",
                "unix_socket_permissions=0700",
                "-c",
                "max_connections=200",
            ]);
        if self.durability == Durability::Fast {
            postgres.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        postgres
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SIGINT: PostgreSQL's fast shutdown, clients cut off and the data written out.
        crate::parent_death::dies_with_parent(&mut postgres, libc::SIGINT);
        let mut child = postgres
            .spawn()
            .with_context(|| format!("cannot run {} (set PG_BIN_DIR)", self.bin_dir.display()))?;
        if let Err(e) = self.await_ready(&mut child) {
            let _ = child.kill();
            let _ = child.wait();
            // The server's own words are in its log: bring its end along.
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            anyhow::bail!("{e:#}; the end of postgres.log:\n{tail}");
        }
        *self.server.lock().expect("postgres lock") = Some(child);
        Ok(())
    }

    /// Waits until the server accepts connections (`pg_isready`), or fails when it exits.
    /// Asked on its Unix socket, in its private directory: another server listening on the
    /// port (taken between the port's choice and this start, which then fails) answers on TCP
    /// as readily, and with another password. Ours creates its socket only once its TCP
    /// listener is bound.
    fn await_ready(&self, child: &mut std::process::Child) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("PostgreSQL exited at start ({status})");
            }
            let ready = Command::new(self.bin_dir.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.data_dir)
                .args(["-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "PostgreSQL did not accept connections within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The URL of a database on this server, with the superuser's password (not created: see
    /// `create_database`).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            percent_encode(&self.password),
            self.port
        )
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

    /// The directory of the cluster, its password file, log and Unix socket.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file that keeps the superuser's password.
    pub fn password_file(&self) -> PathBuf {
        self.data_dir.join(PASSWORD_FILE)
    }

    /// Stops the server at once, as a crash would (`immediate`: the next start recovers).
    pub fn stop(&self) {
        self.shut_down(libc::SIGQUIT);
    }

    fn shut_down(&self, signal: libc::c_int) {
        if let Some(mut child) = self.server.lock().expect("postgres lock").take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // A fast shutdown: the data written out, nothing to recover at the next start.
        self.shut_down(libc::SIGINT);
    }
}

#[cfg(test)]
mod tests {
    use super::{percent_encode, process_of, Process};

    #[test]
    fn an_exited_process_is_told_from_a_gone_one() {
        let cluster = tempfile::tempdir().unwrap();
        // Not waited for: a zombie until the end of the test.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_of(pid, cluster.path()) != Process::Exited {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert_eq!(process_of(pid, cluster.path()), Process::Gone);
        let own = std::process::id() as libc::pid_t;
        assert_eq!(process_of(own, cluster.path()), Process::Other);
    }

    #[test]
    fn passwords_are_percent_encoded_in_urls() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("a@b:c/d%é"), "a%40b%3Ac%2Fd%25%C3%A9");
    }
}
