//! `tollgate enroll`, `tollgate sync status` and `tollgate sync now`: command glue over
//! `sync` (the file, the client, one cycle) and the ledger's sync state.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{Ctx, done, output};
use crate::cli::{EnrollArgs, SyncCommand};
use crate::gateway::config::Secret;
use crate::ledger::clock::from_text;
use crate::ledger::{LedgerError, SyncStatus};
use crate::sync::config::{check_credential, server_url};
use crate::sync::{SyncClient, SyncConfig, Syncer};
use tollgate_schema::wire::{ENROLL_USERS_MAX, UserSettings};

/// The most bytes read from stdin for a token (a token is at most `TOKEN_LEN_MAX`).
const TOKEN_INPUT_BYTES_MAX: u64 = 4 * 1024;

pub fn run(ctx: &Ctx, cmd: SyncCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SyncCommand::Status => status(ctx),
        SyncCommand::Now => now(ctx),
    }
}

#[derive(Debug, Serialize)]
struct Enrolled {
    server: String,
    agent_id: String,
    agent_name: String,
    credential_file: String,
}

/// The users this agent has, with their settings, for the server to adopt at enrolment.
fn adopted_users(ledger: &mut crate::ledger::Ledger) -> anyhow::Result<Vec<UserSettings>> {
    let accounts = ledger.accounts()?;
    if accounts.len() > ENROLL_USERS_MAX {
        bail!(
            "this agent has {} users; an enrolment brings at most {ENROLL_USERS_MAX}",
            accounts.len()
        );
    }
    Ok(accounts
        .into_iter()
        .map(|a| UserSettings {
            user_id: a.user_id,
            tier: a.tier.to_string(),
            power_level: a.power_level.to_string(),
            monthly_allowance: a.monthly_allowance,
            monthly_spend_cap: a.monthly_spend_cap,
            fleet: false,
        })
        .collect())
}

pub fn enroll(ctx: &Ctx, args: EnrollArgs) -> anyhow::Result<ExitCode> {
    let mut ledger = ctx.ledger()?;
    let path = ctx.data_dir.sync_config();
    let identity = ledger.sync_identity()?;
    if !args.force && (path.exists() || identity.agent_id.is_some()) {
        let which = match SyncConfig::load(&path) {
            Ok(Some(config)) => format!(" as agent {} with {}", config.agent_id, config.server),
            _ => identity
                .agent_id
                .map(|id| format!(" as agent {id}"))
                .unwrap_or_default(),
        };
        bail!(
            "this agent is already enrolled{which}; pass --force to enrol it again as a new agent \
             (its whole journal is then pushed again)"
        );
    }
    let server = server_url(&args.server)?;
    let users = adopted_users(&mut ledger)?;
    let token = read_token(&args.token)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let answer = runtime
        .block_on(SyncClient::enroll(
            &server,
            &token,
            &identity.incarnation,
            users,
        ))
        .with_context(|| format!("enrolling with {server}"))?;
    let agent_name = answer.agent_name;
    if let Some(previous) = identity.agent_id.as_deref()
        && previous != answer.agent_id
        && identity.acked_seq > 0
    {
        // Re-enrolled as another agent: its entries are already stored under the previous one,
        // and pushing them again as a new agent's would be refused as duplicates (quarantine).
        bail!(
            "the server enrolled this database as a new agent ({agent_name}, {}), but its \
             entries 1..={} are already stored under agent {previous}; nothing was changed here. \
             Ask the server's admin for a token for the same agent (`tollgate-server agents \
             enroll <its name>` issues one), or enrol a new database (`tollgate init` in a new \
             data dir) as the new agent",
            answer.agent_id,
            identity.acked_seq
        );
    }
    let config = SyncConfig::new(&server, &answer.agent_id, Secret::new(answer.credential))
        .context("the server's enrolment answer")?;
    config.save(&path).context(
        "the enrolment token is spent: ask the server's admin for a new one once this is fixed",
    )?;
    ledger.set_agent_id(&config.agent_id)?;
    let report = Enrolled {
        server: config.server.clone(),
        agent_id: config.agent_id.clone(),
        agent_name,
        credential_file: path.display().to_string(),
    };
    if ctx.json {
        return done(output::json(&report));
    }
    done(output::fields(&[
        (
            "enrolled as",
            format!("{} ({})", report.agent_name, report.agent_id),
        ),
        ("server", report.server),
        (
            "credential file",
            format!("{} (0600)", report.credential_file),
        ),
        (
            "next",
            "`tollgate serve` syncs in the background; `tollgate sync now` syncs once".to_owned(),
        ),
    ]))
}

