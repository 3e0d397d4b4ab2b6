//! Escrow for fleet users on the agent's books (SYNC.md "Escrow"), against a real SQLite file: a
//! fleet user's settings never grant an allowance here; credit arrives only as grants, booked once
//! however they arrive; a hold is admitted only while a grant is valid on this agent's clock; what
//! is available returns with one release entry, open holds staying covered; local credit for a
//! fleet user is refused; and the journal exported for the server is what its rules accept.

use std::sync::Arc;

use time::macros::datetime;
use tollgate::ledger::db::OpenMode;
use tollgate::ledger::{
    AddCredits, CreditKind, HoldRequest, InboxOutcome, Ledger, LedgerError, ManualClock, Refusal,
    Settle, UsageRecord,
};
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{EventBody, GrantSpec, InboxEvent, UserSettings};

fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

fn event(seq: i64, body: EventBody) -> InboxEvent {
    InboxEvent {
        seq,
        event_id: format!("0193a3c4-0000-7000-8000-{seq:012}"),
        created_at: "2026-11-24T10:00:00Z".to_owned(),
        body,
    }
}

fn grant(key: &str, amount: &str) -> GrantSpec {
    GrantSpec {
        key: format!("grant:agent-a:{key}"),
        user_id: "ann".to_owned(),
        amount: c(amount),
        valid_for_ms: 60_000,
        overdraft: None,
    }
}

fn hold(ledger: &mut Ledger, request: &str, amount: &str) -> Result<Credits, LedgerError> {
    ledger
        .hold(HoldRequest {
            user_id: "ann".to_owned(),
            request_id: request.to_owned(),
            amount: c(amount),
            min_amount: None,
            ttl: time::Duration::minutes(10),
        })
        .map(|h| h.amount)
}

/// A ledger in a temp dir on a clock the test moves, enrolled as `agent-a`.
fn enrolled_ledger() -> (tempfile::TempDir, ManualClock, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-11-30 09:00 UTC));
    let mut ledger = Ledger::open(
        &dir.path().join("t.db"),
        OpenMode::CreateIfMissing,
        Arc::new(clock.clone()),
    )
    .unwrap();
    assert!(ledger.set_agent_id("agent-a").unwrap());
    (dir, clock, ledger)
}

/// [`enrolled_ledger`] with `ann`, a fleet user (allowance 50), from the server's settings.
fn fleet_ledger() -> (tempfile::TempDir, ManualClock, Ledger) {
    let (dir, clock, mut ledger) = enrolled_ledger();
    let settings = UserSettings {
        user_id: "ann".to_owned(),
        tier: "starter".to_owned(),
        power_level: "eco".to_owned(),
        monthly_allowance: c("50"),
        monthly_spend_cap: None,
        fleet: true,
    };
    let applied = ledger
        .apply_inbox_event(&event(1, EventBody::UserUpsert(settings)))
        .unwrap();
    assert!(
        matches!(applied, InboxOutcome::Applied { .. }),
        "{applied:?}"
    );
    (dir, clock, ledger)
}

