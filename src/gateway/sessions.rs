//! Sessions: `POST/GET /v1/sessions`, `GET/POST/DELETE /v1/sessions/{id}`, `…/archive`.
//!
//! A session made here is an ordinary herd session: its `session.created` holds what herd
//! runs (the agent's model, system prompt and tools; the environment's image and hosts) and,
//! in `origin`, the tenant and the API objects it came from, so the log alone rebuilds what
//! the gateway shows. The gateway's index record (`herd.gw.obj.<tenant>.session.<id>`) says
//! which tenant may see it and when it was archived or deleted; status, usage and stop
//! reason are folded from the log on every read.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::error::HttpError;
use super::input::{self, Query};
use super::store::{Expect, Kind, Stored};
use super::{Shared, Tenant, agents, environments, events, now, ok, vaults};
use crate::api::Api;
use crate::event::{Budget, Event, Origin, Resource, SessionCreated, SessionId, SessionLimits};
use crate::session::{SessionState, Status};

/// The most `initial_events` a create may carry (the API's bound).
pub const MAX_INITIAL_EVENTS: usize = 50;

/// A session as the gateway loads it for a tenant.
pub struct Loaded {
    /// Its id.
    pub id: SessionId,
    /// Its index record.
    pub index: Stored<Value>,
    /// Its state, folded from the log.
    pub state: SessionState,
}

/// Loads one of the tenant's sessions: its index record (a deleted one is not found), and
/// its state through the tenant's `Api`, which refuses another tenant's session as not found.
pub async fn load(g: &Shared, tenant: &str, id: &str) -> Result<Loaded, HttpError> {
    let (sid, api, index) = visible(g, tenant, id).await?;
    let state = api.state(&sid).await?;
    Ok(Loaded {
        id: sid,
        index,
        state,
    })
}

/// A session id from a path, with the tenant's `Api` to act on it and the tenant's index
/// record, which shows the session is not deleted. Whose session it is, the `Api` checks on
/// every call (`api::Principal::may_see`): sending, listing and streaming need nothing more.
pub async fn visible(
    g: &Shared,
    tenant: &str,
    id: &str,
) -> Result<(SessionId, Api, Stored<Value>), HttpError> {
    let index = index(g, tenant, id).await?;
    let sid = SessionId::parse(id).map_err(|_| HttpError::not_found("session", id))?;
    Ok((sid, g.tenant_api(tenant, vec![]), index))
}

/// The tenant's index record of a session, if it is not deleted.
pub async fn index(g: &Shared, tenant: &str, id: &str) -> Result<Stored<Value>, HttpError> {
    let id = input::id("session", "sesn_", id)?;
    match g.store.get::<Value>(tenant, Kind::Session, id).await? {
        Some(s) if s.doc["deleted_at"].is_null() => Ok(s),
        _ => Err(HttpError::not_found("session", id)),
    }
}

fn status(s: &Loaded) -> &'static str {
    if !s.index.doc["archived_at"].is_null() {
        return "terminated";
    }
    match s.state.status {
        Status::Idle => "idle",
        Status::Running => "running",
        Status::Rescheduling => "rescheduling",
        Status::Terminated => "terminated",
    }
}

