//! Migrations: applied once, a no-op the second time (also when replicas race), seeds exact, and
//! the original's functions with their flaws fixed.

use rust_decimal::Decimal;

use crate::support::TestDb;

#[tokio::test]
async fn migrating_twice_and_concurrently_is_a_no_op() {
    let db = TestDb::empty().await;
    let (a, b) = tokio::join!(
        tollgate_server::db::migrate(&db.pool),
        tollgate_server::db::migrate(&db.pool)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // Exactly one of the racing runs applied every version, the other none.
    let all: Vec<i32> = (1..=tollgate_schema::postgres::LATEST_VERSION).collect();
    assert!(
        (a == all && b.is_empty()) || (b == all && a.is_empty()),
        "{a:?} {b:?}"
    );
    assert!(
        tollgate_server::db::migrate(&db.pool)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        tollgate_server::db::check_schema(&db.pool).await.unwrap(),
        tollgate_schema::postgres::LATEST_VERSION
    );
}

#[tokio::test]
async fn seeds_are_exact() {
    let db = TestDb::new().await;
    let conn = db.pool.get().await.unwrap();
    let rows = conn
        .query(
            "SELECT name, credits, price_usd, discount_percent, is_featured \
             FROM credit_packages ORDER BY sort_order",
            &[],
        )
        .await
        .unwrap();
    let packages: Vec<(String, Decimal, Decimal, i32, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    assert_eq!(
        packages,
        vec![
            ("Starter Pack".to_owned(), d("100"), d("10.00"), 0, false),
            ("Value Pack".to_owned(), d("500"), d("45.00"), 10, true),
            ("Pro Pack".to_owned(), d("1000"), d("80.00"), 20, true),
            (
                "Enterprise Pack".to_owned(),
                d("5000"),
                d("350.00"),
                30,
                false
            ),
        ]
    );
    let levels: Vec<(String, Decimal)> = conn
        .query(
            "SELECT power_level, cost_multiplier FROM power_level_configs ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        levels,
        vec![
            ("eco".to_owned(), d("0.7")),
            ("balanced".to_owned(), d("1.0")),
            ("precision".to_owned(), d("1.5"))
        ]
    );
}

#[tokio::test]
async fn credit_functions_refuse_what_the_original_allowed() {
    let db = TestDb::new().await;
    let conn = db.pool.get().await.unwrap();
    conn.execute("INSERT INTO user_credits (user_id) VALUES ('u')", &[])
        .await
        .unwrap();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let bal: Decimal = conn
        .query_one("SELECT add_credits('u', $1)", &[&d("5.000000001")])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bal, d("5.000000001"));
    // A negative debit no longer credits the user; an overdraft is refused; unknown users too.
    for (sql, amount, needle) in [
        ("SELECT debit_credits('u', $1)", d("-1"), "must be positive"),
        ("SELECT debit_credits('u', $1)", d("0"), "must be positive"),
        (
            "SELECT debit_credits('u', $1)",
            d("5.000000002"),
            "cannot cover",
        ),
        ("SELECT add_credits('u', $1)", d("-1"), "must be positive"),
        ("SELECT add_credits('nobody', $1)", d("1"), "unknown user"),
        ("SELECT debit_credits('nobody', $1)", d("1"), "unknown user"),
    ] {
        let err = conn.query_one(sql, &[&amount]).await.unwrap_err();
        assert!(
            err.to_string().contains(needle) || format!("{err:?}").contains(needle),
            "{sql} {amount}: {err:?}"
        );
    }
    let bal: Decimal = conn
        .query_one("SELECT debit_credits('u', $1)", &[&d("5.000000001")])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bal, Decimal::ZERO);
    // Quota: 0 without an allowance (the original divided by zero), else used/allowance×100.
    let q: Decimal = conn
        .query_one("SELECT quota_usage_percent('u')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(q, Decimal::ZERO);
    conn.execute(
        "UPDATE user_credits SET monthly_allowance = 3, credits_used_this_month = 1 WHERE user_id = 'u'",
        &[],
    )
    .await
    .unwrap();
    let q: Decimal = conn
        .query_one("SELECT quota_usage_percent('u')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(q, d("33.33"));
}

#[tokio::test]
async fn version_2_keeps_the_checkouts_a_version_1_database_holds() {
    let db = TestDb::empty().await;
    // Version 1 alone, with a session already recorded.
    tollgate_schema::postgres::migrations::runner()
        .set_target(refinery::Target::Version(1))
        .run_async(&mut **db.pool.get().await.unwrap())
        .await
        .unwrap();
    let conn = db.pool.get().await.unwrap();
    conn.batch_execute(
        "INSERT INTO user_credits (user_id) VALUES ('alice'); \
         INSERT INTO checkout_sessions (session_id, user_id, package_name, credits, price_usd) \
         VALUES ('cs_old', 'alice', 'Value Pack', 500, 45)",
    )
    .await
    .unwrap();
    drop(conn);
    tollgate_server::db::migrate(&db.pool).await.unwrap();
    let row = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT checkout_id IS NOT NULL, status FROM checkout_sessions \
             WHERE session_id = 'cs_old'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "open");
}
