//! Vaults: named credentials, encrypted at rest in the `herd-vault` KV bucket.
//!
//! A credential is a secret value plus what it is (a bearer token, a `user:password` pair, a
//! header value, a git token) and the hosts it may be sent to. The value is sealed with
//! ChaCha20-Poly1305 (ring, which herd already builds for TLS) under a 32-byte key that only the
//! processes that use secrets hold — the hands, never the brain, never a sandbox. The metadata
//! (kind, hosts) is stored in the clear, so `herd vault list` needs no key, and is bound to the
//! ciphertext as associated data, so it cannot be edited to send a secret somewhere new.
//!
//! Values are write-only: nothing here returns one except [`Vault::open`] for the hand that
//! substitutes it into a request, and [`Sealed`]'s `Debug` shows none.

use std::collections::BTreeMap;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::event::check_token;

/// The KV bucket that holds every vault.
pub const BUCKET: &str = "herd-vault";

/// The shortest value a credential may hold: shorter ones could not be redacted from output
/// without mangling it.
pub const MIN_VALUE_BYTES: usize = 8;

/// The longest value a credential may hold.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// What a credential is, which decides what its placeholder turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A token for `Authorization: Bearer {{secret:NAME}}`: substituted as is.
    StaticBearer,
    /// `user:password`: substituted base64-encoded, for `Authorization: Basic {{secret:NAME}}`.
    Basic,
    /// Any header or body value (an API key): substituted as is.
    Header,
    /// A git token: used by the hand's git access, and substituted as is.
    Git,
}

impl Kind {
    /// Parses a kind's name.
    pub fn parse(s: &str) -> Result<Self, VaultError> {
        match s {
            "static_bearer" | "bearer" => Ok(Self::StaticBearer),
            "basic" => Ok(Self::Basic),
            "header" => Ok(Self::Header),
            "git" => Ok(Self::Git),
            other => Err(VaultError::Invalid(format!(
                "unknown credential kind {other:?}; expected static_bearer, basic, header or git"
            ))),
        }
    }
}

/// Why a vault operation failed. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Bad input: a name, a host, a value.
    #[error("{0}")]
    Invalid(String),
    /// The key is missing or malformed.
    #[error("vault key: {0}")]
    Key(String),
    /// The credential does not exist.
    #[error("no credential {name} in vault {vault}")]
    NotFound {
        /// The vault.
        vault: String,
        /// The credential.
        name: String,
    },
    /// The stored value does not open under this key (wrong key, or tampered with).
    #[error(
        "credential {name} in vault {vault} cannot be decrypted: wrong key, or the stored record was altered"
    )]
    Sealed {
        /// The vault.
        vault: String,
        /// The credential.
        name: String,
    },
    /// NATS failed.
    #[error("vault store: {0}")]
    Store(String),
}

/// A credential as stored: metadata in the clear, the value sealed.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sealed {
    /// Format version.
    pub v: u32,
    /// What it is.
    pub kind: Kind,
    /// Hosts it may be sent to (`host` or `host:port`, lower case).
    pub hosts: Vec<String>,
    /// The 12-byte nonce, hex.
    pub nonce: String,
    /// Ciphertext and tag, hex.
    pub sealed: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("kind", &self.kind)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// A credential's public face: what `herd vault list` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Where it may go.
    pub hosts: Vec<String>,
}

/// An opened credential, for the one place that substitutes it.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Where it may go.
    pub hosts: Vec<String>,
    /// The value.
    pub value: Secret,
}

/// The key that seals and opens credential values.
#[derive(Clone)]
pub struct VaultKey(LessSafeKey);

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultKey([redacted])")
    }
}