/// The session object.
pub fn view(s: &Loaded) -> Value {
    let config = s.state.config.as_ref();
    let origin = config.and_then(|c| c.origin.as_ref());
    let mut agent = origin.map(|o| o.agent.clone()).unwrap_or(Value::Null);
    if let Some(a) = agent.as_object_mut() {
        for k in ["created_at", "updated_at", "archived_at", "metadata"] {
            a.remove(k);
        }
    }
    let u = s.state.usage;
    let mut usage = json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
    });
    if let Some(cost) = &s.state.list_cost {
        usage["list_cost"] = json!(cost);
    }
    let budget = s
        .state
        .limits
        .budget
        .as_ref()
        .map(|b| json!({"type": b.kind, "max_list_cost": b.max_list_cost}));
    let resources: Vec<Value> = config
        .map(|c| c.resources.iter().map(resource_view).collect())
        .unwrap_or_default();
    let d = &s.index.doc;
    json!({
        "type": "session",
        "id": s.id.as_str(),
        "title": s.state.title,
        "status": status(s),
        "agent": agent,
        "environment_id": d["environment_id"],
        "metadata": s.state.metadata,
        "resources": resources,
        "vault_ids": config.map(|c| c.vault_ids.clone()).unwrap_or_default(),
        "budget": budget,
        "deployment_id": null,
        "outcome_evaluations": [],
        "stats": {},
        "usage": usage,
        "stop_reason": s.state.stop_reason,
        "created_at": d["created_at"],
        "updated_at": d["updated_at"],
        "archived_at": d["archived_at"],
        // herd's additions, for the console: when the newest event was written, and how
        // many the log holds.
        "last_event_at": s.state.last_event_at.map(crate::event::format_time),
        "event_count": s.state.event_count,
    })
}

fn resource_view(r: &Resource) -> Value {
    json!({
        "type": "github_repository",
        "id": format!("sres_{}", r.url.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))),
        "url": r.url,
        "mount_path": format!("/workspace/{}", r.workspace_path().unwrap_or_default()),
        "checkout": r.branch.as_ref().map(|b| json!({"type": "branch", "name": b})),
    })
}

fn resource(v: &Value) -> Result<Resource, HttpError> {
    let Value::Object(m) = v else {
        return Err(HttpError::invalid("each resource must be an object"));
    };
    match m.get("type").and_then(Value::as_str) {
        Some("github_repository") => {}
        Some(other @ ("file" | "memory_store")) => {
            return Err(HttpError::invalid(format!(
                "resources: {other} resources are not supported by herd's gateway yet"
            )));
        }
        other => {
            return Err(HttpError::invalid(format!(
                "resources: unknown type {other:?}; expected github_repository"
            )));
        }
    }
    input::only(
        "github_repository resource",
        m,
        &[
            "type",
            "url",
            "checkout",
            "mount_path",
            "authorization_token",
        ],
    )?;
    if m.get("authorization_token").is_some_and(|t| !t.is_null()) {
        return Err(HttpError::invalid(
            "resources: authorization_token is not taken inline by herd; public repositories only through the gateway for now",
        ));
    }
    let branch = match m.get("checkout") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) if c.get("type") == Some(&json!("branch")) => {
            Some(input::string(c, "name", 256)?)
        }
        Some(_) => {
            return Err(HttpError::invalid(
                "resources: checkout must be {\"type\": \"branch\", \"name\": …} (commits are not supported yet)",
            ));
        }
    };
    let mount_path = match input::opt_string(m, "mount_path", 512)? {
        None => None,
        Some(p) => match p.strip_prefix("/workspace/") {
            Some(rel) if !rel.is_empty() => Some(rel.to_string()),
            _ => {
                return Err(HttpError::invalid(format!(
                    "resources: mount_path {p:?} must be under /workspace/"
                )));
            }
        },
    };
    let r = Resource {
        kind: "git_repository".into(),
        url: input::string(m, "url", 2048)?,
        mount_path,
        branch,
        credential: None,
        push_branches: vec![],
    };
    r.check()
        .map_err(|e| HttpError::invalid(format!("resources: {e}")))?;
    Ok(r)
}

