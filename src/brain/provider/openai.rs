//! OpenAI-compatible chat completions, streaming: OpenAI, vLLM, Ollama, llama.cpp.
//!
//! herd's request is Anthropic-shaped; this translates it: tool_use blocks become
//! `tool_calls`, tool_result blocks become `role: tool` messages, thinking blocks are dropped
//! (these APIs have no place for them). The answer is translated back into content blocks.

use std::time::Duration;

use serde_json::{Value, json};

use super::sse;
use super::{ModelError, ModelRequest, ModelResponse};
use crate::config::Secret;
use crate::event::{ContentBlock, Usage};

/// One request's worth of client.
pub struct OpenAi<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) base_url: &'a str,
    pub(crate) api_key: Option<&'a Secret>,
    pub(crate) idle: Duration,
}

fn text_of(block: &Value) -> Option<&str> {
    (block["type"] == "text")
        .then(|| block["text"].as_str())
        .flatten()
}

/// Translates the request into a chat-completions body.
pub(crate) fn body(req: &ModelRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &req.messages {
        if m.role == "assistant" {
            let text: String = m.content.iter().filter_map(text_of).collect();
            let calls: Vec<Value> = m
                .content
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .map(|b| {
                    json!({"id": b["id"], "type": "function",
                           "function": {"name": b["name"], "arguments": b["input"].to_string()}})
                })
                .collect();
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            messages.push(msg);
        } else {
            for b in m.content.iter().filter(|b| b["type"] == "tool_result") {
                let content = match &b["content"] {
                    Value::String(s) => s.clone(),
                    Value::Array(blocks) => blocks.iter().filter_map(text_of).collect(),
                    _ => String::new(),
                };
                messages.push(
                    json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content}),
                );
            }
            let text: Vec<&str> = m.content.iter().filter_map(text_of).collect();
            if !text.is_empty() {
                messages.push(json!({"role": "user", "content": text.join("\n")}));
            }
        }
    }
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
            .collect();
    }
    body
}

#[derive(Default)]
pub(crate) struct Assembler {
    text: String,
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Usage,
    pub(crate) done: bool,
}

impl Assembler {
    pub(crate) fn apply(&mut self, data: &str) -> Result<(), ModelError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|_| ModelError::Retryable {
            status: None,
            retry_after: None,
            message: "malformed stream from the model API: a chunk is not JSON".into(),
        })?;
        if let Some(err) = v.get("error") {
            return Err(ModelError::Fatal {
                status: None,
                message: format!("the model API reported an error: {err}"),
            });
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
            self.usage.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            if let Some(t) = delta["content"].as_str() {
                self.text.push_str(t);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap_or(0);
                if i > self.calls.len() as u64 {
                    return Err(ModelError::Retryable {
                        status: None,
                        retry_after: None,
                        message:
                            "malformed stream from the model API: a tool call index out of order"
                                .into(),
                    });
                }
                let i = i as usize;
                if self.calls.len() <= i {
                    self.calls.resize_with(i + 1, Default::default);
                }
                let c = &mut self.calls[i];
                if let Some(id) = call["id"].as_str() {
                    c.0 = id.to_string();
                }
                if let Some(n) = call["function"]["name"].as_str() {
                    c.1.push_str(n);
                }
                if let Some(a) = call["function"]["arguments"].as_str() {
                    c.2.push_str(a);
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                self.finish = Some(f.to_string());
            }
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<ModelResponse, ModelError> {
        if !self.done && self.finish.is_none() {
            return Err(ModelError::Retryable {
                status: None,
                retry_after: None,
                message: "the model stream ended before finish_reason".into(),
            });
        }
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(ContentBlock::text(self.text));
        }
        for (id, name, args) in self.calls {
            let input: Value = if args.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&args).map_err(|_| ModelError::Retryable {
                    status: None,
                    retry_after: None,
                    message: "malformed stream from the model API: tool arguments are not JSON"
                        .into(),
                })?
            };
            // Some servers send no id; a counter would repeat across turns and sessions.
            let id = if id.is_empty() {
                format!("call_{}", uuid::Uuid::now_v7().simple())
            } else {
                id
            };
            let block = json!({"type": "tool_use", "id": id, "name": name, "input": input});
            if let Value::Object(o) = block {
                content.push(ContentBlock::from_object(o).map_err(|e| ModelError::Fatal {
                    status: None,
                    message: e,
                })?);
            }
        }
        let stop_reason = match self.finish.as_deref() {
            Some("tool_calls") | Some("function_call") => "tool_use",
            Some("length") => "max_tokens",
            _ => "end_turn",
        };
        Ok(ModelResponse {
            content,
            stop_reason: stop_reason.into(),
            usage: self.usage,
        })
    }
}

impl OpenAi<'_> {
    /// Sends the request and assembles the streamed answer.
    pub async fn complete(&self, req: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let url = format!("{}/chat/completions", self.base_url.trim_end_matches('/'));
        let mut builder = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body(req).to_string());
        if let Some(key) = self.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let mut asm = Assembler::default();
        sse::stream(builder, self.idle, |ev| {
            asm.apply(&ev.data)?;
            Ok(asm.done)
        })
        .await?;
        asm.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Message, ToolDef};
    use super::*;

    #[test]
    fn translates_tool_calls_and_results_both_ways() {
        let req = ModelRequest {
            model: "llama".into(),
            system: Some("sys".into()),
            tools: vec![ToolDef {
                name: "bash".into(),
                description: "run".into(),
                input_schema: json!({"type": "object"}),
            }],
            messages: vec![
                Message {
                    role: "user".into(),
                    content: vec![json!({"type": "text", "text": "go"})],
                },
                Message {
                    role: "assistant".into(),
                    content: vec![
                        json!({"type": "thinking", "thinking": "x", "signature": "s"}),
                        json!({"type": "tool_use", "id": "call_1", "name": "bash", "input": {"command": "ls"}}),
                    ],
                },
                Message {
                    role: "user".into(),
                    content: vec![
                        json!({"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "a.txt"}]}),
                    ],
                },
            ],
            max_tokens: 50,
        };
        let b = body(&req);
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "sys"}));
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"command\":\"ls\"}"
        );
        assert_eq!(m[2]["content"], Value::Null);
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "a.txt"})
        );
        assert_eq!(b["tools"][0]["function"]["name"], "bash");

        let mut a = Assembler::default();
        for d in [
            r#"{"choices":[{"delta":{"content":"ok "}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_9","function":{"name":"bash","arguments":"{\"com"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"mand\":\"pwd\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#,
            "[DONE]",
        ] {
            a.apply(d).unwrap();
        }
        let r = a.finish().unwrap();
        assert_eq!(r.stop_reason, "tool_use");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (5, 3));
        assert_eq!(
            serde_json::to_value(&r.content).unwrap(),
            json!([{"type": "text", "text": "ok "}, {"type": "tool_use", "id": "call_9", "name": "bash", "input": {"command": "pwd"}}])
        );
    }
}
