//! The gateway's configuration: one struct, defaults in `Default`, layered file < env < flags and
//! validated once ([`GatewayConfig::load`]). `tollgate.example.toml` at the repository root is
//! the commented reference; a test parses it, so it cannot drift from this struct.
//!
//! Guarantees: an unknown key in the file is an error naming it (a typo never silently falls back
//! to a default); every value is checked before the gateway binds a port; the upstream key comes
//! only from the file or `TOLLGATE_UPSTREAM_KEY`, never from a flag, is kept in a zeroizing
//! string and never printed (`Debug` shows `<redacted>`); a config file that holds a key must not
//! be readable by group or others.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use tollgate_schema::money::Credits;
use zeroize::Zeroizing;

use crate::ledger::Tier;

/// The largest config file read: a config is a page of TOML.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// Environment variables the gateway reads (each overrides the file).
pub const ENV_LISTEN: &str = "TOLLGATE_LISTEN";
pub const ENV_ADMIN_LISTEN: &str = "TOLLGATE_ADMIN_LISTEN";
pub const ENV_UPSTREAM: &str = "TOLLGATE_UPSTREAM";
pub const ENV_UPSTREAM_KEY: &str = "TOLLGATE_UPSTREAM_KEY";
pub const ENV_ALERT_WEBHOOK: &str = "TOLLGATE_ALERT_WEBHOOK_URL";
pub const ENV_LOG: &str = "TOLLGATE_LOG";
pub const ENV_LOG_FORMAT: &str = "TOLLGATE_LOG_FORMAT";

/// A secret kept zeroized and never printed.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Everything `tollgate serve` is configured by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address the gateway listens on: the API and `/healthz`, nothing else.
    pub listen: String,
    /// Address of the admin listener: `/metrics`, `/readyz` and `/healthz`, for the operator's
    /// monitoring, never for clients (loopback by default).
    pub admin_listen: String,
    pub upstream: UpstreamConfig,
    pub limits: LimitsConfig,
    pub pricing: PricingConfig,
    /// OpenAI-compatible base URLs for BYOK requests, by provider name.
    pub providers: BTreeMap<String, ProviderConfig>,
    pub alerts: AlertsConfig,
    pub log: LogConfig,
    pub requests: RequestsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// Request fields to forward beyond OpenAI's documented ones, by endpoint
    /// (`chat_completions`, `completions`, `embeddings`). Only add a field you know cannot
    /// change the model served or what it costs.
    pub extra_fields: BTreeMap<String, Vec<String>>,
}

