//! Scheduled wakes, on nats-server's own message schedules (2.12+; `every` and cron 2.14+).
//!
//! A schedule is one message on `herd.schedule.def.<session>.<name>` in `HERD_SCHEDULES`, with
//! a `Nats-Schedule` header (`@at <time>`, `@every <duration>` or a 6-field cron expression, in
//! UTC) and `Nats-Schedule-Target: herd.schedule.fire.<session>.<name>`. The server keeps it in
//! the stream (so it survives server restarts and is replicated with the stream) and, at each
//! occurrence, publishes its body to the target, in the same stream. The brains share one
//! durable consumer on the targets (work-queue retention), so each firing is taken once however
//! many brains run; the brain that takes it records `session.schedule_fired` and the prompt as
//! a `user.message` (ids derived from the schedule and the occurrence, so a redelivery lands
//! nothing twice) and wakes the session. Setting the same name again replaces the schedule
//! (the server keeps one definition per subject); cancelling deletes the definition, after
//! which it never fires. An `@at` schedule's definition is removed by the server once it fired.

use async_nats::jetstream::{self, message::PublishMessage};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::BusError;
use super::subjects;
use crate::event::SessionId;

/// Scheduled wakes one session may have.
pub const MAX_PER_SESSION: usize = 16;
/// The longest prompt a scheduled wake carries, in characters.
pub const MAX_PROMPT: usize = 4000;
/// The shortest interval of an `every` schedule (rule 11: a schedule cannot flood a log).
pub const MIN_EVERY_SECS: u64 = 60;
/// The furthest ahead an `at` schedule or interval may be.
pub const MAX_AHEAD_SECS: u64 = 366 * 86_400;

/// The brains' durable consumer of firings.
pub const CONSUMER: &str = "scheduler";

/// Why a schedule was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The name, spec or prompt is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The session has its maximum of schedules.
    #[error(
        "session {0} already has {MAX_PER_SESSION} scheduled wakes, the most one session may have; cancel one first"
    )]
    Full(SessionId),
    /// No schedule of that name.
    #[error("session {session} has no scheduled wake named {name:?}")]
    NotFound {
        /// The session.
        session: SessionId,
        /// The name.
        name: String,
    },
    /// NATS refused or is out of reach.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// Once, at this time.
    At(OffsetDateTime),
    /// Every so many seconds.
    Every(u64),
    /// On a 6-field cron expression (seconds first), or a predefined one (`@daily`), in UTC.
    Cron(String),
}

fn duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn check_cron(expr: &str) -> Result<(), String> {
    const PREDEFINED: &[&str] = &[
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if PREDEFINED.contains(&expr) {
        return Ok(());
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "cron {expr:?} has {} fields; it needs 6 (second minute hour day-of-month month day-of-week), e.g. \"cron 0 30 9 * * MON-FRI\", or a predefined one such as @daily",
            fields.len()
        ));
    }
    // A single second: at most one firing a minute.
    if !fields[0].parse::<u8>().is_ok_and(|s| s < 60) {
        return Err(format!(
            "cron {expr:?}: the seconds field must be one number from 0 to 59 (a schedule fires at most once a minute)"
        ));
    }
    for f in &fields[1..] {
        if f.len() > 32
            || !f
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "*,/-?".contains(c))
        {
            return Err(format!("cron {expr:?}: field {f:?} is not a cron field"));
        }
    }
    Ok(())
}

