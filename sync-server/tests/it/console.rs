//! The browser console over HTTP (no browser): sign-in and its cookie, server-side sessions
//! (hashed, bounded, expiring, ended by revocation and sign-out), CSRF and same-site checks on
//! every form, the read role refused every change, paging and prefix search on an index, and
//! each page's forms going through the domain operations — nothing written when refused.

use tollgate_server::http::console::queries::USERS_PAGE_SQL;
use tollgate_server::http::console::session::SESSIONS_PER_TOKEN_MAX;

use crate::admin_support::{Draft, FakeAgent, add_token, books, count, scalar, set_user};
use crate::console_support::Console;
use crate::support::{TestDb, TestServer};

#[tokio::test]
async fn console_sign_in_sets_a_strict_http_only_cookie_and_stores_only_a_hash() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let token = add_token(&db, "ops", "full").await;
    let first = Console::new(&server).get("/console/users").await;
    assert_eq!(first.status, 303, "not signed in: to the sign-in page");
    assert_eq!(first.location(), Some("/console/login"));

    let mut console = Console::new(&server);
    let answer = console.sign_in(&token).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let line = answer.set_cookie("tollgate_console").unwrap();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=43200",
    ] {
        assert!(line.contains(flag), "{line}");
    }
    assert!(
        !line.contains("Secure"),
        "plain HTTP without a public https URL: {line}"
    );
    let id = console.session.clone().unwrap();
    assert!(id.starts_with("tgcs_") && id.len() > 40);
    // Only the id's SHA-256 is stored; neither the id nor the admin token appears anywhere.
    let stored: String = scalar(
        &db,
        "SELECT string_agg(s::text, '|') FROM console_sessions s",
    )
    .await;
    assert!(
        !stored.contains(&id) && !stored.contains(&token),
        "{stored}"
    );
    assert_eq!(
        count(
            &db,
            &format!(
                "console_sessions WHERE id_hash = decode('{}', 'hex')",
                hex::encode(tollgate_server::tokens::hash(&id))
            )
        )
        .await,
        1
    );
    let page = console.get("/console/users").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains(r#"<strong id="admin-name">ops</strong>"#)
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers["cache-control"], "no-store");
    let css = console.get("/console/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert!(css.body.contains(":focus-visible"));
}

#[tokio::test]
async fn console_cookie_is_secure_and_origin_pinned_behind_an_https_public_url() {
    let db = TestDb::new().await;
    let config = tollgate_server::config::ServerConfig::load(
        Some(db.url.clone()),
        Some("127.0.0.1:0".to_owned()),
        &|name| (name == "TOLLGATE_SERVER_PUBLIC_URL").then(|| "https://admin.example".to_owned()),
    )
    .unwrap();
    let server = TestServer::start(config).await;
    let token = add_token(&db, "ops", "full").await;
    let mut console = Console::new(&server);
    // The browser's Origin is the public one; the server's own address is another site.
    let refused = console.sign_in(&token).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("another site"));
    console.origin = Some("https://admin.example".to_owned());
    let answer = console.sign_in(&token).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(
        answer
            .set_cookie("tollgate_console")
            .unwrap()
            .contains("; Secure")
    );
    let form = console.get("/console/login").await;
    assert!(
        form.set_cookie("tollgate_console_sign_in")
            .unwrap()
            .contains("; Secure")
    );
}

