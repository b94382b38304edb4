//! The office dashboard in a real headless Chromium, driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, installed by `scripts/install-browser.sh`), against a real
//! server on loopback with real phones syncing over QUIC.
//!
//! Office staff log in, confirm a check-in from the review queue, settle a conflicting survey
//! value, switch the language and download the CSV export; an admin issues an enrollment code
//! whose QR is shown and which then enrolls a real phone. Every main page is saved as a PNG under
//! `target/screenshots/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use fieldsync_proto::Role;
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_tests::{PASSWORD, Phone, TestServer, check_in_fields, text};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The longest any one thing in the browser may take (page load, download, a redirect).
const PATIENCE: Duration = Duration::from_secs(30);

type Error = Box<dyn std::error::Error>;

/// Fails (never skips) when the browser is not installed: CI must run it.
fn require_browser() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "the browser tests need Debian's Chromium and chromedriver, and {} is missing: \
         run `scripts/install-browser.sh` (as root) to install chromium, chromium-driver and \
         fonts-noto-cjk",
        missing.join(" and ")
    );
}

/// `chromedriver` started by this test, and the Chromium session it runs. Dropping it (also
/// when the test panics) ends the session, so Chromium quits, then kills chromedriver.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
    log: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it says it is ready.
    async fn start(dir: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("chromedriver.log");
        let out = std::fs::File::create(&log).expect("chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {CHROMEDRIVER}: {e}"));
        let mut driver = Driver {
            child,
            port,
            session: None,
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "chromedriver exited at once ({status}):\n{}",
                    driver.log_text()
                );
            }
            let ready = http
                .get(format!("{}/status", driver.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = ready
                && let Ok(body) = response.json::<serde_json::Value>().await
                && body["value"]["ready"] == json!(true)
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port}:\n{}",
                driver.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A Chromium session: headless, offline-friendly, its own profile, downloads into
    /// `downloads` without asking.
    async fn browser(&mut self, profile: &Path, downloads: &Path) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--password-store=basic",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("an object")
        };
        // Plain HTTP to chromedriver on loopback: no TLS connector needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium: {e}\n{}",
                    self.log_text()
                )
            });
        self.session = client.session_id().await.ok().flatten();
        client
    }

    /// Ends the session with a plain HTTP request, so it also works while unwinding.
    fn end_session(&mut self) {
        let Some(id) = self.session.take() else {
            return;
        };
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
            let request = format!(
                "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                read_response(&mut stream);
            }
        }
    }
}

/// Reads one HTTP response (chromedriver may keep the connection open after it).
fn read_response(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.end_session();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser pointed at the dashboard, with small helpers for what the test does often.
struct Browser {
    client: Client,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn goto(&self, path: &str) -> Result<(), Error> {
        self.client.goto(&format!("{}{path}", self.base)).await?;
        Ok(())
    }

    async fn path(&self) -> Result<String, Error> {
        Ok(self.client.current_url().await?.path().to_string())
    }

    async fn count(&self, css: &str) -> Result<usize, Error> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    async fn text(&self, css: &str) -> Result<String, Error> {
        Ok(self.client.find(Locator::Css(css)).await?.text().await?)
    }

    async fn click(&self, css: &str) -> Result<(), Error> {
        self.client.find(Locator::Css(css)).await?.click().await?;
        Ok(())
    }

    /// Polls `check` until it holds, failing with `what` after [`PATIENCE`].
    async fn until(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the browser shows `path` and the page has loaded.
    async fn arrive(&self, path: &str) {
        self.until(&format!("the browser to show {path}"), async || {
            self.path().await.is_ok_and(|p| p == path)
                && self
                    .client
                    .execute("return document.readyState", vec![])
                    .await
                    .is_ok_and(|s| s == "complete")
        })
        .await;
    }

    /// A screenshot of the whole page (the window is stretched to the page's height).
    async fn shot(&self, name: &str) -> Result<(), Error> {
        let size = self
            .client
            .execute(
                "return [document.documentElement.scrollHeight, \
                 window.outerHeight - window.innerHeight]",
                vec![],
            )
            .await?;
        let page = size[0].as_u64().unwrap_or(900);
        let frame = size[1].as_u64().unwrap_or(0);
        let height = (page + frame).clamp(600, 6000) as u32;
        self.client.set_window_size(1280, height).await?;
        let png = self.client.screenshot().await?;
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png)?;
        self.client.set_window_size(1280, 900).await?;
        Ok(())
    }

    async fn login(&self, user: &str) -> Result<(), Error> {
        self.goto("/login").await?;
        self.client
            .find(Locator::Css("input[name=user]"))
            .await?
            .send_keys(user)
            .await?;
        self.client
            .find(Locator::Css("input[name=password]"))
            .await?
            .send_keys(PASSWORD)
            .await?;
        self.click("#login").await?;
        self.arrive("/records").await;
        let nav = self.text("nav").await?;
        assert!(nav.contains(user_name(user)), "logged in as {user}: {nav}");
        Ok(())
    }

    async fn logout(&self) -> Result<(), Error> {
        self.click("nav form[action='/logout'] button").await?;
        self.arrive("/login").await;
        Ok(())
    }
}

fn user_name(user: &str) -> &'static str {
    match user {
        "office" => "办公室小李",
        _ => "管理员",
    }
}

