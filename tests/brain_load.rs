//! Brains under load and under SIGKILL: real `herd brain` processes, a real nats-server, the
//! mock model server.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use herd::brain::provider::{ProviderSettings, Timeouts};
use herd::brain::{Brain, BrainConfig};
use herd::config::Secret;
use herd::event::*;
use herd::lab::mock_model::{MockModel, Reply};
use herd::session::SessionLog;
use serde_json::{Value, json};

/// Answers like an agent that runs one command, then reports.
fn tool_then_text(body: &Value) -> Reply {
    if herd::lab::mock_model::answers_a_tool_result(body) {
        Reply::text("done")
    } else {
        Reply::tool_use(
            &format!("toolu_{}", uuid::Uuid::now_v7().simple()),
            "bash",
            json!({"command": "true"}),
        )
    }
}

async fn create(log: &SessionLog, tools: Vec<ToolConfig>) -> SessionId {
    let id = SessionId::generate();
    let mut agent = AgentConfig::new("claude-load");
    agent.tools = tools;
    let e = Event::new(SessionCreated::new(agent));
    log.create(&id, &e).await.unwrap();
    id
}

async fn send(log: &SessionLog, js: &async_nats::jetstream::Context, id: &SessionId, text: &str) {
    let a = log.append_fact(id, &user(text)).await.unwrap();
    herd::bus::wake::publish(js, id, a.last_seq).await.unwrap();
}

async fn valid_events(log: &SessionLog, id: &SessionId) -> Vec<StoredEvent> {
    log.read_from(id, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.expect("valid event"))
        .collect()
}

fn count(events: &[StoredEvent], t: &str) -> usize {
    events.iter().filter(|e| e.event.type_name() == t).count()
}

fn end_turns(events: &[StoredEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.event.body, EventBody::SessionStatusIdle(i) if i.stop_reason.kind == "end_turn"))
        .count()
}

/// Checks one session's log: unique ids, balanced spans (each start closed by the next end),
/// and the turn's events each once per answered message.
fn check_log(id: &SessionId, events: &[StoredEvent], turns: usize) {
    let summary: Vec<String> = events
        .iter()
        .map(|e| match &e.event.body {
            EventBody::AgentMessage(m) => format!(
                "{}:{}={:?}",
                e.seq,
                e.event.type_name(),
                content_text(&m.content)
            ),
            _ => format!("{}:{}", e.seq, e.event.type_name()),
        })
        .collect();
    eprintln!("{id}: {}", summary.join(" "));
    let ids: HashSet<&EventId> = events.iter().map(|e| &e.event.id).collect();
    assert_eq!(ids.len(), events.len(), "{id}: duplicate event ids");
    let mut open = false;
    for e in events {
        match e.event.type_name() {
            "span.model_request_start" => {
                assert!(!open, "{id}: a span started inside another");
                open = true;
            }
            "span.model_request_end" => {
                assert!(open, "{id}: a span ended that never started");
                open = false;
            }
            _ => {}
        }
    }
    assert!(!open, "{id}: a span was left open");
    assert_eq!(end_turns(events), turns, "{id}: {turns} turns ended");
    assert_eq!(
        count(events, "agent.message"),
        turns,
        "{id}: one answer per turn"
    );
    assert_eq!(
        count(events, "session.status_idle"),
        turns,
        "{id}: one idle per turn"
    );
}

fn fake_hand_config() -> async_nats::jetstream::consumer::pull::Config {
    async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("fake-hand".into()),
        filter_subject: "herd.tools.>".into(),
        ..Default::default()
    }
}

