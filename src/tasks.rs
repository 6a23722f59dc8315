//! Small concurrency pieces the workers share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::event::SessionId;

/// Aborts a task when dropped (also when the owner panics), so a heartbeat or helper task never
/// outlives what it serves.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One async lock per session, so a process works on a session one task at a time. Locks of
/// sessions nobody holds are dropped once the map grows past `limit`.
pub struct SessionLocks {
    locks: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    limit: usize,
}

impl SessionLocks {
    /// A lock map that prunes itself above `limit` entries.
    pub fn new(limit: usize) -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
            limit,
        }
    }

    /// The lock of a session.
    pub fn get(&self, id: &SessionId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > self.limit {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(id.clone()).or_default().clone()
    }
}
