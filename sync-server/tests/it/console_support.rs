//! Helpers for the console's tests: a browser-less client that signs in through the real
//! sign-in form, keeps the session cookie, follows no redirect (so each answer is seen), and
//! reads the CSRF secret out of a page as a browser would submit it.

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

use crate::support::TestServer;

/// An HTTP client speaking to the console like a browser without script.
#[derive(Debug, Clone)]
pub struct Console {
    pub client: reqwest::Client,
    pub base: String,
    /// The session cookie's value, once signed in.
    pub session: Option<String>,
    /// `Origin` sent with every POST (the server's own unless a test changes it).
    pub origin: Option<String>,
}

/// One answer: status, headers, body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }

    /// Every `Set-Cookie` line.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The `Set-Cookie` line of cookie `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of the first hidden `csrf` field on the page.
    pub fn csrf(&self) -> String {
        hidden(&self.body, "csrf").expect("the page has a csrf field")
    }
}

/// The value of the first `<input … name="NAME" value="…">` of a page.
pub fn hidden(body: &str, name: &str) -> Option<String> {
    let at = body.find(&format!(r#"name="{name}" value=""#))?;
    let rest = &body[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// A cookie's value from its `Set-Cookie` line.
pub fn cookie_value(line: &str) -> String {
    line.split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap()
}

impl Console {
    pub fn new(server: &TestServer) -> Console {
        Console {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
            base: server.url(""),
            session: None,
            origin: Some(server.url("")),
        }
    }

    /// Signs in with `token` through the form; panics unless it worked.
    pub async fn signed_in(server: &TestServer, token: &str) -> Console {
        let mut console = Console::new(server);
        let answer = console.sign_in(token).await;
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert_eq!(answer.location(), Some("/console/users"));
        console
    }

    /// Opens the sign-in form and sends it with `token`; keeps the session cookie if one is set.
    pub async fn sign_in(&mut self, token: &str) -> Answer {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200);
        let line = form
            .set_cookie("tollgate_console_sign_in")
            .expect("the form sets its cookie");
        let cookie = format!("tollgate_console_sign_in={}", cookie_value(&line));
        let answer = self
            .send_with_cookie(
                "/console/login",
                &[("csrf", &form.csrf()), ("token", token)],
                Some(&cookie),
            )
            .await;
        if let Some(line) = answer.set_cookie("tollgate_console") {
            self.session = Some(cookie_value(&line));
        }
        answer
    }

    fn cookie_header(&self) -> Option<String> {
        self.session
            .as_ref()
            .map(|s| format!("tollgate_console={s}"))
    }

    async fn answer(response: reqwest::Response) -> Answer {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = self.cookie_header() {
            req = req.header("cookie", cookie);
        }
        Console::answer(req.send().await.unwrap()).await
    }

    /// POSTs a form with the session cookie (and `Origin`, unless unset).
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let cookie = self.cookie_header();
        self.send_with_cookie(path, fields, cookie.as_deref()).await
    }

    async fn send_with_cookie(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> Answer {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        if let Some(origin) = &self.origin {
            req = req.header("origin", origin);
        }
        Console::answer(req.send().await.unwrap()).await
    }

    /// The CSRF secret of this session, read from the users page.
    pub async fn csrf(&self) -> String {
        let page = self.get("/console/users").await;
        assert_eq!(page.status, 200, "{}", page.body);
        page.csrf()
    }
}

/// Percent-encodes a form value.
fn enc(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
