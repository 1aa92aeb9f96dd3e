//! One NATS connection per process, shared by every request and job.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::control::{CancelJob, Invalidate};
use super::envelope::JobEnvelope;
use super::events::{JobDone, JobEvent, TokenEvent};
use super::subjects::{self, JobReply};
use super::QueueError;
use crate::config::{NatsAuth, NatsConfig};
use crate::domain::{JobId, Tag};

#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    epoch: tokio::sync::watch::Receiver<u64>,
    /// `queued` events on their way to the task that publishes them in batches.
    queued: tokio::sync::mpsc::Sender<Announce>,
}

/// What the task that publishes `queued` events is handed.
// Nearly all are events: boxing them would cost an allocation per job.
#[allow(clippy::large_enum_variant)]
enum Announce {
    Event(JobEvent),
    /// Answered once every event handed over before it was published (or refused).
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// `queued` events that may wait for their batch; one more is dropped (and counted) rather than
/// let a stalled events stream hold up ingestion.
const QUEUED_BACKLOG: usize = 16 * 1024;
/// `queued` events per batch: the last one's PubAck confirms the batch.
const QUEUED_BATCH: usize = 512;

/// One job's live subjects, and a signal that changes when the connection dropped or came
/// back since the subscription was made.
pub struct JobReplies<S> {
    pub updates: S,
    pub reconnected: tokio::sync::watch::Receiver<u64>,
}

/// JetStream's answer to a job's publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Where the message is in the stream; for a duplicate, where the first copy was stored.
    pub sequence: u64,
    /// A message with the same id was stored within the deduplication window: this one was
    /// dropped.
    pub duplicate: bool,
}

/// What a worker says about one job on its live subjects.
#[derive(Debug, Clone)]
pub enum JobUpdate {
    Started,
    Log(String),
    Stream(String),
    Progress(serde_json::Value),
    EarlyReturn(serde_json::Value),
    Done(JobDone),
}

fn encode(value: &impl Serialize) -> Bytes {
    // Our own types always serialise; a failure here is a programming error.
    Bytes::from(serde_json::to_vec(value).expect("wire types serialise"))
}

/// Waits for the PubAcks of messages sent one after the other.
async fn confirmed(acks: Vec<jetstream::context::PublishAckFuture>) -> Result<(), QueueError> {
    for ack in acks {
        ack.await.map_err(QueueError::refused)?;
    }
    Ok(())
}

