//! Real `herd hands` processes: killed with SIGKILL in the middle of tools (every call still
//! gets exactly one result), and holding secrets in their environment (none reaches a sandbox).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use herd::brain::provider::ProviderSettings;
use herd::brain::{Brain, BrainConfig};
use herd::config::Secret;
use herd::event::*;
use serde_json::json;

const IMAGE: &str = "herd-sandbox:busybox";

fn spawn_hands(
    url: &impl herd::lab::local_server::Target,
    host: &str,
    extra_env: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args([
        "hands",
        "--host",
        host,
        "--ack-wait-secs",
        "2",
        "--max-deliver",
        "20",
        "--image",
        IMAGE,
    ])
    .envs(herd_env(url))
    .env("HERD_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_killed_mid_tool_still_answer_each_call_once() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let b = start_brain(&t, "crash-brain").await;
    let host = host("crash");
    // Each tool call takes 1.5 s, so kills land while tools run.
    let calls = 4;
    let script: Vec<_> = (0..calls)
        .map(|i| tool_turn(&format!("toolu_{i}"), "bash", json!({"command": format!("echo run-{i} >> runs.txt; sleep 1.5; echo finished-{i}")})))
        .chain([text_turn("all done")])
        .collect();
    let id = scripted_session(&t, &["bash"], script, Some(IMAGE), "go").await;

    let mut hand = spawn_hands(&t.server, &host, &[]);
    let mut kills = 0;
    while kills < 3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        // SIGKILL the hand while a tool runs, start another on the same host.
        stop(hand);
        hand = spawn_hands(&t.server, &host, &[]);
        kills += 1;
    }
    let events = wait_idles(&t, &id, 1).await;
    stop(hand);
    for i in 0..calls {
        let results = events
            .iter()
            .filter(|e| matches!(&e.event.body, EventBody::AgentToolResult(r) if r.tool_use_id == format!("toolu_{i}")))
            .count();
        assert_eq!(results, 1, "one result for toolu_{i}");
    }
    let texts: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::AgentMessage(m) => Some(content_text(&m.content)),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["all done"]);
    eprintln!("{kills} hand kills; one result for each of {calls} calls");
    herd::hands::sandbox::Sandboxes::connect(&host, Default::default())
        .await
        .unwrap()
        .destroy(&id)
        .await;
    b.abort();
}

/// Secrets in the brain's and the hand's environments never reach a sandbox: not its
/// environment, files, process list or `docker inspect`, and no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_in_the_workers_environments_never_reaches_a_sandbox() {
    ensure_image("busybox");
    const CANARY: &str = "canary-7f3d9e2a51";
    let t = TestNats::start().await;
    let brain = Brain::new(
        connect_as(&t.server, herd::auth::Role::Brain).await,
        BrainConfig {
            name: "canary-brain".into(),
            providers: ProviderSettings {
                anthropic_api_key: Some(Secret::new(CANARY)),
                openai_api_key: Some(Secret::new(CANARY)),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let host = host("canary");
    let hand = spawn_hands(
        &t.server,
        &host,
        &[
            ("ANTHROPIC_API_KEY", CANARY),
            ("HERD_SECRET_TOKEN", CANARY),
            ("GITHUB_TOKEN", CANARY),
        ],
    );
    // The pattern is assembled in the shell so the command itself never holds the canary.
    let (a, z) = CANARY.split_at(8);
    let dump = format!(
        "env; echo ---; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; ps; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; echo ---; cat /proc/mounts; echo ---; \
         p1={a}; p2={z}; for d in / /workspace /tmp; do find $d -xdev -type f 2>/dev/null; done | xargs grep -l \"$p1$p2\" 2>/dev/null; echo scan-done"
    );
    let script = vec![
        tool_turn("toolu_dump", "bash", json!({"command": dump})),
        text_turn("dumped"),
    ];
    let id = scripted_session(&t, &["bash"], script, Some(IMAGE), "show me everything").await;
    let events = wait_idles(&t, &id, 1).await;
    let output = tool_result(&events, "toolu_dump").1;
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
    stop(hand);
    sandboxes.destroy(&id).await;
    b.abort();
}
