//! The server against callers that hold what they should not: a client that never finishes its
//! headers or its body, more connections than a replica serves, requests queued for a busy
//! pool, an agent opening long poll after long poll, a read-only token starting reconcile after
//! reconcile, and an unauthenticated `/readyz` that must not tell the database's error.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestDb, TestServer};
use crate::sync_support::{admin_token, enroll, http};

/// Reads until the server closes the connection (or `limit` passes: a failure); what it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {limit:?}"
    );
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.limits.header_read_timeout = Duration::from_secs(1);
    config.limits.body_read_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    // Half a request's headers, then nothing (slowloris); and nothing at all.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /v1/sync/push HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut slow, Duration::from_secs(10)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    read_to_close(&mut idle, Duration::from_secs(10)).await;
    // A body that never arrives: a 408 naming the time.
    let token = admin_token(&db.pool, "ops", "full").await;
    let mut trickle = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /admin/v1/checkout HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"user_id\":"
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut trickle, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(answer.contains("within 1 s"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_replica_serves_at_most_connections_max_at_once() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.limits.connections_max = 2;
    config.limits.header_read_timeout = Duration::from_secs(60);
    let server = TestServer::start(config).await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
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
    let waiting = tokio::spawn({
        let url = server.url("/healthz");
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
    drop(holders.pop());
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client was never served")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_cannot_get_a_database_connection_is_told_to_retry() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.pool_size = 1;
    config.limits.pool_wait = Duration::from_millis(200);
    let server = TestServer::start(config).await;
    let token = admin_token(&db.pool, "ops", "full").await;
    // The replica's only connection, taken.
    let held = server.state.pool.get().await.unwrap();
    let response = http()
        .get(server.url("/admin/v1/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("busy"),
        "{body}"
    );
    // Free again: served.
    drop(held);
    let response = http()
        .get(server.url("/admin/v1/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn an_agent_holds_a_bounded_number_of_long_polls() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.limits.long_polls_per_agent = 2;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, "edge-1").await;
    let poll = || {
        http()
            .get(format!("{base}/v1/sync/inbox?after=0&wait_ms=30000"))
            .bearer_auth(&agent.credential)
            .send()
    };
    let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(poll())).collect();
    // Both are waiting once the replica counts them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.state.long_polls.open(agent.agent_id) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the polls never started"
        );
        tokio::task::yield_now().await;
    }
    let third = poll().await.unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    // A poll that does not wait is always answered.
    let quick = http()
        .get(format!("{base}/v1/sync/inbox?after=0"))
        .bearer_auth(&agent.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), 200);
    for w in waiting {
        w.abort();
    }
    // The aborted polls' slots come back when the server sees them go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.state.long_polls.open(agent.agent_id) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_read_only_token_cannot_start_reconciles_back_to_back() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let read = admin_token(&db.pool, "watcher", "read").await;
    let full = admin_token(&db.pool, "ops", "full").await;
    let reconcile = |token: String| {
        http()
            .get(server.url("/admin/v1/reconcile"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(reconcile(read.clone()).await.unwrap().status(), 200);
    let again = reconcile(read.clone()).await.unwrap();
    assert_eq!(again.status(), 429);
    let wait: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // A full token is not limited.
    for _ in 0..2 {
        assert_eq!(reconcile(full.clone()).await.unwrap().status(), 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn readyz_never_tells_the_databases_error() {
    let db = TestDb::new().await;
    let mut config = db.config();
    // A database that does not exist: not ready, and the answer says only that.
    let missing = format!("{}_missing", db.url);
    config.database_url = zeroize::Zeroizing::new(missing.clone());
    let server = TestServer::start(config).await;
    let response = http().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    assert!(text.contains("not ready"), "{text}");
    let name = missing.rsplit('/').next().unwrap();
    assert!(!text.contains(name), "the database's name leaked: {text}");
    assert!(!text.contains("does not exist"), "the error leaked: {text}");
    server.stop().await;
}
