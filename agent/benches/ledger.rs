//! The ledger benchmark: durable metered requests per second through [`Ledger::apply`], beside a
//! raw-SQL baseline measured in the same run. BENCHMARKS.md (repo root) says what is measured, why,
//! on what machine, and what the numbers mean.
//!
//! One metered request = a hold, then its settle (usage journal entry, lot burn, usage row).
//! Both sides do 100 requests as two group-committed transactions (100 holds, then their 100
//! settles), WAL and `synchronous=FULL` (the connection comes from `ledger::db::open`):
//!
//! - **ledger**: `Ledger::apply(&[Op::Hold; 100])`, then `Ledger::apply(&[Op::Settle; 100])`.
//! - **baseline**: the very statements the ledger issues for those requests (from
//!   `tollgate::ledger::sql`: `HOLD_PATH` and `SETTLE_PATH`, which a ledger test pins by tracing
//!   the ledger; this file replays them in that order by hand), prepared once
//!   and executed straight through rusqlite with precomputed parameters: no validation, no
//!   statement cache, no hashing (a unique constant-time stand-in), no UUIDs (counter strings).
//! - **baseline + original indexes**: the baseline with the seven `llm_usage_log` indexes of the
//!   original schema that V1 dropped, to show what dropping them bought.
//! - **baseline + savepoints**: the baseline with a SAVEPOINT / RELEASE around each operation,
//!   which the ledger issues only when it retries a batch in which an operation failed: what that
//!   slower path costs.
//!
//! Each round gives every side a fresh copy of one seeded file (1,000 users with purchased
//! credit) in a temporary directory under the target directory, i.e. on the repository's
//! filesystem, and advances the sides in turns of 1,000 requests, the order changing every turn,
//! so each side meets the same machine conditions (this VM's speed drifts by tens of percent over
//! seconds). A side's rate is its requests over the summed wall time of its transactions. The
//! headline is the median requests/s per side over the rounds and the ratio ledger / baseline.
//! After each round all sides' books are compared (row counts and balance sums must match), so no
//! baseline can quietly do less work, and the ledger's file must pass `Ledger::verify`.
//!
//! Run: `cargo bench -p tollgate --bench ledger`. `LEDGER_BENCH_ROUNDS`, `LEDGER_BENCH_REQUESTS`
//! and `LEDGER_BENCH_TURN` override 5 rounds of 10,000 requests in turns of 1,000. Without
//! `--bench`, as under `cargo test --benches`, it does a tiny smoke run; asked to `--list` (test
//! discovery), it lists nothing.

// A benchmark, not product code: any failure should abort loudly, so unwrap/expect are the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::Null;
use rusqlite::{Connection, OptionalExtension, Statement, params};
use time::OffsetDateTime;
use tollgate::ledger::clock::to_text;
use tollgate::ledger::{
    AddCredits, CreditKind, HOLD_TTL_DEFAULT, HoldRequest, Ledger, NewUser, Op, OpenMode,
    PowerLevel, Settle, SystemClock, UsageRecord, db, sql,
};
use tollgate_schema::money::Credits;

/// Requests per group commit (each request is one hold and one settle operation).
const BATCH: usize = 100;
/// Credit each user starts with: far more than any run spends.
const START_CREDITS: i64 = 1_000;
/// What a hold reserves: 0.05 credits.
const HOLD_NANOS: i64 = 50_000_000;
/// What a settle charges: 0.012345 credits (less than the hold, as usual).
const COST_NANOS: i64 = 12_345_000;

// One realistic chat completion, the same on both sides.
const ENDPOINT: &str = "/v1/chat/completions";
const MODEL: &str = "gpt-4o-mini";
const PROVIDER: &str = "openai";
const PROMPT_TOKENS: u32 = 812;
const COMPLETION_TOKENS: u32 = 236;
const COST_PER_TOKEN: &str = "0.0000117796";
const LATENCY_MS: u32 = 1_840;
const TTFT_MS: u32 = 320;
const TOKENS_PER_SECOND: f64 = 128.3;
const HTTP_STATUS: u16 = 200;
const APP_ID: &str = "chat-ui";
const USER_AGENT: &str = "OpenAI/Python 1.54.4";
const CLIENT_IP: &str = "10.0.3.17";
const METADATA: &str = r#"{"litellm_call_id":"9f3c2a1e-5b7d-4e8f-a0c1-2d3e4f5a6b7c","reported_cost":0.012345,"price_table":"2026-01","estimated":false}"#;

