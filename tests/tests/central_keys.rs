//! API keys governed centrally, end to end with the real binaries: `tollgate-server users api-key
//! create` prints a key once; its hash reaches the user's agent through the inbox and the key
//! works at that agent's gateway within seconds; `revoke` stops it there within seconds. On the
//! enrolled agent, making a key locally or revoking a central one is refused with a message
//! saying where to do it; a key made before enrolment keeps working. Before, keys existed only
//! on the agent that made them and the server could not make one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::{Agent, Database, Server, eventually, ok, run, word_with_prefix};
use tollgate_mock_upstream::MockUpstream;

/// How long a key may take to reach, or leave, the gateway (the long poll delivers at once; the
/// auth cache holds a lookup for one second).
const PROPAGATE: Duration = Duration::from_secs(30);

async fn status(client: &reqwest::Client, gateway: &str, key: &str) -> u16 {
    client
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": "hi mock:tokens=5"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_centrally_works_on_the_agent_and_its_revocation_stops_it() {
    let db = Database::create().await;
    let server = Server::migrated(&db);
    let (_process, addr) = server.serve("127.0.0.1:0");
    let base = format!("http://{addr}");
    let upstream = MockUpstream::spawn().await.unwrap();
    let client = reqwest::Client::new();

    // A user with a local key before enrolment: adopted, and the key keeps working.
    let agent = Agent::init("edge-1");
    agent.ok(&["users", "add", "alice", "--tier", "professional"]);
    agent.ok(&["credits", "add", "alice", "10", "--type", "purchase"]);
    let local_key = agent.json(&["users", "api-key", "create", "alice", "--name", "old"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = word_with_prefix(&server.ok(&["agents", "enroll", "edge-1"]), "tge_");
    ok(
        agent.command(&["enroll", "--server", &base, "--token", "-"]),
        Some(&token),
    );
    let (_gateway, gateway) = agent.serve(&upstream.url());
    assert_eq!(status(&client, &gateway, &local_key).await, 200);

    // Made on the enrolled agent: refused, naming where keys are made.
    let refused = run(
        agent.command(&["users", "api-key", "create", "alice", "--name", "new"]),
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("tollgate-server users api-key create"),
        "{err}"
    );

    // Made centrally: printed once, and working at the gateway within seconds.
    let made: Value = serde_json::from_str(&server.ok(&[
        "users", "api-key", "create", "alice", "--name", "laptop", "--json",
    ]))
    .unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let key_id = made["key_id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("tg_"), "{made}");
    assert_eq!(made["sent_to"], json!(["edge-1"]), "{made}");
    let shown: Value =
        serde_json::from_str(&server.ok(&["users", "show", "alice", "--json"])).unwrap();
    assert_eq!(shown["live_api_keys"], 1, "{shown}");
    assert_eq!(shown["tier"], "professional", "{shown}");
    assert_eq!(shown["held_by"][0]["agent"], "edge-1", "{shown}");
    let listed = server.ok(&["users", "api-key", "list", "alice"]);
    assert!(
        listed.contains(&key_id) && !listed.contains(&key[12..]),
        "{listed}"
    );
    let started = Instant::now();
    eventually(
        "the central key to work at the gateway",
        PROPAGATE,
        || async { (status(&client, &gateway, &key).await == 200).then_some(()) },
    )
    .await;
    let reached = started.elapsed();
    let on_agent = agent.json(&["users", "api-key", "list", "alice"]);
    let central = on_agent
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(central["origin"], "central", "{on_agent}");
    assert_eq!(central["name"], "laptop", "{on_agent}");

    // Revoking it on the agent is refused: the server governs it.
    let refused = run(
        agent.command(&["users", "api-key", "revoke", &key_id]),
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("tollgate-server users api-key revoke {key_id}")),
        "{err}"
    );
    assert_eq!(status(&client, &gateway, &key).await, 200);

    // Revoked centrally: refused at the gateway within seconds; the other key still works.
    let started = Instant::now();
    server.ok(&["users", "api-key", "revoke", &key_id]);
    eventually("the revoked key to be refused", PROPAGATE, || async {
        (status(&client, &gateway, &key).await == 401).then_some(())
    })
    .await;
    let stopped = started.elapsed();
    assert_eq!(status(&client, &gateway, &local_key).await, 200);
    let shown = server.ok(&["users", "show", "alice"]);
    assert!(
        shown.contains("live API keys") && shown.contains("edge-1"),
        "{shown}"
    );
    // Revoking again is a no-op.
    let again = server.ok(&["users", "api-key", "revoke", &key_id]);
    assert!(again.contains("already revoked"), "{again}");
    println!("central key: working after {reached:?}, refused {stopped:?} after its revocation");
}
