//! Stream, KV and object-store definitions, and applying them idempotently.
//!
//! The definitions are the JSON files in `streams/`, compiled in so a binary needs nothing
//! beside it. Stream files are the server's own `StreamConfig` JSON, so `nats stream add
//! --config streams/HERD_SESSIONS.json` creates the same stream. Every herd process applies them
//! at start: creating what is missing, updating what differs, leaving the rest alone.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use serde::Deserialize;
use serde_json::Value;

const STREAM_FILES: &[(&str, &str)] = &[
    (
        "HERD_SESSIONS.json",
        include_str!("../../streams/HERD_SESSIONS.json"),
    ),
    (
        "HERD_WAKE.json",
        include_str!("../../streams/HERD_WAKE.json"),
    ),
    (
        "HERD_TOOLS.json",
        include_str!("../../streams/HERD_TOOLS.json"),
    ),
    (
        "HERD_DEADLETTER.json",
        include_str!("../../streams/HERD_DEADLETTER.json"),
    ),
    (
        "HERD_GATEWAY.json",
        include_str!("../../streams/HERD_GATEWAY.json"),
    ),
    (
        "HERD_KEYS.json",
        include_str!("../../streams/HERD_KEYS.json"),
    ),
    (
        "HERD_SCHEDULES.json",
        include_str!("../../streams/HERD_SCHEDULES.json"),
    ),
];
const BUCKETS_FILE: &str = include_str!("../../streams/buckets.json");

/// A KV bucket or object store, as `streams/buckets.json` describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// `kv` or `object`.
    pub kind: BucketKind,
    /// The bucket's name.
    pub bucket: String,
    /// What it holds.
    #[serde(default)]
    pub description: String,
    /// KV: how many values to keep per key.
    #[serde(default)]
    pub history: Option<i64>,
    /// KV: enables per-key TTLs; the delete-marker TTL in milliseconds (at least 1000).
    #[serde(default)]
    pub ttl_markers_ms: Option<u64>,
    /// The most bytes it may hold (rule 11); unbounded when absent.
    #[serde(default)]
    pub max_bytes: Option<i64>,
}

/// The kinds of bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketKind {
    /// A key-value bucket.
    Kv,
    /// An object store.
    Object,
}

#[derive(Deserialize)]
struct BucketsFile {
    buckets: Vec<BucketSpec>,
}

/// Everything `herd streams apply` creates.
#[derive(Debug, Clone)]
pub struct Definitions {
    /// Streams, in the order they are applied, with the JSON object each was read from (the
    /// fields the definition sets, which are the ones compared with the server's).
    pub streams: Vec<(stream::Config, serde_json::Map<String, Value>)>,
    /// KV buckets and object stores.
    pub buckets: Vec<BucketSpec>,
}

/// What applying one definition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It did not exist and was created.
    Created,
    /// It existed with a different configuration and was updated.
    Updated,
    /// It existed as defined.
    Unchanged,
    /// It exists with another configuration, left as it is (a worker never reconfigures).
    Outdated,
}

/// One line of `herd streams apply`'s report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `stream`, `kv` or `object`.
    pub kind: &'static str,
    /// The stream or bucket name.
    pub name: String,
    /// What was done.
    pub action: Action,
}

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// A definition file does not parse (a build-time mistake, caught by the unit tests).
    #[error("definition {file} is invalid: {detail}")]
    Definition {
        /// The file.
        file: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The server refused or failed.
    #[error("cannot apply {kind} {name}: {detail}")]
    Server {
        /// `stream`, `kv` or `object`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The server's or client's message.
        detail: String,
    },
}

