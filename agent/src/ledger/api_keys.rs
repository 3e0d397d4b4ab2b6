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

/// A key just created: the one time its secret exists outside the caller's hands.
#[derive(Debug)]
pub struct NewApiKey {
    pub info: ApiKeyInfo,
    pub secret: Zeroizing<String>,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], LedgerError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| LedgerError::Corrupt(format!("no randomness: {e}")))?;
    Ok(bytes)
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
        if let Some(n) = name.filter(|n| n.is_empty() || n.len() > KEY_NAME_LEN_MAX) {
            return Err(LedgerError::InvalidField {
                field: "key name",
                why: format!("{n:?} must be 1 to {KEY_NAME_LEN_MAX} bytes"),
            });
        }
        let mut raw = Zeroizing::new(random_bytes::<32>()?);
        let secret = Zeroizing::new(format!(
            "tg_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_slice())
        ));
        raw.iter_mut().for_each(|b| *b = 0);
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

    pub fn user_exists(&self, user_id: &str) -> Result<bool, LedgerError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM user_credits WHERE user_id = ?1")?
            .query_row([user_id], |_| Ok(()))
            .optional()?
            .is_some())
    }
}