/// The `llm_usage_log` indexes of the original schema (SCHEMA.md: eleven) that V1 does not keep;
/// V1 keeps the rowid, UNIQUE request_id, (user_id, created_at) and (created_at).
const ORIGINAL_USAGE_INDEXES: &str = "
    CREATE INDEX orig_usage_user ON llm_usage_log (user_id);
    CREATE INDEX orig_usage_model ON llm_usage_log (model);
    CREATE INDEX orig_usage_provider ON llm_usage_log (provider);
    CREATE INDEX orig_usage_app ON llm_usage_log (app_id);
    CREATE INDEX orig_usage_session ON llm_usage_log (session_id);
    CREATE INDEX orig_usage_request ON llm_usage_log (request_id);
    CREATE INDEX orig_usage_success ON llm_usage_log (success);";

#[derive(Debug, Clone, Copy)]
struct Config {
    rounds: usize,
    requests: usize,
    /// Requests a side runs before the next side takes over (a multiple of `BATCH`).
    turn: usize,
    users: usize,
    smoke: bool,
}

impl Config {
    fn from_args() -> Option<Config> {
        let args: Vec<String> = std::env::args().collect();
        if args.iter().any(|a| a == "--list") {
            // Test discovery (nextest, `cargo test --benches -- --list`): no tests here.
            return None;
        }
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v:?} is not a count"))
                })
                .unwrap_or(default)
        };
        let config = if args.iter().any(|a| a == "--bench") {
            Config {
                rounds: env("LEDGER_BENCH_ROUNDS", 5),
                requests: env("LEDGER_BENCH_REQUESTS", 10_000),
                turn: env("LEDGER_BENCH_TURN", 1_000),
                users: 1_000,
                smoke: false,
            }
        } else {
            Config {
                rounds: 1,
                requests: 2 * BATCH,
                turn: BATCH,
                users: 20,
                smoke: true,
            }
        };
        assert!(config.rounds > 0 && config.requests > 0, "nothing to run");
        for (what, n) in [("requests", config.requests), ("turn", config.turn)] {
            assert!(
                n > 0 && n % BATCH == 0,
                "{what} must be a multiple of {BATCH}"
            );
        }
        Some(config)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Baseline,
    Ledger,
    BaselineOriginalIndexes,
    BaselineWithSavepoints,
}

impl Side {
    const ALL: [Side; 4] = [
        Side::Baseline,
        Side::Ledger,
        Side::BaselineOriginalIndexes,
        Side::BaselineWithSavepoints,
    ];

    fn label(self) -> &'static str {
        match self {
            Side::Baseline => "baseline (raw SQL)",
            Side::Ledger => "ledger",
            Side::BaselineOriginalIndexes => "baseline + original indexes",
            Side::BaselineWithSavepoints => "baseline + savepoints",
        }
    }

    /// How a baseline side differs from the plain baseline.
    fn variant(self) -> Variant {
        Variant {
            original_indexes: self == Side::BaselineOriginalIndexes,
            savepoints: self == Side::BaselineWithSavepoints,
        }
    }
}

/// What-if variations of the baseline, each shown as its own row.
#[derive(Debug, Clone, Copy)]
struct Variant {
    /// Adds the `llm_usage_log` indexes V1 dropped: what dropping them bought.
    original_indexes: bool,
    /// A SAVEPOINT / RELEASE per operation, as the ledger issues only when a batch is retried
    /// after an operation failed: what that slower path costs.
    savepoints: bool,
}

/// One side's measurement in one round.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Wall time of this side's transactions, summed.
    elapsed: Duration,
    /// CPU time this thread spent in them (user and kernel), where Linux reports it.
    cpu: Option<Duration>,
    /// Wall time of each transaction (BEGIN … COMMIT) of 100 holds.
    holds: Vec<Duration>,
    /// Wall time of each transaction of 100 settles.
    settles: Vec<Duration>,
    /// Baseline only: the COMMIT statement alone (the fsync floor).
    commits: Vec<Duration>,
}