#[test]
fn a_fleet_user_spends_only_valid_grants_and_returns_the_rest() {
    let (_dir, clock, mut ledger) = fleet_ledger();
    // The allowance is the server's to grant: nothing here, and no hold before a grant.
    let ann = ledger.account("ann").unwrap();
    assert_eq!(
        (ann.balance, ann.monthly_allowance),
        (Credits::ZERO, c("50"))
    );
    let refused = hold(&mut ledger, "r-0", "1").unwrap_err();
    assert!(
        matches!(refused, LedgerError::Refused(Refusal::NoFleetGrant { .. })),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("no valid grant"), "{refused}");

    // A grant, as the server's answer and again as its inbox event: booked once.
    let g = grant("r-1", "3");
    ledger.book_grant(&g).unwrap();
    let again = ledger
        .apply_inbox_event(&event(2, EventBody::EscrowGrant(g.clone())))
        .unwrap();
    assert!(matches!(again, InboxOutcome::Applied { .. }), "{again:?}");
    assert_eq!(ledger.account("ann").unwrap().balance, c("3"));

    // Spent through the usual hold and settle.
    assert_eq!(hold(&mut ledger, "r-1", "1").unwrap(), c("1"));
    ledger
        .settle(Settle {
            user_id: "ann".to_owned(),
            request_id: "r-1".to_owned(),
            cost: c("0.25"),
            usage: UsageRecord {
                endpoint: "/v1/chat/completions".to_owned(),
                model: "gpt-4o-mini".to_owned(),
                ..UsageRecord::default()
            },
        })
        .unwrap();
    assert_eq!(hold(&mut ledger, "r-2", "1").unwrap(), c("1"));

    // The grant lapses on this agent's clock: no new hold; the open one still settles.
    clock.advance(time::Duration::seconds(61));
    let refused = hold(&mut ledger, "r-3", "0.1").unwrap_err();
    assert!(
        matches!(refused, LedgerError::Refused(Refusal::NoFleetGrant { .. })),
        "{refused:?}"
    );
    // What is available (2.75 − 1 held) goes back; the hold stays covered.
    let released = ledger.release_escrow("ann").unwrap().unwrap();
    assert_eq!(released.amount, c("-1.75"));
    assert_eq!(released.balance_after, c("1"));
    assert_eq!(ledger.release_escrow("ann").unwrap(), None);
    ledger
        .settle(Settle {
            user_id: "ann".to_owned(),
            request_id: "r-2".to_owned(),
            cost: c("0.5"),
            usage: UsageRecord {
                endpoint: "/v1/chat/completions".to_owned(),
                model: "gpt-4o-mini".to_owned(),
                ..UsageRecord::default()
            },
        })
        .unwrap();
    let last = ledger.release_escrow("ann").unwrap().unwrap();
    assert_eq!(
        (last.amount, last.balance_after),
        (c("-0.5"), Credits::ZERO)
    );
    // A new grant makes holds possible again.
    ledger.book_grant(&grant("r-4", "1")).unwrap();
    assert_eq!(hold(&mut ledger, "r-5", "1").unwrap(), c("1"));

    // The books agree, and the journal is what the server's fleet rules accept: the grants
    // positive escrow entries keyed by their grant, the releases negative ones keyed release:.
    let report = ledger.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    let entries = ledger.unacked_entries(100).unwrap();
    let escrow: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e.transaction_type == "escrow")
        .map(|e| (e.amount.to_string(), e.idempotency_key.clone().unwrap()))
        .collect();
    assert_eq!(escrow.len(), 4, "{escrow:?}");
    assert_eq!(escrow[0], ("3".to_owned(), g.key.clone()));
    assert!(escrow[1].0 == "-1.75" && escrow[1].1.starts_with("release:"));
    assert!(escrow[2].0 == "-0.5" && escrow[2].1.starts_with("release:"));
    assert_ne!(escrow[1].1, escrow[2].1);
    for e in &entries {
        e.check().unwrap();
        assert!(
            e.transaction_type == "escrow" || e.amount.is_negative(),
            "a fleet user's credit came from somewhere else: {e:?}"
        );
    }
}

#[test]
fn local_credit_for_a_fleet_user_is_refused_and_no_allowance_is_ever_granted() {
    let (_dir, clock, mut ledger) = fleet_ledger();
    let err = ledger
        .add_credits(AddCredits::new("ann", c("5"), CreditKind::Bonus))
        .unwrap_err();
    assert!(err.to_string().contains("fleet user"), "{err}");
    let err = ledger
        .add_credits(AddCredits::new("ann", c("5"), CreditKind::Escrow))
        .unwrap_err();
    assert!(err.to_string().contains("only as a grant"), "{err}");
    // A month later the cycle renews without an allowance here.
    clock.advance(time::Duration::days(40));
    assert_eq!(ledger.account("ann").unwrap().balance, Credits::ZERO);
    assert!(ledger.unacked_entries(100).unwrap().is_empty());
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_grant_for_a_user_of_this_agent_is_refused_not_mixed_into_their_balance() {
    let (_dir, _clock, mut ledger) = fleet_ledger();
    ledger
        .create_user(&tollgate::ledger::NewUser::new("bob"))
        .unwrap();
    let outcome = ledger
        .apply_inbox_event(&event(
            2,
            EventBody::EscrowGrant(GrantSpec {
                user_id: "bob".to_owned(),
                ..grant("r-1", "3")
            }),
        ))
        .unwrap();
    let InboxOutcome::Refused { detail } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(detail.contains("not a fleet user"), "{detail}");
    assert_eq!(ledger.account("bob").unwrap().balance, Credits::ZERO);
}

#[test]
fn the_escrow_loop_reads_only_users_who_asked_and_lapsed_grants_with_credit() {
    let (_dir, clock, mut ledger) = fleet_ledger();
    let minute = time::Duration::minutes(1);
    let active = ["ann".to_owned()];
    // Idle and never granted: nothing to look at.
    assert!(ledger.fleet_positions(minute, &[]).unwrap().1.is_empty());
    ledger.book_grant(&grant("r-1", "3")).unwrap();
    assert_eq!(hold(&mut ledger, "r-1", "1").unwrap(), c("1"));
    ledger
        .settle(Settle {
            user_id: "ann".to_owned(),
            request_id: "r-1".to_owned(),
            cost: c("0.25"),
            usage: UsageRecord::default(),
        })
        .unwrap();
    // Asked lately: listed with what was spent here in the window.
    let (_, positions) = ledger.fleet_positions(minute, &active).unwrap();
    assert_eq!(positions.len(), 1);
    assert_eq!(
        (positions[0].available(), positions[0].spent_recently),
        (c("2.75"), c("0.25"))
    );
    // Idle with a valid grant: nothing to do; once it lapsed with credit left, listed to release.
    assert!(ledger.fleet_positions(minute, &[]).unwrap().1.is_empty());
    clock.advance(time::Duration::seconds(61));
    let (now, positions) = ledger.fleet_positions(minute, &[]).unwrap();
    assert_eq!(positions.len(), 1);
    assert!(positions[0].valid_until.unwrap() <= now);
    assert_eq!(
        positions[0].spent_recently,
        Credits::ZERO,
        "not asked for: not measured"
    );
    ledger.release_escrow("ann").unwrap().unwrap();
    assert!(ledger.fleet_positions(minute, &[]).unwrap().1.is_empty());
}

#[test]
fn a_user_of_this_agent_turned_fleet_user_returns_what_is_available_at_once() {
    let (_dir, clock, mut ledger) = enrolled_ledger();
    ledger
        .create_user(&tollgate::ledger::NewUser {
            monthly_allowance: c("2"),
            ..tollgate::ledger::NewUser::new("ann")
        })
        .unwrap();
    ledger
        .add_credits(AddCredits::new("ann", c("5"), CreditKind::Purchase))
        .unwrap();
    assert_eq!(hold(&mut ledger, "r-1", "1").unwrap(), c("1"));
    // The server turns her into a fleet user.
    let settings = UserSettings {
        user_id: "ann".to_owned(),
        tier: "trial".to_owned(),
        power_level: "eco".to_owned(),
        monthly_allowance: c("2"),
        monthly_spend_cap: None,
        fleet: true,
    };
    let outcome = ledger
        .apply_inbox_event(&event(1, EventBody::UserUpsert(settings)))
        .unwrap();
    assert!(
        matches!(outcome, InboxOutcome::Applied { .. }),
        "{outcome:?}"
    );
    // What was available (7 − 1 held) went back with one release; the hold stays covered.
    let ann = ledger.account("ann").unwrap();
    assert_eq!((ann.balance, ann.held), (c("1"), c("1")));
    let releases: Vec<_> = ledger
        .unacked_entries(100)
        .unwrap()
        .into_iter()
        .filter(|e| e.transaction_type == "escrow")
        .collect();
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].amount, c("-6"));
    assert!(
        releases[0]
            .idempotency_key
            .as_deref()
            .unwrap()
            .starts_with("release:")
    );
    // From now on she is served from grants only: no new hold, no allowance next month.
    let refused = hold(&mut ledger, "r-2", "0.1").unwrap_err();
    assert!(
        matches!(refused, LedgerError::Refused(Refusal::NoFleetGrant { .. })),
        "{refused:?}"
    );
    clock.advance(time::Duration::days(40));
    assert!(ledger.account("ann").unwrap().balance <= c("1"));
    assert!(ledger.verify().unwrap().is_clean());
}

