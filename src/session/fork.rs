//! Forks, the decisions (no I/O): where a fork of a session is taken, which of the parent's
//! events its log copies, and how the checker compares a fork with its parent.
//!
//! A fork asked at sequence `S` is taken at the parent's **last turn boundary at or before
//! `S`**: its last `session.status_idle` there (a turn that ended, or one waiting on a
//! confirmation or a custom tool). A sequence inside a turn so forks from the state before that
//! turn's unfinished part: the child never holds half a turn (a model request without its
//! answer, a tool call whose result it will never get). Before the first turn ended the fork
//! holds the configuration alone. Rewinding is forking at an earlier sequence.
//!
//! The child's log is its own `session.created` (the parent's configuration), then the
//! parent's events 2 to the boundary as they were (same ids, same times), except the parent's
//! sandbox lifecycle — `sandbox.provisioned`, `sandbox.lost`, `sandbox.workspace_saved`,
//! `sandbox.workspace_restored` — which describe containers and snapshots the child never had,
//! then `session.forked`, then the child's own starting workspace, if the parent had one.

use crate::event::{EventBody, Record, StoredEvent};

/// The parent's event types a fork does not copy: its sandboxes and snapshots, and its
/// scheduled wakes (their definitions stay the parent's).
pub const NOT_COPIED: &[&str] = &[
    "sandbox.provisioned",
    "sandbox.lost",
    "sandbox.workspace_saved",
    "sandbox.workspace_restored",
    "session.schedule_set",
    "session.schedule_cancelled",
];

/// The sequence a fork asked at `requested` is taken at: the last `session.status_idle` at or
/// before it, or 1 (the configuration alone) when no turn had ended by then.
pub fn fork_point(events: &[StoredEvent], requested: u64) -> u64 {
    events
        .iter()
        .filter(|e| e.seq <= requested)
        .filter(|e| matches!(e.event.body, EventBody::SessionStatusIdle(_)))
        .map(|e| e.seq)
        .next_back()
        .unwrap_or(1)
}

/// Whether a fork copies this event of the parent (taken at `at`).
pub fn copied(e: &StoredEvent, at: u64) -> bool {
    e.seq > 1
        && e.seq <= at
        && !NOT_COPIED.contains(&e.event.type_name())
        && !matches!(e.event.body, EventBody::SessionCreated(_))
}

/// The parent's snapshot whose workspace belongs to a fork taken at `at`: (its request id, its
/// manifest). A snapshot stands for the log at its request's sequence (`snap_<idle seq>`,
/// `snapnow_<seq>`; a fork's own starting one at its event) and was taken as of `as_of`; it
/// is the fork's only if no tool that may change the workspace returned between `at` and
/// `as_of` (a snapshot taken after the next turn's writes is newer than the fork's log). The
/// latest such one at or before `at`, if any.
pub fn workspace_at(events: &[StoredEvent], at: u64) -> Option<(String, String)> {
    let mut changing = std::collections::HashSet::new();
    let mut changed_at = Vec::new();
    for e in events {
        match &e.event.body {
            EventBody::AgentToolUse(u)
                if crate::bus::workspace_jobs::CHANGING_TOOLS.contains(&u.name.as_str()) =>
            {
                changing.insert(u.tool_use_id.clone());
            }
            EventBody::AgentToolResult(r) if changing.contains(&r.tool_use_id) => {
                changed_at.push(e.seq)
            }
            _ => {}
        }
    }
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SandboxWorkspaceSaved(s) if s.error.is_none() => {
                let manifest = s.manifest.clone()?;
                let n: u64 = match s.request_id.as_str() {
                    "fork" => e.seq,
                    r => r
                        .strip_prefix("snap_")
                        .or_else(|| r.strip_prefix("snapnow_"))?
                        .parse()
                        .ok()?,
                };
                let as_of = s.as_of.max(n);
                let newer = changed_at.iter().any(|&c| c > at && c <= as_of);
                (n <= at && !newer).then(|| (n, s.request_id.clone(), manifest))
            }
            _ => None,
        })
        .max_by_key(|(n, _, _)| *n)
        .map(|(_, r, m)| (r, m))
}

