//! The console's catalog page: credit packages and power levels, listed and edited.
//!
//! - `GET /console/catalog`: every package (price, credits, discount, tier, flags) and every
//!   power level (providers, fallback, multiplier, latency, quality), each with an edit form for
//!   a full-role admin, and a form for a new package.
//! - `POST /console/catalog/packages` (full role): create or replace a package by name, through
//!   [`catalog::set_package`] (sent to every agent).
//! - `POST /console/catalog/power-levels/{level}` (full role): replace a level's routing,
//!   through [`catalog::set_power_level`].
//!
//! Guarantees: every form carries a fresh operation id, so sending it twice (a reload, a double
//! click) applies it once; a refused form is shown again, open, with the admin's input and the
//! reason, and nothing written.

use std::fmt::Write as _;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use serde::Deserialize;
use tollgate_schema::wire::{PackageSpec, PowerLevelSpec};

use super::html::{Notice, Section, attr, csrf_field, esc, or_dash, page as layout, url_part};
use super::session::{ConsoleSession, Needs};
use super::{ConsoleError, ConsoleForm, PageResult};
use crate::central::{CentralError, catalog, validate};
use crate::http::AppState;
use crate::http::admin::extract::operation_key;

/// A refused form to show again, open, with what was sent.
#[derive(Debug, Clone)]
enum Refused {
    Package(PackageForm),
    Level(String, LevelForm),
}

pub async fn page(State(state): State<AppState>, session: ConsoleSession) -> PageResult {
    Ok((
        StatusCode::OK,
        catalog_page(&state, &session, Notice::None, None).await?,
    ))
}

async fn catalog_page(
    state: &AppState,
    session: &ConsoleSession,
    notice: Notice,
    refused: Option<&Refused>,
) -> Result<Html<String>, ConsoleError> {
    let conn = state.pool.get().await?;
    let packages = catalog::packages(&conn).await?;
    let levels = catalog::power_levels(&conn).await?;
    drop(conn);
    let mut body = String::from(
        r#"<section aria-labelledby="packages-h"><h2 id="packages-h">Credit packages</h2><table id="packages"><thead><tr><th scope="col">Package</th><th scope="col" class="num">Credits</th><th scope="col" class="num">Price (USD)</th><th scope="col" class="num">Discount</th><th scope="col">Least tier</th><th scope="col">Active</th><th scope="col">Featured</th><th scope="col" class="num">Order</th></tr></thead><tbody>"#,
    );
    for p in &packages {
        let s = &p.spec;
        let _ = write!(
            body,
            r#"<tr><th scope="row">{}</th><td class="num">{}</td><td class="num">{}</td><td class="num">{} %</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#,
            esc(&s.name),
            s.credits,
            esc(&p.price_usd),
            s.discount_percent,
            or_dash(s.min_tier.as_deref()),
            yes_no(s.is_active),
            yes_no(s.is_featured),
            s.sort_order
        );
    }
    body.push_str("</tbody></table>");
    if session.can_change() {
        for p in &packages {
            let refused_here = match refused {
                Some(Refused::Package(f)) if f.name == p.spec.name => Some(f),
                _ => None,
            };
            let form = refused_here
                .cloned()
                .unwrap_or_else(|| PackageForm::of(&p.spec, &p.price_usd));
            body.push_str(&package_form(
                session,
                &format!("Edit {}", p.spec.name),
                &form,
                refused_here.is_some(),
                true,
            ));
        }
        let new_refused = match refused {
            Some(Refused::Package(f)) if !packages.iter().any(|p| p.spec.name == f.name) => Some(f),
            _ => None,
        };
        body.push_str(&package_form(
            session,
            "New package",
            &new_refused
                .cloned()
                .unwrap_or_else(PackageForm::new_package),
            new_refused.is_some(),
            false,
        ));
    }
    body.push_str(r#"</section><section aria-labelledby="levels-h"><h2 id="levels-h">Power levels</h2><table id="power-levels"><thead><tr><th scope="col">Level</th><th scope="col">Name</th><th scope="col">Preferred providers</th><th scope="col">Fallback</th><th scope="col" class="num">Multiplier</th><th scope="col" class="num">Max latency (ms)</th><th scope="col" class="num">Min quality</th><th scope="col">Active</th></tr></thead><tbody>"#);
    for l in &levels {
        let _ = write!(
            body,
            r#"<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            esc(&l.power_level),
            esc(&l.name),
            esc(&l.preferred_providers.join(", ")),
            esc(&l.fallback_strategy),
            esc(&l.cost_multiplier),
            l.max_latency_ms,
            l.min_quality_score,
            yes_no(l.is_active)
        );
    }
    body.push_str("</tbody></table>");
    if session.can_change() {
        for l in &levels {
            let refused_here = match refused {
                Some(Refused::Level(level, f)) if *level == l.power_level => Some(f),
                _ => None,
            };
            let form = refused_here.cloned().unwrap_or_else(|| LevelForm::of(l));
            body.push_str(&level_form(
                session,
                &l.power_level,
                &form,
                refused_here.is_some(),
            ));
        }
    }
    body.push_str("</section>");
    Ok(layout(
        session,
        Section::Catalog,
        "Packages & power levels",
        &notice,
        &body,
    ))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn checked(b: bool) -> &'static str {
    if b { " checked" } else { "" }
}

fn fresh_operation_id() -> String {
    format!("console-{}", uuid::Uuid::now_v7())
}

/// A package form as sent (every field text, so a refused one shows what was typed).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PackageForm {
    pub csrf: String,
    pub operation_id: String,
    pub name: String,
    pub credits: String,
    pub price_usd: String,
    pub discount_percent: String,
    pub min_tier: String,
    /// A checkbox: present ("on") when ticked.
    pub is_active: Option<String>,
    pub is_featured: Option<String>,
    pub sort_order: String,
    pub description: String,
    pub badge_text: String,
}

