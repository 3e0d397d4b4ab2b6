//! Who is calling: the `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`) of a
//! key tollgate issued, looked up by its
//! SHA-256 (the only form stored), with what the request path needs about the user (tier, level,
//! BYOK providers).
//!
//! Lookups are cached for the configured TTL (1 s by default) so a busy key costs one database
//! read a second (which also records the key's `last_used_at`); a revoked key, a changed tier or
//! a new BYOK key takes effect within the TTL.
//! Only successes are cached (unknown keys cannot fill the cache), and the cache is bounded by
//! [`AUTH_CACHE_MAX`]. The key itself is never logged or kept: only its hash is a cache key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use zeroize::Zeroizing;

use crate::ledger::api_keys::hash_key;
use crate::ledger::{Ledger, LedgerError, PowerLevel, Tier};

use super::error::ApiError;
use super::writer::LedgerWriter;

/// Cached callers at most; when full, the cache is emptied (and refills from the database).
pub const AUTH_CACHE_MAX: usize = 100_000;
/// The longest Authorization (or x-api-key) header accepted.
const AUTHORIZATION_LEN_MAX: usize = 1_024;
/// Where Anthropic's SDKs send the key.
const API_KEY_HEADER: &str = "x-api-key";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub tier: Tier,
    pub power_level: PowerLevel,
    /// Providers for which the user has an active default BYOK key.
    pub byok_providers: Vec<String>,
}

/// Cached callers by key hash, with when each was looked up.
type Entries = HashMap<[u8; 32], (Arc<Caller>, Instant)>;

#[derive(Debug)]
pub struct AuthCache {
    ttl: Duration,
    entries: Mutex<Entries>,
}

impl AuthCache {
    pub fn new(ttl: Duration) -> AuthCache {
        AuthCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Arc<Caller>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(caller, _)| caller.clone())
    }

    fn put(&self, hash: [u8; 32], caller: Arc<Caller>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= AUTH_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (caller, Instant::now()));
    }
}

/// The key of a request: `Authorization: Bearer <key>` (OpenAI's SDKs), or `x-api-key: <key>`
/// (Anthropic's) when there is no Authorization header; or a 401 saying what is missing.
fn bearer(headers: &HeaderMap) -> Result<Zeroizing<String>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return api_key_header(headers);
    };
    if value.len() > AUTHORIZATION_LEN_MAX {
        return Err(ApiError::Unauthorized(
            "the Authorization header is too long".into(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not text".into()))?;
    let key = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be \"Bearer <key>\"".into())
        })?
        .trim();
    Ok(Zeroizing::new(key.to_owned()))
}

/// The key in `x-api-key`, as Anthropic's SDKs send it.
fn api_key_header(headers: &HeaderMap) -> Result<Zeroizing<String>, ApiError> {
    let value = headers.get(API_KEY_HEADER).ok_or_else(|| {
        ApiError::Unauthorized(
            "missing API key: send the header \"Authorization: Bearer <your tollgate key>\" \
             (or \"x-api-key: <your tollgate key>\")"
                .into(),
        )
    })?;
    if value.len() > AUTHORIZATION_LEN_MAX {
        return Err(ApiError::Unauthorized(
            "the x-api-key header is too long".into(),
        ));
    }
    let key = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the x-api-key header is not text".into()))?
        .trim();
    Ok(Zeroizing::new(key.to_owned()))
}

/// The caller of a request: from the cache, else from the ledger.
pub async fn authenticate(
    cache: &AuthCache,
    writer: &LedgerWriter,
    headers: &HeaderMap,
) -> Result<Arc<Caller>, ApiError> {
    let key = bearer(headers)?;
    let hash = hash_key(&key);
    if let Some(caller) = cache.get(&hash) {
        return Ok(caller);
    }
    let found = writer
        .read(move |ledger| lookup(ledger, &key))
        .await
        .map_err(|e| ApiError::Overloaded(e.to_string()))?;
    match found {
        Ok(Some(caller)) => {
            let caller = Arc::new(caller);
            cache.put(hash, caller.clone());
            Ok(caller)
        }
        Ok(None) => Err(ApiError::Unauthorized(
            "invalid API key: unknown or revoked".into(),
        )),
        Err(e) => {
            tracing::error!(error = %e, "authentication lookup failed");
            Err(ApiError::Internal {
                request_id: "-".into(),
            })
        }
    }
}

fn lookup(ledger: &mut Ledger, key: &str) -> Result<Option<Caller>, LedgerError> {
    let Some(user_id) = ledger.authenticate(key)? else {
        return Ok(None);
    };
    ledger.mark_api_key_used(key)?;
    let account = ledger.account(&user_id)?;
    let byok_providers = ledger
        .provider_keys(&user_id)?
        .into_iter()
        .filter(|k| k.is_default && k.is_active)
        .map(|k| k.provider)
        .collect();
    Ok(Some(Caller {
        user_id,
        tier: account.tier,
        power_level: account.power_level,
        byok_providers,
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_keys_are_read_and_bad_headers_named() {
        let mut h = HeaderMap::new();
        assert!(
            bearer(&h)
                .unwrap_err()
                .to_string()
                .contains("missing API key")
        );
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert!(bearer(&h).unwrap_err().to_string().contains("Bearer <key>"));
        h.insert("authorization", HeaderValue::from_static("Bearer tg_abc "));
        assert_eq!(bearer(&h).unwrap().as_str(), "tg_abc");
        // Anthropic's SDKs: x-api-key, read only without an Authorization header.
        h.insert("x-api-key", HeaderValue::from_static("tg_other"));
        assert_eq!(bearer(&h).unwrap().as_str(), "tg_abc");
        h.remove("authorization");
        assert_eq!(bearer(&h).unwrap().as_str(), "tg_other");
    }

    #[test]
    fn the_cache_forgets_after_its_ttl_and_is_bounded() {
        let cache = AuthCache::new(Duration::ZERO);
        let caller = Arc::new(Caller {
            user_id: "u".into(),
            tier: Tier::Trial,
            power_level: PowerLevel::Eco,
            byok_providers: vec![],
        });
        cache.put([1; 32], caller.clone());
        assert!(cache.get(&[1; 32]).is_none(), "a zero TTL caches nothing");
        let cache = AuthCache::new(Duration::from_secs(60));
        cache.put([1; 32], caller.clone());
        assert_eq!(cache.get(&[1; 32]).unwrap().user_id, "u");
        for i in 0..AUTH_CACHE_MAX + 1 {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.put(h, caller.clone());
        }
        assert!(cache.entries.lock().unwrap().len() <= AUTH_CACHE_MAX);
    }
}
