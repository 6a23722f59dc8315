//! `herd bench brain`: how fast a brain turns a wake into a model request.
//!
//! * Wake → first byte at the (mock) model server, for sessions of about 10, 100 and 1,000
//!   events: cold (the brain has never seen the session: full replay) and warm (it holds the
//!   session in its cache: it reads only the new events).
//! * The raw floor, in the same run: a JetStream publish to a work queue, a pull consumer
//!   receiving it, and an HTTP POST to the same mock server, with nothing in between.
//! * Cold replay (read + decode + fold) of the 1,000-event sessions.
//! * Wakes per second one brain sustains (many short sessions, the model answering at once).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use serde::Serialize;

use super::{Environment, Summary, ratio};
use crate::bus::subjects;
use crate::event::*;
use crate::lab::mock_model::MockModel;
use crate::session::{SessionLog, SessionState};

/// Sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Sessions measured per size.
    pub sessions_per_size: usize,
    /// Session sizes, in events (approximate: whole turns of six events).
    pub sizes: Vec<usize>,
    /// Sessions in the throughput run.
    pub throughput_sessions: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            sessions_per_size: 40,
            sizes: vec![10, 100, 1000],
            throughput_sessions: 300,
        }
    }
}

/// Figures for one session size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    /// Events in each session before the measured wake.
    pub events: usize,
    /// Wake → first byte, brain cold.
    pub cold: Summary,
    /// Wake → first byte, brain warm.
    pub warm: Summary,
    /// Warm p50 over raw p50.
    pub warm_p50_ratio: f64,
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine and server.
    pub environment: Environment,
    /// Sizes.
    pub params: Params,
    /// Raw publish → pull → HTTP POST first byte.
    pub raw: Summary,
    /// Per session size.
    pub sizes: Vec<SizeReport>,
    /// Read + decode + fold of a ~1,000-event session, cold.
    pub replay_1000_cold: Summary,
    /// Wakes one brain completed per second (each: append, replay, 2 steps, a model call).
    pub wakes_per_sec: f64,
}

fn turn(i: usize) -> Vec<EventBody> {
    let start = EventId::generate();
    vec![
        UserMessage {
            content: vec![ContentBlock::text(format!(
                "question {i}: {}",
                "lorem ipsum ".repeat(8)
            ))],
        }
        .into(),
        SpanModelRequestStart {
            model: Some("claude-bench".into()),
        }
        .into(),
        AgentMessage {
            content: vec![ContentBlock::text(format!(
                "answer {i}: {}",
                "dolor sit amet ".repeat(10)
            ))],
        }
        .into(),
        SpanModelRequestEnd {
            model_request_start_id: Some(start.to_string()),
            model_usage: Usage {
                input_tokens: 100,
                output_tokens: 20,
                ..Default::default()
            },
            is_error: false,
        }
        .into(),
        SessionUsage {
            usage: Usage::default(),
            list_cost: None,
            budget: None,
        }
        .into(),
        SessionStatusIdle {
            stop_reason: StopReason {
                kind: "end_turn".into(),
                event_ids: vec![],
            },
        }
        .into(),
    ]
}

