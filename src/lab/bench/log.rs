//! `herd bench log`: the session log against raw JetStream, on a private server.
//!
//! * Conditional append latency for one session (a one-event brain step, and a three-event
//!   atomic step) against a plain JetStream publish-with-ack of the same bytes, interleaved
//!   round by round so both see the same disk and CPU.
//! * Replay of one session of `session_events` events inside a stream holding `background`
//!   events of other sessions: herd's read plus decode plus state fold, against a raw ordered
//!   consumer reading the same messages without decoding.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use serde::Serialize;

use super::{Environment, Summary, ratio};
use crate::bus::subjects;
use crate::event::{
    AgentConfig, AgentMessage, ContentBlock, Event, SessionCreated, SessionId, UserMessage,
};
use crate::session::SessionState;

/// Sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Timed appends per kind.
    pub appends: usize,
    /// Events in the replayed session.
    pub session_events: usize,
    /// Events of other sessions around it.
    pub background: usize,
    /// Timed replays per method.
    pub replays: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            appends: 2_000,
            session_events: 10_000,
            background: 1_000_000,
            replays: 7,
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine and server.
    pub environment: Environment,
    /// The sizes.
    pub params: Params,
    /// herd: one-event conditional step.
    pub append_step_1: Summary,
    /// herd: three-event atomic conditional step.
    pub append_step_3: Summary,
    /// herd: unconditional fact append.
    pub append_fact: Summary,
    /// Raw: JetStream publish with ack.
    pub raw_publish: Summary,
    /// p50 of a one-event step over raw p50.
    pub append_p50_ratio: f64,
    /// p99 of a one-event step over raw p99.
    pub append_p99_ratio: f64,
    /// Events per second while filling the stream (pipelined raw publishes).
    pub fill_events_per_sec: f64,
    /// Messages in the stream when replaying.
    pub stream_messages: u64,
    /// herd replay (read + decode + fold), per run.
    pub replay_herd: Summary,
    /// Raw ordered consumer, per run.
    pub replay_raw_ordered: Summary,
    /// herd median over raw-ordered median.
    pub replay_ratio: f64,
    /// Raw batched direct get of the same messages, no decode: the server's share of herd's
    /// replay.
    pub replay_raw_direct_get: Summary,
    /// herd's decode and fold alone, on records already in memory: its own share.
    pub decode_fold: Summary,
}

fn text_of(n: usize, i: usize) -> String {
    // About 200 bytes of text: a typical short agent message.
    format!(
        "{i:08} {}",
        "lorem ipsum dolor sit amet ".repeat(n / 27 + 1)
    )
}

fn message_event(i: usize) -> Event {
    if i % 2 == 0 {
        Event::new(UserMessage {
            content: vec![ContentBlock::text(text_of(180, i))],
        })
    } else {
        Event::new(AgentMessage {
            content: vec![ContentBlock::text(text_of(180, i))],
        })
    }
}

fn created() -> Event {
    Event::new(SessionCreated::new(AgentConfig::new("bench")))
}

