use super::*;
use fieldsync_proto::access::DeviceCtx;
use fieldsync_proto::protocol::Limits;
use fieldsync_proto::sync::{StoredDoc, merge_push};

#[test]
fn records_survive_reopen_and_pending_tracks_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let store = DeviceStore::open(dir.path()).unwrap();
        let view = store
            .create(
                Kind::VillageSurvey,
                "village:3",
                &[("village".into(), FieldValue::Text("石桥村".into()))],
            )
            .unwrap();
        id = Uuid::parse_str(&view.id).unwrap();
        assert_eq!(store.pending_count().unwrap(), 1);
    }
    let store = DeviceStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get(id).unwrap().unwrap().text("village"),
        Some("石桥村")
    );
    let pending = store.pending().unwrap();
    assert_eq!(pending.len(), 1);
    store
        .acknowledge(&[(pending[0].push.id, pending[0].heads.clone())], &[])
        .unwrap();
    assert_eq!(store.pending_count().unwrap(), 0);
    store
        .update(id, &[("bus_service".into(), FieldValue::Bool(true))])
        .unwrap();
    let again = store.pending().unwrap();
    let changes =
        fieldsync_proto::protocol::split_changes(&again[0].push.changes, &Default::default())
            .unwrap();
    assert_eq!(changes.len(), 1, "only the unacknowledged change is pushed");
}

fn enroll_as(store: &DeviceStore, user: &str, scopes: &[&str]) {
    enroll_with(store, user, Role::Volunteer, scopes);
}

fn enroll_with(store: &DeviceStore, user: &str, role: Role, scopes: &[&str]) {
    store
        .set_enrollment(&EnrollmentInfo {
            server: "127.0.0.1:1".into(),
            fingerprint: "00".repeat(32),
            device_id: store.device_id(),
            user_id: user.into(),
            user_name: format!("name of {user}"),
            role,
            scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
        })
        .unwrap();
}

fn form(start: &str, end: Option<&str>) -> CheckInForm {
    CheckInForm {
        activity: "清洁家园".into(),
        place: "幸福社区".into(),
        started_at: start.into(),
        ended_at: end.map(str::to_string),
        ..CheckInForm::default()
    }
}

#[test]
fn check_in_takes_volunteer_team_and_status_from_the_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    let at = "2026-11-28T08:00:00+08:00";
    assert!(matches!(
        store.check_in(&form(at, None)),
        Err(StoreError::NotEnrolled)
    ));
    enroll_as(&store, "zhang3", &["village:1", "team:7", "team:8"]);
    let view = store
        .check_in(&CheckInForm {
            lat: Some(28.2),
            note: Some("带了扫帚".into()),
            ..form(at, Some("2026-11-28T10:30:00+08:00"))
        })
        .unwrap();
    assert_eq!(view.scope, "team:7", "the first team scope");
    assert_eq!(view.text("volunteer_id"), Some("zhang3"));
    assert_eq!(view.text("volunteer_name"), Some("name of zhang3"));
    assert_eq!(view.text("team"), Some("7"));
    assert_eq!(view.text("status"), Some("submitted"));
    assert_eq!(view.field("hours"), Some(&FieldValue::Number(2.5)));
    assert_eq!(view.field("lat"), Some(&FieldValue::Number(28.2)));
    assert!(view.field("lon").is_none());
    assert!(view.text("device_time").is_some());
    let other = store
        .check_in(&CheckInForm {
            scope: Some("team:8".into()),
            ..form(at, None)
        })
        .unwrap();
    assert_eq!(other.text("team"), Some("8"));
    assert!(matches!(
        store.check_in(&form("yesterday", None)),
        Err(StoreError::Record(RecordError::Invalid(_)))
    ));
    enroll_as(&store, "li4", &["village:1"]);
    assert!(matches!(
        store.check_in(&form(at, None)),
        Err(StoreError::NoTeamScope)
    ));
}

#[test]
fn my_hours_sums_the_enrolled_users_check_ins_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    assert!(matches!(store.my_hours(), Err(StoreError::NotEnrolled)));
    enroll_as(&store, "zhang3", &["team:7"]);
    let day = |h: u32| format!("2026-11-28T{h:02}:00:00+08:00");
    let a = store.check_in(&form(&day(8), Some(&day(10)))).unwrap();
    store.check_in(&form(&day(8), Some(&day(9)))).unwrap();
    let c = store.check_in(&form(&day(13), Some(&day(16)))).unwrap();
    store.check_in(&form(&day(17), None)).unwrap();
    // Someone else's check-in, synced from the team, and the office's verdicts on two of mine.
    let theirs = Record::create(
        Kind::CheckIn,
        "team:7",
        ActorId::from([9; 16]),
        &[
            ("volunteer_id".into(), FieldValue::Text("wang5".into())),
            ("activity".into(), FieldValue::Text("a".into())),
            ("place".into(), FieldValue::Text("p".into())),
            ("started_at".into(), FieldValue::Text(day(8))),
            ("ended_at".into(), FieldValue::Text(day(20))),
            ("status".into(), FieldValue::Text("confirmed".into())),
        ],
        1,
    )
    .unwrap();
    from_server(&store, theirs);
    let status = |s: &str| [("status".to_string(), FieldValue::Text(s.into()))];
    office_edits(&store, &a.id, &status("confirmed"));
    office_edits(&store, &c.id, &status("rejected"));
    assert_eq!(
        store.my_hours().unwrap(),
        HoursSummary {
            confirmed_hours: 2.0,
            submitted_hours: 1.0,
            rejected_hours: 3.0,
            confirmed: 1,
            submitted: 1,
            rejected: 1,
            open: 1,
        }
    );
}

