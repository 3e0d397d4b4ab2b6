//! The admin API, authenticated by admin tokens (read: every GET; full: writes too).

pub mod agents;
pub mod catalog;
pub mod checkout;
pub mod credits;
pub mod extract;
pub mod reconcile;
pub mod users;
