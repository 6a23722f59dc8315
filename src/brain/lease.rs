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
    /// Opens the bucket. `ttl` is rounded down to whole seconds (at least 1): a lease must
    /// never outlive what its holder's callers assume.
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
            ttl: Duration::from_secs(ttl.as_secs().max(1)),
        })
    }

    fn key(session: &SessionId) -> String {
        format!("session.{session}")
    }

    /// Writes the lease key with a fresh TTL, on condition that its last revision is
    /// `expected` (0: the key has never been written, or every entry expired).
    ///
    /// This is a raw conditional publish rather than `kv::Store::create_with_ttl` because
    /// async-nats 0.51 re-creates a deleted key with a plain update that drops the TTL: a lease
    /// taken after a release would then never expire.
    async fn write(&self, key: &str, expected: u64) -> Result<Option<u64>, LeaseError> {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        h.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            self.ttl.as_secs().to_string().as_str(),
        );
        let sent = self
            .js
            .publish_with_headers(format!("$KV.{BUCKET}.{key}"), h, self.owner.clone().into())
            .await
            .map_err(|e| LeaseError {
                op: "write",
                detail: e.to_string(),
            })?;
        match sent.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(None)
            }
            Err(e) => Err(LeaseError {
                op: "write",
                detail: e.to_string(),
            }),
        }
    }

    /// Takes the session's lease; `None` when another brain holds it.
    pub async fn acquire(&self, session: &SessionId) -> Result<Option<Lease>, LeaseError> {
        let key = Self::key(session);
        if let Some(revision) = self.write(&key, 0).await? {
            return Ok(Some(Lease { key, revision }));
        }
        // The key has history: free if its last entry is a deletion (a release, or the
        // server's marker for an expired lease).
        let entry = self.store.entry(&key).await.map_err(|e| LeaseError {
            op: "read",
            detail: e.to_string(),
        })?;
        let expected = match entry {
            None => 0,
            Some(e) if e.operation != kv::Operation::Put => e.revision,
            Some(_) => return Ok(None),
        };
        Ok(self
            .write(&key, expected)
            .await?
            .map(|revision| Lease { key, revision }))
    }

    /// Extends a held lease by another TTL. `false` when it was lost (it expired and someone
    /// else took it).
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, LeaseError> {
        match self.write(&lease.key, lease.revision).await? {
            Some(revision) => {
                lease.revision = revision;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether some brain (this one included) holds the session's lease now: its key's last
    /// entry is a write, not a release or an expiry.
    pub async fn held(&self, session: &SessionId) -> Result<bool, LeaseError> {
        let entry = self
            .store
            .entry(Self::key(session))
            .await
            .map_err(|e| LeaseError {
                op: "read",
                detail: e.to_string(),
            })?;
        Ok(entry.is_some_and(|e| e.operation == kv::Operation::Put))
    }

    /// Gives a lease back (if still ours).
    pub async fn release(&self, lease: Lease) {
        if let Err(e) = self
            .store
            .delete_expect_revision(&lease.key, Some(lease.revision))
            .await
        {
            // It then expires by its TTL; wakes that meet it meanwhile come back later.
            tracing::warn!(key = %lease.key, error = %e, "Releasing a session lease failed.");
        }
    }
}
