//! Users centrally: create or change a user (homed on one agent, or a fleet user served by every
//! agent) and read them back.
//!
//! Guarantees:
//! - [`set_user`] validates everything first (tier, power level, user id, limits, the home agent
//!   exists and is not revoked), then in one transaction claims the operation key, upserts
//!   `user_credits` (home and settings only: never the balance) and writes a `UserUpsert` event
//!   with the user's whole settings to the home agent's inbox — for a fleet user, to every
//!   agent that can read it (protocol 3; an agent rising to it catches up). A change names only what it
//!   changes: the rest keeps its value (the row is read `FOR UPDATE`, so concurrent changes of
//!   different settings both land). Same key and content → the stored result, no new event.
//! - A user's home never moves while the old home may hold credit for them: a non-zero cached
//!   balance, or a credit operation sent to the old home and not yet seen back as an entry, is
//!   refused. In home-agent mode the home is the only holder of the balance; moving the user
//!   without the old agent giving the credit up would let two agents spend it.
//! - The user row is locked (`FOR UPDATE`) while the home is checked and changed; credit
//!   operations take it `FOR NO KEY UPDATE` (a fleet user's pool moves under it), so a credit
//!   cannot slip to the old home during a move.

use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{EventBody, UserSettings};
use uuid::Uuid;

use super::operation::{self, Begin, Claim};
use super::{Applied, CentralError, fleet, inbox, validate};

/// Create or change a user: the settings it names change, the others keep their value (or, for
/// a new user, take the defaults: tier `trial`, the tier's default level, no allowance, no cap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSet {
    pub user_id: String,
    /// The agent, by name, that holds this user's balance. `None`: a new user is a fleet user
    /// (served by every agent, from grants of their pool); an existing one keeps what they are
    /// (a home never moves).
    pub home_agent: Option<String>,
    pub tier: Option<String>,
    pub power_level: Option<String>,
    pub monthly_allowance: Option<Credits>,
    pub monthly_spend_cap: Option<SpendCap>,
    /// Make the user a fleet user: a new one (as without a home), or an existing home user,
    /// whose home agent's balance becomes its holding of their grants (it returns it to the pool
    /// when it applies the change). Never with `home_agent`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
    /// A fleet user's overdraft line (see [`Overdraft`]); `None`: unchanged (a new user: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdraft: Option<Overdraft>,
}

/// A change to a fleet user's overdraft line: what an agent cut off from the server may spend
/// for them beyond its grants, once per grant, booked as their debt (`super::escrow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overdraft {
    /// No line.
    None,
    /// At most this much (positive).
    UpTo(Credits),
}

impl Overdraft {
    fn credits(self) -> Option<Credits> {
        match self {
            Overdraft::None => None,
            Overdraft::UpTo(c) => Some(c),
        }
    }
}

/// A change to a user's monthly spend cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendCap {
    /// No cap.
    Unlimited,
    /// At most this much a month.
    Credits(Credits),
}

impl SpendCap {
    fn credits(self) -> Option<Credits> {
        match self {
            SpendCap::Unlimited => None,
            SpendCap::Credits(c) => Some(c),
        }
    }
}

/// The tier a new user gets unless told.
pub const NEW_USER_TIER: &str = "trial";

/// What [`set_user`] did (stored with the operation key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSetResult {
    pub operation_key: String,
    pub user: UserSettings,
    /// `None` for a fleet user.
    pub home_agent: Option<String>,
    pub home_agent_id: Option<Uuid>,
    /// The `UserUpsert` event's seq in the home agent's inbox (a fleet user: the first
    /// recipient's; `None` when no agent speaks protocol 3 yet).
    pub inbox_seq: Option<i64>,
    pub event_id: Option<Uuid>,
    /// The agents the settings were sent to.
    pub sent_to: Vec<String>,
    /// True when the user did not exist centrally before.
    pub created: bool,
    /// A fleet user's overdraft line after this change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdraft: Option<Credits>,
}

