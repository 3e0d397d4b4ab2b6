//! Stripe against a local mock of its API: a checkout creates a session; a signed, paid event
//! grants once — however often, concurrently or in whatever order it and its sibling event type
//! arrive; bad signatures, stale timestamps and unpaid sessions grant nothing.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use tollgate_schema::wire::{CreditEventKind, EventBody};
use tollgate_server::config::StripeConfig;
use tollgate_server::stripe::signature::header_for;
use zeroize::Zeroizing;

use crate::admin_support::{
    Api, Draft, FakeAgent, add_token, books, c, code, count, inbox, set_user,
};
use crate::support::{TestDb, TestServer};

const SECRET_KEY: &str = "sk_test_tollgate";
const WEBHOOK_SECRET: &str = "whsec_tollgate_test";

/// What the mock Stripe received: (Authorization header, form fields).
pub type Received = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// Decodes `application/x-www-form-urlencoded`.
fn decode_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A mock of Stripe's `POST /v1/checkout/sessions`: answers `cs_test_<n>` and records the form.
pub async fn mock_stripe() -> (String, Received) {
    let received: Received = Arc::default();
    async fn sessions(
        State(received): State<Received>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::Json<Value> {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let mut all = received.lock().unwrap();
        all.push((auth, decode_form(&body)));
        let id = format!("cs_test_{}", all.len());
        axum::Json(json!({
            "id": id, "object": "checkout.session",
            "url": format!("https://checkout.stripe.test/c/pay/{id}")
        }))
    }
    let app = Router::new()
        .route("/v1/checkout/sessions", post(sessions))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

struct Shop {
    db: TestDb,
    server: TestServer,
    api: Api,
    received: Received,
    agent: FakeAgent,
}

async fn shop() -> Shop {
    let db = TestDb::new().await;
    let agent = FakeAgent::new(&db, "a1").await;
    set_user(&db, "alice", "a1").await;
    let (api_base, received) = mock_stripe().await;
    let mut config = db.config();
    config.stripe = Some(StripeConfig {
        api_base,
        secret_key: Zeroizing::new(SECRET_KEY.to_owned()),
        webhook_secret: Zeroizing::new(WEBHOOK_SECRET.to_owned()),
        success_url: "https://shop.test/ok".to_owned(),
        cancel_url: "https://shop.test/cancel".to_owned(),
    });
    let server = TestServer::start(config).await;
    let token = add_token(&db, "root", "full").await;
    let api = Api::new(&server, &token);
    Shop {
        db,
        server,
        api,
        received,
        agent,
    }
}

impl Shop {
    async fn checkout(&self, package: &str) -> String {
        let (status, body) = self
            .api
            .post(
                "/admin/v1/checkout",
                json!({"user_id": "alice", "package": package}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["session_id"].as_str().unwrap().to_owned()
    }

    /// Delivers `body` to the webhook with `signature` (or none).
    async fn deliver(&self, body: &[u8], signature: Option<String>) -> (u16, Value) {
        let mut req = self
            .api
            .client
            .post(self.server.url("/stripe/webhook"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header("Stripe-Signature", sig);
        }
        let response = req.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Delivers `body` signed now with the right secret.
    async fn send(&self, body: &[u8]) -> (u16, Value) {
        self.deliver(
            body,
            Some(header_for(body, WEBHOOK_SECRET.as_bytes(), now())),
        )
        .await
    }

    async fn grants(&self) -> i64 {
        count(
            &self.db,
            "central_operations WHERE kind = 'credit' AND operation_key LIKE 'stripe:%'",
        )
        .await
    }

    async fn credit_events(&self) -> Vec<tollgate_schema::wire::CreditEvent> {
        inbox(&self.db, "a1")
            .await
            .into_iter()
            .filter_map(|(_, b)| match b {
                EventBody::Credit(e) => Some(e),
                _ => None,
            })
            .collect()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn event(id: &str, kind: &str, session: &str, payment_status: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": kind, "api_version": "2024-06-20",
        "created": now(), "livemode": false,
        "data": {"object": {
            "id": session, "object": "checkout.session", "payment_status": payment_status,
            "client_reference_id": "alice", "amount_total": 4500, "currency": "usd",
            "metadata": {"package": "Value Pack"}
        }}
    }))
    .unwrap()
}

const COMPLETED: &str = "checkout.session.completed";
const ASYNC_OK: &str = "checkout.session.async_payment_succeeded";

#[tokio::test]
async fn checkout_creates_a_session_at_stripe_and_records_it() {
    let shop = shop().await;
    let (status, body) = shop
        .api
        .post(
            "/admin/v1/checkout",
            json!({"user_id": "alice", "package": "Value Pack"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session_id"], "cs_test_1");
    assert_eq!(body["url"], "https://checkout.stripe.test/c/pay/cs_test_1");
    assert_eq!(body["credits"], "500");
    assert_eq!(body["price_usd"], "45.00");
    let received = shop.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let (auth, form) = &received[0];
    assert_eq!(auth, &format!("Bearer {SECRET_KEY}"));
    let field = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {form:?}"))
    };
    assert_eq!(field("mode"), "payment");
    assert_eq!(field("client_reference_id"), "alice");
    assert_eq!(field("line_items[0][price_data][currency]"), "usd");
    assert_eq!(field("line_items[0][price_data][unit_amount]"), "4500");
    assert_eq!(
        field("line_items[0][price_data][product_data][name]"),
        "Value Pack"
    );
    assert_eq!(field("line_items[0][quantity]"), "1");
    assert_eq!(field("metadata[package]"), "Value Pack");
    assert_eq!(field("success_url"), "https://shop.test/ok");
    assert_eq!(field("cancel_url"), "https://shop.test/cancel");
    let row = shop
        .db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT user_id, package_name, credits::text, price_usd::text, status \
             FROM checkout_sessions WHERE session_id = 'cs_test_1'",
            &[],
        )
        .await
        .unwrap();
    let got: (String, String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        got,
        (
            "alice".into(),
            "Value Pack".into(),
            "500.000000000".into(),
            "45.00".into(),
            "open".into()
        )
    );
    // Nothing is granted by creating a session.
    assert_eq!(shop.grants().await, 0);
}

#[tokio::test]
async fn checkout_refusals_call_nobody_and_write_nothing() {
    let shop = shop().await;
    let db = &shop.db;
    db.pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE credit_packages SET is_active = false WHERE name = 'Pro Pack'; \
             UPDATE credit_packages SET min_tier = 'professional' WHERE name = 'Enterprise Pack'; \
             INSERT INTO user_credits (user_id) VALUES ('homeless');",
        )
        .await
        .unwrap();
    crate::admin_support::add_agent(db, "gone").await;
    set_user(db, "stranded", "gone").await;
    crate::admin_support::revoke_agent(db, "gone").await;
    let reader = shop
        .api
        .with_token(Some(&add_token(db, "viewer", "read").await));
    let before = books(db).await;
    let cases = [
        (
            &reader,
            json!({"user_id": "alice", "package": "Value Pack"}),
            403,
            "forbidden",
        ),
        (
            &shop.api,
            json!({"user_id": "alice", "package": "Nope"}),
            400,
            "bad_request",
        ),
        (
            &shop.api,
            json!({"user_id": "alice", "package": "Pro Pack"}),
            400,
            "bad_request",
        ),
        (
            &shop.api,
            json!({"user_id": "alice", "package": "Enterprise Pack"}),
            409,
            "conflict",
        ),
        (
            &shop.api,
            json!({"user_id": "nobody", "package": "Value Pack"}),
            404,
            "not_found",
        ),
        (
            &shop.api,
            json!({"user_id": "homeless", "package": "Value Pack"}),
            409,
            "conflict",
        ),
        (
            &shop.api,
            json!({"user_id": "stranded", "package": "Value Pack"}),
            409,
            "conflict",
        ),
        (&shop.api, json!({"user_id": "alice"}), 400, "bad_request"),
        (
            &shop.api,
            json!({"user_id": "alice", "package": "Value Pack", "quantity": 2}),
            400,
            "bad_request",
        ),
    ];
    for (client, body, status, error) in cases {
        let (got, err) = client.post("/admin/v1/checkout", body.clone()).await;
        assert_eq!((got, code(&err)), (status, error), "{body}: {err}");
    }
    assert!(shop.received.lock().unwrap().is_empty());
    assert_eq!(books(db).await, before);

    // A server without Stripe configured says which variables to set.
    let plain = TestServer::start(db.config()).await;
    let api = Api::new(&plain, shop.api.token.as_deref().unwrap());
    let (status, err) = api
        .post(
            "/admin/v1/checkout",
            json!({"user_id": "alice", "package": "Value Pack"}),
        )
        .await;
    assert_eq!((status, code(&err)), (503, "unavailable"));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("STRIPE_SECRET_KEY"),
        "{err}"
    );
    let (status, err) = plain_webhook(&plain, b"{}").await;
    assert_eq!((status, code(&err)), (503, "unavailable"));
}

async fn plain_webhook(server: &TestServer, body: &[u8]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/stripe/webhook"))
        .header(
            "Stripe-Signature",
            header_for(body, WEBHOOK_SECRET.as_bytes(), now()),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_valid_event_grants_once_and_reaches_the_books() {
    let mut shop = shop().await;
    let session = shop.checkout("Value Pack").await;
    let (status, body) = shop
        .send(&event("evt_1", COMPLETED, &session, "paid"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"received": true, "outcome": "granted"}));
    let credits = shop.credit_events().await;
    assert_eq!(credits.len(), 1);
    assert_eq!(credits[0].kind, CreditEventKind::Purchase);
    assert_eq!(credits[0].amount, c("500"));
    assert_eq!(credits[0].package.as_deref(), Some("Value Pack"));
    assert_eq!(credits[0].idempotency_key, format!("stripe:{session}"));
    let db = &shop.db;
    assert_eq!(
        count(
            db,
            &format!(
                "central_operations WHERE operation_key = 'stripe:{session}' AND amount = 500 \
                 AND actor = 'stripe'"
            )
        )
        .await,
        1
    );
    assert_eq!(
        count(
            db,
            "checkout_sessions WHERE status = 'granted' AND granted_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            db,
            "stripe_events WHERE event_id = 'evt_1' AND outcome = 'granted'"
        )
        .await,
        1
    );
    // The home agent applies it; the books agree and count it as purchased.
    shop.agent.apply_inbox(db).await;
    let report = tollgate_server::reconcile::run(&db.pool).await.unwrap();
    assert!(report.ok, "{report:#?}");
    let (_, user) = shop.api.get("/admin/v1/users/alice").await;
    assert_eq!(user["balance"], "500");
    assert_eq!(user["lifetime_credits_purchased"], "500");
    let metrics = shop.server.state.metrics.render();
    assert!(
        metrics.contains("tollgate_server_stripe_events_total{outcome=\"granted\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_unpaid_sessions_grant_nothing() {
    let shop = shop().await;
    let session = shop.checkout("Value Pack").await;
    let body = event("evt_1", COMPLETED, &session, "paid");
    let before = books(&shop.db).await;
    // Well past the 300 s tolerance either way: the case list is built before the deliveries,
    // and a slow machine may take seconds to send them all (a margin of 1 s once failed).
    let stale = now() - 400;
    let cases = [
        ("no signature", None, "missing"),
        (
            "wrong secret",
            Some(header_for(&body, b"whsec_other", now())),
            "no signature",
        ),
        (
            "signature of another body",
            Some(header_for(b"{}", WEBHOOK_SECRET.as_bytes(), now())),
            "no signature",
        ),
        ("garbage", Some("t=abc,v1=zz".to_owned()), "malformed"),
        (
            "v0 only",
            Some(format!("t={},v0=00", now())),
            "no signature",
        ),
        (
            "stale by 400 s",
            Some(header_for(&body, WEBHOOK_SECRET.as_bytes(), stale)),
            "s away from now",
        ),
        (
            "from the future by 400 s",
            Some(header_for(&body, WEBHOOK_SECRET.as_bytes(), now() + 400)),
            "s away from now",
        ),
    ];
    for (name, signature, needle) in cases {
        let (status, err) = shop.deliver(&body, signature).await;
        assert_eq!((status, code(&err)), (400, "bad_request"), "{name}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{name}: {err}"
        );
        assert_eq!(books(&shop.db).await, before, "{name} stored something");
    }
    // Completed but not paid (e.g. a bank transfer still pending): recorded, nothing granted.
    let (status, body) = shop
        .send(&event("evt_2", COMPLETED, &session, "unpaid"))
        .await;
    assert_eq!((status, body["outcome"].clone()), (200, json!("unpaid")));
    assert_eq!(
        count(
            &shop.db,
            "stripe_events WHERE event_id = 'evt_2' AND outcome = 'unpaid'"
        )
        .await,
        1
    );
    assert_eq!(shop.grants().await, 0);
    assert_eq!(
        count(&shop.db, "checkout_sessions WHERE status = 'open'").await,
        1
    );
    let metrics = shop.server.state.metrics.render();
    assert!(
        metrics.contains("outcome=\"bad_signature\"} 5")
            && metrics.contains("outcome=\"stale\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_same_event_five_times_grants_once_also_concurrently() {
    let shop = shop().await;
    let first = shop.checkout("Value Pack").await;
    let body = event("evt_a", COMPLETED, &first, "paid");
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let (status, answer) = shop.send(&body).await;
        assert_eq!(status, 200);
        outcomes.push(answer["outcome"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        outcomes,
        [
            "granted",
            "duplicate",
            "duplicate",
            "duplicate",
            "duplicate"
        ]
    );
    // Five concurrent deliveries of another session's event.
    let second = shop.checkout("Starter Pack").await;
    let body = event("evt_b", COMPLETED, &second, "paid");
    let shop = Arc::new(shop);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let shop = shop.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move { shop.send(&body).await }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        let (status, answer) = t.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        outcomes.push(answer["outcome"].as_str().unwrap().to_owned());
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            "duplicate",
            "duplicate",
            "duplicate",
            "duplicate",
            "granted"
        ]
    );
    assert_eq!(shop.grants().await, 2);
    let amounts: Vec<_> = shop
        .credit_events()
        .await
        .iter()
        .map(|e| e.amount)
        .collect();
    assert_eq!(amounts, [c("500"), c("100")]);
    assert_eq!(count(&shop.db, "stripe_events").await, 2);
}

#[tokio::test]
async fn both_event_types_for_one_session_grant_once_in_any_order() {
    let shop = shop().await;
    // completed (paid) then async_payment_succeeded.
    let s1 = shop.checkout("Value Pack").await;
    let (_, a) = shop.send(&event("evt_1", COMPLETED, &s1, "paid")).await;
    let (_, b) = shop.send(&event("evt_2", ASYNC_OK, &s1, "paid")).await;
    assert_eq!(
        (a["outcome"].clone(), b["outcome"].clone()),
        (json!("granted"), json!("already_granted"))
    );
    // Reordered: async_payment_succeeded arrives before completed (paid).
    let s2 = shop.checkout("Value Pack").await;
    let (_, a) = shop.send(&event("evt_3", ASYNC_OK, &s2, "paid")).await;
    let (_, b) = shop.send(&event("evt_4", COMPLETED, &s2, "paid")).await;
    assert_eq!(
        (a["outcome"].clone(), b["outcome"].clone()),
        (json!("granted"), json!("already_granted"))
    );
    // A delayed payment: completed while unpaid, then the async success grants.
    let s3 = shop.checkout("Value Pack").await;
    let (_, a) = shop.send(&event("evt_5", COMPLETED, &s3, "unpaid")).await;
    let (_, b) = shop.send(&event("evt_6", ASYNC_OK, &s3, "paid")).await;
    assert_eq!(
        (a["outcome"].clone(), b["outcome"].clone()),
        (json!("unpaid"), json!("granted"))
    );
    // Both types at the same time.
    let s4 = shop.checkout("Value Pack").await;
    let (e7, e8) = (
        event("evt_7", COMPLETED, &s4, "paid"),
        event("evt_8", ASYNC_OK, &s4, "paid"),
    );
    let (x, y) = tokio::join!(shop.send(&e7), shop.send(&e8));
    let mut both = [
        x.1["outcome"].as_str().unwrap().to_owned(),
        y.1["outcome"].as_str().unwrap().to_owned(),
    ];
    both.sort();
    assert_eq!(both, ["already_granted", "granted"]);
    assert_eq!(shop.grants().await, 4);
    assert_eq!(shop.credit_events().await.len(), 4);
    for s in [&s1, &s2, &s3, &s4] {
        assert_eq!(
            count(
                &shop.db,
                &format!("central_operations WHERE operation_key = 'stripe:{s}'")
            )
            .await,
            1
        );
    }
}

#[tokio::test]
async fn unknown_sessions_and_other_event_types_are_recorded_not_granted() {
    let shop = shop().await;
    let session = shop.checkout("Value Pack").await;
    let (_, a) = shop
        .send(&event("evt_1", COMPLETED, "cs_test_unknown", "paid"))
        .await;
    assert_eq!(a["outcome"], "unknown_session");
    let (_, b) = shop
        .send(&event(
            "evt_2",
            "checkout.session.expired",
            &session,
            "unpaid",
        ))
        .await;
    assert_eq!(b["outcome"], "ignored");
    let (_, d) = shop
        .send(
            &serde_json::to_vec(
                &json!({"id": "evt_3", "type": "invoice.paid", "data": {"object": {}}}),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(d["outcome"], "ignored");
    assert_eq!(shop.grants().await, 0);
    assert_eq!(count(&shop.db, "stripe_events").await, 3);
    // A signed body that is not an event is refused and not stored.
    let (status, err) = shop.send(b"[1,2,3]").await;
    assert_eq!((status, code(&err)), (400, "bad_request"));
    let (status, err) = shop.send(br#"{"id": "", "type": "x"}"#).await;
    assert_eq!((status, code(&err)), (400, "bad_request"));
    assert_eq!(count(&shop.db, "stripe_events").await, 3);
    // Too large a body: 413 before anything else.
    let big = vec![b' '; 256 * 1024 + 1];
    let (status, err) = shop.send(&big).await;
    assert_eq!((status, code(&err)), (413, "too_large"));
    assert_eq!(count(&shop.db, "stripe_events").await, 3);
}

/// What the ordering mock saw when Stripe was called: the checkout row's status (by the
/// checkout id in the metadata), the Idempotency-Key, and the status of an admin request made
/// meanwhile (which needs a database connection).
#[derive(Debug, Clone, Default)]
struct SeenAtCall {
    row_status: Option<String>,
    idempotency_key: Option<String>,
    checkout_id: Option<String>,
    admin_status: Option<u16>,
}

#[derive(Clone)]
struct OrderingMock {
    pool: deadpool_postgres::Pool,
    seen: Arc<Mutex<SeenAtCall>>,
    /// The server and an admin token, set once the server runs.
    admin: Arc<Mutex<Option<(String, String)>>>,
}

async fn ordering_sessions(
    State(mock): State<OrderingMock>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let form = decode_form(&body);
    let checkout_id = form
        .iter()
        .find(|(k, _)| k == "metadata[checkout_id]")
        .map(|(_, v)| v.clone());
    let row_status = match &checkout_id {
        Some(id) => mock
            .pool
            .get()
            .await
            .unwrap()
            .query_opt(
                "SELECT status FROM checkout_sessions WHERE checkout_id = $1::text::uuid",
                &[id],
            )
            .await
            .unwrap()
            .map(|r| r.get(0)),
        None => None,
    };
    let admin = mock.admin.lock().unwrap().clone();
    let admin_status = match admin {
        Some((url, token)) => Some(
            reqwest::Client::new()
                .get(format!("{url}/admin/v1/users"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        ),
        None => None,
    };
    *mock.seen.lock().unwrap() = SeenAtCall {
        row_status,
        idempotency_key: headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap().to_owned()),
        checkout_id,
        admin_status,
    };
    axum::Json(
        json!({"id": "cs_test_ordered", "object": "checkout.session",
                      "url": "https://checkout.stripe.test/c/pay/cs_test_ordered"}),
    )
}

#[tokio::test]
async fn a_checkout_is_recorded_before_stripe_is_called_and_holds_no_connection_meanwhile() {
    let db = TestDb::new().await;
    let _agent = FakeAgent::new(&db, "a1").await;
    set_user(&db, "alice", "a1").await;
    let mock = OrderingMock {
        pool: db.pool.clone(),
        seen: Arc::default(),
        admin: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/checkout/sessions", post(ordering_sessions))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut config = db.config();
    // One connection: if the checkout held it across Stripe's call, the admin request made
    // during the call could not be served.
    config.pool_size = 1;
    config.limits.pool_wait = std::time::Duration::from_secs(2);
    config.stripe = Some(StripeConfig {
        api_base,
        secret_key: Zeroizing::new(SECRET_KEY.to_owned()),
        webhook_secret: Zeroizing::new(WEBHOOK_SECRET.to_owned()),
        success_url: "https://shop.test/ok".to_owned(),
        cancel_url: "https://shop.test/cancel".to_owned(),
    });
    let server = TestServer::start(config).await;
    let token = add_token(&db, "root", "full").await;
    *mock.admin.lock().unwrap() = Some((server.url(""), token.clone()));
    let api = Api::new(&server, &token);
    let (status, body) = api
        .post(
            "/admin/v1/checkout",
            json!({"user_id": "alice", "package": "Value Pack"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.seen.lock().unwrap().clone();
    assert_eq!(seen.row_status.as_deref(), Some("creating"), "{seen:?}");
    assert!(seen.checkout_id.is_some(), "{seen:?}");
    assert_eq!(seen.idempotency_key, seen.checkout_id, "{seen:?}");
    assert_eq!(seen.admin_status, Some(200), "{seen:?}");
    let status: String = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT status FROM checkout_sessions WHERE session_id = 'cs_test_ordered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "open");
}

#[tokio::test]
async fn a_session_whose_id_was_never_stored_is_granted_from_its_metadata() {
    let shop = shop().await;
    // The server recorded the checkout, Stripe made the session, and the server died before
    // storing its id.
    let checkout_id = uuid::Uuid::now_v7();
    shop.db
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO checkout_sessions (checkout_id, user_id, package_name, credits, \
             price_usd, status) VALUES ($1, 'alice', 'Value Pack', 500, 45, 'creating')",
            &[&checkout_id],
        )
        .await
        .unwrap();
    let mut body: Value =
        serde_json::from_slice(&event("evt_lost", COMPLETED, "cs_test_lost", "paid")).unwrap();
    body["data"]["object"]["metadata"]["checkout_id"] = json!(checkout_id.to_string());
    let body = serde_json::to_vec(&body).unwrap();
    let (status, answer) = shop.send(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "granted", "{answer}");
    // Granted once, to alice's home agent, keyed on the session.
    let events = inbox(&shop.db, "a1").await;
    let grants: Vec<_> = events
        .iter()
        .filter(|(_, e)| matches!(e, EventBody::Credit(c) if c.idempotency_key == "stripe:cs_test_lost"))
        .collect();
    assert_eq!(grants.len(), 1, "{events:?}");
    let (status, answer) = shop.send(&body).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("duplicate"))
    );
}

// ---------------------------------------------------------------------------------------------
// Money back: refunds and disputes take credit back (before, they were ignored and the credit
// survived a chargeback).

const REFUNDED: &str = "charge.refunded";
const DISPUTE_CREATED: &str = "charge.dispute.created";
const DISPUTE_CLOSED: &str = "charge.dispute.closed";

/// A paid `checkout.session.completed` carrying the payment intent Stripe made.
fn paid_with_intent(id: &str, session: &str, payment_intent: &str) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&event(id, COMPLETED, session, "paid")).unwrap();
    body["data"]["object"]["payment_intent"] = payment_intent.into();
    serde_json::to_vec(&body).unwrap()
}

/// A `charge.refunded` for `charge` of `payment_intent` (the Value Pack costs 4500 cents), with
/// the charge's cumulative `amount_refunded`.
fn refunded(id: &str, charge: &str, payment_intent: &str, amount_refunded: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": REFUNDED, "created": now(), "livemode": false,
        "data": {"object": {
            "id": charge, "object": "charge", "payment_intent": payment_intent,
            "amount": 4500, "amount_refunded": amount_refunded, "currency": "usd",
            "refunded": amount_refunded == 4500
        }}
    }))
    .unwrap()
}

fn dispute(id: &str, kind: &str, dispute: &str, payment_intent: &str, status: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": kind, "created": now(), "livemode": false,
        "data": {"object": {
            "id": dispute, "object": "dispute", "charge": "ch_1", "payment_intent": payment_intent,
            "amount": 4500, "currency": "usd", "status": status, "reason": "fraudulent"
        }}
    }))
    .unwrap()
}

/// The outcome of delivering `body`, which must be accepted.
async fn outcome_of(shop: &Shop, body: &[u8]) -> String {
    let (status, answer) = shop.send(body).await;
    assert_eq!(status, 200, "{answer}");
    answer["outcome"].as_str().unwrap().to_owned()
}

/// (idempotency key, amount) of every central credit event after the purchase.
async fn adjustments(shop: &Shop) -> Vec<(String, tollgate_schema::money::Credits)> {
    shop.credit_events()
        .await
        .into_iter()
        .filter(|e| e.kind == CreditEventKind::AdminAdjustment)
        .map(|e| (e.idempotency_key, e.amount))
        .collect()
}

#[tokio::test]
async fn refunds_take_back_the_refunded_share_once_however_they_arrive() {
    let mut shop = shop().await;
    let session = shop.checkout("Value Pack").await;
    assert_eq!(
        outcome_of(&shop, &paid_with_intent("evt_p", &session, "pi_1")).await,
        "granted"
    );

    // Half refunded: half the 500 credits come back, as an adjustment to the home agent.
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r1", "ch_1", "pi_1", 2250)).await,
        "taken_back"
    );
    // Redelivered, or an older total arriving late: nothing more.
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r1", "ch_1", "pi_1", 2250)).await,
        "duplicate"
    );
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r0", "ch_1", "pi_1", 1000)).await,
        "already_taken_back"
    );
    // The rest refunded: only the difference.
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r2", "ch_1", "pi_1", 4500)).await,
        "taken_back"
    );
    assert_eq!(
        adjustments(&shop).await,
        [
            ("stripe:refund:ch_1:2250".to_owned(), c("-250")),
            ("stripe:refund:ch_1:4500".to_owned(), c("-250")),
        ]
    );
    // A refund of a payment we never granted is recorded, and takes nothing.
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r9", "ch_9", "pi_unknown", 100)).await,
        "unknown_payment"
    );
    let (status, answer) = shop
        .send(
            &serde_json::to_vec(
                &json!({"id": "evt_bad", "type": REFUNDED, "data": {"object": {"id": "ch_1"}}}),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("malformed_object"))
    );
    assert_eq!(adjustments(&shop).await.len(), 2);

    // The home agent books them; the books agree: the purchase is wholly taken back.
    shop.agent.apply_inbox(&shop.db).await;
    let report = tollgate_server::reconcile::run(&shop.db.pool)
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    let (_, user) = shop.api.get("/admin/v1/users/alice").await;
    assert_eq!(user["balance"], "0", "{user}");
}

