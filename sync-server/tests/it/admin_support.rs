//! Helpers for the admin, central, reconcile and Stripe tests: agents and admin tokens inserted
//! directly, an HTTP client for the admin API, a fake agent that applies its inbox and stores its
//! entries by SQL (with a correct hash chain, as ingestion would), a fingerprint of every table
//! the admin side writes (to prove "nothing written"), and the real binary for CLI tests.

use std::collections::HashMap;
use std::process::Command;

use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::Value;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{Canonical, EventBody, GENESIS_HASH, WireEntry};
use uuid::Uuid;

use crate::support::{TestDb, TestServer};

/// Registers an active agent `name` directly in the database.
pub async fn add_agent(db: &TestDb, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO agents (agent_id, name, status, enrolled_at) VALUES ($1, $2, 'active', now())",
            &[&id, &name],
        )
        .await
        .unwrap();
    id
}

/// Marks agent `name` revoked.
pub async fn revoke_agent(db: &TestDb, name: &str) {
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE agents SET status = 'revoked', revoked_at = now() WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap();
}

/// Creates an admin token (`read` or `full`) directly; returns the secret.
pub async fn add_token(db: &TestDb, name: &str, role: &str) -> String {
    let token = tollgate_server::tokens::generate(tollgate_server::tokens::ADMIN_TOKEN_PREFIX)
        .unwrap()
        .to_string();
    db.pool
        .get()
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

/// One value from a one-row query.
pub async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(db: &TestDb, sql: &str) -> T {
    db.pool
        .get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

pub async fn count(db: &TestDb, sql_from_where: &str) -> i64 {
    scalar(db, &format!("SELECT count(*) FROM {sql_from_where}")).await
}

/// The inbox events of agent `name`, oldest first, as (kind, body).
pub async fn inbox(db: &TestDb, name: &str) -> Vec<(String, EventBody)> {
    db.pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT i.kind, i.body FROM agent_inbox i JOIN agents a USING (agent_id) \
             WHERE a.name = $1 ORDER BY i.seq",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let body: Value = r.get(1);
            (r.get(0), serde_json::from_value(body).unwrap())
        })
        .collect()
}

/// Everything the admin side can write, as (table, row count and digest), to compare before and
/// after a refused request. `admin_tokens.last_used_at` is left out (every authenticated call
/// moves it).
pub async fn books(db: &TestDb) -> Vec<(String, String)> {
    const TABLES: &[(&str, &str)] = &[
        ("central_operations", "SELECT * FROM central_operations"),
        ("agent_inbox", "SELECT * FROM agent_inbox"),
        (
            "agents",
            "SELECT agent_id, name, status, inbox_head FROM agents",
        ),
        ("user_credits", "SELECT * FROM user_credits"),
        ("credit_packages", "SELECT * FROM credit_packages"),
        ("power_level_configs", "SELECT * FROM power_level_configs"),
        ("checkout_sessions", "SELECT * FROM checkout_sessions"),
        ("stripe_events", "SELECT * FROM stripe_events"),
        ("credit_transactions", "SELECT * FROM credit_transactions"),
        (
            "admin_tokens",
            "SELECT name, role, token_hash, revoked_at FROM admin_tokens",
        ),
    ];
    let conn = db.pool.get().await.unwrap();
    let mut out = Vec::new();
    for (table, select) in TABLES {
        let digest: String = conn
            .query_one(
                &format!(
                    "SELECT count(*)::text || ':' || \
                     coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
                     FROM ({select}) t"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        out.push(((*table).to_owned(), digest));
    }
    out
}

/// An HTTP client for the admin API of one server.
#[derive(Debug, Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(server: &TestServer, token: &str) -> Api {
        Api {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
            base: server.url(""),
            token: Some(token.to_owned()),
        }
    }

    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    /// Sends raw bytes; returns the status and the body as JSON (`Value::Null` when it is not).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let response = req.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        match body {
            Some(body) => {
                self.raw(
                    method,
                    path,
                    Some("application/json"),
                    serde_json::to_vec(&body).unwrap(),
                )
                .await
            }
            None => self.raw(method, path, None, Vec::new()).await,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
}

/// The error code of an `ErrorBody`.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// A full-role admin API client on a fresh server for `db`.
pub async fn server_and_admin(db: &TestDb) -> (TestServer, Api) {
    let server = TestServer::start(db.config()).await;
    let token = add_token(db, "root", "full").await;
    let api = Api::new(&server, &token);
    (server, api)
}

