//! An agent end to end: brain, hands and a real sandbox, through NATS, on the scripted model.

mod common;

use std::time::Duration;

use common::*;
use herd::event::*;
use serde_json::json;

const DEBIAN: &str = "herd-sandbox:debian";
const BUSYBOX: &str = "herd-sandbox:busybox";
const TTL: Duration = Duration::from_secs(10);

/// A scripted agent writes a Python program, runs it, edits it and runs it again; every tool
/// call runs in the session's hardened sandbox and lands one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_agent_writes_runs_edits_and_reruns_a_program() {
    ensure_image("debian");
    let t = TestNats::start().await;
    let b = start_brain(&t, "e2e-brain").await;
    let (h, sandboxes) = start_hands(&t, &host("e2e"), DEBIAN, TTL).await;
    let script = vec![
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
        text_turn("Done: it printed goodbye, 42."),
    ];
    let id = scripted_session(
        &t,
        &["bash", "read", "write", "edit"],
        script,
        Some(DEBIAN),
        "Write a Python program and run it.",
    )
    .await;
    let events = wait_idles(&t, &id, 1).await;
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::AgentToolResult(r) => Some(r.tool_use_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["toolu_w", "toolu_r1", "toolu_e", "toolu_r2"]);
    for id in ids {
        assert!(!tool_result(&events, id).0, "{id} failed");
    }
    assert!(tool_result(&events, "toolu_r1").1.contains("hello, 42"));
    let r2 = tool_result(&events, "toolu_r2").1;
    assert!(r2.contains("goodbye, 42") && r2.contains("1000"), "{r2}");
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
    ensure_image("busybox");
    let t = TestNats::start().await;
    let b = start_brain(&t, "kill-brain").await;
    let (h, sandboxes) = start_hands(&t, &host("kill"), BUSYBOX, TTL).await;
    let script = vec![
        tool_turn(
            "toolu_1",
            "write",
            json!({"path": "kept.txt", "content": "still here"}),
        ),
        tool_turn("toolu_2", "bash", json!({"command": "sleep 20"})),
        tool_turn("toolu_3", "bash", json!({"command": "cat kept.txt"})),
        text_turn("recovered"),
    ];
    let id = scripted_session(&t, &["bash", "write"], script, None, "go").await;
    // Kill the sandbox while `sleep 20` runs.
    wait_until(&t, &id, 60, |events| {
        events.iter().any(
            |e| matches!(&e.event.body, EventBody::AgentToolUse(u) if u.tool_use_id == "toolu_2"),
        )
    })
    .await;
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
    let events = wait_idles(&t, &id, 1).await;
    let (err2, text2) = tool_result(&events, "toolu_2");
    assert!(err2 && text2.contains("sandbox was lost"), "{text2}");
    let (err3, text3) = tool_result(&events, "toolu_3");
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
    ensure_image("busybox");
    let t = TestNats::start().await;
    let b = start_brain(&t, "blob-brain").await;
    let (h, sandboxes) = start_hands(&t, &host("blob"), BUSYBOX, TTL).await;
    let script = vec![
        tool_turn("toolu_big", "bash", json!({"command": "seq 1 100000"})),
        text_turn("counted"),
    ];
    let id = scripted_session(&t, &["bash"], script, None, "count").await;
    let events = wait_idles(&t, &id, 1).await;
    let result = events
        .iter()
        .find_map(|e| match &e.event.body {
            EventBody::AgentToolResult(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
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

/// A session keeps large outputs in the object store only up to its quota: past it, an
/// output keeps its head and tail in the event with a note saying why, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_stop_at_the_sessions_blob_quota() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let b = start_brain(&t, "quota-brain").await;
    // `seq 1 100000` prints 588,895 bytes (a little more with the exit code around it): one
    // fits in 700,000, two do not.
    let (h, sandboxes) = start_hands_with(
        &t,
        herd::hands::HandsConfig {
            host: host("quota"),
            blob_quota: 700_000,
            sandbox: herd::hands::sandbox::SandboxConfig {
                default_image: BUSYBOX.into(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let script = vec![
        tool_turn("toolu_big1", "bash", json!({"command": "seq 1 100000"})),
        tool_turn("toolu_big2", "bash", json!({"command": "seq 1 100000"})),
        text_turn("counted twice"),
    ];
    let id = scripted_session(&t, &["bash"], script, None, "count twice").await;
    let events = wait_idles(&t, &id, 1).await;
    let result = |id: &str| {
        events
            .iter()
            .find_map(|e| match &e.event.body {
                EventBody::AgentToolResult(r) if r.tool_use_id == id => Some(r.clone()),
                _ => None,
            })
            .unwrap()
    };
    let first = result("toolu_big1")
        .output_ref
        .expect("the first is stored")
        .size;
    assert!(first > 588_895 && first < 700_000, "{first}");
    let second = result("toolu_big2");
    assert!(
        second.output_ref.is_none(),
        "over the quota: nothing stored"
    );
    let text = content_text(&second.content);
    assert!(
        text.contains(&format!(
            "was not stored: this session's large outputs already hold {first} of its 700000-byte quota"
        ))
            && text.contains("\n1\n2\n3\n")
            && text.contains("100000"),
        "{}",
        &text[..200.min(text.len())]
    );
    sandboxes.destroy(&id).await;
    b.abort();
    h.abort();
}
