//! The sync benchmark: how fast one `tollgate-server` ingests agents' journals, beside a baseline
//! measured in the same run. BENCHMARKS.md says what is measured, on what machine, and the results.
//!
//! - **ingest**: ten agents push pre-built chains of journal entries (realistic usage entries:
//!   model, provider, tokens, metadata JSON; each user's first entry a purchase) in batches of
//!   1,000, all ten at once over keep-alive HTTP/1.1 to one in-process server on loopback: entries
//!   stored per second. Every entry is hash-checked, chained, inserted once and applied to
//!   balances; the run checks the books after (every seq once, acked = all, balances = the last
//!   balance_after).
//! - **baseline**: the same rows, the same ten-way concurrency, inserted into the same schema (a
//!   fresh database) by bare multi-row INSERTs (one `INSERT … SELECT FROM unnest(…)` per batch of
//!   1,000) straight over tokio-postgres: no HTTP, no JSON, no hash checks, no stream lock, no
//!   balance updates. The ratio ingest / baseline is what the protocol costs.
//! - **lag**: ten agents each commit entries at a steady 100 a second (1,000 a second in all) and
//!   push the way the agent's sync task does (agent/src/sync/task.rs: push whatever is
//!   unacknowledged, at most 1,000 per request, until caught up; then look again after
//!   [`AGENT_PUSH_INTERVAL`]); lag = entry committed → acknowledged by the server; p50/p99/max
//!   over every entry. The interval dominates the lag: it is the agent's choice, not the
//!   server's cost.
//!
//! Ingest and baseline take turns (fresh database each time; the order alternates); the summary
//! is the median. Run: `cargo bench -p tollgate-server --bench sync`. `TOLLGATE_BENCH_ENTRIES`
//! (entries per agent, 20,000), `TOLLGATE_BENCH_TURNS` (3), `TOLLGATE_BENCH_LAG_SECS` (20) change
//! the shape; `TOLLGATE_TEST_PG` names the PostgreSQL (default
//! `postgres://postgres@127.0.0.1:5432/test`). Without `--bench` it does a short smoke run.

// A benchmark, not product code: any failure should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tokio::sync::Mutex;
use tollgate_e2e::Database;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    Canonical, GENESIS_HASH, PROTOCOL_HEADER, PROTOCOL_VERSION, PushRequest, PushResponse,
    WireEntry,
};
use uuid::Uuid;

const AGENTS: usize = 10;
const BATCH: usize = 1_000;
const USERS_PER_AGENT: usize = 100;
/// How long the agent's sync task waits when it has nothing to push (agent/src/sync/task.rs).
const AGENT_PUSH_INTERVAL: Duration = Duration::from_millis(200);
const LAG_RATE_PER_AGENT: u64 = 100;

struct Config {
    entries_per_agent: usize,
    turns: usize,
    lag_secs: u64,
}

