//! Several hand hosts: a session's calls follow its sandbox; a host that dies hands its
//! sessions to the pool, and the model is told its sandbox was replaced.

mod common;

use std::time::Duration;

use common::*;
use herd::event::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_the_sandbox_and_a_dead_host_hands_over_to_the_pool() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let b = start_brain(&t, "route-brain").await;
    let ttl = Duration::from_secs(2);
    let (host_a, host_b) = (host("a"), host("b"));
    let (hand_a, sb_a) = start_hands(&t, &host_a, "herd-sandbox:busybox", ttl).await;
    let (hand_b, sb_b) = start_hands(&t, &host_b, "herd-sandbox:busybox", ttl).await;

    let mut script = vec![tool_turn(
        "toolu_w",
        "write",
        json!({"path": "f.txt", "content": "routed"}),
    )];
    for i in 0..5 {
        script.push(tool_turn(
            &format!("toolu_c{i}"),
            "bash",
            json!({"command": "cat f.txt"}),
        ));
    }
    script.push(text_turn("read it five times"));
    script.push(tool_turn(
        "toolu_after",
        "bash",
        json!({"command": "cat f.txt; echo"}),
    ));
    script.push(text_turn("after"));
    let id = scripted_session(&t, &["bash", "write"], script, None, "write and read").await;

    let events = wait_idles(&t, &id, 1).await;
    for i in 0..5 {
        assert_eq!(
            tool_result(&events, &format!("toolu_c{i}")).1,
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

    // The turn's workspace snapshot is saved before its host goes.
    wait_until(&t, &id, 60, |ev| {
        ev.iter()
            .any(|e| matches!(e.event.body, EventBody::SandboxWorkspaceSaved(_)))
    })
    .await;
    // The host holding the sandbox dies (its worker stops; its registry entry expires).
    if holder == host_a {
        hand_a.abort()
    } else {
        hand_b.abort()
    }
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    send(&t, &id, "read it again").await;
    let events = wait_idles(&t, &id, 2).await;
    let after = tool_result(&events, "toolu_after").1;
    assert!(
        after.contains(&format!("sandbox (on host {holder}) is gone")),
        "{after}"
    );
    assert!(
        after.contains("restored from the snapshot") && after.contains("routed"),
        "the other host gets the workspace back from its snapshot: {after}"
    );

    // A job stranded on a dead host's subject is moved to the pool by a live hand.
    let call = Event::new(AgentToolUse {
        tool_use_id: "toolu_stranded".into(),
        name: "bash".into(),
        input: json!({"command": "echo rescued"}),
        evaluated_permission: Some(EvaluatedPermission::Allow),
    });
    let seq = t.log.append_fact(&id, &call).await.unwrap().last_seq;
    let job = herd::bus::jobs::ToolJob {
        session_id: id.clone(),
        tool_use_id: "toolu_stranded".into(),
        name: "bash".into(),
        input: json!({"command": "echo rescued"}),
        tool_use_seq: seq,
        image: None,
    };
    let js = async_nats::jetstream::new(t.client.clone());
    js.publish(
        format!("herd.tools.host.{holder}.{id}.toolu_stranded"),
        serde_json::to_vec(&job).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let events = wait_until(&t, &id, 20, |events| {
        events.iter().any(|e| matches!(&e.event.body, EventBody::AgentToolResult(r) if r.tool_use_id == "toolu_stranded"))
    })
    .await;
    assert!(tool_result(&events, "toolu_stranded").1.contains("rescued"));
    hand_a.abort();
    hand_b.abort();
    sb_a.destroy(&id).await;
    sb_b.destroy(&id).await;
    b.abort();
}
