//! The office's HTTP side: the JSON API, streamed exports, `/metrics`, and the dashboard pages
//! (in [`pages`]), served beside the QUIC sync server from the same store.
//!
//! Who is asking: scripts send `Authorization: Bearer <token>`; browsers carry a login session
//! cookie. A request with a session cookie that changes anything must also carry the session's
//! CSRF token (a hidden form field, or the `X-CSRF-Token` header for API calls); a bearer token
//! cannot be sent by a browser on its own, so it needs none. Unauthenticated requests get 401,
//! the wrong role 403, bad input 400 with a message; none of them change anything.

pub mod conn;
mod download;
pub mod flash;
pub mod pages;
mod serve;
pub mod throttle;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::CookieJar;
use bytes::Bytes;
use fieldsync_proto::access::Role;
use fieldsync_proto::model::{Kind, Status};
use fieldsync_proto::record::RecordView;
use serde::Deserialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::auth::{self, AuthError};
use crate::office::{self, HoursBy, OfficeError, RecordFilter};
use crate::session::Shared;
use crate::store::{StoreError, User, WebSession};

/// The login session cookie.
pub const SESSION_COOKIE: &str = "fs_session";
/// Most records one list request returns.
pub const MAX_LIST: usize = 5_000;
/// Most bytes of a request body (forms and JSON are small).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
pub struct HttpState {
    pub shared: Arc<Shared>,
    /// The QUIC address devices are told to use in enrollment QR codes.
    pub sync_addr: SocketAddr,
    /// The server certificate's SHA-256, which devices pin.
    pub fingerprint: String,
    /// Whether cookies carry `Secure` (off only with `--insecure-cookies`, for plain HTTP on a
    /// trusted network; browsers accept secure cookies from `localhost` over plain HTTP).
    pub secure_cookies: bool,
}

/// What the handlers share: the server's [`HttpState`] and the dashboard's own guards.
pub struct App {
    pub http: Arc<HttpState>,
    /// Login attempt counts and the password hashers.
    pub logins: throttle::LoginGuard,
    /// Enrollment codes issued by a form, waiting for the page it redirects to.
    pub(crate) issued: flash::Flash<pages::IssuedCode>,
}

/// How long an issued enrollment code waits for the page that shows it.
const ISSUED_FLASH: Duration = Duration::from_secs(10 * 60);

impl App {
    pub fn new(http: Arc<HttpState>, limits: &conn::HttpLimits) -> App {
        App {
            http,
            logins: throttle::LoginGuard::new(limits.login),
            issued: flash::Flash::new(ISSUED_FLASH, 1024),
        }
    }
}

impl Deref for App {
    type Target = HttpState;

    fn deref(&self) -> &HttpState {
        &self.http
    }
}

type AppState = Arc<App>;

/// Serves the dashboard and the API on `listener` until `shutdown` turns true.
pub async fn run(
    listener: tokio::net::TcpListener,
    limits: conn::HttpLimits,
    state: Arc<HttpState>,
    shutdown: watch::Receiver<bool>,
) {
    let app = router(Arc::new(App::new(state, &limits)));
    let listener = conn::CappedListener::new(listener, &limits);
    serve::serve(listener, app, limits, shutdown).await;
}

