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

use async_nats::jetstream;

use super::cache::{SessionCache, replay};
use super::harness::{self, AfterModel, Decision, Limits, Planned};
use super::lease::{Lease, Leases};
use super::provider::{ProviderSettings, Providers};
use super::sweep::{self, Dispatched, InFlight, Verdict};
use crate::bus::routing::{self, Router};
use crate::bus::wake::{Wake, WakeError};
use crate::bus::work_queue::{self, ConsumerSpec, Delivery};
use crate::bus::{BusError, subjects};
use crate::event::{ErrorInfo, Event, EventId, SessionError, SessionId};
use crate::session::{LogError, SessionLog};
use crate::tasks::SessionLocks;

/// The durable consumer brains share.
pub const CONSUMER: &str = "brain";

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
    /// Payload bytes of a session's log past which the brain does not run it (N20): its
    /// turns end with a `session.error` (`session_too_large`) instead.
    pub max_session_bytes: u64,
    /// Model requests failing in a row before the turn ends with `retries_exhausted`.
    pub max_model_attempts: u32,
    /// First retry delay of a failed model request (doubled each time, jittered, at least the
    /// provider's `Retry-After`).
    pub model_retry_base: Duration,
    /// The longest retry delay.
    pub model_retry_max: Duration,
    /// Model API keys, URLs and timeouts.
    pub providers: ProviderSettings,
    /// How often the brain sweeps for sessions stuck running with nothing in flight
    /// ([`super::sweep`]); zero turns the sweep off.
    pub sweep_every: Duration,
    /// How long a session in a turn may be quiet with nothing in flight before the sweep
    /// re-dispatches it, and how long after that before it ends the turn.
    pub sweep_grace: Duration,
}

impl Default for BrainConfig {
    fn default() -> Self {
        Self {
            name: format!("herd-brain-{}", std::process::id()),
            // Short, so a crashed brain's wakes continue within seconds; a live brain
            // heartbeats every ack_wait / 6 and renews its lease (ack_wait / 2) on the same beat.
            ack_wait: Duration::from_secs(3),
            max_deliver: 5,
            backoff: Vec::new(),
            concurrency: 64,
            cache_sessions: 1024,
            max_session_bytes: 256 << 20,
            max_model_attempts: 5,
            model_retry_base: Duration::from_millis(500),
            model_retry_max: Duration::from_secs(30),
            // No keys: a default never reads the environment (the command line does, with
            // `ProviderSettings::from_env`).
            providers: ProviderSettings::default(),
            sweep_every: Duration::from_secs(10),
            // Longer than anything in flight goes unseen: a wake waits in HERD_WAKE until its
            // ack, a job in HERD_TOOLS until its result, a model call holds the lease.
            sweep_grace: Duration::from_secs(30),
        }
    }
}

/// Why handling a wake failed.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot publish: {0}")]
    Publish(#[from] BusError),
    #[error("the session took more than {0} steps in one wake")]
    TooManySteps(usize),
    #[error("another brain holds the session's lease")]
    LeaseHeld,
    #[error(transparent)]
    Refused(#[from] crate::api::Refusal),
    /// An event the wake carries cannot be stored as it is (its id is taken).
    #[error("{0}")]
    Rejected(String),
}

impl HandleError {
    /// Worth redelivering (NATS trouble), as opposed to a poison wake.
    fn transient(&self) -> bool {
        match self {
            Self::Log(e) => e.is_transient(),
            Self::Publish(_) | Self::LeaseHeld => true,
            Self::TooManySteps(_) | Self::Refused(_) | Self::Rejected(_) => false,
        }
    }
}

/// The one wake of a session that waits for its lock in this process (dropping it leaves).
struct Waiter<'a> {
    waiting: &'a Mutex<std::collections::HashSet<SessionId>>,
    id: SessionId,
}

