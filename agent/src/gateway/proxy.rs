//! The request path (PRODUCT.md steps 1-9) for the three metered routes, and `/v1/models`.
//!
//! Order: authenticate → read the body (bounded) → level → route → BYOK key → reserve the worst
//! case (a flexible hold: at most what the user can afford, at least the prompt and one output
//! token) → cap the output at what was reserved → forward → meter → settle → respond. A request
//! that fails after authentication releases its hold and leaves a usage row with its error type;
//! a streamed one hands its meter to [`super::stream`], which settles before the last event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tollgate_schema::money::Credits;
use zeroize::Zeroizing;

use crate::keys::vault;
use crate::ledger::{
    HoldRequest, LedgerError, Op, PowerLevel, Provider, Receipt, Refusal, Release, Settle,
    UsageErrorType, UsageRecord,
};
use crate::prices::ModelPrice;

use super::Gateway;
use super::auth::{self, Caller};
use super::error::ApiError;
use super::metrics::{ReasonLabels, RequestLabels, RouteLabels};
use super::pricing::{Factors, Rate};
use super::routing;
use super::stream::{self, StreamMeter};
use super::usage::{self, CapField, Endpoint, Usage};

/// The header a request may use to ask for a power level within its tier.
pub const LEVEL_HEADER: &str = "x-tollgate-power-level";
/// Largest upstream error body read (its message is passed on).
const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;
/// Attempts at a settle or release whose batch failed as a whole.
const SETTLE_ATTEMPTS: u32 = 4;
/// Longest error message kept in the usage log.
const ERROR_MESSAGE_LEN_MAX: usize = 500;

pub async fn chat(s: State<Arc<Gateway>>, c: ConnectInfo<SocketAddr>, r: Request) -> Response {
    handle(s, Endpoint::ChatCompletions, c, r).await
}

pub async fn completions(
    s: State<Arc<Gateway>>,
    c: ConnectInfo<SocketAddr>,
    r: Request,
) -> Response {
    handle(s, Endpoint::Completions, c, r).await
}

pub async fn embeddings(
    s: State<Arc<Gateway>>,
    c: ConnectInfo<SocketAddr>,
    r: Request,
) -> Response {
    handle(s, Endpoint::Embeddings, c, r).await
}

/// One metered request, start to response.
async fn handle(
    State(gw): State<Arc<Gateway>>,
    endpoint: Endpoint,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let (parts, body) = request.into_parts();
    let mut labels = RequestLabels {
        route: endpoint.path(),
        status: 0,
        model: "-".into(),
        level: "-",
    };
    let mut response = match auth::authenticate(&gw.auth_cache, &gw.writer, &parts.headers).await {
        Err(e) => refusal(&gw, e),
        Ok(caller) => {
            // The request's ledger path runs in its own task: a client that hangs up cannot
            // cancel it between the hold and the settle.
            let task_gw = gw.clone();
            let id = request_id.clone();
            let task = tokio::spawn(async move {
                let mut meter = Meter::new(task_gw.clone(), caller, endpoint, id);
                meter.user_agent = header_text(&parts.headers, header::USER_AGENT.as_str());
                meter.client_ip = Some(client.ip().to_string());
                let outcome = meter.run(&parts.headers, body).await;
                let model = task_gw.model_label(&meter.model);
                let level = meter.level.map_or("-", PowerLevel::as_str);
                let response = match outcome {
                    Ok(response) => response,
                    Err(e) => {
                        meter.fail(&e, None).await;
                        refusal(&task_gw, e)
                    }
                };
                (response, model, level)
            });
            match task.await {
                Ok((response, model, level)) => {
                    labels.model = model;
                    labels.level = level;
                    response
                }
                Err(e) => {
                    tracing::error!(request_id = %request_id, error = %e, "request task failed");
                    ApiError::Internal {
                        request_id: request_id.clone(),
                    }
                    .into_response()
                }
            }
        }
    };
    labels.status = response.status().as_u16();
    gw.metrics.requests.get_or_create(&labels).inc();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        // Also under the name OpenAI's SDKs read (`_request_id`).
        response.headers_mut().insert("x-request-id", v.clone());
        response.headers_mut().insert("x-tollgate-request-id", v);
    }
    response
}