impl VaultKey {
    /// A key from 64 hex characters (32 bytes), e.g. from `openssl rand -hex 32`.
    pub fn from_hex(text: &str) -> Result<Self, VaultError> {
        let bytes = hex_decode(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| VaultError::Key("expected 64 hex characters (32 bytes)".into()))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| VaultError::Key("cannot use this key".into()))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// The key from `HERD_VAULT_KEY` (hex) or the file named by `HERD_VAULT_KEY_FILE`.
    pub fn from_env() -> Result<Option<Self>, VaultError> {
        if let Ok(v) = std::env::var("HERD_VAULT_KEY")
            && !v.is_empty()
        {
            return Self::from_hex(&v).map(Some);
        }
        if let Ok(path) = std::env::var("HERD_VAULT_KEY_FILE")
            && !path.is_empty()
        {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| VaultError::Key(format!("cannot read {path}: {e}")))?;
            return Self::from_hex(&text).map(Some);
        }
        Ok(None)
    }

    /// A fresh random key, hex (what `herd vault keygen` prints).
    pub fn generate_hex() -> Result<String, VaultError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| VaultError::Key("the system random source failed".into()))?;
        Ok(hex_encode(&bytes))
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks a vault or credential name: a subject-safe token (it is part of a KV key).
pub fn check_name(what: &'static str, name: &str) -> Result<(), VaultError> {
    check_token(what, name).map_err(|e| VaultError::Invalid(e.to_string()))
}

/// Normalises and checks an allowed host: `host` or `host:port`, no scheme, path or wildcard
/// (the same rule as a session's allowed hosts).
pub fn check_host(host: &str) -> Result<String, VaultError> {
    crate::event::normalize_host(host).map_err(|e| VaultError::Invalid(e.to_string()))
}

fn aad(vault: &str, name: &str, kind: Kind, hosts: &[String]) -> Vec<u8> {
    format!("herd-vault-v1|{vault}|{name}|{kind:?}|{}", hosts.join(",")).into_bytes()
}

/// Seals a value under `key`, bound to its vault, name, kind and hosts.
pub fn seal(
    key: &VaultKey,
    vault: &str,
    name: &str,
    kind: Kind,
    hosts: Vec<String>,
    value: &Secret,
) -> Result<Sealed, VaultError> {
    let plain = value.expose().as_bytes();
    if plain.len() < MIN_VALUE_BYTES || plain.len() > MAX_VALUE_BYTES {
        return Err(VaultError::Invalid(format!(
            "a credential's value must be {MIN_VALUE_BYTES} to {MAX_VALUE_BYTES} bytes (got {})",
            plain.len()
        )));
    }
    if kind == Kind::Basic && !value.expose().contains(':') {
        return Err(VaultError::Invalid(
            "a basic credential's value must be user:password".into(),
        ));
    }
    if hosts.is_empty() {
        return Err(VaultError::Invalid(
            "a credential needs at least one allowed host".into(),
        ));
    }
    let mut nonce = [0u8; 12];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VaultError::Key("the system random source failed".into()))?;
    let mut buf = plain.to_vec();
    key.0
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(vault, name, kind, &hosts)),
            &mut buf,
        )
        .map_err(|_| VaultError::Key("sealing failed".into()))?;
    Ok(Sealed {
        v: 1,
        kind,
        hosts,
        nonce: hex_encode(&nonce),
        sealed: hex_encode(&buf),
    })
}

/// Opens a sealed value; fails if the key is wrong or anything stored was altered.
pub fn open(
    key: &VaultKey,
    vault: &str,
    name: &str,
    sealed: &Sealed,
) -> Result<Credential, VaultError> {
    let bad = || VaultError::Sealed {
        vault: vault.to_string(),
        name: name.to_string(),
    };
    let nonce: [u8; 12] = hex_decode(&sealed.nonce)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(bad)?;
    let mut buf = hex_decode(&sealed.sealed).ok_or_else(bad)?;
    let plain = key
        .0
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(vault, name, sealed.kind, &sealed.hosts)),
            &mut buf,
        )
        .map_err(|_| bad())?;
    let value = String::from_utf8(plain.to_vec()).map_err(|_| bad())?;
    Ok(Credential {
        name: name.to_string(),
        kind: sealed.kind,
        hosts: sealed.hosts.clone(),
        value: Secret::new(value),
    })
}