async fn agent_for(g: &Shared, tenant: &str, v: Option<&Value>) -> Result<Value, HttpError> {
    let (id, version) = match v {
        Some(Value::String(id)) => (id.clone(), None),
        Some(Value::Object(m)) => {
            match m.get("type").and_then(Value::as_str) {
                Some("agent") => {}
                Some("agent_with_overrides") => {
                    return Err(HttpError::invalid(
                        "agent: agent_with_overrides is not supported by herd's gateway yet; make a new agent version",
                    ));
                }
                other => {
                    return Err(HttpError::invalid(format!(
                        "agent type {other:?}: expected agent"
                    )));
                }
            }
            input::only("agent", m, &["type", "id", "version"])?;
            let version =
                match m.get("version") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().filter(|v| *v >= 1).ok_or_else(|| {
                        HttpError::invalid("agent.version must be an integer ≥ 1")
                    })?),
                };
            (input::string(m, "id", 128)?, version)
        }
        None => return Err(HttpError::invalid("agent is required")),
        Some(_) => {
            return Err(HttpError::invalid(
                "agent must be an agent id or {\"type\": \"agent\", \"id\": …}",
            ));
        }
    };
    let agent = match version {
        None => agents::latest(g, tenant, &id).await?.doc,
        Some(v) => agents::version(g, tenant, &id, v).await?,
    };
    if !agent["archived_at"].is_null() {
        return Err(HttpError::invalid(format!("agent {id:?} is archived")));
    }
    Ok(agent)
}

/// `POST /v1/sessions`.
pub async fn create(
    State(g): State<Shared>,
    t: Tenant,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    input::only(
        "session",
        &body,
        &[
            "agent",
            "environment_id",
            "title",
            "metadata",
            "resources",
            "vault_ids",
            "initial_events",
            "budget",
        ],
    )?;
    let agent = agent_for(&g, &t.0, body.get("agent")).await?;
    let env_id = input::string(&body, "environment_id", 128)?;
    let env = environments::get(&g, &t.0, &env_id).await?.doc;
    if !env["archived_at"].is_null() {
        return Err(
            HttpError::invalid(format!("environment {env_id:?} is archived"))
                .code("environment_archived"),
        );
    }
    let title = input::opt_string(&body, "title", 512)?;
    let mut metadata = BTreeMap::new();
    input::metadata_patch(&mut metadata, body.get("metadata"), false)?;
    let vault_ids = vaults::owned_ids(&g, &t.0, body.get("vault_ids")).await?;
    let resources = match body.get("resources") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.len() <= 16 => {
            a.iter().map(resource).collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(HttpError::invalid(
                "resources must be an array of at most 16",
            ));
        }
    };
    let budget = match body.get("budget") {
        None | Some(Value::Null) => None,
        Some(b) => Some(serde_json::from_value::<Budget>(b.clone()).map_err(|e| {
            HttpError::invalid(format!("budget: {e}; expected {{\"type\": \"limit\", \"max_list_cost\": {{\"amount\": \"<cents>\", \"currency\": \"USD\"}}}}"))
        })?),
    };
    let initial = match body.get("initial_events") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.len() <= MAX_INITIAL_EVENTS => a
            .iter()
            .map(|e| {
                let ev = events::parse(e)?;
                if ev.type_name() != "user.message" {
                    return Err(HttpError::invalid(format!(
                        "initial_events: {} cannot start a session; only user.message",
                        ev.type_name()
                    )));
                }
                Ok(ev)
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(HttpError::invalid(format!(
                "initial_events must be an array of at most {MAX_INITIAL_EVENTS}"
            )));
        }
    };
    let created = SessionCreated {
        environment: environments::environment_config(&env),
        title,
        metadata,
        vault_ids: vault_ids.clone(),
        resources,
        limits: SessionLimits {
            budget,
            ..Default::default()
        },
        origin: Some(Origin {
            tenant: t.0.clone(),
            agent: agent.clone(),
            environment: env.clone(),
        }),
        ..SessionCreated::new(agents::agent_config(&agent))
    };
    let id = SessionId::generate();
    let api = g.tenant_api(&t.0, vault_ids);
    let at = now();
    let index = json!({
        "type": "session_index", "id": id.as_str(), "agent_id": agent["id"],
        "agent_version": agent["version"], "environment_id": env_id,
        "created_at": at, "updated_at": at, "archived_at": null, "deleted_at": null,
    });
    // The index first: a session whose log write fails is an index record without a log
    // (not found, skipped by lists), never a log no tenant can see.
    g.store
        .put(&t.0, Kind::Session, id.as_str(), &index, Expect::New)
        .await?;
    api.create(&id, created).await?;
    for e in &initial {
        api.send(&id, e).await?;
    }
    let loaded = load(&g, &t.0, id.as_str()).await?;
    Ok(ok(view(&loaded)))
}

