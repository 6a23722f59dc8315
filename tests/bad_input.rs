//! Bad input gets a clear error, loses nothing and crashes nothing.

mod common;

use common::*;
use futures_util::StreamExt;
use herd::bus::subjects;
use herd::event::*;
use herd::session::{LogError, Status};

/// What other systems (or a person with the nats CLI) might publish into a session: garbage,
/// JSON events, unknown types, wrong shapes, mismatched subjects. A replay reports each bad
/// message in place and carries on; the state fold counts them; good events around them are
/// intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_survives_whatever_was_published() {
    let t = TestNats::start().await;
    let (id, _) = new_session(&t.log).await;
    let js = async_nats::jetstream::new(t.client.clone());
    let publish = |event_type: &str, payload: &[u8]| {
        let subject = subjects::session_event(&id, event_type);
        let payload = payload.to_vec();
        let js = js.clone();
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        }
    };
    t.log.append_fact(&id, &user("before")).await.unwrap();
    let garbage = publish("user.message", b"\x00\xff garbage").await;
    let json_ok = publish(
        "user.message",
        br#"{"id":"from-python-1","type":"user.message","content":[{"type":"text","text":"hi from python"}]}"#,
    )
    .await;
    let unknown = publish(
        "tenant.audit_note",
        br#"{"id":"note-1","type":"tenant.audit_note","by":"ops","tags":["a"]}"#,
    )
    .await;
    let wrong_shape = publish(
        "user.message",
        br#"{"id":"bad-shape","type":"user.message","content":"not a list"}"#,
    )
    .await;
    let mismatch = publish(
        "agent.message",
        br#"{"id":"mismatch","type":"user.message","content":[]}"#,
    )
    .await;
    let empty = publish("user.message", b"").await;
    t.log.append_fact(&id, &user("after")).await.unwrap();

    let records = t.log.read_from(&id, 1).await.unwrap();
    assert_eq!(records.len(), 9, "every message is reported, none skipped");
    let at = |seq: u64| {
        records
            .iter()
            .find(|r| match r {
                Ok(e) => e.seq == seq,
                Err(b) => b.seq == seq,
            })
            .unwrap()
    };
    let invalid = |seq: u64| at(seq).as_ref().unwrap_err().error.clone();

    assert!(
        invalid(garbage).contains("not valid MessagePack"),
        "{}",
        invalid(garbage)
    );
    assert!(
        invalid(wrong_shape).contains("\"user.message\" event are invalid"),
        "{}",
        invalid(wrong_shape)
    );
    assert!(
        invalid(mismatch).contains("does not match the subject"),
        "{}",
        invalid(mismatch)
    );
    assert!(invalid(empty).contains("empty"), "{}", invalid(empty));
    match &at(json_ok).as_ref().unwrap().event.body {
        EventBody::UserMessage(m) => assert_eq!(content_text(&m.content), "hi from python"),
        other => panic!("{other:?}"),
    }
    match &at(unknown).as_ref().unwrap().event.body {
        EventBody::Unknown(u) => {
            assert_eq!(u.type_name, "tenant.audit_note");
            assert_eq!(u.fields["tags"][0], "a");
        }
        other => panic!("{other:?}"),
    }
    let texts: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.as_ref().ok()?.event.body {
            EventBody::UserMessage(m) => Some(content_text(&m.content)),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["before", "hi from python", "after"]);

    let state = t.log.load_state(&id).await.unwrap();
    assert_eq!((state.event_count, state.invalid_records), (9, 4));
    assert_eq!(state.status, Status::Idle);

    // Following the session meets the same messages without failing.
    let mut live = t.log.follow(&id, 1).await.unwrap();
    let mut invalid_seen = 0;
    for _ in 0..9 {
        let record = live.next().await.unwrap().unwrap();
        invalid_seen += usize::from(record.is_err());
    }
    assert_eq!(invalid_seen, 4);
    // The log is still writable after all that.
    let last = t.log.last_sequence(&id).await.unwrap();
    t.log
        .append_step(&id, last, &[agent_msg("still fine")])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_refuse_bad_events_clearly_and_store_nothing() {
    let t = TestNats::start().await;
    let (id, last) = new_session(&t.log).await;

    // Oversized: names the event, its size and the limit.
    let big = user(&"x".repeat(1024 * 1024));
    let err = t.log.append_fact(&id, &big).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LogError::TooLarge { .. }));
    assert!(
        msg.contains(big.id.as_str()) && msg.contains("1048576"),
        "{msg}"
    );

    // An event type that is not subject-safe (possible only through an Unknown body).
    let bad_type = Event::new(EventBody::Unknown(UnknownEvent {
        type_name: "Bad Type>".into(),
        fields: Default::default(),
    }));
    let err = t.log.append_fact(&id, &bad_type).await.unwrap_err();
    assert!(err.to_string().contains("dot-separated lowercase"), "{err}");
    let err = t.log.append_step(&id, last, &[bad_type]).await.unwrap_err();
    assert!(matches!(err, LogError::Invalid(_)), "{err}");

    assert_eq!(t.log.count(&id).await.unwrap(), 1, "nothing was stored");
}

#[test]
fn subject_unsafe_ids_are_refused_with_the_reason() {
    for (bad, why) in [
        ("", "empty"),
        ("has.dot", "'.'"),
        ("star*", "'*'"),
        ("gt>", "'>'"),
        ("sp ace", "' '"),
        ("ünï", "'ü'"),
    ] {
        let err = SessionId::parse(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad:?}: {err}");
        let err = EventId::parse(bad).unwrap_err().to_string();
        assert!(err.starts_with("event id"), "{bad:?}: {err}");
    }
    let err = SessionId::parse("x".repeat(200)).unwrap_err().to_string();
    assert!(err.contains("200 characters"), "{err}");
}
