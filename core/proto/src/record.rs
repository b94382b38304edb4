//! One record = one Automerge document: typed get/set, conflicts and history.
//!
//! The document's root map holds `kind`, `schema` (kind@version), `scope` and the kind's fields.
//! Scalars are stored as Automerge scalars; a list of text is an Automerge list of strings, so
//! two people appending to `follow_ups` while apart both keep their items. Nested maps are not
//! part of any schema and are refused, which also keeps a hostile document from nesting deeply.

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{self, FieldValue, HEADER_KEYS, Kind, ValidationError};
use crate::scope::Scope;

/// A record as shown outside: `{"id", "kind", "scope", "fields", "conflicts"}`.
///
/// `fields` holds the value that currently stands for each field (and the derived `hours`);
/// `conflicts` lists only fields holding more than one concurrent value, with all of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordView {
    /// The record's UUID, hyphenated.
    pub id: String,
    /// The record's kind, serialised as its name (`check_in`, `village_visit`, `village_survey`).
    pub kind: Kind,
    /// The record's scope (`team:<id>`, `village:<id>`).
    pub scope: String,
    /// Each field's current value (the winning one where values conflict).
    pub fields: BTreeMap<String, FieldValue>,
    /// Only fields holding more than one concurrent value, with all of them.
    pub conflicts: BTreeMap<String, Vec<FieldValue>>,
}

impl RecordView {
    /// The current value of field `name`, if set.
    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields.get(name)
    }

    /// The current value of field `name` if it is text.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.fields.get(name) {
            Some(FieldValue::Text(s)) => Some(s),
            _ => None,
        }
    }
}

/// A record's fields as read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The value that stands for each field.
    pub standing: BTreeMap<String, FieldValue>,
    /// Every concurrent value, for the fields holding more than one.
    pub conflicts: BTreeMap<String, Vec<FieldValue>>,
}

impl Snapshot {
    /// Each field's concurrent values (one where there is no conflict).
    pub fn values(&self) -> BTreeMap<String, Vec<FieldValue>> {
        self.standing
            .iter()
            .map(|(k, v)| {
                let all = self
                    .conflicts
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| vec![v.clone()]);
                (k.clone(), all)
            })
            .collect()
    }
}

/// Who changed which fields of a record, and when (by the changing device's clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The Automerge actor (hex) of the device that made the change.
    pub actor: String,
    /// Seconds since the Unix epoch, by the device's clock.
    pub time: i64,
    /// Root fields the change wrote.
    pub fields: Vec<String>,
    /// The change's hash (hex).
    pub hash: String,
}

/// Why a record operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a valid Automerge document or change.
    #[error("invalid Automerge data: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// The record's content breaks its schema.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A field name that the record's schema does not have.
    #[error("{kind} has no field `{field}`")]
    UnknownField {
        /// The record's kind.
        kind: Kind,
        /// The field its schema does not have.
        field: String,
    },
}

/// A record: its id and its Automerge document.
pub struct Record {
    id: Uuid,
    kind: Kind,
    scope: Scope,
    doc: AutoCommit,
}

impl Record {
    /// Creates a new record with `fields`, as one change by `actor` at `time` (Unix seconds).
    pub fn create(
        kind: Kind,
        scope: &str,
        actor: ActorId,
        fields: &[(String, FieldValue)],
        time: i64,
    ) -> Result<Record, RecordError> {
        let scope = model::check_scope(kind, scope)?;
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put(automerge::ROOT, "kind", kind.as_str())?;
        doc.put(automerge::ROOT, "schema", kind.schema().id())?;
        doc.put(automerge::ROOT, "scope", scope.as_str())?;
        let mut record = Record {
            id: Uuid::now_v7(),
            kind,
            scope,
            doc,
        };
        record.write_fields(fields)?;
        record.validate()?;
        record
            .doc
            .commit_with(CommitOptions::default().with_time(time));
        Ok(record)
    }

    /// Loads a record from stored bytes (a saved document, change chunks, or both).
    pub fn load(id: Uuid, bytes: &[u8]) -> Result<Record, RecordError> {
        Self::from_doc(id, AutoCommit::load(bytes)?)
    }

