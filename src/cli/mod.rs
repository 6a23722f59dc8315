//! Command-line definitions and dispatch. Each subcommand's work lives in its own module.

mod check;
mod output;
mod session;
mod up;
mod vault;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herd::config::{FileConfig, NatsConfig};

/// herd: long-lived AI agents that survive crashes, on NATS JetStream.
#[derive(Parser)]
#[command(name = "herd", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Global {
    /// NATS server URL(s), comma-separated [env: HERD_NATS_URL] [default: nats://127.0.0.1:4222].
    /// Credentials come from HERD_NATS_CREDS, HERD_NATS_USER/HERD_NATS_PASSWORD, HERD_NATS_TOKEN
    /// or the config file, never from flags.
    #[arg(long, global = true)]
    nats_url: Option<String>,
    /// Config file (TOML) [default: ./herd.toml when present].
    #[arg(long, global = true, env = "HERD_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `herd=debug` [env: HERD_LOG].
    #[arg(long, global = true)]
    log: Option<String>,
    /// Replicas of the streams and buckets a worker creates when they are missing (3 on a
    /// three-node cluster). Existing ones keep theirs; `herd streams apply --replicas` changes it.
    #[arg(long, global = true, env = "HERD_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    stream_replicas: u8,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or update herd's streams, KV buckets and object store (idempotent).
    Streams {
        #[command(subcommand)]
        cmd: StreamsCmd,
    },
    /// Create sessions, send them events, read their logs.
    Session {
        #[command(subcommand)]
        cmd: session::SessionCmd,
    },
    /// Run a brain worker: take wakes, replay sessions, call the model, append its steps.
    /// Start as many as you like; they share the `brain` consumer.
    Brain(BrainArgs),
    /// Run every plane in one process on this machine: a brain and a hand (and a nats-server
    /// from nats.conf when none answers), until Ctrl-C.
    Up {
        #[command(flatten)]
        brain: BrainArgs,
        /// The image of sessions whose environment names none.
        #[arg(long = "sandbox-image", default_value = "herd-sandbox:debian")]
        image: String,
    },
    /// Run a hand worker: take tool jobs, run them in hardened Docker sandboxes, append the
    /// results. Start one per Docker host (or more).
    Hands(HandsArgs),
    /// Credentials that sessions' http_request calls may use as {{secret:NAME}}, sealed in
    /// NATS; values are write-only.
    Vault {
        #[command(subcommand)]
        cmd: vault::VaultCmd,
    },
    /// Verify the session logs' invariants: unique ids, whole brain steps, every tool call
    /// answered exactly once, legal status order. Exit 1 on any violation.
    Check(check::CheckArgs),
    /// Run a whole deployment on this machine (a nats cluster, brains, hands, the mock model),
    /// inject faults one at a time while sessions are busy, then check every log. Prints what
    /// was injected, the stall of affected sessions per fault kind, and the checker's verdict;
    /// exit 1 when anything was lost, duplicated or left unfinished.
    Chaos(ChaosArgs),
    /// Decode one event payload (MessagePack or JSON) from stdin into JSON on stdout, e.g. for
    /// `nats sub --translate 'herd decode'`.
    Decode {
        /// Indent the output.
        #[arg(long)]
        pretty: bool,
    },
    /// Measure herd against the raw NATS primitives, on a private nats-server.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Args)]
struct BrainArgs {
    /// Wakes handled at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds a wake may go without an ack or heartbeat before another brain gets it.
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
    /// Deliveries of one wake before herd gives up on it and reports a session.error.
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
    /// Redelivery delays in seconds, comma-separated (e.g. 1,5,30); empty for ack_wait each time.
    #[arg(long, value_delimiter = ',')]
    backoff_secs: Vec<u64>,
    /// Failed model requests in a row before the turn ends with retries_exhausted.
    #[arg(long, default_value_t = 5)]
    max_model_attempts: u32,
    /// Sessions kept replayed in memory.
    #[arg(long, default_value_t = 1024)]
    cache_sessions: usize,
    /// Longest wait for a model's first byte or between two streamed chunks, in seconds.
    #[arg(long, default_value_t = 60)]
    model_idle_timeout_secs: u64,
    /// Longest model request, in seconds.
    #[arg(long, default_value_t = 600)]
    model_timeout_secs: u64,
}

