//! The request path's edges, by example: what a settle may charge when the hold is missing,
//! released or expired, and a batch in which one operation breaks a constraint.

use std::sync::Arc;

use time::macros::datetime;
use tollgate::ledger::{
    AddCredits, CreditKind, Debit, HoldRequest, HoldStatus, Ledger, LedgerError, ManualClock,
    NewUser, Op, OpenMode, Receipt, Refusal, Release, Settle, UsageRecord,
};
use tollgate_schema::money::Credits;

fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

fn setup(cap: Option<&str>) -> (tempfile::TempDir, Ledger, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-03-01 12:00 UTC));
    let mut ledger = Ledger::open(
        &dir.path().join("t.db"),
        OpenMode::CreateIfMissing,
        Arc::new(clock.clone()),
    )
    .unwrap();
    let mut user = NewUser::new("alice");
    user.monthly_spend_cap = cap.map(c);
    ledger.create_user(&user).unwrap();
    ledger
        .add_credits(AddCredits::new("alice", c("100"), CreditKind::Purchase))
        .unwrap();
    (dir, ledger, clock)
}

fn hold(id: &str, amount: &str) -> HoldRequest {
    HoldRequest {
        user_id: "alice".into(),
        request_id: id.into(),
        amount: c(amount),
        min_amount: None,
        ttl: time::Duration::minutes(5),
    }
}

#[test]
fn a_flexible_hold_reserves_what_the_user_can_afford_down_to_its_floor() {
    let (_dir, mut ledger, _clock) = setup(None);
    // alice has 100 credits: a flexible hold of 150 with a floor of 10 reserves 100.
    let wide = HoldRequest {
        min_amount: Some(c("10")),
        ..hold("r1", "150")
    };
    let receipt = ledger.hold(wide.clone()).unwrap();
    assert_eq!(receipt.amount, c("100"));
    assert_eq!(receipt.available_after, c("0"));
    // A retry of the same request returns the same hold, not a conflict.
    assert_eq!(ledger.hold(wide).unwrap().amount, c("100"));
    // Nothing is left: a floor above what is available is refused, naming the floor.
    let err = ledger
        .hold(HoldRequest {
            min_amount: Some(c("1")),
            ..hold("r2", "50")
        })
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::Refused(Refusal::InsufficientCredit { needed, .. }) if *needed == c("1")),
        "{err}"
    );
    // A floor above the amount is bad input.
    let err = ledger
        .hold(HoldRequest {
            min_amount: Some(c("60")),
            ..hold("r3", "50")
        })
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidAmount { .. }), "{err}");
    ledger
        .release(Release {
            user_id: "alice".into(),
            request_id: "r1".into(),
            usage: None,
        })
        .unwrap();
    // With credit back, the full amount is reserved when affordable.
    let receipt = ledger
        .hold(HoldRequest {
            min_amount: Some(c("10")),
            ..hold("r4", "40")
        })
        .unwrap();
    assert_eq!(receipt.amount, c("40"));
}

fn settle(id: &str, cost: &str) -> Settle {
    Settle {
        user_id: "alice".into(),
        request_id: id.into(),
        cost: c(cost),
        usage: UsageRecord {
            endpoint: "/v1/chat/completions".into(),
            model: "m".into(),
            ..Default::default()
        },
    }
}

#[test]
fn a_request_never_held_cannot_be_settled() {
    let (_dir, mut ledger, _) = setup(None);
    let err = ledger.settle(settle("ghost", "50")).unwrap_err();
    assert!(
        matches!(err, LedgerError::UnknownRequest(ref r) if r == "ghost"),
        "{err:?}"
    );
    assert_eq!(ledger.account("alice").unwrap().balance, c("100"));
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_released_request_is_never_charged() {
    let (_dir, mut ledger, _) = setup(None);
    ledger.hold(hold("r1", "5")).unwrap();
    let released = ledger
        .release(Release {
            user_id: "alice".into(),
            request_id: "r1".into(),
            usage: None,
        })
        .unwrap();
    assert_eq!(released.released, c("5"));
    let err = ledger.settle(settle("r1", "30")).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::RequestClosed {
                status: HoldStatus::Released,
                ..
            }
        ),
        "{err:?}"
    );
    let again = ledger.hold(hold("r1", "5")).unwrap_err();
    assert!(
        matches!(again, LedgerError::RequestClosed { .. }),
        "{again:?}"
    );
    let account = ledger.account("alice").unwrap();
    assert_eq!((account.balance, account.held), (c("100"), Credits::ZERO));
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_late_settle_charges_at_most_the_hold_and_respects_the_cap() {
    let (_dir, mut ledger, clock) = setup(Some("12"));
    ledger.hold(hold("slow", "10")).unwrap();
    clock.advance(time::Duration::minutes(6)); // past the hold's 5-minute TTL
    ledger
        .debit(Debit {
            user_id: "alice".into(),
            amount: c("5"),
            idempotency_key: None,
            note: None,
        })
        .unwrap();
    // Cap 12, used 5: the late settle may take 7 at most though the hold was 10 and cost is 50.
    let late = ledger.settle(settle("slow", "50")).unwrap();
    assert_eq!((late.charged, late.overage), (c("7"), c("43")));
    let account = ledger.account("alice").unwrap();
    assert_eq!(account.balance, c("88"));
    assert_eq!(account.credits_used_this_month, c("12"));
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn a_hold_ttl_is_bounded() {
    let (_dir, mut ledger, _) = setup(None);
    let mut forever = hold("r", "1");
    forever.ttl = time::Duration::days(365 * 9000);
    let err = ledger.hold(forever).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidField {
                field: "hold ttl",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_operation_breaking_a_constraint_fails_alone_in_its_batch() {
    let (_dir, mut ledger, _) = setup(None);
    ledger.hold(hold("r1", "5")).unwrap();
    let mut bad = settle("r1", "2");
    bad.usage.byok_key_id = Some(999); // no such provider key: a foreign key violation
    let results = ledger
        .apply(&[
            Op::Debit(Debit {
                user_id: "alice".into(),
                amount: c("1"),
                idempotency_key: None,
                note: None,
            }),
            Op::Settle(bad),
            Op::Debit(Debit {
                user_id: "alice".into(),
                amount: c("2"),
                idempotency_key: None,
                note: None,
            }),
        ])
        .unwrap();
    assert!(
        matches!(results[0], Ok(Receipt::Entry(_))),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(LedgerError::Storage(_))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Ok(Receipt::Entry(_))),
        "{:?}",
        results[2]
    );
    let account = ledger.account("alice").unwrap();
    assert_eq!(
        (account.balance, account.held),
        (c("97"), c("5")),
        "the failed settle must leave its hold open"
    );
    assert!(ledger.verify().unwrap().is_clean());
}
