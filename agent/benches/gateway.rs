//! The gateway benchmark: the same HTTP load sent straight to the mock upstream and through
//! tollgate, in one run, with throughput, p50/p99 latency and the ratio (or the added latency) of
//! the two. BENCHMARKS.md (repo root) says what is measured, why, on what machine, and what the
//! numbers mean.
//!
//! Three processes, so each one's CPU (and the gateway's memory) can be read from `/proc`:
//!
//! - **mock upstream**: this very binary re-run with `TOLLGATE_BENCH_ROLE=mock`, serving
//!   `tollgate_mock_upstream` (OpenAI's API) on 127.0.0.1 until its stdin closes.
//! - **gateway**: the real `tollgate` binary (`tollgate --data-dir DIR serve`), the data dir set
//!   up through its own CLI (`init`, `users add`, `credits add`, `users api-key create`), in a
//!   temporary directory under the target directory (the repository's filesystem: the ledger's
//!   fsyncs are real).
//! - **load generator**: this process, tokio + reqwest, keep-alive HTTP/1.1 connections, the same
//!   non-streaming chat completion every time (`gpt-4o-mini`, a short prompt, a 16-token reply
//!   from the mock's `mock:tokens=16`), API keys of several users in rotation.
//!
//! Two modes, each run against both sides ("direct": load generator → mock; "tollgate": load
//! generator → gateway → mock):
//!
//! - **saturation**: a closed loop of C connections (each sends its next request when the last
//!   one answered) for D seconds: throughput and latency (send to last byte). C is 256 by
//!   default: the gateway group-commits, so its throughput grows with the requests in flight
//!   (real LLM calls take seconds, so thousands are in flight at a few thousand a second), and
//!   with fewer connections the run measures commit latency more than capacity.
//! - **fixed rate**: an open loop at R requests a second for D seconds: request i is due at
//!   start + i/R and its latency runs from that due time (not from when it was actually sent),
//!   so a stall is charged to every request it delays (no coordinated omission).
//!
//! Sides take turns (the order alternates every turn), so both meet the same machine conditions;
//! the summary is the median over turns. Around each run the bench reads every process's CPU time
//! (`/proc/<pid>/stat`; the gateway's ledger writer thread's from `/proc/<pid>/task`) and, for
//! tollgate, the ledger's commit counters from its `/metrics`, to show where the time goes.
//!
//! Every response must be a 200 (any other status or a transport error aborts the run with the
//! status and body). After the run the gateway is stopped
//! with SIGTERM (it drains its ledger writer), `tollgate verify` must exit 0, and the usage log
//! must hold exactly one successful row per request sent through tollgate.
//!
//! Then **streamed runs**: the same saturation, with streamed chat (`stream: true`, the usage
//! chunk asked for) and streamed Anthropic Messages (`/v1/messages`, `claude-sonnet-4`, typed
//! events ending in `message_stop`), one event per reply token, each side in turn: throughput,
//! p50 and the gateway's CPU per request, and the ratio for each kind.
//!
//! Then a **low-balance race**, on a gateway of its own: one user holds credit for K requests at
//! their real cost (a 2-token prompt and a 250-token reply of gpt-4o-mini), and 5K requests
//! asking for `max_tokens: 300` arrive at once. Reported: how many were served whole, cut short
//! (their cap lowered to what was left), refused (402), and the share of the credit spent
//! (target: at least 90 %), beside the balance (never below zero) and the overage (none).
//!
//! Run: `cargo bench -p tollgate --bench gateway`. `TOLLGATE_BENCH_SECS` (5 per run),
//! `TOLLGATE_BENCH_TURNS` (3), `TOLLGATE_BENCH_CONCURRENCY` (256), `TOLLGATE_BENCH_RATE` (1000)
//! `TOLLGATE_BENCH_USERS` (16) and `TOLLGATE_BENCH_RACE_K` (200) change the shape. Without `--bench` (as under
//! `cargo test --benches`) it does a short smoke run with the same checks; asked to `--list`
//! (test discovery), it lists nothing.

// A benchmark, not product code: any failure should abort loudly, so unwrap/expect are the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tollgate::ledger::{OpenMode, db};

/// Set in the mock upstream's environment: this binary then serves the mock instead.
const ROLE_ENV: &str = "TOLLGATE_BENCH_ROLE";
const MODEL: &str = "gpt-4o-mini";
/// The model of the streamed Messages runs (in the built-in price table).
const MESSAGES_MODEL: &str = "claude-sonnet-4";
const PROMPT: &str = "Say hello to the benchmark in one short sentence. mock:tokens=16";
const REPLY_TOKENS: u64 = 16;
/// Credit each user starts with: far more than any run spends.
const USER_CREDITS: &str = "1000000";
/// The key tollgate presents upstream (the mock does not check it); the direct side sends a
/// bearer token of the same shape.
const UPSTREAM_KEY: &str = "sk-bench-upstream-0000000000000000";
/// How long a process gets to come up (or to stop) before the run is abandoned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// No request may take longer (it would count as a failure).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Config {
    /// Length of one measured run (one mode, one side, one turn).
    run: Duration,
    /// Saturation load before the turns, per side, not measured.
    warmup: Duration,
    turns: usize,
    concurrency: usize,
    rate: u32,
    users: usize,
    /// The low-balance race: credit for this many requests; five times as many are sent.
    race_k: usize,
    smoke: bool,
}