#[tokio::test]
async fn console_refuses_a_wrong_token_and_a_forged_sign_in() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let token = add_token(&db, "ops", "full").await;
    let mut console = Console::new(&server);
    let wrong = console.sign_in("tgadm_not-a-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("unknown or revoked"), "{}", wrong.body);
    assert!(
        !wrong.body.contains("tgadm_not-a-token"),
        "the token is never echoed"
    );
    // A sign-in form posted from elsewhere has no sign-in cookie (SameSite=Strict): refused.
    let forged = console
        .post(
            "/console/login",
            &[("csrf", "tgsi_guess"), ("token", &token)],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(count(&db, "console_sessions").await, 0);
}

#[tokio::test]
async fn console_forms_without_the_csrf_token_or_from_another_site_are_refused() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let mut agent = FakeAgent::new(&db, "edge-1").await;
    set_user(&db, "alice", "edge-1").await;
    let token = add_token(&db, "ops", "full").await;
    let mut console = Console::signed_in(&server, &token).await;
    let csrf = console.csrf().await;
    let before = books(&db).await;
    let grant = |csrf: &'static str| {
        [
            ("csrf", csrf),
            ("kind", "grant"),
            ("amount", "25"),
            ("operation_id", "op-csrf"),
        ]
    };
    let missing = console
        .post("/console/users/alice/credit", &grant("")[1..])
        .await;
    assert_eq!(missing.status, 403);
    assert!(
        missing
            .body
            .contains("CSRF token is missing or does not match")
    );
    let wrong = console
        .post("/console/users/alice/credit", &grant("tgcsrf_forged"))
        .await;
    assert_eq!(wrong.status, 403);
    let other_release = console.post("/console/agents/edge-1/release", &[]).await;
    assert_eq!(other_release.status, 403);
    let logout = console.post("/console/logout", &[]).await;
    assert_eq!(logout.status, 403, "signing out is a form too");
    console.origin = Some("http://evil.example".to_owned());
    let mut fields = grant("").to_vec();
    fields[0].1 = &csrf;
    let cross = console.post("/console/users/alice/credit", &fields).await;
    assert_eq!(cross.status, 403);
    assert!(cross.body.contains("another site"));
    assert_eq!(books(&db).await, before, "nothing written");

    console.origin = None;
    let done = console.post("/console/users/alice/credit", &fields).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Applied <code>admin:op-csrf</code>"));
    agent.apply_inbox(&db).await;
    let page = console.get("/console/users/alice").await;
    assert!(
        page.body.contains(r#"<p class="big" id="balance">25</p>"#),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn console_read_role_sees_but_cannot_change_anything() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let _agent = FakeAgent::new(&db, "edge-1").await;
    set_user(&db, "alice", "edge-1").await;
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE agents SET status = 'quarantined', quarantine_reason = 'replayed seq 3' \
             WHERE name = 'edge-1'",
            &[],
        )
        .await
        .unwrap();
    let token = add_token(&db, "auditor", "read").await;
    let console = Console::signed_in(&server, &token).await;
    let csrf = console.csrf().await;
    for path in [
        "/console/users",
        "/console/users/alice",
        "/console/agents",
        "/console/catalog",
    ] {
        let page = console.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.body.contains(r#"id="role">read-only"#), "{path}");
        assert!(!page.body.contains("credit-form") && !page.body.contains("release-edge-1"));
        assert!(
            !page.body.contains("/console/catalog/packages"),
            "{path}: no edit form"
        );
    }
    let before = books(&db).await;
    let changes: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "/console/users/alice/credit",
            vec![("kind", "grant"), ("amount", "5"), ("operation_id", "op-r")],
        ),
        (
            "/console/users/alice/checkout",
            vec![("package", "Starter Pack")],
        ),
        ("/console/agents/edge-1/release", vec![]),
        (
            "/console/catalog/packages",
            vec![
                ("name", "Starter Pack"),
                ("credits", "1"),
                ("price_usd", "1.00"),
            ],
        ),
        (
            "/console/catalog/power-levels/eco",
            vec![
                ("name", "x"),
                ("cost_multiplier", "1"),
                ("max_latency_ms", "1"),
            ],
        ),
    ];
    for (path, mut fields) in changes {
        fields.push(("csrf", &csrf));
        let answer = console.post(path, &fields).await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
        assert!(answer.body.contains("read-only"), "{path}: {}", answer.body);
    }
    assert_eq!(books(&db).await, before, "nothing written");
    let out = console.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303, "a read session may sign out");
}

