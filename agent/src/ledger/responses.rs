//! The Responses API's responses this agent served, so a request naming one as its
//! `previous_response_id` can be bounded: the provider adds that response's conversation (its
//! prompt and its output) to the new prompt, and this is how large it was.
//!
//! Guarantees: a response is recorded in the same transaction as its request's usage row (never
//! one without the other), once (a retried settle records nothing new); rows older than
//! [`SERVED_RESPONSE_RETENTION_DAYS`] are deleted as their user is served again, so the table
//! holds at most a retention's worth of each user's responses.

use rusqlite::{OptionalExtension, params};

use super::clock::to_text;
use super::session::Session;
use super::{Ledger, LedgerError};

/// How long a served response can be continued from (OpenAI keeps a stored response 30 days).
pub const SERVED_RESPONSE_RETENTION_DAYS: i64 = 30;

const INSERT_SERVED_RESPONSE: &str = "INSERT OR IGNORE INTO served_responses (response_id, \
     request_id, user_id, prompt_tokens, completion_tokens, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const DELETE_OLD_RESPONSES: &str =
    "DELETE FROM served_responses WHERE user_id = ?1 AND created_at < ?2";
const SERVED_RESPONSE: &str = "SELECT user_id, prompt_tokens, completion_tokens \
     FROM served_responses WHERE response_id = ?1";

/// A response served, as metered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedResponse {
    pub user_id: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Session<'_> {
    /// Records `response_id` as served to `user_id` by `request_id`, and forgets the user's
    /// responses past the retention.
    pub fn record_served_response(
        &self,
        response_id: &str,
        request_id: &str,
        user_id: &str,
        prompt_tokens: u32,
        completion_tokens: u32,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(INSERT_SERVED_RESPONSE)?
            .execute(params![
                response_id,
                request_id,
                user_id,
                prompt_tokens,
                completion_tokens,
                self.now_text,
            ])?;
        let horizon = to_text(self.now - time::Duration::days(SERVED_RESPONSE_RETENTION_DAYS));
        self.conn
            .prepare_cached(DELETE_OLD_RESPONSES)?
            .execute(params![user_id, horizon])?;
        Ok(())
    }
}

impl Ledger {
    /// The response served under `response_id`, if this agent served it within the retention.
    pub fn served_response(
        &self,
        response_id: &str,
    ) -> Result<Option<ServedResponse>, LedgerError> {
        let horizon =
            to_text(self.clock().now() - time::Duration::days(SERVED_RESPONSE_RETENTION_DAYS));
        let found = self
            .conn()
            .prepare_cached(&format!("{SERVED_RESPONSE} AND created_at >= ?2"))?
            .query_row(params![response_id, horizon], |r| {
                Ok(ServedResponse {
                    user_id: r.get(0)?,
                    prompt_tokens: r.get(1)?,
                    completion_tokens: r.get(2)?,
                })
            })
            .optional()?;
        Ok(found)
    }
}
