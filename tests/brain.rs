//! The brain plane against a real nats-server and the local mock model server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use herd::brain::provider::{ProviderSettings, Timeouts};
use herd::brain::{Brain, BrainConfig};
use herd::config::Secret;
use herd::event::*;
use herd::lab::mock_model::{MockModel, Reply};
use herd::session::SessionLog;
use serde_json::{Value, json};

const CANARY_KEY: &str = "sk-canary-3f9a1c7e";

struct Rig {
    nats: TestNats,
    model: MockModel,
    brains: Vec<tokio::task::JoinHandle<()>>,
}

fn brain_config(model: &MockModel) -> BrainConfig {
    BrainConfig {
        name: format!("test-brain-{}", uuid::Uuid::new_v4().simple()),
        ack_wait: Duration::from_secs(3),
        max_deliver: 5,
        model_retry_base: Duration::from_millis(50),
        model_retry_max: Duration::from_millis(400),
        providers: ProviderSettings {
            anthropic_api_key: Some(Secret::new(CANARY_KEY)),
            anthropic_base_url: Some(model.anthropic_url()),
            openai_api_key: Some(Secret::new(CANARY_KEY)),
            openai_base_url: Some(model.openai_url()),
            timeouts: Timeouts {
                idle: Duration::from_secs(1),
                total: Duration::from_secs(10),
            },
        },
        ..Default::default()
    }
}

impl Rig {
    async fn start() -> Self {
        let nats = TestNats::start().await;
        let model = MockModel::start().await.unwrap();
        let mut rig = Self {
            nats,
            model,
            brains: vec![],
        };
        rig.add_brain().await;
        rig
    }

    async fn add_brain(&mut self) {
        let cfg = brain_config(&self.model);
        self.add_brain_with(cfg).await;
    }

    async fn add_brain_with(&mut self, cfg: BrainConfig) {
        let client = connect_as(&self.nats.server, herd::auth::Role::Brain).await;
        let brain = Brain::new(client, cfg).await.unwrap();
        self.brains.push(tokio::spawn(async move {
            brain.run(std::future::pending()).await.unwrap();
        }));
    }

    fn log(&self) -> &SessionLog {
        &self.nats.log
    }

    async fn session(&self, agent: AgentConfig) -> SessionId {
        let id = SessionId::generate();
        let e = Event::new(SessionCreated::new(agent));
        self.log().create(&id, &e).await.unwrap();
        id
    }

    /// Publishes a wake carrying `events`, as another system would (plain JSON).
    async fn wake(&self, id: &SessionId, events: &[Event]) {
        let payload = json!({"events": events.iter().map(Event::to_json).collect::<Vec<_>>()});
        let js = async_nats::jetstream::new(self.nats.client.clone());
        js.publish(herd::bus::subjects::wake(id), payload.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn say(&self, id: &SessionId, text: &str) {
        self.wake(id, &[user(text)]).await;
    }

    /// Waits until the session has `idles` status_idle events and is idle.
    async fn idle(&self, id: &SessionId, idles: usize) -> Vec<StoredEvent> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events: Vec<StoredEvent> = self
                .log()
                .read_from(id, 1)
                .await
                .unwrap()
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            let n = events
                .iter()
                .filter(|e| e.event.type_name() == "session.status_idle")
                .count();
            let last_idle = events
                .last()
                .is_some_and(|e| e.event.type_name() == "session.status_idle");
            if n >= idles && last_idle {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "session never reached {idles} idles: {}",
                types(&events).join(", ")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for b in &self.brains {
            b.abort();
        }
    }
}

fn types(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.type_name()).collect()
}

fn texts(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::AgentMessage(m) => Some(content_text(&m.content)),
            _ => None,
        })
        .collect()
}

fn stop_reasons(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SessionStatusIdle(i) => Some(i.stop_reason.kind.clone()),
            _ => None,
        })
        .collect()
}

fn agent_with(model: &str, tools: Vec<ToolConfig>) -> AgentConfig {
    let mut a = AgentConfig::new(model);
    a.system = Some("You are a test agent.".into());
    a.tools = tools;
    a
}

fn tool(name: &str, kind: &str, policy: PermissionPolicy) -> ToolConfig {
    ToolConfig {
        name: name.into(),
        kind: kind.into(),
        description: Some(format!("the {name} tool")),
        input_schema: Some(json!({"type": "object"})),
        permission_policy: policy,
        mcp_server_name: None,
        default_config: None,
        configs: Vec::new(),
    }
}

fn request_texts(body: &Value) -> String {
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_end_to_end_over_the_anthropic_protocol() {
    let rig = Rig::start().await;
    rig.model.push([Reply::text("Hello from the model.")]);
    let id = rig.session(agent_with("claude-test", vec![])).await;
    rig.say(&id, "hi there").await;
    let events = rig.idle(&id, 1).await;
    assert_eq!(
        types(&events),
        [
            "session.created",
            "user.message",
            "session.status_running",
            "span.model_request_start",
            "agent.message",
            "span.model_request_end",
            "session.usage",
            "session.status_idle",
        ]
    );
    assert_eq!(texts(&events), ["Hello from the model."]);
    assert_eq!(stop_reasons(&events), ["end_turn"]);

    let req = &rig.model.received()[0];
    assert_eq!(req.path, "/v1/messages");
    let header = |k: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-api-key").as_deref(), Some(CANARY_KEY));
    assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(req.body["model"], "claude-test");
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["system"][0]["text"], "You are a test agent.");
    assert_eq!(req.body["messages"][0]["content"][0]["text"], "hi there");

    // The key never reaches the log.
    for e in &events {
        assert!(!e.event.to_json().to_string().contains(CANARY_KEY));
    }
    let usage = events.iter().find_map(|e| match &e.event.body {
        EventBody::SessionUsage(u) => Some(u.usage),
        _ => None,
    });
    assert_eq!(usage.unwrap().output_tokens, 10);

    // A second message continues the same conversation.
    rig.model.push([Reply::text("Second answer.")]);
    rig.say(&id, "and again").await;
    let events = rig.idle(&id, 2).await;
    assert_eq!(texts(&events), ["Hello from the model.", "Second answer."]);
    let second = &rig.model.received()[1].body["messages"];
    assert_eq!(second.as_array().unwrap().len(), 3);
    assert_eq!(second[1]["role"], "assistant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_over_the_openai_protocol_with_a_tool_and_a_fake_hand() {
    let rig = Rig::start().await;
    let mut agent = agent_with(
        "llama-test",
        vec![tool("bash", "builtin", PermissionPolicy::AlwaysAllow)],
    );
    agent.provider = Some("openai".into());
    let id = rig.session(agent).await;
    rig.model.push([
        Reply::tool_use("call_1", "bash", json!({"command": "echo hi"})),
        Reply::text("The command printed hi."),
    ]);
    // A stand-in for the hands plane (which is issue 4): take the job, append its result under
    // the derived id, wake the session.
    let hand = fake_hand(&rig).await;
    rig.say(&id, "run echo").await;
    let events = rig.idle(&id, 1).await;
    hand.abort();
    assert_eq!(
        types(&events)[2..],
        [
            "session.status_running",
            "span.model_request_start",
            "agent.tool_use",
            "span.model_request_end",
            "agent.tool_result",
            "span.model_request_start",
            "agent.message",
            "span.model_request_end",
            "session.usage",
            "session.status_idle",
        ]
    );
    let received = rig.model.received();
    assert!(received[0].path.ends_with("/v1/chat/completions"));
    let header = |k: &str| {
        received[0]
            .headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("authorization").as_deref(),
        Some(format!("Bearer {CANARY_KEY}").as_str())
    );
    let second = &received[1].body["messages"];
    assert_eq!(second[2]["tool_calls"][0]["function"]["name"], "bash");
    assert_eq!(
        second[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "ran: echo hi"})
    );
}

