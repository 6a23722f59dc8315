//! A session's current state: a pure fold of its events.
//!
//! `get_session(id)` is this fold over the log; nothing here does I/O, so the brain, the CLI and
//! tests all compute the same state from the same events, and every rule is unit-tested
//! without NATS.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::event::{
    EvaluatedPermission, EventBody, EventId, McpToolsListed, Money, PriceTable, Rates, Record,
    SessionCreated, SessionId, SessionLimits, StopReason, StoredEvent, Usage,
    tools::{self, Offered},
};

/// What a session is doing, as in the Managed Agents API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for input (new, or after a turn).
    Idle,
    /// A turn is in progress.
    Running,
    /// A retryable error; the turn resumes after a delay.
    Rescheduling,
    /// Ended for good.
    Terminated,
}

/// Who answers a pending tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// A built-in tool run by the hands (in the session's sandbox, or outside it).
    Sandbox,
    /// A built-in tool the brain answers from the log (`get_events`).
    Brain,
    /// A custom tool, answered by the client with `user.custom_tool_result`.
    Custom,
    /// A tool of an MCP server.
    Mcp,
}

/// A tool call that has no result yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingTool {
    /// Who answers it.
    pub kind: ToolKind,
    /// The tool's name.
    pub name: String,
    /// The stream sequence of the call.
    pub seq: u64,
    /// True while it waits for a `user.tool_confirmation`.
    pub awaiting_confirmation: bool,
    /// The user's answer, once given: `allow` or `deny`.
    pub confirmation: Option<String>,
}

/// The state of a session after some prefix of its log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionState {
    /// The session.
    pub id: SessionId,
    /// Its configuration; `None` if the log has events but no `session.created` (facts sent to
    /// a session that was never created).
    pub config: Option<SessionCreated>,
    /// What it is doing.
    pub status: Status,
    /// Why it last went idle.
    pub stop_reason: Option<StopReason>,
    /// Why it was terminated.
    pub terminated_reason: Option<String>,
    /// Its title (from `session.created`, then `session.updated`).
    pub title: Option<String>,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// The stream sequence of its last event (0 before any).
    pub last_seq: u64,
    /// How many events it holds (invalid records included).
    pub event_count: u64,
    /// Stored messages that were not valid events.
    pub invalid_records: u64,
    /// Tool calls without a result, by tool_use id.
    pub pending_tools: BTreeMap<String, PendingTool>,
    /// Tokens used: the sum of every `span.model_request_end`.
    pub usage: Usage,
    /// The last `session.error`'s message.
    pub last_error: Option<String>,
    /// Its limits: from `session.created`, replaced by the latest `session.updated` that
    /// sets them.
    pub limits: SessionLimits,
    /// Model requests made (`span.model_request_start` events).
    pub model_requests: u64,
    /// Tool calls the model made (built-in, custom and MCP).
    pub tool_calls: u64,
    /// What `usage` costs at the model's list price (cents, rounded up): at the prices its
    /// budget records, else at herd's built-in price of its model; `None` when neither is known.
    pub list_cost: Option<Money>,
    /// Whether its context has been compacted (which offers the model `get_events`).
    pub compacted: bool,
    /// The latest listing of each MCP server (see [`crate::event::tools::latest_listings`]).
    pub mcp_listings: Vec<McpToolsListed>,
    /// When its newest event was written (`processed_at`), for "last activity".
    #[serde(skip)]
    pub last_event_at: Option<time::OffsetDateTime>,
    /// The prices `list_cost` is counted at.
    #[serde(skip)]
    rates: Option<Rates>,
    /// Events folded so far, by type and id: a repeated event (an append that landed twice,
    /// after the duplicate window) is one event, and its copy changes nothing. The type is part
    /// of the key, so an event of another type planted under a real event's id never hides it.
    #[serde(skip)]
    seen: HashSet<(String, EventId)>,
}

impl SessionState {
    /// The state of a session with no events.
    pub fn new(id: SessionId) -> Self {
        Self {
            id,
            config: None,
            status: Status::Idle,
            stop_reason: None,
            terminated_reason: None,
            title: None,
            metadata: BTreeMap::new(),
            last_seq: 0,
            event_count: 0,
            invalid_records: 0,
            pending_tools: BTreeMap::new(),
            usage: Usage::default(),
            last_error: None,
            limits: SessionLimits::default(),
            model_requests: 0,
            tool_calls: 0,
            list_cost: None,
            compacted: false,
            mcp_listings: Vec::new(),
            last_event_at: None,
            rates: None,
            seen: HashSet::new(),
        }
    }

