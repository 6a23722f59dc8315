//! An MCP client for the hands: the Streamable HTTP transport (MCP 2025-11-25), outside the
//! sandbox, through the hand's address policy, with the server's credential from the vault.
//!
//! Hand-written rather than the official `rmcp` crate: herd needs three requests
//! (`initialize`, `tools/list`, `tools/call`) and one notification, each bounded in bytes and
//! time, sent by the hand's own reqwest client (whose resolver enforces the address policy and
//! which follows no redirect). rmcp 3.11 would add its own client stack (sha2, a second SSE
//! parser, tokio-util) to a two-core build and has no bound on an answer's size. Each call
//! opens its own MCP session and ends it (`DELETE`), so no state is kept between jobs, which
//! may run on any hand.

use std::time::Duration;

use bytes::BytesMut;
use serde_json::{Value, json};

use super::http_request::read_capped;

/// The protocol revision herd asks for (the newest reachable by the `initialize` handshake).
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// The most bytes of one answer (a JSON body or a whole event stream) herd reads.
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// How long listing a server's tools may take, all requests included.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one tool call may take by default, all requests included (the hands'
/// `--mcp-call-timeout-secs`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an MCP request failed. The text never carries the credential (the hand redacts it
/// again before the model sees anything).
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The server could not be reached, or the connection broke.
    #[error("the MCP server could not be reached: {0}")]
    Connect(String),
    /// It answered with an HTTP error.
    #[error("the MCP server answered HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Http {
        /// The status.
        status: u16,
        /// The head of its body.
        body: String,
    },
    /// It answered something that is not MCP.
    #[error("the MCP server's answer is not valid MCP: {0}")]
    Protocol(String),
    /// It answered with a JSON-RPC error.
    #[error("the MCP server refused {method}: {message} (JSON-RPC error {code})")]
    Rpc {
        /// The method.
        method: String,
        /// Its code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The answer was larger than [`MAX_ANSWER`].
    #[error("the MCP server's answer is over {MAX_ANSWER} bytes")]
    TooLarge,
    /// The whole exchange took longer than allowed.
    #[error("the MCP server did not answer within {0} s")]
    Timeout(u64),
}

/// Where an MCP server is, and what authenticates herd to it.
#[derive(Clone)]
pub struct Endpoint {
    /// Its Streamable HTTP URL.
    pub url: String,
    /// The `Authorization` header's value, when the server has a credential.
    pub authorization: Option<String>,
    /// The credential's forms (name, text) to redact from the server's words before they are
    /// cut or kept: a server may echo what it was sent.
    pub redact: Vec<(String, String)>,
}

impl Endpoint {
    /// `text` without the credential, cut to at most `max` bytes (after redaction, so no
    /// prefix of a value survives a cut).
    fn clean(&self, text: &str, max: usize) -> String {
        let mut t = crate::credentials::placeholders::redact(text, &self.redact);
        if t.len() > max {
            let mut end = max;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
            t.push('…');
        }
        t
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .field("redact", &self.redact.len())
            .finish()
    }
}

/// One MCP session with a server: initialised, used, ended.
struct Session<'a> {
    http: &'a reqwest::Client,
    endpoint: &'a Endpoint,
    session_id: Option<String>,
    protocol: String,
    next_id: i64,
}

/// Lists a server's tools (every page of `tools/list`, at most `max_tools`).
pub async fn list_tools(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    max_tools: usize,
) -> Result<Vec<Value>, McpError> {
    bounded(LIST_TIMEOUT, async {
        let mut s = Session::open(http, endpoint).await?;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        let mut bytes = 0usize;
        for _ in 0..64 {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let result = s.request("tools/list", params).await?;
            let page = result
                .get("tools")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    McpError::Protocol("tools/list answered without a tools array".into())
                })?;
            // Every page together stays within one answer's bound.
            bytes += result.to_string().len();
            if bytes > MAX_ANSWER {
                return Err(McpError::TooLarge);
            }
            tools.extend(page.iter().cloned());
            cursor = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(String::from);
            if cursor.is_none() || tools.len() >= max_tools {
                break;
            }
        }
        s.close().await;
        tools.truncate(max_tools);
        Ok(tools)
    })
    .await
}

