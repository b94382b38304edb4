//! The `fieldsync` device command line as scripts and support staff use it, against a real
//! `fieldsync-server` process.

use fieldsync_tests::{ServerProcess, cli_code, run};

fn fieldsync(store: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--store", store];
    all.extend_from_slice(args);
    run("fieldsync", &all)
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn record_offline_sync_and_fail_clearly_when_the_server_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let store = tmp.path().join("phone");
    let store = store.to_str().unwrap();
    assert!(run("fieldsync-server", &["init", "--data", data_s]).0);
    let (code, fingerprint) = cli_code(data_s, "u7", "赵六", "team:7");

    let server = ServerProcess::spawn(&data, "127.0.0.1:0");
    let addr = server.addr.to_string();
    let (ok, out, err) = fieldsync(
        store,
        &[
            "enroll",
            "--server",
            &addr,
            "--fingerprint",
            &fingerprint,
            "--code",
            &code,
        ],
    );
    assert!(ok, "{err}");
    let device = out
        .lines()
        .find_map(|l| l.strip_prefix("device: "))
        .expect("device line");
    assert_eq!(device.len(), 32);

    // Record offline: a check-in for the enrolled user, and a survey-free edit.
    let (ok, out, err) = fieldsync(
        store,
        &[
            "checkin",
            "--activity",
            "清洁家园",
            "--place",
            "幸福社区",
            "--start",
            "2026-11-28T08:00:00+08:00",
            "--end",
            "2026-11-28T09:30:00+08:00",
            "--lat",
            "28.19",
            "--lon",
            "112.97",
            "--note",
            "扫落叶",
        ],
    );
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "the id alone on a line: {out}"
    );
    let (ok, _, err) = fieldsync(store, &["set", &id, "note=扫落叶、清垃圾", "accuracy_m=12"]);
    assert!(ok, "{err}");
    let (ok, _, err) = fieldsync(store, &["set", &id, "lat=north"]);
    assert!(!ok);
    assert!(err.contains("lat"), "a clear error naming the field: {err}");

    let (_, out, _) = fieldsync(store, &["show", &id, "--json"]);
    let record = json(&out);
    assert_eq!(record["kind"], "check_in");
    assert_eq!(record["scope"], "team:7");
    assert_eq!(record["fields"]["volunteer_id"], "u7");
    assert_eq!(record["fields"]["volunteer_name"], "赵六");
    assert_eq!(record["fields"]["hours"], 1.5);
    assert_eq!(record["fields"]["accuracy_m"], 12.0);
    assert_eq!(record["fields"]["note"], "扫落叶、清垃圾");
    assert_eq!(record["conflicts"], serde_json::json!({}));
    let (_, out, _) = fieldsync(store, &["list", "--kind", "check_in", "--json"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 1);
    let (_, out, _) = fieldsync(store, &["status", "--json"]);
    assert_eq!(json(&out)["pending"], 1);

    // Sync: nothing pending afterwards.
    let (ok, out, err) = fieldsync(store, &["sync"]);
    assert!(ok, "{err}");
    assert!(out.contains("sent 1"), "{out}");
    let (_, out, _) = fieldsync(store, &["status", "--json"]);
    assert_eq!(json(&out)["pending"], 0);

    // The server goes away: the round keeps trying until its deadline, then a clear message,
    // a non-zero exit, local data untouched.
    let (ok, _, err) = fieldsync(store, &["set", &id, "note=改"]);
    assert!(ok, "{err}");
    server.kill();
    let (ok, _, err) = fieldsync(store, &["sync", "--deadline", "4s"]);
    assert!(!ok);
    assert!(
        err.contains("sync failed")
            && err.contains("local data untouched")
            && err.contains("stays pending"),
        "{err}"
    );
    let (_, out, _) = fieldsync(store, &["status", "--json"]);
    assert_eq!(json(&out)["pending"], 1);
    let (_, out, _) = fieldsync(store, &["show", &id, "--json"]);
    assert_eq!(json(&out)["fields"]["note"], "改");

    // Bad input on the command line changes nothing.
    let (ok, _, err) = fieldsync(store, &["new", "parade", "--scope", "team:7"]);
    assert!(!ok && err.contains("unknown kind"), "{err}");
    let (ok, _, err) = fieldsync(
        store,
        &["new", "village_survey", "--scope", "team:7", "village=x"],
    );
    assert!(!ok && err.contains("scope"), "{err}");
    let (_, out, _) = fieldsync(store, &["list", "--json"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 1);
}

/// Enrolls a new store as volunteer `u7` in `team:7` through both command lines; returns the
/// server (still running) and the store path.
fn enrolled_volunteer(tmp: &std::path::Path) -> (ServerProcess, String) {
    let data = tmp.join("data");
    let data_s = data.to_str().unwrap();
    let store = tmp.join("phone").to_str().unwrap().to_string();
    assert!(run("fieldsync-server", &["init", "--data", data_s]).0);
    let (code, fingerprint) = cli_code(data_s, "u7", "赵六", "team:7");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0");
    let addr = server.addr.to_string();
    let (ok, _, err) = fieldsync(
        &store,
        &[
            "enroll",
            "--server",
            &addr,
            "--fingerprint",
            &fingerprint,
            "--code",
            &code,
        ],
    );
    assert!(ok, "{err}");
    (server, store)
}

#[test]
fn what_the_role_may_not_write_is_refused_at_once_with_the_reason_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, store) = enrolled_volunteer(tmp.path());
    let store = store.as_str();
    server.kill(); // in the field: the phone decides alone
    let checkin = |extra: &[&str]| {
        let mut args = vec![
            "checkin",
            "--activity",
            "清洁家园",
            "--place",
            "幸福社区",
            "--start",
            "2026-11-28T08:00:00+08:00",
        ];
        args.extend_from_slice(extra);
        fieldsync(store, &args)
    };
    let (ok, out, err) = checkin(&[]);
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    let (_, before, _) = fieldsync(store, &["list", "--json"]);
    let refused = [
        (
            fieldsync(
                store,
                &[
                    "new",
                    "village_survey",
                    "--scope",
                    "village:1",
                    "village=石桥村",
                ],
            ),
            "a volunteer may not write village_survey records",
        ),
        (
            fieldsync(store, &["set", &id, "status=confirmed"]),
            "a volunteer may not set `status`",
        ),
        (
            checkin(&["--scope", "team:8"]),
            "this device may not write scope `team:8`",
        ),
    ];
    for ((ok, out, err), reason) in refused {
        assert!(!ok, "exit non-zero for `{reason}`: {out}");
        assert!(
            err.contains(reason) && err.contains("nothing was stored"),
            "{err}"
        );
        assert!(out.is_empty(), "no id printed: {out}");
    }
    let (_, after, _) = fieldsync(store, &["list", "--json"]);
    assert_eq!(json(&after), json(&before), "nothing was stored");
    let (_, out, _) = fieldsync(store, &["status", "--json"]);
    assert_eq!(json(&out)["pending"], 1);
    let (_, out, _) = fieldsync(store, &["show", &id, "--json"]);
    assert_eq!(json(&out)["fields"]["status"], "submitted");

    // Revert is for refused records only: a pending one says so and stays as it is.
    let (ok, _, err) = fieldsync(store, &["revert", &id]);
    assert!(!ok && err.contains("waiting to be synced"), "{err}");
    let (_, out, _) = fieldsync(store, &["status", "--json"]);
    assert_eq!(json(&out)["pending"], 1);
}
