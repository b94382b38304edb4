//! Logging in and out, and the language switch.
//!
//! These are what a visitor reaches before, or without, a login.
//!
//! The login form has no session yet to carry a CSRF token, so it gets a double-submit token:
//! a cookie and a hidden field that must match.

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Redirect;
use axum_extra::extract::cookie::{Cookie, CookieJar};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::i18n::{LANG_COOKIE, Lang};
use super::layout::{CSS, CsrfForm, PageError, PageResult, PageStaff, cookie, local_path};
use crate::auth;
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
    let back = local_path(referrer_path, "/records");
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
    jar: CookieJar,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<(CookieJar, Redirect), PageError> {
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
    let store = state.shared.store.clone();
    let result = blocking(move || {
        let now = chrono::Utc::now().timestamp();
        Ok(auth::login(&store, form.user.trim(), &form.password, now)?)
    })
    .await;
    match result {
        Ok((secret, user, _)) => {
            tracing::info!(user = %user.id, "dashboard login");
            let jar = jar
                .remove(Cookie::build(LOGIN_CSRF_COOKIE).path("/"))
                .add(cookie(
                    &state,
                    SESSION_COOKIE,
                    secret,
                    auth::SESSION_SECONDS,
                ));
            Ok((jar, Redirect::to("/records")))
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => Ok((jar, Redirect::to("/login?error=1"))),
        Err(e) => Err(PageError(e, lang)),
    }
}

pub(super) async fn logout(
    State(state): State<AppState>,
    jar: CookieJar,
    page: PageStaff,
    Form(form): Form<CsrfForm>,
) -> Result<(CookieJar, Redirect), PageError> {
    page.staff.check_csrf(Some(&form.csrf)).page(page.lang)?;
    if let Credential::Session { secret, .. } = &page.staff.credential {
        auth::logout(&state.shared.store, secret).page(page.lang)?;
    }
    Ok((
        jar.remove(Cookie::build(SESSION_COOKIE).path("/")),
        Redirect::to("/login"),
    ))
}
