//! The event types: one payload struct per type, named as in the Managed Agents API.
//!
//! Events evolve additively. Every field added after the first release is optional
//! (`#[serde(default)]`), a reader ignores fields it does not know, and a type it does not know
//! decodes to [`EventBody::Unknown`] with its fields kept, so an older brain can replay a log
//! written by a newer one.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::config::{AgentConfig, EnvironmentConfig, Origin, Resource, SessionLimits};
use super::pricing::{Budget, Money};

/// One block of message content, kept as the JSON object it arrived as.
///
/// Providers add block types and fields over time (thinking blocks with signatures, citations,
/// cache-control marks), and some must be sent back byte-for-byte. So a block is not parsed into
/// a closed enum: it is an object with a string `type`, with accessors for the common kinds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ContentBlock(Map<String, Value>);

impl ContentBlock {
    /// A `{"type": "text", "text": …}` block.
    pub fn text(text: impl Into<String>) -> Self {
        let mut m = Map::new();
        m.insert("type".into(), Value::String("text".into()));
        m.insert("text".into(), Value::String(text.into()));
        Self(m)
    }

    /// Wraps an object; it must carry a string `type`.
    pub fn from_object(object: Map<String, Value>) -> Result<Self, String> {
        match object.get("type") {
            Some(Value::String(_)) => Ok(Self(object)),
            _ => Err("a content block needs a string \"type\"".to_string()),
        }
    }

    /// The block's type (`text`, `image`, `thinking`, `tool_use`, …).
    pub fn kind(&self) -> &str {
        self.0.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// The text of a text block.
    pub fn as_text(&self) -> Option<&str> {
        if self.kind() == "text" {
            self.0.get("text").and_then(Value::as_str)
        } else {
            None
        }
    }

    /// The block as its JSON object.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = Map::deserialize(d)?;
        Self::from_object(object).map_err(serde::de::Error::custom)
    }
}

/// Joins the text blocks of some content, for display and for simple harness checks.
pub fn content_text(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(ContentBlock::as_text)
        .collect::<Vec<_>>()
        .join("")
}

/// Token counts, as the model providers report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens not read from or written to a prompt cache.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Self) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_creation_input_tokens += o.cache_creation_input_tokens;
        self.cache_read_input_tokens += o.cache_read_input_tokens;
    }
}

/// The permission a tool call was given when the brain emitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaluatedPermission {
    /// It may run.
    Allow,
    /// It waits for a `user.tool_confirmation`.
    Ask,
}

/// Why a session went idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopReason {
    /// `end_turn`, `requires_action` or `retries_exhausted` (or a newer kind).
    #[serde(rename = "type")]
    pub kind: String,
    /// For `requires_action`: the events awaiting an answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_ids: Vec<String>,
}

/// An error with a machine-readable type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Its kind, e.g. `model_overloaded_error`, `invalid_event`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened, for people.
    pub message: String,
}

/// Whether herd is retrying after an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryStatus {
    /// `retrying`, `exhausted` or `terminal`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The attempt this status follows (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When retrying: the delay before the next attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

