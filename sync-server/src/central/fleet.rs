//! Fleet users (SYNC.md "Escrow"): users with no home, served by every agent. Their settings and
//! API keys go to every agent that can read them (protocol 3); their credit stays in a pool on
//! the server, from which agents get grants ([`super::escrow`]).
//!
//! Guarantees:
//! - [`serving_agents`] is every agent not revoked whose recorded protocol knows the event, in
//!   agent-id order (the order every multi-agent writer takes agent rows in).
//! - An agent rising to protocol 3 is sent every fleet user's settings and keys by [`catch_up`],
//!   in the transaction that records its new version (under its row's lock), so a fleet user
//!   made while it spoke 2 is not lost to it.

use tokio_postgres::Transaction;
use tollgate_schema::wire::{EventBody, UserSettings};
use uuid::Uuid;

use super::{CentralError, api_keys, inbox};

/// The protocol that added fleet users.
pub const FLEET_PROTOCOL: i32 = 3;

/// The agents an event about a fleet user goes to: every one not revoked that can read it.
pub async fn serving_agents(
    tx: &Transaction<'_>,
    body: &EventBody,
) -> Result<Vec<(Uuid, String)>, CentralError> {
    let since = i32::try_from(body.since_version())
        .unwrap_or(i32::MAX)
        .max(FLEET_PROTOCOL);
    let rows = tx
        .query(
            "SELECT agent_id, name FROM agents \
             WHERE status <> 'revoked' AND protocol_version >= $1 ORDER BY agent_id",
            &[&since],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("agent_id"), r.get("name")))
        .collect())
}

/// Every fleet user's settings, by user id.
pub async fn settings<C: tokio_postgres::GenericClient>(
    client: &C,
) -> Result<Vec<UserSettings>, CentralError> {
    client
        .query(
            "SELECT user_id, subscription_tier, power_level, monthly_allowance, \
             monthly_spend_cap FROM user_credits WHERE fleet ORDER BY user_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(UserSettings {
                user_id: r.get("user_id"),
                tier: r.get("subscription_tier"),
                power_level: r.get("power_level"),
                monthly_allowance: super::credits_from_db(r.get("monthly_allowance"))?,
                monthly_spend_cap: r
                    .get::<_, Option<rust_decimal::Decimal>>("monthly_spend_cap")
                    .map(super::credits_from_db)
                    .transpose()?,
                fleet: true,
            })
        })
        .collect()
}

/// Sends `agent_id` every fleet user's settings and keys (in `tx`, which holds the agent row's
/// lock and has just recorded that the agent now speaks protocol 3). Returns how many events.
pub async fn catch_up(tx: &Transaction<'_>, agent_id: Uuid) -> Result<usize, CentralError> {
    let users = settings(tx).await?;
    for user in &users {
        inbox::append(tx, agent_id, &EventBody::UserUpsert(user.clone()), None).await?;
    }
    let keys = api_keys::of_fleet_users(tx).await?;
    for key in &keys {
        inbox::append(tx, agent_id, &EventBody::ApiKeyUpsert(key.clone()), None).await?;
    }
    Ok(users.len() + keys.len())
}