/// Creates a session with about `events` events of finished turns.
async fn prefilled(
    js: &jetstream::Context,
    log: &SessionLog,
    events: usize,
) -> anyhow::Result<SessionId> {
    let id = SessionId::generate();
    let created = Event::new(SessionCreated::new(AgentConfig::new("claude-bench")));
    log.create(&id, &created).await?;
    let mut acks = Vec::new();
    for i in 0..(events.saturating_sub(1) / 6).max(1) {
        for body in turn(i) {
            let e = Event::new(body);
            acks.push(
                js.publish(
                    subjects::session_event(&id, e.type_name()),
                    e.encode().into(),
                )
                .await?,
            );
        }
        if acks.len() > 1000 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(id)
}

async fn wake_with(js: &jetstream::Context, id: &SessionId, text: &str) -> anyhow::Result<Instant> {
    let e = Event::new(UserMessage {
        content: vec![ContentBlock::text(text)],
    });
    let payload = serde_json::json!({ "events": [e.to_json()] }).to_string();
    js.publish(subjects::wake(id), payload.into())
        .await?
        .await?;
    Ok(Instant::now())
}

async fn wait_idle(log: &SessionLog, id: &SessionId, idles: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = log
            .count_by_type(id)
            .await?
            .get("session.status_idle")
            .copied()
            .unwrap_or(0);
        if n as usize >= idles {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "session {id} did not go idle");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs the benchmark on a private nats-server and a local mock model.
pub async fn run(params: Params) -> anyhow::Result<Report> {
    let nats = super::PrivateNats::start().await?;
    let (js, log) = (nats.js.clone(), nats.log.clone());
    let model = MockModel::start().await?;
    let task = nats.start_brain(&model).await?;

    // The raw floor: work-queue publish → pull → HTTP POST first byte at the same server.
    eprintln!("raw floor…");
    let raw = {
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: "BENCH_RAW".into(),
                subjects: vec!["benchraw.>".into()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("raw".into()),
                ..Default::default()
            })
            .await?;
        let mut msgs = consumer.messages().await?;
        let http = reqwest::Client::new();
        let url = format!("{}/v1/messages", model.anthropic_url());
        let mut samples = Vec::new();
        for i in 0..(params.sessions_per_size * 2 + 20) {
            model.clear_received();
            js.publish("benchraw.x", "{}".into()).await?.await?;
            let t0 = Instant::now();
            let m = msgs
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("raw consumer ended"))??;
            let resp = http.post(&url).body(r#"{"messages":[]}"#).send().await?;
            let _ = resp.bytes().await?;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let at = model
                .received()
                .first()
                .map(|r| r.at)
                .ok_or_else(|| anyhow::anyhow!("no request"))?;
            if i >= 20 {
                samples.push(at.saturating_duration_since(t0));
            }
        }
        Summary::of(&samples)
    };

    let mut sizes = Vec::new();
    let mut replay_1000 = Vec::new();
    for &size in &params.sizes {
        eprintln!("sessions of {size} events…");
        let mut ids = Vec::new();
        for _ in 0..params.sessions_per_size {
            ids.push(prefilled(&js, &log, size).await?);
        }
        let events = log.count(&ids[0]).await? as usize;
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for id in &ids {
            for (n, into) in [(1, &mut cold), (2, &mut warm)] {
                model.clear_received();
                let t0 = wake_with(&js, id, "measure me").await?;
                wait_idle(&log, id, events / 6 + n).await?;
                let at = model
                    .received()
                    .first()
                    .map(|r| r.at)
                    .ok_or_else(|| anyhow::anyhow!("no model request"))?;
                into.push(at.saturating_duration_since(t0));
            }
            if size >= 1000 {
                let t = Instant::now();
                let records = log.read_from(id, 1).await?;
                let mut state = SessionState::new(id.clone());
                for r in &records {
                    state.apply_record(r);
                }
                replay_1000.push(t.elapsed());
            }
        }
        let (cold, warm) = (Summary::of(&cold), Summary::of(&warm));
        sizes.push(SizeReport {
            events,
            warm_p50_ratio: ratio(warm.p50_us, raw.p50_us),
            cold,
            warm,
        });
    }

    eprintln!(
        "throughput: {} sessions woken at once…",
        params.throughput_sessions
    );
    let mut ids = Vec::new();
    for _ in 0..params.throughput_sessions {
        ids.push(prefilled(&js, &log, 10).await?);
    }
    let base = log
        .count_by_type(&ids[0])
        .await?
        .get("session.status_idle")
        .copied()
        .unwrap_or(0) as usize;
    let t = Instant::now();
    for id in &ids {
        wake_with(&js, id, "go").await?;
    }
    for id in &ids {
        wait_idle(&log, id, base + 1).await?;
    }
    let wakes_per_sec = ids.len() as f64 / t.elapsed().as_secs_f64();
    task.abort();
    Ok(Report {
        environment: Environment::detect(),
        params,
        raw,
        sizes,
        replay_1000_cold: Summary::of(&replay_1000),
        wakes_per_sec,
    })
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let ms = |us: f64| us / 1000.0;
        let mut t = format!(
            "herd bench brain — {} CPUs, {}, sync_interval {}\n\nwake → first byte at the model server ({} sessions per size):\n",
            self.environment.cpus,
            self.environment.nats_server,
            self.environment.sync_interval,
            self.params.sessions_per_size
        );
        t.push_str(&format!(
            "  {:<34} p50 {:>7.3} ms   p99 {:>7.3} ms\n",
            "raw: publish → pull → HTTP POST",
            ms(self.raw.p50_us),
            ms(self.raw.p99_us)
        ));
        for s in &self.sizes {
            for (name, v) in [("cold", &s.cold), ("warm", &s.warm)] {
                t.push_str(&format!(
                    "  {:<34} p50 {:>7.3} ms   p99 {:>7.3} ms\n",
                    format!("herd, {} events, {name}", s.events),
                    ms(v.p50_us),
                    ms(v.p99_us)
                ));
            }
            t.push_str(&format!(
                "  {:<34} warm p50 {:.2}x raw\n",
                "", s.warm_p50_ratio
            ));
        }
        t.push_str(&format!(
            "\ncold replay (read + decode + fold) of a ~1,000-event session: p50 {:.3} ms, p99 {:.3} ms\n",
            ms(self.replay_1000_cold.p50_us),
            ms(self.replay_1000_cold.p99_us)
        ));
        t.push_str(&format!(
            "one brain sustains {:.0} wakes/s (each: append, replay, two steps, a model call)\n",
            self.wakes_per_sec
        ));
        t.push_str(
            "targets: 100-event warm p50 < 5 ms, p99 < 20 ms; 1,000-event cold replay < 20 ms\n",
        );
        t
    }
}
