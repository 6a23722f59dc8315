//! herd's scheduled wakes over HTTP (a herd extension; the Managed Agents API has none):
//!
//! - `POST /v1/sessions/{id}/schedules` `{"name", "when", "prompt"}` sets (or replaces) one:
//!   `when` is `at <RFC 3339>`, `in 10m`, `every 1h` (at least 60 s) or `cron <6 fields>` (UTC);
//! - `GET /v1/sessions/{id}/schedules` lists them;
//! - `DELETE /v1/sessions/{id}/schedules/{name}` cancels one.
//!
//! The same use cases as `herd session schedule` (`api::schedule`), for the caller's own
//! sessions only.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::error::HttpError;
use super::{Shared, Tenant, input, ok, sessions};
use crate::bus::schedules::{Definition, MAX_PROMPT};

fn view(d: &Definition) -> Value {
    json!({"type": "schedule", "session_id": d.session_id, "name": d.name, "when": d.spec, "prompt": d.prompt})
}

/// `POST /v1/sessions/{id}/schedules`.
pub async fn set(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    input::only("schedule", &body, &["name", "when", "prompt"])?;
    let name = input::string(&body, "name", 64)?;
    let when = input::string(&body, "when", 200)?;
    let prompt = input::string(&body, "prompt", MAX_PROMPT * 4)?;
    let (sid, api, _) = sessions::visible(&g, &t.0, &id).await?;
    let def = api.set_schedule(&sid, &name, &when, &prompt).await?;
    Ok(ok(view(&def)))
}

/// `GET /v1/sessions/{id}/schedules`.
pub async fn list(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let (sid, api, _) = sessions::visible(&g, &t.0, &id).await?;
    let data: Vec<Value> = api.schedules(&sid).await?.iter().map(view).collect();
    Ok(ok(json!({"data": data, "has_more": false})))
}

/// `DELETE /v1/sessions/{id}/schedules/{name}`.
pub async fn cancel(
    State(g): State<Shared>,
    t: Tenant,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let (sid, api, _) = sessions::visible(&g, &t.0, &id).await?;
    api.cancel_schedule(&sid, &name).await?;
    Ok(ok(
        json!({"type": "schedule_deleted", "session_id": sid.as_str(), "name": name}),
    ))
}
