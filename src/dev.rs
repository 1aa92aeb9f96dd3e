//! `millrace dev`: the whole system in one process for a laptop. Starts `nats-server` and
//! PostgreSQL under one data directory unless URLs are given, migrates, creates a workspace,
//! a user with a token and an example script, then serves the API and runs a worker.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::app::{self, ApiServer};
use crate::auth::token;
use crate::config::{
    AuthConfig, DatabaseConfig, HttpConfig, JobDefaults, NatsConfig, PublicUrls, S3Config, Secret,
    SmtpConfig, StreamLimits, WorkerConfig,
};
use crate::domain::{RunnablePath, ScriptHash, ScriptLang, Username, WorkspaceId};
use crate::local::{self, DirLock, Durability, LocalNats, LocalPostgres};
use crate::queue::Role;
use crate::store::{
    self, scripts::NewScript, tokens::NewToken, users::User, workspaces::Membership,
};

#[derive(Debug, Clone, Args)]
pub struct DevOptions {
    /// Where `dev` keeps NATS and PostgreSQL data.
    #[arg(
        long = "data-dir",
        env = "MILLRACE_DATA_DIR",
        default_value = ".millrace"
    )]
    pub data_dir: PathBuf,

    /// Use this PostgreSQL instead of starting one.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Use this NATS instead of starting one.
    #[arg(long = "nats-url", env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// The nats-server binary `dev` starts (2.10 or newer).
    #[arg(
        long = "nats-server-bin",
        env = "NATS_SERVER_BIN",
        default_value = "nats-server"
    )]
    pub nats_server_bin: PathBuf,

    /// Directory of PostgreSQL's initdb and pg_ctl.
    #[arg(
        long = "pg-bin-dir",
        env = "PG_BIN_DIR",
        default_value = "/usr/lib/postgresql/15/bin"
    )]
    pub pg_bin_dir: PathBuf,
}

/// The services `dev` started; dropping them stops them, then lets go of the directories.
struct LocalServices {
    nats: Option<LocalNats>,
    _postgres: Option<LocalPostgres>,
    _locks: Vec<DirLock>,
}

impl LocalServices {
    /// The NATS settings of one role: its own user on the NATS `dev` started, else what was
    /// configured for the given NATS.
    fn nats_for(&self, base: &NatsConfig, role: Role) -> NatsConfig {
        let mut config = base.clone();
        if let Some(local) = &self.nats {
            config.auth = local.auth(role.as_str());
        }
        config
    }
}

fn port_or_free(preferred: u16) -> anyhow::Result<u16> {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        Ok(preferred)
    } else {
        Ok(local::free_port()?)
    }
}

/// PostgreSQL refuses to run as root, and the `postgres` user must reach its data directory:
/// under a home directory it cannot, so the cluster then lives in /var/tmp, linked from here.
/// The directory (cluster, superuser password, socket) is private to PostgreSQL's user: see
/// [`LocalPostgres`].
fn postgres_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let wanted = data_dir.join("postgres");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    if !root || wanted.is_symlink() {
        let dir = std::fs::canonicalize(&wanted).unwrap_or(wanted);
        if root {
            check_owned_by_postgres_or_root(&dir)?;
        }
        return Ok(dir);
    }
    let digest = token::hash(&data_dir.display().to_string());
    let outside = PathBuf::from(format!(
        "/var/tmp/millrace-dev-{}",
        hex::encode(&digest[..6])
    ));
    match std::fs::DirBuilder::new().mode(0o700).create(&outside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("{}", outside.display())),
    }
    check_owned_by_postgres_or_root(&outside)?;
    if !wanted.exists() {
        std::os::unix::fs::symlink(&outside, &wanted)?;
    }
    Ok(outside)
}

/// /var/tmp is everybody's: a directory there by the name `dev` picks could have been made (or
/// linked elsewhere) by another user, to be handed the cluster and its password.
fn check_owned_by_postgres_or_root(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    let owner_ok = meta.uid() == 0 || Some(meta.uid()) == postgres_uid();
    anyhow::ensure!(
        meta.is_dir() && owner_ok,
        "{} is not a directory of root or postgres (made by another user?): remove it",
        dir.display()
    );
    Ok(())
}

