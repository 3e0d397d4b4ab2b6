//! Bad input at every sync endpoint: a clear 4xx with the wire's ErrorBody (its code, and a
//! message naming the problem), and nothing written. One table, every row checked the same way.

use reqwest::Method;
use tollgate_schema::wire::{
    GENESIS_HASH, PROTOCOL_VERSION, PUSH_BODY_BYTES_MAX, PUSH_ENTRIES_MAX, PushRequest,
    TOKEN_LEN_MAX, WireEntry, error_code,
};
use uuid::Uuid;

use crate::support::{TestDb, TestServer};
use crate::sync_support::{
    Answer, Chain, chain_users, enroll, fingerprint, home_users, http, push, rechain,
};

/// How a case authenticates.
#[derive(Debug, Clone)]
enum Auth {
    Agent,
    None,
    Header(String),
    /// Bytes that are not text (obs-text in a header).
    Raw(&'static [u8]),
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    auth: Auth,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The message must contain this (case-sensitive).
    mentions: &'static str,
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_writes_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, "a1").await;
    home_users(&db.pool, "a1", &chain_users("a1", 3)).await;
    let mut chain = Chain::new("a1", 3);
    let good = chain.take(20);
    // Some history, so replays and conflicts have something to compare with.
    assert_eq!(push(&base, &agent, &good[..10]).await.acked_seq(), 10);
    let next = &good[10..20];
    let head_hash = crate::sync_support::hash_of(&good[9]);

    let request = |entries: Vec<WireEntry>| PushRequest {
        protocol_version: tollgate_schema::wire::PROTOCOL_VERSION,
        incarnation: agent.incarnation.to_string(),
        head_seq: entries.last().map_or(0, |e| e.seq),
        entries,
    };
    // A batch with one field changed in entry `i`, re-hashed so only that field is wrong.
    let altered = |i: usize, change: &dyn Fn(&mut WireEntry)| {
        let mut entries = next.to_vec();
        change(&mut entries[i]);
        rechain(&mut entries, head_hash);
        json(&request(entries))
    };
    let good_body = json(&request(next.to_vec()));
    let push_case = |name, body: Vec<u8>, status, code, mentions| Case {
        name,
        method: Method::POST,
        path: "/v1/sync/push".to_owned(),
        auth: Auth::Agent,
        content_type: Some("application/json"),
        body,
        status,
        code,
        mentions,
    };
    let as_value = |body: &[u8]| serde_json::from_slice::<serde_json::Value>(body).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = as_value(&good_body);
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let oversized_batch = {
        let mut c = Chain::new("big", 5);
        let mut entries = c.take(PUSH_ENTRIES_MAX + 1);
        for e in &mut entries {
            e.seq += 10;
        }
        rechain(&mut entries, head_hash);
        json(&request(entries))
    };
    let oversized_body = {
        let mut body = good_body.clone();
        body.pop(); // the closing brace
        body.extend(std::iter::repeat_n(b' ', PUSH_BODY_BYTES_MAX));
        body.push(b'}');
        body
    };
    let long_token = format!("Bearer tga_{}", "x".repeat(TOKEN_LEN_MAX));

