//! Headless Chromium for the console's browser test, driven over W3C WebDriver.
//!
//! Why this shape: Debian's `chromium-driver` is built from the same source as its `chromium`,
//! so the driver always speaks to the browser it was made for (playwright-core pins a CDP
//! revision that Debian's browser may not match, and needs npm at test time). WebDriver is
//! plain JSON over HTTP, so a few calls over the `reqwest` the tests already use are the whole
//! client: no new crate, no download at test time beyond Debian's packages.
//!
//! Guarantees: the browser and driver are installed from Debian's archive when missing (as
//! root; otherwise the test fails saying how to install them) under a lock file, so parallel
//! test processes install once; never a downloaded browser. The driver is started on a port
//! and waited for by its "started successfully" line and its `/status`; the browser runs
//! headless with a fresh profile under the given directory and no background networking; both
//! are ended when [`Browser`] is dropped (the session deleted, then the driver killed by pid). Waits are on page elements, with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Debian's browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest wait for a page element.
pub const WAIT: Duration = Duration::from_secs(15);

/// The workspace's `target/` directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// Installs `chromium` and `chromium-driver` from Debian's archive if either is missing.
pub fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    std::fs::create_dir_all(target_dir()).unwrap();
    let lock = std::fs::File::create(target_dir().join("chromium-install.lock")).unwrap();
    lock.lock().unwrap();
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let install = [
        "install",
        "-y",
        "--no-install-recommends",
        "chromium",
        "chromium-driver",
    ];
    let mut out = apt(&install).unwrap_or_else(|e| {
        panic!("cannot run apt-get to install Chromium ({e}); install `chromium chromium-driver`")
    });
    if !out.status.success() {
        let _ = apt(&["update"]);
        out = apt(&install).unwrap();
    }
    assert!(
        out.status.success() && Path::new(CHROMEDRIVER).exists(),
        "the console's browser test needs Debian's chromium and chromium-driver, and installing \
         them failed (run the tests as root, or `sudo apt-get install -y chromium \
         chromium-driver`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A chromedriver process and one headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
}

/// One element of the current page.
#[derive(Debug, Clone)]
pub struct Element {
    url: String,
}

impl Browser {
    /// Starts chromedriver, waits until it serves, and opens a headless session whose profile
    /// lives in `profile` (a fresh directory).
    pub async fn start(profile: &Path) -> Browser {
        ensure_chromium();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts chromedriver");
        let stdout = driver.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ok = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains("started successfully"));
            // Keep draining so the driver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            ok
        });
        let ready = tokio::time::timeout(WAIT, ready).await;
        assert!(matches!(ready, Ok(Ok(true))), "chromedriver did not start");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let status: Value = http
            .get(format!("{base}/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["value"]["ready"], true, "{status}");
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,2000".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"));
        let browser = Browser {
            session: format!("{base}/session/{id}"),
            driver,
            http,
        };
        browser
            .call(
                "POST",
                "/timeouts",
                json!({"implicit": 0, "pageLoad": 30_000}),
            )
            .await;
        browser
    }

    async fn call_at(&self, method: &str, url: &str, body: Value) -> Value {
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {url}: {error}: {}",
                answer["value"]["message"]
            );
        }
        answer["value"].clone()
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call_at(method, &format!("{}{path}", self.session), body)
            .await
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    pub async fn current_url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every element matching `css`, now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.call(
            "POST",
            "/elements",
            json!({"using": "css selector", "value": css}),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| self.element(e))
        .collect()
    }

    fn element(&self, reference: &Value) -> Element {
        Element {
            url: format!(
                "{}/element/{}",
                self.session,
                reference[ELEMENT_KEY].as_str().unwrap()
            ),
        }
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.all(css).await.into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} on {}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the first element matching `css` holds `needle` in its text; returns it. An
    /// element gone stale meanwhile (the page was replaced) is looked for again.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.all(css).await.into_iter().next() {
                let text = self.try_text(&e).await.unwrap_or_default();
                if text.contains(needle) {
                    return text;
                }
                assert!(
                    Instant::now() < deadline,
                    "{css:?} says {text:?}, not {needle:?}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "no element {css:?} on {}",
                    self.current_url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's address contains `needle` (a form's submission has landed).
    pub async fn wait_url(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.current_url().await;
            if url.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page is {url}, not {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `e`'s text, or `None` when `e` is no longer on the page (stale).
    pub async fn try_text(&self, e: &Element) -> Option<String> {
        let answer: Value = self
            .http
            .get(format!("{}/text", e.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match answer["value"]["error"].as_str() {
            Some("stale element reference") => None,
            Some(error) => panic!(
                "WebDriver text of {}: {error}: {}",
                e.url, answer["value"]["message"]
            ),
            None => Some(answer["value"].as_str().unwrap_or_default().to_owned()),
        }
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call_at("GET", &format!("{}/text", e.url), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn click(&self, e: &Element) {
        self.call_at("POST", &format!("{}/click", e.url), json!({}))
            .await;
    }

    pub async fn clear(&self, e: &Element) {
        self.call_at("POST", &format!("{}/clear", e.url), json!({}))
            .await;
    }

    /// Types `text` into `e` (`\u{E007}` is Enter).
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.call_at("POST", &format!("{}/value", e.url), json!({"text": text}))
            .await;
    }

    /// The element that has the keyboard focus.
    pub async fn focused(&self) -> Element {
        let reference = self.call("GET", "/element/active", Value::Null).await;
        self.element(&reference)
    }

    /// Presses and releases one key (`\u{E004}` is Tab).
    pub async fn press(&self, key: &str) {
        self.call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
        )
        .await;
    }

    /// Runs `script` in the page (as a test's own forged request would be made).
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let data = self.call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (the browser closes), then the driver.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

impl Drop for Browser {
    /// Ends the session if it is still open (a failed test: the browser closes), then the
    /// driver. Plain blocking HTTP, as `drop` cannot wait on the runtime.
    fn drop(&mut self) {
        if let Some((host, path)) = self
            .session
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
            && let Ok(mut conn) = std::net::TcpStream::connect(host)
        {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                conn,
                "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            let _ = conn.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
