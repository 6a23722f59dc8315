//! The gateway: the Managed Agents HTTP API over herd, so the official Anthropic SDKs drive
//! herd by changing `base_url`.
//!
//! It is stateless: every object lives in JetStream (sessions in the log, the rest in
//! `HERD_GATEWAY`, see [`store`]), so any number of gateways can run behind a load balancer
//! and any one can die. It connects to NATS as the `gateway` role and separates tenants
//! itself: every request carries an API key ([`keys`]), the key names a tenant, and every
//! lookup is by that tenant (its objects' subjects carry it), so another tenant's object is
//! simply not found. Sending events goes through [`crate::api`], the same use cases and
//! admission rules as the CLI and the NATS door.
//!
//! | module | routes |
//! |---|---|
//! | [`agents`] | `/v1/agents…` |
//! | [`environments`] | `/v1/environments…` |
//! | [`sessions`] | `/v1/sessions…` |
//! | [`events`], [`stream`] | `/v1/sessions/{id}/events…` |
//! | [`vaults`] | `/v1/vaults…` |
//! | [`console`] | `/console…`: the web console (no key needed to load it; it asks for one) |

pub mod agents;
pub mod console;
pub mod environments;
pub mod error;
pub mod events;
pub mod input;
pub mod keys;
pub mod page;
pub mod schedules;
pub mod sessions;
pub mod store;
pub mod stream;
pub mod vaults;
pub mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use crate::api::{Api, Principal, VaultGrant};
use crate::credentials::vault::{Vault, VaultKey};

use error::HttpError;
use keys::KeyRecord;
use store::Store;

/// The largest request body the gateway reads (a message with a large document fits).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// The most header bytes a request may carry.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The most agents, environments or vaults one tenant may have (credentials: four times as
/// many).
pub const MAX_PER_TENANT: usize = 1000;

/// The most versions one agent may have.
pub const MAX_AGENT_VERSIONS: u64 = 1000;

/// How long a gateway trusts a key it looked up: a revoked key stops working within this.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Event streams it holds open at once; past it, a new stream is a 429.
    pub max_streams: usize,
    /// Event streams one tenant may hold open on it at once.
    pub max_streams_per_tenant: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_streams: 4096,
            max_streams_per_tenant: 1024,
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// NATS or a stream is missing.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The records stream is missing.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The listener could not bind or failed.
    #[error("listening on {addr}: {detail}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
}

/// What every request handler shares.
pub struct Gateway {
    api: Api,
    store: Store,
    vault: Option<Vault>,
    vault_key: Option<VaultKey>,
    keys: Mutex<HashMap<String, (KeyRecord, Instant)>>,
    streams: Arc<tokio::sync::Semaphore>,
    tenant_streams: Arc<Mutex<HashMap<String, usize>>>,
    max_streams_per_tenant: usize,
}

