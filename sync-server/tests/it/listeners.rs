//! The server's two listeners, on the real `tollgate-server serve` process: the API's (sync,
//! admin API, webhook, `/healthz`, `/readyz` for a load balancer) serves no `/metrics`; the
//! admin listener serves `/metrics`, `/readyz` and `/healthz`, and nothing of the API.

use crate::support::{TestDb, spawn_server};
use crate::sync_support::http;

#[tokio::test]
async fn metrics_are_on_the_admin_listener_only() {
    let db = TestDb::new().await;
    let server = spawn_server(&db.url);
    assert_ne!(server.addr, server.admin_addr);
    let get = |url: String| async move { http().get(url).send().await.unwrap() };
    let api = |path: &str| format!("http://{}{path}", server.addr);
    let admin = |path: &str| format!("http://{}{path}", server.admin_addr);

    assert_eq!(get(api("/healthz")).await.status(), 200);
    assert_eq!(get(api("/readyz")).await.status(), 200);
    let metrics = get(api("/metrics")).await;
    assert_eq!(metrics.status(), 404);
    assert!(
        !metrics.text().await.unwrap().contains("tollgate_server_"),
        "the API listener leaked metrics"
    );

    assert_eq!(get(admin("/healthz")).await.status(), 200);
    assert_eq!(get(admin("/readyz")).await.status(), 200);
    assert_eq!(get(admin("/v1/sync/inbox")).await.status(), 404);
    assert_eq!(get(admin("/admin/v1/users")).await.status(), 404);
    let text = get(admin("/metrics")).await.text().await.unwrap();
    // What the API listener answered is counted there, the 404 for /metrics included.
    for needle in [
        "tollgate_server_requests_total{route=\"/readyz\",status=\"200\"} 1",
        "tollgate_server_requests_total{route=\"other\",status=\"404\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}
