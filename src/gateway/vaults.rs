//! Vaults and credentials: `/v1/vaults…` and `/v1/vaults/{id}/credentials…`, mapped onto
//! herd's vaults. A tenant's vault `vlt_…` is the herd vault of that name; its credentials
//! are sealed into it by the gateway (which holds the vault key to seal, and may never read
//! the bucket back), so values are write-only: no answer ever carries one.
//!
//! - `environment_variable` {secret_name, secret_value, networking: limited hosts} is a herd
//!   `header` credential named `secret_name`, usable as `{{secret:NAME}}` in `http_request`
//!   to those hosts only;
//! - `static_bearer` {mcp_server_url, token} is a herd `static_bearer` credential for that
//!   URL's host, named by the credential's id;
//! - `mcp_oauth` is refused (no OAuth refresh in herd yet).

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
use crate::config::Secret;
use crate::credentials::vault::Kind as CredKind;

/// The vault ids a session names, each one of the tenant's live vaults (another tenant's is
/// not found).
pub async fn owned_ids(
    g: &Shared,
    tenant: &str,
    v: Option<&Value>,
) -> Result<Vec<String>, HttpError> {
    let ids = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) if a.len() <= 16 => a,
        Some(_) => {
            return Err(HttpError::invalid(
                "vault_ids must be an array of at most 16 ids",
            ));
        }
    };
    let mut out = Vec::new();
    for id in ids {
        let id = id
            .as_str()
            .ok_or_else(|| HttpError::invalid("vault_ids must be strings"))?;
        let v = get(g, tenant, id).await?;
        if !v.doc["archived_at"].is_null() {
            return Err(HttpError::invalid(format!("vault {id:?} is archived")));
        }
        out.push(id.to_string());
    }
    Ok(out)
}

async fn get(g: &Shared, tenant: &str, id: &str) -> Result<Stored<Value>, HttpError> {
    let id = input::id("vault", "vlt_", id)?;
    match g.store.get::<Value>(tenant, Kind::Vault, id).await? {
        Some(s) if !page::deleted(&s.doc) => Ok(s),
        _ => Err(HttpError::not_found("vault", id)),
    }
}

fn apply(doc: &mut Value, body: &Map<String, Value>, create: bool) -> Result<(), HttpError> {
    input::only("vault", body, &["display_name", "metadata"])?;
    if create || body.contains_key("display_name") {
        doc["display_name"] = input::string(body, "display_name", 256)?.into();
    }
    if body.contains_key("metadata") {
        let mut m: BTreeMap<String, String> =
            serde_json::from_value(doc["metadata"].clone()).unwrap_or_default();
        input::metadata_patch(&mut m, body.get("metadata"), true)?;
        doc["metadata"] = json!(m);
    }
    doc["updated_at"] = json!(now());
    Ok(())
}

/// `POST /v1/vaults`.
pub async fn create(
    State(g): State<Shared>,
    t: Tenant,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    g.room_for(&t.0, Kind::Vault).await?;
    let id = format!("vlt_{}", uuid::Uuid::now_v7().simple());
    let at = now();
    let mut doc =
        json!({"type": "vault", "id": id, "metadata": {}, "created_at": at, "archived_at": null});
    apply(&mut doc, &body, true)?;
    g.store
        .put(&t.0, Kind::Vault, &id, &doc, Expect::New)
        .await?;
    Ok(ok(doc))
}

/// `GET /v1/vaults/{id}`.
pub async fn retrieve(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    Ok(ok(get(&g, &t.0, &id).await?.doc))
}

/// `POST /v1/vaults/{id}`.
pub async fn update(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    let cur = get(&g, &t.0, &id).await?;
    let mut doc = cur.doc;
    apply(&mut doc, &body, false)?;
    g.store
        .put(&t.0, Kind::Vault, &id, &doc, Expect::At(cur.seq))
        .await?;
    Ok(ok(doc))
}

/// `GET /v1/vaults`.
pub async fn list(
    State(g): State<Shared>,
    t: Tenant,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(q.as_deref(), &["limit", "page", "include_archived"])?;
    page::objects(&g, &t.0, Kind::Vault, &q, 20, 100).await
}

/// `POST /v1/vaults/{id}/archive`.
pub async fn archive(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let cur = get(&g, &t.0, &id).await?;
    Ok(ok(page::stamp(
        &g,
        &t.0,
        Kind::Vault,
        &id,
        cur,
        "archived_at",
    )
    .await?))
}

