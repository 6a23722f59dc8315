//! The console (`/console` on the gateway) in a real browser: Debian's Chromium, headless,
//! driven over the DevTools protocol by `tests/console/drive.py`, against a real nats-server
//! with herd's auth, a real brain and hand (Docker), a `herd gateway` process and the mock
//! model. A scripted session runs while the page is open; a confirmation and a custom tool are
//! answered on the page; hostile content is shown, never run; the gateway is killed and
//! restarted mid-session and the page shows every event exactly once; another tenant's key
//! sees nothing of it. Screenshots go to `target/artifacts/console/`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use herd::auth::Role;
use herd::brain::BrainConfig;
use herd::brain::provider::{ProviderSettings, Timeouts};
use herd::config::Secret;
use herd::event::{EventBody, SessionId};
use herd::gateway::{keys, store::Store};
use herd::lab::mock_model::{MockModel, Reply, answers_a_tool_result};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The text of the newest message of a model request (its text blocks, or its tool results').
fn last_text(body: &Value) -> String {
    let Some(m) = body["messages"].as_array().and_then(|m| m.last()) else {
        return String::new();
    };
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|b| walk(b, out)),
            Value::Object(o) => {
                if let Some(t) = o.get("text") {
                    walk(t, out);
                }
                if let Some(c) = o.get("content") {
                    walk(c, out);
                }
            }
            _ => {}
        }
    }
    walk(&m["content"], &mut out);
    out.join(" ")
}

/// The scripted model: "approve" calls bash (always_ask), "lookup" the custom tool, "hostile"
/// echoes its hostile text through bash and back, anything else is answered in words.
fn responder(model: &MockModel) {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    model.set_responder(move |body| {
        let id = || {
            format!(
                "toolu_console_{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            )
        };
        let text = last_text(body);
        if answers_a_tool_result(body) {
            return if text.contains("<script>") {
                Reply::text(&format!("hostile answer {text}"))
            } else if text.contains("console-allowed") {
                Reply::text("done: console-allowed")
            } else if text.contains("herd big output line") {
                Reply::text("done: big output")
            } else if text.contains("gpj.exe") {
                Reply::text("done: bidi")
            } else {
                Reply::text(&format!("the person said {}", text.trim()))
            };
        }
        if let Some(hostile) = text.strip_prefix("hostile ") {
            let command = format!("cat <<'HERD_EOF'\n{hostile}\nHERD_EOF");
            Reply::tool_use(&id(), "bash", json!({ "command": command }))
        } else if text.contains("big output") {
            Reply::tool_use(
                &id(),
                "bash",
                json!({"command": "yes 'herd big output line' | head -c 100000"}),
            )
        } else if text.contains("bidi") {
            Reply::tool_use(
                &id(),
                "bash",
                json!({"command": "echo safe\u{202e}gpj.exe"}),
            )
        } else if text.contains("approve") {
            Reply::tool_use(&id(), "bash", json!({"command": "echo console-allowed"}))
        } else if text.contains("lookup") {
            Reply::tool_use(&id(), "lookup", json!({"q": "the answer"}))
        } else if text.contains("while the gateway was down") {
            Reply::text("answered while the gateway was down")
        } else if text.contains("hello from the page") {
            Reply::text("hello back from the model")
        } else {
            Reply::text("ok")
        }
    });
}

struct GatewayProcess(Child);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `herd gateway` on `port`, waited for until it accepts connections.
fn spawn_gateway(t: &TestNats, port: u16) -> GatewayProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .envs(herd_env(&t.server))
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    GatewayProcess(child)
}

fn python() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/.herd/sdk-venv/bin/python");
    assert!(
        std::path::Path::new(p).exists(),
        "the test venv is missing: run scripts/ensure-sdk (scripts/test does)"
    );
    p.to_string()
}