/// What differs between a fork's copied prefix and its parent's log: the child's events from
/// its sequence 2 up to its `session.forked` must be the parent's copied events up to the
/// fork's `at`, the same ids and bodies in the same order. Empty when they match.
pub fn compare(parent: &[Record], child: &[Record]) -> Vec<String> {
    let child: Vec<&StoredEvent> = child.iter().filter_map(|r| r.as_ref().ok()).collect();
    // The last one: a fork of a fork copies its parent's `session.forked` too.
    let Some((fork_pos, forked)) = child
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.event.body {
            EventBody::SessionForked(f) => Some((i, f)),
            _ => None,
        })
        .next_back()
    else {
        return vec!["the session has no session.forked event".into()];
    };
    let expected: Vec<&StoredEvent> = parent
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|e| copied(e, forked.at))
        .collect();
    let got: Vec<&StoredEvent> = child[..fork_pos]
        .iter()
        .filter(|e| !matches!(e.event.body, EventBody::SessionCreated(_)))
        .copied()
        .collect();
    let mut diffs = Vec::new();
    if got.len() as u64 != forked.copied {
        diffs.push(format!(
            "session.forked says {} events were copied; the fork holds {}",
            forked.copied,
            got.len()
        ));
    }
    if expected.len() != got.len() {
        diffs.push(format!(
            "the parent has {} events to copy up to sequence {}; the fork holds {}",
            expected.len(),
            forked.at,
            got.len()
        ));
    }
    for (p, c) in expected.iter().zip(&got) {
        if p.event.id != c.event.id || p.event.body != c.event.body {
            diffs.push(format!(
                "the fork's event at sequence {} ({} {}) is not the parent's at {} ({} {})",
                c.seq,
                c.event.type_name(),
                c.event.id,
                p.seq,
                p.event.type_name(),
                p.event.id
            ));
            break;
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        AgentConfig, AgentMessage, ContentBlock, Event, SandboxProvisioned, SessionCreated,
        SessionForked, SessionId, SessionStatusIdle, SessionStatusRunning, StopReason, UserMessage,
    };

    fn at(seq: u64, body: impl Into<EventBody>) -> StoredEvent {
        StoredEvent {
            session_id: SessionId::parse("s").unwrap(),
            seq,
            event: Event::new(body),
        }
    }
    fn idle() -> SessionStatusIdle {
        SessionStatusIdle {
            stop_reason: StopReason {
                kind: "end_turn".into(),
                event_ids: vec![],
            },
        }
    }
    fn parent() -> Vec<StoredEvent> {
        vec![
            at(1, SessionCreated::new(AgentConfig::new("m"))),
            at(
                2,
                UserMessage {
                    content: vec![ContentBlock::text("one")],
                },
            ),
            at(3, SessionStatusRunning {}),
            at(
                4,
                SandboxProvisioned {
                    host: "h".into(),
                    image: "i".into(),
                    container: "c".into(),
                    volume: None,
                    from_pool: false,
                },
            ),
            at(
                5,
                AgentMessage {
                    content: vec![ContentBlock::text("answer")],
                },
            ),
            at(6, idle()),
            at(
                7,
                UserMessage {
                    content: vec![ContentBlock::text("two")],
                },
            ),
            at(8, SessionStatusRunning {}),
        ]
    }

    #[test]
    fn a_fork_mid_turn_is_taken_at_the_turn_boundary_before_it() {
        let p = parent();
        assert_eq!(fork_point(&p, 8), 6, "mid-turn: the last idle");
        assert_eq!(fork_point(&p, 6), 6);
        assert_eq!(
            fork_point(&p, 5),
            1,
            "no turn had ended: the configuration alone"
        );
        let copied: Vec<u64> = p.iter().filter(|e| copied(e, 6)).map(|e| e.seq).collect();
        assert_eq!(
            copied,
            vec![2, 3, 5, 6],
            "no session.created, no sandbox events"
        );
    }

    #[test]
    fn the_checker_finds_a_fork_that_is_not_its_parents_prefix() {
        let p = parent();
        let copies: Vec<StoredEvent> = p.iter().filter(|e| copied(e, 6)).cloned().collect();
        let mut child = vec![at(1, SessionCreated::new(AgentConfig::new("m")))];
        child.extend(copies);
        child.push(at(
            9,
            SessionForked {
                parent: "p".into(),
                requested: 8,
                at: 6,
                copied: 4,
                workspace: None,
            },
        ));
        let recs = |v: &[StoredEvent]| -> Vec<Record> { v.iter().cloned().map(Ok).collect() };
        assert!(compare(&recs(&p), &recs(&child)).is_empty());
        let mut tampered = child.clone();
        tampered[2].event.body = UserMessage {
            content: vec![ContentBlock::text("forged")],
        }
        .into();
        let diffs = compare(&recs(&p), &recs(&tampered));
        assert!(
            diffs.iter().any(|d| d.contains("is not the parent's")),
            "{diffs:?}"
        );
        assert!(!compare(&recs(&p), &recs(&child[..3])).is_empty());
    }

    #[test]
    fn the_workspace_of_a_fork_is_the_last_snapshot_of_its_log() {
        let saved = |request: &str, as_of: u64| {
            let mut s = crate::event::SandboxWorkspaceSaved::answering(request, "h");
            s.manifest = Some(format!("m-{request}"));
            s.as_of = as_of;
            s
        };
        let write = |id: &str| crate::event::AgentToolUse {
            tool_use_id: id.into(),
            name: "write".into(),
            input: serde_json::json!({}),
            evaluated_permission: None,
        };
        let result = |id: &str| crate::event::AgentToolResult {
            tool_use_id: id.into(),
            content: vec![],
            is_error: false,
            output_ref: None,
        };
        let mut events = vec![
            at(2, write("w1")),
            at(3, result("w1")),
            at(4, idle()),
            at(5, saved("snap_4", 4)),
            at(6, write("w2")),
            at(7, result("w2")),
            at(8, idle()),
            at(9, saved("snap_8", 8)),
        ];
        assert_eq!(workspace_at(&events, 4).unwrap().0, "snap_4");
        assert_eq!(workspace_at(&events, 8).unwrap().0, "snap_8");
        assert_eq!(workspace_at(&events, 3), None);
        // A snapshot taken after a later write is not the fork's.
        events[7] = at(9, saved("snap_8", 12));
        events.push(at(10, write("w3")));
        events.push(at(11, result("w3")));
        assert_eq!(workspace_at(&events, 8).unwrap().0, "snap_4");
        // A fork's starting snapshot stands at its own event.
        let forked = vec![at(6, idle()), at(8, saved("fork", 7))];
        assert_eq!(workspace_at(&forked, 9).unwrap().0, "fork");
    }
}
