//! The vault's operations over the ledger: store, list, open and remove users' provider keys,
//! load the master key (checked against the database), and rotate it.
//!
//! Guarantees:
//! - A provider key reaches the database only sealed ([`super::crypto`]), bound to its row's
//!   (user, provider, key name). In the clear the row keeps only the last four characters (for
//!   keys of at least 12 characters) and `sha256:` + 16 hex digits of the key's SHA-256.
//! - Plaintext keys travel as [`Zeroizing`] values and are wiped when dropped; no error message
//!   contains a key, plaintext or master.
//! - The database records the id of the master key its keys are sealed under; a different key is
//!   refused up front with [`VaultError::WrongMasterKey`] naming both (public) ids, never used to
//!   seal a row the right key could not open.
//! - Rotation re-seals every row in one transaction: if any row fails to open, nothing changes.
//! - File rotation survives a crash at any point: the new key is written and synced to
//!   `master.key.new` before the database switches, and [`load_master`] picks whichever of the two
//!   files the database names, finishing the rename if it was the new one. Rotations and that
//!   recovery hold an exclusive lock on `<data_dir>/master.key.lock`, so two processes never race
//!   on the files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::crypto::{self, Binding, CryptoError, MasterKey};
use super::master::{
    self, KeySource, MASTER_KEY_ENV, NEW_MASTER_KEY_ENV, key_file_path, new_key_file_path,
    read_key_file,
};
use crate::ledger::provider_keys::{NewProviderKey, ProviderKeyInfo, SealedKey};
use crate::ledger::{Ledger, LedgerError, Provider};

/// Longest provider key accepted, in bytes (real keys are well under 300).
pub const SECRET_LEN_MAX: usize = 4096;
/// Longest key name, in characters (the schema's CHECK says the same).
pub const KEY_NAME_LEN_MAX: usize = 64;
/// Keys shorter than this keep no last four characters in the clear: four would be too much of them.
pub const LAST4_SECRET_LEN_MIN: usize = 12;
/// The lock file serializing rotations and rotation recovery.
pub const LOCK_FILE: &str = "master.key.lock";