fn refusal(gw: &Gateway, e: ApiError) -> Response {
    if e.status().is_client_error() {
        gw.metrics
            .refusals
            .get_or_create(&ReasonLabels { reason: e.code() })
            .inc();
    }
    e.into_response()
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// A request's metering state, from authentication to settlement. Owned (no borrows) so that a
/// stream can carry it and settle after its handler returned.
#[derive(Debug)]
pub struct Meter {
    pub gw: Arc<Gateway>,
    pub caller: Arc<Caller>,
    pub endpoint: Endpoint,
    pub request_id: String,
    pub started: Instant,
    pub user_agent: Option<String>,
    pub client_ip: Option<String>,
    /// The model asked for, then the model that serves the request.
    pub model: String,
    pub alias: Option<String>,
    pub provider: Option<String>,
    pub level: Option<PowerLevel>,
    pub rate: Option<Rate>,
    /// The prompt's token bound (also the basis of an estimate when no usage comes back).
    pub prompt_bound: u64,
    /// What the hold reserved (zero: nothing held, the request costs nothing).
    pub held: Credits,
    pub byok_key_id: Option<i64>,
    pub price_table: String,
    pub max_tokens_capped: Option<u64>,
    pub stream: bool,
    pub litellm_call_id: Option<String>,
    pub litellm_response_cost: Option<String>,
    /// Set once the request's ledger work is done (settled or released): never twice.
    pub closed: bool,
}

/// How a request ended, for its usage row.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub usage: Usage,
    pub estimated: bool,
    pub http_status: u16,
    pub time_to_first_token_ms: Option<u32>,
    pub error: Option<(UsageErrorType, String)>,
}

impl Meter {
    fn new(gw: Arc<Gateway>, caller: Arc<Caller>, endpoint: Endpoint, request_id: String) -> Meter {
        Meter {
            gw,
            caller,
            endpoint,
            request_id,
            started: Instant::now(),
            user_agent: None,
            client_ip: None,
            model: String::new(),
            alias: None,
            provider: None,
            level: None,
            rate: None,
            prompt_bound: 0,
            held: Credits::ZERO,
            byok_key_id: None,
            price_table: String::new(),
            max_tokens_capped: None,
            stream: false,
            litellm_call_id: None,
            litellm_response_cost: None,
            closed: false,
        }
    }

