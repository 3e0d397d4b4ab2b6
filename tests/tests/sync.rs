//! Several agents and the central server, end to end: real `tollgate serve` gateways (separate
//! data dirs) in front of the mock upstream, the real `tollgate-server` on a fresh PostgreSQL
//! database, a mock Stripe. Traffic flows; the server is killed for a while; meanwhile the agents
//! keep serving, and a credit purchase (through a second replica on the same database) and an
//! admin adjustment (through the CLI, straight to the database) are made centrally; the server
//! comes back on the same address. After healing: every agent's entries are on the server exactly
//! once, every central event reached its agent once, `tollgate verify` on each agent and
//! `tollgate-server reconcile` find no difference, and each agent's balances equal the server's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::ledger::{Ledger, OpenMode, SystemClock};
use tollgate_e2e::{
    Agent, Database, MockStripe, Server, eventually, ok, stripe_signature, word_with_prefix,
};
use tollgate_mock_upstream::MockUpstream;
use tollgate_schema::wire::PUSH_ENTRIES_MAX;

const AGENTS: usize = 3;
const USERS_PER_AGENT: usize = 2;
const REQUESTS_PER_USER: usize = 4;
const WEBHOOK_SECRET: &str = "whsec_e2e_test_secret";
/// How long convergence may take after healing (SYNC.md: "within seconds"; generous for CI).
const CONVERGE: Duration = Duration::from_secs(60);

struct Host {
    agent: Agent,
    users: Vec<(String, String)>, // (user id, API key)
    gateway: Option<tollgate_e2e::Process>,
    url: String,
}

