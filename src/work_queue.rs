//! Taking work off a JetStream work queue with bounded concurrency: shared by brains (wakes)
//! and hands (tool jobs).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::{Stream, StreamExt};
use tokio::sync::Semaphore;

/// The idle heartbeat asked of pull requests. A pull whose consumer moved (a nats node died)
/// is noticed after two missed heartbeats, so this bounds how long a worker sits on a dead
/// pull: with 5 s, hands waited 10 s after a leader loss in the chaos suite.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Runs `handle` on every message of the stream `open` returns, at most `concurrency` at once,
/// until `shutdown` resolves; then waits for the handlers in progress (their acks matter) and
/// returns. Messages not yet taken stay in the stream for other workers.
///
/// When the stream reports an error (a missed heartbeat after a nats node died, a consumer
/// leader that moved) or ends, it is dropped and opened again: a pull stream that has lost
/// track of its consumer can stay silent for tens of seconds otherwise (measured in the chaos
/// suite: tool jobs waited 23 s behind one). Messages it had pulled but not delivered are
/// redelivered after `ack_wait`.
pub async fn pull_loop<S, E, O, OFut, F, Fut>(
    mut open: O,
    concurrency: usize,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> Result<(), String>
where
    S: Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
    O: FnMut() -> OFut,
    OFut: Future<Output = Result<S, String>>,
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    tokio::pin!(shutdown);
    let mut messages = open().await?;
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
        };
        let msg = tokio::select! {
            _ = &mut shutdown => break,
            m = messages.next() => m,
        };
        match msg {
            Some(Ok(m)) => {
                let work = handle(m);
                tokio::spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            failed => {
                match failed {
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Pulling from the work queue failed; reopening the pull.")
                    }
                    _ => tracing::warn!("The work queue's pull ended; reopening it."),
                }
                drop(permit);
                let mut delay = Duration::from_millis(200);
                messages = loop {
                    tokio::select! {
                        _ = &mut shutdown => {
                            drain(&permits, concurrency).await;
                            return Ok(());
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    match open().await {
                        Ok(m) => break m,
                        Err(e) => {
                            tracing::warn!(error = %e, "Reopening the work queue's pull failed; retrying.");
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                    }
                };
            }
        }
    }
    drain(&permits, concurrency).await;
    Ok(())
}

/// Waits for every handler in progress.
async fn drain(permits: &Semaphore, concurrency: usize) {
    let _ = permits.acquire_many(concurrency as u32).await;
}
