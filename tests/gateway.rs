//! The gateway (the Managed Agents HTTP API) against a real nats-server with herd's auth, a
//! real brain and hand, and the mock model: the official Python SDK's whole flow, tenants
//! kept apart, bad input refused in the SDK's envelope, and streams that resume on another
//! gateway without a gap.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use herd::auth::Role;
use herd::brain::BrainConfig;
use herd::brain::provider::{ProviderSettings, Timeouts};
use herd::config::Secret;
use herd::event::{EventBody, SessionId};
use herd::gateway::{Gateway, GatewayConfig, keys, store::Store};
use herd::lab::mock_model::{MockModel, Reply, answers_a_tool_result};
use serde_json::{Value, json};

const CANARY_KEY: &str = "sk-ant-canary-gateway-0000";

/// The text of the newest user message of a model request.
fn last_user_text(body: &Value) -> String {
    let Some(m) = body["messages"].as_array().and_then(|m| m.last()) else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The mock model's answers: "go" calls bash and a custom tool, "deny" calls bash, "long"
/// answers after 3 s, "slow" after 1.5 s, a tool result gets "done".
fn responder(model: &MockModel) {
    let n = Arc::new(AtomicU64::new(0));
    model.set_responder(move |body| {
        let id = |n: &AtomicU64| format!("toolu_{}", n.fetch_add(1, Ordering::SeqCst));
        if answers_a_tool_result(body) {
            return Reply::text("done");
        }
        let text = last_user_text(body);
        if text.contains("long") {
            Reply::Delayed(Duration::from_secs(3), Box::new(Reply::text("finally")))
        } else if text.contains("slow") {
            Reply::Delayed(Duration::from_millis(1500), Box::new(Reply::text("slowly")))
        } else if text.contains("go") {
            Reply::Turn {
                content: vec![
                    json!({"type": "tool_use", "id": id(&n), "name": "bash", "input": {"command": "echo from-the-sandbox"}}),
                    json!({"type": "tool_use", "id": id(&n), "name": "get_weather", "input": {"city": "Paris"}}),
                ],
                stop_reason: "tool_use".into(),
            }
        } else if text.contains("deny") {
            Reply::tool_use(&id(&n), "bash", json!({"command": "echo never"}))
        } else {
            Reply::text("ok")
        }
    });
}

struct Deployment {
    t: TestNats,
    model: MockModel,
    url: String,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Deployment {
    async fn start() -> Self {
        Self::start_with(GatewayConfig::default()).await
    }

    async fn start_with(config: GatewayConfig) -> Self {
        ensure_image("busybox");
        let t = TestNats::start().await;
        let model = MockModel::start().await.unwrap();
        responder(&model);
        let brain = herd::brain::Brain::new(
            connect_as(&t.server, Role::Brain).await,
            BrainConfig {
                name: host("gw-brain-"),
                providers: ProviderSettings {
                    anthropic_api_key: Some(Secret::new(CANARY_KEY)),
                    anthropic_base_url: Some(model.anthropic_url()),
                    openai_api_key: None,
                    openai_base_url: None,
                    timeouts: Timeouts {
                        idle: Duration::from_secs(10),
                        total: Duration::from_secs(30),
                    },
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let b = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
        let (h, _) = start_hands(
            &t,
            &host("gw-hand-"),
            "herd-sandbox:busybox",
            Duration::from_secs(10),
        )
        .await;
        let gw = Gateway::open(
            connect_as(&t.server, Role::Gateway).await,
            &config,
            Some(herd::credentials::vault::VaultKey::from_hex(&"ab".repeat(32)).unwrap()),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let g = tokio::spawn(async move {
            herd::gateway::serve_on(gw, listener, std::future::pending())
                .await
                .unwrap()
        });
        Self {
            t,
            model,
            url,
            _tasks: vec![b, h, g],
        }
    }

    async fn key(&self, tenant: &str) -> String {
        let store = Store::open(async_nats::jetstream::new(self.t.client.clone()))
            .await
            .unwrap();
        keys::create(&store, tenant, None).await.unwrap().0
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn call(method: &str, url: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let c = http();
    let mut r = match method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "DELETE" => c.delete(url),
        _ => unreachable!(),
    }
    .bearer_auth(key)
    .header("content-type", "application/json");
    if let Some(b) = body {
        r = r.body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn sdk_python() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/.herd/sdk-venv/bin/python");
    assert!(
        std::path::Path::new(p).exists(),
        "the official SDK is not installed: run scripts/ensure-sdk (scripts/test does)"
    );
    p.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_drives_herd_unchanged() {
    let d = Deployment::start().await;
    let key = d.key("acme").await;
    let out = tokio::process::Command::new(sdk_python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/flow.py"))
        .env("HERD_BASE_URL", &d.url)
        .env("HERD_KEY", &key)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), out)
        .await
        .expect("the SDK flow finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK flow failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains(&key) && !stderr.contains(&key));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        summary["checks"].as_array().unwrap().len() >= 40,
        "{summary}"
    );
    // What the SDK made is an ordinary herd session: its session.created holds the tenant
    // and the resolved agent version, and herd's checker finds nothing wrong with its log.
    let id = SessionId::parse(summary["session"].as_str().unwrap()).unwrap();
    let state = d.t.log.load_state(&id).await.unwrap();
    let created = state.config.unwrap();
    let origin = created.origin.unwrap();
    assert_eq!(origin.tenant, "acme");
    assert_eq!(origin.agent["version"], 2);
    assert_eq!(created.agent.model, "claude-sonnet-4-6");
    assert!(
        created
            .agent
            .tools
            .iter()
            .any(|t| t.name == "get_weather" && t.kind == "custom")
    );
    let report = d.t.log.check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    // The brain's model key never reached the client.
    assert!(!stdout.contains(CANARY_KEY) && !stderr.contains(CANARY_KEY));
    assert!(d.model.count() >= 5);
}

async fn make_objects(url: &str, key: &str) -> (String, String, String, String) {
    let (s, agent) = call(
        "POST",
        &format!("{url}/v1/agents"),
        key,
        Some(json!({"name": "a", "model": "claude-sonnet-4-6"})),
    )
    .await;
    assert_eq!(s, 200, "{agent}");
    let (s, env) = call(
        "POST",
        &format!("{url}/v1/environments"),
        key,
        Some(json!({"name": "e"})),
    )
    .await;
    assert_eq!(s, 200, "{env}");
    let (s, vault) = call(
        "POST",
        &format!("{url}/v1/vaults"),
        key,
        Some(json!({"display_name": "v"})),
    )
    .await;
    assert_eq!(s, 200, "{vault}");
    let (s, session) = call(
        "POST",
        &format!("{url}/v1/sessions"),
        key,
        Some(
            json!({"agent": agent["id"], "environment_id": env["id"], "vault_ids": [vault["id"]]}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{session}");
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    (id(&agent), id(&env), id(&vault), id(&session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_objects() {
    let d = Deployment::start().await;
    let a = d.key("tenant-a").await;
    let b = d.key("tenant-b").await;
    let url = &d.url;
    let (agent, env, vault, session) = make_objects(url, &a).await;
    for path in [
        format!("/v1/agents/{agent}"),
        format!("/v1/agents/{agent}/versions"),
        format!("/v1/environments/{env}"),
        format!("/v1/vaults/{vault}"),
        format!("/v1/vaults/{vault}/credentials"),
        format!("/v1/sessions/{session}"),
        format!("/v1/sessions/{session}/events"),
        format!("/v1/sessions/{session}/events/stream"),
    ] {
        let (s, body) = call("GET", &format!("{url}{path}"), &b, None).await;
        assert_eq!(s, 404, "{path}: {body}");
        assert_eq!(body["error"]["type"], "not_found_error", "{path}");
    }
    for path in [
        "/v1/agents",
        "/v1/environments",
        "/v1/vaults",
        "/v1/sessions",
    ] {
        let (s, body) = call("GET", &format!("{url}{path}"), &b, None).await;
        assert_eq!(s, 200);
        assert_eq!(body["data"], json!([]), "{path} of tenant b: {body}");
        let (_, mine) = call("GET", &format!("{url}{path}"), &a, None).await;
        assert_eq!(
            mine["data"].as_array().unwrap().len(),
            1,
            "{path} of tenant a"
        );
    }
    let msg =
        json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]});
    let before =
        d.t.log
            .count(&SessionId::parse(&session).unwrap())
            .await
            .unwrap();
    let (s, _) = call(
        "POST",
        &format!("{url}/v1/sessions/{session}/events"),
        &b,
        Some(msg),
    )
    .await;
    assert_eq!(s, 404);
    for (m, path) in [
        ("POST", format!("/v1/sessions/{session}/archive")),
        ("DELETE", format!("/v1/sessions/{session}")),
        ("DELETE", format!("/v1/environments/{env}")),
        ("DELETE", format!("/v1/vaults/{vault}")),
        ("POST", format!("/v1/agents/{agent}")),
        ("POST", format!("/v1/agents/{agent}/archive")),
    ] {
        let (s, body) = call(
            m,
            &format!("{url}{path}"),
            &b,
            Some(json!({"description": "x"})),
        )
        .await;
        assert_eq!(s, 404, "{m} {path}: {body}");
    }
    assert_eq!(
        d.t.log
            .count(&SessionId::parse(&session).unwrap())
            .await
            .unwrap(),
        before
    );
    // Naming the other tenant's vault, agent or environment in a new session.
    let (b_agent, b_env, _, _) = make_objects(url, &b).await;
    for body in [
        json!({"agent": b_agent, "environment_id": b_env, "vault_ids": [vault]}),
        json!({"agent": agent, "environment_id": b_env}),
        json!({"agent": b_agent, "environment_id": env}),
    ] {
        let (s, r) = call(
            "POST",
            &format!("{url}/v1/sessions"),
            &b,
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 404, "{body}: {r}");
    }
    // No key, a wrong key, a revoked key: 401 in the envelope.
    let (s, r) = call("GET", &format!("{url}/v1/agents"), "", None).await;
    assert_eq!(
        (s, r["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let (s, _) = call("GET", &format!("{url}/v1/agents"), "herd_sk_nope", None).await;
    assert_eq!(s, 401);
    let store = Store::open(async_nats::jetstream::new(d.t.client.clone()))
        .await
        .unwrap();
    let rec = keys::list(&store, Some("tenant-b"))
        .await
        .unwrap()
        .remove(0);
    keys::revoke(&store, &rec.id).await.unwrap();
    tokio::time::sleep(herd::gateway::KEY_CACHE_TTL + Duration::from_millis(200)).await;
    let (s, r) = call("GET", &format!("{url}/v1/agents"), &b, None).await;
    assert_eq!(s, 401, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("revoked"));
    // x-api-key is accepted too.
    let r = http()
        .get(format!("{url}/v1/agents"))
        .header("x-api-key", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_in_the_envelope_and_appends_nothing() {
    let d = Deployment::start().await;
    let key = d.key("acme").await;
    let url = &d.url;
    let (agent, _, _, session) = make_objects(url, &key).await;
    let sid = SessionId::parse(&session).unwrap();
    let before = d.t.log.count(&sid).await.unwrap();
    // A connection per case: the gateway closes one whose 5 MiB body it refused unread, and
    // a pooled client could write the next case into it before it sees the close (a broken
    // pipe seen once in a clean-clone CI run).
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let raw = |method: reqwest::Method, path: String, body: Vec<u8>| {
        c.request(method, format!("{url}{path}"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let events = format!("/v1/sessions/{session}/events");
    let cases: Vec<(reqwest::Method, String, Vec<u8>, u16, &str)> = vec![
        (reqwest::Method::POST, events.clone(), b"{not json".to_vec(), 400, "not valid JSON"),
        (reqwest::Method::POST, events.clone(), br#"{"events":[{"type":"agent.message","content":[]}]}"#.to_vec(), 400, "agent.message"),
        (reqwest::Method::POST, events.clone(), br#"{"events":[{"type":"user.mesage","content":[]}]}"#.to_vec(), 400, "unknown event type"),
        (reqwest::Method::POST, events.clone(), br#"{"events":[]}"#.to_vec(), 400, "empty"),
        (reqwest::Method::POST, events.clone(), br#"{"events":[{"type":"user.message","content":[{"type":"text","text":"a"}]},{"type":"user.bogus"}]}"#.to_vec(), 400, "user.bogus"),
        (reqwest::Method::POST, events.clone(), br#"[1,2]"#.to_vec(), 400, "JSON object"),
        (reqwest::Method::POST, events.clone(), vec![b' '; 5 << 20], 413, "larger than"),
        (reqwest::Method::GET, format!("{events}?page=bogus"), vec![], 400, "cursor"),
        (reqwest::Method::GET, format!("{events}?types[]=user.nope"), vec![], 400, "not an event type"),
        (reqwest::Method::GET, format!("{events}?limit=1001"), vec![], 400, "limit"),
        (reqwest::Method::GET, format!("{events}?frob=1"), vec![], 400, "unknown query parameter"),
        (reqwest::Method::GET, format!("/v1/sessions?search={}", "x".repeat(201)), vec![], 400, "search: at most 200"),
        (reqwest::Method::GET, format!("/v1/sessions/{session}/tool_outputs/a.b"), vec![], 404, "not found"),
        (reqwest::Method::GET, "/v1/sessions/sesn_a.b".into(), vec![], 404, "not found"),
        (reqwest::Method::GET, "/v1/sessions/../etc".into(), vec![], 404, ""),
        (reqwest::Method::GET, format!("/v1/agents/{agent}?version=0"), vec![], 400, "version"),
        (reqwest::Method::POST, "/v1/agents".into(), br#"{"name":"x","model":"m","bogus":true}"#.to_vec(), 400, "bogus"),
        (reqwest::Method::POST, "/v1/environments".into(), br#"{"name":"x","config":{"type":"cloud","networking":{"type":"unrestricted"}}}"#.to_vec(), 400, "unrestricted"),
        (reqwest::Method::POST, "/v1/sessions".into(), br#"{"agent":"agent_missing","environment_id":"env_x"}"#.to_vec(), 404, "agent"),
        (reqwest::Method::GET, "/v1/nowhere".into(), vec![], 404, "route"),
        (reqwest::Method::PUT, "/v1/agents".into(), vec![], 405, "method"),
    ];
    for (method, path, body, status, needle) in cases {
        let r = raw(method.clone(), path.clone(), body).await.unwrap();
        let got = r.status().as_u16();
        let rid = r
            .headers()
            .get("request-id")
            .map(|v| v.to_str().unwrap().to_string());
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(got, status, "{method} {path}: {v}");
        assert_eq!(v["type"], "error", "{path}");
        assert!(v["error"]["type"].is_string());
        assert_eq!(v["request_id"].as_str(), rid.as_deref(), "{path}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{method} {path}: {v}"
        );
    }
    // A request with oversized headers.
    let r = c
        .get(format!("{url}/v1/agents"))
        .bearer_auth(&key)
        .header("x-big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(
        d.t.log.count(&sid).await.unwrap(),
        before,
        "nothing appended"
    );
}

/// One SSE frame.
#[derive(Debug, Clone)]
struct Frame {
    id: Option<u64>,
    event: String,
    data: Value,
}

fn frames(buf: &mut String) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let (mut id, mut event, mut data) = (None, None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).ok();
            }
        }
        if let (Some(event), Some(data)) = (event, data) {
            out.push(Frame { id, event, data });
        }
    }
    out
}

struct GatewayProcess(Child);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_gateway(d: &Deployment) -> (GatewayProcess, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .envs(herd_env(&d.t.server))
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (GatewayProcess(child), url)
}

async fn open_stream(url: &str, key: &str, session: &str, last: Option<u64>) -> reqwest::Response {
    let mut r = http()
        .get(format!("{url}/v1/sessions/{session}/events/stream"))
        .bearer_auth(key)
        .header("accept", "application/json");
    if let Some(l) = last {
        r = r.header("last-event-id", l.to_string());
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_on_another_gateway_without_a_gap() {
    let d = Deployment::start().await;
    let key = d.key("acme").await;
    let (gw1, url1) = spawn_gateway(&d);
    let (_gw2, url2) = spawn_gateway(&d);
    let (_, _, _, session) = make_objects(&url1, &key).await;
    let mut first = open_stream(&url1, &key, &session, None)
        .await
        .bytes_stream();
    let msg = json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "slow one"}]}]});
    let (s, _) = call(
        "POST",
        &format!("{url1}/v1/sessions/{session}/events"),
        &key,
        Some(msg),
    )
    .await;
    assert_eq!(s, 200);
    // Read until the turn is running, then kill that gateway mid-stream.
    let mut buf = String::new();
    let mut seen: Vec<Frame> = Vec::new();
    while !seen.iter().any(|f| f.event == "session.status_running") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), first.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        seen.extend(frames(&mut buf));
    }
    drop(gw1);
    let last = seen.last().unwrap().id.unwrap();
    // A browser's EventSource reconnects with Last-Event-ID on the second gateway.
    let mut second = open_stream(&url2, &key, &session, Some(last))
        .await
        .bytes_stream();
    let mut resumed: Vec<Frame> = Vec::new();
    let mut buf = String::new();
    while !resumed.iter().any(|f| f.event == "session.status_idle") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), second.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        resumed.extend(frames(&mut buf));
    }
    // Together: exactly the session's shown events after the stream opened, in order, once.
    let (_, listed) = call(
        "GET",
        &format!("{url2}/v1/sessions/{session}/events?limit=1000"),
        &key,
        None,
    )
    .await;
    let listed: Vec<String> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let streamed: Vec<String> = seen
        .iter()
        .chain(&resumed)
        .map(|f| f.data["id"].as_str().unwrap().to_string())
        .collect();
    let start = listed
        .iter()
        .position(|i| *i == streamed[0])
        .expect("the first streamed event is listed");
    assert_eq!(
        &listed[start..start + streamed.len()],
        &streamed[..],
        "no gap, no repeat"
    );
    assert_eq!(
        listed.len(),
        start + streamed.len(),
        "nothing after idle was missed"
    );
    let ids: Vec<u64> = seen.iter().chain(&resumed).map(|f| f.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // A client without Last-Event-ID re-lists on the other gateway and misses nothing: every
    // event it saw is in the list, with the rest of the turn.
    for f in &seen {
        assert!(listed.contains(&f.data["id"].as_str().unwrap().to_string()));
    }
    assert!(listed.iter().any(|i| {
        resumed
            .iter()
            .any(|f| f.data["id"] == i.as_str() && f.event == "agent.message")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_with_an_idempotency_key_lands_once() {
    let d = Deployment::start().await;
    let key = d.key("acme").await;
    let url = &d.url;
    let (_, _, _, session) = make_objects(url, &key).await;
    let sid = SessionId::parse(&session).unwrap();
    let send = |text: &'static str, idem: &'static str| {
        http()
            .post(format!("{url}/v1/sessions/{session}/events"))
            .bearer_auth(&key)
            .header("idempotency-key", idem)
            .body(json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]}).to_string())
            .send()
    };
    let first = send("hello", "retry-me-1").await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = serde_json::from_str(&first.text().await.unwrap()).unwrap();
    let again = send("hello", "retry-me-1").await.unwrap();
    assert_eq!(again.status(), 200, "a retry is answered as the first was");
    let again: Value = serde_json::from_str(&again.text().await.unwrap()).unwrap();
    assert_eq!(first["data"][0]["id"], again["data"][0]["id"]);
    let other = send("something else", "retry-me-1").await.unwrap();
    assert_eq!(other.status(), 409, "the same key with another body");
    wait_idles(&d.t, &sid, 1).await;
    let messages = d.t.log.count_by_type(&sid).await.unwrap();
    assert_eq!(
        messages.get("user.message").copied(),
        Some(1),
        "{messages:?}"
    );
    // Another key sends a new message.
    assert_eq!(send("hello", "retry-me-2").await.unwrap().status(), 200);
    wait_idles(&d.t, &sid, 2).await;
}

/// The tenant rule lives in `api/`, not in the gateway: any front door acting for a tenant
/// gets another tenant's session refused as not found, and cannot make a session for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_itself_keeps_tenants_apart() {
    use herd::api::{Api, Principal};
    use herd::event::{AgentConfig, Origin, SessionCreated};
    let t = TestNats::start().await;
    let for_tenant = |tenant: &str| Principal {
        tenant: Some(tenant.into()),
        ..Principal::operator()
    };
    let a = Api::open(connect(&t.server).await, for_tenant("a"))
        .await
        .unwrap();
    let b = Api::open(connect(&t.server).await, for_tenant("b"))
        .await
        .unwrap();
    let created = |tenant: &str| SessionCreated {
        origin: Some(Origin {
            tenant: tenant.into(),
            agent: json!({}),
            environment: json!({}),
        }),
        ..SessionCreated::new(AgentConfig::new("scripted"))
    };
    let id = SessionId::generate();
    a.create(&id, created("a")).await.unwrap();
    let err = b
        .create(&SessionId::generate(), created("a"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), herd::api::ErrorClass::Forbidden, "{err}");
    assert_eq!(a.state(&id).await.unwrap().event_count, 1);
    let before = t.log.count(&id).await.unwrap();
    let not_found =
        |e: herd::api::ApiError| assert_eq!(e.class(), herd::api::ErrorClass::NotFound, "{e}");
    not_found(b.state(&id).await.unwrap_err());
    not_found(b.read(&id, &Default::default()).await.unwrap_err());
    not_found(b.follow(&id, 1).await.err().unwrap());
    not_found(b.message(&id, None, "hi").await.unwrap_err());
    not_found(b.interrupt(&id).await.unwrap_err());
    not_found(b.terminate(&id, "archived").await.unwrap_err());
    not_found(b.describe(&id, Some("x".into()), None).await.unwrap_err());
    assert_eq!(t.log.count(&id).await.unwrap(), before, "nothing appended");
    // The tenant itself still can.
    a.message(&id, None, "hi").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_per_tenant_and_their_inputs_checked() {
    let d = Deployment::start_with(GatewayConfig {
        max_streams_per_tenant: 2,
        ..GatewayConfig::default()
    })
    .await;
    let (a, b) = (d.key("acme").await, d.key("other").await);
    let url = &d.url;
    let (_, _, _, session) = make_objects(url, &a).await;
    let (_, _, _, theirs) = make_objects(url, &b).await;
    let stream = |key: &str, session: &str, query: &str, last: Option<&str>| {
        let mut r = http()
            .get(format!("{url}/v1/sessions/{session}/events/stream{query}"))
            .bearer_auth(key);
        if let Some(l) = last {
            r = r.header("last-event-id", l);
        }
        r.send()
    };
    // Bad input on the stream: each a 400 in the envelope, before any stream slot is taken.
    for (query, last, needle) in [
        ("?event_deltas[]=agent.bogus", None, "event_deltas"),
        ("?nope=1", None, "unknown query parameter"),
        ("?types[]=sandbox.bogus", None, "not an event type"),
        ("", Some("abc"), "Last-Event-ID"),
        ("", Some("18446744073709551615"), "out of range"),
    ] {
        let r = stream(&a, &session, query, last).await.unwrap();
        assert_eq!(r.status(), 400, "{query} {last:?}");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    // Two streams for the tenant; a third is a 429; another tenant is not held back.
    let one = stream(&a, &session, "", None).await.unwrap();
    let two = stream(&a, &session, "?event_deltas[]=agent.message", None)
        .await
        .unwrap();
    assert_eq!((one.status().as_u16(), two.status().as_u16()), (200, 200));
    let three = stream(&a, &session, "", None).await.unwrap();
    assert_eq!(three.status(), 429);
    let v: Value = serde_json::from_str(&three.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(stream(&b, &theirs, "", None).await.unwrap().status(), 200);
    // A closed stream gives its slot back.
    drop(one);
    let mut again = 0;
    for _ in 0..50 {
        again = stream(&a, &session, "", None)
            .await
            .unwrap()
            .status()
            .as_u16();
        if again == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again, 200, "the slot of a closed stream is given back");
    // An Idempotency-Key that is not one.
    let r = http()
        .post(format!("{url}/v1/sessions/{session}/events"))
        .bearer_auth(&a)
        .header("idempotency-key", "k".repeat(257))
        .body(json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "x"}]}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        d.t.log
            .count_by_type(&SessionId::parse(&session).unwrap())
            .await
            .unwrap()
            .get("user.message"),
        None,
        "nothing appended"
    );
}

#[test]
fn keys_refuse_bad_tenants_and_unknown_ids() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(TestNats::start());
    for (args, needle) in [
        (vec!["keys", "create", "--tenant", "a.b"], "tenant"),
        (vec!["keys", "create", "--tenant", ""], "tenant"),
        (vec!["keys", "revoke", "key_nope"], "no API key"),
        (vec!["keys", "revoke", "a b"], "key id"),
    ] {
        let out = herd_with_key(&t.server, &"ab".repeat(32), &args, b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = herd_with_key(
        &t.server,
        &"ab".repeat(32),
        &["keys", "create", "--tenant", "ok"],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("herd_sk_"));
    let listed = herd_with_key(&t.server, &"ab".repeat(32), &["keys", "list"], b"");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(" ok ") && !listed.contains(&key),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_through_the_gateway_fire_and_stay_the_tenants() {
    let d = Deployment::start().await;
    let a = d.key("tenant-a").await;
    let b = d.key("tenant-b").await;
    let url = &d.url;
    let (_, _, _, session) = make_objects(url, &a).await;
    let base = format!("{url}/v1/sessions/{session}/schedules");
    let (s, set) = call(
        "POST",
        &base,
        &a,
        Some(json!({"name": "ping", "when": "in 3s", "prompt": "scheduled hello"})),
    )
    .await;
    assert_eq!(s, 200, "{set}");
    assert!(set["when"].as_str().unwrap().starts_with("at "), "{set}");
    let (s, later) = call(
        "POST",
        &base,
        &a,
        Some(json!({"name": "later", "when": "every 1h", "prompt": "hourly"})),
    )
    .await;
    assert_eq!(s, 200, "{later}");
    let (s, list) = call("GET", &base, &a, None).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    // Another tenant sees nothing and can change nothing.
    for (m, path, body) in [
        ("GET", base.clone(), None),
        (
            "POST",
            base.clone(),
            Some(json!({"name": "x", "when": "in 1m", "prompt": "p"})),
        ),
        ("DELETE", format!("{base}/later"), None),
    ] {
        let (s, body) = call(m, &path, &b, body).await;
        assert_eq!(s, 404, "{m} {path}: {body}");
    }
    // Bad input: what is wrong, in the error envelope.
    for (body, want) in [
        (
            json!({"name": "x", "when": "every 1s", "prompt": "p"}),
            "shortest interval",
        ),
        (
            json!({"name": "x.y", "when": "in 1m", "prompt": "p"}),
            "is not valid",
        ),
        (json!({"name": "x", "when": "in 1m"}), "prompt"),
        (
            json!({"name": "x", "when": "in 1m", "prompt": "p", "extra": 1}),
            "extra",
        ),
    ] {
        let (s, resp) = call("POST", &base, &a, Some(body)).await;
        assert_eq!(s, 400, "{resp}");
        assert!(
            resp["error"]["message"].as_str().unwrap().contains(want),
            "{resp}"
        );
    }
    let (s, del) = call("DELETE", &format!("{base}/later"), &a, None).await;
    assert_eq!(s, 200, "{del}");
    let (s, _) = call("DELETE", &format!("{base}/later"), &a, None).await;
    assert_eq!(s, 404);
    // It fires: the prompt reaches the session and the model answers.
    let sid = SessionId::parse(&session).unwrap();
    let events = wait_until(&d.t, &sid, 60, |ev| {
        let fired = ev.iter().find(
            |e| matches!(&e.event.body, EventBody::SessionScheduleFired(f) if f.name == "ping"),
        );
        fired.is_some_and(|f| {
            ev.iter()
                .any(|e| e.seq > f.seq && matches!(e.event.body, EventBody::SessionStatusIdle(_)))
        })
    })
    .await;
    assert!(events.iter().any(|e| matches!(&e.event.body,
        EventBody::UserMessage(m) if herd::event::content_text(&m.content).contains("scheduled hello"))));
    let (s, list) = call("GET", &base, &a, None).await;
    assert_eq!(
        (s, list["data"].as_array().unwrap().len()),
        (200, 0),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_fork_of_a_tenants_session_is_that_tenants() {
    let d = Deployment::start().await;
    let a = d.key("tenant-a").await;
    let b = d.key("tenant-b").await;
    let url = &d.url;
    let (_, _, _, session) = make_objects(url, &a).await;
    let msg = json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "before the fork"}]}]});
    let (s, _) = call(
        "POST",
        &format!("{url}/v1/sessions/{session}/events"),
        &a,
        Some(msg),
    )
    .await;
    assert_eq!(s, 200);
    let sid = SessionId::parse(&session).unwrap();
    wait_until(&d.t, &sid, 60, |ev| {
        ev.iter()
            .any(|e| matches!(e.event.body, EventBody::SessionStatusIdle(_)))
    })
    .await;
    let out = herd_out(&d.t.server, &["session", "fork", &session]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("listed for tenant tenant-a"), "{said}");
    let child = said.lines().last().unwrap().trim().to_string();
    let (s, view) = call("GET", &format!("{url}/v1/sessions/{child}"), &a, None).await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["id"], child.as_str());
    let (s, events) = call(
        "GET",
        &format!("{url}/v1/sessions/{child}/events"),
        &a,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(events.to_string().contains("before the fork"), "{events}");
    let (s, _) = call("GET", &format!("{url}/v1/sessions/{child}"), &b, None).await;
    assert_eq!(s, 404, "another tenant does not see the fork");
    let (s, list) = call("GET", &format!("{url}/v1/sessions"), &a, None).await;
    assert_eq!(s, 200);
    assert!(list.to_string().contains(&child), "{list}");
}