impl Definitions {
    /// The compiled-in definitions, with every stream and bucket set to `replicas` copies.
    pub fn load(replicas: usize) -> Result<Self, StreamsError> {
        let mut streams = Vec::new();
        for (file, text) in STREAM_FILES {
            let bad = |e: serde_json::Error| StreamsError::Definition {
                file,
                detail: e.to_string(),
            };
            let mut raw: serde_json::Map<String, Value> =
                serde_json::from_str(text).map_err(bad)?;
            raw.insert("num_replicas".into(), Value::from(replicas));
            let cfg: stream::Config =
                serde_json::from_value(Value::Object(raw.clone())).map_err(bad)?;
            streams.push((cfg, raw));
        }
        let buckets: BucketsFile =
            serde_json::from_str(BUCKETS_FILE).map_err(|e| StreamsError::Definition {
                file: "buckets.json",
                detail: e.to_string(),
            })?;
        Ok(Self {
            streams,
            buckets: buckets.buckets,
        })
    }
}

impl Definitions {
    /// The file store every bounded stream and bucket reserves at creation (their `max_bytes`,
    /// times `replicas` across a cluster, per server when each holds a copy). nats-server
    /// refuses a creation that would take the total past its `max_file_store` ("insufficient
    /// storage resources", 10047), so the server's limit must cover this.
    pub fn reserved_bytes(&self) -> u64 {
        let streams = self.streams.iter().map(|(c, _)| c.max_bytes);
        let buckets = self.buckets.iter().filter_map(|b| b.max_bytes);
        streams
            .chain(buckets)
            .filter(|b| *b > 0)
            .map(|b| b as u64)
            .sum()
    }
}

impl StreamsError {
    /// True when the request went unanswered in time (the client's "timed out"): the server
    /// may be loaded or electing a leader, and asking again is safe, since every step here
    /// creates or updates to the same definition.
    fn timed_out(&self) -> bool {
        matches!(self, Self::Server { detail, .. } if detail.contains("timed out"))
    }
}

/// How often one stream or bucket is asked for before a timeout is final.
const APPLY_ATTEMPTS: u32 = 5;

