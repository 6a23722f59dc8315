//! `herd brain`: pulls wakes from `HERD_WAKE` (durable consumer `brain`) and runs sessions.
//!
//! One wake is handled like this:
//!
//! 1. parse it; a malformed wake is terminated, reported (`session.error` when the session is
//!    known, the dead-letter subject when not), and never redelivered;
//! 2. append the user events it carries (facts, deduplicated by id);
//! 3. loop: replay the session (incrementally, from the cache), [`decide`], do what it says
//!    (append a step; or append step A, call the model, append step B), until it says wait;
//!    a conflict on any append means someone else moved the session: replay and decide again;
//! 4. publish the tool jobs the session's pending calls need (idempotent by message id);
//! 5. only then acknowledge the wake (DESIGN rule 6).
//!
//! Progress heartbeats (`+WPI`) keep the wake from being redelivered while a long model call
//! runs. A brain that dies anywhere leaves the wake unacknowledged; after `ack_wait` another
//! brain replays and decides again, repeating at most the one model call that was in flight.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};

use super::cache::{SessionCache, replay};
use super::harness::{self, Decision, Limits, Planned};
use super::lease::{Lease, Leases};
use super::provider::{ModelError, ProviderKind, ProviderSettings, Providers};
use super::wake::{Wake, WakeError};
use crate::event::{ErrorInfo, Event, EventId, SessionError, SessionId};
use crate::hands::registry;
use crate::session::{LogError, SessionLog};
use crate::subjects;
use crate::tasks::{AbortOnDrop, SessionLocks};

/// The durable consumer brains share.
pub const CONSUMER: &str = "brain";
/// Where wakes that name no valid session go.
pub const DEAD_LETTER_SUBJECT: &str = "herd.deadletter.wake";

/// How a brain runs.
#[derive(Debug, Clone)]
pub struct BrainConfig {
    /// A name for logs and the NATS connection.
    pub name: String,
    /// How long a wake may go without an ack or heartbeat before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one wake before it is given up (then `session.error`).
    pub max_deliver: i64,
    /// Redelivery delays after a nak or a missed ack; empty for `ack_wait` every time.
    pub backoff: Vec<Duration>,
    /// Wakes handled at once.
    pub concurrency: usize,
    /// Sessions kept replayed in memory.
    pub cache_sessions: usize,
    /// Model requests failing in a row before the turn ends with `retries_exhausted`.
    pub max_model_attempts: u32,
    /// First retry delay of a failed model request (doubled each time, jittered, at least the
    /// provider's `Retry-After`).
    pub model_retry_base: Duration,
    /// The longest retry delay.
    pub model_retry_max: Duration,
    /// Model API keys, URLs and timeouts.
    pub providers: ProviderSettings,
}

impl Default for BrainConfig {
    fn default() -> Self {
        Self {
            name: format!("herd-brain-{}", std::process::id()),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: Vec::new(),
            concurrency: 64,
            cache_sessions: 1024,
            max_model_attempts: 5,
            model_retry_base: Duration::from_millis(500),
            model_retry_max: Duration::from_secs(30),
            providers: ProviderSettings::from_env(),
        }
    }
}

/// Why handling a wake failed.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot publish: {0}")]
    Publish(String),
    #[error("the session took more than {0} steps in one wake")]
    TooManySteps(usize),
    #[error("another brain holds the session's lease")]
    LeaseHeld,
}

impl HandleError {
    /// Worth redelivering (NATS trouble), as opposed to a poison wake.
    fn transient(&self) -> bool {
        match self {
            Self::Log(e) => e.is_transient(),
            Self::Publish(_) | Self::LeaseHeld => true,
            Self::TooManySteps(_) => false,
        }
    }
}

/// A running brain's shared parts.
pub struct Brain {
    log: SessionLog,
    js: jetstream::Context,
    providers: Providers,
    cache: Mutex<SessionCache>,
    locks: SessionLocks,
    leases: Leases,
    registry: crate::hands::registry::Registry,
    /// `HERD_TOOLS`, looked up once: dispatch checks it for queued jobs on every step.
    tools: jetstream::stream::Stream,
    config: BrainConfig,
}

