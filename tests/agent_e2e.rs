//! An agent end to end: brain, hands and a real sandbox, through NATS, on the scripted model.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herd::brain::{Brain, BrainConfig};
use herd::event::*;
use herd::hands::sandbox::SandboxConfig;
use herd::hands::{Hands, HandsConfig};
use serde_json::json;

const IMAGE: &str = "herd-sandbox:debian";

fn builtin(name: &str) -> ToolConfig {
    ToolConfig {
        name: name.into(),
        kind: "builtin".into(),
        description: None,
        input_schema: None,
        permission_policy: PermissionPolicy::AlwaysAllow,
    }
}

fn tool_turn(id: &str, name: &str, input: serde_json::Value) -> serde_json::Value {
    json!({"content": [{"type": "tool_use", "id": id, "name": name, "input": input}]})
}

/// A scripted agent writes a Python program, runs it, edits it and runs it again; every tool
/// call runs in the session's hardened sandbox and lands one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_agent_writes_runs_edits_and_reruns_a_program() {
    let status =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox-images/build"))
            .arg("debian")
            .status()
            .unwrap();
    assert!(status.success(), "building {IMAGE} failed");
    let t = TestNats::start().await;
    let brain = Brain::new(
        connect(&t.server.url()).await,
        BrainConfig {
            name: "e2e-brain".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let hands = Hands::new(
        connect(&t.server.url()).await,
        HandsConfig {
            host: format!("e2e-{}", uuid::Uuid::new_v4().simple()),
            sandbox: SandboxConfig {
                default_image: IMAGE.into(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sandboxes = hands.sandboxes().clone();
    let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let h = tokio::spawn(async move { hands.run(std::future::pending()).await.unwrap() });

    let mut agent = AgentConfig::new("scripted");
    agent.tools = ["bash", "read", "write", "edit"]
        .into_iter()
        .map(builtin)
        .collect();
    agent.script = vec![
        tool_turn(
            "toolu_w",
            "write",
            json!({"path": "hello.py", "content": "print('hello, ' + str(6 * 7))\n"}),
        ),
        tool_turn("toolu_r1", "bash", json!({"command": "python3 hello.py"})),
        tool_turn(
            "toolu_e",
            "edit",
            json!({"path": "hello.py", "old_string": "hello", "new_string": "goodbye"}),
        ),
        tool_turn(
            "toolu_r2",
            "bash",
            json!({"command": "python3 hello.py && id -u"}),
        ),
        json!({"content": [{"type": "text", "text": "Done: it printed goodbye, 42."}]}),
    ];
    let id = SessionId::generate();
    t.log
        .create(
            &id,
            &Event::new(SessionCreated {
                agent,
                environment: EnvironmentConfig {
                    image: Some(IMAGE.into()),
                },
                title: None,
                metadata: Default::default(),
            }),
        )
        .await
        .unwrap();
    let a = t
        .log
        .append_fact(&id, &user("Write a Python program and run it."))
        .await
        .unwrap();
    herd::brain::wake::publish(
        &async_nats::jetstream::new(t.client.clone()),
        &id,
        a.last_seq,
    )
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events: Vec<StoredEvent> = t
            .log
            .read_from(&id, 1)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        if events
            .iter()
            .any(|e| e.event.type_name() == "session.status_idle")
        {
            break events;
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
    };
    let results: Vec<(String, bool, String)> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::AgentToolResult(r) => {
                Some((r.tool_use_id.clone(), r.is_error, content_text(&r.content)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        results.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["toolu_w", "toolu_r1", "toolu_e", "toolu_r2"]
    );
    assert!(results.iter().all(|r| !r.1), "{results:?}");
    assert!(results[1].2.contains("hello, 42"), "{}", results[1].2);
    assert!(
        results[3].2.contains("goodbye, 42") && results[3].2.contains("1000"),
        "{}",
        results[3].2
    );
    let last = events.iter().rev().find_map(|e| match &e.event.body {
        EventBody::AgentMessage(m) => Some(content_text(&m.content)),
        _ => None,
    });
    assert_eq!(last.as_deref(), Some("Done: it printed goodbye, 42."));
    // One sandbox served the whole session, found by its label.
    let listed: Vec<String> = sandboxes
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(listed, vec![id.to_string()]);
    sandboxes.destroy(&id).await;
    b.abort();
    h.abort();
}

/// A sandbox killed from outside mid-tool: the model gets a tool error, the next call runs in a
/// fresh sandbox that says so and still has the workspace, and no orphaned container remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sandbox_is_a_tool_error_and_the_next_call_gets_a_fresh_one() {
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
            name: "kill-brain".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let hands = Hands::new(
        connect(&t.server.url()).await,
        HandsConfig {
            host: format!("kill-{}", uuid::Uuid::new_v4().simple()),
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
    let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let h = tokio::spawn(async move { hands.run(std::future::pending()).await.unwrap() });
    let mut agent = AgentConfig::new("scripted");
    agent.tools = ["bash", "write"].into_iter().map(builtin).collect();
    agent.script = vec![
        tool_turn(
            "toolu_1",
            "write",
            json!({"path": "kept.txt", "content": "still here"}),
        ),
        tool_turn("toolu_2", "bash", json!({"command": "sleep 20"})),
        tool_turn("toolu_3", "bash", json!({"command": "cat kept.txt"})),
        json!({"content": [{"type": "text", "text": "recovered"}]}),
    ];
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
    let a = t.log.append_fact(&id, &user("go")).await.unwrap();
    herd::brain::wake::publish(
        &async_nats::jetstream::new(t.client.clone()),
        &id,
        a.last_seq,
    )
    .await
    .unwrap();
    // Kill the sandbox while `sleep 20` runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = t.log.read_from(&id, 1).await.unwrap().into_iter().filter_map(Result::ok).any(|e| matches!(&e.event.body, EventBody::AgentToolUse(u) if u.tool_use_id == "toolu_2"));
        if running {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let (_, container) = sandboxes.list().await.unwrap().into_iter().next().unwrap();
            sandboxes
                .docker()
                .kill_container(
                    &container,
                    None::<bollard::query_parameters::KillContainerOptions>,
                )
                .await
                .unwrap();
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = loop {
        let events: Vec<StoredEvent> = t
            .log
            .read_from(&id, 1)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        if events
            .iter()
            .any(|e| e.event.type_name() == "session.status_idle")
        {
            break events;
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
    };
    let result = |id: &str| {
        events
            .iter()
            .find_map(|e| match &e.event.body {
                EventBody::AgentToolResult(r) if r.tool_use_id == id => {
                    Some((r.is_error, content_text(&r.content)))
                }
                _ => None,
            })
            .unwrap()
    };
    let (err2, text2) = result("toolu_2");
    assert!(err2 && text2.contains("sandbox was lost"), "{text2}");
    let (err3, text3) = result("toolu_3");
    assert!(
        !err3 && text3.contains("sandbox was replaced") && text3.contains("still here"),
        "{text3}"
    );
    let count = |t: &str| events.iter().filter(|e| e.event.type_name() == t).count();
    assert_eq!(
        (count("sandbox.provisioned"), count("sandbox.lost")),
        (2, 1)
    );
    // Only the fresh sandbox is left: the dead one was removed, not orphaned.
    let left = sandboxes.list().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    sandboxes.destroy(&id).await;
    b.abort();
    h.abort();
}

/// A large output: the event keeps its head and tail and a reference; the object store has it
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_go_to_the_object_store() {
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
            name: "blob-brain".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let hands = Hands::new(
        connect(&t.server.url()).await,
        HandsConfig {
            host: format!("blob-{}", uuid::Uuid::new_v4().simple()),
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
    let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let h = tokio::spawn(async move { hands.run(std::future::pending()).await.unwrap() });
    let mut agent = AgentConfig::new("scripted");
    agent.tools = vec![builtin("bash")];
    agent.script = vec![
        tool_turn("toolu_big", "bash", json!({"command": "seq 1 100000"})),
        json!({"content": [{"type": "text", "text": "counted"}]}),
    ];
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
    let a = t.log.append_fact(&id, &user("count")).await.unwrap();
    herd::brain::wake::publish(
        &async_nats::jetstream::new(t.client.clone()),
        &id,
        a.last_seq,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        let found = t
            .log
            .read_from(&id, 1)
            .await
            .unwrap()
            .into_iter()
            .filter_map(Result::ok)
            .find_map(|e| match e.event.body {
                EventBody::AgentToolResult(r) => Some(r),
                _ => None,
            });
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = content_text(&result.content);
    let r = result.output_ref.expect("a reference to the whole output");
    assert!(text.len() < 40_000, "{}", text.len());
    assert!(
        text.contains("\n1\n2\n3\n") && text.contains("100000") && text.contains(&r.name),
        "head, tail and where the rest is"
    );
    let store = async_nats::jetstream::new(t.client.clone())
        .get_object_store(&r.bucket)
        .await
        .unwrap();
    let mut object = store.get(&r.name).await.unwrap();
    let mut whole = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut whole)
        .await
        .unwrap();
    let whole = String::from_utf8(whole).unwrap();
    assert_eq!(whole.len() as u64, r.size);
    assert!(whole.contains("\n50000\n") && whole.trim_end().ends_with("100000"));
    sandboxes.destroy(&id).await;
    b.abort();
    h.abort();
}
