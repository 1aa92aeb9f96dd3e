//! The test harness: for each test, a real nats-server (JetStream) and a real PostgreSQL on free
//! loopback ports with throwaway data directories, `millrace migrate`, one `millrace api` and
//! any number of `millrace worker` processes — the real binary over real sockets. Dropping the
//! [`TestEnv`] kills everything and removes the directories.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use millrace::local::{free_port, wait_until_listening, Durability, LocalNats, LocalPostgres};
use serde_json::{json, Value};

pub const SUPERADMIN: &str = "test-superadmin-secret-0123456789abcdef";
pub const WS: &str = "test";

/// A server started on a free port. The port is free when picked but can be taken before the
/// server binds it (by another test's server or outgoing connection), so a failed start is
/// retried on another port. `what` names the server and what to set when it cannot start.
async fn on_a_free_port<T, F>(what: &str, start: impl Fn(u16) -> F) -> T
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start(free_port().unwrap()).await {
            Ok(server) => return server,
            Err(e) if attempt < 3 => {
                eprintln!("{what} did not start (attempt {attempt}), retrying: {e:#}");
                attempt += 1;
            }
            Err(e) => panic!("{what} starts: {e:#}"),
        }
    }
}

/// A variable the harness needs from `scripts/tools.sh`, or a default that works on Debian.
pub fn tool(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

/// Whether jobs run as users of their own here: only when the worker is root, as in CI, where a
/// skip would hide that nothing was tested. Tests of isolation return early when this is false.
pub fn jobs_have_own_users() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the isolation tests as root (jobs run as users of their own only then)"
        );
        eprintln!("skipped: jobs run as users of their own only when the worker is root (CI is)");
    }
    root
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_millrace")
}

pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// Asserts the status, showing the body when it differs.
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }
}

/// Extra environment for the processes of one test.
#[derive(Default, Clone)]
pub struct Options {
    pub api_env: Vec<(String, String)>,
    pub worker_env: Vec<(String, String)>,
    pub workers: usize,
    /// Start an S3 server (s3s-fs) and give the processes `S3_*` settings for it.
    pub s3: bool,
    /// PostgreSQL with `fsync` and synchronous commits, as in production (slower).
    pub durable_postgres: bool,
    /// Environment for every process: `migrate`, the APIs and the workers.
    pub shared_env: Vec<(String, String)>,
    /// The workers' capabilities when the harness is root (`setpriv --bounding-set`); by
    /// default CAP_SETUID and CAP_SETGID only, as the Helm chart grants.
    pub worker_bounding_set: Option<String>,
}

/// The S3 credentials of the harness's s3s-fs.
pub const S3_ACCESS_KEY: &str = "millrace-test-access";
pub const S3_SECRET_KEY: &str = "millrace-test-secret-0123456789";
pub const S3_BUCKET: &str = "millrace";

/// An s3s-fs server on a free port, storing buckets as directories of `root`. Killed on drop.
pub struct LocalS3 {
    pub endpoint: String,
    pub root: PathBuf,
    child: Child,
}

impl LocalS3 {
    /// Starts s3s-fs (`S3S_FS_BIN`, from `scripts/tools.sh`) with the bucket `S3_BUCKET`.
    pub async fn start(root: PathBuf) -> Self {
        // s3s-fs serves each directory of its root as a bucket.
        std::fs::create_dir_all(root.join(S3_BUCKET)).unwrap();
        let port = free_port().unwrap();
        let child = Command::new(tool("S3S_FS_BIN", "s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts (set S3S_FS_BIN: eval \"$(bash scripts/tools.sh)\")");
        assert!(
            wait_until_listening(child.id(), port, Duration::from_secs(10)).await,
            "s3s-fs did not listen"
        );
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            child,
        }
    }

