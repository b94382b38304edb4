//! Office and admin accounts (admin only).
//!
//! Adding an account whose user id exists with another role or other scopes is refused (409)
//! unless the form's "replace" box is ticked, as `user add` needs `--replace`: that user's
//! enrolled phones would act with the new role.

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::Redirect;
use fieldsync_proto::access::Role;
use fieldsync_proto::scope::{self, Scope};
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::{Lang, role_label};
use super::layout::{PageError, PageResult, PageStaff, layout};
use crate::auth;
use crate::http::{ApiError, AppState, blocking};
use crate::store::User;

pub(super) async fn users_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    page.staff.require(Role::Admin).page(lang)?;
    let store = state.shared.store.clone();
    let users = blocking(move || Ok(store.users()?)).await.page(lang)?;
    let body = html! {
        form.card #add-user method="post" action="/users" {
            h2 { (lang.t("添加办公室或管理员账号", "Add an office or admin account")) }
            (page.csrf_field())
            (user_fields(lang, &[Role::Office, Role::Admin]))
            label { (lang.t("密码 ", "Password ")) input name="password" type="password" minlength="8" required; } " "
            label title=(lang.t("已有同名用户且角色或范围不同时，替换该用户（其设备随之改变权限）", "if the user id exists with another role or other scopes, replace it (its devices change with it)")) {
                input name="replace" type="checkbox" value="1"; " " (lang.t("替换已有用户", "replace an existing user"))
            } " "
            button type="submit" { (lang.t("添加", "Add")) }
        }
        table #users {
            tr { th { "ID" } th { (lang.t("姓名", "Name")) } th { (lang.t("角色", "Role")) } th { (lang.t("范围", "Scopes")) } }
            @for u in &users {
                tr { td { (u.id) } td { (u.name) } td { (u.role) } td { (scope::join(&u.scopes, " ")) } }
            }
        }
    };
    Ok(layout(&page, lang.t("用户", "Users"), "/users", body))
}

#[derive(Deserialize)]
pub(super) struct AddUserForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    user: String,
    name: String,
    role: String,
    password: String,
    /// Ticked: replace a user of the same id with another role or other scopes.
    #[serde(default)]
    replace: Option<String>,
}

pub(super) async fn add_user_form(
    State(state): State<AppState>,
    page: PageStaff,
    Form(form): Form<AddUserForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    let user = admin_form_user(&page, &form.csrf, &form.user, &form.name, &form.role, "")?;
    let store = state.shared.store.clone();
    let replace = form.replace.is_some();
    // Hashing the new password is argon2 work like a login's: it takes a hasher too.
    let added = state
        .logins
        .hash(move || auth::add_or_replace_staff(&store, &user, &form.password, replace))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        .page(lang)?
        .page(lang)?;
    tracing::info!(user = %page.staff.user.id, added = ?added, "dashboard account added");
    Ok(Redirect::to("/users"))
}

/// The fields that name a new user in both admin forms (an account here, a device's user on
/// the devices page), offering `roles`.
pub(super) fn user_fields(lang: Lang, roles: &[Role]) -> Markup {
    html! {
        label { (lang.t("用户 ID ", "User id ")) input name="user" required; } " "
        label { (lang.t("姓名 ", "Name ")) input name="name" required; } " "
        label { (lang.t("角色 ", "Role ")) select name="role" {
            @for role in roles { option value=(role.as_str()) { (role_label(lang, *role)) } }
        } } " "
    }
}

/// Admits an admin form ([`Staff::admin_change`](crate::http::Staff::admin_change)) and reads
/// the user it names in its [`user_fields`], with `scopes` separated by white space.
pub(super) fn admin_form_user(
    page: &PageStaff,
    csrf: &str,
    id: &str,
    name: &str,
    role: &str,
    scopes: &str,
) -> Result<User, PageError> {
    let lang = page.lang;
    page.staff.admin_change(Some(csrf)).page(lang)?;
    let role = role
        .parse()
        .map_err(|_| ApiError::bad_request(format!("unknown role `{role}`")))
        .page(lang)?;
    let scopes = scopes
        .split_whitespace()
        .map(str::parse::<Scope>)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
        .page(lang)?;
    Ok(User {
        id: id.trim().to_string(),
        name: name.trim().to_string(),
        role,
        scopes,
    })
}
