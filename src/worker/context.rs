//! What every job attempt of one worker process shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::runtimes::Runtimes;
use super::sandbox::Sandbox;
use super::warm::Warm;
use crate::domain::{JobId, ScriptHash, ScriptLang, WorkspaceId};
use crate::flows::driver::FlowDriver;
use crate::queue::control::CancelJob;
use crate::queue::Bus;
use crate::store::{self, Pool, StoreError};

/// Settings of job execution, resolved from the configuration once.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    pub worker_name: String,
    pub base_url: String,
    pub base_internal_url: String,
    pub default_timeout: Duration,
    pub max_attempts: i32,
    pub max_log_size: usize,
    /// `MAX_OUTPUT_SIZE`: past it a job is killed.
    pub max_output_size: u64,
    pub ack_wait: Duration,
    /// `JOB_LEASE_TIMEOUT`: how long a running attempt owns its job without renewing.
    pub lease_timeout: Duration,
}

impl ExecSettings {
    /// How often a running attempt renews its lease: three times per lease (and per ack wait,
    /// like the progress acks), so that one slow or lost renewal never costs it the job.
    pub fn lease_renewal(&self) -> Duration {
        (self.lease_timeout.min(self.ack_wait) / 3).max(Duration::from_millis(200))
    }
}

/// A running job's cancel switch, and who pulled it.
struct Running {
    token: CancellationToken,
    request: Option<CancelJob>,
}

/// A job registered as running in this process; its token is cancelled to kill it.
pub struct Registered<'a> {
    ctx: &'a WorkerContext,
    id: JobId,
    pub token: CancellationToken,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.ctx
            .running
            .lock()
            .expect("running lock")
            .remove(&self.id);
    }
}

/// The code of a script version: immutable, so cached without expiry.
#[derive(Debug)]
pub struct ScriptCode {
    pub language: ScriptLang,
    pub content: String,
    /// Its jobs run in a dedicated process (see `worker::warm`).
    pub dedicated: bool,
}

pub struct WorkerContext {
    pub settings: ExecSettings,
    pub pool: Pool,
    pub bus: Bus,
    pub runtimes: Runtimes,
    /// The users jobs run as, and their limits.
    pub sandbox: Arc<Sandbox>,
    /// Runtimes ready before their jobs arrive.
    pub warm: Warm,
    pub job_key: Vec<u8>,
    /// Runs flow transitions: flow jobs, and the ends of flow steps.
    pub flows: FlowDriver,
    running: Mutex<HashMap<JobId, Running>>,
    scripts: Mutex<HashMap<(String, String), Arc<ScriptCode>>>,
}

impl WorkerContext {
    pub fn new(
        settings: ExecSettings,
        pool: Pool,
        bus: Bus,
        runtimes: Runtimes,
        sandbox: Sandbox,
        job_key: Vec<u8>,
        slots: usize,
    ) -> Self {
        let sandbox = Arc::new(sandbox);
        let warm = Warm::new(
            &runtimes,
            &sandbox,
            super::process::cpu_seconds(settings.default_timeout),
            slots,
        );
        let flows = FlowDriver::new(pool.clone(), bus.clone(), settings.worker_name.clone());
        Self {
            flows,
            settings,
            pool,
            bus,
            runtimes,
            sandbox,
            warm,
            job_key,
            running: Mutex::new(HashMap::new()),
            scripts: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a job before it is marked running, so no cancel can slip in between; the job
    /// is unregistered when the guard drops. `None` when this process runs the job already (a
    /// duplicate delivery).
    pub fn register(&self, id: JobId) -> Option<Registered<'_>> {
        let mut running = self.running.lock().expect("running lock");
        if running.contains_key(&id) {
            return None;
        }
        let token = CancellationToken::new();
        running.insert(
            id,
            Running {
                token: token.clone(),
                request: None,
            },
        );
        Some(Registered {
            ctx: self,
            id,
            token,
        })
    }

    /// A cancel broadcast: kills the job if this worker holds it.
    pub fn cancel(&self, request: CancelJob) {
        let mut running = self.running.lock().expect("running lock");
        if let Some(job) = running.get_mut(&request.id) {
            tracing::info!(job = %request.id, by = %request.canceled_by, "cancel requested");
            job.token.cancel();
            job.request = Some(request);
        }
    }

    /// Who cancelled the job, if this worker heard it.
    pub fn cancel_request(&self, id: JobId) -> Option<CancelJob> {
        let running = self.running.lock().expect("running lock");
        running.get(&id).and_then(|job| job.request.clone())
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running lock").len()
    }

    pub async fn script(
        &self,
        ws: &str,
        hash: &str,
    ) -> Result<Option<Arc<ScriptCode>>, StoreError> {
        let key = (ws.to_owned(), hash.to_owned());
        if let Some(code) = self.scripts.lock().expect("script lock").get(&key) {
            return Ok(Some(code.clone()));
        }
        let (Ok(ws_id), Ok(hash_id)) = (WorkspaceId::parse(ws), ScriptHash::parse(hash)) else {
            return Ok(None);
        };
        let Some(script) = store::scripts::by_hash(&self.pool, &ws_id, &hash_id).await? else {
            return Ok(None);
        };
        let code = Arc::new(ScriptCode {
            language: script.language,
            content: script.content,
            dedicated: script.dedicated_worker,
        });
        self.scripts
            .lock()
            .expect("script lock")
            .insert(key, code.clone());
        Ok(Some(code))
    }
}
