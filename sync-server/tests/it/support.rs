//! Test harness: a fresh, migrated PostgreSQL database per test ([`TestDb`], dropped at the end),
//! the server in-process on a loopback port ([`TestServer`]), or as a real child process
//! ([`ServerProcess`], for kill -9).
//!
//! Fresh databases come from the end-to-end harness (`tollgate_e2e::Database`): one
//! implementation of create-and-drop, configured by `TOLLGATE_TEST_PG`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use tollgate_e2e::Database;
use tollgate_server::config::ServerConfig;
use tollgate_server::http::AppState;

/// A fresh database, migrated; dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub pool: Pool,
    _database: Database,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        tollgate_server::db::migrate(&db.pool)
            .await
            .expect("migrates");
        db
    }

    /// A fresh database with no schema (for migration tests).
    pub async fn empty() -> TestDb {
        let database = Database::create().await;
        let pool = tollgate_server::db::pool(&database.url, 8).expect("pool");
        TestDb {
            url: database.url.clone(),
            pool,
            _database: database,
        }
    }

    /// A server config for this database (Stripe unset; tests that need it fill it in).
    pub fn config(&self) -> ServerConfig {
        ServerConfig::load(
            Some(self.url.clone()),
            Some("127.0.0.1:0".to_owned()),
            &|_| None,
        )
        .expect("config")
    }
}

/// The server running in this process on a loopback port; stopped when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> TestServer {
        let state = tollgate_server::http::state(config).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let serve_state = state.clone();
        let task = tokio::spawn(async move {
            tollgate_server::http::serve(serve_state, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serves");
        });
        TestServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, finishes requests in flight, and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real `tollgate-server serve` as a child process (killed on drop).
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/readyz`, `/healthz`).
    pub admin_addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `tollgate-server serve` with both listeners on port 0 and waits for the lines that
    /// name their addresses.
    pub fn spawn(database_url: &str, envs: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-server"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", database_url)
        .env("TOLLGATE_SERVER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawns tollgate-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut read_addr = |prefix: &str| -> SocketAddr {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("reads a listening line");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .parse()
                .expect("an address")
        };
        let addr = read_addr("tollgate-server listening on ");
        let admin_addr = read_addr("tollgate-server admin listening on ");
        ServerProcess {
            child,
            addr,
            admin_addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
