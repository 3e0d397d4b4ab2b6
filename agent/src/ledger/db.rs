//! Opening the agent's SQLite file: pragmas, migrations, and the schema-version guard.
//!
//! Guarantees:
//! - Every connection runs with WAL, `foreign_keys=ON`, `synchronous=FULL` and a busy timeout, set
//!   explicitly here and nowhere else, so a write the ledger acknowledged survives power loss and
//!   several processes (the gateway, the CLI) can write the same file safely.
//! - Migrations are applied in one place, under a lock file so two processes opening a fresh
//!   file at once do not race; applying them twice is a no-op. They run with foreign keys off
//!   (SQLite's table-rebuild procedure needs it) and every foreign key is checked after.
//! - A database written by a newer tollgate (a migration version this binary does not know) is
//!   refused before anything is written, with a message naming both versions.
//! - A database this code creates is created 0600 (owner only: it holds the books, API key
//!   hashes and sealed BYOK keys), and SQLite gives its `-wal` and `-shm` files the same mode.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tollgate_schema::sqlite::{HISTORY_TABLE, LATEST_VERSION, migrations};

use super::LedgerError;

/// How long a writer waits for another process's write transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Prepared statements kept per connection (the hot path uses about twenty).
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Whether opening may create the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if it is missing (`tollgate init`, tests).
    CreateIfMissing,
    /// The file must already exist: a typo in `--data-dir` must not silently start an empty ledger.
    MustExist,
}

/// Creates an empty file at `path`, owner-only, unless one is there (SQLite would create it with
/// the umask's mode, usually readable by all).
fn create_private(path: &Path) -> Result<(), LedgerError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(LedgerError::Io(format!("creating {}: {e}", path.display()))),
    }
}

/// Opens (and migrates) the database at `path`.
pub fn open(path: &Path, mode: OpenMode) -> Result<Connection, LedgerError> {
    if mode == OpenMode::MustExist && !path.exists() {
        return Err(LedgerError::NoDatabase(path.to_path_buf()));
    }
    if mode == OpenMode::CreateIfMissing {
        create_private(path)?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    #[allow(clippy::disallowed_methods)] // this is the one place a connection is opened
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    refuse_newer_schema(&conn)?;
    // A fresh (or older) file is set up under a lock: switching a new file to WAL and migrating
    // it are not safe to race (SQLite answers "database is locked" without waiting), so a second
    // process waits here, then finds nothing left to do.
    let current_mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let up_to_date = schema_version(&conn)? == Some(i64::from(LATEST_VERSION))
        && current_mode.eq_ignore_ascii_case("wal");
    let setup_lock = if up_to_date {
        None
    } else {
        Some(MigrationLock::acquire(path)?)
    };
    // journal_mode answers with the mode now in force; anything but WAL is an error.
    let journal_mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Pragma(format!(
            "journal_mode is {journal_mode}, not wal"
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )?;
    if setup_lock.is_some() {
        refuse_newer_schema(&conn)?;
        migrate(&mut conn)?;
    } else {
        refuse_divergent_schema(&conn)?;
    }
    drop(setup_lock);
    ensure_identity(&conn)?;
    Ok(conn)
}

/// The newest migration version recorded in the file, if any.
pub fn schema_version(conn: &Connection) -> Result<Option<i64>, LedgerError> {
    let has_history: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [HISTORY_TABLE],
        |r| r.get(0),
    )?;
    if !has_history {
        return Ok(None);
    }
    let sql = format!("SELECT MAX(version) FROM {HISTORY_TABLE}");
    Ok(conn.query_row(&sql, [], |r| r.get::<_, Option<i64>>(0))?)
}

fn refuse_newer_schema(conn: &Connection) -> Result<(), LedgerError> {
    match schema_version(conn)? {
        Some(found) if found > i64::from(LATEST_VERSION) => Err(LedgerError::SchemaTooNew {
            found,
            supported: i64::from(LATEST_VERSION),
        }),
        _ => Ok(()),
    }
}

/// Refuses a file whose applied migrations are not this build's (same version, other content):
/// the check refinery makes when migrating, made here too for files that need no migration.
fn refuse_divergent_schema(conn: &Connection) -> Result<(), LedgerError> {
    let sql = format!("SELECT version, checksum FROM {HISTORY_TABLE}");
    let mut stmt = conn.prepare(&sql)?;
    let applied = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    let runner = migrations::runner();
    let embedded = runner.get_migrations();
    for row in applied {
        let (version, checksum) = row?;
        let ours = embedded.iter().find(|m| i64::from(m.version()) == version);
        if ours.is_none_or(|m| m.checksum().to_string() != checksum) {
            return Err(LedgerError::Migration(format!(
                "this database's schema version {version} is not the one this tollgate was built \
                 with (its migration differs); open it with the tollgate that created it"
            )));
        }
    }
    Ok(())
}

/// Applies the pending migrations with foreign keys off, as SQLite's procedure for rebuilding a
/// table requires (`PRAGMA foreign_keys` cannot change inside the migration's transaction), then
/// checks every foreign key before turning them back on: a migration that broke one is refused.
fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    let migrated = migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run(conn)
        .map_err(|e| LedgerError::Migration(e.to_string()));
    let broken: Option<String> = conn
        .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
        .optional()?;
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    migrated?;
    if let Some(table) = broken {
        return Err(LedgerError::Migration(format!(
            "after migrating, a row of {table} refers to a row that does not exist"
        )));
    }
    Ok(())
}

/// An exclusive lock on `<database>.migrate-lock`, held while migrating. The file stays (it is
/// empty); the lock goes with the handle, also when the process dies.
struct MigrationLock {
    _held: std::fs::File,
}

impl MigrationLock {
    fn acquire(database: &Path) -> Result<MigrationLock, LedgerError> {
        let mut name = database.as_os_str().to_owned();
        name.push(".migrate-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|e| {
                LedgerError::Migration(format!(
                    "locking {} to migrate: {e}",
                    Path::new(&name).display()
                ))
            })?;
        Ok(MigrationLock { _held: file })
    }
}

/// Gives a new database its sync incarnation (SYNC.md): a fresh UUIDv7, written once.
fn ensure_identity(conn: &Connection) -> Result<(), LedgerError> {
    let existing: Option<String> = conn
        .query_row(
            "SELECT incarnation FROM agent_identity WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if existing.is_none() {
        conn.execute(
            "INSERT INTO agent_identity (id, incarnation) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
            [uuid::Uuid::now_v7().to_string()],
        )?;
    }
    Ok(())
}
