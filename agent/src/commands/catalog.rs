//! `tollgate packages list` and `tollgate power-levels list`.

use std::process::ExitCode;

use super::{Ctx, done, output};
use crate::ledger::catalog;

pub fn packages(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ledger = ctx.ledger()?;
    let packages = catalog::packages(ledger.conn())?;
    if ctx.json {
        return done(output::json(&packages));
    }
    let rows: Vec<Vec<String>> = packages
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.credits.to_string(),
                format!("{}.{:02}", p.price_usd_cents / 100, p.price_usd_cents % 100),
                format!("{}%", p.discount_percent),
                output::or_dash(p.badge_text.as_deref()),
                if p.is_featured { "yes" } else { "no" }.to_owned(),
                if p.is_active { "yes" } else { "no" }.to_owned(),
                output::or_dash(p.description.as_deref()),
            ]
        })
        .collect();
    done(output::table(
        &[
            "NAME",
            "CREDITS",
            "PRICE USD",
            "DISCOUNT",
            "BADGE",
            "FEATURED",
            "ACTIVE",
            "DESCRIPTION",
        ],
        &rows,
    ))
}

pub fn power_levels(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ledger = ctx.ledger()?;
    let levels = catalog::power_levels(ledger.conn())?;
    if ctx.json {
        return done(output::json(&levels));
    }
    let rows: Vec<Vec<String>> = levels
        .iter()
        .map(|l| {
            vec![
                l.power_level.clone(),
                l.name.clone(),
                l.preferred_providers.join(", "),
                l.fallback_strategy.clone(),
                format!("{}x", l.cost_multiplier),
                l.max_latency_ms.to_string(),
                l.min_quality_score.to_string(),
            ]
        })
        .collect();
    done(output::table(
        &[
            "LEVEL",
            "NAME",
            "PREFERRED PROVIDERS",
            "FALLBACK",
            "MULTIPLIER",
            "MAX LATENCY MS",
            "MIN QUALITY",
        ],
        &rows,
    ))
}