/// Applies `record` as a pull from the server would bring it (whole, new to the device).
fn from_server(store: &DeviceStore, mut record: Record) {
    let data = DocData {
        id: *record.id().as_bytes(),
        kind: record.kind(),
        scope: record.scope().to_string(),
        bytes: record.save(),
    };
    store.apply(&[data], &[]).unwrap();
}

/// Applies an edit of record `id` by another device (the office's actor) as a pull brings it:
/// only the new change.
fn office_edits(store: &DeviceStore, id: &str, fields: &[(String, FieldValue)]) {
    let id = Uuid::parse_str(id).unwrap();
    let mut record = store.record(id).unwrap();
    let heads = record.heads();
    record.set_actor(ActorId::from([7; 16]));
    record.update(fields, 2).unwrap();
    let data = DocData {
        id: *id.as_bytes(),
        kind: record.kind(),
        scope: record.scope().to_string(),
        bytes: record.changes_since(&heads),
    };
    store.apply(&[data], &[]).unwrap();
}

/// What the server's merge says to `edited` pushed by this store's device, enrolled as
/// `ctx`, onto `stored` (the server's copy; `None` for a new record).
fn server_says(ctx: &DeviceCtx, stored: Option<&mut Record>, edited: &mut Record) -> String {
    let (existing, known) = match stored {
        Some(r) => (
            Some(StoredDoc {
                kind: r.kind(),
                scope: r.scope().to_string(),
                bytes: r.save(),
            }),
            r.heads(),
        ),
        None => (None, Vec::new()),
    };
    let push = PushDoc {
        id: *edited.id().as_bytes(),
        kind: edited.kind(),
        scope: edited.scope().to_string(),
        changes: edited.changes_since(&known),
    };
    match merge_push(existing.as_ref(), &push, ctx, &Limits::default()) {
        Ok(_) => "accepted".into(),
        Err(reason) => reason.to_string(),
    }
}

