//! Bad input at every admin endpoint and the Stripe webhook, table-driven: malformed JSON, wrong
//! types, unknown fields, oversized bodies, missing / garbage / revoked tokens, the read role on
//! writes, bad values. Each answers the right 4xx with the wire's error code, and nothing is
//! written (every table the admin side touches is fingerprinted before and after each case).

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_server::config::StripeConfig;
use tollgate_server::stripe::signature::header_for;
use zeroize::Zeroizing;

use crate::admin_support::{Api, add_agent, add_token, books, code, set_user};
use crate::support::{TestDb, TestServer};

const WEBHOOK_SECRET: &str = "whsec_bad_input";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    None,
    Garbage,
    NotBearer,
    Revoked,
    Read,
    Full,
}

#[derive(Debug)]
struct Case {
    name: String,
    method: Method,
    path: &'static str,
    token: Tok,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(
    name: impl Into<String>,
    method: Method,
    path: &'static str,
    token: Tok,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name: name.into(),
        method,
        path,
        token,
        content_type: Some("application/json"),
        body,
        status,
        code,
    }
}

fn j(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// A write endpoint: method, path, a valid body, and named bodies wrong in its own way.
type Write = (Method, &'static str, Value, Vec<(&'static str, Value)>);

/// A webhook delivery: name, body, signature header, expected status and code.
type Delivery = (&'static str, Vec<u8>, Option<String>, u16, &'static str);

/// The write endpoints, each with a valid body and bodies that are wrong in its own way.
fn writes() -> Vec<Write> {
    vec![
        (
            Method::PUT,
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "tier": "starter", "power_level": "balanced"}),
            vec![
                (
                    "tier as a number",
                    json!({"home_agent": "a1", "tier": 5, "power_level": "eco"}),
                ),
                (
                    "unknown tier",
                    json!({"home_agent": "a1", "tier": "gold", "power_level": "eco"}),
                ),
                (
                    "unknown level",
                    json!({"home_agent": "a1", "tier": "trial", "power_level": "max"}),
                ),
                (
                    "unknown agent",
                    json!({"home_agent": "zz", "tier": "trial", "power_level": "eco"}),
                ),
                (
                    "empty home",
                    json!({"home_agent": "", "tier": "trial", "power_level": "eco"}),
                ),
                (
                    "allowance as a float",
                    json!({"home_agent": "a1", "tier": "trial", "power_level": "eco",
                           "monthly_allowance": 1.5}),
                ),
                (
                    "negative cap",
                    json!({"home_agent": "a1", "tier": "trial", "power_level": "eco",
                           "monthly_spend_cap": "-1"}),
                ),
                (
                    "operation id with a space",
                    json!({"home_agent": "a1", "tier": "trial", "power_level": "eco",
                           "operation_id": "a b"}),
                ),
                (
                    "a home and fleet at once",
                    json!({"home_agent": "a1", "fleet": true}),
                ),
                ("fleet as a string", json!({"fleet": "yes"})),
                ("overdraft as a number", json!({"overdraft": 5})),
                ("an overdraft of zero", json!({"overdraft": "0"})),
                ("a negative overdraft", json!({"overdraft": "-1"})),
                (
                    "an overdraft for a home user",
                    json!({"home_agent": "a1", "overdraft": "5"}),
                ),
            ],
        ),
        (
            Method::POST,
            "/admin/v1/users/alice/credits",
            json!({"kind": "grant", "amount": "1", "operation_id": "op"}),
            vec![
                (
                    "amount as a number",
                    json!({"kind": "grant", "amount": 1, "operation_id": "op"}),
                ),
                (
                    "ten decimals",
                    json!({"kind": "grant", "amount": "0.0000000001", "operation_id": "op"}),
                ),
                (
                    "zero",
                    json!({"kind": "adjust", "amount": "0", "operation_id": "op"}),
                ),
                ("no operation id", json!({"kind": "grant", "amount": "1"})),
                (
                    "empty operation id",
                    json!({"kind": "grant", "amount": "1", "operation_id": ""}),
                ),
                (
                    "kind null",
                    json!({"kind": null, "amount": "1", "operation_id": "op"}),
                ),
                (
                    "note too long",
                    json!({"kind": "grant", "amount": "1", "operation_id": "op",
                           "note": "x".repeat(1001)}),
                ),
                (
                    "amount out of range",
                    json!({"kind": "grant", "amount": "99999999999", "operation_id": "op"}),
                ),
            ],
        ),
        (
            Method::PUT,
            "/admin/v1/packages/Mid",
            json!({"credits": "10", "price_usd": "1.00"}),
            vec![
                (
                    "price with 3 decimals",
                    json!({"credits": "10", "price_usd": "1.001"}),
                ),
                ("zero credits", json!({"credits": "0", "price_usd": "1"})),
                (
                    "discount 101",
                    json!({"credits": "10", "price_usd": "1", "discount_percent": 101}),
                ),
                (
                    "unknown min tier",
                    json!({"credits": "10", "price_usd": "1", "min_tier": "vip"}),
                ),
                (
                    "price as a number",
                    json!({"credits": "10", "price_usd": 1}),
                ),
                (
                    "sort order too big",
                    json!({"credits": "10", "price_usd": "1", "sort_order": 1_i64 << 40}),
                ),
                (
                    "badge with a newline",
                    json!({"credits": "10", "price_usd": "1", "badge_text": "a\nb"}),
                ),
            ],
        ),
        (
            Method::PUT,
            "/admin/v1/power-levels/eco",
            json!({"name": "Eco", "preferred_providers": ["together"], "cost_multiplier": "0.7",
                   "max_latency_ms": 5000, "min_quality_score": 70}),
            vec![
                (
                    "multiplier with 4 decimals",
                    json!({"name": "Eco", "preferred_providers": ["x"], "cost_multiplier": "0.7001",
                           "max_latency_ms": 1, "min_quality_score": 1}),
                ),
                (
                    "no providers",
                    json!({"name": "Eco", "preferred_providers": [], "cost_multiplier": "1",
                           "max_latency_ms": 1, "min_quality_score": 1}),
                ),
                (
                    "unknown fallback",
                    json!({"name": "Eco", "preferred_providers": ["x"], "cost_multiplier": "1",
                           "fallback_strategy": "random", "max_latency_ms": 1, "min_quality_score": 1}),
                ),
                (
                    "quality 101",
                    json!({"name": "Eco", "preferred_providers": ["x"], "cost_multiplier": "1",
                           "max_latency_ms": 1, "min_quality_score": 101}),
                ),
                (
                    "latency 0",
                    json!({"name": "Eco", "preferred_providers": ["x"], "cost_multiplier": "1",
                           "max_latency_ms": 0, "min_quality_score": 1}),
                ),
                (
                    "multiplier as a float",
                    json!({"name": "Eco", "preferred_providers": ["x"], "cost_multiplier": 0.7,
                           "max_latency_ms": 1, "min_quality_score": 1}),
                ),
            ],
        ),
        (
            Method::POST,
            "/admin/v1/checkout",
            json!({"user_id": "alice", "package": "Value Pack"}),
            vec![
                (
                    "user id as a number",
                    json!({"user_id": 7, "package": "Value Pack"}),
                ),
                (
                    "bad user id",
                    json!({"user_id": "a b", "package": "Value Pack"}),
                ),
                (
                    "unknown package",
                    json!({"user_id": "alice", "package": "Nope"}),
                ),
            ],
        ),
    ]
}

