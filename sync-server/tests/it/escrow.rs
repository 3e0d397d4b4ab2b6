//! Escrow for fleet users (SYNC.md "Escrow"), on the server: a fleet user's credit lands in a
//! pool; agents get grants carved from it (idempotent by request id, sized fairly, never more
//! than the pool, however many ask at once); an agent books a grant, spends within what it
//! holds and returns the rest; ingest refuses anything else a hostile agent might write; and
//! reconcile proves pool, holdings and journal agree.

use rust_decimal::Decimal;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    EventBody, GrantRequest, GrantResponse, GrantSpec, PROTOCOL_HEADER, PROTOCOL_VERSION,
    error_code,
};
use tollgate_server::central::credit::{self, CreditKind, CreditOp};
use tollgate_server::central::users::{Overdraft, UserSet, set_user, show_user};
use uuid::Uuid;

use crate::admin_support::c;
use crate::support::{TestDb, TestServer};
use crate::sync_support::{
    Agent, Answer, Chain, agent_status, enroll, fingerprint, home_users, http, push,
};

/// Makes `user` a fleet user (no home).
async fn fleet_user(db: &TestDb, user: &str) {
    set_user(
        &db.pool,
        &UserSet {
            user_id: user.to_owned(),
            home_agent: None,
            tier: None,
            power_level: None,
            monthly_allowance: None,
            monthly_spend_cap: None,
            fleet: false,
            overdraft: None,
        },
        &format!("test:{}", Uuid::now_v7()),
        "test",
    )
    .await
    .unwrap();
}

/// An admin grant of `amount` to `user`.
async fn give(db: &TestDb, user: &str, amount: &str) -> credit::CreditResult {
    credit::credit(
        &db.pool,
        &CreditOp {
            user_id: user.to_owned(),
            kind: CreditKind::Grant,
            amount: c(amount),
            operation_id: format!("give-{}", Uuid::now_v7()),
            note: None,
            actor: "test".to_owned(),
        },
    )
    .await
    .unwrap()
    .result
}

