//! Every way a push is not merged, sorted into its class.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit};

use super::*;
use crate::access::Role;
use crate::model::FieldValue;
use crate::protocol::ErrorClass;

const ACTOR: [u8; 16] = [7; 16];

fn ctx(role: Role, scope: &str) -> DeviceCtx {
    DeviceCtx {
        device_id: "0707".into(),
        actor: ACTOR.to_vec(),
        user_id: "w1".into(),
        role,
        scopes: vec![scope.parse().expect("scope")],
    }
}

fn village() -> DeviceCtx {
    ctx(Role::Village, "village:1")
}

/// A village survey by `actor`, its id and all its changes.
fn survey(actor: [u8; 16]) -> Record {
    Record::create(
        Kind::VillageSurvey,
        "village:1",
        ActorId::from(actor.to_vec()),
        &[("village".into(), FieldValue::Text("大坪村".into()))],
        1,
    )
    .expect("survey")
}

fn push_of(record: &mut Record) -> PushDoc {
    PushDoc {
        id: *record.id().as_bytes(),
        kind: record.kind(),
        scope: record.scope().to_string(),
        changes: record.changes_since(&[]),
    }
}

fn stored_of(record: &mut Record) -> StoredDoc {
    StoredDoc {
        kind: record.kind(),
        scope: record.scope().to_string(),
        bytes: record.save(),
    }
}

/// Raw changes by ACTOR that put `entries` on the root, one change, as a device could send.
fn raw_changes(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(ACTOR.to_vec()));
    for (k, v) in entries {
        doc.put(automerge::ROOT, *k, *v).expect("put");
    }
    doc.commit_with(CommitOptions::default().with_time(1));
    doc.get_changes(&[])
        .iter()
        .flat_map(|c| c.raw_bytes().to_vec())
        .collect()
}

fn header(kind: &str, scope: &str) -> Vec<(&'static str, String)> {
    vec![
        ("kind", kind.to_string()),
        ("schema", format!("{kind}@1")),
        ("scope", scope.to_string()),
    ]
}

struct Case {
    name: &'static str,
    existing: Option<StoredDoc>,
    push: PushDoc,
    ctx: DeviceCtx,
    limits: Limits,
    class: ErrorClass,
    says: &'static str,
}

