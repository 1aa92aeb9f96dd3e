//! `millrace dev` as a user runs it: killed outright, it leaves no server behind and its next
//! start finds everything as it was; a start that fails stops what it started.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{bin, tool};

/// `dev` prefers NATS's and PostgreSQL's usual ports when they are free: two starting at once
/// would both take them. One at a time.
static ONE_DEV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `millrace dev` on `data_dir`, its API on `port`.
fn dev(data_dir: &Path, port: u16) -> Command {
    let mut command = Command::new(bin());
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

fn dev_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
}

/// A running `dev`, killed if the test ends (or fails) before it stops it.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `dev`'s banner gives its user: a token, and the Runs page's one-time login link.
struct Banner {
    token: String,
    login_link: String,
}

/// Starts `dev` and returns it with what its banner prints.
fn start(data_dir: &Path, port: u16) -> (Dev, Banner) {
    let mut child = Dev(dev(data_dir, port).spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut token = None;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
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

/// A throwaway data directory for `dev`.
fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("millrace-dev-it-")
        .tempdir()
        .unwrap()
}

/// Removes what `dev` keeps outside the data directory (its log, and as root its cluster).
fn clean_up(data_dir: &Path) {
    let pg_dir = postgres_dir(data_dir);
    if pg_dir != data_dir.join("postgres") {
        let _ = std::fs::remove_dir_all(&pg_dir);
    }
    let _ = std::fs::remove_file(data_dir.with_extension("log"));
}

/// Where dev keeps PostgreSQL: `<data>/postgres`, or as root the directory it links to.
fn postgres_dir(data_dir: &Path) -> PathBuf {
    std::fs::canonicalize(data_dir.join("postgres")).unwrap()
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
    let _one = ONE_DEV.lock().await;
    let data = data_dir();
    let data_dir = data.path().to_path_buf();
    let port = millrace::local::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // No kept connections: the next dev answers on the same port.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let (mut first, banner) = start(&data_dir, port);
    let token = banner.token;
    let job = run_hello(&http, &base, &token).await;
    // The Runs page's link logs the admin in, once.
    assert!(
        banner.login_link.starts_with(&format!("{base}/?login=")),
        "{}",
        banner.login_link
    );
    let (status, session) = follow_login_link(&http, &banner.login_link).await;
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
    let (status, _) = follow_login_link(&http, &banner.login_link).await;
    assert_eq!(status, 401, "a login link works once");
    let pg_dir = postgres_dir(&data_dir);
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
    none_left(&data_dir.join("nats").display().to_string());

    let started = Instant::now();
    let (mut second, banner) = start(&data_dir, port);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Each start prints a new link.
    let (status, _) = follow_login_link(&http, &banner.login_link).await;
    assert_eq!(status, 200);
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        key,
        "the key changed"
    );
    // The earlier token and job are still there.
    run_hello(&http, &base, &token).await;
    assert_eq!(
        result(&http, &base, &token, &job).await,
        json!({"greeting": "hello mill"})
    );
    let postmasters = processes_naming(&pg_dir.join("data").display().to_string())
        .into_iter()
        .filter(|p| p.contains("bin/postgres -D"))
        .count();
    assert_eq!(postmasters, 1, "one server for the cluster");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(second.0.id() as libc::pid_t, libc::SIGTERM) };
    second.0.wait().unwrap();
    none_left(&pg_dir.display().to_string());
    none_left(&data_dir.join("nats").display().to_string());
    clean_up(&data_dir);
}

#[tokio::test]
async fn a_dev_that_cannot_start_stops_what_it_started() {
    let _one = ONE_DEV.lock().await;
    let data = data_dir();
    let data_dir = data.path().to_path_buf();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = tokio::task::spawn_blocking(move || {
        let mut command = dev(&data_dir, port);
        command.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = dev_log(data.path());
    // A message that says what to do, not a backtrace.
    assert!(stderr.contains(&port.to_string()), "{stderr}");
    assert!(stderr.contains("set BIND_ADDR"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    let pg_dir = postgres_dir(data.path());
    none_left(&pg_dir.display().to_string());
    none_left(&data.path().join("nats").display().to_string());
    clean_up(data.path());
}