impl<'a> Waiter<'a> {
    /// Takes the waiting place of `id`; `None` when another wake holds it.
    fn enter(
        waiting: &'a Mutex<std::collections::HashSet<SessionId>>,
        id: &SessionId,
    ) -> Option<Self> {
        let fresh = waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        fresh.then(|| Self {
            waiting,
            id: id.clone(),
        })
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A running brain's shared parts.
pub struct Brain {
    /// Sessions with a wake waiting for their lock (at most one each: the others collapse).
    waiting: Mutex<std::collections::HashSet<SessionId>>,
    log: SessionLog,
    js: jetstream::Context,
    providers: Providers,
    cache: Mutex<SessionCache>,
    locks: SessionLocks,
    leases: Leases,
    router: Router,
    /// `HERD_TOOLS`, looked up once: dispatch checks it for queued jobs on every step.
    tools: jetstream::stream::Stream,
    /// `HERD_WAKE`, looked up once: the sweep checks it for queued wakes.
    wakes: jetstream::stream::Stream,
    config: BrainConfig,
}

/// Why a brain could not start or keep pulling.
#[derive(Debug, thiserror::Error)]
pub enum BrainError {
    /// Setting up the log or the leases failed.
    #[error("brain setup failed: {0}")]
    Log(#[from] LogError),
    /// Setting up a stream, the consumer or the registry failed.
    #[error("brain setup failed: {0}")]
    Bus(#[from] BusError),
    /// The lease bucket is out of reach.
    #[error("brain setup failed: {0}")]
    Leases(String),
    /// The wake consumer stopped.
    #[error("the wake consumer failed: {0}")]
    Consumer(BusError),
}

/// The consumer brains take wakes from, with this config.
pub fn consumer(config: &BrainConfig) -> ConsumerSpec {
    ConsumerSpec {
        stream: subjects::WAKE_STREAM,
        durable: CONSUMER.into(),
        description: "herd brains: wakes to run sessions".into(),
        filter: subjects::ALL_WAKES.into(),
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        backoff: config.backoff.clone(),
    }
}

impl Brain {
    /// Prepares a brain on a connected client.
    pub async fn new(
        client: async_nats::Client,
        config: BrainConfig,
    ) -> Result<Arc<Self>, BrainError> {
        let js = jetstream::new(client.clone());
        let log = SessionLog::open(client).await?;
        consumer(&config).ensure(&js).await?;
        // Half of ack_wait: a dead brain's lease always expires before its wake is redelivered.
        let leases = Leases::open(js.clone(), &config.name, config.ack_wait / 2)
            .await
            .map_err(|e| BrainError::Leases(e.to_string()))?;
        let router = Router::open(&js).await?;
        let tools = js.get_stream(subjects::TOOLS_STREAM).await.map_err(|e| {
            BusError::nats(format!("stream {} is missing", subjects::TOOLS_STREAM), e)
        })?;
        let wakes = js.get_stream(subjects::WAKE_STREAM).await.map_err(|e| {
            BusError::nats(format!("stream {} is missing", subjects::WAKE_STREAM), e)
        })?;
        Ok(Arc::new(Self {
            tools,
            wakes,
            router,
            leases,
            log,
            js,
            providers: Providers::new(config.providers.clone()),
            waiting: Mutex::new(std::collections::HashSet::new()),
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
        let pull = consumer(&self.config)
            .ensure(&self.js)
            .await
            .map_err(BrainError::Consumer)?;
        // Scheduled wakes as they fire: one consumer shared by every brain.
        let firings = super::scheduler::consumer(self.config.ack_wait, self.config.max_deliver)
            .ensure(&self.js)
            .await
            .map_err(BrainError::Consumer)?;
        tracing::info!(name = %self.config.name, "Brain is taking wakes.");
        let _sweep = (!self.config.sweep_every.is_zero())
            .then(|| crate::tasks::AbortOnDrop(tokio::spawn(self.clone().sweep_loop())));
        work_queue::run(
            vec![pull, firings],
            self.config.concurrency,
            shutdown,
            |msg| {
                let me = self.clone();
                async move { me.handle(msg).await }
            },
        )
        .await
        .map_err(BrainError::Consumer)
    }

    /// Records a scheduled wake's firing and wakes its session; a firing that is not valid
    /// is dead-lettered, one whose session is gone is dropped.
    async fn handle_firing(&self, msg: Delivery) {
        let fired = match super::scheduler::read(&msg) {
            Ok(f) => f,
            Err(why) => {
                tracing::warn!(error = %why, "Refusing a scheduled wake's firing.");
                msg.dead_letter(&self.js, subjects::DEAD_LETTER_WAKE, &why, None)
                    .await;
                return;
            }
        };
        let session = fired.session.clone();
        match super::scheduler::record(&self.log, &fired).await {
            Ok(Some(seq)) => {
                tracing::info!(session = %session, schedule = %fired.def.name, "A scheduled wake fired.");
                if let Err(e) = crate::bus::wake::publish(&self.js, &session, seq).await {
                    tracing::warn!(session = %session, error = %e, "Waking a session for its schedule failed; it will be redelivered.");
                    msg.nak_with_backoff().await;
                    return;
                }
                let _ = msg.ack().await;
            }
            Ok(None) => {
                tracing::info!(session = %session, schedule = %fired.def.name, "A scheduled wake fired for a session that is gone or terminated; dropped.");
                let _ = msg.ack().await;
            }
            Err(e) => {
                tracing::warn!(session = %session, error = %e, "Recording a scheduled wake failed; it will be redelivered.");
                msg.nak_with_backoff().await;
            }
        }
    }

    async fn handle(self: Arc<Self>, msg: Delivery) {
        if super::scheduler::is_firing(&msg) {
            return self.handle_firing(msg).await;
        }
        let (delivered, stream_seq) = (msg.delivered, msg.stream_seq);
        let wake = match Wake::parse(msg.message().subject.as_str(), &msg.message().payload) {
            Ok(w) => w,
            Err(e) => {
                self.refuse(&msg, &e).await;
                return;
            }
        };
        let span = tracing::info_span!("wake", session = %wake.session_id, delivered);
        let _enter = span.enter();
        let lease: Arc<tokio::sync::Mutex<Option<Lease>>> = Arc::default();
        // Often enough to keep both the wake (ack_wait) and the lease (ack_wait / 2) alive.
        let heartbeat = {
            let (leases, lease) = (self.leases.clone(), lease.clone());
            msg.keep_alive(self.config.ack_wait / 6, move || {
                let (leases, lease) = (leases.clone(), lease.clone());
                async move {
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
            })
        };
        let result = self.run_wake(&msg, &wake, &lease).await;
        drop(heartbeat);
        if let Some(l) = lease.lock().await.take() {
            self.leases.release(l).await;
        }
        match result {
            Ok(()) => {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "Acknowledging a wake failed; it will be redelivered and find nothing to do.");
                }
            }
            Err(HandleError::Log(LogError::NotFound(s))) => {
                // No such session: nothing to report it on, so it goes to the dead letters.
                self.refuse(&msg, &WakeError::UnknownSession(s)).await;
            }
            // A wake event refused or unstorable is the wake's fault, not the session's: it
            // is reported as an invalid wake, and the turn in progress is left alone.
            Err(e @ (HandleError::Refused(_) | HandleError::Rejected(_))) => {
                let error = WakeError::Payload {
                    session: wake.session_id.clone(),
                    detail: e.to_string(),
                };
                self.refuse(&msg, &error).await;
            }
            Err(HandleError::LeaseHeld) if delivered >= self.config.max_deliver => {
                // Someone alive has held the lease through every delivery: it will see the
                // session's input when it re-checks after releasing.
                let _ = msg.ack().await;
            }
            Err(e) if e.transient() && delivered < self.config.max_deliver => {
                tracing::warn!(error = %e, "Wake failed; it will be redelivered.");
                msg.nak_with_backoff().await;
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
                self.give_up_turn(&wake.session_id, &e.to_string()).await;
                msg.term().await;
            }
        }
    }

    /// Ends a turn herd gave up on, so the session is never left running with nothing in
    /// flight: its open span is closed, its pending sandbox calls get error results the model
    /// will see, and it goes idle (`retries_exhausted`). Conditional like every step: if the
    /// session moved meanwhile, someone else is running it and nothing is written.
    async fn give_up_turn(&self, id: &SessionId, why: &str) {
        let Ok(r) = replay(&self.cache, &self.log, id, self.config.max_session_bytes).await else {
            return;
        };
        if let Some(step) = harness::give_up_step(&r.state, &r.events, why) {
            let _ = self.append(id, r.state.last_seq, step).await;
        }
    }

    /// Sweeps every `sweep_every` until the brain stops (the task is aborted).
    async fn sweep_loop(self: Arc<Self>) {
        let mut sweep = Sweep::default();
        let mut tick = tokio::time::interval(self.config.sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep_once(&mut sweep).await {
                tracing::warn!(error = %e, "A sweep for stuck sessions failed; the next one retries.");
            }
        }
    }

    /// One sweep ([`super::sweep`]): brings the set of sessions in a turn up to date from the
    /// log's status events, then, for each one quiet for longer than the grace period, probes
    /// what is in flight and acts on the verdict: a wake, or the step that ends the turn.
    /// Returns what it did, for tests and logs.
    pub async fn sweep_once(&self, sweep: &mut Sweep) -> Result<SweepReport, SweepError> {
        let (changes, next) = self.log.status_changes(sweep.next).await?;
        sweep.next = next;
        for (id, in_turn) in changes {
            if in_turn {
                sweep.in_turn.insert(id);
            } else {
                sweep.dispatched.remove(&id);
                sweep.in_turn.remove(&id);
            }
        }
        let grace = self.config.sweep_grace;
        let mut report = SweepReport::default();
        let candidates: Vec<SessionId> = sweep.in_turn.iter().cloned().collect();
        for id in candidates {
            let now = time::OffsetDateTime::now_utc();
            let Some((_, last_at)) = self.log.last_event_at(&id).await? else {
                sweep.in_turn.remove(&id);
                continue;
            };
            if now - last_at < grace {
                continue;
            }
            let r = replay(&self.cache, &self.log, &id, self.config.max_session_bytes).await?;
            if !sweep::quiet_in_turn(&r.state, last_at, now, grace) {
                sweep.in_turn.remove(&id);
                sweep.dispatched.remove(&id);
                continue;
            }
            let in_flight = self.in_flight(&id, &r.state).await;
            let dispatched = sweep.dispatched.get(&id).copied();
            match sweep::assess(&r.state, last_at, now, grace, in_flight, dispatched) {
                Verdict::Fine => {}
                Verdict::Redispatch => {
                    tracing::warn!(session = %id, "A session in a turn has had nothing in flight for a while; waking it again.");
                    crate::bus::wake::publish(&self.js, &id, r.state.last_seq)
                        .await
                        .map_err(|e| SweepError::Wake(e.to_string()))?;
                    sweep.dispatched.insert(
                        id.clone(),
                        Dispatched {
                            at_seq: r.state.last_seq,
                            at: now,
                        },
                    );
                    report.redispatched.push(id);
                }
                Verdict::GiveUp(why) => {
                    sweep.dispatched.remove(&id);
                    let Some(step) = harness::stalled_step(&r.state, &r.events, &why) else {
                        continue;
                    };
                    match self.append(&id, r.state.last_seq, step).await {
                        Ok(_) => {
                            tracing::warn!(session = %id, why, "Ended a stalled turn.");
                            report.ended.push(id);
                        }
                        // Someone moved the session meanwhile: it is not stalled after all.
                        Err(LogError::Conflict { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(report)
    }

    /// What is in flight for a session: its lease held, a wake queued, a job of a pending
    /// call queued. A probe that fails counts as in flight: the sweep never ends a turn on a
    /// read it could not make.
    async fn in_flight(&self, id: &SessionId, state: &crate::session::SessionState) -> InFlight {
        let lease_held = self.leases.held(id).await.unwrap_or(true);
        let wake_queued = work_queue::holds(&self.wakes, &subjects::wake(id)).await
            || work_queue::holds(&self.wakes, &subjects::tool_wake(id)).await;
        let mut job_queued = false;
        for (call, t) in &state.pending_tools {
            if t.kind == crate::session::ToolKind::Custom {
                continue;
            }
            if work_queue::holds(&self.tools, &subjects::pool_job(id, call)).await
                || work_queue::holds(&self.tools, &subjects::any_host_job(id, call)).await
            {
                job_queued = true;
                break;
            }
        }
        InFlight {
            lease_held,
            wake_queued,
            job_queued,
        }
    }

    /// Terminates a malformed wake and reports it: on the session when it exists, else on the
    /// dead-letter subject.
    async fn refuse(&self, msg: &Delivery, error: &WakeError) {
        tracing::warn!(error = %error, "Refusing a malformed wake.");
        let stream_seq = msg.stream_seq;
        let known = match error {
            WakeError::Payload { session, .. } => match self.log.last_sequence(session).await {
                Ok(n) if n > 0 => Some(session.clone()),
                _ => None,
            },
            WakeError::Subject(_) | WakeError::UnknownSession(_) => None,
        };
        let Some(session) = known else {
            msg.dead_letter(
                &self.js,
                subjects::DEAD_LETTER_WAKE,
                &error.to_string(),
                Some(format!("deadletter_wake_{stream_seq}")),
            )
            .await;
            return;
        };
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
        if self.log.append_fact(&session, &e).await.is_ok() {
            msg.term().await;
        } else {
            // Could not report it; let it come back rather than lose the evidence.
            msg.nak(Duration::from_secs(5)).await;
        }
    }

    /// Appends the wake's events, then runs the session while holding its lease. After giving
    /// the lease back it looks once more, so input that arrived while another wake was turned
    /// away (the lease was held) is never left unanswered.
    async fn run_wake(
        &self,
        msg: &Delivery,
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
        if !wake.events.is_empty() {
            // The same admission rule as every front door (api::admit), against the session as
            // it is; an event already in the log (a redelivered wake) is skipped, not refused.
            let r = match self.replay_at_least(id, appended).await {
                Err(HandleError::Log(LogError::SessionTooLarge { max })) => {
                    return Err(HandleError::Rejected(format!(
                        "the session's log holds more than {} MiB, this deployment's limit; its events were not appended (start a new session)",
                        max >> 20
                    )));
                }
                r => r?,
            };
            let mut state = r.state.clone();
            for e in &wake.events {
                if let Some(stored) = r.events.iter().find(|s| s.event.id == e.id) {
                    if stored.event.body != e.body {
                        return Err(HandleError::Rejected(format!(
                            "event id {} is already used in this session by another event (seq {})",
                            e.id, stored.seq
                        )));
                    }
                    appended = appended.max(stored.seq);
                    continue;
                }
                crate::api::admit(&state, e)?;
                let seq = match self.log.append_fact(id, e).await {
                    Ok(a) => a.last_seq,
                    Err(taken @ LogError::IdTaken { .. }) => {
                        return Err(HandleError::Rejected(taken.to_string()));
                    }
                    Err(other) => return Err(other.into()),
                };
                appended = appended.max(seq);
                state.apply(&crate::event::StoredEvent {
                    session_id: id.clone(),
                    seq,
                    event: e.clone(),
                });
            }
        }
        // One wake per session at a time in this process. A wake queued behind its session's
        // running one waits without a slot, so 64 wakes of one session never hold a brain's
        // 64 slots (N18); when its turn comes it usually finds nothing left to do.
        // Wakes collapse: when a wake already waits for this session, this one's events are
        // in the log and the waiter replays after it gets the lock, so this wake is done.
        let lock = self.locks.get(id);
        let _guard = match lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                let Some(_waiting) = Waiter::enter(&self.waiting, id) else {
                    return Ok(());
                };
                msg.without_slot(lock.lock_owned()).await
            }
        };
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
            let r = match self.replay_at_least(id, appended).await {
                // Answered from its skeleton by run_session.
                Err(HandleError::Log(LogError::SessionTooLarge { .. })) => return Ok(()),
                r => r?,
            };
            if harness::decide(&r.state, &r.events, limits, time::OffsetDateTime::now_utc())
                == Decision::Wait
            {
                return Ok(());
            }
        }
        // Input kept arriving: let the wake come back rather than leave work behind.
        Err(HandleError::LeaseHeld)
    }

    /// Answers a session too large to replay, from its skeleton (N20).
    async fn too_large(&self, id: &SessionId) -> Result<(), HandleError> {
        let max = self.config.max_session_bytes;
        let (small, kinds) = self.log.read_skeleton(id, 64 << 10).await?;
        let mut state = crate::session::SessionState::new(id.clone());
        let mut events = Vec::new();
        for r in small {
            if state.apply_record(&r)
                && let Ok(e) = r
            {
                events.push(e);
            }
        }
        let last_seq = kinds.last().map_or(0, |(seq, _)| *seq);
        let last_idle = kinds
            .iter()
            .rev()
            .find(|(_, t)| t == "session.status_idle")
            .map_or(0, |(seq, _)| *seq);
        let input = kinds
            .iter()
            .any(|(seq, t)| *seq > last_idle && t.starts_with("user."));
        let Some(step) = harness::too_large_step(&state, &events, max, input) else {
            return Ok(());
        };
        tracing::warn!(session = %id, max, "A session over the size limit is not run.");
        match self.append(id, last_seq, step).await {
            Ok(_) | Err(LogError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replays a session, making sure the replay reaches `at_least`: a direct get may be
    /// served by a replica that trails the leader for a moment, and deciding (or declaring the
    /// session unknown) on such a read could leave the wake's own input unanswered.
    async fn replay_at_least(
        &self,
        id: &SessionId,
        at_least: u64,
    ) -> Result<std::sync::Arc<super::cache::Replay>, HandleError> {
        for attempt in 0..50 {
            let r = replay(&self.cache, &self.log, id, self.config.max_session_bytes).await?;
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
            let r = match self.replay_at_least(id, at_least).await {
                Err(HandleError::Log(LogError::SessionTooLarge { .. })) => {
                    return self.too_large(id).await;
                }
                r => r?,
            };
            if r.state.config.is_none() {
                if r.state.event_count == 0 {
                    return Err(HandleError::Log(LogError::NotFound(id.clone())));
                }
                // Events but no session.created: nothing can run it.
                return Err(HandleError::Log(LogError::Invalid(format!(
                    "session {id} has no session.created event"
                ))));
            }
            match harness::decide(&r.state, &r.events, limits, time::OffsetDateTime::now_utc()) {
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
                    let summary = self.providers.complete_for(&config.agent, &request).await;
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
                    let outcome = self.providers.complete_for(&config.agent, &request).await;
                    // The state as of step A, for the usage total in step B.
                    let mut state = r.state.clone();
                    for e in &events {
                        state.apply(&crate::event::StoredEvent {
                            session_id: id.clone(),
                            seq: expected,
                            event: e.clone(),
                        });
                    }
                    let attempt = harness::failed_requests_in_a_row(&r.events) + 1;
                    if let Err(err) = &outcome {
                        tracing::warn!(error = %err, attempt, "Model request failed.");
                    }
                    let step = match harness::after_model(
                        &state,
                        &start_id,
                        &outcome,
                        attempt,
                        self.config.max_model_attempts,
                    ) {
                        AfterModel::Record(step) => step,
                        AfterModel::Retry {
                            attempt,
                            retry_after,
                            kind,
                            message,
                        } => {
                            let delay = harness::retry_delay(
                                self.config.model_retry_base,
                                self.config.model_retry_max,
                                attempt,
                                retry_after,
                                0.5 + fastrand::f64() * 0.5,
                            );
                            let step = harness::failure_step(
                                &start_id,
                                kind,
                                &message,
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
                            let r =
                                replay(&self.cache, &self.log, id, self.config.max_session_bytes)
                                    .await?;
                            if harness::another_request_open(&r.events, &start_id) {
                                tracing::info!(session = %id, "Another brain took over the turn; standing down.");
                                return Err(HandleError::LeaseHeld);
                            }
                            continue;
                        }
                        // The answer cannot be recorded as it is (too many events for one
                        // step, an event over the server's message size): record that the
                        // request failed and end the turn, so the session never stays running
                        // with an open span, repeating the same call at every message (N21).
                        Err(e @ (LogError::Invalid(_) | LogError::TooLarge { .. })) => {
                            tracing::warn!(session = %id, error = %e, "The model's answer cannot be recorded; ending the turn.");
                            let failed = harness::final_failure_step(
                                &state,
                                &start_id,
                                "invalid_response_error",
                                &format!("the model's answer could not be recorded: {e}"),
                                None,
                            );
                            match self.append(id, expected, failed).await {
                                Ok(_) | Err(LogError::Conflict { .. }) => continue,
                                Err(e) => return Err(e.into()),
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(HandleError::TooManySteps(MAX_STEPS))
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
        let r = replay(&self.cache, &self.log, id, self.config.max_session_bytes).await?;
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
        let route = self.router.route(events).await;
        for job in jobs {
            if let Err(e) = job.check() {
                tracing::warn!(error = %e, "Skipping a tool job with an unusable id.");
                continue;
            }
            // Still queued (on any route): nothing to do. A job leaves the queue when a hand
            // acknowledges it, after appending its result; a hand checks the log before running
            // a job, so a publish racing a result that this replay does not show is harmless.
            if routing::queued(tools, &job.session_id, &job.tool_use_id).await {
                continue;
            }
            routing::publish(&self.js, &route, &job).await?;
        }
        Ok(())
    }
}

/// What a brain's sweep remembers between runs: where it stopped reading status events, the
/// sessions in a turn, and its own re-dispatches. Memory only, rebuilt from the log at start
/// (DESIGN rule 1): a restarted brain re-dispatches a stalled session once more, harmlessly.
#[derive(Debug, Default)]
pub struct Sweep {
    next: u64,
    in_turn: std::collections::BTreeSet<SessionId>,
    dispatched: std::collections::HashMap<SessionId, Dispatched>,
}

/// Why a sweep stopped early (the next one starts again).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Reading or appending to the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A wake could not be published.
    #[error("publishing a wake failed: {0}")]
    Wake(String),
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Sessions woken again.
    pub redispatched: Vec<SessionId>,
    /// Sessions whose stalled turn was ended.
    pub ended: Vec<SessionId>,
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