/// `DELETE /v1/vaults/{id}`: its credentials are removed from herd's vault too.
pub async fn delete(
    State(g): State<Shared>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let cur = get(&g, &t.0, &id).await?;
    for cid in g.store.ids(&t.0, Kind::Credential).await? {
        if let Some(c) = g.store.get::<Value>(&t.0, Kind::Credential, &cid).await?
            && c.doc["vault_id"] == id.as_str()
            && !page::deleted(&c.doc)
        {
            forget(&g, &id, &c.doc).await?;
            page::stamp(&g, &t.0, Kind::Credential, &cid, c, "deleted_at").await?;
        }
    }
    page::stamp(&g, &t.0, Kind::Vault, &id, cur, "deleted_at").await?;
    Ok(ok(json!({"id": id, "type": "vault_deleted"})))
}

/// The herd credential a credential object is stored as: its name in the vault.
fn herd_name(doc: &Value) -> String {
    match doc["auth"]["type"].as_str() {
        Some("environment_variable") => doc["auth"]["secret_name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        _ => doc["id"].as_str().unwrap_or_default().to_string(),
    }
}

async fn forget(g: &Shared, vault: &str, doc: &Value) -> Result<(), HttpError> {
    g.vault()?
        .forget(vault, &herd_name(doc))
        .await
        .map_err(|e| HttpError::unavailable(e.to_string()))
}

fn host_of(url: &str) -> Result<String, HttpError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| HttpError::invalid("mcp_server_url must be an https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err(HttpError::invalid("mcp_server_url has no host"));
    }
    Ok(host.to_ascii_lowercase())
}

