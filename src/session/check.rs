//! The log checker: verifies a session's invariants from its events alone.
//!
//! `herd check` is the fsck of a deployment and the oracle of the crash tests: whatever
//! crashed, the log must still read as a history that herd could have written. This module is
//! pure — records in, a report out — so every rule is unit-tested on hand-built logs; reading
//! the stream is in `read.rs`.
//!
//! The rules:
//! - **Valid and created:** every stored message decodes to an event, and the first one is
//!   `session.created`.
//! - **Unique ids:** no event id appears twice (a retry that slipped past deduplication).
//! - **Whole steps:** the brain writes a model response as one atomic step — its outputs, any
//!   error results for unknown tools, `span.model_request_end`, and (when the turn ends)
//!   `session.usage` + `session.status_idle`; a failed request as `span.model_request_end`,
//!   `session.error` and `session.status_rescheduled`. A step cut apart, a span ended that never
//!   started, or model output outside a span, is a violation.
//! - **One answer per call:** every `agent.tool_use` (and custom and MCP call) is answered by
//!   exactly one result, after it; a result for no call is a violation; a call may still be
//!   pending only while the session is running or waits on it by name.
//! - **Legal statuses:** idle → running → idle | rescheduled → running …; terminated is final.
//! - **Settled** (only when asked, e.g. after a test's load has stopped): every session is idle,
//!   waiting on named input (`requires_action` with the ids of the calls it waits on), or
//!   terminated with a reason — none is still running.

use std::collections::HashMap;

use serde::Serialize;

use super::state::{SessionState, Status};
use crate::event::{EventBody, Record, SessionId, StoredEvent};

/// Which rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A stored message that is not a valid event.
    InvalidRecord,
    /// The log does not begin with `session.created`.
    NotCreatedFirst,
    /// An event id (or a tool_use id) appears twice.
    DuplicateId,
    /// A `session.created` after the first: ignored by every reader.
    SecondCreation,
    /// A brain step is not whole, or a span is unbalanced.
    BrokenStep,
    /// A tool call has no result, and nothing waits for one.
    UnansweredCall,
    /// A tool call has more than one result.
    DuplicateResult,
    /// A result answers a call that is not before it in the log.
    OrphanResult,
    /// A status change that herd never makes.
    IllegalStatus,
    /// The session is still running where a settled log was required.
    NotSettled,
    /// A fork's copied events are not its parent's (see `session::fork`).
    ForkMismatch,
}

impl Rule {
    /// A short human name.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::InvalidRecord => "invalid record",
            Rule::NotCreatedFirst => "not created first",
            Rule::DuplicateId => "duplicate id",
            Rule::SecondCreation => "second session.created",
            Rule::BrokenStep => "broken step",
            Rule::UnansweredCall => "unanswered call",
            Rule::DuplicateResult => "duplicate result",
            Rule::OrphanResult => "orphan result",
            Rule::IllegalStatus => "illegal status",
            Rule::NotSettled => "not settled",
            Rule::ForkMismatch => "fork not its parent's prefix",
        }
    }
}

/// One broken invariant, at the stream sequence where it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Stream sequence of the offending event (the last event's for end-of-log findings).
    pub seq: u64,
    /// The rule.
    pub rule: Rule,
    /// What exactly is wrong.
    pub detail: String,
}

/// Where a session stands at the end of its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// Idle; `stop_reason` is `None` for a session that never ran.
    Idle {
        /// `end_turn` or `retries_exhausted`.
        stop_reason: Option<String>,
    },
    /// Idle with `requires_action`: waiting on these tool_use ids.
    Waiting {
        /// The calls it waits on.
        on: Vec<String>,
    },
    /// Ended for good.
    Terminated {
        /// Why.
        reason: String,
    },
    /// A turn is in progress (running or rescheduled).
    Running,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Idle { stop_reason: None } => write!(f, "idle (new)"),
            Outcome::Idle {
                stop_reason: Some(r),
            } => write!(f, "idle ({r})"),
            Outcome::Waiting { on } => write!(f, "waiting on {}", on.join(", ")),
            Outcome::Terminated { reason } => write!(f, "terminated ({reason})"),
            Outcome::Running => write!(f, "running"),
        }
    }
}