/// The uid of the `postgres` user, if there is one.
fn postgres_uid() -> Option<u32> {
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found = std::ptr::null_mut();
    // SAFETY: the name is NUL-terminated, `buf` is as long as said, and `pwd` is read only
    // when getpwnam_r says it filled it (`found` non-null).
    let rc = unsafe {
        libc::getpwnam_r(
            c"postgres".as_ptr(),
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: filled by getpwnam_r, as checked above.
    Some(unsafe { pwd.assume_init() }.pw_uid)
}

async fn start_services(
    opts: &DevOptions,
    db: &mut DatabaseConfig,
    nats: &mut NatsConfig,
) -> anyhow::Result<LocalServices> {
    std::fs::create_dir_all(&opts.data_dir)?;
    let data_dir = std::fs::canonicalize(&opts.data_dir)?;
    // Before anything is started or stopped: what runs on these directories now is another
    // dev's, not a crash's.
    let mut locks = vec![DirLock::take(&data_dir)?];
    let pg_dir = match &opts.database_url {
        Some(_) => None,
        None => {
            LocalPostgres::check_programs(&opts.pg_bin_dir)?;
            // Reached through its link by any data directory that has it.
            let dir = postgres_dir(&data_dir)?;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("{}", dir.display()))?;
            locks.push(DirLock::take(&dir)?);
            Some(dir)
        }
    };
    let local_nats = match &opts.nats_url {
        Some(url) => {
            nats.url = url.clone();
            None
        }
        None => {
            let server = LocalNats::start(
                &opts.nats_server_bin,
                &data_dir.join("nats"),
                port_or_free(4222)?,
            )
            .await?;
            nats.url = server.url();
            Some(server)
        }
    };
    if let Some(url) = &opts.database_url {
        db.url = url.clone();
    }
    let local_pg = match pg_dir {
        None => None,
        Some(pg_dir) => {
            let server = LocalPostgres::start(
                &opts.pg_bin_dir,
                &pg_dir,
                port_or_free(5432)?,
                Durability::Fast,
            )?;
            server.create_database("millrace").await?;
            db.url = Secret::new(server.url("millrace"));
            Some(server)
        }
    };
    Ok(LocalServices {
        nats: local_nats,
        _postgres: local_pg,
        _locks: locks,
    })
}

/// The key that encrypts stored secrets (ENCRYPTION_KEY), made once and kept (0600) in the
/// data directory: a new key would leave what the old one sealed unreadable.
fn encryption_key(data_dir: &Path) -> anyhow::Result<Secret> {
    let file = data_dir.join("encryption.key");
    if let Ok(text) = std::fs::read_to_string(&file) {
        if !text.trim().is_empty() {
            return Ok(Secret::new(text.trim()));
        }
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let key = hex::encode(bytes);
    local::write_private(&file, &format!("{key}\n"))?;
    Ok(Secret::new(key))
}

const EXAMPLE_PATH: &str = "u/admin/hello";
const EXAMPLE_SCRIPT: &str =
    "def main(name: str = \"world\"):\n    return {\"greeting\": f\"hello {name}\"}\n";

/// How long the one-time login link `dev` prints stays valid.
const LOGIN_LINK_MINUTES: i64 = 15;

/// What `bootstrap` made for the admin: an API token and a one-time login code for the page.
struct Credentials {
    token: String,
    login_code: String,
}

/// A workspace `demo`, a user `admin@millrace.local` in it, a fresh token, a one-time login code
/// and an example script.
async fn bootstrap(db: &DatabaseConfig) -> anyhow::Result<Credentials> {
    let pool = app::connect_store(db).await?;
    let ws = WorkspaceId::parse("demo")?;
    let email = "admin@millrace.local";
    let username = Username::parse("admin")?;
    let user = User {
        email: email.into(),
        name: Some("Admin".into()),
        super_admin: false,
    };
    store::users::create(&pool, &user, None).await?;
    store::workspaces::create(&pool, &ws, "Demo", email, None).await?;
    let member = Membership {
        username,
        is_admin: true,
        operator: false,
    };
    store::workspaces::add_member(&pool, &ws, email, &member).await?;
    let secret = token::generate();
    let hash = token::hash(&secret);
    store::tokens::insert(
        &pool,
        &NewToken {
            hash: &hash,
            prefix: token::prefix(&secret),
            email,
            label: Some("millrace dev"),
            scopes: None,
            workspace_id: None,
            expiration: None,
            session: false,
        },
    )
    .await?;
    let login_code = token::generate();
    let expires_at = chrono::Utc::now() + chrono::Duration::minutes(LOGIN_LINK_MINUTES);
    store::login_codes::insert(&pool, &token::hash(&login_code), email, expires_at).await?;
    let path = RunnablePath::parse(EXAMPLE_PATH)?;
    if store::scripts::latest_by_path(&pool, &ws, &path)
        .await?
        .is_none()
    {
        let script = NewScript {
            hash: ScriptHash::from_digest(&token::hash(EXAMPLE_SCRIPT)),
            path,
            parent_hash: None,
            content: EXAMPLE_SCRIPT.into(),
            language: ScriptLang::Python3,
            summary: "Says hello".into(),
            description: String::new(),
            schema: None,
            tag: None,
            timeout: None,
            dedicated_worker: false,
            kind: "script".into(),
            created_by: "admin".into(),
        };
        store::scripts::create(&pool, &ws, &script).await?;
    }
    Ok(Credentials {
        token: secret,
        login_code,
    })
}

/// Everything `dev` is configured with.
pub struct DevConfig {
    pub opts: DevOptions,
    pub db: DatabaseConfig,
    pub nats: NatsConfig,
    pub http: HttpConfig,
    pub urls: PublicUrls,
    pub auth: AuthConfig,
    pub smtp: SmtpConfig,
    pub s3: S3Config,
    pub worker: WorkerConfig,
    pub jobs: JobDefaults,
    pub streams: StreamLimits,
}

pub async fn run(config: DevConfig) -> anyhow::Result<()> {
    let DevConfig {
        opts,
        mut db,
        mut nats,
        mut http,
        mut urls,
        mut auth,
        smtp,
        s3,
        worker,
        jobs,
        streams,
    } = config;
    let services = start_services(&opts, &mut db, &mut nats).await?;
    if auth.encryption_key.is_none() {
        auth.encryption_key = Some(encryption_key(&opts.data_dir)?);
    }
    let tags = app::parse_tags(&worker.tags)?;
    app::migrate(
        &db,
        &services.nats_for(&nats, Role::Migrate),
        &tags,
        &streams,
    )
    .await?;
    let credentials = bootstrap(&db).await.context("bootstrap")?;
    if http.bind_addr.ip().is_unspecified() {
        http.bind_addr.set_ip([127, 0, 0, 1].into());
    }
    let api_nats = services.nats_for(&nats, Role::Api);
    let server = ApiServer::build(&db, &api_nats, &http, &urls, &auth, &smtp)
        .await?
        .with_object_storage(&s3)?;
    if urls.base_url == "http://localhost:8000" {
        urls.base_url = format!("http://{}", server.local_addr());
    }
    let shutdown = app::shutdown_on_signal();
    let worker_nats = services.nats_for(&nats, Role::Worker);
    let (worker, _, _) = app::build_worker(&db, &worker_nats, &worker, &urls, &jobs).await?;
    let layout = app::layout(&nats);
    let worker_shutdown = shutdown.clone();
    let worker_task = tokio::spawn(async move { worker.run(&layout, worker_shutdown).await });
    print_banner(&urls.base_url, &credentials);
    if let Some(local) = &services.nats {
        println!(
            "Job events on NATS: {} as the read-only user `events`, password in {}\n",
            local.url(),
            opts.data_dir.join("nats/users.json").display()
        );
    }
    server.run_until(shutdown.clone()).await?;
    shutdown.cancel();
    worker_task.await??;
    Ok(())
}

fn print_banner(base: &str, credentials: &Credentials) {
    let Credentials { token, login_code } = credentials;
    println!(
        "\nMillrace is up at {base}\n\
         workspace: demo\n\
         token:     {token}\n\
         Runs page: {base}/?login={login_code}\n           \
         (a one-time login link for admin, valid for {LOGIN_LINK_MINUTES} minutes; \
         afterwards log in there with the token)\n\
         script:    {EXAMPLE_PATH} (python3)\n\n\
         Call its webhook (async, answers a job id):\n  \
         curl -X POST -H \"Authorization: Bearer {token}\" -H 'Content-Type: application/json' \\\n    \
         -d '{{\"name\": \"mill\"}}' {base}/api/w/demo/jobs/run/p/{EXAMPLE_PATH}\n\
         Read the result:\n  \
         curl -H \"Authorization: Bearer {token}\" {base}/api/w/demo/jobs_u/completed/get_result/<job id>\n\n\
         Stop with Ctrl-C.\n"
    );
}