    /// Folds a list of events into a state.
    pub fn fold<'a>(id: SessionId, events: impl IntoIterator<Item = &'a StoredEvent>) -> Self {
        let mut s = Self::new(id);
        for e in events {
            s.apply(e);
        }
        s
    }

    /// Tool calls waiting for the user's confirmation, by tool_use id.
    pub fn pending_confirmations(&self) -> impl Iterator<Item = (&String, &PendingTool)> {
        self.pending_tools
            .iter()
            .filter(|(_, t)| t.awaiting_confirmation)
    }

    /// Applies one record; an invalid one only counts. True when it was a new valid event
    /// (not an invalid record, not a copy of an event already folded).
    pub fn apply_record(&mut self, record: &Record) -> bool {
        match record {
            Ok(e) => self.apply(e),
            Err(bad) => {
                self.invalid_records += 1;
                self.event_count += 1;
                self.last_seq = self.last_seq.max(bad.seq);
                false
            }
        }
    }

    /// Applies one event; true when it was new. A copy of an event already folded (same id)
    /// moves only the last sequence, which conditional appends are checked against.
    pub fn apply(&mut self, e: &StoredEvent) -> bool {
        self.event_count += 1;
        self.last_seq = self.last_seq.max(e.seq);
        self.last_event_at = self.last_event_at.max(Some(e.event.processed_at));
        if !self
            .seen
            .insert((e.event.type_name().to_string(), e.event.id.clone()))
        {
            return false;
        }
        let pending = |kind, name: &str, permission: Option<EvaluatedPermission>| PendingTool {
            kind,
            name: name.to_string(),
            seq: e.seq,
            awaiting_confirmation: permission == Some(EvaluatedPermission::Ask),
            confirmation: None,
        };
        match &e.event.body {
            // The first session.created is the configuration for good; a later one (which
            // herd never appends) changes nothing, and `herd check` reports it.
            EventBody::SessionCreated(c) if self.config.is_none() => {
                self.title = c.title.clone();
                self.metadata = c.metadata.clone();
                self.limits = c.limits.clone();
                self.config = Some(c.clone());
                self.reprice();
            }
            EventBody::SpanModelRequestStart(_) => self.model_requests += 1,
            EventBody::SessionUpdated(u) => {
                if let Some(t) = &u.title {
                    self.title = Some(t.clone());
                }
                if let Some(m) = &u.metadata {
                    self.metadata = m.clone();
                }
                if let Some(l) = &u.limits {
                    self.limits = l.clone();
                    self.reprice();
                }
            }
            EventBody::SessionStatusRunning(_) => self.set_status(Status::Running, None),
            EventBody::SessionStatusIdle(i) => {
                self.set_status(Status::Idle, Some(i.stop_reason.clone()))
            }
            EventBody::SessionStatusRescheduled(_) => self.set_status(Status::Rescheduling, None),
            EventBody::SessionStatusTerminated(t) => {
                self.status = Status::Terminated;
                self.terminated_reason = Some(t.reason.clone());
            }
            EventBody::SessionError(err) => self.last_error = Some(err.error.message.clone()),
            EventBody::SpanModelRequestEnd(end) => {
                self.usage += end.model_usage;
                self.list_cost = self.cost_of(self.usage).map(Money::from_nano_usd);
            }
            EventBody::AgentToolUse(t) => {
                self.tool_calls += 1;
                let kind = self.kind_of_call(&t.name);
                self.pending_tools.insert(
                    t.tool_use_id.clone(),
                    pending(kind, &t.name, t.evaluated_permission),
                );
            }
            EventBody::AgentMcpToolUse(t) => {
                self.tool_calls += 1;
                self.pending_tools.insert(
                    t.tool_use_id.clone(),
                    pending(ToolKind::Mcp, &t.name, t.evaluated_permission),
                );
            }
            EventBody::AgentCustomToolUse(t) => {
                self.tool_calls += 1;
                self.pending_tools.insert(
                    t.tool_use_id.clone(),
                    pending(ToolKind::Custom, &t.name, None),
                );
            }
            EventBody::UserToolConfirmation(c) => {
                if let Some(t) = self.pending_tools.get_mut(&c.tool_use_id) {
                    if t.awaiting_confirmation {
                        t.awaiting_confirmation = false;
                        t.confirmation = Some(c.result.clone());
                    }
                }
            }
            EventBody::AgentToolResult(r) => {
                self.pending_tools.remove(&r.tool_use_id);
            }
            EventBody::AgentMcpToolResult(r) => {
                self.pending_tools.remove(&r.mcp_tool_use_id);
            }
            EventBody::UserCustomToolResult(r) => {
                self.pending_tools.remove(&r.custom_tool_use_id);
            }
            EventBody::AgentThreadContextCompacted(_) => self.compacted = true,
            EventBody::McpToolsListed(l) => {
                let mut all: Vec<&McpToolsListed> = self.mcp_listings.iter().collect();
                all.push(l);
                self.mcp_listings = tools::latest_listings(all).into_iter().cloned().collect();
            }
            _ => {}
        }
        true
    }

    /// The tools the session offers its model now (the one catalogue, resolved from the log).
    pub fn tools(&self) -> Vec<Offered> {
        let Some(config) = &self.config else {
            return Vec::new();
        };
        let listings: Vec<&McpToolsListed> = self.mcp_listings.iter().collect();
        tools::offered(config, self.compacted, &listings)
    }

    /// Who runs a call of the tool `name` the model made as an `agent.tool_use`.
    /// Who runs a call of the tool `name` the model made as an `agent.tool_use`.
    fn kind_of_call(&self, name: &str) -> ToolKind {
        let brain = self
            .config
            .as_ref()
            .is_some_and(|c| tools::brain_answers(c, self.compacted, name));
        if brain {
            ToolKind::Brain
        } else {
            ToolKind::Sandbox
        }
    }

    /// What `usage` costs at the session's list prices, in nano-dollars; `None` when herd
    /// knows no price for it.
    pub fn cost_of(&self, usage: Usage) -> Option<u128> {
        self.rates.map(|r| r.cost(&usage))
    }

    /// What the session has spent so far at list prices, in nano-dollars.
    pub fn spent_nano_usd(&self) -> Option<u128> {
        self.cost_of(self.usage)
    }

    /// The prices after the configuration or the budget changed: the budget's recorded
    /// prices, else the built-in price of the model.
    fn reprice(&mut self) {
        self.rates = match self.limits.budget.as_ref().and_then(|b| b.rates()) {
            Some(r) => Some(r),
            None => self.config.as_ref().and_then(|c| {
                PriceTable::default()
                    .lookup(&c.agent.model)
                    .and_then(|p| p.rates().ok())
            }),
        };
        self.list_cost = self.spent_nano_usd().map(Money::from_nano_usd);
    }

    /// A terminated session stays terminated; later status events do not revive it.
    fn set_status(&mut self, status: Status, stop_reason: Option<StopReason>) {
        if self.status != Status::Terminated {
            self.status = status;
            self.stop_reason = stop_reason;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    struct Given {
        seq: u64,
        events: Vec<StoredEvent>,
    }

    impl Given {
        fn new() -> Self {
            Self {
                seq: 0,
                events: Vec::new(),
            }
        }
        fn then(mut self, body: impl Into<EventBody>) -> Self {
            self.seq += 1;
            self.events.push(StoredEvent {
                session_id: SessionId::parse("s").unwrap(),
                seq: self.seq,
                event: Event::new(body),
            });
            self
        }
        fn state(&self) -> SessionState {
            SessionState::fold(SessionId::parse("s").unwrap(), &self.events)
        }
    }

    fn created() -> SessionCreated {
        SessionCreated {
            title: Some("t".into()),
            ..SessionCreated::new(AgentConfig::new("m"))
        }
    }

    fn tool_use(id: &str, permission: Option<EvaluatedPermission>) -> AgentToolUse {
        AgentToolUse {
            tool_use_id: id.into(),
            name: "bash".into(),
            input: serde_json::json!({"command": "true"}),
            evaluated_permission: permission,
        }
    }

    #[test]
    fn a_new_session_is_idle_with_its_config() {
        let s = Given::new().then(created()).state();
        assert_eq!(s.status, Status::Idle);
        assert_eq!(s.title.as_deref(), Some("t"));
        assert_eq!(s.config.unwrap().agent.model, "m");
        assert_eq!((s.last_seq, s.event_count), (1, 1));
    }

    #[test]
    fn status_follows_running_idle_and_terminated_is_final() {
        let g = Given::new().then(created()).then(SessionStatusRunning {});
        assert_eq!(g.state().status, Status::Running);
        let g = g.then(SessionStatusIdle {
            stop_reason: StopReason {
                kind: "end_turn".into(),
                event_ids: vec![],
            },
        });
        let s = g.state();
        assert_eq!(s.status, Status::Idle);
        assert_eq!(s.stop_reason.unwrap().kind, "end_turn");
        let s = g
            .then(SessionStatusTerminated {
                reason: "done".into(),
            })
            .then(SessionStatusRunning {})
            .state();
        assert_eq!(s.status, Status::Terminated);
        assert_eq!(s.terminated_reason.as_deref(), Some("done"));
    }

    #[test]
    fn tool_calls_are_pending_until_their_result() {
        let g = Given::new()
            .then(created())
            .then(tool_use("t1", Some(EvaluatedPermission::Allow)))
            .then(tool_use("t2", Some(EvaluatedPermission::Ask)))
            .then(AgentCustomToolUse {
                tool_use_id: "c1".into(),
                name: "lookup".into(),
                input: serde_json::json!({}),
            });
        let s = g.state();
        assert_eq!(s.pending_tools.len(), 3);
        assert_eq!(
            s.pending_confirmations()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            vec!["t2"]
        );
        assert_eq!(s.pending_tools["c1"].kind, ToolKind::Custom);
        let s = g
            .then(UserToolConfirmation {
                tool_use_id: "t2".into(),
                result: "deny".into(),
                deny_message: None,
            })
            .then(AgentToolResult {
                tool_use_id: "t1".into(),
                content: vec![ContentBlock::text("ok")],
                is_error: false,
                output_ref: None,
            })
            .then(UserCustomToolResult {
                custom_tool_use_id: "c1".into(),
                content: vec![],
                is_error: false,
            })
            .state();
        assert_eq!(s.pending_tools.len(), 1);
        let t2 = &s.pending_tools["t2"];
        assert!(!t2.awaiting_confirmation);
        assert_eq!(t2.confirmation.as_deref(), Some("deny"));
    }

    /// A model request's end with these input and output tokens.
    fn end(input_tokens: u64, output_tokens: u64) -> SpanModelRequestEnd {
        SpanModelRequestEnd {
            model_request_start_id: None,
            model_usage: Usage {
                input_tokens,
                output_tokens,
                ..Default::default()
            },
            is_error: false,
        }
    }

    #[test]
    fn usage_sums_model_requests() {
        let s = Given::new()
            .then(created())
            .then(end(10, 2))
            .then(end(5, 1))
            .state();
        assert_eq!((s.usage.input_tokens, s.usage.output_tokens), (15, 3));
    }

    #[test]
    fn the_list_cost_is_counted_at_the_budgets_prices_else_the_models_built_in_one() {
        // A model herd has no price for, and no budget: no list cost.
        let s = Given::new().then(created()).then(end(1_000_000, 0)).state();
        assert_eq!(s.list_cost, None);
        // A built-in model: $3 per million input tokens.
        let mut sonnet = created();
        sonnet.agent.model = "claude-sonnet-4-5".into();
        let g = Given::new().then(sonnet).then(end(1_000_000, 0));
        assert_eq!(g.state().list_cost, Some(Money::usd_cents(300)));
        assert_eq!(g.state().spent_nano_usd(), Some(3_000_000_000));
        // A budget's recorded prices win over the built-in ones, from the update on.
        let dear = SessionLimits {
            budget: Some(Budget {
                list_prices: Some(ListPrices::new("10", "0", "0", "0")),
                ..Budget::usd_cents(5_000)
            }),
            ..Default::default()
        };
        let s = g
            .then(SessionUpdated {
                title: None,
                metadata: None,
                limits: Some(dear),
            })
            .then(end(1, 0))
            .state();
        // 1,000,001 tokens at $10 per million: $10.00001, rounded up to the cent.
        assert_eq!(s.list_cost, Some(Money::usd_cents(1_001)));
    }

    #[test]
    fn a_repeated_event_id_is_one_event() {
        let mut s = Given::new().then(created()).state();
        let end = StoredEvent {
            session_id: SessionId::parse("s").unwrap(),
            seq: 5,
            event: Event::new(SpanModelRequestEnd {
                model_request_start_id: None,
                model_usage: Usage {
                    input_tokens: 7,
                    ..Default::default()
                },
                is_error: false,
            }),
        };
        assert!(s.apply(&end));
        let copy = StoredEvent { seq: 9, ..end };
        assert!(!s.apply(&copy), "the copy is not new");
        assert_eq!(s.usage.input_tokens, 7, "the copy changes nothing");
        assert_eq!(
            s.last_seq, 9,
            "but appends are checked against its sequence"
        );
    }

    #[test]
    fn unknown_events_and_invalid_records_do_not_break_the_fold() {
        let mut s = Given::new().then(created()).state();
        s.apply_record(&Err(InvalidRecord {
            session_id: SessionId::parse("s").unwrap(),
            seq: 7,
            subject: "herd.session.s.user.message".into(),
            error: "bad".into(),
        }));
        let unknown = Event::decode(br#"{"id":"x","type":"future.kind","a":1}"#).unwrap();
        s.apply(&StoredEvent {
            session_id: SessionId::parse("s").unwrap(),
            seq: 8,
            event: unknown,
        });
        assert_eq!((s.invalid_records, s.event_count, s.last_seq), (1, 3, 8));
        assert_eq!(s.status, Status::Idle);
    }
}
