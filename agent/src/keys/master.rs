//! Where the master key comes from, and the key file on disk.
//!
//! Precedence: the value of `TOLLGATE_MASTER_KEY` (standard base64 of exactly 32 bytes), else the
//! file `<data_dir>/master.key` (the same base64 and a newline). Nothing here reads the process
//! environment: the command layer reads the variable and passes its value in, so tests need no
//! `set_var` and the library has one source of truth per call.
//!
//! Guarantees:
//! - No error message contains key material: a bad key is described by its length or form only
//!   (base64's own errors, which quote the offending byte, are dropped).
//! - A key file readable or writable by group or others is refused, with the `chmod` that fixes it.
//! - [`init_key_file`] creates the file with mode 0600 (never wider, whatever the umask), writes
//!   and syncs it, syncs the directory, and never replaces an existing file.
//! - Buffers that held the key's text are [`Zeroizing`].
//!
//! [`MasterKey::resolve`] does not consult the database; the vault's `load_master` builds on it to
//! check the key against the database and to finish an interrupted rotation.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use zeroize::Zeroizing;

use super::crypto::{MASTER_KEY_LEN, MasterKey};
use super::vault::VaultError;

/// The environment variable holding the master key (read by the command layer, not here).
pub const MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";
/// The environment variable holding the new key for a rotation when the key comes from the env.
pub const NEW_MASTER_KEY_ENV: &str = "TOLLGATE_NEW_MASTER_KEY";
/// The key file's name inside the data dir.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The file a rotation writes the new key to before the database switches to it.
pub const NEW_MASTER_KEY_FILE: &str = "master.key.new";
/// Length of a key in standard base64 (32 bytes, padded).
pub const MASTER_KEY_BASE64_LEN: usize = 44;
/// Largest key file read: a key and some whitespace; anything bigger is not a key file.
const KEY_FILE_LEN_MAX: usize = 256;

/// Where the master key in use came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The `TOLLGATE_MASTER_KEY` environment variable.
    Env,
    /// The key file at this path.
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "the environment variable {MASTER_KEY_ENV}"),
            KeySource::File(path) => write!(f, "the key file {}", path.display()),
        }
    }
}

/// What [`init_key_file`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InitOutcome {
    /// A new key was generated and written here.
    Created(PathBuf),
    /// A key file was already there; it was left untouched.
    Existed(PathBuf),
}

pub fn key_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MASTER_KEY_FILE)
}

pub fn new_key_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(NEW_MASTER_KEY_FILE)
}

impl MasterKey {
    /// The master key by precedence: `env_value` (the value of `TOLLGATE_MASTER_KEY`, if set),
    /// else `<data_dir>/master.key`. Does not check the key against the database; the vault's
    /// `load_master` does, and recovers from an interrupted rotation.
    pub fn resolve(
        data_dir: &Path,
        env_value: Option<Zeroizing<String>>,
    ) -> Result<(MasterKey, KeySource), VaultError> {
        if let Some(value) = env_value {
            let key = MasterKey::from_base64(&value, MASTER_KEY_ENV)?;
            return Ok((key, KeySource::Env));
        }
        let path = key_file_path(data_dir);
        match read_key_file(&path)? {
            Some(key) => Ok((key, KeySource::File(path))),
            None => Err(VaultError::NoMasterKey { path }),
        }
    }

    /// Parses standard base64 of exactly 32 bytes (surrounding whitespace ignored). `origin` names
    /// where the text came from, for the error message.
    pub fn from_base64(text: &str, origin: &str) -> Result<MasterKey, VaultError> {
        let bad = |why: String| VaultError::BadMasterKey {
            origin: origin.to_owned(),
            why,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("it is empty".to_owned()));
        }
        if text.len() > 2 * MASTER_KEY_BASE64_LEN {
            return Err(bad(format!(
                "it is {} characters long; a master key is {MASTER_KEY_BASE64_LEN} characters of base64",
                text.len()
            )));
        }
        // Large enough for any text that passed the length check (3 bytes per 4 characters).
        let mut buf = Zeroizing::new([0u8; 3 * MASTER_KEY_BASE64_LEN / 2]);
        let len = STANDARD.decode_slice(text, &mut buf[..]).map_err(|_| {
            bad(format!(
                "it is not standard base64 (expected {MASTER_KEY_BASE64_LEN} characters of A-Z a-z 0-9 + / ending in `=`)"
            ))
        })?;
        MasterKey::from_slice(&buf[..len]).ok_or_else(|| {
            bad(format!(
                "it decodes to {len} bytes; a master key is exactly {MASTER_KEY_LEN} bytes"
            ))
        })
    }

    /// The key as standard base64, for the key file or for an operator to put in the env.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(MASTER_KEY_BASE64_LEN));
        STANDARD.encode_string(self.expose(), &mut text);
        text
    }
}

