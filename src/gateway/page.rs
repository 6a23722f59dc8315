//! A tenant's objects: pages of them as the SDK pages (`{"data": […], "next_page": cursor|null}`,
//! with `next_page` set only when another visible object exists, so a page is never empty with
//! a cursor, which the SDK would ask for forever), and the archive and delete stamps every
//! kind shares.

use axum::response::Response;
use serde_json::{Value, json};

use super::error::HttpError;
use super::input::{self, Query};
use super::store::{Expect, Kind, Stored};
use super::{Shared, now, ok};

/// True when an object is a deletion's tombstone (its record stays; the object is gone).
pub fn deleted(doc: &Value) -> bool {
    !doc["deleted_at"].is_null()
}

/// A page of a tenant's objects of one kind, oldest first. The cursor is a position in the
/// sorted id list.
pub async fn objects(
    g: &Shared,
    tenant: &str,
    kind: Kind,
    q: &Query,
    default_limit: usize,
    max_limit: usize,
) -> Result<Response, HttpError> {
    let limit = q.limit(default_limit, max_limit)?;
    let start = input::cursor(q.get("page"))?.unwrap_or(0) as usize;
    let archived = q.flag("include_archived")?;
    let range = q.time_range()?;
    let ids = g.store.ids(tenant, kind).await?;
    let mut data = Vec::new();
    for (i, id) in ids.iter().enumerate().skip(start) {
        let Some(s) = g.store.get::<Value>(tenant, kind, id).await? else {
            continue;
        };
        let doc = s.doc;
        let visible = !deleted(&doc)
            && (archived || doc["archived_at"].is_null())
            && range.admits(&doc["created_at"]);
        if !visible {
            continue;
        }
        if data.len() == limit {
            return Ok(ok(
                json!({"data": data, "next_page": input::next_page(i as u64)}),
            ));
        }
        data.push(doc);
    }
    Ok(ok(json!({"data": data, "next_page": null})))
}

/// Stamps `field` (`archived_at` or `deleted_at`) on a stored object, with `updated_at`, and
/// writes it as a new version conditional on the one read; an object already stamped is left
/// as it is. Answers the object as it now stands.
pub async fn stamp(
    g: &Shared,
    tenant: &str,
    kind: Kind,
    id: &str,
    cur: Stored<Value>,
    field: &str,
) -> Result<Value, HttpError> {
    let mut doc = cur.doc;
    if !doc[field].is_null() {
        return Ok(doc);
    }
    let at = now();
    doc[field] = json!(at);
    doc["updated_at"] = json!(at);
    g.store
        .put(tenant, kind, id, &doc, Expect::At(cur.seq))
        .await?;
    Ok(doc)
}
