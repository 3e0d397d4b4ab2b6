//! Central operations as a library: idempotent by key (also when two replicas race on one key),
//! validated before anything is written, and turned into inbox events for the right agents.

use tollgate_schema::wire::{CreditEventKind, EventBody};
use tollgate_server::central::CentralError;
use tollgate_server::central::credit::{self, CreditKind, CreditOp, PurchasedPackage};
use tollgate_server::central::users::{SpendCap, UserSet, set_user};

use crate::admin_support::{
    add_agent, books, c, cli, count, inbox, revoke_agent, set_user as home,
};
use crate::support::TestDb;

fn grant(user: &str, amount: &str, op: &str) -> CreditOp {
    CreditOp {
        user_id: user.to_owned(),
        kind: CreditKind::Grant,
        amount: c(amount),
        operation_id: op.to_owned(),
        note: Some("welcome".to_owned()),
        actor: "test".to_owned(),
    }
}

#[tokio::test]
async fn two_replicas_racing_one_operation_write_one_event() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    home(&db, "alice", "a1").await;
    // A second pool: another replica on the same database.
    let replica = tollgate_server::db::pool(&db.url, 8).unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let pool = if i % 2 == 0 {
            db.pool.clone()
        } else {
            replica.clone()
        };
        tasks.push(tokio::spawn(async move {
            credit::credit(&pool, &grant("alice", "12.5", "race-1")).await
        }));
    }
    let mut fresh = 0;
    let mut seqs = Vec::new();
    for t in tasks {
        let applied = t.await.unwrap().unwrap();
        if !applied.replayed {
            fresh += 1;
        }
        seqs.push(applied.result.inbox_seq);
    }
    assert_eq!(fresh, 1, "exactly one call wrote the operation");
    assert!(seqs.iter().all(|s| *s == seqs[0]), "{seqs:?}");
    assert_eq!(
        count(
            &db,
            "central_operations WHERE operation_key = 'admin:race-1'"
        )
        .await,
        1
    );
    let events = inbox(&db, "a1").await;
    let credits: Vec<_> = events.iter().filter(|(k, _)| k == "credit").collect();
    assert_eq!(credits.len(), 1, "{events:?}");
    match &credits[0].1 {
        EventBody::Credit(e) => {
            assert_eq!(e.amount, c("12.5"));
            assert_eq!(e.kind, CreditEventKind::Bonus);
            assert_eq!(e.idempotency_key, "admin:race-1");
            assert_eq!(e.admin_user_id.as_deref(), Some("test"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn same_key_other_content_is_a_conflict_and_writes_nothing() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    home(&db, "alice", "a1").await;
    let first = credit::credit(&db.pool, &grant("alice", "5", "op"))
        .await
        .unwrap();
    assert!(!first.replayed);
    // "5.000" is the same amount: a replay.
    let again = credit::credit(&db.pool, &grant("alice", "5.000", "op"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.result, first.result);
    let before = books(&db).await;
    for changed in [
        grant("alice", "5.000000001", "op"),
        CreditOp {
            note: None,
            ..grant("alice", "5", "op")
        },
        CreditOp {
            kind: CreditKind::Refund,
            ..grant("alice", "5", "op")
        },
    ] {
        let err = credit::credit(&db.pool, &changed).await.unwrap_err();
        assert!(
            matches!(err, CentralError::IdempotencyConflict { .. }),
            "{err}"
        );
    }
    assert_eq!(books(&db).await, before);
}

#[tokio::test]
async fn refused_credit_operations_write_nothing() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    add_agent(&db, "gone").await;
    home(&db, "alice", "a1").await;
    home(&db, "bob", "gone").await;
    revoke_agent(&db, "gone").await;
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO user_credits (user_id) VALUES ('homeless')",
            &[],
        )
        .await
        .unwrap();
    let before = books(&db).await;
    let cases: Vec<(CreditOp, &str)> = vec![
        (grant("nobody", "1", "x1"), "no user"),
        (grant("homeless", "1", "x2"), "no home agent"),
        (grant("bob", "1", "x3"), "revoked"),
        (grant("alice", "0", "x4"), "amount: must not be zero"),
        (
            grant("alice", "-1", "x5"),
            "amount: a grant must be positive",
        ),
        (
            CreditOp {
                kind: CreditKind::Refund,
                ..grant("alice", "-1", "x6")
            },
            "amount: a refund must be positive",
        ),
        (grant("alice", "1", ""), "operation_id"),
        (grant("alice", "1", "has space"), "operation_id"),
        (grant("bad user", "1", "x7"), "user_id"),
        (
            CreditOp {
                note: Some("two\nlines".to_owned()),
                ..grant("alice", "1", "x8")
            },
            "note",
        ),
    ];
    for (op, needle) in cases {
        let err = credit::credit(&db.pool, &op).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{op:?}: {err}");
    }
    assert_eq!(books(&db).await, before);
    // A negative adjustment is allowed (the agent refuses it if the balance cannot cover it).
    let adjust = CreditOp {
        kind: CreditKind::Adjust,
        ..grant("alice", "-3", "adj")
    };
    let applied = credit::credit(&db.pool, &adjust).await.unwrap();
    assert_eq!(applied.result.kind, CreditEventKind::AdminAdjustment);
    assert_eq!(applied.result.amount, c("-3"));
}

#[tokio::test]
async fn set_user_is_idempotent_and_validated() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    add_agent(&db, "gone").await;
    revoke_agent(&db, "gone").await;
    let req = UserSet {
        user_id: "alice".to_owned(),
        home_agent: Some("a1".to_owned()),
        tier: Some("starter".to_owned()),
        power_level: Some("eco".to_owned()),
        monthly_allowance: Some(c("10")),
        monthly_spend_cap: Some(SpendCap::Credits(c("50"))),
        fleet: false,
        overdraft: None,
    };
    let first = set_user(&db.pool, &req, "admin:u-1", "test").await.unwrap();
    assert!(first.result.created && !first.replayed);
    let again = set_user(&db.pool, &req, "admin:u-1", "test").await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.result, first.result);
    assert_eq!(inbox(&db, "a1").await.len(), 1);
    let err = set_user(
        &db.pool,
        &UserSet {
            tier: Some("enterprise".to_owned()),
            ..req.clone()
        },
        "admin:u-1",
        "test",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CentralError::IdempotencyConflict { .. }));

    let before = books(&db).await;
    for (bad, needle) in [
        (
            UserSet {
                tier: Some("gold".to_owned()),
                ..req.clone()
            },
            "tier: unknown tier \"gold\" (expected one of",
        ),
        // A level the tier does not allow: every agent would refuse the event.
        (
            UserSet {
                user_id: "bob".to_owned(),
                tier: Some("trial".to_owned()),
                power_level: Some("precision".to_owned()),
                ..req.clone()
            },
            "power_level: power level precision is not available on the trial tier",
        ),
        (
            UserSet {
                tier: Some("free".to_owned()),
                power_level: Some("balanced".to_owned()),
                ..req.clone()
            },
            "power level balanced is not available on the free tier (it allows: eco)",
        ),
        (
            UserSet {
                power_level: Some("turbo".to_owned()),
                ..req.clone()
            },
            "power_level",
        ),
        (
            UserSet {
                home_agent: Some("nope".to_owned()),
                ..req.clone()
            },
            "home_agent: no agent is named",
        ),
        (
            UserSet {
                home_agent: Some("gone".to_owned()),
                ..req.clone()
            },
            "revoked",
        ),
        (
            UserSet {
                user_id: "x".repeat(129),
                ..req.clone()
            },
            "user_id",
        ),
        (
            UserSet {
                monthly_allowance: Some(c("-1")),
                ..req.clone()
            },
            "monthly_allowance",
        ),
    ] {
        let err = set_user(&db.pool, &bad, "admin:u-2", "test")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    assert_eq!(books(&db).await, before);
}