impl Config {
    fn from_args() -> Option<Config> {
        let args: Vec<String> = std::env::args().collect();
        if args.iter().any(|a| a == "--list") {
            // Test discovery (nextest, `cargo test --benches -- --list`): no tests here.
            return None;
        }
        let env = |name: &str, default: f64| -> f64 {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
                })
                .unwrap_or(default)
        };
        let config = if args.iter().any(|a| a == "--bench") {
            Config {
                run: Duration::from_secs_f64(env("TOLLGATE_BENCH_SECS", 5.0)),
                warmup: Duration::from_secs(2),
                turns: env("TOLLGATE_BENCH_TURNS", 3.0) as usize,
                concurrency: env("TOLLGATE_BENCH_CONCURRENCY", 256.0) as usize,
                rate: env("TOLLGATE_BENCH_RATE", 1000.0) as u32,
                users: env("TOLLGATE_BENCH_USERS", 16.0) as usize,
                race_k: env("TOLLGATE_BENCH_RACE_K", 200.0) as usize,
                smoke: false,
            }
        } else {
            Config {
                run: Duration::from_millis(300),
                warmup: Duration::from_millis(200),
                turns: 1,
                concurrency: 8,
                rate: 200,
                users: 2,
                race_k: 10,
                smoke: true,
            }
        };
        assert!(
            config.run > Duration::ZERO
                && config.turns > 0
                && config.concurrency > 0
                && config.rate > 0
                && config.users > 0,
            "nothing to run: {config:?}"
        );
        Some(config)
    }
}

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("mock") {
        serve_mock();
        return;
    }
    let Some(config) = Config::from_args() else {
        return;
    };
    let machine = Machine::read();
    println!(
        "gateway benchmark{}: {} turn(s); per turn and side: saturation ({} connections, {:.1}s) \
         and fixed rate ({}/s, {:.1}s); {} users; non-streaming {MODEL} chat, {REPLY_TOKENS}-token \
         replies",
        if config.smoke {
            " (SMOKE RUN: a check, not a measurement; use cargo bench)"
        } else {
            ""
        },
        config.turns,
        config.concurrency,
        config.run.as_secs_f64(),
        config.rate,
        config.run.as_secs_f64(),
        config.users,
    );
    println!(
        "machine: {} CPUs ({}), kernel {}, load average {}",
        machine.cpus, machine.cpu_model, machine.kernel, machine.loadavg
    );

    let dir = bench_dir();
    println!("files under {}", dir.path().display());
    let mock = MockProcess::start();
    let data_dir = dir.path().join("data");
    let keys = setup_data_dir(&data_dir, config.users);
    let probe_rounds = if config.smoke { 20 } else { 300 };
    print_disk_probe(&data_dir, "before", probe_rounds);
    let gateway = GatewayProcess::start(&data_dir, &dir.path().join("gateway.log"), &mock.url);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(None)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    runtime.block_on(gateway.wait_ready(&client));

    let body = Bytes::from(
        serde_json::to_vec(
            &json!({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}),
        )
        .unwrap(),
    );
    let direct = Arc::new(Target {
        side: Side::Direct,
        url: format!("{}/v1/chat/completions", mock.url),
        keys: vec![UPSTREAM_KEY.to_owned()],
        client: client.clone(),
        body: body.clone(),
    });
    let tollgate = Arc::new(Target {
        side: Side::Tollgate,
        url: format!("http://{}/v1/chat/completions", gateway.addr),
        keys,
        client,
        body,
    });
    let procs = Procs {
        gateway: gateway.child.id(),
        mock: mock.child.id(),
    };

    // Warm-up: one checked reply per side, then a short saturation each (not measured).
    let mut sent_through_tollgate = 0_usize;
    for target in [&direct, &tollgate] {
        runtime.block_on(check_reply(target));
        let warm = runtime.block_on(saturate(
            target.clone(),
            config.concurrency,
            config.warmup,
            procs,
        ));
        warm.assert_clean(target.side, "warm-up");
        if target.side == Side::Tollgate {
            sent_through_tollgate += 1 + warm.sent();
        }
    }

    let mut results: Vec<Measured> = Vec::new();
    let mut rss_after_saturation: Vec<u64> = Vec::new();
    println!();
    println!(
        "{:>4}  {:<10} {:<8} {:>7} {:>8} {:>8} {:>8} {:>8}   {:>7} {:>7} {:>7} {:>5}",
        "turn",
        "mode",
        "side",
        "sent",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "gw us",
        "mock us",
        "load us",
        "busy"
    );
    for turn in 0..config.turns {
        let order = if turn % 2 == 0 {
            [&direct, &tollgate]
        } else {
            [&tollgate, &direct]
        };
        for mode in [Mode::Saturation, Mode::FixedRate] {
            for target in order {
                let counters = |rt: &tokio::runtime::Runtime| {
                    (target.side == Side::Tollgate)
                        .then(|| rt.block_on(scrape_ledger(&target.client, &gateway.admin_addr)))
                };
                let ledger_before = counters(&runtime);
                let run = match mode {
                    Mode::Saturation => runtime.block_on(saturate(
                        target.clone(),
                        config.concurrency,
                        config.run,
                        procs,
                    )),
                    Mode::FixedRate => fixed_rate(
                        runtime.handle(),
                        target.clone(),
                        config.rate,
                        config.run,
                        procs,
                    ),
                };
                let ledger_after = counters(&runtime);
                let label = format!("turn {}, {}", turn + 1, mode.label());
                run.assert_clean(target.side, &label);
                if target.side == Side::Tollgate {
                    sent_through_tollgate += run.sent();
                    if mode == Mode::Saturation {
                        rss_after_saturation.push(memory(procs.gateway).rss_kb);
                    }
                }
                let measured = Measured {
                    turn,
                    mode,
                    side: target.side,
                    rate: run.rate(),
                    p50: percentile(&run.latencies, 50.0),
                    p99: percentile(&run.latencies, 99.0),
                    max: percentile(&run.latencies, 100.0),
                    cpu: run.cpu_per_request(),
                    late: run.late,
                    ledger: ledger_before
                        .zip(ledger_after)
                        .map(|(b, a)| LedgerRun::new(b, a, &run)),
                };
                println!(
                    "{:>4}  {:<10} {:<8} {:>7} {:>8.0} {:>8.3} {:>8.3} {:>8.2}   {:>7} {:>7} {:>7} \
                     {:>4.0}%",
                    turn + 1,
                    mode.label(),
                    target.side.label(),
                    run.sent(),
                    measured.rate,
                    ms(measured.p50),
                    ms(measured.p99),
                    ms(measured.max),
                    if target.side == Side::Tollgate {
                        format!("{:.1}", measured.cpu.gateway)
                    } else {
                        "-".to_owned()
                    },
                    format!("{:.1}", measured.cpu.mock),
                    format!("{:.1}", measured.cpu.load),
                    measured.cpu.machine_busy * 100.0,
                );
                if let Some(l) = measured.ledger {
                    println!(
                        "{:>27} ledger: {:.2} commits/req, {:.1} ops/commit, transaction mean \
                         {:.2} ms, {:.1}% over 5 ms, writer inside transactions {:.0}% of the \
                         time, on a CPU {:.0}%, waiting for one {:.0}%; gateway CPU: writer thread \
                         {:.1} us/req, kernel {:.0}%",
                        "",
                        l.commits_per_request,
                        l.operations_per_commit,
                        ms(l.mean_commit),
                        l.slow_share * 100.0,
                        l.busy * 100.0,
                        measured.cpu.writer_on_cpu * 100.0,
                        measured.cpu.writer_runnable * 100.0,
                        measured.cpu.writer,
                        measured.cpu.gateway_system_share * 100.0,
                    );
                }
                results.push(measured);
            }
        }
    }
    let mem = memory(procs.gateway);
    summarize(&config, &results, &rss_after_saturation, mem);
    sent_through_tollgate += streamed_runs(
        &runtime,
        &StreamSides {
            mock_url: &mock.url,
            gateway_addr: &gateway.addr,
            keys: &tollgate.keys,
            client: &tollgate.client,
        },
        &config,
        procs,
    );
    print_disk_probe(&data_dir, "after", probe_rounds);

    // The books: stop the gateway (SIGTERM drains the writer), then verify and count.
    gateway.stop();
    check_books(&data_dir, sent_through_tollgate);
    low_balance_race(&runtime, dir.path(), &mock.url, &config);
    drop(mock);
    println!("load average at the end: {}", read_trimmed("/proc/loadavg"));
}

