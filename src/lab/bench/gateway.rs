//! `herd bench gateway`: the HTTP API against the NATS primitives under it, in one run.
//!
//! * append → SSE frame at an HTTP client, vs a raw ordered consumer's delivery of the same
//!   append (both subscribed at once);
//! * `events.send` → first byte at the (mock) model, vs a JSON wake published on NATS →
//!   first byte, through the same brain;
//! * listing 1,000 events over HTTP vs a raw replay of them (read + decode), with the JSON
//!   encoding alone stated separately;
//! * many concurrent SSE streams on one gateway: delivery p99 of one append to all of them,
//!   and the gateway process's resident memory per stream.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Environment, Summary, ratio};
use crate::bus::subjects;
use crate::event::*;
use crate::gateway::GatewayConfig;
use crate::lab::mock_model::MockModel;

/// Sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Timed appends (SSE) and sends (model first byte) each.
    pub samples: usize,
    /// Events in the listed session.
    pub list_events: usize,
    /// Concurrent SSE streams.
    pub streams: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            samples: 200,
            list_events: 1000,
            streams: 1000,
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
    /// Append → SSE frame at the client.
    pub sse: Summary,
    /// Append → raw ordered consumer delivery.
    pub raw_follow: Summary,
    /// sse p50 / raw p50.
    pub sse_p50_ratio: f64,
    /// sse p99 / raw p99.
    pub sse_p99_ratio: f64,
    /// `events.send` → model first byte.
    pub send: Summary,
    /// NATS wake publish → model first byte.
    pub raw_wake: Summary,
    /// send p50 − raw wake p50, milliseconds.
    pub send_p50_overhead_ms: f64,
    /// Listing 1,000 events over HTTP (one page, limit 1000).
    pub list_http: Summary,
    /// Raw replay (read + decode) of the same events.
    pub raw_replay: Summary,
    /// JSON encoding of the page alone (the API's shape).
    pub json_encode: Summary,
    /// list_http p50 / (raw replay p50 + json p50).
    pub list_p50_ratio: f64,
    /// One append's delivery to every one of the concurrent streams.
    pub fanout: Summary,
    /// Resident memory per open stream (KiB), from /proc/self/status before and after.
    pub kib_per_stream: f64,
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "herd bench gateway — {} cpus, {}\n",
            self.environment.cpus, self.environment.nats_server
        );
        s += &self.sse.row("append → SSE frame at the HTTP client");
        s += &self.raw_follow.row("append → raw ordered consumer");
        s += &format!(
            "  ratio p50 {:.2}x  p99 {:.2}x\n",
            self.sse_p50_ratio, self.sse_p99_ratio
        );
        s += &self.send.row("events.send → model first byte");
        s += &self.raw_wake.row("NATS wake publish → model first byte");
        s += &format!("  p50 overhead {:.3} ms\n", self.send_p50_overhead_ms);
        s += &self.list_http.row(&format!(
            "list {} events over HTTP",
            self.params.list_events
        ));
        s += &self.raw_replay.row("raw replay (read + decode)");
        s += &self.json_encode.row("JSON encoding of the page alone");
        s += &format!("  ratio p50 {:.2}x of raw + JSON\n", self.list_p50_ratio);
        s += &self
            .fanout
            .row(&format!("one append → {} streams", self.params.streams));
        s += &format!("  memory {:.1} KiB per stream\n", self.kib_per_stream);
        s
    }
}

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// The agent (model `claude-bench`) and environment every benchmark session is made from.
pub(crate) async fn agent_and_environment(
    http: &reqwest::Client,
    base: &str,
    key: &str,
) -> anyhow::Result<(Value, Value)> {
    let agent = post(
        http,
        &format!("{base}/v1/agents"),
        key,
        json!({"name": "bench", "model": "claude-bench"}),
    )
    .await?;
    let env = post(
        http,
        &format!("{base}/v1/environments"),
        key,
        json!({"name": "bench"}),
    )
    .await?;
    Ok((agent, env))
}

