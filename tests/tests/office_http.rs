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
//!   may issue one.

use std::collections::BTreeMap;
use std::path::Path;

use fieldsync_device::client::{self, ClientError};
use fieldsync_proto::Role;
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::ErrorCode;
use fieldsync_proto::sync::RoundReport;
use fieldsync_tests::{PASSWORD, Phone, TestResult, TestServer, check_in_fields, text};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

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
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        Http {
            client,
            base: server.http_url(),
        }
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
    v1.check_in("team:2", "别的队");
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

    let reply = send(post(&admin, form(&csrf, "v9"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let html = reply.text();
    let marker = r#"<code id="code">"#;
    let start = html.find(marker).expect("the code on the page") + marker.len();
    let code = html[start..]
        .split('<')
        .next()
        .expect("code text")
        .to_string();
    assert_eq!(code.len(), 10, "a 10-character code: {code}");
    assert!(html.contains("<svg"), "a QR code");
    assert!(
        html.contains(&server.dir.fingerprint()),
        "the fingerprint is shown"
    );
    assert!(
        html.contains(&server.addr().to_string()),
        "the sync address is shown"
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
    // The scopes came from the form: another team is refused.
    phone.check_in("team:8", "越权");
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