/// Runs the benchmark on a fresh private nats-server, printing progress to stderr.
pub async fn run(params: Params) -> anyhow::Result<Report> {
    let nats = super::PrivateNats::start().await?;
    let (client, js, log) = (nats.client.clone(), nats.js.clone(), nats.log.clone());

    eprintln!("appends: {} timed rounds of each kind…", params.appends);
    let sid = SessionId::generate();
    let mut last = log.create(&sid, &created()).await?.last_seq;
    let raw_subject = subjects::session_event(&SessionId::parse("rawbench")?, "agent.message");
    let (mut step1, mut step3, mut fact, mut raw) = (vec![], vec![], vec![], vec![]);
    let warmup = 50;
    for i in 0..params.appends + warmup {
        let e = message_event(i);
        let bytes = bytes::Bytes::from(e.encode());

        let t = Instant::now();
        js.publish(raw_subject.clone(), bytes).await?.await?;
        let raw_t = t.elapsed();

        let t = Instant::now();
        last = log.append_step(&sid, last, &[e]).await?.last_seq;
        let step1_t = t.elapsed();

        let three: Vec<Event> = (0..3).map(|k| message_event(i + k)).collect();
        let t = Instant::now();
        log.append_step(&sid, last, &three).await?;
        let step3_t = t.elapsed();

        let t = Instant::now();
        last = log.append_fact(&sid, &message_event(i)).await?.last_seq;
        let fact_t = t.elapsed();

        if i >= warmup {
            raw.push(raw_t);
            step1.push(step1_t);
            step3.push(step3_t);
            fact.push(fact_t);
        }
    }
    let (append_step_1, append_step_3, append_fact, raw_publish) = (
        Summary::of(&step1),
        Summary::of(&step3),
        Summary::of(&fact),
        Summary::of(&raw),
    );

    eprintln!(
        "filling: {} events of other sessions around a {}-event session…",
        params.background, params.session_events
    );
    let target = SessionId::generate();
    log.create(&target, &created()).await?;
    let total = params.background + params.session_events;
    let every = (total / params.session_events.max(1)).max(1);
    let fill_start = Instant::now();
    let mut inflight = VecDeque::new();
    let (mut target_n, mut bg_n) = (1usize, 0usize); // session.created counts towards the session
    for i in 0..total {
        let to_target = i % every == 0 && target_n < params.session_events;
        let subject_session = if to_target || bg_n >= params.background {
            target_n += 1;
            target.clone()
        } else {
            bg_n += 1;
            SessionId::parse(format!("bg{:05}", i % 10_000))?
        };
        let e = message_event(i);
        let subject = subjects::session_event(&subject_session, e.type_name());
        inflight.push_back(js.publish(subject, e.encode().into()).await?);
        if inflight.len() >= 4096 {
            inflight.pop_front().expect("non-empty").await?;
        }
        if target_n >= params.session_events && bg_n >= params.background {
            break;
        }
    }
    for ack in inflight {
        ack.await?;
    }
    let filled = bg_n + target_n;
    let fill_events_per_sec = filled as f64 / fill_start.elapsed().as_secs_f64();
    let mut stream = js.get_stream(subjects::SESSIONS_STREAM).await?;
    let stream_messages = stream.info().await?.state.messages;
    let expected = log.count(&target).await?;

    eprintln!(
        "replaying the {expected}-event session {} times each way…",
        params.replays
    );
    let (mut herd_t, mut raw_t, mut direct_t, mut decode_t) = (vec![], vec![], vec![], vec![]);
    let filter = subjects::session_filter(&target);
    for _ in 0..params.replays {
        let t = Instant::now();
        let records = log.read_from(&target, 1).await?;
        let mut state = SessionState::new(target.clone());
        for r in &records {
            state.apply_record(r);
        }
        herd_t.push(t.elapsed());
        anyhow::ensure!(
            state.event_count == expected && state.invalid_records == 0,
            "herd replay read {} events ({} invalid), expected {expected}",
            state.event_count,
            state.invalid_records
        );

        let t = Instant::now();
        let n = raw_ordered_read(&stream, &filter).await?;
        raw_t.push(t.elapsed());
        anyhow::ensure!(n == expected, "raw replay read {n}, expected {expected}");

        let t = Instant::now();
        let payloads = raw_direct_get(&client, &filter).await?;
        direct_t.push(t.elapsed());
        anyhow::ensure!(
            payloads.len() as u64 == expected,
            "direct get read {}",
            payloads.len()
        );

        let t = Instant::now();
        let mut state = SessionState::new(target.clone());
        for (subject, seq, payload) in &payloads {
            if let Some(r) = crate::session::decode_record(subject, *seq, payload) {
                state.apply_record(&r);
            }
        }
        decode_t.push(t.elapsed());
        anyhow::ensure!(state.invalid_records == 0 && state.event_count == expected);
    }
    let (replay_herd, replay_raw_ordered) = (Summary::of(&herd_t), Summary::of(&raw_t));
    Ok(Report {
        environment: Environment::detect(),
        params,
        append_p50_ratio: ratio(append_step_1.p50_us, raw_publish.p50_us),
        append_p99_ratio: ratio(append_step_1.p99_us, raw_publish.p99_us),
        append_step_1,
        append_step_3,
        append_fact,
        raw_publish,
        fill_events_per_sec,
        stream_messages,
        replay_ratio: ratio(replay_herd.p50_us, replay_raw_ordered.p50_us),
        replay_herd,
        replay_raw_ordered,
        replay_raw_direct_get: Summary::of(&direct_t),
        decode_fold: Summary::of(&decode_t),
    })
}