impl RequestsConfig {
    /// The operator's extra fields for `endpoint`.
    pub fn extra_fields(&self, endpoint: super::request::Endpoint) -> &[String] {
        self.extra_fields
            .get(endpoint.config_name())
            .map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// LiteLLM's base URL (without `/v1`).
    pub url: String,
    /// The key tollgate presents to LiteLLM (its master or a virtual key).
    pub api_key: Option<Secret>,
    /// Connecting to the upstream.
    pub connect_timeout_ms: u64,
    /// From sending the request to the response's headers.
    pub response_timeout_secs: u64,
    /// Longest silence between two pieces of a streamed body.
    pub stream_idle_timeout_secs: u64,
    /// Longest a streamed response may last in all; it is ended (and charged for what was
    /// streamed) after this.
    pub stream_max_secs: u64,
    /// After a client hangs up mid-stream, how long to keep reading the upstream for the usage
    /// it reports (then charge that; only if none comes, an estimate).
    pub disconnect_usage_wait_secs: u64,
    /// How often to re-read what the upstream serves (`/v1/models`, LiteLLM's `/model/info`).
    pub catalog_refresh_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted (413 above).
    pub body_bytes_max: usize,
    /// Largest non-streamed upstream body read (502 above).
    pub response_bytes_max: usize,
    /// An output cap for requests that set none, below the model's own maximum; unset, such a
    /// request may use the model's maximum. When it applies, `x-tollgate-max-tokens` says so.
    pub default_max_output_tokens: Option<u32>,
    /// How long a cached API-key lookup is trusted: a revoked key stops working within this.
    pub auth_cache_ttl_ms: u64,
    /// Ledger writes waiting for the writer thread; beyond it requests get 503.
    pub write_queue_max: usize,
    /// How long a request waits in line for credit the user's other requests hold (what their
    /// settles return), before it takes what is left or is refused.
    pub admission_wait_ms: u64,
    /// Connections served at once.
    pub connections_max: usize,
    /// How long a client may take to send a request's headers (idle keep-alive included).
    pub header_read_timeout_secs: u64,
    /// How long a client may take to send a request's body.
    pub body_read_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Credits per USD of provider cost (the seed: 1 credit = 0.10 USD).
    pub credits_per_usd: Decimal,
    /// What a BYOK request is charged, as a percentage of its provider cost (0 = free).
    pub byok_fee_percent: Decimal,
    /// A markup per tier (1 = none); tiers not named here have none.
    pub tier_markup: BTreeMap<String, Decimal>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The provider's OpenAI-compatible base URL, e.g. https://api.openai.com/v1.
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Where low-balance alerts are POSTed (none: no alerts).
    pub webhook_url: Option<String>,
    /// A user's balance crossing below this (in credits) sends one alert.
    pub low_balance_threshold: Option<Credits>,
    /// Attempts per alert before it is dropped (logged).
    pub attempts_max: u32,
    /// First retry delay; each next one doubles.
    pub backoff_initial_ms: u64,
    /// Alerts waiting to be sent; beyond it new ones are dropped (logged, counted).
    pub queue_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "tollgate=debug".
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:4100".into(),
            admin_listen: "127.0.0.1:4101".into(),
            upstream: UpstreamConfig::default(),
            limits: LimitsConfig::default(),
            pricing: PricingConfig::default(),
            providers: default_providers(),
            alerts: AlertsConfig::default(),
            log: LogConfig::default(),
            requests: RequestsConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "http://127.0.0.1:4000".into(),
            api_key: None,
            connect_timeout_ms: 2_000,
            response_timeout_secs: 600,
            stream_idle_timeout_secs: 120,
            stream_max_secs: 1_800,
            disconnect_usage_wait_secs: 5,
            catalog_refresh_secs: 60,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            body_bytes_max: 4 << 20,
            response_bytes_max: 64 << 20,
            default_max_output_tokens: None,
            auth_cache_ttl_ms: 1_000,
            write_queue_max: 10_000,
            admission_wait_ms: 5_000,
            connections_max: 4_096,
            header_read_timeout_secs: 15,
            body_read_timeout_secs: 60,
        }
    }
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            credits_per_usd: Decimal::TEN,
            byok_fee_percent: Decimal::ZERO,
            tier_markup: BTreeMap::new(),
        }
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            low_balance_threshold: None,
            attempts_max: 6,
            backoff_initial_ms: 500,
            queue_max: 1_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// The providers' own OpenAI-compatible endpoints, for BYOK requests.
fn default_providers() -> BTreeMap<String, ProviderConfig> {
    [
        ("openai", "https://api.openai.com/v1"),
        ("anthropic", "https://api.anthropic.com/v1"),
        ("openrouter", "https://openrouter.ai/api/v1"),
        (
            "google",
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
        ("together", "https://api.together.xyz/v1"),
        ("deepinfra", "https://api.deepinfra.com/v1/openai"),
        ("cohere", "https://api.cohere.ai/compatibility/v1"),
    ]
    .into_iter()
    .map(|(name, url)| {
        (
            name.to_owned(),
            ProviderConfig {
                base_url: url.to_owned(),
            },
        )
    })
    .collect()
}

/// What the command line said (flags win over everything).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
}

/// A configuration error, naming the file, variable or key that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {why}", path = .path.display())]
    Read { path: PathBuf, why: String },
    #[error("config file {path}: {why}", path = .path.display())]
    Parse { path: PathBuf, why: String },
    #[error(
        "config file {path} holds the upstream key and has mode {mode:04o}: make it private (chmod 600 {path})",
        path = .path.display()
    )]
    SecretFileMode { path: PathBuf, mode: u32 },
    #[error("invalid {field}: {why}")]
    Invalid { field: String, why: String },
}

fn invalid(field: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        why: why.into(),
    }
}

