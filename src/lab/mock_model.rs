//! A local model server speaking the Anthropic Messages and OpenAI chat-completions wire
//! protocols (streaming), scripted per test, recording every request it receives.
//!
//! It is a plain HTTP/1.1 server on loopback: each connection carries one request and the
//! response ends by closing it, which both protocols' clients accept for event streams.
//! Replies come from a queue; when it is empty, a default reply answers. A reply can also be
//! an error status (with `Retry-After`), a stream cut in the middle, or a hang.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete answer: content blocks (text, tool_use, thinking) and a stop reason.
    Turn {
        /// Content blocks, Anthropic-shaped.
        content: Vec<Value>,
        /// `end_turn`, `tool_use`, …
        stop_reason: String,
    },
    /// An HTTP error status, optionally with `Retry-After` in seconds.
    Status {
        /// The status code.
        code: u16,
        /// `Retry-After`, seconds.
        retry_after: Option<u64>,
    },
    /// The stream starts, then the connection closes before the message ends.
    CutStream,
    /// Headers never come; the connection stays open for this long.
    Hang(Duration),
    /// This reply, after this long (a slow model call for one session only).
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// A text answer that ends the turn.
    pub fn text(t: &str) -> Self {
        Self::Turn {
            content: vec![json!({"type": "text", "text": t})],
            stop_reason: "end_turn".into(),
        }
    }

    /// A tool call.
    pub fn tool_use(id: &str, name: &str, input: Value) -> Self {
        Self::Turn {
            content: vec![json!({"type": "tool_use", "id": id, "name": name, "input": input})],
            stop_reason: "tool_use".into(),
        }
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path (`/v1/messages` or `…/chat/completions`).
    pub path: String,
    /// Request headers, lowercased names.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Value,
    /// When its first byte arrived.
    pub at: Instant,
}

/// Answers a request from its JSON body, when the reply queue is empty.
pub type Responder = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    replies: VecDeque<Reply>,
    responder: Option<Responder>,
    received: Vec<Received>,
    delay: Duration,
}

/// The running server. Dropping it stops accepting connections.
pub struct MockModel {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockModel {
    /// Starts a server on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr` (`herd lab mock-model`, for the demo without a model key).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, s).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The base URL for `ANTHROPIC_BASE_URL`.
    pub fn anthropic_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL for `OPENAI_BASE_URL`.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues replies, answered in order.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().replies.extend(replies);
    }

    /// Answers requests with `f` whenever the queue is empty (instead of a plain "ok").
    pub fn set_responder(&self, f: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.lock().responder = Some(Arc::new(f));
    }

    /// Delays every answer's first byte (a slow model).
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.lock().received.len()
    }

    /// Forgets the received requests.
    pub fn clear_received(&self) {
        self.lock().received.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn read_request(
    conn: &mut TcpStream,
) -> std::io::Result<Option<(String, Vec<(String, String)>, Vec<u8>, Instant)>> {
    let mut buf = Vec::new();
    let mut first_at = None;
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        first_at.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((
        path,
        headers,
        body,
        first_at.unwrap_or_else(Instant::now),
    )))
}

fn anthropic_events(content: &[Value], stop_reason: &str) -> Vec<String> {
    let mut out = vec![json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 25, "output_tokens": 1}}}).to_string()];
    for (i, block) in content.iter().enumerate() {
        match block["type"].as_str() {
            Some("text") => {
                out.push(json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}).to_string());
                let text = block["text"].as_str().unwrap_or("");
                let mid = text
                    .char_indices()
                    .nth(text.chars().count() / 2)
                    .map_or(0, |(p, _)| p);
                for part in [&text[..mid], &text[mid..]] {
                    out.push(json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": part}}).to_string());
                }
            }
            Some("tool_use") => {
                out.push(json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}).to_string());
                out.push(json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": block["input"].to_string()}}).to_string());
            }
            Some("thinking") => {
                out.push(json!({"type": "content_block_start", "index": i, "content_block": {"type": "thinking", "thinking": ""}}).to_string());
                out.push(json!({"type": "content_block_delta", "index": i, "delta": {"type": "thinking_delta", "thinking": block["thinking"]}}).to_string());
                out.push(json!({"type": "content_block_delta", "index": i, "delta": {"type": "signature_delta", "signature": block["signature"]}}).to_string());
            }
            _ => out.push(
                json!({"type": "content_block_start", "index": i, "content_block": block})
                    .to_string(),
            ),
        }
        out.push(json!({"type": "content_block_stop", "index": i}).to_string());
    }
    out.push(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 10}}).to_string());
    out.push(json!({"type": "message_stop"}).to_string());
    out
}

