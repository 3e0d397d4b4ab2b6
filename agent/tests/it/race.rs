//! Several OS processes (the real binary) debit and credit one user at once. SQLite's locking
//! must serialise them so that the final balance is exact, nothing goes negative and `verify` is
//! clean — with some debits refused because the credit ran out mid-race.

use serde_json::Value;

use tollgate_e2e::{Agent, spawn_with_stdin};

const PROCESSES: usize = 4;
const DEBITS_PER_PROCESS: usize = 40;
const TOPUPS_PER_PROCESS: usize = 20;

#[test]
fn racing_processes_keep_the_books_exact() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    agent.ok(&["credits", "add", "alice", "50", "--type", "bonus"]);

    // Each process gets its own stream of debits of 1 and top-ups of 0.25, interleaved, each
    // committed on its own (batch size 1) so the processes contend for every write.
    let mut children = Vec::new();
    for p in 0..PROCESSES {
        let mut lines = String::new();
        for i in 0..DEBITS_PER_PROCESS {
            lines.push_str(&format!(
                "{{\"op\":\"debit\",\"user\":\"alice\",\"amount\":\"1\",\"idempotency_key\":\"d-{p}-{i}\"}}\n"
            ));
            if i % 2 == 0 {
                lines.push_str(&format!(
                    "{{\"op\":\"add\",\"user\":\"alice\",\"amount\":\"0.25\",\"type\":\"bonus\",\"idempotency_key\":\"t-{p}-{i}\"}}\n"
                ));
            }
        }
        children.push(spawn_with_stdin(
            agent.command(&["credits", "import", "-", "--batch-size", "1"]),
            lines.as_bytes(),
        ));
    }

    let (mut debited, mut refused, mut topped_up) = (0usize, 0usize, 0usize);
    for child in children {
        let out = child.wait_with_output().unwrap();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let result: Value = serde_json::from_str(line).unwrap();
            match (&result["ok"], &result["error"]) {
                (Value::Object(ok), _) if ok["amount"] == "-1" => debited += 1,
                (Value::Object(ok), _) if ok["amount"] == "0.25" => topped_up += 1,
                (_, Value::String(e)) if e.starts_with("insufficient credit for alice") => {
                    refused += 1
                }
                other => panic!("unexpected result {other:?}"),
            }
        }
    }

    assert_eq!(
        topped_up,
        PROCESSES * TOPUPS_PER_PROCESS,
        "every top-up must land"
    );
    assert_eq!(debited + refused, PROCESSES * DEBITS_PER_PROCESS);
    assert!(
        refused > 0,
        "the race never ran out of credit; it tests nothing"
    );
    // 50 + 80 × 0.25 = 70 credits came in; every successful debit took exactly 1.
    let expected_nanos = 70_000_000_000i64 - debited as i64 * 1_000_000_000;
    assert!(
        expected_nanos >= 0,
        "more debits succeeded than there was credit: {debited}"
    );
    let balance: tollgate_schema::money::Credits = agent.balance("alice").parse().unwrap();
    assert_eq!(balance.nanos(), expected_nanos);
    agent.assert_verified();
}
