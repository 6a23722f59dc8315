//! Reading a session's log: slices by sequence, counts, the last sequence, following live.
//!
//! Replays use JetStream's batched direct get (ADR-31): one request streams up to
//! [`READ_BATCH`] messages of the session's subjects, served from the stream's per-subject
//! index, so a session's replay costs its own size, not the stream's. async-nats has no API for
//! batched direct get, so it is a raw request here.
//!
//! Direct gets may be served by any replica, so in a cluster a read may trail the leader by a
//! few milliseconds. That is safe for the brain: a step decided on a stale read fails its
//! conditional append and is decided again. [`SessionLog::last_sequence`] goes to the leader.

use std::collections::{BTreeMap, VecDeque};

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use super::SessionLog;
use super::check::{Checker, SessionReport};
use super::error::LogError;
use super::retry::Failure;
use super::state::SessionState;
use crate::bus::subjects;
use crate::event::{Event, InvalidRecord, Record, SessionId, StoredEvent, check_type_name};

/// Messages asked for per direct-get request.
pub const READ_BATCH: usize = 10_000;
/// The most payload bytes one read batch asks for (N20).
pub const READ_BATCH_BYTES: usize = 16 << 20;

/// Which part of a session to read. The default is all of it.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    /// First stream sequence to include.
    pub from: Option<u64>,
    /// Last stream sequence to include.
    pub to: Option<u64>,
    /// Only the last N events of the range.
    pub last: Option<usize>,
    /// Only these event types (all when empty).
    pub types: Vec<String>,
    /// At most this many events, from the start of the range.
    pub limit: Option<usize>,
}

/// Turns a stored message (its subject, sequence and payload) into a record, never failing: a
/// message that is not a valid event becomes an [`InvalidRecord`] saying why. `None` when the
/// subject is not a session subject at all.
pub fn to_record(subject: &str, seq: u64, payload: &[u8]) -> Option<Record> {
    let (session_id, subject_type) = subjects::parse_session_subject(subject)?;
    let invalid = |error: String| InvalidRecord {
        session_id: session_id.clone(),
        seq,
        subject: subject.to_string(),
        error,
    };
    Some(match Event::decode(payload) {
        Ok(event) if event.type_name() == subject_type => Ok(StoredEvent {
            session_id: session_id.clone(),
            seq,
            event,
        }),
        Ok(event) => Err(invalid(format!(
            "the payload's type {:?} does not match the subject's {:?}",
            event.type_name(),
            subject_type
        ))),
        Err(e) => Err(invalid(e.to_string())),
    })
}

/// One direct-get batch.
struct Batch {
    records: Vec<(u64, Option<Record>)>,
    /// Matching messages left after this batch.
    pending: u64,
    /// Payload bytes in this batch.
    bytes: u64,
}

