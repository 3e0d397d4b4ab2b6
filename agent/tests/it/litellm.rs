//! tollgate in front of a real LiteLLM 1.82.6 proxy (installed from PyPI into a virtualenv under
//! the target dir on first use: `tests/py/litellm-requirements.txt`, every package pinned), as a
//! self-hoster runs it: LiteLLM with a master key and no database, its cost map local
//! (`LITELLM_LOCAL_MODEL_COST_MAP=True`), models served through names of its config — one
//! `mock_response` model, the others calling the mock upstream as their OpenAI-compatible
//! provider (so every usage detail can be asked for), one priced in LiteLLM's own config.
//!
//! What it shows: LiteLLM's own price map (the one its wheel ships) imports; the gateway reads
//! LiteLLM's catalogue (`/v1/models`, `/model/info`); and for every case the charge equals
//! LiteLLM's own reported cost (`x-litellm-response-cost`) × 10 credits per USD, to the
//! nano-credit: plain, cached, reasoning, audio and long-context usage, an alias whose name is
//! not a price key, a deployment priced in LiteLLM's config, a `mock_response` model; a stream
//! is charged what the same answer costs as JSON. OpenAI's Responses API and Anthropic's Messages
//! API through it, native and bridged, JSON and streamed, each charged the price of the usage
//! LiteLLM reports; and the official SDKs' calls on both (`typed_sdks.rs`'s script).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::ledger::Ledger;
use tollgate_mock_upstream::{MockUpstream, Options};
use tollgate_schema::money::Credits;

use crate::gateway_support::{Gateway, User, assert_books_balance, chat_body, usage_rows};
use crate::python::{PyEnv, blocking};
use tollgate_e2e::Agent;

const LITELLM: PyEnv = PyEnv {
    name: "litellm",
    requirements: include_str!("../py/litellm-requirements.txt"),
    requirements_path: concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/litellm-requirements.txt"
    ),
    package: "litellm",
    // About 100 packages (≈150 MB) on a cold cache.
    install_limit: Duration::from_secs(600),
};

const MASTER_KEY: &str = "sk-tollgate-litellm-test";
/// How long LiteLLM may take to start (it imports a great deal).
const START_LIMIT: Duration = Duration::from_secs(120);