/// Every route of the dashboard, the API, the export and the metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/records", get(api_records))
        .route("/api/records/{id}", get(api_record))
        .route("/api/records/{id}/review", post(api_review))
        .route("/api/records/{id}/resolve", post(api_resolve))
        .route("/api/hours", get(api_hours))
        .route("/api/villages", get(api_villages))
        .route("/api/devices", get(api_devices))
        .route("/api/devices/{id}/revoke", post(api_revoke))
        .route("/export", get(download::export_records))
        .route("/metrics", get(metrics))
        .merge(pages::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error answered as JSON `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "log in, or send `Authorization: Bearer <token>`",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "request failed");
        }
        let body = serde_json::json!({ "error": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::BadCredentials => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
            AuthError::NotStaff(..) | AuthError::WeakPassword => {
                ApiError::bad_request(e.to_string())
            }
            AuthError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            AuthError::Crypto(_) | AuthError::Store(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl From<OfficeError> for ApiError {
    fn from(e: OfficeError) -> ApiError {
        let status = match &e {
            OfficeError::NotFound(_) => StatusCode::NOT_FOUND,
            OfficeError::Invalid(_) => StatusCode::BAD_REQUEST,
            OfficeError::Forbidden(_) => StatusCode::FORBIDDEN,
            OfficeError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// How the caller proved who they are.
#[derive(Clone, Debug)]
pub enum Credential {
    /// An API token: no CSRF check needed.
    Token,
    /// A browser session, with its CSRF token and cookie secret.
    Session { session: WebSession, secret: String },
}

/// An authenticated office or admin user.
#[derive(Clone, Debug)]
pub struct Staff {
    pub user: User,
    pub credential: Credential,
}

impl Staff {
    /// The session's CSRF token; empty for token callers (who post no forms).
    pub fn csrf(&self) -> &str {
        match &self.credential {
            Credential::Session { session, .. } => &session.csrf,
            Credential::Token => "",
        }
    }

    /// Refuses a state-changing request from a browser session without the right CSRF token.
    pub fn check_csrf(&self, sent: Option<&str>) -> Result<(), ApiError> {
        match &self.credential {
            Credential::Token => Ok(()),
            Credential::Session { session, .. } => match sent {
                Some(sent) if auth::same_secret(sent, &session.csrf) => Ok(()),
                _ => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token; reload the page and try again",
                )),
            },
        }
    }

    /// Admits an office change (review or resolve) of record `id`: the CSRF token of a browser
    /// session, the office role, and a well-formed id, checked in that order.
    pub fn office_change(&self, csrf: Option<&str>, id: &str) -> Result<Uuid, ApiError> {
        self.check_csrf(csrf)?;
        self.require(Role::Office)?;
        parse_id(id)
    }

    /// Admits an admin change (users, devices): the CSRF token of a browser session, then the
    /// admin role.
    pub fn admin_change(&self, csrf: Option<&str>) -> Result<(), ApiError> {
        self.check_csrf(csrf)?;
        self.require(Role::Admin)
    }

    /// Refuses unless the user has `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.user.role == role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs the {role} role; {} is {}",
                    self.user.id, self.user.role
                ),
            ))
        }
    }
}

/// Finds the caller from a bearer token or the session cookie; None if neither is valid, or if
/// the user behind it is no longer office or admin staff. The lookup (which may also delete an
/// ended session) runs on a blocking thread.
pub async fn identify(state: &HttpState, headers: &HeaderMap) -> Result<Option<Staff>, ApiError> {
    let Some(presented) = presented(headers)? else {
        return Ok(None);
    };
    let store = state.shared.store.clone();
    let owner = blocking(move || credential_owner(&store, presented)).await?;
    Ok(owner.filter(|staff| matches!(staff.user.role, Role::Office | Role::Admin)))
}

/// A credential as the request carries it, not yet checked.
enum Presented {
    Token(String),
    Cookie(String),
}

fn presented(headers: &HeaderMap) -> Result<Option<Presented>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        return Ok(Some(Presented::Token(token.to_string())));
    }
    let jar = CookieJar::from_headers(headers);
    Ok(jar
        .get(SESSION_COOKIE)
        .map(|c| Presented::Cookie(c.value().to_string())))
}

fn credential_owner(
    store: &crate::store::ServerStore,
    presented: Presented,
) -> Result<Option<Staff>, ApiError> {
    match presented {
        Presented::Token(token) => Ok(auth::token_user(store, &token)?.map(|user| Staff {
            user,
            credential: Credential::Token,
        })),
        Presented::Cookie(secret) => {
            let now = chrono::Utc::now().timestamp();
            Ok(
                auth::session_user(store, &secret, now)?.map(|(user, session)| Staff {
                    user,
                    credential: Credential::Session { session, secret },
                }),
            )
        }
    }
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Staff, ApiError> {
        identify(state, &parts.headers)
            .await?
            .ok_or_else(ApiError::unauthenticated)
    }
}

/// Runs blocking store work (merges, commits, long reads) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// Query of `GET /api/records` (and the records page).
#[derive(Debug, Default, Deserialize)]
pub struct RecordQuery {
    pub kind: Option<String>,
    pub scope: Option<String>,
    pub status: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub q: Option<String>,
    pub conflicted: Option<bool>,
}

