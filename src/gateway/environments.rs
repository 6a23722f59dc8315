//! Environments: `POST/GET /v1/environments`, `GET/POST/DELETE /v1/environments/{id}`,
//! `…/archive`. The API's `config` maps onto herd's environment: networking `limited` with
//! `allowed_hosts` is herd's proxy for exactly those hosts (and what `http_request` may
//! reach); no networking is herd's default, none at all. What herd cannot honour
//! (unrestricted networking, package lists, self-hosted work queues) is a 400 naming it.
//! herd's addition: `config.image`, the sandbox image (the hands' default when absent).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::error::HttpError;
use super::input::{self, Query};
use super::page;
use super::store::{Expect, Kind, Stored};
use super::{Shared, Tenant, now, ok};
use crate::event::{EnvironmentConfig, normalize_host};

const PACKAGE_MANAGERS: &[&str] = &["apt", "cargo", "gem", "go", "npm", "pip"];

fn networking(v: Option<&Value>) -> Result<Value, HttpError> {
    let m = match v {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(HttpError::invalid("config.networking must be an object")),
    };
    match m.get("type").and_then(Value::as_str).unwrap_or("limited") {
        "limited" => {}
        "unrestricted" => {
            return Err(HttpError::invalid(
                "config.networking unrestricted: herd sandboxes never get an open network; use {\"type\": \"limited\", \"allowed_hosts\": [\"host\", …]}",
            ));
        }
        other => {
            return Err(HttpError::invalid(format!(
                "config.networking type {other:?}: expected limited"
            )));
        }
    }
    input::only(
        "config.networking",
        &m,
        &[
            "type",
            "allowed_hosts",
            "allow_mcp_servers",
            "allow_package_managers",
        ],
    )?;
    for flag in ["allow_mcp_servers", "allow_package_managers"] {
        match m.get(flag) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                return Err(HttpError::invalid(format!(
                    "config.networking.{flag}: herd cannot honour it; name the hosts in allowed_hosts"
                )));
            }
            Some(_) => return Err(HttpError::invalid(format!("{flag} must be a boolean"))),
        }
    }
    let hosts = match m.get("allowed_hosts") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.len() <= 256 => {
            a.iter()
                .map(|h| match h.as_str() {
                    Some(h) => normalize_host(h)
                        .map_err(|e| HttpError::invalid(format!("allowed_hosts: {e}"))),
                    None => Err(HttpError::invalid("allowed_hosts must be strings")),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => {
            return Err(HttpError::invalid(
                "allowed_hosts must be an array of at most 256 hosts",
            ));
        }
    };
    Ok(
        json!({"type": "limited", "allowed_hosts": hosts, "allow_mcp_servers": false, "allow_package_managers": false}),
    )
}

fn packages(v: Option<&Value>) -> Result<Value, HttpError> {
    if let Some(Value::Object(m)) = v {
        let mut known = PACKAGE_MANAGERS.to_vec();
        known.push("type");
        input::only("config.packages", m, &known)?;
        for pm in PACKAGE_MANAGERS {
            if m.get(*pm)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                return Err(HttpError::invalid(format!(
                    "config.packages.{pm}: herd does not install packages; bake them into the sandbox image (config.image)"
                )));
            }
        }
    } else if v.is_some_and(|v| !v.is_null()) {
        return Err(HttpError::invalid("config.packages must be an object"));
    }
    let mut p = json!({"type": "packages"});
    for pm in PACKAGE_MANAGERS {
        p[*pm] = json!([]);
    }
    Ok(p)
}

