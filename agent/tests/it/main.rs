//! The agent's integration tests, in one binary (ripgrep's habit: one link step, shared helpers).
//! Each module drives the real library or the real `tollgate` binary against real SQLite files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ledger_model;
mod vault;
