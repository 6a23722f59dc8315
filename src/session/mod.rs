//! The session plane: each session's durable, append-only event log in `HERD_SESSIONS`.
//!
//! The log is the only source of truth (DESIGN rule 1). This module appends to it (facts
//! unconditionally, brain steps conditionally and atomically), reads it back by position, and
//! folds it into a session's current state.

mod append;
mod check;
mod error;
pub mod fork;
mod read;
mod retry;
mod state;

use std::time::Duration;

use async_nats::jetstream;

pub use append::Appended;
pub use check::{Checker, Outcome, Rule, SessionReport, Violation, check_session};
pub use error::{LogError, MAX_STEP_EVENTS};
pub use read::{READ_BATCH, Slice, to_record as decode_record};
pub use retry::RetryPolicy;
pub use state::{PendingTool, SessionState, Status, ToolKind};

use crate::bus::subjects;

/// A handle on the session log. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct SessionLog {
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl SessionLog {
    /// Opens the log on a connected client. The `HERD_SESSIONS` stream must exist (`herd streams
    /// apply` creates it).
    pub async fn open(client: async_nats::Client) -> Result<Self, LogError> {
        let js = jetstream::new(client.clone());
        let retry = RetryPolicy::default();
        let stream = retry
            .run("open the session stream", |_| async {
                match js.get_stream(subjects::SESSIONS_STREAM).await {
                    Ok(s) => Ok(s),
                    Err(e) if crate::bus::streams::is_stream_not_found(&e) => {
                        Err(retry::Failure::Final(LogError::Invalid(format!(
                            "stream {} is missing ({e}); run `herd streams apply`",
                            subjects::SESSIONS_STREAM
                        ))))
                    }
                    Err(e) => Err(retry::Failure::Transient(e.to_string())),
                }
            })
            .await?;
        Ok(Self {
            client,
            stream,
            retry,
            request_timeout: Duration::from_secs(5),
        })
    }

    /// Replaces the retry policy (tests shorten it; a cluster under maintenance may lengthen it).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how long one request may take before it counts as lost and is retried.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The NATS client underneath.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}
