//! The BYOK vault end to end: wrong keys, moved ciphertexts, rotation, no plaintext on disk.
//!
//! Each test opens a real SQLite ledger in a fresh temporary data dir, stores keys through
//! `tollgate::keys`, and where it plays an attacker or a crash it edits the files directly: raw
//! SQL `UPDATE`s on the database, key files written by hand.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use tempfile::TempDir;
use tollgate::keys::{
    self, CryptoError, KeySource, MASTER_KEY_FILE, MasterKey, NEW_MASTER_KEY_FILE, VaultError,
};
use tollgate::ledger::provider_keys::NewProviderKey;
use tollgate::ledger::{Ledger, LedgerError, NewUser, OpenMode, Provider, SystemClock};
use zeroize::Zeroizing;

const DB_FILE: &str = "tollgate.db";

struct Vault {
    dir: TempDir,
    ledger: Ledger,
}

impl Vault {
    fn new(users: &[&str]) -> Vault {
        let dir = TempDir::new().unwrap();
        let mut ledger = Ledger::open(
            &dir.path().join(DB_FILE),
            OpenMode::CreateIfMissing,
            Arc::new(SystemClock),
        )
        .unwrap();
        for user in users {
            ledger.create_user(&NewUser::new(*user)).unwrap();
        }
        Vault { dir, ledger }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn add(
        &mut self,
        master: &MasterKey,
        user: &str,
        provider: Provider,
        name: &str,
        secret: &str,
    ) -> i64 {
        keys::add_key(
            &mut self.ledger,
            master,
            user,
            provider,
            name,
            z(secret),
            true,
        )
        .unwrap()
        .id
    }

    fn open(
        &self,
        master: &MasterKey,
        user: &str,
        provider: Provider,
    ) -> Result<String, VaultError> {
        let (_, secret) =
            keys::open_default(&self.ledger, master, user, provider)?.expect("a default key");
        Ok(secret.to_string())
    }

    /// A second connection to the database file, as an attacker with write access would have.
    fn raw(&self) -> Connection {
        #[allow(clippy::disallowed_methods)] // deliberately raw: no pragmas, no migrations
        let conn = Connection::open_with_flags(
            self.path().join(DB_FILE),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn
    }
}

fn z(text: &str) -> Zeroizing<String> {
    Zeroizing::new(text.to_owned())
}

/// Writes a key file by hand, as a rotation would (mode 0600).
fn write_key(path: &Path, key: &MasterKey) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(file, "{}", &*key.to_base64()).unwrap();
}

fn key_of(path: &Path) -> MasterKey {
    MasterKey::from_base64(&fs::read_to_string(path).unwrap(), "test").unwrap()
}

fn is_decrypt_failure(err: &VaultError) -> bool {
    matches!(
        err,
        VaultError::CannotOpen {
            source: CryptoError::Decrypt,
            ..
        }
    )
}

#[test]
fn a_wrong_master_key_is_refused_with_both_ids() {
    let mut v = Vault::new(&["alice"]);
    let right = MasterKey::generate().unwrap();
    let wrong = MasterKey::generate().unwrap();
    v.add(
        &right,
        "alice",
        Provider::OpenAi,
        "default",
        "sk-right-key-000001",
    );

    let expect_wrong = |err: VaultError| {
        let message = err.to_string();
        match err {
            VaultError::WrongMasterKey { given, expected } => {
                assert_eq!(given, wrong.key_id());
                assert_eq!(expected, right.key_id());
                assert!(
                    message.contains(&given) && message.contains(&expected),
                    "{message}"
                );
            }
            other => panic!("expected WrongMasterKey, got {other:?}"),
        }
    };
    expect_wrong(v.open(&wrong, "alice", Provider::OpenAi).unwrap_err());
    expect_wrong(
        keys::add_key(
            &mut v.ledger,
            &wrong,
            "alice",
            Provider::Anthropic,
            "default",
            z("sk-ant-other-key-0001"),
            true,
        )
        .unwrap_err(),
    );
    expect_wrong(keys::check_all(&v.ledger, &wrong).unwrap_err());
    let third = MasterKey::generate().unwrap();
    expect_wrong(keys::rotate_master(&mut v.ledger, &wrong, &third).unwrap_err());
    let env = Some(wrong.to_base64());
    expect_wrong(keys::load_master(&v.ledger, v.path(), env).unwrap_err());

    // Nothing changed: the right key still opens the one key stored.
    assert_eq!(
        v.open(&right, "alice", Provider::OpenAi).unwrap(),
        "sk-right-key-000001"
    );
    assert_eq!(keys::check_all(&v.ledger, &right).unwrap(), 1);
    assert_eq!(v.ledger.vault_key_id().unwrap(), Some(right.key_id()));
}

#[test]
fn a_ciphertext_moved_to_another_row_does_not_open() {
    let mut v = Vault::new(&["alice", "bob"]);
    let master = MasterKey::generate().unwrap();
    let alice_id = v.add(
        &master,
        "alice",
        Provider::OpenAi,
        "default",
        "sk-alice-secret-0001",
    );
    let bob_id = v.add(
        &master,
        "bob",
        Provider::OpenAi,
        "default",
        "sk-bob-secret-00002",
    );
    assert_eq!(
        v.open(&master, "bob", Provider::OpenAi).unwrap(),
        "sk-bob-secret-00002"
    );

    // Copy alice's ciphertext onto bob's row.
    let raw = v.raw();
    raw.execute(
        "UPDATE user_provider_keys SET encrypted_key = \
         (SELECT encrypted_key FROM user_provider_keys WHERE id = ?1) WHERE id = ?2",
        [alice_id, bob_id],
    )
    .unwrap();
    let err = v.open(&master, "bob", Provider::OpenAi).unwrap_err();
    assert!(is_decrypt_failure(&err), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("cannot decrypt the stored key"),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");
    // Alice's own row still opens.
    assert_eq!(
        v.open(&master, "alice", Provider::OpenAi).unwrap(),
        "sk-alice-secret-0001"
    );

    // Renaming a row, or moving it to another provider, breaks it too.
    raw.execute(
        "UPDATE user_provider_keys SET key_name = 'renamed' WHERE id = ?1",
        [alice_id],
    )
    .unwrap();
    assert!(is_decrypt_failure(
        &v.open(&master, "alice", Provider::OpenAi).unwrap_err()
    ));
    raw.execute(
        "UPDATE user_provider_keys SET key_name = 'default', provider = 'anthropic' WHERE id = ?1",
        [alice_id],
    )
    .unwrap();
    assert!(is_decrypt_failure(
        &v.open(&master, "alice", Provider::Anthropic).unwrap_err()
    ));

    // A rotation refuses to carry the damage over, and changes nothing.
    let new = MasterKey::generate().unwrap();
    let err = keys::rotate_master(&mut v.ledger, &master, &new).unwrap_err();
    assert!(is_decrypt_failure(&err), "{err:?}");
    assert_eq!(v.ledger.vault_key_id().unwrap(), Some(master.key_id()));
}

#[test]
fn an_altered_or_truncated_envelope_is_named_not_panicked_on() {
    let mut v = Vault::new(&["alice"]);
    let master = MasterKey::generate().unwrap();
    let id = v.add(
        &master,
        "alice",
        Provider::Google,
        "default",
        "AIza-google-key-0001",
    );
    let raw = v.raw();
    raw.execute(
        "UPDATE user_provider_keys SET encrypted_key = substr(encrypted_key, 1, 20) WHERE id = ?1",
        [id],
    )
    .unwrap();
    let err = v.open(&master, "alice", Provider::Google).unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::CannotOpen {
                source: CryptoError::Truncated { len: 20 },
                ..
            }
        ),
        "{err:?}"
    );
    let mut envelope: Vec<u8> = raw
        .query_row(
            "SELECT encrypted_key FROM user_provider_keys WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    envelope[0] = 0x02;
    raw.execute(
        "UPDATE user_provider_keys SET encrypted_key = ?2 WHERE id = ?1",
        rusqlite::params![id, envelope],
    )
    .unwrap();
    let err = v.open(&master, "alice", Provider::Google).unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::CannotOpen {
                source: CryptoError::UnknownVersion(2),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn keys_are_added_listed_replaced_and_removed() {
    let mut v = Vault::new(&["alice"]);
    let master = MasterKey::generate().unwrap();
    let info = keys::add_key(
        &mut v.ledger,
        &master,
        "alice",
        Provider::OpenAi,
        "work",
        z("sk-first-openai-key-WXYZ"),
        true,
    )
    .unwrap();
    assert_eq!(info.key_last4, "WXYZ");
    assert!(info.key_fingerprint.starts_with("sha256:"));
    assert!(info.is_default && info.is_active);
    assert!(!format!("{info:?}").contains("first-openai"));
    assert_eq!(v.ledger.vault_key_id().unwrap(), Some(master.key_id()));

    // A second default replaces the first; the first stays, not default.
    v.add(
        &master,
        "alice",
        Provider::OpenAi,
        "home",
        "sk-second-openai-key-0002",
    );
    let (row, secret) = keys::open_default(&v.ledger, &master, "alice", Provider::OpenAi)
        .unwrap()
        .unwrap();
    assert_eq!(&*secret, "sk-second-openai-key-0002");
    let listed = keys::list_keys(&v.ledger, "alice").unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k.id == row && k.is_default));
    assert!(listed.iter().any(|k| k.id == info.id && !k.is_default));

    // Same name again is refused by the ledger; unknown users too.
    let dup = keys::add_key(
        &mut v.ledger,
        &master,
        "alice",
        Provider::OpenAi,
        "work",
        z("sk-dup-openai-key-0003"),
        false,
    )
    .unwrap_err();
    assert!(
        matches!(dup, VaultError::Ledger(LedgerError::InvalidField { .. })),
        "{dup:?}"
    );
    assert!(!dup.to_string().contains("sk-dup"));
    let unknown = keys::add_key(
        &mut v.ledger,
        &master,
        "mallory",
        Provider::OpenAi,
        "work",
        z("sk-mallory-key-00004"),
        false,
    )
    .unwrap_err();
    assert!(
        matches!(unknown, VaultError::Ledger(LedgerError::UnknownUser(_))),
        "{unknown:?}"
    );
    let invalid = keys::add_key(
        &mut v.ledger,
        &master,
        "alice",
        Provider::OpenAi,
        "spaces",
        z("sk-has a-space-in-it"),
        false,
    )
    .unwrap_err();
    assert!(
        matches!(invalid, VaultError::InvalidSecret(_)),
        "{invalid:?}"
    );
    assert!(!invalid.to_string().contains("has a-space"));

    // No default for a provider: None, not an error.
    assert!(
        keys::open_default(&v.ledger, &master, "alice", Provider::Cohere)
            .unwrap()
            .is_none()
    );

    keys::remove_key(&mut v.ledger, "alice", Provider::OpenAi, "home").unwrap();
    assert!(
        keys::open_default(&v.ledger, &master, "alice", Provider::OpenAi)
            .unwrap()
            .is_none()
    );
    let again = keys::remove_key(&mut v.ledger, "alice", Provider::OpenAi, "home").unwrap_err();
    assert!(matches!(again, VaultError::NoSuchKey { .. }), "{again:?}");
    assert_eq!(keys::list_keys(&v.ledger, "alice").unwrap().len(), 1);
}

/// (user, provider, key name, secret) for the rotation tests.
fn fleet() -> Vec<(&'static str, Provider, &'static str, String)> {
    let mut rows = Vec::new();
    for user in ["alice", "bob", "carol"] {
        for provider in [Provider::OpenAi, Provider::Anthropic, Provider::Together] {
            for name in ["spare", "main"] {
                let secret = format!("sk-{user}-{provider}-{name}-secret-value");
                rows.push((user, provider, name, secret));
            }
        }
    }
    rows
}

fn store_fleet(v: &mut Vault, master: &MasterKey) {
    for (user, provider, name, secret) in fleet() {
        v.add(master, user, provider, name, &secret);
    }
}

/// Every default ("main", added last) opens under `master` to what was stored.
fn assert_fleet_opens(v: &Vault, master: &MasterKey) {
    for (user, provider, name, secret) in fleet() {
        if name == "main" {
            assert_eq!(v.open(master, user, provider).unwrap(), secret);
        }
    }
    assert_eq!(keys::check_all(&v.ledger, master).unwrap(), fleet().len());
}

#[test]
fn rotation_keeps_every_key_readable_and_retires_the_old_key() {
    let mut v = Vault::new(&["alice", "bob", "carol"]);
    let old = MasterKey::generate().unwrap();
    store_fleet(&mut v, &old);
    let before: Vec<Vec<u8>> = {
        let raw = v.raw();
        let mut stmt = raw
            .prepare("SELECT encrypted_key FROM user_provider_keys ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };

    let new = MasterKey::generate().unwrap();
    assert_eq!(
        keys::rotate_master(&mut v.ledger, &old, &new).unwrap(),
        fleet().len()
    );
    assert_eq!(v.ledger.vault_key_id().unwrap(), Some(new.key_id()));
    assert_fleet_opens(&v, &new);

    // Every ciphertext changed, and the old key opens none of them.
    let after = v.ledger.provider_keys("alice").unwrap();
    assert_eq!(after.len(), 6);
    let raw = v.raw();
    let mut stmt = raw
        .prepare("SELECT encrypted_key FROM user_provider_keys ORDER BY id")
        .unwrap();
    let resealed: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(resealed.len(), before.len());
    assert!(before.iter().zip(&resealed).all(|(a, b)| a != b));
    for (user, provider, name, _) in fleet() {
        if name == "main" {
            let err = v.open(&old, user, provider).unwrap_err();
            assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err:?}");
        }
    }
    let same = keys::rotate_master(&mut v.ledger, &new, &new).unwrap_err();
    assert!(matches!(same, VaultError::SameKey { .. }), "{same:?}");
}

#[test]
fn file_rotation_replaces_the_key_file() {
    let mut v = Vault::new(&["alice", "bob", "carol"]);
    assert!(matches!(
        keys::init_key_file(v.path()).unwrap(),
        keys::InitOutcome::Created(_)
    ));
    let (old, source) = keys::load_master(&v.ledger, v.path(), None).unwrap();
    assert_eq!(source, KeySource::File(v.path().join(MASTER_KEY_FILE)));
    store_fleet(&mut v, &old);

    let dir = v.path().to_path_buf();
    let report = keys::rotate(&mut v.ledger, &dir, None, None).unwrap();
    assert_eq!(report.keys_resealed, fleet().len());
    assert_eq!(report.old_key_id, old.key_id());
    assert_eq!(report.operator_action(), None);
    assert!(!dir.join(NEW_MASTER_KEY_FILE).exists());
    let key_file = dir.join(MASTER_KEY_FILE);
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (new, _) = keys::load_master(&v.ledger, &dir, None).unwrap();
    assert_eq!(new.key_id(), report.new_key_id);
    assert_eq!(key_of(&key_file).key_id(), report.new_key_id);
    assert_fleet_opens(&v, &new);
}

#[test]
fn env_rotation_tells_the_operator_to_switch_the_variable() {
    let mut v = Vault::new(&["alice", "bob", "carol"]);
    let old = MasterKey::generate().unwrap();
    let new = MasterKey::generate().unwrap();
    store_fleet(&mut v, &old);
    let dir = v.path().to_path_buf();

    let missing = keys::rotate(&mut v.ledger, &dir, Some(old.to_base64()), None).unwrap_err();
    assert!(matches!(missing, VaultError::NewKeyMissing), "{missing:?}");
    let unused = keys::rotate(&mut v.ledger, &dir, None, Some(new.to_base64())).unwrap_err();
    assert!(
        matches!(unused, VaultError::NewKeyUnused { .. }),
        "{unused:?}"
    );

    let report = keys::rotate(
        &mut v.ledger,
        &dir,
        Some(old.to_base64()),
        Some(new.to_base64()),
    )
    .unwrap();
    assert_eq!(report.keys_resealed, fleet().len());
    assert_eq!(report.new_key_source, KeySource::Env);
    let action = report.operator_action().unwrap();
    assert!(
        action.contains("TOLLGATE_MASTER_KEY") && action.contains(&new.key_id()),
        "{action}"
    );
    assert!(!action.contains(new.to_base64().as_str()), "{action}");
    // No key file was written for an env key.
    assert!(!dir.join(MASTER_KEY_FILE).exists());
    assert!(!dir.join(NEW_MASTER_KEY_FILE).exists());

    let again = keys::rotate(
        &mut v.ledger,
        &dir,
        Some(old.to_base64()),
        Some(new.to_base64()),
    )
    .unwrap_err();
    assert!(
        matches!(again, VaultError::AlreadyRotated { .. }),
        "{again:?}"
    );
    let stale = keys::load_master(&v.ledger, &dir, Some(old.to_base64())).unwrap_err();
    assert!(
        matches!(stale, VaultError::WrongMasterKey { .. }),
        "{stale:?}"
    );
    let (loaded, source) = keys::load_master(&v.ledger, &dir, Some(new.to_base64())).unwrap();
    assert_eq!(source, KeySource::Env);
    assert_fleet_opens(&v, &loaded);
}

#[test]
fn a_crash_after_the_database_switched_recovers_the_new_key() {
    let mut v = Vault::new(&["alice", "bob", "carol"]);
    keys::init_key_file(v.path()).unwrap();
    let dir = v.path().to_path_buf();
    let (old, _) = keys::load_master(&v.ledger, &dir, None).unwrap();
    store_fleet(&mut v, &old);

    // What rotate_key_file does up to the crash: new key file written, database re-sealed, but
    // master.key.new not yet renamed over master.key.
    let new = MasterKey::generate().unwrap();
    write_key(&dir.join(NEW_MASTER_KEY_FILE), &new);
    keys::rotate_master(&mut v.ledger, &old, &new).unwrap();
    assert_eq!(key_of(&dir.join(MASTER_KEY_FILE)).key_id(), old.key_id());

    let (loaded, source) = keys::load_master(&v.ledger, &dir, None).unwrap();
    assert_eq!(loaded.key_id(), new.key_id());
    assert_eq!(source, KeySource::File(dir.join(MASTER_KEY_FILE)));
    // The rename was finished.
    assert!(!dir.join(NEW_MASTER_KEY_FILE).exists());
    assert_eq!(key_of(&dir.join(MASTER_KEY_FILE)).key_id(), new.key_id());
    assert_fleet_opens(&v, &loaded);
    // And loading again takes the fast path to the same key.
    let (again, _) = keys::load_master(&v.ledger, &dir, None).unwrap();
    assert_eq!(again.key_id(), new.key_id());
}

#[test]
fn a_crash_before_the_database_switched_keeps_the_old_key() {
    let mut v = Vault::new(&["alice", "bob", "carol"]);
    keys::init_key_file(v.path()).unwrap();
    let dir = v.path().to_path_buf();
    let (old, _) = keys::load_master(&v.ledger, &dir, None).unwrap();
    store_fleet(&mut v, &old);

    // The new key file was written, then the process died before the transaction committed.
    let abandoned = MasterKey::generate().unwrap();
    write_key(&dir.join(NEW_MASTER_KEY_FILE), &abandoned);

    let (loaded, _) = keys::load_master(&v.ledger, &dir, None).unwrap();
    assert_eq!(loaded.key_id(), old.key_id());
    assert_fleet_opens(&v, &loaded);

    // The next rotation discards the abandoned key and completes.
    let report = keys::rotate_key_file(&mut v.ledger, &dir).unwrap();
    assert_ne!(report.new_key_id, abandoned.key_id());
    assert!(!dir.join(NEW_MASTER_KEY_FILE).exists());
    let (new, _) = keys::load_master(&v.ledger, &dir, None).unwrap();
    assert_eq!(new.key_id(), report.new_key_id);
    assert_fleet_opens(&v, &new);
}

#[test]
fn a_key_file_matching_neither_is_a_wrong_key() {
    let mut v = Vault::new(&["alice"]);
    let dir = v.path().to_path_buf();
    let real = MasterKey::generate().unwrap();
    v.add(
        &real,
        "alice",
        Provider::OpenAi,
        "default",
        "sk-real-key-000000001",
    );
    let other = MasterKey::generate().unwrap();
    write_key(&dir.join(MASTER_KEY_FILE), &other);
    write_key(
        &dir.join(NEW_MASTER_KEY_FILE),
        &MasterKey::generate().unwrap(),
    );
    let err = keys::load_master(&v.ledger, &dir, None).unwrap_err();
    assert!(
        matches!(&err, VaultError::WrongMasterKey { given, expected }
            if *given == other.key_id() && *expected == real.key_id()),
        "{err:?}"
    );
    // Nothing was renamed.
    assert_eq!(key_of(&dir.join(MASTER_KEY_FILE)).key_id(), other.key_id());
    assert!(dir.join(NEW_MASTER_KEY_FILE).exists());
    let missing = keys::load_master(&v.ledger, &dir.join("elsewhere"), None);
    assert!(
        matches!(missing, Err(VaultError::NoMasterKey { .. })),
        "{missing:?}"
    );
}

#[test]
fn the_ledger_refuses_a_row_sealed_under_a_retired_key() {
    // A `keys add` that checked its master key just before a rotation committed elsewhere.
    let mut v = Vault::new(&["alice"]);
    let old = MasterKey::generate().unwrap();
    let new = MasterKey::generate().unwrap();
    v.add(
        &old,
        "alice",
        Provider::OpenAi,
        "default",
        "sk-before-rotation-0001",
    );
    keys::rotate_master(&mut v.ledger, &old, &new).unwrap();
    let binding = keys::Binding::new("alice", "openai", "late");
    let late = NewProviderKey {
        user_id: "alice".to_owned(),
        provider: Provider::OpenAi,
        key_name: "late".to_owned(),
        encrypted_key: keys::crypto::seal(&old, &binding, b"sk-late-key-000000001").unwrap(),
        key_last4: "0001".to_owned(),
        key_fingerprint: "sha256:0000000000000000".to_owned(),
        is_default: false,
    };
    let err = v
        .ledger
        .insert_provider_key(&late, &old.key_id())
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidField {
                field: "master key",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(keys::check_all(&v.ledger, &new).unwrap(), 1);
}

// ------------------------------------------------------------------------------------------------
// No plaintext on disk.

const CANARY: &str = "sk-live-PLAINTEXT-CANARY-5f0c1e9a7b3d2468";
/// A piece of the canary that no stored field (last four, fingerprint) contains.
const CANARY_CORE: &[u8] = b"PLAINTEXT-CANARY";
/// A key name: stored in the clear, so the scan must find it (proof the scan sees stored text).
const VISIBLE_NAME: &str = "visible-key-name-7e1d";

/// Every regular file in `dir`, with its bytes.
fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = fs::read(&path).unwrap();
            files.push((path, bytes));
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that no file in the data dir holds the canary, and that some file holds the key name.
fn assert_no_plaintext(dir: &Path, stage: &str) {
    let files = files_in(dir);
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, CANARY_CORE),
            "{stage}: the plaintext key is in {}",
            path.display()
        );
    }
    assert!(
        files
            .iter()
            .any(|(_, b)| contains(b, VISIBLE_NAME.as_bytes())),
        "{stage}: the scan found no stored text at all; it cannot be trusted"
    );
}

