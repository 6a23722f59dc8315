//! Errors of the session log, classified by what the caller should do about them.

use crate::event::SessionId;

/// The most events one step may hold: JetStream's limit on an atomic batch.
pub const MAX_STEP_EVENTS: usize = 1000;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `create` found the session already has events.
    #[error("session {0} already exists")]
    AlreadyExists(SessionId),
    /// The session has no events.
    #[error("session {0} does not exist")]
    NotFound(SessionId),
    /// A conditional append lost a race: the session moved on since the caller read it. Reload
    /// and decide again; never force the write.
    #[error(
        "the session moved on: the step was decided at sequence {expected}, but its last event is now at {actual}"
    )]
    Conflict {
        /// The sequence the caller decided from.
        expected: u64,
        /// The session's actual last sequence.
        actual: u64,
    },
    /// An event encodes larger than the server accepts.
    #[error(
        "event {event_id} ({event_type}) is {size} bytes with its headers; the server accepts at most {max} bytes per message (put large outputs in the object store)"
    )]
    TooLarge {
        /// The event's id.
        event_id: String,
        /// Its type.
        event_type: String,
        /// Its encoded size with headers.
        size: usize,
        /// The server's `max_payload`.
        max: usize,
    },
    /// The input is not acceptable as it is.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A bounded read of a session passed its byte budget and was abandoned (N20).
    #[error("the session's log holds more than {max} bytes; it was not read whole")]
    SessionTooLarge {
        /// The budget.
        max: u64,
    },
    /// The event's message id is held by another message (another session's, or one that
    /// set this session's id on its own): nothing was stored. The id frees up when the
    /// stream's duplicate window (2 minutes) has passed.
    #[error(
        "message id {message_id} is already used by the message at sequence {seq}, which is not this event; nothing was stored (retry after the 2-minute duplicate window, or use another event id)"
    )]
    IdTaken {
        /// The message id.
        message_id: String,
        /// Where the other message is.
        seq: u64,
    },
    /// JetStream refused the write for a reason retrying will not fix.
    #[error("JetStream refused the write: {description} (err_code {err_code})")]
    Rejected {
        /// JetStream's error code (see nats-server's errors.json).
        err_code: u64,
        /// Its description.
        description: String,
    },
    /// NATS did not answer in time, through every retry.
    #[error(
        "the session log is unavailable: NATS did not answer after {attempts} attempts over {elapsed_ms} ms; the last error was: {last}"
    )]
    Unavailable {
        /// How many attempts were made.
        attempts: u32,
        /// Over how long.
        elapsed_ms: u64,
        /// The last error seen.
        last: String,
    },
}

impl LogError {
    /// True when the same call may succeed later (the server was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
