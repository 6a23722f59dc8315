//! Saving a session's workspace on demand: the same snapshot job the end of a turn sends, with
//! an id naming the log's sequence at the request, answered by a `sandbox.workspace_saved`.

use super::{Api, ApiError, Refusal};
use crate::bus::routing::{self, Router};
use crate::bus::workspace_jobs;
use crate::event::{EventBody, SessionId, StoredEvent};
use crate::session::LogError;

impl Api {
    /// Asks the hand holding the session's sandbox to save its workspace now; the request id
    /// its `sandbox.workspace_saved` will name. Operator only (it publishes a job).
    pub async fn request_snapshot(&self, id: &SessionId) -> Result<String, ApiError> {
        self.operator_only()?;
        let events: Vec<StoredEvent> = self
            .log
            .read_from(id, 1)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let Some(last) = events.last() else {
            return Err(Refusal::NotFound(id.clone()).into());
        };
        if !events
            .iter()
            .any(|e| matches!(e.event.body, EventBody::SandboxProvisioned(_)))
        {
            return Err(LogError::Invalid(format!(
                "session {id} has never had a sandbox: there is no workspace to save"
            ))
            .into());
        }
        let request = workspace_jobs::manual_request_id(last.seq);
        let job = workspace_jobs::job(id, request.clone(), last.seq, None);
        let wrap = |e: crate::bus::BusError| ApiError::Wake(e.to_string());
        let router = Router::open(&self.js).await.map_err(wrap)?;
        let route = router.route(&events).await;
        routing::publish(&self.js, &route, &job)
            .await
            .map_err(wrap)?;
        Ok(request)
    }
}
