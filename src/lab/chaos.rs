//! The chaos harness: a whole herd deployment on one machine, faults injected one at a time,
//! and the log checked afterwards.
//!
//! It starts a nats-server cluster on loopback (three nodes, R3 streams, `sync_interval:
//! always`; or one node), real `herd brain` and `herd hands` processes, and the mock model
//! server, then keeps a set of sessions busy — each turn the model runs a shell command in the
//! session's sandbox and then answers — while it kills a brain, pauses one (SIGSTOP) for longer
//! than `ack_wait`, kills a hand, kills a sandbox container, kills a nats node or the stream's
//! leader and restarts it. When the faults are over it lets every session finish and verifies:
//! every session completed every turn it was given, every user message the driver saw
//! acknowledged is in the log exactly once, and `herd check --all --settled` finds nothing.
//!
//! The stall of a fault is measured from the events' own timestamps (every process runs on this
//! machine's clock): for each session in the middle of a turn across the fault, the longest gap
//! between two of its events that spans the fault. It is a figure to report, never asserted.
//!
//! This is a test harness, not a library API: errors are `anyhow`, as in `bench`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::mock_model::{MockModel, Reply};
use crate::event::*;
use crate::lab::bench::Summary;
use crate::lab::local_server::{LocalCluster, ServerOptions, Target};
use crate::session::{RetryPolicy, SessionLog, SessionReport, SessionState, Status};

/// A fault the harness can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9` a brain process (a new one is started, as a supervisor would).
    KillBrain,
    /// SIGSTOP a brain for `ack_wait` + 2 s, then SIGCONT: a zombie that wakes up late.
    StopBrain,
    /// `kill -9` a hand process (restarted on the same host name).
    KillHand,
    /// `docker kill` a session's sandbox container.
    KillSandbox,
    /// `kill -9` a nats node that does not lead `HERD_SESSIONS`; restarted after a pause.
    KillNode,
    /// `kill -9` the nats node that leads `HERD_SESSIONS`; restarted after a pause. With one
    /// node, this is the whole server.
    KillLeader,
    /// A planned restart of the `HERD_SESSIONS` leader: lame-duck mode (it hands its
    /// leaderships over before it exits), then restarted after the pause. Not in a default
    /// round: name it with `--faults restart-leader`.
    RestartLeader,
}

impl Fault {
    /// Every fault there is: those of a round first, then the ones a round leaves out.
    pub const EVERY: [Fault; 7] = [
        Fault::KillBrain,
        Fault::StopBrain,
        Fault::KillHand,
        Fault::KillSandbox,
        Fault::KillNode,
        Fault::KillLeader,
        Fault::RestartLeader,
    ];

    /// The faults of a round, in order (`restart-leader` is named with `--faults`).
    pub const ALL: &[Fault] = Self::EVERY.split_at(6).0;

