//! Pull: inbox events in order, idempotent re-pulls, the acknowledged cursor, long polls woken by
//! an event another connection commits, cursor_gone after pruning, and the snapshot.

use std::time::{Duration, Instant};

use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    CreditEvent, CreditEventKind, EventBody, INBOX_PAGE_MAX, InboxPage, Snapshot, UserSettings,
    error_code,
};
use tollgate_server::central::inbox;
use tollgate_server::sync::agents;
use uuid::Uuid;

use crate::support::{TestDb, TestServer};
use crate::sync_support::{
    Agent, Chain, chain_users, enroll, enroll_with_users, get, push, scalar,
};

fn credit(user: &str, n: i64) -> EventBody {
    EventBody::Credit(CreditEvent {
        user_id: user.to_owned(),
        kind: CreditEventKind::Bonus,
        amount: Credits::from_whole(n).unwrap(),
        idempotency_key: format!("admin:{}", Uuid::now_v7()),
        package: None,
        note: Some(format!("bonus {n}")),
        admin_user_id: Some("root".to_owned()),
    })
}

/// Appends `bodies` to the agent's inbox in one committed transaction.
async fn append(db: &TestDb, agent: &Agent, bodies: &[EventBody]) {
    let mut conn = db.pool.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    for body in bodies {
        inbox::append(&tx, agent.agent_id, body, None)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

fn page(answer: &crate::sync_support::Answer) -> InboxPage {
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_value(answer.body.clone()).unwrap()
}

async fn inbox_acked(db: &TestDb, agent: &Agent) -> i64 {
    db.pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT inbox_acked FROM agents WHERE agent_id = $1",
            &[&agent.agent_id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn events_come_in_order_and_re_pulling_is_idempotent() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, "a1").await;
    let other = enroll(&db.pool, &base, "a2").await;
    let bodies: Vec<EventBody> = (1..=5).map(|n| credit("u", n)).collect();
    append(&db, &agent, &bodies).await;
    append(&db, &other, &[credit("v", 9)]).await;

    let first = page(&get(&base, &agent.credential, "/v1/sync/inbox?after=0").await);
    assert_eq!(first.head, 5);
    assert_eq!(
        first.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        first
            .events
            .iter()
            .map(|e| e.body.clone())
            .collect::<Vec<_>>(),
        bodies
    );
    for e in &first.events {
        assert!(e.created_at.ends_with('Z'), "{}", e.created_at);
        time::OffsetDateTime::parse(
            &e.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        Uuid::parse_str(&e.event_id).unwrap();
    }
    // Idempotent: the same cursor, the same page.
    let again = page(&get(&base, &agent.credential, "/v1/sync/inbox?after=0").await);
    assert_eq!(again, first);
    assert_eq!(inbox_acked(&db, &agent).await, 0);

    // The cursor acknowledges; it never moves back.
    let rest = page(&get(&base, &agent.credential, "/v1/sync/inbox?after=3").await);
    assert_eq!(rest.events, first.events[3..].to_vec());
    assert_eq!(inbox_acked(&db, &agent).await, 3);
    let older = page(&get(&base, &agent.credential, "/v1/sync/inbox?after=2").await);
    assert_eq!(older.events.len(), 3);
    assert_eq!(inbox_acked(&db, &agent).await, 3);
    let drained = page(&get(&base, &agent.credential, "/v1/sync/inbox?after=5").await);
    assert!(drained.events.is_empty());
    assert_eq!(drained.head, 5);
    assert_eq!(inbox_acked(&db, &agent).await, 5);
    // The other agent sees only its own.
    let theirs = page(&get(&base, &other.credential, "/v1/sync/inbox?after=0").await);
    assert_eq!(theirs.events.len(), 1);
    assert_eq!(theirs.head, 1);
}

#[tokio::test]
async fn a_page_holds_at_most_the_limit() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, "a1").await;
    let bodies: Vec<EventBody> = (1..=(INBOX_PAGE_MAX as i64 + 3))
        .map(|n| credit("u", n))
        .collect();
    append(&db, &agent, &bodies).await;
    let first = page(&get(&base, &agent.credential, "/v1/sync/inbox?after=0").await);
    assert_eq!(first.events.len(), INBOX_PAGE_MAX);
    assert_eq!(first.head, INBOX_PAGE_MAX as i64 + 3);
    let next = page(
        &get(
            &base,
            &agent.credential,
            &format!("/v1/sync/inbox?after={INBOX_PAGE_MAX}"),
        )
        .await,
    );
    assert_eq!(
        next.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![501, 502, 503]
    );
}

#[tokio::test]
async fn a_long_poll_wakes_when_another_connection_commits_an_event() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, "a1").await;
    append(&db, &agent, &[credit("u", 1)]).await;

    let wait_ms = 20_000;
    let poll = {
        let (base, credential) = (base.clone(), agent.credential.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = get(
                &base,
                &credential,
                &format!("/v1/sync/inbox?after=1&wait_ms={wait_ms}"),
            )
            .await;
            (answer, started.elapsed())
        })
    };
    // Wait for the signal that the poll is parked (no sleeps): the gauge.
    let gauge = &server.state.metrics.long_polls_waiting;
    let parked_by = Instant::now() + Duration::from_secs(10);
    while gauge.get() == 0 {
        assert!(Instant::now() < parked_by, "the long poll never parked");
        tokio::task::yield_now().await;
    }
    let event = credit("u", 2);
    let committed = Instant::now();
    append(&db, &agent, std::slice::from_ref(&event)).await;
    let (answer, elapsed) = poll.await.unwrap();
    let woke_after = committed.elapsed();
    let got = page(&answer);
    assert_eq!(got.events.len(), 1);
    assert_eq!(got.events[0].seq, 2);
    assert_eq!(got.events[0].body, event);
    assert!(
        elapsed < Duration::from_millis(wait_ms / 2),
        "the poll took {elapsed:?} of its {wait_ms} ms ({woke_after:?} after the commit)"
    );
    assert_eq!(gauge.get(), 0);
}

