//! The request path's three operations: hold (reserve the worst case), settle (charge the metered
//! cost), release (charge nothing).
//!
//! Guarantees:
//! - A hold is admitted only if the user can afford it (credit, then the monthly spend cap, with
//!   open holds counted) and the user has fewer than [`OPEN_HOLDS_PER_USER_MAX`] open holds; for
//!   a fleet user, only while a grant booked here is valid (`escrow.rs`).
//! - A settle needs the request's hold and debits at most that hold; metered cost beyond it is
//!   booked as overage on the usage row, never charged silently and never taking a balance below
//!   zero. A settle whose hold had expired (the gateway outlived [`HOLD_TTL_MAX`]) charges at most
//!   the hold and what the user can still afford (credit and cap); a released hold (released
//!   while open, or after it expired) is never charged; a request never held cannot be settled.
//! - Every operation is idempotent by request id: a hold retried returns the same hold; a settle
//!   retried with the same cost returns the same charge (another cost is a conflict); a release
//!   of a hold already closed releases nothing. One usage entry and one usage row per request.

use rusqlite::{OptionalExtension, params};
use tollgate_schema::money::Credits;

use super::LedgerError;
use super::credits::negate;
use super::error::Refusal;
use super::journal::EntryDraft;
use super::lots::as_burns;
use super::rules;
use super::session::{Session, UserRow};
use super::sql;
use super::types::{
    EntryReceipt, EntryType, HoldReceipt, HoldRequest, HoldStatus, Release, ReleaseReceipt, Settle,
    SettleReceipt, UsageRecord,
};

/// Open holds one user may have at once: more means a runaway client or a leak.
pub const OPEN_HOLDS_PER_USER_MAX: u64 = 4_096;
/// Longest accepted request id.
pub const REQUEST_ID_LEN_MAX: usize = 255;
/// How long a hold lives unless the caller says otherwise.
pub const HOLD_TTL_DEFAULT: time::Duration = time::Duration::minutes(15);
/// The longest a hold may live: no LLM request runs longer.
pub const HOLD_TTL_MAX: time::Duration = time::Duration::hours(24);

#[derive(Debug)]
struct StoredHold {
    row_id: i64,
    hold_id: String,
    user_id: String,
    amount: Credits,
    status: HoldStatus,
}

impl StoredHold {
    /// Where the hold stands once `user` was touched (which may have just expired it).
    fn status_after(&self, user: &UserRow) -> HoldStatus {
        if user.expired_holds.contains(&self.row_id) {
            HoldStatus::Expired
        } else {
            self.status
        }
    }
}

impl HoldRequest {
    /// Whether an existing hold of `amount` answers this request (a retry): the same amount, or
    /// for a flexible hold any amount between its floor and its ceiling.
    fn accepts(&self, amount: Credits) -> bool {
        match self.min_amount {
            Some(floor) => floor <= amount && amount <= self.amount,
            None => amount == self.amount,
        }
    }
}

