//! `herd hands`: takes tool jobs off `HERD_TOOLS`, runs them in the session's sandbox, and
//! appends each call's one `agent.tool_result`.
//!
//! One job is handled like this (DESIGN rules 5 to 7):
//!
//! 1. parse it; check the log: the `agent.tool_use` it names must be there (a job that does not
//!    match the log is refused, never run), and if its result is already there (a redelivery
//!    after a crash) nothing runs again;
//! 2. run the tool in the session's sandbox (provisioned on first use), with progress
//!    heartbeats so a long tool is not redelivered;
//! 3. append the result as a fact whose event id is derived from the tool_use id, so however
//!    often the job runs, one result lands;
//! 4. wake the session, then acknowledge the job.
//!
//! A sandbox that dies mid-tool is a tool error for the model, never a dead session; the next
//! call provisions a fresh sandbox over the same workspace volume.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};

use super::registry::{Registry, check_host};
use super::sandbox::{SandboxConfig, SandboxError, Sandboxes};
use super::tools;
use crate::event::{
    AgentToolResult, AgentToolUse, ContentBlock, Event, EventBody, SandboxLost, SandboxProvisioned,
    SessionId, StoredEvent,
};
use crate::jobs::{ToolJob, result_event_id};
use crate::session::{LogError, SessionLog, Slice};
use crate::subjects;
use crate::tasks::{AbortOnDrop, SessionLocks};

/// The durable consumer of the shared pool.
pub const POOL_CONSUMER: &str = "hands-pool";
/// Results longer than this (in bytes) keep only their head and tail in the event; the whole
/// output goes to the object store.
pub const INLINE_LIMIT: usize = 32 * 1024;
/// The object store bucket for large outputs (defined in `streams/buckets.json`).
pub const BLOBS: &str = "herd-blobs";

/// Where jobs that cannot be parsed go.
pub const DEAD_LETTER_SUBJECT: &str = "herd.deadletter.tool";

/// How a hand worker runs.
#[derive(Debug, Clone)]
pub struct HandsConfig {
    /// This host's name (sandboxes are labelled with it).
    pub host: String,
    /// How long a job may go without an ack or heartbeat before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one job before it is given up (with an error result).
    pub max_deliver: i64,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Sandboxes unused this long are removed (their workspace volumes stay).
    pub idle_reap: Duration,
    /// Sandbox limits and the default image.
    pub sandbox: SandboxConfig,
    /// How long this hand's registry entry lives without renewal; its sessions' jobs go to the
    /// pool once it expires.
    pub registry_ttl: Duration,
    /// The key that opens vault credentials for `http_request`; `None`: secrets cannot be used
    /// on this hand (requests without them still work).
    pub vault_key: Option<crate::credentials::vault::VaultKey>,
}

impl Default for HandsConfig {
    fn default() -> Self {
        Self {
            host: std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            concurrency: 8,
            idle_reap: Duration::from_secs(600),
            sandbox: SandboxConfig::default(),
            registry_ttl: Duration::from_secs(10),
            vault_key: None,
        }
    }
}

/// Why a hand could not start or keep going.
#[derive(Debug, thiserror::Error)]
pub enum HandsError {
    /// Setting up NATS or Docker failed.
    #[error("hands setup failed: {0}")]
    Setup(String),
    /// The job consumer stopped.
    #[error("the tool-job consumer failed: {0}")]
    Consumer(String),
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("docker: {0}")]
    Docker(String),
    #[error("cannot publish the wake: {0}")]
    Wake(String),
    #[error("cannot store a large output: {0}")]
    Blob(String),
}

