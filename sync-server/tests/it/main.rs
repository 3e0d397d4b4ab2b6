//! The server's integration tests, in one binary. Every test gets its own fresh PostgreSQL
//! database (created, migrated, dropped), so tests run in parallel against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod admin_support;
mod alerts;
mod bad_input_admin;
mod bad_input_sync;
mod central;
mod console;
mod console_browser;
mod console_support;
mod crash;
mod enroll;
mod escrow;
mod hardening;
mod ingest_rules;
mod listeners;
mod migrations;
mod protocol;
mod pull;
mod push;
mod reconcile;
mod replicas;
mod stripe;
mod support;
mod sync_support;
mod webdriver;