/// `GET /v1/sessions/{id}`.
pub async fn retrieve(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    Ok(ok(view(&load(&g, &t.0, &id).await?)))
}

async fn touch(
    g: &Shared,
    tenant: &str,
    s: &Loaded,
    f: impl FnOnce(&mut Value),
) -> Result<(), HttpError> {
    let mut doc = s.index.doc.clone();
    f(&mut doc);
    doc["updated_at"] = json!(now());
    g.store
        .put(
            tenant,
            Kind::Session,
            s.id.as_str(),
            &doc,
            Expect::At(s.index.seq),
        )
        .await?;
    Ok(())
}

/// `POST /v1/sessions/{id}`: title, metadata (a patch) and budget; the agent and vaults of a
/// session are its `session.created`'s for good.
pub async fn update(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    input::only(
        "session update",
        &body,
        &["title", "metadata", "budget", "agent", "vault_ids"],
    )?;
    if body.contains_key("vault_ids") {
        return Err(HttpError::invalid(
            "vault_ids: updating a session's vaults is not yet supported",
        ));
    }
    if body.contains_key("agent") {
        return Err(HttpError::invalid(
            "agent: herd keeps a session's agent for good (its session.created); start a new session with the new agent version",
        ));
    }
    let s = load(&g, &t.0, &id).await?;
    let api = g.tenant_api(&t.0, vec![]);
    let title = input::opt_string(&body, "title", 512)?;
    let metadata = if body.contains_key("metadata") {
        let mut m = s.state.metadata.clone();
        input::metadata_patch(&mut m, body.get("metadata"), false)?;
        Some(m)
    } else {
        None
    };
    if title.is_some() || metadata.is_some() {
        api.describe(&s.id, title, metadata).await?;
    }
    if let Some(b) = body.get("budget") {
        let budget = match b {
            Value::Null => None,
            b => Some(
                serde_json::from_value::<Budget>(b.clone())
                    .map_err(|e| HttpError::invalid(format!("budget: {e}")))?,
            ),
        };
        api.update_budget(&s.id, budget).await?;
    }
    if !body.is_empty() {
        touch(&g, &t.0, &s, |_| {}).await?;
    }
    Ok(ok(view(&load(&g, &t.0, &id).await?)))
}

/// `POST /v1/sessions/{id}/archive`: it ends for good (`session.status_terminated`).
pub async fn archive(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let s = load(&g, &t.0, &id).await?;
    if s.index.doc["archived_at"].is_null() {
        g.tenant_api(&t.0, vec![])
            .terminate(&s.id, "archived")
            .await?;
        touch(&g, &t.0, &s, |d| d["archived_at"] = json!(now())).await?;
    }
    Ok(ok(view(&load(&g, &t.0, &id).await?)))
}

/// `DELETE /v1/sessions/{id}`: it ends for good and is gone for its tenant. Its log stays in
/// `HERD_SESSIONS` (which denies deletes and purges) for the operator.
pub async fn delete(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let s = load(&g, &t.0, &id).await?;
    g.tenant_api(&t.0, vec![])
        .terminate(&s.id, "deleted")
        .await?;
    touch(&g, &t.0, &s, |d| d["deleted_at"] = json!(now())).await?;
    Ok(ok(json!({"id": id, "type": "session_deleted"})))
}

