//! The harness: what a session needs next, decided from its events alone.
//!
//! [`decide`] is a pure function of the session's events, its configuration and the time. The
//! worker around it does the effects (model calls, appends, publishing tool jobs) and comes
//! back here after each one, so every decision starts from the log as it is, and a brain that
//! crashed anywhere resumes by deciding again.
//!
//! A turn, as the Managed Agents API defines it: `session.status_running`, then for each model
//! request `span.model_request_start`, the model's output (`agent.thinking`, `agent.message`,
//! `agent.tool_use`, …) and `span.model_request_end`; it ends with `session.usage` and
//! `session.status_idle` whose `stop_reason` is `end_turn`, `requires_action` (custom tools or
//! confirmations pending; `event_ids` lists the tool_use ids awaiting an answer),
//! `retries_exhausted`, or `budget_reached` (one of the session's limits — its cost budget,
//! the wall time of a turn, a count of requests, calls or tokens — stopped it before the next
//! model request, with a `session.limit_reached` naming it).

use std::collections::BTreeMap;

use serde_json::Value;
use time::OffsetDateTime;

use super::context;
use super::provider::{ModelError, ModelRequest, ModelResponse};
use crate::bus::jobs::{ToolJob, mcp_listing_id, result_event_id};
use crate::event::*;
use crate::session::{SessionState, Status, ToolKind};

/// An event the harness wants appended; `id` is set when it must be deterministic (tool
/// results), else the worker generates one.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// A fixed id, or `None` for a fresh one.
    pub id: Option<EventId>,
    /// The event.
    pub body: EventBody,
}

impl Planned {
    fn new(body: impl Into<EventBody>) -> Self {
        Self {
            id: None,
            body: body.into(),
        }
    }

    fn result(session: &SessionId, tool_use_id: &str, text: &str) -> Self {
        Self::tool_result(session, tool_use_id, text, true)
    }

    /// The result of an `agent.tool_use`, with the id every writer derives for it.
    fn tool_result(session: &SessionId, tool_use_id: &str, text: &str, is_error: bool) -> Self {
        Self {
            id: result_event_id(session, tool_use_id).ok(),
            body: AgentToolResult {
                tool_use_id: tool_use_id.to_string(),
                content: vec![ContentBlock::text(text)],
                is_error,
                output_ref: None,
            }
            .into(),
        }
    }

    /// An error result for the pending call `tool_use_id`, of the call's own kind (an
    /// `agent.mcp_tool_result` for an MCP call).
    fn error_for(state: &SessionState, tool_use_id: &str, text: &str) -> Self {
        match state.pending_tools.get(tool_use_id).map(|t| t.kind) {
            Some(ToolKind::Mcp) => Self {
                id: result_event_id(&state.id, tool_use_id).ok(),
                body: AgentMcpToolResult {
                    mcp_tool_use_id: tool_use_id.to_string(),
                    content: vec![ContentBlock::text(text)],
                    is_error: true,
                }
                .into(),
            },
            _ => Self::result(&state.id, tool_use_id, text),
        }
    }
}

/// The listing jobs a running turn needs before its model request: one per MCP server of the
/// agent that has no successful listing in the log and has not been asked in this turn. A
/// server that failed is asked again in the next turn, never twice in one.
fn mcp_listings_needed(
    state: &SessionState,
    events: &[StoredEvent],
    turn_seq: u64,
) -> Vec<ToolJob> {
    let Some(config) = &state.config else {
        return Vec::new();
    };
    if state.status != Status::Running || turn_seq == 0 {
        return Vec::new();
    }
    config
        .agent
        .mcp_servers
        .iter()
        .filter(|server| {
            let listed = state
                .mcp_listings
                .iter()
                .any(|l| l.mcp_server_name == server.name && l.error.is_none());
            // This turn's listing can only stand after the turn began: read back to there.
            let id = mcp_listing_id(turn_seq, &server.name);
            let asked = events.iter().rev().take_while(|e| e.seq > turn_seq).any(
                |e| matches!(&e.event.body, EventBody::McpToolsListed(l) if l.request_id == id),
            );
            !listed && !asked
        })
        .map(|server| ToolJob {
            session_id: state.id.clone(),
            tool_use_id: mcp_listing_id(turn_seq, &server.name),
            name: crate::bus::jobs::MCP_LIST_TOOLS.into(),
            input: serde_json::json!({"mcp_server_name": server.name}),
            tool_use_seq: turn_seq,
            image: None,
        })
        .collect()
}

/// What the session needs next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing: it is idle, or waits on tools, the user, or a custom tool result.
    Wait,
    /// Append these events (a step that needs no model).
    Append(Vec<Planned>),
    /// The context is over budget: summarise the events up to `up_to` with `request`, then
    /// append `agent.thread_context_compacted` and decide again.
    Compact {
        /// The last sequence the summary covers.
        up_to: u64,
        /// The summarisation request.
        request: Box<ModelRequest>,
    },
    /// Append `preamble` (step A), then call the model with `request`.
    CallModel {
        /// Events that open the request (`status_running`, `span.model_request_start`, …).
        preamble: Vec<Planned>,
        /// The request.
        request: Box<ModelRequest>,
    },
}

/// Limits the harness enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failed model requests in a row before the turn ends with `retries_exhausted`.
    pub max_model_attempts: u32,
    /// Whether to compact a context over budget (off after a failed compaction in this wake,
    /// so a failing summariser never stalls the turn).
    pub compact: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_model_attempts: 5,
            compact: true,
        }
    }
}

/// The context budget when the agent sets none, in estimated tokens.
pub const DEFAULT_CONTEXT_BUDGET: u32 = 150_000;

/// The instruction of a compaction request.
const SUMMARISE: &str = "Summarise the conversation so far for yourself, so that you can continue it without the original messages: the user's goals, decisions made, facts learned, tool results that still matter, and open tasks. Be complete but concise.";

/// Where to cut for compaction: everything up to the last finished turn (an idle with
/// `end_turn` or `retries_exhausted`, so no tool call is open across the cut) before the newest
/// input, if that is past what an earlier summary already covers.
fn compaction_cut(events: &[StoredEvent], boundary: u64) -> Option<u64> {
    let covered = events
        .iter()
        .rev()
        .find_map(|e| match &e.event.body {
            EventBody::AgentThreadContextCompacted(c) => Some(c.compacted_up_to),
            _ => None,
        })
        .unwrap_or(0);
    let cut = events
        .iter()
        .filter(|e| {
            e.seq <= boundary
                && matches!(&e.event.body, EventBody::SessionStatusIdle(i)
                    if i.stop_reason.kind == "end_turn" || i.stop_reason.kind == "retries_exhausted")
        })
        .map(|e| e.seq)
        .next_back()?;
    (cut > covered).then_some(cut)
}

/// What the harness reads off the log in one pass.
#[derive(Default)]
struct Scan {
    /// The last `span.model_request_start`: its sequence and event id.
    last_start: Option<(u64, EventId)>,
    /// Whether that span has ended.
    last_start_closed: bool,
    /// The start of the last request that succeeded: input before it has been answered.
    answered_up_to: u64,
    /// Model failures recorded (`session.error` with `retry_status: retrying`) since the last
    /// successful request. A span closed because its brain vanished or lost a race is not a
    /// model failure and does not count: crashes must never use up a turn's retry budget.
    failed_in_a_row: u32,
    /// The last idle with `retries_exhausted`.
    exhausted_at: u64,
    /// The last idle with `budget_reached` (a limit paused the session).
    paused_at: u64,
    /// Since the session last went idle: model requests, tool calls, output tokens.
    turn_requests: u64,
    turn_tool_calls: u64,
    turn_output_tokens: u64,
    /// The last `session.status_running`.
    running_at: u64,
    /// When the turn in progress began: the time of its first `session.status_running` since
    /// the last idle (a retry's or a confirmation's later ones continue the same turn).
    turn_started: Option<OffsetDateTime>,
    /// The last `session.status_idle`'s stop reason kind and the tool_use ids it named.
    last_idle: Option<(String, Vec<String>)>,
    /// The newest input the model has not necessarily seen (user messages, results).
    last_input: u64,
    /// The newest `user.interrupt`.
    last_interrupt: u64,
    /// Tool_use events: id → (sequence, time, name).
    tool_uses: BTreeMap<String, (u64, OffsetDateTime)>,
    /// Confirmations: tool_use id → (allow?, deny message, time).
    confirmations: BTreeMap<String, (bool, Option<String>, OffsetDateTime)>,
}

