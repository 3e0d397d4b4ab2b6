//! The ledger's side of sync against real SQLite files: exported entries are exactly what was
//! hashed and chain; the acknowledged head only moves forward and never past the local head;
//! inbox events apply once, in order, with their cursor in the same transaction; refusals are
//! recorded and never stick the inbox; snapshots; and the CLI's view of it (`sync status`, the
//! credential file's mode, `verify` after applying events).

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use serde_json::json;
use time::macros::datetime;
use tollgate::gateway::config::Secret;
use tollgate::ledger::db::{self, OpenMode};
use tollgate::ledger::{
    AddCredits, CreditKind, Debit, HoldRequest, InboxOutcome, Ledger, LedgerError, ManualClock,
    NewUser, PowerLevel, Release, Settle, SyncResult, SystemClock, Tier, UsageErrorType,
    UsageRecord,
};
use tollgate::sync::SyncConfig;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    ApiKeySpec, CreditEvent, CreditEventKind, EventBody, GENESIS_HASH, InboxEvent,
    PUSH_ENTRIES_MAX, PackageSpec, PowerLevelSpec, Snapshot, UserSettings, encode_hash,
};

use tollgate_e2e::Agent;

fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

fn open(path: &Path) -> Ledger {
    Ledger::open(path, OpenMode::CreateIfMissing, Arc::new(SystemClock)).unwrap()
}

/// A ledger in a temp dir, enrolled as agent `agent-a`.
fn enrolled() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir.path().join("tollgate.db"));
    assert!(ledger.set_agent_id("agent-a").unwrap());
    (dir, ledger)
}

fn event(seq: i64, body: EventBody) -> InboxEvent {
    InboxEvent {
        seq,
        event_id: format!("0193a3c4-0000-7000-8000-{seq:012}"),
        created_at: "2026-11-24T10:00:00Z".to_owned(),
        body,
    }
}

fn credit(user: &str, kind: CreditEventKind, amount: &str, key: &str) -> EventBody {
    EventBody::Credit(CreditEvent {
        user_id: user.to_owned(),
        kind,
        amount: c(amount),
        idempotency_key: key.to_owned(),
        package: None,
        note: Some("central".to_owned()),
        admin_user_id: Some("admin@example.com".to_owned()),
    })
}

fn settings(
    user: &str,
    tier: &str,
    level: &str,
    allowance: &str,
    cap: Option<&str>,
) -> UserSettings {
    UserSettings {
        user_id: user.to_owned(),
        tier: tier.to_owned(),
        power_level: level.to_owned(),
        monthly_allowance: c(allowance),
        monthly_spend_cap: cap.map(c),
        fleet: false,
    }
}

fn package(name: &str, credits: &str, cents: i64) -> PackageSpec {
    PackageSpec {
        name: name.to_owned(),
        credits: c(credits),
        price_usd_cents: cents,
        discount_percent: 5,
        min_tier: Some("starter".to_owned()),
        is_active: true,
        is_featured: false,
        sort_order: 9,
        description: Some("from the server".to_owned()),
        badge_text: None,
    }
}

fn level(power_level: &str, multiplier: &str) -> PowerLevelSpec {
    PowerLevelSpec {
        power_level: power_level.to_owned(),
        name: "Eco Mode".to_owned(),
        description: Some("cheap".to_owned()),
        preferred_providers: vec!["together".to_owned()],
        fallback_strategy: "cheapest".to_owned(),
        cost_multiplier: multiplier.to_owned(),
        max_latency_ms: 4_000,
        min_quality_score: 60,
        is_active: true,
    }
}

/// (seq, outcome, detail, entry_id) of every applied or refused event.
type InboxRow = (i64, String, Option<String>, Option<String>);