fn cases() -> Vec<Case> {
    let mut good = survey(ACTOR);
    let good_push = push_of(&mut good);
    let good_stored = stored_of(&mut good);
    let case = |name, existing, push, class, says| Case {
        name,
        existing,
        push,
        ctx: village(),
        limits: Limits::default(),
        class,
        says,
    };
    let with_changes = |changes: Vec<u8>| PushDoc {
        changes,
        ..good_push.clone()
    };
    let entries = |kind: &str, scope: &str, extra: &[(&'static str, &'static str)]| {
        let owned = header(kind, scope);
        let mut all: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        raw_changes(&all)
    };

    // The device's history forks from what the server holds: a different first change by the
    // same actor (seq 1 twice).
    let mut fork = Record::create(
        Kind::VillageSurvey,
        "village:1",
        ActorId::from(ACTOR.to_vec()),
        &[("village".into(), FieldValue::Text("另一个村".into()))],
        1,
    )
    .expect("fork");
    let fork_push = PushDoc {
        id: good_push.id,
        ..push_of(&mut fork)
    };
    // The second change of a document alone, without the first it depends on.
    let mut later = survey(ACTOR);
    let first = later.heads();
    later
        .update(&[("licensed_doctors".into(), FieldValue::Integer(2))], 2)
        .expect("update");
    let orphan = PushDoc {
        changes: later.changes_since(&first),
        ..push_of(&mut later)
    };

    vec![
        // Refused: the push breaks a rule.
        case(
            "change bytes that do not parse",
            None,
            with_changes(b"not automerge".to_vec()),
            ErrorClass::Refused,
            "magic",
        ),
        case(
            "a scope of the wrong level for the kind",
            None,
            PushDoc {
                scope: "team:1".into(),
                ..good_push.clone()
            },
            ErrorClass::Refused,
            "team:1",
        ),
        case(
            "the kind changed",
            Some(StoredDoc {
                kind: Kind::VillageVisit,
                ..good_stored.clone()
            }),
            good_push.clone(),
            ErrorClass::Refused,
            "fixed",
        ),
        case(
            "a change signed by another device",
            None,
            push_of(&mut survey([8; 16])),
            ErrorClass::Refused,
            "not by this device",
        ),
        case(
            "a new document without its kind",
            None,
            with_changes(raw_changes(&[("village", "大坪村")])),
            ErrorClass::Refused,
            "kind",
        ),
        case(
            "the document names another scope than the push",
            None,
            PushDoc {
                scope: "village:2".into(),
                ..with_changes(entries("village_survey", "village:1", &[("village", "x")]))
            },
            ErrorClass::Refused,
            "village:2",
        ),
        case(
            "a required field missing (schema)",
            None,
            with_changes(entries("village_survey", "village:1", &[])),
            ErrorClass::Refused,
            "village",
        ),
        case(
            "a field of the wrong type (schema)",
            None,
            with_changes(entries(
                "village_survey",
                "village:1",
                &[("village", "x"), ("licensed_doctors", "two")],
            )),
            ErrorClass::Refused,
            "licensed_doctors",
        ),
        Case {
            ctx: ctx(Role::Volunteer, "team:1"),
            ..case(
                "a role that may not write the kind (access)",
                None,
                good_push.clone(),
                ErrorClass::Refused,
                "volunteer",
            )
        },
        Case {
            limits: Limits {
                max_doc_bytes: 10,
                ..Limits::default()
            },
            ..case(
                "a document past the size limit",
                None,
                good_push.clone(),
                ErrorClass::Refused,
                "limit",
            )
        },
        Case {
            limits: Limits {
                max_changes_per_round: 0,
                ..Limits::default()
            },
            ..case(
                "more changes than a limit allows",
                None,
                good_push.clone(),
                ErrorClass::Refused,
                "changes",
            )
        },
        // Fault: the server's own copy, or applying to it.
        case(
            "the stored copy is not Automerge",
            Some(StoredDoc {
                bytes: b"garbage on disk".to_vec(),
                ..good_stored.clone()
            }),
            good_push.clone(),
            ErrorClass::Retry,
            "unreadable",
        ),
        case(
            "the stored copy loads but has no kind",
            Some(StoredDoc {
                bytes: {
                    let mut doc = AutoCommit::new();
                    doc.put(automerge::ROOT, "village", "x").expect("put");
                    doc.save()
                },
                ..good_stored.clone()
            }),
            good_push.clone(),
            ErrorClass::Retry,
            "unreadable",
        ),
        case(
            "the changes do not apply to the stored copy",
            Some(good_stored.clone()),
            fork_push,
            ErrorClass::Retry,
            "do not apply",
        ),
        case(
            "the changes need history the server lacks",
            None,
            orphan,
            ErrorClass::Retry,
            "does not have",
        ),
    ]
}

fn class(e: &MergeError) -> ErrorClass {
    match e {
        MergeError::Refused(_) => ErrorClass::Refused,
        MergeError::Fault(_) => ErrorClass::Retry,
    }
}

/// Each way a push fails lands in its class, with a reason that names what is wrong.
#[test]
fn every_merge_error_has_its_class() {
    for c in cases() {
        match merge_push(c.existing.as_ref(), &c.push, &c.ctx, &c.limits) {
            Ok(merged) => panic!("{}: merged ({:?})", c.name, merged.heads),
            Err(e) => {
                assert_eq!(class(&e), c.class, "{}: {e}", c.name);
                assert!(e.to_string().contains(c.says), "{}: {e}", c.name);
            }
        }
    }
}

/// The outcome each class is answered with: a refusal waits for an edit, a fault is deferred.
#[test]
fn refusals_and_faults_become_their_outcomes() {
    assert_eq!(
        MergeError::Refused("no".into()).outcome(),
        Outcome::Refused {
            reason: "no".into()
        }
    );
    assert_eq!(
        MergeError::Fault("disk".into()).outcome(),
        Outcome::Deferred {
            reason: "disk".into()
        }
    );
}

/// The cases above fail only for the reason they name: the same push is merged when that
/// one thing is put right.
#[test]
fn a_good_push_merges_new_and_onto_its_stored_copy() {
    let mut record = survey(ACTOR);
    let push = push_of(&mut record);
    let merged = merge_push(None, &push, &village(), &Limits::default()).expect("new");
    assert_eq!(merged.added.len(), 1);
    let stored = StoredDoc {
        kind: push.kind,
        scope: push.scope.clone(),
        bytes: merged.bytes.expect("bytes"),
    };
    let base = record.heads();
    record
        .update(&[("licensed_doctors".into(), FieldValue::Integer(2))], 2)
        .expect("update");
    let next = PushDoc {
        changes: record.changes_since(&base),
        ..push
    };
    let merged = merge_push(Some(&stored), &next, &village(), &Limits::default()).expect("onto");
    assert_eq!(
        merged.view.fields["licensed_doctors"],
        FieldValue::Integer(2)
    );
}
