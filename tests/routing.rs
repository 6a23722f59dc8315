//! Several hand hosts: a session's calls follow its sandbox; a host that dies hands its
//! sessions to the pool, and the model is told its sandbox was replaced.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herd::brain::{Brain, BrainConfig};
use herd::event::*;
use herd::hands::sandbox::SandboxConfig;
use herd::hands::{Hands, HandsConfig};
use serde_json::json;

fn bash(id: &str, command: &str) -> serde_json::Value {
    json!({"content": [{"type": "tool_use", "id": id, "name": "bash", "input": {"command": command}}]})
}

async fn start_hand(
    t: &TestNats,
    host: &str,
) -> (tokio::task::JoinHandle<()>, herd::hands::sandbox::Sandboxes) {
    let hands = Hands::new(
        connect(&t.server.url()).await,
        HandsConfig {
            host: host.to_string(),
            registry_ttl: Duration::from_secs(2),
            sandbox: SandboxConfig {
                default_image: "herd-sandbox:busybox".into(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sandboxes = hands.sandboxes().clone();
    (
        tokio::spawn(async move { hands.run(std::future::pending()).await.unwrap() }),
        sandboxes,
    )
}

async fn wait_idles(t: &TestNats, id: &SessionId, n: usize) -> Vec<StoredEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events: Vec<StoredEvent> = t
            .log
            .read_from(id, 1)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        if events
            .iter()
            .filter(|e| e.event.type_name() == "session.status_idle")
            .count()
            >= n
        {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}",
            events
                .iter()
                .map(|e| e.event.type_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn result(events: &[StoredEvent], id: &str) -> String {
    events
        .iter()
        .find_map(|e| match &e.event.body {
            EventBody::AgentToolResult(r) if r.tool_use_id == id => Some(content_text(&r.content)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no result for {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_the_sandbox_and_a_dead_host_hands_over_to_the_pool() {
    let status =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox-images/build"))
            .arg("busybox")
            .status()
            .unwrap();
    assert!(status.success());
    let t = TestNats::start().await;
    let brain = Brain::new(
        connect(&t.server.url()).await,
        BrainConfig {
            name: "route-brain".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (host_a, host_b) = (format!("a{}", &tag[..8]), format!("b{}", &tag[..8]));
    let (hand_a, sb_a) = start_hand(&t, &host_a).await;
    let (hand_b, sb_b) = start_hand(&t, &host_b).await;

    let mut agent = AgentConfig::new("scripted");
    agent.tools = ["bash", "write"]
        .into_iter()
        .map(|n| ToolConfig {
            name: n.into(),
            kind: "builtin".into(),
            description: None,
            input_schema: None,
            permission_policy: PermissionPolicy::AlwaysAllow,
        })
        .collect();
    let mut script = vec![
        json!({"content": [{"type": "tool_use", "id": "toolu_w", "name": "write", "input": {"path": "f.txt", "content": "routed"}}]}),
    ];
    for i in 0..5 {
        script.push(bash(&format!("toolu_c{i}"), "cat f.txt"));
    }
    script.push(json!({"content": [{"type": "text", "text": "read it five times"}]}));
    script.push(bash("toolu_after", "cat f.txt; echo"));
    script.push(json!({"content": [{"type": "text", "text": "after"}]}));
    agent.script = script;
    let id = SessionId::generate();
    t.log
        .create(
            &id,
            &Event::new(SessionCreated {
                agent,
                environment: EnvironmentConfig::default(),
                title: None,
                metadata: Default::default(),
            }),
        )
        .await
        .unwrap();
    let js = async_nats::jetstream::new(t.client.clone());
    let a = t
        .log
        .append_fact(&id, &user("write and read"))
        .await
        .unwrap();
    herd::brain::wake::publish(&js, &id, a.last_seq)
        .await
        .unwrap();

    let events = wait_idles(&t, &id, 1).await;
    for i in 0..5 {
        assert_eq!(
            result(&events, &format!("toolu_c{i}")),
            "exit code: 0\n--- stdout ---\nrouted",
            "call {i} ran where the file is"
        );
    }
    let provisioned: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SandboxProvisioned(p) => Some(p.host.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        provisioned.len(),
        1,
        "one sandbox served the whole turn: {provisioned:?}"
    );
    let holder = provisioned[0].clone();

    // The host holding the sandbox dies (its worker stops; its registry entry expires).
    if holder == host_a {
        hand_a.abort()
    } else {
        hand_b.abort()
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = t
        .log
        .append_fact(&id, &user("read it again"))
        .await
        .unwrap();
    herd::brain::wake::publish(&js, &id, a.last_seq)
        .await
        .unwrap();
    let events = wait_idles(&t, &id, 2).await;
    let after = result(&events, "toolu_after");
    assert!(
        after.contains(&format!("sandbox (on host {holder}) is gone")),
        "{after}"
    );
    assert!(
        !after.contains("routed"),
        "the other host has its own workspace: {after}"
    );

    // A job stranded on a dead host's subject is moved to the pool by a live hand.
    let survivor = if holder == host_a {
        host_b.clone()
    } else {
        host_a.clone()
    };
    let call = Event::new(AgentToolUse {
        tool_use_id: "toolu_stranded".into(),
        name: "bash".into(),
        input: json!({"command": "echo rescued"}),
        evaluated_permission: Some(EvaluatedPermission::Allow),
    });
    let seq = t.log.append_fact(&id, &call).await.unwrap().last_seq;
    let job = herd::jobs::ToolJob {
        session_id: id.clone(),
        tool_use_id: "toolu_stranded".into(),
        name: "bash".into(),
        input: json!({"command": "echo rescued"}),
        tool_use_seq: seq,
        image: None,
    };
    js.publish(
        format!("herd.tools.host.{holder}.{id}.toolu_stranded"),
        serde_json::to_vec(&job).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events: Vec<StoredEvent> = t
            .log
            .read_from(&id, 1)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        if events.iter().any(|e| matches!(&e.event.body, EventBody::AgentToolResult(r) if r.tool_use_id == "toolu_stranded")) {
            assert!(result(&events, "toolu_stranded").contains("rescued"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stranded job was never moved to the pool (survivor {survivor})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hand_a.abort();
    hand_b.abort();
    sb_a.destroy(&id).await;
    sb_b.destroy(&id).await;
    b.abort();
}
