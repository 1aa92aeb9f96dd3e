//! All configuration, parsed once from the environment (or flags) by clap. Every setting has
//! an environment variable and a default, so `--help` is the reference. Secrets are wrapped in
//! [`Secret`] so that no `Debug` or log line can print them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Secret variables that may instead name a file holding the value, `<NAME>_FILE`, as
/// Kubernetes mounts Secrets: a file can be readable by the process's user alone, an environment
/// variable is copied into every child that is not started with a clean one.
pub const FILE_SECRETS: &[&str] = &[
    "DATABASE_URL",
    "SUPERADMIN_SECRET",
    "SMTP_PASSWORD",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "NATS_PASSWORD",
    "NATS_NKEY",
    "ENCRYPTION_KEY",
];

/// Moves every `<NAME>_FILE` of [`FILE_SECRETS`] into `<NAME>` for the parser. Call before any
/// other thread exists (the environment is not thread-safe).
pub fn read_secret_files() -> Result<(), String> {
    for name in FILE_SECRETS {
        let file_var = format!("{name}_FILE");
        let Some(path) = std::env::var_os(&file_var) else {
            continue;
        };
        if std::env::var_os(name).is_some() {
            return Err(format!("set {name} or {file_var}, not both"));
        }
        let value = std::fs::read_to_string(&path)
            .map_err(|e| format!("{file_var}: cannot read {}: {e}", path.to_string_lossy()))?;
        // Files written by editors and `echo` end with a newline that is not part of the secret.
        std::env::set_var(name, value.trim_end_matches(['\n', '\r']));
        std::env::remove_var(&file_var);
    }
    Ok(())
}

/// Removes every secret of [`FILE_SECRETS`] from the environment once parsed: children that are
/// not started with a clean environment (nats-server and PostgreSQL under `dev`) do not inherit
/// them. Call before any other thread exists.
pub fn forget_secrets() {
    for name in FILE_SECRETS {
        std::env::remove_var(name);
    }
}

/// Seconds as a `Duration`, the unit of every timeout variable.
pub fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("expected a whole number of seconds: {e}"))
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL (holds the password: never logged).
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/millrace"
    )]
    pub url: Secret,

    /// Connections in the PostgreSQL pool of each process.
    #[arg(
        long = "database-pool-size",
        env = "DATABASE_POOL_SIZE",
        default_value_t = 16
    )]
    pub pool_size: u32,
}

#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,

    #[command(flatten)]
    pub auth: NatsAuth,

    /// Replicas of the JetStream streams (3 with a clustered NATS).
    #[arg(
        long = "nats-stream-replicas",
        env = "NATS_STREAM_REPLICAS",
        default_value_t = 1
    )]
    pub stream_replicas: usize,

    /// Seconds a worker may hold a job without a progress ack before JetStream redelivers it.
    /// Running jobs send progress acks, so only a dead worker's jobs wait this long.
    #[arg(long = "job-ack-wait", env = "JOB_ACK_WAIT", default_value = "30", value_parser = seconds)]
    pub ack_wait: Duration,
}

/// How a process proves to NATS who it is (nats/auth.conf gives each role its user). At most
/// one of a password, a credentials file or an nkey.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsAuth {
    /// NATS user of this process (its role's user: `api`, `worker` or `migrate`, see
    /// nats/auth.conf); no authentication when unset.
    #[arg(
        id = "nats_user",
        long = "nats-user",
        env = "NATS_USER",
        requires = "nats_password"
    )]
    pub user: Option<String>,

    /// Password of NATS_USER.
    #[arg(
        id = "nats_password",
        long = "nats-password",
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub password: Option<Secret>,

    /// A NATS credentials file (user JWT and nkey seed), instead of a user and password.
    #[arg(long = "nats-creds", env = "NATS_CREDS", conflicts_with_all = ["nats_password", "nats_nkey"])]
    pub creds: Option<PathBuf>,

    /// An nkey seed (`SU…`), instead of a user and password.
    #[arg(
        id = "nats_nkey",
        long = "nats-nkey",
        env = "NATS_NKEY",
        hide_env_values = true,
        conflicts_with = "nats_password"
    )]
    pub nkey: Option<Secret>,
}

/// A JetStream limit: a positive number, or -1 for none.
fn stream_limit(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(n) if n == -1 || n > 0 => Ok(n),
        _ => Err("expected a positive whole number, or -1 for no limit".into()),
    }
}