fn msg_id_header(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

/// Publishes `queued` events as they come, in batches: each batch's messages are sent one after
/// the other without a reply subject, JetStream storing them as it stores any message on its
/// subjects, except the last, whose PubAck is awaited before the next batch goes. JetStream
/// handles one connection's messages to a stream in order, and what refuses a small event (no
/// stream, JetStream or its storage unavailable) refuses the whole batch, so that the last
/// PubAck stands for the batch — as long as the connection held: messages sent before a
/// reconnect may have been lost with it, which the connection's epoch (changed by every
/// disconnect and reconnect) tells, and which is logged. A refused batch is logged too. A PubAck
/// per event would cost nats-server and this process as much again as the job's own publish,
/// per webhook.
async fn announce_queued(
    client: async_nats::Client,
    js: jetstream::Context,
    epoch: tokio::sync::watch::Receiver<u64>,
    mut waiting: tokio::sync::mpsc::Receiver<Announce>,
) {
    let mut taken = Vec::with_capacity(QUEUED_BATCH);
    while waiting.recv_many(&mut taken, QUEUED_BATCH).await > 0 {
        let mut flushed = Vec::new();
        let mut batch = Vec::with_capacity(taken.len());
        for announce in taken.drain(..) {
            match announce {
                Announce::Event(event) => batch.push(event),
                Announce::Flushed(done) => flushed.push(done),
            }
        }
        if let Some(last) = batch.pop() {
            let count = batch.len() + 1;
            let before = *epoch.borrow();
            let sent = async {
                for event in &batch {
                    let (subject, headers, payload) = event_message(event);
                    client
                        .publish_with_headers(subject, headers, payload)
                        .await
                        .map_err(QueueError::publish)?;
                }
                let (subject, headers, payload) = event_message(&last);
                js.publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(QueueError::publish)?
                    .await
                    .map_err(QueueError::publish)
            };
            match sent.await {
                Err(e) => tracing::warn!(events = count, last_job = %last.id, error = %e,
                    "queued events may not have been stored"),
                Ok(_) if *epoch.borrow() != before => tracing::warn!(events = count,
                    last_job = %last.id,
                    "the NATS connection dropped while queued events were sent: some may be lost"),
                Ok(_) => {}
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn event_message(event: &JobEvent) -> (String, HeaderMap, Bytes) {
    (
        subjects::job_event(&event.workspace, event.kind.as_str()),
        msg_id_header(&event.msg_id()),
        encode(event),
    )
}

/// Which Millrace process connects: each has its own NATS user (nats/auth.conf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    Migrate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Migrate => "migrate",
        }
    }
}

/// The client's options for `auth`: with a password, a credentials file or an nkey.
async fn authenticated(auth: &NatsAuth) -> Result<async_nats::ConnectOptions, QueueError> {
    if let Some(path) = &auth.creds {
        return async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| QueueError::Connect(format!("NATS_CREDS {}: {e}", path.display())));
    }
    Ok(match (&auth.user, &auth.password, &auth.nkey) {
        (Some(user), Some(password), _) => async_nats::ConnectOptions::with_user_and_password(
            user.clone(),
            password.expose().to_owned(),
        ),
        (_, _, Some(seed)) => async_nats::ConnectOptions::with_nkey(seed.expose().to_owned()),
        _ => async_nats::ConnectOptions::new(),
    })
}

impl Bus {
    pub async fn connect(config: &NatsConfig, role: Role) -> Result<Self, QueueError> {
        // Bumped on every disconnect and reconnect: live messages may have been missed then, so
        // waiters fall back to the job store.
        let (epoch_tx, epoch) = tokio::sync::watch::channel(0u64);
        let client = authenticated(&config.auth)
            .await?
            .name(format!("millrace-{}", role.as_str()))
            // Replies come to an inbox only this role's user may subscribe to.
            .custom_inbox_prefix(format!("_INBOX_{}", role.as_str()))
            .event_callback(move |event| {
                let epoch_tx = epoch_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected | async_nats::Event::Disconnected => {
                            tracing::info!(%event, "NATS connection");
                            epoch_tx.send_modify(|e| *e += 1);
                        }
                        // Only when the client is closed or dropped: on purpose.
                        async_nats::Event::Closed => tracing::info!("NATS connection closed"),
                        other => tracing::warn!(event = %other, "NATS"),
                    }
                }
            })
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(config.url.as_str())
            .await
            .map_err(|e| QueueError::Connect(e.to_string()))?;
        // Wait (bounded) for the first connection so callers start with a working bus.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                return Err(QueueError::Connect(format!(
                    "no answer from {}",
                    config.url
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let js = jetstream::new(client.clone());
        let (queued, waiting) = tokio::sync::mpsc::channel(QUEUED_BACKLOG);
        tokio::spawn(announce_queued(
            client.clone(),
            js.clone(),
            epoch.clone(),
            waiting,
        ));
        Ok(Self {
            client,
            js,
            epoch,
            queued,
        })
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes a job (its id is the deduplication id) and waits, at most `deadline`, for
    /// JetStream to store it. A `Publish` error leaves it unknown whether the message was
    /// stored (the PubAck may be what was lost); `Full` means it was not.
    pub async fn publish_job(
        &self,
        tag: &Tag,
        envelope: &JobEnvelope,
        deadline: Duration,
    ) -> Result<Published, QueueError> {
        let msg_id = envelope.id.to_string();
        // An awaited PubAck is otherwise given up on after the context's own 5 s, however long
        // the caller allows.
        let mut js = self.js.clone();
        js.set_timeout(deadline);
        tokio::time::timeout(deadline, publish_job_on(&js, tag, envelope, &msg_id))
            .await
            .map_err(|_| {
                QueueError::Publish(format!("no PubAck within {}s", deadline.as_secs_f32()))
            })?
    }

    /// Publishes a job message under its own deduplication id: a flow's wake-up (the flow job
    /// again, due later) is not a duplicate of the flow's first message.
    pub async fn publish_job_as(
        &self,
        tag: &Tag,
        envelope: &JobEnvelope,
        msg_id: &str,
    ) -> Result<Published, QueueError> {
        publish_job_on(&self.js, tag, envelope, msg_id).await
    }

    /// Whether a worker consumer exists for `tag`, i.e. some worker serves it (or did, and
    /// its jobs wait for it to come back).
    pub async fn tag_is_served(&self, tag: &Tag) -> Result<bool, QueueError> {
        let stream = self
            .js
            .get_stream_no_info(subjects::JOBS_STREAM)
            .await
            .map_err(QueueError::request)?;
        use jetstream::context::ConsumerInfoErrorKind as Kind;
        match stream.consumer_info(subjects::worker_consumer(tag)).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                Kind::NotFound => Ok(false),
                Kind::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(QueueError::request(e)),
            },
        }
    }

    /// Publishes several jobs, sending them all before waiting for their PubAcks.
    pub async fn publish_jobs(&self, jobs: &[(Tag, JobEnvelope)]) -> Result<(), QueueError> {
        let mut acks = Vec::with_capacity(jobs.len());
        for (tag, envelope) in jobs {
            acks.push(send_job(&self.js, tag, envelope, &envelope.id.to_string()).await?);
        }
        confirmed(acks).await
    }

    /// Publishes job messages exactly as they were stored (`payload`: an envelope of a newer
    /// version keeps every field), each to its tag's subject under its own deduplication id.
    /// All are sent before any PubAck is awaited, and each gets its own answer, in order: one
    /// refused message does not hold back the others.
    pub async fn publish_stored_jobs(
        &self,
        jobs: Vec<(Tag, String, Bytes)>,
    ) -> Vec<Result<Published, QueueError>> {
        let mut sent = Vec::with_capacity(jobs.len());
        for (tag, msg_id, payload) in jobs {
            sent.push(
                self.js
                    .publish_with_headers(subjects::jobs(&tag), msg_id_header(&msg_id), payload)
                    .await
                    .map_err(QueueError::publish),
            );
        }
        futures::future::join_all(sent.into_iter().map(|sent| async move {
            let ack = sent?.await.map_err(QueueError::refused)?;
            Ok(Published {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        }))
        .await
    }

    /// Takes a published job back out of the queue (its row could not be written).
    pub async fn withdraw_job(&self, sequence: u64) -> Result<(), QueueError> {
        self.js
            .get_stream_no_info(subjects::JOBS_STREAM)
            .await
            .map_err(QueueError::request)?
            .delete_message(sequence)
            .await
            .map_err(QueueError::request)?;
        Ok(())
    }

    /// Publishes an event and waits for JetStream to store it.
    pub async fn publish_event(&self, event: &JobEvent) -> Result<(), QueueError> {
        self.send_event(event)
            .await?
            .await
            .map_err(QueueError::publish)?;
        Ok(())
    }

    async fn send_event(
        &self,
        event: &JobEvent,
    ) -> Result<jetstream::context::PublishAckFuture, QueueError> {
        let (subject, headers, payload) = event_message(event);
        self.js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(QueueError::publish)
    }

    /// Publishes a token event; `<prefix>:<kind>` deduplicates a second sweep's copy.
    pub async fn publish_token_event(&self, event: &TokenEvent) -> Result<(), QueueError> {
        let ack = self
            .js
            .publish_with_headers(
                subjects::token_event(&event.workspace, event.kind.as_str()),
                msg_id_header(&format!(
                    "{}:{}:{}",
                    event.token_prefix,
                    event.workspace,
                    event.kind.as_str()
                )),
                encode(event),
            )
            .await
            .map_err(QueueError::publish)?;
        ack.await.map_err(QueueError::publish)?;
        Ok(())
    }

    /// Publishes an event without waiting for JetStream to store it; a failure is logged.
    /// The message is on the connection when this returns, so events one task publishes this
    /// way stay in order.
    pub async fn publish_event_unconfirmed(&self, event: &JobEvent) {
        let (id, kind) = (event.id, event.kind.as_str());
        match self.send_event(event).await {
            Ok(ack) => {
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(job = %id, kind, error = %e, "event not stored");
                    }
                });
            }
            Err(e) => tracing::warn!(job = %id, kind, error = %e, "event not published"),
        }
    }

    /// Hands a `queued` event to the task that publishes them in batches (see
    /// [`announce_queued`]) without waiting: when too many wait already (the events stream is
    /// stalled, or slower than ingestion), the event is dropped and counted
    /// (`millrace_queued_events_dropped_total`) rather than the job's caller held up.
    pub fn announce_queued(&self, event: JobEvent) {
        use tokio::sync::mpsc::error::TrySendError;
        let job = event.id;
        let why = match self.queued.try_send(Announce::Event(event)) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "too many wait to be published",
            Err(TrySendError::Closed(_)) => "the bus is closed",
        };
        // The first drop and every thousandth: a stalled stream must not flood the log.
        let dropped_before = crate::metrics::queued_event_dropped();
        if dropped_before.is_multiple_of(1000) {
            tracing::warn!(%job, why, dropped_before, "queued event dropped");
        }
    }

    /// Waits, at most `deadline`, until every `queued` event handed over so far was published
    /// (or refused): at shutdown, so that the events of the last jobs are not lost with the
    /// process. Whether they all went is logged.
    pub async fn flush_queued(&self, deadline: Duration) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        let handed = async {
            self.queued.send(Announce::Flushed(done)).await.ok()?;
            flushed.await.ok()
        };
        match tokio::time::timeout(deadline, handed).await {
            Ok(Some(())) => {}
            _ => tracing::warn!(
                waiting = QUEUED_BACKLOG - self.queued.capacity(),
                "queued events still waiting at shutdown are lost"
            ),
        }
    }

    pub async fn publish_reply(
        &self,
        id: JobId,
        reply: JobReply,
        payload: Bytes,
    ) -> Result<(), QueueError> {
        self.client
            .publish(subjects::job_reply(id, reply), payload)
            .await
            .map_err(QueueError::publish)
    }

    pub async fn publish_done(&self, done: &JobDone) -> Result<(), QueueError> {
        self.publish_reply(done.id, JobReply::Done, encode(done))
            .await?;
        // Flush so a waiting sync caller hears it before we ack and move on.
        self.client.flush().await.map_err(QueueError::publish)
    }

    pub async fn publish_cancel(&self, cancel: &CancelJob) -> Result<(), QueueError> {
        self.client
            .publish(subjects::cancel(cancel.id), encode(cancel))
            .await
            .map_err(QueueError::publish)?;
        self.client.flush().await.map_err(QueueError::publish)
    }

    pub async fn publish_invalidate(&self, invalidate: &Invalidate) -> Result<(), QueueError> {
        self.client
            .publish(subjects::INVALIDATE, encode(invalidate))
            .await
            .map_err(QueueError::publish)
    }

    /// Decoded messages of a core subject; undecodable ones are logged and skipped.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        subject: String,
    ) -> Result<impl Stream<Item = T> + Send + 'static, QueueError> {
        let subscriber = self
            .client
            .subscribe(subject)
            .await
            .map_err(QueueError::request)?;
        Ok(subscriber.filter_map(|msg| async move {
            match serde_json::from_slice(&msg.payload) {
                Ok(value) => Some(value),
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "undecodable control message");
                    None
                }
            }
        }))
    }

    pub async fn cancels(
        &self,
    ) -> Result<impl Stream<Item = CancelJob> + Send + 'static, QueueError> {
        self.subscribe(subjects::CANCEL_ALL.to_owned()).await
    }

    pub async fn invalidations(
        &self,
    ) -> Result<impl Stream<Item = Invalidate> + Send + 'static, QueueError> {
        self.subscribe(subjects::INVALIDATE.to_owned()).await
    }

    /// Everything workers publish about one job from now on. Subscribe before publishing the
    /// job, so nothing can be missed.
    pub async fn watch_job(
        &self,
        id: JobId,
    ) -> Result<JobReplies<impl Stream<Item = JobUpdate> + Send + 'static>, QueueError> {
        // Taken before subscribing and marked seen: only a reconnect from now on (when
        // messages may have been lost) sends the waiter to the store.
        let mut reconnected = self.epoch.clone();
        reconnected.mark_unchanged();
        let subscriber = self
            .client
            .subscribe(subjects::job_replies(id))
            .await
            .map_err(QueueError::request)?;
        let updates = subscriber.filter_map(|msg| async move {
            let kind = msg.subject.rsplit('.').next().unwrap_or_default();
            let text = || String::from_utf8_lossy(&msg.payload).into_owned();
            match kind {
                "started" => Some(JobUpdate::Started),
                "log" => Some(JobUpdate::Log(text())),
                "stream" => Some(JobUpdate::Stream(text())),
                "progress" => serde_json::from_slice(&msg.payload)
                    .ok()
                    .map(JobUpdate::Progress),
                "early_return" => serde_json::from_slice(&msg.payload)
                    .ok()
                    .map(JobUpdate::EarlyReturn),
                "done" => serde_json::from_slice(&msg.payload)
                    .ok()
                    .map(JobUpdate::Done),
                _ => None,
            }
        });
        Ok(JobReplies {
            updates,
            reconnected,
        })
    }

    /// Round trip to the server: used by readiness checks.
    pub async fn ping(&self) -> Result<(), QueueError> {
        tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .map_err(|_| QueueError::Request("NATS did not answer within 2s".into()))?
            .map_err(QueueError::request)
    }

    /// A tag's backlog from its consumer's info: jobs not yet delivered, and jobs delivered
    /// and not yet acknowledged.
    pub async fn backlog(&self, tag: &Tag) -> Result<(u64, u64), QueueError> {
        let stream = self
            .js
            .get_stream_no_info(subjects::JOBS_STREAM)
            .await
            .map_err(QueueError::request)?;
        let info = stream
            .consumer_info(subjects::worker_consumer(tag))
            .await
            .map_err(QueueError::request)?;
        Ok((info.num_pending, info.num_ack_pending as u64))
    }

    /// Waits until every message published so far has left this process.
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.client.flush().await.map_err(QueueError::request)
    }
}

async fn publish_job_on(
    js: &jetstream::Context,
    tag: &Tag,
    envelope: &JobEnvelope,
    msg_id: &str,
) -> Result<Published, QueueError> {
    let ack = send_job(js, tag, envelope, msg_id)
        .await?
        .await
        .map_err(QueueError::refused)?;
    Ok(Published {
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

async fn send_job(
    js: &jetstream::Context,
    tag: &Tag,
    envelope: &JobEnvelope,
    msg_id: &str,
) -> Result<jetstream::context::PublishAckFuture, QueueError> {
    js.publish_with_headers(subjects::jobs(tag), msg_id_header(msg_id), encode(envelope))
        .await
        .map_err(QueueError::publish)
}
