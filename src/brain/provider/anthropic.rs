//! The Anthropic Messages API, streaming.
//!
//! Blocks are rebuilt from the stream exactly as sent: a block starts as the object in
//! `content_block_start`, and each delta extends the field it names (`text`, `thinking`,
//! `signature`, tool input JSON). Thinking signatures and redacted blocks are kept verbatim,
//! since the API requires them back unchanged. Prompt caching marks the stable prefix: the
//! system prompt, the tool list, and the conversation up to the newest message.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::sse;
use super::{ModelError, ModelRequest, ModelResponse};
use crate::config::Secret;
use crate::event::{ContentBlock, Usage};

/// The API version herd speaks.
const API_VERSION: &str = "2023-06-01";

/// One request's worth of client.
pub struct Anthropic<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) base_url: &'a str,
    pub(crate) api_key: &'a Secret,
    pub(crate) idle: Duration,
}

fn cache_mark() -> Value {
    json!({"type": "ephemeral"})
}

/// The request body, with cache breakpoints on the stable prefix (at most 4 are allowed; herd
/// uses 3: system, last tool, last message block).
pub(crate) fn body(req: &ModelRequest) -> Value {
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "stream": true,
        "messages": req.messages,
    });
    if let Some(system) = &req.system {
        body["system"] = json!([{"type": "text", "text": system, "cache_control": cache_mark()}]);
    }
    if !req.tools.is_empty() {
        let mut tools = serde_json::to_value(&req.tools).unwrap_or(Value::Array(vec![]));
        if let Some(last) = tools.as_array_mut().and_then(|t| t.last_mut()) {
            last["cache_control"] = cache_mark();
        }
        body["tools"] = tools;
    }
    if let Some(block) = body["messages"]
        .as_array_mut()
        .and_then(|m| m.last_mut())
        .and_then(|m| m["content"].as_array_mut())
        .and_then(|c| c.last_mut())
        .and_then(Value::as_object_mut)
    {
        block.insert("cache_control".into(), cache_mark());
    }
    body
}

fn usage_from(v: &Value, into: &mut Usage) {
    let get = |k: &str| v.get(k).and_then(Value::as_u64);
    if let Some(n) = get("input_tokens") {
        into.input_tokens = n;
    }
    if let Some(n) = get("output_tokens") {
        into.output_tokens = n;
    }
    if let Some(n) = get("cache_creation_input_tokens") {
        into.cache_creation_input_tokens = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        into.cache_read_input_tokens = n;
    }
}

fn malformed(what: &str) -> ModelError {
    ModelError::Retryable {
        status: None,
        retry_after: None,
        message: format!("malformed stream from the model API: {what}"),
    }
}

/// Accumulates a streamed message.
#[derive(Default)]
pub(crate) struct Assembler {
    blocks: Vec<Map<String, Value>>,
    partial_json: Vec<String>,
    usage: Usage,
    stop_reason: Option<String>,
    pub(crate) done: bool,
}