/// Resolves `config` as the API returns it (everything filled in), keeping what `old` had
/// where the update leaves a part out.
fn config(v: Option<&Value>, old: Option<&Value>) -> Result<Value, HttpError> {
    let m = match v {
        None | Some(Value::Null) => {
            return match old {
                Some(o) => Ok(o.clone()),
                None => Ok(
                    json!({"type": "cloud", "networking": networking(None)?, "packages": packages(None)?}),
                ),
            };
        }
        Some(Value::Object(m)) => m,
        Some(_) => return Err(HttpError::invalid("config must be an object")),
    };
    match m.get("type").and_then(Value::as_str) {
        Some("cloud") => {}
        Some("self_hosted") => {
            return Err(HttpError::invalid(
                "config self_hosted: herd runs tools in its own hands; self-hosted work queues are not supported yet",
            ));
        }
        other => {
            return Err(HttpError::invalid(format!(
                "config type {other:?}: expected cloud"
            )));
        }
    }
    input::only("config", m, &["type", "networking", "packages", "image"])?;
    let keep = |part: &str| old.map(|o| o[part].clone()).filter(|v| !v.is_null());
    let mut c = json!({
        "type": "cloud",
        "networking": match (m.get("networking"), keep("networking")) {
            (None, Some(o)) => o,
            (n, _) => networking(n)?,
        },
        "packages": match (m.get("packages"), keep("packages")) {
            (None, Some(o)) => o,
            (p, _) => packages(p)?,
        },
    });
    let image = match m.get("image") {
        None => keep("image").and_then(|v| v.as_str().map(str::to_string)),
        Some(_) => input::opt_string(m, "image", 256)?,
    };
    if let Some(image) = image {
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return Err(HttpError::invalid(format!(
                "config.image {image:?} is not an image name"
            )));
        }
        c["image"] = image.into();
    }
    Ok(c)
}

/// Builds (or updates) an environment object from a request body.
pub fn resolve(
    body: &Map<String, Value>,
    old: Option<&Value>,
    id: &str,
    at: &str,
) -> Result<Value, HttpError> {
    input::only(
        "environment",
        body,
        &["name", "config", "description", "metadata", "scope"],
    )?;
    let mut e = match old {
        Some(o) => o.clone(),
        None => json!({
            "type": "environment", "id": id, "description": null, "metadata": {},
            "scope": "organization", "created_at": at, "updated_at": at, "archived_at": null,
        }),
    };
    if old.is_none() || body.contains_key("name") {
        e["name"] = input::string(body, "name", 256)?.into();
    }
    if body.contains_key("description") {
        e["description"] = input::opt_string(body, "description", 2048)?
            .filter(|s| !s.is_empty())
            .map_or(Value::Null, Value::from);
    }
    e["config"] = config(body.get("config"), old.map(|o| &o["config"]))?;
    if let Some(scope) = body.get("scope").filter(|s| !s.is_null()) {
        match scope.as_str() {
            Some(s @ ("organization" | "account")) => e["scope"] = s.into(),
            _ => return Err(HttpError::invalid("scope must be organization or account")),
        }
    }
    if body.contains_key("metadata") {
        let mut m: BTreeMap<String, String> =
            serde_json::from_value(e["metadata"].clone()).unwrap_or_default();
        input::metadata_patch(&mut m, body.get("metadata"), true)?;
        e["metadata"] = json!(m);
    }
    e["updated_at"] = at.into();
    Ok(e)
}

