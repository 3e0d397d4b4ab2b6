//! An admitted request — who asked, how it is routed and priced, what it holds — and how it
//! ends: settled at its metered cost ([`Exchange::settle`]) or released ([`Exchange::fail`]),
//! either way with its one usage row. Both consume the exchange (and its [`Ticket`]), so a
//! request's money is closed once, by construction.
//!
//! What a settle charges: the reported usage at the price of the deployment that answered
//! (LiteLLM's `x-litellm-model-id`), else at the dearest of the name's deployments; and when
//! the answer names another model than the one priced, at the dearer of the two (logged, and
//! recorded as `response_model`). An estimate, where no usage came, counts the prompt's ceiling
//! (exact for OpenAI's tokenizers, a quarter of its bytes otherwise) and a quarter token per byte
//! of generated text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_schema::money::Credits;

use crate::ledger::{PowerLevel, UsageErrorType, UsageRecord};
use crate::prices::cost::{SearchSize, TokenUsage};
use crate::prices::{ModelPrice, model_family};

use super::Gateway;
use super::access::{AccessLine, Upstream};
use super::auth::Caller;
use super::error::ApiError;
use super::metrics::RouteLabels;
use super::money::{Settled, Ticket};
use super::pricing::Quote;
use super::request::Endpoint;
use super::routing::Route;
use super::tokens::{self, PromptCeiling, Tokenizer};
use super::upstream::{Byok, LiteLlmHeaders};
use super::usage;

/// Longest error message kept in the usage log.
const ERROR_MESSAGE_LEN_MAX: usize = 500;

/// Who asked, and from where.
#[derive(Debug, Clone)]
pub struct Origin {
    pub request_id: String,
    pub caller: Arc<Caller>,
    pub endpoint: Endpoint,
    pub started: Instant,
    pub user_agent: Option<String>,
    pub client_ip: Option<String>,
}

/// How a request ended, for its charge and its usage row.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub usage: TokenUsage,
    pub estimated: bool,
    pub http_status: u16,
    pub time_to_first_token_ms: Option<u32>,
    pub error: Option<(UsageErrorType, String)>,
    /// The model the answer names.
    pub response_model: Option<String>,
    /// The id of the response or message, as the client saw it.
    pub response_id: Option<String>,
}

/// A request admitted to the upstream.
#[derive(Debug)]
pub struct Exchange {
    pub gw: Arc<Gateway>,
    pub origin: Origin,
    pub route: Route,
    pub level: PowerLevel,
    pub quote: Quote,
    pub prompt: PromptCeiling,
    /// The output cap sent upstream (per choice).
    pub cap_sent: Option<u64>,
    /// Whether that cap is below what the client or the model would have allowed.
    pub cap_announced: bool,
    pub price_table: String,
    /// The client asked for a stream.
    pub stream: bool,
    /// The user's own key for the provider, until it is sent.
    pub byok: Option<Byok>,
    pub byok_key_id: Option<i64>,
    pub litellm: LiteLlmHeaders,
    /// The search context size asked for, for pricing searches.
    pub search_size: Option<SearchSize>,
    pub ticket: Ticket,
}

impl Exchange {
    /// The model name sent upstream: the served name, or for a BYOK request the provider's own
    /// name for the model (without a provider prefix: `openrouter/anthropic/x` → `anthropic/x`).
    pub fn upstream_model(&self) -> String {
        if self.byok_key_id.is_none() {
            return self.route.forward_as.clone();
        }
        let model = &self.route.price.model;
        model
            .strip_prefix(&self.route.price.provider)
            .and_then(|m| m.strip_prefix('/'))
            .unwrap_or(model)
            .to_owned()
    }

    /// Records one upstream call's outcome for routing and provider health.
    /// `latency`: to the last byte for a JSON answer, to the first token for a stream (what
    /// alias routing compares against a level's maximum).
    pub fn observe(&self, latency: Duration, success: bool, error: Option<&str>) {
        let ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        let price = &self.route.price;
        self.gw
            .observations
            .record(&price.model, &price.provider, ms, success, error);
        if success {
            self.gw
                .metrics
                .upstream_latency
                .get_or_create(&RouteLabels {
                    route: self.origin.endpoint.path(),
                })
                .observe(latency.as_secs_f64());
        }
    }

    /// Records time to first token for a stream.
    pub fn observe_first_token(&self, after: Duration) {
        self.gw
            .metrics
            .time_to_first_token
            .get_or_create(&RouteLabels {
                route: self.origin.endpoint.path(),
            })
            .observe(after.as_secs_f64());
    }

