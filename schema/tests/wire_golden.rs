//! Golden JSON fixtures for every sync message (`tests/fixtures/wire/*.json`) and one entry's
//! hash. A change that alters any message's JSON, or the bytes an entry's hash covers, fails here;
//! such a change needs a new protocol version, not a fixture edit — except an additive, optional
//! field (absent means what it meant before, and it is left out when empty), which gets a fixture
//! of its own beside the unchanged one. The previous versions' fixtures (`v1/` … `v3/`) are never edited:
//! this build must read them and write them out byte for byte. To write the fixtures of a new
//! message once: `TOLLGATE_WRITE_GOLDEN=1 cargo test -p tollgate-schema --test wire_golden`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::*;

fn credits(text: &str) -> Credits {
    text.parse().expect("a valid amount")
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wire")
        .join(format!("{name}.json"))
}

/// The value's pretty JSON equals the fixture byte for byte, and the fixture reads back as the
/// value.
fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let path = fixture_path(name);
    let json = serde_json::to_string_pretty(value).expect("serializes") + "\n";
    if std::env::var_os("TOLLGATE_WRITE_GOLDEN").is_some() && !path.exists() {
        std::fs::write(&path, &json).expect("writes the fixture");
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} missing ({e})", path.display()));
    assert_eq!(
        json, stored,
        "{name}: the JSON changed; that is a protocol change"
    );
    let back: T = serde_json::from_str(&stored).expect("the fixture parses");
    assert_eq!(
        &back, value,
        "{name}: the fixture does not read back as the value"
    );
}

fn usage_entry() -> WireEntry {
    let mut entry = WireEntry {
        seq: 7,
        entry_id: "0193a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b".to_owned(),
        user_id: "alice".to_owned(),
        transaction_type: "usage".to_owned(),
        amount: credits("-0.000123"),
        balance_before: credits("10"),
        balance_after: credits("9.999877"),
        provider: Some("openai".to_owned()),
        model: Some("gpt-4o-mini".to_owned()),
        prompt_tokens: Some(12),
        completion_tokens: Some(34),
        cost_per_token: None,
        power_level: Some("balanced".to_owned()),
        is_byok: false,
        payment_method: None,
        request_id: Some("req-1".to_owned()),
        package_id: None,
        metadata: Some(r#"{"usage_estimated":false}"#.to_owned()),
        notes: None,
        admin_user_id: None,
        idempotency_key: None,
        corrects_entry_id: None,
        created_at: "2026-11-24T10:00:00.000Z".to_owned(),
        total_tokens: Some(46),
        stripe_payment_intent_id: None,
        stripe_charge_id: None,
        invoice_id: None,
        prev_hash: "ab".repeat(32),
        hash: String::new(),
    };
    let prev = decode_hash(&entry.prev_hash).expect("hex");
    entry.hash = encode_hash(&entry.canonical().hash(&prev));
    entry
}

#[test]
fn an_entry_hash_is_pinned() {
    let entry = usage_entry();
    // Computed independently (Python's hashlib over the compact JSON of the canonical fields);
    // if this changes, agents and servers of different builds disagree about every entry.
    assert_eq!(
        entry.hash,
        "cab81495e8ddc439ee5134e16fc83144b3eaa6494de90520762566f4836d8dad"
    );
    assert_eq!(entry.check(), Ok(()));
}

#[test]
fn an_entry_whose_content_changed_fails_its_check() {
    let mut entry = usage_entry();
    entry.amount = credits("-0.000124");
    entry.balance_after = credits("9.999876");
    assert_eq!(entry.check(), Err(EntryProblem::HashMismatch));
    let mut entry = usage_entry();
    entry.hash = entry.hash.to_uppercase();
    assert_eq!(entry.check(), Err(EntryProblem::MalformedHash("hash")));
}

#[test]
fn push_messages() {
    golden(
        "push_request",
        &PushRequest {
            protocol_version: PROTOCOL_VERSION,
            incarnation: "0193a3c4-0000-7000-8000-000000000001".to_owned(),
            head_seq: 9,
            entries: vec![usage_entry()],
        },
    );
    golden(
        "push_response",
        &PushResponse {
            protocol_version: PROTOCOL_VERSION,
            incarnation: "0193a3c4-0000-7000-8000-000000000001".to_owned(),
            acked_seq: 7,
        },
    );
    golden(
        "error_gap",
        &ErrorBody {
            error: ErrorDetail {
                code: error_code::GAP.to_owned(),
                message: "entry seq 9 is past the acknowledged head 7 + 1".to_owned(),
                acked_seq: Some(7),
            },
        },
    );
}

#[test]
fn enrol_messages() {
    golden(
        "enroll_request",
        &EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: "tge_example".to_owned(),
            incarnation: "0193a3c4-0000-7000-8000-000000000001".to_owned(),
            users: Vec::new(),
        },
    );
    // Added later, optional: an agent with users brings them; an agent without sends the
    // message above, byte for byte what agents before the field sent.
    golden(
        "enroll_request_with_users",
        &EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: "tge_example".to_owned(),
            incarnation: "0193a3c4-0000-7000-8000-000000000001".to_owned(),
            users: vec![UserSettings {
                user_id: "alice".to_owned(),
                tier: "professional".to_owned(),
                power_level: "precision".to_owned(),
                monthly_allowance: credits("100"),
                monthly_spend_cap: Some(credits("250.5")),
                fleet: false,
            }],
        },
    );
    golden(
        "enroll_response",
        &EnrollResponse {
            protocol_version: PROTOCOL_VERSION,
            agent_id: "0193a3c4-0000-7000-8000-0000000000aa".to_owned(),
            agent_name: "host-a".to_owned(),
            credential: "tga_example".to_owned(),
        },
    );
}

