//! The `scripted` provider: fixed answers, no network, no key. It lets the whole pipeline run
//! (and the README's demo work) without a model API.
//!
//! An answer depends only on the request, never on time or a counter kept in memory, so a brain
//! that crashes and replays gets the same answer again: the n-th assistant turn of a
//! conversation gets the n-th turn of the script, and a conversation past the script's end is
//! answered with a plain reply to the last user text.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ModelRequest, ModelResponse};
use crate::event::{ContentBlock, Usage};

/// One scripted assistant turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptedTurn {
    /// The content blocks to answer with (text, tool_use, …).
    pub content: Vec<Value>,
    /// The stop reason; `tool_use` when a block is a tool call, else `end_turn`, when absent.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// How long the model takes to answer this turn, in milliseconds (at most
    /// [`MAX_THINK_MS`]): a slow model call, for demos and tests that kill a brain during one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think_ms: Option<u64>,
}

/// The longest a scripted turn takes to answer.
pub const MAX_THINK_MS: u64 = 60_000;

/// A script of turns.
#[derive(Debug, Clone, Default)]
pub struct Scripted {
    /// The turns, in order.
    pub turns: Vec<ScriptedTurn>,
}

fn last_user_text(req: &ModelRequest) -> String {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| {
            m.content
                .iter()
                .filter_map(|b| {
                    (b["type"] == "text")
                        .then(|| b["text"].as_str())
                        .flatten()
                        .or_else(|| (b["type"] == "tool_result").then_some("(a tool result)"))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

impl Scripted {
    /// The script in an agent's configuration (turns that do not parse are skipped).
    pub fn from_agent(agent: &crate::event::AgentConfig) -> Self {
        Self {
            turns: agent
                .script
                .iter()
                .filter_map(|t| serde_json::from_value(t.clone()).ok())
                .collect(),
        }
    }

    /// The turn that answers `req`: the n-th assistant turn of its conversation.
    fn turn_for(&self, req: &ModelRequest) -> Option<&ScriptedTurn> {
        let turn = req
            .messages
            .iter()
            .filter(|m| m.role == "assistant")
            .count();
        self.turns.get(turn)
    }

    /// How long the answer to `req` takes (its turn's `think_ms`, bounded).
    pub fn delay_for(&self, req: &ModelRequest) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.turn_for(req)
                .and_then(|t| t.think_ms)
                .unwrap_or(0)
                .min(MAX_THINK_MS),
        )
    }

    /// Answers a request.
    pub fn complete(&self, req: &ModelRequest) -> ModelResponse {
        let scripted = self.turn_for(req).cloned().unwrap_or_else(|| ScriptedTurn {
            content: vec![json!({"type": "text", "text": format!("(scripted model) You said: {}", last_user_text(req))})],
            stop_reason: None,
            think_ms: None,
        });
        let content: Vec<ContentBlock> = scripted
            .content
            .into_iter()
            .filter_map(|v| match v {
                Value::Object(o) => ContentBlock::from_object(o).ok(),
                _ => None,
            })
            .collect();
        let has_tool = content.iter().any(|b| b.kind() == "tool_use");
        let chars: usize = req
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .map(|b| b.to_string().len())
            .sum();
        ModelResponse {
            stop_reason: scripted
                .stop_reason
                .unwrap_or_else(|| if has_tool { "tool_use" } else { "end_turn" }.to_string()),
            usage: Usage {
                input_tokens: (chars / 4) as u64,
                output_tokens: content.iter().map(|b| b.as_object().len() as u64 * 8).sum(),
                ..Default::default()
            },
            content,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::provider::Message;

    fn request(assistant_turns: usize) -> ModelRequest {
        let mut messages = vec![Message {
            role: "user".into(),
            content: vec![json!({"type": "text", "text": "go"})],
        }];
        for _ in 0..assistant_turns {
            messages.push(Message {
                role: "assistant".into(),
                content: vec![json!({"type": "text", "text": "…"})],
            });
            messages.push(Message {
                role: "user".into(),
                content: vec![json!({"type": "text", "text": "more"})],
            });
        }
        ModelRequest {
            model: "scripted".into(),
            system: None,
            tools: vec![],
            messages,
            max_tokens: 100,
        }
    }

    #[test]
    fn a_turn_takes_its_think_time_bounded_and_answers_the_same_after_it() {
        let turn = |think_ms| ScriptedTurn {
            content: vec![json!({"type": "text", "text": "hi"})],
            stop_reason: None,
            think_ms,
        };
        let s = Scripted {
            turns: vec![turn(None), turn(Some(1500)), turn(Some(10 * MAX_THINK_MS))],
        };
        assert_eq!(s.delay_for(&request(0)), std::time::Duration::ZERO);
        assert_eq!(s.delay_for(&request(1)).as_millis(), 1500);
        assert_eq!(s.delay_for(&request(2)).as_millis(), MAX_THINK_MS as u128);
        // Past the script: no delay, an echo.
        assert_eq!(s.delay_for(&request(3)), std::time::Duration::ZERO);
        assert_eq!(s.complete(&request(1)), s.complete(&request(1)));
    }
}
