//! One session cannot starve a brain or a hand (N18): calls queued behind their session's
//! running call, and wakes queued behind their session's running model request, wait without
//! holding a worker's concurrency slot, so another session's turn goes on at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herd::brain::BrainConfig;
use herd::brain::provider::{ProviderSettings, Timeouts};
use herd::config::Secret;
use herd::event::*;
use herd::lab::mock_model::{MockModel, Reply};
use serde_json::{Value, json};

/// The bound this test states: another session's whole turn (two model requests and a tool
/// call) ends within this long while the hostile sessions hold their work.
const BOUND: Duration = Duration::from_secs(15);

fn text_of(body: &Value) -> String {
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_tools_and_many_wakes_of_one_session_do_not_delay_another() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let model = MockModel::start().await.unwrap();
    // HOG-TOOLS answers with eight 30 s calls at once; HOG-WAKES' model request takes 25 s;
    // VICTIM makes one quick call, then ends its turn.
    model.set_responder(|body| {
        let text = text_of(body);
        let answered = herd::lab::mock_model::answers_a_tool_result(body);
        if text.contains("HOG-TOOLS") && !answered {
            Reply::Turn {
                content: (0..8)
                    .map(|i| {
                        json!({"type": "tool_use", "id": format!("toolu_hog{i}"), "name": "bash",
                               "input": {"command": "sleep 30", "timeout_secs": 60}})
                    })
                    .collect(),
                stop_reason: "tool_use".into(),
            }
        } else if text.contains("HOG-WAKES") {
            Reply::Delayed(Duration::from_secs(25), Box::new(Reply::text("slow")))
        } else if text.contains("VICTIM") && !answered {
            Reply::tool_use("toolu_v", "bash", json!({"command": "echo quick"}))
        } else {
            Reply::text("done")
        }
    });
    let brain_cfg = BrainConfig {
        name: format!("fair-brain-{}", uuid::Uuid::new_v4().simple()),
        // Few slots, so 64 queued wakes would fill them many times over.
        concurrency: 4,
        providers: ProviderSettings {
            anthropic_api_key: Some(Secret::new("sk-test")),
            anthropic_base_url: Some(model.anthropic_url()),
            timeouts: Timeouts {
                idle: Duration::from_secs(60),
                total: Duration::from_secs(60),
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let brain = herd::brain::Brain::new(
        connect_as(&t.server, herd::auth::Role::Brain).await,
        brain_cfg,
    )
    .await
    .unwrap();
    let brain = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    // A hand with the default eight slots.
    let hand_host = host("fair");
    let (hands, sandboxes) = start_hands(
        &t,
        &hand_host,
        "herd-sandbox:busybox",
        Duration::from_secs(4),
    )
    .await;

    let mut agent = AgentConfig::new("claude-sonnet-4-5");
    agent.tools = vec![builtin("bash")];
    let hog_tools = create_session(&t, agent.clone(), Some("herd-sandbox:busybox")).await;
    send(&t, &hog_tools, "HOG-TOOLS").await;
    // Wait until its eight calls are in the log (they go to the hand at once).
    wait_until(&t, &hog_tools, 30, |events| {
        events
            .iter()
            .filter(|e| e.event.type_name() == "agent.tool_use")
            .count()
            == 8
    })
    .await;
    let hog_wakes = create_session(&t, agent.clone(), None).await;
    send(&t, &hog_wakes, "HOG-WAKES").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let js = async_nats::jetstream::new(t.client.clone());
    let last = t.log.last_sequence(&hog_wakes).await.unwrap();
    for _ in 0..64 {
        herd::bus::wake::publish(&js, &hog_wakes, last)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let victim = create_session(&t, agent, Some("herd-sandbox:busybox")).await;
    send(&t, &victim, "VICTIM").await;
    let events = wait_until(&t, &victim, 120, |events| {
        events.iter().any(|e| {
            matches!(&e.event.body, EventBody::SessionStatusIdle(i) if i.stop_reason.kind == "end_turn")
        })
    })
    .await;
    let took = started.elapsed();
    let (err, out) = tool_result(&events, "toolu_v");
    assert!(!err && out.contains("quick"), "{out}");
    eprintln!(
        "another session's turn (2 model requests, 1 tool call) took {took:?} behind 8 long tools and 64 wakes (bound {BOUND:?})"
    );
    assert!(took < BOUND, "the turn waited {took:?}");
    // The hog's calls are still queued one behind the other: nothing was cut short to make room.
    let hog = t.log.read_from(&hog_tools, 1).await.unwrap();
    let results = hog
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .filter(|e| e.event.type_name() == "agent.tool_result")
        .count();
    assert!(
        results < 8,
        "all eight 30 s calls cannot be done yet: {results}"
    );
    brain.abort();
    hands.abort();
    sandboxes.destroy(&hog_tools).await;
    sandboxes.destroy(&victim).await;
}