macro_rules! payload {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name { $($(#[$fdoc])* pub $field: $ty,)* }
    };
}

payload!(
    /// `session.created`: the session's whole configuration, so the log alone can rebuild it.
    SessionCreated {
        /// The agent.
        agent: AgentConfig,
        /// Where its tools run.
        #[serde(default)] environment: EnvironmentConfig,
        /// A title for people.
        #[serde(default, skip_serializing_if = "Option::is_none")] title: Option<String>,
        /// Free-form labels from the creator.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")] metadata: BTreeMap<String, String>,
        /// Vaults whose credentials its `http_request` calls may use, looked up in this order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")] vault_ids: Vec<String>,
        /// Inputs mounted into its workspace: git repositories, cloned by the hand.
        #[serde(default, skip_serializing_if = "Vec::is_empty")] resources: Vec<Resource>,
        /// herd's limits on model requests, tool calls and output tokens (rule 11); raised
        /// later by a `session.updated`.
        #[serde(default, skip_serializing_if = "SessionLimits::is_empty")] limits: SessionLimits,
        /// Where the session came from when a front door other than herd's own made it (the
        /// gateway: its tenant and the Managed Agents API objects it was created from).
        #[serde(default, skip_serializing_if = "Option::is_none")] origin: Option<Origin>,
    }
);
payload!(
    /// `user.message`: what the user said.
    UserMessage {
        /// Text, image or document blocks.
        content: Vec<ContentBlock>,
    }
);
payload!(
    /// `user.interrupt`: stop the running turn at the next step boundary.
    UserInterrupt {}
);
payload!(
    /// `user.tool_confirmation`: allows or denies a call that waits for confirmation.
    UserToolConfirmation {
        /// The `agent.tool_use` or `agent.mcp_tool_use` it answers.
        tool_use_id: String,
        /// `allow` or `deny`.
        result: String,
        /// For a denial: what the model is told.
        #[serde(default, skip_serializing_if = "Option::is_none")] deny_message: Option<String>,
    }
);
payload!(
    /// `user.custom_tool_result`: the client's answer to an `agent.custom_tool_use`.
    UserCustomToolResult {
        /// The call it answers.
        custom_tool_use_id: String,
        /// The result.
        #[serde(default)] content: Vec<ContentBlock>,
        /// Whether the tool failed.
        #[serde(default)] is_error: bool,
    }
);
payload!(
    /// `system.message`: privileged context for this and later turns.
    SystemMessage {
        /// The context.
        content: Vec<ContentBlock>,
    }
);
payload!(
    /// `agent.message`: what the model said.
    AgentMessage {
        /// Its content blocks, exactly as the provider sent them.
        content: Vec<ContentBlock>,
    }
);
payload!(
    /// `agent.thinking`: the model is reasoning (a progress signal).
    AgentThinking {
        /// Thinking blocks, kept exactly as received (signatures included).
        #[serde(default, skip_serializing_if = "Vec::is_empty")] content: Vec<ContentBlock>,
    }
);
payload!(
    /// `agent.tool_use`: the model calls a built-in (sandbox) tool.
    AgentToolUse {
        /// The provider's id for the call; tool jobs and results are keyed by it.
        tool_use_id: String,
        /// The tool.
        name: String,
        /// Its input.
        input: Value,
        /// Whether it may run now or waits for a confirmation.
        #[serde(default, skip_serializing_if = "Option::is_none")] evaluated_permission: Option<EvaluatedPermission>,
    }
);
payload!(
    /// `agent.tool_result`: the outcome of an `agent.tool_use`; exactly one per call.
    AgentToolResult {
        /// The call it answers.
        tool_use_id: String,
        /// The output (its head and tail when it was too large to keep inline).
        #[serde(default)] content: Vec<ContentBlock>,
        /// Whether the tool failed (including a lost sandbox or a denial).
        #[serde(default)] is_error: bool,
        /// Where the whole output is, when it was too large for the event.
        #[serde(default, skip_serializing_if = "Option::is_none")] output_ref: Option<OutputRef>,
    }
);
payload!(
    /// `agent.custom_tool_use`: the model calls a tool the client answers.
    AgentCustomToolUse {
        /// The call's id.
        tool_use_id: String,
        /// The tool.
        name: String,
        /// Its input.
        input: Value,
    }
);
payload!(
    /// `agent.mcp_tool_use`: the model calls a tool of an MCP server.
    AgentMcpToolUse {
        /// The call's id.
        tool_use_id: String,
        /// The MCP server.
        mcp_server_name: String,
        /// The tool.
        name: String,
        /// Its input.
        input: Value,
        /// Whether it may run now or waits for a confirmation.
        #[serde(default, skip_serializing_if = "Option::is_none")] evaluated_permission: Option<EvaluatedPermission>,
    }
);
payload!(
    /// `agent.mcp_tool_result`: the outcome of an `agent.mcp_tool_use`.
    AgentMcpToolResult {
        /// The call it answers.
        mcp_tool_use_id: String,
        /// The output.
        #[serde(default)] content: Vec<ContentBlock>,
        /// Whether the tool failed.
        #[serde(default)] is_error: bool,
    }
);
payload!(
    /// `session.mcp_tools_listed` (herd): what an MCP server offered when a hand asked it
    /// (`tools/list`), or why it could not be asked. The brain builds the model's tools from
    /// this record, never from the server, so a replay needs no server.
    McpToolsListed {
        /// The listing job it answers (`mcplist_<turn seq>_<server>`): one record per job.
        request_id: String,
        /// The server, as the agent names it.
        mcp_server_name: String,
        /// The URL that was asked.
        url: String,
        /// The tools it listed that herd can offer, in the server's order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")] tools: Vec<crate::event::McpTool>,
        /// Tools left out, and why (a name the model cannot call, a schema too large, …).
        #[serde(default, skip_serializing_if = "Vec::is_empty")] skipped: Vec<String>,
        /// Why the server could not be listed (unreachable, refused address, bad answer).
        #[serde(default, skip_serializing_if = "Option::is_none")] error: Option<String>,
    }
);
payload!(
    /// `agent.thread_context_compacted`: older turns were summarised; later model requests are
    /// built from the summary plus the events after `compacted_up_to`. The events themselves are
    /// never changed.
    AgentThreadContextCompacted {
        /// The summary that replaces the older turns in the model's context.
        summary: String,
        /// The last stream sequence the summary covers.
        compacted_up_to: u64,
    }
);
payload!(
    /// `session.status_running`: a turn started.
    SessionStatusRunning {}
);
payload!(
    /// `session.status_idle`: the turn ended; `stop_reason` says why.
    SessionStatusIdle {
        /// Why the session stopped.
        stop_reason: StopReason,
    }
);
payload!(
    /// `session.status_rescheduled`: a retryable error; the turn resumes after a delay.
    SessionStatusRescheduled {
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")] reason: Option<String>,
    }
);
payload!(
    /// `session.status_terminated`: the session ended for good.
    SessionStatusTerminated {
        /// Why.
        reason: String,
    }
);
payload!(
    /// `session.error`: something went wrong; `retry_status` says whether herd retries.
    SessionError {
        /// The error.
        error: ErrorInfo,
        /// Whether it is being retried.
        #[serde(default, skip_serializing_if = "Option::is_none")] retry_status: Option<RetryStatus>,
    }
);
payload!(
    /// `session.usage`: cumulative token usage of the session, emitted before it goes idle.
    SessionUsage {
        /// The running total.
        #[serde(flatten)] usage: Usage,
        /// What those tokens cost at the model's list price (cents, rounded up), when herd
        /// knows the price.
        #[serde(default, skip_serializing_if = "Option::is_none")] list_cost: Option<Money>,
        /// The session's budget, echoed (as the Managed Agents API's `session.usage` does).
        #[serde(default, skip_serializing_if = "Option::is_none")] budget: Option<Budget>,
    }
);
payload!(
    /// `session.updated`: changed fields only.
    SessionUpdated {
        /// A new title.
        #[serde(default, skip_serializing_if = "Option::is_none")] title: Option<String>,
        /// New metadata (replaces the old).
        #[serde(default, skip_serializing_if = "Option::is_none")] metadata: Option<BTreeMap<String, String>>,
        /// New limits (replace the old whole, the budget among them: the front door carries
        /// the budget over when only the other limits change).
        #[serde(default, skip_serializing_if = "Option::is_none")] limits: Option<SessionLimits>,
    }
);
payload!(
    /// `session.limit_reached` (herd): a limit of the session stopped its turn before the next
    /// model request; the session is idle with `budget_reached` until the limit is raised (a
    /// `session.updated`) or, for a per-turn limit, a new message starts a new turn.
    SessionLimitReached {
        /// Which limit: `model_requests_per_turn`, `model_requests`, `tool_calls_per_turn`,
        /// `tool_calls`, `output_tokens_per_turn`, `output_tokens`, `wall_seconds_per_turn`, or
        /// `max_list_cost` (the budget).
        limit: String,
        /// Its value (for `max_list_cost`, US cents).
        max: u64,
        /// What the session (or the turn) has used (for `max_list_cost`, US cents rounded up;
        /// for `wall_seconds_per_turn`, whole seconds since the turn began).
        used: u64,
    }
);
payload!(
    /// `span.model_request_start`: a model request is about to be sent.
    SpanModelRequestStart {
        /// The model asked.
        #[serde(default, skip_serializing_if = "Option::is_none")] model: Option<String>,
    }
);
payload!(
    /// `span.model_request_end`: a model request finished; its usage counts towards the session.
    SpanModelRequestEnd {
        /// The `span.model_request_start` event it closes.
        #[serde(default, skip_serializing_if = "Option::is_none")] model_request_start_id: Option<String>,
        /// The tokens this request used.
        #[serde(default)] model_usage: Usage,
        /// Whether the request failed.
        #[serde(default)] is_error: bool,
    }
);

payload!(
    /// `sandbox.provisioned`: a hand started a sandbox for the session (herd's own type).
    SandboxProvisioned {
        /// The hand host that runs it.
        host: String,
        /// Its image.
        image: String,
        /// Its container id.
        container: String,
        /// Its workspace volume on that host, when it is not named after the session (a
        /// sandbox from the warm pool keeps the pool volume it was made with).
        #[serde(default, skip_serializing_if = "Option::is_none")] volume: Option<String>,
        /// It came from the hand's warm pool (made before the session asked).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")] from_pool: bool,
    }
);
payload!(
    /// `sandbox.lost`: a session's sandbox died (killed, out of memory, its host gone).
    SandboxLost {
        /// The hand host that ran it.
        host: String,
        /// What happened.
        reason: String,
    }
);

payload!(
    /// `sandbox.workspace_saved` (herd): a hand saved the session's `/workspace` to the object
    /// store (see `hands::snapshot`), at the end of a turn that ran a tool able to change it,
    /// or on demand. One per request; `error` says why none was written.
    SandboxWorkspaceSaved {
        /// The request it answers: `snap_<seq>` for the turn whose `session.status_idle` is at
        /// that sequence, `snapnow_<seq>` on demand, `fork` for a fork's starting workspace.
        request_id: String,
        /// The hand host that saved it.
        host: String,
        /// The manifest's object name in `herd-blobs` (an unchanged workspace names the
        /// previous one); `None` when nothing could be saved.
        #[serde(default, skip_serializing_if = "Option::is_none")] manifest: Option<String>,
        /// The archive's size in bytes.
        #[serde(default)] bytes: u64,
        /// Its chunks.
        #[serde(default)] chunks: u64,
        /// Chunks written by this snapshot (the rest were already stored).
        #[serde(default)] new_chunks: u64,
        /// Bytes written by this snapshot.
        #[serde(default)] stored_bytes: u64,
        /// Nothing changed since the previous snapshot: nothing was written.
        #[serde(default)] unchanged: bool,
        /// Why no snapshot was saved.
        #[serde(default, skip_serializing_if = "Option::is_none")] error: Option<String>,
        /// How long it took.
        #[serde(default)] duration_ms: u64,
        /// The session's last sequence when the hand began saving (under the session's lock,
        /// so no tool of the session ran meanwhile): the workspace is as of this event.
        #[serde(default)] as_of: u64,
    }
);
payload!(
    /// `sandbox.workspace_restored` (herd): a fresh sandbox whose workspace volume was new (its
    /// host gone, or a fork's first) got the session's latest snapshot.
    SandboxWorkspaceRestored {
        /// The hand host.
        host: String,
        /// The manifest restored.
        manifest: String,
        /// The sequence of the `sandbox.workspace_saved` it came from.
        saved_seq: u64,
        /// Bytes of archive restored.
        #[serde(default)] bytes: u64,
        /// Why the restore failed (the sandbox then starts empty).
        #[serde(default, skip_serializing_if = "Option::is_none")] error: Option<String>,
        /// How long it took.
        #[serde(default)] duration_ms: u64,
    }
);
payload!(
    /// `session.forked` (herd): this session was made from another's log: the events before
    /// this one are the parent's up to `at` (see `session::fork`). The parent is untouched.
    SessionForked {
        /// The parent session.
        parent: String,
        /// The parent's sequence the fork was asked at.
        requested: u64,
        /// The parent's sequence it was taken at: its last turn boundary at or before
        /// `requested`.
        at: u64,
        /// Events copied.
        copied: u64,
        /// The parent's snapshot its workspace starts from (copied into this session's own
        /// objects), if the parent had one by `at`.
        #[serde(default, skip_serializing_if = "Option::is_none")] workspace: Option<String>,
    }
);
payload!(
    /// `session.schedule_set` (herd): a scheduled wake was set (or replaced) for the session.
    SessionScheduleSet {
        /// Its name, unique in the session.
        name: String,
        /// When it fires: `at <RFC 3339>`, `every <duration>` or `cron <6 fields>` (UTC).
        spec: String,
        /// What the session is told when it fires.
        prompt: String,
    }
);
payload!(
    /// `session.schedule_cancelled` (herd): a scheduled wake was cancelled before it fired
    /// again.
    SessionScheduleCancelled {
        /// Its name.
        name: String,
    }
);
payload!(
    /// `session.schedule_fired` (herd): a scheduled wake fired; the `user.message` after it
    /// carries its prompt.
    SessionScheduleFired {
        /// Its name.
        name: String,
        /// When it was due to fire, as the server recorded the firing (RFC 3339).
        fired_at: String,
        /// When it fires next (RFC 3339), or `None` when this was its last time.
        #[serde(default, skip_serializing_if = "Option::is_none")] next: Option<String>,
    }
);

impl SandboxWorkspaceSaved {
    /// The answer to `request_id` from `host`, before anything is known of the snapshot.
    pub fn answering(request_id: &str, host: &str) -> Self {
        Self {
            request_id: request_id.to_string(),
            host: host.to_string(),
            manifest: None,
            bytes: 0,
            chunks: 0,
            new_chunks: 0,
            stored_bytes: 0,
            unchanged: false,
            error: None,
            duration_ms: 0,
            as_of: 0,
        }
    }
}

/// A large output kept in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRef {
    /// The object store bucket.
    pub bucket: String,
    /// The object's name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An event of a type this version of herd does not know, kept whole.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownEvent {
    /// Its type name.
    pub type_name: String,
    /// Its fields, except `id`, `type` and `processed_at`.
    pub fields: Map<String, Value>,
}

macro_rules! event_types {
    ($( $(#[$doc:meta])* $name:literal => $variant:ident($ty:ty) ),* $(,)?) => {
        /// What happened: the typed payload of an event, tagged by its type name.
        // `session.created` carries the whole configuration and is much larger than the rest;
        // events are handled one at a time, so boxing it would buy nothing but churn.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventBody {
            $( $(#[$doc])* $variant($ty), )*
            /// A type this version does not know, kept whole.
            Unknown(UnknownEvent),
        }

        impl EventBody {
            /// Every type name this version knows.
            pub const KNOWN_TYPES: &'static [&'static str] = &[$($name),*];

            /// The type name, as in the subject and the `type` field.
            pub fn type_name(&self) -> &str {
                match self {
                    $(Self::$variant(_) => $name,)*
                    Self::Unknown(u) => &u.type_name,
                }
            }

            /// Builds the body of type `type_name` from its fields. Unknown types are kept whole;
            /// a known type with fields of the wrong shape is an error.
            pub(crate) fn from_fields(
                type_name: &str,
                fields: Map<String, Value>,
            ) -> Result<Self, serde_json::Error> {
                match type_name {
                    $($name => serde_json::from_value(Value::Object(fields)).map(Self::$variant),)*
                    other => Ok(Self::Unknown(UnknownEvent { type_name: other.to_string(), fields })),
                }
            }

            /// The body's fields as a JSON object (without `type`).
            pub(crate) fn to_fields(&self) -> Map<String, Value> {
                let value = match self {
                    $(Self::$variant(v) => serde_json::to_value(v),)*
                    Self::Unknown(u) => return u.fields.clone(),
                };
                match value {
                    Ok(Value::Object(m)) => m,
                    // Every payload is a struct of plain data, so serialising cannot fail and
                    // always yields an object.
                    _ => Map::new(),
                }
            }
        }

        $(
            impl From<$ty> for EventBody {
                fn from(v: $ty) -> Self {
                    Self::$variant(v)
                }
            }
        )*
    };
}

event_types! {
    /// See [`SessionCreated`].
    "session.created" => SessionCreated(SessionCreated),
    /// See [`UserMessage`].
    "user.message" => UserMessage(UserMessage),
    /// See [`UserInterrupt`].
    "user.interrupt" => UserInterrupt(UserInterrupt),
    /// See [`UserToolConfirmation`].
    "user.tool_confirmation" => UserToolConfirmation(UserToolConfirmation),
    /// See [`UserCustomToolResult`].
    "user.custom_tool_result" => UserCustomToolResult(UserCustomToolResult),
    /// See [`SystemMessage`].
    "system.message" => SystemMessage(SystemMessage),
    /// See [`AgentMessage`].
    "agent.message" => AgentMessage(AgentMessage),
    /// See [`AgentThinking`].
    "agent.thinking" => AgentThinking(AgentThinking),
    /// See [`AgentToolUse`].
    "agent.tool_use" => AgentToolUse(AgentToolUse),
    /// See [`AgentToolResult`].
    "agent.tool_result" => AgentToolResult(AgentToolResult),
    /// See [`AgentCustomToolUse`].
    "agent.custom_tool_use" => AgentCustomToolUse(AgentCustomToolUse),
    /// See [`AgentMcpToolUse`].
    "agent.mcp_tool_use" => AgentMcpToolUse(AgentMcpToolUse),
    /// See [`AgentMcpToolResult`].
    "agent.mcp_tool_result" => AgentMcpToolResult(AgentMcpToolResult),
    /// See [`McpToolsListed`].
    "session.mcp_tools_listed" => McpToolsListed(McpToolsListed),
    /// See [`AgentThreadContextCompacted`].
    "agent.thread_context_compacted" => AgentThreadContextCompacted(AgentThreadContextCompacted),
    /// See [`SessionStatusRunning`].
    "session.status_running" => SessionStatusRunning(SessionStatusRunning),
    /// See [`SessionStatusIdle`].
    "session.status_idle" => SessionStatusIdle(SessionStatusIdle),
    /// See [`SessionStatusRescheduled`].
    "session.status_rescheduled" => SessionStatusRescheduled(SessionStatusRescheduled),
    /// See [`SessionStatusTerminated`].
    "session.status_terminated" => SessionStatusTerminated(SessionStatusTerminated),
    /// See [`SessionError`].
    "session.error" => SessionError(SessionError),
    /// See [`SessionUsage`].
    "session.usage" => SessionUsage(SessionUsage),
    /// See [`SessionLimitReached`].
    "session.limit_reached" => SessionLimitReached(SessionLimitReached),
    /// See [`SessionUpdated`].
    "session.updated" => SessionUpdated(SessionUpdated),
    /// See [`SpanModelRequestStart`].
    "span.model_request_start" => SpanModelRequestStart(SpanModelRequestStart),
    /// See [`SpanModelRequestEnd`].
    "span.model_request_end" => SpanModelRequestEnd(SpanModelRequestEnd),
    /// See [`SandboxProvisioned`].
    "sandbox.provisioned" => SandboxProvisioned(SandboxProvisioned),
    /// See [`SandboxLost`].
    "sandbox.lost" => SandboxLost(SandboxLost),
    /// See [`SandboxWorkspaceSaved`].
    "sandbox.workspace_saved" => SandboxWorkspaceSaved(SandboxWorkspaceSaved),
    /// See [`SandboxWorkspaceRestored`].
    "sandbox.workspace_restored" => SandboxWorkspaceRestored(SandboxWorkspaceRestored),
    /// See [`SessionForked`].
    "session.forked" => SessionForked(SessionForked),
    /// See [`SessionScheduleSet`].
    "session.schedule_set" => SessionScheduleSet(SessionScheduleSet),
    /// See [`SessionScheduleCancelled`].
    "session.schedule_cancelled" => SessionScheduleCancelled(SessionScheduleCancelled),
    /// See [`SessionScheduleFired`].
    "session.schedule_fired" => SessionScheduleFired(SessionScheduleFired),
}

/// Checks an event type name: dot-separated lowercase tokens (`user.message`), which become the
/// last tokens of the event's subject.
pub fn check_type_name(name: &str) -> Result<(), String> {
    let ok_token = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if name.len() > 64 || !name.split('.').all(ok_token) || !name.contains('.') {
        return Err(format!(
            "event type {name:?} is not valid: expected dot-separated lowercase tokens such as \"user.message\" (at most 64 characters)"
        ));
    }
    Ok(())
}
