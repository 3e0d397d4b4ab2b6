//! What an operator sees of a running `tollgate serve` (the real binary, JSON logs, real HTTP on
//! loopback in front of the in-process mock upstream): the two listeners — the API's answers
//! 404 for `/metrics` and `/readyz`, the admin listener serves them — and the log: one access
//! line per request with its fields, refusals and upstream failures at warn with their reason,
//! a line when the signal arrives and one when serve has stopped, and no key anywhere in it
//! (the callers' API keys, the upstream's key, a user's BYOK key).
//!
//! Every wait is on a signal: the line naming the bound addresses, the access line carrying a
//! response's request id, the process's exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_mock_upstream::MockUpstream;

use tollgate_e2e::{Agent, spawn_with_stdin};

const UPSTREAM_KEY: &str = "sk-litellm-ops-test-6f1c2a";
const BYOK_KEY: &str = "sk-bob-own-openai-key-93d1e7";
const WRONG_KEY: &str = "tg_not-a-key-of-this-gateway-0000";
/// How long any one line may take to appear.
const LINE_WAIT: Duration = Duration::from_secs(20);

/// `tollgate serve` with its stderr read line by line on a thread.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// The first JSON line (read after those already seen) for which `pick` says yes.
    fn wait_for(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Blocking this worker is fine: the runtime has another for the in-process mock.
            let line = tokio::task::block_in_place(|| self.lines.recv_timeout(left))
                .unwrap_or_else(|_| panic!("no log line for {what}; the log:\n{}", self.log()));
            self.seen.push(line.clone());
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && pick(&value)
            {
                return value;
            }
        }
    }

    /// The access line of the request `request_id` names.
    fn access_line(&mut self, request_id: &str) -> Value {
        self.wait_for(&format!("request {request_id}"), |v| {
            v["target"] == "tollgate::access" && v["fields"]["request_id"] == request_id
        })
    }

    fn log(&self) -> String {
        self.seen.join("\n")
    }
}

