//! The warm pool (issue 16): a session's first tool call takes a sandbox made before it asked;
//! the pool refills; a pool sandbox is bound to one session and never seen by another.

mod common;

use std::time::Duration;

use common::*;
use herd::event::*;
use serde_json::json;

fn provisioned(events: &[StoredEvent]) -> Vec<SandboxProvisioned> {
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SandboxProvisioned(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

async fn pool_of(sandboxes: &herd::hands::sandbox::Sandboxes, not: &[String]) -> String {
    for _ in 0..200 {
        let pooled = sandboxes.pooled().await.unwrap();
        if let Some((id, _, _)) = pooled.into_iter().find(|(id, _, _)| !not.contains(id)) {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the warm pool never held a new sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_takes_a_pool_sandbox_that_no_other_session_ever_sees() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let _brain = start_brain(&t, "pool-brain").await;
    let h = host("pool");
    let image = "herd-sandbox:busybox";
    let (hands, sandboxes) = start_hands_with(
        &t,
        herd::hands::HandsConfig {
            warm_pool: vec![(image.into(), 1)],
            ..hands_config(&h, image)
        },
    )
    .await;
    let p1 = pool_of(&sandboxes, &[]).await;

    let a = scripted_session(
        &t,
        &["bash"],
        vec![
            tool_turn(
                "toolu_a1",
                "bash",
                json!({"command": "echo mine > owned && echo wrote"}),
            ),
            text_turn("one"),
            tool_turn("toolu_a2", "bash", json!({"command": "cat owned"})),
            text_turn("two"),
            tool_turn("toolu_a3", "bash", json!({"command": "cat owned"})),
            text_turn("three"),
        ],
        Some(image),
        "first",
    )
    .await;
    let events = wait_idles(&t, &a, 1).await;
    let (err, out) = tool_result(&events, "toolu_a1");
    assert!(!err && out.contains("wrote"), "{out}");
    let p = provisioned(&events);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].container, p1, "served from the pool");
    assert!(p[0].from_pool && p[0].volume.is_some(), "{:?}", p[0]);

    // The pool refills with a new sandbox; the next session gets that one, not A's.
    let p2 = pool_of(&sandboxes, std::slice::from_ref(&p1)).await;
    assert_ne!(p2, p1);
    let b = scripted_session(
        &t,
        &["bash"],
        vec![
            tool_turn(
                "toolu_b1",
                "bash",
                json!({"command": "ls -A /workspace; cat owned 2>/dev/null || echo none here"}),
            ),
            text_turn("b"),
        ],
        Some(image),
        "second",
    )
    .await;
    let events = wait_idles(&t, &b, 1).await;
    let (_, out) = tool_result(&events, "toolu_b1");
    assert!(out.contains("none here") && !out.contains("mine"), "{out}");
    // `ls -A` lists names: A's file is not even there.
    assert!(!out.contains("owned"), "{out}");
    let pb = provisioned(&events);
    assert_eq!(pb.len(), 1);
    assert_eq!(pb[0].container, p2);
    assert!(pb[0].from_pool);
    assert_ne!(pb[0].volume, p[0].volume);

    // A's next call runs in A's sandbox still, with A's file.
    send(&t, &a, "again").await;
    let events = wait_idles(&t, &a, 2).await;
    let (err, out) = tool_result(&events, "toolu_a2");
    assert!(!err && out.contains("mine"), "{out}");
    assert_eq!(provisioned(&events).len(), 1, "the same sandbox");
    // A's sandbox dies: its replacement keeps A's pool volume, files and all.
    assert!(
        sandboxes
            .list()
            .await
            .unwrap()
            .iter()
            .any(|(s, _)| s == a.as_str())
    );
    sandboxes.remove_sandbox(&a).await;
    send(&t, &a, "once more").await;
    let events = wait_idles(&t, &a, 3).await;
    let (err, out) = tool_result(&events, "toolu_a3");
    assert!(!err && out.contains("mine"), "{out}");
    let pa = provisioned(&events);
    assert_eq!(pa.len(), 2);
    assert!(!pa[1].from_pool && pa[1].volume == pa[0].volume, "{pa:?}");
    hands.abort();
    for s in [&a, &b] {
        sandboxes.destroy(s).await;
    }
    sandboxes.drain_pool().await;
    assert!(sandboxes.pooled().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_never_share_a_pool_sandbox() {
    ensure_image("busybox");
    let image = "herd-sandbox:busybox";
    let sandboxes = herd::hands::sandbox::Sandboxes::connect(
        &host("race"),
        herd::hands::sandbox::SandboxConfig {
            default_image: image.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for _ in 0..3 {
        sandboxes.add_pooled(image).await.unwrap();
    }
    let sessions: Vec<SessionId> = (0..6).map(|_| SessionId::generate()).collect();
    let claims = futures_util::future::join_all(
        sessions
            .iter()
            .map(|s| sandboxes.ensure_with(s, Some(image), None, None)),
    )
    .await;
    let claims: Vec<_> = claims.into_iter().map(Result::unwrap).collect();
    let ids: std::collections::HashSet<&String> = claims.iter().map(|c| &c.id).collect();
    let volumes: std::collections::HashSet<&String> = claims.iter().map(|c| &c.volume).collect();
    assert_eq!(ids.len(), 6, "every session its own container");
    assert_eq!(volumes.len(), 6, "every session its own volume");
    let from_pool = claims.iter().filter(|c| c.from_pool).count();
    assert_eq!(
        from_pool, 3,
        "the three pool sandboxes went to three sessions"
    );
    assert!(sandboxes.pooled().await.unwrap().is_empty());
    // A session whose id looks like a pool name is not a pool sandbox.
    let lookalike = SessionId::parse("pool-abc").unwrap();
    let s = sandboxes
        .ensure_with(&lookalike, Some(image), None, None)
        .await
        .unwrap();
    assert!(!s.from_pool);
    assert!(sandboxes.pooled().await.unwrap().is_empty());
    for s in sessions.iter().chain([&lookalike]) {
        sandboxes.destroy(s).await;
    }
}
