//! The process's Prometheus metrics (`/metrics`, Prometheus text format 0.0.4), with the
//! `prometheus-client` crate. Every series is listed in docs/metrics.md.
//!
//! Recording costs an atomic add (and, for a series seen for the first time, one insertion):
//! every label is a `&'static str` or a number, so nothing is allocated per request or job.
//! Values that live elsewhere (the PostgreSQL pool, JetStream's backlog) are read when scraped.

mod intern;
mod pending;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use intern::{route_label, tag_label};
pub use pending::Backlogs;

use crate::domain::{JobKind, JobStatus, ScriptLang};
use crate::store::Pool;

/// The content type of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// HTTP latencies: a cached lookup takes tens of microseconds, a sync call as long as its job.
const HTTP_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Jobs: a warm bash job ends in milliseconds, others run for minutes or an hour.
const JOB_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

#[derive(Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    /// The route's template (`/api/w/{workspace}/jobs/run/p/{*path}`), never the path itself.
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

/// Which kind of webhook a run route is.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    mode: &'static str,
    reason: &'static str,
}

/// A job's labels: bounded by the operator's tags, the languages and the job kinds.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub tag: &'static str,
    pub language: &'static str,
    /// `script`, `flow`, or `flow_step` (a flow's step, run as a script).
    pub kind: &'static str,
}

impl JobLabels {
    /// The labels of a job as its row stores them (`step`: a flow's step).
    pub fn of_row(tag: &str, language: Option<&str>, kind: &str, step: bool) -> Self {
        let kind = if kind == JobKind::Flow.as_str() {
            JobKind::Flow
        } else {
            JobKind::Script
        };
        Self::new(tag, language.and_then(|l| l.parse().ok()), kind, step)
    }

