//! The server's configuration: flags and environment only (a server is configured by its
//! deployment). Secrets (the database URL's password, Stripe keys) are held in `Zeroizing`
//! strings and never printed: `Debug` redacts them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use zeroize::Zeroizing;

/// Where the server listens unless told otherwise.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:4200";
/// Where the admin listener (`/metrics`, `/readyz`, `/healthz`) listens unless told otherwise:
/// loopback, for a local Prometheus or an operator's tunnel.
pub const ADMIN_LISTEN_DEFAULT: &str = "127.0.0.1:4201";
/// Connections in each replica's pool.
pub const POOL_SIZE_DEFAULT: usize = 16;
/// Stripe's API, unless `TOLLGATE_STRIPE_API_BASE` points elsewhere (a local mock in tests).
pub const STRIPE_API_BASE_DEFAULT: &str = "https://api.stripe.com";
/// How long a client may take to send a request's headers (idle keep-alive included).
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long a request's body may take to arrive.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Connections each replica serves at once (more wait in the kernel's backlog).
pub const CONNECTIONS_MAX_DEFAULT: usize = 1_024;
/// How long a request waits for a pool connection before a 503 with retry advice.
pub const POOL_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// Long polls one agent may hold open at once on a replica (it needs one).
pub const LONG_POLLS_PER_AGENT_DEFAULT: usize = 4;
/// The least time between two reconciles a read-only admin token starts (on a replica).
pub const READ_ONLY_RECONCILE_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

/// Everything a running server needs.
#[derive(Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The admin listener: `/metrics` (only here), `/readyz` and `/healthz`.
    pub admin_listen: SocketAddr,
    pub database_url: Zeroizing<String>,
    pub pool_size: usize,
    /// Stripe purchases; `None` when no secret key is configured (the endpoints then answer 503).
    pub stripe: Option<StripeConfig>,
    /// Longest a long poll waits (capped by the protocol's own maximum).
    pub long_poll_max: Duration,
    /// The limits every connection and request lives under.
    pub limits: Limits,
    /// The browser console (`/console/`): its public URL, cookies and session lifetimes.
    pub console: crate::http::console::settings::ConsoleConfig,
}

/// The limits every connection and request lives under (`TOLLGATE_SERVER_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `TOLLGATE_SERVER_HEADER_READ_TIMEOUT_SECS`.
    pub header_read_timeout: Duration,
    /// `TOLLGATE_SERVER_BODY_READ_TIMEOUT_SECS`: a body slower than this is a 408.
    pub body_read_timeout: Duration,
    /// `TOLLGATE_SERVER_CONNECTIONS_MAX`.
    pub connections_max: usize,
    /// `TOLLGATE_SERVER_POOL_WAIT_MS`: a request that cannot get a database connection within
    /// this is a 503 with `Retry-After`.
    pub pool_wait: Duration,
    /// `TOLLGATE_SERVER_LONG_POLLS_PER_AGENT`: more at once from one agent is a 429.
    pub long_polls_per_agent: usize,
    /// `TOLLGATE_SERVER_READ_ONLY_RECONCILE_INTERVAL_SECS`: a read-only token's reconciles are
    /// at least this far apart (a 429 with `Retry-After` otherwise).
    pub read_only_reconcile_interval: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            body_read_timeout: BODY_READ_TIMEOUT_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            pool_wait: POOL_WAIT_DEFAULT,
            long_polls_per_agent: LONG_POLLS_PER_AGENT_DEFAULT,
            read_only_reconcile_interval: READ_ONLY_RECONCILE_INTERVAL_DEFAULT,
        }
    }
}

impl Limits {
    /// The defaults, each changed by its `TOLLGATE_SERVER_*` variable if set.
    fn load(env: EnvReader<'_>) -> anyhow::Result<Limits> {
        let number =
            |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| match env(name) {
                None => Ok(default),
                Some(text) => text
                    .parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| {
                        anyhow!(
                            "{name} {text:?} is not a number from {} to {}",
                            range.start(),
                            range.end()
                        )
                    }),
            };
        let d = Limits::default();
        Ok(Limits {
            header_read_timeout: Duration::from_secs(number(
                "TOLLGATE_SERVER_HEADER_READ_TIMEOUT_SECS",
                d.header_read_timeout.as_secs(),
                1..=3_600,
            )?),
            body_read_timeout: Duration::from_secs(number(
                "TOLLGATE_SERVER_BODY_READ_TIMEOUT_SECS",
                d.body_read_timeout.as_secs(),
                1..=3_600,
            )?),
            connections_max: usize::try_from(number(
                "TOLLGATE_SERVER_CONNECTIONS_MAX",
                d.connections_max as u64,
                1..=1_000_000,
            )?)?,
            pool_wait: Duration::from_millis(number(
                "TOLLGATE_SERVER_POOL_WAIT_MS",
                d.pool_wait.as_millis() as u64,
                1..=600_000,
            )?),
            long_polls_per_agent: usize::try_from(number(
                "TOLLGATE_SERVER_LONG_POLLS_PER_AGENT",
                d.long_polls_per_agent as u64,
                1..=1_000,
            )?)?,
            read_only_reconcile_interval: Duration::from_secs(number(
                "TOLLGATE_SERVER_READ_ONLY_RECONCILE_INTERVAL_SECS",
                d.read_only_reconcile_interval.as_secs(),
                0..=86_400,
            )?),
        })
    }
}