impl PackageForm {
    fn of(s: &PackageSpec, price_usd: &str) -> PackageForm {
        PackageForm {
            operation_id: fresh_operation_id(),
            name: s.name.clone(),
            credits: s.credits.to_string(),
            price_usd: price_usd.to_owned(),
            discount_percent: s.discount_percent.to_string(),
            min_tier: s.min_tier.clone().unwrap_or_default(),
            is_active: s.is_active.then(|| "on".to_owned()),
            is_featured: s.is_featured.then(|| "on".to_owned()),
            sort_order: s.sort_order.to_string(),
            description: s.description.clone().unwrap_or_default(),
            badge_text: s.badge_text.clone().unwrap_or_default(),
            ..PackageForm::default()
        }
    }

    fn new_package() -> PackageForm {
        PackageForm {
            operation_id: fresh_operation_id(),
            discount_percent: "0".to_owned(),
            sort_order: "0".to_owned(),
            is_active: Some("on".to_owned()),
            ..PackageForm::default()
        }
    }

    fn spec(&self) -> Result<PackageSpec, CentralError> {
        Ok(PackageSpec {
            name: self.name.trim().to_owned(),
            credits: validate::credits("credits", self.credits.trim())?,
            price_usd_cents: catalog::price_cents(self.price_usd.trim())?,
            discount_percent: whole("discount_percent", &self.discount_percent)?,
            min_tier: optional(&self.min_tier),
            is_active: self.is_active.is_some(),
            is_featured: self.is_featured.is_some(),
            sort_order: whole("sort_order", &self.sort_order)?,
            description: optional(&self.description),
            badge_text: optional(&self.badge_text),
        })
    }
}

/// A whole number typed in a form, or a refusal naming the field.
fn whole(field: &'static str, text: &str) -> Result<i64, CentralError> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| CentralError::invalid(field, format!("{:?} is not a whole number", text)))
}

fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// One labelled input of a form whose ids start with `prefix`.
fn input(prefix: &str, name: &str, label: &str, value: &str, extra: &str) -> String {
    format!(
        r#"<label for="{prefix}-{name}">{label}</label><input id="{prefix}-{name}" name="{name}" value="{}"{extra}>"#,
        attr(value)
    )
}

fn checkbox(prefix: &str, name: &str, label: &str, on: bool) -> String {
    format!(
        r#"<label class="check"><input type="checkbox" id="{prefix}-{name}" name="{name}"{}> {label}</label>"#,
        checked(on)
    )
}

