//! The agent's read-only view of its own books (`/console/` on the admin listener): users with
//! their balances, one user's balance and usage charts after real traffic; nothing on the public
//! listener; an unknown user named; user ids encoded in links; no form anywhere.

use serde_json::Value;
use tollgate_schema::money::Credits;

use crate::gateway_support::{Gateway, User, chat_body};

async fn page(gw: &Gateway, url: String) -> (u16, String) {
    let response = gw.http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_admin_listener_shows_the_books_read_only_and_the_public_one_does_not() {
    let (gw, keys) = Gateway::start(
        &[
            User::new("alice", "10"),
            User::new("bob+test@example.com", "3"),
        ],
        |_| {},
    )
    .await;
    for _ in 0..2 {
        let r = gw
            .chat(&keys[0], chat_body("gpt-4o-mini", "hello there"))
            .await;
        assert_eq!(r.status(), 200);
    }
    let balance = gw.balance("alice");

    let (status, users) = page(&gw, gw.admin_url("/console/")).await;
    assert_eq!(status, 200, "{users}");
    assert!(users.contains(r#"href="/console/users/alice""#), "{users}");
    assert!(
        users.contains(&balance.to_string()),
        "{balance} not in {users}"
    );
    // A user id goes into the link percent-encoded.
    assert!(
        users.contains(r#"href="/console/users/bob%2Btest%40example.com""#),
        "{users}"
    );
    assert!(!users.contains("<form"), "a read-only view offers no form");

    let (status, alice) = page(&gw, gw.admin_url("/console/users/alice")).await;
    assert_eq!(status, 200, "{alice}");
    assert!(
        alice.contains(&format!(r#"<dd id="balance">{balance}</dd>"#)),
        "{alice}"
    );
    // Three charts, with the model charged and the day's total beside them as tables.
    assert_eq!(alice.matches("<svg").count(), 3, "{alice}");
    assert!(alice.contains("gpt-4o-mini"), "{alice}");
    let charged = "10"
        .parse::<Credits>()
        .unwrap()
        .checked_sub(balance)
        .unwrap()
        .to_string();
    assert!(
        alice.contains(&charged),
        "the day's {charged} not in {alice}"
    );

    let (status, css) = page(&gw, gw.admin_url("/console/assets/console.css")).await;
    assert_eq!(status, 200);
    assert!(css.contains('{'), "{css}");

    let (status, missing) = page(&gw, gw.admin_url("/console/users/nobody")).await;
    assert_eq!(status, 404, "{missing}");
    assert!(missing.contains("No user nobody"), "{missing}");
    // Not even a user id: the same answer, not an error of the books.
    let (status, _) = page(&gw, gw.admin_url("/console/users/a%20b")).await;
    assert_eq!(status, 404);

    // Not on the public listener.
    let response = gw.http.get(gw.url("/console/")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}
