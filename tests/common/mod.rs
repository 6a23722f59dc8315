//! Shared test helpers: a real nats-server per test (random port, its own store, killed on drop)
//! with herd's streams applied. Never a mock of NATS.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use herd::auth::Role;
use herd::event::*;
use herd::lab::local_server::{LocalServer, ServerOptions, Target};
use herd::session::{RetryPolicy, SessionLog};
use serde_json::json;

/// A running server and a log opened on it.
pub struct TestNats {
    pub server: LocalServer,
    pub client: async_nats::Client,
    pub log: SessionLog,
}

/// Tracing for tests, shown with `TEST_LOG=debug`.
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl TestNats {
    pub async fn start() -> Self {
        init_tracing();
        let server = LocalServer::start(ServerOptions::default()).expect("start nats-server");
        let client = connect(&server).await;
        herd::bus::streams::apply(&async_nats::jetstream::new(client.clone()), 1)
            .await
            .expect("apply streams");
        let log = open_log(client.clone()).await;
        Self {
            server,
            client,
            log,
        }
    }

    /// Another connection, as another process would have.
    pub async fn second_log(&self) -> SessionLog {
        open_log(connect(&self.server).await).await
    }
}

/// A connection as the operator (tests set up and inspect what they test, as an operator
/// would), with the server's role keys: every test server runs herd's auth configuration.
pub async fn connect(target: &impl Target) -> async_nats::Client {
    connect_as(target, Role::Operator).await
}

/// A connection as `role`, with its permissions: the workers a test starts run as their roles.
pub async fn connect_as(target: &impl Target, role: Role) -> async_nats::Client {
    herd::config::NatsConfig {
        request_timeout_ms: 1_000,
        ..target.nats_config(role)
    }
    .connect("herd-test")
    .await
    .expect("connect")
}

/// The environment a `herd` process needs to reach `target` (its URLs and role keys).
pub fn herd_env(target: &impl Target) -> Vec<(&'static str, String)> {
    let mut env = vec![("HERD_NATS_URL", target.urls())];
    if let Some(dir) = target.auth_dir() {
        env.push(("HERD_AUTH_DIR", dir.display().to_string()));
    }
    env
}

/// A log whose requests time out after 1 s, so tests that kill the server move on quickly.
pub async fn open_log(client: async_nats::Client) -> SessionLog {
    SessionLog::open(client)
        .await
        .expect("open log")
        .with_request_timeout(Duration::from_secs(1))
        .with_retry(RetryPolicy {
            max_elapsed: Duration::from_secs(60),
            ..Default::default()
        })
}

pub fn agent() -> AgentConfig {
    AgentConfig {
        model: "test-model".into(),
        provider: Some("scripted".into()),
        name: Some("tester".into()),
        system: Some("be brief".into()),
        tools: vec![ToolConfig {
            name: "bash".into(),
            kind: "builtin".into(),
            description: None,
            input_schema: None,
            permission_policy: PermissionPolicy::AlwaysAsk,
            mcp_server_name: None,
            default_config: None,
            configs: Vec::new(),
        }],
        max_tokens: Some(1024),
        script: vec![],
        context_budget_tokens: None,
        mcp_servers: vec![],
    }
}

pub fn created() -> Event {
    Event::new(SessionCreated {
        environment: EnvironmentConfig {
            image: Some("herd-sandbox:busybox".into()),
            allowed_hosts: vec![],
            networking: None,
        },
        title: Some("a test".into()),
        metadata: BTreeMap::from([("k".to_string(), "v".to_string())]),
        ..SessionCreated::new(agent())
    })
}

pub fn text(s: &str) -> Vec<ContentBlock> {
    vec![ContentBlock::text(s)]
}

pub fn user(s: &str) -> Event {
    Event::new(UserMessage { content: text(s) })
}

pub fn agent_msg(s: &str) -> Event {
    Event::new(AgentMessage { content: text(s) })
}

