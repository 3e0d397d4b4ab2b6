//! A Stripe Checkout Session for one user and one package (`POST /admin/v1/checkout`, full
//! admin role; the handler is `http/admin/checkout.rs`). Refusals are a [`StripeError`].
//!
//! Guarantees:
//! - Checked before Stripe is called: the token's role, the body (strict), Stripe configured
//!   (else 503 naming the env vars), the package exists and is active, the user exists centrally
//!   with a home agent that is not revoked (so the grant has somewhere to go) and reaches the
//!   package's minimum tier.
//! - The checkout is recorded first (`checkout_sessions`, status `creating`, our `checkout_id`)
//!   with the credits and price *as sold*, so a later change to the package never changes what
//!   it grants; then the session is created form-encoded with the package's exact price in cents
//!   (`NUMERIC(12,2)` × 100, never a float), `client_reference_id` = the user,
//!   `metadata[checkout_id]`, and `Idempotency-Key: <checkout_id>`; no database connection is
//!   held during the call. Stripe's session id is then filled in (`open`); if the server dies
//!   first, the webhook fills it in from the metadata; a refused call marks the row `failed`.
//! - The secret key is sent only as the bearer credential to the configured API base, and never
//!   logged; Stripe's refusals are answered as 502 with Stripe's own message.

use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use tollgate_schema::money::Credits;
use uuid::Uuid;

use super::StripeError;
use crate::central::{credits_from_db, validate};
use crate::config::StripeConfig;

/// Longest Checkout Session id accepted from Stripe (its key `stripe:<id>` must fit 255).
pub const SESSION_ID_LEN_MAX: usize = 200;
/// Longest part of a Stripe error message passed on.
const STRIPE_MESSAGE_LEN_MAX: usize = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub user_id: String,
    /// The package, by name.
    pub package: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutResponse {
    pub session_id: String,
    /// Where to send the buyer.
    pub url: String,
    pub user_id: String,
    pub package: String,
    pub credits: Credits,
    /// Exact USD, e.g. "45.00".
    pub price_usd: String,
}

