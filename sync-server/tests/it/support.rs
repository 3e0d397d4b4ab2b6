//! Test harness: a fresh, migrated PostgreSQL database per test ([`TestDb`], dropped at the end),
//! the server in-process on a loopback port ([`TestServer`]), or as a real child process
//! ([`spawn_server`], for kill -9).
//!
//! Fresh databases and the server process come from the end-to-end harness (`tollgate_e2e`):
//! one implementation of each, shared with the agent's and the end-to-end tests.

use std::net::SocketAddr;

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

/// The real `tollgate-server serve` as a child process (killed on drop), from the end-to-end
/// harness.
pub fn spawn_server(database_url: &str) -> tollgate_e2e::ServerProcess {
    tollgate_e2e::Server {
        database_url: database_url.to_owned(),
        envs: Vec::new(),
    }
    .start("127.0.0.1:0")
}
