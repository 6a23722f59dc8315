//! `herd bench tools`: the tools that run outside a sandbox, against their raw primitives, in
//! one run.
//!
//! * `get_events` round trip (the `agent.tool_use` appended → its `agent.tool_result`
//!   appended by a brain) for a 100-event slice of a 10,000-event session, vs a direct-get
//!   read of the same slice (`SessionLog::read`: one batched direct get, decoded);
//! * an MCP call's round trip through a brain and a hand (`agent.mcp_tool_use` appended →
//!   `agent.mcp_tool_result` appended) against a real MCP server (the official Python SDK's,
//!   `tests/mcp/server.py`), with herd's MCP client alone (one MCP session per call: four HTTP
//!   requests) and one direct HTTP `tools/call` in an open MCP session, in the same run.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Environment, PrivateNats, Summary, ratio};
use crate::bus::wake;
use crate::credentials::vault::{Kind, Vault, VaultKey};
use crate::event::*;
use crate::lab::mock_model::MockModel;
use crate::session::Slice;

/// Sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Timed samples of each kind.
    pub samples: usize,
    /// Events in the session `get_events` reads.
    pub session_events: usize,
    /// Events per slice.
    pub slice: usize,
    /// The Python with the MCP SDK (`scripts/ensure-sdk` makes it).
    pub python: String,
    /// The MCP test server's script.
    pub server_script: String,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            samples: 100,
            session_events: 10_000,
            slice: 100,
            python: ".herd/sdk-venv/bin/python".into(),
            server_script: "tests/mcp/server.py".into(),
        }
    }
}

/// The MCP figures, when an MCP server could be started.
#[derive(Debug, Clone, Serialize)]
pub struct McpFigures {
    /// `agent.mcp_tool_use` → `agent.mcp_tool_result`, through a brain and a hand.
    pub round_trip: Summary,
    /// herd's MCP client alone (initialize, initialized, tools/call, DELETE).
    pub client: Summary,
    /// One direct HTTP `tools/call` in an already open MCP session.
    pub direct_http: Summary,
    /// round trip p50 / direct p50.
    pub round_trip_p50_ratio: f64,
    /// client p50 / direct p50.
    pub client_p50_ratio: f64,
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine and server.
    pub environment: Environment,
    /// Sizes.
    pub params: Params,
    /// `agent.tool_use` (get_events) → `agent.tool_result`.
    pub get_events: Summary,
    /// A direct-get read of the same slice (one batched direct get, decoded).
    pub raw_read: Summary,
    /// get_events p50 / raw read p50.
    pub get_events_p50_ratio: f64,
    /// get_events p99 / raw read p99.
    pub get_events_p99_ratio: f64,
    /// The MCP figures, or why there are none.
    pub mcp: Result<McpFigures, String>,
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "herd bench tools — {} cpus, {}\n",
            self.environment.cpus, self.environment.nats_server
        );
        s += &self.get_events.row(&format!(
            "get_events, {} of {} events: tool_use → tool_result",
            self.params.slice, self.params.session_events
        ));
        s += &self.raw_read.row("batched direct get of the same slice");
        s += &format!(
            "  ratio p50 {:.2}x  p99 {:.2}x\n",
            self.get_events_p50_ratio, self.get_events_p99_ratio
        );
        match &self.mcp {
            Ok(m) => {
                s += &m.round_trip.row("MCP call: mcp_tool_use → mcp_tool_result");
                s += &m.client.row("herd's MCP client alone (4 HTTP requests)");
                s += &m
                    .direct_http
                    .row("direct HTTP tools/call, open MCP session");
                s += &format!(
                    "  ratio p50: round trip {:.2}x, client {:.2}x of direct\n",
                    m.round_trip_p50_ratio, m.client_p50_ratio
                );
            }
            Err(why) => s += &format!("MCP not measured: {why}\n"),
        }
        s
    }
}

/// Waits for the event of `type_name` answering `id` (its tool_use id) on `follow`.
async fn answered(
    follow: &mut futures_util::stream::BoxStream<
        'static,
        Result<crate::event::Record, crate::session::LogError>,
    >,
    id: &str,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => anyhow::bail!("no result for {id} within 30 s"),
            next = follow.next() => {
                let Some(Ok(Ok(e))) = next else { continue };
                let hit = match &e.event.body {
                    EventBody::AgentToolResult(r) => r.tool_use_id == id,
                    EventBody::AgentMcpToolResult(r) => r.mcp_tool_use_id == id,
                    _ => false,
                };
                if hit {
                    return Ok(Instant::now());
                }
            }
        }
    }
}

