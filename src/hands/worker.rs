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

use async_nats::jetstream;

use super::job::{self, JobFate, SessionAccess};
use super::outputs::{self, BlobError};
use super::registry::{Registry, check_host};
use super::sandbox::{Sandbox, SandboxConfig, SandboxError, Sandboxes};
use super::tools;
use super::{snapshot, snapshots};
use crate::bus::jobs::{ToolJob, result_event_id};
use crate::bus::work_queue::{self, ConsumerSpec, Delivery};
use crate::bus::{BusError, subjects};
use crate::event::{
    AgentToolResult, AgentToolUse, ContentBlock, Event, SandboxLost, SandboxProvisioned,
    SandboxWorkspaceRestored, SandboxWorkspaceSaved, SessionId,
};
use crate::session::{LogError, SessionLog, Slice};
use crate::tasks::{AbortOnDrop, SessionLocks};

/// The durable consumer of the shared pool.
pub const POOL_CONSUMER: &str = "hands-pool";

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
    /// Images sessions may name besides the default one (the deployment's allow-list; any
    /// other image is refused, so a session cannot run an arbitrary local image).
    pub allowed_images: Vec<String>,
    /// Bytes of large outputs one session may keep in the object store (rule 11); past it,
    /// an output keeps only its head and tail, with a note saying so.
    pub blob_quota: u64,
    /// Special address ranges (loopback, private, link-local, …) the hand may still connect to
    /// for sandboxes: `http_request`, the egress proxy and git. Empty: none of them.
    pub allowed_ranges: Vec<super::address::Range>,
    /// Bytes one session's `/workspace` may hold (measured; see [`super::workspace`]).
    pub workspace_quota: u64,
    /// How often a workspace is measured (at most once per this, after a tool call).
    pub workspace_check_every: Duration,
    /// Sandboxes this hand runs at once (N25: each may use `sandbox.memory_bytes`). Past it,
    /// the least recently used idle sandbox is removed (its workspace stays); when every one
    /// is busy, the call waits for a redelivery.
    pub max_sandboxes: usize,
    /// How long one MCP tool call may take (all its requests); past it the call is an error
    /// result the model sees.
    pub mcp_call_timeout: Duration,
    /// The largest workspace archive a snapshot takes (rule 11); a larger workspace is not
    /// saved, and its `sandbox.workspace_saved` says so.
    pub snapshot_limit: u64,
    /// The warm pool: per image, how many hardened sandboxes this hand keeps made and started
    /// before any session asks, so a session's first tool call does not wait for Docker to
    /// create one. Each is bound to the first session that takes it, never to another.
    pub warm_pool: Vec<(String, usize)>,
}

/// How long after a pool sandbox is claimed the pool is refilled.
pub const POOL_REFILL_DELAY: Duration = Duration::from_millis(750);

/// The most sandboxes one hand's warm pool may hold, over all images.
pub const MAX_WARM_POOL: usize = 64;

/// The images every deployment allows: herd's own sandbox images.
pub const HERD_IMAGES: &[&str] = &["herd-sandbox:debian", "herd-sandbox:busybox"];

impl Default for HandsConfig {
    fn default() -> Self {
        Self {
            // The command line uses $HOSTNAME; a default reads no environment.
            host: "local".into(),
            // Short, so a crashed hand's job runs again within seconds; a live hand
            // heartbeats every ack_wait / 3 while the tool runs.
            ack_wait: Duration::from_secs(3),
            max_deliver: 5,
            concurrency: 8,
            idle_reap: Duration::from_secs(600),
            sandbox: SandboxConfig::default(),
            registry_ttl: Duration::from_secs(4),
            vault_key: None,
            allowed_images: HERD_IMAGES.iter().map(|s| s.to_string()).collect(),
            blob_quota: 256 << 20,
            allowed_ranges: Vec::new(),
            workspace_quota: 10 << 30,
            workspace_check_every: Duration::from_secs(30),
            max_sandboxes: 32,
            mcp_call_timeout: super::mcp::CALL_TIMEOUT,
            snapshot_limit: 1 << 30,
            warm_pool: Vec::new(),
        }
    }
}