/// CPU time of the calling thread so far, from `/proc/thread-self/schedstat` (its first field is
/// nanoseconds on CPU). It moves less than wall time when other processes share the cores.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Times one transaction, wall and CPU.
struct Stopwatch {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        let cpu = thread_cpu();
        Stopwatch {
            wall: Instant::now(),
            cpu,
        }
    }

    /// Adds the time since `start` to `sample`'s totals and returns the wall time.
    fn stop(self, sample: &mut Sample) -> Duration {
        let wall = self.wall.elapsed();
        sample.elapsed += wall;
        sample.cpu = match (sample.cpu, self.cpu, thread_cpu()) {
            (Some(total), Some(before), Some(after)) => Some(total + after.saturating_sub(before)),
            _ => None,
        };
        wall
    }
}

/// Row counts and sums both sides must agree on after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Books {
    entries: i64,
    movements: i64,
    usage_rows: i64,
    open_holds: i64,
    balance: i64,
    held: i64,
    used: i64,
    lots_remaining: i64,
}

/// What the baseline needs of a user that its statements do not return.
#[derive(Debug, Clone)]
struct UserInfo {
    user_id: String,
    cycle_start: String,
    cycle_end: String,
    lifetime: i64,
}

fn main() {
    let Some(config) = Config::from_args() else {
        return;
    };
    let dir = bench_dir();
    println!(
        "ledger benchmark{}: {} round(s) x {} metered requests per side in turns of {}, {} \
         users, batches of {BATCH}, WAL + synchronous=FULL",
        if config.smoke {
            " (SMOKE RUN: a check, not a measurement; use cargo bench)"
        } else {
            ""
        },
        config.rounds,
        config.requests,
        config.turn,
        config.users
    );
    println!("files under {}", dir.path().display());

    let template = dir.path().join("template.db");
    let users = seed(&template, config.users);

    let mut samples: Vec<(usize, Side, Sample)> = Vec::new();
    println!();
    println!(
        "{:>5}  {:<28} {:>8} {:>11} {:>13} {:>15}",
        "round", "side", "req/s", "CPU us/req", "hold tx p50", "settle tx p50"
    );
    for round in 0..config.rounds {
        let paths: Vec<(Side, PathBuf)> = Side::ALL
            .iter()
            .map(|&side| {
                let path = dir.path().join(format!("round{round}-{side:?}.db"));
                std::fs::copy(&template, &path).unwrap();
                (side, path)
            })
            .collect();
        for (side, sample) in run_round(&config, round, &users, &paths) {
            println!(
                "{:>5}  {:<28} {:>8.0} {:>11} {:>11.2}ms {:>13.2}ms",
                round + 1,
                side.label(),
                rate(&config, sample.elapsed),
                cpu_text(cpu_per_request(&config, &sample)),
                ms(percentile(&sample.holds, 50)),
                ms(percentile(&sample.settles, 50)),
            );
            samples.push((round, side, sample));
        }
        check_books(round, &paths);
        for (_, path) in &paths {
            remove_db(path);
        }
    }
    summarize(&config, &samples);
}

/// A temporary directory on the repository's filesystem: under the target directory this binary
/// was built into (`<target>/release/deps/ledger-…`).
fn bench_dir() -> tempfile::TempDir {
    let exe = std::env::current_exe().unwrap();
    let parent = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("ledger-bench-")
        .tempdir_in(parent)
        .unwrap()
}

/// Creates the seeded file every round copies: `users` users with purchased credit. Returns what
/// the baseline needs of each user.
fn seed(path: &Path, users: usize) -> Vec<UserInfo> {
    {
        let mut ledger =
            Ledger::open(path, OpenMode::CreateIfMissing, Arc::new(SystemClock)).unwrap();
        for u in 0..users {
            ledger.create_user(&NewUser::new(user_id(u))).unwrap();
        }
        let credits = Credits::from_whole(START_CREDITS).unwrap();
        let adds: Vec<Op> = (0..users)
            .map(|u| Op::AddCredits(AddCredits::new(user_id(u), credits, CreditKind::Purchase)))
            .collect();
        for chunk in adds.chunks(tollgate::ledger::BATCH_OPS_MAX) {
            for result in ledger.apply(chunk).unwrap() {
                result.unwrap();
            }
        }
        // Dropping the ledger closes the last connection, which checkpoints the WAL into the
        // main file, so copying that one file copies the whole database.
    }
    let conn = db::open(path, OpenMode::MustExist).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT user_id, billing_cycle_start, billing_cycle_end, lifetime_credits_purchased \
             FROM user_credits WHERE user_id = ?1",
        )
        .unwrap();
    (0..users)
        .map(|u| {
            stmt.query_row([user_id(u)], |r| {
                Ok(UserInfo {
                    user_id: r.get(0)?,
                    cycle_start: r.get(1)?,
                    cycle_end: r.get(2)?,
                    lifetime: r.get(3)?,
                })
            })
            .unwrap()
        })
        .collect()
}