/// Calls one tool; returns the `tools/call` result (`content`, `isError`, …).
pub async fn call_tool(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    name: &str,
    arguments: &Value,
    timeout: Duration,
) -> Result<Value, McpError> {
    bounded(timeout, async {
        let mut s = Session::open(http, endpoint).await?;
        let result = s
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        s.close().await;
        result
    })
    .await
}

async fn bounded<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, McpError>>,
) -> Result<T, McpError> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(McpError::Timeout(limit.as_secs())))
}

impl<'a> Session<'a> {
    async fn open(http: &'a reqwest::Client, endpoint: &'a Endpoint) -> Result<Self, McpError> {
        let mut s = Self {
            http,
            endpoint,
            session_id: None,
            protocol: PROTOCOL_VERSION.into(),
            next_id: 1,
        };
        let init = s
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "herd", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
            .await?;
        match init.get("protocolVersion").and_then(Value::as_str) {
            Some(v) if v.len() <= 32 && v.chars().all(|c| c.is_ascii_graphic()) => {
                s.protocol = v.to_string();
            }
            Some(_) => {
                return Err(McpError::Protocol(
                    "the protocolVersion it answered is not a short visible-ASCII string".into(),
                ));
            }
            None => {}
        }
        s.notify("notifications/initialized").await?;
        Ok(s)
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.endpoint.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", &self.protocol)
            .body(body.to_string());
        if let Some(a) = &self.endpoint.authorization {
            req = req.header("authorization", a);
        }
        if let Some(id) = &self.session_id {
            req = req.header("mcp-session-id", id);
        }
        req
    }

    async fn send(&self, body: &Value) -> Result<reqwest::Response, McpError> {
        let response = self
            .post(body)
            .send()
            .await
            .map_err(|e| McpError::Connect(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let longest = self
                .endpoint
                .redact
                .iter()
                .map(|(_, f)| f.len())
                .max()
                .unwrap_or(0);
            let (body, _) = read_capped(response, 512 + longest).await;
            return Err(McpError::Http {
                status: status.as_u16(),
                body: self
                    .endpoint
                    .clean(String::from_utf8_lossy(&body).trim(), 512),
            });
        }
        Ok(response)
    }

    async fn notify(&mut self, method: &str) -> Result<(), McpError> {
        self.send(&json!({"jsonrpc": "2.0", "method": method}))
            .await?;
        Ok(())
    }

    /// Sends one request and reads its response, from a JSON body or an event stream (where
    /// the server may send notifications first; they are skipped).
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, McpError> {
        let id = self.next_id;
        self.next_id += 1;
        let response = self
            .send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        if self.session_id.is_none()
            && let Some(sid) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            if sid.len() > 256 || !sid.chars().all(|c| c.is_ascii_graphic()) {
                return Err(McpError::Protocol(
                    "the Mcp-Session-Id header is not visible ASCII of at most 256 characters"
                        .into(),
                ));
            }
            self.session_id = Some(sid.to_string());
        }
        let stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let message = if stream {
            read_event_stream(response, id).await?
        } else {
            let (body, more) = read_capped(response, MAX_ANSWER).await;
            if more {
                return Err(McpError::TooLarge);
            }
            serde_json::from_slice(&body)
                .map_err(|e| McpError::Protocol(format!("the body is not JSON ({e})")))?
        };
        response_of(method, id, message).map_err(|e| match e {
            McpError::Rpc {
                method,
                code,
                message,
            } => McpError::Rpc {
                method,
                code,
                message: self.endpoint.clean(&message, 1000),
            },
            other => other,
        })
    }

    /// Ends the MCP session (best effort: a server that has gone already changes nothing).
    async fn close(self) {
        if let Some(id) = &self.session_id {
            let mut req = self
                .http
                .delete(&self.endpoint.url)
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", &self.protocol)
                .timeout(Duration::from_secs(5));
            if let Some(a) = &self.endpoint.authorization {
                req = req.header("authorization", a);
            }
            let _ = req.send().await;
        }
    }
}

/// The `result` of the JSON-RPC response `message` to request `id`, or its error.
fn response_of(method: &str, id: i64, message: Value) -> Result<Value, McpError> {
    let Value::Object(m) = message else {
        return Err(McpError::Protocol(
            "the answer is not a JSON-RPC object".into(),
        ));
    };
    if m.get("id").and_then(Value::as_i64) != Some(id) {
        return Err(McpError::Protocol(format!(
            "the answer is not the response to request {id}"
        )));
    }
    if let Some(e) = m.get("error") {
        return Err(McpError::Rpc {
            method: method.into(),
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            // Whole here: the session cuts it after redacting the credential.
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string(),
        });
    }
    match m.get("result") {
        Some(r @ Value::Object(_)) => Ok(r.clone()),
        _ => Err(McpError::Protocol(
            "the response has neither an object result nor an error".into(),
        )),
    }
}