/// Why a hand could not start or keep going.
#[derive(Debug, thiserror::Error)]
pub enum HandsError {
    /// The host name cannot be a subject token.
    #[error("hands setup failed: {0}")]
    Host(#[from] crate::event::IdError),
    /// Setting up the log failed.
    #[error("hands setup failed: {0}")]
    Log(#[from] LogError),
    /// Setting up streams, consumers or the registry failed.
    #[error("hands setup failed: {0}")]
    Bus(#[from] BusError),
    /// Docker is out of reach.
    #[error("hands setup failed: {0}")]
    Docker(#[from] SandboxError),
    /// The vault or the HTTP client could not be set up.
    #[error("hands setup failed: {0}")]
    Tools(String),
    /// The job consumer stopped.
    #[error("the tool-job consumer failed: {0}")]
    Consumer(BusError),
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// The job does not match the log: dead-letter it, never run it.
    #[error("{0}")]
    Refused(String),
    #[error("docker: {0}")]
    Docker(String),
    #[error("cannot publish the wake: {0}")]
    Wake(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// The consumers a hand on `host` takes jobs from: the shared pool, and its own host's.
pub fn consumers(config: &HandsConfig) -> [ConsumerSpec; 2] {
    let spec = |durable: String, description: String, filter: String| ConsumerSpec {
        stream: subjects::TOOLS_STREAM,
        durable,
        description,
        filter,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        backoff: Vec::new(),
    };
    [
        spec(
            POOL_CONSUMER.into(),
            "herd hands: the shared pool of tool jobs".into(),
            subjects::POOL_JOBS.into(),
        ),
        spec(
            format!("hands-host-{}", config.host),
            format!("herd hands: jobs for sandboxes on host {}", config.host),
            subjects::host_jobs(&config.host),
        ),
    ]
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
    /// Where the hand may connect for sandboxes.
    policy: super::address::AddressPolicy,
    /// Per session: the sequence after the last result counted, and the blob bytes so far.
    blob_tally: Mutex<HashMap<SessionId, (u64, u64)>>,
    /// The last measure of each session's workspace.
    workspaces: Mutex<HashMap<SessionId, super::workspace::Measure>>,
    /// Each session's workspace volume here when it is not named after the session.
    volumes: Mutex<HashMap<SessionId, Option<String>>>,
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
        check_host(&config.host)?;
        // Saturating: a count near usize::MAX must be refused, not wrap round under the bound.
        let pooled = config
            .warm_pool
            .iter()
            .fold(0usize, |sum, (_, n)| sum.saturating_add(*n));
        if pooled > MAX_WARM_POOL {
            return Err(HandsError::Tools(format!(
                "the warm pool asks for {pooled} sandboxes; a hand keeps at most {MAX_WARM_POOL}"
            )));
        }
        for (i, (image, _)) in config.warm_pool.iter().enumerate() {
            // The pool fills each entry against the same listing of that image's sandboxes.
            if config.warm_pool[..i]
                .iter()
                .any(|(other, _)| other == image)
            {
                return Err(HandsError::Tools(format!(
                    "the warm pool names the image {image:?} twice; give it once, with its whole count"
                )));
            }
            if *image != config.sandbox.default_image && !config.allowed_images.contains(image) {
                return Err(HandsError::Tools(format!(
                    "the warm pool's image {image:?} is not one sessions may use (the default image or --allow-image)"
                )));
            }
        }
        // Docker first: a missing engine or runtime is a local mistake, reported before
        // anything waits on NATS.
        let sandboxes = Sandboxes::connect(&config.host, config.sandbox.clone()).await?;
        if !config.warm_pool.is_empty() {
            sandboxes.enable_pool();
        }
        let js = jetstream::new(client.clone());
        let registry = Registry::open(js.clone()).await?;
        let log = SessionLog::open(client).await?;
        for spec in consumers(&config) {
            spec.ensure(&js).await?;
        }
        registry.announce(&config.host, config.registry_ttl).await?;
        let vault = match &config.vault_key {
            Some(key) => Some((
                crate::credentials::vault::Vault::open_store(&js)
                    .await
                    .map_err(|e| HandsError::Tools(e.to_string()))?,
                key.clone(),
            )),
            None => None,
        };
        let policy = super::address::AddressPolicy::new(config.allowed_ranges.clone());
        let git = super::git::GitRemote::new(vault.clone());
        let http = super::http_request::HttpRequests::new(vault, policy.clone())
            .map_err(|e| HandsError::Tools(e.to_string()))?;
        let hands = Arc::new(Self {
            policy,
            workspaces: Mutex::new(HashMap::new()),
            volumes: Mutex::new(HashMap::new()),
            blob_tally: Mutex::new(HashMap::new()),
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
        // Sandboxes and git helpers of this host from an earlier run have no worker any more
        // (removed by container id, so a helper left by a crash mid-push goes too).
        for (session, container) in hands.sandboxes.list().await.unwrap_or_default() {
            tracing::info!(%session, %container, "Removing an orphaned container.");
            hands.sandboxes.remove_container_id(&container).await;
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
        let mut pulls = Vec::new();
        for spec in consumers(&self.config) {
            pulls.push(spec.ensure(&self.js).await.map_err(HandsError::Consumer)?);
        }
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
        let pool = (!self.config.warm_pool.is_empty()).then(|| {
            let me = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    me.fill_pool().await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }))
        });
        tracing::info!(host = %self.config.host, "Hands are taking tool jobs.");
        let result = work_queue::run(pulls, self.config.concurrency, shutdown, |msg| {
            let me = self.clone();
            async move { me.handle(msg).await }
        })
        .await
        .map_err(HandsError::Consumer);
        drop(reaper);
        drop(announcer);
        if pool.is_some() {
            drop(pool);
            self.sandboxes.drain_pool().await;
        }
        self.registry.withdraw(&self.config.host).await;
        if let Some(e) = self.egress.get() {
            e.remove(self.sandboxes.docker()).await;
        }
        result
    }

    /// Tops the warm pool up: one new sandbox per missing place, image by image.
    async fn fill_pool(&self) {
        // Not while the session that just took a sandbox runs its first call.
        if self
            .sandboxes
            .since_last_claim()
            .is_some_and(|d| d < POOL_REFILL_DELAY)
        {
            return;
        }
        self.sandboxes.prune_pool().await;
        let Ok(pooled) = self.sandboxes.pooled().await else {
            return;
        };
        for (image, want) in &self.config.warm_pool {
            let have = pooled.iter().filter(|(_, i, _)| i == image).count();
            for _ in have..*want {
                match self.sandboxes.add_pooled(image).await {
                    Ok(s) => {
                        tracing::debug!(%image, container = %s.id, "Added a sandbox to the warm pool.")
                    }
                    Err(e) => {
                        tracing::warn!(%image, error = %e, "Could not add a sandbox to the warm pool.");
                        return;
                    }
                }
            }
        }
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

    /// Makes room for `session`'s sandbox when this hand is at `max_sandboxes`: removes the
    /// least recently used sandboxes that no job holds. False when every other one is busy.
    async fn make_room(&self, session: &SessionId) -> bool {
        let mut others: Vec<(SessionId, Instant)> = {
            let used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
            used.iter()
                .filter(|(s, _)| *s != session)
                .map(|(s, t)| (s.clone(), *t))
                .collect()
        };
        let max = self.config.max_sandboxes.max(1);
        if others.len() < max {
            return true;
        }
        others.sort_by_key(|(_, t)| *t);
        let mut excess = others.len() + 1 - max;
        for (s, _) in others {
            if excess == 0 {
                break;
            }
            let lock = self.locks.get(&s);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            tracing::info!(session = %s, max, "Removing the least recently used sandbox to make room.");
            self.sandboxes.remove_sandbox(&s).await;
            self.last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&s);
            excess -= 1;
        }
        excess == 0
    }

    async fn handle(&self, msg: Delivery) {
        let job: ToolJob = match serde_json::from_slice(&msg.message().payload) {
            Ok(j) => j,
            Err(e) => {
                self.dead_letter(&msg, &format!("not a tool job: {e}"))
                    .await;
                return;
            }
        };
        let heartbeat = msg.keep_alive(self.config.ack_wait / 3, || async {});
        let last_try = msg.delivered >= self.config.max_deliver;
        let result = self.run_job(&msg, &job, last_try).await;
        drop(heartbeat);
        match result {
            Ok(()) => {
                let _ = msg.ack().await;
            }
            Err(JobError::Refused(why)) => self.dead_letter(&msg, &why).await,
            Err(e) => {
                tracing::warn!(session = %job.session_id, tool_use_id = %job.tool_use_id, error = %e, "Tool job failed; it will be redelivered.");
                msg.nak_with_backoff().await;
            }
        }
    }

    async fn dead_letter(&self, msg: &Delivery, why: &str) {
        tracing::warn!(error = why, "Refusing a tool job.");
        msg.dead_letter(&self.js, subjects::DEAD_LETTER_TOOL, why, None)
            .await;
    }

    /// Runs a built-in tool in the session's sandbox (provisioning it when needed).
    /// The egress network and proxy (for limited sessions and the git helper), started on
    /// first use; an error is retried on the next call.
    async fn egress(&self) -> Result<&super::egress::Egress, SandboxError> {
        self.egress
            .get_or_try_init(|| {
                super::egress::Egress::start(
                    self.sandboxes.docker(),
                    &self.config.host,
                    self.policy.clone(),
                )
            })
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "No egress network on this hand."))
    }

    async fn in_sandbox(
        &self,
        session: &SessionId,
        image: &str,
        call: &AgentToolUse,
        access: &SessionAccess,
        last_try: bool,
    ) -> Result<tools::ToolOutcome, JobError> {
        let egress = if access.egress {
            // Optional: a host that cannot create the network still runs every session without
            // networking, and tells the ones that ask for it.
            match self.egress().await {
                Ok(e) => Some(e),
                Err(e) => {
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
        if !self.make_room(session).await {
            let why = format!(
                "this hand runs its limit of {} sandboxes and every one is busy",
                self.config.max_sandboxes
            );
            if !last_try {
                return Err(JobError::Docker(why));
            }
            return Ok(tools::ToolOutcome {
                text: format!("No sandbox could be provisioned: {why}; try again later."),
                is_error: true,
            });
        }
        let volume = self.known_volume(session).await?;
        let ensured = self
            .sandboxes
            .ensure_with(
                session,
                Some(image),
                egress.map(|e| (e.network(), e.proxy_url())),
                volume.as_deref(),
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
                    let previous = self.provisioned(session, image, &sandbox).await?;
                    if sandbox.fresh_volume {
                        // A new volume: the session's files are wherever its last snapshot is.
                        self.restore_workspace(session, &sandbox, previous.as_deref())
                            .await?
                    } else {
                        previous.map(|h| job::replaced_sandbox_note(&h, &self.config.host))
                    }
                } else {
                    None
                };
                // A fresh sandbox gets the session's repositories (a workspace that survived
                // a lost sandbox keeps its clones).
                if sandbox.fresh && !access.resources.is_empty() {
                    let cloned = match self.egress().await {
                        Ok(net) => {
                            self.git
                                .clone_missing(&self.sandboxes, net, session, image, access)
                                .await
                        }
                        Err(e) => Ok(Some(format!(
                            "The session's repositories were not cloned: this hand has no network for its git helper ({e})."
                        ))),
                    };
                    match cloned {
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
                let measured = self
                    .workspaces
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(session)
                    .copied();
                let quota = self.config.workspace_quota;
                let ran = if let Some(why) = super::workspace::refusal(measured, quota, &call.name)
                {
                    Ok(tools::ToolOutcome {
                        text: why,
                        is_error: true,
                    })
                } else if call.name == super::git::TOOL {
                    match self.egress().await {
                        Ok(net) => {
                            self.git
                                .run(
                                    &self.sandboxes,
                                    net,
                                    &sandbox,
                                    session,
                                    image,
                                    access,
                                    &call.input,
                                )
                                .await
                        }
                        Err(e) => Ok(tools::ToolOutcome {
                            text: format!(
                                "git_remote cannot run on this hand: it has no network for its git helper ({e})."
                            ),
                            is_error: true,
                        }),
                    }
                } else {
                    tools::run(&self.sandboxes, &sandbox, &call.name, &call.input).await
                };
                match ran {
                    Ok(mut o) => {
                        if let Some(note) = note {
                            o.text = format!("{note}\n\n{}", o.text);
                        }
                        if let Some(bytes) = self.measure_workspace(session, &sandbox).await
                            && bytes > quota
                        {
                            // Its processes stop too (a background writer would go on): the
                            // next call gets a fresh sandbox over the same files to clean up.
                            self.sandboxes.remove_sandbox(session).await;
                            o.text = format!(
                                "{}\n\n[{}: the sandbox's processes were stopped (files are kept); delete files with bash before writing more; tools other than bash are refused until then]",
                                o.text,
                                super::workspace::over(bytes, quota)
                            );
                            o.is_error = true;
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

    /// Measures the session's workspace when a measure is due; the bytes measured, if any.
    /// A measure that fails (a slow `du`) keeps the last one.
    async fn measure_workspace(&self, session: &SessionId, sandbox: &Sandbox) -> Option<u64> {
        let last = self
            .workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .copied();
        let (quota, every) = (
            self.config.workspace_quota,
            self.config.workspace_check_every,
        );
        if !super::workspace::due(last, quota, every, Instant::now()) {
            return None;
        }
        // From the host when the volume is visible here (nothing in the sandbox can hide a
        // file from root's du), else from inside the sandbox. A measure that fails or takes
        // over 20 s counts as over the quota: it fails closed.
        let measured = match self.sandboxes.workspace_mountpoint(session).await {
            Some(path) => {
                let du = tokio::process::Command::new("du")
                    .arg("-skx")
                    .arg(&path)
                    .kill_on_drop(true)
                    .output();
                match tokio::time::timeout(Duration::from_secs(20), du).await {
                    Ok(Ok(o)) if o.status.success() => {
                        super::workspace::parse_du(&String::from_utf8_lossy(&o.stdout))
                    }
                    _ => None,
                }
            }
            None => self
                .sandboxes
                .exec(
                    sandbox,
                    vec!["du".into(), "-sk".into(), "/workspace".into()],
                    None,
                    4096,
                    Duration::from_secs(20),
                )
                .await
                .ok()
                .filter(|o| o.exit_code == Some(0))
                .and_then(|o| super::workspace::parse_du(&String::from_utf8_lossy(&o.stdout))),
        };
        let bytes = measured.unwrap_or(super::workspace::UNMEASURED);
        self.workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                session.clone(),
                super::workspace::Measure {
                    at: Instant::now(),
                    bytes,
                },
            );
        Some(bytes)
    }

    /// What the session allows the tools: its vaults, allowed hosts and repositories, from
    /// its `session.created`.
    async fn session_access(&self, session: &SessionId) -> Result<SessionAccess, JobError> {
        Ok(self
            .log
            .created(session)
            .await?
            .map(|c| SessionAccess::from_created(&c))
            .unwrap_or_default())
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

    async fn run_job(&self, msg: &Delivery, job: &ToolJob, last_try: bool) -> Result<(), JobError> {
        let session = &job.session_id;
        // One tool at a time per session on this host: calls of one turn share a workspace.
        // A call queued behind its session's running one waits without a slot (N18). The log
        // is read after the lock: a second delivery of the same call that waited behind the
        // first finds its result there and does not run the tool again.
        let lock = self.locks.get(session);
        let _guard = match lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => msg.without_slot(lock.lock_owned()).await,
        };
        // What the log says about this call: it must exist, and may already be answered.
        let records = self.read_from_call(job).await?;
        let call = match job::classify(&records, job) {
            // A redelivery of a job that already ran: make sure the session was woken.
            JobFate::Answered(seq) => return self.wake(session, seq).await,
            JobFate::Run(call) => call,
            JobFate::RunMcp(call) => return self.run_mcp_call(job, &call, &records).await,
            JobFate::ListMcp(server) => return self.list_mcp_tools(job, &server).await,
            JobFate::Snapshot(request) => {
                return self.save_workspace(job, &request, last_try).await;
            }
            JobFate::NotInLog => {
                return Err(JobError::Refused(format!(
                    "no agent.tool_use {} at sequence {} in session {session}",
                    job.tool_use_id, job.tool_use_seq
                )));
            }
        };
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), Instant::now());
        let access = self.session_access(session).await?;
        let images = job::ImagePolicy {
            default_image: self.config.sandbox.default_image.clone(),
            allowed: self.config.allowed_images.clone(),
        };
        let authorized = job::authorize(&access, job, &call, &records, &images);
        let outcome = if let Err(why) = &authorized {
            tracing::warn!(session = %session, tool_use_id = %job.tool_use_id, why = %why, "Refusing to run a tool call.");
            tools::ToolOutcome {
                text: why.clone(),
                is_error: true,
            }
        } else if call.name == super::http_request::TOOL {
            // Outside the sandbox: the one tool that may use secrets.
            self.http.run(&access, &call.input).await
        } else {
            let image = authorized.as_deref().unwrap_or_default();
            self.in_sandbox(session, image, &call, &access, last_try)
                .await?
        };
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), Instant::now());
        let over_quota = if outcome.text.len() > outputs::INLINE_LIMIT {
            let stored = self.blob_bytes(session).await?;
            outputs::over_quota(stored, outcome.text.len(), self.config.blob_quota)
        } else {
            None
        };
        let stored = match over_quota {
            Some(why) => Ok((outputs::head_and_tail(&outcome.text, &why), None)),
            None => {
                outputs::inline_or_store(&self.js, session, &job.tool_use_id, &outcome.text).await
            }
        };
        let (text, output_ref) = match stored {
            Ok(r) => r,
            Err(e) if !last_try => return Err(e.into()),
            // The object store is out of reach on the last try: keep what fits inline
            // rather than leave the call without a result.
            Err(_) => (
                outputs::head_and_tail(&outcome.text, "the whole output could not be stored"),
                None,
            ),
        };
        self.record_result(
            job,
            AgentToolResult {
                tool_use_id: job.tool_use_id.clone(),
                content: vec![ContentBlock::text(text)],
                is_error: outcome.is_error,
                output_ref,
            },
        )
        .await
    }

    /// Appends a call's result under the id every writer derives for it, and wakes the
    /// session; when a result is in the log already, only wakes it.
    async fn record_result(
        &self,
        job: &ToolJob,
        result: impl Into<crate::event::EventBody>,
    ) -> Result<(), JobError> {
        let session = &job.session_id;
        // The tool may have run long: a result may have landed meanwhile (an interrupt's, or a
        // redelivered job's), past the two-minute window in which the derived id alone would
        // deduplicate it.
        if let Some(seq) = self.result_in_log(session, job).await? {
            return self.wake(session, seq).await;
        }
        let id = result_event_id(session, &job.tool_use_id)
            .map_err(|e| JobError::Refused(e.to_string()))?;
        let appended = self
            .log
            .append_fact(session, &Event::with_id(id, result))
            .await?;
        self.wake(session, appended.last_seq).await
    }

    /// Runs an `agent.mcp_tool_use` (outside the sandbox) and records its result.
    async fn run_mcp_call(
        &self,
        job: &ToolJob,
        call: &crate::event::AgentMcpToolUse,
        records: &[crate::event::Record],
    ) -> Result<(), JobError> {
        let session = &job.session_id;
        let access = self.session_access(session).await?;
        let outcome = match job::authorize_mcp(&access, call, records) {
            Ok(server) => {
                super::mcp_calls::call(
                    &self.http,
                    &access,
                    &server,
                    &call.name,
                    &call.input,
                    self.config.mcp_call_timeout,
                )
                .await
            }
            Err(why) => {
                tracing::warn!(session = %session, tool_use_id = %job.tool_use_id, why = %why, "Refusing to run an MCP call.");
                tools::ToolOutcome {
                    text: why,
                    is_error: true,
                }
            }
        };
        self.record_result(
            job,
            crate::event::AgentMcpToolResult {
                mcp_tool_use_id: job.tool_use_id.clone(),
                content: vec![ContentBlock::text(outcome.text)],
                is_error: outcome.is_error,
            },
        )
        .await
    }

    /// Lists an MCP server's tools for a turn and records them (`session.mcp_tools_listed`,
    /// with the id every hand derives for the job, so it lands once).
    async fn list_mcp_tools(&self, job: &ToolJob, server: &str) -> Result<(), JobError> {
        let session = &job.session_id;
        let access = self.session_access(session).await?;
        let Some(server) = access.mcp_servers.iter().find(|s| s.name == server) else {
            return Err(JobError::Refused(format!(
                "session {session} has no MCP server {server:?}"
            )));
        };
        let record = super::mcp_calls::list(&self.http, &access, server, &job.tool_use_id).await;
        if let Some(why) = &record.error {
            tracing::warn!(session = %session, server = %server.name, why = %why, "An MCP server could not be listed.");
        }
        let id = result_event_id(session, &job.tool_use_id)
            .map_err(|e| JobError::Refused(e.to_string()))?;
        let appended = match self
            .log
            .append_fact(session, &Event::with_id(id.clone(), record.clone()))
            .await
        {
            Ok(a) => a,
            // A listing the log cannot hold as it is: recorded as a failure, so the turn goes
            // on without the server (a retry would only list it again, forever).
            Err(e @ (LogError::TooLarge { .. } | LogError::Invalid(_))) => {
                let failed = crate::event::McpToolsListed {
                    tools: vec![],
                    skipped: vec![],
                    error: Some(format!("the listing could not be recorded: {e}")),
                    ..record
                };
                self.log
                    .append_fact(session, &Event::with_id(id, failed))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        self.wake(session, appended.last_seq).await
    }

    /// Bytes the session's earlier results hold in the object store (their `output_ref`s).
    /// The log is append-only, so the tally is kept per session and only results after the
    /// last one counted are read (not the session's every result for each large output).
    async fn blob_bytes(&self, session: &SessionId) -> Result<u64, JobError> {
        let (from, mut bytes) = self
            .blob_tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .copied()
            .unwrap_or((1, 0));
        let results = self
            .log
            .read(
                session,
                &Slice {
                    types: vec!["agent.tool_result".into()],
                    from: Some(from),
                    ..Default::default()
                },
            )
            .await?;
        let mut next = from;
        for r in results.iter().filter_map(|r| r.as_ref().ok()) {
            next = next.max(r.seq + 1);
            if let crate::event::EventBody::AgentToolResult(res) = &r.event.body
                && let Some(o) = &res.output_ref
            {
                bytes += o.size;
            }
        }
        let mut tally = self.blob_tally.lock().unwrap_or_else(|p| p.into_inner());
        if tally.len() > 4096 {
            tally.clear();
        }
        tally.insert(session.clone(), (next, bytes));
        Ok(bytes)
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
                    types: vec!["agent.tool_result".into(), "agent.mcp_tool_result".into()],
                    ..Default::default()
                },
            )
            .await?;
        Ok(job::result_seq(&records, &job.tool_use_id))
    }

    /// Records a new sandbox in the log; the host of the session's sandbox before it, if any.
    async fn provisioned(
        &self,
        session: &SessionId,
        image: &str,
        sandbox: &Sandbox,
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
        let previous_host = job::previous_host(&earlier);
        let named = sandbox.volume != self.sandboxes.default_volume(session);
        let event = Event::new(SandboxProvisioned {
            host: self.config.host.clone(),
            image: image.to_string(),
            container: sandbox.id.clone(),
            volume: named.then(|| sandbox.volume.clone()),
            from_pool: sandbox.from_pool,
        });
        self.log.append_fact(session, &event).await?;
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        if volumes.len() > 4096 {
            volumes.clear();
        }
        volumes.insert(session.clone(), named.then(|| sandbox.volume.clone()));
        Ok(previous_host)
    }

    /// The session's workspace volume on this host when the log names one (its last sandbox
    /// here came from the pool), remembered after the first read.
    async fn known_volume(&self, session: &SessionId) -> Result<Option<String>, JobError> {
        if let Some(v) = self
            .volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
        {
            return Ok(v.clone());
        }
        let events = self
            .log
            .read(
                session,
                &Slice {
                    types: vec!["sandbox.provisioned".into()],
                    ..Default::default()
                },
            )
            .await?;
        let volume = events
            .iter()
            .rev()
            .filter_map(|r| r.as_ref().ok())
            .find_map(|e| match &e.event.body {
                crate::event::EventBody::SandboxProvisioned(p) if p.host == self.config.host => {
                    Some(p.volume.clone())
                }
                _ => None,
            })
            .flatten();
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), volume.clone());
        Ok(volume)
    }

    /// The object store of large outputs and workspace snapshots.
    async fn blobs(&self) -> Result<async_nats::jetstream::object_store::ObjectStore, JobError> {
        self.js
            .get_object_store(outputs::BLOBS)
            .await
            .map_err(|e| JobError::Docker(format!("opening the object store: {e}")))
    }

    /// The session's recorded snapshots, oldest first: (sequence, request id, manifest).
    async fn recorded_snapshots(
        &self,
        session: &SessionId,
    ) -> Result<Vec<(u64, String, String)>, JobError> {
        Ok(snapshot::recorded(&self.saved_events(session).await?))
    }

    /// The session's `sandbox.workspace_saved` events.
    async fn saved_events(
        &self,
        session: &SessionId,
    ) -> Result<Vec<crate::event::StoredEvent>, JobError> {
        Ok(self
            .log
            .read(
                session,
                &Slice {
                    types: vec!["sandbox.workspace_saved".into()],
                    ..Default::default()
                },
            )
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .collect())
    }

    /// Puts the session's latest snapshot into a fresh sandbox whose volume is new, records
    /// it, and returns what the model is told (`None`: a first sandbox, nothing to say).
    async fn restore_workspace(
        &self,
        session: &SessionId,
        sandbox: &Sandbox,
        previous_host: Option<&str>,
    ) -> Result<Option<String>, JobError> {
        let host = &self.config.host;
        let saved = self.saved_events(session).await?;
        let Some((saved_seq, _, manifest)) = snapshot::recorded(&saved).pop() else {
            return Ok(previous_host.map(|h| job::empty_workspace_note(h, host)));
        };
        let saved_at = saved
            .iter()
            .find(|e| e.seq == saved_seq)
            .and_then(|e| {
                e.event
                    .processed_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| format!("event {saved_seq}"));
        let started = Instant::now();
        let restored = match self.blobs().await {
            Ok(store) => {
                snapshots::restore(
                    self.sandboxes.docker(),
                    &store,
                    &sandbox.id,
                    session,
                    &manifest,
                )
                .await
            }
            Err(e) => Err(snapshots::SnapshotError::Store(e.to_string())),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let (event, note) = match restored {
            Ok(bytes) => {
                tracing::info!(session = %session, bytes, duration_ms, "Restored the workspace from its snapshot.");
                (
                    SandboxWorkspaceRestored {
                        host: host.clone(),
                        manifest,
                        saved_seq,
                        bytes,
                        error: None,
                        duration_ms,
                    },
                    snapshot::restored_note(previous_host, host, &saved_at, saved_seq, bytes),
                )
            }
            Err(e) => {
                tracing::warn!(session = %session, error = %e, "Restoring the workspace failed.");
                (
                    SandboxWorkspaceRestored {
                        host: host.clone(),
                        manifest,
                        saved_seq,
                        bytes: 0,
                        error: Some(e.to_string()),
                        duration_ms,
                    },
                    snapshot::restore_failed_note(previous_host, host, &e.to_string()),
                )
            }
        };
        self.log.append_fact(session, &Event::new(event)).await?;
        Ok(Some(note))
    }

    /// Saves the session's workspace for a snapshot request and records it once (its event
    /// id is derived from the request), then deletes what only older snapshots used.
    async fn save_workspace(
        &self,
        job: &ToolJob,
        request_id: &str,
        last_try: bool,
    ) -> Result<(), JobError> {
        let session = &job.session_id;
        let recorded = self.recorded_snapshots(session).await?;
        let store = self.blobs().await?;
        let mut event = SandboxWorkspaceSaved::answering(request_id, &self.config.host);
        // The kept snapshots: the new one writes only chunks neither holds, so a failed save
        // (which deletes what it wrote) cannot take one of theirs. One the store cannot serve
        // now stops the save (saving without it could do that damage); the job runs again.
        let (previous, older, unreadable) = match kept_snapshots(&store, session, &recorded).await {
            Ok((previous, older)) => (previous, older, None),
            Err(e) if !last_try => return Err(JobError::Docker(e.to_string())),
            Err(e) => (None, None, Some(e)),
        };
        let sandbox = match unreadable {
            None => self.sandboxes.running(session).await,
            Some(_) => None,
        };
        let mut written = None;
        match (unreadable, sandbox) {
            (Some(e), _) => {
                event.error = Some(format!(
                    "cannot read a kept snapshot, so none was saved: {e}"
                ))
            }
            (None, None) => {
                event.error = Some(format!(
                    "no running sandbox of this session on host {}: nothing to save",
                    self.config.host
                ))
            }
            (None, Some(sandbox)) => match snapshots::save(
                self.sandboxes.docker(),
                &store,
                &sandbox.id,
                session,
                request_id,
                snapshots::Kept {
                    latest: previous.as_ref().map(|(n, m)| (n.as_str(), m)),
                    older: older.as_ref(),
                },
                self.config.snapshot_limit,
            )
            .await
            {
                Ok(o) => {
                    tracing::info!(session = %session, bytes = o.manifest.bytes, new_chunks = o.new_chunks, unchanged = o.unchanged, ms = o.duration_ms, "Saved the workspace.");
                    event.manifest = Some(o.name.clone());
                    event.bytes = o.manifest.bytes;
                    event.chunks = o.manifest.chunks.len() as u64;
                    event.new_chunks = o.new_chunks;
                    event.stored_bytes = o.stored_bytes;
                    event.unchanged = o.unchanged;
                    event.duration_ms = o.duration_ms;
                    if !o.unchanged {
                        written = Some(o);
                    }
                }
                Err(e @ snapshots::SnapshotError::TooLarge { .. }) => {
                    event.error = Some(e.to_string())
                }
                Err(e) if !last_try => return Err(JobError::Docker(e.to_string())),
                Err(e) => event.error = Some(e.to_string()),
            },
        }
        let id = crate::bus::workspace_jobs::saved_event_id(session, request_id)
            .map_err(|e| JobError::Refused(e.to_string()))?;
        self.log
            .append_fact(session, &Event::with_id(id, event))
            .await?;
        if let Some(o) = written {
            let names: Vec<String> = recorded.into_iter().map(|(_, _, n)| n).collect();
            let dropped = snapshot::to_drop(&names, &o.name);
            let mut kept = vec![&o.manifest];
            if let Some((_, m)) = &previous {
                kept.push(m);
            }
            snapshots::collect(&store, session, &dropped, &kept).await;
        }
        Ok(())
    }

    async fn wake(&self, session: &SessionId, seq: u64) -> Result<(), JobError> {
        crate::bus::wake::publish_from_hand(&self.js, session, seq)
            .await
            .map_err(|e| JobError::Wake(e.to_string()))
    }
}

/// The snapshots `recorded` keeps while a new one is saved: the latest (name and manifest) and
/// the one before it. One that is gone or damaged counts as none (a restore could not use it
/// either, so its chunks need no protecting); one the store cannot serve now is an error.
async fn kept_snapshots(
    store: &async_nats::jetstream::object_store::ObjectStore,
    session: &SessionId,
    recorded: &[(u64, String, String)],
) -> Result<
    (
        Option<(String, snapshot::Manifest)>,
        Option<snapshot::Manifest>,
    ),
    snapshots::SnapshotError,
> {
    let read = |name: String| async move {
        match snapshots::read_manifest(store, session, &name).await {
            Ok(m) => Ok(Some((name, m))),
            Err(snapshots::SnapshotError::Missing(_) | snapshots::SnapshotError::Damaged(_)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    let latest = match recorded.last() {
        Some((_, _, name)) => read(name.clone()).await?,
        None => None,
    };
    let older = match snapshot::older_kept(recorded) {
        Some(name) => read(name.to_string()).await?.map(|(_, m)| m),
        None => None,
    };
    Ok((latest, older))
}
