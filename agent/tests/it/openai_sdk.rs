//! The official OpenAI Python SDK against the gateway: `tests/py/openai_client.py` drives a
//! gateway started in-process (chat, a stream with and without usage, embeddings, completions, the
//! model list, and the refusals a client must be able to tell apart) and prints what the SDK made
//! of each answer; this test asserts on that and on the books.
//!
//! The SDK is pinned in `tests/py/requirements.txt` and installed by the test itself, once, into a
//! virtualenv under the target dir (see `python.rs`); an install that fails (no PyPI, say) fails
//! the test with pip's output; it never skips.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::gateway_support::{
    Gateway, User, assert_books_balance, c, mini_cost, open_ledger, usage_rows,
};
use crate::python::{PyEnv, SCRUBBED_ENV, blocking, read_lossy, run_limited};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_client.py");
/// The script: its requests are local, so anything near this is a hang.
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// The pinned SDKs (OpenAI's and Anthropic's).
pub const OPENAI_SDK: PyEnv = PyEnv {
    name: "sdks",
    requirements: include_str!("../py/requirements.txt"),
    requirements_path: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/requirements.txt"),
    package: "openai",
    // Whole `pip install`, including retries: generous for a cold cache on a slow link.
    install_limit: Duration::from_secs(300),
};

/// Runs the script against `base_url`; its one line of JSON.
fn run_script(venv: &std::path::Path, base_url: &str, rich: &str, poor: &str) -> Value {
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(SCRIPT)
        .env("TOLLGATE_BASE_URL", base_url)
        .env("TOLLGATE_KEY_RICH", rich)
        .env("TOLLGATE_KEY_POOR", poor)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8")
        // Loopback only: no proxy from the environment, nor the SDK's own settings.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
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
            "openai_client.py failed ({status:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_works_against_the_gateway() {
    let venv = blocking(|| OPENAI_SDK.ensure()).await;
    let (gw, keys) = Gateway::start(
        &[User::new("rich", "10"), User::new("poor", "0.000001")],
        |_| {},
    )
    .await;
    let base_url = gw.url("/v1");
    let (rich, poor) = (keys[0].clone(), keys[1].clone());
    let r = blocking(move || run_script(&venv, &base_url, &rich, &poor)).await;
    assert_eq!(r["sdk_version"], OPENAI_SDK.pinned_version(), "{r:#}");
    assert_eq!(r["failures"], serde_json::json!([]), "{r:#}");

    // (a) Chat: "hello there" is two prompt tokens; the mock answers with 16.
    let chat = &r["chat"];
    assert_eq!(chat["model"], "gpt-4o-mini", "{r:#}");
    assert_eq!(chat["role"], "assistant", "{r:#}");
    assert_eq!(chat["finish_reason"], "stop", "{r:#}");
    assert!(!chat["content"].as_str().unwrap().is_empty(), "{r:#}");
    assert_eq!(
        (
            &chat["prompt_tokens"],
            &chat["completion_tokens"],
            &chat["total_tokens"]
        ),
        (&2.into(), &16.into(), &18.into()),
        "{r:#}"
    );
    let chat_charge = c(chat["credits_charged"].as_str().unwrap());
    assert_eq!(chat_charge, mini_cost(2, 16), "{r:#}");
    assert!(
        chat["request_id"].as_str().unwrap().starts_with("req_"),
        "{r:#}"
    );

    // (b) Streams: every delta arrives, the finish chunk too, and usage only when asked for.
    for name in ["stream", "stream_usage"] {
        let s = &r[name];
        assert_eq!(s["finish_reason"], "stop", "{name}: {r:#}");
        assert_eq!(s["deltas"], 16, "{name}: {r:#}");
        assert!(!s["content"].as_str().unwrap().is_empty(), "{name}: {r:#}");
    }
    assert_eq!(r["stream"]["usage"], Value::Null, "{r:#}");
    assert_eq!(r["stream_usage"]["usage"]["prompt_tokens"], 2, "{r:#}");
    assert_eq!(r["stream_usage"]["usage"]["completion_tokens"], 16, "{r:#}");

    // (c) Embeddings: decoded to float vectors, one per input.
    let e = &r["embeddings"];
    assert_eq!(e["count"], 2, "{r:#}");
    assert_eq!(e["dims"], serde_json::json!([8, 8]), "{r:#}");
    assert_eq!(e["all_floats"], true, "{r:#}");

    // Legacy completions, capped by max_tokens.
    let completions = &r["completions"];
    assert!(!completions["text"].as_str().unwrap().is_empty(), "{r:#}");
    assert!(
        completions["completion_tokens"].as_i64().unwrap() <= 8,
        "{r:#}"
    );

    // (d) Refusals: the poor user gets a 402 the SDK raises as APIStatusError (it has no 402
    // subclass), JSON or stream alike; a bogus key gets AuthenticationError.
    for name in ["poor", "poor_stream"] {
        let p = &r[name];
        assert_eq!(p["error_class"], "APIStatusError", "{name}: {r:#}");
        assert_eq!(p["status"], 402, "{name}: {r:#}");
        assert_eq!(p["code"], "insufficient_quota", "{name}: {r:#}");
        assert_eq!(p["type"], "insufficient_quota", "{name}: {r:#}");
        assert!(!p["message"].as_str().unwrap().is_empty(), "{name}: {r:#}");
    }
    let bogus = &r["bogus"];
    assert_eq!(bogus["error_class"], "AuthenticationError", "{r:#}");
    assert_eq!(bogus["status"], 401, "{r:#}");
    assert_eq!(bogus["code"], "invalid_api_key", "{r:#}");

    // (e) The model list.
    let ids: Vec<&str> = r["models"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini"), "{ids:?}");

    // The books: the rich user paid exactly what the usage log charged for their five requests,
    // the first of which is the chat whose charge the SDK saw in the headers; the poor user paid
    // nothing and holds nothing.
    let dir = gw.stop().await;
    let rows = usage_rows(dir.path());
    let rich_rows: Vec<_> = rows.iter().filter(|r| r.user_id == "rich").collect();
    assert_eq!(rich_rows.len(), 5, "{rows:#?}");
    assert!(rich_rows.iter().all(|r| r.success), "{rows:#?}");
    assert_eq!(rich_rows[0].credits_charged, chat_charge, "{rows:#?}");
    let charged = rich_rows
        .iter()
        .try_fold(c("0"), |sum, r| sum.checked_add(r.credits_charged))
        .unwrap();
    assert!(charged.is_positive(), "{rows:#?}");
    let mut ledger = open_ledger(dir.path());
    let account = ledger.account("rich").unwrap();
    assert_eq!(
        (account.balance, account.held),
        (c("10").checked_sub(charged).unwrap(), c("0"))
    );
    assert!(
        rows.iter()
            .filter(|r| r.user_id == "poor")
            .all(|r| !r.success && r.credits_charged == c("0")),
        "{rows:#?}"
    );
    let account = ledger.account("poor").unwrap();
    assert_eq!((account.balance, account.held), (c("0.000001"), c("0")));
    assert_books_balance(dir.path());
}