/// Limits of the JetStream streams, set when `millrace migrate` declares them: a full job queue
/// refuses new jobs (the API answers 503) instead of filling the server's disk.
#[derive(Debug, Clone, Args)]
pub struct StreamLimits {
    /// Bytes of queued jobs MILLRACE_JOBS holds; past it new jobs are refused until workers
    /// take some (-1: no limit).
    #[arg(long = "jobs-stream-max-bytes", env = "JOBS_STREAM_MAX_BYTES",
          default_value_t = 1024 * 1024 * 1024, value_parser = stream_limit, allow_negative_numbers = true)]
    pub jobs_max_bytes: i64,

    /// Queued jobs MILLRACE_JOBS holds in all; past it new jobs are refused (-1: no limit).
    #[arg(long = "jobs-stream-max-msgs", env = "JOBS_STREAM_MAX_MSGS",
          default_value_t = 1_000_000, value_parser = stream_limit, allow_negative_numbers = true)]
    pub jobs_max_msgs: i64,

    /// Queued jobs of one worker tag; past it new jobs for that tag are refused, so a tag whose
    /// workers are gone cannot fill the queue for the others (-1: no limit).
    #[arg(long = "jobs-stream-max-msgs-per-subject", env = "JOBS_STREAM_MAX_MSGS_PER_SUBJECT",
          default_value_t = 250_000, value_parser = stream_limit, allow_negative_numbers = true)]
    pub jobs_max_msgs_per_subject: i64,

    /// Bytes of events MILLRACE_EVENTS keeps; past it the oldest are dropped (-1: no limit
    /// besides their 7 days).
    #[arg(long = "events-stream-max-bytes", env = "EVENTS_STREAM_MAX_BYTES",
          default_value_t = 4 * 1024 * 1024 * 1024, value_parser = stream_limit, allow_negative_numbers = true)]
    pub events_max_bytes: i64,
}

#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Address the API listens on.
    #[arg(long = "bind-addr", env = "BIND_ADDR", default_value = "0.0.0.0:8000")]
    pub bind_addr: SocketAddr,

    /// Where the API serves `/metrics` (Prometheus, unauthenticated): empty for BIND_ADDR
    /// itself, an address (`0.0.0.0:9100`) for a listener of its own (then not on BIND_ADDR),
    /// or `off`.
    #[arg(long = "metrics-bind-addr", env = "METRICS_BIND_ADDR", default_value = "", value_parser = metrics_addr)]
    pub metrics_bind_addr: MetricsAddr,

    /// Largest request body in bytes (file parts of multipart bodies excepted) → 413 above it.
    #[arg(long = "max-body-size", env = "MAX_BODY_SIZE", default_value_t = 16 * 1024 * 1024)]
    pub max_body_size: usize,

    /// Seconds a sync webhook waits for its job before answering 500 and cancelling it.
    #[arg(long = "timeout-wait-result", env = "TIMEOUT_WAIT_RESULT", default_value = "600", value_parser = seconds)]
    pub timeout_wait_result: Duration,

    /// Seconds an SSE stream stays open before a `timeout` frame closes it.
    #[arg(long = "timeout-sse-stream", env = "TIMEOUT_SSE_STREAM", default_value = "60", value_parser = seconds)]
    pub timeout_sse_stream: Duration,

    /// HTTP status of a sync webhook whose script failed.
    #[arg(
        long = "sync-error-status",
        env = "SYNC_ERROR_STATUS",
        default_value_t = 200
    )]
    pub sync_error_status: u16,

    /// Request headers copied into every job's arguments (comma-separated; `X-Sign` → `x_sign`).
    #[arg(long = "include-headers", env = "INCLUDE_HEADERS", default_value = "")]
    pub include_headers: String,

    /// Reverse proxies in front of the API that append to `X-Forwarded-For` (an ingress: 1).
    /// The client address (for rate limits) is the entry that many hops from the right; 0
    /// uses the connection's peer address and ignores the header, which clients can forge.
    #[arg(
        long = "trusted-proxy-hops",
        env = "TRUSTED_PROXY_HOPS",
        default_value_t = 0
    )]
    pub trusted_proxy_hops: usize,

    /// Seconds a run route's `Idempotency-Key` is remembered: a repeat within it answers the
    /// first job.
    #[arg(long = "idempotency-window", env = "IDEMPOTENCY_WINDOW", default_value = "120", value_parser = seconds)]
    pub idempotency_window: Duration,

    /// Seconds ahead a job may be scheduled (`scheduled_for`, `scheduled_in_secs`); further → 400.
    /// The default is 366 days.
    #[arg(long = "max-schedule-ahead", env = "MAX_SCHEDULE_AHEAD", default_value = "31622400", value_parser = seconds)]
    pub max_schedule_ahead: Duration,

    /// Longest pause, in seconds, between two looks of the scheduler for jobs scheduled for
    /// later that have come due (it also wakes at the earliest one it knows). Jobs due within a
    /// second are published at once; above 1, jobs can start up to this much minus 1 s late.
    #[arg(long = "scheduler-interval", env = "SCHEDULER_INTERVAL", default_value = "1", value_parser = seconds)]
    pub scheduler_interval: Duration,

    /// Run requests (webhooks of every kind) one API process works on at once, from reading
    /// the body until the job is queued; more at once → 503 with `Retry-After` at once, rather
    /// than queueing them in memory. A sync or SSE call stops counting once its job is queued.
    #[arg(
        long = "max-inflight-requests",
        env = "MAX_INFLIGHT_REQUESTS",
        default_value_t = 512
    )]
    pub max_inflight_requests: usize,

    /// Bytes of request bodies one API process holds at once (each run request reserves its
    /// `Content-Length`, or MAX_BODY_SIZE without one); past it → 503 with `Retry-After`.
    #[arg(
        long = "max-inflight-body-bytes",
        env = "MAX_INFLIGHT_BODY_BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pub max_inflight_body_bytes: usize,

    /// Seconds a submission waits for PostgreSQL (the INSERT) and for NATS (the PubAck) each
    /// before the job is given up and the caller gets 503 with `Retry-After`; also the longest
    /// the scheduler holds the rows of one look at due jobs (publishing and committing).
    #[arg(long = "submit-timeout", env = "SUBMIT_TIMEOUT", default_value = "5", value_parser = seconds)]
    pub submit_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// When set, accepted as a bearer token with superadmin rights (bootstraps a new instance).
    #[arg(
        long = "superadmin-secret",
        env = "SUPERADMIN_SECRET",
        hide_env_values = true
    )]
    pub superadmin_secret: Option<Secret>,

    /// Invalid tokens from one client address, and failed logins of one account from one
    /// address, per minute before further ones get 429 (valid tokens are always served).
    #[arg(
        long = "auth-failures-per-minute",
        env = "AUTH_FAILURES_PER_MINUTE",
        default_value_t = 20
    )]
    pub failures_per_minute: u32,

    /// Key that encrypts secrets at rest (webhook trigger secrets), AES-256-GCM: 32 bytes as
    /// 64 hex digits or base64 (`openssl rand -hex 32`). Without it, triggers cannot be made.
    #[arg(
        long = "encryption-key",
        env = "ENCRYPTION_KEY",
        hide_env_values = true
    )]
    pub encryption_key: Option<Secret>,
}

