//! The one place where the pieces are wired: each subcommand builds its store, bus and services
//! here, so `main`, `dev` and the tests share one code path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSettings, AppState};
use crate::auth::Authenticator;
use crate::config::{
    AuthConfig, DatabaseConfig, HttpConfig, JobDefaults, MetricsAddr, NatsConfig, PublicUrls,
    S3Config, SmtpConfig, StreamLimits, WorkerConfig,
};
use crate::domain::Tag;
use crate::queue::setup::{self, QueueLayout};
use crate::queue::{Bus, Role};
use crate::scheduler::Scheduler;
use crate::store::{self, Pool};
use crate::sweeper::{Mailer, Sweeper};
use crate::worker::{ExecSettings, Runtimes, Sandbox, Worker};

/// The longest a stopping API waits for its last `queued` events to be published: a few of
/// their batches' PubAcks, well inside Kubernetes' default 30 s grace period.
const QUEUED_FLUSH_DEADLINE: Duration = Duration::from_secs(10);

pub fn layout(nats: &NatsConfig) -> QueueLayout {
    QueueLayout {
        stream_replicas: nats.stream_replicas,
        ack_wait: nats.ack_wait,
    }
}

pub fn parse_tags(raw: &[String]) -> anyhow::Result<Vec<Tag>> {
    let tags = raw
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(Tag::parse)
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!tags.is_empty(), "WORKER_TAGS names no tag");
    Ok(tags)
}

/// Connects to PostgreSQL, retrying while it starts (a pod may come up before its database).
pub async fn connect_store(config: &DatabaseConfig) -> anyhow::Result<Pool> {
    let pool = store::connect(config).await.context("PostgreSQL")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reachable = pool.get().await.map(drop);
        match reachable {
            Ok(()) => return Ok(pool),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for PostgreSQL");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("PostgreSQL unreachable: {e}")),
        }
    }
}

/// `millrace migrate`: the schema, then the streams and consumers.
pub async fn migrate(
    db: &DatabaseConfig,
    nats: &NatsConfig,
    tags: &[Tag],
    limits: &StreamLimits,
) -> anyhow::Result<()> {
    let pool = connect_store(db).await?;
    let applied = store::migrate::run(&pool).await.context("migrations")?;
    tracing::info!(?applied, "database schema is current");
    let bus = Bus::connect(nats, Role::Migrate).await?;
    setup::declare_all(&bus, tags, &layout(nats), limits).await?;
    bus.flush().await?;
    tracing::info!("NATS streams and consumers declared");
    Ok(())
}

/// A bound, not yet serving API.
pub struct ApiServer {
    listener: TcpListener,
    /// `/metrics` on an address of its own (`METRICS_BIND_ADDR`).
    metrics_listener: Option<TcpListener>,
    state: AppState,
    mailer: Option<Mailer>,
    sweep_interval: Duration,
    scheduler_interval: Duration,
    storage: api::ObjectStorage,
}

