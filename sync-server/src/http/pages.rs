//! The dashboard: server-rendered HTML pages in Chinese (zh-CN) by default, English on request.
//!
//! Plain HTML forms and CSS, no JavaScript. Every form carries the session's CSRF token (the
//! login form a double-submit token of its own). Pages read the same functions the JSON API
//! does; a form that changes something redirects back (post/redirect/get).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use fieldsync_proto::access::Role;
use fieldsync_proto::model::{self, FieldValue, Kind};
use fieldsync_proto::record::RecordView;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::{
    ApiError, AppState, Credential, HoursQuery, MAX_LIST, RecordQuery, SESSION_COOKIE, Staff,
    blocking, identify, parse_id,
};
use crate::auth;
use crate::office::{self, OfficeError, Verdict};
use crate::store::User;

/// The language cookie (`zh` or `en`).
const LANG_COOKIE: &str = "fs_lang";
/// The double-submit token of the login form.
const LOGIN_CSRF_COOKIE: &str = "fs_login_csrf";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/records") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/lang/{lang}", get(set_lang))
        .route("/records", get(records_page))
        .route("/records/{id}", get(record_page))
        .route("/review", get(review_page))
        .route("/review/{id}", post(review_form))
        .route("/conflicts", get(conflicts_page))
        .route("/resolve/{id}", post(resolve_form))
        .route("/hours", get(hours_page))
        .route("/villages", get(villages_page))
        .route("/devices", get(devices_page))
        .route("/devices/enroll", post(enroll_form))
        .route("/devices/{id}/revoke", post(revoke_form))
        .route("/users", get(users_page).post(add_user_form))
}

/// The page language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    fn from_headers(headers: &HeaderMap) -> Lang {
        match CookieJar::from_headers(headers)
            .get(LANG_COOKIE)
            .map(|c| c.value())
        {
            Some("en") => Lang::En,
            _ => Lang::Zh,
        }
    }

    /// The text in this language.
    fn t<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }
}

/// A logged-in user on a page, with the page language; anyone else is sent to the login page.
pub struct PageStaff {
    staff: Staff,
    lang: Lang,
}

/// Where a page request without a valid login goes.
pub enum PageRejection {
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
        match identify(state, &parts.headers) {
            Ok(Some(staff)) => Ok(PageStaff { staff, lang }),
            Ok(None) => Err(PageRejection::Login),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(PageRejection::Login),
            Err(e) => Err(PageRejection::Error(e, lang)),
        }
    }
}

/// A page failure shown as HTML with its status.
pub struct PageError(ApiError, Lang);

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
        html lang=(if lang == Lang::Zh { "zh-CN" } else { "en" }) {
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

trait PageResult<T> {
    fn page(self, lang: Lang) -> Result<T, PageError>;
}

impl<T, E: Into<ApiError>> PageResult<T> for Result<T, E> {
    fn page(self, lang: Lang) -> Result<T, PageError> {
        self.map_err(|e| PageError(e.into(), lang))
    }
}

const CSS: &str = r#"
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
fn layout(p: &PageStaff, title: &str, active: &str, body: Markup) -> Markup {
    let lang = p.lang;
    let is_admin = p.staff.user.role == Role::Admin;
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
        html lang=(if lang == Lang::Zh { "zh-CN" } else { "en" }) {
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
                        @if lang == Lang::Zh { a href="/lang/en" { "English" } } @else { a href="/lang/zh" { "中文" } }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(p.staff.csrf());
                            button type="submit" { (lang.t("退出", "Log out")) }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn cookie(state: &AppState, name: &'static str, value: String, max_age: i64) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.secure_cookies)
        .max_age(time_duration(max_age))
        .build()
}

fn time_duration(seconds: i64) -> cookie::time::Duration {
    cookie::time::Duration::seconds(seconds)
}

async fn set_lang(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    Path(lang): Path<String>,
) -> (CookieJar, Redirect) {
    let lang = if lang == "en" { "en" } else { "zh" };
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| {
            r.find("://")
                .and_then(|i| r[i + 3..].find('/').map(|j| r[i + 3 + j..].to_string()))
        })
        .filter(|path| path.starts_with('/') && !path.starts_with("//"))
        .unwrap_or_else(|| "/records".to_string());
    let jar = jar.add(cookie(&state, LANG_COOKIE, lang.to_string(), 365 * 86400));
    (jar, Redirect::to(&back))
}

#[derive(Deserialize)]
struct LoginQuery {
    error: Option<String>,
}

async fn login_page(
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
        html lang=(if lang == Lang::Zh { "zh-CN" } else { "en" }) {
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
                p { @if lang == Lang::Zh { a href="/lang/en" { "English" } } @else { a href="/lang/zh" { "中文" } } }
            } }
        }
    };
    Ok((jar, page))
}

