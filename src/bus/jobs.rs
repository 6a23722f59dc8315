//! Tool jobs: the interface between the brain and the hands.
//!
//! A job is published to `HERD_TOOLS` on `herd.tools.pool.<session_id>.<tool_use_id>` (or on
//! its host's subject, see [`super::routing`]), with
//! `Nats-Msg-Id: job_<session_id>_<tool_use_id>`, so publishing it again (after a crash between
//! the append and the publish) stores it once. Its result is an `agent.tool_result` whose event
//! id is derived from the tool_use id, so it lands exactly once however often the job runs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{EventId, IdError, SessionId, check_token};

/// One tool call to execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolJob {
    /// The session.
    pub session_id: SessionId,
    /// The call's id, the job's key.
    pub tool_use_id: String,
    /// The tool.
    pub name: String,
    /// Its input.
    pub input: Value,
    /// The stream sequence of the `agent.tool_use` event.
    pub tool_use_seq: u64,
    /// The sandbox image of the session's environment, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl ToolJob {
    /// Checks that the job's tool_use id can be a subject token (the subjects themselves are
    /// built by [`super::routing::subject`], for the route the job takes).
    pub fn check(&self) -> Result<(), IdError> {
        check_token("tool_use id", &self.tool_use_id)
    }

    /// The job's message id.
    pub fn message_id(&self) -> String {
        format!("job_{}_{}", self.session_id, self.tool_use_id)
    }
}

/// The job name of an MCP listing: a hand asks the server named in the job's input for its
/// tools (`tools/list`) and records them as `session.mcp_tools_listed`. Not a tool name (tool
/// names have no `.`), so no model call can be mistaken for it.
pub const MCP_LIST_TOOLS: &str = "mcp.list_tools";

/// The id of the job that lists the MCP server `server`'s tools for the turn that began at
/// `turn_seq` (its `session.status_running`): one listing per server per turn.
pub fn mcp_listing_id(turn_seq: u64, server: &str) -> String {
    format!("mcplist_{turn_seq}_{server}")
}

/// How many characters a derived result id adds around its tool_use id
/// (`sevt_result_<16 hex>_`): the harness keeps tool_use ids short enough for it.
pub const RESULT_ID_OVERHEAD: usize = "sevt_result_".len() + 16 + 1;

/// The event id of the result of a tool call: the same for every writer (hands, or the brain
/// recording a denial or an interruption), so one result lands. It carries a fixed hash of the
/// session, because JetStream deduplicates message ids across the whole stream: two sessions
/// whose models (or scripts) used the same tool_use id would otherwise lose one result.
/// SHA-256, not std's hasher, so every herd version derives the same id.
pub fn result_event_id(session: &SessionId, tool_use_id: &str) -> Result<EventId, IdError> {
    session_scoped_id("result", session, tool_use_id)
}

/// An event id of `kind` derived from a key and a fixed hash of the session (16 hex digits of
/// its SHA-256): the same for every writer and every herd version, distinct across sessions.
pub fn session_scoped_id(kind: &str, session: &SessionId, key: &str) -> Result<EventId, IdError> {
    let digest = ring::digest::digest(&ring::digest::SHA256, session.as_str().as_bytes());
    let short: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    EventId::derived(kind, &[&short, key])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_ids_are_deterministic_per_session_and_distinct_across_sessions() {
        let a = SessionId::parse("sesn_a").unwrap();
        let b = SessionId::parse("sesn_b").unwrap();
        let id = |s: &SessionId| result_event_id(s, "toolu_demo_run2").unwrap();
        assert_eq!(id(&a), id(&a));
        assert_ne!(
            id(&a),
            id(&b),
            "the stream deduplicates ids across sessions"
        );
        assert!(
            id(&a).as_str().starts_with("sevt_result_")
                && id(&a).as_str().ends_with("_toolu_demo_run2")
        );
        let longest = "x".repeat(crate::event::MAX_ID_LEN - RESULT_ID_OVERHEAD);
        assert!(result_event_id(&a, &longest).is_ok());
    }
}
