//! Applying the server's inbox (SYNC.md "Pull"): central events one by one, and a snapshot when
//! the server no longer holds the events after this agent's cursor.
//!
//! Guarantees:
//! - One event is one write transaction: its effects, its `inbox_events` row and the inbox
//!   cursor moving to its seq commit together or not at all (a storage failure leaves all three
//!   as they were, to be retried).
//! - In order and once: an event at or below the cursor was applied before and is skipped,
//!   writing nothing; one past cursor + 1 is refused as a gap, writing nothing; an event id
//!   already applied (at another seq) has no effect again.
//! - An event the books refuse (a negative adjustment the balance cannot cover, a tier this
//!   agent does not know, a package that does not check out, any constraint its values break)
//!   is rolled back to a savepoint and recorded as `refused` with the reason; the cursor still
//!   moves past it, so the inbox never sticks. The server's reconcile reports it.
//! - Credit goes through the ledger's own add path under the event's idempotency key: the same
//!   rules, lots, journal entry and hash chain as a local `credits add`, and a replay of the key
//!   with the same content returns the first entry instead of writing another.
//! - A power level's multiplier is exact decimal text turned into permille only when exactly
//!   representable ("0.7" → 700; "0.7005" is refused), never through a float.

use std::str::FromStr;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use tollgate_schema::wire::{
    CreditEvent, CreditEventKind, EventBody, FALLBACK_STRATEGIES, InboxEvent, PackageSpec,
    PowerLevelSpec, Snapshot, UserSettings,
};

use super::session::Session;
use super::sync::{error_text, inbox_position};
use super::types::{AddCredits, CreditKind, NewUser, Op, PowerLevel, Receipt, Tier, UserChanges};
use super::users::validate_user_id;
use super::{Guard, Ledger, LedgerError, run_op};

/// Longest package name, description or badge accepted from the server.
pub const CATALOG_TEXT_LEN_MAX: usize = 1_000;

/// What applying one inbox event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum InboxOutcome {
    /// Applied; a credit event names its journal entry (a replayed key names the first one).
    Applied { entry_id: Option<String> },
    /// Refused by the books: nothing but the `inbox_events` row was written, and the cursor moved.
    Refused { detail: String },
    /// Applied before (its seq is at or below the cursor, or its event id was recorded at another
    /// seq): no effect. Only the latter moves the cursor.
    AlreadyApplied,
}

/// What applying a snapshot did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotApplied {
    pub users: usize,
    pub packages: usize,
    pub power_levels: usize,
    pub api_keys: usize,
    /// Items the books refused, each as "what: why"; the rest were applied.
    pub refused: Vec<String>,
    /// The inbox cursor before and after.
    pub previous_cursor: i64,
    pub cursor: i64,
}

