//! The request path (PRODUCT.md steps 1-9) for the metered routes.
//!
//! Order: authenticate → read the body (bounded, timed) → check it ([`request`]) → level and
//! route ([`routing`]) → the prompt's ceiling ([`tokens`]) → BYOK key → reserve ([`money`]) →
//! cap the output at what was reserved → forward ([`upstream`]) → meter → settle → respond.
//! A request that fails after authentication releases what it holds and leaves a usage row with
//! its error; a streamed one hands its [`Exchange`] to [`super::stream`], which settles before
//! the last event; a JSON answer is read by [`answer`].
//!
//! What an uncapped request may produce: the model's own maximum output (the smallest of its
//! deployments'), or `limits.default_max_output_tokens` when the operator set a lower one, or
//! [`UNKNOWN_MODEL_MAX_OUTPUT`] for a model whose maximum nobody knows; whenever the gateway
//! sends a cap the client did not ask for below the model's own, it says so in
//! `x-tollgate-max-tokens`. A non-streamed answer that could be larger than the gateway reads
//! (`limits.response_bytes_max`) is refused up front.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use tollgate_schema::money::Credits;

use crate::ledger::PowerLevel;
use crate::ledger::responses::SERVED_RESPONSE_RETENTION_DAYS;
use crate::prices::cost::Ceiling;

use super::Gateway;
use super::access::AccessLine;
use super::answer;
use super::auth::{self, Caller};
use super::error::ApiError;
use super::exchange::{Exchange, Origin};
use super::metrics::{ReasonLabels, RequestLabels};
use super::money::{Reserve, Ticket};
use super::pricing::{Factors, Quote};
use super::request::{self, ClientRequest, Endpoint, Wire};
use super::routing::{self, Route};
use super::stream::{self, StreamMeter};
use super::tokens;
use super::upstream::{self, LiteLlmHeaders, header_text};

/// The header a request may use to ask for a power level within its tier.
pub const LEVEL_HEADER: &str = "x-tollgate-power-level";
/// The header that announces an output cap the gateway set below what the client or the model
/// would have allowed.
pub const MAX_TOKENS_HEADER: &str = "x-tollgate-max-tokens";
/// Output tokens reserved for a model whose own maximum is unknown, when no default is set.
pub const UNKNOWN_MODEL_MAX_OUTPUT: u64 = 4_096;
/// Request bodies above this are checked on a blocking thread (tokenizing them takes a while; so
/// does loading a tokenizer, on its first use).
const BLOCKING_BODY_BYTES: usize = 64 * 1024;

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

pub async fn responses(s: State<Arc<Gateway>>, c: ConnectInfo<SocketAddr>, r: Request) -> Response {
    handle(s, Endpoint::Responses, c, r).await
}

pub async fn messages(s: State<Arc<Gateway>>, c: ConnectInfo<SocketAddr>, r: Request) -> Response {
    handle(s, Endpoint::Messages, c, r).await
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
    let wire = endpoint.wire();
    let started = Instant::now();
    let mut response = match auth::authenticate(&gw.auth_cache, &gw.writer, &parts.headers).await {
        Err(e) => {
            log_refusal(&request_id, None, endpoint, started, &e);
            refusal(&gw, e, wire)
        }
        Ok(caller) => {
            let origin = Origin {
                request_id: request_id.clone(),
                caller,
                endpoint,
                started,
                user_agent: header_text(&parts.headers, header::USER_AGENT.as_str()),
                client_ip: Some(client.ip().to_string()),
            };
            // The request's ledger path runs in its own task: a client that hangs up cannot
            // cancel it between the hold and the settle.
            let task = tokio::spawn(run(gw.clone(), origin, parts.headers, body));
            match task.await {
                Ok((response, model, level)) => {
                    labels.model = model;
                    labels.level = level;
                    response
                }
                Err(e) => {
                    tracing::error!(request_id = %request_id, error = %e, "request task failed");
                    let e = ApiError::Internal {
                        request_id: request_id.clone(),
                    };
                    log_refusal(&request_id, None, endpoint, started, &e);
                    e.respond(wire)
                }
            }
        }
    };
    labels.status = response.status().as_u16();
    gw.metrics.requests.get_or_create(&labels).inc();
    name_request(&mut response, &request_id);
    response
}

