//! Connection settings, layered: defaults, then a config file, then environment, then flags.
//!
//! Secrets (a NATS password or token) are read from the environment or the file, never from
//! flags, since command lines are visible to every user of the machine; they are wrapped in
//! [`Secret`] so that `Debug` and logs show `[redacted]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A value that must never be printed.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The default server, matching `nats.conf`.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, comma-separated for a cluster (`HERD_NATS_URL`).
    #[serde(default = "default_url")]
    pub url: String,
    /// A `.creds` file (JWT + nkey) (`HERD_NATS_CREDS`).
    #[serde(default)]
    pub creds: Option<PathBuf>,
    /// User name (`HERD_NATS_USER`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password (`HERD_NATS_PASSWORD`; environment or file only).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Token (`HERD_NATS_TOKEN`; environment or file only).
    #[serde(default)]
    pub token: Option<Secret>,
    /// How long one JetStream request may take before it is retried, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// An NKey seed to connect with (`HERD_NATS_NKEY`; environment or file only): how a
    /// container gets its role's key (compose passes `herd auth init`'s `compose.env`).
    #[serde(default)]
    pub nkey: Option<Secret>,
    /// The directory of herd's role keys (`herd auth init`; `HERD_AUTH_DIR`). When no other
    /// credential is set, a process connects with its role's key from here; by default from
    /// `.herd/auth` when that exists.
    #[serde(default)]
    pub auth_dir: Option<PathBuf>,
    /// The role this process connects as (set by the program, not the file).
    #[serde(skip)]
    pub role: Option<crate::auth::Role>,
}

fn default_url() -> String {
    DEFAULT_NATS_URL.to_string()
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            creds: None,
            user: None,
            password: None,
            token: None,
            request_timeout_ms: default_request_timeout_ms(),
            auth_dir: None,
            nkey: None,
            role: None,
        }
    }
}

/// The config file (`herd.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The `[nats]` table.
    #[serde(default)]
    pub nats: NatsConfig,
    /// The `[models]` table: overrides the providers' environment variables for brains.
    #[serde(default)]
    pub models: ModelsConfig,
    /// The `[prices."<model>"]` tables: list prices (US dollars per million tokens) that add
    /// models to herd's built-in price table or replace its prices, for the front doors that
    /// create sessions with a budget.
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, PriceConfig>,
}

/// One model's list prices in the config file, US dollars per million tokens as strings
/// (`input = "3"`, `cache_read = "0.30"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Input tokens.
    pub input: String,
    /// Output tokens.
    pub output: String,
    /// Tokens written to the prompt cache.
    pub cache_creation: String,
    /// Tokens read from the prompt cache.
    pub cache_read: String,
}

impl FileConfig {
    /// herd's built-in price table with the file's `[prices]` applied; an error names a
    /// malformed price.
    pub fn price_table(&self) -> Result<crate::event::PriceTable, crate::event::ConfigError> {
        crate::event::PriceTable::with_overrides(self.prices.iter().map(|(m, p)| {
            (
                m.clone(),
                crate::event::ListPrices::new(
                    &p.input,
                    &p.output,
                    &p.cache_creation,
                    &p.cache_read,
                ),
            )
        }))
    }
}

/// Model API settings in the config file; each overrides its environment variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Overrides `ANTHROPIC_API_KEY`.
    #[serde(default)]
    pub anthropic_api_key: Option<Secret>,
    /// Overrides `ANTHROPIC_BASE_URL`.
    #[serde(default)]
    pub anthropic_base_url: Option<String>,
    /// Overrides `OPENAI_API_KEY`.
    #[serde(default)]
    pub openai_api_key: Option<Secret>,
    /// Overrides `OPENAI_BASE_URL`.
    #[serde(default)]
    pub openai_base_url: Option<String>,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for herd.
    #[error("config file {path} is invalid: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key, never a secret's value).
        detail: String,
    },
    /// Connecting failed.
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect {
        /// The URLs tried.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl FileConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            detail: e.message().to_string(),
        })
    }
}

