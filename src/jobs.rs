//! Tool jobs: the interface between the brain and the hands.
//!
//! A job is published to `HERD_TOOLS` on `herd.tools.pool.<session_id>.<tool_use_id>` (or on
//! its host's subject, see `hands::registry`), with
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
    /// built by `hands::registry::subject`, for the route the job takes).
    pub fn check(&self) -> Result<(), IdError> {
        check_token("tool_use id", &self.tool_use_id)
    }

    /// The job's message id.
    pub fn message_id(&self) -> String {
        format!("job_{}_{}", self.session_id, self.tool_use_id)
    }
}

/// The event id of the result of a tool call: the same for every writer (hands, or the brain
/// recording a denial or an interruption), so one result lands.
pub fn result_event_id(tool_use_id: &str) -> Result<EventId, IdError> {
    EventId::derived("result", &[tool_use_id])
}
