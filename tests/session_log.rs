//! The session log against a real nats-server: round trips, deduplication, conditional and
//! atomic appends, slices, following, creation.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use futures_util::StreamExt;
use herd::event::*;
use herd::session::{LogError, Slice};

fn ms(t: time::OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos() / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_round_trips() {
    let t = TestNats::start().await;
    let events = one_of_each();
    // The list covers every type herd knows, so a new type cannot be added untested.
    let types: BTreeSet<&str> = events.iter().map(|e| e.type_name()).collect();
    assert_eq!(types, EventBody::KNOWN_TYPES.iter().copied().collect());

    let id = SessionId::generate();
    t.log.create(&id, &events[0]).await.unwrap();
    for e in &events[1..] {
        t.log.append_fact(&id, e).await.unwrap();
    }
    let back = t.log.read_from(&id, 1).await.unwrap();
    assert_eq!(back.len(), events.len());
    for (sent, got) in events.iter().zip(&back) {
        let got = got.as_ref().expect("a valid event");
        assert_eq!(got.session_id, id);
        assert_eq!(got.event.id, sent.id);
        assert_eq!(got.event.body, sent.body, "{}", sent.type_name());
        assert_eq!(ms(got.event.processed_at), ms(sent.processed_at));
    }
    // Sequences are the positions, strictly increasing.
    let seqs: Vec<u64> = back.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        t.log.last_sequence(&id).await.unwrap(),
        *seqs.last().unwrap()
    );
    assert_eq!(t.log.count(&id).await.unwrap(), events.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_facts_land_once() {
    let t = TestNats::start().await;
    let (id, _) = new_session(&t.log).await;
    let e = user("once");
    let first = t.log.append_fact(&id, &e).await.unwrap();
    assert!(!first.duplicate);
    // The same event again, sequentially and from ten concurrent writers on other connections.
    let again = t.log.append_fact(&id, &e).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.last_seq, first.last_seq);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let log = t.second_log().await;
        let (id, e) = (id.clone(), e.clone());
        tasks.push(tokio::spawn(async move {
            log.append_fact(&id, &e).await.unwrap()
        }));
    }
    for task in tasks {
        let a = task.await.unwrap();
        assert!(a.duplicate);
        assert_eq!(a.last_seq, first.last_seq);
    }
    let records = t.log.read_from(&id, 1).await.unwrap();
    let copies = records
        .iter()
        .filter(|r| r.as_ref().unwrap().event.id == e.id)
        .count();
    assert_eq!(copies, 1);
    assert_eq!(records.len(), 2);
}

