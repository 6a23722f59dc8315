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
}

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

    /// Answers a request.
    pub fn complete(&self, req: &ModelRequest) -> ModelResponse {
        let turn = req
            .messages
            .iter()
            .filter(|m| m.role == "assistant")
            .count();
        let scripted = self.turns.get(turn).cloned().unwrap_or_else(|| ScriptedTurn {
            content: vec![json!({"type": "text", "text": format!("(scripted model) You said: {}", last_user_text(req))})],
            stop_reason: None,
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