/// What herd runs an environment object as.
pub fn environment_config(env: &Value) -> EnvironmentConfig {
    let hosts: Vec<String> = env["config"]["networking"]["allowed_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect();
    EnvironmentConfig {
        image: env["config"]["image"].as_str().map(str::to_string),
        networking: (!hosts.is_empty()).then(|| "limited".to_string()),
        allowed_hosts: hosts,
    }
}

/// One of the tenant's environments (deleted ones are gone).
pub async fn get(g: &Shared, tenant: &str, id: &str) -> Result<Stored<Value>, HttpError> {
    let missing = || HttpError::not_found("environment", id).code("environment_not_found");
    let id = input::id("environment", "env_", id).map_err(|_| missing())?;
    match g.store.get::<Value>(tenant, Kind::Environment, id).await? {
        Some(s) if !page::deleted(&s.doc) => Ok(s),
        _ => Err(missing()),
    }
}

/// `POST /v1/environments`.
pub async fn create(
    State(g): State<Shared>,
    t: Tenant,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    g.room_for(&t.0, Kind::Environment).await?;
    let id = format!("env_{}", uuid::Uuid::now_v7().simple());
    let env = resolve(&body, None, &id, &now())?;
    g.store
        .put(&t.0, Kind::Environment, &id, &env, Expect::New)
        .await?;
    Ok(ok(env))
}

/// `GET /v1/environments/{id}`.
pub async fn retrieve(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    Ok(ok(get(&g, &t.0, &id).await?.doc))
}

/// `POST /v1/environments/{id}`.
pub async fn update(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    let cur = get(&g, &t.0, &id).await?;
    if !cur.doc["archived_at"].is_null() {
        return Err(
            HttpError::invalid(format!("environment {id:?} is archived"))
                .code("environment_archived"),
        );
    }
    let env = resolve(&body, Some(&cur.doc), &id, &now())?;
    g.store
        .put(&t.0, Kind::Environment, &id, &env, Expect::At(cur.seq))
        .await?;
    Ok(ok(env))
}

/// `POST /v1/environments/{id}/archive`: it starts no new sessions.
pub async fn archive(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let cur = get(&g, &t.0, &id).await?;
    Ok(ok(page::stamp(
        &g,
        &t.0,
        Kind::Environment,
        &id,
        cur,
        "archived_at",
    )
    .await?))
}

/// `DELETE /v1/environments/{id}`: a tombstone; sessions made from it keep their copy.
pub async fn delete(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let cur = get(&g, &t.0, &id).await?;
    page::stamp(&g, &t.0, Kind::Environment, &id, cur, "deleted_at").await?;
    Ok(ok(json!({"id": id, "type": "environment_deleted"})))
}

/// `GET /v1/environments`.
pub async fn list(
    State(g): State<Shared>,
    t: Tenant,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(q.as_deref(), &["limit", "page", "include_archived"])?;
    page::objects(&g, &t.0, Kind::Environment, &q, 20, 100).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn limited_hosts_become_herds_proxy_and_the_rest_is_refused_by_name() {
        let e = resolve(
            &body(json!({"name": "e", "config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["PyPI.org"]}, "image": "herd-sandbox:debian"}})),
            None,
            "env_1",
            "t",
        )
        .unwrap();
        let c = environment_config(&e);
        assert_eq!(c.allowed_hosts, ["pypi.org"]);
        assert_eq!(c.networking.as_deref(), Some("limited"));
        assert_eq!(c.image.as_deref(), Some("herd-sandbox:debian"));
        let none = resolve(&body(json!({"name": "e"})), None, "env_1", "t").unwrap();
        assert_eq!(environment_config(&none).networking, None);
        assert_eq!(none["config"]["networking"]["type"], "limited");
        for (bad, named) in [
            (
                json!({"name": "e", "config": {"type": "cloud", "networking": {"type": "unrestricted"}}}),
                "unrestricted",
            ),
            (
                json!({"name": "e", "config": {"type": "cloud", "packages": {"pip": ["x"]}}}),
                "pip",
            ),
            (
                json!({"name": "e", "config": {"type": "self_hosted"}}),
                "self_hosted",
            ),
            (
                json!({"name": "e", "config": {"type": "cloud", "networking": {"type": "limited", "allow_package_managers": true}}}),
                "allow_package_managers",
            ),
            (
                json!({"name": "e", "config": {"type": "cloud", "gpu": true}}),
                "gpu",
            ),
            (
                json!({"name": "e", "config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["http://x/y"]}}}),
                "allowed_hosts",
            ),
        ] {
            let err = resolve(&body(bad.clone()), None, "env_1", "t").unwrap_err();
            assert!(err.message.contains(named), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn an_update_keeps_the_parts_it_leaves_out() {
        let e = resolve(
            &body(json!({"name": "e", "config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["a.com"]}}})),
            None,
            "env_1",
            "t",
        )
        .unwrap();
        let u = resolve(&body(json!({"description": "d"})), Some(&e), "env_1", "t2").unwrap();
        assert_eq!(u["config"], e["config"]);
        assert_eq!(u["description"], "d");
    }
}