#[derive(Debug, Clone, Args)]
pub struct PublicUrls {
    /// Public URL of the API, used in printed examples and as scripts' `WM_BASE_URL`.
    #[arg(
        long = "base-url",
        env = "BASE_URL",
        default_value = "http://localhost:8000"
    )]
    pub base_url: String,

    /// URL scripts use to call back into the API; defaults to BASE_URL.
    #[arg(long = "base-internal-url", env = "BASE_INTERNAL_URL")]
    pub base_internal_url: Option<String>,
}

impl PublicUrls {
    pub fn internal(&self) -> &str {
        self.base_internal_url.as_deref().unwrap_or(&self.base_url)
    }
}

#[derive(Debug, Clone, Args)]
pub struct JobDefaults {
    /// Wall-clock limit in seconds of a job whose script sets no `timeout`.
    #[arg(long = "job-timeout", env = "JOB_TIMEOUT", default_value = "900", value_parser = seconds)]
    pub timeout: Duration,

    /// Times a job is started before it is failed (a worker died while running it each time).
    #[arg(
        long = "job-max-attempts",
        env = "JOB_MAX_ATTEMPTS",
        default_value_t = 3
    )]
    pub max_attempts: i32,

    /// Seconds a running job stays its attempt's after the attempt's last lease renewal (every
    /// third of the smaller of this and JOB_ACK_WAIT) before another delivery may take it
    /// over; a worker that cannot renew stops the job itself first. Defaults to twice
    /// JOB_ACK_WAIT.
    #[arg(long = "job-lease-timeout", env = "JOB_LEASE_TIMEOUT", value_parser = seconds)]
    pub lease_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Worker tags to consume, comma-separated; each is a durable consumer `workers-<tag>`.
    #[arg(
        long = "worker-tags",
        env = "WORKER_TAGS",
        default_value = "default",
        value_delimiter = ','
    )]
    pub tags: Vec<String>,

    /// Jobs one worker process runs at once.
    #[arg(long = "worker-slots", env = "WORKER_SLOTS", default_value_t = 8)]
    pub slots: usize,

    /// Name recorded on the jobs this worker runs (defaults to hostname-pid).
    #[arg(long = "worker-name", env = "WORKER_NAME")]
    pub name: Option<String>,

    /// Bytes of output kept per job; the rest is cut with a marker.
    #[arg(long = "max-log-size", env = "MAX_LOG_SIZE", default_value_t = 2 * 1024 * 1024)]
    pub max_log_size: usize,

    /// Users each slot's jobs run as, `FIRST-LAST` (one per slot), when the worker may change
    /// users (root, or CAP_SETUID and CAP_SETGID); `none` runs jobs as the worker's own user.
    #[arg(
        long = "job-uid-range",
        env = "JOB_UID_RANGE",
        default_value = "61000-61999"
    )]
    pub job_uid_range: String,

    /// Whether each job user gets a cgroup with the job's memory and process limits: `auto`
    /// only where moving a process into one is cheap (cgroup v2 mounted with `favordynmods`;
    /// elsewhere each move can wait 7–15 ms for the kernel), `on` wherever the worker may make
    /// cgroups, `off` never.
    #[arg(
        long = "job-cgroups",
        env = "JOB_CGROUPS",
        value_enum,
        default_value = "auto"
    )]
    pub job_cgroups: JobCgroups,

    /// Bytes of heap and data a job's process may use (RLIMIT_DATA), and all its processes
    /// together where the worker may make cgroups.
    #[arg(
        long = "job-memory-limit",
        env = "JOB_MEMORY_LIMIT",
        default_value_t = 2 * 1024 * 1024 * 1024
    )]
    pub job_memory_limit: u64,

    /// Processes a job may run at once (RLIMIT_NPROC; applied when it has a user of its own).
    #[arg(
        long = "job-max-processes",
        env = "JOB_MAX_PROCESSES",
        default_value_t = 512
    )]
    pub job_max_processes: u64,

    /// Files a job's process may hold open (RLIMIT_NOFILE).
    #[arg(
        long = "job-max-open-files",
        env = "JOB_MAX_OPEN_FILES",
        default_value_t = 1024
    )]
    pub job_max_open_files: u64,

    /// Largest file a job may write, in bytes (RLIMIT_FSIZE).
    #[arg(
        long = "job-max-file-size",
        env = "JOB_MAX_FILE_SIZE",
        default_value_t = 1024 * 1024 * 1024
    )]
    pub job_max_file_size: u64,

    /// Bytes a job may print in all; past it the job is killed and fails (`OutputTooLarge`).
    #[arg(
        long = "max-output-size",
        env = "MAX_OUTPUT_SIZE",
        default_value_t = 64 * 1024 * 1024
    )]
    pub max_output_size: u64,

    /// Bytes of a job's result; a larger one fails the job (`ResultTooLarge`).
    #[arg(
        long = "max-result-size",
        env = "MAX_RESULT_SIZE",
        default_value_t = 16 * 1024 * 1024
    )]
    pub max_result_size: u64,

    /// Address of the worker's `/healthz` and `/readyz`.
    #[arg(
        long = "worker-health-addr",
        env = "WORKER_HEALTH_ADDR",
        default_value = "0.0.0.0:8001"
    )]
    pub health_addr: SocketAddr,

    /// Python interpreter for `python3` scripts (a venv with `wmill` lets scripts call back).
    #[arg(
        long = "worker-python",
        env = "WORKER_PYTHON",
        default_value = "/usr/bin/python3"
    )]
    pub python: PathBuf,

    /// Keep runtimes ready before jobs arrive: Python fork servers, bun and deno processes
    /// started ahead (each job still gets a process, user and directory of its own); `0` or
    /// `false` starts every job's interpreter cold.
    #[arg(
        long = "worker-warm",
        env = "WORKER_WARM",
        default_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub warm: bool,

    /// Modules a second Python fork server imports once at start (comma-separated), so that no
    /// job pays for importing them: scripts that name one fork from it, every other script from
    /// a bare server; only installed packages, never a script's own.
    #[arg(
        long = "worker-python-preimport",
        env = "WORKER_PYTHON_PREIMPORT",
        default_value = "wmill"
    )]
    pub python_preimport: String,

    /// Bash for `bash` scripts.
    #[arg(long = "worker-bash", env = "WORKER_BASH", default_value = "/bin/bash")]
    pub bash: PathBuf,

    /// Bun for `bun` scripts (a bare name is looked up on PATH).
    #[arg(long = "worker-bun", env = "WORKER_BUN", default_value = "bun")]
    pub bun: PathBuf,

    /// Deno for `deno` scripts (a bare name is looked up on PATH).
    #[arg(long = "worker-deno", env = "WORKER_DENO", default_value = "deno")]
    pub deno: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log line format. Levels and targets come from RUST_LOG (default `info`).
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Where to send traces by OTLP over HTTP/protobuf (`http://collector:4318`; spans go to
    /// `/v1/traces` under it). Unset: no exporter at all. The exporter also reads the other
    /// `OTEL_EXPORTER_OTLP_*` variables (headers, timeout, a traces-only endpoint).
    #[arg(
        long = "otel-exporter-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub otlp_endpoint: Option<String>,

    /// The `service.name` of exported spans (default `millrace-api`, `millrace-worker`, …).
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JobCgroups {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmtpTls {
    /// Plain SMTP (a relay on the same host or network).
    None,
    /// Upgrade with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone, Args)]
pub struct SmtpConfig {
    /// SMTP server for token expiry emails; no emails when unset.
    #[arg(long = "smtp-host", env = "SMTP_HOST")]
    pub host: Option<String>,

    /// SMTP port.
    #[arg(long = "smtp-port", env = "SMTP_PORT", default_value_t = 587)]
    pub port: u16,

    /// Sender address of the emails.
    #[arg(
        long = "smtp-from",
        env = "SMTP_FROM",
        default_value = "millrace@localhost"
    )]
    pub from: String,

    /// SMTP user name (no authentication when unset).
    #[arg(long = "smtp-username", env = "SMTP_USERNAME")]
    pub username: Option<String>,

    /// SMTP password.
    #[arg(long = "smtp-password", env = "SMTP_PASSWORD", hide_env_values = true)]
    pub password: Option<Secret>,

    /// How to secure the SMTP connection.
    #[arg(
        long = "smtp-tls",
        env = "SMTP_TLS",
        value_enum,
        default_value = "starttls"
    )]
    pub tls: SmtpTls,

    /// Seconds between sweeps for expiring and expired tokens (and `last_used_at` updates).
    #[arg(long = "token-sweep-interval", env = "TOKEN_SWEEP_INTERVAL", default_value = "60", value_parser = seconds)]
    pub sweep_interval: Duration,
}