/// `agent` asks for a grant.
async fn ask(
    base: &str,
    agent: &Agent,
    request_id: &str,
    user: &str,
    want: &str,
    worst: &str,
) -> Answer {
    let response = http()
        .post(format!("{base}/v1/escrow/grants"))
        .bearer_auth(&agent.credential)
        .json(&GrantRequest {
            protocol_version: PROTOCOL_VERSION,
            request_id: request_id.to_owned(),
            user_id: user.to_owned(),
            want: c(want),
            worst_case: c(worst),
        })
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

fn granted(answer: &Answer) -> GrantResponse {
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_value(answer.body.clone()).unwrap()
}

async fn pool_of(db: &TestDb, user: &str) -> Decimal {
    db.pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT pool FROM user_credits WHERE user_id = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}

async fn reconcile_is_clean(db: &TestDb) {
    let report = tollgate_server::reconcile::run(&db.pool).await.unwrap();
    assert!(
        report.ok,
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
}

#[tokio::test]
async fn a_fleet_user_is_served_from_grants_of_their_pool_and_the_books_agree() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    let b = enroll(&db.pool, &base, "edge-b").await;
    fleet_user(&db, "ann").await;
    // Credit for a fleet user is booked on the pool at once: no agent, no event.
    let given = give(&db, "ann", "10").await;
    assert_eq!((given.agent, given.pool), (None, Some(c("10"))));
    assert_eq!(pool_of(&db, "ann").await, Decimal::from(10));

    // A asks for what it wants; its retry gets the same grant and takes nothing more.
    let first = granted(&ask(&base, &a, "r-1", "ann", "3", "0.5").await);
    let grant_a = first.grant.clone().unwrap();
    assert_eq!(grant_a.amount, c("3"));
    assert_eq!(grant_a.key, format!("grant:{}:r-1", a.agent_id));
    assert_eq!(first.pool_free, c("7"));
    let again = granted(&ask(&base, &a, "r-1", "ann", "3", "0.5").await);
    assert_eq!(again.grant, first.grant);
    assert_eq!(pool_of(&db, "ann").await, Decimal::from(7));
    // The same request id for something else is a conflict, not a second grant.
    let other = ask(&base, &a, "r-1", "ann", "4", "0.5").await;
    assert_eq!(other.status, 409, "{}", other.body);
    assert_eq!(other.error().error.code, error_code::IDEMPOTENCY_CONFLICT);
    // B wants 9, but A spends for ann too: B gets half of what is free.
    let grant_b = granted(&ask(&base, &b, "r-1", "ann", "9", "0.5").await)
        .grant
        .unwrap();
    assert_eq!(grant_b.amount, c("3.5"));
    assert_eq!(pool_of(&db, "ann").await, Decimal::new(35, 1));
    // The grant is in A's inbox too, so an answer lost on the way loses nothing.
    let events = crate::admin_support::inbox(&db, "edge-a").await;
    assert!(
        events
            .iter()
            .any(|(_, body)| *body == EventBody::EscrowGrant(grant_a.clone())),
        "{events:?}"
    );

    // A books its grant, spends 1.25 and returns the rest; B books its grant and spends 0.5.
    let mut chain_a = Chain::new("a", 1);
    let entries_a = [
        chain_a.keyed("ann", "escrow", c("3"), &grant_a.key),
        chain_a.entry("ann", "usage", c("-1.25")),
        chain_a.keyed("ann", "escrow", c("-1.75"), "release:edge-a-1"),
    ];
    // Booked in one push, spent and returned in the next (a net decrease of what A holds).
    let answer = push(&base, &a, &entries_a[..1]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = push(&base, &a, &entries_a[1..]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut chain_b = Chain::new("b", 1);
    let entries_b = vec![
        chain_b.keyed("ann", "escrow", c("3.5"), &grant_b.key),
        chain_b.entry("ann", "usage", c("-0.5")),
    ];
    let answer = push(&base, &b, &entries_b).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The release went back to the pool: 3.5 + 1.75.
    assert_eq!(pool_of(&db, "ann").await, Decimal::new(525, 2));
    let conn = db.pool.get().await.unwrap();
    let ann = show_user(&conn, "ann").await.unwrap().unwrap();
    drop(conn);
    assert!(ann.fleet);
    assert_eq!(ann.pool, Some(c("5.25")));
    assert_eq!(ann.summary.balance, c("3"));
    assert_eq!(ann.credits_used_this_month, c("1.75"));
    assert_eq!(
        ann.held_by
            .iter()
            .map(|h| (h.agent.as_str(), h.credits))
            .collect::<Vec<_>>(),
        vec![("edge-b", c("3"))]
    );
    assert!(ann.pending_credit_operations.is_empty(), "{ann:?}");
    // Conservation: 10 given = 5.25 in the pool + 3 held + 1.75 spent.
    reconcile_is_clean(&db).await;
    server.stop().await;
}

#[tokio::test]
async fn a_grant_in_flight_shows_in_reconcile_until_its_agent_books_it() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    fleet_user(&db, "ann").await;
    give(&db, "ann", "2").await;
    let grant = granted(&ask(&base, &a, "r-1", "ann", "1", "1").await)
        .grant
        .unwrap();
    let report = tollgate_server::reconcile::run(&db.pool).await.unwrap();
    let kinds: Vec<&str> = report.differences.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, vec!["credit_not_applied"], "{report:?}");
    assert!(report.differences[0].detail.contains(&grant.key));
    let mut chain = Chain::new("a", 1);
    let entry = chain.keyed("ann", "escrow", c("1"), &grant.key);
    assert_eq!(push(&base, &a, &[entry]).await.status, 200);
    reconcile_is_clean(&db).await;
    server.stop().await;
}

/// What a hostile agent might write for a fleet user, each refused naming the entry and the
/// rule, the agent quarantined, and nothing of the batch kept.
#[tokio::test]
async fn ingest_refuses_what_an_agent_may_not_write_for_a_fleet_user() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    fleet_user(&db, "ann").await;
    give(&db, "ann", "100").await;
    let other = enroll(&db.pool, &base, "edge-other").await;
    let others_grant = granted(&ask(&base, &other, "r-1", "ann", "2", "2").await)
        .grant
        .unwrap();
    type Forge = fn(&mut Chain, &GrantSpec, &GrantSpec) -> Vec<tollgate_schema::wire::WireEntry>;
    let cases: Vec<(&str, Forge, &str)> = vec![
        (
            "a purchase for a fleet user",
            |ch, _, _| vec![ch.entry("ann", "purchase", c("5"))],
            "only as a grant from the server's pool",
        ),
        (
            "escrow credit without a grant's key",
            |ch, _, _| vec![ch.entry("ann", "escrow", c("2"))],
            "without a grant's key",
        ),
        (
            "another agent's grant",
            |ch, _, theirs| vec![ch.keyed("ann", "escrow", c("2"), &theirs.key)],
            "sent to another agent",
        ),
        (
            "its grant for more than it was given",
            |ch, mine, _| vec![ch.keyed("ann", "escrow", c("5"), &mine.key)],
            "its amount differs",
        ),
        (
            "its grant as another entry type",
            |ch, mine, _| vec![ch.keyed("ann", "bonus", c("2"), &mine.key)],
            "its entry type differs",
        ),
        (
            "its grant booked twice",
            |ch, mine, _| {
                vec![
                    ch.keyed("ann", "escrow", c("2"), &mine.key),
                    ch.keyed("ann", "escrow", c("2"), &mine.key),
                ]
            },
            "already has its entry",
        ),
        (
            "spending more than it holds",
            |ch, mine, _| {
                let grant = ch.keyed("ann", "escrow", c("2"), &mine.key);
                ch.balances.insert("ann".to_owned(), c("50"));
                vec![grant, ch.entry("ann", "usage", c("-40"))]
            },
            "this agent holds 2",
        ),
        (
            "a release key used twice",
            |ch, mine, _| {
                vec![
                    ch.keyed("ann", "escrow", c("2"), &mine.key),
                    ch.keyed("ann", "escrow", c("-1"), "release:x-1"),
                    ch.keyed("ann", "escrow", c("-1"), "release:x-1"),
                ]
            },
            "another entry already used",
        ),
        (
            "a release without a release key",
            |ch, mine, _| {
                vec![
                    ch.keyed("ann", "escrow", c("2"), &mine.key),
                    ch.entry("ann", "escrow", c("-1")),
                ]
            },
            "without a release key",
        ),
    ];
    for (i, (name, forge, says)) in cases.into_iter().enumerate() {
        let agent = enroll(&db.pool, &base, &format!("edge-{i}")).await;
        let mine = granted(&ask(&base, &agent, "r-1", "ann", "2", "2").await)
            .grant
            .unwrap();
        let mut chain = Chain::new(&format!("x{i}"), 1);
        let entries = forge(&mut chain, &mine, &others_grant);
        let before = fingerprint(&db.pool).await;
        let answer = push(&base, &agent, &entries).await;
        assert_eq!(answer.status, 409, "{name}: {}", answer.body);
        let message = answer.error().error.message;
        assert!(message.contains(says), "{name}: {message}");
        assert!(message.contains("seq "), "{name}: {message}");
        assert_eq!(
            agent_status(&db.pool, &agent.name).await,
            "quarantined",
            "{name}"
        );
        let beyond_agents = |f: &str| f.split_once("--\n").unwrap().1.to_owned();
        assert_eq!(
            beyond_agents(&before),
            beyond_agents(&fingerprint(&db.pool).await),
            "{name}: something besides the quarantine was written"
        );
    }
    // An escrow entry for a home user is refused too.
    let home = enroll(&db.pool, &base, "edge-home").await;
    home_users(&db.pool, "edge-home", &["hal".to_owned()]).await;
    let mut chain = Chain::new("h", 1);
    let entries = vec![
        chain.entry("hal", "purchase", c("5")),
        chain.keyed("hal", "escrow", c("-1"), "release:h-1"),
    ];
    let answer = push(&base, &home, &entries).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(
        answer.error().error.message.contains("not a fleet user"),
        "{}",
        answer.body
    );
    server.stop().await;
}