impl UserSet {
    fn validate(&self) -> Result<(), CentralError> {
        validate::user_id("user_id", &self.user_id)?;
        if let Some(tier) = &self.tier {
            validate::tier("tier", tier)?;
        }
        if let Some(level) = &self.power_level {
            validate::power_level("power_level", level)?;
        }
        if let Some(allowance) = self.monthly_allowance {
            validate::non_negative("monthly_allowance", allowance)?;
        }
        if let Some(SpendCap::Credits(cap)) = self.monthly_spend_cap {
            validate::non_negative("monthly_spend_cap", cap)?;
        }
        if self.home_agent.as_deref() == Some("") {
            return Err(CentralError::invalid("home_agent", "must name an agent"));
        }
        if let Some(Overdraft::UpTo(line)) = self.overdraft
            && !line.is_positive()
        {
            return Err(CentralError::invalid(
                "overdraft",
                format!("must be positive (or none), got {line}"),
            ));
        }
        if self.fleet && self.home_agent.is_some() {
            return Err(CentralError::invalid(
                "home_agent",
                "a fleet user has no home agent: name one or ask for a fleet user, not both",
            ));
        }
        Ok(())
    }

    /// The settings of a new user: what it names, defaults for the rest.
    fn new_settings(&self, fleet: bool) -> UserSettings {
        let tier = self
            .tier
            .clone()
            .unwrap_or_else(|| NEW_USER_TIER.to_owned());
        UserSettings {
            user_id: self.user_id.clone(),
            power_level: self
                .power_level
                .clone()
                .unwrap_or_else(|| default_power_level(&tier)),
            tier,
            monthly_allowance: self.monthly_allowance.unwrap_or(Credits::ZERO),
            monthly_spend_cap: self.monthly_spend_cap.and_then(SpendCap::credits),
            fleet,
        }
    }

    /// `current` with what this changes.
    fn applied_to(&self, current: UserSettings) -> UserSettings {
        UserSettings {
            user_id: current.user_id,
            tier: self.tier.clone().unwrap_or(current.tier),
            power_level: self.power_level.clone().unwrap_or(current.power_level),
            monthly_allowance: self.monthly_allowance.unwrap_or(current.monthly_allowance),
            monthly_spend_cap: match self.monthly_spend_cap {
                None => current.monthly_spend_cap,
                Some(cap) => cap.credits(),
            },
            fleet: current.fleet || self.fleet,
        }
    }
}

/// The level a new user of `tier` runs at unless told (the shared rule; `tier` is validated).
fn default_power_level(tier: &str) -> String {
    tier.parse::<tollgate_schema::vocabulary::Tier>()
        .map_or(tollgate_schema::vocabulary::PowerLevel::Eco, |t| {
            t.default_power_level()
        })
        .as_str()
        .to_owned()
}