/// Homes `user` on `agent` through the library (as `users set` does).
pub async fn set_user(db: &TestDb, user: &str, agent: &str) {
    tollgate_server::central::users::set_user(
        &db.pool,
        &tollgate_server::central::users::UserSet {
            user_id: user.to_owned(),
            home_agent: Some(agent.to_owned()),
            tier: Some("starter".to_owned()),
            power_level: Some("balanced".to_owned()),
            monthly_allowance: Some(Credits::ZERO),
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

/// Credits from text.
pub fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

/// One entry a fake agent appends.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub user: String,
    pub kind: String,
    pub amount: Credits,
    pub request_id: Option<String>,
    pub key: Option<String>,
    pub package_id: Option<i64>,
    pub notes: Option<String>,
}

impl Draft {
    pub fn new(user: &str, kind: &str, amount: &str) -> Draft {
        Draft {
            user: user.to_owned(),
            kind: kind.to_owned(),
            amount: c(amount),
            ..Draft::default()
        }
    }
}

/// An agent played by the test: it applies its inbox's credit events as journal entries and
/// stores its entries centrally by SQL, the way ingestion does (entry, stream head, balance cache,
/// lifetime purchased), with a correct hash chain.
#[derive(Debug)]
pub struct FakeAgent {
    pub agent_id: Uuid,
    pub incarnation: Uuid,
    pub seq: i64,
    pub head: [u8; 32],
    pub balances: HashMap<String, Credits>,
    pub cursor: i64,
}

impl FakeAgent {
    pub async fn new(db: &TestDb, name: &str) -> FakeAgent {
        let agent_id = add_agent(db, name).await;
        FakeAgent {
            agent_id,
            incarnation: Uuid::now_v7(),
            seq: 0,
            head: GENESIS_HASH,
            balances: HashMap::new(),
            cursor: 0,
        }
    }

    /// The next entry of this agent, hashed and chained (not stored).
    pub fn next(&mut self, draft: &Draft) -> WireEntry {
        let before = self
            .balances
            .get(&draft.user)
            .copied()
            .unwrap_or(Credits::ZERO);
        let after = before.checked_add(draft.amount).unwrap();
        self.seq += 1;
        let entry_id = Uuid::now_v7().to_string();
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let canonical = Canonical {
            seq: self.seq,
            entry_id: &entry_id,
            user_id: &draft.user,
            transaction_type: &draft.kind,
            amount: draft.amount,
            balance_before: before,
            balance_after: after,
            provider: (draft.kind == "usage").then_some("openai"),
            model: (draft.kind == "usage").then_some("gpt-4o-mini"),
            prompt_tokens: (draft.kind == "usage").then_some(10),
            completion_tokens: (draft.kind == "usage").then_some(20),
            cost_per_token: None,
            power_level: Some("balanced"),
            is_byok: false,
            payment_method: None,
            request_id: draft.request_id.as_deref(),
            package_id: draft.package_id,
            metadata: Some(r#"{"estimated":false}"#),
            notes: draft.notes.as_deref(),
            admin_user_id: None,
            idempotency_key: draft.key.as_deref(),
            corrects_entry_id: None,
            created_at: &created_at,
            total_tokens: (draft.kind == "usage").then_some(30),
            stripe_payment_intent_id: None,
            stripe_charge_id: None,
            invoice_id: None,
        };
        let hash = canonical.hash(&self.head);
        let wire = canonical.to_wire(&self.head, &hash);
        self.head = hash;
        self.balances.insert(draft.user.clone(), after);
        wire
    }

    /// Appends and stores an entry as ingestion would.
    pub async fn append(&mut self, db: &TestDb, draft: &Draft) -> WireEntry {
        let entry = self.next(draft);
        self.store(db, &entry, true).await;
        entry
    }

    /// Stores `entry` centrally. With `ingest`, also moves the stream head to it and the user's
    /// cached balance and lifetime purchased by it; without, stores the row only (to build
    /// broken books).
    pub async fn store(&self, db: &TestDb, entry: &WireEntry, ingest: bool) {
        let mut conn = db.pool.get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO agent_streams (agent_id, incarnation) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            &[&self.agent_id, &self.incarnation],
        )
        .await
        .unwrap();
        tx.execute(
            "INSERT INTO user_credits (user_id, home_agent_id) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO NOTHING",
            &[&entry.user_id, &self.agent_id],
        )
        .await
        .unwrap();
        let entry_id: Uuid = entry.entry_id.parse().unwrap();
        let prev = hex::decode(&entry.prev_hash).unwrap();
        let hash = hex::decode(&entry.hash).unwrap();
        tx.execute(
            "INSERT INTO credit_transactions (entry_id, agent_id, incarnation, seq, user_id, \
             transaction_type, amount, balance_before, balance_after, provider, model, \
             prompt_tokens, completion_tokens, total_tokens, cost_per_token, power_level, is_byok, \
             payment_method, request_id, package_id, metadata, notes, admin_user_id, \
             idempotency_key, prev_hash, hash, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, \
             $25, $26, $27)",
            &[
                &entry_id,
                &self.agent_id,
                &self.incarnation,
                &entry.seq,
                &entry.user_id,
                &entry.transaction_type,
                &entry.amount.to_decimal(),
                &entry.balance_before.to_decimal(),
                &entry.balance_after.to_decimal(),
                &entry.provider,
                &entry.model,
                &entry.prompt_tokens.map(i64::from),
                &entry.completion_tokens.map(i64::from),
                &entry.total_tokens,
                &entry.cost_per_token,
                &entry.power_level,
                &entry.is_byok,
                &entry.payment_method,
                &entry.request_id,
                &entry.package_id,
                &entry.metadata,
                &entry.notes,
                &entry.admin_user_id,
                &entry.idempotency_key,
                &prev,
                &hash,
                &entry.created_at,
            ],
        )
        .await
        .unwrap();
        if ingest {
            tx.execute(
                "UPDATE agent_streams SET acked_seq = $3, head_hash = $4 \
                 WHERE agent_id = $1 AND incarnation = $2",
                &[&self.agent_id, &self.incarnation, &entry.seq, &hash],
            )
            .await
            .unwrap();
            let purchased = if entry.transaction_type == "purchase" {
                entry.amount.to_decimal()
            } else {
                Decimal::ZERO
            };
            tx.execute(
                "UPDATE user_credits SET balance = balance + $2, \
                 lifetime_credits_purchased = lifetime_credits_purchased + $3 WHERE user_id = $1",
                &[&entry.user_id, &entry.amount.to_decimal(), &purchased],
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Sets the stream's acknowledged head (and its hash) directly.
    pub async fn set_acked(&self, db: &TestDb, acked: i64, head_hash: &str) {
        db.pool
            .get()
            .await
            .unwrap()
            .execute(
                "UPDATE agent_streams SET acked_seq = $3, head_hash = $4 \
                 WHERE agent_id = $1 AND incarnation = $2",
                &[
                    &self.agent_id,
                    &self.incarnation,
                    &acked,
                    &hex::decode(head_hash).unwrap(),
                ],
            )
            .await
            .unwrap();
    }

    /// Applies every new inbox event: a credit becomes an entry carrying the operation key (its
    /// amount passed through `tamper` first, to play a faulty agent). Acknowledges the events.
    /// Returns the entries appended.
    pub async fn apply_inbox_with(
        &mut self,
        db: &TestDb,
        tamper: impl Fn(Credits) -> Credits,
    ) -> Vec<WireEntry> {
        let rows = db
            .pool
            .get()
            .await
            .unwrap()
            .query(
                "SELECT seq, body FROM agent_inbox WHERE agent_id = $1 AND seq > $2 ORDER BY seq",
                &[&self.agent_id, &self.cursor],
            )
            .await
            .unwrap();
        let mut appended = Vec::new();
        for row in rows {
            let seq: i64 = row.get(0);
            let body: EventBody = serde_json::from_value(row.get(1)).unwrap();
            if let EventBody::Credit(credit) = body {
                let mut draft = Draft::new(&credit.user_id, credit.kind.as_str(), "1");
                draft.amount = tamper(credit.amount);
                draft.key = Some(credit.idempotency_key.clone());
                draft.notes = credit.note.clone();
                appended.push(self.append(db, &draft).await);
            }
            self.cursor = seq;
        }
        db.pool
            .get()
            .await
            .unwrap()
            .execute(
                "UPDATE agents SET inbox_acked = $2 WHERE agent_id = $1",
                &[&self.agent_id, &self.cursor],
            )
            .await
            .unwrap();
        appended
    }

    pub async fn apply_inbox(&mut self, db: &TestDb) -> Vec<WireEntry> {
        self.apply_inbox_with(db, |a| a).await
    }
}

/// Runs the real `tollgate-server` binary with `args` on `db`; returns (exit code, stdout,
/// stderr).
pub async fn cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let url = db.url.clone();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate-server"))
            .args(&args)
            .env("DATABASE_URL", url)
            .output()
            .expect("runs tollgate-server");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}
