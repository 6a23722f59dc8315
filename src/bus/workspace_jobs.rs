//! Workspace snapshot jobs, between the brain and the hands: when a session's turn has ended
//! after a tool that may have changed its workspace, the brain publishes a snapshot job (like a
//! tool job, keyed by the turn's `session.status_idle` sequence, routed to the host holding the
//! sandbox); the hand saves the workspace and records `sandbox.workspace_saved`, which answers
//! it. How a snapshot is made is `hands::snapshot`.

use crate::event::{EventBody, StoredEvent};

/// The job name of a snapshot: a hand saves the session's workspace and records
/// `sandbox.workspace_saved`. Not a tool name (tool names have no `.`).
pub const JOB: &str = "workspace.snapshot";

/// The snapshot job `request_id`, of the log as it was at `seq`: a turn's end or a request
/// on demand, sent to the hand holding the sandbox like a tool call (`image`: the session's,
/// for a hand that routes by it; a snapshot never makes a sandbox).
pub fn job(
    session: &crate::event::SessionId,
    request_id: String,
    seq: u64,
    image: Option<String>,
) -> super::jobs::ToolJob {
    super::jobs::ToolJob {
        session_id: session.clone(),
        tool_use_id: request_id,
        name: JOB.into(),
        input: serde_json::json!({}),
        tool_use_seq: seq,
        image,
    }
}

/// The id of the snapshot taken when the turn that ended at `idle_seq` (its
/// `session.status_idle`) changed the workspace.
pub fn turn_request_id(idle_seq: u64) -> String {
    format!("snap_{idle_seq}")
}

/// The id of a snapshot asked for on demand, of the log as it was at `seq`.
pub fn manual_request_id(seq: u64) -> String {
    format!("snapnow_{seq}")
}

/// What kind of snapshot request a job's id is, checked against its sequence: `Some(true)` a
/// turn's, `Some(false)` an on-demand one, `None` neither (the job is refused).
pub fn request_kind(request_id: &str, seq: u64) -> Option<bool> {
    if request_id == turn_request_id(seq) {
        Some(true)
    } else if request_id == manual_request_id(seq) {
        Some(false)
    } else {
        None
    }
}

/// The tools that may change the workspace: a turn that ran one of them gets a snapshot.
pub const CHANGING_TOOLS: &[&str] = &["bash", "write", "edit", "git_remote"];

/// The event id of the `sandbox.workspace_saved` answering `request_id`: the same for every
/// hand, so one lands however often the job runs; its own kind, so it never meets a tool
/// result's id.
pub fn saved_event_id(
    session: &crate::event::SessionId,
    request_id: &str,
) -> Result<crate::event::EventId, crate::event::IdError> {
    super::jobs::session_scoped_id("wsaved", session, request_id)
}

/// The snapshot a session's end of turn still needs: the id and the `session.status_idle`
/// sequence of its last turn, when that turn (or one since the last snapshot) ran a tool that
/// may have changed the workspace in a sandbox and no snapshot answers it yet.
pub fn needed(events: &[StoredEvent]) -> Option<(String, u64)> {
    let mut last_idle = None;
    let mut changed_since_saved = false;
    let mut changed_before_idle = false;
    let mut changing_calls = std::collections::HashSet::new();
    let mut answered = std::collections::HashSet::new();
    for e in events {
        match &e.event.body {
            EventBody::AgentToolUse(u) if CHANGING_TOOLS.contains(&u.name.as_str()) => {
                changing_calls.insert(u.tool_use_id.clone());
            }
            EventBody::AgentToolResult(r) if changing_calls.contains(&r.tool_use_id) => {
                changed_since_saved = true;
            }
            EventBody::SessionStatusIdle(_) => {
                last_idle = Some(e.seq);
                changed_before_idle = changed_since_saved;
            }
            // Any snapshot that was saved (a turn's, an on-demand one, a fork's starting
            // workspace) holds what came before it; one that failed holds nothing, so the next
            // turn's end asks again.
            EventBody::SandboxWorkspaceSaved(s) => {
                answered.insert(s.request_id.clone());
                if s.error.is_none() {
                    changed_since_saved = false;
                    changed_before_idle = false;
                }
            }
            _ => {}
        }
    }
    let idle = last_idle?;
    let id = turn_request_id(idle);
    (changed_before_idle && !answered.contains(&id)).then_some((id, idle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        AgentToolResult, AgentToolUse, ContentBlock, Event, SandboxWorkspaceSaved, SessionId,
        SessionStatusIdle,
    };

    fn idle() -> SessionStatusIdle {
        SessionStatusIdle {
            stop_reason: crate::event::StopReason {
                kind: "end_turn".into(),
                event_ids: vec![],
            },
        }
    }
    fn at(seq: u64, body: impl Into<EventBody>) -> StoredEvent {
        StoredEvent {
            session_id: SessionId::parse("s").unwrap(),
            seq,
            event: Event::new(body),
        }
    }
    fn call(id: &str, name: &str) -> AgentToolUse {
        AgentToolUse {
            tool_use_id: id.into(),
            name: name.into(),
            input: serde_json::json!({}),
            evaluated_permission: None,
        }
    }
    fn result(id: &str) -> AgentToolResult {
        AgentToolResult {
            tool_use_id: id.into(),
            content: vec![ContentBlock::text("ok")],
            is_error: false,
            output_ref: None,
        }
    }
    fn saved(id: &str) -> SandboxWorkspaceSaved {
        SandboxWorkspaceSaved {
            request_id: id.into(),
            host: "h".into(),
            manifest: Some(format!("workspaces/s/snapshots/{id}.json")),
            bytes: 1,
            chunks: 1,
            new_chunks: 1,
            stored_bytes: 1,
            unchanged: false,
            error: None,
            duration_ms: 1,
            as_of: 0,
        }
    }

    #[test]
    fn a_turn_that_wrote_gets_one_snapshot_and_a_reading_turn_none() {
        let read_only = vec![
            at(2, call("t1", "read")),
            at(3, result("t1")),
            at(4, idle()),
        ];
        assert_eq!(needed(&read_only), None);
        let mut wrote = vec![
            at(2, call("t1", "bash")),
            at(3, result("t1")),
            at(4, idle()),
        ];
        assert_eq!(needed(&wrote), Some(("snap_4".into(), 4)));
        wrote.push(at(5, saved("snap_4")));
        assert_eq!(needed(&wrote), None, "answered");
        // A later turn that only talked needs none; one that wrote needs its own.
        wrote.push(at(6, idle()));
        assert_eq!(needed(&wrote), None);
        wrote.push(at(7, call("t2", "write")));
        wrote.push(at(8, result("t2")));
        assert_eq!(needed(&wrote), None, "the turn has not ended");
        wrote.push(at(9, idle()));
        assert_eq!(needed(&wrote), Some(("snap_9".into(), 9)));
    }

    #[test]
    fn request_ids_name_their_sequence() {
        assert_eq!(request_kind("snap_7", 7), Some(true));
        assert_eq!(request_kind("snapnow_7", 7), Some(false));
        assert_eq!(request_kind("snap_7", 8), None);
    }
}