/// Many agents asking at once, some retrying the same request: the pool is never overdrawn, each
/// request id gets at most one grant, and what was granted plus what is left is what was given.
#[tokio::test]
async fn racing_grant_requests_never_overdraw_the_pool() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    fleet_user(&db, "ann").await;
    give(&db, "ann", "10").await;
    let mut agents = Vec::new();
    for i in 0..4 {
        agents.push(enroll(&db.pool, &base, &format!("edge-{i}")).await);
    }
    let mut tasks = Vec::new();
    for agent in &agents {
        for r in 0..12 {
            // Every request is sent twice at once: a retry racing its original.
            for _ in 0..2 {
                let (base, agent) = (base.clone(), agent.clone());
                tasks.push(tokio::spawn(async move {
                    let answer = ask(&base, &agent, &format!("r-{r}"), "ann", "1", "0.3").await;
                    (agent.name.clone(), r, granted(&answer))
                }));
            }
        }
    }
    let mut grants = std::collections::BTreeMap::new();
    for task in tasks {
        let (agent, r, answer) = task.await.unwrap();
        if let Some(grant) = answer.grant {
            assert!(grant.amount.is_positive());
            if let Some(seen) = grants.insert((agent.clone(), r), grant.clone()) {
                assert_eq!(seen, grant, "{agent} r-{r} got two different grants");
            }
        }
    }
    let granted_total = grants
        .values()
        .fold(Credits::ZERO, |sum, g| sum.checked_add(g.amount).unwrap());
    let left = pool_of(&db, "ann").await;
    assert!(left >= Decimal::ZERO);
    assert_eq!(
        granted_total.to_decimal() + left,
        Decimal::from(10),
        "granted {granted_total} + left {left}"
    );
    assert!(
        left < Decimal::new(3, 1),
        "demand exceeded the pool, so less than one worst case is left: {left}"
    );
    let operations: i64 = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM central_operations WHERE operation_key LIKE 'grant:%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(operations, i64::try_from(grants.len()).unwrap());
    server.stop().await;
}

