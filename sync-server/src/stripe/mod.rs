//! Stripe: Checkout Sessions for the credit packages, the signed webhook that grants them, and
//! the credit taken back when the money goes back.
//!
//! - [`checkout`]: creates a Checkout Session at Stripe for a user and a package and records it
//!   (`checkout_sessions`); served as `POST /admin/v1/checkout` (full admin role) by
//!   `http/admin/checkout.rs`.
//! - [`webhook`]: `POST /stripe/webhook` (served by `http/stripe_webhook.rs`, which verifies
//!   Stripe's signature with [`signature`] first) records the
//!   event id once, and grants a paid session exactly once (operation key `stripe:<session id>`).
//! - [`refunds`]: refunds and disputes of a granted session's payment take its credit back (a
//!   dispute won gives it back), in proportion to the money returned, never twice.
//!
//! Secrets (the API key, the webhook secret) come from `ServerConfig::stripe` and are never
//! logged; neither are signatures.

use crate::central::CentralError;

/// Why a Stripe operation was refused or failed. Domain words only: `http/error.rs` gives each
/// its status.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe's keys are not configured on this server (503).
    #[error(
        "Stripe is not configured on this server: set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET"
    )]
    NotConfigured,
    /// A field of the request is not acceptable (400).
    #[error("{0}")]
    Invalid(String),
    /// The user or package does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The state does not allow it (409).
    #[error("{0}")]
    Refused(String),
    /// Stripe could not be reached, refused, or answered something unusable (502).
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Central(#[from] CentralError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{context}: {detail}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

pub mod checkout;
pub mod refunds;
pub mod signature;
pub mod webhook;
