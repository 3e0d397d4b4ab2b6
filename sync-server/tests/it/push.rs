//! Push: a batch is stored exactly and applied once; replays change nothing; gaps are refused;
//! a replay with different content (or a chain that does not continue the stored head)
//! quarantines the agent until an admin releases it.

use rust_decimal::Decimal;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{WireEntry, error_code};
use tollgate_server::sync::agents;

use crate::support::{TestDb, TestServer};
use crate::sync_support::{
    Agent, Chain, assert_books, central_balance, chain_users, enroll, fingerprint, get, home_users,
    push, push_bytes, push_request, rechain, reenroll, scalar,
};

async fn setup(name: &str) -> (TestDb, TestServer, String, Agent) {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, name).await;
    // The users the tests' chains write for (`{name}-user{i}`), made centrally on this agent.
    home_users(&db.pool, name, &chain_users(name, 8)).await;
    (db, server, base, agent)
}

/// Reads a stored entry back in its wire form (what the server would re-hash).
async fn stored(db: &TestDb, agent: &Agent) -> Vec<WireEntry> {
    let conn = db.pool.get().await.unwrap();
    let rows = conn
        .query(
            "SELECT seq, entry_id::text, user_id, transaction_type, amount, balance_before, \
             balance_after, provider, model, prompt_tokens, completion_tokens, cost_per_token, \
             power_level, is_byok, payment_method, request_id, package_id, metadata, notes, \
             admin_user_id, idempotency_key, corrects_entry_id::text, created_at, total_tokens, \
             stripe_payment_intent_id, stripe_charge_id, invoice_id, prev_hash, hash \
             FROM credit_transactions WHERE agent_id = $1 AND incarnation = $2 ORDER BY seq",
            &[&agent.agent_id, &agent.incarnation],
        )
        .await
        .unwrap();
    let credits = |d: Decimal| Credits::from_decimal(d).unwrap();
    let tokens = |v: Option<i64>| v.map(|n| u32::try_from(n).unwrap());
    rows.iter()
        .map(|r| WireEntry {
            seq: r.get(0),
            entry_id: r.get(1),
            user_id: r.get(2),
            transaction_type: r.get(3),
            amount: credits(r.get(4)),
            balance_before: credits(r.get(5)),
            balance_after: credits(r.get(6)),
            provider: r.get(7),
            model: r.get(8),
            prompt_tokens: tokens(r.get(9)),
            completion_tokens: tokens(r.get(10)),
            cost_per_token: r.get(11),
            power_level: r.get(12),
            is_byok: r.get(13),
            payment_method: r.get(14),
            request_id: r.get(15),
            package_id: r.get(16),
            metadata: r.get(17),
            notes: r.get(18),
            admin_user_id: r.get(19),
            idempotency_key: r.get(20),
            corrects_entry_id: r.get(21),
            created_at: r.get(22),
            total_tokens: r.get(23),
            stripe_payment_intent_id: r.get(24),
            stripe_charge_id: r.get(25),
            invoice_id: r.get(26),
            prev_hash: hex::encode(r.get::<_, Vec<u8>>(27)),
            hash: hex::encode(r.get::<_, Vec<u8>>(28)),
        })
        .collect()
}

