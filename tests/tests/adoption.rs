//! An agent that already has users enrols: the server adopts them with their settings (tier,
//! level, allowance, spend cap) and balances, and no snapshot resets them — with the real
//! binaries and a fresh PostgreSQL database. Before, the first `sync now` after enrolling reset
//! every user to tier `trial` without a cap, and a user refused at her cap was served again.
//! A second agent bringing a user id the first one holds is refused, and its token not spent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tollgate_e2e::{Agent, Database, Server, ok, run, word_with_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_adopts_an_agents_users_with_their_settings() {
    let db = Database::create().await;
    let server = Server::migrated(&db);
    let (_process, addr) = server.serve("127.0.0.1:0");
    let base = format!("http://{addr}");

    let agent = Agent::init("edge-1");
    agent.ok(&[
        "users",
        "add",
        "alice",
        "--tier",
        "professional",
        "--power-level",
        "precision",
        "--monthly-allowance",
        "20",
        "--monthly-cap",
        "5",
    ]);
    agent.ok(&["credits", "add", "alice", "12", "--type", "purchase"]);
    let token = word_with_prefix(&server.ok(&["agents", "enroll", "edge-1"]), "tge_");
    ok(
        agent.command(&["enroll", "--server", &base, "--token", "-"]),
        Some(&token),
    );
    agent.ok(&["sync", "now"]);
    agent.ok(&["sync", "now"]);

    // The agent keeps her settings through the snapshot...
    let alice = agent.json(&["users", "show", "alice"]);
    assert_eq!(alice["tier"], "professional", "{alice}");
    assert_eq!(alice["power_level"], "precision", "{alice}");
    assert_eq!(alice["monthly_allowance"], "20", "{alice}");
    assert_eq!(alice["monthly_spend_cap"], "5", "{alice}");
    // ...and the server holds the same, with her balance from the journal.
    let listed: serde_json::Value =
        serde_json::from_str(&server.ok(&["users", "list", "--json"])).unwrap();
    let central = listed
        .as_array()
        .or_else(|| listed["users"].as_array())
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == "alice")
        .cloned()
        .unwrap();
    assert_eq!(central["tier"], "professional", "{central}");
    assert_eq!(central["home_agent"], "edge-1", "{central}");
    // 12 purchased and the month's 20 of allowance, as the agent holds.
    assert_eq!(central["balance"], alice["balance"], "{central}");
    assert_eq!(central["balance"], "32", "{central}");

    // Another agent with an "alice" of its own cannot enrol until it renames her.
    let other = Agent::init("edge-2");
    other.ok(&["users", "add", "alice"]);
    let token = word_with_prefix(&server.ok(&["agents", "enroll", "edge-2"]), "tge_");
    let refused = run(
        other.command(&["enroll", "--server", &base, "--token", "-"]),
        Some(&token),
    );
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("\"alice\"") && err.contains("edge-1"), "{err}");
    // The token was not spent: without the clash it enrols.
    let fresh = Agent::init("edge-2b");
    ok(
        fresh.command(&["enroll", "--server", &base, "--token", "-"]),
        Some(&token),
    );
}