/// Reads an SSE stream until the JSON-RPC message answering `id`; at most [`MAX_ANSWER`]
/// bytes in all.
async fn read_event_stream(mut response: reqwest::Response, id: i64) -> Result<Value, McpError> {
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    let mut data = String::new();
    // How much of `buf` is known to hold no newline: a server that dribbles bytes without
    // one costs a scan of each new chunk only, not of the whole buffer again.
    let mut scanned = 0usize;
    loop {
        // Whole lines first.
        while let Some(end) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = buf.split_to(scanned + end + 1);
            scanned = 0;
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() {
                    let message: Value = serde_json::from_str(&data).map_err(|e| {
                        McpError::Protocol(format!("an event's data is not JSON ({e})"))
                    })?;
                    data.clear();
                    if message.get("id").and_then(Value::as_i64) == Some(id)
                        && (message.get("result").is_some() || message.get("error").is_some())
                    {
                        return Ok(message);
                    }
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        scanned = buf.len();
        match response.chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len();
                if total > MAX_ANSWER {
                    return Err(McpError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => {
                return Err(McpError::Protocol(
                    "the event stream ended before the response".into(),
                ));
            }
            Err(e) => return Err(McpError::Connect(e.without_url().to_string())),
        }
    }
}

/// The text the model sees of a `tools/call` result: its text content, other content
/// described, `structuredContent` when there is no content; and whether it is an error.
pub fn result_text(result: &Value) -> (String, bool) {
    let is_error = result
        .get("isError")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut parts: Vec<String> = Vec::new();
    for c in result
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match c.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(c.get("text").and_then(Value::as_str).unwrap_or("").into()),
            Some("image") | Some("audio") => parts.push(format!(
                "[{} content, {}, {} base64 characters, not shown]",
                c["type"].as_str().unwrap_or(""),
                c.get("mimeType")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown type"),
                c.get("data").and_then(Value::as_str).map_or(0, str::len)
            )),
            Some("resource") => {
                let r = &c["resource"];
                match r.get("text").and_then(Value::as_str) {
                    Some(t) => parts.push(t.into()),
                    None => parts.push(format!(
                        "[resource {}]",
                        r.get("uri").and_then(Value::as_str).unwrap_or("")
                    )),
                }
            }
            Some("resource_link") => parts.push(format!(
                "[resource link {}]",
                c.get("uri").and_then(Value::as_str).unwrap_or("")
            )),
            _ => parts.push(c.to_string()),
        }
    }
    if parts.is_empty()
        && let Some(s) = result.get("structuredContent")
    {
        parts.push(s.to_string());
    }
    (parts.join("\n"), is_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_matched_to_their_request() {
        let ok = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": []}});
        assert!(response_of("tools/list", 2, ok.clone()).is_ok());
        assert!(matches!(
            response_of("tools/list", 3, ok),
            Err(McpError::Protocol(_))
        ));
        let err = json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "no such method"}});
        let e = response_of("tools/call", 2, err).unwrap_err().to_string();
        assert!(e.contains("no such method") && e.contains("-32601"), "{e}");
        assert!(matches!(
            response_of("x", 1, json!([1])),
            Err(McpError::Protocol(_))
        ));
        assert!(matches!(
            response_of("x", 1, json!({"id": 1, "result": 5})),
            Err(McpError::Protocol(_))
        ));
    }

    #[test]
    fn a_result_becomes_text() {
        let r = json!({"content": [{"type": "text", "text": "a"}, {"type": "image", "mimeType": "image/png", "data": "AAAA"}], "isError": true});
        let (t, e) = result_text(&r);
        assert!(e);
        assert_eq!(
            t,
            "a\n[image content, image/png, 4 base64 characters, not shown]"
        );
        let (t, e) = result_text(&json!({"structuredContent": {"n": 1}}));
        assert_eq!((t.as_str(), e), ("{\"n\":1}", false));
    }
}