    async fn run(&mut self, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
        let limit = self.gw.config.limits.body_bytes_max;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::TooLarge { limit });
        }
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
            // A chunked body that outgrows the limit, or a client that broke off the upload.
            if super::error_chain(&e).contains("length limit exceeded") {
                ApiError::TooLarge { limit }
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
        let mut json: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::BadRequest(format!("the request body is not valid JSON: {e}"))
        })?;
        if !json.is_object() {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        let asked = match json.get("model") {
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 256 => m.clone(),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "\"model\" must be a non-empty string of at most 256 characters".into(),
                ));
            }
            None => {
                return Err(ApiError::BadRequest(
                    "missing required field \"model\"".into(),
                ));
            }
        };
        self.model = asked.clone();
        self.stream = match json.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b && self.endpoint.has_output(),
            Some(_) => return Err(ApiError::BadRequest("\"stream\" must be a boolean".into())),
        };
        let usage_asked = json
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        // Level and route.
        let requested_level = header_text(headers, LEVEL_HEADER);
        let level = routing::resolve_level(
            self.caller.tier,
            self.caller.power_level,
            &asked,
            requested_level.as_deref(),
        )?;
        self.level = Some(level);
        let catalog = self.gw.catalog();
        let price: ModelPrice = routing::choose(
            &catalog.prices,
            &catalog.levels,
            level,
            &asked,
            self.endpoint,
            &self.gw.observations,
        )?
        .clone();
        self.price_table = catalog.prices.version.clone();
        if price.model != asked {
            self.alias = Some(asked);
            json["model"] = Value::String(price.model.clone());
        }
        self.model = price.model.clone();
        self.provider = Some(price.provider.clone());
        let level_multiplier = routing::level_config(&catalog.levels, level)
            .map_or(rust_decimal::Decimal::ONE, |c| c.cost_multiplier);
        drop(catalog);

        // Prompt bound and the client's output cap.
        self.prompt_bound = usage::prompt_token_bound(self.endpoint, &json)
            .map_err(|e| ApiError::BadRequest(e.0))?;
        let client_cap = if self.endpoint.has_output() {
            usage::output_cap(&json).map_err(|e| ApiError::BadRequest(e.0))?
        } else {
            None
        };

        // BYOK: the user's own key for the provider, if they have one.
        let byok = self.open_byok_key(&price.provider).await?;
        let config = &self.gw.config;
        let rate = Rate::new(
            &price,
            &Factors {
                credits_per_usd: config.pricing.credits_per_usd,
                level_multiplier,
                tier_markup: config.tier_markup(self.caller.tier),
                byok_fee: byok
                    .as_ref()
                    .map(|_| config.pricing.byok_fee_percent / rust_decimal::Decimal::ONE_HUNDRED),
            },
        );
        self.rate = Some(rate);

        // Reserve the worst case, at most what the user can afford. Without a client cap the
        // output is capped at the configured default (never more than the model's maximum), so
        // one uncapped request does not lock a user's whole balance.
        let output_wanted = if self.endpoint.has_output() {
            let default = u64::from(config.limits.default_max_output_tokens);
            client_cap.unwrap_or_else(|| {
                price
                    .max_output_tokens
                    .map_or(default, |m| default.min(u64::from(m)))
            })
        } else {
            0
        };
        // Each choice of each prompt may produce the whole output cap.
        let choices = if self.endpoint.has_output() {
            usage::choices(&json)
                .map_err(|e| ApiError::BadRequest(e.0))?
                .saturating_mul(usage::prompt_count(self.endpoint, &json))
        } else {
            1
        };
        let worst = rate.cost(self.prompt_bound, output_wanted.saturating_mul(choices));
        let floor = rate.cost(
            self.prompt_bound,
            choices * u64::from(self.endpoint.has_output()),
        );
        if worst.is_positive() {
            self.hold(worst, floor.max(Credits::from_nanos(1)).min(worst))
                .await?;
        }
        if self.endpoint.has_output() {
            let affordable = if self.held.is_positive() {
                rate.output_tokens_affordable(self.held, self.prompt_bound) / choices
            } else {
                u64::MAX
            };
            let send = output_wanted.min(affordable);
            if client_cap.is_none_or(|n| send < n) {
                let default_field = match self.endpoint {
                    Endpoint::ChatCompletions => CapField::MaxCompletionTokens,
                    _ => CapField::MaxTokens,
                };
                usage::set_output_cap(&mut json, send, default_field);
                self.max_tokens_capped = Some(send);
            }
        }
        if self.stream {
            match json
                .get_mut("stream_options")
                .and_then(Value::as_object_mut)
            {
                Some(options) => {
                    options.insert("include_usage".into(), Value::Bool(true));
                }
                None => json["stream_options"] = json!({ "include_usage": true }),
            }
        }
        usage::strip_upstream_controls(&mut json);

        // Forward.
        let upstream = self.forward(&json, byok).await?;
        self.litellm_call_id = header_text(upstream.headers(), "x-litellm-call-id");
        self.litellm_response_cost = header_text(upstream.headers(), "x-litellm-response-cost");
        // An upstream that answered a stream request with a plain body is metered as one.
        let is_sse = upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if self.stream && is_sse {
            let capped = self.max_tokens_capped;
            let mut response = stream::respond(StreamMeter::new(
                std::mem::replace(self, self.detached()),
                upstream,
                !usage_asked,
            ));
            if let Some(n) = capped {
                insert_text(
                    response.headers_mut(),
                    "x-tollgate-max-tokens",
                    &n.to_string(),
                );
            }
            return Ok(response);
        }
        self.respond_json(upstream).await
    }

    /// A copy of the identifying fields, left behind when the meter moves into a stream (the
    /// handler only reads its labels afterwards; the stream owns the ledger work).
    fn detached(&self) -> Meter {
        let mut m = Meter::new(
            self.gw.clone(),
            self.caller.clone(),
            self.endpoint,
            self.request_id.clone(),
        );
        m.model = self.model.clone();
        m.level = self.level;
        m.closed = true;
        m
    }

    async fn open_byok_key(
        &mut self,
        provider: &str,
    ) -> Result<Option<Zeroizing<String>>, ApiError> {
        if !self.caller.byok_providers.iter().any(|p| p == provider) {
            return Ok(None);
        }
        let (Some(master), Ok(provider_enum)) =
            (self.gw.master.clone(), provider.parse::<Provider>())
        else {
            return Err(ApiError::Internal {
                request_id: self.request_id.clone(),
            });
        };
        if !self.gw.config.providers.contains_key(provider) {
            return Err(ApiError::BadRequest(format!(
                "your BYOK key for {provider} cannot be used: this gateway has no base URL for {provider}"
            )));
        }
        let user = self.caller.user_id.clone();
        let opened = self
            .gw
            .writer
            .read(move |ledger| vault::open_default(ledger, &master, &user, provider_enum))
            .await
            .map_err(|e| ApiError::Overloaded(e.to_string()))?;
        match opened {
            Ok(Some((id, secret))) => {
                self.byok_key_id = Some(id);
                Ok(Some(secret))
            }
            // Removed since the caller was cached: the request goes through LiteLLM.
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::error!(request_id = %self.request_id, error = %e, "could not open a BYOK key");
                Err(ApiError::Internal {
                    request_id: self.request_id.clone(),
                })
            }
        }
    }

    async fn hold(&mut self, amount: Credits, floor: Credits) -> Result<(), ApiError> {
        let op = Op::Hold(HoldRequest {
            user_id: self.caller.user_id.clone(),
            request_id: self.request_id.clone(),
            amount,
            min_amount: Some(floor),
            ttl: self.gw.config.hold_ttl(),
        });
        match self.gw.writer.apply(op).await {
            Err(e) => Err(ApiError::Overloaded(e.to_string())),
            Ok(Ok(Receipt::Hold(h))) => {
                self.held = h.amount;
                self.gw.metrics.open_holds.inc();
                Ok(())
            }
            Ok(Ok(other)) => Err(self.internal(&format!("a hold returned {other:?}"))),
            Ok(Err(LedgerError::Refused(Refusal::InsufficientCredit {
                available,
                needed,
                ..
            }))) => Err(ApiError::InsufficientCredit {
                available,
                needed,
                estimate: amount,
            }),
            Ok(Err(LedgerError::Refused(Refusal::SpendCapReached {
                cap, used, held, ..
            }))) => Err(ApiError::SpendCap { cap, used, held }),
            Ok(Err(LedgerError::TooManyOpenHolds { open, .. })) => {
                Err(ApiError::TooManyInFlight(format!(
                    "too many requests in flight for this user ({open}); retry when some finish"
                )))
            }
            Ok(Err(e)) => Err(self.internal(&e.to_string())),
        }
    }

    fn internal(&self, detail: &str) -> ApiError {
        tracing::error!(request_id = %self.request_id, detail, "internal error");
        ApiError::Internal {
            request_id: self.request_id.clone(),
        }
    }

    /// Sends the request upstream and waits for the response's headers.
    async fn forward(
        &mut self,
        json: &Value,
        byok: Option<Zeroizing<String>>,
    ) -> Result<reqwest::Response, ApiError> {
        let config = &self.gw.config;
        let path = self.endpoint.path().trim_start_matches("/v1");
        let url = match (&byok, &self.provider) {
            (Some(_), Some(provider)) => config
                .providers
                .get(provider)
                .map(|p| format!("{}{path}", p.base_url.trim_end_matches('/'))),
            _ => None,
        }
        .unwrap_or_else(|| format!("{}/v1{path}", config.upstream.url.trim_end_matches('/')));
        let mut request = self.gw.http.post(url).json(json);
        match (&byok, &config.upstream.api_key) {
            (Some(key), _) => request = request.bearer_auth(key.as_str()),
            (None, Some(key)) => request = request.bearer_auth(key.expose()),
            (None, None) => {}
        }
        drop(byok);
        let timeout = config.response_timeout();
        let started = Instant::now();
        let failed = match tokio::time::timeout(timeout, request.send()).await {
            Ok(Ok(r)) => Ok(r),
            Err(_) => Err(ApiError::UpstreamTimeout(format!(
                "the upstream did not answer within {} s",
                timeout.as_secs()
            ))),
            Ok(Err(e)) if e.is_timeout() => Err(ApiError::UpstreamTimeout(format!(
                "the upstream timed out: {}",
                super::error_chain(&e.without_url())
            ))),
            Ok(Err(e)) => Err(ApiError::UpstreamFailed(format!(
                "the upstream could not be reached: {}",
                super::error_chain(&e.without_url())
            ))),
        };
        let response = match failed {
            Ok(r) => r,
            Err(e) => {
                self.observe(started.elapsed(), false, Some(&e.to_string()));
                return Err(e);
            }
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = read_bounded(response, ERROR_BODY_BYTES_MAX)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        let error = upstream_status_error(
            status,
            &message,
            self.byok_key_id.is_some(),
            self.provider.as_deref(),
        );
        // Only the upstream's own failures count against its health: a client's bad request or
        // a user's bad BYOK key says nothing about the provider.
        if status.is_server_error() {
            self.observe(started.elapsed(), false, Some(&error.to_string()));
        }
        Err(error)
    }

    /// Records one upstream call's outcome for routing and provider health.
    /// `latency`: to the last byte for a JSON response, to the first token for a stream (what
    /// alias routing compares against a level's maximum).
    pub fn observe(&self, latency: std::time::Duration, success: bool, error: Option<&str>) {
        let ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        if let Some(provider) = &self.provider {
            self.gw
                .observations
                .record(&self.model, provider, ms, success, error);
        }
        if success {
            self.gw
                .metrics
                .upstream_latency
                .get_or_create(&RouteLabels {
                    route: self.endpoint.path(),
                })
                .observe(latency.as_secs_f64());
        }
    }

    /// A non-streamed response: read it whole (bounded), meter, settle, respond.
    async fn respond_json(&mut self, upstream: reqwest::Response) -> Result<Response, ApiError> {
        let status = upstream.status();
        let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
        let forwarded_at = self.started;
        let limit = self.gw.config.limits.response_bytes_max;
        let timeout = self.gw.config.response_timeout();
        let read = tokio::time::timeout(timeout, read_bounded(upstream, limit))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the upstream's body did not arrive within {} s",
                    timeout.as_secs()
                ))
            });
        let body = match read {
            Ok(body) => body,
            Err(e) => {
                self.observe(forwarded_at.elapsed(), false, Some(&e));
                return Err(ApiError::UpstreamFailed(e));
            }
        };
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let why = format!("the upstream sent a malformed JSON body: {e}");
                self.observe(forwarded_at.elapsed(), false, Some(&why));
                return Err(ApiError::UpstreamFailed(why));
            }
        };
        self.observe(forwarded_at.elapsed(), true, None);
        let (usage, estimated) = match usage::reported_usage(&parsed) {
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt_tokens: usage::estimate_prompt_tokens(self.prompt_bound),
                    completion_tokens: usage::estimate_tokens(usage::generated_bytes(&parsed)),
                },
                true,
            ),
        };
        let settled = self
            .settle(Outcome {
                usage,
                estimated,
                http_status: status.as_u16(),
                ..Outcome::default()
            })
            .await?;
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            content_type.unwrap_or(HeaderValue::from_static("application/json")),
        );
        insert_text(
            headers,
            "x-tollgate-credits-charged",
            &settled.charged.to_string(),
        );
        insert_text(headers, "x-tollgate-balance", &settled.balance.to_string());
        if let Some(n) = self.max_tokens_capped {
            insert_text(headers, "x-tollgate-max-tokens", &n.to_string());
        }
        Ok(response)
    }

    /// The usage row for this request.
    fn usage_record(&self, outcome: &Outcome, cost: Credits) -> UsageRecord {
        let total = outcome.usage.prompt_tokens + outcome.usage.completion_tokens;
        let latency = self.started.elapsed();
        let mut metadata = json!({
            "price_table": self.price_table,
            "usage_estimated": outcome.estimated,
            "stream": self.stream,
        });
        if let Some(v) = &self.litellm_call_id {
            metadata["litellm_call_id"] = json!(v);
        }
        if let Some(v) = &self.litellm_response_cost {
            metadata["litellm_response_cost"] = json!(v);
        }
        if let Some(v) = &self.alias {
            metadata["alias"] = json!(v);
        }
        if let Some(v) = self.max_tokens_capped {
            metadata["max_tokens_capped"] = json!(v);
        }
        let completion = outcome.usage.completion_tokens;
        let secs = latency.as_secs_f64();
        UsageRecord {
            endpoint: self.endpoint.path().to_owned(),
            model: self.model.clone(),
            provider: self.provider.clone(),
            power_level: self.level,
            prompt_tokens: u32::try_from(outcome.usage.prompt_tokens).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(completion).unwrap_or(u32::MAX),
            cost_per_token: Rate::per_token_text(cost, total),
            is_byok: self.byok_key_id.is_some(),
            byok_key_id: self.byok_key_id,
            latency_ms: Some(u32::try_from(latency.as_millis()).unwrap_or(u32::MAX)),
            time_to_first_token_ms: outcome.time_to_first_token_ms,
            tokens_per_second: (completion > 0 && secs > 0.0).then(|| completion as f64 / secs),
            http_status: Some(outcome.http_status),
            error_type: outcome.error.as_ref().map(|(t, _)| *t),
            error_message: outcome
                .error
                .as_ref()
                .map(|(_, m)| m.chars().take(ERROR_MESSAGE_LEN_MAX).collect()),
            metadata: Some(metadata),
            session_id: None,
            app_id: None,
            user_agent: self.user_agent.clone(),
            client_ip: self.client_ip.clone(),
        }
    }

    /// Settles the request at its metered cost (durable when this returns), or logs it free if
    /// nothing was held. Safe to call once; later calls do nothing.
    pub async fn settle(&mut self, outcome: Outcome) -> Result<Settled, ApiError> {
        let rate = self.rate.unwrap_or(Rate {
            input_per_token: rust_decimal::Decimal::ZERO,
            output_per_token: rust_decimal::Decimal::ZERO,
        });
        let cost = rate.cost(outcome.usage.prompt_tokens, outcome.usage.completion_tokens);
        let usage = self.usage_record(&outcome, cost);
        if self.closed {
            return Err(self.internal("a request was settled twice"));
        }
        self.closed = true;
        let user_id = self.caller.user_id.clone();
        let request_id = self.request_id.clone();
        let op = if self.held.is_positive() {
            Op::Settle(Settle {
                user_id,
                request_id,
                cost,
                usage,
            })
        } else {
            Op::Release(Release {
                user_id,
                request_id,
                usage: Some(usage),
            })
        };
        let result = match self.apply_retrying(op).await {
            Ok(result) => result,
            Err(e) => {
                // Not settled: let `fail` release the hold and log the request.
                self.closed = false;
                return Err(self.internal(&e.to_string()));
            }
        };
        if result.is_ok() && self.held.is_positive() {
            self.gw.metrics.open_holds.dec();
        }
        let charged = match result {
            Ok(Receipt::Settle(s)) => {
                if let Some(entry) = &s.entry {
                    self.after_charge(entry.balance_after, s.charged);
                    return Ok(Settled {
                        charged: s.charged,
                        balance: entry.balance_after,
                    });
                }
                s.charged
            }
            Ok(Receipt::Release(_)) => Credits::ZERO,
            Ok(other) => return Err(self.internal(&format!("a settle returned {other:?}"))),
            Err(e) => {
                self.closed = false;
                return Err(self.internal(&format!("settling failed: {e}")));
            }
        };
        let user = self.caller.user_id.clone();
        let balance = self
            .gw
            .writer
            .read(move |l| l.account(&user).map(|a| a.balance))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(Credits::ZERO);
        Ok(Settled { charged, balance })
    }

    /// Applies a settle or release, retrying a batch that failed as a whole (both are idempotent
    /// by request id, so a retry never charges twice).
    async fn apply_retrying(
        &self,
        op: Op,
    ) -> Result<Result<Receipt, LedgerError>, super::writer::WriterError> {
        let mut wait = std::time::Duration::from_millis(20);
        for _ in 1..SETTLE_ATTEMPTS {
            match self.gw.writer.apply_waiting(op.clone()).await? {
                Err(LedgerError::BatchFailed(why)) => {
                    tracing::warn!(request_id = %self.request_id, %why, "retrying a settle");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                result => return Ok(result),
            }
        }
        self.gw.writer.apply_waiting(op).await
    }

    /// Counts the charge and sends a low-balance alert if this charge crossed the threshold.
    fn after_charge(&self, balance_after: Credits, charged: Credits) {
        self.gw
            .metrics
            .credits_charged_nanos
            .inc_by(u64::try_from(charged.nanos()).unwrap_or(0));
        let Some(threshold) = self.gw.config.alerts.low_balance_threshold else {
            return;
        };
        let before = balance_after.checked_add(charged).unwrap_or(Credits::MAX);
        if before >= threshold
            && balance_after < threshold
            && let Some(alerts) = &self.gw.alerts
        {
            alerts.send(super::alerts::Alert {
                user_id: self.caller.user_id.clone(),
                balance: balance_after,
                threshold,
                request_id: self.request_id.clone(),
            });
        }
    }

    /// Ends a failed request: releases its hold (charging nothing) and logs it with the error.
    pub async fn fail(&mut self, error: &ApiError, outcome: Option<Outcome>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let outcome = outcome.unwrap_or_else(|| Outcome {
            http_status: error.status().as_u16(),
            error: Some((error.usage_error_type(), error.to_string())),
            ..Outcome::default()
        });
        let usage = self.usage_record(&outcome, Credits::ZERO);
        if self.held.is_positive() {
            self.gw.metrics.open_holds.dec();
        }
        let op = Op::Release(Release {
            user_id: self.caller.user_id.clone(),
            request_id: self.request_id.clone(),
            usage: Some(usage),
        });
        match self.apply_retrying(op).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(request_id = %self.request_id, error = %e, "could not release a failed request");
            }
            Err(e) => {
                tracing::error!(request_id = %self.request_id, error = %e, "could not release a failed request");
            }
        }
    }

    /// Records time to first token for a stream.
    pub fn observe_first_token(&self, after: std::time::Duration) {
        self.gw
            .metrics
            .time_to_first_token
            .get_or_create(&RouteLabels {
                route: self.endpoint.path(),
            })
            .observe(after.as_secs_f64());
    }
}

