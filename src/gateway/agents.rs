//! Agents: `POST/GET /v1/agents`, `GET/POST /v1/agents/{id}`, `…/archive`, `…/versions`.
//!
//! An agent is stored as the API's agent object, resolved (the model always an object, every
//! toolset entry filled in); each change is a new version, a new message on the agent's
//! subject. A session takes a copy of one version into its `session.created`, so updating
//! an agent never changes a session that already runs it.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::error::HttpError;
use super::input::{self, Query};
use super::store::{Expect, Kind, Stored};
use super::{Shared, Tenant, now, ok, page};
use crate::event::{AgentConfig, McpServer, McpToolPolicy, PermissionPolicy, ToolConfig, ToolType};

/// The Managed Agents toolset's tools, and what herd runs for each (`None`: herd has no such
/// tool, so it can be in the toolset only disabled).
const TOOLSET: &[(&str, Option<&str>)] = &[
    ("bash", Some("bash")),
    ("edit", Some("edit")),
    ("read", Some("read")),
    ("write", Some("write")),
    ("glob", Some("glob")),
    ("grep", Some("grep")),
    ("web_fetch", Some("http_request")),
    ("web_search", None),
];

/// The toolset's type name.
pub const TOOLSET_TYPE: &str = "agent_toolset_20260401";

const FIELDS: &[&str] = &[
    "name",
    "model",
    "description",
    "system",
    "tools",
    "mcp_servers",
    "skills",
    "multiagent",
    "metadata",
    "execution_identity",
];

fn model(v: &Value) -> Result<Value, HttpError> {
    let (id, rest) = match v {
        Value::String(s) => (s.clone(), Map::new()),
        Value::Object(m) => {
            input::only("model", m, &["id", "effort", "inference_geo", "speed"])?;
            let mut rest = m.clone();
            rest.remove("id");
            (input::string(m, "id", 256)?, rest)
        }
        _ => return Err(HttpError::invalid("model must be a string or {\"id\": …}")),
    };
    if id.trim().is_empty() || id.len() > 256 {
        return Err(HttpError::invalid(
            "model must be a model id of 1 to 256 characters",
        ));
    }
    for (k, v) in rest {
        let harmless = v.is_null() || (k == "speed" && v == "standard");
        if !harmless {
            return Err(HttpError::invalid(format!(
                "model.{k}: herd sends the model id only and cannot honour {k}={v}"
            )));
        }
    }
    Ok(json!({"id": id}))
}

fn policy(v: Option<&Value>, default: &str) -> Result<&'static str, HttpError> {
    let kind = match v {
        None | Some(Value::Null) => default,
        Some(Value::Object(m)) => {
            input::only("permission_policy", m, &["type"])?;
            m.get("type").and_then(Value::as_str).unwrap_or("")
        }
        Some(_) => {
            return Err(HttpError::invalid(
                "permission_policy must be {\"type\": …}",
            ));
        }
    };
    match kind {
        "always_allow" => Ok("always_allow"),
        "always_ask" => Ok("always_ask"),
        "auto" => Err(HttpError::invalid(
            "permission_policy auto: herd has no automatic classifier; use always_allow or always_ask",
        )),
        other => Err(HttpError::invalid(format!(
            "permission_policy {other:?}: expected always_allow or always_ask"
        ))),
    }
}

fn enabled(m: &Map<String, Value>, default: bool) -> Result<bool, HttpError> {
    match m.get("enabled") {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(HttpError::invalid("enabled must be true or false")),
    }
}

/// A toolset's `default_config` (`enabled`, `permission_policy`), empty when absent.
fn default_config(m: &Map<String, Value>) -> Result<Map<String, Value>, HttpError> {
    let default = match m.get("default_config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(d)) => d.clone(),
        Some(_) => return Err(HttpError::invalid("default_config must be an object")),
    };
    input::only(
        "default_config",
        &default,
        &["enabled", "permission_policy"],
    )?;
    Ok(default)
}

