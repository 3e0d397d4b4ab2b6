//! The command line, as clap types only: what each command and flag is, nothing of what it does
//! (that is in `commands/`). Values that need checking (amounts, tiers, levels) arrive as text and
//! are parsed by the commands, so every bad value gets the same one-line error shape.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// tollgate: prepaid credit metering for LLM traffic, enforced on this host.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, max_term_width = 100)]
pub struct Cli {
    /// Where tollgate keeps its database and master key [default: the platform data dir, e.g.
    /// ~/.local/share/tollgate].
    #[arg(long, global = true, env = "TOLLGATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data dir, the database and the master key file (0600). Safe to run again.
    Init,
    /// Show tollgate at work in a temporary data dir: a user, credit, metered requests, the books.
    Demo,
    /// Users: their balance, tier, power level, allowance and spend cap; their API keys.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Credit: add, debit, balance, history, bulk import.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Credit packages that can be bought.
    #[command(subcommand)]
    Packages(ListOnly),
    /// Power levels: how each routes and prices requests.
    #[command(subcommand, name = "power-levels")]
    PowerLevels(ListOnly),
    /// Users' own provider keys (BYOK), encrypted at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Recompute every balance from the journal and check every invariant; exit 1 on a violation.
    Verify,
    /// Run the metering gateway: an OpenAI-compatible API in front of LiteLLM.
    Serve(ServeArgs),
    /// The price table tollgate charges by: list it, import LiteLLM's price map.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Usage reports from the request log.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Enrol this agent with a sync server: trade a one-time token for the agent's credential,
    /// kept in <data dir>/sync.toml (0600). `serve` then syncs in the background.
    Enroll(EnrollArgs),
    /// Sync with the server: its status, or one push and pull now.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: tollgate_cli_docs::Shell,
    },
    /// Print the man page tollgate(1) to stdout, or with --out-dir write it and one page per
    /// subcommand there.
    Man {
        /// Write tollgate.1, tollgate-serve.1, … into DIR (created if missing) instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The sync server's base URL, e.g. https://tollgate.example.com.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The one-time enrolment token from the server's admin, spent by this call ("-": read it
    /// from stdin, which keeps it out of the process list).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TOLLGATE_ENROLL_TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    /// Enrol again although this agent is enrolled: with a token for the same agent, a new
    /// credential (the old one stops working). A token for another agent is refused once this
    /// database's entries are stored centrally (they belong to the first agent).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Heads, lag, inbox cursor, last push and pull, last error.
    Status,
    /// Push until the server has every entry, then apply the whole inbox; exit 1 on failure.
    Now,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The gateway's configuration file (TOML; see tollgate.example.toml) [env: TOLLGATE_CONFIG].
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on: the API and /healthz [default: 127.0.0.1:4100] [env:
    /// TOLLGATE_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of the admin listener: /metrics, /readyz and /healthz [default: 127.0.0.1:4101]
    /// [env: TOLLGATE_ADMIN_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// LiteLLM's base URL [default: http://127.0.0.1:4000] [env: TOLLGATE_UPSTREAM]. The upstream
    /// key comes from the config file or TOLLGATE_UPSTREAM_KEY, never from a flag.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// The active price table: per model, provider and USD per million input / output tokens.
    List,
    /// Import LiteLLM's price map (model_prices_and_context_window.json) as a new table version.
    /// Entries that cannot be read are skipped and listed.
    Import {
        file: PathBuf,
        /// Refuse the whole file if any entry cannot be read (nothing is stored).
        #[arg(long)]
        strict: bool,
    },
    /// One model's prices in every dimension (a name, an alias, or a provider-prefixed name).
    Show { model: String },
    /// Set a model's prices (USD per million tokens; fees in USD) as a new table version. A model
    /// not in the table needs --provider, --input and --output.
    Set(Box<PriceSetArgs>),
    /// Charge NAME as MODEL (e.g. a name your upstream serves that the price map spells
    /// differently), as a new table version.
    Alias { name: String, model: String },
    /// Every stored table version, newest (active) first.
    Versions,
    /// Make an earlier version, or `builtin`, the active table again (stored as a new version,
    /// a copy: history is never rewritten).
    Use { version: String },
}

/// `prices set`: every price is optional; what is not given stays as it is.
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct PriceSetArgs {
    pub model: String,
    /// USD per million input tokens.
    #[arg(long, value_name = "USD")]
    pub input: Option<String>,
    /// USD per million output tokens.
    #[arg(long, value_name = "USD")]
    pub output: Option<String>,
    /// USD per million prompt tokens read from the provider's cache.
    #[arg(long, value_name = "USD")]
    pub cache_read: Option<String>,
    /// USD per million prompt tokens written to the cache.
    #[arg(long, value_name = "USD")]
    pub cache_write: Option<String>,
    /// USD per million reasoning tokens (default: the output price).
    #[arg(long, value_name = "USD")]
    pub reasoning: Option<String>,
    /// USD per million audio input tokens.
    #[arg(long, value_name = "USD")]
    pub audio_input: Option<String>,
    /// USD per million audio output tokens.
    #[arg(long, value_name = "USD")]
    pub audio_output: Option<String>,
    /// A fee per request, in USD.
    #[arg(long, value_name = "USD")]
    pub per_request: Option<String>,
    /// The provider (openai, anthropic, openrouter, google, …); needed for a new model.
    #[arg(long)]
    pub provider: Option<String>,
    /// chat, completion, embedding or responses [default for a new model: chat].
    #[arg(long)]
    pub mode: Option<String>,
    /// The model's own output limit, in tokens.
    #[arg(long, value_name = "TOKENS")]
    pub max_output_tokens: Option<u32>,
    /// 0-100, for the aliases auto / eco / balanced / precision.
    #[arg(long, value_name = "SCORE")]
    pub quality: Option<u8>,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Requests, tokens, credits and latency, grouped.
    Report {
        /// Only this user's requests.
        #[arg(long)]
        user: Option<String>,
        /// Only requests newer than this (e.g. 30m, 24h, 7d) [default: all].
        #[arg(long, value_name = "DUR")]
        since: Option<String>,
        /// model, provider, day or level.
        #[arg(long, default_value = "model")]
        by: String,
        /// table, json or csv (--json is the same as --format json).
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ListOnly {
    /// List them.
    List,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user.
    Add {
        user: String,
        #[command(flatten)]
        settings: UserSettings,
    },
    /// List every user with balance, tier and level.
    List,
    /// Show one user: balance, holds, tier, level, allowance, quota usage.
    Show { user: String },
    /// Change a user's settings.
    Set {
        user: String,
        #[command(flatten)]
        settings: UserSettings,
        /// Renew the monthly allowance automatically (true/false).
        #[arg(long, value_name = "BOOL")]
        auto_renew: Option<String>,
    },
    /// API keys that let the user call the gateway.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Args)]
pub struct UserSettings {
    /// free, trial, starter, professional or enterprise [default for a new user: trial].
    #[arg(long, value_name = "TIER")]
    pub tier: Option<String>,
    /// eco, balanced or precision [default for a new user: balanced].
    #[arg(long, value_name = "LEVEL")]
    pub power_level: Option<String>,
    /// Credits granted each billing month, expiring at the month's end.
    #[arg(long, value_name = "CREDITS", allow_negative_numbers = true)]
    pub monthly_allowance: Option<String>,
    /// Most credits the user may spend in a billing month ("none" removes the cap).
    #[arg(long, value_name = "CREDITS", allow_negative_numbers = true)]
    pub monthly_cap: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key for USER and print it once; only its hash is kept.
    Create {
        user: String,
        /// A label to tell keys apart.
        #[arg(long)]
        name: Option<String>,
    },
    /// List USER's keys (id, prefix, dates), never the keys themselves.
    List { user: String },
    /// Revoke a key by its id (key_…).
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Add credit to USER (AMOUNT in credits, e.g. 12.5; an admin_adjustment may be negative).
    #[command(allow_negative_numbers = true)]
    Add {
        user: String,
        amount: String,
        /// purchase, bonus, refund or admin_adjustment.
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        /// The credit package bought (a purchase of exactly its credits).
        #[arg(long, value_name = "NAME")]
        package: Option<String>,
        /// Makes a retry safe: the same key and content give the original result, never twice.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// With --type refund: the debit entry being refunded; the credit returns to its lots.
        #[arg(long, value_name = "ENTRY_ID")]
        refund_of: Option<String>,
        /// When this credit expires (RFC 3339); purchased credit does not expire by default.
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// Take AMOUNT credits from USER (refused if it would overdraw or pass the spend cap).
    #[command(allow_negative_numbers = true)]
    Debit {
        user: String,
        amount: String,
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// USER's balance, open holds and available credit.
    Balance { user: String },
    /// USER's journal, newest first.
    History {
        user: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Apply credit operations from JSON lines (FILE, or - for stdin), group-committed; prints
    /// one result line per operation once it is durable.
    Import {
        file: PathBuf,
        /// Operations per transaction.
        #[arg(long, default_value_t = 100, value_name = "N")]
        batch_size: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Store USER's provider key; the key is read from stdin (or a hidden prompt), never argv.
    Add {
        user: String,
        /// openai, anthropic, openrouter, google, cohere, together, anyscale, deepinfra or custom.
        #[arg(long)]
        provider: String,
        /// A name for this key, unique per user and provider.
        #[arg(long)]
        name: String,
        /// Use this key for USER's requests to PROVIDER.
        #[arg(long)]
        default: bool,
    },
    /// List USER's keys: provider, name, last four characters and fingerprint only.
    List { user: String },
    /// Remove one of USER's keys.
    Remove {
        user: String,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        name: String,
    },
    /// Re-encrypt every stored key under a new master key, in one transaction.
    RotateMaster,
}
