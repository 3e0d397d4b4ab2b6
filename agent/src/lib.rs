//! tollgate, the agent: prepaid credit metering for LLM traffic on one host.
//!
//! - [`ledger`]: the books in one SQLite file (the only module that touches SQLite).
//! - [`keys`]: the BYOK vault (AES-256-GCM, master key handling).
//! - [`cli`]: the command-line interface (clap types), and [`commands`]: what each command does.

pub mod ledger;
pub mod keys;