fn scan(events: &[StoredEvent]) -> Scan {
    let mut s = Scan::default();
    for e in events {
        match &e.event.body {
            EventBody::SpanModelRequestStart(_) => {
                s.last_start = Some((e.seq, e.event.id.clone()));
                s.last_start_closed = false;
                s.turn_requests += 1;
            }
            EventBody::SpanModelRequestEnd(end) => {
                s.last_start_closed = true;
                s.turn_output_tokens += end.model_usage.output_tokens;
                if !end.is_error {
                    s.failed_in_a_row = 0;
                    if let Some((start, _)) = &s.last_start {
                        s.answered_up_to = *start;
                    }
                }
            }
            EventBody::SessionError(err)
                if err
                    .retry_status
                    .as_ref()
                    .is_some_and(|r| r.kind == "retrying") =>
            {
                s.failed_in_a_row += 1;
            }
            EventBody::SessionStatusRunning(_) => {
                s.running_at = e.seq;
                s.turn_started.get_or_insert(e.event.processed_at);
            }
            EventBody::SessionStatusIdle(i) => {
                if i.stop_reason.kind == "retries_exhausted" {
                    s.exhausted_at = e.seq;
                    s.failed_in_a_row = 0;
                }
                if i.stop_reason.kind == "budget_reached" {
                    s.paused_at = e.seq;
                }
                s.turn_requests = 0;
                s.turn_tool_calls = 0;
                s.turn_output_tokens = 0;
                s.turn_started = None;
                s.last_idle = Some((i.stop_reason.kind.clone(), i.stop_reason.event_ids.clone()));
            }
            EventBody::UserMessage(_)
            | EventBody::AgentToolResult(_)
            | EventBody::UserCustomToolResult(_)
            | EventBody::AgentMcpToolResult(_) => s.last_input = e.seq,
            EventBody::UserInterrupt(_) => s.last_interrupt = e.seq,
            EventBody::AgentToolUse(t) => {
                s.turn_tool_calls += 1;
                s.tool_uses
                    .insert(t.tool_use_id.clone(), (e.seq, e.event.processed_at));
            }
            EventBody::AgentCustomToolUse(_) | EventBody::AgentMcpToolUse(_) => {
                s.turn_tool_calls += 1
            }
            EventBody::UserToolConfirmation(c) => {
                s.confirmations.insert(
                    c.tool_use_id.clone(),
                    (
                        c.result == "allow",
                        c.deny_message.clone(),
                        e.event.processed_at,
                    ),
                );
            }
            _ => {}
        }
    }
    s
}

/// The two events that end a turn: the session's usage (with its list cost and budget, as the
/// Managed Agents API's `session.usage`), then the idle. `usage` is the session's total.
fn idle(state: &SessionState, stop: &str, ids: Vec<String>, usage: Usage) -> [Planned; 2] {
    [
        Planned::new(SessionUsage {
            usage,
            list_cost: state.cost_of(usage).map(Money::from_nano_usd),
            budget: state.limits.budget.clone(),
        }),
        Planned::new(SessionStatusIdle {
            stop_reason: StopReason {
                kind: stop.into(),
                event_ids: ids,
            },
        }),
    ]
}

