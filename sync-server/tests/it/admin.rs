//! The admin API and CLI over real HTTP and the real binary: users reach their home agent,
//! catalog changes reach every agent, credit operations are idempotent, refusals write nothing,
//! and admin tokens are created, used and revoked.

use serde_json::json;
use tollgate_schema::wire::{CreditEventKind, EventBody, PackageSpec, PowerLevelSpec};

use crate::admin_support::{
    FakeAgent, add_agent, add_token, books, c, cli, code, count, inbox, revoke_agent,
    server_and_admin,
};
use crate::support::TestDb;

#[tokio::test]
async fn setting_a_user_sends_the_settings_to_the_home_agent_only() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    add_agent(&db, "a2").await;
    let (_server, api) = server_and_admin(&db).await;
    let body = json!({
        "home_agent": "a1", "tier": "starter", "power_level": "eco",
        "monthly_allowance": "10.5", "monthly_spend_cap": "100", "operation_id": "u-1"
    });
    let (status, first) = api.put("/admin/v1/users/alice", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["created"], true);
    assert_eq!(first["replayed"], false);
    assert_eq!(first["home_agent"], "a1");
    assert_eq!(first["inbox_seq"], 1);
    let events = inbox(&db, "a1").await;
    assert_eq!(events.len(), 1);
    match &events[0].1 {
        EventBody::UserUpsert(u) => {
            assert_eq!(u.user_id, "alice");
            assert_eq!(u.tier, "starter");
            assert_eq!(u.power_level, "eco");
            assert_eq!(u.monthly_allowance, c("10.5"));
            assert_eq!(u.monthly_spend_cap, Some(c("100")));
        }
        other => panic!("{other:?}"),
    }
    assert!(inbox(&db, "a2").await.is_empty());

    // The same request again: the stored result, no second event.
    let (status, again) = api.put("/admin/v1/users/alice", body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(again["replayed"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(inbox(&db, "a1").await.len(), 1);

    // The same operation id with other content: a conflict.
    let mut changed = body.clone();
    changed["tier"] = json!("enterprise");
    let (status, err) = api.put("/admin/v1/users/alice", changed).await;
    assert_eq!((status, code(&err)), (409, "idempotency_conflict"), "{err}");

    // Without an operation id, every PUT is applied.
    let (status, _) = api
        .put(
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "tier": "professional", "power_level": "precision"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(inbox(&db, "a1").await.len(), 2);

    let (status, list) = api.get("/admin/v1/users").await;
    assert_eq!(status, 200, "{list}");
    let users = list["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["user_id"], "alice");
    assert_eq!(users[0]["home_agent"], "a1");
    assert_eq!(users[0]["balance"], "0");
    assert_eq!(users[0]["tier"], "professional");
    assert_eq!(users[0]["power_level"], "precision");
    assert_eq!(users[0]["lifetime_credits_purchased"], "0");

    let (status, one) = api.get("/admin/v1/users/alice").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["home_agent_status"], "active");
    // The PUT that named no cap kept it; "none" removes it.
    assert_eq!(one["monthly_spend_cap"], "100");
    let (status, _) = api
        .put(
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "monthly_spend_cap": "none"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, one) = api.get("/admin/v1/users/alice").await;
    assert_eq!(one["monthly_spend_cap"], serde_json::Value::Null);
    assert_eq!(one["tier"], "professional", "{one}");
    let (status, err) = api.get("/admin/v1/users/nobody").await;
    assert_eq!((status, code(&err)), (404, "not_found"));
}

#[tokio::test]
async fn users_list_pages_and_shows_balances_and_last_entries() {
    let db = TestDb::new().await;
    let mut agent = FakeAgent::new(&db, "a1").await;
    let (_server, api) = server_and_admin(&db).await;
    for user in ["u1", "u2", "u3"] {
        let (status, _) = api
            .put(
                &format!("/admin/v1/users/{user}"),
                json!({"home_agent": "a1", "tier": "starter", "power_level": "balanced"}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = api
        .post(
            "/admin/v1/users/u2/credits",
            json!({"kind": "grant", "amount": "7.25", "operation_id": "g-1"}),
        )
        .await;
    assert_eq!(status, 200);
    agent.apply_inbox(&db).await;
    let (status, page) = api.get("/admin/v1/users?limit=2").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_after"], "u2");
    assert_eq!(page["users"][1]["balance"], "7.25");
    assert!(page["users"][1]["last_entry_at"].is_string());
    let (status, page) = api.get("/admin/v1/users?limit=2&after=u2").await;
    assert_eq!(status, 200);
    assert_eq!(page["users"][0]["user_id"], "u3");
    assert!(page.get("next_after").is_none());
    let (status, one) = api.get("/admin/v1/users/u2").await;
    assert_eq!(status, 200);
    assert_eq!(one["entries"], 1);
    assert_eq!(one["pending_credit_operations"], json!([]));
}

#[tokio::test]
async fn a_home_never_moves() {
    let db = TestDb::new().await;
    let mut a1 = FakeAgent::new(&db, "a1").await;
    add_agent(&db, "a2").await;
    let (_server, api) = server_and_admin(&db).await;
    let on =
        |agent: &str| json!({"home_agent": agent, "tier": "starter", "power_level": "balanced"});
    assert_eq!(api.put("/admin/v1/users/alice", on("a1")).await.0, 200);
    a1.apply_inbox(&db).await;
    // Even with nothing known centrally (a1 may hold credit the server has not seen), the home
    // is permanent: moving is refused, nothing is written, settings on the same home still work.
    let before = books(&db).await;
    let (status, err) = api.put("/admin/v1/users/alice", on("a2")).await;
    assert_eq!((status, code(&err)), (409, "conflict"), "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not supported in home-agent mode"),
        "{err}"
    );
    assert_eq!(books(&db).await, before);
    assert!(inbox(&db, "a2").await.is_empty());
    let (status, same) = api
        .put(
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "tier": "starter", "power_level": "eco"}),
        )
        .await;
    assert_eq!(status, 200, "{same}");
}

#[tokio::test]
async fn catalog_changes_reach_every_agent_that_is_not_revoked() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    add_agent(&db, "a2").await;
    add_agent(&db, "gone").await;
    revoke_agent(&db, "gone").await;
    let (_server, api) = server_and_admin(&db).await;
    let package = json!({
        "credits": "250", "price_usd": "22.50", "discount_percent": 5, "min_tier": "starter",
        "is_featured": true, "sort_order": 5, "description": "A mid pack", "badge_text": "NEW",
        "operation_id": "pkg-1"
    });
    let (status, body) = api
        .put("/admin/v1/packages/Mid%20Pack", package.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sent_to"].as_array().unwrap().len(), 2);
    let expected = PackageSpec {
        name: "Mid Pack".to_owned(),
        credits: c("250"),
        price_usd_cents: 2250,
        discount_percent: 5,
        min_tier: Some("starter".to_owned()),
        is_active: true,
        is_featured: true,
        sort_order: 5,
        description: Some("A mid pack".to_owned()),
        badge_text: Some("NEW".to_owned()),
    };
    for agent in ["a1", "a2"] {
        let events = inbox(&db, agent).await;
        assert_eq!(events.len(), 1, "{agent}");
        assert_eq!(events[0].1, EventBody::PackageUpsert(expected.clone()));
    }
    assert!(inbox(&db, "gone").await.is_empty());
    // Replayed: nothing new.
    let (status, again) = api.put("/admin/v1/packages/Mid%20Pack", package).await;
    assert_eq!((status, again["replayed"].clone()), (200, json!(true)));
    assert_eq!(inbox(&db, "a1").await.len(), 1);
    let (status, list) = api.get("/admin/v1/packages").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Starter Pack",
            "Value Pack",
            "Pro Pack",
            "Enterprise Pack",
            "Mid Pack"
        ]
    );
    assert_eq!(list["packages"][4]["price_usd"], "22.50");

    let level = json!({
        "name": "Eco Mode", "description": "cheap", "preferred_providers": ["together", "deepinfra"],
        "fallback_strategy": "cheapest", "cost_multiplier": "0.650", "max_latency_ms": 6000,
        "min_quality_score": 60
    });
    let (status, body) = api.put("/admin/v1/power-levels/eco", level).await;
    assert_eq!(status, 200, "{body}");
    let expected = PowerLevelSpec {
        power_level: "eco".to_owned(),
        name: "Eco Mode".to_owned(),
        description: Some("cheap".to_owned()),
        preferred_providers: vec!["together".to_owned(), "deepinfra".to_owned()],
        fallback_strategy: "cheapest".to_owned(),
        cost_multiplier: "0.65".to_owned(),
        max_latency_ms: 6000,
        min_quality_score: 60,
        is_active: true,
    };
    for agent in ["a1", "a2"] {
        let events = inbox(&db, agent).await;
        assert_eq!(events.len(), 2, "{agent}");
        assert_eq!(events[1].1, EventBody::PowerLevelUpsert(expected.clone()));
    }
    let (status, list) = api.get("/admin/v1/power-levels").await;
    assert_eq!(status, 200);
    assert_eq!(list["power_levels"][0]["cost_multiplier"], "0.65");
    assert_eq!(list["power_levels"][1]["cost_multiplier"], "1");
    assert_eq!(list["power_levels"][2]["power_level"], "precision");
}

#[tokio::test]
async fn a_credit_operation_is_applied_once_per_operation_id() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    let (server, api) = server_and_admin(&db).await;
    assert_eq!(
        api.put(
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "tier": "starter", "power_level": "balanced"})
        )
        .await
        .0,
        200
    );
    let body = json!({"kind": "grant", "amount": "12.5", "operation_id": "op-1", "note": "hi"});
    let (status, first) = api
        .post("/admin/v1/users/alice/credits", body.clone())
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["operation_key"], "admin:op-1");
    assert_eq!(first["kind"], "bonus");
    assert_eq!(first["amount"], "12.5");
    assert_eq!(first["replayed"], false);
    let (status, again) = api
        .post("/admin/v1/users/alice/credits", body.clone())
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["replayed"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    let credit_events = |events: Vec<(String, EventBody)>| {
        events
            .into_iter()
            .filter(|(k, _)| k == "credit")
            .collect::<Vec<_>>()
    };
    assert_eq!(credit_events(inbox(&db, "a1").await).len(), 1);
    // Concurrent retries of the same operation: still one event.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            api.post("/admin/v1/users/alice/credits", body).await
        }));
    }
    for t in tasks {
        let (status, b) = t.await.unwrap();
        assert_eq!((status, b["replayed"].clone()), (200, json!(true)));
    }
    let before = books(&db).await;
    let mut other = body.clone();
    other["amount"] = json!("13");
    let (status, err) = api.post("/admin/v1/users/alice/credits", other).await;
    assert_eq!((status, code(&err)), (409, "idempotency_conflict"), "{err}");
    assert_eq!(books(&db).await, before);
    let events = credit_events(inbox(&db, "a1").await);
    assert_eq!(events.len(), 1);
    match &events[0].1 {
        EventBody::Credit(e) => {
            assert_eq!(e.kind, CreditEventKind::Bonus);
            assert_eq!(e.note.as_deref(), Some("hi"));
            assert_eq!(e.admin_user_id.as_deref(), Some("root"));
        }
        other => panic!("{other:?}"),
    }
    // Adjust may be negative; refund is a refund.
    let (status, adj) = api
        .post(
            "/admin/v1/users/alice/credits",
            json!({"kind": "adjust", "amount": "-2.000000001", "operation_id": "op-2"}),
        )
        .await;
    assert_eq!(status, 200, "{adj}");
    assert_eq!(adj["kind"], "admin_adjustment");
    assert_eq!(adj["amount"], "-2.000000001");
    let (status, refund) = api
        .post(
            "/admin/v1/users/alice/credits",
            json!({"kind": "refund", "amount": "1", "operation_id": "op-3"}),
        )
        .await;
    assert_eq!((status, refund["kind"].clone()), (200, json!("refund")));
    let metrics = server.state.metrics.render();
    assert!(
        metrics.contains("tollgate_server_inbox_events_written_total 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn refused_credit_requests_write_nothing() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    let (server, api) = server_and_admin(&db).await;
    assert_eq!(
        api.put(
            "/admin/v1/users/alice",
            json!({"home_agent": "a1", "tier": "starter", "power_level": "balanced"})
        )
        .await
        .0,
        200
    );
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO user_credits (user_id) VALUES ('homeless')",
            &[],
        )
        .await
        .unwrap();
    let reader = api.with_token(Some(&add_token(&db, "viewer", "read").await));
    let _ = server;
    let before = books(&db).await;
    let ok = json!({"kind": "grant", "amount": "1", "operation_id": "r-1"});
    let cases: Vec<(
        &str,
        &crate::admin_support::Api,
        serde_json::Value,
        u16,
        &str,
        &str,
    )> = vec![
        (
            "read token",
            &reader,
            ok.clone(),
            403,
            "forbidden",
            "read-only",
        ),
        (
            "unknown user",
            &api,
            ok.clone(),
            404,
            "not_found",
            "no user \"nobody\"",
        ),
        (
            "user without home",
            &api,
            ok.clone(),
            409,
            "conflict",
            "no home agent",
        ),
        (
            "zero",
            &api,
            json!({"kind": "grant", "amount": "0", "operation_id": "r-2"}),
            400,
            "bad_request",
            "amount: must not be zero",
        ),
        (
            "ten decimals",
            &api,
            json!({"kind": "grant", "amount": "1.0000000001", "operation_id": "r-3"}),
            400,
            "bad_request",
            "amount: amount \"1.0000000001\" has more than 9 decimal places",
        ),
        (
            "negative grant",
            &api,
            json!({"kind": "grant", "amount": "-1", "operation_id": "r-4"}),
            400,
            "bad_request",
            "amount: a grant must be positive",
        ),
        (
            "unknown kind",
            &api,
            json!({"kind": "gift", "amount": "1", "operation_id": "r-5"}),
            400,
            "bad_request",
            "kind: \"gift\" is not one of grant, refund, adjust",
        ),
        (
            "float amount",
            &api,
            json!({"kind": "grant", "amount": 1.5, "operation_id": "r-6"}),
            400,
            "bad_request",
            "invalid JSON body at amount: invalid type",
        ),
        (
            "exponent",
            &api,
            json!({"kind": "grant", "amount": "1e3", "operation_id": "r-7"}),
            400,
            "bad_request",
            "amount: ",
        ),
    ];
    for (name, client, body, status, error, needle) in cases {
        let user = match name {
            "unknown user" => "nobody",
            "user without home" => "homeless",
            _ => "alice",
        };
        let (got, err) = client
            .post(&format!("/admin/v1/users/{user}/credits"), body)
            .await;
        assert_eq!((got, code(&err)), (status, error), "{name}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{name}: {message}");
        assert_eq!(books(&db).await, before, "{name} wrote something");
    }
}