// ---------------------------------------------------------------------------------------------
// Streamed runs: OpenAI's chat and Anthropic's Messages API, each streamed.

/// A streamed request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    /// `/v1/chat/completions`, `stream: true` with the usage chunk.
    Chat,
    /// `/v1/messages`, `stream: true` (Anthropic's typed events).
    Messages,
}

impl StreamKind {
    fn label(self) -> &'static str {
        match self {
            StreamKind::Chat => "chat",
            StreamKind::Messages => "messages",
        }
    }

    fn path(self) -> &'static str {
        match self {
            StreamKind::Chat => "/v1/chat/completions",
            StreamKind::Messages => "/v1/messages",
        }
    }

    fn body(self) -> Bytes {
        let body = match self {
            StreamKind::Chat => json!({"model": MODEL, "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": PROMPT}]}),
            StreamKind::Messages => json!({"model": MESSAGES_MODEL, "stream": true,
                "max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}]}),
        };
        Bytes::from(serde_json::to_vec(&body).unwrap())
    }

    /// What the stream's last event must be.
    fn last_event(self) -> &'static str {
        match self {
            StreamKind::Chat => "data: [DONE]",
            StreamKind::Messages => "event: message_stop",
        }
    }
}

/// Where the streamed runs send their requests.
struct StreamSides<'a> {
    mock_url: &'a str,
    gateway_addr: &'a str,
    keys: &'a [String],
    client: &'a reqwest::Client,
}

/// One streamed run's measure.
struct StreamMeasured {
    kind: StreamKind,
    side: Side,
    rate: f64,
    p50: Duration,
    gateway_cpu: f64,
}

/// Saturation runs of streamed chat and streamed Messages, both sides, `config.turns` turns
/// (sides alternating); prints each run and the summary. Returns the requests sent through
/// tollgate.
fn streamed_runs(
    runtime: &tokio::runtime::Runtime,
    sides: &StreamSides<'_>,
    config: &Config,
    procs: Procs,
) -> usize {
    let target = |kind: StreamKind, side: Side| {
        Arc::new(Target {
            side,
            url: match side {
                Side::Direct => format!("{}{}", sides.mock_url, kind.path()),
                Side::Tollgate => format!("http://{}{}", sides.gateway_addr, kind.path()),
            },
            keys: match side {
                Side::Direct => vec![UPSTREAM_KEY.to_owned()],
                Side::Tollgate => sides.keys.to_vec(),
            },
            client: sides.client.clone(),
            body: kind.body(),
        })
    };
    let mut sent = 0;
    let mut measured = Vec::new();
    println!();
    println!(
        "streamed runs: saturation, {} connections, {:.1}s per kind and side; {REPLY_TOKENS}-token \
         replies, one event per token",
        config.concurrency,
        config.run.as_secs_f64()
    );
    for kind in [StreamKind::Chat, StreamKind::Messages] {
        for side in [Side::Direct, Side::Tollgate] {
            let body = runtime
                .block_on(one(&target(kind, side), 0))
                .unwrap_or_else(|f| panic!("{} {}: {f:?}", kind.label(), side.label()));
            let text = String::from_utf8_lossy(&body);
            let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
            assert!(
                last.starts_with(kind.last_event()),
                "{} {}: the stream ended with {last:?}",
                kind.label(),
                side.label()
            );
            sent += usize::from(side == Side::Tollgate);
        }
    }
    for turn in 0..config.turns {
        for kind in [StreamKind::Chat, StreamKind::Messages] {
            let order = if turn % 2 == 0 {
                [Side::Direct, Side::Tollgate]
            } else {
                [Side::Tollgate, Side::Direct]
            };
            for side in order {
                let run = runtime.block_on(saturate(
                    target(kind, side),
                    config.concurrency,
                    config.run,
                    procs,
                ));
                run.assert_clean(side, &format!("streamed {}", kind.label()));
                if side == Side::Tollgate {
                    sent += run.sent();
                }
                let m = StreamMeasured {
                    kind,
                    side,
                    rate: run.rate(),
                    p50: percentile(&run.latencies, 50.0),
                    gateway_cpu: run.cpu_per_request().gateway,
                };
                println!(
                    "{:>4}  streamed {:<9} {:<8} {:>7} {:>8.0} req/s  p50 {:>7.3} ms{}",
                    turn + 1,
                    kind.label(),
                    side.label(),
                    run.sent(),
                    m.rate,
                    ms(m.p50),
                    if side == Side::Tollgate {
                        format!("  gateway {:.1} us/req", m.gateway_cpu)
                    } else {
                        String::new()
                    }
                );
                measured.push(m);
            }
        }
    }
    println!("streamed summary: median of {} turn(s)", config.turns);
    for kind in [StreamKind::Chat, StreamKind::Messages] {
        let med = |side: Side, f: &dyn Fn(&StreamMeasured) -> f64| {
            median(
                measured
                    .iter()
                    .filter(|m| m.kind == kind && m.side == side)
                    .map(f)
                    .collect(),
            )
        };
        let (d, g) = (
            med(Side::Direct, &|m| m.rate),
            med(Side::Tollgate, &|m| m.rate),
        );
        let (dp, gp) = (
            med(Side::Direct, &|m| ms(m.p50)),
            med(Side::Tollgate, &|m| ms(m.p50)),
        );
        println!(
            "  streamed {:<9} throughput direct {d:>7.0}  tollgate {g:>7.0} req/s  ratio {:.3};  \
             p50 direct {dp:.3}  tollgate {gp:.3} ms ({:+.3} added);  gateway CPU {:.1} us/req",
            kind.label(),
            g / d,
            gp - dp,
            med(Side::Tollgate, &|m| m.gateway_cpu),
        );
    }
    sent
}

