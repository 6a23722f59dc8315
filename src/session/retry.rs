//! Retrying JetStream requests through leader elections, reconnects and restarts.
//!
//! Every attempt of a write carries the same message ids, so a write that landed but whose ack
//! was lost is deduplicated by the server, never stored twice (DESIGN rule 2). The total time is
//! kept well inside the stream's two-minute duplicate window, where that guarantee holds.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::error::LogError;

/// How long and how often to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up after this long (must stay under the duplicate window of 2 minutes).
    pub max_elapsed: Duration,
    /// The first delay.
    pub initial_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_elapsed: Duration::from_secs(30),
            initial_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// What one attempt ended with.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another attempt (timeouts, no responders during a leader election, 503s).
    Transient(String),
    /// Final.
    Final(LogError),
}

impl From<LogError> for Failure {
    fn from(e: LogError) -> Self {
        Self::Final(e)
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails finally, or the time is up.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, LogError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let start = Instant::now();
        let mut delay = self.initial_delay;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(msg)) => {
                    if start.elapsed() + delay > self.max_elapsed {
                        return Err(LogError::Unavailable {
                            attempts: attempt,
                            elapsed_ms: start.elapsed().as_millis() as u64,
                            last: msg,
                        });
                    }
                    tracing::warn!(what, attempt, error = %msg, "Retrying a NATS request.");
                    // Full jitter between half and all of the delay spreads out clients that
                    // lost the server at the same moment.
                    let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
                    tokio::time::sleep(jittered).await;
                    delay = (delay * 2).min(self.max_delay);
                }
            }
        }
    }
}