/// Decides what a session needs next. `events` is the whole log, `state` its fold, `now` the
/// time (for the wall-time limit of a turn).
pub fn decide(
    state: &SessionState,
    events: &[StoredEvent],
    limits: Limits,
    now: OffsetDateTime,
) -> Decision {
    let Some(config) = &state.config else {
        return Decision::Wait;
    };
    if state.status == Status::Terminated {
        return Decision::Wait;
    }
    let s = scan(events);
    let open_span = match &s.last_start {
        Some((_, id)) if !s.last_start_closed => Some(id.clone()),
        _ => None,
    };
    let close_open_span = || open_span.clone().map(|id| failed_span(id.as_str()));

    // An interrupt stops a running turn at this step boundary: calls in flight get error
    // results (so the history stays valid) and the session goes idle.
    let in_turn = matches!(state.status, Status::Running | Status::Rescheduling);
    if in_turn && s.last_interrupt > s.running_at {
        let mut step: Vec<Planned> = close_open_span().into_iter().collect();
        for (id, t) in &state.pending_tools {
            if t.kind != ToolKind::Custom {
                step.push(Planned::error_for(
                    state,
                    id,
                    "The user interrupted the turn before this tool call finished.",
                ));
            }
        }
        step.extend(idle(state, "end_turn", vec![], state.usage));
        return Decision::Append(step);
    }

    // Denied calls get their error result now.
    let denied: Vec<Planned> = state
        .pending_tools
        .iter()
        .filter(|(_, t)| t.confirmation.as_deref() == Some("deny"))
        .map(|(id, _)| {
            let msg = s
                .confirmations
                .get(id)
                .and_then(|c| c.1.clone())
                .unwrap_or_else(|| "The user denied this tool call.".into());
            Planned::error_for(state, id, &msg)
        })
        .collect();
    if !denied.is_empty() {
        return Decision::Append(denied);
    }

    // Calls that wait for the user: park the session with requires_action, once.
    let awaiting: Vec<String> = state
        .pending_tools
        .iter()
        .filter(|(_, t)| t.awaiting_confirmation || t.kind == ToolKind::Custom)
        .map(|(id, _)| id.clone())
        .collect();
    if !awaiting.is_empty() {
        let already = state.status == Status::Idle
            && s.last_idle.as_ref().is_some_and(|(k, ids)| {
                // The response step names calls in the model's order; compare as sets.
                let mut named = ids.clone();
                named.sort();
                k == "requires_action" && named == awaiting
            });
        return if already {
            Decision::Wait
        } else {
            Decision::Append(idle(state, "requires_action", awaiting, state.usage).to_vec())
        };
    }

    // Calls the brain answers itself, from the log (`get_events`): answered now, each from
    // the events before its call, so whichever brain answers gives the same answer.
    let from_log: Vec<Planned> = state
        .pending_tools
        .iter()
        .filter(|(_, t)| {
            t.kind == ToolKind::Brain
                && !t.awaiting_confirmation
                && t.confirmation.as_deref() != Some("deny")
        })
        .map(|(id, t)| {
            let input = events
                .iter()
                .find(|e| e.seq == t.seq)
                .and_then(|e| match &e.event.body {
                    EventBody::AgentToolUse(u) => Some(u.input.clone()),
                    _ => None,
                })
                .unwrap_or(Value::Null);
            match super::log_query::answer(events, t.seq, &input) {
                Ok(text) => Planned::tool_result(&state.id, id, &text, false),
                Err(why) => Planned::tool_result(&state.id, id, &why, true),
            }
        })
        .collect();
    if !from_log.is_empty() {
        return Decision::Append(from_log);
    }

    // Sandbox calls still running: the hands wake the session when results land. A call the
    // user just allowed resumes the turn.
    if !state.pending_tools.is_empty() {
        return if state.status == Status::Running {
            Decision::Wait
        } else {
            Decision::Append(vec![Planned::new(SessionStatusRunning {})])
        };
    }

    // Input the model has not answered yet (or a request that never finished).
    // Input counts as answered once a request that started after it succeeded, once the turn
    // gave up on it (retries_exhausted), or once the user interrupted it.
    let boundary = s
        .answered_up_to
        .max(s.exhausted_at)
        .max(s.last_interrupt)
        .max(s.paused_at);
    let unanswered = s.last_input > boundary || open_span.is_some();
    if unanswered {
        if s.failed_in_a_row >= limits.max_model_attempts {
            let mut step: Vec<Planned> = close_open_span().into_iter().collect();
            step.push(Planned::new(SessionError {
                error: ErrorInfo {
                    kind: "retries_exhausted".into(),
                    message: format!(
                        "the model request failed {} times in a row; send a new message to try again",
                        s.failed_in_a_row
                    ),
                },
                retry_status: Some(RetryStatus {
                    kind: "exhausted".into(),
                    attempt: Some(s.failed_in_a_row),
                    retry_in_ms: None,
                }),
            }));
            step.extend(idle(state, "retries_exhausted", vec![], state.usage));
            return Decision::Append(step);
        }
        // A limit reached pauses the session before the next request (rule 11): the turn ends
        // with budget_reached and an event naming the limit; nothing is killed or lost.
        if let Some((limit, max, used)) = limit_reached(state, &s, now) {
            let mut step = Vec::new();
            if state.status != Status::Running {
                step.push(Planned::new(SessionStatusRunning {}));
            }
            step.extend(close_open_span());
            step.push(Planned::new(SessionLimitReached {
                limit: limit.into(),
                max,
                used,
            }));
            step.extend(idle(state, "budget_reached", vec![], state.usage));
            return Decision::Append(step);
        }
        // The tools of the agent's MCP servers come from their listings in the log: a turn
        // without them waits for the hands to list them (once per turn for a server that
        // failed; its tools are then left out, and the model is told why).
        if !config.agent.mcp_servers.is_empty() {
            if state.status != Status::Running {
                return Decision::Append(vec![Planned::new(SessionStatusRunning {})]);
            }
            if !mcp_listings_needed(state, events, s.running_at).is_empty() {
                return Decision::Wait;
            }
        }
        let request = context::build(config, events);
        let budget = config
            .agent
            .context_budget_tokens
            .unwrap_or(DEFAULT_CONTEXT_BUDGET) as usize;
        if limits.compact && context::estimate_tokens(&request) > budget {
            let newest_input = s.last_input.max(boundary);
            if let Some(up_to) = compaction_cut(events, newest_input) {
                let older: Vec<StoredEvent> =
                    events.iter().filter(|e| e.seq <= up_to).cloned().collect();
                let mut summarise = context::build(config, &older);
                summarise.tools.clear();
                summarise.system = Some(SUMMARISE.into());
                summarise.messages.push(super::provider::Message {
                    role: "user".into(),
                    content: vec![serde_json::json!({"type": "text", "text": SUMMARISE})],
                });
                return Decision::Compact {
                    up_to,
                    request: Box::new(summarise),
                };
            }
        }
        let mut preamble = Vec::new();
        if state.status != Status::Running {
            preamble.push(Planned::new(SessionStatusRunning {}));
        }
        preamble.extend(close_open_span());
        preamble.push(Planned::new(SpanModelRequestStart {
            model: Some(config.agent.model.clone()),
        }));
        return Decision::CallModel {
            preamble,
            request: Box::new(request),
        };
    }

    // Nothing left: a running turn that somehow lacks its end is closed.
    if state.status == Status::Running {
        return Decision::Append(idle(state, "end_turn", vec![], state.usage).to_vec());
    }
    Decision::Wait
}

/// The step that ends a turn herd gave up on (a wake that failed for good): the open span
/// closed, each pending sandbox or MCP call answered with an error naming why, idle with
/// `retries_exhausted`. `None` when the session is not in a turn.
pub fn give_up_step(
    state: &SessionState,
    events: &[StoredEvent],
    why: &str,
) -> Option<Vec<Planned>> {
    if !matches!(state.status, Status::Running | Status::Rescheduling) {
        return None;
    }
    let s = scan(events);
    let mut step = Vec::new();
    if let Some((_, id)) = &s.last_start
        && !s.last_start_closed
    {
        step.push(failed_span(id.as_str()));
    }
    for (id, t) in &state.pending_tools {
        if t.kind != ToolKind::Custom {
            step.push(Planned::error_for(
                state,
                id,
                &format!("herd gave up on this turn before the call finished: {why}"),
            ));
        }
    }
    step.extend(idle(state, "retries_exhausted", vec![], state.usage));
    Some(step)
}

/// The step that ends a turn the brains' sweep found stalled (running, with nothing in flight
/// after a re-dispatch): like [`give_up_step`], with a `session.error` (`turn_stalled`,
/// `exhausted`) saying why, for the client; the model sees the pending calls' error results.
pub fn stalled_step(
    state: &SessionState,
    events: &[StoredEvent],
    why: &str,
) -> Option<Vec<Planned>> {
    let mut step = give_up_step(state, events, why)?;
    let after_span = usize::from(matches!(
        step.first().map(|p| &p.body),
        Some(EventBody::SpanModelRequestEnd(_))
    ));
    step.insert(
        after_span,
        Planned::new(SessionError {
            error: ErrorInfo {
                kind: "turn_stalled".into(),
                message: why.into(),
            },
            retry_status: Some(RetryStatus {
                kind: "exhausted".into(),
                attempt: None,
                retry_in_ms: None,
            }),
        }),
    );
    Some(step)
}

/// The step for a session whose log is over the brain's `max_session_bytes` (N20), decided
/// from its skeleton (its small events; see `SessionLog::read_skeleton`): it is not replayed
/// into a context (a few hundred 1 MiB facts would otherwise crash every brain that tries,
/// one after the other). A turn in progress ends, and input that would start one gets a turn
/// that ends at once, each with a `session.error` (`session_too_large`) saying what to do.
/// `None` when there is nothing to answer (idle with no new input).
pub fn too_large_step(
    state: &SessionState,
    events: &[StoredEvent],
    max: u64,
    input_pending: bool,
) -> Option<Vec<Planned>> {
    let why = format!(
        "the session's log holds more than this deployment's limit of {} MiB per session; start a new session (herd does not replay it into a model context)",
        max >> 20
    );
    let error = Planned::new(SessionError {
        error: ErrorInfo {
            kind: "session_too_large".into(),
            message: why.clone(),
        },
        retry_status: Some(RetryStatus {
            kind: "exhausted".into(),
            attempt: None,
            retry_in_ms: None,
        }),
    });
    if matches!(state.status, Status::Running | Status::Rescheduling) {
        let mut step = give_up_step(state, events, &why)?;
        let after_span = usize::from(matches!(
            step.first().map(|p| &p.body),
            Some(EventBody::SpanModelRequestEnd(_))
        ));
        step.insert(after_span, error);
        return Some(step);
    }
    // Idle: only input that would start a turn is answered.
    if !input_pending || state.status == Status::Terminated {
        return None;
    }
    let mut step = vec![Planned::new(SessionStatusRunning {}), error];
    step.extend(idle(state, "retries_exhausted", vec![], state.usage));
    Some(step)
}

