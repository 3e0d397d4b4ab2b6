//! What the upstream serves: the model names it answers to (`GET /v1/models`) and, from
//! LiteLLM's `GET /model/info` (with the upstream key, LiteLLM's master key), the deployments
//! behind each name — the model each calls (`litellm_params.model`, or `model_info.base_model`)
//! and any price set in LiteLLM's config for it.
//!
//! Guarantees: parsing is pure and bounded ([`NAMES_MAX`], [`CATALOG_BYTES_MAX`]); prices are
//! read exactly (the number-quoted parse of `prices::parse_exact`), never through a float; a
//! deployment whose fields cannot be read is left out and named in the log (its model name then
//! has one deployment fewer, or none: a name with no readable deployment is not served). An
//! upstream without `/model/info` (any OpenAI-compatible server: a 404, 401 or 403) is served
//! by name from the price table; one that does not answer `/v1/models` either leaves the
//! catalogue unknown (every priced name is tried).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::prices::{self, ModelMode, PriceFields};

/// Most model names read from an upstream.
pub const NAMES_MAX: usize = 10_000;
/// Most deployments read per name.
pub const DEPLOYMENTS_MAX: usize = 256;
/// Largest catalogue answer read.
pub const CATALOG_BYTES_MAX: usize = 32 << 20;
/// How long one catalogue request may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One deployment behind a served name.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// LiteLLM's deployment id (`model_info.id`), which answers carry as `x-litellm-model-id`.
    pub id: Option<String>,
    /// The model it calls, e.g. `anthropic/claude-sonnet-4-20250514` (or its `base_model`).
    pub model: Option<String>,
    /// Prices LiteLLM's config sets for it; each wins over the price table's.
    pub own: PriceFields,
    /// The mode LiteLLM says it serves, when it says.
    pub mode: Option<ModelMode>,
}

/// The catalogue of an upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Served {
    /// Every name the upstream serves, in order.
    pub names: Vec<String>,
    /// The deployments behind each name, when the upstream has `/model/info`.
    pub deployments: Option<Deployments>,
}

impl Served {
    pub fn serves(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// `GET /v1/models`: the `id` of each of `data`.
pub fn parse_model_list(body: &[u8]) -> Result<Vec<String>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("/v1/models is not JSON: {e}"))?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("/v1/models has no \"data\" array")?;
    let mut names: Vec<String> = data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .filter(|id| !id.is_empty() && id.len() <= prices::MODEL_NAME_LEN_MAX)
        .map(str::to_owned)
        .take(NAMES_MAX)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The deployments behind each served name.
pub type Deployments = BTreeMap<String, Vec<Deployment>>;

/// `GET /model/info`: the deployments of each `model_name`. Unreadable deployments are left
/// out and returned as warnings.
pub fn parse_model_info(body: &[u8]) -> Result<(Deployments, Vec<String>), String> {
    let (value, texts) =
        prices::parse_exact(body).map_err(|e| format!("/model/info is not JSON: {e}"))?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("/model/info has no \"data\" array")?;
    let text_data = texts.get("data").and_then(Value::as_array);
    let mut by_name: BTreeMap<String, Vec<Deployment>> = BTreeMap::new();
    let mut warnings = Vec::new();
    for (i, entry) in data.iter().enumerate() {
        let Some(name) = entry.get("model_name").and_then(Value::as_str) else {
            warnings.push(format!("/model/info entry {i} has no model_name"));
            continue;
        };
        if name.is_empty() || name.len() > prices::MODEL_NAME_LEN_MAX {
            continue;
        }
        if by_name.len() >= NAMES_MAX && !by_name.contains_key(name) {
            warnings.push(format!("/model/info lists more than {NAMES_MAX} names"));
            break;
        }
        let texts = text_data.and_then(|t| t.get(i));
        match deployment(entry, texts, name) {
            Ok(d) => {
                let list = by_name.entry(name.to_owned()).or_default();
                if list.len() < DEPLOYMENTS_MAX {
                    list.push(d);
                }
            }
            Err(e) => warnings.push(e),
        }
    }
    Ok((by_name, warnings))
}

fn deployment(entry: &Value, texts: Option<&Value>, name: &str) -> Result<Deployment, String> {
    let params = entry.get("litellm_params").and_then(Value::as_object);
    let param_texts = texts
        .and_then(|t| t.get("litellm_params"))
        .and_then(Value::as_object);
    let info = entry.get("model_info").and_then(Value::as_object);
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= prices::MODEL_NAME_LEN_MAX)
            .map(str::to_owned)
    };
    let own = match params {
        Some(p) => prices::read_price_fields(p, param_texts, name).map_err(|e| {
            format!(
                "the deployment of {name:?} in /model/info has a price tollgate cannot read: {e}"
            )
        })?,
        None => PriceFields::default(),
    };
    let base_model = text(info.and_then(|i| i.get("base_model")));
    Ok(Deployment {
        id: text(info.and_then(|i| i.get("id"))),
        model: base_model.or_else(|| text(params.and_then(|p| p.get("model")))),
        own,
        mode: info
            .and_then(|i| i.get("mode"))
            .and_then(Value::as_str)
            .and_then(|m| m.parse().ok()),
    })
}