/// Raw batched direct get of every message on `filter`, without decoding.
async fn raw_direct_get(
    client: &async_nats::Client,
    filter: &str,
) -> anyhow::Result<Vec<(String, u64, bytes::Bytes)>> {
    let mut out = Vec::new();
    let mut next = 1u64;
    loop {
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await?;
        let req = serde_json::json!({"seq": next, "batch": 10_000, "next_by_subj": filter});
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", subjects::SESSIONS_STREAM),
                inbox,
                serde_json::to_vec(&req)?.into(),
            )
            .await?;
        let mut pending = 0;
        while let Some(m) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await? {
            if let Some(status) = m.status {
                if status.as_u16() == 204 {
                    pending = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Num-Pending"))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                }
                break;
            }
            let h = m
                .headers
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no headers"))?;
            let seq: u64 = h
                .get("Nats-Sequence")
                .map_or(Ok(0), |v| v.as_str().parse())?;
            let subject = h
                .get("Nats-Subject")
                .map(|v| v.to_string())
                .unwrap_or_default();
            next = seq + 1;
            out.push((subject, seq, m.payload));
        }
        if pending == 0 {
            return Ok(out);
        }
    }
}

/// The raw primitive: an ordered consumer on the session's subjects, read until caught up.
async fn raw_ordered_read(stream: &jetstream::stream::Stream, filter: &str) -> anyhow::Result<u64> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut n = 0;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? {
        let m = m?;
        n += 1;
        if m.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending == 0 {
            break;
        }
    }
    Ok(n)
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let row = |name: &str, s: &Summary| s.row(name);
        let mut t = String::new();
        t.push_str(&format!(
            "herd bench log — {} CPUs, {}, sync_interval {}\n\n",
            self.environment.cpus, self.environment.nats_server, self.environment.sync_interval
        ));
        t.push_str(&format!(
            "append latency ({} rounds):\n",
            self.params.appends
        ));
        t.push_str(&row("raw JetStream publish + ack", &self.raw_publish));
        t.push_str(&row(
            "herd step, 1 event (conditional)",
            &self.append_step_1,
        ));
        t.push_str(&row(
            "herd step, 3 events (atomic batch)",
            &self.append_step_3,
        ));
        t.push_str(&row("herd fact (dedup by id)", &self.append_fact));
        t.push_str(&format!(
            "  ratio herd 1-event step / raw:        p50 {:.2}x   p99 {:.2}x\n\n",
            self.append_p50_ratio, self.append_p99_ratio
        ));
        t.push_str(&format!(
            "replay of a {}-event session in a stream of {} messages (filled at {:.0} events/s), {} runs:\n",
            self.params.session_events, self.stream_messages, self.fill_events_per_sec, self.params.replays
        ));
        t.push_str(&row(
            "raw ordered consumer (no decode)",
            &self.replay_raw_ordered,
        ));
        t.push_str(&row("herd read + decode + fold", &self.replay_herd));
        t.push_str(&row(
            "  of which: raw direct get (no decode)",
            &self.replay_raw_direct_get,
        ));
        t.push_str(&row(
            "  of which: decode + fold in memory",
            &self.decode_fold,
        ));
        t.push_str(&format!(
            "  ratio herd / raw (medians):           {:.2}x   (target: within 1.3x, under 150 ms)\n",
            self.replay_ratio
        ));
        t
    }
}