#[tokio::test]
async fn a_batch_is_stored_exactly_and_balances_follow() {
    let (db, _server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 3);
    let mut entries = chain.take(60);
    // One entry with every optional field set, including a correction and a package.
    entries.push({
        let mut e = chain.entry("a1-user1", "admin_adjustment", "-1.5".parse().unwrap());
        e.package_id = Some(7);
        e.admin_user_id = Some("root".to_owned());
        e.corrects_entry_id = Some(entries[4].entry_id.clone());
        e.stripe_payment_intent_id = Some("pi_1".to_owned());
        e.stripe_charge_id = Some("ch_1".to_owned());
        e.invoice_id = Some("in_1".to_owned());
        e.is_byok = true;
        e
    });
    rechain(&mut entries, tollgate_schema::wire::GENESIS_HASH);
    let answer = push(&base, &agent, &entries).await;
    assert_eq!(answer.acked_seq(), 61);
    assert_eq!(answer.body["incarnation"], agent.incarnation.to_string());

    // Stored exactly as sent: the wire form read back is equal field by field and re-hashes.
    let back = stored(&db, &agent).await;
    assert_eq!(back, entries);
    for e in &back {
        e.check().unwrap();
    }
    assert_books(&db.pool, &agent, &entries).await;

    // Users are homed on the pushing agent; counters follow purchases and usage.
    let conn = db.pool.get().await.unwrap();
    for user in &chain.users {
        let row = conn
            .query_one(
                "SELECT home_agent_id, lifetime_credits_purchased, credits_used_this_month \
                 FROM user_credits WHERE user_id = $1",
                &[user],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, uuid::Uuid>(0), agent.agent_id);
        let purchased: Decimal = entries
            .iter()
            .filter(|e| &e.user_id == user && e.transaction_type == "purchase")
            .map(|e| e.amount.to_decimal())
            .sum();
        let used: Decimal = entries
            .iter()
            .filter(|e| &e.user_id == user && e.transaction_type == "usage")
            .map(|e| -e.amount.to_decimal())
            .sum();
        assert_eq!(row.get::<_, Decimal>(1), purchased, "{user}");
        assert_eq!(row.get::<_, Decimal>(2), used, "{user}");
    }
    let reported: i64 = scalar(&db.pool, "SELECT reported_head_seq FROM agent_streams").await;
    assert_eq!(reported, 61);
}

#[tokio::test]
async fn a_replayed_batch_changes_nothing() {
    let (db, _server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 4);
    let first = chain.take(40);
    let second = chain.take(40);
    assert_eq!(push(&base, &agent, &first).await.acked_seq(), 40);
    assert_eq!(push(&base, &agent, &second).await.acked_seq(), 80);
    let before = fingerprint(&db.pool).await;
    // The same bytes again, an older batch, and a single old entry: acknowledged, nothing moves.
    assert_eq!(push(&base, &agent, &second).await.acked_seq(), 80);
    assert_eq!(push(&base, &agent, &first).await.acked_seq(), 80);
    assert_eq!(push(&base, &agent, &first[10..11]).await.acked_seq(), 80);
    assert_eq!(fingerprint(&db.pool).await, before);
    let all: Vec<WireEntry> = first.iter().chain(&second).cloned().collect();
    assert_books(&db.pool, &agent, &all).await;
}

#[tokio::test]
async fn a_batch_with_a_gap_is_refused_and_writes_nothing() {
    let (db, _server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 2);
    let entries = chain.take(30);
    assert_eq!(push(&base, &agent, &entries[..10]).await.acked_seq(), 10);
    let before = fingerprint(&db.pool).await;
    let answer = push(&base, &agent, &entries[14..20]).await;
    assert_eq!(answer.status, 409);
    let error = answer.error().error;
    assert_eq!(error.code, error_code::GAP);
    assert_eq!(error.acked_seq, Some(10));
    assert!(error.message.contains("seq 11"), "{}", error.message);
    assert_eq!(fingerprint(&db.pool).await, before);
    // Resending from acked + 1 continues.
    assert_eq!(push(&base, &agent, &entries[10..30]).await.acked_seq(), 30);
    assert_books(&db.pool, &agent, &entries).await;
}

#[tokio::test]
async fn an_overlapping_batch_stores_only_the_new_half() {
    let (db, _server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 3);
    let entries = chain.take(40);
    assert_eq!(push(&base, &agent, &entries[..20]).await.acked_seq(), 20);
    assert_eq!(push(&base, &agent, &entries[10..40]).await.acked_seq(), 40);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await,
        40
    );
    assert_books(&db.pool, &agent, &entries).await;
}