fn inbox_rows(path: &Path) -> Vec<InboxRow> {
    let conn = db::open(path, OpenMode::MustExist).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, outcome, detail, entry_id FROM inbox_events ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn head(ledger: &Ledger) -> i64 {
    ledger.sync_identity().unwrap().head_seq
}

fn cursor(ledger: &Ledger) -> i64 {
    ledger.sync_identity().unwrap().inbox_cursor
}

#[test]
fn exported_entries_pass_check_and_chain_for_a_mixed_journal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-11-01 09:00 UTC));
    let mut ledger = Ledger::open(
        &dir.path().join("t.db"),
        OpenMode::CreateIfMissing,
        Arc::new(clock.clone()),
    )
    .unwrap();
    // An allowance (granted at creation), purchases with and without a package, a bonus that
    // expires, admin adjustments both ways, a keyed debit and its refund, a plain refund.
    ledger
        .create_user(&NewUser {
            monthly_allowance: c("5"),
            tier: Tier::Starter,
            ..NewUser::new("alice")
        })
        .unwrap();
    ledger.create_user(&NewUser::new("bob")).unwrap();
    ledger
        .add_credits(AddCredits {
            package: Some("Starter Pack".to_owned()),
            idempotency_key: Some("stripe:cs_1".to_owned()),
            ..AddCredits::new("alice", c("100"), CreditKind::Purchase)
        })
        .unwrap();
    ledger
        .add_credits(AddCredits {
            expires_at: Some("2026-11-10T00:00:00Z".to_owned()),
            note: Some("welcome, \"friend\" ✓".to_owned()),
            ..AddCredits::new("bob", c("3.25"), CreditKind::Bonus)
        })
        .unwrap();
    ledger
        .add_credits(AddCredits {
            admin_user_id: Some("root".to_owned()),
            ..AddCredits::new("bob", c("10"), CreditKind::AdminAdjustment)
        })
        .unwrap();
    ledger
        .add_credits(AddCredits::new(
            "bob",
            c("-1.5"),
            CreditKind::AdminAdjustment,
        ))
        .unwrap();
    let debit = ledger
        .debit(Debit {
            user_id: "alice".to_owned(),
            amount: c("7.123456789"),
            idempotency_key: Some("job-1".to_owned()),
            note: None,
        })
        .unwrap();
    ledger
        .add_credits(AddCredits {
            refund_of: Some(debit.entry_id.clone()),
            ..AddCredits::new("alice", c("2"), CreditKind::Refund)
        })
        .unwrap();
    ledger
        .add_credits(AddCredits::new("bob", c("0.5"), CreditKind::Refund))
        .unwrap();
    // A metered request: hold, then settle with usage metadata; another released with a usage
    // row (no entry).
    for (request, user) in [("req-1", "alice"), ("req-2", "bob")] {
        ledger
            .hold(HoldRequest {
                user_id: user.to_owned(),
                request_id: request.to_owned(),
                amount: c("2"),
                min_amount: None,
                ttl: time::Duration::hours(1),
            })
            .unwrap();
    }
    ledger
        .settle(Settle {
            user_id: "alice".to_owned(),
            request_id: "req-1".to_owned(),
            cost: c("0.000123"),
            usage: UsageRecord {
                endpoint: "/v1/chat/completions".to_owned(),
                model: "gpt-4o-mini".to_owned(),
                provider: Some("openai".to_owned()),
                power_level: Some(PowerLevel::Eco),
                prompt_tokens: 12,
                completion_tokens: 34,
                cost_per_token: Some("0.0000025".to_owned()),
                metadata: Some(json!({"price_table": "builtin", "nested": {"a": [1, 2]}})),
                ..UsageRecord::default()
            },
        })
        .unwrap();
    ledger
        .release(Release {
            user_id: "bob".to_owned(),
            request_id: "req-2".to_owned(),
            usage: Some(UsageRecord {
                endpoint: "/v1/embeddings".to_owned(),
                model: "m".to_owned(),
                error_type: Some(UsageErrorType::UpstreamError),
                ..UsageRecord::default()
            }),
        })
        .unwrap();
    // Past the bonus's expiry and the allowance's cycle: expiry and renewal entries.
    clock.advance(time::Duration::days(31));
    ledger.account("alice").unwrap();
    ledger.account("bob").unwrap();

    let head_seq = head(&ledger);
    assert!(head_seq >= 11, "a mixed journal: {head_seq}");
    let entries = ledger.unacked_entries(PUSH_ENTRIES_MAX).unwrap();
    assert_eq!(entries.len() as i64, head_seq);
    let kinds: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|e| e.transaction_type.as_str())
        .collect();
    for kind in [
        "allowance",
        "purchase",
        "bonus",
        "admin_adjustment",
        "usage",
        "refund",
        "expiry",
    ] {
        assert!(kinds.contains(kind), "no {kind} entry in {kinds:?}");
    }
    // Entries with every kind of optional column: metadata (expiry), usage detail (settle).
    assert!(
        entries
            .iter()
            .any(|e| e.metadata.as_deref().is_some_and(|m| m.contains("lot_id")))
    );
    let settled = entries
        .iter()
        .find(|e| e.request_id.as_deref() == Some("req-1"))
        .unwrap();
    assert_eq!(settled.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(settled.power_level.as_deref(), Some("eco"));
    assert_eq!(
        (
            settled.prompt_tokens,
            settled.completion_tokens,
            settled.total_tokens
        ),
        (Some(12), Some(34), Some(46))
    );
    let mut prev = encode_hash(&GENESIS_HASH);
    for (i, entry) in entries.iter().enumerate() {
        entry
            .check()
            .unwrap_or_else(|e| panic!("seq {}: {e}", entry.seq));
        assert_eq!(entry.seq, i as i64 + 1);
        assert_eq!(entry.prev_hash, prev, "seq {} chains", entry.seq);
        prev = entry.hash.clone();
    }
    // The wire form is the stored form: a round trip through JSON changes nothing.
    let json = serde_json::to_string(&entries).unwrap();
    let back: Vec<tollgate_schema::wire::WireEntry> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, entries);
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn unacked_entries_start_after_the_acked_head_which_never_moves_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir.path().join("t.db"));
    ledger.create_user(&NewUser::new("alice")).unwrap();
    for _ in 0..6 {
        ledger
            .add_credits(AddCredits::new("alice", c("1"), CreditKind::Bonus))
            .unwrap();
    }
    let seqs = |entries: Vec<tollgate_schema::wire::WireEntry>| -> Vec<i64> {
        entries.iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs(ledger.unacked_entries(2).unwrap()), [1, 2]);
    assert_eq!(ledger.mark_acked(3).unwrap(), 3);
    assert_eq!(seqs(ledger.unacked_entries(100).unwrap()), [4, 5, 6]);
    // Never back.
    assert_eq!(ledger.mark_acked(1).unwrap(), 3);
    assert_eq!(ledger.sync_identity().unwrap().acked_seq, 3);
    // Never past the local head: refused, nothing changed.
    let err = ledger.mark_acked(7).unwrap_err();
    assert!(
        matches!(err, LedgerError::AckBeyondHead { acked: 7, head: 6 }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("beyond this agent's newest entry"),
        "{err}"
    );
    assert_eq!(ledger.sync_identity().unwrap().acked_seq, 3);
    assert!(ledger.mark_acked(-1).is_err());
    // Resending what a server says it lacks reads past an acknowledged seq.
    assert_eq!(seqs(ledger.entries_after(1, 2).unwrap()), [2, 3]);
    assert_eq!(ledger.mark_acked(6).unwrap(), 6);
    assert!(ledger.unacked_entries(100).unwrap().is_empty());
    let status = ledger.sync_status().unwrap();
    assert_eq!(
        (status.head_seq, status.acked_seq, status.unacked_entries),
        (6, 6, 0)
    );
    assert!(status.server_acked_at.is_some());
    assert_eq!(status.oldest_unacked_at, None);
}

