//! Console sessions: signing in with an admin token, the session cookie, and the checks every
//! console request and form goes through.
//!
//! Guarantees:
//! - The browser holds only a random session id (32 bytes from the OS) in a cookie that is
//!   `HttpOnly`, `SameSite=Strict`, scoped to `/console`, and `Secure` when the public URL is
//!   https ([`ConsoleConfig`]). The server stores the id's SHA-256, never the id and never the
//!   admin token; a session is found by that hash (a lookup's timing can only tell an attacker
//!   about hashes, which do not help forge an id).
//! - A session ends when its admin token is revoked (checked on every request), when unused
//!   longer than `session_idle`, `session_lifetime` after sign-in, or on sign-out. Sessions are
//!   bounded: [`SESSIONS_PER_TOKEN_MAX`] per admin token (a new sign-in ends that token's
//!   oldest) and [`SESSIONS_MAX`] in all (sign-in is refused beyond it).
//! - Every form carries a per-session CSRF secret in a hidden field, compared in constant time
//!   on every POST; the sign-in form, made before any session exists, carries a secret that
//!   must equal a short-lived cookie's (double submit). A POST whose `Origin` (or
//!   `Sec-Fetch-Site`) says it came from another site is refused before anything else.
//! - The role is the admin token's, read on every request: a read-role session's change is
//!   refused (403) before its form is looked at.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use deadpool_postgres::Pool;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::ConsoleError;
use super::settings::ConsoleConfig;
use crate::http::AppState;
use crate::http::auth::AdminRole;
use crate::tokens;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tollgate_console";
/// The sign-in form's double-submit cookie's name.
pub const SIGN_IN_COOKIE: &str = "tollgate_console_sign_in";
/// How long a sign-in form stays usable.
pub const SIGN_IN_FORM_SECS: u64 = 15 * 60;
/// Sessions one admin token may hold at once; signing in again ends the oldest.
pub const SESSIONS_PER_TOKEN_MAX: i64 = 8;
/// Sessions the server holds at once; sign-in is refused beyond (expired ones are removed
/// first).
pub const SESSIONS_MAX: i64 = 10_000;
/// Prefix of a session id (as every secret the server makes, so one found in a log is named).
const SESSION_ID_PREFIX: &str = "tgcs_";
/// Prefix of a CSRF secret.
const CSRF_PREFIX: &str = "tgcsrf_";
/// Serializes sign-ins (the count of sessions is checked under it): an arbitrary fixed key.
const SIGN_IN_LOCK_KEY: i64 = 0x636f_6e73_6f6c_6531;

/// An admin signed in to the console.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    /// The admin token's name.
    pub name: String,
    pub role: AdminRole,
    /// This session's CSRF secret, put in every form.
    pub csrf: String,
}

/// What a form is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Any signed-in admin (signing out).
    Session,
    /// A full-role admin (every change).
    Full,
}

