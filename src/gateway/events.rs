//! Session events: `GET /v1/sessions/{id}/events` (positional pages, by type) and
//! `POST /v1/sessions/{id}/events` (through `api::Api::send`, so the admission rules and the
//! wake path are the CLI's and the NATS door's). The stream is in [`super::stream`].

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::error::HttpError;
use super::input::{self, Query};
use super::{Shared, Tenant, ok, sessions, view};
use crate::event::{
    Event, EventBody, EventId, StoredEvent, SystemMessage, UserCustomToolResult, UserInterrupt,
    UserMessage, UserToolConfirmation,
};
use crate::session::Slice;

/// The most events one send may carry.
pub const MAX_SEND: usize = 50;

/// The most events one page lists.
pub const MAX_LIST: usize = 1000;

fn fields<T: DeserializeOwned>(
    kind: &str,
    m: &Map<String, Value>,
    known: &[&str],
) -> Result<T, HttpError> {
    input::only(kind, m, known)?;
    let mut m = m.clone();
    m.remove("type");
    if m.remove("session_thread_id").is_some_and(|t| !t.is_null()) {
        return Err(HttpError::invalid(format!(
            "{kind}: session_thread_id: herd sessions have one thread"
        )));
    }
    serde_json::from_value(Value::Object(m)).map_err(|e| HttpError::invalid(format!("{kind}: {e}")))
}

/// One event a client sends, as a herd event with a fresh id. Only the types a client may
/// send are taken; each with exactly its fields.
pub fn parse(v: &Value) -> Result<Event, HttpError> {
    let Value::Object(m) = v else {
        return Err(HttpError::invalid("each event must be an object"));
    };
    let kind = m
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::invalid("each event needs a string \"type\""))?;
    let body: EventBody = match kind {
        "user.message" => {
            let e: UserMessage = fields(kind, m, &["type", "content"])?;
            if e.content.is_empty() {
                return Err(HttpError::invalid(
                    "user.message: content must not be empty",
                ));
            }
            e.into()
        }
        "user.interrupt" => {
            fields::<UserInterrupt>(kind, m, &["type", "session_thread_id"])?.into()
        }
        "user.tool_confirmation" => fields::<UserToolConfirmation>(
            kind,
            m,
            &[
                "type",
                "tool_use_id",
                "result",
                "deny_message",
                "session_thread_id",
            ],
        )?
        .into(),
        "user.custom_tool_result" => fields::<UserCustomToolResult>(
            kind,
            m,
            &[
                "type",
                "custom_tool_use_id",
                "content",
                "is_error",
                "session_thread_id",
            ],
        )?
        .into(),
        "system.message" => fields::<SystemMessage>(kind, m, &["type", "content"])?.into(),
        "user.tool_result" | "user.define_outcome" => {
            return Err(HttpError::invalid(format!(
                "{kind} is not supported by herd's gateway yet"
            )));
        }
        other => {
            return Err(HttpError::invalid(format!(
                "unknown event type {other:?}; a client sends user.message, user.interrupt, user.tool_confirmation, user.custom_tool_result or system.message"
            )));
        }
    };
    Ok(Event::new(body))
}

/// `POST /v1/sessions/{id}/events`: the events in order, each admitted and appended, then the
/// session woken. Answers the events as stored.
pub async fn send(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    input::only("events.send", &body, &["events"])?;
    let mut events = sessions::parse_all(&body)?;
    // herd's addition: with an `Idempotency-Key`, the events' ids derive from it, so a retried
    // POST (the SDK retries 5xx and timeouts) lands each event once: the same key and body
    // again is a duplicate, the same key with another body a 409.
    if let Some(key) = headers.get("idempotency-key") {
        let key = key
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(|| {
                HttpError::invalid("Idempotency-Key must be 1 to 256 visible ASCII characters")
            })?;
        let digest = super::keys::hash(&format!("{}\n{id}\n{key}", t.0));
        for (i, e) in events.iter_mut().enumerate() {
            e.id = EventId::parse(format!("idem_{}_{i}", &digest[..32]))
                .map_err(|e| HttpError::invalid(e.to_string()))?;
        }
    }
    let systems = events
        .iter()
        .filter(|e| e.type_name() == "system.message")
        .count();
    if systems > 1
        || (systems == 1 && events.last().map(Event::type_name) != Some("system.message"))
    {
        return Err(HttpError::invalid(
            "system.message: at most one per request, and it must come last",
        ));
    }
    let (sid, api, _) = sessions::visible(&g, &t.0, &id).await?;
    let mut data = Vec::new();
    for event in events {
        let sent = api.send(&sid, &event).await?;
        data.push(view::event(&StoredEvent {
            session_id: sid.clone(),
            seq: sent.seq,
            event,
        }));
    }
    Ok(ok(json!({"data": data})))
}

/// Checks `types[]`: known event type names.
pub fn types(q: &Query) -> Result<Vec<String>, HttpError> {
    q.all("types")
        .into_iter()
        .map(|t| {
            if EventBody::KNOWN_TYPES.contains(&t) || t == "session.deleted" {
                Ok(t.to_string())
            } else {
                Err(HttpError::invalid(format!(
                    "types: {t:?} is not an event type"
                )))
            }
        })
        .collect()
}