/// The checker's verdict on one session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionReport {
    /// The session.
    pub session_id: SessionId,
    /// Records checked (invalid ones included).
    pub events: u64,
    /// Stream sequence of the last one.
    pub last_seq: u64,
    /// Where it stands.
    pub outcome: Outcome,
    /// Tool calls still without a result.
    pub pending_calls: usize,
    /// What is wrong; empty when the log is sound.
    pub violations: Vec<Violation>,
}

impl SessionReport {
    /// True when no rule is broken.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What the next event must be, inside a step that is not finished yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Anything.
    Free,
    /// Model output was written: more output, error results, then `span.model_request_end`.
    ResponseEnd { from: u64 },
    /// `session.usage` was written: `session.status_idle` must follow.
    IdleAfterUsage { from: u64 },
    /// A retrying `session.error` was written: `session.status_rescheduled` must follow.
    Rescheduled { from: u64 },
}

/// A status as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Rescheduled,
    Terminated,
}

/// A call seen in the log and the results it got.
#[derive(Debug, Clone)]
struct Call {
    results: u32,
}

/// Checks one session's records, fed in stream order.
pub struct Checker {
    state: SessionState,
    violations: Vec<Violation>,
    ids: HashMap<String, (u64, String)>,
    calls: HashMap<String, Call>,
    open_span: Option<(u64, String)>,
    expect: Expect,
    phase: Phase,
    first: bool,
}

impl Checker {
    /// A checker for one session.
    pub fn new(session_id: SessionId) -> Self {
        Self {
            state: SessionState::new(session_id),
            violations: Vec::new(),
            ids: HashMap::new(),
            calls: HashMap::new(),
            open_span: None,
            expect: Expect::Free,
            phase: Phase::Idle,
            first: true,
        }
    }

    fn violate(&mut self, seq: u64, rule: Rule, detail: impl Into<String>) {
        self.violations.push(Violation {
            seq,
            rule,
            detail: detail.into(),
        });
    }

    /// Checks the next record.
    pub fn feed(&mut self, record: &Record) {
        self.state.apply_record(record);
        let first = std::mem::replace(&mut self.first, false);
        match record {
            Err(bad) => {
                let detail = format!("{} is not a valid event: {}", bad.subject, bad.error);
                self.violate(bad.seq, Rule::InvalidRecord, detail);
            }
            Ok(e) => {
                if first && !matches!(e.event.body, EventBody::SessionCreated(_)) {
                    let detail = format!(
                        "the first event is {}, not session.created",
                        e.event.type_name()
                    );
                    self.violate(e.seq, Rule::NotCreatedFirst, detail);
                }
                if !self.check_id(e) {
                    // A copy is one event for every reader: report it, check nothing else.
                    return;
                }
                if !first && matches!(e.event.body, EventBody::SessionCreated(_)) {
                    let detail = "a session.created after the first; the first is the session's configuration for good and this one is ignored".to_string();
                    self.violate(e.seq, Rule::SecondCreation, detail);
                    return;
                }
                self.check_step(e);
                self.check_calls(e);
                self.check_status(e);
            }
        }
    }

    /// False when the event is a copy of one seen before (same id and type: every reader
    /// folds it once). Any repeated id is reported.
    fn check_id(&mut self, e: &StoredEvent) -> bool {
        let key = e.event.id.to_string();
        if let Some((earlier, ty)) = self.ids.get(&key) {
            let detail = format!(
                "event id {} is also at seq {earlier} (an append landed twice)",
                e.event.id
            );
            let copy = ty == e.event.type_name();
            self.violate(e.seq, Rule::DuplicateId, detail);
            return !copy;
        }
        self.ids
            .insert(key, (e.seq, e.event.type_name().to_string()));
        true
    }