    /// An estimate of what was used when no usage was reported: the prompt, and
    /// `generated_bytes` of output.
    pub fn estimate(&self, generated_bytes: u64) -> TokenUsage {
        let exact = tokens::tokenizer_for(&self.route.price) != Tokenizer::Bytes;
        TokenUsage::plain(
            usage::estimate_prompt_tokens(self.prompt.tokens, exact),
            usage::estimate_tokens(generated_bytes),
        )
    }

    /// Counts the web searches a usage report leaves implicit: OpenAI's search models bill one
    /// search, of the size asked for, when the answer cites the web; Anthropic's counts are
    /// billed at the medium size (as LiteLLM does).
    pub fn count_searches(&self, usage: &mut TokenUsage, cited: bool) {
        if usage.searches > 0 {
            usage.search_size = SearchSize::Medium;
        } else if cited {
            usage.searches = 1;
            usage.search_size = self.search_size.unwrap_or_default();
        }
    }

    /// The price of a model the answer names, when it is not the one priced (and the table
    /// knows it).
    fn other_model(&self, named: &str) -> Option<ModelPrice> {
        let same = |name: &str| name == named || model_family(name) == model_family(named);
        let route = &self.route;
        if same(&route.forward_as)
            || same(&route.price.model)
            || route.deployments.iter().any(|(_, p)| same(&p.model))
            || route.alias.as_deref().is_some_and(same)
        {
            return None;
        }
        let catalog = self.gw.catalog();
        match catalog.prices.resolve(named) {
            Some(price) => {
                tracing::warn!(request_id = %self.origin.request_id, priced = %route.price.model,
                    answered = %named, "the upstream answered with another model; charging the dearer");
                Some(price.clone())
            }
            None => {
                tracing::warn!(request_id = %self.origin.request_id, priced = %route.price.model,
                    answered = %named, "the upstream answered with a model tollgate cannot price");
                None
            }
        }
    }

    /// What `outcome` costs.
    fn cost(&self, outcome: &Outcome) -> Credits {
        let quote = self
            .litellm
            .model_id
            .as_ref()
            .and_then(|id| self.route.deployments.iter().find(|(d, _)| d == id))
            .map_or_else(|| self.quote.clone(), |(_, p)| self.quote.at(p.clone()));
        let mut cost = quote.cost(&outcome.usage);
        if let Some(other) = outcome
            .response_model
            .as_deref()
            .and_then(|m| self.other_model(m))
        {
            cost = cost.max(quote.at(other).cost(&outcome.usage));
        }
        cost
    }

    /// Settles the request at its metered cost (durable when this returns), then writes its
    /// access line.
    pub async fn settle(self, outcome: Outcome) -> Result<Settled, ApiError> {
        let cost = self.cost(&outcome);
        let usage = self.usage_record(&outcome, cost);
        let line = self.access_facts();
        let settled = self.ticket.settle(cost, usage).await;
        match &settled {
            Ok(s) => line.emit(&outcome, s.charged, None),
            Err(e) => line.emit(&outcome, Credits::ZERO, Some(e)),
        }
        settled
    }

    /// Ends a failed request: releases its hold (charging nothing) and logs it with the error.
    pub async fn fail(self, error: &ApiError, outcome: Option<Outcome>) {
        let outcome = outcome.unwrap_or_else(|| Outcome {
            http_status: error.status().as_u16(),
            error: Some((error.usage_error_type(), error.to_string())),
            ..Outcome::default()
        });
        let usage = self.usage_record(&outcome, Credits::ZERO);
        let line = self.access_facts();
        self.ticket.release(usage).await;
        line.emit(&outcome, Credits::ZERO, None);
    }

    /// What the access line says of this request besides its outcome.
    fn access_facts(&self) -> AccessFacts {
        AccessFacts {
            request_id: self.origin.request_id.clone(),
            user: self.origin.caller.user_id.clone(),
            route: self.origin.endpoint.path(),
            model: self.route.price.model.clone(),
            level: self.level,
            started: self.origin.started,
            upstream: match self.byok_key_id {
                Some(_) => Upstream::Byok(self.route.price.provider.clone()),
                None => Upstream::configured(&self.gw.config.upstream.url),
            },
            stream: self.stream,
        }
    }

