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
    /// Fleet users' threshold alerts; `None` when no webhook is configured.
    pub alerts: Option<AlertsConfig>,
}

/// Most allowance thresholds one may configure.
pub const ALLOWANCE_THRESHOLDS_MAX: usize = 16;

/// Fleet users' threshold alerts (`TOLLGATE_SERVER_ALERT_*`; see `crate::alerts`).
#[derive(Clone)]
pub struct AlertsConfig {
    /// `TOLLGATE_SERVER_ALERT_WEBHOOK_URL` (may hold a secret: never printed).
    pub webhook_url: Zeroizing<String>,
    /// `TOLLGATE_SERVER_ALERT_ALLOWANCE_THRESHOLDS`: percentages, comma-separated (`none`: off).
    pub allowance_thresholds: Vec<u32>,
    /// `TOLLGATE_SERVER_ALERT_LOW_BALANCE`: credits; unset: off.
    pub low_balance_threshold: Option<tollgate_schema::money::Credits>,
    /// `TOLLGATE_SERVER_ALERT_ATTEMPTS_MAX`.
    pub attempts_max: u32,
    /// `TOLLGATE_SERVER_ALERT_BACKOFF_INITIAL_MS`: the first retry's delay, doubling after.
    pub backoff_initial: Duration,
    /// `TOLLGATE_SERVER_ALERT_POLL_MS`: how often each replica looks for alerts to send.
    pub poll_interval: Duration,
}

impl fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertsConfig")
            .field("webhook_url", &"<redacted>")
            .field("allowance_thresholds", &self.allowance_thresholds)
            .field("low_balance_threshold", &self.low_balance_threshold)
            .field("attempts_max", &self.attempts_max)
            .field("backoff_initial", &self.backoff_initial)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl AlertsConfig {
    /// From the environment; `None` without `TOLLGATE_SERVER_ALERT_WEBHOOK_URL`.
    fn load(env: EnvReader<'_>) -> anyhow::Result<Option<AlertsConfig>> {
        let Some(url) = env("TOLLGATE_SERVER_ALERT_WEBHOOK_URL") else {
            return Ok(None);
        };
        let url = Zeroizing::new(url);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(anyhow!(
                "TOLLGATE_SERVER_ALERT_WEBHOOK_URL is not an http:// or https:// URL"
            ));
        }
        let allowance_thresholds = match env("TOLLGATE_SERVER_ALERT_ALLOWANCE_THRESHOLDS") {
            None => vec![50, 80, 100],
            Some(text) if text.trim() == "none" => Vec::new(),
            Some(text) => {
                let parsed: Option<Vec<u32>> = text
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<u32>()
                            .ok()
                            .filter(|p| (1..=1_000).contains(p))
                    })
                    .collect();
                let list = parsed.filter(|l| {
                    l.len() <= ALLOWANCE_THRESHOLDS_MAX && l.windows(2).all(|w| w[0] < w[1])
                });
                list.ok_or_else(|| {
                    anyhow!(
                        "TOLLGATE_SERVER_ALERT_ALLOWANCE_THRESHOLDS {text:?} is not a list of \
                         percentages from 1 to 1000, increasing, at most \
                         {ALLOWANCE_THRESHOLDS_MAX} (like 50,80,100), or none"
                    )
                })?
            }
        };
        let low_balance_threshold = match env("TOLLGATE_SERVER_ALERT_LOW_BALANCE") {
            None => None,
            Some(text) => Some(
                text.parse::<tollgate_schema::money::Credits>()
                    .ok()
                    .filter(|c| c.is_positive())
                    .ok_or_else(|| {
                        anyhow!(
                            "TOLLGATE_SERVER_ALERT_LOW_BALANCE {text:?} is not a positive amount \
                             of credits"
                        )
                    })?,
            ),
        };
        if allowance_thresholds.is_empty() && low_balance_threshold.is_none() {
            return Err(anyhow!(
                "TOLLGATE_SERVER_ALERT_WEBHOOK_URL is set but nothing would be sent: set \
                 TOLLGATE_SERVER_ALERT_LOW_BALANCE or allowance thresholds"
            ));
        }
        let number = |name: &str, default: u64, range| env_number(env, name, default, range);
        Ok(Some(AlertsConfig {
            webhook_url: url,
            allowance_thresholds,
            low_balance_threshold,
            attempts_max: u32::try_from(number("TOLLGATE_SERVER_ALERT_ATTEMPTS_MAX", 6, 1..=100)?)?,
            backoff_initial: Duration::from_millis(number(
                "TOLLGATE_SERVER_ALERT_BACKOFF_INITIAL_MS",
                500,
                1..=3_600_000,
            )?),
            poll_interval: Duration::from_millis(number(
                "TOLLGATE_SERVER_ALERT_POLL_MS",
                1_000,
                10..=600_000,
            )?),
        }))
    }
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
    /// `TOLLGATE_SERVER_RECONCILE_INTERVAL_SECS`: run reconcile every this long on this replica
    /// and show its differences on `/metrics` (0, the default: never).
    pub reconcile_interval: Duration,
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
            reconcile_interval: Duration::ZERO,
        }
    }
}