// ---------------------------------------------------------------------------------------------
// The processes.

/// The mock upstream's process body: serve until stdin closes.
fn serve_mock() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mock = runtime
        .block_on(tollgate_mock_upstream::MockUpstream::spawn())
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mock.url()).unwrap();
    out.flush().unwrap();
    drop(out);
    // The parent holds our stdin; it closes when the parent drops it or dies.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    runtime.block_on(mock.shutdown());
}

/// A child process, killed (SIGKILL) and reaped when dropped unless it already ended: so a panic
/// anywhere in the bench leaves no process behind.
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

struct MockProcess {
    child: Guard,
    url: String,
}

impl MockProcess {
    fn start() -> MockProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE_ENV, "mock")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the mock upstream (this binary, re-run)");
        let stdout = child.stdout.take().unwrap();
        let child = Guard { child };
        // Its first line is its URL; wait for it with a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(STARTUP_DEADLINE)
            .expect("the mock upstream did not say where it listens in time");
        let url = line.trim().to_owned();
        assert!(
            url.starts_with("http://"),
            "the mock upstream said {line:?}, not its URL"
        );
        MockProcess { child, url }
    }
}

struct GatewayProcess {
    child: Guard,
    addr: String,
    /// The admin listener (`/metrics`, `/readyz`).
    admin_addr: String,
    log: PathBuf,
}

impl GatewayProcess {
    fn start(data_dir: &Path, log: &Path, upstream: &str) -> GatewayProcess {
        // Free ports: bind port 0, read it, release it for the gateway.
        let free_port = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let (addr, admin_addr) = (free_port(), free_port());
        let log_file = std::fs::File::create(log).unwrap();
        let child = tollgate_command(data_dir)
            .args(["serve", "--listen", &addr, "--upstream", upstream])
            .args(["--admin-listen", &admin_addr])
            .env("TOLLGATE_UPSTREAM_KEY", UPSTREAM_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting tollgate serve");
        GatewayProcess {
            child: Guard { child },
            addr,
            admin_addr,
            log: log.to_path_buf(),
        }
    }

    /// Polls GET /healthz until it answers 200, with a deadline, then checks /readyz (database
    /// and upstream reachable).
    async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let url = format!("http://{}/healthz", self.addr);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == reqwest::StatusCode::OK
            {
                break;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "tollgate serve exited ({status}) before it was ready; its log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tollgate serve did not answer /healthz within {STARTUP_DEADLINE:?}; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = client
            .get(format!("http://{}/readyz", self.admin_addr))
            .send()
            .await
            .unwrap();
        let status = ready.status();
        let text = ready.text().await.unwrap_or_default();
        assert_eq!(status, reqwest::StatusCode::OK, "/readyz: {text}");
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        // try_wait needs &mut; /proc tells whether the pid is a zombie or gone without reaping.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok();
        match stat {
            None => Some(std::process::ExitStatus::default()),
            Some(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                Some(std::process::ExitStatus::default())
            }
            Some(_) => None,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (graceful: in-flight requests finish, the writer drains), then waits for a clean
    /// exit with a deadline.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate serve did not stop within {STARTUP_DEADLINE:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "tollgate serve exited with {status}; its log:\n{}",
            self.log_text()
        );
    }
}

fn tollgate_command(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.arg("--data-dir").arg(data_dir);
    // Nothing from the caller's environment may change the gateway under test.
    for var in [
        "TOLLGATE_DATA_DIR",
        "TOLLGATE_CONFIG",
        "TOLLGATE_LISTEN",
        "TOLLGATE_UPSTREAM",
        "TOLLGATE_UPSTREAM_KEY",
        "TOLLGATE_ALERT_WEBHOOK_URL",
        "TOLLGATE_LOG",
        "TOLLGATE_LOG_FORMAT",
        "TOLLGATE_MASTER_KEY",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs a `tollgate --json` command that must succeed; returns its stdout.
fn cli(data_dir: &Path, args: &[&str]) -> String {
    let out = tollgate_command(data_dir)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tollgate {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `tollgate init`, then `users` users (professional tier) with purchased credit and an API key
/// each, all through the CLI. Returns the keys.
fn setup_data_dir(data_dir: &Path, users: usize) -> Vec<String> {
    cli(data_dir, &["init"]);
    (0..users)
        .map(|u| {
            let user = format!("bench-user-{u:03}");
            cli(data_dir, &["users", "add", &user, "--tier", "professional"]);
            cli(
                data_dir,
                &["credits", "add", &user, USER_CREDITS, "--type", "purchase"],
            );
            let created: Value =
                serde_json::from_str(&cli(data_dir, &["users", "api-key", "create", &user]))
                    .unwrap();
            created["key"]
                .as_str()
                .unwrap_or_else(|| panic!("api-key create printed {created}"))
                .to_owned()
        })
        .collect()
}

/// A temporary directory on the repository's filesystem (the ledger's fsyncs must be real, and
/// /tmp may be a tmpfs): under the target directory this binary was built into.
fn bench_dir() -> tempfile::TempDir {
    let exe = std::env::current_exe().unwrap();
    let parent = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("gateway-bench-")
        .tempdir_in(parent)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The load.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    Tollgate,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Direct => "direct",
            Side::Tollgate => "tollgate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Saturation,
    FixedRate,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Saturation => "saturation",
            Mode::FixedRate => "fixed rate",
        }
    }
}

/// Where one side's requests go.
struct Target {
    side: Side,
    url: String,
    /// Bearer tokens, used in rotation (tollgate: one per user).
    keys: Vec<String>,
    client: reqwest::Client,
    body: Bytes,
}

/// A request that did not end in a 200 with a complete body.
#[derive(Debug, Clone)]
struct Failure {
    status: Option<u16>,
    text: String,
}

/// Sends request number `i` and reads its whole body.
async fn one(target: &Target, i: usize) -> Result<Bytes, Failure> {
    let key = &target.keys[i % target.keys.len()];
    let response = target
        .client
        .post(&target.url)
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(target.body.clone())
        .send()
        .await
        .map_err(|e| Failure {
            status: None,
            text: tollgate::gateway::error_chain(&e),
        })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| Failure {
        status: Some(status.as_u16()),
        text: format!("reading the body: {}", tollgate::gateway::error_chain(&e)),
    })?;
    if status != reqwest::StatusCode::OK {
        return Err(Failure {
            status: Some(status.as_u16()),
            text: String::from_utf8_lossy(&body).chars().take(500).collect(),
        });
    }
    Ok(body)
}

/// One request, its reply read as JSON: the mock's 16 tokens, through both sides alike.
async fn check_reply(target: &Target) {
    let body = one(target, 0)
        .await
        .unwrap_or_else(|f| panic!("{}: first request failed: {f:?}", target.side.label()));
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        reply["usage"]["completion_tokens"].as_u64(),
        Some(REPLY_TOKENS),
        "{}: unexpected reply {reply}",
        target.side.label()
    );
    let text = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        text.split_whitespace().count() as u64,
        REPLY_TOKENS,
        "{}: unexpected reply {reply}",
        target.side.label()
    );
}

