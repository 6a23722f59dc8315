//! Taking work off a JetStream work queue with bounded concurrency: shared by brains (wakes)
//! and hands (tool jobs).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::{Stream, StreamExt};
use tokio::sync::Semaphore;

/// Runs `handle` on every message of `messages`, at most `concurrency` at once, until
/// `shutdown` resolves; then waits for the handlers in progress (their acks matter) and
/// returns. Messages not yet taken stay in the stream for other workers.
pub async fn pull_loop<S, E, F, Fut>(
    mut messages: S,
    concurrency: usize,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> Result<(), String>
where
    S: Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    tokio::pin!(shutdown);
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
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Pulling from the work queue failed; retrying.");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => return Err("the message stream ended".into()),
        }
    }
    let _ = permits.acquire_many(concurrency as u32).await;
    Ok(())
}
