//! `tollgate users …`: add, list, show, set, and API keys. On an enrolled agent, `add` and `set`
//! are refused with where to make the change (the server governs users).

use std::process::ExitCode;

use anyhow::anyhow;
use tollgate_schema::money::Credits;

use super::{Ctx, done, output, parse_amount, parse_choice, parse_opt};
use crate::cli::{ApiKeyCommand, UserSettings, UsersCommand};
use crate::ledger::{NewUser, PowerLevel, Tier, UserAccount, UserChanges};
use crate::sync::config::SyncConfig;

pub fn run(ctx: &Ctx, cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UsersCommand::Add { user, settings } => {
            governed_here(ctx, Governed::Settings("users add"))?;
            add(ctx, user, &settings)
        }
        UsersCommand::List => list(ctx),
        UsersCommand::Show { user } => {
            let account = ctx.ledger()?.account(&user)?;
            show(ctx, &account)
        }
        UsersCommand::Set {
            user,
            settings,
            auto_renew,
        } => {
            governed_here(ctx, Governed::Settings("users set"))?;
            set(ctx, &user, &settings, auto_renew)
        }
        UsersCommand::ApiKey(cmd) => api_key(ctx, cmd),
    }
}

/// What the server governs once an agent is enrolled (SYNC.md "Who governs what"): a local
/// change would silently diverge from it, so it is refused, saying where to make it.
enum Governed {
    /// Users and their settings (`users add`, `users set`).
    Settings(&'static str),
    /// API keys (`users api-key create`).
    ApiKeys,
}

/// Refuses a change the server governs on an enrolled agent; does nothing on a standalone one.
fn governed_here(ctx: &Ctx, what: Governed) -> anyhow::Result<()> {
    let Some(sync) = SyncConfig::load(&ctx.data_dir.sync_config())? else {
        return Ok(());
    };
    let (command, governs, instead) = match what {
        Governed::Settings(command) => (
            command,
            "users and their settings",
            "make the change there (`tollgate-server users set USER --home AGENT …`) and it \
             reaches this agent through its inbox",
        ),
        Governed::ApiKeys => (
            "users api-key create",
            "API keys",
            "make the key there (`tollgate-server users api-key create USER --name NAME`) and \
             its hash reaches this agent within seconds",
        ),
    };
    Err(anyhow!(
        "`tollgate {command}` is refused on an enrolled agent: this agent ({}) syncs with {}, \
         which governs {governs}; {instead}",
        sync.agent_id,
        sync.server
    ))
}

/// A spend cap argument: an amount, or "none" for no cap.
fn parse_cap(text: &str) -> anyhow::Result<Option<Credits>> {
    if text.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse_amount(text, "--monthly-cap").map(Some)
    }
}

fn changes(settings: &UserSettings) -> anyhow::Result<UserChanges> {
    Ok(UserChanges {
        tier: parse_opt(settings.tier.as_deref(), |t| {
            parse_choice::<Tier>(t, "--tier")
        })?,
        power_level: parse_opt(settings.power_level.as_deref(), |l| {
            parse_choice::<PowerLevel>(l, "--power-level")
        })?,
        monthly_allowance: parse_opt(settings.monthly_allowance.as_deref(), |a| {
            parse_amount(a, "--monthly-allowance")
        })?,
        monthly_spend_cap: parse_opt(settings.monthly_cap.as_deref(), parse_cap)?,
        auto_renew: None,
    })
}

/// The level a new user of `tier` runs at unless told (the shared rule).
fn default_level(tier: Tier) -> PowerLevel {
    tier.default_power_level()
}

/// Refuses a level `tier` does not allow.
fn check_level(tier: Tier, level: PowerLevel) -> anyhow::Result<()> {
    tier.check_level(level)
        .map_err(|why| anyhow!("{why}; pass --power-level with one of them"))
}

fn add(ctx: &Ctx, user: String, settings: &UserSettings) -> anyhow::Result<ExitCode> {
    let c = changes(settings)?;
    let mut new = NewUser::new(user);
    new.tier = c.tier.unwrap_or(new.tier);
    new.power_level = c.power_level.unwrap_or_else(|| default_level(new.tier));
    check_level(new.tier, new.power_level)?;
    new.monthly_allowance = c.monthly_allowance.unwrap_or(new.monthly_allowance);
    new.monthly_spend_cap = c.monthly_spend_cap.flatten();
    let account = ctx.ledger()?.create_user(&new)?;
    show(ctx, &account)
}

