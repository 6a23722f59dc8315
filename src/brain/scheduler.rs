//! The brains' half of scheduled wakes (see `bus::schedules`): each firing the server publishes
//! is taken by one brain, recorded in the session's log as `session.schedule_fired` and a
//! `user.message` carrying the schedule's prompt (ids derived from the schedule and the
//! occurrence, so a redelivered firing lands nothing twice), and the session is woken.

use time::format_description::well_known::Rfc3339;

use crate::bus::schedules::{self, Fired};
use crate::bus::subjects;
use crate::bus::work_queue::{ConsumerSpec, Delivery};
use crate::event::{
    ContentBlock, Event, EventBody, EventId, SessionId, SessionScheduleFired, StoredEvent,
    UserMessage,
};
use crate::session::{LogError, SessionLog, Slice};

/// The consumer firings are taken from, shared by every brain.
pub fn consumer(ack_wait: std::time::Duration, max_deliver: i64) -> ConsumerSpec {
    ConsumerSpec {
        stream: subjects::SCHEDULES_STREAM,
        durable: schedules::CONSUMER.into(),
        description: "herd brains: scheduled wakes as they fire".into(),
        filter: subjects::ALL_SCHEDULE_FIRES.into(),
        ack_wait,
        max_deliver,
        backoff: Vec::new(),
    }
}

/// Whether a delivery is a firing (the brain's other deliveries are wakes).
pub fn is_firing(msg: &Delivery) -> bool {
    subjects::parse_schedule_fire(msg.message().subject.as_str()).is_some()
}

/// Reads a delivered firing.
pub fn read(msg: &Delivery) -> Result<Fired, String> {
    let m = msg.message();
    let next = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Schedule-Next"))
        .map(|v| v.as_str().to_string());
    let fired_at = m
        .info()
        .map(|i| i.published)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    schedules::parse_fired(m.subject.as_str(), &m.payload, next.as_deref(), fired_at)
}

/// What a firing appends: its record, then the prompt as the user's message.
pub fn events(f: &Fired) -> Result<[Event; 2], String> {
    let at = f.fired_at.format(&Rfc3339).unwrap_or_default();
    let occurrence = f.fired_at.unix_timestamp().to_string();
    let id = |kind| EventId::derived(kind, &[&f.def.name, &occurrence]).map_err(|e| e.to_string());
    let fired = Event::with_id(
        id("sched")?,
        SessionScheduleFired {
            name: f.def.name.clone(),
            fired_at: at.clone(),
            next: f.next.clone(),
        },
    );
    let message = Event::with_id(
        id("schedmsg")?,
        UserMessage {
            content: vec![ContentBlock::text(format!(
                "[Scheduled wake \"{}\" ({}), fired at {at}]\n{}",
                f.def.name, f.def.spec, f.def.prompt
            ))],
        },
    );
    Ok([fired, message])
}

/// Records a firing in its session's log; the sequence to wake the session after, or `None`
/// when the session is gone or terminated (the firing is dropped).
pub async fn record(log: &SessionLog, f: &Fired) -> Result<Option<u64>, LogError> {
    let session: &SessionId = &f.session;
    if log.created(session).await?.is_none() {
        return Ok(None);
    }
    let read = |types: &[&str], from: Option<u64>| {
        let slice = Slice {
            types: types.iter().map(|t| t.to_string()).collect(),
            from,
            ..Default::default()
        };
        async move {
            Ok::<Vec<StoredEvent>, LogError>(
                log.read(session, &slice)
                    .await?
                    .into_iter()
                    .filter_map(Result::ok)
                    .collect(),
            )
        }
    };
    let events = events(f).map_err(LogError::Invalid)?;
    let mut earlier = read(
        &["session.status_terminated", "session.schedule_fired"],
        None,
    )
    .await?;
    // Only a redelivery after the record landed needs the user messages (those after it).
    if let Some(recorded) = earlier.iter().find(|e| e.event.id == events[0].id) {
        let from = recorded.seq;
        earlier.extend(read(&["user.message"], Some(from)).await?);
    }
    match verdict(&earlier, f, &events) {
        Verdict::Drop(why) => {
            tracing::info!(session = %session, schedule = %f.def.name, why, "A firing is dropped.");
            Ok(None)
        }
        Verdict::Landed => Ok(earlier
            .iter()
            .find(|e| e.event.id == events[1].id)
            .map(|e| e.seq)),
        Verdict::Append(from) => {
            let mut last = 0;
            for e in &events[from..] {
                last = log.append_fact(session, e).await?.last_seq;
            }
            Ok(Some(last))
        }
    }
}