#[derive(Deserialize)]
struct LoginForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    user: String,
    password: String,
}

async fn login(
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

#[derive(Deserialize)]
struct CsrfForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
}

async fn logout(
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

fn kind_label(lang: Lang, kind: &str) -> &'static str {
    match kind {
        "check_in" => {
            if lang == Lang::Zh {
                "志愿服务签到"
            } else {
                "Check-in"
            }
        }
        "village_visit" => {
            if lang == Lang::Zh {
                "走访记录"
            } else {
                "Village visit"
            }
        }
        "village_survey" => {
            if lang == Lang::Zh {
                "村情台账"
            } else {
                "Village survey"
            }
        }
        _ => "?",
    }
}

/// A field's Chinese name (DESIGN.md's field names stay the contract, shown beside it).
fn field_label_zh(field: &str) -> Option<&'static str> {
    Some(match field {
        "volunteer_id" => "志愿者编号",
        "volunteer_name" => "志愿者",
        "team" => "队伍",
        "activity" => "活动",
        "place" => "地点",
        "lat" => "纬度",
        "lon" => "经度",
        "accuracy_m" => "定位精度(米)",
        "started_at" => "开始时间",
        "ended_at" => "结束时间",
        "hours" => "时长(小时)",
        "note" => "备注",
        "status" => "状态",
        "review_note" => "审核意见",
        "reviewed_by" => "审核人",
        "device_time" => "手机时间",
        "village" => "村",
        "household" => "农户",
        "visitors" => "走访人",
        "visited_at" => "走访时间",
        "findings" => "发现问题",
        "needs" => "需求",
        "follow_ups" => "后续跟进",
        "road_km_hardened" => "硬化道路(公里)",
        "all_roads_hardened" => "道路全部硬化",
        "bus_service" => "通客车",
        "tap_water_pct" => "自来水普及率(%)",
        "electricity_pct" => "通电率(%)",
        "tv_coverage_pct" => "电视覆盖率(%)",
        "broadband_mbps" => "宽带(Mbps)",
        "standard_clinic" => "标准化卫生室",
        "licensed_doctors" => "执业医生",
        "school_sports_facilities" => "学校体育设施",
        "collective_income_yuan" => "集体收入(元)",
        _ => return None,
    })
}

fn field_label(lang: Lang, field: &str) -> Markup {
    match (lang, field_label_zh(field)) {
        (Lang::Zh, Some(zh)) => html! { (zh) " " span.muted { (field) } },
        _ => html! { (field) },
    }
}

fn status_label(lang: Lang, status: &str) -> String {
    match status {
        "submitted" => lang.t("待审核", "submitted").to_string(),
        "confirmed" => lang.t("已确认", "confirmed").to_string(),
        "rejected" => lang.t("已驳回", "rejected").to_string(),
        other => other.to_string(),
    }
}

/// A short one-line summary of a record for lists.
fn summary(view: &RecordView) -> String {
    let keys: &[&str] = match view.kind.as_str() {
        "check_in" => &["volunteer_name", "activity", "place"],
        "village_visit" => &["village", "household", "findings"],
        _ => &["village", "note"],
    };
    keys.iter()
        .filter_map(|k| view.field(k).map(FieldValue::to_cell))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" · ")
}