#[tokio::test]
async fn console_sessions_expire_end_on_revocation_and_are_bounded_per_token() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let token = add_token(&db, "ops", "full").await;
    let exec = |sql: &'static str| {
        let pool = db.pool.clone();
        async move { pool.get().await.unwrap().execute(sql, &[]).await.unwrap() }
    };
    let ended = |answer: &crate::console_support::Answer| {
        answer.status == 303 && answer.location() == Some("/console/login")
    };

    let idle = Console::signed_in(&server, &token).await;
    exec("UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes'").await;
    assert!(
        ended(&idle.get("/console/users").await),
        "idle beyond 30 minutes"
    );

    let old = Console::signed_in(&server, &token).await;
    exec(
        "UPDATE console_sessions SET created_at = now() - interval '13 hours', \
          expires_at = now() - interval '1 hour'",
    )
    .await;
    assert!(ended(&old.get("/console/users").await), "past its lifetime");
    let post = old.post("/console/logout", &[("csrf", "x")]).await;
    assert_eq!(post.status, 401, "a POST without a live session");

    let live = Console::signed_in(&server, &token).await;
    assert_eq!(live.get("/console/users").await.status, 200);
    exec("UPDATE admin_tokens SET revoked_at = now()").await;
    assert!(
        ended(&live.get("/console/users").await),
        "its token revoked"
    );
    exec("UPDATE admin_tokens SET revoked_at = NULL").await;

    // At most SESSIONS_PER_TOKEN_MAX per token: the oldest ends when another signs in.
    let first = Console::signed_in(&server, &token).await;
    let mut later = Vec::new();
    for _ in 0..SESSIONS_PER_TOKEN_MAX {
        later.push(Console::signed_in(&server, &token).await);
    }
    assert_eq!(count(&db, "console_sessions").await, SESSIONS_PER_TOKEN_MAX);
    assert!(
        ended(&first.get("/console/users").await),
        "the oldest was ended"
    );
    let last = later.last().unwrap();
    assert_eq!(last.get("/console/users").await.status, 200);

    // Signing out deletes the session and clears the cookie.
    let csrf = last.csrf().await;
    let out = last.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(
        out.set_cookie("tollgate_console")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        count(&db, "console_sessions").await,
        SESSIONS_PER_TOKEN_MAX - 1
    );
    assert!(ended(&last.get("/console/users").await));
}

#[tokio::test]
async fn console_users_page_pages_and_searches_by_prefix_on_an_index() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let conn = db.pool.get().await.unwrap();
    conn.execute(
        "INSERT INTO user_credits (user_id) SELECT 'u' || lpad(n::text, 5, '0') \
         FROM generate_series(1, 5000) n",
        &[],
    )
    .await
    .unwrap();
    for id in ["alice", "alfred", "al.x", "al-y", "bob"] {
        conn.execute("INSERT INTO user_credits (user_id) VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    conn.execute("ANALYZE user_credits", &[]).await.unwrap();
    let token = add_token(&db, "ops", "read").await;
    let console = Console::signed_in(&server, &token).await;

    // A prefix search, in byte order.
    let page = console.get("/console/users?q=al").await;
    assert_eq!(page.status, 200);
    let ids = user_ids(&page.body);
    assert_eq!(ids, ["al-y", "al.x", "alfred", "alice"]);
    // Paging through a prefix's range: every user once, in order, 50 a page.
    let mut seen = Vec::new();
    let mut path = "/console/users?q=u01".to_owned();
    loop {
        let page = console.get(&path).await;
        assert_eq!(page.status, 200);
        seen.extend(user_ids(&page.body));
        match next_page(&page.body) {
            Some(next) => path = next,
            None => break,
        }
    }
    let expected: Vec<String> = (1000..=1999).map(|n| format!("u{n:05}")).collect();
    assert_eq!(seen, expected);
    // A bad search names the field; nothing else breaks.
    let bad = console.get("/console/users?q=a%20b").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("search:"), "{}", bad.body);
    // The page's query walks the byte-order index, not the table.
    let plan: Vec<String> = conn
        .query(
            &format!("EXPLAIN {USERS_PAGE_SQL}"),
            &[&"u01", &Some("u02"), &Some("u01500"), &51i64],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("idx_user_credits_user_id_bytes"), "{plan}");
    assert!(!plan.contains("Seq Scan on user_credits"), "{plan}");
}

