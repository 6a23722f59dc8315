//! Recovery in seconds with the default flags: a `herd brain` killed with SIGKILL while the
//! model is being called, and a `herd hands` killed while a tool runs, each replaced at once;
//! the session carries on within a few seconds, and every call gets exactly one result.
//! The stall is asserted loosely (machines are noisy) and printed precisely.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use herd::event::*;
use herd::lab::mock_model::{MockModel, Reply};
use serde_json::json;

const IMAGE: &str = "herd-sandbox:busybox";

/// A worker process with nothing but the default flags (and its host name, for a hand).
fn worker(t: &TestNats, args: &[&str], model: &MockModel) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(args)
            .envs(herd_env(&t.server))
            .env("ANTHROPIC_BASE_URL", model.anthropic_url())
            .env("ANTHROPIC_API_KEY", "sk-recovery-test")
            .env("HERD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Seconds from `since` to the first event of the session after sequence `after`.
async fn resumed(t: &TestNats, id: &SessionId, after: u64, since: Instant) -> Duration {
    wait_until(t, id, 60, |events| events.iter().any(|e| e.seq > after)).await;
    since.elapsed()
}

async fn last_seq(t: &TestNats, id: &SessionId) -> u64 {
    t.log.last_sequence(id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_are_replaced_within_seconds_at_the_default_flags() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let model = MockModel::start().await.unwrap();
    // Turn: a slow model call, then a slow tool, then the answer.
    model.set_delay(Duration::from_millis(2_500));
    // Answered by what the request holds, not in order: the killed brain's request is made
    // again by its replacement.
    model.set_responder(|body| {
        if herd::lab::mock_model::answers_a_tool_result(body) {
            Reply::text("finished")
        } else {
            Reply::tool_use(
                "toolu_slow",
                "bash",
                json!({"command": "sleep 3; echo done"}),
            )
        }
    });
    let host = host("recovery");
    let mut brain = worker(&t, &["brain"], &model);
    let mut hand = worker(&t, &["hands", "--host", &host, "--image", IMAGE], &model);

    let mut agent = AgentConfig::new("claude-recovery");
    agent.tools = vec![builtin("bash")];
    let id = create_session(&t, agent, Some(IMAGE)).await;
    send(&t, &id, "run the slow thing").await;

    // The brain, while the model is called: kill it and start another at once.
    wait_until(&t, &id, 30, |events| {
        events
            .iter()
            .any(|e| e.event.type_name() == "span.model_request_start")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = last_seq(&t, &id).await;
    let killed = Instant::now();
    brain.kill();
    brain = worker(&t, &["brain"], &model);
    let brain_stall = resumed(&t, &id, before, killed).await;

    // The hand, while the tool runs.
    wait_until(&t, &id, 60, |events| {
        events
            .iter()
            .any(|e| e.event.type_name() == "sandbox.provisioned")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = last_seq(&t, &id).await;
    let killed = Instant::now();
    hand.kill();
    hand = worker(&t, &["hands", "--host", &host, "--image", IMAGE], &model);
    wait_until(&t, &id, 60, |events| {
        events
            .iter()
            .any(|e| e.seq > before && e.event.type_name() == "agent.tool_result")
    })
    .await;
    let hand_stall = killed.elapsed();
    let events = wait_idles(&t, &id, 1).await;
    let (is_error, text) = tool_result(&events, "toolu_slow");
    eprintln!(
        "stall after SIGKILL, default flags: brain mid-call {:.2} s to the next event; hand mid-tool {:.2} s to the call's result (the tool itself takes 3 s)",
        brain_stall.as_secs_f64(),
        hand_stall.as_secs_f64()
    );
    assert!(!is_error && text.contains("done"), "{text}");
    let results = events
        .iter()
        .filter(|e| e.event.type_name() == "agent.tool_result")
        .count();
    assert_eq!(results, 1, "exactly one result for the call");
    // Loose bounds: the first event after a brain kill is the redelivered wake's model request
    // start, after ack_wait (3 s) plus the model's 2.5 s; the hand's job comes back after
    // ack_wait and runs its 3 s again.
    assert!(brain_stall < Duration::from_secs(15), "{brain_stall:?}");
    assert!(hand_stall < Duration::from_secs(20), "{hand_stall:?}");
    let report = t.log.check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    drop(brain);
    drop(hand);
    if let Ok(s) = herd::hands::sandbox::Sandboxes::connect(&host, Default::default()).await {
        s.remove_sandbox(&id).await;
    }
}