#[tokio::test]
async fn admin_tokens_are_created_listed_and_revoked_by_the_cli() {
    let db = TestDb::new().await;
    let (code_, out, err) = cli(&db, &["admin-tokens", "create", "ops", "--role", "full"]).await;
    assert_eq!(code_, 0, "{out}{err}");
    let token = out
        .lines()
        .find(|l| l.starts_with("tgadm_"))
        .unwrap()
        .to_owned();
    // Only the hash is stored.
    let stored: Vec<u8> = crate::admin_support::scalar(
        &db,
        "SELECT token_hash FROM admin_tokens WHERE name = 'ops'",
    )
    .await;
    assert_eq!(stored, tollgate_server::tokens::hash(&token));
    let (code_, out, _) = cli(&db, &["--json", "admin-tokens", "create", "viewer"]).await;
    assert_eq!(code_, 0);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["role"], "read");
    // Duplicate names and unknown roles are refused.
    let (code_, _, err) = cli(&db, &["admin-tokens", "create", "ops"]).await;
    assert_eq!(code_, 2);
    assert!(err.contains("already exists"), "{err}");
    let (code_, _, err) = cli(&db, &["admin-tokens", "create", "x", "--role", "admin"]).await;
    assert_eq!(code_, 2);
    assert!(err.contains("not read or full"), "{err}");

    let server = crate::support::TestServer::start(db.config()).await;
    let api = crate::admin_support::Api::new(&server, &token);
    assert_eq!(api.get("/admin/v1/users").await.0, 200);

    let (code_, out, _) = cli(&db, &["--json", "admin-tokens", "list"]).await;
    assert_eq!(code_, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list[0]["last_used_at"].is_string(), "{list}");
    assert!(!out.contains(&token));

    let (code_, out, _) = cli(&db, &["admin-tokens", "revoke", "ops"]).await;
    assert_eq!(code_, 0, "{out}");
    let (status, err) = api.get("/admin/v1/users").await;
    assert_eq!((status, code(&err)), (401, "unauthorized"));
    let (code_, _, err) = cli(&db, &["admin-tokens", "revoke", "nobody"]).await;
    assert_eq!(code_, 2);
    assert!(err.contains("no admin token"), "{err}");
}

