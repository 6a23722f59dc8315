//! The brains' half of scheduled wakes (see `bus::schedules`): each firing the server publishes
//! is taken by one brain, recorded in the session's log as `session.schedule_fired` and a
//! `user.message` carrying the schedule's prompt (ids derived from the schedule and the
//! occurrence, so a redelivered firing lands nothing twice), and the session is woken.

use time::format_description::well_known::Rfc3339;

use crate::bus::schedules::{self, Fired};
use crate::bus::subjects;
use crate::bus::work_queue::{ConsumerSpec, Delivery};
use crate::event::{
    ContentBlock, Event, EventBody, EventId, SessionId, SessionScheduleFired, UserMessage,
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
    let ended = log
        .read(
            session,
            &Slice {
                types: vec!["session.status_terminated".into()],
                ..Default::default()
            },
        )
        .await?;
    if ended.iter().any(
        |r| matches!(r, Ok(e) if matches!(e.event.body, EventBody::SessionStatusTerminated(_))),
    ) {
        return Ok(None);
    }
    let events = events(f).map_err(LogError::Invalid)?;
    let mut last = 0;
    for e in &events {
        last = log.append_fact(session, e).await?.last_seq;
    }
    Ok(Some(last))
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
    }
}