fn toolset(m: &Map<String, Value>) -> Result<Value, HttpError> {
    input::only("agent toolset", m, &["type", "default_config", "configs"])?;
    let default = default_config(m)?;
    let d_enabled = enabled(&default, true)?;
    let d_policy = policy(default.get("permission_policy"), "always_allow")?;
    let mut given: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    match m.get("configs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cs)) => {
            for c in cs {
                let Value::Object(c) = c else {
                    return Err(HttpError::invalid("each of configs must be an object"));
                };
                input::only(
                    "toolset config",
                    c,
                    &["name", "enabled", "permission_policy"],
                )?;
                let name = input::string(c, "name", 64)?;
                if !TOOLSET.iter().any(|(n, _)| *n == name) {
                    return Err(HttpError::invalid(format!(
                        "toolset config {name:?}: not a tool of {TOOLSET_TYPE} (bash, edit, read, write, glob, grep, web_fetch, web_search)"
                    )));
                }
                if given.insert(name.clone(), c.clone()).is_some() {
                    return Err(HttpError::invalid(format!(
                        "toolset config {name:?} is given twice"
                    )));
                }
            }
        }
        Some(_) => return Err(HttpError::invalid("configs must be an array")),
    }
    let mut configs = Vec::new();
    for (name, herd) in TOOLSET {
        let (on, pol) = match given.get(*name) {
            Some(c) => {
                let on = enabled(c, d_enabled)?;
                if on && herd.is_none() && c.contains_key("enabled") {
                    return Err(HttpError::invalid(format!(
                        "toolset tool {name:?}: herd has no {name} tool; leave it disabled"
                    )));
                }
                (on, policy(c.get("permission_policy"), d_policy)?)
            }
            None => (d_enabled, d_policy),
        };
        // A tool herd does not have is shown disabled, not silently claimed.
        let on = on && herd.is_some();
        configs.push(json!({"name": name, "enabled": on, "permission_policy": {"type": pol}}));
    }
    Ok(json!({
        "type": TOOLSET_TYPE,
        "default_config": {"enabled": d_enabled, "permission_policy": {"type": d_policy}},
        "configs": configs,
    }))
}

fn custom_tool(m: &Map<String, Value>) -> Result<Value, HttpError> {
    input::only(
        "custom tool",
        m,
        &["type", "name", "description", "input_schema"],
    )?;
    let name = input::string(m, "name", 64)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(HttpError::invalid(format!(
            "custom tool name {name:?}: letters, digits, _ and - only"
        )));
    }
    let description = input::string(m, "description", 4096)?;
    let schema = match m.get("input_schema") {
        Some(Value::Object(s)) if s.get("type") == Some(&json!("object")) => s.clone(),
        _ => {
            return Err(HttpError::invalid(format!(
                "custom tool {name:?}: input_schema must be an object schema ({{\"type\": \"object\", …}})"
            )));
        }
    };
    Ok(json!({"type": "custom", "name": name, "description": description, "input_schema": schema}))
}

/// Resolves `tools` as the API returns them.
fn tools(v: Option<&Value>) -> Result<Vec<Value>, HttpError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(HttpError::invalid("tools must be an array")),
    };
    if list.len() > 256 {
        return Err(HttpError::invalid("tools: at most 256"));
    }
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for t in list {
        let Value::Object(m) = t else {
            return Err(HttpError::invalid("each tool must be an object"));
        };
        let resolved = match m.get("type").and_then(Value::as_str) {
            Some(TOOLSET_TYPE) => toolset(m)?,
            Some("custom") => custom_tool(m)?,
            Some("mcp_toolset") => mcp_toolset(m)?,
            other => {
                return Err(HttpError::invalid(format!(
                    "tools: unknown type {other:?}; expected {TOOLSET_TYPE}, mcp_toolset or custom"
                )));
            }
        };
        let key = |t: &ToolConfig| match &t.mcp_server_name {
            Some(server) => format!("mcp_toolset {server}"),
            None => t.name.clone(),
        };
        for name in herd_tools(&resolved).iter().map(key) {
            if !names.insert(name.clone()) {
                return Err(HttpError::invalid(format!(
                    "tools: {name:?} is defined twice"
                )));
            }
        }
        out.push(resolved);
    }
    Ok(out)
}

