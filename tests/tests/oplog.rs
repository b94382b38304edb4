//! The operator's log, as a collector gets it from the server process: one JSON object per
//! line with `--log-json`, no terminal colours in plain text when stderr is not a terminal,
//! and the security events named, with who and from where.

use std::time::Duration;

use fieldsync_device::client::{self, ClientError};
use fieldsync_device::store::DeviceStore;
use fieldsync_tests::{ServerProcess, cli_code, run};

/// Log lines until one matches, within a bound; all lines read so far are returned too.
fn lines_until(
    server: &ServerProcess,
    seen: &mut Vec<String>,
    found: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let line = server.log.recv_timeout(left).ok()?;
        seen.push(line.clone());
        if found(&line) {
            return Some(line);
        }
    }
    None
}

fn init_with_code(data: &std::path::Path) -> (String, String) {
    let data = data.to_str().unwrap();
    let (ok, _, err) = run("fieldsync-server", &["init", "--data", data]);
    assert!(ok, "{err}");
    cli_code(data, "v1", "王五", "team:1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_are_json_lines_with_who_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (code, fingerprint) = init_with_code(&data);
    let server = ServerProcess::spawn_args(&data, "127.0.0.1:0", &["--log-json"]);
    let addr = server.addr.to_string();
    let phone = DeviceStore::open(&tmp.path().join("phone")).unwrap();
    match client::enroll(&phone, &addr, &fingerprint, "WRONGCODE123").await {
        Err(ClientError::Refused { .. }) => {}
        other => panic!("a wrong code is refused: {other:?}"),
    }
    client::enroll(&phone, &addr, &fingerprint, &code)
        .await
        .expect("enroll");

    let mut seen = Vec::new();
    let event = |line: &str, name: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .filter(|v| v["event"] == name)
    };
    let refused = lines_until(&server, &mut seen, |l| event(l, "code_refused").is_some())
        .expect("a code_refused event");
    let refused = event(&refused, "code_refused").unwrap();
    assert_eq!(refused["target"], "fieldsync::oplog");
    assert_eq!(refused["device"], phone.device_id().as_str());
    assert_eq!(refused["address"], "127.0.0.1");
    assert!(refused["reason"].as_str().unwrap().contains("unknown"));
    assert!(refused["timestamp"].is_string(), "{refused}");
    let enrolled = lines_until(&server, &mut seen, |l| {
        event(l, "device_enrolled").is_some()
    })
    .expect("a device_enrolled event");
    assert_eq!(event(&enrolled, "device_enrolled").unwrap()["user"], "v1");
    for line in &seen {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "every line is one JSON object: {line}"
        );
    }
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_logs_carry_no_colour_codes_when_not_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (_code, fingerprint) = init_with_code(&data);
    // NO_COLOR is not set: only the missing terminal turns colours off.
    let server = ServerProcess::spawn_args(&data, "127.0.0.1:0", &[]);
    let phone = DeviceStore::open(&tmp.path().join("phone")).unwrap();
    let _ = client::enroll(
        &phone,
        &server.addr.to_string(),
        &fingerprint,
        "WRONGCODE123",
    )
    .await;
    let mut seen = Vec::new();
    lines_until(&server, &mut seen, |l| l.contains("code_refused")).expect("the refusal is logged");
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "no ANSI escape: {line:?}");
    }
    server.kill();
}