fn record_rows(lang: Lang, records: &[RecordView]) -> Markup {
    html! {
        table #records {
            tr {
                th { (lang.t("类型", "Kind")) } th { (lang.t("范围", "Scope")) } th { (lang.t("日期", "Date")) }
                th { (lang.t("内容", "Summary")) } th { (lang.t("时长", "Hours")) } th { (lang.t("状态", "Status")) } th { (lang.t("冲突", "Conflicts")) }
            }
            @for r in records {
                tr class=[(!r.conflicts.is_empty()).then_some("conflict")] {
                    td { a href={"/records/" (r.id)} { (kind_label(lang, &r.kind)) } }
                    td { (r.scope) }
                    td { (office::record_day(r).unwrap_or("")) }
                    td { (summary(r)) }
                    td { (r.field("hours").map(FieldValue::to_cell).unwrap_or_default()) }
                    td { (r.text("status").map(|s| status_label(lang, s)).unwrap_or_default()) }
                    td { (r.conflicts.keys().cloned().collect::<Vec<_>>().join(", ")) }
                }
            }
        }
    }
}

async fn records_page(
    State(state): State<AppState>,
    page: PageStaff,
    Query(query): Query<RecordQuery>,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let filter = query.filter().page(lang)?;
    let store = state.shared.store.clone();
    let f = filter.clone();
    let records = blocking(move || Ok(office::find_records(&store, &f, MAX_LIST)?))
        .await
        .page(lang)?;
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let kind = v(&query.kind);
    let export_kind = if kind.is_empty() {
        String::new()
    } else {
        format!("kind={kind}&")
    };
    let body = html! {
        form.filters method="get" action="/records" {
            label { (lang.t("类型", "Kind")) select name="kind" {
                option value="" { (lang.t("全部", "all")) }
                @for k in Kind::ALL { option value=(k.as_str()) selected[kind == k.as_str()] { (kind_label(lang, k.as_str())) } }
            } }
            label { (lang.t("范围", "Scope")) input name="scope" value=(v(&query.scope)) placeholder="team:7 / village:3"; }
            label { (lang.t("状态", "Status")) select name="status" {
                option value="" { (lang.t("全部", "all")) }
                @for s in model::STATUSES { option value=(s) selected[query.status.as_deref() == Some(s)] { (status_label(lang, s)) } }
            } }
            label { (lang.t("从", "From")) input type="date" name="from" value=(v(&query.from)); }
            label { (lang.t("到", "To")) input type="date" name="to" value=(v(&query.to)); }
            label { (lang.t("搜索", "Text")) input name="q" value=(v(&query.q)); }
            button type="submit" { (lang.t("筛选", "Filter")) }
        }
        p {
            (records.len()) " " (lang.t("条记录", "records"))
            @if records.len() >= MAX_LIST { " " span.muted { (lang.t("（只显示前 5000 条，请缩小筛选范围）", "(first 5000 shown; narrow the filter)")) } }
            " · " a #export-csv href={"/export?" (export_kind) "format=csv"} { (lang.t("导出 Excel (CSV)", "Export to Excel (CSV)")) }
            " · " a href={"/export?" (export_kind) "format=json"} { (lang.t("导出 JSON", "Export JSON")) }
        }
        (record_rows(lang, &records))
    };
    Ok(layout(&page, lang.t("记录", "Records"), "/records", body))
}

