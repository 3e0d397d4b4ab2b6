//! Stripe: Checkout Sessions for the credit packages and the signed webhook that grants them.

pub mod checkout;
pub mod webhook;