/// Reads the upstream's catalogue. `Ok(None)`: the upstream answers no model list (the
/// catalogue stays unknown); an error is a transport failure, to retry later.
pub async fn fetch(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
) -> Result<Option<Served>, String> {
    let base = base_url.trim_end_matches('/');
    let get = |path: &str| {
        let mut request = http.get(format!("{base}{path}")).timeout(FETCH_TIMEOUT);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request
    };
    let models = get("/v1/models")
        .send()
        .await
        .map_err(|e| format!("GET /v1/models: {}", super::error_chain(&e.without_url())))?;
    if !models.status().is_success() {
        return Ok(None);
    }
    let names = parse_model_list(&bounded(models).await?)?;
    let info = get("/model/info")
        .send()
        .await
        .map_err(|e| format!("GET /model/info: {}", super::error_chain(&e.without_url())))?;
    let deployments = if info.status().is_success() {
        let (deployments, warnings) = parse_model_info(&bounded(info).await?)?;
        for warning in warnings {
            tracing::warn!(%warning, "upstream catalogue");
        }
        Some(deployments)
    } else {
        None
    };
    Ok(Some(Served { names, deployments }))
}

async fn bounded(response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        format!(
            "reading the catalogue: {}",
            super::error_chain(&e.without_url())
        )
    })? {
        if body.len() + chunk.len() > CATALOG_BYTES_MAX {
            return Err(format!("the catalogue is over {CATALOG_BYTES_MAX} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    #[test]
    fn model_info_gives_each_names_deployments_with_their_own_prices() {
        // The shape LiteLLM 1.82.6 answers (trimmed): nulls for prices it does not set.
        let body = br#"{"data": [
            {"model_name": "sonnet", "litellm_params": {"model": "anthropic/claude-sonnet-4-20250514",
              "use_in_pass_through": false}, "model_info": {"id": "045236", "input_cost_per_token": 3e-06,
              "mode": "chat", "cache_read_input_token_cost": null}},
            {"model_name": "house", "litellm_params": {"model": "openai/my-house-model",
              "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
             "model_info": {"id": "4fc4"}},
            {"model_name": "house", "litellm_params": {"model": "openai/other",
              "input_cost_per_token": "cheap"}},
            {"model_name": "azure", "litellm_params": {"model": "azure/my-deployment"},
             "model_info": {"base_model": "azure/gpt-4o"}},
            {"litellm_params": {}}
        ]}"#;
        let (names, warnings) = parse_model_info(body).unwrap();
        assert_eq!(
            names.keys().collect::<Vec<_>>(),
            ["azure", "house", "sonnet"]
        );
        let sonnet = &names["sonnet"][0];
        assert_eq!(
            sonnet.model.as_deref(),
            Some("anthropic/claude-sonnet-4-20250514")
        );
        assert_eq!(sonnet.id.as_deref(), Some("045236"));
        assert!(
            !sonnet.own.is_priced(),
            "model_info's copy of the map is not an own price"
        );
        assert_eq!(sonnet.mode, Some(ModelMode::Chat));
        let house = &names["house"];
        assert_eq!(house.len(), 1, "the unreadable deployment is left out");
        assert_eq!(house[0].own.input, Some(Decimal::new(1, 6)));
        assert_eq!(house[0].own.output, Some(Decimal::new(2, 6)));
        assert_eq!(names["azure"][0].model.as_deref(), Some("azure/gpt-4o"));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.contains("\"house\"")),
            "{warnings:?}"
        );
        assert!(parse_model_info(b"[]").is_err());
    }

    #[test]
    fn the_model_list_is_the_ids_sorted_and_bounded() {
        let names = parse_model_list(
            br#"{"data": [{"id": "b"}, {"id": "a"}, {"id": "b"}, {"id": ""}, {"object": "x"}]}"#,
        )
        .unwrap();
        assert_eq!(names, ["a", "b"]);
        assert!(parse_model_list(b"{}").is_err());
        let served = Served {
            names,
            deployments: None,
        };
        assert!(served.serves("a") && !served.serves("c"));
    }
}
