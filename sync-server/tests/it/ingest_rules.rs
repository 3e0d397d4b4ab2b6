//! What an agent may write (SYNC.md "Who governs what"), attacked as a hostile agent would: entries
//! for a user another agent holds, an entry keyed as a central operation that was never made, a
//! user's balance chain broken to push a central balance past what the books can hold. Each is
//! refused naming the entry and the rule, the agent quarantined, and nothing of the batch kept.

use tollgate_schema::money::Credits;
use tollgate_schema::wire::error_code;

use crate::support::{TestDb, TestServer};
use tollgate_schema::wire::GENESIS_HASH;

use crate::sync_support::{
    Chain, agent_status, central_balance, enroll, fingerprint, hash_of, home_users, http, push,
    rechain, scalar,
};

#[tokio::test]
async fn an_agent_cannot_write_for_a_user_another_agent_holds() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    let b = enroll(&db.pool, &base, "edge-b").await;
    // Dave is B's.
    home_users(&db.pool, "edge-b", &["dave".to_owned()]).await;
    let mut b_chain = Chain::new("b", 1);
    let first = b_chain.entry("dave", "purchase", "10".parse().unwrap());
    assert_eq!(push(&base, &b, &[first]).await.status, 200);
    // A writes a 5,000-credit purchase for him.
    let mut a_chain = Chain::new("a", 1);
    let forged = a_chain.entry("dave", "purchase", "5000".parse().unwrap());
    let before = fingerprint(&db.pool).await;
    let answer = push(&base, &a, &[forged]).await;
    assert_eq!(answer.status, 409);
    let error = answer.error().error;
    assert_eq!(error.code, error_code::CONFLICT);
    assert!(error.message.contains("seq 1"), "{}", error.message);
    assert!(error.message.contains("\"dave\""), "{}", error.message);
    assert!(error.message.contains("edge-b"), "{}", error.message);
    assert_eq!(agent_status(&db.pool, "edge-a").await, "quarantined");
    assert_eq!(
        central_balance(&db.pool, "dave").await,
        "10".parse::<rust_decimal::Decimal>().unwrap()
    );
    let after = fingerprint(&db.pool).await;
    // Only the agents' table changed (the quarantine); nothing of the batch was written.
    let beyond_agents = |f: &str| f.split_once("--\n").unwrap().1.to_owned();
    assert_ne!(before, after);
    assert_eq!(
        beyond_agents(&before),
        beyond_agents(&after),
        "something besides the quarantine was written"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_entry_keyed_as_a_central_operation_never_made_is_refused() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    let mut chain = Chain::new("a", 1);
    let mut entry = chain.entry("erin", "bonus", "25".parse().unwrap());
    entry.idempotency_key = Some("admin:op-1".to_owned());
    let mut entries = [entry];
    rechain(&mut entries, GENESIS_HASH);
    let answer = push(&base, &a, &entries).await;
    assert_eq!(answer.status, 409);
    let message = answer.error().error.message;
    assert!(message.contains("\"admin:op-1\""), "{message}");
    assert!(message.contains("no such operation"), "{message}");
    assert_eq!(agent_status(&db.pool, "edge-a").await, "quarantined");
    let stored = scalar(
        &db.pool,
        "SELECT count(*) FROM credit_transactions WHERE idempotency_key = 'admin:op-1'",
    )
    .await;
    assert_eq!(
        stored, 0,
        "the key is free for the operation when it is made"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_broken_balance_chain_cannot_push_a_balance_past_the_books() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    let big: Credits = "9000000000".parse().unwrap();
    home_users(&db.pool, "edge-a", &["frank".to_owned()]).await;
    let mut chain = Chain::new("a", 1);
    let first = chain.entry("frank", "purchase", big);
    assert_eq!(
        push(&base, &a, std::slice::from_ref(&first)).await.status,
        200
    );
    // The same again, claiming frank had nothing: the central balance would be 1.8e10.
    let mut lying = Chain::new("a", 1);
    lying.seq = 1;
    lying.prev = hash_of(&first);
    let second = lying.entry("frank", "purchase", big);
    let answer = push(&base, &a, &[second]).await;
    assert_eq!(answer.status, 409);
    let message = answer.error().error.message;
    assert!(message.contains("seq 2"), "{message}");
    assert!(message.contains("balance"), "{message}");
    assert_eq!(central_balance(&db.pool, "frank").await, big.to_decimal());
    // The admin API still reads every user.
    let token = crate::sync_support::admin_token(&db.pool, "ops", "read").await;
    let users = http()
        .get(server.url("/admin/v1/users"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_push_never_creates_a_user() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    // An id nobody made: a push that writes for it cannot squat it.
    let mut chain = Chain::new("a", 1);
    let squat = chain.entry("grace", "purchase", "1".parse().unwrap());
    let answer = push(&base, &a, &[squat]).await;
    assert_eq!(answer.status, 409);
    let message = answer.error().error.message;
    assert!(message.contains("\"grace\""), "{message}");
    assert!(message.contains("does not know"), "{message}");
    let known = scalar(
        &db.pool,
        "SELECT count(*) FROM user_credits WHERE user_id = 'grace'",
    )
    .await;
    assert_eq!(known, 0, "the id is still free");
    server.stop().await;
}
