//! `<data dir>/sync.toml`: the server this agent syncs with, the agent id it was given and the
//! credential it authenticates with. Written by `tollgate enroll`; its presence turns sync on in
//! `tollgate serve`.
//!
//! Guarantees:
//! - Written atomically: a temporary file created 0600 in the same dir, synced, renamed over the
//!   old one, and the dir synced, so a reader sees the old file or the new one, never a part.
//! - Refused on load if group or others may read or write it (the rule the gateway applies to a
//!   config holding the upstream key, and the vault to the master key file), checked on the
//!   opened file so the file checked is the file read.
//! - The credential is a [`Secret`] (zeroized, `Debug` prints `<redacted>`); no error message
//!   here quotes it or the file's text.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollgate_schema::wire::TOKEN_LEN_MAX;
use zeroize::Zeroizing;

use crate::gateway::config::Secret;
use crate::ledger::sync::validate_agent_id;

/// The file's name inside the data dir.
pub const SYNC_FILE: &str = "sync.toml";
/// The largest file read: three short lines.
const SYNC_FILE_BYTES_MAX: u64 = 16 * 1024;

/// What `sync.toml` holds, validated.
#[derive(Clone)]
pub struct SyncConfig {
    /// The server's base URL (http or https, no trailing slash, no user info).
    pub server: String,
    /// The server's id for this agent.
    pub agent_id: String,
    /// The bearer credential for every request after enrolment.
    credential: Secret,
}

impl fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncConfig")
            .field("server", &self.server)
            .field("agent_id", &self.agent_id)
            .field("credential", &self.credential)
            .finish()
    }
}

/// A problem with the sync file or its values, naming the file or the value (never the secret).
#[derive(Debug, thiserror::Error)]
pub enum SyncFileError {
    #[error(
        "sync credential file {path} has mode {mode:04o}: make it private (chmod 600 {path})",
        path = .path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("cannot {action} the sync credential file {path}: {why}", path = .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        why: String,
    },
    #[error("sync credential file {path}: {why}", path = .path.display())]
    Parse { path: PathBuf, why: String },
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// The file as written: no other keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    server: String,
    agent_id: String,
    credential: Secret,
}

impl SyncConfig {
    /// Checks and normalises the values (see [`server_url`], [`check_credential`]).
    pub fn new(
        server: &str,
        agent_id: &str,
        credential: Secret,
    ) -> Result<SyncConfig, SyncFileError> {
        let server = server_url(server)?;
        validate_agent_id(agent_id).map_err(|e| SyncFileError::Invalid {
            field: "agent id",
            why: e.to_string(),
        })?;
        check_credential("credential", credential.expose())?;
        Ok(SyncConfig {
            server,
            agent_id: agent_id.to_owned(),
            credential,
        })
    }

    pub fn credential(&self) -> &Secret {
        &self.credential
    }

    /// Reads the file at `path`; `Ok(None)` when there is none (the agent is not enrolled).
    pub fn load(path: &Path) -> Result<Option<SyncConfig>, SyncFileError> {
        let io = |action: &'static str, e: std::io::Error| SyncFileError::Io {
            path: path.to_path_buf(),
            action,
            why: e.to_string(),
        };
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", e)),
        };
        let meta = file.metadata().map_err(|e| io("inspect", e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SyncFileError::Mode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let parse = |why: String| SyncFileError::Parse {
            path: path.to_path_buf(),
            why,
        };
        if !meta.is_file() || meta.len() > SYNC_FILE_BYTES_MAX {
            return Err(parse(format!(
                "not a regular file of at most {SYNC_FILE_BYTES_MAX} bytes"
            )));
        }
        let mut text = Zeroizing::new(String::new());
        (&mut file)
            .take(SYNC_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .map_err(|e| io("read", e))?;
        // toml's own Display quotes the offending line, which may hold the credential: only its
        // message and the line number are kept.
        let on_disk: OnDisk = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| before.matches('\n').count() + 1);
            parse(match line {
                Some(line) => format!("line {line}: {}", e.message().trim()),
                None => e.message().trim().to_owned(),
            })
        })?;
        SyncConfig::new(&on_disk.server, &on_disk.agent_id, on_disk.credential)
            .map(Some)
            .map_err(|e| parse(e.to_string()))
    }

    /// Writes the file at `path` atomically, mode 0600 (see the module doc).
    pub fn save(&self, path: &Path) -> Result<(), SyncFileError> {
        let io = |action: &'static str, e: std::io::Error| SyncFileError::Io {
            path: path.to_path_buf(),
            action,
            why: e.to_string(),
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let text = Zeroizing::new(format!(
            "# tollgate sync: the server this agent syncs with, its agent id and its credential.\n\
             # Written by `tollgate enroll`; keep it private (mode 0600).\n\
             server = {}\nagent_id = {}\ncredential = \"{}\"\n",
            toml_string(&self.server),
            toml_string(&self.agent_id),
            // check_credential admitted only characters that need no escaping.
            self.credential.expose(),
        ));
        let mut temp = tempfile::Builder::new()
            .prefix(".sync.toml.")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| io("create a temporary file for", e))?;
        temp.write_all(text.as_bytes())
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| io("write", e))?;
        temp.persist(path).map_err(|e| io("replace", e.error))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))?;
        Ok(())
    }
}

