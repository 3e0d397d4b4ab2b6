//! API keys tollgate issues to users: stored only as a SHA-256 of the key, shown once.
//!
//! A key is `tg_` followed by 43 base64url characters (32 random bytes), so a fast hash is as
//! strong as a slow one here: there is nothing to guess. Listings show the public id and prefix.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use tollgate_schema::api_key;
use tollgate_schema::wire::ApiKeySpec;
use zeroize::Zeroizing;

use super::session::Session;
use super::{Ledger, LedgerError};

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
    /// `local` (made on this agent) or `central` (made by the sync server, which governs it).
    pub origin: String,
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

/// The SHA-256 of a key, the only form stored.
pub fn hash_key(secret: &str) -> [u8; 32] {
    api_key::hash(secret)
}

/// An RFC 3339 time from the wire, in this database's stored form.
fn stored_time(field: &'static str, text: &str) -> Result<String, LedgerError> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| LedgerError::InvalidField {
            field,
            why: format!("{text:?} is not an RFC 3339 time: {e}"),
        })?;
    Ok(super::clock::to_text(at))
}

fn no_randomness(e: api_key::NoRandomness) -> LedgerError {
    LedgerError::Corrupt(e.to_string())
}

impl Ledger {
    pub fn create_api_key(
        &mut self,
        user_id: &str,
        name: Option<&str>,
    ) -> Result<NewApiKey, LedgerError> {
        if let Some(n) = name {
            api_key::check_name(n).map_err(|why| LedgerError::InvalidField {
                field: "key name",
                why,
            })?;
        }
        let secret = api_key::new_secret().map_err(no_randomness)?;
        let key_id = api_key::new_key_id().map_err(no_randomness)?;
        let prefix = api_key::prefix(&secret);
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
            origin: "local".to_owned(),
        };
        Ok(NewApiKey { info, secret })
    }

    pub fn api_keys(&self, user_id: &str) -> Result<Vec<ApiKeyInfo>, LedgerError> {
        if !self.user_exists(user_id)? {
            return Err(LedgerError::UnknownUser(user_id.to_owned()));
        }
        let mut stmt = self.conn().prepare_cached(
            "SELECT key_id, user_id, prefix, name, created_at, last_used_at, revoked_at, origin \
             FROM api_keys WHERE user_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([user_id], |r| {
            Ok(ApiKeyInfo {
                key_id: r.get("key_id")?,
                user_id: r.get("user_id")?,
                prefix: r.get("prefix")?,
                name: r.get("name")?,
                created_at: r.get("created_at")?,
                last_used_at: r.get("last_used_at")?,
                revoked_at: r.get("revoked_at")?,
                origin: r.get("origin")?,
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

    /// Who made a key: `local` or `central`; `None` if there is no such key.
    pub fn api_key_origin(&self, key_id: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT origin FROM api_keys WHERE key_id = ?1")?
            .query_row([key_id], |r| r.get(0))
            .optional()?)
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

impl Session<'_> {
    /// Stores a key the sync server made (or revoked) for a user this agent holds: its hash
    /// only, origin `central`. The whole state, so applying it again is harmless; a revoked key
    /// stays revoked; a key id or hash this agent already holds for another key is refused.
    pub(super) fn upsert_central_api_key(&mut self, key: &ApiKeySpec) -> Result<(), LedgerError> {
        let invalid =
            |field: &'static str| move |why: String| LedgerError::InvalidField { field, why };
        api_key::check_key_id(&key.key_id).map_err(invalid("key id"))?;
        if let Some(name) = &key.name {
            api_key::check_name(name).map_err(invalid("key name"))?;
        }
        let hash = tollgate_schema::wire::decode_hash(&key.key_hash).ok_or_else(|| {
            LedgerError::InvalidField {
                field: "key hash",
                why: "is not 64 lower-case hex digits".to_owned(),
            }
        })?;
        if !key.prefix.starts_with(api_key::KEY_TAG) || key.prefix.len() > api_key::PREFIX_LEN {
            return Err(LedgerError::InvalidField {
                field: "key prefix",
                why: format!("{:?} is not the start of a tollgate key", key.prefix),
            });
        }
        let created_at = stored_time("key created_at", &key.created_at)?;
        let revoked_at = key
            .revoked_at
            .as_deref()
            .map(|t| stored_time("key revoked_at", t))
            .transpose()?;
        if !self.user_exists(&key.user_id)? {
            return Err(LedgerError::UnknownUser(key.user_id.clone()));
        }
        let changed = self.conn.execute(
            "INSERT INTO api_keys (key_id, user_id, key_hash, prefix, name, created_at, revoked_at, \
             origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'central') \
             ON CONFLICT (key_id) DO UPDATE SET name = excluded.name, \
             revoked_at = COALESCE(api_keys.revoked_at, excluded.revoked_at) \
             WHERE api_keys.origin = 'central' AND api_keys.user_id = excluded.user_id \
             AND api_keys.key_hash = excluded.key_hash",
            params![
                key.key_id,
                key.user_id,
                hash.as_slice(),
                key.prefix,
                key.name,
                created_at,
                revoked_at
            ],
        )?;
        if changed == 0 {
            return Err(LedgerError::InvalidField {
                field: "key id",
                why: format!("{} names another key on this agent", key.key_id),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_a_new_key() {
        let secret = api_key::new_secret().unwrap();
        let key = NewApiKey {
            info: ApiKeyInfo {
                key_id: "key_0".into(),
                user_id: "alice".into(),
                prefix: api_key::prefix(&secret),
                name: None,
                created_at: "now".into(),
                last_used_at: None,
                revoked_at: None,
                origin: "local".into(),
            },
            secret: secret.clone(),
        };
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains(&secret[api_key::PREFIX_LEN..]), "{debug}");
    }
}