/// Creates or changes a user and sends the settings to the agents that serve them (the home
/// agent; every agent speaking protocol 3 for a fleet user), idempotently by `operation_key`.
pub async fn set_user(
    pool: &Pool,
    req: &UserSet,
    operation_key: &str,
    actor: &str,
) -> Result<Applied<UserSetResult>, CentralError> {
    req.validate()?;
    let fingerprint = operation::fingerprint(&(operation::kind::USER_UPSERT, req))?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let claim = Claim {
        key: operation_key,
        kind: operation::kind::USER_UPSERT,
        fingerprint: &fingerprint,
        user_id: Some(&req.user_id),
        amount: None,
        actor,
    };
    if let Begin::Replay(done) = operation::begin(&tx, claim).await? {
        return Ok(Applied::replayed(done));
    }
    let named_home = match &req.home_agent {
        Some(name) => Some(home_agent(&tx, name).await?),
        None => None,
    };

    let fresh = req.new_settings(named_home.is_none());
    let overdraft_of_new = req.overdraft.and_then(Overdraft::credits);
    if overdraft_of_new.is_some() && !fresh.fleet {
        return Err(refuse_overdraft_for_home_user(&req.user_id));
    }
    let created = tx
        .query_opt(
            "INSERT INTO user_credits (user_id, home_agent_id, fleet, subscription_tier, \
             power_level, monthly_allowance, monthly_spend_cap, overdraft) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id) DO NOTHING RETURNING id",
            &[
                &fresh.user_id,
                &named_home.as_ref().map(|(id, _)| *id),
                &fresh.fleet,
                &fresh.tier,
                &fresh.power_level,
                &fresh.monthly_allowance.to_decimal(),
                &fresh.monthly_spend_cap.map(Credits::to_decimal),
                &overdraft_of_new.map(Credits::to_decimal),
            ],
        )
        .await?
        .is_some();
    let (settings, home, converted, overdraft) = if created {
        validate::tier_and_level(&fresh.tier, &fresh.power_level)?;
        (fresh, named_home, false, overdraft_of_new)
    } else {
        let row = tx
            .query_one(
                "SELECT u.home_agent_id, a.name AS home_agent, u.fleet, u.subscription_tier, \
                 u.power_level, u.monthly_allowance, u.monthly_spend_cap, u.overdraft \
                 FROM user_credits u \
                 LEFT JOIN agents a ON a.agent_id = u.home_agent_id \
                 WHERE u.user_id = $1 FOR UPDATE OF u",
                &[&req.user_id],
            )
            .await?;
        let old_home: Option<Uuid> = row.get("home_agent_id");
        let old_name: Option<String> = row.get("home_agent");
        let fleet: bool = row.get("fleet");
        let converting = req.fleet && !fleet && old_home.is_some();
        if converting && let Some(old) = old_home {
            let old_name = old_name.clone().unwrap_or_else(|| old.to_string());
            convert_to_fleet(&tx, &req.user_id, old, &old_name).await?;
        }
        let fleet = fleet || req.fleet;
        let home = match (&named_home, old_home) {
            (_, Some(_)) if fleet => None,
            (Some((_, name)), None) if fleet => {
                return Err(refuse_home_for_fleet_user(&req.user_id, name));
            }
            (Some((id, name)), Some(old)) if *id != old => {
                let old_name = old_name.unwrap_or_else(|| old.to_string());
                return Err(refuse_move(&req.user_id, &old_name, name));
            }
            (Some(named), _) => Some(named.clone()),
            (None, Some(old)) => Some((old, old_name.unwrap_or_else(|| old.to_string()))),
            (None, None) => None,
        };
        let cap: Option<Decimal> = row.get("monthly_spend_cap");
        let current = UserSettings {
            user_id: req.user_id.clone(),
            tier: row.get("subscription_tier"),
            power_level: row.get("power_level"),
            monthly_allowance: super::credits_from_db(row.get("monthly_allowance"))?,
            monthly_spend_cap: cap.map(super::credits_from_db).transpose()?,
            fleet,
        };
        let settings = req.applied_to(current);
        validate::tier_and_level(&settings.tier, &settings.power_level)?;
        let line: Option<Decimal> = row.get("overdraft");
        let overdraft = match req.overdraft {
            None => line.map(super::credits_from_db).transpose()?,
            Some(change) => change.credits(),
        };
        if overdraft.is_some() && !settings.fleet {
            return Err(refuse_overdraft_for_home_user(&req.user_id));
        }
        tx.execute(
            "UPDATE user_credits SET home_agent_id = $2, subscription_tier = $3, power_level = $4, \
             monthly_allowance = $5, monthly_spend_cap = $6, fleet = $7, overdraft = $8 \
             WHERE user_id = $1",
            &[
                &settings.user_id,
                &home.as_ref().map(|(id, _)| *id),
                &settings.tier,
                &settings.power_level,
                &settings.monthly_allowance.to_decimal(),
                &settings.monthly_spend_cap.map(Credits::to_decimal),
                &settings.fleet,
                &overdraft.map(Credits::to_decimal),
            ],
        )
        .await?;
        (settings, home, converting, overdraft)
    };
    let body = EventBody::UserUpsert(settings.clone());
    let recipients = match &home {
        Some((id, name)) => vec![(*id, name.clone())],
        None => fleet::serving_agents(&tx, &body).await?,
    };
    let mut written = Vec::with_capacity(recipients.len());
    for (agent_id, _) in &recipients {
        written.push(inbox::append(&tx, *agent_id, &body, Some(operation_key)).await?);
    }
    // A home user just turned fleet user: their keys, until now only on the home, go to every
    // agent that serves them now.
    if converted {
        for key in super::api_keys::of_user(&tx, &req.user_id).await? {
            let event = EventBody::ApiKeyUpsert(key);
            for (agent_id, _) in &recipients {
                inbox::append(&tx, *agent_id, &event, None).await?;
            }
        }
    }
    let first = written.first();
    let result = UserSetResult {
        operation_key: operation_key.to_owned(),
        user: settings,
        home_agent: home.as_ref().map(|(_, name)| name.clone()),
        home_agent_id: home.as_ref().map(|(id, _)| *id),
        inbox_seq: first.map(|w| w.seq),
        event_id: first.map(|w| w.event_id),
        sent_to: recipients.into_iter().map(|(_, name)| name).collect(),
        created,
        overdraft,
    };
    operation::finish(
        &tx,
        operation_key,
        home.as_ref().zip(first).map(|((id, _), w)| (*id, w.seq)),
        &result,
    )
    .await?;
    tx.commit().await?;
    Ok(Applied {
        result,
        replayed: false,
        events_written: u64::try_from(written.len()).unwrap_or(u64::MAX),
    })
}