impl RecordQuery {
    /// The filter this query asks for; empty parameters are ignored.
    pub fn filter(&self) -> Result<RecordFilter, ApiError> {
        let given = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let kind = given(&self.kind)
            .map(|k| k.parse::<Kind>())
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let status = given(&self.status)
            .map(|s| {
                s.parse::<Status>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "status must be one of {}, not `{s}`",
                        Status::ALL.map(Status::as_str).join(", ")
                    ))
                })
            })
            .transpose()?;
        for day in [&self.from, &self.to].into_iter().filter_map(given) {
            if chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d").is_err() {
                return Err(ApiError::bad_request(format!(
                    "dates look like 2026-11-28, not `{day}`"
                )));
            }
        }
        Ok(RecordFilter {
            kind,
            scope: given(&self.scope),
            status,
            from: given(&self.from),
            to: given(&self.to),
            text: given(&self.q),
            conflicted: self.conflicted.unwrap_or(false),
        })
    }
}

async fn api_records(
    State(state): State<AppState>,
    _staff: Staff,
    Query(query): Query<RecordQuery>,
) -> Result<axum::Json<Vec<RecordView>>, ApiError> {
    let records = list_records(&state, query.filter()?).await?;
    Ok(axum::Json(records))
}

/// The records `filter` selects, at most [`MAX_LIST`] of them: for the API and the pages.
async fn list_records(
    state: &HttpState,
    filter: RecordFilter,
) -> Result<Vec<RecordView>, ApiError> {
    let store = state.shared.store.clone();
    blocking(move || Ok(office::find_records(&store, &filter, MAX_LIST)?)).await
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_request(format!("`{id}` is not a record id")))
}

async fn api_record(
    State(state): State<AppState>,
    _staff: Staff,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let store = state.shared.store.clone();
    blocking(move || {
        let view = store.record_view(id)?.ok_or(OfficeError::NotFound(id))?;
        let history = office::history(&store, id)?.unwrap_or_default();
        let mut json = serde_json::to_value(&view)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(obj) = json.as_object_mut() {
            obj.insert(
                "history".into(),
                serde_json::to_value(history).unwrap_or_default(),
            );
        }
        Ok(axum::Json(json))
    })
    .await
}

/// The body of `POST /api/records/{id}/review`.
#[derive(Debug, Deserialize)]
pub struct ReviewBody {
    pub status: String,
    #[serde(default)]
    pub note: String,
}

