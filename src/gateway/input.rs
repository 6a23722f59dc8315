//! What arrives from outside, checked: JSON bodies (objects with known fields only), query
//! strings (`types[]=a&types[]=b` and plain repeats, `created_at[gte]=…`), ids, metadata,
//! page cursors and limits. Every refusal names what was wrong.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::HttpError;

/// A JSON object body. An empty body (the SDK sends body-less POSTs with a JSON content type
/// and nothing in them) is an empty object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, HttpError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(HttpError::invalid("the request body must be a JSON object")),
        Err(e) => Err(HttpError::invalid(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// Refuses fields outside `known` (a field herd would otherwise drop silently).
pub fn only(what: &str, m: &Map<String, Value>, known: &[&str]) -> Result<(), HttpError> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(HttpError::invalid(format!(
            "{what}: unknown field {k:?}; expected {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A required string field, at most `max` characters.
pub fn string(m: &Map<String, Value>, field: &str, max: usize) -> Result<String, HttpError> {
    match m.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => bounded(field, s, max),
        Some(Value::String(_)) => Err(HttpError::invalid(format!("{field} must not be empty"))),
        Some(_) => Err(HttpError::invalid(format!("{field} must be a string"))),
        None => Err(HttpError::invalid(format!("{field} is required"))),
    }
}

/// An optional string field (absent or null: `None`), at most `max` characters.
pub fn opt_string(
    m: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, HttpError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => bounded(field, s, max).map(Some),
        Some(_) => Err(HttpError::invalid(format!("{field} must be a string"))),
    }
}

fn bounded(field: &str, s: &str, max: usize) -> Result<String, HttpError> {
    let n = s.chars().count();
    if n > max {
        return Err(HttpError::invalid(format!(
            "{field} is {n} characters long; at most {max}"
        )));
    }
    Ok(s.to_string())
}

/// Metadata limits, as the Managed Agents API states them.
pub const MAX_METADATA_PAIRS: usize = 16;

/// Applies a metadata patch to `into`: a string value sets a key, `null` (or, where
/// `empty_deletes`, `""`) deletes it. Checks the API's bounds (16 pairs, keys up to 64
/// characters, values up to 512).
pub fn metadata_patch(
    into: &mut BTreeMap<String, String>,
    patch: Option<&Value>,
    empty_deletes: bool,
) -> Result<(), HttpError> {
    let Some(patch) = patch else { return Ok(()) };
    let Value::Object(patch) = patch else {
        if patch.is_null() {
            into.clear();
            return Ok(());
        }
        return Err(HttpError::invalid("metadata must be an object of strings"));
    };
    for (k, v) in patch {
        if k.is_empty() || k.chars().count() > 64 {
            return Err(HttpError::invalid(format!(
                "metadata key {k:?}: keys are 1 to 64 characters"
            )));
        }
        match v {
            Value::Null => {
                into.remove(k);
            }
            Value::String(s) if s.is_empty() && empty_deletes => {
                into.remove(k);
            }
            Value::String(s) if s.chars().count() <= 512 => {
                into.insert(k.clone(), s.clone());
            }
            Value::String(_) => {
                return Err(HttpError::invalid(format!(
                    "metadata value of {k:?} is longer than 512 characters"
                )));
            }
            _ => {
                return Err(HttpError::invalid(format!(
                    "metadata value of {k:?} must be a string"
                )));
            }
        }
    }
    if into.len() > MAX_METADATA_PAIRS {
        return Err(HttpError::invalid(format!(
            "metadata has {} keys; at most {MAX_METADATA_PAIRS}",
            into.len()
        )));
    }
    Ok(())
}

/// An id from a path, which must have herd's id form and the resource's prefix.
pub fn id<'a>(what: &str, prefix: &str, value: &'a str) -> Result<&'a str, HttpError> {
    let ok = value.starts_with(prefix)
        && value.len() <= crate::event::MAX_ID_LEN
        && value.len() > prefix.len()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(value)
    } else {
        Err(HttpError::not_found(what, value))
    }
}

/// A parsed query string: every key with its values in order; `k[]` and `k` are one key.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

/// The longest query string the gateway reads.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;

impl Query {
    /// Parses a raw query string, refusing keys outside `known` (after stripping `[]`).
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, HttpError> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY_BYTES {
            return Err(HttpError::invalid(format!(
                "the query string is {} bytes; at most {MAX_QUERY_BYTES}",
                raw.len()
            )));
        }
        let mut pairs = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let key = k.strip_suffix("[]").unwrap_or(&k).to_string();
            if !known.contains(&key.as_str()) {
                return Err(HttpError::invalid(format!(
                    "unknown query parameter {k:?}; expected {}",
                    known.join(", ")
                )));
            }
            pairs.push((key, v.into_owned()));
        }
        Ok(Self { pairs })
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `key` (the last, if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: 1..=max, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, HttpError> {
        match self.get("limit") {
            None => Ok(default),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(HttpError::invalid(format!(
                    "limit must be an integer from 1 to {max}, not {s:?}"
                ))),
            },
        }
    }

    /// A boolean (`true`/`false`), `false` when absent.
    pub fn flag(&self, key: &str) -> Result<bool, HttpError> {
        match self.get(key) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(HttpError::invalid(format!(
                "{key} must be true or false, not {other:?}"
            ))),
        }
    }

    /// `order`: `asc` or `desc`; true for descending.
    pub fn descending(&self, default_desc: bool) -> Result<bool, HttpError> {
        match self.get("order") {
            None => Ok(default_desc),
            Some("asc") => Ok(false),
            Some("desc") => Ok(true),
            Some(other) => Err(HttpError::invalid(format!(
                "order must be asc or desc, not {other:?}"
            ))),
        }
    }

    /// The `created_at[gt|gte|lt|lte]` bounds.
    pub fn time_range(&self) -> Result<TimeRange, HttpError> {
        let mut r = TimeRange::default();
        for (op, slot) in [
            ("created_at[gt]", &mut r.gt),
            ("created_at[gte]", &mut r.gte),
            ("created_at[lt]", &mut r.lt),
            ("created_at[lte]", &mut r.lte),
        ] {
            if let Some(v) = self.get(op) {
                *slot = Some(parse_time(op, v)?);
            }
        }
        Ok(r)
    }
}