impl ConsoleSession {
    /// The checks of a POST, in order: it comes from this site, it carries this session's
    /// CSRF secret, and the session's role may make it.
    pub fn check_form(
        &self,
        headers: &HeaderMap,
        config: &ConsoleConfig,
        csrf: &str,
        needs: Needs,
    ) -> Result<(), ConsoleError> {
        same_origin(headers, config)?;
        if !secrets_equal(csrf, &self.csrf) {
            return Err(ConsoleError::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or does not match this session: reload the \
                 page and submit the form again",
            ));
        }
        if needs == Needs::Full && self.role != AdminRole::Full {
            return Err(ConsoleError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "admin token {:?} is read-only: this change needs a full-role token",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    pub fn can_change(&self) -> bool {
        self.role == AdminRole::Full
    }
}

/// Constant-time equality of two secrets (the length, fixed for real secrets, is not hidden).
pub fn secrets_equal(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Refuses a request whose browser says it came from another site: `Sec-Fetch-Site` other than
/// `same-origin`/`none`, or an `Origin` other than the public URL's (or, with none configured,
/// this request's own `Host`). A request with neither header is left to the CSRF secret.
pub fn same_origin(headers: &HeaderMap, config: &ConsoleConfig) -> Result<(), ConsoleError> {
    let refuse = |what: String| {
        Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            format!("refused a form sent from another site ({what})"),
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
            return refuse(format!("Sec-Fetch-Site: {site}"));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
    let allowed = match &config.public_origin {
        Some(public) => origin == *public,
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            !host.is_empty()
                && (origin == format!("http://{host}") || origin == format!("https://{host}"))
        }
    };
    if allowed {
        Ok(())
    } else {
        refuse(format!("Origin: {origin}"))
    }
}

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the console: HttpOnly, SameSite=Strict, Path=/console, Secure when
/// configured; `max_age_secs` 0 deletes it.
pub fn set_cookie(
    config: &ConsoleConfig,
    name: &str,
    value: &str,
    max_age_secs: u64,
) -> HeaderValue {
    let secure = if config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let text = format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    );
    // Every part is ours: names are constants and values URL-safe base64.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A new random secret with `prefix` (URL-safe base64: fit for a cookie and a form field).
pub fn new_secret(prefix: &str) -> Result<Zeroizing<String>, ConsoleError> {
    tokens::generate(prefix).map_err(|e| ConsoleError::internal("drawing a random secret", e))
}

/// A new session for `token`, or why not.
#[derive(Debug)]
pub struct NewSession {
    /// The cookie's value, shown to the browser once.
    pub id: Zeroizing<String>,
    pub name: String,
}

/// Why signing in was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("that admin token is unknown or revoked")]
    UnknownToken,
    #[error(
        "the server already holds {SESSIONS_MAX} console sessions; sign out elsewhere or wait \
         for sessions to expire"
    )]
    Full,
    #[error("{0}")]
    Console(#[from] ConsoleError),
}

/// Signs in with an admin `token`: removes expired sessions, ends this token's oldest beyond
/// [`SESSIONS_PER_TOKEN_MAX`] − 1, refuses beyond [`SESSIONS_MAX`], and stores the new one.
pub async fn sign_in(
    pool: &Pool,
    config: &ConsoleConfig,
    token: &str,
) -> Result<NewSession, SignInError> {
    let token = token.trim();
    if token.is_empty() || token.len() > tollgate_schema::wire::TOKEN_LEN_MAX {
        return Err(SignInError::UnknownToken);
    }
    let id = new_secret(SESSION_ID_PREFIX)?;
    let csrf = new_secret(CSRF_PREFIX)?;
    let mut conn = pool.get().await.map_err(ConsoleError::from)?;
    let tx = conn.transaction().await.map_err(ConsoleError::from)?;
    let result: Result<NewSession, SignInError> = async {
        let Some(admin) = tx
            .query_opt(
                "UPDATE admin_tokens SET last_used_at = now() \
                 WHERE token_hash = $1 AND revoked_at IS NULL RETURNING id, name",
                &[&tokens::hash(token)],
            )
            .await
            .map_err(ConsoleError::from)?
        else {
            return Err(SignInError::UnknownToken);
        };
        let token_id: i64 = admin.get("id");
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SIGN_IN_LOCK_KEY])
            .await
            .map_err(ConsoleError::from)?;
        let idle = secs(config.session_idle);
        tx.execute(
            "DELETE FROM console_sessions \
             WHERE expires_at <= now() OR last_seen_at <= now() - $1::bigint * interval '1 second'",
            &[&idle],
        )
        .await
        .map_err(ConsoleError::from)?;
        tx.execute(
            "DELETE FROM console_sessions WHERE id_hash IN ( \
               SELECT id_hash FROM console_sessions WHERE admin_token_id = $1 \
               ORDER BY created_at DESC OFFSET $2)",
            &[&token_id, &(SESSIONS_PER_TOKEN_MAX - 1)],
        )
        .await
        .map_err(ConsoleError::from)?;
        let held: i64 = tx
            .query_one("SELECT count(*) AS n FROM console_sessions", &[])
            .await
            .map_err(ConsoleError::from)?
            .get("n");
        if held >= SESSIONS_MAX {
            return Err(SignInError::Full);
        }
        tx.execute(
            "INSERT INTO console_sessions (id_hash, admin_token_id, csrf_token, expires_at) \
             VALUES ($1, $2, $3, now() + $4::bigint * interval '1 second')",
            &[
                &tokens::hash(&id),
                &token_id,
                &csrf.as_str(),
                &secs(config.session_lifetime),
            ],
        )
        .await
        .map_err(ConsoleError::from)?;
        Ok(NewSession {
            id: id.clone(),
            name: admin.get("name"),
        })
    }
    .await;
    let session = result?;
    tx.commit().await.map_err(ConsoleError::from)?;
    Ok(session)
}