/// A server's base URL: http or https, with a host, no user info, query or fragment; returned
/// without a trailing slash so paths can be appended.
pub fn server_url(text: &str) -> Result<String, SyncFileError> {
    let invalid = |why: String| SyncFileError::Invalid {
        field: "server URL",
        why,
    };
    let url = reqwest::Url::parse(text.trim()).map_err(|e| invalid(format!("{text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(format!(
            "{text:?}: use http:// or https:// and a host"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "it carries a user name or password; the agent authenticates with its credential"
                .to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(format!(
            "{text:?}: a base URL has no query or fragment"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A token or credential: 1 to [`TOKEN_LEN_MAX`] printable ASCII characters, none of them a
/// space, quote or backslash. The message never quotes the value.
pub fn check_credential(what: &'static str, value: &str) -> Result<(), SyncFileError> {
    let ok = !value.is_empty()
        && value.len() <= TOKEN_LEN_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(SyncFileError::Invalid {
            field: what,
            why: format!(
                "it must be 1-{TOKEN_LEN_MAX} printable ASCII characters without spaces, quotes \
                 or backslashes ({} bytes given)",
                value.len()
            ),
        })
    }
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIAL: &str = "tgc_secret-credential_0123456789";

    fn config() -> SyncConfig {
        SyncConfig::new(
            "https://sync.example.com/base/",
            "0193a3c4-0000-7000-8000-000000000001",
            Secret::new(CREDENTIAL.to_owned()),
        )
        .unwrap()
    }

    #[test]
    fn saved_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SYNC_FILE);
        config().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = SyncConfig::load(&path).unwrap().unwrap();
        assert_eq!(loaded.server, "https://sync.example.com/base");
        assert_eq!(loaded.agent_id, "0193a3c4-0000-7000-8000-000000000001");
        assert_eq!(loaded.credential().expose(), CREDENTIAL);
        // Saving again replaces the file, still private, and leaves no temporary file behind.
        loaded.save(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_missing_file_is_not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            SyncConfig::load(&dir.path().join(SYNC_FILE))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_file_others_can_access_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SYNC_FILE);
        config().save(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = SyncConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("mode {mode:04o}")), "{err}");
            assert!(err.contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn the_credential_never_shows() {
        let config = config();
        assert!(!format!("{config:?}").contains(CREDENTIAL));
        assert!(format!("{config:?}").contains("<redacted>"));
        // A malformed file's error does not quote the line holding the credential.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SYNC_FILE);
        std::fs::write(
            &path,
            format!("server = \"https://x\"\ncredential = \"{CREDENTIAL}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = SyncConfig::load(&path).unwrap_err().to_string();
        assert!(!err.contains(CREDENTIAL), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let bad = check_credential("credential", "s3cr3t\"value")
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("s3cr3t"), "{bad}");
    }

    #[test]
    fn server_urls_are_checked_and_normalised() {
        assert_eq!(
            server_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(server_url("https://h/x/").unwrap(), "https://h/x");
        for bad in [
            "ftp://h",
            "h:80",
            "https://u:p@h",
            "https://h/?a=1",
            "not a url",
        ] {
            assert!(server_url(bad).is_err(), "{bad}");
        }
    }
}