/// What a settle charged and the balance after it.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub charged: Credits,
    pub balance: Credits,
}

fn insert_text(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// An upstream's refusal: its client errors pass through with their message (the client's own
/// mistake, e.g. an invalid parameter, or a provider rate limit); a refused key is named without
/// echoing the upstream's text (which may quote part of the key): the user's own BYOK key is
/// their 400, tollgate's LiteLLM key a 502; every 5xx is a 502.
fn upstream_status_error(
    status: StatusCode,
    message: &str,
    byok: bool,
    provider: Option<&str>,
) -> ApiError {
    match status.as_u16() {
        401 | 403 if byok => ApiError::BadRequest(format!(
            "{} refused your own API key for it ({status}); replace it with `tollgate keys add`",
            provider.unwrap_or("the provider")
        )),
        401 | 403 => {
            tracing::error!(%status, upstream_message = %message, "the upstream refused the gateway's key");
            ApiError::UpstreamFailed(format!(
                "the upstream refused the gateway's credentials ({status}); the gateway's log has its answer"
            ))
        }
        408 | 504 => {
            ApiError::UpstreamTimeout(format!("the upstream timed out ({status}): {message}"))
        }
        400..=499 => ApiError::UpstreamRejected {
            status: status.as_u16(),
            message: format!("the upstream refused the request ({status}): {message}"),
        },
        _ => ApiError::UpstreamFailed(format!("the upstream failed ({status}): {message}")),
    }
}

/// Reads a response body up to `limit` bytes.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(format!("the upstream's response is over {limit} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(e) => {
                return Err(format!(
                    "the upstream's response broke off: {}",
                    super::error_chain(&e.without_url())
                ));
            }
        }
    }
}

