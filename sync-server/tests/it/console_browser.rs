//! The console in headless Chromium, used as an admin would: sign in from the keyboard, find a
//! user, read their balance and charts, make a grant with an operation id and see it land,
//! release a quarantined agent, run a reconcile; then a forged form without the CSRF token, and
//! a read-only admin who is shown no way to change anything and is refused when trying.
//! Screenshots of the main pages are saved under `target/console-screenshots/` (not committed).

use std::time::Instant;

use serde_json::json;

use crate::admin_support::{Draft, FakeAgent, add_token, count, scalar, set_user};
use crate::support::{TestDb, TestServer};
use crate::webdriver::{Browser, target_dir};

const ENTER: &str = "\u{E007}";
const TAB: &str = "\u{E004}";

/// Submits, from inside the page, a form the page did not make (as a forged request would):
/// `fields` as hidden inputs posted to `action`.
const FORGE: &str = "const [action, fields] = arguments; const f = document.createElement('form'); \
     f.method = 'post'; f.action = action; \
     for (const [k, v] of Object.entries(fields)) { const i = document.createElement('input'); \
       i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); } \
     document.body.appendChild(f); f.submit();";

#[tokio::test]
async fn console_in_a_browser_as_an_admin_would_use_it() {
    let started = Instant::now();
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let mut edge = FakeAgent::new(&db, "edge-1").await;
    let _other = FakeAgent::new(&db, "edge-2").await;
    set_user(&db, "alice", "edge-1").await;
    set_user(&db, "bob", "edge-1").await;
    edge.append(&db, &Draft::new("alice", "bonus", "100")).await;
    for _ in 0..12 {
        edge.append(&db, &Draft::new("alice", "usage", "-2.5"))
            .await;
    }
    let quarantine = |name: &'static str| {
        let pool = db.pool.clone();
        async move {
            pool.get()
                .await
                .unwrap()
                .execute(
                    "UPDATE agents SET status = 'quarantined', \
                     quarantine_reason = 'replayed seq 7 with a different hash' WHERE name = $1",
                    &[&name],
                )
                .await
                .unwrap();
        }
    };
    quarantine("edge-2").await;
    let full = add_token(&db, "ops", "full").await;
    let read = add_token(&db, "auditor", "read").await;
    let shots = target_dir().join("console-screenshots");
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path()).await;
    let url = |path: &str| server.url(path);

    // Sign in from the keyboard: the token field has the focus; Enter submits.
    browser.goto(&url("/console/users")).await;
    assert!(browser.current_url().await.ends_with("/console/login"));
    browser.screenshot(&shots.join("sign-in.png")).await;
    let focused = browser.focused().await;
    browser.type_into(&focused, &format!("{full}{ENTER}")).await;
    browser.wait_text("h1", "Users").await;
    browser.wait_text("#role", "full access").await;
    // The first Tab reaches the skip link.
    browser.press(TAB).await;
    let skip = browser.focused().await;
    assert_eq!(browser.text(&skip).await, "Skip to content");

    // Find a user by id prefix and open them.
    let search = browser.find("#q").await;
    browser.type_into(&search, &format!("al{ENTER}")).await;
    // The unfiltered page lists alice too: wait for the search's page first.
    browser.wait_url("q=al").await;
    browser.wait_text("#users", "alice").await;
    assert!(
        !browser
            .text(&browser.find("#users").await)
            .await
            .contains("bob")
    );
    browser.screenshot(&shots.join("users.png")).await;
    browser
        .click(&browser.find(r#"a[href="/console/users/alice"]"#).await)
        .await;
    assert_eq!(browser.wait_text("#balance", "70").await, "70");
    browser.wait_text("#held-by", "edge-1: 70").await;
    assert_eq!(browser.all("#chart-days rect.bar").await.len(), 30);
    assert_eq!(browser.all("#chart-models rect.bar").await.len(), 1);
    assert_eq!(browser.all("#chart-levels rect.bar").await.len(), 1);
    browser.wait_text("#usage", "12 requests, 30 credits").await;
    browser.screenshot(&shots.join("user.png")).await;

    // Bad input is named on the page; nothing is written.
    browser
        .type_into(&browser.find("#amount").await, "12..5")
        .await;
    browser.click(&browser.find("#credit-submit").await).await;
    browser.wait_text("#error", "amount").await;
    assert_eq!(
        count(&db, "central_operations WHERE kind = 'credit'").await,
        0
    );

    // A grant with an operation id: applied, then landed once the agent has synced.
    let amount = browser.find("#amount").await;
    browser.clear(&amount).await;
    browser.type_into(&amount, "25").await;
    let op = browser.find("#operation_id").await;
    browser.clear(&op).await;
    browser.type_into(&op, "browser-grant-1").await;
    browser
        .type_into(&browser.find("#note").await, "welcome back")
        .await;
    browser.click(&browser.find("#credit-submit").await).await;
    browser.wait_text("#notice", "admin:browser-grant-1").await;
    browser.wait_text("#pending", "admin:browser-grant-1").await;
    assert_eq!(edge.apply_inbox(&db).await.len(), 1);
    browser.goto(&url("/console/users/alice")).await;
    browser.wait_text("#balance", "95").await;
    browser.wait_text("#journal", "admin:browser-grant-1").await;
    browser
        .screenshot(&shots.join("user-after-grant.png"))
        .await;

    // A forged form without the CSRF token, sent from the console's own origin: refused.
    browser
        .execute(
            FORGE,
            json!(["/console/users/alice/credit",
                   {"kind": "grant", "amount": "1000", "operation_id": "forged-1"}]),
        )
        .await;
    browser.wait_text("#error", "CSRF token is missing").await;
    assert_eq!(
        count(
            &db,
            "central_operations WHERE operation_key = 'admin:forged-1'"
        )
        .await,
        0
    );

    // Release the quarantined agent.
    browser.goto(&url("/console/agents")).await;
    browser.wait_text("#quarantined-count", "1").await;
    browser.screenshot(&shots.join("agents.png")).await;
    browser.click(&browser.find("#release-edge-2").await).await;
    browser
        .wait_text("#notice", "Agent edge-2 is active again.")
        .await;
    let status: String = scalar(&db, "SELECT status FROM agents WHERE name = 'edge-2'").await;
    assert_eq!(status, "active");

    // Reconcile, and the catalog.
    browser.goto(&url("/console/reconcile")).await;
    browser.click(&browser.find("#run-reconcile").await).await;
    browser.find("#verdict").await;
    browser.screenshot(&shots.join("reconcile.png")).await;
    browser.goto(&url("/console/catalog")).await;
    browser.wait_text("#packages", "Value Pack").await;
    browser.screenshot(&shots.join("catalog.png")).await;

    // Sign out; sign in read-only.
    browser
        .click(&browser.find("header form button").await)
        .await;
    browser.wait_text("h1", "Sign in").await;
    quarantine("edge-1").await;
    let token = browser.find("#token").await;
    browser.type_into(&token, &read).await;
    browser.click(&browser.find("#sign-in").await).await;
    browser.wait_text("#role", "read-only").await;
    browser.goto(&url("/console/users/alice")).await;
    browser.wait_text("#read-only-note", "read-only").await;
    assert!(browser.all("#credit-form").await.is_empty());
    assert!(browser.all("#checkout-form").await.is_empty());
    browser.screenshot(&shots.join("user-read-only.png")).await;
    browser.goto(&url("/console/agents")).await;
    browser.wait_text("#quarantined-count", "1").await;
    assert!(browser.all("[id^=release-]").await.is_empty());
    browser.goto(&url("/console/catalog")).await;
    browser.wait_text("#packages", "Value Pack").await;
    assert!(
        browser
            .all("form[action^='/console/catalog/']")
            .await
            .is_empty()
    );
    // Even with this session's own CSRF token, a change is refused.
    let csrf = browser
        .execute(
            "return document.querySelector('input[name=csrf]').value;",
            json!([]),
        )
        .await;
    browser
        .execute(
            FORGE,
            json!(["/console/agents/edge-1/release", {"csrf": csrf}]),
        )
        .await;
    browser.wait_text("#error", "read-only").await;
    let status: String = scalar(&db, "SELECT status FROM agents WHERE name = 'edge-1'").await;
    assert_eq!(status, "quarantined");
    assert_eq!(
        count(&db, "central_operations WHERE kind = 'credit'").await,
        1
    );

    browser.quit().await;
    println!(
        "console browser test: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
