//! `herd bench console`: the console in headless Chromium against plain HTTP clients of the
//! same gateway, in one run (the browser side is `tests/console/bench.py`, over the DevTools
//! protocol; it needs `scripts/ensure-chromium` and `scripts/ensure-sdk`):
//!
//! * first paint of a 1,000-event session's timeline (navigation start → the last event in
//!   the DOM: page load, session read, stream replay and rendering), vs a plain HTTP client
//!   reading the same replay;
//! * append → on the page (a message POSTed until the page has rendered it), vs a plain SSE
//!   client on the same session, open at the same time;
//! * the size of the page's assets.

use serde::Serialize;
use serde_json::{Value, json};

use super::gateway::{agent_and_environment, post};
use super::{Environment, PrivateNats, Summary, ratio};
use crate::event::*;
use crate::gateway::GatewayConfig;

/// Sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Events in the long session.
    pub events: usize,
    /// Timed appends.
    pub samples: usize,
    /// Timed first paints (and raw replays).
    pub repeats: usize,
    /// The Python with websocket-client (`scripts/ensure-sdk` makes it).
    pub python: String,
    /// The browser side.
    pub driver: String,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            events: 1000,
            samples: 50,
            repeats: 5,
            python: ".herd/sdk-venv/bin/python".into(),
            driver: "tests/console/bench.py".into(),
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine and server.
    pub environment: Environment,
    /// Sizes.
    pub params: Params,
    /// The browser that measured.
    pub browser: String,
    /// Navigation start → the long session's last event in the DOM.
    pub first_paint: Summary,
    /// Navigation start → the console's script opening the timeline (the browser loading the
    /// page and its two files).
    pub page_ready: Summary,
    /// Navigation start → the stream's response headers at the page.
    pub stream_opened: Summary,
    /// Navigation start → the stream's first bytes at the page.
    pub first_chunk: Summary,
    /// Navigation start → the first events in the DOM (page, script, session read, stream
    /// opened): what is left of first paint is the replay's arrival and rendering.
    pub first_events: Summary,
    /// Renders (animation frames with new events) until the last event was in the DOM.
    pub flushes: Vec<u64>,
    /// A plain HTTP client reading the same stream replay.
    pub raw_replay: Summary,
    /// first paint p50 / raw replay p50.
    pub first_paint_p50_ratio: f64,
    /// A POSTed message → rendered on the page.
    pub append_to_page: Summary,
    /// The same message → its frame at a plain SSE client.
    pub append_to_sse: Summary,
    /// append→page p50 / append→SSE p50.
    pub append_p50_ratio: f64,
    /// append→page p99 / append→SSE p99.
    pub append_p99_ratio: f64,
    /// Bytes of the page, its script and its style sheet.
    pub asset_bytes: usize,
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "herd bench console — {} cpus, {}, {}\n",
            self.environment.cpus, self.environment.nats_server, self.browser
        );
        s += &self.first_paint.row(&format!(
            "first paint, {}-event timeline",
            self.params.events
        ));
        s += &self
            .page_ready
            .row("  of which: page loaded, script running");
        s += &self
            .stream_opened
            .row("  of which: stream response headers");
        s += &self.first_chunk.row("  of which: stream's first bytes");
        s += &self.first_events.row("  of which: first events in the DOM");
        s += &self.raw_replay.row("plain HTTP read of the same replay");
        s += &format!("  ratio p50 {:.2}x\n", self.first_paint_p50_ratio);
        s += &self.append_to_page.row("append → shown on the page");
        s += &self
            .append_to_sse
            .row("append → frame at a plain SSE client");
        s += &format!(
            "  ratio p50 {:.2}x  p99 {:.2}x\n",
            self.append_p50_ratio, self.append_p99_ratio
        );
        s += &format!(
            "  assets: {} bytes (page, script, style; uncompressed)\n",
            self.asset_bytes
        );
        s
    }
}

/// One turn of a realistic session: a message, a tool call and its result, spans, usage and
/// an answer (ten events), for the long session.
fn turn(i: usize) -> Vec<Event> {
    let call = format!("toolu_bench_{i}");
    let text = |t: String| vec![ContentBlock::text(t)];
    vec![
        Event::new(SessionStatusRunning {}),
        Event::new(SpanModelRequestStart {
            model: Some("claude-bench".into()),
        }),
        Event::new(AgentThinking {
            content: text(format!("thinking about step {i}")),
        }),
        Event::new(AgentToolUse {
            tool_use_id: call.clone(),
            name: "bash".into(),
            input: json!({"command": format!("ls -la /workspace/step-{i}")}),
            evaluated_permission: None,
        }),
        Event::new(AgentToolResult {
            tool_use_id: call,
            content: text(format!(
                "exit code: 0\n--- stdout ---\n{}",
                "drwxr-xr-x 2 agent agent 4096 file\n".repeat(8)
            )),
            is_error: false,
            output_ref: None,
        }),
        Event::new(SpanModelRequestEnd {
            model_request_start_id: None,
            model_usage: Usage::default(),
            is_error: false,
        }),
        Event::new(AgentMessage {
            content: text(format!(
                "Step {i} is done. **Files** listed:\n\n- `a.txt`\n- `b.txt`\n\nSee [the docs](https://example.com/docs)."
            )),
        }),
        Event::new(SessionUsage {
            usage: Usage {
                input_tokens: 100 * i as u64,
                output_tokens: 20 * i as u64,
                ..Default::default()
            },
            list_cost: None,
            budget: None,
        }),
        Event::new(SessionStatusIdle {
            stop_reason: StopReason {
                kind: "end_turn".into(),
                event_ids: vec![],
            },
        }),
    ]
}

