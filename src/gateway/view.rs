//! herd's events as the Managed Agents API shows them. herd's events already are the API's
//! flat objects; what differs is mapped here, in one place:
//!
//! - a tool call's event id is the call's id (herd keys calls, jobs and results by the
//!   model's `tool_use_id`), so `stop_reason.event_ids`, `agent.tool_result.tool_use_id` and
//!   the confirmations and custom results a client sends all name the call's event, as in
//!   the hosted API;
//! - `session.error` carries `retry_status` inside `error`, and `session.usage` its counts
//!   under `usage`, as the API has them (herd's own fields stay too);
//! - herd's own types (`session.created`, `sandbox.*`, `session.limit_reached`, `session.mcp_tools_listed`, `session.forked`, `session.schedule_*`) are not
//!   shown unless asked for by type: they are not in the SDK's union.

use serde_json::{Value, json};

use crate::event::{EventBody, StoredEvent};

/// herd's event types that the Managed Agents API does not have.
pub const HERD_ONLY: &[&str] = &[
    "session.created",
    "sandbox.provisioned",
    "sandbox.lost",
    "session.limit_reached",
    "session.mcp_tools_listed",
    "sandbox.workspace_saved",
    "sandbox.workspace_restored",
    "session.forked",
    "session.schedule_set",
    "session.schedule_cancelled",
    "session.schedule_fired",
];

/// True when the event is shown by default.
pub fn shown(type_name: &str) -> bool {
    !HERD_ONLY.contains(&type_name)
}

/// The event as the API shows it.
pub fn event(e: &StoredEvent) -> Value {
    let mut v = e.event.to_json();
    // herd's addition: the event's position in the log (the stream's `id:` and the list's
    // cursor), so a client can order, resume and de-duplicate without a second key.
    v["sequence"] = e.seq.into();
    match &e.event.body {
        EventBody::AgentToolUse(t) => {
            v["id"] = t.tool_use_id.clone().into();
            if let Some(p) = t.evaluated_permission {
                let kind = match p {
                    crate::event::EvaluatedPermission::Allow => "always_allow",
                    crate::event::EvaluatedPermission::Ask => "always_ask",
                };
                v["evaluation"] = json!({"type": kind});
            }
        }
        EventBody::AgentCustomToolUse(t) => v["id"] = t.tool_use_id.clone().into(),
        EventBody::AgentMcpToolUse(t) => v["id"] = t.tool_use_id.clone().into(),
        EventBody::AgentMcpToolResult(r) => {
            v["tool_use_id"] = r.mcp_tool_use_id.clone().into();
        }
        EventBody::SessionError(err) => {
            if let Some(r) = &err.retry_status {
                v["error"]["retry_status"] = json!(r);
            } else {
                v["error"]["retry_status"] = json!({"type": "terminal"});
            }
        }
        EventBody::SessionUsage(u) => {
            v["usage"] = json!({
                "input_tokens": u.usage.input_tokens,
                "output_tokens": u.usage.output_tokens,
                "cache_read_input_tokens": u.usage.cache_read_input_tokens,
                "cache_creation_input_tokens": u.usage.cache_creation_input_tokens,
            });
        }
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn stored(body: impl Into<EventBody>) -> StoredEvent {
        StoredEvent {
            session_id: SessionId::parse("sesn_1").unwrap(),
            seq: 7,
            event: Event::new(body),
        }
    }

    #[test]
    fn a_calls_event_id_is_its_tool_use_id_and_herds_types_are_hidden() {
        let v = event(&stored(AgentToolUse {
            tool_use_id: "toolu_1".into(),
            name: "bash".into(),
            input: json!({}),
            evaluated_permission: Some(EvaluatedPermission::Ask),
        }));
        assert_eq!(v["id"], "toolu_1");
        assert_eq!(v["type"], "agent.tool_use");
        assert_eq!(v["evaluation"]["type"], "always_ask");
        assert!(v["processed_at"].is_string());
        let v = event(&stored(SessionUsage {
            usage: Usage {
                input_tokens: 3,
                ..Default::default()
            },
            list_cost: None,
            budget: None,
        }));
        assert_eq!(v["usage"]["input_tokens"], 3);
        assert!(!shown("session.created") && shown("agent.message"));
    }
}
