//! The sync protocol's server side (SYNC.md): enrolment, push (ingest an agent's journal
//! entries, exactly once), pull (the per-agent inbox, long poll, snapshot), and which protocol
//! version each agent speaks.

pub mod agents;
pub mod enroll;
pub(crate) mod ingest;
pub mod notify;
pub mod protocol;
pub mod pull;
pub mod push;
mod rules;