fn forbidden(result: Result<RecordView, StoreError>) -> String {
    match result {
        Err(StoreError::Forbidden(reason)) => reason,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[test]
fn the_phone_refuses_what_the_role_may_not_write_with_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    enroll_as(&store, "zhang3", &["team:7"]);
    let ctx = store.rules().unwrap().unwrap();
    assert_eq!(ctx.actor, store.actor.to_bytes());
    let at = "2026-11-28T08:00:00+08:00";
    let mine = store.check_in(&form(at, None)).unwrap();
    let mine_id = Uuid::parse_str(&mine.id).unwrap();
    let before = (
        store.list(None, None).unwrap(),
        store.pending_count().unwrap(),
    );

    // A village survey is not a volunteer's to keep.
    let survey = [("village".to_string(), FieldValue::Text("石桥村".into()))];
    let reason = forbidden(store.create(Kind::VillageSurvey, "village:1", &survey));
    assert_eq!(reason, "a volunteer may not write village_survey records");
    let mut draft = Record::create(
        Kind::VillageSurvey,
        "village:1",
        store.actor.clone(),
        &survey,
        1,
    )
    .unwrap();
    assert_eq!(server_says(&ctx, None, &mut draft), reason);

    // Nor is confirming one's own check-in.
    let confirm = [("status".to_string(), FieldValue::Text("confirmed".into()))];
    let reason = forbidden(store.update(mine_id, &confirm));
    assert_eq!(reason, "a volunteer may not set `status`");
    let mut stored = store.record(mine_id).unwrap();
    let mut edited = store.record(mine_id).unwrap();
    edited.set_actor(store.actor.clone());
    edited.update(&confirm, 2).unwrap();
    assert_eq!(server_says(&ctx, Some(&mut stored), &mut edited), reason);

    // Nor checking in to another team.
    let reason = forbidden(store.check_in(&CheckInForm {
        scope: Some("team:8".into()),
        ..form(at, None)
    }));
    assert_eq!(reason, "this device may not write scope `team:8`");

    // Nor editing a team mate's check-in that a sync brought.
    let theirs = Record::create(
        Kind::CheckIn,
        "team:7",
        ActorId::from([9; 16]),
        &[
            ("volunteer_id".into(), FieldValue::Text("wang5".into())),
            ("activity".into(), FieldValue::Text("a".into())),
            ("place".into(), FieldValue::Text("p".into())),
            ("started_at".into(), FieldValue::Text(at.into())),
            ("status".into(), FieldValue::Text("submitted".into())),
        ],
        1,
    )
    .unwrap();
    let theirs_id = theirs.id();
    from_server(&store, theirs);
    let before = {
        let (mut views, pending) = before;
        views.push(store.get(theirs_id).unwrap().unwrap());
        (views, pending)
    };
    let note = [("note".to_string(), FieldValue::Text("改一下".into()))];
    let reason = forbidden(store.update(theirs_id, &note));
    assert_eq!(reason, "a volunteer may only write own check-ins");

    // Nothing of any of it was stored; the own check-in still takes a note.
    assert_eq!(
        (
            store.list(None, None).unwrap(),
            store.pending_count().unwrap()
        ),
        before
    );
    assert_eq!(store.record(mine_id).unwrap().history().len(), 1);
    store.update(mine_id, &note).unwrap();
}

#[test]
fn the_other_roles_rules_hold_on_the_phone_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    let survey = [("village".to_string(), FieldValue::Text("石桥村".into()))];
    enroll_with(&store, "li4", Role::Village, &["village:1"]);
    store
        .create(Kind::VillageSurvey, "village:1", &survey)
        .unwrap();
    let reason = forbidden(store.create(Kind::VillageSurvey, "village:2", &survey));
    assert_eq!(reason, "this device may not write scope `village:2`");
    enroll_with(&store, "ma8", Role::Office, &[]);
    let reason = forbidden(store.create(Kind::VillageSurvey, "village:1", &survey));
    assert!(reason.contains("do not create"), "{reason}");
}

#[test]
fn an_unenrolled_store_keeps_drafts_of_any_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    assert!(store.rules().unwrap().is_none());
    let survey = [("village".to_string(), FieldValue::Text("石桥村".into()))];
    let view = store
        .create(Kind::VillageSurvey, "village:1", &survey)
        .unwrap();
    store
        .update(
            Uuid::parse_str(&view.id).unwrap(),
            &[("bus_service".into(), FieldValue::Bool(true))],
        )
        .unwrap();
    assert_eq!(store.pending_count().unwrap(), 1);
}

/// Creates a survey on a village member's store and has the server accept it.
fn accepted_survey(store: &DeviceStore) -> Uuid {
    enroll_with(store, "li4", Role::Village, &["village:3"]);
    let view = store
        .create(
            Kind::VillageSurvey,
            "village:3",
            &[("village".into(), FieldValue::Text("石桥村".into()))],
        )
        .unwrap();
    let pending = store.pending().unwrap();
    store
        .acknowledge(&[(pending[0].push.id, pending[0].heads.clone())], &[])
        .unwrap();
    Uuid::parse_str(&view.id).unwrap()
}

fn refuse_pending(store: &DeviceStore, reason: &str) {
    let refused: Vec<(DocId, String)> = store
        .pending()
        .unwrap()
        .iter()
        .map(|p| (p.push.id, reason.to_string()))
        .collect();
    store.acknowledge(&[], &refused).unwrap();
}