fn time_text(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

async fn record_page(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let id = parse_id(&id).page(lang)?;
    let store = state.shared.store.clone();
    let (view, history) = blocking(move || {
        let view = store.record_view(id)?.ok_or(OfficeError::NotFound(id))?;
        Ok((view, office::history(&store, id)?.unwrap_or_default()))
    })
    .await
    .page(lang)?;
    let can_act = page.staff.user.role == Role::Office;
    let body = html! {
        p { (kind_label(lang, &view.kind)) " · " code { (view.scope) } " · " code { (view.id) } }
        table #fields {
            tr { th { (lang.t("字段", "Field")) } th { (lang.t("值", "Value")) } }
            @for (name, value) in &view.fields {
                tr class=[view.conflicts.contains_key(name).then_some("conflict")] {
                    td { (field_label(lang, name)) }
                    td {
                        @if let Some(all) = view.conflicts.get(name) {
                            strong { (lang.t("冲突：", "Conflict: ")) }
                            (all.iter().map(FieldValue::to_cell).collect::<Vec<_>>().join(" | "))
                        } @else if name == "status" {
                            (status_label(lang, &value.to_cell()))
                        } @else { (value.to_cell()) }
                    }
                }
            }
        }
        @if can_act && view.kind == "check_in" { (review_controls(&page, &view)) }
        @if can_act && !view.conflicts.is_empty() { (resolve_controls(&page, &view)) }
        h2 { (lang.t("修改历史", "History")) }
        table #history {
            tr {
                th { (lang.t("设备时间", "Device time")) } th { (lang.t("服务器接收", "Received")) }
                th { (lang.t("用户", "User")) } th { (lang.t("设备", "Device")) } th { (lang.t("字段", "Fields")) }
            }
            @for h in &history {
                tr {
                    td { (time_text(h.device_time)) }
                    td {
                        (h.received_at.map(time_text).unwrap_or_default())
                        @if h.clock_flagged {
                            br; span.flag { (lang.t("⚠ 设备时钟偏差 ", "⚠ device clock off by ")) (h.clock_gap.map(|g| format!("{:.1} h", g as f64 / 3600.0)).unwrap_or_default()) }
                        }
                    }
                    td { (h.user_name.clone().or(h.user_id.clone()).unwrap_or_default()) }
                    td { code { (h.device_id.as_deref().map(|d| d.get(..16).unwrap_or(d)).unwrap_or("?")) } }
                    td { (h.fields.join(", ")) }
                }
            }
        }
    };
    Ok(layout(&page, &summary(&view), "/records", body))
}

fn review_controls(page: &PageStaff, view: &RecordView) -> Markup {
    let lang = page.lang;
    html! {
        form.card.review method="post" action={"/review/" (view.id)} {
            input type="hidden" name="csrf" value=(page.staff.csrf());
            label { (lang.t("审核意见", "Note")) " " input name="note" value=(view.text("review_note").unwrap_or("")); }
            " "
            button type="submit" name="status" value="confirmed" class="confirm" { (lang.t("确认", "Confirm")) }
            " "
            button type="submit" name="status" value="rejected" class="reject" { (lang.t("驳回", "Reject")) }
        }
    }
}

fn resolve_controls(page: &PageStaff, view: &RecordView) -> Markup {
    let lang = page.lang;
    html! {
        @for (field, values) in &view.conflicts {
            form.card.resolve method="post" action={"/resolve/" (view.id)} data-field=(field) {
                input type="hidden" name="csrf" value=(page.staff.csrf());
                input type="hidden" name="field" value=(field);
                strong { (field_label(lang, field)) } " "
                // Nothing is chosen in advance: the concurrent values come in no meaningful
                // order, and a value typed under "other" must not quietly keep another value
                // because "other" was not also clicked. The browser asks for a choice.
                @for value in values {
                    label { input type="radio" name="pick" value=(value.to_json().to_string()) required; " " (value.to_cell()) } " "
                }
                label { input type="radio" name="pick" value="__typed" required; " " (lang.t("其他：", "Other: ")) input name="typed"; }
                " " button type="submit" { (lang.t("以此为准", "Keep this value")) }
            }
        }
    }
}

#[derive(Deserialize)]
struct ReviewForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    status: String,
    #[serde(default)]
    note: String,
    /// Where to go afterwards (the review queue or the record).
    back: Option<String>,
}

async fn review_form(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    let id = page.staff.office_change(Some(&form.csrf), &id).page(lang)?;
    let verdict = Verdict::parse(&form.status).page(lang)?;
    let user = page.staff.user.clone();
    blocking(move || {
        let now = chrono::Utc::now().timestamp();
        Ok(office::review(
            &state.shared,
            &user,
            id,
            verdict,
            &form.note,
            now,
        )?)
    })
    .await
    .page(lang)?;
    Ok(Redirect::to(&local_path(
        form.back.as_deref(),
        &format!("/records/{id}"),
    )))
}

/// A same-site path to go back to, or `fallback`.
fn local_path(back: Option<&str>, fallback: &str) -> String {
    back.filter(|b| b.starts_with('/') && !b.starts_with("//"))
        .unwrap_or(fallback)
        .to_string()
}