/// An `mcp_toolset` entry: the tools of one of the agent's MCP servers, all enabled and
/// `always_ask` unless its configs say otherwise (a server's tools are someone else's code).
fn mcp_toolset(m: &Map<String, Value>) -> Result<Value, HttpError> {
    input::only(
        "mcp_toolset",
        m,
        &["type", "mcp_server_name", "default_config", "configs"],
    )?;
    let server = input::string(m, "mcp_server_name", 64)?;
    let config = |c: &Map<String, Value>, default_on: bool, default_policy: &str| {
        let on = enabled(c, default_on)?;
        let pol = policy(c.get("permission_policy"), default_policy)?;
        Ok::<_, HttpError>((on, pol))
    };
    let default = default_config(m)?;
    let (d_on, d_policy) = config(&default, true, "always_ask")?;
    let mut configs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    match m.get("configs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cs)) if cs.len() <= 256 => {
            for c in cs {
                let Value::Object(c) = c else {
                    return Err(HttpError::invalid("each of configs must be an object"));
                };
                input::only(
                    "mcp_toolset config",
                    c,
                    &["name", "enabled", "permission_policy"],
                )?;
                let name = input::string(c, "name", 64)?;
                if !seen.insert(name.clone()) {
                    return Err(HttpError::invalid(format!(
                        "mcp_toolset config {name:?} is given twice"
                    )));
                }
                let (on, pol) = config(c, d_on, d_policy)?;
                configs
                    .push(json!({"name": name, "enabled": on, "permission_policy": {"type": pol}}));
            }
        }
        Some(_) => {
            return Err(HttpError::invalid(
                "configs must be an array of at most 256",
            ));
        }
    }
    Ok(json!({
        "type": "mcp_toolset", "mcp_server_name": server,
        "default_config": {"enabled": d_on, "permission_policy": {"type": d_policy}},
        "configs": configs,
    }))
}

/// `mcp_servers` as the API returns them: `{type: "url", name, url}`, at most 20, names
/// unique, each named by an `mcp_toolset` of `tools`.
fn mcp_servers(v: Option<&Value>, tools: &Value) -> Result<Vec<Value>, HttpError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) if a.len() <= crate::event::tools::MAX_MCP_SERVERS => a,
        Some(_) => {
            return Err(HttpError::invalid(
                "mcp_servers must be an array of at most 20",
            ));
        }
    };
    let mut out = Vec::new();
    for s in list {
        let Value::Object(m) = s else {
            return Err(HttpError::invalid("each MCP server must be an object"));
        };
        input::only("MCP server", m, &["type", "name", "url"])?;
        if m.get("type").and_then(Value::as_str) != Some("url") {
            return Err(HttpError::invalid("MCP server type must be \"url\""));
        }
        let name = input::string(m, "name", 64)?;
        crate::event::check_token("MCP server name", &name)
            .map_err(|e| HttpError::invalid(e.to_string()))?;
        let url = input::string(m, "url", 2048)?;
        crate::event::check_mcp_url(&url)
            .map_err(|e| HttpError::invalid(format!("MCP server {name:?}: {e}")))?;
        if out.iter().any(|o: &Value| o["name"] == json!(name)) {
            return Err(HttpError::invalid(format!(
                "the MCP server {name:?} is named twice"
            )));
        }
        out.push(json!({"type": "url", "name": name, "url": url}));
    }
    let toolsets: Vec<&str> = tools
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "mcp_toolset")
        .filter_map(|t| t["mcp_server_name"].as_str())
        .collect();
    for s in &out {
        if !toolsets.contains(&s["name"].as_str().unwrap_or_default()) {
            return Err(HttpError::invalid(format!(
                "the MCP server {} is named by no mcp_toolset (each server needs one)",
                s["name"]
            )));
        }
    }
    for t in toolsets {
        if !out.iter().any(|s| s["name"] == json!(t)) {
            return Err(HttpError::invalid(format!(
                "mcp_toolset names the MCP server {t:?}, which is not in mcp_servers"
            )));
        }
    }
    Ok(out)
}

fn empty_list(m: &Map<String, Value>, field: &str) -> Result<(), HttpError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        Some(_) => Err(HttpError::invalid(format!(
            "{field} is not supported by herd's gateway yet; leave it empty"
        ))),
    }
}

