//! Events: ids, the envelope and every event type, and their wire encoding. No I/O.
//!
//! On the wire an event is one flat object, as in the Managed Agents API:
//! `{"id": "sevt_…", "type": "user.message", "processed_at": "2026-…Z", "content": […]}`,
//! encoded as MessagePack with named fields. Readers also accept JSON, so systems in other
//! languages can publish events with any NATS client.

mod body;
mod codec;
mod config;
mod ids;
mod pricing;
pub mod tools;

pub use body::*;
pub use codec::{
    CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, DecodeError, Encoding, decode_to_json, format_time,
};
pub use config::*;
pub use ids::{EventId, IdError, MAX_ID_LEN, SessionId, check_token};
pub use pricing::*;
pub use tools::{McpServer, McpTool, McpToolPolicy, Runner, ToolType};

use time::OffsetDateTime;

/// An event: its id, when it was made, and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique id; the `Nats-Msg-Id` that deduplicates appends.
    pub id: EventId,
    /// When the writer made the event (UTC). The log's order is the stream sequence, not this.
    pub processed_at: OffsetDateTime,
    /// What happened.
    pub body: EventBody,
}

impl Event {
    /// A new event with a fresh id, stamped now.
    pub fn new(body: impl Into<EventBody>) -> Self {
        Self::with_id(EventId::generate(), body)
    }

    /// A new event with a given id (a derived or client-chosen id), stamped now.
    pub fn with_id(id: EventId, body: impl Into<EventBody>) -> Self {
        Self {
            id,
            processed_at: OffsetDateTime::now_utc(),
            body: body.into(),
        }
    }

    /// The event's type name.
    pub fn type_name(&self) -> &str {
        self.body.type_name()
    }
}

/// An event as stored in a session's log, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Its stream sequence: the event's position, unique across the stream.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

/// A stored message that is not a valid event (published by hand, or by a buggy writer). Readers
/// report it and carry on; it never stops a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidRecord {
    /// The session whose subject it was published on.
    pub session_id: SessionId,
    /// Its stream sequence.
    pub seq: u64,
    /// The subject it was published on.
    pub subject: String,
    /// Why it could not be decoded.
    pub error: String,
}

/// One entry of a session's log: an event, or a message that is not one.
pub type Record = Result<StoredEvent, InvalidRecord>;