impl Config {
    fn from_env(full: bool) -> Config {
        let num = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .map(|v| v.parse::<u64>().expect("a number"))
                .unwrap_or(default)
        };
        if full {
            Config {
                entries_per_agent: num("TOLLGATE_BENCH_ENTRIES", 20_000) as usize,
                turns: num("TOLLGATE_BENCH_TURNS", 3) as usize,
                lag_secs: num("TOLLGATE_BENCH_LAG_SECS", 20),
            }
        } else {
            Config {
                entries_per_agent: 2_000,
                turns: 1,
                lag_secs: 2,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let config = Config::from_env(args.iter().any(|a| a == "--bench"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(config));
}

async fn run(config: Config) {
    eprintln!(
        "sync bench: {AGENTS} agents × {} entries, batches of {BATCH}, {} turns",
        config.entries_per_agent, config.turns
    );
    let agents: Vec<AgentLoad> = (0..AGENTS)
        .map(|i| AgentLoad::build(i, config.entries_per_agent))
        .collect();
    let total = (AGENTS * config.entries_per_agent) as f64;
    let mut ingest = Vec::new();
    let mut baseline = Vec::new();
    for turn in 0..config.turns {
        let order = if turn % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for through_server in order {
            let db = BenchDb::new().await;
            let seconds = if through_server {
                ingest_run(&db, &agents).await
            } else {
                baseline_run(&db, &agents).await
            };
            let rate = total / seconds;
            eprintln!(
                "  turn {turn}: {:<8} {rate:>9.0} entries/s ({seconds:.2} s)",
                if through_server { "ingest" } else { "baseline" }
            );
            if through_server {
                ingest.push(rate)
            } else {
                baseline.push(rate)
            }
        }
    }
    let (i, b) = (median(&mut ingest), median(&mut baseline));
    println!("ingest   (median): {i:.0} entries/s");
    println!("baseline (median): {b:.0} entries/s");
    println!("ratio ingest/baseline: {:.2}", i / b);

    // Reconcile over the books one ingest run left, beside the bare recompute of every balance.
    let db = BenchDb::new().await;
    ingest_run(&db, &agents).await;
    db.pool
        .get()
        .await
        .unwrap()
        .batch_execute("ANALYZE")
        .await
        .unwrap();
    let (mut full, mut bare) = (Vec::new(), Vec::new());
    for turn in 0..config.turns {
        for reconcile in if turn % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let start = Instant::now();
            if reconcile {
                let report = tollgate_server::reconcile::run(&db.pool).await.unwrap();
                assert!(report.ok, "reconcile found differences: {report:?}");
                full.push(start.elapsed().as_secs_f64());
            } else {
                db.pool
                    .get()
                    .await
                    .unwrap()
                    .query(
                        "SELECT user_id, sum(amount) FROM credit_transactions GROUP BY user_id",
                        &[],
                    )
                    .await
                    .unwrap();
                bare.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let (r, b) = (median(&mut full), median(&mut bare));
    println!("reconcile of {total} entries (median): {r:.2} s");
    println!(
        "bare balance recompute (median): {b:.3} s; ratio {:.1}",
        r / b
    );
    drop(db);

    let db = BenchDb::new().await;
    let lags = lag_run(&db, config.lag_secs).await;
    println!(
        "lag at {} entries/s for {} s: {} entries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        AGENTS as u64 * LAG_RATE_PER_AGENT,
        config.lag_secs,
        lags.len(),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        percentile(&lags, 1.0),
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Nearest-rank percentile of millisecond values.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------------
// Entries

/// A chain generator for one simulated agent.
struct Chain {
    agent: usize,
    seq: i64,
    prev: [u8; 32],
    balances: Vec<Credits>,
}

impl Chain {
    fn new(agent: usize) -> Chain {
        Chain {
            agent,
            seq: 0,
            prev: GENESIS_HASH,
            balances: vec![Credits::ZERO; USERS_PER_AGENT],
        }
    }

    fn next(&mut self) -> WireEntry {
        self.seq += 1;
        let user = (self.seq as usize - 1) % USERS_PER_AGENT;
        let user_id = format!("agent{}-user{user}", self.agent);
        let entry_id = Uuid::now_v7().to_string();
        let request_id = format!("req-{}-{}", self.agent, self.seq);
        let first = self.balances[user] == Credits::ZERO;
        let amount: Credits = if first {
            "1000".parse().unwrap()
        } else {
            "-0.000123456".parse().unwrap()
        };
        let before = self.balances[user];
        let after = before.checked_add(amount).unwrap();
        self.balances[user] = after;
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let metadata = r#"{"litellm_call_id":"0193a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b","litellm_response_cost":"0.0000123","price_table_version":3,"usage_estimated":false}"#;
        let canonical = Canonical {
            seq: self.seq,
            entry_id: &entry_id,
            user_id: &user_id,
            transaction_type: if first { "purchase" } else { "usage" },
            amount,
            balance_before: before,
            balance_after: after,
            provider: (!first).then_some("openai"),
            model: (!first).then_some("gpt-4o-mini"),
            prompt_tokens: (!first).then_some(412),
            completion_tokens: (!first).then_some(128),
            cost_per_token: None,
            power_level: (!first).then_some("balanced"),
            is_byok: false,
            payment_method: first.then_some("manual"),
            request_id: (!first).then_some(request_id.as_str()),
            package_id: None,
            metadata: (!first).then_some(metadata),
            notes: None,
            admin_user_id: None,
            idempotency_key: None,
            corrects_entry_id: None,
            created_at: &created_at,
            total_tokens: (!first).then_some(540),
            stripe_payment_intent_id: None,
            stripe_charge_id: None,
            invoice_id: None,
        };
        let hash = canonical.hash(&self.prev);
        let wire = canonical.to_wire(&self.prev, &hash);
        self.prev = hash;
        wire
    }
}

/// One agent's whole load, built before the clock starts: its credential, incarnation, entries
/// and the push bodies (serialized once).
struct AgentLoad {
    index: usize,
    agent_id: Uuid,
    incarnation: Uuid,
    credential: String,
    entries: Vec<WireEntry>,
    bodies: Vec<Vec<u8>>,
}

impl AgentLoad {
    fn build(index: usize, count: usize) -> AgentLoad {
        let incarnation = Uuid::now_v7();
        let mut chain = Chain::new(index);
        let entries: Vec<WireEntry> = (0..count).map(|_| chain.next()).collect();
        let bodies = entries
            .chunks(BATCH)
            .map(|chunk| {
                serde_json::to_vec(&PushRequest {
                    protocol_version: PROTOCOL_VERSION,
                    incarnation: incarnation.to_string(),
                    head_seq: entries.len() as i64,
                    entries: chunk.to_vec(),
                })
                .unwrap()
            })
            .collect();
        AgentLoad {
            index,
            agent_id: Uuid::now_v7(),
            incarnation,
            credential: format!("tga_bench_credential_{index}_{}", Uuid::now_v7().simple()),
            entries,
            bodies,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Database and server

struct BenchDb {
    url: String,
    pool: deadpool_postgres::Pool,
    _database: Database,
}

impl BenchDb {
    /// A fresh, migrated database (dropped with this).
    async fn new() -> BenchDb {
        let database = Database::create().await;
        let pool = tollgate_server::db::pool(&database.url, 16).unwrap();
        tollgate_server::db::migrate(&pool).await.unwrap();
        BenchDb {
            url: database.url.clone(),
            pool,
            _database: database,
        }
    }

    /// Makes each agent's users (those of its chain index) centrally, homed on it, as enrolment
    /// adopts them: the server accepts entries only for users it knows.
    async fn home_users(&self, agents: &[(Uuid, usize)]) {
        let conn = self.pool.get().await.unwrap();
        for (agent_id, chain) in agents {
            for u in 0..USERS_PER_AGENT {
                conn.execute(
                    "INSERT INTO user_credits (user_id, home_agent_id) VALUES ($1, $2)",
                    &[&format!("agent{chain}-user{u}"), agent_id],
                )
                .await
                .unwrap();
            }
        }
    }

    /// Registers the agents as enrolled (credential hashes, their incarnation's stream), as
    /// enrolment would.
    async fn enroll(&self, agents: &[(Uuid, &str, usize, Uuid)]) {
        let conn = self.pool.get().await.unwrap();
        for (agent_id, credential, index, incarnation) in agents {
            conn.execute(
                "INSERT INTO agents (agent_id, name, status, credential_hash, enrolled_at, \
                 incarnation) VALUES ($1, $2, 'active', $3, now(), $4)",
                &[
                    agent_id,
                    &format!("bench-agent-{index}"),
                    &tollgate_server::tokens::hash(credential),
                    incarnation,
                ],
            )
            .await
            .unwrap();
            conn.execute(
                "INSERT INTO agent_streams (agent_id, incarnation) VALUES ($1, $2)",
                &[agent_id, incarnation],
            )
            .await
            .unwrap();
        }
    }
}

/// The server in this process on a loopback port; returns its base URL.
async fn start_server(db: &BenchDb) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = tollgate_server::config::ServerConfig::load(
        Some(db.url.clone()),
        Some("127.0.0.1:0".to_owned()),
        &|_| None,
    )
    .unwrap();
    let state = tollgate_server::http::state(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tollgate_server::http::serve(state, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (format!("http://{addr}"), stop)
}

async fn push(
    client: &reqwest::Client,
    base: &str,
    credential: &str,
    body: Vec<u8>,
) -> PushResponse {
    let response = client
        .post(format!("{base}/v1/sync/push"))
        .bearer_auth(credential)
        .header("content-type", "application/json")
        .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "push answered {status}: {text}");
    serde_json::from_str(&text).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Runs

async fn ingest_run(db: &BenchDb, agents: &[AgentLoad]) -> f64 {
    let enrolled: Vec<_> = agents
        .iter()
        .map(|a| (a.agent_id, a.credential.as_str(), a.index, a.incarnation))
        .collect();
    db.enroll(&enrolled).await;
    let homes: Vec<_> = agents.iter().map(|a| (a.agent_id, a.index)).collect();
    db.home_users(&homes).await;
    let (base, stop) = start_server(db).await;
    let client = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = agents
        .iter()
        .map(|a| {
            let (client, base) = (client.clone(), base.clone());
            let credential = a.credential.clone();
            let bodies = a.bodies.clone();
            let expected = a.entries.len() as i64;
            tokio::spawn(async move {
                let mut acked = 0;
                for body in bodies {
                    acked = push(&client, &base, &credential, body).await.acked_seq;
                }
                assert_eq!(acked, expected);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    check_books(db, agents).await;
    seconds
}

/// Every seq once, every stream fully acknowledged, every balance = the last balance_after.
async fn check_books(db: &BenchDb, agents: &[AgentLoad]) {
    let conn = db.pool.get().await.unwrap();
    for a in agents {
        let row = conn
            .query_one(
                "SELECT count(*), count(DISTINCT seq), COALESCE(max(seq), 0) \
                 FROM credit_transactions WHERE agent_id = $1",
                &[&a.agent_id],
            )
            .await
            .unwrap();
        let n = a.entries.len() as i64;
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            ),
            (n, n, n)
        );
        let acked: i64 = conn
            .query_one(
                "SELECT acked_seq FROM agent_streams WHERE agent_id = $1",
                &[&a.agent_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(acked, n);
        for entry in a.entries.iter().rev().take(USERS_PER_AGENT) {
            let balance: Decimal = conn
                .query_one(
                    "SELECT balance FROM user_credits WHERE user_id = $1",
                    &[&entry.user_id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(balance, entry.balance_after.to_decimal());
        }
    }
}

async fn baseline_run(db: &BenchDb, agents: &[AgentLoad]) -> f64 {
    // The same users and streams exist first (the journal's foreign keys need them).
    let enrolled: Vec<_> = agents
        .iter()
        .map(|a| (a.agent_id, a.credential.as_str(), a.index, a.incarnation))
        .collect();
    db.enroll(&enrolled).await;
    {
        let conn = db.pool.get().await.unwrap();
        for a in agents {
            for u in 0..USERS_PER_AGENT {
                conn.execute(
                    "INSERT INTO user_credits (user_id, home_agent_id) VALUES ($1, $2)",
                    &[&format!("agent{}-user{u}", a.index), &a.agent_id],
                )
                .await
                .unwrap();
            }
        }
    }
    let start = Instant::now();
    let tasks: Vec<_> = agents
        .iter()
        .map(|a| {
            let pool = db.pool.clone();
            let (agent_id, incarnation) = (a.agent_id, a.incarnation);
            let batches: Vec<Vec<WireEntry>> = a.entries.chunks(BATCH).map(<[_]>::to_vec).collect();
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                let stmt = conn.prepare(BASELINE_INSERT).await.unwrap();
                for batch in batches {
                    let cols = Columns::of(&batch);
                    conn.execute(
                        &stmt,
                        &[
                            &cols.entry_id,
                            &agent_id,
                            &incarnation,
                            &cols.seq,
                            &cols.user_id,
                            &cols.kind,
                            &cols.amount,
                            &cols.before,
                            &cols.after,
                            &cols.provider,
                            &cols.model,
                            &cols.prompt,
                            &cols.completion,
                            &cols.total,
                            &cols.level,
                            &cols.payment,
                            &cols.request,
                            &cols.metadata,
                            &cols.prev,
                            &cols.hash,
                            &cols.created,
                        ],
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed().as_secs_f64()
}

const BASELINE_INSERT: &str = "INSERT INTO credit_transactions (entry_id, agent_id, incarnation, \
     seq, user_id, transaction_type, amount, balance_before, balance_after, provider, model, \
     prompt_tokens, completion_tokens, total_tokens, power_level, is_byok, payment_method, \
     request_id, metadata, prev_hash, hash, created_at) \
     SELECT e, $2, $3, s, u, k, a, b, af, p, m, pt, ct, tt, l, false, pm, r, md, ph, h, c \
     FROM unnest($1::uuid[], $4::bigint[], $5::text[], $6::text[], $7::numeric[], \
     $8::numeric[], $9::numeric[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], \
     $14::bigint[], $15::text[], $16::text[], $17::text[], $18::text[], $19::bytea[], \
     $20::bytea[], $21::text[]) AS t(e, s, u, k, a, b, af, p, m, pt, ct, tt, l, pm, r, md, ph, h, c)";

/// A batch as column arrays (parameters of the baseline's one INSERT).
struct Columns {
    entry_id: Vec<Uuid>,
    seq: Vec<i64>,
    user_id: Vec<String>,
    kind: Vec<String>,
    amount: Vec<Decimal>,
    before: Vec<Decimal>,
    after: Vec<Decimal>,
    provider: Vec<Option<String>>,
    model: Vec<Option<String>>,
    prompt: Vec<Option<i64>>,
    completion: Vec<Option<i64>>,
    total: Vec<Option<i64>>,
    level: Vec<Option<String>>,
    payment: Vec<Option<String>>,
    request: Vec<Option<String>>,
    metadata: Vec<Option<String>>,
    prev: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
    created: Vec<String>,
}

impl Columns {
    fn of(batch: &[WireEntry]) -> Columns {
        let hex = |h: &str| hex::decode(h).unwrap();
        Columns {
            entry_id: batch.iter().map(|e| e.entry_id.parse().unwrap()).collect(),
            seq: batch.iter().map(|e| e.seq).collect(),
            user_id: batch.iter().map(|e| e.user_id.clone()).collect(),
            kind: batch.iter().map(|e| e.transaction_type.clone()).collect(),
            amount: batch.iter().map(|e| e.amount.to_decimal()).collect(),
            before: batch
                .iter()
                .map(|e| e.balance_before.to_decimal())
                .collect(),
            after: batch.iter().map(|e| e.balance_after.to_decimal()).collect(),
            provider: batch.iter().map(|e| e.provider.clone()).collect(),
            model: batch.iter().map(|e| e.model.clone()).collect(),
            prompt: batch
                .iter()
                .map(|e| e.prompt_tokens.map(i64::from))
                .collect(),
            completion: batch
                .iter()
                .map(|e| e.completion_tokens.map(i64::from))
                .collect(),
            total: batch.iter().map(|e| e.total_tokens).collect(),
            level: batch.iter().map(|e| e.power_level.clone()).collect(),
            payment: batch.iter().map(|e| e.payment_method.clone()).collect(),
            request: batch.iter().map(|e| e.request_id.clone()).collect(),
            metadata: batch.iter().map(|e| e.metadata.clone()).collect(),
            prev: batch.iter().map(|e| hex(&e.prev_hash)).collect(),
            hash: batch.iter().map(|e| hex(&e.hash)).collect(),
            created: batch.iter().map(|e| e.created_at.clone()).collect(),
        }
    }
}

/// Steady load: each agent commits LAG_RATE_PER_AGENT entries a second and pushes like the
/// agent's sync task. Returns every entry's lag in milliseconds.
async fn lag_run(db: &BenchDb, secs: u64) -> Vec<f64> {
    let agents: Vec<(Uuid, String, usize, Uuid)> = (0..AGENTS)
        .map(|i| {
            (
                Uuid::now_v7(),
                format!("tga_lag_{i}_{}", Uuid::now_v7().simple()),
                i,
                Uuid::now_v7(),
            )
        })
        .collect();
    let enrolled: Vec<_> = agents
        .iter()
        .map(|(id, c, i, inc)| (*id, c.as_str(), *i, *inc))
        .collect();
    db.enroll(&enrolled).await;
    let homes: Vec<_> = agents.iter().map(|(id, _, i, _)| (*id, *i + 100)).collect();
    db.home_users(&homes).await;
    let (base, stop) = start_server(db).await;
    let client = reqwest::Client::new();
    let per_agent = (secs * LAG_RATE_PER_AGENT) as usize;
    let mut tasks = Vec::new();
    for (_, credential, index, incarnation) in agents {
        // The agent's journal: entries with their commit instants; the pusher sends what is
        // unacknowledged.
        let journal: Arc<Mutex<Vec<(WireEntry, Instant)>>> = Arc::default();
        let producer = {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut chain = Chain::new(index + 100);
                let mut tick =
                    tokio::time::interval(Duration::from_millis(1_000 / LAG_RATE_PER_AGENT));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for _ in 0..per_agent {
                    tick.tick().await;
                    let entry = chain.next();
                    journal.lock().await.push((entry, Instant::now()));
                }
            })
        };
        let (client, base) = (client.clone(), base.clone());
        let incarnation = incarnation.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = 0usize;
            let mut lags = Vec::with_capacity(per_agent);
            while acked < per_agent {
                let (batch, head): (Vec<WireEntry>, i64) = {
                    let j = journal.lock().await;
                    let end = j.len().min(acked + BATCH);
                    (
                        j[acked..end].iter().map(|(e, _)| e.clone()).collect(),
                        j.len() as i64,
                    )
                };
                if batch.is_empty() {
                    // Caught up: like the agent's push loop, look again after the interval.
                    tokio::time::sleep(AGENT_PUSH_INTERVAL).await;
                    continue;
                }
                let body = serde_json::to_vec(&PushRequest {
                    protocol_version: PROTOCOL_VERSION,
                    incarnation: incarnation.clone(),
                    head_seq: head,
                    entries: batch,
                })
                .unwrap();
                let response = push(&client, &base, &credential, body).await;
                let now = Instant::now();
                let new_acked = response.acked_seq as usize;
                let j = journal.lock().await;
                for (_, committed) in &j[acked..new_acked] {
                    lags.push((now - *committed).as_secs_f64() * 1_000.0);
                }
                acked = new_acked;
            }
            producer.await.unwrap();
            lags
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let _ = stop.send(());
    all
}
