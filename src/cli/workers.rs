//! `herd brain`, `herd hands` and `herd up`: the worker processes. Every flag's default is the
//! library's own (`BrainConfig::default()`, `HandsConfig::default()`), so there is one source
//! of truth; this module only reads flags, the environment and the config file into them.

use std::time::Duration;

use clap::Args;
use herd::auth::Role;
use herd::brain::BrainConfig;
use herd::brain::provider::{ProviderSettings, Timeouts};
use herd::hands::HandsConfig;
use herd::hands::sandbox::SandboxConfig;

use super::{Global, file_config, nats_config};

fn brain_defaults() -> BrainConfig {
    BrainConfig::default()
}

fn hands_defaults() -> HandsConfig {
    HandsConfig::default()
}

#[derive(Args)]
pub struct BrainArgs {
    /// Wakes handled at once.
    #[arg(long, default_value_t = brain_defaults().concurrency)]
    concurrency: usize,
    /// Seconds a wake may go without an ack or heartbeat before another brain gets it.
    #[arg(long, default_value_t = brain_defaults().ack_wait.as_secs())]
    ack_wait_secs: u64,
    /// Deliveries of one wake before herd gives up on it and reports a session.error.
    #[arg(long, default_value_t = brain_defaults().max_deliver)]
    max_deliver: i64,
    /// Redelivery delays in seconds, comma-separated (e.g. 1,5,30); empty for ack_wait each time.
    #[arg(long, value_delimiter = ',')]
    backoff_secs: Vec<u64>,
    /// Failed model requests in a row before the turn ends with retries_exhausted.
    #[arg(long, default_value_t = brain_defaults().max_model_attempts)]
    max_model_attempts: u32,
    /// Sessions kept replayed in memory.
    #[arg(long, default_value_t = brain_defaults().cache_sessions)]
    cache_sessions: usize,
    /// MiB a session's log may hold and still be run; past it, its turns end with a
    /// session_too_large error instead of loading it into memory.
    #[arg(long, default_value_t = brain_defaults().max_session_bytes >> 20)]
    max_session_mib: u64,
    /// Longest wait for a model's first byte or between two streamed chunks, in seconds.
    #[arg(long, default_value_t = Timeouts::default().idle.as_secs())]
    model_idle_timeout_secs: u64,
    /// Longest model request, in seconds.
    #[arg(long, default_value_t = Timeouts::default().total.as_secs())]
    model_timeout_secs: u64,
    /// Seconds between sweeps for sessions stuck running with nothing in flight (0: no sweep).
    #[arg(long, default_value_t = brain_defaults().sweep_every.as_secs())]
    sweep_secs: u64,
    /// Seconds a session in a turn may be quiet with nothing in flight before the sweep wakes
    /// it again, and then before it ends the turn with an error.
    #[arg(long, default_value_t = brain_defaults().sweep_grace.as_secs())]
    sweep_grace_secs: u64,
}

