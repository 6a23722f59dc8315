//! `herd hands` processes killed with SIGKILL in the middle of tools: every call still gets
//! exactly one result and the session completes.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use herd::brain::{Brain, BrainConfig};
use herd::event::*;
use serde_json::json;

fn ensure_busybox() {
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox-images/build"))
        .arg("busybox")
        .status()
        .unwrap();
    assert!(status.success());
}

fn spawn_hands(url: &str, host: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "hands",
            "--host",
            host,
            "--ack-wait-secs",
            "2",
            "--max-deliver",
            "20",
            "--image",
            "herd-sandbox:busybox",
        ])
        .env("HERD_NATS_URL", url)
        .env("HERD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_killed_mid_tool_still_answer_each_call_once() {
    ensure_busybox();
    let t = TestNats::start().await;
    let brain = Brain::new(
        connect(&t.server.url()).await,
        BrainConfig {
            name: "crash-brain".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let host = format!("crash-{}", uuid::Uuid::new_v4().simple());

    // Each tool call takes 1.5 s and appends a line to a file, so runs are visible.
    let mut agent = AgentConfig::new("scripted");
    agent.tools = vec![ToolConfig {
        name: "bash".into(),
        kind: "builtin".into(),
        description: None,
        input_schema: None,
        permission_policy: PermissionPolicy::AlwaysAllow,
    }];
    let calls = 4;
    agent.script = (0..calls)
        .map(|i| json!({"content": [{"type": "tool_use", "id": format!("toolu_{i}"), "name": "bash", "input": {"command": format!("echo run-{i} >> runs.txt; sleep 1.5; echo finished-{i}")}}]}))
        .chain([json!({"content": [{"type": "text", "text": "all done"}]})])
        .collect();
    let id = SessionId::generate();
    t.log
        .create(
            &id,
            &Event::new(SessionCreated {
                agent,
                environment: EnvironmentConfig {
                    image: Some("herd-sandbox:busybox".into()),
                },
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

    let mut hand = spawn_hands(&t.server.url(), &host);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        tokio::time::sleep(Duration::from_millis(900)).await;
        if kills < 3 {
            // SIGKILL the hand while a tool runs, start another on the same host.
            let _ = hand.kill();
            let _ = hand.wait();
            hand = spawn_hands(&t.server.url(), &host);
            kills += 1;
        }
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
    };
    let _ = hand.kill();
    let _ = hand.wait();
    for i in 0..calls {
        let results: Vec<&AgentToolResult> = events
            .iter()
            .filter_map(|e| match &e.event.body {
                EventBody::AgentToolResult(r) if r.tool_use_id == format!("toolu_{i}") => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(results.len(), 1, "one result for toolu_{i}");
    }
    let texts: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::AgentMessage(m) => Some(content_text(&m.content)),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["all done"]);
    eprintln!(
        "{kills} hand kills; {} tool results for {calls} calls",
        calls
    );
    // Clean up this test's sandbox and volume.
    let sandboxes = herd::hands::sandbox::Sandboxes::connect(&host, Default::default())
        .await
        .unwrap();
    sandboxes.destroy(&id).await;
    b.abort();
}

/// Secrets in the brain's and the hand's environments never reach a sandbox: not its
/// environment, files, process list or `docker inspect`, and no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_in_the_workers_environments_never_reaches_a_sandbox() {
    ensure_busybox();
    const CANARY: &str = "canary-7f3d9e2a51";
    let t = TestNats::start().await;
    let brain = Brain::new(
        connect(&t.server.url()).await,
        BrainConfig {
            name: "canary-brain".into(),
            providers: herd::brain::provider::ProviderSettings {
                anthropic_api_key: Some(herd::config::Secret::new(CANARY)),
                openai_api_key: Some(herd::config::Secret::new(CANARY)),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let host = format!("canary-{}", uuid::Uuid::new_v4().simple());
    let mut hand = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["hands", "--host", &host, "--image", "herd-sandbox:busybox"])
        .env("HERD_NATS_URL", t.server.url())
        .env("ANTHROPIC_API_KEY", CANARY)
        .env("HERD_SECRET_TOKEN", CANARY)
        .env("GITHUB_TOKEN", CANARY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The pattern is assembled in the shell so the command itself never holds the canary.
    let (a, z) = CANARY.split_at(8);
    let dump = format!(
        "env; echo ---; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; ps; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; echo ---; cat /proc/mounts; echo ---; \
         p1={a}; p2={z}; for d in / /workspace /tmp; do find $d -xdev -type f 2>/dev/null; done | xargs grep -l \"$p1$p2\" 2>/dev/null; echo scan-done"
    );
    let mut agent = AgentConfig::new("scripted");
    agent.tools = vec![ToolConfig {
        name: "bash".into(),
        kind: "builtin".into(),
        description: None,
        input_schema: None,
        permission_policy: PermissionPolicy::AlwaysAllow,
    }];
    agent.script = vec![
        json!({"content": [{"type": "tool_use", "id": "toolu_dump", "name": "bash", "input": {"command": dump}}]}),
        json!({"content": [{"type": "text", "text": "dumped"}]}),
    ];
    let id = SessionId::generate();
    t.log
        .create(
            &id,
            &Event::new(SessionCreated {
                agent,
                environment: EnvironmentConfig {
                    image: Some("herd-sandbox:busybox".into()),
                },
                title: None,
                metadata: Default::default(),
            }),
        )
        .await
        .unwrap();
    let a = t
        .log
        .append_fact(&id, &user("show me everything"))
        .await
        .unwrap();
    herd::brain::wake::publish(
        &async_nats::jetstream::new(t.client.clone()),
        &id,
        a.last_seq,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
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
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = events.iter().find_map(|e| match &e.event.body {
        EventBody::AgentToolResult(r) => Some(content_text(&r.content)),
        _ => None,
    });
    let output = output.expect("the dump ran");
    assert!(
        output.contains("scan-done") && output.contains("/workspace"),
        "the dump ran whole: {output}"
    );
    assert!(
        !output.contains(CANARY),
        "the canary reached the sandbox:\n{output}"
    );
    for e in &events {
        assert!(
            !e.event.to_json().to_string().contains(CANARY),
            "the canary is in an event"
        );
    }
    let sandboxes = herd::hands::sandbox::Sandboxes::connect(&host, Default::default())
        .await
        .unwrap();
    let (_, container) = sandboxes
        .list()
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("the sandbox");
    let inspect = sandboxes
        .docker()
        .inspect_container(&container, None)
        .await
        .unwrap();
    assert!(
        !serde_json::to_string(&inspect).unwrap().contains(CANARY),
        "the canary is in docker inspect"
    );
    let _ = hand.kill();
    let _ = hand.wait();
    sandboxes.destroy(&id).await;
    b.abort();
}
