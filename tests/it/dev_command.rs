//! `millrace dev` as a user runs it: killed outright, it leaves no server behind and its next
//! start finds everything as it was; a start stops servers an earlier crash left and clears
//! their stale pid files without signalling anybody else, but never those of another `dev`
//! still running; a start that fails stops what it started and says what to do; a job cannot
//! log in to its PostgreSQL.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{bin, jobs_have_own_users, tool};

/// `dev` prefers NATS's and PostgreSQL's usual ports when they are free: two starting at once
/// would both take them. One at a time (see [`Setup`]).
static ONE_DEV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `millrace dev` on `data_dir`, its API on `port`.
fn dev(data_dir: &Path, port: u16) -> Command {
    dev_in(Command::new(bin()), data_dir, port)
}

/// As [`dev`], but as root run as Docker runs containers by default: without CAP_SYS_PTRACE,
/// so other users' processes (the postmaster's) hide their executable and working directory.
fn dev_without_ptrace(data_dir: &Path, port: u16) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return dev(data_dir, port);
    }
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"])
        .arg(bin());
    dev_in(setpriv, data_dir, port)
}

fn dev_in(mut command: Command, data_dir: &Path, port: u16) -> Command {
    command
        .arg("dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MILLRACE_DATA_DIR", data_dir)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("NATS_SERVER_BIN", tool("NATS_SERVER_BIN", "nats-server"))
        .env(
            "PG_BIN_DIR",
            tool("PG_BIN_DIR", "/usr/lib/postgresql/15/bin"),
        )
        .env("WORKER_PYTHON", tool("WORKER_PYTHON", "/usr/bin/python3"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Read only when a test fails: a pipe nobody reads would stall dev once full.
        .stderr(log_file(data_dir));
    command
}

fn log_file(data_dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.with_extension("log"))
        .unwrap()
}

/// What `dev` wrote (its errors, and its log lines from stdout), without their colours.
fn dev_log(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find('\x1b') {
        plain.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    plain.push_str(rest);
    plain
}

/// Whether a run's stderr shows a backtrace (anyhow's "Stack backtrace:", a panic's "stack
/// backtrace:").
fn has_backtrace(stderr: &str) -> bool {
    stderr.to_lowercase().contains("backtrace")
}

/// A running `dev`, killed if the test ends (or fails) before it stops it.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops `dev` as Ctrl-C does; fails (after killing it) if it is still running after 60 s.
fn stop(mut dev: Dev) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(dev.0.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while dev.0.try_wait().unwrap().is_none() {
        // Dropping `dev` kills it.
        assert!(
            Instant::now() < deadline,
            "dev did not stop within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `dev`'s banner gives its user: a token, and the Runs page's one-time login link.
struct Banner {
    token: String,
    login_link: String,
}

/// Starts a [`dev`] command on `data_dir`; returns it with what its banner prints.
fn start_command(data_dir: &Path, mut command: Command) -> (Dev, Banner) {
    let mut child = Dev(command.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Its log lines are on stdout too: kept with stderr's.
    let mut log = log_file(data_dir);
    std::thread::spawn(move || {
        let mut token = None;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = writeln!(log, "{line}");
            if let Some(t) = line.strip_prefix("token:") {
                token = Some(t.trim().to_owned());
            }
            if let (Some(link), Some(token)) = (line.strip_prefix("Runs page:"), &token) {
                let _ = tx.send(Banner {
                    token: token.clone(),
                    login_link: link.trim().to_owned(),
                });
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!(
                "dev printed no token and Runs page link within 60 s ({e}):\n{}",
                dev_log(data_dir)
            )
        });
    (child, banner)
}

/// Opens the Runs page's login link as the page does: the page, then its code exchanged for a
/// session. Returns the status of the exchange and its answer.
async fn follow_login_link(http: &reqwest::Client, link: &str) -> (u16, String) {
    let page = http.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Runs · Millrace"));
    let (base, code) = link.split_once("/?login=").expect("a ?login= link");
    let res = http
        .post(format!("{base}/api/auth/login_code"))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", needle])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_owned)
        .collect()
}

/// The pids of the servers (`program` in their command line) whose command line names `needle`.
/// A postmaster's child shows its command line until it sets its own title: not counted.
fn servers(needle: &str, program: &str) -> Vec<libc::pid_t> {
    let found: Vec<libc::pid_t> = processes_naming(needle)
        .iter()
        .filter(|p| p.contains(program))
        .map(|p| p.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    found
        .iter()
        .copied()
        .filter(|pid| parent(*pid).is_none_or(|parent| !found.contains(&parent)))
        .collect()
}

/// A process's parent.
fn parent(pid: libc::pid_t) -> Option<libc::pid_t> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// How the postmaster and nats-server show in the process list.
const POSTMASTER: &str = "bin/postgres -D";
const NATS_SERVER: &str = "nats-server";

/// Waits until no process names `needle`.
fn none_left(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_naming(needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What every test here starts from, the machine's only `dev` test while it lives: a fresh data
/// directory (canonical, as `dev` names it), a free port for the API and its URL, and an HTTP
/// client that keeps no connections (a next `dev` answers on the same port). Dropped, it
/// removes what `dev` kept outside the data directory (its log, and as root its cluster).
struct Setup {
    _one: tokio::sync::MutexGuard<'static, ()>,
    _data: tempfile::TempDir,
    dir: PathBuf,
    port: u16,
    base: String,
    http: reqwest::Client,
}

impl Setup {
    async fn new() -> Self {
        let one = ONE_DEV.lock().await;
        let data = tempfile::Builder::new()
            .prefix("millrace-dev-it-")
            .tempdir()
            .unwrap();
        let port = millrace::local::free_port().unwrap();
        Self {
            _one: one,
            dir: std::fs::canonicalize(data.path()).unwrap(),
            _data: data,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// `dev` on this data directory and port, not started.
    fn command(&self) -> Command {
        dev(&self.dir, self.port)
    }

    fn start(&self) -> (Dev, Banner) {
        start_command(&self.dir, self.command())
    }

    /// What `dev` wrote so far: see [`dev_log`].
    fn log(&self) -> String {
        dev_log(&self.dir)
    }

    /// Where dev keeps PostgreSQL: `<data>/postgres`, or as root the directory it links to.
    fn pg_dir(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.join("postgres")).unwrap()
    }

    /// NATS's store.
    fn store(&self) -> PathBuf {
        self.dir.join("nats")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Ok(pg_dir) = std::fs::canonicalize(self.dir.join("postgres")) {
            if pg_dir != self.dir.join("postgres") {
                let _ = std::fs::remove_dir_all(&pg_dir);
            }
        }
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

/// Runs the example script through its async webhook; returns the job id once it succeeded.
async fn run_hello(http: &reqwest::Client, base: &str, token: &str) -> String {
    let res = http
        .post(format!("{base}/api/w/demo/jobs/run/p/u/admin/hello"))
        .bearer_auth(token)
        .json(&json!({"name": "mill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let job = res.text().await.unwrap();
    assert_eq!(
        result(http, base, token, &job).await,
        json!({"greeting": "hello mill"})
    );
    job
}

/// A job's result, waiting up to 60 s for it.
async fn result(http: &reqwest::Client, base: &str, token: &str, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = http
            .get(format!(
                "{base}/api/w/demo/jobs_u/completed/get_result/{job}"
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            return res.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "job {job}: {}", res.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_dev_leaves_nothing_running_and_starts_again_as_it_was() {
    let setup = Setup::new().await;
    let (data_dir, base, http) = (&setup.dir, setup.base.as_str(), &setup.http);
    let (mut first, banner) = setup.start();
    let token = banner.token;
    let job = run_hello(http, base, &token).await;
    // The Runs page's link logs the admin in, once.
    assert!(
        banner.login_link.starts_with(&format!("{base}/?login=")),
        "{}",
        banner.login_link
    );
    let (status, session) = follow_login_link(http, &banner.login_link).await;
    assert_eq!(status, 200, "{session}");
    let me: Value = http
        .get(format!("{base}/api/users/whoami"))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], json!("admin@millrace.local"));
    let (status, _) = follow_login_link(http, &banner.login_link).await;
    assert_eq!(status, 401, "a login link works once");
    let pg_dir = setup.pg_dir();
    // The key of stored secrets, made once, private.
    let key_file = data_dir.join("encryption.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64, "{key}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    first.0.kill().unwrap(); // SIGKILL: no destructor runs
    first.0.wait().unwrap();
    // Its servers die with it.
    none_left(&pg_dir.display().to_string());
    none_left(&setup.store().display().to_string());

    let started = Instant::now();
    let (second, banner) = setup.start();
    // "Up in a few seconds": ~2 s on a quiet machine; the suite runs tests in parallel on a
    // loaded 2-core CI machine, hence the margin. The time is logged to see the trend.
    let took = started.elapsed();
    eprintln!("dev was up again {took:?} after its start");
    assert!(took < Duration::from_secs(30), "up only after {took:?}");
    // Each start prints a new link.
    let (status, _) = follow_login_link(http, &banner.login_link).await;
    assert_eq!(status, 200);
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        key,
        "the key changed"
    );
    // The earlier token and job are still there.
    run_hello(http, base, &token).await;
    assert_eq!(
        result(http, base, &token, &job).await,
        json!({"greeting": "hello mill"})
    );
    let postmasters = servers(&pg_dir.join("data").display().to_string(), POSTMASTER);
    assert_eq!(postmasters.len(), 1, "one server for the cluster");
    let nats = servers(&setup.store().display().to_string(), NATS_SERVER);
    assert_eq!(nats.len(), 1, "one nats-server for the store");
    stop(second);
    none_left(&pg_dir.display().to_string());
    none_left(&setup.store().display().to_string());
}

#[tokio::test]
async fn a_dev_that_cannot_start_stops_what_it_started() {
    let setup = Setup::new().await;
    let port = setup.port;
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut command = setup.command();
    // As a Rust developer's shell may have it: still a message, not a backtrace.
    command.env("RUST_BACKTRACE", "1");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = setup.log();
    // A message that says what to do, not a backtrace.
    assert!(stderr.contains("Error: cannot listen on"), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
    assert!(stderr.contains("set BIND_ADDR"), "{stderr}");
    assert!(!has_backtrace(&stderr), "{stderr}");
    none_left(&setup.pg_dir().display().to_string());
    none_left(&setup.store().display().to_string());
}

/// A server started by the test as an earlier `dev` would have left it: not `dev`'s child, so
/// nothing stops it with `dev`. Its exit is reaped at once (no zombie keeps its pid); dropped
/// while still running, it is killed.
struct Leftover {
    pid: libc::pid_t,
    exited: std::sync::mpsc::Receiver<std::process::ExitStatus>,
}

impl Leftover {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let (tx, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().unwrap());
        });
        Self { pid, exited }
    }

    fn running(&self) -> bool {
        matches!(
            self.exited.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Empty)
        )
    }

    /// Waits up to 10 s for it to exit.
    fn has_exited(&self) -> bool {
        self.exited.recv_timeout(Duration::from_secs(10)).is_ok()
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        if self.running() {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// The pid on the first line of a pid file (nats-server's, PostgreSQL's lock files).
fn pid_in(file: &Path) -> Option<libc::pid_t> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Waits until `file` names `pid` and something accepts connections on `port`.
fn await_server(file: &Path, pid: libc::pid_t, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_in(file) != Some(pid) || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "no server {pid} on port {port} ({})",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the process list shows one server for the store and one for the cluster, neither of
/// them among `old`.
fn one_server_each(store: &Path, cluster: &Path, old: &[libc::pid_t]) {
    let nats = servers(&store.display().to_string(), NATS_SERVER);
    let postmasters = servers(&cluster.display().to_string(), POSTMASTER);
    assert_eq!(nats.len(), 1, "nats-servers of the store: {nats:?}");
    assert_eq!(
        postmasters.len(),
        1,
        "postmasters of the cluster: {postmasters:?}"
    );
    assert!(!old.contains(&nats[0]) && !old.contains(&postmasters[0]));
}

/// The lines of `log` that contain `text`.
fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(text)).collect()
}

#[tokio::test]
async fn a_start_stops_the_servers_an_earlier_crash_left_running() {
    // What may be read of the postmaster, another user's process, is what anyone may read.
    left_servers_are_stopped(Postmaster::AsInstalled, Ptrace::Without).await;
}

#[tokio::test]
async fn a_start_stops_a_left_postmaster_whatever_its_program_is_called() {
    left_servers_are_stopped(Postmaster::ThroughTheLoader, Ptrace::With).await;
}

/// How the test starts the postmaster an earlier dev left.
enum Postmaster {
    AsInstalled,
    /// Run by the dynamic loader, as nix's `.postgres-wrapped` or valgrind: its executable is
    /// not called postgres (its command line still names the cluster).
    ThroughTheLoader,
}

/// Whether `dev`, as root, may look at other users' processes (CAP_SYS_PTRACE).
enum Ptrace {
    With,
    Without,
}

/// The dynamic loader of this machine's programs.
const LOADERS: [&str; 2] = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"];

async fn left_servers_are_stopped(how: Postmaster, ptrace: Ptrace) {
    let setup = Setup::new().await;
    let (data_dir, port, base, http) = (&setup.dir, setup.port, setup.base.as_str(), &setup.http);
    let (first, banner) = setup.start();
    let token = banner.token;
    let job = run_hello(http, base, &token).await;
    stop(first);
    let pg_dir = setup.pg_dir();
    let cluster = pg_dir.join("data");
    let store = setup.store();
    none_left(&pg_dir.display().to_string());
    none_left(&store.display().to_string());

    // What a `dev` whose servers did not die with it left: its nats-server and postmaster,
    // started as it starts them, on the same store and cluster.
    let nats_port = millrace::local::free_port().unwrap();
    let mut nats = Command::new(tool("NATS_SERVER_BIN", "nats-server"));
    nats.args([
        "-a",
        "127.0.0.1",
        "-p",
        &nats_port.to_string(),
        "-js",
        "-sd",
    ])
    .arg(&store)
    .arg("-c")
    .arg(store.join("local.conf"))
    .arg("-P")
    .arg(store.join("nats-server.pid"));
    let passwords: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(store.join("users.json")).unwrap()).unwrap();
    for (user, password) in &passwords {
        nats.env(
            format!("MILLRACE_NATS_{}_PASSWORD", user.to_ascii_uppercase()),
            password,
        );
    }
    let old_nats = Leftover::spawn(&mut nats);
    let pg_port = millrace::local::free_port().unwrap();
    let postgres = tool("PG_BIN_DIR", "/usr/lib/postgresql/15/bin").join("postgres");
    let mut postmaster = match how {
        Postmaster::AsInstalled => Command::new(postgres),
        Postmaster::ThroughTheLoader => {
            let loader = LOADERS
                .into_iter()
                .find(|l| Path::new(l).exists())
                .expect("a dynamic loader");
            let mut command = Command::new(loader);
            command.arg(postgres);
            command
        }
    };
    postmaster
        .arg("-D")
        .arg(&cluster)
        .args([
            "-p",
            &pg_port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-k",
        ])
        .arg(&pg_dir);
    {
        // As root, as PostgreSQL's user (it refuses root), as `dev` does.
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let owner = std::fs::metadata(&cluster).unwrap();
        postmaster.uid(owner.uid()).gid(owner.gid());
    }
    let old_pg = Leftover::spawn(&mut postmaster);
    await_server(&store.join("nats-server.pid"), old_nats.pid, nats_port);
    await_server(&cluster.join("postmaster.pid"), old_pg.pid, pg_port);

    let command = match ptrace {
        Ptrace::With => dev(data_dir, port),
        Ptrace::Without => dev_without_ptrace(data_dir, port),
    };
    let (second, _) = start_command(data_dir, command);
    let log = setup.log();
    // One line each says what was found, and that it was stopped.
    let said = lines_with(
        &log,
        "a nats-server left running on this store; stopping it",
    );
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(&format!("pid={}", old_nats.pid)), "{log}");
    let said = lines_with(
        &log,
        "a PostgreSQL server left running on this cluster; stopping it",
    );
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(&format!("pid={}", old_pg.pid)), "{log}");
    // A clean stop left no stale pid file to speak of.
    assert!(lines_with(&log, "stale").is_empty(), "{log}");
    assert!(old_nats.has_exited(), "the old nats-server runs on");
    assert!(old_pg.has_exited(), "the old postmaster runs on");
    one_server_each(&store, &cluster, &[old_nats.pid, old_pg.pid]);
    // The data stayed: the earlier token, its workspace and job.
    assert_eq!(
        result(http, base, &token, &job).await,
        json!({"greeting": "hello mill"})
    );
    run_hello(http, base, &token).await;
    stop(second);
    none_left(&pg_dir.display().to_string());
    none_left(&store.display().to_string());
}

#[tokio::test]
async fn stale_pid_files_of_a_crashed_dev_signal_nobody() {
    let setup = Setup::new().await;
    let (base, http) = (setup.base.as_str(), &setup.http);
    let (first, banner) = setup.start();
    let pg_dir = setup.pg_dir();
    let cluster = pg_dir.join("data");
    let store = setup.store();
    let lock_file = std::fs::read_to_string(cluster.join("postmaster.pid")).unwrap();
    stop(first);
    none_left(&pg_dir.display().to_string());

    // A crash left the pid files; their pids have since been reused by other programs of the
    // servers' users (one of PostgreSQL's: PostgreSQL itself refuses to start over a live
    // process of its user), or by nobody.
    let pg_user = {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&cluster).unwrap();
        (owner.uid(), owner.gid())
    };
    let mut sleep = Command::new("sleep");
    {
        use std::os::unix::process::CommandExt;
        sleep.arg("600").uid(pg_user.0).gid(pg_user.1);
    }
    let postgres_sleep = Leftover::spawn(&mut sleep);
    // Named as nats-server's program and naming the store, but another program.
    let nats_sleep = Leftover::spawn(
        Command::new(tool("WORKER_PYTHON", "/usr/bin/python3"))
            .args(["-c", "import time; time.sleep(600)", "nats-server"])
            .arg(&store),
    );
    let mut exited = Command::new("true").spawn().unwrap();
    let dead = exited.id();
    exited.wait().unwrap();
    let rest = lock_file.split_once('\n').unwrap().1;
    std::fs::write(
        cluster.join("postmaster.pid"),
        format!("{}\n{rest}", postgres_sleep.pid),
    )
    .unwrap();
    // Left to PostgreSQL, which takes a file naming no process for stale.
    let socket_lock = pg_dir.join(".s.PGSQL.5432.lock");
    std::fs::write(&socket_lock, format!("{dead}\n{rest}")).unwrap();
    // As a single-user backend writes it (a negative pid): the sleep's.
    let single_lock = pg_dir.join(".s.PGSQL.1.lock");
    std::fs::write(&single_lock, format!("-{}\n{rest}", postgres_sleep.pid)).unwrap();
    // Torn by a start that crashed: PostgreSQL would refuse it ("lock file is empty").
    let torn_lock = pg_dir.join(".s.PGSQL.2.lock");
    std::fs::write(&torn_lock, "").unwrap();
    std::fs::write(store.join("nats-server.pid"), nats_sleep.pid.to_string()).unwrap();

    let (second, _) = setup.start();
    let log = setup.log();
    assert!(
        postgres_sleep.running(),
        "dev signalled PostgreSQL's user's sleep:\n{log}"
    );
    assert!(
        nats_sleep.running(),
        "dev signalled its user's sleep:\n{log}"
    );
    assert!(lines_with(&log, "left running on this").is_empty(), "{log}");
    let said = lines_with(&log, "removed lock files an earlier PostgreSQL server left");
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("postmaster.pid"), "{log}");
    assert!(said[0].contains(".s.PGSQL.1.lock"), "{log}");
    assert!(!said[0].contains(".s.PGSQL.5432.lock"), "{log}");
    assert!(said[0].contains(".s.PGSQL.2.lock"), "{log}");
    assert!(!single_lock.exists() && !torn_lock.exists());
    let said = lines_with(&log, "a stale nats-server pid file on this store");
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains(&format!("pid={}", nats_sleep.pid)),
        "{log}"
    );
    // The files now name the new servers (the socket's, if the new one took port 5432).
    let postmaster = pid_in(&cluster.join("postmaster.pid")).unwrap();
    let socket_pid = pid_in(&socket_lock).unwrap();
    assert!(socket_pid == postmaster || socket_pid == dead as libc::pid_t);
    assert_eq!(
        servers(&cluster.display().to_string(), POSTMASTER),
        [postmaster]
    );
    let nats: Vec<_> = servers(&store.display().to_string(), NATS_SERVER)
        .into_iter()
        .filter(|pid| *pid != nats_sleep.pid)
        .collect();
    assert_eq!(nats, [pid_in(&store.join("nats-server.pid")).unwrap()]);
    run_hello(http, base, &banner.token).await;
    stop(second);
    assert!(postgres_sleep.running() && nats_sleep.running());
    drop(nats_sleep);
    none_left(&pg_dir.display().to_string());
    none_left(&store.display().to_string());
}

/// Runs `command`, a dev expected to refuse at once, to its end; one that started anyway is
/// stopped after 60 s, not left behind.
async fn refused(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_link_planted_in_devs_postgres_directory_is_followed_nowhere() {
    // As root, dev writes its lock, pg_hba.conf and log into a directory PostgreSQL's user
    // owns; whoever runs as that user (a database superuser's `COPY … TO PROGRAM`) could
    // replace them with links to files only root may write.
    let setup = Setup::new().await;
    let (first, _) = setup.start();
    stop(first);
    let pg_dir = setup.pg_dir();
    let victim = setup.dir.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    for name in ["dev.lock", "data/pg_hba.conf"] {
        let planted = pg_dir.join(name);
        std::fs::remove_file(&planted).unwrap();
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let out = refused(setup.command()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("a link there is refused"),
            "{name}: {stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "untouched\n",
            "{name}"
        );
        std::fs::remove_file(&planted).unwrap();
    }
}

#[tokio::test]
async fn a_second_dev_on_the_same_data_dir_refuses_and_stops_nothing() {
    let setup = Setup::new().await;
    let (data_dir, base, http) = (&setup.dir, setup.base.as_str(), &setup.http);
    let (first, banner) = setup.start();
    let pg_dir = setup.pg_dir();
    let cluster = pg_dir.join("data");
    let store = setup.store();
    let before = (
        servers(&store.display().to_string(), NATS_SERVER),
        servers(&cluster.display().to_string(), POSTMASTER),
    );

    let out = refused(dev(data_dir, millrace::local::free_port().unwrap())).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let message = format!(
        "Error: another millrace dev (pid {}) is running on {}",
        first.0.id(),
        data_dir.display()
    );
    assert!(stderr.contains(&message), "{stderr}");
    assert!(!has_backtrace(&stderr), "{stderr}");
    // Nothing stopped, nothing started: the first's servers are the only ones, and it works.
    let after = (
        servers(&store.display().to_string(), NATS_SERVER),
        servers(&cluster.display().to_string(), POSTMASTER),
    );
    assert_eq!(after, before);
    // Neither dev took the other's servers for leftovers (the second logs to its stdout).
    let second_log = String::from_utf8_lossy(&out.stdout);
    for log in [setup.log(), second_log.into_owned()] {
        assert!(lines_with(&log, "left running").is_empty(), "{log}");
        assert!(lines_with(&log, "removed lock files").is_empty(), "{log}");
    }
    run_hello(http, base, &banner.token).await;
    stop(first);
    none_left(&pg_dir.display().to_string());
    none_left(&store.display().to_string());
}

/// A job's attempts on dev's PostgreSQL: a startup packet as `postgres` over TCP and over the
/// socket (what a `trust` rule would answer with "authentication ok", code 0), and the password
/// file. What each got back.
const PG_INTRUDER: &str = r#"
import os, socket, struct

def startup(sock):
    params = b"user\x00postgres\x00database\x00millrace\x00\x00"
    body = struct.pack("!i", 196608) + params
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    data = b""
    while len(data) < 5 or len(data) < 1 + struct.unpack("!i", data[1:5])[0]:
        chunk = sock.recv(4096)
        if not chunk:
            return {"closed": data.hex()}
        data += chunk
    kind, length = chr(data[0]), struct.unpack("!i", data[1:5])[0]
    body = data[5:1 + length]
    if kind == "R":
        return {"kind": kind, "auth": struct.unpack("!i", body[:4])[0],
                "mechanisms": [m.decode() for m in body[4:].split(b"\x00") if m]}
    return {"kind": kind, "text": body.replace(b"\x00", b" ").decode(errors="replace")}

def attempt(act):
    try:
        return act()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}

def main(port: int, socket_dir: str, password_file: str):
    def tcp():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            return startup(s)
    def unix():
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(f"{socket_dir}/.s.PGSQL.{port}")
            return startup(s)
    def read():
        with open(password_file) as f:
            return {"read": f.read()}
    return {"uid": os.getuid(), "tcp": attempt(tcp), "unix": attempt(unix),
            "password": attempt(read)}
"#;

#[tokio::test]
async fn a_job_of_dev_cannot_log_in_to_its_postgres() {
    // As a plain user jobs run as that user, who owns the password file: see the README.
    if !jobs_have_own_users() {
        return;
    }
    let setup = Setup::new().await;
    let (base, http) = (setup.base.as_str(), &setup.http);
    let (dev, banner) = setup.start();
    let token = banner.token;
    let pg_dir = setup.pg_dir();
    // postmaster.pid's fourth line: the port the server listens on.
    let lock = std::fs::read_to_string(pg_dir.join("data/postmaster.pid")).unwrap();
    let pg_port: u16 = lock.lines().nth(3).unwrap().trim().parse().unwrap();
    let password_file = pg_dir.join("postgres.password");
    let password = std::fs::read_to_string(&password_file).unwrap();

    let res = http
        .post(format!("{base}/api/w/demo/scripts/create"))
        .bearer_auth(&token)
        .json(
            &json!({"path": "u/admin/pg_intruder", "language": "python3", "content": PG_INTRUDER}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = http
        .post(format!("{base}/api/w/demo/jobs/run/p/u/admin/pg_intruder"))
        .bearer_auth(&token)
        .json(&json!({
            "port": pg_port,
            "socket_dir": pg_dir.display().to_string(),
            "password_file": password_file.display().to_string(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let job = res.text().await.unwrap();
    let got = result(http, base, &token, &job).await;

    assert_ne!(got["uid"], json!(0), "the job ran as root: {got}");
    // Over TCP: asked for a password (SASL, SCRAM-SHA-256), not let in.
    assert_eq!(got["tcp"]["kind"], json!("R"), "{got}");
    assert_eq!(got["tcp"]["auth"], json!(10), "not asked for SASL: {got}");
    assert_eq!(got["tcp"]["mechanisms"][0], json!("SCRAM-SHA-256"), "{got}");
    // The socket and the password file are out of its reach.
    let unix = got["unix"]["error"].as_str().unwrap_or_default();
    assert!(unix.starts_with("PermissionError"), "{got}");
    let read = got["password"]["error"].as_str().unwrap_or_default();
    assert!(read.starts_with("PermissionError"), "{got}");
    assert!(!got.to_string().contains(password.trim()), "{got}");
    stop(dev);
    none_left(&pg_dir.display().to_string());
}

#[tokio::test]
async fn a_dev_without_postgresql_says_to_set_pg_bin_dir_and_leaves_nothing_running() {
    let setup = Setup::new().await;
    let mut command = setup.command();
    command
        .env("PG_BIN_DIR", "/nonexistent")
        .env("RUST_BACKTRACE", "1");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = setup.log();
    assert!(
        stderr.contains("Error: PostgreSQL's `initdb` is not in PG_BIN_DIR=/nonexistent"),
        "{stderr}"
    );
    assert!(stderr.contains("install PostgreSQL"), "{stderr}");
    assert!(!has_backtrace(&stderr), "{stderr}");
    none_left(&setup.store().display().to_string());
}

/// A directory for PATH holding only these programs (links to where PATH finds them now).
fn path_of_only(programs: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var_os("PATH").unwrap();
    for program in programs {
        let found = std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("no {program} on PATH"));
        std::os::unix::fs::symlink(found, dir.path().join(program)).unwrap();
    }
    dir
}

#[test]
fn dev_sh_without_cargo_says_how_to_install_it() {
    let bin = path_of_only(&["bash", "env", "dirname", "cat"]);
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev.sh"))
        .env_clear()
        .env("PATH", bin.path())
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("dev.sh: cargo not found"), "{stderr}");
    assert!(stderr.contains("https://rustup.rs"), "{stderr}");
    assert!(stderr.contains("rerun scripts/dev.sh"), "{stderr}");
    // It stopped there: nothing installed, nothing built.
    assert!(!stderr.contains("cargo build"), "{stderr}");
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}