#[tokio::test]
async fn the_cli_manages_users_credits_and_the_catalog() {
    let db = TestDb::new().await;
    add_agent(&db, "a1").await;
    let (code_, out, err) = cli(
        &db,
        &[
            "users",
            "set",
            "alice",
            "--home",
            "a1",
            "--tier",
            "starter",
            "--monthly-allowance",
            "20",
        ],
    )
    .await;
    assert_eq!(code_, 0, "{out}{err}");
    assert!(out.contains("created on agent a1"), "{out}");
    let (code_, out, err) = cli(
        &db,
        &[
            "credits",
            "grant",
            "alice",
            "3.5",
            "--operation-id",
            "cli-1",
            "--note",
            "promo",
        ],
    )
    .await;
    assert_eq!(code_, 0, "{out}{err}");
    assert!(
        out.contains("bonus 3.5 for alice sent to agent a1"),
        "{out}"
    );
    let (code_, out, _) = cli(
        &db,
        &[
            "credits",
            "grant",
            "alice",
            "3.50",
            "--operation-id",
            "cli-1",
            "--note",
            "promo",
        ],
    )
    .await;
    assert_eq!(code_, 0);
    assert!(out.contains("already applied"), "{out}");
    let (code_, _, err) = cli(
        &db,
        &["credits", "grant", "alice", "4", "--operation-id", "cli-1"],
    )
    .await;
    assert_eq!(code_, 2);
    assert!(
        err.contains("already used for a different operation"),
        "{err}"
    );
    let (code_, out, _) = cli(
        &db,
        &[
            "credits",
            "adjust",
            "alice",
            "--operation-id",
            "cli-2",
            "--",
            "-1",
        ],
    )
    .await;
    assert_eq!(code_, 0, "{out}");
    let (code_, _, err) = cli(
        &db,
        &[
            "credits",
            "refund",
            "alice",
            "0.0000000001",
            "--operation-id",
            "cli-3",
        ],
    )
    .await;
    assert_eq!(code_, 2);
    assert!(err.contains("more than 9 decimal places"), "{err}");
    assert_eq!(
        count(&db, "agent_inbox WHERE kind = 'credit'").await,
        2,
        "grant + adjust"
    );

    let (code_, out, _) = cli(&db, &["--json", "users", "list"]).await;
    assert_eq!(code_, 0);
    let users: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users[0]["user_id"], "alice");
    assert_eq!(users[0]["tier"], "starter");
    let (code_, out, _) = cli(&db, &["users", "list"]).await;
    assert_eq!(code_, 0);
    assert!(out.starts_with("USER"), "{out}");
    let (code_, out, _) = cli(&db, &["packages", "list"]).await;
    assert_eq!(code_, 0);
    assert!(out.contains("Value Pack") && out.contains("45.00"), "{out}");
    let (code_, out, _) = cli(&db, &["--json", "power-levels", "list"]).await;
    assert_eq!(code_, 0);
    let levels: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(levels[0]["cost_multiplier"], "0.7");
}