/// What a firing does, given the session's terminations, firings and user messages so far.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing: why.
    Drop(&'static str),
    /// Both events are in the log already (a redelivery): only the wake goes out again, in
    /// case the first delivery stopped before it (rule 6).
    Landed,
    /// Append its events from this one on (those before are in the log already: a
    /// redelivery after a crash between the two appends).
    Append(usize),
}

fn verdict(earlier: &[StoredEvent], f: &Fired, events: &[Event; 2]) -> Verdict {
    if earlier
        .iter()
        .any(|e| matches!(e.event.body, EventBody::SessionStatusTerminated(_)))
    {
        return Verdict::Drop("the session is terminated");
    }
    let has = |ev: &Event| earlier.iter().any(|e| e.event.id == ev.id);
    if has(&events[1]) {
        return Verdict::Landed;
    }
    if has(&events[0]) {
        return Verdict::Append(1);
    }
    // Rule 11 against a definition that was not set by herd's own checks (every >= 60 s,
    // cron at most once a minute): a firing of the same schedule within 55 s is dropped.
    let too_soon = earlier.iter().any(|e| match &e.event.body {
        EventBody::SessionScheduleFired(p) if p.name == f.def.name => {
            time::OffsetDateTime::parse(&p.fired_at, &Rfc3339)
                .is_ok_and(|t| (f.fired_at - t).whole_seconds().abs() < 55)
        }
        _ => false,
    });
    if too_soon {
        return Verdict::Drop("the same schedule fired less than a minute ago");
    }
    Verdict::Append(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::schedules::Definition;

    #[test]
    fn a_firing_becomes_its_record_and_the_prompt_with_ids_of_its_occurrence() {
        let f = Fired {
            session: SessionId::parse("sesn_a").unwrap(),
            def: Definition {
                session_id: "sesn_a".into(),
                name: "nightly".into(),
                spec: "cron 0 0 3 * * *".into(),
                prompt: "run the checks".into(),
            },
            fired_at: time::OffsetDateTime::parse("2026-12-02T03:00:00Z", &Rfc3339).unwrap(),
            next: Some("2026-12-03T03:00:00Z".into()),
        };
        let [fired, msg] = events(&f).unwrap();
        let [again, _] = events(&f).unwrap();
        assert_eq!(fired.id, again.id, "a redelivery derives the same ids");
        assert_eq!(fired.type_name(), "session.schedule_fired");
        let text = crate::event::content_text(match &msg.body {
            EventBody::UserMessage(m) => &m.content,
            _ => panic!(),
        });
        assert!(
            text.contains("\"nightly\"") && text.ends_with("run the checks"),
            "{text}"
        );
        let later = Fired {
            fired_at: f.fired_at + time::Duration::days(1),
            ..f.clone()
        };
        assert_ne!(
            events(&later).unwrap()[0].id,
            fired.id,
            "each occurrence its own"
        );

        let stored = |seq, e: &Event| StoredEvent {
            session_id: f.session.clone(),
            seq,
            event: e.clone(),
        };
        let evs = events(&f).unwrap();
        assert_eq!(verdict(&[], &f, &evs), Verdict::Append(0));
        assert_eq!(verdict(&[stored(3, &evs[0])], &f, &evs), Verdict::Append(1));
        let both = [stored(3, &evs[0]), stored(4, &evs[1])];
        assert_eq!(verdict(&both, &f, &evs), Verdict::Landed);
        let soon = Fired {
            fired_at: f.fired_at + time::Duration::seconds(1),
            ..f.clone()
        };
        assert_eq!(
            verdict(&both, &soon, &events(&soon).unwrap()),
            Verdict::Drop("the same schedule fired less than a minute ago")
        );
        assert_eq!(
            verdict(&both, &later, &events(&later).unwrap()),
            Verdict::Append(0)
        );
    }
}
