//! API keys tollgate issues to users: stored only as a SHA-256 of the key, shown once.
//!
//! A key is `tg_` followed by 43 base64url characters (32 random bytes), so a fast hash is as
//! strong as a slow one here: there is nothing to guess. Listings show the public id and prefix.

use base64::Engine;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Ledger, LedgerError};

/// What every key starts with.
const KEY_TAG: &str = "tg_";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// Characters in a key: the tag and the bytes in unpadded base64.
const KEY_LEN: usize = KEY_TAG.len() + (KEY_BYTES * 4).div_ceil(3);
/// Characters of a key shown in listings (`tg_` and the first eight of the secret).
const PREFIX_LEN: usize = 11;
/// Longest key name.
pub const KEY_NAME_LEN_MAX: usize = 64;

/// An issued key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyInfo {
    pub key_id: String,
    pub user_id: String,
    pub prefix: String,
    pub name: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A key just created: the one time its secret exists outside the caller's hands. Its Debug
/// shows `<redacted>` in place of the secret.
pub struct NewApiKey {
    pub info: ApiKeyInfo,
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("info", &self.info)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], LedgerError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| LedgerError::Corrupt(format!("no randomness: {e}")))?;
    Ok(bytes)
}

/// A fresh key, built in place in wiped-on-drop buffers: the random bytes are drawn straight into
/// one and encoded straight into the other, whose capacity is reserved up front so it never
/// reallocates and leaves a copy behind.
fn new_secret() -> Result<Zeroizing<String>, LedgerError> {
    let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
    getrandom::fill(raw.as_mut_slice())
        .map_err(|e| LedgerError::Corrupt(format!("no randomness: {e}")))?;
    let mut secret = Zeroizing::new(String::with_capacity(KEY_LEN));
    let reserved = secret.capacity();
    secret.push_str(KEY_TAG);
    // encode_slice writes straight into a buffer we wipe (encode_string would pass the text
    // through an internal stack buffer that nobody wipes).
    let mut encoded = Zeroizing::new([0u8; 64]);
    let written = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(raw.as_slice(), encoded.as_mut_slice())
        .map_err(|e| LedgerError::Corrupt(format!("encoding a key: {e}")))?;
    let text = std::str::from_utf8(&encoded[..written])
        .map_err(|e| LedgerError::Corrupt(format!("encoding a key: {e}")))?;
    secret.push_str(text);
    debug_assert_eq!((secret.len(), secret.capacity()), (KEY_LEN, reserved));
    Ok(secret)
}

pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Ledger {
    pub fn create_api_key(
        &mut self,
        user_id: &str,
        name: Option<&str>,
    ) -> Result<NewApiKey, LedgerError> {
        if let Some(n) = name {
            if n.is_empty() || n.len() > KEY_NAME_LEN_MAX {
                return Err(LedgerError::InvalidField {
                    field: "key name",
                    why: format!("{n:?} must be 1 to {KEY_NAME_LEN_MAX} bytes"),
                });
            }
            if let Some(c) = n.chars().find(|c| c.is_control()) {
                return Err(LedgerError::InvalidField {
                    field: "key name",
                    why: format!("{n:?} contains the control character {c:?}"),
                });
            }
        }
        let secret = new_secret()?;
        let key_id = format!("key_{}", hex::encode(random_bytes::<8>()?));
        let prefix: String = secret.chars().take(PREFIX_LEN).collect();
        let now = super::clock::to_text(self.clock.now());
        let inserted = self.conn().execute(
            "INSERT INTO api_keys (key_id, user_id, key_hash, prefix, name, created_at) \
             SELECT ?1, user_id, ?3, ?4, ?5, ?6 FROM user_credits WHERE user_id = ?2",
            params![
                key_id,
                user_id,
                hash_key(&secret).as_slice(),
                prefix,
                name,
                now
            ],
        )?;
        if inserted == 0 {
            return Err(LedgerError::UnknownUser(user_id.to_owned()));
        }
        let info = ApiKeyInfo {
            key_id,
            user_id: user_id.to_owned(),
            prefix,
            name: name.map(str::to_owned),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        Ok(NewApiKey { info, secret })
    }

    pub fn api_keys(&self, user_id: &str) -> Result<Vec<ApiKeyInfo>, LedgerError> {
        if !self.user_exists(user_id)? {
            return Err(LedgerError::UnknownUser(user_id.to_owned()));
        }
        let mut stmt = self.conn().prepare_cached(
            "SELECT key_id, user_id, prefix, name, created_at, last_used_at, revoked_at \
             FROM api_keys WHERE user_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([user_id], |r| {
            Ok(ApiKeyInfo {
                key_id: r.get(0)?,
                user_id: r.get(1)?,
                prefix: r.get(2)?,
                name: r.get(3)?,
                created_at: r.get(4)?,
                last_used_at: r.get(5)?,
                revoked_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a key. Revoking a revoked key is a no-op that succeeds (idempotent).
    pub fn revoke_api_key(&mut self, key_id: &str) -> Result<(), LedgerError> {
        let now = super::clock::to_text(self.clock.now());
        let found = self.conn().execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE key_id = ?1",
            params![key_id, now],
        )?;
        if found == 0 {
            return Err(LedgerError::UnknownApiKey(key_id.to_owned()));
        }
        Ok(())
    }

    /// The user a live (not revoked) key belongs to.
    pub fn authenticate(&self, secret: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT user_id FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL",
            )?
            .query_row([hash_key(secret).as_slice()], |r| r.get(0))
            .optional()?)
    }

    /// Records that a live key was just used (`last_used_at`). The gateway calls this when it
    /// looks a key up, so the time is exact to its auth cache's TTL.
    pub fn mark_api_key_used(&mut self, secret: &str) -> Result<(), LedgerError> {
        let now = super::clock::to_text(self.clock.now());
        self.conn()
            .prepare_cached(
                "UPDATE api_keys SET last_used_at = ?2 WHERE key_hash = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![hash_key(secret).as_slice(), now])?;
        Ok(())
    }

    pub fn user_exists(&self, user_id: &str) -> Result<bool, LedgerError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM user_credits WHERE user_id = ?1")?
            .query_row([user_id], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_has_its_shape_and_debug_hides_it() {
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), KEY_LEN);
        assert!(secret.starts_with(KEY_TAG));
        let key = NewApiKey {
            info: ApiKeyInfo {
                key_id: "key_0".into(),
                user_id: "alice".into(),
                prefix: secret.chars().take(PREFIX_LEN).collect(),
                name: None,
                created_at: "now".into(),
                last_used_at: None,
                revoked_at: None,
            },
            secret: secret.clone(),
        };
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains(&secret[PREFIX_LEN..]), "{debug}");
    }
}