/// The whole office day in the browser, bounded in time so a hung browser fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn office_works_the_dashboard_in_headless_chromium() {
    require_browser();
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut driver = Driver::start(root).await;
    let result =
        tokio::time::timeout(Duration::from_secs(300), office_day(root, &mut driver)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}\nchromedriver log:\n{}", driver.log_text()),
        Err(_) => panic!(
            "the browser test took over 5 minutes\nchromedriver log:\n{}",
            driver.log_text()
        ),
    }
    drop(driver);
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}

async fn office_day(root: &Path, driver: &mut Driver) -> Result<(), Error> {
    let mut server = TestServer::start_http(root);

    // Phones: a volunteer submits two check-ins; two village phones edit the same survey
    // field apart, and both sync, so the server holds both values.
    let volunteer = server.phone(root, "v1", Role::Volunteer, &["team:1"]).await;
    let check_in = |activity: &str| {
        let mut fields = check_in_fields("v1", activity);
        fields.push(("volunteer_name".into(), text("张三")));
        volunteer
            .store
            .create(Kind::CheckIn, "team:1", &fields)
            .expect("check-in")
            .id
    };
    let to_confirm = check_in("清洁家园");
    let stays = check_in("文明城市创建");
    volunteer.sync().await?;
    let a = server.phone(root, "a", Role::Village, &["village:3"]).await;
    let b = server.phone(root, "b", Role::Village, &["village:3"]).await;
    let survey = a.create(
        Kind::VillageSurvey,
        "village:3",
        &[
            ("village", text("大坪村")),
            ("tap_water_pct", FieldValue::Number(95.0)),
        ],
    );
    a.sync().await?;
    b.sync().await?;
    a.set(
        &survey,
        &[
            ("licensed_doctors", FieldValue::Integer(2)),
            ("broadband_mbps", FieldValue::Number(20.0)),
        ],
    );
    b.set(
        &survey,
        &[
            ("licensed_doctors", FieldValue::Integer(3)),
            ("broadband_mbps", FieldValue::Number(50.0)),
        ],
    );
    a.sync().await?;
    b.sync().await?;
    a.sync().await?;
    let conflicts = &server.records()[&survey].conflicts;
    assert_eq!(conflicts["licensed_doctors"].len(), 2, "both doctor counts");
    assert_eq!(conflicts["broadband_mbps"].len(), 2, "both bandwidths");

    let profile = root.join("chromium-profile");
    let downloads = root.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&shots)?;
    let client = driver.browser(&profile, &downloads).await;
    let browser = Browser {
        client,
        base: server.http_url(),
        shots,
    };

    // Not logged in: every page leads to the login form, in Chinese.
    browser.goto("/review").await?;
    browser.arrive("/login").await;
    assert!(browser.text("h1").await?.contains("登录"));
    browser.shot("login").await?;

    // A wrong password says so and logs nobody in.
    browser
        .client
        .find(Locator::Css("input[name=user]"))
        .await?
        .send_keys("office")
        .await?;
    browser
        .client
        .find(Locator::Css("input[name=password]"))
        .await?
        .send_keys("not the password")
        .await?;
    browser.click("#login").await?;
    browser.arrive("/login").await;
    assert!(
        browser.count("#login-error").await? == 1,
        "wrong password shown"
    );

    // Office logs in (the session cookie is Secure + SameSite=Strict over http://127.0.0.1).
    browser.login("office").await?;
    let nav = browser.text("nav").await?;
    for label in ["记录", "待审核", "冲突", "服务时长", "村情台账", "设备"] {
        assert!(nav.contains(label), "nav has {label}: {nav}");
    }
    assert!(!nav.contains("用户"), "office sees no users link: {nav}");
    assert_eq!(
        browser.count("#records tr").await?,
        4,
        "header and three records"
    );
    browser.shot("records").await?;

    // English and back: the switch keeps the page.
    browser.click("nav a[href='/lang/en']").await?;
    browser
        .until("the English navigation", async || {
            browser
                .text("nav")
                .await
                .is_ok_and(|n| n.contains("Review"))
        })
        .await;
    assert_eq!(browser.path().await?, "/records");
    let nav = browser.text("nav").await?;
    for label in [
        "Records",
        "Review",
        "Conflicts",
        "Hours",
        "Villages",
        "Devices",
        "Log out",
    ] {
        assert!(nav.contains(label), "English nav has {label}: {nav}");
    }
    assert!(!nav.contains("待审核"), "no Chinese left in the nav: {nav}");
    assert!(browser.text("h1").await?.contains("Records"));
    browser.shot("records-en").await?;
    browser.click("nav a[href='/lang/zh']").await?;
    browser
        .until("the Chinese navigation", async || {
            browser
                .text("nav")
                .await
                .is_ok_and(|n| n.contains("待审核"))
        })
        .await;

    // Review queue: confirm one check-in; only its row goes.
    browser.goto("/review").await?;
    browser.arrive("/review").await;
    let row = |id: &str| format!("#review-queue tr[data-id='{id}']");
    assert_eq!(browser.count(&row(&to_confirm)).await?, 1);
    assert_eq!(browser.count(&row(&stays)).await?, 1);
    assert!(browser.text(&row(&to_confirm)).await?.contains("张三"));
    browser.shot("review").await?;
    browser
        .client
        .find(Locator::Css(&format!(
            "{} input[name=note]",
            row(&to_confirm)
        )))
        .await?
        .send_keys("核实无误")
        .await?;
    browser
        .click(&format!("{} button.confirm", row(&to_confirm)))
        .await?;
    browser
        .until("the confirmed check-in to leave the queue", async || {
            browser.path().await.is_ok_and(|p| p == "/review")
                && browser.count(&row(&to_confirm)).await.is_ok_and(|n| n == 0)
        })
        .await;
    assert_eq!(browser.count(&row(&stays)).await?, 1, "the other one waits");
    let confirmed = &server.records()[&to_confirm];
    assert_eq!(confirmed.fields["status"], text("confirmed"));
    assert_eq!(confirmed.fields["review_note"], text("核实无误"));
    assert_eq!(confirmed.fields["reviewed_by"], text("office"));
    assert_eq!(server.records()[&stays].fields["status"], text("submitted"));
    volunteer.sync().await?;
    let on_phone = &volunteer.records()[&to_confirm];
    assert_eq!(
        on_phone.fields["status"],
        text("confirmed"),
        "the phone sees the review"
    );
    assert_eq!(on_phone.fields["review_note"], text("核实无误"));

    // The record page shows the review in its history, attributed to the office user.
    browser.goto(&format!("/records/{to_confirm}")).await?;
    browser.arrive(&format!("/records/{to_confirm}")).await;
    let history = browser.text("#history").await?;
    assert!(
        history.contains("办公室小李"),
        "history names the reviewer: {history}"
    );
    assert!(browser.text("#fields").await?.contains("核实无误"));
    browser.shot("record-check-in").await?;

    // Villages flag the conflicting field before it is settled.
    browser.goto("/villages").await?;
    browser.arrive("/villages").await;
    assert!(browser.text("#villages").await?.contains("大坪村"));
    assert!(
        browser.count("#villages td.conflict .flag").await? >= 1,
        "conflict marked"
    );
    browser.shot("villages-conflict").await?;

    // Conflicts: keep one of the two doctor counts, then type a bandwidth neither phone had.
    browser.goto("/conflicts").await?;
    browser.arrive("/conflicts").await;
    let card = format!("div.conflicted[data-id='{survey}']");
    let form = |field: &str| format!("{card} form.resolve[data-field='{field}']");
    assert_eq!(browser.count(&form("licensed_doctors")).await?, 1);
    assert_eq!(browser.count(&form("broadband_mbps")).await?, 1);
    browser.shot("conflicts").await?;
    let doctors = form("licensed_doctors");
    browser
        .click(&format!("{doctors} input[name=pick][value='3']"))
        .await?;
    browser
        .click(&format!("{doctors} button[type=submit]"))
        .await?;
    browser
        .until(
            "the settled field to leave the conflicts page",
            async || {
                browser.path().await.is_ok_and(|p| p == "/conflicts")
                    && browser.count(&doctors).await.is_ok_and(|n| n == 0)
            },
        )
        .await;
    assert_eq!(
        browser.count(&form("broadband_mbps")).await?,
        1,
        "one still open"
    );
    let record = &server.records()[&survey];
    assert_eq!(record.fields["licensed_doctors"], FieldValue::Integer(3));
    assert!(!record.conflicts.contains_key("licensed_doctors"));
    // Typing a value without choosing "other" must not settle the field with some other value:
    // the browser asks for a choice first.
    let bandwidth = form("broadband_mbps");
    browser
        .client
        .find(Locator::Css(&format!("{bandwidth} input[name=typed]")))
        .await?
        .send_keys("100")
        .await?;
    browser
        .click(&format!("{bandwidth} button[type=submit]"))
        .await?;
    let valid = browser
        .client
        .execute(
            "return document.querySelector(arguments[0])?.checkValidity()",
            vec![json!(bandwidth)],
        )
        .await?;
    assert_eq!(valid, json!(false), "the form asks which value to keep");
    let record = &server.records()[&survey];
    assert_eq!(
        record.conflicts["broadband_mbps"].len(),
        2,
        "nothing settled: {:?}",
        record.fields.get("broadband_mbps")
    );
    browser
        .click(&format!("{bandwidth} input[name=pick][value='__typed']"))
        .await?;
    browser
        .click(&format!("{bandwidth} button[type=submit]"))
        .await?;
    browser
        .until(
            "the settled record to leave the conflicts page",
            async || {
                browser.path().await.is_ok_and(|p| p == "/conflicts")
                    && browser.count(&card).await.is_ok_and(|n| n == 0)
            },
        )
        .await;
    let settled = &server.records()[&survey];
    assert!(settled.conflicts.is_empty(), "{:?}", settled.conflicts);
    assert_eq!(settled.fields["licensed_doctors"], FieldValue::Integer(3));
    assert_eq!(settled.fields["broadband_mbps"], FieldValue::Number(100.0));
    for phone in [&a, &b] {
        phone.sync().await?;
        let mine = &phone.records()[&survey];
        assert!(mine.conflicts.is_empty(), "settled on the phone too");
        assert_eq!(mine.fields, settled.fields);
    }
    browser.goto(&format!("/records/{survey}")).await?;
    browser.arrive(&format!("/records/{survey}")).await;
    assert_eq!(browser.count("#fields tr.conflict").await?, 0);
    assert!(browser.text("#history").await?.contains("办公室小李"));
    browser.shot("record-survey").await?;

    // Export: the CSV link downloads a file with the BOM and the Chinese text intact.
    browser.goto("/records").await?;
    browser.arrive("/records").await;
    browser.click("#export-csv").await?;
    let mut csv = None;
    browser
        .until("the CSV download", async || {
            csv = finished_download(&downloads, "csv");
            csv.is_some()
        })
        .await;
    let csv = csv.expect("downloaded");
    let name = csv.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("fieldsync-records-"), "{name}");
    let bytes = std::fs::read(&csv)?;
    assert!(
        bytes.starts_with(b"\xEF\xBB\xBF"),
        "the CSV starts with the UTF-8 BOM"
    );
    let body = String::from_utf8(bytes[3..].to_vec())?;
    for needle in [
        "清洁家园",
        "文明城市创建",
        "张三",
        "大坪村",
        "核实无误",
        &to_confirm,
        &survey,
    ] {
        assert!(body.contains(needle), "the CSV holds {needle}:\n{body}");
    }
    assert_eq!(
        body.lines().count(),
        4,
        "a header and three records:\n{body}"
    );

    // Hours: the confirmed 2.5 h and the pending 2.5 h.
    browser.goto("/hours").await?;
    browser.arrive("/hours").await;
    let hours = browser.text("#hours").await?;
    assert!(hours.contains("2.5"), "{hours}");
    browser.shot("hours").await?;

    browser.goto("/villages").await?;
    browser.arrive("/villages").await;
    assert_eq!(browser.count("#villages td.conflict").await?, 0);
    browser.shot("villages").await?;

    browser.goto("/devices").await?;
    browser.arrive("/devices").await;
    assert_eq!(browser.count("#devices tr[data-device]").await?, 3);
    assert_eq!(
        browser.count("#enroll").await?,
        0,
        "office enrolls no devices"
    );
    browser.shot("devices").await?;

    // Admin: users, and a new enrollment code with its QR, which enrolls a real phone.
    browser.logout().await?;
    browser.login("admin").await?;
    browser.goto("/users").await?;
    browser.arrive("/users").await;
    let users = browser.text("#users").await?;
    assert!(
        users.contains("办公室小李") && users.contains("管理员"),
        "{users}"
    );
    browser.shot("users").await?;

    browser.goto("/devices").await?;
    browser.arrive("/devices").await;
    let enroll = browser.client.form(Locator::Css("#enroll")).await?;
    enroll.set_by_name("user", "v9").await?;
    enroll.set_by_name("name", "王五").await?;
    enroll.set_by_name("scopes", "team:9").await?;
    browser.click("#enroll button[type=submit]").await?;
    browser
        .until("the enrollment code", async || {
            browser.count("#enrollment").await.is_ok_and(|n| n == 1)
        })
        .await;
    let code = browser.text("#code").await?;
    assert!(!code.is_empty());
    assert_eq!(browser.count("#enrollment .qr svg").await?, 1, "a QR code");
    assert!(browser.text("#enrollment").await?.contains("王五"));
    browser.shot("devices-enrollment").await?;

    let phone = Phone::open(&root.join("phone-v9"));
    fieldsync_device::client::enroll(
        &phone.store,
        &server.addr().to_string(),
        &server.dir.fingerprint(),
        &code,
    )
    .await?;
    let v9 = phone.store.create(
        Kind::CheckIn,
        "team:9",
        &check_in_fields("v9", "敬老院探访"),
    )?;
    phone.sync().await?;
    assert!(server.records().contains_key(&v9.id), "the new phone syncs");
    browser.goto("/devices").await?;
    browser.arrive("/devices").await;
    assert_eq!(browser.count("#devices tr[data-device]").await?, 4);
    assert!(browser.text("#devices").await?.contains("王五"));

    browser.client.clone().close().await?;
    driver.session = None;
    server.running.take().expect("running").stop().await;
    Ok(())
}

/// A finished download with extension `ext` in `dir` (Chromium writes `.crdownload` first).
fn finished_download(dir: &Path, ext: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == ext)
                && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
        })
}
