//! Logging in and out, and the language switch.
//!
//! These are what a visitor reaches before, or without, a login.
//!
//! The login form has no session yet to carry a CSRF token, so it gets a double-submit token:
//! a cookie and a hidden field that must match.
//!
//! A login attempt passes the guessing limits first ([`crate::http::throttle`]): one that must
//! wait is answered 429 with `Retry-After` before any password is hashed, and one that finds
//! every password hasher busy 503.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::i18n::{LANG_COOKIE, Lang};
use super::layout::{CSS, CsrfForm, PageError, PageResult, PageStaff, cookie, local_path};
use crate::auth::{self, AuthError};
use crate::http::throttle::HashError;
use crate::http::{ApiError, AppState, Credential, SESSION_COOKIE, blocking};

/// The double-submit token of the login form.
const LOGIN_CSRF_COOKIE: &str = "fs_login_csrf";

pub(super) async fn set_lang(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    Path(lang): Path<String>,
) -> (CookieJar, Redirect) {
    let lang = if lang == "en" { "en" } else { "zh" };
    // Back to the page the switch was clicked on: the path of the referrer, never its host.
    let referrer_path = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]));
    let back = local_path(referrer_path, "/");
    let jar = jar.add(cookie(&state, LANG_COOKIE, lang.to_string(), 365 * 86400));
    (jar, Redirect::to(&back))
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    error: Option<String>,
}

pub(super) async fn login_page(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<(CookieJar, Markup), PageError> {
    let lang = Lang::from_headers(&headers);
    let token = auth::new_secret().page(lang)?;
    let jar = jar.add(cookie(&state, LOGIN_CSRF_COOKIE, token.clone(), 3600));
    let page = html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head { meta charset="utf-8"; title { (lang.t("登录", "Log in")) " · fieldsync" } style { (PreEscaped(CSS)) } }
            body { main {
                h1 { (lang.t("fieldsync 办公室登录", "fieldsync office login")) }
                @if query.error.is_some() { p.error #login-error { (lang.t("用户名或密码错误", "Wrong user or password")) } }
                form.card method="post" action="/login" {
                    input type="hidden" name="csrf" value=(token);
                    p { label { (lang.t("用户名", "User")) br; input name="user" autocomplete="username" required; } }
                    p { label { (lang.t("密码", "Password")) br; input name="password" type="password" autocomplete="current-password" required; } }
                    button type="submit" #login { (lang.t("登录", "Log in")) }
                }
                p { (lang.switch_link()) }
            } }
        }
    };
    Ok((jar, page))
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    user: String,
    password: String,
}

pub(super) async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let lang = Lang::from_headers(&headers);
    let expected = jar.get(LOGIN_CSRF_COOKIE).map(|c| c.value().to_string());
    // An empty cookie matches an empty field; an empty token is no token.
    if !expected.is_some_and(|e| !e.is_empty() && auth::same_secret(&e, &form.csrf)) {
        return Err(PageError(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token; reload the login page",
            ),
            lang,
        ));
    }
    let user_id = form.user.trim().to_string();
    let attempt = match state.logins.begin(&user_id, peer.ip(), Instant::now()) {
        Ok(attempt) => attempt,
        Err(wait) => {
            tracing::warn!(user = %user_id, peer = %peer, wait_s = wait.as_secs_f64(), "dashboard login refused: too many failures");
            return Ok(too_many_failures(lang, wait));
        }
    };
    let store = state.shared.store.clone();
    let id = user_id.clone();
    let checked = state
        .logins
        .hash(move || auth::check_password(&store, &id, &form.password))
        .await;
    let user = match checked {
        Ok(Ok(user)) => user,
        Ok(Err(AuthError::BadCredentials)) => {
            // Counted as failed when it began.
            tracing::info!(user = %user_id, peer = %peer, "dashboard login failed");
            return Ok((jar, Redirect::to("/login?error=1")).into_response());
        }
        Ok(Err(e)) => {
            state.logins.cancelled(&attempt);
            return Err(PageError(e.into(), lang));
        }
        Err(e @ HashError::Busy) => {
            state.logins.cancelled(&attempt);
            let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            return Ok(retry_after(
                PageError(error, lang).into_response(),
                Duration::ZERO,
            ));
        }
        Err(e @ HashError::Failed(_)) => {
            state.logins.cancelled(&attempt);
            let error = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            return Err(PageError(error, lang));
        }
    };
    state.logins.succeeded(&attempt, Instant::now());
    let store = state.shared.store.clone();
    let opened = blocking(move || {
        let now = chrono::Utc::now().timestamp();
        Ok(auth::open_session(&store, &user, now).map(|(secret, _)| (secret, user))?)
    })
    .await
    .page(lang)?;
    let (secret, user) = opened;
    tracing::info!(user = %user.id, peer = %peer, "dashboard login");
    let jar = jar
        .remove(Cookie::build(LOGIN_CSRF_COOKIE).path("/"))
        .add(cookie(
            &state,
            SESSION_COOKIE,
            secret,
            auth::SESSION_SECONDS,
        ));
    Ok((jar, Redirect::to("/records")).into_response())
}

/// 429 for a login that must wait `wait` before it may be tried again.
fn too_many_failures(lang: Lang, wait: Duration) -> Response {
    let secs = wait_secs(wait);
    let message = match lang {
        Lang::Zh => format!("登录失败次数过多，请 {secs} 秒后再试。"),
        Lang::En => format!("Too many failed logins; try again in {secs} s."),
    };
    let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message);
    retry_after(PageError(error, lang).into_response(), wait)
}

/// `wait` in whole seconds, rounded up, at least 1.
fn wait_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn retry_after(mut response: Response, wait: Duration) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait_secs(wait)));
    response
}

pub(super) async fn logout(
    State(state): State<AppState>,
    jar: CookieJar,
    page: PageStaff,
    Form(form): Form<CsrfForm>,
) -> Result<(CookieJar, Redirect), PageError> {
    page.staff.check_csrf(Some(&form.csrf)).page(page.lang)?;
    if let Credential::Session { secret, .. } = page.staff.credential {
        let store = state.shared.store.clone();
        blocking(move || Ok(auth::logout(&store, &secret)?))
            .await
            .page(page.lang)?;
    }
    Ok((
        jar.remove(Cookie::build(SESSION_COOKIE).path("/")),
        Redirect::to("/login"),
    ))
}
