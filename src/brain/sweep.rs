//! The sweep's decision: is a session stuck running, and what to do about it. Pure.
//!
//! A turn can be left running with nothing in flight: its tool job was dead-lettered (a hand
//! refused it) or lost, a hand's wake never arrived, a wake was acknowledged by a brain that
//! then lost the session. Nothing would ever move it again. So every brain sweeps, every
//! `sweep_every`, the sessions whose last status is running (or rescheduled), and for each one
//! that has been quiet for longer than a grace period with nothing in flight — no brain
//! holding its lease (a model request by a live brain), no wake waiting in `HERD_WAKE`, no job
//! of a pending call waiting in `HERD_TOOLS` — it first re-dispatches (publishes a wake, so a
//! brain replays it and republishes whatever job it lacks), and if that brought no progress
//! within another grace period, it ends the turn: `session.error` (`turn_stalled`), error
//! results for the pending calls (what the model sees), idle with `retries_exhausted`.
//!
//! What the decision needs is given: the session's fold, when its last event landed, the
//! probes of what is in flight, and what this brain last re-dispatched. The effects (the
//! probes, the wake, the conditional append) are the worker's, and safe with many brains: the
//! wake's message id is derived from the session's last sequence (brains sweeping together
//! collapse into one wake), and the step that ends the turn is conditional on that sequence
//! (one append wins, the others see a conflict and drop it).

use std::time::Duration;

use time::OffsetDateTime;

use crate::session::{SessionState, Status, ToolKind};

/// What is in flight for a session, as probed just now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    /// A brain holds the session's lease: it is deciding, or calling the model, right now.
    pub lease_held: bool,
    /// A wake for the session waits in `HERD_WAKE` (or is being handled).
    pub wake_queued: bool,
    /// A job of one of its pending calls waits in `HERD_TOOLS` (or is being run).
    pub job_queued: bool,
}

impl InFlight {
    fn any(self) -> bool {
        self.lease_held || self.wake_queued || self.job_queued
    }
}

/// A re-dispatch this brain made: at which last sequence of the session, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    /// The session's last sequence when the wake went out.
    pub at_seq: u64,
    /// When.
    pub at: OffsetDateTime,
}

/// What the sweep does about one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: not in a turn, not quiet for long enough, or something is in flight.
    Fine,
    /// Publish a wake for it.
    Redispatch,
    /// End its turn with this reason (a re-dispatch brought no progress).
    GiveUp(String),
}

/// Whether the sweep should probe a session at all: in a turn, and quiet (no event) for at
/// least `grace`. Probing costs requests, so an active session is never probed.
pub fn quiet_in_turn(
    state: &SessionState,
    last_event_at: OffsetDateTime,
    now: OffsetDateTime,
    grace: Duration,
) -> bool {
    matches!(state.status, Status::Running | Status::Rescheduling) && now - last_event_at >= grace
}

/// The sweep's decision for one session: `last_event_at` is when its last event landed,
/// `in_flight` what the probes found, `dispatched` this brain's last re-dispatch of it.
pub fn assess(
    state: &SessionState,
    last_event_at: OffsetDateTime,
    now: OffsetDateTime,
    grace: Duration,
    in_flight: InFlight,
    dispatched: Option<Dispatched>,
) -> Verdict {
    if !quiet_in_turn(state, last_event_at, now, grace) || in_flight.any() {
        return Verdict::Fine;
    }
    match dispatched {
        // Re-dispatched at this very state: give the wake its grace period, then give up.
        Some(d) if d.at_seq == state.last_seq => {
            if now - d.at >= grace {
                Verdict::GiveUp(why(state, now - last_event_at))
            } else {
                Verdict::Fine
            }
        }
        // Never, or the session has moved since: try a wake first.
        _ => Verdict::Redispatch,
    }
}