/// Every way a vault operation fails. Messages name what was wrong and never contain a key.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "no master key: set {MASTER_KEY_ENV} or run `tollgate init` (there is no {})",
        .path.display()
    )]
    NoMasterKey { path: PathBuf },
    #[error("{origin} does not hold a usable master key: {why}")]
    BadMasterKey { origin: String, why: String },
    #[error(
        "master key file {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})",
        path = .path.display()
    )]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("{action} {}: {source}", .path.display())]
    KeyFile {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "wrong master key: this database's provider keys are encrypted under master key {expected}, \
         but the key given is {given}; use the master key this database was set up with"
    )]
    WrongMasterKey { given: String, expected: String },
    #[error("stored key #{id} ({user_id}, {provider}, {key_name:?}): {source}")]
    CannotOpen {
        id: i64,
        user_id: String,
        provider: String,
        key_name: String,
        source: CryptoError,
    },
    #[error("stored key #{id} decrypted to bytes that are not UTF-8 text")]
    NotText { id: i64 },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("invalid provider key: {0}")]
    InvalidSecret(String),
    #[error("invalid key name {name:?}: {why}")]
    InvalidKeyName { name: String, why: &'static str },
    #[error("{user_id} has no {provider} key named {key_name:?}")]
    NoSuchKey {
        user_id: String,
        provider: Provider,
        key_name: String,
    },
    #[error("the new master key is the one in use (id {key_id}); generate a different one")]
    SameKey { key_id: String },
    #[error(
        "the database is already encrypted under the new master key {key_id}: set \
         {MASTER_KEY_ENV} to it and unset {NEW_MASTER_KEY_ENV}"
    )]
    AlreadyRotated { key_id: String },
    #[error(
        "the master key comes from {MASTER_KEY_ENV}, so tollgate cannot write the new one: set \
         {NEW_MASTER_KEY_ENV} to a new key (base64 of 32 random bytes, e.g. `openssl rand -base64 32`)"
    )]
    NewKeyMissing,
    #[error(
        "{NEW_MASTER_KEY_ENV} is set but the master key comes from the key file {}; unset \
         {NEW_MASTER_KEY_ENV} (file rotation generates the new key) or set {MASTER_KEY_ENV} too",
        .path.display()
    )]
    NewKeyUnused { path: PathBuf },
    #[error(
        "the rotation committed, but {} no longer holds the new key {key_id}; do not delete the \
         database's key files, restore master.key.new from where it went",
        .path.display()
    )]
    NewKeyFileLost { path: PathBuf, key_id: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl VaultError {
    pub(crate) fn key_file(path: &Path, action: &'static str, source: io::Error) -> VaultError {
        VaultError::KeyFile {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// Stored keys re-sealed under the new master key.
    pub keys_resealed: usize,
    pub old_key_id: String,
    pub new_key_id: String,
    /// Where the new key now lives: the key file, or (env rotation) the operator's hands.
    pub new_key_source: KeySource,
}

impl RotationReport {
    /// What the operator must do now, if anything: after an env rotation the running agents
    /// cannot open stored keys until `TOLLGATE_MASTER_KEY` holds the new key.
    pub fn operator_action(&self) -> Option<String> {
        match self.new_key_source {
            KeySource::File(_) => None,
            KeySource::Env => Some(format!(
                "set {MASTER_KEY_ENV} to the value of {NEW_MASTER_KEY_ENV} (key id {}) wherever \
                 tollgate runs, then unset {NEW_MASTER_KEY_ENV}; until then stored keys cannot be opened",
                self.new_key_id
            )),
        }
    }
}

/// The binding of a stored row.
fn binding(sealed: &SealedKey) -> Binding<'_> {
    Binding::new(&sealed.user_id, &sealed.provider, &sealed.key_name)
}

fn cannot_open(sealed: &SealedKey, source: CryptoError) -> VaultError {
    VaultError::CannotOpen {
        id: sealed.id,
        user_id: sealed.user_id.clone(),
        provider: sealed.provider.clone(),
        key_name: sealed.key_name.clone(),
        source,
    }
}

/// Refuses `master` if the database records another master key. A database with no key stored
/// yet accepts any key (the first stored key records it).
pub fn check_master(ledger: &Ledger, master: &MasterKey) -> Result<(), VaultError> {
    check_id(master, ledger.vault_key_id()?.as_deref())
}

fn check_id(master: &MasterKey, expected: Option<&str>) -> Result<(), VaultError> {
    match expected {
        Some(expected) if expected != master.key_id() => Err(VaultError::WrongMasterKey {
            given: master.key_id(),
            expected: expected.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Checks a provider key's form; the messages describe, never quote.
pub fn validate_secret(secret: &str) -> Result<(), VaultError> {
    if secret.is_empty() {
        return Err(VaultError::InvalidSecret("it is empty".to_owned()));
    }
    if secret.len() > SECRET_LEN_MAX {
        return Err(VaultError::InvalidSecret(format!(
            "it is {} bytes, the limit is {SECRET_LEN_MAX}",
            secret.len()
        )));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(VaultError::InvalidSecret(
            "it contains a space, tab, line break or other control character; paste only the key"
                .to_owned(),
        ));
    }
    Ok(())
}

pub fn validate_key_name(name: &str) -> Result<(), VaultError> {
    let invalid = |why| VaultError::InvalidKeyName {
        name: name.to_owned(),
        why,
    };
    let chars = name.chars().count();
    if chars == 0 {
        return Err(invalid("it is empty"));
    }
    if chars > KEY_NAME_LEN_MAX {
        return Err(invalid("it is longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains a control character"));
    }
    if name.trim() != name {
        return Err(invalid("it starts or ends with whitespace"));
    }
    Ok(())
}

/// The last four characters of a key, or nothing for a key too short to show any of.
fn last4(secret: &str) -> String {
    let count = secret.chars().count();
    if count < LAST4_SECRET_LEN_MIN {
        return String::new();
    }
    secret.chars().skip(count - 4).collect()
}

/// `sha256:` and the first 16 hex digits of the key's SHA-256, to recognise a key in listings.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..8]))
}

/// Stores `secret` as `user_id`'s `provider` key named `key_name`. A new default replaces the
/// user's previous default for that provider. The plaintext is wiped before returning.
pub fn add_key(
    ledger: &mut Ledger,
    master: &MasterKey,
    user_id: &str,
    provider: Provider,
    key_name: &str,
    secret: Zeroizing<String>,
    is_default: bool,
) -> Result<ProviderKeyInfo, VaultError> {
    validate_secret(&secret)?;
    validate_key_name(key_name)?;
    crate::ledger::validate_user_id(user_id)?;
    check_master(ledger, master)?;
    let binding = Binding::new(user_id, provider.as_str(), key_name);
    let new = NewProviderKey {
        user_id: user_id.to_owned(),
        provider,
        key_name: key_name.to_owned(),
        encrypted_key: crypto::seal(master, &binding, secret.as_bytes())?,
        key_last4: last4(&secret),
        key_fingerprint: fingerprint(&secret),
        is_default,
    };
    drop(secret);
    let id = ledger.insert_provider_key(&new, &master.key_id())?;
    ledger
        .provider_keys(user_id)?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| {
            VaultError::Ledger(LedgerError::Corrupt(format!(
                "provider key #{id} vanished right after it was stored"
            )))
        })
}

/// A user's stored keys, as listed: never the key.
pub fn list_keys(ledger: &Ledger, user_id: &str) -> Result<Vec<ProviderKeyInfo>, VaultError> {
    Ok(ledger.provider_keys(user_id)?)
}

/// The user's active default key for `provider`, decrypted, with its row id (for usage records);
/// `None` if they have none.
pub fn open_default(
    ledger: &Ledger,
    master: &MasterKey,
    user_id: &str,
    provider: Provider,
) -> Result<Option<(i64, Zeroizing<String>)>, VaultError> {
    let Some(sealed) = ledger.default_provider_key(user_id, provider)? else {
        return Ok(None);
    };
    let secret = open_sealed(ledger, master, &sealed)?;
    Ok(Some((sealed.id, secret)))
}

/// Decrypts one stored row. A failure is explained as a wrong master key when the database says
/// so (checked only then, to keep the gateway's path to one query).
fn open_sealed(
    ledger: &Ledger,
    master: &MasterKey,
    sealed: &SealedKey,
) -> Result<Zeroizing<String>, VaultError> {
    let mut plaintext = match crypto::open(master, &binding(sealed), &sealed.encrypted_key) {
        Ok(plaintext) => plaintext,
        Err(CryptoError::Decrypt) => {
            check_master(ledger, master)?;
            return Err(cannot_open(sealed, CryptoError::Decrypt));
        }
        Err(e) => return Err(cannot_open(sealed, e)),
    };
    match String::from_utf8(std::mem::take(&mut *plaintext)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(VaultError::NotText { id: sealed.id })
        }
    }
}

/// Removes a stored key.
pub fn remove_key(
    ledger: &mut Ledger,
    user_id: &str,
    provider: Provider,
    key_name: &str,
) -> Result<(), VaultError> {
    if ledger.remove_provider_key(user_id, provider, key_name)? {
        Ok(())
    } else {
        Err(VaultError::NoSuchKey {
            user_id: user_id.to_owned(),
            provider,
            key_name: key_name.to_owned(),
        })
    }
}

/// Opens every stored key with `master` (and discards the plaintext): proof that all are readable.
/// Returns how many there are.
pub fn check_all(ledger: &Ledger, master: &MasterKey) -> Result<usize, VaultError> {
    check_master(ledger, master)?;
    let sealed = ledger.sealed_keys()?;
    for key in &sealed {
        crypto::open(master, &binding(key), &key.encrypted_key).map_err(|e| cannot_open(key, e))?;
    }
    Ok(sealed.len())
}

/// Re-seals every stored key from `old` to `new` and records `new`'s id, in one transaction: if
/// any key fails to open, nothing changes. Returns how many keys were re-sealed.
pub fn rotate_master(
    ledger: &mut Ledger,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<usize, VaultError> {
    if old.key_id() == new.key_id() {
        return Err(VaultError::SameKey {
            key_id: old.key_id(),
        });
    }
    check_master(ledger, old)?;
    ledger.reseal_all(&new.key_id(), |key| {
        let binding = binding(key);
        let plaintext =
            crypto::open(old, &binding, &key.encrypted_key).map_err(|e| cannot_open(key, e))?;
        crypto::seal(new, &binding, &plaintext).map_err(VaultError::Crypto)
    })?
}

/// The master key to use with `ledger`, checked against the key id the database records.
///
/// `env_value` is the value of `TOLLGATE_MASTER_KEY` if set; it wins over the files. Otherwise
/// the key file is used, and if a file rotation was interrupted after the database switched to
/// the new key (both `master.key` and `master.key.new` present, the database naming the new one),
/// the new key is used and the rename finished.
pub fn load_master(
    ledger: &Ledger,
    data_dir: &Path,
    env_value: Option<Zeroizing<String>>,
) -> Result<(MasterKey, KeySource), VaultError> {
    if env_value.is_some() {
        let (key, source) = MasterKey::resolve(data_dir, env_value)?;
        check_master(ledger, &key)?;
        return Ok((key, source));
    }
    // The common case needs no lock: the key file matches the database.
    let path = key_file_path(data_dir);
    let current = read_key_file(&path)?;
    let expected = ledger.vault_key_id()?;
    match (current, expected) {
        (Some(key), None) => Ok((key, KeySource::File(path))),
        (Some(key), Some(expected)) if key.key_id() == expected => Ok((key, KeySource::File(path))),
        (None, _) if !data_dir.is_dir() => Err(VaultError::NoMasterKey { path }),
        // A mismatch may be a rotation in progress or interrupted: look again under its lock.
        _ => {
            let _lock = RotationLock::acquire(data_dir)?;
            load_from_files_locked(ledger, data_dir)
        }
    }
}

/// [`load_master`]'s file path with the rotation lock held: reads everything afresh and finishes
/// an interrupted rotation's rename.
fn load_from_files_locked(
    ledger: &Ledger,
    data_dir: &Path,
) -> Result<(MasterKey, KeySource), VaultError> {
    let path = key_file_path(data_dir);
    let current = read_key_file(&path)?;
    let Some(expected) = ledger.vault_key_id()? else {
        // Nothing was ever sealed, so no rotation committed: a master.key.new is stale.
        return match current {
            Some(key) => Ok((key, KeySource::File(path))),
            None => Err(VaultError::NoMasterKey { path }),
        };
    };
    let current = match current {
        Some(key) if key.key_id() == expected => return Ok((key, KeySource::File(path))),
        other => other,
    };
    let new_path = new_key_file_path(data_dir);
    match read_key_file(&new_path)? {
        Some(new) if new.key_id() == expected => {
            // The rotation committed but did not rename: finish it.
            std::fs::rename(&new_path, &path)
                .map_err(|e| VaultError::key_file(&new_path, "renaming", e))?;
            master::sync_parent(&path)?;
            Ok((new, KeySource::File(path)))
        }
        _ => match current {
            Some(key) => Err(VaultError::WrongMasterKey {
                given: key.key_id(),
                expected,
            }),
            None => Err(VaultError::NoMasterKey { path }),
        },
    }
}

/// Rotates, choosing by where the current key comes from: `env_current` (the value of
/// `TOLLGATE_MASTER_KEY`) set means env rotation to `env_new` (`TOLLGATE_NEW_MASTER_KEY`),
/// otherwise file rotation ([`rotate_key_file`]).
pub fn rotate(
    ledger: &mut Ledger,
    data_dir: &Path,
    env_current: Option<Zeroizing<String>>,
    env_new: Option<Zeroizing<String>>,
) -> Result<RotationReport, VaultError> {
    match (env_current, env_new) {
        (Some(current), Some(new)) => rotate_env(ledger, &current, &new),
        (Some(_), None) => Err(VaultError::NewKeyMissing),
        (None, Some(_)) => Err(VaultError::NewKeyUnused {
            path: key_file_path(data_dir),
        }),
        (None, None) => rotate_key_file(ledger, data_dir),
    }
}

/// Env rotation: re-seals every key from `current` to `new` (both base64, from the env). The
/// operator must then set `TOLLGATE_MASTER_KEY` to `new` (see
/// [`RotationReport::operator_action`]).
pub fn rotate_env(
    ledger: &mut Ledger,
    current: &str,
    new: &str,
) -> Result<RotationReport, VaultError> {
    let old = MasterKey::from_base64(current, MASTER_KEY_ENV)?;
    let new = MasterKey::from_base64(new, NEW_MASTER_KEY_ENV)?;
    if old.key_id() == new.key_id() {
        return Err(VaultError::SameKey {
            key_id: old.key_id(),
        });
    }
    if ledger.vault_key_id()?.as_deref() == Some(new.key_id().as_str()) {
        return Err(VaultError::AlreadyRotated {
            key_id: new.key_id(),
        });
    }
    let keys_resealed = rotate_master(ledger, &old, &new)?;
    Ok(RotationReport {
        keys_resealed,
        old_key_id: old.key_id(),
        new_key_id: new.key_id(),
        new_key_source: KeySource::Env,
    })
}

/// File rotation: generates a new key, writes it to `master.key.new` (0600, synced), re-seals
/// every stored key in one transaction, then renames `master.key.new` over `master.key` and syncs
/// the directory. A crash anywhere leaves a state [`load_master`] resolves.
pub fn rotate_key_file(ledger: &mut Ledger, data_dir: &Path) -> Result<RotationReport, VaultError> {
    let _lock = RotationLock::acquire(data_dir)?;
    let (old, _) = load_from_files_locked(ledger, data_dir)?;
    let path = key_file_path(data_dir);
    let new_path = new_key_file_path(data_dir);
    // Under the lock and after recovery, a master.key.new is left from a rotation that never
    // committed: its key sealed nothing.
    match std::fs::remove_file(&new_path) {
        Ok(()) => master::sync_parent(&new_path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(VaultError::key_file(&new_path, "removing the stale", e)),
    }
    let new = MasterKey::generate()?;
    if !master::write_key_file(&new_path, &new)? {
        return Err(VaultError::key_file(
            &new_path,
            "creating",
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    let keys_resealed = match rotate_master(ledger, &old, &new) {
        Ok(n) => n,
        Err(e) => {
            // Remove the unused new key unless the database did switch to it after all.
            if matches!(ledger.vault_key_id(), Ok(id) if id.as_deref() != Some(new.key_id().as_str()))
            {
                let _ = std::fs::remove_file(&new_path);
            }
            return Err(e);
        }
    };
    // The database now needs the new key: make sure the file we rename is the one we wrote.
    match read_key_file(&new_path) {
        Ok(Some(k)) if k.key_id() == new.key_id() => {}
        _ => {
            return Err(VaultError::NewKeyFileLost {
                path: new_path,
                key_id: new.key_id(),
            });
        }
    }
    std::fs::rename(&new_path, &path)
        .map_err(|e| VaultError::key_file(&new_path, "renaming", e))?;
    master::sync_parent(&path)?;
    Ok(RotationReport {
        keys_resealed,
        old_key_id: old.key_id(),
        new_key_id: new.key_id(),
        new_key_source: KeySource::File(path),
    })
}

/// An exclusive lock on `<data_dir>/master.key.lock`, released on drop (closing the file).
#[derive(Debug)]
struct RotationLock {
    _file: File,
}

impl RotationLock {
    fn acquire(data_dir: &Path) -> Result<RotationLock, VaultError> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| VaultError::key_file(&path, "opening the lock file", e))?;
        file.lock()
            .map_err(|e| VaultError::key_file(&path, "locking", e))?;
        Ok(RotationLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_validated_without_being_echoed() {
        let secret = "sk-ECHO-CANARY-0123456789";
        assert!(validate_secret(secret).is_ok());
        for (bad, expected) in [
            (String::new(), "empty"),
            (format!("{secret} "), "space"),
            (format!("{secret}\n"), "line break"),
            ("sk-ECHO\tCANARY".to_owned(), "tab"),
            ("sk-ECHO\u{7}CANARY".to_owned(), "control"),
            ("x".repeat(SECRET_LEN_MAX + 1), "4097 bytes"),
        ] {
            let message = validate_secret(&bad).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("ECHO"), "{message}");
        }
        assert!(validate_secret(&"x".repeat(SECRET_LEN_MAX)).is_ok());
    }

    #[test]
    fn key_names_are_validated() {
        assert!(validate_key_name("default").is_ok());
        assert!(validate_key_name(&"é".repeat(64)).is_ok());
        for bad in [
            String::new(),
            "é".repeat(65),
            "a\nb".to_owned(),
            " padded".to_owned(),
        ] {
            assert!(
                matches!(
                    validate_key_name(&bad),
                    Err(VaultError::InvalidKeyName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn last4_and_fingerprint() {
        assert_eq!(last4("sk-abcdefgh1234"), "1234");
        assert_eq!(last4("short-key"), "");
        assert_eq!(last4("ééééééééééééwxyz"), "wxyz");
        let print = fingerprint("sk-abcdefgh1234");
        assert!(print.starts_with("sha256:"));
        assert_eq!(print.len(), "sha256:".len() + 16);
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "sha256:ba7816bf8f01cfea");
    }

    #[test]
    fn the_report_tells_an_env_operator_what_to_do() {
        let report = RotationReport {
            keys_resealed: 2,
            old_key_id: "aaaa".to_owned(),
            new_key_id: "bbbb".to_owned(),
            new_key_source: KeySource::Env,
        };
        let action = report.operator_action().unwrap();
        assert!(
            action.contains(MASTER_KEY_ENV) && action.contains("bbbb"),
            "{action}"
        );
        let file = RotationReport {
            new_key_source: KeySource::File(PathBuf::from("/x/master.key")),
            ..report
        };
        assert_eq!(file.operator_action(), None);
    }
}