#[tokio::test]
async fn a_replay_with_different_content_quarantines_until_released() {
    let (db, _server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 2);
    let entries = chain.take(20);
    assert_eq!(push(&base, &agent, &entries[..10]).await.acked_seq(), 10);

    // Seq 5..10 again, but seq 7 now says something else (re-hashed, so it is internally sound).
    let mut forged = entries[4..10].to_vec();
    forged[2].notes = Some("not what was said before".to_owned());
    rechain(&mut forged, crate::sync_support::hash_of(&entries[3]));
    let before_rows = scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await;
    let balances: Vec<Decimal> = {
        let mut v = Vec::new();
        for u in &chain.users {
            v.push(central_balance(&db.pool, u).await);
        }
        v
    };
    let answer = push(&base, &agent, &forged).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    let error = answer.error().error;
    assert_eq!(error.code, error_code::CONFLICT);
    assert_eq!(error.acked_seq, Some(10));

    // Evidence kept (seq 7 and the ones chained after it differ), agent quarantined, books intact.
    let conn = db.pool.get().await.unwrap();
    let evidence = conn
        .query(
            "SELECT seq, held_hash, offered_hash, offered->>'notes' FROM quarantined_entries \
             ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(evidence.len(), 4, "seqs 7..10 differ");
    assert_eq!(evidence[0].get::<_, i64>(0), 7);
    assert_eq!(
        evidence[0].get::<_, Vec<u8>>(1),
        crate::sync_support::hash_of(&entries[6]).to_vec()
    );
    assert_eq!(evidence[0].get::<_, String>(2), forged[2].hash);
    assert_eq!(
        evidence[0].get::<_, Option<String>>(3).as_deref(),
        Some("not what was said before")
    );
    let status: String = conn
        .query_one(
            "SELECT status FROM agents WHERE agent_id = $1",
            &[&agent.agent_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "quarantined");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await,
        before_rows
    );
    for (u, b) in chain.users.iter().zip(&balances) {
        assert_eq!(&central_balance(&db.pool, u).await, b);
    }

    // Further pushes are refused (even honest ones), pulls still work.
    let answer = push(&base, &agent, &entries[10..]).await;
    assert_eq!(answer.status, 409);
    let error = answer.error().error;
    assert_eq!(error.code, error_code::QUARANTINED);
    assert_eq!(error.acked_seq, Some(10));
    assert_eq!(
        get(&base, &agent.credential, "/v1/sync/inbox?after=0")
            .await
            .status,
        200
    );
    assert_eq!(
        get(&base, &agent.credential, "/v1/sync/snapshot")
            .await
            .status,
        200
    );
    let listed = agents::show(&db.pool, "a1").await.unwrap();
    assert_eq!(listed.status, "quarantined");
    assert!(listed.quarantine_reason.unwrap().contains("seq 7"));

    // The admin releases it; the agent continues from its true history.
    agents::release(&db.pool, &agent.name).await.unwrap();
    assert_eq!(push(&base, &agent, &entries[10..]).await.acked_seq(), 20);
    assert_books(&db.pool, &agent, &entries).await;
    // Releasing an active agent is a no-op; a pending one is refused.
    agents::release(&db.pool, "a1").await.unwrap();
}

#[tokio::test]
async fn a_batch_not_chaining_on_the_head_quarantines() {
    let (db, _server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 2);
    let entries = chain.take(10);
    assert_eq!(push(&base, &agent, &entries).await.acked_seq(), 10);
    // Another history: seq 11.. chained on something other than the stored seq 10.
    let mut other = chain.clone();
    other.prev = [7; 32];
    let diverged = other.take(5);
    let answer = push(&base, &agent, &diverged).await;
    assert_eq!(answer.status, 409);
    let error = answer.error().error;
    assert_eq!(error.code, error_code::CONFLICT);
    assert_eq!(error.acked_seq, Some(10));
    let conn = db.pool.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT seq, held_hash, offered_hash FROM quarantined_entries",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10);
    assert_eq!(
        row.get::<_, Vec<u8>>(1),
        crate::sync_support::hash_of(&entries[9]).to_vec()
    );
    assert_eq!(row.get::<_, String>(2), hex::encode([7u8; 32]));
    assert_eq!(
        agents::show(&db.pool, "a1").await.unwrap().status,
        "quarantined"
    );
    assert_books(&db.pool, &agent, &entries).await;
}

#[tokio::test]
async fn an_empty_batch_is_a_heartbeat() {
    let (db, _server, base, agent) = setup("a1").await;
    let body = serde_json::to_vec(&push_request(&agent, &[], Some(42))).unwrap();
    let answer = push_bytes(&base, &agent.credential, body).await;
    assert_eq!(answer.acked_seq(), 0);
    let listed = agents::show(&db.pool, "a1").await.unwrap();
    assert_eq!(listed.reported_head_seq, 42);
    assert_eq!(listed.lag, 42);
    assert!(listed.last_push_at.is_some());
    assert_eq!(listed.incarnation, Some(agent.incarnation.to_string()));
    let mut chain = Chain::new("a1", 1);
    let entries = chain.take(5);
    let body = serde_json::to_vec(&push_request(&agent, &entries, Some(42))).unwrap();
    assert_eq!(
        push_bytes(&base, &agent.credential, body).await.acked_seq(),
        5
    );
    assert_eq!(agents::show(&db.pool, "a1").await.unwrap().lag, 37);
}

#[tokio::test]
async fn an_agent_enrolled_before_streams_were_registered_still_pushes() {
    let (db, _server, base, agent) = setup("a1").await;
    // An older server made no stream at enrolment, only the agent's incarnation.
    db.pool
        .get()
        .await
        .unwrap()
        .execute("DELETE FROM agent_streams", &[])
        .await
        .unwrap();
    let mut chain = Chain::new("a1", 2);
    assert_eq!(push(&base, &agent, &chain.take(3)).await.acked_seq(), 3);
}

#[tokio::test]
async fn a_new_incarnation_is_a_new_stream() {
    let (db, _server, base, mut agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 2);
    let entries = chain.take(10);
    assert_eq!(push(&base, &agent, &entries).await.acked_seq(), 10);
    let old = agent.clone();
    agent.incarnation = uuid::Uuid::now_v7();
    // The restored database starts over at seq 1, from the balances it holds.
    let mut restored = Chain::new("a1", 2);
    restored.balances = chain.balances.clone();
    let fresh = restored.take(5);
    // Not before it enrols: a push never registers an incarnation.
    let before = fingerprint(&db.pool).await;
    let refused = push(&base, &agent, &fresh).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.error().error.code, error_code::UNKNOWN_INCARNATION);
    assert_eq!(fingerprint(&db.pool).await, before);
    // Enrolled with it (a token for the same agent), it is a new stream.
    agent = reenroll(&db.pool, &base, &agent).await;
    assert_eq!(push(&base, &agent, &fresh).await.acked_seq(), 5);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM agent_streams").await,
        2
    );
    assert_eq!(
        agents::show(&db.pool, "a1").await.unwrap().incarnation,
        Some(agent.incarnation.to_string())
    );
    // The old stream is untouched.
    let conn = db.pool.get().await.unwrap();
    let acked: i64 = conn
        .query_one(
            "SELECT acked_seq FROM agent_streams WHERE incarnation = $1",
            &[&old.incarnation],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(acked, 10);
}

