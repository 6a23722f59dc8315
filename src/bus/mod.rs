//! What travels between the planes: the contracts every plane and every outside system share.
//!
//! * [`subjects`]: the NATS subject layout, built in one place;
//! * [`streams`]: the stream, consumer and bucket definitions (`streams/*.json`);
//! * [`wake`]: the wake protocol: how anything asks a brain to look at a session;
//! * [`jobs`]: tool jobs from the brain to the hands, and the ids of their results;
//! * [`routing`]: where a job goes (the pool, or the host holding the session's sandbox);
//! * [`work_queue`]: the delivery shell both workers run: pull, heartbeat, nak with backoff,
//!   dead-letter.
//!
//! Nothing here decides anything about a session; it only moves and names messages. No plane
//! imports another plane: brains and hands meet here.

pub mod jobs;
pub mod routing;
pub mod schedules;
pub mod streams;
pub mod subjects;
pub mod wake;
pub mod work_queue;
pub mod workspace_jobs;

/// A NATS operation of the bus failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The server refused or did not answer.
    #[error("{op}: {detail}")]
    Nats {
        /// What was being done.
        op: String,
        /// The client's or server's error.
        detail: String,
    },
}

impl BusError {
    /// A failed NATS operation, with what was being done.
    pub fn nats(op: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Nats {
            op: op.into(),
            detail: e.to_string(),
        }
    }
}
