//! Crashes of the nats-server under load: no acknowledged event is lost or duplicated.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use herd::event::*;
use herd::session::{LogError, SessionLog};

/// Facts from four concurrent writers and conditional two-event steps from a fifth, while the
/// only nats-server is killed with SIGKILL and restarted on the same store, twice. Writers retry
/// with the same message ids through the outage. Afterwards every acknowledged event is in the
/// log exactly once, at the sequence its ack named, and every step is whole and contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crashes_lose_no_acknowledged_event() {
    let mut t = TestNats::start().await;
    let (facts_session, _) = new_session(&t.log).await;
    let (steps_session, steps_start) = new_session(&t.log).await;
    let stop = Arc::new(AtomicBool::new(false));

    let mut fact_writers = Vec::new();
    for w in 0..4 {
        let (log, id, stop) = (t.log.clone(), facts_session.clone(), stop.clone());
        fact_writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let e = user(&format!("writer {w} fact {i}"));
                let a = log
                    .append_fact(&id, &e)
                    .await
                    .expect("fact append retried through the outage");
                acked.push((e.id, a.last_seq, Instant::now()));
                i += 1;
            }
            acked
        }));
    }
    let step_writer = {
        let (log, id, stop) = (t.log.clone(), steps_session.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut last = steps_start;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let step = vec![
                    agent_msg(&format!("step {i} a")),
                    agent_msg(&format!("step {i} b")),
                ];
                match log.append_step(&id, last, &step).await {
                    Ok(a) => {
                        last = a.last_seq;
                        acked.push((step.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), a));
                    }
                    // This writer is the session's only writer, so a conflict would mean a
                    // retry was not recognised as its own landing.
                    Err(e @ LogError::Conflict { .. }) => panic!("single writer got {e}"),
                    Err(e) => panic!("step append failed through the outage: {e}"),
                }
                i += 1;
            }
            acked
        })
    };

    let mut restarted_at = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        t.server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.server.restart().expect("restart nats-server");
        restarted_at.push(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked_facts = Vec::new();
    for w in fact_writers {
        acked_facts.extend(w.await.unwrap());
    }
    let acked_steps = step_writer.await.unwrap();
    let last_restart = *restarted_at.last().unwrap();
    assert!(
        acked_facts.iter().any(|(_, _, at)| *at > last_restart),
        "writers made progress after the last restart"
    );
    assert!(
        acked_steps.len() > 10,
        "only {} steps acknowledged",
        acked_steps.len()
    );

    // A fresh connection reads what survived.
    let log: SessionLog = open_log(connect(&t.server).await).await;
    let stored = |records: Vec<Record>| -> HashMap<EventId, Vec<u64>> {
        let mut m: HashMap<EventId, Vec<u64>> = HashMap::new();
        for r in records {
            let e = r.expect("every stored message is a valid event");
            m.entry(e.event.id).or_default().push(e.seq);
        }
        m
    };
    let facts = stored(log.read_from(&facts_session, 1).await.unwrap());
    for (id, seq, _) in &acked_facts {
        assert_eq!(
            facts.get(id),
            Some(&vec![*seq]),
            "acknowledged fact {id} once, at {seq}"
        );
    }
    assert!(
        facts.values().all(|seqs| seqs.len() == 1),
        "no event stored twice"
    );
    // Every stored fact was acknowledged, except at most one in flight per writer at the end.
    assert!(facts.len() <= acked_facts.len() + 1 + 4);

    let steps = stored(log.read_from(&steps_session, 1).await.unwrap());
    for (ids, a) in &acked_steps {
        assert_eq!(steps.get(&ids[0]), Some(&vec![a.first_seq]));
        assert_eq!(steps.get(&ids[1]), Some(&vec![a.last_seq]));
        assert_eq!(
            a.last_seq,
            a.first_seq + 1,
            "a step's events are contiguous"
        );
    }
    assert!(steps.values().all(|seqs| seqs.len() == 1));
    assert_eq!(
        steps.len(),
        1 + 2 * acked_steps.len(),
        "only acknowledged steps, each whole"
    );
    eprintln!(
        "acknowledged {} facts and {} steps across two server crashes",
        acked_facts.len(),
        acked_steps.len()
    );
}

/// With the server down for longer than the retry budget, an append fails with a clear
/// `Unavailable` error instead of hanging, and nothing half-written appears once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    let mut t = TestNats::start().await;
    let (id, last) = new_session(&t.log).await;
    let impatient = t.log.clone().with_retry(herd::session::RetryPolicy {
        max_elapsed: Duration::from_secs(2),
        ..Default::default()
    });
    t.server.kill();
    let err = impatient
        .append_step(&id, last, &[agent_msg("a"), agent_msg("b")])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("NATS did not answer"), "{err}");
    t.server.restart().unwrap();
    let count = t.log.count(&id).await.unwrap();
    assert!(
        count == 1 || count == 3,
        "the step landed whole or not at all ({count})"
    );
}
