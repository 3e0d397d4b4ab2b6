//! Central operations: changes made on the server (credit grants, refunds and adjustments, user
//! settings, packages, power levels), each idempotent by its operation key and turned into inbox
//! events for the agents concerned, in one transaction.

pub mod inbox;