async fn review_page(State(state): State<AppState>, page: PageStaff) -> Result<Markup, PageError> {
    let lang = page.lang;
    let store = state.shared.store.clone();
    let filter = office::RecordFilter {
        kind: Some(Kind::CheckIn),
        status: Some("submitted".into()),
        ..Default::default()
    };
    let records = blocking(move || Ok(office::find_records(&store, &filter, MAX_LIST)?))
        .await
        .page(lang)?;
    let can_act = page.staff.user.role == Role::Office;
    let body = html! {
        p { (records.len()) " " (lang.t("条待审核的签到", "check-ins waiting for review")) }
        table #review-queue {
            tr {
                th { (lang.t("志愿者", "Volunteer")) } th { (lang.t("活动", "Activity")) } th { (lang.t("地点", "Place")) }
                th { (lang.t("开始", "Start")) } th { (lang.t("时长", "Hours")) } th { (lang.t("审核", "Review")) }
            }
            @for r in &records {
                tr data-id=(r.id) {
                    td { a href={"/records/" (r.id)} { (r.text("volunteer_name").unwrap_or("?")) } }
                    td { (r.text("activity").unwrap_or("")) }
                    td { (r.text("place").unwrap_or("")) }
                    td { (r.text("started_at").unwrap_or("")) }
                    td { (r.field("hours").map(FieldValue::to_cell).unwrap_or_default()) }
                    td {
                        @if can_act {
                            form.inline.review method="post" action={"/review/" (r.id)} {
                                input type="hidden" name="csrf" value=(page.staff.csrf());
                                input type="hidden" name="back" value="/review";
                                input name="note" placeholder=(lang.t("审核意见", "note"));
                                " " button type="submit" name="status" value="confirmed" class="confirm" { (lang.t("确认", "Confirm")) }
                                " " button type="submit" name="status" value="rejected" class="reject" { (lang.t("驳回", "Reject")) }
                            }
                        } @else { span.muted { (lang.t("仅办公室人员可审核", "office staff review")) } }
                    }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("待审核签到", "Review queue"),
        "/review",
        body,
    ))
}

async fn conflicts_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let store = state.shared.store.clone();
    let filter = office::RecordFilter {
        conflicted: true,
        ..Default::default()
    };
    let records = blocking(move || Ok(office::find_records(&store, &filter, MAX_LIST)?))
        .await
        .page(lang)?;
    let can_act = page.staff.user.role == Role::Office;
    let body = html! {
        p { (records.len()) " " (lang.t("条记录存在冲突值", "records hold conflicting values")) }
        @for r in &records {
            div.card.conflicted data-id=(r.id) {
                p { a href={"/records/" (r.id)} { (kind_label(lang, &r.kind)) " · " (summary(r)) } " " span.muted { (r.scope) } }
                @if can_act { (resolve_controls(&page, r)) } @else {
                    @for (field, values) in &r.conflicts {
                        p { strong { (field_label(lang, field)) } ": " (values.iter().map(FieldValue::to_cell).collect::<Vec<_>>().join(" | ")) }
                    }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("冲突值", "Conflicts"),
        "/conflicts",
        body,
    ))
}

#[derive(Deserialize)]
struct ResolveForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    field: String,
    pick: String,
    #[serde(default)]
    typed: String,
}

async fn resolve_form(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    let id = page.staff.office_change(Some(&form.csrf), &id).page(lang)?;
    let store = state.shared.store.clone();
    let kind = store
        .record_view(id)
        .page(lang)?
        .ok_or(OfficeError::NotFound(id))
        .page(lang)?
        .kind
        .parse::<Kind>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
        .page(lang)?;
    // A picked value is the JSON of one of the concurrent values; a typed one is read by the
    // field's type, as the command line reads it.
    let value = if form.pick == "__typed" {
        let spec = kind
            .schema()
            .field(&form.field)
            .ok_or_else(|| ApiError::bad_request(format!("{kind} has no field `{}`", form.field)))
            .page(lang)?;
        model::parse_input(spec, form.typed.trim())
            .map_err(|e| ApiError::bad_request(e.to_string()))
            .page(lang)?
            .to_json()
    } else {
        serde_json::from_str(&form.pick)
            .map_err(|e| ApiError::bad_request(format!("bad value: {e}")))
            .page(lang)?
    };
    let user = page.staff.user.clone();
    blocking(move || {
        let now = chrono::Utc::now().timestamp();
        Ok(office::resolve(
            &state.shared,
            &user,
            id,
            &form.field,
            &value,
            now,
        )?)
    })
    .await
    .page(lang)?;
    Ok(Redirect::to("/conflicts"))
}

async fn hours_page(
    State(state): State<AppState>,
    page: PageStaff,
    Query(query): Query<HoursQuery>,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let (by, month) = query.parse().page(lang)?;
    let store = state.shared.store.clone();
    let m = month.clone();
    let rows = blocking(move || Ok(office::hours(&store, by, m.as_deref())?))
        .await
        .page(lang)?;
    let team = by == office::HoursBy::Team;
    let body = html! {
        form.filters method="get" action="/hours" {
            label { (lang.t("按", "By")) select name="by" {
                option value="volunteer" selected[!team] { (lang.t("志愿者", "volunteer")) }
                option value="team" selected[team] { (lang.t("队伍", "team")) }
            } }
            label { (lang.t("月份", "Month")) input type="month" name="month" value=(month.clone().unwrap_or_default()); }
            button type="submit" { (lang.t("查看", "Show")) }
        }
        p.muted { (lang.t("只有已确认的签到计入“已确认”时长；待审核的计入“待审核”，已驳回的不计入。", "Only confirmed check-ins count as confirmed hours; submitted ones are pending; rejected ones count nowhere.")) }
        table #hours {
            tr {
                th { (if team { lang.t("队伍", "Team") } else { lang.t("志愿者", "Volunteer") }) }
                th { (lang.t("月份", "Month")) } th { (lang.t("已确认（小时）", "Confirmed (h)")) }
                th { (lang.t("待审核（小时）", "Pending (h)")) } th { (lang.t("已驳回（小时）", "Rejected (h)")) } th { (lang.t("签到次数", "Check-ins")) }
            }
            @for r in &rows {
                tr {
                    td { (r.name) " " span.muted { (r.key) } }
                    td { (r.month) } td { (r.confirmed) } td { (r.pending) } td { (r.rejected) } td { (r.check_ins) }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("志愿服务时长", "Volunteer hours"),
        "/hours",
        body,
    ))
}

async fn villages_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let store = state.shared.store.clone();
    let rows = blocking(move || Ok(office::villages(&store)?))
        .await
        .page(lang)?;
    let columns: [(&str, &str, &str); 11] = [
        ("road_km_hardened", "硬化道路(km)", "Roads hardened (km)"),
        ("all_roads_hardened", "村村通硬化", "All roads hardened"),
        ("bus_service", "通客车", "Bus"),
        ("tap_water_pct", "自来水(%)", "Tap water (%)"),
        ("electricity_pct", "通电(%)", "Electricity (%)"),
        ("tv_coverage_pct", "电视(%)", "TV (%)"),
        ("broadband_mbps", "宽带(Mbps)", "Broadband (Mbps)"),
        ("standard_clinic", "标准化卫生室", "Clinic"),
        ("licensed_doctors", "执业医生", "Doctors"),
        ("school_sports_facilities", "学校体育设施", "School sports"),
        (
            "collective_income_yuan",
            "集体收入(元)",
            "Collective income (¥)",
        ),
    ];
    let body = html! {
        table #villages {
            tr {
                th { (lang.t("村", "Village")) }
                @for (_, zh, en) in &columns { th { (lang.t(zh, en)) } }
                th { (lang.t("最近走访", "Last visit")) } th { (lang.t("走访次数", "Visits")) }
            }
            @for r in &rows {
                tr {
                    td {
                        @if let Some(s) = &r.survey { a href={"/records/" (s.id)} { (r.village) } } @else { (r.village) }
                        " " span.muted { (r.scope) }
                    }
                    @for (field, _, _) in &columns {
                        @let conflicted = r.conflicts.iter().any(|c| c == field);
                        td class=[conflicted.then_some("conflict")] {
                            (r.survey.as_ref().and_then(|s| s.field(field)).map(FieldValue::to_cell).unwrap_or_default())
                            @if conflicted { " " span.flag title=(lang.t("存在冲突值", "conflicting values")) { "⚠" } }
                        }
                    }
                    td { (r.last_visit.clone().unwrap_or_default()) }
                    td { (r.visits) }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("村情台账", "Village indicators"),
        "/villages",
        body,
    ))
}

async fn devices_page(State(state): State<AppState>, page: PageStaff) -> Result<Markup, PageError> {
    let body = devices_body(&state, &page, None).page(page.lang)?;
    Ok(layout(
        &page,
        page.lang.t("设备", "Devices"),
        "/devices",
        body,
    ))
}

/// A freshly issued enrollment code, shown once.
struct IssuedCode {
    user: User,
    code: String,
    payload: String,
    expires_at: i64,
}

fn devices_body(
    state: &AppState,
    page: &PageStaff,
    issued: Option<&IssuedCode>,
) -> Result<Markup, ApiError> {
    let lang = page.lang;
    let is_admin = page.staff.user.role == Role::Admin;
    let devices = state.shared.store.devices()?;
    let users: BTreeMap<String, User> = state
        .shared
        .store
        .users()?
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    Ok(html! {
        @if let Some(issued) = issued {
            div.card #enrollment {
                h2 { (lang.t("注册码", "Enrollment code")) }
                p { (issued.user.name) " (" (issued.user.id) ", " (issued.user.role) ") · "
                    (lang.t("有效至 ", "valid until ")) (time_text(issued.expires_at)) }
                p { (lang.t("注册码：", "Code: ")) code #code { (issued.code) } }
                p { (lang.t("服务器：", "Server: ")) code { (state.sync_addr) } " · " (lang.t("指纹：", "Fingerprint: ")) code { (state.fingerprint) } }
                div.qr { (PreEscaped(qr_svg(&issued.payload)?)) }
                p.muted { (lang.t("用手机扫码，或手动输入服务器地址、指纹和注册码。注册码只能使用一次。", "Scan with the phone, or type server, fingerprint and code. A code enrolls one device, once.")) }
            }
        }
        @if is_admin {
            form.card #enroll method="post" action="/devices/enroll" {
                h2 { (lang.t("注册新设备", "Enroll a device")) }
                input type="hidden" name="csrf" value=(page.staff.csrf());
                label { (lang.t("用户 ID ", "User id ")) input name="user" required; } " "
                label { (lang.t("姓名 ", "Name ")) input name="name" required; } " "
                label { (lang.t("角色 ", "Role ")) select name="role" {
                    option value="volunteer" { (lang.t("志愿者", "volunteer")) }
                    option value="village" { (lang.t("驻村工作队", "village team")) }
                } } " "
                label { (lang.t("范围 ", "Scopes ")) input name="scopes" placeholder="team:7 village:3" required; } " "
                label { (lang.t("有效期（小时）", "Valid (hours) ")) input name="hours" type="number" value="24" min="1" max="720"; } " "
                button type="submit" { (lang.t("生成注册码", "Issue code")) }
            }
        }
        table #devices {
            tr {
                th { (lang.t("设备", "Device")) } th { (lang.t("用户", "User")) } th { (lang.t("注册时间", "Enrolled")) }
                th { (lang.t("最近同步", "Last sync")) } th { (lang.t("状态", "State")) }
            }
            @for d in &devices {
                tr data-device=(d.device_id) {
                    td { code { (d.device_id) } }
                    td { (users.get(&d.user_id).map_or(d.user_id.as_str(), |u| u.name.as_str())) " " span.muted { (d.user_id) } }
                    td { (time_text(d.enrolled_at)) }
                    td { (d.last_sync.map(time_text).unwrap_or_else(|| lang.t("从未", "never").to_string())) }
                    td {
                        @if d.revoked { span.error { (lang.t("已吊销", "revoked")) } }
                        @else if is_admin {
                            form.inline method="post" action={"/devices/" (d.device_id) "/revoke"} {
                                input type="hidden" name="csrf" value=(page.staff.csrf());
                                button type="submit" class="revoke" { (lang.t("吊销", "Revoke")) }
                            }
                        } @else { span.ok { (lang.t("正常", "active")) } }
                    }
                }
            }
        }
    })
}

