//! Reconcile through the real binary: clean books exit 0; each fault injected by SQL is listed
//! with its cause, exits 1, and `--json` parses.

use serde_json::Value;
use tollgate_schema::money::Credits;
use tollgate_server::central::credit::{self, CreditKind, CreditOp, PurchasedPackage};

use crate::admin_support::{Draft, FakeAgent, c, cli, server_and_admin, set_user};
use crate::support::TestDb;

fn grant(user: &str, amount: &str, op: &str) -> CreditOp {
    CreditOp {
        user_id: user.to_owned(),
        kind: CreditKind::Grant,
        amount: c(amount),
        operation_id: op.to_owned(),
        note: None,
        actor: "test".to_owned(),
    }
}

fn usage(user: &str, amount: &str, request: &str) -> Draft {
    Draft {
        request_id: Some(request.to_owned()),
        ..Draft::new(user, "usage", amount)
    }
}

/// Books that agree: two agents, three users, grants and a purchase applied by the home agents,
/// usage debits.
async fn clean() -> (TestDb, FakeAgent, FakeAgent) {
    let db = TestDb::new().await;
    let mut a1 = FakeAgent::new(&db, "a1").await;
    let mut a2 = FakeAgent::new(&db, "a2").await;
    set_user(&db, "alice", "a1").await;
    set_user(&db, "bob", "a1").await;
    set_user(&db, "carol", "a2").await;
    for (user, amount, op) in [
        ("alice", "100", "g1"),
        ("bob", "50", "g2"),
        ("carol", "10", "g3"),
    ] {
        credit::credit(&db.pool, &grant(user, amount, op))
            .await
            .unwrap();
    }
    {
        let mut conn = db.pool.get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        credit::grant_purchase(
            &tx,
            "alice",
            &PurchasedPackage {
                name: "Starter Pack".to_owned(),
                credits: c("100"),
            },
            "cs_test_1",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(a1.apply_inbox(&db).await.len(), 3);
    assert_eq!(a2.apply_inbox(&db).await.len(), 1);
    a1.append(&db, &usage("alice", "-1.5", "r1")).await;
    a1.append(&db, &usage("alice", "-0.000000001", "r2")).await;
    a1.append(&db, &usage("bob", "-50", "r3")).await;
    a2.append(&db, &usage("carol", "-2", "r4")).await;
    (db, a1, a2)
}

/// Runs `reconcile` (table and JSON) and returns the JSON report; asserts the exit code.
async fn reconcile(db: &TestDb, expect_ok: bool) -> Value {
    let (code, out, err) = cli(db, &["reconcile"]).await;
    assert_eq!(code, if expect_ok { 0 } else { 1 }, "{out}{err}");
    let (code, json, err) = cli(db, &["--json", "reconcile"]).await;
    assert_eq!(code, if expect_ok { 0 } else { 1 }, "{json}{err}");
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["ok"], expect_ok, "{report}");
    if !expect_ok {
        for d in report["differences"].as_array().unwrap() {
            assert!(
                out.contains(d["kind"].as_str().unwrap()),
                "the table lists {d}: {out}"
            );
        }
    }
    report
}

/// Asserts the report lists a difference of `kind` whose detail contains `needle`.
async fn expect(db: &TestDb, kind: &str, needle: &str) -> Value {
    let report = reconcile(db, false).await;
    let found = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == kind && d["detail"].as_str().unwrap().contains(needle))
        .cloned();
    found.unwrap_or_else(|| panic!("no {kind} difference containing {needle:?}: {report:#}"))
}

#[tokio::test]
async fn clean_books_reconcile_with_exit_0() {
    let (db, _a1, _a2) = clean().await;
    let (code, out, err) = cli(&db, &["reconcile"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK: the books agree"), "{out}");
    let report = reconcile(&db, true).await;
    let checked = &report["checked"];
    assert_eq!(checked["users"], 3);
    assert_eq!(checked["agents"], 2);
    assert_eq!(checked["streams"], 2);
    assert_eq!(checked["entries"], 8);
    assert_eq!(checked["hashes_verified"], 8);
    assert_eq!(checked["usage_debits"], 4);
    assert_eq!(checked["credit_operations"], 4);
    assert_eq!(report["differences"], serde_json::json!([]));
    // The admin API answers the same report.
    let (_server, api) = server_and_admin(&db).await;
    let (status, body) = api.get("/admin/v1/reconcile").await;
    assert_eq!(status, 200);
    assert_eq!(body, report);
}

#[tokio::test]
async fn a_balance_cache_off_by_one_nano_credit_is_found() {
    let (db, _a1, _a2) = clean().await;
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE user_credits SET balance = balance + 0.000000001 WHERE user_id = 'alice'",
            &[],
        )
        .await
        .unwrap();
    let d = expect(&db, "balance_cache", "off by 0.000000001").await;
    assert_eq!(d["user_id"], "alice");
}

#[tokio::test]
async fn an_entry_changed_after_hashing_is_found() {
    let (db, mut a1, _a2) = clean().await;
    let mut entry = a1.next(&Draft::new("alice", "bonus", "1"));
    entry.notes = Some("changed after hashing".to_owned());
    a1.store(&db, &entry, true).await;
    let d = expect(&db, "hash_mismatch", "entry seq 7 of agent a1").await;
    assert_eq!(d["agent"], "a1");
}

#[tokio::test]
async fn a_broken_hash_chain_is_found() {
    let (db, mut a1, _a2) = clean().await;
    a1.head = [7; 32];
    a1.append(&db, &Draft::new("alice", "bonus", "1")).await;
    expect(&db, "hash_chain", "does not link to").await;
}

#[tokio::test]
async fn a_missing_seq_is_found() {
    let (db, _a1, _a2) = clean().await;
    let mut a3 = FakeAgent::new(&db, "a3").await;
    set_user(&db, "dave", "a3").await;
    a3.append(&db, &Draft::new("dave", "bonus", "1")).await;
    a3.append(&db, &Draft::new("dave", "bonus", "1")).await;
    let _lost = a3.next(&Draft::new("dave", "bonus", "1"));
    a3.append(&db, &Draft::new("dave", "bonus", "1")).await;
    a3.append(&db, &Draft::new("dave", "bonus", "1")).await;
    let d = expect(&db, "stream_gap", "missing seq 3").await;
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("acked_seq is 5 but only 4"),
        "{d}"
    );
}