/// Runs `step` again after a timeout (0.4 s, 0.8 s, … apart), at most [`APPLY_ATTEMPTS`] times.
async fn patiently<T, F, Fut>(mut step: F) -> Result<T, StreamsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StreamsError>>,
{
    let mut attempt = 1;
    loop {
        match step().await {
            Err(e) if e.timed_out() && attempt < APPLY_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn server_err(kind: &'static str, name: &str, e: impl std::fmt::Display) -> StreamsError {
    let mut detail = e.to_string();
    if detail.contains("10047") {
        let reserved = Definitions::load(1).map_or(0, |d| d.reserved_bytes());
        detail.push_str(&format!(
            ". herd's streams and buckets reserve {:.1} GiB of file store in all; set \
             `max_file_store` in the server's `jetstream {{ }}` block to at least that (the \
             shipped nats.conf sets 20GB), since without it the server takes 75% of the disk \
             free when it starts",
            reserved as f64 / (1u64 << 30) as f64
        ));
    }
    StreamsError::Server {
        kind,
        name: name.to_string(),
        detail,
    }
}

/// True when every field the definition sets has the same value on the server. Fields it does
/// not set are left to the server's defaults and not compared.
fn matches(defined: &serde_json::Map<String, Value>, actual: &stream::Config) -> bool {
    let Ok(Value::Object(have)) = serde_json::to_value(actual) else {
        return false;
    };
    defined.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// How many replicas to give streams and buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replicas {
    /// Exactly this many: existing ones are scaled to it (`herd streams apply`).
    Set(usize),
    /// This many for what is created; what exists keeps its count (workers at start, so a
    /// worker never scales a cluster's R3 streams down).
    ForNew(usize),
}

async fn apply_stream(
    js: &jetstream::Context,
    cfg: &stream::Config,
    defined: &serde_json::Map<String, Value>,
    replicas: Replicas,
) -> Result<Action, StreamsError> {
    match js.get_stream(&cfg.name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| server_err("stream", &cfg.name, e))?;
            let mut defined = defined.clone();
            let mut cfg = cfg.clone();
            if let Replicas::ForNew(_) = replicas {
                defined.remove("num_replicas");
                cfg.num_replicas = info.config.num_replicas;
            }
            if matches(&defined, &info.config) {
                return Ok(Action::Unchanged);
            }
            if let Replicas::ForNew(_) = replicas {
                // Reconfiguring a stream is the operator's act (`herd streams apply`); a worker
                // says so and carries on with what is there.
                tracing::warn!(stream = %cfg.name, "The stream's configuration differs from this herd's definition; run `herd streams apply` as the operator to update it.");
                return Ok(Action::Outdated);
            }
            js.update_stream(cfg.clone())
                .await
                .map_err(|e| server_err("stream", &cfg.name, e))?;
            Ok(Action::Updated)
        }
        Err(e) if is_stream_not_found(&e) => {
            js.create_stream(cfg.clone()).await.map_err(|e| {
                let hint = match replicas {
                    // A worker's role may not create streams: say what to do.
                    Replicas::ForNew(_) => format!(
                        "{e} (the stream is missing and this process may not create it: run `herd streams apply` as the operator first)"
                    ),
                    Replicas::Set(_) => e.to_string(),
                };
                server_err("stream", &cfg.name, hint)
            })?;
            Ok(Action::Created)
        }
        Err(e) => Err(server_err("stream", &cfg.name, e)),
    }
}

/// True when a `get_stream` failed because the stream does not exist (as opposed to a timeout).
pub fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(je)
        if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

async fn stream_exists(js: &jetstream::Context, name: &str) -> bool {
    js.get_stream(name).await.is_ok()
}

async fn apply_bucket(
    js: &jetstream::Context,
    b: &BucketSpec,
    replicas: Replicas,
) -> Result<Outcome, StreamsError> {
    let replicas = match replicas {
        Replicas::Set(n) => n,
        Replicas::ForNew(n) => {
            let prefix = if b.kind == BucketKind::Kv {
                "KV"
            } else {
                "OBJ"
            };
            if stream_exists(js, &format!("{prefix}_{}", b.bucket)).await {
                return Ok(Outcome {
                    kind: if b.kind == BucketKind::Kv {
                        "kv"
                    } else {
                        "object"
                    },
                    name: b.bucket.clone(),
                    action: Action::Unchanged,
                });
            }
            n
        }
    };
    match b.kind {
        BucketKind::Kv => {
            let name = format!("KV_{}", b.bucket);
            let existed = stream_exists(js, &name).await;
            if !existed {
                let cfg = kv::Config {
                    bucket: b.bucket.clone(),
                    description: b.description.clone(),
                    history: b.history.unwrap_or(1),
                    num_replicas: replicas,
                    limit_markers: b
                        .ttl_markers_ms
                        .map(|ms| Duration::from_millis(ms.max(1000))),
                    ..Default::default()
                };
                js.create_key_value(cfg)
                    .await
                    .map_err(|e| server_err("kv", &b.bucket, e))?;
            }
            // async-nats makes buckets that take rollups and purges: one publish with
            // `Nats-Rollup: all` through any key a role may write would empty the bucket
            // (and the vault is not rebuildable). The vault needs neither: keys are replaced,
            // or deleted with a marker. Once set, nats-server never lets deny_purge
            // go (err_code 10052), so an existing bucket is updated in place, not re-created
            // from a kv::Config (which would ask to cancel it).
            let mut stream = js
                .get_stream(&name)
                .await
                .map_err(|e| server_err("kv", &b.bucket, e))?;
            let have = stream
                .info()
                .await
                .map_err(|e| server_err("kv", &b.bucket, e))?
                .config
                .clone();
            let mut want = have.clone();
            // Buckets with per-key TTLs (leases, the hand registry) need rollups for their
            // delete markers, and hold only what is rebuilt within seconds.
            if b.ttl_markers_ms.is_none() {
                want.deny_purge = true;
                want.allow_rollup = false;
            }
            want.num_replicas = replicas;
            want.description = Some(b.description.clone());
            let changed = want != have;
            if changed {
                js.update_stream(want)
                    .await
                    .map_err(|e| server_err("kv", &b.bucket, e))?;
            }
            Ok(Outcome {
                kind: "kv",
                name: b.bucket.clone(),
                action: match (existed, changed) {
                    (false, _) => Action::Created,
                    (true, true) => Action::Updated,
                    (true, false) => Action::Unchanged,
                },
            })
        }
        BucketKind::Object => {
            let name = format!("OBJ_{}", b.bucket);
            if !stream_exists(js, &name).await {
                js.create_object_store(object_store::Config {
                    bucket: b.bucket.clone(),
                    description: Some(b.description.clone()),
                    num_replicas: replicas,
                    max_bytes: b.max_bytes.unwrap_or(-1),
                    ..Default::default()
                })
                .await
                .map_err(|e| server_err("object", &b.bucket, e))?;
                return Ok(Outcome {
                    kind: "object",
                    name: b.bucket.clone(),
                    action: Action::Created,
                });
            }
            // An existing store gets its bound (and replica count) in place.
            let mut stream = js
                .get_stream(&name)
                .await
                .map_err(|e| server_err("object", &b.bucket, e))?;
            let have = stream
                .info()
                .await
                .map_err(|e| server_err("object", &b.bucket, e))?
                .config
                .clone();
            let mut want = have.clone();
            want.max_bytes = b.max_bytes.unwrap_or(-1);
            want.num_replicas = replicas;
            let changed = want != have;
            if changed {
                js.update_stream(want)
                    .await
                    .map_err(|e| server_err("object", &b.bucket, e))?;
            }
            Ok(Outcome {
                kind: "object",
                name: b.bucket.clone(),
                action: if changed {
                    Action::Updated
                } else {
                    Action::Unchanged
                },
            })
        }
    }
}

/// How full one of herd's streams or buckets is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreUsage {
    /// The stream (`KV_<bucket>` and `OBJ_<bucket>` for buckets).
    pub stream: String,
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Its bound; `None` when it has none.
    pub max_bytes: Option<u64>,
}