/// An agent one version behind (protocol 2) cannot ask for grants and is never sent a fleet
/// user; when it upgrades, it gets every fleet user's settings and keys.
#[tokio::test]
async fn an_agent_speaking_protocol_2_is_refused_grants_and_catches_up_when_it_upgrades() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    let v2 = |request: reqwest::RequestBuilder| {
        request
            .bearer_auth(&a.credential)
            .header(PROTOCOL_HEADER, "2")
    };
    // It speaks 2 from now on.
    let plain = reqwest::Client::new();
    let answer = Answer::of(
        v2(plain.get(format!("{base}/v1/sync/inbox?after=0&wait_ms=0")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let events_before = crate::admin_support::inbox(&db, "edge-a").await.len();
    fleet_user(&db, "ann").await;
    give(&db, "ann", "5").await;
    let key = tollgate_server::central::api_keys::create(&db.pool, "ann", "laptop", "test")
        .await
        .unwrap();
    assert_eq!(
        crate::admin_support::inbox(&db, "edge-a").await.len(),
        events_before,
        "a protocol-2 agent was sent a fleet user"
    );
    let body = serde_json::json!({
        "protocol_version": 2, "request_id": "r-1", "user_id": "ann",
        "want": "1", "worst_case": "1"
    });
    let answer = Answer::of(
        v2(plain.post(format!("{base}/v1/escrow/grants")))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.error().error.code, error_code::UNSUPPORTED_PROTOCOL);
    assert_eq!(pool_of(&db, "ann").await, Decimal::from(5));
    // It upgrades: its next request speaks 3, and it is sent ann and her key.
    let answer = granted(&ask(&base, &a, "r-1", "ann", "1", "1").await);
    assert!(answer.grant.is_some());
    let events = crate::admin_support::inbox(&db, "edge-a").await;
    let new: Vec<&EventBody> = events[events_before..].iter().map(|(_, b)| b).collect();
    assert!(
        new.iter()
            .any(|b| matches!(b, EventBody::UserUpsert(s) if s.user_id == "ann" && s.fleet)),
        "{new:?}"
    );
    assert!(
        new.iter()
            .any(|b| matches!(b, EventBody::ApiKeyUpsert(k) if k.key_id == key.info.key_id)),
        "{new:?}"
    );
    server.stop().await;
}

/// A home user turned fleet user: refused while central credit sent to the home is not back;
/// then the home's balance becomes its holding, what it wrote before applying the change is
/// judged as a home's, its release fills the pool, and from its first escrow entry on it is one
/// fleet agent among others.
#[tokio::test]
async fn a_home_user_becomes_a_fleet_user_and_their_balance_returns_to_the_pool() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    enroll(&db.pool, &base, "edge-b").await;
    home_users(&db.pool, "edge-a", &["hal".to_owned()]).await;
    let key = tollgate_server::central::api_keys::create(&db.pool, "hal", "laptop", "test")
        .await
        .unwrap();
    let mut chain = Chain::new("a", 1);
    let first = [
        chain.entry("hal", "purchase", c("10")),
        chain.entry("hal", "usage", c("-1")),
    ];
    assert_eq!(push(&base, &a, &first).await.status, 200);
    let bonus = give(&db, "hal", "2").await;
    let convert = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            set_user(
                &pool,
                &UserSet {
                    user_id: "hal".to_owned(),
                    home_agent: None,
                    tier: None,
                    power_level: None,
                    monthly_allowance: None,
                    monthly_spend_cap: None,
                    fleet: true,
                    overdraft: None,
                },
                &format!("test:{}", Uuid::now_v7()),
                "test",
            )
            .await
        }
    };
    // The bonus is on its way to edge-a: converting now could strand it.
    let refused = convert(&db).await.unwrap_err();
    assert!(refused.to_string().contains("not yet back"), "{refused}");
    let booked = chain.keyed("hal", "bonus", c("2"), &bonus.operation_key);
    assert_eq!(push(&base, &a, &[booked]).await.status, 200);
    let converted = convert(&db).await.unwrap().result;
    assert!(converted.user.fleet);
    assert_eq!(converted.home_agent, None);
    assert_eq!(
        converted.sent_to,
        vec!["edge-a".to_owned(), "edge-b".to_owned()]
    );
    // Her key, until now only on her home, reaches the other agent too.
    let events = crate::admin_support::inbox(&db, "edge-b").await;
    assert!(
        events
            .iter()
            .any(|(_, b)| matches!(b, EventBody::ApiKeyUpsert(k) if k.key_id == key.info.key_id)),
        "{events:?}"
    );
    // An entry edge-a wrote as hal's home before it applied the change (a renewal, say): a
    // home's entry, continuing what it holds.
    let before_change = chain.entry("hal", "allowance", c("1"));
    assert_eq!(push(&base, &a, &[before_change]).await.status, 200);
    // Applying the change, it returns what it holds to the pool.
    let release = chain.keyed("hal", "escrow", c("-12"), "release:a-convert");
    assert_eq!(push(&base, &a, &[release]).await.status, 200);
    assert_eq!(pool_of(&db, "hal").await, Decimal::from(12));
    let conn = db.pool.get().await.unwrap();
    let hal = show_user(&conn, "hal").await.unwrap().unwrap();
    drop(conn);
    assert!(hal.fleet);
    assert_eq!(
        (hal.pool, hal.summary.balance),
        (Some(c("12")), Credits::ZERO)
    );
    reconcile_is_clean(&db).await;
    // From then on it is one fleet agent among others: credit only as grants.
    let grant = granted(&ask(&base, &a, "r-1", "hal", "3", "1").await)
        .grant
        .unwrap();
    let entries = [
        chain.keyed("hal", "escrow", c("3"), &grant.key),
        chain.entry("hal", "usage", c("-0.5")),
    ];
    assert_eq!(push(&base, &a, &entries).await.status, 200);
    reconcile_is_clean(&db).await;
    let minted = chain.entry("hal", "allowance", c("1"));
    let answer = push(&base, &a, &[minted]).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(
        answer.error().error.message.contains("only as a grant"),
        "{}",
        answer.body
    );
    server.stop().await;
}