    /// The name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillBrain => "kill-brain",
            Fault::StopBrain => "stop-brain",
            Fault::KillHand => "kill-hand",
            Fault::KillSandbox => "kill-sandbox",
            Fault::KillNode => "kill-node",
            Fault::KillLeader => "kill-leader",
            Fault::RestartLeader => "restart-leader",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::EVERY
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::EVERY.iter().map(|f| f.name()).collect();
                format!(
                    "unknown fault {name:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// nats nodes: 3 (a cluster with R3 streams) or 1.
    pub nodes: usize,
    /// Brain processes.
    pub brains: usize,
    /// Hand processes.
    pub hands: usize,
    /// Sessions kept busy.
    pub sessions: usize,
    /// The faults, injected in this order, one at a time.
    pub faults: Vec<Fault>,
    /// The workers' `ack_wait`.
    pub ack_wait: Duration,
    /// Calm time before each fault.
    pub calm: Duration,
    /// How long a killed nats node stays down.
    pub node_down: Duration,
    /// How long sessions may take to finish after the last fault.
    pub drain: Duration,
    /// The `herd` binary to run workers from.
    pub herd_binary: PathBuf,
    /// The sandbox image.
    pub image: String,
    /// Where worker logs go; a temporary directory when `None`.
    pub log_dir: Option<PathBuf>,
}

impl Plan {
    /// The plan of the CI run: one fault of each kind on a three-node cluster.
    pub fn short(herd_binary: PathBuf) -> Self {
        Self {
            nodes: 3,
            brains: 2,
            hands: 2,
            sessions: 6,
            faults: Fault::ALL.to_vec(),
            ack_wait: Duration::from_secs(3),
            calm: Duration::from_secs(5),
            node_down: Duration::from_secs(3),
            drain: Duration::from_secs(90),
            herd_binary,
            image: "herd-sandbox:busybox".into(),
            log_dir: None,
        }
    }
}

/// Stalls of the sessions that were mid-turn across faults of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct FaultFigures {
    /// The fault.
    pub fault: Fault,
    /// Times it was injected.
    pub injected: usize,
    /// Session-faults where the session was mid-turn across the fault.
    pub affected: usize,
    /// Their stalls.
    pub stall: Summary,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// What.
    pub fault: Fault,
    /// On what (a process, container or node).
    pub target: String,
    /// Seconds since the start of the run.
    pub at_s: f64,
    /// Seconds the fault lasted (a node down, a brain stopped); 0 for a kill.
    pub lasted_s: f64,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// nats nodes.
    pub nodes: usize,
    /// Sessions run.
    pub sessions: usize,
    /// Turns completed (all that were asked for).
    pub turns: usize,
    /// User messages acknowledged by the log, each found exactly once afterwards.
    pub acked_messages: usize,
    /// Tool calls, each answered exactly once.
    pub tool_calls: usize,
    /// Events checked by the checker.
    pub events_checked: u64,
    /// Checker violations (must be 0).
    pub violations: usize,
    /// Every fault, in order.
    pub injected: Vec<Injected>,
    /// Figures per fault kind.
    pub figures: Vec<FaultFigures>,
    /// The five longest stalls, with where they happened.
    pub longest: Vec<Stall>,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Sessions with violations, with their reports.
    pub failed: Vec<SessionReport>,
}

impl Report {
    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "chaos: {} nats node(s), {} sessions, {} turns, {} tool calls, {} faults in {:.0} s\n",
            self.nodes,
            self.sessions,
            self.turns,
            self.tool_calls,
            self.injected.len(),
            self.elapsed_s
        );
        for i in &self.injected {
            out += &format!(
                "  {:>7.1} s  {:<13} {}{}\n",
                i.at_s,
                i.fault.name(),
                i.target,
                if i.lasted_s > 0.0 {
                    format!(" (for {:.1} s)", i.lasted_s)
                } else {
                    String::new()
                }
            );
        }
        out += "stall of sessions mid-turn across a fault (their longest gap between events, charged to the first fault it spans):\n";
        for f in &self.figures {
            out += &format!(
                "  {:<13} x{:<3} {:>3} affected   p50 {:>6.2} s   p99 {:>6.2} s   max {:>6.2} s\n",
                f.fault.name(),
                f.injected,
                f.affected,
                f.stall.p50_us / 1e6,
                f.stall.p99_us / 1e6,
                f.stall.max_us / 1e6
            );
        }
        out += "longest stalls:\n";
        for l in &self.longest {
            out += &format!(
                "  {:>6.2} s  {} (fault #{} at {:.1} s)  {}  between {} and {}\n",
                l.seconds,
                l.fault.name(),
                l.injection + 1,
                self.injected.get(l.injection).map_or(0.0, |i| i.at_s),
                l.session_id,
                l.between.0,
                l.between.1
            );
        }
        out += &format!(
            "checked {} events: {} violation(s); {} acknowledged user messages all present once\n",
            self.events_checked, self.violations, self.acked_messages
        );
        out
    }
}

/// The API key the brains get: it must never appear in their logs.
pub const CANARY_KEY: &str = "sk-chaos-canary-5d1e";

/// The model: each turn, one shell command in the sandbox, then an answer.
fn agent_reply(body: &Value) -> Reply {
    let answered = super::mock_model::answers_a_tool_result(body);
    if answered {
        Reply::text("done")
    } else {
        Reply::tool_use(
            &format!("toolu_{}", uuid::Uuid::now_v7().simple()),
            "bash",
            json!({"command": "echo $$ >> turns.txt; sleep 0.3; wc -l < turns.txt"}),
        )
    }
}

