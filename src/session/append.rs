//! Appending to a session's log: facts, conditional steps, creation.
//!
//! * **Facts** (user events, tool results) append unconditionally, deduplicated by event id.
//! * **Steps** (what a brain decided) append conditionally on the sequence the brain decided
//!   from, with `Nats-Expected-Last-Subject-Sequence` scoped to the whole session by
//!   `Nats-Expected-Last-Subject-Sequence-Subject: herd.session.<id>.>`, and atomically: a step of
//!   several events is one JetStream atomic batch, so it lands whole or not at all.
//!
//! Writes are raw JetStream requests rather than async-nats's publish helpers, so facts, single
//! events and batches share one reply parser, one error classification and one retry loop.

use async_nats::HeaderMap;
use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID,
};
use bytes::Bytes;
use serde::Deserialize;

use super::SessionLog;
use super::error::{LogError, MAX_STEP_EVENTS};
use super::read::Slice;
use super::retry::Failure;
use crate::bus::subjects::{
    self, HEADER_EVENT_TYPE, HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, HEADER_SCHEMA,
    SCHEMA_VERSION,
};
use crate::event::{CONTENT_TYPE_MSGPACK, Event, EventBody, SessionId, check_type_name};

/// Room left in each message for the headers added per attempt (batch ids, expectations).
const HEADER_ALLOWANCE: usize = 256;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Stream sequence of the first event written.
    pub first_seq: u64,
    /// Stream sequence of the last event written: the session's new last sequence, unless
    /// someone appended since.
    pub last_seq: u64,
    /// True when the events were already in the log (a retry, or the same event sent twice):
    /// nothing new was stored.
    pub duplicate: bool,
}

/// One message ready to send.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// JetStream's reply to a publish: an ack or an error.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// What a sent write came back with, short of a final error.
enum Sent {
    Ack {
        seq: u64,
        count: u64,
        duplicate: bool,
    },
    /// The expected-sequence check failed; the actual last sequence when the server said it.
    Conflict(Option<u64>),
    /// A batch was refused because some of its message ids are already stored (err_code
    /// 10201): either this very step landed on an earlier attempt, or the caller reused ids.
    IdsAlreadyStored(String),
}

/// err_codes that mean "try again" (nats-server errors.json).
const TRANSIENT_CODES: &[u64] = &[
    10158, // duplicate message id is in process (clustered)
    10163, // expected last sequence per subject temporarily unavailable
    10210, // too many in-flight atomic batches
];

fn classify(e: ApiError) -> Result<Sent, Failure> {
    match e.err_code {
        // wrong last sequence: N
        10071 => Ok(Sent::Conflict(
            e.description
                .rsplit(':')
                .next()
                .and_then(|n| n.trim().parse().ok()),
        )),
        // clustered: another expected-sequence write for this session is in flight
        10164 => Ok(Sent::Conflict(None)),
        // atomic publish batch contains duplicate message id (checked against the stream's
        // deduplication window, not only within the batch)
        10201 => Ok(Sent::IdsAlreadyStored(e.description)),
        // The first copy of this write is still waiting to be committed: in a cluster that
        // has lost its quorum it waits until a node returns. Say so.
        10158 => Err(Failure::Transient(format!(
            "{} (err_code 10158): an earlier attempt of this write is still waiting for the cluster to commit it (too few nats nodes up for a quorum?)",
            e.description
        ))),
        c if TRANSIENT_CODES.contains(&c) || e.code == 503 || e.code == 429 => Err(
            Failure::Transient(format!("{} (err_code {c})", e.description)),
        ),
        c => Err(Failure::Final(LogError::Rejected {
            err_code: c,
            description: e.description,
        })),
    }
}

fn parse_reply(payload: &[u8]) -> Result<Sent, Failure> {
    let reply: Reply = serde_json::from_slice(payload).map_err(|e| {
        Failure::Transient(format!(
            "unreadable reply from JetStream ({e}): {}",
            String::from_utf8_lossy(payload)
        ))
    })?;
    match reply.error {
        Some(e) => classify(e),
        None => Ok(Sent::Ack {
            seq: reply.seq,
            count: reply.count.unwrap_or(1),
            duplicate: reply.duplicate,
        }),
    }
}

fn request_failure(e: async_nats::RequestError) -> Failure {
    use async_nats::RequestErrorKind as K;
    match e.kind() {
        // JetStream answers "no responders" when the stream has no leader: an election in
        // progress, or too few nodes up for a quorum. Say so; the bare words puzzle people.
        K::NoResponders => Failure::Transient(
            "no responders: the session stream has no leader (a leader election in progress, or too few nats nodes up for a quorum)"
                .into(),
        ),
        K::TimedOut | K::Other => Failure::Transient(e.to_string()),
        K::InvalidSubject => Failure::Final(LogError::Invalid(e.to_string())),
        K::MaxPayloadExceeded => Failure::Final(LogError::Invalid(e.to_string())),
    }
}

fn header_len(h: &HeaderMap) -> usize {
    h.iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| k.to_string().len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
        + 12
}