/// The vaults in NATS.
#[derive(Clone)]
pub struct Vault {
    kv: async_nats::jetstream::kv::Store,
}

fn kv_key(vault: &str, name: &str) -> String {
    format!("{vault}.{name}")
}

impl Vault {
    /// Opens (creating if needed) the `herd-vault` bucket.
    pub async fn open_store(js: &async_nats::jetstream::Context) -> Result<Self, VaultError> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: BUCKET.into(),
                    description: "herd vaults: credentials, values sealed".into(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| VaultError::Store(e.to_string()))?,
        };
        Ok(Self { kv })
    }

    /// Stores (or replaces) a credential.
    pub async fn put(
        &self,
        key: &VaultKey,
        vault: &str,
        name: &str,
        kind: Kind,
        hosts: &[String],
        value: &Secret,
    ) -> Result<(), VaultError> {
        check_name("vault name", vault)?;
        check_name("credential name", name)?;
        let hosts = hosts
            .iter()
            .map(|h| check_host(h))
            .collect::<Result<Vec<_>, _>>()?;
        let sealed = seal(key, vault, name, kind, hosts, value)?;
        let bytes = serde_json::to_vec(&sealed).map_err(|e| VaultError::Store(e.to_string()))?;
        self.kv
            .put(kv_key(vault, name), bytes.into())
            .await
            .map_err(|e| VaultError::Store(e.to_string()))?;
        Ok(())
    }

    /// The credentials of a vault, without their values.
    pub async fn list(&self, vault: &str) -> Result<Vec<Listing>, VaultError> {
        check_name("vault name", vault)?;
        use futures_util::TryStreamExt;
        // The vault's keys from the stream's subjects (one request, no consumer: the hands'
        // role may not create consumers, which could deliver anywhere).
        let subject_prefix = format!("$KV.{BUCKET}.{vault}.");
        let subjects: Vec<String> = self
            .kv
            .stream
            .clone()
            .info_with_subjects(format!("{subject_prefix}*"))
            .await
            .map_err(|e| VaultError::Store(e.to_string()))?
            .map_ok(|(s, _)| s)
            .try_collect()
            .await
            .map_err(|e| VaultError::Store(e.to_string()))?;
        let mut out = BTreeMap::new();
        for s in subjects {
            let Some(name) = s.strip_prefix(&subject_prefix).map(String::from) else {
                continue;
            };
            if let Some(sealed) = self.get_sealed(vault, &name).await? {
                out.insert(
                    name.clone(),
                    Listing {
                        name,
                        kind: sealed.kind,
                        hosts: sealed.hosts,
                    },
                );
            }
        }
        Ok(out.into_values().collect())
    }

    async fn get_sealed(&self, vault: &str, name: &str) -> Result<Option<Sealed>, VaultError> {
        let Some(bytes) = self
            .kv
            .get(kv_key(vault, name))
            .await
            .map_err(|e| VaultError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| VaultError::Sealed {
                vault: vault.into(),
                name: name.into(),
            })
    }

    /// Opens one credential.
    pub async fn get(
        &self,
        key: &VaultKey,
        vault: &str,
        name: &str,
    ) -> Result<Credential, VaultError> {
        check_name("vault name", vault)?;
        check_name("credential name", name)?;
        let sealed = self
            .get_sealed(vault, name)
            .await?
            .ok_or_else(|| VaultError::NotFound {
                vault: vault.into(),
                name: name.into(),
            })?;
        open(key, vault, name, &sealed)
    }

    /// Removes a credential.
    pub async fn remove(&self, vault: &str, name: &str) -> Result<(), VaultError> {
        check_name("vault name", vault)?;
        check_name("credential name", name)?;
        if self.get_sealed(vault, name).await?.is_none() {
            return Err(VaultError::NotFound {
                vault: vault.into(),
                name: name.into(),
            });
        }
        // A delete marker, not a purge: the bucket takes no rollups (a rollup through any
        // writer's key would empty the whole bucket).
        self.kv
            .delete(kv_key(vault, name))
            .await
            .map_err(|e| VaultError::Store(e.to_string()))
    }
}