fn user_ids(body: &str) -> Vec<String> {
    body.split(r#"<th scope="row"><a href="/console/users/"#)
        .skip(1)
        .map(|s| {
            let text = &s[s.find('>').unwrap() + 1..];
            text[..text.find('<').unwrap()].to_owned()
        })
        .collect()
}

fn next_page(body: &str) -> Option<String> {
    let at = body.find(r#"rel="next" id="next-page""#)?;
    let start = body[..at].rfind("href=\"")? + 6;
    Some(
        body[start..at]
            .trim_end()
            .trim_end_matches('"')
            .replace("&amp;", "&"),
    )
}

#[tokio::test]
async fn console_user_page_shows_balance_holder_charts_and_journal_pages() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let mut agent = FakeAgent::new(&db, "edge-1").await;
    set_user(&db, "alice", "edge-1").await;
    agent
        .append(&db, &Draft::new("alice", "bonus", "100"))
        .await;
    for _ in 0..60 {
        agent
            .append(&db, &Draft::new("alice", "usage", "-0.5"))
            .await;
    }
    let token = add_token(&db, "ops", "read").await;
    let console = Console::signed_in(&server, &token).await;
    let page = console.get("/console/users/alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let body = &page.body;
    assert!(
        body.contains(r#"<p class="big" id="balance">70</p>"#),
        "{body}"
    );
    assert!(body.contains(r#"/console/agents#agent-edge-1">edge-1</a>: 70</li>"#));
    for chart in ["chart-days", "chart-models", "chart-levels"] {
        assert!(body.contains(&format!(r#"<svg id="{chart}""#)), "{chart}");
    }
    assert!(body.contains("<p>60 requests, 30 credits.</p>"), "{body}");
    assert!(body.contains(r#"<td>gpt-4o-mini</td><td class="num">30</td>"#));
    assert!(body.contains(r#"<td>balanced</td><td class="num">30</td>"#));
    // The journal: 50 newest, then the other 11 on the next page.
    assert_eq!(body.matches("<td>usage</td>").count(), 50);
    let at = body.find(r#"id="older-entries""#).unwrap();
    let href = &body[body[..at].rfind("href=\"").unwrap() + 6..at];
    let older = console.get(href.trim_end().trim_end_matches('"')).await;
    assert_eq!(older.status, 200);
    assert_eq!(older.body.matches("<td>usage</td>").count(), 10);
    assert_eq!(older.body.matches("<td>bonus</td>").count(), 1);
    assert!(!older.body.contains(r#"id="older-entries""#));
    let missing = console.get("/console/users/nobody").await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("no user &quot;nobody&quot;"),
        "{}",
        missing.body
    );
}

#[tokio::test]
async fn console_grant_lands_once_and_bad_input_is_named_with_nothing_written() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let mut agent = FakeAgent::new(&db, "edge-1").await;
    set_user(&db, "alice", "edge-1").await;
    let token = add_token(&db, "ops", "full").await;
    let console = Console::signed_in(&server, &token).await;
    let page = console.get("/console/users/alice").await;
    let csrf = page.csrf();
    assert!(
        page.body
            .contains(r#"id="operation_id" name="operation_id" required value="console-"#)
    );

    let before = books(&db).await;
    for (fields, status, message) in [
        (
            vec![
                ("kind", "grant"),
                ("amount", "abc"),
                ("operation_id", "op-1"),
            ],
            400,
            "amount:",
        ),
        (
            vec![("kind", "gift"), ("amount", "5"), ("operation_id", "op-1")],
            400,
            "kind:",
        ),
        (
            vec![
                ("kind", "grant"),
                ("amount", "-5"),
                ("operation_id", "op-1"),
            ],
            400,
            "amount",
        ),
        (
            vec![("kind", "grant"), ("amount", "5"), ("operation_id", "op 1")],
            400,
            "operation_id:",
        ),
    ] {
        let mut fields = fields;
        fields.push(("csrf", &csrf));
        let answer = console.post("/console/users/alice/credit", &fields).await;
        assert_eq!(answer.status, status, "{fields:?}: {}", answer.body);
        assert!(answer.body.contains(r#"role="alert" id="error""#));
        assert!(answer.body.contains(message), "{fields:?}: {}", answer.body);
    }
    // The refused form is shown again with what was typed.
    let again = console
        .post(
            "/console/users/alice/credit",
            &[
                ("csrf", &csrf),
                ("kind", "adjust"),
                ("amount", "1.2.3"),
                ("operation_id", "op-kept"),
            ],
        )
        .await;
    assert!(again.body.contains(r#"value="1.2.3""#) && again.body.contains(r#"value="op-kept""#));
    assert!(again.body.contains(r#"<option value="adjust" selected>"#));
    assert_eq!(
        books(&db).await,
        before,
        "nothing written by a refused form"
    );

    let grant = [
        ("csrf", csrf.as_str()),
        ("kind", "grant"),
        ("amount", "25"),
        ("operation_id", "op-1"),
        ("note", "welcome"),
    ];
    let done = console.post("/console/users/alice/credit", &grant).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body
            .contains("Applied <code>admin:op-1</code>: bonus of 25 credits, sent to agent edge-1")
    );
    assert!(
        done.body.contains("<code>admin:op-1</code>: 25 to edge-1"),
        "pending until applied"
    );
    let twice = console.post("/console/users/alice/credit", &grant).await;
    assert_eq!(twice.status, 200);
    assert!(twice.body.contains("nothing new was written"));
    let conflict = console
        .post(
            "/console/users/alice/credit",
            &[
                ("csrf", &csrf),
                ("kind", "grant"),
                ("amount", "26"),
                ("operation_id", "op-1"),
            ],
        )
        .await;
    assert_eq!(conflict.status, 409);
    assert!(
        conflict
            .body
            .contains("already used for a different operation")
    );
    assert_eq!(
        agent.apply_inbox(&db).await.len(),
        1,
        "one event, applied once"
    );
    let page = console.get("/console/users/alice").await;
    assert!(page.body.contains(r#"<p class="big" id="balance">25</p>"#));
    assert!(page.body.contains("<code>admin:op-1</code> welcome"));
}

#[tokio::test]
async fn console_releases_agents_and_edits_the_catalog_through_the_domain() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let _agent = FakeAgent::new(&db, "edge-1").await;
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE agents SET status = 'quarantined', quarantine_reason = 'replayed seq 3 <b>' \
             WHERE name = 'edge-1'",
            &[],
        )
        .await
        .unwrap();
    let token = add_token(&db, "ops", "full").await;
    let console = Console::signed_in(&server, &token).await;
    let agents = console.get("/console/agents").await;
    assert!(agents.body.contains("replayed seq 3 &lt;b&gt;"), "escaped");
    assert!(agents.body.contains(r#"id="release-edge-1""#));
    let csrf = agents.csrf();
    let released = console
        .post("/console/agents/edge-1/release", &[("csrf", &csrf)])
        .await;
    assert_eq!(released.status, 200, "{}", released.body);
    assert!(released.body.contains("Agent edge-1 is active again."));
    let status: String = scalar(&db, "SELECT status FROM agents WHERE name = 'edge-1'").await;
    assert_eq!(status, "active");
    let again = console
        .post("/console/agents/edge-1/release", &[("csrf", &csrf)])
        .await;
    assert_eq!(again.status, 200, "releasing an active agent is a no-op");
    let unknown = console
        .post("/console/agents/nope/release", &[("csrf", &csrf)])
        .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("no agent named"));

    let before = books(&db).await;
    let package = |price: &'static str, op: &'static str| {
        vec![
            ("name", "Starter Pack"),
            ("credits", "120"),
            ("price_usd", price),
            ("discount_percent", "0"),
            ("sort_order", "1"),
            ("is_active", "on"),
            ("operation_id", op),
        ]
    };
    let mut bad = package("ten", "console-op-a");
    bad.push(("csrf", &csrf));
    let refused = console.post("/console/catalog/packages", &bad).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("price_usd"), "{}", refused.body);
    assert!(
        refused
            .body
            .contains(r#"<details class="edit" open><summary>Edit Starter Pack"#)
    );
    assert_eq!(books(&db).await, before);
    let mut good = package("12.00", "console-op-b");
    good.push(("csrf", &csrf));
    let saved = console.post("/console/catalog/packages", &good).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(
        saved
            .body
            .contains("Package Starter Pack saved; sent to 1 agent(s).")
    );
    let credits: rust_decimal::Decimal = scalar(
        &db,
        "SELECT credits FROM credit_packages WHERE name = 'Starter Pack'",
    )
    .await;
    assert_eq!(credits.to_string(), "120.000000000");
    let level = console
        .post(
            "/console/catalog/power-levels/eco",
            &[
                ("csrf", &csrf),
                ("name", "Eco"),
                ("preferred_providers", "together, deepinfra"),
                ("fallback_strategy", "cheapest"),
                ("cost_multiplier", "0.6"),
                ("max_latency_ms", "4000"),
                ("min_quality_score", "101"),
                ("is_active", "on"),
                ("operation_id", "console-op-c"),
            ],
        )
        .await;
    assert_eq!(level.status, 400, "{}", level.body);
    assert!(level.body.contains("min_quality_score"), "{}", level.body);
}

#[tokio::test]
async fn console_read_only_reconciles_are_spaced_and_differences_listed() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let _agent = FakeAgent::new(&db, "edge-1").await;
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE agents SET status = 'quarantined', quarantine_reason = 'replayed seq 3' \
             WHERE name = 'edge-1'",
            &[],
        )
        .await
        .unwrap();
    let read = Console::signed_in(&server, &add_token(&db, "auditor", "read").await).await;
    let offer = read.get("/console/reconcile").await;
    assert_eq!(offer.status, 200);
    assert!(offer.body.contains(r#"id="run-reconcile""#) && !offer.body.contains("id=\"verdict\""));
    let first = read.get("/console/reconcile?run=1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.contains("difference(s) found"));
    assert!(first.body.contains("<code>agent_quarantined</code>"));
    let second = read.get("/console/reconcile?run=1").await;
    assert_eq!(second.status, 429);
    assert!(second.body.contains("retry in"), "{}", second.body);
    let full = Console::signed_in(&server, &add_token(&db, "ops", "full").await).await;
    for _ in 0..2 {
        assert_eq!(full.get("/console/reconcile?run=1").await.status, 200);
    }
}

#[tokio::test]
async fn console_checkout_links_come_from_stripe_and_refusals_are_named() {
    let db = TestDb::new().await;
    let _agent = FakeAgent::new(&db, "edge-1").await;
    set_user(&db, "alice", "edge-1").await;
    let token = add_token(&db, "ops", "full").await;

    let plain = TestServer::start(db.config()).await;
    let console = Console::signed_in(&plain, &token).await;
    let csrf = console.csrf().await;
    let off = console
        .post(
            "/console/users/alice/checkout",
            &[("csrf", &csrf), ("package", "Starter Pack")],
        )
        .await;
    assert_eq!(off.status, 503);
    assert!(
        off.body.contains("Stripe is not configured on this server"),
        "{}",
        off.body
    );

    let (api_base, received) = crate::stripe::mock_stripe().await;
    let mut config = db.config();
    config.stripe = Some(tollgate_server::config::StripeConfig {
        api_base,
        secret_key: zeroize::Zeroizing::new("sk_test_console".to_owned()),
        webhook_secret: zeroize::Zeroizing::new("whsec_console".to_owned()),
        success_url: "https://shop.test/ok".to_owned(),
        cancel_url: "https://shop.test/cancel".to_owned(),
    });
    let shop = TestServer::start(config).await;
    let console = Console::signed_in(&shop, &token).await;
    let csrf = console.csrf().await;
    let unknown = console
        .post(
            "/console/users/alice/checkout",
            &[("csrf", &csrf), ("package", "Gold Pack")],
        )
        .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert!(
        unknown
            .body
            .contains("package: no package is named &quot;Gold Pack&quot;")
    );
    assert!(received.lock().unwrap().is_empty(), "Stripe not called");
    let made = console
        .post(
            "/console/users/alice/checkout",
            &[("csrf", &csrf), ("package", "Value Pack")],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(
        made.body.contains(
            r#"<a href="https://checkout.stripe.test/c/pay/cs_test_1" id="checkout-link""#
        )
    );
    assert!(
        made.body
            .contains("Checkout for Value Pack (500 credits, $45.00)")
    );
    assert_eq!(
        count(&db, "checkout_sessions WHERE user_id = 'alice'").await,
        1
    );
}