/// The processes whose CPU is read around each run.
#[derive(Debug, Clone, Copy)]
struct Procs {
    gateway: u32,
    mock: u32,
}

/// CPU time of each process so far (and of the gateway's ledger writer thread).
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    gateway: CpuTime,
    writer: Sched,
    mock: CpuTime,
    load: CpuTime,
    /// All CPUs, from /proc/stat: (busy, total) in clock ticks.
    machine: (u64, u64),
}

impl CpuSnapshot {
    fn take(procs: Procs) -> CpuSnapshot {
        let gateway = procs.gateway.to_string();
        CpuSnapshot {
            gateway: cpu_time(&format!("/proc/{gateway}/stat")),
            writer: thread_sched(&gateway, WRITER_THREAD),
            mock: cpu_time(&format!("/proc/{}/stat", procs.mock)),
            load: cpu_time("/proc/self/stat"),
            machine: machine_ticks(),
        }
    }
}

/// CPU microseconds per request during a run: of each process, of the gateway's ledger writer
/// thread, and the share of the gateway's CPU spent in the kernel; and the shares of the run's
/// wall time the writer thread spent on a CPU and waiting for one (runnable, not running).
#[derive(Debug, Clone, Copy, Default)]
struct CpuPerRequest {
    gateway: f64,
    writer: f64,
    writer_on_cpu: f64,
    writer_runnable: f64,
    gateway_system_share: f64,
    mock: f64,
    load: f64,
    /// Share of all CPUs' time that was busy (anything but idle and iowait), every process.
    machine_busy: f64,
}

/// One run's raw results.
struct Run {
    latencies: Vec<Duration>,
    failures: Vec<Failure>,
    /// From the first send to the last reply.
    elapsed: Duration,
    cpu_before: CpuSnapshot,
    cpu_after: CpuSnapshot,
    /// Fixed rate: how late the latest request left its due time (the dispatcher's lag).
    late: Duration,
}

