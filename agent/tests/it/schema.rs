//! The SQLite schema as SCHEMA.md specifies it: pragmas, idempotent migrations, refusal of a newer
//! schema, exact seed rows, append-only journal, updated_at triggers, and `verify` catching
//! tampering that the constraints alone cannot.

use std::sync::Arc;

use rusqlite::Connection;
use tollgate::ledger::db::{self, OpenMode};
use tollgate::ledger::{
    AddCredits, CreditKind, Ledger, LedgerError, NewUser, SystemClock, catalog,
};
use tollgate_schema::money::Credits;
use tollgate_schema::sqlite::LATEST_VERSION;

/// A package as (sort, name, credits, cents, discount %, badge, featured, description).
type PackageRow = (i64, String, String, i64, i64, Option<String>, bool, String);
/// A level as (level, name, description, providers, fallback, multiplier, max latency, min quality).
type LevelRow = (
    String,
    String,
    String,
    Vec<String>,
    String,
    String,
    i64,
    i64,
);

fn fresh() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    (dir, path)
}

fn ledger(path: &std::path::Path) -> Ledger {
    Ledger::open(path, OpenMode::CreateIfMissing, Arc::new(SystemClock)).unwrap()
}

fn credits(text: &str) -> Credits {
    text.parse().unwrap()
}

#[test]
fn connections_run_with_the_pragmas_the_books_need() {
    let (_dir, path) = fresh();
    let conn = db::open(&path, OpenMode::CreateIfMissing).unwrap();
    let pragma = |name: &str| -> String {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| format!("{v:?}"))
        .unwrap()
    };
    assert_eq!(pragma("journal_mode"), "Text(\"wal\")");
    assert_eq!(
        pragma("synchronous"),
        "Integer(2)",
        "synchronous must be FULL"
    );
    assert_eq!(pragma("foreign_keys"), "Integer(1)");
    assert_eq!(
        pragma("busy_timeout"),
        format!("Integer({})", db::BUSY_TIMEOUT.as_millis())
    );
}

#[test]
fn migrating_twice_is_a_no_op() {
    let (_dir, path) = fresh();
    let first = db::open(&path, OpenMode::CreateIfMissing).unwrap();
    let schema = |c: &Connection| -> Vec<String> {
        let mut stmt = c
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let before = schema(&first);
    let incarnation: String = first
        .query_row("SELECT incarnation FROM agent_identity", [], |r| r.get(0))
        .unwrap();
    drop(first);
    let second = db::open(&path, OpenMode::CreateIfMissing).unwrap();
    assert_eq!(schema(&second), before);
    assert_eq!(
        db::schema_version(&second).unwrap(),
        Some(i64::from(LATEST_VERSION))
    );
    let count: i64 = second
        .query_row("SELECT COUNT(*) FROM credit_packages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 4, "seeds ran twice");
    let again: String = second
        .query_row("SELECT incarnation FROM agent_identity", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        again, incarnation,
        "reopening must keep the sync incarnation"
    );
}

#[test]
fn processes_opening_a_fresh_file_at_once_all_succeed() {
    for _ in 0..10 {
        let (_dir, path) = fresh();
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    db::open(&path, OpenMode::CreateIfMissing).map(|_| ())
                })
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().unwrap();
        }
    }
}

#[test]
fn processes_opening_a_file_not_yet_in_wal_mode_all_succeed() {
    // As a restored `VACUUM INTO` copy would be: current schema, rollback journal. Each round
    // puts the file back in that mode and starts several real processes on it at once; the first
    // to open switches it to WAL, which without the setup lock fails the others at random.
    let agent = tollgate_e2e::Agent::init("local");
    let database = agent.data_dir().join("tollgate.db");
    for round in 0..40 {
        db::open(&database, OpenMode::MustExist)
            .unwrap()
            .query_row("PRAGMA journal_mode = DELETE", [], |r| {
                r.get::<_, String>(0)
            })
            .unwrap();
        let readers: Vec<_> = (0..6)
            .map(|_| {
                agent
                    .command(&["users", "list"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for reader in readers {
            let out = reader.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn a_database_whose_migration_differs_from_this_build_is_refused() {
    let (_dir, path) = fresh();
    let conn = db::open(&path, OpenMode::CreateIfMissing).unwrap();
    conn.execute("UPDATE refinery_schema_history SET checksum = '1'", [])
        .unwrap();
    drop(conn);
    let err = Ledger::open(&path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap_err();
    assert!(
        err.to_string()
            .contains("schema version 1 is not the one this tollgate was built with"),
        "{err}"
    );
}

#[test]
fn a_database_from_a_newer_tollgate_is_refused_untouched() {
    let (_dir, path) = fresh();
    let conn = db::open(&path, OpenMode::CreateIfMissing).unwrap();
    let future = LATEST_VERSION + 1;
    conn.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (?1, 'future', '2030-01-01', '0')",
        [future],
    )
    .unwrap();
    drop(conn);
    let err = Ledger::open(&path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::SchemaTooNew {
                found,
                supported
            } if supported == i64::from(LATEST_VERSION) && found == i64::from(future)
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "this database has schema version {future}, newer than this tollgate supports ({LATEST_VERSION}); upgrade tollgate"
        )
    );
}

#[test]
fn seed_packages_and_power_levels_are_exactly_the_spec() {
    let (_dir, path) = fresh();
    let conn = db::open(&path, OpenMode::CreateIfMissing).unwrap();
    let packages: Vec<PackageRow> = catalog::packages(&conn)
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.sort_order,
                p.name,
                p.credits.to_string(),
                p.price_usd_cents,
                p.discount_percent,
                p.badge_text,
                p.is_featured,
                p.description.unwrap(),
            )
        })
        .collect();
    let s = |t: &str| t.to_owned();
    assert_eq!(
        packages,
        vec![
            (
                1,
                s("Starter Pack"),
                s("100"),
                1000,
                0,
                None,
                false,
                s("Perfect for trying out the platform")
            ),
            (
                2,
                s("Value Pack"),
                s("500"),
                4500,
                10,
                Some(s("MOST POPULAR")),
                true,
                s("Best value for regular users")
            ),
            (
                3,
                s("Pro Pack"),
                s("1000"),
                8000,
                20,
                Some(s("BEST VALUE")),
                true,
                s("For power users and developers")
            ),
            (
                4,
                s("Enterprise Pack"),
                s("5000"),
                35000,
                30,
                None,
                false,
                s("Maximum credits for teams")
            ),
        ]
    );
    let levels: Vec<LevelRow> = catalog::power_levels(&conn)
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.power_level,
                l.name,
                l.description.unwrap(),
                l.preferred_providers,
                l.fallback_strategy,
                l.cost_multiplier.to_string(),
                l.max_latency_ms,
                l.min_quality_score,
            )
        })
        .collect();
    let v = |xs: &[&str]| xs.iter().map(|x| s(x)).collect::<Vec<_>>();
    assert_eq!(
        levels,
        vec![
            (
                s("eco"),
                s("Eco Mode"),
                s("Cost-optimized routing using cheapest providers"),
                v(&["openrouter", "together", "deepinfra"]),
                s("next_available"),
                s("0.7"),
                5000,
                70
            ),
            (
                s("balanced"),
                s("Balanced Mode"),
                s("Balanced cost and performance"),
                v(&["openai", "anthropic", "openrouter"]),
                s("next_available"),
                s("1"),
                3000,
                85
            ),
            (
                s("precision"),
                s("Precision Mode"),
                s("Maximum quality, premium providers"),
                v(&["anthropic", "openai"]),
                s("next_available"),
                s("1.5"),
                2000,
                95
            ),
        ]
    );
}