#[tokio::test]
async fn entries_that_would_overdraw_centrally_quarantine_the_pusher() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "a").await;
    let b = enroll(&db.pool, &base, "b").await;
    // User u is homed on a with 5 credits.
    let mut chain_a = Chain::new("a", 1);
    let shared = "shared-user";
    home_users(&db.pool, "a", &[shared.to_owned()]).await;
    let from_a = vec![chain_a.entry(shared, "purchase", "5".parse().unwrap())];
    assert_eq!(push(&base, &a, &from_a).await.acked_seq(), 1);
    // Agent b believes the user had 10 and spends 8 of it: centrally that is below zero, and b
    // does not hold the user anyway.
    let mut chain_b = Chain::new("b", 1);
    chain_b
        .balances
        .insert(shared.to_owned(), "10".parse().unwrap());
    let from_b = vec![chain_b.entry(shared, "usage", "-8".parse().unwrap())];
    let before = scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await;
    let answer = push(&base, &b, &from_b).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.error().error.code, error_code::CONFLICT);
    assert_eq!(answer.error().error.acked_seq, Some(0));
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await,
        before
    );
    assert_eq!(
        central_balance(&db.pool, shared).await,
        "5".parse::<Decimal>().unwrap()
    );
    let listed = agents::show(&db.pool, "b").await.unwrap();
    assert_eq!(listed.status, "quarantined");
    let reason = listed.quarantine_reason.unwrap();
    assert!(
        reason.contains("agent \"a\" holds"),
        "names the reason: {reason}"
    );
}

