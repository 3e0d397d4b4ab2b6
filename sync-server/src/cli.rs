//! The command line, as clap types only: what each command and flag is. What they do is in
//! `commands/`. Values needing checks (amounts, tiers, roles) arrive as text and are parsed there.

use clap::{Args, Parser, Subcommand};

/// tollgate-server: the central server for tollgate agents (sync, admin, reconcile, Stripe).
#[derive(Debug, Parser)]
#[command(name = "tollgate-server", version, about, max_term_width = 100)]
pub struct Cli {
    /// PostgreSQL connection URL, e.g. postgres://tollgate@127.0.0.1/tollgate. Prefer the
    /// environment variable: a password in a flag is visible to every local user.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: sync endpoints, admin API, Stripe webhook and health on --listen;
    /// metrics and readiness on --admin-listen.
    Serve(ServeArgs),
    /// Apply the database migrations (safe to run again, and from several replicas at once).
    Migrate,
    /// Agents: enrol (one-time token), list with their lag, revoke, release from quarantine.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Admin API tokens: create (read or full role), list, revoke.
    #[command(subcommand, name = "admin-tokens")]
    AdminTokens(AdminTokensCommand),
    /// Users across agents: list with balances, create or change (sent to the agents that serve
    /// them).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Grant, refund or adjust a user's credit centrally (idempotent by operation id).
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Credit packages that can be bought.
    #[command(subcommand)]
    Packages(ListCommand),
    /// Power levels: how each routes and prices requests.
    #[command(subcommand, name = "power-levels")]
    PowerLevels(ListCommand),
    /// Recompute every balance from the central journal, compare with the agents, check the
    /// chains and the exactly-once invariants; list every difference. Exit 1 on any difference.
    Reconcile,
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: tollgate_cli_docs::Shell,
    },
    /// Print the man page tollgate-server(1) to stdout, or with --out-dir write it and one page
    /// per subcommand there.
    Man {
        /// Write tollgate-server.1, tollgate-server-serve.1, … into DIR (created if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:4200] [env: TOLLGATE_SERVER_LISTEN].
    #[arg(long, env = "TOLLGATE_SERVER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of the admin listener: /metrics, /readyz and /healthz [default: 127.0.0.1:4201]
    /// [env: TOLLGATE_SERVER_ADMIN_LISTEN].
    #[arg(long, env = "TOLLGATE_SERVER_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Register an agent NAME and print a one-time enrolment token for `tollgate enroll`.
    Enroll {
        name: String,
        /// How long the token stays valid, in minutes.
        #[arg(long, default_value_t = 60)]
        ttl_minutes: u32,
    },
    /// Every agent: status, incarnation, acknowledged head, reported head, lag, inbox.
    List,
    /// Revoke an agent: its credential is refused from now on.
    Revoke { name: String },
    /// Release a quarantined agent after an admin has looked at its conflicting entry.
    Release { name: String },
    /// Drop inbox events the agent has acknowledged (keeps the newest KEEP of them).
    PruneInbox {
        name: String,
        #[arg(long, default_value_t = 0)]
        keep: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminTokensCommand {
    /// Create a token NAME with a role (read: every GET; full: writes too); printed once.
    Create {
        name: String,
        #[arg(long, default_value = "read")]
        role: String,
    },
    List,
    Revoke {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Every user known centrally: home agent, balance, tier, power level.
    List,
    /// One user: settings, balance, who holds it, spend this month, pending central credit.
    Show { user_id: String },
    /// Create a user (homed on agent HOME, or without --home a fleet user served by every agent
    /// from grants of their pool), or change one; only the settings named change, and they
    /// reach the agents that serve the user.
    Set(UserSetArgs),
    /// API keys for a user, made here and sent (hashes only) to the agents that serve the user.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Make a key for USER and print it once (`tg_…`); only its hash is kept and sent.
    Create {
        user_id: String,
        /// A label to tell keys apart.
        #[arg(long)]
        name: String,
    },
    /// List USER's keys (id, prefix, dates), never the keys themselves.
    List { user_id: String },
    /// Revoke a key by its id (key_…), on every agent.
    Revoke { key_id: String },
}

#[derive(Debug, Args)]
pub struct UserSetArgs {
    pub user_id: String,
    /// The agent (by name) that holds this user's balance. Left out: a new user is a fleet user
    /// (every agent serves them, spending grants of their central pool); an existing user keeps
    /// what they are.
    #[arg(long, conflicts_with = "fleet")]
    pub home: Option<String>,
    /// Make the user a fleet user: a new one (as without --home), or a home user, whose home
    /// agent returns their balance to a central pool once it applies the change.
    #[arg(long)]
    pub fleet: bool,
    /// Unless given, unchanged (a new user: trial).
    #[arg(long)]
    pub tier: Option<String>,
    /// Unless given, unchanged (a new user: the tier's default level).
    #[arg(long)]
    pub power_level: Option<String>,
    /// Credits; unless given, unchanged (a new user: 0).
    #[arg(long)]
    pub monthly_allowance: Option<String>,
    /// Credits, or "none" for no cap; unless given, unchanged (a new user: no cap).
    #[arg(long)]
    pub monthly_spend_cap: Option<String>,
    /// A fleet user's overdraft line: credits an agent cut off from the server may spend for
    /// them beyond its grants (once per grant), booked as their debt; or "none". Unless given,
    /// unchanged (a new user: none).
    #[arg(long)]
    pub overdraft: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Add credit (a bonus grant).
    Grant(CreditArgs),
    /// Give credit back (a refund).
    Refund(CreditArgs),
    /// Adjust by a signed amount (negative takes credit away, if the balance covers it).
    Adjust(CreditArgs),
}

#[derive(Debug, Args)]
pub struct CreditArgs {
    pub user_id: String,
    /// Exact decimal credits, e.g. 12.5 (adjust may be negative: use `-- -3`).
    pub amount: String,
    /// Idempotency key: the same id with the same content is a no-op; with different content, a
    /// conflict.
    #[arg(long)]
    pub operation_id: String,
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    List,
}