/// What Stripe answers (the fields we use).
#[derive(Debug, Deserialize)]
struct StripeSession {
    id: String,
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StripeErrorBody {
    error: StripeErrorDetail,
}

#[derive(Debug, Deserialize)]
struct StripeErrorDetail {
    message: Option<String>,
}

fn bad_gateway(message: impl Into<String>) -> StripeError {
    StripeError::Upstream(message.into())
}

/// Creates a Checkout Session for `req` (see the module's guarantees); `admin` names who asked,
/// for the log.
pub async fn create(
    pool: &Pool,
    http: &reqwest::Client,
    stripe: Option<&StripeConfig>,
    admin: &str,
    req: CheckoutRequest,
) -> Result<CheckoutResponse, StripeError> {
    validate::user_id("user_id", &req.user_id)?;
    if req.package.is_empty() {
        return Err(StripeError::Invalid(
            "package: must name a package".to_owned(),
        ));
    }
    let stripe = stripe.ok_or(StripeError::NotConfigured)?;
    let conn = pool.get().await?;
    let package = conn
        .query_opt(
            "SELECT credits, price_usd, is_active, min_tier FROM credit_packages WHERE name = $1",
            &[&req.package],
        )
        .await?
        .ok_or_else(|| {
            StripeError::Invalid(format!("package: no package is named {:?}", req.package))
        })?;
    let credits: Decimal = package.get("credits");
    let price: Decimal = package.get("price_usd");
    let active: bool = package.get("is_active");
    let min_tier: Option<String> = package.get("min_tier");
    if !active {
        return Err(StripeError::Invalid(format!(
            "package: {:?} is not active (not for sale)",
            req.package
        )));
    }
    let user = conn
        .query_opt(
            "SELECT u.subscription_tier, a.status AS home_status FROM user_credits u \
             LEFT JOIN agents a ON a.agent_id = u.home_agent_id WHERE u.user_id = $1",
            &[&req.user_id],
        )
        .await?
        .ok_or_else(|| {
            StripeError::NotFound(format!("no user {:?} is known centrally", req.user_id))
        })?;
    let tier: String = user.get("subscription_tier");
    let home_status: Option<String> = user.get("home_status");
    match home_status.as_deref() {
        None => {
            return Err(StripeError::Refused(format!(
                "user {:?} has no home agent to receive the credits; set one first",
                req.user_id
            )));
        }
        Some("revoked") => {
            return Err(StripeError::Refused(format!(
                "user {:?} is homed on a revoked agent, which could never apply the purchase; \
                 move the user first",
                req.user_id
            )));
        }
        Some(_) => {}
    }
    if let Some(min) = &min_tier
        && validate::tier("tier", &tier)?.rank() < validate::tier("min_tier", min)?.rank()
    {
        return Err(StripeError::Refused(format!(
            "package {:?} needs tier {min} or above; user {:?} is {tier}",
            req.package, req.user_id
        )));
    }
    let credits = credits_from_db(credits)?;
    let cents = price
        .checked_mul(Decimal::from(100))
        .and_then(|c| c.to_i64())
        .filter(|c| *c > 0)
        .ok_or_else(|| StripeError::Internal {
            context: "pricing a package",
            detail: "price out of range".to_owned(),
        })?;

    // Recorded before Stripe is called, with the credits and price as sold; the connection goes
    // back to the pool for the call.
    let checkout_id = Uuid::now_v7();
    conn.execute(
        "INSERT INTO checkout_sessions (checkout_id, user_id, package_name, credits, price_usd, \
         status) VALUES ($1, $2, $3, $4, $5, 'creating')",
        &[
            &checkout_id,
            &req.user_id,
            &req.package,
            &credits.to_decimal(),
            &price,
        ],
    )
    .await?;
    drop(conn);

    let form: Vec<(&str, String)> = vec![
        ("mode", "payment".to_owned()),
        ("client_reference_id", req.user_id.clone()),
        ("line_items[0][price_data][currency]", "usd".to_owned()),
        ("line_items[0][price_data][unit_amount]", cents.to_string()),
        (
            "line_items[0][price_data][product_data][name]",
            req.package.clone(),
        ),
        ("line_items[0][quantity]", "1".to_owned()),
        ("metadata[package]", req.package.clone()),
        ("metadata[user_id]", req.user_id.clone()),
        ("metadata[checkout_id]", checkout_id.to_string()),
        ("success_url", stripe.success_url.clone()),
        ("cancel_url", stripe.cancel_url.clone()),
    ];
    let created = create_session(http.clone(), stripe, &form, checkout_id).await;
    let conn = pool.get().await?;
    let session = match created {
        Ok(session) => session,
        Err(e) => {
            conn.execute(
                "UPDATE checkout_sessions SET status = 'failed' \
                 WHERE checkout_id = $1 AND status = 'creating'",
                &[&checkout_id],
            )
            .await?;
            return Err(e);
        }
    };
    let url = session.url.unwrap_or_default();
    // The webhook may have filled the session in already (it carries the checkout id).
    conn.execute(
        "UPDATE checkout_sessions SET session_id = $2, \
         status = CASE WHEN status = 'creating' THEN 'open' ELSE status END \
         WHERE checkout_id = $1",
        &[&checkout_id, &session.id],
    )
    .await?;
    tracing::info!(
        %checkout_id,
        session_id = %session.id,
        user_id = %req.user_id,
        package = %req.package,
        admin = %admin,
        "Checkout Session created"
    );
    Ok(CheckoutResponse {
        session_id: session.id,
        url,
        user_id: req.user_id,
        package: req.package,
        credits,
        price_usd: format!("{price:.2}"),
    })
}

/// Creates the Checkout Session at Stripe (no database connection held meanwhile), with
/// `checkout_id` as the Idempotency-Key: a retry of the same call can never make a second one.
async fn create_session(
    http: reqwest::Client,
    stripe: &StripeConfig,
    form: &[(&str, String)],
    checkout_id: Uuid,
) -> Result<StripeSession, StripeError> {
    let response = http
        .post(format!("{}/v1/checkout/sessions", stripe.api_base))
        .bearer_auth(stripe.secret_key.as_str())
        .header("Idempotency-Key", checkout_id.to_string())
        .form(form)
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e.without_url(), "Stripe is unreachable");
            bad_gateway("Stripe could not be reached; retry later")
        })?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| {
        tracing::warn!(error = %e.without_url(), "reading Stripe's answer failed");
        bad_gateway("Stripe's answer could not be read; retry later")
    })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<StripeErrorBody>(&bytes)
            .ok()
            .and_then(|b| b.error.message)
            .unwrap_or_default();
        let message: String = message.chars().take(STRIPE_MESSAGE_LEN_MAX).collect();
        tracing::warn!(%status, "Stripe refused a Checkout Session");
        return Err(bad_gateway(format!(
            "Stripe refused the Checkout Session (HTTP {}): {message}",
            status.as_u16()
        )));
    }
    let session: StripeSession = serde_json::from_slice(&bytes)
        .map_err(|_| bad_gateway("Stripe's answer is not a Checkout Session"))?;
    let well_formed = !session.id.is_empty()
        && session.id.len() <= SESSION_ID_LEN_MAX
        && session.id.bytes().all(|b| b.is_ascii_graphic());
    if !well_formed {
        return Err(bad_gateway("Stripe's answer has no usable session id"));
    }
    Ok(session)
}