    let mut cases = vec![
        // --- push: the body
        push_case(
            "malformed JSON",
            b"{\"protocol_version\": 1,".to_vec(),
            400,
            error_code::BAD_REQUEST,
            "invalid JSON",
        ),
        push_case(
            "not JSON at all",
            b"hello".to_vec(),
            400,
            error_code::BAD_REQUEST,
            "invalid JSON",
        ),
        push_case(
            "empty body",
            Vec::new(),
            400,
            error_code::BAD_REQUEST,
            "invalid JSON",
        ),
        push_case(
            "trailing garbage",
            [good_body.clone(), b"xx".to_vec()].concat(),
            400,
            error_code::BAD_REQUEST,
            "trailing",
        ),
        push_case(
            "wrong type: seq as text",
            edit(&|v| v["entries"][0]["seq"] = "11".into()),
            400,
            error_code::BAD_REQUEST,
            "expected i64",
        ),
        push_case(
            "wrong type: amount as number",
            edit(&|v| v["entries"][0]["amount"] = 1.5.into()),
            400,
            error_code::BAD_REQUEST,
            "invalid type",
        ),
        push_case(
            "wrong type: entries an object",
            edit(&|v| v["entries"] = serde_json::json!({})),
            400,
            error_code::BAD_REQUEST,
            "expected a sequence",
        ),
        push_case(
            "unknown top-level field",
            edit(&|v| v["extra"] = 1.into()),
            400,
            error_code::BAD_REQUEST,
            "unknown field `extra`",
        ),
        push_case(
            "unknown entry field",
            edit(&|v| v["entries"][0]["colour"] = "red".into()),
            400,
            error_code::BAD_REQUEST,
            "unknown field `colour`",
        ),
        push_case(
            "missing field",
            edit(&|v| {
                v["entries"][0].as_object_mut().unwrap().remove("hash");
            }),
            400,
            error_code::BAD_REQUEST,
            "missing field `hash`",
        ),
        push_case(
            "amount with 10 decimals",
            edit(&|v| v["entries"][0]["amount"] = "0.0000000001".into()),
            400,
            error_code::BAD_REQUEST,
            "more than 9 decimal places",
        ),
        push_case(
            "protocol version the server does not speak",
            edit(&|v| v["protocol_version"] = (PROTOCOL_VERSION + 1).into()),
            400,
            error_code::UNSUPPORTED_PROTOCOL,
            Box::leak(format!("protocol_version {}", PROTOCOL_VERSION + 1).into_boxed_str()),
        ),
        push_case(
            "wrong protocol and shape",
            b"{\"protocol_version\": 9, \"stuff\": []}".to_vec(),
            400,
            error_code::UNSUPPORTED_PROTOCOL,
            "protocol_version 9",
        ),
        push_case(
            "incarnation not a UUID",
            edit(&|v| v["incarnation"] = "db-1".into()),
            400,
            error_code::BAD_REQUEST,
            "incarnation",
        ),
        push_case(
            "incarnation upper-case",
            edit(&|v| v["incarnation"] = agent.incarnation.to_string().to_uppercase().into()),
            400,
            error_code::BAD_REQUEST,
            "incarnation",
        ),
        push_case(
            "oversized batch (1,001 entries)",
            oversized_batch,
            413,
            error_code::TOO_LARGE,
            "1001 entries",
        ),
        push_case(
            "oversized body",
            oversized_body,
            413,
            error_code::TOO_LARGE,
            "larger than",
        ),
        push_case(
            "negative head_seq",
            json(&PushRequest {
                head_seq: -1,
                ..request(Vec::new())
            }),
            400,
            error_code::BAD_REQUEST,
            "head_seq",
        ),
        push_case(
            "head_seq below the last seq",
            json(&PushRequest {
                head_seq: 12,
                ..request(next.to_vec())
            }),
            400,
            error_code::BAD_REQUEST,
            "head_seq 12",
        ),
        push_case(
            "seqs not consecutive",
            json(&request(vec![next[0].clone(), next[2].clone()])),
            400,
            error_code::BAD_REQUEST,
            "not consecutive: seq 13 follows seq 11",
        ),
        push_case(
            "hash does not match content",
            edit(&|v| v["entries"][3]["model"] = "gpt-5".into()),
            400,
            error_code::BAD_HASH,
            "entry seq 14: hash does not match",
        ),
        push_case(
            "hash not hex",
            edit(&|v| v["entries"][0]["hash"] = "zz".into()),
            400,
            error_code::BAD_HASH,
            "entry seq 11: hash is not 64",
        ),
        push_case(
            "prev_hash upper-case hex",
            edit(&|v| v["entries"][0]["prev_hash"] = hex::encode_upper(head_hash).into()),
            400,
            error_code::BAD_HASH,
            "prev_hash",
        ),
        push_case(
            "chain broken inside the batch",
            {
                let mut entries = next.to_vec();
                entries[5].prev_hash = hex::encode(GENESIS_HASH);
                rechain(&mut entries[5..], GENESIS_HASH);
                json(&request(entries))
            },
            400,
            error_code::BAD_HASH,
            "entry seq 16: prev_hash does not match the hash of seq 15",
        ),
        push_case(
            "seq 1 not on the genesis hash",
            {
                let mut entries = good[..2].to_vec();
                rechain(&mut entries, [1; 32]);
                json(&request(entries))
            },
            400,
            error_code::BAD_HASH,
            "entry seq 1: prev_hash must be the genesis hash",
        ),
        push_case(
            "balance arithmetic wrong",
            altered(1, &|e| e.balance_after = "1".parse().unwrap()),
            400,
            error_code::BAD_REQUEST,
            "entry seq 12: balance_after must equal",
        ),
        push_case(
            "zero amount",
            altered(1, &|e| {
                e.amount = "0".parse().unwrap();
                e.balance_after = e.balance_before;
            }),
            400,
            error_code::BAD_REQUEST,
            "amount must not be zero",
        ),
        push_case(
            "negative balance",
            altered(0, &|e| {
                e.amount = "-5000".parse().unwrap();
                e.balance_after = e.balance_before.checked_add(e.amount).unwrap();
            }),
            400,
            error_code::BAD_REQUEST,
            "must not be negative",
        ),
        push_case(
            "entry_id not a UUID",
            altered(2, &|e| e.entry_id = "e-1".to_owned()),
            400,
            error_code::BAD_REQUEST,
            "entry seq 13: entry_id",
        ),
        push_case(
            "entry_id upper-case",
            altered(2, &|e| e.entry_id = e.entry_id.to_uppercase()),
            400,
            error_code::BAD_REQUEST,
            "entry seq 13: entry_id",
        ),
        push_case(
            "corrects_entry_id not a UUID",
            altered(2, &|e| e.corrects_entry_id = Some("x".to_owned())),
            400,
            error_code::BAD_REQUEST,
            "corrects_entry_id",
        ),
        push_case(
            "entry_id twice in the batch",
            {
                let mut entries = next.to_vec();
                entries[4].entry_id = entries[3].entry_id.clone();
                rechain(&mut entries, head_hash);
                json(&request(entries))
            },
            400,
            error_code::BAD_REQUEST,
            "appears twice",
        ),
        push_case(
            "unknown transaction type",
            altered(0, &|e| e.transaction_type = "gift".to_owned()),
            400,
            error_code::BAD_REQUEST,
            "transaction_type \"gift\"",
        ),
        push_case(
            "unknown power level",
            altered(0, &|e| e.power_level = Some("turbo".to_owned())),
            400,
            error_code::BAD_REQUEST,
            "power_level \"turbo\"",
        ),
        push_case(
            "unknown payment method",
            altered(0, &|e| e.payment_method = Some("cash".to_owned())),
            400,
            error_code::BAD_REQUEST,
            "payment_method \"cash\"",
        ),
        push_case(
            "empty user id",
            altered(0, &|e| e.user_id = String::new()),
            400,
            error_code::BAD_REQUEST,
            "user_id must be 1 to 128",
        ),
        push_case(
            "user id too long",
            altered(0, &|e| e.user_id = "u".repeat(129)),
            400,
            error_code::BAD_REQUEST,
            "user_id must be 1 to 128",
        ),
        push_case(
            "idempotency key too long for its index",
            altered(0, &|e| e.idempotency_key = Some("k".repeat(3_000))),
            400,
            error_code::BAD_REQUEST,
            "idempotency_key is longer than 255 bytes",
        ),
        push_case(
            "request id too long for its index",
            altered(0, &|e| e.request_id = Some("r".repeat(256))),
            400,
            error_code::BAD_REQUEST,
            "request_id is longer than 255 bytes",
        ),
        push_case(
            "NUL in notes",
            altered(0, &|e| e.notes = Some("a\0b".to_owned())),
            400,
            error_code::BAD_REQUEST,
            "notes contains a NUL",
        ),
        push_case(
            "created_at not a time",
            altered(0, &|e| e.created_at = "yesterday".to_owned()),
            400,
            error_code::BAD_REQUEST,
            "created_at \"yesterday\"",
        ),
        push_case(
            "negative total_tokens",
            altered(0, &|e| e.total_tokens = Some(-1)),
            400,
            error_code::BAD_REQUEST,
            "total_tokens",
        ),
        push_case(
            "a gap",
            json(&request(next[2..].to_vec())),
            409,
            error_code::GAP,
            "resend from seq 11",
        ),
        Case {
            content_type: None,
            ..push_case(
                "no content type is fine, bad body is not",
                b"[]".to_vec(),
                400,
                error_code::BAD_REQUEST,
                "invalid JSON",
            )
        },
        // --- push: authentication
        Case {
            auth: Auth::None,
            ..push_case(
                "no credential",
                good_body.clone(),
                401,
                error_code::UNAUTHORIZED,
                "missing Authorization",
            )
        },
        Case {
            auth: Auth::Header("Bearer tga_garbage".to_owned()),
            ..push_case(
                "unknown credential",
                good_body.clone(),
                401,
                error_code::UNAUTHORIZED,
                "unknown or revoked",
            )
        },
        Case {
            auth: Auth::Header(format!("Basic {}", agent.credential)),
            ..push_case(
                "not a bearer",
                good_body.clone(),
                401,
                error_code::UNAUTHORIZED,
                "Bearer",
            )
        },
        Case {
            auth: Auth::Header("Bearer ".to_owned()),
            ..push_case(
                "empty bearer (trailing space trimmed)",
                good_body.clone(),
                401,
                error_code::UNAUTHORIZED,
                "Bearer",
            )
        },
        Case {
            auth: Auth::Header(long_token.clone()),
            ..push_case(
                "too long bearer",
                good_body.clone(),
                401,
                error_code::UNAUTHORIZED,
                "empty or too long",
            )
        },
        Case {
            auth: Auth::Header(format!("Bearer {}x", agent.credential)),
            ..push_case(
                "credential with an extra char",
                good_body.clone(),
                401,
                error_code::UNAUTHORIZED,
                "unknown or revoked",
            )
        },
    ];
    // --- inbox and snapshot
    let get_case = |name, path: &str, auth: Auth, status, code, mentions| Case {
        name,
        method: Method::GET,
        path: path.to_owned(),
        auth,
        content_type: None,
        body: Vec::new(),
        status,
        code,
        mentions,
    };
    cases.extend([
        get_case(
            "inbox: after missing",
            "/v1/sync/inbox",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "missing query parameter after",
        ),
        get_case(
            "inbox: after negative",
            "/v1/sync/inbox?after=-1",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "after=\"-1\"",
        ),
        get_case(
            "inbox: after not a number",
            "/v1/sync/inbox?after=abc",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "after=\"abc\"",
        ),
        get_case(
            "inbox: after too big",
            "/v1/sync/inbox?after=99999999999999999999",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "after=",
        ),
        get_case(
            "inbox: after empty",
            "/v1/sync/inbox?after=",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "after=\"\"",
        ),
        get_case(
            "inbox: wait_ms too long",
            "/v1/sync/inbox?after=0&wait_ms=30001",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "wait_ms=\"30001\"",
        ),
        get_case(
            "inbox: wait_ms not a number",
            "/v1/sync/inbox?after=0&wait_ms=1.5",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "wait_ms",
        ),
        get_case(
            "inbox: unknown parameter",
            "/v1/sync/inbox?after=0&limit=5",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "unknown query parameter \"limit\"",
        ),
        get_case(
            "inbox: parameter twice",
            "/v1/sync/inbox?after=0&after=1",
            Auth::Agent,
            400,
            error_code::BAD_REQUEST,
            "given twice",
        ),
        get_case(
            "inbox: cursor past the head",
            "/v1/sync/inbox?after=5",
            Auth::Agent,
            410,
            error_code::CURSOR_GONE,
            "past the inbox head",
        ),
        get_case(
            "inbox: no credential",
            "/v1/sync/inbox?after=0",
            Auth::None,
            401,
            error_code::UNAUTHORIZED,
            "missing Authorization",
        ),
        get_case(
            "inbox: garbage credential",
            "/v1/sync/inbox?after=0",
            Auth::Header("Bearer !!!!".to_owned()),
            401,
            error_code::UNAUTHORIZED,
            "unknown or revoked",
        ),
        get_case(
            "inbox: credential not text",
            "/v1/sync/inbox?after=0",
            Auth::Raw(b"Bearer \xff\xfe"),
            401,
            error_code::UNAUTHORIZED,
            "not text",
        ),
        get_case(
            "snapshot: no credential",
            "/v1/sync/snapshot",
            Auth::None,
            401,
            error_code::UNAUTHORIZED,
            "missing Authorization",
        ),
        get_case(
            "snapshot: unknown credential",
            "/v1/sync/snapshot",
            Auth::Header("Bearer tga_nope".to_owned()),
            401,
            error_code::UNAUTHORIZED,
            "unknown or revoked",
        ),
        get_case(
            "snapshot: admin-style header",
            "/v1/sync/snapshot",
            Auth::Header("Token abc".to_owned()),
            401,
            error_code::UNAUTHORIZED,
            "Bearer",
        ),
    ]);
    // --- enrolment
    let enroll_case = |name, body: Vec<u8>, content_type, status, code, mentions| Case {
        name,
        method: Method::POST,
        path: "/v1/agents/enroll".to_owned(),
        auth: Auth::None,
        content_type,
        body,
        status,
        code,
        mentions,
    };
    let enroll_body = |version: u32, token: &str, incarnation: &str| {
        json(&serde_json::json!({
            "protocol_version": version, "token": token, "incarnation": incarnation
        }))
    };
    let (_, token) = tollgate_server::sync::enroll::create_enrollment(
        &db.pool,
        "spare",
        std::time::Duration::from_secs(600),
    )
    .await
    .unwrap();
    let fresh = Uuid::now_v7().to_string();
    cases.extend([
        enroll_case("enroll: malformed JSON", b"{".to_vec(), Some("application/json"), 400, error_code::BAD_REQUEST, "invalid JSON"),
        enroll_case("enroll: wrong type", json(&serde_json::json!({"protocol_version": "1", "token": token.as_str(), "incarnation": fresh})), Some("application/json"), 400, error_code::BAD_REQUEST, "invalid type"),
        enroll_case("enroll: unknown field", json(&serde_json::json!({"protocol_version": 1, "token": token.as_str(), "incarnation": fresh, "name": "x"})), Some("application/json"), 400, error_code::BAD_REQUEST, "unknown field `name`"),
        enroll_case("enroll: not JSON content type", enroll_body(1, &token, &fresh), Some("text/plain"), 400, error_code::BAD_REQUEST, "Content-Type: application/json"),
        enroll_case("enroll: wrong protocol", enroll_body(7, &token, &fresh), Some("application/json"), 400, error_code::UNSUPPORTED_PROTOCOL, "protocol_version 7"),
        enroll_case("enroll: incarnation not a UUID", enroll_body(1, &token, "laptop"), Some("application/json"), 400, error_code::BAD_REQUEST, "incarnation \"laptop\""),
        enroll_case("enroll: garbage token", enroll_body(1, "garbage", &fresh), Some("application/json"), 401, error_code::UNAUTHORIZED, "enrolment token"),
        enroll_case("enroll: body too large", vec![b' '; tollgate_schema::wire::ENROLL_BODY_BYTES_MAX + 1], Some("application/json"), 413, error_code::TOO_LARGE, "larger than"),
    ]);
    // --- grant requests (protocol 3)
    let grant_case = |name, body: serde_json::Value, status, code, mentions| Case {
        name,
        method: Method::POST,
        path: "/v1/escrow/grants".to_owned(),
        auth: Auth::Agent,
        content_type: Some("application/json"),
        body: json(&body),
        status,
        code,
        mentions,
    };
    let ask = |request_id: &str, user: &str, want: &str, worst: &str| {
        serde_json::json!({"protocol_version": tollgate_schema::wire::PROTOCOL_VERSION,
            "request_id": request_id, "user_id": user, "want": want, "worst_case": worst})
    };
    cases.extend([
        grant_case("grant: request id with a space", ask("r 1", "a1-user0", "1", "1"), 400, error_code::BAD_REQUEST, "request_id"),
        grant_case("grant: request id too long", ask(&"r".repeat(65), "a1-user0", "1", "1"), 400, error_code::BAD_REQUEST, "request_id"),
        grant_case("grant: negative want", ask("r-1", "a1-user0", "-1", "1"), 400, error_code::BAD_REQUEST, "want"),
        grant_case("grant: negative worst case", ask("r-1", "a1-user0", "1", "-1"), 400, error_code::BAD_REQUEST, "worst_case"),
        grant_case("grant: unknown user", ask("r-1", "nobody", "1", "1"), 404, error_code::NOT_FOUND, "\"nobody\""),
        grant_case("grant: a home user", ask("r-1", "a1-user0", "1", "1"), 409, error_code::CONFLICT, "not a fleet user"),
        grant_case("grant: unknown field", serde_json::json!({"protocol_version": 3, "request_id": "r", "user_id": "u", "want": "1", "worst_case": "1", "agent": "x"}), 400, error_code::BAD_REQUEST, "unknown field `agent`"),
        grant_case("grant: body names another protocol", serde_json::json!({"protocol_version": 2, "request_id": "r", "user_id": "u", "want": "1", "worst_case": "1"}), 400, error_code::UNSUPPORTED_PROTOCOL, "protocol_version 2"),
    ]);
    // --- wrong methods and paths answer in the same shape
    cases.push(get_case(
        "unknown path",
        "/v1/sync/pull",
        Auth::Agent,
        404,
        error_code::NOT_FOUND,
        "no such endpoint",
    ));

