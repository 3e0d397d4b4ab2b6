//! The official SDKs on the APIs coding agents speak: `tests/py/typed_clients.py` drives the
//! OpenAI SDK's `responses.create` (plain and `stream=True`) and the Anthropic SDK's
//! `messages.create`, `messages.stream` and `messages.count_tokens`, and the refusals each must
//! raise as its own exception, against a gateway in front of the mock upstream; this test asserts
//! on what the SDKs made of each answer and on the books: every charge the price table's cost of
//! the usage reported, cached and cache-written tokens included. (`litellm.rs` runs the same
//! script against the gateway in front of a real LiteLLM.)
//!
//! The SDKs are pinned, every dependency too, in `tests/py/requirements.txt`, installed by the
//! test itself into a virtualenv under the target dir (see `python.rs`).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tollgate_schema::money::Credits;

use crate::gateway_support::{User, assert_books_balance, c, open_ledger, usage_rows};
use crate::metering::{start_priced, usd};
use crate::openai_sdk::OPENAI_SDK;
use crate::python::{SCRUBBED_ENV, blocking, read_lossy, run_limited};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/typed_clients.py");
/// The script's requests are local: anything near this is a hang.
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);

/// What the script is asked to do.
pub struct Script<'a> {
    pub root_url: String,
    pub rich: &'a str,
    pub poor: &'a str,
    pub responses_model: &'a str,
    pub messages_model: &'a str,
    pub responses_text: &'a str,
    pub messages_text: &'a str,
    /// Leave out `messages.count_tokens`.
    pub skip_count_tokens: bool,
}