impl SessionLog {
    fn outgoing(&self, session: &SessionId, event: &Event) -> Result<Outgoing, LogError> {
        let type_name = event.type_name();
        check_type_name(type_name).map_err(LogError::Invalid)?;
        let payload = Bytes::from(event.encode());
        let mut headers = HeaderMap::new();
        headers.insert(
            NATS_MESSAGE_ID,
            subjects::event_message_id(session, event.id.as_str()).as_str(),
        );
        headers.insert(HEADER_EVENT_TYPE, type_name);
        headers.insert(HEADER_SCHEMA, SCHEMA_VERSION);
        headers.insert("Content-Type", CONTENT_TYPE_MSGPACK);
        let size = payload.len() + header_len(&headers) + HEADER_ALLOWANCE;
        let max = self.client.server_info().max_payload;
        if size > max {
            return Err(LogError::TooLarge {
                event_id: event.id.to_string(),
                event_type: type_name.to_string(),
                size,
                max,
            });
        }
        Ok(Outgoing {
            subject: subjects::session_event(session, type_name),
            headers,
            payload,
        })
    }

    /// Sends `m` with `headers` as a request and returns the raw reply.
    async fn raw_request(
        &self,
        m: &Outgoing,
        headers: HeaderMap,
    ) -> Result<async_nats::Message, Failure> {
        self.client
            .send_request(
                m.subject.clone(),
                async_nats::Request::new()
                    .headers(headers)
                    .payload(m.payload.clone())
                    .timeout(Some(self.request_timeout)),
            )
            .await
            .map_err(request_failure)
    }

    async fn request(&self, m: &Outgoing, headers: HeaderMap) -> Result<Sent, Failure> {
        parse_reply(&self.raw_request(m, headers).await?.payload)
    }