async fn traffic(client: &reqwest::Client, hosts: &[Host], round: &str) {
    for host in hosts {
        for (user, key) in &host.users {
            for i in 0..REQUESTS_PER_USER {
                let response = client
                    .post(format!("{}/v1/chat/completions", host.url))
                    .bearer_auth(key)
                    .json(&json!({
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user",
                                      "content": format!("{round} {user} {i} mock:tokens=12")}]
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
            }
        }
    }
}

/// The admin API's view of every agent, by name.
async fn agents_view(client: &reqwest::Client, base: &str, token: &str) -> BTreeMap<String, Value> {
    let response = client
        .get(format!("{base}/admin/v1/agents"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let list = body
        .get("agents")
        .cloned()
        .unwrap_or(body)
        .as_array()
        .cloned()
        .unwrap();
    list.into_iter()
        .map(|a| (a["name"].as_str().unwrap().to_owned(), a))
        .collect()
}

/// Converged: the agent's whole journal is acknowledged (its `sync status`) and it has applied
/// every event in its inbox (its cursor is at the inbox head the database holds for it).
async fn converged(host: &Host, pg: &tokio_postgres::Client) -> bool {
    let status = host.agent.json(&["sync", "status"]);
    let head = status["head_seq"].as_i64().unwrap();
    let acked = status["acked_seq"].as_i64().unwrap();
    let cursor = status["inbox_cursor"].as_i64().unwrap();
    let inbox_head: i64 = pg
        .query_one(
            "SELECT inbox_head FROM agents WHERE name = $1",
            &[&host.agent.name],
        )
        .await
        .unwrap()
        .get(0);
    head == acked && cursor == inbox_head
}

async fn all_converged(hosts: &[Host], pg: &tokio_postgres::Client) -> Option<()> {
    for host in hosts {
        if !converged(host, pg).await {
            return None;
        }
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_server_converge_after_an_outage() {
    let db = Database::create().await;
    let stripe = MockStripe::start().await;
    let server = Server {
        database_url: db.url.clone(),
        envs: vec![
            ("STRIPE_SECRET_KEY".into(), "sk_test_e2e".into()),
            ("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
            ("TOLLGATE_STRIPE_API_BASE".into(), stripe.url.clone()),
        ],
    };
    server.ok(&["migrate"]);
    // A fixed port, so the restarted server answers where the agents already point.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let (mut primary, addr) = server.serve(&listen);
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let admin = word_with_prefix(
        &server.ok(&["admin-tokens", "create", "ops", "--role", "full"]),
        "tgadm_",
    );
    // A catalog change before any agent exists: new agents must start from the server's catalog.
    let response = client
        .put(format!("{base}/admin/v1/packages/Team%20Pack"))
        .bearer_auth(&admin)
        .json(
            &json!({"credits": "2500", "price_usd": "190.00", "discount_percent": 24,
                      "sort_order": 5, "description": "For small teams"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let upstream = MockUpstream::spawn().await.unwrap();

    // Agents: enrolled, with local users, credit and API keys; then their gateways (with sync).
    let mut hosts = Vec::new();
    for a in 0..AGENTS {
        let name = format!("host-{a}");
        let agent = Agent::init(&name);
        let token = word_with_prefix(&server.ok(&["agents", "enroll", &name]), "tge_");
        ok(
            agent.command(&["enroll", "--server", &base, "--token", "-"]),
            Some(&token),
        );
        // Users and their API keys are governed by the server once an agent is enrolled: made
        // there, homed on this agent, and pulled by it; credit is then added on the agent.
        let mut users = Vec::new();
        for u in 0..USERS_PER_AGENT {
            let user = format!("user-{a}-{u}");
            let key = server.user_with_key(&user, &name, "professional");
            users.push((user, key));
        }
        agent.ok(&["sync", "now"]);
        for (user, _) in &users {
            agent.ok(&["credits", "add", user, "50", "--type", "purchase"]);
        }
        let (gateway, url) = agent.serve(&upstream.url());
        hosts.push(Host {
            agent,
            users,
            gateway: Some(gateway),
            url,
        });
    }
    traffic(&client, &hosts, "before").await;
    let pg = db.client().await;
    eventually("first convergence", CONVERGE, || all_converged(&hosts, &pg)).await;
    for host in &hosts {
        let packages = host.agent.json(&["packages", "list"]);
        let names: Vec<&str> = packages
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"Team Pack"),
            "{}: {names:?}",
            host.agent.name
        );
    }

    // Outage: the server dies (kill -9). The gateways keep serving from what they hold.
    primary.kill();
    traffic(&client, &hosts, "during").await;

    // Meanwhile, centrally: an admin adjustment through the CLI (straight to the database)...
    let adjusted_user = hosts[1].users[0].0.clone();
    server.ok(&[
        "credits",
        "adjust",
        &adjusted_user,
        "7.5",
        "--operation-id",
        "e2e-adjust-1",
        "--note",
        "goodwill",
    ]);
    // ...and a purchase through a second replica on the same database (the agents do not know
    // it): checkout, then Stripe's signed webhook.
    let buyer = hosts[0].users[1].0.clone();
    let (_replica, replica_addr) = server.serve("127.0.0.1:0");
    let replica = format!("http://{replica_addr}");
    let checkout: Value = client
        .post(format!("{replica}/admin/v1/checkout"))
        .bearer_auth(&admin)
        .json(&json!({"user_id": buyer, "package": "Starter Pack"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = checkout["session_id"].as_str().unwrap().to_owned();
    let event = json!({
        "id": "evt_e2e_1",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": session, "object": "checkout.session", "payment_status": "paid",
            "client_reference_id": buyer, "payment_intent": "pi_e2e_1"
        }}
    })
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for _ in 0..2 {
        // Stripe delivers at least once: the second delivery must change nothing.
        let response = client
            .post(format!("{replica}/stripe/webhook"))
            .header(
                "Stripe-Signature",
                stripe_signature(WEBHOOK_SECRET, now, &event),
            )
            .header("content-type", "application/json")
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    // Heal: the server comes back where the agents point.
    let (_primary, _) = server.serve(&listen);
    traffic(&client, &hosts, "after").await;
    eventually("convergence after the outage", CONVERGE, || {
        all_converged(&hosts, &pg)
    })
    .await;
    let view = agents_view(&client, &base, &admin).await;
    assert_eq!(view.len(), AGENTS);

    // Stop the gateways so their books are still (their sync tasks have nothing left to do).
    for host in &mut hosts {
        host.gateway.take();
    }

    // Every agent's entries are on the server exactly once, chained, with equal hashes.
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
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            ),
            (head, head, head),
            "{}: central copy of the journal",
            host.agent.name
        );
        // Entry by entry, the server holds the agent's exact bytes (equal hashes, same seq).
        let ledger = Ledger::open(
            &host.agent.data_dir().join("tollgate.db"),
            OpenMode::MustExist,
            Arc::new(SystemClock),
        )
        .unwrap();
        let mut after = 0;
        loop {
            let entries = ledger.entries_after(after, PUSH_ENTRIES_MAX).unwrap();
            let Some(last) = entries.last() else { break };
            after = last.seq;
            for entry in &entries {
                let central: Vec<u8> = pg
                    .query_one(
                        "SELECT t.hash FROM credit_transactions t JOIN agents a USING (agent_id) \
                         WHERE a.name = $1 AND t.seq = $2",
                        &[&host.agent.name, &entry.seq],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    hex::encode(central),
                    entry.hash,
                    "{} seq {}",
                    host.agent.name,
                    entry.seq
                );
            }
        }
        assert_eq!(after, head);
        // The agent's books are sound.
        host.agent.ok(&["verify"]);
    }

    // Every central event reached its agent once: one entry per operation key, the right amount.
    for (key, user, amount) in [
        ("admin:e2e-adjust-1".to_owned(), &adjusted_user, "7.5"),
        (format!("stripe:{session}"), &buyer, "100"),
    ] {
        let rows: Vec<(String, Decimal)> = pg
            .query(
                "SELECT user_id, amount FROM credit_transactions WHERE idempotency_key = $1",
                &[&key],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(rows, vec![(user.clone(), amount.parse().unwrap())], "{key}");
    }

    // The agent's view of each balance equals the server's.
    for host in &hosts {
        for (user, _) in &host.users {
            let local = host.agent.json(&["credits", "balance", user]);
            let central: Decimal = pg
                .query_one(
                    "SELECT balance FROM user_credits WHERE user_id = $1",
                    &[user],
                )
                .await
                .unwrap()
                .get(0);
            let local: Decimal = local["balance"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                local, central,
                "{user}: the agent's balance and the server's"
            );
        }
    }

    // Reconcile finds no difference.
    let out = tollgate_e2e::run(server.command(&["reconcile", "--json"]), None);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        out.status.success(),
        "reconcile found differences: {report:#}"
    );
    assert_eq!(report["differences"], json!([]));
}