/// POSTs a JSON body with the key; the answer's JSON, or an error naming the status.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let r = http
        .post(url)
        .bearer_auth(key)
        .body(body.to_string())
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
    Ok(serde_json::from_slice(&r.bytes().await?)?)
}

/// An SSE stream's frames as (event id, arrival) pairs.
fn sse_ids(resp: reqwest::Response) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            let at = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
                    && let Ok(v) = serde_json::from_str::<Value>(data)
                    && let Some(id) = v["id"].as_str()
                    && tx.send((id.to_string(), at)).is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

async fn wait_idles(
    log: &crate::session::SessionLog,
    id: &SessionId,
    n: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while log
        .count_by_type(id)
        .await?
        .get("session.status_idle")
        .copied()
        .unwrap_or(0)
        < n
    {
        anyhow::ensure!(Instant::now() < deadline, "session {id} did not go idle");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Runs the benchmark on a private nats-server, an in-process gateway, brain and mock model.
pub async fn run(params: Params) -> anyhow::Result<Report> {
    let nats = super::PrivateNats::start().await?;
    let model = MockModel::start().await?;
    nats.start_brain(&model).await?;
    let config = GatewayConfig {
        max_streams: params.streams + 16,
        max_streams_per_tenant: params.streams + 16,
        ..Default::default()
    };
    let (base, key) = nats.start_gateway(&config, "bench").await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    let (agent, env) = agent_and_environment(&http, &base, &key).await?;
    let sessions_url = format!("{base}/v1/sessions");
    let new_session = || {
        post(
            &http,
            &sessions_url,
            &key,
            json!({"agent": agent["id"], "environment_id": env["id"]}),
        )
    };
    let sid = |s: &Value| SessionId::parse(s["id"].as_str().unwrap_or_default());

    // 1. append → SSE frame, and → raw ordered consumer, both subscribed.
    eprintln!("append → SSE vs raw follow ({} appends)…", params.samples);
    let s = sid(&new_session().await?)?;
    let stream = http
        .get(format!("{base}/v1/sessions/{s}/events/stream"))
        .bearer_auth(&key)
        .send()
        .await?;
    let mut frames = sse_ids(stream);
    let mut raw = nats
        .log
        .follow(&s, nats.log.last_sequence(&s).await? + 1)
        .await?;
    let (mut sse, mut raw_follow) = (Vec::new(), Vec::new());
    for i in 0..params.samples + 20 {
        let e = Event::new(SystemMessage {
            content: vec![ContentBlock::text(format!("tick {i}"))],
        });
        let t0 = Instant::now();
        nats.log.append_fact(&s, &e).await?;
        let r = raw
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("follow ended"))??;
        let raw_at = Instant::now();
        anyhow::ensure!(
            r.map(|r| r.event.id == e.id).unwrap_or(false),
            "raw follow out of order"
        );
        let (id, at) = frames
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("SSE ended"))?;
        anyhow::ensure!(id == e.id.as_str(), "SSE out of order");
        if i >= 20 {
            raw_follow.push(raw_at - t0);
            sse.push(at - t0);
        }
    }
    drop(frames);

    // 2. events.send → model first byte, vs a NATS wake → first byte.
    eprintln!("events.send vs NATS wake → model first byte…");
    let (a, b) = (sid(&new_session().await?)?, sid(&new_session().await?)?);
    let (mut send, mut raw_wake) = (Vec::new(), Vec::new());
    let samples = params.samples.min(100);
    for i in 0..samples + 5 {
        model.clear_received();
        let t0 = Instant::now();
        post(&http, &format!("{base}/v1/sessions/{a}/events"), &key,
            json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]})).await?;
        wait_idles(&nats.log, &a, i as u64 + 1).await?;
        let first = model
            .received()
            .first()
            .map(|r| r.at)
            .ok_or_else(|| anyhow::anyhow!("no model request"))?;
        model.clear_received();
        let e = Event::new(UserMessage {
            content: vec![ContentBlock::text("hi")],
        });
        let payload = json!({"events": [e.to_json()]}).to_string();
        let t1 = Instant::now();
        nats.js
            .publish(subjects::wake(&b), payload.into())
            .await?
            .await?;
        wait_idles(&nats.log, &b, i as u64 + 1).await?;
        let second = model
            .received()
            .first()
            .map(|r| r.at)
            .ok_or_else(|| anyhow::anyhow!("no model request"))?;
        if i >= 5 {
            send.push(first.saturating_duration_since(t0));
            raw_wake.push(second.saturating_duration_since(t1));
        }
    }

    // 3. list 1,000 events vs raw replay.
    eprintln!("list {} events vs raw replay…", params.list_events);
    let l = sid(&new_session().await?)?;
    for i in 0..params.list_events.saturating_sub(1) {
        let e = Event::new(SystemMessage {
            content: vec![ContentBlock::text(format!(
                "event {i} {}",
                "lorem ipsum ".repeat(6)
            ))],
        });
        nats.log.append_fact(&l, &e).await?;
    }
    let (mut list_http, mut raw_replay, mut json_encode) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..25 {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/v1/sessions/{l}/events?limit=1000"))
            .bearer_auth(&key)
            .send()
            .await?;
        let body = r.bytes().await?;
        let d_http = t.elapsed();
        anyhow::ensure!(body.len() > 1000, "empty list");
        let t = Instant::now();
        let records = nats.log.read_from(&l, 1).await?;
        let d_raw = t.elapsed();
        let t = Instant::now();
        let page: Vec<Value> = records
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(crate::gateway::view::event)
            .collect();
        let _ = json!({"data": page, "next_page": null}).to_string();
        let d_json = t.elapsed();
        if i >= 5 {
            list_http.push(d_http);
            raw_replay.push(d_raw);
            json_encode.push(d_json);
        }
    }

    // 4. many streams on one gateway.
    eprintln!("{} concurrent streams…", params.streams);
    if let Ok(a) = nats.js.query_account().await {
        eprintln!(
            "  account: {} consumers now, limit {:?}; HERD_SESSIONS max_consumers {}",
            a.consumers,
            a.limits.max_consumers,
            nats.js
                .get_stream("HERD_SESSIONS")
                .await?
                .info()
                .await?
                .config
                .max_consumers
        );
    }
    let f = sid(&new_session().await?)?;
    let before = rss_kib();
    let mut receivers = Vec::new();
    for _ in 0..params.streams {
        let r = http
            .get(format!("{base}/v1/sessions/{f}/events/stream"))
            .bearer_auth(&key)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "stream refused: {}", r.status());
        receivers.push(sse_ids(r));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib_per_stream = (rss_kib() - before) / params.streams.max(1) as f64;
    let mut fanout = Vec::new();
    for i in 0..5 {
        let e = Event::new(SystemMessage {
            content: vec![ContentBlock::text(format!("fan {i}"))],
        });
        let t0 = Instant::now();
        nats.log.append_fact(&f, &e).await?;
        for r in &mut receivers {
            let (id, at) = r
                .recv()
                .await
                .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            anyhow::ensure!(id == e.id.as_str(), "fan-out out of order");
            fanout.push(at - t0);
        }
    }
    let (sse, raw_follow) = (Summary::of(&sse), Summary::of(&raw_follow));
    let (send, raw_wake) = (Summary::of(&send), Summary::of(&raw_wake));
    let (list_http, raw_replay, json_encode) = (
        Summary::of(&list_http),
        Summary::of(&raw_replay),
        Summary::of(&json_encode),
    );
    Ok(Report {
        environment: Environment::detect(),
        sse_p50_ratio: ratio(sse.p50_us, raw_follow.p50_us),
        sse_p99_ratio: ratio(sse.p99_us, raw_follow.p99_us),
        send_p50_overhead_ms: (send.p50_us - raw_wake.p50_us) / 1000.0,
        list_p50_ratio: ratio(list_http.p50_us, raw_replay.p50_us + json_encode.p50_us),
        fanout: Summary::of(&fanout),
        kib_per_stream,
        params,
        sse,
        raw_follow,
        send,
        raw_wake,
        list_http,
        raw_replay,
        json_encode,
    })
}