fn package_form(
    session: &ConsoleSession,
    summary: &str,
    f: &PackageForm,
    open: bool,
    existing: bool,
) -> String {
    let prefix = if existing {
        format!("pkg-{}", url_part(&f.name))
    } else {
        "pkg-new".to_owned()
    };
    let name = if existing {
        format!(
            r#"<input type="hidden" name="name" value="{}">"#,
            attr(&f.name)
        )
    } else {
        input(&prefix, "name", "Name", &f.name, " required")
    };
    let mut tiers = String::from(r#"<option value="">any</option>"#);
    for tier in tollgate_schema::vocabulary::Tier::ALL {
        let t = tier.as_str();
        let selected = if f.min_tier == t { " selected" } else { "" };
        let _ = write!(tiers, r#"<option value="{t}"{selected}>{t}</option>"#);
    }
    format!(
        r#"<details class="edit"{}><summary>{}</summary><form method="post" action="/console/catalog/packages" id="{prefix}-form">{}<input type="hidden" name="operation_id" value="{}">{name}<div class="fields">{}{}{}<label for="{prefix}-min_tier">Least tier</label><select id="{prefix}-min_tier" name="min_tier">{tiers}</select>{}{}{}</div>{}{}<button type="submit">Save package</button></form></details>"#,
        if open { " open" } else { "" },
        esc(summary),
        csrf_field(session),
        attr(&f.operation_id),
        input(
            &prefix,
            "credits",
            "Credits",
            &f.credits,
            r#" inputmode="decimal" required"#
        ),
        input(
            &prefix,
            "price_usd",
            "Price (USD, with the discount)",
            &f.price_usd,
            r#" inputmode="decimal" required"#
        ),
        input(
            &prefix,
            "discount_percent",
            "Discount shown (%)",
            &f.discount_percent,
            r#" inputmode="numeric""#
        ),
        input(
            &prefix,
            "sort_order",
            "Order",
            &f.sort_order,
            r#" inputmode="numeric""#
        ),
        input(&prefix, "description", "Description", &f.description, ""),
        input(&prefix, "badge_text", "Badge", &f.badge_text, ""),
        checkbox(
            &prefix,
            "is_active",
            "Active (can be bought)",
            f.is_active.is_some()
        ),
        checkbox(&prefix, "is_featured", "Featured", f.is_featured.is_some()),
    )
}

pub async fn set_package(
    State(state): State<AppState>,
    session: ConsoleSession,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<PackageForm>,
) -> PageResult {
    session.check_form(&headers, &state.config.console, &form.csrf, Needs::Full)?;
    let outcome = async {
        let spec = form.spec()?;
        let key = operation_key(Some(form.operation_id.trim()), "package")?;
        catalog::set_package(&state.pool, &spec, &key, &session.name).await
    }
    .await;
    let (status, notice, refused) = match outcome {
        Ok(applied) => {
            state
                .metrics
                .inbox_events_written
                .inc_by(applied.events_written);
            (
                StatusCode::OK,
                Notice::Done(format!(
                    "Package {} saved{}; sent to {} agent(s).",
                    esc(&applied.result.item.name),
                    if applied.replayed {
                        " (already saved by this form: nothing new written)"
                    } else {
                        ""
                    },
                    applied.result.sent_to.len()
                )),
                None,
            )
        }
        Err(e) => {
            let e = ConsoleError::from(e);
            (
                e.status,
                Notice::Refused(e.message),
                Some(Refused::Package(form)),
            )
        }
    };
    let html = catalog_page(&state, &session, notice, refused.as_ref()).await?;
    Ok((status, html))
}

/// A power-level form as sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LevelForm {
    pub csrf: String,
    pub operation_id: String,
    pub name: String,
    pub description: String,
    /// Comma-separated, most preferred first.
    pub preferred_providers: String,
    pub fallback_strategy: String,
    pub cost_multiplier: String,
    pub max_latency_ms: String,
    pub min_quality_score: String,
    pub is_active: Option<String>,
}

impl LevelForm {
    fn of(l: &PowerLevelSpec) -> LevelForm {
        LevelForm {
            operation_id: fresh_operation_id(),
            name: l.name.clone(),
            description: l.description.clone().unwrap_or_default(),
            preferred_providers: l.preferred_providers.join(", "),
            fallback_strategy: l.fallback_strategy.clone(),
            cost_multiplier: l.cost_multiplier.clone(),
            max_latency_ms: l.max_latency_ms.to_string(),
            min_quality_score: l.min_quality_score.to_string(),
            is_active: l.is_active.then(|| "on".to_owned()),
            ..LevelForm::default()
        }
    }

    fn spec(&self, level: &str) -> Result<PowerLevelSpec, CentralError> {
        Ok(PowerLevelSpec {
            power_level: level.to_owned(),
            name: self.name.trim().to_owned(),
            description: optional(&self.description),
            preferred_providers: self
                .preferred_providers
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            fallback_strategy: self.fallback_strategy.trim().to_owned(),
            cost_multiplier: self.cost_multiplier.trim().to_owned(),
            max_latency_ms: whole("max_latency_ms", &self.max_latency_ms)?,
            min_quality_score: whole("min_quality_score", &self.min_quality_score)?,
            is_active: self.is_active.is_some(),
        })
    }
}

fn level_form(session: &ConsoleSession, level: &str, f: &LevelForm, open: bool) -> String {
    let prefix = format!("lvl-{}", url_part(level));
    let mut strategies = String::new();
    for s in ["next_available", "cheapest", "fastest"] {
        let selected = if f.fallback_strategy == s {
            " selected"
        } else {
            ""
        };
        let _ = write!(strategies, r#"<option value="{s}"{selected}>{s}</option>"#);
    }
    format!(
        r#"<details class="edit"{}><summary>Edit {}</summary><form method="post" action="/console/catalog/power-levels/{}" id="{prefix}-form">{}<input type="hidden" name="operation_id" value="{}"><div class="fields">{}{}{}<label for="{prefix}-fallback_strategy">Fallback</label><select id="{prefix}-fallback_strategy" name="fallback_strategy">{strategies}</select>{}{}{}</div>{}<button type="submit">Save power level</button></form></details>"#,
        if open { " open" } else { "" },
        esc(level),
        url_part(level),
        csrf_field(session),
        attr(&f.operation_id),
        input(&prefix, "name", "Name", &f.name, " required"),
        input(&prefix, "description", "Description", &f.description, ""),
        input(
            &prefix,
            "preferred_providers",
            "Preferred providers (comma-separated, first preferred)",
            &f.preferred_providers,
            ""
        ),
        input(
            &prefix,
            "cost_multiplier",
            "Cost multiplier",
            &f.cost_multiplier,
            r#" inputmode="decimal" required"#
        ),
        input(
            &prefix,
            "max_latency_ms",
            "Max latency (ms)",
            &f.max_latency_ms,
            r#" inputmode="numeric" required"#
        ),
        input(
            &prefix,
            "min_quality_score",
            "Min quality (0–100)",
            &f.min_quality_score,
            r#" inputmode="numeric" required"#
        ),
        checkbox(&prefix, "is_active", "Active", f.is_active.is_some()),
    )
}

pub async fn set_power_level(
    State(state): State<AppState>,
    session: ConsoleSession,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    ConsoleForm(form): ConsoleForm<LevelForm>,
) -> PageResult {
    session.check_form(&headers, &state.config.console, &form.csrf, Needs::Full)?;
    let Path(level) = path.map_err(|e| {
        ConsoleError::new(
            StatusCode::BAD_REQUEST,
            format!("the power level in the address is not valid: {e}"),
        )
    })?;
    let outcome = async {
        let spec = form.spec(&level)?;
        let key = operation_key(Some(form.operation_id.trim()), "power_level")?;
        catalog::set_power_level(&state.pool, &spec, &key, &session.name).await
    }
    .await;
    let (status, notice, refused) = match outcome {
        Ok(applied) => {
            state
                .metrics
                .inbox_events_written
                .inc_by(applied.events_written);
            (
                StatusCode::OK,
                Notice::Done(format!(
                    "Power level {} saved; sent to {} agent(s).",
                    esc(&applied.result.item.power_level),
                    applied.result.sent_to.len()
                )),
                None,
            )
        }
        Err(e) => {
            let e = ConsoleError::from(e);
            (
                e.status,
                Notice::Refused(e.message),
                Some(Refused::Level(level, form)),
            )
        }
    };
    let html = catalog_page(&state, &session, notice, refused.as_ref()).await?;
    Ok((status, html))
}