/// The `created_at[…]` filters a list takes, added to its own query keys.
pub fn with_created_at<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut all = keys.to_vec();
    all.extend([
        "created_at[gt]",
        "created_at[gte]",
        "created_at[lt]",
        "created_at[lte]",
    ]);
    all
}

/// A range of creation times from `created_at[…]` filters.
#[derive(Debug, Default, Clone, Copy)]
pub struct TimeRange {
    gt: Option<OffsetDateTime>,
    gte: Option<OffsetDateTime>,
    lt: Option<OffsetDateTime>,
    lte: Option<OffsetDateTime>,
}

impl TimeRange {
    /// True when `t` is inside every bound.
    pub fn contains(&self, t: OffsetDateTime) -> bool {
        self.gt.is_none_or(|b| t > b)
            && self.gte.is_none_or(|b| t >= b)
            && self.lt.is_none_or(|b| t < b)
            && self.lte.is_none_or(|b| t <= b)
    }

    /// True when a stored object's `created_at` (RFC 3339) is inside every bound; an object
    /// without a readable one is outside any bound.
    pub fn admits(&self, created_at: &Value) -> bool {
        self.is_open()
            || created_at
                .as_str()
                .and_then(|t| parse_time("created_at", t).ok())
                .is_some_and(|t| self.contains(t))
    }

    /// True when there is no bound.
    pub fn is_open(&self) -> bool {
        self.gt.is_none() && self.gte.is_none() && self.lt.is_none() && self.lte.is_none()
    }
}

/// Parses a time as the SDK sends it: RFC 3339, or Python's `isoformat()` without an offset
/// (read as UTC).
pub fn parse_time(what: &str, v: &str) -> Result<OffsetDateTime, HttpError> {
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t);
    }
    let with_offset = format!("{v}Z");
    OffsetDateTime::parse(&with_offset, &Rfc3339).map_err(|_| {
        HttpError::invalid(format!(
            "{what}: {v:?} is not a time (RFC 3339, e.g. 2026-05-01T12:00:00Z)"
        ))
    })
}

/// A page cursor: an opaque-looking token over a position (a stream sequence, or an
/// object's index in a sorted list), refused when it was not one this gateway made.
pub fn cursor(page: Option<&str>) -> Result<Option<u64>, HttpError> {
    let Some(p) = page else { return Ok(None) };
    p.strip_prefix("page_")
        .and_then(|n| n.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| HttpError::invalid(format!("page {p:?} is not a cursor this API returned")))
}

/// The cursor for a position.
pub fn next_page(position: u64) -> String {
    format!("page_{position}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_take_brackets_and_repeats_and_refuse_the_unknown() {
        let q = Query::parse(
            Some("types%5B%5D=a&types[]=b&types=c&limit=5&created_at%5Bgte%5D=2026-05-01T12:00:00.123456"),
            &["types", "limit", "created_at[gte]"],
        )
        .unwrap();
        assert_eq!(q.all("types"), vec!["a", "b", "c"]);
        assert_eq!(q.limit(20, 100).unwrap(), 5);
        assert!(!q.time_range().unwrap().is_open());
        assert!(Query::parse(Some("nope=1"), &["limit"]).is_err());
        let q = Query::parse(Some("limit=0"), &["limit"]).unwrap();
        assert!(q.limit(20, 100).is_err());
        let q = Query::parse(Some("limit=1001"), &["limit"]).unwrap();
        assert!(q.limit(20, 1000).is_err());
        let long = format!("limit={}", "1".repeat(MAX_QUERY_BYTES));
        assert!(Query::parse(Some(&long), &["limit"]).is_err());
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        assert_eq!(cursor(Some(&next_page(42))).unwrap(), Some(42));
        assert_eq!(cursor(None).unwrap(), None);
        for bad in ["", "42", "page_", "page_x", "page_-1"] {
            assert!(cursor(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_patches_follow_the_apis_bounds() {
        let mut m = BTreeMap::new();
        metadata_patch(
            &mut m,
            Some(&serde_json::json!({"a": "1", "b": "2"})),
            false,
        )
        .unwrap();
        metadata_patch(&mut m, Some(&serde_json::json!({"a": null})), false).unwrap();
        assert_eq!(m.len(), 1);
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(metadata_patch(&mut m, Some(&Value::Object(many)), false).is_err());
        assert!(metadata_patch(&mut m, Some(&serde_json::json!({"k": 1})), false).is_err());
        assert!(
            metadata_patch(
                &mut m,
                Some(&serde_json::json!({"k": "x".repeat(513)})),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn ids_need_their_prefix_and_token_characters() {
        assert!(id("agent", "agent_", "agent_0192abc").is_ok());
        for bad in ["agent_", "env_1", "agent_a.b", "agent_a b", "agent_*"] {
            assert!(id("agent", "agent_", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_parse_with_or_without_an_offset() {
        assert!(parse_time("t", "2026-05-01T12:00:00Z").is_ok());
        assert!(parse_time("t", "2026-05-01T12:00:00.123456+00:00").is_ok());
        assert!(parse_time("t", "2026-05-01T12:00:00.123456").is_ok());
        assert!(parse_time("t", "yesterday").is_err());
    }
}
