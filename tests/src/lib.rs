//! The end-to-end harness: the real `tollgate` and `tollgate-server` binaries as child processes,
//! a fresh PostgreSQL database per test, the mock LLM upstream and a mock Stripe API, all on
//! loopback; for fault injection, a PostgreSQL cluster of the test's own ([`cluster`]) and a
//! TCP proxy that partitions an agent from the server ([`proxy`]).
//!
//! The binaries are the ones cargo built for this workspace (next to this test's own executable,
//! in `target/<profile>/`): run the suite with `cargo nextest run --workspace` (the README's test
//! command), which builds both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};

pub mod cluster;
pub mod promtool;
pub mod proxy;
use serde_json::Value;

/// A built workspace binary by name.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the end-to-end tests with `cargo nextest run --workspace`",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A fresh database, dropped (with its connections) when this is dropped. Not migrated: the
/// end-to-end test runs `tollgate-server migrate` like an operator would; the server's own tests
/// and its benchmark wrap this and migrate through the library. The PostgreSQL to use:
/// `TOLLGATE_TEST_PG` (a URL of a database allowed to create others), default
/// `postgres://postgres@127.0.0.1:5432/test`.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl Database {
    pub async fn create() -> Database {
        let admin_url = std::env::var("TOLLGATE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!("tg_test_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .expect("connects to PostgreSQL (set TOLLGATE_TEST_PG)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').unwrap().0;
        let url = format!("{base}/{name}");
        Database {
            name,
            url,
            admin_url,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion, with `stdin` fed if given.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Starts `cmd` with its output piped and `input` written to its stdin, which is then closed
/// (inputs here are small: they fit the pipe before the child has to be read).
pub fn spawn_with_stdin(mut cmd: Command, input: &[u8]) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: Command, stdin: Option<&str>) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first whitespace-separated word of `text` starting with `prefix`.
pub fn word_with_prefix(text: &str, prefix: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}… in {text:?}"))
        .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-')
        .to_owned()
}

/// The central server.
#[derive(Debug)]
pub struct Server {
    pub database_url: String,
    pub envs: Vec<(String, String)>,
}

impl Server {
    /// The server for `db`, migrated (`tollgate-server migrate`, as an operator would).
    pub fn migrated(db: &Database) -> Server {
        let server = Server {
            database_url: db.url.clone(),
            envs: Vec::new(),
        };
        server.ok(&["migrate"]);
        server
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("tollgate-server"));
        cmd.args(args).env("DATABASE_URL", &self.database_url);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.command(args), None)
    }

    /// Makes `user` centrally, homed on agent `home` at `tier`, with an API key; returns the key
    /// (printed once by `users api-key create --json`).
    pub fn user_with_key(&self, user: &str, home: &str, tier: &str) -> String {
        self.ok(&["users", "set", user, "--home", home, "--tier", tier]);
        let made: Value = serde_json::from_str(&self.ok(&[
            "users", "api-key", "create", user, "--name", "e2e", "--json",
        ]))
        .unwrap();
        made["key"].as_str().unwrap().to_owned()
    }

    /// `serve --listen ADDR` (its admin listener on port 0: several servers run at once),
    /// waiting for its "listening on" line.
    pub fn serve(&self, listen: &str) -> (Process, SocketAddr) {
        let started = self.start(listen);
        (started.process, started.addr)
    }

    /// As [`Server::serve`], also returning the admin listener's address (`/metrics`).
    pub fn serve_with_admin(&self, listen: &str) -> (Process, SocketAddr, SocketAddr) {
        let started = self.start(listen);
        (started.process, started.addr, started.admin_addr)
    }

    /// `serve --listen ADDR --admin-listen 127.0.0.1:0`, waiting for the two lines that name the
    /// listeners' addresses.
    pub fn start(&self, listen: &str) -> ServerProcess {
        let mut cmd = self.command(&["serve", "--listen", listen, "--admin-listen", "127.0.0.1:0"]);
        cmd.env("TOLLGATE_SERVER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut read_addr = |prefix: &str| -> SocketAddr {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .parse()
                .unwrap()
        };
        let addr = read_addr("tollgate-server listening on ");
        let admin_addr = read_addr("tollgate-server admin listening on ");
        std::thread::spawn(move || for _ in lines {});
        ServerProcess {
            process: Process(child),
            addr,
            admin_addr,
        }
    }
}