/// Runs the script; its one line of JSON.
pub fn run_script(venv: &std::path::Path, script: &Script<'_>) -> Value {
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(SCRIPT)
        .env("TOLLGATE_ROOT_URL", &script.root_url)
        .env("TOLLGATE_KEY_RICH", script.rich)
        .env("TOLLGATE_KEY_POOR", script.poor)
        .env("TOLLGATE_RESPONSES_MODEL", script.responses_model)
        .env("TOLLGATE_MESSAGES_MODEL", script.messages_model)
        .env("TOLLGATE_RESPONSES_TEXT", script.responses_text)
        .env("TOLLGATE_MESSAGES_TEXT", script.messages_text)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    if script.skip_count_tokens {
        cmd.env("TOLLGATE_SKIP_COUNT_TOKENS", "1");
    } else {
        cmd.env_remove("TOLLGATE_SKIP_COUNT_TOKENS");
    }
    let status = run_limited(&mut cmd, &out, &err, SCRIPT_LIMIT);
    let (stdout, stderr) = (read_lossy(&out), read_lossy(&err));
    let parsed = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<Value>(l).ok());
    match (status, parsed) {
        (Ok(s), Some(v)) if s.success() => v,
        (status, _) => panic!(
            "typed_clients.py failed ({status:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

/// What every run must show, whatever the upstream: the SDKs' own view of each answer and
/// refusal.
pub fn assert_sdk_results(r: &Value) {
    assert_eq!(r["openai_version"], OPENAI_SDK.pinned("openai"), "{r:#}");
    assert_eq!(
        r["anthropic_version"],
        OPENAI_SDK.pinned("anthropic"),
        "{r:#}"
    );
    assert_eq!(r["failures"], serde_json::json!([]), "{r:#}");
    // Responses, plain and streamed: the text and the usage as OpenAI reports it.
    let plain = &r["responses_create"];
    assert!(!plain["text"].as_str().unwrap().is_empty(), "{r:#}");
    assert!(plain["id"].as_str().unwrap().starts_with("resp_"), "{r:#}");
    let streamed = &r["responses_stream"];
    assert_eq!(streamed["first"], "response.created", "{r:#}");
    assert_eq!(streamed["last"], "response.completed", "{r:#}");
    assert_eq!(streamed["text"], plain["text"], "{r:#}");
    assert_eq!(streamed["usage"], plain["usage"], "{r:#}");
    // Messages, plain and streamed.
    let message = &r["messages_create"];
    assert_eq!(message["type"], "message", "{r:#}");
    assert!(!message["text"].as_str().unwrap().is_empty(), "{r:#}");
    assert!(
        message["request_id"].as_str().unwrap().starts_with("req_"),
        "{r:#}"
    );
    let streamed = &r["messages_stream"];
    assert_eq!(streamed["text"], message["text"], "{r:#}");
    assert_eq!(
        streamed["usage"]["output_tokens"], message["usage"]["output_tokens"],
        "{r:#}"
    );
    assert_eq!(
        streamed["usage"]["input_tokens"], message["usage"]["input_tokens"],
        "{r:#}"
    );
    // Refusals, as each SDK's own exceptions.
    let bogus = &r["messages_bogus_key"];
    assert_eq!(bogus["error_class"], "AuthenticationError", "{r:#}");
    assert_eq!(bogus["status"], 401, "{r:#}");
    assert_eq!(bogus["type"], "authentication_error", "{r:#}");
    for name in ["messages_poor", "messages_poor_stream"] {
        let poor = &r[name];
        // The Anthropic SDK's own error for a 402, with Anthropic's billing_error.
        assert_eq!(poor["error_class"], "PaymentRequiredError", "{name}: {r:#}");
        assert_eq!(poor["status"], 402, "{name}: {r:#}");
        assert_eq!(poor["type"], "billing_error", "{name}: {r:#}");
    }
    let bogus = &r["responses_bogus_key"];
    assert_eq!(bogus["error_class"], "AuthenticationError", "{r:#}");
    let poor = &r["responses_poor"];
    assert_eq!(poor["error_class"], "APIStatusError", "{r:#}");
    assert_eq!(poor["status"], 402, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_speak_responses_and_messages_through_the_gateway() {
    let venv = blocking(|| OPENAI_SDK.ensure()).await;
    let (gw, keys) = start_priced(&[User::new("rich", "10"), User::new("poor", "0")]).await;
    let root_url = gw.url("");
    let (rich, poor) = (keys[0].clone(), keys[1].clone());
    let r = blocking(move || {
        run_script(
            &venv,
            &Script {
                root_url,
                rich: &rich,
                poor: &poor,
                responses_model: "gpt-4o-mini",
                messages_model: "claude-sonnet-4-20250514",
                responses_text: "hello mock:prompt_tokens=1000 mock:cached=800 mock:tokens=16",
                messages_text: "hello mock:prompt_tokens=1000 mock:cached=600 \
                                mock:cache_write=300 mock:tokens=20",
                skip_count_tokens: false,
            },
        )
    })
    .await;
    assert_sdk_results(&r);
    assert_eq!(
        r["responses_create"]["usage"],
        serde_json::json!({"input_tokens": 1000, "cached_tokens": 800, "output_tokens": 16}),
        "{r:#}"
    );
    assert_eq!(
        r["messages_create"]["usage"]["cache_read_input_tokens"], 600,
        "{r:#}"
    );
    assert_eq!(r["count_tokens"]["input_tokens"], 3, "{r:#}");
    // 200 × 1.5e-7 + 800 cached × 7.5e-8 + 16 × 6e-7.
    let responses = usd("0.0000996");
    // 400 × 3e-6 + 600 read × 3e-7 + 300 written × 3.75e-6 + 20 × 1.5e-5.
    let messages = usd("0.002805");
    assert_eq!(
        c(r["responses_create"]["credits_charged"].as_str().unwrap()),
        responses
    );
    assert_eq!(
        c(r["messages_create"]["credits_charged"].as_str().unwrap()),
        messages
    );
    let dir = gw.stop().await;
    let rows = usage_rows(dir.path());
    let rich: Vec<_> = rows.iter().filter(|r| r.user_id == "rich").collect();
    let charges: Vec<Credits> = rich.iter().map(|r| r.credits_charged).collect();
    assert_eq!(
        charges,
        [responses, responses, messages, messages],
        "{rows:#?}"
    );
    assert!(rich.iter().all(|r| r.success && r.overage == Credits::ZERO));
    let mut ledger = open_ledger(dir.path());
    let spent = responses
        .checked_add(responses)
        .and_then(|s| s.checked_add(messages))
        .and_then(|s| s.checked_add(messages))
        .unwrap();
    assert_eq!(
        ledger.account("rich").unwrap().balance,
        c("10").checked_sub(spent).unwrap()
    );
    assert!(
        rows.iter()
            .filter(|r| r.user_id == "poor")
            .all(|r| !r.success && r.credits_charged == Credits::ZERO),
        "{rows:#?}"
    );
    assert_books_balance(dir.path());
}
