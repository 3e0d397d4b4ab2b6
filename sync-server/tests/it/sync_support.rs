//! Helpers for the sync tests: enrolled agents, valid entry chains (hashed with the wire's own
//! `Canonical`), HTTP calls, and a fingerprint of the books to prove "nothing written".

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    EnrollRequest, EnrollResponse, ErrorBody, GENESIS_HASH, PROTOCOL_VERSION, PushRequest,
    WireEntry, decode_hash, encode_hash,
};
use uuid::Uuid;

/// An enrolled agent as the tests drive it.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub agent_id: Uuid,
    pub credential: String,
    pub incarnation: Uuid,
}

/// An agent's status (`active`, `quarantined`, …) as the server holds it.
pub async fn agent_status(pool: &Pool, name: &str) -> String {
    pool.get()
        .await
        .unwrap()
        .query_one("SELECT status FROM agents WHERE name = $1", &[&name])
        .await
        .unwrap()
        .get(0)
}

/// Registers `name`, and enrols it over HTTP at `base` (a server URL without a path).
pub async fn enroll(pool: &Pool, base: &str, name: &str) -> Agent {
    enroll_with_users(pool, base, name, &[]).await
}

/// As [`enroll`], the agent bringing `users` (adopted, homed on it, with trial settings).
pub async fn enroll_with_users(pool: &Pool, base: &str, name: &str, users: &[String]) -> Agent {
    let (agent_id, token) = tollgate_server::sync::enroll::create_enrollment(
        pool,
        name,
        std::time::Duration::from_secs(600),
    )
    .await
    .unwrap();
    let incarnation = Uuid::now_v7();
    let response = http()
        .post(format!("{base}/v1/agents/enroll"))
        .json(&EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_string(),
            incarnation: incarnation.to_string(),
            users: users
                .iter()
                .map(|u| tollgate_schema::wire::UserSettings {
                    user_id: u.clone(),
                    tier: "trial".to_owned(),
                    power_level: "eco".to_owned(),
                    monthly_allowance: Credits::ZERO,
                    monthly_spend_cap: None,
                    fleet: false,
                })
                .collect(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let enrolled: EnrollResponse = response.json().await.unwrap();
    assert_eq!(enrolled.agent_id, agent_id.to_string());
    assert_eq!(enrolled.agent_name, name);
    Agent {
        name: name.to_owned(),
        agent_id,
        credential: enrolled.credential,
        incarnation,
    }
}

/// Makes `users` centrally, homed on agent `agent` (as `tollgate-server users set` does): the
/// server accepts entries only for users it knows.
pub async fn home_users(pool: &Pool, agent: &str, users: &[String]) {
    for user in users {
        tollgate_server::central::users::set_user(
            pool,
            &tollgate_server::central::users::UserSet {
                user_id: user.clone(),
                home_agent: Some(agent.to_owned()),
                tier: None,
                power_level: None,
                monthly_allowance: None,
                monthly_spend_cap: None,
                fleet: false,
                overdraft: None,
            },
            &format!("test:{}", Uuid::now_v7()),
            "test",
        )
        .await
        .unwrap();
    }
}

/// Enrols `agent` again with its (new) incarnation, as a restored database would: a fresh token
/// for the same agent; returns it with its new credential.
pub async fn reenroll(pool: &Pool, base: &str, agent: &Agent) -> Agent {
    let (_, token) = tollgate_server::sync::enroll::create_enrollment(
        pool,
        &agent.name,
        std::time::Duration::from_secs(600),
    )
    .await
    .unwrap();
    let response = http()
        .post(format!("{base}/v1/agents/enroll"))
        .json(&EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_string(),
            incarnation: agent.incarnation.to_string(),
            users: Vec::new(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let enrolled: EnrollResponse = response.json().await.unwrap();
    Agent {
        credential: enrolled.credential,
        ..agent.clone()
    }
}

/// The users a [`Chain::new`]`(prefix, n)` writes for.
pub fn chain_users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-user{i}")).collect()
}

/// An HTTP client for the tests, speaking this build's protocol (its header on every request).
pub fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        tollgate_schema::wire::PROTOCOL_HEADER,
        reqwest::header::HeaderValue::from(PROTOCOL_VERSION),
    );
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// An admin token `name` with `role` (read | full), inserted directly.
pub async fn admin_token(pool: &Pool, name: &str, role: &str) -> String {
    let token = format!("tgadm_test_{name}_{}", Uuid::now_v7().simple());
    pool.get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO admin_tokens (name, role, token_hash) VALUES ($1, $2, $3)",
            &[&name, &role, &tollgate_server::tokens::hash(&token)],
        )
        .await
        .unwrap();
    token
}

/// An answer: status and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Answer {
    pub async fn of(response: reqwest::Response) -> Answer {
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        }
    }

    /// The refusal's ErrorBody (panics when it is not one).
    pub fn error(&self) -> ErrorBody {
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {:?} {}", self.status, self.body))
    }

    pub fn acked_seq(&self) -> i64 {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        self.body["acked_seq"].as_i64().unwrap()
    }
}

