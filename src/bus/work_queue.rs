//! The delivery shell both workers run: taking work off a JetStream work queue with bounded
//! concurrency (brains: wakes; hands: tool jobs), keeping it alive while it runs, and saying
//! what became of it — acknowledged, redelivered later, or refused and dead-lettered.
//!
//! What a message *means* is the worker's business; how it is delivered is decided here once:
//!
//! * [`ConsumerSpec::ensure`]: the durable pull consumer, created or updated at start;
//! * [`run`]: pull from one or more consumers, at most `concurrency` handlers at once, reopen
//!   a pull that went silent, and drain on shutdown;
//! * [`Delivery`]: one message: its delivery count, a progress heartbeat, `ack`, `nak` with
//!   [`redelivery_delay`], `term`, and [`Delivery::dead_letter`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::BusError;
use crate::tasks::AbortOnDrop;

/// A durable pull consumer a worker takes work from.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The work-queue stream.
    pub stream: &'static str,
    /// The durable name, shared by every worker of its kind.
    pub durable: String,
    /// What it is for, for `nats consumer info`.
    pub description: String,
    /// The subjects it takes (consumers of one work queue must not overlap).
    pub filter: String,
    /// How long a message may go without an ack or heartbeat before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one message before the server stops redelivering it.
    pub max_deliver: i64,
    /// Redelivery delays after a missed ack; empty for `ack_wait` every time.
    pub backoff: Vec<Duration>,
}

impl ConsumerSpec {
    /// The server's configuration for this consumer.
    pub fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(self.description.clone()),
            filter_subject: self.filter.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            backoff: self.backoff.clone(),
            max_ack_pending: 10_000,
            ..Default::default()
        }
    }

    /// Creates the consumer, or updates it to this configuration, and returns it.
    ///
    /// A request that timed out (or, for the stream lookup, went unanswered) is asked again (up to [`ENSURE_ATTEMPTS`] times, with a short
    /// growing pause): creating a durable with the same configuration is idempotent, and a
    /// loaded or electing server answering one API request late must not stop a worker from
    /// starting. What the server refused (a bad configuration, a missing stream) is final.
    pub async fn ensure(
        &self,
        js: &jetstream::Context,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        use async_nats::jetstream::stream::ConsumerErrorKind;
        let mut attempt = 1;
        loop {
            let last = attempt >= ENSURE_ATTEMPTS;
            let stream = match js.get_stream(self.stream).await {
                Ok(s) => s,
                Err(e) if !last && e.kind() == GetStreamErrorKind::Request => {
                    attempt = pause(attempt).await;
                    continue;
                }
                Err(e) => {
                    return Err(BusError::nats(
                        format!("stream {} is missing", self.stream),
                        e,
                    ));
                }
            };
            match stream.create_consumer(self.config()).await {
                Ok(c) => return Ok(c),
                Err(e) if !last && e.kind() == ConsumerErrorKind::TimedOut => {
                    attempt = pause(attempt).await;
                }
                Err(e) => {
                    return Err(BusError::nats(
                        format!("cannot create consumer {}", self.durable),
                        e,
                    ));
                }
            }
        }
    }
}

/// How often [`ConsumerSpec::ensure`] asks before a timeout is final.
pub const ENSURE_ATTEMPTS: u32 = 5;

/// Waits before attempt `attempt + 1` (0.2 s, 0.4 s, 0.8 s, …) and returns its number.
async fn pause(attempt: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
    attempt + 1
}

/// How long a message that failed for a passing reason waits before it is delivered again:
/// 0.5 s after the first delivery, doubling up to 16 s, so a struggling dependency is not
/// hammered and a passing one is retried soon.
pub fn redelivery_delay(delivered: i64) -> Duration {
    Duration::from_millis(250 * (1 << delivered.clamp(0, 6)))
}

/// A worker's concurrency slot, held by the delivery it was taken for.
struct Slot {
    permit: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    permits: Arc<Semaphore>,
}

/// One message taken off a work queue.
pub struct Delivery {
    msg: jetstream::Message,
    /// How often it has been delivered, this time included.
    pub delivered: i64,
    /// Its sequence in the work-queue stream (stable across redeliveries).
    pub stream_seq: u64,
    slot: Option<Slot>,
}

impl Delivery {
    /// Wraps a pulled message (holding no slot).
    pub fn new(msg: jetstream::Message) -> Self {
        let (delivered, stream_seq) = msg
            .info()
            .map(|i| (i.delivered, i.stream_sequence))
            .unwrap_or((1, 0));
        Self {
            msg,
            delivered,
            stream_seq,
            slot: None,
        }
    }

    /// Gives the worker's concurrency slot back while `wait` runs, then takes one again
    /// (waiting for it like any new delivery). For waits only another handler can end, such
    /// as a session's lock: eight calls of one session queued behind its running one hold no
    /// slot, so another session's work still starts at once (N18).
    pub async fn without_slot<T>(&self, wait: impl Future<Output = T>) -> T {
        let Some(slot) = &self.slot else {
            return wait.await;
        };
        drop(slot.permit.lock().unwrap_or_else(|p| p.into_inner()).take());
        let out = wait.await;
        if let Ok(p) = slot.permits.clone().acquire_owned().await {
            *slot.permit.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        }
        out
    }

    /// The message.
    pub fn message(&self) -> &jetstream::Message {
        &self.msg
    }