async fn fake_hand(rig: &Rig) -> tokio::task::JoinHandle<()> {
    let js = async_nats::jetstream::new(rig.nats.client.clone());
    let stream = js.get_stream("HERD_TOOLS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("fake-hand".into()),
            filter_subject: "herd.tools.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let log = rig.nats.second_log().await;
    tokio::spawn(async move {
        let mut msgs = consumer.messages().await.unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            let job: herd::bus::jobs::ToolJob = serde_json::from_slice(&m.payload).unwrap();
            // A stand-in for tool calls only: a turn's workspace snapshot has no result.
            if job.name == herd::bus::workspace_jobs::JOB {
                m.ack().await.unwrap();
                continue;
            }
            let result = Event::with_id(
                herd::bus::jobs::result_event_id(&job.session_id, &job.tool_use_id).unwrap(),
                AgentToolResult {
                    tool_use_id: job.tool_use_id.clone(),
                    content: vec![ContentBlock::text(format!(
                        "ran: {}",
                        job.input["command"].as_str().unwrap_or("")
                    ))],
                    is_error: false,
                    output_ref: None,
                },
            );
            let a = log.append_fact(&job.session_id, &result).await.unwrap();
            herd::bus::wake::publish(&js, &job.session_id, a.last_seq)
                .await
                .unwrap();
            m.ack().await.unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_tools_park_the_session_until_the_client_answers() {
    let rig = Rig::start().await;
    let id = rig
        .session(agent_with(
            "claude-test",
            vec![tool("lookup", "custom", PermissionPolicy::AlwaysAllow)],
        ))
        .await;
    rig.model.push([
        Reply::tool_use("toolu_c1", "lookup", json!({"q": "weather"})),
        Reply::text("It is sunny."),
    ]);
    rig.say(&id, "what's the weather?").await;
    let events = rig.idle(&id, 1).await;
    assert!(types(&events).contains(&"agent.custom_tool_use"));
    let idle = events.last().unwrap();
    match &idle.event.body {
        EventBody::SessionStatusIdle(i) => {
            assert_eq!(i.stop_reason.kind, "requires_action");
            assert_eq!(i.stop_reason.event_ids, ["toolu_c1"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.model.count(), 1);
    // Nothing happens on a spurious wake while parked.
    rig.wake(&id, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.model.count(), 1);

    rig.wake(
        &id,
        &[Event::new(UserCustomToolResult {
            custom_tool_use_id: "toolu_c1".into(),
            content: vec![ContentBlock::text("sunny, 21C")],
            is_error: false,
        })],
    )
    .await;
    let events = rig.idle(&id, 2).await;
    assert_eq!(stop_reasons(&events), ["requires_action", "end_turn"]);
    let second = &rig.model.received()[1].body["messages"];
    assert_eq!(second[2]["content"][0]["type"], "tool_result");
    assert_eq!(second[2]["content"][0]["tool_use_id"], "toolu_c1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_confirmation_deny_and_allow() {
    let rig = Rig::start().await;
    let hand = fake_hand(&rig).await;
    let id = rig
        .session(agent_with(
            "claude-test",
            vec![tool("bash", "builtin", PermissionPolicy::AlwaysAsk)],
        ))
        .await;
    rig.model.push([
        Reply::tool_use("toolu_a", "bash", json!({"command": "rm -rf /"})),
        Reply::text("Understood, I won't."),
        Reply::tool_use("toolu_b", "bash", json!({"command": "ls"})),
        Reply::text("Listed."),
    ]);
    rig.say(&id, "clean up").await;
    let events = rig.idle(&id, 1).await;
    assert_eq!(stop_reasons(&events), ["requires_action"]);
    let asked = events.iter().find_map(|e| match &e.event.body {
        EventBody::AgentToolUse(t) => Some(t.evaluated_permission),
        _ => None,
    });
    assert_eq!(asked, Some(Some(EvaluatedPermission::Ask)));

    rig.wake(
        &id,
        &[Event::new(UserToolConfirmation {
            tool_use_id: "toolu_a".into(),
            result: "deny".into(),
            deny_message: Some("never do that".into()),
        })],
    )
    .await;
    let events = rig.idle(&id, 2).await;
    let denial = events.iter().find_map(|e| match &e.event.body {
        EventBody::AgentToolResult(r) if r.tool_use_id == "toolu_a" => {
            Some((r.is_error, content_text(&r.content)))
        }
        _ => None,
    });
    assert_eq!(denial, Some((true, "never do that".to_string())));
    assert_eq!(texts(&events), ["Understood, I won't."]);

    rig.say(&id, "then just list").await;
    let events = rig.idle(&id, 3).await;
    assert_eq!(
        stop_reasons(&events).last().map(String::as_str),
        Some("requires_action")
    );
    rig.wake(
        &id,
        &[Event::new(UserToolConfirmation {
            tool_use_id: "toolu_b".into(),
            result: "allow".into(),
            deny_message: None,
        })],
    )
    .await;
    let events = rig.idle(&id, 4).await;
    hand.abort();
    let ran = events.iter().any(|e| matches!(&e.event.body, EventBody::AgentToolResult(r) if r.tool_use_id == "toolu_b" && content_text(&r.content) == "ran: ls"));
    assert!(ran, "{:?}", types(&events));
    assert_eq!(texts(&events).last().map(String::as_str), Some("Listed."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_stops_the_turn_and_a_late_message_is_not_dropped() {
    let rig = Rig::start().await;
    let id = rig.session(agent_with("claude-test", vec![])).await;

    // A message sent while the model is answering goes into the next request.
    rig.model.set_delay(Duration::from_millis(800));
    rig.model
        .push([Reply::text("first answer"), Reply::text("answer to both")]);
    rig.say(&id, "first").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.say(&id, "second, while you think").await;
    let events = rig.idle(&id, 1).await;
    let last = rig.model.received().last().unwrap().body.clone();
    let all = request_texts(&last["messages"]);
    assert!(
        all.contains("first") && all.contains("second, while you think"),
        "{all}"
    );
    let users = events
        .iter()
        .filter(|e| e.event.type_name() == "user.message")
        .count();
    assert_eq!(users, 2);

    // An interrupt during a model call ends the turn; the stale answer is not appended.
    rig.model.set_delay(Duration::from_millis(1000));
    rig.model.push([Reply::text("you should never see this")]);
    let before = rig.model.count();
    rig.say(&id, "write a long essay").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    rig.wake(&id, &[Event::new(UserInterrupt {})]).await;
    let events = rig.idle(&id, 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let events_after = rig.log().read_from(&id, 1).await.unwrap().len();
    assert_eq!(
        events_after,
        events.len(),
        "nothing appended after the interrupt's idle"
    );
    assert!(!texts(&events).iter().any(|t| t.contains("never see")));
    assert_eq!(
        rig.model.count(),
        before + 1,
        "no model call after the interrupt"
    );
    assert_eq!(
        stop_reasons(&events).last().map(String::as_str),
        Some("end_turn")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_faults_are_retried_visibly() {
    let rig = Rig::start().await;
    let id = rig.session(agent_with("claude-test", vec![])).await;
    rig.model.push([
        Reply::Status {
            code: 429,
            retry_after: Some(1),
        },
        Reply::Status {
            code: 500,
            retry_after: None,
        },
        Reply::CutStream,
        Reply::Hang(Duration::from_secs(5)),
        Reply::text("finally"),
    ]);
    let t0 = Instant::now();
    rig.say(&id, "hello?").await;
    let events = rig.idle(&id, 1).await;
    assert_eq!(texts(&events), ["finally"]);
    let received = rig.model.received();
    assert_eq!(received.len(), 5);
    // Retry-After: 1 was honoured between the first and second request.
    assert!(received[1].at - received[0].at >= Duration::from_millis(950));
    let errors: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SessionError(s) => Some((
                s.error.kind.clone(),
                s.retry_status.as_ref().unwrap().kind.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert_eq!(errors[0], ("rate_limit_error".into(), "retrying".into()));
    assert_eq!(errors[1].0, "api_error");
    assert!(errors.iter().all(|(_, s)| s == "retrying"));
    assert_eq!(
        types(&events)
            .iter()
            .filter(|t| **t == "session.status_rescheduled")
            .count(),
        4
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    for e in &events {
        assert!(!e.event.to_json().to_string().contains(CANARY_KEY));
    }

    // Five failures in a row end the turn with retries_exhausted; a new message tries again.
    rig.model.push((0..5).map(|_| Reply::Status {
        code: 503,
        retry_after: None,
    }));
    rig.say(&id, "again").await;
    let events = rig.idle(&id, 2).await;
    assert_eq!(stop_reasons(&events), ["end_turn", "retries_exhausted"]);
    let exhausted = events.iter().any(|e| matches!(&e.event.body, EventBody::SessionError(s) if s.retry_status.as_ref().is_some_and(|r| r.kind == "exhausted")));
    assert!(exhausted);
    rig.model.push([Reply::text("back")]);
    rig.say(&id, "and now?").await;
    let events = rig.idle(&id, 3).await;
    assert_eq!(texts(&events).last().map(String::as_str), Some("back"));

    // A request the API refuses (400) is not retried.
    let before = rig.model.count();
    rig.model.push([Reply::Status {
        code: 400,
        retry_after: None,
    }]);
    rig.say(&id, "bad request please").await;
    let events = rig.idle(&id, 4).await;
    assert_eq!(rig.model.count(), before + 1);
    assert_eq!(
        stop_reasons(&events).last().map(String::as_str),
        Some("retries_exhausted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_wakes_are_terminated_and_reported_without_slowing_others() {
    let rig = Rig::start().await;
    let id = rig.session(agent_with("claude-test", vec![])).await;
    let js = async_nats::jetstream::new(rig.nats.client.clone());
    // Garbage for a known session: a session.error on it.
    js.publish(herd::bus::subjects::wake(&id), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // An agent event smuggled into a wake: refused.
    js.publish(
        herd::bus::subjects::wake(&id),
        json!({"events": [{"id": "x1", "type": "agent.message", "content": []}]})
            .to_string()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // A wake for a session that does not exist, and one whose subject token is not a valid id:
    // dead letters.
    js.publish("herd.wake.nosuchsession", "".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("herd.wake.bad%id", "".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A session the harness cannot run: events, but no session.created.
    let headless = SessionId::parse("headless").unwrap();
    rig.log()
        .append_fact(&headless, &user("hello?"))
        .await
        .unwrap();
    js.publish(herd::bus::subjects::wake(&headless), "".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Meanwhile a healthy session runs normally.
    rig.model.push([Reply::text("fine")]);
    let healthy = rig.session(agent_with("claude-test", vec![])).await;
    rig.say(&healthy, "are you ok").await;
    let events = rig.idle(&healthy, 1).await;
    assert_eq!(texts(&events), ["fine"]);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let errors: Vec<String> = rig
            .log()
            .read_from(&id, 1)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.ok()?.event.body {
                EventBody::SessionError(e) => Some(e.error.message),
                _ => None,
            })
            .collect();
        let mut dl = js.get_stream("HERD_DEADLETTER").await.unwrap();
        let dead = dl.info().await.unwrap().state.messages;
        if errors.len() == 2 && dead == 2 {
            assert!(errors.iter().any(|e| e.contains("not valid")), "{errors:?}");
            assert!(
                errors.iter().any(|e| e.contains("carries only")),
                "{errors:?}"
            );
            let m = dl.direct_get(1).await.unwrap();
            let reason = m.headers.get("Herd-Error").unwrap().to_string();
            assert!(
                reason.contains("does not exist") || reason.contains("valid session id"),
                "{reason}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "errors {errors:?}, dead letters {dead}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let headless_error = loop {
        let found = rig
            .log()
            .read_from(&headless, 1)
            .await
            .unwrap()
            .into_iter()
            .find_map(|r| match r.ok()?.event.body {
                EventBody::SessionError(e) => Some(e.error.message),
                _ => None,
            });
        if let Some(m) = found {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no session.error on the headless session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        headless_error.contains("no session.created"),
        "{headless_error}"
    );
    // The work queue holds nothing: every poison wake was terminated, none is redelivered.
    let mut wq = js.get_stream("HERD_WAKE").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while wq.info().await.unwrap().state.messages != 0 {
        assert!(Instant::now() < deadline, "wakes left in the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No session log was created for the unknown session.
    assert_eq!(
        rig.log()
            .last_sequence(&SessionId::parse("nosuchsession").unwrap())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_wake_on_two_brains_never_forks_a_session() {
    let mut rig = Rig::start().await;
    rig.add_brain().await;
    rig.model.set_delay(Duration::from_millis(50));
    let js = async_nats::jetstream::new(rig.nats.client.clone());
    for round in 0..10 {
        let id = rig.session(agent_with("claude-test", vec![])).await;
        rig.log()
            .append_fact(&id, &user(&format!("round {round}")))
            .await
            .unwrap();
        // The same wake twice, with different message ids so both are delivered: each brain
        // likely takes one.
        for copy in 0..2 {
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .message_id(format!("wake-{round}-{copy}"))
                .payload("".into());
            js.send_publish(herd::bus::subjects::wake(&id), msg)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let events = rig.idle(&id, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let events_later = rig.log().read_from(&id, 1).await.unwrap();
        assert_eq!(
            events_later.len(),
            events.len(),
            "round {round}: nothing after the idle"
        );
        assert_eq!(
            texts(&events).len(),
            1,
            "round {round}: one answer: {:?}",
            types(&events)
        );
        assert_eq!(
            types(&events)
                .iter()
                .filter(|t| **t == "session.status_idle")
                .count(),
            1
        );
        let starts = types(&events)
            .iter()
            .filter(|t| **t == "span.model_request_start")
            .count();
        let ends = types(&events)
            .iter()
            .filter(|t| **t == "span.model_request_end")
            .count();
        assert_eq!(starts, ends, "round {round}: every span closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_budget_context_is_compacted_and_the_log_is_untouched() {
    let rig = Rig::start().await;
    let mut agent = agent_with("claude-test", vec![]);
    agent.context_budget_tokens = Some(300);
    let id = rig.session(agent).await;
    let long = format!("Remember the code word PELICAN. {}", "padding ".repeat(150));
    rig.model.push([Reply::text("Noted, PELICAN.")]);
    rig.say(&id, &long).await;
    let first = rig.idle(&id, 1).await;
    let first_idle = first.last().unwrap().seq;

    rig.model.push([
        Reply::text("The user asked me to remember the code word PELICAN."),
        Reply::text("The code word is PELICAN."),
    ]);
    rig.say(&id, "What was the code word?").await;
    let events = rig.idle(&id, 2).await;
    let compacted = events.iter().find_map(|e| match &e.event.body {
        EventBody::AgentThreadContextCompacted(c) => Some(c.clone()),
        _ => None,
    });
    let c = compacted.expect("a compaction event");
    assert_eq!(c.compacted_up_to, first_idle);
    assert!(c.summary.contains("PELICAN"));

    let received = rig.model.received();
    assert_eq!(received.len(), 3);
    // The summarising request: the old turn plus the instruction, no tools.
    let summarise = &received[1].body;
    assert!(
        summarise["system"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Summarise the conversation")
    );
    assert!(summarise.to_string().contains("padding padding"));
    // The next request is built from the summary, without the old turn's text.
    let next = received[2].body.to_string();
    assert!(
        next.contains("Summary of the conversation so far"),
        "{next}"
    );
    assert!(next.contains("What was the code word?"));
    assert!(
        !next.contains("padding padding"),
        "old turns are gone from the context"
    );
    // The events themselves are never changed: the long message is still in the log.
    let still = events.iter().any(
        |e| matches!(&e.event.body, EventBody::UserMessage(m) if content_text(&m.content) == long),
    );
    assert!(still);
    assert_eq!(
        texts(&events).last().map(String::as_str),
        Some("The code word is PELICAN.")
    );
}

/// An answer that cannot be recorded as it is — more tool calls than one step may hold, or
/// an event larger than the server accepts — ends the turn with an error the client sees,
/// instead of leaving the session running with an open span; the next message works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_wide_or_oversized_answer_ends_the_turn_with_an_error() {
    let rig = Rig::start().await;
    let id = rig
        .session(agent_with(
            "claude-test",
            vec![tool("bash", "builtin", PermissionPolicy::AlwaysAllow)],
        ))
        .await;
    let wide: Vec<Value> = (0..1_001)
        .map(|i| json!({"type": "tool_use", "id": format!("toolu_w{i}"), "name": "bash", "input": {}}))
        .collect();
    rig.model.push([
        Reply::Turn {
            content: wide,
            stop_reason: "tool_use".into(),
        },
        Reply::text(&"x".repeat(1_100_000)),
        Reply::text("fine again"),
    ]);
    for (n, text) in [
        (1, "call a thousand tools"),
        (2, "say a megabyte"),
        (3, "hello"),
    ] {
        rig.say(&id, text).await;
        let events = rig.idle(&id, n).await;
        if n < 3 {
            assert_eq!(
                stop_reasons(&events).last().map(String::as_str),
                Some("retries_exhausted")
            );
            let error = events.iter().rev().find_map(|e| match &e.event.body {
                EventBody::SessionError(e) => Some(e.error.message.clone()),
                _ => None,
            });
            assert!(
                error
                    .as_deref()
                    .is_some_and(|m| m.contains("could not be recorded")),
                "{error:?}"
            );
        } else {
            assert_eq!(
                texts(&events).last().map(String::as_str),
                Some("fine again")
            );
        }
    }
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// A tool loop never runs forever: a session's limit pauses it before the next model request
/// (`budget_reached`, with an event naming the limit); a message alone does not resume a
/// session over its own limit; raising the limit and sending a message does. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_loop_pauses_at_its_limit_and_resumes_when_raised() {
    let rig = Rig::start().await;
    let hand = fake_hand(&rig).await;
    rig.model.set_responder(|_| {
        Reply::tool_use(
            &format!("toolu_{}", uuid::Uuid::now_v7().simple()),
            "bash",
            json!({"command": "again"}),
        )
    });
    let id = SessionId::generate();
    let mut limits = SessionLimits::default();
    limits.set("model_requests", 3).unwrap();
    rig.log()
        .create(
            &id,
            &Event::new(SessionCreated {
                limits,
                ..SessionCreated::new(agent_with(
                    "claude-test",
                    vec![tool("bash", "builtin", PermissionPolicy::AlwaysAllow)],
                ))
            }),
        )
        .await
        .unwrap();
    let reached = |events: &[StoredEvent]| -> Vec<(String, u64)> {
        events
            .iter()
            .filter_map(|e| match &e.event.body {
                EventBody::SessionLimitReached(l) => Some((l.limit.clone(), l.used)),
                _ => None,
            })
            .collect()
    };
    rig.say(&id, "loop forever").await;
    let events = rig.idle(&id, 1).await;
    assert_eq!(stop_reasons(&events), ["budget_reached"]);
    assert_eq!(reached(&events), [("model_requests".to_string(), 3)]);
    assert_eq!(rig.model.count(), 3);
    // Over the session's own limit, a message alone pauses it again at once.
    rig.say(&id, "go on").await;
    let events = rig.idle(&id, 2).await;
    assert_eq!(reached(&events).len(), 2);
    assert_eq!(rig.model.count(), 3, "no request past the limit");
    // Raised (as the operator), the next message runs up to the new limit.
    let api = herd::api::Api::open(rig.nats.client.clone(), herd::api::Principal::operator())
        .await
        .unwrap();
    let mut raised = SessionLimits::default();
    raised.set("model_requests", 5).unwrap();
    api.update_limits(&id, raised).await.unwrap();
    rig.say(&id, "now go on").await;
    let events = rig.idle(&id, 3).await;
    hand.abort();
    assert_eq!(
        reached(&events).last(),
        Some(&("model_requests".to_string(), 5))
    );
    assert_eq!(rig.model.count(), 5);
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// A wake that fails for good (here: its tool job cannot be published, every delivery) ends
/// the turn instead of leaving the session running with nothing in flight: the pending call
/// gets an error result, the session goes idle, and `herd check --settled` is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_that_fails_for_good_ends_the_turn_cleanly() {
    let rig = Rig::start().await;
    let id = rig
        .session(agent_with(
            "claude-test",
            vec![tool("bash", "builtin", PermissionPolicy::AlwaysAllow)],
        ))
        .await;
    rig.model.push([Reply::tool_use(
        "toolu_stuck",
        "bash",
        json!({"command": "true"}),
    )]);
    // No work queue for tool jobs: every dispatch fails, every delivery of the wake too.
    async_nats::jetstream::new(rig.nats.client.clone())
        .delete_stream("HERD_TOOLS")
        .await
        .unwrap();
    rig.say(&id, "run it").await;
    let events = rig.idle(&id, 1).await;
    assert_eq!(stop_reasons(&events), ["retries_exhausted"]);
    let result = events.iter().find_map(|e| match &e.event.body {
        EventBody::AgentToolResult(r) if r.tool_use_id == "toolu_stuck" => {
            Some((r.is_error, content_text(&r.content)))
        }
        _ => None,
    });
    assert!(
        result
            .as_ref()
            .is_some_and(|(err, text)| *err && text.contains("herd gave up on this turn")),
        "{result:?}"
    );
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// The limit events of a log: (limit, max, used).
fn limits_reached(events: &[StoredEvent]) -> Vec<(String, u64, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SessionLimitReached(l) => Some((l.limit.clone(), l.max, l.used)),
            _ => None,
        })
        .collect()
}

/// A price table in which each of the mock model's requests (25 input and 10 output tokens)
/// costs 12.5 cents, so a budget is spent in a few requests.
fn dear_prices() -> PriceTable {
    PriceTable::with_overrides([(
        "claude-test".to_string(),
        ListPrices::new("1000", "10000", "0", "0"),
    )])
    .unwrap()
}

/// The cost budget (the Managed Agents API's `max_list_cost`): checked before each model
/// request at the prices the front door recorded, the session pauses at it (`budget_reached`,
/// `session.limit_reached` naming `max_list_cost`, `session.usage` with the list cost); a
/// budget below the spend is refused; raised, a message resumes it. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_pauses_the_session_and_raising_it_resumes() {
    let rig = Rig::start().await;
    let hand = fake_hand(&rig).await;
    rig.model.set_responder(|_| {
        Reply::tool_use(
            &format!("toolu_{}", uuid::Uuid::now_v7().simple()),
            "bash",
            json!({"command": "spend"}),
        )
    });
    let api = herd::api::Api::open(rig.nats.client.clone(), herd::api::Principal::operator())
        .await
        .unwrap()
        .with_prices(dear_prices());
    let id = SessionId::generate();
    api.create(
        &id,
        SessionCreated {
            limits: SessionLimits {
                budget: Some(Budget::usd_cents(30)),
                ..Default::default()
            },
            ..SessionCreated::new(agent_with(
                "claude-test",
                vec![tool("bash", "builtin", PermissionPolicy::AlwaysAllow)],
            ))
        },
    )
    .await
    .unwrap();
    rig.say(&id, "spend it all").await;
    let events = rig.idle(&id, 1).await;
    assert_eq!(stop_reasons(&events), ["budget_reached"]);
    // 0, 12.5 and 25 cents are under 30: three requests; 37.5 is not.
    assert_eq!(rig.model.count(), 3);
    assert_eq!(
        limits_reached(&events),
        [("max_list_cost".to_string(), 30, 38)]
    );
    let usage = events.iter().rev().find_map(|e| match &e.event.body {
        EventBody::SessionUsage(u) => Some(u.clone()),
        _ => None,
    });
    let usage = usage.expect("a session.usage before the idle");
    assert_eq!(usage.list_cost, Some(Money::usd_cents(38)));
    assert_eq!(usage.budget.as_ref().map(Budget::max_cents), Some(30));
    let state = api.state(&id).await.unwrap();
    assert_eq!(state.list_cost, Some(Money::usd_cents(38)));

    // A message alone does not get past the budget.
    rig.say(&id, "more").await;
    let events = rig.idle(&id, 2).await;
    assert_eq!(limits_reached(&events).len(), 2);
    assert_eq!(rig.model.count(), 3);
    // Lowering it below the spend is refused, with the reason; adding one where there is none
    // is too.
    let low = api
        .update_budget(&id, Some(Budget::usd_cents(37)))
        .await
        .unwrap_err();
    assert!(low.to_string().starts_with("budget_not_raised:"), "{low}");
    assert_eq!(low.class(), herd::api::ErrorClass::Invalid);
    // Raised to 60 cents: two more requests (37.5 and 50 are under it), then it pauses again.
    api.update_budget(&id, Some(Budget::usd_cents(60)))
        .await
        .unwrap();
    rig.say(&id, "now go on").await;
    let events = rig.idle(&id, 3).await;
    assert_eq!(rig.model.count(), 5);
    assert_eq!(
        limits_reached(&events).last(),
        Some(&("max_list_cost".to_string(), 60, 63))
    );
    // Removed, for good: the next message runs (here to the per-turn request limit).
    api.update_budget(&id, None).await.unwrap();
    let again = api
        .update_budget(&id, Some(Budget::usd_cents(1_000)))
        .await
        .unwrap_err();
    assert!(
        again.to_string().starts_with("budget_create_only:"),
        "{again}"
    );
    let mut few = SessionLimits::default();
    few.set("model_requests_per_turn", 1).unwrap();
    api.update_limits(&id, few).await.unwrap();
    rig.say(&id, "no budget now").await;
    let events = rig.idle(&id, 4).await;
    hand.abort();
    assert_eq!(rig.model.count(), 6);
    assert_eq!(
        limits_reached(&events).last().map(|l| l.0.as_str()),
        Some("model_requests_per_turn")
    );
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// Malformed budgets, and budgets herd cannot count, are refused before the session exists,
/// each with what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_budgets_are_refused_with_clear_errors() {
    let t = TestNats::start().await;
    let api = herd::api::Api::open(t.client.clone(), herd::api::Principal::operator())
        .await
        .unwrap();
    let create = |model: &str, budget: Budget| {
        let api = api.clone();
        let model = model.to_string();
        async move {
            let id = SessionId::generate();
            let r = api
                .create(
                    &id,
                    SessionCreated {
                        limits: SessionLimits {
                            budget: Some(budget),
                            ..Default::default()
                        },
                        ..SessionCreated::new(AgentConfig::new(model))
                    },
                )
                .await;
            (id, r)
        }
    };
    let with = |f: &dyn Fn(&mut Budget)| {
        let mut b = Budget::usd_cents(100);
        f(&mut b);
        b
    };
    let cases: Vec<(Budget, &str)> = vec![
        (
            with(&|b| b.kind = "soft".into()),
            "only budget type is \"limit\"",
        ),
        (
            with(&|b| b.max_list_cost.currency = "EUR".into()),
            "the only currency is \"USD\"",
        ),
        (
            with(&|b| b.max_list_cost.amount = "1.50".into()),
            "not a whole number of US cents",
        ),
        (
            with(&|b| b.max_list_cost.amount = "-5".into()),
            "not a whole number of US cents",
        ),
        (
            with(&|b| b.max_list_cost.amount = "".into()),
            "not a whole number of US cents",
        ),
        (
            with(&|b| b.list_prices = Some(ListPrices::new("0", "0", "0", "0"))),
            "list_prices is herd's to set",
        ),
    ];
    for (budget, want) in cases {
        let (id, r) = create("claude-sonnet-4-5", budget.clone()).await;
        let e = r.unwrap_err();
        assert!(e.to_string().contains(want), "{budget:?}: {e}");
        assert_eq!(e.class(), herd::api::ErrorClass::Invalid);
        assert_eq!(t.log.last_sequence(&id).await.unwrap(), 0, "nothing stored");
    }
    let (_, r) = create("llama3:8b", Budget::usd_cents(100)).await;
    let e = r.unwrap_err().to_string();
    assert!(e.starts_with("model_not_budgetable:"), "{e}");
    // A well-formed one on a priced model is taken, with the model's prices recorded.
    let (id, r) = create("claude-haiku-4-5-20251001", Budget::usd_cents(0)).await;
    r.unwrap();
    let state = api.state(&id).await.unwrap();
    let budget = state.limits.budget.unwrap();
    assert_eq!(budget.list_prices.unwrap().output, "5");
    assert_eq!(state.list_cost, Some(Money::usd_cents(0)));
}

/// A turn's wall time is bounded: counted from the event that began the turn, it pauses the
/// session (`wall_seconds_per_turn`, `budget_reached`) before the next model request; raised,
/// a message resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_pauses_at_its_wall_time_and_resumes_when_raised() {
    let rig = Rig::start().await;
    let hand = fake_hand(&rig).await;
    rig.model.set_delay(Duration::from_millis(300));
    rig.model.set_responder(|_| {
        Reply::tool_use(
            &format!("toolu_{}", uuid::Uuid::now_v7().simple()),
            "bash",
            json!({"command": "slow"}),
        )
    });
    let mut limits = SessionLimits::default();
    limits.set("wall_seconds_per_turn", 2).unwrap();
    let id = SessionId::generate();
    rig.log()
        .create(
            &id,
            &Event::new(SessionCreated {
                limits,
                ..SessionCreated::new(agent_with(
                    "claude-test",
                    vec![tool("bash", "builtin", PermissionPolicy::AlwaysAllow)],
                ))
            }),
        )
        .await
        .unwrap();
    rig.say(&id, "take your time").await;
    let events = rig.idle(&id, 1).await;
    assert_eq!(stop_reasons(&events), ["budget_reached"]);
    let reached = limits_reached(&events);
    assert_eq!(reached.len(), 1);
    let (name, max, used) = &reached[0];
    assert_eq!((name.as_str(), *max), ("wall_seconds_per_turn", 2));
    assert!(*used >= 2, "used {used}");
    // The pause came after 2 s of turn, not before, and not much after (one request).
    let at = |ty: &str| {
        events
            .iter()
            .find(|e| e.event.type_name() == ty)
            .unwrap()
            .event
            .processed_at
    };
    let took = at("session.limit_reached") - at("session.status_running");
    assert!(
        took >= time::Duration::seconds(2) && took < time::Duration::seconds(5),
        "{took}"
    );
    let requests = rig.model.count();
    assert!((2..=8).contains(&requests), "{requests} requests");
    // Raised, and the model done looping: the next message ends its turn normally.
    let mut raised = SessionLimits::default();
    raised.set("wall_seconds_per_turn", 600).unwrap();
    let api = herd::api::Api::open(rig.nats.client.clone(), herd::api::Principal::operator())
        .await
        .unwrap();
    api.update_limits(&id, raised).await.unwrap();
    rig.model.set_delay(Duration::ZERO);
    rig.model.set_responder(|_| Reply::text("done"));
    rig.say(&id, "wrap up").await;
    let events = rig.idle(&id, 2).await;
    hand.abort();
    assert_eq!(stop_reasons(&events), ["budget_reached", "end_turn"]);
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// A brain that sweeps for stuck sessions every 300 ms, after 1 s of quiet.
fn sweeping(model: &MockModel) -> BrainConfig {
    BrainConfig {
        sweep_every: Duration::from_millis(300),
        sweep_grace: Duration::from_secs(1),
        ..brain_config(model)
    }
}

/// A rig whose `brains` brains all sweep fast.
async fn sweeping_rig(brains: usize) -> Rig {
    let nats = TestNats::start().await;
    let model = MockModel::start().await.unwrap();
    let mut rig = Rig {
        nats,
        model,
        brains: vec![],
    };
    for _ in 0..brains {
        let cfg = sweeping(&rig.model);
        rig.add_brain_with(cfg).await;
    }
    rig
}

/// A session with bash, always allowed, on the mock model.
async fn bash_session(rig: &Rig) -> SessionId {
    rig.session(agent_with(
        "claude-test",
        vec![tool("bash", "builtin", PermissionPolicy::AlwaysAllow)],
    ))
    .await
}

/// No session stays running with nothing in flight: a tool job a hand refuses (dead-letters)
/// leaves its call without a job; the brains' sweep wakes the session again, and when that
/// brings nothing either, ends the turn within a few sweep periods: a `session.error`
/// (`turn_stalled`) for the client, an error result for the model, idle with
/// `retries_exhausted`. Two brains sweep at once and the turn still ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_job_ends_its_turn_with_an_error_within_the_sweep_period() {
    let rig = sweeping_rig(2).await;
    let id = bash_session(&rig).await;
    rig.model.push([Reply::tool_use(
        "toolu_poison",
        "bash",
        json!({"command": "true"}),
    )]);
    rig.model
        .set_responder(|_| Reply::text("should not be asked"));
    // A hand that refuses every job: dead letter, then terminate (the work queue drops it).
    let js = async_nats::jetstream::new(rig.nats.client.clone());
    let consumer = js
        .get_stream("HERD_TOOLS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("refusing-hand".into()),
            filter_subject: "herd.tools.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let refusing = {
        let (js, refused) = (js.clone(), refused.clone());
        tokio::spawn(async move {
            let mut msgs = consumer.messages().await.unwrap();
            while let Some(Ok(m)) = msgs.next().await {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Herd-Error", "this hand refuses every job");
                js.publish_with_headers(
                    herd::bus::subjects::DEAD_LETTER_TOOL,
                    h,
                    m.payload.clone(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                m.ack_with(async_nats::jetstream::AckKind::Term)
                    .await
                    .unwrap();
                refused.lock().unwrap().push(Instant::now());
            }
        })
    };
    rig.say(&id, "run it").await;
    let events = rig.idle(&id, 1).await;
    let ended = Instant::now();
    refusing.abort();
    assert_eq!(stop_reasons(&events), ["retries_exhausted"]);
    let first_refusal = refused.lock().unwrap()[0];
    let took = ended - first_refusal;
    eprintln!("the stalled turn ended {took:?} after its job was refused (grace 1 s, sweep 0.3 s)");
    // Quiet for the grace period, woken again, quiet for another: about 2 s after the last
    // event (the call), well within 6 s of the refusal.
    assert!(took < Duration::from_secs(6), "{took:?}");
    let at = |ty: &str| {
        events
            .iter()
            .rev()
            .find(|e| e.event.type_name() == ty)
            .unwrap()
            .event
            .processed_at
    };
    let quiet = at("session.status_idle") - at("agent.tool_use");
    assert!(quiet >= time::Duration::seconds(2), "ended after {quiet}");
    let stalled: Vec<&SessionError> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SessionError(x) if x.error.kind == "turn_stalled" => Some(x),
            _ => None,
        })
        .collect();
    assert_eq!(
        stalled.len(),
        1,
        "the turn ends once, whichever brain swept"
    );
    assert_eq!(
        stalled[0].retry_status.as_ref().map(|r| r.kind.as_str()),
        Some("exhausted")
    );
    let (is_error, text) = tool_result(&events, "toolu_poison");
    assert!(is_error && text.contains("dead-lettered"), "{text}");
    assert_eq!(
        rig.model.count(),
        1,
        "the stalled call was not answered by the model"
    );
    let dead = js.get_stream("HERD_DEADLETTER").await.unwrap();
    assert!(
        dead.get_last_raw_message_by_subject(herd::bus::subjects::DEAD_LETTER_TOOL)
            .await
            .is_ok()
    );
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    // The session goes on: the model sees the error result at the next message.
    rig.model.set_responder(|body| {
        let seen = request_texts(body);
        Reply::text(if seen.contains("herd gave up on this turn") {
            "I saw the error"
        } else {
            "no error seen"
        })
    });
    rig.say(&id, "what happened?").await;
    let events = rig.idle(&id, 2).await;
    assert_eq!(
        texts(&events).last().map(String::as_str),
        Some("I saw the error")
    );
}

/// A lost wake is re-dispatched: a tool result that lands without its wake (a hand that died
/// between the two) leaves the session running with nothing in flight; the sweep wakes it and
/// the turn continues to its normal end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_wake_is_redispatched_by_the_sweep() {
    let rig = sweeping_rig(1).await;
    let id = bash_session(&rig).await;
    rig.model.push([
        Reply::tool_use("toolu_lost", "bash", json!({"command": "true"})),
        Reply::text("finished"),
    ]);
    // A hand that appends the result and acknowledges the job, but never wakes the session.
    let js = async_nats::jetstream::new(rig.nats.client.clone());
    let consumer = js
        .get_stream("HERD_TOOLS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("forgetful-hand".into()),
            filter_subject: "herd.tools.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let log = rig.nats.second_log().await;
    let forgetful = tokio::spawn(async move {
        let mut msgs = consumer.messages().await.unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            let job: herd::bus::jobs::ToolJob = serde_json::from_slice(&m.payload).unwrap();
            // Long enough for the brain to have finished its wake: nothing else will look.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let result = Event::with_id(
                herd::bus::jobs::result_event_id(&job.session_id, &job.tool_use_id).unwrap(),
                AgentToolResult {
                    tool_use_id: job.tool_use_id.clone(),
                    content: vec![ContentBlock::text("ok")],
                    is_error: false,
                    output_ref: None,
                },
            );
            log.append_fact(&job.session_id, &result).await.unwrap();
            m.ack().await.unwrap();
        }
    });
    rig.say(&id, "run it").await;
    let events = rig.idle(&id, 1).await;
    forgetful.abort();
    assert_eq!(stop_reasons(&events), ["end_turn"]);
    assert_eq!(rig.model.count(), 2);
    assert_eq!(texts(&events).last().map(String::as_str), Some("finished"));
    // The second request started only after the sweep's grace period of quiet.
    let result_at = events
        .iter()
        .find(|e| e.event.type_name() == "agent.tool_result")
        .unwrap()
        .event
        .processed_at;
    let next_start = events
        .iter()
        .filter(|e| e.event.type_name() == "span.model_request_start")
        .nth(1)
        .unwrap()
        .event
        .processed_at;
    let waited = next_start - result_at;
    eprintln!(
        "re-dispatched {waited} after the result that lost its wake (grace 1 s, sweep 0.3 s)"
    );
    assert!(
        waited >= time::Duration::seconds(1) && waited < time::Duration::seconds(5),
        "{waited}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.event.body, EventBody::SessionError(_))),
        "re-dispatched, not given up"
    );
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_session_ends_its_turn_with_an_error_instead_of_crashing_brains() {
    let nats = TestNats::start().await;
    let model = MockModel::start().await.unwrap();
    let mut rig = Rig {
        nats,
        model,
        brains: vec![],
    };
    let cfg = BrainConfig {
        max_session_bytes: 8 << 20,
        ..brain_config(&rig.model)
    };
    rig.add_brain_with(cfg).await;
    let id = rig.session(agent()).await;
    // 10,000 small facts and 24 of 900 KB (about 21 MiB), appended without a wake.
    let started = Instant::now();
    for chunk in 0..100 {
        let appends = (0..100).map(|i| {
            let log = rig.log().clone();
            let id = id.clone();
            async move {
                log.append_fact(&id, &user(&format!("fact {chunk}-{i}")))
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(appends).await;
    }
    let big = "x".repeat(900_000);
    for _ in 0..24 {
        rig.log().append_fact(&id, &user(&big)).await.unwrap();
    }
    eprintln!("appended 10,024 events in {:?}", started.elapsed());
    let before = rig.log().count(&id).await.unwrap();
    send(&rig.nats, &id, "and now?").await;
    let events = rig.idle(&id, 1).await;
    let error = events
        .iter()
        .find_map(|e| match &e.event.body {
            EventBody::SessionError(s) if s.error.kind == "session_too_large" => Some(s),
            _ => None,
        })
        .expect("a session_too_large error");
    assert!(
        error
            .error
            .message
            .contains("more than this deployment's limit of 8 MiB"),
        "{}",
        error.error.message
    );
    let idle = events
        .iter()
        .rev()
        .find_map(|e| match &e.event.body {
            EventBody::SessionStatusIdle(i) => Some(i),
            _ => None,
        })
        .unwrap();
    assert_eq!(idle.stop_reason.kind, "retries_exhausted");
    assert_eq!(rig.model.count(), 0, "nothing was sent to the model");
    // Nothing acknowledged was lost, the log is sound, and the brain still serves others.
    assert!(rig.log().count(&id).await.unwrap() > before);
    let report = rig.log().check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let other = rig.session(agent()).await;
    rig.say(&other, "hello").await;
    let events = rig.idle(&other, 1).await;
    assert!(
        events
            .iter()
            .any(|e| e.event.type_name() == "agent.message"),
        "the scripted model answered the other session"
    );
}

/// The text of the tool results the model was sent in request `body`, by tool_use id.
fn results_sent(body: &Value) -> Vec<(String, String, bool)> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            let text = b["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["text"].as_str())
                .collect::<String>();
            (
                b["tool_use_id"].as_str().unwrap_or("").to_string(),
                text,
                b["is_error"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_reads_back_what_compaction_summarised_away_with_get_events() {
    let rig = Rig::start().await;
    let mut agent = agent_with("claude-test", vec![]);
    agent.context_budget_tokens = Some(300);
    let id = rig.session(agent).await;
    let fact = format!("the locker code is 7431-{}", uuid::Uuid::new_v4().simple());
    rig.model.push([Reply::text("Noted.")]);
    rig.say(
        &id,
        &format!("Remember: {fact}. {}", "padding ".repeat(150)),
    )
    .await;
    let first = rig.idle(&id, 1).await;
    let said_at = first
        .iter()
        .find(|e| e.event.type_name() == "user.message")
        .unwrap()
        .seq;
    let first_idle = first.last().unwrap().seq;

    // Turn 2: compacted first (the summary drops the code), then the model asks the log.
    rig.model.push([
        Reply::text("The user gave me a locker code to remember."),
        Reply::tool_use("toolu_q1", "get_events", json!({"text": "locker code is"})),
        Reply::tool_use(
            "toolu_q2",
            "get_events",
            json!({"from": said_at, "to": said_at}),
        ),
        Reply::tool_use(
            "toolu_q3",
            "get_events",
            json!({"types": ["user.message"], "last": 1, "text": "7431-[0-9a-f]{32}", "regex": true}),
        ),
        Reply::Turn {
            content: vec![
                json!({"type": "tool_use", "id": "toolu_bad1", "name": "get_events", "input": {"from": 100000}}),
                json!({"type": "tool_use", "id": "toolu_bad2", "name": "get_events", "input": {"last": 5000}}),
                json!({"type": "tool_use", "id": "toolu_bad3", "name": "get_events", "input": {"from": 9, "to": 3}}),
            ],
            stop_reason: "tool_use".into(),
        },
        Reply::text("Found it."),
    ]);
    rig.say(&id, "What was the locker code?").await;
    let events = rig.idle(&id, 2).await;
    let c = events
        .iter()
        .find_map(|e| match &e.event.body {
            EventBody::AgentThreadContextCompacted(c) => Some(c.clone()),
            _ => None,
        })
        .expect("a compaction");
    assert_eq!(c.compacted_up_to, first_idle);
    assert!(!c.summary.contains("7431"), "the summary lost the detail");

    let received = rig.model.received();
    // 1 first turn + summary + 5 requests of turn 2.
    assert_eq!(received.len(), 7, "{:?}", types(&events));
    let first_after = &received[2].body;
    let tools: Vec<&str> = first_after["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tools, ["get_events"], "on by default once compacted");
    let summary_text = first_after["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(
        summary_text.contains(&format!("events 1 to {first_idle}"))
            && summary_text.contains("get_events"),
        "{summary_text}"
    );
    assert!(!first_after.to_string().contains("7431-"), "compacted away");

    let last = results_sent(&received[6].body);
    let by_id = |id: &str| last.iter().find(|r| r.0 == id).cloned().unwrap();
    for q in ["toolu_q1", "toolu_q2", "toolu_q3"] {
        let (_, text, is_error) = by_id(q);
        assert!(!is_error, "{q}: {text}");
        assert!(
            text.contains(&fact),
            "{q} found the fact byte for byte: {text}"
        );
        assert!(
            text.starts_with(&format!("#{said_at} user.message ")),
            "{q}: {text}"
        );
        assert_eq!(text.lines().count(), 1, "{q}: only the one event: {text}");
    }
    for (q, says) in [
        ("toolu_bad1", "past the end"),
        ("toolu_bad2", "at most 1000"),
        ("toolu_bad3", "after to"),
    ] {
        let (_, text, is_error) = by_id(q);
        assert!(is_error && text.contains(says), "{q}: {text}");
    }
    // Answered by the brain from the log: no sandbox, no tool job.
    assert!(
        !types(&events).iter().any(|t| t.starts_with("sandbox.")),
        "{:?}",
        types(&events)
    );
    let records: Vec<Record> = events.iter().cloned().map(Ok).collect();
    let report = herd::session::check_session(id.clone(), &records, true);
    assert!(report.ok(), "{report:?}");
    // A replay rebuilds the same context from the log alone.
    let results: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::AgentToolResult(r) => Some(content_text(&r.content)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 6);
}