impl Spec {
    /// Parses `at <RFC 3339>`, `in <n>s|m|h|d`, `every <n>s|m|h|d` or `cron <expression>`.
    pub fn parse(text: &str, now: OffsetDateTime) -> Result<Spec, ScheduleError> {
        let bad = |why: String| ScheduleError::Invalid(why);
        let text = text.trim();
        let (kind, rest) = text.split_once(' ').unwrap_or((text, ""));
        let rest = rest.trim();
        let ahead = |secs: u64| -> Result<(), ScheduleError> {
            if secs > MAX_AHEAD_SECS {
                return Err(bad(format!(
                    "{text:?} is more than 366 days away; the furthest a schedule may be"
                )));
            }
            Ok(())
        };
        match kind {
            "at" => {
                let t = OffsetDateTime::parse(rest, &Rfc3339).map_err(|e| {
                    bad(format!(
                        "at {rest:?} is not an RFC 3339 time such as 2026-12-24T18:00:00Z: {e}"
                    ))
                })?;
                let secs = (t - now).whole_seconds();
                if secs < -5 {
                    return Err(bad(format!("at {rest:?} is in the past")));
                }
                ahead(secs.max(0) as u64)?;
                Ok(Spec::At(
                    t.to_offset(time::UtcOffset::UTC)
                        .replace_nanosecond(0)
                        .unwrap_or(t),
                ))
            }
            "in" => {
                let secs = duration_secs(rest).ok_or_else(|| {
                    bad(format!(
                        "in {rest:?} is not a duration such as 90s, 10m, 2h or 1d"
                    ))
                })?;
                ahead(secs)?;
                Ok(Spec::At(
                    (now + time::Duration::seconds(secs as i64))
                        .to_offset(time::UtcOffset::UTC)
                        .replace_nanosecond(0)
                        .unwrap_or(now),
                ))
            }
            "every" => {
                let secs = duration_secs(rest).ok_or_else(|| {
                    bad(format!(
                        "every {rest:?} is not a duration such as 90s, 10m, 2h or 1d"
                    ))
                })?;
                if secs < MIN_EVERY_SECS {
                    return Err(bad(format!(
                        "every {rest:?} is too often: the shortest interval is {MIN_EVERY_SECS} s"
                    )));
                }
                ahead(secs)?;
                Ok(Spec::Every(secs))
            }
            "cron" => {
                check_cron(rest).map_err(bad)?;
                Ok(Spec::Cron(
                    rest.split_whitespace().collect::<Vec<_>>().join(" "),
                ))
            }
            _ => Err(bad(format!(
                "{text:?} is not a schedule: use \"at 2026-12-24T18:00:00Z\", \"in 10m\", \"every 1h\" or \"cron 0 30 9 * * *\""
            ))),
        }
    }

    /// The `Nats-Schedule` header.
    pub fn header(&self) -> String {
        match self {
            Spec::At(t) => format!("@at {}", rfc3339(*t)),
            Spec::Every(secs) => format!("@every {secs}s"),
            Spec::Cron(expr) => expr.clone(),
        }
    }

