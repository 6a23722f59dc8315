//! `herd down`: removes what herd left on this machine's Docker engine — every sandbox, git
//! helper and egress proxy container, every workspace volume and herd's networks. The session
//! logs stay in NATS (they are the truth; a later sandbox starts from an empty workspace).
//! `herd gc` is the careful version: only volumes of sessions gone or idle.

use clap::Args;
use herd::hands::sandbox::{SandboxConfig, Sandboxes};

#[derive(Args)]
pub struct DownArgs {
    /// Only this hand host's containers and volumes (default: every host's on this engine).
    #[arg(long)]
    host: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What is left on this engine: containers, workspace volumes, networks.
pub async fn leftovers(
    sandboxes: &Sandboxes,
    every_host: bool,
) -> anyhow::Result<(Vec<(String, String)>, Vec<String>, Vec<String>)> {
    let containers = sandboxes.managed_containers(every_host).await?;
    let volumes = sandboxes
        .workspace_volumes(every_host)
        .await?
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    let networks = if every_host {
        sandboxes.managed_networks().await?
    } else {
        Vec::new()
    };
    Ok((containers, volumes, networks))
}

pub async fn run(a: DownArgs) -> anyhow::Result<()> {
    let host = a.host.clone().unwrap_or_else(|| "down".into());
    let sandboxes = Sandboxes::connect(&host, SandboxConfig::default()).await?;
    let every_host = a.host.is_none();
    let (containers, volumes, networks) = leftovers(&sandboxes, every_host).await?;
    if a.dry_run {
        for (_, name) in &containers {
            println!("would remove container {name}");
        }
        for v in &volumes {
            println!("would remove volume {v}");
        }
        for n in &networks {
            println!("would remove network {n}");
        }
        println!(
            "herd down --dry-run: {} containers, {} volumes, {} networks",
            containers.len(),
            volumes.len(),
            networks.len()
        );
        return Ok(());
    }
    for (id, _) in &containers {
        sandboxes.remove_container_id(id).await;
    }
    let mut failed = Vec::new();
    for v in &volumes {
        if let Err(e) = sandboxes.remove_volume(v).await {
            failed.push(format!("volume {v}: {e}"));
        }
    }
    for n in &networks {
        if let Err(e) = sandboxes.remove_network(n).await {
            failed.push(format!("network {n}: {e}"));
        }
    }
    let (left, _, _) = leftovers(&sandboxes, every_host).await?;
    println!(
        "herd down: removed {} containers, {} volumes, {} networks{}",
        containers.len() - left.len(),
        volumes.len() - failed.iter().filter(|f| f.starts_with("volume")).count(),
        networks.len() - failed.iter().filter(|f| f.starts_with("network")).count(),
        if a.host.is_some() {
            format!(" of host {host}")
        } else {
            String::new()
        }
    );
    for f in &failed {
        eprintln!("herd down: could not remove {f}");
    }
    if !failed.is_empty() || !left.is_empty() {
        anyhow::bail!(
            "{} containers and {} other objects are still there (a hand still running makes new ones: stop it first)",
            left.len(),
            failed.len()
        );
    }
    Ok(())
}