/// A LiteLLM proxy process, killed when dropped.
struct LiteLlm {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The site-packages directory of `venv`.
fn site_packages(venv: &Path) -> PathBuf {
    fs::read_dir(venv.join("lib"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.exists())
        .unwrap()
}

/// LiteLLM's config: every served name, and the master key.
fn config(mock_url: &str) -> String {
    let provider = |name: &str, model: &str, extra: &str| {
        format!(
            "  - model_name: {name}\n    litellm_params:\n      model: {model}\n      \
             api_base: {mock_url}/v1\n      api_key: sk-mock-provider\n{extra}"
        )
    };
    let mut yaml = String::from("model_list:\n");
    yaml += &provider("gpt-4o-mini", "openai/gpt-4o-mini", "");
    yaml += &provider("mini-alias", "openai/gpt-4o-mini", "");
    yaml += &provider("reasoner", "openai/o3", "");
    yaml += &provider("audio", "openai/gpt-4o-audio-preview", "");
    yaml += &provider("long", "openai/gpt-5.4", "");
    yaml += &provider(
        "house-model",
        "openai/my-house-model",
        "      input_cost_per_token: 1.0e-06\n      output_cost_per_token: 2.0e-06\n",
    );
    yaml += "  - model_name: sonnet\n    litellm_params:\n      \
             model: anthropic/claude-sonnet-4-20250514\n      mock_response: \"Hi there\"\n";
    // Anthropic's Messages API from the mock: LiteLLM calls `{api_base}/v1/messages`.
    yaml += &format!(
        "  - model_name: claude\n    litellm_params:\n      \
         model: anthropic/claude-sonnet-4-20250514\n      api_base: {mock_url}\n      \
         api_key: sk-mock-provider\n"
    );
    yaml += &format!("general_settings:\n  master_key: {MASTER_KEY}\n");
    yaml
}

/// Starts LiteLLM on a free port with `config`, and waits until it answers.
async fn start_litellm(venv: &Path, dir: &Path, config: &str) -> LiteLlm {
    let config_path = dir.join("litellm.yaml");
    fs::write(&config_path, config).unwrap();
    // LiteLLM binds its own port: find a free one, and try again if another process takes it
    // first (its start then fails, and the process ends).
    for attempt in 0..3 {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let log = dir.join(format!("litellm-{attempt}.log"));
        let mut cmd = Command::new(venv.join("bin/python"));
        cmd.args(["-m", "litellm.proxy.proxy_cli", "--config"])
            .arg(&config_path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("DATABASE_URL")
            .env_remove("LITELLM_MASTER_KEY")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(dir.join(format!("litellm-{attempt}.err"))).unwrap());
        for var in crate::python::SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().unwrap();
        let mut proxy = LiteLlm {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            // Exited at start (the port was taken meanwhile, say): try another port.
            if proxy.child.try_wait().unwrap().is_some() {
                break;
            }
            let ready = http
                .get(format!("{}/health/liveliness", proxy.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return proxy;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "LiteLLM did not start within {START_LIMIT:?}; see {}",
                proxy.log.display()
            );
            // A readiness poll: LiteLLM gives no other signal that it is listening.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    panic!("LiteLLM would not start on a free port");
}

/// LiteLLM's cost (a float's text, in USD) × 10 credits per USD, to the nano-credit.
fn litellm_credits(cost: &str) -> Credits {
    let usd: f64 = cost.parse().unwrap();
    Credits::from_nanos((usd * 10.0 * 1e9).round() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_equal_litellms_own_cost_for_every_kind_of_usage() {
    let venv = blocking(|| LITELLM.ensure()).await;
    let price_map =
        site_packages(&venv).join("litellm/model_prices_and_context_window_backup.json");

    // LiteLLM's own price map imports through the CLI, whole numbers written as floats and all.
    let agent = Agent::init("local");
    let out = agent.json(&["prices", "import", price_map.to_str().unwrap()]);
    assert!(out["models"].as_u64().unwrap() > 2_000, "{out}");
    assert_eq!(out["unchanged"], false);
    let shown = agent.ok(&["prices", "show", "xai/grok-4-fast-reasoning"]);
    assert!(shown.contains("2000000"), "{shown}");

    // The provider behind LiteLLM: it must not answer with LiteLLM's own headers (LiteLLM
    // passes a provider's headers on, and its cost header would shadow LiteLLM's).
    let mock = MockUpstream::spawn_with(Options {
        litellm_headers: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let litellm = start_litellm(&venv, dir.path(), &config(&mock.url())).await;
    let map = fs::read(&price_map).unwrap();
    let import = move |ledger: &mut Ledger, _: &Path| {
        let report = tollgate::prices::parse_litellm_report(&map, false).unwrap();
        ledger
            .import_prices("litellm backup map", &"b".repeat(64), &report.models)
            .unwrap();
    };
    let url = litellm.url.clone();
    let upstream_mock = MockUpstream::spawn().await.unwrap();
    let (gw, keys) = Gateway::start_with(
        upstream_mock,
        &[User::new("alice", "100"), User::new("poor", "0")],
        import,
        move |config| {
            config.upstream.url = url;
            config.upstream.api_key = Some(tollgate::gateway::config::Secret::new(
                MASTER_KEY.to_owned(),
            ));
        },
    )
    .await;
    let key = &keys[0];

    // The model list is LiteLLM's, and the user may use every name in it.
    let ids = gw.model_ids(key).await;
    for name in [
        "gpt-4o-mini",
        "mini-alias",
        "reasoner",
        "audio",
        "long",
        "house-model",
        "sonnet",
    ] {
        assert!(ids.iter().any(|i| i == name), "{name} not listed: {ids:?}");
    }

    let long_prompt = format!("{} mock:tokens=10", "word ".repeat(280_000));
    let cases: Vec<(&str, String)> = vec![
        ("gpt-4o-mini", "hello there mock:tokens=30".into()),
        (
            "gpt-4o-mini",
            "cached mock:prompt_tokens=1000 mock:cached=800".into(),
        ),
        ("mini-alias", "hello there mock:tokens=30".into()),
        ("sonnet", "hello".into()),
        ("house-model", "hello there mock:tokens=30".into()),
        ("reasoner", "think mock:tokens=50 mock:reasoning=300".into()),
        (
            "audio",
            "hi mock:prompt_tokens=500 mock:audio_in=400 mock:audio_out=50".into(),
        ),
        ("long", long_prompt),
    ];
    let mut charges = Vec::new();
    for (model, text) in &cases {
        let r = gw.chat(key, chat_body(model, text)).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(
            status,
            200,
            "{model}: {body}\n(LiteLLM's log: {})",
            litellm.log.display()
        );
        let rows = usage_rows(gw.dir.path());
        let row = rows.last().unwrap();
        let cost = row.metadata["litellm_response_cost"]
            .as_str()
            .unwrap_or_else(|| panic!("{model}: no cost from LiteLLM: {row:?}"));
        assert_eq!(
            row.credits_charged,
            litellm_credits(cost),
            "{model} {}: LiteLLM's cost is {cost} USD; tollgate charged {:?}",
            &text[..text.len().min(60)],
            row
        );
        assert_eq!(row.overage, Credits::ZERO, "{model}: {row:?}");
        assert_eq!(row.metadata["usage_estimated"], false, "{model}");
        assert!(row.credits_charged.is_positive(), "{model}");
        charges.push(row.credits_charged);
    }
    // The cached call was cheaper than its tokens at the full price.
    assert!(charges[1] < litellm_credits("0.00015"), "{charges:?}");

    // A stream is charged what the same answer costs as JSON (LiteLLM sends no cost on streams).
    let mut body = chat_body("gpt-4o-mini", "hello there mock:tokens=30");
    body["stream"] = json!(true);
    let text = gw.chat(key, body).await.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.last().unwrap().credits_charged, charges[0]);

    // An alias picks a model LiteLLM serves.
    let r = gw.chat(key, chat_body("auto", "hello")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let rows = usage_rows(gw.dir.path());
    let served = rows.last().unwrap().metadata["served_as"].clone();
    let served = served.as_str().unwrap_or(&rows.last().unwrap().model);
    assert!(ids.iter().any(|i| i == served), "auto chose {served}");

    // A name LiteLLM does not serve is refused before anything is bought.
    let r = gw.chat(key, chat_body("gpt-4o", "hello")).await;
    assert_eq!(r.status(), 404);
    let value: Value = r.json().await.unwrap();
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not served"),
        "{value}"
    );

    typed_apis_through_litellm(&gw, key).await;
    let rich = key.clone();
    let poor = keys[1].clone();
    let root_url = gw.url("");
    let sdks = blocking(|| crate::openai_sdk::OPENAI_SDK.ensure()).await;
    let r = blocking(move || {
        crate::typed_sdks::run_script(
            &sdks,
            &crate::typed_sdks::Script {
                root_url,
                rich: &rich,
                poor: &poor,
                responses_model: "gpt-4o-mini",
                messages_model: "claude",
                responses_text: "hello mock:prompt_tokens=1000 mock:cached=800 mock:tokens=16",
                messages_text: "hello mock:prompt_tokens=1000 mock:cached=600 \
                                mock:cache_write=300 mock:tokens=20",
                skip_count_tokens: true,
            },
        )
    })
    .await;
    crate::typed_sdks::assert_sdk_results(&r);
    let rows = usage_rows(gw.dir.path());
    let sdk_rows = &rows[rows.len() - 7..];
    let charged: Vec<Credits> = sdk_rows
        .iter()
        .filter(|r| r.user_id == "alice")
        .map(|r| r.credits_charged)
        .collect();
    assert_eq!(
        charged,
        [
            usd_credits("0.0000996"),
            usd_credits("0.0000996"),
            usd_credits("0.002805"),
            usd_credits("0.002805")
        ],
        "{sdk_rows:#?}"
    );

    let dir = gw.stop().await;
    assert_books_balance(dir.path());
    drop(litellm);
    mock.shutdown().await;
}

/// Credits for a USD amount written as a decimal, at 10 credits per USD.
fn usd_credits(text: &str) -> Credits {
    let usd: rust_decimal::Decimal = text.parse().unwrap();
    Credits::from_decimal(usd * rust_decimal::Decimal::TEN).unwrap()
}

/// OpenAI's Responses API and Anthropic's Messages API through LiteLLM, natively (a Responses
/// model calls the provider's `/v1/responses`, an Anthropic model its `/v1/messages`) and
/// bridged (Responses on an Anthropic model, Messages on an OpenAI one), JSON and streamed: each
/// charged the price of the usage LiteLLM reports, and where LiteLLM reports a cost (a Responses
/// JSON answer), exactly that.
async fn typed_apis_through_litellm(gw: &Gateway, key: &str) {
    let post = |path: &'static str, body: Value| async move {
        let r = gw.post(path, key, &body).await;
        assert_eq!(r.status(), 200, "{path} {body}");
        let text = r.text().await.unwrap();
        let rows = usage_rows(gw.dir.path());
        (text, rows.last().unwrap().clone())
    };
    let responses = |model: &str, text: &str, stream: bool| json!({"model": model, "input": text, "stream": stream, "max_output_tokens": 500});
    let messages = |model: &str, text: &str, stream: bool| {
        json!({"model": model, "max_tokens": 500, "stream": stream,
               "messages": [{"role": "user", "content": text}]})
    };
    let cached = "hello mock:prompt_tokens=1000 mock:cached=800 mock:tokens=16";
    // Native Responses: LiteLLM's cost, which is the price of the usage.
    let (_, row) = post("/v1/responses", responses("gpt-4o-mini", cached, false)).await;
    let cost = row.metadata["litellm_response_cost"].as_str().unwrap();
    assert_eq!(row.credits_charged, litellm_credits(cost), "{row:?}");
    assert_eq!(row.credits_charged, usd_credits("0.0000996"), "{row:?}");
    // Streamed: LiteLLM drops the `event:` lines and appends `data: [DONE]`; the same charge.
    let (text, row) = post("/v1/responses", responses("gpt-4o-mini", cached, true)).await;
    assert!(text.contains("response.completed"), "{text}");
    assert_eq!(row.credits_charged, usd_credits("0.0000996"), "{row:?}");
    assert_eq!(row.metadata["usage_estimated"], false, "{row:?}");
    // Native Messages, cache reads and writes: 400 × 3e-6 + 600 × 3e-7 + 300 × 3.75e-6 + 20 ×
    // 1.5e-5 (LiteLLM sends no cost on this route).
    let written =
        "hello mock:prompt_tokens=1000 mock:cached=600 mock:cache_write=300 mock:tokens=20";
    for stream in [false, true] {
        let (_, row) = post("/v1/messages", messages("claude", written, stream)).await;
        assert_eq!(row.credits_charged, usd_credits("0.002805"), "{row:?}");
        assert_eq!(row.metadata["usage_estimated"], false, "{row:?}");
    }
    // Bridged: Responses on Anthropic's model (LiteLLM reports input with the cache read
    // inside, as `cached_tokens`): 400 × 3e-6 + 600 × 3e-7 + 20 × 1.5e-5.
    let read = "hello mock:prompt_tokens=1000 mock:cached=600 mock:tokens=20";
    for stream in [false, true] {
        let (_, row) = post("/v1/responses", responses("claude", read, stream)).await;
        assert_eq!(
            row.credits_charged,
            usd_credits("0.00168"),
            "{stream}: {row:?}"
        );
    }
    // Bridged: Messages on OpenAI's model. Streamed, LiteLLM's message_start carries zeros and
    // the whole usage comes in message_delta: 3 × 1.5e-7 + 30 × 6e-7.
    for stream in [false, true] {
        let (_, row) = post(
            "/v1/messages",
            messages("gpt-4o-mini", "hello there mock:tokens=30", stream),
        )
        .await;
        assert_eq!(
            row.credits_charged,
            usd_credits("0.00001845"),
            "{stream}: {row:?}"
        );
        assert_eq!(row.metadata["usage_estimated"], false, "{row:?}");
    }
}