#[derive(Clone)]
pub struct StripeConfig {
    pub api_base: String,
    pub secret_key: Zeroizing<String>,
    pub webhook_secret: Zeroizing<String>,
    pub success_url: String,
    pub cancel_url: String,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("database_url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("stripe", &self.stripe)
            .field("long_poll_max", &self.long_poll_max)
            .field("limits", &self.limits)
            .field("console", &self.console)
            .finish()
    }
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("secret_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .finish()
    }
}

impl ServerConfig {
    /// Sets the admin listener's address from `--admin-listen` / `TOLLGATE_SERVER_ADMIN_LISTEN`
    /// (`None`: [`ADMIN_LISTEN_DEFAULT`]); an address that is not one, or is the API's own, is an
    /// error naming the setting.
    pub fn with_admin_listen(mut self, admin_listen: Option<String>) -> anyhow::Result<Self> {
        if let Some(text) = admin_listen {
            self.admin_listen = text.parse().with_context(|| {
                format!(
                    "--admin-listen (TOLLGATE_SERVER_ADMIN_LISTEN) {text:?} is not an address \
                     like {ADMIN_LISTEN_DEFAULT}"
                )
            })?;
        }
        if self.admin_listen == self.listen && self.listen.port() != 0 {
            return Err(anyhow!(
                "--admin-listen (TOLLGATE_SERVER_ADMIN_LISTEN) {} is also the listen address: \
                 the admin listener needs its own port",
                self.admin_listen
            ));
        }
        Ok(self)
    }
}

/// Reads the environment through `env` (a function, so tests never mutate the process's).
pub type EnvReader<'a> = &'a dyn Fn(&str) -> Option<String>;

impl ServerConfig {
    /// Builds the config from the database URL, an optional listen address and the environment:
    /// `TOLLGATE_SERVER_POOL_SIZE`, `STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET`,
    /// `TOLLGATE_STRIPE_API_BASE`, `TOLLGATE_STRIPE_SUCCESS_URL`, `TOLLGATE_STRIPE_CANCEL_URL`,
    /// the [`Limits`] and the console's settings
    /// ([`ConsoleConfig`](crate::http::console::settings::ConsoleConfig)).
    pub fn load(
        database_url: Option<String>,
        listen: Option<String>,
        env: EnvReader<'_>,
    ) -> anyhow::Result<ServerConfig> {
        let database_url = Zeroizing::new(
            database_url
                .ok_or_else(|| anyhow!("no database: set DATABASE_URL or pass --database-url"))?,
        );
        let listen_text = listen.unwrap_or_else(|| LISTEN_DEFAULT.to_owned());
        let listen = listen_text.parse().with_context(|| {
            format!("--listen {listen_text:?} is not an address like 127.0.0.1:4200")
        })?;
        let pool_size = match env("TOLLGATE_SERVER_POOL_SIZE") {
            None => POOL_SIZE_DEFAULT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    anyhow!("TOLLGATE_SERVER_POOL_SIZE {text:?} is not a number from 1 to 1024")
                })?,
        };
        let stripe = match (env("STRIPE_SECRET_KEY"), env("STRIPE_WEBHOOK_SECRET")) {
            (None, None) => None,
            (Some(secret_key), Some(webhook_secret)) => Some(StripeConfig {
                api_base: env("TOLLGATE_STRIPE_API_BASE")
                    .unwrap_or_else(|| STRIPE_API_BASE_DEFAULT.to_owned())
                    .trim_end_matches('/')
                    .to_owned(),
                secret_key: Zeroizing::new(secret_key),
                webhook_secret: Zeroizing::new(webhook_secret),
                success_url: env("TOLLGATE_STRIPE_SUCCESS_URL")
                    .unwrap_or_else(|| "https://example.invalid/success".to_owned()),
                cancel_url: env("TOLLGATE_STRIPE_CANCEL_URL")
                    .unwrap_or_else(|| "https://example.invalid/cancel".to_owned()),
            }),
            _ => {
                return Err(anyhow!(
                    "Stripe needs both STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET (one is set)"
                ));
            }
        };
        let admin_listen = ADMIN_LISTEN_DEFAULT
            .parse()
            .context("the default admin listen address")?;
        Ok(ServerConfig {
            listen,
            admin_listen,
            database_url,
            pool_size,
            stripe,
            long_poll_max: Duration::from_millis(tollgate_schema::wire::LONG_POLL_MAX_MS),
            limits: Limits::load(env)?,
            console: crate::http::console::settings::ConsoleConfig::load(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig::load(Some("postgres://h/db".into()), None, &|_| None).unwrap()
    }

    #[test]
    fn the_admin_listener_defaults_to_loopback_and_bad_values_name_the_setting() {
        let c = config().with_admin_listen(None).unwrap();
        assert_eq!(c.admin_listen.to_string(), ADMIN_LISTEN_DEFAULT);
        let c = config()
            .with_admin_listen(Some("10.0.0.5:9201".into()))
            .unwrap();
        assert_eq!(c.admin_listen.to_string(), "10.0.0.5:9201");
        for (bad, says) in [
            ("4201", "is not an address like 127.0.0.1:4201"),
            (LISTEN_DEFAULT, "is also the listen address"),
        ] {
            let err = config()
                .with_admin_listen(Some(bad.into()))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("--admin-listen (TOLLGATE_SERVER_ADMIN_LISTEN)"),
                "{err}"
            );
            assert!(err.contains(says), "{err}");
        }
    }
}
