//! The sync client over real HTTP against an in-process fake of the central server that speaks
//! `tollgate_schema::wire` and checks what it receives as the real one must (every entry's
//! hash, the chain, no gap, replays equal): `tollgate enroll`, `tollgate sync now` (push, pull,
//! cursor gone → snapshot, a server that lost entries, a quarantined agent, a server down), and
//! `tollgate serve` syncing in the background and stopping on SIGTERM.
//!
//! The real server's end-to-end tests live in the workspace's `tests/`; this fake pins the
//! agent's half of the protocol on its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    CreditEvent, CreditEventKind, EnrollRequest, EnrollResponse, ErrorBody, ErrorDetail, EventBody,
    GENESIS_HASH, INBOX_PAGE_MAX, InboxEvent, InboxPage, PROTOCOL_VERSION, PushRequest,
    PushResponse, Snapshot, UserSettings, WireEntry, encode_hash, error_code,
};

use tollgate_e2e::{Agent, spawn_with_stdin};

const TOKEN: &str = "tge_one-time-enrolment-token";
const CREDENTIAL: &str = "tgc_agent-credential-0123456789";
const AGENT_ID: &str = "0193a3c4-0000-7000-8000-00000000a9e1";

/// What the fake server holds and how it behaves.
#[derive(Debug, Default)]
struct Central {
    /// Enrolment tokens not yet spent.
    tokens: Vec<String>,
    /// The incarnation named at enrolment and in pushes.
    incarnation: Option<String>,
    /// The agent's stream, gapless from seq 1.
    entries: Vec<WireEntry>,
    pushes: u32,
    /// The agent's inbox; events at or below `pruned_through` are gone.
    events: Vec<InboxEvent>,
    pruned_through: i64,
    snapshot: Option<Snapshot>,
    /// Refuse every push with this code (`quarantined`).
    refuse_pushes: Option<&'static str>,
}

#[derive(Clone)]
struct Fake {
    central: Arc<Mutex<Central>>,
    wake: Arc<Notify>,
}

struct FakeServer {
    url: String,
    fake: Fake,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let fake = Fake {
            central: Arc::new(Mutex::new(Central {
                tokens: vec![TOKEN.to_owned()],
                ..Central::default()
            })),
            wake: Arc::new(Notify::new()),
        };
        let app = Router::new()
            .route("/v1/agents/enroll", post(enrol_agent))
            .route("/v1/sync/push", post(push))
            .route("/v1/sync/inbox", get(inbox))
            .route("/v1/sync/snapshot", get(snapshot))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        FakeServer {
            url,
            fake,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    fn central(&self) -> MutexGuard<'_, Central> {
        self.fake.central.lock().unwrap()
    }

    /// Appends an event to the inbox and wakes long polls.
    fn send(&self, body: EventBody) {
        let mut central = self.central();
        let seq = central
            .events
            .last()
            .map_or(central.pruned_through, |e| e.seq)
            + 1;
        central.events.push(InboxEvent {
            seq,
            event_id: format!("0193a3c4-0000-7000-8000-{seq:012}"),
            created_at: "2026-11-24T10:00:00Z".to_owned(),
            body,
        });
        drop(central);
        self.fake.wake.notify_waiters();
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

fn refuse(status: StatusCode, code: &str, message: &str, acked_seq: Option<i64>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            acked_seq,
        },
    };
    (status, Json(body)).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {CREDENTIAL}");
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

fn unauthorized() -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        error_code::UNAUTHORIZED,
        "missing or unknown credential",
        None,
    )
}

async fn enrol_agent(State(fake): State<Fake>, Json(req): Json<EnrollRequest>) -> Response {
    let mut central = fake.central.lock().unwrap();
    let Some(at) = central.tokens.iter().position(|t| *t == req.token) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            error_code::UNAUTHORIZED,
            "unknown or spent enrolment token",
            None,
        );
    };
    central.tokens.remove(at);
    central.incarnation = Some(req.incarnation);
    Json(EnrollResponse {
        protocol_version: PROTOCOL_VERSION,
        agent_id: AGENT_ID.to_owned(),
        agent_name: "edge-1".to_owned(),
        credential: CREDENTIAL.to_owned(),
    })
    .into_response()
}