/// Three brains, fifty concurrent sessions that each call a tool (answered by a stand-in hand)
/// and then answer: every session completes, each log is a valid sequence of steps, no step
/// is appended twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brains_fifty_sessions() {
    let t = TestNats::start().await;
    let model = MockModel::start().await.unwrap();
    model.set_delay(Duration::from_millis(20));
    model.set_responder(tool_then_text);
    let mut brains = Vec::new();
    for i in 0..3 {
        let client = connect_as(&t.server, herd::auth::Role::Brain).await;
        let cfg = BrainConfig {
            name: format!("load-brain-{i}"),
            ack_wait: Duration::from_secs(5),
            providers: ProviderSettings {
                anthropic_api_key: Some(Secret::new("k")),
                anthropic_base_url: Some(model.anthropic_url()),
                timeouts: Timeouts {
                    idle: Duration::from_secs(5),
                    total: Duration::from_secs(20),
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let brain = Brain::new(client, cfg).await.unwrap();
        brains.push(tokio::spawn(async move {
            brain.run(std::future::pending()).await.unwrap()
        }));
    }
    let js = async_nats::jetstream::new(t.client.clone());
    let hand = {
        let consumer = js
            .get_stream("HERD_TOOLS")
            .await
            .unwrap()
            .create_consumer(fake_hand_config())
            .await
            .unwrap();
        let (log, js) = (t.second_log().await, js.clone());
        tokio::spawn(async move {
            let mut msgs = consumer.messages().await.unwrap();
            while let Some(Ok(m)) = msgs.next().await {
                let job: herd::bus::jobs::ToolJob = serde_json::from_slice(&m.payload).unwrap();
                // A stand-in for tool calls only: a turn's workspace snapshot has no result.
                if job.name == herd::bus::workspace_jobs::JOB {
                    m.ack().await.unwrap();
                    continue;
                }
                let r = Event::with_id(
                    herd::bus::jobs::result_event_id(&job.session_id, &job.tool_use_id).unwrap(),
                    AgentToolResult {
                        tool_use_id: job.tool_use_id.clone(),
                        content: vec![ContentBlock::text("ok")],
                        is_error: false,
                        output_ref: None,
                    },
                );
                let a = log.append_fact(&job.session_id, &r).await.unwrap();
                herd::bus::wake::publish(&js, &job.session_id, a.last_seq)
                    .await
                    .unwrap();
                m.ack().await.unwrap();
            }
        })
    };
    let bash = ToolConfig::builtin("bash");
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(create(&t.log, vec![bash.clone()]).await);
    }
    let started = Instant::now();
    for id in &sessions {
        send(&t.log, &js, id, "run true").await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &sessions {
        loop {
            let events = valid_events(&t.log, id).await;
            if end_turns(&events) == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not finish: {:?}",
                events
                    .iter()
                    .map(|e| e.event.type_name())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &sessions {
        let events = valid_events(&t.log, id).await;
        check_log(id, &events, 1);
        assert_eq!(count(&events, "agent.tool_use"), 1, "{id}");
        assert_eq!(count(&events, "agent.tool_result"), 1, "{id}");
    }
    eprintln!(
        "50 sessions with a tool call each on 3 brains: {elapsed:?}; {} model requests",
        model.count()
    );
    hand.abort();
    for b in brains {
        b.abort();
    }
}

struct BrainProcs {
    env: Vec<(&'static str, String)>,
    model_url: String,
    procs: Vec<Child>,
    logs: tempfile::TempDir,
}

/// The key the brains get; it must never appear in what they print.
const CRASH_KEY: &str = "sk-crash-test-canary-77c1";

impl BrainProcs {
    fn spawn(&mut self) {
        let log = std::fs::File::create(
            self.logs
                .path()
                .join(format!("brain-{}.log", uuid::Uuid::new_v4().simple())),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herd"))
            .args([
                "brain",
                "--ack-wait-secs",
                "2",
                "--max-deliver",
                "50",
                "--model-idle-timeout-secs",
                "5",
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("ANTHROPIC_BASE_URL", &self.model_url)
            .env("ANTHROPIC_API_KEY", CRASH_KEY)
            .env(
                "HERD_LOG",
                std::env::var("BRAIN_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.procs.push(child);
    }

    fn kill_one(&mut self) {
        let i = fastrand::usize(..self.procs.len());
        let mut c = self.procs.remove(i);
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
    }
}

impl Drop for BrainProcs {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `herd brain` processes are killed with SIGKILL at random moments (taking a wake, replaying,
/// waiting on the model's stream, between appends) and replaced, 25 times, while twelve sessions
/// are kept busy: each gets a new message as soon as it finishes a turn, until the last kill.
/// Every session completes every turn; no event is lost or duplicated; the model is asked at
/// most once more per crash than the answers needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brains_killed_at_random_points_lose_nothing() {
    let t = TestNats::start().await;
    let model = MockModel::start().await.unwrap();
    model.set_delay(Duration::from_millis(300));
    let js = async_nats::jetstream::new(t.client.clone());
    let mut brains = BrainProcs {
        env: herd_env(&t.server),
        model_url: model.anthropic_url(),
        procs: vec![],
        logs: tempfile::tempdir().unwrap(),
    };
    brains.spawn();
    brains.spawn();
    let mut sent: BTreeMap<SessionId, usize> = BTreeMap::new();
    for _ in 0..12 {
        let id = create(&t.log, vec![]).await;
        send(&t.log, &js, &id, "question 1").await;
        sent.insert(id, 1);
    }
    let target_kills = 25;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
        if kills < target_kills {
            brains.kill_one();
            brains.spawn();
            kills += 1;
        }
        let mut done = 0;
        for (id, n) in sent.iter_mut() {
            let turns = end_turns(&valid_events(&t.log, id).await);
            if turns == *n {
                if kills < target_kills {
                    *n += 1;
                    send(&t.log, &js, id, &format!("question {n}")).await;
                } else {
                    done += 1;
                }
            }
        }
        if done == sent.len() {
            break;
        }
        if Instant::now() > deadline {
            for id in sent.keys() {
                let events = valid_events(&t.log, id).await;
                let tail: Vec<String> = events
                    .iter()
                    .rev()
                    .take(8)
                    .rev()
                    .map(|e| format!("{}:{}", e.seq, e.event.type_name()))
                    .collect();
                eprintln!("{id}: {} events, tail {}", events.len(), tail.join(" "));
            }
            let mut c = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    "brain",
                    "HERD_WAKE",
                )
                .await
                .unwrap();
            let info = c.info().await.unwrap();
            eprintln!(
                "brain consumer: pending {} ack_pending {} redelivered {} waiting {}",
                info.num_pending, info.num_ack_pending, info.num_redelivered, info.num_waiting
            );
            panic!(
                "sessions did not complete: {done}/{} after {kills} kills",
                sent.len()
            );
        }
    }
    let (mut answers, mut starts, mut turns, mut worst) = (0, 0, 0, 0);
    for (id, n) in &sent {
        let events = valid_events(&t.log, id).await;
        check_log(id, &events, *n);
        assert_eq!(count(&events, "user.message"), *n);
        turns += n;
        starts += count(&events, "span.model_request_start");
        let ok = events
            .iter()
            .filter(|e| matches!(&e.event.body, EventBody::SpanModelRequestEnd(s) if !s.is_error))
            .count();
        let interrupted = count(&events, "span.model_request_end") - ok;
        // Each crash interrupts at most the one request in flight for this session.
        assert!(
            interrupted <= kills,
            "{id}: {interrupted} interrupted requests > {kills} crashes"
        );
        worst = worst.max(interrupted);
        answers += ok;
    }
    // And the log checker agrees: every session sound and settled.
    for r in t.log.check_all(true).await.unwrap() {
        assert!(r.ok(), "{}: {:?}", r.session_id, r.violations);
    }
    let requests = model.count();
    eprintln!(
        "{kills} brain kills over {turns} turns: {requests} model requests for {answers} answers; {} repeated, at most {worst} in one session",
        requests - answers
    );
    // Every model request is recorded in a log: none ran outside a span.
    assert!(
        requests <= starts,
        "{requests} requests > {starts} recorded request spans"
    );
    // The key reached the model server, and never the brains' logs (at debug level) or events.
    assert!(model.received().iter().all(|r| {
        r.headers
            .iter()
            .any(|(k, v)| k == "x-api-key" && v == CRASH_KEY)
    }));
    let mut log_bytes = 0;
    for f in std::fs::read_dir(brains.logs.path()).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        log_bytes += text.len();
        assert!(
            !text.contains(CRASH_KEY),
            "the API key leaked into a brain's log"
        );
    }
    for id in sent.keys() {
        for e in valid_events(&t.log, id).await {
            assert!(!e.event.to_json().to_string().contains(CRASH_KEY));
        }
    }
    eprintln!("{log_bytes} bytes of brain logs checked for the key");
}