/// Names the request in its answer: under the names OpenAI's SDKs read (`x-request-id`),
/// Anthropic's (`request-id`), and tollgate's own.
pub fn name_request(response: &mut Response, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        for name in ["x-request-id", "request-id", "x-tollgate-request-id"] {
            response.headers_mut().insert(name, v.clone());
        }
    }
}

/// The access line of a request refused before it was admitted (nothing forwarded, nothing
/// charged).
fn log_refusal(
    request_id: &str,
    known: Option<(&str, &Known)>,
    endpoint: Endpoint,
    started: Instant,
    e: &ApiError,
) {
    let reason = e.to_string();
    AccessLine {
        request_id,
        user: known.map(|(user, _)| user),
        route: endpoint.path(),
        model: known.and_then(|(_, k)| k.model.as_deref()),
        level: known.and_then(|(_, k)| k.level),
        status: e.status().as_u16(),
        latency: started.elapsed(),
        stream: known.is_some_and(|(_, k)| k.stream),
        error: Some((e.code(), &reason)),
        ..AccessLine::default()
    }
    .emit();
}

/// Counts a refusal and answers it in `wire`'s error shape.
pub fn refusal(gw: &Gateway, e: ApiError, wire: Wire) -> Response {
    if e.status().is_client_error() {
        gw.metrics
            .refusals
            .get_or_create(&ReasonLabels { reason: e.code() })
            .inc();
    }
    e.respond(wire)
}

/// What is known of a request that failed before it was admitted, for its usage row.
#[derive(Debug, Default)]
struct Known {
    model: Option<String>,
    level: Option<PowerLevel>,
    provider: Option<String>,
    stream: bool,
}