fn execution_identity(v: Option<&Value>) -> Result<(), HttpError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v == &json!({"type": "service_account"}) => Ok(()),
        Some(v) => Err(HttpError::invalid(format!(
            "execution_identity {v}: herd runs tools as the sandbox's user only (service_account)"
        ))),
    }
}

/// Builds (or, with `old`, updates) an agent object from a request body. `None` from an
/// update means nothing changed.
pub fn resolve(
    body: &Map<String, Value>,
    old: Option<&Value>,
    id: &str,
    at: &str,
) -> Result<Value, HttpError> {
    let mut known = FIELDS.to_vec();
    if old.is_some() {
        known.push("version");
    }
    input::only("agent", body, &known)?;
    empty_list(body, "skills")?;
    if body.get("multiagent").is_some_and(|v| !v.is_null()) {
        return Err(HttpError::invalid(
            "multiagent is not supported by herd's gateway yet",
        ));
    }
    execution_identity(body.get("execution_identity"))?;
    let mut a = match old {
        Some(o) => o.clone(),
        None => json!({
            "type": "agent", "id": id, "description": null, "system": null, "tools": [],
            "mcp_servers": [], "skills": [], "multiagent": null, "metadata": {},
            "execution_identity": {"type": "service_account"}, "version": 1,
            "created_at": at, "updated_at": at, "archived_at": null,
        }),
    };
    if old.is_none() || body.contains_key("name") {
        a["name"] = input::string(body, "name", 256)?.into();
    }
    if let Some(m) = body.get("model") {
        a["model"] = model(m)?;
    } else if old.is_none() {
        return Err(HttpError::invalid("model is required"));
    }
    for (field, max) in [("description", 2048), ("system", 100_000)] {
        if body.contains_key(field) {
            a[field] = match input::opt_string(body, field, max)? {
                Some(s) if !s.is_empty() => s.into(),
                _ => Value::Null,
            };
        }
    }
    if body.contains_key("tools") {
        a["tools"] = tools(body.get("tools"))?.into();
    }
    // Servers and toolsets are checked together, whichever of the two an update changes.
    let servers = if body.contains_key("mcp_servers") {
        body.get("mcp_servers").cloned()
    } else {
        Some(a["mcp_servers"].clone())
    };
    a["mcp_servers"] = mcp_servers(servers.as_ref(), &a["tools"])?.into();
    if body.contains_key("metadata") {
        let mut m: BTreeMap<String, String> =
            serde_json::from_value(a["metadata"].clone()).unwrap_or_default();
        input::metadata_patch(&mut m, body.get("metadata"), false)?;
        a["metadata"] = json!(m);
    }
    Ok(a)
}

