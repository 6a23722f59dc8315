//! API keys: who a request is. `herd keys create --tenant T` makes one and prints it once;
//! only its SHA-256 is stored (`herd.gw.key.<sha256>`), with its tenant, so the store never
//! holds a usable key and a lookup is one direct get by hash. Revoking writes the record again
//! with `revoked_at`; the last record on the subject is the key's state.
//!
//! Keys are 32 random bytes (ring's system RNG), so a plain hash is the right store: there is
//! nothing to brute-force the way there is with a password.

use base64::Engine;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::store::{Expect, Store, StoreError};
use crate::bus::subjects;
use crate::event::{check_token, format_time};

/// The prefix of every key herd makes, so a leaked key is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "herd_sk_";

/// The longest tenant name.
pub const MAX_TENANT_LEN: usize = 64;

/// A key's stored record (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's public id (`key_…`), for listing and revoking.
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// A label for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key's first characters, so a person can tell keys apart.
    pub hint: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it was revoked; a revoked key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Bad input (a tenant name, a key id).
    #[error("{0}")]
    Invalid(String),
    /// No such key.
    #[error("no API key {0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a tenant name: a subject token of at most 64 characters.
pub fn check_tenant(tenant: &str) -> Result<(), KeyError> {
    check_token("tenant", tenant).map_err(|e| KeyError::Invalid(e.to_string()))?;
    if tenant.len() > MAX_TENANT_LEN {
        return Err(KeyError::Invalid(format!(
            "tenant {tenant:?} is longer than {MAX_TENANT_LEN} characters"
        )));
    }
    Ok(())
}

/// The SHA-256 of a key, hex: its record's subject token.
pub fn hash(key: &str) -> String {
    digest::digest(&digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random key.
pub fn generate() -> Result<String, KeyError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Invalid("the system random number generator failed".into()))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Makes a key for `tenant`: returns the key (shown once) and its record.
pub async fn create(
    store: &Store,
    tenant: &str,
    name: Option<String>,
) -> Result<(String, KeyRecord), KeyError> {
    check_tenant(tenant)?;
    let key = generate()?;
    let record = KeyRecord {
        id: format!("key_{}", uuid::Uuid::now_v7().simple()),
        tenant: tenant.to_string(),
        name,
        hint: key.chars().take(KEY_PREFIX.len() + 4).collect(),
        created_at: format_time(time::OffsetDateTime::now_utc()),
        revoked_at: None,
    };
    store
        .put_at(&subjects::gateway_key(&hash(&key)), &record, Expect::New)
        .await?;
    Ok((key, record))
}

/// The record of a presented key, if it is one herd made (revoked or not).
pub async fn lookup(store: &Store, key: &str) -> Result<Option<KeyRecord>, KeyError> {
    lookup_hash(store, &hash(key)).await
}

/// The record of a key by its hash (what a gateway keeps instead of the key).
pub async fn lookup_hash(store: &Store, hash: &str) -> Result<Option<KeyRecord>, KeyError> {
    Ok(store
        .last::<KeyRecord>(&subjects::gateway_key(hash))
        .await?
        .map(|s| s.doc))
}

/// Every key's record (of one tenant, if given), oldest first.
pub async fn list(store: &Store, tenant: Option<&str>) -> Result<Vec<KeyRecord>, KeyError> {
    let mut out = Vec::new();
    for subject in store.subjects(subjects::GATEWAY_KEYS).await? {
        if let Some(r) = store.last::<KeyRecord>(&subject).await? {
            if tenant.is_none_or(|t| t == r.doc.tenant) {
                out.push(r.doc);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Revokes a key by its id; requests with it are refused from then on (within the gateways'
/// key cache lifetime).
pub async fn revoke(store: &Store, id: &str) -> Result<KeyRecord, KeyError> {
    check_token("key id", id).map_err(|e| KeyError::Invalid(e.to_string()))?;
    for subject in store.subjects(subjects::GATEWAY_KEYS).await? {
        if let Some(r) = store.last::<KeyRecord>(&subject).await?
            && r.doc.id == id
        {
            if r.doc.revoked_at.is_some() {
                return Ok(r.doc);
            }
            let mut record = r.doc;
            record.revoked_at = Some(format_time(time::OffsetDateTime::now_utc()));
            store.put_at(&subject, &record, Expect::At(r.seq)).await?;
            return Ok(record);
        }
    }
    Err(KeyError::NotFound(id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hashed_to_a_token() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43);
        let h = hash(&a);
        assert_eq!(h.len(), 64);
        assert!(check_token("hash", &h).is_ok());
        assert_eq!(h, hash(&a));
        assert_ne!(h, hash(&b));
    }

    #[test]
    fn tenant_names_are_tokens() {
        assert!(check_tenant("acme-1").is_ok());
        for bad in ["", "a.b", "a b", "*", ">", &"x".repeat(65)] {
            assert!(check_tenant(bad).is_err(), "{bad:?}");
        }
    }
}
