//! `herd bench hands`: sandbox provisioning and the tool round trip against bare Docker.
//!
//! * Provisioning, cold (image cached): herd's hardened `ensure` (create + start with every
//!   limit, label and the workspace volume) against a bare `docker create` + `start` of the same
//!   image, interleaved.
//! * Tool round trip on a warm sandbox, `bash true`: from the `agent.tool_use` append's ack to
//!   the `agent.tool_result` arriving on a subscription, through the job queue and a real hand,
//!   against a bare `docker exec true` in the same container.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use futures_util::StreamExt;
use serde::Serialize;

use super::{Environment, Summary, ratio};
use crate::bus::jobs::ToolJob;
use crate::bus::subjects;
use crate::event::*;
use crate::hands::sandbox::SandboxConfig;
use crate::hands::{Hands, HandsConfig};

/// Sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Sandboxes provisioned each way.
    pub provisions: usize,
    /// Timed tool round trips.
    pub round_trips: usize,
    /// The image.
    pub image: String,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            provisions: 20,
            round_trips: 100,
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
    /// herd's hardened provisioning.
    pub provision_herd: Summary,
    /// Bare create + start (Docker's default network).
    pub provision_bare: Summary,
    /// Bare create + start with `--network none`, like herd's: the like-for-like baseline.
    pub provision_bare_no_network: Summary,
    /// herd p50 over bare-without-network p50.
    pub provision_p50_ratio: f64,
    /// tool_use append → tool_result received.
    pub round_trip: Summary,
    /// Bare `docker exec true`.
    pub exec_bare: Summary,
    /// Round-trip p50 minus bare exec p50, ms.
    pub overhead_p50_ms: f64,
    /// Round-trip p99 minus bare exec p99, ms.
    pub overhead_p99_ms: f64,
}

