//! A bounded cache of replayed sessions, so a warm brain reads only what is new.
//!
//! Entries are whole replays (events and their fold) up to a sequence; a wake reads from the
//! next sequence on and folds only that. The cache is a pure optimisation: dropping it changes
//! nothing but speed (DESIGN rule 1).
//!
//! Memory is bounded (N20): replays are shared (`Arc`), never copied per wake; a session over
//! [`MAX_CACHED_SESSION_BYTES`] is not cached at all, and the cache as a whole holds at most
//! [`MAX_CACHE_BYTES`] (least recently used out first). The brain refuses to run a session
//! over its `max_session_bytes` at all.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::{SessionId, StoredEvent};
use crate::session::{LogError, SessionLog, SessionState};

/// The largest session (payload bytes) the cache keeps.
pub const MAX_CACHED_SESSION_BYTES: u64 = 32 << 20;
/// The most payload bytes the cache keeps over all its sessions.
pub const MAX_CACHE_BYTES: u64 = 1 << 30;

/// A replayed session.
#[derive(Clone)]
pub struct Replay {
    /// Its valid events, in order, each id once.
    pub events: Vec<StoredEvent>,
    /// Their fold.
    pub state: SessionState,
    /// The payload bytes its events took in the log (what holding it costs, roughly).
    pub bytes: u64,
}

/// Least-recently-used cache of replays.
pub struct SessionCache {
    capacity: usize,
    tick: u64,
    bytes: u64,
    entries: HashMap<SessionId, (u64, Arc<Replay>)>,
}

impl SessionCache {
    /// A cache of at most `capacity` sessions (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            bytes: 0,
            entries: HashMap::new(),
        }
    }

    /// The cached replay, left in the cache (concurrent wakes share it).
    fn peek(&mut self, id: &SessionId) -> Option<Arc<Replay>> {
        self.tick += 1;
        let tick = self.tick;
        let (t, r) = self.entries.get_mut(id)?;
        *t = tick;
        Some(r.clone())
    }

    fn take(&mut self, id: &SessionId) -> Option<Arc<Replay>> {
        let (_, r) = self.entries.remove(id)?;
        self.bytes -= r.bytes;
        Some(r)
    }

    fn put(&mut self, id: SessionId, replay: Arc<Replay>) {
        if self.capacity == 0 || replay.bytes > MAX_CACHED_SESSION_BYTES {
            return;
        }
        self.tick += 1;
        self.bytes += replay.bytes;
        if let Some((_, old)) = self.entries.insert(id, (self.tick, replay)) {
            self.bytes -= old.bytes;
        }
        while self.entries.len() > self.capacity || self.bytes > MAX_CACHE_BYTES {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.take(&k);
                }
                None => break,
            }
        }
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Replays a session, reading only what the cache does not hold, and never more than
/// `budget` bytes in all: past it the read is abandoned with [`LogError::SessionTooLarge`]. The
/// cache lock is not held across the read; the replay is shared with the cache, copied only
/// when new events arrive while another wake still holds the old one.
pub async fn replay(
    cache: &std::sync::Mutex<SessionCache>,
    log: &SessionLog,
    id: &SessionId,
    budget: u64,
) -> Result<Arc<Replay>, LogError> {
    let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).peek(id);
    let from = cached.as_ref().map_or(0, |r| r.state.last_seq) + 1;
    let held = cached.as_ref().map_or(0, |r| r.bytes);
    if held > budget {
        return Err(LogError::SessionTooLarge { max: budget });
    }
    let (records, bytes) = log.read_from_sized(id, from, Some(budget - held)).await?;
    let mut shared = cached.unwrap_or_else(|| {
        Arc::new(Replay {
            events: Vec::new(),
            state: SessionState::new(id.clone()),
            bytes: 0,
        })
    });
    if records.is_empty() {
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(id.clone(), shared.clone());
        return Ok(shared);
    }
    // The cache's own reference would make every update a deep copy of the whole replay
    // (10,000 events: most of a wake's time): it gives its copy up while this one grows. A
    // replay another wake still holds is copied, as it must be.
    let released = cache.lock().unwrap_or_else(|p| p.into_inner()).take(id);
    drop(released);
    let replay = Arc::make_mut(&mut shared);
    replay.bytes += bytes;
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
        .put(id.clone(), shared.clone());
    Ok(shared)
}