fn settings() -> UserSettings {
    UserSettings {
        user_id: "alice".to_owned(),
        tier: "starter".to_owned(),
        power_level: "eco".to_owned(),
        monthly_allowance: credits("50"),
        monthly_spend_cap: None,
        fleet: false,
    }
}

fn package() -> PackageSpec {
    PackageSpec {
        name: "Starter Pack".to_owned(),
        credits: credits("100"),
        price_usd_cents: 1000,
        discount_percent: 0,
        min_tier: None,
        is_active: true,
        is_featured: false,
        sort_order: 1,
        description: Some("Perfect for trying out the platform".to_owned()),
        badge_text: None,
    }
}

fn power_level() -> PowerLevelSpec {
    PowerLevelSpec {
        power_level: "eco".to_owned(),
        name: "Eco Mode".to_owned(),
        description: Some("Cost-optimized routing using cheapest providers".to_owned()),
        preferred_providers: vec!["openrouter".to_owned(), "together".to_owned()],
        fallback_strategy: "next_available".to_owned(),
        cost_multiplier: "0.7".to_owned(),
        max_latency_ms: 5000,
        min_quality_score: 70,
        is_active: true,
    }
}

#[test]
fn pull_messages() {
    let event = |seq: i64, body: EventBody| InboxEvent {
        seq,
        event_id: format!("0193a3c4-0000-7000-8000-00000000010{seq}"),
        created_at: "2026-11-24T10:00:00Z".to_owned(),
        body,
    };
    golden(
        "inbox_page",
        &InboxPage {
            protocol_version: PROTOCOL_VERSION,
            head: 5,
            events: vec![
                event(1, EventBody::UserUpsert(settings())),
                event(
                    2,
                    EventBody::Credit(CreditEvent {
                        user_id: "alice".to_owned(),
                        kind: CreditEventKind::Purchase,
                        amount: credits("100"),
                        idempotency_key: "stripe:cs_test_1".to_owned(),
                        package: Some("Starter Pack".to_owned()),
                        note: None,
                        admin_user_id: None,
                    }),
                ),
                event(3, EventBody::PackageUpsert(package())),
                event(4, EventBody::PowerLevelUpsert(power_level())),
                event(5, EventBody::ApiKeyUpsert(api_key())),
            ],
        },
    );
    golden(
        "snapshot",
        &Snapshot {
            protocol_version: PROTOCOL_VERSION,
            cursor: 5,
            users: vec![settings()],
            packages: vec![package()],
            power_levels: vec![power_level()],
            api_keys: vec![api_key()],
        },
    );
}

fn api_key() -> ApiKeySpec {
    ApiKeySpec {
        key_id: "key_0123456789abcdef".to_owned(),
        user_id: "alice".to_owned(),
        key_hash: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_owned(),
        prefix: "tg_AbCdEfGh".to_owned(),
        name: Some("laptop".to_owned()),
        created_at: "2026-11-24T10:00:00Z".to_owned(),
        revoked_at: None,
    }
}