impl ApiServer {
    pub async fn build(
        db: &DatabaseConfig,
        nats: &NatsConfig,
        http: &HttpConfig,
        urls: &PublicUrls,
        auth: &AuthConfig,
        smtp: &SmtpConfig,
    ) -> anyhow::Result<Self> {
        let mailer = Mailer::from_config(smtp)?;
        let pool = connect_store(db).await?;
        let bus = Bus::connect(nats, Role::Api).await?;
        let job_key = store::settings::job_token_key(&pool).await?;
        let secret = auth
            .superadmin_secret
            .as_ref()
            .map(|s| s.expose().to_owned());
        let authenticator = Arc::new(Authenticator::new(pool.clone(), secret.as_deref(), job_key));
        let settings = ApiSettings {
            max_body_size: http.max_body_size,
            include_headers: http
                .include_headers
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            base_url: urls.base_url.clone(),
            timeout_wait_result: http.timeout_wait_result,
            timeout_sse_stream: http.timeout_sse_stream,
            sync_error_status: api::sync_error_status(http.sync_error_status)?,
            auth_failures_per_minute: auth.failures_per_minute,
            trusted_proxy_hops: http.trusted_proxy_hops,
            idempotency_window: http.idempotency_window,
            max_schedule_ahead: http.max_schedule_ahead,
            submit_timeout: http.submit_timeout,
            max_inflight_requests: http.max_inflight_requests,
            max_inflight_body_bytes: http.max_inflight_body_bytes,
            metrics_on_api: http.metrics_bind_addr == MetricsAddr::Api,
            secret_box: auth
                .encryption_key
                .as_ref()
                .map(|key| crate::crypto::SecretBox::from_key(key.expose()))
                .transpose()
                .context("ENCRYPTION_KEY")?,
        };
        if let Some(sealer) = &settings.secret_box {
            // Not fatal: a schema older than the binary is `/readyz`'s to report.
            match store::object_storage::seal_clear_keys(&pool, sealer).await {
                Ok(0) => {}
                Ok(sealed) => tracing::info!(sealed, "object storage secret keys encrypted"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not encrypt object storage secret keys")
                }
            }
        }
        let state = AppState::new(settings, pool, bus, authenticator);
        let listener = TcpListener::bind(http.bind_addr).await.with_context(|| {
            format!(
                "cannot listen on {} (is another program using the port? set BIND_ADDR, \
                     e.g. BIND_ADDR=127.0.0.1:8001)",
                http.bind_addr
            )
        })?;
        let metrics_listener = match http.metrics_bind_addr {
            MetricsAddr::Own(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on METRICS_BIND_ADDR {addr}"))?,
            ),
            MetricsAddr::Api | MetricsAddr::Off => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
            mailer,
            sweep_interval: smtp.sweep_interval,
            scheduler_interval: http.scheduler_interval,
            storage: api::ObjectStorage::unconfigured(),
        })
    }

    /// Object storage: the instance default (`S3_*`) and `MAX_UPLOAD_SIZE`.
    pub fn with_object_storage(mut self, s3: &S3Config) -> anyhow::Result<Self> {
        self.storage = api::ObjectStorage::from_config(s3).context("object storage (S3_*)")?;
        Ok(self)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let addr = self.local_addr();
        let sweeper = Sweeper {
            pool: state.pool().clone(),
            bus: state.bus().clone(),
            auth: state.shared_auth(),
            mailer: self.mailer,
            interval: self.sweep_interval,
        };
        let sweeping = tokio::spawn(sweeper.run(shutdown.clone()));
        let scheduler = Scheduler {
            pool: state.pool().clone(),
            bus: state.bus().clone(),
            interval: self.scheduler_interval,
            deadline: state.config().submit_timeout,
        };
        let scheduling = tokio::spawn(scheduler.run(shutdown.clone()));
        let invalidations = state.bus().invalidations().await?;
        let listener_state = state.clone();
        let watcher = tokio::spawn(async move {
            use futures::StreamExt;
            futures::pin_mut!(invalidations);
            while let Some(message) = invalidations.next().await {
                api::apply_invalidation(&listener_state, &message);
            }
        });
        let metrics = self.metrics_listener.map(|listener| {
            let app = api::metrics_router(state.clone());
            let stop = shutdown.clone().cancelled_owned();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        });
        tracing::info!(%addr, "API listening");
        let bus = state.bus().clone();
        let app = api::router(state)
            .layer(axum::Extension(self.storage))
            .into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        // The last requests' `queued` events may still wait for their batch.
        bus.flush_queued(QUEUED_FLUSH_DEADLINE).await;
        watcher.abort();
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        let _ = sweeping.await;
        let _ = scheduling.await;
        served.context("HTTP server")
    }
}

pub async fn build_worker(
    db: &DatabaseConfig,
    nats: &NatsConfig,
    config: &WorkerConfig,
    urls: &PublicUrls,
    jobs: &JobDefaults,
) -> anyhow::Result<(Worker, Pool, Bus)> {
    let lease_timeout = jobs.lease_timeout.unwrap_or(nats.ack_wait * 2);
    anyhow::ensure!(
        !lease_timeout.is_zero(),
        "JOB_LEASE_TIMEOUT (by default twice JOB_ACK_WAIT) must be at least 1 second"
    );
    let pool = connect_store(db).await?;
    let bus = Bus::connect(nats, Role::Worker).await?;
    let job_key = store::settings::job_token_key(&pool).await?;
    let name = config.name.clone().unwrap_or_else(default_worker_name);
    let settings = ExecSettings {
        worker_name: name,
        base_url: urls.base_url.clone(),
        base_internal_url: urls.internal().to_owned(),
        default_timeout: jobs.timeout,
        max_attempts: jobs.max_attempts,
        max_log_size: config.max_log_size,
        max_output_size: config.max_output_size,
        ack_wait: nats.ack_wait,
        lease_timeout,
    };
    let runtimes = Runtimes::new(config);
    let slots = config.slots.max(1);
    crate::worker::check_process_support()
        .map_err(|e| anyhow::anyhow!("this worker cannot follow its jobs' processes: {e}"))?;
    let sandbox = Sandbox::new(
        config,
        slots,
        crate::worker::reserved_users(&runtimes, slots),
    )?;
    let worker = Worker::new(
        settings,
        pool.clone(),
        bus.clone(),
        (runtimes, sandbox),
        job_key,
        parse_tags(&config.tags)?,
        config.slots,
    );
    Ok((worker, pool, bus))
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// The worker's `/healthz`, `/readyz` and `/metrics` (for its `tags`).
pub async fn serve_worker_health(
    addr: SocketAddr,
    pool: Pool,
    bus: Bus,
    tags: Vec<Tag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let backlogs = Arc::new(crate::metrics::Backlogs::new(bus.clone(), &tags));
    let scrape_pool = pool.clone();
    let ready = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let (pool, backlogs) = (scrape_pool.clone(), backlogs.clone());
                async move {
                    backlogs.refresh().await;
                    let text = crate::metrics::render(crate::metrics::Role::Worker, &pool);
                    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let (pool, bus) = (pool.clone(), bus.clone());
                async move {
                    match crate::health::readiness(&pool, &bus).await {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                    }
                }
            }),
        );
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, ready)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("worker health server")
}

/// Fires on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down");
        fire.cancel();
    });
    token
}
