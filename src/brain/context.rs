//! Context building: a pure function from a session's events to the next model request.
//!
//! The log is not the context window; this is where herd decides what the model sees:
//!
//! * Messages are ordered by what the model actually saw. User input (messages, tool results)
//!   is gathered until the next `span.model_request_start` and sent as one user turn; what the
//!   model answered follows as one assistant turn. Input that arrived while a request was in
//!   flight belongs to the next request, so it is never lost and never out of order.
//! * Tool results lead their user turn, as the Anthropic API requires; a tool call with no
//!   recorded result (an interrupted turn) gets an explicit error result, so the history is
//!   always valid to send.
//! * After `agent.thread_context_compacted`, the summary replaces every event up to
//!   `compacted_up_to`; the events themselves are never changed.
//! * `system.message` events extend the system prompt for this and later requests.

use serde_json::{Value, json};

use super::provider::{Message, ModelRequest, ToolDef};
use crate::event::{ContentBlock, EventBody, SessionCreated, StoredEvent, tools};

/// The output-token limit when the agent sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The model's tool definitions: the tools the session offers at this point of its log (the
/// catalogue, [`crate::event::tools::offered`]), and a note for the system prompt naming MCP
/// servers whose latest listing failed (their tools are left out).
fn tools_at(config: &SessionCreated, events: &[StoredEvent]) -> (Vec<ToolDef>, Vec<String>) {
    let compacted = events
        .iter()
        .any(|e| matches!(e.event.body, EventBody::AgentThreadContextCompacted(_)));
    let listings = tools::latest_listings(events.iter().filter_map(|e| match &e.event.body {
        EventBody::McpToolsListed(l) => Some(l),
        _ => None,
    }));
    // herd's own words only: the server's error text is its own, and the system prompt is
    // no place for it (it is in the listing event, for people and for get_events).
    let notes = listings
        .iter()
        .filter(|l| l.error.is_some())
        .map(|l| {
            format!(
                "The MCP server {:?} could not be listed this turn, so its tools are not available now.",
                l.mcp_server_name
            )
        })
        .collect();
    let defs = tools::offered(config, compacted, &listings)
        .into_iter()
        .map(|t| ToolDef {
            name: t.name,
            description: t.description,
            input_schema: t.input_schema,
        })
        .collect();
    (defs, notes)
}

fn blocks(content: &[ContentBlock]) -> impl Iterator<Item = Value> + '_ {
    content.iter().map(|b| Value::Object(b.as_object().clone()))
}

fn tool_result(id: &str, content: &[ContentBlock], is_error: bool) -> Value {
    json!({"type": "tool_result", "tool_use_id": id, "content": blocks(content).collect::<Vec<_>>(), "is_error": is_error})
}

/// Builds the conversation so far.
struct Builder {
    messages: Vec<Message>,
    results: Vec<Value>,
    input: Vec<Value>,
}

impl Builder {
    fn push(&mut self, role: &str, content: Vec<Value>) {
        if content.is_empty() {
            return;
        }
        match self.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => self.messages.push(Message {
                role: role.to_string(),
                content,
            }),
        }
    }

    /// Sends the gathered input as a user turn: tool results first.
    fn flush_input(&mut self) {
        let mut content = std::mem::take(&mut self.results);
        content.append(&mut self.input);
        self.push("user", content);
    }

    fn assistant(&mut self, content: impl IntoIterator<Item = Value>) {
        let content: Vec<Value> = content.into_iter().collect();
        self.push("assistant", content);
    }
}

/// Gives every tool call in an assistant turn a result in the next user turn.
fn close_dangling_tool_calls(messages: &mut Vec<Message>) {
    let mut i = 0;
    while i < messages.len() {
        if messages[i].role == "assistant" {
            let calls: Vec<String> = messages[i]
                .content
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str().map(String::from))
                .collect();
            if !calls.is_empty() {
                if messages.get(i + 1).is_none_or(|m| m.role != "user") {
                    messages.insert(
                        i + 1,
                        Message {
                            role: "user".into(),
                            content: vec![],
                        },
                    );
                }
                let next = &mut messages[i + 1];
                let answered: Vec<String> = next
                    .content
                    .iter()
                    .filter(|b| b["type"] == "tool_result")
                    .filter_map(|b| b["tool_use_id"].as_str().map(String::from))
                    .collect();
                let missing: Vec<Value> = calls
                    .iter()
                    .filter(|c| !answered.contains(c))
                    .map(|c| json!({"type": "tool_result", "tool_use_id": c, "content": [{"type": "text", "text": "No result was recorded for this call (the turn was interrupted)."}], "is_error": true}))
                    .collect();
                let mut content = missing;
                content.append(&mut next.content);
                next.content = content;
            }
        }
        i += 1;
    }
}

