//! The server's alert task against real PostgreSQL and a real webhook receiver on loopback: a
//! webhook that always fails is retried `attempts_max` times, then the alert is dropped (kept as
//! such, never taken again) and counted; two replicas polling one outbox at once send a row once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use tollgate_server::alerts::poll_once;
use tollgate_server::config::AlertsConfig;
use tollgate_server::metrics::Metrics;
use zeroize::Zeroizing;

use crate::support::TestDb;

/// A receiver answering `status` to every POST, counting them; its URL.
async fn receiver(status: StatusCode) -> (String, Arc<AtomicUsize>) {
    let calls: Arc<AtomicUsize> = Arc::default();
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

fn config(url: String) -> AlertsConfig {
    AlertsConfig {
        webhook_url: Zeroizing::new(url),
        allowance_thresholds: vec![50],
        low_balance_threshold: None,
        attempts_max: 3,
        backoff_initial: Duration::from_millis(1),
        poll_interval: Duration::from_millis(10),
    }
}

/// A fleet user `ann` with one pending alert (50 % of her allowance, this month).
async fn one_pending_alert(db: &TestDb) {
    let conn = db.pool.get().await.unwrap();
    conn.batch_execute(
        "INSERT INTO user_credits (user_id, fleet, monthly_allowance, credits_used_this_month) \
             VALUES ('ann', true, 10, 6);
         INSERT INTO user_alerts (user_id, kind, threshold, period_start, period_end, value) \
             SELECT user_id, 'allowance_used', 50, billing_cycle_start, billing_cycle_end, 60 \
             FROM user_credits WHERE user_id = 'ann';",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failing_webhook_is_retried_then_the_alert_dropped_and_counted() {
    let db = TestDb::new().await;
    one_pending_alert(&db).await;
    let (url, calls) = receiver(StatusCode::SERVICE_UNAVAILABLE).await;
    let config = config(url);
    let http = reqwest::Client::new();
    let metrics = Metrics::new();
    let conn = db.pool.get().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        poll_once(&db.pool, &config, &http, &metrics).await.unwrap();
        let row = conn
            .query_one(
                "SELECT attempts, sent_at IS NOT NULL, dropped_at IS NOT NULL FROM user_alerts",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, bool>(2) {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "never dropped");
        // The backoff's next attempt is due in milliseconds: poll again.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(dropped.get::<_, i32>(0), 3);
    assert!(!dropped.get::<_, bool>(1));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "three attempts");
    let text = metrics.render();
    assert!(
        text.contains("tollgate_server_alerts_total{outcome=\"retried\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("tollgate_server_alerts_total{outcome=\"dropped\"} 1"),
        "{text}"
    );
    // Dropped is final: nothing is taken again.
    assert_eq!(
        poll_once(&db.pool, &config, &http, &metrics).await.unwrap(),
        0
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn two_replicas_polling_at_once_send_an_alert_once() {
    let db = TestDb::new().await;
    one_pending_alert(&db).await;
    let (url, calls) = receiver(StatusCode::OK).await;
    let config = config(url);
    let http = reqwest::Client::new();
    let (a, b) = (Metrics::new(), Metrics::new());
    let (took_a, took_b) = tokio::join!(
        poll_once(&db.pool, &config, &http, &a),
        poll_once(&db.pool, &config, &http, &b)
    );
    assert_eq!(took_a.unwrap() + took_b.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let sent: bool = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT sent_at IS NOT NULL FROM user_alerts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(sent);
    assert_eq!(poll_once(&db.pool, &config, &http, &a).await.unwrap(), 0);
}