async fn push(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Json(req): Json<PushRequest>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let mut central = fake.central.lock().unwrap();
    central.pushes += 1;
    let mut head = central.entries.len() as i64;
    if let Some(code) = central.refuse_pushes {
        return refuse(
            StatusCode::FORBIDDEN,
            code,
            "an admin must clear this agent",
            Some(head),
        );
    }
    assert_eq!(req.protocol_version, PROTOCOL_VERSION);
    assert_eq!(
        central.incarnation.as_deref(),
        Some(req.incarnation.as_str())
    );
    assert!(req.head_seq >= req.entries.last().map_or(0, |e| e.seq));
    for entry in req.entries {
        if let Err(problem) = entry.check() {
            return refuse(
                StatusCode::BAD_REQUEST,
                error_code::BAD_HASH,
                &problem.to_string(),
                Some(head),
            );
        }
        if entry.seq <= head {
            if central.entries[(entry.seq - 1) as usize] != entry {
                return refuse(
                    StatusCode::CONFLICT,
                    error_code::CONFLICT,
                    "replayed entry differs",
                    Some(head),
                );
            }
            continue;
        }
        if entry.seq > head + 1 {
            return refuse(
                StatusCode::CONFLICT,
                error_code::GAP,
                &format!(
                    "entry seq {} is past the acknowledged head {head} + 1",
                    entry.seq
                ),
                Some(head),
            );
        }
        let prev = central
            .entries
            .last()
            .map_or_else(|| encode_hash(&GENESIS_HASH), |e| e.hash.clone());
        if entry.prev_hash != prev {
            return refuse(
                StatusCode::BAD_REQUEST,
                error_code::BAD_HASH,
                "does not chain",
                Some(head),
            );
        }
        central.entries.push(entry);
        head += 1;
    }
    Json(PushResponse {
        protocol_version: PROTOCOL_VERSION,
        incarnation: req.incarnation,
        acked_seq: head,
    })
    .into_response()
}

#[derive(Deserialize)]
struct InboxQuery {
    after: i64,
    wait_ms: u64,
}

async fn inbox(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<InboxQuery>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.min(30_000));
    loop {
        let woken = fake.wake.notified();
        {
            let central = fake.central.lock().unwrap();
            if q.after < central.pruned_through {
                return refuse(StatusCode::GONE, error_code::CURSOR_GONE, "pruned", None);
            }
            let events: Vec<InboxEvent> = central
                .events
                .iter()
                .filter(|e| e.seq > q.after)
                .take(INBOX_PAGE_MAX)
                .cloned()
                .collect();
            let head = central
                .events
                .last()
                .map_or(central.pruned_through, |e| e.seq);
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Json(InboxPage {
                    protocol_version: PROTOCOL_VERSION,
                    events,
                    head,
                })
                .into_response();
            }
        }
        let _ = tokio::time::timeout_at(deadline, woken).await;
    }
}

async fn snapshot(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    // Unless a test set one, the snapshot of a new agent: nothing homed, an empty catalog
    // (applying it changes nothing), cursor 0.
    let snapshot = fake.central.lock().unwrap().snapshot.clone();
    Json(snapshot.unwrap_or(Snapshot {
        protocol_version: PROTOCOL_VERSION,
        cursor: 0,
        users: Vec::new(),
        packages: Vec::new(),
        power_levels: Vec::new(),
        api_keys: Vec::new(),
    }))
    .into_response()
}

fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

fn credit(user: &str, kind: CreditEventKind, amount: &str, key: &str) -> EventBody {
    EventBody::Credit(CreditEvent {
        user_id: user.to_owned(),
        kind,
        amount: c(amount),
        idempotency_key: key.to_owned(),
        package: None,
        note: None,
        admin_user_id: None,
    })
}

fn user(id: &str, tier: &str) -> UserSettings {
    UserSettings {
        user_id: id.to_owned(),
        tier: tier.to_owned(),
        power_level: "balanced".to_owned(),
        monthly_allowance: Credits::ZERO,
        monthly_spend_cap: None,
        fleet: false,
    }
}

/// Runs the CLI off the async runtime (the fake server needs its workers meanwhile).
async fn cli(agent: &Arc<Agent>, args: &[&str]) -> Output {
    let agent = agent.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent.run(&args)
    })
    .await
    .unwrap()
}

