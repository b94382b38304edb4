//! Helpers for fieldsync's end-to-end tests: a real server on loopback (in-process or as a
//! child process), and simulated phones that each have their own redb device store.
//! [`link`] puts a client's QUIC behind an impaired (2G-like) link inside the process.

pub mod attack;
pub mod link;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fieldsync_device::client::{self, ClientError};
use fieldsync_device::store::{DeviceStore, EnrollmentInfo};
use fieldsync_proto::Role;
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::Limits;
use fieldsync_proto::record::RecordView;
use fieldsync_proto::sync::RoundReport;
use fieldsync_server::store::User;
use fieldsync_server::{DataDir, Running};

/// The password of the staff accounts made by [`TestServer::start_http`].
pub const PASSWORD: &str = "correct horse battery";

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A server running in this process on 127.0.0.1:0 over real QUIC and a real redb file.
pub struct TestServer {
    pub dir: DataDir,
    pub running: Option<Running>,
    codes: u32,
}

impl TestServer {
    /// Initialises a data folder under `root` and starts serving it.
    pub fn start(root: &Path) -> TestServer {
        Self::start_with(root, Limits::default())
    }

    pub fn start_with(root: &Path, limits: Limits) -> TestServer {
        Self::start_options(
            root,
            fieldsync_server::ServeOptions {
                limits,
                ..fieldsync_server::ServeOptions::quic("127.0.0.1:0".parse().expect("addr"))
            },
        )
    }

    /// Starts serving a new data folder under `root` with `options` (QUIC on `options.listen`).
    pub fn start_options(root: &Path, options: fieldsync_server::ServeOptions) -> TestServer {
        let dir = DataDir::init(&root.join("server")).expect("init data folder");
        let running = fieldsync_server::start_with(dir.store.clone(), &dir.identity, options)
            .expect("start server");
        TestServer {
            dir,
            running: Some(running),
            codes: 0,
        }
    }

    /// Like [`TestServer::start`], with the dashboard and API on 127.0.0.1:0 and two staff
    /// accounts: office user `office` and admin user `admin`, both with password [`PASSWORD`].
    pub fn start_http(root: &Path) -> TestServer {
        let dir = DataDir::init(&root.join("server")).expect("init data folder");
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
            fieldsync_server::auth::add_staff(&dir.store, &user, PASSWORD).expect("staff user");
        }
        let options = fieldsync_server::ServeOptions {
            http: Some("127.0.0.1:0".parse().expect("addr")),
            ..fieldsync_server::ServeOptions::quic("127.0.0.1:0".parse().expect("addr"))
        };
        let running = fieldsync_server::start_with(dir.store.clone(), &dir.identity, options)
            .expect("start server");
        TestServer {
            dir,
            running: Some(running),
            codes: 0,
        }
    }

    /// The dashboard's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn http_url(&self) -> String {
        let addr = self
            .running
            .as_ref()
            .and_then(|r| r.http_addr)
            .expect("server started with start_http");
        format!("http://{addr}")
    }

    /// A new API token for a staff user.
    pub fn token(&self, user: &str) -> String {
        fieldsync_server::auth::issue_token(&self.dir.store, user, chrono::Utc::now().timestamp())
            .expect("token")
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().expect("server running").addr
    }

    /// Issues a one-time code for a user.
    pub fn code(&mut self, user: &str, role: Role, scopes: &[&str]) -> String {
        self.codes += 1;
        let code = format!("CODE{}", self.codes);
        let user = User {
            id: user.to_string(),
            name: format!("用户{user}"),
            role,
            scopes: scopes.iter().map(|s| s.parse().expect("scope")).collect(),
        };
        self.dir
            .store
            .create_code(&user, &code, chrono::Utc::now().timestamp() + 3600)
            .expect("create code");
        code
    }

    /// Makes a phone and enrolls it as `user`.
    pub async fn phone(&mut self, root: &Path, user: &str, role: Role, scopes: &[&str]) -> Phone {
        let code = self.code(user, role, scopes);
        let phone = Phone::open(&root.join(format!("phone-{user}-{}", self.codes)));
        client::enroll(
            &phone.store,
            &self.addr().to_string(),
            &self.dir.fingerprint(),
            &code,
        )
        .await
        .expect("enroll");
        phone
    }

    /// Every record the server holds, by id.
    pub fn records(&self) -> BTreeMap<String, RecordView> {
        self.dir
            .store
            .records(None, None)
            .expect("server records")
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect()
    }
}

/// A simulated phone: its own device store in its own folder.
pub struct Phone {
    pub store: DeviceStore,
    pub path: PathBuf,
}

impl Phone {
    pub fn open(path: &Path) -> Phone {
        Phone {
            store: DeviceStore::open(path).expect("open device store"),
            path: path.to_path_buf(),
        }
    }

    pub fn user(&self) -> String {
        self.store
            .enrollment()
            .expect("enrollment")
            .map(|e| e.user_id)
            .unwrap_or_default()
    }