#[tokio::test]
async fn a_dispute_takes_the_credit_back_and_gives_it_back_only_if_won() {
    let mut shop = shop().await;
    let won = shop.checkout("Value Pack").await;
    assert_eq!(
        outcome_of(&shop, &paid_with_intent("evt_p1", &won, "pi_won")).await,
        "granted"
    );
    let lost = shop.checkout("Value Pack").await;
    assert_eq!(
        outcome_of(&shop, &paid_with_intent("evt_p2", &lost, "pi_lost")).await,
        "granted"
    );

    // In this order: each delivery and the outcome it must have.
    let deliveries = [
        (
            dispute(
                "evt_d1",
                DISPUTE_CREATED,
                "dp_won",
                "pi_won",
                "needs_response",
            ),
            "taken_back",
        ),
        (
            dispute(
                "evt_d1b",
                DISPUTE_CREATED,
                "dp_won",
                "pi_won",
                "needs_response",
            ),
            "already_taken_back",
        ),
        (
            dispute(
                "evt_d2",
                DISPUTE_CREATED,
                "dp_lost",
                "pi_lost",
                "needs_response",
            ),
            "taken_back",
        ),
        // A refund after the dispute took everything back takes nothing more.
        (
            refunded("evt_r", "ch_2", "pi_lost", 4500),
            "already_taken_back",
        ),
        (
            dispute("evt_c1", DISPUTE_CLOSED, "dp_won", "pi_won", "won"),
            "dispute_won",
        ),
        (
            dispute("evt_c1b", DISPUTE_CLOSED, "dp_won", "pi_won", "won"),
            "already_closed",
        ),
        (
            dispute("evt_c2", DISPUTE_CLOSED, "dp_lost", "pi_lost", "lost"),
            "dispute_lost",
        ),
        (
            dispute("evt_c3", DISPUTE_CLOSED, "dp_never", "pi_won", "won"),
            "unknown_dispute",
        ),
    ];
    for (body, want) in &deliveries {
        let id: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(outcome_of(&shop, body).await, *want, "{}", id["id"]);
    }
    assert_eq!(
        adjustments(&shop).await,
        [
            ("stripe:dispute:dp_won".to_owned(), c("-500")),
            ("stripe:dispute:dp_lost".to_owned(), c("-500")),
            ("stripe:dispute_won:dp_won".to_owned(), c("500")),
        ]
    );
    shop.agent.apply_inbox(&shop.db).await;
    let report = tollgate_server::reconcile::run(&shop.db.pool)
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    let (_, user) = shop.api.get("/admin/v1/users/alice").await;
    // Two purchases of 500; the lost one taken back.
    assert_eq!(user["balance"], "500", "{user}");
}