    /// Wraps a document, reading its kind and scope from its root.
    pub fn from_doc(id: Uuid, doc: AutoCommit) -> Result<Record, RecordError> {
        let header = |key: &str| -> Result<String, RecordError> {
            match doc.get(automerge::ROOT, key)? {
                Some((Value::Scalar(s), _)) => match s.as_ref() {
                    ScalarValue::Str(s) => Ok(s.to_string()),
                    _ => Err(malformed(format!("`{key}` is not text"))),
                },
                _ => Err(malformed(format!("`{key}` is missing"))),
            }
        };
        let kind: Kind = header("kind")?.parse()?;
        let scope = model::check_scope(kind, &header("scope")?)?;
        Ok(Record {
            id,
            kind,
            scope,
            doc,
        })
    }

    /// The record's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The record's kind, fixed at creation.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The record's scope, fixed at creation.
    pub fn scope(&self) -> &str {
        self.scope.as_str()
    }

    /// The Automerge document, for merging and history.
    pub fn doc(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// Gives up the record for its Automerge document.
    pub fn into_doc(self) -> AutoCommit {
        self.doc
    }

    /// Makes later changes under `actor` (the device's or office user's actor id).
    pub fn set_actor(&mut self, actor: ActorId) {
        self.doc.set_actor(actor);
    }

    /// Writes `fields` as one change at `time`; nothing is written if any value is refused.
    pub fn update(
        &mut self,
        fields: &[(String, FieldValue)],
        time: i64,
    ) -> Result<(), RecordError> {
        let written = self.write_fields(fields).and_then(|()| self.validate());
        if let Err(e) = written {
            self.doc.rollback();
            return Err(e);
        }
        self.doc
            .commit_with(CommitOptions::default().with_time(time));
        Ok(())
    }

    fn write_fields(&mut self, fields: &[(String, FieldValue)]) -> Result<(), RecordError> {
        let schema = self.kind.schema();
        for (name, value) in fields {
            let spec = schema
                .field(name)
                .ok_or_else(|| RecordError::UnknownField {
                    kind: self.kind,
                    field: name.clone(),
                })?;
            if spec.derived {
                return Err(ValidationError::Derived(spec.name).into());
            }
            let value = model::check_value(spec, value)?;
            put_value(&mut self.doc, name, &value)?;
        }
        Ok(())
    }

    /// Every field read in one pass over the root map; all concurrent values are fetched only
    /// for fields that hold more than one.
    pub fn snapshot(&self) -> Result<Snapshot, RecordError> {
        let mut snap = Snapshot::default();
        for item in self.doc.map_range(automerge::ROOT, ..) {
            if HEADER_KEYS.contains(&item.key.as_ref()) {
                continue;
            }
            let key = item.key.to_string();
            let standing = read_value(&self.doc, &key, item.value.clone().into(), &item.id())?;
            if item.conflict {
                let mut all = Vec::new();
                for (value, obj) in self.doc.get_all(automerge::ROOT, key.as_str())? {
                    all.push(read_value(&self.doc, &key, value, &obj)?);
                }
                snap.conflicts.insert(key.clone(), all);
            }
            snap.standing.insert(key, standing);
        }
        Ok(snap)
    }

    /// Every field's concurrent values (one where there is no conflict), header keys excluded.
    pub fn values(&self) -> Result<BTreeMap<String, Vec<FieldValue>>, RecordError> {
        Ok(self.snapshot()?.values())
    }

    /// The record's projection: current fields, derived `hours` and conflicts.
    pub fn view(&self) -> Result<RecordView, RecordError> {
        Ok(self.view_of(self.snapshot()?))
    }

    /// The projection of an already-read snapshot of this record.
    pub fn view_of(&self, snap: Snapshot) -> RecordView {
        let Snapshot {
            standing: mut fields,
            conflicts,
        } = snap;
        if self.kind == Kind::CheckIn {
            let text = |k: &str| match fields.get(k) {
                Some(FieldValue::Text(s)) => Some(s.clone()),
                _ => None,
            };
            if let (Some(start), Some(end)) = (text("started_at"), text("ended_at"))
                && let Some(h) = model::derive_hours(&start, &end)
            {
                fields.insert("hours".to_string(), FieldValue::Number(h));
            }
        }
        RecordView {
            id: self.id.to_string(),
            kind: self.kind,
            scope: self.scope.to_string(),
            fields,
            conflicts,
        }
    }

    /// Validates the merged document: header unchanged, no nested objects, schema respected.
    pub fn validate(&self) -> Result<(), RecordError> {
        Ok(model::validate_record(self.kind, &self.values()?)?)
    }

    /// The document's current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The raw bytes of every change the holder of `heads` lacks, concatenated.
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        let known: Vec<ChangeHash> = heads
            .iter()
            .filter(|h| self.doc.get_change_by_hash(h).is_some())
            .copied()
            .collect();
        let mut out = Vec::new();
        for change in self.doc.get_changes(&known) {
            out.extend_from_slice(change.raw_bytes());
        }
        out
    }

