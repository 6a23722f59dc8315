//! `herd check` against a real nats-server: sound sessions written by a real brain pass, and
//! each kind of damage done by hand to a log is found and named.

mod common;

use std::process::{Command, Output};

use common::*;
use herd::event::*;
use herd::session::{Outcome, Rule};
use serde_json::{Value, json};

fn herd(url: &impl herd::lab::local_server::Target, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .envs(common::herd_env(url))
        .env_remove("HERD_CONFIG")
        .output()
        .unwrap()
}

/// A session written by hand, event by event, as no brain would.
async fn hand_made(t: &TestNats, events: Vec<EventBody>) -> SessionId {
    let (id, _) = new_session(&t.log).await;
    for body in events {
        t.log.append_fact(&id, &Event::new(body)).await.unwrap();
    }
    id
}

fn call(id: &str) -> EventBody {
    AgentToolUse {
        tool_use_id: id.into(),
        name: "bash".into(),
        input: json!({"command": "true"}),
        evaluated_permission: Some(EvaluatedPermission::Allow),
    }
    .into()
}

fn result(id: &str) -> EventBody {
    AgentToolResult {
        tool_use_id: id.into(),
        content: text("ok"),
        is_error: false,
        output_ref: None,
    }
    .into()
}

fn span_start() -> EventBody {
    SpanModelRequestStart { model: None }.into()
}

fn span_end() -> EventBody {
    SpanModelRequestEnd {
        model_request_start_id: None,
        model_usage: Usage::default(),
        is_error: false,
    }
    .into()
}

fn idle() -> EventBody {
    SessionStatusIdle {
        stop_reason: StopReason {
            kind: "end_turn".into(),
            event_ids: vec![],
        },
    }
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sound_logs_pass_and_each_broken_rule_is_named() {
    let t = TestNats::start().await;
    let url = &t.server;
    let brain = start_brain(&t, "check-brain").await;
    // Two sound sessions, written by a real brain: two turns each.
    let mut sound = Vec::new();
    for _ in 0..2 {
        let id = scripted_session(
            &t,
            &[],
            vec![text_turn("one"), text_turn("two")],
            None,
            "hi",
        )
        .await;
        wait_idles(&t, &id, 1).await;
        send(&t, &id, "again").await;
        wait_idles(&t, &id, 2).await;
        sound.push(id);
    }
    let out = herd(&url, &["check", "--all", "--settled"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("checked 2 session(s)") && stdout.contains("0 violation(s)"),
        "{stdout}"
    );

    // Damage, one kind per session.
    let running: EventBody = SessionStatusRunning {}.into();
    let unanswered = hand_made(
        &t,
        vec![
            running.clone(),
            span_start(),
            call("toolu_u"),
            span_end(),
            idle(),
        ],
    )
    .await;
    let twice = hand_made(
        &t,
        vec![
            running.clone(),
            span_start(),
            call("toolu_d"),
            span_end(),
            result("toolu_d"),
            result("toolu_d"),
        ],
    )
    .await;
    let cut = hand_made(
        &t,
        vec![running.clone(), span_start(), call("toolu_c"), idle()],
    )
    .await;
    let (garbage, _) = new_session(&t.log).await;
    let js = async_nats::jetstream::new(t.client.clone());
    js.publish(
        format!("herd.session.{garbage}.user.message"),
        "not an event".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // A session left mid-turn: fine, unless settled is required.
    let busy = hand_made(&t, vec![running, span_start()]).await;

    let out = herd(&url, &["check", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for want in [
        format!("{unanswered} FAILED"),
        "unanswered call: the call toolu_u".into(),
        format!("{twice} FAILED"),
        "duplicate result".into(),
        format!("{cut} FAILED"),
        "broken step".into(),
        format!("{garbage} FAILED"),
        "invalid record".into(),
        "checked 7 session(s)".into(),
    ] {
        assert!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    for ok in sound.iter().chain([&busy]) {
        assert!(!stdout.contains(ok.as_str()), "{ok} reported:\n{stdout}");
    }
    assert!(stderr.contains("violation(s) in 4 session(s)"), "{stderr}");

    // JSON: the same verdicts, machine-readable.
    let out = herd(&url, &["check", "--all", "--settled", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["sessions"], 7);
    assert_eq!(v["summary"]["sessions_with_violations"], 5, "{v:#}");
    let rules_of = |id: &SessionId| -> Vec<String> {
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session_id"] == id.as_str())
            .unwrap()["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["rule"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(rules_of(&busy), ["not_settled"]);
    assert_eq!(rules_of(&twice), ["duplicate_result", "not_settled"]);
    assert_eq!(rules_of(&garbage), ["invalid_record"]);
    assert_eq!(rules_of(&sound[0]), Vec::<String>::new());

    // One session at a time, through the library too.
    let out = herd(&url, &["check", sound[1].as_str(), "--settled", "-v"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("idle (end_turn)"));
    let report = t.log.check(&cut, false).await.unwrap();
    assert!(report.violations.iter().any(|v| v.rule == Rule::BrokenStep));
    let report = t.log.check(&busy, false).await.unwrap();
    assert_eq!(
        (report.outcome, report.violations.len()),
        (Outcome::Running, 0)
    );

    // Bad input: clear errors.
    let out = herd(&url, &["check", "not.a.session"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid session id"));
    let out = herd(&url, &["check", "sesn_nothere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sesn_nothere"));
    let out = herd(&url, &["check"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a session id or --all is required"
    );
    brain.abort();
}