/// A home user who spent their credit before Stripe took the money back: the home is sent what
/// its balance (as pushed) still covers, the rest is booked as the user's debt — the webhook
/// still answers 200 and nothing is refused — and their next credit repays the debt before the
/// rest reaches the home. Reconcile agrees at every step. (Before: the whole adjustment went to
/// the home, which refused it, and reconcile listed it as not applied, forever.)
#[tokio::test]
async fn money_returned_beyond_a_home_users_balance_becomes_debt_that_their_next_credit_repays() {
    let mut shop = shop().await;
    let first = shop.checkout("Value Pack").await;
    assert_eq!(
        outcome_of(&shop, &paid_with_intent("evt_p1", &first, "pi_1")).await,
        "granted"
    );
    shop.agent.apply_inbox(&shop.db).await;
    // 450 of the 500 spent (and pushed), then the whole payment refunded.
    shop.agent
        .append(&shop.db, &Draft::new("alice", "usage", "-450"))
        .await;
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r1", "ch_1", "pi_1", 4500)).await,
        "taken_back"
    );
    let events = shop.credit_events().await;
    assert_eq!(events.last().unwrap().amount, c("-50"), "{events:?}");
    let reconciled = |shop: &Shop| {
        let pool = shop.db.pool.clone();
        async move {
            let report = tollgate_server::reconcile::run(&pool).await.unwrap();
            assert!(report.ok, "{report:#?}");
        }
    };
    shop.agent.apply_inbox(&shop.db).await;
    reconciled(&shop).await;
    let (_, user) = shop.api.get("/admin/v1/users/alice").await;
    assert_eq!(
        (user["balance"].as_str(), user["debt"].as_str()),
        (Some("0"), Some("450")),
        "{user}"
    );

    // The next purchase repays the debt first; only the rest reaches the home.
    let second = shop.checkout("Value Pack").await;
    assert_eq!(
        outcome_of(&shop, &paid_with_intent("evt_p2", &second, "pi_2")).await,
        "granted"
    );
    let events = shop.credit_events().await;
    let last = events.last().unwrap();
    assert_eq!(
        (last.amount, last.package.as_deref()),
        (c("50"), None),
        "{events:?}"
    );
    shop.agent.apply_inbox(&shop.db).await;
    reconciled(&shop).await;
    let (_, user) = shop.api.get("/admin/v1/users/alice").await;
    assert_eq!(
        (user["balance"].as_str(), user.get("debt")),
        (Some("50"), None),
        "{user}"
    );

    // Spent to nothing, then refunded: nothing reaches the home, all of it is owed.
    shop.agent
        .append(&shop.db, &Draft::new("alice", "usage", "-50"))
        .await;
    let before = shop.credit_events().await.len();
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r2", "ch_2", "pi_2", 4500)).await,
        "taken_back"
    );
    assert_eq!(
        shop.credit_events().await.len(),
        before,
        "an event for nothing"
    );
    reconciled(&shop).await;
    let (_, user) = shop.api.get("/admin/v1/users/alice").await;
    assert_eq!(
        (user["balance"].as_str(), user["debt"].as_str()),
        (Some("0"), Some("500")),
        "{user}"
    );
    // A home user who owes cannot be turned into a fleet user until it is repaid.
    let (status, refused) = shop
        .api
        .put("/admin/v1/users/alice", json!({"fleet": true}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused.to_string().contains("owes 500"), "{refused}");
    // A purchase that all goes to the debt reaches no agent, and still counts as bought.
    let third = shop.checkout("Value Pack").await;
    let before = shop.credit_events().await.len();
    assert_eq!(
        outcome_of(&shop, &paid_with_intent("evt_p3", &third, "pi_3")).await,
        "granted"
    );
    assert_eq!(shop.credit_events().await.len(), before);
    reconciled(&shop).await;
    let (_, user) = shop.api.get("/admin/v1/users/alice").await;
    assert_eq!(
        (
            user["balance"].as_str(),
            user.get("debt"),
            user["lifetime_credits_purchased"].as_str()
        ),
        (Some("0"), None, Some("1500")),
        "{user}"
    );
    // Half of that refunded with nothing left: owed; an admin's grant of 400 repays the 250 and
    // sends the home 150.
    assert_eq!(
        outcome_of(&shop, &refunded("evt_r3", "ch_3", "pi_3", 2250)).await,
        "taken_back"
    );
    let (status, granted) = shop
        .api
        .post(
            "/admin/v1/users/alice/credits",
            json!({"kind": "grant", "amount": "400", "operation_id": "top-up"}),
        )
        .await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(
        (granted["amount"].as_str(), granted["debt_repaid"].as_str()),
        (Some("150"), Some("250")),
        "{granted}"
    );
    shop.agent.apply_inbox(&shop.db).await;
    reconciled(&shop).await;
    // Debt repaid, she may turn fleet (her home speaking protocol 3 or later): what her home
    // operations did before (some sent nothing) is not her pool's, and the books still agree.
    shop.db
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE agents SET protocol_version = 4 WHERE name = 'a1'",
            &[],
        )
        .await
        .unwrap();
    let (status, turned) = shop
        .api
        .put("/admin/v1/users/alice", json!({"fleet": true}))
        .await;
    assert_eq!(status, 200, "{turned}");
    reconciled(&shop).await;
}