/// The built-in and custom tools herd runs for a resolved tool entry.
fn herd_tools(tool: &Value) -> Vec<ToolConfig> {
    let policy = |c: &Value| match c["permission_policy"]["type"].as_str() {
        Some("always_ask") => PermissionPolicy::AlwaysAsk,
        _ => PermissionPolicy::AlwaysAllow,
    };
    match tool["type"].as_str() {
        Some(TOOLSET_TYPE) => tool["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["enabled"] == json!(true))
            .filter_map(|c| {
                let name = c["name"].as_str()?;
                let herd = TOOLSET.iter().find(|(n, _)| *n == name)?.1?;
                Some(ToolConfig {
                    name: herd.to_string(),
                    kind: "builtin".into(),
                    description: None,
                    input_schema: None,
                    permission_policy: policy(c),
                    mcp_server_name: None,
                    default_config: None,
                    configs: Vec::new(),
                })
            })
            .collect(),
        Some("mcp_toolset") => {
            let p = |c: &Value| McpToolPolicy {
                name: c["name"].as_str().map(str::to_string),
                enabled: c["enabled"].as_bool(),
                permission_policy: Some(policy(c)),
            };
            vec![ToolConfig {
                name: String::new(),
                kind: ToolType::McpToolset,
                description: None,
                input_schema: None,
                permission_policy: PermissionPolicy::AlwaysAsk,
                mcp_server_name: tool["mcp_server_name"].as_str().map(str::to_string),
                default_config: Some(McpToolPolicy {
                    name: None,
                    ..p(&tool["default_config"])
                }),
                configs: tool["configs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(p)
                    .collect(),
            }]
        }
        Some("custom") => vec![ToolConfig {
            name: tool["name"].as_str().unwrap_or_default().to_string(),
            kind: "custom".into(),
            description: tool["description"].as_str().map(str::to_string),
            input_schema: Some(tool["input_schema"].clone()),
            permission_policy: PermissionPolicy::AlwaysAllow,
            mcp_server_name: None,
            default_config: None,
            configs: Vec::new(),
        }],
        _ => vec![],
    }
}

/// What herd runs for an agent object: its model, system prompt and tools.
pub fn agent_config(agent: &Value) -> AgentConfig {
    AgentConfig {
        name: agent["name"].as_str().map(str::to_string),
        system: agent["system"].as_str().map(str::to_string),
        tools: agent["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(herd_tools)
            .collect(),
        // The server's credential is found by the hand: a static_bearer credential of the
        // session's vaults for the server's host (as the hosted API matches mcp_server_url).
        mcp_servers: agent["mcp_servers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| McpServer {
                kind: "url".into(),
                name: s["name"].as_str().unwrap_or_default().to_string(),
                url: s["url"].as_str().unwrap_or_default().to_string(),
                credential: None,
            })
            .collect(),
        ..AgentConfig::new(agent["model"]["id"].as_str().unwrap_or_default())
    }
}

fn changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("updated_at");
        }
        v
    };
    strip(old) != strip(new)
}

/// `POST /v1/agents`.
pub async fn create(
    State(g): State<Shared>,
    t: Tenant,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    g.room_for(&t.0, Kind::Agent).await?;
    let id = format!("agent_{}", uuid::Uuid::now_v7().simple());
    let agent = resolve(&body, None, &id, &now())?;
    g.store
        .put(&t.0, Kind::Agent, &id, &agent, Expect::New)
        .await?;
    Ok(ok(agent))
}

/// The latest version of one of the tenant's agents.
pub async fn latest(g: &Shared, tenant: &str, id: &str) -> Result<Stored<Value>, HttpError> {
    let id = input::id("agent", "agent_", id)?;
    g.store
        .get(tenant, Kind::Agent, id)
        .await?
        .ok_or_else(|| HttpError::not_found("agent", id))
}

/// One version of one of the tenant's agents.
pub async fn version(g: &Shared, tenant: &str, id: &str, v: u64) -> Result<Value, HttpError> {
    let id = input::id("agent", "agent_", id)?;
    let mut found = None;
    let mut after = 0;
    loop {
        let batch = g
            .store
            .versions::<Value>(tenant, Kind::Agent, id, after, 256)
            .await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for s in batch {
            if s.doc["version"].as_u64() == Some(v) {
                found = Some(s.doc);
            }
        }
    }
    found.ok_or_else(|| HttpError::not_found("agent version", &format!("{id} v{v}")))
}

/// `GET /v1/agents/{id}?version=`.
pub async fn retrieve(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(q.as_deref(), &["version"])?;
    match q.get("version") {
        None => Ok(ok(latest(&g, &t.0, &id).await?.doc)),
        Some(v) => {
            let v = v.parse::<u64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
                HttpError::invalid(format!("version must be an integer ≥ 1, not {v:?}"))
            })?;
            Ok(ok(version(&g, &t.0, &id, v).await?))
        }
    }
}

/// `POST /v1/agents/{id}`: a new version when anything changed; `version` is an optimistic
/// lock (a stale one is a 409 that the SDK does not retry).
pub async fn update(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    let cur = latest(&g, &t.0, &id).await?;
    if !cur.doc["archived_at"].is_null() {
        return Err(HttpError::invalid(format!("agent {id:?} is archived")));
    }
    let have = cur.doc["version"].as_u64().unwrap_or(1);
    match body.get("version") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(have) => {}
        Some(v) => {
            return Err(HttpError::conflict(format!(
                "agent {id:?} is at version {have}, not {v}: read it again and retry"
            )));
        }
    }
    let at = now();
    let mut new = resolve(&body, Some(&cur.doc), &id, &at)?;
    if !changed(&cur.doc, &new) {
        return Ok(ok(cur.doc));
    }
    if have >= super::MAX_AGENT_VERSIONS {
        return Err(HttpError::busy(format!(
            "agent {id:?} has {have} versions; at most {}: make a new agent",
            super::MAX_AGENT_VERSIONS
        ))
        .code("quota_exceeded"));
    }
    new["version"] = json!(have + 1);
    new["updated_at"] = json!(at);
    g.store
        .put(&t.0, Kind::Agent, &id, &new, Expect::At(cur.seq))
        .await?;
    Ok(ok(new))
}