/// The worker processes.
struct Fleet {
    binary: PathBuf,
    urls: String,
    /// The roles' keys; each process connects as its role.
    auth_dir: Option<PathBuf>,
    model_url: String,
    ack_wait: Duration,
    image: String,
    logs: PathBuf,
    brains: Vec<Child>,
    hands: Vec<(String, Child)>,
    spawned: usize,
}

impl Fleet {
    fn log_file(&mut self, name: &str) -> anyhow::Result<std::fs::File> {
        self.spawned += 1;
        let path = self.logs.join(format!("{:03}-{name}.log", self.spawned));
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    }

    fn command(&mut self, name: &str, args: &[&str]) -> anyhow::Result<Command> {
        let log = self.log_file(name)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("HERD_NATS_URL", &self.urls)
            .envs(self.auth_dir.iter().map(|d| ("HERD_AUTH_DIR", d)))
            .env("HERD_LOG", "info")
            .env("HERD_STREAM_REPLICAS", "1")
            .env_remove("HERD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        Ok(cmd)
    }

    fn spawn_brain(&mut self) -> anyhow::Result<()> {
        let ack = self.ack_wait.as_secs().max(1).to_string();
        let mut cmd = self.command(
            "brain",
            &[
                "brain",
                "--ack-wait-secs",
                &ack,
                "--max-deliver",
                "100",
                "--model-idle-timeout-secs",
                "10",
            ],
        )?;
        cmd.env("ANTHROPIC_BASE_URL", &self.model_url)
            .env("ANTHROPIC_API_KEY", CANARY_KEY);
        self.brains
            .push(cmd.spawn().context("starting herd brain")?);
        Ok(())
    }

    fn spawn_hand(&mut self, host: &str) -> anyhow::Result<()> {
        let ack = self.ack_wait.as_secs().max(1).to_string();
        let image = self.image.clone();
        let child = self
            .command(
                &format!("hands-{host}"),
                &[
                    "hands",
                    "--host",
                    host,
                    "--ack-wait-secs",
                    &ack,
                    "--max-deliver",
                    "100",
                    "--image",
                    &image,
                ],
            )?
            .spawn()
            .context("starting herd hands")?;
        self.hands.push((host.to_string(), child));
        Ok(())
    }

    fn all_logs(&self) -> anyhow::Result<String> {
        let mut all = String::new();
        for f in std::fs::read_dir(&self.logs)? {
            all += &std::fs::read_to_string(f?.path())?;
        }
        Ok(all)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in self
            .brains
            .iter_mut()
            .chain(self.hands.iter_mut().map(|(_, c)| c))
        {
            signal(c, "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// A session the driver keeps busy.
struct Driven {
    /// Turns asked for.
    asked: usize,
    /// A message not yet acknowledged (its send failed or is in doubt): sent again, same id.
    unsent: Option<Event>,
    /// Ids of acknowledged user messages.
    acked: Vec<EventId>,
}

/// Sends the next message (or the one in doubt) and wakes the session. Errors leave the message
/// to be sent again with the same id, so an append whose ack was lost lands once.
async fn send(
    log: &SessionLog,
    js: &async_nats::jetstream::Context,
    id: &SessionId,
    d: &mut Driven,
) {
    let Some(event) = d.unsent.clone() else {
        return;
    };
    match log.append_fact(id, &event).await {
        Ok(a) => {
            if crate::bus::wake::publish(js, id, a.last_seq).await.is_ok() {
                d.acked.push(event.id.clone());
                d.unsent = None;
            }
        }
        Err(e) => {
            tracing::info!(session = %id, error = %e, "chaos driver: send failed; will resend")
        }
    }
}

fn end_turns(state_events: &[StoredEvent]) -> usize {
    state_events
        .iter()
        .filter(|e| {
            matches!(&e.event.body, EventBody::SessionStatusIdle(i) if i.stop_reason.kind == "end_turn")
        })
        .count()
}

/// Keeps sessions busy until `stop` is set: a session that finished its last turn gets a new
/// message.
async fn drive(
    log: SessionLog,
    js: async_nats::jetstream::Context,
    sessions: Vec<SessionId>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> BTreeMap<SessionId, Driven> {
    let mut driven: BTreeMap<SessionId, Driven> = sessions
        .into_iter()
        .map(|id| {
            (
                id,
                Driven {
                    asked: 1,
                    unsent: Some(Event::new(UserMessage {
                        content: vec![ContentBlock::text("turn 1")],
                    })),
                    acked: vec![],
                },
            )
        })
        .collect();
    loop {
        let stopping = *stop.borrow();
        let mut settled = true;
        for (id, d) in driven.iter_mut() {
            if d.unsent.is_some() {
                send(&log, &js, id, d).await;
                settled &= d.unsent.is_none();
                continue;
            }
            let Ok(records) = log.read_from(id, 1).await else {
                settled = false;
                continue;
            };
            let events: Vec<StoredEvent> = records.into_iter().filter_map(Result::ok).collect();
            let idle = SessionState::fold(id.clone(), &events).status == Status::Idle;
            let done = idle && end_turns(&events) >= d.asked;
            settled &= done;
            if done && !stopping {
                d.asked += 1;
                d.unsent = Some(Event::new(UserMessage {
                    content: vec![ContentBlock::text(format!("turn {}", d.asked))],
                }));
                send(&log, &js, id, d).await;
            }
        }
        if stopping && settled {
            return driven;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The node leading a stream, by name.
async fn leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok()?.cluster.as_ref()?.leader.clone()
}

/// Waits until every herd stream has a leader and all its replicas are current, so the next
/// node fault never takes away a second copy of anything.
async fn wait_healthy(js: &async_nats::jetstream::Context, nodes: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let streams = [
        "HERD_SESSIONS",
        "HERD_WAKE",
        "HERD_TOOLS",
        "KV_herd-leases",
        "KV_herd-hands",
    ];
    while Instant::now() < deadline {
        let mut healthy = true;
        for name in streams {
            let ok = async {
                let mut s = js.get_stream(name).await.ok()?;
                let info = s.info().await.ok()?;
                let c = info.cluster.as_ref()?;
                c.leader.as_ref()?;
                let current = c
                    .replicas
                    .iter()
                    .filter(|r| r.current && !r.offline)
                    .count();
                (current + 1 >= nodes.min(3)).then_some(())
            }
            .await;
            healthy &= ok.is_some();
        }
        if healthy {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// Applies herd's streams with `replicas` copies, waiting up to 30 s for a new cluster's meta
/// leader (elected a moment after the nodes start).
pub async fn apply_when_ready(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match crate::bus::streams::apply(js, replicas).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "chaos: streams not applied yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e).context("applying herd's streams to the cluster"),
        }
    }
}

/// Runs the plan and checks the outcome; fails when anything was lost, duplicated or left
/// unfinished.
pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let started = Instant::now();
    let wall_start = OffsetDateTime::now_utc();
    let mut cluster = LocalCluster::start(plan.nodes, ServerOptions::default())
        .context("starting the nats cluster")?;
    let urls = cluster.urls();
    let client = cluster
        .nats_config(crate::auth::Role::Operator)
        .connect("herd-chaos")
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    apply_when_ready(&js, plan.nodes.min(3)).await?;
    let log = SessionLog::open(client.clone())
        .await?
        .with_retry(RetryPolicy {
            max_elapsed: Duration::from_secs(20),
            ..Default::default()
        });

    let model = MockModel::start().await?;
    model.set_delay(Duration::from_millis(100));
    model.set_responder(agent_reply);

    // A temporary log directory is removed after a good run and kept after a failed one.
    let mut tmp_logs: Option<tempfile::TempDir> = None;
    let logs = match &plan.log_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let dir = tempfile::Builder::new().prefix("herd-chaos-").tempdir()?;
            let path = dir.path().to_path_buf();
            tmp_logs = Some(dir);
            path
        }
    };
    let run_tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut fleet = Fleet {
        binary: plan.herd_binary.clone(),
        urls: urls.clone(),
        auth_dir: Target::auth_dir(&cluster),
        model_url: model.anthropic_url(),
        ack_wait: plan.ack_wait,
        image: plan.image.clone(),
        logs,
        brains: vec![],
        hands: vec![],
        spawned: 0,
    };
    let hosts: Vec<String> = (0..plan.hands)
        .map(|i| format!("chaos{run_tag}h{i}"))
        .collect();
    for _ in 0..plan.brains {
        fleet.spawn_brain()?;
    }
    for h in &hosts {
        fleet.spawn_hand(h)?;
    }

    // Sessions: one bash tool, the sandbox image, the mock model.
    let mut sessions = Vec::new();
    for _ in 0..plan.sessions {
        let id = SessionId::generate();
        let mut agent = AgentConfig::new("claude-chaos");
        agent.tools = vec![ToolConfig::builtin("bash")];
        let created = Event::new(SessionCreated {
            environment: EnvironmentConfig {
                image: Some(plan.image.clone()),
                allowed_hosts: vec![],
                networking: None,
            },
            title: Some("chaos".into()),
            ..SessionCreated::new(agent)
        });
        log.create(&id, &created).await?;
        sessions.push(id);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(drive(log.clone(), js.clone(), sessions.clone(), stop_rx));

    let docker = bollard::Docker::connect_with_local_defaults()?;
    let mut injected: Vec<(Injected, OffsetDateTime, OffsetDateTime)> = Vec::new();
    for fault in &plan.faults {
        tokio::time::sleep(plan.calm).await;
        if plan.nodes > 1 && !wait_healthy(&js, plan.nodes, Duration::from_secs(60)).await {
            drop(fleet);
            remove_sandboxes(&docker, &hosts).await;
            let _ = tmp_logs.map(tempfile::TempDir::keep);
            bail!("the cluster did not become healthy before {}", fault.name());
        }
        let at = OffsetDateTime::now_utc();
        let t0 = Instant::now();
        let target = match fault {
            Fault::KillBrain => {
                let i = fastrand::usize(..fleet.brains.len());
                let mut c = fleet.brains.remove(i);
                let pid = c.id();
                let _ = c.kill();
                let _ = c.wait();
                fleet.spawn_brain()?;
                format!("brain pid {pid}")
            }
            Fault::StopBrain => {
                let i = fastrand::usize(..fleet.brains.len());
                let pid = fleet.brains[i].id();
                signal(&fleet.brains[i], "STOP");
                tokio::time::sleep(plan.ack_wait + Duration::from_secs(2)).await;
                signal(&fleet.brains[i], "CONT");
                format!("brain pid {pid}")
            }
            Fault::KillHand => {
                let i = fastrand::usize(..fleet.hands.len());
                let (host, mut c) = fleet.hands.remove(i);
                let _ = c.kill();
                let _ = c.wait();
                fleet.spawn_hand(&host)?;
                format!("hand {host}")
            }
            Fault::KillSandbox => {
                let containers = herd_containers(&docker, &hosts).await?;
                if containers.is_empty() {
                    "no sandbox running".into()
                } else {
                    let (id, name) = &containers[fastrand::usize(..containers.len())];
                    let _ = docker
                        .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
                        .await;
                    format!("container {name}")
                }
            }
            Fault::KillNode | Fault::KillLeader | Fault::RestartLeader => {
                let lead = leader(&js, "HERD_SESSIONS").await;
                let i = match (fault, &lead) {
                    (Fault::KillLeader | Fault::RestartLeader, Some(name)) => {
                        cluster.index_of(name).unwrap_or(0)
                    }
                    (Fault::KillNode, Some(name)) if cluster.len() > 1 => {
                        let l = cluster.index_of(name).unwrap_or(0);
                        (l + 1 + fastrand::usize(..cluster.len() - 1)) % cluster.len()
                    }
                    _ => fastrand::usize(..cluster.len()),
                };
                let node = cluster.node(i);
                let name = node.name();
                if *fault == Fault::RestartLeader {
                    node.lame_duck(Duration::from_secs(40));
                } else {
                    node.kill();
                }
                tokio::time::sleep(plan.node_down).await;
                node.restart()
                    .with_context(|| format!("restarting nats node {name}"))?;
                let role = if lead.as_deref() == Some(name.as_str()) {
                    "leader"
                } else {
                    "follower"
                };
                format!("nats node {name} ({role})")
            }
        };
        let lasted = t0.elapsed();
        tracing::info!(fault = fault.name(), %target, "chaos: injected");
        injected.push((
            Injected {
                fault: *fault,
                target,
                at_s: seconds((at - wall_start).unsigned_abs()),
                lasted_s: if lasted > Duration::from_millis(500) {
                    seconds(lasted)
                } else {
                    0.0
                },
            },
            at,
            OffsetDateTime::now_utc(),
        ));
    }
    tokio::time::sleep(plan.calm).await;
    let _ = stop_tx.send(true);
    let driven = match tokio::time::timeout(plan.drain, driver).await {
        Ok(d) => d?,
        Err(_) => {
            let mut tails = String::new();
            for id in &sessions {
                let events = log.read_from(id, 1).await.unwrap_or_default();
                let tail: Vec<String> = events
                    .iter()
                    .rev()
                    .take(12)
                    .rev()
                    .map(|r| match r {
                        Ok(e) => match &e.event.body {
                            EventBody::SessionError(err) => {
                                format!("{}:session.error({})", e.seq, err.error.message)
                            }
                            EventBody::SessionStatusIdle(i) => {
                                format!("{}:idle({})", e.seq, i.stop_reason.kind)
                            }
                            _ => format!("{}:{}", e.seq, e.event.type_name()),
                        },
                        Err(b) => format!("{}:invalid", b.seq),
                    })
                    .collect();
                tails += &format!("\n  {id}: {}", tail.join(" "));
            }
            let logs = fleet.logs.display().to_string();
            drop(fleet);
            remove_sandboxes(&docker, &hosts).await;
            let _ = tmp_logs.map(tempfile::TempDir::keep);
            bail!(
                "sessions did not finish within {:?} of the last fault (worker logs in {}):{tails}",
                plan.drain,
                logs
            );
        }
    };

    // The oracle.
    let reports = log.check_all(true).await?;
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let events_checked: u64 = reports.iter().map(|r| r.events).sum();
    let mut problems = Vec::new();
    let mut turns = 0;
    let mut tool_calls = 0;
    let mut acked_messages = 0;
    let windows: Vec<(Fault, OffsetDateTime, OffsetDateTime)> = injected
        .iter()
        .map(|(i, at, until)| (i.fault, *at, *until))
        .collect();
    let mut all_stalls: Vec<Stall> = Vec::new();
    for (id, d) in &driven {
        let events: Vec<StoredEvent> = log
            .read_from(id, 1)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let ended = end_turns(&events);
        if ended != d.asked {
            problems.push(format!("{id}: {ended} turns ended, {} asked", d.asked));
        }
        turns += ended;
        tool_calls += events
            .iter()
            .filter(|e| e.event.type_name() == "agent.tool_use")
            .count();
        for acked in &d.acked {
            let n = events.iter().filter(|e| &e.event.id == acked).count();
            if n != 1 {
                problems.push(format!(
                    "{id}: acknowledged user message {acked} is in the log {n} times"
                ));
            }
        }
        acked_messages += d.acked.len();
        all_stalls.extend(stalls(id, &events, &windows));
    }
    for r in reports.iter().filter(|r| !r.ok()) {
        for v in &r.violations {
            problems.push(format!(
                "{}: seq {} {}: {}",
                r.session_id,
                v.seq,
                v.rule.describe(),
                v.detail
            ));
        }
    }
    let logs_text = fleet.all_logs()?;
    let log_dir = fleet.logs.clone();
    if logs_text.contains(CANARY_KEY) {
        problems.push("the model API key appears in a worker's log".into());
    }
    drop(fleet);
    remove_sandboxes(&docker, &hosts).await;

    let mut figures = Vec::new();
    for fault in Fault::EVERY {
        let n = injected.iter().filter(|(i, _, _)| i.fault == fault).count();
        if n == 0 {
            continue;
        }
        let samples: Vec<Duration> = all_stalls
            .iter()
            .filter(|s| s.fault == fault)
            .map(|s| Duration::from_secs_f64(s.seconds))
            .collect();
        figures.push(FaultFigures {
            fault,
            injected: n,
            affected: samples.len(),
            stall: Summary::of(&samples),
        });
    }
    let report = Report {
        nodes: plan.nodes,
        sessions: driven.len(),
        turns,
        acked_messages,
        tool_calls,
        events_checked,
        violations,
        injected: injected.into_iter().map(|(i, _, _)| i).collect(),
        figures,
        longest: {
            all_stalls.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
            all_stalls.truncate(5);
            all_stalls
        },
        elapsed_s: seconds(started.elapsed()),
        failed: reports.into_iter().filter(|r| !r.ok()).collect(),
    };
    if !problems.is_empty() {
        let _ = tmp_logs.map(tempfile::TempDir::keep);
        bail!(
            "{}\n{} problem(s) (worker logs kept in {}):\n  {}",
            report.table(),
            problems.len(),
            log_dir.display(),
            problems.join("\n  ")
        );
    }
    Ok(report)
}

/// A session's longest wait on herd around one fault.
#[derive(Debug, Clone, Serialize)]
pub struct Stall {
    /// The fault it is charged to.
    pub fault: Fault,
    /// Which injection of it (index into `Report::injected`).
    pub injection: usize,
    /// The session.
    pub session_id: SessionId,
    /// The gap, seconds.
    pub seconds: f64,
    /// The events around the gap: `seq:type` before and after.
    pub between: (String, String),
}

/// Every gap between two consecutive events of a session during which it was mid-turn (waiting
/// on herd, not on its user) and which overlaps a fault window, charged to the first fault it
/// overlaps, so one long gap counts once; per (fault, session) the longest.
fn stalls(
    session: &SessionId,
    events: &[StoredEvent],
    windows: &[(Fault, OffsetDateTime, OffsetDateTime)],
) -> Vec<Stall> {
    let mut worst: BTreeMap<usize, Stall> = BTreeMap::new();
    let mut running = false;
    for pair in events.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        match &a.event.body {
            EventBody::SessionStatusRunning(_) | EventBody::UserMessage(_) => running = true,
            EventBody::SessionStatusIdle(_) => running = false,
            _ => {}
        }
        let (start, end) = (a.event.processed_at, b.event.processed_at);
        if !running {
            continue;
        }
        let Some(i) = windows
            .iter()
            .position(|(_, at, until)| start <= *until && end >= *at)
        else {
            continue;
        };
        let gap = (end - start).unsigned_abs().as_secs_f64();
        if worst.get(&i).is_none_or(|w| w.seconds < gap) {
            worst.insert(
                i,
                Stall {
                    fault: windows[i].0,
                    injection: i,
                    session_id: session.clone(),
                    seconds: (gap * 1000.0).round() / 1000.0,
                    between: (
                        format!("{}:{}", a.seq, a.event.type_name()),
                        format!("{}:{}", b.seq, b.event.type_name()),
                    ),
                },
            );
        }
    }
    worst.into_values().collect()
}

async fn herd_containers(
    docker: &bollard::Docker,
    hosts: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec!["herd.managed=true".to_string()],
    )]);
    let list = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    Ok(list
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get("herd.host"))
                .is_some_and(|h| hosts.contains(h))
        })
        .filter_map(|c| {
            let name = c
                .names
                .as_ref()?
                .first()?
                .trim_start_matches('/')
                .to_string();
            Some((c.id?, name))
        })
        .collect())
}

/// Removes the run's sandboxes and their workspace volumes (those of sandboxes lost during the
/// run too: a hand keeps a lost sandbox's volume for the next one).
async fn remove_sandboxes(docker: &bollard::Docker, hosts: &[String]) {
    for host in hosts {
        if let Ok(s) = crate::hands::sandbox::Sandboxes::connect(
            host,
            crate::hands::sandbox::SandboxConfig::default(),
        )
        .await
            && let Ok(list) = s.list().await
        {
            for (session, _) in list {
                if let Ok(id) = SessionId::parse(session) {
                    s.destroy(&id).await;
                }
            }
        }
        let filters = std::collections::HashMap::from([(
            "name".to_string(),
            vec![format!("herd-ws-{host}-")],
        )]);
        let Ok(volumes) = docker
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
        else {
            continue;
        };
        for v in volumes.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_by_name() {
        for f in Fault::EVERY {
            assert_eq!(Fault::parse(f.name()), Ok(f));
        }
        assert!(
            Fault::parse("kill-everything")
                .unwrap_err()
                .contains("kill-brain")
        );
    }
}