#[derive(Args)]
struct HandsArgs {
    /// This host's name, on its sandboxes' labels [default: $HOSTNAME].
    #[arg(long)]
    host: Option<String>,
    /// Tool jobs run at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds a job may go without an ack or heartbeat before another hand gets it.
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
    /// Deliveries of one job before it is answered with an error.
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
    /// Seconds a sandbox may sit unused before it is removed (its workspace volume stays).
    #[arg(long, default_value_t = 600)]
    idle_reap_secs: u64,
    /// The image of sessions whose environment names none.
    #[arg(long, default_value = "herd-sandbox:debian")]
    image: String,
    /// Memory limit per sandbox, MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: i64,
    /// CPU limit per sandbox.
    #[arg(long, default_value_t = 1.0)]
    cpus: f64,
    /// Process limit per sandbox.
    #[arg(long, default_value_t = 128)]
    pids: i64,
}

#[derive(Args)]
struct ChaosArgs {
    /// nats nodes: 3 for a cluster with R3 streams, 1 for a single server.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    nodes: u8,
    /// Rounds of faults; each round injects every fault in `--faults` once.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The faults of a round, comma-separated: kill-brain, stop-brain, kill-hand,
    /// kill-sandbox, kill-node, kill-leader [default: all].
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Sessions kept busy.
    #[arg(long, default_value_t = 6)]
    sessions: usize,
    /// Brain processes.
    #[arg(long, default_value_t = 2)]
    brains: usize,
    /// Hand processes.
    #[arg(long, default_value_t = 2)]
    hands: usize,
    /// The workers' ack_wait, seconds.
    #[arg(long, default_value_t = 3)]
    ack_wait_secs: u64,
    /// Calm seconds before each fault (longer than ack_wait, so stalls are not mixed up).
    #[arg(long, default_value_t = 5)]
    calm_secs: u64,
    /// Seconds a killed nats node stays down.
    #[arg(long, default_value_t = 3)]
    node_down_secs: u64,
    /// The sandbox image.
    #[arg(long, default_value = "herd-sandbox:busybox")]
    image: String,
    /// Keep the workers' logs in this directory.
    #[arg(long)]
    logs: Option<PathBuf>,
}

