//! The NATS subject layout, built in one place.
//!
//! | subject | stream |
//! |---|---|
//! | `herd.session.<session_id>.<event_type>` | `HERD_SESSIONS` (the log) |
//! | `herd.wake.<session_id>` | `HERD_WAKE` (work queue of wakes) |
//! | `herd.tools.pool.<session_id>.<tool_use_id>` | `HERD_TOOLS` (jobs any hand may take) |
//! | `herd.tools.host.<host>.<session_id>.<tool_use_id>` | `HERD_TOOLS` (jobs for one hand host) |
//! | `herd.deadletter.{wake,tool}` | `HERD_DEADLETTER` (what no session could be told about) |
//! | `herd.gw.obj.<tenant>.<kind>.<id>` | `HERD_GATEWAY` (a tenant's agent, environment, vault, credential or session record; each write a version) |
//! | `herd.gw.key.<sha256 of the key>` | `HERD_KEYS` (an API key's tenant and state) |
//! | `herd.schedule.def.<session_id>.<name>` | `HERD_SCHEDULES` (a scheduled wake's definition, fired by the server) |
//! | `herd.schedule.fire.<session_id>.<name>` | `HERD_SCHEDULES` (one firing, taken by a brain) |
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

/// The `Nats-Msg-Id` of an event appended to a session: `<session_id>/<event_id>`.
/// JetStream deduplicates message ids across the whole stream, so the id is scoped to its
/// session: the same event id sent twice to one session lands once, and the same event id in
/// two sessions (two integrations that both number their messages `msg-1`) lands in both.
/// Outside publishers set exactly this header (the README's wire protocol).
pub fn event_message_id(session: &SessionId, event_id: &str) -> String {
    format!("{session}/{event_id}")
}

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

/// The filter matching every session's `session.*` events (its status changes among them),
/// which the brains' sweep reads to know which sessions are in a turn.
pub const ALL_SESSION_LIFECYCLE: &str = "herd.session.*.session.*";

const WAKE_PREFIX: &str = "herd.wake.";

/// The wake subject of a session.
pub fn wake(session: &SessionId) -> String {
    format!("{WAKE_PREFIX}{session}")
}

/// The wake subject of a hand that appended a tool result: `herd.wake.<session_id>.tool`. A
/// wake on it carries no events, so the hands' role (which may publish only here) can never
/// have a brain append a user event for it.
pub fn tool_wake(session: &SessionId) -> String {
    format!("{WAKE_PREFIX}{session}.{TOOL_WAKE_SUFFIX}")
}

const TOOL_WAKE_SUFFIX: &str = "tool";

/// The filter of the brains' consumer: every session's wakes, both kinds.
pub const ALL_WAKES: &str = "herd.wake.>";

/// Who published a wake, as its subject says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeSource {
    /// A front door or an outside system (`herd.wake.<id>`): it may carry user events.
    Outside,
    /// A hand, after a tool result (`herd.wake.<id>.tool`): it carries nothing.
    Hand,
}

/// The session a wake subject names, and who may have published it: `herd.wake.<id>` or
/// `herd.wake.<id>.tool`, with a valid session id.
pub fn parse_wake_subject(subject: &str) -> Option<(SessionId, WakeSource)> {
    let rest = subject.strip_prefix(WAKE_PREFIX)?;
    let (id, source) = match rest.split_once('.') {
        None => (rest, WakeSource::Outside),
        Some((id, TOOL_WAKE_SUFFIX)) => (id, WakeSource::Hand),
        Some(_) => return None,
    };
    Some((SessionId::parse(id).ok()?, source))
}

/// The subject of a tool job any hand may take.
pub fn pool_job(session: &SessionId, tool_use_id: &str) -> String {
    format!("herd.tools.pool.{session}.{tool_use_id}")
}

/// The subject of a tool job for the hand on `host`.
pub fn host_job(host: &str, session: &SessionId, tool_use_id: &str) -> String {
    format!("{HOST_JOBS_PREFIX}{host}.{session}.{tool_use_id}")
}

/// The filter matching a call's job on any host.
pub fn any_host_job(session: &SessionId, tool_use_id: &str) -> String {
    format!("{HOST_JOBS_PREFIX}*.{session}.{tool_use_id}")
}

/// The filter of the shared pool's consumer.
pub const POOL_JOBS: &str = "herd.tools.pool.>";

const HOST_JOBS_PREFIX: &str = "herd.tools.host.";

/// The filter matching every host-routed job.
pub const ALL_HOST_JOBS: &str = "herd.tools.host.>";

/// The filter of one host's consumer.
pub fn host_jobs(host: &str) -> String {
    format!("{HOST_JOBS_PREFIX}{host}.>")
}

/// The host a host-routed job's subject names.
pub fn host_of_job_subject(subject: &str) -> Option<&str> {
    subject.strip_prefix(HOST_JOBS_PREFIX)?.split('.').next()
}

