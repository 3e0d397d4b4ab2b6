//! Storage of BYOK provider keys. Only ciphertext reaches this module: encryption, the envelope
//! and the master key live in `keys/`. This module keeps the rows and the vault's key id, and
//! re-encrypts every row in one transaction on rotation.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::types::Provider;
use super::{Ledger, LedgerError};

/// A provider key to store: already encrypted.
#[derive(Debug, Clone)]
pub struct NewProviderKey {
    pub user_id: String,
    pub provider: Provider,
    pub key_name: String,
    pub encrypted_key: Vec<u8>,
    pub key_last4: String,
    pub key_fingerprint: String,
    pub is_default: bool,
}

/// A provider key as listed: never the key, only its last four characters and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderKeyInfo {
    pub id: i64,
    pub user_id: String,
    pub provider: String,
    pub key_name: String,
    pub key_last4: String,
    pub key_fingerprint: String,
    pub is_default: bool,
    pub is_active: bool,
    pub last_used: Option<String>,
    pub total_requests: i64,
    pub created_at: String,
}

/// A stored ciphertext with what its associated data binds it to.
#[derive(Debug, Clone)]
pub struct SealedKey {
    pub id: i64,
    pub user_id: String,
    pub provider: String,
    pub key_name: String,
    pub encrypted_key: Vec<u8>,
}

impl Ledger {
    /// The id of the master key the stored keys are encrypted under, once any key was stored.
    pub fn vault_key_id(&self) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT master_key_id FROM vault_meta WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores a key; a new default replaces the user's previous default for that provider, in
    /// the same transaction. The first key stored records the master key id.
    pub fn insert_provider_key(
        &mut self,
        key: &NewProviderKey,
        master_key_id: &str,
    ) -> Result<i64, LedgerError> {
        let now = super::clock::to_text(self.clock.now());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM user_credits WHERE user_id = ?1)",
            [&key.user_id],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(LedgerError::UnknownUser(key.user_id.clone()));
        }
        tx.execute(
            "INSERT INTO vault_meta (id, master_key_id, rotated_at) VALUES (1, ?1, ?2) ON CONFLICT (id) DO NOTHING",
            params![master_key_id, now],
        )?;
        // Checked inside the transaction: a rotation committed since the caller checked its key
        // must not let a row sealed under the old key in.
        let recorded: String = tx.query_row(
            "SELECT master_key_id FROM vault_meta WHERE id = 1",
            [],
            |r| r.get(0),
        )?;
        if recorded != master_key_id {
            return Err(LedgerError::InvalidField {
                field: "master key",
                why: format!(
                    "the key was sealed under master key {master_key_id}, but the vault now uses \
                     {recorded} (rotated meanwhile?); load the current master key and try again"
                ),
            });
        }
        if key.is_default {
            tx.execute(
                "UPDATE user_provider_keys SET is_default = 0, updated_at = ?3 \
                 WHERE user_id = ?1 AND provider = ?2 AND is_default = 1",
                params![key.user_id, key.provider.as_str(), now],
            )?;
        }
        let inserted = tx.execute(
            "INSERT INTO user_provider_keys (user_id, provider, encrypted_key, key_name, key_last4, \
             key_fingerprint, is_default, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
             ON CONFLICT (user_id, provider, key_name) DO NOTHING",
            params![
                key.user_id,
                key.provider.as_str(),
                key.encrypted_key,
                key.key_name,
                key.key_last4,
                key.key_fingerprint,
                key.is_default,
                now
            ],
        )?;
        if inserted == 0 {
            return Err(LedgerError::InvalidField {
                field: "key name",
                why: format!(
                    "{} already has a key named {:?} for {}; remove it first or pick another name",
                    key.user_id, key.key_name, key.provider
                ),
            });
        }
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    pub fn provider_keys(&self, user_id: &str) -> Result<Vec<ProviderKeyInfo>, LedgerError> {
        if !self.user_exists(user_id)? {
            return Err(LedgerError::UnknownUser(user_id.to_owned()));
        }
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, user_id, provider, key_name, key_last4, key_fingerprint, is_default, is_active, \
             last_used, total_requests, created_at FROM user_provider_keys WHERE user_id = ?1 \
             ORDER BY provider, key_name",
        )?;
        let rows = stmt.query_map([user_id], |r| {
            Ok(ProviderKeyInfo {
                id: r.get(0)?,
                user_id: r.get(1)?,
                provider: r.get(2)?,
                key_name: r.get(3)?,
                key_last4: r.get(4)?,
                key_fingerprint: r.get(5)?,
                is_default: r.get(6)?,
                is_active: r.get(7)?,
                last_used: r.get(8)?,
                total_requests: r.get(9)?,
                created_at: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The sealed key the user has as active default for `provider`, if any.
    pub fn default_provider_key(
        &self,
        user_id: &str,
        provider: Provider,
    ) -> Result<Option<SealedKey>, LedgerError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT id, user_id, provider, key_name, encrypted_key FROM user_provider_keys \
                 WHERE user_id = ?1 AND provider = ?2 AND is_default = 1 AND is_active = 1",
            )?
            .query_row(params![user_id, provider.as_str()], sealed_from_row)
            .optional()?)
    }

    /// Removes a key; false if there was none by that name.
    pub fn remove_provider_key(
        &mut self,
        user_id: &str,
        provider: Provider,
        key_name: &str,
    ) -> Result<bool, LedgerError> {
        let removed = self.conn().execute(
            "DELETE FROM user_provider_keys WHERE user_id = ?1 AND provider = ?2 AND key_name = ?3",
            params![user_id, provider.as_str(), key_name],
        )?;
        Ok(removed > 0)
    }

    /// Every sealed key, for re-encryption or verification.
    pub fn sealed_keys(&self) -> Result<Vec<SealedKey>, LedgerError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, user_id, provider, key_name, encrypted_key FROM user_provider_keys ORDER BY id",
        )?;
        let rows = stmt.query_map([], sealed_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replaces every key's ciphertext with `reseal(key)` and records the new master key id, all
    /// in one transaction: if any key fails, nothing changes.
    pub fn reseal_all<E>(
        &mut self,
        new_master_key_id: &str,
        mut reseal: impl FnMut(&SealedKey) -> Result<Vec<u8>, E>,
    ) -> Result<Result<usize, E>, LedgerError> {
        let now = super::clock::to_text(self.clock.now());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sealed: Vec<SealedKey> = {
            let mut stmt = tx.prepare(
                "SELECT id, user_id, provider, key_name, encrypted_key FROM user_provider_keys ORDER BY id",
            )?;
            let rows = stmt.query_map([], sealed_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        for key in &sealed {
            let ciphertext = match reseal(key) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            tx.execute(
                "UPDATE user_provider_keys SET encrypted_key = ?2, updated_at = ?3 WHERE id = ?1",
                params![key.id, ciphertext, now],
            )?;
        }
        tx.execute(
            "INSERT INTO vault_meta (id, master_key_id, rotated_at) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET master_key_id = excluded.master_key_id, rotated_at = excluded.rotated_at",
            params![new_master_key_id, now],
        )?;
        tx.commit()?;
        Ok(Ok(sealed.len()))
    }
}

fn sealed_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SealedKey> {
    Ok(SealedKey {
        id: r.get(0)?,
        user_id: r.get(1)?,
        provider: r.get(2)?,
        key_name: r.get(3)?,
        encrypted_key: r.get(4)?,
    })
}
