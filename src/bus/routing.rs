//! Where a tool job goes: the publisher's half of the hand registry.
//!
//! Every hand announces `host.<host>` in the `herd-hands` KV bucket with a TTL and renews it
//! while it runs (`hands::registry`); a hand that dies simply expires. A session's later jobs go
//! to the host that holds its sandbox (its latest `sandbox.provisioned` event) while that host
//! is alive, so calls share one workspace; when the host is gone they go to the shared pool,
//! and the hand that provisions the new sandbox tells the model.
//!
//! This half lives in `bus/` because the brain publishes jobs: it reads the registry, it never
//! writes it.

use async_nats::jetstream::{self, kv};

use super::BusError;
use super::jobs::ToolJob;
use super::subjects;
use crate::event::{EventBody, SessionId, StoredEvent};

/// The registry bucket (defined in `streams/buckets.json`).
pub const BUCKET: &str = "herd-hands";

/// The registry key of a live host.
pub fn host_key(host: &str) -> String {
    format!("host.{host}")
}

/// Where a job goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Any hand.
    Pool,
    /// The hand on this host.
    Host(String),
}

/// The subject of a job on a route.
pub fn subject(route: &Route, job: &ToolJob) -> String {
    match route {
        Route::Pool => subjects::pool_job(&job.session_id, &job.tool_use_id),
        Route::Host(h) => subjects::host_job(h, &job.session_id, &job.tool_use_id),
    }
}

/// The message id of a job on a route: distinct per route, so a job moved from a dead host to
/// the pool is not taken for a duplicate of its first publish.
pub fn message_id(route: &Route, job: &ToolJob) -> String {
    match route {
        Route::Pool => job.message_id(),
        Route::Host(h) => format!("{}_{h}", job.message_id()),
    }
}

/// The host holding a session's sandbox, from its latest `sandbox.provisioned` event.
pub fn sandbox_host(events: &[StoredEvent]) -> Option<String> {
    events.iter().rev().find_map(|e| match &e.event.body {
        EventBody::SandboxProvisioned(p) => Some(p.host.clone()),
        _ => None,
    })
}

/// The read side of the registry: which hosts are alive, hence where jobs go.
#[derive(Clone)]
pub struct Router {
    store: kv::Store,
}

impl Router {
    /// Opens the bucket.
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let store = js
            .get_key_value(BUCKET)
            .await
            .map_err(|e| BusError::nats(format!("opening bucket {BUCKET}"), e))?;
        Ok(Self { store })
    }

    /// The bucket, for the hands' own writes.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// Whether a host is alive.
    pub async fn alive(&self, host: &str) -> bool {
        matches!(self.store.entry(host_key(host)).await, Ok(Some(e)) if e.operation == kv::Operation::Put)
    }

    /// The route of a session's next job.
    pub async fn route(&self, events: &[StoredEvent]) -> Route {
        match sandbox_host(events) {
            Some(h) if self.alive(&h).await => Route::Host(h),
            _ => Route::Pool,
        }
    }
}

/// Whether a job for this call already waits in `HERD_TOOLS`, on any route.
pub async fn queued(
    stream: &jetstream::stream::Stream,
    session: &SessionId,
    tool_use_id: &str,
) -> bool {
    let pool = subjects::pool_job(session, tool_use_id);
    let hosts = subjects::any_host_job(session, tool_use_id);
    stream.get_last_raw_message_by_subject(&pool).await.is_ok()
        || stream.get_last_raw_message_by_subject(&hosts).await.is_ok()
}

/// Publishes a job on a route, idempotently (its message id is derived from the call and the
/// route), and waits for the stream's ack.
pub async fn publish(
    js: &jetstream::Context,
    route: &Route,
    job: &ToolJob,
) -> Result<(), BusError> {
    let payload = serde_json::to_vec(job).unwrap_or_default();
    let msg = jetstream::message::PublishMessage::build()
        .message_id(message_id(route, job))
        .header("Content-Type", crate::event::CONTENT_TYPE_JSON)
        .payload(payload.into());
    js.send_publish(subject(route, job), msg)
        .await
        .map_err(|e| BusError::nats("publishing a tool job", e))?
        .await
        .map_err(|e| BusError::nats("publishing a tool job", e))?;
    Ok(())
}