impl NatsConfig {
    /// Overlays the `HERD_NATS_*` environment variables.
    pub fn with_env(mut self) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("HERD_NATS_URL") {
            self.url = v;
        }
        if let Some(v) = var("HERD_NATS_CREDS") {
            self.creds = Some(v.into());
        }
        if let Some(v) = var("HERD_NATS_USER") {
            self.user = Some(v);
        }
        if let Some(v) = var("HERD_NATS_PASSWORD") {
            self.password = Some(Secret::new(v));
        }
        if let Some(v) = var("HERD_NATS_TOKEN") {
            self.token = Some(Secret::new(v));
        }
        if let Some(v) = var("HERD_NATS_NKEY") {
            self.nkey = Some(Secret::new(v));
        }
        if let Some(v) = var("HERD_AUTH_DIR") {
            self.auth_dir = Some(v.into());
        }
        self
    }

    /// The same settings for a process of `role`.
    pub fn as_role(mut self, role: crate::auth::Role) -> Self {
        self.role = Some(role);
        self
    }

    /// The role key this connection uses: its role's seed from the auth directory, unless
    /// another credential is configured. An auth directory that was named but lacks the key is
    /// an error; the default one is used only when it exists.
    fn role_key(&self) -> Result<Option<crate::auth::RoleKey>, ConfigError> {
        let bad_seed = |e: crate::auth::AuthError| ConfigError::Connect {
            url: self.url.clone(),
            detail: e.to_string(),
        };
        // A seed without a role is connected by `connect` itself, with the default inbox.
        let Some(role) = self.role else {
            return Ok(None);
        };
        if let Some(seed) = &self.nkey {
            return crate::auth::RoleKey::from_seed(role, seed.expose())
                .map(Some)
                .map_err(bad_seed);
        }
        if self.creds.is_some() || self.user.is_some() || self.token.is_some() {
            return Ok(None);
        }
        let dir = match &self.auth_dir {
            Some(d) => d.clone(),
            None => {
                let d = PathBuf::from(crate::auth::DEFAULT_DIR);
                if !d.join(format!("{}.nk", role.name())).exists() {
                    return Ok(None);
                }
                d
            }
        };
        crate::auth::AuthDir::at(dir)
            .key(role)
            .map(Some)
            .map_err(|e| ConfigError::Connect {
                url: self.url.clone(),
                detail: format!(
                    "no key for role {role} ({e}); run `herd auth init` or set HERD_AUTH_DIR"
                ),
            })
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    /// The server URLs.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// Connects. The client reconnects forever on its own after the first connection, so a
    /// server restart is a pause, not an error; callers retry in-flight requests.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConfigError> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .request_timeout(Some(self.request_timeout()))
            .retry_on_initial_connect()
            .max_reconnects(None);
        if let Some(path) = &self.creds {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| ConfigError::Connect {
                    url: self.url.clone(),
                    detail: format!("cannot load credentials {}: {e}", path.display()),
                })?;
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), password.expose().to_string());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.expose().to_string());
        }
        if let Some(key) = self.role_key()? {
            opts = opts
                .nkey(key.seed().to_string())
                .custom_inbox_prefix(key.role.inbox_prefix());
        } else if let (None, Some(seed)) = (self.role, &self.nkey) {
            // Not one of herd's roles: its replies use the standard inbox, which whatever
            // permissions it was given expect. The seed is checked here for a clear error.
            crate::auth::RoleKey::from_seed(crate::auth::Role::Client, seed.expose()).map_err(
                |e| ConfigError::Connect {
                    url: self.url.clone(),
                    detail: e.to_string(),
                },
            )?;
            opts = opts.nkey(seed.expose().to_string());
        }
        let urls = self.urls();
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| ConfigError::Connect {
                url: self.url.clone(),
                detail: format!("invalid URL: {e}"),
            })?;
        // retry_on_initial_connect makes connect return at once and connect in the background;
        // wait for the first connection so that a wrong URL is an error, not a hang.
        let client = opts
            .connect(addrs)
            .await
            .map_err(|e| ConfigError::Connect {
                url: self.url.clone(),
                detail: e.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                return Err(ConfigError::Connect {
                    url: self.url.clone(),
                    detail: "no server answered within 10 s (is nats-server running?)".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = NatsConfig {
            password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn file_config_parses_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("herd.toml");
        std::fs::write(&p, "[nats]\nurl = \"nats://a:1,nats://b:2\"\n").unwrap();
        let c = FileConfig::load(&p).unwrap();
        assert_eq!(c.nats.urls(), vec!["nats://a:1", "nats://b:2"]);
        std::fs::write(&p, "[nats]\nurll = \"x\"\npassword = \"topsecret\"\n").unwrap();
        let err = FileConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn prices_in_the_file_extend_the_built_in_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("herd.toml");
        std::fs::write(
            &p,
            "[prices.\"my-model\"]\ninput = \"2\"\noutput = \"8\"\ncache_creation = \"2.5\"\ncache_read = \"0.2\"\n",
        )
        .unwrap();
        let t = FileConfig::load(&p).unwrap().price_table().unwrap();
        assert_eq!(t.lookup("my-model").unwrap().output, "8");
        assert!(t.lookup("claude-sonnet-4-5").is_some(), "built-ins stay");
        std::fs::write(&p, "[prices.m]\ninput = \"2\"\noutput = \"x\"\ncache_creation = \"0\"\ncache_read = \"0\"\n").unwrap();
        let err = FileConfig::load(&p)
            .unwrap()
            .price_table()
            .unwrap_err()
            .to_string();
        assert!(err.contains("prices of \"m\": output"), "{err}");
        std::fs::write(&p, "[prices.m]\ninput = \"2\"\n").unwrap();
        assert!(FileConfig::load(&p).is_err(), "every price is required");
    }
}
