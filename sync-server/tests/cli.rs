//! The `fieldsync-server` command line as scripts and people use it: init, serve (first start
//! initialises; SIGTERM stops cleanly), enroll while the server holds the folder, and export.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fieldsync_device::store::DeviceStore;
use fieldsync_proto::model::{FieldValue, Kind};

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync-server");

fn server(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run fieldsync-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line_value(out: &str, prefix: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no `{prefix}` line in {out}"))
}

#[test]
fn init_prints_the_fingerprint_and_refuses_an_existing_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, out, _) = server(&["init", "--data", data]);
    assert!(ok);
    let fp = line_value(&out, "fingerprint:");
    assert_eq!(fp.len(), 64);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    let (ok, _, err) = server(&["init", "--data", data]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn enroll_rejects_bad_arguments_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    assert!(server(&["init", "--data", data]).0);
    let (ok, _, err) = server(&[
        "enroll",
        "--data",
        data,
        "--user",
        "u",
        "--name",
        "n",
        "--role",
        "volunteer",
        "--scope",
        "team:",
    ]);
    assert!(!ok);
    assert!(err.contains("scope"), "{err}");
    let (ok, _, err) = server(&[
        "enroll",
        "--data",
        data,
        "--user",
        "u",
        "--name",
        "n",
        "--role",
        "volunteer",
        "--expires",
        "soon",
    ]);
    assert!(!ok);
    assert!(err.contains("duration"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_initialises_enroll_fails_while_it_runs_and_export_shows_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let data_path = tmp.path().join("data");
    let data = data_path.to_str().unwrap().to_string();

    let mut child = Command::new(BIN)
        .args(["serve", "--data", &data, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut fingerprint = String::new();
    let addr = loop {
        let line = lines.next().expect("serve printed").unwrap();
        if let Some(fp) = line.strip_prefix("fingerprint: ") {
            fingerprint = fp.to_string();
        }
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    assert_eq!(
        fingerprint.len(),
        64,
        "first start initialises and prints the fingerprint"
    );

    // The running server holds the folder: enroll fails at once with a clear message.
    let started = std::time::Instant::now();
    let (ok, _, err) = server(&[
        "enroll",
        "--data",
        &data,
        "--user",
        "u1",
        "--name",
        "李四",
        "--role",
        "volunteer",
        "--scope",
        "team:1",
    ]);
    assert!(!ok);
    assert!(err.contains("in use"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "never hangs");

    // Stop cleanly with SIGTERM, enroll a phone, serve again, sync a record.
    let term = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM stops the server cleanly"
    );
    let (ok, out, err) = server(&[
        "enroll",
        "--data",
        &data,
        "--user",
        "u1",
        "--name",
        "李四",
        "--role",
        "volunteer",
        "--scope",
        "team:1",
    ]);
    assert!(ok, "{err}");
    let code = line_value(&out, "code:");

    let mut child = Command::new(BIN)
        .args(["serve", "--data", &data, "--listen", &addr])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while !lines
        .next()
        .expect("serve printed")
        .unwrap()
        .starts_with("listening on")
    {}
    let phone = DeviceStore::open(&tmp.path().join("phone")).unwrap();
    fieldsync_device::client::enroll(&phone, &addr, &fingerprint, &code)
        .await
        .unwrap();
    let fields: Vec<(String, FieldValue)> = [
        ("volunteer_id", "u1"),
        ("volunteer_name", "李四"),
        ("activity", "清洁家园, \"周末\""),
        ("place", "幸福社区"),
        ("started_at", "2026-11-28T08:00:00+08:00"),
        ("ended_at", "2026-11-28T11:00:00+08:00"),
        ("status", "submitted"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), FieldValue::Text(v.to_string())))
    .collect();
    let id = phone.create(Kind::CheckIn, "team:1", &fields).unwrap().id;
    fieldsync_device::client::sync(&phone, &mut |_| {})
        .await
        .unwrap();
    let _ = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());

    let (ok, out, err) = server(&["export", "--data", &data, "--format", "json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let records = json.as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["id"], id.as_str());
    assert_eq!(records[0]["fields"]["hours"], 3.0);
    assert_eq!(records[0]["conflicts"], serde_json::json!({}));

    let out = Command::new(BIN)
        .args([
            "export", "--data", &data, "--kind", "check_in", "--format", "csv",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.starts_with("\u{feff}".as_bytes()),
        "CSV starts with the UTF-8 BOM"
    );
    let text = String::from_utf8(out.stdout[3..].to_vec()).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[0][col("volunteer_name")], "李四");
    assert_eq!(&rows[0][col("activity")], "清洁家园, \"周末\"");
    assert_eq!(&rows[0][col("hours")], "3");

    let (ok, _, err) = server(&[
        "export", "--data", &data, "--kind", "parade", "--format", "csv",
    ]);
    assert!(!ok);
    assert!(err.contains("unknown kind"), "{err}");
}