#[test]
fn revert_goes_back_to_what_the_server_acknowledged_and_only_for_refused_records() {
    let dir = tempfile::tempdir().unwrap();
    let (id, server_version);
    {
        let store = DeviceStore::open(dir.path()).unwrap();
        id = accepted_survey(&store);
        server_version = store.get(id).unwrap().unwrap();
        assert!(matches!(
            store.revert(id),
            Err(StoreError::NotRefused { pending: false, .. })
        ));
        store
            .update(
                id,
                &[("note".into(), FieldValue::Text("村委会换届".into()))],
            )
            .unwrap();
        let err = store.revert(id).unwrap_err();
        assert!(
            matches!(err, StoreError::NotRefused { pending: true, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("waiting to be synced"), "{err}");
        assert!(store.get(id).unwrap().unwrap().fields.contains_key("note"));
        assert!(matches!(
            store.revert(Uuid::now_v7()),
            Err(StoreError::NotFound(_))
        ));
        refuse_pending(&store, "this device may not write scope `village:3`");
        assert_eq!(
            store.revert(id).unwrap(),
            Reverted::ToServer(server_version.clone())
        );
    }
    // Durable: the reverted record is what a reopened store holds, with nothing to push.
    let store = DeviceStore::open(dir.path()).unwrap();
    assert_eq!(store.get(id).unwrap().unwrap(), server_version);
    assert_eq!(store.record(id).unwrap().history().len(), 1);
    assert_eq!(store.pending_count().unwrap(), 0);
    assert!(store.refused().unwrap().is_empty());
    assert!(matches!(
        store.revert(id),
        Err(StoreError::NotRefused { pending: false, .. })
    ));
    // It is an ordinary record again: an edit is pushed from the server's version on.
    store
        .update(id, &[("bus_service".into(), FieldValue::Bool(true))])
        .unwrap();
    let pending = store.pending().unwrap();
    let changes =
        fieldsync_proto::protocol::split_changes(&pending[0].push.changes, &Default::default())
            .unwrap();
    assert_eq!(changes.len(), 1, "only the new edit");
}

#[test]
fn revert_drops_a_refused_record_the_server_never_had() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    let kept = accepted_survey(&store);
    let visit = store
        .create(
            Kind::VillageVisit,
            "village:3",
            &[
                ("village".into(), FieldValue::Text("石桥村".into())),
                ("household".into(), FieldValue::Text("李家".into())),
                (
                    "visited_at".into(),
                    FieldValue::Text("2026-11-28T09:00:00+08:00".into()),
                ),
            ],
        )
        .unwrap();
    let id = Uuid::parse_str(&visit.id).unwrap();
    refuse_pending(&store, "this device may not write scope `village:3`");
    assert_eq!(store.revert(id).unwrap(), Reverted::Dropped);
    assert_eq!(store.get(id).unwrap(), None);
    assert!(matches!(store.record(id), Err(StoreError::NotFound(_))));
    assert!(matches!(store.revert(id), Err(StoreError::NotFound(_))));
    let left: Vec<String> = store
        .list(None, None)
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(left, vec![kept.to_string()]);
    assert_eq!(
        (
            store.pending_count().unwrap(),
            store.refused().unwrap().len()
        ),
        (0, 0)
    );
}

#[test]
fn a_pull_into_a_refused_record_keeps_the_server_version_short_of_the_refused_edit() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    let id = accepted_survey(&store);
    let mut server = store.record(id).unwrap();
    let accepted = server.heads();
    store
        .update(id, &[("note".into(), FieldValue::Text("refused".into()))])
        .unwrap();
    refuse_pending(&store, "rules changed");
    // Meanwhile another device's edit reached the server, and a pull brings it.
    server.set_actor(ActorId::from([5; 16]));
    server
        .update(&[("licensed_doctors".into(), FieldValue::Integer(2))], 3)
        .unwrap();
    let data = DocData {
        id: *id.as_bytes(),
        kind: Kind::VillageSurvey,
        scope: "village:3".into(),
        bytes: server.changes_since(&accepted),
    };
    store.apply(&[data], &[]).unwrap();
    let merged = store.get(id).unwrap().unwrap();
    assert_eq!(merged.fields["note"], FieldValue::Text("refused".into()));
    assert_eq!(merged.fields["licensed_doctors"], FieldValue::Integer(2));

    let Reverted::ToServer(view) = store.revert(id).unwrap() else {
        panic!("the server has the record");
    };
    assert_eq!(view, server.view().unwrap());
    assert!(!view.fields.contains_key("note"), "{view:?}");
}

#[test]
fn heads_a_pull_lists_tell_revert_that_the_server_has_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    enroll_with(&store, "li4", Role::Village, &["village:3"]);
    let view = store
        .create(
            Kind::VillageSurvey,
            "village:3",
            &[("village".into(), FieldValue::Text("石桥村".into()))],
        )
        .unwrap();
    let id = Uuid::parse_str(&view.id).unwrap();
    // The server committed the push but its acknowledgement was lost with the connection: the
    // record is still pending. A later pull lists it with the server's heads.
    let heads = store.pending().unwrap()[0].heads.clone();
    let changed = Changed {
        id: *id.as_bytes(),
        kind: Kind::VillageSurvey,
        scope: "village:3".into(),
        heads: heads.clone(),
    };
    assert_eq!(
        store.local_heads(std::slice::from_ref(&changed)).unwrap(),
        vec![(*id.as_bytes(), heads)]
    );
    store
        .update(id, &[("note".into(), FieldValue::Text("refused".into()))])
        .unwrap();
    let pending = store.pending().unwrap();
    let changes =
        fieldsync_proto::protocol::split_changes(&pending[0].push.changes, &Default::default())
            .unwrap();
    assert_eq!(changes.len(), 1, "the server has the rest");
    refuse_pending(&store, "rules changed");
    assert_eq!(store.revert(id).unwrap(), Reverted::ToServer(view));
}

#[test]
fn a_second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DeviceStore::open(dir.path()).unwrap();
    assert!(matches!(
        DeviceStore::open(dir.path()),
        Err(StoreError::InUse(_))
    ));
}