fn table() -> Vec<Case> {
    let mut cases = Vec::new();
    for (method, path, valid, bad) in writes() {
        for (token, status, code) in [
            (Tok::None, 401, "unauthorized"),
            (Tok::Garbage, 401, "unauthorized"),
            (Tok::NotBearer, 401, "unauthorized"),
            (Tok::Revoked, 401, "unauthorized"),
            (Tok::Read, 403, "forbidden"),
        ] {
            cases.push(case(
                format!("{path}: token {token:?}"),
                method.clone(),
                path,
                token,
                j(valid.clone()),
                status,
                code,
            ));
        }
        // The read role is refused before the body is even read.
        cases.push(case(
            format!("{path}: read token, malformed body"),
            method.clone(),
            path,
            Tok::Read,
            b"{".to_vec(),
            403,
            "forbidden",
        ));
        let mut unknown = valid.clone();
        unknown["extra"] = json!(true);
        let mut wrong_type = valid.clone();
        let first = valid.as_object().unwrap().keys().next().unwrap().clone();
        wrong_type[first] = json!(["an", "array"]);
        for (name, body, status, code) in [
            ("malformed JSON", b"{\"a\":".to_vec(), 400, "bad_request"),
            (
                "trailing garbage",
                [j(valid.clone()), b"x".to_vec()].concat(),
                400,
                "bad_request",
            ),
            ("not an object", b"[1,2]".to_vec(), 400, "bad_request"),
            ("empty body", Vec::new(), 400, "bad_request"),
            ("unknown field", j(unknown), 400, "bad_request"),
            ("wrong type", j(wrong_type), 400, "bad_request"),
            (
                "oversized body",
                vec![b' '; 64 * 1024 + 1],
                413,
                "too_large",
            ),
        ] {
            cases.push(case(
                format!("{path}: {name}"),
                method.clone(),
                path,
                Tok::Full,
                body,
                status,
                code,
            ));
        }
        let mut plain = case(
            format!("{path}: text/plain"),
            method.clone(),
            path,
            Tok::Full,
            j(valid.clone()),
            400,
            "bad_request",
        );
        plain.content_type = Some("text/plain");
        cases.push(plain);
        for (name, body) in bad {
            cases.push(case(
                format!("{path}: {name}"),
                method.clone(),
                path,
                Tok::Full,
                j(body),
                400,
                "bad_request",
            ));
        }
    }
    for path in [
        "/admin/v1/users",
        "/admin/v1/users/alice",
        "/admin/v1/packages",
        "/admin/v1/power-levels",
        "/admin/v1/reconcile",
    ] {
        for token in [Tok::None, Tok::Garbage, Tok::NotBearer, Tok::Revoked] {
            let mut c = case(
                format!("GET {path}: token {token:?}"),
                Method::GET,
                path,
                token,
                Vec::new(),
                401,
                "unauthorized",
            );
            c.content_type = None;
            cases.push(c);
        }
    }
    for path in [
        "/admin/v1/users?limit=0",
        "/admin/v1/users?limit=1001",
        "/admin/v1/users?limit=abc",
        "/admin/v1/users?page=2",
        "/admin/v1/users/a%20b",
    ] {
        let mut c = case(
            format!("GET {path}"),
            Method::GET,
            path,
            Tok::Read,
            Vec::new(),
            400,
            "bad_request",
        );
        c.content_type = None;
        cases.push(c);
    }
    // Unknown paths under the admin API.
    let mut c = case(
        "unknown admin path",
        Method::GET,
        "/admin/v1/nothing",
        Tok::Full,
        Vec::new(),
        404,
        "not_found",
    );
    c.content_type = None;
    cases.push(c);
    cases
}

