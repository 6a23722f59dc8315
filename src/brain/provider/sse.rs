//! A minimal Server-Sent Events reader over a streaming HTTP body.

use std::time::Duration;

use futures_util::StreamExt;

use super::{ModelError, retry_after};

/// One SSE event: its `event:` name (may be empty) and its joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Reads events from a response body, with an idle timeout between chunks.
pub struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    idle: Duration,
    done: bool,
}

impl SseReader {
    pub fn new(response: reqwest::Response, idle: Duration) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buf: Vec::new(),
            idle,
            done: false,
        }
    }

    /// The next event; `None` when the stream ended cleanly at an event boundary.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ModelError> {
        loop {
            if let Some(ev) = self.take_event() {
                return Ok(Some(ev));
            }
            if self.done {
                return Ok(None);
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    return Err(ModelError::Retryable {
                        status: None,
                        retry_after: None,
                        message: format!("the model stream was silent for {:?}", self.idle),
                    });
                }
                Ok(None) => {
                    self.done = true;
                    // A last event without its blank line still counts.
                    if !self.buf.iter().all(u8::is_ascii_whitespace) {
                        self.buf.extend_from_slice(b"\n\n");
                    }
                }
                Ok(Some(Err(e))) => return Err(ModelError::transport(e)),
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let text = &self.buf;
            let end = text
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, 2))
                .or_else(|| {
                    text.windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| (p, 4))
                })?;
            let block: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
            let block = String::from_utf8_lossy(&block);
            let mut ev = SseEvent {
                event: String::new(),
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !ev.data.is_empty() || !ev.event.is_empty() {
                return Some(ev);
            }
        }
    }
}

/// Sends a streaming request and feeds each event to `on_event` until it reports the message
/// complete (`Ok(true)`) or the stream ends. A non-200 answer becomes a classified error.
pub async fn stream(
    request: reqwest::RequestBuilder,
    idle: Duration,
    mut on_event: impl FnMut(&SseEvent) -> Result<bool, ModelError>,
) -> Result<(), ModelError> {
    let response = request.send().await.map_err(ModelError::transport)?;
    let status = response.status().as_u16();
    if status != 200 {
        let wait = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        return Err(ModelError::from_status(status, wait, &text));
    }
    let mut sse = SseReader::new(response, idle);
    while let Some(ev) = sse.next().await? {
        if on_event(&ev)? {
            break;
        }
    }
    Ok(())
}