    /// The `S3_*` settings of the instance default object storage.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("S3_ENDPOINT", self.endpoint.as_str()),
            ("S3_BUCKET", S3_BUCKET),
            ("S3_ACCESS_KEY", S3_ACCESS_KEY),
            ("S3_SECRET_KEY", S3_SECRET_KEY),
            ("S3_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Where s3s-fs keeps the object `key` of the bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(S3_BUCKET).join(key)
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local SMTP server (Python's `aiosmtpd`) that prints every message it receives.
pub struct LocalSmtp {
    pub port: u16,
    log: PathBuf,
    child: Child,
}

impl LocalSmtp {
    pub async fn start(dir: &std::path::Path) -> Self {
        let port = free_port().unwrap();
        let log = dir.join("smtp.out");
        let child = Command::new(tool("WMILL_PYTHON", "python3"))
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-c",
                "aiosmtpd.handlers.Debugging",
            ])
            .args(["-l", &format!("127.0.0.1:{port}")])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd starts (set WMILL_PYTHON)");
        assert!(
            wait_until_listening(child.id(), port, Duration::from_secs(20)).await,
            "aiosmtpd did not listen"
        );
        Self { port, log, child }
    }

    /// The environment that points Millrace at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SMTP_HOST".into(), "127.0.0.1".into()),
            ("SMTP_PORT".into(), self.port.to_string()),
            ("SMTP_TLS".into(), "none".into()),
            ("SMTP_FROM".into(), "millrace@example.com".into()),
        ]
    }

    /// Every message received so far, headers and body.
    pub fn messages(&self) -> Vec<String> {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        out.split("---------- MESSAGE FOLLOWS ----------")
            .skip(1)
            .map(|m| {
                m.split("------------ END MESSAGE ------------")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

impl Drop for LocalSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TestEnv {
    pub nats: LocalNats,
    pub pg: LocalPostgres,
    pub api_url: String,
    /// The first is the one at `api_url`; `add_api` starts more replicas.
    apis: Vec<Child>,
    workers: Vec<Child>,
    worker_count: usize,
    /// Each worker's `WORKER_HEALTH_ADDR`, by index.
    worker_health: Vec<String>,
    options: Options,
    pub http: reqwest::Client,
    /// A workspace admin's token in workspace `test` (user `alice`).
    pub token: String,
    /// The S3 server, with `Options { s3: true, .. }`.
    pub s3: Option<LocalS3>,
    /// Dropped last (fields drop in order): the servers above stop using their data first.
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::with(Options {
            workers: 1,
            ..Default::default()
        })
        .await
    }

    pub async fn with(options: Options) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("millrace-it-")
            .tempdir()
            .unwrap();
        let nats_bin = tool("NATS_SERVER_BIN", "nats-server");
        let nats_dir = dir.path().join("nats");
        let nats = on_a_free_port("nats-server (NATS_SERVER_BIN)", |port| {
            LocalNats::start(&nats_bin, &nats_dir, port)
        })
        .await;
        let durability = if options.durable_postgres {
            Durability::Durable
        } else {
            Durability::Fast
        };
        let pg_bin = tool("PG_BIN_DIR", "/usr/lib/postgresql/15/bin");
        let pg_dir = dir.path().join("pg");
        let pg = on_a_free_port("PostgreSQL (PG_BIN_DIR)", |port| {
            std::future::ready(LocalPostgres::start(&pg_bin, &pg_dir, port, durability))
        })
        .await;
        pg.create_database("millrace").await.unwrap();
        let s3 = if options.s3 {
            Some(LocalS3::start(dir.path().join("s3")).await)
        } else {
            None
        };
        let api_port = free_port().unwrap();
        let mut env = Self {
            api_url: format!("http://127.0.0.1:{api_port}"),
            dir,
            nats,
            pg,
            apis: Vec::new(),
            workers: Vec::new(),
            worker_count: 0,
            worker_health: Vec::new(),
            options: options.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            token: String::new(),
            s3,
        };
        let status = env.command("migrate", &[]).status().unwrap();
        assert!(status.success(), "millrace migrate failed");
        env.add_api_on(api_port).await;
        for _ in 0..options.workers {
            env.add_worker(&[]);
        }
        env.token = env
            .user_token("alice@example.com", "alice", true, false)
            .await;
        env
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap()
    }

    /// Everything the processes printed so far.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        all
    }

    /// A directory every job may write to (jobs run as users of their own when the harness is
    /// root), for markers that tests check.
    pub fn scratch(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir.path().join("scratch");
        std::fs::create_dir_all(&dir).unwrap();
        // The test's temp dir itself is private: let jobs through it, not into it.
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    /// `<dir>/nats-<user>.password`, mode 0400.
    pub fn nats_password_file(&self, user: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let file = self.dir.path().join(format!("nats-{user}.password"));
        if !file.exists() {
            std::fs::write(&file, format!("{}\n", self.nats.password(user))).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        file
    }

    /// A NATS client logged in as one of the users of nats/auth.conf (with the role's inbox,
    /// as Millrace's processes use it).
    pub async fn nats_as(&self, user: &str) -> async_nats::Client {
        let options = async_nats::ConnectOptions::with_user_and_password(
            user.into(),
            self.nats.password(user).into(),
        );
        let options = if user == "events" {
            options
        } else {
            options.custom_inbox_prefix(format!("_INBOX_{user}"))
        };
        options
            .connect(self.nats.url())
            .await
            .unwrap_or_else(|e| panic!("connect to the test NATS as {user}: {e}"))
    }

    /// The NATS URL with a user's credentials in it, for clients in other languages.
    pub fn nats_url_as(&self, user: &str) -> String {
        self.nats.url().replacen(
            "nats://",
            &format!("nats://{user}:{}@", self.nats.password(user)),
            1,
        )
    }

    pub fn database_url(&self) -> String {
        self.pg.url("millrace")
    }

    /// A `millrace <sub>` with this test's configuration and nothing inherited but PATH.
    pub fn command(&self, sub: &str, extra: &[(String, String)]) -> Command {
        // SAFETY: geteuid has no preconditions.
        let mut command = if sub == "worker" && unsafe { libc::geteuid() } == 0 {
            // As the Helm chart runs it: root with CAP_SETUID and CAP_SETGID and nothing else
            // (no CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_KILL…), so the tests prove that is enough.
            let bounding = self.options.worker_bounding_set.as_deref();
            let mut command = Command::new("setpriv");
            command
                .arg(format!(
                    "--bounding-set={}",
                    bounding.unwrap_or("-all,+setuid,+setgid")
                ))
                .args(["--inh-caps=-all", "--"])
                .arg(bin());
            command
        } else {
            Command::new(bin())
        };
        command
            .arg(sub)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", self.database_url())
            .env("NATS_URL", self.nats.url())
            .env("SUPERADMIN_SECRET", SUPERADMIN)
            .env("BASE_URL", &self.api_url)
            .env("RUST_LOG", "info,millrace::access=debug")
            .env("JOB_ACK_WAIT", "3")
            .env("WORKER_PYTHON", tool("WORKER_PYTHON", "/usr/bin/python3"))
            .env("WORKER_BUN", tool("WORKER_BUN", "bun"))
            .env("WORKER_DENO", tool("WORKER_DENO", "deno"))
            .stdin(Stdio::null());
        if let Some(user) = ["api", "worker", "migrate"].into_iter().find(|u| *u == sub) {
            // As a file readable by the process's user only, as the chart mounts it.
            command
                .env("NATS_USER", user)
                .env("NATS_PASSWORD_FILE", self.nats_password_file(user));
        }
        if let Some(s3) = &self.s3 {
            command.envs(s3.env());
        }
        command.envs(self.options.shared_env.iter().cloned());
        for (k, v) in extra {
            command.env(k, v);
        }
        command
    }

    /// Starts one more API replica (same database and NATS); returns its base URL.
    pub async fn add_api(&mut self) -> String {
        let port = free_port().unwrap();
        self.add_api_on(port).await;
        format!("http://127.0.0.1:{port}")
    }

    async fn add_api_on(&mut self, port: u16) {
        let index = self.apis.len();
        let child = self
            .command("api", &self.options.api_env)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .stdout(self.log_file(&format!("api-{index}")))
            // A panic's message goes to stderr: kept, so that tests can look for it.
            .stderr(self.log_file(&format!("api-{index}.stderr")))
            .spawn()
            .unwrap();
        let pid = child.id();
        self.apis.push(child);
        assert!(
            wait_until_listening(pid, port, Duration::from_secs(20)).await,
            "api did not listen"
        );
    }

    /// Starts one more worker process; returns its index.
    pub fn add_worker(&mut self, extra: &[(&str, &str)]) -> usize {
        let index = self.worker_count;
        self.worker_count += 1;
        let mut env = self.options.worker_env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.push(("WORKER_NAME".into(), format!("worker-{index}")));
        let health = format!("127.0.0.1:{}", free_port().unwrap());
        self.worker_health.push(health.clone());
        env.push(("WORKER_HEALTH_ADDR".into(), health));
        let child = self
            .command("worker", &env)
            .stdout(self.log_file(&format!("worker-{index}")))
            .stderr(self.log_file(&format!("worker-{index}.stderr")))
            .spawn()
            .unwrap();
        self.workers.push(child);
        index
    }

    /// Whether worker `index` is back to idle: under 10% of a core over a second, and its
    /// resident memory at most 64 MiB above `baseline_kib` (from [`TestEnv::worker_rss_kib`]).
    pub async fn assert_worker_idle(&self, index: usize, baseline_kib: u64) {
        let pid = self.workers[index].id();
        let cpu_ticks = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // After the command name (in parentheses, maybe with spaces): utime is field 14.
            let fields: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
                .split(' ')
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            fields[11] + fields[12]
        };
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let before = cpu_ticks();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu_ticks() - before;
        assert!(
            used * 10 <= per_second,
            "worker {index} used {used}/{per_second} s of CPU in an idle second"
        );
        let rss = self.worker_rss_kib(index);
        assert!(
            rss <= baseline_kib + 64 * 1024,
            "worker {index} holds {rss} KiB, {baseline_kib} KiB before"
        );
    }

    /// Worker `index`'s process id.
    pub fn worker_pid(&self, index: usize) -> u32 {
        self.workers[index].id()
    }

    /// Worker `index`'s resident memory in KiB.
    pub fn worker_rss_kib(&self, index: usize) -> u64 {
        rss_kib(self.worker_pid(index))
    }

    /// A job's logs as the API serves them.
    pub async fn job_logs(&self, id: &str) -> String {
        self.get(&format!("/api/w/{WS}/jobs_u/get_logs/{id}"), &self.token)
            .await
            .expect(200)
            .text
    }

    /// Sends one text file (form field `f`, `x.txt`) to `path`'s async multipart webhook; returns
    /// the job id.
    pub async fn upload_text(&self, path: &str, text: &str) -> String {
        let boundary = "millrace-upload-test";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.txt\"\r\n\
             Content-Type: text/plain\r\n\r\n{text}\r\n--{boundary}--\r\n"
        );
        let res = self
            .http
            .post(self.url(&format!("/api/w/{WS}/jobs/run/p/{path}")))
            .bearer_auth(&self.token)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.text().await.unwrap()
    }

    /// The process id of the `millrace api` process (to watch its memory).
    pub fn api_pid(&self) -> u32 {
        self.apis[0].id()
    }

    /// SIGKILLs API replica `index` (0 is the one at `api_url`).
    pub fn kill_api(&mut self, index: usize) {
        let child = &mut self.apis[index];
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGKILL, as a crashed node would die.
    pub fn kill_worker(&mut self, index: usize) {
        let child = &mut self.workers[index];
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Workers started so far, dead or alive (indexes run from 0).
    /// `http://<WORKER_HEALTH_ADDR of worker index><path>`.
    pub fn worker_health_url(&self, index: usize, path: &str) -> String {
        format!("http://{}{path}", self.worker_health[index])
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Whether worker `index` still runs.
    pub fn worker_alive(&mut self, index: usize) -> bool {
        matches!(self.workers[index].try_wait(), Ok(None))
    }

    /// SIGTERM, as Kubernetes stops a pod; returns once the process exited.
    pub fn terminate_worker(&mut self, index: usize) -> std::process::ExitStatus {
        let child = &mut self.workers[index];
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_url)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        Response {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            text: res.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// `GET path` answered 200 with a JSON array: its items.
    pub async fn get_list(&self, path: &str, token: &str) -> Vec<Value> {
        self.get(path, token)
            .await
            .expect(200)
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Cancels job `id` as the workspace admin; the API must accept it.
    pub async fn cancel(&self, id: &str) {
        self.post(
            &format!("/api/w/{WS}/jobs_u/queue/cancel/{id}"),
            &self.token,
            serde_json::json!({}),
        )
        .await
        .expect(200);
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.request(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// Creates a user, adds them to `test` and returns a fresh token of theirs.
    pub async fn user_token(
        &self,
        email: &str,
        username: &str,
        admin: bool,
        operator: bool,
    ) -> String {
        self.post(
            "/api/users/create",
            SUPERADMIN,
            json!({"email": email, "password": "pw"}),
        )
        .await
        .expect(201);
        if self
            .get(&format!("/api/w/{WS}/users/whoami"), SUPERADMIN)
            .await
            .status
            == 404
        {
            self.post(
                "/api/workspaces/create",
                SUPERADMIN,
                json!({"id": WS, "name": "Test"}),
            )
            .await
            .expect(201);
        }
        self.post(
            &format!("/api/w/{WS}/workspaces/add_user"),
            SUPERADMIN,
            json!({"email": email, "username": username, "is_admin": admin, "operator": operator}),
        )
        .await
        .expect(201);
        self.post(
            "/api/users/tokens/impersonate",
            SUPERADMIN,
            json!({"impersonate_email": email}),
        )
        .await
        .expect(201)
        .text
    }

    /// Creates a script at `path` (replacing the live version if any); returns its hash.
    pub async fn script(&self, path: &str, language: &str, content: &str) -> String {
        self.script_with(path, language, content, json!({})).await
    }

    pub async fn script_with(
        &self,
        path: &str,
        language: &str,
        content: &str,
        extra: Value,
    ) -> String {
        let live = self
            .get(&format!("/api/w/{WS}/scripts/get/p/{path}"), &self.token)
            .await;
        let mut body = json!({"path": path, "language": language, "content": content});
        if live.status == 200 && live.json()["archived"] == json!(false) {
            body["parent_hash"] = live.json()["hash"].clone();
        }
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.post(&format!("/api/w/{WS}/scripts/create"), &self.token, body)
            .await
            .expect(201)
            .text
    }

    /// Creates the flow at `path`, or adds a version to it; returns the version id.
    pub async fn flow(&self, path: &str, value: Value) -> i64 {
        self.flow_with(path, json!({"value": value})).await
    }

    /// Like [`TestEnv::flow`] with the whole body (`value`, `schema`, `summary`…).
    pub async fn flow_with(&self, path: &str, mut body: Value) -> i64 {
        body["path"] = json!(path);
        let exists = self
            .get(&format!("/api/w/{WS}/flows/get/{path}"), &self.token)
            .await
            .status
            == 200;
        if exists {
            self.post(
                &format!("/api/w/{WS}/flows/update/{path}"),
                &self.token,
                body,
            )
            .await
            .expect(200);
        } else {
            self.post(&format!("/api/w/{WS}/flows/create"), &self.token, body)
                .await
                .expect(201);
        }
        self.get(
            &format!("/api/w/{WS}/flows/get_latest_version/{path}"),
            &self.token,
        )
        .await
        .expect(200)
        .json()["id"]
            .as_i64()
            .unwrap()
    }

    /// Runs the flow at `path` asynchronously; returns the job id.
    pub async fn run_flow(&self, path: &str, args: Value) -> String {
        self.post(&format!("/api/w/{WS}/jobs/run/f/{path}"), &self.token, args)
            .await
            .expect(201)
            .text
    }

    /// Runs the flow and waits; returns `get_result_maybe`'s answer.
    pub async fn run_flow_done(&self, path: &str, args: Value) -> Value {
        let id = self.run_flow(path, args).await;
        self.wait(&id, Duration::from_secs(60)).await
    }

    /// Runs the script at `path` asynchronously; returns the job id.
    pub async fn run(&self, path: &str, args: Value) -> String {
        self.post(&format!("/api/w/{WS}/jobs/run/p/{path}"), &self.token, args)
            .await
            .expect(201)
            .text
    }

    /// Polls until the job completes; returns `get_result_maybe`'s answer.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let maybe = self
                .get(
                    &format!("/api/w/{WS}/jobs_u/completed/get_result_maybe/{id}"),
                    &self.token,
                )
                .await
                .expect(200)
                .json();
            if maybe["completed"] == json!(true) {
                return maybe;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not completed in {timeout:?}: {maybe}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs and waits; returns the result (panics if the job failed).
    pub async fn run_ok(&self, path: &str, args: Value) -> Value {
        let id = self.run(path, args).await;
        let done = self.wait(&id, Duration::from_secs(30)).await;
        assert_eq!(done["success"], json!(true), "job failed: {done}");
        done["result"].clone()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/api/w/{WS}/jobs_u/get/{id}"), &self.token)
            .await
            .expect(200)
            .json()
    }

    /// A direct connection to the test database, for checks no API exposes.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain(self.apis.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `check` holds, polling every 100 ms; fails saying `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process's resident memory in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `pid` and its children (PostgreSQL's backends) `signal`.
pub fn signal_tree(pid: i32, signal: libc::c_int) {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the command name (in parentheses): state, then the parent's pid.
        let ppid = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            pids.push(child);
        }
    }
    for p in pids {
        // SAFETY: kill(2) with a pid read from /proc; at worst it names a process gone since.
        unsafe { libc::kill(p, signal) };
    }
}

/// The PostgreSQL server's own process (from its pid file).
pub fn postmaster_pid(env: &TestEnv) -> i32 {
    let file = env.pg.data_dir().join("data").join("postmaster.pid");
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Sends raw bytes over TCP (for requests an HTTP client would normalise) and returns the status.
pub async fn raw_status(api_url: &str, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Counts occurrences per value.
pub fn tally<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}
