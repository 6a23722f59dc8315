//! `herd chaos`: a whole deployment on this machine under faults (see `herd::lab::chaos`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use herd::lab::chaos::{Fault, Plan};

fn plan_defaults() -> Plan {
    Plan::short(PathBuf::from("herd"))
}

#[derive(Args)]
pub struct ChaosArgs {
    /// nats nodes: 3 for a cluster with R3 streams, 1 for a single server.
    #[arg(long, default_value_t = plan_defaults().nodes as u8, value_parser = clap::value_parser!(u8).range(1..=5))]
    nodes: u8,
    /// Rounds of faults; each round injects every fault in `--faults` once.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The faults of a round, comma-separated: kill-brain, stop-brain, kill-hand,
    /// kill-sandbox, kill-node, kill-leader [default: all].
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Sessions kept busy.
    #[arg(long, default_value_t = plan_defaults().sessions)]
    sessions: usize,
    /// Brain processes.
    #[arg(long, default_value_t = plan_defaults().brains)]
    brains: usize,
    /// Hand processes.
    #[arg(long, default_value_t = plan_defaults().hands)]
    hands: usize,
    /// The workers' ack_wait, seconds.
    #[arg(long, default_value_t = plan_defaults().ack_wait.as_secs())]
    ack_wait_secs: u64,
    /// Calm seconds before each fault (longer than ack_wait, so stalls are not mixed up).
    #[arg(long, default_value_t = plan_defaults().calm.as_secs())]
    calm_secs: u64,
    /// Seconds a killed nats node stays down.
    #[arg(long, default_value_t = plan_defaults().node_down.as_secs())]
    node_down_secs: u64,
    /// The sandbox image.
    #[arg(long, default_value_t = plan_defaults().image)]
    image: String,
    /// Keep the workers' logs in this directory.
    #[arg(long)]
    logs: Option<PathBuf>,
}

/// Runs the chaos suite and prints its report.
pub async fn run(a: ChaosArgs) -> anyhow::Result<()> {
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