/// Why a brain could not start or keep pulling.
#[derive(Debug, thiserror::Error)]
pub enum BrainError {
    /// Setting up the log, the stream or the consumer failed.
    #[error("brain setup failed: {0}")]
    Setup(String),
    /// The wake consumer stopped.
    #[error("the wake consumer failed: {0}")]
    Consumer(String),
}

/// Creates or updates the `brain` consumer with this config.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    config: &BrainConfig,
) -> Result<pull::Config, BrainError> {
    let setup = |e: String| BrainError::Setup(e);
    let stream = js
        .get_stream(subjects::WAKE_STREAM)
        .await
        .map_err(|e| setup(format!("stream {} is missing: {e}", subjects::WAKE_STREAM)))?;
    let cfg = pull::Config {
        durable_name: Some(CONSUMER.into()),
        description: Some("herd brains: wakes to run sessions".into()),
        filter_subject: "herd.wake.*".into(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        backoff: config.backoff.clone(),
        max_ack_pending: 10_000,
        ..Default::default()
    };
    stream
        .create_consumer(cfg.clone())
        .await
        .map_err(|e| setup(format!("cannot create consumer {CONSUMER}: {e}")))?;
    Ok(cfg)
}

impl Brain {
    /// Prepares a brain on a connected client.
    pub async fn new(
        client: async_nats::Client,
        config: BrainConfig,
    ) -> Result<Arc<Self>, BrainError> {
        let js = jetstream::new(client.clone());
        let log = SessionLog::open(client)
            .await
            .map_err(|e| BrainError::Setup(e.to_string()))?;
        ensure_consumer(&js, &config).await?;
        // Half of ack_wait: a dead brain's lease always expires before its wake is redelivered.
        let leases = Leases::open(js.clone(), &config.name, config.ack_wait / 2)
            .await
            .map_err(|e| BrainError::Setup(e.to_string()))?;
        let registry = crate::hands::registry::Registry::open(js.clone())
            .await
            .map_err(BrainError::Setup)?;
        let tools = js.get_stream(subjects::TOOLS_STREAM).await.map_err(|e| {
            BrainError::Setup(format!("stream {} is missing: {e}", subjects::TOOLS_STREAM))
        })?;
        Ok(Arc::new(Self {
            tools,
            registry,
            leases,
            log,
            js,
            providers: Providers::new(config.providers.clone()),
            cache: Mutex::new(SessionCache::new(config.cache_sessions)),
            locks: SessionLocks::new(4 * config.cache_sessions.max(64)),
            config,
        }))
    }

    /// Pulls and handles wakes until `shutdown` resolves; wakes in progress then finish.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), BrainError> {
        let consumer_err = |e: String| BrainError::Consumer(e);
        let stream = self
            .js
            .get_stream(subjects::WAKE_STREAM)
            .await
            .map_err(|e| consumer_err(e.to_string()))?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_consumer(CONSUMER)
            .await
            .map_err(|e| consumer_err(e.to_string()))?;
        let batch = self.config.concurrency.min(256);
        let open = || {
            let consumer = consumer.clone();
            async move {
                consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .heartbeat(crate::work_queue::PULL_HEARTBEAT)
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        tracing::info!(name = %self.config.name, "Brain is taking wakes.");
        let concurrency = self.config.concurrency;
        crate::work_queue::pull_loop(open, concurrency, shutdown, |msg| {
            let me = self.clone();
            async move { me.handle(msg).await }
        })
        .await
        .map_err(consumer_err)
    }

    async fn handle(self: Arc<Self>, msg: jetstream::Message) {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        let stream_seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let wake = match Wake::parse(msg.subject.as_str(), &msg.payload) {
            Ok(w) => w,
            Err(e) => {
                self.refuse(&msg, &e, stream_seq).await;
                return;
            }
        };
        let span = tracing::info_span!("wake", session = %wake.session_id, delivered);
        let _enter = span.enter();
        let lease: Arc<tokio::sync::Mutex<Option<Lease>>> = Arc::default();
        let heartbeat = {
            // Often enough to keep both the wake (ack_wait) and the lease (ack_wait / 2) alive.
            let every = self.config.ack_wait / 6;
            let acker = msg.clone();
            let (leases, lease) = (self.leases.clone(), lease.clone());
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    // A failed heartbeat (a reconnect) is retried at the next tick, not fatal.
                    if let Err(e) = acker.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "A wake heartbeat failed.");
                    }
                    if let Some(l) = lease.lock().await.as_mut() {
                        match leases.renew(l).await {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                "Lost a session lease; the conditional appends still guard the log."
                            ),
                            Err(e) => {
                                tracing::warn!(error = %e, "Renewing a session lease failed.")
                            }
                        }
                    }
                }
            }))
        };
        let result = self.run_wake(&wake, &lease).await;
        drop(heartbeat);
        if let Some(l) = lease.lock().await.take() {
            self.leases.release(l).await;
        }
        match result {
            Ok(()) => {
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(error = %e, "Acknowledging a wake failed; it will be redelivered and find nothing to do.");
                }
            }
            Err(HandleError::Log(LogError::NotFound(s))) => {
                // No such session: nothing to report it on, so it goes to the dead letters.
                self.refuse(&msg, &WakeError::UnknownSession(s), stream_seq)
                    .await;
            }
            Err(HandleError::LeaseHeld) if delivered >= self.config.max_deliver => {
                // Someone alive has held the lease through every delivery: it will see the
                // session's input when it re-checks after releasing.
                let _ = msg.double_ack().await;
            }
            Err(e) if e.transient() && delivered < self.config.max_deliver => {
                tracing::warn!(error = %e, "Wake failed; it will be redelivered.");
                let delay = Duration::from_millis(250 * (1 << delivered.clamp(0, 6)));
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Wake failed for good; reporting it on the session.");
                let report = Event::with_id(
                    EventId::derived("wakefailed", &[&stream_seq.to_string()])
                        .unwrap_or_else(|_| EventId::generate()),
                    SessionError {
                        error: ErrorInfo {
                            kind: "wake_failed".into(),
                            message: format!(
                                "herd gave up on a wake after {delivered} deliveries: {e}"
                            ),
                        },
                        retry_status: Some(crate::event::RetryStatus {
                            kind: "terminal".into(),
                            attempt: Some(delivered as u32),
                            retry_in_ms: None,
                        }),
                    },
                );
                let _ = self.log.append_fact(&wake.session_id, &report).await;
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }

    /// Terminates a malformed wake and reports it.
    async fn refuse(&self, msg: &jetstream::Message, error: &WakeError, stream_seq: u64) {
        tracing::warn!(error = %error, "Refusing a malformed wake.");
        let known = match error {
            WakeError::Payload { session, .. } => match self.log.last_sequence(session).await {
                Ok(n) if n > 0 => Some(session.clone()),
                _ => None,
            },
            WakeError::Subject(_) | WakeError::UnknownSession(_) => None,
        };
        let reported = match known {
            Some(session) => {
                let e = Event::with_id(
                    EventId::derived("badwake", &[&stream_seq.to_string()])
                        .unwrap_or_else(|_| EventId::generate()),
                    SessionError {
                        error: ErrorInfo {
                            kind: "invalid_wake".into(),
                            message: error.to_string(),
                        },
                        retry_status: Some(crate::event::RetryStatus {
                            kind: "terminal".into(),
                            attempt: None,
                            retry_in_ms: None,
                        }),
                    },
                );
                self.log.append_fact(&session, &e).await.is_ok()
            }
            None => {
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    "Herd-Error",
                    error.to_string().replace(['\r', '\n'], " ").as_str(),
                );
                h.insert("Herd-Original-Subject", msg.subject.as_str());
                h.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("deadletter_wake_{stream_seq}").as_str(),
                );
                match self
                    .js
                    .publish_with_headers(DEAD_LETTER_SUBJECT, h, msg.payload.clone())
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        };
        if reported {
            let _ = msg.ack_with(AckKind::Term).await;
        } else {
            // Could not report it; let it come back rather than lose the evidence.
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }

    /// Appends the wake's events, then runs the session while holding its lease. After giving
    /// the lease back it looks once more, so input that arrived while another wake was turned
    /// away (the lease was held) is never left unanswered.
    async fn run_wake(
        &self,
        wake: &Wake,
        lease: &tokio::sync::Mutex<Option<Lease>>,
    ) -> Result<(), HandleError> {
        let id = &wake.session_id;
        // The leader's view: the session must exist before anything is appended to it, or a
        // wake for a mistyped id would create a log that can never be deleted.
        let mut appended = self.log.last_sequence(id).await?;
        if appended == 0 {
            return Err(HandleError::Log(LogError::NotFound(id.clone())));
        }
        for e in &wake.events {
            appended = appended.max(self.log.append_fact(id, e).await?.last_seq);
        }
        // One wake per session at a time in this process.
        let lock = self.locks.get(id);
        let _guard = lock.lock().await;
        let limits = Limits {
            max_model_attempts: self.config.max_model_attempts,
            compact: true,
        };
        for _ in 0..8 {
            match self.leases.acquire(id).await {
                Ok(Some(l)) => *lease.lock().await = Some(l),
                // Another brain works on this session (or held it and died: its lease expires
                // within ack_wait / 2). Come back later rather than vanish; after max_deliver
                // tries the wake is dropped, since a live holder re-checks when it is done.
                Ok(None) => return Err(HandleError::LeaseHeld),
                Err(e) => {
                    tracing::warn!(error = %e, "Session leases unavailable; relying on conditional appends.")
                }
            }
            self.run_session(id, appended).await?;
            if let Some(l) = lease.lock().await.take() {
                self.leases.release(l).await;
            }
            let r = self.replay_at_least(id, appended).await?;
            if harness::decide(&r.state, &r.events, limits) == Decision::Wait {
                return Ok(());
            }
        }
        // Input kept arriving: let the wake come back rather than leave work behind.
        Err(HandleError::LeaseHeld)
    }

    /// Replays a session, making sure the replay reaches `at_least`: a direct get may be
    /// served by a replica that trails the leader for a moment, and deciding (or declaring the
    /// session unknown) on such a read could leave the wake's own input unanswered.
    async fn replay_at_least(
        &self,
        id: &SessionId,
        at_least: u64,
    ) -> Result<super::cache::Replay, HandleError> {
        for attempt in 0..50 {
            let r = replay(&self.cache, &self.log, id).await?;
            if r.state.last_seq >= at_least {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
        }
        Err(HandleError::Log(LogError::Unavailable {
            attempts: 50,
            elapsed_ms: 12_750,
            last: format!("the session's replay never reached sequence {at_least}"),
        }))
    }

    /// Runs a session until it waits; the first replay must reach `at_least`.
    async fn run_session(&self, id: &SessionId, at_least: u64) -> Result<(), HandleError> {
        const MAX_STEPS: usize = 200;
        let mut limits = Limits {
            max_model_attempts: self.config.max_model_attempts,
            compact: true,
        };
        for _ in 0..MAX_STEPS {
            let r = self.replay_at_least(id, at_least).await?;
            if r.state.config.is_none() {
                if r.state.event_count == 0 {
                    return Err(HandleError::Log(LogError::NotFound(id.clone())));
                }
                // Events but no session.created: nothing can run it.
                return Err(HandleError::Log(LogError::Invalid(format!(
                    "session {id} has no session.created event"
                ))));
            }
            match harness::decide(&r.state, &r.events, limits) {
                Decision::Wait => {
                    self.dispatch(&r.state, &r.events).await?;
                    return Ok(());
                }
                Decision::Append(step) => match self.append(id, r.state.last_seq, step).await {
                    Ok(_) => self.dispatch_after_step(id).await?,
                    Err(LogError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                },
                Decision::Compact { up_to, request } => {
                    let config = r.state.config.as_ref().expect("checked above");
                    let kind = ProviderKind::for_agent(
                        config.agent.provider.as_deref(),
                        &config.agent.model,
                    );
                    let summary = match kind {
                        Ok(kind) => self.providers.complete(kind, &config.agent, &request).await,
                        Err(message) => Err(ModelError::Fatal {
                            status: None,
                            message,
                        }),
                    };
                    let text = summary.map(|r| crate::event::content_text(&r.content));
                    match text {
                        Ok(summary) if !summary.trim().is_empty() => {
                            let step = vec![Planned {
                                id: None,
                                body: crate::event::AgentThreadContextCompacted {
                                    summary,
                                    compacted_up_to: up_to,
                                }
                                .into(),
                            }];
                            match self.append(id, r.state.last_seq, step).await {
                                Ok(_) | Err(LogError::Conflict { .. }) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        other => {
                            tracing::warn!(outcome = ?other.err(), "Compaction failed; sending the whole context.");
                            limits.compact = false;
                        }
                    }
                }
                Decision::CallModel { preamble, request } => {
                    let (events, start_id) = materialize_with_start(preamble);
                    // The preamble goes out one event at a time, each conditional on the last:
                    // no atomic batch is needed (a crash between them leaves a state decide
                    // continues from), and a one-event append costs a fraction of a batch on
                    // nats-server 2.15 (0.35 ms against ~2.5 ms), on the wake's critical path.
                    let mut expected = r.state.last_seq;
                    let mut moved_on = false;
                    for e in &events {
                        match self
                            .log
                            .append_step(id, expected, std::slice::from_ref(e))
                            .await
                        {
                            Ok(a) => expected = a.last_seq,
                            Err(LogError::Conflict { .. }) => {
                                moved_on = true;
                                break;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if moved_on {
                        continue;
                    }
                    let config = r.state.config.as_ref().expect("checked above");
                    let kind = ProviderKind::for_agent(
                        config.agent.provider.as_deref(),
                        &config.agent.model,
                    );
                    let outcome = match kind {
                        Ok(kind) => self.providers.complete(kind, &config.agent, &request).await,
                        Err(message) => Err(ModelError::Fatal {
                            status: None,
                            message,
                        }),
                    };
                    // The state as of step A, for the usage total in step B.
                    let mut state = r.state.clone();
                    for e in &events {
                        state.apply(&crate::event::StoredEvent {
                            session_id: id.clone(),
                            seq: expected,
                            event: e.clone(),
                        });
                    }
                    let step = match &outcome {
                        Ok(response) => harness::response_step(&state, &start_id, response),
                        Err(err) => {
                            let attempt = harness::failed_requests_in_a_row(&r.events) + 1;
                            tracing::warn!(error = %err, attempt, "Model request failed.");
                            match err {
                                ModelError::Fatal { .. } => harness::final_failure_step(
                                    &state,
                                    &start_id,
                                    err.kind(),
                                    &err.to_string(),
                                    None,
                                ),
                                ModelError::Retryable { .. }
                                    if attempt < self.config.max_model_attempts =>
                                {
                                    let delay = self.retry_delay(err, attempt);
                                    let step = harness::failure_step(
                                        &start_id,
                                        err.kind(),
                                        &err.to_string(),
                                        attempt,
                                        delay.as_millis() as u64,
                                    );
                                    match self.append(id, expected, step).await {
                                        Ok(_) | Err(LogError::Conflict { .. }) => {}
                                        Err(e) => return Err(e.into()),
                                    }
                                    tokio::time::sleep(delay).await;
                                    continue;
                                }
                                // The last attempt of the budget ends the turn.
                                ModelError::Retryable { .. } => harness::final_failure_step(
                                    &state,
                                    &start_id,
                                    err.kind(),
                                    &err.to_string(),
                                    Some(attempt),
                                ),
                            }
                        }
                    };
                    match self.append(id, expected, step).await {
                        Ok(_) => self.dispatch_after_step(id).await?,
                        // Someone moved the session while the model ran (a user message, an
                        // interrupt, another brain): this answer is stale. If another brain has
                        // started a request of its own since, it owns the turn now: stand down
                        // (the wake comes back later) rather than close its span and start
                        // again, which two brains could do to each other forever. Otherwise
                        // decide again.
                        Err(LogError::Conflict { .. }) => {
                            let r = replay(&self.cache, &self.log, id).await?;
                            if harness::another_request_open(&r.events, &start_id) {
                                tracing::info!(session = %id, "Another brain took over the turn; standing down.");
                                return Err(HandleError::LeaseHeld);
                            }
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(HandleError::TooManySteps(MAX_STEPS))
    }

    fn retry_delay(&self, err: &ModelError, attempt: u32) -> Duration {
        let exp = self
            .config
            .model_retry_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.config.model_retry_max);
        let jittered = exp.mul_f64(0.5 + fastrand::f64() * 0.5);
        match err {
            ModelError::Retryable {
                retry_after: Some(ra),
                ..
            } => jittered.max(*ra),
            _ => jittered,
        }
    }

    async fn append(
        &self,
        id: &SessionId,
        expected: u64,
        step: Vec<Planned>,
    ) -> Result<crate::session::Appended, LogError> {
        let events = materialize(step);
        self.log.append_step(id, expected, &events).await
    }

    async fn dispatch_after_step(&self, id: &SessionId) -> Result<(), HandleError> {
        let r = replay(&self.cache, &self.log, id).await?;
        self.dispatch(&r.state, &r.events).await
    }

    /// Publishes the jobs of pending sandbox calls (idempotent: message id per tool_use id).
    async fn dispatch(
        &self,
        state: &crate::session::SessionState,
        events: &[crate::event::StoredEvent],
    ) -> Result<(), HandleError> {
        let jobs = harness::jobs_to_dispatch(state, events);
        if jobs.is_empty() {
            return Ok(());
        }
        let tools = &self.tools;
        // Later calls go to the host holding the session's sandbox while it lives.
        let route = self.registry.route(events).await;
        for job in jobs {
            if let Err(e) = job.check() {
                tracing::warn!(error = %e, "Skipping a tool job with an unusable id.");
                continue;
            }
            // Still queued (on any route): nothing to do. A job leaves the queue when a hand
            // acknowledges it, after appending its result; a hand checks the log before running
            // a job, so a publish racing a result that this replay does not show is harmless.
            if registry::queued(tools, &job.session_id, &job.tool_use_id).await {
                continue;
            }
            let subject = registry::subject(&route, &job);
            let payload = serde_json::to_vec(&job).unwrap_or_default();
            let msg = jetstream::message::PublishMessage::build()
                .message_id(registry::message_id(&route, &job))
                .header("Content-Type", crate::event::CONTENT_TYPE_JSON)
                .payload(payload.into());
            self.js
                .send_publish(subject, msg)
                .await
                .map_err(|e| HandleError::Publish(e.to_string()))?
                .await
                .map_err(|e| HandleError::Publish(e.to_string()))?;
        }
        Ok(())
    }
}

/// Gives planned events their ids and times.
fn materialize(step: Vec<Planned>) -> Vec<Event> {
    step.into_iter()
        .map(|p| Event::with_id(p.id.unwrap_or_else(EventId::generate), p.body))
        .collect()
}

/// Like [`materialize`], also returning the id of the `span.model_request_start`.
fn materialize_with_start(step: Vec<Planned>) -> (Vec<Event>, EventId) {
    let events = materialize(step);
    let start = events
        .iter()
        .rev()
        .find(|e| e.type_name() == "span.model_request_start")
        .map(|e| e.id.clone())
        .unwrap_or_else(EventId::generate);
    (events, start)
}
