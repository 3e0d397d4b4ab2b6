//! Fault injection, end to end: three agents (real `tollgate serve` gateways with their sync
//! tasks), two `tollgate-server` replicas, and a PostgreSQL cluster this test starts itself
//! (never the machine's shared one). Every agent reaches the replicas through a TCP proxy the test
//! controls. Low-balance users are served concurrently on every agent — home users on their agent,
//! and one low-balance fleet user on every agent at once, spending grants of a central pool —
//! while a nemesis, driven by a seed, kills gateways and replicas with SIGKILL, crashes and
//! restarts PostgreSQL, partitions agents from the server and heals them, jumps an agent's clock
//! (its gateway restarted minutes ahead or behind), and makes central grants (each twice, as a
//! retrying admin would). After healing and draining, the invariants of SYNC.md must hold:
//! conservation (reconcile, `tollgate verify`; the fleet user's pool + what agents hold + spent =
//! given + debt, the debt no more than the overdraft lines agents cut off drew, each exactly the
//! line), no overspend (no balance or holding below zero, one debit per request), exactly once
//! (every agent entry on the server once with its hash; every grant once), and convergence (each
//! agent's balances equal the server's). It prints requests served and refused, credit spent,
//! stranded and left, and the time to converge.
//!
//! Repeat a run: `TOLLGATE_FAULT_SEED=<seed> cargo nextest run -p tollgate-e2e -E
//! 'binary(faults)' --no-capture` (the seed fixes the nemesis's schedule; the interleaving with
//! traffic still varies). `TOLLGATE_FAULT_STEPS` sets the number of faults (CI: 12).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate_e2e::cluster::PgCluster;
use tollgate_e2e::proxy::TcpProxy;
use tollgate_e2e::{Agent, Process, Server, eventually, ok, run, word_with_prefix};
use tollgate_mock_upstream::MockUpstream;

const AGENTS: usize = 3;
const REPLICAS: usize = 2;
const USERS_PER_AGENT: usize = 2;
/// Requests each user's credit pays for (then they are refused with 402).
const AFFORDABLE: u32 = 150;
/// Requests the fleet user's pool pays for, across every agent.
const FLEET_AFFORDABLE: u32 = 200;
/// Requests the fleet user's overdraft line pays for, on an agent cut off from the server.
const FLEET_LINE_REQUESTS: u32 = 20;
/// The fleet user, served by every agent.
const FLEET_USER: &str = "fleet-ann";
/// Time between two faults.
const STEP: Duration = Duration::from_millis(500);
/// How long convergence may take after healing (the agent's retry backoff is capped at 30 s).
const CONVERGE: Duration = Duration::from_secs(120);

/// xorshift64*: a small seeded generator, so a seed names a schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Host {
    agent: Agent,
    proxy: TcpProxy,
    gateway: Option<Process>,
    url: Arc<Mutex<String>>,
    users: Vec<(String, String)>,
    partitioned: bool,
}

impl Host {
    fn start_gateway(&mut self, upstream: &str) {
        self.start_gateway_skewed(upstream, 0);
    }

    /// Restarts the gateway with its clock `skew_secs` off (a clock that jumped).
    fn start_gateway_skewed(&mut self, upstream: &str, skew_secs: i64) {
        let skew = skew_secs.to_string();
        let envs: &[(&str, &str)] = if skew_secs == 0 {
            &[]
        } else {
            &[("TOLLGATE_CLOCK_SKEW_SECS", &skew)]
        };
        let (gateway, url) = self.agent.serve_with(upstream, envs);
        self.gateway = Some(gateway);
        *self.url.lock().unwrap() = url;
    }
}

#[derive(Debug, Default)]
struct Tally {
    served: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    /// Users refused with 402 at least once (their credit ran out).
    ran_out: Mutex<std::collections::BTreeSet<String>>,
}