impl Run {
    fn sent(&self) -> usize {
        self.latencies.len() + self.failures.len()
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_request(&self) -> CpuPerRequest {
        let n = self.sent().max(1) as f64;
        let (a, b) = (&self.cpu_after, &self.cpu_before);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n;
        let gateway = a.gateway.since(b.gateway);
        CpuPerRequest {
            gateway: per(gateway),
            writer: per(a.writer.on_cpu.saturating_sub(b.writer.on_cpu)),
            writer_on_cpu: a
                .writer
                .on_cpu
                .saturating_sub(b.writer.on_cpu)
                .as_secs_f64()
                / self.elapsed.as_secs_f64(),
            writer_runnable: a
                .writer
                .runnable
                .saturating_sub(b.writer.runnable)
                .as_secs_f64()
                / self.elapsed.as_secs_f64(),
            gateway_system_share: a
                .gateway
                .system
                .saturating_sub(b.gateway.system)
                .as_secs_f64()
                / gateway.as_secs_f64().max(1e-9),
            mock: per(a.mock.since(b.mock)),
            load: per(a.load.since(b.load)),
            machine_busy: (a.machine.0 - b.machine.0) as f64
                / (a.machine.1 - b.machine.1).max(1) as f64,
        }
    }

    /// Aborts the bench if any request failed, with what the failures were.
    fn assert_clean(&self, side: Side, what: &str) {
        if self.failures.is_empty() {
            return;
        }
        let mut kinds: Vec<(Option<u16>, String, usize)> = Vec::new();
        for f in &self.failures {
            match kinds
                .iter_mut()
                .find(|(s, t, _)| *s == f.status && *t == f.text)
            {
                Some(k) => k.2 += 1,
                None => kinds.push((f.status, f.text.clone(), 1)),
            }
        }
        kinds.sort_by_key(|k| std::cmp::Reverse(k.2));
        let mut report = format!(
            "{what}, {}: {} of {} requests failed:\n",
            side.label(),
            self.failures.len(),
            self.sent()
        );
        for (status, text, count) in kinds.iter().take(10) {
            let status = status.map_or_else(|| "transport error".to_owned(), |s| s.to_string());
            report.push_str(&format!("  {count} x {status}: {text}\n"));
        }
        panic!("{report}");
    }
}

/// Closed loop: `connections` tasks, each sending its next request when its last one answered,
/// until `length` has passed.
async fn saturate(target: Arc<Target>, connections: usize, length: Duration, procs: Procs) -> Run {
    let cpu_before = CpuSnapshot::take(procs);
    let start = Instant::now();
    let deadline = start + length;
    let tasks: Vec<_> = (0..connections)
        .map(|worker| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = Vec::new();
                let mut i = worker;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match one(&target, i).await {
                        Ok(_) => latencies.push(sent.elapsed()),
                        Err(f) => failures.push(f),
                    }
                    i += connections;
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        let (l, f) = task.await.unwrap();
        latencies.extend(l);
        failures.extend(f);
    }
    let elapsed = start.elapsed();
    Run {
        latencies,
        failures,
        elapsed,
        cpu_before,
        cpu_after: CpuSnapshot::take(procs),
        late: Duration::ZERO,
    }
}

/// Open loop: request i is due at start + i/rate; a dispatcher thread (sleeping to each due
/// time, not on the runtime's millisecond timer) hands it to the runtime, and its latency runs
/// from the due time to its last byte.
fn fixed_rate(
    runtime: &tokio::runtime::Handle,
    target: Arc<Target>,
    rate: u32,
    length: Duration,
    procs: Procs,
) -> Run {
    let count = ((f64::from(rate) * length.as_secs_f64()).round() as usize).max(1);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let (tx, rx) = std::sync::mpsc::channel::<(Result<Duration, Failure>, Instant)>();
    let cpu_before = CpuSnapshot::take(procs);
    let start = Instant::now() + Duration::from_millis(5);
    let mut late = Duration::ZERO;
    for i in 0..count {
        let due = start + period * i as u32;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        } else {
            late = late.max(now - due);
        }
        let target = target.clone();
        let tx = tx.clone();
        runtime.spawn(async move {
            let result = one(&target, i).await.map(|_| due.elapsed());
            let _ = tx.send((result, Instant::now()));
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(count);
    let mut failures = Vec::new();
    let mut last = start;
    for (result, at) in rx {
        last = last.max(at);
        match result {
            Ok(latency) => latencies.push(latency),
            Err(f) => failures.push(f),
        }
    }
    Run {
        latencies,
        failures,
        elapsed: last - start,
        cpu_before,
        cpu_after: CpuSnapshot::take(procs),
        late,
    }
}

/// The gateway's ledger counters, from its /metrics.
#[derive(Debug, Clone, Copy, Default)]
struct LedgerCounters {
    /// Group commits (transactions) and their summed duration.
    commits: f64,
    commit_seconds: f64,
    /// Transactions that took longer than 5 ms (from the histogram's buckets).
    commits_over_5ms: f64,
    operations: f64,
}

async fn scrape_ledger(client: &reqwest::Client, addr: &str) -> LedgerCounters {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("/metrics has no {name}"))
    };
    let commits = value("tollgate_ledger_commit_seconds_count");
    LedgerCounters {
        commits,
        commit_seconds: value("tollgate_ledger_commit_seconds_sum"),
        commits_over_5ms: commits - value("tollgate_ledger_commit_seconds_bucket{le=\"0.005\"}"),
        operations: value("tollgate_ledger_batch_operations_sum"),
    }
}

/// What the gateway's ledger writer did during one run.
#[derive(Debug, Clone, Copy, Default)]
struct LedgerRun {
    commits_per_request: f64,
    operations_per_commit: f64,
    mean_commit: Duration,
    /// Share of the run's wall time the writer spent inside its transactions (`Ledger::apply`,
    /// BEGIN to COMMIT and its fsync, as the gateway's `ledger_commit_seconds` times them); it is
    /// one thread, so near 100% it is the bottleneck.
    busy: f64,
    /// Share of transactions over 5 ms.
    slow_share: f64,
}

impl LedgerRun {
    fn new(before: LedgerCounters, after: LedgerCounters, run: &Run) -> LedgerRun {
        let commits = after.commits - before.commits;
        let seconds = after.commit_seconds - before.commit_seconds;
        LedgerRun {
            commits_per_request: commits / run.sent().max(1) as f64,
            operations_per_commit: (after.operations - before.operations) / commits.max(1.0),
            mean_commit: Duration::from_secs_f64(seconds / commits.max(1.0)),
            busy: seconds / run.elapsed.as_secs_f64(),
            slow_share: (after.commits_over_5ms - before.commits_over_5ms) / commits.max(1.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The machine and the processes, from /proc.

struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    loadavg: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            loadavg: read_trimmed("/proc/loadavg"),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Clock ticks per second, for /proc/<pid>/stat's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The gateway's ledger writer thread's name (gateway::writer).
const WRITER_THREAD: &str = "ledger-writer";

/// User and system CPU time.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTime {
    user: Duration,
    system: Duration,
}

impl CpuTime {
    /// User + system time since `earlier`.
    fn since(self, earlier: CpuTime) -> Duration {
        (self.user + self.system).saturating_sub(earlier.user + earlier.system)
    }
}

/// CPU time from a /proc `stat` file: of a whole process (every thread, living or not) for
/// /proc/<pid>/stat, of one thread for /proc/<pid>/task/<tid>/stat. Zero if it is gone.
fn cpu_time(path: &str) -> CpuTime {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return CpuTime::default();
    };
    // Fields after the command name (which may hold spaces) in parentheses: state is field 3,
    // utime field 14, stime field 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        let t = rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Duration::from_secs_f64(t as f64 / clock_ticks())
    };
    CpuTime {
        user: ticks(11),
        system: ticks(12),
    }
}

/// Busy and total clock ticks of all CPUs since boot, from /proc/stat's `cpu` line (user nice
/// system idle iowait irq softirq steal ...): busy is everything but idle and iowait.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A thread's scheduler times, from /proc/<pid>/task/<tid>/schedstat (nanoseconds).
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    /// Time on a CPU.
    on_cpu: Duration,
    /// Time runnable but waiting for a CPU.
    runnable: Duration,
}

/// Scheduler times of the threads of process `pid` named `name` (summed).
fn thread_sched(pid: &str, name: &str) -> Sched {
    let mut total = Sched::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let text = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let mut fields = text
            .split_whitespace()
            .map(|v| Duration::from_nanos(v.parse().unwrap_or(0)));
        total.on_cpu += fields.next().unwrap_or_default();
        total.runnable += fields.next().unwrap_or_default();
    }
    total
}

/// The disk under the data dir: `rounds` appends of 32 KiB to a file, each followed by an fsync
/// (about what one small group commit writes to the WAL). Returns the p50 and p99 of each.
fn disk_probe(dir: &Path, rounds: usize) -> (Duration, Duration) {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a_u8; 32 * 1024];
    let times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            file.write_all(&block).unwrap();
            file.sync_all().unwrap();
            t.elapsed()
        })
        .collect();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    (percentile(&times, 50.0), percentile(&times, 99.0))
}

fn print_disk_probe(dir: &Path, when: &str, rounds: usize) {
    let (p50, p99) = disk_probe(dir, rounds);
    println!(
        "disk {when}: 32 KiB append + fsync in the data dir's filesystem, p50 {:.3} ms, p99 {:.3} \
         ms ({rounds} rounds)",
        ms(p50),
        ms(p99)
    );
}

#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kb: u64,
    hwm_kb: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
    }
}

// ---------------------------------------------------------------------------------------------
// The books.