/// One tenant's hold on a stream slot; released when the stream ends.
pub struct TenantStream {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for TenantStream {
    fn drop(&mut self) {
        if let Ok(mut m) = self.counts.lock()
            && let Some(n) = m.get_mut(&self.tenant)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

/// The shared state of the router.
pub type Shared = Arc<Gateway>;

impl Gateway {
    /// Opens the gateway's handles on a connection as the `gateway` role. `vault_key` lets it
    /// seal tenants' credentials; without it, creating a credential is refused.
    pub async fn open(
        client: async_nats::Client,
        config: &GatewayConfig,
        vault_key: Option<VaultKey>,
    ) -> Result<Shared, GatewayError> {
        let js = async_nats::jetstream::new(client.clone());
        let api = Api::open(client, Principal::operator()).await?;
        let store = Store::open(js.clone()).await?;
        let vault = Vault::open_store(&js).await.ok();
        Ok(Arc::new(Self {
            api,
            store,
            vault,
            vault_key,
            keys: Mutex::new(HashMap::new()),
            streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
            tenant_streams: Default::default(),
            max_streams_per_tenant: config.max_streams_per_tenant,
        }))
    }

    /// The library acting for one tenant: it sees only the tenant's sessions (the rule is
    /// `api::Principal::may_see`, not the gateway's), may instruct its own agents
    /// (`system.message`) and name the vaults given.
    fn tenant_api(&self, tenant: &str, vaults: Vec<String>) -> Api {
        self.api.acting_for(Principal {
            name: format!("tenant {tenant}"),
            vaults: VaultGrant::Only(vaults),
            may_instruct: true,
            tenant: Some(tenant.to_string()),
        })
    }

    /// Refuses a new object when the tenant already has as many of that kind as one tenant
    /// may (rule 11: the records stream is shared, so no tenant may fill it). Sessions are
    /// bounded by the store and their own limits instead: counting them per create would cost
    /// a listing of every one.
    async fn room_for(&self, tenant: &str, kind: store::Kind) -> Result<(), HttpError> {
        let max = match kind {
            store::Kind::Agent | store::Kind::Environment | store::Kind::Vault => MAX_PER_TENANT,
            store::Kind::Credential => MAX_PER_TENANT * 4,
            store::Kind::Session => return Ok(()),
        };
        let n = self.store.ids(tenant, kind).await?.len();
        if n >= max {
            return Err(HttpError::busy(format!(
                "tenant {tenant} has {n} {}s (deleted ones included); at most {max}",
                kind.token()
            ))
            .code("quota_exceeded"));
        }
        Ok(())
    }

    /// Takes one of a tenant's stream slots, so one tenant cannot hold them all.
    fn tenant_stream(&self, tenant: &str) -> Result<TenantStream, HttpError> {
        let mut m = self.tenant_streams.lock().expect("stream counts");
        let n = m.entry(tenant.to_string()).or_insert(0);
        if *n >= self.max_streams_per_tenant {
            return Err(HttpError::busy(format!(
                "tenant {tenant} holds {n} event streams on this gateway; at most {}",
                self.max_streams_per_tenant
            )));
        }
        *n += 1;
        Ok(TenantStream {
            counts: self.tenant_streams.clone(),
            tenant: tenant.to_string(),
        })
    }

    fn vault(&self) -> Result<&Vault, HttpError> {
        self.vault
            .as_ref()
            .ok_or_else(|| HttpError::unavailable("herd's vault bucket is not reachable"))
    }

    fn vault_key(&self) -> Result<&VaultKey, HttpError> {
        self.vault_key.as_ref().ok_or_else(|| {
            HttpError::unavailable(
                "this gateway has no vault key (HERD_VAULT_KEY), so it cannot seal credentials",
            )
        })
    }

    /// The tenant of a key by its hash, from the cache or the store: a stream re-checks its
    /// key this way, so a revoked key's open streams end too.
    async fn tenant_of_hash(&self, hash: &str) -> Result<String, HttpError> {
        let hash = hash.to_string();
        if let Some((r, at)) = self.keys.lock().expect("key cache").get(&hash)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(r.tenant.clone());
        }
        let record = keys::lookup_hash(&self.store, &hash)
            .await
            .map_err(|e| match e {
                keys::KeyError::Store(s) => HttpError::from(s),
                other => HttpError::unavailable(other.to_string()),
            })?;
        match record {
            Some(r) if r.revoked_at.is_none() => {
                let tenant = r.tenant.clone();
                let mut cache = self.keys.lock().expect("key cache");
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(hash, (r, Instant::now()));
                Ok(tenant)
            }
            Some(_) => Err(HttpError::unauthenticated("this API key has been revoked")),
            None => Err(HttpError::unauthenticated("invalid API key")),
        }
    }
}

/// The tenant a request acts for, from its `Authorization: Bearer` or `x-api-key` header,
/// and the hash of the key it presented.
pub struct Tenant(pub String, pub String);

impl FromRequestParts<Shared> for Tenant {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, g: &Shared) -> Result<Self, HttpError> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let key = bearer
            .or_else(|| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                HttpError::unauthenticated(
                    "no API key: send Authorization: Bearer <key> or x-api-key (herd keys create --tenant T makes one)",
                )
            })?;
        if key.len() > 256 {
            return Err(HttpError::unauthenticated("invalid API key"));
        }
        let hash = keys::hash(key);
        g.tenant_of_hash(&hash).await.map(|t| Tenant(t, hash))
    }
}

