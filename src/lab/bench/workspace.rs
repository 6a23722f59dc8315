//! `herd bench workspace`: workspace snapshots and the warm pool, against the raw primitives.
//!
//! * Snapshots of a workspace of N files of 1 MiB of random bytes: a full snapshot (nothing
//!   stored yet), an incremental one after one file changed, an unchanged one, and a restore
//!   into a fresh sandbox with a new volume; against Docker's archive download alone plus one
//!   plain object-store put of the same archive (the raw primitives a snapshot is made of),
//!   and a bare archive upload of the same tar for the restore.
//! * A session's first tool call (`bash true`), from the `agent.tool_use` append to its
//!   `agent.tool_result`, through a real hand: cold (the hand creates the sandbox) and from a
//!   warm pool of one; against a bare `docker create` + `start` + `exec true`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::{Environment, Summary, ratio};
use crate::bus::subjects;
use crate::event::*;
use crate::hands::sandbox::{SandboxConfig, Sandboxes};
use crate::hands::{Hands, HandsConfig, outputs, snapshots};

/// Sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// MiB in the workspace (one file per MiB).
    pub workspace_mib: usize,
    /// Snapshot rounds (each: full, incremental, unchanged, restore).
    pub rounds: usize,
    /// First tool calls timed each way.
    pub first_calls: usize,
    /// The image.
    pub image: String,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            workspace_mib: 100,
            rounds: 3,
            first_calls: 20,
            image: "herd-sandbox:busybox".into(),
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine and server.
    pub environment: Environment,
    /// Sizes.
    pub params: Params,
    /// Archive bytes of the workspace.
    pub archive_bytes: u64,
    /// Docker's archive download alone (read and dropped).
    pub raw_download: Summary,
    /// One object-store put of the whole archive.
    pub raw_put: Summary,
    /// A full snapshot.
    pub full: Summary,
    /// Bytes a full snapshot stored.
    pub full_stored_bytes: u64,
    /// A snapshot after one file changed.
    pub incremental: Summary,
    /// Bytes it stored.
    pub incremental_stored_bytes: u64,
    /// A snapshot of an unchanged workspace.
    pub unchanged: Summary,
    /// A restore into a fresh sandbox.
    pub restore: Summary,
    /// A bare archive upload of the same tar from memory.
    pub raw_upload: Summary,
    /// Full snapshot p50 over download + put p50.
    pub full_ratio: f64,
    /// Restore p50 over bare upload p50.
    pub restore_ratio: f64,
    /// First tool call, cold.
    pub first_call_cold: Summary,
    /// First tool call from the warm pool.
    pub first_call_pool: Summary,
    /// Bare create + start + exec true.
    pub bare_create_exec: Summary,
    /// Pool p50 over cold p50.
    pub pool_ratio: f64,
}

async fn download(docker: &bollard::Docker, id: &str) -> anyhow::Result<Vec<u8>> {
    let mut s = docker.download_from_container(
        id,
        Some(bollard::query_parameters::DownloadFromContainerOptions {
            path: "/workspace/.".into(),
        }),
    );
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b?);
    }
    Ok(out)
}

