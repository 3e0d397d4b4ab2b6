//! tollgate-schema: everything that outlives a tollgate process.
//!
//! - [`api_key`]: the format of the API keys users call the gateway with, and their hash.
//! - [`vocabulary`]: the words both programs store and exchange (tiers, power levels and which a
//!   tier allows, entry types, payment methods, fallback strategies, agent statuses) as types.
//! - [`money`]: the exact credit amount type used on every money path.
//! - [`sqlite`] (feature `sqlite`): the agent database's refinery migrations, embedded at build
//!   time from `migrations/sqlite/`. Migration files are never edited once landed, only added.
//! - [`wire`]: the agent ↔ server sync protocol: messages, the journal entry's canonical bytes
//!   and hash, the protocol version and its limits (golden fixtures in `tests/fixtures/wire/`).
//! - [`postgres`] (feature `postgres`): the central server's refinery migrations, from
//!   `migrations/postgres/`.

pub mod api_key;
pub mod money;
pub mod vocabulary;
pub mod wire;

#[cfg(feature = "sqlite")]
pub mod sqlite {
    //! The agent's SQLite migrations (refinery). [`LATEST_VERSION`] is the newest schema this
    //! build knows; a database carrying a newer one must be refused, not opened.
    //!
    //! Versions: 1 — the core books (`V1__core.sql`); 2 — imported price tables
    //! (`V2__prices.sql`); 3 — the sync client's state and applied inbox events (`V3__sync.sql`);
    //! 4 — every price dimension, the Responses mode, price aliases and hand-made price table
    //! versions (`V4__price_dimensions.sql`); 5 — the Responses API responses served
    //! (`V5__served_responses.sql`); 6 — API keys made centrally (`V6__central_api_keys.sql`);
    //! 7 — escrow for fleet users: the `escrow` entry type and lot kind, fleet users and their
    //! grants' validity (`V7__escrow.sql`); 8 — a fleet user's overdraft line, carried by their
    //! newest grant until drawn (`V8__overdraft.sql`); 9 — the threshold alerts raised, once per
    //! user, kind, threshold and billing period (`V9__alerts_sent.sql`).

    refinery::embed_migrations!("migrations/sqlite");

    /// The newest migration version embedded in this build.
    pub const LATEST_VERSION: i32 = 9;

    /// refinery's history table, which records the applied versions.
    pub const HISTORY_TABLE: &str = "refinery_schema_history";

    #[cfg(test)]
    mod tests {
        #[test]
        fn latest_version_matches_the_embedded_files() {
            let newest = super::migrations::runner()
                .get_migrations()
                .iter()
                .map(|m| m.version())
                .max();
            assert_eq!(newest, Some(super::LATEST_VERSION));
        }
    }
}

#[cfg(feature = "postgres")]
pub mod postgres {
    //! The central server's PostgreSQL migrations (refinery). Versions: 1 — the central books,
    //! agents, streams, inboxes, admin tokens and Stripe (`V1__central.sql`); 2 — a checkout
    //! recorded before Stripe is called (`V2__checkout_before_call.sql`); 3 — API keys made
    //! centrally and each agent's protocol version (`V3__central_api_keys.sql`); 4 — Stripe
    //! refunds and disputes take credit back (`V4__stripe_refunds_and_disputes.sql`); 5 — escrow
    //! for fleet users: pools, grants and releases (`V5__escrow.sql`); 6 — overdraft lines and
    //! debt for fleet users (`V6__overdraft_and_debt.sql`); 7 — threshold alerts for fleet users,
    //! an outbox the alert task sends from (`V7__user_alerts.sql`); 8 — the browser console's
    //! sessions and its read indexes (`V8__console.sql`).

    refinery::embed_migrations!("migrations/postgres");

    /// The newest migration version embedded in this build.
    pub const LATEST_VERSION: i32 = 8;

    #[cfg(test)]
    mod tests {
        #[test]
        fn latest_version_matches_the_embedded_files() {
            let newest = super::migrations::runner()
                .get_migrations()
                .iter()
                .map(|m| m.version())
                .max();
            assert_eq!(newest, Some(super::LATEST_VERSION));
        }
    }
}