/// The current time as the API writes it.
pub fn now() -> String {
    crate::event::format_time(time::OffsetDateTime::now_utc())
}

/// A 200 with a JSON body.
pub fn ok(v: Value) -> Response {
    let mut r = Response::new(axum::body::Body::from(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The outer layer: a request id on every answer, bounded headers, and every error as the
/// SDK's envelope (the router's own 404s and 405s and the body limit's 413 included).
async fn envelope(req: Request, next: Next) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let mut r = if header_bytes > MAX_HEADER_BYTES {
        HttpError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            kind: "invalid_request_error",
            message: format!(
                "request headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES}"
            ),
            code: None,
        }
        .into_response()
    } else {
        next.run(req).await
    };
    let status = r.status();
    if status.is_client_error() || status.is_server_error() {
        let err = r
            .extensions_mut()
            .remove::<HttpError>()
            .unwrap_or_else(|| HttpError::for_status(status));
        let body = err.envelope(&request_id).to_string();
        let headers = std::mem::take(r.headers_mut());
        r = (err.status, body).into_response();
        for (k, v) in headers.iter() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                r.headers_mut().insert(k.clone(), v.clone());
            }
        }
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if err.status.is_server_error() && !r.headers().contains_key("retry-after-ms") {
            r.headers_mut()
                .insert("retry-after-ms", HeaderValue::from_static("500"));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        r.headers_mut().insert("request-id", v);
    }
    // No answer of the API is a page: a browser must never sniff one into HTML or frame it.
    r.headers_mut()
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    r.headers_mut()
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    r
}

/// The routes.
pub fn router(g: Shared) -> Router {
    Router::new()
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/v1/agents", post(agents::create).get(agents::list))
        .route(
            "/v1/agents/{id}",
            get(agents::retrieve).post(agents::update),
        )
        .route("/v1/agents/{id}/archive", post(agents::archive))
        .route("/v1/agents/{id}/versions", get(agents::versions))
        .route(
            "/v1/environments",
            post(environments::create).get(environments::list),
        )
        .route(
            "/v1/environments/{id}",
            get(environments::retrieve)
                .post(environments::update)
                .delete(environments::delete),
        )
        .route("/v1/environments/{id}/archive", post(environments::archive))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::retrieve)
                .post(sessions::update)
                .delete(sessions::delete),
        )
        .route("/v1/sessions/{id}/archive", post(sessions::archive))
        .route(
            "/v1/sessions/{id}/events",
            get(events::list).post(events::send),
        )
        .route("/v1/sessions/{id}/events/stream", get(stream::stream))
        .route("/v1/sessions/{id}/tool_outputs/{call}", get(events::output))
        .route(
            "/v1/sessions/{id}/schedules",
            post(schedules::set).get(schedules::list),
        )
        .route(
            "/v1/sessions/{id}/schedules/{name}",
            axum::routing::delete(schedules::cancel),
        )
        .route("/v1/vaults", post(vaults::create).get(vaults::list))
        .route(
            "/v1/vaults/{id}",
            get(vaults::retrieve)
                .post(vaults::update)
                .delete(vaults::delete),
        )
        .route("/v1/vaults/{id}/archive", post(vaults::archive))
        .route(
            "/v1/vaults/{id}/credentials",
            post(vaults::create_credential).get(vaults::list_credentials),
        )
        .route(
            "/v1/vaults/{vid}/credentials/{id}",
            get(vaults::retrieve_credential).delete(vaults::delete_credential),
        )
        .route(
            "/v1/vaults/{vid}/credentials/{id}/archive",
            post(vaults::archive_credential),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(envelope))
        .with_state(g)
}

/// Serves the API until `shutdown` resolves; open event streams end with it.
pub async fn serve(
    g: Shared,
    config: &GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| GatewayError::Listen {
            addr: config.listen,
            detail: e.to_string(),
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%addr, "gateway listening");
    serve_on(g, listener, shutdown).await
}

/// Serves on a bound listener (tests bind port 0 and read the address first).
pub async fn serve_on(
    g: Shared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let addr = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    axum::serve(listener, router(g))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| GatewayError::Listen {
            addr,
            detail: e.to_string(),
        })
}