impl Ledger {
    /// Applies one inbox event (see the module doc for the guarantees).
    pub fn apply_inbox_event(&mut self, event: &InboxEvent) -> Result<InboxOutcome, LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = self.clock.now();
        let outcome = {
            let (agent_id, cursor) = inbox_position(&tx)?;
            if event.seq <= cursor {
                return Ok(InboxOutcome::AlreadyApplied);
            }
            if event.seq != cursor + 1 {
                return Err(LedgerError::InboxGap {
                    cursor,
                    seq: event.seq,
                });
            }
            let recorded: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM inbox_events WHERE event_id = ?1)",
                [&event.event_id],
                |r| r.get(0),
            )?;
            if recorded {
                InboxOutcome::AlreadyApplied
            } else {
                if let Some(other) = tx
                    .query_row(
                        "SELECT event_id FROM inbox_events WHERE agent_id = ?1 AND seq = ?2 \
                         AND epoch = (SELECT inbox_epoch FROM sync_state WHERE id = 1)",
                        params![agent_id, event.seq],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()?
                {
                    return Err(LedgerError::InboxConflict {
                        seq: event.seq,
                        event: event.event_id.clone(),
                        recorded: other,
                    });
                }
                let mut session = Session::begin(&tx, now)?;
                let outcome = match guarded(&mut session, |s| s.apply_event(&event.body))? {
                    Ok(entry_id) => InboxOutcome::Applied { entry_id },
                    Err(detail) => InboxOutcome::Refused { detail },
                };
                record_event(&session, &agent_id, event, &outcome)?;
                outcome
            }
        };
        tx.execute(
            "UPDATE agent_identity SET inbox_cursor = ?1 WHERE id = 1",
            [event.seq],
        )?;
        tx.commit()?;
        Ok(outcome)
    }

    /// Applies a snapshot in one transaction: every user, package and power level in it is
    /// upserted (each refused item rolled back alone and reported), and the inbox cursor is set
    /// to the snapshot's.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<SnapshotApplied, LedgerError> {
        if snapshot.cursor < 0 {
            return Err(LedgerError::InvalidField {
                field: "snapshot cursor",
                why: format!("{} is negative", snapshot.cursor),
            });
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = self.clock.now();
        let applied = {
            let (_, previous_cursor) = inbox_position(&tx)?;
            let mut session = Session::begin(&tx, now)?;
            let mut refused = Vec::new();
            let mut note = |what: String, result: Result<(), String>| {
                if let Err(why) = result {
                    refused.push(format!("{what}: {why}"));
                }
            };
            for user in &snapshot.users {
                let result = guarded(&mut session, |s| s.upsert_user(user))?;
                note(format!("user {:?}", user.user_id), result);
            }
            for package in &snapshot.packages {
                let result = guarded(&mut session, |s| s.upsert_package(package))?;
                note(format!("package {:?}", package.name), result);
            }
            for level in &snapshot.power_levels {
                let result = guarded(&mut session, |s| s.upsert_power_level(level))?;
                note(format!("power level {:?}", level.power_level), result);
            }
            for key in &snapshot.api_keys {
                let result = guarded(&mut session, |s| s.upsert_central_api_key(key))?;
                note(format!("API key {:?}", key.key_id), result);
            }
            SnapshotApplied {
                users: snapshot.users.len(),
                packages: snapshot.packages.len(),
                power_levels: snapshot.power_levels.len(),
                api_keys: snapshot.api_keys.len(),
                refused,
                previous_cursor,
                cursor: snapshot.cursor,
            }
        };
        tx.execute(
            "UPDATE agent_identity SET inbox_cursor = ?1 WHERE id = 1",
            [snapshot.cursor],
        )?;
        if snapshot.cursor < applied.previous_cursor {
            // The server no longer has events it sent: the seqs after the new cursor will be
            // new events. A new epoch keeps them apart from the ones recorded before (an event
            // seen before, by its id, is still never applied twice).
            tx.execute(
                "UPDATE sync_state SET inbox_epoch = inbox_epoch + 1 WHERE id = 1",
                [],
            )?;
        }
        tx.commit()?;
        Ok(applied)
    }
}

/// Runs `f` inside a savepoint. A refusal (any error but a storage failure, and any constraint
/// the values break) rolls the savepoint back and comes back as its one-line reason; a storage
/// failure is returned as the outer error and the caller's transaction must not commit.
fn guarded<T>(
    session: &mut Session<'_>,
    f: impl FnOnce(&mut Session<'_>) -> Result<T, LedgerError>,
) -> Result<Result<T, String>, LedgerError> {
    let head = session.head;
    session.conn.execute_batch("SAVEPOINT inbox_event")?;
    match f(session) {
        Ok(value) => {
            session.conn.execute_batch("RELEASE inbox_event")?;
            Ok(Ok(value))
        }
        Err(e) if is_refusal(&e) && !session.conn.is_autocommit() => {
            session
                .conn
                .execute_batch("ROLLBACK TO inbox_event; RELEASE inbox_event")?;
            session.head = head;
            Ok(Err(error_text(&e.to_string())))
        }
        Err(e) => Err(e),
    }
}

/// Whether an error refuses the event's content rather than failing the storage.
fn is_refusal(e: &LedgerError) -> bool {
    match e {
        LedgerError::Storage(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        other => !other.is_storage(),
    }
}

fn record_event(
    session: &Session<'_>,
    agent_id: &str,
    event: &InboxEvent,
    outcome: &InboxOutcome,
) -> Result<(), LedgerError> {
    let (result, detail, entry_id) = match outcome {
        InboxOutcome::Applied { entry_id } => ("applied", None, entry_id.as_deref()),
        InboxOutcome::Refused { detail } => ("refused", Some(detail.as_str()), None),
        InboxOutcome::AlreadyApplied => return Ok(()),
    };
    session.conn.execute(
        "INSERT INTO inbox_events (agent_id, seq, event_id, kind, outcome, detail, entry_id, \
         applied_at, epoch) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
         (SELECT inbox_epoch FROM sync_state WHERE id = 1))",
        params![
            agent_id,
            event.seq,
            event.event_id,
            event_kind(&event.body),
            result,
            detail,
            entry_id,
            session.now_text
        ],
    )?;
    Ok(())
}

/// The event's type as the wire spells it.
fn event_kind(body: &EventBody) -> &'static str {
    match body {
        EventBody::UserUpsert(_) => "user_upsert",
        EventBody::Credit(_) => "credit",
        EventBody::PackageUpsert(_) => "package_upsert",
        EventBody::PowerLevelUpsert(_) => "power_level_upsert",
        EventBody::ApiKeyUpsert(_) => "api_key_upsert",
        EventBody::EscrowGrant(_) => "escrow_grant",
    }
}

