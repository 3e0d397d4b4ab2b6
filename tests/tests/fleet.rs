//! One fleet user served by every agent, end to end with the real binaries (SYNC.md "Escrow"):
//! the user is made centrally without a home, funded, given a key; three agents serve them at
//! once, each spending only grants carved from the central pool, asked for off the request path.
//! Demand is above the pool: the clients go on until they are refused. Then, with everything
//! pushed: nothing was spent twice or beyond what was given, the books agree on every side, and
//! at least 90 % of the pool was spendable across the fleet. Prints what it measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::Value;
use tollgate_e2e::proxy::TcpProxy;
use tollgate_e2e::{
    Agent, Database, Server, eventually, ok, small_chat, small_chat_answer, word_with_prefix,
};
use tollgate_mock_upstream::MockUpstream;

const AGENTS: usize = 3;
const CLIENTS_PER_AGENT: usize = 2;
/// The pool: a few hundred requests' worth at the request size below.
const GIVEN: &str = "0.25";
/// A client gives up once every request it sent for this long was refused.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3);
const CONVERGE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Tally {
    served: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
}

/// One client of one gateway: requests until refused for [`GIVE_UP_AFTER`] on end.
async fn client(url: String, key: String, tally: Arc<Tally>) {
    let http = reqwest::Client::new();
    let mut refused_since: Option<Instant> = None;
    let mut n = 0;
    loop {
        n += 1;
        match small_chat(&http, &url, &key, n).await {
            200 => {
                tally.served.fetch_add(1, Ordering::Relaxed);
                refused_since = None;
            }
            402 => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                let since = *refused_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GIVE_UP_AFTER {
                    return;
                }
                // Not a spin: the escrow task is asking the server meanwhile.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => {
                tally.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_user_spends_the_pool_across_agents_never_more() {
    let db = Database::create().await;
    let server = Server::migrated(&db);
    let (_server_process, addr) = server.serve("127.0.0.1:0");
    let base = format!("http://{addr}");
    let upstream = MockUpstream::spawn().await.unwrap();

    let (agents, gateways) =
        tollgate_e2e::enrolled_gateways(&server, &base, &upstream.url(), AGENTS);

    // A fleet user, made centrally without a home: every agent is sent her settings and key.
    let made = server.ok(&["users", "set", "ann", "--tier", "professional"]);
    assert!(made.contains("fleet user ann created"), "{made}");
    let key: Value = serde_json::from_str(&server.ok(&[
        "users", "api-key", "create", "ann", "--name", "fleet", "--json",
    ]))
    .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("tg_"), "{key}");
    let funded = server.ok(&[
        "credits",
        "grant",
        "ann",
        GIVEN,
        "--operation-id",
        "fund-ann",
    ]);
    assert!(funded.contains("fleet pool"), "{funded}");
    let http = reqwest::Client::new();
    for (_, url) in &gateways {
        // Known everywhere once her key works (no grant yet may mean 402, never 401).
        eventually("ann's key to reach every agent", CONVERGE, || async {
            (small_chat(&http, url, &key, 0).await != 401).then_some(())
        })
        .await;
    }

    // Demand above the pool, on every agent at once.
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let clients: Vec<_> = gateways
        .iter()
        .flat_map(|(_, url)| {
            (0..CLIENTS_PER_AGENT)
                .map(|_| tokio::spawn(client(url.clone(), key.clone(), tally.clone())))
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let ran_for = started.elapsed();
    // The gateways stop (no escrow loop asks for more meanwhile), then everything is pushed.
    drop(gateways);

    // Everything pushed and applied.
    for agent in &agents {
        agent.ok(&["sync", "now"]);
    }
    let pg = db.client().await;
    eventually("every agent to be acknowledged", CONVERGE, || async {
        for agent in &agents {
            let status = agent.json(&["sync", "status"]);
            if status["head_seq"] != status["acked_seq"] {
                agent.ok(&["sync", "now"]);
                return None;
            }
        }
        Some(())
    })
    .await;

    // The books: no overspend, conservation, every side agrees.
    let shown: Value =
        serde_json::from_str(&server.ok(&["users", "show", "ann", "--json"])).unwrap();
    let given: Decimal = GIVEN.parse().unwrap();
    let pool = dec(&shown["pool"]);
    let held = dec(&shown["balance"]);
    let spent = dec(&shown["credits_used_this_month"]);
    assert_eq!(shown["fleet"], true, "{shown}");
    assert_eq!(pool + held + spent, given, "conservation: {shown}");
    assert!(spent <= given, "spent {spent} of {given}");
    let mut held_on_agents = Decimal::ZERO;
    for agent in &agents {
        agent.ok(&["verify"]);
        let balance = dec(&agent.json(&["credits", "balance", "ann"])["balance"]);
        assert!(balance >= Decimal::ZERO);
        held_on_agents += balance;
    }
    assert_eq!(held_on_agents, held, "the agents hold what the server says");
    let spent_on_agents: Decimal = pg
        .query_one(
            "SELECT coalesce(-sum(amount), 0) FROM credit_transactions \
             WHERE user_id = 'ann' AND transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(spent_on_agents, spent);
    let duplicates: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT request_id FROM credit_transactions \
             WHERE transaction_type = 'usage' GROUP BY agent_id, request_id \
             HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(duplicates, 0, "a request was charged twice");
    let reconcile: Value = serde_json::from_str(&server.ok(&["reconcile", "--json"])).unwrap();
    assert_eq!(reconcile["ok"], true, "{reconcile}");
    let grants: i64 = pg
        .query_one(
            "SELECT count(*) FROM central_operations WHERE operation_key LIKE 'grant:%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let share = spent / given;
    println!(
        "fleet: {AGENTS} agents × {CLIENTS_PER_AGENT} clients, {} served, {} refused, {} other, \
         {grants} grants, spent {spent} of {given} ({:.1} %), stranded {} (pool {pool}, agents \
         {held}), {ran_for:?}",
        tally.served.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        share * Decimal::from(100),
        pool + held,
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    assert!(
        share >= Decimal::new(9, 1),
        "only {share} of the pool was spendable across the fleet"
    );
}

/// A home user turned fleet user with `users set --fleet`: their home agent returns what it holds
/// to the pool once it applies the change, and another agent serves them from grants of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_user_becomes_a_fleet_user_served_by_another_agent() {
    let db = Database::create().await;
    let server = Server::migrated(&db);
    let (_server_process, addr) = server.serve("127.0.0.1:0");
    let base = format!("http://{addr}");
    let upstream = MockUpstream::spawn().await.unwrap();
    let (agents, gateways) = tollgate_e2e::enrolled_gateways(&server, &base, &upstream.url(), 2);
    let key = server.user_with_key("hal", "edge-0", "professional");
    server.ok(&[
        "credits",
        "grant",
        "hal",
        "0.05",
        "--operation-id",
        "fund-hal",
    ]);
    let http = reqwest::Client::new();
    eventually("hal's credit to reach edge-0", CONVERGE, || async {
        (small_chat(&http, &gateways[0].1, &key, 0).await == 200).then_some(())
    })
    .await;
    // Turned fleet user once the server has what edge-0 did for hal (central credit still on its
    // way to the home refuses the change): edge-0 returns what it holds; edge-1 serves hal from
    // grants.
    agents[0].ok(&["sync", "now"]);
    let changed = server.ok(&["users", "set", "hal", "--fleet"]);
    assert!(changed.contains("fleet user hal updated"), "{changed}");
    eventually("hal's balance to reach the pool", CONVERGE, || async {
        agents[0].ok(&["sync", "now"]);
        let shown: Value =
            serde_json::from_str(&server.ok(&["users", "show", "hal", "--json"])).unwrap();
        (dec(&shown["pool"]).is_sign_positive() && dec(&shown["balance"]).is_zero()).then_some(())
    })
    .await;
    eventually("edge-1 to serve hal", CONVERGE, || async {
        (small_chat(&http, &gateways[1].1, &key, 1).await == 200).then_some(())
    })
    .await;
    // The gateways stop (their escrow loops would go on topping hal up: a grant in flight is a
    // reconcile difference until booked), then everything is pushed.
    drop(gateways);
    eventually("every agent to be acknowledged", CONVERGE, || async {
        for agent in &agents {
            agent.ok(&["sync", "now"]);
            let status = agent.json(&["sync", "status"]);
            if status["head_seq"] != status["acked_seq"] {
                return None;
            }
        }
        Some(())
    })
    .await;
    for agent in &agents {
        agent.ok(&["verify"]);
    }
    let reconcile: Value = serde_json::from_str(&server.ok(&["reconcile", "--json"])).unwrap();
    assert_eq!(reconcile["ok"], true, "{reconcile}");
}

/// An agent cut off from the server (a TCP proxy the test cuts): it spends what it was granted,
/// then the overdraft line its grant carries — once — then refuses with a 402 that says it
/// cannot reach the server. Healed and drained: the user owes what the pool did not cover, and
/// the books agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_spends_its_grant_then_the_overdraft_line_then_says_why() {
    const LINE: &str = "0.01";
    /// Less than the line: what the line lets the agent spend beyond it is owed.
    const FUNDED: &str = "0.002";
    let db = Database::create().await;
    let server = Server::migrated(&db);
    let (_server_process, addr) = server.serve("127.0.0.1:0");
    let proxy = TcpProxy::start(vec![addr]).await;
    let upstream = MockUpstream::spawn().await.unwrap();
    let agent = Agent::init("edge-0");
    let token = word_with_prefix(&server.ok(&["agents", "enroll", &agent.name]), "tge_");
    ok(
        agent.command(&["enroll", "--server", &proxy.url(), "--token", "-"]),
        Some(&token),
    );
    let (gateway, url) = agent.serve(&upstream.url());
    server.ok(&[
        "users",
        "set",
        "ann",
        "--tier",
        "professional",
        "--overdraft",
        LINE,
    ]);
    let key: Value = serde_json::from_str(
        &server.ok(&["users", "api-key", "create", "ann", "--name", "k", "--json"]),
    )
    .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    server.ok(&["credits", "grant", "ann", FUNDED, "--operation-id", "fund"]);
    let http = reqwest::Client::new();
    eventually("ann to be served", CONVERGE, || async {
        (small_chat(&http, &url, &key, 0).await == 200).then_some(())
    })
    .await;

    // Cut off: served while grant and line last, then refused, saying why.
    proxy.partition();
    let (mut served, mut n) = (0_u64, 1_u64);
    let refusal = loop {
        n += 1;
        let (status, body) = small_chat_answer(&http, &url, &key, n).await;
        match status {
            200 => served += 1,
            402 => {
                let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
                // Refused for good only once the line is drawn (the agent's journal says so).
                let drawn = agent
                    .json(&["credits", "history", "ann", "--limit", "1000"])
                    .to_string()
                    .contains("overdraft:grant:");
                if drawn && message.contains("cannot reach the sync server") {
                    break body;
                }
                // Not a spin: the escrow loop asks the server meanwhile.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("request {n}: {other} {body}"),
        }
    };
    assert_eq!(
        refusal["error"]["code"], "fleet_credit_unavailable",
        "{refusal}"
    );
    assert!(served > 0, "nothing was served while cut off");

    // Healed and drained: the overdraft is the user's debt, or repaid from the pool.
    proxy.heal();
    drop(gateway);
    eventually("the agent to be acknowledged", CONVERGE, || async {
        agent.ok(&["sync", "now"]);
        let status = agent.json(&["sync", "status"]);
        (status["head_seq"] == status["acked_seq"]).then_some(())
    })
    .await;
    agent.ok(&["verify"]);
    let shown: Value =
        serde_json::from_str(&server.ok(&["users", "show", "ann", "--json"])).unwrap();
    let pool = dec(&shown["pool"]);
    let debt = shown.get("debt").map_or(Decimal::ZERO, dec);
    let held = dec(&shown["balance"]);
    let spent = dec(&shown["credits_used_this_month"]);
    let given: Decimal = FUNDED.parse().unwrap();
    // What was given, plus what is owed, is what was spent, held and left in the pool.
    assert_eq!(given + debt, spent + held + pool, "{shown}");
    assert!(
        pool.is_zero() && debt.is_sign_positive() && !debt.is_zero(),
        "{shown}"
    );
    assert_eq!(dec(&shown["overdraft"]), LINE.parse::<Decimal>().unwrap());
    let pg = db.client().await;
    let drawn: Vec<Decimal> = pg
        .query(
            "SELECT amount FROM credit_transactions \
             WHERE user_id = 'ann' AND idempotency_key LIKE 'overdraft:%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        drawn,
        vec![LINE.parse::<Decimal>().unwrap()],
        "the line, once"
    );
    let reconcile: Value = serde_json::from_str(&server.ok(&["reconcile", "--json"])).unwrap();
    assert_eq!(reconcile["ok"], true, "{reconcile}");
    println!(
        "partitioned: {served} served on grant and line, then refused; debt {debt}, pool {pool}, \
         spent {spent}"
    );
}
