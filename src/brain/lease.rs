//! Per-session leases in the `herd-leases` KV bucket, so that one brain at a time works on a
//! session and no model call is wasted on a race.
//!
//! A lease is a key `session.<id>` created with a TTL (it fails if someone holds it), renewed
//! by a conditional write with a fresh TTL while the brain works, and deleted when it is done.
//! A brain that dies simply stops renewing; the key expires and the next brain takes over.
//! The lease is an optimisation: the conditional append is still what keeps the log right, so
//! a brain that lost its lease without noticing can waste work but never fork a session.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::event::SessionId;

/// The bucket (defined in `streams/buckets.json`).
pub const BUCKET: &str = "herd-leases";

/// Leases held by one brain.
#[derive(Clone)]
pub struct Leases {
    js: jetstream::Context,
    store: kv::Store,
    owner: String,
    ttl: Duration,
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    key: String,
    revision: u64,
}

/// Why a lease operation failed (NATS trouble).
#[derive(Debug, thiserror::Error)]
#[error("lease {op} failed: {detail}")]
pub struct LeaseError {
    op: &'static str,
    detail: String,
}

impl Leases {
    /// Opens the bucket. `ttl` is rounded up to whole seconds (at least 1).
    pub async fn open(
        js: jetstream::Context,
        owner: &str,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        let store = js.get_key_value(BUCKET).await.map_err(|e| LeaseError {
            op: "open",
            detail: e.to_string(),
        })?;
        Ok(Self {
            js,
            store,
            owner: owner.to_string(),
            ttl: Duration::from_secs(ttl.as_secs_f64().ceil().max(1.0) as u64),
        })
    }

    fn key(session: &SessionId) -> String {
        format!("session.{session}")
    }

    /// Takes the session's lease; `None` when another brain holds it.
    pub async fn acquire(&self, session: &SessionId) -> Result<Option<Lease>, LeaseError> {
        let key = Self::key(session);
        match self
            .store
            .create_with_ttl(&key, self.owner.clone().into(), self.ttl)
            .await
        {
            Ok(revision) => Ok(Some(Lease { key, revision })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(LeaseError {
                op: "acquire",
                detail: e.to_string(),
            }),
        }
    }

    /// Extends a held lease by another TTL. `false` when it was lost (it expired and someone
    /// else took it).
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, LeaseError> {
        // async-nats has no public update-with-TTL, so renew with a conditional publish on the
        // bucket's subject carrying a fresh Nats-TTL.
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            lease.revision.to_string().as_str(),
        );
        h.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            self.ttl.as_secs().to_string().as_str(),
        );
        let subject = format!("$KV.{BUCKET}.{}", lease.key);
        let sent = self
            .js
            .publish_with_headers(subject, h, self.owner.clone().into())
            .await
            .map_err(|e| LeaseError {
                op: "renew",
                detail: e.to_string(),
            })?;
        match sent.await {
            Ok(ack) => {
                lease.revision = ack.sequence;
                Ok(true)
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(false)
            }
            Err(e) => Err(LeaseError {
                op: "renew",
                detail: e.to_string(),
            }),
        }
    }

    /// Gives a lease back (if still ours).
    pub async fn release(&self, lease: Lease) {
        let _ = self
            .store
            .delete_expect_revision(&lease.key, Some(lease.revision))
            .await;
    }
}