    /// The whole document saved compactly.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Who changed which fields, oldest first.
    pub fn history(&mut self) -> Vec<HistoryEntry> {
        self.doc
            .get_changes(&[])
            .into_iter()
            .map(|change| {
                let mut fields: Vec<String> = change
                    .decode()
                    .operations
                    .iter()
                    .filter(|op| op.obj == automerge::legacy::ObjectId::Root)
                    .filter_map(|op| match &op.key {
                        automerge::legacy::Key::Map(k) => Some(k.to_string()),
                        _ => None,
                    })
                    .filter(|k| !HEADER_KEYS.contains(&k.as_str()))
                    .collect();
                fields.sort();
                fields.dedup();
                HistoryEntry {
                    actor: change.actor_id().to_hex_string(),
                    time: change.timestamp(),
                    fields,
                    hash: change.hash().to_string(),
                }
            })
            .collect()
    }
}

fn malformed(msg: String) -> RecordError {
    ValidationError::Malformed(msg).into()
}

fn put_value(doc: &mut AutoCommit, name: &str, value: &FieldValue) -> Result<(), RecordError> {
    match value {
        FieldValue::Bool(b) => doc.put(automerge::ROOT, name, *b)?,
        FieldValue::Integer(i) => doc.put(automerge::ROOT, name, *i)?,
        FieldValue::Number(n) => doc.put(automerge::ROOT, name, *n)?,
        FieldValue::Text(s) => doc.put(automerge::ROOT, name, s.as_str())?,
        FieldValue::TextList(items) => {
            let list = doc.put_object(automerge::ROOT, name, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                doc.insert(&list, i, item.as_str())?;
            }
        }
    }
    Ok(())
}

/// Reads one value of a root field; lists must hold only text, and no other object is allowed.
fn read_value(
    doc: &AutoCommit,
    field: &str,
    value: Value<'_>,
    obj: &ObjId,
) -> Result<FieldValue, RecordError> {
    match value {
        Value::Scalar(s) => scalar(field, s.as_ref()),
        Value::Object(ObjType::List) => {
            let mut items = Vec::new();
            for item in doc.list_range(obj, ..) {
                match item.value {
                    automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(s)) => {
                        items.push(s.to_string())
                    }
                    _ => {
                        return Err(malformed(format!(
                            "field `{field}`: list items must be text"
                        )));
                    }
                }
            }
            Ok(FieldValue::TextList(items))
        }
        Value::Object(other) => Err(malformed(format!(
            "field `{field}` holds a nested {other:?} object; records are flat"
        ))),
    }
}