    fn check_step(&mut self, e: &StoredEvent) {
        let t = e.event.type_name();
        let is_output = matches!(
            e.event.body,
            EventBody::AgentMessage(_)
                | EventBody::AgentThinking(_)
                | EventBody::AgentToolUse(_)
                | EventBody::AgentCustomToolUse(_)
                | EventBody::AgentMcpToolUse(_)
        );
        // First: does this event fit the step in progress?
        match self.expect {
            Expect::Free => {}
            Expect::ResponseEnd { from } => {
                let fits = is_output
                    || matches!(e.event.body, EventBody::AgentToolResult(_))
                    || matches!(&e.event.body, EventBody::SpanModelRequestEnd(s) if !s.is_error);
                if !fits {
                    self.violate(e.seq, Rule::BrokenStep, format!(
                        "the model's output from seq {from} is followed by {t}, not by its span.model_request_end (a response step was cut apart)"
                    ));
                    self.expect = Expect::Free;
                }
            }
            Expect::IdleAfterUsage { from } => {
                if !matches!(e.event.body, EventBody::SessionStatusIdle(_)) {
                    self.violate(e.seq, Rule::BrokenStep, format!(
                        "session.usage at seq {from} is followed by {t}, not by session.status_idle"
                    ));
                }
                self.expect = Expect::Free;
            }
            Expect::Rescheduled { from } => {
                if !matches!(e.event.body, EventBody::SessionStatusRescheduled(_)) {
                    self.violate(e.seq, Rule::BrokenStep, format!(
                        "the retrying session.error at seq {from} is followed by {t}, not by session.status_rescheduled"
                    ));
                }
                self.expect = Expect::Free;
            }
        }
        // Then: what does it start or close?
        match &e.event.body {
            _ if is_output => {
                if self.open_span.is_none() {
                    self.violate(
                        e.seq,
                        Rule::BrokenStep,
                        format!("{t} outside any model request span"),
                    );
                }
                if self.expect == Expect::Free {
                    self.expect = Expect::ResponseEnd { from: e.seq };
                }
            }
            EventBody::SpanModelRequestStart(_) => {
                if let Some((seq, _)) = &self.open_span {
                    let detail =
                        format!("a model request span starts while the one from seq {seq} is open");
                    self.violate(e.seq, Rule::BrokenStep, detail);
                }
                self.open_span = Some((e.seq, e.event.id.to_string()));
            }
            EventBody::SpanModelRequestEnd(end) => {
                self.expect = Expect::Free;
                match self.open_span.take() {
                    None => self.violate(
                        e.seq,
                        Rule::BrokenStep,
                        "span.model_request_end without an open span",
                    ),
                    Some((_, start)) => {
                        if let Some(named) = &end.model_request_start_id
                            && *named != start
                        {
                            let detail = format!(
                                "span.model_request_end names start {named}, but the open span is {start}"
                            );
                            self.violate(e.seq, Rule::BrokenStep, detail);
                        }
                    }
                }
            }
            EventBody::SessionUsage(_) => self.expect = Expect::IdleAfterUsage { from: e.seq },
            EventBody::SessionError(err)
                if err
                    .retry_status
                    .as_ref()
                    .is_some_and(|r| r.kind == "retrying") =>
            {
                self.expect = Expect::Rescheduled { from: e.seq }
            }
            _ => {}
        }
    }

    fn check_calls(&mut self, e: &StoredEvent) {
        let t = e.event.type_name();
        let call_id = match &e.event.body {
            EventBody::AgentToolUse(u) => Some(&u.tool_use_id),
            EventBody::AgentCustomToolUse(u) => Some(&u.tool_use_id),
            EventBody::AgentMcpToolUse(u) => Some(&u.tool_use_id),
            _ => None,
        };
        if let Some(id) = call_id {
            if self.calls.contains_key(id) {
                let detail = format!("{t} reuses tool_use id {id}");
                self.violate(e.seq, Rule::DuplicateId, detail);
            } else {
                self.calls.insert(id.clone(), Call { results: 0 });
            }
            return;
        }
        let answers = match &e.event.body {
            EventBody::AgentToolResult(r) => &r.tool_use_id,
            EventBody::UserCustomToolResult(r) => &r.custom_tool_use_id,
            EventBody::AgentMcpToolResult(r) => &r.mcp_tool_use_id,
            _ => return,
        };
        match self.calls.get_mut(answers) {
            None => {
                let detail = format!("{t} answers {answers}, which no earlier call has");
                self.violate(e.seq, Rule::OrphanResult, detail);
            }
            Some(call) => {
                call.results += 1;
                if call.results > 1 {
                    let n = call.results;
                    let detail = format!("{t} is result number {n} for {answers}");
                    self.violate(e.seq, Rule::DuplicateResult, detail);
                }
            }
        }
    }

