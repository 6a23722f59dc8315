//! `herd gc`: removes the workspace volumes herd left on this Docker engine. A sandbox's
//! volume outlives its container on purpose (the next sandbox of the session finds its files),
//! so volumes are collected here instead: those with no container whose session is gone from
//! the log, or idle longer than `--idle-days`; and, by the same rule, the workspace snapshots
//! those sessions keep in the object store.

use std::time::Duration;

use clap::Args;
use herd::event::SessionId;
use herd::hands::sandbox::{SandboxConfig, Sandboxes};
use herd::hands::workspace::{self, SessionFate};
use herd::session::{SessionLog, Status};

#[derive(Args)]
pub struct GcArgs {
    /// The hand host whose volumes to collect (default: every host's on this engine).
    #[arg(long)]
    host: Option<String>,
    /// Remove a volume whose session has been idle this many days.
    #[arg(long, default_value_t = 30)]
    idle_days: u64,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(client: async_nats::Client, a: GcArgs) -> anyhow::Result<()> {
    let log = SessionLog::open(client).await?;
    let host = a.host.clone().unwrap_or_else(|| "gc".into());
    let sandboxes = Sandboxes::connect(&host, SandboxConfig::default()).await?;
    let idle_for = Duration::from_secs(a.idle_days.saturating_mul(86_400));
    let volumes = sandboxes.workspace_volumes(a.host.is_none()).await?;
    let (mut removed, mut kept, mut failed) = (0usize, 0usize, 0usize);
    let now = time::OffsetDateTime::now_utc();
    for (name, in_use, created) in volumes {
        let Some((host, session)) = workspace::volume_session(&name) else {
            continue;
        };
        // --host a must not take host a-b's volumes.
        if a.host.as_deref().is_some_and(|h| h != host) {
            continue;
        }
        if in_use {
            kept += 1;
            continue;
        }
        let Ok(session) = SessionId::parse(session) else {
            continue;
        };
        // A volume younger than --idle-days stays even when its session is unknown: a gc
        // pointed at the wrong NATS must not wipe fresh workspaces.
        let age = created
            .and_then(|c| {
                time::OffsetDateTime::parse(&c, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|c| (now - c).unsigned_abs())
            .unwrap_or(Duration::ZERO);
        let fate = fate_of(&log, &session, age, idle_for).await?;
        match workspace::collect(fate, idle_for) {
            Some(why) => {
                if a.dry_run {
                    println!("would remove {name}: {why}");
                    removed += 1;
                } else {
                    match sandboxes.remove_volume(&name).await {
                        Ok(()) => {
                            println!("removed {name}: {why}");
                            removed += 1;
                        }
                        Err(e) => {
                            eprintln!("could not remove {name}: {e}");
                            failed += 1;
                        }
                    }
                }
            }
            None => kept += 1,
        }
    }
    println!(
        "{removed} workspace volume(s) {}, {kept} kept",
        if a.dry_run { "to remove" } else { "removed" }
    );
    // Workspace snapshots in the object store go with their sessions, by the same rule.
    let store = async_nats::jetstream::new(log.client().clone())
        .get_object_store(herd::hands::outputs::BLOBS)
        .await?;
    let mut sessions: std::collections::BTreeMap<String, time::OffsetDateTime> = Default::default();
    let mut list = store.list().await?;
    while let Some(info) = futures_util::StreamExt::next(&mut list).await {
        let info = info?;
        let Some(session) = info
            .name
            .strip_prefix("workspaces/")
            .and_then(|rest| rest.split('/').next())
        else {
            continue;
        };
        let at = info.modified.unwrap_or(now);
        let newest = sessions.entry(session.to_string()).or_insert(at);
        *newest = (*newest).max(at);
    }
    let (mut snap_removed, mut snap_kept) = (0usize, 0usize);
    for (session, modified) in sessions {
        let Ok(session) = SessionId::parse(&session) else {
            continue;
        };
        let age = (now - modified).unsigned_abs();
        match workspace::collect(fate_of(&log, &session, age, idle_for).await?, idle_for) {
            Some(why) if a.dry_run => {
                println!("would remove the snapshots of {session}: {why}");
                snap_removed += 1;
            }
            Some(why) => {
                let n = herd::hands::snapshots::remove_all(&store, &session).await?;
                println!("removed the snapshots of {session} ({n} objects): {why}");
                snap_removed += 1;
            }
            None => snap_kept += 1,
        }
    }
    println!(
        "{snap_removed} session(s)' workspace snapshots {}, {snap_kept} kept",
        if a.dry_run { "to remove" } else { "removed" }
    );
    anyhow::ensure!(failed == 0, "{failed} volume(s) could not be removed");
    Ok(())
}

/// What the log says of a session whose workspace (a volume, or snapshots) is `age` old.
async fn fate_of(
    log: &SessionLog,
    session: &SessionId,
    age: Duration,
    idle_for: Duration,
) -> anyhow::Result<SessionFate> {
    Ok(match log.last_event_at(session).await? {
        // Younger than --idle-days stays even when its session is unknown: a gc pointed at
        // the wrong NATS must not wipe fresh workspaces.
        None if age < idle_for => SessionFate::Active,
        None => SessionFate::Unknown,
        Some((_, at)) => {
            let quiet = (time::OffsetDateTime::now_utc() - at).unsigned_abs();
            if quiet < idle_for {
                SessionFate::Active
            } else if matches!(
                log.load_state(session).await?.status,
                Status::Idle | Status::Terminated
            ) {
                SessionFate::Idle(quiet)
            } else {
                SessionFate::Active
            }
        }
    })
}