    pub fn new(tag: &str, language: Option<ScriptLang>, kind: JobKind, step: bool) -> Self {
        Self {
            tag: tag_label(tag),
            language: language.map_or("none", ScriptLang::as_str),
            kind: match (kind, step) {
                (JobKind::Flow, _) => "flow",
                (JobKind::Script, true) => "flow_step",
                (JobKind::Script, false) => "script",
            },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    tag: &'static str,
    language: &'static str,
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TagLabels {
    tag: &'static str,
}

/// How a job ended, for the counters and the duration histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEnd {
    Success,
    Failure,
    Canceled,
}

impl JobEnd {
    /// How a job whose status is `status` (a completed one) ended.
    pub fn of(status: JobStatus) -> Self {
        match status {
            JobStatus::Success => Self::Success,
            JobStatus::Canceled => Self::Canceled,
            _ => Self::Failure,
        }
    }
}

struct Metrics {
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, Buckets>,
    webhooks_accepted: Family<WebhookLabels, Counter>,
    webhooks_refused: Family<RefusedLabels, Counter>,
    jobs_queued: Family<JobLabels, Counter>,
    jobs_started: Family<JobLabels, Counter>,
    jobs_completed: Family<JobLabels, Counter>,
    jobs_failed: Family<JobLabels, Counter>,
    jobs_canceled: Family<JobLabels, Counter>,
    job_duration: Family<EndedLabels, Histogram, Buckets>,
    queue_wait: Family<JobLabels, Histogram, Buckets>,
    slots: Gauge,
    slots_busy: Gauge,
    sync_waiters: Gauge,
    sse_streams: Gauge,
    pool_connections: Family<StateLabels, Gauge>,
    pool_waiting: Gauge,
    pool_waited: Counter,
    pool_timed_out: Counter,
    queued_events_dropped: Counter,
    backlog_pending: Family<TagLabels, Gauge>,
    backlog_ack_pending: Family<TagLabels, Gauge>,
    /// What an API process exports, and what a worker does.
    api: Registry,
    worker: Registry,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let http = Buckets(&HTTP_BUCKETS);
        let jobs = Buckets(&JOB_BUCKETS);
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http),
            webhooks_accepted: Family::default(),
            webhooks_refused: Family::default(),
            jobs_queued: Family::default(),
            jobs_started: Family::default(),
            jobs_completed: Family::default(),
            jobs_failed: Family::default(),
            jobs_canceled: Family::default(),
            job_duration: Family::new_with_constructor(jobs),
            queue_wait: Family::new_with_constructor(jobs),
            slots: Gauge::default(),
            slots_busy: Gauge::default(),
            sync_waiters: Gauge::default(),
            sse_streams: Gauge::default(),
            pool_connections: Family::default(),
            pool_waiting: Gauge::default(),
            pool_waited: Counter::default(),
            pool_timed_out: Counter::default(),
            queued_events_dropped: Counter::default(),
            backlog_pending: Family::default(),
            backlog_ack_pending: Family::default(),
            api: Registry::with_prefix("millrace"),
            worker: Registry::with_prefix("millrace"),
        };
        m.registered()
    }

    fn registered(mut self) -> Self {
        let api = &mut self.api;
        api.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            self.http_requests.clone(),
        );
        api.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response's headers, by method and route template",
            self.http_duration.clone(),
        );
        api.register(
            "webhooks_accepted",
            "Run requests (webhooks) that created or found their job, by mode",
            self.webhooks_accepted.clone(),
        );
        api.register(
            "webhooks_refused",
            "Run requests (webhooks) refused without a job, by mode and reason",
            self.webhooks_refused.clone(),
        );
        api.register(
            "sync_waiters",
            "Sync run requests waiting for their job's result",
            self.sync_waiters.clone(),
        );
        api.register(
            "queued_events_dropped",
            "`queued` job events not published: their backlog was full, or the bus closed",
            self.queued_events_dropped.clone(),
        );
        api.register(
            "sse_streams",
            "Server-sent event streams following a job",
            self.sse_streams.clone(),
        );
        let worker = &mut self.worker;
        worker.register(
            "job_duration_seconds",
            "How long jobs' scripts ran, by how they ended",
            self.job_duration.clone(),
        );
        worker.register(
            "job_queue_wait_seconds",
            "Time from a job's creation (or due time) to its start",
            self.queue_wait.clone(),
        );
        worker.register(
            "worker_slots",
            "Jobs this worker may run at once (WORKER_SLOTS)",
            self.slots.clone(),
        );
        worker.register(
            "worker_slots_busy",
            "Slots of this worker running a job",
            self.slots_busy.clone(),
        );
        worker.register(
            "jetstream_pending_messages",
            "Jobs waiting in a tag's work queue, not yet delivered (consumer info, cached)",
            self.backlog_pending.clone(),
        );
        worker.register(
            "jetstream_ack_pending_messages",
            "Jobs of a tag delivered to workers and not yet acknowledged (consumer info, cached)",
            self.backlog_ack_pending.clone(),
        );
        // A job's life is counted by the process that moved it on (the API queues and cancels
        // queued jobs, a worker starts and ends them, and queues a flow's steps): summed over
        // the processes, queued - (completed + failed + canceled) is what is in flight.
        for registry in [&mut self.api, &mut self.worker] {
            registry.register(
                "jobs_queued",
                "Jobs (flows, flow steps) recorded and queued by this process",
                self.jobs_queued.clone(),
            );
            registry.register(
                "jobs_started",
                "Jobs whose first attempt (or flows whose run) this process started",
                self.jobs_started.clone(),
            );
            registry.register(
                "jobs_completed",
                "Jobs this process ended successfully",
                self.jobs_completed.clone(),
            );
            registry.register(
                "jobs_failed",
                "Jobs this process ended as failed",
                self.jobs_failed.clone(),
            );
            registry.register(
                "jobs_canceled",
                "Jobs this process ended as canceled",
                self.jobs_canceled.clone(),
            );
            registry.register(
                "db_pool_connections",
                "PostgreSQL pool connections, in use or idle",
                self.pool_connections.clone(),
            );
            registry.register(
                "db_pool_waiting",
                "Requests waiting for a PostgreSQL pool connection",
                self.pool_waiting.clone(),
            );
            registry.register(
                "db_pool_waited",
                "PostgreSQL pool requests that had to wait for a connection",
                self.pool_waited.clone(),
            );
            registry.register(
                "db_pool_timed_out",
                "PostgreSQL pool requests that gave up waiting for a connection",
                self.pool_timed_out.clone(),
            );
        }
        self
    }
}

/// Which process is scraped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
}