#[tokio::test]
async fn a_change_names_only_what_it_changes() {
    let db = TestDb::new().await;
    add_agent(&db, "edge-1").await;
    let show = |args: &'static [&'static str]| {
        let db = &db;
        async move {
            let (code, out, err) = cli(db, args).await;
            assert_eq!(code, 0, "{args:?}: {err}");
            out
        }
    };
    show(&[
        "users",
        "set",
        "dave",
        "--home",
        "edge-1",
        "--tier",
        "professional",
        "--monthly-allowance",
        "7",
    ])
    .await;
    // Only the cap: the tier and the allowance stay (the CLI once applied its defaults here).
    show(&[
        "users",
        "set",
        "dave",
        "--home",
        "edge-1",
        "--monthly-spend-cap",
        "5",
    ])
    .await;
    let detail = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            let conn = pool.get().await.unwrap();
            tollgate_server::central::users::show_user(&conn, "dave")
                .await
                .unwrap()
                .unwrap()
        }
    };
    let dave = detail(&db).await;
    assert_eq!(dave.summary.tier, "professional");
    assert_eq!(dave.summary.power_level, "balanced");
    assert_eq!(dave.monthly_allowance, c("7"));
    assert_eq!(dave.monthly_spend_cap, Some(c("5")));
    // The event carries the whole settings, so the agent converges whatever it missed.
    let events = inbox(&db, "edge-1").await;
    match &events.last().unwrap().1 {
        tollgate_schema::wire::EventBody::UserUpsert(s) => {
            assert_eq!(
                (s.tier.as_str(), s.monthly_spend_cap),
                ("professional", Some(c("5")))
            );
        }
        other => panic!("{other:?}"),
    }
    // "none" removes the cap, and only the cap; the home need not be named again.
    show(&["users", "set", "dave", "--monthly-spend-cap", "none"]).await;
    let dave = detail(&db).await;
    assert_eq!(dave.monthly_spend_cap, None);
    assert_eq!(dave.summary.tier, "professional");
    assert_eq!(dave.summary.home_agent.as_deref(), Some("edge-1"));
    // A new user without a home is a fleet user: nothing goes to edge-1, which speaks protocol
    // 1 and could not serve them; and a fleet user cannot be given a home afterwards.
    let before = inbox(&db, "edge-1").await.len();
    show(&["users", "set", "frank", "--tier", "starter"]).await;
    let conn = db.pool.get().await.unwrap();
    let frank = tollgate_server::central::users::show_user(&conn, "frank")
        .await
        .unwrap()
        .unwrap();
    drop(conn);
    assert!(frank.fleet);
    assert_eq!(frank.pool, Some(tollgate_schema::money::Credits::ZERO));
    assert_eq!(frank.summary.home_agent, None);
    assert_eq!(inbox(&db, "edge-1").await.len(), before);
    let (code, _, err) = cli(&db, &["users", "set", "frank", "--home", "edge-1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("fleet user"), "{err}");
    // A new user with nothing named gets the defaults: trial, and trial's level.
    show(&["users", "set", "erin", "--home", "edge-1"]).await;
    let conn = db.pool.get().await.unwrap();
    let erin = tollgate_server::central::users::show_user(&conn, "erin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            erin.summary.tier.as_str(),
            erin.summary.power_level.as_str()
        ),
        ("trial", "eco")
    );
}

#[tokio::test]
async fn a_purchase_grants_once_per_session() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    home(&db, "alice", "a1").await;
    let package = PurchasedPackage {
        name: "Value Pack".to_owned(),
        credits: c("500"),
    };
    for _ in 0..3 {
        let mut conn = db.pool.get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        credit::grant_purchase(&tx, "alice", &package, "cs_test_1")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let events = inbox(&db, "a1").await;
    let credits: Vec<_> = events
        .into_iter()
        .filter_map(|(_, b)| match b {
            EventBody::Credit(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(credits.len(), 1);
    assert_eq!(credits[0].kind, CreditEventKind::Purchase);
    assert_eq!(credits[0].package.as_deref(), Some("Value Pack"));
    assert_eq!(credits[0].idempotency_key, "stripe:cs_test_1");
    // A package changed since checkout is not named (the agent would refuse the mismatch); the
    // credits bought still are.
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE credit_packages SET credits = 600 WHERE name = 'Value Pack'",
            &[],
        )
        .await
        .unwrap();
    let mut conn = db.pool.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let applied = credit::grant_purchase(&tx, "alice", &package, "cs_test_2")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(applied.result.package, None);
    assert_eq!(applied.result.amount, c("500"));
}
