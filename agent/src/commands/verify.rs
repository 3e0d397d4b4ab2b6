//! `tollgate verify`: print what was checked and every violation; exit 1 if there is any.

use std::process::ExitCode;

use super::{Ctx, output};

pub fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut ledger = ctx.ledger()?;
    let report = ledger.verify()?;
    if ctx.json {
        output::json(&report)?;
    } else {
        for v in &report.violations {
            output::line(&format!("VIOLATION {}: {}", v.invariant, v.detail))?;
        }
        output::line(&format!(
            "{}: {} users, {} journal entries, {} lots, {} open holds, {} violations",
            if report.is_clean() { "ok" } else { "FAILED" },
            report.users,
            report.entries,
            report.lots,
            report.open_holds,
            report.violations.len()
        ))?;
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