/// The text a scrape gets: the pool's state read now, the rest as recorded.
pub fn render(role: Role, pool: &Pool) -> String {
    let m = &*METRICS;
    let state = pool.state();
    let idle = i64::from(state.idle_connections);
    let in_use = i64::from(state.connections) - idle;
    m.pool_connections
        .get_or_create(&StateLabels { state: "in_use" })
        .set(in_use);
    m.pool_connections
        .get_or_create(&StateLabels { state: "idle" })
        .set(idle);
    let stats = &state.statistics;
    // bb8 counts a get as started before it waits: what has not ended yet is waiting.
    let ended = stats.get_direct + stats.get_waited + stats.get_timed_out;
    m.pool_waiting
        .set(stats.get_started.saturating_sub(ended) as i64);
    raise_to(&m.pool_waited, stats.get_waited);
    raise_to(&m.pool_timed_out, stats.get_timed_out);
    let registry = match role {
        Role::Api => &m.api,
        Role::Worker => &m.worker,
    };
    let mut text = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// A counter that mirrors a total kept elsewhere: one atomic maximum, so that scrapes at once
/// cannot both add the same difference.
fn raise_to(counter: &Counter, total: u64) {
    counter
        .inner()
        .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
}

pub fn http_request(labels: &HttpLabels, latency: Duration) {
    let m = &*METRICS;
    m.http_requests.get_or_create(labels).inc();
    let route = RouteLabels {
        method: labels.method,
        route: labels.route,
    };
    m.http_duration
        .get_or_create(&route)
        .observe(latency.as_secs_f64());
}

pub fn webhook_accepted(mode: &'static str) {
    METRICS
        .webhooks_accepted
        .get_or_create(&WebhookLabels { mode })
        .inc();
}

pub fn webhook_refused(mode: &'static str, reason: &'static str) {
    METRICS
        .webhooks_refused
        .get_or_create(&RefusedLabels { mode, reason })
        .inc();
}

/// A `queued` event could not be handed to its publisher; returns how many were before.
pub fn queued_event_dropped() -> u64 {
    METRICS.queued_events_dropped.inc()
}

pub fn job_queued(labels: &JobLabels) {
    METRICS.jobs_queued.get_or_create(labels).inc();
}

/// A job's script starts, `waited` after it was created (or due).
pub fn job_started(labels: &JobLabels, waited: Option<Duration>) {
    let m = &*METRICS;
    m.jobs_started.get_or_create(labels).inc();
    if let Some(waited) = waited {
        m.queue_wait
            .get_or_create(labels)
            .observe(waited.as_secs_f64());
    }
}

/// A job's end, recorded by this process; `ran` is how long its script ran, if it ran.
pub fn job_ended(labels: &JobLabels, end: JobEnd, ran: Option<Duration>) {
    METRICS.job_ended(labels, end, ran);
}

impl Metrics {
    fn job_ended(&self, labels: &JobLabels, end: JobEnd, ran: Option<Duration>) {
        let (family, status) = match end {
            JobEnd::Success => (&self.jobs_completed, "success"),
            JobEnd::Failure => (&self.jobs_failed, "failure"),
            JobEnd::Canceled => (&self.jobs_canceled, "canceled"),
        };
        family.get_or_create(labels).inc();
        if let Some(ran) = ran {
            let ended = EndedLabels {
                tag: labels.tag,
                language: labels.language,
                kind: labels.kind,
                status,
            };
            self.job_duration
                .get_or_create(&ended)
                .observe(ran.as_secs_f64());
        }
    }
}

/// A flow's run starts (its first transition committed).
pub fn flow_started(tag: &str) {
    let labels = JobLabels::new(tag, None, JobKind::Flow, false);
    METRICS.jobs_started.get_or_create(&labels).inc();
}

pub fn set_worker_slots(slots: usize) {
    METRICS.slots.set(slots as i64);
}

/// Counts something open (a busy slot, a waiting sync caller, an SSE stream) while it lives.
#[must_use = "the gauge goes down when this is dropped"]
pub struct Open(&'static Gauge);

impl Open {
    fn on(gauge: &'static Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn slot_busy() -> Open {
    Open::on(&METRICS.slots_busy)
}

pub fn sync_waiter() -> Open {
    Open::on(&METRICS.sync_waiters)
}

pub fn sse_stream() -> Open {
    Open::on(&METRICS.sse_streams)
}

fn set_backlog(tag: &'static str, pending: u64, ack_pending: u64) {
    let m = &*METRICS;
    let labels = TagLabels { tag };
    m.backlog_pending.get_or_create(&labels).set(pending as i64);
    m.backlog_ack_pending
        .get_or_create(&labels)
        .set(ack_pending as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_by_prometheus_conventions() {
        // An instance of its own: other tests record into the process's.
        let m = Metrics::new();
        let labels = JobLabels::new("default", Some(ScriptLang::Bash), JobKind::Script, false);
        m.job_ended(&labels, JobEnd::Success, Some(Duration::from_millis(3)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &m.worker).unwrap();
        assert!(text.contains("# TYPE millrace_jobs_completed_total counter"));
        assert!(text.contains("# TYPE millrace_job_duration_seconds histogram"));
        assert!(text.contains(
            "millrace_jobs_completed_total{tag=\"default\",language=\"bash\",kind=\"script\"} 1"
        ));
    }

    #[test]
    fn a_mirrored_total_only_rises() {
        let counter = Counter::default();
        raise_to(&counter, 5);
        raise_to(&counter, 3);
        raise_to(&counter, 5);
        assert_eq!(counter.get(), 5);
        raise_to(&counter, 7);
        assert_eq!(counter.get(), 7);
    }
}