/// A running `tollgate-server serve` (killed on drop) and its two listeners.
#[derive(Debug)]
pub struct ServerProcess {
    pub process: Process,
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/readyz`, `/healthz`).
    pub admin_addr: SocketAddr,
}

impl ServerProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// One agent: its data dir, and its gateway once started.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    dir: tempfile::TempDir,
}

impl Agent {
    pub fn init(name: &str) -> Agent {
        let agent = Agent {
            name: name.to_owned(),
            dir: tempfile::tempdir().unwrap(),
        };
        agent.ok(&["init"]);
        agent
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command ready to run against this data dir, with no inherited tollgate environment
    /// (data dir, config file, master keys) and stdin closed unless the caller sets it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("tollgate"));
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("TOLLGATE_CONFIG")
            .env_remove("TOLLGATE_DATA_DIR")
            .env_remove("TOLLGATE_MASTER_KEY")
            .env_remove("TOLLGATE_NEW_MASTER_KEY")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `tollgate ARGS` to completion, whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.command(args), None)
    }

    /// Runs `tollgate ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.command(args), None)
    }

    /// `tollgate verify --json`, asserting the books are clean; the report.
    pub fn assert_verified(&self) -> Value {
        let out = self.run(&["--json", "verify"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "verify failed: {report:#}");
        assert_eq!(report["violations"], serde_json::json!([]));
        report
    }

    /// `user`'s balance as `credits balance` prints it.
    pub fn balance(&self, user: &str) -> String {
        self.json(&["credits", "balance", user])["balance"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// `tollgate serve` on port 0 in front of `upstream`; returns the gateway's base URL.
    pub fn serve(&self, upstream: &str) -> (Process, String) {
        self.serve_with(upstream, &[])
    }

    /// As [`Agent::serve`], with more environment (a clock skew, say).
    pub fn serve_with(&self, upstream: &str, envs: &[(&str, &str)]) -> (Process, String) {
        let gateway = self.start_gateway(upstream, envs);
        (gateway.process, gateway.url)
    }

    /// `tollgate serve` with its API and admin listeners on port 0 (many gateways run at once
    /// on one machine), in front of `upstream`; waits for the line that names both addresses.
    pub fn start_gateway(&self, upstream: &str, envs: &[(&str, &str)]) -> Gateway {
        let mut child = self
            .command(&["serve", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(["--admin-listen", "127.0.0.1:0"])
            .envs(envs.iter().copied())
            .env("TOLLGATE_UPSTREAM_KEY", "sk-litellm-e2e")
            .env("TOLLGATE_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let (addr, admin) = loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            if let Ok(log) = serde_json::from_str::<Value>(&line)
                && let Some(listen) = log["fields"]["listen"].as_str()
            {
                let admin = log["fields"]["admin_listen"].as_str().unwrap();
                break (listen.to_owned(), admin.to_owned());
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Gateway {
            process: Process(child),
            url: format!("http://{addr}"),
            admin_url: format!("http://{admin}"),
        }
    }
}

/// A running `tollgate serve`.
#[derive(Debug)]
pub struct Gateway {
    pub process: Process,
    /// The API listener's base URL (clients).
    pub url: String,
    /// The admin listener's base URL (`/metrics`, `/readyz`, `/healthz`).
    pub admin_url: String,
}

/// `n` agents named `edge-0`…, each enrolled with `server` (at `base`) and serving in front of
/// `upstream`: the agents and their gateways (process, base URL).
pub fn enrolled_gateways(
    server: &Server,
    base: &str,
    upstream: &str,
    n: usize,
) -> (Vec<Agent>, Vec<(Process, String)>) {
    let mut agents = Vec::with_capacity(n);
    let mut gateways = Vec::with_capacity(n);
    for a in 0..n {
        let agent = Agent::init(&format!("edge-{a}"));
        let token = word_with_prefix(&server.ok(&["agents", "enroll", &agent.name]), "tge_");
        ok(
            agent.command(&["enroll", "--server", base, "--token", "-"]),
            Some(&token),
        );
        gateways.push(agent.serve(upstream));
        agents.push(agent);
    }
    (agents, gateways)
}

/// One small metered chat (`gpt-4o-mini`, at most 100 tokens out, the mock answers 40) with
/// `key` at `gateway`: its status, or 0 when the gateway did not answer.
pub async fn small_chat(client: &reqwest::Client, gateway: &str, key: &str, n: u64) -> u16 {
    small_chat_answer(client, gateway, key, n).await.0
}

/// As [`small_chat`], with the answer's body (JSON; `Null` when there was none).
pub async fn small_chat_answer(
    client: &reqwest::Client,
    gateway: &str,
    key: &str,
    n: u64,
) -> (u16, Value) {
    let sent = client
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(
            &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 100,
            "messages": [{"role": "user", "content": format!("{n} mock:tokens=40")}]}),
        )
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

// ---------------------------------------------------------------------------------------------
// A mock Stripe API

/// Answers `POST /v1/checkout/sessions` with a new `cs_test_…` session and records the forms.
#[derive(Debug, Clone)]
pub struct MockStripe {
    pub url: String,
    pub forms: Arc<Mutex<Vec<String>>>,
}

impl MockStripe {
    pub async fn start() -> MockStripe {
        let forms: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = forms.clone();
        let app = axum::Router::new().route(
            "/v1/checkout/sessions",
            axum::routing::post(move |body: String| {
                let recorded = recorded.clone();
                async move {
                    let n = {
                        let mut forms = recorded.lock().unwrap();
                        forms.push(body);
                        forms.len()
                    };
                    axum::Json(serde_json::json!({
                        "id": format!("cs_test_{n}"),
                        "object": "checkout.session",
                        "url": format!("https://checkout.stripe.test/c/pay/cs_test_{n}"),
                        "payment_status": "unpaid",
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        MockStripe { url, forms }
    }
}

/// A `Stripe-Signature` header for `body` signed with `secret` at unix time `t`.
pub fn stripe_signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `limit`. For waiting on
/// a state another process reaches (convergence), not for pacing.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
