//! `POST /stripe/webhook` over HTTP: the body (at most [`WEBHOOK_BODY_BYTES_MAX`]) is read and
//! its `Stripe-Signature` verified ([`crate::stripe::signature`]) before anything is parsed or
//! stored; the event is then applied by [`crate::stripe::webhook::apply`]. Every delivery is
//! counted by outcome; logs carry event ids and outcomes, never the secret or the signature.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;

use super::AppState;
use super::error::ApiError;
use super::json::read_body;
use crate::metrics::OutcomeLabels;
use crate::stripe::signature::{self, SignatureError};
use crate::stripe::webhook::{
    self, Event, STRIPE_ID_LEN_MAX, WEBHOOK_BODY_BYTES_MAX, WebhookAnswer, outcome,
};

/// `POST /stripe/webhook`.
pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WebhookAnswer>, ApiError> {
    let result = receive(&state, &headers, body).await;
    let label = match &result {
        Ok(outcome) => outcome,
        Err((outcome, _)) => outcome,
    };
    state
        .metrics
        .stripe_events
        .get_or_create(&OutcomeLabels { outcome: label })
        .inc();
    match result {
        Ok(outcome) => Ok(Json(WebhookAnswer {
            received: true,
            outcome: outcome.to_owned(),
        })),
        Err((_, error)) => Err(error),
    }
}

type Refusal = (&'static str, ApiError);

async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<&'static str, Refusal> {
    let Some(stripe) = state.config.stripe.as_ref() else {
        return Err((
            outcome::NOT_CONFIGURED,
            ApiError::unavailable(
                "Stripe is not configured on this server: set STRIPE_SECRET_KEY and \
                 STRIPE_WEBHOOK_SECRET",
            ),
        ));
    };
    let bytes = read_body(
        body,
        WEBHOOK_BODY_BYTES_MAX,
        state.config.limits.body_read_timeout,
    )
    .await
    .map_err(|e| (outcome::TOO_LARGE, e))?;
    let header = headers
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or_default());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    signature::verify(header, &bytes, stripe.webhook_secret.as_bytes(), now).map_err(|e| {
        let label = match e {
            SignatureError::Stale(_) => outcome::STALE,
            _ => outcome::BAD_SIGNATURE,
        };
        tracing::warn!(reason = %e, "Stripe webhook refused");
        (label, ApiError::bad_request(e.to_string()))
    })?;
    let event: Event = serde_json::from_slice(&bytes).map_err(|e| {
        (
            outcome::BAD_REQUEST,
            ApiError::bad_request(format!("the event is not a Stripe event: {e}")),
        )
    })?;
    if event.id.is_empty() || event.id.len() > STRIPE_ID_LEN_MAX {
        return Err((
            outcome::BAD_REQUEST,
            ApiError::bad_request(format!(
                "the event id must be 1 to {STRIPE_ID_LEN_MAX} characters"
            )),
        ));
    }
    let session_id = event
        .kind
        .starts_with("checkout.session.")
        .then(|| {
            event
                .data
                .as_ref()
                .and_then(|d| d.object.get("id"))
                .and_then(|v| v.as_str())
                .filter(|id| !id.is_empty() && id.len() <= STRIPE_ID_LEN_MAX)
                .map(str::to_owned)
        })
        .flatten();
    let result = webhook::apply(&state.pool, &event, session_id.as_deref())
        .await
        .map_err(ApiError::from);
    if let Ok(outcome) = &result
        && webhook::wrote_an_event(outcome)
    {
        state.metrics.inbox_events_written.inc();
    }
    match &result {
        Ok(outcome) => tracing::info!(
            event_id = %event.id,
            event_type = %event.kind,
            session_id = session_id.as_deref().unwrap_or("-"),
            outcome,
            "Stripe event"
        ),
        Err(e) => tracing::error!(event_id = %event.id, error = %e.message, "Stripe event failed"),
    }
    result.map_err(|e| (outcome::ERROR, e))
}