impl GatewayConfig {
    /// Parses a TOML document (no env, no flags), validated.
    pub fn from_toml(text: &str, origin: &Path) -> Result<GatewayConfig, ConfigError> {
        let config: GatewayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            why: e.message().to_owned() + &span_note(text, e.span()),
        })?;
        // The built-in provider URLs stay unless the file names the provider.
        let mut merged = GatewayConfig::default().providers;
        merged.extend(config.providers);
        let config = GatewayConfig {
            providers: merged,
            ..config
        };
        config.validate()?;
        Ok(config)
    }

    /// The layered configuration: defaults, then the file (if any), then the environment (read
    /// through `env`), then the flags; validated.
    pub fn load(
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, ConfigError> {
        let mut config = match &overrides.config_file {
            Some(path) => {
                let text = read_config_file(path)?;
                let config = GatewayConfig::from_toml(&text, path)?;
                if config.upstream.api_key.is_some() {
                    check_private(path)?;
                }
                config
            }
            None => GatewayConfig::default(),
        };
        if let Some(v) = env(ENV_LISTEN) {
            config.listen = v;
        }
        if let Some(v) = env(ENV_ADMIN_LISTEN) {
            config.admin_listen = v;
        }
        if let Some(v) = env(ENV_UPSTREAM) {
            config.upstream.url = v;
        }
        if let Some(v) = env(ENV_UPSTREAM_KEY) {
            config.upstream.api_key = Some(Secret::new(v));
        }
        if let Some(v) = env(ENV_ALERT_WEBHOOK) {
            config.alerts.webhook_url = Some(v);
        }
        if let Some(v) = env(ENV_LOG) {
            config.log.level = v;
        }
        if let Some(v) = env(ENV_LOG_FORMAT) {
            config.log.format = v;
        }
        if let Some(v) = &overrides.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &overrides.admin_listen {
            config.admin_listen = v.clone();
        }
        if let Some(v) = &overrides.upstream {
            config.upstream.url = v.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value once, so the gateway never meets a bad one at request time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            invalid(
                "listen",
                format!("{:?} is not an address: {e}", self.listen),
            )
        })?;
        let admin = self
            .admin_listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                invalid(
                    "admin_listen",
                    format!(
                        "{:?} is not an address like 127.0.0.1:4101: {e}",
                        self.admin_listen
                    ),
                )
            })?;
        if admin == listen && admin.port() != 0 {
            return Err(invalid(
                "admin_listen",
                format!(
                    "{admin} is also the listen address: the admin listener (metrics, \
                     readiness) needs its own port"
                ),
            ));
        }
        check_url("upstream.url", &self.upstream.url)?;
        for (name, provider) in &self.providers {
            check_url(&format!("providers.{name}.base_url"), &provider.base_url)?;
        }
        if let Some(url) = &self.alerts.webhook_url {
            check_url("alerts.webhook_url", url)?;
            if self.alerts.low_balance_threshold.is_none() {
                return Err(invalid(
                    "alerts.low_balance_threshold",
                    "a webhook needs a threshold to alert at",
                ));
            }
        }
        if let Some(t) = self.alerts.low_balance_threshold
            && !t.is_positive()
        {
            return Err(invalid("alerts.low_balance_threshold", "must be positive"));
        }
        positive(
            "upstream.connect_timeout_ms",
            self.upstream.connect_timeout_ms,
        )?;
        positive(
            "upstream.response_timeout_secs",
            self.upstream.response_timeout_secs,
        )?;
        positive(
            "upstream.stream_idle_timeout_secs",
            self.upstream.stream_idle_timeout_secs,
        )?;
        positive("upstream.stream_max_secs", self.upstream.stream_max_secs)?;
        let life = self
            .upstream
            .response_timeout_secs
            .saturating_add(self.upstream.stream_max_secs);
        if life > 23 * 3600 {
            return Err(invalid(
                "upstream.stream_max_secs",
                "response_timeout_secs + stream_max_secs must stay under 23 hours \
                 (a hold lives at most 24)",
            ));
        }
        positive("limits.body_bytes_max", self.limits.body_bytes_max as u64)?;
        positive(
            "limits.response_bytes_max",
            self.limits.response_bytes_max as u64,
        )?;
        if let Some(n) = self.limits.default_max_output_tokens {
            positive("limits.default_max_output_tokens", u64::from(n))?;
        }
        positive(
            "upstream.disconnect_usage_wait_secs",
            self.upstream.disconnect_usage_wait_secs,
        )?;
        positive(
            "upstream.catalog_refresh_secs",
            self.upstream.catalog_refresh_secs,
        )?;
        positive("limits.connections_max", self.limits.connections_max as u64)?;
        positive(
            "limits.header_read_timeout_secs",
            self.limits.header_read_timeout_secs,
        )?;
        positive(
            "limits.body_read_timeout_secs",
            self.limits.body_read_timeout_secs,
        )?;
        for (endpoint, fields) in &self.requests.extra_fields {
            let known = super::request::Endpoint::ALL
                .iter()
                .any(|e| e.config_name() == endpoint);
            if !known {
                return Err(invalid(
                    &format!("requests.extra_fields.{endpoint}"),
                    "not an endpoint: use chat_completions, completions or embeddings",
                ));
            }
            if let Some(f) = fields.iter().find(|f| f.is_empty() || f.len() > 64) {
                return Err(invalid(
                    &format!("requests.extra_fields.{endpoint}"),
                    format!("{f:?} is not a field name"),
                ));
            }
        }
        positive("limits.write_queue_max", self.limits.write_queue_max as u64)?;
        positive("alerts.attempts_max", u64::from(self.alerts.attempts_max))?;
        positive("alerts.queue_max", self.alerts.queue_max as u64)?;
        if self.pricing.credits_per_usd <= Decimal::ZERO {
            return Err(invalid("pricing.credits_per_usd", "must be positive"));
        }
        if self.pricing.byok_fee_percent < Decimal::ZERO
            || self.pricing.byok_fee_percent > Decimal::ONE_HUNDRED
        {
            return Err(invalid(
                "pricing.byok_fee_percent",
                "must be between 0 and 100",
            ));
        }
        for (tier, markup) in &self.pricing.tier_markup {
            tier.parse::<Tier>()
                .map_err(|e| invalid(&format!("pricing.tier_markup.{tier}"), e))?;
            if *markup <= Decimal::ZERO {
                return Err(invalid(
                    &format!("pricing.tier_markup.{tier}"),
                    "must be positive",
                ));
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("{:?}: use text or json", self.log.format),
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|e| invalid("listen", format!("{e}")))
    }

    pub fn admin_listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.admin_listen
            .parse()
            .map_err(|e| invalid("admin_listen", format!("{e}")))
    }

    /// The markup for `tier` (1 when not configured).
    pub fn tier_markup(&self, tier: Tier) -> Decimal {
        self.pricing
            .tier_markup
            .get(tier.as_str())
            .copied()
            .unwrap_or(Decimal::ONE)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream.connect_timeout_ms)
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream.response_timeout_secs)
    }
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream.stream_idle_timeout_secs)
    }
    pub fn stream_max(&self) -> Duration {
        Duration::from_secs(self.upstream.stream_max_secs)
    }
    pub fn disconnect_usage_wait(&self) -> Duration {
        Duration::from_secs(self.upstream.disconnect_usage_wait_secs)
    }
    pub fn catalog_refresh(&self) -> Duration {
        Duration::from_secs(self.upstream.catalog_refresh_secs)
    }
    pub fn admission_wait(&self) -> Duration {
        Duration::from_millis(self.limits.admission_wait_ms)
    }
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.header_read_timeout_secs)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.body_read_timeout_secs)
    }

    /// How long a request's hold lives: its longest possible life (the wait for the response's
    /// headers plus the longest stream) and a minute, so it never expires under a live request,
    /// while a crashed gateway's holds free their credit soon after.
    pub fn hold_ttl(&self) -> time::Duration {
        let secs = self.upstream.response_timeout_secs
            + self.upstream.stream_max_secs
            + self.limits.admission_wait_ms / 1000
            + 60;
        time::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    pub fn auth_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.limits.auth_cache_ttl_ms)
    }
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |why: String| ConfigError::Read {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
    if meta.len() > CONFIG_FILE_BYTES_MAX {
        return Err(read_err(format!(
            "{} bytes, the limit is {CONFIG_FILE_BYTES_MAX}",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))
}

fn check_private(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::SecretFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(field, format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(field, format!("{url:?}: use http or https")));
    }
    Ok(())
}

fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(field, "must be positive"));
    }
    Ok(())
}

