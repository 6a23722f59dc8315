//! This hand in the registry of live hands (the `herd-hands` KV bucket): announcing itself,
//! withdrawing, and moving jobs stranded on dead hosts to the pool. The read side (is a host
//! alive, where does a job go) is `bus::routing`, which the brain uses too.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::TryStreamExt;

use crate::bus::jobs::ToolJob;
use crate::bus::routing::{self, BUCKET, Route, Router};
use crate::bus::{BusError, subjects};
use crate::event::check_token;

/// Checks a host name: it becomes a subject token and a KV key.
pub fn check_host(host: &str) -> Result<(), crate::event::IdError> {
    check_token("hand host name", host)
}

/// The registry, as one hand writes it.
#[derive(Clone)]
pub struct Registry {
    js: jetstream::Context,
    router: Router,
}

impl Registry {
    /// Opens the bucket.
    pub async fn open(js: jetstream::Context) -> Result<Self, BusError> {
        let router = Router::open(&js).await?;
        Ok(Self { js, router })
    }

    /// Announces (or renews) a live host for `ttl` (whole seconds, at least 1). A conditional
    /// publish with `Nats-TTL` rather than `kv::Store::create_with_ttl`, which (async-nats
    /// 0.51) drops the TTL when it re-creates a deleted key.
    pub async fn announce(&self, host: &str, ttl: Duration) -> Result<(), BusError> {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            ttl.as_secs().max(1).to_string().as_str(),
        );
        let op = "announcing this hand";
        self.js
            .publish_with_headers(
                format!("$KV.{BUCKET}.{}", routing::host_key(host)),
                h,
                host.to_string().into(),
            )
            .await
            .map_err(|e| BusError::nats(op, e))?
            .await
            .map_err(|e| BusError::nats(op, e))?;
        Ok(())
    }

    /// Withdraws a host (on a clean stop).
    pub async fn withdraw(&self, host: &str) {
        let _ = self.router.store().delete(routing::host_key(host)).await;
    }

    /// Moves jobs queued for hosts that are gone to the pool. Safe to run from every hand at
    /// once: the pool copy is deduplicated by its message id, deleting twice is harmless, and a
    /// hand checks the log before running any job. Returns how many were moved.
    pub async fn reroute_orphaned_jobs(&self) -> Result<usize, BusError> {
        let op = "rerouting the jobs of hosts that are gone";
        let stream = self
            .js
            .get_stream(subjects::TOOLS_STREAM)
            .await
            .map_err(|e| BusError::nats(op, e))?;
        let subjects: Vec<String> = stream
            .info_with_subjects(subjects::ALL_HOST_JOBS)
            .await
            .map_err(|e| BusError::nats(op, e))?
            .map_ok(|(s, _)| s)
            .try_collect()
            .await
            .map_err(|e| BusError::nats(op, e))?;
        let mut moved = 0;
        for s in subjects {
            let Some(host) = subjects::host_of_job_subject(&s) else {
                continue;
            };
            if self.router.alive(host).await {
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
                .message_id(routing::message_id(&Route::Pool, &job))
                .payload(msg.payload.clone());
            let sent = self
                .js
                .send_publish(routing::subject(&Route::Pool, &job), publish)
                .await
                .map_err(|e| BusError::nats(op, e))?;
            sent.await.map_err(|e| BusError::nats(op, e))?;
            let _ = stream.delete_message(msg.sequence).await;
            moved += 1;
        }
        Ok(moved)
    }
}
