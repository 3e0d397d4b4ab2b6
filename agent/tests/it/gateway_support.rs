//! A gateway under test: a fresh data dir, the in-process mock upstream, and `gateway::serve` on
//! a port bound before it starts (bind, then spawn); plus helpers to make users and keys and to
//! read the books afterwards through a second ledger connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tollgate::gateway::config::GatewayConfig;
use tollgate::gateway::{self, ServeParts};
use tollgate::ledger::{
    AddCredits, CreditKind, Ledger, NewUser, OpenMode, PowerLevel, SystemClock, Tier,
};
use tollgate_mock_upstream::MockUpstream;
use tollgate_schema::money::Credits;

pub fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub mock: MockUpstream,
    pub addr: SocketAddr,
    /// The admin listener: `/metrics`, `/readyz`, `/healthz`.
    pub admin_addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A user to create before the gateway starts.
pub struct User {
    pub id: &'static str,
    pub credit: &'static str,
    pub tier: Tier,
    pub level: PowerLevel,
    pub cap: Option<&'static str>,
}

impl User {
    pub fn new(id: &'static str, credit: &'static str) -> User {
        User {
            id,
            credit,
            tier: Tier::Professional,
            level: PowerLevel::Balanced,
            cap: None,
        }
    }
}

pub fn open_ledger(dir: &std::path::Path) -> Ledger {
    Ledger::open(
        &dir.join("tollgate.db"),
        OpenMode::CreateIfMissing,
        Arc::new(SystemClock),
    )
    .unwrap()
}

/// Creates `user` with their credit and returns an API key for them.
pub fn add_user(ledger: &mut Ledger, user: &User) -> String {
    let mut new = NewUser::new(user.id);
    new.tier = user.tier;
    new.power_level = user.level;
    new.monthly_spend_cap = user.cap.map(c);
    ledger.create_user(&new).unwrap();
    if c(user.credit).is_positive() {
        ledger
            .add_credits(AddCredits::new(
                user.id,
                c(user.credit),
                CreditKind::Purchase,
            ))
            .unwrap();
    }
    ledger
        .create_api_key(user.id, None)
        .unwrap()
        .secret
        .to_string()
}

impl Gateway {
    /// Starts a gateway with `users` (returns their keys in order) and `tweak` applied to a
    /// default config pointed at a fresh mock upstream.
    pub async fn start(
        users: &[User],
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> (Gateway, Vec<String>) {
        let mock = MockUpstream::spawn().await.unwrap();
        Gateway::start_with(mock, users, |_, _| {}, tweak).await
    }

    /// As [`Gateway::start`], with a mock of the caller's and a hook on the ledger before serving.
    pub async fn start_with(
        mock: MockUpstream,
        users: &[User],
        setup: impl FnOnce(&mut Ledger, &std::path::Path),
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> (Gateway, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = open_ledger(dir.path());
        let keys = users.iter().map(|u| add_user(&mut ledger, u)).collect();
        setup(&mut ledger, dir.path());
        let mut config = GatewayConfig::default();
        config.upstream.url = mock.url();
        config.upstream.api_key = Some(gateway::config::Secret::new("sk-litellm-test".into()));
        tweak(&mut config);
        let master = tollgate::keys::vault::load_master(&ledger, dir.path(), None)
            .ok()
            .map(|(k, _)| k);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::serve(
            config,
            ServeParts {
                ledger,
                master,
                demand: Default::default(),
            },
            gateway::Listeners {
                api: listener,
                admin,
            },
            async move {
                let _ = rx.await;
            },
        ));
        let gw = Gateway {
            dir,
            mock,
            addr,
            admin_addr,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        };
        // The gateway answers once its start-up (tokenizers, the upstream's catalogue) is done:
        // the listener is bound, so this request waits for that, then comes back.
        let health = gw.http.get(gw.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        (gw, keys)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub fn ledger(&self) -> Ledger {
        open_ledger(self.dir.path())
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.post("/v1/chat/completions", key, &body).await
    }

    /// The model ids `GET /v1/models` lists for `key`.
    pub async fn model_ids(&self, key: &str) -> Vec<String> {
        let models: Value = self
            .http
            .get(self.url("/v1/models"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Stops serving (in-flight requests finish) and waits for the writer to drain.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.dir
    }

    pub fn balance(&self, user: &str) -> Credits {
        self.ledger().account(user).unwrap().balance
    }

    /// Waits until `cond` holds on a fresh ledger connection, up to 10 s (for work the gateway
    /// finishes after the client stopped listening, such as a disconnect's settle).
    pub async fn wait_for(&self, what: &str, mut cond: impl FnMut(&mut Ledger) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut ledger = self.ledger();
        while !cond(&mut ledger) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One usage-log row, as tests read it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub user_id: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub credits_charged: Credits,
    pub success: bool,
    pub http_status: Option<i64>,
    pub error_type: Option<String>,
    pub metadata: Value,
    pub is_byok: bool,
    /// Metered cost beyond the hold, booked and not charged.
    pub overage: Credits,
}

pub fn usage_rows(dir: &std::path::Path) -> Vec<UsageRow> {
    #[allow(clippy::disallowed_methods)]
    let conn = rusqlite::Connection::open(dir.join("tollgate.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT user_id, model, prompt_tokens, completion_tokens, credits_charged, success, \
             http_status, error_type, metadata, is_byok, overage_credits FROM llm_usage_log \
             ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(UsageRow {
            user_id: r.get(0)?,
            model: r.get(1)?,
            prompt_tokens: r.get(2)?,
            completion_tokens: r.get(3)?,
            credits_charged: Credits::from_nanos(r.get(4)?),
            success: r.get(5)?,
            http_status: r.get(6)?,
            error_type: r.get(7)?,
            metadata: r
                .get::<_, Option<String>>(8)?
                .map_or(Value::Null, |m| serde_json::from_str(&m).unwrap()),
            is_byok: r.get(9)?,
            overage: Credits::from_nanos(r.get(10)?),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A chat body for the mock with its directives in the message.
pub fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Cost in credits of a gpt-4o-mini request at balanced with the default config:
/// (prompt × 0.15 + completion × 0.60) USD per million × 10 credits per USD.
pub fn mini_cost(prompt: u64, completion: u64) -> Credits {
    // 1.5 nano-credits... per token: 0.15e-6 × 10 = 1.5e-6 credits = 1500 nanos; 6000 for output.
    Credits::from_nanos((prompt * 1_500 + completion * 6_000) as i64)
}

/// `tollgate verify` over the data dir, through the library: no violation.
pub fn assert_books_balance(dir: &std::path::Path) {
    let report = open_ledger(dir).verify().unwrap();
    assert!(report.is_clean(), "{report:#?}");
}
