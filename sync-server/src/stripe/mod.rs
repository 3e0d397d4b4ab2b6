//! Stripe: Checkout Sessions for the credit packages, the signed webhook that grants them, and
//! the credit taken back when the money goes back.
//!
//! - [`checkout`]: `POST /admin/v1/checkout` (full admin role) creates a Checkout Session at
//!   Stripe for a user and a package and records it (`checkout_sessions`).
//! - [`webhook`]: `POST /stripe/webhook` verifies Stripe's signature ([`signature`]), records the
//!   event id once, and grants a paid session exactly once (operation key `stripe:<session id>`).
//! - [`refunds`]: refunds and disputes of a granted session's payment take its credit back (a
//!   dispute won gives it back), in proportion to the money returned, never twice.
//!
//! Secrets (the API key, the webhook secret) come from `ServerConfig::stripe` and are never
//! logged; neither are signatures.

pub mod checkout;
pub mod refunds;
pub mod signature;
pub mod webhook;
