//! Sandboxes: one hardened Docker container per session, reused across its tool calls.
//!
//! A sandbox is provisioned lazily, on a session's first tool call, from the image its
//! environment names. It is labelled `herd.session=<session_id>` (so `docker ps --filter
//! label=herd.session` finds it) and `herd.managed=true`, mounts a named volume as
//! `/workspace`, and is hardened by default: no network, every capability dropped,
//! no-new-privileges, a read-only root filesystem with a tmpfs `/tmp`, a non-root user, memory,
//! CPU and process limits, an init process, no Docker socket, no host mounts, and an empty
//! environment: nothing of the hand's own environment (where credentials live) is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::event::SessionId;
use crate::tasks::AbortOnDrop;

/// Label carrying the session id.
pub const LABEL_SESSION: &str = "herd.session";
/// Label marking every container herd manages.
pub const LABEL_MANAGED: &str = "herd.managed";
/// Label carrying the hand host that owns the container.
pub const LABEL_HOST: &str = "herd.host";
/// Label marking the hand's own helper containers (`git`), never a session's sandbox.
pub const LABEL_HELPER: &str = "herd.helper";
/// Label marking a warm pool sandbox, with its image: made before any session asked, bound to
/// the first session that claims it (renamed to that session's name), never to another.
pub const LABEL_POOL: &str = "herd.pool";

/// Limits and defaults of sandboxes.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The image when the session's environment names none.
    pub default_image: String,
    /// Memory limit in bytes (swap is not allowed on top).
    pub memory_bytes: i64,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: i64,
    /// Process limit.
    pub pids_limit: i64,
    /// Size of the tmpfs at /tmp.
    pub tmpfs_size: String,
    /// The user when the image runs as root (or names none).
    pub fallback_user: String,
    /// herd's git helper image (`sandbox-images/build git`).
    pub git_image: String,
    /// The OCI runtime for sandboxes and helpers (`runsc` for gVisor); `None`: Docker's default.
    pub runtime: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            default_image: "herd-sandbox:debian".into(),
            memory_bytes: 512 << 20,
            nano_cpus: 1_000_000_000,
            pids_limit: 128,
            tmpfs_size: "64m".into(),
            fallback_user: "65534:65534".into(),
            git_image: "herd-git:latest".into(),
            runtime: None,
        }
    }
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Docker engine refused or is unreachable.
    #[error("docker: {0}")]
    Docker(String),
    /// The sandbox died while a command ran (killed, out of memory, …).
    #[error("the sandbox was lost while the tool ran: {0}")]
    Lost(String),
    /// The image is not present on this host.
    #[error(
        "the sandbox image {0:?} is not present on this host (build it with sandbox-images/build)"
    )]
    NoImage(String),
}

fn docker_err(e: bollard::errors::Error) -> SandboxError {
    SandboxError::Docker(e.to_string())
}

/// What a command printed, and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Standard output (capped).
    pub stdout: Vec<u8>,
    /// Standard error (capped).
    pub stderr: Vec<u8>,
    /// Bytes dropped past the cap, over both streams.
    pub dropped: u64,
    /// The exit code (`None` if it could not be read).
    pub exit_code: Option<i64>,
    /// The command was stopped at the output cap (its process group killed).
    pub capped: bool,
    /// The command ran into its timeout (and its process group was killed).
    pub timed_out: bool,
}

/// Runs every command as `sh -c WRAPPER herd <secs> <cmd…>`: it announces its process group
/// on stderr (a `docker exec` process leads its own session, so its pid is the group's id),
/// then becomes the sandbox's own `timeout`, which kills the whole group at the deadline.
/// An image without `timeout` runs the command bare; the hand's backstop then kills the group.
const WRAPPER: &str = r#"echo "herd-pgid:$$" >&2; t=$1; shift; if command -v timeout >/dev/null 2>&1; then exec timeout -s KILL "$t" "$@"; else exec "$@"; fi"#;

/// How long past its timeout a command's group may run before the hand kills it itself.
pub const BACKSTOP: Duration = Duration::from_secs(10);

/// How long a killed group's streams may take to end before the sandbox is given up.
const DRAIN: Duration = Duration::from_secs(5);

/// How long the hand reads on for the wrapper's header after the cap.
const HEADER_WAIT: Duration = Duration::from_secs(2);

/// How a read of a command's output ended.
enum Ended {
    Eof,
    Cap,
    Deadline,
}

/// The wrapper's first line on stderr, `herd-pgid:<n>`, taken off the stream.
struct Header {
    pending: bool,
    seen: Vec<u8>,
    pgid: Option<u32>,
}

impl Header {
    fn new(expected: bool) -> Self {
        Self {
            pending: expected,
            seen: Vec::new(),
            pgid: None,
        }
    }

