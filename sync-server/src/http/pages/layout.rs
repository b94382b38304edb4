//! What every page shares: the frame, who is asking, the error page, cookies.
//!
//! Beside those, the CSS and a few small helpers: a form's CSRF field, a safe way back, how
//! times read.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, SameSite};
use fieldsync_proto::access::Role;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::i18n::Lang;
use crate::http::{ApiError, AppState, Staff, identify};

/// A logged-in user on a page, with the page language; anyone else is sent to the login page.
pub(super) struct PageStaff {
    pub(super) staff: Staff,
    pub(super) lang: Lang,
}

impl PageStaff {
    /// Whether the user reviews and resolves (the office role); others see the same pages
    /// without those forms.
    pub(super) fn is_office(&self) -> bool {
        self.staff.user.role == Role::Office
    }

    /// Whether the user manages accounts and devices (the admin role).
    pub(super) fn is_admin(&self) -> bool {
        self.staff.user.role == Role::Admin
    }

    /// The hidden field that carries the session's CSRF token in every form that changes
    /// something.
    pub(super) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.staff.csrf()); }
    }
}

/// Where a page request without a valid login goes.
pub(super) enum PageRejection {
    Login,
    Error(ApiError, Lang),
}

impl IntoResponse for PageRejection {
    fn into_response(self) -> Response {
        match self {
            PageRejection::Login => Redirect::to("/login").into_response(),
            PageRejection::Error(e, lang) => error_page(e, lang),
        }
    }
}

impl FromRequestParts<AppState> for PageStaff {
    type Rejection = PageRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<PageStaff, PageRejection> {
        let lang = Lang::from_headers(&parts.headers);
        match identify(state, &parts.headers).await {
            Ok(Some(staff)) => Ok(PageStaff { staff, lang }),
            Ok(None) => Err(PageRejection::Login),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(PageRejection::Login),
            Err(e) => Err(PageRejection::Error(e, lang)),
        }
    }
}

/// A page failure shown as HTML with its status.
pub(super) struct PageError(pub(super) ApiError, pub(super) Lang);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0, self.1)
    }
}

fn error_page(e: ApiError, lang: Lang) -> Response {
    if e.status.is_server_error() {
        tracing::error!(status = %e.status, error = %e.message, "page failed");
    }
    let body = html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head { meta charset="utf-8"; title { "fieldsync" } style { (PreEscaped(CSS)) } }
            body { main {
                h1 { (lang.t("出错了", "Something went wrong")) }
                p.error { (e.message) }
                p { a href="javascript:history.back()" { (lang.t("返回", "Back")) } " · " a href="/records" { (lang.t("记录", "Records")) } }
            } }
        }
    };
    (e.status, body).into_response()
}

/// Turns any failure a handler meets into the error page in the page's language.
pub(super) trait PageResult<T> {
    fn page(self, lang: Lang) -> Result<T, PageError>;
}

impl<T, E: Into<ApiError>> PageResult<T> for Result<T, E> {
    fn page(self, lang: Lang) -> Result<T, PageError> {
        self.map_err(|e| PageError(e.into(), lang))
    }
}

pub(super) const CSS: &str = r#"
body{font-family:system-ui,"PingFang SC","Microsoft YaHei","Noto Sans CJK SC",sans-serif;margin:0;color:#1d2433;background:#f5f6f8}
nav{background:#9b1c1c;color:#fff;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:.9rem;align-items:center}
nav a{color:#fff;text-decoration:none}nav a.active{font-weight:700;text-decoration:underline}
nav .right{margin-left:auto;display:flex;gap:.7rem;align-items:center}
nav form{display:inline;margin:0}nav button{background:none;border:1px solid #fff;color:#fff;border-radius:3px;cursor:pointer}
main{padding:1rem 1.5rem;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid #d8dbe2;padding:.35rem .5rem;text-align:left;vertical-align:top;font-size:.92rem}
th{background:#eef0f4}.conflict{background:#fff4d6}.flag{color:#b42318;font-weight:700}.error{color:#b42318}
.ok{color:#067647}form.inline{display:inline}fieldset{border:1px solid #d8dbe2;background:#fff;margin:.5rem 0}
input,select,button{font:inherit;padding:.2rem .4rem}button{cursor:pointer}
.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:.8rem}.filters label{display:flex;flex-direction:column;font-size:.85rem}
.card{background:#fff;border:1px solid #d8dbe2;padding:.8rem;margin:.6rem 0}.muted{color:#667085;font-size:.85rem}
.qr svg{width:220px;height:220px}code{background:#eef0f4;padding:0 .2rem}
"#;

/// The page frame: navigation, language switch and logout.
pub(super) fn layout(p: &PageStaff, title: &str, active: &str, body: Markup) -> Markup {
    let lang = p.lang;
    let is_admin = p.is_admin();
    let links: Vec<(&str, &str)> = vec![
        ("/records", lang.t("记录", "Records")),
        ("/review", lang.t("待审核", "Review")),
        ("/conflicts", lang.t("冲突", "Conflicts")),
        ("/hours", lang.t("服务时长", "Hours")),
        ("/villages", lang.t("村情台账", "Villages")),
        ("/devices", lang.t("设备", "Devices")),
    ];
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fieldsync" }
                style { (PreEscaped(CSS)) }
            }
            body {
                nav {
                    strong { "fieldsync" }
                    @for (href, label) in &links {
                        a href=(href) class=[(active == *href).then_some("active")] { (label) }
                    }
                    @if is_admin {
                        a href="/users" class=[(active == "/users").then_some("active")] { (lang.t("用户", "Users")) }
                    }
                    span.right {
                        span { (p.staff.user.name) " (" (p.staff.user.role) ")" }
                        (lang.switch_link())
                        form method="post" action="/logout" {
                            (p.csrf_field())
                            button type="submit" { (lang.t("退出", "Log out")) }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A cookie only this site's own pages send back, over HTTPS unless told otherwise.
pub(super) fn cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    max_age: i64,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.secure_cookies)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
}

/// A form that carries nothing but the CSRF token.
#[derive(Deserialize)]
pub(super) struct CsrfForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    pub(super) csrf: String,
}

/// A same-site path to go back to, or `fallback`: never another site, so a crafted link or
/// referrer cannot send a logged-in user elsewhere.
///
/// Only a path that starts with one `/` passes. Browsers read `\` as `/` and drop tabs and
/// line breaks inside a URL, so `/\evil.example`, or `/` tab `/evil.example`, would be
/// `//evil.example`, another host: a backslash or a control character anywhere refuses the
/// path, as does `//` (and a scheme, which cannot follow a leading `/`).
pub(super) fn local_path(back: Option<&str>, fallback: &str) -> String {
    back.filter(|b| is_local_path(b))
        .unwrap_or(fallback)
        .to_string()
}

fn is_local_path(path: &str) -> bool {
    let mut chars = path.chars();
    chars.next() == Some('/')
        && !matches!(chars.next(), Some('/'))
        && !path.chars().any(|c| c == '\\' || c.is_control())
}

/// A Unix time as pages show it (UTC, to the second).
pub(super) fn time_text(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}