/// `POST /v1/agents/{id}/archive`.
pub async fn archive(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let cur = latest(&g, &t.0, &id).await?;
    Ok(ok(page::stamp(
        &g,
        &t.0,
        Kind::Agent,
        &id,
        cur,
        "archived_at",
    )
    .await?))
}

/// `GET /v1/agents`.
pub async fn list(
    State(g): State<Shared>,
    t: Tenant,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(
        q.as_deref(),
        &input::with_created_at(&["limit", "page", "include_archived"]),
    )?;
    page::objects(&g, &t.0, Kind::Agent, &q, 20, 100).await
}

/// `GET /v1/agents/{id}/versions`: every version, oldest first.
pub async fn versions(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(q.as_deref(), &["limit", "page"])?;
    let limit = q.limit(20, 100)?;
    let after = input::cursor(q.get("page"))?.unwrap_or(0);
    latest(&g, &t.0, &id).await?;
    // Archiving writes the same version again: one entry per version, its latest record.
    let mut data: Vec<Value> = Vec::new();
    let mut next = after;
    let mut last_seq = after;
    loop {
        let batch = g
            .store
            .versions::<Value>(&t.0, Kind::Agent, &id, last_seq, 64)
            .await?;
        let Some(l) = batch.last() else { break };
        last_seq = l.seq;
        for s in batch {
            let same = data
                .last()
                .is_some_and(|p| p["version"] == s.doc["version"]);
            if same {
                if let Some(prev) = data.last_mut() {
                    *prev = s.doc;
                }
            } else if data.len() == limit {
                return Ok(ok(
                    json!({"data": data, "next_page": input::next_page(next)}),
                ));
            } else {
                data.push(s.doc);
            }
            next = s.seq;
        }
    }
    Ok(ok(json!({"data": data, "next_page": null})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_string_model_and_a_default_toolset_resolve_as_the_api_returns_them() {
        let a = resolve(
            &body(json!({"name": "n", "model": "claude-sonnet-4-6", "tools": [
                {"type": TOOLSET_TYPE, "default_config": {"permission_policy": {"type": "always_ask"}}},
                {"type": "custom", "name": "get_weather", "description": "w", "input_schema": {"type": "object"}}
            ]})),
            None,
            "agent_1",
            "t",
        )
        .unwrap();
        assert_eq!(a["model"], json!({"id": "claude-sonnet-4-6"}));
        assert_eq!(a["version"], 1);
        let configs = a["tools"][0]["configs"].as_array().unwrap();
        assert_eq!(configs.len(), 8);
        let search = configs.iter().find(|c| c["name"] == "web_search").unwrap();
        assert_eq!(
            search["enabled"], false,
            "herd has no web_search: shown off"
        );
        let cfg = agent_config(&a);
        assert_eq!(cfg.model, "claude-sonnet-4-6");
        let names: Vec<_> = cfg.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bash",
                "edit",
                "read",
                "write",
                "glob",
                "grep",
                "http_request",
                "get_weather"
            ]
        );
        assert!(
            cfg.tools[..7]
                .iter()
                .all(|t| t.permission_policy == PermissionPolicy::AlwaysAsk)
        );
        assert_eq!(cfg.tools[7].kind, "custom");
    }

    #[test]
    fn mcp_servers_and_their_toolsets_become_herd_configuration() {
        let body = json!({"name": "n", "model": "m",
            "mcp_servers": [{"type": "url", "name": "docs", "url": "https://mcp.example.com/mcp"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "docs",
                "configs": [{"name": "lookup", "permission_policy": {"type": "always_allow"}}, {"name": "drop", "enabled": false}]}]});
        let a = resolve(body.as_object().unwrap(), None, "agent_1", "t").unwrap();
        assert_eq!(a["mcp_servers"][0]["name"], "docs");
        assert_eq!(
            a["tools"][0]["default_config"]["permission_policy"]["type"],
            "always_ask"
        );
        let cfg = agent_config(&a);
        assert_eq!(cfg.mcp_servers[0].url, "https://mcp.example.com/mcp");
        let set = &cfg.tools[0];
        assert_eq!(set.kind, ToolType::McpToolset);
        assert_eq!(
            set.mcp_policy("lookup"),
            Some(PermissionPolicy::AlwaysAllow)
        );
        assert_eq!(set.mcp_policy("other"), Some(PermissionPolicy::AlwaysAsk));
        assert_eq!(set.mcp_policy("drop"), None);
        let mut created = crate::event::SessionCreated::new(cfg);
        created.validate().unwrap();
        // Removing the servers while a toolset names one is refused.
        let update = json!({"mcp_servers": []});
        let e = resolve(update.as_object().unwrap(), Some(&a), "agent_1", "t").unwrap_err();
        assert!(e.message.contains("not in mcp_servers"), "{}", e.message);
    }

    #[test]
    fn what_herd_cannot_honour_is_refused_by_name() {
        for (bad, named) in [
            (
                json!({"name": "n", "model": "m", "skills": [{"type": "anthropic", "skill_id": "x"}]}),
                "skills",
            ),
            (
                json!({"name": "n", "model": "m", "mcp_servers": [{"type": "url", "name": "a", "url": "https://x"}]}),
                "named by no mcp_toolset",
            ),
            (
                json!({"name": "n", "model": "m", "tools": [{"type": "mcp_toolset", "mcp_server_name": "a"}]}),
                "not in mcp_servers",
            ),
            (
                json!({"name": "n", "model": "m", "mcp_servers": [{"type": "url", "name": "a", "url": "ftp://x"}], "tools": [{"type": "mcp_toolset", "mcp_server_name": "a"}]}),
                "not an http(s) URL",
            ),
            (
                json!({"name": "n", "model": {"id": "m", "effort": "high"}}),
                "effort",
            ),
            (
                json!({"name": "n", "model": "m", "frobnicate": 1}),
                "frobnicate",
            ),
            (
                json!({"name": "n", "model": "m", "tools": [{"type": TOOLSET_TYPE, "configs": [{"name": "web_search", "enabled": true}]}]}),
                "web_search",
            ),
            (
                json!({"name": "n", "model": "m", "tools": [{"type": TOOLSET_TYPE, "default_config": {"permission_policy": {"type": "auto"}}}]}),
                "auto",
            ),
            (
                json!({"name": "n", "model": "m", "execution_identity": {"type": "aws_role", "role_arn": "x"}}),
                "execution_identity",
            ),
            (json!({"model": "m"}), "name"),
            (json!({"name": "n"}), "model"),
        ] {
            let e = resolve(&body(bad.clone()), None, "agent_1", "t").unwrap_err();
            assert!(e.message.contains(named), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn an_update_keeps_what_it_does_not_name_and_patches_metadata() {
        let a = resolve(
            &body(
                json!({"name": "n", "model": "m", "system": "s", "metadata": {"a": "1", "b": "2"}}),
            ),
            None,
            "agent_1",
            "t",
        )
        .unwrap();
        let b = resolve(
            &body(json!({"description": "d", "metadata": {"a": null}, "version": 1})),
            Some(&a),
            "agent_1",
            "t2",
        )
        .unwrap();
        assert_eq!(b["system"], "s");
        assert_eq!(b["description"], "d");
        assert_eq!(b["metadata"], json!({"b": "2"}));
        assert!(changed(&a, &b));
        let c = resolve(&body(json!({"system": ""})), Some(&b), "agent_1", "t3").unwrap();
        assert!(c["system"].is_null());
        let same = resolve(&body(json!({"name": "n"})), Some(&a), "agent_1", "t4").unwrap();
        assert!(!changed(&a, &same));
    }
}