/// A push that waited for a user's row while that user was turned into a fleet user is judged by
/// what it waited for: the lock is taken by a statement of its own, and the user with their
/// holding read after it. Before, one statement locked the row and joined the holding, and
/// PostgreSQL re-read the locked row (now a fleet user) but not the joined holding (from before
/// the change): the former home's next entry was refused as a broken chain and the agent
/// quarantined. The change is committed by a transaction the test holds open until the push is
/// seen waiting on the row (pg_stat_activity: a signal, not a sleep).
#[tokio::test]
async fn a_push_waiting_on_a_user_turned_fleet_user_sees_the_holding_made_for_it() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    home_users(&db.pool, "edge-a", &["hal".to_owned()]).await;
    let mut chain = Chain::new("a", 1);
    let first = chain.entry("hal", "purchase", c("10"));
    assert_eq!(push(&base, &a, &[first]).await.status, 200);

    // The conversion's writes, holding hal's row.
    let (mut holder, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM user_credits WHERE user_id = 'hal' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO escrow_holdings (user_id, agent_id, balance, converting) \
         SELECT user_id, home_agent_id, balance, true FROM user_credits WHERE user_id = 'hal'",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE user_credits SET fleet = true, home_agent_id = NULL WHERE user_id = 'hal'",
        &[],
    )
    .await
    .unwrap();
    // edge-a's next entry, written before it heard of the change, waits for the row.
    let usage = chain.entry("hal", "usage", c("-1"));
    let (base2, a2) = (base.clone(), a.clone());
    let pushing = tokio::spawn(async move { push(&base2, &a2, &[usage]).await });
    let watcher = db.pool.get().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE 'SELECT u.user_id%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(!pushing.is_finished(), "the push did not wait for the row");
        assert!(
            std::time::Instant::now() < deadline,
            "the push never waited"
        );
        tokio::task::yield_now().await;
    }
    tx.commit().await.unwrap();
    let answer = pushing.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(agent_status(&db.pool, "edge-a").await, "active");
    reconcile_is_clean(&db).await;
    server.stop().await;
}