#[test]
fn the_same_inbox_event_twice_changes_nothing() {
    let (dir, mut ledger) = enrolled();
    let first = event(
        1,
        credit("alice", CreditEventKind::Purchase, "25", "stripe:cs_9"),
    );
    let applied = ledger.apply_inbox_event(&first).unwrap();
    let InboxOutcome::Applied {
        entry_id: Some(entry_id),
    } = applied
    else {
        panic!("{applied:?}");
    };
    // The unknown user was created with defaults, then credited.
    let account = ledger.account("alice").unwrap();
    assert_eq!(account.balance, c("25"));
    assert_eq!(account.tier, Tier::Trial);
    let journal = head(&ledger);
    assert_eq!(cursor(&ledger), 1);

    assert_eq!(
        ledger.apply_inbox_event(&first).unwrap(),
        InboxOutcome::AlreadyApplied
    );
    assert_eq!(ledger.account("alice").unwrap().balance, c("25"));
    assert_eq!(head(&ledger), journal);
    assert_eq!(cursor(&ledger), 1);
    let history = ledger.history("alice", 10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].entry_id, entry_id);
    assert_eq!(history[0].idempotency_key.as_deref(), Some("stripe:cs_9"));
    assert_eq!(
        inbox_rows(&dir.path().join("tollgate.db")),
        [(1, "applied".to_owned(), None, Some(entry_id.clone()))]
    );

    // The same credit again under a new event (a server retry): the key's first entry, no other.
    let again = event(
        2,
        credit("alice", CreditEventKind::Purchase, "25", "stripe:cs_9"),
    );
    assert_eq!(
        ledger.apply_inbox_event(&again).unwrap(),
        InboxOutcome::Applied {
            entry_id: Some(entry_id)
        }
    );
    assert_eq!(ledger.account("alice").unwrap().balance, c("25"));
    assert_eq!(head(&ledger), journal);
    // The key with other content is refused and recorded; the inbox moves on.
    let conflict = event(
        3,
        credit("alice", CreditEventKind::Purchase, "26", "stripe:cs_9"),
    );
    let InboxOutcome::Refused { detail } = ledger.apply_inbox_event(&conflict).unwrap() else {
        panic!("refused");
    };
    assert!(
        detail.contains("already used for a different operation"),
        "{detail}"
    );
    assert_eq!(cursor(&ledger), 3);
    assert_eq!(head(&ledger), journal);
    // An event id already applied, at a later seq, has no effect again.
    let mut replayed = event(4, credit("alice", CreditEventKind::Bonus, "1", "admin:b1"));
    replayed.event_id = first.event_id.clone();
    assert_eq!(
        ledger.apply_inbox_event(&replayed).unwrap(),
        InboxOutcome::AlreadyApplied
    );
    assert_eq!((cursor(&ledger), head(&ledger)), (4, journal));
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_gap_in_the_inbox_is_refused_with_nothing_written() {
    let (dir, mut ledger) = enrolled();
    let err = ledger
        .apply_inbox_event(&event(
            2,
            credit("alice", CreditEventKind::Bonus, "5", "k2"),
        ))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::InboxGap { cursor: 0, seq: 2 }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("does not follow the inbox cursor 0"),
        "{err}"
    );
    assert_eq!((cursor(&ledger), head(&ledger)), (0, 0));
    assert!(inbox_rows(&dir.path().join("tollgate.db")).is_empty());
    assert!(matches!(
        ledger.account("alice"),
        Err(LedgerError::UnknownUser(_))
    ));
}

#[test]
fn an_agent_that_is_not_enrolled_has_no_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir.path().join("t.db"));
    let err = ledger
        .apply_inbox_event(&event(1, credit("alice", CreditEventKind::Bonus, "5", "k")))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotEnrolled), "{err:?}");
    assert_eq!(head(&ledger), 0);
}