async fn cli_json(agent: &Arc<Agent>, args: &[&str]) -> Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let out = cli(agent, &with_json).await;
    assert!(
        out.status.success(),
        "tollgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One line on stderr, exit 1; returns the line.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

async fn enroll(agent: &Arc<Agent>, server: &FakeServer) {
    let cmd = agent.command(&["enroll", "--server", &server.url, "--token", "-"]);
    let out = tokio::task::spawn_blocking(move || {
        spawn_with_stdin(cmd, format!("{TOKEN}\n").as_bytes())
            .wait_with_output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("edge-1 ({AGENT_ID})")), "{stdout}");
    assert!(!stdout.contains(CREDENTIAL), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_refuses_local_user_changes_and_says_where_to_make_them() {
    let agent = Arc::new(Agent::init("local"));
    agent.ok(&["users", "add", "alice", "--tier", "starter"]);
    let server = FakeServer::start().await;
    enroll(&agent, &server).await;
    for args in [
        &["users", "set", "alice", "--tier", "professional"][..],
        &["users", "add", "carol"][..],
    ] {
        let err = failed(&cli(&agent, args).await);
        assert!(err.contains("enrolled"), "{args:?}: {err}");
        assert!(err.contains("tollgate-server users set"), "{args:?}: {err}");
        assert!(err.contains(&server.url), "{args:?}: {err}");
    }
    // Nothing changed locally.
    assert_eq!(agent.json(&["users", "show", "alice"])["tier"], "starter");
    let users = agent.json(&["users", "list"]);
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_and_sync_now_over_http() {
    let agent = Arc::new(Agent::init("local"));
    agent.ok(&["users", "add", "alice", "--tier", "starter"]);
    agent.ok(&["credits", "add", "alice", "10", "--type", "bonus"]);
    let server = FakeServer::start().await;

    enroll(&agent, &server).await;
    let status = cli_json(&agent, &["sync", "status"]).await;
    assert_eq!(status["enrolled"], true);
    assert_eq!(status["agent_id"], AGENT_ID);
    assert_eq!(status["server"], server.url.as_str());
    assert_eq!(
        server.central().incarnation.as_deref(),
        status["incarnation"].as_str()
    );
    let file = std::fs::read_to_string(agent.data_dir().join("sync.toml")).unwrap();
    assert!(file.contains(CREDENTIAL));
    // The token is spent: enrolling again (forced) is the server's refusal, on one line.
    let out = cli(
        &agent,
        &[
            "enroll",
            "--force",
            "--server",
            &server.url,
            "--token",
            TOKEN,
        ],
    )
    .await;
    let err = failed(&out);
    assert!(
        err.contains("unauthorized") && err.contains("spent"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");

    // Central events wait in the inbox; `sync now` pushes the journal and applies them.
    server.send(EventBody::UserUpsert(user("alice", "professional")));
    server.send(credit(
        "alice",
        CreditEventKind::Purchase,
        "100",
        "stripe:cs_1",
    ));
    server.send(credit(
        "bob",
        CreditEventKind::Bonus,
        "5",
        "admin:welcome-bob",
    ));
    server.send(credit(
        "bob",
        CreditEventKind::AdminAdjustment,
        "-50",
        "admin:too-much",
    ));
    let report = cli_json(&agent, &["sync", "now"]).await;
    assert_eq!(report["push"]["entries"], 1);
    assert_eq!(report["pull"]["applied"], 3);
    assert_eq!(report["pull"]["refused"], 1);
    assert_eq!(report["pull"]["cursor"], 4);
    assert_eq!(agent.balance("alice"), "110");
    assert_eq!(agent.balance("bob"), "5");
    let shown = agent.json(&["users", "show", "alice"]);
    assert_eq!(shown["tier"], "professional");
    // The entries the inbox wrote go up with the next cycle.
    let report = cli_json(&agent, &["sync", "now"]).await;
    assert_eq!(report["push"]["entries"], 2);
    let status = cli_json(&agent, &["sync", "status"]).await;
    assert_eq!(status["unacked_entries"], 0);
    assert_eq!(status["acked_seq"], status["head_seq"]);
    assert_eq!(status["inbox_cursor"], 4);
    assert_eq!(status["server_inbox_head"], 4);
    assert_eq!(status["inbox_behind"], 0);
    assert!(status["last_push_at"].is_string() && status["last_pull_at"].is_string());
    assert_eq!(
        server.central().entries.len() as i64,
        status["head_seq"].as_i64().unwrap()
    );
    agent.assert_verified();

    // A server restored from a backup lost entries it had acknowledged: they are sent again,
    // whether the agent finds out from a heartbeat's answer or from a gap.
    for new_entry in [false, true] {
        server.central().entries.truncate(1);
        if new_entry {
            agent.ok(&["credits", "add", "alice", "1", "--type", "bonus"]);
        }
        let report = cli_json(&agent, &["sync", "now"]).await;
        let head = report["push"]["head_seq"].as_i64().unwrap();
        assert_eq!(report["push"]["acked_seq"], head);
        assert_eq!(
            server.central().entries.len() as i64,
            head,
            "new entry: {new_entry}"
        );
    }

    // The inbox after the cursor is gone: the snapshot is applied and pulling continues after it.
    {
        let mut central = server.central();
        central.pruned_through = 10;
        central.events.clear();
        central.snapshot = Some(Snapshot {
            protocol_version: PROTOCOL_VERSION,
            cursor: 10,
            users: vec![user("carol", "enterprise"), user("alice", "starter")],
            packages: vec![],
            power_levels: vec![],
            api_keys: Vec::new(),
        });
    }
    server.send(credit("carol", CreditEventKind::Bonus, "3", "admin:carol"));
    let report = cli_json(&agent, &["sync", "now"]).await;
    assert_eq!(report["pull"]["snapshot"]["cursor"], 10);
    assert_eq!(report["pull"]["applied"], 1);
    assert_eq!(report["pull"]["cursor"], 11);
    assert_eq!(
        agent.json(&["users", "show", "carol"])["tier"],
        "enterprise"
    );
    assert_eq!(agent.json(&["users", "show", "alice"])["tier"], "starter");
    assert_eq!(agent.balance("carol"), "3");

    // A quarantined agent: `sync now` fails loudly, status keeps the error.
    server.central().refuse_pushes = Some(error_code::QUARANTINED);
    let err = failed(&cli(&agent, &["sync", "now"]).await);
    assert!(err.contains("quarantined"), "{err}");
    let status = cli_json(&agent, &["sync", "status"]).await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("quarantined"),
        "{status}"
    );
    server.central().refuse_pushes = None;

    // A server that is down: one line naming it, recorded too.
    let url = server.url.clone();
    server.stop().await;
    let err = failed(&cli(&agent, &["sync", "now"]).await);
    assert!(err.contains("cannot reach the sync server"), "{err}");
    assert!(err.contains(&url), "{err}");
    let text = String::from_utf8(cli(&agent, &["sync", "status"]).await.stdout).unwrap();
    assert!(text.contains("cannot reach the sync server"), "{text}");
    assert!(!text.contains(CREDENTIAL), "{text}");
    agent.assert_verified();
}

/// Kills the child on drop, so a failing test leaves no server behind.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `done` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn local_head(agent: &Agent) -> (i64, i64, String) {
    let ledger = tollgate::ledger::Ledger::open(
        &agent.data_dir().join("tollgate.db"),
        tollgate::ledger::OpenMode::MustExist,
        Arc::new(tollgate::ledger::SystemClock),
    )
    .unwrap();
    let status = ledger.sync_status().unwrap();
    let mut ledger = ledger;
    let balance = ledger
        .account("alice")
        .map(|a| a.balance.to_string())
        .unwrap_or_default();
    (status.head_seq, status.inbox_cursor, balance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_syncs_in_the_background_and_stops_on_sigterm() {
    let agent = Arc::new(Agent::init("local"));
    agent.ok(&["users", "add", "alice"]);
    agent.ok(&["credits", "add", "alice", "10", "--type", "bonus"]);
    let server = FakeServer::start().await;
    enroll(&agent, &server).await;

    let mut child = Command::new(tollgate_e2e::binary("tollgate"))
        .arg("--data-dir")
        .arg(agent.data_dir())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("TOLLGATE_UPSTREAM_KEY", "sk-unused")
        .env("TOLLGATE_LOG_FORMAT", "json")
        .env("TOLLGATE_LOG", "info")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_MASTER_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    let mut serve = Serve(child);

    // The journal so far reaches the server without any request.
    let pushed = |n: i64| {
        let central = server.fake.central.clone();
        move || central.lock().unwrap().entries.len() as i64 >= n
    };
    eventually(Duration::from_secs(10), "the first push", pushed(1)).await;
    // A new entry is pushed promptly.
    agent.ok(&["credits", "add", "alice", "2", "--type", "bonus"]);
    eventually(Duration::from_secs(5), "a prompt push", pushed(2)).await;
    // A central event wakes the long poll and is applied; its entry goes back up.
    server.send(credit(
        "alice",
        CreditEventKind::Purchase,
        "100",
        "stripe:cs_bg",
    ));
    let agent_ref = agent.clone();
    eventually(Duration::from_secs(5), "the event applied", move || {
        local_head(&agent_ref) == (3, 1, "112".to_owned())
    })
    .await;
    eventually(Duration::from_secs(5), "its entry pushed", pushed(3)).await;

    // SIGTERM stops the gateway and the sync task, promptly and cleanly.
    let pid = serve.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "serve did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}: {:?}", log.lock().unwrap());
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("sync enabled"), "{log}");
    assert!(log.contains("sync stopped"), "{log}");
    assert!(!log.contains(CREDENTIAL), "{log}");
    server.stop().await;
}
