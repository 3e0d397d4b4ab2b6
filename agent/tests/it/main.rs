//! The agent's integration tests, in one binary (ripgrep's habit: one link step, shared helpers).
//! Each module drives the real library or the real `tollgate` binary against real SQLite files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_errors;
mod crash;
mod escrow;
mod gateway;
mod gateway_console;
mod gateway_crash;
mod gateway_edges;
mod gateway_hardening;
mod gateway_ops;
mod gateway_support;
mod keys_cli;
mod ledger_model;
mod litellm;
mod metering;
mod openai_sdk;
mod prices;
mod python;
mod race;
mod requests;
mod schema;
mod sync_http;
mod sync_ledger;
mod typed_apis;
mod typed_sdks;
mod usage_report;
mod vault;