/// The token from the argument, or from stdin when it is `-`; checked, never echoed.
fn read_token(arg: &str) -> anyhow::Result<Secret> {
    let token = if arg == "-" {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin()
            .take(TOKEN_INPUT_BYTES_MAX)
            .read_to_string(&mut text)
            .context("reading the enrolment token from stdin")?;
        Secret::new(text.trim().to_owned())
    } else {
        Secret::new(arg.trim().to_owned())
    };
    if token.expose().is_empty() {
        bail!(
            "no enrolment token given (pass --token TOKEN, --token - with the token on stdin, or TOLLGATE_ENROLL_TOKEN)"
        );
    }
    check_credential("enrolment token", token.expose())?;
    Ok(token)
}

/// What `sync status` prints.
#[derive(Debug, Serialize)]
struct StatusView {
    enrolled: bool,
    server: Option<String>,
    #[serde(flatten)]
    status: SyncStatus,
    /// Seconds since the oldest entry not yet acknowledged was written.
    oldest_unacked_age_secs: Option<i64>,
    /// Inbox events the server holds that are not applied here yet (as of the last pull).
    inbox_behind: i64,
}

fn status(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ledger = ctx.ledger()?;
    let config = SyncConfig::load(&ctx.data_dir.sync_config())?;
    let mut status = ledger.sync_status()?;
    if let Some(config) = &config {
        // The file is what serve and `sync now` use (and record in the database when they run).
        status.agent_id = Some(config.agent_id.clone());
    }
    let now = OffsetDateTime::now_utc();
    let view = StatusView {
        enrolled: config.is_some(),
        server: config.map(|c| c.server),
        oldest_unacked_age_secs: status
            .oldest_unacked_at
            .as_deref()
            .and_then(|at| from_text(at).ok())
            .map(|at| (now - at).whole_seconds().max(0)),
        inbox_behind: (status.server_inbox_head - status.inbox_cursor).max(0),
        status,
    };
    if ctx.json {
        return done(output::json(&view));
    }
    let s = &view.status;
    let mut rows = vec![(
        "enrolled",
        if view.enrolled {
            "yes".to_owned()
        } else {
            "no: this agent is not enrolled with a sync server and runs standalone; run \
             `tollgate enroll --server URL --token TOKEN` to sync"
                .to_owned()
        },
    )];
    if let (Some(server), Some(agent)) = (&view.server, &s.agent_id) {
        rows.push(("server", server.clone()));
        rows.push(("agent id", agent.clone()));
    }
    rows.push(("incarnation", s.incarnation.clone()));
    rows.push(("journal head", format!("seq {}", s.head_seq)));
    rows.push((
        "acknowledged",
        format!("seq {} ({} entries behind)", s.acked_seq, s.unacked_entries),
    ));
    rows.push((
        "oldest unacked",
        match (&s.oldest_unacked_at, view.oldest_unacked_age_secs) {
            (Some(at), Some(age)) => format!("{at} ({age} s ago)"),
            (Some(at), None) => at.clone(),
            (None, _) => "-".to_owned(),
        },
    ));
    rows.push((
        "inbox",
        format!(
            "cursor {} of server head {} ({} behind)",
            s.inbox_cursor, s.server_inbox_head, view.inbox_behind
        ),
    ));
    rows.push(("last push", output::or_dash(s.last_push_at.as_deref())));
    rows.push(("last pull", output::or_dash(s.last_pull_at.as_deref())));
    rows.push((
        "last error",
        match (&s.last_error, &s.last_error_at) {
            (Some(error), Some(at)) => format!("{at}: {error}"),
            (Some(error), None) => error.clone(),
            (None, _) => "-".to_owned(),
        },
    ));
    done(output::fields(&rows))
}

fn now(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let config = SyncConfig::load(&ctx.data_dir.sync_config())?.ok_or(LedgerError::NotEnrolled)?;
    let syncer = Syncer::new(ctx.ledger()?, &config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime
        .block_on(syncer.sync_once())
        .with_context(|| format!("syncing with {}", config.server))?;
    if ctx.json {
        return done(output::json(&report));
    }
    let (push, pull) = (&report.push, &report.pull);
    let mut rows = vec![
        (
            "pushed",
            format!(
                "{} entries in {} pushes; acknowledged up to seq {} of head {}",
                push.entries, push.batches, push.acked_seq, push.head_seq
            ),
        ),
        (
            "pulled",
            format!(
                "{} events applied, {} refused, {} already applied; inbox cursor {} of head {}",
                pull.applied, pull.refused, pull.already_applied, pull.cursor, pull.server_head
            ),
        ),
    ];
    if let Some(snapshot) = &pull.snapshot {
        rows.push((
            "snapshot",
            format!(
                "{} users, {} packages, {} power levels ({} refused); cursor {} -> {}",
                snapshot.users,
                snapshot.packages,
                snapshot.power_levels,
                snapshot.refused.len(),
                snapshot.previous_cursor,
                snapshot.cursor
            ),
        ));
    }
    done(output::fields(&rows))
}
