//! The server's integration tests, in one binary. Every test gets its own fresh PostgreSQL
//! database (created, migrated, dropped), so tests run in parallel against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod migrations;
mod support;
