//! `tollgate-server agents enroll|list|revoke|release|prune-inbox`.
//!
//! Guarantees: the enrolment token is printed once, on stdout only (never logged), with the
//! command that consumes it; `list` shows each agent's lag (reported head − acknowledged head);
//! every command prints JSON with `--json`. Refusals (bad name, unknown agent, wrong state) are
//! errors naming the problem (exit 2).

use std::process::ExitCode;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::json;

use crate::cli::AgentsCommand;
use crate::sync::agents::{self, AgentSummary};
use crate::sync::enroll::create_enrollment;

pub async fn run(pool: &Pool, cmd: AgentsCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentsCommand::Enroll { name, ttl_minutes } => {
            let ttl = Duration::from_secs(u64::from(ttl_minutes) * 60);
            let (agent_id, token) = create_enrollment(pool, &name, ttl).await?;
            if json {
                println!(
                    "{}",
                    json!({
                        "agent_id": agent_id.to_string(),
                        "name": name,
                        "token": token.as_str(),
                        "ttl_minutes": ttl_minutes,
                    })
                );
            } else {
                println!(
                    "Agent {name} ({agent_id}): one-time enrolment token, valid for \
                     {ttl_minutes} minutes (shown once):"
                );
                println!("{}", token.as_str());
                println!(
                    "On the agent's host, run and paste the token: tollgate enroll --server URL \
                     --token -"
                );
            }
        }
        AgentsCommand::List => {
            let list = agents::list(pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", table(&list));
            }
        }
        AgentsCommand::Revoke { name } => {
            let agent = agents::revoke(pool, &name).await?;
            print_agent(&agent, json, "revoked")?;
        }
        AgentsCommand::Release { name } => {
            let agent = agents::release(pool, &name).await?;
            print_agent(&agent, json, "released; it may push again")?;
        }
        AgentsCommand::PruneInbox { name, keep } => {
            let pruned = agents::prune_inbox(pool, &name, keep).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pruned)?);
            } else {
                println!(
                    "agent {name}: deleted {} inbox events; events through {} are pruned \
                     (acknowledged through {})",
                    pruned.deleted, pruned.pruned_through, pruned.inbox_acked
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_agent(agent: &AgentSummary, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(agent)?);
    } else {
        println!("agent {} {what} (status: {})", agent.name, agent.status);
    }
    Ok(())
}

/// The agents as an aligned text table.
fn table(list: &[AgentSummary]) -> String {
    let dash = || "-".to_owned();
    let header = [
        "NAME",
        "STATUS",
        "INCARNATION",
        "ACKED",
        "REPORTED",
        "LAG",
        "LAST PUSH",
        "INBOX HEAD",
        "INBOX ACKED",
        "LAST SEEN",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for a in list {
        rows.push(vec![
            a.name.clone(),
            a.status.clone(),
            a.incarnation.clone().unwrap_or_else(dash),
            a.acked_seq.to_string(),
            a.reported_head_seq.to_string(),
            a.lag.to_string(),
            a.last_push_at.clone().unwrap_or_else(dash),
            a.inbox_head.to_string(),
            a.inbox_acked.to_string(),
            a.last_seen_at.clone().unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for a in list {
        if let Some(reason) = &a.quarantine_reason {
            out.push_str(&format!("{} is quarantined: {reason}\n", a.name));
        }
    }
    if list.is_empty() {
        out.push_str("(no agents; register one with `tollgate-server agents enroll NAME`)\n");
    }
    out
}