/// A new session with its `session.created` event; returns its id and last sequence.
pub async fn new_session(log: &SessionLog) -> (SessionId, u64) {
    let id = SessionId::generate();
    let a = log.create(&id, &created()).await.expect("create session");
    (id, a.last_seq)
}

/// A budget of `cents` with the built-in prices of claude-sonnet-4-5 recorded in it, as the
/// front door records them.
pub fn priced_budget(cents: u64) -> Budget {
    let mut b = Budget::usd_cents(cents);
    PriceTable::default()
        .price_new_budget("claude-sonnet-4-5", &mut b)
        .unwrap();
    b
}

/// One event of every type herd knows, with every field filled.
pub fn one_of_each() -> Vec<Event> {
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 20,
        cache_creation_input_tokens: 3,
        cache_read_input_tokens: 4,
    };
    let thinking = ContentBlock::from_object(
        json!({"type": "thinking", "thinking": "hmm", "signature": "c2ln"})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    let bodies: Vec<EventBody> = vec![
        created().body,
        UserMessage {
            content: text("hi"),
        }
        .into(),
        UserInterrupt {}.into(),
        UserToolConfirmation {
            tool_use_id: "toolu_1".into(),
            result: "deny".into(),
            deny_message: Some("no".into()),
        }
        .into(),
        UserCustomToolResult {
            custom_tool_use_id: "toolu_2".into(),
            content: text("42"),
            is_error: true,
        }
        .into(),
        SystemMessage {
            content: text("ctx"),
        }
        .into(),
        AgentMessage {
            content: text("hello"),
        }
        .into(),
        AgentThinking {
            content: vec![thinking],
        }
        .into(),
        AgentToolUse {
            tool_use_id: "toolu_1".into(),
            name: "bash".into(),
            input: json!({"command": "ls -la", "n": [1, 2.5, null, true]}),
            evaluated_permission: Some(EvaluatedPermission::Ask),
        }
        .into(),
        AgentToolResult {
            tool_use_id: "toolu_1".into(),
            content: text("total 0"),
            is_error: false,
            output_ref: None,
        }
        .into(),
        AgentCustomToolUse {
            tool_use_id: "toolu_2".into(),
            name: "lookup".into(),
            input: json!({"q": "x"}),
        }
        .into(),
        AgentMcpToolUse {
            tool_use_id: "mcptoolu_1".into(),
            mcp_server_name: "github".into(),
            name: "list_issues".into(),
            input: json!({}),
            evaluated_permission: Some(EvaluatedPermission::Allow),
        }
        .into(),
        AgentMcpToolResult {
            mcp_tool_use_id: "mcptoolu_1".into(),
            content: text("[]"),
            is_error: false,
        }
        .into(),
        AgentThreadContextCompacted {
            summary: "earlier: greetings".into(),
            compacted_up_to: 7,
        }
        .into(),
        SessionStatusRunning {}.into(),
        SessionStatusIdle {
            stop_reason: StopReason {
                kind: "requires_action".into(),
                event_ids: vec!["sevt_x".into()],
            },
        }
        .into(),
        SessionStatusRescheduled {
            reason: Some("overloaded".into()),
        }
        .into(),
        SessionStatusTerminated {
            reason: "done".into(),
        }
        .into(),
        SessionError {
            error: ErrorInfo {
                kind: "model_overloaded_error".into(),
                message: "529".into(),
            },
            retry_status: Some(RetryStatus {
                kind: "retrying".into(),
                attempt: Some(2),
                retry_in_ms: Some(1500),
            }),
        }
        .into(),
        SessionUsage {
            usage,
            list_cost: Some(Money::usd_cents(12)),
            budget: Some(priced_budget(500)),
        }
        .into(),
        SessionUpdated {
            title: Some("new".into()),
            metadata: Some(BTreeMap::from([("a".to_string(), "b".to_string())])),
            limits: Some(SessionLimits {
                model_requests: Some(10),
                wall_seconds_per_turn: Some(600),
                budget: Some(priced_budget(500)),
                ..Default::default()
            }),
        }
        .into(),
        SessionLimitReached {
            limit: "model_requests".into(),
            max: 10,
            used: 10,
        }
        .into(),
        SpanModelRequestStart {
            model: Some("m".into()),
        }
        .into(),
        SpanModelRequestEnd {
            model_request_start_id: Some("sevt_y".into()),
            model_usage: usage,
            is_error: false,
        }
        .into(),
        SandboxProvisioned {
            host: "h1".into(),
            image: "herd-sandbox:debian".into(),
            container: "abc".into(),
            volume: None,
            from_pool: false,
        }
        .into(),
        SandboxLost {
            host: "h1".into(),
            reason: "it ran out of memory".into(),
        }
        .into(),
        McpToolsListed {
            request_id: "mcplist_3_docs".into(),
            mcp_server_name: "docs".into(),
            url: "https://mcp.example.com/mcp".into(),
            tools: vec![McpTool {
                name: "search".into(),
                description: Some("Search the docs.".into()),
                input_schema: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            }],
            skipped: vec!["bad.name: not a name a model can call".into()],
            error: None,
        }
        .into(),
        SandboxWorkspaceSaved {
            manifest: Some("workspaces/s/snapshots/snap_9.json".into()),
            bytes: 10240,
            chunks: 1,
            new_chunks: 1,
            stored_bytes: 10300,
            duration_ms: 12,
            as_of: 9,
            ..SandboxWorkspaceSaved::answering("snap_9", "h1")
        }
        .into(),
        SandboxWorkspaceRestored {
            host: "h2".into(),
            manifest: "workspaces/s/snapshots/snap_9.json".into(),
            saved_seq: 10,
            bytes: 10240,
            error: None,
            duration_ms: 8,
        }
        .into(),
        SessionForked {
            parent: "sesn_parent".into(),
            requested: 12,
            at: 9,
            copied: 7,
            workspace: Some("workspaces/sesn_parent/snapshots/snap_9.json".into()),
        }
        .into(),
        SessionScheduleSet {
            name: "nightly".into(),
            spec: "cron 0 0 3 * * *".into(),
            prompt: "run the checks".into(),
        }
        .into(),
        SessionScheduleFired {
            name: "nightly".into(),
            fired_at: "2026-12-02T03:00:00Z".into(),
            next: Some("2026-12-03T03:00:00Z".into()),
        }
        .into(),
        SessionScheduleCancelled {
            name: "nightly".into(),
        }
        .into(),
    ];
    bodies.into_iter().map(Event::new).collect()
}