async fn chat(client: &reqwest::Client, url: &str, key: &str, n: u64) -> Result<u16, String> {
    client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini",
                      "messages": [{"role": "user", "content": format!("{n} mock:tokens=40")}]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// One agent's clients: its users in turn, until `stop`.
async fn traffic(
    url: Arc<Mutex<String>>,
    users: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    others: Arc<Mutex<Vec<u16>>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        for (user, key) in &users {
            n += 1;
            let target = url.lock().unwrap().clone();
            match chat(&client, &target, key, n).await {
                Ok(200) => tally.served.fetch_add(1, Ordering::Relaxed),
                Ok(402) => {
                    tally.ran_out.lock().unwrap().insert(user.clone());
                    tally.refused.fetch_add(1, Ordering::Relaxed)
                }
                Ok(status) => {
                    others.lock().unwrap().push(status);
                    tally.other.fetch_add(1, Ordering::Relaxed)
                }
                Err(_) => {
                    // The gateway was killed: its clients retry once it is back.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tally.unavailable.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// Converged: each agent's journal acknowledged and its inbox applied to the head. Connects
/// afresh each time (PostgreSQL may have been restarted since the last check).
async fn converged(hosts: &[Host], url: &str) -> Option<()> {
    let (pg, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    for host in hosts {
        let status = host.agent.json(&["sync", "status"]);
        let inbox_head: i64 = pg
            .query_one(
                "SELECT inbox_head FROM agents WHERE name = $1",
                &[&host.agent.name],
            )
            .await
            .ok()?
            .get(0);
        if status["head_seq"] != status["acked_seq"] || status["inbox_cursor"] != inbox_head {
            return None;
        }
    }
    Some(())
}

/// The fleet user's pool, from a fresh connection (PostgreSQL may be restarting: `None`).
async fn fleet_pool(url: &str) -> Option<Decimal> {
    let (pg, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    pg.query_one(
        "SELECT pool FROM user_credits WHERE user_id = $1",
        &[&FLEET_USER],
    )
    .await
    .ok()
    .map(|r| r.get(0))
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A central grant through the CLI, retried until the database answers (it may be restarting).
async fn grant(server: &Server, user: &str, amount: &str, operation: &str) {
    eventually("the grant to be accepted", CONVERGE, || async {
        let out = run(
            server.command(&[
                "credits",
                "grant",
                user,
                amount,
                "--operation-id",
                operation,
            ]),
            None,
        );
        out.status.success().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_hold_through_kills_restarts_and_partitions() {
    let seed: u64 = std::env::var("TOLLGATE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let steps: usize = std::env::var("TOLLGATE_FAULT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("fault injection: seed {seed}, {steps} faults (TOLLGATE_FAULT_SEED={seed} repeats)");
    let mut rng = Rng(seed);

    let cluster = PgCluster::start();
    let server = Server {
        database_url: cluster.url(),
        envs: vec![("TOLLGATE_SERVER_POOL_WAIT_MS".into(), "2000".into())],
    };
    server.ok(&["migrate"]);
    let ports: Vec<String> = (0..REPLICAS)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("127.0.0.1:{port}")
        })
        .collect();
    let mut replicas: Vec<Option<Process>> =
        ports.iter().map(|p| Some(server.serve(p).0)).collect();
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| p.parse().unwrap()).collect();
    let upstream = MockUpstream::spawn().await.unwrap();

    // Agents, each behind its own proxy to the replicas; users made and funded centrally.
    let mut hosts = Vec::new();
    for a in 0..AGENTS {
        let name = format!("edge-{a}");
        let mut targets = addrs.clone();
        targets.rotate_left(a % REPLICAS);
        let proxy = TcpProxy::start(targets).await;
        let agent = Agent::init(&name);
        let token = word_with_prefix(&server.ok(&["agents", "enroll", &name]), "tge_");
        ok(
            agent.command(&["enroll", "--server", &proxy.url(), "--token", "-"]),
            Some(&token),
        );
        let mut users = Vec::new();
        for u in 0..USERS_PER_AGENT {
            let user = format!("user-{a}-{u}");
            let key = server.user_with_key(&user, &name, "professional");
            users.push((user, key));
        }
        hosts.push(Host {
            agent,
            proxy,
            gateway: None,
            url: Arc::default(),
            users,
            partitioned: false,
        });
    }
    // What one request costs: a probe user (not in the traffic) pays for one.
    let probe_user = "probe".to_owned();
    let probe_key = server.user_with_key(&probe_user, "edge-0", "professional");
    grant(&server, &probe_user, "1", "probe").await;
    // The fleet user: no home, settings and key on every agent.
    server.ok(&["users", "set", FLEET_USER, "--tier", "professional"]);
    let fleet_key: Value = serde_json::from_str(&server.ok(&[
        "users", "api-key", "create", FLEET_USER, "--name", "e2e", "--json",
    ]))
    .unwrap();
    let fleet_key = fleet_key["key"].as_str().unwrap().to_owned();
    for host in &mut hosts {
        host.agent.ok(&["sync", "now"]);
        host.start_gateway(&upstream.url());
    }
    let probe_url = hosts[0].url.lock().unwrap().clone();
    let client = reqwest::Client::new();
    assert_eq!(chat(&client, &probe_url, &probe_key, 0).await, Ok(200));
    let balance = |host: &Host, user: &str| -> Decimal {
        host.agent.json(&["credits", "balance", user])["balance"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let cost = Decimal::ONE - balance(&hosts[0], &probe_user);
    assert!(cost > Decimal::ZERO, "a request costs something");
    let budget = (cost * Decimal::from(AFFORDABLE)).to_string();
    let mut expected_grants: BTreeMap<String, (String, Decimal)> = BTreeMap::new();
    expected_grants.insert("admin:probe".into(), (probe_user.clone(), Decimal::ONE));
    for host in &hosts {
        for (user, _) in &host.users {
            let op = format!("fund-{user}");
            grant(&server, user, &budget, &op).await;
            expected_grants.insert(
                format!("admin:{op}"),
                (user.clone(), budget.parse().unwrap()),
            );
        }
    }
    let fleet_given = cost * Decimal::from(FLEET_AFFORDABLE);
    let fleet_line = cost * Decimal::from(FLEET_LINE_REQUESTS);
    server.ok(&[
        "users",
        "set",
        FLEET_USER,
        "--overdraft",
        &fleet_line.to_string(),
    ]);
    grant(&server, FLEET_USER, &fleet_given.to_string(), "fund-fleet").await;
    let url = cluster.url();
    eventually("the funding to reach the agents", CONVERGE, || {
        converged(&hosts, &url)
    })
    .await;

    // Traffic on every agent while the nemesis runs.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let others: Arc<Mutex<Vec<u16>>> = Arc::default();
    let clients: Vec<_> = hosts
        .iter()
        .map(|h| {
            let mut users = h.users.clone();
            users.push((FLEET_USER.to_owned(), fleet_key.clone()));
            tokio::spawn(traffic(
                h.url.clone(),
                users,
                stop.clone(),
                tally.clone(),
                others.clone(),
            ))
        })
        .collect();
    let mut log = Vec::new();
    for step in 0..steps {
        tokio::time::sleep(STEP).await;
        match rng.below(6) {
            0 => {
                let h = rng.below(AGENTS);
                hosts[h].gateway.take();
                hosts[h].start_gateway(&upstream.url());
                log.push(format!("kill -9 gateway edge-{h}"));
            }
            5 => {
                // The clock jumps up to five minutes either way (past a grant's validity).
                let h = rng.below(AGENTS);
                let skew = i64::try_from(rng.below(601)).unwrap() - 300;
                hosts[h].gateway.take();
                hosts[h].start_gateway_skewed(&upstream.url(), skew);
                log.push(format!("clock of edge-{h} jumps {skew:+} s"));
            }
            1 => {
                let r = rng.below(REPLICAS);
                replicas[r].take();
                replicas[r] = Some(server.serve(&ports[r]).0);
                log.push(format!("kill -9 replica {r}"));
            }
            2 => {
                cluster.crash_and_restart();
                log.push("crash PostgreSQL".to_owned());
            }
            3 => {
                let h = rng.below(AGENTS);
                let host = &mut hosts[h];
                if host.partitioned {
                    host.proxy.heal();
                    log.push(format!("heal edge-{h}"));
                } else {
                    host.proxy.partition();
                    log.push(format!("partition edge-{h}"));
                }
                host.partitioned = !host.partitioned;
            }
            _ => {
                let host = &hosts[rng.below(AGENTS)];
                let (user, _) = &host.users[rng.below(USERS_PER_AGENT)];
                let op = format!("chaos-{step}");
                let amount = (cost * Decimal::from(20)).to_string();
                // Twice, as an admin retrying after a timeout would: one grant.
                grant(&server, user, &amount, &op).await;
                grant(&server, user, &amount, &op).await;
                expected_grants.insert(
                    format!("admin:{op}"),
                    (user.clone(), amount.parse().unwrap()),
                );
                log.push(format!("grant {amount} to {user}"));
            }
        }
    }
    println!("faults: {}", log.join(", "));
    // Heal. The traffic goes on until every user has run out of credit, the fleet user's pool
    // included (signals, however slow the machine): refusals at the edge of the balance are part
    // of what is checked.
    let healing = Instant::now();
    for host in &mut hosts {
        host.proxy.heal();
        host.partitioned = false;
    }
    let users: Vec<String> = hosts
        .iter()
        .flat_map(|h| h.users.iter().map(|(u, _)| u.clone()))
        .chain([FLEET_USER.to_owned()])
        .collect();
    eventually("every user to run out of credit", CONVERGE, || async {
        let all = users
            .iter()
            .all(|u| tally.ran_out.lock().unwrap().contains(u));
        let pool = fleet_pool(&url).await?;
        (all && pool.is_zero()).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let ran_out = healing.elapsed();
    let drained = Instant::now();
    if tokio::time::timeout(CONVERGE, async {
        while converged(&hosts, &url).await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_err()
    {
        let states: Vec<String> = hosts
            .iter()
            .map(|h| format!("{}: {}", h.agent.name, h.agent.json(&["sync", "status"])))
            .collect();
        let central = run(server.command(&["agents", "list"]), None);
        panic!(
            "no convergence {CONVERGE:?} after healing (seed {seed}).\nagents: {}\nserver: {}",
            states.join("\n"),
            String::from_utf8_lossy(&central.stdout)
        );
    }
    let pg = pg_client(&url).await;
    let converge_time = drained.elapsed();
    for host in &mut hosts {
        host.gateway.take();
    }
    // An escrow loop may have asked for a fleet grant between the check and the kill (a release
    // refilled the pool): what the inboxes hold is applied and pushed once more, by the CLI.
    eventually("the stopped agents to be drained", CONVERGE, || async {
        for host in &hosts {
            run(host.agent.command(&["sync", "now"]), None);
        }
        converged(&hosts, &url).await
    })
    .await;

    // Exactly once: every agent entry on the server once, contiguous, with the agent's hash.
    for host in &hosts {
        let status = host.agent.json(&["sync", "status"]);
        let head = status["head_seq"].as_i64().unwrap();
        let row = pg
            .query_one(
                "SELECT count(*), count(DISTINCT t.seq), COALESCE(max(t.seq), 0) \
                 FROM credit_transactions t JOIN agents a USING (agent_id) WHERE a.name = $1",
                &[&host.agent.name],
            )
            .await
            .unwrap();
        let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            counts,
            (head, head, head),
            "{}: central copy",
            host.agent.name
        );
        host.agent.ok(&["verify"]);
    }
    // Every grant once, whatever the faults and retries.
    for (key, (user, amount)) in &expected_grants {
        let rows: Vec<(String, Decimal)> = pg
            .query(
                "SELECT user_id, amount FROM credit_transactions WHERE idempotency_key = $1",
                &[key],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(rows, vec![(user.clone(), *amount)], "{key}");
    }
    // No overspend: one debit per request, no balance below zero; each agent agrees with the
    // server.
    let doubled: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT request_id FROM credit_transactions \
             WHERE transaction_type = 'usage' GROUP BY request_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(doubled, 0, "a request was charged twice");
    let mut left = Decimal::ZERO;
    for (host, user) in hosts
        .iter()
        .flat_map(|h| h.users.iter().map(move |(u, _)| (h, u)))
        .chain([(&hosts[0], &probe_user)])
    {
        {
            let central: Decimal = pg
                .query_one(
                    "SELECT balance FROM user_credits WHERE user_id = $1",
                    &[user],
                )
                .await
                .unwrap()
                .get(0);
            assert!(central >= Decimal::ZERO, "{user}: {central}");
            assert_eq!(balance(host, user), central, "{user}: agent and server");
            left += central;
        }
    }
    // The fleet user: each agent holds what the server says it holds; nothing below zero.
    let pool: Decimal = pg
        .query_one(
            "SELECT pool FROM user_credits WHERE user_id = $1",
            &[&FLEET_USER],
        )
        .await
        .unwrap()
        .get(0);
    let mut fleet_held = Decimal::ZERO;
    for host in &hosts {
        let holding: Decimal = pg
            .query_opt(
                "SELECT h.balance FROM escrow_holdings h JOIN agents a USING (agent_id) \
                 WHERE h.user_id = $1 AND a.name = $2",
                &[&FLEET_USER, &host.agent.name],
            )
            .await
            .unwrap()
            .map_or(Decimal::ZERO, |r| r.get(0));
        assert!(holding >= Decimal::ZERO);
        assert_eq!(
            balance(host, FLEET_USER),
            holding,
            "{}: what it holds of {FLEET_USER}",
            host.agent.name
        );
        fleet_held += holding;
    }
    let fleet_spent: Decimal = pg
        .query_one(
            "SELECT COALESCE(-sum(amount), 0) FROM credit_transactions \
             WHERE transaction_type = 'usage' AND user_id = $1",
            &[&FLEET_USER],
        )
        .await
        .unwrap()
        .get(0);
    // Overdraft lines drawn by agents cut off: each exactly the line; what the pool did not
    // cover is owed.
    let (debt, drawn): (Decimal, Vec<Decimal>) = {
        let debt: Decimal = pg
            .query_one(
                "SELECT debt FROM user_credits WHERE user_id = $1",
                &[&FLEET_USER],
            )
            .await
            .unwrap()
            .get(0);
        let drawn = pg
            .query(
                "SELECT amount FROM credit_transactions \
                 WHERE user_id = $1 AND idempotency_key LIKE 'overdraft:%'",
                &[&FLEET_USER],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (debt, drawn)
    };
    assert!(drawn.iter().all(|d| *d == fleet_line), "{drawn:?}");
    let overdrawn: Decimal = drawn.iter().copied().sum();
    assert!(
        debt <= overdrawn,
        "debt {debt} beyond the lines drawn {overdrawn}"
    );
    assert!(pool.is_zero() || debt.is_zero(), "pool {pool}, debt {debt}");
    assert_eq!(
        pool + fleet_held + fleet_spent,
        fleet_given + debt,
        "the fleet user: pool + held + spent = given + debt"
    );
    left += pool + fleet_held;
    let out = run(server.command(&["reconcile", "--json"]), None);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        out.status.success(),
        "reconcile found differences: {report:#}"
    );
    assert_eq!(report["differences"], json!([]));

    let spent: Decimal = pg
        .query_one(
            "SELECT COALESCE(-sum(amount), 0) FROM credit_transactions \
             WHERE transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let granted: Decimal =
        expected_grants.values().map(|(_, a)| *a).sum::<Decimal>() + fleet_given + debt;
    assert_eq!(
        spent + left,
        granted,
        "conservation: granted = spent + left"
    );
    let served = tally.served.load(Ordering::Relaxed);
    let refused = tally.refused.load(Ordering::Relaxed);
    println!(
        "served {served}, refused (402) {refused}, gateway down {}, other {} {:?}; credit \
         granted {granted}, spent {spent}, left {left}; fleet user: given {fleet_given}, spent \
         {fleet_spent} ({:.1} %), stranded {} (pool {pool}, agents {fleet_held}), {} overdraft \
         line(s) drawn, debt {debt}; converged \
         {converge_time:?} after the traffic stopped ({ran_out:?} after healing)",
        tally.unavailable.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        others.lock().unwrap(),
        fleet_spent / fleet_given * Decimal::from(100),
        pool + fleet_held,
        drawn.len(),
    );
    assert!(served > 0, "some requests were served");
    assert!(
        refused > 0,
        "the low balances ran out (the test must reach refusals)"
    );
    drop(replicas);
}