/// A push request of `entries` (head_seq = the last seq, or `head` when given).
pub fn push_request(agent: &Agent, entries: &[WireEntry], head: Option<i64>) -> PushRequest {
    PushRequest {
        protocol_version: PROTOCOL_VERSION,
        incarnation: agent.incarnation.to_string(),
        head_seq: head.unwrap_or_else(|| entries.last().map_or(0, |e| e.seq)),
        entries: entries.to_vec(),
    }
}

/// POSTs the bytes of a push.
pub async fn push_bytes(base: &str, credential: &str, body: Vec<u8>) -> Answer {
    try_push_bytes(base, credential, body).await.unwrap()
}

/// POSTs the bytes of a push; a transport failure (the server died) is an error.
pub async fn try_push_bytes(
    base: &str,
    credential: &str,
    body: Vec<u8>,
) -> Result<Answer, reqwest::Error> {
    let response = http()
        .post(format!("{base}/v1/sync/push"))
        .bearer_auth(credential)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    Ok(Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    })
}

/// Pushes `entries` for `agent`.
pub async fn push(base: &str, agent: &Agent, entries: &[WireEntry]) -> Answer {
    let body = serde_json::to_vec(&push_request(agent, entries, None)).unwrap();
    push_bytes(base, &agent.credential, body).await
}