fn require_chromium() {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "chromium is not installed: run scripts/ensure-chromium (scripts/test does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_watches_and_answers_a_live_session_in_a_real_browser() {
    require_chromium();
    ensure_image("busybox");
    let t = TestNats::start().await;
    let model = MockModel::start().await.unwrap();
    responder(&model);
    let brain = herd::brain::Brain::new(
        connect_as(&t.server, Role::Brain).await,
        BrainConfig {
            name: host("console-brain-"),
            providers: ProviderSettings {
                anthropic_api_key: Some(Secret::new("sk-ant-console-test")),
                anthropic_base_url: Some(model.anthropic_url()),
                timeouts: Timeouts {
                    idle: Duration::from_secs(10),
                    total: Duration::from_secs(30),
                },
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _brain = tokio::spawn(async move { brain.run(std::future::pending()).await.unwrap() });
    let (_hands, _) = start_hands(
        &t,
        &host("console-hand-"),
        "herd-sandbox:busybox",
        Duration::from_secs(10),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gateway = spawn_gateway(&t, port);
    let url = format!("http://127.0.0.1:{port}");
    let store = Store::open(async_nats::jetstream::new(t.client.clone()))
        .await
        .unwrap();
    let key = keys::create(&store, "acme", None).await.unwrap().0;
    let rival_key = keys::create(&store, "rival", None).await.unwrap().0;

    // The rival tenant's session, which acme's page must never show.
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (http, key, url) = (&http, &rival_key, format!("{url}{path}"));
        async move {
            let text = http
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let agent = post(
        "/v1/agents",
        json!({"name": "r", "model": "claude-sonnet-4-6"}),
    )
    .await;
    let env = post("/v1/environments", json!({"name": "r"})).await;
    let rival = post(
        "/v1/sessions",
        json!({"agent": agent["id"], "environment_id": env["id"], "title": "rival secret plans"}),
    )
    .await;
    let rival_session = rival["id"].as_str().unwrap().to_string();

    let artifacts = concat!(env!("CARGO_MANIFEST_DIR"), "/target/artifacts/console");
    std::fs::create_dir_all(artifacts).unwrap();
    let mut driver = tokio::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/console/drive.py"
        ))
        .env("HERD_URL", &url)
        .env("HERD_KEY", &key)
        .env("HERD_RIVAL_KEY", &rival_key)
        .env("HERD_RIVAL_SESSION", &rival_session)
        .env("HERD_ARTIFACTS", artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = driver.stdin.take().unwrap();
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let stderr = driver.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut s).await;
        s
    });
    let mut summary = None;
    let mut stalls = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(sid) = line.strip_prefix("CTL restart ") {
                // The gateway dies mid-session; a turn happens while it is down; another
                // starts on the same port. The page must reconnect and miss nothing.
                let started = std::time::Instant::now();
                drop(gateway);
                let sid = SessionId::parse(sid).unwrap();
                let before = idles(&t, &sid).await;
                send(&t, &sid, "a message while the gateway was down").await;
                wait_idles(&t, &sid, before + 1).await;
                gateway = spawn_gateway(&t, port);
                stalls.push(started.elapsed());
                stdin.write_all(b"ok\n").await.unwrap();
            } else if line.starts_with('{') {
                summary = Some(line);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finished within 4 minutes");
    let status = driver.wait().await.unwrap();
    let stderr = stderr.await.unwrap();
    assert!(status.success(), "the browser test failed:\n{stderr}");
    assert!(!stderr.contains(&key) && !stderr.contains(&rival_key));
    let summary: Value = serde_json::from_str(&summary.expect("a summary line")).unwrap();
    assert!(
        summary["checks"].as_array().unwrap().len() >= 30,
        "{summary}"
    );
    assert_eq!(stalls.len(), 1, "the gateway was restarted once");
    for shot in [
        "console-list.png",
        "console-timeline.png",
        "console-confirmation.png",
    ] {
        let bytes = std::fs::read(format!("{artifacts}/{shot}")).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{shot}"
        );
    }
    // What the page did is an ordinary, sound herd log.
    let sid = SessionId::parse(summary["session"].as_str().unwrap()).unwrap();
    let report = t.log.check(&sid, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

async fn idles(t: &TestNats, id: &SessionId) -> usize {
    t.log
        .read_from(id, 1)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .filter(|e| matches!(e.event.body, EventBody::SessionStatusIdle(_)))
        .count()
}
