//! The fleet benchmark (issue 11): escrow across ten agents. BENCHMARKS.md says what is measured,
//! on what machine, and the results.
//!
//! - **grants**: ten agents (enrolled over HTTP, protocol 3) ask one `tollgate-server` for grants
//!   of one fleet user's pool as fast as they can, all at once, for [`GRANT_SECS`]: grants issued
//!   per second. Each grant is validated, sized, taken from the pool under the user row's lock,
//!   recorded as an operation and written to the agent's inbox.
//! - **baseline**: the same ten-way concurrency doing only the grant's writes (pool update,
//!   operation row, inbox counter and event) in one transaction each, straight over
//!   tokio-postgres on a fresh database: no HTTP, no auth, no JSON, no idempotency check, no
//!   sizing. The ratio grants / baseline is what the grant protocol costs over its bare writes.
//! - **spend**: ten real agents (`tollgate serve`, each with its sync and escrow loops) serve one
//!   fleet user, two clients per agent, demand above the pool (each client goes on until refused
//!   for three seconds): the share of the pool spent across the fleet (target ≥ 90 %), what was
//!   spent beyond it (must be 0), grants issued, and the top-up latency as clients saw it: how
//!   long a client that was refused while the pool still held credit waited for its next served
//!   request (the escrow loop asks ahead of need, so most clients never see one).
//!
//! Run: `cargo build --release -p tollgate -p tollgate-server && cargo bench -p tollgate-e2e
//! --bench fleet` (the benchmark runs the release binaries). `TOLLGATE_TEST_PG` names the
//! PostgreSQL (default `postgres://postgres@127.0.0.1:5432/test`).