/// Turns a home user into a fleet user (the row locked by the caller): their home agent's
/// balance becomes its holding of their grants, flagged `converting` until the agent's first
/// escrow entry for them (what it wrote before it applied the change is judged as a home
/// agent's). Refused while central credit sent to the home has not come back as its entry, and
/// when the home cannot read fleet users (protocol 3).
async fn convert_to_fleet(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: &str,
    home: Uuid,
    home_name: &str,
) -> Result<(), CentralError> {
    let (status, protocol): (String, i32) = tx
        .query_one(
            "SELECT status, protocol_version FROM agents WHERE agent_id = $1",
            &[&home],
        )
        .await
        .map(|r| (r.get("status"), r.get("protocol_version")))?;
    if status == "revoked" {
        return Err(CentralError::Refused(format!(
            "user {user_id:?} is homed on agent {home_name:?}, which is revoked: it can never \
             return their balance to a pool"
        )));
    }
    let debt: Decimal = tx
        .query_one(
            "SELECT debt FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await?
        .get("debt");
    if debt > Decimal::ZERO {
        return Err(CentralError::Refused(format!(
            "user {user_id:?} owes {} credits (money returned beyond their balance); their next \
             credit repays it — make them a fleet user once it is repaid",
            debt.normalize()
        )));
    }
    if protocol < super::fleet::FLEET_PROTOCOL {
        return Err(CentralError::Refused(format!(
            "user {user_id:?}'s home agent {home_name:?} speaks sync protocol {protocol}; it must \
             run a tollgate that speaks {} before its user can become a fleet user",
            super::fleet::FLEET_PROTOCOL
        )));
    }
    let pending: i64 = tx
        .query_one(
            "SELECT count(*) AS n FROM central_operations o \
             WHERE o.kind = 'credit' AND o.user_id = $1 AND o.agent_id = $2 \
               AND NOT EXISTS (SELECT 1 FROM credit_transactions ct \
                               WHERE ct.idempotency_key = o.operation_key)",
            &[&user_id, &home],
        )
        .await?
        .get("n");
    if pending > 0 {
        return Err(CentralError::Refused(format!(
            "user {user_id:?} has {pending} central credit operation(s) sent to agent \
             {home_name:?} and not yet back as its entries; try again once it has synced"
        )));
    }
    tx.execute(
        "INSERT INTO escrow_holdings (user_id, agent_id, balance, converting) \
         SELECT user_id, $2, balance, true FROM user_credits WHERE user_id = $1",
        &[&user_id, &home],
    )
    .await?;
    Ok(())
}

/// The agent named `name` as a home: it exists and is not revoked.
async fn home_agent(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
) -> Result<(Uuid, String), CentralError> {
    let agent = tx
        .query_opt(
            "SELECT agent_id, status FROM agents WHERE name = $1",
            &[&name],
        )
        .await?
        .ok_or_else(|| {
            CentralError::invalid("home_agent", format!("no agent is named {name:?}"))
        })?;
    let status: String = agent.get("status");
    if status == "revoked" {
        return Err(CentralError::invalid(
            "home_agent",
            format!("agent {name:?} is revoked and can never apply events"),
        ));
    }
    Ok((agent.get("agent_id"), name.to_owned()))
}

/// Refuses an overdraft line for a home user.
fn refuse_overdraft_for_home_user(user_id: &str) -> CentralError {
    CentralError::invalid(
        "overdraft",
        format!(
            "user {user_id:?} is not a fleet user: an overdraft line lets agents cut off from \
             the server spend beyond their grants, and a home user's home agent holds their \
             whole balance (make them a fleet user first: --fleet)"
        ),
    )
}

/// Refuses to home a fleet user: agents hold grants of their pool, which only their own release
/// entries return; a home would let one agent spend what others hold.
fn refuse_home_for_fleet_user(user_id: &str, name: &str) -> CentralError {
    CentralError::Refused(format!(
        "user {user_id:?} is a fleet user, served by every agent from grants of their pool; \
         giving them a home ({name:?}) is not supported. Leave --home out to change their \
         settings"
    ))
}

/// Refuses to move a user away from `old_home`. In home-agent mode the old home keeps the user's
/// account: it would go on spending what it holds, granting allowances at renewal and booking
/// credit the server cannot see yet, so no check made here can prove it holds nothing. Moving a
/// user between agents needs the escrow protocol (SYNC.md); until then a home is permanent.
fn refuse_move(user_id: &str, old_name: &str, new_name: &str) -> CentralError {
    CentralError::Refused(format!(
        "user {user_id:?} is homed on agent {old_name:?}, which holds their balance and keeps \
         their account; moving them to {new_name:?} is not supported in home-agent mode (the old \
         agent would go on spending and granting allowances). Create a new user id on \
         {new_name:?} instead"
    ))
}

/// One user in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub user_id: String,
    pub home_agent: Option<String>,
    pub balance: Credits,
    pub tier: String,
    pub power_level: String,
    pub lifetime_credits_purchased: Credits,
    /// The agent's timestamp of the user's newest central entry.
    pub last_entry_at: Option<String>,
}