/// The model request for a session's next turn.
pub fn build(config: &SessionCreated, events: &[StoredEvent]) -> ModelRequest {
    let compacted = events.iter().rev().find_map(|e| match &e.event.body {
        EventBody::AgentThreadContextCompacted(c) => Some((e.seq, c)),
        _ => None,
    });
    let mut b = Builder {
        messages: Vec::new(),
        results: Vec::new(),
        input: Vec::new(),
    };
    let mut system = config.agent.system.clone().unwrap_or_default();
    let (tool_defs, notes) = tools_at(config, events);
    let mut from = 0;
    if let Some((_, c)) = compacted {
        from = c.compacted_up_to;
        // The summary says what it covers, and how to get any of it back exactly.
        let fetch = if tool_defs.iter().any(|t| t.name == tools::GET_EVENTS) {
            format!(
                " Every one of those events is still in the log: call get_events (e.g. {{\"from\": 1, \"to\": {}}}, or {{\"text\": \"…\"}}) to read any of them exactly.",
                c.compacted_up_to
            )
        } else {
            String::new()
        };
        b.input.push(json!({"type": "text", "text": format!("Summary of the conversation so far (events 1 to {} of this session's log).{fetch}\n{}", c.compacted_up_to, c.summary)}));
    }
    for e in events {
        if let EventBody::SystemMessage(m) = &e.event.body {
            // System context applies whatever its position; compaction never drops it.
            for t in m.content.iter().filter_map(ContentBlock::as_text) {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(t);
            }
        }
        if e.seq <= from {
            continue;
        }
        match &e.event.body {
            EventBody::UserMessage(m) => b.input.extend(blocks(&m.content)),
            EventBody::SpanModelRequestStart(_) => b.flush_input(),
            EventBody::AgentMessage(m) => b.assistant(blocks(&m.content)),
            EventBody::AgentThinking(t) => b.assistant(blocks(&t.content)),
            EventBody::AgentToolUse(t) => b.assistant([
                json!({"type": "tool_use", "id": t.tool_use_id, "name": t.name, "input": t.input}),
            ]),
            EventBody::AgentCustomToolUse(t) => b.assistant([
                json!({"type": "tool_use", "id": t.tool_use_id, "name": t.name, "input": t.input}),
            ]),
            EventBody::AgentMcpToolUse(t) => b.assistant([
                json!({"type": "tool_use", "id": t.tool_use_id, "name": t.name, "input": t.input}),
            ]),
            EventBody::AgentToolResult(r) => {
                b.results
                    .push(tool_result(&r.tool_use_id, &r.content, r.is_error))
            }
            EventBody::UserCustomToolResult(r) => {
                b.results
                    .push(tool_result(&r.custom_tool_use_id, &r.content, r.is_error))
            }
            EventBody::AgentMcpToolResult(r) => {
                b.results
                    .push(tool_result(&r.mcp_tool_use_id, &r.content, r.is_error))
            }
            _ => {}
        }
    }
    b.flush_input();
    let mut messages = b.messages;
    if messages.first().is_some_and(|m| m.role != "user") {
        messages.insert(
            0,
            Message {
                role: "user".into(),
                content: vec![json!({"type": "text", "text": "(conversation start)"})],
            },
        );
    }
    close_dangling_tool_calls(&mut messages);
    for n in notes {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(&n);
    }
    ModelRequest {
        model: config.agent.model.clone(),
        system: (!system.is_empty()).then_some(system),
        tools: tool_defs,
        messages,
        max_tokens: config.agent.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
    }
}

