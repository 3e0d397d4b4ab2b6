//! The console's settings, read once from the environment with the rest of the server's
//! configuration.
//!
//! - `TOLLGATE_SERVER_PUBLIC_URL`: the address admins reach the server at (e.g.
//!   `https://tollgate.example.com`). When it is `https://…`, the session cookie is `Secure`
//!   (the server itself speaks plain HTTP behind a TLS proxy and cannot see the scheme it was
//!   reached by, so it is told); when set, a form's `Origin` must be exactly this origin.
//! - `TOLLGATE_SERVER_CONSOLE_IDLE_SECS` (default 1800): a session unused this long ends.
//! - `TOLLGATE_SERVER_CONSOLE_SESSION_SECS` (default 43200): a session ends this long after
//!   sign-in, used or not.
//!
//! Guarantees: a public URL that is not an `http(s)://host[:port]` origin (a path, a query or
//! credentials included) is refused at start with a message naming the variable.

use std::time::Duration;

use anyhow::anyhow;

use crate::config::EnvReader;

/// A session unused this long ends, unless `TOLLGATE_SERVER_CONSOLE_IDLE_SECS` says otherwise.
pub const SESSION_IDLE_DEFAULT: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, unless `TOLLGATE_SERVER_CONSOLE_SESSION_SECS` says
/// otherwise.
pub const SESSION_LIFETIME_DEFAULT: Duration = Duration::from_secs(12 * 60 * 60);

/// How the console runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The origin admins reach the server at (`scheme://host[:port]`, no trailing slash), when
    /// configured: forms must come from it.
    pub public_origin: Option<String>,
    /// Mark the session cookie `Secure` (the public URL is https).
    pub secure_cookies: bool,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in.
    pub session_lifetime: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> ConsoleConfig {
        ConsoleConfig {
            public_origin: None,
            secure_cookies: false,
            session_idle: SESSION_IDLE_DEFAULT,
            session_lifetime: SESSION_LIFETIME_DEFAULT,
        }
    }
}

impl ConsoleConfig {
    /// The defaults, changed by the variables in the module's documentation.
    pub fn load(env: EnvReader<'_>) -> anyhow::Result<ConsoleConfig> {
        let secs = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            match env(name) {
                None => Ok(default),
                Some(text) => text
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (60..=30 * 24 * 3_600).contains(n))
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        anyhow!("{name} {text:?} is not a number of seconds from 60 to 2592000")
                    }),
            }
        };
        let public_origin = env("TOLLGATE_SERVER_PUBLIC_URL")
            .map(|url| origin_of(&url))
            .transpose()?;
        let session_idle = secs("TOLLGATE_SERVER_CONSOLE_IDLE_SECS", SESSION_IDLE_DEFAULT)?;
        let session_lifetime = secs(
            "TOLLGATE_SERVER_CONSOLE_SESSION_SECS",
            SESSION_LIFETIME_DEFAULT,
        )?;
        Ok(ConsoleConfig {
            secure_cookies: public_origin
                .as_deref()
                .is_some_and(|o| o.starts_with("https://")),
            public_origin,
            session_idle,
            session_lifetime,
        })
    }
}

/// `scheme://host[:port]` of a public URL (a trailing `/` is allowed; nothing else after the
/// host).
fn origin_of(url: &str) -> anyhow::Result<String> {
    let bad = |why: &str| {
        anyhow!(
            "TOLLGATE_SERVER_PUBLIC_URL {url:?} {why}: give the address admins open, like \
             https://tollgate.example.com"
        )
    };
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| bad("does not start with https:// or http://"))?;
    if rest.is_empty() {
        return Err(bad("has no host"));
    }
    if let Some(c) = rest
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
    {
        return Err(bad(&format!(
            "has {c:?} after the scheme (only a host and a port may follow it)"
        )));
    }
    Ok(trimmed.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> anyhow::Result<ConsoleConfig> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConsoleConfig::load(&move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn an_https_public_url_makes_cookies_secure() {
        let c = load(&[("TOLLGATE_SERVER_PUBLIC_URL", "https://Admin.example.com/")]).unwrap();
        assert_eq!(
            c.public_origin.as_deref(),
            Some("https://admin.example.com")
        );
        assert!(c.secure_cookies);
        let c = load(&[("TOLLGATE_SERVER_PUBLIC_URL", "http://10.0.0.5:4200")]).unwrap();
        assert!(!c.secure_cookies);
        assert_eq!(load(&[]).unwrap(), ConsoleConfig::default());
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        for (name, value) in [
            ("TOLLGATE_SERVER_PUBLIC_URL", "tollgate.example.com"),
            (
                "TOLLGATE_SERVER_PUBLIC_URL",
                "https://x.example.com/console",
            ),
            ("TOLLGATE_SERVER_PUBLIC_URL", "https://"),
            ("TOLLGATE_SERVER_CONSOLE_IDLE_SECS", "5"),
            ("TOLLGATE_SERVER_CONSOLE_SESSION_SECS", "soon"),
        ] {
            let e = load(&[(name, value)]).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