fn qr_svg(payload: &str) -> Result<String, ApiError> {
    let code = qrcode::QrCode::new(payload.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .build())
}

#[derive(Deserialize)]
struct EnrollForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    user: String,
    name: String,
    role: String,
    scopes: String,
    hours: Option<i64>,
}

/// Checks an admin form's CSRF token and the user's role, and reads its `role` field.
fn admin_form_role(page: &PageStaff, csrf: &str, role: &str) -> Result<Role, PageError> {
    page.staff.check_csrf(Some(csrf)).page(page.lang)?;
    page.staff.require(Role::Admin).page(page.lang)?;
    role.parse()
        .map_err(|_| ApiError::bad_request(format!("unknown role `{role}`")))
        .page(page.lang)
}

async fn enroll_form(
    State(state): State<AppState>,
    page: PageStaff,
    headers: HeaderMap,
    Form(form): Form<EnrollForm>,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let role = admin_form_role(&page, &form.csrf, &form.role)?;
    if !matches!(role, Role::Volunteer | Role::Village) {
        return Err(PageError(
            ApiError::bad_request("devices are enrolled for volunteers and village teams"),
            lang,
        ));
    }
    let scopes: Vec<String> = form.scopes.split_whitespace().map(str::to_string).collect();
    let user = User {
        id: form.user.trim().to_string(),
        name: form.name.trim().to_string(),
        role,
        scopes,
    };
    let hours = form.hours.unwrap_or(24);
    let issued = crate::enrollment::issue(&state.shared.store, &user, hours * 3600)
        .map_err(ApiError::bad_request)
        .page(lang)?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_string());
    let server = crate::enrollment::server_address(state.sync_addr, host.as_deref());
    let issued = IssuedCode {
        payload: crate::enrollment::qr_payload(&server, &state.fingerprint, &issued.code),
        code: issued.code,
        expires_at: issued.expires_at,
        user,
    };
    tracing::info!(user = %issued.user.id, "enrollment code issued from the dashboard");
    let body = devices_body(&state, &page, Some(&issued)).page(lang)?;
    Ok(layout(&page, lang.t("设备", "Devices"), "/devices", body))
}