#[tokio::test]
async fn every_admin_endpoint_refuses_bad_input_and_writes_nothing() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    set_user(&db, "alice", "a1").await;
    let full = add_token(&db, "root", "full").await;
    let read = add_token(&db, "viewer", "read").await;
    let revoked = add_token(&db, "old", "full").await;
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE admin_tokens SET revoked_at = now() WHERE name = 'old'",
            &[],
        )
        .await
        .unwrap();
    let mut config = db.config();
    config.stripe = Some(StripeConfig {
        // Nothing listens there: no case may reach Stripe.
        api_base: "http://127.0.0.1:9".to_owned(),
        secret_key: Zeroizing::new("sk_test_x".to_owned()),
        webhook_secret: Zeroizing::new(WEBHOOK_SECRET.to_owned()),
        success_url: "https://shop.test/ok".to_owned(),
        cancel_url: "https://shop.test/cancel".to_owned(),
    });
    let server = TestServer::start(config).await;
    let api = Api::new(&server, &full);
    let before = books(&db).await;
    let cases = table();
    assert!(cases.len() > 100, "{}", cases.len());
    for case in cases {
        let client = match case.token {
            Tok::None => api.with_token(None),
            Tok::Garbage => api.with_token(Some("tgadm_not-a-real-token")),
            Tok::NotBearer => api.with_token(None),
            Tok::Revoked => api.with_token(Some(&revoked)),
            Tok::Read => api.with_token(Some(&read)),
            Tok::Full => api.clone(),
        };
        let (status, body) = if case.token == Tok::NotBearer {
            let mut req = client
                .client
                .request(case.method.clone(), server.url(case.path))
                .header("authorization", format!("Basic {full}"))
                .body(case.body.clone());
            if let Some(ct) = case.content_type {
                req = req.header("content-type", ct);
            }
            let response = req.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        } else {
            client
                .raw(
                    case.method.clone(),
                    case.path,
                    case.content_type,
                    case.body.clone(),
                )
                .await
        };
        assert_eq!(
            (status, code(&body)),
            (case.status, case.code),
            "{}: {body}",
            case.name
        );
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{}: no message",
            case.name
        );
        assert_eq!(books(&db).await, before, "{} wrote something", case.name);
    }
}