    let client = http();
    let before = fingerprint(&db.pool).await;
    for case in &cases {
        let mut request = client.request(case.method.clone(), format!("{base}{}", case.path));
        match &case.auth {
            Auth::Agent => request = request.bearer_auth(&agent.credential),
            Auth::None => {}
            Auth::Header(value) => request = request.header("authorization", value),
            Auth::Raw(bytes) => {
                request = request.header(
                    "authorization",
                    reqwest::header::HeaderValue::from_bytes(bytes).unwrap(),
                );
            }
        }
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if !case.body.is_empty() || case.method == Method::POST {
            request = request.body(case.body.clone());
        }
        let answer = Answer::of(request.send().await.unwrap()).await;
        assert_eq!(
            answer.status.as_u16(),
            case.status,
            "{}: {}",
            case.name,
            answer.body
        );
        let error = answer.error().error;
        assert_eq!(error.code, case.code, "{}: {}", case.name, error.message);
        assert!(
            error.message.contains(case.mentions),
            "{}: the message {:?} does not mention {:?}",
            case.name,
            error.message,
            case.mentions
        );
        if case.code == error_code::GAP {
            assert_eq!(error.acked_seq, Some(10), "{}", case.name);
        }
        assert_eq!(
            fingerprint(&db.pool).await,
            before,
            "{} wrote something",
            case.name
        );
    }
    // The good batch still applies afterwards: nothing was disturbed.
    assert_eq!(
        crate::sync_support::push_bytes(&base, &agent.credential, good_body)
            .await
            .acked_seq(),
        20
    );
}