impl Vault {
    /// Removes a credential without reading it first: for a writer that may not read the
    /// vault (the gateway, which only seals). Removing one that is not there is no error.
    pub async fn forget(&self, vault: &str, name: &str) -> Result<(), VaultError> {
        check_name("vault name", vault)?;
        check_name("credential name", name)?;
        self.kv
            .delete(kv_key(vault, name))
            .await
            .map_err(|e| VaultError::Store(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VaultKey {
        VaultKey::from_hex(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_the_key_and_unaltered_metadata() {
        let canary = Secret::new("canary-7f3a-value");
        let hosts = vec!["api.example.com".to_string()];
        let s = seal(
            &key(),
            "v1",
            "GH",
            Kind::StaticBearer,
            hosts.clone(),
            &canary,
        )
        .unwrap();
        let stored = serde_json::to_string(&s).unwrap();
        assert!(!stored.contains("canary"), "{stored}");
        assert!(!format!("{s:?}").contains("canary"));
        let c = open(&key(), "v1", "GH", &s).unwrap();
        assert_eq!(c.value.expose(), "canary-7f3a-value");
        // Another key, another vault or name, or an extra host: refused.
        let other = VaultKey::from_hex(&"cd".repeat(32)).unwrap();
        assert!(matches!(
            open(&other, "v1", "GH", &s),
            Err(VaultError::Sealed { .. })
        ));
        assert!(open(&key(), "v2", "GH", &s).is_err());
        assert!(open(&key(), "v1", "GH2", &s).is_err());
        let mut widened = s.clone();
        widened.hosts.push("evil.example".into());
        assert!(open(&key(), "v1", "GH", &widened).is_err());
        // Flip every bit of the first ciphertext byte (overwriting it with a constant would
        // leave it unchanged one time in 256).
        let mut flipped = s.clone();
        let first = u8::from_str_radix(&flipped.sealed[0..2], 16).unwrap() ^ 0xff;
        flipped.sealed.replace_range(0..2, &format!("{first:02x}"));
        assert!(open(&key(), "v1", "GH", &flipped).is_err());
        // Errors never carry the value.
        let err = open(&other, "v1", "GH", &s).unwrap_err().to_string();
        assert!(!err.contains("canary"), "{err}");
    }

    #[test]
    fn bad_keys_names_hosts_and_values_are_refused() {
        assert!(VaultKey::from_hex("abcd").is_err());
        assert!(VaultKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(VaultKey::generate_hex().unwrap().len(), 64);
        assert!(check_name("vault name", "a.b").is_err());
        assert!(check_host("https://x.com").is_err());
        assert!(check_host("*.x.com").is_err());
        assert!(check_host("x.com/path").is_err());
        assert_eq!(check_host(" API.x.com:8443 ").unwrap(), "api.x.com:8443");
        let hosts = vec!["x.com".to_string()];
        assert!(
            seal(
                &key(),
                "v",
                "n",
                Kind::Header,
                hosts.clone(),
                &Secret::new("short")
            )
            .is_err()
        );
        assert!(
            seal(
                &key(),
                "v",
                "n",
                Kind::Basic,
                hosts.clone(),
                &Secret::new("no-colon-here")
            )
            .is_err()
        );
        assert!(
            seal(
                &key(),
                "v",
                "n",
                Kind::Header,
                vec![],
                &Secret::new("long-enough")
            )
            .is_err()
        );
        let big = Secret::new("x".repeat(MAX_VALUE_BYTES + 1));
        assert!(seal(&key(), "v", "n", Kind::Header, hosts, &big).is_err());
        assert!(Kind::parse("oauth").is_err());
    }
}