/// Where wakes that name no valid session go.
pub const DEAD_LETTER_WAKE: &str = "herd.deadletter.wake";
/// Where tool jobs that cannot be run go.
pub const DEAD_LETTER_TOOL: &str = "herd.deadletter.tool";

/// Splits a session event subject into its session id and event type.
pub fn parse_session_subject(subject: &str) -> Option<(SessionId, &str)> {
    let rest = subject.strip_prefix(SESSION_PREFIX)?;
    let (id, event_type) = rest.split_once('.')?;
    Some((SessionId::parse(id).ok()?, event_type))
}

/// The gateway's records stream.
pub const GATEWAY_STREAM: &str = "HERD_GATEWAY";

/// The API keys' stream.
pub const KEYS_STREAM: &str = "HERD_KEYS";

const GATEWAY_OBJECT_PREFIX: &str = "herd.gw.obj.";
const GATEWAY_KEY_PREFIX: &str = "herd.gw.key.";

/// The subject of one gateway object: `herd.gw.obj.<tenant>.<kind>.<id>`. The tenant is part
/// of the subject, so one tenant's lookup can never land on another's object.
pub fn gateway_object(tenant: &str, kind: &str, id: &str) -> String {
    format!("{GATEWAY_OBJECT_PREFIX}{tenant}.{kind}.{id}")
}

/// The filter matching every object of one kind of one tenant.
pub fn gateway_objects(tenant: &str, kind: &str) -> String {
    format!("{GATEWAY_OBJECT_PREFIX}{tenant}.{kind}.*")
}

/// The id (last token) of a gateway object's subject.
pub fn gateway_object_id(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(GATEWAY_OBJECT_PREFIX)?
        .rsplit('.')
        .next()
}

/// The subject of an API key's record, by the key's SHA-256 (hex).
pub fn gateway_key(hash: &str) -> String {
    format!("{GATEWAY_KEY_PREFIX}{hash}")
}

/// The filter matching every API key's record.
pub const GATEWAY_KEYS: &str = "herd.gw.key.*";

/// True for a subject of the keys' stream.
pub fn is_gateway_key(subject: &str) -> bool {
    subject.starts_with(GATEWAY_KEY_PREFIX)
}

/// The filter matching every gateway object (the gateway's publish permission).
pub const GATEWAY_OBJECTS: &str = "herd.gw.obj.>";

/// The scheduled-wake stream.
pub const SCHEDULES_STREAM: &str = "HERD_SCHEDULES";

const SCHEDULE_DEF_PREFIX: &str = "herd.schedule.def.";
const SCHEDULE_FIRE_PREFIX: &str = "herd.schedule.fire.";

/// The subject of a session's scheduled wake `name`: its definition.
pub fn schedule_def(session: &SessionId, name: &str) -> String {
    format!("{SCHEDULE_DEF_PREFIX}{session}.{name}")
}

/// Where the server publishes each firing of a session's scheduled wake `name`.
pub fn schedule_fire(session: &SessionId, name: &str) -> String {
    format!("{SCHEDULE_FIRE_PREFIX}{session}.{name}")
}

/// The filter matching every scheduled wake of a session.
pub fn schedule_defs(session: &SessionId) -> String {
    format!("{SCHEDULE_DEF_PREFIX}{session}.*")
}

/// The filter the brains' scheduler consumer takes firings on.
pub const ALL_SCHEDULE_FIRES: &str = "herd.schedule.fire.*.*";

/// The session and name of a firing's subject.
pub fn parse_schedule_fire(subject: &str) -> Option<(&str, &str)> {
    subject.strip_prefix(SCHEDULE_FIRE_PREFIX)?.split_once('.')
}

/// The name of a definition's subject.
pub fn schedule_name_of_def(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(SCHEDULE_DEF_PREFIX)?
        .split_once('.')
        .map(|(_, n)| n)
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
        assert_eq!(event_message_id(&s, "msg-1"), "s1/msg-1");
        assert_eq!(parse_session_subject("herd.wake.s1"), None);
        assert_eq!(
            parse_wake_subject("herd.wake.s1"),
            Some((s.clone(), WakeSource::Outside))
        );
        assert_eq!(
            parse_wake_subject(&tool_wake(&s)),
            Some((s.clone(), WakeSource::Hand))
        );
        assert_eq!(parse_wake_subject("herd.wake.a.b"), None);
        assert_eq!(pool_job(&s, "t1"), "herd.tools.pool.s1.t1");
        let host = host_job("h1", &s, "t1");
        assert_eq!(host, "herd.tools.host.h1.s1.t1");
        assert_eq!(host_of_job_subject(&host), Some("h1"));
        assert_eq!(host_jobs("h1"), "herd.tools.host.h1.>");
    }
}
