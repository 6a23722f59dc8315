//! The NATS subject layout, built in one place.
//!
//! | subject | stream |
//! |---|---|
//! | `herd.session.<session_id>.<event_type>` | `HERD_SESSIONS` (the log) |
//! | `herd.wake.<session_id>` | `HERD_WAKE` (work queue of wakes) |
//! | `herd.tools.…` | `HERD_TOOLS` (work queue of tool jobs) |
//!
//! The event type is in the subject so the `nats` CLI can filter, count and replay one session
//! or one kind of event without decoding payloads.

use crate::event::SessionId;

/// The session log stream.
pub const SESSIONS_STREAM: &str = "HERD_SESSIONS";
/// The wake work-queue stream.
pub const WAKE_STREAM: &str = "HERD_WAKE";
/// The tool-job work-queue stream.
pub const TOOLS_STREAM: &str = "HERD_TOOLS";

/// Header carrying the event type, for tools that only see headers.
pub const HEADER_EVENT_TYPE: &str = "Herd-Event-Type";
/// Header carrying the payload schema version.
pub const HEADER_SCHEMA: &str = "Herd-Schema";
/// The payload schema version herd writes.
pub const SCHEMA_VERSION: &str = "1";
/// The server-side header that scopes an expected-sequence check to a subject filter.
pub const HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

const SESSION_PREFIX: &str = "herd.session.";

/// The subject of an event of type `event_type` in a session.
pub fn session_event(session: &SessionId, event_type: &str) -> String {
    format!("{SESSION_PREFIX}{session}.{event_type}")
}

/// The filter matching every event of a session.
pub fn session_filter(session: &SessionId) -> String {
    format!("{SESSION_PREFIX}{session}.>")
}

/// The filter matching one event type in every session.
pub fn all_sessions_of_type(event_type: &str) -> String {
    format!("{SESSION_PREFIX}*.{event_type}")
}

/// The filter matching every session event.
pub const ALL_SESSIONS: &str = "herd.session.*.>";

/// The wake subject of a session.
pub fn wake(session: &SessionId) -> String {
    format!("herd.wake.{session}")
}

/// Splits a session event subject into its session id and event type.
pub fn parse_session_subject(subject: &str) -> Option<(SessionId, &str)> {
    let rest = subject.strip_prefix(SESSION_PREFIX)?;
    let (id, event_type) = rest.split_once('.')?;
    Some((SessionId::parse(id).ok()?, event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let s = SessionId::parse("s1").unwrap();
        let subj = session_event(&s, "user.message");
        assert_eq!(subj, "herd.session.s1.user.message");
        assert_eq!(
            parse_session_subject(&subj),
            Some((s.clone(), "user.message"))
        );
        assert_eq!(session_filter(&s), "herd.session.s1.>");
        assert_eq!(wake(&s), "herd.wake.s1");
        assert_eq!(parse_session_subject("herd.wake.s1"), None);
    }
}