#[derive(Args)]
pub struct HandsArgs {
    /// This host's name, on its sandboxes' labels [default: $HOSTNAME].
    #[arg(long)]
    host: Option<String>,
    /// Tool jobs run at once.
    #[arg(long, default_value_t = hands_defaults().concurrency)]
    concurrency: usize,
    /// Seconds a job may go without an ack or heartbeat before another hand gets it.
    #[arg(long, default_value_t = hands_defaults().ack_wait.as_secs())]
    ack_wait_secs: u64,
    /// Deliveries of one job before it is answered with an error.
    #[arg(long, default_value_t = hands_defaults().max_deliver)]
    max_deliver: i64,
    /// Seconds a sandbox may sit unused before it is removed (its workspace volume stays).
    #[arg(long, default_value_t = hands_defaults().idle_reap.as_secs())]
    idle_reap_secs: u64,
    /// The image of sessions whose environment names none.
    #[arg(long, default_value_t = SandboxConfig::default().default_image)]
    image: String,
    /// Memory limit per sandbox, MiB.
    #[arg(long, default_value_t = SandboxConfig::default().memory_bytes >> 20)]
    memory_mib: i64,
    /// CPU limit per sandbox.
    #[arg(long, default_value_t = SandboxConfig::default().nano_cpus as f64 / 1e9)]
    cpus: f64,
    /// Process limit per sandbox.
    #[arg(long, default_value_t = SandboxConfig::default().pids_limit)]
    pids: i64,
    /// MiB of large outputs one session may keep in the object store; past it an output keeps
    /// only its head and tail.
    #[arg(long, default_value_t = hands_defaults().blob_quota >> 20)]
    blob_quota_mib: u64,
    /// An image sessions may name besides the default (repeatable); herd's own sandbox images
    /// are always allowed, any other image is refused.
    #[arg(long = "allow-image", value_name = "IMAGE")]
    allow_images: Vec<String>,
    /// A loopback, private or link-local range sandboxes may still reach through
    /// http_request, the egress proxy and git (repeatable; a LAN package mirror, say):
    /// 10.1.2.0/24, 127.0.0.1. Without one, every such address is refused after DNS resolution.
    #[arg(
        long = "allow-private-range",
        value_name = "CIDR",
        env = "HERD_ALLOW_PRIVATE_RANGES",
        value_delimiter = ','
    )]
    allow_private_ranges: Vec<herd::hands::address::Range>,
    /// MiB one session's /workspace may hold (measured with du; past it, tools other than bash
    /// are refused until files are deleted).
    #[arg(long, default_value_t = hands_defaults().workspace_quota >> 20)]
    workspace_quota_mib: u64,
    /// Sandboxes this hand runs at once; past it the least recently used idle one is removed
    /// (its workspace stays).
    #[arg(long, default_value_t = hands_defaults().max_sandboxes)]
    max_sandboxes: usize,
    /// A warm pool of ready sandboxes, so a session's first tool call need not wait for Docker
    /// to create one (repeatable): N for the default image, or IMAGE=N. At most 64 in all.
    #[arg(long = "warm-pool", value_name = "[IMAGE=]N")]
    warm_pool: Vec<String>,
    /// The largest workspace archive a snapshot saves, in MiB (1 to 1048576; a larger
    /// workspace is not saved, and the session's log says so).
    #[arg(long, default_value_t = hands_defaults().snapshot_limit >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    snapshot_limit_mib: u64,
    /// Seconds one MCP tool call may take before it is an error result the model sees
    /// (1 to 3600).
    #[arg(long, default_value_t = hands_defaults().mcp_call_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    mcp_call_timeout_secs: u64,
    /// herd's git helper image (built by sandbox-images/build).
    #[arg(long, default_value_t = SandboxConfig::default().git_image)]
    git_image: String,
    /// The OCI runtime for sandboxes, as registered with Docker: `runsc` for gVisor, whose
    /// own kernel stands between a sandbox and the host's (see the README). Default: Docker's.
    #[arg(long, value_name = "NAME")]
    runtime: Option<String>,
}

/// The hand's host name: the flag, else `$HOSTNAME`, else the library's default.
fn host_name(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| hands_defaults().host)
}

/// A brain's settings from its flags, the environment and the config file's `[models]`.
pub fn brain_config(g: &Global, a: &BrainArgs) -> anyhow::Result<BrainConfig> {
    let mut providers = ProviderSettings::from_env();
    if let Some(m) = file_config(g)?.map(|f| f.models) {
        providers.anthropic_api_key = m.anthropic_api_key.or(providers.anthropic_api_key);
        providers.anthropic_base_url = m.anthropic_base_url.or(providers.anthropic_base_url);
        providers.openai_api_key = m.openai_api_key.or(providers.openai_api_key);
        providers.openai_base_url = m.openai_base_url.or(providers.openai_base_url);
    }
    providers.timeouts = Timeouts {
        idle: Duration::from_secs(a.model_idle_timeout_secs.max(1)),
        total: Duration::from_secs(a.model_timeout_secs.max(1)),
    };
    Ok(BrainConfig {
        ack_wait: Duration::from_secs(a.ack_wait_secs.max(1)),
        max_deliver: a.max_deliver.max(1),
        backoff: a
            .backoff_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        concurrency: a.concurrency.max(1),
        cache_sessions: a.cache_sessions,
        max_session_bytes: a.max_session_mib.max(1) << 20,
        max_model_attempts: a.max_model_attempts.max(1),
        providers,
        sweep_every: Duration::from_secs(a.sweep_secs),
        sweep_grace: Duration::from_secs(a.sweep_grace_secs.max(1)),
        ..brain_defaults()
    })
}