/// After the gateway stopped: `tollgate verify` exits 0, and the usage log holds one successful
/// row (HTTP 200) per request sent through tollgate, and nothing else.
fn check_books(data_dir: &Path, sent: usize) {
    let report: Value = serde_json::from_str(&cli(data_dir, &["verify"])).unwrap();
    assert_eq!(
        report["violations"].as_array().map(Vec::len),
        Some(0),
        "tollgate verify: {report}"
    );
    assert_eq!(
        report["open_holds"].as_u64(),
        Some(0),
        "open holds left: {report}"
    );
    let conn = db::open(&data_dir.join("tollgate.db"), OpenMode::MustExist).unwrap();
    let (rows, ok_rows, tokens): (i64, i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), \
                    COUNT(*) FILTER (WHERE success = 1 AND http_status = 200), \
                    COALESCE(SUM(completion_tokens), 0) \
             FROM llm_usage_log",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let usage_entries: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM credit_transactions WHERE transaction_type = 'usage'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "books: tollgate verify clean ({} users, {} journal entries, 0 open holds); {rows} usage \
         rows, {ok_rows} of them successful 200s, {usage_entries} usage journal entries, for \
         {sent} requests sent through tollgate",
        report["users"], report["entries"]
    );
    assert_eq!(
        rows as usize, sent,
        "usage rows ({rows}) differ from requests sent through tollgate ({sent})"
    );
    assert_eq!(ok_rows, rows, "some usage rows are not successful 200s");
    assert_eq!(
        usage_entries, rows,
        "usage journal entries ({usage_entries}) differ from usage rows ({rows})"
    );
    assert_eq!(
        tokens as u64,
        REPLY_TOKENS * sent as u64,
        "completion tokens metered differ from {REPLY_TOKENS} per request"
    );
}

// ---------------------------------------------------------------------------------------------
// The summary.