/// `GET /v1/sessions/{id}/events`: oldest first by default; the cursor is the stream
/// sequence of the page's last event.
pub async fn list(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(
        q.as_deref(),
        &input::with_created_at(&["limit", "page", "order", "types"]),
    )?;
    let limit = q.limit(20, MAX_LIST)?;
    let types = types(&q)?;
    let range = q.time_range()?;
    let desc = q.descending(false)?;
    let cursor = input::cursor(q.get("page"))?;
    let (sid, api, _) = sessions::visible(&g, &t.0, &id).await?;
    let wanted = |e: &StoredEvent| {
        let name = e.event.type_name();
        (if types.is_empty() {
            view::shown(name)
        } else {
            types.iter().any(|t| t == name)
        }) && (range.is_open() || range.contains(e.event.processed_at))
    };
    // Read a little past the page, to know whether another shown event follows.
    let chunk = (limit + 1).max(64);
    let mut data = Vec::new();
    let mut last_shown = 0;
    let mut from = match cursor {
        None => 1,
        Some(c) => c
            .checked_add(1)
            .ok_or_else(|| HttpError::invalid("page is not a cursor this API returned"))?,
    };
    let mut to = cursor.map(|c| c.saturating_sub(1));
    loop {
        let slice = if desc {
            if to == Some(0) {
                break;
            }
            Slice {
                to,
                last: Some(chunk),
                types: types.clone(),
                ..Default::default()
            }
        } else {
            Slice {
                from: Some(from),
                limit: Some(chunk),
                types: types.clone(),
                ..Default::default()
            }
        };
        let mut records = api.read(&sid, &slice).await?;
        let n = records.len();
        if desc {
            records.reverse();
        }
        for r in records {
            // Every record moves the window on, a message that is not an event included, so
            // a run of those can never hold a page in place.
            let seq = match &r {
                Ok(e) => e.seq,
                Err(bad) => bad.seq,
            };
            if desc {
                to = Some(seq.saturating_sub(1));
            } else {
                from = seq + 1;
            }
            let Ok(e) = r else { continue };
            if !wanted(&e) {
                continue;
            }
            if data.len() == limit {
                return Ok(ok(
                    json!({"data": data, "next_page": input::next_page(last_shown)}),
                ));
            }
            last_shown = e.seq;
            data.push(view::event(&e));
        }
        if n < chunk {
            break;
        }
    }
    Ok(ok(json!({"data": data, "next_page": null})))
}

/// How long reading one whole output from the object store may take.
pub const OUTPUT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The most bytes of one whole tool output the gateway sends.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// `GET /v1/sessions/{id}/tool_outputs/{tool_use_id}` (herd's addition): the whole output of
/// a call whose `agent.tool_result` kept only its head and tail (`output_ref`), as text. The
/// object's name is derived from the session (already checked to be the caller's) and the
/// call, never taken from an event, so it cannot name another session's output.
pub async fn output(
    State(g): State<Shared>,
    t: Tenant,
    Path((id, call)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let (sid, api, _) = sessions::visible(&g, &t.0, &id).await?;
    // The object store is read directly, not through the log, so the shared tenant rule is
    // asked here as every `Api` read asks it (the index record above is the gateway's own).
    api.may_see(&sid).await?;
    let call = input::id("tool output", "", &call)?;
    let js = async_nats::jetstream::new(api.log().client().clone());
    let name = crate::hands::outputs::object_name(&sid, call);
    let missing = || HttpError::not_found("tool output", call);
    let store = js
        .get_object_store(crate::hands::outputs::BLOBS)
        .await
        .map_err(|e| HttpError::unavailable(format!("the output store is unreachable: {e}")))?;
    let mut object = store.get(name.as_str()).await.map_err(|e| {
        use async_nats::jetstream::object_store::GetErrorKind;
        match e.kind() {
            GetErrorKind::NotFound | GetErrorKind::BucketLink => missing(),
            _ => HttpError::unavailable(format!("reading the output failed: {e}")),
        }
    })?;
    if object.info().size as u64 > MAX_OUTPUT_BYTES {
        return Err(HttpError::too_large(format!(
            "this output is {} bytes; the gateway sends at most {MAX_OUTPUT_BYTES}",
            object.info().size
        )));
    }
    let mut bytes = Vec::with_capacity(object.info().size);
    match tokio::time::timeout(
        OUTPUT_READ_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(HttpError::unavailable(format!(
                "reading the output failed: {e}"
            )));
        }
        Err(_) => {
            return Err(HttpError::unavailable(format!(
                "reading the output took over {} s",
                OUTPUT_READ_TIMEOUT.as_secs()
            )));
        }
    }
    let mut r = Response::new(axum::body::Body::from(bytes));
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        axum::http::HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_sends_its_types_with_exactly_their_fields() {
        let e =
            parse(&json!({"type": "user.message", "content": [{"type": "text", "text": "hi"}]}))
                .unwrap();
        assert_eq!(e.type_name(), "user.message");
        let e = parse(
            &json!({"type": "user.tool_confirmation", "tool_use_id": "toolu_1", "result": "allow"}),
        )
        .unwrap();
        assert_eq!(e.type_name(), "user.tool_confirmation");
        assert!(parse(&json!({"type": "user.interrupt", "session_thread_id": null})).is_ok());
        for (bad, named) in [
            (
                json!({"type": "agent.message", "content": []}),
                "agent.message",
            ),
            (json!({"type": "user.message", "content": []}), "empty"),
            (
                json!({"type": "user.message", "content": "hi", "extra": 1}),
                "extra",
            ),
            (json!({"type": "user.message"}), "content"),
            (
                json!({"type": "user.interrupt", "session_thread_id": "sthr_1"}),
                "session_thread_id",
            ),
            (json!({"type": "user.define_outcome"}), "not supported"),
            (json!({"content": []}), "type"),
            (json!("user.message"), "object"),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.message.contains(named), "{bad}: {}", err.message);
        }
    }
}
