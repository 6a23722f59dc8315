//! The registry of live hands, in the `herd-hands` KV bucket, and routing of tool jobs.
//!
//! Every hand announces `host.<host>` with a TTL and renews it while it runs; a hand that dies
//! simply expires. A session's later jobs go to the host that holds its sandbox (its latest
//! `sandbox.provisioned` event) while that host is alive, so calls share one workspace; when the
//! host is gone, they go to the shared pool, and the hand that provisions the new sandbox tells
//! the model. Jobs already queued for a host that died are moved to the pool by any live hand.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::TryStreamExt;

use crate::event::{EventBody, SessionId, StoredEvent, check_token};
use crate::jobs::ToolJob;
use crate::subjects;

/// The bucket (defined in `streams/buckets.json`).
pub const BUCKET: &str = "herd-hands";

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
        Route::Pool => format!("herd.tools.pool.{}.{}", job.session_id, job.tool_use_id),
        Route::Host(h) => format!("herd.tools.host.{h}.{}.{}", job.session_id, job.tool_use_id),
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

/// Checks a host name: it becomes a subject token and a KV key.
pub fn check_host(host: &str) -> Result<(), String> {
    check_token("hand host name", host).map_err(|e| e.to_string())
}

/// The registry.
#[derive(Clone)]
pub struct Registry {
    js: jetstream::Context,
    store: kv::Store,
}

impl Registry {
    /// Opens the bucket.
    pub async fn open(js: jetstream::Context) -> Result<Self, String> {
        let store = js.get_key_value(BUCKET).await.map_err(|e| e.to_string())?;
        Ok(Self { js, store })
    }

    /// Announces (or renews) a live host for `ttl` (whole seconds, at least 1).
    pub async fn announce(&self, host: &str, ttl: Duration) -> Result<(), String> {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            ttl.as_secs().max(1).to_string().as_str(),
        );
        self.js
            .publish_with_headers(
                format!("$KV.{BUCKET}.host.{host}"),
                h,
                host.to_string().into(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Withdraws a host (on a clean stop).
    pub async fn withdraw(&self, host: &str) {
        let _ = self.store.delete(format!("host.{host}")).await;
    }

    /// Whether a host is alive.
    pub async fn alive(&self, host: &str) -> bool {
        matches!(self.store.entry(format!("host.{host}")).await, Ok(Some(e)) if e.operation == kv::Operation::Put)
    }

    /// The route of a session's next job.
    pub async fn route(&self, events: &[StoredEvent]) -> Route {
        match sandbox_host(events) {
            Some(h) if self.alive(&h).await => Route::Host(h),
            _ => Route::Pool,
        }
    }

    /// Moves jobs queued for hosts that are gone to the pool. Safe to run from every hand at
    /// once: the pool copy is deduplicated by its message id, deleting twice is harmless, and a
    /// hand checks the log before running any job. Returns how many were moved.
    pub async fn reroute_orphaned_jobs(&self) -> Result<usize, String> {
        let stream = self
            .js
            .get_stream(subjects::TOOLS_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let subjects: Vec<String> = stream
            .info_with_subjects("herd.tools.host.>")
            .await
            .map_err(|e| e.to_string())?
            .map_ok(|(s, _)| s)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut moved = 0;
        for s in subjects {
            let Some(host) = s
                .strip_prefix("herd.tools.host.")
                .and_then(|r| r.split('.').next())
            else {
                continue;
            };
            if self.alive(host).await {
                continue;
            }
            let Ok(msg) = stream.get_last_raw_message_by_subject(&s).await else {
                continue;
            };
            let Ok(job) = serde_json::from_slice::<ToolJob>(&msg.payload) else {
                let _ = stream.delete_message(msg.sequence).await;
                continue;
            };
            let publish = jetstream::message::PublishMessage::build()
                .message_id(message_id(&Route::Pool, &job))
                .payload(msg.payload.clone());
            let sent = self
                .js
                .send_publish(subject(&Route::Pool, &job), publish)
                .await
                .map_err(|e| e.to_string())?;
            sent.await.map_err(|e| e.to_string())?;
            let _ = stream.delete_message(msg.sequence).await;
            moved += 1;
        }
        Ok(moved)
    }
}

/// Whether a job for this call already waits in `HERD_TOOLS`, on any route.
pub async fn queued(
    stream: &jetstream::stream::Stream,
    session: &SessionId,
    tool_use_id: &str,
) -> bool {
    let pool = format!("herd.tools.pool.{session}.{tool_use_id}");
    let hosts = format!("herd.tools.host.*.{session}.{tool_use_id}");
    stream.get_last_raw_message_by_subject(&pool).await.is_ok()
        || stream.get_last_raw_message_by_subject(&hosts).await.is_ok()
}