/// A hand's settings from its flags and the environment (the vault key).
fn hands_config(a: HandsArgs) -> anyhow::Result<HandsConfig> {
    let warm_pool = a
        .warm_pool
        .iter()
        .map(|spec| {
            let (image, n) = match spec.rsplit_once('=') {
                Some((image, n)) => (image.to_string(), n),
                None => (a.image.clone(), spec.as_str()),
            };
            let n: usize = n.trim().parse().map_err(|_| {
                anyhow::anyhow!("--warm-pool {spec:?}: expected N or IMAGE=N with N a whole number")
            })?;
            Ok((image, n))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(HandsConfig {
        warm_pool,
        host: host_name(a.host),
        ack_wait: Duration::from_secs(a.ack_wait_secs.max(1)),
        max_deliver: a.max_deliver.max(1),
        concurrency: a.concurrency.max(1),
        idle_reap: Duration::from_secs(a.idle_reap_secs.max(1)),
        sandbox: SandboxConfig {
            default_image: a.image,
            memory_bytes: a.memory_mib.max(16) << 20,
            nano_cpus: (a.cpus.clamp(0.01, 1024.0) * 1e9) as i64,
            pids_limit: a.pids.max(8),
            git_image: a.git_image,
            runtime: a.runtime,
            ..Default::default()
        },
        allowed_ranges: a.allow_private_ranges,
        workspace_quota: a.workspace_quota_mib.max(1) << 20,
        max_sandboxes: a.max_sandboxes.max(1),
        mcp_call_timeout: std::time::Duration::from_secs(a.mcp_call_timeout_secs),
        snapshot_limit: a.snapshot_limit_mib.max(1) << 20,
        vault_key: herd::credentials::vault::VaultKey::from_env()?,
        blob_quota: a.blob_quota_mib.max(1) << 20,
        allowed_images: hands_defaults()
            .allowed_images
            .into_iter()
            .chain(a.allow_images)
            .collect(),
        ..hands_defaults()
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what `docker stop`, systemd and Kubernetes send),
/// naming it: workers drain and stop cleanly on either.
pub async fn stop_signal() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => "SIGTERM",
    }
}

async fn until_stopped() {
    stop_signal().await;
}

/// `herd brain`.
pub async fn brain(g: &Global, a: BrainArgs) -> anyhow::Result<()> {
    let client = nats_config(g)?
        .as_role(Role::Brain)
        .connect("herd-brain")
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    herd::bus::streams::ensure(&js, g.stream_replicas as usize).await?;
    let config = brain_config(g, &a)?;
    let brain = herd::brain::Brain::new(client, config).await?;
    eprintln!("herd brain: taking wakes (Ctrl-C or SIGTERM to stop)");
    brain.run(until_stopped()).await?;
    Ok(())
}

/// `herd hands`.
pub async fn hands(g: &Global, a: HandsArgs) -> anyhow::Result<()> {
    let client = nats_config(g)?
        .as_role(Role::Hands)
        .connect("herd-hands")
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    herd::bus::streams::ensure(&js, g.stream_replicas as usize).await?;
    let hands = herd::hands::Hands::new(client, hands_config(a)?).await?;
    eprintln!("herd hands: taking tool jobs (Ctrl-C or SIGTERM to stop)");
    hands.run(until_stopped()).await?;
    Ok(())
}

/// `herd up`.
pub async fn up(
    g: &Global,
    brain: BrainArgs,
    image: String,
    gateway: Option<super::gateway::GatewayArgs>,
) -> anyhow::Result<()> {
    let cfg = nats_config(g)?;
    let brain = brain_config(g, &brain)?;
    let mut hands = HandsConfig {
        host: host_name(None),
        ..hands_defaults()
    };
    hands.sandbox.default_image = image;
    // One process holds every plane here, so the key is in the brain's process too: fine on
    // one machine; split the planes when that matters.
    hands.vault_key = herd::credentials::vault::VaultKey::from_env()?;
    let gateway = gateway.map(|a| a.config());
    super::up::run(cfg, brain, hands, gateway).await
}