/// Money Stripe returns for a fleet user whose pool no longer holds it: taken from the pool as
/// far as it goes, the rest booked as the user's debt — the webhook's transaction never fails
/// (Stripe would retry forever) and no pool goes below zero; later credit, and grants released,
/// repay the debt first; reconcile agrees at every step.
#[tokio::test]
async fn money_returned_beyond_a_fleet_pool_becomes_debt_that_later_credit_repays() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let a = enroll(&db.pool, &base, "edge-a").await;
    fleet_user(&db, "ann").await;
    give(&db, "ann", "10").await;
    let grant = granted(&ask(&base, &a, "r-1", "ann", "8", "8").await)
        .grant
        .unwrap();
    let mut chain = Chain::new("a", 1);
    let booked = chain.keyed("ann", "escrow", c("8"), &grant.key);
    assert_eq!(push(&base, &a, &[booked]).await.status, 200);
    let adjust = |amount: &'static str, key: &'static str| {
        let pool = db.pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            let tx = conn.transaction().await.unwrap();
            let applied = credit::stripe_adjustment(&tx, "ann", c(amount), key, "refund")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            applied
        }
    };
    // Covered by the pool: taken.
    let covered = adjust("-1", "stripe:refund:ch_1:100").await.result;
    assert_eq!((covered.pool, covered.debt), (Some(c("1")), None));
    // Beyond it: the pool gives what it has, the rest is owed; the same key again: the same.
    let beyond = adjust("-5", "stripe:refund:ch_1:600").await;
    assert_eq!(
        (beyond.result.pool, beyond.result.debt),
        (Some(c("0")), Some(c("4")))
    );
    assert!(adjust("-5", "stripe:refund:ch_1:600").await.replayed);
    assert_eq!(position(&db, "ann").await, (c("0"), c("4")));
    reconcile_is_clean(&db).await;
    // An admin's credit repays the debt first.
    let repaid = give(&db, "ann", "3").await;
    assert_eq!((repaid.pool, repaid.debt), (Some(c("0")), Some(c("1"))));
    // So does what an agent releases: 1 repays the rest, 7 go back to the pool.
    let release = chain.keyed("ann", "escrow", c("-8"), "release:a-1");
    assert_eq!(push(&base, &a, &[release]).await.status, 200);
    assert_eq!(position(&db, "ann").await, (c("7"), c("0")));
    let conn = db.pool.get().await.unwrap();
    let shown = show_user(&conn, "ann").await.unwrap().unwrap();
    assert_eq!((shown.pool, shown.debt), (Some(c("7")), None));
    reconcile_is_clean(&db).await;
    // An admin taking more than the pool holds is still refused (debt is for money returned).
    let refused = credit::credit(
        &db.pool,
        &CreditOp {
            user_id: "ann".to_owned(),
            kind: CreditKind::Adjust,
            amount: c("-8"),
            operation_id: "take-8".to_owned(),
            note: None,
            actor: "test".to_owned(),
        },
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("held by agents"), "{refused}");
    server.stop().await;
}