/// GETs `path` with the agent's credential.
pub async fn get(base: &str, credential: &str, path: &str) -> Answer {
    let response = http()
        .get(format!("{base}{path}"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

/// A generator of a valid chain of journal entries: each user's first entry is a purchase, the
/// rest usage debits (with a refund now and then); balances are exact.
#[derive(Debug, Clone)]
pub struct Chain {
    pub users: Vec<String>,
    pub seq: i64,
    pub prev: [u8; 32],
    pub balances: BTreeMap<String, Credits>,
}

impl Chain {
    /// A chain over `users` users named `{prefix}-user{i}`.
    pub fn new(prefix: &str, users: usize) -> Chain {
        Chain {
            users: (0..users).map(|i| format!("{prefix}-user{i}")).collect(),
            seq: 0,
            prev: GENESIS_HASH,
            balances: BTreeMap::new(),
        }
    }

    /// The next `n` entries.
    pub fn take(&mut self, n: usize) -> Vec<WireEntry> {
        (0..n).map(|_| self.next_entry()).collect()
    }

    pub fn next_entry(&mut self) -> WireEntry {
        let user = self.users[(self.seq as usize) % self.users.len()].clone();
        let before = self.balances.get(&user).copied().unwrap_or(Credits::ZERO);
        let (kind, amount): (&str, Credits) = if before == Credits::ZERO {
            ("purchase", "1000".parse().unwrap())
        } else if self.seq % 17 == 5 {
            ("refund", "0.25".parse().unwrap())
        } else {
            ("usage", "-0.000123456".parse().unwrap())
        };
        self.entry(&user, kind, amount)
    }

    /// As [`Chain::entry`], carrying `key` as its idempotency key.
    pub fn keyed(&mut self, user: &str, kind: &str, amount: Credits, key: &str) -> WireEntry {
        let prev = self.prev;
        let mut entry = self.entry(user, kind, amount);
        entry.idempotency_key = Some(key.to_owned());
        self.prev = prev;
        self.seal(entry)
    }

    /// An entry for `user` of `kind` moving `amount` (hashed and chained).
    pub fn entry(&mut self, user: &str, kind: &str, amount: Credits) -> WireEntry {
        self.seq += 1;
        let before = self.balances.get(user).copied().unwrap_or(Credits::ZERO);
        let after = before.checked_add(amount).unwrap();
        self.balances.insert(user.to_owned(), after);
        let usage = kind == "usage";
        let entry = WireEntry {
            seq: self.seq,
            entry_id: Uuid::now_v7().to_string(),
            user_id: user.to_owned(),
            transaction_type: kind.to_owned(),
            amount,
            balance_before: before,
            balance_after: after,
            provider: usage.then(|| "openai".to_owned()),
            model: usage.then(|| "gpt-4o-mini".to_owned()),
            prompt_tokens: usage.then_some(412),
            completion_tokens: usage.then_some(128),
            cost_per_token: usage.then(|| "0.000000228".to_owned()),
            power_level: usage.then(|| "balanced".to_owned()),
            is_byok: false,
            payment_method: (kind == "purchase").then(|| "manual".to_owned()),
            request_id: usage.then(|| format!("req-{}", self.seq)),
            package_id: None,
            metadata: usage
                .then(|| r#"{"litellm_call_id":"x","usage_estimated":false}"#.to_owned()),
            notes: (kind == "refund").then(|| "a refund, with \"quotes\" and ünïcode".to_owned()),
            admin_user_id: None,
            idempotency_key: (kind != "usage").then(|| format!("op-{}", Uuid::now_v7())),
            corrects_entry_id: None,
            created_at: "2025-01-02T03:04:05.678Z".to_owned(),
            total_tokens: usage.then_some(540),
            stripe_payment_intent_id: None,
            stripe_charge_id: None,
            invoice_id: None,
            prev_hash: String::new(),
            hash: String::new(),
        };
        self.seal(entry)
    }

    /// Sets the entry's chain fields on the current head and advances it.
    pub fn seal(&mut self, mut entry: WireEntry) -> WireEntry {
        let hash = entry.canonical().hash(&self.prev);
        entry.prev_hash = encode_hash(&self.prev);
        entry.hash = encode_hash(&hash);
        self.prev = hash;
        entry
    }
}

/// Recomputes the chain of `entries` (after a test changed fields), starting on `prev`.
pub fn rechain(entries: &mut [WireEntry], mut prev: [u8; 32]) {
    for e in entries {
        let hash = e.canonical().hash(&prev);
        e.prev_hash = encode_hash(&prev);
        e.hash = encode_hash(&hash);
        prev = hash;
    }
}

/// The hash of an entry, decoded.
pub fn hash_of(entry: &WireEntry) -> [u8; 32] {
    decode_hash(&entry.hash).unwrap()
}

/// Everything the sync endpoints may write, as text, for before/after comparisons (excluding
/// `last_seen_at`, which authentication touches by design).
pub async fn fingerprint(pool: &Pool) -> String {
    let conn = pool.get().await.unwrap();
    let queries = [
        "SELECT agent_id::text, name, status, encode(credential_hash, 'hex'), \
         incarnation::text, inbox_head::text, inbox_acked::text, inbox_pruned_through::text, \
         quarantine_reason, enrolled_at::text, revoked_at::text FROM agents ORDER BY name",
        "SELECT encode(token_hash, 'hex'), agent_id::text, used_at::text, expires_at::text \
         FROM enrollment_tokens ORDER BY 1",
        "SELECT agent_id::text, incarnation::text, acked_seq::text, encode(head_hash, 'hex'), \
         reported_head_seq::text, last_push_at::text FROM agent_streams ORDER BY 1, 2",
        "SELECT user_id, home_agent_id::text, balance::text, lifetime_credits_purchased::text, \
         credits_used_this_month::text, updated_at::text, pool::text FROM user_credits \
         ORDER BY user_id",
        "SELECT user_id, agent_id::text, balance::text FROM escrow_holdings ORDER BY 1, 2",
        "SELECT count(*)::text, COALESCE(max(id), 0)::text FROM credit_transactions",
        "SELECT count(*)::text FROM quarantined_entries",
        "SELECT count(*)::text, COALESCE(max(seq), 0)::text FROM agent_inbox",
        "SELECT count(*)::text FROM central_operations",
    ];
    let mut out = String::new();
    for q in queries {
        for row in conn.query(q, &[]).await.unwrap() {
            let cells: Vec<String> = (0..row.len())
                .map(|i| {
                    row.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "NULL".to_owned())
                })
                .collect();
            out.push_str(&cells.join("|"));
            out.push('\n');
        }
        out.push_str("--\n");
    }
    out
}

/// Asserts the central books hold exactly `entries` (seq 1..N, once, equal hashes) for the
/// agent's stream, acked = N, and every user's balance = their last balance_after.
pub async fn assert_books(pool: &Pool, agent: &Agent, entries: &[WireEntry]) {
    let conn = pool.get().await.unwrap();
    let rows = conn
        .query(
            "SELECT seq, hash, entry_id::text FROM credit_transactions \
             WHERE agent_id = $1 AND incarnation = $2 ORDER BY seq",
            &[&agent.agent_id, &agent.incarnation],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), entries.len(), "stored entry count");
    for (row, entry) in rows.iter().zip(entries) {
        assert_eq!(row.get::<_, i64>(0), entry.seq);
        assert_eq!(
            row.get::<_, Vec<u8>>(1),
            hash_of(entry).to_vec(),
            "seq {}",
            entry.seq
        );
        assert_eq!(row.get::<_, String>(2), entry.entry_id);
    }
    let acked: i64 = conn
        .query_one(
            "SELECT acked_seq FROM agent_streams WHERE agent_id = $1 AND incarnation = $2",
            &[&agent.agent_id, &agent.incarnation],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(acked, entries.last().map_or(0, |e| e.seq), "acked head");
    let mut last: BTreeMap<&str, Credits> = BTreeMap::new();
    for e in entries {
        last.insert(&e.user_id, e.balance_after);
    }
    for (user, balance) in last {
        assert_eq!(
            central_balance(pool, user).await,
            balance.to_decimal(),
            "{user}"
        );
    }
}

/// A user's central balance.
pub async fn central_balance(pool: &Pool, user: &str) -> Decimal {
    pool.get()
        .await
        .unwrap()
        .query_one(
            "SELECT balance FROM user_credits WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

/// One number from SQL.
pub async fn scalar(pool: &Pool, sql: &str) -> i64 {
    pool.get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}