fn start(agent: &Agent, config: &std::path::Path, upstream: &str) -> Serve {
    let mut child = agent
        .command(&["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", upstream])
        .env("TOLLGATE_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("TOLLGATE_LOG_FORMAT", "json")
        .env("TOLLGATE_LOG", "info")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_LISTEN")
        .env_remove("TOLLGATE_ADMIN_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Serve {
        child,
        lines,
        seen: Vec::new(),
    }
}

fn api_key(agent: &Agent, user: &str) -> String {
    agent.json(&["users", "api-key", "create", user])["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_splits_its_listeners_and_logs_each_request_without_a_key() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice", "--tier", "professional"]);
    agent.ok(&["credits", "add", "alice", "10", "--type", "bonus"]);
    agent.ok(&["users", "add", "bob", "--tier", "professional"]);
    let alice = api_key(&agent, "alice");
    let bob = api_key(&agent, "bob");
    // Bob has no credit, but his own OpenAI key: his gpt-4o-mini requests go to "OpenAI"
    // (a second mock) with it, free.
    let added = spawn_with_stdin(
        agent.command(&[
            "keys",
            "add",
            "bob",
            "--provider",
            "openai",
            "--name",
            "main",
            "--default",
        ]),
        format!("{BYOK_KEY}\n").as_bytes(),
    )
    .wait_with_output()
    .unwrap();
    assert!(added.status.success(), "{added:?}");
    let litellm = MockUpstream::spawn().await.unwrap();
    let openai = MockUpstream::spawn().await.unwrap();
    let config = agent.data_dir().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[providers.openai]\nbase_url = \"{}/v1\"\n", openai.url()),
    )
    .unwrap();

    let mut serve = start(&agent, &config, &litellm.url());
    let serving = serve.wait_for("the serving line", |v| {
        v["fields"]["listen"].is_string() && v["fields"]["admin_listen"].is_string()
    });
    let api = format!("http://{}", serving["fields"]["listen"].as_str().unwrap());
    let admin = format!(
        "http://{}",
        serving["fields"]["admin_listen"].as_str().unwrap()
    );
    assert_ne!(api, admin);
    let litellm_host = litellm.url().trim_start_matches("http://").to_owned();
    assert_eq!(serving["fields"]["upstream"], litellm_host.as_str());
    let http = reqwest::Client::new();

    // The listeners: clients get the API and /healthz; the operator gets metrics and readiness.
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(format!("{api}/healthz")).await, 200);
    assert_eq!(status(format!("{api}/metrics")).await, 404);
    assert_eq!(status(format!("{api}/readyz")).await, 404);
    assert_eq!(status(format!("{admin}/healthz")).await, 200);
    assert_eq!(status(format!("{admin}/readyz")).await, 200);
    assert_eq!(status(format!("{admin}/v1/models")).await, 404);
    // The 404 for /metrics is a refusal like any other: logged at warn.
    let not_a_route = serve.wait_for("the 404 for /metrics", |v| {
        v["fields"]["route"] == "GET /metrics"
    });
    assert_eq!(not_a_route["level"], "WARN");
    assert_eq!(not_a_route["fields"]["status"], 404);

    let chat = |key: String, text: &'static str, stream: bool| {
        let http = http.clone();
        let url = format!("{api}/v1/chat/completions");
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(
                    &json!({"model": "gpt-4o-mini", "max_tokens": 100, "stream": stream,
                    "messages": [{"role": "user", "content": text}]}),
                )
                .send()
                .await
                .unwrap()
        }
    };

    // Served: one info line with every field, its credits those the response named.
    let r = chat(alice.clone(), "hello mock:tokens=40", false).await;
    assert_eq!(r.status(), 200);
    let charged = r.headers()["x-tollgate-credits-charged"]
        .to_str()
        .unwrap()
        .to_owned();
    let line = serve.access_line(&request_id(&r));
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["message"], "request served");
    let f = &line["fields"];
    assert_eq!(f["user"], "alice");
    assert_eq!(f["route"], "/v1/chat/completions");
    assert_eq!(f["model"], "gpt-4o-mini");
    assert_eq!(f["level"], "balanced");
    assert_eq!(f["status"], 200);
    assert_eq!(f["completion_tokens"], 40);
    assert!(f["prompt_tokens"].as_u64().unwrap() > 0, "{f}");
    assert_eq!(f["credits"], charged.as_str());
    assert!(f["latency_ms"].is_u64(), "{f}");
    assert_eq!(f["upstream"], litellm_host.as_str());
    assert_eq!(f["stream"], false);
    assert_eq!(f["error"], "-");

    // A stream is logged when it ends, with what it used.
    let r = chat(alice.clone(), "hi mock:tokens=12", true).await;
    let id = request_id(&r);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    let line = serve.access_line(&id);
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["stream"], true);
    assert_eq!(line["fields"]["completion_tokens"], 12);

    // A BYOK request names its provider, never the key.
    let r = chat(bob.clone(), "hello", false).await;
    assert_eq!(r.status(), 200);
    let line = serve.access_line(&request_id(&r));
    assert_eq!(line["fields"]["upstream"], "byok:openai");
    assert_eq!(line["fields"]["user"], "bob");

    // Refusals: warn, with the reason. Too little credit (402: bob's key is OpenAI's, and
    // Claude goes through LiteLLM on credit he does not have)…
    let r = http
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(&bob)
        .json(&json!({"model": "claude-sonnet-4", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let line = serve.access_line(&request_id(&r));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["fields"]["message"], "request refused");
    assert_eq!(line["fields"]["status"], 402);
    assert_eq!(line["fields"]["user"], "bob");
    assert_eq!(line["fields"]["error"], "insufficient_quota");
    assert!(
        line["fields"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("insufficient credit"),
        "{line}"
    );
    assert_eq!(line["fields"]["upstream"], "-");
    // …a key that is not one (401, no user)…
    let r = chat(WRONG_KEY.to_owned(), "hello", false).await;
    assert_eq!(r.status(), 401);
    let line = serve.access_line(&request_id(&r));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["fields"]["status"], 401);
    assert_eq!(line["fields"]["user"], "-");
    assert_eq!(line["fields"]["error"], "invalid_api_key");
    // …a field the gateway does not forward (400).
    let r = http
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(&alice)
        .json(&json!({"model": "gpt-4o-mini", "fallbacks": ["gpt-4o"],
            "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let line = serve.access_line(&request_id(&r));
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(
        line["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("fallbacks"),
        "{line}"
    );

    // An upstream failure: warn, released, charged nothing.
    let r = chat(alice.clone(), "hello mock:status=503", false).await;
    assert_eq!(r.status(), 502);
    let line = serve.access_line(&request_id(&r));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["fields"]["message"], "request failed");
    assert_eq!(line["fields"]["status"], 502);
    assert_eq!(line["fields"]["error"], "upstream_error");
    assert_eq!(line["fields"]["credits"], "0");
    assert_eq!(line["fields"]["upstream"], litellm_host.as_str());

    // The metrics on the admin listener counted what the API served.
    let metrics = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_requests_total{route=\"/v1/chat/completions\",status=\"402\""),
        "{metrics}"
    );

    // SIGTERM: a line when it arrives, one when serve has stopped, exit 0.
    let pid = serve.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    serve.wait_for("the shutdown line", |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    serve.wait_for("the stopped line", |v| {
        v["fields"]["message"] == "tollgate gateway stopped"
    });
    let exit = serve.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    // Drain what is left, then look for every key in the whole log.
    // The pipe closes with the process: this ends at once.
    while let Ok(line) = serve.lines.recv_timeout(Duration::from_secs(5)) {
        serve.seen.push(line);
    }
    let log = serve.log();
    for (what, secret) in [
        ("alice's API key", alice.as_str()),
        ("bob's API key", bob.as_str()),
        ("the wrong key", WRONG_KEY),
        ("the upstream key", UPSTREAM_KEY),
        ("bob's BYOK key", BYOK_KEY),
    ] {
        assert!(!log.contains(secret), "{what} is in the log:\n{log}");
    }
    // One access line per request on the API listener: the two 404s, three served, four
    // refused or failed (the admin listener's requests are not access-logged).
    let access = log
        .lines()
        .filter(|l| l.contains("\"target\":\"tollgate::access\""))
        .count();
    assert_eq!(access, 9, "{log}");
}
