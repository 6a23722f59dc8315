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
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, ResourcesUlimits};
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
}

/// The sandboxes of one hand host.
#[derive(Clone)]
pub struct Sandboxes {
    docker: Docker,
    host: String,
    config: SandboxConfig,
}

/// A session's running sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The container id.
    pub id: String,
    /// True when it was created for this call.
    pub fresh: bool,
}

/// Which network a container gets.
#[derive(Debug, Clone, Copy)]
enum Net<'a> {
    /// None at all: every sandbox by default.
    None,
    /// The host's: only the hand's git helper, which runs no model-written command.
    Host,
    /// The hand's internal egress network, through its allow-listing proxy.
    Egress { network: &'a str, proxy: &'a str },
}

/// Names carry the host, so hands that share a Docker engine (tests, or several hands on one
/// machine) never adopt each other's sandboxes.
fn container_name(host: &str, session: &SessionId) -> String {
    format!("herd-{host}-{session}")
}

fn volume_name(host: &str, session: &SessionId) -> String {
    format!("herd-ws-{host}-{session}")
}

impl Sandboxes {
    /// Connects to the local Docker engine.
    pub async fn connect(host: &str, config: SandboxConfig) -> Result<Self, SandboxError> {
        let docker = Docker::connect_with_local_defaults().map_err(docker_err)?;
        docker.ping().await.map_err(docker_err)?;
        Ok(Self {
            docker,
            host: host.to_string(),
            config,
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
        self.ensure_with(session, image, None).await
    }

    /// [`Self::ensure`], with the sandbox on an egress network (`Net::Egress`) when its session
    /// asks for limited networking; `None` is no network at all.
    pub async fn ensure_with(
        &self,
        session: &SessionId,
        image: Option<&str>,
        egress: Option<(&str, &str)>,
    ) -> Result<Sandbox, SandboxError> {
        let name = container_name(&self.host, session);
        match self.docker.inspect_container(&name, None).await {
            Ok(c) => {
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let id = c.id.unwrap_or(name.clone());
                if running {
                    return Ok(Sandbox { id, fresh: false });
                }
                self.remove_container(&id).await;
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(docker_err(e)),
        }
        let image = image.unwrap_or(&self.config.default_image).to_string();
        let user = self.image_user(&image).await?;
        let net = match egress {
            Some((network, proxy)) => Net::Egress { network, proxy },
            None => Net::None,
        };
        let body = self.hardened(session, image, user, net);
        self.create_and_start(&container_name(&self.host, session), body)
            .await
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

    /// A hardened container body: the session's image and workspace, a read-only root, no
    /// capabilities, an empty environment, limits; no network unless `host_network` (only the
    /// hand's own git helper gets that, never a sandbox).
    fn hardened(
        &self,
        session: &SessionId,
        image: String,
        user: String,
        net: Net<'_>,
    ) -> ContainerCreateBody {
        let (mode, env) = match net {
            Net::None => ("none".to_string(), vec![]),
            Net::Host => ("host".to_string(), vec![]),
            // Only the proxy's address: no secret, nothing of the hand's environment.
            Net::Egress { network, proxy } => (
                network.to_string(),
                ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
                    .iter()
                    .map(|k| format!("{k}={proxy}"))
                    .collect(),
            ),
        };
        ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["sleep".into(), "2147483647".into()]),
            user: Some(user),
            working_dir: Some("/workspace".into()),
            env: Some(env),
            labels: Some(HashMap::from([
                (LABEL_SESSION.to_string(), session.to_string()),
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_HOST.to_string(), self.host.clone()),
            ])),
            network_disabled: Some(mode == "none"),
            host_config: Some(HostConfig {
                network_mode: Some(mode),
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
                    source: Some(volume_name(&self.host, session)),
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
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A short-lived container for the hand's own git network work (clone, push, fetch): the
    /// session's image, user and workspace volume, the host's network, nothing of the hand's
    /// environment. It never runs model-written commands: the hand runs fixed scripts in it
    /// and passes the credential on stdin. Remove it with [`Self::remove_helper`].
    pub async fn git_helper(
        &self,
        session: &SessionId,
        image: Option<&str>,
    ) -> Result<Sandbox, SandboxError> {
        let name = format!("herd-git-{}-{session}", self.host);
        self.remove_container(&name).await;
        let image = image.unwrap_or(&self.config.default_image).to_string();
        let user = self.image_user(&image).await?;
        let body = self.hardened(session, image, user, Net::Host);
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

    /// Runs `cmd` in the sandbox, feeding it `stdin`, keeping at most `cap` bytes of output.
    /// The caller wraps the command in an in-sandbox `timeout`; `deadline` is the backstop,
    /// after which the sandbox is killed.
    pub async fn exec(
        &self,
        sandbox: &Sandbox,
        cmd: Vec<String>,
        stdin: Option<Vec<u8>>,
        cap: usize,
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
        let collect = async {
            while let Some(chunk) = output.next().await {
                let (buf, msg) = match chunk {
                    Ok(LogOutput::StdOut { message }) => (&mut out.stdout, message),
                    Ok(LogOutput::StdErr { message }) => (&mut out.stderr, message),
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                };
                let room = cap.saturating_sub(buf.len());
                buf.extend_from_slice(&msg[..msg.len().min(room)]);
                out.dropped += msg.len().saturating_sub(room) as u64;
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, collect).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.lost_or(e)),
            Err(_) => {
                self.kill(sandbox).await;
                return Err(SandboxError::Lost(format!(
                    "the command outlived its {}s deadline and the sandbox was killed",
                    deadline.as_secs()
                )));
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
        let checks = if matches!(out.exit_code, None | Some(137)) {
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

    /// Removes a session's sandbox; its workspace volume stays for the next one.
    pub async fn remove_sandbox(&self, session: &SessionId) {
        self.remove_container(&container_name(&self.host, session))
            .await;
    }

    /// Removes a session's sandbox and its workspace volume.
    pub async fn destroy(&self, session: &SessionId) {
        self.remove_container(&container_name(&self.host, session))
            .await;
        let _ = self
            .docker
            .remove_volume(
                &volume_name(&self.host, session),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
    }

    /// The sessions whose sandboxes this host runs (from the labels).
    pub async fn list(&self) -> Result<Vec<(String, String)>, SandboxError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_HOST}={}", self.host),
                format!("{LABEL_MANAGED}=true"),
            ],
        )]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let session = c.labels.as_ref()?.get(LABEL_SESSION)?.clone();
                Some((session, c.id?))
            })
            .collect())
    }
}