/// The first of the session's limits that its use has reached: its name, value and the use.
/// Per-turn counts run from the session's last idle; an unset per-turn request limit is
/// [`DEFAULT_MODEL_REQUESTS_PER_TURN`], so a tool loop always ends. The wall time of a turn
/// runs from its first `session.status_running` to `now`; the budget compares the list cost
/// of the session's tokens with `max_list_cost` (a budget herd cannot price is reached: it
/// fails closed).
fn limit_reached(
    state: &SessionState,
    s: &Scan,
    now: OffsetDateTime,
) -> Option<(&'static str, u64, u64)> {
    let l = &state.limits;
    let counted = [
        (
            "model_requests_per_turn",
            Some(
                l.model_requests_per_turn
                    .unwrap_or(DEFAULT_MODEL_REQUESTS_PER_TURN),
            ),
            s.turn_requests,
        ),
        ("model_requests", l.model_requests, state.model_requests),
        (
            "tool_calls_per_turn",
            l.tool_calls_per_turn,
            s.turn_tool_calls,
        ),
        ("tool_calls", l.tool_calls, state.tool_calls),
        (
            "output_tokens_per_turn",
            l.output_tokens_per_turn,
            s.turn_output_tokens,
        ),
        ("output_tokens", l.output_tokens, state.usage.output_tokens),
    ]
    .into_iter()
    .find_map(|(name, max, used)| max.filter(|m| used >= *m).map(|m| (name, m, used)));
    counted
        .or_else(|| wall_time_reached(l.wall_seconds_per_turn, s.turn_started, now))
        .or_else(|| budget_reached(state))
}

/// The wall-time limit of a turn: reached once `max` seconds have passed since `started`
/// (the turn's first `session.status_running`, read from the log). A turn that has not begun
/// has used no time. Pure: `now` is given.
pub fn wall_time_reached(
    max: Option<u64>,
    started: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<(&'static str, u64, u64)> {
    let (max, started) = (max?, started?);
    let used = (now - started).whole_seconds().max(0) as u64;
    (used >= max).then_some(("wall_seconds_per_turn", max, used))
}

/// The budget: reached when the list cost of the session's tokens is at or past
/// `max_list_cost` (exactly, in nano-dollars; reported in cents, rounded up).
fn budget_reached(state: &SessionState) -> Option<(&'static str, u64, u64)> {
    let budget = state.limits.budget.as_ref()?;
    let max = budget.max_cents();
    let spent = state.spent_nano_usd();
    let reached = spent.is_none_or(|n| n >= max as u128 * NANO_USD_PER_CENT);
    reached.then(|| ("max_list_cost", max, spent.map(cents_ceil).unwrap_or(0)))
}

/// The step that records a model response (step B), and the tool jobs it dispatches.
pub fn response_step(
    state: &SessionState,
    start_id: &EventId,
    response: &ModelResponse,
) -> Vec<Planned> {
    if state.config.is_none() {
        return Vec::new();
    }
    let offered = state.tools();
    let mut step = Vec::new();
    let mut text: Vec<ContentBlock> = Vec::new();
    let mut awaiting = Vec::new();
    let mut errors = Vec::new();
    let mut sandbox_calls = 0;
    let flush = |text: &mut Vec<ContentBlock>, step: &mut Vec<Planned>| {
        if !text.is_empty() {
            step.push(Planned::new(AgentMessage {
                content: std::mem::take(text),
            }));
        }
    };
    for block in &response.content {
        match block.kind() {
            "thinking" | "redacted_thinking" => {
                flush(&mut text, &mut step);
                step.push(Planned::new(AgentThinking {
                    content: vec![block.clone()],
                }));
            }
            "tool_use" => {
                flush(&mut text, &mut step);
                let o = block.as_object();
                let name = o
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let input = o.get("input").cloned().unwrap_or(Value::Null);
                let raw_id = o.get("id").and_then(Value::as_str).unwrap_or("");
                // Tool_use ids become subject tokens and event ids; replace an unsafe one.
                // Bounded so that the derived result id (`sevt_result_<hash>_<id>`) stays valid.
                let fits = raw_id.len() + crate::bus::jobs::RESULT_ID_OVERHEAD <= MAX_ID_LEN;
                let id = if fits && check_token("tool_use id", raw_id).is_ok() {
                    raw_id.to_string()
                } else {
                    format!("toolu_herd_{}", uuid::Uuid::now_v7().simple())
                };
                match offered.iter().find(|t| t.name == name) {
                    Some(t) if t.runner == Runner::Client => {
                        awaiting.push(id.clone());
                        step.push(Planned::new(AgentCustomToolUse {
                            tool_use_id: id,
                            name,
                            input,
                        }));
                    }
                    Some(t) => {
                        let ask = t.permission_policy == PermissionPolicy::AlwaysAsk;
                        if ask {
                            awaiting.push(id.clone());
                        } else {
                            sandbox_calls += 1;
                        }
                        let evaluated_permission = Some(if ask {
                            EvaluatedPermission::Ask
                        } else {
                            EvaluatedPermission::Allow
                        });
                        step.push(match &t.mcp_server {
                            Some(server) => Planned::new(AgentMcpToolUse {
                                tool_use_id: id,
                                mcp_server_name: server.clone(),
                                name,
                                input,
                                evaluated_permission,
                            }),
                            None => Planned::new(AgentToolUse {
                                tool_use_id: id,
                                name,
                                input,
                                evaluated_permission,
                            }),
                        });
                    }
                    None => {
                        errors.push(Planned::result(
                            &state.id,
                            &id,
                            &format!("There is no tool named {name:?} in this session."),
                        ));
                        step.push(Planned::new(AgentToolUse {
                            tool_use_id: id,
                            name,
                            input,
                            evaluated_permission: None,
                        }));
                    }
                }
            }
            _ => text.push(block.clone()),
        }
    }
    flush(&mut text, &mut step);
    step.extend(errors.iter().cloned());
    step.push(Planned::new(SpanModelRequestEnd {
        model_request_start_id: Some(start_id.to_string()),
        model_usage: response.usage,
        is_error: false,
    }));
    let mut total = state.usage;
    total += response.usage;
    if !awaiting.is_empty() {
        step.extend(idle(state, "requires_action", awaiting, total));
    } else if sandbox_calls == 0 && errors.is_empty() {
        step.extend(idle(state, "end_turn", vec![], total));
    }
    step
}

/// The `span.model_request_end` of a request that failed or never finished.
pub fn failed_span(start_id: &str) -> Planned {
    Planned::new(SpanModelRequestEnd {
        model_request_start_id: Some(start_id.to_string()),
        model_usage: Usage::default(),
        is_error: true,
    })
}

/// Failed model requests in a row at the end of the log (since the last success or the last
/// `retries_exhausted`).
pub fn failed_requests_in_a_row(events: &[StoredEvent]) -> u32 {
    scan(events).failed_in_a_row
}

/// The step that records a model request that ends the turn: a failure retrying cannot help
/// (bad request, authentication: `retry_status` `terminal`), or the last attempt of the retry
/// budget (`exhausted`, with its number). The turn ends with `retries_exhausted`.
pub fn final_failure_step(
    state: &SessionState,
    start_id: &EventId,
    kind: &str,
    message: &str,
    exhausted_attempt: Option<u32>,
) -> Vec<Planned> {
    let mut step = vec![
        failed_span(start_id.as_str()),
        Planned::new(SessionError {
            error: ErrorInfo {
                kind: kind.into(),
                message: message.into(),
            },
            retry_status: Some(RetryStatus {
                kind: if exhausted_attempt.is_some() {
                    "exhausted"
                } else {
                    "terminal"
                }
                .into(),
                attempt: exhausted_attempt,
                retry_in_ms: None,
            }),
        }),
    ];
    step.extend(idle(state, "retries_exhausted", vec![], state.usage));
    step
}

/// True when the log's last model request span is open and is not `mine`: another brain is
/// calling the model for this session right now.
pub fn another_request_open(events: &[StoredEvent], mine: &EventId) -> bool {
    let s = scan(events);
    matches!(&s.last_start, Some((_, id)) if !s.last_start_closed && id != mine)
}

/// The step that records a failed model request (a retry follows).
pub fn failure_step(
    start_id: &EventId,
    kind: &str,
    message: &str,
    attempt: u32,
    retry_in_ms: u64,
) -> Vec<Planned> {
    vec![
        failed_span(start_id.as_str()),
        Planned::new(SessionError {
            error: ErrorInfo {
                kind: kind.into(),
                message: message.into(),
            },
            retry_status: Some(RetryStatus {
                kind: "retrying".into(),
                attempt: Some(attempt),
                retry_in_ms: Some(retry_in_ms),
            }),
        }),
        Planned::new(SessionStatusRescheduled {
            reason: Some(kind.into()),
        }),
    ]
}

/// What to do after a model request, decided from its outcome and the retry budget.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterModel {
    /// Append this step (the answer, or the failure that ends the turn).
    Record(Vec<Planned>),
    /// The request failed for a passing reason and the budget allows another: record the
    /// failure with [`failure_step`] and its delay, wait, and decide again.
    Retry {
        /// This attempt's number (1 for the first failure in a row).
        attempt: u32,
        /// At least this long before the next request (the provider's `Retry-After`).
        retry_after: Option<std::time::Duration>,
        /// The error's type, for the `session.error` recording it.
        kind: &'static str,
        /// What happened.
        message: String,
    },
}