#[tokio::test]
async fn an_entry_id_stored_elsewhere_quarantines() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "a").await;
    let b = enroll(&db.pool, &base, "b").await;
    home_users(&db.pool, "a", &chain_users("a", 1)).await;
    home_users(&db.pool, "b", &chain_users("b", 1)).await;
    let mut chain_a = Chain::new("a", 1);
    let from_a = chain_a.take(3);
    assert_eq!(push(&base, &a, &from_a).await.acked_seq(), 3);
    let mut chain_b = Chain::new("b", 1);
    let mut from_b = chain_b.take(2);
    from_b[1].entry_id = from_a[2].entry_id.clone();
    rechain(&mut from_b, tollgate_schema::wire::GENESIS_HASH);
    let answer = push(&base, &b, &from_b).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.error().error.code, error_code::CONFLICT);
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await,
        3
    );
    assert_eq!(
        agents::show(&db.pool, "b").await.unwrap().status,
        "quarantined"
    );
    assert_eq!(agents::show(&db.pool, "a").await.unwrap().status, "active");
}

#[tokio::test]
async fn metrics_count_pushes_by_outcome() {
    let (_db, server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 2);
    let entries = chain.take(10);
    assert_eq!(push(&base, &agent, &entries).await.acked_seq(), 10);
    assert_eq!(push(&base, &agent, &entries).await.acked_seq(), 10);
    assert_eq!(push(&base, &agent, &chain.take(3)[1..]).await.status, 409);
    let text = server.state.metrics.render();
    for line in [
        "tollgate_server_entries_ingested_total 10",
        "tollgate_server_pushes_total{outcome=\"accepted\"} 1",
        "tollgate_server_pushes_total{outcome=\"replay\"} 1",
        "tollgate_server_pushes_total{outcome=\"gap\"} 1",
        "tollgate_server_push_seconds_count 3",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

/// An entry carrying a central credit operation's key must be that operation (sent to this
/// agent, same user and amount) and its only entry: a second entry for the key, or one with
/// another amount, quarantines the agent and stores nothing, so central credit never counts twice.
#[tokio::test]
async fn entries_claiming_a_central_operation_must_match_it_once() {
    use tollgate_server::central::credit::{CreditKind, CreditOp, credit};

    let (db, _server, base, agent) = setup("a1").await;
    let mut chain = Chain::new("a1", 1);
    let first = chain.take(1); // the user's first entry: the server learns them, homed here
    assert_eq!(push(&base, &agent, &first).await.acked_seq(), 1);
    let user = first[0].user_id.clone();
    let grant = |operation_id: &str| CreditOp {
        user_id: user.clone(),
        kind: CreditKind::Grant,
        amount: "7.5".parse().unwrap(),
        operation_id: operation_id.to_owned(),
        note: None,
        actor: "test".to_owned(),
    };
    credit(&db.pool, &grant("op-1")).await.unwrap();
    credit(&db.pool, &grant("op-2")).await.unwrap();

    // An entry of `amount` keyed `key`, chained on `chain`'s head.
    let keyed = |chain: &mut Chain, key: &str, amount: &str| {
        let prev = chain.prev;
        let mut entry = chain.entry(&user, "bonus", amount.parse().unwrap());
        entry.idempotency_key = Some(key.to_owned());
        chain.prev = prev;
        chain.seal(entry)
    };
    // The agent books op-1 as sent: accepted.
    let ok = keyed(&mut chain, "admin:op-1", "7.5");
    assert_eq!(push(&base, &agent, &[ok]).await.acked_seq(), 2);

    for (key, amount, why) in [
        ("admin:op-1", "7.5", "already has its entry"),
        ("admin:op-2", "8", "amount differs"),
    ] {
        let mut fork = Chain {
            users: chain.users.clone(),
            seq: chain.seq,
            prev: chain.prev,
            balances: chain.balances.clone(),
        };
        let bad = keyed(&mut fork, key, amount);
        let answer = push(&base, &agent, &[bad]).await;
        assert_eq!(answer.status, 409, "{key}: {}", answer.body);
        let error = answer.error().error;
        assert_eq!(error.code, error_code::CONFLICT);
        assert!(error.message.contains(why), "{}", error.message);
        assert_eq!(
            scalar(&db.pool, "SELECT count(*) FROM credit_transactions").await,
            2,
            "{key}: nothing stored"
        );
        agents::release(&db.pool, "a1").await.unwrap();
    }
    assert_eq!(
        central_balance(&db.pool, &user).await,
        chain.balances[&user].to_decimal()
    );
}