#[derive(Subcommand)]
enum StreamsCmd {
    /// Create what is missing and update what differs.
    Apply {
        /// Replicas per stream and bucket (3 in a three-node cluster).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: u8,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Sandbox provisioning and the tool round trip vs bare Docker.
    Hands {
        /// Sandboxes provisioned each way.
        #[arg(long, default_value_t = 20)]
        provisions: usize,
        /// Timed tool round trips.
        #[arg(long, default_value_t = 100)]
        round_trips: usize,
        /// The sandbox image.
        #[arg(long, default_value = "herd-sandbox:busybox")]
        image: String,
    },
    /// Wake → first model byte (cold and warm), replay, and wakes per second of one brain.
    Brain {
        /// Sessions measured per size.
        #[arg(long, default_value_t = 40)]
        sessions_per_size: usize,
        /// Sessions in the throughput run.
        #[arg(long, default_value_t = 300)]
        throughput_sessions: usize,
    },
    /// Append latency and replay time of the session log vs raw JetStream.
    Log {
        /// Timed appends of each kind.
        #[arg(long, default_value_t = 2_000)]
        appends: usize,
        /// Events in the replayed session.
        #[arg(long, default_value_t = 10_000)]
        session_events: usize,
        /// Events of other sessions in the stream around it.
        #[arg(long, default_value_t = 1_000_000)]
        background: usize,
        /// Timed replays per method.
        #[arg(long, default_value_t = 7)]
        replays: usize,
    },
}

fn init_tracing(filter: Option<&str>) {
    let filter = filter
        .map(String::from)
        .or_else(|| std::env::var("HERD_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The config file: `--config`, `HERD_CONFIG`, or `./herd.toml` when present.
fn file_config(g: &Global) -> anyhow::Result<Option<FileConfig>> {
    Ok(match &g.config {
        Some(p) => Some(FileConfig::load(p)?),
        None => {
            let default = PathBuf::from("herd.toml");
            default
                .exists()
                .then(|| FileConfig::load(&default))
                .transpose()?
        }
    })
}

/// Connection settings: defaults, then the config file, then the environment, then flags.
fn nats_config(g: &Global) -> anyhow::Result<NatsConfig> {
    let file = file_config(g)?;
    let mut cfg = file.map(|f| f.nats).unwrap_or_default().with_env();
    if let Some(url) = &g.nats_url {
        cfg.url = url.clone();
    }
    Ok(cfg)
}

/// A brain's settings from its flags, the environment and the config file's `[models]`.
fn brain_config(g: &Global, a: &BrainArgs) -> anyhow::Result<herd::brain::BrainConfig> {
    let mut providers = herd::brain::provider::ProviderSettings::from_env();
    if let Some(m) = file_config(g)?.map(|f| f.models) {
        providers.anthropic_api_key = m.anthropic_api_key.or(providers.anthropic_api_key);
        providers.anthropic_base_url = m.anthropic_base_url.or(providers.anthropic_base_url);
        providers.openai_api_key = m.openai_api_key.or(providers.openai_api_key);
        providers.openai_base_url = m.openai_base_url.or(providers.openai_base_url);
    }
    providers.timeouts = herd::brain::provider::Timeouts {
        idle: std::time::Duration::from_secs(a.model_idle_timeout_secs.max(1)),
        total: std::time::Duration::from_secs(a.model_timeout_secs.max(1)),
    };
    Ok(herd::brain::BrainConfig {
        ack_wait: std::time::Duration::from_secs(a.ack_wait_secs.max(1)),
        max_deliver: a.max_deliver.max(1),
        backoff: a
            .backoff_secs
            .iter()
            .map(|s| std::time::Duration::from_secs(*s))
            .collect(),
        concurrency: a.concurrency.max(1),
        cache_sessions: a.cache_sessions,
        max_model_attempts: a.max_model_attempts.max(1),
        providers,
        ..Default::default()
    })
}

async fn connect(g: &Global) -> anyhow::Result<async_nats::Client> {
    Ok(nats_config(g)?.connect("herd-cli").await?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Streams {
            cmd: StreamsCmd::Apply { replicas },
        } => {
            let client = connect(&cli.global).await?;
            let js = async_nats::jetstream::new(client);
            for o in herd::bus::streams::apply(&js, replicas as usize).await? {
                println!("{:<7} {:<16} {:?}", o.kind, o.name, o.action);
            }
            Ok(())
        }
        Cmd::Session { cmd } => {
            let client = connect(&cli.global).await?;
            session::run(client, cmd).await
        }
        Cmd::Up { brain, image } => {
            let cfg = nats_config(&cli.global)?;
            let brain = brain_config(&cli.global, &brain)?;
            let mut hands = herd::hands::HandsConfig::default();
            hands.sandbox.default_image = image;
            // One process holds every plane here, so the key is in the brain's process too:
            // fine on one machine; split the planes when that matters.
            hands.vault_key = herd::credentials::vault::VaultKey::from_env()?;
            up::run(cfg, brain, hands).await
        }
        Cmd::Brain(a) => {
            let client = nats_config(&cli.global)?.connect("herd-brain").await?;
            let js = async_nats::jetstream::new(client.clone());
            herd::bus::streams::ensure(&js, cli.global.stream_replicas as usize).await?;
            let config = brain_config(&cli.global, &a)?;
            let brain = herd::brain::Brain::new(client, config).await?;
            eprintln!("herd brain: taking wakes (Ctrl-C to stop)");
            brain
                .run(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(())
        }
        Cmd::Hands(a) => {
            let client = nats_config(&cli.global)?.connect("herd-hands").await?;
            herd::bus::streams::ensure(
                &async_nats::jetstream::new(client.clone()),
                cli.global.stream_replicas as usize,
            )
            .await?;
            let mut config = herd::hands::HandsConfig {
                ack_wait: std::time::Duration::from_secs(a.ack_wait_secs.max(1)),
                max_deliver: a.max_deliver.max(1),
                concurrency: a.concurrency.max(1),
                idle_reap: std::time::Duration::from_secs(a.idle_reap_secs.max(1)),
                sandbox: herd::hands::sandbox::SandboxConfig {
                    default_image: a.image,
                    memory_bytes: a.memory_mib.max(16) << 20,
                    nano_cpus: (a.cpus.clamp(0.01, 1024.0) * 1e9) as i64,
                    pids_limit: a.pids.max(8),
                    ..Default::default()
                },
                ..Default::default()
            };
            if let Some(h) = a.host {
                config.host = h;
            }
            config.vault_key = herd::credentials::vault::VaultKey::from_env()?;
            let hands = herd::hands::Hands::new(client, config).await?;
            eprintln!("herd hands: taking tool jobs (Ctrl-C to stop)");
            hands
                .run(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(())
        }
        Cmd::Vault { cmd } => vault::run(connect(&cli.global).await?, cmd).await,
        Cmd::Check(a) => check::run(connect(&cli.global).await?, a).await,
        Cmd::Chaos(a) => chaos(a).await,
        Cmd::Decode { pretty } => decode(pretty),
        Cmd::Bench {
            cmd:
                BenchCmd::Hands {
                    provisions,
                    round_trips,
                    image,
                },
        } => {
            let report = herd::lab::bench::hands::run(herd::lab::bench::hands::Params {
                provisions,
                round_trips,
                image,
            })
            .await?;
            println!("{}", herd::lab::bench::render(&report.table(), &report)?);
            Ok(())
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Brain {
                    sessions_per_size,
                    throughput_sessions,
                },
        } => {
            let report = herd::lab::bench::brain::run(herd::lab::bench::brain::Params {
                sessions_per_size,
                throughput_sessions,
                ..Default::default()
            })
            .await?;
            println!("{}", herd::lab::bench::render(&report.table(), &report)?);
            Ok(())
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Log {
                    appends,
                    session_events,
                    background,
                    replays,
                },
        } => {
            let report = herd::lab::bench::log::run(herd::lab::bench::log::Params {
                appends,
                session_events,
                background,
                replays,
            })
            .await?;
            println!("{}", herd::lab::bench::render(&report.table(), &report)?);
            Ok(())
        }
    }
}

async fn chaos(a: ChaosArgs) -> anyhow::Result<()> {
    use herd::lab::chaos::{Fault, Plan};
    let round = if a.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        a.faults
            .iter()
            .map(|f| Fault::parse(f.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?
    };
    if a.brains == 0 || a.hands == 0 || a.sessions == 0 {
        anyhow::bail!("--brains, --hands and --sessions must be at least 1");
    }
    let mut plan = Plan::short(std::env::current_exe().context("finding the herd binary")?);
    plan.nodes = a.nodes as usize;
    plan.brains = a.brains;
    plan.hands = a.hands;
    plan.sessions = a.sessions;
    plan.faults = (0..a.rounds).flat_map(|_| round.iter().copied()).collect();
    plan.ack_wait = std::time::Duration::from_secs(a.ack_wait_secs.max(1));
    plan.calm = std::time::Duration::from_secs(a.calm_secs);
    plan.node_down = std::time::Duration::from_secs(a.node_down_secs);
    plan.image = a.image;
    plan.log_dir = a.logs;
    let report = herd::lab::chaos::run(plan).await?;
    println!("{}", herd::lab::bench::render(&report.table(), &report)?);
    Ok(())
}

fn decode(pretty: bool) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    let value = herd::event::decode_to_json(&input)?;
    let text = if pretty {
        serde_json::to_string_pretty(&value)?
    } else {
        serde_json::to_string(&value)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// Parses, runs and reports errors; exit code 1 on failure, 2 on a usage error (clap's).
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.log.as_deref());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