fn set(
    ctx: &Ctx,
    user: &str,
    settings: &UserSettings,
    auto_renew: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut c = changes(settings)?;
    c.auto_renew = parse_opt(auto_renew.as_deref(), |b| match b {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        other => Err(anyhow!(
            "invalid --auto-renew: {other:?} (expected true or false)"
        )),
    })?;
    if c == UserChanges::default() {
        return Err(anyhow!(
            "nothing to change: pass at least one of --tier, --power-level, --monthly-allowance, --monthly-cap, --auto-renew"
        ));
    }
    let mut ledger = ctx.ledger()?;
    if c.tier.is_some() || c.power_level.is_some() {
        let current = ledger.account(user)?;
        check_level(
            c.tier.unwrap_or(current.tier),
            c.power_level.unwrap_or(current.power_level),
        )?;
    }
    let account = ledger.change_user(user, &c)?;
    show(ctx, &account)
}

fn list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let accounts = ctx.ledger()?.accounts()?;
    if ctx.json {
        return done(output::json(&accounts));
    }
    let rows: Vec<Vec<String>> = accounts
        .iter()
        .map(|a| {
            vec![
                a.user_id.clone(),
                a.balance.to_string(),
                a.available.to_string(),
                a.tier.to_string(),
                a.power_level.to_string(),
                a.monthly_allowance.to_string(),
                output::or_dash(a.monthly_spend_cap),
                format!("{}%", a.quota_usage_percent),
            ]
        })
        .collect();
    done(output::table(
        &[
            "USER",
            "BALANCE",
            "AVAILABLE",
            "TIER",
            "LEVEL",
            "ALLOWANCE",
            "CAP",
            "QUOTA USED",
        ],
        &rows,
    ))
}

pub fn show(ctx: &Ctx, a: &UserAccount) -> anyhow::Result<ExitCode> {
    if ctx.json {
        return done(output::json(a));
    }
    done(output::fields(&[
        ("user", a.user_id.clone()),
        ("balance", a.balance.to_string()),
        ("held", a.held.to_string()),
        ("available", a.available.to_string()),
        ("tier", a.tier.to_string()),
        ("power level", a.power_level.to_string()),
        ("monthly allowance", a.monthly_allowance.to_string()),
        ("used this cycle", a.credits_used_this_month.to_string()),
        ("quota usage", format!("{}%", a.quota_usage_percent)),
        ("monthly spend cap", output::or_dash(a.monthly_spend_cap)),
        ("auto renew", a.auto_renew.to_string()),
        (
            "billing cycle",
            format!("{} .. {}", a.billing_cycle_start, a.billing_cycle_end),
        ),
        (
            "lifetime purchased",
            a.lifetime_credits_purchased.to_string(),
        ),
    ]))
}

fn api_key(ctx: &Ctx, cmd: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ApiKeyCommand::Create { user, name } => {
            governed_here(ctx, Governed::ApiKeys)?;
            let key = ctx.ledger()?.create_api_key(&user, name.as_deref())?;
            if ctx.json {
                #[derive(serde::Serialize)]
                struct Created<'a> {
                    #[serde(flatten)]
                    info: &'a crate::ledger::api_keys::ApiKeyInfo,
                    key: &'a str,
                }
                return done(output::json(&Created {
                    info: &key.info,
                    key: key.secret.as_str(),
                }));
            }
            output::fields(&[
                ("key id", key.info.key_id.clone()),
                ("user", key.info.user_id.clone()),
            ])?;
            output::line(&format!("key: {}", key.secret.as_str()))?;
            done(output::line(
                "This is the only time the key is shown; tollgate keeps only its hash.",
            ))
        }
        ApiKeyCommand::List { user } => {
            let keys = ctx.ledger()?.api_keys(&user)?;
            if ctx.json {
                return done(output::json(&keys));
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.key_id.clone(),
                        format!("{}…", k.prefix),
                        output::or_dash(k.name.as_deref()),
                        k.created_at.clone(),
                        output::or_dash(k.last_used_at.as_deref()),
                        output::or_dash(k.revoked_at.as_deref()),
                        k.origin.clone(),
                    ]
                })
                .collect();
            done(output::table(
                &[
                    "ID",
                    "PREFIX",
                    "NAME",
                    "CREATED",
                    "LAST USED",
                    "REVOKED",
                    "MADE BY",
                ],
                &rows,
            ))
        }
        ApiKeyCommand::Revoke { id } => {
            let mut ledger = ctx.ledger()?;
            if ledger.api_key_origin(&id)?.as_deref() == Some("central") {
                return Err(anyhow!(
                    "API key {id} was made by the sync server, which governs it: revoke it \
                     there (`tollgate-server users api-key revoke {id}`) and the revocation \
                     reaches every agent within seconds"
                ));
            }
            ledger.revoke_api_key(&id)?;
            if ctx.json {
                return done(output::json(&serde_json::json!({ "revoked": id })));
            }
            done(output::line(&format!("revoked {id}")))
        }
    }
}