    /// Sends one message, optionally with a session-wide expectation.
    async fn send_single(
        &self,
        m: &Outgoing,
        expect: Option<(u64, &str)>,
    ) -> Result<Sent, Failure> {
        let mut h = m.headers.clone();
        if let Some((last, filter)) = expect {
            h.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                last.to_string().as_str(),
            );
            h.insert(HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, filter);
        }
        self.request(m, h).await
    }

    /// Sends messages as one atomic batch (ADR-50): the first and the last message are requests,
    /// the ones between plain publishes; the expectation rides on the first and is checked at
    /// commit. A batch cut short by a crash is never committed and the server drops it.
    async fn send_batch(&self, msgs: &[Outgoing], expect: (u64, &str)) -> Result<Sent, Failure> {
        let batch_id = uuid::Uuid::new_v4().simple().to_string();
        let n = msgs.len();
        for (i, m) in msgs.iter().enumerate() {
            let pos = i + 1;
            let mut h = m.headers.clone();
            h.insert(NATS_BATCH_ID, batch_id.as_str());
            h.insert(NATS_BATCH_SEQUENCE, pos.to_string().as_str());
            if pos == 1 {
                h.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expect.0.to_string().as_str(),
                );
                h.insert(HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, expect.1);
            }
            if pos == n {
                h.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
                return self.request(m, h).await;
            }
            if pos == 1 {
                let reply = self.raw_request(m, h).await?;
                if !reply.payload.is_empty() {
                    // The batch was refused at its start; the reply says why.
                    return parse_reply(&reply.payload);
                }
            } else {
                self.client
                    .publish_with_headers(m.subject.clone(), h, m.payload.clone())
                    .await
                    .map_err(|e| Failure::Transient(e.to_string()))?;
            }
        }
        unreachable!("a batch has at least one message")
    }

    /// Appends a fact: an event from outside the brain (a user message, a tool result). It is
    /// stored unless an event with the same id was stored within the duplicate window (two
    /// minutes), in which case the result says `duplicate` and points at the original.
    pub async fn append_fact(
        &self,
        session: &SessionId,
        event: &Event,
    ) -> Result<Appended, LogError> {
        if matches!(event.body, EventBody::SessionCreated(_)) {
            // The first session.created is the session's configuration for good (DESIGN rule
            // 10); only `create` writes one, on condition that the session is empty.
            return Err(LogError::Invalid(format!(
                "session {session} already has its configuration: a session.created is appended only at creation"
            )));
        }
        let m = self.outgoing(session, event)?;
        let sent = self
            .retry
            .run("append fact", |_| self.send_single(&m, None))
            .await?;
        match sent {
            Sent::Ack {
                seq,
                duplicate: true,
                ..
            } => {
                self.check_duplicate(session, event, seq).await?;
                Ok(Appended {
                    first_seq: seq,
                    last_seq: seq,
                    duplicate: true,
                })
            }
            Sent::Ack { seq, .. } => Ok(Appended {
                first_seq: seq,
                last_seq: seq,
                duplicate: false,
            }),
            Sent::Conflict(_) | Sent::IdsAlreadyStored(_) => Err(LogError::Rejected {
                err_code: 10071,
                description: "unexpected conflict on an unconditional append".into(),
            }),
        }
    }

    /// Appends a brain step: `events` land whole, and only if the session's last event is still
    /// at `expected_last` (the sequence the step was decided from). Otherwise nothing lands and
    /// the error is [`LogError::Conflict`] with the actual last sequence: reload and decide again.
    ///
    /// Retries after a lost ack reuse the same message ids; if the first attempt had landed, the
    /// result is the original position with `duplicate` set.
    pub async fn append_step(
        &self,
        session: &SessionId,
        expected_last: u64,
        events: &[Event],
    ) -> Result<Appended, LogError> {
        if events.is_empty() || events.len() > MAX_STEP_EVENTS {
            return Err(LogError::Invalid(format!(
                "a step must hold between 1 and {MAX_STEP_EVENTS} events; this one has {}",
                events.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = events.iter().find(|e| !seen.insert(&e.id)) {
            return Err(LogError::Invalid(format!(
                "event id {} appears twice in one step",
                dup.id
            )));
        }
        let msgs = events
            .iter()
            .map(|e| self.outgoing(session, e))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = subjects::session_filter(session);
        let expect = (expected_last, filter.as_str());
        let sent = self
            .retry
            .run("append step", |_| async {
                if msgs.len() == 1 {
                    self.send_single(&msgs[0], Some(expect)).await
                } else {
                    self.send_batch(&msgs, expect).await
                }
            })
            .await?;
        match sent {
            Sent::Ack {
                seq,
                count,
                duplicate,
            } => Ok(Appended {
                first_seq: seq + 1 - count.max(1),
                last_seq: seq,
                duplicate,
            }),
            Sent::Conflict(actual) => {
                if let Some(landed) = self.find_landed(session, expected_last, events).await? {
                    return Ok(landed);
                }
                let actual = match actual {
                    Some(a) => a,
                    None => self.last_sequence(session).await?,
                };
                Err(LogError::Conflict {
                    expected: expected_last,
                    actual,
                })
            }
            Sent::IdsAlreadyStored(description) => {
                if let Some(landed) = self.find_landed(session, expected_last, events).await? {
                    return Ok(landed);
                }
                Err(LogError::Rejected {
                    err_code: 10201,
                    description: format!(
                        "{description}: an event id of this step was already used by another event in the last two minutes"
                    ),
                })
            }
        }
    }

    /// Creates a session: appends its `session.created` event, on condition that the session has
    /// no events yet. A session that exists is [`LogError::AlreadyExists`]; retrying a creation
    /// that landed (same event id) succeeds with `duplicate` set.
    pub async fn create(&self, session: &SessionId, event: &Event) -> Result<Appended, LogError> {
        if !matches!(event.body, EventBody::SessionCreated(_)) {
            return Err(LogError::Invalid(format!(
                "a session starts with a session.created event, not {}",
                event.type_name()
            )));
        }
        match self
            .append_step(session, 0, std::slice::from_ref(event))
            .await
        {
            Err(LogError::Conflict { .. }) => Err(LogError::AlreadyExists(session.clone())),
            other => other,
        }
    }

    /// A duplicate ack names the message that holds this message id; accept it as "already
    /// there" only when that message is this event in this session. A publisher that set
    /// another session's id (or the bare event id) on its own message would otherwise make
    /// this event vanish silently.
    async fn check_duplicate(
        &self,
        session: &SessionId,
        event: &Event,
        seq: u64,
    ) -> Result<(), LogError> {
        let stored = self
            .retry
            .run("check a duplicate", |_| async {
                self.stream
                    .get_raw_message(seq)
                    .await
                    .map_err(|e| Failure::Transient(e.to_string()))
            })
            .await?;
        // The same event: same session, id, type and content (its time may differ on a
        // resend). Anything else holding the id (an event planted under a tool result's
        // derived id, say) is not this event, and saying "already there" would lose it.
        let same = subjects::parse_session_subject(&stored.subject)
            .is_some_and(|(s, _)| &s == session)
            && super::read::to_record(&stored.subject, seq, &stored.payload)
                .and_then(|r| r.ok())
                .is_some_and(|r| r.event.id == event.id && r.event.body == event.body);
        if same {
            Ok(())
        } else {
            Err(LogError::IdTaken {
                message_id: subjects::event_message_id(session, event.id.as_str()),
                seq,
            })
        }
    }

    /// After a conflict: did this very step land already (a retry whose first attempt
    /// succeeded but whose ack was lost)? Such a retry is not reported as a plain duplicate: on
    /// a single server the expected-sequence check runs before deduplication (10071), and an
    /// atomic batch with stored ids is refused outright (10201).
    async fn find_landed(
        &self,
        session: &SessionId,
        after: u64,
        events: &[Event],
    ) -> Result<Option<Appended>, LogError> {
        let (first, last) = (&events[0].id, &events[events.len() - 1].id);
        let records = self
            .read(
                session,
                &Slice {
                    from: Some(after + 1),
                    ..Default::default()
                },
            )
            .await?;
        let seq_of = |id| {
            records
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .find(|e| &e.event.id == id)
                .map(|e| e.seq)
        };
        Ok(match (seq_of(first), seq_of(last)) {
            (Some(first_seq), Some(last_seq)) => Some(Appended {
                first_seq,
                last_seq,
                duplicate: true,
            }),
            _ => None,
        })
    }
}
