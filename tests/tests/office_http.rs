//! The office's HTTP side against a real server (QUIC and HTTP on 127.0.0.1:0, real redb) with
//! real phones enrolling and syncing over QUIC, driven through `reqwest` like a script or a
//! browser would:
//!
//! - a review made through the JSON API reaches the phone at its next sync and is attributed
//!   to the office user in the record's history;
//! - a conflict resolved in the office disappears on every device after sync;
//! - several reviews of one record by one office user, one after another or at once, all land;
//! - volunteer hours per volunteer and per team add up (only confirmed hours count as
//!   confirmed), and the record list filters by kind, scope, status, dates and text;
//! - the CSV export starts with the UTF-8 BOM, has a column per field and a row per record, and
//!   keeps Chinese text intact; the JSON export has the right records;
//! - 401, 403, 400 and 404 answers change nothing on the server or on any phone;
//! - CSRF: the login form and every form post need their token, the JSON API called with a
//!   session cookie needs the `X-CSRF-Token` header;
//! - a device revoked from the API is refused at its next connection and keeps its records;
//! - `/metrics` is Prometheus text whose counters move with a sync;
//! - an enrollment code issued from the dashboard enrolls a phone that then syncs; only admin
//!   may issue one; the form redirects and the code is shown once, to its session;
//! - trickling clients (more than one address's share and than all slots) are closed by the
//!   request deadlines while a real request still gets through; a keep-alive connection idles
//!   no longer than the header deadline;
//! - password guessing is limited per account and address with a growing wait, the right
//!   password is refused while limited and accepted after, other accounts and addresses are
//!   not held up;
//! - the users page refuses to turn an existing volunteer into an office account unless asked;
//! - the language switch goes back only to a same-site path;
//! - a handler's durable write waiting on the disk never stops the server answering others.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use fieldsync_device::client::{self, ClientError};
use fieldsync_device::store::StoreError;
use fieldsync_device::tls::KeyAndCert;
use fieldsync_proto::Role;
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::ErrorCode;
use fieldsync_proto::sync::RoundReport;
use fieldsync_server::http::conn::HttpLimits;
use fieldsync_server::http::throttle::LoginLimits;
use fieldsync_server::store::User;
use fieldsync_server::{Running, ServeOptions, ServerStore};
use fieldsync_tests::{PASSWORD, Phone, TestResult, TestServer, check_in_fields, text};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP client that never follows redirects, so each answer is seen as it is.
struct Http {
    client: reqwest::Client,
    base: String,
}

/// One answer: status, headers and the raw body bytes.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("the body is UTF-8")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The value of cookie `name` set by this answer.
    fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookie(name)
            .and_then(|c| c.split(';').next().map(str::to_string))
            .and_then(|c| c.strip_prefix(&format!("{name}=")).map(str::to_string))
    }

    /// The whole `Set-Cookie` line for cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }

    fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and, for errors, that the body is `{"error": "<clear message>"}`.
    fn expect(&self, status: StatusCode, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        if status.is_client_error() {
            let message = self.json()["error"].as_str().map(str::to_string);
            assert!(
                message.as_ref().is_some_and(|m| m.len() > 5),
                "{what}: a clear error message, got {}",
                self.text()
            );
        }
    }
}

impl Http {
    fn new(server: &TestServer) -> Http {
        Http::at(server.http_url(), None)
    }

    /// A client of the dashboard at `base`, connecting from loopback address `from` if given
    /// (all of 127/8 is loopback, so tests can be several addresses).
    fn at(base: String, from: Option<IpAddr>) -> Http {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(from)
            .build()
            .expect("HTTP client");
        Http { client, base }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base))
    }

    /// `GET path` with a bearer token; expects 200 and JSON.
    async fn get_json(&self, path: &str, token: &str) -> Value {
        let reply = send(self.get(path).bearer_auth(token)).await;
        reply.expect(StatusCode::OK, path);
        reply.json()
    }

    /// `POST path` with a JSON body and a bearer token.
    async fn post_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        send(self.post(path).bearer_auth(token).json(body)).await
    }

    /// Logs in through the login form like a browser; returns the session cookie's value.
    async fn log_in(&self, user: &str) -> String {
        let page = send(self.get("/login")).await;
        assert_eq!(page.status, StatusCode::OK, "login page");
        let login_csrf = page.cookie("fs_login_csrf").expect("login CSRF cookie");
        let hidden = hidden_csrf(&page.text()).expect("hidden csrf input on the login page");
        assert_eq!(
            hidden, login_csrf,
            "double-submit token: cookie and form agree"
        );
        let reply = send(
            self.post("/login")
                .header(COOKIE, format!("fs_login_csrf={login_csrf}"))
                .form(&[
                    ("csrf", hidden.as_str()),
                    ("user", user),
                    ("password", PASSWORD),
                ]),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::SEE_OTHER,
            "login: {}",
            reply.text()
        );
        assert_eq!(reply.location(), Some("/records"));
        reply.cookie("fs_session").expect("session cookie")
    }

    /// `GET path` as a logged-in browser; expects 200 and returns the HTML.
    async fn page(&self, path: &str, session: &str) -> String {
        let reply = send(self.get(path).header(COOKIE, session_cookie(session))).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        reply.text()
    }

    /// `POST path` as a form from a logged-in browser.
    async fn post_form(&self, path: &str, session: &str, form: &[(&str, &str)]) -> Reply {
        send(
            self.post(path)
                .header(COOKIE, session_cookie(session))
                .form(form),
        )
        .await
    }
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("HTTP request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("HTTP body").to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn session_cookie(secret: &str) -> String {
    format!("fs_session={secret}")
}

/// The value of the first hidden `csrf` input of a page.
fn hidden_csrf(html: &str) -> Option<String> {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker)? + marker.len();
    let len = html[start..].find('"')?;
    Some(html[start..start + len].to_string())
}

/// Syncs and insists that nothing was refused.
async fn synced(phone: &Phone, what: &str) -> RoundReport {
    let report = phone
        .sync()
        .await
        .unwrap_or_else(|e| panic!("{what}: sync failed: {e}"));
    assert!(report.refused.is_empty(), "{what}: {:?}", report.refused);
    report
}

/// A check-in by the phone's user with a known name, team, activity and start/end.
fn check_in_at(
    phone: &Phone,
    scope: &str,
    name: &str,
    team: &str,
    activity: &str,
    (start, end): (&str, &str),
) -> String {
    phone.create(
        Kind::CheckIn,
        scope,
        &[
            ("volunteer_id", text(&phone.user())),
            ("volunteer_name", text(name)),
            ("team", text(team)),
            ("activity", text(activity)),
            ("place", text("幸福社区")),
            ("started_at", text(start)),
            ("ended_at", text(end)),
            ("status", text("submitted")),
        ],
    )
}

/// Two village phones that both hold a survey whose `licensed_doctors` they set concurrently
/// (2 and 3); returns the phones and the survey id.
async fn conflicted_survey(server: &mut TestServer, root: &Path) -> (Phone, Phone, String) {
    let a = server
        .phone(root, "cun_a", Role::Village, &["village:1"])
        .await;
    let b = server
        .phone(root, "cun_b", Role::Village, &["village:1"])
        .await;
    let id = a.create(
        Kind::VillageSurvey,
        "village:1",
        &[
            ("village", text("大坪村")),
            ("bus_service", FieldValue::Bool(true)),
        ],
    );
    synced(&a, "a creates the survey").await;
    synced(&b, "b pulls the survey").await;
    assert!(b.records().contains_key(&id), "b received the survey");
    a.set(&id, &[("licensed_doctors", FieldValue::Integer(2))]);
    b.set(&id, &[("licensed_doctors", FieldValue::Integer(3))]);
    synced(&a, "a pushes 2").await;
    synced(&b, "b pushes 3").await;
    synced(&a, "a pulls 3").await;
    (a, b, id)
}

fn sorted(values: &Value) -> Vec<Value> {
    let mut values = values.as_array().cloned().unwrap_or_default();
    values.sort_by_key(|v| v.to_string());
    values
}

/// Every sample of a Prometheus text answer, by name; panics on a line that is not one.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line}"));
            let value = value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("sample `{line}`: {e}"));
            (name.to_string(), value)
        })
        .collect()
}