impl Session<'_> {
    /// An event's effect; a credit event returns its journal entry's id.
    fn apply_event(&mut self, body: &EventBody) -> Result<Option<String>, LedgerError> {
        match body {
            EventBody::UserUpsert(user) => self.upsert_user(user).map(|()| None),
            EventBody::Credit(credit) => self.apply_credit(credit).map(Some),
            EventBody::PackageUpsert(package) => self.upsert_package(package).map(|()| None),
            EventBody::PowerLevelUpsert(level) => self.upsert_power_level(level).map(|()| None),
            EventBody::ApiKeyUpsert(key) => self.upsert_central_api_key(key).map(|()| None),
            EventBody::EscrowGrant(grant) => self.book_grant(grant).map(Some),
        }
    }

    /// Creates the user with these settings, or sets them on the existing user.
    fn upsert_user(&mut self, settings: &UserSettings) -> Result<(), LedgerError> {
        validate_user_id(&settings.user_id)?;
        let tier: Tier = parse_field(&settings.tier, "tier")?;
        let power_level: PowerLevel = parse_field(&settings.power_level, "power level")?;
        let changes = UserChanges {
            tier: Some(tier),
            power_level: Some(power_level),
            monthly_allowance: Some(settings.monthly_allowance),
            monthly_spend_cap: Some(settings.monthly_spend_cap),
            auto_renew: None,
        };
        if self.user_exists(&settings.user_id)? {
            if settings.fleet {
                self.become_fleet(&settings.user_id)?;
            }
            self.change_user(&settings.user_id, &changes)?;
        } else if settings.fleet {
            // Made without an allowance (a fleet user's allowance is never granted here), marked,
            // then given their settings.
            self.create_user(&NewUser {
                user_id: settings.user_id.clone(),
                tier,
                power_level,
                monthly_allowance: tollgate_schema::money::Credits::ZERO,
                monthly_spend_cap: settings.monthly_spend_cap,
            })?;
            self.mark_fleet(&settings.user_id)?;
            self.change_user(&settings.user_id, &changes)?;
        } else {
            self.create_user(&NewUser {
                user_id: settings.user_id.clone(),
                tier,
                power_level,
                monthly_allowance: settings.monthly_allowance,
                monthly_spend_cap: settings.monthly_spend_cap,
            })?;
        }
        Ok(())
    }

    /// Marks an existing user a fleet user: the server turned this agent's user into one (it
    /// holds their balance as its holding of their grants). What is available goes back to the
    /// pool at once, with a release entry — which also tells the server this agent has applied
    /// the change; what open holds keep is released when they close.
    fn become_fleet(&mut self, user_id: &str) -> Result<(), LedgerError> {
        let fleet: bool = self.conn.query_row(
            "SELECT fleet FROM user_credits WHERE user_id = ?1",
            [user_id],
            |r| r.get(0),
        )?;
        if fleet {
            return Ok(());
        }
        self.mark_fleet(user_id)?;
        self.release_escrow(user_id)?;
        Ok(())
    }

    /// Adds the credit through the ledger's keyed add path; a user unknown here is created with
    /// the defaults first (their settings follow in their own event).
    fn apply_credit(&mut self, credit: &CreditEvent) -> Result<String, LedgerError> {
        validate_user_id(&credit.user_id)?;
        if !self.user_exists(&credit.user_id)? {
            self.create_user(&NewUser::new(credit.user_id.clone()))?;
        }
        let add = AddCredits {
            package: credit.package.clone(),
            idempotency_key: Some(credit.idempotency_key.clone()),
            note: credit.note.clone(),
            admin_user_id: credit.admin_user_id.clone(),
            ..AddCredits::new(
                credit.user_id.clone(),
                credit.amount,
                credit_kind(credit.kind),
            )
        };
        match run_op(self, &Op::AddCredits(add), Guard::Savepoints)? {
            Ok(Receipt::Entry(receipt)) => Ok(receipt.entry_id),
            Ok(other) => Err(LedgerError::Corrupt(format!(
                "adding credit returned {other:?}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces the package of this name.
    fn upsert_package(&mut self, package: &PackageSpec) -> Result<(), LedgerError> {
        validate_catalog_text("package name", Some(&package.name))?;
        validate_catalog_text("package description", package.description.as_deref())?;
        validate_catalog_text("package badge", package.badge_text.as_deref())?;
        if package.name.trim().is_empty() {
            return Err(invalid("package name", "it is empty".to_owned()));
        }
        if !package.credits.is_positive() {
            return Err(LedgerError::InvalidAmount {
                amount: package.credits,
                why: "a package's credits must be positive",
            });
        }
        if package.price_usd_cents <= 0 {
            return Err(invalid(
                "package price",
                format!("{} cents is not positive", package.price_usd_cents),
            ));
        }
        if !(0..=100).contains(&package.discount_percent) {
            return Err(invalid(
                "package discount",
                format!("{}% is not between 0 and 100", package.discount_percent),
            ));
        }
        if let Some(tier) = &package.min_tier {
            parse_field::<Tier>(tier, "minimum tier")?;
        }
        self.conn.execute(
            "INSERT INTO credit_packages (name, credits, price_usd_cents, discount_percent, \
             min_tier, is_active, is_featured, sort_order, description, badge_text, created_at, \
             updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11) \
             ON CONFLICT (name) DO UPDATE SET credits = excluded.credits, \
             price_usd_cents = excluded.price_usd_cents, \
             discount_percent = excluded.discount_percent, min_tier = excluded.min_tier, \
             is_active = excluded.is_active, is_featured = excluded.is_featured, \
             sort_order = excluded.sort_order, description = excluded.description, \
             badge_text = excluded.badge_text, updated_at = excluded.updated_at",
            params![
                package.name,
                package.credits.nanos(),
                package.price_usd_cents,
                package.discount_percent,
                package.min_tier,
                package.is_active,
                package.is_featured,
                package.sort_order,
                package.description,
                package.badge_text,
                self.now_text,
            ],
        )?;
        Ok(())
    }

    /// Replaces the routing configuration of one power level.
    fn upsert_power_level(&mut self, level: &PowerLevelSpec) -> Result<(), LedgerError> {
        let power_level: PowerLevel = parse_field(&level.power_level, "power level")?;
        validate_catalog_text("power level name", Some(&level.name))?;
        validate_catalog_text("power level description", level.description.as_deref())?;
        if !FALLBACK_STRATEGIES.contains(&level.fallback_strategy.as_str()) {
            return Err(invalid(
                "fallback strategy",
                format!(
                    "{:?} is not one of {}",
                    level.fallback_strategy,
                    FALLBACK_STRATEGIES.join(", ")
                ),
            ));
        }
        if level
            .preferred_providers
            .iter()
            .any(|p| p.trim().is_empty())
        {
            return Err(invalid(
                "preferred providers",
                "a provider name is empty".to_owned(),
            ));
        }
        let permille = multiplier_permille(&level.cost_multiplier)?;
        if level.max_latency_ms <= 0 {
            return Err(invalid(
                "max latency",
                format!("{} ms is not positive", level.max_latency_ms),
            ));
        }
        if !(0..=100).contains(&level.min_quality_score) {
            return Err(invalid(
                "min quality score",
                format!("{} is not between 0 and 100", level.min_quality_score),
            ));
        }
        let providers = serde_json::to_string(&level.preferred_providers)
            .map_err(|e| LedgerError::Corrupt(format!("preferred providers: {e}")))?;
        self.conn.execute(
            "INSERT INTO power_level_configs (power_level, name, description, preferred_providers, \
             fallback_strategy, cost_multiplier_permille, max_latency_ms, min_quality_score, \
             is_active) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (power_level) DO UPDATE SET name = excluded.name, \
             description = excluded.description, preferred_providers = excluded.preferred_providers, \
             fallback_strategy = excluded.fallback_strategy, \
             cost_multiplier_permille = excluded.cost_multiplier_permille, \
             max_latency_ms = excluded.max_latency_ms, \
             min_quality_score = excluded.min_quality_score, is_active = excluded.is_active",
            params![
                power_level.as_str(),
                level.name,
                level.description,
                providers,
                level.fallback_strategy,
                permille,
                level.max_latency_ms,
                level.min_quality_score,
                level.is_active,
            ],
        )?;
        Ok(())
    }

    pub(super) fn user_exists(&self, user_id: &str) -> Result<bool, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM user_credits WHERE user_id = ?1)")?
            .query_row([user_id], |r| r.get(0))?)
    }
}

fn credit_kind(kind: CreditEventKind) -> CreditKind {
    match kind {
        CreditEventKind::Purchase => CreditKind::Purchase,
        CreditEventKind::Bonus => CreditKind::Bonus,
        CreditEventKind::Refund => CreditKind::Refund,
        CreditEventKind::AdminAdjustment => CreditKind::AdminAdjustment,
    }
}

fn invalid(field: &'static str, why: String) -> LedgerError {
    LedgerError::InvalidField { field, why }
}

fn parse_field<T: FromStr<Err = String>>(
    text: &str,
    field: &'static str,
) -> Result<T, LedgerError> {
    text.parse().map_err(|why| invalid(field, why))
}

/// At most [`CATALOG_TEXT_LEN_MAX`] bytes, no control characters.
fn validate_catalog_text(field: &'static str, text: Option<&str>) -> Result<(), LedgerError> {
    let Some(text) = text else { return Ok(()) };
    if text.len() > CATALOG_TEXT_LEN_MAX {
        return Err(invalid(
            field,
            format!("{} bytes, the limit is {CATALOG_TEXT_LEN_MAX}", text.len()),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "it contains a control character".to_owned()));
    }
    Ok(())
}

/// A cost multiplier's exact decimal text ("0.7") as permille (700): plain digits with at most
/// one point, positive, and exactly a whole number of thousandths.
pub fn multiplier_permille(text: &str) -> Result<i64, LedgerError> {
    let refuse = |why: &str| invalid("cost multiplier", format!("{text:?} {why}"));
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1
        && text.bytes().any(|b| b.is_ascii_digit());
    if !plain {
        return Err(refuse("is not a plain decimal number"));
    }
    let value = Decimal::from_str_exact(text).map_err(|_| refuse("is out of range"))?;
    let permille = value
        .checked_mul(Decimal::from(1_000))
        .ok_or_else(|| refuse("is out of range"))?;
    if !permille.fract().is_zero() {
        return Err(refuse("is not a whole number of thousandths"));
    }
    match permille.to_i64() {
        Some(p) if p > 0 => Ok(p),
        Some(_) => Err(refuse("is not positive")),
        None => Err(refuse("is out of range")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_become_exact_permille_or_are_refused() {
        for (text, permille) in [
            ("0.7", 700),
            ("1", 1_000),
            ("1.5", 1_500),
            ("0.001", 1),
            ("2.250", 2_250),
        ] {
            assert_eq!(multiplier_permille(text).unwrap(), permille, "{text}");
        }
        for bad in [
            "",
            ".",
            "0",
            "0.0",
            "0.0005",
            "-1",
            "1e3",
            " 1",
            "1.2.3",
            "abc",
            "99999999999999999999999",
        ] {
            assert!(multiplier_permille(bad).is_err(), "{bad:?}");
        }
    }
}