#[test]
fn a_negative_adjustment_beyond_the_balance_is_refused_and_the_cursor_moves_on() {
    let (dir, mut ledger) = enrolled();
    ledger
        .apply_inbox_event(&event(
            1,
            credit("alice", CreditEventKind::Bonus, "10", "b1"),
        ))
        .unwrap();
    let journal = head(&ledger);
    let outcome = ledger
        .apply_inbox_event(&event(
            2,
            credit(
                "alice",
                CreditEventKind::AdminAdjustment,
                "-50",
                "admin:op-7",
            ),
        ))
        .unwrap();
    let InboxOutcome::Refused { detail } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        detail,
        "insufficient credit for alice: available 10, needed 50"
    );
    assert_eq!(cursor(&ledger), 2);
    assert_eq!(head(&ledger), journal);
    assert_eq!(ledger.account("alice").unwrap().balance, c("10"));
    let rows = inbox_rows(&dir.path().join("tollgate.db"));
    assert_eq!(rows[1], (2, "refused".to_owned(), Some(detail), None));
    // A negative adjustment that fits applies; the inbox was never stuck.
    ledger
        .apply_inbox_event(&event(
            3,
            credit(
                "alice",
                CreditEventKind::AdminAdjustment,
                "-4",
                "admin:op-8",
            ),
        ))
        .unwrap();
    assert_eq!(ledger.account("alice").unwrap().balance, c("6"));
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn an_event_commits_with_its_cursor_or_not_at_all() {
    let (dir, mut ledger) = enrolled();
    let path = dir.path().join("tollgate.db");
    let conn = db::open(&path, OpenMode::MustExist).unwrap();
    // A failure after the effect (recording the event) rolls the effect back with it.
    conn.execute_batch(
        "CREATE TRIGGER fail_inbox BEFORE INSERT ON inbox_events \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    let purchase = event(
        1,
        credit("alice", CreditEventKind::Purchase, "8", "stripe:x"),
    );
    let err = ledger.apply_inbox_event(&purchase).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!((cursor(&ledger), head(&ledger)), (0, 0));
    assert!(matches!(
        ledger.account("alice"),
        Err(LedgerError::UnknownUser(_))
    ));
    conn.execute_batch("DROP TRIGGER fail_inbox").unwrap();
    assert!(matches!(
        ledger.apply_inbox_event(&purchase).unwrap(),
        InboxOutcome::Applied { .. }
    ));
    assert_eq!((cursor(&ledger), head(&ledger)), (1, 1));

    // A constraint the event's effect breaks is a refusal: recorded, no entry, cursor moves.
    conn.execute_batch(
        "CREATE TRIGGER no_bonus BEFORE INSERT ON credit_transactions \
         WHEN NEW.transaction_type = 'bonus' BEGIN SELECT RAISE(ABORT, 'no bonus today'); END;",
    )
    .unwrap();
    let bonus = event(2, credit("alice", CreditEventKind::Bonus, "1", "b:1"));
    let InboxOutcome::Refused { detail } = ledger.apply_inbox_event(&bonus).unwrap() else {
        panic!("refused");
    };
    assert!(detail.contains("no bonus today"), "{detail}");
    assert_eq!((cursor(&ledger), head(&ledger)), (2, 1));
    assert_eq!(ledger.account("alice").unwrap().balance, c("8"));
    conn.execute_batch("DROP TRIGGER no_bonus").unwrap();
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_user_upsert_creates_then_changes_a_user() {
    let (dir, mut ledger) = enrolled();
    ledger
        .apply_inbox_event(&event(
            1,
            EventBody::UserUpsert(settings("carol", "starter", "eco", "50", None)),
        ))
        .unwrap();
    let account = ledger.account("carol").unwrap();
    assert_eq!(
        (account.tier, account.power_level, account.monthly_allowance),
        (Tier::Starter, PowerLevel::Eco, c("50"))
    );
    assert_eq!(account.monthly_spend_cap, None);
    assert_eq!(account.balance, c("50"), "the first cycle's allowance");
    ledger
        .apply_inbox_event(&event(
            2,
            EventBody::UserUpsert(settings(
                "carol",
                "enterprise",
                "precision",
                "20",
                Some("100"),
            )),
        ))
        .unwrap();
    let account = ledger.account("carol").unwrap();
    assert_eq!(
        (account.tier, account.power_level, account.monthly_allowance),
        (Tier::Enterprise, PowerLevel::Precision, c("20"))
    );
    assert_eq!(account.monthly_spend_cap, Some(c("100")));
    // A value this agent does not accept is a recorded refusal, not a stuck inbox.
    for (seq, bad, why) in [
        (
            3,
            settings("carol", "gold", "eco", "0", None),
            "unknown tier \"gold\"",
        ),
        (
            4,
            settings("carol", "free", "turbo", "0", None),
            "unknown power level \"turbo\"",
        ),
        (
            5,
            settings("bad user!", "free", "eco", "0", None),
            "invalid user id",
        ),
        (
            6,
            settings("carol", "free", "eco", "-1", None),
            "cannot be negative",
        ),
    ] {
        let outcome = ledger
            .apply_inbox_event(&event(seq, EventBody::UserUpsert(bad)))
            .unwrap();
        let InboxOutcome::Refused { detail } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(detail.contains(why), "{detail}");
        assert_eq!(cursor(&ledger), seq);
    }
    assert_eq!(ledger.account("carol").unwrap().tier, Tier::Enterprise);
    let outcomes: Vec<String> = inbox_rows(&dir.path().join("tollgate.db"))
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(
        outcomes,
        [
            "applied", "applied", "refused", "refused", "refused", "refused"
        ]
    );
}

#[test]
fn package_and_power_level_upserts_show_in_the_catalog() {
    let agent = Agent::init("local");
    let mut ledger = Ledger::open(
        &agent.data_dir().join("tollgate.db"),
        OpenMode::MustExist,
        Arc::new(SystemClock),
    )
    .unwrap();
    ledger.set_agent_id("agent-a").unwrap();
    let mut starter = package("Starter Pack", "100", 900);
    starter.badge_text = Some("SALE".to_owned());
    let events = [
        EventBody::PackageUpsert(package("Mega Pack", "2500", 20_000)),
        EventBody::PackageUpsert(starter),
        EventBody::PowerLevelUpsert(level("eco", "0.65")),
    ];
    for (i, body) in events.into_iter().enumerate() {
        let outcome = ledger
            .apply_inbox_event(&event(i as i64 + 1, body))
            .unwrap();
        assert!(
            matches!(outcome, InboxOutcome::Applied { entry_id: None }),
            "{outcome:?}"
        );
    }
    let packages = agent.json(&["packages", "list"]);
    let by_name = |name: &str| {
        packages
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    let mega = by_name("Mega Pack");
    assert_eq!(mega["credits"], "2500");
    assert_eq!(mega["price_usd_cents"], 20_000);
    assert_eq!(mega["min_tier"], "starter");
    let starter = by_name("Starter Pack");
    assert_eq!(starter["price_usd_cents"], 900);
    assert_eq!(starter["badge_text"], "SALE");
    assert_eq!(
        packages.as_array().unwrap().len(),
        5,
        "one added, one replaced"
    );
    let levels = agent.json(&["power-levels", "list"]);
    let eco = levels
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["power_level"] == "eco")
        .unwrap();
    assert_eq!(eco["cost_multiplier"], "0.65");
    assert_eq!(eco["preferred_providers"], json!(["together"]));
    assert_eq!(eco["fallback_strategy"], "cheapest");

    // Refused: a multiplier not a whole number of thousandths, an unknown level, a bad package.
    let mut bad_package = package("Broken", "10", 0);
    bad_package.discount_percent = 101;
    let refusals = [
        (
            EventBody::PowerLevelUpsert(level("eco", "0.6505")),
            "whole number of thousandths",
        ),
        (
            EventBody::PowerLevelUpsert(level("turbo", "1")),
            "unknown power level",
        ),
        (
            EventBody::PackageUpsert(bad_package),
            "cents is not positive",
        ),
        (
            EventBody::PackageUpsert(package("Tiny", "0", 100)),
            "a package's credits must be positive",
        ),
    ];
    for (i, (body, why)) in refusals.into_iter().enumerate() {
        let outcome = ledger
            .apply_inbox_event(&event(i as i64 + 4, body))
            .unwrap();
        let InboxOutcome::Refused { detail } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(detail.contains(why), "{detail}");
    }
    assert_eq!(agent.json(&["power-levels", "list"]), levels);
    assert_eq!(agent.json(&["packages", "list"]), packages);
    // A purchase of the server's new package, through the inbox, names it.
    ledger
        .apply_inbox_event(&event(
            8,
            EventBody::UserUpsert(settings("dave", "starter", "balanced", "0", None)),
        ))
        .unwrap();
    let mut buy = CreditEvent {
        user_id: "dave".to_owned(),
        kind: CreditEventKind::Purchase,
        amount: c("2500"),
        idempotency_key: "stripe:cs_mega".to_owned(),
        package: Some("Mega Pack".to_owned()),
        note: None,
        admin_user_id: None,
    };
    assert!(matches!(
        ledger
            .apply_inbox_event(&event(9, EventBody::Credit(buy.clone())))
            .unwrap(),
        InboxOutcome::Applied { .. }
    ));
    let entry = &ledger.history("dave", 1).unwrap()[0];
    assert_eq!(entry.package_id, mega["id"].as_i64());
    buy.idempotency_key = "stripe:cs_mega2".to_owned();
    buy.amount = c("2499");
    let InboxOutcome::Refused { detail } = ledger
        .apply_inbox_event(&event(10, EventBody::Credit(buy)))
        .unwrap()
    else {
        panic!("refused");
    };
    assert!(detail.contains("is 2500 credits, not 2499"), "{detail}");
    agent.assert_verified();
}

#[test]
fn a_snapshot_upserts_everything_and_sets_the_cursor() {
    let (_dir, mut ledger) = enrolled();
    ledger
        .apply_inbox_event(&event(
            1,
            EventBody::UserUpsert(settings("alice", "trial", "balanced", "0", None)),
        ))
        .unwrap();
    let snapshot = Snapshot {
        protocol_version: tollgate_schema::wire::PROTOCOL_VERSION,
        cursor: 40,
        users: vec![
            settings("alice", "professional", "precision", "0", Some("30")),
            settings("erin", "starter", "eco", "0", None),
            settings("frank", "gold", "eco", "0", None),
        ],
        packages: vec![package("Mega Pack", "2500", 20_000)],
        power_levels: vec![level("eco", "0.5")],
        api_keys: Vec::new(),
    };
    let applied = ledger.apply_snapshot(&snapshot).unwrap();
    assert_eq!((applied.previous_cursor, applied.cursor), (1, 40));
    assert_eq!(
        (applied.users, applied.packages, applied.power_levels),
        (3, 1, 1)
    );
    assert_eq!(applied.refused.len(), 1, "{:?}", applied.refused);
    assert!(
        applied.refused[0].starts_with("user \"frank\": invalid tier"),
        "{:?}",
        applied.refused
    );
    assert_eq!(cursor(&ledger), 40);
    let alice = ledger.account("alice").unwrap();
    assert_eq!(
        (alice.tier, alice.monthly_spend_cap),
        (Tier::Professional, Some(c("30")))
    );
    assert_eq!(ledger.account("erin").unwrap().power_level, PowerLevel::Eco);
    assert!(matches!(
        ledger.account("frank"),
        Err(LedgerError::UnknownUser(_))
    ));
    // Events continue after the snapshot's cursor.
    assert!(matches!(
        ledger.apply_inbox_event(&event(41, credit("erin", CreditEventKind::Bonus, "2", "b"))),
        Ok(InboxOutcome::Applied { .. })
    ));
    assert_eq!(
        ledger
            .apply_inbox_event(&event(40, credit("erin", CreditEventKind::Bonus, "2", "c")))
            .unwrap(),
        InboxOutcome::AlreadyApplied
    );
    assert!(ledger.verify().unwrap().is_clean());
}

/// A server restored from a backup hands out seqs the agent already recorded, with new event ids:
/// after the snapshot that moves the cursor back, they are new events (a new epoch), not a
/// conflict that would stop the inbox; an event seen before (same id) is still not applied again.
#[test]
fn after_a_snapshot_moves_the_cursor_back_reused_seqs_are_new_events() {
    let (_dir, mut ledger) = enrolled();
    for (seq, key) in [(1, "k1"), (2, "k2"), (3, "k3")] {
        ledger
            .apply_inbox_event(&event(
                seq,
                credit("alice", CreditEventKind::Bonus, "1", key),
            ))
            .unwrap();
    }
    let old_two = event(2, credit("alice", CreditEventKind::Bonus, "1", "k2"));
    let applied = ledger
        .apply_snapshot(&Snapshot {
            protocol_version: tollgate_schema::wire::PROTOCOL_VERSION,
            cursor: 1,
            users: Vec::new(),
            packages: Vec::new(),
            power_levels: Vec::new(),
            api_keys: Vec::new(),
        })
        .unwrap();
    assert_eq!((applied.previous_cursor, applied.cursor), (3, 1));
    // The restored server's seq 2 is another event (its own id): applied, not a conflict.
    let mut new_two = event(2, credit("alice", CreditEventKind::Bonus, "4", "k4"));
    new_two.event_id = "0193a3c4-0000-7000-8000-0000000000f2".to_owned();
    assert!(matches!(
        ledger.apply_inbox_event(&new_two),
        Ok(InboxOutcome::Applied { .. })
    ));
    // The server re-sending the very event applied before (same id) changes nothing.
    let mut resent = old_two.clone();
    resent.seq = 3;
    assert_eq!(
        ledger.apply_inbox_event(&resent).unwrap(),
        InboxOutcome::AlreadyApplied
    );
    assert_eq!(ledger.account("alice").unwrap().balance, c("7"));
    assert_eq!(cursor(&ledger), 3);
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_new_enrolment_starts_a_new_stream_and_a_new_inbox() {
    let (dir, mut ledger) = enrolled();
    ledger
        .apply_inbox_event(&event(
            1,
            credit("alice", CreditEventKind::Bonus, "5", "k1"),
        ))
        .unwrap();
    ledger.mark_acked(1).unwrap();
    ledger
        .record_sync_result(SyncResult::Pulled {
            server_inbox_head: 1,
        })
        .unwrap();
    assert!(
        !ledger.set_agent_id("agent-a").unwrap(),
        "the same agent: nothing changes"
    );
    assert_eq!(ledger.sync_identity().unwrap().acked_seq, 1);
    assert!(ledger.set_agent_id("agent-b").unwrap());
    let status = ledger.sync_status().unwrap();
    assert_eq!(status.agent_id.as_deref(), Some("agent-b"));
    assert_eq!(
        (
            status.acked_seq,
            status.inbox_cursor,
            status.server_inbox_head
        ),
        (0, 0, 0)
    );
    assert_eq!(status.unacked_entries, 1);
    // The new inbox starts at seq 1 again, beside the old one's record.
    let mut first = event(1, credit("alice", CreditEventKind::Bonus, "5", "k-b1"));
    first.event_id = "0193a3c4-0000-7000-8000-0000000000b1".to_owned();
    ledger.apply_inbox_event(&first).unwrap();
    assert_eq!(inbox_rows(&dir.path().join("tollgate.db")).len(), 2);
    assert!(ledger.set_agent_id("has space").is_err());
}

#[test]
fn sync_results_are_recorded_for_status() {
    let (_dir, mut ledger) = enrolled();
    ledger.create_user(&NewUser::new("alice")).unwrap();
    ledger
        .add_credits(AddCredits::new("alice", c("1"), CreditKind::Bonus))
        .unwrap();
    ledger
        .record_sync_result(SyncResult::Failed {
            error: "push: cannot reach\nthe sync server",
        })
        .unwrap();
    ledger
        .record_sync_result(SyncResult::Pushed { acked_seq: 0 })
        .unwrap();
    ledger
        .record_sync_result(SyncResult::Pulled {
            server_inbox_head: 3,
        })
        .unwrap();
    let status = ledger.sync_status().unwrap();
    assert_eq!(
        status.last_error.as_deref(),
        Some("push: cannot reach the sync server")
    );
    assert!(status.last_error_at.is_some() && status.last_push_at.is_some());
    assert!(status.last_pull_at.is_some());
    assert_eq!((status.server_inbox_head, status.unacked_entries), (3, 1));
    assert!(status.oldest_unacked_at.is_some());
    assert!(
        ledger
            .record_sync_result(SyncResult::Pushed { acked_seq: 2 })
            .is_err()
    );
}

#[test]
fn a_version_2_database_upgrades_with_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let incarnation = {
        let mut ledger = open(&path);
        ledger.create_user(&NewUser::new("alice")).unwrap();
        ledger
            .add_credits(AddCredits::new("alice", c("2"), CreditKind::Bonus))
            .unwrap();
        ledger.sync_identity().unwrap().incarnation
    };
    let conn: Connection = db::open(&path, OpenMode::MustExist).unwrap();
    // Back to version 2: V3's tables gone, and V4's price tables as V2 made them.
    conn.execute_batch(
        "ALTER TABLE user_credits DROP COLUMN overdraft_key;
         ALTER TABLE user_credits DROP COLUMN overdraft_line;
         ALTER TABLE user_credits DROP COLUMN escrow_valid_until;
         ALTER TABLE user_credits DROP COLUMN fleet;
         ALTER TABLE api_keys DROP COLUMN origin;
         DROP TABLE served_responses; DROP TABLE inbox_events; DROP TABLE sync_state;
         DROP TABLE price_aliases;
         DROP TABLE model_prices; DROP TABLE price_tables;
         DELETE FROM refinery_schema_history WHERE version >= 3;",
    )
    .unwrap();
    conn.execute_batch(include_str!(
        "../../../schema/migrations/sqlite/V2__prices.sql"
    ))
    .unwrap();
    assert_eq!(db::schema_version(&conn).unwrap(), Some(2));
    drop(conn);
    let ledger = Ledger::open(&path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap();
    let status = ledger.sync_status().unwrap();
    assert_eq!(status.incarnation, incarnation);
    assert_eq!(
        (status.head_seq, status.acked_seq, status.agent_id),
        (1, 0, None)
    );
}

#[test]
fn sync_status_says_when_the_agent_is_not_enrolled() {
    let agent = Agent::init("local");
    let out = agent.ok(&["sync", "status"]);
    assert!(out.contains("enrolled:"), "{out}");
    assert!(out.contains("no: this agent is not enrolled"), "{out}");
    assert!(
        out.contains("tollgate enroll --server URL --token TOKEN"),
        "{out}"
    );
    let json = agent.json(&["sync", "status"]);
    assert_eq!(json["enrolled"], false);
    assert_eq!(json["head_seq"], 0);
    // `sync now` without enrolment is an error naming the fix.
    let out = agent.run(&["sync", "now"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: this agent is not enrolled with a sync server"),
        "{stderr}"
    );
}

#[test]
fn the_credential_file_is_private_and_refused_when_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::init("local");
    let path = agent.data_dir().join("sync.toml");
    SyncConfig::new(
        "http://127.0.0.1:9",
        "agent-a",
        Secret::new("tgc_0123456789abcdef".to_owned()),
    )
    .unwrap()
    .save(&path)
    .unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let json = agent.json(&["sync", "status"]);
    assert_eq!(json["enrolled"], true);
    assert_eq!(json["server"], "http://127.0.0.1:9");
    assert_eq!(json["agent_id"], "agent-a");
    let text = agent.ok(&["sync", "status"]);
    assert!(!text.contains("tgc_0123456789abcdef"), "{text}");

    // Enrolled already: enrolling again needs --force (checked before any network call).
    let out = agent.run(&["enroll", "--server", "http://127.0.0.1:9", "--token", "t"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already enrolled as agent agent-a"),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [&["sync", "status"][..], &["sync", "now"]] {
        let out = agent.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("has mode 0644"), "{stderr}");
        assert!(stderr.contains("chmod 600"), "{stderr}");
        assert!(!stderr.contains("tgc_0123456789abcdef"), "{stderr}");
    }
}

#[test]
fn verify_stays_clean_after_inbox_applications() {
    let agent = Agent::init("local");
    let mut ledger = Ledger::open(
        &agent.data_dir().join("tollgate.db"),
        OpenMode::MustExist,
        Arc::new(SystemClock),
    )
    .unwrap();
    ledger.set_agent_id("agent-a").unwrap();
    let bodies = [
        EventBody::UserUpsert(settings("alice", "starter", "eco", "5", Some("40"))),
        credit("alice", CreditEventKind::Purchase, "100", "stripe:cs_1"),
        credit("alice", CreditEventKind::Bonus, "2.5", "admin:bonus-1"),
        credit("bob", CreditEventKind::AdminAdjustment, "7", "admin:adj-1"),
        credit(
            "bob",
            CreditEventKind::AdminAdjustment,
            "-99",
            "admin:adj-2",
        ),
        credit("bob", CreditEventKind::AdminAdjustment, "-3", "admin:adj-3"),
        credit("alice", CreditEventKind::Refund, "1.25", "admin:refund-1"),
        EventBody::UserUpsert(settings("bob", "professional", "precision", "0", None)),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        ledger
            .apply_inbox_event(&event(i as i64 + 1, body))
            .unwrap();
    }
    drop(ledger);
    let report = agent.assert_verified();
    assert_eq!(report["users"], 2);
    assert_eq!(agent.balance("alice"), "108.75");
    assert_eq!(agent.balance("bob"), "4");
    let status = agent.json(&["sync", "status"]);
    assert_eq!(status["inbox_cursor"], 8);
}

#[test]
fn enroll_refuses_bad_input_before_any_network_call() {
    let agent = Agent::init("local");
    // Port 9 (discard) is never a sync server: each case must fail before connecting.
    let cases: &[(&[&str], &str)] = &[
        (
            &["enroll", "--server", "ftp://example.com", "--token", "t"],
            "invalid server URL: \"ftp://example.com\": use http:// or https:// and a host",
        ),
        (
            &[
                "enroll",
                "--server",
                "https://u:p@example.com",
                "--token",
                "t",
            ],
            "carries a user name or password",
        ),
        (
            &[
                "enroll",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                "has space",
            ],
            "invalid enrolment token: it must be 1-256 printable ASCII characters",
        ),
        (
            &["enroll", "--server", "http://127.0.0.1:9", "--token", "  "],
            "no enrolment token given",
        ),
    ];
    for (args, expected) in cases {
        let out = agent.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}\n  gave: {stderr}  want: {expected}"
        );
        assert!(
            !stderr.contains("has space"),
            "the token is never echoed: {stderr}"
        );
    }
    assert!(!agent.data_dir().join("sync.toml").exists());
    assert_eq!(agent.json(&["sync", "status"])["enrolled"], false);
}