/// The instance's default object storage (MinIO/S3) for multipart uploads and scripts' files;
/// a workspace's own settings (`/api/w/{ws}/workspaces/object_storage`) take precedence.
#[derive(Debug, Clone, Args)]
pub struct S3Config {
    /// S3 endpoint URL of the default object storage (`http(s)://host[:port]`); none when unset.
    #[arg(long = "s3-endpoint", env = "S3_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Bucket of the default object storage (workspaces share it, each under `<workspace>/`).
    #[arg(long = "s3-bucket", env = "S3_BUCKET")]
    pub bucket: Option<String>,

    /// Region of the default object storage (us-east-1 when unset).
    #[arg(long = "s3-region", env = "S3_REGION")]
    pub region: Option<String>,

    /// Access key of the default object storage.
    #[arg(long = "s3-access-key", env = "S3_ACCESS_KEY", hide_env_values = true)]
    pub access_key: Option<String>,

    /// Secret key of the default object storage (never logged or returned).
    #[arg(long = "s3-secret-key", env = "S3_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,

    /// Largest total size in bytes of the file parts of one multipart webhook (or of one file a
    /// script uploads) → 413 above it.
    #[arg(long = "max-upload-size", env = "MAX_UPLOAD_SIZE", default_value_t = 1024 * 1024 * 1024)]
    pub max_upload_size: u64,

    /// Internal hosts that workspaces' own object storage endpoints may name, comma-separated:
    /// `name`, `name:port`, an IP address, `ip:port` (`[v6]:port`) or a CIDR block. Without an
    /// entry, an endpoint that resolves to a loopback, link-local, private or other non-public
    /// address is refused (the `S3_*` default storage is the operator's and is never checked).
    #[arg(
        long = "object-storage-allowed-hosts",
        env = "OBJECT_STORAGE_ALLOWED_HOSTS",
        default_value = ""
    )]
    pub allowed_hosts: String,
}

/// Where the API's `/metrics` is served (`METRICS_BIND_ADDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    /// On `BIND_ADDR`, beside the API.
    Api,
    /// On a listener of its own only.
    Own(SocketAddr),
    Off,
}

pub fn metrics_addr(raw: &str) -> Result<MetricsAddr, String> {
    match raw.trim() {
        "" => Ok(MetricsAddr::Api),
        "off" => Ok(MetricsAddr::Off),
        addr => addr
            .parse()
            .map(MetricsAddr::Own)
            .map_err(|_| format!("{addr:?} is not an address (host:port), nor empty, nor \"off\"")),
    }
}