#[test]
fn the_journal_and_lot_movements_are_append_only() {
    let (_dir, path) = fresh();
    let mut l = ledger(&path);
    l.create_user(&NewUser::new("alice")).unwrap();
    l.add_credits(AddCredits::new("alice", credits("5"), CreditKind::Bonus))
        .unwrap();
    let conn = db::open(&path, OpenMode::MustExist).unwrap();
    for sql in [
        "UPDATE credit_transactions SET amount = 999",
        "DELETE FROM credit_transactions",
        "UPDATE lot_movements SET amount = 999",
        "DELETE FROM lot_movements",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
}

#[test]
fn updated_at_is_maintained_by_triggers() {
    let (_dir, path) = fresh();
    let conn = db::open(&path, OpenMode::CreateIfMissing).unwrap();
    conn.execute(
        "UPDATE credit_packages SET updated_at = '2000-01-01T00:00:00.000Z' WHERE id = 1",
        [],
    )
    .unwrap();
    conn.execute(
        "UPDATE credit_packages SET is_featured = 1 WHERE id = 1",
        [],
    )
    .unwrap();
    let updated: String = conn
        .query_row(
            "SELECT updated_at FROM credit_packages WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        updated.as_str() > "2020",
        "the trigger did not refresh updated_at: {updated}"
    );
}

#[test]
fn constraints_refuse_a_negative_balance_and_holds_beyond_it() {
    let (_dir, path) = fresh();
    let mut l = ledger(&path);
    l.create_user(&NewUser::new("alice")).unwrap();
    let conn = db::open(&path, OpenMode::MustExist).unwrap();
    assert!(
        conn.execute("UPDATE user_credits SET balance = -1", [])
            .is_err()
    );
    assert!(
        conn.execute("UPDATE user_credits SET held = 1", [])
            .is_err(),
        "held may not exceed balance"
    );
}

#[test]
fn verify_names_each_kind_of_tampering() {
    let (_dir, path) = fresh();
    let mut l = ledger(&path);
    l.create_user(&NewUser::new("alice")).unwrap();
    l.create_user(&NewUser::new("bob")).unwrap();
    l.add_credits(AddCredits::new("alice", credits("10"), CreditKind::Bonus))
        .unwrap();
    l.add_credits(AddCredits::new("bob", credits("10"), CreditKind::Bonus))
        .unwrap();
    assert!(l.verify().unwrap().is_clean());

    let conn = db::open(&path, OpenMode::MustExist).unwrap();
    // A cached balance edited by hand (lots edited alike, so only the journal disagrees).
    conn.execute_batch(
        "UPDATE user_credits SET balance = balance + 1000000000 WHERE user_id = 'alice';
         UPDATE credit_lots SET amount = amount + 1000000000, remaining = remaining + 1000000000 WHERE user_id = 'alice';",
    )
    .unwrap();
    // A journal row rewritten behind the triggers' back.
    conn.execute_batch(
        "DROP TRIGGER credit_transactions_no_update;
         UPDATE credit_transactions SET notes = 'edited' WHERE user_id = 'bob';",
    )
    .unwrap();
    let report = l.verify().unwrap();
    let names: Vec<&str> = report.violations.iter().map(|v| v.invariant).collect();
    assert!(names.contains(&"balance_matches_journal"), "{report:#?}");
    assert!(names.contains(&"lot_matches_movements"), "{report:#?}");
    assert!(names.contains(&"entry_hash"), "{report:#?}");
    assert!(
        !names.contains(&"hash_chain"),
        "only the edited entry's own hash is off: {report:#?}"
    );
}