/// The head and tail of a long text, with a note in between saying what was left out and why.
fn head_and_tail(text: &str, why: &str) -> String {
    if text.len() <= INLINE_LIMIT {
        return text.to_string();
    }
    let floor = |mut i: usize| {
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let head = floor(INLINE_LIMIT / 2);
    let tail = floor(text.len() - INLINE_LIMIT / 4);
    format!(
        "{}\n[… {} bytes omitted here; {why}]\n{}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// The durable consumer of one host's jobs.
fn host_consumer(host: &str) -> String {
    format!("hands-host-{host}")
}

/// A running hand worker.
pub struct Hands {
    log: SessionLog,
    js: jetstream::Context,
    sandboxes: Sandboxes,
    registry: Registry,
    last_used: Mutex<HashMap<SessionId, Instant>>,
    locks: SessionLocks,
    http: super::http_request::HttpRequests,
    git: super::git::GitRemote,
    /// The egress network and proxy, created when the first session that asks for limited
    /// networking runs a tool here (most hands never need one, and Docker has few networks).
    egress: tokio::sync::OnceCell<super::egress::Egress>,
    config: HandsConfig,
}

impl Hands {
    /// Connects to Docker, ensures the pool consumer, and removes this host's orphaned
    /// sandboxes (left by a previous run).
    pub async fn new(
        client: async_nats::Client,
        config: HandsConfig,
    ) -> Result<Arc<Self>, HandsError> {
        let setup = |e: String| HandsError::Setup(e);
        check_host(&config.host).map_err(setup)?;
        let js = jetstream::new(client.clone());
        let registry = Registry::open(js.clone()).await.map_err(setup)?;
        let log = SessionLog::open(client)
            .await
            .map_err(|e| setup(e.to_string()))?;
        let sandboxes = Sandboxes::connect(&config.host, config.sandbox.clone())
            .await
            .map_err(|e| setup(e.to_string()))?;
        let stream = js
            .get_stream(subjects::TOOLS_STREAM)
            .await
            .map_err(|e| setup(format!("stream {} is missing: {e}", subjects::TOOLS_STREAM)))?;
        stream
            .create_consumer(pull::Config {
                durable_name: Some(POOL_CONSUMER.into()),
                description: Some("herd hands: the shared pool of tool jobs".into()),
                filter_subject: "herd.tools.pool.>".into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(format!("cannot create consumer {POOL_CONSUMER}: {e}")))?;
        stream
            .create_consumer(pull::Config {
                durable_name: Some(host_consumer(&config.host)),
                description: Some(format!(
                    "herd hands: jobs for sandboxes on host {}",
                    config.host
                )),
                filter_subject: format!("herd.tools.host.{}.>", config.host),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(format!("cannot create the host consumer: {e}")))?;
        registry
            .announce(&config.host, config.registry_ttl)
            .await
            .map_err(setup)?;
        let vault = match &config.vault_key {
            Some(key) => Some((
                crate::credentials::vault::Vault::open_store(&js)
                    .await
                    .map_err(|e| setup(e.to_string()))?,
                key.clone(),
            )),
            None => None,
        };
        let git = super::git::GitRemote::new(vault.clone());
        let http =
            super::http_request::HttpRequests::new(vault).map_err(|e| setup(e.to_string()))?;
        let hands = Arc::new(Self {
            http,
            git,
            egress: tokio::sync::OnceCell::new(),
            registry,
            log,
            js,
            sandboxes,
            last_used: Mutex::new(HashMap::new()),
            locks: SessionLocks::new(4096),
            config,
        });
        // Sandboxes of this host from an earlier run have no worker any more.
        for (session, _) in hands.sandboxes.list().await.unwrap_or_default() {
            if let Ok(id) = SessionId::parse(session) {
                tracing::info!(session = %id, "Removing an orphaned sandbox.");
                hands.sandboxes.remove_sandbox(&id).await;
            }
        }
        Ok(hands)
    }

    /// The sandboxes this worker drives.
    pub fn sandboxes(&self) -> &Sandboxes {
        &self.sandboxes
    }

    /// Pulls and runs jobs until `shutdown` resolves; jobs in progress then finish.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), HandsError> {
        let err = |e: String| HandsError::Consumer(e);
        let stream = self
            .js
            .get_stream(subjects::TOOLS_STREAM)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut consumers: Vec<jetstream::consumer::Consumer<pull::Config>> = Vec::new();
        for name in [POOL_CONSUMER.to_string(), host_consumer(&self.config.host)] {
            consumers.push(
                stream
                    .get_consumer(&name)
                    .await
                    .map_err(|e| err(e.to_string()))?,
            );
        }
        // The pool's jobs and this host's, as one stream (opened again after errors).
        let batch = self.config.concurrency.min(64);
        let open = || {
            let consumers = consumers.clone();
            async move {
                let mut streams = Vec::new();
                for c in consumers {
                    streams.push(
                        c.stream()
                            .max_messages_per_batch(batch)
                            .heartbeat(crate::work_queue::PULL_HEARTBEAT)
                            .expires(Duration::from_secs(30))
                            .messages()
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                let host_msgs = streams.pop().expect("two consumers");
                let pool_msgs = streams.pop().expect("two consumers");
                Ok(futures_util::stream::select(pool_msgs, host_msgs))
            }
        };
        // Keep this hand in the registry, and move jobs stranded on dead hosts to the pool.
        let announcer = {
            let me = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(me.config.registry_ttl / 3).await;
                    if let Err(e) = me
                        .registry
                        .announce(&me.config.host, me.config.registry_ttl)
                        .await
                    {
                        tracing::warn!(error = %e, "Renewing this hand in the registry failed.");
                    }
                    match me.registry.reroute_orphaned_jobs().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            moved = n,
                            "Moved jobs of hands that are gone to the pool."
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "Rerouting jobs of hands that are gone failed.")
                        }
                    }
                }
            }))
        };
        let reaper = {
            let me = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(30).min(me.config.idle_reap)).await;
                    me.reap_idle().await;
                }
            }))
        };
        tracing::info!(host = %self.config.host, "Hands are taking tool jobs.");
        let result = crate::work_queue::pull_loop(open, self.config.concurrency, shutdown, |msg| {
            let me = self.clone();
            async move { me.handle(msg).await }
        })
        .await
        .map_err(err);
        drop(reaper);
        drop(announcer);
        self.registry.withdraw(&self.config.host).await;
        if let Some(e) = self.egress.get() {
            e.remove(self.sandboxes.docker()).await;
        }
        result
    }

    async fn reap_idle(&self) {
        let idle: Vec<SessionId> = {
            let used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
            used.iter()
                .filter(|(_, t)| t.elapsed() > self.config.idle_reap)
                .map(|(s, _)| s.clone())
                .collect()
        };
        for s in idle {
            // Not while a job runs in it (a job holds the session's lock), and not if one
            // started since the list was made.
            let lock = self.locks.get(&s);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            let still_idle = self
                .last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&s)
                .is_some_and(|t| t.elapsed() > self.config.idle_reap);
            if !still_idle {
                continue;
            }
            tracing::info!(session = %s, "Removing an idle sandbox.");
            self.sandboxes.remove_sandbox(&s).await;
            self.last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&s);
        }
    }

    async fn handle(&self, msg: jetstream::Message) {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        let job: ToolJob = match serde_json::from_slice(&msg.payload) {
            Ok(j) => j,
            Err(e) => {
                self.dead_letter(&msg, &format!("not a tool job: {e}"))
                    .await;
                return;
            }
        };
        let heartbeat = {
            let every = self.config.ack_wait / 3;
            let acker = msg.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = acker.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "A job heartbeat failed.");
                    }
                }
            }))
        };
        let last_try = delivered >= self.config.max_deliver;
        let result = self.run_job(&job, last_try).await;
        drop(heartbeat);
        match result {
            Ok(()) => {
                let _ = msg.double_ack().await;
            }
            Err(JobError::Log(LogError::Invalid(why))) => {
                self.dead_letter(&msg, &why).await;
            }
            Err(e) => {
                tracing::warn!(session = %job.session_id, tool_use_id = %job.tool_use_id, error = %e, "Tool job failed; it will be redelivered.");
                let delay = Duration::from_millis(250 * (1 << delivered.clamp(0, 6)));
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn dead_letter(&self, msg: &jetstream::Message, why: &str) {
        tracing::warn!(error = why, "Refusing a tool job.");
        let mut h = async_nats::HeaderMap::new();
        h.insert("Herd-Error", why.replace(['\r', '\n'], " ").as_str());
        h.insert("Herd-Original-Subject", msg.subject.as_str());
        let ok = match self
            .js
            .publish_with_headers(DEAD_LETTER_SUBJECT, h, msg.payload.clone())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        let _ = msg
            .ack_with(if ok {
                AckKind::Term
            } else {
                AckKind::Nak(Some(Duration::from_secs(5)))
            })
            .await;
    }

    /// Runs a built-in tool in the session's sandbox (provisioning it when needed).
    async fn in_sandbox(
        &self,
        session: &SessionId,
        image: &str,
        call: &AgentToolUse,
        access: &super::http_request::SessionAccess,
        last_try: bool,
    ) -> Result<tools::ToolOutcome, JobError> {
        let egress = if access.egress {
            // Optional: a host that cannot create the network still runs every session without
            // networking, and tells the ones that ask for it.
            match self
                .egress
                .get_or_try_init(|| {
                    super::egress::Egress::start(self.sandboxes.docker(), &self.config.host)
                })
                .await
            {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "No egress network for a session with limited networking.");
                    return Ok(tools::ToolOutcome {
                        text: format!(
                            "This session asks for limited networking, but this hand cannot provide it ({e}); no tool can run here until it can."
                        ),
                        is_error: true,
                    });
                }
            }
        } else {
            None
        };
        let ensured = self
            .sandboxes
            .ensure_with(
                session,
                Some(image),
                egress.map(|e| (e.network(), e.proxy_url())),
            )
            .await;
        if let (Ok(sandbox), Some(e)) = (&ensured, egress) {
            // The proxy knows the sandbox by its address: set (or refresh) its rules.
            match self.sandboxes.address_on(sandbox, e.network()).await {
                Some(ip) => e.allow(ip, access.allowed_hosts.clone()),
                None => {
                    tracing::warn!(session = %session, "An egress sandbox has no address on its network.")
                }
            }
        }
        let outcome = match ensured {
            Ok(sandbox) => {
                let mut note = if sandbox.fresh {
                    self.provisioned(session, image, &sandbox.id).await?
                } else {
                    None
                };
                // A fresh sandbox gets the session's repositories (a workspace that survived
                // a lost sandbox keeps its clones).
                if sandbox.fresh && !access.resources.is_empty() {
                    match self
                        .git
                        .clone_missing(&self.sandboxes, session, image, access)
                        .await
                    {
                        Ok(Some(cloned)) => {
                            note = Some(match note {
                                Some(n) => format!("{n}\n{cloned}"),
                                None => cloned,
                            })
                        }
                        Ok(None) => {}
                        Err(e) if !last_try => return Err(JobError::Docker(e.to_string())),
                        Err(e) => {
                            note = Some(format!(
                                "The session's repositories could not be cloned: {e}"
                            ))
                        }
                    }
                }
                let ran = if call.name == super::git::TOOL {
                    self.git
                        .run(
                            &self.sandboxes,
                            &sandbox,
                            session,
                            image,
                            access,
                            &call.input,
                        )
                        .await
                } else {
                    tools::run(&self.sandboxes, &sandbox, &call.name, &call.input).await
                };
                match ran {
                    Ok(mut o) => {
                        if let Some(note) = note {
                            o.text = format!("{note}\n\n{}", o.text);
                        }
                        o
                    }
                    Err(SandboxError::Lost(why)) => {
                        let lost = Event::new(SandboxLost {
                            host: self.config.host.clone(),
                            reason: why.clone(),
                        });
                        self.log.append_fact(session, &lost).await?;
                        tools::ToolOutcome {
                            text: format!(
                                "The sandbox was lost while this tool ran ({why}). The next tool call gets a fresh sandbox; files in /workspace are kept."
                            ),
                            is_error: true,
                        }
                    }
                    Err(e) if !last_try => return Err(JobError::Docker(e.to_string())),
                    Err(e) => tools::ToolOutcome {
                        text: format!("The tool could not run: {e}"),
                        is_error: true,
                    },
                }
            }
            Err(SandboxError::NoImage(image)) => tools::ToolOutcome {
                text: format!(
                    "The sandbox image {image:?} is not available on the hand host; no tool can run until it is built."
                ),
                is_error: true,
            },
            Err(e) if !last_try => return Err(JobError::Docker(e.to_string())),
            Err(e) => tools::ToolOutcome {
                text: format!("No sandbox could be provisioned: {e}"),
                is_error: true,
            },
        };
        Ok(outcome)
    }

    /// What the session allows `http_request`: its vaults and allowed hosts, from its
    /// `session.created`.
    async fn session_access(
        &self,
        session: &SessionId,
    ) -> Result<super::http_request::SessionAccess, JobError> {
        let first = self
            .log
            .read(
                session,
                &Slice {
                    types: vec!["session.created".into()],
                    limit: Some(1),
                    ..Default::default()
                },
            )
            .await?;
        Ok(match first.first() {
            Some(Ok(StoredEvent {
                event:
                    Event {
                        body: EventBody::SessionCreated(c),
                        ..
                    },
                ..
            })) => super::http_request::SessionAccess {
                vault_ids: c.vault_ids.clone(),
                resources: c.resources.clone(),
                egress: c.environment.networking.as_deref() == Some("limited"),
                allowed_hosts: c.environment.allowed_hosts.clone(),
            },
            _ => super::http_request::SessionAccess::default(),
        })
    }

    /// The session's log from the job's call on. Direct gets may be served by any replica, and
    /// one that has not caught up yet (a node just restarted) would show nothing at the call's
    /// sequence: refusing the job on such a read would drop a real call for good. So a read
    /// that does not reach the call's sequence is checked against the leader, and repeated
    /// while the leader has the session past it.
    async fn read_from_call(&self, job: &ToolJob) -> Result<Vec<crate::event::Record>, JobError> {
        let session = &job.session_id;
        let slice = Slice {
            from: Some(job.tool_use_seq),
            ..Default::default()
        };
        let started = tokio::time::Instant::now();
        for attempt in 1..=40u64 {
            let records = self.log.read(session, &slice).await?;
            let reached = records.iter().any(|r| {
                let seq = match r {
                    Ok(e) => e.seq,
                    Err(bad) => bad.seq,
                };
                seq >= job.tool_use_seq
            });
            if reached || self.log.last_sequence(session).await? < job.tool_use_seq {
                return Ok(records);
            }
            tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
        }
        Err(JobError::Log(LogError::Unavailable {
            attempts: 40,
            elapsed_ms: started.elapsed().as_millis() as u64,
            last: format!(
                "the replica read never reached sequence {} of session {session}",
                job.tool_use_seq
            ),
        }))
    }

    async fn run_job(&self, job: &ToolJob, last_try: bool) -> Result<(), JobError> {
        let session = &job.session_id;
        // What the log says about this call: it must exist, and may already be answered.
        let records = self.read_from_call(job).await?;
        let mut call = None;
        let mut answered = None;
        for r in records.iter().filter_map(|r| r.as_ref().ok()) {
            match &r.event.body {
                EventBody::AgentToolUse(u)
                    if u.tool_use_id == job.tool_use_id && r.seq == job.tool_use_seq =>
                {
                    call = Some(u.clone())
                }
                EventBody::AgentToolResult(res) if res.tool_use_id == job.tool_use_id => {
                    answered = Some(r.seq)
                }
                _ => {}
            }
        }
        if let Some(seq) = answered {
            // A redelivery of a job that already ran: make sure the session was woken.
            return self.wake(session, seq).await;
        }
        let Some(call) = call else {
            return Err(JobError::Log(LogError::Invalid(format!(
                "no agent.tool_use {} at sequence {} in session {session}",
                job.tool_use_id, job.tool_use_seq
            ))));
        };
        // One tool at a time per session on this host: calls of one turn share a workspace.
        let lock = self.locks.get(session);
        let _guard = lock.lock().await;
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), Instant::now());
        let image = job
            .image
            .clone()
            .unwrap_or_else(|| self.config.sandbox.default_image.clone());
        let access = self.session_access(session).await?;
        let outcome = if call.name == super::http_request::TOOL {
            // Outside the sandbox: the one tool that may use secrets.
            self.http.run(&access, &call.input).await
        } else {
            self.in_sandbox(session, &image, &call, &access, last_try)
                .await?
        };
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), Instant::now());
        let (text, output_ref) = match self
            .inline_or_store(session, &job.tool_use_id, &outcome.text)
            .await
        {
            Ok(r) => r,
            Err(e) if !last_try => return Err(e),
            // The object store is out of reach on the last try: keep what fits inline rather
            // than leave the call without a result.
            Err(_) => (
                head_and_tail(&outcome.text, "the whole output could not be stored"),
                None,
            ),
        };
        // The tool may have run long: a result may have landed meanwhile (an interrupt's, or a
        // redelivered job's), past the two-minute window in which the derived id alone would
        // deduplicate it.
        if let Some(seq) = self.result_in_log(session, job).await? {
            return self.wake(session, seq).await;
        }
        let id = result_event_id(session, &job.tool_use_id)
            .map_err(|e| LogError::Invalid(e.to_string()))?;
        let result = Event::with_id(
            id,
            AgentToolResult {
                tool_use_id: job.tool_use_id.clone(),
                content: vec![ContentBlock::text(text)],
                is_error: outcome.is_error,
                output_ref,
            },
        );
        let appended = self.log.append_fact(session, &result).await?;
        self.wake(session, appended.last_seq).await
    }

    /// Keeps a short output inline; puts a long one in the object store and keeps its head and
    /// tail, with a note saying where the rest is.
    async fn inline_or_store(
        &self,
        session: &SessionId,
        tool_use_id: &str,
        text: &str,
    ) -> Result<(String, Option<crate::event::OutputRef>), JobError> {
        if text.len() <= INLINE_LIMIT {
            return Ok((text.to_string(), None));
        }
        let name = format!("sessions/{session}/{tool_use_id}.txt");
        let store = self
            .js
            .get_object_store(BLOBS)
            .await
            .map_err(|e| JobError::Blob(e.to_string()))?;
        store
            .put(name.as_str(), &mut text.as_bytes())
            .await
            .map_err(|e| JobError::Blob(e.to_string()))?;
        let inline = head_and_tail(
            text,
            &format!(
                "the whole output ({} bytes) is in object store {BLOBS}, object {name}",
                text.len()
            ),
        );
        Ok((
            inline,
            Some(crate::event::OutputRef {
                bucket: BLOBS.into(),
                name,
                size: text.len() as u64,
            }),
        ))
    }

    /// The sequence of the call's result, if one is in the log.
    async fn result_in_log(
        &self,
        session: &SessionId,
        job: &ToolJob,
    ) -> Result<Option<u64>, JobError> {
        let records = self
            .log
            .read(
                session,
                &Slice {
                    from: Some(job.tool_use_seq),
                    types: vec!["agent.tool_result".into()],
                    ..Default::default()
                },
            )
            .await?;
        Ok(records
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .find_map(|r| match &r.event.body {
                EventBody::AgentToolResult(res) if res.tool_use_id == job.tool_use_id => {
                    Some(r.seq)
                }
                _ => None,
            }))
    }

    /// Records a new sandbox in the log; when the session had one before, returns the note
    /// that tells the model what survived (the workspace on the same host; nothing across
    /// hosts).
    async fn provisioned(
        &self,
        session: &SessionId,
        image: &str,
        container: &str,
    ) -> Result<Option<String>, JobError> {
        let earlier = self
            .log
            .read(
                session,
                &Slice {
                    types: vec!["sandbox.provisioned".into()],
                    last: Some(1),
                    ..Default::default()
                },
            )
            .await?;
        let previous_host = earlier
            .iter()
            .rev()
            .find_map(|r| match &r.as_ref().ok()?.event.body {
                EventBody::SandboxProvisioned(p) => Some(p.host.clone()),
                _ => None,
            });
        let event = Event::new(SandboxProvisioned {
            host: self.config.host.clone(),
            image: image.to_string(),
            container: container.to_string(),
        });
        self.log.append_fact(session, &event).await?;
        Ok(previous_host.map(|h| {
            if h == self.config.host {
                "Note: this session's sandbox was replaced by a fresh one. Files in /workspace were kept; processes and files elsewhere are gone.".to_string()
            } else {
                format!(
                    "Note: this session's sandbox (on host {h}) is gone; this call ran in a fresh sandbox on another host, so files written before are not here."
                )
            }
        }))
    }

    async fn wake(&self, session: &SessionId, seq: u64) -> Result<(), JobError> {
        crate::brain::wake::publish(&self.js, session, seq)
            .await
            .map_err(|e| JobError::Wake(e.to_string()))
    }
}
