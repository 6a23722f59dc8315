//! `herd bench …`: herd against the raw NATS and Docker primitives (see `herd::lab::bench`).

use clap::Subcommand;
use herd::lab::bench;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Sandbox provisioning and the tool round trip vs bare Docker.
    Hands {
        /// Sandboxes provisioned each way.
        #[arg(long, default_value_t = bench::hands::Params::default().provisions)]
        provisions: usize,
        /// Timed tool round trips.
        #[arg(long, default_value_t = bench::hands::Params::default().round_trips)]
        round_trips: usize,
        /// The sandbox image.
        #[arg(long, default_value_t = bench::hands::Params::default().image)]
        image: String,
    },
    /// Wake → first model byte (cold and warm), replay, and wakes per second of one brain.
    Brain {
        /// Sessions measured per size.
        #[arg(long, default_value_t = bench::brain::Params::default().sessions_per_size)]
        sessions_per_size: usize,
        /// Sessions in the throughput run.
        #[arg(long, default_value_t = bench::brain::Params::default().throughput_sessions)]
        throughput_sessions: usize,
    },
    /// The HTTP API vs NATS: append → SSE frame, events.send → model first byte, listing
    /// 1,000 events, and many concurrent streams on one gateway.
    Gateway {
        /// Timed appends and sends.
        #[arg(long, default_value_t = bench::gateway::Params::default().samples)]
        samples: usize,
        /// Events in the listed session.
        #[arg(long, default_value_t = bench::gateway::Params::default().list_events)]
        list_events: usize,
        /// Concurrent SSE streams (each costs two file descriptors here: raise ulimit -n).
        #[arg(long, default_value_t = bench::gateway::Params::default().streams)]
        streams: usize,
    },
    /// The tools outside the sandbox: get_events vs a raw read of the same slice, and an MCP
    /// call through a brain and a hand vs a direct HTTP call to the same server.
    Tools {
        /// Timed samples of each kind.
        #[arg(long, default_value_t = bench::tools::Params::default().samples)]
        samples: usize,
        /// Events in the session get_events reads.
        #[arg(long, default_value_t = bench::tools::Params::default().session_events)]
        session_events: usize,
        /// The Python that has the MCP SDK (scripts/ensure-sdk makes it).
        #[arg(long, default_value_t = bench::tools::Params::default().python)]
        python: String,
    },
    /// The console in headless Chromium: first paint of a long timeline and append → on the
    /// page, vs plain HTTP clients of the same gateway; the size of its assets.
    Console {
        /// Events in the long session.
        #[arg(long, default_value_t = bench::console::Params::default().events)]
        events: usize,
        /// Timed appends.
        #[arg(long, default_value_t = bench::console::Params::default().samples)]
        samples: usize,
        /// Timed first paints.
        #[arg(long, default_value_t = bench::console::Params::default().repeats)]
        repeats: usize,
        /// The Python with websocket-client (scripts/ensure-sdk makes it).
        #[arg(long, default_value_t = bench::console::Params::default().python)]
        python: String,
    },
    /// Workspace snapshots (full, incremental, unchanged, restore) of a large workspace vs
    /// Docker's archive API and a plain object-store put; a session's first tool call from the
    /// warm pool vs cold.
    Workspace {
        /// MiB in the workspace (one file per MiB).
        #[arg(long, default_value_t = 100)]
        workspace_mib: usize,
        /// Snapshot rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// First tool calls timed each way.
        #[arg(long, default_value_t = 20)]
        first_calls: usize,
        /// The sandbox image.
        #[arg(long, default_value = "herd-sandbox:busybox")]
        image: String,
    },
    /// Append latency and replay time of the session log vs raw JetStream.
    Log {
        /// Timed appends of each kind.
        #[arg(long, default_value_t = bench::log::Params::default().appends)]
        appends: usize,
        /// Events in the replayed session.
        #[arg(long, default_value_t = bench::log::Params::default().session_events)]
        session_events: usize,
        /// Events of other sessions in the stream around it.
        #[arg(long, default_value_t = bench::log::Params::default().background)]
        background: usize,
        /// Timed replays per method.
        #[arg(long, default_value_t = bench::log::Params::default().replays)]
        replays: usize,
    },
}

/// Runs one benchmark and prints its figures.
pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Hands {
            provisions,
            round_trips,
            image,
        } => {
            let report = bench::hands::run(bench::hands::Params {
                provisions,
                round_trips,
                image,
            })
            .await?;
            println!("{}", bench::render(&report.table(), &report)?);
        }
        BenchCmd::Brain {
            sessions_per_size,
            throughput_sessions,
        } => {
            let report = bench::brain::run(bench::brain::Params {
                sessions_per_size,
                throughput_sessions,
                ..Default::default()
            })
            .await?;
            println!("{}", bench::render(&report.table(), &report)?);
        }
        BenchCmd::Gateway {
            samples,
            list_events,
            streams,
        } => {
            let report = bench::gateway::run(bench::gateway::Params {
                samples,
                list_events,
                streams,
            })
            .await?;
            println!("{}", bench::render(&report.table(), &report)?);
        }
        BenchCmd::Tools {
            samples,
            session_events,
            python,
        } => {
            let report = bench::tools::run(bench::tools::Params {
                samples,
                session_events,
                python,
                ..Default::default()
            })
            .await?;
            println!("{}", bench::render(&report.table(), &report)?);
        }
        BenchCmd::Console {
            events,
            samples,
            repeats,
            python,
        } => {
            let report = bench::console::run(bench::console::Params {
                events,
                samples,
                repeats,
                python,
                ..Default::default()
            })
            .await?;
            println!("{}", bench::render(&report.table(), &report)?);
        }
        BenchCmd::Workspace {
            workspace_mib,
            rounds,
            first_calls,
            image,
        } => {
            let report = bench::workspace::run(bench::workspace::Params {
                workspace_mib: workspace_mib.max(1),
                rounds: rounds.max(1),
                first_calls: first_calls.max(1),
                image,
            })
            .await?;
            println!("{}", bench::render(&report.table(), &report)?);
        }
        BenchCmd::Log {
            appends,
            session_events,
            background,
            replays,
        } => {
            let report = bench::log::run(bench::log::Params {
                appends,
                session_events,
                background,
                replays,
            })
            .await?;
            println!("{}", bench::render(&report.table(), &report)?);
        }
    }
    Ok(())
}