/// Runs the benchmark.
pub async fn run(params: Params) -> anyhow::Result<Report> {
    anyhow::ensure!(
        std::path::Path::new(&params.python).exists(),
        "{} is missing: run scripts/ensure-sdk (it installs websocket-client)",
        params.python
    );
    anyhow::ensure!(
        std::process::Command::new("chromium")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "chromium is not installed: run scripts/ensure-chromium"
    );
    anyhow::ensure!(params.events >= 10, "--events must be at least 10");
    anyhow::ensure!(params.samples >= 1, "--samples must be at least 1");
    anyhow::ensure!(params.repeats >= 1, "--repeats must be at least 1");
    let nats = PrivateNats::start().await?;
    let (base, key) = nats
        .start_gateway(&GatewayConfig::default(), "bench")
        .await?;
    crate::tls::install_crypto();
    let http = reqwest::Client::new();
    let (agent, env) = agent_and_environment(&http, &base, &key).await?;
    let mut sessions = Vec::new();
    for title in ["long", "live"] {
        let s: Value = post(
            &http,
            &format!("{base}/v1/sessions"),
            &key,
            json!({"agent": agent["id"], "environment_id": env["id"], "title": title}),
        )
        .await?;
        sessions.push(SessionId::parse(s["id"].as_str().unwrap_or_default())?);
    }
    eprintln!(
        "writing a {}-event session (turns of a message, a tool call, spans, usage)…",
        params.events
    );
    let long = &sessions[0];
    let mut count = nats.log.read_from(long, 1).await?.len();
    let mut i = 0;
    while count < params.events {
        let msg = Event::new(UserMessage {
            content: vec![ContentBlock::text(format!("please do step {i}"))],
        });
        nats.log.append_fact(long, &msg).await?;
        count += 1;
        let mut step = turn(i);
        step.truncate(params.events.saturating_sub(count));
        if !step.is_empty() {
            let last = nats.log.last_sequence(long).await?;
            nats.log.append_step(long, last, &step).await?;
            count += step.len();
        }
        i += 1;
    }
    eprintln!("driving headless Chromium ({})…", params.driver);
    let out = tokio::process::Command::new(&params.python)
        .arg(&params.driver)
        .env("HERD_URL", &base)
        .env("HERD_KEY", &key)
        .env("HERD_SESSION", long.as_str())
        .env("HERD_EVENTS", count.to_string())
        .env("HERD_LIVE_SESSION", sessions[1].as_str())
        .env("HERD_SAMPLES", params.samples.to_string())
        .env("HERD_REPEATS", params.repeats.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?
        .wait_with_output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "the browser side failed ({})",
        out.status
    );
    let v: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap_or_default(),
    )?;
    let ms = |k: &str| -> Vec<std::time::Duration> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .filter(|m| m.is_finite() && *m >= 0.0)
            .map(|m| std::time::Duration::from_secs_f64(m / 1000.0))
            .collect()
    };
    let (first_paint, raw_replay) = (
        Summary::of(&ms("first_paint_ms")),
        Summary::of(&ms("raw_replay_ms")),
    );
    let (page, sse) = (
        Summary::of(&ms("append_to_page_ms")),
        Summary::of(&ms("append_to_sse_ms")),
    );
    Ok(Report {
        environment: Environment::detect(),
        browser: v["browser"].as_str().unwrap_or("?").to_string(),
        first_paint_p50_ratio: ratio(first_paint.p50_us, raw_replay.p50_us),
        append_p50_ratio: ratio(page.p50_us, sse.p50_us),
        append_p99_ratio: ratio(page.p99_us, sse.p99_us),
        first_paint,
        page_ready: Summary::of(&ms("opened_ms")),
        stream_opened: Summary::of(&ms("stream_opened_ms")),
        first_chunk: Summary::of(&ms("first_chunk_ms")),
        first_events: Summary::of(&ms("first_flush_ms")),
        flushes: v["flushes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect(),
        raw_replay,
        append_to_page: page,
        append_to_sse: sse,
        asset_bytes: crate::gateway::console::asset_bytes(),
        params: Params {
            events: count,
            ..params
        },
    })
}
