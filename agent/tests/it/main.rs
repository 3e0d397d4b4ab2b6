//! The agent's integration tests, in one binary (ripgrep's habit: one link step, shared helpers).
//! Each module drives the real library or the real `tollgate` binary against real SQLite files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_errors;
mod crash;
mod keys_cli;
mod ledger_model;
mod race;
mod requests;
mod schema;
mod support;
mod vault;
