//! kill -9 of a real `tollgate serve` under load: every response a client received in full was
//! settled durably before its last byte (its charge is in the journal), the books verify clean
//! with the killed requests' holds still open, and a restarted gateway serves on the same file.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::ledger::EntryType;
use tollgate_mock_upstream::MockUpstream;

use crate::gateway_support::{c, open_ledger};
use tollgate_e2e::Agent;

/// Kills the child on drop, so a failing test leaves no gateway behind.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tollgate serve` on port 0 and reads the address it bound from its first log line.
fn serve(agent: &Agent, upstream: &str) -> (Serve, String) {
    let mut child = Command::new(tollgate_e2e::binary("tollgate"))
        .arg("--data-dir")
        .arg(agent.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", upstream])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("TOLLGATE_UPSTREAM_KEY", "sk-litellm-crash")
        .env("TOLLGATE_LOG_FORMAT", "json")
        .env_remove("TOLLGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        let log: Value = serde_json::from_str(&line).unwrap();
        if let Some(listen) = log["fields"]["listen"].as_str() {
            break listen.to_owned();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Serve(child), format!("http://{addr}"))
}

/// A request the client received in full: its id and what the gateway said it charged
/// (`None` for a stream, whose charge is read from the usage log).
#[derive(Debug, Clone)]
struct Completed {
    request_id: String,
    charged: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_charge() {
    const WORKERS: usize = 16;
    const COMPLETED_BEFORE_KILL: usize = 200;
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice", "--tier", "professional"]);
    agent.ok(&["credits", "add", "alice", "1000", "--type", "purchase"]);
    let key = agent.json(&["users", "api-key", "create", "alice"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mock = MockUpstream::spawn().await.unwrap();
    let (server, url) = serve(&agent, &mock.url());
    let server = Arc::new(Mutex::new(Some(server)));
    let completed = Arc::new(Mutex::new(Vec::<Completed>::new()));
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let http = reqwest::Client::new();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        let (completed, server) = (completed.clone(), server.clone());
        let (killed_tx, killed_rx) = (killed_tx.clone(), killed_rx.clone());
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                if *killed_rx.borrow() {
                    return;
                }
                let stream = (w + i) % 3 == 0;
                let mut body = json!({"model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "crash test mock:tokens=8"}]});
                if stream {
                    body["stream"] = json!(true);
                }
                let sent = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                let id = response.headers()["x-tollgate-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let charged = response
                    .headers()
                    .get("x-tollgate-credits-charged")
                    .map(|v| v.to_str().unwrap().to_owned());
                let Ok(text) = response.text().await else {
                    return;
                };
                if stream && !text.ends_with("data: [DONE]\n\n") {
                    return; // cut by the kill: not acknowledged
                }
                let mut done = completed.lock().unwrap();
                done.push(Completed {
                    request_id: id,
                    charged,
                });
                if done.len() == COMPLETED_BEFORE_KILL {
                    // SIGKILL, mid-traffic: the other workers have requests in flight.
                    drop(server.lock().unwrap().take());
                    let _ = killed_tx.send(true);
                    return;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        server.lock().unwrap().is_none(),
        "the gateway was never killed"
    );
    let completed = completed.lock().unwrap().clone();
    assert!(completed.len() >= COMPLETED_BEFORE_KILL);

    // Every acknowledged request is in the journal with the charge the client was told.
    let mut ledger = open_ledger(agent.data_dir());
    let journal = ledger.history("alice", 100_000).unwrap();
    for done in &completed {
        let entries: Vec<_> = journal
            .iter()
            .filter(|e| e.request_id.as_deref() == Some(done.request_id.as_str()))
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "{done:?} is not in the journal exactly once"
        );
        assert_eq!(entries[0].transaction_type, EntryType::Usage);
        if let Some(charged) = &done.charged {
            assert_eq!(
                entries[0].amount,
                c(charged).checked_neg().unwrap(),
                "{done:?}"
            );
        }
    }
    // The books balance, with whatever the kill left in flight still held.
    let report = ledger.verify().unwrap();
    assert!(report.is_clean(), "{report:#?}");
    agent.assert_verified();
    let charged: i64 = journal
        .iter()
        .filter(|e| e.transaction_type == EntryType::Usage)
        .map(|e| -e.amount.nanos())
        .sum();
    let account = ledger.account("alice").unwrap();
    assert_eq!(account.balance.nanos() + charged, c("1000").nanos());

    // A new gateway on the same file serves at once.
    let (_server, url) = serve(&agent, &mock.url());
    let response = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "again"}]}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    agent.assert_verified();
}
