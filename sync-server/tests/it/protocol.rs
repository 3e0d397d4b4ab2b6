//! Rolling upgrades: an agent one protocol version behind the server keeps syncing, and is never
//! sent what its version cannot read; when it upgrades it gets what it missed. The "previous
//! agent" here speaks protocol 1 exactly as protocol 1's agents did: no `tollgate-protocol`
//! header, its enrolment body built from the pinned v1 fixture, and every answer read with a
//! frozen copy of protocol 1's types (`deny_unknown_fields`, as those agents read them).

use deadpool_postgres::Pool;
use serde::Deserialize;
use serde_json::Value;
use tollgate_schema::api_key;
use tollgate_schema::wire::{
    PROTOCOL_HEADER, PROTOCOL_VERSION, PushRequest, UserSettings, encode_hash, error_code,
};
use tollgate_server::central::api_keys;
use uuid::Uuid;

use crate::support::{TestDb, TestServer};
use crate::sync_support::{Answer, Chain, home_users, push_bytes};

/// Protocol 1's messages as its agents read them (a frozen copy: never edit).
#[allow(dead_code)] // Fields exist to be parsed (deny_unknown_fields), not read.
mod v1 {
    use serde::Deserialize;
    use tollgate_schema::wire::{CreditEvent, PackageSpec, PowerLevelSpec, UserSettings};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EnrollResponse {
        pub protocol_version: u32,
        pub agent_id: String,
        pub agent_name: String,
        pub credential: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PushResponse {
        pub protocol_version: u32,
        pub incarnation: String,
        pub acked_seq: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct InboxPage {
        pub protocol_version: u32,
        pub events: Vec<InboxEvent>,
        pub head: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct InboxEvent {
        pub seq: i64,
        pub event_id: String,
        pub created_at: String,
        pub body: EventBody,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    pub enum EventBody {
        UserUpsert(UserSettings),
        Credit(CreditEvent),
        PackageUpsert(PackageSpec),
        PowerLevelUpsert(PowerLevelSpec),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Snapshot {
        pub protocol_version: u32,
        pub cursor: i64,
        pub users: Vec<UserSettings>,
        pub packages: Vec<PackageSpec>,
        pub power_levels: Vec<PowerLevelSpec>,
    }
}

/// A client without the protocol header, as protocol 1's agents sent.
fn v1_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn v1_get(base: &str, credential: &str, path: &str) -> Answer {
    Answer::of(
        v1_http()
            .get(format!("{base}{path}"))
            .bearer_auth(credential)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get_speaking(base: &str, credential: &str, path: &str, version: &str) -> Answer {
    Answer::of(
        v1_http()
            .get(format!("{base}{path}"))
            .bearer_auth(credential)
            .header(PROTOCOL_HEADER, version)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn read<T: for<'de> Deserialize<'de>>(answer: &Answer, what: &str) -> T {
    assert_eq!(answer.status, 200, "{what}: {}", answer.body);
    serde_json::from_value(answer.body.clone()).unwrap_or_else(|e| {
        panic!(
            "a protocol 1 agent cannot read the {what} ({e}): {}",
            answer.body
        )
    })
}

/// Enrols agent `name` as protocol 1's agents did: the pinned v1 fixture's body with this test's
/// token and incarnation, no header.
async fn enroll_v1(pool: &Pool, base: &str, name: &str) -> (String, Uuid) {
    let (_, token) = tollgate_server::sync::enroll::create_enrollment(
        pool,
        name,
        std::time::Duration::from_secs(600),
    )
    .await
    .unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schema/tests/fixtures/wire/v1/enroll_request.json"
    );
    let mut body: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let incarnation = Uuid::now_v7();
    body["token"] = Value::from(token.to_string());
    body["incarnation"] = Value::from(incarnation.to_string());
    assert_eq!(body["protocol_version"], 1);
    let answer = Answer::of(
        v1_http()
            .post(format!("{base}/v1/agents/enroll"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let enrolled: v1::EnrollResponse = read(&answer, "enrolment answer");
    assert_eq!(enrolled.protocol_version, 1);
    assert_eq!(enrolled.agent_name, name);
    assert!(!enrolled.agent_id.is_empty());
    (enrolled.credential, incarnation)
}

fn kinds(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"]["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_agent_one_version_behind_keeps_syncing_and_gets_what_it_missed_when_it_upgrades() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let (credential, incarnation) = enroll_v1(&db.pool, &base, "old-1").await;
    home_users(&db.pool, "old-1", &["alice".to_owned()]).await;

    // A key made while the agent speaks 1 is not sent to it: it could not read the event.
    let made = api_keys::create(&db.pool, "alice", "laptop", "test")
        .await
        .unwrap();
    assert!(made.sent_to.is_empty(), "{made:?}");

    // Pull, push and snapshot all work in protocol 1's words.
    let page: v1::InboxPage = read(
        &v1_get(&base, &credential, "/v1/sync/inbox?after=0").await,
        "inbox page",
    );
    assert_eq!(page.protocol_version, 1);
    assert!(
        page.head >= 1 && page.events.len() as i64 == page.head,
        "{page:?}"
    );
    assert!(
        page.events
            .iter()
            .all(|e| e.seq >= 1 && !e.event_id.is_empty() && !e.created_at.is_empty())
    );
    assert!(
        page.events.iter().any(|e| matches!(&e.body, v1::EventBody::UserUpsert(UserSettings { user_id, .. }) if user_id == "alice")),
        "{page:?}"
    );
    let mut chain = Chain::new("unused", 1);
    chain.users = vec!["alice".to_owned()];
    let entries = chain.take(3);
    let request = PushRequest {
        protocol_version: 1,
        incarnation: incarnation.to_string(),
        head_seq: 3,
        entries,
    };
    let answer = Answer::of(
        v1_http()
            .post(format!("{base}/v1/sync/push"))
            .bearer_auth(&credential)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&request).unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let pushed: v1::PushResponse = read(&answer, "push answer");
    assert_eq!((pushed.protocol_version, pushed.acked_seq), (1, 3));
    assert_eq!(pushed.incarnation, incarnation.to_string());
    let snapshot: v1::Snapshot = read(
        &v1_get(&base, &credential, "/v1/sync/snapshot").await,
        "snapshot",
    );
    assert_eq!(snapshot.protocol_version, 1);
    assert_eq!(snapshot.users.len(), 1);
    assert!(
        snapshot.cursor >= 0 && !snapshot.packages.is_empty() && !snapshot.power_levels.is_empty()
    );

    // The agent upgrades: its first request in protocol 2 brings it every key it serves.
    let upgraded = get_speaking(
        &base,
        &credential,
        &format!("/v1/sync/inbox?after={}", page.head),
        "2",
    )
    .await;
    assert_eq!(upgraded.status, 200, "{}", upgraded.body);
    assert_eq!(upgraded.body["protocol_version"], 2);
    assert_eq!(
        kinds(&upgraded.body),
        ["api_key_upsert"],
        "{}",
        upgraded.body
    );
    let key = &upgraded.body["events"][0]["body"];
    assert_eq!(key["key_id"], made.info.key_id.as_str());
    assert_eq!(key["user_id"], "alice");
    assert_eq!(
        key["key_hash"],
        encode_hash(&api_key::hash(&made.secret)).as_str()
    );
    assert!(key["revoked_at"].is_null(), "{key}");
    let snapshot = get_speaking(&base, &credential, "/v1/sync/snapshot", "2").await;
    assert_eq!(
        snapshot.body["api_keys"][0]["key_id"],
        made.info.key_id.as_str(),
        "{}",
        snapshot.body
    );

    // From now on key events go straight to it: a revocation too.
    let revoked = api_keys::revoke(&db.pool, &made.info.key_id).await.unwrap();
    assert!(revoked.newly);
    assert_eq!(revoked.sent_to, ["old-1"]);
    let after = upgraded.body["head"].as_i64().unwrap();
    let page = get_speaking(
        &base,
        &credential,
        &format!("/v1/sync/inbox?after={after}"),
        "2",
    )
    .await;
    assert_eq!(kinds(&page.body), ["api_key_upsert"], "{}", page.body);
    assert!(
        page.body["events"][0]["body"]["revoked_at"].is_string(),
        "{}",
        page.body
    );
    // Revoking again writes nothing.
    let again = api_keys::revoke(&db.pool, &made.info.key_id).await.unwrap();
    assert!(!again.newly && again.sent_to.is_empty());

    // Rolled back to protocol 1 with a key event it cannot read still pending: refused, naming
    // the event, never skipped.
    let rolled_back = v1_get(&base, &credential, &format!("/v1/sync/inbox?after={after}")).await;
    assert_eq!(rolled_back.status, 400, "{}", rolled_back.body);
    let error = rolled_back.error().error;
    assert_eq!(error.code, error_code::UNSUPPORTED_PROTOCOL);
    assert!(
        error.message.contains("api_key_upsert") && error.message.contains("protocol 2"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_version_the_server_does_not_speak_or_a_body_disagreeing_with_its_header_is_refused() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let (credential, incarnation) = enroll_v1(&db.pool, &base, "old-2").await;
    for version in ["0", "99", "two", ""] {
        let answer = get_speaking(&base, &credential, "/v1/sync/inbox?after=0", version).await;
        assert_eq!(answer.status, 400, "{version:?}: {}", answer.body);
        assert_eq!(
            answer.error().error.code,
            error_code::UNSUPPORTED_PROTOCOL,
            "{version:?}"
        );
    }
    // Body 1 under header 2, and body 2 without the header (which means 1).
    let body = |version: u32| {
        serde_json::to_vec(&PushRequest {
            protocol_version: version,
            incarnation: incarnation.to_string(),
            head_seq: 0,
            entries: Vec::new(),
        })
        .unwrap()
    };
    let mismatched = push_bytes(&base, &credential, body(1)).await;
    assert_eq!(mismatched.status, 400, "{}", mismatched.body);
    let error = mismatched.error().error;
    assert_eq!(error.code, error_code::UNSUPPORTED_PROTOCOL);
    assert!(error.message.contains("header"), "{}", error.message);
    let answer = Answer::of(
        v1_http()
            .post(format!("{base}/v1/sync/push"))
            .bearer_auth(&credential)
            .header("content-type", "application/json")
            .body(body(PROTOCOL_VERSION))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    // A heartbeat in matching words is accepted.
    let ok = push_bytes(&base, &credential, body(PROTOCOL_VERSION)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test]
async fn central_keys_are_checked_before_anything_is_written() {
    let db = TestDb::new().await;
    let missing = api_keys::create(&db.pool, "nobody", "x", "test")
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("nobody"), "{missing}");
    home_users_without_agent(&db.pool).await;
    for name in ["", "tab\there", &"n".repeat(65)] {
        let bad = api_keys::create(&db.pool, "carol", name, "test")
            .await
            .unwrap_err();
        assert!(bad.to_string().starts_with("name:"), "{bad}");
    }
    assert!(api_keys::list(&db.pool, "carol").await.unwrap().is_empty());
    let bad_id = api_keys::revoke(&db.pool, "key_NOTHEX").await.unwrap_err();
    assert!(bad_id.to_string().contains("key_id"), "{bad_id}");
    let unknown = api_keys::revoke(&db.pool, "key_0000000000000000")
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("key_0000000000000000"),
        "{unknown}"
    );
}

/// A user with no home agent (as an older server could leave): keys are stored, sent nowhere.
async fn home_users_without_agent(pool: &Pool) {
    pool.get()
        .await
        .unwrap()
        .execute("INSERT INTO user_credits (user_id) VALUES ('carol')", &[])
        .await
        .unwrap();
}
