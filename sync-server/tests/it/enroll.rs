//! Enrolment: a token works once; reused, expired, unknown or malformed tokens are refused and
//! change nothing; secrets are stored hashed only; revoked agents are refused everywhere; the
//! admin API and the CLI manage agents.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use tollgate_schema::wire::{EnrollRequest, PROTOCOL_VERSION, error_code};
use tollgate_server::sync::{agents, enroll::create_enrollment};
use uuid::Uuid;

use crate::support::{TestDb, TestServer};
use crate::sync_support::{
    Answer, Chain, admin_token, chain_users, enroll, fingerprint, get, home_users, http, push,
    scalar,
};

async fn enroll_with(base: &str, token: &str, incarnation: &str) -> Answer {
    let response = http()
        .post(format!("{base}/v1/agents/enroll"))
        .json(&EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_owned(),
            incarnation: incarnation.to_owned(),
            users: Vec::new(),
        })
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

#[tokio::test]
async fn a_token_works_once_and_refusals_change_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let (agent_id, token) = create_enrollment(&db.pool, "a1", Duration::from_secs(600))
        .await
        .unwrap();
    assert!(token.starts_with("tge_"));
    assert_eq!(
        agents::show(&db.pool, "a1").await.unwrap().status,
        "pending"
    );
    let incarnation = Uuid::now_v7().to_string();
    let answer = enroll_with(&base, &token, &incarnation).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["agent_id"], agent_id.to_string());
    assert_eq!(answer.body["agent_name"], "a1");
    let credential = answer.body["credential"].as_str().unwrap().to_owned();
    assert!(credential.starts_with("tga_"));
    let shown = agents::show(&db.pool, "a1").await.unwrap();
    assert_eq!(shown.status, "active");
    assert_eq!(shown.incarnation.as_deref(), Some(incarnation.as_str()));
    assert!(shown.enrolled_at.is_some());
    // The credential works.
    assert_eq!(
        get(&base, &credential, "/v1/sync/inbox?after=0")
            .await
            .status,
        200
    );

    // An expired token, for another agent.
    let (_, expired) = create_enrollment(&db.pool, "a2", Duration::from_secs(600))
        .await
        .unwrap();
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE enrollment_tokens SET created_at = now() - interval '2 hours', \
             expires_at = now() - interval '1 hour' WHERE token_hash = $1",
            &[&tollgate_server::tokens::hash(&expired)],
        )
        .await
        .unwrap();

    let before = fingerprint(&db.pool).await;
    let long = format!("tge_{}", "x".repeat(300));
    for (what, token) in [
        ("reused", token.as_str()),
        ("expired", expired.as_str()),
        ("unknown", "tge_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ("garbage", "\u{0}💥 not a token"),
        ("empty", ""),
        ("too long", long.as_str()),
        ("a credential", credential.as_str()),
    ] {
        let answer = enroll_with(&base, token, &Uuid::now_v7().to_string()).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            answer.body
        );
        let error = answer.error().error;
        assert_eq!(error.code, error_code::UNAUTHORIZED, "{what}");
        assert!(
            error.message.contains("enrolment token"),
            "{what}: {}",
            error.message
        );
    }
    assert_eq!(fingerprint(&db.pool).await, before);
    // The first credential still works; the refused tries did not disturb it.
    assert_eq!(
        get(&base, &credential, "/v1/sync/snapshot").await.status,
        200
    );
}

#[tokio::test]
async fn secrets_are_stored_hashed_only() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let (_, token) = create_enrollment(&db.pool, "a1", Duration::from_secs(600))
        .await
        .unwrap();
    let answer = enroll_with(&base, &token, &Uuid::now_v7().to_string()).await;
    let credential = answer.body["credential"].as_str().unwrap().to_owned();
    let conn = db.pool.get().await.unwrap();
    // Every column of every row, as text and as hex of the text.
    let dump: Vec<String> = conn
        .query(
            "SELECT t::text FROM agents t UNION ALL SELECT t::text FROM enrollment_tokens t",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dump = dump.join("\n");
    for secret in [token.as_str(), credential.as_str()] {
        let body = &secret[4..];
        assert!(!dump.contains(body), "plaintext secret stored");
        assert!(
            !dump.contains(&hex::encode(secret)),
            "hex of the secret stored"
        );
    }
    let stored: Vec<u8> = conn
        .query_one("SELECT credential_hash FROM agents", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, tollgate_server::tokens::hash(&credential));
    let token_hash: Vec<u8> = conn
        .query_one("SELECT token_hash FROM enrollment_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(token_hash, tollgate_server::tokens::hash(&token));
}

#[tokio::test]
async fn re_enrolment_replaces_the_credential() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let first = enroll(&db.pool, &base, "a1").await;
    home_users(&db.pool, "a1", &chain_users("a1", 1)).await;
    let mut chain = Chain::new("a1", 1);
    assert_eq!(push(&base, &first, &chain.take(3)).await.acked_seq(), 3);
    let second = enroll(&db.pool, &base, "a1").await;
    assert_eq!(second.agent_id, first.agent_id);
    assert_eq!(
        get(&base, &first.credential, "/v1/sync/inbox?after=0")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&base, &second.credential, "/v1/sync/inbox?after=0")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM agents").await, 1);
}