/// The previous protocols' messages (pinned when each was current, never edited) read back with
/// this build's types and write out byte for byte: a server of this build understands an agent
/// one or two versions behind, and can answer it in its own words — the fields added since are
/// optional and left out when empty.
#[test]
fn previous_version_messages_read_back_and_write_out_byte_for_byte() {
    fn same<T: Serialize + DeserializeOwned>(version: &str, name: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/wire")
            .join(version)
            .join(format!("{name}.json"));
        let stored = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {} missing ({e})", path.display()));
        let value: T = serde_json::from_str(&stored)
            .unwrap_or_else(|e| panic!("{version} {name} does not parse: {e}"));
        let json = serde_json::to_string_pretty(&value).expect("serializes") + "\n";
        assert_eq!(
            json, stored,
            "{version} {name} does not write out as it was"
        );
    }
    for version in ["v1", "v2", "v3"] {
        same::<EnrollRequest>(version, "enroll_request");
        same::<EnrollRequest>(version, "enroll_request_with_users");
        same::<EnrollResponse>(version, "enroll_response");
        same::<PushRequest>(version, "push_request");
        same::<PushResponse>(version, "push_response");
        same::<ErrorBody>(version, "error_gap");
        same::<InboxPage>(version, "inbox_page");
        same::<Snapshot>(version, "snapshot");
        let mut expected = 8;
        if version == "v3" {
            same::<GrantRequest>(version, "grant_request");
            same::<GrantResponse>(version, "grant_response");
            same::<InboxPage>(version, "inbox_page_escrow");
            expected += 3;
        }
        let files = std::fs::read_dir(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/wire")
                .join(version),
        )
        .expect("the fixtures")
        .count();
        assert_eq!(files, expected, "every {version} fixture is checked above");
    }
}

fn grant() -> GrantSpec {
    GrantSpec {
        key: "grant:0193a3c4-0000-7000-8000-000000000001:r-17".to_owned(),
        user_id: "fleet-ann".to_owned(),
        amount: credits("2.5"),
        valid_for_ms: 60_000,
        overdraft: None,
    }
}

#[test]
fn escrow_messages() {
    golden(
        "grant_request",
        &GrantRequest {
            protocol_version: PROTOCOL_VERSION,
            request_id: "r-17".to_owned(),
            user_id: "fleet-ann".to_owned(),
            want: credits("3"),
            worst_case: credits("0.25"),
        },
    );
    golden(
        "grant_response",
        &GrantResponse {
            protocol_version: PROTOCOL_VERSION,
            grant: Some(grant()),
            pool_free: credits("97.5"),
        },
    );
    golden(
        "grant_response_overdraft",
        &GrantResponse {
            protocol_version: PROTOCOL_VERSION,
            grant: Some(GrantSpec {
                overdraft: Some(credits("5")),
                ..grant()
            }),
            pool_free: credits("0"),
        },
    );
    golden(
        "inbox_page_escrow",
        &InboxPage {
            protocol_version: PROTOCOL_VERSION,
            head: 2,
            events: vec![
                InboxEvent {
                    seq: 1,
                    event_id: "0193a3c4-0000-7000-8000-000000000201".to_owned(),
                    created_at: "2026-11-24T10:00:00Z".to_owned(),
                    body: EventBody::UserUpsert(UserSettings {
                        fleet: true,
                        user_id: "fleet-ann".to_owned(),
                        ..settings()
                    }),
                },
                InboxEvent {
                    seq: 2,
                    event_id: "0193a3c4-0000-7000-8000-000000000202".to_owned(),
                    created_at: "2026-11-24T10:00:01Z".to_owned(),
                    body: EventBody::EscrowGrant(grant()),
                },
            ],
        },
    );
}

#[test]
fn every_event_names_the_version_that_added_it() {
    assert_eq!(EventBody::UserUpsert(settings()).since_version(), 1);
    assert_eq!(EventBody::PackageUpsert(package()).since_version(), 1);
    assert_eq!(EventBody::ApiKeyUpsert(api_key()).since_version(), 2);
    assert_eq!(EventBody::EscrowGrant(grant()).since_version(), 3);
    let with_line = GrantSpec {
        overdraft: Some(credits("5")),
        ..grant()
    };
    assert_eq!(EventBody::EscrowGrant(with_line).since_version(), 4);
    let fleet = UserSettings {
        fleet: true,
        ..settings()
    };
    assert_eq!(EventBody::UserUpsert(fleet).since_version(), 3);
    // The server speaks the previous version (a rolling upgrade needs it).
    const { assert!(PROTOCOL_VERSION_MIN < PROTOCOL_VERSION) };
}

#[test]
fn unknown_fields_are_refused() {
    let text = r#"{"protocol_version":1,"incarnation":"x","acked_seq":1,"extra":2}"#;
    let err = serde_json::from_str::<PushResponse>(text).expect_err("unknown field");
    assert!(err.to_string().contains("extra"), "{err}");
}