    /// The usage row for this request.
    fn usage_record(&self, outcome: &Outcome, cost: Credits) -> UsageRecord {
        let u = &outcome.usage;
        let total = u.prompt_tokens.saturating_add(u.completion_tokens);
        let latency = self.origin.started.elapsed();
        let mut metadata = json!({
            "price_table": self.price_table,
            "usage_estimated": outcome.estimated,
            "stream": self.stream,
        });
        let mut put = |key: &str, value: serde_json::Value| {
            metadata[key] = value;
        };
        if let Some(v) = &self.litellm.call_id {
            put("litellm_call_id", json!(v));
        }
        if let Some(v) = &self.litellm.response_cost {
            put("litellm_response_cost", json!(v));
        }
        if let Some(v) = &self.litellm.model_id {
            put("litellm_model_id", json!(v));
        }
        if let Some(v) = &self.route.alias {
            put("alias", json!(v));
        }
        if self.route.forward_as != self.route.price.model {
            put("served_as", json!(self.route.forward_as));
        }
        if self.cap_announced
            && let Some(v) = self.cap_sent
        {
            put("max_tokens_capped", json!(v));
        }
        if let Some(m) = &outcome.response_model
            && self.other_model(m).is_some()
        {
            put("response_model", json!(m));
        }
        if let Some(id) = &outcome.response_id {
            put("response_id", json!(id));
        }
        for (key, n) in [
            ("cached_tokens", u.cached_tokens),
            ("cache_creation_tokens", u.cache_creation_tokens),
            ("reasoning_tokens", u.reasoning_tokens),
            ("audio_input_tokens", u.prompt_audio_tokens),
            ("audio_output_tokens", u.completion_audio_tokens),
            ("web_searches", u.searches),
        ] {
            if n > 0 {
                put(key, json!(n));
            }
        }
        let completion = u.completion_tokens;
        let secs = latency.as_secs_f64();
        UsageRecord {
            endpoint: self.origin.endpoint.path().to_owned(),
            model: self.route.price.model.clone(),
            provider: Some(self.route.price.provider.clone()),
            power_level: Some(self.level),
            prompt_tokens: u32::try_from(u.prompt_tokens).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(completion).unwrap_or(u32::MAX),
            cost_per_token: Quote::per_token_text(cost, total),
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
            user_agent: self.origin.user_agent.clone(),
            client_ip: self.origin.client_ip.clone(),
            // A Responses answer that completed can be continued from: remembered as served.
            response_id: outcome
                .response_id
                .clone()
                .filter(|_| self.origin.endpoint == Endpoint::Responses && outcome.error.is_none()),
        }
    }
}

/// An admitted request's access line, taken before its ticket is consumed.
struct AccessFacts {
    request_id: String,
    user: String,
    route: &'static str,
    model: String,
    level: PowerLevel,
    started: Instant,
    upstream: Upstream,
    stream: bool,
}

impl AccessFacts {
    /// Writes the line for `outcome`, charged `credits`; `failed` when the settle itself failed.
    fn emit(&self, outcome: &Outcome, credits: Credits, failed: Option<&ApiError>) {
        let failed_reason = failed.map(ToString::to_string);
        let error = match (failed, &failed_reason, &outcome.error) {
            (Some(e), Some(reason), _) => Some((e.code(), reason.as_str())),
            (_, _, Some((kind, reason))) => Some((kind.as_str(), reason.as_str())),
            _ => None,
        };
        AccessLine {
            request_id: &self.request_id,
            user: Some(&self.user),
            route: self.route,
            model: Some(&self.model),
            level: Some(self.level),
            status: failed.map_or(outcome.http_status, |e| e.status().as_u16()),
            prompt_tokens: outcome.usage.prompt_tokens,
            completion_tokens: outcome.usage.completion_tokens,
            credits,
            latency: self.started.elapsed(),
            upstream: self.upstream.clone(),
            stream: self.stream,
            error,
        }
        .emit();
    }
}

/// The usage row of a request refused before it was admitted.
pub fn refused_usage(
    origin: &Origin,
    error: &ApiError,
    model: String,
    level: Option<PowerLevel>,
    provider: Option<String>,
    stream: bool,
) -> UsageRecord {
    UsageRecord {
        endpoint: origin.endpoint.path().to_owned(),
        model,
        provider,
        power_level: level,
        http_status: Some(error.status().as_u16()),
        error_type: Some(error.usage_error_type()),
        error_message: Some(
            error
                .to_string()
                .chars()
                .take(ERROR_MESSAGE_LEN_MAX)
                .collect(),
        ),
        metadata: Some(json!({"stream": stream})),
        latency_ms: Some(u32::try_from(origin.started.elapsed().as_millis()).unwrap_or(u32::MAX)),
        user_agent: origin.user_agent.clone(),
        client_ip: origin.client_ip.clone(),
        ..UsageRecord::default()
    }
}
