//! The gateway's records in JetStream (`HERD_GATEWAY`): each tenant's agents, environments,
//! vaults, credentials and session index, and the API keys.
//!
//! One subject per object (`herd.gw.obj.<tenant>.<kind>.<id>`), one message per write: the
//! last message on a subject is the object now and the earlier ones are its versions, so an
//! agent's version history is its subject's messages and nothing is ever rewritten. Writes
//! are conditional on the subject's last sequence (`Nats-Expected-Last-Subject-Sequence`):
//! two gateways updating one agent at once cannot both win, and a create cannot overwrite.
//! The stream is replicated like the log and holds JSON, so `nats stream get HERD_GATEWAY
//! --last-for herd.gw.obj.<tenant>.agent.<id>` shows an object as the API does.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream::DirectGetErrorKind};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::subjects;

/// What kind of object a record is; the subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An agent (its versions are the subject's messages).
    Agent,
    /// An environment.
    Environment,
    /// A vault.
    Vault,
    /// A vault's credential (its id is `<vault>_<credential>` on the subject).
    Credential,
    /// A session's index record: which tenant owns it, when it was archived or deleted.
    Session,
}

impl Kind {
    /// The subject token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Environment => "environment",
            Self::Vault => "vault",
            Self::Credential => "credential",
            Self::Session => "session",
        }
    }
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record changed since it was read (or exists, for a create).
    #[error("the object changed since it was read; read it again")]
    Conflict,
    /// The stream refused a write because it is full (rule 11).
    #[error("the gateway's store is full: {0}")]
    Full(String),
    /// NATS is out of reach or failed.
    #[error("the gateway's store is unavailable: {0}")]
    Unavailable(String),
    /// A stored record does not decode (written by hand, or by a newer herd).
    #[error("stored record {subject} (sequence {seq}) is not valid: {detail}")]
    Corrupt {
        /// Its subject.
        subject: String,
        /// Its sequence.
        seq: u64,
        /// Why.
        detail: String,
    },
}

/// A record as stored: the document and the sequence it is at.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    /// Its stream sequence (what the next conditional write expects).
    pub seq: u64,
    /// The document.
    pub doc: T,
}

/// What a write expects of the subject.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Nothing is stored there yet (a create).
    New,
    /// Its last message is at this sequence (an update of what was read).
    At(u64),
}

/// The gateway's store, on one connection.
#[derive(Clone)]
pub struct Store {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    keys: jetstream::stream::Stream,
}

impl Store {
    /// Opens `HERD_GATEWAY` and `HERD_KEYS` (created by `herd streams apply`).
    pub async fn open(js: jetstream::Context) -> Result<Self, StoreError> {
        let get = |name: &'static str| {
            let js = js.clone();
            async move {
                js.get_stream(name).await.map_err(|e| {
                    StoreError::Unavailable(format!(
                        "stream {name} ({e}); run `herd streams apply` as the operator"
                    ))
                })
            }
        };
        let stream = get(subjects::GATEWAY_STREAM).await?;
        let keys = get(subjects::KEYS_STREAM).await?;
        Ok(Self { js, stream, keys })
    }

    /// The stream that holds a subject.
    fn stream_of(&self, subject: &str) -> &jetstream::stream::Stream {
        if subjects::is_gateway_key(subject) {
            &self.keys
        } else {
            &self.stream
        }
    }

    /// The latest version of an object, if there is one.
    pub async fn get<T: DeserializeOwned>(
        &self,
        tenant: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Stored<T>>, StoreError> {
        self.last(&subjects::gateway_object(tenant, kind.token(), id))
            .await
    }

    /// The last record on a subject.
    pub async fn last<T: DeserializeOwned>(
        &self,
        subject: &str,
    ) -> Result<Option<Stored<T>>, StoreError> {
        match self
            .stream_of(subject)
            .direct_get_last_for_subject(subject)
            .await
        {
            Ok(m) => decode(&m).map(Some),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Writes a new version of an object, if the subject is as `expect` says.
    pub async fn put<T: Serialize>(
        &self,
        tenant: &str,
        kind: Kind,
        id: &str,
        doc: &T,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        self.put_at(
            &subjects::gateway_object(tenant, kind.token(), id),
            doc,
            expect,
        )
        .await
    }

    /// Writes a record on a subject, if the subject is as `expect` says.
    pub async fn put_at<T: Serialize>(
        &self,
        subject: &str,
        doc: &T,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        let payload = serde_json::to_vec(doc).map_err(|e| StoreError::Corrupt {
            subject: subject.to_string(),
            seq: 0,
            detail: e.to_string(),
        })?;
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let seq = match expect {
            Expect::New => 0,
            Expect::At(seq) => seq,
        };
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            seq.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .await;
        match ack {
            Ok(a) => Ok(a.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(StoreError::Conflict),
            Err(e) if e.to_string().contains("maximum bytes exceeded") => {
                Err(StoreError::Full(e.to_string()))
            }
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Every version of an object, oldest first, from the one after `after_seq`, at most
    /// `limit`.
    pub async fn versions<T: DeserializeOwned>(
        &self,
        tenant: &str,
        kind: Kind,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Stored<T>>, StoreError> {
        let subject = subjects::gateway_object(tenant, kind.token(), id);
        let mut out = Vec::new();
        let mut next = after_seq + 1;
        while out.len() < limit {
            match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => {
                    next = m.sequence + 1;
                    out.push(decode(&m)?);
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
        }
        Ok(out)
    }

    /// The ids of a tenant's objects of one kind, sorted (ids carry a UUIDv7, so this is
    /// creation order).
    pub async fn ids(&self, tenant: &str, kind: Kind) -> Result<Vec<String>, StoreError> {
        self.subjects(&subjects::gateway_objects(tenant, kind.token()))
            .await
            .map(|subjects| {
                subjects
                    .iter()
                    .filter_map(|s| subjects::gateway_object_id(s).map(str::to_string))
                    .collect()
            })
    }

    /// The subjects matching `filter` that hold a record, sorted.
    pub async fn subjects(&self, filter: &str) -> Result<Vec<String>, StoreError> {
        let mut info = self
            .stream_of(filter)
            .info_with_subjects(filter)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut out = Vec::new();
        while let Some((subject, _count)) = info
            .try_next()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        {
            out.push(subject);
        }
        out.sort();
        Ok(out)
    }
}

fn decode<T: DeserializeOwned>(
    m: &jetstream::message::StreamMessage,
) -> Result<Stored<T>, StoreError> {
    serde_json::from_slice(&m.payload)
        .map(|doc| Stored {
            seq: m.sequence,
            doc,
        })
        .map_err(|e| StoreError::Corrupt {
            subject: m.subject.to_string(),
            seq: m.sequence,
            detail: e.to_string(),
        })
}