impl StoreUsage {
    /// How full it is, 0–100, when it has a bound.
    pub fn percent(&self) -> Option<f64> {
        self.max_bytes
            .filter(|m| *m > 0)
            .map(|m| self.bytes as f64 * 100.0 / m as f64)
    }
}

/// The usage of every stream and bucket herd defines (missing ones are left out).
pub async fn usage(js: &jetstream::Context) -> Result<Vec<StoreUsage>, StreamsError> {
    let defs = Definitions::load(1)?;
    let names =
        defs.streams
            .iter()
            .map(|(cfg, _)| cfg.name.clone())
            .chain(defs.buckets.iter().map(|b| match b.kind {
                BucketKind::Kv => format!("KV_{}", b.bucket),
                BucketKind::Object => format!("OBJ_{}", b.bucket),
            }));
    let mut out = Vec::new();
    for name in names {
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let info = stream
            .info()
            .await
            .map_err(|e| server_err("stream", &name, e))?;
        out.push(StoreUsage {
            stream: name,
            messages: info.state.messages,
            bytes: info.state.bytes,
            max_bytes: u64::try_from(info.config.max_bytes).ok().filter(|m| *m > 0),
        });
    }
    Ok(out)
}

/// Creates or updates every stream and bucket, with `replicas` copies each (scaling existing
/// ones to it). Safe to run any number of times, from any number of processes at once.
pub async fn apply(js: &jetstream::Context, replicas: usize) -> Result<Vec<Outcome>, StreamsError> {
    apply_all(js, Replicas::Set(replicas)).await
}

/// What every worker runs at start: creates what is missing (with `replicas_for_new` copies)
/// and never changes what exists — neither its settings nor its replica count: that is
/// `herd streams apply`'s job, an operator's act (DESIGN rule 10), so a worker started with
/// the defaults cannot scale a cluster's R3 streams down to one copy or reconfigure the log.
pub async fn ensure(
    js: &jetstream::Context,
    replicas_for_new: usize,
) -> Result<Vec<Outcome>, StreamsError> {
    apply_all(js, Replicas::ForNew(replicas_for_new)).await
}

