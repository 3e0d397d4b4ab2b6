//! The database: one connection pool per replica, and migrations.
//!
//! Guarantees:
//! - `migrate` runs refinery's embedded migrations under a PostgreSQL advisory lock, so replicas
//!   started together migrate once, one after the other; running it again is a no-op.
//! - Connections are plain TCP or a Unix socket (no TLS yet): a URL that requires TLS is refused
//!   rather than silently downgraded.
//! - A database whose schema is newer than this build is refused (`check_schema`), with a message
//!   naming both versions: an old binary must not write to books it does not understand.

use anyhow::{Context, anyhow};
use deadpool_postgres::{ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;
use tollgate_schema::postgres::{LATEST_VERSION, migrations};

/// An arbitrary, fixed key for `pg_advisory_lock` while migrating.
const MIGRATION_LOCK_KEY: i64 = 0x746f_6c6c_6761_7465; // "tollgate"

/// A pool of at most `size` connections to `url`, a request waiting at most the default
/// [`crate::config::POOL_WAIT_DEFAULT`] for one. Connections are made lazily.
pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    pool_waiting(url, size, crate::config::POOL_WAIT_DEFAULT)
}

/// A pool of at most `size` connections to `url`; a request that cannot get one within `wait`
/// fails (`PoolError::Timeout`, answered 503 with retry advice) instead of waiting forever.
pub fn pool_waiting(url: &str, size: usize, wait: std::time::Duration) -> anyhow::Result<Pool> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow!("the database URL is not valid ({e})"))?;
    if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(anyhow!(
            "the database URL asks for sslmode=require, but this build connects without TLS: \
             reach PostgreSQL over a Unix socket or a private network (sslmode=disable)"
        ));
    }
    let mut config = deadpool_postgres::Config::new();
    config.user = pg.get_user().map(str::to_owned);
    config.password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    config.dbname = pg.get_dbname().map(str::to_owned);
    config.hosts = Some(
        pg.get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect(),
    );
    config.ports = Some(pg.get_ports().to_vec());
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    config.manager = Some(ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    });
    let mut pool = PoolConfig::new(size);
    pool.timeouts = Timeouts {
        wait: Some(wait),
        create: Some(std::time::Duration::from_secs(5)),
        recycle: Some(std::time::Duration::from_secs(5)),
    };
    config.pool = Some(pool);
    config
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .context("creating the database pool")
}

/// Applies every migration not yet applied, under an advisory lock. Returns the versions applied.
pub async fn migrate(pool: &Pool) -> anyhow::Result<Vec<i32>> {
    let mut conn = pool.get().await.context("connecting to the database")?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("taking the migration lock")?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let result = migrations::runner()
        .set_grouped(true)
        .run_async(client)
        .await;
    // Unlock whatever happened; the session lock would also end with the connection.
    let unlocked = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result.context("running the migrations")?;
    unlocked.context("releasing the migration lock")?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .collect())
}

/// The newest applied schema version (0 when none), refusing a database newer than this build.
pub async fn check_schema(pool: &Pool) -> anyhow::Result<i32> {
    let conn = pool.get().await.context("connecting to the database")?;
    let exists: bool = conn
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL AS present",
            &[],
        )
        .await?
        .get("present");
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = conn
        .query_one(
            "SELECT max(version) AS version FROM refinery_schema_history",
            &[],
        )
        .await?
        .get("version");
    let version = version.unwrap_or(0);
    if version > LATEST_VERSION {
        return Err(anyhow!(
            "the database schema is version {version}, newer than this build ({LATEST_VERSION}): \
             run a newer tollgate-server"
        ));
    }
    Ok(version)
}