#[tokio::test]
async fn bad_values_name_the_field() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    set_user(&db, "alice", "a1").await;
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server, &add_token(&db, "root", "full").await);
    for (path, body, field) in [
        (
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "tier": "gold", "power_level": "eco"}),
            "tier: ",
        ),
        (
            "/admin/v1/users/alice",
            json!({"home_agent": "nope", "tier": "trial", "power_level": "eco"}),
            "home_agent: ",
        ),
        (
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "tier": "trial", "power_level": "eco",
                   "monthly_spend_cap": "1.0000000001"}),
            "monthly_spend_cap: ",
        ),
        (
            "/admin/v1/users/alice",
            json!({"overdraft": "-2"}),
            "overdraft: ",
        ),
        (
            "/admin/v1/users/alice",
            json!({"overdraft": "5"}),
            "overdraft: ",
        ),
        (
            "/admin/v1/packages/P",
            json!({"credits": "10", "price_usd": "1.001"}),
            "price_usd: ",
        ),
        (
            "/admin/v1/packages/P",
            json!({"credits": "10", "price_usd": "1", "discount_percent": -1}),
            "discount_percent: ",
        ),
        (
            "/admin/v1/power-levels/turbo",
            json!({"name": "T", "preferred_providers": ["x"], "cost_multiplier": "1",
                   "max_latency_ms": 1, "min_quality_score": 1}),
            "power_level: ",
        ),
        (
            "/admin/v1/power-levels/eco",
            json!({"name": "T", "preferred_providers": ["x"], "cost_multiplier": "0",
                   "max_latency_ms": 1, "min_quality_score": 1}),
            "cost_multiplier: ",
        ),
    ] {
        let (status, err) = api.put(path, body).await;
        assert_eq!((status, code(&err)), (400, "bad_request"), "{path}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{path}: {message}");
    }
    let (status, err) = api
        .post(
            "/admin/v1/users/alice/credits",
            json!({"kind": "grant", "amount": "x", "operation_id": "o"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("amount: "),
        "{err}"
    );
}

#[tokio::test]
async fn the_webhook_refuses_bad_input_and_stores_nothing() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.stripe = Some(StripeConfig {
        api_base: "http://127.0.0.1:9".to_owned(),
        secret_key: Zeroizing::new("sk_test_x".to_owned()),
        webhook_secret: Zeroizing::new(WEBHOOK_SECRET.to_owned()),
        success_url: "https://shop.test/ok".to_owned(),
        cancel_url: "https://shop.test/cancel".to_owned(),
    });
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sign = |body: &[u8]| Some(header_for(body, WEBHOOK_SECRET.as_bytes(), now));
    let event = br#"{"id":"evt_1","type":"checkout.session.completed","data":{"object":{"id":"cs_1","payment_status":"paid"}}}"#;
    let big = vec![b' '; 256 * 1024 + 1];
    let before = books(&db).await;
    let cases: Vec<Delivery> = vec![
        ("no signature", event.to_vec(), None, 400, "bad_request"),
        (
            "empty signature",
            event.to_vec(),
            Some(String::new()),
            400,
            "bad_request",
        ),
        (
            "garbage signature",
            event.to_vec(),
            Some("nonsense".to_owned()),
            400,
            "bad_request",
        ),
        (
            "signature too long",
            event.to_vec(),
            Some(format!("t={now},v1={}", "0".repeat(5000))),
            400,
            "bad_request",
        ),
        (
            "too many signatures",
            event.to_vec(),
            Some(format!("t={now}{}", ",v1=00".repeat(9))),
            400,
            "bad_request",
        ),
        ("oversized", big.clone(), sign(&big), 413, "too_large"),
        (
            "signed, not JSON",
            b"not json".to_vec(),
            sign(b"not json"),
            400,
            "bad_request",
        ),
        (
            "signed, no id",
            br#"{"type":"x"}"#.to_vec(),
            sign(br#"{"type":"x"}"#),
            400,
            "bad_request",
        ),
        (
            "signed, id too long",
            j(json!({"id": "e".repeat(256), "type": "x"})),
            sign(&j(json!({"id": "e".repeat(256), "type": "x"}))),
            400,
            "bad_request",
        ),
    ];
    for (name, body, signature, status, error) in cases {
        let mut req = client
            .post(server.url("/stripe/webhook"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(sig) = signature {
            req = req.header("Stripe-Signature", sig);
        }
        let response = req.send().await.unwrap();
        let got = response.status().as_u16();
        let err: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!((got, code(&err)), (status, error), "{name}: {err}");
        assert_eq!(books(&db).await, before, "{name} stored something");
    }
}
