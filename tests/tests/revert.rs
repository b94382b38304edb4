//! A record the server refuses after the phone allowed it (the rules changed while the phone
//! was away), and the way out: `revert` back to the server's version, or away with a record
//! the server never had, over real QUIC and real redb files.

use fieldsync_device::store::{Reverted, StoreError};
use fieldsync_proto::Role;
use fieldsync_server::store::User;
use fieldsync_tests::{TestResult, TestServer, text};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_after_a_scope_was_revoked_is_reverted_or_dropped() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let mut server = TestServer::start(root);
    let v1 = server
        .phone(root, "v1", Role::Volunteer, &["team:1", "team:2"])
        .await;
    let kept = v1.check_in("team:1", "清洁家园");
    let edited = v1.check_in("team:2", "文明城市创建");
    let report = v1.sync().await?;
    assert_eq!((report.sent, report.refused.len()), (2, 0));
    let truth = server.records();

    // While the phone is out in the field, team:2 is taken away from v1 on the server; the
    // phone still holds the old enrollment, so its own rules let it edit and record there.
    server.dir.store.put_user(&User {
        id: "v1".into(),
        name: "用户v1".into(),
        role: Role::Volunteer,
        scopes: vec!["team:1".parse()?],
    })?;
    v1.set(&edited, &[("note", text("补签"))]);
    let fresh = v1.check_in("team:2", "社区网格化");
    let report = v1.sync().await?;
    assert_eq!(report.sent, 0, "{report:?}");
    let mut refused: Vec<String> = report
        .refused
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    refused.sort();
    let mut expected = vec![edited.clone(), fresh.clone()];
    expected.sort();
    assert_eq!(refused, expected);
    let reason = report.refused[0].1.clone();
    assert_eq!(reason, "this device may not write scope `team:2`");
    assert_eq!(server.records(), truth, "the server stored none of it");

    // A phone enrolled under the server's current rules says the same at once, storing nothing.
    let v9 = server.phone(root, "v9", Role::Volunteer, &["team:1"]).await;
    match v9.store.create(
        fieldsync_proto::Kind::CheckIn,
        "team:2",
        &fieldsync_tests::check_in_fields("v9", "社区网格化"),
    ) {
        Err(StoreError::Forbidden(local)) => assert_eq!(local, reason),
        other => panic!("the phone must refuse it at once: {other:?}"),
    }
    assert_eq!(v9.store.pending_count()?, 0);

    // The way out: the edited record goes back to what the server holds, the new one goes.
    let edited_id = Uuid::parse_str(&edited)?;
    let fresh_id = Uuid::parse_str(&fresh)?;
    match v1.store.revert(edited_id)? {
        Reverted::ToServer(view) => assert_eq!(view, truth[&edited]),
        other => panic!("the server has {edited}: {other:?}"),
    }
    assert_eq!(v1.store.revert(fresh_id)?, Reverted::Dropped);
    assert_eq!(
        v1.store.history(edited_id)?.len(),
        1,
        "the refused edit is gone"
    );
    assert_eq!(
        v1.records(),
        truth,
        "the phone holds exactly the server's records"
    );
    assert_eq!(
        (v1.store.pending_count()?, v1.store.refused()?.len()),
        (0, 0)
    );

    // The next round is clean, and nothing else changed anywhere.
    let report = v1.sync().await?;
    assert_eq!((report.sent, report.refused.len()), (0, 0), "{report:?}");
    assert_eq!(server.records(), truth);
    assert_eq!(v1.records(), truth);
    // The reverted record is an ordinary one again: an edit where the rules allow it lands.
    v1.set(&kept, &[("note", text("扫落叶"))]);
    let report = v1.sync().await?;
    assert_eq!((report.sent, report.refused.len()), (1, 0), "{report:?}");
    assert_eq!(server.records()[&kept].fields["note"], text("扫落叶"));
    assert_eq!(server.records()[&edited], truth[&edited]);
    server.running.take().expect("running").stop().await;
    Ok(())
}