// ---- Agents end to end: a brain, hands, a scripted session. ----

/// Builds a sandbox image (idempotent: skipped when it exists).
pub fn ensure_image(which: &str) {
    let status =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox-images/build"))
            .arg(which)
            .status()
            .expect("run sandbox-images/build");
    assert!(
        status.success(),
        "building the {which} sandbox image failed"
    );
}

/// An in-process brain on the test server.
pub async fn start_brain(t: &TestNats, name: &str) -> tokio::task::JoinHandle<()> {
    let brain = herd::brain::Brain::new(
        connect_as(&t.server, Role::Brain).await,
        herd::brain::BrainConfig {
            name: name.into(),
            ..Default::default()
        },
    )
    .await
    .expect("brain");
    tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() })
}

/// An in-process brain on the test server whose Anthropic API is the mock `model`.
pub async fn start_brain_on(
    t: &TestNats,
    model: &herd::lab::mock_model::MockModel,
    name: &str,
) -> tokio::task::JoinHandle<()> {
    use herd::brain::provider::{ProviderSettings, Timeouts};
    let brain = herd::brain::Brain::new(
        connect_as(&t.server, Role::Brain).await,
        herd::brain::BrainConfig {
            name: name.into(),
            providers: ProviderSettings {
                anthropic_api_key: Some(herd::config::Secret::new("sk-ant-test-key")),
                anthropic_base_url: Some(model.anthropic_url()),
                timeouts: Timeouts {
                    idle: Duration::from_secs(10),
                    total: Duration::from_secs(30),
                },
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("brain");
    tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() })
}

/// An in-process hand on the test server, on `host`, with `image` as its default.
pub async fn start_hands(
    t: &TestNats,
    host: &str,
    image: &str,
    registry_ttl: Duration,
) -> (tokio::task::JoinHandle<()>, herd::hands::sandbox::Sandboxes) {
    start_hands_with(
        t,
        herd::hands::HandsConfig {
            registry_ttl,
            ..hands_config(host, image)
        },
    )
    .await
}

/// A hand's configuration on `host` with `image` as the default (a 10 s registry TTL); tests
/// set what they exercise on top: `HandsConfig { max_sandboxes: 1, ..hands_config(h, i) }`.
pub fn hands_config(host: &str, image: &str) -> herd::hands::HandsConfig {
    herd::hands::HandsConfig {
        host: host.to_string(),
        registry_ttl: Duration::from_secs(10),
        sandbox: herd::hands::sandbox::SandboxConfig {
            default_image: image.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An in-process hand on the test server with this configuration.
pub async fn start_hands_with(
    t: &TestNats,
    config: herd::hands::HandsConfig,
) -> (tokio::task::JoinHandle<()>, herd::hands::sandbox::Sandboxes) {
    let hands = herd::hands::Hands::new(connect_as(&t.server, Role::Hands).await, config)
        .await
        .expect("hands");
    let sandboxes = hands.sandboxes().clone();
    (
        tokio::spawn(async move { hands.run(std::future::pending()).await.unwrap() }),
        sandboxes,
    )
}

/// A unique, subject-safe host name.
pub fn host(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A built-in tool, always allowed.
pub fn builtin(name: &str) -> ToolConfig {
    ToolConfig::builtin(name)
}

/// A scripted assistant turn that calls one tool.
pub fn tool_turn(id: &str, name: &str, input: serde_json::Value) -> serde_json::Value {
    json!({"content": [{"type": "tool_use", "id": id, "name": name, "input": input}]})
}

/// A scripted assistant turn that says something and ends the turn.
pub fn text_turn(text: &str) -> serde_json::Value {
    json!({"content": [{"type": "text", "text": text}]})
}

/// Creates a session on the scripted model with these tools and this script, sends it `say`
/// and wakes it.
pub async fn scripted_session(
    t: &TestNats,
    tools: &[&str],
    script: Vec<serde_json::Value>,
    image: Option<&str>,
    say: &str,
) -> SessionId {
    scripted_session_with(t, tools, script, image, vec![], vec![], say).await
}

/// Appends a user message and wakes the session.
pub async fn send(t: &TestNats, id: &SessionId, text: &str) {
    append_and_wake(t, id, &user(text)).await;
}

/// Appends a user event (a fact) and wakes the session, as a client would.
pub async fn append_and_wake(t: &TestNats, id: &SessionId, event: &Event) {
    let a = t.log.append_fact(id, event).await.unwrap();
    herd::bus::wake::publish(
        &async_nats::jetstream::new(t.client.clone()),
        id,
        a.last_seq,
    )
    .await
    .unwrap();
}

/// Reads the session until `done` holds for its events (at most `secs` seconds).
pub async fn wait_until(
    t: &TestNats,
    id: &SessionId,
    secs: u64,
    done: impl Fn(&[StoredEvent]) -> bool,
) -> Vec<StoredEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let events: Vec<StoredEvent> = t
            .log
            .read_from(id, 1)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        if done(&events) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never got there: {:?}",
            events
                .iter()
                .map(|e| e.event.type_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the session has gone idle `n` times.
pub async fn wait_idles(t: &TestNats, id: &SessionId, n: usize) -> Vec<StoredEvent> {
    wait_until(t, id, 120, |events| {
        events
            .iter()
            .filter(|e| e.event.type_name() == "session.status_idle")
            .count()
            >= n
    })
    .await
}

/// The text and error flag of the result of tool call `id` (a built-in or an MCP call).
pub fn tool_result(events: &[StoredEvent], id: &str) -> (bool, String) {
    events
        .iter()
        .find_map(|e| match &e.event.body {
            EventBody::AgentToolResult(r) if r.tool_use_id == id => {
                Some((r.is_error, content_text(&r.content)))
            }
            EventBody::AgentMcpToolResult(r) if r.mcp_tool_use_id == id => {
                Some((r.is_error, content_text(&r.content)))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no result for {id}"))
}

/// A child process killed when dropped, so a failing test leaves no worker behind.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Kills it now and waits for it (its log is complete afterwards).
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real `herd hands` process holding the vault key, logging at debug level into `log`.
pub fn spawn_hands_process(
    url: &impl Target,
    host: &str,
    image: &str,
    vault_key: &str,
    log: &std::path::Path,
) -> KillOnDrop {
    spawn_hands_process_with(url, host, image, vault_key, log, &[])
}

/// [`spawn_hands_process`] with more flags.
pub fn spawn_hands_process_with(
    url: &impl Target,
    host: &str,
    image: &str,
    vault_key: &str,
    log: &std::path::Path,
    flags: &[&str],
) -> KillOnDrop {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["hands", "--host", host, "--image", image])
        .args(flags)
        // The tests' servers (git, mock APIs) listen on loopback, which hands refuse unless
        // the operator allows it.
        .args(["--allow-private-range", "127.0.0.1/32"])
        .envs(herd_env(url))
        .env("HERD_VAULT_KEY", vault_key)
        .env("HERD_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(log).unwrap(),
        ))
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Creates a session of `agent` in `image` (no vaults, no resources); returns its id.
pub async fn create_session(t: &TestNats, agent: AgentConfig, image: Option<&str>) -> SessionId {
    create_session_with(t, agent, image, vec![], vec![]).await
}

/// Creates a session of `agent` in `image` with these vaults and resources.
pub async fn create_session_with(
    t: &TestNats,
    agent: AgentConfig,
    image: Option<&str>,
    vault_ids: Vec<String>,
    resources: Vec<Resource>,
) -> SessionId {
    let id = SessionId::generate();
    t.log
        .create(
            &id,
            &Event::new(SessionCreated {
                environment: EnvironmentConfig {
                    image: image.map(String::from),
                    ..Default::default()
                },
                vault_ids,
                resources,
                ..SessionCreated::new(agent)
            }),
        )
        .await
        .unwrap();
    id
}

/// Creates a scripted session with these tools, image, vaults and resources, and sends it
/// `say`.
pub async fn scripted_session_with(
    t: &TestNats,
    tools: &[&str],
    script: Vec<serde_json::Value>,
    image: Option<&str>,
    vault_ids: Vec<String>,
    resources: Vec<Resource>,
    say: &str,
) -> SessionId {
    let mut agent = AgentConfig::new("scripted");
    agent.tools = tools.iter().map(|n| builtin(n)).collect();
    agent.script = script;
    let id = create_session_with(t, agent, image, vault_ids, resources).await;
    send(t, &id, say).await;
    id
}

/// Runs the `herd` binary against `target` as the operator; its whole output.
pub fn herd_out(target: &impl Target, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .envs(herd_env(target))
        .env_remove("HERD_CONFIG")
        .output()
        .unwrap()
}

/// Runs the `herd` binary against `url` with the vault key, feeding it `stdin`.
pub fn herd_with_key(
    url: &impl Target,
    key: &str,
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .envs(herd_env(url))
        .env("HERD_VAULT_KEY", key)
        .env_remove("HERD_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// How often `needle` occurs in `haystack` (a canary must occur 0 times).
pub fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}