/// " (line N)" for a parse error's position.
fn span_note(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_example_config_parses_and_matches_the_defaults_it_documents() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tollgate.example.toml"
        ));
        let text = std::fs::read_to_string(path).unwrap();
        let config = GatewayConfig::from_toml(&text, path).unwrap();
        let defaults = GatewayConfig::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.admin_listen, defaults.admin_listen);
        assert_eq!(config.upstream.url, defaults.upstream.url);
        assert_eq!(config.limits.body_bytes_max, defaults.limits.body_bytes_max);
        assert_eq!(
            config.pricing.credits_per_usd,
            defaults.pricing.credits_per_usd
        );
        assert!(
            config.upstream.api_key.is_none(),
            "the example must not carry a key"
        );
        assert_eq!(
            config.tier_markup(Tier::Enterprise),
            "0.9".parse::<Decimal>().unwrap()
        );
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[upstream]\nurl = \"http://file:1\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            ENV_LISTEN => Some("127.0.0.1:2".to_owned()),
            ENV_UPSTREAM => Some("http://env:2".to_owned()),
            _ => None,
        };
        let mut overrides = Overrides {
            config_file: Some(path),
            ..Overrides::default()
        };
        let c = GatewayConfig::load(&overrides, &env).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.upstream.url.as_str()),
            ("127.0.0.1:2", "http://env:2")
        );
        overrides.upstream = Some("http://flag:3".into());
        let c = GatewayConfig::load(&overrides, &env).unwrap();
        assert_eq!(c.upstream.url, "http://flag:3");
        assert_eq!(c.listen, "127.0.0.1:2");
    }

    #[test]
    fn the_admin_listener_is_layered_like_listen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "admin_listen = \"127.0.0.1:9101\"\n").unwrap();
        let mut overrides = Overrides {
            config_file: Some(path),
            ..Overrides::default()
        };
        let c = GatewayConfig::load(&overrides, &no_env).unwrap();
        assert_eq!(c.admin_listen, "127.0.0.1:9101");
        let env = |k: &str| (k == ENV_ADMIN_LISTEN).then(|| "127.0.0.1:9102".to_owned());
        let c = GatewayConfig::load(&overrides, &env).unwrap();
        assert_eq!(c.admin_listen, "127.0.0.1:9102");
        overrides.admin_listen = Some("127.0.0.1:9103".into());
        let c = GatewayConfig::load(&overrides, &env).unwrap();
        assert_eq!(c.admin_listen_addr().unwrap().port(), 9103);
        assert_eq!(
            GatewayConfig::default().admin_listen,
            "127.0.0.1:4101",
            "the README documents this default"
        );
        // A bad value from the environment names the setting too.
        let bad = |k: &str| (k == ENV_ADMIN_LISTEN).then(|| "4101".to_owned());
        overrides.admin_listen = None;
        let err = GatewayConfig::load(&overrides, &bad).unwrap_err();
        assert!(err.to_string().starts_with("invalid admin_listen"), "{err}");
    }

    #[test]
    fn bad_configs_name_what_is_wrong() {
        let cases = [
            ("lisen = \"x\"", "unknown field `lisen`"),
            ("listen = \"nowhere\"", "invalid listen"),
            (
                "admin_listen = \"localhost\"",
                "invalid admin_listen: \"localhost\" is not an address",
            ),
            (
                "listen = \"127.0.0.1:4100\"\nadmin_listen = \"127.0.0.1:4100\"",
                "invalid admin_listen: 127.0.0.1:4100 is also the listen address",
            ),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            (
                "[pricing]\nbyok_fee_percent = 150",
                "pricing.byok_fee_percent",
            ),
            (
                "[pricing.tier_markup]\ngold = 2",
                "pricing.tier_markup.gold",
            ),
            (
                "[alerts]\nwebhook_url = \"http://h/x\"",
                "alerts.low_balance_threshold",
            ),
            ("[limits]\nbody_bytes_max = 0", "limits.body_bytes_max"),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[upstream]\nconnect_timeout_ms = \"soon\"", "invalid type"),
        ];
        for (text, expected) in cases {
            let err = GatewayConfig::from_toml(text, Path::new("c.toml")).unwrap_err();
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_key_in_a_readable_file_is_refused_and_never_printed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[upstream]\napi_key = \"sk-very-secret\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let overrides = Overrides {
            config_file: Some(path.clone()),
            ..Overrides::default()
        };
        let err = GatewayConfig::load(&overrides, &no_env).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = GatewayConfig::load(&overrides, &no_env).unwrap();
        assert!(!format!("{config:?}").contains("sk-very-secret"));
        assert_eq!(config.upstream.api_key.unwrap().expose(), "sk-very-secret");
    }
}