fn scalar(field: &str, s: &ScalarValue) -> Result<FieldValue, RecordError> {
    Ok(match s {
        ScalarValue::Str(s) => FieldValue::Text(s.to_string()),
        ScalarValue::Int(i) => FieldValue::Integer(*i),
        ScalarValue::Uint(u) => FieldValue::Integer(
            i64::try_from(*u).map_err(|_| malformed(format!("field `{field}`: {u} too large")))?,
        ),
        ScalarValue::F64(f) => FieldValue::Number(*f),
        ScalarValue::Boolean(b) => FieldValue::Bool(*b),
        other => {
            return Err(malformed(format!(
                "field `{field}` holds an unsupported value {other:?}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(n: u8) -> ActorId {
        ActorId::from([n; 16])
    }

    fn survey(a: ActorId) -> Record {
        Record::create(
            Kind::VillageSurvey,
            "village:1",
            a,
            &[("village".into(), FieldValue::Text("大坪村".into()))],
            1,
        )
        .unwrap()
    }

    #[test]
    fn concurrent_sets_show_both_values_as_conflict() {
        let mut a = survey(actor(1));
        let bytes = a.save();
        let mut b = Record::load(a.id(), &bytes).unwrap();
        b.set_actor(actor(2));
        a.update(&[("licensed_doctors".into(), FieldValue::Integer(2))], 2)
            .unwrap();
        b.update(&[("licensed_doctors".into(), FieldValue::Integer(3))], 2)
            .unwrap();
        b.update(&[("bus_service".into(), FieldValue::Bool(true))], 3)
            .unwrap();
        let changes = b.changes_since(&a.heads());
        a.doc().load_incremental(&changes).unwrap();
        let view = a.view().unwrap();
        assert_eq!(view.fields["bus_service"], FieldValue::Bool(true));
        let mut both = view.conflicts["licensed_doctors"].clone();
        both.sort_by_key(|v| format!("{v:?}"));
        assert_eq!(both, vec![FieldValue::Integer(2), FieldValue::Integer(3)]);
        assert!(!view.conflicts.contains_key("bus_service"));
    }

    #[test]
    fn wrong_type_and_unknown_field_are_refused_and_change_nothing() {
        let mut a = survey(actor(1));
        let heads = a.heads();
        assert!(
            a.update(
                &[("licensed_doctors".into(), FieldValue::Text("x".into()))],
                2
            )
            .is_err()
        );
        assert!(
            a.update(&[("colour".into(), FieldValue::Text("x".into()))], 2)
                .is_err()
        );
        assert_eq!(a.heads(), heads);
        assert!(!a.view().unwrap().fields.contains_key("licensed_doctors"));
    }

    /// Projections in both stores are JSON of `RecordView`: a typed `kind` keeps its bytes, so
    /// projections written when `kind` was text read back, and new ones are the same text.
    #[test]
    fn a_view_is_the_same_json_with_a_typed_kind() {
        let id = "0190f0c4-0000-7000-8000-000000000000";
        let json = format!(
            r#"{{"id":"{id}","kind":"village_survey","scope":"village:1","fields":{{"village":"大坪村"}},"conflicts":{{}}}}"#
        );
        let view: RecordView = serde_json::from_str(&json).unwrap();
        assert_eq!(view.kind, Kind::VillageSurvey);
        assert_eq!(serde_json::to_string(&view).unwrap(), json);
        for kind in Kind::ALL {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
        assert!(
            serde_json::from_str::<RecordView>(&json.replace("village_survey", "parade")).is_err()
        );
        // postcard (wire messages, the server's index) encodes a kind by its variant index.
        assert_eq!(postcard::to_stdvec(&Kind::VillageSurvey).unwrap(), vec![2]);
    }

    #[test]
    fn check_in_hours_are_derived_and_history_names_fields() {
        let mut r = Record::create(
            Kind::CheckIn,
            "team:7",
            actor(1),
            &[
                ("volunteer_id".into(), FieldValue::Text("u1".into())),
                ("activity".into(), FieldValue::Text("清洁家园".into())),
                ("place".into(), FieldValue::Text("社区".into())),
                (
                    "started_at".into(),
                    FieldValue::Text("2026-11-28T08:00:00+08:00".into()),
                ),
                ("status".into(), FieldValue::Text("submitted".into())),
            ],
            10,
        )
        .unwrap();
        assert!(!r.view().unwrap().fields.contains_key("hours"));
        r.update(
            &[(
                "ended_at".into(),
                FieldValue::Text("2026-11-28T09:45:00+08:00".into()),
            )],
            11,
        )
        .unwrap();
        assert_eq!(r.view().unwrap().fields["hours"], FieldValue::Number(1.75));
        assert!(
            r.update(&[("hours".into(), FieldValue::Number(9.0))], 12)
                .is_err()
        );
        let history = r.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].fields, vec!["ended_at".to_string()]);
        assert_eq!(history[1].time, 11);
    }
}
