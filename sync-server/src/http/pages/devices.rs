//! Enrolled devices and their revocation, and enrollment codes.
//!
//! A code is shown once, as text and as a QR code the phone scans. The form that issues it
//! redirects (post/redirect/get) to the devices page, which shows the code it finds waiting
//! for the session ([`crate::http::flash`]) and forgets it: reloading either page never
//! issues another code, and the code is not shown again.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Redirect;
use fieldsync_proto::access::Role;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::layout::{CsrfForm, PageError, PageResult, PageStaff, layout, time_text};
use super::users::{admin_form_user, user_fields};
use crate::http::{ApiError, AppState, Credential, blocking, revoke_device};
use crate::store::{Device, User};

pub(super) async fn devices_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let issued = state.issued.take(&flash_key(&page), Instant::now());
    let store = state.shared.store.clone();
    let (devices, users) = blocking(move || Ok((store.devices()?, store.users()?)))
        .await
        .page(page.lang)?;
    let body = devices_body(&state, &page, issued.as_ref(), &devices, users).page(page.lang)?;
    Ok(layout(
        &page,
        page.lang.t("设备", "Devices"),
        "/devices",
        body,
    ))
}

/// A freshly issued enrollment code, shown once.
pub(crate) struct IssuedCode {
    user: User,
    code: String,
    payload: String,
    expires_at: i64,
}

/// Whose issued code a page shows: the login session's (its CSRF token is as secret and as
/// unique as the session), or a token caller's user.
fn flash_key(page: &PageStaff) -> String {
    match &page.staff.credential {
        Credential::Session { session, .. } => format!("session:{}", session.csrf),
        Credential::Token => format!("token:{}", page.staff.user.id),
    }
}

fn devices_body(
    state: &AppState,
    page: &PageStaff,
    issued: Option<&IssuedCode>,
    devices: &[Device],
    users: Vec<User>,
) -> Result<Markup, ApiError> {
    let lang = page.lang;
    let is_admin = page.is_admin();
    let users: BTreeMap<String, User> = users.into_iter().map(|u| (u.id.clone(), u)).collect();
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
                (page.csrf_field())
                (user_fields(lang, &[Role::Volunteer, Role::Village]))
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
            @for d in devices {
                tr data-device=(d.device_id) {
                    td { code { (d.device_id) } }
                    td { (users.get(&d.user_id).map_or(d.user_id.as_str(), |u| u.name.as_str())) " " span.muted { (d.user_id) } }
                    td { (time_text(d.enrolled_at)) }
                    td { (d.last_sync.map(time_text).unwrap_or_else(|| lang.t("从未", "never").to_string())) }
                    td {
                        @if d.revoked { span.error { (lang.t("已吊销", "revoked")) } }
                        @else if is_admin {
                            form.inline method="post" action={"/devices/" (d.device_id) "/revoke"} {
                                (page.csrf_field())
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
pub(super) struct EnrollForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    user: String,
    name: String,
    role: String,
    scopes: String,
    hours: Option<i64>,
}

pub(super) async fn enroll_form(
    State(state): State<AppState>,
    page: PageStaff,
    headers: HeaderMap,
    Form(form): Form<EnrollForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    let user = admin_form_user(
        &page,
        &form.csrf,
        &form.user,
        &form.name,
        &form.role,
        &form.scopes,
    )?;
    if !matches!(user.role, Role::Volunteer | Role::Village) {
        return Err(PageError(
            ApiError::bad_request("devices are enrolled for volunteers and village teams"),
            lang,
        ));
    }
    // Saturating: an absurd number of hours is refused as out of range, not overflowed.
    let ttl_secs = form.hours.unwrap_or(24).saturating_mul(3600);
    let store = state.shared.store.clone();
    let for_user = user.clone();
    let issued = blocking(move || {
        crate::enrollment::issue(&store, &for_user, ttl_secs).map_err(ApiError::bad_request)
    })
    .await
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
    crate::oplog::office_action(
        &page.staff.user.id,
        "code_issued",
        &issued.user.id,
        &format!("role {}, expires {}", issued.user.role, issued.expires_at),
    );
    state.issued.put(&flash_key(&page), issued, Instant::now());
    Ok(Redirect::to("/devices"))
}

pub(super) async fn revoke_form(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    page.staff.admin_change(Some(&form.csrf)).page(lang)?;
    revoke_device(&state, &page.staff.user.id, &id)
        .await
        .page(lang)?;
    Ok(Redirect::to("/devices"))
}