fn central_key(key_id: &str, user: &str, secret: &str, revoked: Option<&str>) -> EventBody {
    EventBody::ApiKeyUpsert(ApiKeySpec {
        key_id: key_id.to_owned(),
        user_id: user.to_owned(),
        key_hash: tollgate_schema::wire::encode_hash(&tollgate_schema::api_key::hash(secret)),
        prefix: secret.chars().take(11).collect(),
        name: Some("laptop".to_owned()),
        created_at: "2026-11-24T10:00:00Z".to_owned(),
        revoked_at: revoked.map(str::to_owned),
    })
}

#[test]
fn a_central_api_key_authenticates_until_its_revocation_arrives_and_stays_revoked() {
    let (_dir, mut ledger) = enrolled();
    ledger.create_user(&NewUser::new("alice")).unwrap();
    let secret = "tg_central_key_for_alice_0123456789abcdefghij";
    let made = event(
        1,
        central_key("key_00000000000000a1", "alice", secret, None),
    );
    assert!(matches!(
        ledger.apply_inbox_event(&made).unwrap(),
        InboxOutcome::Applied { entry_id: None }
    ));
    assert_eq!(
        ledger.authenticate(secret).unwrap().as_deref(),
        Some("alice")
    );
    let listed = ledger.api_keys("alice").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].origin.as_str(), listed[0].created_at.as_str()),
        ("central", "2026-11-24T10:00:00.000Z")
    );
    // The same state again (a snapshot after the event) changes nothing.
    let again = event(
        2,
        central_key("key_00000000000000a1", "alice", secret, None),
    );
    assert!(matches!(
        ledger.apply_inbox_event(&again).unwrap(),
        InboxOutcome::Applied { .. }
    ));
    let revoked = event(
        3,
        central_key(
            "key_00000000000000a1",
            "alice",
            secret,
            Some("2026-11-25T08:00:00Z"),
        ),
    );
    ledger.apply_inbox_event(&revoked).unwrap();
    assert_eq!(ledger.authenticate(secret).unwrap(), None);
    // An older copy of the key (sent before the revocation) never revives it.
    let stale = event(
        4,
        central_key("key_00000000000000a1", "alice", secret, None),
    );
    ledger.apply_inbox_event(&stale).unwrap();
    assert_eq!(ledger.authenticate(secret).unwrap(), None);
    assert_eq!(
        ledger.api_keys("alice").unwrap()[0].revoked_at.as_deref(),
        Some("2026-11-25T08:00:00.000Z")
    );
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_central_api_key_that_does_not_fit_is_refused_and_the_inbox_moves_on() {
    let (dir, mut ledger) = enrolled();
    ledger.create_user(&NewUser::new("alice")).unwrap();
    let local = ledger.create_api_key("alice", Some("local")).unwrap();
    let cases: Vec<(EventBody, &str)> = vec![
        (
            central_key("key_00000000000000b1", "nobody", "tg_x1", None),
            "nobody",
        ),
        (central_key("key_NOT_HEX", "alice", "tg_x2", None), "key id"),
        // Another key's id (made locally) with another hash.
        (
            central_key(&local.info.key_id, "alice", "tg_x3", None),
            "names another key",
        ),
        // A hash this agent already holds for another key.
        (
            central_key("key_00000000000000b2", "alice", &local.secret, None),
            "UNIQUE",
        ),
        (
            central_key("key_00000000000000b3", "alice", "tg_x4", Some("yesterday")),
            "key revoked_at",
        ),
    ];
    for (i, (body, why)) in cases.into_iter().enumerate() {
        let seq = i as i64 + 1;
        let InboxOutcome::Refused { detail } = ledger.apply_inbox_event(&event(seq, body)).unwrap()
        else {
            panic!("case {seq} was not refused");
        };
        assert!(detail.contains(why), "case {seq}: {detail}");
        assert_eq!(cursor(&ledger), seq);
    }
    // The local key is untouched and still works; nothing else was stored.
    assert_eq!(
        ledger.authenticate(&local.secret).unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(ledger.api_keys("alice").unwrap().len(), 1);
    assert_eq!(inbox_rows(&dir.path().join("tollgate.db")).len(), 5);
}
