//! Benchmarks that measure herd against the raw NATS primitives it is built on, in the same run
//! on the same server, and report ratios. They print figures; they assert nothing about time.

pub mod brain;
pub mod console;
pub mod gateway;
pub mod hands;
pub mod log;
pub mod tools;
pub mod workspace;

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Fastest.
    pub min_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl Summary {
    /// Summarises samples (empty input gives zeros).
    pub fn of(samples: &[Duration]) -> Self {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if us.is_empty() {
                0.0
            } else {
                us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1]
            }
        };
        Self {
            n: us.len(),
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            mean_us: if us.is_empty() {
                0.0
            } else {
                us.iter().sum::<f64>() / us.len() as f64
            },
            min_us: us.first().copied().unwrap_or(0.0),
            max_us: us.last().copied().unwrap_or(0.0),
        }
    }
}

impl Summary {
    /// One line of a report table: `name`, then p50, p99 and min in milliseconds.
    pub fn row(&self, name: &str) -> String {
        format!(
            "  {name:<44} p50 {:>8.3} ms   p99 {:>8.3} ms   min {:>8.3} ms\n",
            self.p50_us / 1000.0,
            self.p99_us / 1000.0,
            self.min_us / 1000.0
        )
    }
}

/// A report as the `herd bench` commands print it: the table, then the figures as one JSON line
/// for scripts.
pub fn render(table: &str, figures: &impl Serialize) -> Result<String, serde_json::Error> {
    Ok(format!("{table}\n{}", serde_json::to_string(figures)?))
}

/// A private nats-server with herd's streams, a client and the session log on it: what every
/// benchmark starts from.
pub(crate) struct PrivateNats {
    /// Killed when dropped.
    pub(crate) server: crate::lab::local_server::LocalServer,
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) log: crate::session::SessionLog,
}

impl PrivateNats {
    /// Starts the server (fsync always, as production should run) and applies the streams.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        use crate::lab::local_server::Target;
        let server = crate::lab::local_server::LocalServer::start(Default::default())?;
        // With herd's roles, as deployed: the raw primitives run as the operator.
        let client = server
            .nats_config(crate::auth::Role::Operator)
            .connect("herd-bench")
            .await?;
        let js = async_nats::jetstream::new(client.clone());
        crate::bus::streams::apply(&js, 1).await?;
        let log = crate::session::SessionLog::open(client.clone()).await?;
        Ok(Self {
            server,
            client,
            js,
            log,
        })
    }
}

impl PrivateNats {
    /// A brain on this server, as its role, calling `model` for every session (Anthropic
    /// protocol); it runs until the task is aborted.
    pub(crate) async fn start_brain(
        &self,
        model: &crate::lab::mock_model::MockModel,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        use crate::lab::local_server::Target;
        let client = self
            .server
            .nats_config(crate::auth::Role::Brain)
            .connect("bench-brain")
            .await?;
        let config = crate::brain::BrainConfig {
            name: "bench-brain".into(),
            providers: crate::brain::provider::ProviderSettings {
                anthropic_api_key: Some(crate::config::Secret::new("bench")),
                anthropic_base_url: Some(model.anthropic_url()),
                timeouts: Default::default(),
                ..Default::default()
            },
            ..Default::default()
        };
        let brain = crate::brain::Brain::new(client, config).await?;
        Ok(tokio::spawn(async move {
            let _ = brain.run(std::future::pending()).await;
        }))
    }
}

impl PrivateNats {
    /// A gateway on this server, as its role, on a free loopback port, and a key for `tenant`:
    /// its base URL and the key. It serves until the task is aborted.
    pub(crate) async fn start_gateway(
        &self,
        config: &crate::gateway::GatewayConfig,
        tenant: &str,
    ) -> anyhow::Result<(String, String)> {
        use crate::lab::local_server::Target;
        let gw = crate::gateway::Gateway::open(
            self.server
                .nats_config(crate::auth::Role::Gateway)
                .connect("bench-gateway")
                .await?,
            config,
            None,
        )
        .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(crate::gateway::serve_on(
            gw,
            listener,
            std::future::pending(),
        ));
        let store = crate::gateway::store::Store::open(self.js.clone()).await?;
        let key = crate::gateway::keys::create(&store, tenant, None).await?.0;
        Ok((base, key))
    }
}

/// Safe ratio for reports.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// What the machine and server were, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// Logical CPUs.
    pub cpus: usize,
    /// `nats-server --version`.
    pub nats_server: String,
    /// The server's fsync policy.
    pub sync_interval: &'static str,
}

impl Environment {
    /// Reads the environment.
    pub fn detect() -> Self {
        let nats_server = std::process::Command::new(crate::lab::local_server::server_binary())
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            nats_server,
            sync_interval: "always",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.p50_us, s.p99_us, s.min_us, s.max_us),
            (50.0, 99.0, 1.0, 100.0)
        );
        assert_eq!(Summary::of(&[]).n, 0);
    }
}
