//! Forking a session (and so rewinding it): a new session whose log starts with the parent's
//! up to a turn boundary, and whose workspace starts from the parent's snapshot of that point.
//! The parent is only read. Where the fork is taken and what it copies is decided in
//! [`crate::session::fork`].
//!
//! The copy writes every kind of event (agent events among them), so only the operator's
//! role may fork: `herd session fork`.

use std::time::Duration;

use super::{Api, ApiError, Refusal};
use crate::bus::workspace_jobs;
use crate::event::{
    Event, EventBody, SandboxWorkspaceSaved, SessionForked, SessionId, StoredEvent,
};
use crate::hands::{outputs, snapshots};
use crate::session::{LogError, fork};

/// Events one append of the copy carries (one atomic batch each).
const BATCH: usize = 200;

/// How long a fork waits for the snapshot of the turn it is taken at, when that turn's
/// snapshot is still being saved.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);

/// What a fork made.
#[derive(Debug, Clone)]
pub struct Forked {
    /// The new session.
    pub child: SessionId,
    /// Its `session.forked`.
    pub forked: SessionForked,
    /// Bytes of the workspace it starts from (0 without one).
    pub workspace_bytes: u64,
}

impl Api {
    /// Forks `parent` at its last turn boundary at or before `at` (default: its last event).
    pub async fn fork(&self, parent: &SessionId, at: Option<u64>) -> Result<Forked, ApiError> {
        self.operator_only()?;
        let mut events = self.events_of(parent).await?;
        let Some(first) = events.first() else {
            return Err(Refusal::NotFound(parent.clone()).into());
        };
        let EventBody::SessionCreated(created) = &first.event.body else {
            return Err(LogError::Invalid(format!(
                "session {parent} does not begin with session.created"
            ))
            .into());
        };
        let created = created.clone();
        let last = events.last().map(|e| e.seq).unwrap_or(1);
        let requested = at.unwrap_or(last);
        if requested == 0 || requested > last {
            return Err(LogError::Invalid(format!(
                "cannot fork session {parent} at sequence {requested}: its log holds sequences 1 to {last}"
            ))
            .into());
        }
        let point = fork::fork_point(&events, requested);
        // The turn ending at the fork point may still be saving its workspace.
        let prefix: Vec<StoredEvent> = events.iter().filter(|e| e.seq <= point).cloned().collect();
        let pending = workspace_jobs::needed(&prefix).filter(|(_, idle)| *idle == point);
        if let Some((request, _)) = pending {
            let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
            while !has_saved(&events, &request) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                events = self.events_of(parent).await?;
            }
        }
        let copies: Vec<Event> = events
            .iter()
            .filter(|e| fork::copied(e, point))
            .map(|e| e.event.clone())
            .collect();

        let child = SessionId::generate();
        // Sequences are the stream's: each append is conditional on the child's last one.
        let mut expected = self
            .log
            .create(&child, &Event::new(created))
            .await?
            .last_seq;
        for batch in copies.chunks(BATCH) {
            expected = self
                .log
                .append_step(&child, expected, batch)
                .await?
                .last_seq;
        }
        // The workspace: the parent's snapshot of that point, copied into the child's own
        // objects, recorded in the child's log after the copied prefix.
        let workspace = fork::workspace_at(&events, point);
        let forked = SessionForked {
            parent: parent.to_string(),
            requested,
            at: point,
            copied: copies.len() as u64,
            workspace: workspace.as_ref().map(|(_, m)| m.clone()),
        };
        expected = self
            .log
            .append_step(&child, expected, &[Event::new(forked.clone())])
            .await?
            .last_seq;
        let mut workspace_bytes = 0;
        if let Some((_, manifest)) = workspace {
            let started = std::time::Instant::now();
            let store = self
                .js
                .get_object_store(outputs::BLOBS)
                .await
                .map_err(|e| LogError::Invalid(format!("opening the object store: {e}")))?;
            let copied = snapshots::copy(&store, parent, &manifest, &child, "fork").await;
            let mut saved = SandboxWorkspaceSaved::answering("fork", "");
            match copied {
                Ok((name, m)) => {
                    workspace_bytes = m.bytes;
                    saved.manifest = Some(name);
                    saved.bytes = m.bytes;
                    saved.chunks = m.chunks.len() as u64;
                    saved.new_chunks = saved.chunks;
                    saved.stored_bytes = m.chunks.iter().map(|c| c.size).sum();
                }
                Err(e) => {
                    saved.error = Some(format!("the parent's snapshot could not be copied: {e}"))
                }
            }
            saved.duration_ms = started.elapsed().as_millis() as u64;
            self.log
                .append_step(&child, expected, &[Event::new(saved)])
                .await?;
        }
        Ok(Forked {
            child,
            forked,
            workspace_bytes,
        })
    }

    async fn events_of(&self, id: &SessionId) -> Result<Vec<StoredEvent>, ApiError> {
        let records = self.log.read_from(id, 1).await?;
        let mut events = Vec::with_capacity(records.len());
        for r in records {
            match r {
                Ok(e) => events.push(e),
                Err(bad) => {
                    return Err(LogError::Invalid(format!(
                        "session {id} holds an unreadable event at sequence {}: a fork would not be its prefix",
                        bad.seq
                    ))
                    .into());
                }
            }
        }
        Ok(events)
    }
}

fn has_saved(events: &[StoredEvent], request: &str) -> bool {
    events.iter().any(
        |e| matches!(&e.event.body, EventBody::SandboxWorkspaceSaved(s) if s.request_id == request),
    )
}