/// Ends the session whose cookie `headers` carry (nothing if none).
pub async fn sign_out(pool: &Pool, headers: &HeaderMap) -> Result<(), ConsoleError> {
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        let conn = pool.get().await?;
        conn.execute(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            &[&tokens::hash(id)],
        )
        .await?;
    }
    Ok(())
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The session a request's cookie names, if it is live; marks it used.
async fn find(
    pool: &Pool,
    config: &ConsoleConfig,
    id: &str,
) -> Result<Option<ConsoleSession>, ConsoleError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "UPDATE console_sessions s SET last_seen_at = now() FROM admin_tokens t \
             WHERE s.id_hash = $1 AND t.id = s.admin_token_id AND t.revoked_at IS NULL \
               AND s.expires_at > now() \
               AND s.last_seen_at > now() - $2::bigint * interval '1 second' \
             RETURNING t.name, t.role, s.csrf_token",
            &[&tokens::hash(id), &secs(config.session_idle)],
        )
        .await?;
    Ok(row.map(|r| {
        let role: String = r.get("role");
        ConsoleSession {
            name: r.get("name"),
            role: if role == "full" {
                AdminRole::Full
            } else {
                AdminRole::Read
            },
            csrf: r.get("csrf_token"),
        }
    }))
}

impl FromRequestParts<AppState> for ConsoleSession {
    type Rejection = Response;

    /// A live session, or: for a GET, a redirect to the sign-in page; otherwise a 401 page.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let id = cookie(&parts.headers, SESSION_COOKIE).filter(|id| id.len() <= 128);
        let found = match id {
            Some(id) => find(&state.pool, &state.config.console, id)
                .await
                .map_err(IntoResponse::into_response)?,
            None => None,
        };
        match found {
            Some(session) => Ok(session),
            None if parts.method == axum::http::Method::GET => {
                Err(Redirect::to("/console/login").into_response())
            }
            None => Err(ConsoleError::new(
                StatusCode::UNAUTHORIZED,
                "you are not signed in, or your session ended: sign in again",
            )
            .into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = headers(&[("cookie", "a=1; tollgate_console_x=2; tollgate_console=abc")]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn only_same_site_forms_pass() {
        let config = ConsoleConfig::default();
        let ok = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs), &config).is_ok();
        assert!(ok(&[("host", "h:1"), ("origin", "http://h:1")]));
        assert!(ok(&[("host", "h:1")]), "no Origin: left to the CSRF secret");
        assert!(!ok(&[("host", "h:1"), ("origin", "http://evil.example")]));
        assert!(!ok(&[("host", "h:1"), ("origin", "null")]));
        assert!(!ok(&[("host", "h:1"), ("sec-fetch-site", "cross-site")]));
        let public = ConsoleConfig {
            public_origin: Some("https://admin.example".to_owned()),
            ..ConsoleConfig::default()
        };
        let h = headers(&[
            ("host", "internal:4200"),
            ("origin", "https://admin.example"),
        ]);
        assert!(same_origin(&h, &public).is_ok());
        let h = headers(&[
            ("host", "internal:4200"),
            ("origin", "http://internal:4200"),
        ]);
        assert!(same_origin(&h, &public).is_err());
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secrets_equal("tgcsrf_abc", "tgcsrf_abc"));
        assert!(!secrets_equal("tgcsrf_abd", "tgcsrf_abc"));
        assert!(!secrets_equal("", ""), "an empty secret never matches");
        assert!(!secrets_equal("tgcsrf_ab", "tgcsrf_abc"));
    }

    #[test]
    fn cookies_are_strict_and_secure_when_told() {
        let mut config = ConsoleConfig::default();
        let plain = set_cookie(&config, SESSION_COOKIE, "v", 60);
        assert_eq!(
            plain.to_str().unwrap(),
            "tollgate_console=v; Path=/console; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        config.secure_cookies = true;
        assert!(
            set_cookie(&config, SESSION_COOKIE, "v", 60)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
    }
}
