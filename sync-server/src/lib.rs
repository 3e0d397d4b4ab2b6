//! tollgate-server: the central server of tollgate (SYNC.md). Agents push their journals here and
//! pull central events (purchases, grants, adjustments, user and catalog changes) from their
//! inboxes; admins manage users, credit and agents and reconcile the books.
//!
//! Stateless: every replica holds only a connection pool; all state, ordering and locking is in
//! PostgreSQL, so any number of replicas can serve one database.
//!
//! Modules by domain:
//! - [`db`]: the pool, migrations (under an advisory lock), fresh-database helpers;
//! - [`http`]: the router, errors (the only place domain errors become statuses),
//!   authentication, the admin API (`http::admin`, tokens with read/full roles),
//!   health/readiness/metrics;
//! - [`sync`]: enrolment, push (ingest), pull (inbox, long poll, snapshot);
//! - [`central`]: central operations (credit, users, catalog) → inbox events, idempotent;
//! - [`reconcile`]: recompute and compare the books;
//! - [`metrics`] and [`observe`]: `/metrics`, the central state read when scraped, the periodic
//!   reconcile;
//! - [`stripe`]: Checkout Sessions and the signed webhook;
//! - [`alerts`]: fleet users' threshold alerts (raised by ingest, sent by a task);
//! - [`tokens`]: secrets (credentials, enrolment and admin tokens): generation and hashing.

pub mod alerts;
pub mod central;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod reconcile;
pub mod stripe;
pub mod sync;
pub mod tokens;