    /// The part of a stderr chunk that is the command's; `None` while the header is still
    /// arriving.
    fn strip(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        if !self.pending {
            return Some(chunk.to_vec());
        }
        self.seen.extend_from_slice(chunk);
        let Some(nl) = self.seen.iter().position(|&b| b == b'\n') else {
            if self.seen.len() > 64 {
                // Not our header after all: keep everything.
                self.pending = false;
                return Some(std::mem::take(&mut self.seen));
            }
            return None;
        };
        self.pending = false;
        let line = String::from_utf8_lossy(&self.seen[..nl]).to_string();
        match line.strip_prefix("herd-pgid:").and_then(|n| n.parse().ok()) {
            Some(pgid) => {
                self.pgid = Some(pgid);
                Some(self.seen.split_off(nl + 1))
            }
            None => Some(std::mem::take(&mut self.seen)),
        }
    }
}

/// The sandboxes of one hand host.
#[derive(Clone)]
pub struct Sandboxes {
    docker: Docker,
    host: String,
    config: SandboxConfig,
    /// One claim of a pool sandbox at a time: Docker resolves a rename's source name before it
    /// renames, so two concurrent renames of one pool name can both succeed, the second taking
    /// the sandbox from the first session. A host's pool is its hand's alone, so a lock in
    /// the process serialises every claim.
    claims: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// When a pool sandbox was last claimed: the pool is refilled a moment later, so making
    /// the next one does not slow the first call of the session that took this one.
    last_claim: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    /// Whether this host keeps a warm pool: without one, a first call never looks for it
    /// (no container list on every cold provisioning).
    pool_enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A session's running sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The container id.
    pub id: String,
    /// True when it was created for this call.
    pub fresh: bool,
    /// True when its workspace volume was created with it (the session's first sandbox on
    /// this host, or its volume was removed): a snapshot, if the session has one, belongs in it.
    pub fresh_volume: bool,
    /// Its workspace volume (a pool sandbox keeps the pool volume it was made with).
    pub volume: String,
    /// True when it came from the warm pool.
    pub from_pool: bool,
}

/// Which network a container gets.
#[derive(Debug, Clone, Copy)]
enum Net<'a> {
    /// None at all: every sandbox by default.
    None,
    /// The hand's internal egress network, through its allow-listing proxy (limited sandboxes
    /// and the git helper; nothing ever gets the host's network).
    Egress { network: &'a str, proxy: &'a str },
}

/// Names carry the host, so hands that share a Docker engine (tests, or several hands on one
/// machine) never adopt each other's sandboxes.
fn container_name(host: &str, session: &SessionId) -> String {
    format!("herd-{host}-{session}")
}

fn helper_name(host: &str, session: &SessionId) -> String {
    format!("herd-git-{host}-{session}")
}

fn volume_name(host: &str, session: &SessionId) -> String {
    format!("herd-ws-{host}-{session}")
}

/// Pool names carry a `.`, which no session id (nor host name) may hold, so a pool sandbox's
/// name can never be a session's.
fn pool_name(host: &str, id: &str) -> String {
    format!("herd-{host}-pool.{id}")
}

fn pool_volume_name(host: &str, id: &str) -> String {
    format!("herd-ws-{host}-pool.{id}")
}