async fn apply_all(
    js: &jetstream::Context,
    replicas: Replicas,
) -> Result<Vec<Outcome>, StreamsError> {
    let n = match replicas {
        Replicas::Set(n) | Replicas::ForNew(n) => n,
    };
    let defs = Definitions::load(n)?;
    let mut out = Vec::new();
    for (cfg, defined) in &defs.streams {
        let action = patiently(|| apply_stream(js, cfg, defined, replicas)).await?;
        out.push(Outcome {
            kind: "stream",
            name: cfg.name.clone(),
            action,
        });
    }
    for b in &defs.buckets {
        out.push(patiently(|| apply_bucket(js, b, replicas)).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A size as nats.conf writes it (`20GB`: nats-server's units are powers of 1024).
    fn conf_size(v: &str) -> u64 {
        let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
        let unit = match &v[digits.len()..] {
            "GB" | "G" => 1u64 << 30,
            "TB" | "T" => 1u64 << 40,
            other => panic!("unit {other:?}"),
        };
        digits.parse::<u64>().unwrap() * unit
    }

    #[test]
    fn the_shipped_servers_file_store_covers_what_the_definitions_reserve() {
        let reserved = Definitions::load(1).unwrap().reserved_bytes();
        // HERD_SESSIONS is unbounded by bytes; the others and herd-blobs are not.
        assert!(reserved > 10 << 30, "{reserved}");
        let configs = [
            include_str!("../../nats.conf"),
            include_str!("../../deploy/nats-cluster.conf"),
        ];
        for conf in configs {
            let line = conf
                .lines()
                .find_map(|l| l.trim().strip_prefix("max_file_store:"))
                .expect("a max_file_store line");
            let limit = conf_size(line.trim());
            assert!(limit > reserved, "{limit} <= {reserved}");
        }
        let local = conf_size(crate::lab::local_server::LOCAL_MAX_FILE_STORE);
        assert!(local > reserved);
        let refused = server_err(
            "object",
            "herd-blobs",
            "insufficient storage (code 500, error code 10047)",
        );
        assert!(refused.to_string().contains("max_file_store"), "{refused}");
    }

    #[test]
    fn definitions_parse_with_the_promised_settings() {
        let d = Definitions::load(3).unwrap();
        let s = &d.streams[0].0;
        assert_eq!(s.name, "HERD_SESSIONS");
        assert_eq!(s.num_replicas, 3);
        assert!(s.deny_delete && s.deny_purge && s.allow_direct && s.allow_atomic_publish);
        assert_eq!(s.max_messages_per_subject, -1);
        assert_eq!(s.max_age, Duration::ZERO);
        assert_eq!(s.duplicate_window, Duration::from_secs(120));
        assert_eq!(d.streams[1].0.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(d.streams[2].0.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(d.streams[3].0.name, "HERD_DEADLETTER");
        // The gateway's records: versions kept (no per-subject cap), bounded, never purged.
        let g = &d.streams[4].0;
        assert_eq!(g.name, "HERD_GATEWAY");
        assert!(g.deny_delete && g.deny_purge && g.allow_direct);
        assert!(g.max_bytes > 0 && g.discard == stream::DiscardPolicy::New);
        assert_eq!(g.max_messages_per_subject, -1);
        assert_eq!(d.streams[5].0.name, "HERD_KEYS");
        assert!(d.streams[5].0.deny_purge && d.streams[5].0.max_bytes > 0);
        assert_eq!(d.buckets.len(), 5);
        // Bounded, and a full work queue refuses new work rather than drop queued work.
        for q in [&d.streams[1].0, &d.streams[2].0] {
            assert!(
                q.max_bytes > 0 && q.discard == stream::DiscardPolicy::New,
                "{}",
                q.name
            );
        }
        assert!(
            d.buckets
                .iter()
                .any(|b| b.bucket == "herd-blobs" && b.max_bytes.is_some())
        );
        assert!(d.buckets.iter().any(|b| b.bucket == "herd-vault"));
    }
}
