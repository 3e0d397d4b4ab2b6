//! The gateway against clients and upstreams that misbehave on purpose: a slow client (slowloris)
//! that never finishes its headers or its body, more connections than the gateway serves, an
//! upstream that quotes the gateway's key back in a refusal; and what the files and defaults
//! are made with (a private database, a zero-priced model still capped, a new user's level
//! within their tier).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway_support::{Gateway, User, chat_body, usage_rows};
use tollgate_e2e::Agent;

/// Reads until the server closes the connection (or `limit` passes: a failure); what it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway kept the connection open past {limit:?}"
    );
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (gw, _) = Gateway::start(&[], |config| {
        config.limits.header_read_timeout_secs = 1;
    })
    .await;
    // Half a request, then nothing: the slowloris way.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut slow, Duration::from_secs(10)).await;
    // Nothing at all: an idle connection is closed too.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    read_to_close(&mut idle, Duration::from_secs(10)).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_refused_with_a_408() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |config| {
        config.limits.body_read_timeout_secs = 1;
    })
    .await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":",
        keys[0]
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert_eq!(
        gw.mock.stats().last_body,
        None,
        "nothing reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_serves_at_most_connections_max_at_once() {
    let (mut gw, _) = Gateway::start(&[], |config| {
        config.limits.connections_max = 2;
        config.limits.header_read_timeout_secs = 60;
    })
    .await;
    // Let go of the harness's own (idle) connection.
    gw.http = reqwest::Client::new();
    // Two clients each make a request and keep their connection open: once both are answered,
    // they are the two connections the gateway serves.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a holder was never served")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        holders.push(s);
    }
    // A third client waits while they are held...
    let waiting = tokio::spawn({
        let url = gw.url("/healthz");
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()) }
    });
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !waiting.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        early.is_err(),
        "a third connection was served past the limit"
    );
    // ...and is served as soon as one is let go.
    drop(holders.pop());
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client was never served")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(holders);
    gw.stop().await;
}

/// A log writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_upstream_that_quotes_the_gateways_key_is_never_echoed_or_logged() {
    // Each test is its own process under nextest: this subscriber sees only this test.
    let logs = Captured::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .try_init();
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    for code in [401, 403] {
        let r = gw
            .chat(
                &keys[0],
                chat_body("gpt-4o-mini", &format!("hi mock:status={code}")),
            )
            .await;
        assert_eq!(r.status(), 502);
        let body = r.text().await.unwrap();
        assert!(!body.contains("sk-litellm-test"), "{body}");
        assert!(body.contains("credentials"), "{body}");
    }
    let rows = usage_rows(gw.dir.path());
    assert!(
        rows.iter()
            .all(|r| !format!("{:?}", r.metadata).contains("sk-litellm-test")),
        "{rows:?}"
    );
    gw.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("refused the gateway's key"), "{text}");
    assert!(
        !text.contains("sk-litellm-test"),
        "the key reached the log:\n{text}"
    );
}

#[tokio::test]
async fn a_zero_priced_model_is_still_capped() {
    let agent_setup = |ledger: &mut tollgate::ledger::Ledger, _: &std::path::Path| {
        let mut models = tollgate::prices::PriceTable::builtin().into_models().0;
        let mut free = models[0].clone();
        free.model = "free-model".into();
        free.input_usd_per_token = rust_decimal::Decimal::ZERO;
        free.output_usd_per_token = rust_decimal::Decimal::ZERO;
        free.max_output_tokens = None;
        free.dims = tollgate::prices::PriceDims::default();
        models.push(free);
        ledger.import_prices("t", &"c".repeat(64), &models).unwrap();
    };
    let mock = tollgate_mock_upstream::MockUpstream::spawn().await.unwrap();
    let (gw, keys) =
        Gateway::start_with(mock, &[User::new("alice", "0")], agent_setup, |_| {}).await;
    let r = gw.chat(&keys[0], chat_body("free-model", "hello")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Nothing is known of its maximum: the gateway caps it, and says so.
    assert_eq!(r.headers()["x-tollgate-max-tokens"], "4096");
    let sent = gw.mock.stats().last_body.unwrap();
    assert_eq!(sent["max_completion_tokens"], 4096, "{sent}");
    gw.stop().await;
}

#[test]
fn the_database_is_private_and_a_new_users_level_is_one_the_tier_allows() {
    let agent = Agent::init("local");
    let mode = std::fs::metadata(agent.data_dir().join("tollgate.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "tollgate.db is {:o}", mode & 0o777);
    let trial: Value = agent.json(&["users", "add", "tara", "--tier", "trial"]);
    assert_eq!(trial["power_level"], "eco", "{trial}");
    let pro: Value = agent.json(&["users", "add", "pat", "--tier", "professional"]);
    assert_eq!(pro["power_level"], "balanced", "{pro}");
    let out = agent.run(&[
        "users",
        "add",
        "tim",
        "--tier",
        "trial",
        "--power-level",
        "precision",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not available on the trial tier (it allows: eco)"),
        "{stderr}"
    );
    let out = agent.run(&["users", "set", "pat", "--tier", "trial"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a tier change that strands the level"
    );
}