/// Times a bare `docker create` + `start` of `image` (optionally with a network mode), then
/// removes the container.
async fn bare_start(
    docker: &bollard::Docker,
    image: &str,
    network: Option<&str>,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let c = docker
        .create_container(
            None,
            ContainerCreateBody {
                image: Some(image.to_string()),
                cmd: Some(vec!["sleep".into(), "2147483647".into()]),
                host_config: network.map(|n| bollard::models::HostConfig {
                    network_mode: Some(n.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    docker.start_container(&c.id, None).await?;
    let elapsed = t.elapsed();
    docker
        .remove_container(
            &c.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await?;
    Ok(elapsed)
}

/// A new session whose agent has `bash`, in `image`.
pub(super) async fn bash_session(
    log: &crate::session::SessionLog,
    image: &str,
) -> anyhow::Result<SessionId> {
    let session = SessionId::generate();
    let mut agent = AgentConfig::new("scripted");
    agent.tools = vec![ToolConfig::builtin("bash")];
    log.create(
        &session,
        &Event::new(SessionCreated {
            environment: EnvironmentConfig {
                image: Some(image.to_string()),
                allowed_hosts: vec![],
                networking: None,
            },
            ..SessionCreated::new(agent)
        }),
    )
    .await?;
    Ok(session)
}

/// The session's `agent.tool_result`s from now on.
pub(super) async fn tool_results(
    stream: &jetstream::stream::Stream,
    session: &SessionId,
) -> anyhow::Result<jetstream::consumer::pull::Ordered> {
    Ok(stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::session_event(session, "agent.tool_result"),
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?
        .messages()
        .await?)
}

/// A `bash true` call through the job queue and whatever hand takes it: from its
/// `agent.tool_use` appended to its `agent.tool_result` arriving on `results`.
pub(super) async fn timed_bash_true(
    js: &jetstream::Context,
    log: &crate::session::SessionLog,
    results: &mut jetstream::consumer::pull::Ordered,
    session: &SessionId,
    tool_use_id: &str,
) -> anyhow::Result<Duration> {
    let call = Event::new(AgentToolUse {
        tool_use_id: tool_use_id.to_string(),
        name: "bash".into(),
        input: serde_json::json!({"command": "true"}),
        evaluated_permission: Some(EvaluatedPermission::Allow),
    });
    let a = log.append_fact(session, &call).await?;
    let t = Instant::now();
    let job = ToolJob {
        session_id: session.clone(),
        tool_use_id: tool_use_id.to_string(),
        name: "bash".into(),
        input: serde_json::json!({"command": "true"}),
        tool_use_seq: a.last_seq,
        image: None,
    };
    js.publish(
        crate::bus::routing::subject(&crate::bus::routing::Route::Pool, &job),
        serde_json::to_vec(&job)?.into(),
    )
    .await?
    .await?;
    let m = tokio::time::timeout(Duration::from_secs(60), results.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the result stream ended"))?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let elapsed = t.elapsed();
    anyhow::ensure!(
        String::from_utf8_lossy(&m.payload).contains(tool_use_id),
        "a result for another call"
    );
    Ok(elapsed)
}

/// Runs the benchmark on a private nats-server and the local Docker engine.
pub async fn run(params: Params) -> anyhow::Result<Report> {
    let nats = super::PrivateNats::start().await?;
    let (server, js, log) = (&nats.server, nats.js.clone(), nats.log.clone());
    let host = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let hands = Hands::new(
        crate::lab::local_server::Target::nats_config(server, crate::auth::Role::Hands)
            .connect("bench-hands")
            .await?,
        HandsConfig {
            host,
            sandbox: SandboxConfig {
                default_image: params.image.clone(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let sandboxes = hands.sandboxes().clone();
    let docker = sandboxes.docker().clone();

    eprintln!("provisioning {} sandboxes each way…", params.provisions);
    let (mut herd_p, mut bare_p, mut bare_none) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..params.provisions {
        let s = SessionId::generate();
        let t = Instant::now();
        sandboxes.ensure(&s, Some(&params.image)).await?;
        herd_p.push(t.elapsed());
        sandboxes.destroy(&s).await;

        bare_p.push(bare_start(&docker, &params.image, None).await?);
        bare_none.push(bare_start(&docker, &params.image, Some("none")).await?);
    }

    eprintln!("{} tool round trips on a warm sandbox…", params.round_trips);
    let task = {
        let h = hands.clone();
        tokio::spawn(async move {
            let _ = h.run(std::future::pending()).await;
        })
    };
    let session = bash_session(&log, &params.image).await?;
    let stream = js.get_stream(subjects::SESSIONS_STREAM).await?;
    let mut results = tool_results(&stream, &session).await?;
    let sandbox = sandboxes.ensure(&session, Some(&params.image)).await?;
    let (mut trips, mut execs) = (Vec::new(), Vec::new());
    let warmup = 5;
    for i in 0..params.round_trips + warmup {
        let tool_use_id = format!("toolu_bench_{i}");
        let elapsed = timed_bash_true(&js, &log, &mut results, &session, &tool_use_id).await?;

        let t = Instant::now();
        sandboxes
            .exec_raw(&sandbox, vec!["true".into()], 1024, Duration::from_secs(10))
            .await?;
        let exec = t.elapsed();
        if i >= warmup {
            trips.push(elapsed);
            execs.push(exec);
        }
    }
    task.abort();
    sandboxes.destroy(&session).await;
    let (provision_herd, provision_bare, provision_bare_no_network) = (
        Summary::of(&herd_p),
        Summary::of(&bare_p),
        Summary::of(&bare_none),
    );
    let (round_trip, exec_bare) = (Summary::of(&trips), Summary::of(&execs));
    Ok(Report {
        environment: Environment::detect(),
        provision_p50_ratio: ratio(provision_herd.p50_us, provision_bare_no_network.p50_us),
        overhead_p50_ms: (round_trip.p50_us - exec_bare.p50_us) / 1000.0,
        overhead_p99_ms: (round_trip.p99_us - exec_bare.p99_us) / 1000.0,
        params,
        provision_herd,
        provision_bare,
        provision_bare_no_network,
        round_trip,
        exec_bare,
    })
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let row = |name: &str, s: &Summary| s.row(name);
        let mut t = format!(
            "herd bench hands — {} CPUs, {}, image {}\n\nprovisioning ({} each, interleaved):\n",
            self.environment.cpus,
            self.environment.nats_server,
            self.params.image,
            self.params.provisions
        );
        t.push_str(&row("bare docker create + start", &self.provision_bare));
        t.push_str(&row(
            "bare docker create + start, --network none",
            &self.provision_bare_no_network,
        ));
        t.push_str(&row(
            "herd sandbox (hardened, labelled, volume)",
            &self.provision_herd,
        ));
        t.push_str(&format!(
            "  ratio herd / bare with --network none (p50): {:.2}x   (target: within 1.2x)\n\n",
            self.provision_p50_ratio
        ));
        t.push_str(&format!(
            "tool round trip, bash true on a warm sandbox ({} runs):\n",
            self.params.round_trips
        ));
        t.push_str(&row("bare docker exec true", &self.exec_bare));
        t.push_str(&row(
            "herd: tool_use appended → tool_result",
            &self.round_trip,
        ));
        t.push_str(&format!(
            "  overhead: p50 {:.2} ms, p99 {:.2} ms   (targets: p50 < 15 ms, p99 < 50 ms)\n",
            self.overhead_p50_ms, self.overhead_p99_ms
        ));
        t
    }
}