/// Two writers, each on its own connection, decide from the same sequence and race to append;
/// hundreds of rounds. Exactly one wins each round; the loser gets a Conflict carrying the
/// winner's sequence; the log holds exactly the winners' events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_appends_never_both_win() {
    let t = TestNats::start().await;
    let (id, mut last) = new_session(&t.log).await;
    let writers = [
        Arc::new(t.second_log().await),
        Arc::new(t.second_log().await),
    ];
    let rounds = 300;
    let mut winners = Vec::new();
    for round in 0..rounds {
        // Alternate one-event steps and three-event atomic steps.
        let size = if round % 2 == 0 { 1 } else { 3 };
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for (w, log) in writers.iter().enumerate() {
            let (log, id, barrier) = (log.clone(), id.clone(), barrier.clone());
            let step: Vec<Event> = (0..size)
                .map(|k| agent_msg(&format!("round {round} writer {w} event {k}")))
                .collect();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (step.clone(), log.append_step(&id, last, &step).await)
            }));
        }
        let mut won = Vec::new();
        let mut conflicts = Vec::new();
        for task in tasks {
            let (step, result) = task.await.unwrap();
            match result {
                Ok(a) => won.push((step, a)),
                Err(LogError::Conflict { expected, actual }) => conflicts.push((expected, actual)),
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: exactly one writer must win");
        assert_eq!(conflicts.len(), 1, "round {round}");
        let (step, a) = won.pop().unwrap();
        assert_eq!(conflicts[0], (last, a.last_seq), "round {round}");
        assert_eq!(a.last_seq - a.first_seq + 1, size as u64);
        last = a.last_seq;
        winners.extend(step.into_iter().map(|e| e.id));
    }
    let stored: Vec<EventId> = t
        .log
        .read_from(&id, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().event.id)
        .collect();
    assert_eq!(
        stored, winners,
        "the log holds exactly the winning steps, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_lands_whole_or_not_at_all() {
    let t = TestNats::start().await;
    let (id, last) = new_session(&t.log).await;

    // A stale multi-event step: nothing of it lands.
    t.log
        .append_fact(&id, &user("moves the session on"))
        .await
        .unwrap();
    let stale: Vec<Event> = (0..5).map(|i| agent_msg(&format!("stale {i}"))).collect();
    let err = t.log.append_step(&id, last, &stale).await.unwrap_err();
    assert!(
        matches!(err, LogError::Conflict { expected, actual } if expected == last && actual == last + 1)
    );
    assert_eq!(t.log.count(&id).await.unwrap(), 2);

    // A step with one event too large for the server: refused before anything is sent.
    let now = t.log.last_sequence(&id).await.unwrap();
    let mut big = vec![agent_msg("fine"), agent_msg(&"x".repeat(2 * 1024 * 1024))];
    big.push(agent_msg("also fine"));
    let err = t.log.append_step(&id, now, &big).await.unwrap_err();
    assert!(
        matches!(err, LogError::TooLarge { max, .. } if max == 1024 * 1024),
        "{err}"
    );
    assert_eq!(t.log.count(&id).await.unwrap(), 2);

    // A batch cut off mid-way (its writer died before the commit) never lands.
    {
        use async_nats::header::*;
        let raw = connect(&t.server).await;
        for seq in 1..=3 {
            let e = agent_msg(&format!("abandoned {seq}"));
            let mut h = async_nats::HeaderMap::new();
            h.insert(NATS_BATCH_ID, "abandonedbatch");
            h.insert(NATS_BATCH_SEQUENCE, seq.to_string().as_str());
            h.insert(NATS_MESSAGE_ID, e.id.as_str());
            let subject = herd::bus::subjects::session_event(&id, "agent.message");
            if seq == 1 {
                raw.request_with_headers(subject, h, e.encode().into())
                    .await
                    .unwrap();
            } else {
                raw.publish_with_headers(subject, h, e.encode().into())
                    .await
                    .unwrap();
            }
        }
        raw.flush().await.unwrap();
        drop(raw);
    }
    // A whole step after it lands at the next position, alone.
    let whole: Vec<Event> = (0..4).map(|i| agent_msg(&format!("whole {i}"))).collect();
    let a = t.log.append_step(&id, now, &whole).await.unwrap();
    assert_eq!(
        (a.first_seq, a.last_seq, a.duplicate),
        (now + 1, now + 4, false)
    );
    let texts: Vec<String> = t
        .log
        .read_from(&id, 1)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.unwrap().event.body {
            EventBody::AgentMessage(m) => Some(content_text(&m.content)),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["whole 0", "whole 1", "whole 2", "whole 3"]);

    // Steps that are not steps.
    let err = t.log.append_step(&id, a.last_seq, &[]).await.unwrap_err();
    assert!(err.to_string().contains("between 1 and 1000"), "{err}");
    let e = agent_msg("twice");
    let err = t
        .log
        .append_step(&id, a.last_seq, &[e.clone(), e])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    let too_many: Vec<Event> = (0..1001).map(|i| agent_msg(&i.to_string())).collect();
    assert!(matches!(
        t.log.append_step(&id, a.last_seq, &too_many).await,
        Err(LogError::Invalid(_))
    ));
    assert_eq!(t.log.count(&id).await.unwrap(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_step_that_landed_is_recognised() {
    let t = TestNats::start().await;
    let (id, last) = new_session(&t.log).await;
    let step = vec![agent_msg("a"), agent_msg("b")];
    let first = t.log.append_step(&id, last, &step).await.unwrap();
    // A retry with the same events and the same expectation (as after a lost ack): the server
    // refuses it (a batch whose ids are stored, or on one event a sequence conflict, since a
    // single server checks the sequence before dedup), and the log recognises its own step.
    let again = t.log.append_step(&id, last, &step).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.first_seq, again.last_seq),
        (first.first_seq, first.last_seq)
    );
    // Even when someone appended after it.
    t.log.append_fact(&id, &user("later")).await.unwrap();
    let third = t.log.append_step(&id, last, &step).await.unwrap();
    assert!(third.duplicate);
    assert_eq!(t.log.count(&id).await.unwrap(), 4);

    // The one-event path (a plain conditional publish, not a batch) does the same.
    let now = t.log.last_sequence(&id).await.unwrap();
    let single = [agent_msg("c")];
    let a = t.log.append_step(&id, now, &single).await.unwrap();
    let b = t.log.append_step(&id, now, &single).await.unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.last_seq, b.last_seq);

    // Reusing an event id of an older step in a new one is refused, not silently dropped.
    let now = t.log.last_sequence(&id).await.unwrap();
    let reuse = [agent_msg("new"), step[0].clone()];
    let err = t.log.append_step(&id, now, &reuse).await.unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Rejected {
                err_code: 10201,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(t.log.count(&id).await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_session() {
    let t = TestNats::start().await;
    let id = SessionId::generate();
    let e = created();
    let a = t.log.create(&id, &e).await.unwrap();
    assert!(!a.duplicate);
    // The same creation again (a retried command): succeeds, nothing new.
    let b = t.log.create(&id, &e).await.unwrap();
    assert!(b.duplicate);
    assert_eq!(a.last_seq, b.last_seq);
    // A different creation of the same id: a clear error.
    let err = t.log.create(&id, &created()).await.unwrap_err();
    assert!(matches!(err, LogError::AlreadyExists(ref s) if *s == id));
    assert_eq!(err.to_string(), format!("session {id} already exists"));
    // Only session.created may create.
    let err = t
        .log
        .create(&SessionId::generate(), &user("x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("session.created"), "{err}");
    // State of the new session.
    let state = t.log.load_state(&id).await.unwrap();
    assert_eq!(state.config.unwrap().agent, agent());
    assert_eq!(state.event_count, 1);
    // An unknown session.
    assert!(matches!(
        t.log.load_state(&SessionId::parse("nope").unwrap()).await,
        Err(LogError::NotFound(_))
    ));
    assert_eq!(
        t.log
            .last_sequence(&SessionId::parse("nope").unwrap())
            .await
            .unwrap(),
        0
    );
    let listed: Vec<SessionId> = t
        .log
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(listed, vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_by_position_count_and_type() {
    let t = TestNats::start().await;
    let (id, _) = new_session(&t.log).await;
    let (other, _) = new_session(&t.log).await;
    for i in 0..30 {
        t.log
            .append_fact(&id, &user(&format!("u{i}")))
            .await
            .unwrap();
        t.log.append_fact(&other, &user("noise")).await.unwrap();
        t.log
            .append_fact(&id, &agent_msg(&format!("a{i}")))
            .await
            .unwrap();
    }
    let all = t.log.read_from(&id, 1).await.unwrap();
    assert_eq!(all.len(), 61);
    let seq = |i: usize| all[i].as_ref().unwrap().seq;
    let seqs = |rs: Vec<Record>| rs.into_iter().map(|r| r.unwrap().seq).collect::<Vec<_>>();

    let from_to = t
        .log
        .read(
            &id,
            &Slice {
                from: Some(seq(10)),
                to: Some(seq(14)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(from_to), (10..=14).map(seq).collect::<Vec<_>>());

    let limited = t
        .log
        .read(
            &id,
            &Slice {
                from: Some(seq(5)),
                limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(limited), vec![seq(5), seq(6), seq(7)]);

    let last = t
        .log
        .read(
            &id,
            &Slice {
                last: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(last), (57..=60).map(seq).collect::<Vec<_>>());

    let users = t
        .log
        .read(
            &id,
            &Slice {
                types: vec!["user.message".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(users.len(), 30);
    assert!(
        users
            .iter()
            .all(|r| r.as_ref().unwrap().event.type_name() == "user.message")
    );

    let two_types = t
        .log
        .read(
            &id,
            &Slice {
                types: vec!["session.created".into(), "agent.message".into()],
                last: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(two_types), vec![seq(58), seq(60)]);

    let counts = t.log.count_by_type(&id).await.unwrap();
    assert_eq!(counts["user.message"], 30);
    assert_eq!(counts["agent.message"], 30);
    assert_eq!(counts["session.created"], 1);

    let err = t
        .log
        .read(
            &id,
            &Slice {
                types: vec!["bad type!".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid"), "{err}");

    let listed = t.log.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&(id.clone(), 61)));
    assert!(listed.contains(&(other.clone(), 31)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_session_reads_across_batches() {
    let t = TestNats::start().await;
    let (id, _) = new_session(&t.log).await;
    let js = async_nats::jetstream::new(t.client.clone());
    let n = herd::session::READ_BATCH + 2_345;
    // Pipelined publishes, awaited in windows: async-nats holds at most 5,000 unacknowledged.
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        let e = user(&i.to_string());
        acks.push_back(
            js.publish(
                herd::bus::subjects::session_event(&id, "user.message"),
                e.encode().into(),
            )
            .await
            .unwrap(),
        );
        if acks.len() >= 1000 {
            acks.pop_front().unwrap().await.unwrap();
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let all = t.log.read_from(&id, 1).await.unwrap();
    assert_eq!(all.len(), n + 1);
    for (i, r) in all[1..].iter().enumerate() {
        match &r.as_ref().unwrap().event.body {
            EventBody::UserMessage(m) => assert_eq!(content_text(&m.content), i.to_string()),
            other => panic!("{other:?}"),
        }
    }
    let state = t.log.load_state(&id).await.unwrap();
    assert_eq!(state.event_count, (n + 1) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_session_live() {
    let t = TestNats::start().await;
    let (id, _) = new_session(&t.log).await;
    t.log.append_fact(&id, &user("before")).await.unwrap();
    let mut live = t.log.follow(&id, 2).await.unwrap();
    let first = live.next().await.unwrap().unwrap().unwrap();
    assert_eq!(first.event.type_name(), "user.message");
    let writer = t.second_log().await;
    let id2 = id.clone();
    tokio::spawn(async move {
        for i in 0..5 {
            writer
                .append_fact(&id2, &agent_msg(&format!("live {i}")))
                .await
                .unwrap();
        }
    });
    for i in 0..5 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), live.next())
            .await
            .expect("a live event")
            .unwrap()
            .unwrap()
            .unwrap();
        match e.event.body {
            EventBody::AgentMessage(m) => assert_eq!(content_text(&m.content), format!("live {i}")),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_apply_is_idempotent() {
    let t = TestNats::start().await;
    let js = async_nats::jetstream::new(t.client.clone());
    let outcomes = herd::bus::streams::apply(&js, 1).await.unwrap();
    let defs = herd::bus::streams::Definitions::load(1).unwrap();
    assert_eq!(outcomes.len(), defs.streams.len() + defs.buckets.len());
    assert_eq!(outcomes.len(), 12, "seven streams and five buckets");
    for o in outcomes {
        assert_eq!(
            o.action,
            herd::bus::streams::Action::Unchanged,
            "{} {}",
            o.kind,
            o.name
        );
    }
    // A drifted setting is put back.
    let mut s = js.get_stream("HERD_SESSIONS").await.unwrap();
    let mut cfg = s.info().await.unwrap().config.clone();
    cfg.allow_direct = false;
    js.update_stream(cfg).await.unwrap();
    let outcomes = herd::bus::streams::apply(&js, 1).await.unwrap();
    assert_eq!(outcomes[0].action, herd::bus::streams::Action::Updated);
    assert!(s.info().await.unwrap().config.allow_direct);
}