    /// How it reads in events and lists: `at …`, `every …s`, `cron …`.
    pub fn text(&self) -> String {
        match self {
            Spec::At(t) => format!("at {}", rfc3339(*t)),
            Spec::Every(secs) => format!("every {secs}s"),
            Spec::Cron(expr) => format!("cron {expr}"),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Checks a schedule's name: it becomes a subject token.
pub fn check_name(name: &str) -> Result<(), ScheduleError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ScheduleError::Invalid(format!(
            "schedule name {name:?} is not valid: 1 to 64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// Checks a prompt.
pub fn check_prompt(prompt: &str) -> Result<(), ScheduleError> {
    let n = prompt.chars().count();
    if prompt.trim().is_empty() || n > MAX_PROMPT {
        return Err(ScheduleError::Invalid(format!(
            "a scheduled wake's prompt must hold 1 to {MAX_PROMPT} characters; this one has {n}"
        )));
    }
    Ok(())
}

/// A schedule's definition: what each firing carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// The session it wakes.
    pub session_id: String,
    /// Its name.
    pub name: String,
    /// When it fires ([`Spec::text`]).
    pub spec: String,
    /// What the session is told.
    pub prompt: String,
}

fn op(e: impl std::fmt::Display, what: &str) -> ScheduleError {
    ScheduleError::Bus(BusError::nats(what.to_string(), e))
}

async fn stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream, ScheduleError> {
    js.get_stream(subjects::SCHEDULES_STREAM)
        .await
        .map_err(|e| op(e, "opening the schedules stream"))
}

/// The names of a session's schedules.
pub async fn names(
    js: &jetstream::Context,
    session: &SessionId,
) -> Result<Vec<String>, ScheduleError> {
    let s = stream(js).await?;
    let found: Vec<String> = s
        .info_with_subjects(subjects::schedule_defs(session))
        .await
        .map_err(|e| op(e, "listing schedules"))?
        .map_ok(|(subject, _)| subject)
        .try_collect()
        .await
        .map_err(|e| op(e, "listing schedules"))?;
    let mut names: Vec<String> = found
        .iter()
        .filter_map(|s| subjects::schedule_name_of_def(s).map(String::from))
        .collect();
    names.sort();
    Ok(names)
}

/// Sets (or replaces) a session's schedule `def.name`.
pub async fn set(
    js: &jetstream::Context,
    def: &Definition,
    spec: &Spec,
) -> Result<(), ScheduleError> {
    let session =
        SessionId::parse(&def.session_id).map_err(|e| ScheduleError::Invalid(e.to_string()))?;
    check_name(&def.name)?;
    check_prompt(&def.prompt)?;
    let existing = names(js, &session).await?;
    if !existing.contains(&def.name) && existing.len() >= MAX_PER_SESSION {
        return Err(ScheduleError::Full(session));
    }
    let body = serde_json::to_vec(def).map_err(|e| ScheduleError::Invalid(e.to_string()))?;
    let msg = PublishMessage::build()
        .header("Nats-Schedule", spec.header().as_str())
        .header(
            "Nats-Schedule-Target",
            subjects::schedule_fire(&session, &def.name).as_str(),
        )
        .header("Content-Type", crate::event::CONTENT_TYPE_JSON)
        .payload(body.into());
    js.send_publish(subjects::schedule_def(&session, &def.name), msg)
        .await
        .map_err(|e| op(e, "setting a schedule"))?
        .await
        .map_err(|e| op(e, "setting a schedule (the server refused it)"))?;
    Ok(())
}

/// The last message on `subject`, `None` when there is none; any other failure (the stream out
/// of reach) is an error, never taken for "not there".
async fn last_on(
    s: &jetstream::stream::Stream,
    subject: &str,
) -> Result<Option<jetstream::message::StreamMessage>, ScheduleError> {
    use jetstream::stream::LastRawMessageErrorKind as K;
    match s.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), K::NoMessageFound) => Ok(None),
        Err(e) => Err(op(e, "reading a schedule")),
    }
}

/// A session's schedules, by name.
pub async fn list(
    js: &jetstream::Context,
    session: &SessionId,
) -> Result<Vec<Definition>, ScheduleError> {
    let s = stream(js).await?;
    let mut out = Vec::new();
    for name in names(js, session).await? {
        let Some(msg) = last_on(&s, &subjects::schedule_def(session, &name)).await? else {
            // Fired and removed since the list was made.
            continue;
        };
        if let Ok(def) = serde_json::from_slice::<Definition>(&msg.payload) {
            out.push(def);
        }
    }
    Ok(out)
}

/// Cancels a session's schedule `name`: its definition is deleted and it never fires again.
pub async fn cancel(
    js: &jetstream::Context,
    session: &SessionId,
    name: &str,
) -> Result<(), ScheduleError> {
    check_name(name)?;
    let s = stream(js).await?;
    let not_found = || ScheduleError::NotFound {
        session: session.clone(),
        name: name.to_string(),
    };
    let msg = last_on(&s, &subjects::schedule_def(session, name))
        .await?
        .ok_or_else(not_found)?;
    s.delete_message(msg.sequence)
        .await
        .map_err(|e| op(e, "cancelling a schedule"))?;
    // A firing already queued for it goes too.
    if let Ok(Some(queued)) = last_on(&s, &subjects::schedule_fire(session, name)).await {
        let _ = s.delete_message(queued.sequence).await;
    }
    Ok(())
}

/// Cancels every schedule of a session (it is terminated); how many.
pub async fn cancel_all(
    js: &jetstream::Context,
    session: &SessionId,
) -> Result<usize, ScheduleError> {
    let names = names(js, session).await?;
    for name in &names {
        match cancel(js, session, name).await {
            Ok(()) | Err(ScheduleError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(names.len())
}

/// One firing, as a brain takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The session to wake.
    pub session: SessionId,
    /// The schedule's definition.
    pub def: Definition,
    /// When the server fired it.
    pub fired_at: OffsetDateTime,
    /// When it fires next (`None`: it will not).
    pub next: Option<String>,
}

/// Reads a firing: its subject names the session and the schedule, and its body must say the
/// same (a firing that does not is refused, never acted on).
pub fn parse_fired(
    subject: &str,
    payload: &[u8],
    next_header: Option<&str>,
    fired_at: OffsetDateTime,
) -> Result<Fired, String> {
    let (session, name) = subjects::parse_schedule_fire(subject)
        .ok_or_else(|| format!("{subject:?} is not a firing's subject"))?;
    let session = SessionId::parse(session).map_err(|e| e.to_string())?;
    let def: Definition = serde_json::from_slice(payload)
        .map_err(|e| format!("a firing's body is not a schedule definition: {e}"))?;
    if def.session_id != session.as_str() || def.name != name {
        return Err(format!(
            "a firing on {subject} carries the definition of {}/{}",
            def.session_id, def.name
        ));
    }
    check_name(&def.name).map_err(|e| e.to_string())?;
    check_prompt(&def.prompt).map_err(|e| e.to_string())?;
    Ok(Fired {
        session,
        def,
        fired_at,
        next: next_header
            .filter(|n| *n != "purge" && !n.is_empty())
            .map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-12-02T01:00:00Z", &Rfc3339).unwrap()
    }

    #[test]
    fn specs_become_the_servers_headers() {
        let at = Spec::parse("at 2026-12-02T03:00:00+01:00", now()).unwrap();
        assert_eq!(at.header(), "@at 2026-12-02T02:00:00Z");
        assert_eq!(at.text(), "at 2026-12-02T02:00:00Z");
        assert_eq!(
            Spec::parse("in 90s", now()).unwrap().header(),
            "@at 2026-12-02T01:01:30Z"
        );
        assert_eq!(
            Spec::parse("every 2h", now()).unwrap().header(),
            "@every 7200s"
        );
        assert_eq!(
            Spec::parse("cron 0  30 9 * * MON-FRI", now())
                .unwrap()
                .header(),
            "0 30 9 * * MON-FRI"
        );
        assert_eq!(
            Spec::parse("cron @daily", now()).unwrap().header(),
            "@daily"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| Spec::parse(s, now()).unwrap_err().to_string();
        assert!(err("at tomorrow").contains("not an RFC 3339 time"));
        assert!(err("at 2026-12-01T00:00:00Z").contains("in the past"));
        assert!(err("at 2028-12-01T00:00:00Z").contains("366 days"));
        assert!(err("every 10s").contains("shortest interval is 60 s"));
        assert!(err("every often").contains("not a duration"));
        assert!(err("cron * * * * *").contains("needs 6"));
        assert!(err("cron * * * * * *").contains("at most once a minute"));
        assert!(err("cron 0 $(x) * * * *").contains("not a cron field"));
        assert!(err("weekly").contains("is not a schedule"));
        assert!(check_name("nightly-build_2").is_ok());
        assert!(check_name("a.b").is_err() && check_name("").is_err());
        assert!(check_prompt(" ").is_err());
        assert!(check_prompt(&"x".repeat(MAX_PROMPT + 1)).is_err());
    }

    #[test]
    fn a_firing_must_say_what_its_subject_says() {
        let def = Definition {
            session_id: "sesn_a".into(),
            name: "n".into(),
            spec: "every 60s".into(),
            prompt: "check".into(),
        };
        let body = serde_json::to_vec(&def).unwrap();
        let f = parse_fired("herd.schedule.fire.sesn_a.n", &body, Some("purge"), now()).unwrap();
        assert_eq!(f.next, None);
        assert_eq!(f.def, def);
        assert!(parse_fired("herd.schedule.fire.sesn_b.n", &body, None, now()).is_err());
        assert!(parse_fired("herd.schedule.fire.sesn_a.m", &body, None, now()).is_err());
        assert!(parse_fired("herd.schedule.fire.sesn_a.n", b"{", None, now()).is_err());
    }
}
