//! A bounded cache of replayed sessions, so a warm brain reads only what is new.
//!
//! Entries are whole replays (events and their fold) up to a sequence; a wake reads from the
//! next sequence on and folds only that. The cache is a pure optimisation: dropping it changes
//! nothing but speed (DESIGN rule 1).

use std::collections::HashMap;

use crate::event::{SessionId, StoredEvent};
use crate::session::{LogError, SessionLog, SessionState};

/// A replayed session.
#[derive(Clone)]
pub struct Replay {
    /// Its valid events, in order, each id once.
    pub events: Vec<StoredEvent>,
    /// Their fold.
    pub state: SessionState,
}

/// Least-recently-used cache of replays.
pub struct SessionCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<SessionId, (u64, Replay)>,
}

impl SessionCache {
    /// A cache of at most `capacity` sessions (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    fn take(&mut self, id: &SessionId) -> Option<Replay> {
        self.entries.remove(id).map(|(_, r)| r)
    }

    fn put(&mut self, id: SessionId, replay: Replay) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        self.entries.insert(id, (self.tick, replay));
        while self.entries.len() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
    }
}

/// Replays a session, reading only what the cache does not hold. The cache lock is not held
/// across the read.
pub async fn replay(
    cache: &std::sync::Mutex<SessionCache>,
    log: &SessionLog,
    id: &SessionId,
) -> Result<Replay, LogError> {
    let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).take(id);
    let mut replay = cached.unwrap_or_else(|| Replay {
        events: Vec::new(),
        state: SessionState::new(id.clone()),
    });
    let records = log.read_from(id, replay.state.last_seq + 1).await?;
    for r in records {
        // A copy of an event already replayed (the same id landed twice) is one event: the
        // harness and the context never see it twice.
        if replay.state.apply_record(&r)
            && let Ok(e) = r
        {
            replay.events.push(e);
        }
    }
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .put(id.clone(), replay.clone());
    Ok(replay)
}