impl Session<'_> {
    pub fn hold(&mut self, req: &HoldRequest) -> Result<HoldReceipt, LedgerError> {
        validate_request_id(&req.request_id)?;
        if !req.amount.is_positive() {
            return Err(LedgerError::InvalidAmount {
                amount: req.amount,
                why: "a hold must be positive",
            });
        }
        if let Some(floor) = req.min_amount
            && (!floor.is_positive() || floor > req.amount)
        {
            return Err(LedgerError::InvalidAmount {
                amount: floor,
                why: "a hold's floor must be positive and at most its amount",
            });
        }
        if req.ttl <= time::Duration::ZERO || req.ttl > HOLD_TTL_MAX {
            return Err(LedgerError::InvalidField {
                field: "hold ttl",
                why: format!("{} is not between 0 and {HOLD_TTL_MAX}", req.ttl),
            });
        }
        if let Some(existing) = self.stored_hold(&req.request_id)? {
            if existing.user_id != req.user_id {
                return Err(request_of_another_user(&req.request_id));
            }
            if !req.accepts(existing.amount) {
                return Err(LedgerError::HoldConflict {
                    request_id: req.request_id.clone(),
                    existing: existing.amount,
                    requested: req.amount,
                });
            }
            // What touch did (expiry, renewal, expired holds closed) is saved like any other
            // operation's; if it expired this very hold, the request is closed.
            let mut user = self.touch(&req.user_id)?;
            self.save_user(&mut user)?;
            return match existing.status_after(&user) {
                HoldStatus::Open => Ok(HoldReceipt {
                    hold_id: existing.hold_id,
                    request_id: req.request_id.clone(),
                    user_id: req.user_id.clone(),
                    amount: existing.amount,
                    available_after: user.account().available(),
                }),
                closed => Err(LedgerError::RequestClosed {
                    request_id: req.request_id.clone(),
                    status: closed,
                }),
            };
        }
        if self.usage_row(&req.request_id)?.is_some() {
            return Err(LedgerError::AlreadySettled(req.request_id.clone()));
        }
        let expires_at = self
            .now
            .checked_add(req.ttl)
            .map(super::clock::to_text)
            .ok_or_else(|| LedgerError::InvalidField {
                field: "hold ttl",
                why: "it ends beyond the representable time".into(),
            })?;
        let mut user = self.touch(&req.user_id)?;
        if !self.fleet_grant_valid(&user) {
            return Err(Refusal::NoFleetGrant {
                user: req.user_id.clone(),
            }
            .into());
        }
        let open: i64 = self
            .conn
            .prepare_cached(sql::COUNT_HOLDS)?
            .query_row([&req.user_id], |r| r.get(0))?;
        let open = u64::try_from(open).unwrap_or(u64::MAX);
        if open >= OPEN_HOLDS_PER_USER_MAX {
            return Err(LedgerError::TooManyOpenHolds {
                user: req.user_id.clone(),
                open,
                limit: OPEN_HOLDS_PER_USER_MAX,
            });
        }
        let account = user.account();
        let admitted = account
            .admit(&user.user_id, req.min_amount.unwrap_or(req.amount))
            .map_err(|refusal| match refusal {
                // A fleet user's shortfall is this host's grants, not their credit.
                Refusal::InsufficientCredit {
                    user: id,
                    available,
                    needed,
                } if user.fleet => Refusal::FleetCreditShort {
                    user: id,
                    available,
                    needed,
                },
                other => other,
            });
        admitted?;
        // Reserve what the user can afford, between the floor and the ceiling; below the floor
        // the refusal names the floor (the least this request could run with).
        let amount = match req.min_amount {
            Some(_) => req.amount.min(account.affordable()),
            None => req.amount,
        };
        let hold_id = uuid::Uuid::now_v7().to_string();
        self.conn
            .prepare_cached(sql::INSERT_HOLD)?
            .execute(params![
                hold_id,
                req.request_id,
                req.user_id,
                amount.nanos(),
                self.now_text,
                expires_at,
            ])?;
        user.held = user.held.checked_add(amount).unwrap_or(Credits::MAX);
        user.dirty = true;
        self.save_user(&mut user)?;
        Ok(HoldReceipt {
            hold_id,
            request_id: req.request_id.clone(),
            user_id: req.user_id.clone(),
            amount,
            available_after: user.account().available(),
        })
    }

    pub fn settle(&mut self, req: &Settle) -> Result<SettleReceipt, LedgerError> {
        validate_request_id(&req.request_id)?;
        if req.cost.is_negative() {
            return Err(LedgerError::InvalidAmount {
                amount: req.cost,
                why: "a cost cannot be negative",
            });
        }
        let Some(hold) = self.stored_hold(&req.request_id)? else {
            return match self.usage_row(&req.request_id)? {
                Some((user_id, charged, overage)) => {
                    self.replayed_settle(req, &user_id, charged, overage)
                }
                None => Err(LedgerError::UnknownRequest(req.request_id.clone())),
            };
        };
        if hold.user_id != req.user_id {
            return Err(request_of_another_user(&req.request_id));
        }
        if hold.status == HoldStatus::Released {
            return Err(LedgerError::RequestClosed {
                request_id: req.request_id.clone(),
                status: hold.status,
            });
        }
        let mut user = self.touch(&req.user_id)?;
        // touch may have just expired this hold: re-read where it stands.
        let ceiling = match hold.status_after(&user) {
            HoldStatus::Open => {
                user.held = user.held.checked_sub(hold.amount).unwrap_or(Credits::ZERO);
                user.dirty = true;
                hold.amount
            }
            // A late settle: the reservation is gone, so charge no more than the user can
            // still afford now, and never more than was reserved.
            _ => hold.amount.min(user.account().affordable()),
        };
        self.conn
            .prepare_cached(sql::DELETE_HOLD)?
            .execute([hold.row_id])?;
        let charged = req.cost.min(ceiling);
        let overage = req.cost.checked_sub(charged).unwrap_or(Credits::ZERO);
        let entry = if charged.is_positive() {
            Some(self.charge_usage(&mut user, req, charged)?)
        } else {
            None
        };
        self.insert_usage(&req.request_id, &user.user_id, &req.usage, charged, overage)?;
        self.save_user(&mut user)?;
        Ok(SettleReceipt {
            request_id: req.request_id.clone(),
            user_id: user.user_id,
            entry,
            charged,
            overage,
        })
    }

    /// Releases the request's hold, charging nothing, and logs `usage` if given (once). With no
    /// hold at all (a request refused before reserving) it only logs.
    pub fn release(&mut self, req: &Release) -> Result<ReleaseReceipt, LedgerError> {
        validate_request_id(&req.request_id)?;
        let mut released = Credits::ZERO;
        let hold = self.stored_hold(&req.request_id)?;
        if hold.as_ref().is_some_and(|h| h.user_id != req.user_id) {
            return Err(request_of_another_user(&req.request_id));
        }
        if hold.is_none()
            && let Some((owner, _, _)) = self.usage_row(&req.request_id)?
        {
            if owner != req.user_id {
                return Err(request_of_another_user(&req.request_id));
            }
            // Settled already (or logged by an earlier release): nothing to do.
            return Ok(ReleaseReceipt {
                request_id: req.request_id.clone(),
                released,
            });
        }
        // The user must exist to log the request, and any release brings them up to date.
        let mut user = self.touch(&req.user_id)?;
        if let Some(hold) = hold {
            match hold.status_after(&user) {
                HoldStatus::Open => {
                    self.close_hold(&mut user, hold.row_id, hold.amount, HoldStatus::Released)?;
                    released = hold.amount;
                }
                // The caller gave the request up: a late settle must not charge it any more.
                HoldStatus::Expired => {
                    self.conn
                        .prepare_cached(sql::RELEASE_EXPIRED_HOLD)?
                        .execute([hold.row_id])?;
                }
                HoldStatus::Released => {}
            }
        }
        self.save_user(&mut user)?;
        if let Some(usage) = &req.usage
            && self.usage_row(&req.request_id)?.is_none()
        {
            self.insert_usage(
                &req.request_id,
                &req.user_id,
                usage,
                Credits::ZERO,
                Credits::ZERO,
            )?;
        }
        Ok(ReleaseReceipt {
            request_id: req.request_id.clone(),
            released,
        })
    }

    fn charge_usage(
        &mut self,
        user: &mut UserRow,
        req: &Settle,
        charged: Credits,
    ) -> Result<EntryReceipt, LedgerError> {
        let plan = rules::burn_plan(&user.lots, charged, self.now).ok_or_else(|| {
            LedgerError::Corrupt(format!("lots of {} do not cover its balance", user.user_id))
        })?;
        let usage = &req.usage;
        let entry = self.append(
            user,
            EntryDraft {
                entry_type: Some(EntryType::Usage),
                amount: negate(charged),
                request_id: Some(req.request_id.clone()),
                provider: usage.provider.clone(),
                model: Some(usage.model.clone()),
                prompt_tokens: Some(usage.prompt_tokens),
                completion_tokens: Some(usage.completion_tokens),
                cost_per_token: usage.cost_per_token.clone(),
                power_level: usage.power_level,
                is_byok: usage.is_byok,
                ..EntryDraft::default()
            },
        )?;
        self.move_lots(user, entry.row_id, &as_burns(plan))?;
        user.used_this_month = user
            .used_this_month
            .checked_add(charged)
            .unwrap_or(Credits::MAX);
        Ok(entry.receipt)
    }

    /// A settle seen before: the same cost gives the same receipt, another is a conflict.
    fn replayed_settle(
        &self,
        req: &Settle,
        user_id: &str,
        charged: Credits,
        overage: Credits,
    ) -> Result<SettleReceipt, LedgerError> {
        if user_id != req.user_id {
            return Err(request_of_another_user(&req.request_id));
        }
        if charged.checked_add(overage) != Some(req.cost) {
            return Err(LedgerError::SettleConflict {
                request_id: req.request_id.clone(),
                charged: charged.checked_add(overage).unwrap_or(Credits::MAX),
                requested: req.cost,
            });
        }
        let entry = self
            .conn
            .prepare_cached(
                "SELECT entry_id, seq, user_id, amount, balance_after FROM credit_transactions \
                 WHERE request_id = ?1 AND transaction_type = 'usage'",
            )?
            .query_row([&req.request_id], |r| {
                Ok(EntryReceipt {
                    entry_id: r.get(0)?,
                    seq: r.get(1)?,
                    user_id: r.get(2)?,
                    amount: Credits::from_nanos(r.get(3)?),
                    balance_after: Credits::from_nanos(r.get(4)?),
                })
            })
            .optional()?;
        Ok(SettleReceipt {
            request_id: req.request_id.clone(),
            user_id: user_id.to_owned(),
            entry,
            charged,
            overage,
        })
    }

    fn stored_hold(&self, request_id: &str) -> Result<Option<StoredHold>, LedgerError> {
        let row = self
            .conn
            .prepare_cached(sql::HOLD_BY_REQUEST)?
            .query_row([request_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()?;
        row.map(|(row_id, hold_id, user_id, amount, status)| {
            Ok(StoredHold {
                row_id,
                hold_id,
                user_id,
                amount: Credits::from_nanos(amount),
                status: status.parse().map_err(LedgerError::Corrupt)?,
            })
        })
        .transpose()
    }

    /// (user, charged, overage) of the request's usage row, if it has one.
    fn usage_row(
        &self,
        request_id: &str,
    ) -> Result<Option<(String, Credits, Credits)>, LedgerError> {
        Ok(self
            .conn
            .prepare_cached(sql::USAGE_BY_REQUEST)?
            .query_row([request_id], |r| {
                Ok((
                    r.get(0)?,
                    Credits::from_nanos(r.get(1)?),
                    Credits::from_nanos(r.get(2)?),
                ))
            })
            .optional()?)
    }

    fn insert_usage(
        &self,
        request_id: &str,
        user_id: &str,
        usage: &UsageRecord,
        charged: Credits,
        overage: Credits,
    ) -> Result<(), LedgerError> {
        // A request succeeded unless it carries an error type (a release without one is a free
        // success, e.g. a BYOK request at a 0 % fee).
        let success = usage.error_type.is_none();
        let metadata = usage.metadata.as_ref().map(serde_json::Value::to_string);
        self.conn
            .prepare_cached(sql::INSERT_USAGE)?
            .execute(params![
                request_id,
                usage.session_id,
                user_id,
                usage.app_id,
                usage.endpoint,
                usage.model,
                usage.provider,
                usage.power_level.map(|l| l.as_str()),
                usage.prompt_tokens,
                usage.completion_tokens,
                i64::from(usage.prompt_tokens) + i64::from(usage.completion_tokens),
                charged.nanos(),
                overage.nanos(),
                usage.cost_per_token,
                usage.is_byok,
                usage.byok_key_id,
                usage.latency_ms,
                usage.time_to_first_token_ms,
                usage.tokens_per_second,
                success,
                usage.http_status,
                usage.error_message,
                usage.error_type.map(|t| t.as_str()),
                metadata,
                usage.user_agent,
                usage.client_ip,
                self.now_text,
            ])?;
        if let Some(response_id) = &usage.response_id {
            self.record_served_response(
                response_id,
                request_id,
                user_id,
                usage.prompt_tokens,
                usage.completion_tokens,
            )?;
        }
        Ok(())
    }
}

fn validate_request_id(request_id: &str) -> Result<(), LedgerError> {
    if request_id.is_empty()
        || request_id.len() > REQUEST_ID_LEN_MAX
        || request_id.chars().any(char::is_control)
    {
        return Err(LedgerError::InvalidField {
            field: "request id",
            why: format!("it must be 1 to {REQUEST_ID_LEN_MAX} printable bytes"),
        });
    }
    Ok(())
}

fn request_of_another_user(request_id: &str) -> LedgerError {
    LedgerError::InvalidField {
        field: "request id",
        why: format!("{request_id:?} belongs to another user"),
    }
}