    fn check_status(&mut self, e: &StoredEvent) {
        let next = match &e.event.body {
            EventBody::SessionStatusRunning(_) => Phase::Running,
            EventBody::SessionStatusIdle(_) => Phase::Idle,
            EventBody::SessionStatusRescheduled(_) => Phase::Rescheduled,
            EventBody::SessionStatusTerminated(_) => Phase::Terminated,
            _ => {
                let in_turn = matches!(self.phase, Phase::Running | Phase::Rescheduled);
                if !in_turn && matches!(e.event.body, EventBody::SpanModelRequestStart(_)) {
                    self.violate(
                        e.seq,
                        Rule::IllegalStatus,
                        "a model request starts outside a turn (no session.status_running before it)",
                    );
                }
                return;
            }
        };
        use Phase::*;
        // Idle → idle happens when the set of calls a parked session waits on changes (one of
        // two answered): the new idle is requires_action again.
        let parks_again = matches!(&e.event.body,
            EventBody::SessionStatusIdle(i) if i.stop_reason.kind == "requires_action");
        let legal = (self.phase == Idle && next == Idle && parks_again)
            || matches!(
                (self.phase, next),
                (Idle, Running)
                    | (Idle, Terminated)
                    | (Running, Idle | Rescheduled | Terminated)
                    | (Rescheduled, Running | Idle | Terminated)
            );
        if !legal {
            let detail = format!(
                "{} while {}",
                e.event.type_name(),
                match self.phase {
                    Idle => "idle",
                    Running => "running",
                    Rescheduled => "rescheduled",
                    Terminated => "terminated",
                }
            );
            self.violate(e.seq, Rule::IllegalStatus, detail);
        }
        self.phase = next;
    }

    /// The verdict, after the last record. With `settled`, a running session is a violation.
    pub fn finish(mut self, settled: bool) -> SessionReport {
        let last = self.state.last_seq;
        match self.expect {
            Expect::Free => {}
            Expect::ResponseEnd { from } => self.violate(
                last,
                Rule::BrokenStep,
                format!("the model's output from seq {from} has no span.model_request_end (the log ends inside a response step)"),
            ),
            Expect::IdleAfterUsage { from } => self.violate(
                last,
                Rule::BrokenStep,
                format!("the log ends after session.usage at seq {from}, without session.status_idle"),
            ),
            Expect::Rescheduled { from } => self.violate(
                last,
                Rule::BrokenStep,
                format!("the log ends after the retrying session.error at seq {from}, without session.status_rescheduled"),
            ),
        }
        let outcome = match self.state.status {
            Status::Terminated => Outcome::Terminated {
                reason: self.state.terminated_reason.clone().unwrap_or_default(),
            },
            Status::Running | Status::Rescheduling => Outcome::Running,
            Status::Idle => match &self.state.stop_reason {
                Some(r) if r.kind == "requires_action" => Outcome::Waiting {
                    on: r.event_ids.clone(),
                },
                r => Outcome::Idle {
                    stop_reason: r.as_ref().map(|r| r.kind.clone()),
                },
            },
        };
        if let Some((seq, _)) = &self.open_span
            && !matches!(self.state.status, Status::Running | Status::Rescheduling)
        {
            let detail = format!("the model request span from seq {seq} was never closed");
            self.violate(last, Rule::BrokenStep, detail);
        }
        let pending: Vec<(String, u64)> = self
            .state
            .pending_tools
            .iter()
            .map(|(id, t)| (id.clone(), t.seq))
            .collect();
        match &outcome {
            Outcome::Running => {
                if settled {
                    let detail = format!(
                        "still running at its last event (seq {last}) with {} call(s) pending",
                        pending.len()
                    );
                    self.violate(last, Rule::NotSettled, detail);
                }
            }
            Outcome::Waiting { on } => {
                if on.is_empty() {
                    self.violate(
                        last,
                        Rule::IllegalStatus,
                        "requires_action without naming what it waits on",
                    );
                }
                for id in on {
                    if !pending.iter().any(|(p, _)| p == id) {
                        let detail =
                            format!("waits on {id}, which is answered or was never called");
                        self.violate(last, Rule::IllegalStatus, detail);
                    }
                }
                // A call the session does not wait on may still be running at a hand (one
                // response can hold an allowed call and a custom one): in flight, not lost.
                // Once the load has stopped it must have its result.
                for (id, seq) in &pending {
                    if !on.contains(id) && settled {
                        let detail = format!(
                            "the call {id} from seq {seq} has no result, and the session waits on other calls"
                        );
                        self.violate(last, Rule::NotSettled, detail);
                    }
                }
            }
            Outcome::Idle { .. } | Outcome::Terminated { .. } => {
                let state = if matches!(outcome, Outcome::Idle { .. }) {
                    "idle"
                } else {
                    "terminated"
                };
                for (id, seq) in &pending {
                    let detail = format!(
                        "the call {id} from seq {seq} has no result, but the session is {state}"
                    );
                    self.violate(last, Rule::UnansweredCall, detail);
                }
            }
        }
        SessionReport {
            session_id: self.state.id.clone(),
            events: self.state.event_count,
            last_seq: last,
            outcome,
            pending_calls: pending.len(),
            violations: self.violations,
        }
    }
}