/// The model-failure policy: a success is recorded; a fatal failure ends the turn at once
/// (`terminal`); a passing failure is retried while `attempt` (failures in a row, this one
/// included) is under `max_attempts`, and the last attempt of the budget ends the turn
/// (`exhausted`). `state` is the session as of the request's start (for the usage total).
pub fn after_model(
    state: &SessionState,
    start_id: &EventId,
    outcome: &Result<ModelResponse, ModelError>,
    attempt: u32,
    max_attempts: u32,
) -> AfterModel {
    match outcome {
        Ok(response) => AfterModel::Record(response_step(state, start_id, response)),
        Err(err @ ModelError::Fatal { .. }) => AfterModel::Record(final_failure_step(
            state,
            start_id,
            err.kind(),
            &err.to_string(),
            None,
        )),
        Err(err @ ModelError::Retryable { retry_after, .. }) if attempt < max_attempts => {
            AfterModel::Retry {
                attempt,
                retry_after: *retry_after,
                kind: err.kind(),
                message: err.to_string(),
            }
        }
        Err(err) => AfterModel::Record(final_failure_step(
            state,
            start_id,
            err.kind(),
            &err.to_string(),
            Some(attempt),
        )),
    }
}

/// The delay before retry `attempt` (1-based): `base` doubled per attempt up to `max`,
/// scaled by `jitter` in [0.5, 1] (so brains retrying together spread out), and never less
/// than the provider's `Retry-After`.
pub fn retry_delay(
    base: std::time::Duration,
    max: std::time::Duration,
    attempt: u32,
    retry_after: Option<std::time::Duration>,
    jitter: f64,
) -> std::time::Duration {
    let exp = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(max);
    let jittered = exp.mul_f64(jitter.clamp(0.5, 1.0));
    match retry_after {
        Some(ra) => jittered.max(ra),
        None => jittered,
    }
}