/// A grant's overdraft line (protocol 4) is kept until drawn; drawing it books one escrow entry
/// keyed `overdraft:<grant key>` of exactly the line, admits holds for the overdraft's validity
/// even after the grant lapsed, and cannot happen twice; a grant without a line leaves nothing
/// to draw.
#[test]
fn an_overdraft_line_is_drawn_once_and_admits_holds_after_the_grant_lapsed() {
    let (_dir, clock, mut ledger) = fleet_ledger();
    ledger.book_grant(&grant("r-0", "1")).unwrap();
    assert_eq!(ledger.draw_overdraft("ann").unwrap(), None);
    let with_line = GrantSpec {
        overdraft: Some(c("2")),
        ..grant("r-1", "3")
    };
    ledger.book_grant(&with_line).unwrap();
    let active = ["ann".to_owned()];
    let minute = time::Duration::minutes(1);
    let (_, positions) = ledger.fleet_positions(minute, &active).unwrap();
    assert_eq!(positions[0].overdraft_line, Some(c("2")));
    // The grant lapses; the line is drawn (the server unreachable): holds are admitted again.
    clock.advance(time::Duration::minutes(2));
    assert!(hold(&mut ledger, "r-late", "1").is_err());
    let drawn = ledger
        .draw_overdraft("ann")
        .unwrap()
        .expect("a line to draw");
    assert_eq!(drawn.amount, c("2"));
    assert_eq!(ledger.account("ann").unwrap().balance, c("6"));
    assert_eq!(hold(&mut ledger, "r-2", "5").unwrap(), c("5"));
    // Once only.
    assert_eq!(ledger.draw_overdraft("ann").unwrap(), None);
    let (_, positions) = ledger.fleet_positions(minute, &active).unwrap();
    assert_eq!(positions[0].overdraft_line, None);
    // What the server will see: the line's entry, keyed by the grant it belongs to.
    let entries = ledger.unacked_entries(100).unwrap();
    let line = entries
        .iter()
        .find(|e| e.amount == c("2"))
        .expect("the overdraft entry");
    assert_eq!(line.transaction_type, "escrow");
    assert_eq!(
        line.idempotency_key.as_deref(),
        Some("overdraft:grant:agent-a:r-1")
    );
    assert!(ledger.verify().unwrap().is_clean());
    // A line that is not positive is refused with the grant.
    let bad = GrantSpec {
        overdraft: Some(Credits::ZERO),
        ..grant("r-3", "1")
    };
    let err = ledger.book_grant(&bad).unwrap_err();
    assert!(err.to_string().contains("overdraft line"), "{err}");
}