/// The number in variable `name` (`default` when unset), which must lie in `range`.
fn env_number(
    env: EnvReader<'_>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<u64> {
    match env(name) {
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
    }
}

impl Limits {
    /// The defaults, each changed by its `TOLLGATE_SERVER_*` variable if set.
    fn load(env: EnvReader<'_>) -> anyhow::Result<Limits> {
        let number = |name: &str, default: u64, range| env_number(env, name, default, range);
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
            reconcile_interval: Duration::from_secs(number(
                "TOLLGATE_SERVER_RECONCILE_INTERVAL_SECS",
                d.reconcile_interval.as_secs(),
                0..=604_800,
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
            .field("alerts", &self.alerts)
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
            alerts: AlertsConfig::load(env)?,
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
    fn alerts_are_off_without_a_webhook_and_bad_values_name_the_setting() {
        assert!(config().alerts.is_none());
        let with = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            ServerConfig::load(Some("postgres://h/db".into()), None, &move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let url = (
            "TOLLGATE_SERVER_ALERT_WEBHOOK_URL",
            "http://hooks/secret-path",
        );
        let on = with(&[url]).unwrap();
        let alerts = on.alerts.as_ref().unwrap();
        assert_eq!(alerts.allowance_thresholds, [50, 80, 100]);
        assert_eq!(alerts.low_balance_threshold, None);
        assert!(
            !format!("{on:?}").contains("secret-path"),
            "the URL is redacted"
        );
        let set = with(&[
            url,
            ("TOLLGATE_SERVER_ALERT_ALLOWANCE_THRESHOLDS", "75, 90"),
            ("TOLLGATE_SERVER_ALERT_LOW_BALANCE", "2.5"),
        ])
        .unwrap();
        let alerts = set.alerts.unwrap();
        assert_eq!(alerts.allowance_thresholds, [75, 90]);
        assert_eq!(alerts.low_balance_threshold.unwrap().to_string(), "2.5");
        for (bad, says) in [
            (
                ("TOLLGATE_SERVER_ALERT_ALLOWANCE_THRESHOLDS", "80,50"),
                "increasing",
            ),
            (
                ("TOLLGATE_SERVER_ALERT_ALLOWANCE_THRESHOLDS", "0"),
                "from 1 to 1000",
            ),
            (
                ("TOLLGATE_SERVER_ALERT_ALLOWANCE_THRESHOLDS", "none"),
                "nothing would be sent",
            ),
            (
                ("TOLLGATE_SERVER_ALERT_LOW_BALANCE", "-1"),
                "positive amount",
            ),
            (("TOLLGATE_SERVER_ALERT_ATTEMPTS_MAX", "0"), "from 1 to 100"),
        ] {
            let err = with(&[url, bad]).unwrap_err().to_string();
            assert!(err.contains(bad.0) || err.contains("WEBHOOK_URL"), "{err}");
            assert!(err.contains(says), "{err}");
        }
        let err = with(&[("TOLLGATE_SERVER_ALERT_WEBHOOK_URL", "ftp://x")]).unwrap_err();
        assert!(err.to_string().contains("not an http"), "{err}");
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