/// (pool, debt) of `user`.
async fn position(db: &TestDb, user: &str) -> (Credits, Credits) {
    let row = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT pool, debt FROM user_credits WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    (
        Credits::from_decimal(row.get("pool")).unwrap(),
        Credits::from_decimal(row.get("debt")).unwrap(),
    )
}

/// Gives fleet user `user` an overdraft line of `line` credits.
async fn overdraft_line(db: &TestDb, user: &str, line: &str) {
    let applied = set_user(
        &db.pool,
        &UserSet {
            user_id: user.to_owned(),
            home_agent: None,
            tier: None,
            power_level: None,
            monthly_allowance: None,
            monthly_spend_cap: None,
            fleet: false,
            overdraft: Some(Overdraft::UpTo(c(line))),
        },
        &format!("test:{}", Uuid::now_v7()),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(applied.result.overdraft, Some(c(line)));
}

/// An agent cut off from the server may draw the overdraft line its grant carries — once, up to
/// the line, for that grant's user — and the user owes what the pool did not cover; an agent
/// speaking protocol 3 gets no line; every other overdraft entry is refused naming the rule.
#[tokio::test]
async fn an_agent_draws_its_grants_overdraft_line_once_and_the_user_owes_it() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    fleet_user(&db, "ann").await;
    overdraft_line(&db, "ann", "3").await;
    give(&db, "ann", "2").await;
    let a = enroll(&db.pool, &base, "edge-a").await;
    let grant = granted(&ask(&base, &a, "r-1", "ann", "2", "1").await)
        .grant
        .unwrap();
    assert_eq!((grant.amount, grant.overdraft), (c("2"), Some(c("3"))));
    // Spent, then the line drawn (the server unreachable), partly spent, the rest released.
    let mut chain = Chain::new("a", 1);
    let line_key = format!("overdraft:{}", grant.key);
    let entries = vec![
        chain.keyed("ann", "escrow", c("2"), &grant.key),
        chain.entry("ann", "usage", c("-2")),
        chain.keyed("ann", "escrow", c("3"), &line_key),
        chain.entry("ann", "usage", c("-2.5")),
        chain.keyed("ann", "escrow", c("-0.5"), "release:a-1"),
    ];
    let answer = push(&base, &a, &entries).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(position(&db, "ann").await, (c("0"), c("2.5")));
    reconcile_is_clean(&db).await;
    // Their next credit repays it.
    let repaid = give(&db, "ann", "4").await;
    assert_eq!((repaid.pool, repaid.debt), (Some(c("1.5")), None));
    reconcile_is_clean(&db).await;

    // A protocol-3 agent's grant carries no line.
    let old = enroll(&db.pool, &base, "edge-old").await;
    let answer = Answer::of(
        http()
            .post(format!("{base}/v1/escrow/grants"))
            .bearer_auth(&old.credential)
            .header(PROTOCOL_HEADER, "3")
            .json(&serde_json::json!({
                "protocol_version": 3, "request_id": "r-1", "user_id": "ann",
                "want": "0.5", "worst_case": "0.5"
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let old_grant = granted(&answer).grant.unwrap();
    assert_eq!(old_grant.overdraft, None, "{}", answer.body);

    // What an agent may not do with a line.
    give(&db, "ann", "20").await;
    let other = enroll(&db.pool, &base, "edge-other").await;
    let others = granted(&ask(&base, &other, "r-1", "ann", "1", "1").await)
        .grant
        .unwrap();
    type Forge = fn(&mut Chain, &GrantSpec, &GrantSpec) -> Vec<tollgate_schema::wire::WireEntry>;
    let cases: Vec<(&str, Forge, &str)> = vec![
        (
            "another agent's line",
            |ch, _, theirs| {
                vec![ch.keyed(
                    "ann",
                    "escrow",
                    c("1"),
                    &format!("overdraft:{}", theirs.key),
                )]
            },
            "made to another agent",
        ),
        (
            "more than the line",
            |ch, mine, _| {
                vec![ch.keyed("ann", "escrow", c("4"), &format!("overdraft:{}", mine.key))]
            },
            "more than that grant's overdraft line",
        ),
        (
            "the line drawn twice",
            |ch, mine, _| {
                let key = format!("overdraft:{}", mine.key);
                vec![
                    ch.keyed("ann", "escrow", c("1"), &key),
                    ch.keyed("ann", "escrow", c("1"), &key),
                ]
            },
            "already drawn",
        ),
        (
            "a line of no grant",
            |ch, _, _| vec![ch.keyed("ann", "escrow", c("1"), "overdraft:grant:nothing")],
            "no grant has that key",
        ),
        (
            "a line drawn as usage",
            |ch, mine, _| {
                vec![
                    ch.keyed("ann", "escrow", c("1"), &mine.key),
                    ch.keyed("ann", "usage", c("-1"), &format!("overdraft:{}", mine.key)),
                ]
            },
            "a positive escrow entry",
        ),
    ];
    for (i, (name, forge, says)) in cases.into_iter().enumerate() {
        let agent = enroll(&db.pool, &base, &format!("edge-{i}")).await;
        let mine = granted(&ask(&base, &agent, "r-1", "ann", "1", "1").await)
            .grant
            .unwrap();
        let mut chain = Chain::new(&format!("x{i}"), 1);
        let entries = forge(&mut chain, &mine, &others);
        let answer = push(&base, &agent, &entries).await;
        assert_eq!(answer.status, 409, "{name}: {}", answer.body);
        let message = answer.error().error.message;
        assert!(message.contains(says), "{name}: {message}");
        assert!(message.contains("seq "), "{name}: {message}");
        assert_eq!(
            agent_status(&db.pool, &agent.name).await,
            "quarantined",
            "{name}"
        );
    }
    server.stop().await;
}