#[tokio::test]
async fn a_revoked_agent_is_refused_everywhere() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let agent = enroll(&db.pool, &base, "a1").await;
    home_users(&db.pool, "a1", &chain_users("a1", 1)).await;
    let mut chain = Chain::new("a1", 1);
    let entries = chain.take(5);
    assert_eq!(push(&base, &agent, &entries[..2]).await.acked_seq(), 2);
    let revoked = agents::revoke(&db.pool, "a1").await.unwrap();
    assert_eq!(revoked.status, "revoked");
    assert!(revoked.revoked_at.is_some());
    let before = fingerprint(&db.pool).await;
    let answer = push(&base, &agent, &entries[2..]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error().error.code, error_code::UNAUTHORIZED);
    for path in ["/v1/sync/inbox?after=0", "/v1/sync/snapshot"] {
        let answer = get(&base, &agent.credential, path).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(answer.error().error.code, error_code::UNAUTHORIZED);
    }
    assert_eq!(fingerprint(&db.pool).await, before);
    // Revoked is final: no new token, and a token issued before no longer works.
    assert!(matches!(
        create_enrollment(&db.pool, "a1", Duration::from_secs(600)).await,
        Err(agents::AgentError::State(_))
    ));
    // Revoking again is harmless; unknown names are named.
    agents::revoke(&db.pool, "a1").await.unwrap();
    assert!(matches!(
        agents::revoke(&db.pool, "nope").await,
        Err(agents::AgentError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_token_issued_before_revocation_is_refused() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let (_, token) = create_enrollment(&db.pool, "a1", Duration::from_secs(600))
        .await
        .unwrap();
    agents::revoke(&db.pool, "a1").await.unwrap();
    let before = fingerprint(&db.pool).await;
    let answer = enroll_with(&base, &token, &Uuid::now_v7().to_string()).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fingerprint(&db.pool).await, before);
}

#[tokio::test]
async fn racing_enrolments_with_one_token_give_one_credential() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let (_, token) = create_enrollment(&db.pool, "a1", Duration::from_secs(600))
        .await
        .unwrap();
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let (base, token) = (base.clone(), token.to_string());
            tokio::spawn(
                async move { enroll_with(&base, &token, &Uuid::now_v7().to_string()).await },
            )
        })
        .collect();
    let mut ok = Vec::new();
    for t in tries {
        let answer = t.await.unwrap();
        if answer.status == StatusCode::OK {
            ok.push(answer.body["credential"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(ok.len(), 1);
    assert_eq!(get(&base, &ok[0], "/v1/sync/snapshot").await.status, 200);
}

#[tokio::test]
async fn bad_names_and_ttls_are_refused() {
    let db = TestDb::new().await;
    for name in ["", "-x", "a b", "ä", &"x".repeat(65)] {
        assert!(matches!(
            create_enrollment(&db.pool, name, Duration::from_secs(600)).await,
            Err(agents::AgentError::Invalid(_))
        ));
    }
    for ttl in [
        Duration::ZERO,
        Duration::from_secs(59),
        Duration::from_secs(8 * 86_400),
    ] {
        assert!(matches!(
            create_enrollment(&db.pool, "ok", ttl).await,
            Err(agents::AgentError::Invalid(_))
        ));
    }
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM agents").await, 0);
}

#[tokio::test]
async fn the_admin_api_manages_agents() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");
    let read = admin_token(&db.pool, "reader", "read").await;
    let full = admin_token(&db.pool, "writer", "full").await;
    let client = http();
    let post = |path: &str, token: &str, body: serde_json::Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };

    // A read token may list but not write.
    let answer = Answer::of(
        post("/admin/v1/agents", &read, serde_json::json!({"name": "a1"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.error().error.code, error_code::FORBIDDEN);
    assert_eq!(scalar(&db.pool, "SELECT count(*) FROM agents").await, 0);
    // The role is checked before the body is read: a bad body from a read token is still a 403.
    let answer = Answer::of(
        post("/admin/v1/agents", &read, serde_json::json!({"name": 5}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);

    let answer = Answer::of(
        post(
            "/admin/v1/agents",
            &full,
            serde_json::json!({"name": "a1", "ttl_minutes": 5}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let token = answer.body["token"].as_str().unwrap().to_owned();
    assert_eq!(answer.body["ttl_minutes"], 5);
    let enrolled = enroll_with(&base, &token, &Uuid::now_v7().to_string()).await;
    assert_eq!(enrolled.status, StatusCode::OK);
    let credential = enrolled.body["credential"].as_str().unwrap().to_owned();

    for (body, mentions) in [
        (serde_json::json!({"name": "bad name"}), "agent name"),
        (
            serde_json::json!({"name": "a2", "ttl_minutes": 0}),
            "lifetime",
        ),
        (serde_json::json!({"name": "a2", "colour": "red"}), "colour"),
        (serde_json::json!({"name": 5}), "expected a string"),
    ] {
        let answer = Answer::of(post("/admin/v1/agents", &full, body).await.unwrap()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        let error = answer.error().error;
        assert!(error.message.contains(mentions), "{}", error.message);
    }

    let list = Answer::of(
        client
            .get(format!("{base}/admin/v1/agents"))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["agents"][0]["name"], "a1");
    assert_eq!(list.body["agents"][0]["status"], "active");
    assert_eq!(list.body["agents"].as_array().unwrap().len(), 1);

    let answer = Answer::of(
        post("/admin/v1/agents/a1/release", &full, serde_json::json!({}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "releasing an active agent is a no-op"
    );
    let answer = Answer::of(
        post("/admin/v1/agents/zz/revoke", &full, serde_json::json!({}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = Answer::of(
        post("/admin/v1/agents/a1/revoke", &read, serde_json::json!({}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = Answer::of(
        post("/admin/v1/agents/a1/revoke", &full, serde_json::json!({}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["status"], "revoked");
    assert_eq!(
        get(&base, &credential, "/v1/sync/snapshot").await.status,
        StatusCode::UNAUTHORIZED
    );
    let answer = Answer::of(
        post("/admin/v1/agents/a1/release", &full, serde_json::json!({}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::BAD_REQUEST,
        "a revoked agent is not released"
    );
    // An agent credential is not an admin token.
    let answer = Answer::of(
        client
            .get(format!("{base}/admin/v1/agents"))
            .bearer_auth(&credential)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

/// Runs the real binary with `args` on `db`; returns (exit code, stdout, stderr).
async fn cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let url = db.url.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate-server"))
            .args(&args)
            .env("DATABASE_URL", url)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_enrols_lists_revokes_releases_and_prunes() {
    let db = TestDb::new().await;
    let server = TestServer::start(db.config()).await;
    let base = server.url("");

    let (code, out, err) = cli(&db, &["agents", "enroll", "edge-1", "--ttl-minutes", "5"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("edge-1") && lines[0].contains("5 minutes"),
        "{out}"
    );
    let token = lines[1];
    assert!(token.starts_with("tge_"), "{out}");
    assert!(
        lines[2].contains("tollgate enroll --server URL --token -"),
        "{out}"
    );
    assert!(!err.contains(token), "the token is never logged");
    let incarnation = Uuid::now_v7();
    let answer = enroll_with(&base, token, &incarnation.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK);
    let agent = crate::sync_support::Agent {
        name: "edge-1".to_owned(),
        agent_id: answer.body["agent_id"].as_str().unwrap().parse().unwrap(),
        credential: answer.body["credential"].as_str().unwrap().to_owned(),
        incarnation,
    };
    home_users(&db.pool, "edge-1", &chain_users("e", 2)).await;
    let mut chain = Chain::new("e", 2);
    let body = serde_json::to_vec(&crate::sync_support::push_request(
        &agent,
        &chain.take(7),
        Some(10),
    ))
    .unwrap();
    assert_eq!(
        crate::sync_support::push_bytes(&base, &agent.credential, body)
            .await
            .acked_seq(),
        7
    );

    let (code, out, err) = cli(&db, &["agents", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &list[0];
    assert_eq!(row["name"], "edge-1");
    assert_eq!(row["status"], "active");
    assert_eq!(row["acked_seq"], 7);
    assert_eq!(row["reported_head_seq"], 10);
    assert_eq!(row["lag"], 3);
    assert_eq!(row["incarnation"], agent.incarnation.to_string());
    assert!(row["last_push_at"].is_string());
    assert!(row["last_seen_at"].is_string());

    let (code, out, _) = cli(&db, &["agents", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("edge-1"), "{out}");

    let (code, out, err) = cli(&db, &["agents", "prune-inbox", "edge-1", "--keep", "0"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted 0"), "{out}");

    let (code, _, err) = cli(&db, &["agents", "release", "nobody"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no agent named \"nobody\""), "{err}");
    let (code, _, err) = cli(&db, &["agents", "enroll", "bad name"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("agent name"), "{err}");

    let (code, out, err) = cli(&db, &["agents", "revoke", "edge-1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(
        get(&base, &agent.credential, "/v1/sync/snapshot")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}