fn user_id(u: usize) -> String {
    format!("user-{u:05}@bench.example")
}

fn request_id(round: usize, i: usize) -> String {
    format!("chatcmpl-bench-{round:02}-{i:08}")
}

fn usage() -> UsageRecord {
    UsageRecord {
        endpoint: ENDPOINT.to_owned(),
        model: MODEL.to_owned(),
        provider: Some(PROVIDER.to_owned()),
        power_level: Some(PowerLevel::Balanced),
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens: COMPLETION_TOKENS,
        cost_per_token: Some(COST_PER_TOKEN.to_owned()),
        is_byok: false,
        byok_key_id: None,
        latency_ms: Some(LATENCY_MS),
        time_to_first_token_ms: Some(TTFT_MS),
        tokens_per_second: Some(TOKENS_PER_SECOND),
        http_status: Some(HTTP_STATUS),
        error_type: None,
        error_message: None,
        metadata: Some(serde_json::from_str(METADATA).unwrap()),
        session_id: None,
        app_id: Some(APP_ID.to_owned()),
        user_agent: Some(USER_AGENT.to_owned()),
        client_ip: Some(CLIENT_IP.to_owned()),
        response_id: None,
    }
}

/// Runs one round: each side on its own fresh file, all advancing in turns of `config.turn`
/// requests (1,000: about a second for all four sides) in an order that changes every turn, so
/// every side meets the same machine conditions (this VM's speed drifts by tens of percent over
/// seconds). Returns each side's sample in `Side::ALL` order.
fn run_round(
    config: &Config,
    round: usize,
    users: &[UserInfo],
    paths: &[(Side, PathBuf)],
) -> Vec<(Side, Sample)> {
    let mut ledger = None;
    let mut conns = Vec::new();
    for (side, path) in paths {
        match side {
            Side::Ledger => ledger = Some(LedgerRunner::new(path, round, users)),
            baseline => conns.push((*baseline, open_baseline(path, baseline.variant()))),
        }
    }
    let mut ledger = ledger.expect("a ledger side");
    let mut baselines: Vec<(Side, BaselineRunner<'_>)> = conns
        .iter()
        .map(|(side, conn)| {
            let runner = BaselineRunner::new(conn, config, round, users, side.variant());
            (*side, runner)
        })
        .collect();
    let mut samples: Vec<(Side, Sample)> = Side::ALL
        .iter()
        .map(|&side| {
            let sample = Sample {
                cpu: thread_cpu().map(|_| Duration::ZERO),
                ..Sample::default()
            };
            (side, sample)
        })
        .collect();
    let orders = permutations(&Side::ALL);
    let turns = config.requests.div_ceil(config.turn);
    for (turn, start) in (0..config.requests).step_by(config.turn).enumerate() {
        let end = (start + config.turn).min(config.requests);
        // Every order in turn, so each side follows each other side (whose pages it may find
        // evicted from the CPU caches) equally often.
        for &side in &orders[(round * turns + turn) % orders.len()] {
            let sample = &mut samples.iter_mut().find(|(s, _)| *s == side).unwrap().1;
            for first in (start..end).step_by(BATCH) {
                match side {
                    Side::Ledger => ledger.chunk(first, sample),
                    _ => {
                        let runner = &mut baselines.iter_mut().find(|(s, _)| *s == side).unwrap().1;
                        runner.chunk(first, sample);
                    }
                }
            }
        }
    }
    samples
}

/// All orderings of `items`.
fn permutations(items: &[Side]) -> Vec<Vec<Side>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            all.push(tail);
        }
    }
    all
}

/// The ledger side. Each batch's operations are built just before its clock starts, so they are
/// in hand and in cache as a gateway's would be; each `apply` is one transaction and one fsync.
struct LedgerRunner<'a> {
    ledger: Ledger,
    users: &'a [UserInfo],
    round: usize,
    usage: UsageRecord,
}

