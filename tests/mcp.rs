//! MCP servers are tools: a real server from the official Python MCP SDK (PyPI `mcp`, in
//! `.herd/sdk-venv`, made by `scripts/ensure-sdk`), served over Streamable HTTP, called by a
//! real `herd hands` process with the server's bearer token from a vault, on the scripted
//! model. The token must reach the server on every request and appear nowhere else.

mod common;

use std::time::Duration;

use common::*;
use herd::event::*;
use herd::session::check_session;
use serde_json::json;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.herd/sdk-venv/bin/python");
const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/server.py");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `tests/mcp/server.py` with `args` and waits until it listens on `port`.
async fn python_server(port: u16, args: &[&str]) -> KillOnDrop {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "the MCP SDK's virtualenv is missing: run scripts/ensure-sdk (scripts/test does)"
    );
    let child = std::process::Command::new(PYTHON)
        .arg(SERVER)
        .arg(port.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let server = KillOnDrop(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the MCP test server never listened on {port}");
}

async fn confirm(t: &TestNats, id: &SessionId, tool_use_id: &str, allow: bool) {
    let e = Event::new(UserToolConfirmation {
        tool_use_id: tool_use_id.into(),
        result: if allow { "allow" } else { "deny" }.into(),
        deny_message: None,
    });
    append_and_wake(t, id, &e).await;
}

/// Waits until the session is parked on `requires_action` naming `tool_use_id`.
async fn parked_on(t: &TestNats, id: &SessionId, tool_use_id: &str) -> Vec<StoredEvent> {
    wait_until(t, id, 60, |events| {
        events.iter().any(|e| {
            matches!(&e.event.body,
            EventBody::SessionStatusIdle(i) if i.stop_reason.kind == "requires_action"
                && i.stop_reason.event_ids.iter().any(|x| x == tool_use_id))
        })
    })
    .await
}

fn toolset(server: &str, default: &str, configs: serde_json::Value) -> ToolConfig {
    serde_json::from_value(json!({
        "type": "mcp_toolset", "mcp_server_name": server,
        "default_config": {"permission_policy": default}, "configs": configs,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mcp_server_is_called_through_the_hand_with_a_vault_token_that_goes_nowhere_else() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = format!("mcp-canary-{}", uuid::Uuid::new_v4().simple());
    let audit = dir.path().join("audit.txt");
    let port = free_port();
    let broken_port = free_port();
    let mut server = python_server(port, &[&token, audit.to_str().unwrap()]).await;
    let _broken = python_server(broken_port, &["--garbage"]).await;

    // The token goes into a vault through the command line (stdin), for the server's host.
    let key = herd::credentials::vault::VaultKey::generate_hex().unwrap();
    let put = herd_with_key(
        &t.server,
        &key,
        &[
            "vault",
            "put",
            "ops",
            "DOCS_TOKEN",
            "--kind",
            "static_bearer",
            "--host",
            &format!("127.0.0.1:{port}"),
        ],
        format!("{token}\n").as_bytes(),
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let hand_log = dir.path().join("hands.log");
    // A hand process that may reach loopback, with a 3 s MCP call timeout.
    let mut hand = spawn_hands_process_with(
        &t.server,
        &host("mcp"),
        "herd-sandbox:busybox",
        &key,
        &hand_log,
        &["--mcp-call-timeout-secs", "3"],
    );
    let brain = start_brain(&t, "mcp-brain").await;

    let mut agent = AgentConfig::new("scripted");
    agent.mcp_servers = vec![
        McpServer {
            kind: "url".into(),
            name: "docs".into(),
            url: format!("http://127.0.0.1:{port}/mcp"),
            credential: Some("DOCS_TOKEN".into()),
        },
        McpServer {
            kind: "url".into(),
            name: "broken".into(),
            url: format!("http://127.0.0.1:{broken_port}/mcp"),
            credential: None,
        },
        McpServer {
            kind: "url".into(),
            name: "metadata".into(),
            url: "http://169.254.169.254/mcp".into(),
            credential: None,
        },
    ];
    agent.tools = vec![
        toolset(
            "docs",
            "always_allow",
            json!([{"name": "delete_all", "permission_policy": "always_ask"}]),
        ),
        toolset("broken", "always_allow", json!([])),
        toolset("metadata", "always_allow", json!([])),
    ];
    agent.script = vec![
        tool_turn("toolu_lookup", "lookup", json!({"key": "alpha"})),
        tool_turn("toolu_leak", "leak", json!({})),
        tool_turn("toolu_del1", "delete_all", json!({})),
        tool_turn("toolu_del2", "delete_all", json!({})),
        tool_turn("toolu_broken", "broken", json!({})),
        tool_turn("toolu_slow", "slow", json!({"seconds": 60})),
        tool_turn("toolu_crash", "crash", json!({})),
        text_turn("done"),
    ];
    // What a front door checks before it appends: the configuration is valid.
    let mut created = SessionCreated {
        vault_ids: vec!["ops".into()],
        ..SessionCreated::new(agent.clone())
    };
    created.validate().unwrap();
    let id = create_session_with(&t, agent, None, vec!["ops".into()], vec![]).await;
    send(&t, &id, "use the docs server").await;

    parked_on(&t, &id, "toolu_del1").await;
    confirm(&t, &id, "toolu_del1", false).await;
    parked_on(&t, &id, "toolu_del2").await;
    confirm(&t, &id, "toolu_del2", true).await;
    let events = wait_until(&t, &id, 90, |events| {
        events.iter().any(|e| {
            matches!(&e.event.body,
            EventBody::SessionStatusIdle(i) if i.stop_reason.kind == "end_turn")
        })
    })
    .await;

    // Each server's listing is in the log.
    let listings: Vec<&McpToolsListed> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::McpToolsListed(l) => Some(l),
            _ => None,
        })
        .collect();
    let listing = |name: &str| {
        *listings
            .iter()
            .find(|l| l.mcp_server_name == name)
            .unwrap_or_else(|| panic!("no listing of {name}: {listings:?}"))
    };
    let docs: Vec<&str> = listing("docs")
        .tools
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(docs, ["lookup", "leak", "delete_all", "slow", "crash"]);
    assert!(listing("docs").error.is_none());
    assert_eq!(
        listing("docs").skipped,
        ["a tool whose listing contains this session's credential"],
        "the tool whose description echoes the token is left out"
    );
    let lookup = &listing("docs").tools[0];
    assert_eq!(lookup.input_schema["properties"]["key"]["type"], "string");
    assert_eq!(listing("broken").tools.len(), 1);
    assert!(
        listing("broken").skipped[0].contains("bad.name"),
        "{:?}",
        listing("broken")
    );
    let refused = listing("metadata")
        .error
        .clone()
        .expect("a refused address");
    assert!(refused.contains("does not let"), "{refused}");

    // The calls and their results.
    let uses: Vec<&AgentMcpToolUse> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::AgentMcpToolUse(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(uses.len(), 7, "{uses:?}");
    assert!(
        uses.iter()
            .all(|u| u.mcp_server_name == "docs" || u.name == "broken")
    );
    assert_eq!(uses[2].evaluated_permission, Some(EvaluatedPermission::Ask));
    assert_eq!(
        uses[0].evaluated_permission,
        Some(EvaluatedPermission::Allow)
    );
    // Every call, the denied one included, is answered by an agent.mcp_tool_result.
    let count = |t: &str| events.iter().filter(|e| e.event.type_name() == t).count();
    assert_eq!(count("agent.mcp_tool_result"), 7);
    assert_eq!(count("agent.tool_result"), 0);
    let (err, text) = tool_result(&events, "toolu_lookup");
    assert!(!err && text == "the value of alpha is 42-ahpla", "{text}");
    let (err, text) = tool_result(&events, "toolu_leak");
    assert!(
        !err && text == "your token is [secret DOCS_TOKEN]",
        "redacted: {text}"
    );
    let (err, text) = tool_result(&events, "toolu_del1");
    assert!(err && text.contains("denied"), "{text}");
    let (err, text) = tool_result(&events, "toolu_del2");
    assert!(!err && text == "deleted everything", "{text}");
    let (err, text) = tool_result(&events, "toolu_broken");
    assert!(err && text.contains("not valid MCP"), "{text}");
    let (err, text) = tool_result(&events, "toolu_slow");
    assert!(err && text.contains("did not answer within 3 s"), "{text}");
    let (err, text) = tool_result(&events, "toolu_crash");
    assert!(err && text.contains("failed"), "{text}");
    assert!(
        !events
            .iter()
            .any(|e| e.event.type_name().starts_with("sandbox.")),
        "no sandbox for MCP calls"
    );
    let records: Vec<Record> = events.iter().cloned().map(Ok).collect();
    let report = check_session(id.clone(), &records, true);
    assert!(report.ok(), "{report:?}");

    // The server is gone now (it crashed): the context is rebuilt from the log alone, its
    // tools included, and the session goes on.
    assert!(
        server.0.try_wait().unwrap().is_some(),
        "the server exited in crash()"
    );
    server.kill();
    let config = match &events[0].event.body {
        EventBody::SessionCreated(c) => c.clone(),
        _ => panic!("session.created first"),
    };
    let request = herd::brain::context::build(&config, &events);
    let offered: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        offered,
        ["lookup", "leak", "delete_all", "slow", "crash", "broken"]
    );
    let system = request.system.unwrap_or_default();
    assert!(
        system.contains("\"metadata\" could not be listed"),
        "{system}"
    );
    assert!(
        !system.contains("does not let"),
        "no server or policy text in the system prompt: {system}"
    );
    send(&t, &id, "are you still there?").await;
    wait_idles(&t, &id, 4).await;

    // The token reached the server on every request it saw, and nothing else.
    let audit = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = audit.lines().collect();
    assert!(lines.len() >= 12, "{audit}");
    assert!(lines.iter().all(|l| l.ends_with(" ok")), "{audit}");
    assert!(lines.iter().any(|l| l.starts_with("tools/list")), "{audit}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("tools/call")).count(),
        5,
        "{audit}"
    );
    let all = t.log.read_from(&id, 1).await.unwrap();
    let log_text = format!("{all:?}");
    assert_eq!(occurrences(&log_text, &token), 0, "the token is in the log");
    hand.kill();
    brain.abort();
    let hand_text = std::fs::read_to_string(&hand_log).unwrap();
    assert!(hand_text.contains("mcp"), "the hand logged its work");
    assert_eq!(
        occurrences(&hand_text, &token),
        0,
        "the token is in the hand's log"
    );
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&put.stdout),
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(occurrences(&out, &token), 0);
}