/// Whether `volume` may be a session's workspace on `host`: its own name, or one of this
/// host's pool volumes (`herd-ws-<host>-pool.<12 hex>`). A volume named in the log is checked
/// so, never mounted just because an event names it.
pub fn acceptable_volume(host: &str, session: &SessionId, volume: &str) -> bool {
    volume == volume_name(host, session)
        || volume
            .strip_prefix(&pool_volume_name(host, ""))
            .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The workspace volume a container mounts.
fn workspace_of(c: &bollard::models::ContainerInspectResponse) -> Option<String> {
    c.mounts
        .as_ref()?
        .iter()
        .find(|m| m.destination.as_deref() == Some("/workspace"))?
        .name
        .clone()
}

impl Sandboxes {
    /// Connects to the local Docker engine (and checks that it has the configured runtime).
    pub async fn connect(host: &str, config: SandboxConfig) -> Result<Self, SandboxError> {
        let docker = Docker::connect_with_local_defaults().map_err(docker_err)?;
        docker.ping().await.map_err(docker_err)?;
        if let Some(runtime) = &config.runtime {
            let info = docker.info().await.map_err(docker_err)?;
            let known: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
            if !known.contains(runtime) {
                return Err(SandboxError::Docker(format!(
                    "the sandbox runtime {runtime:?} is not registered with this Docker engine (it has {}); install it and add it to /etc/docker/daemon.json (see the README)",
                    known.join(", ")
                )));
            }
        }
        Ok(Self {
            docker,
            host: host.to_string(),
            config,
            claims: Default::default(),
            last_claim: Default::default(),
            pool_enabled: Default::default(),
        })
    }

    /// The Docker client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The session's running sandbox, provisioning one when there is none (or when the old one
    /// stopped: it is removed first; its workspace volume is kept).
    pub async fn ensure(
        &self,
        session: &SessionId,
        image: Option<&str>,
    ) -> Result<Sandbox, SandboxError> {
        self.ensure_with(session, image, None, None).await
    }

    /// [`Self::ensure`], with the sandbox on an egress network (`Net::Egress`) when its session
    /// asks for limited networking; `None` is no network at all. `volume` is the session's
    /// workspace volume on this host when the log names one (a sandbox that came from the
    /// pool keeps its pool volume); otherwise it is named after the session. A session with
    /// no sandbox and no volume here takes one from the warm pool when the pool has one of
    /// its image (sessions without networking only).
    pub async fn ensure_with(
        &self,
        session: &SessionId,
        image: Option<&str>,
        egress: Option<(&str, &str)>,
        volume: Option<&str>,
    ) -> Result<Sandbox, SandboxError> {
        let name = container_name(&self.host, session);
        let mut volume = volume
            .filter(|v| acceptable_volume(&self.host, session, v))
            .map(String::from);
        match self.docker.inspect_container(&name, None).await {
            Ok(c) => {
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let mounted = workspace_of(&c);
                let id = c.id.unwrap_or(name.clone());
                if running {
                    return Ok(Sandbox {
                        id,
                        fresh: false,
                        fresh_volume: false,
                        volume: mounted.unwrap_or_else(|| volume_name(&self.host, session)),
                        from_pool: false,
                    });
                }
                // Its replacement mounts the same workspace.
                if mounted.is_some() {
                    volume = mounted;
                }
                self.remove_container(&id).await;
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(docker_err(e)),
        }
        let image = image.unwrap_or(&self.config.default_image).to_string();
        let volume = volume.unwrap_or_else(|| volume_name(&self.host, session));
        let fresh_volume = match self.docker.inspect_volume(&volume).await {
            Ok(_) => false,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => true,
            Err(e) => return Err(docker_err(e)),
        };
        if fresh_volume
            && egress.is_none()
            && let Some(sandbox) = self.claim_pooled(session, &image).await
        {
            return Ok(sandbox);
        }
        let user = self.image_user(&image).await?;
        let net = match egress {
            Some((network, proxy)) => Net::Egress { network, proxy },
            None => Net::None,
        };
        let body = self.hardened(Some(session), image, user, net, volume.clone());
        let mut sandbox = self
            .create_and_start(&container_name(&self.host, session), body)
            .await?;
        sandbox.fresh_volume = fresh_volume;
        sandbox.volume = volume;
        Ok(sandbox)
    }

    /// The workspace volume a session's sandbox on this host gets unless the log names another.
    pub fn default_volume(&self, session: &SessionId) -> String {
        volume_name(&self.host, session)
    }

    /// The warm pool's sandboxes of this host: (container id, image, name) of those not
    /// claimed yet.
    pub async fn pooled(&self) -> Result<Vec<(String, String, String)>, SandboxError> {
        let prefix = format!("/{}", pool_name(&self.host, ""));
        // Running ones only: one still starting is not ready to serve a call.
        let filters = HashMap::from([
            (
                "label".to_string(),
                vec![
                    format!("{LABEL_HOST}={}", self.host),
                    format!("{LABEL_MANAGED}=true"),
                    LABEL_POOL.to_string(),
                ],
            ),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        Ok(self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err)?
            .into_iter()
            .filter_map(|c| {
                let name = c.names.as_ref()?.first()?.clone();
                let image = c.labels.as_ref()?.get(LABEL_POOL)?.clone();
                name.starts_with(&prefix)
                    .then(|| Some((c.id?, image, name.trim_start_matches('/').to_string())))?
            })
            .collect())
    }

    /// Lets first calls on this host take sandboxes from the warm pool (a hand with a pool
    /// calls it at start, so sandboxes an earlier run made are used too).
    pub fn enable_pool(&self) {
        self.pool_enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago a pool sandbox was last claimed (`None`: never).
    pub fn since_last_claim(&self) -> Option<Duration> {
        self.last_claim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Removes this host's pool sandboxes that stopped (killed, out of memory) before any
    /// session claimed them, with their volumes. Not while one is being made: the hand's pool
    /// filler calls this and [`Self::add_pooled`] one after the other.
    pub async fn prune_pool(&self) {
        let prefix = format!("/{}", pool_name(&self.host, ""));
        let Ok(all) = self
            .labelled(vec![
                format!("{LABEL_HOST}={}", self.host),
                format!("{LABEL_MANAGED}=true"),
                LABEL_POOL.to_string(),
            ])
            .await
        else {
            return;
        };
        for c in all {
            let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .cloned()
                .unwrap_or_default();
            let (Some(id), Some(pool_id)) = (c.id, name.strip_prefix(&prefix)) else {
                continue;
            };
            if !running {
                self.remove_container(&id).await;
                let _ = self
                    .remove_volume(&pool_volume_name(&self.host, pool_id))
                    .await;
            }
        }
    }

    /// Makes one warm pool sandbox of `image`: hardened as a session's, with no network, an
    /// empty workspace volume of its own, and no session yet.
    pub async fn add_pooled(&self, image: &str) -> Result<Sandbox, SandboxError> {
        self.enable_pool();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let user = self.image_user(image).await?;
        let volume = pool_volume_name(&self.host, &id);
        let mut body = self.hardened(None, image.to_string(), user, Net::None, volume.clone());
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(LABEL_POOL.to_string(), image.to_string());
        }
        let mut sandbox = self
            .create_and_start(&pool_name(&self.host, &id), body)
            .await?;
        sandbox.volume = volume;
        sandbox.from_pool = true;
        Ok(sandbox)
    }

    /// Binds a running pool sandbox of `image` to `session`: renamed to the session's sandbox
    /// name, which only one claim can win, so a pool sandbox goes to one session only; it never
    /// returns to the pool.
    async fn claim_pooled(&self, session: &SessionId, image: &str) -> Option<Sandbox> {
        if !self.pool_enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let _one_at_a_time = self.claims.lock().await;
        let pooled = self.pooled().await.ok()?;
        let mine = container_name(&self.host, session);
        for (id, _, name) in pooled.into_iter().filter(|(_, i, _)| i == image) {
            // By its pool name, not its id: once it is renamed, a later claim's rename fails.
            let renamed = self
                .docker
                .rename_container(
                    &name,
                    bollard::query_parameters::RenameContainerOptions { name: mine.clone() },
                )
                .await;
            if renamed.is_err() {
                continue;
            }
            let c = self.docker.inspect_container(&id, None).await.ok()?;
            let named_mine =
                c.name.as_deref().map(|n| n.trim_start_matches('/')) == Some(mine.as_str());
            if !named_mine {
                tracing::warn!(container = %id, "A claimed pool sandbox does not carry its session's name; removed.");
                self.remove_container(&id).await;
                continue;
            }
            if !c.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
                self.remove_container(&id).await;
                continue;
            }
            *self.last_claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            return Some(Sandbox {
                volume: workspace_of(&c)?,
                id,
                fresh: true,
                fresh_volume: true,
                from_pool: true,
            });
        }
        None
    }

    /// The session's sandbox on this host when it is running (nothing is created).
    pub async fn running(&self, session: &SessionId) -> Option<Sandbox> {
        let c = self
            .docker
            .inspect_container(&container_name(&self.host, session), None)
            .await
            .ok()?;
        c.state.as_ref()?.running.filter(|r| *r)?;
        Some(Sandbox {
            volume: workspace_of(&c).unwrap_or_else(|| volume_name(&self.host, session)),
            id: c.id?,
            fresh: false,
            fresh_volume: false,
            from_pool: false,
        })
    }

    async fn create_and_start(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<Sandbox, SandboxError> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(name).build()),
                body,
            )
            .await
            .map_err(docker_err)?;
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(docker_err)?;
        Ok(Sandbox {
            id: created.id,
            fresh: true,
            fresh_volume: false,
            volume: String::new(),
            from_pool: false,
        })
    }

    /// The user a container of `image` runs as: the image's own if it is a numeric, non-zero
    /// uid; otherwise the fallback (a name, even "root:root", or uid 0 is not trusted).
    async fn image_user(&self, image: &str) -> Result<String, SandboxError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => {
                // Only a numeric, non-zero uid is trusted as is: a name (even "root:root") or
                // uid 0 runs as the fallback user instead.
                let u = i.config.and_then(|c| c.user).unwrap_or_default();
                let uid = u.split(':').next().unwrap_or("");
                Ok(if uid.parse::<u32>().is_ok_and(|n| n != 0) {
                    u
                } else {
                    self.config.fallback_user.clone()
                })
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(SandboxError::NoImage(image.to_string())),
            Err(e) => Err(docker_err(e)),
        }
    }

    /// A hardened container body: the image, the session's workspace, a read-only root, no
    /// capabilities, an empty environment, limits; no network, or the egress network.
    fn hardened(
        &self,
        session: Option<&SessionId>,
        image: String,
        user: String,
        net: Net<'_>,
        volume: String,
    ) -> ContainerCreateBody {
        let (mode, env) = match net {
            Net::None => ("none".to_string(), vec![]),
            // Only the proxy's address: no secret, nothing of the hand's environment.
            Net::Egress { network, proxy } => (
                network.to_string(),
                ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
                    .iter()
                    .map(|k| format!("{k}={proxy}"))
                    .collect(),
            ),
        };
        let egress = matches!(net, Net::Egress { .. });
        ContainerCreateBody {
            image: Some(image),
            // The image's ENTRYPOINT and HEALTHCHECK never run: only herd's own sleep, and the
            // commands the hand execs.
            entrypoint: Some(vec![String::new()]),
            healthcheck: Some(HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            cmd: Some(vec!["sleep".into(), "2147483647".into()]),
            user: Some(user),
            working_dir: Some("/workspace".into()),
            env: Some(env),
            labels: Some(
                [
                    (LABEL_MANAGED.to_string(), "true".to_string()),
                    (LABEL_HOST.to_string(), self.host.clone()),
                ]
                .into_iter()
                .chain(session.map(|s| (LABEL_SESSION.to_string(), s.to_string())))
                .collect(),
            ),
            network_disabled: Some(mode == "none"),
            host_config: Some(HostConfig {
                network_mode: Some(mode),
                // On the egress network Docker's embedded resolver would forward queries out
                // (CVE-2024-29018 on Docker before 26.0.0/25.0.4/23.0.11): its only upstream is
                // the sandbox's own loopback, so no name resolves; the proxy resolves names.
                dns: egress.then(|| vec!["127.0.0.1".to_string()]),
                memory: Some(self.config.memory_bytes),
                memory_swap: Some(self.config.memory_bytes),
                nano_cpus: Some(self.config.nano_cpus),
                pids_limit: Some(self.config.pids_limit),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    format!("rw,nosuid,nodev,size={},mode=1777", self.config.tmpfs_size),
                )])),
                mounts: Some(vec![Mount {
                    target: Some("/workspace".into()),
                    source: Some(volume),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(false),
                    ..Default::default()
                }]),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(1024),
                    hard: Some(1024),
                }]),
                init: Some(true),
                runtime: self.config.runtime.clone(),
                // No IPv6 at all: before Docker 26 an IPv4-only network still gives containers
                // link-local IPv6 addresses, which inter-container isolation does not cover.
                sysctls: Some(HashMap::from([(
                    "net.ipv6.conf.all.disable_ipv6".to_string(),
                    "1".to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A short-lived container for the hand's own git network work (clone, push, fetch):
    /// herd's git image (never the session's: its ENTRYPOINT, HEALTHCHECK and git build are
    /// the tenant's), as the session image's user so the workspace stays the sandbox's, with
    /// the session's workspace volume and nothing of the hand's environment. Its only network
    /// is the egress network, where the proxy lets it reach the repository's host and nothing
    /// else (the caller sets that rule). It never runs model-written commands: the hand runs
    /// fixed scripts in it and passes the credential on stdin. Remove it with
    /// [`Self::remove_helper`].
    pub async fn git_helper(
        &self,
        session: &SessionId,
        session_image: Option<&str>,
        network: &str,
        proxy: &str,
    ) -> Result<Sandbox, SandboxError> {
        let name = helper_name(&self.host, session);
        self.remove_container(&name).await;
        let session_image = session_image.unwrap_or(&self.config.default_image);
        let user = self.image_user(session_image).await?;
        // By id: the helper runs the image the hand inspected, not whatever the tag names later.
        let image = match self.docker.inspect_image(&self.config.git_image).await {
            Ok(i) => i.id.unwrap_or_else(|| self.config.git_image.clone()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(SandboxError::NoImage(self.config.git_image.clone()));
            }
            Err(e) => return Err(docker_err(e)),
        };
        let volume = self
            .docker
            .inspect_container(&container_name(&self.host, session), None)
            .await
            .ok()
            .and_then(|c| workspace_of(&c))
            .unwrap_or_else(|| volume_name(&self.host, session));
        let mut body = self.hardened(
            Some(session),
            image,
            user,
            Net::Egress { network, proxy },
            volume,
        );
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(LABEL_HELPER.to_string(), "git".to_string());
        }
        self.create_and_start(&name, body).await
    }

    /// The container's address on `network` (for the egress proxy's rules).
    pub async fn address_on(&self, sandbox: &Sandbox, network: &str) -> Option<std::net::IpAddr> {
        let c = self
            .docker
            .inspect_container(&sandbox.id, None)
            .await
            .ok()?;
        let nets = c.network_settings?.networks?;
        nets.get(network)?.ip_address.as_ref()?.parse().ok()
    }

    /// Removes a git helper.
    pub async fn remove_helper(&self, helper: &Sandbox) {
        self.remove_container(&helper.id).await;
    }

    /// Runs `cmd` in the sandbox, feeding it `stdin`, keeping at most `cap` bytes of each
    /// stream, for at most `timeout`.
    ///
    /// The command runs in its own process group (a `docker exec` process leads a new session),
    /// under the sandbox's own `timeout -s KILL`, so a timeout kills its whole tree and the
    /// sandbox stays. At the cap the hand stops reading and kills the group: output past the
    /// cap is never transferred (`yes` cannot stream gigabytes through dockerd). Only when the
    /// group outlives `timeout` by [`BACKSTOP`] is the sandbox itself killed
    /// ([`SandboxError::Lost`]).
    pub async fn exec(
        &self,
        sandbox: &Sandbox,
        cmd: Vec<String>,
        stdin: Option<Vec<u8>>,
        cap: usize,
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        let secs = timeout.as_secs().max(1);
        let mut wrapped = vec![
            "sh".to_string(),
            "-c".to_string(),
            WRAPPER.to_string(),
            "herd".to_string(),
            secs.to_string(),
        ];
        wrapped.extend(cmd);
        let started = Instant::now();
        let mut out = self
            .exec_inner(sandbox, wrapped, stdin, cap, true, timeout + BACKSTOP)
            .await?;
        out.timed_out = !out.capped
            && out.exit_code == Some(137)
            && started.elapsed() >= Duration::from_secs(secs);
        Ok(out)
    }

    /// Runs `cmd` as it is, with no wrapper and no in-sandbox timeout: the raw primitive the
    /// hands benchmark compares against. `deadline` kills the sandbox.
    pub async fn exec_raw(
        &self,
        sandbox: &Sandbox,
        cmd: Vec<String>,
        cap: usize,
        deadline: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        self.exec_inner(sandbox, cmd, None, cap, false, deadline)
            .await
    }

    async fn exec_inner(
        &self,
        sandbox: &Sandbox,
        cmd: Vec<String>,
        stdin: Option<Vec<u8>>,
        cap: usize,
        wrapped: bool,
        deadline: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        let exec = self
            .docker
            .create_exec(
                &sandbox.id,
                CreateExecOptions {
                    cmd: Some(cmd),
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    working_dir: Some("/workspace".to_string()),
                    env: Some(vec![
                        "HOME=/tmp".to_string(),
                        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
                            .to_string(),
                    ]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.lost_or(e))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| self.lost_or(e))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(SandboxError::Docker("the exec did not attach".into()));
        };
        // Stdin is fed while the output is read: a command that echoes its input (cat to
        // /dev/stdout) would otherwise block on a full pipe, and so would this write.
        let feeder = tokio::spawn(async move {
            if let Some(data) = stdin {
                let _ = input.write_all(&data).await;
                let _ = input.shutdown().await;
            }
        });
        let _feeder = AbortOnDrop(feeder);
        let mut out = ExecOutput::default();
        let mut header = Header::new(wrapped);
        let give_up = tokio::time::Instant::now() + deadline;
        // Reads until the streams end, the cap is reached or the deadline passes.
        let ended = loop {
            let chunk = match tokio::time::timeout_at(give_up, output.next()).await {
                Err(_) => break Ended::Deadline,
                Ok(None) => break Ended::Eof,
                Ok(Some(Err(e))) => return Err(self.lost_or(e)),
                Ok(Some(Ok(c))) => c,
            };
            let (buf, msg) = match chunk {
                LogOutput::StdOut { message } => (&mut out.stdout, message.to_vec()),
                LogOutput::StdErr { message } => match header.strip(&message) {
                    Some(rest) => (&mut out.stderr, rest),
                    None => continue,
                },
                _ => continue,
            };
            let room = cap.saturating_sub(buf.len());
            buf.extend_from_slice(&msg[..msg.len().min(room)]);
            if msg.len() > room {
                out.dropped += (msg.len() - room) as u64;
                break Ended::Cap;
            }
        };
        if !matches!(ended, Ended::Eof) {
            // Stop the command's whole process group, then give its streams a moment to end;
            // a group that cannot be stopped costs the sandbox.
            out.capped = matches!(ended, Ended::Cap);
            // Docker copies stdout and stderr separately, so a flood on stdout can arrive
            // before the wrapper's header on stderr: read on (keeping nothing) until it does.
            let wait = tokio::time::Instant::now() + HEADER_WAIT;
            while header.pending {
                match tokio::time::timeout_at(wait, output.next()).await {
                    Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                        if let Some(rest) = header.strip(&message) {
                            out.dropped += rest.len() as u64;
                        }
                    }
                    Ok(Some(Ok(LogOutput::StdOut { message }))) => {
                        out.dropped += message.len() as u64
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            // The stream is read on while the kill goes in: the engine (20.10) starts no new
            // exec in a container while an attached one's output waits unread.
            let dropped = &mut out.dropped;
            let drain = async {
                while let Some(c) = output.next().await {
                    if let Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message }) = c {
                        *dropped += message.len() as u64;
                    }
                }
            };
            let kill = async {
                if self.kill_group(sandbox, &exec.id, header.pgid).await {
                    tokio::time::sleep(DRAIN).await;
                }
            };
            // Drained: the streams ended after the kill, or by themselves while it went in.
            let drained = tokio::select! {
                () = drain => true,
                () = kill => false,
            };
            if !drained {
                self.kill(sandbox).await;
                return Err(SandboxError::Lost(match ended {
                    Ended::Cap => "the command could not be stopped at its output cap and the sandbox was killed".into(),
                    _ => format!(
                        "the command outlived its {}s deadline and the sandbox was killed",
                        deadline.as_secs()
                    ),
                }));
            }
        }
        out.exit_code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .ok()
            .and_then(|i| i.exit_code);
        // A command that ended because the container died (OOM, docker kill) reports the
        // container's fate, not an exit code. The daemon marks a killed container stopped a
        // moment after its processes die, so a SIGKILLed (or unreadable) exit is re-checked
        // for up to a second.
        let checks = if matches!(out.exit_code, None | Some(137)) && !out.capped {
            10
        } else {
            1
        };
        for i in 0..checks {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let Ok(c) = self.docker.inspect_container(&sandbox.id, None).await else {
                return Err(SandboxError::Lost("the container is gone".into()));
            };
            let state = c.state.unwrap_or_default();
            if !state.running.unwrap_or(false) {
                let why = if state.oom_killed.unwrap_or(false) {
                    "it ran out of memory".to_string()
                } else {
                    format!(
                        "the container exited with code {}",
                        state.exit_code.unwrap_or(-1)
                    )
                };
                self.remove_container(&sandbox.id).await;
                return Err(SandboxError::Lost(why));
            }
        }
        Ok(out)
    }

    /// SIGKILLs the exec's process group. First from a second exec in the sandbox, as its own
    /// user; when that cannot start (a fork bomb holds every pid the sandbox may have), from
    /// the host, by the exec's host pid, when this hand shares the engine's pid namespace and
    /// the pid is still the sandbox's. True when the kill was delivered.
    async fn kill_group(&self, sandbox: &Sandbox, exec_id: &str, pgid: Option<u32>) -> bool {
        if let Some(pgid) = pgid {
            let cmd = vec![
                "sh".to_string(),
                "-c".to_string(),
                format!("kill -KILL -{pgid} 2>/dev/null || kill -KILL {pgid} 2>/dev/null; exit 0"),
            ];
            let inside =
                Box::pin(self.exec_inner(sandbox, cmd, None, 4096, false, Duration::from_secs(10)))
                    .await;
            // It ran (a group already gone counts: the command ended on its own).
            if matches!(
                inside,
                Ok(ExecOutput {
                    exit_code: Some(_),
                    ..
                })
            ) {
                return true;
            }
        }
        let Some(pid) = self
            .docker
            .inspect_exec(exec_id)
            .await
            .ok()
            .and_then(|i| i.pid)
            .filter(|p| *p > 1)
        else {
            return false;
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cgroup.contains(&sandbox.id) {
            return false;
        }
        tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    fn lost_or(&self, e: bollard::errors::Error) -> SandboxError {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                message,
            } => SandboxError::Lost(message),
            e => docker_err(e),
        }
    }

    /// Kills a sandbox (SIGKILL) and removes it.
    pub async fn kill(&self, sandbox: &Sandbox) {
        self.remove_container(&sandbox.id).await;
    }

    async fn remove_container(&self, id: &str) {
        let _ = self
            .docker
            .remove_container(
                id,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await;
    }

    /// Removes a container of this host by id (orphans found by [`Self::list`]).
    pub async fn remove_container_id(&self, id: &str) {
        self.remove_container(id).await;
    }

    /// Removes a session's sandbox; its workspace volume stays for the next one.
    pub async fn remove_sandbox(&self, session: &SessionId) {
        self.remove_container(&container_name(&self.host, session))
            .await;
    }

    /// The workspace volume of the session's sandbox on this host, if it has one now.
    async fn mounted_volume(&self, session: &SessionId) -> Option<String> {
        let c = self
            .docker
            .inspect_container(&container_name(&self.host, session), None)
            .await
            .ok()?;
        workspace_of(&c)
    }

    /// Removes a session's sandbox and its workspace volume.
    pub async fn destroy(&self, session: &SessionId) {
        let volume = self
            .mounted_volume(session)
            .await
            .unwrap_or_else(|| volume_name(&self.host, session));
        self.remove_container(&container_name(&self.host, session))
            .await;
        let _ = self
            .docker
            .remove_volume(
                &volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
    }

    /// herd's workspace volumes on this engine (of this host, or of every host): name,
    /// whether a container uses it, and when it was created (as Docker says, RFC 3339).
    pub async fn workspace_volumes(
        &self,
        every_host: bool,
    ) -> Result<Vec<(String, bool, Option<String>)>, SandboxError> {
        let prefix = if every_host {
            "herd-ws-".to_string()
        } else {
            format!("herd-ws-{}-", self.host)
        };
        let filters = HashMap::from([("name".to_string(), vec![prefix.clone()])]);
        let volumes = self
            .docker
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err)?
            .volumes
            .unwrap_or_default();
        let mut out = Vec::new();
        for v in volumes {
            if !v.name.starts_with(&prefix) {
                continue;
            }
            let users = HashMap::from([("volume".to_string(), vec![v.name.clone()])]);
            let attached = self
                .docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&users)
                        .build(),
                ))
                .await
                .map_err(docker_err)?;
            out.push((v.name, !attached.is_empty(), v.created_at));
        }
        Ok(out)
    }

    /// Where the session's workspace volume lives on this host, when this process can see it
    /// (a hand on the host, not in a container).
    pub async fn workspace_mountpoint(&self, session: &SessionId) -> Option<std::path::PathBuf> {
        let volume = self
            .mounted_volume(session)
            .await
            .unwrap_or_else(|| volume_name(&self.host, session));
        let v = self.docker.inspect_volume(&volume).await.ok()?;
        let path = std::path::PathBuf::from(v.mountpoint);
        path.is_dir().then_some(path)
    }

    /// Removes a volume (Docker refuses while a container uses it).
    pub async fn remove_volume(&self, name: &str) -> Result<(), SandboxError> {
        self.docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
            .map_err(docker_err)
    }

    /// Every container herd made on this engine (sandboxes, git helpers, egress proxies),
    /// of this host or of every host: id and name.
    pub async fn managed_containers(
        &self,
        every_host: bool,
    ) -> Result<Vec<(String, String)>, SandboxError> {
        let mut labels = vec![format!("{LABEL_MANAGED}=true")];
        if !every_host {
            labels.push(format!("{LABEL_HOST}={}", self.host));
        }
        Ok(self
            .labelled(labels)
            .await?
            .into_iter()
            .filter_map(|c| {
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default();
                Some((c.id?, name.trim_start_matches('/').to_string()))
            })
            .collect())
    }

    /// The networks herd made on this engine (the egress proxies' internal networks).
    pub async fn managed_networks(&self) -> Result<Vec<String>, SandboxError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
        let list = self
            .docker
            .list_networks(Some(
                bollard::query_parameters::ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err)?;
        Ok(list.into_iter().filter_map(|n| n.name).collect())
    }

    /// Removes a network herd made (Docker refuses while a container is attached).
    pub async fn remove_network(&self, name: &str) -> Result<(), SandboxError> {
        self.docker.remove_network(name).await.map_err(docker_err)
    }

    /// Every container (running or not) carrying all of `labels` (`key=value`).
    async fn labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, SandboxError> {
        let filters = HashMap::from([("label".to_string(), labels)]);
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err)
    }

    /// The sessions whose sandboxes this host runs (from the labels; a sandbox that came from
    /// the pool carries its session in its name). Unclaimed pool sandboxes are not listed.
    pub async fn list(&self) -> Result<Vec<(String, String)>, SandboxError> {
        let prefix = format!("/herd-{}-", self.host);
        Ok(self
            .labelled(vec![
                format!("{LABEL_HOST}={}", self.host),
                format!("{LABEL_MANAGED}=true"),
            ])
            .await?
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.as_ref()?;
                let session = match labels.get(LABEL_SESSION) {
                    Some(s) => s.clone(),
                    // A claimed pool sandbox carries its session in its name; an unclaimed
                    // one's name holds a '.', which no session id does.
                    None if labels.contains_key(LABEL_POOL) => {
                        let name = c.names.as_ref()?.first()?;
                        let session = name.strip_prefix(&prefix)?;
                        SessionId::parse(session).ok()?.to_string()
                    }
                    None => return None,
                };
                Some((session, c.id?))
            })
            .collect())
    }

    /// Removes the unclaimed pool sandboxes of this host, with their (empty) volumes.
    pub async fn drain_pool(&self) {
        for (id, _, name) in self.pooled().await.unwrap_or_default() {
            self.remove_container(&id).await;
            if let Some(pool_id) = name.strip_prefix(&pool_name(&self.host, "")) {
                let _ = self
                    .remove_volume(&pool_volume_name(&self.host, pool_id))
                    .await;
            }
        }
    }
}