async fn revoke_form(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    page.staff.check_csrf(Some(&form.csrf)).page(lang)?;
    page.staff.require(Role::Admin).page(lang)?;
    super::revoke_device(&state, &id).page(lang)?;
    Ok(Redirect::to("/devices"))
}

async fn users_page(State(state): State<AppState>, page: PageStaff) -> Result<Markup, PageError> {
    let lang = page.lang;
    page.staff.require(Role::Admin).page(lang)?;
    let users = state.shared.store.users().page(lang)?;
    let body = html! {
        form.card #add-user method="post" action="/users" {
            h2 { (lang.t("添加办公室或管理员账号", "Add an office or admin account")) }
            input type="hidden" name="csrf" value=(page.staff.csrf());
            label { (lang.t("用户 ID ", "User id ")) input name="user" required; } " "
            label { (lang.t("姓名 ", "Name ")) input name="name" required; } " "
            label { (lang.t("角色 ", "Role ")) select name="role" {
                option value="office" { (lang.t("办公室", "office")) }
                option value="admin" { (lang.t("管理员", "admin")) }
            } } " "
            label { (lang.t("密码 ", "Password ")) input name="password" type="password" minlength="8" required; } " "
            button type="submit" { (lang.t("添加", "Add")) }
        }
        table #users {
            tr { th { "ID" } th { (lang.t("姓名", "Name")) } th { (lang.t("角色", "Role")) } th { (lang.t("范围", "Scopes")) } }
            @for u in &users {
                tr { td { (u.id) } td { (u.name) } td { (u.role) } td { (u.scopes.join(" ")) } }
            }
        }
    };
    Ok(layout(&page, lang.t("用户", "Users"), "/users", body))
}

#[derive(Deserialize)]
struct AddUserForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    user: String,
    name: String,
    role: String,
    password: String,
}

async fn add_user_form(
    State(state): State<AppState>,
    page: PageStaff,
    Form(form): Form<AddUserForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    let role = admin_form_role(&page, &form.csrf, &form.role)?;
    let user = User {
        id: form.user.trim().to_string(),
        name: form.name.trim().to_string(),
        role,
        scopes: Vec::new(),
    };
    let store = state.shared.store.clone();
    blocking(move || Ok(auth::add_staff(&store, &user, &form.password)?))
        .await
        .page(lang)?;
    Ok(Redirect::to("/users"))
}