/// Why the turn is given up, for the client and (in the calls' results) the model.
fn why(state: &SessionState, quiet: time::Duration) -> String {
    let calls: Vec<&str> = state
        .pending_tools
        .iter()
        .filter(|(_, t)| t.kind != ToolKind::Custom)
        .map(|(id, _)| id.as_str())
        .collect();
    let secs = quiet.whole_seconds();
    if calls.is_empty() {
        format!(
            "the turn was running with nothing in flight for {secs} s (no model request, no tool job), and waking it again did not help"
        )
    } else {
        format!(
            "no job was queued for the call(s) {} for {secs} s (the job was refused or lost, e.g. dead-lettered by a hand), and re-dispatching did not help",
            calls.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn state_of(bodies: Vec<EventBody>) -> SessionState {
        let id = SessionId::parse("s").unwrap();
        let events: Vec<StoredEvent> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, b)| StoredEvent {
                session_id: id.clone(),
                seq: i as u64 + 1,
                event: Event::new(b),
            })
            .collect();
        SessionState::fold(id, &events)
    }

    fn running_with_a_call() -> SessionState {
        state_of(vec![
            SessionCreated::new(AgentConfig::new("m")).into(),
            UserMessage {
                content: vec![ContentBlock::text("go")],
            }
            .into(),
            SessionStatusRunning {}.into(),
            AgentToolUse {
                tool_use_id: "toolu_dead".into(),
                name: "bash".into(),
                input: serde_json::json!({}),
                evaluated_permission: Some(EvaluatedPermission::Allow),
            }
            .into(),
        ])
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn a_quiet_turn_with_nothing_in_flight_is_woken_then_given_up() {
        let s = running_with_a_call();
        let t0 = OffsetDateTime::now_utc();
        let nothing = InFlight::default();
        // Not quiet for long enough yet.
        assert_eq!(
            assess(
                &s,
                t0,
                t0 + time::Duration::seconds(29),
                GRACE,
                nothing,
                None
            ),
            Verdict::Fine
        );
        let t1 = t0 + time::Duration::seconds(31);
        assert_eq!(
            assess(&s, t0, t1, GRACE, nothing, None),
            Verdict::Redispatch
        );
        // Re-dispatched at this state: wait the grace period for it, then give up.
        let d = Some(Dispatched {
            at_seq: s.last_seq,
            at: t1,
        });
        assert_eq!(
            assess(&s, t0, t1 + time::Duration::seconds(10), GRACE, nothing, d),
            Verdict::Fine
        );
        let Verdict::GiveUp(why) =
            assess(&s, t0, t1 + time::Duration::seconds(30), GRACE, nothing, d)
        else {
            panic!("expected to give up")
        };
        assert!(
            why.contains("toolu_dead") && why.contains("dead-lettered"),
            "{why}"
        );
        // The session moved since the re-dispatch (progress): a wake again, not the end.
        let moved = Some(Dispatched {
            at_seq: s.last_seq - 1,
            at: t1,
        });
        assert_eq!(
            assess(
                &s,
                t0,
                t1 + time::Duration::seconds(60),
                GRACE,
                nothing,
                moved
            ),
            Verdict::Redispatch
        );
    }

    #[test]
    fn anything_in_flight_or_a_session_not_in_a_turn_is_left_alone() {
        let s = running_with_a_call();
        let t0 = OffsetDateTime::now_utc();
        let late = t0 + time::Duration::hours(1);
        for in_flight in [
            InFlight {
                lease_held: true,
                ..Default::default()
            },
            InFlight {
                wake_queued: true,
                ..Default::default()
            },
            InFlight {
                job_queued: true,
                ..Default::default()
            },
        ] {
            let d = Some(Dispatched {
                at_seq: s.last_seq,
                at: t0,
            });
            assert_eq!(assess(&s, t0, late, GRACE, in_flight, d), Verdict::Fine);
        }
        let idle = state_of(vec![
            SessionStatusIdle {
                stop_reason: StopReason {
                    kind: "end_turn".into(),
                    event_ids: vec![],
                },
            }
            .into(),
        ]);
        assert!(!quiet_in_turn(&idle, t0, late, GRACE));
        assert_eq!(
            assess(&idle, t0, late, GRACE, InFlight::default(), None),
            Verdict::Fine
        );
    }
}