async fn metrics(http: &Http) -> BTreeMap<String, f64> {
    let reply = send(http.get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text());
    samples(&reply.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_reaches_the_phone_at_its_next_sync_and_is_attributed_to_the_office() -> TestResult
{
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let token = server.token("office");
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let good = v1.check_in("team:1", "清洁家园");
    let bad = v1.check_in("team:1", "重复签到");
    synced(&v1, "first sync").await;

    let reply = http
        .post_json(
            &format!("/api/records/{good}/review"),
            &token,
            &json!({"status": "confirmed", "note": "好"}),
        )
        .await;
    reply.expect(StatusCode::OK, "review");
    let view = reply.json();
    assert_eq!(view["id"], json!(good));
    assert_eq!(view["fields"]["status"], json!("confirmed"));
    let reply = http
        .post_json(
            &format!("/api/records/{bad}/review"),
            &token,
            &json!({"status": "rejected", "note": "与上一条重复"}),
        )
        .await;
    reply.expect(StatusCode::OK, "reject");

    // The phone knows nothing of it until it syncs; meanwhile, offline, the volunteer adds a
    // note to the same check-in.
    assert_eq!(v1.records()[&good].fields["status"], text("submitted"));
    v1.set(&good, &[("note", text("带了扫帚"))]);
    let report = synced(&v1, "sync after review").await;
    assert_eq!(report.sent, 1, "the note goes up");
    assert_eq!(report.received, 2, "both reviewed check-ins come down");
    let on_phone = v1.records();
    let fields = &on_phone[&good].fields;
    assert_eq!(fields["status"], text("confirmed"));
    assert_eq!(fields["review_note"], text("好"));
    assert_eq!(fields["reviewed_by"], text("office"));
    assert_eq!(
        fields["activity"],
        text("清洁家园"),
        "the phone's fields stay"
    );
    assert_eq!(
        fields["note"],
        text("带了扫帚"),
        "the concurrent note stays"
    );
    assert!(on_phone[&good].conflicts.is_empty());
    let fields = &on_phone[&bad].fields;
    assert_eq!(fields["status"], text("rejected"));
    assert_eq!(fields["review_note"], text("与上一条重复"));
    assert_eq!(on_phone, server.records(), "phone and server agree");

    // History: the check-in and the note from the phone's device, the review from
    // `web:office`.
    let record = http.get_json(&format!("/api/records/{good}"), &token).await;
    assert_eq!(record["fields"]["status"], json!("confirmed"));
    let history = record["history"].as_array().expect("history array");
    assert_eq!(history.len(), 3, "check-in, review, note: {history:#?}");
    let device_id = v1.store.device_id();
    let (by_office, by_phone): (Vec<&Value>, Vec<&Value>) = history
        .iter()
        .partition(|c| c["device_id"] == json!("web:office"));
    assert_eq!(by_office.len(), 1, "{history:#?}");
    assert_eq!(
        by_phone[0]["fields"].as_array().map(Vec::len),
        Some(6),
        "created first"
    );
    for change in &by_phone {
        assert_eq!(change["device_id"], json!(device_id), "{change}");
        assert_eq!(change["user_id"], json!("v1"), "{change}");
        assert!(change["received_at"].is_i64(), "{change}");
    }
    assert_eq!(by_phone[1]["fields"], json!(["note"]));
    let reviewed = by_office[0];
    assert_eq!(reviewed["device_id"], json!("web:office"), "{reviewed}");
    assert_eq!(reviewed["user_id"], json!("office"), "{reviewed}");
    assert_eq!(reviewed["user_name"], json!("办公室小李"), "{reviewed}");
    assert!(reviewed["received_at"].is_i64(), "{reviewed}");
    let mut changed: Vec<&str> = reviewed["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    changed.sort();
    assert_eq!(changed, ["review_note", "reviewed_by", "status"]);

    // The phone's own history holds the same office change.
    let id = uuid::Uuid::parse_str(&good)?;
    assert_eq!(v1.store.history(id)?.len(), 3);
    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_conflict_disappears_on_every_device_after_sync() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let token = server.token("office");
    let (a, b, survey) = conflicted_survey(&mut server, root).await;

    // The office sees the conflict with both values, in the list and in the village row.
    let list = http.get_json("/api/records?conflicted=true", &token).await;
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], json!(survey));
    assert_eq!(
        sorted(&list[0]["conflicts"]["licensed_doctors"]),
        vec![json!(2), json!(3)]
    );
    let villages = http.get_json("/api/villages", &token).await;
    assert_eq!(villages[0]["scope"], json!("village:1"));
    assert_eq!(villages[0]["conflicts"], json!(["licensed_doctors"]));
    for (phone, who) in [(&a, "a"), (&b, "b")] {
        assert!(
            phone.records()[&survey]
                .conflicts
                .contains_key("licensed_doctors"),
            "{who} shows the conflict before"
        );
    }

    let csv_conflicts = || async {
        let reply = send(
            http.get("/export?kind=village_survey&format=csv")
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        let mut csv = csv::Reader::from_reader(&reply.body[3..]);
        let header = csv.headers().expect("header").clone();
        let at = header
            .iter()
            .position(|h| h == "conflicts")
            .expect("conflicts column");
        csv.records()
            .map(|r| r.expect("row")[at].to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        csv_conflicts().await,
        ["licensed_doctors"],
        "the export marks it"
    );

    let resolve = format!("/api/records/{survey}/resolve");
    let reply = http
        .post_json(
            &resolve,
            &token,
            &json!({"field": "licensed_doctors", "value": 4}),
        )
        .await;
    reply.expect(StatusCode::OK, "resolve");
    let view = reply.json();
    assert_eq!(view["fields"]["licensed_doctors"], json!(4));
    assert_eq!(view["conflicts"], json!({}));
    let list = http.get_json("/api/records?conflicted=true", &token).await;
    assert_eq!(list, json!([]), "no conflicted record left");
    // Resolving again: the field no longer holds a conflict.
    let reply = http
        .post_json(
            &resolve,
            &token,
            &json!({"field": "licensed_doctors", "value": 5}),
        )
        .await;
    reply.expect(StatusCode::BAD_REQUEST, "second resolve");

    synced(&a, "a after resolve").await;
    synced(&b, "b after resolve").await;
    let truth = server.records();
    for (phone, who) in [(&a, "a"), (&b, "b")] {
        let view = &phone.records()[&survey];
        assert!(view.conflicts.is_empty(), "{who}: {:?}", view.conflicts);
        assert_eq!(
            view.fields["licensed_doctors"],
            FieldValue::Integer(4),
            "{who}"
        );
        assert_eq!(view.fields["bus_service"], FieldValue::Bool(true), "{who}");
        assert_eq!(view, &truth[&survey], "{who} agrees with the server");
    }
    let villages = http.get_json("/api/villages", &token).await;
    assert_eq!(villages[0]["conflicts"], json!([]));
    assert_eq!(csv_conflicts().await, [""]);

    // The phones keep editing the resolved field as usual afterwards.
    a.set(&survey, &[("licensed_doctors", FieldValue::Integer(5))]);
    synced(&a, "a edits again").await;
    synced(&b, "b pulls the edit").await;
    assert_eq!(
        b.records()[&survey].fields["licensed_doctors"],
        FieldValue::Integer(5)
    );
    assert!(b.records()[&survey].conflicts.is_empty());
    server.running.take().expect("running").stop().await;
    Ok(())
}

/// A check-in to make: phone, scope, volunteer name, team name, start and end, and the office's
/// verdict (None: left submitted).
type Planned<'a> = (
    &'a Phone,
    &'a str,
    &'a str,
    &'a str,
    (String, String),
    Option<&'a str>,
);
/// One row of `/api/hours`: name, confirmed, pending, rejected hours, check-ins.
type HoursRow = (String, f64, f64, f64, u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_add_up_and_only_confirmed_hours_count_as_confirmed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let token = server.token("office");
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let v2 = server.phone(root, "v2", Role::Volunteer, &["team:1"]).await;
    let v3 = server.phone(root, "v3", Role::Volunteer, &["team:2"]).await;
    let at = |day: &str, from: &str, to: &str| {
        (
            format!("2026-{day}T{from}:00+08:00"),
            format!("2026-{day}T{to}:00+08:00"),
        )
    };
    // (phone, scope, name, team, start/end, verdict); hours are multiples of a quarter, so
    // their sums are exact.
    let plan: Vec<Planned> = vec![
        (
            &v1,
            "team:1",
            "张三",
            "一队",
            at("11-03", "08:00", "10:30"),
            Some("confirmed"),
        ), // 2.5
        (
            &v1,
            "team:1",
            "张三",
            "一队",
            at("11-10", "09:00", "10:00"),
            Some("rejected"),
        ), // 1
        (
            &v1,
            "team:1",
            "张三",
            "一队",
            at("11-20", "14:00", "17:15"),
            None,
        ), // 3.25
        (
            &v1,
            "team:1",
            "张三",
            "一队",
            at("12-01", "08:00", "12:00"),
            Some("confirmed"),
        ), // 4
        (
            &v2,
            "team:1",
            "李四",
            "一队",
            at("11-05", "08:00", "09:30"),
            Some("confirmed"),
        ), // 1.5
        (
            &v2,
            "team:1",
            "李四",
            "一队",
            at("11-06", "08:00", "08:45"),
            None,
        ), // 0.75
        (
            &v3,
            "team:2",
            "王五",
            "二队",
            at("11-07", "13:00", "15:00"),
            Some("confirmed"),
        ), // 2
        (
            &v3,
            "team:2",
            "王五",
            "二队",
            at("11-08", "13:00", "14:00"),
            Some("rejected"),
        ), // 1
        // Starts on the phone's 30 November and ends in December: counted in November.
        (
            &v3,
            "team:2",
            "王五",
            "二队",
            (
                "2026-11-30T23:00:00+08:00".into(),
                "2026-12-01T01:00:00+08:00".into(),
            ),
            None,
        ), // 2
    ];
    let mut verdicts = Vec::new();
    for (phone, scope, name, team, (start, end), verdict) in &plan {
        let id = check_in_at(
            phone,
            scope,
            name,
            team,
            "文明城市创建",
            (start.as_str(), end.as_str()),
        );
        if let Some(verdict) = verdict {
            verdicts.push((id, *verdict));
        }
    }
    for phone in [&v1, &v2, &v3] {
        synced(phone, "check-ins").await;
    }
    for (id, verdict) in &verdicts {
        http.post_json(
            &format!("/api/records/{id}/review"),
            &token,
            &json!({"status": verdict, "note": ""}),
        )
        .await
        .expect(StatusCode::OK, "review");
    }

    // (key, month) → (name, confirmed, pending, rejected, check-ins)
    let rows = |value: Value| -> BTreeMap<(String, String), HoursRow> {
        value
            .as_array()
            .expect("array of rows")
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().expect("text").to_string();
                let n = |k: &str| r[k].as_f64().expect("number");
                (
                    (s("key"), s("month")),
                    (
                        s("name"),
                        n("confirmed"),
                        n("pending"),
                        n("rejected"),
                        r["check_ins"].as_u64().expect("count"),
                    ),
                )
            })
            .collect()
    };
    let row = |key: &str, month: &str, name: &str, c: f64, p: f64, r: f64, n: u64| {
        (
            (key.to_string(), month.to_string()),
            (name.to_string(), c, p, r, n),
        )
    };

    let by_volunteer = rows(
        http.get_json("/api/hours?by=volunteer&month=2026-11", &token)
            .await,
    );
    assert_eq!(
        by_volunteer,
        BTreeMap::from([
            row("v1", "2026-11", "张三", 2.5, 3.25, 1.0, 3),
            row("v2", "2026-11", "李四", 1.5, 0.75, 0.0, 2),
            row("v3", "2026-11", "王五", 2.0, 2.0, 1.0, 3),
        ])
    );
    let by_team = rows(
        http.get_json("/api/hours?by=team&month=2026-11", &token)
            .await,
    );
    assert_eq!(
        by_team,
        BTreeMap::from([
            row("team:1", "2026-11", "一队", 4.0, 4.0, 1.0, 5),
            row("team:2", "2026-11", "二队", 2.0, 2.0, 1.0, 3),
        ])
    );
    let december = rows(
        http.get_json("/api/hours?by=volunteer&month=2026-12", &token)
            .await,
    );
    assert_eq!(
        december,
        BTreeMap::from([row("v1", "2026-12", "张三", 4.0, 0.0, 0.0, 1)])
    );
    let all_months = rows(http.get_json("/api/hours?by=team", &token).await);
    assert_eq!(
        all_months,
        BTreeMap::from([
            row("team:1", "2026-11", "一队", 4.0, 4.0, 1.0, 5),
            row("team:1", "2026-12", "一队", 4.0, 0.0, 0.0, 1),
            row("team:2", "2026-11", "二队", 2.0, 2.0, 1.0, 3),
        ])
    );
    let empty = http
        .get_json("/api/hours?by=volunteer&month=2025-01", &token)
        .await;
    assert_eq!(empty, json!([]));

    // The record list filters by kind, scope, status, date range and text.
    let ids = |value: Value| -> Vec<String> {
        let mut ids: Vec<String> = value
            .as_array()
            .expect("array of records")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        ids
    };
    let all = server.records();
    let expect = |keep: &dyn Fn(&fieldsync_proto::RecordView) -> bool| -> Vec<String> {
        all.values()
            .filter(|v| keep(v))
            .map(|v| v.id.clone())
            .collect()
    };
    let confirmed = ids(http
        .get_json("/api/records?kind=check_in&status=confirmed", &token)
        .await);
    let mut sent: Vec<String> = verdicts
        .iter()
        .filter(|(_, v)| *v == "confirmed")
        .map(|(id, _)| id.clone())
        .collect();
    sent.sort();
    assert_eq!(confirmed, sent);
    assert_eq!(
        ids(http.get_json("/api/records?scope=team:2", &token).await),
        expect(&|v| v.scope == "team:2")
    );
    let submitted = ids(http
        .get_json(
            "/api/records?kind=check_in&scope=team:1&status=submitted",
            &token,
        )
        .await);
    assert_eq!(submitted.len(), 2);
    assert_eq!(
        submitted,
        expect(&|v| v.scope == "team:1" && v.text("status") == Some("submitted"))
    );
    let late = ids(http
        .get_json("/api/records?from=2026-11-30&to=2026-12-31", &token)
        .await);
    assert_eq!(late.len(), 2, "30 November and 1 December");
    assert_eq!(
        ids(http
            .get_json("/api/records?q=%E7%8E%8B%E4%BA%94", &token)
            .await),
        expect(&|v| v.text("volunteer_name") == Some("王五")),
        "text search finds 王五"
    );
    assert_eq!(
        ids(http.get_json("/api/records?kind=check_in", &token).await).len(),
        plan.len()
    );

    // A pending check-in confirmed later moves from pending to confirmed.
    let pending = v2
        .records()
        .into_values()
        .find(|v| v.text("started_at") == Some("2026-11-06T08:00:00+08:00"))
        .expect("v2's pending check-in")
        .id;
    http.post_json(
        &format!("/api/records/{pending}/review"),
        &token,
        &json!({"status": "confirmed"}),
    )
    .await
    .expect(StatusCode::OK, "late review");
    let by_volunteer = rows(
        http.get_json("/api/hours?by=volunteer&month=2026-11", &token)
            .await,
    );
    assert_eq!(
        by_volunteer[&("v2".to_string(), "2026-11".to_string())],
        ("李四".to_string(), 2.25, 0.0, 0.0, 2)
    );
    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_has_the_bom_a_column_per_field_a_row_per_record_and_chinese_intact()
-> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let token = server.token("office");
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let village = server
        .phone(root, "cun", Role::Village, &["village:3"])
        .await;
    let note = "路面积水，\"严重\"\n第二行：需要清理";
    let mut check_ins = BTreeMap::new();
    for activity in ["清洁家园", "文明城市创建", "双报到双服务"] {
        let mut fields = check_in_fields("v1", activity);
        fields.push(("note".into(), text(note)));
        let id = v1.store.create(Kind::CheckIn, "team:1", &fields)?.id;
        check_ins.insert(id, activity);
    }
    let survey = village.create(
        Kind::VillageSurvey,
        "village:3",
        &[
            ("village", text("大坪村")),
            ("tap_water_pct", FieldValue::Number(95.5)),
        ],
    );
    synced(&v1, "check-ins").await;
    synced(&village, "survey").await;

    let reply = send(
        http.get("/export?kind=check_in&format=csv")
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let content_type = reply
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("text/csv; charset=utf-8"));
    let disposition = reply
        .headers
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        disposition.starts_with("attachment") && disposition.contains(".csv"),
        "{disposition}"
    );
    assert_eq!(
        &reply.body[..3],
        b"\xEF\xBB\xBF",
        "starts with the UTF-8 BOM"
    );
    let mut csv = csv::Reader::from_reader(&reply.body[3..]);
    let header: Vec<String> = csv.headers()?.iter().map(str::to_string).collect();
    let mut expected = vec!["id".to_string(), "kind".into(), "scope".into()];
    expected.extend(
        Kind::CheckIn
            .schema()
            .fields
            .iter()
            .map(|f| f.name.to_string()),
    );
    expected.push("conflicts".into());
    assert_eq!(header, expected, "a column per check-in field");
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("column {name}"))
    };
    let mut seen = BTreeMap::new();
    for row in csv.records() {
        let row = row?;
        assert_eq!(row.len(), header.len());
        assert_eq!(&row[column("kind")], "check_in");
        assert_eq!(&row[column("scope")], "team:1");
        assert_eq!(&row[column("place")], "幸福社区");
        assert_eq!(
            &row[column("note")],
            note,
            "quotes, comma and newline survive"
        );
        assert_eq!(&row[column("hours")], "2.5");
        assert_eq!(&row[column("status")], "submitted");
        assert_eq!(&row[column("conflicts")], "");
        seen.insert(
            row[column("id")].to_string(),
            row[column("activity")].to_string(),
        );
    }
    let expected: BTreeMap<String, String> = check_ins
        .iter()
        .map(|(id, a)| (id.clone(), a.to_string()))
        .collect();
    assert_eq!(seen, expected, "one row per check-in, nothing else");

    // JSON: the same records as record objects; other kinds and no kind filter.
    let exported = |kind: &'static str| {
        let http = &http;
        let token = &token;
        async move {
            let reply = send(
                http.get(&format!("/export?{kind}format=json"))
                    .bearer_auth(token),
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.json()
        }
    };
    let json = exported("kind=check_in&").await;
    let items = json.as_array().expect("array");
    assert_eq!(items.len(), 3);
    let truth = server.records();
    for item in items {
        let view: fieldsync_proto::RecordView = serde_json::from_value(item.clone())?;
        assert_eq!(view, truth[&view.id], "the export is the merged record");
    }
    let json = exported("kind=village_survey&").await;
    assert_eq!(json.as_array().map(Vec::len), Some(1));
    assert_eq!(json[0]["id"], json!(survey));
    assert_eq!(json[0]["fields"]["village"], json!("大坪村"));
    let json = exported("").await;
    assert_eq!(json.as_array().map(Vec::len), Some(4), "every record");

    // A survey CSV has the survey's columns.
    let reply = send(
        http.get("/export?kind=village_survey&format=csv")
            .bearer_auth(&token),
    )
    .await;
    let mut csv = csv::Reader::from_reader(&reply.body[3..]);
    let header: Vec<String> = csv.headers()?.iter().map(str::to_string).collect();
    assert!(header.contains(&"tap_water_pct".to_string()), "{header:?}");
    let rows: Vec<csv::StringRecord> = csv.records().collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 1);
    let village_col = header.iter().position(|h| h == "village").expect("village");
    assert_eq!(&rows[0][village_col], "大坪村");
    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_forbidden_and_bad_requests_change_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let office = server.token("office");
    let admin = server.token("admin");
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let check_in = v1.check_in("team:1", "清洁家园");
    synced(&v1, "check-in").await;
    let (a, b, survey) = conflicted_survey(&mut server, root).await;

    let records_before = server.records();
    let phones_before = [v1.records(), a.records(), b.records()];
    let metrics_before = metrics(&http).await;
    let review = format!("/api/records/{check_in}/review");
    let resolve = format!("/api/records/{survey}/resolve");
    let confirm = json!({"status": "confirmed", "note": "不该生效"});
    let device = v1.store.device_id();

    // No credentials, or wrong ones: 401.
    let unauthenticated = [
        http.get("/api/records"),
        http.get(&format!("/api/records/{check_in}")),
        http.get("/api/hours"),
        http.get("/export?format=csv"),
        http.get("/api/devices"),
        http.post(&review).json(&confirm),
        http.post(&resolve)
            .json(&json!({"field": "licensed_doctors", "value": 4})),
        http.post(&format!("/api/devices/{device}/revoke")),
        http.post(&review).bearer_auth("fst_wrong").json(&confirm),
        http.post(&review)
            .bearer_auth(&office[..office.len() - 1])
            .json(&confirm),
        http.get("/api/records").bearer_auth(""),
        http.post(&review)
            .header("authorization", format!("Basic {office}"))
            .json(&confirm),
        http.post(&review)
            .header(COOKIE, session_cookie("forged"))
            .json(&confirm),
    ];
    for (i, request) in unauthenticated.into_iter().enumerate() {
        send(request)
            .await
            .expect(StatusCode::UNAUTHORIZED, &format!("unauthenticated #{i}"));
    }

    // The wrong role: 403.
    let forbidden = [
        http.post(&review).bearer_auth(&admin).json(&confirm),
        http.post(&resolve)
            .bearer_auth(&admin)
            .json(&json!({"field": "licensed_doctors", "value": 4})),
        http.post(&format!("/api/devices/{device}/revoke"))
            .bearer_auth(&office),
        http.get("/api/devices").bearer_auth(&office),
    ];
    for (i, request) in forbidden.into_iter().enumerate() {
        send(request)
            .await
            .expect(StatusCode::FORBIDDEN, &format!("forbidden #{i}"));
    }

    // Bad input: 400 (404 for a well-formed id that names no record).
    let missing = uuid::Uuid::now_v7();
    let raw = |path: &str, body: &'static str| {
        http.post(path)
            .bearer_auth(&office)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
    };
    let post = |path: &str, body: Value| http.post(path).bearer_auth(&office).json(&body);
    let get = |path: &str| http.get(path).bearer_auth(&office);
    let bad = [
        (
            raw(&review, r#"{"status": "confirmed""#),
            StatusCode::BAD_REQUEST,
        ),
        (raw(&review, "not json"), StatusCode::BAD_REQUEST),
        (raw(&review, ""), StatusCode::BAD_REQUEST),
        (
            post(&review, json!({"note": "no status"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(&review, json!({"status": "approved"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(&review, json!({"status": "submitted"})),
            StatusCode::BAD_REQUEST,
        ),
        (post(&review, json!({"status": 1})), StatusCode::BAD_REQUEST),
        (
            post(&format!("/api/records/{missing}/review"), confirm.clone()),
            StatusCode::NOT_FOUND,
        ),
        (
            get(&format!("/api/records/{missing}")),
            StatusCode::NOT_FOUND,
        ),
        (
            post(
                &format!("/api/records/{missing}/resolve"),
                json!({"field": "licensed_doctors", "value": 4}),
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            post("/api/records/not-a-uuid/review", confirm.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (get("/api/records/12345"), StatusCode::BAD_REQUEST),
        (
            post(
                "/api/records/not-a-uuid/resolve",
                json!({"field": "licensed_doctors", "value": 4}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        // Only check-ins are reviewed.
        (
            post(&format!("/api/records/{survey}/review"), confirm.clone()),
            StatusCode::BAD_REQUEST,
        ),
        // Fields without a conflict, and fields that do not exist.
        (
            post(&resolve, json!({"field": "bus_service", "value": false})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(
                &format!("/api/records/{check_in}/resolve"),
                json!({"field": "status", "value": "confirmed"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(&resolve, json!({"field": "no_such_field", "value": 1})),
            StatusCode::BAD_REQUEST,
        ),
        // The conflicted field with a value of the wrong type.
        (
            post(
                &resolve,
                json!({"field": "licensed_doctors", "value": "四"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(&resolve, json!({"field": "licensed_doctors", "value": 4.5})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(
                &resolve,
                json!({"field": "licensed_doctors", "value": null}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(
                &resolve,
                json!({"field": "licensed_doctors", "value": {"n": 4}}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(&resolve, json!({"field": "licensed_doctors"})),
            StatusCode::BAD_REQUEST,
        ),
        // Queries.
        (get("/api/hours?by=month"), StatusCode::BAD_REQUEST),
        (
            get("/api/hours?by=volunteer&month=2026-13"),
            StatusCode::BAD_REQUEST,
        ),
        (
            get("/api/hours?by=team&month=11-2026"),
            StatusCode::BAD_REQUEST,
        ),
        (get("/api/hours?month=2026-1"), StatusCode::BAD_REQUEST),
        (get("/api/records?kind=bogus"), StatusCode::BAD_REQUEST),
        (get("/api/records?status=approved"), StatusCode::BAD_REQUEST),
        (get("/api/records?from=28.11.2026"), StatusCode::BAD_REQUEST),
        (get("/export?format=xlsx"), StatusCode::BAD_REQUEST),
        (
            get("/export?kind=bogus&format=csv"),
            StatusCode::BAD_REQUEST,
        ),
        // An unknown device, even for admin.
        (
            http.post("/api/devices/no-such-device/revoke")
                .bearer_auth(&admin),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (i, (request, status)) in bad.into_iter().enumerate() {
        send(request)
            .await
            .expect(status, &format!("bad request #{i}"));
    }

    // Dashboard form posts without a session go to the login page.
    for (path, form) in [
        (
            format!("/review/{check_in}"),
            vec![("csrf", "x"), ("status", "confirmed")],
        ),
        (
            format!("/resolve/{survey}"),
            vec![("csrf", "x"), ("field", "licensed_doctors"), ("pick", "4")],
        ),
        (format!("/devices/{device}/revoke"), vec![("csrf", "x")]),
    ] {
        let reply = send(http.post(&path).form(&form)).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(reply.location(), Some("/login"), "{path}");
    }

    // Nothing changed: records, commits, devices, and what every phone sees.
    assert_eq!(server.records(), records_before, "server records unchanged");
    let metrics_after = metrics(&http).await;
    for name in ["fieldsync_rounds_total", "fieldsync_commit_seconds_count"] {
        assert_eq!(metrics_after[name], metrics_before[name], "{name}");
    }
    let devices = http.get_json("/api/devices", &admin).await;
    let devices = devices.as_array().expect("devices");
    assert_eq!(devices.len(), 3);
    assert!(
        devices.iter().all(|d| d["revoked"] == json!(false)),
        "{devices:?}"
    );
    for (phone, before) in [&v1, &a, &b].into_iter().zip(phones_before) {
        let report = synced(phone, "after the refused requests").await;
        assert_eq!(report.received, 0, "nothing new to pull");
        assert_eq!(phone.records(), before);
    }
    let conflicted = http.get_json("/api/records?conflicted=true", &office).await;
    assert_eq!(
        conflicted.as_array().map(Vec::len),
        Some(1),
        "still conflicted"
    );
    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_is_refused_on_the_login_form_every_form_and_the_api_with_a_session() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let first = v1.check_in("team:1", "清洁家园");
    let second = v1.check_in("team:1", "社区网格化");
    synced(&v1, "check-ins").await;

    // The login form: its double-submit token must come back both as cookie and as field.
    let page = send(http.get("/login")).await;
    let login_csrf = page.cookie("fs_login_csrf").expect("login csrf cookie");
    let form = [
        ("csrf", login_csrf.as_str()),
        ("user", "office"),
        ("password", PASSWORD),
    ];
    let no_cookie = send(http.post("/login").form(&form)).await;
    assert_eq!(
        no_cookie.status,
        StatusCode::FORBIDDEN,
        "login without the cookie"
    );
    assert_eq!(no_cookie.cookie("fs_session"), None);
    let wrong = send(
        http.post("/login")
            .header(COOKIE, "fs_login_csrf=0123456789abcdef")
            .form(&form),
    )
    .await;
    assert_eq!(
        wrong.status,
        StatusCode::FORBIDDEN,
        "login with another cookie"
    );
    assert_eq!(wrong.cookie("fs_session"), None);
    let no_field = send(
        http.post("/login")
            .header(COOKIE, format!("fs_login_csrf={login_csrf}"))
            .form(&[("user", "office"), ("password", PASSWORD)]),
    )
    .await;
    assert_eq!(
        no_field.status,
        StatusCode::FORBIDDEN,
        "login without the field"
    );
    assert_eq!(no_field.cookie("fs_session"), None);
    // An empty cookie and an empty field agree, but an empty token is no token.
    let empty = send(http.post("/login").header(COOKIE, "fs_login_csrf=").form(&[
        ("csrf", ""),
        ("user", "office"),
        ("password", PASSWORD),
    ]))
    .await;
    assert_eq!(
        empty.status,
        StatusCode::FORBIDDEN,
        "login with empty tokens"
    );
    assert_eq!(empty.cookie("fs_session"), None);
    let bad_password = send(
        http.post("/login")
            .header(COOKIE, format!("fs_login_csrf={login_csrf}"))
            .form(&[
                ("csrf", login_csrf.as_str()),
                ("user", "office"),
                ("password", "wrong horse battery"),
            ]),
    )
    .await;
    assert_eq!(bad_password.status, StatusCode::SEE_OTHER);
    assert_eq!(bad_password.location(), Some("/login?error=1"));
    assert_eq!(bad_password.cookie("fs_session"), None);

    let session = http.log_in("office").await;
    // The session cookie a browser gets is out of reach of scripts and other sites.
    let login = send(
        http.post("/login")
            .header(COOKIE, format!("fs_login_csrf={login_csrf}"))
            .form(&form),
    )
    .await;
    let line = login.set_cookie("fs_session").expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(line.contains(attribute), "{attribute} in `{line}`");
    }

    // A form post without the session's token, or with another, is refused.
    let queue = http.page("/review", &session).await;
    assert!(queue.contains(&format!(r#"data-id="{first}""#)), "queued");
    let csrf = hidden_csrf(&queue).expect("csrf on the review page");
    let path = format!("/review/{first}");
    let refused = [
        http.post_form(&path, &session, &[("status", "confirmed"), ("note", "好")])
            .await,
        http.post_form(
            &path,
            &session,
            &[("csrf", ""), ("status", "confirmed"), ("note", "好")],
        )
        .await,
        http.post_form(
            &path,
            &session,
            &[
                ("csrf", login_csrf.as_str()),
                ("status", "confirmed"),
                ("note", "好"),
            ],
        )
        .await,
        http.post_form(
            &path,
            &session,
            &[
                ("csrf", &csrf[..csrf.len() - 1]),
                ("status", "confirmed"),
                ("note", "好"),
            ],
        )
        .await,
    ];
    for (i, reply) in refused.iter().enumerate() {
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "form post #{i} without the right token: {}",
            reply.text()
        );
    }
    let records = server.records();
    assert_eq!(records[&first].fields["status"], text("submitted"));
    assert!(!records[&first].fields.contains_key("reviewed_by"));

    // With the token, as the page's form sends it: confirmed, and back to the queue.
    let ok = http
        .post_form(
            &path,
            &session,
            &[
                ("csrf", csrf.as_str()),
                ("back", "/review"),
                ("note", "好"),
                ("status", "confirmed"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.text());
    assert_eq!(ok.location(), Some("/review"));
    let fields = &server.records()[&first].fields;
    assert_eq!(fields["status"], text("confirmed"));
    assert_eq!(fields["reviewed_by"], text("office"));
    assert_eq!(fields["review_note"], text("好"));
    let queue = http.page("/review", &session).await;
    assert!(
        !queue.contains(&format!(r#"data-id="{first}""#)),
        "left the queue"
    );

    // The JSON API with a session cookie needs the X-CSRF-Token header.
    let api = format!("/api/records/{second}/review");
    let body = json!({"status": "rejected", "note": "重复"});
    let with_session = || {
        http.post(&api)
            .header(COOKIE, session_cookie(&session))
            .json(&body)
    };
    send(with_session())
        .await
        .expect(StatusCode::FORBIDDEN, "API without X-CSRF-Token");
    send(with_session().header("x-csrf-token", "0000"))
        .await
        .expect(StatusCode::FORBIDDEN, "API with a wrong X-CSRF-Token");
    assert_eq!(
        server.records()[&second].fields["status"],
        text("submitted")
    );
    send(with_session().header("x-csrf-token", &csrf))
        .await
        .expect(StatusCode::OK, "API with the session's token");
    assert_eq!(server.records()[&second].fields["status"], text("rejected"));

    // Logging out needs the token too; afterwards the cookie is worth nothing.
    let out = http
        .post_form("/logout", &session, &[("csrf", "0000")])
        .await;
    assert_eq!(
        out.status,
        StatusCode::FORBIDDEN,
        "logout with a wrong token"
    );
    http.page("/records", &session).await;
    let out = http
        .post_form("/logout", &session, &[("csrf", csrf.as_str())])
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let after = send(
        http.get("/records")
            .header(COOKIE, session_cookie(&session)),
    )
    .await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location(), Some("/login"));
    send(
        http.get("/api/records")
            .header(COOKIE, session_cookie(&session)),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED, "API after logout");

    // Reading needs no token; admin's form review, with the right token, is still refused.
    let admin = http.log_in("admin").await;
    let list = send(
        http.get("/api/records")
            .header(COOKIE, session_cookie(&admin)),
    )
    .await;
    list.expect(StatusCode::OK, "API read with a session");
    assert_eq!(list.json().as_array().map(Vec::len), Some(2));
    let admin_csrf = hidden_csrf(&http.page("/records", &admin).await).expect("csrf");
    let third = v1.check_in("team:1", "第三条");
    let report = synced(&v1, "third check-in").await;
    assert_eq!(report.received, 2, "the phone gets the two reviews");
    let reply = http
        .post_form(
            &format!("/review/{third}"),
            &admin,
            &[("csrf", admin_csrf.as_str()), ("status", "confirmed")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "admin does not review");
    assert_eq!(server.records()[&third].fields["status"], text("submitted"));

    // And nothing from the refused one.
    let report = synced(&v1, "after the refused review").await;
    assert_eq!(report.received, 0);
    assert_eq!(v1.records(), server.records());
    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_through_the_api_is_refused_at_its_next_connection() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let admin = server.token("admin");
    let lost = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let other = server.phone(root, "v2", Role::Volunteer, &["team:1"]).await;
    let before = lost.check_in("team:1", "清洁家园");
    synced(&lost, "before revocation").await;
    let device = lost.store.device_id();

    let devices = http.get_json("/api/devices", &admin).await;
    let entry = devices
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["device_id"] == json!(device))
        .cloned()
        .expect("the phone is listed");
    assert_eq!(entry["user_id"], json!("v1"));
    assert_eq!(entry["revoked"], json!(false));
    assert!(entry["last_sync"].is_i64(), "last sync shown: {entry}");

    let reply = send(
        http.post(&format!("/api/devices/{device}/revoke"))
            .bearer_auth(&admin),
    )
    .await;
    reply.expect(StatusCode::OK, "revoke");
    assert_eq!(reply.json()["revoked"], json!(device));

    let after = lost.check_in("team:1", "手机丢失之后");
    match lost.sync().await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized, "{message}");
            assert!(message.contains("revoked"), "clear reason: {message}");
        }
        other => panic!("a revoked device must be refused, got {other:?}"),
    }
    assert_eq!(lost.store.pending_count()?, 1, "its record stays pending");
    assert!(
        lost.records().contains_key(&after),
        "and stays on the phone"
    );
    let truth = server.records();
    assert!(truth.contains_key(&before));
    assert!(
        !truth.contains_key(&after),
        "nothing from the revoked device"
    );

    let devices = http.get_json("/api/devices", &admin).await;
    for d in devices.as_array().expect("devices") {
        let revoked = d["device_id"] == json!(device);
        assert_eq!(d["revoked"], json!(revoked), "{d}");
    }
    // The user's other device is unaffected.
    let mine = other.check_in("team:1", "文明城市创建");
    synced(&other, "another device").await;
    assert!(server.records().contains_key(&mine));
    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_move_with_a_sync() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;

    let reply = send(http.get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    assert!(
        content_type.is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{content_type:?}"
    );
    let body = reply.text();
    let names = [
        ("fieldsync_connections_total", "counter"),
        ("fieldsync_connections_open", "gauge"),
        ("fieldsync_rounds_total", "counter"),
        ("fieldsync_records_accepted_total", "counter"),
        ("fieldsync_records_refused_total", "counter"),
        ("fieldsync_records_deferred_total", "counter"),
        ("fieldsync_commit_seconds", "summary"),
    ];
    for (name, kind) in names {
        assert!(
            body.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}: {body}"
        );
        assert!(body.contains(&format!("# HELP {name} ")), "{name}: {body}");
    }
    let before = samples(&body);
    for name in [
        "fieldsync_commit_seconds_sum",
        "fieldsync_commit_seconds_count",
    ] {
        assert!(before.contains_key(name), "{name}: {body}");
    }
    assert_eq!(
        before["fieldsync_connections_total"], 1.0,
        "the enrollment connection"
    );

    v1.check_in("team:1", "清洁家园");
    v1.check_in("team:1", "文明城市创建");
    // A phone with out-of-date rules writes what the server refuses (counted below).
    let real = v1.believe(Role::Volunteer, &["team:1", "team:2"]);
    v1.check_in("team:2", "别的队");
    v1.restore(&real);
    let report = v1.sync().await?;
    assert_eq!((report.sent, report.refused.len()), (2, 1));

    let after = metrics(&http).await;
    let moved = |name: &str| after[name] - before[name];
    assert_eq!(moved("fieldsync_connections_total"), 1.0);
    assert_eq!(moved("fieldsync_rounds_total"), 1.0);
    assert_eq!(moved("fieldsync_records_accepted_total"), 2.0);
    assert_eq!(moved("fieldsync_records_refused_total"), 1.0);
    assert_eq!(moved("fieldsync_commit_seconds_count"), 1.0);
    assert!(moved("fieldsync_commit_seconds_sum") > 0.0, "{after:?}");
    assert!(after["fieldsync_connections_open"] <= 1.0);
    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_code_from_the_dashboard_enrolls_a_phone_that_syncs() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);

    let admin = http.log_in("admin").await;
    let page = http.page("/devices", &admin).await;
    assert!(
        page.contains(r#"id="enroll""#),
        "admin sees the enroll form"
    );
    let csrf = hidden_csrf(&page).expect("csrf");
    let form = |csrf: &str, user: &str| {
        vec![
            ("csrf".to_string(), csrf.to_string()),
            ("user".to_string(), user.to_string()),
            ("name".to_string(), "赵六".to_string()),
            ("role".to_string(), "volunteer".to_string()),
            ("scopes".to_string(), "team:9".to_string()),
            ("hours".to_string(), "1".to_string()),
        ]
    };
    let post = |session: &str, form: Vec<(String, String)>| {
        http.post("/devices/enroll")
            .header(COOKIE, session_cookie(session))
            .form(&form)
    };

    // Without the token nothing is issued.
    let refused = send(post(&admin, form("wrong", "v9"))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(server.dir.store.user("v9")?.is_none(), "no user made");

    // The form answers with a redirect (post/redirect/get), so reloading the page it lands on
    // never posts the form again; that page shows the code once.
    let reply = send(post(&admin, form(&csrf, "v9"))).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    assert_eq!(reply.location(), Some("/devices"));
    let html = http.page("/devices", &admin).await;
    let marker = r#"<code id="code">"#;
    let start = html.find(marker).expect("the code on the page") + marker.len();
    let code = html[start..]
        .split('<')
        .next()
        .expect("code text")
        .to_string();
    assert_eq!(code.len(), 12, "a 12-character code: {code}");
    assert!(html.contains("<svg"), "a QR code");
    assert!(
        html.contains(&server.dir.fingerprint()),
        "the fingerprint is shown"
    );
    assert!(
        html.contains(&server.addr().to_string()),
        "the sync address is shown"
    );
    let reloaded = http.page("/devices", &admin).await;
    assert!(
        !reloaded.contains(r#"id="enrollment""#),
        "a reload shows the code no more"
    );
    let other_admin = http.log_in("admin").await;
    let fresh = send(post(
        &other_admin,
        form(
            &hidden_csrf(&http.page("/devices", &other_admin).await).expect("csrf"),
            "v9b",
        ),
    ))
    .await;
    assert_eq!(fresh.status, StatusCode::SEE_OTHER);
    assert!(
        !http
            .page("/devices", &admin)
            .await
            .contains(r#"id="enrollment""#),
        "another session's code is not shown to this one"
    );
    assert!(
        http.page("/devices", &other_admin)
            .await
            .contains(r#"id="enrollment""#),
        "but to the session that issued it"
    );

    let phone = Phone::open(&root.join("phone-v9"));
    let info = client::enroll(
        &phone.store,
        &server.addr().to_string(),
        &server.dir.fingerprint(),
        &code,
    )
    .await?;
    assert_eq!(info.user_id, "v9");
    let id = phone.check_in("team:9", "文明城市创建");
    let report = synced(&phone, "enrolled from the dashboard").await;
    assert_eq!(report.sent, 1);
    let stored = &server.records()[&id];
    assert_eq!(stored.scope, "team:9");
    assert_eq!(stored.fields["volunteer_id"], text("v9"));
    // The scopes came from the form: another team is refused, by the phone at once and by
    // the server from a phone whose rules say otherwise.
    let fields = check_in_fields("v9", "越权");
    match phone.store.create(Kind::CheckIn, "team:8", &fields) {
        Err(StoreError::Forbidden(reason)) => assert!(reason.contains("team:8"), "{reason}"),
        other => panic!("team:8 is not v9's: {other:?}"),
    }
    let real = phone.believe(Role::Volunteer, &["team:9", "team:8"]);
    phone.check_in("team:8", "越权");
    phone.restore(&real);
    let report = phone.sync().await?;
    assert_eq!(report.refused.len(), 1, "{report:?}");

    // The code enrolls one device, once.
    let second = Phone::open(&root.join("phone-v9-again"));
    match client::enroll(
        &second.store,
        &server.addr().to_string(),
        &server.dir.fingerprint(),
        &code,
    )
    .await
    {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::BadCode),
        other => panic!("a used code must be refused, got {other:?}"),
    }

    // Office staff may not issue codes.
    let office = http.log_in("office").await;
    let page = http.page("/devices", &office).await;
    assert!(
        !page.contains(r#"id="enroll""#),
        "no enroll form for office"
    );
    let office_csrf = hidden_csrf(&page).expect("csrf of the office session");
    let reply = send(post(&office, form(&office_csrf, "v10"))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(!reply.text().contains(r#"id="code""#));
    assert!(server.dir.store.user("v10")?.is_none(), "no user made");

    server.running.take().expect("running").stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_concurrent_reviews_of_one_record_by_one_user_all_land() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let http = Http::new(&server);
    let token = server.token("office");
    let v1 = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let id = v1.check_in("team:1", "清洁家园");
    synced(&v1, "check-in").await;
    let path = format!("/api/records/{id}/review");

    // The office changes its mind: a second change under the same office actor.
    http.post_json(&path, &token, &json!({"status": "confirmed", "note": "一"}))
        .await
        .expect(StatusCode::OK, "confirm");
    let reply = http
        .post_json(&path, &token, &json!({"status": "rejected", "note": "二"}))
        .await;
    reply.expect(StatusCode::OK, "reject after confirming");
    assert_eq!(reply.json()["fields"]["status"], json!("rejected"));

    // A double click, or two tabs: several reviews of one record at once by one user.
    const AT_ONCE: usize = 8;
    let requests: Vec<_> = (0..AT_ONCE)
        .map(|i| {
            let status = if i.is_multiple_of(2) {
                "confirmed"
            } else {
                "rejected"
            };
            let request = http
                .post(&path)
                .bearer_auth(&token)
                .json(&json!({"status": status, "note": format!("n{i}")}));
            tokio::spawn(send(request))
        })
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        request
            .await?
            .expect(StatusCode::OK, &format!("concurrent review {i}"));
    }
    let stored = &server.records()[&id];
    assert!(stored.conflicts.is_empty(), "{:?}", stored.conflicts);
    let note = stored.text("review_note").expect("note");
    let i: usize = note
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("one of the notes sent: {note}"));
    let status = if i.is_multiple_of(2) {
        "confirmed"
    } else {
        "rejected"
    };
    assert_eq!(
        stored.text("status"),
        Some(status),
        "status and note of one review"
    );

    let history = http.get_json(&format!("/api/records/{id}"), &token).await["history"]
        .as_array()
        .cloned()
        .expect("history");
    assert_eq!(history.len(), 1 + 2 + AT_ONCE, "every review is a change");
    for change in &history[1..] {
        assert_eq!(change["device_id"], json!("web:office"), "{change}");
    }
    synced(&v1, "after the reviews").await;
    assert_eq!(&v1.records()[&id], stored);
    server.running.take().expect("running").stop().await;
    Ok(())
}

/// Office user `office` and admin user `admin`, both with password [`PASSWORD`].
fn add_staff_accounts(store: &ServerStore) {
    for (id, name, role) in [
        ("office", "办公室小李", Role::Office),
        ("admin", "管理员", Role::Admin),
    ] {
        let user = User {
            id: id.into(),
            name: name.into(),
            role,
            scopes: Vec::new(),
        };
        fieldsync_server::auth::add_staff(store, &user, PASSWORD).expect("staff user");
    }
}

/// Serves `store` with the dashboard on 127.0.0.1:0 under `limits`, with the staff accounts of
/// [`add_staff_accounts`].
fn start_dashboard(store: ServerStore, identity: &KeyAndCert, limits: HttpLimits) -> Running {
    add_staff_accounts(&store);
    let options = ServeOptions {
        http: Some("127.0.0.1:0".parse().expect("addr")),
        http_limits: limits,
        ..ServeOptions::quic("127.0.0.1:0".parse().expect("addr"))
    };
    fieldsync_server::start_with(store, identity, options).expect("start server")
}

/// A new data folder under `root`, served by [`start_dashboard`].
fn dashboard_in(root: &Path, limits: HttpLimits) -> (fieldsync_server::DataDir, Running) {
    let dir = fieldsync_server::DataDir::init(&root.join("server")).expect("init data folder");
    let running = start_dashboard(dir.store.clone(), &dir.identity, limits);
    (dir, running)
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A TCP connection to `to` from loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

/// Sends `head` and then one more byte every 200 ms, never finishing the request; returns how
/// long after connecting the server closed the connection, or None if it was still open after
/// 30 s.
async fn trickle(from: IpAddr, to: SocketAddr, head: &'static [u8]) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = connect_from(from, to).await;
    let mut bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(30) {
        let byte = bytes.next().unwrap_or(b'a');
        if stream.write_all(&[byte]).await.is_err() {
            return Some(started.elapsed());
        }
        // Closed or reset ends it; an answer (503 over the share, 408 past the deadline) is
        // followed by the close.
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return Some(started.elapsed());
        }
    }
    None
}

/// A request head that never ends: one header whose value trickles on.
const ENDLESS_HEAD: &[u8] = b"GET /login HTTP/1.1\r\nHost: dashboard\r\nX-Trickle: ";
/// A whole head announcing a body that then trickles.
const SLOW_BODY: &[u8] = b"POST /login HTTP/1.1\r\nHost: dashboard\r\n\
    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nuser=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_clients_are_closed_by_the_deadlines_while_a_real_request_gets_through()
-> TestResult {
    let tmp = tempfile::tempdir()?;
    let limits = HttpLimits {
        max_connections: 8,
        per_address: 4,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let (_dir, running) = dashboard_in(tmp.path(), limits);
    let addr = running.http_addr.ok_or("no dashboard")?;

    // 12 from one address (three times its share) and 4 from each of two more: 20 tricklers
    // for 8 slots, most of them trickling a head, some a body.
    let mut tricklers = Vec::new();
    for (n, count) in [(2, 12), (3, 4), (4, 4)] {
        for i in 0..count {
            let head = if i % 3 == 0 { SLOW_BODY } else { ENDLESS_HEAD };
            tricklers.push(tokio::spawn(trickle(loopback(n), addr, head)));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A real request on a fresh connection gets through within a few header deadlines.
    let started = Instant::now();
    let http = Http::at(format!("http://{addr}"), Some(loopback(1)));
    let page = tokio::time::timeout(Duration::from_secs(6), send(http.get("/login"))).await;
    let took = started.elapsed();
    let page = page.map_err(|_| "no answer in 6 s while tricklers held the dashboard")?;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    println!("a real request took {took:?} among 20 tricklers");

    // Every trickler was closed, none later than its wait for a slot plus a deadline.
    for (i, trickler) in tricklers.into_iter().enumerate() {
        let closed = trickler.await?;
        let closed = closed.ok_or_else(|| format!("trickler {i} still open after 30 s"))?;
        assert!(
            closed < Duration::from_secs(6),
            "trickler {i} held its connection for {closed:?}"
        );
    }

    // A keep-alive connection waiting for its next request is closed after the head deadline.
    let mut idle = connect_from(loopback(1), addr).await;
    idle.write_all(b"GET /login HTTP/1.1\r\nHost: dashboard\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let served = Instant::now();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(6), idle.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break served.elapsed(),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => return Err("an idle keep-alive connection stayed open".into()),
        }
    };
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "the request on it was served"
    );
    assert!(
        closed < Duration::from_secs(4),
        "idle for {closed:?} before it was closed"
    );
    running.stop().await;
    Ok(())
}

/// One login through the form from `http`'s address.
async fn try_login(http: &Http, user: &str, password: &str) -> Reply {
    let page = send(http.get("/login")).await;
    let csrf = page.cookie("fs_login_csrf").expect("login CSRF cookie");
    send(
        http.post("/login")
            .header(COOKIE, format!("fs_login_csrf={csrf}"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("user", user),
                ("password", password),
            ]),
    )
    .await
}

fn logged_in(reply: &Reply) -> bool {
    reply.status == StatusCode::SEE_OTHER && reply.location() == Some("/records")
}

fn wrong_password(reply: &Reply) -> bool {
    reply.status == StatusCode::SEE_OTHER && reply.location() == Some("/login?error=1")
}

/// The `Retry-After` seconds of a 429.
fn limited(reply: &Reply) -> Option<u64> {
    (reply.status == StatusCode::TOO_MANY_REQUESTS)
        .then(|| {
            reply
                .headers
                .get("retry-after")?
                .to_str()
                .ok()?
                .parse()
                .ok()
        })
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_limited_without_locking_out_other_accounts_or_addresses() -> TestResult
{
    let tmp = tempfile::tempdir()?;
    let limits = HttpLimits {
        login: LoginLimits {
            free_per_pair: 3,
            free_per_address: 10,
            free_per_account: 10,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
            forget_after: Duration::from_secs(60),
            ..LoginLimits::default()
        },
        ..HttpLimits::default()
    };
    let (_dir, running) = dashboard_in(tmp.path(), limits);
    let base = format!("http://{}", running.http_addr.ok_or("no dashboard")?);
    let guesser = Http::at(base.clone(), Some(loopback(1)));

    for i in 0..3 {
        let reply = try_login(&guesser, "office", &format!("guess {i}")).await;
        assert!(wrong_password(&reply), "guess {i}: {}", reply.status);
    }
    // Limited now: a fourth guess and even the right password are refused, with a wait.
    let reply = try_login(&guesser, "office", "guess 3").await;
    assert_eq!(
        limited(&reply),
        Some(1),
        "{} {}",
        reply.status,
        reply.text()
    );
    let reply = try_login(&guesser, "office", PASSWORD).await;
    assert_eq!(limited(&reply), Some(1), "the right password while limited");
    assert_eq!(reply.cookie("fs_session"), None);

    // Another account from the same address is not held up, nor this one from elsewhere.
    assert!(logged_in(&try_login(&guesser, "admin", PASSWORD).await));
    let elsewhere = Http::at(base.clone(), Some(loopback(2)));
    assert!(logged_in(&try_login(&elsewhere, "office", PASSWORD).await));

    // After the wait one more guess is checked, and the wait doubles.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(wrong_password(
        &try_login(&guesser, "office", "guess 4").await
    ));
    let reply = try_login(&guesser, "office", PASSWORD).await;
    assert_eq!(limited(&reply), Some(2), "the wait doubled");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = try_login(&guesser, "office", PASSWORD).await;
    assert!(
        logged_in(&reply),
        "accepted after the wait: {}",
        reply.status
    );
    // The success cleared the count.
    assert!(wrong_password(&try_login(&guesser, "office", "typo").await));

    // Guesses sent at once are counted as they start: no more than the free ones are checked.
    let crowd = Http::at(base, Some(loopback(3)));
    let mut guesses = Vec::new();
    for i in 0..10 {
        let page = send(crowd.get("/login")).await;
        let csrf = page.cookie("fs_login_csrf").ok_or("no login cookie")?;
        guesses.push(tokio::spawn(send(
            crowd
                .post("/login")
                .header(COOKIE, format!("fs_login_csrf={csrf}"))
                .form(&[
                    ("csrf", csrf.clone()),
                    ("user", "admin".into()),
                    ("password", format!("guess {i}")),
                ]),
        )));
    }
    let mut checked = 0;
    for guess in guesses {
        let reply = guess.await?;
        if wrong_password(&reply) {
            checked += 1;
        } else {
            assert!(
                limited(&reply).is_some() || reply.status == StatusCode::SERVICE_UNAVAILABLE,
                "{} {}",
                reply.status,
                reply.text()
            );
        }
    }
    assert!(
        checked <= 3,
        "{checked} of 10 simultaneous guesses were checked"
    );
    running.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_page_turns_a_volunteer_into_office_staff_only_when_told_to() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start_http(root);
    let _phone = server
        .phone(root, "zhang3", Role::Volunteer, &["team:7"])
        .await;
    let http = Http::new(&server);
    let admin = http.log_in("admin").await;
    let csrf = hidden_csrf(&http.page("/users", &admin).await).ok_or("no csrf")?;
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("user", "zhang3"),
        ("name", "张三"),
        ("role", "office"),
        ("password", "a long enough password"),
    ];
    let refused = http.post_form("/users", &admin, &form).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text());
    for part in ["zhang3", "volunteer", "team:7", "enrolled device"] {
        assert!(
            refused.text().contains(part),
            "`{part}` in {}",
            refused.text()
        );
    }
    let user = server.dir.store.user("zhang3")?.ok_or("no user")?;
    assert_eq!(user.role, Role::Volunteer, "nothing changed");
    assert_eq!(server.dir.store.password_hash("zhang3")?, None);

    form.push(("replace", "1"));
    let replaced = http.post_form("/users", &admin, &form).await;
    assert_eq!(
        replaced.status,
        StatusCode::SEE_OTHER,
        "{}",
        replaced.text()
    );
    let user = server.dir.store.user("zhang3")?.ok_or("no user")?;
    assert_eq!(user.role, Role::Office);
    assert!(server.dir.store.password_hash("zhang3")?.is_some());
    server.running.take().ok_or("not running")?.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_language_switch_goes_back_only_to_a_same_site_path() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut server = TestServer::start_http(tmp.path());
    let http = Http::new(&server);
    let base = server.http_url();
    let cases = [
        (
            format!("{base}/records?kind=check_in"),
            "/records?kind=check_in",
        ),
        (format!("{base}/review"), "/review"),
        (format!("{base}/\\evil.example/x"), "/"),
        (format!("{base}/\\\\evil.example/x"), "/"),
        (format!("{base}//evil.example/x"), "/"),
        (format!("{base}/\t/evil.example/x"), "/"),
        (format!("{base}/x\\..\\..\\evil"), "/"),
        ("javascript:alert(1)".to_string(), "/"),
        ("//evil.example/x".to_string(), "/"),
        (base.clone(), "/"),
    ];
    for (referer, back) in cases {
        let reply = send(http.get("/lang/en").header("referer", &referer)).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{referer}");
        assert_eq!(reply.location(), Some(back), "Referer {referer:?}");
        assert_eq!(reply.cookie("fs_lang").as_deref(), Some("en"));
    }
    let reply = send(http.get("/lang/zh")).await;
    assert_eq!(reply.location(), Some("/"), "no Referer");
    server.running.take().ok_or("not running")?.stop().await;
    Ok(())
}

/// Holds durable writes (`sync_data`) while shut, and counts the writers it holds.
#[derive(Debug, Default)]
struct Gate {
    shut: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

impl Gate {
    fn set(&self, shut: bool) {
        *self.shut.lock().expect("gate") = shut;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut shut = self.shut.lock().expect("gate");
        if *shut {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *shut {
                shut = self.opened.wait(shut).expect("gate");
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A redb file in memory whose durable writes wait at a [`Gate`], like a stalled disk.
#[derive(Debug)]
struct GatedDisk {
    disk: redb::backends::InMemoryBackend,
    gate: Arc<Gate>,
}

impl redb::StorageBackend for GatedDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.disk.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.disk.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.disk.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.gate.pass();
        self.disk.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.disk.write(offset, data)
    }
}

/// The server runs on a runtime of one thread: a handler that did a durable write on it would
/// stop every other request until the disk answers.
#[test]
fn a_handler_waiting_on_the_disk_never_stops_the_server_answering_others() -> TestResult {
    let gate = Arc::new(Gate::default());
    let store = ServerStore::open_backend(GatedDisk {
        disk: redb::backends::InMemoryBackend::new(),
        gate: gate.clone(),
    })?;
    let volunteer = User {
        id: "v1".into(),
        name: "李四".into(),
        role: Role::Volunteer,
        scopes: vec!["team:1".parse()?],
    };
    store.create_code(&volunteer, "CODE1", i64::MAX)?;
    store.enroll("CODE1", "0a0b", 0)?;
    let identity = KeyAndCert::generate(fieldsync_proto::protocol::SERVER_NAME)?;
    let token_store = store.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let running = start_dashboard(store, &identity, HttpLimits::default());
            addr_tx.send(running.http_addr).expect("address");
            let _ = stopped.await;
            running.stop().await;
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))?
        .ok_or("no dashboard")?;
    let token = fieldsync_server::auth::issue_token(&token_store, "admin", 0)?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result: TestResult = client.block_on(async move {
        let http = Http::at(format!("http://{addr}"), None);
        let admin = http.log_in("admin").await;
        let csrf = hidden_csrf(&http.page("/devices", &admin).await).ok_or("no csrf")?;
        let enroll = [
            ("csrf", csrf.as_str()),
            ("user", "v5"),
            ("name", "王五"),
            ("role", "volunteer"),
            ("scopes", "team:5"),
            ("hours", "1"),
        ];
        let writes = [
            (
                "revoke",
                http.post("/api/devices/0a0b/revoke").bearer_auth(&token),
            ),
            (
                "enrollment form",
                http.post("/devices/enroll")
                    .header(COOKIE, session_cookie(&admin))
                    .form(&enroll),
            ),
            (
                "logout",
                http.post("/logout")
                    .header(COOKIE, session_cookie(&admin))
                    .form(&[("csrf", csrf.as_str())]),
            ),
        ];
        for (what, request) in writes {
            gate.set(true);
            let pending = tokio::spawn(send(request));
            let parked = Instant::now();
            while gate.waiting.load(Ordering::SeqCst) == 0 {
                if parked.elapsed() > Duration::from_secs(10) {
                    gate.set(false);
                    return Err(format!("{what}: no durable write reached the disk").into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let other =
                tokio::time::timeout(Duration::from_secs(5), send(http.get("/login"))).await;
            gate.set(false);
            let other = other
                .map_err(|_| format!("{what}: nothing answered while it waited on the disk"))?;
            assert_eq!(other.status, StatusCode::OK, "{what}");
            let reply = pending.await?;
            assert!(
                reply.status.is_success() || reply.status == StatusCode::SEE_OTHER,
                "{what}: {} {}",
                reply.status,
                reply.text()
            );
        }
        Ok(())
    });
    let _ = stop.send(());
    server.join().map_err(|_| "the server thread panicked")?;
    result
}
