//! The wake protocol: how any system asks a brain to look at a session.
//!
//! Publish to `herd.wake.<session_id>` (stream `HERD_WAKE`). The payload is optional; when
//! present it is a JSON (or MessagePack) object:
//!
//! ```json
//! {"events": [{"id": "evt-42", "type": "user.message",
//!              "content": [{"type": "text", "text": "hi"}]}]}
//! ```
//!
//! The events (only `user.*` types) are appended to the session first,
//! deduplicated by their ids, then the brain runs the session. Set `Nats-Msg-Id` on the wake
//! (for example to the first event's id) so that a resent wake collapses into one. A wake with
//! nothing to do is acknowledged with no effect.

use serde_json::Value;

use super::subjects::{self, WakeSource};
use crate::event::{Event, SessionId, decode_to_json};

/// Event types a wake may carry: what users and client systems say. Not `system.message`:
/// it extends the system prompt for good, so only the operator and the gateway append it
/// (DESIGN rule 10; any wake publisher could otherwise rewrite an agent's instructions).
pub const ACCEPTED_TYPES: &[&str] = &[
    "user.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.custom_tool_result",
];

/// Events carried by a wake, at most this many.
pub const MAX_WAKE_EVENTS: usize = 100;

/// A parsed wake.
#[derive(Debug, Clone, PartialEq)]
pub struct Wake {
    /// The session to look at.
    pub session_id: SessionId,
    /// Events to append first.
    pub events: Vec<Event>,
}

/// Why a wake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    /// The subject is not `herd.wake.<session_id>`.
    #[error("wake subject {0:?} is not herd.wake.<session_id> with a valid session id")]
    Subject(String),
    /// The session has no events.
    #[error("session {0} does not exist")]
    UnknownSession(SessionId),
    /// The payload is not a valid wake.
    #[error("wake payload for session {session}: {detail}")]
    Payload {
        /// The session it was for.
        session: SessionId,
        /// What is wrong.
        detail: String,
    },
}

impl Wake {
    /// Parses a wake message.
    pub fn parse(subject: &str, payload: &[u8]) -> Result<Self, WakeError> {
        let (session_id, source) = subjects::parse_wake_subject(subject)
            .ok_or_else(|| WakeError::Subject(subject.chars().take(200).collect()))?;
        let bad = |detail: String| WakeError::Payload {
            session: session_id.clone(),
            detail,
        };
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self {
                session_id,
                events: vec![],
            });
        }
        let value = decode_to_json(payload).map_err(|e| bad(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(bad(
                "the payload must be an object like {\"events\": [...]}".into(),
            ));
        };
        let events = match obj.remove("events") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(list)) if !list.is_empty() && source == WakeSource::Hand => {
                return Err(bad(
                    "a hand's wake (herd.wake.<id>.tool) carries no events".into()
                ));
            }
            Some(Value::Array(list)) => {
                if list.len() > MAX_WAKE_EVENTS {
                    return Err(bad(format!(
                        "{} events; a wake carries at most {MAX_WAKE_EVENTS}",
                        list.len()
                    )));
                }
                list.into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let e = Event::from_json(v).map_err(|e| bad(format!("event {i}: {e}")))?;
                        if !ACCEPTED_TYPES.contains(&e.type_name()) {
                            return Err(bad(format!(
                                "event {i} is a {:?}; a wake carries only {}",
                                e.type_name(),
                                ACCEPTED_TYPES.join(", ")
                            )));
                        }
                        Ok(e)
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(bad("\"events\" must be an array".into())),
        };
        Ok(Self { session_id, events })
    }
}

/// How long [`publish`] keeps retrying through a leader election or a reconnect.
pub const PUBLISH_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Publishes a wake for a session after an append at `after_seq`, as a front door does
/// (`herd.wake.<id>`).
///
/// Its message id is the session, the sequence and a nonce drawn once per call, so retrying is
/// safe: a wake is retried with the same id for up to [`PUBLISH_RETRY_FOR`] while `HERD_WAKE`
/// has no leader (a cluster node died) or the connection is down, instead of failing the
/// caller's whole job for a redelivery later. The nonce makes the id unguessable: the wake
/// stream deduplicates ids across every publisher, and an id anyone could compute ahead of
/// time could be spent by someone else's wake, swallowing this one. A wake is idempotent, so
/// a second wake for the same change costs one replay.
pub async fn publish(
    js: &async_nats::jetstream::Context,
    session: &SessionId,
    after_seq: u64,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    publish_on(js, subjects::wake(session), session, after_seq).await
}

/// Publishes a hand's wake after the tool result it appended at `after_seq`
/// (`herd.wake.<id>.tool`, which carries no events).
pub async fn publish_from_hand(
    js: &async_nats::jetstream::Context,
    session: &SessionId,
    after_seq: u64,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    publish_on(js, subjects::tool_wake(session), session, after_seq).await
}

async fn publish_on(
    js: &async_nats::jetstream::Context,
    subject: String,
    session: &SessionId,
    after_seq: u64,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    use async_nats::jetstream::context::PublishErrorKind as K;
    let deadline = tokio::time::Instant::now() + PUBLISH_RETRY_FOR;
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .message_id(format!("wake_{session}_{after_seq}_{}", &nonce[..16]))
            .payload(bytes::Bytes::new());
        let result = async { js.send_publish(subject.clone(), msg).await?.await }.await;
        match result {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(e.kind(), K::StreamNotFound | K::TimedOut | K::BrokenPipe)
                    && tokio::time::Instant::now() + delay < deadline =>
            {
                tracing::debug!(session = %session, error = %e, "Publishing a wake failed; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_empty_and_carrying_wakes() {
        let w = Wake::parse("herd.wake.s1", b"").unwrap();
        assert!(w.events.is_empty());
        let w = Wake::parse(
            "herd.wake.s1",
            br#"{"events":[{"id":"e1","type":"user.message","content":[{"type":"text","text":"hi"}]}]}"#,
        )
        .unwrap();
        assert_eq!(w.events[0].id.as_str(), "e1");
    }

    #[test]
    fn a_hands_wake_carries_nothing() {
        let s = SessionId::parse("s1").unwrap();
        let w = Wake::parse(&subjects::tool_wake(&s), b"").unwrap();
        assert!(w.events.is_empty());
        let carrying = br#"{"events":[{"id":"e1","type":"user.tool_confirmation","tool_use_id":"t","result":"allow"}]}"#;
        let e = Wake::parse(&subjects::tool_wake(&s), carrying).unwrap_err();
        assert!(e.to_string().contains("carries no events"), "{e}");
    }

    #[test]
    fn refuses_bad_wakes_clearly() {
        assert!(matches!(
            Wake::parse("herd.wake.a.b", b""),
            Err(WakeError::Subject(_))
        ));
        let err = |p: &[u8]| Wake::parse("herd.wake.s1", p).unwrap_err().to_string();
        assert!(err(b"garbage{").contains("not valid MessagePack"));
        assert!(err(b"[1]").contains("must be an object"));
        assert!(err(br#"{"events":{}}"#).contains("must be an array"));
        assert!(
            err(br#"{"events":[{"id":"e1","type":"agent.message","content":[]}]}"#)
                .contains("carries only")
        );
        assert!(err(br#"{"events":[{"type":"user.message"}]}"#).contains("event 0"));
        assert!(
            err(br#"{"events":[{"id":"e1","type":"system.message","content":[]}]}"#)
                .contains("carries only")
        );
    }
}