/// `GET /v1/models`: the models the caller's level may use, and the aliases.
pub async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    match auth::authenticate(&gw.auth_cache, &gw.writer, &headers).await {
        Ok(caller) => axum::Json(json!({"object": "list", "data": available_models(&gw, &caller)}))
            .into_response(),
        Err(e) => refusal(&gw, e),
    }
}

/// `GET /v1/models/{id}`: one model, if the caller's level may use it.
pub async fn model(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match auth::authenticate(&gw.auth_cache, &gw.writer, &headers).await {
        Ok(c) => c,
        Err(e) => return refusal(&gw, e),
    };
    match available_models(&gw, &caller)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
    {
        Some(m) => axum::Json(m).into_response(),
        None => ApiError::NotFound(format!(
            "model {id:?} is not available at power level {}",
            caller.power_level
        ))
        .into_response(),
    }
}

fn available_models(gw: &Gateway, caller: &Caller) -> Vec<Value> {
    let catalog = gw.catalog();
    let allowed: Vec<&str> = routing::level_config(&catalog.levels, caller.power_level)
        .map(|c| c.preferred_providers.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut data: Vec<Value> = catalog
        .prices
        .models()
        .filter(|m| allowed.contains(&m.provider.as_str()))
        .map(|m| json!({"id": m.model, "object": "model", "created": 0, "owned_by": m.provider}))
        .collect();
    // `auto`, and the level aliases the caller's tier may ask for.
    let tier_levels = super::config::levels_allowed(caller.tier);
    data.extend(
        routing::ALIASES
            .iter()
            .filter(|a| {
                a.parse::<PowerLevel>()
                    .map_or(true, |level| tier_levels.contains(&level))
            })
            .map(|a| json!({"id": a, "object": "model", "created": 0, "owned_by": "tollgate"})),
    );
    data
}

impl Gateway {
    /// A bounded metric label for a model: its name if the price table knows it.
    fn model_label(&self, model: &str) -> String {
        if self.catalog().prices.get(model).is_some() {
            model.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// The usage-log outcome of a stream that ended early (disconnect, upstream error, timeout).
pub fn early_end(
    usage: Usage,
    estimated: bool,
    ttft: Option<u32>,
    error: UsageErrorType,
    message: String,
    status: u16,
) -> Outcome {
    Outcome {
        usage,
        estimated,
        http_status: status,
        time_to_first_token_ms: ttft,
        error: Some((error, message)),
    }
}
