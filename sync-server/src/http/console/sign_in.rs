//! Signing in to the console with an admin token, and signing out.
//!
//! - `GET /console/login`: the form (a password field for the token), with a fresh sign-in
//!   secret in a hidden field and in a short-lived `HttpOnly; SameSite=Strict` cookie.
//! - `POST /console/login`: same site, the two secrets equal (constant time), then the token
//!   checked; on success the session cookie is set and the admin goes to the users page (303).
//!   A wrong token is shown as such on the form again (401), the token never echoed.
//! - `POST /console/logout` (any role, CSRF-checked): ends the session and clears the cookie.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::html::{attr, bare_page, esc};
use super::session::{
    self, ConsoleSession, Needs, SESSION_COOKIE, SIGN_IN_COOKIE, SIGN_IN_FORM_SECS, SignInError,
};
use super::{ConsoleError, ConsoleForm};
use crate::http::AppState;

/// Prefix of the sign-in form's secret.
const SIGN_IN_SECRET_PREFIX: &str = "tgsi_";

fn form_page(state: &AppState, error: Option<&str>) -> Result<Response, ConsoleError> {
    let secret = session::new_secret(SIGN_IN_SECRET_PREFIX)?;
    let error = error.map_or_else(String::new, |e| {
        format!(
            r#"<div class="notice refused" role="alert" id="error">{}</div>"#,
            esc(e)
        )
    });
    let body = format!(
        r#"{error}<form method="post" action="/console/login" class="card sign-in">
<input type="hidden" name="csrf" value="{}">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus spellcheck="false" aria-describedby="token-help">
<p id="token-help" class="help">A token from <code>tollgate-server admin-tokens create NAME --role read|full</code>. A read-only token can look; a full token can change credit, agents and the catalog.</p>
<button type="submit" id="sign-in">Sign in</button>
</form>"#,
        attr(&secret)
    );
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    Ok((
        status,
        [(
            header::SET_COOKIE,
            session::set_cookie(
                &state.config.console,
                SIGN_IN_COOKIE,
                &secret,
                SIGN_IN_FORM_SECS,
            ),
        )],
        bare_page("Sign in", &body),
    )
        .into_response())
}

pub async fn form(State(state): State<AppState>) -> Result<Response, ConsoleError> {
    form_page(&state, None)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignInForm {
    pub csrf: String,
    pub token: String,
}

pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<SignInForm>,
) -> Result<Response, ConsoleError> {
    let config = &state.config.console;
    session::same_origin(&headers, config)?;
    let expected = session::cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if !session::secrets_equal(&form.csrf, expected) {
        return Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "the sign-in form's CSRF token is missing or does not match (the form may be older \
             than 15 minutes): open the sign-in page again",
        ));
    }
    match session::sign_in(&state.pool, config, &form.token).await {
        Ok(new) => {
            tracing::info!(admin = %new.name, "console sign-in");
            let lifetime = config.session_lifetime.as_secs();
            let mut response = Redirect::to("/console/users").into_response();
            let h = response.headers_mut();
            h.append(
                header::SET_COOKIE,
                session::set_cookie(config, SESSION_COOKIE, &new.id, lifetime),
            );
            h.append(
                header::SET_COOKIE,
                session::set_cookie(config, SIGN_IN_COOKIE, "", 0),
            );
            Ok(response)
        }
        Err(SignInError::Console(e)) => Err(e),
        Err(e @ SignInError::Full) => Err(ConsoleError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
        Err(e @ SignInError::UnknownToken) => form_page(&state, Some(&e.to_string())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignOutForm {
    pub csrf: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    session: ConsoleSession,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<SignOutForm>,
) -> Result<Response, ConsoleError> {
    session.check_form(&headers, &state.config.console, &form.csrf, Needs::Session)?;
    session::sign_out(&state.pool, &headers).await?;
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(&state.config.console, SESSION_COOKIE, "", 0),
    );
    Ok(response)
}