/// Reads a key file; `Ok(None)` if there is none. Refuses a file group or others can access.
pub fn read_key_file(path: &Path) -> Result<Option<MasterKey>, VaultError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(VaultError::key_file(path, "opening", e)),
    };
    // Checked on the open file, so the file read is the file checked.
    let meta = file
        .metadata()
        .map_err(|e| VaultError::key_file(path, "inspecting", e))?;
    let origin = format!("master key file {}", path.display());
    if !meta.is_file() {
        return Err(VaultError::BadMasterKey {
            origin,
            why: "it is not a regular file".to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN_MAX + 1));
    (&mut file)
        .take(KEY_FILE_LEN_MAX as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| VaultError::key_file(path, "reading", e))?;
    if text.len() > KEY_FILE_LEN_MAX {
        return Err(VaultError::BadMasterKey {
            origin,
            why: format!(
                "it is larger than {KEY_FILE_LEN_MAX} bytes; a key file holds one line of base64"
            ),
        });
    }
    let text = std::str::from_utf8(&text).map_err(|_| VaultError::BadMasterKey {
        origin: origin.clone(),
        why: "it is not text".to_owned(),
    })?;
    MasterKey::from_base64(text, &origin).map(Some)
}

/// Creates `<data_dir>/master.key` with a fresh key, mode 0600, durably. An existing file is left
/// untouched ([`InitOutcome::Existed`]), whatever it holds.
pub fn init_key_file(data_dir: &Path) -> Result<InitOutcome, VaultError> {
    let path = key_file_path(data_dir);
    if path.exists() {
        return Ok(InitOutcome::Existed(path));
    }
    let key = MasterKey::generate()?;
    if write_key_file(&path, &key)? {
        Ok(InitOutcome::Created(path))
    } else {
        Ok(InitOutcome::Existed(path))
    }
}

/// Writes `key` to a new file at `path` (mode 0600), syncs it and its directory. Returns false,
/// writing nothing, if the file already exists. A failed write removes the partial file.
pub(crate) fn write_key_file(path: &Path, key: &MasterKey) -> Result<bool, VaultError> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(VaultError::key_file(path, "creating", e)),
    };
    let mut line = key.to_base64();
    line.push('\n');
    let written = file
        .write_all(line.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // Best effort: a half-written key file must not be mistaken for a key later.
        let _ = std::fs::remove_file(path);
        return Err(VaultError::key_file(path, "writing", e));
    }
    sync_parent(path)?;
    Ok(true)
}