/// A user's summary from a row that names its columns as the listing does (`user_id`,
/// `home_agent`, `balance`, `subscription_tier`, `power_level`, `lifetime_credits_purchased`,
/// `last_entry_at`).
fn summary(r: &tokio_postgres::Row) -> Result<UserSummary, CentralError> {
    Ok(UserSummary {
        user_id: r.get("user_id"),
        home_agent: r.get("home_agent"),
        balance: super::credits_from_db(r.get("balance"))?,
        tier: r.get("subscription_tier"),
        power_level: r.get("power_level"),
        lifetime_credits_purchased: super::credits_from_db(r.get("lifetime_credits_purchased"))?,
        last_entry_at: r.get("last_entry_at"),
    })
}

/// Most users in one listing page.
pub const USERS_PAGE_MAX: i64 = 1_000;

/// Users ordered by id, after `after` (exclusive), at most `limit` (≤ [`USERS_PAGE_MAX`]).
pub async fn list_users(
    client: &tokio_postgres::Client,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UserSummary>, CentralError> {
    let limit = limit.clamp(1, USERS_PAGE_MAX);
    let rows = client
        .query(
            "SELECT u.user_id, a.name AS home_agent, u.balance, u.subscription_tier, \
                    u.power_level, u.lifetime_credits_purchased, \
                    (SELECT ct.created_at FROM credit_transactions ct \
                     WHERE ct.user_id = u.user_id ORDER BY ct.id DESC LIMIT 1) AS last_entry_at \
             FROM user_credits u LEFT JOIN agents a ON a.agent_id = u.home_agent_id \
             WHERE $1::text IS NULL OR u.user_id > $1 \
             ORDER BY u.user_id LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    rows.iter().map(summary).collect()
}

/// A credit operation sent to an agent and not yet seen back as an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCredit {
    pub operation_key: String,
    pub amount: Credits,
    pub agent: Option<String>,
    pub inbox_seq: Option<i64>,
}

/// Everything known centrally about one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDetail {
    #[serde(flatten)]
    pub summary: UserSummary,
    pub home_agent_status: Option<String>,
    pub monthly_allowance: Credits,
    pub monthly_spend_cap: Option<Credits>,
    pub credits_used_this_month: Credits,
    pub billing_cycle_start: String,
    pub billing_cycle_end: String,
    pub created_at: String,
    pub updated_at: String,
    pub entries: i64,
    pub pending_credit_operations: Vec<PendingCredit>,
    /// Which agents hold the user's credit, and how much. A home user: the home agent holds the
    /// whole balance (as of its last acknowledged push); a fleet user: each agent what it holds
    /// of its grants (as of its last acknowledged push).
    pub held_by: Vec<Holding>,
    /// A fleet user: served by every agent from grants of `pool`.
    pub fleet: bool,
    /// A fleet user's credit not granted to any agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Credits>,
    /// A fleet user's debt (overdrafts drawn, money returned beyond the pool; repaid by their
    /// next credit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debt: Option<Credits>,
    /// A fleet user's overdraft line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdraft: Option<Credits>,
    /// API keys made centrally and not revoked.
    pub live_api_keys: i64,
}

/// Credit of a user an agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub agent: String,
    pub credits: Credits,
}

