//! `tollgate demo`: a newcomer's first look, with nothing else installed. In a temporary data dir
//! it starts the real gateway on a loopback port in front of the built-in mock upstream (which
//! speaks OpenAI's API), gives a user the Starter Pack's credit, sends a handful of requests over
//! HTTP — JSON, streamed, embeddings, an alias, an upstream failure, and one too big for the
//! user's credit — and prints what each cost, the balance, the journal, the usage report and
//! `verify`. Exit status 1 if `verify` finds anything.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use tollgate_mock_upstream::MockUpstream;

use super::output;
use crate::gateway::config::{GatewayConfig, Secret};
use crate::gateway::{self, ServeParts};
use crate::ledger::reports::{GroupBy, UsageFilter};
use crate::ledger::{AddCredits, CreditKind, Ledger, NewUser, OpenMode, SystemClock, Tier};

const USER: &str = "demo-user";

/// One request the demo sends.
struct DemoRequest {
    what: &'static str,
    path: &'static str,
    body: Value,
}

fn requests() -> Vec<DemoRequest> {
    let chat = |model: &str, text: &str| json!({"model": model, "messages": [{"role": "user", "content": text}]});
    let mut streamed = chat(
        "claude-sonnet-4",
        "Write a haiku about metering mock:tokens=40",
    );
    streamed["stream"] = json!(true);
    // A prompt of ~700,000 bytes to the priciest model: its worst case is more than 100 credits.
    let huge = "word ".repeat(140_000);
    vec![
        DemoRequest {
            what: "chat, gpt-4o-mini",
            path: "/v1/chat/completions",
            body: chat("gpt-4o-mini", "Explain prepaid credits in one line."),
        },
        DemoRequest {
            what: "chat, streamed, claude-sonnet-4",
            path: "/v1/chat/completions",
            body: streamed,
        },
        DemoRequest {
            what: "embeddings, text-embedding-3-small",
            path: "/v1/embeddings",
            body: json!({"model": "text-embedding-3-small", "input": ["tollgate meters tokens"]}),
        },
        DemoRequest {
            what: "chat, alias \"auto\"",
            path: "/v1/chat/completions",
            body: chat("auto", "Pick a model for me."),
        },
        DemoRequest {
            what: "chat, the upstream fails (503)",
            path: "/v1/chat/completions",
            body: chat("gpt-4o", "mock:status=503"),
        },
        DemoRequest {
            what: "chat, a 700 KB prompt to claude-opus-4",
            path: "/v1/chat/completions",
            body: chat("claude-opus-4", &huge),
        },
    ]
}

#[derive(Debug, Serialize)]
struct Sent {
    request: &'static str,
    status: u16,
    charged: String,
    note: String,
}

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()?;
    let mut ledger = Ledger::open(
        &dir.path().join("tollgate.db"),
        OpenMode::CreateIfMissing,
        Arc::new(SystemClock),
    )?;
    let mut user = NewUser::new(USER);
    user.tier = Tier::Starter;
    ledger.create_user(&user)?;
    ledger.add_credits(AddCredits {
        package: Some("Starter Pack".to_owned()),
        idempotency_key: Some("demo-checkout-1".to_owned()),
        note: Some("Starter Pack, paid".to_owned()),
        ..AddCredits::new(USER, "100".parse()?, CreditKind::Purchase)
    })?;
    let key = ledger.create_api_key(USER, Some("demo"))?.secret;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (sent, gateway_url) = runtime.block_on(async move {
        let mock = MockUpstream::spawn().await?;
        let mut config = GatewayConfig::default();
        config.upstream.url = mock.url();
        config.upstream.api_key = Some(Secret::new("sk-demo-upstream".into()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gateway::serve(
            config,
            ServeParts {
                ledger,
                master: None,
                demand: Default::default(),
            },
            gateway::Listeners {
                api: listener,
                admin,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::new();
        let mut sent = Vec::new();
        for r in requests() {
            sent.push(send(&client, &url, key.as_str(), r).await?);
        }
        let _ = stop.send(());
        server.await??;
        anyhow::Ok((sent, url))
    })?;

    let mut ledger = Ledger::open(
        &dir.path().join("tollgate.db"),
        OpenMode::MustExist,
        Arc::new(SystemClock),
    )?;
    let account = ledger.account(USER)?;
    let journal = ledger.history(USER, 100)?;
    let report = ledger.usage_report(&UsageFilter::default(), GroupBy::Model)?;
    let verify = ledger.verify()?;

    if json {
        output::json(&json!({
            "data_dir": dir.path().display().to_string(),
            "gateway": gateway_url,
            "requests": sent,
            "account": account,
            "journal": journal,
            "usage": report,
            "verify": verify,
        }))?;
    } else {
        output::line(&format!(
            "tollgate demo: the gateway on {gateway_url}, in front of a mock OpenAI-compatible \
             upstream,\nwith a throwaway ledger in {}\n",
            dir.path().display()
        ))?;
        output::line(&format!(
            "{USER} bought the Starter Pack (100 credits) and sent these requests:"
        ))?;
        let rows: Vec<Vec<String>> = sent
            .iter()
            .map(|s| {
                vec![
                    s.request.to_owned(),
                    s.status.to_string(),
                    s.charged.clone(),
                    s.note.clone(),
                ]
            })
            .collect();
        output::table(&["REQUEST", "HTTP", "CHARGED", "NOTE"], &rows)?;
        output::line(&format!(
            "\nBalance: {} credits ({} held, {} available)\n\nJournal (newest first):",
            account.balance, account.held, account.available
        ))?;
        super::credits::journal_table(&journal)?;
        output::line("\nUsage by model:")?;
        super::usage::print_table(&report)?;
        output::line(&format!(
            "\nverify: {} ({} entries, {} violations)",
            if verify.is_clean() { "ok" } else { "FAILED" },
            verify.entries,
            verify.violations.len()
        ))?;
        output::line(
            "\nNext: `tollgate init`, `tollgate users add`, `tollgate credits add`, then \
             `tollgate serve` in front of LiteLLM (see README).",
        )?;
    }
    Ok(if verify.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sends one request through the gateway and says what happened.
async fn send(
    client: &reqwest::Client,
    gateway: &str,
    key: &str,
    r: DemoRequest,
) -> anyhow::Result<Sent> {
    let response = client
        .post(format!("{gateway}{}", r.path))
        .bearer_auth(key)
        .json(&r.body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let charged = response
        .headers()
        .get("x-tollgate-credits-charged")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let streamed = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let text = response.text().await?;
    let note = if streamed {
        format!(
            "{} events streamed; charged at [DONE] (see the journal)",
            text.matches("data: ").count()
        )
    } else if status == 200 {
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        match body["usage"]["completion_tokens"].as_u64() {
            Some(completion) => format!(
                "{} prompt + {completion} completion tokens",
                body["usage"]["prompt_tokens"]
            ),
            None => format!("{} input tokens", body["usage"]["prompt_tokens"]),
        }
    } else {
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        body["error"]["message"]
            .as_str()
            .unwrap_or("(no message)")
            .to_owned()
    };
    Ok(Sent {
        request: r.what,
        status,
        charged: charged.unwrap_or_else(|| {
            if status == 200 {
                "-".into()
            } else {
                "0".into()
            }
        }),
        note,
    })
}