/// One run's numbers.
#[derive(Debug, Clone, Copy)]
struct Measured {
    turn: usize,
    mode: Mode,
    side: Side,
    rate: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    cpu: CpuPerRequest,
    late: Duration,
    /// Tollgate only.
    ledger: Option<LedgerRun>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`th percentile (nearest rank) of `durations`; 100 is the maximum.
fn percentile(durations: &[Duration], p: f64) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn summarize(config: &Config, results: &[Measured], rss_after_saturation: &[u64], mem: Memory) {
    let of = |mode: Mode, side: Side| {
        results
            .iter()
            .filter(move |m| m.mode == mode && m.side == side)
    };
    let med = |mode: Mode, side: Side, f: &dyn Fn(&Measured) -> f64| {
        median(of(mode, side).map(f).collect())
    };
    // Per turn: tollgate minus direct (p50, p99 in ms), tollgate / direct (rate).
    let per_turn = |mode: Mode, f: &dyn Fn(&Measured, &Measured) -> f64| -> (f64, f64) {
        let values: Vec<f64> = (0..config.turns)
            .filter_map(|t| {
                let d = of(mode, Side::Direct).find(|m| m.turn == t)?;
                let g = of(mode, Side::Tollgate).find(|m| m.turn == t)?;
                Some(f(g, d))
            })
            .collect();
        (
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    };

    println!();
    println!(
        "summary: median of {} turn(s) of {:.1}s per mode and side{}",
        config.turns,
        config.run.as_secs_f64(),
        if config.smoke { " (SMOKE RUN)" } else { "" }
    );
    println!(
        "{:<34} {:>10} {:>10} {:>22}  per turn",
        "", "direct", "tollgate", "tollgate vs direct"
    );
    for mode in [Mode::Saturation, Mode::FixedRate] {
        let title = match mode {
            Mode::Saturation => format!("saturation, {} connections", config.concurrency),
            Mode::FixedRate => format!("fixed rate, {}/s offered", config.rate),
        };
        println!("{title}");
        let (d, g) = (
            med(mode, Side::Direct, &|m| m.rate),
            med(mode, Side::Tollgate, &|m| m.rate),
        );
        let (lo, hi) = per_turn(mode, &|g, d| g.rate / d.rate);
        println!(
            "  {:<32} {:>10.0} {:>10.0} {:>15.3} ratio  {lo:.3} to {hi:.3}",
            "throughput, req/s",
            d,
            g,
            g / d
        );
        for (name, pick) in [
            (
                "p50 latency, ms",
                (|m: &Measured| ms(m.p50)) as fn(&Measured) -> f64,
            ),
            ("p99 latency, ms", |m: &Measured| ms(m.p99)),
        ] {
            let (d, g) = (
                med(mode, Side::Direct, &pick),
                med(mode, Side::Tollgate, &pick),
            );
            let (lo, hi) = per_turn(mode, &|g, d| pick(g) - pick(d));
            println!(
                "  {:<32} {:>10.3} {:>10.3} {:>+13.3} added  {lo:+.3} to {hi:+.3}",
                name,
                d,
                g,
                g - d
            );
        }
        let cpu = |side: Side, f: &dyn Fn(&CpuPerRequest) -> f64| med(mode, side, &|m| f(&m.cpu));
        println!(
            "  {:<32} {:>10} {:>10.1}",
            "CPU us/req: gateway",
            "-",
            cpu(Side::Tollgate, &|c| c.gateway)
        );
        println!(
            "  {:<32} {:>10} {:>10.1}",
            "  of which ledger writer thread",
            "-",
            cpu(Side::Tollgate, &|c| c.writer)
        );
        println!(
            "  {:<32} {:>10} {:>9.0}%",
            "  of which in the kernel",
            "-",
            cpu(Side::Tollgate, &|c| c.gateway_system_share * 100.0)
        );
        println!(
            "  {:<32} {:>10.1} {:>10.1}",
            "CPU us/req: mock upstream",
            cpu(Side::Direct, &|c| c.mock),
            cpu(Side::Tollgate, &|c| c.mock)
        );
        println!(
            "  {:<32} {:>10.1} {:>10.1}",
            "CPU us/req: load generator",
            cpu(Side::Direct, &|c| c.load),
            cpu(Side::Tollgate, &|c| c.load)
        );
        println!(
            "  {:<32} {:>9.0}% {:>9.0}%",
            "machine busy (both CPUs, all)",
            cpu(Side::Direct, &|c| c.machine_busy * 100.0),
            cpu(Side::Tollgate, &|c| c.machine_busy * 100.0)
        );
        let ledger = |f: &dyn Fn(&LedgerRun) -> f64| {
            median(
                of(mode, Side::Tollgate)
                    .filter_map(|m| m.ledger.as_ref().map(f))
                    .collect(),
            )
        };
        println!(
            "  ledger: {:.2} commits/req, {:.1} ops/commit, transaction mean {:.2} ms, {:.1}% of \
             transactions over 5 ms\n  ledger writer thread: inside transactions {:.0}% of the \
             time, on a CPU {:.0}%, runnable waiting for a CPU {:.0}%",
            ledger(&|l| l.commits_per_request),
            ledger(&|l| l.operations_per_commit),
            ledger(&|l| ms(l.mean_commit)),
            ledger(&|l| l.slow_share * 100.0),
            ledger(&|l| l.busy * 100.0),
            cpu(Side::Tollgate, &|c| c.writer_on_cpu * 100.0),
            cpu(Side::Tollgate, &|c| c.writer_runnable * 100.0),
        );
        if mode == Mode::FixedRate {
            let late = results
                .iter()
                .filter(|m| m.mode == mode)
                .map(|m| m.late)
                .max()
                .unwrap_or_default();
            println!(
                "  dispatcher: the latest send left {:.3} ms after its due time (counted in its \
                 latency)",
                ms(late)
            );
        }
    }
    let mb = |kb: u64| kb as f64 / 1024.0;
    let rss_max = rss_after_saturation.iter().copied().max().unwrap_or(0);
    let rss_last = rss_after_saturation.last().copied().unwrap_or(0);
    println!(
        "gateway memory: VmRSS after its saturation runs {:.1} MB (last) / {:.1} MB (max); now \
         {:.1} MB; peak (VmHWM) {:.1} MB",
        mb(rss_last),
        mb(rss_max),
        mb(mem.rss_kb),
        mb(mem.hwm_kb)
    );

    let added_p99 = med(Mode::FixedRate, Side::Tollgate, &|m| ms(m.p99))
        - med(Mode::FixedRate, Side::Direct, &|m| ms(m.p99));
    let saturated = med(Mode::Saturation, Side::Tollgate, &|m| m.rate);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    if config.smoke {
        println!("targets: not judged on a smoke run");
        return;
    }
    println!("targets:");
    println!(
        "  added p99 latency at {}/s under 1 ms: {added_p99:+.3} ms, {}",
        config.rate,
        verdict(added_p99 < 1.0)
    );
    println!(
        "  at least 5,000 metered requests/s at saturation: {saturated:.0}/s, {}",
        verdict(saturated >= 5_000.0)
    );
    println!(
        "  memory under 100 MB resident: peak {:.1} MB, {}",
        mb(mem.hwm_kb),
        verdict(mb(mem.hwm_kb) < 100.0)
    );
}

// ---------------------------------------------------------------------------------------------
// The low-balance race.

const RACE_PROMPT: &str = "Race mock:tokens=250";
const RACE_MAX_TOKENS: u64 = 300;
/// What one race request really costs: 2 prompt words × 1,500 + 250 reply tokens × 6,000
/// nano-credits (gpt-4o-mini at 10 credits per USD, balanced).
const RACE_COST_NANOS: i64 = 2 * 1_500 + 250 * 6_000;

/// Credit for `config.race_k` requests, 5 × that many requests at once: what was served, and
/// the share of the credit spent (see the module doc).
fn low_balance_race(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    mock_url: &str,
    config: &Config,
) {
    let k = config.race_k;
    let requests = 5 * k;
    let data_dir = dir.join("race");
    cli(&data_dir, &["init"]);
    cli(
        &data_dir,
        &["users", "add", "racer", "--tier", "professional"],
    );
    let credit_nanos = RACE_COST_NANOS * k as i64;
    let credit = format!(
        "{}.{:09}",
        credit_nanos / 1_000_000_000,
        credit_nanos % 1_000_000_000
    );
    cli(
        &data_dir,
        &["credits", "add", "racer", &credit, "--type", "purchase"],
    );
    let created: Value =
        serde_json::from_str(&cli(&data_dir, &["users", "api-key", "create", "racer"])).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let gateway = GatewayProcess::start(&data_dir, &dir.join("race-gateway.log"), mock_url);
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    runtime.block_on(gateway.wait_ready(&client));
    let url = format!("http://{}/v1/chat/completions", gateway.addr);
    let body = json!({"model": MODEL, "max_tokens": RACE_MAX_TOKENS,
                      "messages": [{"role": "user", "content": RACE_PROMPT}]});
    let started = Instant::now();
    let outcomes: Vec<(u16, String)> = runtime.block_on(async {
        let tasks: Vec<_> = (0..requests)
            .map(|_| {
                let (client, url, key, body) =
                    (client.clone(), url.clone(), key.clone(), body.clone());
                tokio::spawn(async move {
                    let r = client
                        .post(url)
                        .bearer_auth(key)
                        .json(&body)
                        .send()
                        .await
                        .expect("a race request failed to send");
                    let status = r.status().as_u16();
                    let reply: Value = r.json().await.unwrap_or(Value::Null);
                    let finish = reply["choices"][0]["finish_reason"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    (status, finish)
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    });
    let took = started.elapsed();
    let whole = outcomes
        .iter()
        .filter(|(s, f)| *s == 200 && f == "stop")
        .count();
    let cut = outcomes
        .iter()
        .filter(|(s, f)| *s == 200 && f == "length")
        .count();
    let refused = outcomes.iter().filter(|(s, _)| *s == 402).count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|(s, f)| !(*s == 402 || (*s == 200 && (f == "stop" || f == "length"))))
        .collect();
    assert!(
        other.is_empty(),
        "race requests that were neither served nor refused: {other:?}"
    );
    gateway.stop();
    let report: Value = serde_json::from_str(&cli(&data_dir, &["verify"])).unwrap();
    assert_eq!(
        report["violations"].as_array().map(Vec::len),
        Some(0),
        "race: tollgate verify: {report}"
    );
    let conn = db::open(&data_dir.join("tollgate.db"), OpenMode::MustExist).unwrap();
    let (balance, overage): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT balance FROM user_credits WHERE user_id = 'racer'), \
                    (SELECT COALESCE(SUM(overage_credits), 0) FROM llm_usage_log)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(balance >= 0, "the balance went below zero: {balance}");
    assert_eq!(overage, 0, "metered cost beyond a hold went unbilled");
    let share = (credit_nanos - balance) as f64 / credit_nanos as f64;
    println!();
    println!(
        "low-balance race: credit for {k} requests ({credit} credits), {requests} concurrent \
         requests (max_tokens {RACE_MAX_TOKENS}, 250-token replies): {whole} served whole, {cut} \
         cut short, {refused} refused with 402, in {:.2} s; {:.1}% of the credit spent (target \
         >= 90%), balance {} nano-credits (never below zero), overage 0",
        took.as_secs_f64(),
        share * 100.0,
        balance
    );
    if !config.smoke {
        assert!(
            share >= 0.9,
            "only {:.1}% of the credit was spent",
            share * 100.0
        );
    }
}