/// Tool jobs the session's pending calls need: allowed sandbox calls without a result. The
/// worker publishes each one that is not already waiting in `HERD_TOOLS` (a job leaves the
/// queue only when a hand acknowledges it, after appending its result), so a job lost to a
/// crash between the append and the publish is published again, however long ago that was.
pub fn jobs_to_dispatch(state: &SessionState, events: &[StoredEvent]) -> Vec<ToolJob> {
    let s = scan(events);
    let image = state
        .config
        .as_ref()
        .and_then(|c| c.environment.image.clone());
    let mut jobs: Vec<ToolJob> = state
        .pending_tools
        .iter()
        .filter(|(_, t)| {
            matches!(t.kind, ToolKind::Sandbox | ToolKind::Mcp)
                && !t.awaiting_confirmation
                && t.confirmation.as_deref() != Some("deny")
        })
        .filter_map(|(id, t)| {
            let input =
                events
                    .iter()
                    .find(|e| e.seq == t.seq)
                    .and_then(|e| match &e.event.body {
                        EventBody::AgentToolUse(u) => Some(u.input.clone()),
                        EventBody::AgentMcpToolUse(u) => Some(u.input.clone()),
                        _ => None,
                    })?;
            Some(ToolJob {
                session_id: state.id.clone(),
                tool_use_id: id.clone(),
                name: t.name.clone(),
                input,
                tool_use_seq: t.seq,
                // MCP calls run outside any sandbox.
                image: (t.kind == ToolKind::Sandbox)
                    .then(|| image.clone())
                    .flatten(),
            })
        })
        .collect();
    jobs.extend(mcp_listings_needed(state, events, s.running_at));
    // The end of a turn that may have changed the workspace: save it (to the host holding
    // the sandbox, like the turn's calls).
    if let Some((request_id, idle_seq)) = crate::bus::workspace_jobs::needed(events) {
        jobs.push(crate::bus::workspace_jobs::job(
            &state.id, request_id, idle_seq, image,
        ));
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Given these events, decide.
    #[derive(Clone)]
    struct Given(Vec<StoredEvent>);

    impl Given {
        fn session(tools: Vec<ToolConfig>) -> Self {
            let mut agent = AgentConfig::new("claude-test");
            agent.tools = tools;
            Self(vec![]).and(SessionCreated::new(agent))
        }
        fn and(mut self, body: impl Into<EventBody>) -> Self {
            let seq = self.0.len() as u64 + 1;
            self.0.push(StoredEvent {
                session_id: SessionId::parse("s").unwrap(),
                seq,
                event: Event::new(body),
            });
            self
        }
        fn decide(&self) -> Decision {
            let state = SessionState::fold(SessionId::parse("s").unwrap(), &self.0);
            decide(
                &state,
                &self.0,
                Limits::default(),
                OffsetDateTime::now_utc(),
            )
        }
        fn appends(&self) -> Vec<String> {
            match self.decide() {
                Decision::Append(step) => step
                    .iter()
                    .map(|p| p.body.type_name().to_string())
                    .collect(),
                other => panic!("expected an append, got {other:?}"),
            }
        }
    }

    fn user(t: &str) -> UserMessage {
        UserMessage {
            content: vec![ContentBlock::text(t)],
        }
    }
    fn start() -> SpanModelRequestStart {
        SpanModelRequestStart { model: None }
    }
    fn end(is_error: bool) -> SpanModelRequestEnd {
        SpanModelRequestEnd {
            model_request_start_id: None,
            model_usage: Usage::default(),
            is_error,
        }
    }
    fn idle(kind: &str, ids: &[&str]) -> SessionStatusIdle {
        SessionStatusIdle {
            stop_reason: StopReason {
                kind: kind.into(),
                event_ids: ids.iter().map(|s| s.to_string()).collect(),
            },
        }
    }
    fn bash(policy: PermissionPolicy) -> ToolConfig {
        ToolConfig {
            name: "bash".into(),
            kind: "builtin".into(),
            description: None,
            input_schema: None,
            permission_policy: policy,
            mcp_server_name: None,
            default_config: None,
            configs: Vec::new(),
        }
    }
    fn call(id: &str, permission: EvaluatedPermission) -> AgentToolUse {
        AgentToolUse {
            tool_use_id: id.into(),
            name: "bash".into(),
            input: json!({}),
            evaluated_permission: Some(permission),
        }
    }
    fn preamble(d: Decision) -> Vec<String> {
        match d {
            Decision::CallModel { preamble, .. } => preamble
                .iter()
                .map(|p| p.body.type_name().to_string())
                .collect(),
            other => panic!("expected a model call, got {other:?}"),
        }
    }

    #[test]
    fn a_new_message_starts_a_turn_and_an_answered_one_waits() {
        let g = Given::session(vec![]).and(user("hi"));
        assert_eq!(
            preamble(g.decide()),
            ["session.status_running", "span.model_request_start"]
        );
        let g = g
            .and(SessionStatusRunning {})
            .and(start())
            .and(end(false))
            .and(idle("end_turn", &[]));
        assert_eq!(g.decide(), Decision::Wait);
    }

    #[test]
    fn an_open_span_from_a_dead_brain_is_closed_and_retried() {
        let g = Given::session(vec![])
            .and(user("hi"))
            .and(SessionStatusRunning {})
            .and(start());
        assert_eq!(
            preamble(g.decide()),
            ["span.model_request_end", "span.model_request_start"]
        );
    }

    fn retrying(attempt: u32) -> SessionError {
        SessionError {
            error: ErrorInfo {
                kind: "overloaded".into(),
                message: "529".into(),
            },
            retry_status: Some(RetryStatus {
                kind: "retrying".into(),
                attempt: Some(attempt),
                retry_in_ms: Some(10),
            }),
        }
    }

    #[test]
    fn spans_abandoned_by_crashed_or_racing_brains_never_use_the_retry_budget() {
        let mut g = Given::session(vec![])
            .and(user("hi"))
            .and(SessionStatusRunning {});
        for _ in 0..12 {
            g = g.and(start()).and(end(true));
            assert_eq!(preamble(g.decide()), ["span.model_request_start"]);
        }
    }

    #[test]
    fn a_request_opened_by_another_brain_is_recognised() {
        let g = Given::session(vec![])
            .and(user("hi"))
            .and(SessionStatusRunning {})
            .and(start());
        let theirs = g.0.last().unwrap().event.id.clone();
        assert!(!another_request_open(&g.0, &theirs));
        assert!(another_request_open(&g.0, &EventId::generate()));
        let closed = g.and(end(true));
        assert!(!another_request_open(&closed.0, &EventId::generate()));
    }

    #[test]
    fn failures_are_retried_until_the_budget_then_exhausted() {
        let mut g = Given::session(vec![])
            .and(user("hi"))
            .and(SessionStatusRunning {});
        for attempt in 1..=4 {
            g = g
                .and(start())
                .and(end(true))
                .and(retrying(attempt))
                .and(SessionStatusRescheduled { reason: None });
            assert_eq!(
                preamble(g.decide()),
                ["session.status_running", "span.model_request_start"]
            );
            g = g.and(SessionStatusRunning {});
        }
        g = g.and(start()).and(end(true)).and(retrying(5));
        assert_eq!(
            g.appends(),
            ["session.error", "session.usage", "session.status_idle"]
        );
        // After exhaustion, only new input starts again.
        let g = g.and(idle("retries_exhausted", &[]));
        assert_eq!(g.decide(), Decision::Wait);
        assert!(matches!(
            g.and(user("again")).decide(),
            Decision::CallModel { .. }
        ));
    }

    #[test]
    fn calls_awaiting_the_user_park_the_session_once() {
        let g = Given::session(vec![bash(PermissionPolicy::AlwaysAsk)])
            .and(user("go"))
            .and(SessionStatusRunning {})
            .and(start())
            .and(call("t1", EvaluatedPermission::Ask))
            .and(end(false));
        assert_eq!(g.appends(), ["session.usage", "session.status_idle"]);
        let g = g.and(idle("requires_action", &["t1"]));
        assert_eq!(g.decide(), Decision::Wait);
        // A denial becomes the call's error result, with the deterministic id.
        let denied = g.clone().and(UserToolConfirmation {
            tool_use_id: "t1".into(),
            result: "deny".into(),
            deny_message: None,
        });
        match denied.decide() {
            Decision::Append(step) => {
                assert_eq!(
                    step[0].id.as_ref().map(EventId::as_str),
                    Some(
                        result_event_id(&SessionId::parse("s").unwrap(), "t1")
                            .unwrap()
                            .as_str()
                    )
                );
                assert!(matches!(&step[0].body, EventBody::AgentToolResult(r) if r.is_error));
            }
            other => panic!("{other:?}"),
        }
        // An allowed call resumes the turn (and its job is dispatched).
        let allowed = g.and(UserToolConfirmation {
            tool_use_id: "t1".into(),
            result: "allow".into(),
            deny_message: None,
        });
        assert_eq!(allowed.appends(), ["session.status_running"]);
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &allowed.0);
        let jobs = jobs_to_dispatch(&state, &allowed.0);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].tool_use_id, "t1");
    }

    #[test]
    fn an_interrupt_ends_a_running_turn_and_closes_its_calls() {
        let g = Given::session(vec![bash(PermissionPolicy::AlwaysAllow)])
            .and(user("go"))
            .and(SessionStatusRunning {})
            .and(start())
            .and(call("t1", EvaluatedPermission::Allow))
            .and(end(false))
            .and(UserInterrupt {});
        match g.decide() {
            Decision::Append(step) => {
                let kinds: Vec<&str> = step.iter().map(|p| p.body.type_name()).collect();
                assert_eq!(
                    kinds,
                    ["agent.tool_result", "session.usage", "session.status_idle"]
                );
                assert_eq!(
                    step[0].id.as_ref().map(EventId::as_str),
                    Some(
                        result_event_id(&SessionId::parse("s").unwrap(), "t1")
                            .unwrap()
                            .as_str()
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        // An interrupt while idle does nothing.
        let idle_g = Given::session(vec![])
            .and(user("hi"))
            .and(SessionStatusRunning {})
            .and(start())
            .and(end(false))
            .and(idle("end_turn", &[]))
            .and(UserInterrupt {});
        assert_eq!(idle_g.decide(), Decision::Wait);
    }

    #[test]
    fn an_interrupt_during_a_retry_backoff_ends_the_turn() {
        let g = Given::session(vec![])
            .and(user("go"))
            .and(SessionStatusRunning {})
            .and(start())
            .and(end(true))
            .and(SessionStatusRescheduled { reason: None })
            .and(UserInterrupt {});
        assert_eq!(g.appends(), ["session.usage", "session.status_idle"]);
    }

    #[test]
    fn compaction_never_cuts_across_an_open_call() {
        let mut agent = AgentConfig::new("claude-test");
        agent.context_budget_tokens = Some(10);
        agent.tools = vec![ToolConfig {
            kind: ToolType::Custom,
            ..ToolConfig::builtin("lookup")
        }];
        let g = Given(vec![])
            .and(SessionCreated::new(agent))
            .and(user(&"long ".repeat(100)))
            .and(SessionStatusRunning {})
            .and(start())
            .and(AgentCustomToolUse {
                tool_use_id: "c1".into(),
                name: "lookup".into(),
                input: json!({}),
            })
            .and(end(false))
            .and(idle("requires_action", &["c1"]))
            .and(UserCustomToolResult {
                custom_tool_use_id: "c1".into(),
                content: vec![ContentBlock::text("x")],
                is_error: false,
            });
        // Over budget, but the only idle leaves a call open: no compaction, the model is asked.
        assert!(matches!(g.decide(), Decision::CallModel { .. }));
        // After a finished turn, compaction cuts there.
        let g = g
            .and(start())
            .and(end(false))
            .and(idle("end_turn", &[]))
            .and(user("more"));
        match g.decide() {
            Decision::Compact { up_to, .. } => assert_eq!(up_to, g.0.len() as u64 - 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_response_becomes_events_in_block_order() {
        let g = Given::session(vec![bash(PermissionPolicy::AlwaysAllow)]).and(user("go"));
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &g.0);
        let block = |v: serde_json::Value| {
            ContentBlock::from_object(v.as_object().unwrap().clone()).unwrap()
        };
        let response = ModelResponse {
            content: vec![
                block(json!({"type": "thinking", "thinking": "hm", "signature": "x"})),
                block(json!({"type": "text", "text": "Running it."})),
                block(
                    json!({"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "ls"}}),
                ),
                block(json!({"type": "tool_use", "id": "bad id!", "name": "nope", "input": {}})),
            ],
            stop_reason: "tool_use".into(),
            usage: Usage::default(),
        };
        let step = response_step(&state, &EventId::generate(), &response);
        let kinds: Vec<&str> = step.iter().map(|p| p.body.type_name()).collect();
        assert_eq!(
            kinds,
            [
                "agent.thinking",
                "agent.message",
                "agent.tool_use",
                "agent.tool_use",
                "agent.tool_result",
                "span.model_request_end"
            ]
        );
        // The unsafe id was replaced consistently in the call and its error result.
        let (EventBody::AgentToolUse(u), EventBody::AgentToolResult(r)) =
            (&step[3].body, &step[4].body)
        else {
            panic!()
        };
        assert_eq!(u.tool_use_id, r.tool_use_id);
        assert!(check_token("id", &u.tool_use_id).is_ok());
        assert!(r.is_error);
    }

    fn retryable(retry_after: Option<std::time::Duration>) -> ModelError {
        ModelError::Retryable {
            status: Some(529),
            retry_after,
            message: "overloaded".into(),
        }
    }

    fn stop_reason(step: &[Planned]) -> Option<String> {
        step.iter().find_map(|p| match &p.body {
            EventBody::SessionStatusIdle(i) => Some(i.stop_reason.kind.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_passing_model_failure_is_retried_until_the_budget_is_spent() {
        let g = Given::session(vec![]).and(user("hi"));
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &g.0);
        let start = EventId::generate();
        let wait = Some(std::time::Duration::from_secs(2));
        assert_eq!(
            after_model(&state, &start, &Err(retryable(wait)), 1, 3),
            AfterModel::Retry {
                attempt: 1,
                retry_after: wait,
                kind: "overloaded_error",
                message: retryable(wait).to_string(),
            }
        );
        let AfterModel::Record(last) = after_model(&state, &start, &Err(retryable(None)), 3, 3)
        else {
            panic!("the last attempt of the budget must end the turn");
        };
        assert_eq!(stop_reason(&last).as_deref(), Some("retries_exhausted"));
        assert!(last.iter().any(|p| matches!(&p.body,
            EventBody::SessionError(e) if e.retry_status.as_ref().is_some_and(|r| r.kind == "exhausted" && r.attempt == Some(3)))));
    }

    #[test]
    fn a_fatal_model_failure_ends_the_turn_at_once() {
        let g = Given::session(vec![]).and(user("hi"));
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &g.0);
        let fatal = ModelError::Fatal {
            status: Some(400),
            message: "bad request".into(),
        };
        let AfterModel::Record(step) = after_model(&state, &EventId::generate(), &Err(fatal), 1, 5)
        else {
            panic!("a fatal error is never retried");
        };
        assert_eq!(stop_reason(&step).as_deref(), Some("retries_exhausted"));
        assert!(step.iter().any(|p| matches!(&p.body,
            EventBody::SessionError(e) if e.retry_status.as_ref().is_some_and(|r| r.kind == "terminal"))));
    }

    #[test]
    fn retry_delays_grow_are_capped_jittered_and_honour_retry_after() {
        use std::time::Duration as D;
        let (base, max) = (D::from_millis(500), D::from_secs(30));
        assert_eq!(retry_delay(base, max, 1, None, 1.0), D::from_millis(500));
        assert_eq!(retry_delay(base, max, 3, None, 1.0), D::from_secs(2));
        assert_eq!(retry_delay(base, max, 3, None, 0.5), D::from_secs(1));
        assert_eq!(retry_delay(base, max, 20, None, 1.0), max);
        assert_eq!(
            retry_delay(base, max, 1, Some(D::from_secs(7)), 0.5),
            D::from_secs(7)
        );
    }

    fn limits(l: SessionLimits) -> SessionUpdated {
        SessionUpdated {
            title: None,
            metadata: None,
            limits: Some(l),
        }
    }

    fn round(g: Given, id: &str) -> Given {
        g.and(start())
            .and(AgentToolUse {
                tool_use_id: id.into(),
                name: "bash".into(),
                input: json!({}),
                evaluated_permission: Some(EvaluatedPermission::Allow),
            })
            .and(end(false))
            .and(AgentToolResult {
                tool_use_id: id.into(),
                content: vec![ContentBlock::text("ok")],
                is_error: false,
                output_ref: None,
            })
    }

    #[test]
    fn a_limit_pauses_the_turn_before_the_next_request_and_a_new_turn_or_a_raise_resumes() {
        let per_turn = SessionLimits {
            model_requests_per_turn: Some(2),
            model_requests: Some(3),
            ..Default::default()
        };
        let g = Given::session(vec![bash(PermissionPolicy::AlwaysAllow)])
            .and(limits(per_turn))
            .and(user("loop"))
            .and(SessionStatusRunning {});
        let g = round(round(g, "t1"), "t2");
        // Two requests this turn: paused, naming the limit.
        assert_eq!(
            g.appends(),
            [
                "session.limit_reached",
                "session.usage",
                "session.status_idle"
            ]
        );
        let Decision::Append(step) = g.decide() else {
            unreachable!()
        };
        assert!(matches!(&step[0].body,
            EventBody::SessionLimitReached(l) if l.limit == "model_requests_per_turn" && l.max == 2 && l.used == 2));
        let g = g
            .and(SessionLimitReached {
                limit: "model_requests_per_turn".into(),
                max: 2,
                used: 2,
            })
            .and(SessionUsage {
                usage: Usage::default(),
                list_cost: None,
                budget: None,
            })
            .and(idle("budget_reached", &[]));
        assert_eq!(g.decide(), Decision::Wait, "paused until something changes");
        // A new message is a new turn: per-turn counts start again.
        let g = g.and(user("go on"));
        assert!(matches!(g.decide(), Decision::CallModel { .. }));
        // One more request and the session's own limit (3) is reached.
        let g = round(g.and(SessionStatusRunning {}), "t3").and(user("more"));
        let Decision::Append(step) = g.decide() else {
            panic!("expected a pause")
        };
        assert!(matches!(&step[0].body,
            EventBody::SessionLimitReached(l) if l.limit == "model_requests" && l.used == 3));
        // Raised, the next message runs.
        let raised = g.and(limits(SessionLimits {
            model_requests: Some(10),
            ..Default::default()
        }));
        assert!(matches!(raised.decide(), Decision::CallModel { .. }));
    }

    #[test]
    fn tool_calls_and_output_tokens_are_limited_too() {
        let g = Given::session(vec![bash(PermissionPolicy::AlwaysAllow)])
            .and(limits(SessionLimits {
                tool_calls: Some(1),
                ..Default::default()
            }))
            .and(user("x"))
            .and(SessionStatusRunning {});
        let g = round(g, "t1");
        let Decision::Append(step) = g.decide() else {
            panic!("expected a pause")
        };
        assert!(
            matches!(&step[0].body, EventBody::SessionLimitReached(l) if l.limit == "tool_calls")
        );
        let g = Given::session(vec![])
            .and(limits(SessionLimits {
                output_tokens_per_turn: Some(5),
                ..Default::default()
            }))
            .and(user("x"))
            .and(SessionStatusRunning {})
            .and(start())
            .and(SpanModelRequestEnd {
                model_request_start_id: None,
                model_usage: Usage {
                    output_tokens: 9,
                    ..Default::default()
                },
                is_error: true,
            });
        let Decision::Append(step) = g.decide() else {
            panic!("expected a pause")
        };
        assert!(matches!(&step[0].body,
            EventBody::SessionLimitReached(l) if l.limit == "output_tokens_per_turn" && l.used == 9));
    }

    fn budgeted(cents: u64) -> SessionLimits {
        SessionLimits {
            budget: Some(Budget {
                list_prices: Some(ListPrices::new("1000", "10000", "0", "0")),
                ..Budget::usd_cents(cents)
            }),
            ..Default::default()
        }
    }

    /// One model round of 25 input and 10 output tokens: 12.5 cents at the test's prices.
    fn priced_round(g: Given, id: &str) -> Given {
        g.and(start())
            .and(AgentToolUse {
                tool_use_id: id.into(),
                name: "bash".into(),
                input: json!({}),
                evaluated_permission: Some(EvaluatedPermission::Allow),
            })
            .and(SpanModelRequestEnd {
                model_request_start_id: None,
                model_usage: Usage {
                    input_tokens: 25,
                    output_tokens: 10,
                    ..Default::default()
                },
                is_error: false,
            })
            .and(AgentToolResult {
                tool_use_id: id.into(),
                content: vec![ContentBlock::text("ok")],
                is_error: false,
                output_ref: None,
            })
    }

    #[test]
    fn the_budget_is_checked_before_each_request_and_a_raise_resumes() {
        let g = Given::session(vec![bash(PermissionPolicy::AlwaysAllow)])
            .and(limits(budgeted(30)))
            .and(user("spend"))
            .and(SessionStatusRunning {});
        // 25 cents spent: under 30, the next request goes out.
        let g = priced_round(priced_round(g, "t1"), "t2");
        assert!(matches!(g.decide(), Decision::CallModel { .. }));
        // 37.5 cents: at the budget, the turn pauses before the request.
        let g = priced_round(g, "t3");
        let Decision::Append(step) = g.decide() else {
            panic!("expected a pause")
        };
        assert!(matches!(&step[0].body,
            EventBody::SessionLimitReached(l) if l.limit == "max_list_cost" && l.max == 30 && l.used == 38));
        // session.usage carries the list cost and echoes the budget.
        assert!(matches!(&step[1].body,
            EventBody::SessionUsage(u) if u.list_cost == Some(Money::usd_cents(38))
                && u.budget.as_ref().is_some_and(|b| b.max_cents() == 30)));
        assert_eq!(stop_reason(&step).as_deref(), Some("budget_reached"));
        let g = g
            .and(SessionLimitReached {
                limit: "max_list_cost".into(),
                max: 30,
                used: 38,
            })
            .and(idle("budget_reached", &[]));
        assert_eq!(g.decide(), Decision::Wait);
        // A message alone pauses again; raised, the next message runs.
        let again = g.clone().and(user("more"));
        assert!(matches!(again.decide(), Decision::Append(s)
            if matches!(&s[1].body, EventBody::SessionLimitReached(l) if l.limit == "max_list_cost")));
        let raised = g.and(limits(budgeted(100))).and(user("more"));
        assert!(matches!(raised.decide(), Decision::CallModel { .. }));
        // Removed: nothing stops it.
        let removed = again.and(limits(SessionLimits::default()));
        assert!(matches!(removed.decide(), Decision::CallModel { .. }));
    }

    #[test]
    fn a_budget_herd_cannot_price_fails_closed() {
        let g = Given::session(vec![])
            .and(limits(SessionLimits {
                budget: Some(Budget::usd_cents(1_000)),
                ..Default::default()
            }))
            .and(user("hi"));
        let Decision::Append(step) = g.decide() else {
            panic!("expected a pause")
        };
        assert!(matches!(&step[1].body,
            EventBody::SessionLimitReached(l) if l.limit == "max_list_cost" && l.used == 0));
    }

    #[test]
    fn wall_time_counts_from_the_turns_first_running_event() {
        use time::Duration as D;
        let t0 = OffsetDateTime::now_utc();
        assert_eq!(
            wall_time_reached(Some(60), Some(t0), t0 + D::seconds(59)),
            None
        );
        assert_eq!(
            wall_time_reached(Some(60), Some(t0), t0 + D::seconds(61)),
            Some(("wall_seconds_per_turn", 60, 61))
        );
        assert_eq!(wall_time_reached(Some(60), None, t0 + D::hours(2)), None);
        assert_eq!(wall_time_reached(None, Some(t0), t0 + D::hours(2)), None);

        let mut g = Given::session(vec![bash(PermissionPolicy::AlwaysAllow)])
            .and(limits(SessionLimits {
                wall_seconds_per_turn: Some(60),
                ..Default::default()
            }))
            .and(user("work"))
            .and(SessionStatusRunning {});
        let began = g.0.len() - 1;
        g.0[began].event.processed_at = t0 - D::seconds(100);
        // A retry's later running event continues the same turn: it does not restart the clock.
        let g = round(g, "t1").and(SessionStatusRunning {});
        let at = |now| {
            let state = SessionState::fold(SessionId::parse("s").unwrap(), &g.0);
            decide(&state, &g.0, Limits::default(), now)
        };
        assert!(matches!(
            at(t0 - D::seconds(50)),
            Decision::CallModel { .. }
        ));
        let Decision::Append(step) = at(t0) else {
            panic!("expected a pause")
        };
        assert!(matches!(&step[0].body,
            EventBody::SessionLimitReached(l) if l.limit == "wall_seconds_per_turn" && l.max == 60 && l.used == 100));
        // A new turn starts the clock again.
        let g2 = g.clone().and(idle("budget_reached", &[])).and(user("next"));
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &g2.0);
        assert!(matches!(
            decide(&state, &g2.0, Limits::default(), t0),
            Decision::CallModel { .. }
        ));
    }

    #[test]
    fn a_stalled_turn_ends_with_an_error_the_client_and_the_model_see() {
        let g = Given::session(vec![bash(PermissionPolicy::AlwaysAllow)])
            .and(user("go"))
            .and(SessionStatusRunning {})
            .and(start())
            .and(call("t1", EvaluatedPermission::Allow))
            .and(end(false));
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &g.0);
        let step = stalled_step(&state, &g.0, "its tool job was dead-lettered").unwrap();
        let kinds: Vec<&str> = step.iter().map(|p| p.body.type_name()).collect();
        assert_eq!(
            kinds,
            [
                "session.error",
                "agent.tool_result",
                "session.usage",
                "session.status_idle"
            ]
        );
        assert!(matches!(&step[0].body, EventBody::SessionError(e)
            if e.error.kind == "turn_stalled" && e.retry_status.as_ref().is_some_and(|r| r.kind == "exhausted")));
        assert!(matches!(&step[1].body, EventBody::AgentToolResult(r)
            if r.is_error && content_text(&r.content).contains("dead-lettered")));
        assert_eq!(stop_reason(&step).as_deref(), Some("retries_exhausted"));
        // An idle session has no turn to end.
        let idle_g = g.and(idle("end_turn", &[]));
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &idle_g.0);
        assert_eq!(stalled_step(&state, &idle_g.0, "x"), None);
    }
}