async fn exec(
    sandboxes: &Sandboxes,
    s: &crate::hands::sandbox::Sandbox,
    cmd: &str,
) -> anyhow::Result<()> {
    let out = sandboxes
        .exec(
            s,
            vec!["sh".into(), "-c".into(), cmd.into()],
            None,
            4096,
            Duration::from_secs(120),
        )
        .await?;
    anyhow::ensure!(
        out.exit_code == Some(0),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs the benchmark on a private nats-server and the local Docker engine.
pub async fn run(params: Params) -> anyhow::Result<Report> {
    use crate::lab::local_server::Target;
    let nats = super::PrivateNats::start().await?;
    let (server, js, log) = (&nats.server, nats.js.clone(), nats.log.clone());
    let config = |host: String, pool: usize| HandsConfig {
        host,
        sandbox: SandboxConfig {
            default_image: params.image.clone(),
            ..Default::default()
        },
        warm_pool: if pool > 0 {
            vec![(params.image.clone(), pool)]
        } else {
            vec![]
        },
        ..Default::default()
    };
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let sandboxes =
        Sandboxes::connect(&format!("bench-ws-{tag}"), config(String::new(), 0).sandbox).await?;
    let docker = sandboxes.docker().clone();
    let store = js.get_object_store(outputs::BLOBS).await?;

    // --- snapshots ---------------------------------------------------------------------
    let (mut raw_download, mut raw_put, mut full, mut incremental, mut unchanged) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut restore, mut raw_upload) = (vec![], vec![]);
    let (mut archive_bytes, mut full_stored, mut incr_stored) = (0, 0, 0);
    for round in 0..params.rounds {
        eprintln!(
            "round {}/{}: a {} MiB workspace, saved full, incrementally, unchanged, restored…",
            round + 1,
            params.rounds,
            params.workspace_mib
        );
        let session = SessionId::generate();
        let s = sandboxes.ensure(&session, Some(&params.image)).await?;
        exec(
            &sandboxes,
            &s,
            &format!(
                "mkdir -p src && i=0; while [ $i -lt {} ]; do head -c 1048576 /dev/urandom > src/f$i; i=$((i+1)); done",
                params.workspace_mib
            ),
        )
        .await?;
        // Once untimed: the files were just written, and whichever read comes first would pay
        // for the page cache alone.
        download(&docker, &s.id).await?;
        let t = Instant::now();
        let tar = download(&docker, &s.id).await?;
        raw_download.push(t.elapsed());
        archive_bytes = tar.len() as u64;
        let raw_name = format!("bench/{tag}/raw-{round}");
        let t = Instant::now();
        store.put(raw_name.as_str(), &mut tar.as_slice()).await?;
        raw_put.push(t.elapsed());
        store.delete(&raw_name).await?;

        let t = Instant::now();
        let first = snapshots::save(
            &docker,
            &store,
            &s.id,
            &session,
            "snap_1",
            Default::default(),
            u64::MAX,
        )
        .await?;
        full.push(t.elapsed());
        full_stored = first.stored_bytes;
        exec(
            &sandboxes,
            &s,
            &format!(
                "head -c 1048576 /dev/urandom > src/f{}",
                params.workspace_mib / 2
            ),
        )
        .await?;
        let t = Instant::now();
        let second = snapshots::save(
            &docker,
            &store,
            &s.id,
            &session,
            "snap_2",
            snapshots::Kept {
                latest: Some((&first.name, &first.manifest)),
                older: None,
            },
            u64::MAX,
        )
        .await?;
        incremental.push(t.elapsed());
        incr_stored = second.stored_bytes;
        let t = Instant::now();
        let third = snapshots::save(
            &docker,
            &store,
            &s.id,
            &session,
            "snap_3",
            snapshots::Kept {
                latest: Some((&second.name, &second.manifest)),
                older: Some(&first.manifest),
            },
            u64::MAX,
        )
        .await?;
        unchanged.push(t.elapsed());
        anyhow::ensure!(
            third.unchanged,
            "the unchanged workspace was saved as changed"
        );

        // Restore: into a fresh sandbox of another session, with a new volume.
        let other = SessionId::generate();
        let fresh = sandboxes.ensure(&other, Some(&params.image)).await?;
        let t = Instant::now();
        // The snapshot is the first session's: restore reads it as that session's.
        let bytes = snapshots::restore(&docker, &store, &fresh.id, &session, &second.name).await?;
        restore.push(t.elapsed());
        anyhow::ensure!(bytes == second.manifest.bytes);
        let check = sandboxes
            .exec(
                &fresh,
                vec!["sh".into(), "-c".into(), "ls src | wc -l".into()],
                None,
                64,
                Duration::from_secs(30),
            )
            .await?;
        let n: usize = String::from_utf8_lossy(&check.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        anyhow::ensure!(
            n == params.workspace_mib,
            "restored {n} files of {}",
            params.workspace_mib
        );
        let blank = SessionId::generate();
        let bare = sandboxes.ensure(&blank, Some(&params.image)).await?;
        let t = Instant::now();
        docker
            .upload_to_container(
                &bare.id,
                Some(bollard::query_parameters::UploadToContainerOptions {
                    path: "/workspace".into(),
                    ..Default::default()
                }),
                bollard::body_full(tar.into()),
            )
            .await?;
        raw_upload.push(t.elapsed());
        for x in [&session, &other, &blank] {
            sandboxes.destroy(x).await;
        }
        snapshots::remove_all(&store, &session).await?;
    }

    // --- first tool call: cold, then from the pool ---------------------------------------
    let stream = js.get_stream(subjects::SESSIONS_STREAM).await?;
    let mut cold = Vec::new();
    let mut pooled = Vec::new();
    for pool in [0usize, 1] {
        let host = format!("bench-{}-{tag}", if pool == 0 { "cold" } else { "pool" });
        let hands = Hands::new(
            server
                .nats_config(crate::auth::Role::Hands)
                .connect("bench-hands")
                .await?,
            config(host.clone(), pool),
        )
        .await?;
        let hand_sandboxes = hands.sandboxes().clone();
        let task = {
            let h = hands.clone();
            tokio::spawn(async move {
                let _ = h.run(std::future::pending()).await;
            })
        };
        eprintln!(
            "{} first tool calls {}…",
            params.first_calls,
            if pool == 0 {
                "cold"
            } else {
                "from a warm pool of one"
            }
        );
        for i in 0..params.first_calls + 2 {
            if pool > 0 {
                // Steady state: the pool holds its sandbox again.
                let deadline = Instant::now() + Duration::from_secs(30);
                while hand_sandboxes.pooled().await?.is_empty() {
                    anyhow::ensure!(Instant::now() < deadline, "the pool never refilled");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let session = super::hands::bash_session(&log, &params.image).await?;
            let mut results = super::hands::tool_results(&stream, &session).await?;
            let elapsed =
                super::hands::timed_bash_true(&js, &log, &mut results, &session, "toolu_first")
                    .await?;
            let from_pool = log
                .read_from(&session, 1)
                .await?
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .any(|e| matches!(&e.event.body, EventBody::SandboxProvisioned(p) if p.from_pool));
            anyhow::ensure!(
                from_pool == (pool > 0),
                "a first call {} the pool",
                if pool > 0 {
                    "missed"
                } else {
                    "was served from"
                }
            );
            if i >= 2 {
                if pool == 0 {
                    cold.push(elapsed)
                } else {
                    pooled.push(elapsed)
                }
            }
            hand_sandboxes.destroy(&session).await;
        }
        task.abort();
        hand_sandboxes.drain_pool().await;
    }
    let mut bare = Vec::new();
    for _ in 0..params.first_calls {
        let s = SessionId::generate();
        let t = Instant::now();
        let sb = sandboxes.ensure(&s, Some(&params.image)).await?;
        sandboxes
            .exec_raw(&sb, vec!["true".into()], 1024, Duration::from_secs(10))
            .await?;
        bare.push(t.elapsed());
        sandboxes.destroy(&s).await;
    }
    let s = |v: &[Duration]| Summary::of(v);
    let (raw_download, raw_put, full, incremental, unchanged, restore, raw_upload) = (
        s(&raw_download),
        s(&raw_put),
        s(&full),
        s(&incremental),
        s(&unchanged),
        s(&restore),
        s(&raw_upload),
    );
    let (first_call_cold, first_call_pool, bare_create_exec) = (s(&cold), s(&pooled), s(&bare));
    Ok(Report {
        environment: Environment::detect(),
        full_ratio: ratio(full.p50_us, raw_download.p50_us + raw_put.p50_us),
        restore_ratio: ratio(restore.p50_us, raw_upload.p50_us),
        pool_ratio: ratio(first_call_pool.p50_us, first_call_cold.p50_us),
        params,
        archive_bytes,
        raw_download,
        raw_put,
        full,
        full_stored_bytes: full_stored,
        incremental,
        incremental_stored_bytes: incr_stored,
        unchanged,
        restore,
        raw_upload,
        first_call_cold,
        first_call_pool,
        bare_create_exec,
    })
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let mut t = format!(
            "herd bench workspace — {} CPUs, {}, image {}\n\nsnapshots of a {} MiB workspace ({} files of 1 MiB; archive {:.1} MiB; {} rounds):\n",
            self.environment.cpus,
            self.environment.nats_server,
            self.params.image,
            self.params.workspace_mib,
            self.params.workspace_mib,
            mib(self.archive_bytes),
            self.params.rounds
        );
        t.push_str(&self.raw_download.row("raw: docker archive download"));
        t.push_str(&self.raw_put.row("raw: one object-store put of the archive"));
        t.push_str(&self.full.row(&format!(
            "herd full snapshot ({:.1} MiB stored)",
            mib(self.full_stored_bytes)
        )));
        t.push_str(&self.incremental.row(&format!(
            "herd snapshot, 1 file changed ({:.1} MiB stored)",
            mib(self.incremental_stored_bytes)
        )));
        t.push_str(&self.unchanged.row("herd snapshot, unchanged (0 stored)"));
        t.push_str(&format!(
            "  ratio full / (download + put) p50: {:.2}x; incremental stores {:.1}% of a full one\n",
            self.full_ratio,
            100.0 * self.incremental_stored_bytes as f64 / self.full_stored_bytes.max(1) as f64
        ));
        t.push_str(&self.raw_upload.row("raw: docker archive upload of the tar"));
        t.push_str(&self.restore.row("herd restore into a fresh sandbox"));
        t.push_str(&format!(
            "  ratio restore / upload p50: {:.2}x\n\n",
            self.restore_ratio
        ));
        t.push_str(&format!(
            "a session's first tool call, bash true, tool_use appended → tool_result ({} each):\n",
            self.params.first_calls
        ));
        t.push_str(
            &self
                .bare_create_exec
                .row("raw: hardened create + start + exec true"),
        );
        t.push_str(
            &self
                .first_call_cold
                .row("herd, cold (the hand creates the sandbox)"),
        );
        t.push_str(&self.first_call_pool.row("herd, from a warm pool of one"));
        t.push_str(&format!(
            "  ratio pool / cold p50: {:.2}x   (not measured here: issue 16 cites 195 ms median create-to-first-command for hosted peers)\n",
            self.pool_ratio
        ));
        t
    }
}
