//! `tollgate keys …`: users' own provider keys. The secret is read from stdin, or from a prompt
//! that does not echo when stdin is a terminal; it never appears in argv, output or logs, and is
//! zeroized after use. The master key comes from `TOLLGATE_MASTER_KEY` or the data dir's key file.

use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use zeroize::Zeroizing;

use super::{Ctx, done, output, parse_choice};
use crate::cli::KeysCommand;
use crate::keys::{self, MASTER_KEY_ENV, NEW_MASTER_KEY_ENV};
use crate::ledger::Provider;

/// Longest secret read from stdin (the vault refuses longer ones with a clear message).
const SECRET_LEN_MAX: u64 = keys::vault::SECRET_LEN_MAX as u64;

fn env_secret(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name).ok().map(Zeroizing::new)
}

pub fn run(ctx: &Ctx, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Add {
            user,
            provider,
            name,
            default,
        } => {
            let provider: Provider = parse_choice(&provider, "--provider")?;
            let mut ledger = ctx.ledger()?;
            if !ledger.user_exists(&user)? {
                return Err(anyhow!("unknown user {user:?}"));
            }
            let (master, _) =
                keys::load_master(&ledger, ctx.data_dir.root(), env_secret(MASTER_KEY_ENV))?;
            let secret = read_secret(&format!("{provider} key {name:?} for {user}: "))?;
            let info = keys::add_key(
                &mut ledger,
                &master,
                &user,
                provider,
                &name,
                secret,
                default,
            )?;
            if ctx.json {
                return done(output::json(&info));
            }
            done(output::line(&format!(
                "stored {} key {:?} for {} (…{}, {}){}",
                info.provider,
                info.key_name,
                info.user_id,
                info.key_last4,
                info.key_fingerprint,
                if info.is_default { ", default" } else { "" }
            )))
        }
        KeysCommand::List { user } => {
            let listed = keys::list_keys(&ctx.ledger()?, &user)?;
            if ctx.json {
                return done(output::json(&listed));
            }
            let rows: Vec<Vec<String>> = listed
                .iter()
                .map(|k| {
                    vec![
                        k.provider.clone(),
                        k.key_name.clone(),
                        format!("…{}", k.key_last4),
                        k.key_fingerprint.clone(),
                        if k.is_default { "yes" } else { "no" }.to_owned(),
                        if k.is_active { "yes" } else { "no" }.to_owned(),
                        output::or_dash(k.last_used.as_deref()),
                    ]
                })
                .collect();
            done(output::table(
                &[
                    "PROVIDER",
                    "NAME",
                    "KEY",
                    "FINGERPRINT",
                    "DEFAULT",
                    "ACTIVE",
                    "LAST USED",
                ],
                &rows,
            ))
        }
        KeysCommand::Remove {
            user,
            provider,
            name,
        } => {
            let provider: Provider = parse_choice(&provider, "--provider")?;
            keys::remove_key(&mut ctx.ledger()?, &user, provider, &name)?;
            if ctx.json {
                return done(output::json(
                    &serde_json::json!({ "removed": { "user_id": user, "provider": provider, "key_name": name } }),
                ));
            }
            done(output::line(&format!(
                "removed {provider} key {name:?} of {user}"
            )))
        }
        KeysCommand::RotateMaster => {
            let mut ledger = ctx.ledger()?;
            let report = keys::rotate(
                &mut ledger,
                ctx.data_dir.root(),
                env_secret(MASTER_KEY_ENV),
                env_secret(NEW_MASTER_KEY_ENV),
            )?;
            if ctx.json {
                return done(output::json(&report));
            }
            output::line(&format!(
                "re-encrypted {} stored keys: master key {} → {}",
                report.keys_resealed, report.old_key_id, report.new_key_id
            ))?;
            match report.operator_action() {
                Some(action) => done(output::line(&format!("now: {action}"))),
                None => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// Reads one secret line: a hidden prompt on a terminal, else the first line of stdin.
fn read_secret(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Zeroizing::new(
            rpassword::prompt_password(prompt).context("reading the key")?,
        ));
    }
    let mut line = Zeroizing::new(String::new());
    let read = stdin
        .lock()
        .take(SECRET_LEN_MAX + 2)
        .read_line(&mut line)
        .context("reading the key from stdin")?;
    if read == 0 {
        return Err(anyhow!(
            "no key on stdin: pipe the key in, e.g. `printf %s \"$KEY\" | tollgate keys add …`"
        ));
    }
    let trimmed = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned());
    Ok(trimmed)
}
