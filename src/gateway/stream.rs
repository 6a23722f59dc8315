//! `GET /v1/sessions/{id}/events/stream`: Server-Sent Events straight from the log.
//!
//! The subscription (an ordered consumer from the session's next sequence) exists before the
//! response's headers go out, so an event sent right after `stream()` returns is never
//! missed. Each frame is `id: <stream sequence>`, `event: <type>`, `data: <event JSON>`;
//! the `id` is herd's addition, so a browser's EventSource that reconnects with
//! `Last-Event-ID` gets exactly the events after the last one it saw. A comment line every
//! 15 s keeps proxies from closing a quiet stream and tells the gateway when a client left.
//! The stream closes after the session is deleted (`session.deleted`, as the API sends it).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::json;

use super::error::HttpError;
use super::input::Query;
use super::{Shared, Tenant, sessions, view};
use crate::event::{EventBody, Record, format_time};

/// How long a client may leave a frame unread (its buffer full) before its stream is
/// dropped: a reader that stopped reading must not hold a stream slot for good.
pub const SLOW_READER: Duration = Duration::from_secs(60);

/// How often a quiet stream gets a keepalive comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

fn frame(id: Option<u64>, event: &str, data: &serde_json::Value) -> Bytes {
    let mut s = String::new();
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    // serde_json never writes a raw newline inside a value, so data is one line.
    s.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    Bytes::from(s)
}

/// `Last-Event-ID`: the stream sequence of the last event the client saw.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                HttpError::invalid("Last-Event-ID must be the id: of a frame this stream sent")
            }),
    }
}

/// The stream handler.
pub async fn stream(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let q = Query::parse(q.as_deref(), &["event_deltas", "types"])?;
    // herd's addition, as on the list: `types[]` streams only those types, herd's own
    // (`sandbox.*`, …) included when named; without it, the API's types.
    let types = super::events::types(&q)?;
    for d in q.all("event_deltas") {
        if d != "agent.message" && d != "agent.thinking" {
            return Err(HttpError::invalid(format!(
                "event_deltas: {d:?}; expected agent.message or agent.thinking"
            )));
        }
    }
    let resume = last_event_id(&headers)?;
    let (sid, api, _) = sessions::visible(&g, &t.0, &id).await?;
    let tenant_slot = g.tenant_stream(&t.0)?;
    let permit = g.streams.clone().try_acquire_owned().map_err(|_| {
        HttpError::busy(
            "this gateway holds as many streams as it may; retry, or use another gateway",
        )
    })?;
    let from = match resume {
        Some(seq) => seq
            .checked_add(1)
            .ok_or_else(|| HttpError::invalid("Last-Event-ID is out of range"))?,
        None => {
            api.log()
                .last_sequence(&sid)
                .await
                .map_err(crate::api::ApiError::from)?
                + 1
        }
    };
    let mut follow = api.follow(&sid, from).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let session = sid.clone();
    let (gw, key_hash) = (g.clone(), t.1.clone());
    tokio::spawn(async move {
        let _permit = (permit, tenant_slot);
        let hello = format!(": herd stream of {session} from sequence {from}\n\n");
        if tx.send(Bytes::from(hello)).await.is_err() {
            return;
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        loop {
            let next = tokio::select! {
                r = follow.next() => r,
                // The client went away (the body was dropped): give the slot and the
                // consumer back now, not at the next keepalive.
                _ = tx.closed() => return,
                _ = keepalive.tick() => {
                    // A key revoked since the stream opened ends it.
                    if let Err(e) = gw.tenant_of_hash(&key_hash).await
                        && e.status == axum::http::StatusCode::UNAUTHORIZED
                    {
                        let _ = tx.send(frame(None, "error", &e.envelope("stream"))).await;
                        return;
                    }
                    let sent = tokio::time::timeout(SLOW_READER, tx.send(Bytes::from_static(b": keepalive\n\n"))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        return;
                    }
                    continue;
                }
            };
            let record: Record = match next {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let err = HttpError::unavailable(format!("following the session failed: {e}"));
                    let _ = tx.send(frame(None, "error", &err.envelope("stream"))).await;
                    return;
                }
                None => return,
            };
            let Ok(e) = record else { continue };
            let name = e.event.type_name();
            let wanted = if types.is_empty() {
                view::shown(name)
            } else {
                types.iter().any(|t| t == name)
            };
            if wanted {
                let sent = tokio::time::timeout(
                    SLOW_READER,
                    tx.send(frame(Some(e.seq), name, &view::event(&e))),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
            // A session that ended for good sends nothing more: the stream ends with it
            // (after `session.deleted`, as the API sends it, when it was deleted).
            if let EventBody::SessionStatusTerminated(term) = &e.event.body {
                if term.reason == "deleted" {
                    let gone = json!({
                        "id": format!("sevt_deleted_{session}"),
                        "type": "session.deleted",
                        "processed_at": format_time(e.event.processed_at),
                    });
                    let _ = tokio::time::timeout(
                        SLOW_READER,
                        tx.send(frame(Some(e.seq), "session.deleted", &gone)),
                    )
                    .await;
                }
                return;
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}