#[tokio::test]
async fn entries_beyond_the_acked_head_are_found() {
    let (db, mut a1, _a2) = clean().await;
    let acked = a1.seq;
    let head = hex::encode(a1.head);
    a1.append(&db, &Draft::new("alice", "bonus", "1")).await;
    a1.set_acked(&db, acked, &head).await;
    expect(&db, "beyond_acked", "1 entry stored beyond acked_seq 6").await;
}

#[tokio::test]
async fn a_usage_request_debited_twice_is_found() {
    let (db, mut a1, _a2) = clean().await;
    a1.append(&db, &usage("alice", "-1", "dup")).await;
    a1.append(&db, &usage("alice", "-1", "dup")).await;
    let d = expect(
        &db,
        "duplicate_usage",
        "request \"dup\" was debited 2 times",
    )
    .await;
    assert_eq!(d["user_id"], "alice");
}

#[tokio::test]
async fn a_credit_operation_with_no_entry_is_found() {
    let (db, a1, _a2) = clean().await;
    let applied = credit::credit(&db.pool, &grant("bob", "5", "pending"))
        .await
        .unwrap();
    let needle = format!(
        "not yet applied by agent a1 (inbox seq {}, agent acknowledged {})",
        applied.result.inbox_seq.unwrap(),
        a1.cursor
    );
    let d = expect(&db, "credit_not_applied", &needle).await;
    assert_eq!(d["user_id"], "bob");
}

#[tokio::test]
async fn an_entry_whose_amount_differs_from_its_operation_is_found() {
    let (db, mut a1, _a2) = clean().await;
    credit::credit(&db.pool, &grant("bob", "10", "short"))
        .await
        .unwrap();
    a1.apply_inbox_with(&db, |a| a.checked_sub(Credits::from_nanos(1)).unwrap())
        .await;
    expect(
        &db,
        "credit_mismatch",
        "operation admin:short is user bob bonus 10 on agent a1 but its entry is agent a1 seq 7 \
         user bob bonus 9.999999999",
    )
    .await;
}

#[tokio::test]
async fn a_credit_operation_applied_twice_is_found() {
    let (db, mut a1, _a2) = clean().await;
    // Ingest and a unique index both prevent this; reconcile must still find it in books that
    // lost the index (a restore, a manual repair).
    db.pool
        .get()
        .await
        .unwrap()
        .batch_execute("DROP INDEX idx_credit_transactions_central_key")
        .await
        .unwrap();
    let mut again = Draft::new("alice", "bonus", "100");
    again.key = Some("admin:g1".to_owned());
    a1.append(&db, &again).await;
    expect(&db, "credit_duplicated", "operation admin:g1").await;
}

#[tokio::test]
async fn an_entry_with_a_central_key_but_no_operation_is_found() {
    let (db, mut a1, _a2) = clean().await;
    let mut forged = Draft::new("alice", "bonus", "1000");
    forged.key = Some("stripe:cs_forged".to_owned());
    a1.append(&db, &forged).await;
    expect(&db, "entry_without_operation", "stripe:cs_forged").await;
}

#[tokio::test]
async fn credit_held_by_an_agent_other_than_the_home_is_found() {
    let (db, _a1, mut a2) = clean().await;
    a2.append(&db, &Draft::new("alice", "bonus", "3")).await;
    let d = expect(
        &db,
        "entries_from_other_agent",
        "entries from agents a1 and a2; home is a1; a2 holds 3",
    )
    .await;
    assert_eq!(d["agent"], "a2");
}

#[tokio::test]
async fn a_wrong_lifetime_purchased_and_a_quarantined_agent_are_found() {
    let (db, _a1, _a2) = clean().await;
    let conn = db.pool.get().await.unwrap();
    conn.execute(
        "UPDATE user_credits SET lifetime_credits_purchased = 0 WHERE user_id = 'alice'",
        &[],
    )
    .await
    .unwrap();
    conn.execute(
        "UPDATE agents SET status = 'quarantined', quarantine_reason = 'replayed seq 3 with \
         different content' WHERE name = 'a2'",
        &[],
    )
    .await
    .unwrap();
    expect(
        &db,
        "lifetime_purchased",
        "lifetime credits purchased 0 ≠ sum of purchase entries and pool purchases 100",
    )
    .await;
    expect(&db, "agent_quarantined", "replayed seq 3").await;
}