/// Checks `auth` and splits it into what is shown (no secret) and what is sealed.
fn auth(
    v: Option<&Value>,
    id: &str,
) -> Result<(Value, String, CredKind, Vec<String>, Secret), HttpError> {
    let Some(Value::Object(m)) = v else {
        return Err(HttpError::invalid(
            "auth is required: {\"type\": \"environment_variable\" | \"static_bearer\", …}",
        ));
    };
    match m.get("type").and_then(Value::as_str) {
        Some("static_bearer") => {
            input::only(
                "static_bearer auth",
                m,
                &["type", "mcp_server_url", "token"],
            )?;
            let url = input::string(m, "mcp_server_url", 2048)?;
            let host = host_of(&url)?;
            let token = input::string(m, "token", 16 * 1024)?;
            Ok((
                json!({"type": "static_bearer", "mcp_server_url": url}),
                id.to_string(),
                CredKind::StaticBearer,
                vec![host],
                Secret::new(token),
            ))
        }
        Some("environment_variable") => {
            input::only(
                "environment_variable auth",
                m,
                &[
                    "type",
                    "secret_name",
                    "secret_value",
                    "networking",
                    "injection_location",
                ],
            )?;
            if m.get("injection_location").is_some_and(|v| !v.is_null()) {
                return Err(HttpError::invalid(
                    "injection_location: herd substitutes {{secret:NAME}} where the request names it; leave it out",
                ));
            }
            let name = input::string(m, "secret_name", 128)?;
            let value = input::string(m, "secret_value", 16 * 1024)?;
            let hosts = match m.get("networking") {
                Some(Value::Object(n)) if n.get("type") == Some(&json!("limited")) => {
                    input::only("networking", n, &["type", "allowed_hosts"])?;
                    n.get("allowed_hosts")
                        .and_then(Value::as_array)
                        .filter(|a| !a.is_empty() && a.len() <= 16)
                        .ok_or_else(|| {
                            HttpError::invalid("networking.allowed_hosts: 1 to 16 hosts")
                        })?
                        .iter()
                        .map(|h| {
                            h.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| HttpError::invalid("allowed_hosts must be strings"))
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
                _ => {
                    return Err(HttpError::invalid(
                        "networking: herd sends a secret only to named hosts; use {\"type\": \"limited\", \"allowed_hosts\": […]}",
                    ));
                }
            };
            let shown = json!({"type": "environment_variable", "secret_name": name, "networking": {"type": "limited", "allowed_hosts": hosts}});
            Ok((shown, name, CredKind::Header, hosts, Secret::new(value)))
        }
        Some("mcp_oauth") => Err(HttpError::invalid(
            "auth mcp_oauth is not supported by herd yet (no token refresh)",
        )),
        other => Err(HttpError::invalid(format!(
            "auth type {other:?}: expected environment_variable or static_bearer"
        ))),
    }
}

async fn credential(
    g: &Shared,
    tenant: &str,
    vault: &str,
    id: &str,
) -> Result<Stored<Value>, HttpError> {
    let id = input::id("credential", "vcrd_", id)?;
    match g.store.get::<Value>(tenant, Kind::Credential, id).await? {
        Some(s) if !page::deleted(&s.doc) && s.doc["vault_id"] == vault => Ok(s),
        _ => Err(HttpError::not_found("credential", id)),
    }
}

/// `POST /v1/vaults/{id}/credentials`.
pub async fn create_credential(
    State(g): State<Shared>,
    t: Tenant,
    Path(vid): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body = input::object(&body)?;
    input::only("credential", &body, &["auth", "display_name", "metadata"])?;
    get(&g, &t.0, &vid).await?;
    g.room_for(&t.0, Kind::Credential).await?;
    let id = format!("vcrd_{}", uuid::Uuid::now_v7().simple());
    let (shown, name, kind, hosts, secret) = auth(body.get("auth"), &id)?;
    // One live credential per herd name in a vault: a second would replace the first's
    // secret, and deleting either would remove the survivor's.
    for cid in g.store.ids(&t.0, Kind::Credential).await? {
        if let Some(c) = g.store.get::<Value>(&t.0, Kind::Credential, &cid).await?
            && c.doc["vault_id"] == vid.as_str()
            && !page::deleted(&c.doc)
            && c.doc["archived_at"].is_null()
            && herd_name(&c.doc) == name
        {
            return Err(HttpError::conflict(format!(
                "vault {vid:?} already has a credential for {name:?} ({cid}); delete it first"
            )));
        }
    }
    let key = g.vault_key()?;
    g.vault()?
        .put(key, &vid, &name, kind, &hosts, &secret)
        .await
        .map_err(|e| match e {
            crate::credentials::vault::VaultError::Invalid(m) => HttpError::invalid(m),
            other => HttpError::unavailable(other.to_string()),
        })?;
    let at = now();
    let mut metadata = BTreeMap::new();
    input::metadata_patch(&mut metadata, body.get("metadata"), true)?;
    let doc = json!({
        "type": "vault_credential", "id": id, "vault_id": vid,
        "display_name": input::opt_string(&body, "display_name", 256)?, "metadata": metadata,
        "auth": shown, "created_at": at, "updated_at": at, "archived_at": null,
    });
    if let Err(e) = g
        .store
        .put(&t.0, Kind::Credential, &id, &doc, Expect::New)
        .await
    {
        // No record, no secret: one the API cannot show must not stay usable.
        let _ = forget(&g, &vid, &doc).await;
        return Err(e.into());
    }
    Ok(ok(doc))
}

/// `GET /v1/vaults/{vid}/credentials/{id}`.
pub async fn retrieve_credential(
    State(g): State<Shared>,
    t: Tenant,
    Path((vid, id)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    get(&g, &t.0, &vid).await?;
    Ok(ok(credential(&g, &t.0, &vid, &id).await?.doc))
}

/// `GET /v1/vaults/{vid}/credentials`.
pub async fn list_credentials(
    State(g): State<Shared>,
    t: Tenant,
    Path(vid): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q = Query::parse(q.as_deref(), &["limit", "page", "include_archived"])?;
    let limit = q.limit(20, 100)?;
    let start = input::cursor(q.get("page"))?.unwrap_or(0) as usize;
    let archived = q.flag("include_archived")?;
    get(&g, &t.0, &vid).await?;
    let mut data = Vec::new();
    for (i, id) in g
        .store
        .ids(&t.0, Kind::Credential)
        .await?
        .iter()
        .enumerate()
        .skip(start)
    {
        let Some(c) = g.store.get::<Value>(&t.0, Kind::Credential, id).await? else {
            continue;
        };
        if c.doc["vault_id"] != vid.as_str()
            || page::deleted(&c.doc)
            || (!archived && !c.doc["archived_at"].is_null())
        {
            continue;
        }
        if data.len() == limit {
            return Ok(ok(
                json!({"data": data, "next_page": input::next_page(i as u64)}),
            ));
        }
        data.push(c.doc);
    }
    Ok(ok(json!({"data": data, "next_page": null})))
}

/// `DELETE /v1/vaults/{vid}/credentials/{id}`.
pub async fn delete_credential(
    State(g): State<Shared>,
    t: Tenant,
    Path((vid, id)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    get(&g, &t.0, &vid).await?;
    let c = credential(&g, &t.0, &vid, &id).await?;
    forget(&g, &vid, &c.doc).await?;
    page::stamp(&g, &t.0, Kind::Credential, &id, c, "deleted_at").await?;
    Ok(ok(json!({"id": id, "type": "vault_credential_deleted"})))
}

/// `POST /v1/vaults/{vid}/credentials/{id}/archive`: the secret is removed; the record stays.
pub async fn archive_credential(
    State(g): State<Shared>,
    t: Tenant,
    Path((vid, id)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    get(&g, &t.0, &vid).await?;
    let c = credential(&g, &t.0, &vid, &id).await?;
    if c.doc["archived_at"].is_null() {
        forget(&g, &vid, &c.doc).await?;
    }
    Ok(ok(page::stamp(
        &g,
        &t.0,
        Kind::Credential,
        &id,
        c,
        "archived_at",
    )
    .await?))
}
