//! The dashboard: server-rendered HTML pages in Chinese (zh-CN) by default, English on request.
//!
//! Plain HTML forms and CSS, no JavaScript. Every form carries the session's CSRF token (the
//! login form a double-submit token of its own). Pages read the same functions the JSON API
//! does; a form that changes something redirects back (post/redirect/get).
//!
//! Where each page lives:
//!
//! | module | serves |
//! | --- | --- |
//! | `login.rs` | `/login`, `/logout`, `/lang/{lang}` |
//! | `records.rs` | `/records` (list, filters, export links), `/records/{id}` (one record, history) |
//! | `review.rs` | `/review` (the queue), `POST /review/{id}` |
//! | `conflicts.rs` | `/conflicts`, `POST /resolve/{id}` |
//! | `hours.rs` | `/hours` |
//! | `villages.rs` | `/villages` (the indicator table) |
//! | `devices.rs` | `/devices`, `POST /devices/enroll` (redirects to the code and QR), `POST /devices/{id}/revoke` |
//! | `users.rs` | `/users` (list and add; admin only) |
//!
//! Beside them, `layout.rs` holds what every page shares (the frame, CSS, who is asking, the
//! error page, cookies) and `i18n.rs` the two languages and the names of kinds, statuses, roles
//! and fields. A form a page posts is handled in that page's module.

mod conflicts;
mod devices;
mod hours;
mod i18n;
mod layout;
mod login;
mod records;
mod review;
mod users;
mod villages;

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

use super::AppState;

pub(crate) use devices::IssuedCode;

/// The dashboard's routes, merged beside the API's by [`super::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/records") }))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/lang/{lang}", get(login::set_lang))
        .route("/records", get(records::records_page))
        .route("/records/{id}", get(records::record_page))
        .route("/review", get(review::review_page))
        .route("/review/{id}", post(review::review_form))
        .route("/conflicts", get(conflicts::conflicts_page))
        .route("/resolve/{id}", post(conflicts::resolve_form))
        .route("/hours", get(hours::hours_page))
        .route("/villages", get(villages::villages_page))
        .route("/devices", get(devices::devices_page))
        .route("/devices/enroll", post(devices::enroll_form))
        .route("/devices/{id}/revoke", post(devices::revoke_form))
        .route("/users", get(users::users_page).post(users::add_user_form))
}