/// Syncs the directory holding `path`, so a create, rename or removal in it survives a crash.
pub(crate) fn sync_parent(path: &Path) -> Result<(), VaultError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| VaultError::key_file(dir, "syncing the directory", e))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tempfile::TempDir;

    use super::*;

    fn env(text: &str) -> Option<Zeroizing<String>> {
        Some(Zeroizing::new(text.to_owned()))
    }

    fn write_mode(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn env_value_wins_over_the_file() {
        let dir = TempDir::new().unwrap();
        init_key_file(dir.path()).unwrap();
        let (key, source) = MasterKey::resolve(dir.path(), env(KEY_A)).unwrap();
        assert_eq!(source, KeySource::Env);
        let expected: Vec<u8> = (0..32).collect();
        assert_eq!(&key.expose()[..], &expected[..]);
        assert_eq!(&*key.to_base64(), KEY_A);
    }

    #[test]
    fn the_file_is_used_without_env() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        write_mode(&path, &format!("{KEY_A}\n"), 0o600);
        let (key, source) = MasterKey::resolve(dir.path(), None).unwrap();
        assert_eq!(source, KeySource::File(path));
        assert_eq!(&*key.to_base64(), KEY_A);
    }

    #[test]
    fn no_key_anywhere_says_what_to_do() {
        let dir = TempDir::new().unwrap();
        let err = MasterKey::resolve(dir.path(), None).unwrap_err();
        assert!(matches!(err, VaultError::NoMasterKey { .. }));
        let message = err.to_string();
        assert!(message.contains("TOLLGATE_MASTER_KEY"), "{message}");
        assert!(message.contains("tollgate init"), "{message}");
    }

    #[test]
    fn bad_env_values_are_named_without_echoing_them() {
        let dir = TempDir::new().unwrap();
        let short = STANDARD.encode([9u8; 31]);
        let long = STANDARD.encode([9u8; 33]);
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            (
                "not*base64*at*all*not*base64*at*all*not*base",
                "not standard base64",
            ),
            (short.as_str(), "decodes to 31 bytes"),
            (long.as_str(), "decodes to 33 bytes"),
            (&KEY_A[..43], "not standard base64"),
        ];
        for (value, expected) in cases {
            let err = MasterKey::resolve(dir.path(), env(value)).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, VaultError::BadMasterKey { .. }), "{message}");
            assert!(message.contains(expected), "{value:?}: {message}");
            assert!(message.contains(MASTER_KEY_ENV), "{message}");
            if value.trim().len() > 3 {
                assert!(!message.contains(value.trim()), "{message}");
            }
        }
        let huge = "A".repeat(1000);
        let message = MasterKey::from_base64(&huge, "x").unwrap_err().to_string();
        assert!(message.contains("1000 characters"), "{message}");
        assert!(!message.contains(&huge[..50]), "{message}");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            write_mode(&path, KEY_A, mode);
            let err = MasterKey::resolve(dir.path(), None).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, VaultError::KeyFileMode { .. }), "{message}");
            assert!(message.contains(&format!("mode {mode:04o}")), "{message}");
            assert!(message.contains("chmod 600"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(!message.contains(KEY_A), "{message}");
        }
        write_mode(&path, KEY_A, 0o400);
        assert!(MasterKey::resolve(dir.path(), None).is_ok());
    }

    #[test]
    fn a_damaged_key_file_is_refused_without_echoing_it() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        write_mode(&path, &KEY_A[..40], 0o600);
        let message = MasterKey::resolve(dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("master key file"), "{message}");
        assert!(!message.contains(&KEY_A[..40]), "{message}");
        write_mode(&path, &"A".repeat(KEY_FILE_LEN_MAX + 1), 0o600);
        let message = MasterKey::resolve(dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("larger than"), "{message}");
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let message = MasterKey::resolve(dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn init_creates_a_0600_file_and_keeps_the_first_key() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        assert_eq!(
            init_key_file(dir.path()).unwrap(),
            InitOutcome::Created(path.clone())
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), MASTER_KEY_BASE64_LEN + 1);
        assert!(text.ends_with('\n'));
        let first = MasterKey::resolve(dir.path(), None).unwrap().0.key_id();

        assert_eq!(
            init_key_file(dir.path()).unwrap(),
            InitOutcome::Existed(path.clone())
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(
            MasterKey::resolve(dir.path(), None).unwrap().0.key_id(),
            first
        );
    }

    #[test]
    fn two_inits_in_two_dirs_make_different_keys() {
        let a = TempDir::new().unwrap();
        let b = TempDir::new().unwrap();
        init_key_file(a.path()).unwrap();
        init_key_file(b.path()).unwrap();
        let ka = MasterKey::resolve(a.path(), None).unwrap().0;
        let kb = MasterKey::resolve(b.path(), None).unwrap().0;
        assert_ne!(ka.key_id(), kb.key_id());
    }

    #[test]
    fn init_in_a_missing_dir_names_the_file() {
        let dir = TempDir::new().unwrap();
        let missing = dir.path().join("nope");
        let message = init_key_file(&missing).unwrap_err().to_string();
        assert!(message.contains("creating"), "{message}");
        assert!(message.contains("nope"), "{message}");
    }

    #[test]
    fn write_key_file_never_replaces() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(NEW_MASTER_KEY_FILE);
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        assert!(write_key_file(&path, &a).unwrap());
        assert!(!write_key_file(&path, &b).unwrap());
        assert_eq!(read_key_file(&path).unwrap().unwrap().key_id(), a.key_id());
    }
}