impl<'a> LedgerRunner<'a> {
    fn new(path: &Path, round: usize, users: &'a [UserInfo]) -> LedgerRunner<'a> {
        LedgerRunner {
            ledger: Ledger::open(path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap(),
            users,
            round,
            usage: usage(),
        }
    }

    /// Requests `first..first + BATCH`: their holds in one batch, then their settles in another.
    fn chunk(&mut self, first: usize, sample: &mut Sample) {
        let mut holds = Vec::with_capacity(BATCH);
        let mut settles = Vec::with_capacity(BATCH);
        for i in first..first + BATCH {
            let user_id = self.users[i % self.users.len()].user_id.clone();
            let request_id = request_id(self.round, i);
            holds.push(Op::Hold(HoldRequest {
                user_id: user_id.clone(),
                request_id: request_id.clone(),
                amount: Credits::from_nanos(HOLD_NANOS),
                min_amount: None,
                ttl: HOLD_TTL_DEFAULT,
            }));
            settles.push(Op::Settle(Settle {
                user_id,
                request_id,
                cost: Credits::from_nanos(COST_NANOS),
                usage: self.usage.clone(),
            }));
        }
        for (ops, is_hold) in [(&holds, true), (&settles, false)] {
            let watch = Stopwatch::start();
            let results = self.ledger.apply(ops).unwrap();
            let took = watch.stop(sample);
            if is_hold {
                sample.holds.push(took);
            } else {
                sample.settles.push(took);
            }
            if let Some(err) = results.into_iter().find_map(Result::err) {
                panic!("a ledger operation failed: {err}");
            }
        }
    }
}

/// The baseline's statements, prepared once per round.
struct Stmts<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    chain_head: Statement<'c>,
    savepoint: Statement<'c>,
    release: Statement<'c>,
    hold_by_request: Statement<'c>,
    usage_by_request: Statement<'c>,
    select_user: Statement<'c>,
    live_lots: Statement<'c>,
    expired_holds: Statement<'c>,
    count_holds: Statement<'c>,
    insert_hold: Statement<'c>,
    save_user: Statement<'c>,
    delete_hold: Statement<'c>,
    insert_entry: Statement<'c>,
    move_lot: Statement<'c>,
    insert_movement: Statement<'c>,
    insert_usage: Statement<'c>,
}

impl<'c> Stmts<'c> {
    fn prepare(conn: &'c Connection) -> Stmts<'c> {
        let p = |sql: &str| conn.prepare(sql).unwrap();
        Stmts {
            begin: p("BEGIN IMMEDIATE"),
            commit: p("COMMIT"),
            chain_head: p(sql::CHAIN_HEAD),
            savepoint: p(sql::SAVEPOINT),
            release: p(sql::RELEASE_SAVEPOINT),
            hold_by_request: p(sql::HOLD_BY_REQUEST),
            usage_by_request: p(sql::USAGE_BY_REQUEST),
            select_user: p(sql::SELECT_USER),
            live_lots: p(sql::LIVE_LOTS),
            expired_holds: p(sql::EXPIRED_HOLDS),
            count_holds: p(sql::COUNT_HOLDS),
            insert_hold: p(sql::INSERT_HOLD),
            save_user: p(sql::SAVE_USER),
            delete_hold: p(sql::DELETE_HOLD),
            insert_entry: p(sql::INSERT_ENTRY),
            move_lot: p(sql::MOVE_LOT),
            insert_movement: p(sql::INSERT_MOVEMENT),
            insert_usage: p(sql::INSERT_USAGE),
        }
    }

    /// (row id, balance, held, used this month) of a user.
    fn user(&mut self, user_id: &str) -> (i64, i64, i64, i64) {
        self.select_user
            .query_row([user_id], |r| {
                Ok((r.get(0)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
    }

    /// The user's first live lot (each has one), the rest of the result stepped through.
    fn first_live_lot(&mut self, user_id: &str) -> i64 {
        let mut rows = self.live_lots.query([user_id]).unwrap();
        let lot = rows.next().unwrap().expect("a live lot").get(0).unwrap();
        while rows.next().unwrap().is_some() {}
        lot
    }

    fn expired_holds(&mut self, user_id: &str, now: &str) {
        let mut rows = self.expired_holds.query(params![user_id, now]).unwrap();
        assert!(rows.next().unwrap().is_none(), "no hold expires in a run");
    }
}

/// A unique stand-in for an entry's sha256 (the `hash` column is UNIQUE): no hashing. Like a
/// real hash it lands all over the index (the low byte of the seq comes first).
fn cheap_hash(seq: i64) -> [u8; 32] {
    let mut hash = [0xA5; 32];
    hash[..8].copy_from_slice(&seq.to_le_bytes());
    hash
}

/// Opens a baseline side's file the way the ledger opens its own, plus the variant's indexes.
fn open_baseline(path: &Path, variant: Variant) -> Connection {
    let conn = db::open(path, OpenMode::MustExist).unwrap();
    if variant.original_indexes {
        conn.execute_batch(ORIGINAL_USAGE_INDEXES).unwrap();
    }
    conn
}

/// A baseline side: the same statements as the ledger, no ledger logic. Per-request parameters
/// the ledger would generate (ids) are precomputed before the clock starts.
struct BaselineRunner<'a> {
    conn: &'a Connection,
    s: Stmts<'a>,
    users: &'a [UserInfo],
    savepoints: bool,
    request_ids: Vec<String>,
    hold_ids: Vec<String>,
    entry_ids: Vec<String>,
}

impl<'a> BaselineRunner<'a> {
    fn new(
        conn: &'a Connection,
        config: &Config,
        round: usize,
        users: &'a [UserInfo],
        variant: Variant,
    ) -> BaselineRunner<'a> {
        BaselineRunner {
            conn,
            s: Stmts::prepare(conn),
            users,
            savepoints: variant.savepoints,
            request_ids: (0..config.requests).map(|i| request_id(round, i)).collect(),
            // Counter strings shaped like UUIDv7 text, sorting after the seed's, as the
            // ledger's do.
            hold_ids: (0..config.requests)
                .map(|i| format!("fffffffe-0000-7000-8000-{i:012x}"))
                .collect(),
            entry_ids: (0..config.requests)
                .map(|i| format!("ffffffff-0000-7000-8000-{i:012x}"))
                .collect(),
        }
    }

    /// Requests `first..first + BATCH`: 100 holds in one transaction, then their 100 settles.
    fn chunk(&mut self, first: usize, sample: &mut Sample) {
        let watch = Stopwatch::start();
        self.holds(first);
        let commit = Instant::now();
        self.s.commit.execute([]).unwrap();
        sample.commits.push(commit.elapsed());
        let took = watch.stop(sample);
        sample.holds.push(took);

        let watch = Stopwatch::start();
        self.settles(first);
        let commit = Instant::now();
        self.s.commit.execute([]).unwrap();
        sample.commits.push(commit.elapsed());
        let took = watch.stop(sample);
        sample.settles.push(took);
    }

    /// BEGIN and 100 holds (the caller commits).
    fn holds(&mut self, first: usize) {
        let s = &mut self.s;
        let now_at = OffsetDateTime::now_utc();
        let now = to_text(now_at);
        let expires = to_text(now_at + HOLD_TTL_DEFAULT);
        s.begin.execute([]).unwrap();
        s.chain_head
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap();
        for i in first..first + BATCH {
            let user = &self.users[i % self.users.len()];
            let req = self.request_ids[i].as_str();
            if self.savepoints {
                s.savepoint.execute([]).unwrap();
            }
            let open = s
                .hold_by_request
                .query_row([req], |r| r.get::<_, i64>(0))
                .optional()
                .unwrap();
            assert!(open.is_none());
            let usage = s
                .usage_by_request
                .query_row([req], |r| r.get::<_, String>(0))
                .optional()
                .unwrap();
            assert!(usage.is_none());
            let (id, balance, held, used) = s.user(&user.user_id);
            s.first_live_lot(&user.user_id);
            s.expired_holds(&user.user_id, &now);
            let _open: i64 = s
                .count_holds
                .query_row([&user.user_id], |r| r.get(0))
                .unwrap();
            s.insert_hold
                .execute(params![
                    self.hold_ids[i],
                    req,
                    user.user_id,
                    HOLD_NANOS,
                    now,
                    expires
                ])
                .unwrap();
            s.save_user
                .execute(params![
                    id,
                    balance,
                    held + HOLD_NANOS,
                    used,
                    user.cycle_start,
                    user.cycle_end,
                    user.lifetime,
                    now
                ])
                .unwrap();
            if self.savepoints {
                s.release.execute([]).unwrap();
            }
        }
    }

    /// BEGIN and the 100 settles of those holds (the caller commits).
    fn settles(&mut self, first: usize) {
        let s = &mut self.s;
        let now = to_text(OffsetDateTime::now_utc());
        s.begin.execute([]).unwrap();
        let (mut seq, prev) = s
            .chain_head
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap();
        let mut prev_hash: [u8; 32] = prev.try_into().unwrap();
        for i in first..first + BATCH {
            let user = &self.users[i % self.users.len()];
            let req = self.request_ids[i].as_str();
            if self.savepoints {
                s.savepoint.execute([]).unwrap();
            }
            let (hold_row, hold_amount) = s
                .hold_by_request
                .query_row([req], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(3)?)))
                .unwrap();
            let (id, balance, held, used) = s.user(&user.user_id);
            let lot = s.first_live_lot(&user.user_id);
            s.expired_holds(&user.user_id, &now);
            s.delete_hold.execute([hold_row]).unwrap();
            seq += 1;
            let hash = cheap_hash(seq);
            s.insert_entry
                .execute(params![
                    self.entry_ids[i],
                    seq,
                    user.user_id,
                    "usage",
                    -COST_NANOS,
                    balance,
                    balance - COST_NANOS,
                    PROVIDER,
                    MODEL,
                    PROMPT_TOKENS,
                    COMPLETION_TOKENS,
                    i64::from(PROMPT_TOKENS) + i64::from(COMPLETION_TOKENS),
                    COST_PER_TOKEN,
                    PowerLevel::Balanced.as_str(),
                    false,
                    Null,
                    req,
                    Null,
                    Null,
                    Null,
                    Null,
                    Null,
                    Null,
                    prev_hash.as_slice(),
                    hash.as_slice(),
                    now,
                ])
                .unwrap();
            prev_hash = hash;
            let entry_row = self.conn.last_insert_rowid();
            s.move_lot.execute(params![lot, -COST_NANOS]).unwrap();
            s.insert_movement
                .execute(params![entry_row, lot, -COST_NANOS])
                .unwrap();
            s.insert_usage
                .execute(params![
                    req,
                    Null,
                    user.user_id,
                    APP_ID,
                    ENDPOINT,
                    MODEL,
                    PROVIDER,
                    PowerLevel::Balanced.as_str(),
                    PROMPT_TOKENS,
                    COMPLETION_TOKENS,
                    i64::from(PROMPT_TOKENS) + i64::from(COMPLETION_TOKENS),
                    COST_NANOS,
                    0_i64,
                    COST_PER_TOKEN,
                    false,
                    Null,
                    LATENCY_MS,
                    TTFT_MS,
                    TOKENS_PER_SECOND,
                    true,
                    HTTP_STATUS,
                    Null,
                    Null,
                    METADATA,
                    USER_AGENT,
                    CLIENT_IP,
                    now,
                ])
                .unwrap();
            s.save_user
                .execute(params![
                    id,
                    balance - COST_NANOS,
                    held - hold_amount,
                    used + COST_NANOS,
                    user.cycle_start,
                    user.cycle_end,
                    user.lifetime,
                    now
                ])
                .unwrap();
            if self.savepoints {
                s.release.execute([]).unwrap();
            }
        }
    }
}

/// After a round: every side left the same books, and the ledger's pass its own verification.
fn check_books(round: usize, paths: &[(Side, PathBuf)]) {
    let books: Vec<(Side, Books)> = paths
        .iter()
        .map(|(side, path)| (*side, read_books(path)))
        .collect();
    let (first_side, first) = &books[0];
    for (side, other) in &books[1..] {
        assert_eq!(
            first, other,
            "round {round}: {first_side:?} and {side:?} left different books"
        );
    }
    let (_, ledger_path) = paths.iter().find(|(s, _)| *s == Side::Ledger).unwrap();
    let mut ledger = Ledger::open(ledger_path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap();
    let report = ledger.verify().unwrap();
    assert!(
        report.is_clean(),
        "the ledger's books: {:?}",
        report.violations
    );
}

fn read_books(path: &Path) -> Books {
    let conn = db::open(path, OpenMode::MustExist).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let (balance, held, used) = conn
        .query_row(
            "SELECT SUM(balance), SUM(held), SUM(credits_used_this_month) FROM user_credits",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    Books {
        entries: count("credit_transactions"),
        movements: count("lot_movements"),
        usage_rows: count("llm_usage_log"),
        open_holds: count("holds"),
        balance,
        held,
        used,
        lots_remaining: conn
            .query_row("SELECT SUM(remaining) FROM credit_lots", [], |r| r.get(0))
            .unwrap(),
    }
}

fn remove_db(path: &Path) {
    let mut wal = PathBuf::from(path).into_os_string();
    wal.push("-wal");
    let mut shm = PathBuf::from(path).into_os_string();
    shm.push("-shm");
    for file in [path.as_os_str().to_owned(), wal, shm] {
        // The WAL and shm files are gone already when the last connection closed cleanly.
        let _ = std::fs::remove_file(file);
    }
}

fn rate(config: &Config, elapsed: Duration) -> f64 {
    config.requests as f64 / elapsed.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`th percentile (nearest rank) of `durations`.
fn percentile(durations: &[Duration], p: usize) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn cpu_per_request(config: &Config, sample: &Sample) -> Option<f64> {
    Some(sample.cpu?.as_secs_f64() * 1e6 / config.requests as f64)
}

fn cpu_text(us: Option<f64>) -> String {
    us.map_or_else(|| "n/a".to_owned(), |us| format!("{us:.1}"))
}

fn summarize(config: &Config, samples: &[(usize, Side, Sample)]) {
    let of = |side: Side| samples.iter().filter(move |(_, s, _)| *s == side);
    let median_rate =
        |side: Side| median(of(side).map(|(_, _, s)| rate(config, s.elapsed)).collect());
    let median_cpu = |side: Side| -> Option<f64> {
        let cpus: Option<Vec<f64>> = of(side)
            .map(|(_, _, s)| cpu_per_request(config, s))
            .collect();
        cpus.map(median)
    };
    let in_round = |side: Side, round: usize| {
        of(side)
            .find(|(r, _, _)| *r == round)
            .map(|(_, _, s)| s)
            .unwrap()
    };
    let per_round_ratios: Vec<f64> = (0..config.rounds)
        .map(|round| {
            rate(config, in_round(Side::Ledger, round).elapsed)
                / rate(config, in_round(Side::Baseline, round).elapsed)
        })
        .collect();
    let baseline = median_rate(Side::Baseline);
    let baseline_cpu = median_cpu(Side::Baseline);

    println!();
    println!(
        "summary: median of {} round(s) of {} requests{}; tx = one transaction of {BATCH} \
         operations, BEGIN to COMMIT",
        config.rounds,
        config.requests,
        if config.smoke { " (SMOKE RUN)" } else { "" }
    );
    println!(
        "{:<28} {:>8} {:>8} {:>11} {:>10} {:>19} {:>19}",
        "side",
        "req/s",
        "ratio",
        "CPU us/req",
        "CPU ratio",
        "hold tx p50 / p99",
        "settle tx p50 / p99"
    );
    for side in Side::ALL {
        let holds: Vec<Duration> = of(side).flat_map(|(_, _, s)| s.holds.clone()).collect();
        let settles: Vec<Duration> = of(side).flat_map(|(_, _, s)| s.settles.clone()).collect();
        let rate = median_rate(side);
        let cpu = median_cpu(side);
        let cpu_ratio = match (baseline_cpu, cpu) {
            (Some(b), Some(c)) => format!("{:.3}", b / c),
            _ => "n/a".to_owned(),
        };
        println!(
            "{:<28} {:>8.0} {:>8.3} {:>11} {:>10} {:>8.2} / {:>5.2}ms {:>8.2} / {:>5.2}ms",
            side.label(),
            rate,
            rate / baseline,
            cpu_text(cpu),
            cpu_ratio,
            ms(percentile(&holds, 50)),
            ms(percentile(&holds, 99)),
            ms(percentile(&settles, 50)),
            ms(percentile(&settles, 99)),
        );
    }
    let commits: Vec<Duration> = of(Side::Baseline)
        .flat_map(|(_, _, s)| s.commits.clone())
        .collect();
    let min = per_round_ratios
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let max = per_round_ratios
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    println!();
    println!(
        "ledger / baseline: {:.3} (ratio of median req/s); per round {:.3} to {:.3}",
        median_rate(Side::Ledger) / baseline,
        min,
        max
    );
    println!(
        "CPU ratio = baseline CPU per request / this side's: the throughput ratio if CPU were \
         the only cost"
    );
    println!(
        "baseline COMMIT alone (WAL write + fsync): p50 {:.2}ms, p99 {:.2}ms per transaction",
        ms(percentile(&commits, 50)),
        ms(percentile(&commits, 99))
    );
}