/// `GET /v1/sessions`: newest first by default.
pub async fn list(
    State(g): State<Shared>,
    t: Tenant,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(
        q.as_deref(),
        &input::with_created_at(&[
            "limit",
            "page",
            "order",
            "include_archived",
            "agent_id",
            "agent_version",
            "statuses",
            "deployment_id",
            "memory_store_id",
            "search",
        ]),
    )?;
    let limit = q.limit(20, 100)?;
    // herd's addition: `search` keeps sessions whose title or id contains it (any case).
    let search = match q.get("search") {
        Some(s) if s.chars().count() > MAX_SEARCH => {
            return Err(HttpError::invalid(format!(
                "search: at most {MAX_SEARCH} characters"
            )));
        }
        Some(s) if !s.trim().is_empty() => Some(s.trim().to_lowercase()),
        _ => None,
    };
    // The cursor is the last id returned: sessions made between two pages never shift one.
    let after = match q.get("page") {
        None => None,
        Some(p) => Some(
            p.strip_prefix("page_")
                .and_then(|id| input::id("session", "sesn_", id).ok())
                .ok_or_else(|| {
                    HttpError::invalid(format!("page {p:?} is not a cursor this API returned"))
                })?
                .to_string(),
        ),
    };
    let archived = q.flag("include_archived")?;
    let range = q.time_range()?;
    let statuses = q.all("statuses");
    for s in &statuses {
        if !["idle", "running", "rescheduling", "terminated"].contains(s) {
            return Err(HttpError::invalid(format!(
                "statuses: {s:?} is not a status (idle, running, rescheduling, terminated)"
            )));
        }
    }
    let agent_version = q
        .get("agent_version")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| HttpError::invalid("agent_version must be an integer"))
        })
        .transpose()?;
    // herd has no deployments or memory stores: no session belongs to one.
    let none_match = q.get("deployment_id").is_some() || q.get("memory_store_id").is_some();
    let mut ids = g.store.ids(&t.0, Kind::Session).await?;
    let desc = q.descending(true)?;
    if desc {
        ids.reverse();
    }
    let mut data = Vec::new();
    let mut last: Option<String> = None;
    let beyond = |id: &&String| match &after {
        None => true,
        Some(a) if desc => id.as_str() < a.as_str(),
        Some(a) => id.as_str() > a.as_str(),
    };
    for id in ids.iter().filter(beyond) {
        if none_match {
            break;
        }
        let Some(index) = g.store.get::<Value>(&t.0, Kind::Session, id).await? else {
            continue;
        };
        let d = &index.doc;
        let visible = d["deleted_at"].is_null()
            && (archived || d["archived_at"].is_null())
            && q.get("agent_id").is_none_or(|a| d["agent_id"] == a)
            && agent_version.is_none_or(|v| d["agent_version"] == v)
            && range.admits(&d["created_at"]);
        if !visible {
            continue;
        }
        let Ok(loaded) = load(&g, &t.0, id).await else {
            continue;
        };
        if !statuses.is_empty() && !statuses.contains(&status(&loaded)) {
            continue;
        }
        if let Some(needle) = &search {
            let title = loaded.state.title.as_deref().unwrap_or("").to_lowercase();
            if !title.contains(needle) && !id.to_lowercase().contains(needle) {
                continue;
            }
        }
        if data.len() == limit {
            let next = last.map(|l| format!("page_{l}"));
            return Ok(ok(
                json!({"data": data, "next_page": next, "prev_page": null}),
            ));
        }
        last = Some(id.clone());
        data.push(view(&loaded));
    }
    Ok(ok(
        json!({"data": data, "next_page": null, "prev_page": null}),
    ))
}

/// The longest `search` a sessions list takes.
pub const MAX_SEARCH: usize = 200;

/// Builds the request's events into herd events (used by `initial_events` too).
pub fn parse_all(list: &Map<String, Value>) -> Result<Vec<Event>, HttpError> {
    match list.get("events") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= events::MAX_SEND => {
            a.iter().map(events::parse).collect()
        }
        Some(Value::Array(a)) if a.is_empty() => {
            Err(HttpError::invalid("events must not be empty"))
        }
        Some(Value::Array(_)) => Err(HttpError::invalid(format!(
            "events: at most {} per request",
            events::MAX_SEND
        ))),
        _ => Err(HttpError::invalid("the body must be {\"events\": [...]}")),
    }
}