fn openai_events(content: &[Value], stop_reason: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut call = 0;
    for block in content {
        match block["type"].as_str() {
            Some("text") => out.push(
                json!({"choices": [{"index": 0, "delta": {"content": block["text"]}}]}).to_string(),
            ),
            Some("tool_use") => {
                out.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": call, "id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": block["input"].to_string()}}]}}]}).to_string());
                call += 1;
            }
            _ => {}
        }
    }
    let finish = if stop_reason == "tool_use" {
        "tool_calls"
    } else {
        "stop"
    };
    out.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}).to_string());
    out.push(
        json!({"choices": [], "usage": {"prompt_tokens": 25, "completion_tokens": 10}}).to_string(),
    );
    out.push("[DONE]".into());
    out
}

async fn serve(mut conn: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some((path, headers, body, at)) = read_request(&mut conn).await? else {
        return Ok(());
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (reply, delay) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let reply = match s.replies.pop_front() {
            Some(r) => r,
            None => match &s.responder {
                Some(f) => f(&body),
                None => Reply::text("ok"),
            },
        };
        s.received.push(Received {
            path: path.clone(),
            headers,
            body,
            at,
        });
        (reply, s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut reply = reply;
    while let Reply::Delayed(d, inner) = reply {
        tokio::time::sleep(d).await;
        reply = *inner;
    }
    let openai = path.ends_with("/chat/completions");
    match reply {
        Reply::Delayed(..) => unreachable!("unwrapped above"),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Reply::Status { code, retry_after } => {
            let body = json!({"type": "error", "error": {"type": "mock_error", "message": format!("mock status {code}")}}).to_string();
            let retry = retry_after
                .map(|s| format!("retry-after: {s}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 {code} Mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body.as_bytes()).await?;
            conn.shutdown().await
        }
        Reply::Turn { .. } | Reply::CutStream => {
            let (content, stop) = match &reply {
                Reply::Turn {
                    content,
                    stop_reason,
                } => (content.clone(), stop_reason.clone()),
                _ => (
                    vec![json!({"type": "text", "text": "this answer will be cut off"})],
                    "end_turn".into(),
                ),
            };
            let events = if openai {
                openai_events(&content, &stop)
            } else {
                anthropic_events(&content, &stop)
            };
            let events = if matches!(reply, Reply::CutStream) {
                events[..events.len() / 2].to_vec()
            } else {
                events
            };
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n").await?;
            for data in events {
                let name = serde_json::from_str::<Value>(&data)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(String::from));
                let frame = match (openai, name) {
                    (false, Some(n)) => format!("event: {n}\ndata: {data}\n\n"),
                    _ => format!("data: {data}\n\n"),
                };
                conn.write_all(frame.as_bytes()).await?;
            }
            conn.flush().await?;
            conn.shutdown().await
        }
    }
}

/// True when the newest message of a model request carries a `tool_result`: a responder's way
/// to tell "answer the tool's output" from "a new question" (Anthropic wire format).
pub fn answers_a_tool_result(body: &Value) -> bool {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| {
            m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["type"] == "tool_result")
        })
}

/// The demo's answers when no model key is set: a question gets one `bash` call that shows
/// where it ran; the call's output gets a sentence quoting it.
pub fn demo_reply(body: &Value) -> Reply {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let result = last["content"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["type"] == "tool_result")
        .cloned();
    match result {
        Some(r) => {
            let text: String = match &r["content"] {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.iter().filter_map(|b| b["text"].as_str()).collect(),
                _ => String::new(),
            };
            Reply::text(&format!("The sandbox answered: {}", text.trim()))
        }
        None => Reply::tool_use(
            &format!("toolu_demo_{}", messages.len()),
            "bash",
            json!({"command": "echo \"hello from $(hostname) as $(id -un), $(uname -sm)\""}),
        ),
    }
}
