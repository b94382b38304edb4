//! Office and admin accounts (admin only).

use axum::extract::{Form, State};
use axum::response::Redirect;
use fieldsync_proto::access::Role;
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::role_label;
use super::layout::{PageError, PageResult, PageStaff, admin_form_role, layout};
use crate::auth;
use crate::http::{AppState, blocking};
use crate::store::User;

pub(super) async fn users_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    page.staff.require(Role::Admin).page(lang)?;
    let users = state.shared.store.users().page(lang)?;
    let body = html! {
        form.card #add-user method="post" action="/users" {
            h2 { (lang.t("添加办公室或管理员账号", "Add an office or admin account")) }
            (page.csrf_field())
            label { (lang.t("用户 ID ", "User id ")) input name="user" required; } " "
            label { (lang.t("姓名 ", "Name ")) input name="name" required; } " "
            label { (lang.t("角色 ", "Role ")) select name="role" {
                @for role in [Role::Office, Role::Admin] { option value=(role.as_str()) { (role_label(lang, role)) } }
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
pub(super) struct AddUserForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    user: String,
    name: String,
    role: String,
    password: String,
}

pub(super) async fn add_user_form(
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