/// Most pending operations listed for one user.
const PENDING_LISTED_MAX: i64 = 100;

/// One user, or `None`.
pub async fn show_user(
    client: &tokio_postgres::Client,
    user_id: &str,
) -> Result<Option<UserDetail>, CentralError> {
    let Some(r) = client
        .query_opt(
            "SELECT u.user_id, a.name AS home_agent, u.balance, u.subscription_tier, \
                    u.power_level, u.lifetime_credits_purchased, \
                    (SELECT ct.created_at FROM credit_transactions ct \
                     WHERE ct.user_id = u.user_id ORDER BY ct.id DESC LIMIT 1) AS last_entry_at, \
                    a.status AS home_agent_status, u.fleet, u.pool, u.debt, u.overdraft, \
                    u.monthly_allowance, \
                    u.monthly_spend_cap, \
                    u.credits_used_this_month, u.billing_cycle_start, u.billing_cycle_end, \
                    u.created_at, u.updated_at, \
                    (SELECT count(*) FROM credit_transactions ct WHERE ct.user_id = u.user_id) \
                        AS entries, \
                    (SELECT count(*) FROM api_keys k \
                     WHERE k.user_id = u.user_id AND k.revoked_at IS NULL) AS live_api_keys \
             FROM user_credits u LEFT JOIN agents a ON a.agent_id = u.home_agent_id \
             WHERE u.user_id = $1",
            &[&user_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let cap: Option<Decimal> = r.get("monthly_spend_cap");
    let fleet: bool = r.get("fleet");
    let pending = client
        .query(
            "SELECT o.operation_key, o.amount, a.name AS agent, o.inbox_seq \
             FROM central_operations o \
             LEFT JOIN agents a ON a.agent_id = o.agent_id \
             WHERE o.kind = 'credit' AND o.user_id = $1 AND o.agent_id IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM credit_transactions ct \
                               WHERE ct.idempotency_key = o.operation_key) \
             ORDER BY o.created_at LIMIT $2",
            &[&user_id, &PENDING_LISTED_MAX],
        )
        .await?
        .iter()
        .map(|p| {
            Ok(PendingCredit {
                operation_key: p.get("operation_key"),
                amount: super::credits_from_db(p.get("amount"))?,
                agent: p.get("agent"),
                inbox_seq: p.get("inbox_seq"),
            })
        })
        .collect::<Result<Vec<_>, CentralError>>()?;
    Ok(Some(UserDetail {
        summary: summary(&r)?,
        home_agent_status: r.get("home_agent_status"),
        monthly_allowance: super::credits_from_db(r.get("monthly_allowance"))?,
        monthly_spend_cap: cap.map(super::credits_from_db).transpose()?,
        credits_used_this_month: super::credits_from_db(r.get("credits_used_this_month"))?,
        billing_cycle_start: super::rfc3339(r.get("billing_cycle_start")),
        billing_cycle_end: super::rfc3339(r.get("billing_cycle_end")),
        created_at: super::rfc3339(r.get("created_at")),
        updated_at: super::rfc3339(r.get("updated_at")),
        entries: r.get("entries"),
        pending_credit_operations: pending,
        held_by: if fleet {
            client
                .query(
                    "SELECT a.name, h.balance FROM escrow_holdings h \
                     JOIN agents a ON a.agent_id = h.agent_id \
                     WHERE h.user_id = $1 AND h.balance <> 0 ORDER BY a.name",
                    &[&user_id],
                )
                .await?
                .iter()
                .map(|h| {
                    Ok(Holding {
                        agent: h.get("name"),
                        credits: super::credits_from_db(h.get("balance"))?,
                    })
                })
                .collect::<Result<Vec<_>, CentralError>>()?
        } else {
            match r.get::<_, Option<String>>("home_agent") {
                Some(agent) => vec![Holding {
                    agent,
                    credits: super::credits_from_db(r.get("balance"))?,
                }],
                None => Vec::new(),
            }
        },
        fleet,
        pool: if fleet {
            Some(super::credits_from_db(r.get("pool"))?)
        } else {
            None
        },
        debt: Some(super::credits_from_db(r.get("debt"))?).filter(|d| d.is_positive()),
        overdraft: r
            .get::<_, Option<Decimal>>("overdraft")
            .map(super::credits_from_db)
            .transpose()?,
        live_api_keys: r.get("live_api_keys"),
    }))
}