    /// Records a check-in for the enrolled user; returns its id.
    pub fn check_in(&self, scope: &str, activity: &str) -> String {
        let fields = check_in_fields(&self.user(), activity);
        self.store
            .create(Kind::CheckIn, scope, &fields)
            .expect("check-in")
            .id
    }

    pub fn create(&self, kind: Kind, scope: &str, fields: &[(&str, FieldValue)]) -> String {
        self.store
            .create(kind, scope, &owned(fields))
            .expect("create")
            .id
    }

    pub fn set(&self, id: &str, fields: &[(&str, FieldValue)]) {
        let id = uuid::Uuid::parse_str(id).expect("uuid");
        self.store.update(id, &owned(fields)).expect("update");
    }

    /// Makes the phone believe it is enrolled with `role` and `scopes` (its user and server
    /// unchanged): a phone whose rules are out of date or tampered with, which writes what the
    /// server then refuses. Returns the real enrollment, for [`Phone::restore`].
    pub fn believe(&self, role: Role, scopes: &[&str]) -> EnrollmentInfo {
        let real = self
            .store
            .enrollment()
            .expect("enrollment")
            .expect("enrolled");
        let believed = EnrollmentInfo {
            role,
            scopes: scopes.iter().map(|s| s.parse().expect("scope")).collect(),
            ..real.clone()
        };
        self.store
            .set_enrollment(&believed)
            .expect("set enrollment");
        real
    }

    /// Puts back the enrollment [`Phone::believe`] replaced.
    pub fn restore(&self, real: &EnrollmentInfo) {
        self.store.set_enrollment(real).expect("set enrollment");
    }

    /// A raw protocol connection as this phone, to send hand-made messages.
    pub async fn connect(&self) -> client::Connection {
        let info = self
            .store
            .enrollment()
            .expect("enrollment")
            .expect("enrolled");
        let pinned =
            fieldsync_device::tls::parse_fingerprint(&info.fingerprint).expect("fingerprint");
        client::Connection::connect(&info.server, pinned, self.store.identity())
            .await
            .expect("connect")
    }

    pub async fn sync(&self) -> Result<RoundReport, ClientError> {
        client::sync(&self.store, &mut |_| {}).await.map(|(r, _)| r)
    }

    pub fn records(&self) -> BTreeMap<String, RecordView> {
        self.store
            .list(None, None)
            .expect("list")
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect()
    }
}

/// The fields of a valid check-in by `volunteer`.
pub fn check_in_fields(volunteer: &str, activity: &str) -> Vec<(String, FieldValue)> {
    owned(&[
        ("volunteer_id", FieldValue::Text(volunteer.to_string())),
        ("activity", FieldValue::Text(activity.to_string())),
        ("place", FieldValue::Text("幸福社区".into())),
        (
            "started_at",
            FieldValue::Text("2026-11-28T08:00:00+08:00".into()),
        ),
        (
            "ended_at",
            FieldValue::Text("2026-11-28T10:30:00+08:00".into()),
        ),
        ("status", FieldValue::Text("submitted".into())),
    ])
}

pub fn owned(fields: &[(&str, FieldValue)]) -> Vec<(String, FieldValue)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub fn text(s: &str) -> FieldValue {
    FieldValue::Text(s.to_string())
}

/// Path of a workspace binary, built (once per test process) next to the test executable.
///
/// Cargo builds other packages' binaries only for their own tests, so a `cargo test -p
/// fieldsync-tests` could otherwise run a stale `fieldsync-server`.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "fieldsync-server",
            "-p",
            "fieldsync-device",
            "--bins",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("profile dir")
    } else {
        deps
    };
    dir.join(name)
}

/// `fieldsync-server serve` as a child process, for tests that kill it.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The server's log lines (stderr), as they come.
    pub log: std::sync::mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts `serve` on `listen` and waits for its `listening on` line.
    pub fn spawn(data: &Path, listen: &str) -> ServerProcess {
        Self::spawn_args(data, listen, &[])
    }

    /// Like [`ServerProcess::spawn`], with more arguments to `serve` (e.g. `--log-json`).
    pub fn spawn_args(data: &Path, listen: &str, args: &[&str]) -> ServerProcess {
        use std::io::BufRead;
        let mut child = Command::new(binary("fieldsync-server"))
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", listen])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read");
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.parse().expect("address");
            }
        };
        ServerProcess { child, addr, log }
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issues a one-time code for volunteer `user` (named `name`) in `scope` with
/// `fieldsync-server enroll` on the stopped server's data folder; returns the code and the
/// server's fingerprint as it prints them.
pub fn cli_code(data: &str, user: &str, name: &str, scope: &str) -> (String, String) {
    let (ok, out, err) = run(
        "fieldsync-server",
        &[
            "enroll",
            "--data",
            data,
            "--user",
            user,
            "--name",
            name,
            "--role",
            "volunteer",
            "--scope",
            scope,
        ],
    );
    assert!(ok, "enroll failed: {err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|s| s.trim().to_string())
            .expect("line in enroll output")
    };
    (field("code:"), field("fingerprint:"))
}

/// Runs a command line, returning (status ok, stdout, stderr).
pub fn run(bin: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary(bin))
        .args(args)
        .output()
        .expect("run command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