/// The body of `POST /api/records/{id}/resolve`.
#[derive(Debug, Deserialize)]
pub struct ResolveBody {
    pub field: String,
    pub value: serde_json::Value,
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

/// Parses a JSON body into `T`, answering 400 with serde's message.
fn json_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

async fn api_review(
    State(state): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<RecordView>, ApiError> {
    let id = staff.office_change(csrf_header(&headers), &id)?;
    let body: ReviewBody = json_body(&body)?;
    let view = review_record(state, staff.user, id, &body.status, body.note).await?;
    Ok(axum::Json(view))
}

async fn api_resolve(
    State(state): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<RecordView>, ApiError> {
    let id = staff.office_change(csrf_header(&headers), &id)?;
    let body: ResolveBody = json_body(&body)?;
    let view = resolve_record(state, staff.user, id, body.field, body.value).await?;
    Ok(axum::Json(view))
}

/// Confirms or rejects check-in `id` as `user` (`status` is `confirmed` or `rejected`).
///
/// The API and the dashboard form both end here once they have admitted the request
/// ([`Staff::office_change`]) and read it, so a bad status or a refused change is answered
/// alike by both.
async fn review_record(
    state: AppState,
    user: User,
    id: Uuid,
    status: &str,
    note: String,
) -> Result<RecordView, ApiError> {
    let verdict = office::verdict(status)?;
    run_office_change(state, move |shared, now| {
        office::review(shared, &user, id, verdict, &note, now)
    })
    .await
}

/// Keeps `value` as the one value of `field` of record `id`, as `user`; like
/// [`review_record`], shared by the API and the dashboard form.
async fn resolve_record(
    state: AppState,
    user: User,
    id: Uuid,
    field: String,
    value: serde_json::Value,
) -> Result<RecordView, ApiError> {
    run_office_change(state, move |shared, now| {
        office::resolve(shared, &user, id, &field, &value, now)
    })
    .await
}

/// Runs an office change on a blocking thread (it merges and commits), stamped with the time
/// it runs.
async fn run_office_change(
    state: AppState,
    change: impl FnOnce(&Shared, i64) -> Result<RecordView, OfficeError> + Send + 'static,
) -> Result<RecordView, ApiError> {
    blocking(move || Ok(change(&state.shared, chrono::Utc::now().timestamp())?)).await
}

/// Query of `GET /api/hours`.
#[derive(Debug, Default, Deserialize)]
pub struct HoursQuery {
    pub by: Option<String>,
    pub month: Option<String>,
}

impl HoursQuery {
    pub fn parse(&self) -> Result<(HoursBy, Option<String>), ApiError> {
        let by = HoursBy::parse(self.by.as_deref().unwrap_or("volunteer"))?;
        let month = self.month.clone().filter(|m| !m.is_empty());
        Ok((by, month))
    }
}

async fn api_hours(
    State(state): State<AppState>,
    _staff: Staff,
    Query(query): Query<HoursQuery>,
) -> Result<axum::Json<Vec<office::HoursRow>>, ApiError> {
    let (by, month) = query.parse()?;
    let store = state.shared.store.clone();
    let rows = blocking(move || Ok(office::hours(&store, by, month.as_deref())?)).await?;
    Ok(axum::Json(rows))
}

async fn api_villages(
    State(state): State<AppState>,
    _staff: Staff,
) -> Result<axum::Json<Vec<office::VillageRow>>, ApiError> {
    let store = state.shared.store.clone();
    let rows = blocking(move || Ok(office::villages(&store)?)).await?;
    Ok(axum::Json(rows))
}

async fn api_devices(
    State(state): State<AppState>,
    staff: Staff,
) -> Result<axum::Json<Vec<crate::store::Device>>, ApiError> {
    staff.require(Role::Admin)?;
    let store = state.shared.store.clone();
    Ok(axum::Json(blocking(move || Ok(store.devices()?)).await?))
}

async fn api_revoke(
    State(state): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    staff.admin_change(csrf_header(&headers))?;
    revoke_device(&state, &staff.user.id, &id).await?;
    Ok(axum::Json(serde_json::json!({ "revoked": id })))
}

/// Revokes a device (a durable write, on a blocking thread), answering 404 for an unknown one.
pub async fn revoke_device(
    state: &HttpState,
    staff_id: &str,
    device_id: &str,
) -> Result<(), ApiError> {
    let store = state.shared.store.clone();
    let id = device_id.to_string();
    blocking(move || match store.revoke(&id) {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound(m)) => Err(ApiError::new(StatusCode::NOT_FOUND, m)),
        Err(e) => Err(e.into()),
    })
    .await?;
    crate::oplog::office_action(staff_id, "revoke", device_id, "");
    Ok(())
}

/// Prometheus text format; counters since the server started. Carries no record data, so it
/// is open like most scrape targets; put it behind the reverse proxy if that matters.
async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.shared.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let counters = [
        (
            "fieldsync_connections_total",
            "counter",
            "QUIC connections accepted.",
            &m.connections,
        ),
        (
            "fieldsync_connections_open",
            "gauge",
            "QUIC connections being served now.",
            &m.connections_open,
        ),
        (
            "fieldsync_rounds_total",
            "counter",
            "Pushes committed (device rounds and dashboard changes).",
            &m.rounds,
        ),
        (
            "fieldsync_records_accepted_total",
            "counter",
            "Pushed records accepted.",
            &m.records_accepted,
        ),
        (
            "fieldsync_records_refused_total",
            "counter",
            "Pushed records refused.",
            &m.records_refused,
        ),
        (
            "fieldsync_records_deferred_total",
            "counter",
            "Pushed records deferred because of the server's own trouble with them (kept pending on the phone).",
            &m.records_deferred,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in counters {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
            get(value)
        ));
    }
    let commits = get(&m.commits);
    let seconds = get(&m.commit_micros_total) as f64 / 1e6;
    out.push_str(&format!(
        "# HELP fieldsync_commit_seconds Durable redb commits of grouped rounds.\n\
         # TYPE fieldsync_commit_seconds summary\n\
         fieldsync_commit_seconds_sum {seconds}\n\
         fieldsync_commit_seconds_count {commits}\n"
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