/// A rough token count of a request (4 characters a token), for the compaction budget.
pub fn estimate_tokens(req: &ModelRequest) -> usize {
    let chars = req.system.as_ref().map_or(0, String::len)
        + req
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .map(|b| b.to_string().len())
            .sum::<usize>()
        + req
            .tools
            .iter()
            .map(|t| t.description.len() + t.input_schema.to_string().len())
            .sum::<usize>();
    chars / 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    struct Log(Vec<StoredEvent>);

    impl Log {
        fn new() -> Self {
            Self(Vec::new())
        }
        fn add(mut self, body: impl Into<EventBody>) -> Self {
            let seq = self.0.len() as u64 + 1;
            self.0.push(StoredEvent {
                session_id: SessionId::parse("s").unwrap(),
                seq,
                event: Event::new(body),
            });
            self
        }
    }

    fn config() -> SessionCreated {
        let mut agent = AgentConfig::new("claude-test");
        agent.system = Some("Be brief.".into());
        agent.tools = vec![ToolConfig::builtin("bash")];
        SessionCreated::new(agent)
    }

    fn user(t: &str) -> UserMessage {
        UserMessage {
            content: vec![ContentBlock::text(t)],
        }
    }
    fn said(t: &str) -> AgentMessage {
        AgentMessage {
            content: vec![ContentBlock::text(t)],
        }
    }
    fn start() -> SpanModelRequestStart {
        SpanModelRequestStart { model: None }
    }
    fn tool(id: &str) -> AgentToolUse {
        AgentToolUse {
            tool_use_id: id.into(),
            name: "bash".into(),
            input: json!({"command": "ls"}),
            evaluated_permission: Some(EvaluatedPermission::Allow),
        }
    }
    fn result(id: &str, t: &str) -> AgentToolResult {
        AgentToolResult {
            tool_use_id: id.into(),
            content: vec![ContentBlock::text(t)],
            is_error: false,
            output_ref: None,
        }
    }

    fn golden(log: &Log) -> Value {
        let req = build(&config(), &log.0);
        json!({"system": req.system, "messages": req.messages})
    }

    #[test]
    fn a_first_turn() {
        let log = Log::new().add(config()).add(user("hi"));
        assert_eq!(
            golden(&log),
            json!({"system": "Be brief.", "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}
            ]})
        );
        let req = build(&config(), &log.0);
        assert_eq!(req.tools[0].name, "bash");
        assert!(req.tools[0].description.contains("bash command"));
        assert_eq!(req.max_tokens, DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn tool_round_trip_puts_results_first() {
        let log = Log::new()
            .add(config())
            .add(user("list files"))
            .add(start())
            .add(said("Looking."))
            .add(tool("t1"))
            .add(SpanModelRequestEnd {
                model_request_start_id: None,
                model_usage: Usage::default(),
                is_error: false,
            })
            .add(user("also, hurry"))
            .add(result("t1", "a.txt"));
        assert_eq!(
            golden(&log)["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "list files"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "ls"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a.txt"}], "is_error": false},
                    {"type": "text", "text": "also, hurry"}
                ]}
            ])
        );
    }

    #[test]
    fn input_during_a_request_goes_to_the_next_one() {
        // A message that landed after the request started is not part of that request's turn.
        let log = Log::new()
            .add(config())
            .add(user("first"))
            .add(start())
            .add(user("second, sent while the model was thinking"))
            .add(said("answer to first"));
        assert_eq!(
            golden(&log)["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "first"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "answer to first"}]},
                {"role": "user", "content": [{"type": "text", "text": "second, sent while the model was thinking"}]}
            ])
        );
    }

    #[test]
    fn dangling_tool_calls_get_error_results() {
        let log = Log::new()
            .add(config())
            .add(user("go"))
            .add(start())
            .add(tool("t1"))
            .add(tool("t2"))
            .add(result("t2", "done"))
            .add(user("stop that"));
        let m = &golden(&log)["messages"];
        assert_eq!(m[2]["content"][0]["tool_use_id"], "t1");
        assert_eq!(m[2]["content"][0]["is_error"], true);
        assert_eq!(m[2]["content"][1]["tool_use_id"], "t2");
        assert_eq!(m[2]["content"][2]["text"], "stop that");
    }

    #[test]
    fn compaction_replaces_older_turns_and_system_messages_persist() {
        let log = Log::new()
            .add(config())
            .add(SystemMessage {
                content: vec![ContentBlock::text("Today is Friday.")],
            })
            .add(user("old question"))
            .add(start())
            .add(said("old answer"))
            .add(AgentThreadContextCompacted {
                summary: "They asked an old question.".into(),
                compacted_up_to: 5,
            })
            .add(user("new question"));
        assert_eq!(
            golden(&log),
            json!({"system": "Be brief.\n\nToday is Friday.", "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Summary of the conversation so far (events 1 to 5 of this session's log). Every one of those events is still in the log: call get_events (e.g. {\"from\": 1, \"to\": 5}, or {\"text\": \"…\"}) to read any of them exactly.\nThey asked an old question."},
                    {"type": "text", "text": "new question"}
                ]}
            ]})
        );
    }

    #[test]
    fn thinking_blocks_go_back_exactly() {
        let thinking = ContentBlock::from_object(
            json!({"type": "thinking", "thinking": "hmm", "signature": "c2ln"})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        let log = Log::new()
            .add(config())
            .add(user("q"))
            .add(start())
            .add(AgentThinking {
                content: vec![thinking],
            })
            .add(said("a"))
            .add(user("q2"));
        assert_eq!(
            golden(&log)["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "hmm", "signature": "c2ln"})
        );
    }
}