    /// Sends a progress heartbeat (`+WPI`) every `every` until the returned guard is dropped,
    /// then runs `also` (a brain renews its session lease on the same beat). A failed beat (a
    /// reconnect) is retried at the next tick, never fatal.
    pub fn keep_alive<F, Fut>(&self, every: Duration, also: F) -> AbortOnDrop
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let acker = self.msg.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = acker.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "A work-queue heartbeat failed.");
                }
                also().await;
            }
        }))
    }

    /// Acknowledges it (waiting for the server's confirmation): done, never redelivered.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.msg
            .double_ack()
            .await
            .map_err(|e| BusError::nats("acknowledging", e))
    }

    /// Asks for it to be redelivered after `delay`.
    pub async fn nak(&self, delay: Duration) {
        let _ = self.msg.ack_with(AckKind::Nak(Some(delay))).await;
    }

    /// Asks for it to be redelivered after [`redelivery_delay`].
    pub async fn nak_with_backoff(&self) {
        self.nak(redelivery_delay(self.delivered)).await;
    }

    /// Stops its redelivery for good.
    pub async fn term(&self) {
        let _ = self.msg.ack_with(AckKind::Term).await;
    }

    /// Publishes the message to a dead-letter subject with the reason (`Herd-Error`, on one
    /// line) and its subject (`Herd-Original-Subject`), then terminates it. When the dead
    /// letter cannot be stored, the message comes back in 5 s rather than lose the evidence.
    pub async fn dead_letter(
        &self,
        js: &jetstream::Context,
        subject: &str,
        why: &str,
        message_id: Option<String>,
    ) {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Herd-Error", why.replace(['\r', '\n'], " ").as_str());
        h.insert("Herd-Original-Subject", self.msg.subject.as_str());
        if let Some(id) = message_id {
            h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        let stored = match js
            .publish_with_headers(subject.to_string(), h, self.msg.payload.clone())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            self.term().await;
        } else {
            self.nak(Duration::from_secs(5)).await;
        }
    }
}

/// Whether a work queue holds a message on `filter`: waiting, or taken and not yet
/// acknowledged (a work queue keeps a message until its ack). `true` when the server cannot
/// say (a leader election): a caller that gives up on work it finds missing must never do so
/// on a failed read.
pub async fn holds(stream: &jetstream::stream::Stream, filter: &str) -> bool {
    use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
    match stream.get_last_raw_message_by_subject(filter).await {
        Ok(_) => true,
        Err(e) => e.kind() != K::NoMessageFound,
    }
}

/// Pulls from `consumers` (their messages merged into one stream, opened again after errors)
/// and runs `handle` on each message, at most `concurrency` at once, until `shutdown`
/// resolves; see [`pull_loop`].
pub async fn run<F, Fut>(
    consumers: Vec<jetstream::consumer::Consumer<pull::Config>>,
    concurrency: usize,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> Result<(), BusError>
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let batch = concurrency.clamp(1, 256);
    let open = || {
        let consumers = consumers.clone();
        async move {
            let mut merged: Option<futures_util::stream::BoxStream<'static, _>> = None;
            for c in consumers {
                let messages = c
                    .stream()
                    .max_messages_per_batch(batch)
                    .heartbeat(PULL_HEARTBEAT)
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map_err(|e| BusError::nats("opening a pull", e))?;
                merged = Some(match merged {
                    None => messages.boxed(),
                    Some(m) => futures_util::stream::select(m, messages).boxed(),
                });
            }
            merged.ok_or_else(|| BusError::nats("opening a pull", "no consumers"))
        }
    };
    pull_loop(open, concurrency, shutdown, |m, permit, permits| {
        let mut d = Delivery::new(m);
        d.slot = Some(Slot {
            permit: std::sync::Mutex::new(Some(permit)),
            permits,
        });
        handle(d)
    })
    .await
}

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
async fn pull_loop<S, E, O, OFut, F, Fut>(
    mut open: O,
    concurrency: usize,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> Result<(), BusError>
where
    S: Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
    O: FnMut() -> OFut,
    OFut: Future<Output = Result<S, BusError>>,
    F: Fn(jetstream::Message, OwnedSemaphorePermit, Arc<Semaphore>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    tokio::pin!(shutdown);
    let mut messages = open().await?;
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.map_err(|e| BusError::nats("taking a slot", e))?,
        };
        let msg = tokio::select! {
            _ = &mut shutdown => break,
            m = messages.next() => m,
        };
        match msg {
            Some(Ok(m)) => {
                // The handler holds the slot (and frees it when done, or while it waits).
                tokio::spawn(handle(m, permit, permits.clone()));
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

/// Waits for every handler in progress (one waiting without its slot is not waited for: its
/// message is redelivered after `ack_wait`).
async fn drain(permits: &Semaphore, concurrency: usize) {
    let _ = permits.acquire_many(concurrency as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_waits_longer_each_time_up_to_a_bound() {
        assert_eq!(redelivery_delay(1), Duration::from_millis(500));
        assert_eq!(redelivery_delay(2), Duration::from_secs(1));
        assert_eq!(redelivery_delay(6), Duration::from_secs(16));
        assert_eq!(redelivery_delay(60), Duration::from_secs(16));
        assert_eq!(redelivery_delay(-1), Duration::from_millis(250));
    }

    #[test]
    fn a_consumer_spec_is_an_explicit_ack_durable() {
        let spec = ConsumerSpec {
            stream: "S",
            durable: "d".into(),
            description: "x".into(),
            filter: "a.>".into(),
            ack_wait: Duration::from_secs(3),
            max_deliver: 4,
            backoff: vec![],
        };
        let c = spec.config();
        assert_eq!(c.durable_name.as_deref(), Some("d"));
        assert_eq!(c.ack_policy, jetstream::consumer::AckPolicy::Explicit);
        assert_eq!((c.ack_wait, c.max_deliver), (Duration::from_secs(3), 4));
    }
}