#[tokio::test]
async fn a_long_poll_with_nothing_to_say_waits_its_time() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, "a1").await;
    let started = Instant::now();
    let got = page(
        &get(
            &base,
            &agent.credential,
            "/v1/sync/inbox?after=0&wait_ms=300",
        )
        .await,
    );
    assert!(got.events.is_empty());
    assert_eq!(got.head, 0);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn cursor_gone_after_pruning_then_the_snapshot_restarts() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    // Users homed on this agent (brought to its enrolment), one with central settings.
    let agent = enroll_with_users(&db.pool, &base, "a1", &chain_users("a1", 2)).await;
    let mut chain = Chain::new("a1", 2);
    assert_eq!(push(&base, &agent, &chain.take(4)).await.acked_seq(), 4);
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE user_credits SET subscription_tier = 'starter', power_level = 'eco', \
             monthly_allowance = 12.5, monthly_spend_cap = 100 WHERE user_id = 'a1-user1'",
            &[],
        )
        .await
        .unwrap();
    let bodies: Vec<EventBody> = (1..=6).map(|n| credit("a1-user0", n)).collect();
    append(&db, &agent, &bodies).await;

    // The agent applied through 4; an admin prunes keeping 1 acknowledged event.
    page(&get(&base, &agent.credential, "/v1/sync/inbox?after=4").await);
    let pruned = agents::prune_inbox(&db.pool, "a1", 1).await.unwrap();
    assert_eq!((pruned.deleted, pruned.pruned_through), (3, 3));
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM agent_inbox").await,
        3
    );
    // Keeping none prunes through what was acknowledged, never beyond.
    let again = agents::prune_inbox(&db.pool, "a1", 0).await.unwrap();
    assert_eq!((again.deleted, again.pruned_through), (1, 4));

    for (after, gone) in [(0, true), (3, true), (4, false), (6, false), (7, true)] {
        let answer = get(
            &base,
            &agent.credential,
            &format!("/v1/sync/inbox?after={after}"),
        )
        .await;
        if gone {
            assert_eq!(answer.status, 410, "after={after}: {}", answer.body);
            let error = answer.error().error;
            assert_eq!(error.code, error_code::CURSOR_GONE);
            assert!(error.message.contains("snapshot"), "{}", error.message);
        } else {
            assert_eq!(answer.status, 200, "after={after}: {}", answer.body);
        }
    }

    let answer = get(&base, &agent.credential, "/v1/sync/snapshot").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let snapshot: Snapshot = serde_json::from_value(answer.body).unwrap();
    assert_eq!(snapshot.cursor, 6, "the newest acknowledged event");
    assert_eq!(
        snapshot.users,
        vec![
            UserSettings {
                user_id: "a1-user0".to_owned(),
                tier: "trial".to_owned(),
                power_level: "eco".to_owned(),
                monthly_allowance: Credits::ZERO,
                monthly_spend_cap: None,
                fleet: false,
            },
            UserSettings {
                user_id: "a1-user1".to_owned(),
                tier: "starter".to_owned(),
                power_level: "eco".to_owned(),
                monthly_allowance: "12.5".parse().unwrap(),
                monthly_spend_cap: Some("100".parse().unwrap()),
                fleet: false,
            },
        ]
    );
    let prices: Vec<(String, i64, Credits)> = snapshot
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.price_usd_cents, p.credits))
        .collect();
    assert_eq!(
        prices,
        vec![
            ("Starter Pack".to_owned(), 1_000, "100".parse().unwrap()),
            ("Value Pack".to_owned(), 4_500, "500".parse().unwrap()),
            ("Pro Pack".to_owned(), 8_000, "1000".parse().unwrap()),
            (
                "Enterprise Pack".to_owned(),
                35_000,
                "5000".parse().unwrap()
            ),
        ]
    );
    assert_eq!(
        snapshot.packages[1].badge_text.as_deref(),
        Some("MOST POPULAR")
    );
    let levels: Vec<(String, String, Vec<String>)> = snapshot
        .power_levels
        .iter()
        .map(|l| {
            (
                l.power_level.clone(),
                l.cost_multiplier.clone(),
                l.preferred_providers.clone(),
            )
        })
        .collect();
    assert_eq!(
        levels,
        vec![
            (
                "eco".to_owned(),
                "0.7".to_owned(),
                vec!["openrouter".into(), "together".into(), "deepinfra".into()]
            ),
            (
                "balanced".to_owned(),
                "1".to_owned(),
                vec!["openai".into(), "anthropic".into(), "openrouter".into()]
            ),
            (
                "precision".to_owned(),
                "1.5".to_owned(),
                vec!["anthropic".into(), "openai".into()]
            ),
        ]
    );
    // Continuing from the snapshot's cursor works.
    let next = page(
        &get(
            &base,
            &agent.credential,
            &format!("/v1/sync/inbox?after={}", snapshot.cursor),
        )
        .await,
    );
    assert!(next.events.is_empty());
    assert_eq!(next.head, 6);
}