impl Assembler {
    /// Applies one stream event.
    pub(crate) fn apply(&mut self, event: &str, data: &str) -> Result<(), ModelError> {
        if event == "ping" || data.is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|_| malformed("an event is not JSON"))?;
        let kind = v["type"].as_str().unwrap_or(event);
        let index = v["index"].as_u64().unwrap_or(0);
        // Blocks arrive in order; an index past the next one is malformed (and must not become
        // a huge allocation or a wrapped-around index).
        if index > self.blocks.len() as u64 {
            return Err(malformed("a block index out of order"));
        }
        let index = index as usize;
        match kind {
            "message_start" => usage_from(&v["message"]["usage"], &mut self.usage),
            "content_block_start" => {
                let block = v["content_block"]
                    .as_object()
                    .cloned()
                    .ok_or_else(|| malformed("content_block_start without a block"))?;
                if self.blocks.len() <= index {
                    self.blocks.resize_with(index + 1, Map::new);
                    self.partial_json.resize_with(index + 1, String::new);
                }
                self.blocks[index] = block;
            }
            "content_block_delta" => {
                let block = self
                    .blocks
                    .get_mut(index)
                    .ok_or_else(|| malformed("a delta for a block that never started"))?;
                let delta = &v["delta"];
                let append = |block: &mut Map<String, Value>, field: &str, s: &str| {
                    let cur = block.entry(field).or_insert(Value::String(String::new()));
                    if let Value::String(c) = cur {
                        c.push_str(s);
                    }
                };
                match delta["type"].as_str().unwrap_or("") {
                    "text_delta" => append(block, "text", delta["text"].as_str().unwrap_or("")),
                    "thinking_delta" => {
                        append(block, "thinking", delta["thinking"].as_str().unwrap_or(""))
                    }
                    "signature_delta" => append(
                        block,
                        "signature",
                        delta["signature"].as_str().unwrap_or(""),
                    ),
                    "input_json_delta" => self.partial_json[index]
                        .push_str(delta["partial_json"].as_str().unwrap_or("")),
                    "citations_delta" => {
                        let list = block.entry("citations").or_insert(Value::Array(vec![]));
                        if let Value::Array(l) = list {
                            l.push(delta["citation"].clone());
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let (Some(block), Some(json)) =
                    (self.blocks.get_mut(index), self.partial_json.get(index))
                {
                    if !json.is_empty() {
                        let input: Value = serde_json::from_str(json)
                            .map_err(|_| malformed("a tool call's input is not valid JSON"))?;
                        block.insert("input".into(), input);
                    }
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_string());
                }
                usage_from(&v["usage"], &mut self.usage);
            }
            "message_stop" => self.done = true,
            "error" => {
                let t = v["error"]["type"].as_str().unwrap_or("error");
                let m = v["error"]["message"].as_str().unwrap_or("");
                let message = format!("the model API reported {t}: {m}");
                return Err(match t {
                    "overloaded_error" | "api_error" | "rate_limit_error" => {
                        ModelError::Retryable {
                            status: Some(if t == "overloaded_error" { 529 } else { 500 }),
                            retry_after: None,
                            message,
                        }
                    }
                    _ => ModelError::Fatal {
                        status: None,
                        message,
                    },
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// The finished message.
    pub(crate) fn finish(self) -> Result<ModelResponse, ModelError> {
        if !self.done {
            return Err(ModelError::Retryable {
                status: None,
                retry_after: None,
                message: "the model stream ended before message_stop".into(),
            });
        }
        let content = self
            .blocks
            .into_iter()
            .filter(|b| !b.is_empty())
            .map(|b| ContentBlock::from_object(b).map_err(|e| malformed(&e)))
            .collect::<Result<_, _>>()?;
        Ok(ModelResponse {
            content,
            stop_reason: self.stop_reason.unwrap_or_else(|| "end_turn".into()),
            usage: self.usage,
        })
    }
}

impl Anthropic<'_> {
    /// Sends the request and assembles the streamed answer.
    pub async fn complete(&self, req: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let url = format!("{}/v1/messages", self.base_url.trim_end_matches('/'));
        let request = self
            .http
            .post(&url)
            .header("x-api-key", self.api_key.expose())
            .header("anthropic-version", API_VERSION)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body(req).to_string());
        let mut asm = Assembler::default();
        sse::stream(request, self.idle, |ev| {
            asm.apply(&ev.event, &ev.data)?;
            Ok(asm.done)
        })
        .await?;
        asm.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_text_thinking_and_tool_use_exactly() {
        let mut a = Assembler::default();
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":12,"cache_read_input_tokens":3}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"let me "}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"see"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"bash","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"command\":"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"ls\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":2}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":7}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        for (e, d) in events {
            a.apply(e, d).unwrap();
        }
        let r = a.finish().unwrap();
        assert_eq!(r.stop_reason, "tool_use");
        assert_eq!(
            (
                r.usage.input_tokens,
                r.usage.output_tokens,
                r.usage.cache_read_input_tokens
            ),
            (12, 7, 3)
        );
        assert_eq!(
            serde_json::to_value(&r.content).unwrap(),
            json!([
                {"type": "thinking", "thinking": "let me see", "signature": "c2ln"},
                {"type": "text", "text": "Hi"},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}}
            ])
        );
    }

    #[test]
    fn a_cut_stream_is_retryable() {
        let mut a = Assembler::default();
        a.apply(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        )
        .unwrap();
        assert!(matches!(a.finish(), Err(ModelError::Retryable { .. })));
    }

    #[test]
    fn out_of_order_indexes_are_malformed_not_a_panic() {
        let mut a = Assembler::default();
        let e = a
            .apply("content_block_start", r#"{"type":"content_block_start","index":18446744073709551615,"content_block":{"type":"text","text":""}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        let e = a
            .apply("content_block_delta", r#"{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"x"}}"#)
            .unwrap_err();
        assert!(matches!(e, ModelError::Retryable { .. }));
    }

    #[test]
    fn authentication_error_bodies_are_not_kept() {
        let e = ModelError::from_status(
            401,
            None,
            r#"{"error":{"message":"Incorrect API key provided: sk-abc...wxyz"}}"#,
        );
        assert!(!e.to_string().contains("wxyz"), "{e}");
        assert_eq!(e.kind(), "authentication_error");
    }

    #[test]
    fn stream_errors_are_classified() {
        let mut a = Assembler::default();
        let e = a
            .apply(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
            )
            .unwrap_err();
        assert_eq!(e.kind(), "overloaded_error");
    }

    #[test]
    fn the_body_marks_the_stable_prefix_for_caching() {
        let req = ModelRequest {
            model: "claude-x".into(),
            system: Some("sys".into()),
            tools: vec![super::super::ToolDef {
                name: "bash".into(),
                description: "run".into(),
                input_schema: json!({"type": "object"}),
            }],
            messages: vec![super::super::Message {
                role: "user".into(),
                content: vec![json!({"type": "text", "text": "hi"})],
            }],
            max_tokens: 100,
        };
        let b = body(&req);
        assert_eq!(b["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(b["tools"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            b["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(b["stream"], true);
    }
}
