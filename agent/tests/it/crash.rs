//! kill -9 in the middle of a stream of writes: after reopening, `verify` is clean, every write
//! that was acknowledged is there, and replaying the whole stream (the same idempotency keys)
//! completes it without a single duplicate.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

use tollgate_e2e::Agent;

const WRITES: usize = 3_000;
/// Acknowledgements to read before the kill: the process is then mid-stream.
const KILL_AFTER_ACKS: usize = 400;

#[test]
fn acknowledged_writes_survive_kill_9() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    let stream = agent.data_dir().join("stream.jsonl");
    let lines: String = (0..WRITES)
        .map(|i| format!("{{\"op\":\"add\",\"user\":\"alice\",\"amount\":\"1\",\"type\":\"bonus\",\"idempotency_key\":\"w-{i}\"}}\n"))
        .collect();
    std::fs::write(&stream, lines).unwrap();

    let mut child = agent
        .command(&[
            "credits",
            "import",
            stream.to_str().unwrap(),
            "--batch-size",
            "7",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let result: Value = serde_json::from_str(&line.unwrap()).unwrap();
        acked.push(result["ok"]["entry_id"].as_str().unwrap().to_owned());
        if acked.len() == KILL_AFTER_ACKS {
            child.kill().unwrap(); // SIGKILL: no destructor, no flush, no commit
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the writer finished before the kill; the test proves nothing"
    );

    // Reopened: the books are whole, and every acknowledged entry is in them.
    agent.assert_verified();
    let history = agent.json(&["credits", "history", "alice", "--limit", "100000"]);
    let held: std::collections::HashSet<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry_id"].as_str().unwrap())
        .collect();
    for entry in &acked {
        assert!(
            held.contains(entry.as_str()),
            "acknowledged entry {entry} was lost"
        );
    }
    let committed = held.len();
    assert!(
        (KILL_AFTER_ACKS..WRITES).contains(&committed),
        "committed {committed}"
    );

    // Replaying the whole stream finishes it: keys already applied return their entries.
    agent.ok(&["credits", "import", stream.to_str().unwrap()]);
    assert_eq!(agent.balance("alice"), WRITES.to_string());
    let report = agent.assert_verified();
    assert_eq!(report["entries"], WRITES);
}