fn header_u64(m: &async_nats::Message, name: &str) -> Option<u64> {
    m.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

impl SessionLog {
    /// Fetches up to `max` messages on `filter` from sequence `from` on.
    async fn direct_batch(&self, filter: &str, from: u64, max: usize) -> Result<Batch, Failure> {
        let (sized, pending) = self
            .direct_batch_with(filter, from, max, |subject, seq, payload| {
                (to_record(subject, seq, payload), payload.len() as u64)
            })
            .await?;
        let bytes = sized.iter().map(|(_, (_, n))| n).sum();
        let records = sized.into_iter().map(|(seq, (r, _))| (seq, r)).collect();
        Ok(Batch {
            records,
            pending,
            bytes,
        })
    }

    /// Fetches up to `max` messages on `filter` from sequence `from` on, each made into what
    /// `read` makes of its subject, sequence and payload; with the count of matching messages
    /// left after them.
    async fn direct_batch_with<T>(
        &self,
        filter: &str,
        from: u64,
        max: usize,
        read: impl Fn(&str, u64, &[u8]) -> T,
    ) -> Result<(Vec<(u64, T)>, u64), Failure> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
        // Bounded in bytes too: a batch of 1 MiB events is READ_BATCH_BYTES, not 10 GiB.
        let req = serde_json::json!({
            "seq": from, "batch": max, "max_bytes": READ_BATCH_BYTES, "next_by_subj": filter,
        });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", subjects::SESSIONS_STREAM),
                inbox,
                serde_json::to_vec(&req).unwrap_or_default().into(),
            )
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let mut records = Vec::new();
        loop {
            let msg = match tokio::time::timeout(self.request_timeout, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(Failure::Transient("the read was cut off".into())),
                Err(_) => {
                    return Err(Failure::Transient(format!(
                        "no answer to a read within {:?}",
                        self.request_timeout
                    )));
                }
            };
            if let Some(status) = msg.status {
                return match status.as_u16() {
                    // end of batch
                    204 => Ok((records, header_u64(&msg, "Nats-Num-Pending").unwrap_or(0))),
                    // nothing (more) matches
                    404 => Ok((records, 0)),
                    503 => Err(Failure::Transient(
                        "no responders for the read (leader election, or the stream is missing)"
                            .into(),
                    )),
                    code => Err(Failure::Final(LogError::Rejected {
                        err_code: code as u64,
                        description: msg.description.unwrap_or_default(),
                    })),
                };
            }
            let Some(seq) = header_u64(&msg, "Nats-Sequence") else {
                continue;
            };
            let subject = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Subject"))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            records.push((seq, read(&subject, seq, &msg.payload)));
        }
    }

    /// Reads a slice of a session's log, in order. Messages that are not valid events come
    /// back as [`InvalidRecord`]s, in place, so one bad message never hides the rest.
    pub async fn read(&self, session: &SessionId, slice: &Slice) -> Result<Vec<Record>, LogError> {
        Ok(self.read_sized(session, slice, None).await?.0)
    }

    /// [`Self::read`], with the payload bytes it read (every message of the batches, kept or
    /// not): what a replay of the slice holds in memory, roughly. With a `budget`, the read
    /// stops with [`LogError::SessionTooLarge`] as soon as it has read more than that, so a
    /// huge session is never held whole.
    pub async fn read_sized(
        &self,
        session: &SessionId,
        slice: &Slice,
        budget: Option<u64>,
    ) -> Result<(Vec<Record>, u64), LogError> {
        for t in &slice.types {
            check_type_name(t).map_err(LogError::Invalid)?;
        }
        let filter = match slice.types.as_slice() {
            [one] => subjects::session_event(session, one),
            _ => subjects::session_filter(session),
        };
        let keep_type = |r: &Record| {
            slice.types.len() < 2 || {
                let t = match r {
                    Ok(e) => e.event.type_name(),
                    Err(bad) => {
                        subjects::parse_session_subject(&bad.subject).map_or("", |(_, t)| t)
                    }
                };
                slice.types.iter().any(|x| x == t)
            }
        };
        let mut out: VecDeque<Record> = VecDeque::new();
        let mut bytes = 0u64;
        let mut next = slice.from.unwrap_or(1).max(1);
        'batches: loop {
            let mut want = match (slice.limit, slice.last) {
                (Some(limit), None) => (limit - out.len()).min(READ_BATCH),
                _ => READ_BATCH,
            };
            // A range holds at most as many of the session's messages as it spans sequences:
            // a slice in the middle of a long session asks for that many, not for a whole
            // batch of what follows it.
            if let Some(to) = slice.to {
                if to < next {
                    break;
                }
                want = want.min((to - next + 1).min(READ_BATCH as u64) as usize);
            }
            if want == 0 {
                break;
            }
            let batch = self
                .retry
                .run("read", |_| self.direct_batch(&filter, next, want))
                .await?;
            let got = batch.records.len();
            bytes += batch.bytes;
            if let Some(max) = budget
                && bytes > max
            {
                return Err(LogError::SessionTooLarge { max });
            }
            for (seq, record) in batch.records {
                next = seq + 1;
                if slice.to.is_some_and(|to| seq > to) {
                    break 'batches;
                }
                let Some(record) = record else { continue };
                if !keep_type(&record) {
                    continue;
                }
                out.push_back(record);
                if slice.last.is_some_and(|n| out.len() > n) {
                    out.pop_front();
                }
                if slice
                    .limit
                    .is_some_and(|n| slice.last.is_none() && out.len() >= n)
                {
                    break 'batches;
                }
            }
            if batch.pending == 0 || got == 0 {
                break;
            }
        }
        Ok((out.into(), bytes))
    }

    /// The session's configuration: its first `session.created` (one direct get of that
    /// type's subject), or `None` when it has none.
    pub async fn created(
        &self,
        session: &SessionId,
    ) -> Result<Option<crate::event::SessionCreated>, LogError> {
        let first = self
            .read(
                session,
                &Slice {
                    types: vec!["session.created".into()],
                    limit: Some(1),
                    ..Default::default()
                },
            )
            .await?;
        Ok(first.into_iter().find_map(|r| match r.ok()?.event.body {
            crate::event::EventBody::SessionCreated(c) => Some(c),
            _ => None,
        }))
    }

    /// Reads a whole session, from sequence `from` on.
    pub async fn read_from(&self, session: &SessionId, from: u64) -> Result<Vec<Record>, LogError> {
        Ok(self.read_from_sized(session, from, None).await?.0)
    }

    /// [`Self::read_from`], with the payload bytes read, abandoned past `budget`.
    pub async fn read_from_sized(
        &self,
        session: &SessionId,
        from: u64,
        budget: Option<u64>,
    ) -> Result<(Vec<Record>, u64), LogError> {
        self.read_sized(
            session,
            &Slice {
                from: Some(from),
                ..Default::default()
            },
            budget,
        )
        .await
    }

    /// A session's skeleton, for deciding about one too large to replay: every event of at
    /// most `max_event_bytes` decoded, and the sequence and type of every event (a large one
    /// only by its subject, never decoded or kept). Memory is bounded by the small events.
    pub async fn read_skeleton(
        &self,
        session: &SessionId,
        max_event_bytes: usize,
    ) -> Result<(Vec<Record>, Vec<(u64, String)>), LogError> {
        let filter = subjects::session_filter(session);
        let (mut small, mut kinds) = (Vec::new(), Vec::new());
        let mut next = 1u64;
        loop {
            let (batch, pending) = self
                .retry
                .run("read skeleton", |_| {
                    self.direct_batch_with(&filter, next, READ_BATCH, |subject, seq, payload| {
                        let kind = subjects::parse_session_subject(subject)
                            .map(|(_, t)| t.to_string())
                            .unwrap_or_default();
                        let record = (payload.len() <= max_event_bytes)
                            .then(|| to_record(subject, seq, payload))
                            .flatten();
                        (kind, record)
                    })
                })
                .await?;
            let got = batch.len();
            for (seq, (kind, record)) in batch {
                next = next.max(seq + 1);
                kinds.push((seq, kind));
                small.extend(record);
            }
            if pending == 0 || got == 0 {
                return Ok((small, kinds));
            }
        }
    }

    /// Folds a whole session into its current state, without running anything.
    pub async fn load_state(&self, session: &SessionId) -> Result<SessionState, LogError> {
        let records = self.read_from(session, 1).await?;
        if records.is_empty() {
            return Err(LogError::NotFound(session.clone()));
        }
        let mut state = SessionState::new(session.clone());
        for r in &records {
            state.apply_record(r);
        }
        Ok(state)
    }

    /// The sequence of the session's last event (0 when it has none). Read from the stream
    /// leader, so it reflects every acknowledged append.
    pub async fn last_sequence(&self, session: &SessionId) -> Result<u64, LogError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        let filter = subjects::session_filter(session);
        self.retry
            .run("last sequence", |_| async {
                match self.stream.get_last_raw_message_by_subject(&filter).await {
                    Ok(m) => Ok(m.sequence),
                    Err(e) => match e.kind() {
                        K::NoMessageFound => Ok(0),
                        K::InvalidSubject => Err(Failure::Final(LogError::Invalid(e.to_string()))),
                        _ => Err(Failure::Transient(e.to_string())),
                    },
                }
            })
            .await
    }

    /// Event counts per type for one session.
    pub async fn count_by_type(
        &self,
        session: &SessionId,
    ) -> Result<BTreeMap<String, u64>, LogError> {
        let prefix_len = subjects::session_filter(session).len() - 1;
        let per_subject = self
            .subject_counts(&subjects::session_filter(session))
            .await?;
        Ok(per_subject
            .into_iter()
            .map(|(s, n)| (s.get(prefix_len..).unwrap_or_default().to_string(), n))
            .collect())
    }

    /// How many events a session holds.
    pub async fn count(&self, session: &SessionId) -> Result<u64, LogError> {
        Ok(self.count_by_type(session).await?.values().sum())
    }

    async fn subject_counts(&self, filter: &str) -> Result<BTreeMap<String, u64>, LogError> {
        self.retry
            .run("subject counts", |_| async {
                let info = self
                    .stream
                    .info_with_subjects(filter)
                    .await
                    .map_err(|e| Failure::Transient(e.to_string()))?;
                info.map_ok(|(s, n)| (s, n as u64))
                    .try_collect::<BTreeMap<_, _>>()
                    .await
                    .map_err(|e| Failure::Transient(e.to_string()))
            })
            .await
    }

    /// Every session that has been created, with its event count, in id order (generated ids
    /// sort by creation time).
    pub async fn list(&self) -> Result<Vec<(SessionId, u64)>, LogError> {
        let created = self
            .subject_counts(&subjects::all_sessions_of_type("session.created"))
            .await?;
        let all = self.subject_counts(subjects::ALL_SESSIONS).await?;
        let mut counts: BTreeMap<SessionId, u64> = BTreeMap::new();
        for (subject, n) in all {
            if let Some((id, _)) = subjects::parse_session_subject(&subject) {
                *counts.entry(id).or_default() += n;
            }
        }
        Ok(created
            .keys()
            .filter_map(|s| subjects::parse_session_subject(s).map(|(id, _)| id))
            .map(|id| {
                let n = counts.get(&id).copied().unwrap_or(0);
                (id, n)
            })
            .collect())
    }

    /// The status changes of every session from stream sequence `from` on, in order: each
    /// `session.status_*` event's session and whether it puts the session in a turn (running,
    /// rescheduled) or out of one (idle, terminated); with the sequence to read from next
    /// time. Payloads are not decoded: the subject says it all. The brains' sweep keeps its
    /// set of sessions in a turn with this, reading only what is new each time.
    pub async fn status_changes(
        &self,
        from: u64,
    ) -> Result<(Vec<(SessionId, bool)>, u64), LogError> {
        let mut out = Vec::new();
        let mut next = from.max(1);
        loop {
            let (batch, pending) = self
                .retry
                .run("read status changes", |_| {
                    self.direct_batch_with(
                        subjects::ALL_SESSION_LIFECYCLE,
                        next,
                        READ_BATCH,
                        |subject, _, _| {
                            subjects::parse_session_subject(subject).and_then(|(id, t)| match t {
                                "session.status_running" | "session.status_rescheduled" => {
                                    Some((id, true))
                                }
                                "session.status_idle" | "session.status_terminated" => {
                                    Some((id, false))
                                }
                                _ => None,
                            })
                        },
                    )
                })
                .await?;
            let got = batch.len();
            for (seq, change) in batch {
                next = next.max(seq + 1);
                out.extend(change);
            }
            if pending == 0 || got == 0 {
                return Ok((out, next));
            }
        }
    }

    /// The sequence of a session's last event and when the server stored it (`None` for a
    /// session without events). One leader read, so the sweep can tell a quiet session from
    /// an active one without replaying it.
    pub async fn last_event_at(
        &self,
        session: &SessionId,
    ) -> Result<Option<(u64, time::OffsetDateTime)>, LogError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        let filter = subjects::session_filter(session);
        self.retry
            .run("last event", |_| async {
                match self.stream.get_last_raw_message_by_subject(&filter).await {
                    Ok(m) => Ok(Some((m.sequence, m.time))),
                    Err(e) => match e.kind() {
                        K::NoMessageFound => Ok(None),
                        K::InvalidSubject => Err(Failure::Final(LogError::Invalid(e.to_string()))),
                        _ => Err(Failure::Transient(e.to_string())),
                    },
                }
            })
            .await
    }

    /// Checks one session's log against the invariants of [`super::check`]; a fork is also
    /// compared with its parent.
    pub async fn check(
        &self,
        session: &SessionId,
        settled: bool,
    ) -> Result<SessionReport, LogError> {
        let records = self.read_whole(session).await?;
        let mut report = super::check::check_session(session.clone(), &records, settled);
        // The last `session.forked`: a fork of a fork holds its parent's too.
        let forked = records.iter().rev().find_map(|r| match r {
            Ok(e) => match &e.event.body {
                crate::event::EventBody::SessionForked(f) => Some((e.seq, f.parent.clone())),
                _ => None,
            },
            Err(_) => None,
        });
        if let Some((seq, parent)) = forked {
            let diffs = match SessionId::parse(&parent) {
                Ok(p) => match self.read_whole(&p).await {
                    Ok(parent_records) => super::fork::compare(&parent_records, &records),
                    Err(LogError::NotFound(_)) => {
                        vec![format!("its parent {parent} is not in the log")]
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => vec![format!("its parent {parent:?} is not a session id: {e}")],
            };
            for detail in diffs {
                report.violations.push(super::check::Violation {
                    seq,
                    rule: super::check::Rule::ForkMismatch,
                    detail,
                });
            }
        }
        Ok(report)
    }

    /// A session's whole log, up to the leader's last sequence: a direct get may be served by
    /// a replica that trails the leader, and a stale read would look like lost events.
    async fn read_whole(&self, session: &SessionId) -> Result<Vec<Record>, LogError> {
        let last = self.last_sequence(session).await?;
        if last == 0 {
            return Err(LogError::NotFound(session.clone()));
        }
        for attempt in 1..=40u64 {
            let records = self.read_from(session, 1).await?;
            let reached = records.last().is_some_and(|r| match r {
                Ok(e) => e.seq >= last,
                Err(bad) => bad.seq >= last,
            });
            if reached {
                return Ok(records);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25 * attempt)).await;
        }
        Err(LogError::Unavailable {
            attempts: 40,
            elapsed_ms: 0,
            last: format!("no replica served session {session} up to sequence {last}"),
        })
    }

    /// Checks every session in the stream, in one pass over it up to its last sequence at the
    /// start (what lands afterwards is left for the next run), in session id order; forks are
    /// compared with their parents too, as [`Self::check`] does.
    pub async fn check_all(&self, settled: bool) -> Result<Vec<SessionReport>, LogError> {
        let last = self.stream_last_sequence().await?;
        let mut checkers: BTreeMap<SessionId, Checker> = BTreeMap::new();
        let mut forks: BTreeMap<SessionId, u64> = BTreeMap::new();
        let mut next = 1;
        let mut stale_reads = 0u32;
        while next <= last {
            let batch = self
                .retry
                .run("read", |_| {
                    self.direct_batch(subjects::ALL_SESSIONS, next, READ_BATCH)
                })
                .await?;
            let got = batch.records.len();
            for (seq, record) in batch.records {
                next = seq + 1;
                if seq > last {
                    break;
                }
                let Some(record) = record else { continue };
                let id = match &record {
                    Ok(e) => e.session_id.clone(),
                    Err(bad) => bad.session_id.clone(),
                };
                if let Ok(e) = &record
                    && matches!(e.event.body, crate::event::EventBody::SessionForked(_))
                {
                    forks.insert(id.clone(), e.seq);
                }
                checkers
                    .entry(id.clone())
                    .or_insert_with(|| Checker::new(id))
                    .feed(&record);
            }
            if batch.pending == 0 || got == 0 {
                if next > last {
                    break;
                }
                // The stream's last message is a session event, so a batch that ends before
                // it came from a replica that trails the leader: wait for it to catch up.
                stale_reads += 1;
                if stale_reads > 40 {
                    return Err(LogError::Unavailable {
                        attempts: stale_reads,
                        elapsed_ms: 0,
                        last: format!("no replica served the stream up to sequence {last}"),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(25 * stale_reads as u64)).await;
            }
        }
        // A fork is also compared with its parent, which needs both logs whole: forks are few,
        // so each is read again, to its end now (the pass above keeps no session's events).
        // One that cannot be read now keeps its report from the pass, with a violation saying
        // the comparison was not made, so the other sessions' reports still come out.
        let mut reports = Vec::with_capacity(checkers.len());
        for (id, checker) in checkers {
            let Some(&seq) = forks.get(&id) else {
                reports.push(checker.finish(settled));
                continue;
            };
            reports.push(match self.check(&id, settled).await {
                Ok(report) => report,
                Err(e) => {
                    let mut report = checker.finish(settled);
                    report.violations.push(super::check::Violation {
                        seq,
                        rule: super::check::Rule::ForkMismatch,
                        detail: format!("it could not be compared with its parent: {e}"),
                    });
                    report
                }
            });
        }
        Ok(reports)
    }

    /// The stream's last sequence, from its leader.
    async fn stream_last_sequence(&self) -> Result<u64, LogError> {
        self.retry
            .run("stream info", |_| {
                let mut stream = self.stream.clone();
                async move {
                    stream
                        .info()
                        .await
                        .map(|i| i.state.last_sequence)
                        .map_err(|e| Failure::Transient(e.to_string()))
                }
            })
            .await
    }

    /// Follows a session live from sequence `from` on: every event already there, then each new
    /// one as it lands, forever. Backed by an ordered consumer, which recreates itself after
    /// gaps and reconnects.
    pub async fn follow(
        &self,
        session: &SessionId,
        from: u64,
    ) -> Result<BoxStream<'static, Result<Record, LogError>>, LogError> {
        let config = OrderedConfig {
            filter_subject: subjects::session_filter(session),
            deliver_policy: if from <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                }
            },
            ..Default::default()
        };
        let consumer = self
            .retry
            .run("follow", |_| async {
                self.stream
                    .create_consumer(config.clone())
                    .await
                    .map_err(|e| Failure::Transient(e.to_string()))
            })
            .await?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| LogError::Invalid(e.to_string()))?;
        Ok(messages
            .filter_map(|m| async move {
                match m {
                    Ok(m) => {
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                        to_record(m.subject.as_str(), seq, &m.payload).map(Ok)
                    }
                    Err(e) => Some(Err(LogError::Unavailable {
                        attempts: 1,
                        elapsed_ms: 0,
                        last: e.to_string(),
                    })),
                }
            })
            .boxed())
    }
}