#[test]
fn the_plaintext_key_is_nowhere_on_disk() {
    let mut v = Vault::new(&["alice", "bob"]);
    keys::init_key_file(v.path()).unwrap();
    let dir = v.path().to_path_buf();
    let (master, _) = keys::load_master(&v.ledger, &dir, None).unwrap();
    v.add(&master, "alice", Provider::OpenAi, VISIBLE_NAME, CANARY);
    v.add(&master, "bob", Provider::Anthropic, "default", CANARY);
    let (_, opened) = keys::open_default(&v.ledger, &master, "alice", Provider::OpenAi)
        .unwrap()
        .unwrap();
    assert_eq!(&*opened, CANARY);
    drop(opened);

    // Before any checkpoint the rows live in the WAL.
    let wal = dir.join(format!("{DB_FILE}-wal"));
    assert!(fs::metadata(&wal).unwrap().len() > 0, "expected a WAL file");
    assert!(contains(&fs::read(&wal).unwrap(), VISIBLE_NAME.as_bytes()));
    assert_no_plaintext(&dir, "before checkpoint");

    // Rotation writes every ciphertext again.
    let report = keys::rotate_key_file(&mut v.ledger, &dir).unwrap();
    assert_eq!(report.keys_resealed, 2);
    assert_no_plaintext(&dir, "after rotation");

    let raw = v.raw();
    raw.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    assert!(contains(
        &fs::read(dir.join(DB_FILE)).unwrap(),
        VISIBLE_NAME.as_bytes()
    ));
    assert_no_plaintext(&dir, "after checkpoint");

    drop(raw);
    drop(v.ledger);
    assert_no_plaintext(&dir, "after close");
}
