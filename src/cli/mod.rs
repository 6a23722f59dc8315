//! Command-line definitions and dispatch. Each subcommand's work lives in its own module.

//!
//! * [`session`]: create, send, read (through `herd::api`);
//! * [`workers`]: `brain`, `hands`, `up` (with [`up`] for the local nats-server);
//! * [`vault`], [`check`], [`chaos`], [`bench`], [`decode`]: one group each;
//! * [`output`]: human output (escaped) and JSON lines.

mod auth;
mod bench;
mod chaos;
mod check;
mod decode;
mod down;
mod gateway;
mod gc;
mod output;
mod session;
mod status;
mod up;
mod vault;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

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
pub struct Global {
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
    pub(crate) stream_replicas: u8,
}

// Parsed once per process; boxing the session command's flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Create or update herd's streams, KV buckets and object store (idempotent).
    Streams {
        #[command(subcommand)]
        cmd: StreamsCmd,
    },
    /// The NATS users of herd's roles: keys per role and the server's users block.
    Auth {
        #[command(subcommand)]
        cmd: auth::AuthCmd,
    },
    /// Create sessions, send them events, read their logs.
    Session {
        #[command(subcommand)]
        cmd: session::SessionCmd,
    },
    /// Run a brain worker: take wakes, replay sessions, call the model, append its steps.
    /// Start as many as you like; they share the `brain` consumer.
    Brain(workers::BrainArgs),
    /// Run every plane in one process on this machine: a brain, a hand and the gateway (and a
    /// nats-server from nats.conf when none answers), until Ctrl-C.
    Up {
        #[command(flatten)]
        brain: workers::BrainArgs,
        /// The image of sessions whose environment names none.
        #[arg(long = "sandbox-image", default_value_t = herd::hands::sandbox::SandboxConfig::default().default_image)]
        image: String,
        #[command(flatten)]
        gateway: gateway::GatewayArgs,
        /// Do not serve the HTTP API.
        #[arg(long)]
        no_gateway: bool,
    },
    /// Run a hand worker: take tool jobs, run them in hardened Docker sandboxes, append the
    /// results. Start one per Docker host (or more).
    Hands(workers::HandsArgs),
    /// Credentials that sessions' http_request calls may use as {{secret:NAME}}, sealed in
    /// NATS; values are write-only.
    Vault {
        #[command(subcommand)]
        cmd: vault::VaultCmd,
    },
    /// Serve the Managed Agents HTTP API (the official Anthropic SDKs work against it by
    /// changing base_url). Stateless: run any number behind a load balancer.
    Gateway(gateway::GatewayArgs),
    /// The gateway's API keys: one tenant each, stored hashed.
    Keys {
        #[command(subcommand)]
        cmd: gateway::KeysCmd,
    },
    /// How full herd's store is: each stream and bucket against its bound, and the account.
    Status(status::StatusArgs),
    /// Remove workspace volumes left on this Docker engine: no container, and a session gone
    /// from the log or idle longer than --idle-days.
    Gc(gc::GcArgs),
    /// Remove everything herd left on this Docker engine: every sandbox, git helper and egress
    /// proxy, every workspace volume, herd's networks (the session logs stay in NATS).
    Down(down::DownArgs),
    /// Verify the session logs' invariants: unique ids, whole brain steps, every tool call
    /// answered exactly once, legal status order. Exit 1 on any violation.
    Check(check::CheckArgs),
    /// Run a whole deployment on this machine (a nats cluster, brains, hands, the mock model),
    /// inject faults one at a time while sessions are busy, then check every log. Prints what
    /// was injected, the stall of affected sessions per fault kind, and the checker's verdict;
    /// exit 1 when anything was lost, duplicated or left unfinished.
    Chaos(chaos::ChaosArgs),
    /// Decode one event payload (MessagePack or JSON) from stdin into JSON on stdout, e.g. for
    /// `nats sub --translate 'herd decode'`.
    Decode {
        /// Indent the output.
        #[arg(long)]
        pretty: bool,
    },
    /// A local stand-in for the model API (the Anthropic wire protocol): what the demo's
    /// brain talks to when no ANTHROPIC_API_KEY is set. Not for production.
    #[command(hide = true)]
    MockModel {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: std::net::SocketAddr,
    },
    /// Measure herd against the raw NATS primitives, on a private nats-server.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
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
pub(crate) fn file_config(g: &Global) -> anyhow::Result<Option<FileConfig>> {
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
pub(crate) fn nats_config(g: &Global) -> anyhow::Result<NatsConfig> {
    let file = file_config(g)?;
    let mut cfg = file.map(|f| f.nats).unwrap_or_default().with_env();
    if let Some(url) = &g.nats_url {
        cfg.url = url.clone();
    }
    Ok(cfg)
}

/// The command line connects as the operator: it administers streams and vaults and speaks
/// for the operator's sessions.
async fn connect(g: &Global) -> anyhow::Result<async_nats::Client> {
    Ok(nats_config(g)?
        .as_role(herd::auth::Role::Operator)
        .connect("herd-cli")
        .await?)
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
        Cmd::Auth { cmd } => auth::run(cmd),
        Cmd::Session { cmd } => {
            let prices = match file_config(&cli.global)? {
                Some(f) => f.price_table()?,
                None => Default::default(),
            };
            let client = connect(&cli.global).await?;
            session::run(client, cmd, prices).await
        }
        Cmd::Up {
            brain,
            image,
            gateway,
            no_gateway,
        } => workers::up(&cli.global, brain, image, (!no_gateway).then_some(gateway)).await,
        Cmd::Gateway(a) => gateway::run(&cli.global, a).await,
        Cmd::Keys { cmd } => gateway::keys(connect(&cli.global).await?, cmd).await,
        Cmd::Brain(a) => workers::brain(&cli.global, a).await,
        Cmd::Hands(a) => workers::hands(&cli.global, a).await,
        Cmd::Vault { cmd } => vault::run(connect(&cli.global).await?, cmd).await,
        Cmd::Check(a) => check::run(connect(&cli.global).await?, a).await,
        Cmd::Status(a) => status::run(connect(&cli.global).await?, a).await,
        Cmd::Gc(a) => gc::run(connect(&cli.global).await?, a).await,
        Cmd::Down(a) => down::run(a).await,
        Cmd::Chaos(a) => chaos::run(a).await,
        Cmd::Decode { pretty } => decode::decode(pretty),
        Cmd::Bench { cmd } => bench::run(cmd).await,
        Cmd::MockModel { listen } => {
            let model = herd::lab::mock_model::MockModel::start_on(listen).await?;
            model.set_responder(herd::lab::mock_model::demo_reply);
            eprintln!(
                "mock model (Anthropic protocol) on {}",
                model.anthropic_url()
            );
            workers::stop_signal().await;
            Ok(())
        }
    }
}

/// Parses, runs and reports errors; exit code 1 on failure, 2 on a usage error (clap's).
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.log.as_deref());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::escape(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