/// The request's path after authentication: its response, and its metric labels.
async fn run(
    gw: Arc<Gateway>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> (Response, String, &'static str) {
    let mut known = Known::default();
    let wire = origin.endpoint.wire();
    match admit(&gw, &origin, &headers, body, &mut known).await {
        Ok((exchange, request)) => {
            let model = gw.model_label(&exchange.route.forward_as);
            let level = exchange.level.as_str();
            let response = match forward(exchange, request, &headers).await {
                Ok(response) => response,
                Err(e) => refusal(&gw, e, wire),
            };
            (response, model, level)
        }
        Err(e) => {
            log_refusal(
                &origin.request_id,
                Some((&origin.caller.user_id, &known)),
                origin.endpoint,
                origin.started,
                &e,
            );
            let model = known
                .model
                .as_deref()
                .map_or_else(|| "-".to_owned(), |m| gw.model_label(m));
            let level = known.level.map_or("-", PowerLevel::as_str);
            let usage = super::exchange::refused_usage(
                &origin,
                &e,
                known.model.unwrap_or_default(),
                known.level,
                known.provider,
                known.stream,
            );
            Ticket::unreserved(gw.clone(), &origin.caller.user_id, &origin.request_id)
                .release(usage)
                .await;
            (refusal(&gw, e, wire), model, level)
        }
    }
}

/// Reads and checks the request, routes it and reserves its credit.
async fn admit(
    gw: &Arc<Gateway>,
    origin: &Origin,
    headers: &HeaderMap,
    body: Body,
    known: &mut Known,
) -> Result<(Exchange, ClientRequest), ApiError> {
    let bytes = request::read_body(
        headers,
        body,
        gw.config.limits.body_bytes_max,
        gw.config.body_read_timeout(),
    )
    .await?;
    let extra = gw.config.requests.extra_fields(origin.endpoint);
    let endpoint = origin.endpoint;
    let mut request = if bytes.len() > BLOCKING_BODY_BYTES {
        let extra = extra.to_vec();
        tokio::task::spawn_blocking(move || request::parse(endpoint, &bytes, &extra))
            .await
            .map_err(|_| internal_error(origin))??
    } else {
        request::parse(endpoint, &bytes, extra)?
    };
    known.model = Some(request.model.clone());
    known.stream = request.stream;
    upstream::passed_headers(endpoint.path(), headers)?;
    let caller: &Caller = &origin.caller;
    let level = routing::resolve_level(
        caller.tier,
        caller.power_level,
        &request.model,
        header_text(headers, LEVEL_HEADER).as_deref(),
    )?;
    known.level = Some(level);
    let catalog = gw.catalog();
    let route: Route = routing::route(
        &catalog.routing(),
        level,
        &request.model,
        endpoint,
        &gw.observations,
    )?;
    known.model = Some(route.price.model.clone());
    known.provider = Some(route.price.provider.clone());
    let multiplier = routing::multiplier(&catalog.levels, level, caller.power_level);
    let price_table = catalog.prices.version.clone();
    drop(catalog);

    let loaded = tokens::is_loaded(tokens::tokenizer_for(&route.price));
    let mut prompt = if !loaded || bytes_len(&request) > BLOCKING_BODY_BYTES {
        let (r, price) = (request.clone(), route.price.clone());
        tokio::task::spawn_blocking(move || tokens::prompt_ceiling(&r, &price))
            .await
            .map_err(|_| internal_error(origin))??
    } else {
        tokens::prompt_ceiling(&request, &route.price)?
    };
    prompt.tokens = prompt
        .tokens
        .saturating_add(previous_response_tokens(gw, origin, &request).await?);
    let (byok, byok_key_id) =
        match upstream::open_byok_key(gw, origin, &route.price.provider).await? {
            Some((byok, id)) => (Some(byok), Some(id)),
            None => (None, None),
        };
    if let Some(b) = &byok
        && !byok_serves(&b.provider, endpoint)
    {
        return Err(ApiError::BadRequest(format!(
            "your own {provider} key cannot serve {path}: tollgate sends BYOK requests straight \
             to the provider, and {provider} does not speak this API; use /v1/chat/completions",
            provider = b.provider,
            path = endpoint.path()
        )));
    }
    let config = &gw.config;
    let quote = Quote::new(
        route.price.clone(),
        &Factors {
            credits_per_usd: config.pricing.credits_per_usd,
            level_multiplier: multiplier,
            tier_markup: config.tier_markup(caller.tier),
            byok_fee: byok
                .as_ref()
                .map(|_| config.pricing.byok_fee_percent / rust_decimal::Decimal::ONE_HUNDRED),
        },
    );

    // What the request may use at most, and the least it can run with.
    let choices = if endpoint.has_output() {
        request.choices
    } else {
        1
    };
    let model_max = route.max_output_tokens.map(u64::from);
    let default = config.limits.default_max_output_tokens.map(u64::from);
    let gateway_cap = match (model_max, default) {
        (Some(m), Some(d)) => m.min(d),
        (Some(m), None) => m,
        (None, Some(d)) => d,
        (None, None) => UNKNOWN_MODEL_MAX_OUTPUT,
    };
    let wanted = if endpoint.has_output() {
        request.output_cap.unwrap_or(gateway_cap)
    } else {
        0
    };
    let searches = request.searches_ceiling(&route.price.provider)?;
    if route.price.provider == "anthropic" {
        // Anthropic bills a search's results as input tokens of the turns after it.
        prompt.tokens = prompt
            .tokens
            .saturating_add(searches.saturating_mul(tokens::SEARCH_RESULT_TOKENS));
    }
    let ceiling = Ceiling {
        prompt_tokens: prompt.tokens,
        output_tokens: wanted.saturating_mul(choices),
        audio_input: prompt.audio,
        audio_output: request.audio_output,
        images: prompt.images,
        searches,
    };
    if !request.stream && endpoint.has_output() {
        request.check_answer_size(wanted, choices, config.limits.response_bytes_max)?;
    }
    let worst = quote.worst(&ceiling);
    let floor = quote.worst(&Ceiling {
        output_tokens: choices * u64::from(endpoint.has_output()),
        ..ceiling
    });
    let ticket = if worst.is_positive() {
        Ticket::reserve(
            gw.clone(),
            Reserve {
                user_id: caller.user_id.clone(),
                request_id: origin.request_id.clone(),
                worst,
                floor: floor.max(Credits::from_nanos(1)).min(worst),
                ttl: config.hold_ttl(),
            },
        )
        .await?
    } else {
        Ticket::unreserved(gw.clone(), &caller.user_id, &origin.request_id)
    };

    // Cap the output at what was reserved, in every field the upstream obeys.
    let mut cap_sent = None;
    let mut cap_announced = false;
    if endpoint.has_output() {
        let affordable = if ticket.held().is_positive() {
            let without_output = Ceiling {
                output_tokens: 0,
                ..ceiling
            };
            quote.output_tokens_affordable(ticket.held(), &without_output) / choices
        } else {
            u64::MAX
        };
        let send = wanted.min(affordable).max(1);
        request.set_output_cap(send);
        cap_sent = Some(send);
        cap_announced = match request.output_cap {
            Some(asked) => send < asked,
            None => model_max.is_none_or(|m| send < m),
        };
    }
    if request.stream {
        request.ask_stream_usage();
    }
    let exchange = Exchange {
        gw: gw.clone(),
        origin: origin.clone(),
        route,
        level,
        quote,
        prompt,
        cap_sent,
        cap_announced,
        price_table,
        stream: request.stream,
        byok,
        byok_key_id,
        litellm: LiteLlmHeaders::default(),
        search_size: request.search.and_then(|s| s.size),
        ticket,
    };
    Ok((exchange, request))
}

/// Whether a BYOK request to `provider` (sent straight to it) can be served on `endpoint`: the
/// Responses API is OpenAI's, the Messages API Anthropic's; chat, completions and embeddings go
/// to any provider's OpenAI-compatible endpoint.
fn byok_serves(provider: &str, endpoint: Endpoint) -> bool {
    match endpoint {
        Endpoint::Responses => provider == "openai",
        Endpoint::Messages => provider == "anthropic",
        _ => true,
    }
}

/// The tokens a Responses request's `previous_response_id` adds to its prompt: the prompt and
/// the output of that response, as metered when this gateway served it to this caller. A
/// response this gateway did not serve (another host's, another user's, or past the retention)
/// cannot be bounded: refused.
async fn previous_response_tokens(
    gw: &Gateway,
    origin: &Origin,
    request: &ClientRequest,
) -> Result<u64, ApiError> {
    let Some(id) = request.previous_response_id.clone() else {
        return Ok(0);
    };
    let lookup = id.clone();
    let served = gw
        .writer
        .read(move |ledger| ledger.served_response(&lookup))
        .await
        .map_err(|e| ApiError::Overloaded(e.to_string()))?
        .map_err(|e| {
            tracing::error!(request_id = %origin.request_id, error = %e, "reading a served response failed");
            internal_error(origin)
        })?;
    match served {
        Some(r) if r.user_id == origin.caller.user_id => {
            Ok(u64::from(r.prompt_tokens) + u64::from(r.completion_tokens))
        }
        _ => Err(ApiError::BadRequest(format!(
            "\"previous_response_id\" {id:?} is not a response this gateway served you in the \
             last {SERVED_RESPONSE_RETENTION_DAYS} days: tollgate cannot bound the conversation it \
             would add to the prompt; send the earlier turns as \"input\" instead"
        ))),
    }
}

fn bytes_len(request: &ClientRequest) -> usize {
    request
        .body
        .get(request.endpoint.prompt_field())
        .map_or(0, |p| p.to_string().len())
}

fn internal_error(origin: &Origin) -> ApiError {
    tracing::error!(request_id = %origin.request_id, "a request's check failed to run");
    ApiError::Internal {
        request_id: origin.request_id.clone(),
    }
}

/// Sends the admitted request and answers the client: a metered stream, or a JSON body.
async fn forward(
    mut exchange: Exchange,
    request: ClientRequest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let model = exchange.upstream_model();
    let body = request.forwarded(&model);
    let byok = exchange.byok.take();
    let gw = exchange.gw.clone();
    let path = request.endpoint.path();
    // Checked when the request was admitted.
    let passed = upstream::passed_headers(path, headers).unwrap_or_default();
    let sent = upstream::send(&gw, path, &body, byok, passed, |took, e| {
        exchange.observe(took, false, Some(&e.to_string()));
    })
    .await;
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(e) => {
            exchange.fail(&e, None).await;
            return Err(e);
        }
    };
    exchange.litellm = LiteLlmHeaders::read(upstream.headers());
    let announce = exchange
        .cap_announced
        .then_some(exchange.cap_sent)
        .flatten();
    let mut response = if request.stream && upstream::is_event_stream(upstream.headers()) {
        let wire = request.endpoint.wire();
        stream::respond(StreamMeter::new(
            exchange,
            wire,
            upstream,
            !request.usage_asked,
        ))
    } else {
        answer::respond_json(exchange, upstream).await?
    };
    if let Some(n) = announce {
        answer::insert_text(response.headers_mut(), MAX_TOKENS_HEADER, &n.to_string());
    }
    Ok(response)
}
