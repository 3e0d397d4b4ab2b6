//! tollgate, the agent: prepaid credit metering for LLM traffic on one host.
//!
//! - [`ledger`]: the books in one SQLite file (the only module that touches SQLite).
//! - [`keys`]: the BYOK vault (AES-256-GCM envelope, master key handling).
//! - [`cli`]: the command line as clap types; [`commands`]: what each command does.
//! - [`config`]: where the agent keeps its state.
//! - [`gateway`]: the metering gateway (`tollgate serve`).
//! - [`prices`]: the price table requests are charged by.
//! - [`sync`]: sync with the central server (enrolment, push, pull), off the request path.

pub mod cli;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod keys;
pub mod ledger;
pub mod prices;
pub mod sync;