/// Checks a whole session at once.
pub fn check_session(session_id: SessionId, records: &[Record], settled: bool) -> SessionReport {
    let mut c = Checker::new(session_id);
    for r in records {
        c.feed(r);
    }
    c.finish(settled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    /// A log written event by event, with sequences 1, 2, 3, …
    struct Log(Vec<Record>);

    impl Log {
        fn new() -> Self {
            Log(Vec::new()).with(SessionCreated::new(AgentConfig::new("m")))
        }
        fn with(self, body: impl Into<EventBody>) -> Self {
            self.with_event(Event::new(body))
        }
        fn with_event(mut self, event: Event) -> Self {
            let seq = self.0.len() as u64 + 1;
            self.0.push(Ok(StoredEvent {
                session_id: id(),
                seq,
                event,
            }));
            self
        }
        fn last_id(&self) -> String {
            match self.0.last() {
                Some(Ok(e)) => e.event.id.to_string(),
                _ => panic!("no event"),
            }
        }
        fn check(&self, settled: bool) -> SessionReport {
            check_session(id(), &self.0, settled)
        }
        fn rules(&self, settled: bool) -> Vec<Rule> {
            self.check(settled)
                .violations
                .iter()
                .map(|v| v.rule)
                .collect()
        }
        /// A user message and the running status and span that answer it.
        fn ask(self) -> Self {
            self.with(UserMessage {
                content: vec![ContentBlock::text("hi")],
            })
            .with(SessionStatusRunning {})
            .with(SpanModelRequestStart { model: None })
        }
        fn end_span(self) -> Self {
            let start = self
                .0
                .iter()
                .rev()
                .find_map(|r| match r {
                    Ok(e) if e.event.type_name() == "span.model_request_start" => {
                        Some(e.event.id.to_string())
                    }
                    _ => None,
                })
                .unwrap();
            self.with(SpanModelRequestEnd {
                model_request_start_id: Some(start),
                model_usage: Usage::default(),
                is_error: false,
            })
        }
        fn idle(self, kind: &str, ids: &[&str]) -> Self {
            self.with(SessionUsage {
                usage: Usage::default(),
                list_cost: None,
                budget: None,
            })
            .with(SessionStatusIdle {
                stop_reason: StopReason {
                    kind: kind.into(),
                    event_ids: ids.iter().map(|s| s.to_string()).collect(),
                },
            })
        }
        fn call(self, id: &str) -> Self {
            self.with(AgentToolUse {
                tool_use_id: id.into(),
                name: "bash".into(),
                input: serde_json::json!({}),
                evaluated_permission: Some(EvaluatedPermission::Allow),
            })
        }
        fn result(self, id: &str) -> Self {
            self.with(AgentToolResult {
                tool_use_id: id.into(),
                content: vec![],
                is_error: false,
                output_ref: None,
            })
        }
        fn answer(self, text: &str) -> Self {
            self.with(AgentMessage {
                content: vec![ContentBlock::text(text)],
            })
        }
    }

    fn id() -> SessionId {
        SessionId::parse("sesn_check").unwrap()
    }

    /// A turn with a tool call, its result, and a final answer.
    fn sound() -> Log {
        Log::new()
            .ask()
            .call("toolu_1")
            .end_span()
            .result("toolu_1")
            .with(SpanModelRequestStart { model: None })
            .answer("done")
            .end_span()
            .idle("end_turn", &[])
    }

    #[test]
    fn a_sound_turn_passes_settled() {
        let r = sound().check(true);
        assert_eq!(r.violations, vec![]);
        assert_eq!(
            r.outcome,
            Outcome::Idle {
                stop_reason: Some("end_turn".into())
            }
        );
        assert_eq!(r.events, 12);
    }

    #[test]
    fn a_running_session_is_fine_unless_settled_is_required() {
        let log = Log::new().ask().call("toolu_1").end_span();
        assert_eq!(log.rules(false), vec![]);
        assert_eq!(log.check(false).pending_calls, 1);
        assert_eq!(log.rules(true), vec![Rule::NotSettled]);
    }

    #[test]
    fn a_response_step_cut_apart_is_found() {
        // Output, then a user message before the span end: the atomic step was split.
        let log = Log::new().ask().answer("half").with(UserMessage {
            content: vec![ContentBlock::text("x")],
        });
        assert!(log.rules(false).contains(&Rule::BrokenStep));
        // Output at the very end of the log.
        let log = Log::new().ask().answer("half");
        assert_eq!(log.rules(false), vec![Rule::BrokenStep]);
        // Usage without its idle.
        let log = Log::new().ask().answer("a").end_span().with(SessionUsage {
            usage: Usage::default(),
            list_cost: None,
            budget: None,
        });
        assert_eq!(log.rules(false), vec![Rule::BrokenStep]);
    }

    #[test]
    fn unbalanced_spans_are_found() {
        let log = Log::new().ask().with(SpanModelRequestStart { model: None });
        assert_eq!(log.rules(false), vec![Rule::BrokenStep]);
        let log = Log::new()
            .with(SessionStatusRunning {})
            .end_span_without_start();
        assert_eq!(log.rules(false), vec![Rule::BrokenStep]);
        let log = Log::new().with(SessionStatusRunning {}).answer("no span");
        assert!(log.rules(false).contains(&Rule::BrokenStep));
    }

    impl Log {
        fn end_span_without_start(self) -> Self {
            self.with(SpanModelRequestEnd {
                model_request_start_id: None,
                model_usage: Usage::default(),
                is_error: false,
            })
        }
    }

    #[test]
    fn calls_need_exactly_one_result() {
        let two = sound().result("toolu_1");
        assert_eq!(two.rules(true), vec![Rule::DuplicateResult]);
        let orphan = sound().result("toolu_nobody");
        assert_eq!(orphan.rules(true), vec![Rule::OrphanResult]);
        let unanswered = Log::new()
            .ask()
            .call("toolu_1")
            .end_span()
            .idle("end_turn", &[]);
        assert_eq!(unanswered.rules(false), vec![Rule::UnansweredCall]);
    }

    #[test]
    fn waiting_must_name_the_pending_calls() {
        let custom = |log: Log, id: &str| {
            log.with(AgentCustomToolUse {
                tool_use_id: id.into(),
                name: "lookup".into(),
                input: serde_json::json!({}),
            })
        };
        let ok = custom(Log::new().ask(), "toolu_c")
            .end_span()
            .idle("requires_action", &["toolu_c"]);
        let r = ok.check(true);
        assert_eq!(r.violations, vec![]);
        assert_eq!(
            r.outcome,
            Outcome::Waiting {
                on: vec!["toolu_c".into()]
            }
        );
        let wrong = custom(Log::new().ask(), "toolu_c")
            .end_span()
            .idle("requires_action", &["toolu_other"]);
        let rules = wrong.rules(true);
        assert!(rules.contains(&Rule::IllegalStatus), "{rules:?}");
        assert!(rules.contains(&Rule::NotSettled), "{rules:?}");
        // Parking again on a changed set of calls is legal.
        let again = custom(custom(Log::new().ask(), "toolu_a"), "toolu_b")
            .end_span()
            .idle("requires_action", &["toolu_b", "toolu_a"])
            .with(UserCustomToolResult {
                custom_tool_use_id: "toolu_a".into(),
                content: vec![],
                is_error: false,
            })
            .idle("requires_action", &["toolu_b"]);
        assert_eq!(again.rules(true), vec![]);
    }

    #[test]
    fn illegal_status_orders_are_found() {
        let twice = Log::new().ask().with(SessionStatusRunning {});
        assert!(twice.rules(false).contains(&Rule::IllegalStatus));
        let after_end = sound()
            .with(SessionStatusTerminated { reason: "x".into() })
            .with(SessionStatusRunning {});
        assert_eq!(after_end.rules(false), vec![Rule::IllegalStatus]);
        let span_outside = Log::new().with(SpanModelRequestStart { model: None });
        assert!(span_outside.rules(false).contains(&Rule::IllegalStatus));
    }

    #[test]
    fn a_failed_request_step_must_be_whole() {
        let retrying = SessionError {
            error: ErrorInfo {
                kind: "overloaded".into(),
                message: "529".into(),
            },
            retry_status: Some(RetryStatus {
                kind: "retrying".into(),
                attempt: Some(1),
                retry_in_ms: Some(100),
            }),
        };
        let start = Log::new().ask();
        let start_id = start.last_id();
        let failed = SpanModelRequestEnd {
            model_request_start_id: Some(start_id),
            model_usage: Usage::default(),
            is_error: true,
        };
        let whole = start
            .with(failed.clone())
            .with(retrying.clone())
            .with(SessionStatusRescheduled { reason: None })
            .with(SessionStatusRunning {})
            .with(SpanModelRequestStart { model: None })
            .answer("ok")
            .end_span()
            .idle("end_turn", &[]);
        assert_eq!(whole.rules(true), vec![]);
        let cut = Log::new()
            .ask()
            .with(failed)
            .with(retrying)
            .with(SessionStatusRunning {});
        assert!(cut.rules(false).contains(&Rule::BrokenStep));
    }

    #[test]
    fn duplicates_invalid_records_and_headless_logs_are_found() {
        let log = sound();
        let Ok(first_event) = &log.0[1] else {
            unreachable!()
        };
        let again = first_event.event.clone();
        assert_eq!(log.with_event(again).rules(true), vec![Rule::DuplicateId]);
        let mut bad = sound();
        bad.0.push(Err(InvalidRecord {
            session_id: id(),
            seq: 99,
            subject: "herd.session.sesn_check.user.message".into(),
            error: "garbage".into(),
        }));
        assert_eq!(bad.rules(true), vec![Rule::InvalidRecord]);
        let mut headless = sound();
        let _created = headless.0.remove(0);
        assert_eq!(headless.rules(true), vec![Rule::NotCreatedFirst]);
    }

    #[test]
    fn a_second_session_created_is_reported_and_ignored() {
        let log = sound();
        let Ok(created) = &log.0[0] else {
            unreachable!()
        };
        let EventBody::SessionCreated(mut other) = created.event.body.clone() else {
            unreachable!()
        };
        other.agent.model = "another-model".into();
        let log = log.with_event(Event::new(other));
        assert_eq!(log.rules(true), vec![Rule::SecondCreation]);
        let state = SessionState::fold(id(), log.0.iter().filter_map(|r| r.as_ref().ok()));
        assert_ne!(state.config.unwrap().agent.model, "another-model");
    }
}