/// Waits until the session's last event is an idle (the turn after a result is over).
async fn settled(nats: &PrivateNats, id: &SessionId) -> anyhow::Result<()> {
    for _ in 0..600 {
        let last = nats
            .log
            .read(
                id,
                &Slice {
                    last: Some(1),
                    ..Default::default()
                },
            )
            .await?;
        if let Some(Ok(e)) = last.first()
            && e.event.type_name() == "session.status_idle"
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("session {id} never went idle")
}

/// Appends a call and wakes the session; returns when it was appended.
async fn call(
    nats: &PrivateNats,
    id: &SessionId,
    body: impl Into<EventBody>,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    let a = nats.log.append_fact(id, &Event::new(body)).await?;
    wake::publish(&nats.js, id, a.last_seq).await?;
    Ok(start)
}

/// Runs the benchmark.
pub async fn run(params: Params) -> anyhow::Result<Report> {
    anyhow::ensure!(
        params.samples > 0 && params.slice > 0 && params.session_events > params.slice,
        "samples and slice must be at least 1, and the session larger than a slice"
    );
    let nats = PrivateNats::start().await?;
    let model = MockModel::start().await?;
    let brain = nats.start_brain(&model).await?;

    // A session of `session_events` events, all said and answered.
    eprintln!("writing a {}-event session…", params.session_events);
    let mut agent = AgentConfig::new("claude-bench");
    agent.tools = vec![ToolConfig::builtin(crate::event::tools::GET_EVENTS)];
    agent.context_budget_tokens = Some(u32::MAX / 2);
    let id = SessionId::generate();
    let mut last = nats
        .log
        .create(&id, &Event::new(SessionCreated::new(agent)))
        .await?
        .last_seq;
    let mut written = 1;
    while written < params.session_events {
        let batch: Vec<Event> = (0..100.min(params.session_events - written))
            .map(|i| {
                Event::new(AgentMessage {
                    content: vec![ContentBlock::text(format!(
                        "note {} of the bench: nothing to see here",
                        written + i
                    ))],
                })
            })
            .collect();
        written += batch.len();
        last = nats.log.append_step(&id, last, &batch).await?.last_seq;
    }
    let first = last + 1 - params.session_events as u64;
    let mut follow = nats.log.follow(&id, last + 1).await?;

    eprintln!("timing get_events…");
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for i in 0..params.samples + 1 {
        let from = first + ((i * 37) % (params.session_events - params.slice)) as u64;
        let to = from + params.slice as u64 - 1;
        let tool_use_id = format!("toolu_bench_{i}");
        let start = call(
            &nats,
            &id,
            AgentToolUse {
                tool_use_id: tool_use_id.clone(),
                name: crate::event::tools::GET_EVENTS.into(),
                input: json!({"from": from, "to": to}),
                evaluated_permission: Some(EvaluatedPermission::Allow),
            },
        )
        .await?;
        let done = answered(&mut follow, &tool_use_id).await?;
        settled(&nats, &id).await?;
        let t = Instant::now();
        let slice = nats
            .log
            .read(
                &id,
                &Slice {
                    from: Some(from),
                    to: Some(to),
                    ..Default::default()
                },
            )
            .await?;
        let read = t.elapsed();
        anyhow::ensure!(
            slice.len() == params.slice,
            "the raw read got {}",
            slice.len()
        );
        // The first round warms the brain's cache of the session.
        if i > 0 {
            ours.push(done - start);
            raw.push(read);
        }
    }
    let mcp = match mcp(&nats, &model, &params).await {
        Ok(m) => Ok(m),
        Err(e) => Err(format!("{e:#}")),
    };
    brain.abort();
    let (get_events, raw_read) = (Summary::of(&ours), Summary::of(&raw));
    Ok(Report {
        environment: Environment::detect(),
        get_events_p50_ratio: ratio(get_events.p50_us, raw_read.p50_us),
        get_events_p99_ratio: ratio(get_events.p99_us, raw_read.p99_us),
        get_events,
        raw_read,
        params,
        mcp,
    })
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the MCP test server on a free port; returns it and the port.
async fn mcp_server(params: &Params, token: &str) -> anyhow::Result<(Child, u16)> {
    anyhow::ensure!(
        std::path::Path::new(&params.python).exists(),
        "{} is missing (scripts/ensure-sdk installs the MCP SDK there)",
        params.python
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let audit = std::env::temp_dir().join(format!("herd-bench-mcp-{port}.txt"));
    let child = std::process::Command::new(&params.python)
        .arg(&params.server_script)
        .arg(port.to_string())
        .arg(token)
        .arg(&audit)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let server = Child(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((server, port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the MCP server never listened on {port}")
}

async fn mcp(nats: &PrivateNats, model: &MockModel, params: &Params) -> anyhow::Result<McpFigures> {
    use crate::lab::local_server::Target;
    let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (_server, port) = mcp_server(params, &token).await?;
    let url = format!("http://127.0.0.1:{port}/mcp");

    // The token in a vault, a hand that holds the key and may reach loopback.
    let key_hex = VaultKey::generate_hex()?;
    let key = VaultKey::from_hex(&key_hex)?;
    let vault = Vault::open_store(&nats.js).await?;
    vault
        .put(
            &key,
            "bench",
            "MCP_TOKEN",
            Kind::StaticBearer,
            &[format!("127.0.0.1:{port}")],
            &crate::config::Secret::new(token.clone()),
        )
        .await?;
    let hands = crate::hands::Hands::new(
        nats.server
            .nats_config(crate::auth::Role::Hands)
            .connect("bench-hands")
            .await?,
        crate::hands::HandsConfig {
            host: format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            vault_key: Some(key),
            allowed_ranges: vec!["127.0.0.1/32".parse().map_err(|e| anyhow::anyhow!("{e}"))?],
            ..Default::default()
        },
    )
    .await?;
    let hand = tokio::spawn(async move {
        let _ = hands.run(std::future::pending()).await;
    });

    let mut agent = AgentConfig::new("claude-bench");
    agent.mcp_servers = vec![McpServer {
        kind: "url".into(),
        name: "bench".into(),
        url: url.clone(),
        credential: Some("MCP_TOKEN".into()),
    }];
    agent.tools = vec![serde_json::from_value(json!({
        "type": "mcp_toolset", "mcp_server_name": "bench",
        "default_config": {"permission_policy": "always_allow"}
    }))?];
    let id = SessionId::generate();
    let created = SessionCreated {
        vault_ids: vec!["bench".into()],
        ..SessionCreated::new(agent)
    };
    let seq = nats.log.create(&id, &Event::new(created)).await?.last_seq;
    let mut follow = nats.log.follow(&id, seq + 1).await?;
    // A first turn lists the server's tools.
    let said = nats
        .log
        .append_fact(
            &id,
            &Event::new(UserMessage {
                content: vec![ContentBlock::text("hi")],
            }),
        )
        .await?;
    wake::publish(&nats.js, &id, said.last_seq).await?;
    settled(nats, &id).await?;
    let _ = model;

    let mut round_trips = Vec::new();
    for i in 0..params.samples + 1 {
        let tool_use_id = format!("toolu_mcp_{i}");
        let start = call(
            nats,
            &id,
            AgentMcpToolUse {
                tool_use_id: tool_use_id.clone(),
                mcp_server_name: "bench".into(),
                name: "lookup".into(),
                input: json!({"key": format!("k{i}")}),
                evaluated_permission: Some(EvaluatedPermission::Allow),
            },
        )
        .await?;
        let done = answered(&mut follow, &tool_use_id).await?;
        settled(nats, &id).await?;
        if i > 0 {
            round_trips.push(done - start);
        }
    }
    hand.abort();

    // herd's client alone, and one direct request in an open MCP session.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let endpoint = crate::hands::mcp::Endpoint {
        url: url.clone(),
        authorization: Some(format!("Bearer {token}")),
        redact: vec![],
    };
    let mut client = Vec::new();
    for i in 0..params.samples {
        let t = Instant::now();
        crate::hands::mcp::call_tool(
            &http,
            &endpoint,
            "lookup",
            &json!({"key": format!("c{i}")}),
            Duration::from_secs(30),
        )
        .await?;
        client.push(t.elapsed());
    }
    let post = |body: Value, session: Option<String>| {
        let mut r = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", crate::hands::mcp::PROTOCOL_VERSION)
            .body(body.to_string());
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        r.send()
    };
    let init = post(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": crate::hands::mcp::PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}}),
        None,
    )
    .await?;
    let session = init
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    init.bytes().await?;
    post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        session.clone(),
    )
    .await?
    .bytes()
    .await?;
    let mut direct = Vec::new();
    for i in 0..params.samples {
        let t = Instant::now();
        let r = post(
            json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {"name": "lookup", "arguments": {"key": format!("d{i}")}}}),
            session.clone(),
        )
        .await?;
        anyhow::ensure!(r.status().is_success(), "direct tools/call: {}", r.status());
        let body = r.bytes().await?;
        anyhow::ensure!(
            String::from_utf8_lossy(&body).contains("the value of"),
            "direct tools/call answered {}",
            String::from_utf8_lossy(&body)
        );
        direct.push(t.elapsed());
    }
    let (round_trip, client, direct_http) = (
        Summary::of(&round_trips),
        Summary::of(&client),
        Summary::of(&direct),
    );
    Ok(McpFigures {
        round_trip_p50_ratio: ratio(round_trip.p50_us, direct_http.p50_us),
        client_p50_ratio: ratio(client.p50_us, direct_http.p50_us),
        round_trip,
        client,
        direct_http,
    })
}