// A benchmark, not product code: any failure should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::Value;
use tokio::sync::Mutex;
use tollgate_e2e::{Database, Process, Server, small_chat, word_with_prefix};
use tollgate_mock_upstream::MockUpstream;
use tollgate_schema::wire::{
    EnrollRequest, EnrollResponse, GrantRequest, GrantResponse, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use uuid::Uuid;

const AGENTS: usize = 10;
const GRANT_SECS: u64 = 10;
const CLIENTS_PER_AGENT: usize = 2;
/// The pool of the spend phase: a few thousand requests' worth.
const SPEND_POOL: &str = "1";
const GIVE_UP_AFTER: Duration = Duration::from_secs(3);

fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(PROTOCOL_HEADER, PROTOCOL_VERSION.into());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn server(db: &Database) -> (Server, Process, String) {
    let server = Server::migrated(db);
    let (process, addr) = server.serve("127.0.0.1:0");
    (server, process, format!("http://{addr}"))
}

/// Grants per second from ten simulated agents asking at once.
async fn grants_per_second() -> (f64, u64) {
    let db = Database::create().await;
    let (server, _process, base) = server(&db).await;
    server.ok(&["users", "set", "ann"]);
    server.ok(&[
        "credits",
        "grant",
        "ann",
        "1000000",
        "--operation-id",
        "fund",
    ]);
    let client = http();
    let mut credentials = Vec::new();
    for a in 0..AGENTS {
        let token = word_with_prefix(
            &server.ok(&["agents", "enroll", &format!("sim-{a}")]),
            "tge_",
        );
        let enrolled: EnrollResponse = client
            .post(format!("{base}/v1/agents/enroll"))
            .json(&EnrollRequest {
                protocol_version: PROTOCOL_VERSION,
                token,
                incarnation: Uuid::now_v7().to_string(),
                users: Vec::new(),
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        credentials.push(enrolled.credential);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(GRANT_SECS);
    let started = Instant::now();
    let tasks: Vec<_> = credentials
        .into_iter()
        .map(|credential| {
            let (client, base, issued) = (client.clone(), base.clone(), issued.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let answer: GrantResponse = client
                        .post(format!("{base}/v1/escrow/grants"))
                        .bearer_auth(&credential)
                        .json(&GrantRequest {
                            protocol_version: PROTOCOL_VERSION,
                            request_id: Uuid::now_v7().simple().to_string(),
                            user_id: "ann".to_owned(),
                            want: "0.001".parse().unwrap(),
                            worst_case: "0.001".parse().unwrap(),
                        })
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert!(answer.grant.is_some());
                    issued.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = issued.load(Ordering::Relaxed);
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

/// The grant's bare writes per second, ten at once, on a fresh database.
async fn baseline_per_second() -> f64 {
    let db = Database::create().await;
    let (server, _process, _) = server(&db).await;
    server.ok(&["users", "set", "ann"]);
    server.ok(&[
        "credits",
        "grant",
        "ann",
        "1000000",
        "--operation-id",
        "fund",
    ]);
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let out = server.ok(&["agents", "enroll", &format!("sim-{a}"), "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        agents.push(v["agent_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(GRANT_SECS);
    let started = Instant::now();
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|agent| {
            let (url, done) = (db.url.clone(), done.clone());
            tokio::spawn(async move {
                let (mut pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let amount = Decimal::new(1, 3);
                while Instant::now() < deadline {
                    let tx = pg.transaction().await.unwrap();
                    let key = format!("grant:{agent}:{}", Uuid::now_v7().simple());
                    tx.execute(
                        "UPDATE user_credits SET pool = pool - $2 WHERE user_id = $1",
                        &[&"ann", &amount],
                    )
                    .await
                    .unwrap();
                    tx.execute(
                        "INSERT INTO central_operations (operation_key, kind, fingerprint, \
                         user_id, amount, agent_id, result, actor) \
                         VALUES ($1, 'credit', $2, 'ann', $3, $4, '{}'::jsonb, 'bench')",
                        &[&key, &vec![0u8; 32], &amount, &agent],
                    )
                    .await
                    .unwrap();
                    let seq: i64 = tx
                        .query_one(
                            "UPDATE agents SET inbox_head = inbox_head + 1 WHERE agent_id = $1 \
                             RETURNING inbox_head",
                            &[&agent],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    tx.execute(
                        "INSERT INTO agent_inbox (agent_id, seq, event_id, kind, body, \
                         operation_key) VALUES ($1, $2, $3, 'escrow_grant', '{}'::jsonb, $4)",
                        &[&agent, &seq, &Uuid::now_v7(), &key],
                    )
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Spend {
    served: AtomicU64,
    refused: AtomicU64,
    /// How long each refusal streak that ended in a served request lasted (a top-up).
    top_ups: Mutex<Vec<Duration>>,
}

async fn spend_client(url: String, key: String, spend: Arc<Spend>, go: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let mut refused_since: Option<Instant> = None;
    let mut n = 0;
    while !go.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    loop {
        n += 1;
        match small_chat(&client, &url, &key, n).await {
            200 => {
                spend.served.fetch_add(1, Ordering::Relaxed);
                if let Some(since) = refused_since.take() {
                    spend.top_ups.lock().await.push(since.elapsed());
                }
            }
            _ => {
                spend.refused.fetch_add(1, Ordering::Relaxed);
                let since = *refused_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GIVE_UP_AFTER {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

/// Ten real agents spending one fleet user's pool.
async fn spend() {
    let db = Database::create().await;
    let (server, _process, base) = server(&db).await;
    let upstream = MockUpstream::spawn().await.unwrap();
    let (agents, gateways) =
        tollgate_e2e::enrolled_gateways(&server, &base, &upstream.url(), AGENTS);
    server.ok(&["users", "set", "ann", "--tier", "professional"]);
    let key: Value = serde_json::from_str(&server.ok(&[
        "users", "api-key", "create", "ann", "--name", "bench", "--json",
    ]))
    .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    server.ok(&[
        "credits",
        "grant",
        "ann",
        SPEND_POOL,
        "--operation-id",
        "fund",
    ]);
    let client = reqwest::Client::new();
    for (_, url) in &gateways {
        while small_chat(&client, url, &key, 0).await == 401 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let spend = Arc::new(Spend::default());
    let go = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = gateways
        .iter()
        .flat_map(|(_, url)| {
            (0..CLIENTS_PER_AGENT).map(|_| {
                tokio::spawn(spend_client(
                    url.clone(),
                    key.clone(),
                    spend.clone(),
                    go.clone(),
                ))
            })
        })
        .collect();
    let started = Instant::now();
    go.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let ran = started.elapsed();
    for agent in &agents {
        for _ in 0..20 {
            agent.ok(&["sync", "now"]);
            let s = agent.json(&["sync", "status"]);
            if s["head_seq"] == s["acked_seq"] {
                break;
            }
        }
    }
    let shown: Value =
        serde_json::from_str(&server.ok(&["users", "show", "ann", "--json"])).unwrap();
    let given: Decimal = SPEND_POOL.parse().unwrap();
    let spent = dec(&shown["credits_used_this_month"]);
    let stranded = dec(&shown["pool"]) + dec(&shown["balance"]);
    let pg = db.client().await;
    let grants: i64 = pg
        .query_one(
            "SELECT count(*) FROM central_operations WHERE operation_key LIKE 'grant:%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut top_ups = spend.top_ups.lock().await.clone();
    top_ups.sort();
    let pct = |p: usize| {
        top_ups
            .get((top_ups.len() * p / 100).min(top_ups.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let reconcile = tollgate_e2e::run(server.command(&["reconcile"]), None);
    eprintln!(
        "spend: {AGENTS} agents × {CLIENTS_PER_AGENT} clients, {:.1} s: {} served, {} refused; \
         {grants} grants ({:.1}/s); spent {spent} of {given} = {:.1} % (overspend {}), stranded \
         {stranded}; top-ups seen by clients: {} (p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; the \
         escrow loop looks every 250 ms); reconcile {}",
        ran.as_secs_f64(),
        spend.served.load(Ordering::Relaxed),
        spend.refused.load(Ordering::Relaxed),
        grants as f64 / ran.as_secs_f64(),
        spent / given * Decimal::from(100),
        (spent - given).max(Decimal::ZERO),
        top_ups.len(),
        pct(50),
        pct(99),
        top_ups.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        if reconcile.status.success() {
            "clean"
        } else {
            "DIFFERENCES"
        },
    );
    assert!(spent <= given, "overspent");
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if !full {
            eprintln!("fleet bench: smoke run skipped (run with cargo bench)");
            return;
        }
        let (grants, n) = grants_per_second().await;
        let baseline = baseline_per_second().await;
        eprintln!(
            "grants: {grants:.0}/s ({n} in {GRANT_SECS} s, {AGENTS} agents at once); baseline \
             (bare writes): {baseline:.0}/s; ratio {:.2}",
            grants / baseline
        );
        spend().await;
    });
}
